Feature: Offline queue and retention (SPEC section 17)
  Per-user durable queues with per-device committed offsets: replay at
  session start, confirmation, retention, and the queue limit.

  Background:
    Given alice is connected as "phone"

  @QUE-3 @QUE-8 @QUE-1 @CHAT-9 @must
  Scenario: A new device receives the queued messages first, in order
    When alice's phone sends text to bob as "q1" and receives version 1
    And alice's phone sends text to bob as "q2" and receives version 2
    And alice's phone sends text to bob as "q3" and receives version 3
    And bob is connected over tcp as "phone"
    Then the next stanza bob's phone receives is the chat message "q1" from alice's phone with version 1 as receiver
    And the next stanza bob's phone receives is the chat message "q2" from alice's phone with version 2 as receiver
    And the next stanza bob's phone receives is the chat message "q3" from alice's phone with version 3 as receiver

  @QUE-3 @must
  Scenario: After the replay, new items arrive live
    Given alice's phone sends text to bob as "old" and receives version 1
    And bob is connected as "phone"
    And bob's phone receives the chat message "old" from alice's phone with version 1 as receiver
    When alice's phone sends text to bob as "new" and receives version 2
    Then bob's phone receives the chat message "new" from alice's phone with version 2 as receiver

  @QUE-6 @QUE-4 @QUE-5 @must
  Scenario: Unconfirmed items come again; confirming one commits everything up to it
    Given alice's phone sends text to bob as "u1" and receives version 1
    And alice's phone sends text to bob as "u2" and receives version 2
    And alice's phone sends text to bob as "u3" and receives version 3
    And bob is connected as "phone"
    And bob's phone receives the chat message "u3" from alice's phone with version 3 as receiver
    And bob's phone closes its connection
    When bob is connected as "phone"
    Then the next stanza bob's phone receives is the chat message "u1" from alice's phone with version 1 as receiver
    And the next stanza bob's phone receives is the chat message "u2" from alice's phone with version 2 as receiver
    And the next stanza bob's phone receives is the chat message "u3" from alice's phone with version 3 as receiver
    When bob's phone acknowledges "u2" with status 2
    And bob's phone receives an acknowledgment of "u2" with status 2 from bob's phone
    And bob's phone closes its connection
    And bob is connected as "phone"
    Then the next stanza bob's phone receives is the chat message "u3" from alice's phone with version 3 as receiver
    And bob's phone receives no ChatMessage

  @QUE-9 @QUE-12 @must
  Scenario: An item stays until every known device confirmed it, and comes as appended
    Given bob is connected as "phone"
    And bob is connected as "tablet"
    And bob's tablet closes its connection
    When alice's phone sends text to bob as "k1" and receives version 1
    And bob's phone receives the chat message "k1" from alice's phone with version 1 as receiver
    And bob's phone acknowledges "k1" with status 3
    And bob's phone receives an acknowledgment of "k1" with status 3 from bob's phone
    And bob is connected as "tablet"
    Then the next stanza bob's tablet receives is the chat message "k1" from alice's phone with version 1 as receiver
    And the next stanza bob's tablet receives is an acknowledgment of "k1" with status 3 from bob's phone

  @QUE-1 @QUE-12 @CHAT-10 @must
  Scenario: A sender's offline device gets its copy and every state change, in order
    Given bob is connected over websocket as "phone"
    And alice is connected over websocket as "laptop"
    And alice's laptop closes its connection
    When alice's phone sends text to bob as "s1" and receives version 1
    And bob's phone receives the chat message "s1" from alice's phone with version 1 as receiver
    And bob's phone acknowledges "s1" with status 2
    And bob's phone receives an acknowledgment of "s1" with status 2 from bob's phone
    And bob's phone acknowledges "s1" with status 3
    And bob's phone receives an acknowledgment of "s1" with status 3 from bob's phone
    And alice is connected over tcp as "laptop"
    Then the next stanza alice's laptop receives is the chat message "s1" from alice's phone with version 1 as sender
    And the next stanza alice's laptop receives is an acknowledgment of "s1" with status 2 from bob's phone
    And the next stanza alice's laptop receives is an acknowledgment of "s1" with status 3 from bob's phone

  @QUE-13 @BLK-4 @must
  Scenario: A refused acknowledgment across a block still confirms the item
    Given alice's phone sends text to bob as "b1" and receives version 1
    And bob is connected as "phone"
    And bob's phone receives the chat message "b1" from alice's phone with version 1 as receiver
    When bob's phone blocks alice
    And bob's phone acknowledges "b1" with status 2
    Then bob's phone receives error 403 blocked for route "16"
    And alice's phone receives no AcknowledgmentResponse
    When bob's phone closes its connection
    And bob is connected as "phone"
    Then bob's phone receives no ChatMessage

  @QUE-10 @must
  Scenario: A full receiver queue refuses new messages; other receivers are unaffected
    Given alice's phone fills carol's queue
    When alice's phone sends text "one too many" to carol as "full"
    Then alice's phone receives error 503 queue_full for route "14" with ref_id "full"
    And alice's phone receives no VersionUpdate
    And alice's phone sends text to bob as "other" and receives version 1

  @QUE-2 @SES-8 @must
  Scenario: A message confirmed by its VersionUpdate survives a kill of the server, and its chat's versions go on
    Given alice's phone sends text to bob as "kept" and receives version 1
    When the server is killed and started again
    And bob is connected as "phone"
    Then the next stanza bob's phone receives is the chat message "kept" from alice's phone with version 1 as receiver
    When alice is connected as "phone"
    Then alice's phone sends text to bob as "after" and receives version 2

  @QUE-4 @ACK-6 @must
  Scenario: An acknowledgment that raises nothing still confirms the device's copy
    Given bob is connected as "phone"
    And bob is connected as "tablet"
    When alice's phone sends text to bob as "n1" and receives version 1
    And bob's phone receives the chat message "n1" from alice's phone with version 1 as receiver
    And bob's tablet receives the chat message "n1" from alice's phone with version 1 as receiver
    And bob's phone acknowledges "n1" with status 3
    And bob's tablet receives an acknowledgment of "n1" with status 3 from bob's phone
    And bob's tablet acknowledges "n1" with status 2
    And bob's tablet receives an acknowledgment of "n1" with status 3 from bob's tablet
    And bob's tablet closes its connection
    And bob is connected as "tablet"
    Then bob's tablet receives no ChatMessage

  @QUE-8 @QUE-9 @must
  Scenario: A brand-new device gets every item a known device has not confirmed
    Given bob is connected as "phone"
    When alice's phone sends text to bob as "read" and receives version 1
    And bob's phone receives the chat message "read" from alice's phone with version 1 as receiver
    And bob's phone acknowledges "read" with status 3
    And bob's phone receives an acknowledgment of "read" with status 3 from bob's phone
    And bob's phone closes its connection
    And alice's phone sends text to bob as "unread" and receives version 2
    And bob is connected as "tablet"
    Then bob's tablet receives the chat message "unread" from alice's phone with version 2 as receiver

  @QUE-3 @QUE-5 @QUE-6 @must
  Scenario: A message cut off on its way to a device comes again at its next session, once
    Given bob is connected as "phone"
    And bob's phone loses its connection in the middle of the next ChatMessage
    When alice's phone sends text to bob as "cut" and receives version 1
    Then bob's phone is closed
    When bob is connected as "phone"
    Then the next stanza bob's phone receives is the chat message "cut" from alice's phone with version 1 as receiver
    And bob's phone receives no ChatMessage
