//! Routes follow the config file while the gateway runs: new weights apply within the poll
//! interval, and a file that does not load is refused with the running routes kept.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use fanout_client::stream::{self, Subscription};
use fanout_gateway::proto::Hello;
use support::*;

fn config_text(bootstrap: &str, group: &str, blue: u32, green: u32) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{group}"
commit_interval_ms = 100

[[routes]]
name = "{ROUTE}"
topics = ["{TOPIC}"]
split_label = "track"
weights = {{ blue = {blue}, green = {green} }}
"#
    )
}

async fn subscribe(endpoint: &str, track: &str) -> Subscription {
    let hello = Hello {
        route: ROUTE.into(),
        pod_name: track.into(),
        max_in_flight: 500,
        labels: [("track".to_string(), track.to_string())].into_iter().collect(),
        ..Hello::default()
    };
    Subscription::connect(endpoint, hello).await.expect("subscribes")
}

/// Receives and acks until `count` deliveries arrived across both subscribers; returns how many
/// each got.
async fn take(
    blue: &mut Subscription,
    green: &mut Subscription,
    count: usize,
    seen: &mut HashSet<String>,
) -> (usize, usize) {
    let (mut b, mut g) = (0, 0);
    while b + g < count {
        let batch = tokio::select! {
            batch = blue.next() => (true, batch),
            batch = green.next() => (false, batch),
        };
        let (is_blue, batch) = batch;
        let batch = batch.expect("stream").expect("open");
        let ids: Vec<String> = batch.into_iter().map(|d| stream::id_of(&d)).collect();
        seen.extend(ids.iter().cloned());
        if is_blue {
            b += ids.len();
            blue.ack(ids).await.expect("ack");
        } else {
            g += ids.len();
            green.ack(ids).await.expect("ack");
        }
    }
    (b, g)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_follow_the_file_and_a_bad_file_is_refused() {
    init_logs();
    let cluster = mock_cluster(2);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("reload");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fanout.toml");
    std::fs::write(&path, config_text(&bootstrap, &group, 100, 0)).expect("write");

    let run = async {
        let gw = start_gateway_from_file(&path).await;
        let reload = tokio::spawn(gw.control().follow(Duration::from_millis(100)));
        let mut blue = subscribe(&gw.endpoint(), "blue").await;
        let mut green = subscribe(&gw.endpoint(), "green").await;
        let mut seen = HashSet::new();

        produce(&bootstrap, 200, 50).await;
        assert_eq!(take(&mut blue, &mut green, 200, &mut seen).await, (200, 0), "all to blue");

        std::fs::write(&path, config_text(&bootstrap, &group, 0, 100)).expect("write");
        tokio::time::sleep(Duration::from_millis(500)).await;
        produce(&bootstrap, 200, 50).await;
        assert_eq!(take(&mut blue, &mut green, 200, &mut seen).await, (0, 200), "all to green after the reload");

        // A broken file: refused, green keeps everything.
        std::fs::write(&path, config_text(&bootstrap, &group, 0, 100).replace("split_label", "split_lable"))
            .expect("write");
        tokio::time::sleep(Duration::from_millis(500)).await;
        produce(&bootstrap, 200, 50).await;
        assert_eq!(take(&mut blue, &mut green, 200, &mut seen).await, (0, 200), "the broken file changed nothing");
        assert_eq!(seen.len(), 600);

        reload.abort();
        gw.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(90), run).await.expect("in time");
}
