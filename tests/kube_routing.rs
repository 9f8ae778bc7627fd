//! Kubernetes-mode routing end to end: a gateway on librdkafka's mock cluster whose subscribers'
//! identities and labels come from pods, served by a fake apiserver (`support/kube.rs`) that the
//! test changes at chosen moments. What a subscriber sees is what is asserted: refusals with
//! `PERMISSION_DENIED` saying which check failed, deliveries by cohort, and streams that end with
//! `PERMISSION_DENIED` once their pod is gone and their deliveries are settled.

#[path = "support/kube.rs"]
mod kube_support;
mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use fanout_client::stream::{ClientError, Subscription};
use fanout_gateway::config::{Config, DiscoveryMode, RouteConfig};
use fanout_gateway::gateway::GatewayHandle;
use fanout_gateway::proto::{Delivery, Hello};
use fanout_gateway::stats::Stats;
use kube_support::{pod, query_param, running_orders, FakeApiServer, LOCAL_IP, NAMESPACE};
use parking_lot::Mutex;
use support::{
    eventually, fully_committed, init_logs, mock_cluster, produce, start_gateway_with_kube, unique_group, ROUTE, TOPIC,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::{Code, Status};

const PARTITIONS: i32 = 4;
/// Distinct keys per produced batch (`key-0` .. `key-39`, the same keys in every batch).
const KEYS: usize = 40;
const SELECTOR: &str = "app=orders";
/// Each test's whole run, the mock cluster's group join included.
const TEST_LIMIT: Duration = Duration::from_secs(60);
/// One step's wait (a group join, a batch acked).
const STEP: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identity_checks_refuse_with_permission_denied() {
    init_logs();
    let cluster = mock_cluster(PARTITIONS);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("kube-identity");
    let run = async {
        let (client, api) = FakeApiServer::start(vec![
            running_orders("orders-blue", "blue"),
            pod("orders-starting", &[("app", "orders"), ("track", "green")], "Pending", None),
            pod("orders-elsewhere", &[("app", "orders"), ("track", "green")], "Running", Some("10.9.9.9")),
        ]);
        let gw = start_gateway_with_kube(kube_config(&bootstrap, &group), client).await;

        // Accepted: running, selected, and the stream comes from its IP. Its Hello claims
        // track=green, but in Kubernetes mode the pod's labels route it: it is blue.
        let mut claims_green = hello("orders-blue", 10);
        claims_green.labels.insert("track".into(), "green".into());
        let blue = subscribe_once_listed(&gw, claims_green, "does not exist", true).await;

        let refused = |hello: Hello| refusal(&gw, hello);
        let anonymous = Hello { route: ROUTE.into(), max_in_flight: 10, ..Hello::default() };
        expect_denied(refused(anonymous).await, "hello.pod_name and hello.namespace are required");
        let mut no_namespace = hello("orders-blue", 10);
        no_namespace.namespace.clear();
        expect_denied(refused(no_namespace).await, "hello.pod_name and hello.namespace are required");
        expect_denied(
            refused(hello("orders-ghost", 10)).await,
            "pod shop/orders-ghost does not exist or is not selected by route `orders` (selector `app=orders`)",
        );
        let mut other_namespace = hello("orders-blue", 10);
        other_namespace.namespace = "billing".into();
        expect_denied(refused(other_namespace).await, "pod billing/orders-blue does not exist");
        expect_denied(refused(hello("orders-starting", 10)).await, "pod shop/orders-starting is not running");
        expect_denied(
            refused(hello("orders-elsewhere", 10)).await,
            "the stream comes from 127.0.0.1, but pod shop/orders-elsewhere has IP 10.9.9.9",
        );

        // Only blue's share flows: green has no subscriber and `empty_cohort = hold`.
        let ids = produce(&bootstrap, 40, KEYS).await;
        eventually(STEP, "the accepted subscriber receives blue's share", || !blue.received().is_empty()).await;
        let to_blue = blue.received();
        assert!(to_blue.iter().all(|d| d.cohort == "blue"), "routed by the pod's labels, not the Hello's: {to_blue:?}");

        // The pending pod starts running (the watch says so) and is then accepted, as green:
        // the held share goes to it.
        api.modified(pod("orders-starting", &[("app", "orders"), ("track", "green")], "Running", Some(LOCAL_IP)));
        let green = subscribe_once_listed(&gw, hello("orders-starting", 10), "is not running", true).await;
        all_acked(&[&blue, &green], &ids).await;
        let to_green = green.received();
        assert!(!to_green.is_empty() && to_green.iter().all(|d| d.cohort == "green"), "{to_green:?}");
        assert_eq!(
            blue.received().len() + to_green.len(),
            ids.len(),
            "each message once: green's share waited for green"
        );

        // The watch asked the apiserver for the route's pods only, LIST and WATCH alike, and
        // each WATCH resumed where the last answer left off.
        let seen = api.seen();
        assert!(seen.len() >= 3 && !seen[0].watch && seen[1].watch, "a LIST, then WATCHes: {seen:?}");
        for s in &seen {
            assert_eq!(s.uri.path(), "/api/v1/namespaces/shop/pods", "{}", s.uri);
            assert_eq!(query_param(&s.uri, "labelSelector"), Some("app%3Dorders"), "{}", s.uri);
            if s.watch {
                assert_eq!(query_param(&s.uri, "resourceVersion"), Some(s.last_sent_version.as_str()), "{}", s.uri);
            }
        }
        gw.shutdown().await;
    };
    tokio::time::timeout(TEST_LIMIT, run).await.expect("test finished in time");
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_label_change_reroutes_and_a_deleted_pods_keys_move_after_drain() {
    init_logs();
    let cluster = mock_cluster(PARTITIONS);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("kube-reroute");
    let run = async {
        let (client, api) =
            FakeApiServer::start(vec![running_orders("orders-blue", "blue"), running_orders("orders-green", "green")]);
        let gw = start_gateway_with_kube(kube_config(&bootstrap, &group), client).await;
        let stats = gw.stats();
        let blue = subscribe_once_listed(&gw, hello("orders-blue", 20), "does not exist", true).await;
        let green = subscribe_once_listed(&gw, hello("orders-green", 20), "does not exist", true).await;
        let mut produced: Vec<String> = Vec::new();

        // 50/50: each pod gets its own cohort's keys.
        let batch = produce(&bootstrap, 200, KEYS).await;
        all_acked(&[&blue, &green], &batch).await;
        let (to_blue, to_green) = (blue.received_of(&batch), green.received_of(&batch));
        assert!(!to_blue.is_empty() && !to_green.is_empty(), "both cohorts get traffic");
        assert!(to_blue.iter().all(|d| d.cohort == "blue") && to_green.iter().all(|d| d.cohort == "green"));
        assert_keys_apart(&to_blue, &to_green);
        produced.extend(batch);

        // Green's weight to 0: nothing goes to the green pod.
        assert!(gw.update_routes(vec![orders_route(100, 0)]).await.is_empty(), "the route is known");
        let batch = produce(&bootstrap, 200, KEYS).await;
        all_acked(&[&blue, &green], &batch).await;
        assert!(green.received_of(&batch).is_empty(), "green has weight 0");
        produced.extend(batch);

        // `kubectl label pod orders-green track=blue --overwrite`: the pod joins the blue cohort
        // and takes a share of its keys.
        api.modified(running_orders("orders-green", "blue"));
        watch_applied(&api, &gw).await;
        let batch = produce(&bootstrap, 200, KEYS).await;
        all_acked(&[&blue, &green], &batch).await;
        let (to_blue, to_relabelled) = (blue.received_of(&batch), green.received_of(&batch));
        assert!(!to_relabelled.is_empty(), "the relabelled pod now takes a share of the blue keys");
        assert!(to_relabelled.iter().all(|d| d.cohort == "blue"), "{to_relabelled:?}");
        assert!(!to_blue.is_empty(), "the blue pod keeps the rest");
        assert_keys_apart(&to_blue, &to_relabelled);
        produced.extend(batch);

        // The relabelled pod stops acking and fills its window, then it is deleted.
        green.set_acking(false);
        let before_delete = produce(&bootstrap, 200, KEYS).await;
        eventually(STEP, "the relabelled pod holds a full window", || green.held().len() == 20).await;
        let held = green.held();
        let held_keys: HashSet<String> = held.iter().map(|d| d.key.clone()).collect();
        api.deleted(running_orders("orders-green", "blue"));
        watch_applied(&api, &gw).await;
        let after_delete = produce(&bootstrap, 100, KEYS).await;
        let later: Vec<String> = before_delete.iter().chain(&after_delete).cloned().collect();
        let key_of = keys_by_id(&before_delete, &after_delete);
        let moved_now: Vec<String> = later.iter().filter(|id| !held_keys.contains(&key_of[*id])).cloned().collect();
        let held_ids: HashSet<&String> = held.iter().map(|d| &d.id).collect();
        let waiting: Vec<String> =
            later.iter().filter(|id| held_keys.contains(&key_of[*id]) && !held_ids.contains(id)).cloned().collect();
        assert!(!waiting.is_empty(), "the held keys have later messages");

        // Keys it does not hold go to the blue pod at once; the held keys wait for its acks
        // (drain before move), and its stream stays open while it holds deliveries.
        all_acked(&[&blue], &moved_now).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let early = blue.received_of(&waiting);
        assert!(early.is_empty(), "a held key moved before its deliveries were acked: {early:?}\nheld: {held:?}");
        assert_eq!(green.ended(), None, "closed with deliveries un-acked");
        assert_eq!(green.received().len(), green.acked().len() + held.len(), "nothing new to a deleted pod");

        green.set_acking(true);
        eventually(STEP, "the deleted pod's stream ends once it has acked", || green.ended().is_some()).await;
        expect_ended_denied(
            green.ended(),
            "pod shop/orders-green was deleted or no longer matches the route's selector",
        );
        all_acked(&[&blue], &waiting).await;
        // Per key, the blue pod's offsets all come after the ones the deleted pod held.
        let moved = blue.received_of(&waiting);
        for d in &held {
            assert!(
                moved.iter().filter(|m| m.key == d.key).all(|m| m.partition == d.partition && m.offset > d.offset),
                "key {} reached the blue pod at or before offset {}",
                d.key,
                d.offset
            );
        }
        produced.extend(later);

        // Nothing lost, nothing delivered twice, everything committed.
        let acked: HashSet<String> = blue.acked().union(&green.acked()).cloned().collect();
        let lost: Vec<&String> = produced.iter().filter(|id| !acked.contains(*id)).collect();
        assert!(lost.is_empty(), "{} messages never acked, e.g. {:?}", lost.len(), &lost[..lost.len().min(5)]);
        let mut delivered: Vec<String> = blue.received().into_iter().chain(green.received()).map(|d| d.id).collect();
        delivered.sort();
        let total = delivered.len();
        delivered.dedup();
        assert_eq!(total, delivered.len(), "a message was delivered twice");
        assert_eq!(total, produced.len());
        eventually(STEP, "the gateway settled every message once", || {
            Stats::get(&stats.acked) == produced.len() as u64
        })
        .await;
        eventually(STEP, "committed offsets reach the high watermarks", || {
            fully_committed(&bootstrap, &group, PARTITIONS)
        })
        .await;
        gw.shutdown().await;
    };
    tokio::time::timeout(TEST_LIMIT, run).await.expect("test finished in time");
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pod_that_stops_matching_the_selector_is_drained_and_closed() {
    init_logs();
    let cluster = mock_cluster(PARTITIONS);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("kube-unselect");
    let run = async {
        let (client, api) =
            FakeApiServer::start(vec![running_orders("orders-blue", "blue"), running_orders("orders-green", "green")]);
        let gw = start_gateway_with_kube(kube_config(&bootstrap, &group), client).await;
        let blue = subscribe_once_listed(&gw, hello("orders-blue", 5), "does not exist", false).await;
        let green = subscribe_once_listed(&gw, hello("orders-green", 5), "does not exist", false).await;
        let _ids = produce(&bootstrap, 100, KEYS).await;
        eventually(STEP, "both pods hold a full window", || blue.held().len() == 5 && green.held().len() == 5).await;

        // `kubectl label pod orders-blue app-`, as a MODIFIED event (the gateway checks the
        // selector itself too): drained first, closed once its deliveries are acked.
        api.modified(pod("orders-blue", &[("track", "blue")], "Running", Some(LOCAL_IP)));
        watch_applied(&api, &gw).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(blue.ended(), None, "closed with deliveries un-acked");
        blue.set_acking(true);
        eventually(STEP, "the unselected pod's stream ends once it has acked", || blue.ended().is_some()).await;
        expect_ended_denied(blue.ended(), "its labels {track=blue} no longer match selector `app=orders`");
        assert_eq!(blue.received().len(), 5, "nothing new while draining");

        // What an apiserver sends on a label-selector watch when labels stop matching: DELETED.
        // Drained the same way.
        api.deleted(pod("orders-green", &[("track", "green")], "Running", Some(LOCAL_IP)));
        watch_applied(&api, &gw).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(green.ended(), None, "closed with deliveries un-acked");
        green.set_acking(true);
        eventually(STEP, "the deleted pod's stream ends once it has acked", || green.ended().is_some()).await;
        expect_ended_denied(
            green.ended(),
            "pod shop/orders-green was deleted or no longer matches the route's selector",
        );
        assert_eq!(green.received().len(), 5, "nothing new while draining");

        // Neither can come back while it does not match.
        expect_denied(
            refusal(&gw, hello("orders-blue", 5)).await,
            "subscriber labels {track=blue} do not match route `orders`'s selector `app=orders`",
        );
        expect_denied(refusal(&gw, hello("orders-green", 5)).await, "pod shop/orders-green does not exist");
        gw.shutdown().await;
    };
    tokio::time::timeout(TEST_LIMIT, run).await.expect("test finished in time");
    drop(cluster);
}

/// A reload that widens a route's selector restarts the route's pod watch with the new
/// selector, so the pods it now picks are listed and admitted (before the fix they were
/// refused as "does not exist or is not selected" for as long as the gateway ran).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_selector_widened_by_reload_admits_the_pods_it_now_selects() {
    init_logs();
    let cluster = mock_cluster(PARTITIONS);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("kube-reselect");
    let run = async {
        let (client, api) = FakeApiServer::start(vec![
            running_orders("orders-blue", "blue"),
            pod("canary-1", &[("app", "orders-canary"), ("track", "green")], "Running", Some(LOCAL_IP)),
        ]);
        let gw = start_gateway_with_kube(kube_config(&bootstrap, &group), client).await;
        let _blue = subscribe_once_listed(&gw, hello("orders-blue", 5), "does not exist", true).await;
        expect_denied(refusal(&gw, hello("canary-1", 5)).await, "pod shop/canary-1 does not exist or is not selected");

        let mut widened = orders_route(50, 50);
        widened.selector = "app in (orders,orders-canary)".into();
        assert!(gw.update_routes(vec![widened]).await.is_empty(), "the route is known");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match open(&gw, hello("canary-1", 5)).await {
                Ok(_) => break,
                Err(status) if tokio::time::Instant::now() < deadline => {
                    assert!(status.message().contains("does not exist"), "{status:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(status) => {
                    let selectors: Vec<String> = api
                        .seen()
                        .iter()
                        .filter_map(|s| query_param(&s.uri, "labelSelector").map(str::to_string))
                        .collect();
                    panic!("canary-1 is still refused 10 s after the reload: {status:?}; selectors asked for: {selectors:?}");
                }
            }
        }
        gw.shutdown().await;
    };
    tokio::time::timeout(TEST_LIMIT, run).await.expect("test finished in time");
    drop(cluster);
}

// === the gateway ===

/// The `orders` route: pods `app=orders`, cohorts by `track`, `empty_cohort = hold`.
fn orders_route(blue: u32, green: u32) -> RouteConfig {
    let mut route = RouteConfig::new(ROUTE, &[TOPIC]);
    route.selector = SELECTOR.into();
    route.split_label = Some("track".into());
    route.weights = [("blue".to_string(), blue), ("green".to_string(), green)].into_iter().collect();
    route
}

fn kube_config(bootstrap: &str, group: &str) -> Config {
    let mut config = support::config(bootstrap, group);
    config.server.shutdown_grace_ms = 2_000;
    config.discovery.mode = DiscoveryMode::Kube;
    config.discovery.namespace = Some(NAMESPACE.into());
    config.routes = vec![orders_route(50, 50)];
    // The route consumes as `group` itself, the group the tests read commits of.
    config.routes[0].group_id = Some(group.to_string());
    config.validate().expect("a valid config");
    config
}

/// Waits until the dispatcher has applied every pod change sent so far. Pod events reach it in
/// order, so it adds a pending marker pod and asks to subscribe as it until the refusal says
/// "not running" instead of "does not exist".
async fn watch_applied(api: &FakeApiServer, gw: &GatewayHandle) {
    let marker = api.next_marker();
    api.added(pod(&marker, &[("app", "orders"), ("track", "blue")], "Pending", None));
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let status = refusal(gw, hello(&marker, 1)).await;
        if status.message().contains("is not running") {
            return;
        }
        assert!(status.message().contains("does not exist"), "marker {marker}: {status:?}");
        assert!(tokio::time::Instant::now() < deadline, "the watch did not deliver marker {marker}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// === subscribers ===

fn hello(pod: &str, max_in_flight: u32) -> Hello {
    Hello { route: ROUTE.into(), pod_name: pod.into(), namespace: NAMESPACE.into(), max_in_flight, ..Hello::default() }
}

async fn open(gw: &GatewayHandle, hello: Hello) -> Result<Subscription, Status> {
    match Subscription::connect(&gw.endpoint(), hello).await {
        Ok(subscription) => Ok(subscription),
        Err(ClientError::Refused(status)) => Err(status),
        Err(error) => panic!("cannot reach the gateway: {error}"),
    }
}

async fn refusal(gw: &GatewayHandle, hello: Hello) -> Status {
    let pod = hello.pod_name.clone();
    match open(gw, hello).await {
        Ok(_) => panic!("pod {pod:?} was accepted"),
        Err(status) => status,
    }
}

fn expect_denied(status: Status, says: &str) {
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains(says), "expected {says:?} in {:?}", status.message());
}

fn expect_ended_denied(ended: Option<Ended>, says: &str) {
    match ended {
        Some(Ended::Status(code, message)) => {
            assert_eq!(code, Code::PermissionDenied, "{message}");
            assert!(message.contains(says), "expected {says:?} in {message:?}");
        }
        other => panic!("the stream ended with {other:?}, not PERMISSION_DENIED"),
    }
}

/// Subscribes as `hello`'s pod, retrying while the refusal says `retry_while` (the watch has
/// not told the gateway yet).
async fn subscribe_once_listed(gw: &GatewayHandle, hello: Hello, retry_while: &str, acking: bool) -> Subscriber {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        match open(gw, hello.clone()).await {
            Ok(subscription) => return Subscriber::spawn(subscription, acking),
            Err(status) if status.message().contains(retry_while) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("pod {} refused: {status:?}", hello.pod_name),
        }
    }
}

/// One delivery as a subscriber received it.
#[derive(Debug, Clone)]
struct Got {
    id: String,
    key: String,
    cohort: String,
    partition: i32,
    offset: i64,
}

impl From<&Delivery> for Got {
    fn from(d: &Delivery) -> Self {
        Self {
            id: fanout_client::stream::id_of(d),
            key: String::from_utf8_lossy(d.key.as_deref().unwrap_or_default()).into_owned(),
            cohort: d.cohort.clone(),
            partition: d.partition,
            offset: d.offset,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ended {
    Clean,
    Status(Code, String),
}

#[derive(Default)]
struct Log {
    received: Vec<Got>,
    /// Received, not acked yet.
    held: Vec<Got>,
    acked: HashSet<String>,
    ended: Option<Ended>,
}

impl Log {
    /// Ids of what it holds, now counted as acked.
    fn ack_held(&mut self) -> Vec<String> {
        let ids: Vec<String> = self.held.drain(..).map(|d| d.id).collect();
        self.acked.extend(ids.iter().cloned());
        ids
    }
}

/// A subscriber on its own task: records what it receives, acks it at once while acking is
/// on, holds it otherwise (turning acking on acks what it holds), and records how its stream
/// ended.
struct Subscriber {
    log: Arc<Mutex<Log>>,
    acking: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Subscriber {
    fn spawn(mut subscription: Subscription, acking: bool) -> Self {
        let log = Arc::new(Mutex::new(Log::default()));
        let (acking_tx, mut acking_rx) = watch::channel(acking);
        let task_log = log.clone();
        let task = tokio::spawn(async move {
            let ended = loop {
                let ack = tokio::select! {
                    batch = subscription.next() => match batch {
                        Ok(Some(batch)) => {
                            let mut log = task_log.lock();
                            for d in &batch {
                                log.received.push(Got::from(d));
                                log.held.push(Got::from(d));
                            }
                            if *acking_rx.borrow() { log.ack_held() } else { Vec::new() }
                        }
                        Ok(None) => break Ended::Clean,
                        Err(status) => break Ended::Status(status.code(), status.message().to_string()),
                    },
                    Ok(()) = acking_rx.changed() => {
                        if *acking_rx.borrow_and_update() { task_log.lock().ack_held() } else { Vec::new() }
                    }
                };
                if !ack.is_empty() {
                    // A closed request side shows up as the stream's end on the next read.
                    let _ = subscription.ack(ack).await;
                }
            };
            task_log.lock().ended = Some(ended);
        });
        Self { log, acking: acking_tx, task }
    }

    fn set_acking(&self, on: bool) {
        self.acking.send_replace(on);
    }

    fn received(&self) -> Vec<Got> {
        self.log.lock().received.clone()
    }

    /// What it received of `ids`.
    fn received_of(&self, ids: &[String]) -> Vec<Got> {
        let ids: HashSet<&String> = ids.iter().collect();
        self.log.lock().received.iter().filter(|d| ids.contains(&d.id)).cloned().collect()
    }

    fn held(&self) -> Vec<Got> {
        self.log.lock().held.clone()
    }

    fn acked(&self) -> HashSet<String> {
        self.log.lock().acked.clone()
    }

    fn ended(&self) -> Option<Ended> {
        self.log.lock().ended.clone()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until the subscribers between them have acked every one of `ids`.
async fn all_acked(subscribers: &[&Subscriber], ids: &[String]) {
    eventually(STEP, &format!("{} messages acked", ids.len()), || {
        let acked: Vec<HashSet<String>> = subscribers.iter().map(|s| s.acked()).collect();
        ids.iter().all(|id| acked.iter().any(|a| a.contains(id)))
    })
    .await;
}

/// No key went to both.
fn assert_keys_apart(a: &[Got], b: &[Got]) {
    let keys: HashSet<&str> = a.iter().map(|d| d.key.as_str()).collect();
    let shared: Vec<&str> = b.iter().map(|d| d.key.as_str()).filter(|k| keys.contains(k)).collect();
    assert!(shared.is_empty(), "keys delivered to both pods: {shared:?}");
}

/// The key of each produced id (`support::produce` keys message `i` of a batch `key-{i % KEYS}`).
fn keys_by_id(first: &[String], second: &[String]) -> HashMap<String, String> {
    let by_index = |ids: &[String]| {
        ids.iter().enumerate().map(|(i, id)| (id.clone(), format!("key-{}", i % KEYS))).collect::<Vec<_>>()
    };
    by_index(first).into_iter().chain(by_index(second)).collect()
}
