//! Whether this replica should get traffic: what `/readyz`, the readiness probe and
//! grpc.health's statuses say. Decided by one pure function from what the consumers last
//! reported, so the probe, the health service and the tests agree.
//!
//! A replica is ready when Kafka answers and every route's consumer is a settled member of its
//! group: the coordinator is known and no join or rebalance is under way, so the partitions it
//! holds (none, when there are more replicas than partitions) are the ones it keeps. During a
//! rolling restart Kubernetes waits for that before it stops the next replica, so the group
//! settles between two restarts instead of rebalancing through all of them at once.

use std::collections::HashMap;
use std::sync::Arc;

use crate::stats::GroupState;

/// The verdict, with what is missing when not ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    /// "ready", or what the replica waits for, for the probe's body and logs.
    pub reason: String,
    /// Why, as a Kafka client last said it: in the probe's body and the admin status, not in
    /// the log line a change of readiness writes, since it changes with every failure (each
    /// broker, each attempt) and the failure is logged where it happens.
    pub cause: Option<String>,
}

impl Readiness {
    /// The probe's body: the reason, and the cause when one is known.
    pub fn body(&self) -> String {
        match &self.cause {
            Some(cause) => format!("{}: {cause}", self.reason),
            None => self.reason.clone(),
        }
    }

    /// Whether readiness changed in what the log says of it (the cause left out).
    pub fn same_as(&self, other: &Readiness) -> bool {
        (self.ready, &self.reason) == (other.ready, &other.reason)
    }
}

/// Whether Kafka answers the replica, and if not the last failure a client said (refused
/// SASL credentials, an unknown host, ...).
#[derive(Debug, Clone, Copy)]
pub enum Reach<'a> {
    Yes,
    No { last_error: Option<&'a str> },
}

/// Ready when not stopping, no Kafka client of the replica hit a fatal error (`fatal`, what
/// was said of the first), Kafka is reachable and every group in `groups` is settled.
/// `unreadable` (a route's topic that does not exist or may not be read) is said in the
/// reason but does not make the replica unready: the other routes serve, and taking every
/// replica out of its Service would stop them too.
pub fn assess(
    stopping: bool,
    fatal: Option<&str>,
    kafka: Reach<'_>,
    groups: &[String],
    states: &HashMap<Arc<str>, GroupState>,
    unreadable: &[String],
) -> Readiness {
    let not = |reason: String| Readiness { ready: false, reason, cause: None };
    if stopping {
        return not("stopping".into());
    }
    if let Some(fatal) = fatal {
        return not(fatal.to_string());
    }
    if let Reach::No { last_error } = kafka {
        // Also what a replica says from its start until Kafka first answers: it serves at
        // once and the route consumers connect in the background. The probe's body is where
        // an operator looks first, so it says why when a client said why.
        return match last_error {
            Some(error) => {
                Readiness { ready: false, reason: "kafka is not reachable".into(), cause: Some(error.to_string()) }
            }
            None => not("kafka is not reachable: waiting for it to answer".into()),
        };
    }
    let waiting: Vec<&str> =
        groups.iter().filter(|g| !states.get(g.as_str()).is_some_and(|s| s.settled)).map(String::as_str).collect();
    if !waiting.is_empty() {
        return not(format!("consumer group(s) not settled yet: {}", waiting.join(", ")));
    }
    if unreadable.is_empty() {
        return Readiness { ready: true, reason: "ready".into(), cause: None };
    }
    Readiness { ready: true, reason: format!("ready; {}", unreadable.join("; ")), cause: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn states(list: &[(&str, bool)]) -> HashMap<Arc<str>, GroupState> {
        list.iter().map(|(g, settled)| (Arc::from(*g), GroupState { settled: *settled })).collect()
    }

    #[test]
    fn ready_only_with_kafka_and_every_group_settled() {
        let groups = vec!["a".to_string(), "b".to_string()];
        let all = states(&[("a", true), ("b", true)]);
        assert!(assess(false, None, Reach::Yes, &groups, &all, &[]).ready);
        assert!(assess(false, None, Reach::Yes, &[], &HashMap::new(), &[]).ready, "no routes: nothing to wait for");
        let missing = ["route b cannot read topic t: it does not exist".to_string()];
        let one_route_blind = assess(false, None, Reach::Yes, &groups, &all, &missing);
        assert!(one_route_blind.ready, "the other routes serve");
        assert_eq!(one_route_blind.reason, "ready; route b cannot read topic t: it does not exist");

        let stopping = assess(true, None, Reach::Yes, &groups, &all, &[]);
        assert_eq!((stopping.ready, stopping.reason.as_str()), (false, "stopping"));
        let unreachable = assess(false, None, Reach::No { last_error: None }, &groups, &all, &[]);
        assert!(!unreachable.ready && unreachable.reason.contains("waiting for it"), "{}", unreachable.reason);
        let refused =
            Reach::No { last_error: Some("SASL authentication with kafka at k:9093 failed: check sasl.password") };
        let refused = assess(false, None, refused, &groups, &all, &[]);
        assert_eq!(
            (refused.ready, refused.body().as_str()),
            (false, "kafka is not reachable: SASL authentication with kafka at k:9093 failed: check sasl.password"),
            "the probe says why"
        );
        let later =
            assess(false, None, Reach::No { last_error: Some("another attempt, another line") }, &groups, &all, &[]);
        assert!(later.same_as(&refused), "the log says a change of readiness, not of the last error");
        let fenced = assess(
            false,
            Some("fatal Kafka error in the consumer of group a: fenced"),
            Reach::Yes,
            &groups,
            &all,
            &missing,
        );
        assert_eq!(
            (fenced.ready, fenced.reason.as_str()),
            (false, "fatal Kafka error in the consumer of group a: fenced")
        );

        let joining = assess(false, None, Reach::Yes, &groups, &states(&[("a", true), ("b", false)]), &[]);
        assert!(!joining.ready);
        assert!(joining.reason.ends_with(": b"), "{}", joining.reason);
        let unknown = assess(false, None, Reach::Yes, &groups, &states(&[("a", true)]), &[]);
        assert!(!unknown.ready && unknown.reason.contains('b'), "a group not heard of yet is not settled");
    }
}
