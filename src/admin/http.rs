//! The HTTP admin endpoint of `bimip serve`: `GET /healthz`, `GET /metrics`
//! (Prometheus text format) and `POST /push`, a thin alias of the gRPC API's
//! Push kept for shell scripts (`curl`). Metrics read a snapshot of the
//! engine's counters at scrape time; the protocol core never waits on them.

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::codec::Route;
pub use crate::net::Snapshot;

/// Where snapshots come from.
pub type SnapshotSource = Arc<dyn Fn() -> Snapshot + Send + Sync>;

struct EngineCollector {
    source: SnapshotSource,
}

impl fmt::Debug for EngineCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EngineCollector")
    }
}

fn route_labels(route: i64) -> Vec<(String, String)> {
    let payload = Route::from_number(route).map_or("unknown", Route::message_name);
    vec![("route".into(), route.to_string()), ("payload".into(), payload.into())]
}

impl Collector for EngineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let s = (self.source)();
        let gauges = [
            ("bimip_connections", "Open connections", s.connections),
            ("bimip_users_online", "Users with at least one session", s.users_online),
        ];
        for (name, help, value) in gauges {
            let value = i64::try_from(value).unwrap_or(i64::MAX);
            ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)?;
        }
        let counters = [
            ("bimip_sessions_started", "Sessions started", s.stats.sessions_started),
            (
                "bimip_connections_closed",
                "Connections closed",
                s.stats.connections_closed,
            ),
        ];
        for (name, help, value) in counters {
            ConstCounter::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)?;
        }
        let by_route = [
            ("bimip_stanzas_in", "Stanzas received, by route", &s.stats.stanzas_in),
            ("bimip_stanzas_out", "Stanzas sent, by route", &s.stats.stanzas_out),
        ];
        for (name, help, counts) in by_route {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (route, n) in counts {
                ConstCounter::new(*n).encode(family.encode_family(&route_labels(*route))?)?;
            }
        }
        let mut family =
            encoder.encode_descriptor("bimip_errors", "ErrorMessages sent, by code", None, MetricType::Counter)?;
        for (code, n) in &s.stats.errors {
            ConstCounter::new(*n).encode(family.encode_family(&vec![("code".to_string(), code.to_string())])?)?;
        }
        Ok(())
    }
}

/// The metrics page for one snapshot source.
pub fn render_metrics(source: SnapshotSource) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(EngineCollector { source }));
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}

/// The body of `POST /push`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PushRequest {
    eid: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: std::collections::BTreeMap<String, String>,
}

fn push(body: &[u8], operator: Option<&crate::net::Operator>) -> (StatusCode, String) {
    let Some(operator) = operator else {
        return (StatusCode::NOT_FOUND, "push is not enabled\n".into());
    };
    let request: PushRequest = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("expected {{\"eid\", \"type\", \"data\"}}: {e}\n"),
            );
        }
    };
    let (eid, kind, data) = (request.eid, request.kind, request.data);
    match operator.on_home(&eid, |engine, now| engine.push(&eid, &kind, data, now)) {
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the user's home is on another node of the cluster\n".into(),
        ),
        Some(Ok(devices)) => (StatusCode::OK, format!("{{\"devices\":{devices}}}\n")),
        Some(Err(kind)) => (
            StatusCode::BAD_REQUEST,
            format!("{kind}: eid, type of 1 to 64 bytes, non-empty data\n"),
        ),
    }
}

fn respond(
    method: &Method,
    path: &str,
    body: &[u8],
    source: &SnapshotSource,
    operator: Option<&crate::net::Operator>,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (method, path) {
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render_metrics(source.clone()),
        ),
        (&Method::POST, "/push") => {
            let (status, text) = push(body, operator);
            (status, "text/plain", text)
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /healthz, /metrics or POST /push\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// Serves the admin endpoint on `listener` until the task is dropped;
/// `POST /push` (JSON `{"eid", "type", "data"}`) works when an `operator` is given.
pub async fn serve(listener: tokio::net::TcpListener, source: SnapshotSource, operator: Option<crate::net::Operator>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let source = source.clone();
        let operator = operator.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                let source = source.clone();
                let operator = operator.clone();
                async move {
                    use http_body_util::BodyExt;
                    let (parts, incoming) = request.into_parts();
                    // Admin bodies are small; one that cannot be read is empty.
                    let body = incoming.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let response = respond(&parts.method, parts.uri.path(), &body, &source, operator.as_ref());
                    Ok::<_, Infallible>(response)
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            // A client that misbehaves only loses its own connection.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Stats;

    #[test]
    fn metrics_name_routes_and_codes() {
        let mut stats = Stats::default();
        stats.stanzas_in.insert(6, 3);
        stats.errors.insert(400, 2);
        stats.sessions_started = 5;
        let source: SnapshotSource = Arc::new(move || Snapshot {
            stats: stats.clone(),
            connections: 4,
            users_online: 2,
        });
        let text = render_metrics(source);
        assert!(text.contains("bimip_connections 4"), "{text}");
        assert!(text.contains("bimip_users_online 2"), "{text}");
        assert!(text.contains("bimip_sessions_started_total 5"), "{text}");
        assert!(
            text.contains(r#"bimip_stanzas_in_total{route="6",payload="PingPong"} 3"#),
            "{text}"
        );
        assert!(text.contains(r#"bimip_errors_total{code="400"} 2"#), "{text}");
    }
}
