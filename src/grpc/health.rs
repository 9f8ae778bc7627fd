//! `grpc.health.v1.Health` as the gRPC health-checking spec says, which tonic-health's own
//! service does not quite do:
//!
//! - `Check` of a service the gateway does not serve answers NOT_FOUND.
//! - `Watch` sends the current status at once and again on every change. For a service it does
//!   not know it sends SERVICE_UNKNOWN and keeps the stream open (the service may appear).
//! - When the gateway stops, every `Watch` gets NOT_SERVING and then ends, so an open watch
//!   never holds up the shutdown.
//!
//! The gateway reports through a [`HealthReporter`]; the service only reads.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// What every watcher sees: each known service's status, and whether the gateway is stopping.
#[derive(Debug, Clone, Default)]
struct Snapshot {
    services: BTreeMap<String, ServingStatus>,
    stopped: bool,
}

impl Snapshot {
    fn status(&self, service: &str) -> ServingStatus {
        self.services.get(service).copied().unwrap_or(ServingStatus::ServiceUnknown)
    }
}

/// Sets the statuses the health service reports. Cloning shares the same statuses.
#[derive(Debug, Clone)]
pub struct HealthReporter {
    state: Arc<watch::Sender<Snapshot>>,
}

impl HealthReporter {
    /// Reports `service` (its full name, or "" for the whole server) as serving or not.
    pub fn set(&self, service: &str, serving: bool) {
        let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
        self.state.send_if_modified(|s| s.services.insert(service.to_string(), status) != Some(status));
    }

    /// The gateway is stopping: every service goes NOT_SERVING and every watch ends after
    /// saying so.
    pub fn stop(&self) {
        self.state.send_modify(|s| {
            for status in s.services.values_mut() {
                *status = ServingStatus::NotServing;
            }
            s.stopped = true;
        });
    }
}

/// The health service and the reporter that drives it.
pub fn health() -> (HealthReporter, HealthServer<HealthService>) {
    let (state, _) = watch::channel(Snapshot::default());
    let state = Arc::new(state);
    (HealthReporter { state: state.clone() }, HealthServer::new(HealthService { state }))
}

pub struct HealthService {
    state: Arc<watch::Sender<Snapshot>>,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        let service = &request.get_ref().service;
        match self.state.borrow().services.get(service) {
            Some(status) => Ok(Response::new(HealthCheckResponse { status: *status as i32 })),
            None => Err(Status::not_found(format!(
                "no such service {:?}: this gateway reports \"\" and \"fanout.v1.Fanout\"",
                crate::grpc::bounded(service.clone())
            ))),
        }
    }

    type WatchStream = WatchStream;

    async fn watch(&self, request: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let watcher = Watcher { rx: self.state.subscribe(), service: request.into_inner().service, last: None };
        Ok(Response::new(Box::pin(futures::stream::unfold(watcher, Watcher::next))))
    }
}

/// One `Watch` call: sends a status whenever it differs from the one sent last.
struct Watcher {
    rx: watch::Receiver<Snapshot>,
    service: String,
    /// None until the first message; after the stop's message, the stream ends.
    last: Option<ServingStatus>,
}

impl Watcher {
    async fn next(mut self) -> Option<(Result<HealthCheckResponse, Status>, Self)> {
        loop {
            let (status, stopped) = {
                let snapshot = self.rx.borrow_and_update();
                (snapshot.status(&self.service), snapshot.stopped)
            };
            if self.last != Some(status) {
                self.last = Some(status);
                return Some((Ok(HealthCheckResponse { status: status as i32 }), self));
            }
            if stopped || self.rx.changed().await.is_err() {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn watch_follows_the_spec() {
        let (reporter, _server) = health();
        let service = HealthService { state: reporter.state.clone() };
        let open = |name: &str| {
            let watcher = Watcher { rx: service.state.subscribe(), service: name.to_string(), last: None };
            Box::pin(futures::stream::unfold(watcher, Watcher::next))
        };
        let status = |item: Option<Result<HealthCheckResponse, Status>>| item.map(|r| r.expect("ok").status);

        reporter.set("fanout.v1.Fanout", true);
        let mut known = open("fanout.v1.Fanout");
        let mut unknown = open("nope.v1.Nothing");
        assert_eq!(status(known.next().await), Some(ServingStatus::Serving as i32), "the current status at once");
        assert_eq!(status(unknown.next().await), Some(ServingStatus::ServiceUnknown as i32));

        // Unknown stays open, and learns when the service appears.
        reporter.set("nope.v1.Nothing", false);
        assert_eq!(status(unknown.next().await), Some(ServingStatus::NotServing as i32));

        // A change of another service sends nothing on this one; a change of its own does.
        reporter.set("other", true);
        reporter.set("fanout.v1.Fanout", false);
        assert_eq!(status(known.next().await), Some(ServingStatus::NotServing as i32));

        // The stop: NOT_SERVING (already sent here, so nothing more), then the end.
        reporter.set("fanout.v1.Fanout", true);
        assert_eq!(status(known.next().await), Some(ServingStatus::Serving as i32));
        reporter.stop();
        assert_eq!(status(known.next().await), Some(ServingStatus::NotServing as i32));
        assert!(known.next().await.is_none(), "the watch ends once the gateway stops");
        assert!(unknown.next().await.is_none(), "every watch ends");

        let check = service.check(Request::new(HealthCheckRequest { service: "nope.v2".into() })).await;
        assert_eq!(check.expect_err("unknown").code(), tonic::Code::NotFound);
    }
}
