//! Membership changes that do not come from the stream itself: new route settings on reload,
//! relabelled pods, pods that went away. Each reroutes with drain before move, or drains and
//! closes a session that no longer qualifies.

use super::*;

pub(super) fn format_labels(labels: &BTreeMap<String, String>) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", inner.join(","))
}

impl Registry {
    /// New settings for existing routes (weights, selector, windows, empty-cohort policy):
    /// queued messages are routed again under them, keys move with drain before move.
    /// Returns the names of routes that were not found (added routes need a restart).
    pub fn update_routes(&mut self, configs: &[RouteConfig]) -> Vec<String> {
        let mut unknown = Vec::new();
        for config in configs {
            let Some(r) = self.route_index(&config.name) else {
                unknown.push(config.name.clone());
                continue;
            };
            let mut next = RouteState::new(config.clone());
            // Ordering and topics are fixed for the gateway's lifetime (keys in flight were
            // hashed under the old ordering; topics are the consumer's subscription).
            next.config.ordering = self.routes[r].config.ordering;
            next.config.topics = self.routes[r].config.topics.clone();
            let old = std::mem::replace(&mut self.routes[r], next);
            let route = &mut self.routes[r];
            route.unassigned = old.unassigned;
            route.keys = old.keys;
            route.parked = old.parked;
            let members: Vec<SessionId> = old.members;
            let mut unselected = Vec::new();
            for id in members {
                let Some(s) = self.sessions.get_mut(&id) else { continue };
                if !self.routes[r].selects(&s.subscriber.labels) {
                    unselected.push(id);
                    continue;
                }
                s.cohort = self.routes[r].cohort_of(&s.subscriber.labels);
                let cohort = s.cohort.clone();
                self.routes[r].add_member(id, cohort.as_ref());
            }
            self.reroute(r, Vec::new());
            for id in unselected {
                let reason = CloseReason::NotSelected("its labels no longer match the route's selector".into());
                self.drain_with(id, Some(reason));
            }
        }
        unknown
    }

    /// A subscriber's labels changed (its pod was relabelled): it may change cohort, or leave
    /// the route's selector, in which case it is drained and closed.
    pub fn update_labels(&mut self, id: SessionId, labels: BTreeMap<String, String>) {
        let Some(s) = self.sessions.get_mut(&id) else { return };
        if s.subscriber.labels == labels {
            return;
        }
        let r = s.route;
        s.subscriber.labels = labels;
        if s.draining {
            return;
        }
        if !self.routes[r].selects(&s.subscriber.labels) {
            let why = format!(
                "its labels {} no longer match selector `{}`",
                format_labels(&s.subscriber.labels),
                self.routes[r].selector_text()
            );
            self.drain_with(id, Some(CloseReason::NotSelected(why)));
            return;
        }
        let cohort = self.routes[r].cohort_of(&s.subscriber.labels);
        if cohort != s.cohort {
            s.cohort = cohort.clone();
            let route = &mut self.routes[r];
            route.remove_member(id);
            route.add_member(id, cohort.as_ref());
            self.reroute(r, Vec::new());
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
    pub fn pod_sessions(&self) -> Vec<(SessionId, usize, (String, String))> {
        self.sessions.iter().filter_map(|(id, s)| s.subscriber.pod.clone().map(|p| (*id, s.route, p))).collect()
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
        let mut reg = Registry::new(&[r]);
        let err = reg.register("r", 0, sub("stranger")).expect_err("not selected");
        assert!(matches!(err, RegisterError::NotSelected { .. }), "{err:?}");
        let app = |v: &str| -> BTreeMap<String, String> { [("app".to_string(), v.to_string())].into_iter().collect() };
        let mut a =
            reg.register("r", 0, Subscriber { name: "a".into(), labels: app("orders"), pod: None }).expect("selected");
        reg.dispatch(record(0, 0, "k"), 1, 0);
        reg.flush();
        assert_eq!(received(&mut a.outbox).len(), 1);
        reg.update_labels(a.session, app("billing"));
        reg.ack(a.session, &[id("t/0/0")]);
        assert!(matches!(a.outbox.try_recv(), Ok(SessionMessage::Closed(CloseReason::NotSelected(_)))));
    }
}
