Feature: PingPong (SPEC section 7)
  The BIMIP heartbeat: clients ping and get pongs; the server pings every
  ping interval and closes a session whose pongs stop coming.

  @PING-1 @must
  Scenario Outline: A client ping is answered with a pong echoing its id and time
    Given alice is connected over <transport> as "phone"
    When alice's phone sends a ping with id "p1"
    Then alice's phone receives a pong for "p1"

    Examples:
      | transport |
      | websocket |
      | tcp       |

  @PING-1 @ENV-14 @must
  Scenario: The pong comes before the answer to any later stanza
    Given alice is connected as "phone"
    When alice's phone sends a ping with id "first"
    And alice's phone sends the bytes "0806"
    And alice's phone sends a ping with id "third"
    Then the next stanza alice's phone receives is a pong for "first"
    And the next stanza alice's phone receives is error 400 missing_payload for route "6"
    And the next stanza alice's phone receives is a pong for "third"

  @PING-2 @must
  Scenario Outline: The server pings every ping interval with a fresh id
    Given alice is connected over <transport> as "phone" and sees server pings
    Then alice's phone receives a server ping
    And that server ping of alice's phone came 1 ping interval after the session started
    And alice's phone receives another server ping
    And that server ping of alice's phone came 2 ping intervals after the session started

    Examples:
      | transport |
      | websocket |
      | tcp       |

  @PING-4 @PING-5 @must
  Scenario Outline: A session that never answers a ping is closed at the third tick
    Given alice is connected over <transport> as "phone" without answering pings
    When 2.5 ping intervals pass
    Then alice's phone is still connected
    And alice's phone receives error 408 ping_timeout for route "" within 1 ping interval
    And that error on alice's phone came 3 ping intervals after the session started
    And alice's phone receives nothing more and is closed with code 4408

    Examples:
      | transport |
      | websocket |
      | tcp       |

  @PING-4 @must
  Scenario: Other traffic does not count as a pong
    Given alice is connected as "phone" without answering pings
    When alice's phone sends a ping every 0.5 ping intervals for 2.5 ping intervals
    Then alice's phone receives error 408 ping_timeout within 1 ping interval
    And that error on alice's phone came 3 ping intervals after the session started
    And alice's phone is closed with code 4408

  @PING-4 @must
  Scenario: A pong matching by id, or by request time with an empty id, resets the count
    Given alice is connected as "phone" without answering pings
    When alice's phone receives a server ping
    And alice's phone answers the server ping by its id
    And alice's phone receives another server ping
    And alice's phone answers the server ping by its request time only
    And alice's phone receives another server ping
    And alice's phone answers the server ping by its id
    And alice's phone receives another server ping
    Then alice's phone is still connected
    And alice's phone receives no ErrorMessage

  @PING-4 @PING-5 @must
  Scenario: A link slower than the ping interval keeps its session while every pong comes back
    Given alice is connected as "phone"
    And alice's phone's writes reach the server 1.5 ping intervals late
    When 6 ping intervals pass
    Then alice's phone is still connected
    And alice's phone receives no ErrorMessage

  @PING-6 @ENV-9 @must
  Scenario Outline: A PingPong with a bad type, status or id is refused
    Given alice is connected as "phone"
    When alice's phone sends PingPong <fields>
    Then alice's phone receives error 400 invalid_field for route "6"
    And alice's phone stays connected

    Examples:
      | fields                                          |
      | {"type": 3, "status": 1, "id": "t3"}            |
      | {"type": 0, "status": 1, "id": "t0"}            |
      | {"type": 1, "status": 7, "id": "s7"}            |
      | {"type": 1, "status": 0, "id": "s0"}            |
      | {"type": 1, "status": 1, "id": "$x(129)"}       |

  @PING-7 @must
  Scenario: A pong that matches no outstanding ping is ignored
    Given alice is connected as "phone"
    When alice's phone sends PingPong {"type": 2, "status": 2, "id": "nobody-asked", "request_time": 5}
    Then alice's phone receives nothing
    And alice's phone stays connected

  @PING-7 @PING-4 @must
  Scenario: Unmatched pongs do not keep a silent session alive
    Given alice is connected over tcp as "phone" without answering pings
    When 1.5 ping intervals pass
    And alice's phone sends PingPong {"type": 2, "status": 2, "id": "wrong", "request_time": 1}
    And 1 ping interval passes
    Then alice's phone receives error 408 ping_timeout within 1 ping interval
    And that error on alice's phone came 3 ping intervals after the session started
