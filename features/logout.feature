Feature: Logout (SPEC section 9)
  A device ends its own session: confirmation, normal close, and its token
  is revoked; the user's other devices go on.

  @OUT-1 @must
  Scenario Outline: Logout is confirmed and the connection closes normally
    Given alice is connected over <transport> as "phone"
    When alice's phone logs out
    Then alice's phone receives a logout confirmation
    And alice's phone receives nothing more and is closed with code 1000

    Examples:
      | transport |
      | websocket |
      | tcp       |

  @OUT-2 @must
  Scenario: A logged-out token is refused with token_revoked
    Given alice is connected over websocket as "phone"
    When alice's phone logs out
    And alice's phone receives a logout confirmation
    And alice's phone connects again over tcp with its previous token
    Then alice's phone is refused with 401 token_revoked

  @OUT-3 @must
  Scenario: Logout of one device leaves the others open and valid
    Given alice is connected over websocket as "phone"
    And alice is connected over tcp as "laptop"
    When alice's phone logs out
    Then alice's phone receives a logout confirmation
    And alice's laptop stays connected
    When alice's laptop closes its connection
    And alice's laptop connects again over tcp with its previous token
    Then alice's laptop gets a session

  @ENV-8 @must
  Scenario: A Logout RESPONSE from a client is not allowed
    Given alice is connected as "phone"
    When alice's phone sends Logout {"type": 2, "status": 3}
    Then alice's phone receives error 405 not_allowed for route "12"
    And alice's phone stays connected
