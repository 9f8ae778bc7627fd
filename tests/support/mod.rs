//! Test fixtures: librdkafka's mock cluster, a producer, committed offsets and watermarks as
//! the broker holds them, and a scripted subscriber that records what it saw.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use fanout_client::stream::{self, Subscription};
use fanout_gateway::admin::ConfigSource;
use fanout_gateway::config::Config;
use fanout_gateway::gateway::{self, GatewayHandle};
use parking_lot::Mutex;
use rand::seq::SliceRandom;
use rand::Rng;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;

pub const TOPIC: &str = "orders";
pub const ROUTE: &str = "orders";

/// A 3-broker mock cluster with `TOPIC` created with `partitions` partitions.
pub fn mock_cluster(partitions: i32) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = MockCluster::new(3).expect("mock cluster");
    cluster.create_topic(TOPIC, partitions, 3).expect("create topic");
    cluster
}

/// The Python that has grpcio and grpcio-tools: FANOUT_TEST_PYTHON, or the venv `.ci/run`
/// makes.
pub fn python() -> String {
    std::env::var("FANOUT_TEST_PYTHON")
        .unwrap_or_else(|_| format!("{}/target/ci-venv/bin/python", env!("CARGO_MANIFEST_DIR")))
}

/// An in-process gateway with `config`, on the ports its `server` section names (loopback,
/// usually port 0): how most tests start one.
pub async fn start_gateway(config: Config) -> GatewayHandle {
    gateway::start(config).await.expect("the gateway starts")
}

/// An in-process gateway with Kubernetes discovery through `client` (a local API server).
pub async fn start_gateway_with_kube(config: Config, client: kube::Client) -> GatewayHandle {
    gateway::start_with(config, Some(client)).await.expect("the gateway starts")
}

/// An in-process gateway whose source of truth is the config file at `path`, as `serve` runs
/// one: weight changes are written back to it, `control().follow` reloads it.
pub async fn start_gateway_from_file(path: &std::path::Path) -> GatewayHandle {
    let config = Config::load(path).expect("the config file loads");
    gateway::start_from(config, None, ConfigSource::File(path.to_path_buf())).await.expect("the gateway starts")
}

/// A group id no other test uses.
pub fn unique_group(prefix: &str) -> String {
    format!("{prefix}-{}", rand::rng().random::<u64>())
}

/// One route over `TOPIC`, fast commits.
pub fn config(bootstrap: &str, group: &str) -> Config {
    let mut c = Config::single_route(bootstrap, group, ROUTE, &[TOPIC]);
    c.kafka.commit_interval_ms = 100;
    c.server.shutdown_grace_ms = 10_000;
    // The mock's group coordinator waits session.timeout.ms - 1 s before it admits a member
    // joining after the last one left (rdkafka_mock_cgrp.c); a short session keeps a gateway
    // replacement quick.
    c.kafka.properties.insert("session.timeout.ms".into(), "6000".into());
    c.kafka.properties.insert("heartbeat.interval.ms".into(), "500".into());
    c
}

/// Produces `count` keyed messages (`count / keys` per key) and returns their delivery ids.
pub async fn produce(bootstrap: &str, count: usize, keys: usize) -> Vec<String> {
    produce_to(bootstrap, TOPIC, count, keys).await
}

/// [`produce`] to `topic`.
pub async fn produce_to(bootstrap: &str, topic: &str, count: usize, keys: usize) -> Vec<String> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let mut futures = Vec::with_capacity(count);
    for i in 0..count {
        let key = format!("key-{}", i % keys);
        let value = format!("message {i}");
        let future = producer.send_result(FutureRecord::to(topic).key(&key).payload(&value)).expect("enqueue");
        futures.push(future);
    }
    let mut ids = Vec::with_capacity(count);
    for f in futures {
        let d = f.await.expect("delivered").expect("delivered");
        ids.push(format!("{topic}/{}/{}", d.partition, d.offset));
    }
    ids
}

fn admin_consumer(bootstrap: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer")
}

/// The group's committed offset per partition, as the broker holds it.
pub fn committed(bootstrap: &str, group: &str, partitions: i32) -> HashMap<i32, i64> {
    let consumer = admin_consumer(bootstrap, group);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_range(TOPIC, 0, partitions - 1);
    let c = consumer.committed_offsets(tpl, Duration::from_secs(10)).expect("committed offsets");
    c.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// High watermark per partition.
pub fn high_watermarks(bootstrap: &str, partitions: i32) -> HashMap<i32, i64> {
    let consumer = admin_consumer(bootstrap, "watermarks");
    (0..partitions)
        .map(|p| (p, consumer.fetch_watermarks(TOPIC, p, Duration::from_secs(10)).expect("watermarks").1))
        .collect()
}

/// True when the group's committed offset equals the high watermark on every partition (a
/// partition never written to counts as committed at 0).
pub fn fully_committed(bootstrap: &str, group: &str, partitions: i32) -> bool {
    let committed = committed(bootstrap, group, partitions);
    high_watermarks(bootstrap, partitions).iter().all(|(p, hw)| committed.get(p).copied().unwrap_or(0) == *hw)
}

/// `fully_committed` for any topic.
pub fn topic_fully_committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> bool {
    let consumer = admin_consumer(bootstrap, group);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_range(topic, 0, partitions - 1);
    let c = consumer.committed_offsets(tpl, Duration::from_secs(10)).expect("committed offsets");
    (0..partitions).all(|p| {
        let hw = consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks").1;
        let committed = c.find_partition(topic, p).and_then(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        });
        committed.unwrap_or(0) == hw
    })
}

/// The next batch of deliveries; panics if none comes within 20 s or the stream ends.
pub async fn next_batch(sub: &mut Subscription) -> Vec<fanout_gateway::proto::Delivery> {
    tokio::time::timeout(Duration::from_secs(20), sub.next())
        .await
        .expect("deliveries keep coming")
        .expect("stream healthy")
        .expect("stream open")
}

/// Receives and acks until `count` deliveries have arrived; their record ids, sorted.
pub async fn receive_and_ack(sub: &mut Subscription, count: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < count {
        let ids: Vec<String> = next_batch(sub).await.iter().map(stream::id_of).collect();
        sub.ack(ids.clone()).await.expect("acks sent");
        got.extend(ids);
    }
    got.sort();
    got
}

/// Waits until `check` holds, polling; panics with `what` after `limit`.
pub async fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asks `probe` every 100 ms until `done` holds of its answer or `limit` passes, and returns
/// the last answer either way: the caller's assertion shows what was seen.
pub async fn poll_until<T, F, Fut>(limit: Duration, mut probe: F, done: impl Fn(&T) -> bool) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let answer = probe().await;
        if done(&answer) || tokio::time::Instant::now() >= deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What subscribers saw, shared by all of them.
#[derive(Default)]
pub struct Recorder {
    /// Times each delivery id was received.
    pub delivered: HashMap<String, u32>,
    pub acked: HashSet<String>,
    /// Ids that were in flight (received, not acked) when a stream ended or was dropped:
    /// the only ones allowed to arrive twice.
    pub in_flight_at_break: HashSet<String>,
    /// Offsets received per key, in arrival order, per subscriber stream.
    pub streams_ended: u32,
}

impl Recorder {
    pub fn duplicates(&self) -> Vec<String> {
        let mut d: Vec<String> = self.delivered.iter().filter(|(_, n)| **n > 1).map(|(id, _)| id.clone()).collect();
        d.sort();
        d
    }
}

/// How a scripted subscriber behaves.
#[derive(Clone)]
pub struct Script {
    pub name: String,
    pub window: u32,
    /// After this many deliveries, stop acking, let in-flight acks land, then drop the stream
    /// (once) and reconnect.
    pub drop_after: Option<usize>,
}

/// Runs a subscriber that acks out of order (a random part of what it holds on every batch,
/// the rest a moment later), reconnecting to whatever `endpoint` says, until `stop`.
pub async fn subscriber(
    script: Script,
    endpoint: watch::Receiver<String>,
    recorder: Arc<Mutex<Recorder>>,
    stop: watch::Receiver<bool>,
) {
    let mut received = 0usize;
    let mut dropped_once = false;
    while !*stop.borrow() {
        let target = endpoint.borrow().clone();
        let mut sub = match Subscription::connect(&target, stream::hello(ROUTE, &script.name, script.window)).await {
            Ok(s) => s,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut holding: Vec<String> = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(30));
        loop {
            let mut stop_rx = stop.clone();
            tokio::select! {
                batch = sub.next() => match batch {
                    Ok(Some(batch)) => {
                        received += batch.len();
                        {
                            let mut r = recorder.lock();
                            for d in &batch {
                                *r.delivered.entry(stream::id_of(d)).or_default() += 1;
                            }
                        }
                        holding.extend(batch.into_iter().map(|d| stream::id_of(&d)));
                        holding.shuffle(&mut rand::rng());
                        let keep = holding.len() * 3 / 10;
                        let now: Vec<String> = holding.drain(keep..).collect();
                        ack(&sub, now, &recorder).await;
                    }
                    Ok(None) | Err(_) => break,
                },
                _ = tick.tick() => {
                    let now = std::mem::take(&mut holding);
                    ack(&sub, now, &recorder).await;
                }
                _ = stop_rx.changed() => break,
            }
            if let Some(limit) = script.drop_after {
                if !dropped_once && received >= limit {
                    dropped_once = true;
                    // Let acks already sent land, then vanish with the rest in flight.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    break;
                }
            }
        }
        let mut r = recorder.lock();
        r.streams_ended += 1;
        r.in_flight_at_break.extend(holding.drain(..));
        drop(sub);
    }
}

async fn ack(sub: &Subscription, ids: Vec<String>, recorder: &Mutex<Recorder>) {
    if ids.is_empty() {
        return;
    }
    recorder.lock().acked.extend(ids.iter().cloned());
    let _ = sub.ack(ids).await;
}

/// `GET path` over plain HTTP/1.1 (the admin port's /metrics, /healthz, /readyz), as
/// Prometheus and the kubelet ask; (status code, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http_get_accepting(addr, path, "*/*").await
}

/// `GET path` with an `Accept` header (Prometheus asks for OpenMetrics).
pub async fn http_get_accepting(addr: std::net::SocketAddr, path: &str, accept: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("admin port accepts");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("request sent");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("response read");
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("a status line");
    let chunked = head.lines().any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding: chunked"));
    (code, if chunked { dechunk(body) } else { body.to_string() })
}

/// The body of a chunked HTTP/1.1 response.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// One scrape of `/metrics`, parsed: every sample as (series with its labels, value).
pub async fn scrape(addr: std::net::SocketAddr) -> (String, HashMap<String, f64>) {
    let (code, text) = http_get(addr, "/metrics").await;
    assert_eq!(code, 200, "/metrics answers: {text}");
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(series, value)| value.parse::<f64>().ok().map(|v| (series.to_string(), v)))
        .collect();
    (text, samples)
}

/// `promtool check metrics` on an exposition: its complaints, empty when it passes.
pub fn promtool_check(exposition: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs (Debian package prometheus; .ci/run installs it)");
    child.stdin.take().expect("stdin").write_all(exposition.as_bytes()).expect("exposition written");
    let out = child.wait_with_output().expect("promtool finishes");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        String::new()
    } else {
        format!("promtool check metrics failed: {said}")
    }
}
pub mod shared;
pub use shared::*;
pub mod logs;
pub mod pki;
pub mod real_kafka;
pub mod runbook;
pub mod tls_kafka;

/// The records of `topic` from its beginning, as (value, headers), until `expected` came or
/// 20 s passed.
pub fn read_topic(bootstrap: &str, topic: &str, expected: usize) -> Vec<(String, HashMap<String, String>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique_group("topic-reader"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("topic metadata");
    let partitions = metadata.topics()[0].partitions().len() as i32;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while out.len() < expected && std::time::Instant::now() < until {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let mut headers = HashMap::new();
            if let Some(h) = m.headers() {
                for h in h.iter() {
                    headers
                        .insert(h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned());
                }
            }
            out.push((String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(), headers));
        }
    }
    out
}
