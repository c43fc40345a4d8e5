//! BIMIP conformance kit.
//!
//! The crate map follows SPEC.md's areas:
//!
//! - [`proto`]: the types generated from `proto/bimip.proto`, and its descriptors.
//! - [`codec`]: bytes <-> stanzas: the envelope rule, TCP framing, canonical
//!   encoding, the proto3 JSON mapping, and the error table of SPEC §5.
//! - [`vectors`]: the YAML test vectors of `vectors/`, loaded and checked.
//! - [`load`]: `bimip bench`, the load generator.

pub mod admin;
pub mod client;
pub mod cluster;
pub mod codec;
#[path = "../conformance/mod.rs"]
pub mod conformance;
pub mod console;
pub mod core;
pub mod faults;
pub mod fuzz;
pub mod keys;
pub mod load;
pub mod net;
pub mod proto;
pub mod server;
pub mod sim;
pub mod store;
pub mod variants;
pub mod vectors;
