//! Validation of a parsed [`Config`]: every problem at once, each named by its field path, so
//! an operator fixes a file in one pass instead of one error per restart.
//!
//! Problems come in a fixed order (server, kafka, routes in file order, discovery, then
//! selector syntax), which the messages and tests rely on.

use std::collections::HashSet;
use std::net::SocketAddr;

use super::{Config, ConfigError, DeliveryMode, DiscoveryMode, GroupProtocol, Problem, RouteConfig};

/// librdkafka properties the gateway owns: setting them would break at-least-once commits.
const MANAGED_PROPERTIES: &[&str] = &[
    "enable.auto.commit",
    "enable.auto.offset.store",
    "group.id",
    "bootstrap.servers",
    "auto.offset.reset",
    "partition.assignment.strategy",
    "group.instance.id",
    "group.protocol",
];

/// Client properties librdkafka refuses with `group.protocol=consumer` (KIP-848), where the
/// broker decides them: each named with the broker setting that takes its place.
const CLASSIC_ONLY_PROPERTIES: &[(&str, &str)] = &[
    ("session.timeout.ms", "group.consumer.session.timeout.ms"),
    ("heartbeat.interval.ms", "group.consumer.heartbeat.interval.ms"),
    ("group.protocol.type", "the group's type, consumer"),
];

/// Problems found so far; selector syntax errors are kept apart and reported last, after the
/// structural ones, because their messages are long.
#[derive(Default)]
struct Problems {
    found: Vec<Problem>,
    selectors: Vec<Problem>,
}

impl Problems {
    fn bad(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.found.push(Problem { field: field.into(), message: message.into() });
    }

    /// Counts, sizes and durations that must not be 0.
    fn at_least_one(&mut self, field: &str, value: impl Into<u64>) {
        if value.into() == 0 {
            self.bad(field, "must be at least 1");
        }
    }
}

/// Names a field of route `i`: `routes[i].<field>`.
type At<'a> = &'a dyn Fn(&str) -> String;

impl Config {
    /// Every problem at once, each with its field path.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Problems::default();
        self.check_server_and_kafka(&mut problems);
        if self.routes.is_empty() {
            problems.bad("routes", "at least one [[routes]] entry is needed");
        }
        let mut names = HashSet::new();
        let mut groups = HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let at = |f: &str| format!("routes[{i}].{f}");
            if route.identity.needs_token() && self.discovery.mode != crate::config::DiscoveryMode::Kube {
                problems.bad(
                    at("identity"),
                    "a ServiceAccount token is reviewed through the Kubernetes API: needs discovery.mode = \"kube\"",
                );
            }
            if route.identity.needs_token()
                && self.discovery.token_audience.as_deref().is_none_or(|a| a.trim().is_empty())
            {
                problems.bad(
                    at("identity"),
                    "needs discovery.token_audience: the audience of the projected tokens subscribers present (a token \
                     for the API server itself must not be sent to the gateway)",
                );
            }
            let fresh_name = check_name(route, &mut names, &at, &mut problems);
            if route.group_id.as_deref().is_some_and(|g| g.trim().is_empty()) {
                problems.bad(at("group_id"), "must not be empty when set");
            }
            let group = route.group(&self.kafka);
            // A duplicate name is reported as such; its default group clashes by consequence.
            if !groups.insert(group.clone()) && fresh_name {
                problems.bad(
                    at("group_id"),
                    format!("consumer group `{group}` is another route's: each route needs a group of its own"),
                );
            }
            check_shape(i, route, &at, &mut problems);
            check_delivery(route, &at, &mut problems);
            check_rollout(route, &at, &mut problems);
            self.check_side_topics(i, route, &at, &mut problems);
        }
        if self.discovery.namespace.as_deref().is_some_and(|n| n.trim().is_empty()) {
            problems.bad("discovery.namespace", "must not be empty when set");
        }
        let Problems { mut found, selectors } = problems;
        found.extend(selectors);
        if found.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(found))
        }
    }

    fn check_server_and_kafka(&self, problems: &mut Problems) {
        if self.server.listen.parse::<SocketAddr>().is_err() {
            problems.bad("server.listen", "must be an address like 0.0.0.0:50051");
        }
        if self.server.admin_listen.parse::<SocketAddr>().is_err() {
            problems.bad("server.admin_listen", "must be an address like 0.0.0.0:9090");
        }
        let discovery = &self.discovery;
        if discovery.config_map.is_some() && discovery.mode != DiscoveryMode::Kube {
            problems
                .bad("discovery.config_map", "needs discovery.mode = \"kube\" (it is read through the Kubernetes API)");
        }
        if discovery.config_map.as_deref().is_some_and(|n| n.trim().is_empty()) {
            problems.bad("discovery.config_map", "must name a ConfigMap (or be left out)");
        }
        if discovery.config_map_key.trim().is_empty() {
            problems.bad("discovery.config_map_key", "must name the ConfigMap's key holding the config");
        }
        let admin_mtls = self.server.admin_tls.as_ref().is_some_and(|t| t.client_ca_file.is_some());
        if !self.server.admin_allowed_identities.is_empty() && !admin_mtls {
            problems.bad(
                "server.admin_allowed_identities",
                "needs server.admin_tls.client_ca_file: client certificates are only trusted when that CA verifies them",
            );
        }
        if self.server.admin_token_file.as_deref().is_some_and(|f| f.trim().is_empty()) {
            problems.bad("server.admin_token_file", "must name a file (or be left out, which refuses changing calls)");
        }
        let server = &self.server;
        for (section, tls) in [("server.tls", &server.tls), ("server.admin_tls", &server.admin_tls)] {
            if let Some(tls) = tls {
                problems.at_least_one(&format!("{section}.reload_interval_ms"), tls.reload_interval_ms);
            }
        }
        problems.at_least_one("server.keepalive_interval_ms", server.keepalive_interval_ms);
        problems.at_least_one("server.keepalive_timeout_ms", server.keepalive_timeout_ms);
        if server.idle_timeout_ms <= server.keepalive_interval_ms {
            problems.bad(
                "server.idle_timeout_ms",
                "must be longer than server.keepalive_interval_ms (live peers answer the pings; a shorter idle \
                 timeout would cut them)",
            );
        }
        problems.at_least_one("server.max_connections", server.max_connections as u64);
        problems.at_least_one("server.max_streams", server.max_streams as u64);
        problems.at_least_one("server.max_streams_per_connection", server.max_streams_per_connection);
        let kafka = &self.kafka;
        if kafka.bootstrap_servers.trim().is_empty() {
            problems.bad("kafka.bootstrap_servers", "must name at least one broker (host:port)");
        }
        if kafka.group_id.trim().is_empty() {
            problems.bad("kafka.group_id", "must not be empty");
        }
        if kafka.group_instance_id.as_deref().is_some_and(|v| v.trim().is_empty()) {
            problems.bad("kafka.group_instance_id", "must not be empty when set");
        }
        problems.at_least_one("kafka.revoke_drain_ms", kafka.revoke_drain_ms);
        problems.at_least_one("kafka.commit_interval_ms", kafka.commit_interval_ms);
        problems.at_least_one("kafka.max_uncommitted_per_partition", kafka.max_uncommitted_per_partition as u64);
        for key in kafka.properties.keys() {
            let field = || format!("kafka.properties.\"{key}\"");
            if MANAGED_PROPERTIES.contains(&key.as_str()) {
                problems.bad(field(), "is managed by the gateway; use the matching `kafka.*` field or leave it out");
            } else if let Some((_, instead)) = CLASSIC_ONLY_PROPERTIES
                .iter()
                .find(|(name, _)| *name == key && kafka.group_protocol == GroupProtocol::Consumer)
            {
                problems.bad(
                    field(),
                    format!(
                        "is not used with kafka.group_protocol = \"consumer\": the broker decides it ({instead}); \
                         remove it, or use group_protocol = \"classic\""
                    ),
                );
            }
        }
    }

    /// The retry and dead-letter topics: each a topic name, and the retry topic the route's own.
    fn check_side_topics(&self, i: usize, route: &RouteConfig, at: At<'_>, problems: &mut Problems) {
        if let Some(retry) = &route.retry.retry_topic {
            let elsewhere = self.routes.iter().enumerate().any(|(j, other)| {
                other.topics.contains(retry)
                    || (j != i && other.retry.retry_topic.as_ref() == Some(retry))
                    || other.dead_letter_topic.as_ref() == Some(retry)
            });
            if !is_topic_name(retry) {
                problems.bad(at("retry.retry_topic"), "must be a Kafka topic name");
            } else if elsewhere {
                problems.bad(
                    at("retry.retry_topic"),
                    "must be the route's own: not a topic, retry topic or dead-letter topic of any route",
                );
            } else if route.delivery == DeliveryMode::AtMostOnce {
                problems
                    .bad(at("retry.retry_topic"), "at-most-once routes never retry; remove it or use at-least-once");
            }
        }
        if let Some(dlq) = &route.dead_letter_topic {
            if !is_topic_name(dlq) {
                problems.bad(at("dead_letter_topic"), "must be a Kafka topic name");
            } else if route.topics.contains(dlq) {
                problems.bad(
                    at("dead_letter_topic"),
                    "must not be one of the route's own topics: dead letters would be delivered again",
                );
            }
        }
    }
}

/// The route's name: set, unique, and usable in a consumer group id. True when it is a new,
/// well-formed name (only then can a clash of groups be the group's own fault).
fn check_name<'a>(route: &'a RouteConfig, names: &mut HashSet<&'a str>, at: At<'_>, problems: &mut Problems) -> bool {
    if route.name.trim().is_empty() {
        problems.bad(at("name"), "must not be empty");
    } else if !names.insert(route.name.as_str()) {
        problems.bad(at("name"), "is used by another route; route names must be unique");
    } else if !route.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        // It names the route's consumer group and static member id.
        problems
            .bad(at("name"), "may hold only letters, digits, '.', '_' and '-' (it names the route's consumer group)");
    } else {
        return true;
    }
    false
}

/// Topics, windows, selector and split.
fn check_shape(i: usize, route: &RouteConfig, at: At<'_>, problems: &mut Problems) {
    if route.topics.is_empty() {
        problems.bad(at("topics"), "must list at least one topic");
    }
    for (j, topic) in route.topics.iter().enumerate() {
        if !is_topic_name(topic) {
            problems.bad(format!("routes[{i}].topics[{j}]"), "must be a Kafka topic name");
        }
    }
    problems.at_least_one(&at("max_in_flight"), route.max_in_flight);
    if route.default_in_flight == 0 || route.default_in_flight > route.max_in_flight {
        problems.bad(at("default_in_flight"), "must be between 1 and max_in_flight");
    }
    if let Err(error) = route.parsed_selector() {
        problems.selectors.push(Problem { field: at("selector"), message: error.to_string() });
    }
    match (&route.split_label, route.weights.is_empty()) {
        (Some(label), _) if label.trim().is_empty() => problems.bad(at("split_label"), "must name a label"),
        (Some(_), true) => problems.bad(at("weights"), "a split_label needs weights, e.g. { blue = 100, green = 0 }"),
        (Some(_), false) if route.weights.values().all(|w| *w == 0) => {
            problems.bad(at("weights"), "at least one cohort needs a weight above 0")
        }
        (None, false) => {
            problems.bad(at("weights"), "weights need a split_label naming the label whose values they weigh")
        }
        _ => {}
    }
    let label = route.split_label.as_deref().unwrap_or("track");
    for cohort in route.weights.keys() {
        let field = format!("routes[{i}].weights.{cohort}");
        if cohort.is_empty() {
            problems.bad(field, "a cohort is a value of the split label: it must not be empty");
        } else if let Err(error) = crate::selector::validate_label_value(label, cohort) {
            problems.bad(field, format!("a cohort is a value of the split label: {error}"));
        }
    }
}

/// Retry policy, delivery mode and what each mode allows.
fn check_delivery(route: &RouteConfig, at: At<'_>, problems: &mut Problems) {
    if route.retry.max_attempts == 0 {
        problems.bad(at("retry.max_attempts"), "must be at least 1 (the first delivery counts)");
    }
    if route.retry.max_backoff_ms < route.retry.initial_backoff_ms {
        problems.bad(at("retry.max_backoff_ms"), "must be at least retry.initial_backoff_ms");
    }
    if route.delivery == DeliveryMode::AtMostOnce && route.dead_letter_topic.is_some() {
        problems.bad(
            at("dead_letter_topic"),
            "at-most-once routes never redeliver or dead-letter (a failed delivery is dropped); remove it or use \
             at-least-once",
        );
    }
    if let Some(hol) = &route.head_of_line {
        if route.delivery == DeliveryMode::AtMostOnce {
            problems.bad(at("head_of_line"), "at-most-once routes commit before they send: nothing holds commits back");
        }
        for (field, message) in hol.problems(route.retry.retry_topic.is_some(), route.dead_letter_topic.is_some()) {
            problems.bad(at(&format!("head_of_line.{field}")), message);
        }
    }
    if let Some(limit) = &route.rate_limit {
        for (field, message) in limit.problems() {
            problems.bad(at(&format!("rate_limit.{field}")), message);
        }
    }
    match (&route.dedup, route.delivery) {
        (Some(dedup), DeliveryMode::EffectivelyOnce) => {
            for (field, message) in dedup.problems() {
                problems.bad(at(&format!("dedup.{field}")), message);
            }
        }
        (Some(_), _) => problems
            .bad(at("dedup"), "applies only to delivery = \"effectively-once\"; set that or remove [routes.dedup]"),
        (None, _) => {}
    }
}

/// A rollout: its own record, and what the route needs for one to work.
fn check_rollout(route: &RouteConfig, at: At<'_>, problems: &mut Problems) {
    let Some(rollout) = &route.rollout else { return };
    for (field, message) in rollout.problems() {
        problems.bad(at(&format!("rollout.{field}")), message);
    }
    if route.split_label.is_none() {
        problems.bad(
            at("rollout"),
            "a rollout moves weights between cohorts of the split label: set split_label (and weights) first",
        );
    }
    if route.delivery == DeliveryMode::AtMostOnce {
        problems.bad(
            at("rollout"),
            "a rollout needs redelivery: on an at-most-once route what a failing candidate nacked is lost instead \
             of going to the stable cohort; use at-least-once",
        );
    }
    if rollout.active() && route.split_label.is_some() {
        let candidate = rollout.candidate_weight();
        let plan = &rollout.plan;
        let expected = rollout.weights_for(route.weights.keys().cloned(), 100 - candidate, candidate);
        if route.weights != expected {
            problems.bad(
                at("weights"),
                format!(
                    "the route is in a rollout of {} (step {}, {} at {candidate} %): its weights are the rollout's \
                     ({}); pause, promote or abort it with `fanoutctl rollout` instead of setting weights",
                    plan.candidate,
                    rollout.step(),
                    plan.candidate,
                    expected.iter().map(|(c, w)| format!("{c} = {w}")).collect::<Vec<_>>().join(", ")
                ),
            );
        }
    }
}

fn is_topic_name(topic: &str) -> bool {
    !topic.trim().is_empty() && !topic.contains('/')
}

#[cfg(test)]
mod tests {
    use super::super::tests::{problems, GOOD};
    use super::super::*;

    #[test]
    fn connection_bounds_are_checked() {
        let text = GOOD.replace(
            "listen = \"127.0.0.1:50051\"",
            "listen = \"127.0.0.1:50051\"\nkeepalive_interval_ms = 30000\nidle_timeout_ms = 30000\nmax_connections = 0",
        );
        assert_eq!(problems(&text), vec!["server.idle_timeout_ms", "server.max_connections"]);
        let text = GOOD.replace(
            "listen = \"127.0.0.1:50051\"",
            "listen = \"127.0.0.1:50051\"\nkeepalive_interval_ms = 0\nkeepalive_timeout_ms = 0",
        );
        assert_eq!(
            problems(&text),
            vec!["server.keepalive_interval_ms", "server.keepalive_timeout_ms"],
            "both named, not the first alone"
        );
    }

    #[test]
    fn validation_names_every_bad_field() {
        let text = r#"
            [server]
            listen = "nowhere"
            [kafka]
            bootstrap_servers = " "
            commit_interval_ms = 0
            [kafka.properties]
            "enable.auto.commit" = "true"
            [[routes]]
            name = "a"
            topics = []
            [[routes]]
            name = "a"
            topics = ["x/y"]
            max_in_flight = 10
        "#;
        assert_eq!(
            problems(text),
            vec![
                "server.listen",
                "kafka.bootstrap_servers",
                "kafka.commit_interval_ms",
                "kafka.properties.\"enable.auto.commit\"",
                "routes[0].topics",
                "routes[1].name",
                "routes[1].topics[0]",
                "routes[1].default_in_flight",
            ]
        );
    }

    #[test]
    fn the_consumer_group_protocol_refuses_what_the_broker_decides() {
        let text = r#"
            [kafka]
            bootstrap_servers = "k:9092"
            group_protocol = "consumer"
            [kafka.properties]
            "session.timeout.ms" = "10000"
            "heartbeat.interval.ms" = "500"
            "group.protocol" = "consumer"
            "fetch.wait.max.ms" = "20"
            [[routes]]
            name = "a"
            topics = ["t"]
        "#;
        assert_eq!(
            problems(text),
            vec![
                "kafka.properties.\"group.protocol\"",
                "kafka.properties.\"heartbeat.interval.ms\"",
                "kafka.properties.\"session.timeout.ms\"",
            ]
        );
        let said = Config::parse(text).and_then(|c| c.validate()).expect_err("refused").to_string();
        assert!(said.contains("group.consumer.session.timeout.ms"), "names the broker setting instead: {said}");
        // The classic protocol keeps its client-side session.
        let classic = text.replace("group_protocol = \"consumer\"", "group_protocol = \"classic\"");
        assert_eq!(problems(&classic), vec!["kafka.properties.\"group.protocol\""]);
    }

    #[test]
    fn routing_fields_are_validated() {
        let text = r#"
            [kafka]
            bootstrap_servers = "k:9092"
            [discovery]
            mode = "kube"
            namespace = " "
            [[routes]]
            name = "a"
            topics = ["t"]
            selector = "app in (orders"
            [[routes]]
            name = "b"
            topics = ["t"]
            split_label = "track"
            [[routes]]
            name = "c"
            topics = ["t"]
            weights = { blue = 1 }
            [[routes]]
            name = "d"
            topics = ["t"]
            split_label = "track"
            weights = { blue = 0, green = 0 }
            [[routes]]
            name = "e"
            topics = ["t"]
            selector = "app=orders,track in (blue,green)"
            split_label = "track"
            weights = { blue = 90, green = 10 }
            ordering = "partition"
            empty_cohort = "spill"
        "#;
        assert_eq!(
            problems(text),
            vec![
                "routes[1].weights",
                "routes[2].weights",
                "routes[3].weights",
                "discovery.namespace",
                "routes[0].selector"
            ]
        );
        let bad = Config::parse(&text.replace("\"spill\"", "\"overflow\"")).expect_err("bad variant").to_string();
        assert!(bad.contains("routes[4].empty_cohort"), "{bad}");
    }

    #[test]
    fn delivery_retry_and_dead_letter_settings_are_checked() {
        let text = format!(
            "{GOOD}{}",
            r#"
        delivery = "at-most-once"
        dead_letter_topic = "orders"
        [routes.retry]
        max_attempts = 0
        initial_backoff_ms = 1000
        max_backoff_ms = 10
        [routes.dedup]
        ttl_ms = 0

        [[routes]]
        name = "audit"
        topics = ["orders"]
        "#
        );
        let fields = problems(&text);
        for field in [
            "routes[0].retry.max_attempts",
            "routes[0].retry.max_backoff_ms",
            "routes[0].dead_letter_topic",
            "routes[0].dedup",
        ] {
            assert!(fields.contains(&field.to_string()), "{field} not in {fields:?}");
        }
        // Each route commits in its own group: an at-most-once route may share its topics.
        assert!(!fields.contains(&"routes[0].topics".to_string()), "{fields:?}");
        let text =
            GOOD.replace("max_in_flight = 500", "max_in_flight = 500\n[routes.retry]\nretry_topic = \"orders-retry\"");
        assert_eq!(problems(&text), vec!["routes[0].retry.retry_topic"], "a retry topic the route already consumes");
        let ok =
            GOOD.replace("max_in_flight = 500", "max_in_flight = 500\n[routes.retry]\nretry_topic = \"orders-later\"");
        let config = Config::parse(&ok).expect("parses");
        config.validate().expect("a retry topic of its own is fine");
        assert_eq!(config.topics(), vec!["orders", "orders-later", "orders-retry"], "the consumer subscribes to it");
        // Dedup settings are checked, by their own field names, on an effectively-once route.
        let text = GOOD.replace(
            "max_in_flight = 500",
            "max_in_flight = 500\ndelivery = \"effectively-once\"\n[routes.dedup]\nttl_ms = 0",
        );
        assert_eq!(problems(&text), vec!["routes[0].dedup.ttl_ms"]);
        let config =
            Config::parse(&GOOD.replace("max_in_flight = 500", "max_in_flight = 500\ndelivery = \"effectively-once\""))
                .expect("parses");
        config.validate().expect("an effectively-once route without a dedup section uses the defaults");
        assert_eq!(config.routes[0].dedup_settings(), Some(crate::config::dedup::DedupConfig::default()));
    }

    #[test]
    fn no_routes_is_a_problem() {
        let text = "[kafka]\nbootstrap_servers = \"k:9092\"\n";
        assert_eq!(problems(text), vec!["routes"]);
    }

    #[test]
    fn token_identity_needs_kube_and_an_audience() {
        let mut config = Config::parse(GOOD).expect("parses");
        config.routes[0].identity = crate::config::IdentityMode::Token;
        let err = config.validate().expect_err("static mode, no audience").to_string();
        assert!(
            err.contains("routes[0].identity") && err.contains("discovery.mode") && err.contains("token_audience"),
            "{err}"
        );
        config.discovery.mode = crate::config::DiscoveryMode::Kube;
        config.discovery.token_audience = Some("fanout-gateway".into());
        config.validate().expect("kube mode with an audience");
    }
}
