//! Bad input gets a clear answer and loses nothing: protocol misuse on the Subscribe stream,
//! unknown routes and ack ids, a malformed config file, and Kafka out of reach at start.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use fanout_client::stream::{self, Subscription};
use fanout_gateway::proto::fanout_client::FanoutClient;
use fanout_gateway::proto::subscribe_request::Kind;
use fanout_gateway::proto::{Ack, SubscribeRequest};
use fanout_gateway::stats::Stats;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_message_must_be_hello() {
    let cluster = mock_cluster(1);
    let gw = start_gateway(config(&cluster.bootstrap_servers(), &unique_group("hello"))).await;
    let mut raw = FanoutClient::connect(gw.endpoint()).await.expect("connects");
    let ack_first = SubscribeRequest { kind: Some(Kind::Ack(Ack { ack_ids: vec![1] })) };
    let status = raw.subscribe(futures::stream::iter(vec![ack_first])).await.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("hello"), "{}", status.message());

    let status = raw.subscribe(futures::stream::iter(Vec::new())).await.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "a stream that ends before hello");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_route_is_not_found() {
    let cluster = mock_cluster(1);
    let gw = start_gateway(config(&cluster.bootstrap_servers(), &unique_group("route"))).await;
    let err =
        Subscription::connect(&gw.endpoint(), stream::hello("billing", "pod-1", 10)).await.err().expect("refused");
    let stream::ClientError::Refused(status) = err else { panic!("expected a status, got {err}") };
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(status.message().contains("billing") && status.message().contains("orders"), "{}", status.message());

    let err = Subscription::connect(&gw.endpoint(), stream::hello("", "pod-1", 10)).await.err().expect("refused");
    let stream::ClientError::Refused(status) = err else { panic!("expected a status, got {err}") };
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "empty route");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_by_handle_work_out_of_order_and_across_batches_and_unknown_ones_are_counted() {
    let cluster = mock_cluster(1);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("acks");
    let ids = produce(&bootstrap, 10, 1).await;
    let gw = start_gateway(config(&bootstrap, &group)).await;
    let stats = gw.stats();
    let mut sub = Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "pod-1", 5)).await.expect("subscribes");

    let (mut received, mut handles) = (Vec::new(), Vec::new());
    while received.len() < 5 {
        for d in sub.next_raw().await.expect("stream").expect("open") {
            received.push(stream::id_of(&d));
            handles.push(d.ack_id);
        }
    }
    assert!(handles.iter().all(|h| *h != 0), "0 is protobuf's unset: never a handle");
    // Out of order, over two messages, with a handle never issued and one acked twice.
    sub.ack_ids(vec![handles[4], 999_999, handles[2]]).await.expect("sent");
    sub.ack_ids(vec![handles[2], handles[3], handles[1], handles[0]]).await.expect("sent");

    while received.len() < 10 {
        let batch = tokio::time::timeout(Duration::from_secs(10), sub.next_raw()).await.expect("more deliveries");
        let batch = batch.expect("stream stays up").expect("open");
        let more: Vec<u64> = batch.iter().map(|d| d.ack_id).collect();
        assert!(more.iter().all(|h| !handles.contains(h)), "a handle is never reused on a stream");
        received.extend(batch.iter().map(stream::id_of));
        handles.extend(&more);
        sub.ack_ids(more.into_iter().rev().collect()).await.expect("sent");
    }
    assert_eq!(received, ids, "every message delivered once, in partition order");
    eventually(Duration::from_secs(10), "all acks applied", || Stats::get(&stats.acked) == 10).await;
    assert_eq!(Stats::get(&stats.unknown_acks), 2, "a handle never issued, a repeated ack");
    assert_eq!(Stats::get(&stats.redelivered), 0);
    eventually(Duration::from_secs(20), "commits reach the high watermark", || fully_committed(&bootstrap, &group, 1))
        .await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_route_name_is_cut_in_the_status_and_the_status_still_arrives() {
    let cluster = mock_cluster(1);
    let gw = start_gateway(config(&cluster.bootstrap_servers(), &unique_group("echo"))).await;
    let huge = "b".repeat(100_000);
    let err = Subscription::connect(&gw.endpoint(), stream::hello(&huge, "pod-1", 10)).await.err().expect("refused");
    let stream::ClientError::Refused(status) = err else { panic!("expected a status, got {err}") };
    assert_eq!(status.code(), tonic::Code::NotFound, "not the client's metadata limit: {}", &status.message()[..80]);
    let message = status.message();
    assert!(message.len() <= fanout_gateway::grpc::MAX_STATUS_MESSAGE, "{} bytes echoed", message.len());
    assert!(message.starts_with("route `bbb") && message.ends_with("(truncated)"), "{message}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_of_i64_max_seconds_is_cut_to_the_routes_max_backoff() {
    let cluster = mock_cluster(1);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("retry-after");
    let ids = produce(&bootstrap, 1, 1).await;
    let mut config = config(&bootstrap, &group);
    config.routes[0].retry.initial_backoff_ms = 100;
    config.routes[0].retry.max_backoff_ms = 1_000;
    let gw = start_gateway(config).await;
    let mut sub = Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "pod-1", 10)).await.expect("subscribes");
    let first = sub.next().await.expect("stream").expect("open").remove(0);
    assert_eq!((stream::id_of(&first).as_str(), first.attempt), (ids[0].as_str(), 1));
    sub.nack_after(stream::id_of(&first), "come back never", Duration::from_secs(i64::MAX as u64)).await.expect("sent");
    // Uncapped, the message would wait 292 billion years and its partition's commit with it.
    let again = tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .expect("redelivered after the route's max backoff")
        .expect("stream")
        .expect("open")
        .remove(0);
    assert_eq!((stream::id_of(&again).as_str(), again.attempt), (ids[0].as_str(), 2));
    sub.ack(vec![stream::id_of(&again)]).await.expect("sent");
    eventually(Duration::from_secs(20), "the partition commits past it", || fully_committed(&bootstrap, &group, 1))
        .await;
    gw.shutdown().await;
}

#[test]
fn logs_written_to_a_file_carry_no_colour_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fanout.toml");
    let text = "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[kafka]\nbootstrap_servers = \"127.0.0.1:9\"\n\
                [[routes]]\nname = \"orders\"\ntopics = [\"orders\"]\n";
    std::fs::write(&path, text).expect("write");
    let log = dir.path().join("serve.log");
    let file = std::fs::File::create(&log).expect("log file");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fanout-gateway"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .env_remove("FANOUT_LOG_FORMAT")
        .stderr(file)
        .spawn()
        .expect("runs");
    // Against an unreachable broker the first lines come after the start's Kafka timeouts.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let mut written = String::new();
    while std::time::Instant::now() < deadline && !written.contains("INFO") {
        std::thread::sleep(Duration::from_millis(100));
        written = std::fs::read_to_string(&log).unwrap_or_default();
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(written.contains("INFO"), "the gateway logged at INFO: {written}");
    assert!(!written.contains('\x1b'), "escape codes in a log file: {written:?}");
}

/// Runs `fanout-gateway serve` on a config file with `text`; returns its stderr.
fn serve_with_config(text: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fanout.toml");
    std::fs::write(&path, text).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fanout-gateway"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .expect("runs");
    assert!(!out.status.success(), "a bad config must not start the gateway");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn malformed_config_names_the_field() {
    let routes = "[[routes]]\nname = \"orders\"\n";
    let stderr = serve_with_config(&format!(
        "[kafka]\nbootstrap_servers = \"k:9092\"\n{routes}topics = [\"orders\"]\nmax_in_flight = \"many\"\n"
    ));
    assert!(stderr.contains("routes[0].max_in_flight"), "{stderr}");
    let stderr = serve_with_config(&format!("[kafka]\nbootstrap_servers = \"k:9092\"\n{routes}topics = []\n"));
    assert!(stderr.contains("routes[0].topics"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_kafka_at_start_is_reported_and_retried_until_it_answers() {
    init_logs();
    let cluster = mock_cluster(2);
    let bootstrap = cluster.bootstrap_servers();
    for broker in 1..=3 {
        cluster.broker_down(broker).expect("down");
    }
    let group = unique_group("unreachable");
    let gw = start_gateway(config(&bootstrap, &group)).await;
    let stats = gw.stats();
    eventually(Duration::from_secs(30), "the gateway reports kafka unreachable", || {
        stats.last_kafka_error.read().as_deref().is_some_and(|e| e.contains("unreachable"))
            && Stats::get(&stats.kafka_errors) >= 2
    })
    .await;
    assert!(!stats.kafka_reachable.load(Ordering::Relaxed));

    // Subscribers can attach meanwhile; they simply get nothing yet.
    let mut sub = Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "pod-1", 50)).await.expect("subscribes");

    for broker in 1..=3 {
        cluster.broker_up(broker).expect("up");
    }
    let ids = produce(&bootstrap, 20, 4).await;
    let mut got = Vec::new();
    while got.len() < ids.len() {
        let batch = tokio::time::timeout(Duration::from_secs(60), sub.next()).await.expect("deliveries after recovery");
        let batch: Vec<String> = batch.expect("stream").expect("open").into_iter().map(|d| stream::id_of(&d)).collect();
        sub.ack(batch.clone()).await.expect("sent");
        got.extend(batch);
    }
    got.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(got, expected);
    assert!(stats.kafka_reachable.load(Ordering::Relaxed));
    eventually(Duration::from_secs(20), "commits reach the high watermarks", || fully_committed(&bootstrap, &group, 2))
        .await;
    gw.shutdown().await;
}
