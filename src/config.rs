//! Gateway configuration: a TOML file, parsed and validated once, with environment overrides.
//!
//! Everything downstream (the Kafka consumer, the dispatcher, the gRPC server) receives an
//! already-validated [`Config`]; a bad file is refused here with every problem named by its
//! field path (`routes[1].topics`), so nothing starts half-configured. [`Config::check`]
//! reports those problems as a compiler would (file, line, column, the line quoted; see
//! [`Report`]) for `serve` and `check-config`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

pub mod dedup;
mod diagnose;
pub mod head_of_line;
pub mod rate_limit;
mod report;
mod spans;
mod validate;
mod wording;

pub use diagnose::Secrets;
pub use report::{Diagnostic, Location, Report};

/// Environment variable that overrides `kafka.bootstrap_servers`.
pub const ENV_BOOTSTRAP_SERVERS: &str = "FANOUT_BOOTSTRAP_SERVERS";
/// Environment variable that overrides `kafka.group_instance_id` (a StatefulSet sets it to the
/// pod name for static membership).
pub const ENV_GROUP_INSTANCE_ID: &str = "FANOUT_GROUP_INSTANCE_ID";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config error at `{path}`: {message}")]
    Parse { path: String, message: String },
    #[error("invalid config:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

/// What a secret's source must look like.
const SECRET_SOURCE_FORMS: &str = "write where to read the secret: \"file:/path\" or \"env:NAME\"";

/// One validation problem, named by the path of the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}`: {}", self.field, self.message)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub discovery: DiscoveryConfig,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

/// Where subscribers' labels come from, and in Kubernetes where the config itself lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    #[serde(default)]
    pub mode: DiscoveryMode,
    /// kube mode: namespace whose pods are watched; default the gateway's own (`POD_NAMESPACE`).
    #[serde(default)]
    pub namespace: Option<String>,
    /// kube mode: the ConfigMap (in `namespace`) this config comes from. Set, it is the source
    /// of truth: every replica watches it through the API (not the mounted file, which the
    /// kubelet refreshes a minute late) and applies a change within seconds, and the admin
    /// API's SetWeights patches it.
    #[serde(default)]
    pub config_map: Option<String>,
    /// The key of `config_map` that holds this file.
    #[serde(default = "default_config_map_key")]
    pub config_map_key: String,
    /// kube mode: the audience subscribers' projected ServiceAccount tokens are issued for
    /// (their `serviceAccountToken.audience`); the TokenReview of a route with
    /// `identity = "token"` asks for it. Unset: the API server's default audience.
    #[serde(default)]
    pub token_audience: Option<String>,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            mode: DiscoveryMode::default(),
            namespace: None,
            config_map: None,
            config_map_key: default_config_map_key(),
            token_audience: None,
        }
    }
}

/// How a subscriber proves which pod it is (kube mode).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum IdentityMode {
    /// The stream comes from the IP of the pod its Hello names.
    #[default]
    #[serde(rename = "peer-ip")]
    PeerIp,
    /// The stream carries the pod's projected ServiceAccount token (`authorization: Bearer`),
    /// which the API server's TokenReview confirms and names the pod of: behind a mesh sidecar
    /// or a NAT, where the peer address is not the pod's.
    #[serde(rename = "token")]
    Token,
    /// Both.
    #[serde(rename = "token+peer-ip")]
    TokenAndPeerIp,
}

impl IdentityMode {
    pub fn needs_token(self) -> bool {
        matches!(self, Self::Token | Self::TokenAndPeerIp)
    }

    pub fn checks_peer_ip(self) -> bool {
        matches!(self, Self::PeerIp | Self::TokenAndPeerIp)
    }
}

/// `fanout.toml`, as in k8s/configmap.yaml.
fn default_config_map_key() -> String {
    "fanout.toml".to_string()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiscoveryMode {
    /// Labels come from each subscriber's Hello (no Kubernetes needed).
    #[default]
    Static,
    /// Labels come from the subscriber's pod, watched through the Kubernetes API; the Hello's
    /// pod and namespace are checked against the pod and the stream's peer address.
    Kube,
}

impl DiscoveryMode {
    /// The mode as the config file writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Static => "static",
            Self::Kube => "kube",
        }
    }
}

/// Which messages must keep their order, and so which hash routes them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// Per key: a key's messages go to one subscriber, one after another across moves.
    #[default]
    Key,
    /// Per partition: a partition's messages go to one subscriber.
    Partition,
    /// None: every message is routed on its own; spreads best.
    None,
}

/// What happens to a cohort's share while that cohort has no subscriber.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmptyCohort {
    /// Wait for a subscriber of that cohort: nothing goes to the wrong version.
    #[default]
    Hold,
    /// Send it to the subscribers of the other cohorts.
    Spill,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the Subscribe gRPC service.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// How long a graceful shutdown waits for in-flight deliveries to be acked before it
    /// commits and leaves the group.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// The server pings every HTTP/2 connection this often (a live peer answers); a peer that
    /// does not answer within `keepalive_timeout_ms` is dropped.
    #[serde(default = "default_keepalive_interval_ms")]
    pub keepalive_interval_ms: u64,
    #[serde(default = "default_keepalive_timeout_ms")]
    pub keepalive_timeout_ms: u64,
    /// A connection from which nothing arrives this long is closed: a socket that never spoke
    /// HTTP/2, or a peer that is gone. Longer than `keepalive_interval_ms`, so live peers,
    /// which answer the pings, are never cut.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Open connections at most; past it a new connection is closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Concurrent streams per connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).
    #[serde(default = "default_max_streams_per_connection")]
    pub max_streams_per_connection: u32,
    /// Open Subscribe streams at most, all connections together; past it a new one gets
    /// RESOURCE_EXHAUSTED.
    #[serde(default = "default_max_streams")]
    pub max_streams: usize,
    /// Address of the admin API (`fanout.admin.v1.Admin`, what `fanoutctl` talks to).
    #[serde(default = "default_admin_listen")]
    pub admin_listen: String,
    /// File holding the bearer token that calls which change something (weights, drains)
    /// must present; a mounted Secret in Kubernetes. Re-read when it changes. Unset: such
    /// calls are refused.
    #[serde(default)]
    pub admin_token_file: Option<String>,
    /// Whether read-only admin calls (Status) are open to anyone who reaches the admin port;
    /// false: they need the token too.
    #[serde(default = "default_true")]
    pub admin_open_reads: bool,
    /// TLS on the Subscribe port. Unset: plaintext (inside a mesh that encrypts, say).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// TLS on the admin port (its gRPC API, /metrics and the probes: set the probes' scheme
    /// to HTTPS). Unset: plaintext.
    #[serde(default)]
    pub admin_tls: Option<TlsConfig>,
    /// DNS names (subject alternative names) of client certificates that may make changing
    /// admin calls without the bearer token: an mTLS identity instead of a shared secret.
    /// Needs `admin_tls.client_ca_file`, which verifies those certificates.
    #[serde(default)]
    pub admin_allowed_identities: Vec<String>,
}

/// A port's TLS: certificate and key files (PEM; reloaded when they change), and optionally
/// the CA bundle client certificates must chain to (mTLS: a client without one is refused).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: String,
    pub key_file: String,
    #[serde(default)]
    pub client_ca_file: Option<String>,
    /// How often the files are looked at for a rotation.
    #[serde(default = "default_tls_reload_interval_ms")]
    pub reload_interval_ms: u64,
}

/// 5 s: cert-manager renews well before expiry; a rotation is picked up within seconds.
const fn default_tls_reload_interval_ms() -> u64 {
    5_000
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            shutdown_grace_ms: default_shutdown_grace_ms(),
            keepalive_interval_ms: default_keepalive_interval_ms(),
            keepalive_timeout_ms: default_keepalive_timeout_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
            max_connections: default_max_connections(),
            max_streams_per_connection: default_max_streams_per_connection(),
            max_streams: default_max_streams(),
            admin_listen: default_admin_listen(),
            admin_token_file: None,
            admin_open_reads: true,
            tls: None,
            admin_tls: None,
            admin_allowed_identities: Vec::new(),
        }
    }
}

/// `0.0.0.0:9090`: the port the Kubernetes manifests name `admin`.
fn default_admin_listen() -> String {
    "0.0.0.0:9090".to_string()
}

const fn default_true() -> bool {
    true
}

/// `0.0.0.0:50051`: the conventional gRPC port.
fn default_listen() -> String {
    "0.0.0.0:50051".to_string()
}

/// 10 s: well below Kubernetes' default 30 s termination grace period.
const fn default_shutdown_grace_ms() -> u64 {
    10_000
}

const fn default_keepalive_interval_ms() -> u64 {
    30_000
}

const fn default_keepalive_timeout_ms() -> u64 {
    20_000
}

/// Two pings' worth: a live peer answers at least every `keepalive_interval_ms`.
const fn default_idle_timeout_ms() -> u64 {
    60_000
}

/// Far above any sane number of subscribers per replica, far below a default fd limit.
const fn default_max_connections() -> usize {
    10_000
}

/// A subscriber needs one stream per route; a hundred leaves room for health checks.
const fn default_max_streams_per_connection() -> u32 {
    100
}

/// Each stream costs a session (its queue and in-flight set): thousands per replica is plenty.
const fn default_max_streams() -> usize {
    10_000
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    /// Prefix of the routes' consumer groups: route `orders` consumes as `<group_id>.orders`
    /// unless it names its own (`routes[].group_id`). Also the group of the former layout, in
    /// which all routes shared this one group: a route whose group has no offsets yet starts
    /// where this group left its topics (see [`crate::kafka::upgrade`]).
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// Static membership: a restart with the same id within `session.timeout.ms` does not
    /// rebalance the routes' groups. Each route's consumer uses `<group_instance_id>.<route>`.
    #[serde(default)]
    pub group_instance_id: Option<String>,
    /// The routes' group protocol: `classic` (JoinGroup/SyncGroup, the cooperative-sticky
    /// assignor chosen by the gateway) or `consumer` (KIP-848: the broker assigns, and a
    /// member's change moves only its own partitions without stopping the group). A field,
    /// not a passed-through property, because the gateway sets different properties for each.
    #[serde(default)]
    pub group_protocol: GroupProtocol,
    /// How long a revoked partition may wait for its in-flight deliveries' acks before its
    /// commit and release. Like Vector's Kafka source, well below `session.timeout.ms`
    /// (librdkafka's default 45 s): the group's next generation waits for the release.
    #[serde(default = "default_revoke_drain_ms")]
    pub revoke_drain_ms: u64,
    #[serde(default)]
    pub auto_offset_reset: AutoOffsetReset,
    /// How often acked offsets are committed (also on revoke and on shutdown).
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// Most un-committed messages held per partition; past it the partition is paused on the
    /// consumer until acks move the commit point. Bounds memory whatever the lag.
    #[serde(default = "default_max_uncommitted")]
    pub max_uncommitted_per_partition: usize,
    /// Further librdkafka properties, passed through as they are to every client the gateway
    /// makes (route consumers, the dead-letter producer, replay and redrive readers): TLS
    /// (`security.protocol`, `ssl.ca.location`, ...), SASL, timeouts.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties whose values are secrets, named by where to read them when the
    /// config loads: `file:/path` (the file's content, trailing newline removed: a mounted
    /// Secret) or `env:NAME`. They join `properties`, stay out of the config file and the
    /// ConfigMap, and are never logged (see [`crate::redact`]).
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
}

/// Sensitive property values print as `[redacted]`: a config may be logged or shown whole.
impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| {
                let secret = crate::redact::is_sensitive(k) || self.secrets.contains_key(k);
                (k.as_str(), if secret { crate::redact::REDACTED } else { v.as_str() })
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("group_id", &self.group_id)
            .field("group_instance_id", &self.group_instance_id)
            .field("group_protocol", &self.group_protocol)
            .field("revoke_drain_ms", &self.revoke_drain_ms)
            .field("auto_offset_reset", &self.auto_offset_reset)
            .field("commit_interval_ms", &self.commit_interval_ms)
            .field("max_uncommitted_per_partition", &self.max_uncommitted_per_partition)
            .field("properties", &properties)
            .field("secrets", &self.secrets)
            .finish()
    }
}

/// `fanout-gateway`.
fn default_group_id() -> String {
    "fanout-gateway".to_string()
}

/// 5 s: a prompt subscriber acks well within it; a rebalance waits at most this long for a
/// slow one.
const fn default_revoke_drain_ms() -> u64 {
    5_000
}

/// 1 s: a restart redelivers at most about a second of acked work beyond what commit
/// metadata already records.
const fn default_commit_interval_ms() -> u64 {
    1_000
}

/// 10 000 messages per partition.
const fn default_max_uncommitted() -> usize {
    10_000
}

/// Where to start when the group has no committed offset (librdkafka's `auto.offset.reset`).
///
/// Kafka's default is `latest`; ours is `earliest`, deliberately. The gateway promises that
/// nothing produced is skipped: with `latest`, whatever is produced between a route's creation
/// and its group's first assignment (a deploy of the gateway beside its producers, a replica
/// that starts late) would be skipped without a trace. A route's group has no offset only
/// the first time: afterwards it starts from its commits, and a route that takes over from the
/// former shared group is seeded with that group's offsets (`kafka::upgrade`), so neither
/// replays history. The price is that a new route on a long-retention topic delivers all of
/// it: such a route sets `auto_offset_reset = "latest"` (README, Configuration).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoOffsetReset {
    #[default]
    Earliest,
    Latest,
    /// Refuse to guess: the partition reports an error until an offset is committed.
    Error,
}

impl AutoOffsetReset {
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            Self::Earliest => "earliest",
            Self::Latest => "latest",
            Self::Error => "error",
        }
    }
}

/// The consumer group protocol of the routes' groups (librdkafka's `group.protocol`).
///
/// `classic` is the default because it works with every broker the gateway supports; `consumer`
/// (KIP-848) needs Kafka 4.0 or later. Under `consumer` the broker owns the session timeout,
/// the heartbeat interval and the assignor (`group.consumer.*` broker settings), and librdkafka
/// refuses the client-side properties for them, so the gateway sets none and validation
/// refuses them in `kafka.properties`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupProtocol {
    #[default]
    Classic,
    Consumer,
}

impl GroupProtocol {
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Consumer => "consumer",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Name subscribers put in `Hello.route`.
    pub name: String,
    /// The route's own consumer group; default `<kafka.group_id>.<name>`. Every route is a
    /// subscription of its own: its commits, lag and pauses never touch another route's.
    #[serde(default)]
    pub group_id: Option<String>,
    /// Where the route starts when its group has no committed offset; unset: the gateway's
    /// `kafka.auto_offset_reset`. `latest` for a route that should deliver only what is
    /// produced from now on (a new route on a long-retention topic would otherwise deliver
    /// its whole history).
    #[serde(default)]
    pub auto_offset_reset: Option<AutoOffsetReset>,
    /// Topics whose messages this route delivers.
    pub topics: Vec<String>,
    /// Cap on a subscriber's in-flight window (`Hello.max_in_flight` and credits).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// Window given to a subscriber whose Hello asks for 0.
    #[serde(default = "default_window")]
    pub default_in_flight: u32,
    /// Kubernetes label selector of the subscribers this route serves (`app=orders`,
    /// `track in (blue,green)`); empty selects every subscriber that names the route.
    #[serde(default)]
    pub selector: String,
    /// Label whose values name cohorts (`track`); unset: one cohort, every subscriber alike.
    #[serde(default)]
    pub split_label: Option<String>,
    /// Share of messages per cohort (`blue = 0, green = 100`); need not sum to 100.
    #[serde(default)]
    pub weights: BTreeMap<String, u32>,
    #[serde(default)]
    pub ordering: Ordering,
    #[serde(default)]
    pub empty_cohort: EmptyCohort,
    /// kube mode: how a subscriber proves which pod it is (see [`IdentityMode`]).
    #[serde(default)]
    pub identity: IdentityMode,
    #[serde(default)]
    pub delivery: DeliveryMode,
    /// How long a subscriber has to ack or nack a delivery before it is taken back and
    /// redelivered (attempt + 1); 0 waits forever. Like Pub/Sub's ack deadline: a subscriber
    /// that hangs must not hold its messages, and its partition's commits, hostage.
    #[serde(default = "default_ack_timeout_ms")]
    pub ack_timeout_ms: u64,
    /// How long after it was sent a delivery's deadline may be extended to (`Extend`), like
    /// the Pub/Sub client libraries' maximum extension: a handler that keeps extending but
    /// never finishes is taken back in the end. Never less than `ack_timeout_ms` in effect. A
    /// delivery held this long holds its partition's commits as long (Kafka commits a
    /// partition only up to its oldest unsettled offset).
    #[serde(default = "default_max_lease_ms")]
    pub max_lease_ms: u64,
    /// How fast the route may deliver (messages and/or bytes per second, token bucket), for a
    /// downstream that can take only so much. Messages beyond it wait in the gateway and the
    /// route's partitions pause at `max_uncommitted_per_partition` as for a slow subscriber:
    /// nothing is buffered past the bound, and nothing is dropped. Unset: no limit.
    #[serde(default)]
    pub rate_limit: Option<rate_limit::RateLimit>,
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Where messages go that exhausted `retry.max_attempts` or were nacked as DEAD_LETTER.
    /// Unset: such messages keep being redelivered at the longest backoff, nothing is dropped.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Moves a message that holds its partition's commits back (see [`head_of_line`]).
    /// Unset: such a message holds them until it is settled or out of attempts.
    #[serde(default)]
    pub head_of_line: Option<head_of_line::HeadOfLine>,
    /// An acked delivery keeps its place in the subscriber's window until its ack is
    /// committed, and commits go out as soon as the previous one lands. A gateway crash then
    /// redelivers at most the subscribers' windows, at the cost of a commit round trip per
    /// window's worth of messages. Off: commits every `kafka.commit_interval_ms`, and a crash
    /// also redelivers what was acked since the last commit.
    #[serde(default)]
    pub window_until_commit: bool,
    /// `fixed`: a subscriber holds up to its window. `adaptive`: its window follows how fast
    /// it acks (see `subscriptions::adaptive`): cut when acks come back late or it nacks
    /// `DISPOSITION_OVERLOADED`, grown back when they come in time, never above its window.
    #[serde(default)]
    pub window: WindowMode,
    /// Duplicate detection for `delivery = "effectively-once"` (in-memory store by default).
    #[serde(default)]
    pub dedup: Option<dedup::DedupConfig>,
    /// A rollout of a candidate cohort through steps, judged against the stable cohort (see
    /// [`crate::rollout`]). Written by `fanoutctl rollout start` and by the gateway as the
    /// rollout moves; kept here so every replica and a restarted gateway see the same one.
    #[serde(default)]
    pub rollout: Option<crate::rollout::Rollout>,
}

/// How a subscriber's window is sized.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WindowMode {
    /// What its Hello asked for (capped by `max_in_flight`), and its credits.
    #[default]
    Fixed,
    /// Below that, following how fast it acks.
    Adaptive,
}

/// What a route promises about each message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryMode {
    /// Committed only after the subscriber acks; redelivered after failures.
    #[default]
    AtLeastOnce,
    /// Committed before it is sent; never redelivered. A crash loses what was in flight.
    AtMostOnce,
    /// At-least-once, with duplicates (by idempotency key) acked without being delivered.
    EffectivelyOnce,
}

/// Redelivery after a nack or an ack deadline: exponential backoff with jitter, then the
/// dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Deliveries of one message before it is dead-lettered, the first included.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles per attempt up to `max_backoff_ms`.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Retries go through this topic instead of the gateway's memory: the failed message is
    /// produced there (with its origin, attempts and when it may go again in headers), its
    /// origin offset commits once Kafka has it, and the gateway delivers it from the retry topic
    /// when its backoff is over. The partition is not held up by a slow retry, and retries
    /// survive a gateway restart; a key's order is not kept across a retry.
    #[serde(default)]
    pub retry_topic: Option<String>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            initial_backoff_ms: default_initial_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
            retry_topic: None,
        }
    }
}

/// 30 s, as a Kafka consumer's default `max.poll.interval.ms` is 5 min and Pub/Sub's ack
/// deadline defaults to 10 s: long enough for slow handlers, short enough that a hung one
/// does not stall a partition's commits for long.
const fn default_ack_timeout_ms() -> u64 {
    30_000
}

/// An hour, the Pub/Sub client libraries' default maximum extension.
const fn default_max_lease_ms() -> u64 {
    3_600_000
}

/// 5 attempts: Pub/Sub's smallest dead-letter threshold.
const fn default_max_attempts() -> u32 {
    5
}

/// 500 ms.
const fn default_initial_backoff_ms() -> u64 {
    500
}

/// 60 s.
const fn default_max_backoff_ms() -> u64 {
    60_000
}

impl RouteConfig {
    /// A route over `topics` with every default: one cohort, key ordering.
    pub fn new(name: &str, topics: &[&str]) -> Self {
        Self {
            name: name.to_string(),
            group_id: None,
            auto_offset_reset: None,
            topics: topics.iter().map(|t| t.to_string()).collect(),
            max_in_flight: default_max_in_flight(),
            default_in_flight: default_window(),
            selector: String::new(),
            split_label: None,
            weights: BTreeMap::new(),
            ordering: Ordering::Key,
            empty_cohort: EmptyCohort::Hold,
            identity: IdentityMode::PeerIp,
            delivery: DeliveryMode::AtLeastOnce,
            ack_timeout_ms: default_ack_timeout_ms(),
            max_lease_ms: default_max_lease_ms(),
            rate_limit: None,
            retry: RetryPolicy::default(),
            dead_letter_topic: None,
            head_of_line: None,
            window_until_commit: false,
            window: WindowMode::Fixed,
            dedup: None,
            rollout: None,
        }
    }

    /// The route's selector, parsed (validated at load, so an error here is a bug upstream).
    pub fn parsed_selector(&self) -> Result<crate::selector::Selector, crate::selector::SelectorError> {
        self.selector.parse()
    }

    /// Where the route's consumer starts without a committed offset: its own setting, else
    /// the gateway's.
    pub fn offset_reset(&self, kafka: &KafkaConfig) -> AutoOffsetReset {
        self.auto_offset_reset.unwrap_or(kafka.auto_offset_reset)
    }

    /// The route's consumer group: its own `group_id`, else `<kafka.group_id>.<name>`.
    pub fn group(&self, kafka: &KafkaConfig) -> String {
        self.group_id.clone().unwrap_or_else(|| format!("{}.{}", kafka.group_id, self.name))
    }

    /// The route consumer's static membership id, derived from the gateway's: one process is
    /// a member of every route's group, under one id per group.
    pub fn group_instance_id(&self, kafka: &KafkaConfig) -> Option<String> {
        kafka.group_instance_id.as_ref().map(|id| format!("{id}.{}", self.name))
    }

    /// Topics the route's consumer subscribes to: its own and its retry topic.
    pub fn consumed_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.topics.iter().cloned().chain(self.retry.retry_topic.clone()).collect();
        topics.sort();
        topics.dedup();
        topics
    }

    /// Whether `topic` is this route's retry topic.
    pub fn retries_through(&self, topic: &str) -> bool {
        self.retry.retry_topic.as_deref() == Some(topic)
    }

    /// The dedup settings of an effectively-once route (its own or the defaults), else None.
    pub fn dedup_settings(&self) -> Option<dedup::DedupConfig> {
        (self.delivery == DeliveryMode::EffectivelyOnce).then(|| self.dedup.clone().unwrap_or_default())
    }

    /// Cohort weights in a stable order (by cohort name), as routing wants them.
    pub fn weight_list(&self) -> Vec<(String, u32)> {
        self.weights.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// 1 000 deliveries.
const fn default_max_in_flight() -> u32 {
    1_000
}

/// 100 deliveries.
const fn default_window() -> u32 {
    100
}

impl Config {
    /// Reads, parses, applies environment overrides and validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        let mut config = Self::parse(&text)?;
        config.apply_env(|name| std::env::var(name).ok());
        config.resolve_secrets(|name| std::env::var(name).ok())?;
        config.validate()?;
        Ok(config)
    }

    /// Reads the file at `path` and checks it whole, the environment's overrides applied and
    /// secrets as `secrets` says: the config, or every problem of the file, each placed at
    /// its line and column. What `serve` (with [`Secrets::Read`]) and `check-config` (with
    /// [`Secrets::FormOnly`]) run; needs neither Kafka nor Kubernetes.
    pub fn check(path: &Path, secrets: Secrets) -> Result<Self, Report> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| Report::unreadable(&file, &error))?;
        diagnose::check_text(&file, &text, secrets, |name| std::env::var(name).ok())
    }

    /// The problems [`Self::resolve_secrets`] would find without reading anything: each
    /// secret must say where it is read from.
    fn secret_form_problems(&self) -> Vec<Problem> {
        self.kafka
            .secrets
            .iter()
            .filter(|(_, source)| !source.starts_with("file:") && !source.starts_with("env:"))
            .map(|(property, _)| Problem {
                field: format!("kafka.secrets.\"{property}\""),
                message: SECRET_SOURCE_FORMS.to_string(),
            })
            .collect()
    }

    /// Reads `kafka.secrets` into `kafka.properties` (files now, environment through
    /// `lookup`), and registers every secret value, inline sensitive properties included, for
    /// redaction. A secret that cannot be read is an error naming its field.
    pub fn resolve_secrets(&mut self, lookup: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        for (property, source) in &self.kafka.secrets {
            let field = format!("kafka.secrets.\"{property}\"");
            let value = if let Some(path) = source.strip_prefix("file:") {
                match std::fs::read_to_string(path) {
                    Ok(text) => Some(text.trim_end_matches(['\r', '\n']).to_string()),
                    Err(e) => {
                        problems.push(Problem { field, message: format!("cannot read {path}: {e}") });
                        None
                    }
                }
            } else if let Some(name) = source.strip_prefix("env:") {
                let value = lookup(name).filter(|v| !v.is_empty());
                if value.is_none() {
                    problems.push(Problem { field, message: format!("environment variable {name} is not set") });
                }
                value
            } else {
                problems.push(Problem { field, message: SECRET_SOURCE_FORMS.to_string() });
                None
            };
            if let Some(value) = value {
                self.kafka.properties.insert(property.clone(), value);
            }
        }
        for (property, value) in &self.kafka.properties {
            if crate::redact::is_sensitive(property) || self.kafka.secrets.contains_key(property) {
                crate::redact::register(value);
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Parses TOML text (no environment, no validation). A syntax error is a
    /// [`ConfigError::Parse`]; unknown fields, wrong types and missing fields are all named,
    /// each by its path and with its line and column, in a [`ConfigError::Invalid`].
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        diagnose::parse(text)
    }

    /// Applies environment overrides through a lookup function, so tests need not touch the
    /// process environment.
    pub fn apply_env(&mut self, lookup: impl Fn(&str) -> Option<String>) {
        if let Some(v) = lookup(ENV_BOOTSTRAP_SERVERS).filter(|v| !v.trim().is_empty()) {
            self.kafka.bootstrap_servers = v;
        }
        if let Some(v) = lookup(ENV_GROUP_INSTANCE_ID).filter(|v| !v.trim().is_empty()) {
            self.kafka.group_instance_id = Some(v);
        }
    }

    /// Every topic some route consumes, sorted and deduplicated.
    pub fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> =
            self.routes.iter().flat_map(|r| r.topics.iter().cloned().chain(r.retry.retry_topic.clone())).collect();
        topics.sort();
        topics.dedup();
        topics
    }

    /// A ready configuration for one route over the given topics (demo and tests), consuming
    /// as group `group_id` itself.
    pub fn single_route(bootstrap: &str, group_id: &str, route: &str, topics: &[&str]) -> Self {
        let mut route = RouteConfig::new(route, topics);
        route.group_id = Some(group_id.to_string());
        Self {
            server: ServerConfig {
                listen: "127.0.0.1:0".into(),
                admin_listen: "127.0.0.1:0".into(),
                ..ServerConfig::default()
            },
            kafka: KafkaConfig {
                bootstrap_servers: bootstrap.to_string(),
                group_id: group_id.to_string(),
                group_instance_id: None,
                group_protocol: GroupProtocol::default(),
                revoke_drain_ms: default_revoke_drain_ms(),
                auto_offset_reset: AutoOffsetReset::Earliest,
                commit_interval_ms: 200,
                max_uncommitted_per_partition: default_max_uncommitted(),
                properties: BTreeMap::new(),
                secrets: BTreeMap::new(),
            },
            discovery: DiscoveryConfig::default(),
            routes: vec![route],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_come_from_files_or_the_environment_and_never_print() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("password");
        std::fs::write(&file, "s3cret-from-file\n").expect("write");
        let text = GOOD.replace(
            "[kafka]\n",
            &format!(
                "[kafka]\nsecrets = {{ \"sasl.password\" = \"file:{}\", \"sasl.oauthbearer.client.secret\" = \"env:OIDC\" }}\n",
                file.display()
            ),
        );
        let mut config = Config::parse(&text).expect("parses");
        config.kafka.properties.insert("ssl.key.password".into(), "inline-key-pass".into());
        config.resolve_secrets(|name| (name == "OIDC").then(|| "oidc-from-env".to_string())).expect("resolves");
        assert_eq!(config.kafka.properties["sasl.password"], "s3cret-from-file");
        assert_eq!(config.kafka.properties["sasl.oauthbearer.client.secret"], "oidc-from-env");
        let shown = format!("{config:?}");
        for secret in ["s3cret-from-file", "oidc-from-env", "inline-key-pass"] {
            assert!(!shown.contains(secret), "{secret} printed by Debug");
            assert_eq!(crate::redact::redact(&format!("x {secret} y")), "x [redacted] y");
        }

        let mut missing = Config::parse(&text).expect("parses");
        let err = missing.resolve_secrets(|_| None).expect_err("no env").to_string();
        assert!(err.contains("kafka.secrets.\"sasl.oauthbearer.client.secret\"") && err.contains("OIDC"), "{err}");
        let mut bad = Config::parse(&text.replace("env:OIDC", "OIDC")).expect("parses");
        let err = bad.resolve_secrets(|_| None).expect_err("no source").to_string();
        assert!(err.contains("file:/path"), "{err}");
    }

    pub(super) const GOOD: &str = r#"
        [server]
        listen = "127.0.0.1:50051"

        [kafka]
        bootstrap_servers = "kafka-0:9092"
        group_id = "gw"
        auto_offset_reset = "latest"
        [kafka.properties]
        "session.timeout.ms" = "10000"

        [[routes]]
        name = "orders"
        topics = ["orders", "orders-retry"]
        max_in_flight = 500
    "#;

    pub(super) fn problems(text: &str) -> Vec<String> {
        let config = Config::parse(text).expect("parses");
        match config.validate() {
            Err(ConfigError::Invalid(p)) => p.into_iter().map(|p| p.field).collect(),
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn a_route_may_start_elsewhere_than_the_gateways_default() {
        let text = GOOD.replace("auto_offset_reset = \"latest\"\n", "")
            + "\n[[routes]]\nname = \"audit\"\ntopics = [\"orders\"]\nauto_offset_reset = \"latest\"\n";
        let config = Config::parse(&text).expect("parses");
        assert_eq!(config.kafka.auto_offset_reset, AutoOffsetReset::Earliest, "the default skips nothing");
        assert_eq!(config.routes[0].offset_reset(&config.kafka), AutoOffsetReset::Earliest);
        assert_eq!(config.routes[1].offset_reset(&config.kafka), AutoOffsetReset::Latest);
        let client = crate::kafka::consumer::client_config(&config, &config.routes[1]);
        assert_eq!(client.get("auto.offset.reset"), Some("latest"), "the route's consumer starts where it says");
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let config = Config::parse(GOOD).expect("parses");
        config.validate().expect("valid");
        assert_eq!(config.kafka.auto_offset_reset, AutoOffsetReset::Latest);
        assert_eq!(config.kafka.commit_interval_ms, 1_000);
        assert_eq!(config.routes[0].max_in_flight, 500);
        assert_eq!(config.routes[0].default_in_flight, 100);
        assert_eq!(config.topics(), vec!["orders", "orders-retry"]);
    }

    #[test]
    fn unknown_field_is_named_with_its_path() {
        let text = GOOD.replace("max_in_flight = 500", "max_inflight = 500");
        let err = Config::parse(&text).expect_err("unknown field");
        let msg = err.to_string();
        assert!(msg.contains("routes[0]"), "{msg}");
        assert!(msg.contains("max_inflight"), "{msg}");
    }

    #[test]
    fn bad_enum_value_is_named_with_its_path() {
        let text = GOOD.replace("\"latest\"", "\"newest\"");
        let err = Config::parse(&text).expect_err("bad variant");
        let msg = err.to_string();
        assert!(msg.contains("kafka.auto_offset_reset"), "{msg}");
        assert!(msg.contains("newest"), "{msg}");
    }

    #[test]
    fn wrong_type_is_named_with_its_path() {
        let text = GOOD.replace("max_in_flight = 500", "max_in_flight = \"lots\"");
        let msg = Config::parse(&text).expect_err("bad type").to_string();
        assert!(msg.contains("routes[0].max_in_flight"), "{msg}");
    }

    #[test]
    fn missing_required_field_is_named() {
        let text = GOOD.replace("bootstrap_servers = \"kafka-0:9092\"", "");
        let msg = Config::parse(&text).expect_err("missing").to_string();
        assert!(msg.contains("bootstrap_servers"), "{msg}");
    }

    #[test]
    fn example_config_is_valid() {
        let config = Config::parse(include_str!("../examples/fanout.toml")).expect("parses");
        config.validate().expect("valid");
        assert_eq!(config.topics(), vec!["orders", "payments"]);
    }

    /// The config shipped in the Kubernetes ConfigMap loads (the block under `fanout.toml: |`).
    #[test]
    fn kubernetes_configmap_config_is_valid() {
        let yaml = include_str!("../k8s/configmap.yaml");
        let mut lines = yaml.lines().skip_while(|l| l.trim() != "fanout.toml: |").skip(1);
        let first = lines.next().expect("the block has content");
        let indent = first.len() - first.trim_start().len();
        let mut text = format!("{}\n", &first[indent..]);
        for line in lines {
            if !line.trim().is_empty() && line.len() - line.trim_start().len() < indent {
                break;
            }
            text.push_str(line.get(indent..).unwrap_or(""));
            text.push('\n');
        }
        let config = Config::parse(&text).expect("parses");
        config.validate().expect("valid");
        assert_eq!(config.discovery.mode, DiscoveryMode::Kube);
        assert!(config.routes.iter().any(|r| r.split_label.as_deref() == Some("track")));
    }

    #[test]
    fn each_route_gets_a_consumer_group_and_member_id_of_its_own() {
        let text =
            format!("{GOOD}\n[[routes]]\nname = \"audit\"\ntopics = [\"orders\"]\ngroup_id = \"audit-readers\"\n");
        let mut config = Config::parse(&text).expect("parses");
        config.validate().expect("valid");
        assert_eq!(config.routes[0].group(&config.kafka), "gw.orders");
        assert_eq!(config.routes[1].group(&config.kafka), "audit-readers");
        assert_eq!(config.routes[0].group_instance_id(&config.kafka), None);
        config.kafka.group_instance_id = Some("fanout-gateway-0".into());
        assert_eq!(config.routes[0].group_instance_id(&config.kafka).as_deref(), Some("fanout-gateway-0.orders"));
        assert_eq!(config.routes[1].group_instance_id(&config.kafka).as_deref(), Some("fanout-gateway-0.audit"));

        let clash = text.replace("group_id = \"audit-readers\"", "group_id = \"gw.orders\"");
        assert_eq!(problems(&clash), vec!["routes[1].group_id"]);
        let bad_name = text.replace("name = \"audit\"", "name = \"audit log\"");
        assert_eq!(problems(&bad_name), vec!["routes[1].name"]);
    }

    #[test]
    fn env_overrides_bootstrap_and_instance_id() {
        let mut config = Config::parse(GOOD).expect("parses");
        config.apply_env(|name| match name {
            ENV_BOOTSTRAP_SERVERS => Some("broker:9093".into()),
            ENV_GROUP_INSTANCE_ID => Some("gateway-0".into()),
            _ => None,
        });
        assert_eq!(config.kafka.bootstrap_servers, "broker:9093");
        assert_eq!(config.kafka.group_instance_id.as_deref(), Some("gateway-0"));
    }
}
