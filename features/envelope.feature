Feature: Envelope (SPEC section 4)
  One MessageScheme per stanza with one payload whose field number is the
  route; what the server answers to every envelope fault, and in what order.

  @ENV-3 @ERR-2 @must
  Scenario Outline: Bytes that do not decode are answered with malformed and route ""
    Given alice is connected over <transport> as "phone"
    When alice's phone sends the bytes "<bytes>"
    Then alice's phone receives error 400 malformed for route "" with ref_id ""
    And alice's phone stays connected

    Examples:
      | transport | bytes                    |
      | websocket | 08                       |
      | tcp       | 08                       |
      | websocket | 08063203 3a01ff          |
      | websocket | 080632ff01               |
      | tcp       | 08ffffffffffffffffffff01 |
      | websocket | 0f                       |

  @ENV-4 @ERR-2 @must
  Scenario Outline: A stanza without a payload is answered with missing_payload
    Given alice is connected as "phone"
    When alice's phone sends the bytes "<bytes>"
    Then alice's phone receives error 400 missing_payload for route "<route>"
    And alice's phone stays connected

    Examples:
      | bytes | route |
      | 0806  | 6     |
      | 081b  | 27    |
      |       | 0     |

  @ENV-5 @ERR-2 @ERR-3 @must
  Scenario: A route that differs from the payload's field number is route_mismatch, with no ref_id
    Given alice is connected as "phone"
    When alice's phone sends the bytes "0807320f100118012080d095ffbc313a027031"
    Then alice's phone receives error 400 route_mismatch for route "7" with ref_id ""
    And alice's phone stays connected

  @ENV-6 @ERR-2 @must
  Scenario Outline: A route outside the table is unknown_route
    Given alice is connected as "phone"
    When alice's phone sends the bytes "<bytes>"
    Then alice's phone receives error 501 unknown_route for route "<route>"
    And alice's phone stays connected

    Examples:
      | bytes                    | route |
      | 0863                     | 99    |
      | 0801                     | 1     |
      | 08639a0600               | 99    |
      | 08ffffffffffffffffff01   | -1    |

  @ENV-7 @must
  Scenario Outline: A sender identity that differs from the session is identity_mismatch
    Given alice is connected as "phone"
    When alice's phone sends PingPong {"type": 1, "status": 1, "id": "spoof", "to": <to>}
    Then alice's phone receives error 403 identity_mismatch for route "6" with ref_id "spoof"
    And alice's phone receives no PingPong

    Examples:
      | to                                                          |
      | {"eid": "$mallory"}                                         |
      | {"eid": "$alice", "connection_resource_id": "laptop"}       |
      | {"eid": "", "connection_resource_id": "laptop"}             |

  # TokenRevokeRequest.to naming another user is `forbidden` instead (TOK-1): it names whose tokens, not the sender.
  @ENV-7 @must
  Scenario Outline: Every stanza that names its sender refuses another identity
    Given alice is connected as "phone"
    When alice's phone sends <stanza> <fields>
    Then alice's phone receives error 403 identity_mismatch for route "<route>"
    And alice's phone stays connected

    Examples:
      | stanza                | fields                                                              | route |
      | Logout                | {"type": 1, "entity": {"eid": "$mallory"}}                          | 12    |
      | TokenRefreshRequest   | {"to": {"eid": "$mallory"}}                                         | 19    |
      | AcknowledgmentRequest | {"from": {"eid": "$mallory"}, "message_id": "m-1", "status": 2}     | 16    |
      | AcknowledgmentRequest | {"from": {"eid": "$alice", "connection_resource_id": "laptop"}, "message_id": "m-1", "status": 2} | 16 |

  @ENV-7 @ERR-5 @must
  Scenario: A spoofed chat sender is refused and the message goes nowhere
    Given alice is connected as "phone"
    And carol is connected as "phone"
    When alice's phone sends TextPayloadRequest {"from": {"eid": "$bob"}, "to": [{"eid": "$carol"}], "content": "hi", "message_id_local": "spoof-1"}
    Then alice's phone receives error 403 identity_mismatch for route "14" with ref_id "spoof-1"
    And alice's phone receives no VersionUpdate
    And carol's phone receives no ChatMessage

  @ENV-7 @PING-1 @must
  Scenario: The server fills an identity the client left empty or partial
    Given alice is connected as "phone"
    When alice's phone sends PingPong {"type": 1, "status": 1, "id": "filled", "to": {"eid": "$alice"}}
    Then alice's phone receives PingPong matching {"type": 2, "id": "filled", "to": {"eid": "$alice", "connection_resource_id": "phone"}}

  @ENV-8 @must
  Scenario Outline: A server-only stanza or a RESPONSE from a client is not_allowed
    Given alice is connected as "phone"
    When alice's phone sends <message> <fields>
    Then alice's phone receives error 405 not_allowed for route "<route>"
    And alice's phone stays connected

    Examples:
      | message                | fields                              | route |
      | AwarenessResponse      | {"status": 1}                       | 3     |
      | ErrorMessage           | {"code": 400, "message": "x"}       | 5     |
      | TokenRevokeResponse    | {"type": 2, "status": 1}            | 8     |
      | SubscriberAddResponse  | {"status": 1}                       | 10    |
      | ChatMessage            | {"message_id": "m", "text": "x"}    | 13    |
      | AcknowledgmentResponse | {"message_id": "m", "status": 2}    | 17    |
      | TokenRefreshResponse   | {"status": 1}                       | 20    |
      | BlockSubscriber        | {"type": 2, "status": 1}            | 11    |
      | Logout                 | {"type": 2, "status": 3}            | 12    |
      | VersionUpdate          | {"type": 1, "message_id": "m"}      | 18    |
      | AwarenessSubscription  | {"type": 2, "status": 1}            | 21    |
      | SubscriberRemove       | {"type": 2, "status": 1}            | 22    |
      | AwarenessVisibility    | {"type": 2, "status": 1}            | 23    |
      | Authenticate           | {"type": 2, "status": 1}            | 27    |
      | TokenRevokeRequest     | {"type": 2}                         | 7     |

  @ENV-9 @must
  Scenario Outline: A code outside its table is invalid_field
    Given alice is connected as "phone"
    When alice's phone sends <message> <fields>
    Then alice's phone receives error 400 invalid_field for route "<route>"
    And alice's phone stays connected

    Examples:
      | message               | fields                                               | route |
      | AwarenessVisibility   | {"id": "v", "type": 1, "visibility": 4}              | 23    |
      | AwarenessSubscription | {"type": 0, "action": 1, "to": {"eid": "$bob"}}      | 21    |
      | BlockSubscriber       | {"type": 1, "action": 3, "subscriber": {"eid": "$bob"}} | 11 |
      | Logout                | {"type": 3}                                          | 12    |
      | VersionUpdate         | {"type": 0}                                          | 18    |

  @ENV-10 @must
  Scenario: Fields in any order, defaults written out and unknown fields are accepted
    Given alice is connected as "phone"
    When alice's phone sends the bytes "320c3a01751801100130009806010806"
    Then alice's phone receives a pong for "u"

  @ENV-11 @must
  Scenario: With two payloads the last one counts
    Given alice is connected as "phone"
    When alice's phone sends the bytes "080622003207100118013a0176"
    Then alice's phone receives a pong for "v"
    When alice's phone sends the bytes "080422003207100118013a0176"
    Then alice's phone receives error 400 route_mismatch for route "4"

  @ENV-13 @must
  Scenario: Only the first failed check is reported
    Given alice is connected as "phone"
    When alice's phone sends PingPong {"type": 1, "status": 9, "id": "both", "to": {"eid": "$mallory"}}
    Then alice's phone receives error 403 identity_mismatch for route "6"
    And alice's phone receives no error
    When alice's phone sends the bytes "08066a00"
    Then alice's phone receives error 400 route_mismatch for route "6"
    And alice's phone receives no error

  @ENV-14 @must
  Scenario: Answers come in the order of the stanzas
    Given alice is connected over tcp as "phone"
    When alice's phone sends a ping with id "one"
    And alice's phone sends the bytes "08"
    And alice's phone sends PingPong {"type": 5, "status": 1, "id": "three"}
    And alice's phone sends a ping with id "four"
    Then the next stanza alice's phone receives is a pong for "one"
    And the next stanza alice's phone receives is error 400 malformed for route ""
    And the next stanza alice's phone receives is error 400 invalid_field for route "6"
    And the next stanza alice's phone receives is a pong for "four"

  @ENV-12 @must
  Scenario Outline: Every stanza the server sends is encoded canonically
    Given alice is connected over <transport> as "phone"
    And bob is connected over <transport> as "phone"
    When alice's phone sends text "hello" to bob as "canon"
    And alice's phone receives a version update for "canon" with version 1
    And bob's phone receives the chat message "canon" from alice's phone with version 1 as receiver
    And alice's phone sends a ping with id "p1"
    And alice's phone receives a pong for "p1"
    And bob's phone sends the bytes "08"
    And bob's phone receives error 400 malformed for route "" with ref_id ""
    Then every stanza alice's phone received was encoded canonically
    And every stanza bob's phone received was encoded canonically

    Examples:
      | transport |
      | websocket |
      | tcp       |
