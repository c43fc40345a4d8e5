//! `bimip console` through a real pseudo-terminal (expectrl), against a reference server started here on loopback:
//! two users connect, chat, the receiver's acknowledgment reaches the sender, and a device revoked through the
//! backend API sees its session end.

use std::time::Duration;

use expectrl::{Expect, Regex, Session};

fn start_server(dir: &std::path::Path) -> (tokio::runtime::Runtime, bimip::server::Running) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let loopback = Some("127.0.0.1:0".parse().unwrap());
    let settings = bimip::server::Settings {
        ws: loopback,
        tcp: None,
        admin: None,
        grpc: loopback,
        data_dir: dir.to_path_buf(),
        ..bimip::server::Settings::default()
    };
    let running = runtime.block_on(settings.start()).unwrap();
    (runtime, running)
}

/// Waits for the first match of `needle` (a regex), answering the line editor's cursor-position queries
/// (`ESC[6n`) on the way as a terminal would: unanswered, each costs the console a 2 s timeout. expectrl consumes
/// the buffer up to its *last* match, so the pattern is anchored to match once: from the buffer's start to the first
/// query or needle. Group 0 is that whole stretch; the needle's own groups follow.
fn expect(console: &mut expectrl::session::OsSession, needle: &str) -> expectrl::Captures {
    let first = format!(r"(?s)^.*?(?:\x1b\[6n|(?:{needle}))");
    loop {
        let found = console
            .expect(Regex(&first))
            .unwrap_or_else(|e| panic!("waiting for {needle:?}: {e}"));
        if found.get(0).is_some_and(|all| all.ends_with(b"\x1b[6n")) {
            console.send("\x1b[1;1R").unwrap();
            continue;
        }
        return found;
    }
}

fn text(captures: &expectrl::Captures, group: usize) -> String {
    String::from_utf8_lossy(captures.get(group).unwrap_or_default()).into_owned()
}

#[test]
fn two_users_chat_ack_and_one_is_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, running) = start_server(dir.path());
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_bimip"));
    command
        .arg("console")
        .args(["--url", &format!("ws://{}/ws", running.net.ws_addr().unwrap())])
        .args(["--grpc", &format!("http://{}", running.grpc.unwrap())])
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--history")
        .arg(dir.path().join("history"))
        .env_remove("NO_COLOR")
        .env("TERM", "xterm-256color");
    let mut console = Session::spawn(command).unwrap();
    console.set_expect_timeout(Some(Duration::from_secs(15)));
    expect(&mut console, &regex_escape("bimip console"));

    console.send_line("connect alice@example.com phone").unwrap();
    expect(&mut console, &regex_escape("connected as connection 1"));
    console.send_line("connect bob@example.com phone").unwrap();
    expect(&mut console, &regex_escape("connected as connection 2"));
    console.send_line("use 1").unwrap();
    expect(&mut console, &regex_escape("is the current connection"));

    console
        .send_line("text bob@example.com hello from the console")
        .unwrap();
    let delivered = expect(
        &mut console,
        r#"\[bob@example\.com/phone\][^\n]*?<-[^\n]*?ChatMessage[^\n]*?"messageId":"([^"]+)"[^\n]*?hello from the console"#,
    );
    let message_id = text(&delivered, 1);
    assert!(!message_id.is_empty());
    // Coloured: the connection in cyan.
    let shown = String::from_utf8_lossy(delivered.get(0).unwrap()).into_owned();
    assert!(
        shown.contains("\u{1b}[36m[bob@example.com/phone]"),
        "no colour in {shown:?}"
    );

    console.send_line("use bob@example.com/phone").unwrap();
    expect(&mut console, &regex_escape("is the current connection"));
    console.send_line(format!("ack {message_id} read")).unwrap();
    expect(
        &mut console,
        &format!(
            r#"\[alice@example\.com/phone\][^\n]*?<-[^\n]*?AcknowledgmentResponse[^\n]*?{}"#,
            regex_escape(&message_id)
        ),
    );

    // Any stanza as YAML in the proto3 JSON mapping.
    console
        .send_line("send {route: 6, pingpongMessage: {type: 1, status: 1, id: yaml-ping}}")
        .unwrap();
    expect(
        &mut console,
        r#"\[bob@example\.com/phone\][^\n]*?<-[^\n]*?PingPong[^\n]*?"id":"yaml-ping""#,
    );
    console.send_line("send {route: 6, pingpongMessage: [").unwrap();
    expect(&mut console, &regex_escape("send takes YAML"));

    console.send_line("sessions bob@example.com").unwrap();
    expect(&mut console, r"bob@example\.com: 1 session\(s\)");
    console.send_line("revoke device bob@example.com phone").unwrap();
    expect(&mut console, &regex_escape("1 session(s) ended"));
    expect(
        &mut console,
        r"\[bob@example\.com/phone\][^\n]*?ErrorMessage[^\n]*?token_revoked",
    );
    expect(
        &mut console,
        r"\[bob@example\.com/phone\][^\n]*?closed by the server: Some\(4401\)",
    );

    console.send_line("frobnicate").unwrap();
    expect(&mut console, &regex_escape("unknown command"));
    console.send_line("quit").unwrap();
    console.expect(expectrl::Eof).unwrap();
    let pid = console.get_process().pid();
    let status = console.get_process_mut().wait().unwrap();
    assert_eq!(status, expectrl::process::unix::WaitStatus::Exited(pid, 0));
    runtime.block_on(running.shutdown());
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$#&-~".contains(c);
            special.then_some('\\').into_iter().chain(std::iter::once(c))
        })
        .collect()
}
