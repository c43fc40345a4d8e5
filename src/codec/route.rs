//! The route table (SPEC Appendix A): each MessageScheme payload, its field
//! number (which is its route), the message it carries and who may send it.
//!
//! One table, written once in the `routes!` invocation below; everything else
//! (number lookup, names, direction, the payload's route) is derived from it.

use crate::proto::message_scheme::Payload;

/// Who may send a route's stanza (SPEC ENV, "a stanza a client may not send").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Only clients send it; the server never does.
    ClientToServer,
    /// Only the server sends it; a client sending it gets 405 `not_allowed`.
    ServerToClient,
    /// Both send it (the message's `type` field may still restrict which kind).
    Both,
}

macro_rules! routes {
    ($( $num:literal $variant:ident $message:literal $field:literal $dir:ident $area:literal; )*) => {
        /// A MessageScheme route: the field number of the payload it carries.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Route { $( $variant = $num, )* }

        impl Route {
            /// Every route, in number order.
            pub const ALL: &'static [Route] = &[$( Route::$variant, )*];

            /// The route numbered `n`, if the table has one.
            pub fn from_number(n: i64) -> Option<Route> {
                match n { $( $num => Some(Route::$variant), )* _ => None }
            }

            /// The route number (= the payload's field number in MessageScheme).
            pub fn number(self) -> i64 { self as i64 }

            /// The protobuf message the payload holds, e.g. "PingPong".
            pub fn message_name(self) -> &'static str {
                match self { $( Route::$variant => $message, )* }
            }

            /// The MessageScheme field name, e.g. "pingpong_message".
            pub fn field_name(self) -> &'static str {
                match self { $( Route::$variant => $field, )* }
            }

            /// Who may send it.
            pub fn direction(self) -> Direction {
                match self { $( Route::$variant => Direction::$dir, )* }
            }

            /// The SPEC area (and file name in `features/`, `vectors/`) that owns it.
            pub fn area(self) -> &'static str {
                match self { $( Route::$variant => $area, )* }
            }

            /// The route a payload travels on.
            pub fn of(payload: &Payload) -> Route {
                match payload { $( Payload::$variant(_) => Route::$variant, )* }
            }
        }
    };
}

routes! {
    2  AwarenessNotification  "AwarenessNotification"  "awareness_notification"  Both            "awareness";
    3  AwarenessResponse      "AwarenessResponse"      "awareness_response"      ServerToClient  "awareness";
    4  AwarenessRequest       "AwarenessRequest"       "awareness_request"       ClientToServer  "awareness";
    5  ErrorMessage           "ErrorMessage"           "error_message"           ServerToClient  "error";
    6  PingpongMessage        "PingPong"               "pingpong_message"        Both            "pingpong";
    7  TokenRevokeRequest     "TokenRevokeRequest"     "token_revoke_request"    ClientToServer  "token";
    8  TokenRevokeResponse    "TokenRevokeResponse"    "token_revoke_response"   ServerToClient  "token";
    9  SubscriberAddRequest   "SubscriberAddRequest"   "subscriber_add_request"  ClientToServer  "subscriber";
    10 SubscriberAddResponse  "SubscriberAddResponse"  "subscriber_add_response" ServerToClient  "subscriber";
    11 BlockSubscriber        "BlockSubscriber"        "block_subscriber"        Both            "block";
    12 Logout                 "Logout"                 "logout"                  Both            "logout";
    13 ChatMessage            "ChatMessage"            "chat_message"            ServerToClient  "chat";
    14 TextPayloadRequest     "TextPayloadRequest"     "text_payload_request"    ClientToServer  "chat";
    15 MediaPayloadRequest    "MediaPayloadRequest"    "media_payload_request"   ClientToServer  "chat";
    16 AcknowledgmentRequest  "AcknowledgmentRequest"  "acknowledgment_request"  ClientToServer  "ack";
    17 AcknowledgmentResponse "AcknowledgmentResponse" "acknowledgment_response" ServerToClient  "ack";
    18 VersionUpdate          "VersionUpdate"          "version_update"          Both            "chat";
    19 TokenRefreshRequest    "TokenRefreshRequest"    "token_refresh_request"   ClientToServer  "token";
    20 TokenRefreshResponse   "TokenRefreshResponse"   "token_refresh_response"  ServerToClient  "token";
    21 AwarenessSubscription  "AwarenessSubscription"  "awareness_subscription"  Both            "awareness";
    22 SubscriberRemove       "SubscriberRemove"       "subscriber_remove"       Both            "subscriber";
    23 AwarenessVisibility    "AwarenessVisibility"    "awareness_visibility"    Both            "visibility";
    24 LocationStream         "LocationStream"         "location_stream"         Both            "location";
    25 PushNotification       "PushNotification"       "push_notification"       ServerToClient  "push";
    26 Body                   "Body"                   "body"                    ServerToClient  "push";
    27 Authenticate           "Authenticate"           "authenticate"            Both            "auth";
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.number(), self.message_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::message_descriptor;

    /// The table must agree with the schema: number, field name and message type.
    #[test]
    fn table_matches_the_schema() {
        let scheme = message_descriptor("MessageScheme").unwrap();
        let oneof = scheme.oneofs().find(|o| o.name() == "payload").unwrap();
        let fields: Vec<_> = oneof.fields().collect();
        assert_eq!(fields.len(), Route::ALL.len(), "every payload has a route and no more");
        for field in fields {
            let route = Route::from_number(i64::from(field.number()))
                .unwrap_or_else(|| panic!("field {} has no route", field.name()));
            assert_eq!(route.field_name(), field.name());
            assert_eq!(route.message_name(), field.kind().as_message().unwrap().name());
        }
    }

    #[test]
    fn numbers_outside_the_table_have_no_route() {
        for n in [-1, 0, 1, 28, 1000, i64::MAX, i64::MIN] {
            assert_eq!(Route::from_number(n), None, "{n}");
        }
    }
}
