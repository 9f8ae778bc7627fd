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

use crate::config::Config;
use crate::dispatcher::{self, Dispatcher, DispatcherSettings, COMMAND_CHANNEL};
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
}

/// A running gateway.
pub struct GatewayHandle {
    addr: SocketAddr,
    stats: Arc<Stats>,
    shutdown: watch::Sender<bool>,
    dispatcher: JoinHandle<()>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    server_stop: oneshot::Sender<()>,
}

/// Starts a gateway: binds the gRPC port, joins the consumer group, serves subscribers.
pub async fn start(config: Config) -> Result<GatewayHandle, StartError> {
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
    };
    let d = Dispatcher::new(Registry::new(&config.routes), stats.clone(), settings);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let dispatcher = tokio::spawn(
        dispatcher::run(d, commands_rx, consumer, shutdown_rx).instrument(tracing::info_span!("dispatcher")),
    );

    let (server_stop, stop_rx) = oneshot::channel::<()>();
    let service = FanoutServer::new(FanoutService::new(commands_tx));
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(service)
            // Deliveries are latency-sensitive small frames: no Nagle.
            .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), async {
                let _ = stop_rx.await;
            }),
    );
    info!(%addr, group = %config.kafka.group_id, routes = config.routes.len(), "gateway serving");
    Ok(GatewayHandle { addr, stats, shutdown, dispatcher, server, server_stop })
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

    /// Graceful stop: no new deliveries, wait for in-flight acks (up to the grace period),
    /// commit, leave the group, end the streams, stop the server.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
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
