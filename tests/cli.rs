//! The `bimip` CLI as a person uses it: readable output (snapshots), exit codes,
//! and clear errors.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn bimip(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bimip"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bimip runs");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn decode_names_route_and_payload() {
    let out = bimip(&["decode", "0806320b100118012080d095ffbc31"], "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    insta::assert_snapshot!(text(&out.stdout));
}

#[test]
fn decode_reports_an_envelope_violation_and_exits_1() {
    let out = bimip(&["decode", "--json", "0807320b100118012080d095ffbc31"], "");
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!(text(&out.stdout));
}

#[test]
fn decode_reads_a_tcp_stream_of_frames() {
    let out = bimip(&["decode", "--tcp", "00000002080600000000"], "");
    assert_eq!(out.status.code(), Some(1), "both frames lack a payload");
    insta::assert_snapshot!(text(&out.stdout));
}

#[test]
fn decode_then_encode_gives_the_same_bytes() {
    let hex_in = "0806320b100118012080d095ffbc31";
    let decoded = bimip(&["decode", hex_in], "");
    let encoded = bimip(&["encode"], &text(&decoded.stdout));
    assert_eq!(encoded.status.code(), Some(0), "{}", text(&encoded.stderr));
    assert_eq!(text(&encoded.stdout).trim(), hex_in);
}

#[test]
fn encode_refuses_a_route_mismatch_unless_asked() {
    let input = r#"{"route": "7", "pingpongMessage": {"type": 1}}"#;
    let refused = bimip(&["encode"], input);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        text(&refused.stderr).contains("route_mismatch"),
        "{}",
        text(&refused.stderr)
    );
    let forced = bimip(&["encode", "--allow-invalid", "--tcp"], input);
    assert_eq!(text(&forced.stdout).trim(), "00000006080732021001");
}

#[test]
fn bad_input_gets_a_clear_error() {
    let out = bimip(&["decode", "xyz"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("not valid hex"), "{}", text(&out.stderr));
    let out = bimip(&["encode"], "route: [unclosed");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("not YAML or JSON"), "{}", text(&out.stderr));
}

#[test]
fn decode_accepts_base64() {
    let out = bimip(&["decode", "--base64", "CAYyCxABGAEggNCV/7wx"], "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("PingPong (pingpong_message)"));
}

/// A small queue: two users, a device with a committed offset, closed cleanly.
fn small_queue(dir: &std::path::Path) {
    use bimip::store::queue::{QueueConfig, QueueStore, RealFs};
    let mut store = QueueStore::open(RealFs, dir, QueueConfig::default()).unwrap();
    for i in 0..5 {
        store
            .append("alice@example.com", format!("hello {i}").as_bytes(), None)
            .unwrap();
    }
    store.append("bob@example.com", b"copy", Some("phone")).unwrap();
    store.touch("alice@example.com", "phone", 1_000).unwrap();
    store.sync().unwrap();
    store.commit("alice@example.com", "phone", 3).unwrap();
    store.close().unwrap();
}

#[test]
fn queue_inspect_shows_segments_eids_and_offsets() {
    let tmp = tempfile::tempdir().unwrap();
    small_queue(tmp.path());
    let dir = tmp.path().to_str().unwrap();
    let out = bimip(&["queue", "inspect", dir], "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    insta::assert_snapshot!(text(&out.stdout).replace(dir, "DIR"));
}

#[test]
fn queue_verify_exits_0_on_a_good_store_and_1_on_a_damaged_one() {
    let tmp = tempfile::tempdir().unwrap();
    small_queue(tmp.path());
    let dir = tmp.path().to_str().unwrap();
    let good = bimip(&["queue", "verify", dir], "");
    assert_eq!(good.status.code(), Some(0), "{}", text(&good.stdout));
    assert!(text(&good.stdout).ends_with("ok\n"), "{}", text(&good.stdout));

    // Flip one byte inside the first record (past the 16-byte segment header).
    let seg = tmp.path().join("0000000001.seg");
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[16 + 20] ^= 0xff;
    std::fs::write(&seg, bytes).unwrap();
    let bad = bimip(&["queue", "verify", dir], "");
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad.stdout));
    assert!(text(&bad.stdout).contains("problem(s) found"), "{}", text(&bad.stdout));
}

#[test]
fn queue_verify_exits_2_when_the_directory_cannot_be_read() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nothing-here");
    let out = bimip(&["queue", "verify", missing.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("error"), "{}", text(&out.stderr));
}

#[test]
fn queue_help_documents_the_exit_codes() {
    let out = bimip(&["queue", "verify", "--help"], "");
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("1 problems found"), "{}", text(&out.stdout));
}
