//! The upgrade from the shared-group layout (all routes in `kafka.group_id`) to one group per
//! route: a route whose own group has no offsets yet starts where the shared group left its
//! topics, so upgrading neither replays nor skips.
//!
//! Done once, before the route's consumer joins its group: the shared group's committed
//! offsets (and their metadata, which records acks above them) are committed into the route's
//! group, which the consumer then reads on assignment like any other commit. A group nobody
//! has joined yet takes commits from a client that is not a member, as Kafka's own
//! `kafka-consumer-groups --reset-offsets` relies on. The route's consumer thread runs it
//! once Kafka answers (see [`super::consumer`]), so a start without Kafka waits on nothing.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use super::{ClientReports, ReportingContext};
use crate::config::{Config, RouteConfig};

/// How long each broker request of the upgrade check may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What the check did for a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seeded {
    /// The route's group already has offsets of its own.
    NotNeeded,
    /// Neither group has offsets for the route's topics: the route starts per
    /// its `auto_offset_reset` (the route's, else `kafka.auto_offset_reset`).
    NothingToCopy,
    /// The shared group's offsets of this many partitions were copied into the route's group.
    Copied(usize),
}

/// The check one route needs: which groups, which topics, and the clients' settings.
pub struct Plan {
    base: ClientConfig,
    route: String,
    group: String,
    shared: String,
    topics: Vec<String>,
    /// The helper clients' failures go where the route consumers' go.
    reports: Arc<ClientReports>,
}

/// The check route `route` needs before its consumer joins its group; none when the route's
/// group is the shared group itself.
pub fn plan(config: &Config, route: &RouteConfig, reports: Arc<ClientReports>) -> Option<Plan> {
    let group = route.group(&config.kafka);
    let shared = config.kafka.group_id.clone();
    (group != shared).then(|| Plan {
        base: probe_config(config),
        route: route.name.clone(),
        group,
        shared,
        topics: route.consumed_topics(),
        reports,
    })
}

impl Plan {
    /// Copies the shared group's offsets into the route's group if the latter has none.
    /// Blocking (each broker request may take [`TIMEOUT`]): for the route's consumer thread,
    /// once Kafka answers. A failure is logged and the route starts as a new group would; it
    /// never stops the gateway.
    pub fn run(&self) -> Seeded {
        let (route, group, from) = (&self.route, &self.group, &self.shared);
        match seed(&self.base, &self.reports, group, from, &self.topics) {
            Ok(seeded) => {
                if let Seeded::Copied(partitions) = seeded {
                    info!(
                        route,
                        group,
                        from,
                        partitions,
                        "route group had no offsets: starting where the shared group left its topics"
                    );
                }
                seeded
            }
            Err(error) => {
                warn!(route, group, from, %error, "cannot check the shared group's offsets; the route starts as a new group");
                Seeded::NothingToCopy
            }
        }
    }
}

/// Brokers and the user's client properties (TLS, SASL), for the short-lived clients here.
fn probe_config(config: &Config) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &config.kafka.bootstrap_servers);
    for (key, value) in &config.kafka.properties {
        cc.set(key, value);
    }
    cc.set("enable.auto.commit", "false").set("client.id", "fanout-gateway.upgrade");
    cc
}

fn client(
    base: &ClientConfig,
    reports: &Arc<ClientReports>,
    group: &str,
) -> Result<BaseConsumer<ReportingContext>, KafkaError> {
    let mut cc = base.clone();
    cc.set("group.id", group);
    cc.create_with_context(ReportingContext(reports.clone()))
}

fn seed(
    base: &ClientConfig,
    reports: &Arc<ClientReports>,
    group: &str,
    shared: &str,
    topics: &[String],
) -> Result<Seeded, KafkaError> {
    let ours = client(base, reports, group)?;
    let metadata = ours.fetch_metadata(None, TIMEOUT)?;
    let mut all = TopicPartitionList::new();
    for topic in metadata.topics().iter().filter(|t| topics.iter().any(|n| n == t.name())) {
        for p in topic.partitions() {
            all.add_partition(topic.name(), p.id());
        }
    }
    if all.count() == 0 {
        return Ok(Seeded::NothingToCopy);
    }
    let committed = |tpl: &TopicPartitionList| tpl.elements().iter().any(|e| matches!(e.offset(), Offset::Offset(_)));
    if committed(&ours.committed_offsets(all.clone(), TIMEOUT)?) {
        return Ok(Seeded::NotNeeded);
    }
    let theirs = client(base, reports, shared)?.committed_offsets(all, TIMEOUT)?;
    let mut copy = TopicPartitionList::new();
    for e in theirs.elements() {
        if let Offset::Offset(o) = e.offset() {
            let mut elem = copy.add_partition(e.topic(), e.partition());
            elem.set_offset(Offset::Offset(o))?;
            elem.set_metadata(e.metadata());
        }
    }
    if copy.count() == 0 {
        return Ok(Seeded::NothingToCopy);
    }
    ours.commit(&copy, CommitMode::Sync)?;
    Ok(Seeded::Copied(copy.count()))
}
