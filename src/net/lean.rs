//! Reading a connection without holding a buffer while it is idle (issue 16: SPEC §19's memory budget is per
//! connection, and most connections are idle).
//!
//! A read goes into a chunk on the stack; only bytes that cannot be handed on yet (a partial frame) are kept,
//! in a buffer that is given back once it is empty. The WebSocket adapter also needs to know when tungstenite
//! holds no partial input, so that it can drop the whole WebSocket state (its buffers and wakers) and keep only
//! the stream: [`Gate`] passes the bytes through and follows the frames in them ([`FrameWatch`]).

use std::io;
use std::io::Cursor;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// The most one read takes: stanzas are small, and a bigger one takes several reads.
const CHUNK: usize = 4096;

/// Reads what `io` has into `pending` (allocated only now that bytes came). `Ok(0)` = end of stream.
pub(crate) fn poll_fill<S: AsyncRead + Unpin>(
    io: &mut S,
    cx: &mut Context<'_>,
    pending: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    let mut chunk = [0u8; CHUNK];
    let mut buf = ReadBuf::new(&mut chunk);
    ready!(Pin::new(io).poll_read(cx, &mut buf))?;
    pending.extend_from_slice(buf.filled());
    Poll::Ready(Ok(buf.filled().len()))
}

/// Gives `pending`'s memory back once everything in it was used.
pub(crate) fn release(pending: &mut BytesMut) {
    if pending.is_empty() && pending.capacity() > 0 {
        *pending = BytesMut::new();
    }
}

/// Where a WebSocket connection's input stands: in the HTTP upgrade request, or between or inside frames.
#[derive(Debug, Default)]
pub(crate) struct FrameWatch {
    /// In the upgrade request: how much of its `\r\n\r\n` end has been seen. `None` once past it.
    http: Option<u8>,
    /// A frame header seen in part.
    head: [u8; 14],
    head_len: u8,
    /// Bytes of the current frame's payload not seen yet. A `u32`, as every field here is as small as it can
    /// be (the watch is part of every idle connection): a longer frame is refused by tungstenite anyway.
    left: u32,
    /// Inside a fragmented message: its final frame has not come.
    fragmented: bool,
    /// A header tungstenite will refuse: the stream is never at rest again (the connection ends anyway).
    lost: bool,
}

impl FrameWatch {
    /// A watch that starts in the HTTP upgrade request.
    pub fn http() -> FrameWatch {
        FrameWatch {
            http: Some(0),
            ..FrameWatch::default()
        }
    }

    /// Every byte seen ends a whole frame, and no message is half received: a reader that has taken every
    /// complete frame holds no input.
    pub fn at_rest(&self) -> bool {
        !self.lost && self.http.is_none() && self.head_len == 0 && self.left == 0 && !self.fragmented
    }

    /// Follows `bytes`, the next bytes of the stream.
    pub fn see(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.lost {
            if let Some(matched) = self.http {
                let mut m = matched;
                let mut end = None;
                for (at, &b) in bytes.iter().enumerate() {
                    m = match (m, b) {
                        (0 | 2, b'\r') => m + 1,
                        (1 | 3, b'\n') => m + 1,
                        (_, b'\r') => 1,
                        _ => 0,
                    };
                    if m == 4 {
                        end = Some(at + 1);
                        break;
                    }
                }
                match end {
                    Some(at) => {
                        self.http = None;
                        bytes = &bytes[at..];
                    }
                    None => {
                        self.http = Some(m);
                        return;
                    }
                }
            } else if self.left > 0 {
                let n = usize::try_from(self.left).unwrap_or(usize::MAX).min(bytes.len());
                self.left -= n as u32;
                bytes = &bytes[n..];
            } else {
                let had = usize::from(self.head_len);
                let take = (self.head.len() - had).min(bytes.len());
                self.head[had..had + take].copy_from_slice(&bytes[..take]);
                let held = had + take;
                let mut cursor = Cursor::new(&self.head[..held]);
                match FrameHeader::parse(&mut cursor) {
                    Ok(Some((header, len))) => {
                        let used = usize::try_from(cursor.position()).unwrap_or(held);
                        self.head_len = 0;
                        let Ok(len) = u32::try_from(len) else {
                            self.lost = true;
                            return;
                        };
                        self.left = len;
                        self.fragmented = match header.opcode {
                            OpCode::Data(Data::Continue) => self.fragmented && !header.is_final,
                            OpCode::Data(_) => !header.is_final,
                            OpCode::Control(_) => self.fragmented,
                        };
                        // What of this chunk went past the header is payload.
                        bytes = &bytes[used - had..];
                    }
                    Ok(None) => {
                        self.head_len = u8::try_from(held).unwrap_or(u8::MAX);
                        bytes = &bytes[take..];
                    }
                    Err(_) => self.lost = true,
                }
            }
        }
    }
}

/// A WebSocket connection's stream, with the bytes read while no WebSocket state existed and the watch over
/// what was read.
pub(crate) struct Gate<S> {
    io: S,
    /// Boxed: a pointer while there is none, which is nearly always.
    pending: Option<Box<BytesMut>>,
    pub watch: FrameWatch,
}

impl<S: AsyncRead + Unpin> Gate<S> {
    /// A stream whose first bytes are the HTTP upgrade request.
    pub fn new(io: S) -> Gate<S> {
        Gate {
            io,
            pending: None,
            watch: FrameWatch::http(),
        }
    }

    /// Waits for input without a buffer; what comes is kept for the next reader. `Ok(0)` = end of stream.
    pub fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let pending = self.pending.get_or_insert_with(Box::default);
        let read = poll_fill(&mut self.io, cx, pending);
        if pending.is_empty() {
            self.pending = None;
        }
        read
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }

    /// Reads until the HTTP request head is in (its `\r\n\r\n`) and returns it, keeping it for the next reader;
    /// `None` if the stream ends first or the head would pass `limit` bytes.
    pub async fn read_head(&mut self, limit: usize) -> io::Result<Option<&[u8]>> {
        let end = loop {
            if let Some(pending) = &self.pending {
                if let Some(at) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                    break at + 4;
                }
                if pending.len() >= limit {
                    return Ok(None);
                }
            }
            if std::future::poll_fn(|cx| self.poll_wait(cx)).await? == 0 {
                return Ok(None);
            }
        };
        Ok(self.pending.as_deref().map(|pending| &pending[..end]))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Gate<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.pending.as_deref_mut() {
            None => {
                let before = buf.filled().len();
                ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
                this.watch.see(&buf.filled()[before..]);
            }
            Some(pending) => {
                let n = buf.remaining().min(pending.len());
                buf.put_slice(&pending[..n]);
                this.watch.see(&pending[..n]);
                pending.advance(n);
                if pending.is_empty() {
                    this.pending = None;
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Gate<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::Control;

    use super::*;

    /// A client frame (masked) on the wire.
    fn wire(opcode: OpCode, is_final: bool, payload: &[u8]) -> Vec<u8> {
        let header = FrameHeader {
            is_final,
            opcode,
            mask: Some([1, 2, 3, 4]),
            ..FrameHeader::default()
        };
        let mut out = Vec::new();
        header.format(payload.len() as u64, &mut out).unwrap();
        out.extend_from_slice(payload);
        out
    }

    const REQUEST: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n";

    /// The stream `REQUEST` + frames, and after which byte counts it is at rest.
    fn stream(frames: &[(OpCode, bool, usize)]) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = REQUEST.to_vec();
        let mut rest = vec![bytes.len()];
        let mut fragmented = false;
        for &(opcode, is_final, len) in frames {
            bytes.extend(wire(opcode, is_final, &vec![7; len]));
            fragmented = match opcode {
                OpCode::Data(Data::Continue) => fragmented && !is_final,
                OpCode::Data(_) => !is_final,
                OpCode::Control(_) => fragmented,
            };
            if !fragmented {
                rest.push(bytes.len());
            }
        }
        (bytes, rest)
    }

    fn frames() -> impl Strategy<Value = Vec<(OpCode, bool, usize)>> {
        let frame = prop_oneof![
            (Just(OpCode::Data(Data::Binary)), any::<bool>(), 0usize..300),
            (Just(OpCode::Data(Data::Continue)), any::<bool>(), 0usize..300),
            (Just(OpCode::Control(Control::Ping)), Just(true), 0usize..125),
            (Just(OpCode::Data(Data::Binary)), Just(true), 65_530usize..70_000),
        ];
        proptest::collection::vec(frame, 0..8)
    }

    proptest! {
        /// However the stream is cut into reads, the watch is at rest exactly after the request and after each
        /// frame that ends a message (or a control frame outside one), never inside a frame or a message.
        #[test]
        fn at_rest_exactly_at_message_boundaries(frames in frames(), cuts in proptest::collection::vec(1usize..600, 1..40)) {
            let (bytes, rest) = stream(&frames);
            let mut watch = FrameWatch::http();
            let mut at = 0;
            let mut cut = cuts.iter().cycle();
            while at < bytes.len() {
                let n = (*cut.next().unwrap()).min(bytes.len() - at);
                watch.see(&bytes[at..at + n]);
                at += n;
                prop_assert_eq!(watch.at_rest(), rest.contains(&at), "after {} of {} bytes", at, bytes.len());
            }
        }
    }

    #[test]
    fn a_request_end_split_over_reads_is_found_and_a_false_start_is_not() {
        let mut watch = FrameWatch::http();
        watch.see(b"GET / HTTP/1.1\r\nA: b\r\n\r");
        assert!(!watch.at_rest());
        watch.see(b"\r\n\r");
        assert!(!watch.at_rest(), "\\r\\r\\n\\r is no end");
        watch.see(b"\n");
        assert!(watch.at_rest());
    }

    #[test]
    fn a_header_tungstenite_refuses_is_never_at_rest() {
        let mut watch = FrameWatch::http();
        watch.see(REQUEST);
        // 64-bit length with its most significant bit set (RFC 6455 5.2).
        watch.see(&[0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]);
        assert!(!watch.at_rest());
        watch.see(&wire(OpCode::Data(Data::Binary), true, b"x"));
        assert!(!watch.at_rest());
    }

    #[tokio::test]
    async fn a_gate_hands_on_what_it_read_while_waiting_and_then_holds_nothing() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut gate = Gate::new(server);
        tokio::io::AsyncWriteExt::write_all(&mut client, REQUEST).await.unwrap();
        let n = std::future::poll_fn(|cx| gate.poll_wait(cx)).await.unwrap();
        assert_eq!(n, REQUEST.len());
        assert!(gate.pending.is_some());
        let mut out = vec![0u8; 10];
        tokio::io::AsyncReadExt::read_exact(&mut gate, &mut out).await.unwrap();
        assert_eq!(&out[..], &REQUEST[..10]);
        let mut rest = vec![0u8; REQUEST.len() - 10];
        tokio::io::AsyncReadExt::read_exact(&mut gate, &mut rest).await.unwrap();
        assert!(gate.pending.is_none(), "an emptied buffer is given back");
        assert!(gate.watch.at_rest());
    }
}
