//! Client duties that the reference server cannot provoke, checked against a
//! scripted WebSocket peer: a server that sends no Authenticate RESPONSE
//! (TRN-17) and codes or kinds the client does not know (ERR-7).

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::{Client, ClientOptions, Event};
use crate::codec::{self, Blame};
use crate::net::SUBPROTOCOL;
use crate::proto::message_scheme::Payload;
use crate::proto::{Authenticate, ErrorMessage, Identity};

/// A WebSocket server for one connection: it selects the subprotocol, sends
/// `script`, then returns every binary message it receives until the peer
/// closes.
// tungstenite's handshake callback returns its large error type by value.
#[allow(clippy::result_large_err)]
async fn scripted_server(script: Vec<Payload>) -> (String, JoinHandle<Vec<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/ws", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let select = |_: &Request, mut response: Response| {
            response
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(SUBPROTOCOL));
            Ok(response)
        };
        let mut ws = tokio_tungstenite::accept_hdr_async(stream, select)
            .await
            .expect("upgrade");
        for payload in script {
            ws.send(Message::Binary(codec::encode(&payload).into()))
                .await
                .expect("send");
        }
        let mut received = Vec::new();
        while let Some(Ok(message)) = ws.next().await {
            match message {
                Message::Binary(bytes) => received.push(bytes.to_vec()),
                Message::Close(_) => break,
                _ => {}
            }
        }
        received
    });
    (url, task)
}

fn options() -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_millis(300),
        close_timeout: Duration::from_millis(300),
        ..ClientOptions::default()
    }
}

fn response() -> Payload {
    Payload::Authenticate(Authenticate {
        r#type: 2,
        identity: Some(Identity {
            eid: "alice@example.com".into(),
            connection_resource_id: "phone".into(),
        }),
        ping_interval_ms: 30_000,
        max_stanza_bytes: 65_536,
        ..Authenticate::default()
    })
}

fn error(code: i32, kind: &str) -> Payload {
    Payload::ErrorMessage(ErrorMessage {
        code,
        message: kind.into(),
        details: "scripted".into(),
        ..ErrorMessage::default()
    })
}

async fn next_stanza(client: &mut Client) -> Payload {
    match tokio::time::timeout(Duration::from_secs(2), client.next_event()).await {
        Ok(Some(Event::Stanza(payload))) => payload,
        other => panic!("expected a stanza, got {other:?}"),
    }
}

// SPEC: TRN-17 (a WebSocket server may send no Authenticate RESPONSE)
#[tokio::test]
async fn ws_session_without_an_authenticate_response() {
    let (url, server) = scripted_server(vec![]).await;
    let client = Client::connect(&url, "any-token", options())
        .await
        .expect("connects without a RESPONSE");
    assert_eq!(client.session(), None);
    client
        .send(Payload::PingpongMessage(Default::default()))
        .await
        .expect("send");
    drop(client);
    assert_eq!(
        server.await.expect("server").len(),
        1,
        "the stanza sent after connecting arrived"
    );
}

// SPEC: TRN-17 (the RESPONSE is accepted on WebSocket and becomes the session)
#[tokio::test]
async fn ws_session_with_an_authenticate_response() {
    let (url, _server) = scripted_server(vec![response()]).await;
    let client = Client::connect(&url, "any-token", options()).await.expect("connects");
    let session = client.session().expect("the RESPONSE became the session");
    assert_eq!(
        (session.eid.as_str(), session.device.as_str()),
        ("alice@example.com", "phone")
    );
}

// SPEC: TRN-17 (a first stanza other than the RESPONSE is kept for the caller)
#[tokio::test]
async fn ws_first_stanza_other_than_the_response_is_kept() {
    let (url, _server) = scripted_server(vec![error(404, "not_found")]).await;
    let mut client = Client::connect(&url, "any-token", options()).await.expect("connects");
    assert_eq!(client.session(), None);
    assert!(matches!(next_stanza(&mut client).await, Payload::ErrorMessage(e) if e.code == 404));
}

// SPEC: ERR-7 (an unknown 4xx kind neither refuses the session nor ends it)
#[tokio::test]
async fn unknown_error_kinds_are_judged_by_their_code() {
    let (url, _server) = scripted_server(vec![response(), error(418, "brand_new_kind"), error(599, "other")]).await;
    let mut client = Client::connect(&url, "any-token", options()).await.expect("connects");
    for expected in [Blame::Sender, Blame::Server] {
        let Payload::ErrorMessage(error) = next_stanza(&mut client).await else {
            panic!("expected an ErrorMessage")
        };
        assert_eq!(Blame::of_code(error.code), Some(expected), "{error:?}");
    }
    client
        .send(Payload::PingpongMessage(Default::default()))
        .await
        .expect("the connection is still open");
}

// SPEC: ERR-7 (an unknown kind with code 401 refuses the session like every 401)
#[tokio::test]
async fn unknown_401_kind_refuses_the_session() {
    let (url, _server) = scripted_server(vec![error(401, "token_from_the_future")]).await;
    let Err(refusal) = Client::connect(&url, "any-token", options()).await else {
        panic!("a 401 of an unknown kind must refuse the session")
    };
    assert_eq!(refusal.refused_kind(), Some("token_from_the_future"));
}
