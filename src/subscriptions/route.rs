//! A route as the registry sees it: its selector, its members and cohorts, and the target a
//! routing hash picks among them ([`crate::routing`] decides; this keeps the member lists it
//! decides over).

use super::*;

pub(super) struct RouteState {
    pub(super) config: RouteConfig,
    pub(super) weights: Vec<(String, u32)>,
    /// Ok(None): every subscriber qualifies; Err: the selector did not parse, nobody does
    /// (fail closed; config validation refuses such a route before it gets here).
    pub(super) selector: Result<Option<Selector>, String>,
    /// Members that take new messages, ascending.
    pub(super) members: Vec<SessionId>,
    /// Members per cohort, ascending.
    pub(super) cohorts: HashMap<String, Vec<SessionId>>,
    /// Messages that have no member to go to yet (or whose cohort is held empty).
    pub(super) unassigned: VecDeque<Pending>,
    pub(super) keys: HashMap<u64, KeyState>,
    /// Messages waiting for their key's old owner to settle, per key, in order.
    pub(super) parked: HashMap<u64, VecDeque<Pending>>,
}

impl RouteState {
    pub(super) fn new(config: RouteConfig) -> Self {
        let weights = config.weight_list();
        let selector = config.parsed_selector().map(|s| Some(s).filter(|s| !s.is_empty())).map_err(|e| e.to_string());
        Self {
            config,
            weights,
            selector,
            members: Vec::new(),
            cohorts: HashMap::new(),
            unassigned: VecDeque::new(),
            keys: HashMap::new(),
            parked: HashMap::new(),
        }
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

    /// Takes one settled or withdrawn message of `hash` off its owner's count. Returns true
    /// when the key has nothing outstanding any more (its parked messages may go).
    pub(super) fn release_one(&mut self, hash: u64) -> bool {
        if !self.ordered() {
            return false;
        }
        let Some(state) = self.keys.get_mut(&hash) else { return false };
        state.outstanding = state.outstanding.saturating_sub(1);
        if state.outstanding == 0 {
            self.keys.remove(&hash);
            return true;
        }
        false
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
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    pub(super) fn weights_send_each_cohort_its_share_only() {
        let mut reg = Registry::new(split_route(EmptyCohort::Hold, 0, 100));
        let mut blue = reg.register("r", 100, labelled("b", "blue")).expect("ok");
        let mut green = reg.register("r", 100, labelled("g", "green")).expect("ok");
        for o in 0..100 {
            reg.dispatch(record(0, o, &format!("k{o}")), 1);
        }
        reg.flush();
        assert!(received(&mut blue.outbox).is_empty(), "blue has weight 0");
        let got = received(&mut green.outbox);
        assert_eq!(got.len(), 100);
        assert!(got.iter().all(|d| d.cohort == "green"));
    }

    #[test]
    pub(super) fn empty_cohort_hold_keeps_its_share_until_a_member_comes() {
        let mut reg = Registry::new(split_route(EmptyCohort::Hold, 50, 50));
        let mut blue = reg.register("r", 200, labelled("b", "blue")).expect("ok");
        for o in 0..200 {
            reg.dispatch(record(0, o, &format!("k{o}")), 1);
        }
        reg.flush();
        let to_blue = received(&mut blue.outbox).len();
        assert!(to_blue > 50 && to_blue < 150, "{to_blue}");
        assert_eq!(reg.held(), 200 - to_blue, "green's share waits, nothing goes to blue");
        let held: BTreeMap<&str, usize> = [("green", 200 - to_blue)].into_iter().collect();
        assert_eq!(reg.held_by_cohort(), held, "the held messages are green's");
        let green_row = reg.cohorts().into_iter().find(|c| c.name == "green").expect("green");
        assert_eq!((green_row.subscribers, green_row.held), (0, 200 - to_blue));
        let mut green = reg.register("r", 200, labelled("g", "green")).expect("ok");
        reg.flush();
        assert_eq!(received(&mut green.outbox).len(), 200 - to_blue);
        assert_eq!(reg.held(), 0);
        assert!(reg.held_by_cohort().is_empty());
    }

    #[test]
    pub(super) fn empty_cohort_spill_sends_its_share_to_the_others() {
        let mut reg = Registry::new(split_route(EmptyCohort::Spill, 50, 50));
        let mut blue = reg.register("r", 200, labelled("b", "blue")).expect("ok");
        for o in 0..200 {
            reg.dispatch(record(0, o, &format!("k{o}")), 1);
        }
        reg.flush();
        assert_eq!(received(&mut blue.outbox).len(), 200);
    }
}
