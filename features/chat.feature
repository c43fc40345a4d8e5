Feature: Chat (SPEC section 15)
  One-to-one messages: field rules, acceptance, versions per chat, fan-out
  to every device, idempotent resends and ordering.

  Background:
    Given alice is connected as "phone"
    And bob is connected as "phone"

  @CHAT-5 @CHAT-9 @CHAT-10 @CHAT-11 @must
  Scenario: A message reaches every receiver device and the sender's other devices
    Given alice is connected over tcp as "laptop"
    And bob is connected over tcp as "tablet"
    When alice's phone sends text "Hey Bob! 👋" to bob as "local-1"
    Then alice's phone receives a version update for "local-1" with version 1
    And bob's phone receives the chat message "local-1" from alice's phone with version 1 as receiver
    And bob's tablet receives the chat message "local-1" from alice's phone with version 1 as receiver
    And alice's laptop receives the chat message "local-1" from alice's phone with version 1 as sender
    And alice's phone receives no ChatMessage

  @CHAT-1 @must
  Scenario Outline: The receiver must be exactly one other valid EID
    When alice's phone sends TextPayloadRequest {"to": <to>, "content": "x", "message_id_local": "bad-to"}
    Then alice's phone receives error 400 invalid_field for route "14" with ref_id "bad-to"
    And alice's phone receives no VersionUpdate
    And bob's phone receives no ChatMessage

    Examples:
      | to                                          |
      | []                                          |
      | [{"eid": "$bob"}, {"eid": "$carol"}]        |
      | [{"eid": "$alice"}]                         |
      | [{"eid": "not-an-eid"}]                     |

  @CHAT-1 @must
  Scenario: Any valid EID is a receiver, whether or not it ever connected
    When alice's phone sends text "hello stranger" to zed as "z1"
    Then alice's phone receives a version update for "z1" with version 1

  @CHAT-2 @must
  Scenario Outline: Text and local id lengths are checked
    When alice's phone sends TextPayloadRequest {"to": [{"eid": "$bob"}], "content": "<content>", "message_id_local": "<local>"}
    Then alice's phone receives error 400 invalid_field for route "14"
    And bob's phone receives no ChatMessage

    Examples:
      | content     | local     |
      |             | l1        |
      | $x(16385)   | l2        |
      | x           |           |
      | x           | $x(129)   |

  @CHAT-2 @must
  Scenario: The longest text and local id are accepted
    When alice's phone sends TextPayloadRequest {"to": [{"eid": "$bob"}], "content": "$x(16384)", "message_id_local": "$x(128)"}
    Then alice's phone receives VersionUpdate matching {"type": 1, "status": 1, "version": 1}

  @CHAT-3 @must
  Scenario Outline: Media rules are checked
    When alice's phone sends MediaPayloadRequest <fields>
    Then alice's phone receives error 400 invalid_field for route "15"
    And bob's phone receives no ChatMessage

    Examples:
      | fields                                                                                                  |
      | {"to": [{"eid": "$bob"}], "message_id_local": "m", "type": 5, "cdn_url_id": "u"}                        |
      | {"to": [{"eid": "$bob"}], "message_id_local": "m", "type": 0, "cdn_url_id": "u"}                        |
      | {"to": [{"eid": "$bob"}], "message_id_local": "m", "type": 1, "cdn_url_id": ""}                         |
      | {"to": [{"eid": "$bob"}], "message_id_local": "m", "type": 1, "cdn_url_id": "$x(2049)"}                 |
      | {"to": [{"eid": "$bob"}], "message_id_local": "m", "type": 1, "cdn_url_id": "u", "caption": "$x(4097)"} |
      | {"to": [{"eid": "$bob"}], "message_id_local": "m", "type": 1, "cdn_url_id": "u", "thumbnail_url": "$x(2049)"} |
      | {"to": [{"eid": "$bob"}], "message_id_local": "m", "type": 1, "cdn_url_id": "u", "media_size_bytes": -1} |
      | {"to": [{"eid": "$bob"}], "message_id_local": "m", "type": 1, "cdn_url_id": "u", "chat_id": "another"}  |
      | {"to": [{"eid": "$bob"}], "message_id_local": "", "type": 1, "cdn_url_id": "u"}                         |

  @CHAT-3 @CHAT-11 @must
  Scenario: A media message carries its details, and the pair's own chat_id is accepted
    When alice's phone sends MediaPayloadRequest {"to": [{"eid": "$bob"}], "message_id_local": "pic", "type": 1, "cdn_url_id": "https://cdn.example.com/p.jpg", "caption": "look", "thumbnail_url": "https://cdn.example.com/t.jpg", "media_size_bytes": 2048, "created_at": 1767225600000}
    Then alice's phone receives a version update for "pic" with version 1
    And bob's phone receives ChatMessage matching {"message_id_local": "pic", "media_url": "https://cdn.example.com/p.jpg", "media_type": 1, "caption": "look", "thumbnail_url": "https://cdn.example.com/t.jpg", "media_size_bytes": 2048, "author": "receiver", "acknowledgment": 1, "version": 1, "chat_id": "$chat(pic)", "message_id": "$message(pic)", "created_at": 1767225600000}
    When alice's phone sends MediaPayloadRequest {"to": [{"eid": "$bob"}], "message_id_local": "pic2", "type": 4, "cdn_url_id": "f", "chat_id": "$chat(pic)"}
    Then alice's phone receives a version update for "pic2" with version 2

  @CHAT-4 @must
  Scenario: Field rules are checked before the block
    Given bob's phone blocks alice
    When alice's phone sends TextPayloadRequest {"to": [{"eid": "$bob"}], "content": "", "message_id_local": "both"}
    Then alice's phone receives error 400 invalid_field for route "14"

  @CHAT-4 @CHAT-14 @must
  Scenario: A resend of an accepted message is answered as before even after a block
    Given alice's phone sends text "first" to bob as "r1"
    And alice's phone receives a version update for "r1" with version 1
    When bob's phone blocks alice
    And alice's phone sends text "first" to bob as "r1"
    Then alice's phone receives a version update for "r1" with version 1
    And alice's phone receives no error

  @CHAT-4 @must
  Scenario: The block is checked before the receiver's queue limit
    Given alice's phone fills carol's queue
    And carol is connected as "phone"
    And carol's phone blocks alice
    When alice's phone sends text "one too many" to carol as "over"
    Then alice's phone receives error 403 blocked for route "14" with ref_id "over"

  @CHAT-6 @CHAT-7 @CHAT-8 @must
  Scenario: Versions count per chat, both directions share a chat, message ids are unique
    Given carol is connected as "phone"
    When alice's phone sends text to bob as "a1" and receives version 1
    And bob's phone sends text to alice as "b1" and receives version 2
    And carol's phone sends text to alice as "c1" and receives version 1
    And alice's phone sends text to bob as "a2" and receives version 3
    And alice's phone sends text to carol as "a3" and receives version 2
    Then alice's phone receives ChatMessage matching {"message_id_local": "b1", "chat_id": "$chat(a1)", "version": 2}
    And alice's phone receives ChatMessage matching {"message_id_local": "c1", "chat_id": "$chat(a3)", "version": 1}

  @CHAT-7 @must
  Scenario: A rejected request uses no version
    When alice's phone sends text to bob as "v1" and receives version 1
    And alice's phone sends TextPayloadRequest {"to": [{"eid": "$bob"}], "content": "", "message_id_local": "v-bad"}
    And alice's phone receives error 400 invalid_field for route "14"
    And alice's phone sends text to bob as "v2" and receives version 2

  @CHAT-12 @must
  Scenario: Delivery does not wait for the sender's VersionUpdate RESPONSE
    When alice's phone sends text "bye" to bob as "gone"
    And alice's phone receives a version update for "gone" with version 1
    And alice's phone closes its connection
    Then bob's phone receives the chat message "gone" from alice's phone with version 1 as receiver

  @CHAT-13 @must
  Scenario: A client VersionUpdate RESPONSE is accepted silently, whatever it names
    When alice's phone sends text "m" to bob as "vu"
    And alice's phone receives a version update for "vu" with version 1
    And alice's phone sends VersionUpdate {"type": 2, "message_id": "$message(vu)", "status": 1}
    And alice's phone sends VersionUpdate {"type": 2, "message_id": "no-such-message", "status": 0}
    Then alice's phone receives nothing

  @CHAT-14 @must
  Scenario: A resend repeats the VersionUpdate and nothing else
    When alice's phone sends text "original" to bob as "same"
    And alice's phone receives a version update for "same" with version 1
    And bob's phone receives the chat message "same" from alice's phone with version 1 as receiver
    And alice's phone sends text "changed" to bob as "same"
    Then alice's phone receives a version update for "same" with version 1
    And bob's phone receives no ChatMessage
    And alice's phone sends text to bob as "next" and receives version 2

  @CHAT-16 @QUE-1 @must
  Scenario: Each device gets a chat's messages in version order, live
    When alice's phone sends text "one" to bob as "o1"
    And alice's phone sends text "two" to bob as "o2"
    And alice's phone sends text "three" to bob as "o3"
    Then the next stanza bob's phone receives is the chat message "o1" from alice's phone with version 1 as receiver
    And the next stanza bob's phone receives is the chat message "o2" from alice's phone with version 2 as receiver
    And the next stanza bob's phone receives is the chat message "o3" from alice's phone with version 3 as receiver

  @CHAT-15 @CHAT-14 @SES-8 @must
  Scenario: A resend after a server restart is answered with the original message
    When alice's phone sends text "original" to bob as "kept"
    And alice's phone receives a version update for "kept" with version 1
    And the server restarts
    And alice is connected as "phone"
    And alice's phone sends text "original" to bob as "kept"
    Then alice's phone receives a version update for "kept" with version 1
    And alice's phone sends text to bob as "after" and receives version 2

  @CHAT-5 @ENV-9 @must
  Scenario: A device named in a chat request's `to` narrows nothing: every device of the receiver gets the message
    Given bob is connected as "tablet"
    When alice's phone sends TextPayloadRequest {"to": [{"eid": "$bob", "connection_resource_id": "tablet"}], "content": "for all", "message_id_local": "d1"}
    Then alice's phone receives a version update for "d1" with version 1
    And bob's phone receives the chat message "d1" from alice's phone with version 1 as receiver
    And bob's tablet receives the chat message "d1" from alice's phone with version 1 as receiver

  @CHAT-14 @QUE-7 @must
  Scenario: A connection lost inside the VersionUpdate: the resend gets the same message, delivered once
    Given alice's phone loses its connection in the middle of the next VersionUpdate
    When alice's phone sends text "only once" to bob as "lost"
    Then alice's phone is closed
    And bob's phone receives the chat message "lost" from alice's phone with version 1 as receiver
    When alice is connected as "phone"
    And alice's phone sends text "only once" to bob as "lost"
    Then alice's phone receives a version update for "lost" with version 1
    And bob's phone receives no ChatMessage
    And alice's phone sends text to bob as "next" and receives version 2
