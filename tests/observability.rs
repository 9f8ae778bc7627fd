//! What Prometheus and the kubelet see on the admin port: `/metrics` passes `promtool check
//! metrics` and its series move as messages flow (delivered per cohort follows the weights,
//! a partition pauses under backpressure and resumes, lag falls to 0); `/readyz` is not ready
//! while Kafka is unreachable and becomes ready when it answers, with grpc.health saying the
//! same; `/healthz` answers throughout. The Grafana dashboard and the alert rules in
//! `k8s/monitoring/` query only series the gateway exports.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use fanout_client::stream::{self, Subscription};
use fanout_gateway::proto::Hello;
use support::*;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const PARTITIONS: i32 = 4;
const MESSAGES: usize = 4_000;
/// Records a partition may hold un-committed before it is paused.
const BOUND: usize = 50;

/// The value of every sample of `name` whose labels include each of `labels`.
fn values<'a>(samples: &'a HashMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> Vec<(&'a str, f64)> {
    samples
        .iter()
        .filter(|(series, _)| {
            series.split('{').next() == Some(name)
                && labels.iter().all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(series, v)| (series.as_str(), *v))
        .collect()
}

fn total(samples: &HashMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    values(samples, name, labels).iter().map(|(_, v)| v).sum()
}

async fn subscribe(endpoint: &str, name: &str, track: &str) -> Subscription {
    let hello = Hello {
        route: ROUTE.into(),
        pod_name: name.into(),
        max_in_flight: 1_000,
        labels: [("track".to_string(), track.to_string())].into(),
        ..Hello::default()
    };
    Subscription::connect(endpoint, hello).await.expect("subscribes")
}

async fn wait_ready(admin: std::net::SocketAddr, limit: Duration) {
    let (code, body) = poll_until(limit, || http_get(admin, "/readyz"), |(c, _)| *c == 200).await;
    assert_eq!(code, 200, "not ready after {limit:?}: {body}");
    assert_eq!(body.trim(), "ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_pass_promtool_and_follow_the_traffic() {
    init_logs();
    let cluster = mock_cluster(PARTITIONS);
    let bootstrap = cluster.bootstrap_servers();
    let mut config = config(&bootstrap, &unique_group("metrics"));
    config.kafka.max_uncommitted_per_partition = BOUND;
    config.kafka.properties.insert("statistics.interval.ms".into(), "200".into());
    config.routes[0].split_label = Some("track".into());
    config.routes[0].weights = BTreeMap::from([("blue".to_string(), 75), ("green".to_string(), 25)]);
    let gw = start_gateway(config).await;
    let admin = gw.admin_addr();
    assert_eq!(http_get(admin, "/healthz").await, (200, "ok\n".to_string()), "alive from the start");
    wait_ready(admin, Duration::from_secs(30)).await;

    let mut blue = subscribe(&gw.endpoint(), "blue-0", "blue").await;
    let mut green = subscribe(&gw.endpoint(), "green-0", "green").await;
    produce(&bootstrap, MESSAGES, 1_000).await;

    // Nobody acks yet: each partition fills its buffer and is paused, and the deliveries sit
    // in flight at the subscribers.
    let mut held: Vec<String> = Vec::new();
    let mut held_green: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let paused_scrape = loop {
        tokio::select! {
            batch = blue.next() => held.extend(batch.expect("stream").expect("open").iter().map(stream::id_of)),
            batch = green.next() => held_green.extend(batch.expect("stream").expect("open").iter().map(stream::id_of)),
            _ = tokio::time::sleep(Duration::from_millis(300)) => {
                let (text, samples) = scrape(admin).await;
                if total(&samples, "fanout_partition_paused", &[("route", ROUTE)]) == f64::from(PARTITIONS) {
                    break (text, samples);
                }
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "every partition pauses under backpressure");
    };
    let (text, samples) = paused_scrape;
    assert_eq!(promtool_check(&text), "", "{text}");
    let in_flight = total(&samples, "fanout_subscriber_in_flight", &[("route", ROUTE)]);
    assert!(in_flight > 0.0 && in_flight <= (PARTITIONS as usize * BOUND) as f64, "in flight: {in_flight}");
    assert_eq!(
        total(&samples, "fanout_subscriber_in_flight", &[("subscriber", "blue-0")]) as usize,
        held.len(),
        "the blue subscriber's in-flight series is what it holds"
    );
    assert!(total(&samples, "fanout_partition_lag", &[("route", ROUTE)]) > 0.0, "a backlog shows as lag");
    assert_eq!(total(&samples, "fanout_route_weight", &[("cohort", "blue")]), 75.0);
    assert_eq!(total(&samples, "fanout_route_subscribers", &[("cohort", "green")]), 1.0);
    assert_eq!(total(&samples, "fanout_partition_pauses_total", &[]), f64::from(PARTITIONS));

    // Everything acked: partitions resume, the backlog drains, lag falls to 0.
    blue.ack(std::mem::take(&mut held)).await.expect("acks");
    green.ack(std::mem::take(&mut held_green)).await.expect("acks");
    let mut last = (String::new(), HashMap::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        tokio::select! {
            batch = blue.next() => {
                let ids: Vec<String> = batch.expect("stream").expect("open").iter().map(stream::id_of).collect();
                blue.ack(ids).await.expect("acks");
            }
            batch = green.next() => {
                let ids: Vec<String> = batch.expect("stream").expect("open").iter().map(stream::id_of).collect();
                green.ack(ids).await.expect("acks");
            }
            _ = tokio::time::sleep(Duration::from_millis(300)) => {
                last = scrape(admin).await;
                let s = &last.1;
                let lag = values(s, "fanout_partition_lag", &[("route", ROUTE)]);
                if lag.len() == PARTITIONS as usize && lag.iter().all(|(_, v)| *v == 0.0)
                    && total(s, "fanout_acked_total", &[("route", ROUTE)]) >= MESSAGES as f64
                {
                    break;
                }
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "lag falls to 0 on every partition: {}", last.0);
    }
    let (text, samples) = last;
    assert_eq!(promtool_check(&text), "", "{text}");
    assert_eq!(total(&samples, "fanout_partition_paused", &[("route", ROUTE)]), 0.0, "every partition resumed");
    assert!(total(&samples, "fanout_partition_resumes_total", &[]) >= f64::from(PARTITIONS));
    let delivered_blue = total(&samples, "fanout_delivered_total", &[("route", ROUTE), ("cohort", "blue")]);
    let delivered_green = total(&samples, "fanout_delivered_total", &[("route", ROUTE), ("cohort", "green")]);
    assert_eq!(delivered_blue + delivered_green, MESSAGES as f64, "each message delivered once");
    let share = delivered_blue / (delivered_blue + delivered_green);
    assert!((share - 0.75).abs() < 0.05, "blue's share {share:.3} follows its weight 75/100");
    assert_eq!(total(&samples, "fanout_acked_total", &[("cohort", "blue")]), delivered_blue);
    assert_eq!(total(&samples, "fanout_subscriber_in_flight", &[("route", ROUTE)]), 0.0);
    let latency_count = total(&samples, "fanout_delivery_latency_seconds_count", &[("route", ROUTE)]);
    assert_eq!(latency_count, MESSAGES as f64, "every ack observed once in the delivery latency");
    let acked_by = |cohort: &str| {
        total(&samples, "fanout_cohort_ack_latency_seconds_count", &[("route", ROUTE), ("cohort", cohort)])
    };
    assert_eq!(
        (acked_by("blue"), acked_by("green")),
        (delivered_blue, MESSAGES as f64 - delivered_blue),
        "every ack observed once in its cohort's ack latency"
    );
    assert!(total(&samples, "fanout_commit_latency_seconds_count", &[("route", ROUTE)]) > 0.0);
    assert!(total(&samples, "fanout_commits_total", &[]) > 0.0);
    assert_eq!(total(&samples, "fanout_ready", &[]), 1.0);
    assert_eq!(values(&samples, "fanout_build_info", &[]).len(), 1);
    // The dashboard and the alerts ask only for series the gateway exports.
    let exported = exported_names(&text);
    for (file, wanted) in [
        ("k8s/monitoring/grafana-dashboard.json", dashboard_series()),
        ("k8s/monitoring/alerts.yaml", series_named_in(&read("k8s/monitoring/alerts.yaml"))),
    ] {
        assert!(!wanted.is_empty(), "{file} queries something");
        let unknown: Vec<&String> = wanted.iter().filter(|n| !exported.contains(*n)).collect();
        assert!(unknown.is_empty(), "{file} queries series the gateway does not export: {unknown:?}");
    }
    // Prometheus asks for OpenMetrics and gets it; the samples are the same.
    let prometheus_accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let (code, open) = http_get_accepting(admin, "/metrics", prometheus_accept).await;
    assert_eq!(code, 200);
    assert!(open.ends_with("# EOF\n") && open.contains("# TYPE fanout_delivered counter\n"), "{open}");
    gw.shutdown().await;
}

fn read(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).expect(path)
}

/// Every series name an exposition declares (a histogram's as its `_bucket`, `_sum` and
/// `_count`).
fn exported_names(classic: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in classic.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let Some((name, kind)) = rest.split_once(' ') else { continue };
        if kind == "histogram" {
            names.extend(["_bucket", "_sum", "_count"].map(|s| format!("{name}{s}")));
        } else {
            names.insert(name.to_string());
        }
    }
    names
}

/// The `fanout_` series named in some text (PromQL, YAML).
fn series_named_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("fanout_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// The series the Grafana dashboard's panel queries name: the file is valid JSON, and every
/// panel target's `expr` is read.
fn dashboard_series() -> BTreeSet<String> {
    fn exprs(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                        _ => exprs(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
            _ => {}
        }
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("k8s/monitoring/grafana-dashboard.json")).expect("the dashboard is valid JSON");
    assert!(dashboard["panels"].as_array().is_some_and(|p| !p.is_empty()), "the dashboard has panels");
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    all.iter().flat_map(|e| series_named_in(e)).collect()
}

async fn health_of(health: &mut HealthClient<tonic::transport::Channel>, service: &str) -> i32 {
    let ask = HealthCheckRequest { service: service.into() };
    health.check(ask).await.expect("health answers").into_inner().status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ready_only_while_kafka_answers() {
    init_logs();
    let cluster = mock_cluster(2);
    let bootstrap = cluster.bootstrap_servers();
    cluster.broker_down(-1).expect("brokers down");
    let gw = start_gateway(config(&bootstrap, &unique_group("ready"))).await;
    let admin = gw.admin_addr();
    let channel =
        tonic::transport::Channel::from_shared(gw.endpoint()).expect("uri").connect().await.expect("connects");
    let mut health = HealthClient::new(channel);

    // Unreachable Kafka: alive, not ready, and grpc.health agrees, for as long as it lasts.
    for _ in 0..5 {
        assert_eq!(http_get(admin, "/healthz").await.0, 200);
        let (code, body) = http_get(admin, "/readyz").await;
        assert_eq!(code, 503, "not ready while Kafka is unreachable");
        assert!(body.contains("kafka is not reachable"), "says why: {body}");
        assert_eq!(health_of(&mut health, "fanout.v1.Fanout").await, ServingStatus::NotServing as i32);
        assert_eq!(health_of(&mut health, "").await, ServingStatus::NotServing as i32);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Kafka answers: ready once the group has settled, and grpc.health follows.
    cluster.broker_up(-1).expect("brokers up");
    wait_ready(admin, Duration::from_secs(60)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while health_of(&mut health, "fanout.v1.Fanout").await != ServingStatus::Serving as i32 {
        assert!(tokio::time::Instant::now() < deadline, "grpc.health follows readiness");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(health_of(&mut health, "").await, ServingStatus::Serving as i32);

    // Kafka goes away again: not ready again.
    cluster.broker_down(-1).expect("brokers down");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = http_get(admin, "/readyz").await;
        if code == 503 {
            assert!(body.contains("kafka"), "{body}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not ready once Kafka stops answering");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(http_get(admin, "/healthz").await.0, 200, "still alive: a restart would not bring Kafka back");
    cluster.broker_up(-1).expect("brokers up");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_route_consumer_fenced_by_its_instance_id_fails_liveness_and_says_why() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    init_logs();
    let cluster = mock_cluster(2);
    let group = unique_group("fenced");
    let mut config = config(&cluster.bootstrap_servers(), &group);
    config.kafka.group_instance_id = Some("replica-0".into());
    let route_group = config.routes[0].group(&config.kafka);
    let gw = start_gateway(config).await;
    let admin = gw.admin_addr();
    wait_ready(admin, Duration::from_secs(60)).await;
    assert_eq!(http_get(admin, "/healthz").await.0, 200, "alive before");

    // What the coordinator answers the member once another consumer has joined with the same
    // group.instance.id.
    cluster.request_errors(RDKafkaApiKey::Heartbeat, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID; 3]);
    let (code, body) = poll_until(Duration::from_secs(30), || http_get(admin, "/healthz"), |(c, _)| *c != 200).await;
    assert_eq!(code, 503, "a fenced consumer can do nothing more: the replica must restart ({body})");
    assert!(body.contains(&route_group), "names the route's group: {body}");
    assert!(
        body.contains("group.instance.id") && body.contains("kafka.group_instance_id"),
        "says what to check: {body}"
    );
    let (ready, why) = http_get(admin, "/readyz").await;
    assert_eq!((ready, why.trim()), (503, body.trim()), "and it gets no traffic meanwhile");
    gw.shutdown().await;
}
