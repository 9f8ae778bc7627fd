//! What every Kafka client of the gateway does with its failures: one [`ClientReports`] per
//! gateway, shared by the route consumers and the helper clients (dead letters, replays,
//! upgrades), so a broken Kafka is said once per interval in plain words (what failed, what to
//! check), counted, and shown on the status.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use tracing::{debug, error, info, warn};

use crate::stats::Stats;

/// How every message about brokers that do not answer starts, whatever the cause found: the
/// status page and the logs can be searched for it.
const UNREACHABLE: &str = "kafka unreachable";
/// Least time between two warnings about the same kind of client failure, gateway-wide.
const SAY_EVERY: Duration = Duration::from_secs(10);
/// How long a failure that names its cause (DNS, refused, TLS, SASL) stands for the outage
/// while Kafka has not answered since: generic symptoms of it ("1/1 brokers are down", a
/// metadata request that timed out) are then counted, not said. Longer than the 30 s for which
/// librdkafka holds back a broker's identical errors, so a cause that persists is heard again
/// before it lapses.
const CAUSE_HOLDS: Duration = Duration::from_secs(60);

/// What kind of failure a Kafka client error is, for a message that says what to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ClientFailure {
    /// A broker's name does not resolve: a typo in the bootstrap list, or DNS.
    Unresolvable,
    /// Connections to a broker's address are refused: nothing listens at that port.
    Refused,
    /// No broker answers, for no reason more specific (a timeout, a dropped connection).
    Unreachable,
    /// The TLS handshake failed: a CA that did not sign the brokers' certificates, a client
    /// certificate they refuse, a plaintext listener.
    Tls,
    /// SASL authentication failed.
    Authentication,
    Other,
}

impl ClientFailure {
    /// librdkafka reports the same failure under different codes (a failed TLS handshake
    /// sometimes as `_SSL`, sometimes as a transport failure whose reason says "SSL handshake
    /// failed: ... certificate verify failed"; an unresolvable name as `_RESOLVE`, and then
    /// as `_ALL_BROKERS_DOWN`). The reason's text decides where it is specific, so the message
    /// names what to check whichever way the failure arrived. The texts are librdkafka's own
    /// (rdkafka_broker.c, rdkafka_transport.c, rdkafka_ssl.c, rdkafka_sasl*.c).
    fn of(code: Option<RDKafkaErrorCode>, reason: &str) -> Self {
        let lower = reason.to_ascii_lowercase();
        let says = |markers: &[&str]| markers.iter().any(|m| lower.contains(m));
        if code == Some(RDKafkaErrorCode::SSL)
            || says(&["ssl handshake", "certificate verify", "ssl routines", "tls handshake"])
        {
            return Self::Tls;
        }
        if matches!(code, Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed))
            || says(&["sasl authentication"])
        {
            return Self::Authentication;
        }
        if code == Some(RDKafkaErrorCode::Resolve) || says(&["failed to resolve"]) {
            return Self::Unresolvable;
        }
        if says(&["connection refused"]) {
            return Self::Refused;
        }
        match code {
            Some(RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure) => Self::Unreachable,
            _ => Self::Other,
        }
    }

    /// Whether the failure says why Kafka does not answer, rather than only that it does not.
    fn names_cause(self) -> bool {
        matches!(self, Self::Unresolvable | Self::Refused | Self::Tls | Self::Authentication)
    }

    /// What the failure says about reaching Kafka (what readiness waits for). Only a failure
    /// of the whole cluster cuts the gateway off: `_ALL_BROKERS_DOWN`, or a request that no
    /// broker answered (the probe). librdkafka reports each broker's failure on its own (one
    /// dead node of three says "Connection refused" at every reconnect), and says
    /// `_ALL_BROKERS_DOWN` only when every broker it knows is down, which a broker it never
    /// connected to never is: one broker's failure puts Kafka in doubt, and the route
    /// consumers' probe asks the cluster. One dead broker of three is Kafka's own failover to
    /// make, not a reason for Kubernetes to take every gateway replica out of its Service.
    fn effect(self, scope: Scope) -> Effect {
        match (self, scope) {
            (Self::Other, _) => Effect::None,
            (_, Scope::Broker) => Effect::Doubt,
            (_, Scope::Cluster) => Effect::CutOff,
        }
    }

    /// A short name for the log field `failure`, to count lines by.
    fn name(self) -> &'static str {
        match self {
            Self::Unresolvable => "dns",
            Self::Refused => "refused",
            Self::Unreachable => "unreachable",
            Self::Tls => "tls",
            Self::Authentication => "sasl",
            Self::Other => "other",
        }
    }

    /// One line: what failed, what to check, that the client keeps retrying, librdkafka's reason.
    fn message(self, bootstrap: &str, reason: &str) -> String {
        const SERVERS: &str = "kafka.bootstrap_servers (or FANOUT_BOOTSTRAP_SERVERS)";
        match self {
            Self::Unresolvable => format!(
                "{UNREACHABLE}: cannot resolve {}: check {SERVERS} and DNS; retrying ({reason})",
                unresolved_host(reason).unwrap_or(bootstrap)
            ),
            Self::Refused => format!(
                "{UNREACHABLE}: nothing listens at {}: check {SERVERS} and that the brokers run; retrying ({reason})",
                refused_address(reason).unwrap_or(bootstrap)
            ),
            Self::Unreachable => format!(
                "{UNREACHABLE} at {bootstrap}: {reason}; check {SERVERS} and the network; retrying"
            ),
            Self::Tls => format!(
                "TLS with kafka at {bootstrap} failed: {reason}; check ssl.ca.location (the CA that signed the brokers' certificates), ssl.certificate.location and ssl.key.location in [kafka.properties]; retrying"
            ),
            Self::Authentication => format!(
                "SASL authentication with kafka at {bootstrap} failed: {reason}; check sasl.mechanisms, sasl.username and the sasl.password secret; retrying"
            ),
            Self::Other => format!("kafka client error: {reason}"),
        }
    }
}

impl ClientFailure {
    /// One broker's failure while the cluster answers (a node down, restarting or moved): not
    /// a wrong address to check, Kafka's own failover; None for failures that say the same
    /// whoever fails (TLS, SASL: the next broker will refuse them too).
    fn one_broker_message(self, reason: &str) -> Option<String> {
        const FAILOVER: &str = "the cluster answers: Kafka serves the broker's partitions from the others meanwhile";
        match self {
            Self::Refused => Some(format!(
                "kafka broker at {} refuses connections (nothing listens there) while {FAILOVER}; retrying ({reason})",
                refused_address(reason).unwrap_or("a known address")
            )),
            Self::Unresolvable => Some(format!(
                "kafka broker {} cannot be resolved while {FAILOVER}; retrying ({reason})",
                unresolved_host(reason).unwrap_or("of the cluster")
            )),
            Self::Unreachable => Some(format!("kafka broker unreachable while {FAILOVER}; retrying ({reason})")),
            Self::Tls | Self::Authentication | Self::Other => None,
        }
    }
}

/// Whose failure a report is: one broker's (librdkafka's per-broker errors and log lines) or
/// the cluster's (`_ALL_BROKERS_DOWN`, a request that no broker answered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Broker,
    Cluster,
}

impl Scope {
    /// The scope of an error librdkafka's error callback reports.
    fn of(code: Option<RDKafkaErrorCode>) -> Self {
        if code == Some(RDKafkaErrorCode::AllBrokersDown) {
            Self::Cluster
        } else {
            Self::Broker
        }
    }
}

/// What to check after a fatal error, from librdkafka's reason ("Fatal error: Broker: Static
/// consumer fenced by other consumer with same group.instance.id: ...").
fn fatal_advice(reason: &str) -> &'static str {
    let lower = reason.to_ascii_lowercase();
    if lower.contains("fenced") && lower.contains("group.instance.id") {
        "another consumer joined the route's group with this replica's group.instance.id: two replicas \
         share kafka.group_instance_id (or FANOUT_GROUP_INSTANCE_ID; a StatefulSet gives each pod its own), or an \
         earlier process of this replica still runs"
    } else if lower.contains("sequence") || lower.contains("producer id") || lower.contains("epoch") {
        "the idempotent producer and the broker disagree on its sequence (records lost or reordered \
         between them); a new producer starts a new sequence"
    } else {
        "librdkafka can do nothing more with this client"
    }
}

/// What a failure does to the gateway's view of Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    /// Nothing: not a failure to reach Kafka.
    None,
    /// One broker failed: ask the cluster (the probe) before calling Kafka unreachable.
    Doubt,
    /// No broker answers: Kafka is unreachable, the gateway not ready.
    CutOff,
}

/// The host of librdkafka's "Failed to resolve 'HOST:PORT': ...", without its port.
fn unresolved_host(reason: &str) -> Option<&str> {
    let (_, rest) = reason.split_once("Failed to resolve '")?;
    let (name, _) = rest.split_once('\'')?;
    let host = match name.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => name,
    };
    Some(host.trim_start_matches('[').trim_end_matches(']'))
}

/// The address of librdkafka's "Connect to ipv4#ADDRESS:PORT failed: Connection refused",
/// without the address family.
fn refused_address(reason: &str) -> Option<&str> {
    let (_, rest) = reason.split_once("Connect to ")?;
    let (address, _) = rest.split_once(" failed")?;
    Some(address.split_once('#').map_or(address, |(_, a)| a))
}

/// What to do with one failure report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Verdict {
    /// Log it (at WARN).
    say: bool,
    /// Make it the status's "last Kafka error".
    record: bool,
}

/// Which failures were said when: the decision behind "once per interval, the cause first".
/// Pure: the caller says what time it is.
#[derive(Debug, Default)]
struct Said {
    /// When each kind was last logged; errors of no named kind each by their code, so that
    /// one (a topic's authorization, a request timeout) never hides another behind its limit.
    last: HashMap<(ClientFailure, Option<i32>), Instant>,
    /// The last failure that named its cause, while Kafka has not answered since.
    cause: Option<Instant>,
}

impl Said {
    /// The verdict for a failure that names its cause exactly when its kind does.
    #[cfg(test)]
    fn verdict(&mut self, kind: ClientFailure, code: Option<RDKafkaErrorCode>, now: Instant) -> Verdict {
        self.verdict_for(kind, code, kind.names_cause(), now)
    }

    /// Whether to say and record a failure of `kind`: once per interval per kind, and a
    /// symptom not over the cause said last. It names the cause of Kafka not answering only if
    /// `names_cause` (one broker's failure while the cluster answers names none: should the
    /// cluster fail next, that is said).
    fn verdict_for(
        &mut self,
        kind: ClientFailure,
        code: Option<RDKafkaErrorCode>,
        names_cause: bool,
        now: Instant,
    ) -> Verdict {
        if names_cause {
            self.cause = Some(now);
        }
        let cause_holds = self.cause.is_some_and(|at| now.saturating_duration_since(at) < CAUSE_HOLDS);
        // A symptom of the cause already said adds nothing; another kind of error still gets
        // its line, but the status keeps showing the cause.
        let subsumed = cause_holds && !names_cause;
        if subsumed && kind == ClientFailure::Unreachable {
            return Verdict { say: false, record: false };
        }
        let key = (kind, code.filter(|_| kind == ClientFailure::Other).map(|c| c as i32));
        let due = self.last.get(&key).is_none_or(|at| now.saturating_duration_since(*at) >= SAY_EVERY);
        if due {
            self.last.insert(key, now);
        }
        Verdict { say: due, record: !subsumed }
    }

    /// Kafka answered: the cause said last no longer stands for what comes next. The times
    /// said stay, so a Kafka that flaps is still said once per interval.
    fn answered(&mut self) {
        self.cause = None;
    }
}

/// What the gateway does with its Kafka clients' failures, shared by all of them: counts each
/// (`kafka_errors`), marks Kafka unreachable, keeps the status's last error, and logs each
/// kind of failure once per interval at WARN, naming what to check. librdkafka reports a
/// failure once per broker and retry and every client of the gateway sees it (one consumer per
/// route, the helper clients): without one shared limit ten routes said it ten times.
pub struct ClientReports {
    stats: Arc<Stats>,
    /// The configured bootstrap list, which the messages name.
    bootstrap: String,
    said: parking_lot::Mutex<Said>,
    /// A broker failed since the cluster last answered: the route consumers probe it.
    doubt: AtomicBool,
}

impl ClientReports {
    pub fn new(stats: Arc<Stats>, bootstrap: &str) -> Arc<Self> {
        Arc::new(Self {
            stats,
            bootstrap: bootstrap.to_string(),
            said: parking_lot::Mutex::new(Said::default()),
            doubt: AtomicBool::new(false),
        })
    }

    /// A client's error callback.
    pub fn client_error(&self, error: &KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if code == Some(RDKafkaErrorCode::Fatal) {
            // A producer's fatal error arrives here (a consumer's through its poll).
            self.fatal("a Kafka producer of the gateway", reason);
            return;
        }
        self.report(ClientFailure::of(code, reason), Scope::of(code), reason, Some(error));
    }

    /// A request to the cluster that got no answer (the metadata probe): brokers unreachable,
    /// unless its reason says more.
    pub(super) fn request_failed(&self, error: &KafkaError, what: &str) {
        let reason = format!("{what} failed ({error})");
        let kind = match ClientFailure::of(error.rdkafka_error_code(), &reason) {
            ClientFailure::Other => ClientFailure::Unreachable,
            kind => kind,
        };
        self.report(kind, Scope::Cluster, &reason, Some(error));
    }

    fn report(&self, kind: ClientFailure, scope: Scope, reason: &str, error: Option<&KafkaError>) {
        Stats::bump(&self.stats.kafka_errors, 1);
        // Before this report's effect: whether the cluster answered until now.
        let cluster_answers = self.stats.kafka_reachable.load(Ordering::Relaxed);
        match kind.effect(scope) {
            Effect::CutOff => self.stats.kafka_reachable.store(false, Ordering::Relaxed),
            Effect::Doubt => self.doubt.store(true, Ordering::Relaxed),
            Effect::None => {}
        }
        let one_broker = (scope == Scope::Broker && cluster_answers).then(|| kind.one_broker_message(reason)).flatten();
        let code = error.and_then(KafkaError::rdkafka_error_code);
        let verdict =
            self.said.lock().verdict_for(kind, code, kind.names_cause() && one_broker.is_none(), Instant::now());
        let error = error.map(ToString::to_string);
        let error = error.as_deref();
        if !verdict.say && !verdict.record {
            debug!(error, failure = kind.name(), "{reason}");
            return;
        }
        let message = one_broker.unwrap_or_else(|| kind.message(&self.bootstrap, reason));
        let message = crate::redact::redact(&message).into_owned();
        if verdict.say {
            warn!(error, failure = kind.name(), "{message}");
        } else {
            debug!(error, failure = kind.name(), "{message}");
        }
        if verdict.record {
            *self.stats.last_kafka_error.write() = Some(message);
        }
    }

    /// `client` hit a fatal error: it can do nothing more, so the replica must restart. Said
    /// once per client at ERROR with what to check, and kept for liveness and the status.
    pub fn fatal(&self, client: &str, reason: &str) {
        Stats::bump(&self.stats.kafka_errors, 1);
        let mut fatal = self.stats.fatal_errors.write();
        if fatal.contains_key(client) {
            return;
        }
        let message = crate::redact::redact(&format!(
            "fatal Kafka error in {client}: {reason}; {}; /healthz fails so that the replica restarts",
            fatal_advice(reason)
        ))
        .into_owned();
        error!("{message}");
        *self.stats.last_kafka_error.write() = Some(message.clone());
        fatal.insert(client.to_string(), message);
    }

    /// Whether a route consumer should ask the cluster whether it answers: Kafka is not known
    /// to be reachable, or a broker failed since it last answered.
    pub fn needs_probe(&self) -> bool {
        !self.stats.kafka_reachable.load(Ordering::Relaxed) || self.doubt.load(Ordering::Relaxed)
    }

    /// The cluster answered a client: Kafka is reachable again. Says so when that is news.
    pub fn answered(&self) {
        // Read first: every batch of records says so, and a write each time would bounce the
        // flags' cache lines between the routes' threads.
        if self.doubt.load(Ordering::Relaxed) {
            self.doubt.store(false, Ordering::Relaxed);
        }
        if self.stats.kafka_reachable.load(Ordering::Relaxed) {
            return;
        }
        if !self.stats.kafka_reachable.swap(true, Ordering::Relaxed) {
            self.said.lock().answered();
            info!(bootstrap = self.bootstrap, "kafka reachable");
        }
    }

    /// librdkafka's own log line. A failed connection (facility FAIL) is logged by librdkafka
    /// for every broker and retry and also reaches the error callback, which says it through
    /// the limit: here it goes to debug. Another warning that is a connection failure (a
    /// bootstrap name that does not resolve while canonicalising it) takes the limit too.
    pub fn client_log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let serious = matches!(
            level,
            RDKafkaLogLevel::Emerg
                | RDKafkaLogLevel::Alert
                | RDKafkaLogLevel::Critical
                | RDKafkaLogLevel::Error
                | RDKafkaLogLevel::Warning
        );
        if fac == "FAIL" {
            debug!(target: "librdkafka", fac, "{message}");
            return;
        }
        let kind = ClientFailure::of(None, message);
        if serious && kind != ClientFailure::Other {
            debug!(target: "librdkafka", fac, "{message}");
            self.report(kind, Scope::Broker, message, None);
            return;
        }
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                error!(target: "librdkafka", fac, "{message}")
            }
            RDKafkaLogLevel::Warning => warn!(target: "librdkafka", fac, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => info!(target: "librdkafka", fac, "{message}"),
            RDKafkaLogLevel::Debug => debug!(target: "librdkafka", fac, "{message}"),
        }
    }
}

/// The context of a gateway client that has nothing of its own to do in librdkafka's
/// callbacks (the upgrade check's short-lived consumers; the dead-letter producer may take it
/// too): its failures go through the gateway's [`ClientReports`] like the route consumers'.
#[derive(Clone)]
pub struct ReportingContext(pub Arc<ClientReports>);

impl rdkafka::ClientContext for ReportingContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.0.client_log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.client_error(&error, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for ReportingContext {}

#[cfg(test)]
mod tests {
    use super::*;

    // Reasons as librdkafka 2.12 words them (rdkafka_broker.c `rd_kafka_broker_set_error`
    // prefixes the broker's name and appends the time in state).
    const UNRESOLVABLE: &str = "no-such-broker.invalid:9092/bootstrap: Failed to resolve 'no-such-broker.invalid:9092': Name or service not known (after 1ms in state CONNECT)";
    const NO_DNS: &str = "kafka-0.kafka.svc:9092/bootstrap: Failed to resolve 'kafka-0.kafka.svc:9092': Temporary failure in name resolution (after 5003ms in state CONNECT, 4 identical error(s) suppressed)";
    const REFUSED: &str =
        "127.0.0.1:9/bootstrap: Connect to ipv4#127.0.0.1:9 failed: Connection refused (after 0ms in state CONNECT)";
    const REFUSED_V6: &str =
        "[::1]:9092/bootstrap: Connect to ipv6#[::1]:9092 failed: Connection refused (after 0ms in state CONNECT)";
    const ALL_DOWN: &str = "1/1 brokers are down";
    const TLS: &str = "ssl://127.0.0.1:9093/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified, verify that ssl.ca.location is correctly configured or root CA certificates are installed (install ca-certificates package) (after 4ms in state SSL_HANDSHAKE)";
    const SASL: &str = "sasl_ssl://b:9094/1: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-256 (after 310ms in state AUTH_REQ)";
    const TIMED_OUT: &str =
        "10.0.0.7:9092/bootstrap: Connection setup timed out in state CONNECT (after 30029ms in state CONNECT)";

    #[test]
    fn an_unresolvable_broker_name_is_a_dns_failure_naming_the_host() {
        for (code, reason) in [
            (Some(RDKafkaErrorCode::Resolve), UNRESOLVABLE),
            (Some(RDKafkaErrorCode::BrokerTransportFailure), UNRESOLVABLE),
            (None, UNRESOLVABLE),
            (Some(RDKafkaErrorCode::Resolve), NO_DNS),
        ] {
            assert_eq!(ClientFailure::of(code, reason), ClientFailure::Unresolvable, "{code:?} {reason}");
        }
        let message = ClientFailure::Unresolvable.message("no-such-broker.invalid:9092", UNRESOLVABLE);
        assert!(
            message
                .starts_with("kafka unreachable: cannot resolve no-such-broker.invalid: check kafka.bootstrap_servers"),
            "{message}"
        );
        assert!(message.contains("and DNS") && message.contains("Name or service not known"), "{message}");
        assert_eq!(unresolved_host(NO_DNS), Some("kafka-0.kafka.svc"));
        assert_eq!(unresolved_host("Failed to resolve '[fe80::1]:9092': x"), Some("fe80::1"));
        assert_eq!(unresolved_host(ALL_DOWN), None);
    }

    #[test]
    fn a_refused_connection_says_nothing_listens_at_the_address() {
        for code in [Some(RDKafkaErrorCode::BrokerTransportFailure), Some(RDKafkaErrorCode::AllBrokersDown), None] {
            assert_eq!(ClientFailure::of(code, REFUSED), ClientFailure::Refused, "{code:?}");
        }
        let message = ClientFailure::Refused.message("127.0.0.1:9", REFUSED);
        assert!(
            message.starts_with("kafka unreachable: nothing listens at 127.0.0.1:9: check kafka.bootstrap_servers"),
            "{message}"
        );
        assert_eq!(refused_address(REFUSED_V6), Some("[::1]:9092"));
        assert_eq!(refused_address(ALL_DOWN), None);
        assert!(
            ClientFailure::Refused.message("b:1", ALL_DOWN).contains("nothing listens at b:1"),
            "falls back to the bootstrap list"
        );
    }

    #[test]
    fn one_broker_failing_while_the_cluster_answers_is_not_a_wrong_address() {
        let refused = ClientFailure::Refused.one_broker_message(REFUSED).expect("said differently");
        assert!(refused.starts_with("kafka broker at 127.0.0.1:9 refuses connections"), "{refused}");
        assert!(refused.contains("the cluster answers") && !refused.contains("bootstrap_servers"), "{refused}");
        let resolve = ClientFailure::Unresolvable.one_broker_message(UNRESOLVABLE).expect("said differently");
        assert!(resolve.contains("no-such-broker.invalid") && !resolve.contains("bootstrap_servers"), "{resolve}");
        assert_eq!(ClientFailure::Tls.one_broker_message(TLS), None, "the next broker refuses TLS the same way");
        assert_eq!(ClientFailure::Other.one_broker_message("x"), None);

        // Through the reports: the same refusal reads as a wrong address until Kafka answered.
        let error = KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure);
        let said = |answered: bool| {
            let stats = Arc::new(Stats::default());
            stats.kafka_reachable.store(answered, Ordering::Relaxed);
            ClientReports::new(stats.clone(), "127.0.0.1:9").client_error(&error, REFUSED);
            let said = stats.last_kafka_error.read().clone().unwrap_or_default();
            said
        };
        // One broker's failure names no cause: the cluster's failure after it is still said.
        let (mut limit, t0) = (Said::default(), Instant::now());
        assert!(limit.verdict_for(ClientFailure::Refused, None, false, t0).say);
        assert_eq!(limit.verdict(ClientFailure::Unreachable, None, t0 + Duration::from_secs(1)), SAY);
        assert!(said(false).contains("check kafka.bootstrap_servers"), "{}", said(false));
        assert!(said(true).starts_with("kafka broker at 127.0.0.1:9 refuses connections"), "{}", said(true));
    }

    #[test]
    fn a_certificate_failure_is_tls_whichever_code_carries_it() {
        for code in [
            Some(RDKafkaErrorCode::SSL),
            Some(RDKafkaErrorCode::BrokerTransportFailure),
            Some(RDKafkaErrorCode::AllBrokersDown),
            None,
        ] {
            assert_eq!(ClientFailure::of(code, TLS), ClientFailure::Tls, "{code:?}");
        }
        let message = ClientFailure::of(Some(RDKafkaErrorCode::BrokerTransportFailure), TLS).message("b:9093", TLS);
        assert!(message.contains("ssl.ca.location") && message.contains("certificate verify failed"), "{message}");
    }

    #[test]
    fn sasl_timeouts_and_other_errors_are_told_apart() {
        assert_eq!(
            ClientFailure::of(Some(RDKafkaErrorCode::BrokerTransportFailure), SASL),
            ClientFailure::Authentication
        );
        assert_eq!(ClientFailure::of(Some(RDKafkaErrorCode::Authentication), "x"), ClientFailure::Authentication);
        assert_eq!(ClientFailure::of(Some(RDKafkaErrorCode::AllBrokersDown), ALL_DOWN), ClientFailure::Unreachable);
        assert_eq!(
            ClientFailure::of(Some(RDKafkaErrorCode::BrokerTransportFailure), TIMED_OUT),
            ClientFailure::Unreachable
        );
        assert_eq!(ClientFailure::of(Some(RDKafkaErrorCode::MessageTimedOut), "timed out"), ClientFailure::Other);
        assert!(ClientFailure::Unreachable
            .message("b:1", ALL_DOWN)
            .starts_with("kafka unreachable at b:1: 1/1 brokers are down; check"));
        assert!([
            ClientFailure::Unresolvable,
            ClientFailure::Refused,
            ClientFailure::Tls,
            ClientFailure::Authentication
        ]
        .iter()
        .all(|k| k.names_cause() && k.effect(Scope::Cluster) == Effect::CutOff));
        assert!(
            !ClientFailure::Unreachable.names_cause() && ClientFailure::Other.effect(Scope::Cluster) == Effect::None
        );
    }

    #[test]
    fn one_broker_failing_is_not_kafka_unreachable() {
        let one_of_three =
            "127.0.0.1:9092/2: Connect to ipv4#127.0.0.1:9092 failed: Connection refused (after 0ms in state CONNECT)";
        let code = Some(RDKafkaErrorCode::BrokerTransportFailure);
        let kind = ClientFailure::of(code, one_of_three);
        assert_eq!(kind, ClientFailure::Refused, "still said as what it is");
        assert_eq!(kind.effect(Scope::of(code)), Effect::Doubt, "the other brokers may answer");
        for kind in
            [ClientFailure::Refused, ClientFailure::Tls, ClientFailure::Authentication, ClientFailure::Unresolvable]
        {
            assert_eq!(kind.effect(Scope::Broker), Effect::Doubt, "{kind:?} of one broker");
        }
        let all = Some(RDKafkaErrorCode::AllBrokersDown);
        let cut = |reason| ClientFailure::of(all, reason).effect(Scope::of(all));
        assert_eq!(cut(ALL_DOWN), Effect::CutOff, "every broker down is Kafka unreachable");
        assert_eq!(cut(REFUSED), Effect::CutOff);
        assert_eq!(ClientFailure::Other.effect(Scope::Broker), Effect::None, "not a connection failure");
    }

    #[test]
    fn readiness_holds_through_one_broker_and_falls_with_all_of_them() {
        let stats = Arc::new(Stats::default());
        let reports = ClientReports::new(stats.clone(), "a:9092,b:9092,c:9092");
        reports.answered();
        let reachable = || stats.kafka_reachable.load(Ordering::Relaxed);
        let refused = "b:9092/2: Connect to ipv4#10.0.0.2:9092 failed: Connection refused (after 0ms in state CONNECT)";
        reports.client_error(&KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure), refused);
        assert!(stats.last_kafka_error.read().as_deref().is_some_and(|e| e.contains("10.0.0.2:9092")), "it is said");
        reports.client_log(RDKafkaLogLevel::Warning, "SSL", TLS);
        assert!(reachable(), "one broker refusing, or failing its TLS handshake, is not Kafka unreachable");
        assert!(reports.needs_probe(), "but the cluster is asked");
        reports.answered();
        assert!(!reports.needs_probe(), "and its answer settles it");
        reports.client_error(&KafkaError::Global(RDKafkaErrorCode::AllBrokersDown), "3/3 brokers are down");
        assert!(!reachable(), "every broker down is");
        reports.answered();
        assert!(!reports.needs_probe());
        reports.request_failed(&KafkaError::MetadataFetch(RDKafkaErrorCode::OperationTimedOut), "metadata request");
        assert!(!reachable(), "a request that no broker answered is");
    }

    #[test]
    fn a_fatal_error_is_kept_once_per_client_with_what_to_check() {
        let stats = Arc::new(Stats::default());
        let reports = ClientReports::new(stats.clone(), "b:9092");
        // As librdkafka 2.12 words it (rd_kafka_set_fatal_error in rdkafka_cgrp.c).
        let fenced = "FencedInstanceId: Fatal consumer error: Broker: Static consumer fenced by other consumer with same group.instance.id";
        reports.fatal("the consumer of group g.orders", fenced);
        reports.fatal("the consumer of group g.orders", "again");
        let fatal = stats.fatal_errors.read().clone();
        assert_eq!(fatal.len(), 1, "{fatal:?}");
        let said = &fatal["the consumer of group g.orders"];
        assert!(said.starts_with("fatal Kafka error in the consumer of group g.orders: FencedInstanceId"), "{said}");
        assert!(said.contains("kafka.group_instance_id") && said.contains("/healthz fails"), "{said}");
        reports.client_error(
            &KafkaError::Global(RDKafkaErrorCode::Fatal),
            "Fatal error: Broker: Broker received an out of order sequence number: ProduceRequest failed",
        );
        let fatal = stats.fatal_errors.read().clone();
        assert!(fatal["a Kafka producer of the gateway"].contains("idempotent producer"), "{fatal:?}");
        assert!(fatal_advice("Local: something new").contains("nothing more"), "an unknown cause still gets a line");
    }

    const SAY: Verdict = Verdict { say: true, record: true };
    const COUNT_ONLY: Verdict = Verdict { say: false, record: false };

    #[test]
    fn each_kind_of_failure_is_said_once_per_interval() {
        let mut said = Said::default();
        let t0 = Instant::now();
        assert_eq!(said.verdict(ClientFailure::Refused, None, t0), SAY);
        for ms in [1, 500, 9_999] {
            let again = said.verdict(ClientFailure::Refused, None, t0 + Duration::from_millis(ms));
            assert_eq!(again, Verdict { say: false, record: true }, "at {ms} ms: counted and kept, not said");
        }
        assert_eq!(
            said.verdict(ClientFailure::Tls, None, t0 + Duration::from_secs(1)),
            SAY,
            "another kind has its own limit"
        );
        assert_eq!(said.verdict(ClientFailure::Refused, None, t0 + SAY_EVERY), SAY);
        said.answered();
        assert!(
            !said.verdict(ClientFailure::Refused, None, t0 + SAY_EVERY + Duration::from_secs(1)).say,
            "a flapping Kafka is not said at every flap"
        );
    }

    #[test]
    fn errors_of_no_named_kind_each_have_their_own_limit() {
        let mut said = Said::default();
        let t0 = Instant::now();
        let authorization = Some(RDKafkaErrorCode::TopicAuthorizationFailed);
        let timeout = Some(RDKafkaErrorCode::RequestTimedOut);
        assert_eq!(said.verdict(ClientFailure::Other, authorization, t0), SAY);
        let later = t0 + Duration::from_secs(1);
        assert_eq!(said.verdict(ClientFailure::Other, timeout, later), SAY, "not hidden behind the first");
        assert!(!said.verdict(ClientFailure::Other, authorization, later).say, "the same again waits its turn");
        // A named kind is one limit whatever its code: every broker's refusal is one line.
        assert!(said.verdict(ClientFailure::Refused, Some(RDKafkaErrorCode::BrokerTransportFailure), t0).say);
        assert!(!said.verdict(ClientFailure::Refused, Some(RDKafkaErrorCode::AllBrokersDown), later).say);
    }

    #[test]
    fn brokers_down_after_a_named_cause_add_nothing_until_kafka_answers() {
        let mut said = Said::default();
        let t0 = Instant::now();
        assert_eq!(said.verdict(ClientFailure::Unresolvable, None, t0), SAY);
        let later = t0 + Duration::from_secs(45);
        assert_eq!(said.verdict(ClientFailure::Unreachable, None, t0), COUNT_ONLY, "1/1 brokers are down: a symptom");
        assert_eq!(said.verdict(ClientFailure::Unreachable, None, later), COUNT_ONLY, "the probe's timeouts: symptoms");
        let other = said.verdict(ClientFailure::Other, None, later);
        assert_eq!(other, Verdict { say: true, record: false }, "another error is said, the status keeps the cause");
        assert_eq!(
            said.verdict(ClientFailure::Unreachable, None, t0 + CAUSE_HOLDS),
            SAY,
            "a cause not heard of for long lapses"
        );

        let mut said = Said::default();
        said.verdict(ClientFailure::Refused, None, t0);
        said.answered();
        assert_eq!(
            said.verdict(ClientFailure::Unreachable, None, t0 + SAY_EVERY),
            SAY,
            "a new outage after Kafka answered is news"
        );
    }
}
