Feature: Sessions (SPEC section 6)
  One session per device, at most ten devices per user, a fixed start
  sequence, rate limits and robustness.

  @SES-1 @must
  Scenario Outline: The same device connecting again replaces its session
    Given alice is connected over <old> as "phone"
    When alice's phone connects again over <new> with a valid token
    Then alice's phone gets a session
    And alice's previous phone receives error 409 session_replaced for route ""
    And alice's previous phone receives nothing more and is closed with code 4409
    And alice's previous phone's ErrorMessage came before alice's phone's first stanza
    And alice's phone stays connected

    Examples:
      | old       | new       |
      | websocket | websocket |
      | tcp       | websocket |
      | websocket | tcp       |

  @SES-2 @must
  Scenario: A replacement tells the watchers nothing and keeps the user's status
    Given alice is connected over websocket as "phone"
    And bob is connected over websocket as "phone"
    And alice's phone adds bob as a subscriber
    And bob's phone receives alice's status as online
    And alice's phone sets her status to busy
    And bob's phone receives alice's status as busy
    When alice's phone connects again over tcp with a valid token
    Then alice's phone gets a session
    And bob's phone receives nothing about alice
    When bob's phone asks about alice
    Then bob's phone learns that alice is busy

  @SES-3 @must
  Scenario: An eleventh device of a user is refused; a replacement is not
    Given alice is connected over websocket with 10 devices
    When alice's d11 connects over websocket with a valid token
    Then alice's d11 is refused with 429 too_many_sessions
    When alice's d12 connects over tcp with a valid token
    Then alice's d12 is refused with 429 too_many_sessions
    When alice's d3 connects again over websocket with a valid token
    Then alice's d3 gets a session

  @SES-4 @QUE-3 @must
  Scenario: The start sequence is the RESPONSE, then the queued items, then the Body
    Given alice is connected over websocket as "phone"
    And carol is connected over websocket as "phone"
    And carol's phone adds bob as a subscriber
    When alice's phone sends text "one" to bob as "s1"
    And alice's phone receives a version update for "s1" with version 1
    And alice's phone sends text "two" to bob as "s2"
    And alice's phone receives a version update for "s2" with version 2
    And bob is connected over tcp as "phone"
    Then the next stanza bob's phone receives is the chat message "s1" from alice's phone with version 1 as receiver
    And the next stanza bob's phone receives is the chat message "s2" from alice's phone with version 2 as receiver
    And the next stanza bob's phone receives is Body matching {"awareness_list": [{"from": {"eid": "$carol"}, "to": {"eid": "$bob", "connection_resource_id": "phone"}, "status": 1}]}, if the server sends one

  @SES-5 @must
  Scenario: Stanzas beyond the rate limit are dropped with rate_limited
    Given alice is connected as "phone"
    When alice's phone sends 210 pings at once
    Then alice's phone receives error 429 rate_limited for route "6" with ref_id "$any"
    When 1 second passes
    Then alice's phone stays connected

  @SES-6 @ERR-6 @must
  Scenario: Fifty rejected stanzas in a row end the connection
    Given alice is connected as "phone"
    When alice's phone sends the bytes "08" 50 times
    Then alice's phone receives 50 errors 400 malformed
    And alice's phone receives error 429 rate_limited for route ""
    And alice's phone receives nothing more and is closed with code 4429

  @SES-6 @must
  Scenario: A stanza handled without error resets the count
    Given alice is connected over tcp as "phone"
    When alice's phone sends the bytes "08" 49 times
    And alice's phone sends a ping with id "reset"
    And alice's phone sends the bytes "08" 49 times
    Then alice's phone receives 98 errors 400 malformed
    And alice's phone receives a pong for "reset"
    And alice's phone receives no error
    And alice's phone is still connected

  @SES-7 @must
  Scenario: Garbage on one connection does not end other sessions
    Given alice is connected over websocket as "phone"
    And bob is connected over tcp as "phone"
    When alice's phone sends the bytes "ff"
    And alice's phone sends the bytes "0f0f0f0f"
    And alice's phone sends the bytes "32ffffffff0f"
    And alice's phone sends the bytes "08ffffffffffffffff7f"
    And alice's phone sends the text message "x"
    Then alice's phone is closed with code 1003
    And bob's phone stays connected

  @SES-8 @must
  Scenario: A server restart ends every session and keeps the blocks
    Given alice is connected as "phone"
    And bob is connected as "phone"
    And bob's phone blocks alice
    When the server restarts
    Then alice's phone is closed
    And bob's phone is closed
    When alice is connected as "phone"
    And alice's phone sends text "hello" to bob as "after"
    Then alice's phone receives error 403 blocked for route "14" with ref_id "after"

  @SES-6 @CHAT-13 @must
  Scenario: A stanza the server takes without any answer resets the count too
    Given alice is connected as "phone"
    When alice's phone sends the bytes "08" 49 times
    And alice's phone sends VersionUpdate {"type": 2, "message_id": "no-such-message"}
    And alice's phone sends the bytes "08" 49 times
    Then alice's phone receives 98 errors 400 malformed
    And alice's phone receives no error
    And alice's phone is still connected
