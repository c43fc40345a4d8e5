//! How operators and backends reach a running reference server: the backend gRPC API (`grpc`,
//! `proto/bimip_admin.proto`), and the HTTP endpoint for health, metrics and a push alias (`http`). Both run their
//! calls through [`crate::net::Operator`], on the shard that owns the user concerned.

pub mod grpc;
pub mod http;

pub use http::{SnapshotSource, render_metrics};

/// The generated types, server and client of `proto/bimip_admin.proto`.
#[allow(clippy::doc_lazy_continuation, clippy::large_enum_variant)]
pub mod proto {
    tonic::include_proto!("bimip.admin.v1");
}
