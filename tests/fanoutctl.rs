//! `fanoutctl` as an operator runs it, the binary against real admin ports: its tables and
//! `-o json|yaml` across two replicas, weights and drains with and without the token, and a
//! bad address or a bad argument each answered with one line naming what to fix.

mod support;

use std::path::Path;
use std::time::Duration;

use fanout_client::stream::{self, Subscription};
use fanout_gateway::config::Config;
use fanout_gateway::gateway::{self, GatewayHandle};
use fanout_gateway::proto::Hello;
use support::*;

const TOKEN: &str = "ctl-token";

fn split_config(bootstrap: &str, group: &str, token_file: &Path) -> Config {
    let mut c = config(bootstrap, group);
    let route = &mut c.routes[0];
    route.split_label = Some("track".into());
    route.weights = [("blue".to_string(), 50), ("green".to_string(), 50)].into_iter().collect();
    c.server.admin_token_file = Some(token_file.display().to_string());
    c.kafka.properties.insert("statistics.interval.ms".into(), "200".into());
    c
}

async fn subscribe(gw: &GatewayHandle, name: &str, track: &str) -> Subscription {
    let hello = Hello {
        route: ROUTE.into(),
        pod_name: name.into(),
        max_in_flight: 500,
        labels: [("track".to_string(), track.to_string())].into_iter().collect(),
        ..Hello::default()
    };
    Subscription::connect(&gw.endpoint(), hello).await.expect("subscribes")
}

/// The data rows of a table whose first column is `first`.
fn rows<'a>(table: &'a str, first: &str) -> Vec<Vec<&'a str>> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|cells| cells.first() == Some(&first))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_json_yaml_weights_and_drain_across_two_replicas() {
    init_logs();
    let cluster = mock_cluster(2);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("ctl");
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).expect("token");
    let token_arg = token_file.display().to_string();
    let run = async {
        // Two replicas of one gateway: the same groups, partitions shared between them.
        let one = gateway::start(split_config(&bootstrap, &group, &token_file)).await.expect("starts");
        let two = gateway::start(split_config(&bootstrap, &group, &token_file)).await.expect("starts");
        let gateways = format!("{},{}", one.admin_addr(), two.admin_addr());
        let mut subs = Vec::new();
        for gw in [&one, &two] {
            subs.push(subscribe(gw, "blue-0", "blue").await);
            subs.push(subscribe(gw, "green-0", "green").await);
        }
        produce(&bootstrap, 400, 200).await;
        let mut got = 0;
        while got < 400 {
            let (batch, i, _) = futures::future::select_all(subs.iter_mut().map(|s| Box::pin(s.next()))).await;
            let ids: Vec<String> = batch.expect("stream").expect("open").iter().map(stream::id_of).collect();
            got += ids.len();
            subs[i].ack(ids).await.expect("ack");
        }
        // support::config names the route's group after the gateway's.
        let route_group = group.clone();
        eventually(Duration::from_secs(20), "all committed", || fully_committed(&bootstrap, &route_group, 2)).await;

        let (code, status, err) = fanoutctl(&["--gateway", &gateways, "status"]).await;
        assert_eq!(code, 0, "{err}");
        println!("{status}");
        assert!(status.starts_with("REPLICA "), "{status}");
        let generation = &rows(&status, "REPLICA").len();
        assert_eq!(*generation, 1, "one header");
        let addresses: Vec<String> = [&one, &two].iter().map(|g| g.admin_addr().to_string()).collect();
        let replica_rows: Vec<Vec<&str>> =
            status.lines().map(|l| l.split_whitespace().collect()).filter(|c: &Vec<&str>| c.len() > 3).collect();
        let generations: Vec<&str> =
            replica_rows.iter().filter(|c| addresses.iter().any(|a| a == c[1])).map(|c| c[3]).collect();
        assert_eq!(generations.len(), 2, "a row per replica: {status}");
        assert_eq!(generations[0], generations[1], "both run the same settings: {status}");
        let route_row = &rows(&status, ROUTE)[0];
        assert_eq!(route_row[1], route_group);
        assert!(route_row[3].starts_with("blue=50%/"), "{status}");
        assert_eq!(route_row[5], "4", "two subscribers on each replica: {status}");

        // A DNS name (here one that resolves to this machine) reaches every address it has.
        let by_name = format!("localhost:{}", one.admin_addr().port());
        let (code, named, err) = fanoutctl(&["--gateways-dns", &by_name, "status"]).await;
        assert_eq!(code, 0, "{err}");
        assert!(named.contains(&format!("127.0.0.1:{}", one.admin_addr().port())), "{named}");

        let (code, subscribers, err) = fanoutctl(&["--gateway", &gateways, "subscribers", ROUTE]).await;
        assert_eq!(code, 0, "{err}");
        let names: Vec<&str> = subscribers.lines().skip(1).filter_map(|l| l.split_whitespace().nth(2)).collect();
        assert_eq!(names, vec!["blue-0", "green-0", "blue-0", "green-0"], "{subscribers}");

        let (code, partitions, err) = fanoutctl(&["--gateway", &gateways, "partitions"]).await;
        assert_eq!(code, 0, "{err}");
        let partition_rows: Vec<Vec<&str>> =
            partitions.lines().skip(1).map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(partition_rows.len(), 2, "each partition on one replica: {partitions}");
        let watermarks = high_watermarks(&bootstrap, 2);
        for row in &partition_rows {
            let p: i32 = row[3].parse().expect("partition");
            assert_eq!(row[4], watermarks[&p].to_string(), "committed: {partitions}");
        }

        let (code, json, err) = fanoutctl(&["--gateway", &gateways, "-o", "json", "status"]).await;
        assert_eq!(code, 0, "{err}");
        let parsed: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        let replicas = parsed.as_array().expect("a list of replicas");
        assert_eq!(replicas.len(), 2);
        assert_eq!(replicas[0]["address"], addresses[0].as_str());
        assert_eq!(replicas[0]["routes"][0]["name"], ROUTE);
        assert_eq!(replicas[0]["routes"][0]["cohorts"][1]["weight"], 50);
        let (code, yaml, err) = fanoutctl(&["--gateway", &gateways, "-o", "yaml", "routes"]).await;
        assert_eq!(code, 0, "{err}");
        assert!(yaml.contains("name: orders") && yaml.contains("config_generation:"), "{yaml}");

        // Changing calls: refused without the token, applied on every replica with it.
        let (code, _, err) = fanoutctl(&["--gateway", &gateways, "weights", "set", ROUTE, "blue=0", "green=100"]).await;
        assert_eq!(code, 1);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("UNAUTHENTICATED") && err.contains("--token-file"), "{err}");
        let (code, out, err) = fanoutctl(&[
            "--gateway",
            &gateways,
            "--token-file",
            &token_arg,
            "weights",
            "set",
            ROUTE,
            "blue=0",
            "green=100",
        ])
        .await;
        assert_eq!(code, 0, "{err}");
        assert_eq!(out.lines().filter(|l| l.contains("weights set to blue=0 green=100")).count(), 2, "{out}");
        let (_, routes, _) = fanoutctl(&["--gateway", &gateways, "routes"]).await;
        assert!(rows(&routes, ROUTE)[0][3].starts_with("blue=0%/"), "{routes}");
        let (code, _, err) =
            fanoutctl(&["--gateway", &gateways, "--token-file", &token_arg, "weights", "set", ROUTE, "blue=0"]).await;
        assert_eq!(code, 1, "all weights zero is refused");
        assert!(err.contains("INVALID_ARGUMENT") && err.contains("routes[0].weights"), "{err}");

        let (code, out, err) =
            fanoutctl(&["--gateway", &gateways, "--token-file", &token_arg, "drain", ROUTE, "green-0"]).await;
        assert_eq!(code, 0, "{err}");
        assert_eq!(out.lines().filter(|l| l.contains("draining session(s)")).count(), 2, "{out}");
        let (code, _, err) =
            fanoutctl(&["--gateway", &gateways, "--token-file", &token_arg, "drain", ROUTE, "nobody"]).await;
        assert_eq!(code, 1);
        assert!(err.contains("no subscriber `nobody`") && err.contains("fanoutctl subscribers"), "{err}");

        drop(subs);
        one.shutdown().await;
        two.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(120), run).await.expect("in time");
}

#[tokio::test]
async fn a_bad_address_or_argument_is_one_line_naming_what_to_fix() {
    let (code, out, err) = fanoutctl(&["--gateway", "127.0.0.1:1", "status"]).await;
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot reach the admin API at 127.0.0.1:1") && err.contains("--gateway"), "{err}");

    let (code, _, err) = fanoutctl(&["--gateway", "a b:9090", "status"]).await;
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--gateway `a b:9090`"), "{err}");

    let (code, _, err) = fanoutctl(&["weights", "set", "orders", "blue=x"]).await;
    assert_eq!(code, 2);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("blue=x") && err.contains("whole number"), "{err}");

    let (code, _, err) = fanoutctl(&["-o", "xml", "status"]).await;
    assert_eq!(code, 2);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("xml"), "{err}");

    let (code, _, err) = fanoutctl(&["--gateways-dns", "no-such-host.invalid", "status"]).await;
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot resolve --gateways-dns no-such-host.invalid:9090"), "{err}");
}
