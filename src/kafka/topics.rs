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

use crate::stats::Stats;

/// How often the topics are asked about while all of them can be read.
const EVERY: Duration = Duration::from_secs(30);
/// How often while one cannot: the problem clears soon after it is fixed.
const EVERY_WHILE_UNREADABLE: Duration = Duration::from_secs(5);
/// One metadata request's bound: the consumer thread waits for it.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a routed topic gives no records, in words that say what to do.
fn unreadable(code: RDKafkaRespErr) -> Option<String> {
    let code = RDKafkaErrorCode::from(code);
    match code {
        RDKafkaErrorCode::NoError => None,
        RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => Some(
            "it does not exist: create it (the gateway never creates topics), or correct routes[].topics".into(),
        ),
        RDKafkaErrorCode::TopicAuthorizationFailed => Some(
            "the gateway may not read it: grant its principal Describe and Read on the topic, and Read on the route's group"
                .into(),
        ),
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
    /// Topic → why it cannot be read, as last found.
    unreadable: BTreeMap<String, String>,
    next: Instant,
}

impl TopicCheck {
    pub(super) fn new(route: &str, group: Arc<str>, topics: Vec<String>) -> Self {
        Self { route: route.to_string(), group, topics, unreadable: BTreeMap::new(), next: Instant::now() }
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
            match answer.flatten().and_then(unreadable) {
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
        let missing = unreadable(RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART).expect("unreadable");
        assert!(missing.starts_with("it does not exist") && missing.contains("routes[].topics"), "{missing}");
        let refused = unreadable(RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED).expect("unreadable");
        assert!(refused.contains("Describe and Read"), "{refused}");
        assert_eq!(unreadable(RD_KAFKA_RESP_ERR_NO_ERROR), None);
        assert_eq!(unreadable(RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE), None, "an election is not the route's problem");
        assert!(unreadable(RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION).is_some_and(|w| w.contains("InvalidTopic")));
        assert!(about_a_topic(RDKafkaErrorCode::UnknownTopicOrPartition));
        assert!(!about_a_topic(RDKafkaErrorCode::BrokerTransportFailure));
    }

    #[test]
    fn each_change_is_filed_and_a_fixed_topic_leaves_the_file() {
        let stats = Stats::default();
        let group: Arc<str> = Arc::from("g.audit");
        let mut check = TopicCheck::new("audit", group.clone(), vec!["a".into(), "b".into()]);
        let found = BTreeMap::from([("a".to_string(), "it does not exist".to_string())]);
        check.settle(found.clone(), &stats);
        assert_eq!(stats.unreadable_topics.read().get(&group), Some(&found));
        check.settle(BTreeMap::new(), &stats);
        assert!(stats.unreadable_topics.read().is_empty(), "readable again: nothing filed");
    }
}
