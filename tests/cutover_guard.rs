//! A weight change cannot strand a route by mistake: a typo'd cohort and a share for a cohort
//! without subscribers are refused naming the problem (and made when forced); while a route
//! holds messages for an empty cohort, the log warns, Status shows the cohort's held count and
//! `/metrics` exports the series the alert rule asks for, and readiness stays about Kafka.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fanout_client::stream::Subscription;
use fanout_gateway::proto::admin::admin_client::AdminClient;
use fanout_gateway::proto::admin::{SetWeightsRequest, StatusRequest};
use fanout_gateway::proto::Hello;
use parking_lot::Mutex;
use support::*;
use tonic::transport::Channel;
use tonic::Code;

const TOKEN: &str = "cutover-token";

/// Everything the gateway logs in this test binary, as text.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture() -> Self {
        let logs = Logs::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter("fanout_gateway=warn")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        logs
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }
}

fn config_text(bootstrap: &str, group: &str, token_file: &Path) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token_file = "{}"

[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{group}"
commit_interval_ms = 100

[[routes]]
name = "{ROUTE}"
topics = ["{TOPIC}"]
split_label = "track"
weights = {{ blue = 100, green = 0 }}
"#,
        token_file.display()
    )
}

fn set(weights: &[(&str, u32)], force: bool) -> tonic::Request<SetWeightsRequest> {
    let weights: BTreeMap<String, u32> = weights.iter().map(|(c, w)| (c.to_string(), *w)).collect();
    let mut request = tonic::Request::new(SetWeightsRequest { route: ROUTE.into(), weights, force, dry_run: false });
    request.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().expect("header"));
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cutover_that_would_strand_messages_is_refused_unless_forced_and_a_hold_is_seen_everywhere() {
    let logs = Logs::capture();
    let cluster = mock_cluster(4);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("cutover-guard");
    let run = async {
        let dir = tempfile::tempdir().expect("tempdir");
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, TOKEN).expect("token");
        let path = dir.path().join("fanout.toml");
        std::fs::write(&path, config_text(&bootstrap, &group, &token_file)).expect("config");
        let gw = start_gateway_from_file(&path).await;
        let channel = Channel::from_shared(gw.admin_endpoint()).expect("endpoint").connect().await.expect("connects");
        let mut admin = AdminClient::new(channel);
        let hello = Hello {
            route: ROUTE.into(),
            pod_name: "orders-blue-0".into(),
            max_in_flight: 1_000,
            labels: [("track".to_string(), "blue".to_string())].into(),
            ..Hello::default()
        };
        let blue = Subscription::connect(&gw.endpoint(), hello).await.expect("subscribes");
        let before = std::fs::read_to_string(&path).expect("reads");

        // A typo'd cohort would replace every weight: refused, naming it and the known ones.
        let typo = admin.set_weights(set(&[("purple", 10)], false)).await.expect_err("typo refused");
        assert_eq!(typo.code(), Code::FailedPrecondition, "{typo:?}");
        assert!(typo.message().contains("cohort `purple`") && typo.message().contains("blue, green"), "{typo:?}");
        // The cutover to a cohort nobody serves yet: refused, naming the cohort and the replica.
        let empty = admin.set_weights(set(&[("blue", 0), ("green", 100)], false)).await.expect_err("no green");
        assert_eq!(empty.code(), Code::FailedPrecondition, "{empty:?}");
        assert!(empty.message().contains("cohort `green` would get 100%"), "{empty:?}");
        assert!(empty.message().contains("no subscriber on replica"), "{empty:?}");
        assert_eq!(std::fs::read_to_string(&path).expect("reads"), before, "refused changes change nothing");

        // Forced, it is made, and green's share is held.
        admin.set_weights(set(&[("blue", 0), ("green", 100)], true)).await.expect("forced");
        produce(&bootstrap, 300, 60).await;
        let mut green_held = 0;
        for _ in 0..100 {
            let status = admin.status(StatusRequest::default()).await.expect("status").into_inner();
            let route = status.routes.into_iter().next().expect("the route");
            green_held = route.cohorts.iter().find(|c| c.name == "green").map_or(0, |c| c.held);
            if green_held == 300 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(green_held, 300, "Status shows green's held messages");

        // The series the alert rule asks for sees it; readiness is about Kafka, not routing.
        let rules = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/k8s/monitoring/alerts.yaml"))
            .expect("alerts");
        assert!(rules.contains("expr: max by (route, cohort) (fanout_cohort_held_messages) > 0"), "{rules}");
        let (_, samples) = scrape(gw.admin_addr()).await;
        let held_series = format!("fanout_cohort_held_messages{{route=\"{ROUTE}\",cohort=\"green\"}}");
        assert_eq!(samples.get(&held_series), Some(&300.0), "{samples:?}");
        let mut ready = false;
        for _ in 0..100 {
            if http_get(gw.admin_addr(), "/readyz").await.0 == 200 {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ready, "a hold is not a readiness failure: /readyz says 200 while green's share waits");

        // The log names the route and the cohort (the dispatcher warns on its commit tick).
        let warned = |text: String| {
            text.lines().any(|l| l.contains("WARN") && l.contains("route holds messages") && l.contains("green"))
        };
        for _ in 0..100 {
            if warned(logs.text()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(warned(logs.text()), "no hold warning in the log:\n{}", logs.text());

        // A green subscriber takes what was held.
        let hello = Hello {
            route: ROUTE.into(),
            pod_name: "orders-green-0".into(),
            max_in_flight: 1_000,
            labels: [("track".to_string(), "green".to_string())].into(),
            ..Hello::default()
        };
        let mut green = Subscription::connect(&gw.endpoint(), hello).await.expect("subscribes");
        assert_eq!(receive_and_ack(&mut green, 300).await.len(), 300);
        drop(blue);
        gw.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(90), run).await.expect("in time");
}
