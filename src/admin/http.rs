//! The plain-HTTP side of the admin port, beside the admin gRPC services (the port speaks
//! HTTP/1.1 and HTTP/2): what Prometheus scrapes and what the kubelet probes.
//!
//! - `GET /metrics`: the Prometheus exposition ([`crate::metrics`]), OpenMetrics or the
//!   classic text format as the scraper's `Accept` asks.
//! - `GET /healthz`: 200 while the process serves (liveness: a restart would not help
//!   otherwise).
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

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(control): State<Control>) -> impl IntoResponse {
    let readiness = control.readiness();
    let code = if readiness.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, format!("{}\n", readiness.reason))
}
