Feature: Location (SPEC section 14)
  Live location fixes, only to allowed subscribers, never stored or queued.

  Background:
    Given alice is connected as "phone"
    And bob is connected as "phone"
    And carol is connected as "phone"
    And alice's phone adds bob as a subscriber
    And alice's phone sets her visibility to public

  @LOC-1 @LOC-2 @must
  Scenario: A fix reaches subscribers who may see the user, and nobody else
    Given alice's phone turns location sharing on
    When alice's phone shares her location 52.5, 13.4
    Then bob's phone receives alice's location 52.5, 13.4 from her phone
    And carol's phone receives no LocationStream
    And alice's phone receives nothing

  @LOC-2 @must
  Scenario: A fix for one peer reaches every device of that peer
    Given alice's phone turns location sharing on
    And bob is connected over tcp as "tablet"
    When alice's phone shares her location -33.9, 151.2 with bob
    Then bob's phone receives alice's location -33.9, 151.2 from her phone
    And bob's tablet receives alice's location -33.9, 151.2 from her phone

  @LOC-2 @LOC-1 @must
  Scenario: A fix for a peer who may not see it is dropped silently
    Given alice's phone turns location sharing on
    When alice's phone shares her location 1.5, 2.5 with carol
    Then carol's phone receives no LocationStream
    And alice's phone receives no error

  @LOC-3 @must
  Scenario: A fix is never queued or replayed
    Given alice's phone turns location sharing on
    And bob's phone closes its connection
    When alice's phone shares her location 10.5, 20.5
    And bob is connected as "phone"
    Then bob's phone receives no LocationStream

  @LOC-4 @LOC-1 @AWR-13 @must
  Scenario: The latest fix is reported to allowed viewers only, until sharing stops
    Given alice's phone turns location sharing on
    When alice's phone shares her location 48.1, 11.6
    And bob's phone receives alice's location 48.1, 11.6 from her phone
    And bob's phone asks about alice
    Then bob's phone learns that alice is online at 48.1, 11.6
    When carol's phone asks about alice
    Then carol's phone learns that alice is online
    When alice's phone turns location sharing off
    And bob's phone asks about alice
    Then bob's phone learns that alice is online

  @LOC-4 @must
  Scenario: The latest fix goes when the user goes offline
    Given alice's phone turns location sharing on
    And alice's phone shares her location 48.1, 11.6
    And bob's phone receives alice's location 48.1, 11.6 from her phone
    When alice's phone closes its connection
    And bob's phone receives alice's status as offline
    And alice is connected as "phone"
    And bob's phone asks about alice
    Then bob's phone learns that alice is online

  @LOC-4 @AWR-10 @must
  Scenario: Awareness notifications carry the latest fix to allowed viewers
    Given alice's phone turns location sharing on
    And alice's phone shares her location 48.1, 11.6
    And bob's phone receives alice's location 48.1, 11.6 from her phone
    And carol's phone subscribes to alice's awareness
    And carol's phone receives alice's status as online
    When alice's phone sets her status to busy
    Then bob's phone receives alice's status as busy at 48.1, 11.6
    And carol's phone receives alice's status as busy

  @LOC-5 @must
  Scenario Outline: Out-of-range coordinates or a bad target are invalid_field
    Given alice's phone turns location sharing on
    When alice's phone sends LocationStream <fields>
    Then alice's phone receives error 400 invalid_field for route "24"
    And bob's phone receives no LocationStream

    Examples:
      | fields                                                     |
      | {"id": "f", "latitude": 90.5, "longitude": 0}              |
      | {"id": "f", "latitude": 0, "longitude": -180.5}            |
      | {"id": "f", "latitude": "NaN", "longitude": 1}             |
      | {"id": "f", "latitude": 1, "longitude": "Infinity"}        |
      | {"id": "f", "latitude": 1, "longitude": 1, "to": {"eid": "$alice"}}    |
      | {"id": "f", "latitude": 1, "longitude": 1, "to": {"eid": "not-an-eid"}} |

  @LOC-6 @must
  Scenario: A fix while sharing is off is forbidden
    When alice's phone shares her location 52.5, 13.4
    Then alice's phone receives ErrorMessage matching {"code": 403, "message": "forbidden", "route": "24"}
    And bob's phone receives no LocationStream

  @LOC-4 @LOC-2 @must
  Scenario: A fix sent to one peer, delivered or dropped, is the latest fix for every allowed viewer
    Given alice's phone turns location sharing on
    When alice's phone shares her location 1.5, 2.5 with carol
    And carol's phone receives no LocationStream
    And bob's phone asks about alice
    Then bob's phone learns that alice is online at 1.5, 2.5
    And bob's phone receives no LocationStream
