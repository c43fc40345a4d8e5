//! The backend gRPC API (`proto/bimip_admin.proto`) against a running reference server, through tonic's client:
//! every call's effect as a connected device sees it, and every call's answer to bad input.

use std::time::Duration;

use bimip::admin::grpc::connect;
use bimip::admin::proto as pb;
use bimip::client::{Client, ClientOptions};
use bimip::proto::message_scheme::Payload;
use bimip::server::{Running, Settings};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(5);

type Admin = pb::admin_client::AdminClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, bimip::admin::grpc::BearerHeader>,
>;

struct Server {
    running: Running,
    settings: Settings,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let loopback = Some("127.0.0.1:0".parse().unwrap());
        let settings = Settings {
            ws: loopback,
            tcp: loopback,
            admin: None,
            grpc: loopback,
            node: "node-a".into(),
            data_dir: dir.path().to_path_buf(),
            ..Settings::default()
        };
        let running = tokio::time::timeout(Duration::from_secs(10), settings.start())
            .await
            .unwrap()
            .unwrap();
        Server {
            running,
            settings,
            _dir: dir,
        }
    }

    fn secret(&self) -> String {
        let path = self.settings.data_dir.join(bimip::keys::ADMIN_SECRET);
        std::fs::read_to_string(path).unwrap().trim().to_string()
    }

    async fn admin(&self, secret: &str) -> Admin {
        let url = format!("http://{}", self.running.grpc.unwrap());
        connect(&url, secret, None).await.unwrap()
    }

    fn ws(&self) -> String {
        format!("ws://{}/ws", self.running.net.ws_addr().unwrap())
    }

    fn tcp(&self) -> String {
        format!("tcp://{}", self.running.net.tcp_addr().unwrap())
    }
}

async fn mint(admin: &mut Admin, eid: &str, device: &str) -> pb::TokenReply {
    let request = pb::MintTokenRequest {
        eid: eid.into(),
        device_id: device.into(),
        lifetime_s: 600,
    };
    admin.mint_token(request).await.unwrap().into_inner()
}

fn device(eid: &str, device: &str) -> pb::Device {
    pb::Device {
        eid: eid.into(),
        device_id: device.into(),
    }
}

fn user(eid: &str) -> pb::User {
    pb::User { eid: eid.into() }
}

fn relation(owner: &str, other: &str) -> pb::Relation {
    pb::Relation {
        owner: owner.into(),
        other: other.into(),
        ..pb::Relation::default()
    }
}

/// The status code of a call that must fail.
fn code<T: std::fmt::Debug>(answer: Result<tonic::Response<T>, tonic::Status>) -> Code {
    answer.unwrap_err().code()
}

async fn connect_as(url: &str, token: &str) -> Client {
    Client::connect(url, token, ClientOptions::default()).await.unwrap()
}

/// The kind of the server's refusal of a connection with `token` (None when it is accepted).
async fn refusal(url: &str, token: &str) -> Option<String> {
    let refused = Client::connect(url, token, ClientOptions::default()).await.err()?;
    refused.refused_kind().map(str::to_string)
}

/// Whether the connection ends within a short while, and how.
async fn closed(client: &mut Client) -> (Option<u16>, String) {
    client.expect_closed(WAIT).await.unwrap()
}

#[tokio::test]
async fn every_call_needs_the_admin_secret() {
    let server = Server::start().await;
    for secret in ["", "not-the-secret-at-all", &server.secret()[1..]] {
        let mut admin = server.admin(secret).await;
        let status = admin.get_stats(pb::StatsRequest {}).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{secret:?}");
        let status = admin.mint_token(pb::MintTokenRequest::default()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{secret:?}");
    }
    let mut admin = server.admin(&server.secret()).await;
    let stats = admin.get_stats(pb::StatsRequest {}).await.unwrap().into_inner();
    assert_eq!((stats.node.as_str(), stats.shards, stats.connections), ("node-a", 1, 0));
    server.running.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_invalid_argument_or_not_found() {
    let server = Server::start().await;
    let mut admin = server.admin(&server.secret()).await;

    let bad_mints = [
        ("not an eid", "phone", 0),
        ("alice@example.com", "", 0),
        ("alice@example.com", "phone", 31_536_001),
    ];
    for (eid, device_id, lifetime_s) in bad_mints {
        let request = pb::MintTokenRequest {
            eid: eid.into(),
            device_id: device_id.into(),
            lifetime_s,
        };
        assert_eq!(
            code(admin.mint_token(request).await),
            Code::InvalidArgument,
            "{eid} {device_id}"
        );
    }
    assert_eq!(code(admin.list_sessions(user("nobody")).await), Code::InvalidArgument);
    assert_eq!(code(admin.get_awareness(user("")).await), Code::InvalidArgument);
    assert_eq!(code(admin.revoke_user(user("x")).await), Code::InvalidArgument);
    assert_eq!(
        code(admin.revoke_device(device("a@x.io", "")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(admin.block(relation("a@x.io", "a@x.io")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(admin.add_subscriber(relation("a@x.io", "bad eid")).await),
        Code::InvalidArgument
    );
    let long = pb::Relation {
        nickname: "n".repeat(129),
        ..relation("a@x.io", "b@x.io")
    };
    assert_eq!(code(admin.add_subscriber(long).await), Code::InvalidArgument);
    for token in ["", "garbage", "a.b.c"] {
        let refresh = pb::RefreshTokenRequest { token: token.into() };
        assert_eq!(
            code(admin.refresh_token(refresh).await),
            Code::InvalidArgument,
            "{token}"
        );
        let revoke = pb::RevokeTokenRequest { token: token.into() };
        assert_eq!(code(admin.revoke_token(revoke).await), Code::InvalidArgument, "{token}");
    }
    let push = pb::PushRequest {
        eid: "a@x.io".into(),
        r#type: String::new(),
        data: Default::default(),
    };
    assert_eq!(code(admin.push(push).await), Code::InvalidArgument);
    // A user that never connected: no sessions, nothing to end.
    let sessions = admin
        .list_sessions(user("carol@example.com"))
        .await
        .unwrap()
        .into_inner();
    assert!(sessions.sessions.is_empty());
    assert_eq!(
        code(admin.end_session(device("carol@example.com", "phone")).await),
        Code::NotFound
    );
    server.running.shutdown().await;
}

#[tokio::test]
async fn sessions_push_awareness_and_graph_on_a_users_behalf() {
    let server = Server::start().await;
    let mut admin = server.admin(&server.secret()).await;
    let alice_phone = mint(&mut admin, "alice@example.com", "phone").await;
    let alice_tablet = mint(&mut admin, "alice@example.com", "tablet").await;
    let bob_phone = mint(&mut admin, "bob@example.com", "phone").await;
    let mut phone = connect_as(&server.ws(), &alice_phone.token).await;
    let mut tablet = connect_as(&server.tcp(), &alice_tablet.token).await;
    let bob = connect_as(&server.ws(), &bob_phone.token).await;

    let sessions = admin
        .list_sessions(user("alice@example.com"))
        .await
        .unwrap()
        .into_inner()
        .sessions;
    let shown: Vec<_> = sessions
        .iter()
        .map(|s| (s.device_id.as_str(), s.transport(), s.node.as_str(), s.token_expires_at))
        .collect();
    assert_eq!(
        shown,
        [
            ("phone", pb::Transport::Websocket, "node-a", alice_phone.expires_at),
            ("tablet", pb::Transport::Tcp, "node-a", alice_tablet.expires_at),
        ]
    );
    assert!(sessions.iter().all(|s| s.since > 1_700_000_000_000), "{sessions:?}");

    // Push: both of alice's devices.
    let push = pb::PushRequest {
        eid: "alice@example.com".into(),
        r#type: "billing".into(),
        data: [("due".to_string(), "today".to_string())].into(),
    };
    assert_eq!(admin.push(push).await.unwrap().into_inner().devices, 2);
    for client in [&mut phone, &mut tablet] {
        let got = client
            .expect(|p| matches!(p, Payload::PushNotification(_)), WAIT)
            .await
            .unwrap();
        let Payload::PushNotification(note) = got else {
            unreachable!()
        };
        assert_eq!(note.r#type, "billing");
    }

    // Alice added as bob's subscriber: alice now watches bob, and her devices hear bob's state (AWR-11).
    let added = admin
        .add_subscriber(relation("bob@example.com", "alice@example.com"))
        .await
        .unwrap();
    assert!(added.into_inner().changed);
    let note = phone
        .expect(|p| matches!(p, Payload::AwarenessNotification(_)), WAIT)
        .await
        .unwrap();
    let Payload::AwarenessNotification(note) = note else {
        unreachable!()
    };
    assert_eq!(note.from.map(|f| f.eid).as_deref(), Some("bob@example.com"));
    let bobs = admin.get_awareness(user("bob@example.com")).await.unwrap().into_inner();
    assert_eq!(bobs.subscribers, ["alice@example.com"]);
    assert_eq!(
        (bobs.status, bobs.devices_online, bobs.visibility, bobs.location_sharing),
        (1, 1, 2, 2)
    );

    // A block, then the same block again (no change), then unblock.
    assert!(
        admin
            .block(relation("bob@example.com", "alice@example.com"))
            .await
            .unwrap()
            .into_inner()
            .changed
    );
    assert!(
        !admin
            .block(relation("bob@example.com", "alice@example.com"))
            .await
            .unwrap()
            .into_inner()
            .changed
    );
    let bobs = admin.get_awareness(user("bob@example.com")).await.unwrap().into_inner();
    assert_eq!(bobs.blocked, ["alice@example.com"]);
    assert!(
        admin
            .unblock(relation("bob@example.com", "alice@example.com"))
            .await
            .unwrap()
            .into_inner()
            .changed
    );
    let removed = admin
        .remove_subscriber(relation("bob@example.com", "alice@example.com"))
        .await
        .unwrap();
    assert!(removed.into_inner().changed);
    let bobs = admin.get_awareness(user("bob@example.com")).await.unwrap().into_inner();
    assert!(bobs.subscribers.is_empty() && bobs.blocked.is_empty(), "{bobs:?}");

    // TOK-12: ending the tablet's session: a DISCONNECT notice, a normal close; the token still opens a new session.
    admin.end_session(device("alice@example.com", "tablet")).await.unwrap();
    let notice = tablet.expect(|p| matches!(p, Payload::Logout(_)), WAIT).await.unwrap();
    let Payload::Logout(notice) = notice else {
        unreachable!()
    };
    assert_eq!((notice.r#type, notice.status), (2, 1));
    closed(&mut tablet).await;
    let code = admin
        .end_session(device("alice@example.com", "tablet"))
        .await
        .unwrap_err()
        .code();
    assert_eq!(code, Code::NotFound);
    let again = connect_as(&server.tcp(), &alice_tablet.token).await;
    assert!(again.session().is_some());

    let stats = admin.get_stats(pb::StatsRequest {}).await.unwrap().into_inner();
    assert_eq!((stats.connections, stats.users_online), (3, 2));
    assert!(stats.sessions_started >= 4 && stats.stanzas_out > 0, "{stats:?}");
    // Over WebSocket the close is a normal one (TOK-12).
    admin.end_session(device("alice@example.com", "phone")).await.unwrap();
    assert_eq!(closed(&mut phone).await.0, Some(1000));
    drop(bob);
    server.running.shutdown().await;
}

#[tokio::test]
async fn revocations_end_sessions_and_refuse_the_tokens_until_new_ones_are_minted() {
    let server = Server::start().await;
    let mut admin = server.admin(&server.secret()).await;
    let eid = "dave@example.com";
    let phone = mint(&mut admin, eid, "phone").await;
    let spare = mint(&mut admin, eid, "phone").await;
    let laptop = mint(&mut admin, eid, "laptop").await;

    // RefreshToken: a new token; the live session stays, bound to it; the old token opens nothing.
    let mut session = connect_as(&server.ws(), &phone.token).await;
    let fresh = admin
        .refresh_token(pb::RefreshTokenRequest {
            token: phone.token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(fresh.jti, phone.jti);
    assert!(session.ping("still-here").await.is_ok());
    assert_eq!(
        refusal(&server.ws(), &phone.token).await.as_deref(),
        Some("token_revoked")
    );
    let again = admin
        .refresh_token(pb::RefreshTokenRequest { token: phone.token })
        .await;
    assert_eq!(again.unwrap_err().code(), Code::FailedPrecondition);

    // RevokeToken of the refreshed token ends the session bound to it.
    let ended = admin
        .revoke_token(pb::RevokeTokenRequest {
            token: fresh.token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ended.sessions_ended, 1);
    session.expect_error("token_revoked", WAIT).await.unwrap();
    assert_eq!(closed(&mut session).await.0, Some(4401));

    // TOK-11, RevokeDevice: every token of the device issued so far, live or not, the other device untouched.
    let mut session = connect_as(&server.ws(), &spare.token).await;
    let mut other = connect_as(&server.tcp(), &laptop.token).await;
    let ended = admin.revoke_device(device(eid, "phone")).await.unwrap().into_inner();
    assert_eq!(ended.sessions_ended, 1);
    session.expect_error("token_revoked", WAIT).await.unwrap();
    assert_eq!(
        refusal(&server.ws(), &spare.token).await.as_deref(),
        Some("token_revoked")
    );
    assert!(other.ping("laptop").await.is_ok(), "another device is not covered");
    // A token minted after the revocation is good, even within the same second.
    let renewed = mint(&mut admin, eid, "phone").await;
    let mut session = connect_as(&server.ws(), &renewed.token).await;

    // RevokeUser: both devices end, and neither token opens a session again.
    let ended = admin.revoke_user(user(eid)).await.unwrap().into_inner();
    assert_eq!(ended.sessions_ended, 2);
    for client in [&mut session, &mut other] {
        client.expect_error("token_revoked", WAIT).await.unwrap();
    }
    for (url, token) in [(server.ws(), &renewed.token), (server.tcp(), &laptop.token)] {
        assert_eq!(refusal(&url, token).await.as_deref(), Some("token_revoked"), "{url}");
    }
    let sessions = admin.list_sessions(user(eid)).await.unwrap().into_inner();
    assert!(sessions.sessions.is_empty());
    server.running.shutdown().await;

    // Revocations by issue time survive a restart (AUTH-14).
    let running = server.settings.start().await.unwrap();
    let url = format!("ws://{}/ws", running.net.ws_addr().unwrap());
    assert_eq!(refusal(&url, &laptop.token).await.as_deref(), Some("token_revoked"));
    running.shutdown().await;
}

#[tokio::test]
async fn off_loopback_the_api_needs_tls_and_it_serves_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let plaintext = Settings {
        ws: None,
        tcp: None,
        admin: None,
        grpc: Some("0.0.0.0:0".parse().unwrap()),
        data_dir: dir.path().to_path_buf(),
        ..Settings::default()
    };
    let refused = plaintext.start().await.err().expect("refused at start");
    assert!(refused.to_string().contains("plaintext"), "{refused}");

    let (cert, key) = bimip::keys::self_signed_tls(&["localhost".into(), "127.0.0.1".into()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), &cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), &key).unwrap();
    // Served with TLS (on loopback here: tests listen nowhere else).
    let tls = Settings {
        grpc: Some("127.0.0.1:0".parse().unwrap()),
        tls: Some(bimip::server::TlsSettings {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
        }),
        ..plaintext
    };
    let running = tls.start().await.unwrap();
    let port = running.grpc.unwrap().port();
    let secret = std::fs::read_to_string(dir.path().join(bimip::keys::ADMIN_SECRET)).unwrap();
    let url = format!("https://127.0.0.1:{port}");
    let mut admin = connect(&url, secret.trim(), Some(cert.as_bytes())).await.unwrap();
    let stats = admin.get_stats(pb::StatsRequest {}).await.unwrap().into_inner();
    assert_eq!(stats.node, "local");
    // The same server without TLS on the client's side: no answer.
    let plain = format!("http://127.0.0.1:{port}");
    let answer = match connect(&plain, secret.trim(), None).await {
        Ok(mut client) => client
            .get_stats(pb::StatsRequest {})
            .await
            .map(|_| ())
            .map_err(|s| s.code()),
        Err(_) => Err(Code::Unavailable),
    };
    assert!(
        answer.is_err(),
        "a plaintext client got an answer from the TLS listener"
    );
    running.shutdown().await;
}
