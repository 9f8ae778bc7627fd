//! Wiring: starts the consumer thread, the dispatcher task and the gRPC server for one
//! configuration, and stops them in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tracing::{info, warn, Instrument};

use crate::config::{Config, DiscoveryMode, RouteConfig};
use crate::deadletter::DeadLetterProducer;
use crate::dispatcher::{self, Command, Dispatcher, DispatcherSettings, RouteDedup, COMMAND_CHANNEL};
use crate::grpc::fanout::FanoutService;
use crate::kafka::consumer::{self, ConsumerError};
use crate::proto::fanout_server::FanoutServer;
use crate::stats::Stats;
use crate::subscriptions::Registry;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
    #[error("route `{route}`: {source}")]
    Dedup {
        route: String,
        #[source]
        source: crate::dedup::DedupError,
    },
    #[error("cannot create the dead-letter producer: {0}")]
    DeadLetterProducer(#[source] rdkafka::error::KafkaError),
    #[error("discovery.mode = \"kube\" needs a Kubernetes client (in-cluster config or KUBECONFIG)")]
    NoKubeClient,
}

/// A running gateway.
pub struct GatewayHandle {
    addr: SocketAddr,
    stats: Arc<Stats>,
    shutdown: watch::Sender<bool>,
    dispatcher: JoinHandle<()>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    server_stop: oneshot::Sender<()>,
    commands: mpsc::Sender<Command>,
    watches: Vec<JoinHandle<()>>,
    health: tonic_health::server::HealthReporter,
}

/// Starts a gateway with static discovery (labels from each Hello).
pub async fn start(config: Config) -> Result<GatewayHandle, StartError> {
    start_with(config, None).await
}

/// Starts a gateway: binds the gRPC port, joins the consumer group, watches the routes' pods
/// when discovery is Kubernetes (through `kube`), serves subscribers.
pub async fn start_with(config: Config, kube: Option<kube::Client>) -> Result<GatewayHandle, StartError> {
    if config.discovery.mode == DiscoveryMode::Kube && kube.is_none() {
        return Err(StartError::NoKubeClient);
    }
    let listener = TcpListener::bind(&config.server.listen)
        .await
        .map_err(|source| StartError::Bind { addr: config.server.listen.clone(), source })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind { addr: config.server.listen.clone(), source })?;
    let stats = Arc::new(Stats::default());
    let consumer = consumer::spawn(&config, stats.clone())?;

    // Commands from streams: bounded, a full channel slows the streams' readers (see
    // dispatcher::COMMAND_CHANNEL).
    let (commands_tx, commands_rx) = mpsc::channel(COMMAND_CHANNEL);
    let settings = DispatcherSettings {
        commit_interval: Duration::from_millis(config.kafka.commit_interval_ms),
        max_uncommitted: config.kafka.max_uncommitted_per_partition,
        shutdown_grace: Duration::from_millis(config.server.shutdown_grace_ms),
        discovery: config.discovery.mode,
    };
    // Pod events from the routes' watches; a full channel makes the watches wait (they resume
    // from where they were, nothing is lost).
    let (pod_tx, pod_rx) = mpsc::channel(256);
    let mut watches = Vec::new();
    let mut selectors = Vec::new();
    if let (DiscoveryMode::Kube, Some(client)) = (config.discovery.mode, kube) {
        let namespace = config.discovery.namespace.clone().or_else(|| std::env::var("POD_NAMESPACE").ok());
        for (r, route) in config.routes.iter().enumerate() {
            let (selector_tx, selector_rx) = watch::channel(route.selector.clone());
            selectors.push(selector_tx);
            watches.push(tokio::spawn(follow_pods(r, client.clone(), namespace.clone(), selector_rx, pod_tx.clone())));
        }
    }
    drop(pod_tx);
    let dead_letters = if config.routes.iter().any(|r| r.dead_letter_topic.is_some() || r.retry.retry_topic.is_some()) {
        Some(DeadLetterProducer::new(&config).map_err(StartError::DeadLetterProducer)?)
    } else {
        None
    };
    let mut dedup = std::collections::HashMap::new();
    for (i, route) in config.routes.iter().enumerate() {
        if let Some(settings) = route.dedup_settings() {
            let store = crate::dedup::open(&settings, &route.name)
                .await
                .map_err(|source| StartError::Dedup { route: route.name.clone(), source })?;
            info!(route = route.name, store = store.kind(), "effectively-once: duplicates are acked without delivery");
            dedup.insert(i, RouteDedup::new(store, settings));
        }
    }
    let d = Dispatcher::new(Registry::new(&config.routes), stats.clone(), settings)
        .with_dead_letter_producer(dead_letters)
        .with_dedup(dedup);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let dispatcher = tokio::spawn(
        dispatcher::run(d.with_watched_selectors(selectors), commands_rx, consumer, pod_rx, shutdown_rx).instrument(tracing::info_span!("dispatcher")),
    );

    let (server_stop, stop_rx) = oneshot::channel::<()>();
    let service = FanoutServer::new(FanoutService::new(commands_tx.clone()));
    // grpc.health.v1 for probes: "" and fanout.v1.Fanout serve while the gateway runs and
    // report NOT_SERVING once a graceful stop begins, so load balancers stop sending streams.
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<FanoutServer<FanoutService>>().await;
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(health_service)
            .add_service(service)
            // Deliveries are latency-sensitive small frames: no Nagle.
            .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), async {
                let _ = stop_rx.await;
            }),
    );
    info!(%addr, group = %config.kafka.group_id, routes = config.routes.len(), "gateway serving");
    Ok(GatewayHandle { addr, stats, shutdown, dispatcher, server, server_stop, commands: commands_tx, watches, health })
}

impl GatewayHandle {
    /// Address the gRPC server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr`, for clients.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Applies new settings to existing routes (weights, selector, windows, empty-cohort
    /// policy) without touching Kafka. Returns the names of routes it did not know.
    pub async fn update_routes(&self, routes: Vec<RouteConfig>) -> Vec<String> {
        let (reply, answer) = oneshot::channel();
        let names: Vec<String> = routes.iter().map(|r| r.name.clone()).collect();
        if self.commands.send(Command::UpdateRoutes { routes, reply: Some(reply) }).await.is_err() {
            return names;
        }
        answer.await.unwrap_or(names)
    }

    /// A sender for dispatcher commands (config reload).
    pub fn commands(&self) -> mpsc::Sender<Command> {
        self.commands.clone()
    }

    /// Graceful stop: no new deliveries, wait for in-flight acks (up to the grace period),
    /// commit, leave the group, end the streams, stop the server.
    pub async fn shutdown(self) {
        self.health.set_not_serving::<FanoutServer<FanoutService>>().await;
        self.health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        let _ = self.shutdown.send(true);
        for w in &self.watches {
            w.abort();
        }
        if let Err(error) = self.dispatcher.await {
            warn!(%error, "dispatcher task failed");
        }
        let _ = self.server_stop.send(());
        match tokio::time::timeout(Duration::from_secs(5), self.server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => warn!(%error, "grpc server ended with an error"),
            Ok(Err(error)) => warn!(%error, "grpc server task failed"),
            Err(_) => warn!("grpc server did not stop within 5 s"),
        }
        info!("gateway stopped");
    }
}

/// Re-reads the config file when it changes and applies its routes' new settings; a file that
/// does not load is refused with an error log and the running routes stay as they are.
/// Polls the file's modification time (works on ConfigMap volumes, where the file is swapped
/// through a symlink and inotify events are unreliable).
pub async fn watch_config(path: std::path::PathBuf, commands: mpsc::Sender<Command>, every: Duration) {
    let stamp = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen = stamp(&path);
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let now = stamp(&path);
        if now == seen {
            continue;
        }
        seen = now;
        match Config::load(&path) {
            Ok(config) => {
                info!(path = %path.display(), "config changed; applying route settings");
                if commands.send(Command::UpdateRoutes { routes: config.routes, reply: None }).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "config change refused; the running routes stay as they are")
            }
        }
    }
}

/// Watches the pods route `route` selects and forwards the events, restarting the watch when
/// the route's selector changes (its first event is then a full resync under the new one).
async fn follow_pods(
    route: usize,
    client: kube::Client,
    namespace: Option<String>,
    mut selector: watch::Receiver<String>,
    pods: mpsc::Sender<(usize, crate::discovery::PodEvent)>,
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
                        if pods.send((route, event)).await.is_err() {
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
