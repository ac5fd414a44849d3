Feature: Stream backend dispatcher
  cuprumd selects a stream backend from CUPRUM_STREAM_BACKEND and the
  availability of the Rust extension, and caches the availability check.

  Scenario: Auto mode selects Python when Rust is unavailable
    Given the Rust extension is not available
    And the stream backend environment variable is unset
    When I resolve the stream backend
    Then the resolved backend is python

  Scenario: Forced Rust mode raises when the extension is unavailable
    Given the Rust extension is not available
    And the stream backend is forced to rust
    When I attempt to resolve the stream backend
    Then an ImportError naming CUPRUM_STREAM_BACKEND is raised

  Scenario: Forced Python mode always selects Python
    Given the Rust extension is available
    And the stream backend is forced to python
    When I resolve the stream backend
    Then the resolved backend is python
    And the availability of the extension was never probed
