//! The error table of SPEC §5: every error kind, its code, whether it ends the
//! connection, and its WebSocket close code. `ErrorMessage.message` carries the
//! kind's name; `ErrorMessage.code` its code.

use crate::proto::ErrorMessage;

macro_rules! error_kinds {
    ($( $variant:ident $name:literal $code:literal $fatal:literal; )*) => {
        /// One row of SPEC's error table.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ErrorKind { $( $variant, )* }

        impl ErrorKind {
            /// Every kind, in table order.
            pub const ALL: &'static [ErrorKind] = &[$( ErrorKind::$variant, )*];

            /// The kind's name as written in `ErrorMessage.message`, e.g. "route_mismatch".
            pub fn as_str(self) -> &'static str {
                match self { $( ErrorKind::$variant => $name, )* }
            }

            /// The kind named `name`.
            pub fn from_name(name: &str) -> Option<ErrorKind> {
                match name { $( $name => Some(ErrorKind::$variant), )* _ => None }
            }

            /// The `ErrorMessage.code`.
            pub fn code(self) -> u16 {
                match self { $( ErrorKind::$variant => $code, )* }
            }

            /// Whether the server closes the connection after sending it.
            pub fn is_fatal(self) -> bool {
                match self { $( ErrorKind::$variant => $fatal, )* }
            }
        }
    };
}

error_kinds! {
    Malformed        "malformed"          400 false;
    MissingPayload   "missing_payload"    400 false;
    RouteMismatch    "route_mismatch"     400 false;
    InvalidField     "invalid_field"      400 false;
    TextFrame        "text_frame"         400 true;
    TokenMissing     "token_missing"      401 true;
    TokenMalformed   "token_malformed"    401 true;
    TokenSignature   "token_signature"    401 true;
    TokenClaims      "token_claims"       401 true;
    TokenExpired     "token_expired"      401 true;
    TokenRevoked     "token_revoked"      401 true;
    IdentityMismatch "identity_mismatch"  403 false;
    Blocked          "blocked"            403 false;
    Forbidden        "forbidden"          403 false;
    NotFound         "not_found"          404 false;
    NotAllowed       "not_allowed"        405 false;
    AuthTimeout      "auth_timeout"       408 true;
    PingTimeout      "ping_timeout"       408 true;
    SessionReplaced  "session_replaced"   409 true;
    HistoryGap       "history_gap"        410 false;
    TooLarge         "too_large"          413 true;
    RateLimited      "rate_limited"       429 false;
    TooManySessions  "too_many_sessions"  429 true;
    Internal         "internal"           500 false;
    UnknownRoute     "unknown_route"      501 false;
    Unavailable      "unavailable"        503 false;
    QueueFull        "queue_full"         503 false;
}

impl ErrorKind {
    /// The WebSocket close code that ends a connection for this error (SPEC
    /// TRN): 1003 for a text frame, 1009 for an oversized message, and
    /// 4000 + code for the other fatal kinds. `None` for non-fatal kinds.
    pub fn ws_close_code(self) -> Option<u16> {
        match self {
            ErrorKind::TextFrame => Some(1003),
            ErrorKind::TooLarge => Some(1009),
            kind if kind.is_fatal() => Some(4000 + kind.code()),
            _ => None,
        }
    }

    /// The ErrorMessage that reports this kind.
    pub fn to_message(
        self,
        route: Option<i64>,
        details: impl Into<String>,
        ref_id: impl Into<String>,
        now_ms: i64,
    ) -> ErrorMessage {
        ErrorMessage {
            code: i32::from(self.code()),
            message: self.as_str().to_string(),
            route: route.map(|r| r.to_string()).unwrap_or_default(),
            details: details.into(),
            ref_id: ref_id.into(),
            timestamp: now_ms,
        }
    }
}

/// Whose fault an ErrorMessage reports, judged by its code's hundred alone so
/// that a peer also handles codes and kinds it does not know (SPEC ERR-7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blame {
    /// 4xx: the stanza or the state of the peer that sent it; sending the same
    /// stanza again unchanged gets the same answer.
    Sender,
    /// 5xx: the server; the stanza may be sent again later.
    Server,
}

impl Blame {
    /// The blame for `code`; `None` outside 400..=599, which no error uses.
    pub fn of_code(code: i32) -> Option<Blame> {
        match code {
            400..=499 => Some(Blame::Sender),
            500..=599 => Some(Blame::Server),
            _ => None,
        }
    }

    /// Whether sending the refused stanza again, unchanged, can succeed.
    pub fn may_retry_unchanged(self) -> bool {
        self == Blame::Server
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code(), self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_name(kind.as_str()), Some(*kind));
        }
        let mut names: Vec<_> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorKind::ALL.len());
    }

    #[test]
    fn close_codes_follow_the_table() {
        assert_eq!(ErrorKind::TokenRevoked.ws_close_code(), Some(4401));
        assert_eq!(ErrorKind::PingTimeout.ws_close_code(), Some(4408));
        assert_eq!(ErrorKind::SessionReplaced.ws_close_code(), Some(4409));
        assert_eq!(ErrorKind::TextFrame.ws_close_code(), Some(1003));
        assert_eq!(ErrorKind::TooLarge.ws_close_code(), Some(1009));
        assert_eq!(ErrorKind::RouteMismatch.ws_close_code(), None);
    }

    // SPEC: ERR-7
    #[test]
    fn unknown_codes_are_judged_by_their_hundred() {
        assert_eq!(Blame::of_code(418), Some(Blame::Sender));
        assert_eq!(Blame::of_code(499), Some(Blame::Sender));
        assert_eq!(Blame::of_code(507), Some(Blame::Server));
        assert_eq!(Blame::of_code(399), None);
        assert_eq!(Blame::of_code(600), None);
        assert!(Blame::Server.may_retry_unchanged());
        assert!(!Blame::Sender.may_retry_unchanged());
        for kind in ErrorKind::ALL {
            let blame = Blame::of_code(i32::from(kind.code())).expect("every kind has a 4xx or 5xx code");
            assert_eq!(blame == Blame::Server, kind.code() >= 500, "{kind}");
        }
    }

    #[test]
    fn seed_codes_keep_their_meaning() {
        // Seed 003's table: 400 bad request, 401 unauthorized, 403 blocked,
        // 404 not found, 408 timeout, 409 conflict, 500 internal, 503 unavailable.
        assert_eq!(ErrorKind::Malformed.code(), 400);
        assert_eq!(ErrorKind::TokenExpired.code(), 401);
        assert_eq!(ErrorKind::Blocked.code(), 403);
        assert_eq!(ErrorKind::NotFound.code(), 404);
        assert_eq!(ErrorKind::PingTimeout.code(), 408);
        assert_eq!(ErrorKind::SessionReplaced.code(), 409);
        assert_eq!(ErrorKind::Internal.code(), 500);
        assert_eq!(ErrorKind::Unavailable.code(), 503);
    }
}
