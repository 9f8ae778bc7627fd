//! The subscriber: a builder for its settings, and `run`, the one task that follows replica
//! discovery, keeps a [`Connection`] per replica, and on shutdown drains them all.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fanout_proto::v1::Hello;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};
use tower::discover::{Change, Discover};
use tower::retry::backoff::ExponentialBackoffMaker;
use tower::util::rng::HasherRng;
use tracing::{debug, info, warn};

use crate::connection::{Connection, Exit, Settings};
use crate::handler::Handler;
use crate::replicas::{self, Replica, Replicas};
use crate::stats::{Counters, Stats};
use crate::stream::ClientTls;
use crate::{pool, Error};

/// Subscribes to one route on every replica of a gateway and runs a [`Handler`] on what
/// arrives. Build one with [`Subscriber::builder`], then [`Subscriber::run`] it.
#[derive(Debug)]
pub struct Subscriber {
    settings: Settings,
    replicas: Replicas,
    tls: Option<ClientTls>,
    concurrency: usize,
    stats: Stats,
}

/// The settings of a [`Subscriber`]; every one but the route and the replicas has a default.
#[derive(Debug, Clone)]
pub struct SubscriberBuilder {
    route: String,
    replicas: Option<Replicas>,
    hello: Hello,
    concurrency: usize,
    /// The window given to `max_in_flight`; without one it follows the concurrency.
    window: Option<u32>,
    ack_batch: usize,
    ack_interval: Duration,
    drain_timeout: Duration,
    backoff: (Duration, Duration),
    healthy_after: Duration,
    identity_grace: Duration,
    max_message_bytes: usize,
    max_lease_extension: Duration,
    tls: Option<ClientTls>,
    token_file: Option<PathBuf>,
    labels_file: Option<PathBuf>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings").field("route", &self.hello.route).finish_non_exhaustive()
    }
}

/// A host name as a pod name the gateway accepts (a lowercase DNS subdomain of at most 253
/// characters): a laptop's `Dev-Box_1.local` becomes `dev-box-1.local`. A pod's own host name
/// is its name already and stays as it is.
fn as_pod_name(host: &str) -> String {
    let mapped: String = host
        .chars()
        .take(253)
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '.') => c,
            _ => '-',
        })
        .collect();
    let parts: Vec<&str> = mapped.split('.').map(|p| p.trim_matches('-')).filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        "subscriber".into()
    } else {
        parts.join(".")
    }
}

impl Subscriber {
    /// Settings for a subscriber of `route`. The Hello's pod name and namespace come from the
    /// downward API's `POD_NAME` and `POD_NAMESPACE` (the pod name falls back to `HOSTNAME`).
    pub fn builder(route: impl Into<String>) -> SubscriberBuilder {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        SubscriberBuilder {
            route: route.into(),
            replicas: None,
            hello: Hello {
                pod_name: env("POD_NAME")
                    .or_else(|| env("HOSTNAME").map(|h| as_pod_name(&h)))
                    .unwrap_or_else(|| "subscriber".into()),
                namespace: env("POD_NAMESPACE").unwrap_or_default(),
                ..Hello::default()
            },
            concurrency: 16,
            window: None,
            ack_batch: 64,
            ack_interval: Duration::from_millis(10),
            drain_timeout: Duration::from_secs(20),
            backoff: (Duration::from_millis(100), Duration::from_secs(10)),
            healthy_after: Duration::from_secs(10),
            identity_grace: Duration::from_secs(30),
            max_message_bytes: 64 << 20,
            max_lease_extension: Duration::from_secs(3_600),
            tls: None,
            token_file: None,
            labels_file: None,
        }
    }

    /// The subscriber's counters, live while it runs.
    pub fn stats(&self) -> Stats {
        self.stats.clone()
    }

    /// Streams from every replica and runs `handler` until `shutdown` resolves, then drains:
    /// sends `Drain` on every stream, lets the handlers finish what is in flight (up to the
    /// drain timeout), acks it, and returns `Ok(())`.
    ///
    /// Returns an [`Error::Refused`] as soon as a replica answers with a status no retry can
    /// fix (an unknown route, a malformed hello, missing or refused credentials), after
    /// draining the other streams. Everything else (unreachable or restarting replicas,
    /// broken streams) is retried with backoff for as long as it takes. A gateway that drains
    /// this subscriber unasked (an operator's `fanoutctl drain`) takes it out: every stream
    /// drains, none is opened again, and `run` waits for `shutdown`.
    pub async fn run<H: Handler>(self, handler: H, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let Subscriber { settings, replicas, tls, concurrency, stats } = self;
        let tls = tls
            .map(|mut tls| {
                // Replicas found through DNS are dialled by address; their certificate names
                // the Service.
                tls.domain = tls.domain.or_else(|| replicas.dns_host());
                tls.config()
            })
            .transpose()?;
        let settings = Arc::new(settings);
        let (pool, pool_task) = pool::spawn(handler, concurrency, stats.0.clone());
        let mut discovery = replicas::discover(replicas);
        // Each replica's stream, by key: an id (a replica that leaves and comes back is a new
        // member) and the switch that makes it drain.
        let mut members: HashMap<String, (u64, watch::Sender<bool>)> = HashMap::new();
        let mut streams = JoinSet::new();
        let mut next_id = 0u64;
        let mut discovering = true;
        // Set once a gateway drained this subscriber unasked: no stream is opened after that.
        let mut taken_out = false;
        let mut outcome = Ok(());
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => {
                    info!(route = %settings.hello.route, "shutting down: draining every stream");
                    break;
                }
                change = std::future::poll_fn(|cx| std::pin::Pin::new(&mut discovery).poll_discover(cx)), if discovering => {
                    match change {
                        Some(Ok(Change::Insert(key, _))) if taken_out => {
                            debug!(replica = %key, "replica found; no stream: an operator drained this subscriber");
                        }
                        Some(Ok(Change::Insert(key, replica))) if !members.contains_key(&key) => {
                            let channel = match channel(&replica, tls.as_ref()) {
                                Ok(channel) => channel,
                                Err(error) => {
                                    outcome = Err(error);
                                    break;
                                }
                            };
                            info!(replica = %key, "replica found; opening a stream");
                            let (leave_tx, leave) = watch::channel(false);
                            next_id += 1;
                            members.insert(key.clone(), (next_id, leave_tx));
                            let connection = Connection {
                                replica,
                                channel,
                                settings: settings.clone(),
                                pool: pool.clone(),
                                counters: stats.0.clone(),
                                leave,
                            };
                            let id = next_id;
                            streams.spawn(async move { (key, id, connection.run().await) });
                        }
                        Some(Ok(Change::Insert(..))) => {}
                        Some(Ok(Change::Remove(key))) => {
                            if let Some((_, leave)) = members.remove(&key) {
                                info!(replica = %key, "replica gone from discovery; draining its stream");
                                let _ = leave.send(true);
                            }
                        }
                        Some(Err(never)) => match never {},
                        None => discovering = false,
                    }
                }
                Some(joined) = streams.join_next() => match joined {
                    Ok((key, id, Ok(exit))) => {
                        if members.get(&key).is_some_and(|(member, _)| *member == id) {
                            members.remove(&key);
                        }
                        if exit == Exit::DrainedByGateway {
                            Counters::add(&stats.0.drained_by_gateway, 1);
                            if !taken_out {
                                taken_out = true;
                                // The operator meant the pod: leave the other replicas too
                                // (each drains what it holds), and wait for the shutdown.
                                leave_all(&members);
                            }
                        }
                    }
                    Ok((_, _, Err(error))) => {
                        warn!(%error, "subscription refused; draining the other streams");
                        outcome = Err(error);
                        break;
                    }
                    Err(join) => {
                        outcome = Err(Error::Internal(join.to_string()));
                        break;
                    }
                },
            }
        }
        drop(discovery);
        leave_all(&members);
        // Every stream drains at once, each within the drain timeout.
        let deadline = tokio::time::Instant::now() + settings.drain_timeout + Duration::from_secs(1);
        while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, streams.join_next()).await {
            if let (Ok((_, _, Err(error))), true) = (joined, outcome.is_ok()) {
                outcome = Err(error);
            }
        }
        streams.abort_all();
        drop(pool);
        let _ = tokio::time::timeout_at(deadline, pool_task).await;
        outcome
    }
}

/// Tells every replica's stream to drain and end.
fn leave_all(members: &HashMap<String, (u64, watch::Sender<bool>)>) {
    for (_, leave) in members.values() {
        let _ = leave.send(true);
    }
}

/// A lazily connecting channel to one replica (tonic's channel reconnects underneath, and a
/// broken connection surfaces as the stream's error, which [`Connection`] retries).
fn channel(replica: &Replica, tls: Option<&tonic::transport::ClientTlsConfig>) -> Result<Channel, Error> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let uri = format!("{scheme}://{}", replica.authority);
    let bad =
        |e: tonic::transport::Error| Error::Endpoint { endpoint: replica.authority.clone(), reason: e.to_string() };
    let mut endpoint = Endpoint::from_shared(uri)
        .map_err(bad)?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        // A replica that vanished without closing its connections (a node lost) is noticed
        // within about 30 s instead of never.
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls.clone()).map_err(bad)?;
    }
    Ok(endpoint.connect_lazy())
}

impl SubscriberBuilder {
    /// The gateway replicas to stream from (required).
    pub fn replicas(mut self, replicas: Replicas) -> Self {
        self.replicas = Some(replicas);
        self
    }

    /// The name this subscriber reports (default: `POD_NAME`, then `HOSTNAME`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.hello.pod_name = name.into();
        self
    }

    /// The namespace this subscriber reports (default: `POD_NAMESPACE`).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.hello.namespace = namespace.into();
        self
    }

    /// A label of this subscriber, which a gateway with static discovery routes by (in
    /// Kubernetes mode the gateway reads the pod's own labels instead).
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.hello.labels.insert(key.into(), value.into());
        self
    }

    /// The pod's labels from a downward-API volume file (`fieldRef: metadata.labels`, lines of
    /// `key="value"`), read by [`build`](Self::build); labels set with [`label`](Self::label)
    /// win over the file's.
    pub fn labels_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.labels_file = Some(path.into());
        self
    }

    /// Deliveries each stream may hold un-acked (default: twice the concurrency; 0: the
    /// route's default window). What a stream holds waits for a handler, and the gateway
    /// expires deliveries un-acked past the route's `ack_timeout_ms`: keep `replicas x window`
    /// within what the handlers finish in that time.
    pub fn max_in_flight(mut self, window: u32) -> Self {
        self.window = Some(window);
        self
    }

    /// How many deliveries a second each stream takes at most (`Hello.rate_limit`, capped by
    /// the route's `rate_limit`; 0, the default: the route's limit alone). Per stream, as the
    /// gateway counts it: a subscriber reaching three replicas takes up to three times this.
    pub fn max_messages_per_second(mut self, messages_per_s: u64) -> Self {
        self.hello.rate_limit = (messages_per_s > 0)
            .then(|| fanout_proto::v1::RateLimit { messages_per_s, ..fanout_proto::v1::RateLimit::default() });
        self
    }

    /// Handlers running at once, over all streams (default 16). Deliveries of one key run
    /// one at a time whatever this is.
    pub fn concurrency(mut self, handlers: usize) -> Self {
        self.concurrency = handlers;
        self
    }

    /// Acks go up in batches of `count`, or after `interval` (defaults 64 and 10 ms). A batch
    /// is never more than half the stream's window, so a small window is not left waiting for
    /// the interval with its acks held back.
    pub fn ack_batch(mut self, count: usize, interval: Duration) -> Self {
        self.ack_batch = count;
        self.ack_interval = interval;
        self
    }

    /// How long a drain may wait for in-flight handlers (default 20 s; keep it under the pod's
    /// `terminationGracePeriodSeconds`).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Reconnect backoff: from `min`, doubling with jitter, up to `max` (defaults 100 ms and
    /// 10 s); reset once a stream has stayed open for `healthy_after` (default 10 s).
    pub fn backoff(mut self, min: Duration, max: Duration, healthy_after: Duration) -> Self {
        self.backoff = (min, max);
        self.healthy_after = healthy_after;
        self
    }

    /// How long a replica may refuse this pod's identity (PERMISSION_DENIED, UNAUTHENTICATED)
    /// before `run` returns the refusal (default 30 s). In Kubernetes a pod that just started is
    /// refused until the gateway's pod watch has seen it running.
    pub fn identity_grace(mut self, grace: Duration) -> Self {
        self.identity_grace = grace;
        self
    }

    /// The largest response a stream accepts (default 64 MiB): a delivery carries a whole
    /// Kafka record, which can be as large as the topic allows.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// How long a held delivery (its handler running, or waiting for one) is kept by extending
    /// its ack deadline (default an hour, as Pub/Sub's `MaxExtension`; `Duration::ZERO` turns
    /// extension off).
    /// The library extends before the route's `ack_timeout_ms` passes, each time by about
    /// as long as handlers recently took (their 99th percentile, 10 minutes at most); the
    /// route's `max_lease_ms` bounds it too. Past it the gateway takes the delivery back.
    pub fn max_lease_extension(mut self, max: Duration) -> Self {
        self.max_lease_extension = max;
        self
    }

    /// TLS (or mTLS) toward the gateway.
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// A file holding the pod's projected ServiceAccount token, for routes with
    /// `identity = "token"`: re-read at every connection, since the kubelet rotates it.
    pub fn token_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.token_file = Some(path.into());
        self
    }

    /// Checks the settings.
    pub fn build(self) -> Result<Subscriber, Error> {
        let invalid = |field: &'static str, reason: &str| Error::Setting { field, reason: reason.to_string() };
        if self.route.trim().is_empty() {
            return Err(invalid("route", "must name a route of the gateway's config"));
        }
        let replicas = match self.replicas {
            None => return Err(Error::NoReplicas),
            Some(Replicas::Static(list)) if list.is_empty() => return Err(Error::NoReplicas),
            Some(replicas) => replicas,
        };
        if self.concurrency == 0 {
            return Err(invalid("concurrency", "must be at least 1"));
        }
        if self.ack_batch == 0 {
            return Err(invalid("ack_batch", "the count must be at least 1"));
        }
        // Durations are added to the clock: a century would overflow it.
        let day = Duration::from_secs(24 * 3600);
        for (field, value) in [
            ("ack_batch", self.ack_interval),
            ("drain_timeout", self.drain_timeout),
            ("identity_grace", self.identity_grace),
            ("backoff", self.backoff.1),
        ] {
            if value > day {
                return Err(invalid(field, "must be at most a day"));
            }
        }
        let (min, max) = self.backoff;
        ExponentialBackoffMaker::new(min, max, 0.5, HasherRng::default())
            .map_err(|e| invalid("backoff", &e.to_string()))?;
        if let Some(tls) = &self.tls {
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err(invalid("tls", "cert_file and key_file go together (mTLS needs both)"));
            }
        }
        if let (Replicas::Static(list), None) = (&replicas, &self.tls) {
            if let Some(https) = list.iter().find(|e| e.starts_with("https://")) {
                return Err(invalid(
                    "tls",
                    &format!("{https} is https: give .tls(ClientTls {{ ca_file, .. }}) with the CA that signed the gateway's certificate"),
                ));
            }
        }
        let mut hello = self.hello;
        hello.route = self.route;
        hello.max_in_flight =
            self.window.unwrap_or_else(|| u32::try_from(self.concurrency.saturating_mul(2)).unwrap_or(u32::MAX));
        let ack_batch = match hello.max_in_flight {
            0 => self.ack_batch,
            window => self.ack_batch.min((window as usize / 2).max(1)),
        };
        if let Some(path) = &self.labels_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| invalid("labels_file", &format!("cannot read {}: {e}", path.display())))?;
            for (key, value) in downward_api_labels(&text) {
                hello.labels.entry(key).or_insert(value);
            }
        }
        Ok(Subscriber {
            settings: Settings {
                hello,
                token_file: self.token_file,
                ack_batch,
                ack_interval: self.ack_interval,
                drain_timeout: self.drain_timeout,
                backoff_min: min,
                backoff_max: max,
                healthy_after: self.healthy_after,
                identity_grace: self.identity_grace,
                max_message_bytes: self.max_message_bytes,
                max_lease_extension: self.max_lease_extension,
            },
            replicas,
            tls: self.tls,
            concurrency: self.concurrency,
            stats: Stats::default(),
        })
    }
}

/// The labels of a downward-API `metadata.labels` file: one `key="value"` per line, the value
/// quoted and escaped as Go's `%q` does. Lines that are not of that form are skipped.
fn downward_api_labels(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let (key, quoted) = line.split_once('=')?;
            let inner = quoted.trim().strip_prefix('"')?.strip_suffix('"')?;
            let mut value = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                value.push(if c == '\\' { chars.next()? } else { c });
            }
            Some((key.trim().to_string(), value))
        })
        .filter(|(key, _)| !key.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_name_becomes_a_pod_name_the_gateway_accepts() {
        assert_eq!(as_pod_name("orders-7d9f4-x2x8q"), "orders-7d9f4-x2x8q");
        assert_eq!(as_pod_name("Dev-Box_1.local"), "dev-box-1.local");
        assert_eq!(as_pod_name("-x-.-.y"), "x.y");
        assert_eq!(as_pod_name("___"), "subscriber");
        assert_eq!(as_pod_name(&"a".repeat(300)).len(), 253);
    }

    #[test]
    fn a_downward_api_labels_file_gives_the_pods_labels() {
        let file = "app=\"orders\"\ntrack=\"canary\"\nnote=\"a \\\"quoted\\\" word\"\nbroken\n";
        assert_eq!(
            downward_api_labels(file),
            vec![
                ("app".to_string(), "orders".to_string()),
                ("track".to_string(), "canary".to_string()),
                ("note".to_string(), "a \"quoted\" word".to_string()),
            ]
        );
    }

    #[test]
    fn the_window_follows_the_concurrency_and_an_ack_batch_never_exceeds_half_of_it() {
        let build = |b: SubscriberBuilder| b.replicas(Replicas::list(["127.0.0.1:1"])).build().expect("valid");
        let default = build(Subscriber::builder("orders").concurrency(8));
        assert_eq!((default.settings.hello.max_in_flight, default.settings.ack_batch), (16, 8));
        let small = build(Subscriber::builder("orders").max_in_flight(10));
        assert_eq!((small.settings.hello.max_in_flight, small.settings.ack_batch), (10, 5));
        let routes_default = build(Subscriber::builder("orders").max_in_flight(0));
        assert_eq!((routes_default.settings.hello.max_in_flight, routes_default.settings.ack_batch), (0, 64));
        let https = Subscriber::builder("orders").replicas(Replicas::list(["https://gw:1"])).build();
        assert!(https.expect_err("https needs TLS settings").to_string().contains("tls"));
    }

    #[test]
    fn labels_set_in_code_win_over_the_file() {
        let dir = std::env::temp_dir().join(format!("fanout-labels-{}", std::process::id()));
        std::fs::write(&dir, "track=\"blue\"\napp=\"orders\"\n").expect("write");
        let built = Subscriber::builder("orders")
            .replicas(Replicas::list(["127.0.0.1:1"]))
            .label("track", "green")
            .labels_file(&dir)
            .build()
            .expect("valid");
        let _ = std::fs::remove_file(&dir);
        let labels = &built.settings.hello.labels;
        assert_eq!((labels["track"].as_str(), labels["app"].as_str()), ("green", "orders"));
        let missing = Subscriber::builder("orders")
            .replicas(Replicas::list(["127.0.0.1:1"]))
            .labels_file("/nonexistent/labels")
            .build()
            .expect_err("an unreadable file is an error");
        assert!(missing.to_string().contains("labels_file"), "{missing}");
    }
}
