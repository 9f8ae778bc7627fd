//! What the operator sees of the route's sessions (the admin API's Status), and the drains an
//! operator asks for by a subscriber's name or session number.

use super::*;

/// One open session as the operator sees it.
#[derive(Debug, Clone)]
pub struct SubscriberSnapshot {
    pub session: SessionId,
    pub name: String,
    pub cohort: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub window: u32,
    pub in_flight: u32,
    pub delivered: u64,
    pub acked: u64,
    pub connected_at: std::time::SystemTime,
    pub draining: bool,
}

/// One cohort of a route that splits: its weight and the sessions that take its share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CohortSnapshot {
    pub name: String,
    pub weight: u32,
    /// Open, non-draining sessions of the cohort.
    pub subscribers: u32,
    /// Messages waiting because the cohort has no session here and the route holds
    /// (`empty_cohort = "hold"`): what a weight change to an empty cohort strands.
    pub held: usize,
}

impl Registry {
    /// Every open session, by session number.
    pub fn subscribers(&self) -> Vec<SubscriberSnapshot> {
        let mut out: Vec<SubscriberSnapshot> = self
            .sessions
            .iter()
            .map(|(id, s)| SubscriberSnapshot {
                session: *id,
                name: s.subscriber.name.clone(),
                cohort: s.cohort.clone(),
                labels: s.subscriber.labels.clone(),
                window: s.window,
                in_flight: s.in_flight.len() as u32,
                delivered: s.delivered,
                acked: s.acked,
                connected_at: s.connected_at,
                draining: s.draining,
            })
            .collect();
        out.sort_by_key(|s| s.session);
        out
    }

    /// The route's cohorts: every weighted one, and any that has sessions without a weight
    /// (a subscriber whose track the weights do not name yet gets nothing: worth seeing).
    pub fn cohorts(&self) -> Vec<CohortSnapshot> {
        let route = &self.route;
        if route.config.split_label.is_none() {
            return Vec::new();
        }
        let members = |name: &str| route.cohorts.get(name).map_or(0, Vec::len) as u32;
        let held = self.held_by_cohort();
        let mut out: Vec<CohortSnapshot> = route
            .weights
            .iter()
            .map(|(name, weight)| CohortSnapshot {
                name: name.clone(),
                weight: *weight,
                subscribers: members(name),
                held: held.get(name.as_str()).copied().unwrap_or(0),
            })
            .collect();
        for (name, ids) in &route.cohorts {
            if !ids.is_empty() && !route.config.weights.contains_key(name) {
                out.push(CohortSnapshot { name: name.clone(), weight: 0, subscribers: ids.len() as u32, held: 0 });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Messages waiting for a subscriber of their cohort, per cohort without one. Counted when
    /// asked (a Status call, a scrape, the hold warning), not kept per message: the queue is
    /// walked once and each message's cohort is the routing hash's, as when it is sent.
    pub fn held_by_cohort(&self) -> BTreeMap<&str, usize> {
        let route = &self.route;
        let mut out = BTreeMap::new();
        if route.config.split_label.is_none() || route.config.empty_cohort != EmptyCohort::Hold {
            return out;
        }
        for pending in &route.unassigned {
            if let Some(cohort) = routing::cohort_for(pending.hash, &route.weights) {
                if route.cohorts.get(cohort).is_none_or(Vec::is_empty) {
                    *out.entry(cohort).or_default() += 1;
                }
            }
        }
        out
    }

    /// Drains the sessions whose name or session number is `who` (an operator's Drain):
    /// nothing new goes to them, their queues go to the other members, and each closes once
    /// its in-flight deliveries are settled. Returns each matched session with its in-flight
    /// count; sessions already draining are counted, not drained twice.
    pub fn drain_matching(&mut self, who: &str) -> Vec<(SessionId, usize)> {
        let mut matched: Vec<(SessionId, usize, bool)> = self
            .sessions
            .iter()
            .filter(|(id, s)| s.subscriber.name == who || id.to_string() == who)
            .map(|(id, s)| (*id, s.in_flight.len(), s.draining))
            .collect();
        matched.sort_unstable();
        for (id, _, draining) in &matched {
            if !draining {
                self.drain(*id);
            }
        }
        matched.into_iter().map(|(id, in_flight, _)| (id, in_flight)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn subscribers_show_their_counts_and_cohorts_their_members() {
        let mut reg = Registry::new(split_route(EmptyCohort::Hold, 50, 50));
        let blue = reg.register("r", 100, labelled("b", "blue")).expect("ok");
        let _green = reg.register("r", 100, labelled("g", "green")).expect("ok");
        let _stray = reg.register("r", 100, labelled("s", "canary")).expect("ok");
        for o in 0..100 {
            reg.dispatch(record(0, o, &format!("k{o}")), 1);
        }
        reg.flush();
        let subs = reg.subscribers();
        assert_eq!(subs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), vec!["b", "g", "s"]);
        let b = &subs[0];
        assert_eq!((b.cohort.as_deref(), b.window), (Some("blue"), 100));
        assert_eq!(b.delivered, u64::from(b.in_flight));
        assert_eq!(subs.iter().map(|s| s.delivered).sum::<u64>(), 100);
        assert_eq!(subs[2].delivered, 0, "an unweighted cohort gets nothing");
        let by_cohort: u64 = reg.delivered_by_cohort().values().sum();
        assert_eq!(by_cohort, 100);
        assert_eq!(reg.delivered_by_cohort().get("blue"), Some(&b.delivered));

        let acked = reg.ack(blue.session, &[reg.handle(blue.session, "t/0/0"), reg.handle(blue.session, "t/0/1")]);
        let acked_here = acked.settled.len() as u64;
        assert_eq!(reg.subscribers()[0].acked, acked_here);

        assert_eq!(
            reg.cohorts(),
            vec![
                CohortSnapshot { name: "blue".into(), weight: 50, subscribers: 1, held: 0 },
                CohortSnapshot { name: "canary".into(), weight: 0, subscribers: 1, held: 0 },
                CohortSnapshot { name: "green".into(), weight: 50, subscribers: 1, held: 0 },
            ]
        );
    }

    #[test]
    fn an_operator_drain_finds_sessions_by_name_or_number_and_closes_them_when_settled() {
        let mut reg = Registry::new(route("r", 5));
        let mut a = reg.register("r", 0, sub("pod-a")).expect("ok");
        let b = reg.register("r", 0, sub("pod-b")).expect("ok");
        reg.dispatch(record(0, 0, "k"), 1);
        reg.flush();
        let (holder, mut other) = if received(&mut a.outbox).is_empty() { (b.session, a) } else { (a.session, b) };
        let holder_name = if holder == 1 { "pod-a" } else { "pod-b" };

        assert_eq!(reg.drain_matching("nobody"), vec![]);
        assert_eq!(reg.drain_matching(holder_name), vec![(holder, 1)]);
        assert_eq!(reg.drain_matching(&holder.to_string()), vec![(holder, 1)], "already draining: counted again");
        assert!(reg.subscribers().iter().any(|s| s.session == holder && s.draining));
        reg.dispatch(record(0, 1, "other"), 1);
        reg.flush();
        assert_eq!(received(&mut other.outbox).len(), 1, "new messages go to the other subscriber");
        let acked = reg.ack(holder, &[reg.handle(holder, "t/0/0")]);
        assert!(acked.closed, "closed once its in-flight delivery settled");
        assert_eq!(reg.subscribers().len(), 1);
    }
}
