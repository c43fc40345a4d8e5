Feature: Clients (SPEC section 21)
  Client mode (bimip-conform client --adapter CMD): the suite plays the
  server as a scripted peer, and drives the client under test through its
  adapter (conformance/README.md). These cases check clients, not servers;
  a server run leaves them out.

  @TRN-17 @must
  Scenario: A client takes the Authenticate RESPONSE and goes on
    Given the peer sends an Authenticate RESPONSE
    When the client connects to the peer
    And the peer pings the client with id "after-auth"
    Then the peer receives a pong for "after-auth"

  @TRN-17 @must
  Scenario: On WebSocket a client works when the server sends no Authenticate RESPONSE
    Given the peer listens for WebSocket connections
    And the peer does not send an Authenticate RESPONSE
    When the client connects to the peer
    And the peer pings the client with id "no-auth"
    Then the peer receives a pong for "no-auth"

  @PING-3 @must
  Scenario: A client answers every server ping, echoing its id and request time
    Given the client connects to the peer
    When the peer pings the client with id "p-1"
    Then the peer receives a pong for "p-1"
    When the peer pings the client with id "p-2"
    And the peer pings the client with id "p-3"
    Then the peer receives a pong for "p-2"
    And the peer receives a pong for "p-3"

  @CLI-7 @must
  Scenario: A stanza of a route the client does not know is ignored and the session goes on
    Given the client connects to the peer
    When the peer sends a stanza of a route the client does not know
    And the peer pings the client with id "still-there"
    Then the peer receives a pong for "still-there"

  @CLI-7 @must
  Scenario: An undecodable stanza is reported to the application and the session goes on
    Given the client connects to the peer
    When the peer sends bytes that are no MessageScheme
    Then the client reports a bad stanza
    When the peer pings the client with id "still-there"
    Then the peer receives a pong for "still-there"

  @ERR-7 @must
  Scenario Outline: A client blames an error code it does not know by the code's hundred
    Given the client connects to the peer
    When the client sends the text "hello" to "bob@conform.example" as "r1"
    Then the peer receives a TextPayloadRequest with the text "hello"
    When the peer answers that request with error <code> "<kind>"
    Then the client reports error <code> for "r1" blamed on the <blame>

    Examples:
      | code | kind             | blame  |
      | 499  | made_up_fault    | client |
      | 599  | made_up_failure  | server |

  @ERR-7 @must
  Scenario: A request blamed on the client is not sent again unchanged
    Given the client connects to the peer
    When the client sends the text "once" to "bob@conform.example" as "r1"
    Then the peer receives a TextPayloadRequest with the text "once"
    When the peer answers that request with error 422 "made_up_fault"
    Then the client reports error 422 for "r1" blamed on the client
    And the peer receives no TextPayloadRequest within 1000 ms

  @QUE-7 @must
  Scenario: A chat message that comes again is handed to the application once
    Given the client connects to the peer
    When the peer sends the chat message "hello" of version 1 twice
    Then the client reports the message of version 1 once

  @QUE-7 @must
  Scenario: An acknowledgment update that comes again is applied once
    Given the client connects to the peer
    When the peer sends the update read for version 1 twice
    Then the client reports the update read for version 1 once

  @CLI-3 @must
  Scenario: A client confirms each chat message it receives, with DELIVERED
    Given the client connects to the peer
    When the peer sends the chat message "hello" of version 1
    Then the peer receives an AcknowledgmentRequest with status 2 for version 1

  @CLI-3 @must
  Scenario: A client confirms the copy of its own message with status 4
    Given the client connects to the peer
    When the peer sends the client's own message "from my other phone" of version 2
    Then the peer receives an AcknowledgmentRequest with status 4 for version 2

  @CLI-3 @must
  Scenario: A client confirms an acknowledgment update of its message with the update's status
    Given the client connects to the peer
    When the peer sends the update read for version 1
    Then the peer receives an AcknowledgmentRequest with status 3 for version 1

  @CLI-4 @must
  Scenario: A client whose session was replaced does not connect again by itself
    Given the client connects to the peer
    When the peer replaces the session
    Then the client does not connect to the peer again within 2500 ms

  @CLI-5 @must
  Scenario: A client whose token was refused does not connect again with it
    Given the client connects to the peer
    When the peer refuses the token
    Then the client does not connect to the peer again within 2500 ms

  @CLI-6 @must
  Scenario: A client that lost its connection waits 1 s, then twice as long, jittered
    Given the client connects to the peer
    When the peer drops the connection
    Then the client connects to the peer again after 950 to 1600 ms
    When the peer drops the connection
    Then the client connects to the peer again after 1950 to 3100 ms

  @CLI-1 @CLI-2 @must
  Scenario: A request without its VersionUpdate is sent again, unchanged, in the next session
    Given the client connects to the peer
    When the client sends the text "keep me" to "bob@conform.example" as "r1"
    Then the peer receives a TextPayloadRequest with the text "keep me"
    When the peer drops the connection
    Then the client connects to the peer again after 950 to 1600 ms
    And the peer receives the same TextPayloadRequest with the text "keep me" again
