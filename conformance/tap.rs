//! A tap on a plaintext connection's byte stream, below the reference
//! client: it keeps the raw bytes of every stanza the server sent (ENV-12:
//! canonical encoding, which the client's decoded events cannot show) and
//! every WebSocket Pong control frame, and it can slip a WebSocket Ping
//! control frame onto the wire (TRN-7: the client has no API for one).
//!
//! It parses what it reads (the HTTP upgrade answer, then RFC 6455 frames;
//! or native TCP's 4-byte length-prefixed frames) and changes nothing, with
//! one exception, a network fault (issue 18): armed with
//! [`TapHandle::cut_in_next`], it lets the next stanza of a route reach the
//! client all but its last byte, then fails the connection (a reset in the
//! middle of a stanza: the server sent it, the client never got it). Told
//! to with [`TapHandle::split_writes`], it passes the client's writes on a
//! few bytes at a time, so the server reads each stanza in many pieces. A
//! TLS connection is tapped below TLS, where nothing is readable: the tap
//! then records nothing and says so ([`TapLog::plaintext`]); its writes
//! are split all the same.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How the tapped bytes are framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    WebSocket,
    Tcp,
    /// TLS: opaque bytes.
    Opaque,
}

/// What the tap saw.
#[derive(Clone, Debug, Default)]
pub struct TapLog {
    pub plaintext: bool,
    /// Binary messages (WebSocket) or frames (TCP) from the server, as sent.
    pub stanzas: Vec<Vec<u8>>,
    /// Application data of each WebSocket Pong control frame received.
    pub pongs: Vec<Vec<u8>>,
    /// The stream could not be parsed from this point on: why.
    pub broken: Option<String>,
}

#[derive(Default)]
struct State {
    framing: Option<Framing>,
    upgraded: bool,
    buffer: Vec<u8>,
    /// A fragmented WebSocket message being put together.
    partial: Option<Vec<u8>>,
    log: TapLog,
    /// Bytes to write before anything else (an injected control frame).
    inject: Vec<u8>,
    reader: Option<Waker>,
    /// Bytes fed so far, and bytes parsed off the buffer so far (absolute stream offsets).
    fed: u64,
    parsed: u64,
    /// The fault: cut the connection inside the next stanza of this route.
    cut_route: Option<crate::codec::Route>,
    /// Where that stanza ends in the stream, once seen; then the connection has failed.
    cut_at: Option<u64>,
    /// The most bytes one write of the client passes on.
    split: Option<usize>,
    /// The client stopped reading: the tap reads nothing from the network, so the socket's buffers fill up and
    /// the server's writes back up (TRN-19).
    stalled: bool,
    /// How late the client's writes reach the network (a slow link).
    delay: Option<std::time::Duration>,
    /// Writes waiting for their time, in order: when each may go, and its bytes.
    delayed: std::collections::VecDeque<(tokio::time::Instant, Vec<u8>)>,
}

/// Shared between the driver (reads the log, injects) and the [`Tap`].
#[derive(Clone, Default)]
pub struct TapHandle(Arc<Mutex<State>>);

impl std::fmt::Debug for TapHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TapHandle")
    }
}

impl TapHandle {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// A copy of what the tap saw so far.
    pub fn log(&self) -> TapLog {
        self.with(|s| s.log.clone())
    }

    /// Queues a masked WebSocket Ping control frame carrying `data` (at most
    /// 125 bytes, RFC 6455 5.5) and wakes the connection to write it.
    pub fn inject_ws_ping(&self, data: &[u8]) -> Result<(), String> {
        if data.len() > 125 {
            return Err("a control frame carries at most 125 bytes".into());
        }
        self.with(|s| {
            if s.framing != Some(Framing::WebSocket) || !s.upgraded {
                return Err("not a plaintext WebSocket connection".to_string());
            }
            let mask = [0x5a, 0x3c, 0x96, 0x0f];
            s.inject.push(0x89);
            s.inject.push(0x80 | u8::try_from(data.len()).unwrap_or(125));
            s.inject.extend_from_slice(&mask);
            s.inject.extend(data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
            if let Some(waker) = s.reader.take() {
                waker.wake();
            }
            Ok(())
        })
    }

    /// Arms the fault: the next stanza on `route` the server sends reaches the client all but its last byte, and
    /// the connection then fails (reads and writes return `ConnectionReset`). `Err` on an unreadable (TLS) stream.
    pub fn cut_in_next(&self, route: crate::codec::Route) -> Result<(), String> {
        self.with(|s| {
            if s.framing == Some(Framing::Opaque) {
                return Err("the tap cannot read a TLS stream, so it cannot find the stanza to cut".to_string());
            }
            s.cut_route = Some(route);
            Ok(())
        })
    }

    /// From now on, each of the client's writes reaches the network `bytes` at a time (at least 1).
    pub fn split_writes(&self, bytes: usize) {
        self.with(|s| s.split = Some(bytes.max(1)));
    }

    /// The client stops reading (`true`) or reads again (`false`): while stopped, nothing is read from the
    /// network, so the receive buffer fills, the peer's window closes and the server's writes wait.
    pub fn stall(&self, stalled: bool) {
        self.with(|s| {
            s.stalled = stalled;
            if !stalled && let Some(waker) = s.reader.take() {
                waker.wake();
            }
        });
    }

    /// From now on, each of the client's writes reaches the network `delay` after the client made it (a slow
    /// link, in order); the client's writes themselves return at once.
    pub fn delay_writes(&self, delay: std::time::Duration) {
        self.with(|s| s.delay = Some(delay));
    }

    /// Wraps `stream`; the tap parses by `framing`.
    pub fn wrap<S>(&self, stream: S, framing: Framing) -> Tap<S> {
        self.with(|s| {
            s.framing = Some(framing);
            s.upgraded = framing == Framing::Tcp;
            s.log.plaintext = framing != Framing::Opaque;
        });
        Tap {
            inner: stream,
            handle: self.clone(),
            sleep: None,
        }
    }
}

impl State {
    /// Parses fresh bytes; returns how many of them may reach the client (all, unless the cut falls in them).
    fn feed(&mut self, bytes: &[u8]) -> usize {
        let start = self.fed;
        self.fed += bytes.len() as u64;
        if self.cut_at.is_some() {
            return 0;
        }
        if self.log.broken.is_some() || self.framing == Some(Framing::Opaque) {
            return bytes.len();
        }
        self.buffer.extend_from_slice(bytes);
        if let Err(why) = self.parse() {
            self.log.broken = Some(why);
            self.buffer.clear();
        }
        match self.cut_at {
            // The stanza's last byte is held back, and everything after it.
            Some(end) => usize::try_from(end.saturating_sub(1).saturating_sub(start)).unwrap_or(0),
            None => bytes.len(),
        }
    }

    /// A whole stanza from the server, ending `end` bytes into the buffer: logged, and cut if the fault wants it.
    fn stanza(&mut self, bytes: Vec<u8>, end: usize) {
        if let Some(route) = self.cut_route
            && crate::codec::decode(&bytes, usize::MAX).is_ok_and(|p| crate::codec::Route::of(&p) == route)
        {
            self.cut_route = None;
            self.cut_at = Some(self.parsed + end as u64);
        }
        self.log.stanzas.push(bytes);
    }

    fn parse(&mut self) -> Result<(), String> {
        if !self.upgraded {
            let Some(end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
                return Ok(());
            };
            let head = String::from_utf8_lossy(&self.buffer[..end]).into_owned();
            if !head.starts_with("HTTP/1.1 101") {
                return Err(format!("no upgrade: {}", head.lines().next().unwrap_or_default()));
            }
            self.buffer.drain(..end + 4);
            self.upgraded = true;
        }
        loop {
            let consumed = match self.framing {
                Some(Framing::Tcp) => self.tcp_frame(),
                Some(Framing::WebSocket) => self.ws_frame()?,
                _ => None,
            };
            match consumed {
                Some(n) => {
                    self.buffer.drain(..n);
                    self.parsed += n as u64;
                    if self.cut_at.is_some() {
                        return Ok(());
                    }
                }
                None => return Ok(()),
            }
        }
    }

    fn tcp_frame(&mut self) -> Option<usize> {
        let header: [u8; 4] = self.buffer.get(..4)?.try_into().ok()?;
        let len = usize::try_from(u32::from_be_bytes(header)).ok()?;
        let frame = self.buffer.get(4..4 + len)?.to_vec();
        self.stanza(frame, 4 + len);
        Some(4 + len)
    }

    fn ws_frame(&mut self) -> Result<Option<usize>, String> {
        let b = &self.buffer;
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        let opcode = b[0] & 0x0f;
        let masked = b[1] & 0x80 != 0;
        let (len, mut at) = match b[1] & 0x7f {
            126 => match b.get(2..4) {
                Some(l) => (u64::from(u16::from_be_bytes([l[0], l[1]])), 4),
                None => return Ok(None),
            },
            127 => match b.get(2..10).and_then(|l| <[u8; 8]>::try_from(l).ok()) {
                Some(l) => (u64::from_be_bytes(l), 10),
                None => return Ok(None),
            },
            n => (u64::from(n), 2),
        };
        let len = usize::try_from(len).map_err(|_| "a frame too long for this machine".to_string())?;
        let mask = if masked {
            let Some(m) = b.get(at..at + 4) else { return Ok(None) };
            at += 4;
            Some([m[0], m[1], m[2], m[3]])
        } else {
            None
        };
        let Some(payload) = b.get(at..at + len) else {
            return Ok(None);
        };
        let mut payload = payload.to_vec();
        if let Some(mask) = mask {
            payload.iter_mut().enumerate().for_each(|(i, x)| *x ^= mask[i % 4]);
        }
        match opcode {
            0x2 if fin => self.stanza(payload, at + len),
            0x1 | 0x2 => self.partial = Some(payload),
            0x0 => {
                let whole = self.partial.get_or_insert_with(Vec::new);
                whole.extend_from_slice(&payload);
                if fin {
                    let message = self.partial.take().unwrap_or_default();
                    self.stanza(message, at + len);
                }
            }
            0xA => self.log.pongs.push(payload),
            _ => {}
        }
        Ok(Some(at + len))
    }
}

/// The tapped stream.
pub struct Tap<S> {
    inner: S,
    handle: TapHandle,
    /// Wakes the connection when the next delayed write is due.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S: AsyncWrite + Unpin> Tap<S> {
    /// Writes queued injected bytes first; Ready once none are left.
    /// Writes the delayed writes that are due; arms the timer for the next. Ready once none is due.
    fn poll_delayed(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let next = self.handle.with(|s| s.delayed.front().map(|(at, _)| *at));
            let Some(at) = next else { return Poll::Ready(Ok(())) };
            if at > tokio::time::Instant::now() {
                let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                sleep.as_mut().reset(at);
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let bytes = self
                .handle
                .with(|s| s.delayed.front().map(|(_, b)| b.clone()))
                .unwrap_or_default();
            match Pin::new(&mut self.inner).poll_write(cx, &bytes) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.handle.with(|s| {
                    if let Some((_, front)) = s.delayed.front_mut() {
                        front.drain(..n.min(front.len()));
                        if front.is_empty() {
                            s.delayed.pop_front();
                        }
                    }
                }),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn poll_inject(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let pending = self.handle.with(|s| s.inject.clone());
            if pending.is_empty() {
                return Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.inner).poll_write(cx, &pending) {
                Poll::Ready(Ok(n)) => {
                    self.handle.with(|s| {
                        s.inject.drain(..n.min(s.inject.len()));
                    });
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Tap<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.handle.with(|s| s.cut_at.is_some()) {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        let stalled = this.handle.with(|s| {
            if s.stalled {
                s.reader = Some(cx.waker().clone());
            }
            s.stalled
        });
        if stalled {
            return Poll::Pending;
        }
        // Delayed writes go out when due: the read side is always polled, so its waker carries them.
        if let Poll::Ready(Err(e)) = this.poll_delayed(cx) {
            return Poll::Ready(Err(e));
        }
        // An injected frame goes out when the connection is next polled.
        if let Poll::Ready(Ok(())) = this.poll_inject(cx) {
            let _ = Pin::new(&mut this.inner).poll_flush(cx);
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        let fresh = buf.filled()[before..].to_vec();
        let passed = this.handle.with(|s| {
            if result.is_pending() {
                s.reader = Some(cx.waker().clone());
            }
            s.feed(&fresh)
        });
        if passed < fresh.len() {
            buf.set_filled(before + passed);
            if passed == 0 {
                return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
            }
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tap<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.handle.with(|s| s.cut_at.is_some()) {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        let split = this.handle.with(|s| s.split);
        let buf = split.map_or(buf, |n| &buf[..buf.len().min(n)]);
        if let Some(delay) = this.handle.with(|s| s.delay) {
            let at = tokio::time::Instant::now() + delay;
            this.handle.with(|s| s.delayed.push_back((at, buf.to_vec())));
            return match this.poll_delayed(cx) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                _ => Poll::Ready(Ok(buf.len())),
            };
        }
        match this.poll_inject(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_write(cx, buf),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Delayed bytes are on the slow link, not in the client: a flush does not wait for them.
        if let Poll::Ready(Err(e)) = this.poll_delayed(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn delayed_writes_reach_the_network_late_and_in_order() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (near, mut far) = tokio::io::duplex(64);
        let handle = TapHandle::default();
        let mut tap = handle.wrap(near, Framing::Tcp);
        handle.delay_writes(std::time::Duration::from_millis(300));
        let start = tokio::time::Instant::now();
        tap.write_all(b"ab").await.unwrap();
        tap.write_all(b"cd").await.unwrap();
        // The write side alone does not wait; a reader polls the tap, as a client's connection task does.
        let reader = tokio::spawn(async move {
            let mut sink = [0u8; 1];
            let _ = tap.read(&mut sink).await;
        });
        let mut got = [0u8; 4];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"abcd");
        assert!(
            start.elapsed() >= std::time::Duration::from_millis(300),
            "{:?}",
            start.elapsed()
        );
        reader.abort();
    }

    #[tokio::test]
    async fn a_stalled_tap_reads_nothing_until_it_reads_again() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (near, mut far) = tokio::io::duplex(64);
        let handle = TapHandle::default();
        let mut tap = handle.wrap(near, Framing::Tcp);
        handle.stall(true);
        far.write_all(&[0, 0, 0, 1, 7]).await.unwrap();
        let mut buf = [0u8; 5];
        let early = tokio::time::timeout(std::time::Duration::from_millis(50), tap.read(&mut buf)).await;
        assert!(early.is_err(), "a stalled tap read {early:?}");
        handle.stall(false);
        tap.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, [0, 0, 0, 1, 7]);
    }

    fn state(framing: Framing) -> State {
        State {
            framing: Some(framing),
            upgraded: framing == Framing::Tcp,
            ..State::default()
        }
    }

    #[test]
    fn websocket_frames_after_the_upgrade_in_pieces() {
        let mut s = state(Framing::WebSocket);
        let mut bytes = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n".to_vec();
        bytes.extend([0x82, 0x02, 0x08, 0x06]); // binary "0806"
        bytes.extend([0x8a, 0x02, b'h', b'i']); // pong "hi"
        bytes.extend([0x02, 0x01, 0x0a, 0x80, 0x01, 0x0b]); // fragmented binary
        for chunk in bytes.chunks(3) {
            s.feed(chunk);
        }
        assert_eq!(s.log.broken, None);
        assert_eq!(s.log.stanzas, vec![vec![0x08, 0x06], vec![0x0a, 0x0b]]);
        assert_eq!(s.log.pongs, vec![b"hi".to_vec()]);
    }

    #[test]
    fn a_cut_holds_back_the_stanzas_last_byte_and_everything_after() {
        use crate::codec::{Route, encode};
        use crate::proto::message_scheme::Payload;
        use crate::proto::{PingPong, VersionUpdate};
        let frame = |p: &Payload| {
            let bytes = encode(p);
            let mut out = u32::try_from(bytes.len()).unwrap().to_be_bytes().to_vec();
            out.extend(bytes);
            out
        };
        let ping = frame(&Payload::PingpongMessage(PingPong {
            id: "p".into(),
            ..PingPong::default()
        }));
        let update = frame(&Payload::VersionUpdate(VersionUpdate {
            message_id: "m".into(),
            ..VersionUpdate::default()
        }));
        let mut s = state(Framing::Tcp);
        s.cut_route = Some(Route::VersionUpdate);
        assert_eq!(s.feed(&ping), ping.len());
        let mut rest = update.clone();
        rest.extend(&ping);
        // The update's last byte and the ping after it never reach the client.
        assert_eq!(s.feed(&rest), update.len() - 1);
        assert_eq!(s.feed(&ping), 0);
        assert_eq!(s.log.stanzas.len(), 2);
    }

    #[test]
    fn a_refused_upgrade_breaks_the_tap_and_tcp_frames_parse() {
        let mut s = state(Framing::WebSocket);
        s.feed(b"HTTP/1.1 401 Unauthorized\r\n\r\ntoken_expired");
        assert!(s.log.broken.as_deref().unwrap_or_default().contains("401"));
        let mut s = state(Framing::Tcp);
        s.feed(&[0, 0, 0, 2, 0x08, 0x06, 0, 0, 0]);
        s.feed(&[1, 0x0a]);
        assert_eq!(s.log.stanzas, vec![vec![0x08, 0x06], vec![0x0a]]);
    }
}
