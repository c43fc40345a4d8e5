//! The client's WebSocket upgrade: tungstenite writes the request and parses
//! the answer, this module judges it.
//!
//! Why not `tokio_tungstenite::client_async`: it fails every answer that
//! selects no subprotocol when one was offered. RFC 6455 §4.1 fails only an
//! answer that selects one the client did not offer, and SPEC TRN-4 makes
//! the selection a SHOULD, so a client that offers `bimip.v1` must still
//! accept a server that stays silent about it (TRN-17's spirit: clients
//! work with every server SPEC allows).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{ProtocolError, SubProtocolError};
use tokio_tungstenite::tungstenite::handshake::client::{Request, Response, generate_request};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::handshake::machine::TryParse;
use tokio_tungstenite::tungstenite::http::{StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, error::CapacityError};

/// Longest answer head read before giving up (tungstenite's own limit is similar).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Longest refusal body kept.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// Upgrades `stream` with `request`. `Err(WsError::Http)` carries a non-101
/// answer with its body (up to its Content-Length, or what had arrived).
pub(super) async fn upgrade<S>(
    mut stream: S,
    request: Request,
    config: WebSocketConfig,
) -> Result<(WebSocketStream<S>, Response), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let offered = offered_subprotocols(&request);
    let (bytes, key) = generate_request(request)?;
    stream.write_all(&bytes).await?;
    stream.flush().await?;
    let mut buffer = Vec::with_capacity(1024);
    let (head_len, response) = loop {
        if let Some(parsed) = Response::try_parse(&buffer)? {
            break parsed;
        }
        if buffer.len() > MAX_HEAD_BYTES {
            return Err(WsError::Capacity(CapacityError::TooManyHeaders));
        }
        if stream.read_buf(&mut buffer).await? == 0 {
            return Err(WsError::Protocol(ProtocolError::HandshakeIncomplete));
        }
    };
    let tail = buffer.split_off(head_len);
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let body = refusal_body(&mut stream, &response, tail).await;
        let (parts, _) = response.into_parts();
        return Err(WsError::Http(Box::new(Response::from_parts(parts, Some(body)))));
    }
    check(&response, &derive_accept_key(key.as_bytes()), &offered)?;
    let ws = WebSocketStream::from_partially_read(stream, tail, Role::Client, Some(config)).await;
    Ok((ws, response))
}

fn offered_subprotocols(request: &Request) -> Vec<String> {
    crate::net::ws_subprotocols(request.headers())
        .map(str::to_string)
        .collect()
}

/// RFC 6455 §4.1, points 2 to 6 of the client's checks of a 101 answer.
fn check(response: &Response, accept_key: &str, offered: &[String]) -> Result<(), WsError> {
    let headers = response.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.trim().eq_ignore_ascii_case(token))
    };
    if !has_token(header::UPGRADE, "websocket") {
        return Err(WsError::Protocol(ProtocolError::MissingUpgradeWebSocketHeader));
    }
    if !has_token(header::CONNECTION, "upgrade") {
        return Err(WsError::Protocol(ProtocolError::MissingConnectionUpgradeHeader));
    }
    if headers
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .is_none_or(|v| v != accept_key)
    {
        return Err(WsError::Protocol(ProtocolError::SecWebSocketAcceptKeyMismatch));
    }
    if let Some(selected) = headers.get(header::SEC_WEBSOCKET_PROTOCOL) {
        let error = if offered.is_empty() {
            SubProtocolError::ServerSentSubProtocolNoneRequested
        } else {
            SubProtocolError::InvalidSubProtocol
        };
        if !selected.to_str().is_ok_and(|s| offered.iter().any(|o| o == s.trim())) {
            return Err(WsError::Protocol(ProtocolError::SecWebSocketSubProtocolError(error)));
        }
    }
    Ok(())
}

/// The body of a refusal: its Content-Length, read within the caller's
/// timeout; without one, what arrived with the head.
async fn refusal_body<S: AsyncRead + Unpin>(stream: &mut S, response: &Response, mut body: Vec<u8>) -> Vec<u8> {
    let length = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<usize>().ok())
        .map(|n| n.min(MAX_BODY_BYTES));
    if let Some(length) = length {
        while body.len() < length {
            match stream.read_buf(&mut body).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        body.truncate(length);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    /// Serves one canned answer to whatever request arrives, echoing the key's accept value.
    async fn answer_with(head: &'static str) -> Result<(WebSocketStream<tokio::io::DuplexStream>, Response), WsError> {
        let (client, mut server) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            let mut request = Vec::new();
            while !request.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                if server.read_exact(&mut byte).await.is_err() {
                    return;
                }
                request.push(byte[0]);
            }
            let text = String::from_utf8_lossy(&request).to_string();
            let key = text
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap_or_default()
                .to_string();
            let answer = head.replace("{accept}", &derive_accept_key(key.as_bytes()));
            let _ = server.write_all(answer.as_bytes()).await;
            let mut rest = Vec::new();
            let _ = server.read_to_end(&mut rest).await;
        });
        let mut request = "ws://example.test/bimip".into_client_request().unwrap();
        request
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, "bimip.v1".parse().unwrap());
        upgrade(client, request, WebSocketConfig::default()).await
    }

    const SWITCH: &str = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n";

    #[tokio::test]
    async fn an_answer_without_a_subprotocol_is_accepted() {
        let head: &'static str = format!("{SWITCH}\r\n").leak();
        let (_, response) = answer_with(head).await.expect("upgraded");
        assert!(response.headers().get(header::SEC_WEBSOCKET_PROTOCOL).is_none());
    }

    #[tokio::test]
    async fn the_offered_subprotocol_is_accepted_and_another_refused() {
        let good: &'static str = format!("{SWITCH}Sec-WebSocket-Protocol: bimip.v1\r\n\r\n").leak();
        assert!(answer_with(good).await.is_ok());
        let bad: &'static str = format!("{SWITCH}Sec-WebSocket-Protocol: mqtt\r\n\r\n").leak();
        let error = answer_with(bad).await.map(|_| ()).expect_err("refused");
        assert!(matches!(
            error,
            WsError::Protocol(ProtocolError::SecWebSocketSubProtocolError(
                SubProtocolError::InvalidSubProtocol
            ))
        ));
    }

    #[tokio::test]
    async fn a_wrong_accept_key_fails() {
        let head = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: nope\r\n\r\n";
        let error = answer_with(head).await.map(|_| ()).expect_err("refused");
        assert!(matches!(
            error,
            WsError::Protocol(ProtocolError::SecWebSocketAcceptKeyMismatch)
        ));
    }

    #[tokio::test]
    async fn a_refusal_keeps_its_whole_body() {
        let head = "HTTP/1.1 401 Unauthorized\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\ntoken_expired";
        let Err(WsError::Http(response)) = answer_with(head).await else {
            panic!("expected an HTTP refusal");
        };
        assert_eq!(response.status(), 401);
        assert_eq!(response.body().as_deref(), Some(&b"token_expired"[..]));
    }
}
