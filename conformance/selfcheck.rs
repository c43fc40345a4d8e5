//! The suite's self-check (issue 7): the reference server runs in simulation
//! with one built-in fault (`crate::faults`) at a time, and the suite
//! must fail at least one case for each. A fault nobody catches is a hole in
//! the suite. The mirror check (issue 21): with each behaviour SPEC allows
//! (`crate::variants`), every case must pass.
//!
//! Each fault runs only the feature files of the areas it breaks, to keep the
//! check fast; [`areas`] is a `match`, so a new fault cannot be left out.

use std::sync::Arc;
use std::time::Duration;

use super::report::{Report, Verdict};
use super::runner::{RunError, RunOptions, run};
use super::sim::{SimFactory, SimOptions};
use crate::faults::{Fault, Faults};
use crate::variants::{Variant, Variants};

/// The feature files whose scenarios are expected to catch `fault`.
pub fn areas(fault: Fault) -> &'static [&'static str] {
    match fault {
        Fault::SkipVersionUpdate => &["chat.feature"],
        Fault::ReorderChat => &["chat.feature", "queue.feature"],
        Fault::ReorderChatTcp => &["chat.feature", "queue.feature"],
        Fault::NoLocation => &["location.feature"],
        Fault::WrongAckCode => &["ack.feature"],
        Fault::IgnoreBlock => &["block.feature"],
        Fault::IgnoreRevocation => &["token.feature"],
        Fault::NeverPong => &["pingpong.feature"],
        Fault::AcceptExpiredToken => &["auth.feature"],
        Fault::DropOfflineQueue => &["queue.feature"],
        Fault::TrustClientFrom => &["envelope.feature"],
        Fault::NonCanonicalEncoding => &["envelope.feature"],
        Fault::LeakLocation => &["location.feature"],
        Fault::AwarenessFromDevice => &["awareness.feature"],
        Fault::EarlyPingTimeout => &["pingpong.feature"],
        Fault::PackVersionUpdate => &["chat.feature"],
        Fault::LateEcho => &["chat.feature"],
        Fault::LatePresenceLeak => &["awareness.feature", "block.feature"],
        Fault::StaleReceivedAt => &["chat.feature"],
        Fault::StaleAckTimestamp => &["ack.feature"],
        Fault::StaleLastSeen | Fault::StalePresence => &["awareness.feature"],
        Fault::RevokeResponseLast => &["token.feature"],
        Fault::ReplacedCloseLate => &["session.feature"],
        Fault::DropWhenBehind => &["transport.feature"],
        Fault::OnlyLatestPing => &["pingpong.feature"],
    }
}

/// What one faulty server got from the suite.
#[derive(Debug)]
pub struct FaultRun {
    pub fault: Fault,
    pub report: Report,
}

impl FaultRun {
    /// The cases that failed (or found a route unimplemented): the ones that caught the fault.
    pub fn caught_by(&self) -> Vec<String> {
        self.report
            .cases
            .iter()
            // A route answered 501 is caught as unimplemented (Fault::NoLocation).
            .filter(|c| matches!(c.verdict, Verdict::Fail | Verdict::Unimplemented))
            .map(|c| format!("{}:{} {}", c.file, c.line, c.name))
            .collect()
    }
}

/// Runs `fault`'s areas (all features when `all_areas`) in simulation
/// against a server with that fault. `expected_failures` are the reference
/// server's known deviations: they do not count as catching anything.
pub fn run_fault(fault: Fault, all_areas: bool, expected_failures: &[String]) -> Result<FaultRun, RunError> {
    let options = SimOptions {
        faults: Faults::of([fault]),
        ..SimOptions::default()
    };
    let run_options = RunOptions {
        files: if all_areas {
            Vec::new()
        } else {
            areas(fault).iter().map(|f| (*f).to_string()).collect()
        },
        expected_failures: expected_failures.to_vec(),
        target: format!("reference server in simulation with the fault {fault}"),
        ..RunOptions::default()
    };
    let report = run(&run_options, Arc::new(SimFactory { options }), "simulation")?;
    Ok(FaultRun { fault, report })
}

/// The SHOULD a variant skips: its case must come out non-strict, the proof that the variant was in effect.
/// `None` for variants that only differ where the suite must not look (free text) or that take a MAY.
pub fn skipped_should(variant: Variant) -> Option<&'static str> {
    match variant {
        Variant::NoSubprotocol => Some("TRN-4"),
        Variant::NoWsAuthenticateResponse => Some("TRN-16"),
        Variant::NoStartBody => Some("AWR-17"),
        Variant::OtherDetails | Variant::RevokeNotice | Variant::FragmentedMessages | Variant::CloseReasons => None,
        // In effect when the suite fails it without the leeway (`conformance::tests`).
        Variant::TokenLeeway => None,
    }
}

/// Whether `report` shows the SHOULD of `variant` unmet (always true for variants without one).
pub fn variant_in_effect(variant: Variant, report: &Report) -> bool {
    skipped_should(variant).is_none_or(|id| {
        report
            .cases
            .iter()
            .any(|c| c.verdict == Verdict::NonStrict && c.requirements().iter().any(|r| r == id))
    })
}

/// Runs every feature in simulation against the reference server using `variant`, a behaviour SPEC allows
/// (a SHOULD it skips, a MAY it takes, other free text). A server that does so conforms, so no case may fail: a
/// failure is a check stricter than SPEC, the mirror image of a fault nobody catches.
pub fn run_variant(variant: Variant, expected_failures: &[String]) -> Result<Report, RunError> {
    let mut options = SimOptions {
        variants: Variants::of([variant]),
        ..SimOptions::default()
    };
    if variant == Variant::TokenLeeway {
        // As `bimip-conform --leeway 2` tells the suite.
        options.info.leeway = Duration::from_secs(crate::variants::TOKEN_LEEWAY_S);
    }
    let run_options = RunOptions {
        expected_failures: expected_failures.to_vec(),
        target: format!("reference server in simulation with the allowed variant {variant}"),
        ..RunOptions::default()
    };
    run(&run_options, Arc::new(SimFactory { options }), "simulation")
}
