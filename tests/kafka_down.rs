//! A gateway whose Kafka is not there: it serves at once and says it waits for Kafka, and it
//! says why Kafka does not answer once per interval, in words that name what to check.

mod support;

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout_gateway::config::{Config, RouteConfig};
use fanout_gateway::gateway;
use support::*;
use tokio::io::AsyncReadExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// A gateway process whose stderr is collected as it comes.
struct Logged {
    child: tokio::process::Child,
    log: Arc<parking_lot::Mutex<String>>,
    started: Instant,
}

impl Logged {
    /// `serve --config` with `routes` routes over `orders` (each in a group of its own, as the
    /// per-route layout has them) and Kafka at `bootstrap`; logs at info.
    fn serve(dir: &std::path::Path, bootstrap: &str, routes: usize) -> Self {
        let mut config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n[kafka]\nbootstrap_servers = \"{bootstrap}\"\ngroup_id = \"kafka-down\"\n"
        );
        for i in 0..routes {
            config.push_str(&format!("\n[[routes]]\nname = \"route-{i}\"\ntopics = [\"{TOPIC}\"]\n"));
        }
        let path = dir.join("fanout.toml");
        std::fs::write(&path, config).expect("config written");
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fanout-gateway"))
            .args(["serve", "--config"])
            .arg(&path)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .env_remove("FANOUT_BOOTSTRAP_SERVERS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the gateway starts");
        let started = Instant::now();
        let mut stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(parking_lot::Mutex::new(String::new()));
        let sink = log.clone();
        tokio::spawn(async move {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                sink.lock().push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        Self { child, log, started }
    }

    /// Waits until a line of the log satisfies `check`, at most until `limit` after the start.
    async fn wait_for(&self, what: &str, limit: Duration, check: impl Fn(&str) -> bool) -> String {
        loop {
            let log = self.log.lock().clone();
            if let Some(line) = log.lines().find(|l| check(l)) {
                return line.to_string();
            }
            assert!(self.started.elapsed() < limit, "no line {what} within {limit:?} of the start:\n{log}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the process; its whole log.
    async fn stop(mut self) -> String {
        assert!(self.child.try_wait().expect("status").is_none(), "still running: a missing Kafka is not fatal");
        self.child.start_kill().expect("stopped");
        let _ = self.child.wait().await;
        // The reader drains what the pipe still holds.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let log = self.log.lock().clone();
        log
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresolvable_broker_name_is_said_with_the_dns_hint_within_10_s() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = Logged::serve(dir.path(), "no-such-broker.invalid:9092", 2);
    let line = gw
        .wait_for("with the DNS hint", Duration::from_secs(10), |l| l.contains("cannot resolve no-such-broker.invalid"))
        .await;
    assert!(line.contains("kafka unreachable") && line.contains("check kafka.bootstrap_servers"), "{line}");
    assert!(line.contains("DNS"), "names what to check: {line}");
    assert!(line.contains(" WARN "), "a warning, not an error: it retries and fixes itself once DNS answers: {line}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_routes_without_kafka_serve_and_say_they_wait_for_kafka_within_2_s() {
    init_logs();
    let closed = format!("127.0.0.1:{}", free_port());
    let mut config: Config = config(&closed, &unique_group("kafka-down"));
    // Each route in a group of its own: every route has the upgrade check to do, which asks
    // Kafka for the shared group's offsets before the route may join its group.
    config.routes[0].group_id = None;
    for i in 1..10 {
        config.routes.push(RouteConfig::new(&format!("{ROUTE}-{i}"), &[TOPIC]));
    }
    assert_eq!(config.routes.len(), 10);

    let started = Instant::now();
    let gw = tokio::time::timeout(Duration::from_secs(2), gateway::start(config))
        .await
        .expect("the start waits on no route's Kafka")
        .expect("starts without Kafka");
    let admin = gw.admin_addr();
    let (code, body) = http_get(admin, "/readyz").await;
    assert_eq!(code, 503, "not ready without Kafka: {body}");
    assert!(body.contains("kafka is not reachable") && body.contains("waiting"), "says it waits for Kafka: {body}");
    assert_eq!(http_get(admin, "/healthz").await.0, 200, "alive");
    let channel = tonic::transport::Channel::from_shared(gw.endpoint())
        .expect("uri")
        .connect()
        .await
        .expect("the gRPC port serves");
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest { service: "fanout.v1.Fanout".into() })
        .await
        .expect("grpc.health answers")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::NotServing as i32, "grpc.health agrees with /readyz");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "serving and answering took {took:?}");

    let stopping = Instant::now();
    gw.shutdown().await;
    assert!(stopping.elapsed() < Duration::from_secs(10), "a stop while waiting for Kafka is not held up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_broker_is_said_a_few_times_in_20_s_and_never_at_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let closed = format!("127.0.0.1:{}", free_port());
    let gw = Logged::serve(dir.path(), &closed, 10);
    gw.wait_for("serving", Duration::from_secs(5), |l| l.contains("gateway serving")).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let log = gw.stop().await;

    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(errors.is_empty(), "nothing at ERROR: Kafka coming back fixes it:\n{}", errors.join("\n"));
    let said: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ")).collect();
    let refused: Vec<&&str> = said.iter().filter(|l| l.contains(&format!("nothing listens at {closed}"))).collect();
    assert!(!refused.is_empty(), "the refused connection is said, with what to check:\n{log}");
    // Ten routes' consumers, each retrying every broker: said once per 10 s for all of them.
    assert!(refused.len() <= 3, "{} lines about the refused connection in 20 s:\n{log}", refused.len());
    assert!(said.len() <= 4, "{} warnings in 20 s, each failure at most a few times:\n{}", said.len(), said.join("\n"));
}
