Feature: Acknowledgments (SPEC section 16)
  One state per message that only moves forward, set by the receiver's
  devices, reported to the sender's devices and the receiver's others.

  Background:
    Given alice is connected as "phone"
    And bob is connected as "phone"
    And alice's phone sends text "hello" to bob as "m1"
    And alice's phone receives a version update for "m1" with version 1
    And bob's phone receives the chat message "m1" from alice's phone with version 1 as receiver

  @ACK-4 @ACK-5 @must
  Scenario: A raised state reaches the sender's devices and the receiver's other devices
    Given alice is connected over tcp as "laptop"
    And bob is connected over tcp as "tablet"
    When bob's phone acknowledges "m1" with status 2
    Then bob's phone receives an acknowledgment of "m1" with status 2 from bob's phone
    And alice's phone receives an acknowledgment of "m1" with status 2 from bob's phone
    And alice's laptop receives an acknowledgment of "m1" with status 2 from bob's phone
    And bob's tablet receives an acknowledgment of "m1" with status 2 from bob's phone
    When bob's tablet acknowledges "m1" with status 3
    Then bob's tablet receives an acknowledgment of "m1" with status 3 from bob's tablet
    And alice's phone receives an acknowledgment of "m1" with status 3 from bob's tablet
    And bob's phone receives an acknowledgment of "m1" with status 3 from bob's tablet

  @ACK-1 @must
  Scenario: A receiver may go from unread to read directly; no delivered update is sent
    When bob's phone acknowledges "m1" with status 3
    Then alice's phone receives an acknowledgment of "m1" with status 3 from bob's phone
    And alice's phone receives no AcknowledgmentResponse

  @ACK-2 @must
  Scenario: Unknown and foreign messages get the same not_found
    Given carol is connected as "phone"
    When carol's phone acknowledges "m1" with status 2
    Then carol's phone receives error 404 not_found for route "16" with ref_id "$message(m1)"
    When carol's phone sends AcknowledgmentRequest {"message_id": "no-such-message", "status": 2}
    Then carol's phone receives error 404 not_found for route "16" with ref_id "no-such-message"
    And alice's phone receives no AcknowledgmentResponse

  @ACK-3 @ENV-9 @must
  Scenario Outline: A status not allowed for the caller's role is invalid_field
    When <who>'s phone acknowledges "m1" with status <status>
    Then <who>'s phone receives error 400 invalid_field for route "16"
    And alice's phone receives no AcknowledgmentResponse

    Examples:
      | who   | status |
      | bob   | 4      |
      | bob   | 1      |
      | bob   | 0      |
      | bob   | 5      |
      | alice | 1      |
      | alice | 5      |

  @ACK-6 @must
  Scenario: An acknowledgment that does not raise the state changes nothing
    When bob's phone acknowledges "m1" with status 3
    And bob's phone receives an acknowledgment of "m1" with status 3 from bob's phone
    And alice's phone receives an acknowledgment of "m1" with status 3 from bob's phone
    And bob's phone acknowledges "m1" with status 2
    Then bob's phone receives an acknowledgment of "m1" with status 3 from bob's phone
    And alice's phone receives no AcknowledgmentResponse

  @ACK-7 @must
  Scenario: A sender device's acknowledgment only confirms
    When alice's phone acknowledges "m1" with status 4
    Then alice's phone receives an acknowledgment of "m1" with status 4 from alice's phone
    And bob's phone receives no AcknowledgmentResponse
    When bob's phone acknowledges "m1" with status 3
    And bob's phone receives an acknowledgment of "m1" with status 3 from bob's phone
    And alice's phone receives an acknowledgment of "m1" with status 3 from bob's phone
    And alice's phone acknowledges "m1" with status 2
    Then alice's phone receives an acknowledgment of "m1" with status 3 from alice's phone
    And bob's phone receives no AcknowledgmentResponse

  @ACK-4 @ENV-9 @must
  Scenario: The informative `to` of an acknowledgment is not checked
    When bob's phone sends AcknowledgmentRequest {"message_id": "$message(m1)", "status": 2, "to": {"eid": "not an eid", "connection_resource_id": "no-such-device"}}
    Then bob's phone receives AcknowledgmentResponse matching {"message_id": "$message(m1)", "status": 2, "from": {"eid": "$bob", "connection_resource_id": "phone"}}
    And alice's phone receives AcknowledgmentResponse matching {"message_id": "$message(m1)", "status": 2, "from": {"eid": "$bob", "connection_resource_id": "phone"}}
    And bob's phone receives no error

  @ACK-7 @ACK-5 @must
  Scenario: A sender's SENT confirmation carries the time the message was accepted
    When 1 second passes
    And bob's phone acknowledges "m1" with status 2
    And alice's phone receives an acknowledgment of "m1" with status 2 from bob's phone
    And alice's phone sends AcknowledgmentRequest {"message_id": "$message(m1)", "status": 4}
    Then alice's phone receives AcknowledgmentResponse matching {"message_id": "$message(m1)", "status": 4, "timestamp": "$accepted(m1)"}
