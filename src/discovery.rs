//! Where subscribers' identities and labels come from.
//!
//! Two sources: `kube` watches the Pods a route's selector picks (a subscriber's labels are its
//! pod's labels, and `kubectl label` re-routes it); `static` takes the labels a subscriber puts
//! in its Hello (the embedded demo, and services outside Kubernetes). Either way the output is
//! a stream of [`PodEvent`]s that the dispatcher applies to its sessions.

pub mod kube;
pub mod token_review;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use crate::config::IdentityMode;

/// What a subscriber says about itself when its stream opens (the contract's `Hello`, as the
/// gRPC layer hands it in): the route, its pod, the window it asks for, and labels (static
/// discovery only; in Kubernetes mode labels come from the pod).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Introduction {
    pub route: String,
    pub pod_name: String,
    pub namespace: String,
    /// 0: the route's default window.
    pub max_in_flight: u32,
    pub labels: BTreeMap<String, String>,
    /// How fast the subscriber wants deliveries; capped by the route's `rate_limit`.
    pub rate_limit: Option<crate::config::rate_limit::RateLimit>,
    /// What the stream's ServiceAccount token says (kube mode).
    pub token: TokenCheck,
}

/// Most labels a Hello may carry. A pod rarely has a dozen; the bound keeps what one
/// subscriber can make the gateway hold, and show in Status and `/metrics`, small.
pub const MAX_HELLO_LABELS: usize = 64;

/// A Hello field that breaks Kubernetes' own rules for it (the field, then what to fix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Hello.{field} {reason}")]
pub struct HelloError {
    pub field: String,
    pub reason: String,
}

impl Introduction {
    /// Checks the names and labels a subscriber gives against the rules Kubernetes applies to
    /// the same things: a pod name is a DNS subdomain, a namespace a DNS label, label keys and
    /// values as in a pod's metadata, at most [`MAX_HELLO_LABELS`] labels. They end up in
    /// logs, Status replies and `/metrics` labels, so a name that no pod could have is refused
    /// before it gets there, whatever the discovery mode. Empty names are allowed (static
    /// discovery names a subscriber by its address then).
    pub fn validate(&self) -> Result<(), HelloError> {
        let fail = |field: String, reason: String| Err(HelloError { field, reason });
        if !self.pod_name.is_empty() {
            if let Err(reason) = crate::selector::validate_dns_subdomain(&self.pod_name) {
                return fail("pod_name".into(), format!("is not a pod name: it {reason}"));
            }
        }
        if !self.namespace.is_empty() {
            if let Err(reason) = crate::selector::validate_dns_label(&self.namespace) {
                return fail("namespace".into(), format!("is not a namespace name: it {reason}"));
            }
        }
        if self.labels.len() > MAX_HELLO_LABELS {
            return fail(
                "labels".into(),
                format!("has {} labels; at most {MAX_HELLO_LABELS} are allowed", self.labels.len()),
            );
        }
        for (key, value) in &self.labels {
            if let Err(error) = crate::selector::validate_label_key(key) {
                return fail("labels".into(), format!("has a key that is not a label key: {error}"));
            }
            if let Err(error) = crate::selector::validate_label_value(key, value) {
                return fail(format!("labels[{key:?}]"), format!("is not a label value: {error}"));
            }
        }
        if let Some(limit) = &self.rate_limit {
            let problems: Vec<String> = limit.problems().into_iter().map(|(f, why)| format!("{f}: {why}")).collect();
            if !problems.is_empty() {
                return fail("rate_limit".into(), format!("is not a limit: {}", problems.join("; ")));
            }
        }
        Ok(())
    }
}

/// The outcome of a stream's token, reviewed before its Hello reaches the route.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TokenCheck {
    /// No `authorization` metadata (or no reviewer: static mode).
    #[default]
    Absent,
    /// The API server authenticated it as this pod's ServiceAccount.
    Pod { namespace: String, name: String },
    /// Refused, and why (not authenticated, not a pod's token, the review failed).
    Refused(String),
}

/// Why a subscriber's identity was not accepted: unproven (UNAUTHENTICATED) or proven and
/// not allowed (PERMISSION_DENIED).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Denied(String),
}

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

/// The pods one route's selector picks, by (namespace, name). Fed by [`PodEvent`]s.
#[derive(Debug, Default, Clone)]
pub struct PodIndex {
    pods: HashMap<(String, String), PodInfo>,
}

impl PodIndex {
    pub fn apply(&mut self, event: PodEvent) {
        match event {
            PodEvent::Applied(pod) => {
                self.pods.insert((pod.namespace.clone(), pod.name.clone()), pod);
            }
            PodEvent::Deleted { namespace, name } => {
                self.pods.remove(&(namespace, name));
            }
            PodEvent::Resynced(pods) => {
                self.pods = pods.into_iter().map(|p| ((p.namespace.clone(), p.name.clone()), p)).collect();
            }
        }
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<&PodInfo> {
        self.pods.get(&(namespace.to_string(), name.to_string()))
    }

    pub fn len(&self) -> usize {
        self.pods.len()
    }

    /// The values label `key` has among the pods (a route's cohorts that have pods, whether
    /// or not they subscribed yet).
    pub fn label_values(&self, key: &str) -> std::collections::BTreeSet<String> {
        self.pods.values().filter_map(|p| p.labels.get(key).cloned()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }
}

/// Kubernetes identity checks for a Hello: the pod it names must be one the route's selector
/// picks, running, and the stream must come from that pod's IP. The error says which check
/// failed and how to fix it.
pub fn check_identity<'a>(
    hello: &Introduction,
    peer: Option<SocketAddr>,
    index: &'a PodIndex,
    route: &str,
    selector: &str,
    mode: IdentityMode,
) -> Result<&'a PodInfo, IdentityError> {
    let denied = IdentityError::Denied;
    // Which pod: the reviewed token's (token modes), or the Hello's.
    let (namespace, name) = if mode.needs_token() {
        match &hello.token {
            TokenCheck::Absent => {
                return Err(IdentityError::Unauthenticated(format!(
                    "route `{route}` needs the pod's ServiceAccount token (identity = \"token\"): send \
                     `authorization: Bearer <projected token>` metadata on the Subscribe call"
                )))
            }
            TokenCheck::Refused(why) => return Err(IdentityError::Unauthenticated(format!("token check: {why}"))),
            TokenCheck::Pod { namespace, name } => {
                let named = (!hello.pod_name.is_empty() && hello.pod_name != *name)
                    || (!hello.namespace.is_empty() && hello.namespace != *namespace);
                if named {
                    return Err(denied(format!(
                        "hello names pod {}/{} but its token is pod {namespace}/{name}'s",
                        hello.namespace, hello.pod_name
                    )));
                }
                (namespace.as_str(), name.as_str())
            }
        }
    } else {
        if hello.pod_name.is_empty() || hello.namespace.is_empty() {
            return Err(denied(
                "hello.pod_name and hello.namespace are required: set them from the downward API \
                        (metadata.name, metadata.namespace)"
                    .to_string(),
            ));
        }
        (hello.namespace.as_str(), hello.pod_name.as_str())
    };
    let who = format!("{namespace}/{name}");
    let Some(pod) = index.get(namespace, name) else {
        return Err(denied(format!(
            "pod {who} does not exist or is not selected by route `{route}` (selector `{selector}`)"
        )));
    };
    if !pod.live {
        return Err(denied(format!("pod {who} is not running")));
    }
    if !mode.checks_peer_ip() {
        return Ok(pod);
    }
    let Some(peer) = peer else {
        return Err(denied(format!(
            "cannot tell where the stream comes from, so it cannot be checked against pod {who}"
        )));
    };
    match pod.ip {
        Some(ip) if same_ip(ip, peer.ip()) => Ok(pod),
        Some(ip) => Err(denied(format!("the stream comes from {}, but pod {who} has IP {ip}", peer.ip()))),
        None => Err(denied(format!("pod {who} has no IP yet"))),
    }
}

/// Equal addresses, treating an IPv4-mapped IPv6 peer (dual-stack listeners) as IPv4.
fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    let canon = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    canon(a) == canon(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str, live: bool, labels: &[(&str, &str)]) -> PodInfo {
        PodInfo {
            namespace: "shop".into(),
            name: name.into(),
            ip: ip.parse().ok(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            live,
        }
    }

    fn hello(name: &str) -> Introduction {
        Introduction {
            route: "orders".into(),
            pod_name: name.into(),
            namespace: "shop".into(),
            ..Introduction::default()
        }
    }

    fn index() -> PodIndex {
        let mut i = PodIndex::default();
        i.apply(PodEvent::Resynced(vec![
            pod("orders-1", "10.0.0.1", true, &[("app", "orders"), ("track", "blue")]),
            pod("orders-2", "10.0.0.2", false, &[("app", "orders")]),
            pod("orders-3", "", true, &[("app", "orders")]),
        ]));
        i
    }

    fn peer(ip: &str) -> Option<SocketAddr> {
        Some(SocketAddr::new(ip.parse().expect("ip"), 40000))
    }

    #[test]
    fn a_hello_with_names_no_pod_could_have_is_refused_naming_the_field() {
        let ok = Introduction { labels: [("app".into(), "orders".into())].into(), ..hello("orders-7d9f4-x2x8q") };
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(Introduction { pod_name: String::new(), namespace: String::new(), ..ok.clone() }.validate(), Ok(()));

        let field = |h: Introduction| h.validate().expect_err("refused").field;
        assert_eq!(field(hello("x\"} 1\nfanout_ready 0")), "pod_name");
        assert_eq!(field(hello(&"a".repeat(254))), "pod_name");
        assert_eq!(field(hello("Orders-1")), "pod_name");
        assert_eq!(field(Introduction { namespace: "shop.prod".into(), ..ok.clone() }), "namespace");
        assert_eq!(field(Introduction { namespace: "n".repeat(64), ..ok.clone() }), "namespace");
        let labels = |pairs: Vec<(String, String)>| Introduction { labels: pairs.into_iter().collect(), ..ok.clone() };
        assert_eq!(field(labels(vec![("track".into(), "v".repeat(1 << 20))])), "labels[\"track\"]");
        assert_eq!(field(labels(vec![("bad key".into(), "x".into())])), "labels");
        let many = (0..=MAX_HELLO_LABELS).map(|i| (format!("k{i}"), "v".to_string())).collect();
        let error = labels(many).validate().expect_err("too many");
        assert_eq!(error.to_string(), "Hello.labels has 65 labels; at most 64 are allowed");
        let error = hello("Orders-1").validate().expect_err("upper case");
        assert!(
            error.to_string().starts_with("Hello.pod_name is not a pod name: it must be a lowercase DNS"),
            "{error}"
        );
    }

    #[test]
    fn the_pod_from_its_own_ip_is_accepted_with_its_labels() {
        let i = index();
        let p = check_identity(&hello("orders-1"), peer("10.0.0.1"), &i, "orders", "app=orders", IdentityMode::PeerIp)
            .expect("ok");
        assert_eq!(p.labels.get("track").map(String::as_str), Some("blue"));
        let mapped = peer("::ffff:10.0.0.1");
        assert!(check_identity(&hello("orders-1"), mapped, &i, "orders", "app=orders", IdentityMode::PeerIp).is_ok());
    }

    #[test]
    fn a_token_names_the_pod_whatever_the_peer_address() {
        let i = index();
        let reviewed = |name: &str| TokenCheck::Pod { namespace: "shop".into(), name: name.into() };
        let with = |token: TokenCheck, name: &str| Introduction { token, ..hello(name) };
        let check = |h: &Introduction, mode| check_identity(h, peer("172.16.0.9"), &i, "orders", "app=orders", mode);
        // Behind a sidecar the stream comes from elsewhere: the token decides.
        let p = check(&with(reviewed("orders-1"), "orders-1"), IdentityMode::Token).expect("the token's pod");
        assert_eq!(p.name, "orders-1");
        let anonymous_hello = Introduction { token: reviewed("orders-1"), ..Introduction::default() };
        assert!(check(&anonymous_hello, IdentityMode::Token).is_ok(), "the pod comes from the review");
        // Both checks: the address must match too.
        let both = check(&with(reviewed("orders-1"), "orders-1"), IdentityMode::TokenAndPeerIp).expect_err("ip");
        assert!(matches!(both, IdentityError::Denied(m) if m.contains("comes from 172.16.0.9")));
        // No token, a refused one, a token for a pod the selector does not pick, a Hello that
        // names another pod.
        let missing = check(&hello("orders-1"), IdentityMode::Token).expect_err("missing");
        assert!(matches!(missing, IdentityError::Unauthenticated(m) if m.contains("authorization: Bearer")));
        let refused = check(&with(TokenCheck::Refused("not authenticated".into()), "orders-1"), IdentityMode::Token);
        assert!(matches!(refused, Err(IdentityError::Unauthenticated(m)) if m.contains("not authenticated")));
        let outside = check(&with(reviewed("payments-1"), ""), IdentityMode::Token).expect_err("outside");
        assert!(matches!(outside, IdentityError::Denied(m) if m.contains("not selected by route `orders`")));
        let liar = check(&with(reviewed("orders-1"), "orders-3"), IdentityMode::Token).expect_err("liar");
        assert!(matches!(liar, IdentityError::Denied(m) if m.contains("its token is pod shop/orders-1's")));
    }

    #[test]
    fn each_failed_check_says_which() {
        let i = index();
        let err = |h: Introduction, p| {
            check_identity(&h, p, &i, "orders", "app=orders", IdentityMode::PeerIp).expect_err("refused").to_string()
        };
        assert!(
            err(hello("ghost"), peer("10.0.0.9")).contains("not selected by route `orders` (selector `app=orders`)")
        );
        assert!(err(hello("orders-2"), peer("10.0.0.2")).contains("not running"));
        assert!(err(hello("orders-3"), peer("10.0.0.3")).contains("no IP"));
        assert!(err(hello("orders-1"), peer("10.0.0.7"))
            .contains("comes from 10.0.0.7, but pod shop/orders-1 has IP 10.0.0.1"));
        let mut anonymous = hello("orders-1");
        anonymous.namespace.clear();
        assert!(err(anonymous, peer("10.0.0.1")).contains("required"));
    }

    #[test]
    fn index_follows_events() {
        let mut i = index();
        i.apply(PodEvent::Deleted { namespace: "shop".into(), name: "orders-1".into() });
        assert!(i.get("shop", "orders-1").is_none());
        i.apply(PodEvent::Applied(pod("orders-4", "10.0.0.4", true, &[])));
        assert_eq!(i.len(), 3);
        i.apply(PodEvent::Resynced(vec![]));
        assert!(i.is_empty());
    }
}
