//! Deploy scenarios on the embedded demo: a blue-green cutover and a canary ramp, done by
//! switching route weights while messages flow, with what an operator would check measured.
//!
//! Subscribers of two cohorts (labels `track=blue|green` or `track=stable|canary`, sent in
//! their Hello: static discovery) ack everything. Each switch is a route update on the running
//! gateway; the consumer group is never touched, and the report says so (`rebalances`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::mocking::MockCluster;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::demo::{committed_offsets, DemoError, Produced};
use crate::rollout_scenario::Candidate;
use fanout_client::{stream, Delivery, Nack, Replicas, Subscriber};
use fanout_gateway::config::{Config, EmptyCohort, RouteConfig};
use fanout_gateway::gateway;

pub const TOPIC: &str = "deploy-events";
pub const ROUTE: &str = "orders";
pub const SPLIT_LABEL: &str = "track";
const GROUP: &str = "fanout-scenario";
/// Distinct keys: many, so that each phase's observed split measures the weights, not the
/// luck of a few keys.
const KEYS: u64 = 50_000;
/// Keys of messages the split is measured on, and of the hot keys that come in bursts.
const SPLIT_PREFIX: &str = "customer-";
const HOT_PREFIX: &str = "hot-";
const HOT_KEYS: u64 = 16;
/// After a switch, how long deliveries are left out of the split: those already sent (in a
/// window, or on the wire) were routed under the old weights.
const SETTLE: Duration = Duration::from_millis(500);
/// Time a subscriber spends on a delivery before it acks, in microseconds: it varies, as real
/// work does, so a key served by two subscribers at once would show up as reordering.
pub(crate) const PROCESSING_US: std::ops::Range<u64> = 1_000..10_000;
/// Each subscriber's window, and its handlers at once.
pub(crate) const WINDOW: u32 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// blue 100 / green 0, then blue 0 / green 100.
    BlueGreen,
    /// canary 0 → 10 → 50 → 100 (stable takes the rest).
    Canary,
    /// The gateway's own rollout, 10 → 50 → 100 % judged at each step, of a candidate that
    /// behaves as stable does: promoted.
    CanaryGood,
    /// The same of a candidate that nacks a fifth of its messages: rolled back.
    CanaryBad,
    /// The same of a candidate five times slower: rolled back.
    CanarySlow,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Self::BlueGreen => "blue-green",
            Self::Canary => "canary",
            Self::CanaryGood | Self::CanaryBad | Self::CanarySlow => self.rollout().map_or("", Candidate::name),
        }
    }

    /// For a rollout scenario (see [`crate::rollout_scenario`]), how its candidate behaves.
    pub fn rollout(self) -> Option<Candidate> {
        match self {
            Self::BlueGreen | Self::Canary => None,
            Self::CanaryGood => Some(Candidate::Good),
            Self::CanaryBad => Some(Candidate::Failing),
            Self::CanarySlow => Some(Candidate::Slow),
        }
    }

    /// The two cohorts: (old, new).
    pub fn cohorts(self) -> (&'static str, &'static str) {
        match self {
            Self::BlueGreen => ("blue", "green"),
            Self::Canary | Self::CanaryGood | Self::CanaryBad | Self::CanarySlow => ("stable", "canary"),
        }
    }

    /// Weight of the new cohort in each phase, in percent.
    /// (A rollout scenario's steps are its rollout's: see [`crate::rollout_scenario`].)
    pub fn phases(self) -> &'static [u32] {
        match self {
            Self::BlueGreen => &[0, 100],
            Self::Canary | Self::CanaryGood | Self::CanaryBad | Self::CanarySlow => &[0, 10, 50, 100],
        }
    }
}

#[derive(Debug, Clone)]
pub struct ScenarioOptions {
    pub duration: Duration,
    /// Subscribers per cohort.
    pub per_cohort: usize,
    pub rate: u32,
    pub partitions: i32,
    pub listen: String,
}

impl Default for ScenarioOptions {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(20),
            per_cohort: 2,
            rate: 4_000,
            partitions: 8,
            listen: "127.0.0.1:50051".into(),
        }
    }
}

/// What an operator checks after a deploy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScenarioReport {
    pub name: String,
    /// Consumer-group rebalances after the gateway's first assignment.
    pub rebalances: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// Messages of a key processed after a later message of the same key.
    pub order_violations: u64,
    /// Longest time without any delivery while producing.
    pub max_gap_ms: u64,
    /// Largest distance, in percentage points, between the new cohort's observed share and its
    /// weight, over the phases (each measured from half a second after its switch).
    pub split_error_pct: f64,
    /// Observed share of the new cohort per phase, in percent.
    pub phase_shares: Vec<f64>,
    pub produced: u64,
}

impl std::fmt::Display for ScenarioReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "scenario: name={} rebalances={} lost={} duplicates={} order_violations={} max_gap_ms={} split_error_pct={:.2}",
            self.name, self.rebalances, self.lost, self.duplicates, self.order_violations, self.max_gap_ms, self.split_error_pct
        )
    }
}

/// The phase in force and when it began.
#[derive(Debug, Clone, Copy)]
struct Phase {
    index: usize,
    since: Instant,
}

/// What the subscribers saw.
#[derive(Default)]
struct Observed {
    seen: HashSet<String>,
    duplicates: u64,
    /// Highest offset processed per key.
    last_offset: HashMap<Vec<u8>, i64>,
    order_violations: u64,
    /// Deliveries per phase and cohort (first attempts, past the phase's settling time).
    per_phase: HashMap<(usize, bool), u64>,
    last_delivery: Option<Instant>,
    max_gap: Duration,
}

/// The route under test with the new cohort at `new_weight` percent.
fn route(scenario: Scenario, new_weight: u32) -> RouteConfig {
    let (old, new) = scenario.cohorts();
    let mut r = RouteConfig::new(ROUTE, &[TOPIC]);
    r.split_label = Some(SPLIT_LABEL.into());
    r.weights = [(old.to_string(), 100 - new_weight), (new.to_string(), new_weight)].into_iter().collect();
    r.empty_cohort = EmptyCohort::Hold;
    r.max_in_flight = 200;
    r.default_in_flight = 100;
    r
}

/// Runs a scenario; `live` receives a line per second.
pub async fn run(
    scenario: Scenario,
    options: ScenarioOptions,
    live: impl Fn(&str),
) -> Result<ScenarioReport, DemoError> {
    let cluster = MockCluster::new(3)?;
    cluster.create_topic(TOPIC, options.partitions, 3)?;
    let bootstrap = cluster.bootstrap_servers();
    let mut config = Config::single_route(&bootstrap, GROUP, ROUTE, &[TOPIC]);
    config.routes = vec![route(scenario, scenario.phases()[0])];
    config.server.listen = options.listen.clone();
    let group = config.routes[0].group(&config.kafka);
    // The mock broker answers a fetch with no new data only after fetch.wait.max.ms (a real
    // broker answers as soon as data arrives); keep that wait short so that gaps measure the
    // gateway, not the mock.
    config.kafka.properties.insert("fetch.wait.max.ms".into(), "20".into());
    let gw = gateway::start(config).await?;
    let stats = gw.stats();

    let phase = Arc::new(Mutex::new(Phase { index: 0, since: Instant::now() - SETTLE }));
    let observed = Arc::new(Mutex::new(Observed::default()));
    let (stop_tx, stop) = watch::channel(false);
    let (old, new) = scenario.cohorts();
    let mut subscribers = Vec::new();
    for cohort in [old, new] {
        for i in 0..options.per_cohort {
            subscribers.push(tokio::spawn(subscriber(
                gw.endpoint(),
                format!("{cohort}-{i}"),
                cohort.to_string(),
                cohort == new,
                phase.clone(),
                observed.clone(),
                stop.clone(),
            )));
        }
    }

    // Wait for the group to assign the partitions, so that the count of rebalances that
    // follows is the scenario's own.
    let ready = Instant::now();
    while stats.counters().rebalances == 0 && ready.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rebalances_at_start = stats.counters().rebalances;

    let mut producer = Produced::new(&bootstrap)?;
    let phases = scenario.phases();
    let phase_len = options.duration / phases.len() as u32;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let per_tick = (options.rate / 100).max(1);
    let mut seq: u64 = 0;
    let mut ticks: u64 = 0;
    let mut current = 0usize;
    let mut next_live = Duration::from_secs(1);
    while started.elapsed() < options.duration {
        let waiting = producer.waiting();
        tokio::select! {
            _ = tick.tick() => {}
            _ = producer.next_report(), if waiting => continue,
        }
        let due = ((started.elapsed().as_nanos() / phase_len.as_nanos().max(1)) as usize).min(phases.len() - 1);
        if due != current {
            current = due;
            let unknown = gw.update_routes(vec![route(scenario, phases[current])]).await;
            debug_assert!(unknown.is_empty());
            // Deliveries received from here on were routed under the new weights, but for those
            // already on their way: the split is measured after SETTLE.
            *phase.lock() = Phase { index: current, since: Instant::now() };
            info!(phase = current, new_weight = phases[current], "weights switched");
        }
        ticks += 1;
        for i in 0..per_tick {
            // A quarter of the messages have one of a few hot keys, each with a message every
            // few milliseconds, so that a key that moves has messages in flight when it does
            // (the case drain-before-move exists for); the rest have keys of their own, and the
            // split is measured on those.
            let key = if i % 4 == 0 {
                format!("{HOT_PREFIX}{}", (ticks + u64::from(i)) % HOT_KEYS)
            } else {
                format!("{SPLIT_PREFIX}{}", seq % KEYS)
            };
            producer.send(TOPIC, &key, &format!("{{\"seq\":{seq}}}"));
            seq += 1;
        }
        if started.elapsed() >= next_live {
            next_live += Duration::from_secs(1);
            live(&live_line(scenario, started.elapsed(), phases[current], &observed, current));
        }
    }
    let (produced, produced_total) = producer.finish().await;

    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && (observed.lock().seen.len() as u64) < produced_total {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rebalances = stats.counters().rebalances - rebalances_at_start;
    // Let the last acks be committed, then stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Subscribers drain before the gateway stops, as a deploy would have them.
    let _ = stop_tx.send(true);
    for s in subscribers {
        let _ = s.await;
    }
    gw.shutdown().await;

    let committed = committed_offsets(&bootstrap, &group, TOPIC, options.partitions)?;
    let observed = observed.lock();
    let mut lost = 0;
    for (p, offsets) in produced.iter() {
        for o in offsets {
            let id = format!("{TOPIC}/{p}/{o}");
            let committed_past = committed.get(p).is_some_and(|c| c > o);
            if !observed.seen.contains(&id) || !committed_past {
                lost += 1;
            }
        }
    }
    let mut phase_shares = Vec::new();
    let mut split_error: f64 = 0.0;
    for (i, weight) in phases.iter().enumerate() {
        let to_new = observed.per_phase.get(&(i, true)).copied().unwrap_or(0) as f64;
        let to_old = observed.per_phase.get(&(i, false)).copied().unwrap_or(0) as f64;
        let share = if to_new + to_old > 0.0 { 100.0 * to_new / (to_new + to_old) } else { 0.0 };
        phase_shares.push(share);
        split_error = split_error.max((share - f64::from(*weight)).abs());
    }
    drop(cluster);
    Ok(ScenarioReport {
        name: scenario.name().to_string(),
        rebalances,
        lost,
        duplicates: observed.duplicates,
        order_violations: observed.order_violations,
        max_gap_ms: observed.max_gap.as_millis() as u64,
        split_error_pct: split_error,
        phase_shares,
        produced: produced_total,
    })
}

fn live_line(scenario: Scenario, elapsed: Duration, weight: u32, observed: &Mutex<Observed>, phase: usize) -> String {
    let o = observed.lock();
    let to_new = o.per_phase.get(&(phase, true)).copied().unwrap_or(0);
    let to_old = o.per_phase.get(&(phase, false)).copied().unwrap_or(0);
    let (old, new) = scenario.cohorts();
    let share = if to_new + to_old > 0 { 100.0 * to_new as f64 / (to_new + to_old) as f64 } else { 0.0 };
    format!(
        "[{:>3}s] weights {old}={} {new}={weight}  this phase: {old}={to_old} {new}={to_new} ({new} {share:.1}%)  delivered={} duplicates={} order_violations={}",
        elapsed.as_secs(),
        100 - weight,
        o.seen.len(),
        o.duplicates,
        o.order_violations,
    )
}

/// A subscriber of one cohort, built on the subscriber library: its handler records every
/// delivery, works on it a moment, then checks the key's order once the work is done (what a
/// key's later message must not overtake). As many handlers as the window, one at a time per
/// key, like a service with a worker pool.
async fn subscriber(
    endpoint: String,
    name: String,
    cohort: String,
    is_new: bool,
    phase: Arc<Mutex<Phase>>,
    observed: Arc<Mutex<Observed>>,
    stop: watch::Receiver<bool>,
) {
    let handler = move |d: Delivery| {
        let (phase, observed) = (phase.clone(), observed.clone());
        async move {
            let now = Instant::now();
            let (current, settled) = {
                let p = phase.lock();
                (p.index, p.since.elapsed() >= SETTLE)
            };
            {
                let mut o = observed.lock();
                if let Some(last) = o.last_delivery {
                    o.max_gap = o.max_gap.max(now.duration_since(last));
                }
                o.last_delivery = Some(now);
                if !o.seen.insert(stream::id_of(&d)) {
                    o.duplicates += 1;
                } else if settled && d.key.as_ref().is_some_and(|k| k.starts_with(SPLIT_PREFIX.as_bytes())) {
                    *o.per_phase.entry((current, is_new)).or_default() += 1;
                }
            }
            tokio::time::sleep(Duration::from_micros(rand::random_range(PROCESSING_US.clone()))).await;
            let mut o = observed.lock();
            let last = o.last_offset.entry(d.key.as_ref().map(|k| k.to_vec()).unwrap_or_default()).or_insert(-1);
            if d.offset < *last {
                o.order_violations += 1;
            } else {
                *last = d.offset;
            }
            Ok::<(), Nack>(())
        }
    };
    run_in_cohort(endpoint, name, &cohort, handler, stop).await;
}

/// Runs `handler` as a subscriber of route [`ROUTE`] in `cohort` (its [`SPLIT_LABEL`]) until
/// `stop`, with [`WINDOW`] deliveries in flight and as many handlers at once, one at a time
/// per key, like a service with a worker pool: what every scenario's subscribers share.
pub(crate) async fn run_in_cohort<H: fanout_client::Handler>(
    endpoint: String,
    name: String,
    cohort: &str,
    handler: H,
    mut stop: watch::Receiver<bool>,
) {
    let built = Subscriber::builder(ROUTE)
        .replicas(Replicas::list([endpoint]))
        .name(name.clone())
        .label(SPLIT_LABEL, cohort)
        .max_in_flight(WINDOW)
        .concurrency(WINDOW as usize)
        .build();
    let subscriber = match built {
        Ok(subscriber) => subscriber,
        Err(error) => return warn!(%error, name, "scenario subscriber not started"),
    };
    let stopped = async move {
        let _ = stop.wait_for(|&stopped| stopped).await;
    };
    if let Err(error) = subscriber.run(handler, stopped).await {
        warn!(%error, name, "scenario subscriber ended");
    }
}
