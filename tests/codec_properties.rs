//! Properties of the codec (SPEC §2, §4).
//!
//! Over arbitrary bytes: nothing panics, what decodes re-encodes to a stanza that decodes to the same thing, and
//! TCP framing does not depend on how the stream is split.
//!
//! Over arbitrary messages of every type in `proto/bimip.proto`: the generated types decode what any protobuf
//! encoder writes and encode it back to the same message, the codec's canonical form (SPEC ENV: fields in number
//! order, proto3 defaults omitted, map keys sorted) is stable, and the proto3 JSON mapping round-trips. The
//! message strategies are derived from the schema's descriptors, so a field added to the schema is generated
//! without a code change; a message type needs one line in `TYPED` (its generated Rust type), and
//! `every_schema_message_has_a_typed_round_trip` fails until it has one.

use std::collections::{BTreeSet, HashMap};

use bimip::codec::json::{bytes_to_json, json_to_bytes};
use bimip::codec::{self, DEFAULT_MAX_STANZA_BYTES, Route, TcpFrameCodec};
use bimip::proto::{self as pb, descriptor_pool, message_descriptor};
use bytes::BytesMut;
use proptest::prelude::*;
use proptest::strategy::{BoxedStrategy, Union};
use proptest::test_runner::{Config, TestRunner};
use prost::Message;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, Value};
use tokio_util::codec::Decoder;

/// Bytes that are often close to valid: a route key, a payload key, a length.
fn stanza_like() -> impl Strategy<Value = Vec<u8>> {
    let route = (0u8..40).prop_map(|r| vec![0x08, r]);
    let payload = (2u8..30, proptest::collection::vec(any::<u8>(), 0..40)).prop_map(|(field, body)| {
        let mut v = vec![(field << 3) | 2, body.len() as u8];
        v.extend(body);
        v
    });
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        (route, payload).prop_map(|(mut r, p)| {
            r.extend(p);
            r
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn decode_never_panics_and_reencodes_stably(bytes in stanza_like()) {
        if let Ok(payload) = codec::decode(&bytes, DEFAULT_MAX_STANZA_BYTES) {
            let canonical = codec::encode(&payload);
            // Canonical form is a fixed point (compared as bytes: NaN doubles are never equal to themselves).
            let again = codec::decode(&canonical, DEFAULT_MAX_STANZA_BYTES).unwrap();
            prop_assert_eq!(codec::encode(&again), canonical);
        }
        let _ = codec::describe(&bytes);
    }

    #[test]
    fn framing_ignores_chunk_boundaries(
        frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..50), 0..6),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
    ) {
        let mut stream = Vec::new();
        for f in &frames {
            stream.extend_from_slice(&(f.len() as u32).to_be_bytes());
            stream.extend_from_slice(f);
        }
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        points.push(0);
        points.push(stream.len());
        points.sort_unstable();
        let mut codec = TcpFrameCodec::new(64);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for w in points.windows(2) {
            buf.extend_from_slice(&stream[w[0]..w[1]]);
            while let Some(frame) = codec.decode(&mut buf).unwrap() {
                got.push(frame.to_vec());
            }
        }
        prop_assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn framing_never_panics_on_garbage(stream in proptest::collection::vec(any::<u8>(), 0..200), max in 0usize..100) {
        let mut codec = TcpFrameCodec::new(max);
        let mut buf = BytesMut::from(&stream[..]);
        while let Ok(Some(frame)) = codec.decode(&mut buf) {
            prop_assert!(frame.len() <= max);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Every message type: strategies from the descriptors, round trips through the generated types.

/// Decodes bytes as the generated type, checks it equals its own re-decoded encoding, returns that encoding.
type TypedRoundTrip = fn(&[u8]) -> Result<Vec<u8>, String>;

fn typed<T: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let value = T::decode(bytes).map_err(|e| e.to_string())?;
    let encoded = value.encode_to_vec();
    let again = T::decode(encoded.as_slice()).map_err(|e| e.to_string())?;
    // Doubles are compared by their encoding below; here only a NaN-free value must equal itself.
    if format!("{value:?}").contains("NaN") || again == value {
        Ok(encoded)
    } else {
        Err(format!("{value:?} re-decodes as {again:?}"))
    }
}

macro_rules! typed_table {
    ($($name:ident),* $(,)?) => {
        /// Every message of the schema and its generated Rust type.
        const TYPED: &[(&str, TypedRoundTrip)] = &[$((stringify!($name), typed::<pb::$name>),)*];
    };
}

typed_table![
    Identity,
    AwarenessRequest,
    AwarenessResponse,
    AwarenessNotification,
    PingPong,
    TokenRevokeRequest,
    TokenRevokeResponse,
    SubscriberAddRequest,
    SubscriberAddResponse,
    BlockSubscriber,
    Logout,
    ErrorMessage,
    TextPayloadRequest,
    MediaPayloadRequest,
    ChatMessage,
    AcknowledgmentRequest,
    AcknowledgmentResponse,
    VersionUpdate,
    TokenRefreshRequest,
    TokenRefreshResponse,
    AwarenessSubscription,
    SubscriberRemove,
    AwarenessVisibility,
    LocationStream,
    PushNotification,
    Body,
    Authenticate,
    MessageScheme,
];

/// Messages of the schema a stanza can hold (map entries are part of their map field, not messages of their own).
fn schema_messages() -> Vec<MessageDescriptor> {
    descriptor_pool()
        .all_messages()
        .filter(|m| m.package_name() == "bimip" && !m.is_map_entry())
        .collect()
}

fn scalar(kind: &Kind) -> BoxedStrategy<Value> {
    use proptest::num::f64 as f;
    match kind {
        Kind::Double => (f::POSITIVE | f::NEGATIVE | f::NORMAL | f::SUBNORMAL | f::ZERO)
            .prop_map(Value::F64)
            .boxed(),
        Kind::Float => any::<f32>()
            .prop_filter("finite", |v| v.is_finite())
            .prop_map(Value::F32)
            .boxed(),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => any::<i32>().prop_map(Value::I32).boxed(),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => any::<i64>().prop_map(Value::I64).boxed(),
        Kind::Uint32 | Kind::Fixed32 => any::<u32>().prop_map(Value::U32).boxed(),
        Kind::Uint64 | Kind::Fixed64 => any::<u64>().prop_map(Value::U64).boxed(),
        Kind::Bool => any::<bool>().prop_map(Value::Bool).boxed(),
        Kind::String => ".{0,12}".prop_map(Value::String).boxed(),
        Kind::Bytes => proptest::collection::vec(any::<u8>(), 0..12)
            .prop_map(|b| Value::Bytes(b.into()))
            .boxed(),
        Kind::Enum(e) => {
            let numbers: Vec<i32> = e.values().map(|v| v.number()).collect();
            prop_oneof![proptest::sample::select(numbers), any::<i32>()]
                .prop_map(Value::EnumNumber)
                .boxed()
        }
        Kind::Message(_) => unreachable!("messages are handled by `message`"),
    }
}

fn map_key(kind: &Kind) -> BoxedStrategy<MapKey> {
    scalar(kind)
        .prop_map(|v| match v {
            Value::String(s) => MapKey::String(s),
            Value::I32(i) => MapKey::I32(i),
            Value::I64(i) => MapKey::I64(i),
            Value::U32(i) => MapKey::U32(i),
            Value::U64(i) => MapKey::U64(i),
            Value::Bool(b) => MapKey::Bool(b),
            other => panic!("{other:?} cannot be a map key"),
        })
        .boxed()
}

/// A value of one field (a list for repeated fields, a map for map fields).
fn field_value(field: &FieldDescriptor, depth: u32) -> BoxedStrategy<Value> {
    let single = |kind: Kind| match kind {
        Kind::Message(m) => message(m, depth + 1).prop_map(Value::Message).boxed(),
        other => scalar(&other),
    };
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else {
            unreachable!("map fields are entry messages")
        };
        let key = map_key(&entry.map_entry_key_field().kind());
        let value = single(entry.map_entry_value_field().kind());
        proptest::collection::hash_map(key, value, 0..4)
            .prop_map(|m: HashMap<MapKey, Value>| Value::Map(m))
            .boxed()
    } else if field.is_list() {
        let max = if depth > 2 { 1 } else { 4 };
        proptest::collection::vec(single(field.kind()), 0..max)
            .prop_map(Value::List)
            .boxed()
    } else {
        single(field.kind())
    }
}

/// An arbitrary message of `desc`: each plain field unset or set to a non-default value, at most one field of each
/// oneof (which may hold its type's default: a oneof member has presence).
fn message(desc: MessageDescriptor, depth: u32) -> BoxedStrategy<DynamicMessage> {
    let mut parts: Vec<BoxedStrategy<Option<(FieldDescriptor, Value)>>> = Vec::new();
    for field in desc.fields().filter(|f| f.containing_oneof().is_none()) {
        if depth > 3 && matches!(field.kind(), Kind::Message(_)) {
            continue;
        }
        let f = field.clone();
        // A default is the same as no value: proto3 does not write it, so it could not come back.
        let value = field_value(&field, depth).prop_map(move |v| {
            let default = Value::default_value_for_field(&f);
            (v != default).then(|| (f.clone(), v))
        });
        parts.push(value.boxed());
    }
    for oneof in desc.oneofs() {
        let mut choices: Vec<BoxedStrategy<Option<(FieldDescriptor, Value)>>> = vec![Just(None).boxed()];
        for field in oneof.fields() {
            let f = field.clone();
            choices.push(
                field_value(&field, depth)
                    .prop_map(move |v| Some((f.clone(), v)))
                    .boxed(),
            );
        }
        parts.push(Union::new(choices).boxed());
    }
    parts
        .prop_map(move |fields| {
            let mut m = DynamicMessage::new(desc.clone());
            for (field, value) in fields.into_iter().flatten() {
                m.set_field(&field, value);
            }
            m
        })
        .boxed()
}

fn varint(bytes: &mut &[u8]) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = bytes.split_first().ok_or("varint cut short")?;
        *bytes = rest;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint too long".into())
}

/// Checks the canonical form independently of the encoder: fields in number order (a repeated field's elements
/// together), proto3 defaults omitted outside oneofs and map entries, map entries sorted by key, recursively.
fn check_canonical(mut bytes: &[u8], desc: &MessageDescriptor) -> Result<(), String> {
    let mut last = 0u32;
    let mut last_key: Option<Vec<u8>> = None;
    while !bytes.is_empty() {
        let key = varint(&mut bytes)?;
        let number = u32::try_from(key >> 3).map_err(|_| "field number out of range")?;
        let field = desc
            .get_field(number)
            .ok_or_else(|| format!("{}: unknown field {number}", desc.name()))?;
        let repeat = number == last && (field.is_list() || field.is_map());
        if number < last || (number == last && !repeat) {
            return Err(format!("{}: field {number} after {last}", desc.name()));
        }
        if !repeat {
            last_key = None;
        }
        last = number;
        let presence = field.containing_oneof().is_some() || desc.is_map_entry();
        let value: &[u8] = match key & 7 {
            0 => {
                let v = varint(&mut bytes)?;
                if v == 0 && !presence && !field.is_list() {
                    return Err(format!("{}.{}: default written", desc.name(), field.name()));
                }
                &[]
            }
            1 => {
                let (v, rest) = bytes.split_at_checked(8).ok_or("fixed64 cut short")?;
                bytes = rest;
                if v == [0; 8] && !presence {
                    return Err(format!("{}.{}: default written", desc.name(), field.name()));
                }
                &[]
            }
            2 => {
                let len = usize::try_from(varint(&mut bytes)?).map_err(|_| "length out of range")?;
                let (v, rest) = bytes.split_at_checked(len).ok_or("length past the end")?;
                bytes = rest;
                v
            }
            5 => {
                let (_, rest) = bytes.split_at_checked(4).ok_or("fixed32 cut short")?;
                bytes = rest;
                &[]
            }
            w => return Err(format!("wire type {w}")),
        };
        if key & 7 != 2 {
            continue;
        }
        match field.kind() {
            Kind::Message(inner) => {
                check_canonical(value, &inner)?;
                if field.is_map() {
                    // The key is field 1 of the entry; absent means the default (empty) key.
                    let mut entry = value;
                    let mut k = Vec::new();
                    if entry.first() == Some(&0x0a) {
                        entry = &entry[1..];
                        let len = varint(&mut entry)? as usize;
                        k = entry[..len].to_vec();
                    }
                    if last_key.as_ref().is_some_and(|p| *p >= k) {
                        return Err(format!("{}.{}: map keys out of order", desc.name(), field.name()));
                    }
                    last_key = Some(k);
                }
            }
            Kind::String | Kind::Bytes if value.is_empty() && !presence && !field.is_list() => {
                return Err(format!("{}.{}: empty string written", desc.name(), field.name()));
            }
            _ => {}
        }
    }
    Ok(())
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

#[test]
fn every_schema_message_has_a_typed_round_trip() {
    let schema: BTreeSet<String> = schema_messages().iter().map(|m| m.name().to_string()).collect();
    let typed: BTreeSet<String> = TYPED.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(schema, typed, "each message of proto/bimip.proto needs a line in TYPED");
    for route in Route::ALL {
        assert!(
            typed.contains(route.message_name()),
            "route {route} has no typed round trip"
        );
    }
}

/// Any encoder's bytes of any message decode as the generated type and encode back to the same message; the
/// generated type's bytes map to proto3 JSON and back to the same message.
#[test]
fn every_message_round_trips_through_its_type_and_json() {
    for (name, round_trip) in TYPED {
        let desc = message_descriptor(name).unwrap();
        runner(64)
            .run(&message(desc.clone(), 0), |m| {
                let bytes = m.encode_to_vec();
                let encoded = round_trip(&bytes).map_err(|e| TestCaseError::fail(format!("{name}: {e}")))?;
                let back = DynamicMessage::decode(desc.clone(), encoded.as_slice()).unwrap();
                prop_assert_eq!(&back, &m, "{} through its generated type", name);
                let json = bytes_to_json(name, &encoded).unwrap();
                let from_json = json_to_bytes(name, &json).unwrap();
                let back = DynamicMessage::decode(desc.clone(), from_json.as_slice()).unwrap();
                prop_assert_eq!(&back, &m, "{} through JSON {}", name, json);
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// Every route's stanza, built by a reflective encoder, decodes through the codec on its route; the codec's
/// encoding is canonical, a fixed point, the same message, and survives the JSON mapping byte for byte.
#[test]
fn every_route_round_trips_through_the_codec() {
    let scheme = message_descriptor("MessageScheme").unwrap();
    for &route in Route::ALL {
        let desc = message_descriptor(route.message_name()).unwrap();
        let field = scheme.get_field(route.number() as u32).unwrap();
        let route_field = scheme.get_field_by_name("route").unwrap();
        runner(64)
            .run(&message(desc, 0), |payload| {
                let mut stanza = DynamicMessage::new(scheme.clone());
                stanza.set_field(&route_field, Value::I64(route.number()));
                stanza.set_field(&field, Value::Message(payload));
                let decoded = codec::decode(&stanza.encode_to_vec(), usize::MAX).unwrap();
                prop_assert_eq!(Route::of(&decoded), route);
                let canonical = codec::encode(&decoded);
                check_canonical(&canonical, &scheme).map_err(TestCaseError::fail)?;
                let again = codec::decode(&canonical, usize::MAX).unwrap();
                prop_assert_eq!(
                    codec::encode(&again),
                    canonical.clone(),
                    "canonical form is a fixed point"
                );
                let back = DynamicMessage::decode(scheme.clone(), canonical.as_slice()).unwrap();
                prop_assert_eq!(&back, &stanza);
                let json = bytes_to_json("MessageScheme", &canonical).unwrap();
                prop_assert_eq!(json_to_bytes("MessageScheme", &json).unwrap(), canonical);
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{route}: {e}"));
    }
}

/// The canonical-form checker itself: it must reject what breaks each rule.
#[test]
fn the_canonical_checker_rejects_non_canonical_bytes() {
    let ping = message_descriptor("PingPong").unwrap();
    let push = message_descriptor("PushNotification").unwrap();
    // type=1, status=1 in order; then swapped; then a written default.
    assert_eq!(check_canonical(&[0x10, 0x01, 0x18, 0x01], &ping), Ok(()));
    assert!(check_canonical(&[0x18, 0x01, 0x10, 0x01], &ping).is_err());
    assert!(check_canonical(&[0x10, 0x00], &ping).is_err());
    assert!(check_canonical(&[0x3a, 0x00], &ping).is_err(), "empty string");
    // data = {"b": "", "a": ""}: keys out of order.
    let entry = |k: u8| [0x32, 0x03, 0x0a, 0x01, k];
    let sorted = [entry(b'a'), entry(b'b')].concat();
    let unsorted = [entry(b'b'), entry(b'a')].concat();
    assert_eq!(check_canonical(&sorted, &push), Ok(()));
    assert!(check_canonical(&unsorted, &push).is_err());
}
