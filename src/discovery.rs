//! Where subscribers' identities and labels come from.
//!
//! Two sources: `kube` watches the Pods a route's selector picks (a subscriber's labels are its
//! pod's labels, and `kubectl label` re-routes it); `static` takes the labels a subscriber puts
//! in its Hello (the embedded demo, and services outside Kubernetes). Either way the output is
//! a stream of [`PodEvent`]s that the dispatcher applies to its sessions.

pub mod kube;

use std::collections::BTreeMap;
use std::net::IpAddr;

/// What the gateway needs to know about one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    /// The pod IP; a subscriber's stream must come from it.
    pub ip: Option<IpAddr>,
    pub labels: BTreeMap<String, String>,
    /// Running and not being deleted: may hold a subscription.
    pub live: bool,
}

/// A change in the set of pods a selector picks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodEvent {
    /// A pod appeared or changed (labels, IP, phase).
    Applied(PodInfo),
    /// A pod is gone, or no longer matches the selector.
    Deleted { namespace: String, name: String },
    /// The watch (re)listed: this is the whole set; pods not in it are gone.
    Resynced(Vec<PodInfo>),
}
