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
