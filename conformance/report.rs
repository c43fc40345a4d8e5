//! Verdicts and reports: one verdict per case (pass, fail, non-strict,
//! unimplemented, skipped, and for known failures expected-failure or
//! unexpected-pass), a terminal tree by SPEC section, JUnit XML and JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::driver::{Transcript, TransportKind};
use super::spec::{area_of, is_requirement_tag};

/// How a case ended, before the verdict rules are applied.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    Passed,
    /// A step failed: the step's text and the failure message.
    Failed {
        step: String,
        message: String,
    },
    /// A step skipped the case: why.
    Skipped {
        reason: String,
    },
    /// The case needs a route the target says it does not implement (`--without-route`): which.
    NotApplicable {
        reason: String,
    },
}

/// The verdict of one case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Pass,
    /// Failed, but it checks only SHOULD/MAY rules (fails with --strict).
    NonStrict,
    /// The server answered 501 unknown_route to a route SPEC defines.
    Unimplemented,
    /// Needs a route the target was declared not to implement (`--without-route`).
    NotApplicable,
    Skipped,
    /// Failed, and listed in the expected failures.
    ExpectedFailure,
    /// Passed, but listed in the expected failures.
    UnexpectedPass,
    Fail,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::NonStrict => "non-strict",
            Verdict::Unimplemented => "unimplemented",
            Verdict::NotApplicable => "not applicable",
            Verdict::Skipped => "skipped",
            Verdict::ExpectedFailure => "expected failure",
            Verdict::UnexpectedPass => "unexpected pass",
            Verdict::Fail => "fail",
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Verdict::Pass => "✔",
            Verdict::NonStrict => "~",
            Verdict::Unimplemented => "∅",
            Verdict::NotApplicable => "n/a",
            Verdict::Skipped => "-",
            Verdict::ExpectedFailure => "x",
            Verdict::UnexpectedPass => "!",
            Verdict::Fail => "✘",
        }
    }

    fn colour(self) -> &'static str {
        match self {
            Verdict::Pass => "\x1b[32m",
            Verdict::NonStrict | Verdict::ExpectedFailure => "\x1b[33m",
            Verdict::Unimplemented | Verdict::NotApplicable | Verdict::Skipped => "\x1b[36m",
            Verdict::UnexpectedPass | Verdict::Fail => "\x1b[31m",
        }
    }
}

/// One case's result.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CaseResult {
    pub file: String,
    pub section: String,
    pub area: String,
    /// The scenario's name; a transport-neutral case's ends in its run's transport (`... [tcp]`).
    pub name: String,
    /// The transport of a transport-neutral case's run; None for a case that names its transports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transport: Option<TransportKind>,
    /// An outline example's row (the name shows it too: `... (websocket, query)`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub example: Option<String>,
    pub line: usize,
    pub tags: Vec<String>,
    pub outcome: Outcome,
    /// The server answered 501 unknown_route to a defined route.
    pub unimplemented: bool,
    pub duration_ms: u64,
    pub verdict: Verdict,
    /// Every connection's stanzas (kept for failures).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcript: Option<Transcript>,
}

impl CaseResult {
    /// The scenario's name, without the example row and the transport a case's name may add to it.
    pub fn scenario(&self) -> &str {
        let name = match self.transport {
            Some(t) => self.name.strip_suffix(&format!(" [{t}]")).unwrap_or(&self.name),
            None => &self.name,
        };
        match &self.example {
            Some(label) => name.strip_suffix(&format!(" ({label})")).unwrap_or(name),
            None => name,
        }
    }

    pub fn requirements(&self) -> Vec<String> {
        self.tags.iter().filter(|t| is_requirement_tag(t)).cloned().collect()
    }

    /// Only @should/@may: a failure is a warning unless --strict.
    pub fn lenient(&self) -> bool {
        let has = |t: &str| self.tags.iter().any(|x| x == t);
        !has("must") && (has("should") || has("may"))
    }

    /// Whether an expected-failures entry names this case.
    /// The expected-failures entry that lists this case, if one does ([`split_entry`]).
    pub fn listed_in<'a>(&self, expected: &'a [String]) -> Option<&'a str> {
        expected.iter().map(String::as_str).find(|e| {
            let (named, _) = split_entry(e);
            named == self.name
                || named == self.scenario()
                || named == super::spec::name_of(self.scenario(), self.example.as_deref())
                || named == format!("{}:{}", self.file, self.line)
                || self.requirements().iter().any(|r| r == named)
        })
    }
}

/// An expected-failures entry: the case it names (scenario name, `file:line` or requirement ID) and, after ` => `,
/// the failure it expects: text of the failing step or its message. A listed case that fails otherwise fails.
pub fn split_entry(entry: &str) -> (&str, Option<&str>) {
    match entry.split_once(" => ") {
        Some((named, reason)) => (named.trim(), Some(reason.trim())),
        None => (entry.trim(), None),
    }
}

/// Applies the verdict rules to an outcome.
pub fn verdict(case: &CaseResult, strict: bool, expected: &[String]) -> Verdict {
    let entry = case.listed_in(expected);
    let listed = match (&case.outcome, entry.and_then(|e| split_entry(e).1)) {
        // Listed for another failure than this one: this failure is new.
        (Outcome::Failed { step, message }, Some(reason)) => step.contains(reason) || message.contains(reason),
        _ => entry.is_some(),
    };
    match &case.outcome {
        Outcome::Skipped { .. } => Verdict::Skipped,
        Outcome::NotApplicable { .. } => Verdict::NotApplicable,
        Outcome::Passed if listed => Verdict::UnexpectedPass,
        Outcome::Passed => Verdict::Pass,
        Outcome::Failed { .. } if listed => Verdict::ExpectedFailure,
        Outcome::Failed { .. } if case.unimplemented => Verdict::Unimplemented,
        Outcome::Failed { .. } if case.lenient() && !strict => Verdict::NonStrict,
        Outcome::Failed { .. } => Verdict::Fail,
    }
}

/// The results of one run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub driver: String,
    pub target: String,
    /// Every URL checked ([`super::runner::RunOptions::targets`]): one per node of a cluster.
    pub targets: Vec<String>,
    pub strict: bool,
    pub duration_ms: u64,
    pub cases: Vec<CaseResult>,
    /// Feature files cucumber could not parse.
    pub parse_errors: Vec<String>,
    /// Why the run stopped before its last case, if it did: its deadline passed, or the target stopped answering
    /// (`RunOptions::deadline`); the cases after are skipped with that reason.
    pub halted: Option<String>,
}

impl Report {
    /// Counts per verdict.
    pub fn counts(&self) -> BTreeMap<Verdict, usize> {
        let mut counts = BTreeMap::new();
        for case in &self.cases {
            *counts.entry(case.verdict).or_insert(0) += 1;
        }
        counts
    }

    /// Whether the run succeeded: some case ran, none failed (non-strict
    /// passes without --strict, skipped and expected failures do not fail).
    pub fn ok(&self) -> bool {
        let ran = self
            .cases
            .iter()
            .any(|c| !matches!(c.verdict, Verdict::Skipped | Verdict::NotApplicable));
        let bad = self.cases.iter().any(|c| {
            matches!(
                c.verdict,
                Verdict::Fail | Verdict::Unimplemented | Verdict::UnexpectedPass
            )
        });
        ran && !bad && self.parse_errors.is_empty() && self.halted.is_none()
    }

    pub fn summary(&self) -> String {
        let counts = self.counts();
        let parts: Vec<String> = counts.iter().map(|(v, n)| format!("{n} {}", v.label())).collect();
        let halted = match &self.halted {
            Some(why) => format!("; stopped early: {why}"),
            None => String::new(),
        };
        format!(
            "{} cases: {} ({:.1} s, {}){halted}",
            self.cases.len(),
            if parts.is_empty() {
                "none".to_string()
            } else {
                parts.join(", ")
            },
            self.duration_ms as f64 / 1000.0,
            self.driver
        )
    }

    /// The terminal tree, by SPEC section; failures with details.
    pub fn render_tree(&self, colour: bool, verbose: bool) -> String {
        let paint = |v: Verdict, text: &str| {
            if colour {
                format!("{}{text}\x1b[0m", v.colour())
            } else {
                text.to_string()
            }
        };
        let mut out = String::new();
        let mut by_file: Vec<(&str, Vec<&CaseResult>)> = Vec::new();
        for case in &self.cases {
            match by_file.iter_mut().find(|(f, _)| *f == case.file) {
                Some((_, list)) => list.push(case),
                None => by_file.push((&case.file, vec![case])),
            }
        }
        by_file.sort_by_key(|(f, _)| area_of(f).0.parse::<u32>().unwrap_or(99));
        for (file, cases) in by_file {
            let (section, area) = area_of(file);
            let passed = cases.iter().filter(|c| c.verdict == Verdict::Pass).count();
            let _ = writeln!(out, "§{section} {area} ({passed}/{} passed)", cases.len());
            for case in cases {
                let ids = case.requirements().join(" ");
                let _ = writeln!(
                    out,
                    "  {} {} [{ids}]{}",
                    paint(case.verdict, case.verdict.symbol()),
                    case.name,
                    match case.verdict {
                        Verdict::Pass => String::new(),
                        v => format!(" {}", paint(v, v.label())),
                    }
                );
                let detail = verbose
                    || matches!(
                        case.verdict,
                        Verdict::Fail | Verdict::UnexpectedPass | Verdict::Unimplemented
                    );
                match &case.outcome {
                    Outcome::Skipped { reason } | Outcome::NotApplicable { reason } => {
                        let _ = writeln!(out, "      {reason}");
                    }
                    Outcome::Passed if case.verdict == Verdict::UnexpectedPass => {
                        let _ = writeln!(
                            out,
                            "      {}:{}: listed as an expected failure, but it passed (remove it from the list)",
                            case.file, case.line
                        );
                    }
                    Outcome::Failed { step, message } if detail || case.verdict == Verdict::NonStrict => {
                        let _ = writeln!(out, "      {}:{} step: {step}", case.file, case.line);
                        for line in message.lines() {
                            let _ = writeln!(out, "      {line}");
                        }
                        if detail && let Some(t) = &case.transcript {
                            let _ = writeln!(out, "      transcript:");
                            for line in t.render().lines() {
                                let _ = writeln!(out, "      {line}");
                            }
                        }
                    }
                    Outcome::Passed if case.verdict == Verdict::UnexpectedPass => {
                        let _ = writeln!(out, "      listed as an expected failure, but it passed");
                    }
                    _ => {}
                }
            }
        }
        for error in &self.parse_errors {
            let _ = writeln!(out, "parse error: {error}");
        }
        let _ = writeln!(out, "{}", self.summary());
        out
    }

    /// JUnit XML: one testsuite per SPEC section, one testcase per case.
    pub fn junit(&self) -> String {
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let failing = |c: &CaseResult| {
            matches!(
                c.verdict,
                Verdict::Fail | Verdict::Unimplemented | Verdict::UnexpectedPass
            )
        };
        let _ = writeln!(
            out,
            "<testsuites name=\"bimip-conform\" tests=\"{}\" failures=\"{}\" time=\"{:.3}\">",
            self.cases.len(),
            self.cases.iter().filter(|c| failing(c)).count(),
            self.duration_ms as f64 / 1000.0
        );
        let mut files: Vec<&str> = self.cases.iter().map(|c| c.file.as_str()).collect();
        files.dedup();
        for file in files {
            let cases: Vec<&CaseResult> = self.cases.iter().filter(|c| c.file == file).collect();
            let (section, area) = area_of(file);
            let _ = writeln!(
                out,
                "  <testsuite name=\"{} {}\" tests=\"{}\" failures=\"{}\" skipped=\"{}\">",
                xml(section),
                xml(area),
                cases.len(),
                cases.iter().filter(|c| failing(c)).count(),
                cases.iter().filter(|c| c.verdict == Verdict::Skipped).count()
            );
            out.push_str(&self.junit_properties());
            for case in cases {
                let _ = write!(
                    out,
                    "    <testcase classname=\"{}\" name=\"{} [{}]\" time=\"{:.3}\">",
                    xml(file),
                    xml(&case.name),
                    xml(&case.requirements().join(" ")),
                    case.duration_ms as f64 / 1000.0
                );
                match (&case.outcome, case.verdict) {
                    (Outcome::Skipped { reason } | Outcome::NotApplicable { reason }, _) => {
                        let _ = write!(out, "<skipped message=\"{}\"/>", xml(reason));
                    }
                    (Outcome::Failed { step, message }, v) if failing(case) => {
                        let transcript = case.transcript.as_ref().map(Transcript::render).unwrap_or_default();
                        let _ = write!(
                            out,
                            "<failure type=\"{}\" message=\"{}\">{}\n\nstep: {}\n\ntranscript:\n{}</failure>",
                            v.label(),
                            xml(message.lines().next().unwrap_or_default()),
                            xml(message),
                            xml(step),
                            xml(&transcript)
                        );
                    }
                    (Outcome::Passed, Verdict::UnexpectedPass) => {
                        let _ = write!(
                            out,
                            "<failure type=\"unexpected pass\" message=\"listed as an expected failure, but it passed\"/>"
                        );
                    }
                    (Outcome::Failed { message, .. }, v) => {
                        let _ = write!(out, "<system-out>{}: {}</system-out>", v.label(), xml(message));
                    }
                    _ => {}
                }
                out.push_str("</testcase>\n");
            }
            out.push_str("  </testsuite>\n");
        }
        out.push_str("</testsuites>\n");
        out
    }

    /// A testsuite's `<properties>`: what was checked, and each URL (one per node of a cluster).
    fn junit_properties(&self) -> String {
        let mut out = String::from("    <properties>\n");
        let _ = writeln!(out, "      <property name=\"target\" value=\"{}\"/>", xml(&self.target));
        for url in &self.targets {
            let _ = writeln!(out, "      <property name=\"url\" value=\"{}\"/>", xml(url));
        }
        out.push_str("    </properties>\n");
        out
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

/// Escapes text for XML attributes and content.
fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() && c != '\n' && c != '\t' => out.push_str(&format!("&#x{:x};", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}
