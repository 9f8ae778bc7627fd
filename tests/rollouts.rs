//! Rollouts on a route, judged on live traffic: a candidate that nacks a fifth of its messages
//! is rolled back at its first step by the judge alone, with nothing lost and what it nacked
//! handled by the stable cohort; a good candidate is walked through its steps and promoted;
//! a rollout is refused where it cannot work, and an operator's pause holds it.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use fanout_client::{Delivery, Nack, Replicas, Subscriber};
use fanout_gateway::admin::AdminError;
use fanout_gateway::config::Config;
use fanout_gateway::gateway::GatewayHandle;
use fanout_gateway::rollout::steps::{Input, Phase, Plan, Step};
use fanout_gateway::rollout::{Analysis, Rollout};
use parking_lot::Mutex;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use support::*;
use tokio::sync::watch;

const PARTITIONS: i32 = 4;
/// Messages a second the producer writes while a rollout runs.
const RATE: usize = 1_000;

fn rollout_config(bootstrap: &str, group: &str) -> Config {
    let mut c = config(bootstrap, group);
    let r = &mut c.routes[0];
    r.split_label = Some("track".into());
    r.weights = [("stable".to_string(), 100), ("canary".to_string(), 0)].into();
    r.retry.initial_backoff_ms = 50;
    r.retry.max_backoff_ms = 200;
    c
}

fn plan(weights: &[u32]) -> Plan {
    Plan {
        stable: "stable".into(),
        candidate: "canary".into(),
        steps: weights
            .iter()
            .map(|&weight| Step { weight, hold: Duration::from_secs(1), min_deliveries: 100 })
            .collect(),
    }
}

fn analysis() -> Analysis {
    Analysis { min_deliveries: 200, look_every_ms: 250, ..Analysis::default() }
}

/// One handling: (cohort, delivery id, attempt, acked).
type Handling = (&'static str, String, u32, bool);

/// Every handling, in order.
#[derive(Clone, Default)]
struct Handled(Arc<Mutex<Vec<Handling>>>);

impl Handled {
    fn acked(&self) -> HashSet<String> {
        self.0.lock().iter().filter(|h| h.3).map(|h| h.1.clone()).collect()
    }
}

/// A subscriber of cohort `cohort` that nacks the deliveries `fails` picks, until `stop`.
fn subscriber(
    endpoint: String,
    cohort: &'static str,
    handled: Handled,
    fails: fn(&str) -> bool,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let handler = move |d: Delivery| {
            let handled = handled.clone();
            async move {
                let id = format!("{}/{}/{}", d.topic, d.partition, d.offset);
                let failed = fails(&id);
                handled.0.lock().push((cohort, id, d.attempt, !failed));
                if failed {
                    Err(Nack::retry("the candidate fails this one"))
                } else {
                    Ok(())
                }
            }
        };
        let subscriber = Subscriber::builder(ROUTE)
            .replicas(Replicas::list([endpoint]))
            .name(format!("orders-{cohort}"))
            .label("track", cohort)
            .max_in_flight(64)
            .concurrency(8)
            .build()
            .expect("valid settings");
        let mut stop = stop;
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        subscriber.run(handler, stopped).await.expect("drains cleanly");
    })
}

/// Messages written so far.
#[derive(Clone, Default)]
struct Produced(Arc<std::sync::atomic::AtomicUsize>);

impl Produced {
    fn get(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Writes `count` keyed messages at [`RATE`] a second, counting them in `produced`; their
/// delivery ids.
async fn produce_steadily(bootstrap: String, count: usize, produced: Produced) -> Vec<String> {
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", &bootstrap).set("linger.ms", "5").create().expect("producer");
    let mut ids = Vec::with_capacity(count);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    for batch in 0..count.div_ceil(RATE / 20) {
        tick.tick().await;
        let mut sent = Vec::new();
        for i in batch * RATE / 20..((batch + 1) * RATE / 20).min(count) {
            let (key, value) = (format!("key-{}", i % 97), format!("message {i}"));
            sent.push(producer.send_result(FutureRecord::to(TOPIC).key(&key).payload(&value)).expect("enqueue"));
        }
        for f in sent {
            let d = f.await.expect("delivered").expect("delivered");
            ids.push(format!("{TOPIC}/{}/{}", d.partition, d.offset));
            produced.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    ids
}

/// A fifth of the messages, picked by their id.
fn a_fifth(id: &str) -> bool {
    id.bytes().fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b))) % 5 == 0
}

fn never(_: &str) -> bool {
    false
}

/// Waits until the route keeps up with the producer (what was written before the route's
/// partitions were assigned is worked off), as a route is before a rollout.
async fn steady(handled: &Handled, produced: &Produced) {
    eventually(Duration::from_secs(60), "the route keeps up with the producer", || {
        let done = produced.get();
        done > RATE && handled.0.lock().len() + RATE / 4 >= done
    })
    .await;
}

/// One test at a time: each runs a broker, a gateway and a producer at [`RATE`], and the
/// judge's looks are about the traffic, not about a machine shared with three others.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A route's traffic: a stable and a canary subscriber, and a producer at [`RATE`].
struct Traffic {
    handled: Handled,
    stop: watch::Sender<bool>,
    subscribers: Vec<tokio::task::JoinHandle<()>>,
    producing: tokio::task::JoinHandle<Vec<String>>,
}

impl Traffic {
    /// Subscribes both cohorts (the canary failing what `canary_fails` picks), produces for
    /// `seconds`, and waits until the route keeps up.
    async fn start(gw: &GatewayHandle, bootstrap: &str, canary_fails: fn(&str) -> bool, seconds: usize) -> Self {
        let handled = Handled::default();
        let (stop, stopped) = watch::channel(false);
        let subscribers = vec![
            subscriber(gw.endpoint(), "stable", handled.clone(), never, stopped.clone()),
            subscriber(gw.endpoint(), "canary", handled.clone(), canary_fails, stopped),
        ];
        let produced = Produced::default();
        let producing = tokio::spawn(produce_steadily(bootstrap.to_string(), seconds * RATE, produced.clone()));
        steady(&handled, &produced).await;
        Self { handled, stop, subscribers, producing }
    }

    /// Drains both subscribers.
    async fn stop_subscribers(&mut self) {
        let _ = self.stop.send(true);
        for s in self.subscribers.drain(..) {
            let _ = s.await;
        }
    }
}

async fn rollout_now(gw: &GatewayHandle) -> Rollout {
    gw.control().rollout(ROUTE).expect("route").rollout.expect("a rollout")
}

async fn weights_now(gw: &GatewayHandle) -> BTreeMap<String, u32> {
    let status = gw.control().routes_status(Some(ROUTE)).await.expect("status");
    status[0].snapshot.config.weights.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_that_nacks_a_fifth_is_rolled_back_at_its_first_step_and_loses_nothing() {
    let _serial = ONE_AT_A_TIME.lock().await;
    init_logs();
    let cluster = mock_cluster(PARTITIONS);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("rollout-bad");
    let run = async {
        let gw = start_gateway(rollout_config(&bootstrap, &group)).await;
        let mut traffic = Traffic::start(&gw, &bootstrap, a_fifth, 30).await;
        let handled = traffic.handled.clone();

        let started = gw.control().start_rollout(ROUTE, plan(&[10, 50]), analysis()).await.expect("starts");
        assert_eq!(started.progress.phase, Phase::Running { step: 0, since: Duration::ZERO });
        assert_eq!(weights_now(&gw).await, [("canary".into(), 10), ("stable".into(), 90)].into());

        let aborted = poll_until(Duration::from_secs(30), || rollout_now(&gw), |r| !r.active()).await;
        assert_eq!(aborted.progress.phase, Phase::Aborted { step: 0 }, "{:?}", aborted.progress.history);
        let why = &aborted.progress.history.last().expect("history").what;
        assert!(why.starts_with("rolled back: failure rate"), "{why}");
        assert_eq!(weights_now(&gw).await, [("canary".into(), 0), ("stable".into(), 100)].into());
        let look = gw.control().rollout(ROUTE).expect("route").look.expect("a look");
        assert!(
            (30..=300).contains(&look.candidate.deliveries),
            "judged on {} candidate deliveries: {look:?}",
            look.candidate.deliveries
        );
        eprintln!(
            "bench: rollout_bad_candidate_deliveries_at_abort {} (stable {}, candidate failures {})",
            look.candidate.deliveries, look.stable.deliveries, look.candidate.failures
        );

        // Nothing lost: every message produced is acked, what the candidate nacked by stable.
        let ids = (&mut traffic.producing).await.expect("producer");
        eventually(Duration::from_secs(60), "every message acked", || {
            let acked = handled.acked();
            ids.iter().all(|id| acked.contains(id))
        })
        .await;
        let all = handled.0.lock().clone();
        let nacked: HashSet<&str> = all.iter().filter(|h| !h.3).map(|h| h.1.as_str()).collect();
        assert!(!nacked.is_empty());
        let mut acks: HashMap<&str, Vec<&str>> = HashMap::new();
        for (cohort, id, _, acked) in &all {
            if *acked {
                acks.entry(id.as_str()).or_default().push(cohort);
            }
        }
        for id in &nacked {
            assert_eq!(
                acks.get(id).map(Vec::as_slice),
                Some(&["stable"][..]),
                "{id}: nacked by the candidate, acked by stable"
            );
        }
        let twice: Vec<&&str> = acks.iter().filter(|(_, by)| by.len() > 1).map(|(id, _)| id).collect();
        assert!(twice.is_empty(), "acked twice: {twice:?}");
        let late = all.iter().filter(|h| h.0 == "canary").count();
        eprintln!("rollout-bad: {} handled, {} by the candidate, {} nacked", all.len(), late, nacked.len());

        traffic.stop_subscribers().await;
        gw.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(150), run).await.expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_candidate_walks_its_steps_and_is_promoted_by_the_judge() {
    let _serial = ONE_AT_A_TIME.lock().await;
    init_logs();
    let cluster = mock_cluster(PARTITIONS);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("rollout-good");
    let run = async {
        let gw = start_gateway(rollout_config(&bootstrap, &group)).await;
        let mut traffic = Traffic::start(&gw, &bootstrap, never, 60).await;

        gw.control().start_rollout(ROUTE, plan(&[10, 50]), analysis()).await.expect("starts");
        let over = poll_until(Duration::from_secs(60), || rollout_now(&gw), |r| !r.active()).await;
        let said: Vec<&str> = over.progress.history.iter().map(|e| e.what.as_str()).collect();
        assert_eq!(over.progress.phase, Phase::Promoted, "{said:?}");
        assert_eq!(said.len(), 3, "started, step 1 passed, promoted: {said:?}");
        assert!(said[1].starts_with("step 1 passed: canary at 50 %"), "{said:?}");
        assert_eq!(weights_now(&gw).await, [("canary".into(), 100), ("stable".into(), 0)].into());

        // Promoted is final: an operator's abort now is refused, naming why.
        let refused = gw.control().steer_rollout(ROUTE, Input::Abort).await.expect_err("over");
        assert!(matches!(refused, AdminError::Rollout(_)), "{refused}");
        assert!(refused.to_string().contains("is over (promoted)"), "{refused}");

        traffic.producing.abort();
        traffic.stop_subscribers().await;
        gw.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(150), run).await.expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_is_refused_where_it_cannot_work_and_a_pause_holds_it() {
    let _serial = ONE_AT_A_TIME.lock().await;
    init_logs();
    let cluster = mock_cluster(PARTITIONS);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("rollout-refused");
    let run = async {
        // No split label: nothing to move weights between.
        let plain = start_gateway(config(&bootstrap, &group)).await;
        let error = plain.control().start_rollout(ROUTE, plan(&[10]), analysis()).await.expect_err("refused");
        assert!(error.to_string().contains("set split_label"), "{error}");
        plain.shutdown().await;

        let mut at_most_once = rollout_config(&bootstrap, &group);
        at_most_once.routes[0].delivery = fanout_gateway::config::DeliveryMode::AtMostOnce;
        let gw = start_gateway(at_most_once).await;
        let error = gw.control().start_rollout(ROUTE, plan(&[10]), analysis()).await.expect_err("refused");
        assert!(error.to_string().contains("a rollout needs redelivery"), "{error}");
        gw.shutdown().await;

        let gw = start_gateway(rollout_config(&bootstrap, &group)).await;
        // A typo'd candidate: refused as a weight change to it would be.
        let mut typo = plan(&[10]);
        typo.candidate = "canray".into();
        let error = gw.control().start_rollout(ROUTE, typo, analysis()).await.expect_err("refused");
        assert!(error.to_string().contains("cohort `canray` is not one route"), "{error}");
        // A plan that does not hold together names its field.
        let error = gw.control().start_rollout(ROUTE, plan(&[50, 10]), analysis()).await.expect_err("refused");
        assert!(error.to_string().contains("rollout.plan.steps[1].weight"), "{error}");
        // A candidate with no subscriber on a route that holds: its share would wait.
        let error = gw.control().start_rollout(ROUTE, plan(&[10]), analysis()).await.expect_err("refused");
        assert!(error.to_string().contains("cohort `canary` would get 10%"), "{error}");
        assert!(rollout_now_or_none(&gw).is_none(), "nothing refused was written");

        let handled = Handled::default();
        let (stop, stopped) = watch::channel(false);
        let stable = subscriber(gw.endpoint(), "stable", handled.clone(), never, stopped.clone());
        let canary = subscriber(gw.endpoint(), "canary", handled.clone(), never, stopped);
        poll_until(Duration::from_secs(20), || both_subscribed(&gw), |ok| *ok).await;
        gw.control().start_rollout(ROUTE, plan(&[10, 50]), analysis()).await.expect("starts");
        let again = gw.control().start_rollout(ROUTE, plan(&[10]), analysis()).await.expect_err("one at a time");
        assert!(again.to_string().contains("in a rollout of canary already"), "{again}");
        // Setting weights by hand during a rollout is refused: the rollout owns them.
        let by_hand = [("stable".to_string(), 50), ("canary".to_string(), 50)].into();
        let error = gw
            .control()
            .set_weights(ROUTE, by_hand, fanout_gateway::admin::WeightChange { force: true, dry_run: false })
            .await
            .expect_err("the rollout owns the weights");
        assert!(error.to_string().contains("pause, promote or abort it"), "{error}");

        let paused = gw.control().steer_rollout(ROUTE, Input::Pause).await.expect("pauses");
        assert_eq!(paused.progress.phase, Phase::Paused { step: 0 });
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(rollout_now(&gw).await.progress.phase, Phase::Paused { step: 0 }, "a pause holds the step");
        let aborted = gw.control().steer_rollout(ROUTE, Input::Abort).await.expect("aborts");
        assert_eq!(aborted.progress.phase, Phase::Aborted { step: 0 });
        assert_eq!(weights_now(&gw).await, [("canary".into(), 0), ("stable".into(), 100)].into());

        let _ = stop.send(true);
        let _ = tokio::join!(stable, canary);
        gw.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(120), run).await.expect("test finished in time");
}

fn rollout_now_or_none(gw: &GatewayHandle) -> Option<Rollout> {
    gw.control().rollout(ROUTE).expect("route").rollout
}

async fn both_subscribed(gw: &GatewayHandle) -> bool {
    let status = gw.control().routes_status(Some(ROUTE)).await.expect("status");
    status[0].snapshot.cohorts.iter().filter(|c| c.subscribers > 0).count() == 2
}

const TOKEN: &str = "rollout-token";

fn file_config(bootstrap: &str, group: &str, token_file: &std::path::Path) -> String {
    format!(
        r#"# the gateway of the rollout test
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token_file = "{}"

[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{group}"
commit_interval_ms = 100
properties = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }}

[[routes]]
name = "{ROUTE}"
topics = ["{TOPIC}"]
split_label = "track"
weights = {{ stable = 100, canary = 0 }} # before the rollout
retry = {{ initial_backoff_ms = 50, max_backoff_ms = 200 }}
"#,
        token_file.display()
    )
}

/// What `fanoutctl rollout status -o json` says of the first replica.
async fn ctl_status(admin: &str) -> serde_json::Value {
    let (code, out, err) = fanoutctl(&["--gateway", admin, "-o", "json", "rollout", "status", ROUTE]).await;
    assert_eq!(code, 0, "{out}{err}");
    let all: serde_json::Value = serde_json::from_str(&out).expect("json");
    all[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanoutctl_drives_a_rollout_kept_in_the_config_file_across_a_restart() {
    let _serial = ONE_AT_A_TIME.lock().await;
    init_logs();
    let cluster = mock_cluster(PARTITIONS);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("rollout-ctl");
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).expect("token");
    let token = token_file.display().to_string();
    let path = dir.path().join("fanout.toml");
    std::fs::write(&path, file_config(&bootstrap, &group, &token_file)).expect("config");
    let run = async {
        let gw = start_gateway_from_file(&path).await;
        let admin = gw.admin_addr().to_string();
        let mut traffic = Traffic::start(&gw, &bootstrap, never, 60).await;

        // Without the token a rollout cannot start.
        let start = [
            "rollout",
            "start",
            ROUTE,
            "--stable",
            "stable",
            "--candidate",
            "canary",
            "--steps",
            "10,50",
            "--hold",
            "10m",
            "--look-every",
            "250ms",
        ];
        let (code, _, err) = fanoutctl(&[&["--gateway", &admin][..], &start[..]].concat()).await;
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("Unauthenticated") || err.contains("authorization"), "{err}");
        let (code, out, err) =
            fanoutctl(&[&["--gateway", &admin, "--token-file", &token][..], &start[..]].concat()).await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("route orders: rolling out canary over stable: step 1 of 2, canary at 10 %"), "{out}");

        // Kept where the weights are, beside them, the file's comments untouched.
        let text = std::fs::read_to_string(&path).expect("reads");
        assert!(text.contains("weights = { canary = 10, stable = 90 }"), "{text}");
        assert!(text.contains("[routes.rollout]") && text.contains("# the gateway of the rollout test"), "{text}");

        // Each replica's latest look shows in the status and on /metrics (what the judge says
        // of the candidate is the other tests' business; the step is held for ten minutes).
        let looked =
            poll_until(Duration::from_secs(30), || ctl_status(&admin), |s| s["look"]["verdict"].is_string()).await;
        assert!(["pass", "inconclusive"].contains(&looked["look"]["verdict"].as_str().unwrap_or("")), "{looked}");
        assert_eq!(looked["phase"], "running", "{looked}");
        assert_eq!(looked["candidate_weight"], 10, "{looked}");
        let (_, series) = scrape(gw.admin_addr()).await;
        let looks: f64 = ["pass", "inconclusive", "fail"]
            .iter()
            .filter_map(|v| series.get(&format!("fanout_rollout_looks_total{{route=\"{ROUTE}\",verdict=\"{v}\"}}")))
            .sum();
        assert!(looks >= 1.0, "fanout_rollout_looks_total in {series:?}");
        let (code, table, err) = fanoutctl(&["--gateway", &admin, "rollout", "status", ROUTE]).await;
        assert_eq!(code, 0, "{err}");
        assert!(table.contains("VERDICT") && table.contains("started: canary at 10 %"), "{table}");
        assert!(table.contains(">1 "), "the current step is marked: {table}");

        // A restart finds the rollout where it was.
        let before = rollout_now(&gw).await;
        traffic.stop_subscribers().await;
        gw.shutdown().await;
        let gw = start_gateway_from_file(&path).await;
        let admin = gw.admin_addr().to_string();
        assert_eq!(rollout_now(&gw).await, before, "the same record after the restart");
        assert_eq!(weights_now(&gw).await, [("canary".into(), 10), ("stable".into(), 90)].into());

        // Paused, resumed, then aborted by the operator.
        for (action, phase) in [("pause", "paused"), ("resume", "running"), ("abort", "aborted")] {
            let (code, out, err) =
                fanoutctl(&["--gateway", &admin, "--token-file", &token, "rollout", action, ROUTE]).await;
            assert_eq!(code, 0, "{action}: {out}{err}");
            assert_eq!(ctl_status(&admin).await["phase"], phase, "{action}");
        }
        let text = std::fs::read_to_string(&path).expect("reads");
        assert!(text.contains("weights = { canary = 0, stable = 100 }"), "{text}");
        assert!(text.contains("rolled back: aborted by an operator"), "{text}");
        let (code, _, err) =
            fanoutctl(&["--gateway", &admin, "--token-file", &token, "rollout", "promote", ROUTE]).await;
        assert_eq!(code, 1);
        assert!(err.contains("is over (aborted); start another"), "{err}");

        // Exported for dashboards and alerts: the phase, the step and what the judge said.
        let (exposition, series) = scrape(gw.admin_addr()).await;
        assert_eq!(promtool_check(&exposition), "", "promtool accepts the exposition");
        let phase = |p: &str| format!("fanout_rollout_phase{{route=\"{ROUTE}\",candidate=\"canary\",phase=\"{p}\"}}");
        assert_eq!(series.get(&phase("aborted")), Some(&1.0), "{exposition}");
        assert_eq!(series.get(&phase("running")), Some(&0.0), "{exposition}");
        assert_eq!(series.get(&format!("fanout_rollout_candidate_weight{{route=\"{ROUTE}\"}}")), Some(&0.0));

        // The admin API's reflection lists the rollout calls, for grpcurl.
        let descriptor = admin_descriptor(&gw.admin_endpoint()).await;
        for call in ["StartRollout", "GetRollout", "SteerRollout"] {
            assert!(descriptor.contains(call), "{call} in the reflected contract");
        }

        traffic.producing.abort();
        gw.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(180), run).await.expect("test finished in time");
}

/// The admin contract as the admin port's reflection serves it (its descriptor's text).
async fn admin_descriptor(endpoint: &str) -> String {
    use tonic_reflection::pb::v1;
    let channel = tonic::transport::Channel::from_shared(endpoint.to_string())
        .expect("endpoint")
        .connect()
        .await
        .expect("connects");
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::FileContainingSymbol(
            "fanout.admin.v1.Admin".into(),
        )),
    };
    let mut answers = v1::server_reflection_client::ServerReflectionClient::new(channel)
        .server_reflection_info(futures::stream::iter(vec![request]))
        .await
        .expect("reflection")
        .into_inner();
    let answer = futures::StreamExt::next(&mut answers).await.expect("an answer").expect("ok").message_response;
    let Some(v1::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) = answer else {
        panic!("not a descriptor: {answer:?}")
    };
    files.file_descriptor_proto.iter().map(|f| String::from_utf8_lossy(f).into_owned()).collect()
}
