//! A route as the registry sees it: its selector, its members and cohorts, the target a
//! routing hash picks among them ([`crate::routing`] decides; this keeps the member lists it
//! decides over), and the messages that have no member to go to yet.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::{Pending, SessionId};
use crate::config::{EmptyCohort, Ordering, RouteConfig};
use crate::kafka::Record;
use crate::routing;
use crate::selector::Selector;

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

pub(super) struct RouteState {
    pub(super) config: RouteConfig,
    pub(super) weights: Vec<(String, u32)>,
    /// Ok(None): every subscriber qualifies; Err: the selector did not parse, nobody does
    /// (fail closed; config validation refuses such a route before it gets here).
    selector: Result<Option<Selector>, String>,
    /// Members that take new messages, ascending.
    pub(super) members: Vec<SessionId>,
    /// Members per cohort, ascending.
    pub(super) cohorts: HashMap<String, Vec<SessionId>>,
    /// Messages that have no member to go to yet (or whose cohort is held empty).
    pub(super) unassigned: VecDeque<Pending>,
}

impl RouteState {
    pub(super) fn new(config: RouteConfig) -> Self {
        let weights = config.weight_list();
        let selector = config.parsed_selector().map(|s| Some(s).filter(|s| !s.is_empty())).map_err(|e| e.to_string());
        Self { config, weights, selector, members: Vec::new(), cohorts: HashMap::new(), unassigned: VecDeque::new() }
    }

    pub(super) fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        match &self.selector {
            Ok(selector) => selector.as_ref().is_none_or(|s| s.matches(labels)),
            Err(_) => false,
        }
    }

    pub(super) fn selector_text(&self) -> String {
        match &self.selector {
            Ok(selector) => selector.as_ref().map(ToString::to_string).unwrap_or_default(),
            Err(error) => format!("{} (invalid: {error})", self.config.selector),
        }
    }

    pub(super) fn hash_of(&self, record: &Record) -> u64 {
        match self.config.ordering {
            Ordering::Key => routing::key_hash(record.key.as_deref(), record.tp.partition, record.offset),
            Ordering::Partition => {
                routing::key_hash(Some(record.tp.topic.as_bytes()), record.tp.partition, 0)
                    ^ routing::key_hash(None, record.tp.partition, 0)
            }
            Ordering::None => routing::key_hash(None, record.tp.partition, record.offset),
        }
    }

    pub(super) fn ordered(&self) -> bool {
        self.config.ordering != Ordering::None
    }

    /// The member a message with `hash` goes to now, if any.
    pub(super) fn target(&self, hash: u64) -> Option<SessionId> {
        let pick = |ids: &[SessionId]| routing::instance_for(hash, ids).map(|i| ids[i]);
        if self.config.split_label.is_none() {
            return pick(&self.members);
        }
        let cohort = routing::cohort_for(hash, &self.weights)?;
        match self.cohorts.get(cohort).filter(|m| !m.is_empty()) {
            Some(members) => pick(members),
            None => match self.config.empty_cohort {
                EmptyCohort::Hold => None,
                EmptyCohort::Spill => pick(&self.members),
            },
        }
    }

    pub(super) fn cohort_of(&self, labels: &BTreeMap<String, String>) -> Option<String> {
        self.config.split_label.as_ref().and_then(|l| labels.get(l).cloned())
    }

    pub(super) fn add_member(&mut self, id: SessionId, cohort: Option<&String>) {
        self.members.push(id);
        self.members.sort_unstable();
        if let Some(c) = cohort {
            let m = self.cohorts.entry(c.clone()).or_default();
            m.push(id);
            m.sort_unstable();
        }
    }

    pub(super) fn remove_member(&mut self, id: SessionId) {
        self.members.retain(|m| *m != id);
        for m in self.cohorts.values_mut() {
            m.retain(|x| *x != id);
        }
    }

    /// The route's cohorts: every weighted one, and any that has sessions without a weight
    /// (a subscriber whose track the weights do not name yet gets nothing: worth seeing).
    pub(super) fn cohort_snapshots(&self) -> Vec<CohortSnapshot> {
        if self.config.split_label.is_none() {
            return Vec::new();
        }
        let members = |name: &str| self.cohorts.get(name).map_or(0, Vec::len) as u32;
        let held = self.held_by_cohort();
        let mut out: Vec<CohortSnapshot> = self
            .weights
            .iter()
            .map(|(name, weight)| CohortSnapshot {
                name: name.clone(),
                weight: *weight,
                subscribers: members(name),
                held: held.get(name.as_str()).copied().unwrap_or(0),
            })
            .collect();
        for (name, ids) in &self.cohorts {
            if !ids.is_empty() && !self.config.weights.contains_key(name) {
                out.push(CohortSnapshot { name: name.clone(), weight: 0, subscribers: ids.len() as u32, held: 0 });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Messages waiting for a subscriber of their cohort, per cohort without one. Counted when
    /// asked (a Status call, a scrape, the hold warning), not kept per message: the queue is
    /// walked once and each message's cohort is the routing hash's, as when it is sent.
    pub(super) fn held_by_cohort(&self) -> BTreeMap<&str, usize> {
        let mut out = BTreeMap::new();
        if self.config.split_label.is_none() || self.config.empty_cohort != EmptyCohort::Hold {
            return out;
        }
        for pending in &self.unassigned {
            if let Some(cohort) = routing::cohort_for(pending.hash, &self.weights) {
                if self.cohorts.get(cohort).is_none_or(Vec::is_empty) {
                    *out.entry(cohort).or_default() += 1;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{labelled, route, split_route};
    use super::*;

    #[test]
    fn without_a_split_every_member_may_be_a_target_and_none_without_members() {
        let mut state = RouteState::new(route("r", 10));
        assert_eq!(state.target(42), None);
        state.add_member(SessionId(2), None);
        state.add_member(SessionId(1), None);
        assert_eq!(state.members, vec![SessionId(1), SessionId(2)], "ascending");
        let targets: std::collections::BTreeSet<SessionId> = (0..64).filter_map(|h| state.target(h)).collect();
        assert_eq!(targets.into_iter().collect::<Vec<_>>(), vec![SessionId(1), SessionId(2)]);
        state.remove_member(SessionId(1));
        assert!((0..64).all(|h| state.target(h) == Some(SessionId(2))));
    }

    #[test]
    fn a_cohort_without_members_holds_or_spills_its_share() {
        let blue = Some("blue".to_string());
        let mut hold = RouteState::new(split_route(EmptyCohort::Hold, 0, 100));
        hold.add_member(SessionId(1), blue.as_ref());
        assert_eq!(hold.cohort_of(&labelled("b", "blue").labels), blue);
        assert!((0..64).all(|h| hold.target(h).is_none()), "green's share waits");
        let mut spill = RouteState::new(split_route(EmptyCohort::Spill, 0, 100));
        spill.add_member(SessionId(1), blue.as_ref());
        assert!((0..64).all(|h| spill.target(h) == Some(SessionId(1))), "green's share goes to the others");
        let rows = spill.cohort_snapshots();
        assert_eq!(
            rows.iter().map(|c| (c.name.as_str(), c.subscribers)).collect::<Vec<_>>(),
            vec![("blue", 1), ("green", 0)]
        );
    }

    #[test]
    fn a_selector_that_does_not_parse_selects_nobody() {
        let mut config = route("r", 10);
        config.selector = "app in (".into();
        let state = RouteState::new(config);
        assert!(!state.selects(&BTreeMap::new()));
        assert!(state.selector_text().contains("invalid"), "{}", state.selector_text());
    }
}
