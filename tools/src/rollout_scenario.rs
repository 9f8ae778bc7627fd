//! Rollout scenarios on the embedded demo: the gateway's own rollout moves route `orders` from
//! the stable cohort to a candidate while messages flow, judging the candidate at every step,
//! and the report says what an operator checks afterwards: promoted or rolled back, at which
//! step and after how many of the candidate's deliveries, how soon after the verdict the
//! candidate stopped getting new messages, and that nothing was lost, nothing was delivered
//! twice beyond what the candidate failed or held, and no key was reordered.
//!
//! - `canary-good`: the candidate behaves as the stable cohort does: promoted to 100 %.
//! - `canary-bad`: the candidate nacks a fifth of its messages: rolled back.
//! - `canary-slow`: the candidate takes five times as long per message: rolled back.
//!
//! Which messages a bad candidate fails, and every handler's time, follow `--seed`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rdkafka::mocking::MockCluster;
use tokio::sync::watch;

use crate::demo::{committed_offsets, DemoError, Produced};
// The same route, cohort label, handler times and windows as the weight-switching scenarios.
use crate::scenario::{run_in_cohort, PROCESSING_US, ROUTE, SPLIT_LABEL, WINDOW};
use fanout_client::{stream, Delivery, Nack};
use fanout_gateway::config::{Config, EmptyCohort, RouteConfig};
use fanout_gateway::gateway::{self, GatewayHandle};
use fanout_gateway::rollout::steps::{Phase, Plan, Step};
use fanout_gateway::rollout::{Analysis, Rollout};

const TOPIC: &str = "rollout-events";
const STABLE: &str = "stable";
const CANDIDATE: &str = "canary";
const GROUP: &str = "fanout-rollout-scenario";
const KEYS: u64 = 5_000;
/// How much slower `canary-slow` is.
const SLOWER: u64 = 5;
/// One message in this many is failed by `canary-bad`.
const FAILS_ONE_IN: u64 = 5;

/// How the candidate behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Candidate {
    /// Like the stable cohort.
    Good,
    /// Nacks one message in [`FAILS_ONE_IN`].
    Failing,
    /// [`SLOWER`] times the stable cohort's time per message.
    Slow,
}

impl Candidate {
    pub fn name(self) -> &'static str {
        match self {
            Self::Good => "canary-good",
            Self::Failing => "canary-bad",
            Self::Slow => "canary-slow",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RolloutOptions {
    /// Longest the rollout may take; the scenario ends sooner once it is over.
    pub limit: Duration,
    pub per_cohort: usize,
    pub rate: u32,
    pub partitions: i32,
    pub listen: String,
    pub seed: u64,
    /// The candidate's share at each step, in percent.
    pub steps: Vec<u32>,
    pub hold: Duration,
}

impl Default for RolloutOptions {
    fn default() -> Self {
        Self {
            limit: Duration::from_secs(60),
            per_cohort: 2,
            rate: 4_000,
            partitions: 8,
            listen: "127.0.0.1:50051".into(),
            seed: 1,
            steps: vec![10, 50],
            hold: Duration::from_secs(3),
        }
    }
}

/// What an operator checks after a rollout.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RolloutReport {
    pub name: String,
    pub seed: u64,
    /// promoted, aborted, or still running (the limit passed).
    pub outcome: String,
    /// The step it ended at, from 1.
    pub step: usize,
    /// Why it ended: the history's last entry.
    pub why: String,
    /// The candidate's settled deliveries in the step the judge ended it at (on this replica),
    /// and of those failed.
    pub candidate_deliveries: u64,
    pub candidate_failures: u64,
    /// After a rollback, from the verdict to the last new message (first attempt) the
    /// candidate received; 0 when none came after it.
    pub candidate_new_after_end_ms: u64,
    pub rebalances: u64,
    pub produced: u64,
    pub lost: u64,
    /// Messages handled more than once.
    pub duplicates: u64,
    /// Of those, messages the candidate had not failed: what a rollout must not cause.
    pub unexplained_duplicates: u64,
    /// First attempts of a key handled after a later message of the same key.
    pub order_violations: u64,
}

impl std::fmt::Display for RolloutReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "scenario: name={} seed={} outcome={} step={} candidate_deliveries={} candidate_failures={} \
             candidate_new_after_end_ms={} rebalances={} lost={} duplicates={} unexplained_duplicates={} \
             order_violations={} why=\"{}\"",
            self.name,
            self.seed,
            self.outcome,
            self.step,
            self.candidate_deliveries,
            self.candidate_failures,
            self.candidate_new_after_end_ms,
            self.rebalances,
            self.lost,
            self.duplicates,
            self.unexplained_duplicates,
            self.order_violations,
            self.why
        )
    }
}

/// What the subscribers saw.
#[derive(Default)]
struct Observed {
    /// Times each delivery id was handled.
    handled: HashMap<String, u32>,
    acked: HashSet<String>,
    /// Ids the candidate failed (nacked).
    failed_by_candidate: HashSet<String>,
    /// Ids the candidate received (it may have been stopped with some unacked).
    to_candidate: HashSet<String>,
    /// Highest offset of a first attempt processed per key.
    last_offset: HashMap<Vec<u8>, i64>,
    order_violations: u64,
    /// When the candidate last received a first attempt.
    candidate_last_new: Option<Instant>,
}

fn route() -> RouteConfig {
    let mut r = RouteConfig::new(ROUTE, &[TOPIC]);
    r.split_label = Some(SPLIT_LABEL.into());
    r.weights = [(STABLE.to_string(), 100), (CANDIDATE.to_string(), 0)].into();
    r.empty_cohort = EmptyCohort::Hold;
    r.max_in_flight = 200;
    r.default_in_flight = WINDOW;
    r.retry.initial_backoff_ms = 100;
    r.retry.max_backoff_ms = 1_000;
    r
}

/// The judge's defaults, looking four times a second: at 4 000 msg/s a tenth is 400 a second
/// for the candidate, and a look a second would let a bad one take 400 before it is seen.
fn analysis() -> Analysis {
    Analysis { look_every_ms: 250, ..Analysis::default() }
}

fn plan(options: &RolloutOptions) -> Plan {
    Plan {
        stable: STABLE.into(),
        candidate: CANDIDATE.into(),
        steps: options.steps.iter().map(|&weight| Step { weight, hold: options.hold, min_deliveries: 200 }).collect(),
    }
}

/// Runs one rollout scenario; `live` receives a line whenever the rollout moves.
pub async fn run(
    candidate: Candidate,
    options: RolloutOptions,
    live: impl Fn(&str),
) -> Result<RolloutReport, DemoError> {
    let cluster = MockCluster::new(3)?;
    cluster.create_topic(TOPIC, options.partitions, 3)?;
    let bootstrap = cluster.bootstrap_servers();
    let mut config = Config::single_route(&bootstrap, GROUP, ROUTE, &[TOPIC]);
    config.routes = vec![route()];
    config.server.listen = options.listen.clone();
    config.server.admin_listen = "127.0.0.1:0".into();
    // See scenario.rs: the mock answers an empty fetch only after fetch.wait.max.ms.
    config.kafka.properties.insert("fetch.wait.max.ms".into(), "20".into());
    let group = config.routes[0].group(&config.kafka);
    let gw = gateway::start(config).await?;
    let stats = gw.stats();

    let observed = Arc::new(Mutex::new(Observed::default()));
    let (stop_tx, stop) = watch::channel(false);
    let mut subscribers = Vec::new();
    for (cohort, behaviour) in [(STABLE, Candidate::Good), (CANDIDATE, candidate)] {
        for i in 0..options.per_cohort {
            let seed = options.seed.wrapping_mul(1_000).wrapping_add(subscribers.len() as u64);
            subscribers.push(tokio::spawn(subscriber(
                gw.endpoint(),
                format!("{cohort}-{i}"),
                cohort,
                behaviour,
                seed,
                observed.clone(),
                stop.clone(),
            )));
        }
    }
    let ready = Instant::now();
    while stats.counters().rebalances == 0 && ready.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rebalances_at_start = stats.counters().rebalances;

    let mut producer = Produced::new(&bootstrap)?;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let per_tick = (options.rate / 100).max(1);
    let mut seq: u64 = 0;
    let mut rng = rand::rngs::StdRng::seed_from_u64(options.seed);
    let started = Instant::now();
    let mut began: Option<Instant> = None;
    let mut ended: Option<Instant> = None;
    let mut said = String::new();
    loop {
        let waiting = producer.waiting();
        tokio::select! {
            _ = tick.tick() => {}
            _ = producer.next_report(), if waiting => continue,
        }
        for _ in 0..per_tick {
            let key = format!("customer-{}", rng.random_range(0..KEYS));
            producer.send(TOPIC, &key, &format!("{{\"seq\":{seq}}}"));
            seq += 1;
        }
        // The rollout starts once the route keeps up with the producer, as a route is before one.
        if began.is_none() && started.elapsed() > Duration::from_secs(2) && keeps_up(&observed, producer.count) {
            gw.control().start_rollout(ROUTE, plan(&options), analysis()).await.map_err(admin)?;
            began = Some(Instant::now());
        }
        if began.is_some() {
            let rollout = rollout_of(&gw);
            let line = rollout.as_ref().map(progress_line).unwrap_or_default();
            if line != said {
                live(&line);
                said = line;
            }
            if ended.is_none() && rollout.as_ref().is_some_and(|r| !r.active()) {
                ended = Some(Instant::now());
            }
        }
        // Two seconds of traffic after the end show where new messages go.
        let over = ended.is_some_and(|at| at.elapsed() >= Duration::from_secs(2));
        if over || started.elapsed() >= options.limit {
            break;
        }
    }
    let (produced, produced_total) = producer.finish().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && (observed.lock().acked.len() as u64) < produced_total {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rebalances = stats.counters().rebalances - rebalances_at_start;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rollout = rollout_of(&gw);
    let look = gw.control().rollout(ROUTE).ok().and_then(|v| v.look);
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
            if !observed.acked.contains(&id) || committed.get(p).is_none_or(|c| c <= o) {
                lost += 1;
            }
        }
    }
    let twice: Vec<&String> = observed.handled.iter().filter(|(_, n)| **n > 1).map(|(id, _)| id).collect();
    let unexplained = twice
        .iter()
        .filter(|id| !observed.failed_by_candidate.contains(**id) && !observed.to_candidate.contains(**id))
        .count();
    // Only a rollback stops the candidate's new messages; a promotion gives it all of them.
    let rolled_back = rollout.as_ref().is_some_and(|r| matches!(r.progress.phase, Phase::Aborted { .. }));
    let new_after_end = match (ended, observed.candidate_last_new) {
        (Some(end), Some(last)) if rolled_back && last > end => last.duration_since(end).as_millis() as u64,
        _ => 0,
    };
    drop(cluster);
    Ok(RolloutReport {
        name: candidate.name().to_string(),
        seed: options.seed,
        outcome: rollout.as_ref().map_or("not started", |r| r.progress.phase.name()).to_string(),
        step: rollout.as_ref().map_or(0, |r| r.step() + 1),
        why: rollout.as_ref().and_then(|r| r.progress.history.last()).map(|e| e.what.clone()).unwrap_or_default(),
        candidate_deliveries: look.as_ref().map_or(0, |l| l.candidate.deliveries),
        candidate_failures: look.as_ref().map_or(0, |l| l.candidate.failures),
        candidate_new_after_end_ms: new_after_end,
        rebalances,
        produced: produced_total,
        lost,
        duplicates: twice.len() as u64,
        unexplained_duplicates: unexplained as u64,
        order_violations: observed.order_violations,
    })
}

/// One line over several runs: how many ended each way, and the worst of what must be zero.
pub fn summary(reports: &[RolloutReport]) -> String {
    let count = |outcome: &str| reports.iter().filter(|r| r.outcome == outcome).count();
    let most = |pick: fn(&RolloutReport) -> u64| reports.iter().map(pick).max().unwrap_or(0);
    format!(
        "scenarios: name={} runs={} promoted={} aborted={} other={} max_lost={} max_unexplained_duplicates={} \
         max_order_violations={} max_rebalances={} max_candidate_new_after_end_ms={}",
        reports.first().map_or("", |r| r.name.as_str()),
        reports.len(),
        count("promoted"),
        count("aborted"),
        reports.len() - count("promoted") - count("aborted"),
        most(|r| r.lost),
        most(|r| r.unexplained_duplicates),
        most(|r| r.order_violations),
        most(|r| r.rebalances),
        most(|r| r.candidate_new_after_end_ms),
    )
}

fn admin(error: fanout_gateway::admin::AdminError) -> DemoError {
    DemoError::Rollout(error.to_string())
}

fn rollout_of(gw: &GatewayHandle) -> Option<Rollout> {
    gw.control().rollout(ROUTE).ok().and_then(|v| v.rollout)
}

/// Whether the subscribers have acked all but the last half second of what was produced.
fn keeps_up(observed: &Mutex<Observed>, produced: u64) -> bool {
    observed.lock().acked.len() as u64 + 2_000 >= produced && produced > 0
}

fn progress_line(r: &Rollout) -> String {
    let what = r.progress.history.last().map(|e| e.what.as_str()).unwrap_or_default();
    let phase = r.progress.phase.name();
    match r.progress.phase {
        Phase::Running { .. } | Phase::Paused { .. } => {
            format!("rollout: {phase}, step {} of {}: {what}", r.step() + 1, r.plan.steps.len())
        }
        Phase::Promoted | Phase::Aborted { .. } => format!("rollout: {phase}: {what}"),
    }
}

/// A subscriber of `cohort` behaving as `behaviour` says (see [`run_in_cohort`]).
async fn subscriber(
    endpoint: String,
    name: String,
    cohort: &'static str,
    behaviour: Candidate,
    seed: u64,
    observed: Arc<Mutex<Observed>>,
    stop: watch::Receiver<bool>,
) {
    let rng = Arc::new(Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)));
    let is_candidate = cohort == CANDIDATE;
    let handler = move |d: Delivery| {
        let (observed, rng) = (observed.clone(), rng.clone());
        async move {
            let id = stream::id_of(&d);
            let first = d.attempt <= 1;
            {
                let mut o = observed.lock();
                *o.handled.entry(id.clone()).or_default() += 1;
                if is_candidate {
                    o.to_candidate.insert(id.clone());
                    if first {
                        o.candidate_last_new = Some(Instant::now());
                    }
                }
            }
            let (work, fail) = {
                let mut rng = rng.lock();
                let work = rng.random_range(PROCESSING_US.clone());
                let slower = if behaviour == Candidate::Slow { SLOWER } else { 1 };
                (work * slower, behaviour == Candidate::Failing && fails(&id, seed))
            };
            tokio::time::sleep(Duration::from_micros(work)).await;
            let mut o = observed.lock();
            if first {
                let last = o.last_offset.entry(d.key.as_ref().map(|k| k.to_vec()).unwrap_or_default()).or_insert(-1);
                if d.offset < *last {
                    o.order_violations += 1;
                } else {
                    *last = d.offset;
                }
            }
            if fail {
                o.failed_by_candidate.insert(id);
                return Err(Nack::retry("the candidate fails this one"));
            }
            o.acked.insert(id);
            Ok::<(), Nack>(())
        }
    };
    run_in_cohort(endpoint, name, cohort, handler, stop).await;
}

/// Whether a failing candidate fails message `id` (the same every time it comes back).
fn fails(id: &str, seed: u64) -> bool {
    let h = id.bytes().fold(seed ^ 0x9e37_79b9_7f4a_7c15, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    h % FAILS_ONE_IN == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_candidate_fails_about_one_in_five_and_the_same_ones_each_time() {
        let ids: Vec<String> = (0..10_000).map(|i| format!("{TOPIC}/{}/{i}", i % 8)).collect();
        let failed = ids.iter().filter(|id| fails(id, 7)).count();
        assert!((1_700..2_300).contains(&failed), "{failed}");
        assert!(ids.iter().all(|id| fails(id, 7) == fails(id, 7)));
        let other = ids.iter().filter(|id| fails(id, 7) != fails(id, 8)).count();
        assert!(other > 1_000, "another seed picks other messages: {other}");
    }
}
