Feature: Daemon start-up and shutdown
  The daemon resolves its stream backend once at start-up, reports it with
  every answer, refuses to start when a forced backend is missing, and on
  SIGTERM lets short jobs finish while cancelling the rest.

  Scenario: The backend pinned in the config file is reported by every answer
    Given a daemon configured with stream_backend "python"
    When a client pings the daemon
    And a client runs "printf b\na\n | tac"
    Then the ping reports stream backend "python"
    And the job result reports stream backend "python" with output "a\nb\n"

  Scenario: Forcing rust without the extension refuses to start
    Given the native extension is hidden
    When a daemon is started with CUPRUM_STREAM_BACKEND set to "rust"
    Then the daemon exits with a non-zero status
    And its log names CUPRUM_STREAM_BACKEND
    And no socket file is left behind

  Scenario: SIGTERM lets a short job finish and cancels a long one
    Given a running daemon with a shutdown grace of 1.5 seconds
    And a client running "sleep 0.5"
    And another client running "sleep 30 | cat"
    When the daemon receives SIGTERM
    Then the first client gets a result with state "succeeded"
    And the second client gets a result with state "cancelled"
    And the daemon exits with status 0 and its socket file is gone
