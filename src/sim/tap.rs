//! A tap under a device's client, on the native TCP byte stream (4-byte
//! length-prefixed frames): it checks that each stanza's bytes as the server
//! sent them are the canonical encoding of what they decode to (ENV-12),
//! which the client's decoded events cannot show, and writes any that are
//! not into the history. It never changes a byte.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::history::{Log, What};
use crate::codec;

/// At most this many bytes of a bad stanza go into the history.
const SHOWN: usize = 64;

pub struct Tap<S> {
    inner: S,
    buffer: Vec<u8>,
    log: Log,
    who: String,
}

impl<S> Tap<S> {
    pub fn new(inner: S, log: Log, who: &str) -> Tap<S> {
        Tap {
            inner,
            buffer: Vec::new(),
            log,
            who: who.to_string(),
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
        loop {
            let Some(header) = self.buffer.get(..4) else { return };
            let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
            let Some(end) = usize::try_from(len).ok().and_then(|l| l.checked_add(4)) else {
                return;
            };
            let Some(frame) = self.buffer.get(4..end) else { return };
            let canonical = codec::decode(frame, usize::MAX).is_ok_and(|p| codec::encode(&p) == frame);
            if !canonical {
                let shown = hex::encode(&frame[..frame.len().min(SHOWN)]);
                self.log.push(&self.who, What::NotCanonical(shown));
            }
            self.buffer.drain(..end);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tap<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &poll {
            let fresh = buf.filled()[before..].to_vec();
            self.feed(&fresh);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tap<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
