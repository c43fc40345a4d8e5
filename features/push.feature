Feature: Push and Body (SPEC section 18)
  PushNotification and Body are server-only; a Body lists awareness
  notifications, one per user, addressed to the receiving device.

  @PUSH-1 @ENV-8 @must
  Scenario Outline: A client may not send PushNotification or Body
    Given alice is connected as "phone"
    When alice's phone sends <message> <fields>
    Then alice's phone receives error 405 not_allowed for route "<route>"
    And alice's phone stays connected

    Examples:
      | message          | fields                                                    | route |
      | PushNotification | {"id": "p", "type": "system", "data": {"k": "v"}}         | 25    |
      | Body             | {"awareness_list": [{"status": 1}]}                       | 26    |

  @PUSH-4 @AWR-17 @must
  Scenario: The start Body holds one notification per followed user, to the new device
    Given alice is connected over websocket as "phone"
    And alice's phone adds dave as a subscriber
    And carol is connected over tcp as "phone"
    And carol's phone adds dave as a subscriber
    And carol's phone sets her status to away
    When dave is connected over tcp as "laptop"
    Then dave's laptop receives a Body listing alice as online and carol as away, if the server sends one

  @AWR-17 @should
  Scenario: A new session gets a start Body of the users it follows
    Given alice is connected over websocket as "phone"
    And alice's phone adds dave as a subscriber
    When dave is connected over tcp as "laptop"
    Then dave's laptop receives a Body listing alice as online
