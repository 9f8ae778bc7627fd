//! Kubernetes discovery: watches the Pods a route's selector picks and turns what the apiserver
//! says into [`PodEvent`]s, which go to the dispatcher's [`PodIndex`](super::PodIndex).
//!
//! The watch is kube-runtime's `watcher` (LIST, then WATCH from the list's resourceVersion, with
//! bookmarks), so recovery follows its rules:
//! - a watch the apiserver ends (it does every few minutes) resumes from the last
//!   resourceVersion seen, a bookmark's included: no relist, no [`PodEvent::Resynced`];
//! - a `410 Gone` inside the watch (the resourceVersion fell out of the apiserver's window)
//!   relists, after the backoff's first delay (0.8 to 1.6 s): a fresh `Resynced` with the
//!   whole set;
//! - any other error is logged and retried, 0.8 s doubling to 30 s, jittered; the watch never
//!   gives up.
//!
//! The `kube::Client` is passed in: `Client::try_default()` belongs in the wiring.

use ::kube::api::Api;
use ::kube::runtime::watcher::{self, watcher};
use ::kube::runtime::WatchStreamExt;
use ::kube::Client;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, info_span, warn, Instrument};

use super::{PodEvent, PodInfo};

/// What the gateway needs from a pod, or `None` for a pod without a name (nothing could refer
/// to it). Live means phase `Running` and no deletionTimestamp: a terminating pod may finish
/// what it holds but takes no new subscription.
pub fn pod_info(pod: &Pod) -> Option<PodInfo> {
    let meta = &pod.metadata;
    let name = meta.name.as_deref().filter(|name| !name.is_empty())?;
    let status = pod.status.as_ref();
    let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
    Some(PodInfo {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: name.to_string(),
        ip: status.and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse().ok()),
        labels: meta.labels.clone().unwrap_or_default(),
        live: running && meta.deletion_timestamp.is_none(),
    })
}

/// The watcher's configuration for one route: its selector, server-side, on both the LIST and
/// the WATCH. Bookmarks are kube's default (`allowWatchBookmarks=true`): a watch that ends
/// resumes from the last bookmark instead of relisting.
pub fn watcher_config(selector: &str) -> watcher::Config {
    watcher::Config::default().labels(selector)
}

/// Watches the pods `selector` picks, in `namespace` or in every namespace when `None`, and
/// sends what changes to `events` until its receiver is dropped.
///
/// The first event is a [`PodEvent::Resynced`] with the whole set, and so is the first after
/// every relist. `events.send` waits when the channel is full: the watch stops reading
/// meanwhile and resumes where it was, so nothing is skipped. Errors never end the watch: they
/// are logged and retried with backoff.
pub async fn watch_pods(client: Client, namespace: Option<String>, selector: String, events: mpsc::Sender<PodEvent>) {
    let span = info_span!("pod_watch", %selector, namespace = %namespace.as_deref().unwrap_or("*"));
    let api: Api<Pod> = match namespace.as_deref() {
        Some(namespace) => Api::namespaced(client, namespace),
        None => Api::all(client),
    };
    let stream = watcher(api, watcher_config(&selector)).default_backoff();
    run(stream, events).instrument(span).await;
}

/// [`watch_pods`] on its own task. The task ends when the receiver of `events` is dropped (or
/// when the handle is aborted).
pub fn spawn_pod_watch(
    client: Client,
    namespace: Option<String>,
    selector: String,
    events: mpsc::Sender<PodEvent>,
) -> JoinHandle<()> {
    tokio::spawn(watch_pods(client, namespace, selector, events))
}

async fn run<S>(stream: S, events: mpsc::Sender<PodEvent>)
where
    S: futures::Stream<Item = watcher::Result<watcher::Event<Pod>>>,
{
    let mut stream = std::pin::pin!(stream);
    let mut relist = Relist::default();
    loop {
        // `closed()` ends a watch that is idle (an apiserver can be quiet for minutes) as soon
        // as nobody listens. Dropping `next()` is safe: the watcher keeps its state in the stream.
        let next = tokio::select! {
            next = stream.next() => next,
            () = events.closed() => {
                debug!("pod event receiver dropped; watch stopped");
                return;
            }
        };
        let event = match next {
            Some(Ok(event)) => event,
            Some(Err(error)) => {
                log_watch_error(&error);
                continue;
            }
            None => {
                // The default backoff never gives up, so the watcher should not end.
                warn!("pod watch ended unexpectedly");
                return;
            }
        };
        if let Some(event) = relist.on_event(event) {
            if events.send(event).await.is_err() {
                debug!("pod event receiver dropped; watch stopped");
                return;
            }
        }
    }
}

fn log_watch_error(error: &watcher::Error) {
    match error {
        // Routine: the watch fell out of the apiserver's window; the watcher relists.
        watcher::Error::WatchError(status) if status.code == 410 => {
            info!(%error, "pod watch expired (410 Gone); relisting");
        }
        watcher::Error::InitialListFailed(::kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(::kube::Error::Api(status))
            if status.code == 403 =>
        {
            warn!(%error, "pod watch forbidden: the gateway needs get, list and watch on pods (k8s/rbac.yaml); retrying");
        }
        _ => warn!(%error, "pod watch failed; retrying with backoff"),
    }
}

/// Turns the watcher's events into [`PodEvent`]s, holding a relist back until it is complete,
/// so the index swaps to the new set in one step.
#[derive(Debug, Default)]
struct Relist {
    /// Pods listed since the last `Init`.
    listed: Vec<PodInfo>,
}

impl Relist {
    fn on_event(&mut self, event: watcher::Event<Pod>) -> Option<PodEvent> {
        match event {
            // A relist starts; one cut short (an error between pages) starts over here.
            watcher::Event::Init => {
                self.listed.clear();
                None
            }
            watcher::Event::InitApply(pod) => {
                self.listed.extend(pod_info(&pod));
                None
            }
            watcher::Event::InitDone => Some(PodEvent::Resynced(std::mem::take(&mut self.listed))),
            watcher::Event::Apply(pod) => pod_info(&pod).map(PodEvent::Applied),
            watcher::Event::Delete(pod) => {
                pod_info(&pod).map(|p| PodEvent::Deleted { namespace: p.namespace, name: p.name })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::PodStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    use super::*;

    fn mk_pod(ns: &str, name: &str, labels: &[(&str, &str)], phase: &str, ip: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some(ns.to_string()),
                name: Some(name.to_string()),
                labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                ..ObjectMeta::default()
            },
            spec: None,
            status: Some(PodStatus {
                phase: Some(phase.to_string()),
                pod_ip: ip.map(str::to_string),
                ..PodStatus::default()
            }),
        }
    }

    fn info(pod: &Pod) -> PodInfo {
        pod_info(pod).expect("pod has a name")
    }

    #[test]
    fn a_running_pod_is_live_with_its_ip_and_labels() {
        let p = info(&mk_pod("shop", "orders-1", &[("app", "orders"), ("track", "blue")], "Running", Some("10.0.0.1")));
        let labels: BTreeMap<String, String> =
            [("app", "orders"), ("track", "blue")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(
            p,
            PodInfo {
                namespace: "shop".into(),
                name: "orders-1".into(),
                ip: Some("10.0.0.1".parse().expect("ip")),
                labels,
                live: true,
            }
        );
        assert_eq!(
            info(&mk_pod("shop", "v6", &[], "Running", Some("fd00::1"))).ip,
            Some("fd00::1".parse().expect("ip"))
        );
    }

    #[test]
    fn a_pod_that_is_not_running_is_not_live() {
        for phase in ["Pending", "Succeeded", "Failed", "Unknown", ""] {
            assert!(!info(&mk_pod("shop", "orders-1", &[], phase, Some("10.0.0.1"))).live, "phase {phase:?}");
        }
        let mut no_status = mk_pod("shop", "orders-1", &[], "Running", None);
        no_status.status = None;
        assert!(!info(&no_status).live);
    }

    #[test]
    fn a_terminating_pod_is_not_live() {
        let mut pod = mk_pod("shop", "orders-1", &[], "Running", Some("10.0.0.1"));
        pod.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        let p = info(&pod);
        assert!(!p.live);
        assert_eq!(p.ip, Some("10.0.0.1".parse().expect("ip")), "the IP stays known while it drains");
    }

    #[test]
    fn a_missing_or_unparsable_ip_is_none() {
        assert_eq!(info(&mk_pod("shop", "orders-1", &[], "Pending", None)).ip, None);
        assert_eq!(info(&mk_pod("shop", "orders-1", &[], "Running", Some(""))).ip, None);
        assert_eq!(info(&mk_pod("shop", "orders-1", &[], "Running", Some("not-an-ip"))).ip, None);
    }

    #[test]
    fn a_pod_without_a_name_is_skipped_and_a_missing_namespace_is_empty() {
        let mut nameless = mk_pod("shop", "", &[], "Running", None);
        assert_eq!(pod_info(&nameless), None);
        nameless.metadata.name = None;
        assert_eq!(pod_info(&nameless), None);

        let mut pod = mk_pod("shop", "orders-1", &[], "Running", None);
        pod.metadata.namespace = None;
        pod.metadata.labels = None;
        let p = info(&pod);
        assert_eq!(p.namespace, "");
        assert!(p.labels.is_empty());
    }

    #[test]
    fn the_watch_asks_for_the_selector_and_bookmarks() {
        let config = watcher_config("app=orders,track in (blue,green)");
        assert_eq!(config.label_selector.as_deref(), Some("app=orders,track in (blue,green)"));
        assert!(config.bookmarks);
    }

    #[test]
    fn a_relist_is_sent_whole_once_it_is_done() {
        let (a, b) = (mk_pod("shop", "a", &[], "Running", None), mk_pod("shop", "b", &[], "Running", None));
        let mut relist = Relist::default();
        assert_eq!(relist.on_event(watcher::Event::Init), None);
        assert_eq!(relist.on_event(watcher::Event::InitApply(a.clone())), None);
        assert_eq!(relist.on_event(watcher::Event::InitApply(b.clone())), None);
        assert_eq!(relist.on_event(watcher::Event::InitDone), Some(PodEvent::Resynced(vec![info(&a), info(&b)])));
        // A relist cut short is dropped: only the one that completes counts.
        assert_eq!(relist.on_event(watcher::Event::Init), None);
        assert_eq!(relist.on_event(watcher::Event::InitApply(a)), None);
        assert_eq!(relist.on_event(watcher::Event::Init), None);
        assert_eq!(relist.on_event(watcher::Event::InitApply(b.clone())), None);
        assert_eq!(relist.on_event(watcher::Event::InitDone), Some(PodEvent::Resynced(vec![info(&b)])));
        // An empty selection is a resync too: every pod is gone.
        assert_eq!(relist.on_event(watcher::Event::Init), None);
        assert_eq!(relist.on_event(watcher::Event::InitDone), Some(PodEvent::Resynced(vec![])));
    }

    #[test]
    fn watch_changes_pass_through_one_by_one() {
        let mut relist = Relist::default();
        let pod = mk_pod("shop", "a", &[("track", "green")], "Running", Some("10.0.0.1"));
        assert_eq!(relist.on_event(watcher::Event::Apply(pod.clone())), Some(PodEvent::Applied(info(&pod))));
        assert_eq!(
            relist.on_event(watcher::Event::Delete(pod)),
            Some(PodEvent::Deleted { namespace: "shop".into(), name: "a".into() })
        );
        let nameless = mk_pod("shop", "", &[], "Running", None);
        assert_eq!(relist.on_event(watcher::Event::Apply(nameless)), None);
    }
}
