//! One route's pipeline: its consumer (own group, own thread), its dispatcher task and, in
//! Kubernetes mode, the watch of the pods it selects. Pipelines share nothing that moves: a
//! route with no subscribers, a paused route or an at-most-once route holds back no other
//! route, whatever topics they share. [`Routes`] is the front door the gRPC layer uses to reach
//! a route's dispatcher.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, Instrument};

use crate::config::{Config, RouteConfig};
use crate::dead_letters::DeadLetterProducer;
use crate::dispatcher::{self, Dispatcher, DispatcherSettings, RouteDedup, RouteHandle};
use crate::kafka::consumer::{self, ConsumerError};
use crate::kafka::ClientReports;
use crate::stats::Stats;
use crate::subscriptions::{RegisterError, Registry};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
    #[error("dedup store: {0}")]
    Dedup(#[source] crate::dedup::DedupError),
}

/// What every pipeline of a gateway shares: nothing that one route could hold up for another.
#[derive(Clone)]
pub struct Shared {
    /// Gateway-wide counters; each pipeline adds its part.
    pub stats: Arc<Stats>,
    /// Produces dead letters and retry-topic records for every route (an idempotent producer
    /// has no per-route state that could block).
    pub dead_letters: Option<DeadLetterProducer>,
    /// Kubernetes discovery: the client and the namespace whose pods are watched.
    pub kube: Option<(kube::Client, Option<String>)>,
    /// What every Kafka client does with its failures: one for the gateway, so a broken Kafka
    /// is said once per interval, not once per route.
    pub kafka_reports: Arc<ClientReports>,
}

/// A running pipeline.
pub struct Pipeline {
    pub route: String,
    pub handle: RouteHandle,
    pub dispatcher: JoinHandle<()>,
    pub watch: Option<JoinHandle<()>>,
}

/// Starts route `route`'s pipeline: opens its dedup store, starts its consumer and its
/// dispatcher, and its pod watch in Kubernetes mode. It stops once `shutdown` turns true.
/// Waits on nothing Kafka does: the consumer's thread connects and joins in the background.
pub async fn start(
    config: &Config,
    route: &RouteConfig,
    shared: &Shared,
    shutdown: watch::Receiver<bool>,
) -> Result<Pipeline, PipelineError> {
    let dedup = match route.dedup_settings() {
        Some(settings) => {
            let store = crate::dedup::open(&settings, &route.name).await.map_err(PipelineError::Dedup)?;
            info!(route = route.name, store = store.kind(), "effectively-once: duplicates are acked without delivery");
            Some(RouteDedup::new(store, settings))
        }
        None => None,
    };
    let consumer = consumer::spawn(config, route, shared.stats.clone(), shared.kafka_reports.clone())?;

    // Pod events from the route's watch; a full channel makes the watch wait (it resumes from
    // where it was, nothing is lost).
    let (pod_tx, pod_rx) = mpsc::channel(256);
    let mut selector = None;
    let watch = shared.kube.clone().map(|(client, namespace)| {
        let (selector_tx, selector_rx) = watch::channel(route.selector.clone());
        selector = Some(selector_tx);
        tokio::spawn(follow_pods(client, namespace, selector_rx, pod_tx.clone()))
    });
    drop(pod_tx);

    let settings = DispatcherSettings {
        commit_interval: Duration::from_millis(config.kafka.commit_interval_ms),
        max_uncommitted: config.kafka.max_uncommitted_per_partition,
        shutdown_grace: Duration::from_millis(config.server.shutdown_grace_ms),
        revoke_drain: Duration::from_millis(config.kafka.revoke_drain_ms),
        discovery: config.discovery.mode,
    };
    let d = Dispatcher::new(Registry::new(route.clone()), shared.stats.clone(), settings)
        .with_dead_letter_producer(shared.dead_letters.clone())
        .with_dedup(dedup)
        .with_watched_selector(selector);
    // Requests from streams and operators: bounded, a full channel slows the streams'
    // readers (see dispatcher::RouteHandle).
    let (handle, commands) = dispatcher::channel();
    let span = tracing::info_span!("route", route = route.name);
    let dispatcher = tokio::spawn(dispatcher::run(d, commands, consumer, pod_rx, shutdown).instrument(span));
    Ok(Pipeline { route: route.name.clone(), handle, dispatcher, watch })
}

/// Route name to its dispatcher: how a Hello finds its pipeline, and how new route settings
/// reach theirs. Cheap to clone.
#[derive(Clone, Default)]
pub struct Routes {
    by_name: Arc<BTreeMap<String, RouteHandle>>,
}

impl Routes {
    pub fn new(pipelines: &[Pipeline]) -> Self {
        Self { by_name: Arc::new(pipelines.iter().map(|p| (p.route.clone(), p.handle.clone())).collect()) }
    }

    /// Every route's name, sorted.
    pub fn names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }

    /// The dispatcher of the route a subscriber names.
    pub fn find(&self, route: &str) -> Result<&RouteHandle, RegisterError> {
        if route.trim().is_empty() {
            return Err(RegisterError::MissingRoute);
        }
        self.by_name.get(route).ok_or_else(|| RegisterError::UnknownRoute {
            route: route.to_string(),
            known: self.by_name.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    /// Applies new settings to existing routes (weights, selector, windows, empty-cohort
    /// policy) without touching Kafka. Returns the names of routes it does not know (adding a
    /// route needs a restart) or whose pipeline has stopped.
    pub async fn update(&self, routes: Vec<RouteConfig>) -> Vec<String> {
        let mut unknown = Vec::new();
        for route in routes {
            let name = route.name.clone();
            let Some(handle) = self.by_name.get(&name) else {
                unknown.push(name);
                continue;
            };
            if !handle.update(route).await.unwrap_or(false) {
                unknown.push(name);
            }
        }
        unknown
    }
}

/// Watches the pods the route selects and forwards the events, restarting the watch when
/// the route's selector changes (its first event is then a full resync under the new one).
async fn follow_pods(
    client: kube::Client,
    namespace: Option<String>,
    mut selector: watch::Receiver<String>,
    pods: mpsc::Sender<crate::discovery::PodEvent>,
) {
    loop {
        let current = selector.borrow_and_update().clone();
        // Bounded: a slow dispatcher makes the watch wait; it resumes where it was.
        let (tx, mut rx) = mpsc::channel(64);
        let watch = tokio::spawn(crate::discovery::kube::watch_pods(client.clone(), namespace.clone(), current, tx));
        loop {
            tokio::select! {
                event = rx.recv() => match event {
                    Some(event) => {
                        if pods.send(event).await.is_err() {
                            watch.abort();
                            return;
                        }
                    }
                    None => return,
                },
                changed = selector.changed() => {
                    watch.abort();
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
            }
        }
    }
}
