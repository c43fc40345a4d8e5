Feature: Transports (SPEC section 2)
  Stanza sizes, WebSocket messages, native TCP frames, the first frame on
  TCP, its deadline, and the Authenticate RESPONSE.

  @TRN-1 @ENV-10 @must
  Scenario Outline: A stanza of exactly 65536 bytes is accepted
    Given alice is connected over <transport> as "phone"
    When alice's phone sends a ping with id "big" padded to 65536 bytes
    Then alice's phone receives a pong for "big"

    Examples:
      | transport |
      | websocket |
      | tcp       |

  @TRN-2 @must
  Scenario Outline: An empty stanza is answered with missing_payload
    Given alice is connected over <transport> as "phone"
    When alice's phone sends the bytes ""
    Then alice's phone receives error 400 missing_payload
    And alice's phone stays connected

    Examples:
      | transport |
      | websocket |
      | tcp       |

  @TRN-3 @ENV-1 @ENV-2 @must
  Scenario: Every WebSocket message from the server is one stanza
    Given alice is connected over websocket as "phone"
    And bob is connected over websocket as "phone"
    When alice's phone adds bob as a subscriber
    And alice's phone sends text "hello" to bob as "m1"
    And alice's phone sends a ping with id "p"
    Then alice's phone receives a version update for "m1" with version 1
    And alice's phone receives a pong for "p"
    And bob's phone receives the chat message "m1" from alice's phone with version 1 as receiver
    And every stanza received so far was a valid stanza

  @TRN-4 @should
  Scenario: The server selects the bimip.v1 subprotocol when offered
    Given alice is connected over websocket as "phone"
    Then alice's phone was given the subprotocol "bimip.v1"

  @TRN-18 @must
  Scenario Outline: A request that is not a WebSocket upgrade is answered with HTTP 400
    When a client sends the HTTP request "<request>" to the WebSocket listener
    Then the answer is HTTP 400 and the connection closes

    Examples:
      | what              | request                                                                                                                                                                  |
      | no upgrade at all | GET $path HTTP/1.1\\r\\nHost: bimip.test\\r\\n\\r\\n                                                                                                                          |
      | not a GET         | POST $path HTTP/1.1\\r\\nHost: bimip.test\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\nSec-WebSocket-Version: 13\\r\\nContent-Length: 0\\r\\n\\r\\n |
      | no key            | GET $path HTTP/1.1\\r\\nHost: bimip.test\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\nSec-WebSocket-Version: 13\\r\\n\\r\\n                                             |

  @TRN-5 @ERR-6 @must
  Scenario: A WebSocket text message is answered with text_frame and close 1003
    Given alice is connected over websocket as "phone"
    When alice's phone sends the text message "hello"
    Then alice's phone receives error 400 text_frame
    And alice's phone receives nothing more and is closed with code 1003

  @TRN-6 @must
  Scenario: A WebSocket message over the limit closes with code 1009
    Given alice is connected over websocket as "phone"
    When alice's phone sends a stanza of 65537 bytes
    Then alice's phone is closed with code 1009 after at most error 413 too_large

  @TRN-8 @must
  Scenario: A TCP frame is a 4-byte big-endian length and the stanza
    Given alice is connected over tcp as "phone"
    When alice's phone writes the bytes "00000002 0806"
    Then alice's phone receives error 400 missing_payload for route "6"
    And alice's phone stays connected

  @TRN-19 @QUE-3 @QUE-7 @must
  Scenario: A device that stops reading gets every message in order, with no gap
    Given alice is connected as "phone"
    And bob is connected as "phone"
    And bob's phone stops reading
    When alice's phone sends 15 texts of 16000 bytes to bob as "stall-1" to "stall-15"
    And bob's phone reads again
    Then bob's phone gets "stall-1" to "stall-15" from alice in order and without a gap, reconnecting if it is closed

  @TRN-20 @should
  Scenario: A device that stops reading for 15 messages keeps its connection
    Given alice is connected as "phone"
    And bob is connected as "phone"
    And bob's phone stops reading
    When alice's phone sends 15 texts of 16000 bytes to bob as "pause-1" to "pause-15"
    And bob's phone reads again
    Then bob's phone gets "pause-1" to "pause-15" from alice in order and without a gap, on one connection

  @TRN-3 @TRN-9 @must
  Scenario: Stanzas that reach the server one byte at a time are read whole
    Given alice is connected as "phone"
    And bob is connected as "phone"
    And alice's phone's writes reach the server one byte at a time
    When alice's phone sends text "one byte at a time" to bob as "split-1"
    And alice's phone sends a ping with id "split-2"
    Then alice's phone receives a version update for "split-1" with version 1
    And alice's phone receives a pong for "split-2"
    And bob's phone receives the chat message "split-1" from alice's phone with version 1 as receiver

  @TRN-9 @must
  Scenario: A frame written one byte at a time is reassembled
    Given alice is connected over tcp as "phone"
    When alice's phone writes a ping with id "slow" one byte at a time
    Then alice's phone receives a pong for "slow"

  @TRN-9 @ENV-14 @must
  Scenario: Several frames in one write are read as several stanzas, in order
    Given alice is connected over tcp as "phone"
    When alice's phone writes pings "a", "b" and "c" in one write
    Then the next stanza alice's phone receives is a pong for "a"
    And the next stanza alice's phone receives is a pong for "b"
    And the next stanza alice's phone receives is a pong for "c"

  @TRN-10 @must
  Scenario: A TCP length over the limit is answered with too_large and a close
    Given alice is connected over tcp as "phone"
    When alice's phone writes the bytes "00010001 0806"
    Then alice's phone receives error 413 too_large
    And alice's phone is closed

  @TRN-10 @must
  Scenario: A first TCP frame over the limit is answered with too_large too
    Given alice is connected over tcp as "phone" without authenticating
    When alice's phone writes the bytes "7fffffff"
    Then alice's phone receives error 413 too_large
    And alice's phone is closed

  @TRN-11 @must
  Scenario Outline: A first TCP frame that is not Authenticate REQUEST is refused
    Given alice is connected over tcp as "phone" without authenticating
    When alice's phone writes the bytes "<frame>"
    Then alice's phone receives error 401 token_missing for route "<route>"
    And alice's phone is closed

    Examples:
      | frame                                          | route |
      | 0000000d 0806320910011801 3a0370696e           | 6     |
      | 00000000                                       |       |
      | 00000001 08                                    |       |
      | 00000007 081bda01021802                        | 27    |
      | 00000002 081b                                  |       |

  @TRN-12 @must
  Scenario: No Authenticate within the auth deadline gives auth_timeout
    Given alice is connected over tcp as "phone" without authenticating
    When 0.7 auth deadlines pass
    Then alice's phone receives nothing
    And alice's phone receives error 408 auth_timeout for route "" within 0.6 auth deadlines
    And alice's phone is closed

  @TRN-13 @must
  Scenario Outline: Authenticate inside a session is not allowed, whatever its type
    Given alice is connected over <transport> as "phone"
    When alice's phone sends Authenticate {"type": <type>, "token": "$token(alice/phone)"}
    Then alice's phone receives error 405 not_allowed for route "27"
    And alice's phone stays connected

    Examples:
      | transport | type |
      | websocket | 1    |
      | tcp       | 1    |
      | websocket | 0    |
      | tcp       | 0    |

  @TRN-15 @AUTH-12 @must
  Scenario: A TCP session starts with the Authenticate RESPONSE
    Given alice is connected over tcp as "phone"
    Then alice's phone received an Authenticate response

  @TRN-16 @AUTH-12 @should
  Scenario: A WebSocket session starts with the Authenticate RESPONSE
    Given alice is connected over websocket as "phone"
    Then alice's phone received an Authenticate response

  @TRN-7 @must
  Scenario: A WebSocket Ping control frame is answered with a Pong carrying the same data
    Given alice is connected over websocket as "phone"
    When alice's phone sends a WebSocket Ping frame with data "are you there?"
    Then alice's phone receives a WebSocket Pong frame with data "are you there?"
    And alice's phone stays connected
