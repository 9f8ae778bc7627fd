//! `fanoutctl` as an operator runs it, the binary against real admin ports: its tables and
//! `-o json|yaml` across two replicas, weights and drains with and without the token, and a
//! bad address or a bad argument each answered with one line naming what to fix.

mod support;

use std::path::Path;
use std::time::Duration;

use fanout_client::stream::{self, Subscription};
use fanout_gateway::config::Config;
use fanout_gateway::gateway::GatewayHandle;
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
        let one = start_gateway(split_config(&bootstrap, &group, &token_file)).await;
        let two = start_gateway(split_config(&bootstrap, &group, &token_file)).await;
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

/// Runs fanoutctl until `done` holds for what it printed (exit code, stdout, stderr), as an
/// operator re-runs a read while things settle; the last run's output.
async fn until(args: &[&str], what: &str, done: impl Fn(i32, &str, &str) -> bool) -> (i32, String, String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (code, out, err) = fanoutctl(args).await;
        if done(code, &out, &err) {
            return (code, out, err);
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}:\n{out}\n{err}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_down_is_marked_and_the_others_are_still_shown() {
    init_logs();
    let cluster = mock_cluster(2);
    let bootstrap = cluster.bootstrap_servers();
    let run = async {
        let live = start_gateway(config(&bootstrap, &unique_group("ctl-down"))).await;
        let live_addr = live.admin_addr().to_string();
        let dead_addr = format!("127.0.0.1:{}", free_port());
        let gateways = format!("{live_addr},{dead_addr}");

        let (code, status, err) = fanoutctl(&["--gateway", &gateways, "status"]).await;
        println!("{status}{err}");
        assert_eq!(code, 1, "a replica that did not answer fails the command: {err}");
        let cells = |table: &str, address: &str| -> Vec<Vec<String>> {
            table
                .lines()
                .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
                .filter(|c| c.get(1).map(String::as_str) == Some(address))
                .collect()
        };
        let live_rows = cells(&status, &live_addr);
        assert_eq!(live_rows.len(), 1, "the live replica's row: {status}");
        assert!(live_rows[0][2].starts_with(|c: char| c.is_ascii_digit()), "with its version: {status}");
        let dead_rows = cells(&status, &dead_addr);
        assert_eq!(dead_rows.len(), 1, "a row for the dead one: {status}");
        assert_eq!(dead_rows[0][0], "-");
        assert_eq!(dead_rows[0][2..].join(" "), "UNREACHABLE: connection refused", "{status}");
        assert_eq!(rows(&status, ROUTE).len(), 1, "the live replica's routes: {status}");
        let after_routes = status.split("ROUTE ").nth(1).expect("a routes table");
        assert!(
            after_routes.lines().any(|l| l.starts_with("no answer from") && l.contains(&dead_addr)),
            "a line under the routes table names it: {status}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("1 of 2 replica(s) did not answer") && err.contains(&dead_addr), "{err}");

        let (code, json, _) = fanoutctl(&["--gateway", &gateways, "-o", "json", "routes"]).await;
        assert_eq!(code, 1);
        let parsed: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(parsed[0]["address"], live_addr.as_str());
        assert_eq!(parsed[0]["routes"][0]["name"], ROUTE);
        assert_eq!(parsed[1]["address"], dead_addr.as_str());
        assert_eq!(parsed[1]["error"], "UNREACHABLE: connection refused");

        let (code, partitions, _) = fanoutctl(&["--gateway", &gateways, "partitions"]).await;
        assert_eq!(code, 1);
        assert!(partitions.lines().any(|l| l.starts_with(&dead_addr) && l.contains("UNREACHABLE")), "{partitions}");

        // A change must reach every replica: it names the one down and changes nothing.
        let (code, out, err) = fanoutctl(&["--gateway", &gateways, "drain", ROUTE, "nobody"]).await;
        assert_eq!((code, out.as_str()), (1, ""), "{err}");
        assert!(err.contains(&dead_addr) && err.contains("drain not made"), "{err}");
        assert!(!err.contains("no subscriber"), "nothing was asked of the live replica: {err}");

        live.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(60), run).await.expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_get_shows_each_cohorts_weight_subscribers_and_held_messages() {
    init_logs();
    let cluster = mock_cluster(2);
    let bootstrap = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).expect("token");
    let run = async {
        let gw = start_gateway(split_config(&bootstrap, &unique_group("ctl-get"), &token_file)).await;
        let admin = gw.admin_addr().to_string();
        // Blue subscribes, green does not: the route holds green's share for it.
        let mut blue = subscribe(&gw, "blue-0", "blue").await;
        produce(&bootstrap, 200, 50).await;
        let acking = async {
            loop {
                let ids: Vec<String> = next_batch(&mut blue).await.iter().map(stream::id_of).collect();
                blue.ack(ids).await.expect("ack");
            }
        };
        let get = async {
            let holds = |code: i32, out: &str, _: &str| {
                code == 0 && rows(out, "green").first().is_some_and(|r| r.len() == 7 && r[6] != "0")
            };
            let (_, table, _) =
                until(&["--gateway", &admin, "weights", "get", ROUTE], "green's held messages", holds).await;
            println!("{table}");
            assert_eq!(
                table.lines().next().map(|l| l.split_whitespace().collect::<Vec<_>>()),
                Some(vec!["COHORT", "WEIGHT", "SHARE", "REPLICA", "ADDRESS", "SUBSCRIBERS", "HELD"])
            );
            let blue_row = &rows(&table, "blue")[0];
            assert_eq!(
                (blue_row[1], blue_row[2], blue_row[4], blue_row[5]),
                ("50", "50%", admin.as_str(), "1"),
                "{table}"
            );
            assert_eq!(blue_row[6], "0", "{table}");
            let green_row = &rows(&table, "green")[0];
            assert_eq!((green_row[1], green_row[2], green_row[5]), ("50", "50%", "0"), "{table}");
            let held: u64 = green_row[6].parse().expect("a count");

            let (code, routes, err) = fanoutctl(&["--gateway", &admin, "routes"]).await;
            assert_eq!(code, 0, "{err}");
            assert!(routes.contains(" held="), "the routes table names the cohort that holds: {routes}");
            assert!(held > 0);

            let (code, json, err) = fanoutctl(&["--gateway", &admin, "-o", "json", "weights", "get", ROUTE]).await;
            assert_eq!(code, 0, "{err}");
            let parsed: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
            assert_eq!(parsed[0]["address"], admin.as_str());
            assert_eq!(parsed[0]["cohorts"][0]["name"], "blue");
            assert_eq!(parsed[0]["cohorts"][0]["weight"], 50);
            assert_eq!(parsed[0]["cohorts"][1]["subscribers"], 0);

            let (code, _, err) = fanoutctl(&["--gateway", &admin, "weights", "get", "no-such-route"]).await;
            assert_eq!(code, 1);
            assert!(err.contains("no-such-route"), "{err}");
        };
        tokio::select! {
            () = get => {}
            () = acking => unreachable!("acks until the checks end"),
        }
        drop(blue);
        gw.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(90), run).await.expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_set_with_a_typo_is_refused_everywhere_unless_forced() {
    init_logs();
    let cluster = mock_cluster(2);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("ctl-guard");
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).expect("token");
    let token_arg = token_file.display().to_string();
    let run = async {
        let one = start_gateway(split_config(&bootstrap, &group, &token_file)).await;
        let two = start_gateway(split_config(&bootstrap, &group, &token_file)).await;
        let gateways = format!("{},{}", one.admin_addr(), two.admin_addr());
        let mut subs = Vec::new();
        for gw in [&one, &two] {
            subs.push(subscribe(gw, "blue-0", "blue").await);
            subs.push(subscribe(gw, "green-0", "green").await);
        }
        let set = |extra: &'static [&'static str]| {
            let mut args = vec!["--gateway", &gateways, "--token-file", &token_arg, "weights", "set", ROUTE];
            args.extend(["blue=50", "gren=50"]);
            args.extend(extra);
            args.into_iter().map(String::from).collect::<Vec<_>>()
        };
        let run_set = |args: Vec<String>| async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            fanoutctl(&args).await
        };

        let (code, out, err) = run_set(set(&[])).await;
        println!("{out}{err}");
        assert_eq!((code, out.as_str()), (1, ""), "{err}");
        assert!(err.contains("FAILED_PRECONDITION") && err.contains("gren"), "the refusal: {err}");
        assert!(err.contains("(add --force to change the weights anyway)"), "{err}");
        for address in [one.admin_addr(), two.admin_addr()] {
            assert!(err.contains(&address.to_string()), "names each replica that refused: {err}");
        }
        let (code, status, err) = fanoutctl(&["--gateway", &gateways, "status"]).await;
        assert_eq!(code, 0, "{err}");
        let route_row = &rows(&status, ROUTE)[0];
        assert!(route_row[3].starts_with("blue=50%/") && route_row[4].starts_with("green=50%/"), "unchanged: {status}");

        let (code, out, err) = run_set(set(&["--force"])).await;
        assert_eq!(code, 0, "{err}");
        assert_eq!(out.lines().filter(|l| l.contains("weights set to blue=50 gren=50")).count(), 2, "{out}");
        let (_, routes, _) = fanoutctl(&["--gateway", &gateways, "routes"]).await;
        // Green has subscribers still; it shows with no weight.
        assert!(routes.contains("blue=50%/") && routes.contains("gren=50%/"), "applied: {routes}");
        assert!(routes.contains("green=0%/"), "{routes}");

        drop(subs);
        one.shutdown().await;
        two.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(90), run).await.expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_set_get_and_clear_on_every_replica_and_a_bad_limit_refused_everywhere() {
    init_logs();
    let cluster = mock_cluster(2);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("ctl-rate");
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).expect("token");
    let token = token_file.display().to_string();
    let run = async {
        let one = start_gateway(split_config(&bootstrap, &group, &token_file)).await;
        let two = start_gateway(split_config(&bootstrap, &group, &token_file)).await;
        let gateways = format!("{},{}", one.admin_addr(), two.admin_addr());
        let ctl = |args: &[&str]| {
            let mut all = vec!["--gateway", gateways.as_str(), "--token-file", token.as_str(), "rate-limit"];
            all.extend_from_slice(args);
            all.into_iter().map(String::from).collect::<Vec<_>>()
        };
        let call = |args: Vec<String>| async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            fanoutctl(&args).await
        };

        // A burst without a message rate: refused by both, named, nothing changed.
        let (code, out, err) = call(ctl(&["set", ROUTE, "--burst", "10"])).await;
        assert_eq!((code, out.as_str()), (1, ""), "{err}");
        assert!(err.contains("INVALID_ARGUMENT") && err.contains("routes[0].rate_limit.burst"), "{err}");
        assert!(err.contains("no replica's rate limit changed"), "{err}");

        let (code, out, err) = call(ctl(&["set", ROUTE, "--messages-per-s", "500", "--burst", "20"])).await;
        assert_eq!(code, 0, "{err}");
        assert_eq!(out.lines().filter(|l| l.contains("rate limit set to 500 msg/s, burst 20")).count(), 2, "{out}");
        let (code, table, err) = call(ctl(&["get", ROUTE])).await;
        assert_eq!(code, 0, "{err}");
        let limited: Vec<&str> = table.lines().filter(|l| l.contains("500 msg/s, burst 20")).collect();
        assert_eq!(limited.len(), 2, "both replicas run the limit: {table}");
        let (code, json, err) = call(ctl(&["-o", "json", "get", ROUTE])).await;
        assert_eq!(code, 0, "{err}");
        let parsed: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        assert_eq!(parsed[0]["rate_limit"]["messages_per_s"], 500, "{json}");

        let (code, out, err) = call(ctl(&["clear", ROUTE])).await;
        assert_eq!(code, 0, "{err}");
        assert_eq!(out.lines().filter(|l| l.contains("rate limit removed")).count(), 2, "{out}");
        let (_, table, _) = call(ctl(&["get", ROUTE])).await;
        assert_eq!(table.lines().filter(|l| l.contains(" none ")).count(), 2, "{table}");

        // Without the token: refused, as every change is.
        let (code, _, err) =
            fanoutctl(&["--gateway", &gateways, "rate-limit", "set", ROUTE, "--messages-per-s", "1"]).await;
        assert_eq!(code, 1);
        assert!(err.contains("UNAUTHENTICATED"), "{err}");
        one.shutdown().await;
        two.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(90), run).await.expect("in time");
}

#[tokio::test]
async fn help_groups_the_connection_options_and_shows_examples() {
    for args in [
        &["--help"][..],
        &["weights", "set", "--help"],
        &["rate-limit", "--help"],
        &["drain", "--help"],
        &["replay", "--help"],
        &["dlq", "--help"],
    ] {
        let (code, help, err) = fanoutctl(args).await;
        assert_eq!(code, 0, "{err}");
        assert!(help.contains("\nExamples:\n  fanoutctl "), "{args:?}: {help}");
        let connection = help.split("\nConnection:\n").nth(1).unwrap_or_else(|| panic!("{args:?}: {help}"));
        assert!(
            connection.contains("--gateway") && connection.contains("--token-file") && connection.contains("--tls-ca")
        );
        let own = help.split("\nConnection:\n").next().unwrap_or_default();
        assert!(!own.contains("--gateway "), "global options are apart from the command's own: {help}");
    }
    let (_, help, _) = fanoutctl(&["weights", "set", "--help"]).await;
    assert!(help.contains("--force") && help.contains("Dangerous"), "{help}");
}
