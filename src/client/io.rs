//! The client's I/O task: it owns the connection, turns what arrives into
//! [`Event`]s, answers server pings on its own (so a test that is busy
//! elsewhere still looks alive, SPEC PING-3) and writes what the [`Client`]
//! asks, in order, acknowledging each write.
//!
//! [`Client`]: super::Client

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::codec::{Decoder, Encoder, Framed, LengthDelimitedCodec};

use super::{ClientError, Event};
use crate::codec::{self, FrameError, TcpFrameCodec};
use crate::net::Clock;
use crate::proto::PingPong;
use crate::proto::message_scheme::Payload;

pub(super) type Ack = oneshot::Sender<Result<(), ClientError>>;

pub(super) enum Command {
    /// One WebSocket binary message, or one TCP frame, holding these bytes.
    Stanza(Bytes, Ack),
    /// One WebSocket text message.
    Text(String, Ack),
    /// Bytes written to the TCP stream as they are, without a length prefix.
    Wire(Bytes, Ack),
    /// WebSocket Close with this code; on TCP a FIN.
    Close(u16, Ack),
}

pub(super) struct Settings {
    pub auto_pong: bool,
    pub surface_pings: bool,
    pub clock: Arc<dyn Clock>,
    pub max_stanza_bytes: usize,
    pub close_timeout: Duration,
}

type Events = mpsc::UnboundedSender<Event>;

/// Whether the task should keep going after handling one input.
enum Step {
    Continue,
    /// The close handshake has started: give it `close_timeout` to finish.
    Closing,
    End(String),
}

pub(super) async fn run_ws<S>(
    mut ws: WebSocketStream<S>,
    mut commands: mpsc::Receiver<Command>,
    events: Events,
    settings: Settings,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut close: Option<(u16, String)> = None;
    let mut closing_by: Option<Instant> = None;
    let ended = loop {
        let step = tokio::select! {
            biased;
            command = commands.recv() => match command {
                // The Client is gone: nobody will read events any more.
                None => Step::End("client dropped".into()),
                Some(command) => ws_command(&mut ws, command).await,
            },
            () = deadline(closing_by) => Step::End("close handshake timed out".into()),
            message = ws.next() => match message {
                Some(Ok(Message::Binary(bytes))) => match on_stanza(bytes, &settings, &events) {
                    Some(pong) => match ws.send(Message::Binary(pong)).await {
                        Ok(()) => Step::Continue,
                        Err(error) => Step::End(error.to_string()),
                    },
                    None => Step::Continue,
                },
                Some(Ok(Message::Text(text))) => {
                    let _ = events.send(Event::Text(text.to_string()));
                    Step::Continue
                }
                Some(Ok(Message::Close(frame))) => {
                    close = Some(frame.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string())));
                    Step::Closing
                }
                Some(Ok(_)) => Step::Continue,
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) | None => {
                    Step::End("connection closed".into())
                }
                Some(Err(error)) => Step::End(error.to_string()),
            },
        };
        match step {
            Step::Continue => {}
            Step::Closing => {
                closing_by.get_or_insert(Instant::now() + settings.close_timeout);
            }
            Step::End(reason) => break reason,
        }
    };
    let event = match close {
        Some((code, reason)) => Event::Closed {
            code: Some(code),
            reason,
        },
        None => Event::Closed {
            code: None,
            reason: ended,
        },
    };
    let _ = events.send(event);
}

async fn ws_command<S>(ws: &mut WebSocketStream<S>, command: Command) -> Step
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (result, ack, step) = match command {
        Command::Stanza(bytes, ack) => (ws.send(Message::Binary(bytes)).await, ack, Step::Continue),
        Command::Text(text, ack) => (ws.send(Message::text(text)).await, ack, Step::Continue),
        Command::Wire(_, ack) => {
            let _ = ack.send(Err(ClientError::Unsupported("raw wire bytes on WebSocket")));
            return Step::Continue;
        }
        Command::Close(code, ack) => {
            let frame = CloseFrame {
                code: CloseCode::from(code),
                reason: "".into(),
            };
            (ws.close(Some(frame)).await, ack, Step::Closing)
        }
    };
    let failed = result.as_ref().err().map(ToString::to_string);
    let _ = ack.send(result.map_err(|e| ClientError::WebSocket(Box::new(e))));
    match failed {
        Some(reason) => Step::End(reason),
        None => step,
    }
}

pub(super) async fn run_tcp<S>(io: S, mut commands: mpsc::Receiver<Command>, events: Events, settings: Settings)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut framed = Framed::new(io, ClientCodec::new(settings.max_stanza_bytes));
    let mut closing_by: Option<Instant> = None;
    let ended = loop {
        let step = tokio::select! {
            biased;
            command = commands.recv() => match command {
                None => Step::End("client dropped".into()),
                Some(command) => tcp_command(&mut framed, command).await,
            },
            () = deadline(closing_by) => Step::End("close timed out".into()),
            frame = framed.next() => match frame {
                Some(Ok(bytes)) => match on_stanza(bytes, &settings, &events) {
                    Some(pong) => match framed.send(pong).await {
                        Ok(()) => Step::Continue,
                        Err(error) => Step::End(error.to_string()),
                    },
                    None => Step::Continue,
                },
                Some(Err(error)) => Step::End(error.to_string()),
                None => Step::End("eof".into()),
            },
        };
        match step {
            Step::Continue => {}
            Step::Closing => {
                closing_by.get_or_insert(Instant::now() + settings.close_timeout);
            }
            Step::End(reason) => break reason,
        }
    };
    let _ = events.send(Event::Closed {
        code: None,
        reason: ended,
    });
}

async fn tcp_command<S>(framed: &mut Framed<S, ClientCodec>, command: Command) -> Step
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (result, ack, step) = match command {
        Command::Stanza(bytes, ack) => (framed.send(bytes).await, ack, Step::Continue),
        Command::Wire(bytes, ack) => {
            framed.write_buffer_mut().extend_from_slice(&bytes);
            (framed.flush().await, ack, Step::Continue)
        }
        Command::Text(_, ack) => {
            let _ = ack.send(Err(ClientError::Unsupported("text frames on native TCP")));
            return Step::Continue;
        }
        Command::Close(_, ack) => {
            let result = match framed.flush().await {
                Ok(()) => framed.get_mut().shutdown().await.map_err(FrameError::from),
                Err(error) => Err(error),
            };
            (result, ack, Step::Closing)
        }
    };
    let failed = result.as_ref().err().map(ToString::to_string);
    let _ = ack.send(result.map_err(|e| ClientError::Io(std::io::Error::other(e.to_string()))));
    match failed {
        Some(reason) => Step::End(reason),
        None => step,
    }
}

async fn deadline(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Surfaces one stanza from the server; returns the pong to send when it is
/// a ping the client answers itself (SPEC PING-3: echo `id` and `request_time`).
fn on_stanza(bytes: Bytes, settings: &Settings, events: &Events) -> Option<Bytes> {
    // The transport already enforced the size limit; decode everything it let through.
    let payload = match codec::decode(&bytes, usize::MAX) {
        Ok(payload) => payload,
        Err(_) => {
            let _ = events.send(Event::Undecodable(bytes.to_vec()));
            return None;
        }
    };
    let pong = match &payload {
        Payload::PingpongMessage(ping) if ping.r#type == 1 && settings.auto_pong => {
            let now = settings.clock.now_ms();
            let pong = PingPong {
                to: None,
                r#type: 2,
                status: 2,
                request_time: ping.request_time,
                response_time: now,
                rtt: now.saturating_sub(ping.request_time),
                id: ping.id.clone(),
            };
            Some(Bytes::from(codec::encode(&Payload::PingpongMessage(pong))))
        }
        _ => None,
    };
    if pong.is_none() || settings.surface_pings {
        let _ = events.send(Event::Stanza(payload));
    }
    pong
}

/// Reads frames with the server's limit; writes any length, so that negative
/// tests can send frames over the limit (SPEC TRN-10).
struct ClientCodec {
    decode: TcpFrameCodec,
    encode: LengthDelimitedCodec,
}

impl ClientCodec {
    fn new(max_stanza_bytes: usize) -> Self {
        ClientCodec {
            decode: TcpFrameCodec::new(max_stanza_bytes),
            encode: LengthDelimitedCodec::builder()
                .length_field_length(4)
                .big_endian()
                .max_frame_length(u32::MAX as usize)
                .new_codec(),
        }
    }
}

impl Decoder for ClientCodec {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        self.decode.decode(src)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        self.decode.decode_eof(src)
    }
}

impl Encoder<Bytes> for ClientCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        Ok(self.encode.encode(frame, dst)?)
    }
}
