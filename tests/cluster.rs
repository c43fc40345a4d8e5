//! Two reference-server nodes as one service (src/cluster), linked through a real NATS: Debian's `nats-server`,
//! started here on loopback and stopped by PID (`apt-get install nats-server`; `.ci/run` installs it). SPEC 6.6:
//! SES-9, users homed on either node reach each other from either node, over WebSocket and native TCP, and a
//! device has one session in the whole cluster; SES-10, a node cut off from NATS; and a node that cannot reach
//! NATS at start says so and exits 3.
//!
//! The conformance suite against a 3-node cluster runs in `.ci/run` (`scripts/cluster.sh`). The nodes run in the
//! test's one-thread runtime: a revocation that waits for JetStream on its shard's thread must not need it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bimip::client::{Client, ClientOptions};
use bimip::core::auth::Claims;
use bimip::core::shard::home;
use bimip::proto::message_scheme::Payload;
use bimip::proto::{AcknowledgmentRequest, BlockSubscriber, Identity, Logout, TextPayloadRequest};
use bimip::server::{ClusterSettings, JwtSettings, Running, Settings};

const WAIT: Duration = Duration::from_secs(5);
const NODES: [&str; 2] = ["a", "b"];

/// A NATS server on a free loopback port, killed when dropped.
struct Nats {
    child: Child,
    port: u16,
    url: String,
    dir: tempfile::TempDir,
}

impl Nats {
    fn start() -> Nats {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Nats::spawn(port, dir.path());
        Nats {
            child,
            port,
            url: format!("nats://127.0.0.1:{port}"),
            dir,
        }
    }

    /// Kills it (its JetStream store stays) and starts it again on the same port after `pause`.
    fn restart_after(&mut self, pause: Duration) {
        self.kill();
        std::thread::sleep(pause);
        self.child = Nats::spawn(self.port, self.dir.path());
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn spawn(port: u16, dir: &Path) -> Child {
        let mut child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is needed for the cluster tests (Debian: apt-get install nats-server)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return child;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("nats-server did not listen on {port} within 5 s");
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One key for the whole service: every node verifies every token.
struct Keys {
    dir: tempfile::TempDir,
    signer: bimip::core::auth::Signer,
}

impl Keys {
    fn new() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        let (_, signer) = bimip::keys::ensure_dev_keys(dir.path()).unwrap();
        std::fs::write(dir.path().join("admin-secret"), format!("{ADMIN_SECRET}\n")).unwrap();
        Keys { dir, signer }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn token(&self, eid: &str, device: &str) -> String {
        self.token_with_claims(eid, device).0
    }

    /// A token, with its claims.
    fn token_with_claims(&self, eid: &str, device: &str) -> (String, Claims) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let iat = i64::try_from(now).unwrap();
        let claims = Claims {
            eid: eid.into(),
            device_id: device.into(),
            jti: format!("{eid}-{device}-{iat}"),
            iat,
            exp: iat + 600,
            ..Claims::default()
        };
        (self.signer.mint(&claims).unwrap(), claims)
    }
}

struct Node {
    running: Running,
    dir: tempfile::TempDir,
}

/// The admin secret every node of the test cluster shares (forwarded backend calls carry it).
const ADMIN_SECRET: &str = "a-shared-admin-secret-for-the-test-cluster";

impl Node {
    async fn start(name: &str, nats: &Nats, keys: &Keys) -> Node {
        Node::start_in(name, nats, keys, tempfile::tempdir().unwrap()).await
    }

    /// Stops the node and starts it again on its data directory.
    async fn restart(self, name: &str, nats: &Nats, keys: &Keys) -> Node {
        let Node { running, dir } = self;
        running.shutdown().await;
        Node::start_in(name, nats, keys, dir).await
    }

    async fn start_in(name: &str, nats: &Nats, keys: &Keys, dir: tempfile::TempDir) -> Node {
        let loopback = Some("127.0.0.1:0".parse().unwrap());
        let settings = Settings {
            ws: loopback,
            tcp: loopback,
            admin: None,
            grpc: loopback,
            grpc_secret_file: Some(keys.path("admin-secret")),
            node: name.into(),
            data_dir: dir.path().to_path_buf(),
            jwt: Some(JwtSettings {
                alg: "EdDSA".into(),
                key: keys.path(bimip::keys::DEV_PUBLIC_KEY),
                signing_key: Some(keys.path(bimip::keys::DEV_PRIVATE_KEY)),
                issuer: None,
                audience: None,
                leeway_s: 0,
            }),
            cluster: Some(ClusterSettings {
                nats: nats.url.clone(),
                nodes: NODES.iter().map(|n| n.to_string()).collect(),
                // Every start compacts a chat stream that has grown past twice its last snapshot.
                compact_after_ops: 0,
            }),
            ..Settings::default()
        };
        let running = tokio::time::timeout(Duration::from_secs(10), settings.start())
            .await
            .unwrap()
            .unwrap();
        Node { running, dir }
    }

    fn ws(&self) -> String {
        format!("ws://{}/ws", self.running.net.ws_addr().unwrap())
    }

    fn tcp(&self) -> String {
        format!("tcp://{}", self.running.net.tcp_addr().unwrap())
    }
}

/// An EID whose home shard is on node `node` (one shard per node: shard i is node i's).
fn homed_on(node: usize, name: &str) -> String {
    (0..)
        .map(|i| format!("{name}{i}@example.com"))
        .find(|eid| home(eid, NODES.len()) == node)
        .unwrap()
}

/// Two users homed on node `node` whose chat is homed there too (`names`, each numbered until it fits).
fn pair_homed_on(node: usize, names: (&str, &str)) -> (String, String) {
    let first = homed_on(node, names.0);
    let second = partner_homed_on(node, &first, names.1);
    (first, second)
}

/// A user homed on node `node` whose chat with `eid` is homed there too.
fn partner_homed_on(node: usize, eid: &str, name: &str) -> String {
    (0..)
        .map(|i| format!("{name}{i}@example.com"))
        .find(|other| {
            home(other, NODES.len()) == node && home(&bimip::core::chat::chat_id(eid, other), NODES.len()) == node
        })
        .unwrap()
}

async fn cluster() -> (Nats, Keys, Vec<Node>) {
    let nats = Nats::start();
    let keys = Keys::new();
    let mut nodes = Vec::new();
    for name in NODES {
        nodes.push(Node::start(name, &nats, &keys).await);
    }
    (nats, keys, nodes)
}

async fn connect(url: &str, token: &str) -> Client {
    Client::connect(url, token, ClientOptions::default()).await.unwrap()
}

fn text(to: &str, local: &str) -> Payload {
    Payload::TextPayloadRequest(TextPayloadRequest {
        to: vec![Identity {
            eid: to.into(),
            connection_resource_id: String::new(),
        }],
        content: format!("text {local}"),
        message_id_local: local.into(),
        ..Default::default()
    })
}

/// Alice sends Bob a text and both of them see it through: Alice's VersionUpdate, Bob's ChatMessage.
async fn chat_once(alice: &mut Client, bob: &mut Client, bob_eid: &str, local: &str) -> (String, i64) {
    alice.send(text(bob_eid, local)).await.unwrap();
    let update = alice
        .expect(
            |p| matches!(p, Payload::VersionUpdate(v) if v.message_id_local == local),
            WAIT,
        )
        .await
        .unwrap();
    let Payload::VersionUpdate(update) = update else {
        unreachable!()
    };
    let message = bob
        .expect(
            |p| matches!(p, Payload::ChatMessage(m) if m.message_id == update.message_id),
            WAIT,
        )
        .await
        .unwrap();
    let Payload::ChatMessage(message) = message else {
        unreachable!()
    };
    assert_eq!(message.version, update.version);
    (update.message_id, update.version)
}

#[tokio::test]
async fn users_homed_on_either_node_chat_from_either_node() {
    let (_nats, keys, nodes) = cluster().await;
    let alice = homed_on(0, "alice");
    let bob = homed_on(1, "bob");
    // Each connects to the node that is *not* its home: every stanza and answer crosses NATS. Alice over
    // WebSocket (the upgrade is decided by her home), Bob over TCP (his Authenticate moves him there).
    let mut alice_phone = connect(&nodes[1].ws(), &keys.token(&alice, "phone")).await;
    let mut bob_phone = connect(&nodes[0].tcp(), &keys.token(&bob, "phone")).await;
    assert!(alice_phone.session().is_some() && bob_phone.session().is_some());
    // And each has a second device on its home node.
    let mut bob_laptop = connect(&nodes[1].ws(), &keys.token(&bob, "laptop")).await;

    let mut versions = Vec::new();
    for n in 0..5 {
        let (id, version) = chat_once(&mut alice_phone, &mut bob_phone, &bob, &format!("a{n}")).await;
        bob_laptop
            .expect(|p| matches!(p, Payload::ChatMessage(m) if m.message_id == id), WAIT)
            .await
            .unwrap();
        versions.push(version);
        let (_, version) = chat_once(&mut bob_phone, &mut alice_phone, &alice, &format!("b{n}")).await;
        versions.push(version);
    }
    // One chat: its versions grow by one, whichever node each message came through (CHAT-16).
    let first = versions[0];
    assert_eq!(versions, (first..first + 10).collect::<Vec<_>>());

    // A ping is answered by the connection's home, across NATS.
    let pong = alice_phone.ping("p1").await.unwrap();
    assert_eq!(pong.id, "p1");
}

#[tokio::test]
async fn a_device_has_one_session_in_the_whole_cluster() {
    let (_nats, keys, nodes) = cluster().await;
    let carol = homed_on(1, "carol");
    let mut first = connect(&nodes[0].ws(), &keys.token(&carol, "phone")).await;
    // The same device on the other node replaces the first session (SES-2): both are the home's.
    let mut second = connect(&nodes[1].ws(), &keys.token(&carol, "phone")).await;
    let (code, _) = first.expect_closed(WAIT).await.unwrap();
    assert_eq!(code, Some(4409));
    assert!(second.ping("still-here").await.is_ok());
}

#[tokio::test]
async fn a_refused_token_is_refused_by_any_node() {
    let (_nats, keys, nodes) = cluster().await;
    let dave = homed_on(1, "dave");
    let other = Keys::new();
    // Signed by a key the service does not know: node a asks dave's home (node b), which refuses with 401.
    let refused = Client::connect(&nodes[0].ws(), &other.token(&dave, "phone"), ClientOptions::default())
        .await
        .expect_err("a token of an unknown key is refused");
    assert_eq!(refused.refused_kind(), Some("token_signature"));
    // And a good one still opens a session there.
    connect(&nodes[0].ws(), &keys.token(&dave, "phone")).await;
}

fn bimip() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_bimip"))
}

/// `bimip serve` as a cluster node with `cluster` arguments, run to its exit: (exit code, standard error).
fn serve_node(cluster: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(bimip())
        .args([
            "serve",
            "--ws",
            "127.0.0.1:0",
            "--tcp",
            "127.0.0.1:0",
            "--no-admin",
            "--no-grpc",
        ])
        .args(cluster)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_node_without_nats_says_so_and_exits_3() {
    let nats = format!("nats://127.0.0.1:{}", free_port());
    let (code, stderr) = serve_node(&["--node", "a", "--cluster-nodes", "a,b", "--cluster", &nats]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("cannot reach NATS"), "{stderr}");
}

#[test]
fn a_node_missing_from_the_list_is_refused() {
    let (code, stderr) = serve_node(&[
        "--node",
        "c",
        "--cluster-nodes",
        "a,b",
        "--cluster",
        "nats://127.0.0.1:4222",
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("not in --cluster-nodes"), "{stderr}");
}

/// How many messages the chat stream holds for shard `shard`.
async fn chat_messages(nats: &Nats, shard: usize) -> usize {
    use futures::TryStreamExt;
    let client = async_nats::connect(&nats.url).await.unwrap();
    let stream = async_nats::jetstream::new(client)
        .get_stream("BIMIP_CHAT")
        .await
        .unwrap();
    let subjects = stream.info_with_subjects(format!("bimip.chat.{shard}")).await.unwrap();
    subjects
        .map_ok(|(_, count)| count)
        .try_fold(0, |sum, n| async move { Ok(sum + n) })
        .await
        .unwrap()
}

/// The number of node `name`'s latest start, as the cluster keeps it.
async fn start_number(nats: &Nats, name: &str) -> u16 {
    let client = async_nats::connect(&nats.url).await.unwrap();
    let bucket = async_nats::jetstream::new(client)
        .get_key_value("BIMIP_NODES")
        .await
        .unwrap();
    let value = bucket.get(format!("{name}.start")).await.unwrap().unwrap();
    std::str::from_utf8(&value).unwrap().parse().unwrap()
}

/// A request to block `eid` (BLK).
fn block(eid: &str) -> Payload {
    Payload::BlockSubscriber(BlockSubscriber {
        subscriber: Some(Identity {
            eid: eid.into(),
            connection_resource_id: String::new(),
        }),
        r#type: 1,
        action: 1,
        timestamp: 1,
        ..BlockSubscriber::default()
    })
}

#[tokio::test]
async fn the_graph_of_every_node_survives_a_restart_of_all() {
    let (nats, keys, nodes) = cluster().await;
    let alice = homed_on(0, "alice");
    let bob = homed_on(1, "bob");
    let mut bob_phone = connect(&nodes[1].ws(), &keys.token(&bob, "phone")).await;
    bob_phone.send(block(&alice)).await.unwrap();
    bob_phone
        .expect(|p| matches!(p, Payload::BlockSubscriber(b) if b.status == 1), WAIT)
        .await
        .unwrap();
    drop(bob_phone);
    // Both nodes go down and come back: node a has none of bob's journal, only what the cluster's stream kept.
    // Each start is numbered after the node's last one (connection ids carry the number).
    for name in NODES {
        assert_eq!(start_number(&nats, name).await, 1);
    }
    let mut restarted = Vec::new();
    for (node, name) in nodes.into_iter().zip(NODES) {
        restarted.push(node.restart(name, &nats, &keys).await);
        assert_eq!(start_number(&nats, name).await, 2, "node {name}'s second start");
    }
    let _bob_phone = connect(&restarted[1].ws(), &keys.token(&bob, "phone")).await;
    // Whichever node is the chat's home, it knows the block: alice's text is refused (BLK, 403 blocked).
    for (n, node) in restarted.iter().enumerate() {
        let mut alice_phone = connect(&node.ws(), &keys.token(&alice, &format!("phone{n}"))).await;
        alice_phone.send(text(&bob, &format!("after{n}"))).await.unwrap();
        let refused = alice_phone.expect_error("blocked", WAIT).await;
        assert!(refused.is_ok(), "through node {n}: {refused:?}");
    }
}

/// The answer to the stanza `client` just sent is 503 `unavailable`, not a VersionUpdate or a Logout.
async fn assert_refused(client: &mut Client) {
    let answer = client
        .expect(
            |p| {
                matches!(
                    p,
                    Payload::ErrorMessage(_) | Payload::VersionUpdate(_) | Payload::Logout(_)
                )
            },
            WAIT,
        )
        .await
        .unwrap();
    assert!(
        matches!(&answer, Payload::ErrorMessage(e) if e.code == 503),
        "{answer:?}"
    );
}

/// Whether a connection is refused with 503 `unavailable` (`None`: it opens).
async fn refused_kind(url: &str, token: &str) -> Option<String> {
    let refused = Client::connect(url, token, ClientOptions::default()).await.err()?;
    refused.refused_kind().map(str::to_string)
}

/// SES-10.
#[tokio::test]
async fn a_node_that_loses_nats_keeps_its_own_sessions_and_takes_no_new_ones() {
    let (mut nats, keys, nodes) = cluster().await;
    let here = homed_on(0, "erin");
    let away = homed_on(1, "frank");
    let mut local = connect(&nodes[0].ws(), &keys.token(&here, "phone")).await;
    let mut remote = connect(&nodes[0].ws(), &keys.token(&away, "phone")).await;

    nats.kill();
    // The session homed on the unreachable node ends as at a shutdown (1001), so its client goes elsewhere.
    let (code, _) = remote.expect_closed(Duration::from_secs(10)).await.unwrap();
    assert_eq!(code, Some(1001));
    // Chats are stored in JetStream: once node a knows NATS is gone (it closed that session), one within node a is
    // refused, not acknowledged unstored (issue 17 part 6).
    let grace = partner_homed_on(0, &here, "grace");
    local.send(text(&grace, "while-away")).await.unwrap();
    assert_refused(&mut local).await;
    // A chat homed on the node it cannot reach: refused too.
    let ivan = (0..)
        .map(|i| format!("ivan{i}@example.com"))
        .find(|other| home(&bimip::core::chat::chat_id(&here, other), NODES.len()) == 1)
        .unwrap();
    local.send(text(&ivan, "across")).await.unwrap();
    assert_refused(&mut local).await;
    // A logout cannot be stored either: refused, and the session stays (SES-12, nothing revoked).
    local
        .send(Payload::Logout(Logout {
            r#type: 1,
            ..Logout::default()
        }))
        .await
        .unwrap();
    assert_refused(&mut local).await;
    // The session homed here goes on; new sessions are refused with 503 until NATS is back.
    assert!(local.ping("still").await.is_ok());
    assert_eq!(
        refused_kind(&nodes[0].ws(), &keys.token(&here, "laptop"))
            .await
            .as_deref(),
        Some("unavailable")
    );

    nats.restart_after(Duration::from_millis(100));
    // The client reconnects by itself (backoff up to a few seconds): then sessions open again, anywhere.
    let mut back = None;
    for _ in 0..100 {
        match Client::connect(&nodes[0].ws(), &keys.token(&away, "phone"), ClientOptions::default()).await {
            Ok(client) => {
                back = Some(client);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let mut away_phone = back.expect("a session again within 20 s of NATS coming back");
    let mut here_phone = connect(&nodes[1].ws(), &keys.token(&here, "tablet")).await;
    chat_once(&mut away_phone, &mut here_phone, &here, "after-the-cut").await;
}

#[tokio::test]
async fn a_backend_call_on_any_node_reaches_the_users_home() {
    use bimip::admin::proto as pb;
    let (_nats, keys, nodes) = cluster().await;
    let gina = homed_on(1, "gina");
    let mut phone = connect(&nodes[0].ws(), &keys.token(&gina, "phone")).await;
    // Node a is not gina's home: it forwards each call to node b, which runs it as its own.
    let url = format!("http://{}", nodes[0].running.grpc.unwrap());
    let mut admin = bimip::admin::grpc::connect(&url, ADMIN_SECRET, None).await.unwrap();
    let sessions = admin
        .list_sessions(pb::User { eid: gina.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sessions.sessions.len(), 1, "{sessions:?}");
    let pushed = admin
        .push(pb::PushRequest {
            eid: gina.clone(),
            r#type: "system".into(),
            data: [("k".to_string(), "v".to_string())].into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pushed.devices, 1);
    phone
        .expect(|p| matches!(p, Payload::PushNotification(_)), WAIT)
        .await
        .unwrap();
    // A revocation made through node a ends gina's session, wherever its socket is.
    let revoked = admin
        .revoke_user(pb::User { eid: gina.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.sessions_ended, 1);
    let (code, _) = phone.expect_closed(WAIT).await.unwrap();
    assert_eq!(code, Some(4401));
    // Bad input is answered by the home as it would be there.
    let bad = admin
        .end_session(pb::Device {
            eid: gina.clone(),
            device_id: "no-such-device".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::NotFound, "{bad:?}");
    // A node with another secret cannot have calls run for it.
    let wrong = bimip::admin::grpc::connect(&url, "not-the-secret-at-all", None)
        .await
        .unwrap();
    let mut wrong = wrong;
    let refused = wrong.list_sessions(pb::User { eid: gina }).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
}

/// SES-12 (issue 17 part 2): chats, queues, offsets and revocations live in JetStream, and the social graph is copied back from
/// it. A node started again on an empty data directory (its disk lost) still has them: the queued messages reach
/// their device, the confirmed one does not come again, the chat's versions go on without reuse, a token logged out
/// or revoked by the backend stays refused, and a block still holds.
#[tokio::test]
async fn a_node_on_an_empty_data_directory_serves_its_chats_from_jetstream() {
    let (nats, keys, mut nodes) = cluster().await;
    let (alice, bob) = pair_homed_on(0, ("alice", "bob"));
    let mut alice_phone = connect(&nodes[0].ws(), &keys.token(&alice, "phone")).await;
    let mut bob_phone = connect(&nodes[0].ws(), &keys.token(&bob, "phone")).await;
    let (first, v1) = chat_once(&mut alice_phone, &mut bob_phone, &bob, "m1").await;
    // Delivered (status 2): the phone's offset moves past it (QUE-4).
    bob_phone
        .send(Payload::AcknowledgmentRequest(AcknowledgmentRequest {
            message_id: first.clone(),
            status: 2,
            ..Default::default()
        }))
        .await
        .unwrap();
    bob_phone
        .expect(|p| matches!(p, Payload::AcknowledgmentResponse(_)), WAIT)
        .await
        .unwrap();
    bob_phone.close().await.unwrap();
    let mut queued = Vec::new();
    for local in ["m2", "m3"] {
        alice_phone.send(text(&bob, local)).await.unwrap();
        let update = alice_phone
            .expect(
                |p| matches!(p, Payload::VersionUpdate(v) if v.message_id_local == local),
                WAIT,
            )
            .await
            .unwrap();
        let Payload::VersionUpdate(update) = update else {
            unreachable!()
        };
        queued.push((update.message_id, update.version));
    }
    assert_eq!(queued.iter().map(|q| q.1).collect::<Vec<_>>(), vec![v1 + 1, v1 + 2]);

    // Bob's tablet logs out (its jti is revoked), the backend revokes his watch (by issue time), and he blocks carol,
    // whose chat with him is homed on node a too.
    let tablet = keys.token(&bob, "tablet");
    let mut bob_tablet = connect(&nodes[0].ws(), &tablet).await;
    bob_tablet
        .send(Payload::Logout(Logout {
            r#type: 1,
            ..Logout::default()
        }))
        .await
        .unwrap();
    bob_tablet
        .expect(|p| matches!(p, Payload::Logout(l) if l.status == 3), WAIT)
        .await
        .unwrap();
    let watch = keys.token(&bob, "watch");
    let mut admin = bimip::admin::grpc::connect(
        &format!("http://{}", nodes[1].running.grpc.unwrap()),
        ADMIN_SECRET,
        None,
    )
    .await
    .unwrap();
    admin
        .revoke_device(bimip::admin::proto::Device {
            eid: bob.clone(),
            device_id: "watch".into(),
        })
        .await
        .unwrap();
    let carol = partner_homed_on(0, &bob, "carol");
    let mut bob_laptop = connect(&nodes[0].ws(), &keys.token(&bob, "laptop")).await;
    bob_laptop.send(block(&carol)).await.unwrap();
    bob_laptop
        .expect(|p| matches!(p, Payload::BlockSubscriber(b) if b.status == 1), WAIT)
        .await
        .unwrap();
    drop(bob_laptop);
    for (token, device) in [(&tablet, "tablet"), (&watch, "watch")] {
        let kind = refused_kind(&nodes[0].ws(), token).await;
        assert_eq!(
            kind.as_deref(),
            Some("token_revoked"),
            "bob's {device} before the restart"
        );
    }

    // Node a's disk is lost, twice: the first start compacts shard 0's chat stream (`compact_after_ops: 0`), one
    // snapshot in place of what came before, and the second reads its state from that snapshot.
    for start in 0..2 {
        let before = chat_messages(&nats, 0).await;
        let old = nodes.remove(0);
        old.running.shutdown().await;
        drop(old.dir);
        nodes.insert(
            0,
            Node::start_in(NODES[0], &nats, &keys, tempfile::tempdir().unwrap()).await,
        );
        let after = chat_messages(&nats, 0).await;
        if start == 0 {
            assert!(after < before, "{before} messages before the start, {after} after");
        } else {
            assert_eq!(after, before, "nothing written since the snapshot: no new one");
        }
    }
    let mut bob_phone = connect(&nodes[0].ws(), &keys.token(&bob, "phone")).await;
    for (id, version) in &queued {
        let got = bob_phone
            .expect(|p| matches!(p, Payload::ChatMessage(_)), WAIT)
            .await
            .unwrap();
        let Payload::ChatMessage(got) = got else { unreachable!() };
        assert_eq!(
            (&got.message_id, got.version),
            (id, *version),
            "replayed in order, m1 not again"
        );
    }
    let mut alice_phone = connect(&nodes[1].ws(), &keys.token(&alice, "phone")).await;
    let (_, v4) = chat_once(&mut alice_phone, &mut bob_phone, &bob, "m4").await;
    assert_eq!(v4, v1 + 3, "versions go on from what JetStream holds");

    for (token, device) in [(&tablet, "tablet"), (&watch, "watch")] {
        let kind = refused_kind(&nodes[0].ws(), token).await;
        assert_eq!(
            kind.as_deref(),
            Some("token_revoked"),
            "bob's {device} after the restart"
        );
    }
    let mut carol_phone = connect(&nodes[0].ws(), &keys.token(&carol, "phone")).await;
    carol_phone.send(text(&bob, "c1")).await.unwrap();
    let refused = carol_phone.expect_error("blocked", WAIT).await;
    assert!(refused.is_ok(), "the block holds after the restart: {refused:?}");
}

/// SES-12: a node whose data directory holds revocations from before its state moved to JetStream copies them there: the
/// token stays refused after the node starts again on an empty data directory.
#[tokio::test]
async fn a_nodes_revocations_on_disk_move_to_jetstream() {
    let nats = Nats::start();
    let keys = Keys::new();
    let bob = homed_on(0, "bob");
    let (token, claims) = keys.token_with_claims(&bob, "tablet");
    let dir = tempfile::tempdir().unwrap();
    // Shard 0 of node a keeps its state in the data directory itself.
    let mut file = bimip::store::FileRevocations::open(&dir.path().join("revoked-tokens"), claims.iat * 1000).unwrap();
    bimip::core::Revocations::revoke(&mut file, &claims.jti, claims.exp * 1000).unwrap();
    drop(file);
    let a = Node::start_in(NODES[0], &nats, &keys, dir).await;
    let _b = Node::start(NODES[1], &nats, &keys).await;
    assert_eq!(refused_kind(&a.ws(), &token).await.as_deref(), Some("token_revoked"));
    a.running.shutdown().await;
    drop(a.dir);
    let a = Node::start(NODES[0], &nats, &keys).await;
    assert_eq!(
        refused_kind(&a.ws(), &token).await.as_deref(),
        Some("token_revoked"),
        "on an empty data directory"
    );
}
