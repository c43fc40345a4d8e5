Feature: Token control (SPEC section 8)
  Revoking a token, a device's session or every session of the caller's
  user; refreshing the session's token.

  @TOK-1 @must
  Scenario: Revoking another user's sessions or tokens is forbidden
    Given alice is connected as "phone"
    And bob is connected as "phone"
    When alice's phone sends TokenRevokeRequest {"type": 1, "to": {"eid": "$bob"}}
    Then alice's phone receives error 403 forbidden for route "7"
    When alice's phone revokes the token of bob's phone
    Then alice's phone receives error 403 forbidden for route "7"
    And alice's phone receives no TokenRevokeResponse
    And bob's phone stays connected

  @TOK-2 @must
  Scenario Outline: A token that does not verify is invalid_field
    Given alice is connected as "phone"
    And alice is connected as "laptop"
    When alice's phone sends TokenRevokeRequest {"type": 1, "token": "<token>"}
    Then alice's phone receives error 400 invalid_field for route "7"
    And alice's laptop stays connected

    Examples:
      | token                           |
      | not-a-token                     |
      | $bad_signature(alice/laptop)    |

  @TOK-3 @TOK-7 @AUTH-7 @must
  Scenario: Revoking a token ends its session and refuses it afterwards
    Given alice is connected over websocket as "phone"
    And alice is connected over tcp as "laptop"
    When alice's phone revokes the token of alice's laptop
    Then alice's phone receives a revoke response ending 1 session
    And alice's laptop receives error 401 token_revoked for route ""
    And alice's laptop receives nothing more and is closed with code 4401
    And alice's phone stays connected
    When alice's laptop connects again over tcp with its previous token
    Then alice's laptop is refused with 401 token_revoked
    When alice's phone revokes the token of alice's laptop
    Then alice's phone receives a revoke response ending 0 sessions

  @TOK-4 @TOK-6 @TOK-7 @must
  Scenario: Revoking a device ends that device's session
    Given alice is connected as "phone"
    And alice is connected as "laptop"
    When alice's phone revokes the session of its laptop
    Then alice's phone receives a revoke response for its laptop ending 1 session
    And alice's laptop receives error 401 token_revoked
    And alice's laptop is closed with code 4401
    And alice's phone's TokenRevokeResponse came before alice's laptop's ErrorMessage
    When alice's phone revokes the session of its tablet
    Then alice's phone receives error 404 not_found for route "7"
    And alice's phone stays connected

  @TOK-5 @TOK-6 @TOK-7 @must
  Scenario: Revoking with both fields empty ends every session of the user, the caller's last
    Given alice is connected over websocket as "phone"
    And alice is connected over tcp as "laptop"
    And bob is connected over websocket as "phone"
    When alice's phone revokes all its sessions
    Then the next stanza alice's phone receives is TokenRevokeResponse matching {"type": 2, "status": 1, "sessions_ended": 2, "to": {"eid": "$alice"}}
    And the next stanza alice's phone receives is error 401 token_revoked
    And alice's phone is closed with code 4401
    And alice's laptop receives error 401 token_revoked
    And alice's laptop is closed
    And alice's phone's TokenRevokeResponse came before alice's laptop's ErrorMessage
    And bob's phone stays connected

  @TOK-8 @must
  Scenario: A refresh gives a new token for the same identity and lifetime
    Given alice is connected over websocket as "phone"
    When alice's phone refreshes its token
    Then alice's phone receives a refreshed token
    When alice's phone connects again over tcp with its refreshed token
    Then alice's phone gets a session
    And alice's phone received an Authenticate response
    And alice's previous phone receives error 409 session_replaced

  @TOK-9 @must
  Scenario: After a refresh the old token is revoked and the session lives to the new exp
    Given alice is connected as "phone" with a token valid for 4 seconds
    When 1 second passes
    And alice's phone refreshes its token
    Then alice's phone receives a refreshed token
    When alice's phone connects again with its previous token
    Then alice's phone is refused with 401 token_revoked
    When the first token of alice's previous phone has expired
    Then alice's previous phone stays connected
    And alice's previous phone receives error 401 token_expired within 3 seconds plus the token leeway
    And that error on alice's previous phone came when its refreshed token expired
    And alice's previous phone is closed with code 4401

  @TOK-10 @must
  Scenario: Without a signing key a refresh is unavailable and nothing changes
    Given the server has no key to sign tokens with
    And alice is connected as "phone"
    When alice's phone refreshes its token
    Then alice's phone receives error 503 unavailable for route "19"
    And alice's phone stays connected
