//! Stanzas <-> protobuf's canonical proto3 JSON mapping (lowerCamelCase names,
//! 64-bit integers as strings, defaults omitted), through prost-reflect and the
//! schema's own descriptors. The same mapping is the `fields:` of `vectors/`
//! and what `bimip decode` prints, so every protobuf library can read both.

use prost::Message;
use prost_reflect::{DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions};

use super::envelope::encode_message_scheme;
use crate::proto::{MessageScheme, message_descriptor};

/// Why a JSON value and bytes could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("no message named {0:?} in package bimip")]
    UnknownMessage(String),
    #[error("bytes do not decode as {message}: {reason}")]
    Bytes { message: String, reason: String },
    #[error("value is not a valid {message} in the proto3 JSON mapping: {reason}")]
    Json { message: String, reason: String },
}

fn descriptor(message: &str) -> Result<MessageDescriptor, JsonError> {
    message_descriptor(message).ok_or_else(|| JsonError::UnknownMessage(message.to_string()))
}

/// Decodes `bytes` as `message` (e.g. "MessageScheme") into its JSON mapping.
/// Only the wire format is checked here, not the envelope rule.
pub fn bytes_to_json(message: &str, bytes: &[u8]) -> Result<serde_json::Value, JsonError> {
    let desc = descriptor(message)?;
    let dynamic = DynamicMessage::decode(desc, bytes).map_err(|e| JsonError::Bytes {
        message: message.to_string(),
        reason: e.to_string(),
    })?;
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new())
        .map_err(|e| JsonError::Json {
            message: message.to_string(),
            reason: e.to_string(),
        })
}

/// Encodes a JSON-mapped `message` to canonical bytes: fields in number order,
/// defaults omitted, map entries sorted by key.
pub fn json_to_bytes(message: &str, value: &serde_json::Value) -> Result<Vec<u8>, JsonError> {
    let desc = descriptor(message)?;
    let json_err = |e: &dyn std::fmt::Display| JsonError::Json {
        message: message.to_string(),
        reason: e.to_string(),
    };
    let dynamic =
        DynamicMessage::deserialize_with_options(desc, value, &DeserializeOptions::new()).map_err(|e| json_err(&e))?;
    let bytes = dynamic.encode_to_vec();
    if message.trim_start_matches("bimip.") == "MessageScheme" {
        // Through the typed path: sorted maps and ChatMessage's field order.
        let scheme = MessageScheme::decode(bytes.as_slice()).map_err(|e| json_err(&e))?;
        return Ok(encode_message_scheme(&scheme));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_bytes_round_trip() {
        let value = serde_json::json!({
            "route": "6",
            "pingpongMessage": {"type": 1, "status": 1, "requestTime": "1700000000000"}
        });
        let bytes = json_to_bytes("MessageScheme", &value).unwrap();
        assert_eq!(hex::encode(&bytes), "0806320b100118012080d095ffbc31");
        assert_eq!(bytes_to_json("MessageScheme", &bytes).unwrap(), value);
    }

    #[test]
    fn unknown_json_fields_are_refused() {
        let value = serde_json::json!({"route": "6", "pingPong": {}});
        assert!(matches!(
            json_to_bytes("MessageScheme", &value),
            Err(JsonError::Json { .. })
        ));
        assert!(matches!(
            json_to_bytes("Nope", &value),
            Err(JsonError::UnknownMessage(_))
        ));
    }
}
