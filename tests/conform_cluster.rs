//! Issue 17: `bimip-conform` checks a cluster given as several `--target` URLs of a transport, spreading each case's
//! devices over the nodes. The "cluster" here is the built-in reference server behind a few counting TCP forwarders,
//! one per node: every case must pass through them, and every forwarder must have carried connections, so a
//! placement that sent everything to node 0 fails.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bimip::conformance::builtin::BuiltIn;
use bimip::conformance::driver::{ConnectSpec, DriverFactory, TransportKind};
use bimip::conformance::network::{NetworkFactory, NetworkTarget};
use bimip::conformance::report::Verdict;
use bimip::conformance::runner::{self, RunOptions};

/// One "node": a loopback listener that counts the connections it accepts and passes each, byte for byte, to the
/// server.
struct Node {
    url: String,
    accepted: Arc<AtomicUsize>,
}

impl Node {
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// host:port of a `scheme://host:port[/path]` URL, and its path.
fn split(url: &str) -> (SocketAddr, String) {
    let rest = url.split_once("://").expect("a URL").1;
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], rest[at..].to_string()),
        None => (rest, String::new()),
    };
    (authority.parse().expect("host:port"), path)
}

/// A counting forwarder in front of `url` (the built-in server's), as a URL of the same scheme and path.
fn node(runtime: &tokio::runtime::Runtime, url: &str) -> Node {
    let (upstream, path) = split(url);
    let scheme = url.split("://").next().expect("a scheme");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let local = listener.local_addr().expect("local address");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    runtime.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
        while let Ok((mut client, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let _ = client.set_nodelay(true);
                let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = server.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    Node {
        url: format!("{scheme}://{local}{path}"),
        accepted,
    }
}

/// The built-in server as a cluster of `ws` WebSocket and `tcp` TCP nodes, each a forwarder.
fn cluster(
    runtime: &tokio::runtime::Runtime,
    server: &BuiltIn,
    ws: usize,
    tcp: usize,
) -> (NetworkTarget, Vec<Node>, Vec<Node>) {
    let mut target = server.target().expect("the built-in target");
    let ws_nodes: Vec<Node> = (0..ws)
        .map(|_| node(runtime, target.ws.as_deref().expect("a ws URL")))
        .collect();
    let tcp_nodes: Vec<Node> = (0..tcp)
        .map(|_| node(runtime, target.tcp.as_deref().expect("a tcp URL")))
        .collect();
    let urls = |nodes: &[Node]| nodes.iter().map(|n| n.url.clone()).collect::<Vec<_>>();
    let (ws_urls, tcp_urls) = (urls(&ws_nodes), urls(&tcp_nodes));
    target.ws = ws_urls.first().cloned();
    target.more_ws = ws_urls.iter().skip(1).cloned().collect();
    target.tcp = tcp_urls.first().cloned();
    target.more_tcp = tcp_urls.iter().skip(1).cloned().collect();
    (target, ws_nodes, tcp_nodes)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Through the driver itself: alice's phone on node 0, bob's phone on node 1, alice's laptop on node 2, carol's
/// phone on node 0 again; alice's phone back on node 1 (the node after its first), and a raw HTTP request on node 0.
#[test]
fn a_case_places_its_devices_round_robin_and_a_reconnection_on_the_next_node() {
    let runtime = runtime();
    let server = BuiltIn::start().expect("the built-in server");
    let (target, ws, _) = cluster(&runtime, &server, 3, 1);
    let factory = NetworkFactory::new(target).expect("the network driver");
    let mut driver = factory.make(1).expect("a driver");
    let suffix = factory.eid_suffix(1);
    let counts = || ws.iter().map(Node::accepted).collect::<Vec<_>>();
    let mut connect = |user: &str, device: &str, name: &str| {
        let eid = format!("{user}{suffix}@example.com");
        let outcome = driver
            .connect(name, &ConnectSpec::new(&eid, device, TransportKind::Ws))
            .expect("a connection");
        assert!(outcome.to_string().starts_with("a session"), "{name}: {outcome}");
    };
    let steps = [
        ("alice", "phone", "alice/phone", [1, 0, 0]),
        ("bob", "phone", "bob/phone", [1, 1, 0]),
        ("alice", "laptop", "alice/laptop", [1, 1, 1]),
        ("carol", "phone", "carol/phone", [2, 1, 1]),
        ("alice", "phone", "alice/phone#2", [2, 2, 1]),
    ];
    for (user, device, name, expected) in steps {
        connect(user, device, name);
        assert_eq!(counts(), expected, "after {name} connected");
    }
    let answer = driver
        .http(b"GET $path HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("an HTTP answer");
    assert!(answer.bytes.starts_with(b"HTTP/1.1 4"), "{answer:?}");
    assert_eq!(counts(), [3, 2, 1], "the case's first HTTP request goes to node 0");
    let transcript = driver.transcript().render();
    assert!(
        transcript.contains(&format!("connecting to {} (node 1)", ws[1].url)),
        "{transcript}"
    );
}

/// The whole suite against a cluster of two WebSocket and three TCP nodes: every case passes, and every node
/// carried a fair share of its transport's connections.
#[test]
fn the_whole_suite_passes_across_the_nodes_of_a_cluster() {
    let runtime = runtime();
    let server = BuiltIn::start().expect("the built-in server");
    let (target, ws, tcp) = cluster(&runtime, &server, 2, 3);
    let options = RunOptions {
        target: "the built-in server behind 2 + 3 forwarders".into(),
        targets: target.urls().into_iter().map(str::to_string).collect(),
        jobs: 16,
        ..RunOptions::default()
    };
    let factory = NetworkFactory::new(target).expect("the network driver");
    let report = runner::run(&options, Arc::new(factory), "network").expect("a run");
    assert!(report.ok(), "{}", report.render_tree(false, true));
    assert!(
        report.cases.iter().filter(|c| c.verdict == Verdict::Pass).count() > 200,
        "{}",
        report.summary()
    );
    for (transport, nodes) in [("websocket", &ws), ("tcp", &tcp)] {
        let counts: Vec<usize> = nodes.iter().map(Node::accepted).collect();
        let total: usize = counts.iter().sum();
        eprintln!("{transport} connections per node: {counts:?}");
        for (i, count) in counts.iter().enumerate() {
            // Round robin over a case's devices: node 0 gets every case's first, the others fewer, but each a share.
            assert!(
                *count * 5 >= total / nodes.len(),
                "{transport} node {i} accepted {count} of {total} connections: {counts:?}"
            );
        }
    }
    assert_eq!(
        report.targets.len(),
        5,
        "the report names every node: {:?}",
        report.targets
    );
}

/// The binary: several `--target` URLs of a transport are one cluster; the header, JSON and JUnit name every URL.
#[test]
fn bimip_conform_takes_one_target_per_node_and_names_them_all() {
    let runtime = runtime();
    let server = BuiltIn::start().expect("the built-in server");
    let (_, ws, tcp) = cluster(&runtime, &server, 2, 2);
    let dir = tempfile::tempdir().expect("a directory");
    let (json, junit) = (dir.path().join("report.json"), dir.path().join("report.xml"));
    let key = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys/rs256-test.pem");
    let mut args: Vec<String> = Vec::new();
    for node in ws.iter().chain(&tcp) {
        args.extend(["--target".into(), node.url.clone()]);
    }
    args.extend(
        [
            "--jwt-key",
            key,
            "--jwt-alg",
            "RS256",
            "--req",
            "SES-1",
            "--req",
            "CHAT-14",
            "--no-color",
            "--json",
        ]
        .map(String::from),
    );
    args.push(json.display().to_string());
    args.push("--junit".into());
    args.push(junit.display().to_string());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bimip-conform"))
        .args(&args)
        .output()
        .expect("bimip-conform runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{:?}\n{stdout}\n{stderr}", out.status);
    let header = format!(
        "checking a cluster of 2 websocket nodes (0: {}, 1: {}) and 2 tcp nodes (0: {}, 1: {})",
        ws[0].url, ws[1].url, tcp[0].url, tcp[1].url
    );
    assert!(stderr.contains(&header), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("report.json")).expect("JSON");
    let urls: Vec<&str> = ws.iter().chain(&tcp).map(|n| n.url.as_str()).collect();
    assert_eq!(report["targets"], serde_json::json!(urls));
    let xml = std::fs::read_to_string(&junit).expect("report.xml");
    for url in &urls {
        assert!(
            xml.contains(&format!("<property name=\"url\" value=\"{url}\"/>")),
            "{xml}"
        );
    }
    // Every node answered the preflight, and then carried cases' connections too.
    for node in ws.iter().chain(&tcp) {
        assert!(node.accepted() >= 2, "{} accepted {}", node.url, node.accepted());
    }
    // The same URL twice is a mistake, not a node: a usage error, and no case runs.
    let twice = std::process::Command::new(env!("CARGO_BIN_EXE_bimip-conform"))
        .args(["--target", &ws[0].url, "--target", &ws[0].url, "--jwt-key", key])
        .args(["--jwt-alg", "RS256", "--req", "SES-1"])
        .output()
        .expect("bimip-conform runs");
    assert_eq!(twice.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&twice.stderr).contains("given twice"));
}

/// `--fault` in front of a cluster: one proxy listener per node, one fault layer. Without faults the cases pass
/// through both nodes; with wrong-ack-code they fail.
#[test]
fn the_fault_proxy_stands_in_front_of_every_node() {
    use bimip::conformance::fault_proxy::FaultProxy;
    use bimip::faults::{Fault, Faults};
    let runtime = runtime();
    let server = BuiltIn::start().expect("the built-in server");
    let (target, ws, tcp) = cluster(&runtime, &server, 2, 2);
    let options = RunOptions {
        areas: vec!["ACK".into()],
        jobs: 8,
        ..RunOptions::default()
    };
    let run = |faults: Faults| {
        let proxy = FaultProxy::start(runtime.handle(), &target, &faults).expect("a proxy");
        let proxied = proxy.in_front_of(&target);
        assert_eq!(proxied.urls().len(), 4, "{:?}", proxied.urls());
        assert!(proxied.urls().iter().all(|u| !target.urls().contains(u)));
        let factory = NetworkFactory::new(proxied).expect("the network driver");
        runner::run(&options, Arc::new(factory), "network").expect("a run")
    };
    let clean = run(Faults::none());
    assert!(clean.ok(), "{}", clean.render_tree(false, true));
    for node in ws.iter().chain(&tcp) {
        assert!(node.accepted() > 0, "{} accepted nothing", node.url);
    }
    let broken = run(Faults::of([Fault::WrongAckCode]));
    assert!(
        !broken.ok() && broken.cases.iter().any(|c| c.verdict == Verdict::Fail),
        "{}",
        broken.summary()
    );
}
