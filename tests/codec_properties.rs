//! Properties of the codec over arbitrary input (SPEC §2, §4): nothing panics,
//! what decodes re-encodes to a stanza that decodes to the same thing, and TCP
//! framing does not depend on how the stream is split.

use bimip::codec::{self, DEFAULT_MAX_STANZA_BYTES, TcpFrameCodec};
use bytes::BytesMut;
use proptest::prelude::*;
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
            prop_assert_eq!(codec::decode(&canonical, DEFAULT_MAX_STANZA_BYTES), Ok(payload));
            // Canonical form is a fixed point.
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
