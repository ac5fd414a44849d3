Feature: Stream pathway selection during pipeline execution
  Every inter-stage transfer uses the resolved backend's pump; a transfer
  the Rust pump cannot take falls back to the Python pump on its own, and a
  forced Rust backend without the extension fails loudly.

  Scenario: An environment override to python routes every transfer through Python
    Given the Rust extension reports itself available
    And the stream backend environment variable is set to python
    When I run the pipeline "printf a\nb\n | cat | sort -r"
    Then the job succeeds with output "b\na\n"
    And every transfer used the python pump

  Scenario: Rust selected but the descriptors are unusable falls back per transfer
    Given the inter-stage links are sockets instead of pipes
    When I run the pipeline "printf hello | cat" with the rust backend
    Then the job succeeds with output "hello"
    And the transfer used the python pump with a fallback reason naming a socket
    And a pump.fallback event was logged

  Scenario: Forcing rust without the extension fails at execution time
    Given the Rust extension is not available
    And the stream backend environment variable is set to rust
    When I attempt to run the pipeline "printf x | cat"
    Then an ImportError naming CUPRUM_STREAM_BACKEND is raised
