//! Which gateway replicas to open streams to: a fixed list, or a DNS name (the gateway's
//! headless Service) resolved again and again so replicas that come and go are followed.
//! Either way the answer is a stream of tower's discovery changes, keyed by the replica's
//! address.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tower::discover::Change;

/// How a name is turned into addresses: the system resolver by default; tests (and services
/// with a resolver of their own) pass another.
#[derive(Clone)]
pub struct Resolver(Arc<dyn Fn(String) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> + Send + Sync>);

impl Resolver {
    /// `resolve("host:port")` gives the addresses the name stands for now.
    pub fn new<F, Fut>(resolve: F) -> Self
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'static,
    {
        Self(Arc::new(move |name| Box::pin(resolve(name))))
    }

    /// The system's resolver (getaddrinfo, through tokio).
    pub fn system() -> Self {
        Self::new(|name: String| async move { Ok(tokio::net::lookup_host(name).await?.collect()) })
    }
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

/// The gateway replicas a subscriber streams from.
#[derive(Debug, Clone)]
pub enum Replicas {
    /// These endpoints (`host:port`, `http://host:port` or `https://host:port`), each a replica.
    Static(Vec<String>),
    /// Every address `name` (`host:port`) resolves to is a replica; resolved every `every`.
    /// In Kubernetes, the gateway's headless Service:
    /// `fanout-gateway-headless.fanout.svc.cluster.local:50051`.
    Dns {
        /// `host:port`.
        name: String,
        /// How often the name is resolved again.
        every: Duration,
        /// What resolves it.
        resolver: Resolver,
    },
}

impl Replicas {
    /// A fixed list of endpoints.
    pub fn list<I: IntoIterator<Item = S>, S: Into<String>>(endpoints: I) -> Self {
        Replicas::Static(endpoints.into_iter().map(Into::into).collect())
    }

    /// A DNS name (`host:port`) re-resolved every 10 s with the system resolver.
    pub fn dns(name: impl Into<String>) -> Self {
        Replicas::Dns { name: name.into(), every: Duration::from_secs(10), resolver: Resolver::system() }
    }

    /// The host part of a DNS name: what a TLS certificate of the gateway names.
    pub(crate) fn dns_host(&self) -> Option<String> {
        match self {
            Replicas::Dns { name, .. } => Some(name.rsplit_once(':').map_or(name.as_str(), |(h, _)| h).to_string()),
            Replicas::Static(_) => None,
        }
    }
}

/// A replica to stream from: a name for logs and keys, and the address to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Replica {
    /// `host:port`, without a scheme.
    pub(crate) authority: String,
}

/// The endpoint's `host:port`, whatever scheme it was written with.
pub(crate) fn authority(endpoint: &str) -> &str {
    let rest = endpoint.strip_prefix("http://").or_else(|| endpoint.strip_prefix("https://")).unwrap_or(endpoint);
    rest.trim_end_matches('/')
}

/// The changes that take the replica set from `current` to `resolved`.
pub(crate) fn changes(current: &BTreeSet<SocketAddr>, resolved: &BTreeSet<SocketAddr>) -> Vec<Change<String, Replica>> {
    let gone = current.difference(resolved).map(|a| Change::Remove(a.to_string()));
    let new = resolved.difference(current).map(|a| Change::Insert(a.to_string(), Replica { authority: a.to_string() }));
    gone.chain(new).collect()
}

/// The replica changes of `replicas`, as a tower `Discover`. A static list is inserted once; a
/// DNS name is resolved until the stream is dropped. A failed resolution keeps the replicas
/// known (a resolver's hiccup must not drop healthy streams) and is logged.
pub(crate) fn discover(
    replicas: Replicas,
) -> impl Stream<Item = Result<Change<String, Replica>, Infallible>> + Send + Unpin + 'static {
    let (tx, rx) = mpsc::unbounded_channel();
    match replicas {
        Replicas::Static(endpoints) => {
            let mut seen = BTreeSet::new();
            for endpoint in endpoints {
                let authority = authority(&endpoint).to_string();
                if seen.insert(authority.clone()) {
                    let _ = tx.send(Change::Insert(authority.clone(), Replica { authority }));
                }
            }
        }
        Replicas::Dns { name, every, resolver } => {
            tokio::spawn(async move {
                let mut current = BTreeSet::new();
                let mut ticks = tokio::time::interval(every);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    if tx.is_closed() {
                        return;
                    }
                    let resolved = match (resolver.0)(name.clone()).await {
                        Ok(addresses) => addresses.into_iter().collect::<BTreeSet<_>>(),
                        Err(error) => {
                            tracing::warn!(%name, %error, "cannot resolve the gateway's replicas; keeping the known ones");
                            continue;
                        }
                    };
                    for change in changes(&current, &resolved) {
                        if tx.send(change).is_err() {
                            return;
                        }
                    }
                    current = resolved;
                }
            });
        }
    }
    UnboundedReceiverStream::new(rx).map(Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(addrs: &[&str]) -> BTreeSet<SocketAddr> {
        addrs.iter().map(|a| a.parse().expect("test address")).collect()
    }

    fn describe(changes: Vec<Change<String, Replica>>) -> Vec<String> {
        changes
            .into_iter()
            .map(|c| match c {
                Change::Insert(k, _) => format!("+{k}"),
                Change::Remove(k) => format!("-{k}"),
            })
            .collect()
    }

    #[test]
    fn a_new_answer_inserts_what_appeared_and_removes_what_went() {
        let current = set(&["127.0.0.1:1", "127.0.0.2:1"]);
        let resolved = set(&["127.0.0.2:1", "127.0.0.3:1"]);
        assert_eq!(describe(changes(&current, &resolved)), vec!["-127.0.0.1:1", "+127.0.0.3:1"]);
        assert!(changes(&resolved, &resolved).is_empty());
    }

    #[test]
    fn an_endpoint_is_keyed_by_its_authority_whatever_its_scheme() {
        assert_eq!(authority("http://gw-0:50051"), "gw-0:50051");
        assert_eq!(authority("https://gw-0:50051/"), "gw-0:50051");
        assert_eq!(authority("gw-0:50051"), "gw-0:50051");
        assert_eq!(Replicas::dns("gw.ns.svc:50051").dns_host().as_deref(), Some("gw.ns.svc"));
    }

    #[tokio::test]
    async fn a_static_list_is_inserted_once_without_duplicates() {
        let mut d = discover(Replicas::list(["http://a:1", "a:1", "b:1"]));
        let mut keys = Vec::new();
        while let Ok(Some(Ok(Change::Insert(k, _)))) = tokio::time::timeout(Duration::from_millis(50), d.next()).await {
            keys.push(k);
        }
        assert_eq!(keys, vec!["a:1", "b:1"]);
    }
}
