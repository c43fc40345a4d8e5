//! Native TCP framing (SPEC §2): a 4-byte big-endian length N, then N bytes
//! holding one MessageScheme. A frame longer than the limit is fatal: once a
//! peer lies about lengths, nothing after it can be trusted.
//!
//! The length prefix itself is tokio-util's `LengthDelimitedCodec`; this type
//! adds the limit check with the declared size, so the error can say which
//! length was refused (SPEC `too_large`).

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use super::DEFAULT_MAX_STANZA_BYTES;

/// Why the byte stream cannot be framed. Always fatal for the connection.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame declares {declared} bytes, over the limit of {max}")]
    TooLarge { declared: u64, max: usize },
    #[error("connection closed in the middle of a frame ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Length-prefixed stanza frames for native TCP.
#[derive(Debug)]
pub struct TcpFrameCodec {
    max: usize,
    inner: LengthDelimitedCodec,
    /// The inner codec has consumed a header and waits for its body, so the
    /// buffer starts with body bytes, not with a length.
    in_body: bool,
}

impl TcpFrameCodec {
    /// A codec that refuses frames longer than `max_stanza_bytes`.
    pub fn new(max_stanza_bytes: usize) -> Self {
        let inner = LengthDelimitedCodec::builder()
            .length_field_length(4)
            .big_endian()
            .max_frame_length(max_stanza_bytes)
            .new_codec();
        TcpFrameCodec {
            max: max_stanza_bytes,
            inner,
            in_body: false,
        }
    }

    /// The largest frame payload this codec accepts, in bytes.
    pub fn max_stanza_bytes(&self) -> usize {
        self.max
    }

    /// Between frames: it holds no state a fresh codec would not have.
    pub fn between_frames(&self) -> bool {
        !self.in_body
    }
}

impl Default for TcpFrameCodec {
    fn default() -> Self {
        TcpFrameCodec::new(DEFAULT_MAX_STANZA_BYTES)
    }
}

impl Decoder for TcpFrameCodec {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        if !self.in_body && src.len() >= 4 {
            let declared = u64::from((&src[..4]).get_u32());
            if declared > self.max as u64 {
                return Err(FrameError::TooLarge {
                    declared,
                    max: self.max,
                });
            }
        }
        let before = src.len();
        let frame = self.inner.decode(src)?;
        self.in_body = frame.is_none() && (self.in_body || src.len() < before);
        Ok(frame.map(BytesMut::freeze))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() && !self.in_body => Ok(None),
            None => {
                let header = if self.in_body { 4 } else { 0 };
                Err(FrameError::Truncated {
                    buffered: src.len() + header,
                })
            }
        }
    }
}

impl Encoder<Bytes> for TcpFrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        if frame.len() > self.max {
            return Err(FrameError::TooLarge {
                declared: frame.len() as u64,
                max: self.max,
            });
        }
        Ok(self.inner.encode(frame, dst)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames_of(chunks: &[&[u8]], max: usize) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut codec = TcpFrameCodec::new(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some(frame) = codec.decode(&mut buf)? {
                out.push(frame.to_vec());
            }
        }
        if let Some(frame) = codec.decode_eof(&mut buf)? {
            out.push(frame.to_vec());
        }
        Ok(out)
    }

    #[test]
    fn split_and_concatenated_frames() {
        let got = frames_of(&[&[0, 0], &[0, 2, 8], &[6, 0, 0, 0, 0, 0, 0, 0, 1, 9]], 64).unwrap();
        assert_eq!(got, vec![vec![8, 6], vec![], vec![9]]);
    }

    #[test]
    fn oversized_length_is_refused_before_its_body_arrives() {
        let err = frames_of(&[&[0, 0, 0, 65]], 64).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { declared: 65, max: 64 }), "{err}");
    }

    #[test]
    fn a_partial_frame_at_eof_is_an_error() {
        let err = frames_of(&[&[0, 0, 0, 3, 1]], 64).unwrap_err();
        assert!(matches!(err, FrameError::Truncated { buffered: 5 }), "{err}");
    }

    #[test]
    fn a_header_without_its_body_at_eof_is_an_error() {
        let err = frames_of(&[&[0, 0, 0, 15]], 64).unwrap_err();
        assert!(matches!(err, FrameError::Truncated { buffered: 4 }), "{err}");
    }

    #[test]
    fn encoding_writes_the_length_prefix() {
        let mut codec = TcpFrameCodec::new(64);
        let mut dst = BytesMut::new();
        codec.encode(Bytes::from_static(&[8, 6]), &mut dst).unwrap();
        assert_eq!(&dst[..], &[0, 0, 0, 2, 8, 6]);
        assert!(codec.encode(Bytes::from(vec![0; 65]), &mut dst).is_err());
    }
}
