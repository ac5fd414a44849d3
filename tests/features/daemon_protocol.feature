Feature: One client cannot hurt another
  Whatever a client sends or does, it gets a clear error on its own
  connection; the daemon keeps serving and other clients never notice.

  Scenario Outline: A bad request gets an error and nobody else notices
    Given a running daemon
    And a connected bystander client
    When a client sends <request>
    Then that client gets the error code "<code>"
    And the bystander can still ping the daemon

    Examples:
      | request                                                     | code                |
      | this is not json                                            | bad_request         |
      | {"op": "run", "job": {"stages": [{"argv": "sort"}]}}        | bad_request         |
      | {"op": "ping", "verbose": true}                             | bad_request         |
      | {"op": "reboot"}                                            | unknown_op          |
      | {"op": "run", "job": {"stages": [{"argv": ["rm", "-rf"]}]}} | program_not_allowed |
      | {"op": "wait", "job_id": "feedfacefeedface"}                | not_found           |

  Scenario: A client that hangs up during run cancels its job
    Given a running daemon for the pump under test
    When a client starts running "sleep 30 | cat" and hangs up
    Then the job ends as "cancelled"
    And none of its processes is left

  Scenario: A full queue answers busy and the running job is untouched
    Given a daemon allowing 1 running job and no queue
    And a submitted job "sleep 30"
    When a client runs "true"
    Then that client gets the error code "busy"
    And the submitted job is still running
