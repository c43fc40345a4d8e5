Feature: Errors (SPEC section 5)
  Every error is an ErrorMessage from the table, with the offending route,
  its correlation id, the server's clock; non-fatal errors change nothing,
  fatal ones end the connection.

  @ERR-1 @ERR-2 @ERR-4 @must
  Scenario: Errors carry a code and kind from the table, the route and the server's time
    Given alice is connected as "phone"
    When alice's phone sends SubscriberAddRequest {"subscriber": {"eid": "not-an-eid"}}
    Then alice's phone receives error 400 invalid_field for route "9" with ref_id ""
    When alice's phone sends the bytes "0863"
    Then alice's phone receives error 501 unknown_route for route "99"
    When alice's phone sends AcknowledgmentRequest {"message_id": "no-such-message", "status": 2}
    Then alice's phone receives error 404 not_found for route "16" with ref_id "no-such-message"

  @ERR-3 @must
  Scenario Outline: ref_id is the offending stanza's correlation id
    Given alice is connected as "phone"
    When alice's phone sends <message> <fields>
    Then alice's phone receives error 400 invalid_field for route "<route>" with ref_id "<ref_id>"

    Examples:
      | message               | fields                                                                      | route | ref_id    |
      | PingPong              | {"type": 3, "status": 1, "id": "r1"}                                        | 6     | r1        |
      | TextPayloadRequest    | {"to": [{"eid": "$bob"}], "content": "", "message_id_local": "t1"}          | 14    | t1        |
      | MediaPayloadRequest   | {"to": [{"eid": "$bob"}], "message_id_local": "m1", "type": 9, "cdn_url_id": "u"} | 15 | m1   |
      | AwarenessRequest      | {"to": {"eid": "nobody"}, "awareness_identifier": 12345}                    | 4     | 12345     |
      | AwarenessVisibility   | {"id": "v9", "type": 1, "visibility": 9}                                    | 23    | v9        |
      | AcknowledgmentRequest | {"message_id": "a1", "status": 7}                                           | 16    | a1        |
      | BlockSubscriber       | {"type": 1, "action": 5, "subscriber": {"eid": "$bob"}}                     | 11    |           |
      | PingPong              | {"type": 3, "status": 1, "id": "$x(200)"}                                   | 6     | $x(128)   |

  @ERR-5 @VIS-4 @must
  Scenario: A refused stanza has no effect and the connection stays open
    Given alice is connected as "phone"
    When alice's phone sends AwarenessVisibility {"id": "bad", "type": 1, "visibility": 9, "location_sharing": 1}
    Then alice's phone receives error 400 invalid_field for route "23" with ref_id "bad"
    When alice's phone sends AwarenessVisibility {"id": "check", "type": 1}
    Then alice's phone receives AwarenessVisibility matching {"id": "check", "type": 2, "status": 1, "visibility": 2, "location_sharing": 2}

  @ERR-6 @must
  Scenario Outline: A fatal error is the last stanza before the close
    Given alice is connected over <transport> as "phone"
    When alice's phone sends <what>
    Then alice's phone receives error <code> <kind>
    And alice's phone receives nothing more and is closed with code <close>

    Examples:
      | transport | what                          | code | kind      | close |
      | websocket | the text message "x"          | 400  | text_frame | 1003 |
      | websocket | a stanza of 65537 bytes       | 413  | too_large | 1009  |
      | tcp       | a stanza of 65537 bytes       | 413  | too_large | 1009  |
