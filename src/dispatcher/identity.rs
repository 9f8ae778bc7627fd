//! Who a subscriber is: its labels from its Hello (static discovery) or from its pod, after
//! the identity checks (Kubernetes); the pods the route's selector picks, whose events re-route
//! or evict the sessions of their pods, and the selector the pod watch follows.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use tokio::sync::watch;
use tracing::info;

use crate::config::{DiscoveryMode, RouteConfig};
use crate::discovery::{self, Introduction, PodEvent, PodIndex};
use crate::subscriptions::{RegisterError, Subscriber};

/// What became of a session's pod after a pod event.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum PodFate<'a> {
    /// Running: its labels (perhaps changed) route its sessions.
    Live(&'a BTreeMap<String, String>),
    /// Still there, no longer running.
    Stopped,
    /// Deleted, or no longer matched by the route's selector.
    Gone,
}

/// The route's view of who its subscribers are.
pub(super) struct Identity {
    discovery: DiscoveryMode,
    /// Pods the route's selector picks (Kubernetes discovery).
    pods: PodIndex,
    /// The selector the route's pod watch uses (Kubernetes discovery): a reload that changes
    /// the selector restarts the watch with the new one.
    watched_selector: Option<watch::Sender<String>>,
}

impl Identity {
    pub(super) fn new(discovery: DiscoveryMode) -> Self {
        Self { discovery, pods: PodIndex::default(), watched_selector: None }
    }

    /// Hands over the sender that steers the route's pod watch (Kubernetes discovery).
    pub(super) fn watch_with(&mut self, selector: Option<watch::Sender<String>>) {
        self.watched_selector = selector;
    }

    /// Who a new subscriber is and which labels route it: from its pod (Kubernetes discovery,
    /// after the identity checks) or from its Hello (static).
    pub(super) fn identify(
        &self,
        hello: &Introduction,
        peer: Option<SocketAddr>,
        route: &RouteConfig,
    ) -> Result<Subscriber, RegisterError> {
        let name = subscriber_name(hello, peer);
        match self.discovery {
            DiscoveryMode::Static => Ok(Subscriber {
                name,
                labels: hello.labels.clone().into_iter().collect(),
                pod: None,
                rate_limit: hello.rate_limit,
            }),
            DiscoveryMode::Kube => {
                let pod =
                    discovery::check_identity(hello, peer, &self.pods, &hello.route, &route.selector, route.identity)
                        .map_err(RegisterError::Identity)?;
                // A token's pod names the subscriber when its Hello does not.
                let name = if hello.pod_name.is_empty() { format!("{}/{}", pod.namespace, pod.name) } else { name };
                Ok(Subscriber {
                    name,
                    labels: pod.labels.clone(),
                    pod: Some((pod.namespace.clone(), pod.name.clone())),
                    rate_limit: hello.rate_limit,
                })
            }
        }
    }

    /// Applies a change in the pods the route's selector picks.
    pub(super) fn apply(&mut self, event: PodEvent) {
        self.pods.apply(event);
    }

    /// What became of pod `namespace/name`.
    pub(super) fn fate(&self, namespace: &str, name: &str) -> PodFate<'_> {
        match self.pods.get(namespace, name) {
            Some(pod) if pod.live => PodFate::Live(&pod.labels),
            Some(_) => PodFate::Stopped,
            None => PodFate::Gone,
        }
    }

    /// Values of `label` among the pods the route selects.
    pub(super) fn label_values(&self, label: &str) -> BTreeSet<String> {
        self.pods.label_values(label)
    }

    /// The route's selector is now `selector`: its pod watch starts anew if that changed it.
    pub(super) fn follow_selector(&self, selector: &str) {
        if let Some(sender) = &self.watched_selector {
            sender.send_if_modified(|current| {
                let changed = *current != selector;
                if changed {
                    info!(selector, "selector changed; watching its pods anew");
                    selector.clone_into(current);
                }
                changed
            });
        }
    }
}

/// A stream's peer address as text ("unknown" when the transport gave none).
pub(super) fn peer_text(peer: Option<SocketAddr>) -> String {
    peer.map_or_else(|| "unknown".to_string(), |p| p.to_string())
}

pub(super) fn subscriber_name(hello: &Introduction, peer: Option<SocketAddr>) -> String {
    if hello.pod_name.is_empty() {
        peer_text(peer)
    } else if hello.namespace.is_empty() {
        hello.pod_name.clone()
    } else {
        format!("{}/{}", hello.namespace, hello.pod_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::PodInfo;

    #[test]
    fn static_discovery_takes_the_hellos_labels_and_names_it_by_pod_or_peer() {
        let identity = Identity::new(DiscoveryMode::Static);
        let route = RouteConfig::new("r", &["t"]);
        let labels: BTreeMap<String, String> = [("track".to_string(), "blue".to_string())].into_iter().collect();
        let hello = Introduction { route: "r".into(), labels: labels.clone(), ..Introduction::default() };
        let peer: Option<SocketAddr> = "10.0.0.7:5000".parse().ok();
        let who = identity.identify(&hello, peer, &route).expect("static discovery takes every hello");
        assert_eq!((who.name.as_str(), &who.labels, who.pod), ("10.0.0.7:5000", &labels, None));
        let named = Introduction { pod_name: "p".into(), namespace: "ns".into(), ..hello };
        assert_eq!(subscriber_name(&named, peer), "ns/p");
        assert_eq!(subscriber_name(&Introduction { namespace: String::new(), ..named }, None), "p");
        assert_eq!(peer_text(None), "unknown");
    }

    #[test]
    fn a_pods_fate_follows_its_events() {
        let mut identity = Identity::new(DiscoveryMode::Kube);
        let labels: BTreeMap<String, String> = [("track".to_string(), "green".to_string())].into_iter().collect();
        let pod = |live| PodInfo { namespace: "ns".into(), name: "p".into(), ip: None, labels: labels.clone(), live };
        assert_eq!(identity.fate("ns", "p"), PodFate::Gone);
        identity.apply(PodEvent::Applied(pod(true)));
        assert_eq!(identity.fate("ns", "p"), PodFate::Live(&labels));
        assert_eq!(identity.label_values("track").into_iter().collect::<Vec<_>>(), vec!["green".to_string()]);
        identity.apply(PodEvent::Applied(pod(false)));
        assert_eq!(identity.fate("ns", "p"), PodFate::Stopped);
        identity.apply(PodEvent::Deleted { namespace: "ns".into(), name: "p".into() });
        assert_eq!(identity.fate("ns", "p"), PodFate::Gone);
    }

    #[test]
    fn a_changed_selector_steers_the_pod_watch_once() {
        let mut identity = Identity::new(DiscoveryMode::Kube);
        let (sender, mut watch) = watch::channel("app=a".to_string());
        identity.watch_with(Some(sender));
        identity.follow_selector("app=a");
        assert!(!watch.has_changed().expect("open"), "the same selector restarts nothing");
        identity.follow_selector("app=b");
        assert!(watch.has_changed().expect("open"));
        assert_eq!(*watch.borrow_and_update(), "app=b");
    }
}
