//! What the suite knows about SPEC.md and the feature files: the requirement
//! index (ID, level, area), the feature files (embedded, so `bimip-conform`
//! runs anywhere), each scenario's tags, and the coverage of MUST IDs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use cucumber::codegen::Regex;

use super::driver::TransportKind;

/// SPEC.md as this build knows it.
pub const SPEC: &str = include_str!("../SPEC.md");

/// Requirement IDs that no scenario covers, with the reason (one per line:
/// `ID reason`; `#` starts a comment).
pub const UNCOVERED: &str = include_str!("uncovered.txt");

/// The feature files, in SPEC section order: (file name, section, title, text).
pub const FEATURES: &[(&str, &str, &str, &str)] = &[
    (
        "transport.feature",
        "2",
        "Transports",
        include_str!("../features/transport.feature"),
    ),
    (
        "auth.feature",
        "3",
        "Authentication",
        include_str!("../features/auth.feature"),
    ),
    (
        "envelope.feature",
        "4",
        "Envelope",
        include_str!("../features/envelope.feature"),
    ),
    (
        "error.feature",
        "5",
        "Errors",
        include_str!("../features/error.feature"),
    ),
    (
        "session.feature",
        "6",
        "Sessions",
        include_str!("../features/session.feature"),
    ),
    (
        "pingpong.feature",
        "7",
        "PingPong",
        include_str!("../features/pingpong.feature"),
    ),
    (
        "token.feature",
        "8",
        "Token Control",
        include_str!("../features/token.feature"),
    ),
    (
        "logout.feature",
        "9",
        "Logout",
        include_str!("../features/logout.feature"),
    ),
    (
        "awareness.feature",
        "10",
        "Awareness",
        include_str!("../features/awareness.feature"),
    ),
    (
        "subscriber.feature",
        "11",
        "Subscribers",
        include_str!("../features/subscriber.feature"),
    ),
    (
        "block.feature",
        "12",
        "Blocking",
        include_str!("../features/block.feature"),
    ),
    (
        "visibility.feature",
        "13",
        "Visibility",
        include_str!("../features/visibility.feature"),
    ),
    (
        "location.feature",
        "14",
        "Location",
        include_str!("../features/location.feature"),
    ),
    ("chat.feature", "15", "Chat", include_str!("../features/chat.feature")),
    (
        "ack.feature",
        "16",
        "Acknowledgments",
        include_str!("../features/ack.feature"),
    ),
    (
        "queue.feature",
        "17",
        "Offline Queue and Retention",
        include_str!("../features/queue.feature"),
    ),
    (
        "push.feature",
        "18",
        "Push and Body",
        include_str!("../features/push.feature"),
    ),
    (
        CLIENT_FEATURE,
        "21",
        "Clients",
        include_str!("../features/client.feature"),
    ),
];

/// The cases that check a client (client mode), not a server.
pub const CLIENT_FEATURE: &str = "client.feature";

/// A requirement's level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Must,
    Should,
    May,
}

/// One numbered requirement of SPEC.md.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Requirement {
    pub id: String,
    pub level: Level,
}

/// Every `**AREA-N** (LEVEL)` paragraph of `spec`, in document order.
pub fn requirements(spec: &str) -> Vec<Requirement> {
    let re = Regex::new(r"\*\*([A-Z]+-\d+)\*\* \((MUST|SHOULD|MAY)\)").expect("requirement pattern");
    let mut seen = BTreeSet::new();
    re.captures_iter(spec)
        .filter_map(|c| {
            let id = c.get(1)?.as_str().to_string();
            let level = match c.get(2)?.as_str() {
                "MUST" => Level::Must,
                "SHOULD" => Level::Should,
                _ => Level::May,
            };
            seen.insert(id.clone()).then_some(Requirement { id, level })
        })
        .collect()
}

/// The IDs of `uncovered.txt` with their reasons.
pub fn uncovered(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (id, reason) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            (id.to_string(), reason.trim().to_string())
        })
        .collect()
}

/// Whether a tag names a requirement ("ENV-5").
pub fn is_requirement_tag(tag: &str) -> bool {
    let Some((prefix, number)) = tag.split_once('-') else {
        return false;
    };
    !prefix.is_empty()
        && prefix.chars().all(|c| c.is_ascii_uppercase())
        && !number.is_empty()
        && number.chars().all(|c| c.is_ascii_digit())
}

/// One scenario (an outline counts once per example row) as listed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Case {
    pub file: String,
    pub section: String,
    pub area: String,
    /// What reports call the case: the scenario's name, its example row, its transport.
    pub name: String,
    /// The scenario's own name.
    pub scenario: String,
    pub line: usize,
    /// Feature and scenario tags, without '@'.
    pub tags: Vec<String>,
    /// About no transport ([`is_neutral`]): runs once per transport the target offers.
    pub neutral: bool,
    /// The transport of this run of a neutral case (its name ends in it: `... [tcp]`); None for the others.
    pub transport: Option<TransportKind>,
    /// An outline example's row, as its name shows it: `... (websocket, query)`.
    pub example: Option<String>,
}

impl Case {
    /// This neutral case's run over `transport`, named for it.
    pub fn over(&self, transport: TransportKind) -> Case {
        Case {
            name: name_over(&self.name, transport),
            transport: Some(transport),
            ..self.clone()
        }
    }

    pub fn requirements(&self) -> Vec<String> {
        self.tags.iter().filter(|t| is_requirement_tag(t)).cloned().collect()
    }
}

/// Every scenario of the embedded features.
pub fn cases() -> Result<Vec<Case>, String> {
    let mut out = Vec::new();
    for (file, section, area, text) in FEATURES {
        let feature = cucumber::gherkin::Feature::parse(text, cucumber::gherkin::GherkinEnv::default())
            .map_err(|e| format!("{file}: {e}"))?;
        let mut scenarios: Vec<(Option<&cucumber::gherkin::Rule>, &cucumber::gherkin::Scenario)> =
            feature.scenarios.iter().map(|s| (None, s)).collect();
        for rule in &feature.rules {
            scenarios.extend(rule.scenarios.iter().map(|s| (Some(rule), s)));
        }
        for (rule, scenario) in scenarios {
            let neutral = is_neutral(&feature, rule, scenario);
            let mut tags = feature.tags.clone();
            tags.extend(scenario.tags.iter().cloned());
            let case = |line: usize, example: Option<String>| Case {
                file: (*file).to_string(),
                section: (*section).to_string(),
                area: (*area).to_string(),
                name: name_of(&scenario.name, example.as_deref()),
                scenario: scenario.name.clone(),
                line,
                tags: tags.clone(),
                neutral,
                transport: None,
                example,
            };
            let rows = example_rows(scenario);
            if rows.is_empty() {
                out.push(case(scenario.position.line, None));
            }
            for (line, label) in rows {
                out.push(case(line, Some(label)));
            }
        }
    }
    Ok(out)
}

/// An outline's example rows: the line cucumber gives each expanded scenario (its row's) and the row's cells as a
/// label.
pub fn example_rows(scenario: &cucumber::gherkin::Scenario) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for examples in &scenario.examples {
        let Some(table) = &examples.table else { continue };
        for (index, row) in table.rows.iter().skip(1).enumerate() {
            // Whole cells: two rows may differ only at the end of a long one.
            out.push((examples.position.line + index + 2, row.join(", ")));
        }
    }
    out
}

/// The label of the example row at `line` of `file`, when an outline's example is there: what a case cucumber
/// ran from that row is called ([`name_of`]).
pub fn example_at(file: &str, line: usize) -> Option<String> {
    static ROWS: std::sync::OnceLock<BTreeMap<(String, usize), String>> = std::sync::OnceLock::new();
    ROWS.get_or_init(|| {
        let mut rows = BTreeMap::new();
        each_scenario(|file, scenario| {
            for (at, label) in example_rows(scenario) {
                rows.insert((file.to_string(), at), label);
            }
        });
        rows
    })
    .get(&(file.to_string(), line))
    .cloned()
}

/// Calls `f` with each scenario of the embedded features (rules' too) and its file name, in file order; a feature
/// that does not parse is left out (`cases` reports it).
pub fn each_scenario(mut f: impl FnMut(&str, &cucumber::gherkin::Scenario)) {
    for (file, _, _, text) in FEATURES {
        let Ok(feature) = cucumber::gherkin::Feature::parse(text, cucumber::gherkin::GherkinEnv::default()) else {
            continue;
        };
        let scenarios = feature
            .scenarios
            .iter()
            .chain(feature.rules.iter().flat_map(|r| r.scenarios.iter()));
        for scenario in scenarios {
            f(file, scenario);
        }
    }
}

/// A case's name: the scenario's, with its example row when it is one.
pub fn name_of(scenario: &str, example: Option<&str>) -> String {
    match example {
        Some(label) => format!("{scenario} ({label})"),
        None => scenario.to_string(),
    }
}

/// A neutral case's name in the run over `transport`.
pub fn name_over(name: &str, transport: TransportKind) -> String {
    format!("{name} [{transport}]")
}

/// Whether a scenario takes the server down ("the server restarts", "... is killed and started again"): the
/// runner runs those cases alone, after the others, since a restart ends every session on the target.
pub fn restarts(scenario: &cucumber::gherkin::Scenario) -> bool {
    use super::steps::transport::{KILLED, RESTARTS};
    scenario
        .steps
        .iter()
        .any(|step| step.value == RESTARTS || step.value == KILLED)
}

/// Whether a scenario is about no transport: neither its steps nor a background before them name one (no
/// "websocket", "tcp" or `<transport>`, nor do an outline's examples), and it opens connections ("alice is connected as ...", "alice's phone connects with ..."). Such a scenario
/// runs once per transport the target offers, each run's connections over that transport; a rule that is a
/// transport's own (WebSocket close codes, TCP framing), or that compares the two, names them in its steps.
pub fn is_neutral(
    feature: &cucumber::gherkin::Feature,
    rule: Option<&cucumber::gherkin::Rule>,
    scenario: &cucumber::gherkin::Scenario,
) -> bool {
    let backgrounds = feature
        .background
        .iter()
        .chain(rule.and_then(|r| r.background.as_ref()))
        .flat_map(|b| b.steps.iter());
    let names_transport = |text: &str| {
        let text = text.to_ascii_lowercase();
        text.contains("websocket") || text.contains("tcp")
    };
    // An outline whose examples give the transports (`over <old>`) names them too.
    let in_examples = scenario
        .examples
        .iter()
        .filter_map(|e| e.table.as_ref())
        .any(|t| t.rows.iter().flatten().any(|cell| names_transport(cell)));
    if in_examples {
        return false;
    }
    let mut connects = false;
    for step in backgrounds.chain(scenario.steps.iter()) {
        if names_transport(&step.value) || step.value.contains("<transport>") {
            return false;
        }
        connects |= step.value.contains(" is connected ") || step.value.contains(" connects ");
    }
    connects
}

/// Writes the embedded features into `dir` (for cucumber's file parser).
pub fn write_features(dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    for (file, _, _, text) in FEATURES {
        std::fs::write(dir.join(file), text)?;
    }
    Ok(dir.to_path_buf())
}

/// The section and area title of a feature file name.
pub fn area_of(file: &str) -> (&'static str, &'static str) {
    FEATURES
        .iter()
        .find(|(f, ..)| *f == file)
        .map_or(("?", "Other"), |(_, section, area, _)| (*section, *area))
}

/// MUST IDs that neither a scenario nor `uncovered.txt` accounts for, and
/// `uncovered.txt` IDs that are not MUST IDs of SPEC (stale entries).
pub fn coverage_gaps(spec: &str, cases: &[Case], uncovered_text: &str) -> (Vec<String>, Vec<String>) {
    let tagged: BTreeSet<String> = cases.iter().flat_map(Case::requirements).collect();
    let allowed = uncovered(uncovered_text);
    let reqs = requirements(spec);
    let musts: BTreeSet<String> = reqs
        .iter()
        .filter(|r| r.level == Level::Must)
        .map(|r| r.id.clone())
        .collect();
    let missing = musts
        .iter()
        .filter(|id| !tagged.contains(*id) && !allowed.contains_key(*id))
        .cloned()
        .collect();
    let stale = allowed.keys().filter(|id| !musts.contains(*id)).cloned().collect();
    (missing, stale)
}
