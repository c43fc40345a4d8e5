//! TCP frame decoding across arbitrary splits: the same stream yields the same
//! frames (or the same error) however it is cut into reads.
#![no_main]

use arbitrary::Arbitrary;
use bimip::codec::TcpFrameCodec;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

#[derive(Debug, Arbitrary)]
struct Input {
    stream: Vec<u8>,
    cuts: Vec<u16>,
    max: u8,
}

fn frames(stream: &[u8], cuts: &[usize], max: usize) -> (Vec<Vec<u8>>, bool) {
    let mut codec = TcpFrameCodec::new(max);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&stream.len())) {
        buf.extend_from_slice(&stream[start..end]);
        start = end;
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => out.push(f.to_vec()),
                Ok(None) => break,
                Err(_) => return (out, false),
            }
        }
    }
    match codec.decode_eof(&mut buf) {
        Ok(last) => {
            out.extend(last.map(|f| f.to_vec()));
            (out, true)
        }
        Err(_) => (out, false),
    }
}

fuzz_target!(|input: Input| {
    let mut cuts: Vec<usize> = input.cuts.iter().map(|&c| usize::from(c) % (input.stream.len() + 1)).collect();
    cuts.sort_unstable();
    let max = usize::from(input.max);
    let whole = frames(&input.stream, &[], max);
    let split = frames(&input.stream, &cuts, max);
    assert_eq!(whole, split);
    assert!(whole.0.iter().all(|f| f.len() <= max));
});
