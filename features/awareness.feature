Feature: Awareness (SPEC section 10)
  Presence per user, intentions to one peer, who may see whom, and how
  watchers hear about changes.

  Background:
    Given bob is connected as "phone"

  @AWR-1 @AWR-10 @must
  Scenario: A subscriber hears the user come online
    Given alice is connected over websocket as "phone"
    And alice's phone adds bob as a subscriber
    And bob's phone receives alice's status as online
    And alice's phone closes its connection
    And bob's phone receives alice's status as offline
    When alice is connected over tcp as "laptop"
    Then bob's phone receives alice's status as online
    And alice's laptop receives nothing about alice

  @AWR-2 @AWR-10 @must
  Scenario: The last session ending makes the user offline with last_seen; the user-set status is gone
    Given alice is connected as "phone"
    And alice is connected as "laptop"
    And alice's phone adds bob as a subscriber
    And bob's phone receives alice's status as online
    And alice's phone sets her status to away
    And bob's phone receives alice's status as away
    When alice's phone closes its connection
    Then bob's phone receives nothing about alice
    When alice's laptop logs out
    Then bob's phone receives alice's status as offline
    When bob's phone asks about alice
    Then bob's phone learns that alice is offline
    When alice is connected as "phone"
    Then bob's phone receives alice's status as online

  @AWR-3 @must
  Scenario: A presence change is not answered and reaches watchers only when it changes
    Given alice is connected as "phone"
    And alice's phone adds bob as a subscriber
    And bob's phone receives alice's status as online
    When alice's phone sets her status to busy
    Then bob's phone receives alice's status as busy
    And alice's phone receives nothing
    When alice's phone sets her status to busy
    Then bob's phone receives nothing about alice
    When alice's phone sets her status to do not disturb for 30 seconds
    Then bob's phone receives alice's status as do not disturb with ttl 30

  @AWR-4 @must
  Scenario Outline: An awareness notification that fits neither form is invalid_field
    Given alice is connected as "phone"
    When alice's phone sends AwarenessNotification <fields>
    Then alice's phone receives error 400 invalid_field for route "2"
    And alice's phone stays connected

    Examples:
      | fields                                                        |
      | {"status": 2}                                                 |
      | {"status": 0}                                                 |
      | {"status": 6}                                                 |
      | {"status": 3, "ttl": -1}                                      |
      | {"status": 3, "awareness_intention": 1}                       |
      | {"to": {"eid": "$alice"}, "awareness_intention": 1}           |
      | {"to": {"eid": "not-an-eid"}, "awareness_intention": 1}       |
      | {"to": {"eid": "$bob"}, "awareness_intention": 4}             |
      | {"to": {"eid": "$bob"}, "awareness_intention": 1, "status": 1} |

  @AWR-5 @must
  Scenario: A status with a ttl lapses to online
    Given alice is connected as "phone"
    And alice's phone adds bob as a subscriber
    And bob's phone receives alice's status as online
    When alice's phone sets her status to away for 2 seconds
    Then bob's phone receives alice's status as away with ttl 2
    When 1 second passes
    Then bob's phone receives nothing about alice
    And bob's phone receives alice's status as online within 2 seconds

  @AWR-6 @should
  Scenario: The user's other devices see the change, the changing device does not
    Given alice is connected over websocket as "phone"
    And alice is connected over tcp as "laptop"
    When alice's phone sets her status to busy
    Then alice's laptop receives alice's status as busy
    And alice's phone receives nothing

  @AWR-6 @AWR-5 @should
  Scenario: A ttl lapse is the server's change: every device of the user sees it, the one that set the ttl too
    Given alice is connected over websocket as "phone"
    And alice is connected over tcp as "laptop"
    When alice's phone sets her status to away for 2 seconds
    And alice's laptop receives alice's status as away with ttl 2
    Then alice's phone receives alice's status as online within 4 seconds
    And alice's laptop receives alice's status as online within 1 second

  @AWR-7 @must
  Scenario: An intention reaches every online device of the peer, and only then
    Given alice is connected over websocket as "phone"
    And bob is connected over tcp as "tablet"
    When alice's phone signals typing to bob for 5 seconds
    Then bob's phone receives alice's typing signal from her phone for 5 seconds
    And bob's tablet receives alice's typing signal from her phone for 5 seconds
    And alice's phone receives nothing
    When bob is connected over websocket as "laptop"
    Then bob's laptop receives nothing about alice

  @AWR-8 @BLK-5 @must
  Scenario Outline: An intention across a block is dropped silently
    Given alice is connected as "phone"
    And <blocker>'s phone blocks <blocked>
    When alice's phone signals typing to bob for 5 seconds
    And bob's phone signals recording to alice
    Then bob's phone receives nothing about alice
    And alice's phone receives nothing about bob
    And alice's phone receives no error
    And bob's phone receives no error

    Examples:
      | blocker | blocked |
      | bob     | alice   |
      | alice   | bob     |

  @AWR-9 @AWR-13 @must
  Scenario Outline: Visibility and relationships decide who sees a user
    Given alice is connected as "phone"
    And alice's phone sets her visibility to <visibility>
    And alice's phone sets her status to busy
    And <relation>
    When bob's phone asks about alice
    Then bob's phone learns that alice is <seen>

    Examples:
      | visibility | relation                                | seen        |
      | public     | alice's phone sends a ping with id "x"  | busy        |
      | contacts   | alice's phone sends a ping with id "x"  | unavailable |
      | contacts   | alice's phone adds bob as a subscriber  | busy        |
      | private    | alice's phone adds bob as a subscriber  | unavailable |
      | public     | alice's phone blocks bob                | unavailable |
      | public     | bob's phone blocks alice                | unavailable |

  @AWR-9 @must
  Scenario: A user always sees itself
    Given alice is connected as "phone"
    And alice's phone sets her visibility to private
    And alice is connected as "laptop"
    When alice's laptop asks about alice
    Then alice's laptop learns that alice is online

  @AWR-11 @must
  Scenario: Loosening visibility delivers the current state to new watchers
    Given alice is connected as "phone"
    And alice's phone sets her status to away
    And bob's phone subscribes to alice's awareness
    And bob's phone receives nothing about alice
    When alice's phone sets her visibility to public
    Then bob's phone receives alice's status as away

  @AWR-12 @must
  Scenario: Losing sight delivers exactly one unavailable notification
    Given alice is connected as "phone"
    And alice's phone adds bob as a subscriber
    And bob's phone receives alice's status as online
    When alice's phone sets her visibility to private
    Then bob's phone receives alice's status as unavailable
    When alice's phone sets her status to busy
    Then bob's phone receives nothing about alice

  @AWR-13 @must
  Scenario: An AwarenessRequest about an unknown or invalid user
    Given alice is connected as "phone"
    When alice's phone sends AwarenessRequest {"to": {"eid": ""}, "awareness_identifier": 5}
    Then alice's phone receives error 400 invalid_field for route "4" with ref_id "5"
    When alice's phone sends AwarenessRequest {"to": {"eid": "no at sign"}, "awareness_identifier": 6}
    Then alice's phone receives error 400 invalid_field for route "4" with ref_id "6"
    When alice's phone sends AwarenessRequest {"to": {"eid": "$alice"}, "awareness_identifier": 12345}
    Then alice's phone receives AwarenessResponse matching {"awareness_identifier": "12345", "status": 1, "from": {"eid": "$alice"}, "to": {"eid": "$alice", "connection_resource_id": "phone"}}

  @AWR-14 @must
  Scenario: Hidden users look alike whatever the reason
    Given alice is connected as "phone"
    And alice's phone sets her visibility to private
    And carol is connected as "phone"
    And carol's phone sets her visibility to public
    And carol's phone blocks bob
    And dave is connected as "phone"
    When bob's phone asks about alice
    Then bob's phone learns that alice is unavailable
    When bob's phone asks about carol
    Then bob's phone learns that carol is unavailable
    When bob's phone asks about dave
    Then bob's phone learns that dave is unavailable
    When bob's phone asks about erin
    Then bob's phone learns that erin is unavailable

  @AWR-15 @must
  Scenario: A subscription request always succeeds; a visible user's state follows
    Given alice is connected as "phone"
    And alice's phone sets her visibility to public
    When bob's phone subscribes to alice's awareness
    Then bob's phone receives alice's status as online
    Given carol is connected as "phone"
    And carol's phone sets her visibility to private
    When bob's phone subscribes to carol's awareness
    Then bob's phone receives nothing about carol
    When bob's phone sends AwarenessSubscription {"type": 1, "action": 3, "to": {"eid": "$carol"}}
    Then bob's phone receives error 400 invalid_field for route "21"

  @AWR-16 @must
  Scenario: A subscription ends with unsubscribe or with the session
    Given alice is connected as "phone"
    And alice's phone sets her visibility to public
    And bob's phone subscribes to alice's awareness
    And bob's phone receives alice's status as online
    When alice's phone sets her status to busy
    Then bob's phone receives alice's status as busy
    When bob's phone unsubscribes from alice's awareness
    And alice's phone sets her status to away
    Then bob's phone receives nothing about alice
    When bob's phone subscribes to alice's awareness
    And bob's phone receives alice's status as away
    And bob is connected as "phone"
    And alice's phone sets her status to online
    Then bob's phone receives nothing about alice

  @AWR-17 @PUSH-4 @should
  Scenario: A new session gets one Body with the users it follows and may see
    Given alice is connected as "phone"
    And alice's phone adds dave as a subscriber
    And alice's phone sets her status to busy
    And carol is connected as "phone"
    And carol's phone adds dave as a subscriber
    And carol's phone sets her visibility to private
    And erin is connected as "phone"
    And erin's phone adds dave as a subscriber
    When dave is connected as "phone"
    Then dave's phone receives a Body listing alice as busy and erin as online

  @AWR-18 @must
  Scenario: More than five presence changes and intentions per second are rate limited
    Given alice is connected as "phone"
    When alice's phone sets her status to away
    And alice's phone sets her status to busy
    And alice's phone signals typing to bob
    And alice's phone sets her status to online
    And alice's phone signals stopped to bob
    And alice's phone sets her status to away
    Then alice's phone receives error 429 rate_limited for route "2"
    When 1 second passes
    And alice's phone sets her status to busy
    Then alice's phone receives no error

  @AWR-18 @must
  Scenario: A change refused for its fields does not count towards the rate
    Given alice is connected as "phone"
    When alice's phone sends AwarenessNotification {"status": 4, "ttl": -1}
    And alice's phone sends AwarenessNotification {"status": 4, "ttl": -1}
    And alice's phone sends AwarenessNotification {"status": 9}
    Then alice's phone receives 3 errors 400 invalid_field
    When alice's phone sets her status to away
    And alice's phone sets her status to busy
    And alice's phone sets her status to online
    And alice's phone sets her status to away
    And alice's phone sets her status to busy
    Then alice's phone receives no error
