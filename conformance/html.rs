//! The HTML report (`bimip-conform --html DIR`): one self-contained
//! `index.html` (inline CSS and JS, nothing fetched), with the summary
//! counts, filters by verdict, area and tag, and for every case that did not
//! pass its failing step, Expected/Actual and the timestamped, decoded
//! transcript of each connection.
//!
//! All report text goes into element content or attributes, escaped; the
//! script reads only `data-*` attributes, so no report text is ever code.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::driver::Transcript;
use super::report::{CaseResult, Outcome, Report, Verdict};

const STYLE: &str = r#"
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 .2em; }
.meta { color: #555; margin-bottom: 1em; }
.counts span { display: inline-block; padding: .2em .6em; margin: 0 .4em .4em 0; border-radius: 4px; }
.filters { margin: 1em 0; display: flex; gap: 1em; flex-wrap: wrap; align-items: center; }
h2 { font-size: 1.1em; margin: 1.2em 0 .3em; }
details.case { border-left: 4px solid #ccc; margin: .2em 0; padding: .1em .6em; }
details.case > summary { cursor: pointer; }
.ids { color: #666; font-size: .9em; }
.v-pass { background: #e6f4ea; border-color: #2e7d32; }
.v-fail, .v-unexpected-pass { background: #fdecea; border-color: #c62828; }
.v-non-strict, .v-expected-failure { background: #fff8e1; border-color: #f9a825; }
.v-unimplemented, .v-skipped { background: #e3f2fd; border-color: #1565c0; }
dl.outcome dt { font-weight: bold; margin-top: .4em; }
dl.outcome dd { margin: 0 0 0 1em; white-space: pre-wrap; font-family: ui-monospace, monospace; }
table.transcript { border-collapse: collapse; margin: .5em 0; font: 12px ui-monospace, monospace; }
table.transcript td { padding: 0 .6em; vertical-align: top; white-space: pre-wrap; }
table.transcript tr.d-sent td.dir { color: #1565c0; }
table.transcript tr.d-received td.dir { color: #2e7d32; }
table.transcript tr.d-note { color: #777; }
.hidden { display: none; }
"#;

const SCRIPT: &str = r#"
function applyFilters() {
  var verdict = document.getElementById('f-verdict').value;
  var area = document.getElementById('f-area').value;
  var tag = document.getElementById('f-tag').value.trim().replace(/^@/, '');
  var shown = 0;
  document.querySelectorAll('details.case').forEach(function (el) {
    var tags = el.getAttribute('data-tags').split(' ');
    var ok = (verdict === '' || el.getAttribute('data-verdict') === verdict)
      && (area === '' || el.getAttribute('data-area') === area)
      && (tag === '' || tags.indexOf(tag) >= 0);
    el.classList.toggle('hidden', !ok);
    if (ok) { shown += 1; }
  });
  document.querySelectorAll('section.area').forEach(function (sec) {
    sec.classList.toggle('hidden', sec.querySelectorAll('details.case:not(.hidden)').length === 0);
  });
  document.getElementById('shown').textContent = shown;
}
function filterConnection(select) {
  var conn = select.value;
  select.closest('.transcript-box').querySelectorAll('tr[data-conn]').forEach(function (tr) {
    tr.classList.toggle('hidden', conn !== '' && tr.getAttribute('data-conn') !== conn);
  });
}
document.addEventListener('DOMContentLoaded', function () {
  ['f-verdict', 'f-area', 'f-tag'].forEach(function (id) {
    document.getElementById(id).addEventListener('input', applyFilters);
  });
  document.querySelectorAll('select.conn').forEach(function (s) {
    s.addEventListener('input', function () { filterConnection(s); });
  });
  applyFilters();
});
"#;

/// Escapes text for HTML content and double-quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A verdict as a CSS class and `data-verdict` value.
fn slug(verdict: Verdict) -> String {
    verdict.label().replace(' ', "-")
}

/// "Expected: a\nActual: b" split into its halves; None if not in that form.
fn expected_actual(message: &str) -> Option<(&str, &str)> {
    let start = message.find("Expected:")?;
    let actual = message[start..].find("\nActual:")? + start;
    let expected = message[start + "Expected:".len()..actual].trim();
    let actual = message[actual + "\nActual:".len()..].trim();
    Some((expected, actual))
}

fn transcript_html(out: &mut String, transcript: &Transcript) {
    let conns: BTreeSet<&str> = transcript.entries.iter().map(|e| e.conn.as_str()).collect();
    out.push_str("<div class=\"transcript-box\"><b>Transcript</b> ");
    out.push_str("<label>connection <select class=\"conn\"><option value=\"\">all</option>");
    for conn in &conns {
        let _ = write!(out, "<option>{}</option>", escape(conn));
    }
    out.push_str("</select></label>\n<table class=\"transcript\">\n");
    for entry in transcript.sorted() {
        let class = match entry.dir {
            "->" => "d-sent",
            "<-" => "d-received",
            _ => "d-note",
        };
        let _ = writeln!(
            out,
            "<tr class=\"{class}\" data-conn=\"{conn}\"><td>{at} ms</td><td>{conn}</td><td class=\"dir\">{dir}</td><td>{text}</td></tr>",
            at = entry.at_ms,
            conn = escape(&entry.conn),
            dir = escape(entry.dir),
            text = escape(&entry.text),
        );
    }
    out.push_str("</table></div>\n");
}

fn case_html(out: &mut String, case: &CaseResult) {
    let verdict = slug(case.verdict);
    let ids = case.requirements().join(" ");
    let open = matches!(case.verdict, Verdict::Fail | Verdict::UnexpectedPass);
    let _ = writeln!(
        out,
        "<details class=\"case v-{verdict}\" data-verdict=\"{verdict}\" data-area=\"{area}\" data-tags=\"{tags}\"{open}>",
        area = escape(&case.area),
        tags = escape(&case.tags.join(" ")),
        open = if open { " open" } else { "" },
    );
    let _ = writeln!(
        out,
        "<summary>{label}: {name} <span class=\"ids\">[{ids}] {ms} ms</span></summary>",
        label = escape(case.verdict.label()),
        name = escape(&case.name),
        ids = escape(&ids),
        ms = case.duration_ms,
    );
    let _ = writeln!(
        out,
        "<dl class=\"outcome\"><dt>Where</dt><dd>features/{}:{}</dd><dt>Tags</dt><dd>{}</dd>",
        escape(&case.file),
        case.line,
        escape(&case.tags.iter().map(|t| format!("@{t}")).collect::<Vec<_>>().join(" "))
    );
    match &case.outcome {
        Outcome::Passed if case.verdict == Verdict::UnexpectedPass => {
            out.push_str("<dt>Outcome</dt><dd>listed as an expected failure, but it passed</dd>");
        }
        Outcome::Passed => {}
        Outcome::Skipped { reason } => {
            let _ = write!(out, "<dt>Skipped</dt><dd>{}</dd>", escape(reason));
        }
        Outcome::NotApplicable { reason } => {
            let _ = write!(out, "<dt>Not applicable</dt><dd>{}</dd>", escape(reason));
        }
        Outcome::Failed { step, message } => {
            let _ = write!(out, "<dt>Step</dt><dd>{}</dd>", escape(step));
            match expected_actual(message) {
                Some((expected, actual)) => {
                    let _ = write!(
                        out,
                        "<dt>Expected</dt><dd class=\"expected\">{}</dd><dt>Actual</dt><dd class=\"actual\">{}</dd>",
                        escape(expected),
                        escape(actual)
                    );
                }
                None => {
                    let _ = write!(out, "<dt>Message</dt><dd>{}</dd>", escape(message));
                }
            }
        }
    }
    out.push_str("</dl>\n");
    if let Some(transcript) = &case.transcript {
        transcript_html(out, transcript);
    }
    out.push_str("</details>\n");
}

/// The whole report as one HTML page.
pub fn render(report: &Report) -> String {
    let mut out = String::from("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<title>bimip-conform report</title>\n<style>");
    out.push_str(STYLE);
    out.push_str("</style>\n<script>");
    out.push_str(SCRIPT);
    out.push_str("</script>\n</head>\n<body>\n<h1>bimip-conform report</h1>\n");
    let _ = writeln!(
        out,
        "<div class=\"meta\">Target: {} &middot; driver: {} &middot; {} cases in {:.1} s{} &middot; <b>{}</b></div>",
        escape(&report.target),
        escape(&report.driver),
        report.cases.len(),
        report.duration_ms as f64 / 1000.0,
        if report.strict { " &middot; strict" } else { "" },
        if report.ok() { "PASSED" } else { "FAILED" }
    );
    out.push_str("<div class=\"counts\">");
    for (verdict, count) in report.counts() {
        let _ = write!(
            out,
            "<span class=\"v-{}\" data-count=\"{}\">{} {}</span>",
            slug(verdict),
            count,
            count,
            escape(verdict.label())
        );
    }
    out.push_str("</div>\n");
    out.push_str("<div class=\"filters\"><label>Verdict <select id=\"f-verdict\"><option value=\"\">all</option>");
    for verdict in report.counts().keys() {
        let _ = write!(
            out,
            "<option value=\"{}\">{}</option>",
            slug(*verdict),
            escape(verdict.label())
        );
    }
    out.push_str("</select></label><label>Area <select id=\"f-area\"><option value=\"\">all</option>");
    let mut areas: Vec<(&str, &str)> = Vec::new();
    for case in &report.cases {
        if !areas.iter().any(|(_, a)| *a == case.area) {
            areas.push((&case.section, &case.area));
        }
    }
    for (section, area) in &areas {
        let _ = write!(
            out,
            "<option value=\"{}\">§{} {}</option>",
            escape(area),
            escape(section),
            escape(area)
        );
    }
    out.push_str("</select></label><label>Tag <input id=\"f-tag\" placeholder=\"@CHAT-7, @must\"></label>");
    let _ = writeln!(
        out,
        "<span><span id=\"shown\">{}</span> shown</span></div>",
        report.cases.len()
    );
    for (section, area) in &areas {
        let _ = writeln!(
            out,
            "<section class=\"area\"><h2>§{} {}</h2>",
            escape(section),
            escape(area)
        );
        for case in report.cases.iter().filter(|c| c.area == *area) {
            case_html(&mut out, case);
        }
        out.push_str("</section>\n");
    }
    for error in &report.parse_errors {
        let _ = writeln!(out, "<p class=\"v-fail\">parse error: {}</p>", escape(error));
    }
    out.push_str("</body>\n</html>\n");
    out
}

/// Writes `DIR/index.html`; returns its path.
pub fn write(report: &Report, dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("index.html");
    std::fs::write(&path, render(report))?;
    Ok(path)
}
