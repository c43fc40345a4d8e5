Feature: Authentication (SPEC section 3)
  Token checks in a fixed order, where the token travels, how a refusal is
  answered on each transport, and expiry during a session.

  @AUTH-1 @must
  Scenario Outline: A token signed with RS256 by the configured RSA key is accepted
    Given the server verifies RS256 tokens
    When alice's phone connects over <transport> with a valid token
    Then alice's phone gets a session

    Examples:
      | transport |
      | websocket |
      | tcp       |

  @AUTH-3 @AUTH-10 @AUTH-11 @must
  Scenario Outline: A bad signature or alg none is refused with token_signature
    When alice's phone connects over <transport> with <token>
    Then alice's phone is refused with 401 token_signature

    Examples:
      | transport | token                        |
      | websocket | a token with a bad signature |
      | tcp       | a token with a bad signature |
      | websocket | an unsigned token            |
      | tcp       | an unsigned token            |

  @AUTH-4 @AUTH-10 @AUTH-11 @must
  Scenario Outline: A token that is not a JWT is refused with token_malformed
    When alice's phone connects over <transport> with a malformed token
    Then alice's phone is refused with 401 token_malformed

    Examples:
      | transport |
      | websocket |
      | tcp       |

  @AUTH-5 @must
  Scenario Outline: A token lacking a required claim is refused with token_claims
    When alice's phone connects over <transport> with a token without the "<claim>" claim
    Then alice's phone is refused with 401 token_claims

    Examples:
      | transport | claim     |
      | websocket | eid       |
      | tcp       | device_id |
      | websocket | jti       |
      | websocket | exp       |
      | tcp       | iat       |

  @AUTH-5 @AUTH-8 @must
  Scenario: The claims are checked before the expiry
    When alice's phone connects with an expired token without the "eid" claim
    Then alice's phone is refused with 401 token_claims

  @AUTH-5 @must
  Scenario Outline: A claim of the wrong type is refused with token_claims
    When alice's phone connects with a token whose "<claim>" claim is <value>
    Then alice's phone is refused with 401 token_claims

    Examples:
      | claim     | value             |
      | exp       | "tomorrow"        |
      | nbf       | "yesterday"       |
      | iat       | true              |
      | eid       | 42                |
      | device_id | {"name": "phone"} |
      | jti       | ["a", "b"]        |

  @AUTH-5 @must
  Scenario Outline: iss and aud are ignored when the server is not configured with them
    When alice's phone connects with a token whose "<claim>" claim is <value>
    Then alice's phone gets a session

    Examples:
      | claim | value                    |
      | aud   | "some-other-service"     |
      | aud   | ["one", "two"]           |
      | iss   | "https://issuer.example" |

  @AUTH-5 @must
  Scenario: A token issued in the future is accepted
    When alice's phone connects with a token whose "iat" claim is an hour from now
    Then alice's phone gets a session

  @AUTH-6 @must
  Scenario Outline: A token outside its exp/nbf window is refused with token_expired
    When alice's phone connects over <transport> with <token>
    Then alice's phone is refused with 401 token_expired

    Examples:
      | transport | token                  |
      | websocket | an expired token       |
      | tcp       | an expired token       |
      | websocket | a not-yet-valid token  |

  @AUTH-7 @OUT-2 @must
  Scenario Outline: A revoked token is refused with token_revoked
    Given alice is connected over <transport> as "phone"
    When alice's phone logs out
    And alice's phone receives a logout confirmation
    And alice's phone connects again over <transport> with its previous token
    Then alice's phone is refused with 401 token_revoked

    Examples:
      | transport |
      | websocket |
      | tcp       |

  @AUTH-8 @must
  Scenario: The signature is checked before the expiry
    When alice's phone connects with an expired token with a bad signature
    Then alice's phone is refused with 401 token_signature

  @AUTH-8 @AUTH-10 @must
  Scenario: A missing token is refused with token_missing
    When alice's phone connects over websocket with no token
    Then alice's phone is refused with 401 token_missing

  @AUTH-9 @must
  Scenario Outline: The first token location present decides, with no fallback
    When alice's phone connects over websocket with a malformed token in the <location> and a valid token in the query
    Then alice's phone is refused with 401 token_malformed

    Examples:
      | location             |
      | authorization header |
      | token header         |
      | bearer token header  |

  @AUTH-9 @must
  Scenario Outline: Every token location works on its own
    When alice's phone connects over websocket with a valid token in the <location>
    Then alice's phone gets a session

    Examples:
      | location                 |
      | authorization header     |
      | token header             |
      | bearer token header      |
      | lower-case bearer header |
      | query                    |

  @AUTH-12 @must
  Scenario Outline: The session identity is the token's eid and device_id
    When alice's tablet connects over <transport> with a valid token
    Then alice's tablet gets a session
    And alice's tablet's Authenticate response, if it got one, is correct

    Examples:
      | transport |
      | websocket |
      | tcp       |

  @AUTH-13 @must
  Scenario Outline: A session ends when its token expires
    Given alice is connected over <transport> as "phone" with a token valid for 3 seconds
    Then alice's phone stays connected
    And alice's phone receives error 401 token_expired for route "" within 4 seconds plus the token leeway
    And that error on alice's phone came when its token expired
    And alice's phone is closed with code 4401

    Examples:
      | transport |
      | websocket |
      | tcp       |

  @AUTH-14 @SES-8 @must
  Scenario: A token revoked before a server restart is refused after it
    Given alice is connected as "phone"
    When alice's phone logs out
    And alice's phone receives a logout confirmation
    And the server restarts
    And alice's phone connects again with its previous token
    Then alice's phone is refused with 401 token_revoked
