//! The conformance suite (issue 7): Gherkin features for every flow of
//! SPEC.md (`features/`), step definitions written once against a [`Driver`]
//! (`steps/`), two drivers (simulation and network), and a runner that turns
//! cucumber's events into per-case verdicts and reports.
//!
//! - [`driver`]: the synchronous `Driver` seam, connect specs, tokens, transcripts.
//! - [`sim`]: the reference server and clients as turmoil hosts, simulated time.
//! - [`network`]: real connections to any target; [`builtin`]: the reference
//!   server on loopback for network runs.
//! - [`client_mode`]: checking a client instead (SPEC §21): a scripted [`peer`] plays the server, and an
//!   [`adapter`] process drives the client under test.
//! - [`lifecycle`]: restarting the target (hooks), for the cases that need it.
//! - [`tap`]: raw bytes under the client (ENV-12 canonical form, TRN-7 Ping frames).
//! - [`world`]: the cucumber World of one case.
//! - [`steps`]: the step vocabulary, per SPEC area.
//! - [`spec`]: the requirement index, the embedded features, coverage.
//! - [`runner`], [`report`]: running, verdicts, terminal tree, JUnit, JSON.
//! - [`html`]: the self-contained HTML report.
//! - [`selfcheck`]: the built-in server faults the suite must catch; [`fault_proxy`]: the same faults applied
//!   by a proxy between the suite and any target.
//!
//! [`Driver`]: driver::Driver

pub mod adapter;
pub mod builtin;
pub mod client_mode;
pub mod driver;
pub mod fault_proxy;
pub mod html;
pub mod lifecycle;
pub mod network;
pub mod peer;
pub mod report;
pub mod runner;
pub mod selfcheck;
pub mod sim;
pub mod spec;
pub mod steps;
pub mod tap;
pub mod world;

#[cfg(test)]
mod tests;
