//! Behaviours SPEC allows but the reference server does not choose: the
//! mirror image of [`crate::faults`]. A server using any of them conforms,
//! so the conformance suite must pass it; `cargo test` runs the suite
//! against the reference server with each variant (`conformance::selfcheck`).
//!
//! Like faults, none lives in the protocol core: the stanza variants are an
//! [`Edge`] layer ([`VariantLayer`]) that drops or rewrites what the engine
//! sends, the WebSocket variant is read by the WebSocket adapter, and the
//! MAY of OUT-4 and the token leeway are product settings (`Config::revoke_notice`,
//! `Verifier::with_leeway_s`).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use bytes::Bytes;

use crate::codec;
use crate::core::{ConnId, Millis, Output};
use crate::net::Edge;
use crate::proto::message_scheme::Payload;

/// One allowed way to differ from the reference server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Variant {
    /// The WebSocket upgrade selects no subprotocol, even when offered (TRN-4 is a SHOULD).
    NoSubprotocol,
    /// No Authenticate RESPONSE on WebSocket (TRN-16 is a SHOULD, TRN-17).
    NoWsAuthenticateResponse,
    /// No Body of awareness at session start (AWR-17 is a SHOULD).
    NoStartBody,
    /// Other words in every `ErrorMessage.details` (free text, ERR-1).
    OtherDetails,
    /// A Logout DISCONNECT before `token_revoked` (OUT-4, a MAY).
    RevokeNotice,
    /// Every WebSocket message in several frames (RFC 6455 5.4; SPEC TRN-3 counts messages).
    FragmentedMessages,
    /// Words in every WebSocket Close frame's reason (free text; SPEC fixes only the code).
    CloseReasons,
    /// A token leeway of [`TOKEN_LEEWAY_S`] (AUTH-6 allows up to 60 s; the reference server's is 0): tokens are
    /// accepted that long past their exp, and sessions outlive their token by as much. A product setting
    /// (`[jwt] leeway_s`), like OUT-4's MAY. The suite passes it given `--leeway`.
    TokenLeeway,
}

/// The leeway of [`Variant::TokenLeeway`], seconds.
pub const TOKEN_LEEWAY_S: u64 = 2;

impl Variant {
    pub const ALL: [Variant; 8] = [
        Variant::NoSubprotocol,
        Variant::NoWsAuthenticateResponse,
        Variant::NoStartBody,
        Variant::OtherDetails,
        Variant::RevokeNotice,
        Variant::FragmentedMessages,
        Variant::CloseReasons,
        Variant::TokenLeeway,
    ];

    /// The name on command lines: kebab-case.
    pub fn name(self) -> &'static str {
        match self {
            Variant::NoSubprotocol => "no-subprotocol",
            Variant::NoWsAuthenticateResponse => "no-ws-authenticate-response",
            Variant::NoStartBody => "no-start-body",
            Variant::OtherDetails => "other-details",
            Variant::RevokeNotice => "revoke-notice",
            Variant::FragmentedMessages => "fragmented-messages",
            Variant::CloseReasons => "close-reasons",
            Variant::TokenLeeway => "token-leeway",
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown variant {given:?}; known: {}", Variant::ALL.map(Variant::name).join(", "))]
pub struct UnknownVariant {
    pub given: String,
}

impl FromStr for Variant {
    type Err = UnknownVariant;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Variant::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| UnknownVariant { given: s.to_string() })
    }
}

/// The variants in use; none (the reference behaviour) by default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Variants(BTreeSet<Variant>);

impl Variants {
    pub fn of(variants: impl IntoIterator<Item = Variant>) -> Variants {
        Variants(variants.into_iter().collect())
    }

    pub fn has(&self, variant: Variant) -> bool {
        self.0.contains(&variant)
    }

    /// The edge layer of the stanza variants; `None` when there are none.
    pub fn layer(&self) -> Option<Box<dyn Edge>> {
        let stanza = [
            Variant::NoWsAuthenticateResponse,
            Variant::NoStartBody,
            Variant::OtherDetails,
        ];
        stanza.iter().any(|v| self.has(*v)).then(|| {
            Box::new(VariantLayer {
                variants: self.clone(),
                authenticated_by_stanza: BTreeSet::new(),
            }) as Box<dyn Edge>
        })
    }
}

/// The free text [`Variant::OtherDetails`] puts in every ErrorMessage.
pub const OTHER_DETAILS: &str = "(a server's own words)";

/// Applies the stanza [`Variants`] to what the engine sends.
pub struct VariantLayer {
    variants: Variants,
    /// Connections that sent an Authenticate: native TCP, where the
    /// RESPONSE is an answer, not the optional greeting of TRN-16.
    authenticated_by_stanza: BTreeSet<ConnId>,
}

impl Edge for VariantLayer {
    fn inbound(&mut self, conn: ConnId, stanza: Bytes, _now: Millis, _out: &mut Vec<Output>) -> Option<Bytes> {
        if let Ok(Payload::Authenticate(_)) = codec::decode(&stanza, usize::MAX) {
            self.authenticated_by_stanza.insert(conn);
        }
        Some(stanza)
    }

    fn outbound(&mut self, output: Output, _now: Millis, out: &mut Vec<Output>) {
        let Output::Send { conn, stanza } = &output else {
            out.push(output);
            return;
        };
        let Ok(payload) = codec::decode(stanza, usize::MAX) else {
            out.push(output);
            return;
        };
        match payload {
            Payload::Authenticate(a)
                if a.r#type == 2
                    && self.variants.has(Variant::NoWsAuthenticateResponse)
                    && !self.authenticated_by_stanza.contains(conn) => {}
            Payload::Body(_) if self.variants.has(Variant::NoStartBody) => {}
            Payload::ErrorMessage(mut error) if self.variants.has(Variant::OtherDetails) => {
                error.details = OTHER_DETAILS.to_string();
                out.push(Output::Send {
                    conn: *conn,
                    stanza: Bytes::from(codec::encode(&Payload::ErrorMessage(error))),
                });
            }
            _ => out.push(output),
        }
    }

    fn tick(&mut self, _now: Millis, _out: &mut Vec<Output>) {}

    fn closed(&mut self, conn: ConnId) {
        self.authenticated_by_stanza.remove(&conn);
    }
}
