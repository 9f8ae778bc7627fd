//! The admin API through the real admin port: Status matches what the gateway does, SetWeights
//! rewrites the config file and the split follows, an invalid change is refused naming the
//! field, Drain closes one subscriber once its in-flight deliveries settle, and every changing
//! call without the token, or with a wrong one, is refused.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use fanout_client::stream::{self, Subscription};
use fanout_gateway::config::Config;
use fanout_gateway::gateway::GatewayHandle;
use fanout_gateway::proto::admin::admin_client::AdminClient;
use fanout_gateway::proto::admin::{DrainRequest, SetWeightsRequest, StatusRequest, StatusResponse};
use fanout_gateway::proto::Hello;
use support::*;
use tonic::transport::Channel;
use tonic::Code;

const TOKEN: &str = "admin-token-for-tests";

fn config_text(bootstrap: &str, group: &str, weights: &str, token_file: &Path) -> String {
    let split = if weights.is_empty() { String::new() } else { format!("split_label = \"track\"\n{weights}\n") };
    format!(
        r#"# written by tests/admin.rs: this comment must survive a weights change
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token_file = "{}"

[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{group}"
commit_interval_ms = 100
[kafka.properties]
"statistics.interval.ms" = "200"

[[routes]]
name = "{ROUTE}"
topics = ["{TOPIC}"]
{split}"#,
        token_file.display()
    )
}

/// A gateway whose config lives in a file (with a token file beside it).
struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    gw: GatewayHandle,
    admin: AdminClient<Channel>,
}

async fn start(bootstrap: &str, group: &str, weights: &str) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token");
    let path = dir.path().join("fanout.toml");
    std::fs::write(&path, config_text(bootstrap, group, weights, &token_file)).expect("config");
    let gw = start_gateway_from_file(&path).await;
    let channel = Channel::from_shared(gw.admin_endpoint()).expect("endpoint").connect().await.expect("connects");
    Fixture { _dir: dir, path, gw, admin: AdminClient::new(channel) }
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("header"));
    request
}

async fn status(admin: &mut AdminClient<Channel>) -> StatusResponse {
    admin.status(StatusRequest::default()).await.expect("status is open").into_inner()
}

async fn subscribe(endpoint: &str, name: &str, track: Option<&str>) -> Subscription {
    let hello = Hello {
        route: ROUTE.into(),
        pod_name: name.into(),
        max_in_flight: 500,
        labels: track.map(|t| ("track".to_string(), t.to_string())).into_iter().collect(),
        ..Hello::default()
    };
    Subscription::connect(endpoint, hello).await.expect("subscribes")
}

/// Receives and acks `count` deliveries across both subscribers; how many each got.
async fn take_both(a: &mut Subscription, b: &mut Subscription, count: usize) -> (usize, usize) {
    let (mut got_a, mut got_b) = (0, 0);
    while got_a + got_b < count {
        let (first, batch) = tokio::select! {
            batch = a.next() => (true, batch),
            batch = b.next() => (false, batch),
        };
        let ids: Vec<String> = batch.expect("stream").expect("open").iter().map(stream::id_of).collect();
        let (sub, n) = if first { (&*a, &mut got_a) } else { (&*b, &mut got_b) };
        *n += ids.len();
        sub.ack(ids).await.expect("ack");
    }
    (got_a, got_b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_routes_cohorts_subscribers_and_partitions_as_they_run() {
    init_logs();
    let cluster = mock_cluster(4);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("admin-status");
    let run = async {
        let mut f = start(&bootstrap, &group, "weights = { blue = 30, green = 70 }").await;
        let mut blue = subscribe(&f.gw.endpoint(), "blue-0", Some("blue")).await;
        let mut green = subscribe(&f.gw.endpoint(), "green-0", Some("green")).await;
        produce(&bootstrap, 1_000, 500).await;
        let (to_blue, to_green) = take_both(&mut blue, &mut green, 1_000).await;

        // Lag reaches 0 once the acks are committed and the consumer's statistics report the
        // high watermarks.
        let watermarks = high_watermarks(&bootstrap, 4);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let answer = loop {
            let answer = status(&mut f.admin).await;
            let route = &answer.routes[0];
            let settled = route.partitions.len() == 4
                && route.partitions.iter().all(|p| p.lag == Some(0))
                && route.subscribers.iter().all(|s| s.in_flight == 0);
            if settled {
                break answer;
            }
            assert!(tokio::time::Instant::now() < deadline, "lag never reached 0: {:?}", route.partitions);
            tokio::time::sleep(Duration::from_millis(100)).await;
        };

        let replica = answer.replica.expect("replica");
        assert_eq!(replica.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(replica.config_source, format!("file:{}", f.path.display()));
        let route_group = format!("{group}.{ROUTE}");
        assert_eq!(replica.groups, vec![route_group.clone()]);
        assert!(replica.kafka_reachable);
        assert_eq!(replica.config_generation.len(), 16, "{}", replica.config_generation);

        let route = &answer.routes[0];
        assert_eq!((route.name.as_str(), route.group.as_str()), (ROUTE, route_group.as_str()));
        assert_eq!((route.split_label.as_str(), route.delivery.as_str()), ("track", "at-least-once"));
        for p in &route.partitions {
            assert_eq!(p.high_watermark, watermarks.get(&p.partition).copied(), "partition {}", p.partition);
            assert_eq!(p.committed, p.high_watermark, "partition {}", p.partition);
            assert!(!p.paused);
            assert_eq!(p.buffered, 0);
        }
        let names: Vec<(&str, &str)> = route.subscribers.iter().map(|s| (s.name.as_str(), s.cohort.as_str())).collect();
        assert_eq!(names, vec![("blue-0", "blue"), ("green-0", "green")]);
        let by_name: BTreeMap<&str, u64> = route.subscribers.iter().map(|s| (s.name.as_str(), s.delivered)).collect();
        assert_eq!(by_name["blue-0"], to_blue as u64);
        assert_eq!(by_name["green-0"], to_green as u64);
        assert!(route.subscribers.iter().all(|s| s.acked == s.delivered && s.window == 500 && !s.draining));

        let cohorts: Vec<(&str, u32, u32, u64)> =
            route.cohorts.iter().map(|c| (c.name.as_str(), c.weight, c.subscribers, c.delivered_last_minute)).collect();
        assert_eq!(cohorts, vec![("blue", 30, 1, to_blue as u64), ("green", 70, 1, to_green as u64)]);
        let blue_share = route.cohorts[0].observed_share;
        assert!((route.cohorts[0].weight_share - 0.3).abs() < 1e-9);
        assert!((0.2..0.4).contains(&blue_share), "observed blue share {blue_share} against a weight of 30%");
        println!("observed split: blue {blue_share:.3} (weight 0.300), {to_blue} of 1000");

        let unknown = f.admin.status(StatusRequest { route: "billing".into() }).await.expect_err("unknown route");
        assert_eq!(unknown.code(), Code::NotFound);
        assert!(unknown.message().contains(ROUTE), "{}", unknown.message());
        f.gw.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(90), run).await.expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_weights_rewrites_the_file_the_split_follows_and_bad_changes_are_refused() {
    init_logs();
    let cluster = mock_cluster(2);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("admin-weights");
    let run = async {
        let mut f = start(&bootstrap, &group, "weights = { blue = 100, green = 0 }").await;
        let mut blue = subscribe(&f.gw.endpoint(), "blue-0", Some("blue")).await;
        let mut green = subscribe(&f.gw.endpoint(), "green-0", Some("green")).await;
        produce(&bootstrap, 200, 50).await;
        assert_eq!(take_both(&mut blue, &mut green, 200).await, (200, 0), "all to blue first");
        let before = std::fs::read_to_string(&f.path).expect("reads");
        let generation = status(&mut f.admin).await.replica.expect("replica").config_generation;
        let cutover = || SetWeightsRequest {
            route: ROUTE.into(),
            weights: [("blue".to_string(), 0), ("green".to_string(), 100)].into_iter().collect(),
            ..Default::default()
        };

        let refused = f.admin.set_weights(cutover()).await.expect_err("no token");
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
        assert!(refused.message().contains("Bearer"), "{}", refused.message());
        let refused = f.admin.set_weights(with_token(cutover(), "guessed")).await.expect_err("wrong token");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

        let all_zero = SetWeightsRequest {
            route: ROUTE.into(),
            weights: [("blue".to_string(), 0), ("green".to_string(), 0)].into_iter().collect(),
            ..Default::default()
        };
        let refused = f.admin.set_weights(with_token(all_zero, TOKEN)).await.expect_err("all zero");
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(refused.message().contains("`routes[0].weights`"), "{}", refused.message());
        let bad_cohort = SetWeightsRequest {
            route: ROUTE.into(),
            weights: [("Blue!".to_string(), 10)].into_iter().collect(),
            ..Default::default()
        };
        let refused = f.admin.set_weights(with_token(bad_cohort, TOKEN)).await.expect_err("bad cohort");
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(refused.message().contains("`routes[0].weights.Blue!`"), "{}", refused.message());
        let unknown = SetWeightsRequest { route: "billing".into(), weights: cutover().weights, ..Default::default() };
        assert_eq!(f.admin.set_weights(with_token(unknown, TOKEN)).await.expect_err("unknown").code(), Code::NotFound);
        assert_eq!(std::fs::read_to_string(&f.path).expect("reads"), before, "refused changes leave the file alone");

        let done = f.admin.set_weights(with_token(cutover(), TOKEN)).await.expect("applied").into_inner();
        assert_ne!(done.config_generation, generation);
        let after = std::fs::read_to_string(&f.path).expect("reads");
        assert!(after.contains("weights = { blue = 0, green = 100 }"), "{after}");
        assert!(after.starts_with("# written by tests/admin.rs"), "comments stay: {after}");
        let reloaded = Config::load(&f.path).expect("the rewritten file loads");
        assert_eq!(reloaded.routes[0].weights, cutover().weights);
        let replica = status(&mut f.admin).await.replica.expect("replica");
        assert_eq!(replica.config_generation, done.config_generation);

        produce(&bootstrap, 200, 50).await;
        assert_eq!(take_both(&mut blue, &mut green, 200).await, (0, 200), "all to green after SetWeights");
        f.gw.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(90), run).await.expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_one_subscriber_once_its_in_flight_deliveries_settle() {
    init_logs();
    let cluster = mock_cluster(2);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("admin-drain");
    let run = async {
        let mut f = start(&bootstrap, &group, "").await;
        let mut a = subscribe(&f.gw.endpoint(), "pod-a", None).await;
        let mut b = subscribe(&f.gw.endpoint(), "pod-b", None).await;
        produce(&bootstrap, 200, 100).await;
        // a holds what it gets; b acks as it goes.
        let mut held: Vec<String> = Vec::new();
        let mut seen = HashSet::new();
        while seen.len() < 200 {
            tokio::select! {
                batch = a.next() => {
                    let ids: Vec<String> = batch.expect("a").expect("open").iter().map(stream::id_of).collect();
                    seen.extend(ids.iter().cloned());
                    held.extend(ids);
                }
                batch = b.next() => {
                    let ids: Vec<String> = batch.expect("b").expect("open").iter().map(stream::id_of).collect();
                    seen.extend(ids.iter().cloned());
                    b.ack(ids).await.expect("ack");
                }
            }
        }
        assert!(!held.is_empty(), "a got a share of the keys");

        let drain = || DrainRequest { route: ROUTE.into(), subscriber: "pod-a".into() };
        assert_eq!(f.admin.drain(drain()).await.expect_err("no token").code(), Code::Unauthenticated);
        assert_eq!(
            f.admin.drain(with_token(drain(), "guessed")).await.expect_err("wrong").code(),
            Code::PermissionDenied
        );
        let nobody = DrainRequest { route: ROUTE.into(), subscriber: "pod-z".into() };
        assert_eq!(f.admin.drain(with_token(nobody, TOKEN)).await.expect_err("nobody").code(), Code::NotFound);

        let answer = f.admin.drain(with_token(drain(), TOKEN)).await.expect("drains").into_inner();
        assert_eq!(answer.sessions.len(), 1);
        assert_eq!(answer.in_flight as usize, held.len());
        let route = &status(&mut f.admin).await.routes[0];
        let a_status = route.subscribers.iter().find(|s| s.name == "pod-a").expect("still listed while draining");
        assert!(a_status.draining);
        assert_eq!(a_status.in_flight as usize, held.len());

        // a's stream stays open for its acks and gets nothing new; new messages go to b (those
        // of a's keys once a's deliveries of them are settled: drain before move).
        let quiet = tokio::time::timeout(Duration::from_millis(300), a.next()).await;
        assert!(quiet.is_err(), "a draining stream neither ends nor gets deliveries before its acks: {quiet:?}");
        produce(&bootstrap, 100, 100).await;
        a.ack(held).await.expect("a acks what it held");
        assert_eq!(receive_and_ack(&mut b, 100).await.len(), 100);
        let end = tokio::time::timeout(Duration::from_secs(10), a.next()).await.expect("a's stream ends");
        assert!(matches!(end, Ok(None)), "a drained stream ends OK: {end:?}");
        let route = &status(&mut f.admin).await.routes[0];
        assert_eq!(route.subscribers.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), vec!["pod-b"]);
        let route_group = format!("{group}.{ROUTE}");
        eventually(Duration::from_secs(10), "everything committed", || fully_committed(&bootstrap, &route_group, 2))
            .await;
        f.gw.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(90), run).await.expect("in time");
}
