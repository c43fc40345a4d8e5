Feature: Visibility (SPEC section 13)
  Who may see a user's awareness, and whether the user shares its location.

  Background:
    Given alice is connected as "phone"

  @VIS-1 @VIS-3 @must
  Scenario: A user who never set anything has CONTACTS and location OFF
    When alice's phone sends AwarenessVisibility {"id": "q", "type": 1}
    Then alice's phone receives AwarenessVisibility matching {"id": "q", "type": 2, "status": 1, "visibility": 2, "location_sharing": 2, "from": {"eid": "$alice", "connection_resource_id": ""}}

  @VIS-1 @VIS-2 @must
  Scenario: Zero leaves a setting unchanged, independently of the other
    When alice's phone sends AwarenessVisibility {"id": "a", "type": 1, "visibility": 3}
    Then alice's phone receives AwarenessVisibility matching {"id": "a", "type": 2, "status": 1, "visibility": 3, "location_sharing": 2}
    When alice's phone sends AwarenessVisibility {"id": "b", "type": 1, "location_sharing": 1}
    Then alice's phone receives AwarenessVisibility matching {"id": "b", "type": 2, "status": 1, "visibility": 3, "location_sharing": 1}
    When alice's phone sends AwarenessVisibility {"id": "c", "type": 1, "visibility": 1}
    Then alice's phone receives AwarenessVisibility matching {"id": "c", "type": 2, "status": 1, "visibility": 1, "location_sharing": 1}

  @VIS-1 @must
  Scenario: Settings are per user, for all of its devices
    Given alice's phone sets her visibility to private
    And alice is connected over tcp as "laptop"
    When alice's laptop sends AwarenessVisibility {"id": "l", "type": 1}
    Then alice's laptop receives AwarenessVisibility matching {"id": "l", "type": 2, "status": 1, "visibility": 3, "location_sharing": 2}

  @VIS-4 @must
  Scenario Outline: Out-of-range values are invalid_field and change nothing
    When alice's phone sends AwarenessVisibility {"id": "bad", "type": 1, "visibility": <visibility>, "location_sharing": <sharing>}
    Then alice's phone receives error 400 invalid_field for route "23" with ref_id "bad"
    When alice's phone sends AwarenessVisibility {"id": "q", "type": 1}
    Then alice's phone receives AwarenessVisibility matching {"id": "q", "visibility": 2, "location_sharing": 2}

    Examples:
      | visibility | sharing |
      | 4          | 1       |
      | -1         | 0       |
      | 1          | 3       |
      | 0          | -2      |
