Feature: Subscribers (SPEC section 11)
  An owner adds a subscriber, who may then follow the owner; one direction.

  Background:
    Given alice is connected as "phone"
    And bob is connected as "phone"

  @SUB-1 @SUB-2 @AWR-11 @must
  Scenario: Adding a subscriber lets it see the owner, not the other way round
    When alice's phone adds bob as a subscriber
    Then bob's phone receives alice's status as online
    When bob's phone asks about alice
    Then bob's phone learns that alice is online
    When alice's phone asks about bob
    Then alice's phone learns that bob is unavailable

  @SUB-3 @must
  Scenario: Adding a subscriber again succeeds with the same resource id
    When alice's phone adds bob as a subscriber with nickname "Bobby"
    And alice's phone adds bob as a subscriber with nickname "Robert"
    Then bob's phone receives alice's status as online

  @SUB-2 @must
  Scenario: A client-supplied resource id is ignored
    When alice's phone sends SubscriberAddRequest {"subscriber": {"eid": "$bob"}, "subscriber_resource_id": "mine"}
    Then alice's phone receives SubscriberAddResponse matching {"status": 1, "message": "subscriber added", "subscriber": {"eid": "$bob"}}
    And alice's phone receives no SubscriberAddResponse

  @SUB-4 @must
  Scenario Outline: A bad subscriber or a long label is invalid_field
    When alice's phone sends SubscriberAddRequest <fields>
    Then alice's phone receives error 400 invalid_field for route "9" with ref_id ""
    And alice's phone receives no SubscriberAddResponse

    Examples:
      | fields                                                     |
      | {"subscriber": {"eid": "$alice"}}                          |
      | {"subscriber": {"eid": "not-an-eid"}}                      |
      | {"subscriber": {"eid": ""}}                                |
      | {"subscriber": {"eid": "$bob"}, "nickname": "$x(129)"}     |
      | {"subscriber": {"eid": "$bob"}, "group": "$x(129)"}        |

  @SUB-5 @must
  Scenario: Adding across a block succeeds, and the block still hides
    Given alice's phone blocks bob
    When alice's phone adds bob as a subscriber
    Then bob's phone receives nothing about alice
    When bob's phone asks about alice
    Then bob's phone learns that alice is unavailable

  @SUB-6 @must
  Scenario: Removing is confirmed, also when there was nothing to remove
    When alice's phone removes bob as a subscriber
    And alice's phone adds bob as a subscriber
    And alice's phone removes bob as a subscriber
    And alice's phone removes bob as a subscriber
    Then alice's phone receives no error

  @SUB-6 @must
  Scenario Outline: Removing self or a bad EID is invalid_field
    When alice's phone sends SubscriberRemove {"type": 1, "subscriber": {"eid": "<eid>"}}
    Then alice's phone receives error 400 invalid_field for route "22"

    Examples:
      | eid        |
      | $alice     |
      | not-an-eid |

  @SUB-7 @AWR-12 @must
  Scenario: A removed subscriber loses sight at once
    Given alice's phone adds bob as a subscriber
    And bob's phone receives alice's status as online
    When alice's phone removes bob as a subscriber
    Then bob's phone receives alice's status as unavailable
    When bob's phone asks about alice
    Then bob's phone learns that alice is unavailable
    When alice's phone sets her status to busy
    Then bob's phone receives nothing about alice

  @SUB-7 @must
  Scenario: A removed subscriber of a public user keeps sight and hears nothing
    Given alice's phone sets her visibility to public
    And alice's phone adds bob as a subscriber
    And bob's phone receives alice's status as online
    When alice's phone removes bob as a subscriber
    Then bob's phone receives nothing about alice
    When bob's phone asks about alice
    Then bob's phone learns that alice is online
