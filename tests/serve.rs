//! `bimip serve` as a newcomer meets it (issue 3's done-when): start the
//! server from settings, mint a development token, connect, ping, log out;
//! the admin endpoint reports health and the session in its metrics.

use std::time::Duration;

use bimip::client::{Client, ClientOptions};
use bimip::core::auth::Claims;
use bimip::server::Settings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}

async fn http_post(addr: std::net::SocketAddr, path: &str, body: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.0\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

#[tokio::test]
async fn start_mint_connect_ping_logout() {
    let dir = tempfile::tempdir().unwrap();
    let loopback = Some("127.0.0.1:0".parse().unwrap());
    let settings = Settings {
        ws: loopback,
        tcp: loopback,
        admin: loopback,
        grpc: None,
        data_dir: dir.path().to_path_buf(),
        ..Settings::default()
    };
    let running = tokio::time::timeout(Duration::from_secs(10), settings.start())
        .await
        .unwrap()
        .unwrap();
    assert!(
        dir.path().join(bimip::keys::DEV_PRIVATE_KEY).exists(),
        "a development key on first run"
    );

    let signer = settings.keys().unwrap().1.expect("the development key signs");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mint = |jti: &str| {
        let claims = Claims {
            eid: "alice@example.com".into(),
            device_id: "phone".into(),
            jti: jti.into(),
            iat: now,
            exp: now + 600,
            ..Claims::default()
        };
        signer.mint(&claims).unwrap()
    };
    let urls = [
        format!("ws://{}/ws", running.net.ws_addr().unwrap()),
        format!("tcp://{}", running.net.tcp_addr().unwrap()),
    ];
    for (i, url) in urls.iter().enumerate() {
        let token = mint(&format!("jti-{i}"));
        let session = async {
            let mut client = Client::connect(url, &token, ClientOptions::default()).await.unwrap();
            assert_eq!(
                client.session().map(|s| s.eid.as_str()),
                Some("alice@example.com"),
                "{url}"
            );
            let pong = client.ping("hello").await.unwrap();
            assert_eq!((pong.r#type, pong.id.as_str()), (2, "hello"));
            let (logout, _) = client.logout().await.unwrap();
            assert_eq!(logout.status, 3);
        };
        tokio::time::timeout(Duration::from_secs(10), session)
            .await
            .expect("the session flow finishes");
    }

    let admin = running.admin.unwrap();
    assert!(http_get(admin, "/healthz").await.ends_with("ok\n"));
    let metrics = http_get(admin, "/metrics").await;
    assert!(metrics.contains("bimip_sessions_started_total 2"), "{metrics}");
    assert!(
        metrics.contains(r#"bimip_stanzas_in_total{route="6",payload="PingPong"} 2"#),
        "{metrics}"
    );
    assert!(http_get(admin, "/nope").await.starts_with("HTTP/1.0 404"));

    // PUSH-2 through the operator endpoint: one online device receives it.
    let url = &urls[0];
    let mut client = Client::connect(url, &mint("jti-push"), ClientOptions::default())
        .await
        .unwrap();
    let answer = http_post(
        admin,
        "/push",
        r#"{"eid": "alice@example.com", "type": "system", "data": {"k": "v"}}"#,
    )
    .await;
    assert!(answer.contains(r#"{"devices":1}"#), "{answer}");
    let push = client
        .expect(
            |p| matches!(p, bimip::proto::message_scheme::Payload::PushNotification(_)),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let bimip::proto::message_scheme::Payload::PushNotification(push) = push else {
        unreachable!()
    };
    assert_eq!(
        (push.r#type.as_str(), push.data.get("k").map(String::as_str)),
        ("system", Some("v"))
    );
    let refused = http_post(admin, "/push", r#"{"eid": "alice@example.com", "type": ""}"#).await;
    assert!(
        refused.starts_with("HTTP/1.0 400") || refused.starts_with("HTTP/1.1 400"),
        "{refused}"
    );
    running.shutdown().await;
}
