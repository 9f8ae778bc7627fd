//! Who a subscriber is: its labels from its Hello (static discovery) or from its pod, after
//! the identity checks (Kubernetes); pod events re-route or evict the sessions of their pods.

use std::net::SocketAddr;

use tracing::info;

use super::Dispatcher;
use crate::config::DiscoveryMode;
use crate::discovery::Introduction;
use crate::discovery::{self, PodEvent};
use crate::subscriptions::{RegisterError, SessionId, Subscriber};

impl Dispatcher {
    /// Who a new subscriber is and which labels route it: from its pod (Kubernetes discovery,
    /// after the identity checks) or from its Hello (static).
    pub(super) fn identify(&self, hello: &Introduction, peer: Option<SocketAddr>) -> Result<Subscriber, RegisterError> {
        let name = subscriber_name(hello, peer);
        match self.settings.discovery {
            DiscoveryMode::Static => {
                Ok(Subscriber { name, labels: hello.labels.clone().into_iter().collect(), pod: None })
            }
            DiscoveryMode::Kube => {
                let route = self.registry.route_config();
                let pod =
                    discovery::check_identity(hello, peer, &self.pods, &hello.route, &route.selector, route.identity)
                        .map_err(|e| match e {
                        discovery::IdentityError::Unauthenticated(m) => RegisterError::Unauthenticated(m),
                        discovery::IdentityError::Denied(m) => RegisterError::Identity(m),
                    })?;
                // A token's pod names the subscriber when its Hello does not.
                let name = if hello.pod_name.is_empty() { format!("{}/{}", pod.namespace, pod.name) } else { name };
                Ok(Subscriber {
                    name,
                    labels: pod.labels.clone(),
                    pod: Some((pod.namespace.clone(), pod.name.clone())),
                })
            }
        }
    }

    /// Applies a change in the pods the route's selector picks: relabelled pods re-route
    /// their sessions, gone or stopped pods have theirs drained and closed.
    pub fn on_pod_event(&mut self, event: PodEvent) {
        self.pods.apply(event);
        let sessions: Vec<(SessionId, (String, String))> = self.registry.pod_sessions().into_iter().collect();
        for (id, (namespace, name)) in sessions {
            match self.pods.get(&namespace, &name) {
                Some(pod) if pod.live => self.registry.update_labels(id, pod.labels.clone()),
                Some(_) => {
                    if self.registry.evict(id, format!("pod {namespace}/{name} is no longer running")) {
                        info!(session = id, namespace, name, "pod stopped running; draining its subscriber");
                    }
                }
                None => {
                    let why = format!("pod {namespace}/{name} was deleted or no longer matches the route's selector");
                    if self.registry.evict(id, why) {
                        info!(session = id, namespace, name, "pod gone or no longer selected; draining its subscriber");
                    }
                }
            }
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
