//! Runs selected cases with cucumber against a driver factory and turns
//! cucumber's event stream into a [`Report`].
//!
//! Cucumber runs on the calling thread under `futures::executor::block_on`
//! (never inside a tokio runtime: the simulation steps tokio runtimes of its
//! own), one scenario at a time. A custom [`cucumber::Writer`] collects each
//! scenario's steps; the failing step hands over the World, whose transcript
//! goes into the report.

use std::cell::Cell;
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use cucumber::event::{self, Cucumber as CucumberEvent, RetryableScenario};
use cucumber::gherkin::tagexpr::TagOperation;
use cucumber::tag::Ext as _;
use cucumber::{Event, Writer, WriterExt as _, cli, parser, runner};

use super::driver::TransportKind;
use super::report::{CaseResult, Outcome, Report, verdict};
use super::spec::{self, area_of};
use super::steps;
use super::world::{
    CaseWorld, Halt, NOT_APPLICABLE_PREFIX, SKIP_PREFIX, SharedFactory, set_factory, set_halt, set_pass,
    take_connect_failure,
};

/// What to run and how to judge it.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// A cucumber tag expression, e.g. `@must and not @slow`.
    pub tags: Option<String>,
    /// Cases matching this tag expression are left out.
    pub exclude: Option<String>,
    /// Only cases tagged with one of these requirement IDs.
    pub requirements: Vec<String>,
    /// Only cases with a requirement of one of these areas (`AWR` selects `@AWR-3`).
    pub areas: Vec<String>,
    /// Leave out cases with a requirement of one of these areas.
    pub exclude_areas: Vec<String>,
    /// Only cases whose name contains one of these.
    pub names: Vec<String>,
    /// Only cases of these feature files (`chat.feature`); empty: all.
    pub files: Vec<String>,
    /// SHOULD/MAY failures fail the run.
    pub strict: bool,
    /// Scenario names, `file:line` or requirement IDs expected to fail.
    pub expected_failures: Vec<String>,
    /// Print a progress line to stderr.
    pub progress: bool,
    /// Described in the report ("ws://..., tcp://...").
    pub target: String,
    /// Every URL checked, WebSocket nodes first, each transport's node 0 first (a cluster has several of a
    /// transport); listed in the JSON and JUnit reports. Empty: none given (simulation, client mode).
    pub targets: Vec<String>,
    /// Threads running cases side by side (network only: each case has its
    /// own users, so cases do not disturb each other). 0 or 1: one.
    pub jobs: usize,
    /// The transports the target offers, in the order of the passes (empty: both, WebSocket first). Transport-neutral
    /// cases run in every pass, each over that pass's transport; the others run once, in the first.
    pub transports: Vec<TransportKind>,
    /// The longest the whole run may take: the cases not begun by then are skipped, and the run fails saying so.
    pub deadline: Option<Duration>,
    /// Check a client (client mode: only [`spec::CLIENT_FEATURE`]'s cases) instead of a server (all the others).
    pub client_mode: bool,
}

impl RunOptions {
    /// The passes: [`RunOptions::transports`], or both.
    pub fn passes(&self) -> Vec<TransportKind> {
        if self.transports.is_empty() {
            TransportKind::ALL.to_vec()
        } else {
            self.transports.clone()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid tag expression {expr:?}: {reason}")]
    Tags { expr: String, reason: String },
    #[error("writing the feature files: {0}")]
    Features(std::io::Error),
    #[error("{0}")]
    Parse(String),
    #[error("{0}")]
    Selects(String),
}

/// A compiled case filter.
pub struct Filter {
    tags: Option<TagOperation>,
    exclude: Option<TagOperation>,
    requirements: Vec<String>,
    areas: Vec<String>,
    exclude_areas: Vec<String>,
    names: Vec<String>,
    files: Vec<String>,
    client_mode: bool,
}

fn parse_tags(expr: &Option<String>) -> Result<Option<TagOperation>, RunError> {
    expr.as_deref()
        .map(|e| {
            e.parse::<TagOperation>().map_err(|err| RunError::Tags {
                expr: e.to_string(),
                reason: err.to_string(),
            })
        })
        .transpose()
}

impl Filter {
    pub fn new(options: &RunOptions) -> Result<Filter, RunError> {
        Ok(Filter {
            tags: parse_tags(&options.tags)?,
            exclude: parse_tags(&options.exclude)?,
            requirements: options.requirements.clone(),
            areas: options.areas.clone(),
            exclude_areas: options.exclude_areas.clone(),
            names: options.names.clone(),
            files: options.files.clone(),
            client_mode: options.client_mode,
        })
    }

    /// Whether a case of `file` with these tags (no '@') and name is selected.
    pub fn selects(&self, file: &str, tags: &[String], name: &str) -> bool {
        let by_file = self.files.is_empty() || self.files.iter().any(|f| f == file);
        let by_tags = self.tags.as_ref().is_none_or(|t| t.eval(tags.iter()));
        let excluded = self.exclude.as_ref().is_some_and(|t| t.eval(tags.iter()));
        let by_req = self.requirements.is_empty() || self.requirements.iter().any(|r| tags.contains(r));
        let in_area = |areas: &[String]| tags.iter().any(|t| areas.iter().any(|a| in_area(t, a)));
        let by_area = self.areas.is_empty() || in_area(&self.areas);
        let area_excluded = in_area(&self.exclude_areas);
        let by_name = self.names.is_empty() || self.names.iter().any(|n| name.contains(n.as_str()));
        let by_mode = (file == spec::CLIENT_FEATURE) == self.client_mode;
        by_mode && by_file && by_tags && !excluded && by_req && by_area && !area_excluded && by_name
    }
}

/// Whether requirement tag `tag` (`AWR-3`) belongs to `area` (`AWR`, any case).
fn in_area(tag: &str, area: &str) -> bool {
    tag.split_once('-')
        .is_some_and(|(prefix, number)| prefix.eq_ignore_ascii_case(area) && number.parse::<u32>().is_ok())
}

/// Expected-failures entries that name no case of the suite (by name, with or without its transport, `file:line`
/// or requirement ID): a stale or mistyped baseline would otherwise excuse nothing and say nothing.
pub fn check_baseline(entries: &[String]) -> Result<(), RunError> {
    let all = list(&RunOptions::default())?;
    let stale: Vec<&String> = entries
        .iter()
        .filter(|e| {
            let (named, _) = super::report::split_entry(e);
            !all.iter().any(|c| {
                c.name == named
                    || c.scenario == named
                    || spec::name_of(&c.scenario, c.example.as_deref()) == named
                    || format!("{}:{}", c.file, c.line) == named
                    || c.tags.iter().any(|t| t == named)
            })
        })
        .collect();
    match stale.is_empty() {
        true => Ok(()),
        false => Err(RunError::Selects(format!(
            "expected failures that name no case: {}",
            stale.iter().map(|e| format!("{e:?}")).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Requirement IDs and areas the options name that no case of the suite has: a typo, or an ID SPEC does not
/// define, would otherwise select nothing (or, excluded, leave everything in) without a word.
pub fn check_selectors(options: &RunOptions) -> Result<(), RunError> {
    let cases = spec::cases().map_err(RunError::Parse)?;
    let mut unknown = Vec::new();
    for id in &options.requirements {
        if !cases.iter().any(|c| c.tags.contains(id)) {
            unknown.push(format!("--req {id}: no case checks it"));
        }
    }
    for (flag, areas) in [("--area", &options.areas), ("--exclude-area", &options.exclude_areas)] {
        for area in areas {
            if !cases.iter().any(|c| c.tags.iter().any(|t| in_area(t, area))) {
                unknown.push(format!(
                    "{flag} {area}: no case has a requirement of that area (areas: AUTH, CHAT, ...)"
                ));
            }
        }
    }
    match unknown.is_empty() {
        true => Ok(()),
        false => Err(RunError::Selects(unknown.join("; "))),
    }
}

/// The cases the options select, without running them (`--list`): a transport-neutral scenario once per pass.
pub fn list(options: &RunOptions) -> Result<Vec<spec::Case>, RunError> {
    let filter = Filter::new(options)?;
    let passes = options.passes();
    Ok(spec::cases()
        .map_err(RunError::Parse)?
        .into_iter()
        .filter(|c| filter.selects(&c.file, &c.tags, &c.name))
        .flat_map(|c| match c.neutral {
            true => passes.iter().map(|t| c.over(*t)).collect(),
            false => vec![c],
        })
        .collect())
}

/// What the writer learns about one scenario.
#[derive(Default)]
struct Collected {
    cases: Vec<CaseResult>,
    parse_errors: Vec<String>,
    /// The case each worker thread is running.
    current: HashMap<ThreadId, (CaseResult, Instant)>,
    done: usize,
    total: usize,
    progress: bool,
}

/// A cucumber writer that fills [`Collected`].
struct Collector(Arc<Mutex<Collected>>);

fn panic_text(info: &event::Info) -> String {
    if let Some(s) = info.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = info.downcast_ref::<&str>() {
        (*s).to_string()
    } else {
        "a step panicked with a non-text payload".to_string()
    }
}

impl Collected {
    fn start(
        &mut self,
        feature: &cucumber::gherkin::Feature,
        rule: Option<&cucumber::gherkin::Rule>,
        scenario: &cucumber::gherkin::Scenario,
    ) {
        let file = file_name(feature);
        let (section, area) = area_of(&file);
        let mut tags = feature.tags.clone();
        tags.extend(scenario.tags.iter().cloned());
        // This thread's pass is the transport of a neutral case's run.
        let transport = spec::is_neutral(feature, rule, scenario).then(super::world::pass);
        let example = spec::example_at(&file, scenario.position.line);
        let name = spec::name_of(&scenario.name, example.as_deref());
        let case = CaseResult {
            file,
            section: section.to_string(),
            area: area.to_string(),
            name: match transport {
                Some(t) => spec::name_over(&name, t),
                None => name,
            },
            transport,
            example,
            line: scenario.position.line,
            tags,
            outcome: Outcome::Passed,
            unimplemented: false,
            duration_ms: 0,
            verdict: super::report::Verdict::Pass,
            transcript: None,
        };
        self.current.insert(std::thread::current().id(), (case, Instant::now()));
    }

    fn step_failed(&mut self, step: &cucumber::gherkin::Step, world: Option<&CaseWorld>, message: String) {
        let Some((case, _)) = self.current.get_mut(&std::thread::current().id()) else {
            return;
        };
        if case.outcome != Outcome::Passed {
            return;
        }
        case.outcome = match (
            message.strip_prefix(SKIP_PREFIX),
            message.strip_prefix(NOT_APPLICABLE_PREFIX),
        ) {
            (Some(reason), _) => Outcome::Skipped {
                reason: reason.to_string(),
            },
            (_, Some(reason)) => Outcome::NotApplicable {
                reason: reason.to_string(),
            },
            _ => Outcome::Failed {
                step: format!("{} {}", step.keyword.trim(), step.value),
                message,
            },
        };
        if let Some(world) = world {
            let transcript = world.driver.transcript().clone();
            case.unimplemented = transcript.saw_unimplemented_route();
            case.transcript = Some(transcript);
        }
    }

    fn finish(&mut self) {
        let Some((mut case, started)) = self.current.remove(&std::thread::current().id()) else {
            return;
        };
        case.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.done += 1;
        if self.progress {
            let label = match &case.outcome {
                Outcome::Passed => "ok",
                Outcome::Failed { .. } => "FAILED",
                Outcome::Skipped { .. } => "skipped",
                Outcome::NotApplicable { .. } => "not applicable",
            };
            let line = format!(
                "[{}/{}] §{} {}: {} ... {label}",
                self.done, self.total, case.section, case.area, case.name
            );
            // One line rewritten in place on a terminal; in a log, plain lines without escape codes.
            if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                eprint!("\r\x1b[2K{line}");
            } else {
                eprintln!("{line}");
            }
        }
        self.cases.push(case);
    }
}

impl Writer<CaseWorld> for Collector {
    type Cli = cli::Empty;

    async fn handle_event(&mut self, event: parser::Result<Event<CucumberEvent<CaseWorld>>>, _: &Self::Cli) {
        let mut c = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let event = match event {
            Ok(event) => event.into_inner(),
            Err(error) => {
                c.parse_errors.push(error.to_string());
                return;
            }
        };
        let CucumberEvent::Feature(feature, feature_event) = event else {
            return;
        };
        let (rule, scenario, RetryableScenario { event, .. }) = match feature_event {
            event::Feature::Scenario(scenario, event) => (None, scenario, event),
            event::Feature::Rule(rule, event::Rule::Scenario(scenario, event)) => (Some(rule), scenario, event),
            _ => return,
        };
        match event {
            event::Scenario::Started => c.start(&feature, rule.as_deref(), &scenario),
            event::Scenario::Step(step, step_event) | event::Scenario::Background(step, step_event) => match step_event
            {
                event::Step::Failed(_, _, world, error) => {
                    let message = match error {
                        event::StepError::Panic(info) => panic_text(&info),
                        other => other.to_string(),
                    };
                    c.step_failed(&step, world.as_deref(), message);
                }
                event::Step::Skipped => {
                    c.step_failed(&step, None, "no step definition matches this step".to_string());
                }
                _ => {}
            },
            event::Scenario::Hook(_, event::Hook::Failed(world, info)) => {
                let step = cucumber::gherkin::Step {
                    keyword: "Hook".into(),
                    ty: cucumber::gherkin::StepType::Given,
                    value: "before/after".into(),
                    docstring: None,
                    table: None,
                    span: Default::default(),
                    position: Default::default(),
                };
                c.step_failed(&step, world.as_deref(), panic_text(&info));
            }
            event::Scenario::Finished => c.finish(),
            _ => {}
        }
    }
}

impl cucumber::writer::NonTransforming for Collector {}

thread_local! {
    static QUIET_PANICS: Cell<bool> = const { Cell::new(false) };
}

/// Installs (once) a panic hook that stays silent on threads running cases:
/// step failures are panics, and the report shows them.
fn quiet_step_panics() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET_PANICS.with(Cell::get) {
                previous(info);
            }
        }));
    });
}

/// The feature's file name (`chat.feature`), as cases and the plan name it.
fn file_name(feature: &cucumber::gherkin::Feature) -> String {
    feature
        .path
        .as_ref()
        .and_then(|p| p.file_name())
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Which worker runs a case: a hash of where it is, so every worker's
/// partition is the same whatever order the features are read in.
fn worker_of(feature: &cucumber::gherkin::Feature, scenario: &cucumber::gherkin::Scenario, jobs: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    file_name(feature).hash(&mut hasher);
    scenario.position.line.hash(&mut hasher);
    scenario.name.hash(&mut hasher);
    usize::try_from(hasher.finish() % u64::try_from(jobs.max(1)).unwrap_or(1)).unwrap_or(0)
}

/// Which worker runs each case, by (feature file, line as cucumber numbers
/// it: an outline's examples by their rows). Most of a case's time is
/// waiting, and a few cases wait for seconds (ping intervals, expiries, the
/// settle window after "receives no ..."), so cases are spread by an estimate
/// of their wait, longest first, each to the least loaded worker.
fn plan(jobs: usize) -> HashMap<(String, usize), usize> {
    let mut cases: Vec<((String, usize), u64)> = Vec::new();
    spec::each_scenario(|file, scenario| {
        let cost = estimated_wait_ms(scenario);
        let rows = spec::example_rows(scenario);
        if rows.is_empty() {
            cases.push(((file.to_string(), scenario.position.line), cost));
        }
        for (line, _) in rows {
            cases.push(((file.to_string(), line), cost));
        }
    });
    // Longest first; ties in file order, so every worker computes the same plan.
    cases.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut load = vec![0u64; jobs.max(1)];
    let mut plan = HashMap::new();
    for (key, cost) in cases {
        let (worker, _) = load
            .iter()
            .enumerate()
            .min_by_key(|(i, l)| (**l, *i))
            .unwrap_or((0, &0));
        load[worker] += cost;
        plan.insert(key, worker);
    }
    plan
}

/// A rough guess of how long a scenario waits, ms: the times its steps name,
/// server pings waited for, and a settle window per run of "receives no"
/// steps.
fn estimated_wait_ms(scenario: &cucumber::gherkin::Scenario) -> u64 {
    let mut ms = 100;
    let mut in_absence = false;
    for step in &scenario.steps {
        let text = step.value.as_str();
        let absence = text.contains(" receives no") && !text.contains("nothing more");
        if absence && !in_absence {
            ms += 1_000;
        }
        in_absence = absence;
        // Times that are waits ("2.5 ping intervals pass", "... every 0.5 ping intervals for 2.5 ping intervals"),
        // not durations the step sets ("away for 30 seconds").
        let waits = text.contains(" pass") || text.contains(" every ");
        let mut words: Vec<&str> = if waits {
            text.split_whitespace().collect()
        } else {
            Vec::new()
        };
        words.push("");
        for w in words.windows(3) {
            let unit = w[1].starts_with("second") || (w[1] == "ping" && w[2].starts_with("interval"));
            if let Ok(n) = w[0].parse::<f64>()
                && unit
            {
                // A ping interval of the built-in server is a second.
                ms += (n * 1_000.0) as u64;
            }
        }
        if text.contains("server ping") || text.contains("expired") {
            ms += 1_000;
        }
    }
    ms
}

/// Which of the selected cases a run of workers takes: the cases that restart the server run alone, after the
/// others (`spec::restarts`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Together,
    Alone,
}

/// One worker: its share of the selected cases of `phase`, on this thread.
fn run_worker(
    options: &RunOptions,
    factory: SharedFactory,
    collected: &Arc<Mutex<Collected>>,
    (worker, jobs): (usize, usize),
    phase: Phase,
    halt: &Halt,
) -> Result<(), RunError> {
    let filter = Arc::new(Filter::new(options)?);
    let plan = Arc::new(plan(jobs));
    let dir = std::env::temp_dir().join(format!(
        "bimip-conform-features-{}-{:?}-{worker}",
        std::process::id(),
        std::thread::current().id()
    ));
    let dir_name: String = dir
        .to_string_lossy()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "/-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let dir = PathBuf::from(dir_name);
    let features: PathBuf = spec::write_features(&dir).map_err(RunError::Features)?;
    quiet_step_panics();
    // Case numbers (and so the EIDs on a shared target) apart from every worker's of the other phase.
    let numbering = worker
        + if phase == Phase::Alone {
            jobs.max(options.jobs)
        } else {
            0
        };
    set_factory(Some(Arc::clone(&factory)), u64::try_from(numbering).unwrap_or(0));
    set_halt(halt.clone());
    QUIET_PANICS.with(|q| q.set(true));
    for (index, transport) in options.passes().into_iter().enumerate() {
        set_pass(transport);
        let writer = Collector(Arc::clone(collected)).normalized();
        let cucumber = cucumber::Cucumber::<CaseWorld, _, PathBuf, _, _, cli::Empty>::custom(
            parser::Basic::new(),
            runner::Basic::default(),
            writer,
        )
        .steps(steps::collection())
        .after({
            let (factory, halt) = (Arc::clone(&factory), halt.clone());
            move |_, _, _, finished, world| {
                // A case that could not connect: if the target no longer answers, the cases after it do not run.
                if take_connect_failure()
                    && halt.why().is_none()
                    && let Err(why) = factory.alive()
                {
                    halt.stop(format!("the target stopped answering ({why})"));
                }
                Box::pin(async move {
                    if let (cucumber::event::ScenarioFinished::StepPassed, Some(world)) = (finished, world) {
                        world.check_at_end();
                    }
                })
            }
        })
        .max_concurrent_scenarios(1)
        .with_cli(cli::Opts::<_, _, _, cli::Empty>::default());
        let (filter, plan) = (Arc::clone(&filter), Arc::clone(&plan));
        let run = cucumber.filter_run(features.clone(), move |feature, rule, scenario| {
            let mut tags = feature.tags.clone();
            if let Some(rule) = rule {
                tags.extend(rule.tags.iter().cloned());
            }
            tags.extend(scenario.tags.iter().cloned());
            let file = file_name(feature);
            let assigned = plan
                .get(&(file.clone(), scenario.position.line))
                .copied()
                .unwrap_or_else(|| worker_of(feature, scenario, jobs));
            // A case that names its transports runs once, in the first pass.
            let in_pass = index == 0 || spec::is_neutral(feature, rule, scenario);
            let in_phase = spec::restarts(scenario) == (phase == Phase::Alone);
            in_pass && in_phase && filter.selects(&file, &tags, &scenario.name) && assigned == worker
        });
        futures::executor::block_on(run);
    }
    QUIET_PANICS.with(|q| q.set(false));
    set_factory(None, 0);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Runs the selected cases against drivers from `factory`.
pub fn run(options: &RunOptions, factory: SharedFactory, kind: &str) -> Result<Report, RunError> {
    let total = list(options)?.len();
    let collected = Arc::new(Mutex::new(Collected {
        total,
        progress: options.progress,
        ..Collected::default()
    }));
    let started = Instant::now();
    let jobs = options.jobs.max(1);
    let halt = Halt::new(options.deadline);
    if jobs == 1 {
        run_worker(
            options,
            Arc::clone(&factory),
            &collected,
            (0, 1),
            Phase::Together,
            &halt,
        )?;
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..jobs)
                .map(|worker| {
                    let factory = Arc::clone(&factory);
                    let collected = &collected;
                    std::thread::Builder::new()
                        .name(format!("conform-{worker}"))
                        .spawn_scoped(scope, {
                            let halt = &halt;
                            move || run_worker(options, factory, collected, (worker, jobs), Phase::Together, halt)
                        })
                })
                .collect();
            for handle in handles {
                match handle {
                    Ok(handle) => match handle.join() {
                        Ok(result) => result?,
                        Err(_) => return Err(RunError::Parse("a worker thread panicked".into())),
                    },
                    Err(e) => return Err(RunError::Features(e)),
                }
            }
            Ok(())
        })?;
    }
    run_worker(options, factory, &collected, (0, 1), Phase::Alone, &halt)?;
    if options.progress && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!();
    }
    let mut collected = collected.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut cases = std::mem::take(&mut collected.cases);
    for case in &mut cases {
        case.verdict = verdict(case, options.strict, &options.expected_failures);
        if case.verdict == super::report::Verdict::Pass {
            case.transcript = None;
        }
    }
    cases.sort_by(|a, b| {
        let key = |c: &CaseResult| (area_of(&c.file).0.parse::<u32>().unwrap_or(99), c.line, c.name.clone());
        key(a).cmp(&key(b))
    });
    Ok(Report {
        driver: kind.to_string(),
        target: options.target.clone(),
        targets: options.targets.clone(),
        strict: options.strict,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        cases,
        parse_errors: std::mem::take(&mut collected.parse_errors),
        halted: halt.why(),
    })
}

#[cfg(test)]
mod tests {
    use super::{estimated_wait_ms, plan};
    use crate::conformance::spec;

    /// Every case (an outline's examples each) gets one of the workers, and no worker waits much longer than
    /// another by the estimate.
    #[test]
    fn the_plan_spreads_every_case_over_the_workers() {
        let cases = spec::cases().expect("the features parse").len();
        for jobs in [1, 4, 16] {
            let plan = plan(jobs);
            assert_eq!(plan.len(), cases, "{jobs} jobs");
            assert!(plan.values().all(|w| *w < jobs));
            let mut load = vec![0u64; jobs];
            let mut longest = 0;
            for (file, _, _, text) in spec::FEATURES {
                let feature =
                    cucumber::gherkin::Feature::parse(text, cucumber::gherkin::GherkinEnv::default()).expect(file);
                for s in &feature.scenarios {
                    let cost = estimated_wait_ms(s);
                    longest = longest.max(cost);
                    let rows: Vec<usize> = s
                        .examples
                        .iter()
                        .flat_map(|e| {
                            let n = e.table.as_ref().map_or(0, |t| t.rows.len() - 1);
                            (0..n).map(move |i| e.position.line + i + 2)
                        })
                        .collect();
                    let lines = if rows.is_empty() { vec![s.position.line] } else { rows };
                    for line in lines {
                        load[plan[&((*file).to_string(), line)]] += cost;
                    }
                }
            }
            let (min, max) = (load.iter().min().copied(), load.iter().max().copied());
            assert!(max.unwrap_or(0) <= min.unwrap_or(0) + longest, "{jobs} jobs: {load:?}");
        }
    }

    #[test]
    fn waits_are_estimated_from_the_steps_that_wait() {
        let text = "Feature: f\n  Scenario: s\n    When 2.5 ping intervals pass\n    Then alice's phone receives no error\n    And bob's phone receives no error\n    When alice's phone sets her status to away for 30 seconds\n";
        let feature =
            cucumber::gherkin::Feature::parse(text, cucumber::gherkin::GherkinEnv::default()).expect("parses");
        // 100 base, 2,500 of pings, one settle window for the two absences in a row; the 30 s is a ttl, not a wait.
        assert_eq!(estimated_wait_ms(&feature.scenarios[0]), 3_600);
    }
}
