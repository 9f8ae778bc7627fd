//! Whether a route can read its topics: a routed topic that does not exist (yet) or that the
//! gateway's principal may not read gives no records and, from librdkafka, only a consumer
//! error without the topic's name. The route's consumer thread asks the cluster about each of
//! its topics now and then (and at once after such an error), says what changed, and files
//! the answer where `/readyz`, the status and the metrics read it. The other routes are not
//! affected: one route's missing topic is not a reason to take the replica out of service.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use tracing::{info, warn};

use crate::config::KafkaConfig;
use crate::stats::Stats;

/// How often the topics are asked about while all of them can be read.
const EVERY: Duration = Duration::from_secs(30);
/// How often while one cannot: the problem clears soon after it is fixed.
const EVERY_WHILE_UNREADABLE: Duration = Duration::from_secs(5);
/// One metadata request's bound: the consumer thread waits for it.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// Whom the brokers' ACLs see when the gateway connects with these settings, for a message
/// that says whom to grant what: `User:NAME` where the client properties decide it (no SASL:
/// `User:ANONYMOUS`; SASL PLAIN or SCRAM: the SASL user), else where the brokers take it from.
/// A user name given as a secret is not repeated.
pub(crate) fn principal(kafka: &KafkaConfig) -> String {
    let property = |name: &str| kafka.properties.get(name).map(|v| v.trim().to_ascii_uppercase());
    let protocol = property("security.protocol").unwrap_or_else(|| "PLAINTEXT".into());
    // librdkafka takes either spelling; GSSAPI is its default.
    let mechanism =
        property("sasl.mechanism").or_else(|| property("sasl.mechanisms")).unwrap_or_else(|| "GSSAPI".into());
    match protocol.as_str() {
        "SSL" => "the principal of the gateway's client certificate (User:<its subject>, as the brokers' \
                  ssl.principal.mapping.rules map it)"
            .into(),
        "SASL_PLAINTEXT" | "SASL_SSL" => match mechanism.as_str() {
            "PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512" => match kafka.properties.get("sasl.username") {
                Some(user) if !kafka.secrets.contains_key("sasl.username") => format!("User:{}", user.trim()),
                _ => "the gateway's SASL user (User:<sasl.username>)".into(),
            },
            "OAUTHBEARER" => "the gateway's OAuth principal (User:<its token's subject>)".into(),
            _ => "the gateway's Kerberos principal (User:<sasl.kerberos.principal's primary name>)".into(),
        },
        _ => "User:ANONYMOUS".into(),
    }
}

/// Why a route reads nothing when the brokers refuse its consumer `group` to `principal`, in
/// words that say what to do. Kafka answers FindCoordinator, JoinGroup and OffsetCommit with
/// GROUP_AUTHORIZATION_FAILED without naming the group; librdkafka says only that.
pub(crate) fn group_refused(group: &str, principal: &str) -> String {
    format!(
        "the gateway may not use its consumer group {group} (group authorization failed for {principal}): grant \
         {principal} Read on group {group}"
    )
}

/// Why `topic`, routed by `group`, gives no records to the gateway's `principal`, in words
/// that say what to do.
fn unreadable(code: RDKafkaRespErr, topic: &str, group: &str, principal: &str) -> Option<String> {
    let code = RDKafkaErrorCode::from(code);
    match code {
        RDKafkaErrorCode::NoError => None,
        RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => {
            Some("it does not exist: create it (the gateway never creates topics), or correct routes[].topics".into())
        }
        // Kafka answers this, rather than "unknown topic", to a principal that may not even
        // Describe the topic; Read is what fetching it needs, and the group's Read what
        // joining and committing need.
        RDKafkaErrorCode::TopicAuthorizationFailed => Some(format!(
            "the gateway may not read it (topic authorization failed for {principal}): grant {principal} \
             Describe and Read on topic {topic}, and Read on group {group}"
        )),
        // A leader election or a broker still loading the topic: not the route's problem.
        RDKafkaErrorCode::LeaderNotAvailable | RDKafkaErrorCode::NotLeaderForPartition => None,
        other => Some(format!("Kafka answers {other:?} for it")),
    }
}

/// Whether a consumer error may be about one of the route's topics: then they are asked
/// about at once.
pub(super) fn about_a_topic(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::TopicAuthorizationFailed
    )
}

/// The route's topics and what was last found about them.
pub(super) struct TopicCheck {
    route: String,
    group: Arc<str>,
    topics: Vec<String>,
    /// Whom the brokers' ACLs see (see [`principal`]): named in what to grant.
    principal: String,
    /// Topic → why it cannot be read, as last found.
    unreadable: BTreeMap<String, String>,
    next: Instant,
}

impl TopicCheck {
    pub(super) fn new(route: &str, group: Arc<str>, topics: Vec<String>, principal: String) -> Self {
        Self { route: route.to_string(), group, topics, principal, unreadable: BTreeMap::new(), next: Instant::now() }
    }

    /// Asks at the next chance rather than when due.
    pub(super) fn soon(&mut self) {
        self.next = Instant::now();
    }

    /// Asks the cluster about each topic when it is time; says and files what changed. A topic
    /// the cluster did not answer about (Kafka unreachable) keeps what was found before: the
    /// failure reporter speaks for an unreachable Kafka.
    pub(super) fn run<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, stats: &Stats) {
        if Instant::now() < self.next {
            return;
        }
        let mut found = self.unreadable.clone();
        for topic in &self.topics {
            let Ok(metadata) = consumer.fetch_metadata(Some(topic), ASK_TIMEOUT) else { continue };
            let answer = metadata.topics().iter().find(|t| t.name() == topic).map(|t| t.error());
            match answer.flatten().and_then(|code| unreadable(code, topic, &self.group, &self.principal)) {
                Some(why) => found.insert(topic.clone(), why),
                None if answer.is_some() => found.remove(topic),
                None => None,
            };
        }
        self.settle(found, stats);
        let every = if self.unreadable.is_empty() { EVERY } else { EVERY_WHILE_UNREADABLE };
        self.next = Instant::now() + every;
    }

    /// Takes `found` as the truth: says each change, files the whole.
    fn settle(&mut self, found: BTreeMap<String, String>, stats: &Stats) {
        for (topic, why) in &found {
            if self.unreadable.get(topic) != Some(why) {
                warn!(route = self.route, topic, "route {} cannot read topic {topic}: {why}", self.route);
            }
        }
        for topic in self.unreadable.keys().filter(|t| !found.contains_key(*t)) {
            info!(route = self.route, topic, "route {} can read topic {topic} again", self.route);
        }
        let mut filed = stats.unreadable_topics.write();
        if found.is_empty() {
            filed.remove(&self.group);
        } else {
            filed.insert(self.group.clone(), found.clone());
        }
        self.unreadable = found;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::types::RDKafkaRespErr::*;

    #[test]
    fn a_missing_topic_and_a_refused_one_say_what_to_do() {
        let unreadable = |code| unreadable(code, "payroll", "fanout.payroll", "User:fanout");
        let missing = unreadable(RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART).expect("unreadable");
        assert!(missing.starts_with("it does not exist") && missing.contains("routes[].topics"), "{missing}");
        let refused = unreadable(RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED).expect("unreadable");
        assert_eq!(
            refused,
            "the gateway may not read it (topic authorization failed for User:fanout): grant User:fanout \
             Describe and Read on topic payroll, and Read on group fanout.payroll"
        );
        assert_eq!(unreadable(RD_KAFKA_RESP_ERR_NO_ERROR), None);
        assert_eq!(unreadable(RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE), None, "an election is not the route's problem");
        assert!(unreadable(RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION).is_some_and(|w| w.contains("InvalidTopic")));
        assert!(about_a_topic(RDKafkaErrorCode::UnknownTopicOrPartition));
        assert!(!about_a_topic(RDKafkaErrorCode::BrokerTransportFailure));
    }

    fn kafka(properties: &[(&str, &str)], secrets: &[&str]) -> KafkaConfig {
        let mut kafka = crate::config::Config::single_route("b:9092", "g", "r", &["t"]).kafka;
        kafka.properties = properties.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        kafka.secrets = secrets.iter().map(|k| (k.to_string(), "file:/run/secrets/x".to_string())).collect();
        kafka
    }

    #[test]
    fn the_principal_is_named_where_the_client_properties_decide_it() {
        assert_eq!(principal(&kafka(&[], &[])), "User:ANONYMOUS", "plaintext");
        let scram =
            [("security.protocol", "sasl_ssl"), ("sasl.mechanism", "SCRAM-SHA-512"), ("sasl.username", "fanout")];
        assert_eq!(principal(&kafka(&scram, &[])), "User:fanout");
        let plain = [("security.protocol", "SASL_PLAINTEXT"), ("sasl.mechanisms", "PLAIN"), ("sasl.username", "gw")];
        assert_eq!(principal(&kafka(&plain, &[])), "User:gw", "either spelling of the mechanism");
        let secret = principal(&kafka(&scram, &["sasl.username"]));
        assert!(!secret.contains("fanout") && secret.contains("sasl.username"), "a secret user is not said: {secret}");
        let ssl = principal(&kafka(&[("security.protocol", "SSL")], &[]));
        assert!(ssl.contains("client certificate") && ssl.contains("ssl.principal.mapping.rules"), "{ssl}");
        let oauth = [("security.protocol", "SASL_SSL"), ("sasl.mechanism", "OAUTHBEARER")];
        assert!(principal(&kafka(&oauth, &[])).contains("OAuth"));
        let kerberos = principal(&kafka(&[("security.protocol", "SASL_SSL")], &[]));
        assert!(kerberos.contains("Kerberos"), "GSSAPI is librdkafka's default mechanism: {kerberos}");
    }

    #[test]
    fn a_refused_group_is_named_with_what_to_grant() {
        assert_eq!(
            group_refused("fanout.payroll", "User:fanout"),
            "the gateway may not use its consumer group fanout.payroll (group authorization failed for \
             User:fanout): grant User:fanout Read on group fanout.payroll"
        );
    }

    #[test]
    fn each_change_is_filed_and_a_fixed_topic_leaves_the_file() {
        let stats = Stats::default();
        let group: Arc<str> = Arc::from("g.audit");
        let mut check = TopicCheck::new("audit", group.clone(), vec!["a".into(), "b".into()], "User:ANONYMOUS".into());
        let found = BTreeMap::from([("a".to_string(), "it does not exist".to_string())]);
        check.settle(found.clone(), &stats);
        assert_eq!(stats.unreadable_topics.read().get(&group), Some(&found));
        check.settle(BTreeMap::new(), &stats);
        assert!(stats.unreadable_topics.read().is_empty(), "readable again: nothing filed");
    }
}
