//! Membership changes that do not come from the stream itself: new route settings on reload,
//! relabelled pods, pods that went away. Each reroutes with drain before move, or drains and
//! closes a session that no longer qualifies.

use super::*;

pub(super) fn format_labels(labels: &BTreeMap<String, String>) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", inner.join(","))
}

impl Registry {
    /// New settings for the route (weights, selector, windows, empty-cohort policy): queued
    /// messages are routed again under them, keys move with drain before move. False (and
    /// nothing changed) when `config` names another route.
    pub fn update_route(&mut self, config: &RouteConfig) -> bool {
        if config.name != self.route.config.name {
            return false;
        }
        let mut next = RouteState::new(config.clone());
        // Ordering and topics are fixed for the gateway's lifetime (keys in flight were
        // hashed under the old ordering; topics are the consumer's subscription).
        next.config.ordering = self.route.config.ordering;
        next.config.topics = self.route.config.topics.clone();
        let old = std::mem::replace(&mut self.route, next);
        let route = &mut self.route;
        route.unassigned = old.unassigned;
        route.keys = old.keys;
        route.parked = old.parked;
        let mut unselected = Vec::new();
        for id in old.members {
            let Some(s) = self.sessions.get_mut(&id) else { continue };
            if !self.route.selects(&s.subscriber.labels) {
                unselected.push(id);
                continue;
            }
            s.cohort = self.route.cohort_of(&s.subscriber.labels);
            let cohort = s.cohort.clone();
            self.route.add_member(id, cohort.as_ref());
        }
        self.reroute(Vec::new());
        for id in unselected {
            let reason = CloseReason::NotSelected("its labels no longer match the route's selector".into());
            self.drain_with(id, Some(reason));
        }
        true
    }

    /// A subscriber's labels changed (its pod was relabelled): it may change cohort, or leave
    /// the route's selector, in which case it is drained and closed.
    pub fn update_labels(&mut self, id: SessionId, labels: BTreeMap<String, String>) {
        let Some(s) = self.sessions.get_mut(&id) else { return };
        if s.subscriber.labels == labels {
            return;
        }
        s.subscriber.labels = labels;
        if s.draining {
            return;
        }
        if !self.route.selects(&s.subscriber.labels) {
            let why = format!(
                "its labels {} no longer match selector `{}`",
                format_labels(&s.subscriber.labels),
                self.route.selector_text()
            );
            self.drain_with(id, Some(CloseReason::NotSelected(why)));
            return;
        }
        let cohort = self.route.cohort_of(&s.subscriber.labels);
        if cohort != s.cohort {
            s.cohort = cohort.clone();
            let route = &mut self.route;
            route.remove_member(id);
            route.add_member(id, cohort.as_ref());
            self.reroute(Vec::new());
        }
    }

    /// Drains and closes a session whose pod went away. Returns false when it was already
    /// on its way out for that reason (pod events repeat; the drain happens once).
    pub fn evict(&mut self, id: SessionId, why: String) -> bool {
        let already = self.sessions.get(&id).is_none_or(|s| s.draining && s.close_reason.is_some());
        if already {
            return false;
        }
        self.drain_with(id, Some(CloseReason::NotSelected(why)));
        true
    }

    /// Every session bound to a pod, with the pod.
    pub fn pod_sessions(&self) -> Vec<(SessionId, (String, String))> {
        self.sessions.iter().filter_map(|(id, s)| s.subscriber.pod.clone().map(|p| (*id, p))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn labels_that_leave_the_selector_drain_and_close_the_session() {
        let mut r = route("r", 10);
        r.selector = "app=orders".into();
        let mut reg = Registry::new(r);
        let err = reg.register("r", 0, sub("stranger")).expect_err("not selected");
        assert!(matches!(err, RegisterError::NotSelected { .. }), "{err:?}");
        let app = |v: &str| -> BTreeMap<String, String> { [("app".to_string(), v.to_string())].into_iter().collect() };
        let mut a =
            reg.register("r", 0, Subscriber { name: "a".into(), labels: app("orders"), pod: None }).expect("selected");
        reg.dispatch(record(0, 0, "k"), 1);
        reg.flush();
        assert_eq!(received(&mut a.outbox).len(), 1);
        reg.update_labels(a.session, app("billing"));
        reg.ack(a.session, &[reg.handle(a.session, "t/0/0")]);
        assert!(matches!(a.outbox.try_recv(), Ok(SessionMessage::Closed(CloseReason::NotSelected(_)))));
    }
}
