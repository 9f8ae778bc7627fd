//! Wiring: starts one pipeline per route (see [`crate::pipeline`]), the Subscribe gRPC server
//! and the admin server for one configuration, and stops them in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::admin::{ConfigSource, Control};
use crate::config::{Config, DiscoveryMode, RouteConfig};
use crate::dead_letters::DeadLetterProducer;
use crate::grpc::admin::{AdminService, DeadLettersService};
use crate::grpc::auth::{AdminAuth, AuthLayer};
use crate::grpc::connections;
use crate::grpc::fanout::FanoutService;
use crate::grpc::health::{self, HealthReporter};
use crate::grpc::tls;
use crate::kafka::ClientReports;
use crate::pipeline::{self, Pipeline, PipelineError, Routes, Shared};
use crate::proto::admin::admin_server::AdminServer;
use crate::proto::admin::dead_letters_server::DeadLettersServer;
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
    #[error("{section}.{source}")]
    Tls {
        section: &'static str,
        #[source]
        source: crate::grpc::tls::TlsError,
    },
}

/// The Subscribe service's full name, as health checks and reflection know it.
const FANOUT_SERVICE: &str = "fanout.v1.Fanout";
/// The admin service's full name.
const ADMIN_SERVICE: &str = "fanout.admin.v1.Admin";

type ServerTask = JoinHandle<Result<(), tonic::transport::Error>>;

/// A running gateway.
pub struct GatewayHandle {
    addr: SocketAddr,
    stats: Arc<Stats>,
    shutdown: watch::Sender<bool>,
    pipelines: Vec<Pipeline>,
    control: Control,
    server: ServerTask,
    server_stop: oneshot::Sender<()>,
    admin_addr: SocketAddr,
    admin_server: ServerTask,
    admin_stop: oneshot::Sender<()>,
    health: HealthReporter,
    readiness: JoinHandle<()>,
    /// Looks at running rollouts and moves them (see `admin::rollouts`).
    rollouts: JoinHandle<()>,
    tls_reloads: Vec<JoinHandle<()>>,
}

/// Starts a gateway with static discovery (labels from each Hello).
pub async fn start(config: Config) -> Result<GatewayHandle, StartError> {
    start_with(config, None).await
}

/// Starts a gateway whose settings live in memory only (demo, tools, tests).
pub async fn start_with(config: Config, kube: Option<kube::Client>) -> Result<GatewayHandle, StartError> {
    start_from(config, kube, ConfigSource::Memory).await
}

async fn bind(addr: &str) -> Result<(TcpListener, SocketAddr), StartError> {
    let fail = |source| StartError::Bind { addr: addr.to_string(), source };
    let listener = TcpListener::bind(addr).await.map_err(fail)?;
    let local = listener.local_addr().map_err(fail)?;
    Ok((listener, local))
}

/// Starts a gateway: binds the gRPC and admin ports, starts one pipeline per route (each joins
/// its own consumer group), watches the routes' pods when discovery is Kubernetes (through
/// `kube`), serves subscribers and operators. `source` is where the settings live: weight
/// changes from the admin API go there. Waits on nothing Kafka does: the route consumers
/// connect and join in the background, and readiness (`/readyz`, grpc.health) says not ready
/// until Kafka answers and every group has settled.
pub async fn start_from(
    config: Config,
    kube: Option<kube::Client>,
    source: ConfigSource,
) -> Result<GatewayHandle, StartError> {
    if config.discovery.mode == DiscoveryMode::Kube && kube.is_none() {
        return Err(StartError::NoKubeClient);
    }
    let (listener, addr) = bind(&config.server.listen).await?;
    let (admin_listener, admin_addr) = bind(&config.server.admin_listen).await?;
    // Before any route starts: a certificate that does not load stops the start.
    let subscribe_tls = config.server.tls.as_ref().map(|t| tls::server_tls("server.tls", t, false)).transpose();
    let subscribe_tls = subscribe_tls.map_err(|source| StartError::Tls { section: "server.tls", source })?;
    let admin_tls = config.server.admin_tls.as_ref().map(|t| tls::server_tls("server.admin_tls", t, true)).transpose();
    let admin_tls = admin_tls.map_err(|source| StartError::Tls { section: "server.admin_tls", source })?;
    let stats = Arc::new(Stats::default());
    let kafka_reports = ClientReports::new(stats.clone(), &config.kafka.bootstrap_servers);
    let dead_letters = if config.routes.iter().any(|r| r.dead_letter_topic.is_some() || r.retry.retry_topic.is_some()) {
        Some(DeadLetterProducer::new(&config, kafka_reports.clone()).map_err(StartError::DeadLetterProducer)?)
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
    let shared = Shared { stats: stats.clone(), dead_letters, kube, kafka_reports };
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
    let reviewer = shared.kube.as_ref().map(|(client, _)| {
        crate::discovery::token_review::TokenReviewer::new(client.clone(), config.discovery.token_audience.clone())
    });
    let service =
        FanoutServer::new(FanoutService::new(routes.clone(), config.server.max_streams).with_token_reviewer(reviewer));
    // grpc.health.v1 for probes: "" and fanout.v1.Fanout serve while the gateway runs and
    // report NOT_SERVING once a graceful stop begins, so load balancers stop sending streams.
    // Both follow readiness (see `follow_readiness`): not serving until Kafka answers and the
    // routes' groups have settled.
    let (health, health_service) = health::health();
    health.set("", false);
    health.set(FANOUT_SERVICE, false);
    let reflection_v1 = crate::grpc::reflection().build_v1().map_err(StartError::Reflection)?;
    let reflection_v1alpha = crate::grpc::reflection().build_v1alpha().map_err(StartError::Reflection)?;
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_millis(config.server.keepalive_interval_ms)))
        .http2_keepalive_timeout(Some(Duration::from_millis(config.server.keepalive_timeout_ms)))
        .max_concurrent_streams(config.server.max_streams_per_connection)
        .add_service(health_service.clone())
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service);
    // Deliveries are latency-sensitive small frames: no Nagle (set per connection).
    let plain = connections::incoming(listener, limits);
    let stop = async {
        let _ = stop_rx.await;
    };
    let server = match &subscribe_tls {
        Some(t) => tokio::spawn(router.serve_with_incoming_shutdown(tls::incoming(plain, t.acceptor.clone()), stop)),
        None => tokio::spawn(router.serve_with_incoming_shutdown(plain, stop)),
    };
    let groups: Vec<String> = config.routes.iter().map(|r| r.group(&config.kafka)).collect();
    let auth = AdminAuth::new(config.server.admin_token_file.clone().map(Into::into), config.server.admin_open_reads)
        .with_allowed_identities(config.server.admin_allowed_identities.clone());
    let control = Control::new(config, routes, stats.clone(), source);
    let (admin_stop, admin_stop_rx) = oneshot::channel::<()>();
    health.set(ADMIN_SERVICE, true);
    let admin_reflection_v1 = crate::grpc::admin_reflection().build_v1().map_err(StartError::Reflection)?;
    let admin_reflection_v1alpha = crate::grpc::admin_reflection().build_v1alpha().map_err(StartError::Reflection)?;
    // The admin port speaks HTTP/1.1 too: /metrics, /healthz and /readyz sit beside the gRPC
    // services, for Prometheus and the kubelet.
    let admin_routes = tonic::service::Routes::new(health_service)
        .add_service(admin_reflection_v1)
        .add_service(admin_reflection_v1alpha)
        .add_service(AdminServer::new(AdminService::new(control.clone())))
        .add_service(DeadLettersServer::new(DeadLettersService::new(control.clone())))
        .into_axum_router()
        .merge(crate::admin::http::router(control.clone()))
        .fallback(crate::admin::http::not_found);
    let admin_router = tonic::transport::Server::builder()
        .accept_http1(true)
        .layer(AuthLayer::new(auth))
        .add_routes(tonic::service::Routes::from(admin_routes));
    // The same bounds as the Subscribe port: the admin port answers without credentials
    // (probes, /metrics), so silent or dribbling sockets must not pile up there either and
    // starve the process of descriptors. hyper closes an HTTP/1 request whose head has not
    // arrived within 30 s.
    let admin_plain = connections::incoming(admin_listener, limits);
    let admin_stop_signal = async {
        let _ = admin_stop_rx.await;
    };
    let admin_server = match &admin_tls {
        Some(t) => tokio::spawn(
            admin_router
                .serve_with_incoming_shutdown(tls::incoming(admin_plain, t.acceptor.clone()), admin_stop_signal),
        ),
        None => tokio::spawn(admin_router.serve_with_incoming_shutdown(admin_plain, admin_stop_signal)),
    };
    // Rotated certificate files are picked up while the ports serve.
    let tls_reloads: Vec<JoinHandle<()>> = [&subscribe_tls, &admin_tls]
        .into_iter()
        .flatten()
        .map(|t| tokio::spawn(t.cert.clone().follow(t.reload_every)))
        .collect();
    let readiness = tokio::spawn(follow_readiness(control.clone(), health.clone()));
    let rollouts = tokio::spawn(control.clone().drive_rollouts());
    info!(%addr, %admin_addr, groups = %groups.join(", "), "gateway serving");
    Ok(GatewayHandle {
        addr,
        stats,
        shutdown,
        pipelines,
        control,
        server,
        server_stop,
        admin_addr,
        admin_server,
        admin_stop,
        health,
        readiness,
        rollouts,
        tls_reloads,
    })
}

/// How often readiness is assessed for grpc.health (the consumers' statistics, which it reads,
/// come every second).
const READINESS_EVERY: Duration = Duration::from_millis(500);

/// Keeps grpc.health's "" and `fanout.v1.Fanout` statuses on the replica's readiness, and
/// says in the log when it changes.
async fn follow_readiness(control: Control, health: HealthReporter) {
    let mut last: Option<crate::readiness::Readiness> = None;
    let mut tick = tokio::time::interval(READINESS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = control.readiness();
        if last.as_ref().is_some_and(|l| l.same_as(&now)) {
            continue;
        }
        health.set("", now.ready);
        health.set(FANOUT_SERVICE, now.ready);
        if now.ready {
            info!("ready: kafka reachable, every route's group settled");
        } else if last.as_ref().is_some_and(|l| l.ready) {
            warn!(reason = now.reason, "not ready any more");
        } else {
            info!(reason = now.reason, "not ready yet");
        }
        last = Some(now);
    }
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

    /// Address the admin API listens on.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// `http://admin_addr`, for fanoutctl and admin clients.
    pub fn admin_endpoint(&self) -> String {
        format!("http://{}", self.admin_addr)
    }

    /// Applies new settings to existing routes (weights, selector, windows, empty-cohort
    /// policy) without touching Kafka. Returns the names of routes it did not know.
    pub async fn update_routes(&self, routes: Vec<RouteConfig>) -> Vec<String> {
        self.control.apply_routes(routes).await
    }

    /// The control surface (status, weights, drains; follows the config file).
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// Graceful stop: no new deliveries, wait for in-flight acks (up to the grace period),
    /// commit, leave the groups, end the streams, stop the server.
    pub async fn shutdown(self) {
        self.stats.stopping.store(true, std::sync::atomic::Ordering::Relaxed);
        self.readiness.abort();
        // No rollout moves while the routes stop: another replica, or this one restarted,
        // goes on from the record.
        self.rollouts.abort();
        for reload in &self.tls_reloads {
            reload.abort();
        }
        self.health.set(FANOUT_SERVICE, false);
        self.health.set(ADMIN_SERVICE, false);
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
        let _ = self.admin_stop.send(());
        match tokio::time::timeout(Duration::from_secs(5), self.admin_server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => warn!(%error, "admin server ended with an error"),
            Ok(Err(error)) => warn!(%error, "admin server task failed"),
            Err(_) => warn!("admin server did not stop within 5 s"),
        }
        info!("gateway stopped");
    }
}
