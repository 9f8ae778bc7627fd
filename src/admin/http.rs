//! The plain-HTTP side of the admin port, beside the admin gRPC services (the port speaks
//! HTTP/1.1 and HTTP/2): what Prometheus scrapes and what the kubelet probes.
//!
//! - `GET /metrics`: the Prometheus exposition ([`crate::metrics`]), OpenMetrics or the
//!   classic text format as the scraper's `Accept` asks.
//! - `GET /healthz`: 200 while the process serves; 503, saying why, once a Kafka client of it
//!   hit a fatal error (a route consumer fenced by another with its `group.instance.id`): only
//!   a restart helps then, and only then.
//! - `GET /readyz`: 200 when the replica is ready ([`crate::readiness`]), 503 with what it
//!   waits for otherwise.
//!
//! None of them needs the admin token: they change nothing and say nothing a scrape does not.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::Control;

/// The routes, to merge with the admin gRPC services' router.
pub fn router(control: Control) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(control)
}

/// Every path nobody serves. Plain HTTP gets 404, so a probe or a scrape pointed at a wrong
/// path fails instead of passing; a gRPC call of an unknown method keeps its UNIMPLEMENTED
/// (as tonic answers it). Set on the admin port's whole router, after the merge: the gRPC
/// routes come with a fallback of their own, which this replaces.
pub async fn not_found(headers: HeaderMap) -> axum::response::Response {
    let grpc = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        let (parts, ()) = tonic::Status::unimplemented("").into_http::<()>().into_parts();
        return axum::response::Response::from_parts(parts, axum::body::Body::empty());
    }
    (StatusCode::NOT_FOUND, "not found: the admin port serves /metrics, /healthz, /readyz and the admin gRPC API\n")
        .into_response()
}

/// OpenMetrics when the scraper asks for it (Prometheus does), the classic text format
/// otherwise.
async fn metrics(State(control): State<Control>, headers: HeaderMap) -> impl IntoResponse {
    let text = control.metrics().await;
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    if crate::metrics::wants_openmetrics(accept) {
        ([(header::CONTENT_TYPE, crate::metrics::OPENMETRICS)], text)
    } else {
        ([(header::CONTENT_TYPE, crate::metrics::CLASSIC)], crate::metrics::to_classic(&text))
    }
}

async fn healthz(State(control): State<Control>) -> impl IntoResponse {
    match control.liveness() {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(fatal) => (StatusCode::SERVICE_UNAVAILABLE, format!("{fatal}\n")),
    }
}

async fn readyz(State(control): State<Control>) -> impl IntoResponse {
    let readiness = control.readiness();
    let code = if readiness.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, format!("{}\n", readiness.body()))
}
