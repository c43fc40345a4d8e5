//! Self-checks of the suite: it can fail (a server that breaks a rule gets
//! the verdict "fail"), the verdict rules, and the requirement index.
//!
//! The full self-check of issue 7 (every built-in server fault of
//! `crate::faults` must be caught) runs in `tests/conformance.rs`
//! through [`super::selfcheck`].

use std::sync::Arc;
use std::time::Duration;

use super::driver::{Transcript, alg_none, alter_signature};
use super::report::{CaseResult, Outcome, Verdict, verdict};
use super::runner::{RunOptions, run};
use super::sim::{SimFactory, SimOptions};
use super::spec::{self, Level};

/// Runs `run_options` against the reference server in simulation, set up by `options`.
fn in_simulation(options: SimOptions, run_options: &RunOptions) -> super::report::Report {
    run(run_options, Arc::new(SimFactory { options }), "simulation").expect("the simulated run")
}

fn ping_timeout_case(options: SimOptions) -> Vec<CaseResult> {
    let run_options = RunOptions {
        names: vec!["never answers a ping".into()],
        ..RunOptions::default()
    };
    let report = in_simulation(options, &run_options);
    assert_eq!(report.cases.len(), 2, "one case per transport: {:?}", report.cases);
    report.cases
}

#[test]
fn the_ping_timeout_case_passes_against_the_reference_server() {
    for case in ping_timeout_case(SimOptions::default()) {
        assert_eq!(case.verdict, Verdict::Pass, "{case:?}");
    }
}

/// A server that never closes a silent session breaks PING-5: the suite
/// must say so, with the expectation and the transcript.
#[test]
fn a_server_that_never_times_out_fails_the_ping_timeout_case() {
    let mut options = SimOptions::default();
    options.config.max_missed_pongs = 1_000;
    for case in ping_timeout_case(options) {
        assert_eq!(case.verdict, Verdict::Fail, "{case:?}");
        let Outcome::Failed { message, step } = &case.outcome else {
            panic!("{case:?}")
        };
        assert!(
            message.contains("Expected:") && message.contains("ping_timeout"),
            "{message}"
        );
        assert!(step.contains("ping_timeout"), "{step}");
        let transcript = case.transcript.as_ref().expect("a transcript");
        assert!(transcript.render().contains("PingPong"), "{}", transcript.render());
    }
}

/// Verdicts of the cases named `name` against a server with `config`.
fn verdicts_with(name: &str, change: impl FnOnce(&mut crate::core::Config)) -> Vec<Verdict> {
    let mut options = SimOptions::default();
    change(&mut options.config);
    let run_options = RunOptions {
        names: vec![name.into()],
        ..RunOptions::default()
    };
    let report = in_simulation(options, &run_options);
    assert!(!report.cases.is_empty(), "no case named {name:?}");
    report.cases.iter().map(|c| c.verdict).collect()
}

/// Servers that each break one limit rule; the suite catches every one.
#[test]
fn limit_faults_are_caught() {
    type Fault = fn(&mut crate::core::Config);
    let faults: [(&str, Fault); 5] = [
        ("Fifty rejected stanzas in a row", |c| c.max_consecutive_errors = 1_000),
        ("An eleventh device of a user is refused", |c| {
            c.max_sessions_per_eid = 11
        }),
        ("No Authenticate within the auth deadline", |c| {
            c.auth_deadline_ms = 60_000
        }),
        ("A full receiver queue refuses new messages", |c| {
            c.queue_max_items = 1_000
        }),
        ("A stanza of exactly 65536 bytes is accepted", |c| {
            c.max_stanza_bytes = 60_000
        }),
    ];
    for (name, fault) in faults {
        let verdicts = verdicts_with(name, fault);
        assert!(verdicts.iter().all(|v| *v == Verdict::Fail), "{name}: {verdicts:?}");
    }
}

fn case(tags: &[&str], outcome: Outcome) -> CaseResult {
    CaseResult {
        file: "pingpong.feature".into(),
        section: "7".into(),
        area: "PingPong".into(),
        name: "a case".into(),
        transport: None,
        example: None,
        line: 3,
        tags: tags.iter().map(|t| (*t).to_string()).collect(),
        outcome,
        unimplemented: false,
        duration_ms: 0,
        verdict: Verdict::Pass,
        transcript: None,
    }
}

fn failed() -> Outcome {
    Outcome::Failed {
        step: "Then x".into(),
        message: "Expected: a\nActual: b".into(),
    }
}

#[test]
fn verdict_rules() {
    let none: Vec<String> = Vec::new();
    assert_eq!(
        verdict(&case(&["PING-1", "must"], Outcome::Passed), false, &none),
        Verdict::Pass
    );
    assert_eq!(
        verdict(&case(&["PING-1", "must"], failed()), false, &none),
        Verdict::Fail
    );
    let should = case(&["TRN-4", "should"], failed());
    assert_eq!(verdict(&should, false, &none), Verdict::NonStrict);
    assert_eq!(verdict(&should, true, &none), Verdict::Fail);
    let mut unimplemented = case(&["LOC-2", "must"], failed());
    unimplemented.unimplemented = true;
    assert_eq!(verdict(&unimplemented, false, &none), Verdict::Unimplemented);
    let skipped = case(
        &["AUTH-5", "must"],
        Outcome::Skipped {
            reason: "no key".into(),
        },
    );
    assert_eq!(verdict(&skipped, true, &none), Verdict::Skipped);
    let expected = vec!["PING-1".to_string()];
    assert_eq!(
        verdict(&case(&["PING-1", "must"], failed()), false, &expected),
        Verdict::ExpectedFailure
    );
    assert_eq!(
        verdict(&case(&["PING-1", "must"], Outcome::Passed), false, &expected),
        Verdict::UnexpectedPass
    );
    assert_eq!(
        verdict(&case(&["PING-2", "must"], failed()), false, &["a case".to_string()]),
        Verdict::ExpectedFailure
    );
}

#[test]
fn an_unknown_route_answer_marks_a_case_unimplemented() {
    let mut t = Transcript::default();
    let error = crate::proto::message_scheme::Payload::ErrorMessage(crate::codec::ErrorKind::UnknownRoute.to_message(
        Some(24),
        "",
        "",
        1,
    ));
    t.received(5, "alice/phone", &crate::client::Event::Stanza(error));
    assert!(t.saw_unimplemented_route());
    let mut t = Transcript::default();
    let error = crate::proto::message_scheme::Payload::ErrorMessage(crate::codec::ErrorKind::UnknownRoute.to_message(
        Some(99),
        "",
        "",
        1,
    ));
    t.received(5, "alice/phone", &crate::client::Event::Stanza(error));
    assert!(!t.saw_unimplemented_route(), "route 99 is not a SPEC route");
}

#[test]
fn the_requirement_index_matches_appendix_d() {
    let reqs = spec::requirements(spec::SPEC);
    assert_eq!(reqs.len(), 179);
    assert_eq!(reqs.iter().filter(|r| r.level == Level::Must).count(), 172);
    assert_eq!(reqs.iter().filter(|r| r.level == Level::Should).count(), 6);
    let cases = spec::cases().expect("the features parse");
    let (missing, stale) = spec::coverage_gaps(spec::SPEC, &cases, spec::UNCOVERED);
    assert!(missing.is_empty() && stale.is_empty(), "{missing:?} {stale:?}");
}

#[test]
fn every_scenario_names_requirements_and_a_level() {
    for case in spec::cases().expect("the features parse") {
        assert!(
            !case.requirements().is_empty(),
            "{}:{} has no requirement tag",
            case.file,
            case.line
        );
        let levels = ["must", "should", "may"];
        assert!(
            case.tags.iter().any(|t| levels.contains(&t.as_str())),
            "{}:{} has no level tag",
            case.file,
            case.line
        );
    }
}

#[test]
fn token_mangling() {
    let token = "aGVhZA.cGF5bG9hZA.c2lnbmF0dXJl";
    assert_eq!(alter_signature(token), "aGVhZA.cGF5bG9hZA.A2lnbmF0dXJl");
    let none = alg_none(token);
    assert!(none.ends_with(".cGF5bG9hZA."), "{none}");
}

fn html_report() -> super::report::Report {
    let mut transcript = Transcript::default();
    transcript.note(0, "alice/phone", "connecting over websocket");
    transcript.sent(12, "alice/phone", &crate::codec::encode(&ping_payload()));
    transcript.note(30, "bob/phone", "closed with code 1000");
    let mut failed_case = case(&["PING-1", "must"], failed());
    failed_case.verdict = Verdict::Fail;
    failed_case.name = "A <script>alert(1)</script> case".into();
    failed_case.transcript = Some(transcript);
    let mut passed = case(&["CHAT-7", "must"], Outcome::Passed);
    passed.file = "chat.feature".into();
    passed.section = "15".into();
    passed.area = "Chat".into();
    let mut skipped = case(
        &["AUTH-5", "must"],
        Outcome::Skipped {
            reason: "no key & no luck".into(),
        },
    );
    skipped.verdict = Verdict::Skipped;
    super::report::Report {
        driver: "simulation".into(),
        target: "a test target".into(),
        targets: vec!["ws://127.0.0.1:1/ws".into(), "ws://127.0.0.1:2/ws".into()],
        strict: false,
        duration_ms: 1234,
        cases: vec![failed_case, passed, skipped],
        parse_errors: Vec::new(),
        halted: None,
    }
}

fn ping_payload() -> crate::proto::message_scheme::Payload {
    crate::proto::message_scheme::Payload::PingpongMessage(crate::proto::PingPong {
        r#type: 1,
        status: 1,
        id: "p-1".into(),
        ..Default::default()
    })
}

/// The HTML report: self-contained, every case with its verdict for the
/// filters, Expected/Actual and the transcript of a failure, text escaped.
#[test]
fn the_html_report_is_self_contained_and_complete() {
    let html = super::html::render(&html_report());
    for outside in ["http://", "https://", "<link", " src=", "@import", "url("] {
        assert!(!html.contains(outside), "the page references {outside:?}");
    }
    assert_eq!(html.matches("<details class=\"case").count(), 3);
    assert_eq!(html.matches("<details").count(), html.matches("</details>").count());
    assert!(html.contains("data-verdict=\"fail\""), "{html}");
    assert!(html.contains("data-verdict=\"pass\""));
    assert!(html.contains("data-verdict=\"skipped\""));
    for count in ["1 fail", "1 pass", "1 skipped"] {
        assert!(html.contains(count), "no count {count:?}");
    }
    assert!(html.contains("<b>FAILED</b>"));
    assert!(html.contains("<option value=\"Chat\">§15 Chat</option>"));
    assert!(html.contains("data-tags=\"PING-1 must\""));
    // The failure: step, Expected/Actual apart, the transcript by connection.
    assert!(html.contains("<dt>Step</dt><dd>Then x</dd>"));
    assert!(html.contains("<dd class=\"expected\">a</dd><dt>Actual</dt><dd class=\"actual\">b</dd>"));
    assert!(
        html.contains("<tr class=\"d-sent\" data-conn=\"alice/phone\"><td>12 ms</td>"),
        "{html}"
    );
    assert!(html.contains("PingPong"), "the stanza is decoded");
    assert!(html.contains("<option>bob/phone</option>"));
    assert_eq!(
        html.matches("<table class=\"transcript\">").count(),
        1,
        "only the failure has one"
    );
    // Report text is never markup.
    assert!(!html.contains("<script>alert"));
    assert!(html.contains("A &lt;script&gt;alert(1)&lt;/script&gt; case"));
    assert!(html.contains("no key &amp; no luck"));
}

#[test]
fn the_html_report_of_a_clean_run_says_passed() {
    let mut report = html_report();
    report.cases.retain(|c| c.verdict == Verdict::Pass);
    let html = super::html::render(&report);
    assert!(html.contains("<b>PASSED</b>"));
    assert!(!html.contains("data-verdict=\"fail\""));
    let dir = std::env::temp_dir().join(format!("bimip-html-test-{}", std::process::id()));
    let path = super::html::write(&report, &dir).expect("written");
    assert_eq!(std::fs::read_to_string(&path).expect("read back"), html);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 22: a transport-neutral scenario runs once per transport the target offers (named for it), one that names
/// its transports runs once, and the README says how many cases each kind of target gets.
#[test]
fn neutral_cases_run_once_per_transport_and_the_readme_counts_them() {
    use super::driver::TransportKind;
    let count = |transports: Vec<TransportKind>| {
        super::runner::list(&RunOptions {
            transports,
            ..RunOptions::default()
        })
        .expect("the features parse")
    };
    // Server cases: the client cases run in client mode only.
    let neutral = spec::cases()
        .expect("the features parse")
        .iter()
        .filter(|c| c.neutral && c.file != spec::CLIENT_FEATURE)
        .count();
    let (both, ws, tcp) = (
        count(Vec::new()),
        count(vec![TransportKind::Ws]),
        count(vec![TransportKind::Tcp]),
    );
    assert_eq!(both.len(), ws.len() + neutral);
    assert_eq!(ws.len(), tcp.len());
    assert!(
        2 * neutral > ws.len(),
        "most scenarios are about no transport: {neutral} of {}",
        ws.len()
    );
    for transport in TransportKind::ALL {
        let over: Vec<_> = both.iter().filter(|c| c.transport == Some(transport)).collect();
        assert_eq!(over.len(), neutral, "{transport}");
        assert!(over.iter().all(|c| c.name.ends_with(&format!(" [{transport}]"))));
    }
    // A scenario that names a transport is never neutral, and one that compares the two is not either.
    let named = spec::cases().expect("the features parse");
    assert!(named.iter().any(|c| !c.neutral && c.name.contains("subprotocol")));
    assert!(
        named
            .iter()
            .any(|c| !c.neutral && c.name.contains("The same device connecting again"))
    );
    let said = format!(
        "{} cases with both transports, {} with one ({neutral} of them",
        both.len(),
        ws.len()
    );
    assert!(
        include_str!("../README.md").contains(&said),
        "README.md should say: {said}"
    );
}

/// Issue 18.4: a run past its deadline starts no more case; each is skipped with the reason, and the run fails
/// saying so.
#[test]
fn a_run_past_its_deadline_runs_no_more_cases_and_fails() {
    let run_options = RunOptions {
        files: vec!["logout.feature".into()],
        deadline: Some(Duration::ZERO),
        ..RunOptions::default()
    };
    let report = in_simulation(SimOptions::default(), &run_options);
    assert!(!report.cases.is_empty());
    for case in &report.cases {
        assert!(
            matches!(&case.outcome, Outcome::Skipped { reason } if reason.contains("deadline (0 s) passed")),
            "{}: {:?}",
            case.name,
            case.outcome
        );
    }
    assert!(!report.ok() && report.summary().contains("stopped early: the run's deadline"));
}

/// Issue 18.2: the restart cases run in simulation against the reference server, and fail a server whose disk
/// loses what it said was stored when it is killed (QUE-2: the message and the chat's version are gone).
#[test]
fn the_restart_cases_fail_a_server_that_forgets_on_a_kill() {
    use crate::sim::storage::StorageModel;
    let run_with = |storage: StorageModel| {
        let options = SimOptions {
            storage,
            ..SimOptions::default()
        };
        let run_options = RunOptions {
            requirements: vec!["SES-8".into()],
            ..RunOptions::default()
        };
        in_simulation(options, &run_options)
    };
    let kept = run_with(StorageModel::Shared);
    assert!(kept.ok() && kept.cases.len() >= 8, "{}", kept.render_tree(false, true));
    let forgetful = run_with(StorageModel::ForgetsOnCrash);
    let failed: Vec<&str> = forgetful
        .cases
        .iter()
        .filter(|c| c.verdict == Verdict::Fail)
        .map(|c| c.name.as_str())
        .collect();
    assert!(
        failed.len() == 2 && failed.iter().all(|n| n.contains("survives a kill")),
        "{}",
        forgetful.render_tree(false, true)
    );
}

/// Issue 23.1: a server whose sessions outlive their token by a SPEC-legal leeway fails the expiry cases unless
/// the suite is told the leeway (`--leeway`), and passes them when it is.
#[test]
fn the_token_leeway_is_a_setting_of_the_target() {
    use crate::variants::{TOKEN_LEEWAY_S, Variant, Variants};
    let run_with = |leeway: Duration| {
        let mut options = SimOptions {
            variants: Variants::of([Variant::TokenLeeway]),
            ..SimOptions::default()
        };
        options.info.leeway = leeway;
        let run_options = RunOptions {
            requirements: vec!["AUTH-13".into(), "TOK-9".into()],
            ..RunOptions::default()
        };
        in_simulation(options, &run_options)
    };
    let told = run_with(Duration::from_secs(TOKEN_LEEWAY_S));
    assert!(told.ok() && told.cases.len() >= 3, "{}", told.render_tree(false, true));
    let untold = run_with(Duration::ZERO);
    assert!(
        untold.cases.iter().filter(|c| c.verdict == Verdict::Fail).count() >= 3,
        "{}",
        untold.render_tree(false, true)
    );
}

/// Issue 23.2 and 23.3: against a server without location (501 to route 24), each location case ends at the 501
/// (its failure names the 501, not a timeout) and is unimplemented; told `--without-route 24`, every case that
/// needs the route is not applicable and the run passes.
#[test]
fn a_partial_server_is_unimplemented_at_once_or_not_applicable() {
    use crate::faults::{Fault, Faults};
    let run_with = |without: Vec<i64>| {
        let mut options = SimOptions {
            faults: Faults::of([Fault::NoLocation]),
            ..SimOptions::default()
        };
        options.info.without_routes = without;
        // With a feature the partial server implements, so that something runs.
        let run_options = RunOptions {
            files: vec!["location.feature".into(), "logout.feature".into()],
            ..RunOptions::default()
        };
        in_simulation(options, &run_options)
    };
    let partial = run_with(Vec::new());
    let unimplemented: Vec<_> = partial
        .cases
        .iter()
        .filter(|c| c.verdict == Verdict::Unimplemented)
        .collect();
    assert!(
        unimplemented.len() >= 8 && !partial.ok(),
        "{}",
        partial.render_tree(false, false)
    );
    for case in &unimplemented {
        let Outcome::Failed { message, .. } = &case.outcome else {
            panic!("{} did not fail", case.name)
        };
        assert!(message.contains("501 unknown_route"), "{}: {message}", case.name);
    }
    let told = run_with(vec![24]);
    let not_applicable = told
        .cases
        .iter()
        .filter(|c| c.verdict == Verdict::NotApplicable)
        .count();
    assert!(told.ok(), "{}", told.render_tree(false, true));
    assert!(
        not_applicable >= unimplemented.len(),
        "{}",
        told.render_tree(false, false)
    );
    assert!(told.render_tree(false, false).contains("not applicable"));
}

/// Issue 23.2: `--area` selects by requirement prefix, `--exclude-area` leaves those out, and an ID or area that
/// no case has is a usage error.
#[test]
fn areas_select_by_requirement_prefix_and_unknown_selectors_are_errors() {
    use super::runner::{check_selectors, list};
    let select = |areas: &[&str], exclude: &[&str]| {
        list(&RunOptions {
            areas: areas.iter().map(|a| (*a).to_string()).collect(),
            exclude_areas: exclude.iter().map(|a| (*a).to_string()).collect(),
            ..RunOptions::default()
        })
        .expect("the features parse")
    };
    let in_awr = |c: &spec::Case| c.tags.iter().any(|t| t.starts_with("AWR-"));
    let awr = select(&["AWR"], &[]);
    assert!(awr.len() > 20 && awr.iter().all(in_awr));
    assert_eq!(select(&["awr"], &[]).len(), awr.len());
    let rest = select(&[], &["AWR"]);
    assert!(!rest.is_empty() && !rest.iter().any(in_awr));
    assert_eq!(rest.len() + awr.len(), select(&[], &[]).len());
    let both = select(&["AWR", "CHAT"], &[]);
    assert!(both.len() > awr.len() && both.iter().any(|c| c.tags.iter().any(|t| t.starts_with("CHAT-"))));
    let options = |req: &[&str], areas: &[&str]| RunOptions {
        requirements: req.iter().map(|r| (*r).to_string()).collect(),
        areas: areas.iter().map(|a| (*a).to_string()).collect(),
        ..RunOptions::default()
    };
    assert!(check_selectors(&options(&["AWR-9"], &["CHAT"])).is_ok());
    // An area given where an ID goes, an ID SPEC does not define, an area no case has.
    for bad in [
        options(&["AWR"], &[]),
        options(&["AWR-999"], &[]),
        options(&[], &["NOPE"]),
    ] {
        assert!(check_selectors(&bad).is_err(), "{bad:?}");
    }
}

/// Issue 23.5: a baseline entry must name a case; one may name the failure it expects, and a case that fails for
/// another reason fails; an unexpected pass shows where its scenario is.
#[test]
fn baseline_entries_name_a_case_and_the_failure_they_expect() {
    use super::runner::check_baseline;
    let first = spec::cases().expect("the features parse").remove(0);
    let good = [
        first.name.clone(),
        format!("{}:{}", first.file, first.line),
        "PING-1".to_string(),
        format!("{} => Expected", first.name),
    ];
    assert!(check_baseline(&good).is_ok());
    let neutral = spec::cases()
        .expect("the features parse")
        .into_iter()
        .find(|c| c.neutral)
        .expect("a neutral case");
    assert!(check_baseline(&[format!("{} [tcp]", neutral.name)]).is_ok());
    for stale in ["No such scenario", "pingpong.feature:99999", "PING-999"] {
        assert!(check_baseline(&[stale.to_string()]).is_err(), "{stale}");
    }
    let failing = case(
        &["PING-1", "must"],
        Outcome::Failed {
            step: "Then alice's phone receives a pong for \"p\"".into(),
            message: "Expected: a pong\nActual: nothing".into(),
        },
    );
    let listed = |entry: &str| verdict(&failing, false, &[entry.to_string()]);
    assert_eq!(listed("a case"), Verdict::ExpectedFailure);
    assert_eq!(listed("a case => receives a pong"), Verdict::ExpectedFailure);
    assert_eq!(listed("a case => Actual: nothing"), Verdict::ExpectedFailure);
    assert_eq!(listed("a case => is closed with code"), Verdict::Fail);
    let mut passed = case(&["PING-1", "must"], Outcome::Passed);
    passed.verdict = verdict(&passed, false, &["a case".to_string()]);
    assert_eq!(passed.verdict, Verdict::UnexpectedPass);
    let report = super::report::Report {
        driver: "simulation".into(),
        target: "t".into(),
        targets: Vec::new(),
        strict: false,
        duration_ms: 1,
        cases: vec![passed],
        parse_errors: Vec::new(),
        halted: None,
    };
    assert!(report.render_tree(false, false).contains("pingpong.feature:3"));
}

/// Issue 23.4: no report carries a whole token (transcripts and "Actual:" lines abbreviate them), and connection
/// outcomes read as sentences, not debug dumps.
#[test]
fn reports_abbreviate_tokens_and_say_outcomes_in_words() {
    use crate::proto::TokenRefreshResponse;
    use crate::proto::message_scheme::Payload;
    let token = format!("eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.{}.signature", "a".repeat(200));
    let payload = Payload::TokenRefreshResponse(TokenRefreshResponse {
        token: token.clone(),
        status: 1,
        ..Default::default()
    });
    let mut transcript = Transcript::default();
    transcript.received(5, "alice/phone", &crate::client::Event::Stanza(payload.clone()));
    let rendered = transcript.render();
    assert!(!rendered.contains(&token), "{rendered}");
    assert!(
        rendered.contains(&format!("eyJ0eX...ture ({} chars)", token.len())),
        "{rendered}"
    );
    let actual = super::world::shown(payload);
    assert!(
        !actual.contains(&token) && actual.starts_with("the stanza route 20 TokenRefreshResponse"),
        "{actual}"
    );
    assert_eq!(
        super::driver::ConnectOutcome::Opened.to_string(),
        "connected, with nothing sent and nothing answered yet"
    );
}

/// Issue 18: an outline's examples are told apart by name (`... (websocket, query)`), so every case of a feature
/// file has a name of its own in every report, and a baseline may name an example with or without its row.
#[test]
fn every_case_of_a_feature_has_its_own_name() {
    let cases = super::runner::list(&RunOptions::default()).expect("the features parse");
    let mut seen = std::collections::BTreeSet::new();
    for case in &cases {
        assert!(
            seen.insert((case.file.clone(), case.name.clone())),
            "{}: {} twice",
            case.file,
            case.name
        );
    }
    let expiry: Vec<_> = cases
        .iter()
        .filter(|c| c.scenario == "A session ends when its token expires")
        .collect();
    assert_eq!(expiry.len(), 2);
    assert!(
        expiry
            .iter()
            .any(|c| c.name.ends_with("(websocket)") && c.example.as_deref() == Some("websocket"))
    );
    assert!(super::runner::check_baseline(&["A session ends when its token expires (tcp)".to_string()]).is_ok());
    assert!(super::runner::check_baseline(&["A session ends when its token expires (udp)".to_string()]).is_err());
}

/// Client cases run in client mode only, server cases in server runs only, and every client case asks for a
/// client-mode step (so a server run could never pass one by accident).
#[test]
fn client_cases_run_in_client_mode_only() {
    let list = |client_mode| {
        super::runner::list(&RunOptions {
            client_mode,
            ..RunOptions::default()
        })
        .expect("the features parse")
    };
    let (server, client) = (list(false), list(true));
    assert!(!client.is_empty());
    assert!(client.iter().all(|c| c.file == spec::CLIENT_FEATURE));
    assert!(server.iter().all(|c| c.file != spec::CLIENT_FEATURE));
    let phrases = super::steps::client::steps();
    spec::each_scenario(|file, scenario| {
        let client_step = scenario.steps.iter().any(|s| {
            phrases.iter().any(|p| {
                cucumber::codegen::Regex::new(&format!("^{}$", p.pattern)).is_ok_and(|re| re.is_match(&s.value))
            })
        });
        assert_eq!(file == spec::CLIENT_FEATURE, client_step, "{file}: {}", scenario.name);
    });
}

/// Issue 17: a case spreads its devices over a cluster's nodes, round robin: the k-th distinct (EID, device) goes to
/// node k mod n, each reconnection of a device to the node after its previous one; raw HTTP requests take the
/// nodes in turn, apart from the devices. One node: everything on node 0.
#[test]
fn placement_spreads_devices_and_moves_reconnections() {
    use super::network::Placement;
    let mut three = Placement::default();
    assert_eq!(three.connection("alice", "phone", 3), 0);
    assert_eq!(three.connection("bob", "phone", 3), 1);
    assert_eq!(three.connection("alice", "laptop", 3), 2);
    assert_eq!(three.connection("carol", "phone", 3), 0, "the 4th device wraps around");
    // Alice's phone comes back: the node after its first, then the one after that.
    assert_eq!(three.connection("alice", "phone", 3), 1);
    assert_eq!(three.connection("alice", "phone", 3), 2);
    assert_eq!(three.connection("alice", "phone", 3), 0);
    // The same device name of another user is another device; a reconnection takes no rank from new devices.
    assert_eq!(three.connection("dave", "laptop", 3), 1);
    assert_eq!(three.connection("bob", "phone", 3), 2);
    // HTTP requests rotate on their own and leave the devices' ranks alone.
    assert_eq!(three.request(3), 0);
    assert_eq!(three.request(3), 1);
    assert_eq!(three.connection("erin", "phone", 3), 2);
    // Two nodes: alternation, and a device's second connection lands on the other node.
    let mut two = Placement::default();
    assert_eq!(two.connection("alice", "phone", 2), 0);
    assert_eq!(two.connection("bob", "phone", 2), 1);
    assert_eq!(two.connection("alice", "phone", 2), 1);
    assert_eq!(two.connection("bob", "phone", 2), 0);
    // One node (a single server): node 0 always, as before clusters.
    let mut one = Placement::default();
    for device in ["phone", "laptop", "phone", "tablet"] {
        assert_eq!(one.connection("alice", device, 1), 0);
        assert_eq!(one.request(1), 0);
    }
    // The same case placed again places the same way.
    let mut again = Placement::default();
    let first: Vec<usize> = ["a", "b", "a", "c", "b"]
        .iter()
        .map(|u| again.connection(u, "d", 2))
        .collect();
    let mut replay = Placement::default();
    let second: Vec<usize> = ["a", "b", "a", "c", "b"]
        .iter()
        .map(|u| replay.connection(u, "d", 2))
        .collect();
    assert_eq!(first, second);
    assert_eq!(first, vec![0, 1, 1, 0, 0]);
}

/// Issue 17: the JSON and JUnit reports name every URL checked (a cluster's every node).
#[test]
fn reports_name_every_target() {
    let report = html_report();
    let json: serde_json::Value = serde_json::from_str(&report.json()).expect("JSON");
    assert_eq!(
        json["targets"],
        serde_json::json!(["ws://127.0.0.1:1/ws", "ws://127.0.0.1:2/ws"])
    );
    let junit = report.junit();
    for url in ["ws://127.0.0.1:1/ws", "ws://127.0.0.1:2/ws"] {
        assert!(
            junit.contains(&format!("<property name=\"url\" value=\"{url}\"/>")),
            "{junit}"
        );
    }
    assert!(junit.contains("<property name=\"target\" value=\"a test target\"/>"));
}
