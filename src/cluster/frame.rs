//! What one node sends another: the inputs of a connection whose user's home shard is on another node, the
//! outputs that go back to it, and the mail between shards ([`crate::core::Mail`], encoded by `core::wire`).
//!
//! Protobuf, like every other byte the service exchanges: a node of the next release can skip a kind it does not
//! know instead of misreading it. One NATS subject per node carries every frame for it, so frames one node sends
//! another arrive in the order sent (NATS keeps a publisher's order per subscriber), and with them the orderings
//! of src/core/README.md: a connection's Open before its stanzas, a shard's mail to another in order.

use bytes::Bytes;
use prost::Message;

use crate::codec::{ErrorKind, FrameError};
use crate::core::{CloseReason, ConnId, Transport};

/// One frame between nodes.
#[derive(Clone, PartialEq, Message)]
pub struct Frame {
    #[prost(oneof = "Kind", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9")]
    pub kind: Option<Kind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Kind {
    /// A connection opens on its home shard (the socket is on the sender's node).
    #[prost(message, tag = "1")]
    Open(Open),
    /// One stanza of a connection, for its home shard.
    #[prost(message, tag = "2")]
    Stanza(Carried),
    /// The connection sent a WebSocket text frame (TRN: refused).
    #[prost(message, tag = "3")]
    TextFrame(ConnAt),
    /// The connection sent a frame over the stanza limit.
    #[prost(message, tag = "4")]
    TooLarge(TooLarge),
    /// The connection is gone (its socket closed, or its node gave up on it).
    #[prost(message, tag = "5")]
    Closed(ConnAt),
    /// Mail for a shard of the receiving node.
    #[prost(message, tag = "6")]
    Mail(MailFor),
    /// A stanza for a connection whose socket is on the receiving node.
    #[prost(message, tag = "7")]
    Send(Carried),
    /// Close that connection, after what was sent.
    #[prost(message, tag = "8")]
    Close(CloseConn),
    /// The home's answer to an `Open` of a WebSocket connection: the upgrade goes on, or is refused with `error`.
    #[prost(message, tag = "9")]
    Opened(Opened),
}

#[derive(Clone, PartialEq, Message)]
pub struct Open {
    #[prost(uint64, tag = "1")]
    pub conn: u64,
    #[prost(uint32, tag = "2")]
    pub shard: u32,
    /// True: WebSocket (the token came with the upgrade); false: native TCP (the token comes in its Authenticate).
    #[prost(bool, tag = "3")]
    pub websocket: bool,
    #[prost(string, optional, tag = "4")]
    pub token: Option<String>,
}

/// A connection and a shard: where an input goes (`shard`) or which connection an output is for.
#[derive(Clone, PartialEq, Message)]
pub struct ConnAt {
    #[prost(uint64, tag = "1")]
    pub conn: u64,
    #[prost(uint32, tag = "2")]
    pub shard: u32,
}

/// Bytes of one stanza, to or from a connection.
#[derive(Clone, PartialEq, Message)]
pub struct Carried {
    #[prost(uint64, tag = "1")]
    pub conn: u64,
    #[prost(uint32, tag = "2")]
    pub shard: u32,
    #[prost(bytes = "bytes", tag = "3")]
    pub stanza: Bytes,
}

#[derive(Clone, PartialEq, Message)]
pub struct TooLarge {
    #[prost(uint64, tag = "1")]
    pub conn: u64,
    #[prost(uint32, tag = "2")]
    pub shard: u32,
    #[prost(uint64, tag = "3")]
    pub declared: u64,
    #[prost(uint64, tag = "4")]
    pub max: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct MailFor {
    #[prost(uint32, tag = "1")]
    pub shard: u32,
    #[prost(bytes = "bytes", tag = "2")]
    pub mail: Bytes,
}

#[derive(Clone, PartialEq, Message)]
pub struct CloseConn {
    #[prost(uint64, tag = "1")]
    pub conn: u64,
    /// The error kind's name (`ErrorKind::as_str`); none: a normal close (logout).
    #[prost(string, optional, tag = "2")]
    pub error: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Opened {
    #[prost(uint64, tag = "1")]
    pub conn: u64,
    /// The refusal's error kind name; none: open.
    #[prost(string, optional, tag = "2")]
    pub error: Option<String>,
}

/// A frame that decodes but cannot be acted on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameDecodeError {
    #[error("undecodable frame: {0}")]
    Protobuf(String),
    #[error("a frame of no known kind")]
    UnknownKind,
    #[error("unknown error kind {0:?}")]
    UnknownErrorKind(String),
}

impl Frame {
    pub fn encode_to_bytes(&self) -> Bytes {
        Bytes::from(self.encode_to_vec())
    }

    /// The frame and its kind; a frame of a kind this node does not know is an error, not a guess.
    pub fn decode_kind(bytes: &[u8]) -> Result<Kind, FrameDecodeError> {
        let frame = Frame::decode(bytes).map_err(|e| FrameDecodeError::Protobuf(e.to_string()))?;
        frame.kind.ok_or(FrameDecodeError::UnknownKind)
    }

    pub fn open(conn: ConnId, shard: usize, transport: Transport, token: Option<&str>) -> Frame {
        Frame::of(Kind::Open(Open {
            conn: conn.0,
            shard: shard_u32(shard),
            websocket: transport == Transport::WebSocket,
            token: token.map(str::to_string),
        }))
    }

    pub fn stanza(conn: ConnId, shard: usize, stanza: Bytes) -> Frame {
        Frame::of(Kind::Stanza(Carried {
            conn: conn.0,
            shard: shard_u32(shard),
            stanza,
        }))
    }

    pub fn text_frame(conn: ConnId, shard: usize) -> Frame {
        Frame::of(Kind::TextFrame(ConnAt {
            conn: conn.0,
            shard: shard_u32(shard),
        }))
    }

    /// A framing error as the home must hear it; `None` for one that only ends the connection (then `closed`).
    pub fn framing_error(conn: ConnId, shard: usize, error: &FrameError) -> Option<Frame> {
        match error {
            FrameError::TooLarge { declared, max } => Some(Frame::of(Kind::TooLarge(TooLarge {
                conn: conn.0,
                shard: shard_u32(shard),
                declared: *declared,
                max: u64::try_from(*max).unwrap_or(u64::MAX),
            }))),
            FrameError::Truncated { .. } | FrameError::Io(_) => None,
        }
    }

    pub fn closed(conn: ConnId, shard: usize) -> Frame {
        Frame::of(Kind::Closed(ConnAt {
            conn: conn.0,
            shard: shard_u32(shard),
        }))
    }

    pub fn mail(shard: usize, mail: Bytes) -> Frame {
        Frame::of(Kind::Mail(MailFor {
            shard: shard_u32(shard),
            mail,
        }))
    }

    pub fn send(conn: ConnId, stanza: Bytes) -> Frame {
        Frame::of(Kind::Send(Carried {
            conn: conn.0,
            shard: 0,
            stanza,
        }))
    }

    pub fn close(conn: ConnId, reason: CloseReason) -> Frame {
        Frame::of(Kind::Close(CloseConn {
            conn: conn.0,
            error: match reason {
                CloseReason::Normal => None,
                CloseReason::Error(kind) => Some(kind.as_str().to_string()),
            },
        }))
    }

    pub fn opened(conn: ConnId, result: Result<(), ErrorKind>) -> Frame {
        Frame::of(Kind::Opened(Opened {
            conn: conn.0,
            error: result.err().map(|kind| kind.as_str().to_string()),
        }))
    }

    fn of(kind: Kind) -> Frame {
        Frame { kind: Some(kind) }
    }
}

impl CloseConn {
    pub fn reason(&self) -> Result<CloseReason, FrameDecodeError> {
        match &self.error {
            None => Ok(CloseReason::Normal),
            Some(name) => kind_named(name).map(CloseReason::Error),
        }
    }
}

impl Opened {
    pub fn result(&self) -> Result<Result<(), ErrorKind>, FrameDecodeError> {
        match &self.error {
            None => Ok(Ok(())),
            Some(name) => kind_named(name).map(Err),
        }
    }
}

fn kind_named(name: &str) -> Result<ErrorKind, FrameDecodeError> {
    ErrorKind::from_name(name).ok_or_else(|| FrameDecodeError::UnknownErrorKind(name.to_string()))
}

fn shard_u32(shard: usize) -> u32 {
    u32::try_from(shard).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frames = [
            Frame::open(ConnId(7), 3, Transport::WebSocket, Some("tok")),
            Frame::open(ConnId(8), 1, Transport::Tcp, None),
            Frame::stanza(ConnId(7), 3, Bytes::from_static(b"\x01\x02")),
            Frame::text_frame(ConnId(7), 3),
            Frame::framing_error(ConnId(7), 3, &FrameError::TooLarge { declared: 9, max: 4 }).unwrap(),
            Frame::closed(ConnId(7), 3),
            Frame::mail(5, Bytes::from_static(b"m")),
            Frame::send(ConnId(9), Bytes::from_static(b"s")),
            Frame::close(ConnId(9), CloseReason::Error(ErrorKind::TokenRevoked)),
            Frame::close(ConnId(9), CloseReason::Normal),
            Frame::opened(ConnId(9), Err(ErrorKind::TokenRevoked)),
            Frame::opened(ConnId(9), Ok(())),
        ];
        for frame in frames {
            let kind = Frame::decode_kind(&frame.encode_to_bytes()).unwrap();
            assert_eq!(Some(kind), frame.kind);
        }
    }

    #[test]
    fn close_and_open_results_keep_their_error_kind() {
        let Some(Kind::Close(close)) = Frame::close(ConnId(1), CloseReason::Error(ErrorKind::SessionReplaced)).kind
        else {
            panic!("not a close");
        };
        assert_eq!(close.reason(), Ok(CloseReason::Error(ErrorKind::SessionReplaced)));
        let Some(Kind::Opened(opened)) = Frame::opened(ConnId(1), Err(ErrorKind::TokenRevoked)).kind else {
            panic!("not an opened");
        };
        assert_eq!(opened.result(), Ok(Err(ErrorKind::TokenRevoked)));
    }

    #[test]
    fn bad_frames_are_errors() {
        assert!(matches!(
            Frame::decode_kind(b"\xff\xff\xff"),
            Err(FrameDecodeError::Protobuf(_))
        ));
        assert_eq!(Frame::decode_kind(b""), Err(FrameDecodeError::UnknownKind));
        let unknown = CloseConn {
            conn: 1,
            error: Some("no_such_kind".into()),
        };
        assert!(matches!(unknown.reason(), Err(FrameDecodeError::UnknownErrorKind(_))));
    }
}
