//! A readable account of one stanza's bytes: route, payload type, whether the
//! envelope rule holds, and the fields in the proto3 JSON mapping. This is what
//! `bimip decode` prints and what conformance transcripts show.

use serde::Serialize;

use super::{DEFAULT_MAX_STANZA_BYTES, Route, decode, json};

/// What the bytes of one stanza say.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Description {
    /// The envelope's route, when the bytes decode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<i64>,
    /// The payload's message type and field, e.g. "PingPong (pingpong_message)".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// "ok", or the SPEC error kind and code the bytes earn, e.g. "route_mismatch (400)".
    pub envelope: String,
    /// The message in the proto3 JSON mapping, when the bytes decode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<serde_json::Value>,
}

/// Describes `bytes` as a MessageScheme.
pub fn describe(bytes: &[u8]) -> Description {
    let verdict = decode(bytes, DEFAULT_MAX_STANZA_BYTES);
    let envelope = match &verdict {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("{} ({}): {e}", e.kind().as_str(), e.kind().code()),
    };
    let Ok(fields) = json::bytes_to_json("MessageScheme", bytes) else {
        return Description {
            route: None,
            payload: None,
            envelope,
            fields: None,
        };
    };
    let route = fields
        .get("route")
        .and_then(|r| r.as_str())
        .and_then(|r| r.parse().ok())
        .or(Some(0));
    // The payload actually present (it may disagree with the route).
    let payload = Route::ALL
        .iter()
        .find(|r| fields.get(camel(r.field_name())).is_some())
        .map(|r| format!("{} ({})", r.message_name(), r.field_name()));
    Description {
        route,
        payload,
        envelope,
        fields: Some(fields),
    }
}

/// A proto field name in the JSON mapping's lowerCamelCase (`pingpong_message` -> `pingpongMessage`).
pub fn camel(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for c in snake.chars() {
        match (c, upper) {
            ('_', _) => upper = true,
            (c, true) => {
                out.extend(c.to_uppercase());
                upper = false;
            }
            (c, false) => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_route_payload_and_verdict() {
        let d = describe(&hex::decode("0807320b100118012080d095ffbc31").unwrap());
        assert_eq!(d.route, Some(7));
        assert_eq!(d.payload.as_deref(), Some("PingPong (pingpong_message)"));
        assert!(d.envelope.starts_with("route_mismatch (400)"), "{}", d.envelope);
        let d = describe(&[0x08]);
        assert_eq!((d.route, d.fields), (None, None));
        assert!(d.envelope.starts_with("malformed (400)"));
    }
}
