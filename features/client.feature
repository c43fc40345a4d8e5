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
