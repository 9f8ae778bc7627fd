//! Replay as an operator runs it (`fanoutctl replay`): 10 000 messages already delivered, acked
//! and committed are delivered again to the route's subscriber, marked with the replay's id,
//! while live traffic goes on; the route's committed offsets never move backwards; and a
//! replay can be cancelled.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fanout_client::stream::{self, Subscription};
use parking_lot::Mutex;
use support::*;

const TOKEN: &str = "replay-token";

/// What the subscriber saw: per record id, the replay ids it came with (0: live).
#[derive(Default)]
struct Seen {
    by_id: HashMap<String, Vec<u64>>,
}

impl Seen {
    fn live(&self) -> usize {
        self.by_id.values().filter(|r| r.contains(&0)).count()
    }
    fn replayed_by(&self, replay: u64) -> Vec<(&String, usize)> {
        self.by_id
            .iter()
            .map(|(id, r)| (id, r.iter().filter(|x| **x == replay).count()))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_range_is_delivered_again_marked_while_live_traffic_goes_on() {
    init_logs();
    let cluster = mock_cluster(2);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("replay");
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).expect("token");
    let token = token_file.display().to_string();
    let mut config = config(&bootstrap, &group);
    config.server.admin_token_file = Some(token.clone());
    config.routes[0].max_in_flight = 500;

    let run = async {
        let gw = start_gateway(config).await;
        let admin = gw.admin_addr().to_string();
        let mut sub =
            Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "worker", 500)).await.expect("subscribes");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let acking = Arc::new(AtomicBool::new(true));
        let worker = {
            let (seen, acking) = (seen.clone(), acking.clone());
            tokio::spawn(async move {
                let mut held: Vec<String> = Vec::new();
                loop {
                    let batch = match tokio::time::timeout(Duration::from_millis(50), sub.next()).await {
                        Ok(Ok(Some(batch))) => batch,
                        Ok(_) => return,
                        Err(_) => Vec::new(),
                    };
                    {
                        let mut s = seen.lock();
                        for d in &batch {
                            s.by_id.entry(stream::id_of(d)).or_default().push(d.replay_id);
                        }
                    }
                    held.extend(batch.iter().map(stream::id_of));
                    if acking.load(Ordering::Relaxed) && !held.is_empty() {
                        sub.ack(std::mem::take(&mut held)).await.expect("ack");
                    }
                }
            })
        };

        let first = produce(&bootstrap, 10_000, 1_000).await;
        eventually(Duration::from_secs(60), "10 000 delivered and committed", || {
            seen.lock().live() == 10_000 && fully_committed(&bootstrap, &group, 2)
        })
        .await;
        let committed = committed(&bootstrap, &group, 2);
        assert_eq!(committed.values().sum::<i64>(), 10_000);

        // Committed offsets are watched all along: they must never go back.
        let backwards = Arc::new(Mutex::new(Vec::<String>::new()));
        let watching = Arc::new(AtomicBool::new(true));
        let monitor = {
            let (bootstrap, group, backwards, watching) =
                (bootstrap.clone(), group.clone(), backwards.clone(), watching.clone());
            tokio::task::spawn_blocking(move || {
                let mut last: HashMap<i32, i64> = HashMap::new();
                while watching.load(Ordering::Relaxed) {
                    for (p, o) in support::committed(&bootstrap, &group, 2) {
                        if last.get(&p).is_some_and(|before| o < *before) {
                            backwards.lock().push(format!("partition {p}: {} -> {o}", last[&p]));
                        }
                        last.insert(p, o);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        // Every live record is written after this time (producers stamp records when sent).
        tokio::time::sleep(Duration::from_millis(20)).await;
        let live_since =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis().to_string();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let live = {
            let bootstrap = bootstrap.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..10 {
                    ids.extend(produce(&bootstrap, 200, 50).await);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                ids
            })
        };

        let to = format!("{TOPIC}/0={},{TOPIC}/1={}", committed[&0], committed[&1]);
        let from = format!("{TOPIC}/0=0,{TOPIC}/1=0");
        let (code, _, err) = fanoutctl(&["--gateway", &admin, "replay", ROUTE, "--from-offsets", &from]).await;
        assert_eq!(code, 1, "a replay changes what subscribers get: it needs the token");
        assert!(err.contains("UNAUTHENTICATED"), "{err}");
        let (code, out, err) = fanoutctl(&[
            "--gateway",
            &admin,
            "--token-file",
            &token,
            "replay",
            ROUTE,
            "--from-offsets",
            &from,
            "--to-offsets",
            &to,
        ])
        .await;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("done, 10000 of 10000 record(s) settled"), "{out}");
        let replay_id: u64 = out.split_whitespace().nth(1).and_then(|id| id.parse().ok()).expect("the replay's id");
        assert!(replay_id > 0);

        let live_ids = live.await.expect("live producer");
        eventually(Duration::from_secs(60), "live traffic delivered and committed", || {
            seen.lock().live() == 12_000 && fully_committed(&bootstrap, &group, 2)
        })
        .await;
        watching.store(false, Ordering::Relaxed);
        monitor.await.expect("monitor");
        assert!(backwards.lock().is_empty(), "committed offsets went back: {:?}", backwards.lock());

        {
            let s = seen.lock();
            let replayed = s.replayed_by(replay_id);
            assert_eq!(replayed.len(), 10_000, "every message of the range came again");
            assert!(replayed.iter().all(|(_, n)| *n == 1), "each exactly once");
            let mut replayed_ids: Vec<&String> = replayed.iter().map(|(id, _)| *id).collect();
            replayed_ids.sort();
            let mut expected: Vec<&String> = first.iter().collect();
            expected.sort();
            assert_eq!(replayed_ids, expected, "the replay is the committed range, nothing else");
            assert!(live_ids.iter().all(|id| s.by_id[id] == vec![0]), "live messages come once, unmarked");
        }
        println!("replay {replay_id}: 10000 replayed once each, 2000 live alongside, committed offsets monotonic");

        let (code, json, err) =
            fanoutctl(&["--gateway", &admin, "-o", "json", "replays", &replay_id.to_string()]).await;
        assert_eq!(code, 0, "{err}");
        let status: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        assert_eq!(status[0]["state"], "done");
        assert_eq!(status[0]["settled"], 10_000);

        // By time: from the moment live traffic began, the range is the 2000 live records.
        // Cancel: with the subscriber holding everything, the replay stalls on its window; a
        // cancel ends it there.
        acking.store(false, Ordering::Relaxed);
        let (code, out, err) = fanoutctl(&[
            "--gateway",
            &admin,
            "--token-file",
            &token,
            "replay",
            ROUTE,
            "--from-time",
            &live_since,
            "--no-wait",
        ])
        .await;
        assert_eq!(code, 0, "{err}");
        let second: u64 = out.split_whitespace().nth(1).and_then(|id| id.parse().ok()).expect("id");
        assert!(out.contains("running") && out.contains("of 2000 record(s)"), "{out}");
        let (code, out, _) = fanoutctl(&[
            "--gateway",
            &admin,
            "--token-file",
            &token,
            "replay",
            ROUTE,
            "--from-time",
            "1970-01-01T00:00:00Z",
            "--no-wait",
        ])
        .await;
        assert_eq!(code, 0);
        assert!(out.contains("of 12000 record(s)"), "RFC 3339, and everything since: {out}");
        let third = out.split_whitespace().nth(1).expect("id").to_string();
        let (code, _, err) = fanoutctl(&["--gateway", &admin, "--token-file", &token, "cancel-replay", &third]).await;
        assert_eq!(code, 0, "{err}");
        eventually(Duration::from_secs(10), "the replay stalls on the window", || {
            seen.lock().replayed_by(second).len() >= 500
        })
        .await;
        let (code, _, err) =
            fanoutctl(&["--gateway", &admin, "--token-file", &token, "cancel-replay", &second.to_string()]).await;
        assert_eq!(code, 0, "{err}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (_, table, _) = fanoutctl(&["--gateway", &admin, "replays"]).await;
            let row: Vec<String> = table
                .lines()
                .find(|l| l.split_whitespace().next() == Some(&second.to_string()))
                .map(|l| l.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default();
            if row.get(2).map(String::as_str) == Some("cancelled") {
                let (settled, total) = row[3].split_once('/').expect("settled/total");
                assert!(settled.parse::<u64>().expect("n") < total.parse::<u64>().expect("n"), "{table}");
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "not cancelled: {table}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (code, _, err) = fanoutctl(&["--gateway", &admin, "replays", "999"]).await;
        assert_eq!(code, 1);
        assert!(err.contains("NOT_FOUND") && err.contains("no replay 999"), "{err}");
        let (code, _, err) =
            fanoutctl(&["--gateway", &admin, "--token-file", &token, "replay", ROUTE, "--from-time", "yesterday"])
                .await;
        assert_eq!(code, 2);
        assert!(err.contains("`yesterday` is not a time"), "{err}");
        let (code, _, err) = fanoutctl(&[
            "--gateway",
            &admin,
            "--token-file",
            &token,
            "replay",
            ROUTE,
            "--from-offsets",
            "payments/0=0",
        ])
        .await;
        assert_eq!(code, 1);
        assert!(err.contains("INVALID_ARGUMENT") && err.contains("payments/0"), "{err}");

        worker.abort();
        gw.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(180), run).await.expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_that_can_hold_nothing_is_refused_naming_the_bound() {
    use fanout_gateway::proto::admin::admin_client::AdminClient;
    use fanout_gateway::proto::admin::{PartitionOffset, ReplayRequest};
    init_logs();
    let cluster = mock_cluster(2);
    let bootstrap = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).expect("token");
    let mut config = config(&bootstrap, &unique_group("replay-range"));
    config.server.admin_token_file = Some(token_file.display().to_string());
    let gw = start_gateway(config).await;
    let mut admin = AdminClient::connect(gw.admin_endpoint()).await.expect("connects");
    let at = |offset| vec![PartitionOffset { topic: TOPIC.into(), partition: 0, offset }];
    let cases = [
        (
            "offsets swapped",
            ReplayRequest { route: ROUTE.into(), from_offsets: at(50), to_offsets: at(10), ..Default::default() },
            "to_offsets orders/0=10 must be after from_offsets orders/0=50",
        ),
        (
            "the year 146 million",
            ReplayRequest { route: ROUTE.into(), from_unix_ms: Some(4_611_686_018_427_387), ..Default::default() },
            "in the future",
        ),
    ];
    for (name, request, says) in cases {
        let mut request = tonic::Request::new(request);
        request.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().expect("header"));
        let refused = admin.replay(request).await.expect_err(name);
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{name}: {refused:?}");
        assert!(refused.message().contains(says), "{name}: {:?}", refused.message());
    }
    gw.shutdown().await;
}
