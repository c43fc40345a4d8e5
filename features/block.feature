Feature: Blocking (SPEC section 12)
  A block hides each user of the pair from the other and stops chat and
  acknowledgments between them; it is never announced.

  Background:
    Given alice is connected as "phone"
    And bob is connected as "phone"

  @BLK-1 @must
  Scenario: Blocking and unblocking are confirmed, also when nothing changes
    When alice's phone blocks bob
    And alice's phone blocks bob
    And alice's phone unblocks bob
    And alice's phone unblocks bob
    Then alice's phone receives no error

  @BLK-1 @must
  Scenario: Action 0 blocks and is reported as 1
    When alice's phone sends BlockSubscriber {"type": 1, "action": 0, "subscriber": {"eid": "$bob"}}
    Then alice's phone receives BlockSubscriber matching {"type": 2, "status": 1, "action": 1, "owner": {"eid": "$alice"}, "subscriber": {"eid": "$bob"}}
    When alice's phone sends TextPayloadRequest {"to": [{"eid": "$bob"}], "content": "x", "message_id_local": "after-block"}
    Then alice's phone receives error 403 blocked for route "14" with ref_id "after-block"

  @BLK-2 @must
  Scenario Outline: Blocking self, a bad EID or a bad action is invalid_field
    When alice's phone sends BlockSubscriber {"type": 1, "action": <action>, "subscriber": {"eid": "<eid>"}}
    Then alice's phone receives error 400 invalid_field for route "11"

    Examples:
      | eid        | action |
      | $alice     | 1      |
      | not-an-eid | 1      |
      | $bob       | 3      |
      | $bob       | -1     |

  @BLK-3 @must
  Scenario Outline: No chat in either direction across a block
    Given <blocker>'s phone blocks <blocked>
    When alice's phone sends text "hi" to bob as "a1"
    And bob's phone sends text "hi" to alice as "b1"
    Then alice's phone receives error 403 blocked for route "14" with ref_id "a1"
    And bob's phone receives error 403 blocked for route "14" with ref_id "b1"
    And alice's phone receives no ChatMessage
    And bob's phone receives no ChatMessage
    When <blocker>'s phone unblocks <blocked>
    And alice's phone sends text to bob as "a2" and receives version 1

    Examples:
      | blocker | blocked |
      | alice   | bob     |
      | bob     | alice   |

  @BLK-3 @must
  Scenario: A media message across a block is refused too
    Given bob's phone blocks alice
    When alice's phone sends MediaPayloadRequest {"to": [{"eid": "$bob"}], "message_id_local": "m1", "type": 1, "cdn_url_id": "https://cdn.example.com/1"}
    Then alice's phone receives error 403 blocked for route "15" with ref_id "m1"

  @BLK-4 @QUE-13 @must
  Scenario: No acknowledgments across a block
    Given alice's phone sends text "before" to bob as "m1"
    And alice's phone receives a version update for "m1" with version 1
    And bob's phone receives the chat message "m1" from alice's phone with version 1 as receiver
    When bob's phone blocks alice
    And bob's phone acknowledges "m1" with status 3
    Then bob's phone receives error 403 blocked for route "16" with ref_id "$message(m1)"
    And bob's phone receives no AcknowledgmentResponse
    And alice's phone receives no AcknowledgmentResponse
    When alice's phone acknowledges "m1" with status 4
    Then alice's phone receives error 403 blocked for route "16"

  @BLK-5 @AWR-12 @must
  Scenario: The blocked user sees the blocker as unavailable and hears nothing more
    Given alice's phone sets her visibility to public
    And alice's phone adds bob as a subscriber
    And bob's phone receives alice's status as online
    When alice's phone blocks bob
    Then bob's phone receives alice's status as unavailable
    When alice's phone sets her status to busy
    Then bob's phone receives nothing about alice
    When bob's phone asks about alice
    Then bob's phone learns that alice is unavailable

  @BLK-5 @must
  Scenario: The blocker hears nothing of the blocked user either
    Given bob's phone adds alice as a subscriber
    And alice's phone receives bob's status as online
    When alice's phone blocks bob
    Then alice's phone receives bob's status as unavailable
    When bob's phone sets his status to busy
    Then alice's phone receives nothing about bob

  @BLK-6 @must
  Scenario: A block is never announced and earlier messages are still delivered
    Given alice's phone sends text "queued before the block" to carol as "q1"
    And alice's phone receives a version update for "q1" with version 1
    And carol is connected as "phone"
    And carol's phone receives the chat message "q1" from alice's phone with version 1 as receiver
    When alice's phone blocks bob
    Then bob's phone receives no BlockSubscriber
    When carol's phone blocks alice
    And carol's phone closes its connection
    And carol is connected as "phone"
    Then carol's phone receives the chat message "q1" from alice's phone with version 1 as receiver
    And alice's phone receives no BlockSubscriber

  @BLK-5 @LOC-1 @must
  Scenario: No location across a block
    Given bob's phone turns location sharing on
    And bob's phone adds alice as a subscriber
    And alice's phone blocks bob
    When bob's phone shares his location 52.5, 13.4
    And bob's phone shares his location 52.5, 13.4 with alice
    Then alice's phone receives no LocationStream
