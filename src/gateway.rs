//! Wiring: starts one pipeline per route (see [`crate::pipeline`]) and the gRPC server for one
//! configuration, and stops them in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::{Config, DiscoveryMode, RouteConfig};
use crate::deadletter::DeadLetterProducer;
use crate::grpc::connections;
use crate::grpc::fanout::FanoutService;
use crate::grpc::health::{self, HealthReporter};
use crate::pipeline::{self, Pipeline, PipelineError, Routes, Shared};
use crate::proto::fanout_server::FanoutServer;
use crate::stats::Stats;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("route `{route}`: {source}")]
    Route {
        route: String,
        #[source]
        source: PipelineError,
    },
    #[error("cannot create the dead-letter producer: {0}")]
    DeadLetterProducer(#[source] rdkafka::error::KafkaError),
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[source] tonic_reflection::server::Error),
    #[error("discovery.mode = \"kube\" needs a Kubernetes client (in-cluster config or KUBECONFIG)")]
    NoKubeClient,
}

/// The Subscribe service's full name, as health checks and reflection know it.
const FANOUT_SERVICE: &str = "fanout.v1.Fanout";

/// A running gateway.
pub struct GatewayHandle {
    addr: SocketAddr,
    stats: Arc<Stats>,
    shutdown: watch::Sender<bool>,
    pipelines: Vec<Pipeline>,
    routes: Routes,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    server_stop: oneshot::Sender<()>,
    health: HealthReporter,
}

/// Starts a gateway with static discovery (labels from each Hello).
pub async fn start(config: Config) -> Result<GatewayHandle, StartError> {
    start_with(config, None).await
}

/// Starts a gateway: binds the gRPC port, starts one pipeline per route (each joins its own
/// consumer group), watches the routes' pods when discovery is Kubernetes (through `kube`),
/// serves subscribers.
pub async fn start_with(config: Config, kube: Option<kube::Client>) -> Result<GatewayHandle, StartError> {
    if config.discovery.mode == DiscoveryMode::Kube && kube.is_none() {
        return Err(StartError::NoKubeClient);
    }
    let listener = TcpListener::bind(&config.server.listen)
        .await
        .map_err(|source| StartError::Bind { addr: config.server.listen.clone(), source })?;
    let addr =
        listener.local_addr().map_err(|source| StartError::Bind { addr: config.server.listen.clone(), source })?;
    let stats = Arc::new(Stats::default());
    let dead_letters = if config.routes.iter().any(|r| r.dead_letter_topic.is_some() || r.retry.retry_topic.is_some()) {
        Some(DeadLetterProducer::new(&config).map_err(StartError::DeadLetterProducer)?)
    } else {
        None
    };
    let kube = match (config.discovery.mode, kube) {
        (DiscoveryMode::Kube, Some(client)) => {
            let namespace = config.discovery.namespace.clone().or_else(|| std::env::var("POD_NAMESPACE").ok());
            Some((client, namespace))
        }
        _ => None,
    };
    let shared = Shared { stats: stats.clone(), dead_letters, kube };
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut pipelines = Vec::with_capacity(config.routes.len());
    for route in &config.routes {
        match pipeline::start(&config, route, &shared, shutdown_rx.clone()).await {
            Ok(p) => pipelines.push(p),
            Err(source) => {
                // Stop the routes started so far: they hold consumer group memberships.
                let _ = shutdown.send(true);
                stop_pipelines(pipelines).await;
                return Err(StartError::Route { route: route.name.clone(), source });
            }
        }
    }
    let routes = Routes::new(&pipelines);

    let limits = connections::Limits {
        idle_timeout: Duration::from_millis(config.server.idle_timeout_ms),
        max_connections: config.server.max_connections,
    };
    let (server_stop, stop_rx) = oneshot::channel::<()>();
    let service = FanoutServer::new(FanoutService::new(routes.clone(), config.server.max_streams));
    // grpc.health.v1 for probes: "" and fanout.v1.Fanout serve while the gateway runs and
    // report NOT_SERVING once a graceful stop begins, so load balancers stop sending streams.
    let (health, health_service) = health::health();
    health.set("", true);
    health.set(FANOUT_SERVICE, true);
    let reflection_v1 = crate::grpc::reflection().build_v1().map_err(StartError::Reflection)?;
    let reflection_v1alpha = crate::grpc::reflection().build_v1alpha().map_err(StartError::Reflection)?;
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_millis(config.server.keepalive_interval_ms)))
            .http2_keepalive_timeout(Some(Duration::from_millis(config.server.keepalive_timeout_ms)))
            .max_concurrent_streams(config.server.max_streams_per_connection)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(service)
            // Deliveries are latency-sensitive small frames: no Nagle (set per connection).
            .serve_with_incoming_shutdown(connections::incoming(listener, limits), async {
                let _ = stop_rx.await;
            }),
    );
    let groups: Vec<String> = config.routes.iter().map(|r| r.group(&config.kafka)).collect();
    info!(%addr, ?groups, routes = config.routes.len(), "gateway serving");
    Ok(GatewayHandle { addr, stats, shutdown, pipelines, routes, server, server_stop, health })
}

/// Waits for stopping pipelines to finish (each commits and leaves its group).
async fn stop_pipelines(pipelines: Vec<Pipeline>) {
    for p in pipelines {
        if let Some(w) = &p.watch {
            w.abort();
        }
        if let Err(error) = p.dispatcher.await {
            warn!(route = p.route, %error, "dispatcher task failed");
        }
    }
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

    /// Gateway-wide counters (every route's part added up).
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Applies new settings to existing routes (weights, selector, windows, empty-cohort
    /// policy) without touching Kafka. Returns the names of routes it did not know.
    pub async fn update_routes(&self, routes: Vec<RouteConfig>) -> Vec<String> {
        self.routes.update(routes).await
    }

    /// The routes' front door (config reload).
    pub fn routes(&self) -> Routes {
        self.routes.clone()
    }

    /// Graceful stop: no new deliveries, wait for in-flight acks (up to the grace period),
    /// commit, leave the groups, end the streams, stop the server.
    pub async fn shutdown(self) {
        self.health.set(FANOUT_SERVICE, false);
        self.health.set("", false);
        let _ = self.shutdown.send(true);
        stop_pipelines(self.pipelines).await;
        // Open health watches end here, or the server would wait for them.
        self.health.stop();
        let _ = self.server_stop.send(());
        match tokio::time::timeout(Duration::from_secs(5), self.server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => warn!(%error, "grpc server ended with an error"),
            Ok(Err(error)) => warn!(%error, "grpc server task failed"),
            Err(_) => {
                Stats::bump(&self.stats.server_stop_overruns, 1);
                warn!("grpc server did not stop within 5 s")
            }
        }
        info!("gateway stopped");
    }
}

/// Re-reads the config file when it changes and applies its routes' new settings; a file that
/// does not load is refused with an error log and the running routes stay as they are.
/// Polls the file's modification time (works on ConfigMap volumes, where the file is swapped
/// through a symlink and inotify events are unreliable).
pub async fn watch_config(path: std::path::PathBuf, routes: Routes, every: Duration) {
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
                let unknown = routes.update(config.routes).await;
                if !unknown.is_empty() {
                    warn!(
                        ?unknown,
                        "routes not known to the running gateway were ignored; adding routes needs a restart"
                    );
                }
            }
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "config change refused; the running routes stay as they are")
            }
        }
    }
}
