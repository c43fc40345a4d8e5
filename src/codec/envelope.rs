//! The envelope rule (SPEC §4): one MessageScheme per stanza, and `route` equals
//! the field number of the payload that is set.
//!
//! `decode` is the only way bytes become a stanza, so a [`Payload`] in hand has
//! always passed the rule: its route is `Route::of(&payload)`, never a second,
//! possibly disagreeing number. `encode` writes the canonical form (fields in
//! number order, proto3 defaults omitted, map keys sorted) that `vectors/` hold.

use bytes::BufMut;
use prost::Message;
use prost::encoding::{self, WireType};

use super::{ErrorKind, Route};
use crate::proto::message_scheme::Payload;
use crate::proto::{ChatMessage, MessageScheme, chat_message};

/// The largest stanza every server must accept (SPEC TRN), in bytes.
pub const DEFAULT_MAX_STANZA_BYTES: usize = 64 * 1024;

/// Why bytes are not a valid stanza. Each maps to one row of SPEC's error table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("stanza of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("bytes do not decode as MessageScheme: {0}")]
    Malformed(String),
    #[error("route {route} carries no payload")]
    MissingPayload { route: i64 },
    #[error("route {route} does not match payload {payload}")]
    RouteMismatch { route: i64, payload: Route },
    #[error("route {route} is not in the route table")]
    UnknownRoute { route: i64 },
}

impl EnvelopeError {
    /// The SPEC error kind a server answers with.
    pub fn kind(&self) -> ErrorKind {
        match self {
            EnvelopeError::TooLarge { .. } => ErrorKind::TooLarge,
            EnvelopeError::Malformed(_) => ErrorKind::Malformed,
            EnvelopeError::MissingPayload { .. } => ErrorKind::MissingPayload,
            EnvelopeError::RouteMismatch { .. } => ErrorKind::RouteMismatch,
            EnvelopeError::UnknownRoute { .. } => ErrorKind::UnknownRoute,
        }
    }

    /// The offending route, for `ErrorMessage.route`, when it could be read.
    pub fn route(&self) -> Option<i64> {
        match self {
            EnvelopeError::TooLarge { .. } | EnvelopeError::Malformed(_) => None,
            EnvelopeError::MissingPayload { route }
            | EnvelopeError::RouteMismatch { route, .. }
            | EnvelopeError::UnknownRoute { route } => Some(*route),
        }
    }
}

/// Decodes one stanza and enforces the envelope rule.
pub fn decode(bytes: &[u8], max_stanza_bytes: usize) -> Result<Payload, EnvelopeError> {
    if bytes.len() > max_stanza_bytes {
        return Err(EnvelopeError::TooLarge {
            len: bytes.len(),
            max: max_stanza_bytes,
        });
    }
    let scheme = MessageScheme::decode(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
    let route = scheme.route;
    match scheme.payload {
        Some(payload) if Route::of(&payload).number() == route => Ok(payload),
        Some(payload) => Err(EnvelopeError::RouteMismatch {
            route,
            payload: Route::of(&payload),
        }),
        // An unknown payload field decodes as "no payload": its route decides.
        None if route == 0 || Route::from_number(route).is_some() => Err(EnvelopeError::MissingPayload { route }),
        None => Err(EnvelopeError::UnknownRoute { route }),
    }
}

/// Encodes a stanza in canonical form, with the route its payload implies.
pub fn encode(payload: &Payload) -> Vec<u8> {
    let route = Route::of(payload).number();
    let mut buf = Vec::with_capacity(payload.encoded_len() + 11);
    encoding::int64::encode(1, &route, &mut buf);
    match payload {
        Payload::ChatMessage(chat) => {
            encoding::encode_key(13, WireType::LengthDelimited, &mut buf);
            encoding::encode_varint(chat.encoded_len() as u64, &mut buf);
            encode_chat_message(chat, &mut buf);
        }
        other => other.encode(&mut buf),
    }
    buf
}

/// Encodes any MessageScheme as it stands, in canonical field order, without
/// checking the envelope rule: for tools and tests that build invalid stanzas.
pub fn encode_message_scheme(scheme: &MessageScheme) -> Vec<u8> {
    match &scheme.payload {
        Some(payload) if Route::of(payload).number() == scheme.route => encode(payload),
        _ => scheme.encode_to_vec(),
    }
}

/// ChatMessage in field-number order. prost writes a oneof after every other
/// field; ChatMessage's `payload` (8, 9) sits between 7 and 10, so prost's own
/// order would differ from other protobuf implementations' bytes.
fn encode_chat_message(m: &ChatMessage, buf: &mut impl BufMut) {
    use encoding::{int32, int64, message, string};
    if !m.message_id.is_empty() {
        string::encode(1, &m.message_id, buf);
    }
    if !m.message_id_local.is_empty() {
        string::encode(2, &m.message_id_local, buf);
    }
    if m.version != 0 {
        int64::encode(3, &m.version, buf);
    }
    if !m.chat_id.is_empty() {
        string::encode(4, &m.chat_id, buf);
    }
    if let Some(from) = &m.from {
        message::encode(5, from, buf);
    }
    message::encode_repeated(6, &m.to, buf);
    if !m.author.is_empty() {
        string::encode(7, &m.author, buf);
    }
    match &m.payload {
        Some(chat_message::Payload::Text(text)) => string::encode(8, text, buf),
        Some(chat_message::Payload::MediaUrl(url)) => string::encode(9, url, buf),
        None => {}
    }
    if m.acknowledgment != 0 {
        int32::encode(10, &m.acknowledgment, buf);
    }
    if m.acknowledgment_timestamp != 0 {
        int64::encode(11, &m.acknowledgment_timestamp, buf);
    }
    if m.created_at != 0 {
        int64::encode(12, &m.created_at, buf);
    }
    if m.server_received_at != 0 {
        int64::encode(13, &m.server_received_at, buf);
    }
    if m.media_type != 0 {
        int32::encode(14, &m.media_type, buf);
    }
    if !m.caption.is_empty() {
        string::encode(15, &m.caption, buf);
    }
    if !m.thumbnail_url.is_empty() {
        string::encode(16, &m.thumbnail_url, buf);
    }
    if m.media_size_bytes != 0 {
        int64::encode(17, &m.media_size_bytes, buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Identity, PingPong};

    fn ping() -> Payload {
        Payload::PingpongMessage(PingPong {
            r#type: 1,
            status: 1,
            request_time: 1_700_000_000_000,
            ..Default::default()
        })
    }

    #[test]
    fn route_comes_from_the_payload() {
        let bytes = encode(&ping());
        assert_eq!(&bytes[..2], &[0x08, 0x06], "route 6 first");
        assert_eq!(decode(&bytes, DEFAULT_MAX_STANZA_BYTES), Ok(ping()));
    }

    #[test]
    fn each_envelope_violation_has_its_kind() {
        let mismatch = MessageScheme {
            route: 7,
            payload: Some(ping()),
        }
        .encode_to_vec();
        let empty = MessageScheme {
            route: 6,
            payload: None,
        }
        .encode_to_vec();
        let unknown = MessageScheme {
            route: 99,
            payload: None,
        }
        .encode_to_vec();
        let cases: [(&[u8], ErrorKind, Option<i64>); 6] = [
            (&mismatch, ErrorKind::RouteMismatch, Some(7)),
            (&empty, ErrorKind::MissingPayload, Some(6)),
            (&[], ErrorKind::MissingPayload, Some(0)),
            (&unknown, ErrorKind::UnknownRoute, Some(99)),
            (&[0x08], ErrorKind::Malformed, None),
            (&[0x32, 0x05, 0x10], ErrorKind::Malformed, None),
        ];
        for (bytes, kind, route) in cases {
            let err = decode(bytes, DEFAULT_MAX_STANZA_BYTES).unwrap_err();
            assert_eq!((err.kind(), err.route()), (kind, route), "{}", hex::encode(bytes));
        }
    }

    #[test]
    fn size_limit_is_checked_before_decoding() {
        let bytes = encode(&ping());
        let err = decode(&bytes, bytes.len() - 1).unwrap_err();
        assert_eq!(
            err,
            EnvelopeError::TooLarge {
                len: bytes.len(),
                max: bytes.len() - 1
            }
        );
        assert!(decode(&bytes, bytes.len()).is_ok());
    }

    #[test]
    fn chat_message_is_written_in_field_number_order() {
        let chat = ChatMessage {
            message_id: "m1".into(),
            version: 1,
            from: Some(Identity {
                eid: "a@x".into(),
                connection_resource_id: String::new(),
            }),
            payload: Some(chat_message::Payload::Text("hi".into())),
            acknowledgment: 1,
            media_size_bytes: 5,
            ..Default::default()
        };
        let bytes = encode(&Payload::ChatMessage(chat.clone()));
        // route, then field 13 holding: 1, 3, 5, 8, 10, 17.
        let inner = &bytes[4..];
        let tags: Vec<u8> = [0usize, 4, 6, 13, 17, 19].iter().map(|&i| inner[i] >> 3).collect();
        assert_eq!(tags, [1, 3, 5, 8, 10, 17], "{}", hex::encode(&bytes));
        assert_eq!(decode(&bytes, DEFAULT_MAX_STANZA_BYTES), Ok(Payload::ChatMessage(chat)));
    }
}
