//! A route's rollout as it is kept in the source of truth, beside the route's weights (the
//! config file or the ConfigMap, `[routes.rollout]`): its plan, how it is judged, when it
//! started and where it stands. Every replica reads the same record and a restarted gateway
//! finds it again; the clock of its steps is the wall clock since `started_at_ms`, so a hold
//! means the same on every replica and across a restart.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::judge::Thresholds;
use super::steps::{self, Input, Move, Phase, Plan, Progress};

/// A rollout of one route.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    pub plan: Plan,
    #[serde(default)]
    pub analysis: Analysis,
    /// When it started, in milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    pub progress: Progress,
}

/// How a rollout's candidate is judged (see [`super::judge`]); every field has a default.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Analysis {
    /// How much higher the candidate's failure rate may be, absolute (0.02: two points).
    #[serde(default = "default_failure_rate_tolerance")]
    pub failure_rate_tolerance: f64,
    /// How much slower the candidate's acks may be, relative (0.25: a quarter).
    #[serde(default = "default_latency_tolerance")]
    pub latency_tolerance: f64,
    /// And absolute, in milliseconds, on top of the relative tolerance (see
    /// [`Thresholds::latency_allowance_ms`]).
    #[serde(default = "default_latency_allowance_ms")]
    pub latency_allowance_ms: f64,
    /// Settled deliveries each cohort needs in a step before the candidate may pass it.
    #[serde(default = "default_min_deliveries")]
    pub min_deliveries: u64,
    /// How often each replica looks at the step's traffic and asks the judge.
    #[serde(default = "default_look_every_ms")]
    pub look_every_ms: u64,
}

/// Two points: a candidate that fails two messages more in a hundred is worse than noise.
fn default_failure_rate_tolerance() -> f64 {
    0.02
}
/// A quarter: slower than that is a regression an operator would act on.
fn default_latency_tolerance() -> f64 {
    0.25
}
/// Ten milliseconds: what ack batching alone moves between cohorts of different shares.
fn default_latency_allowance_ms() -> f64 {
    Thresholds::default().latency_allowance_ms
}
/// Enough deliveries for the failure-rate bound to fall below two points.
fn default_min_deliveries() -> u64 {
    Thresholds::default().min_deliveries
}
/// Once a second: a failing candidate is rolled back within a second of the evidence.
fn default_look_every_ms() -> u64 {
    1_000
}

impl Default for Analysis {
    fn default() -> Self {
        Self {
            failure_rate_tolerance: default_failure_rate_tolerance(),
            latency_tolerance: default_latency_tolerance(),
            latency_allowance_ms: default_latency_allowance_ms(),
            min_deliveries: default_min_deliveries(),
            look_every_ms: default_look_every_ms(),
        }
    }
}

impl Analysis {
    /// The judge's thresholds with these settings.
    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            failure_rate_tolerance: self.failure_rate_tolerance,
            latency_tolerance: self.latency_tolerance,
            latency_allowance_ms: self.latency_allowance_ms,
            min_deliveries: self.min_deliveries,
            ..Thresholds::default()
        }
    }

    /// What is wrong with these settings: (field under `analysis`, what to fix).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if !(0.0..1.0).contains(&self.failure_rate_tolerance) {
            out.push(("failure_rate_tolerance", "must be at least 0 and below 1 (0.02: two points)".to_string()));
        }
        if !(0.0..=10.0).contains(&self.latency_tolerance) {
            out.push(("latency_tolerance", "must be 0 to 10 (0.25: a quarter slower)".to_string()));
        }
        if !(0.0..=60_000.0).contains(&self.latency_allowance_ms) {
            out.push(("latency_allowance_ms", "must be 0 to 60000 milliseconds".to_string()));
        }
        if !(100..=3_600_000).contains(&self.look_every_ms) {
            out.push(("look_every_ms", "must be 100 to 3600000".to_string()));
        }
        out
    }
}

impl Rollout {
    /// A rollout of `plan` starting at `now_ms` (Unix ms), and the weights it sets first.
    pub fn start(plan: Plan, analysis: Analysis, now_ms: u64) -> (Self, Move) {
        let (progress, first) = steps::start(&plan, Duration::ZERO);
        (Self { plan, analysis, started_at_ms: now_ms, progress }, first)
    }

    /// Its clock at `now_ms`: time since it started.
    pub fn clock(&self, now_ms: u64) -> Duration {
        Duration::from_millis(now_ms.saturating_sub(self.started_at_ms))
    }

    /// What `input` at `now_ms` does (see [`steps::decide`]).
    pub fn decide(&mut self, input: Input, now_ms: u64) -> Move {
        let now = self.clock(now_ms);
        steps::decide(&self.plan, &mut self.progress, input, now)
    }

    /// Whether it still moves weights: running or paused.
    pub fn active(&self) -> bool {
        matches!(self.progress.phase, Phase::Running { .. } | Phase::Paused { .. })
    }

    /// The step it stands at (the last one reached, once over).
    pub fn step(&self) -> usize {
        match self.progress.phase {
            Phase::Running { step, .. } | Phase::Paused { step } | Phase::Aborted { step } => step,
            Phase::Promoted => self.plan.steps.len().saturating_sub(1),
        }
    }

    /// The candidate's share where it stands, in percent.
    pub fn candidate_weight(&self) -> u32 {
        match self.progress.phase {
            Phase::Running { step, .. } | Phase::Paused { step } => {
                self.plan.steps.get(step).map_or(100, |s| s.weight.min(100))
            }
            Phase::Promoted => 100,
            Phase::Aborted { .. } => 0,
        }
    }

    /// The route's weights for a move: the two cohorts' shares, every other cohort at 0.
    pub fn weights_for(
        &self,
        others: impl IntoIterator<Item = String>,
        stable: u32,
        candidate: u32,
    ) -> BTreeMap<String, u32> {
        let mut out: BTreeMap<String, u32> = others.into_iter().map(|c| (c, 0)).collect();
        out.insert(self.plan.stable.clone(), stable);
        out.insert(self.plan.candidate.clone(), candidate);
        out
    }

    /// Every problem of the record: (field under `rollout`, what to fix).
    pub fn problems(&self) -> Vec<(String, String)> {
        let plan = self.plan.problems().into_iter().map(|e| {
            let text = e.to_string();
            // The plan's errors start with their field path; keep it as the field.
            let (field, what) = text.split_once(' ').map_or((String::new(), text.clone()), |(f, w)| {
                (f.trim_start_matches("rollout.").to_string(), w.to_string())
            });
            (format!("plan.{field}"), what)
        });
        let analysis = self.analysis.problems().into_iter().map(|(f, w)| (format!("analysis.{f}"), w));
        plan.chain(analysis).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::steps::Step;

    fn plan() -> Plan {
        Plan {
            stable: "stable".into(),
            candidate: "canary".into(),
            steps: vec![
                Step { weight: 10, hold: Duration::from_secs(30), min_deliveries: 100 },
                Step { weight: 50, hold: Duration::from_secs(30), min_deliveries: 100 },
            ],
        }
    }

    #[test]
    fn its_clock_is_the_wall_clock_since_it_started() {
        let (mut r, first) = Rollout::start(plan(), Analysis::default(), 1_000_000);
        assert_eq!(first, Move::Weights { stable: 90, candidate: 10 });
        assert_eq!(r.clock(1_030_500), Duration::from_millis(30_500));
        assert_eq!(r.clock(999_000), Duration::ZERO, "a clock behind the start is the start");
        assert_eq!(r.decide(Input::Pause, 1_010_000), Move::Stay);
        assert_eq!(r.progress.phase, Phase::Paused { step: 0 });
        assert!(r.active());
        assert_eq!(r.candidate_weight(), 10);
        assert_eq!(r.decide(Input::Abort, 1_020_000), Move::Weights { stable: 100, candidate: 0 });
        assert!(!r.active());
        assert_eq!((r.step(), r.candidate_weight()), (0, 0));
    }

    #[test]
    fn it_reads_back_from_toml_as_the_config_keeps_it() {
        let (r, _) = Rollout::start(plan(), Analysis::default(), 1_765_000_000_000);
        let text = toml::to_string(&r).expect("serializes");
        let back: Rollout = toml::from_str(&text).expect("reads back");
        assert_eq!(back, r);
        let written = r#"
started_at_ms = 5
plan = { stable = "blue", candidate = "green", steps = [{ weight = 5, hold_ms = 1000 }] }
progress = { phase = "paused", step = 0, history = [] }
"#;
        let r: Rollout = toml::from_str(written).expect("a hand-written record reads");
        assert_eq!(r.analysis, Analysis::default(), "analysis defaults");
        assert_eq!(r.plan.steps[0].min_deliveries, 0);
        assert!(
            toml::from_str::<Rollout>(&written.replace("hold_ms", "hold_s")).is_err(),
            "unknown fields are refused"
        );
    }

    #[test]
    fn its_problems_name_their_fields() {
        let (mut r, _) = Rollout::start(plan(), Analysis::default(), 0);
        assert!(r.problems().is_empty());
        r.plan.steps[1].weight = 5;
        r.analysis.look_every_ms = 0;
        let said = r.problems();
        assert_eq!(said.len(), 2, "{said:?}");
        assert_eq!(said[0].0, "plan.steps[1].weight");
        assert!(said[0].1.contains("not above the step before it"), "{said:?}");
        assert_eq!(said[1].0, "analysis.look_every_ms");
    }

    #[test]
    fn weights_for_a_move_zero_every_other_cohort() {
        let (r, _) = Rollout::start(plan(), Analysis::default(), 0);
        let w = r.weights_for(["legacy".to_string(), "stable".to_string()], 90, 10);
        assert_eq!(w, [("canary".into(), 10), ("legacy".into(), 0), ("stable".into(), 90)].into());
    }
}
