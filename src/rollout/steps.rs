//! A rollout's steps: where a rollout stands and what it does next, given what the judge said,
//! how long the step has been held and how much of the candidate's traffic it saw, or what an
//! operator asked. Pure: the caller owns the clock (time since the rollout started), applies
//! the weights each decision returns and keeps the [`Progress`] where the route's weights are
//! kept, so that every replica and a restarted gateway see the same rollout.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::judge::{Finding, Verdict};

/// Longest history a rollout keeps: the latest verdicts and moves, for `fanoutctl rollout
/// status`; older ones are dropped first.
pub const HISTORY: usize = 64;

/// What an operator asks of a rollout.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The cohort serving the route today (a value of the route's split label).
    pub stable: String,
    /// The cohort being rolled out.
    pub candidate: String,
    /// The candidate's share at each step, held and judged before the next. Past the last,
    /// the candidate is promoted to 100 %.
    pub steps: Vec<Step>,
}

/// One step of a [`Plan`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// The candidate's weight in percent (1..=100); the stable cohort gets the rest.
    pub weight: u32,
    /// How long the step is held at least, whatever the judge says.
    #[serde(with = "millis", rename = "hold_ms")]
    pub hold: Duration,
    /// Deliveries the candidate must have settled in this step before it may go on.
    #[serde(default)]
    pub min_deliveries: u64,
}

/// Why a [`Plan`] cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("rollout.steps is empty: give at least one step, e.g. weight = 10")]
    NoSteps,
    #[error("rollout.steps[{index}].weight is {weight}: a candidate's weight is 1 to 100 percent")]
    Weight { index: usize, weight: u32 },
    #[error("rollout.steps[{index}].weight is {weight}, not above the step before it ({before}): each step gives the candidate more")]
    NotIncreasing { index: usize, weight: u32, before: u32 },
    #[error("rollout.candidate is the stable cohort {0:?}: roll out another cohort")]
    SameCohort(String),
    #[error("rollout.{field} is empty: name a cohort (a value of the route's split label)")]
    NoCohort { field: &'static str },
}

impl Plan {
    /// Every problem of the plan, each naming its field.
    pub fn problems(&self) -> Vec<PlanError> {
        let mut out = Vec::new();
        for (field, cohort) in [("stable", &self.stable), ("candidate", &self.candidate)] {
            if cohort.trim().is_empty() {
                out.push(PlanError::NoCohort { field });
            }
        }
        if !self.stable.is_empty() && self.stable == self.candidate {
            out.push(PlanError::SameCohort(self.stable.clone()));
        }
        if self.steps.is_empty() {
            out.push(PlanError::NoSteps);
        }
        let mut before = 0;
        for (index, step) in self.steps.iter().enumerate() {
            if !(1..=100).contains(&step.weight) {
                out.push(PlanError::Weight { index, weight: step.weight });
            } else if step.weight <= before {
                out.push(PlanError::NotIncreasing { index, weight: step.weight, before });
            }
            before = before.max(step.weight);
        }
        out
    }
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// At step `step`, held since `since` (time since the rollout started).
    Running {
        step: usize,
        #[serde(with = "millis", rename = "since_ms")]
        since: Duration,
    },
    /// Held at step `step` by an operator: the weights stay, nothing advances or is judged.
    Paused { step: usize },
    /// The candidate has 100 %.
    Promoted,
    /// Rolled back: the stable cohort has 100 %.
    Aborted { step: usize },
}

impl Phase {
    /// The phase's name, as status, logs and metrics say it.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Running { .. } => "running",
            Phase::Paused { .. } => "paused",
            Phase::Promoted => "promoted",
            Phase::Aborted { .. } => "aborted",
        }
    }
}

/// What happened, for the history.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// Time since the rollout started.
    #[serde(with = "millis", rename = "at_ms")]
    pub at: Duration,
    pub step: usize,
    pub what: String,
}

/// A rollout's state: its phase and what happened so far.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    #[serde(flatten)]
    pub phase: Phase,
    pub history: Vec<Event>,
}

/// What the caller does after a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// Nothing changes.
    Stay,
    /// Set the route's weights: (stable, candidate), in percent.
    Weights { stable: u32, candidate: u32 },
}

/// What reaches a rollout.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The judge's verdict over the current step so far, and how many deliveries the
    /// candidate settled in it.
    Look {
        verdict: Verdict,
        candidate_deliveries: u64,
    },
    Pause,
    Resume,
    /// Promote now, judged or not.
    Promote,
    /// Roll back now.
    Abort,
}

/// Starts `plan` at `now`: its first step's weights.
pub fn start(plan: &Plan, now: Duration) -> (Progress, Move) {
    let mut progress = Progress { phase: Phase::Running { step: 0, since: now }, history: Vec::new() };
    note(&mut progress, now, 0, format!("started: {} at {} %", plan.candidate, weight_of(plan, 0)));
    (progress, weights(weight_of(plan, 0)))
}

/// What `input` at `now` does to a rollout of `plan` standing at `progress`.
pub fn decide(plan: &Plan, progress: &mut Progress, input: Input, now: Duration) -> Move {
    match (progress.phase, input) {
        (Phase::Promoted | Phase::Aborted { .. }, _) => Move::Stay,
        (Phase::Running { step, .. } | Phase::Paused { step }, Input::Abort) => {
            abort(progress, now, step, "aborted by an operator".into())
        }
        (Phase::Running { step, .. } | Phase::Paused { step }, Input::Promote) => {
            promote(plan, progress, now, step, "promoted by an operator")
        }
        (Phase::Running { step, .. }, Input::Pause) => {
            progress.phase = Phase::Paused { step };
            note(progress, now, step, "paused".into());
            Move::Stay
        }
        (Phase::Paused { step }, Input::Resume) => {
            // The hold starts over: what the step saw before the pause is still counted by
            // the caller, but the time paused is not time judged.
            progress.phase = Phase::Running { step, since: now };
            note(progress, now, step, "resumed".into());
            Move::Stay
        }
        (Phase::Running { .. }, Input::Resume) | (Phase::Paused { .. }, Input::Pause | Input::Look { .. }) => {
            Move::Stay
        }
        (Phase::Running { step, since }, Input::Look { verdict, candidate_deliveries }) => {
            let Some(current) = plan.steps.get(step) else {
                return promote(plan, progress, now, step, "no steps left");
            };
            match verdict {
                Verdict::Fail(findings) => abort(progress, now, step, failed(&findings)),
                Verdict::Pass
                    if now.saturating_sub(since) >= current.hold && candidate_deliveries >= current.min_deliveries =>
                {
                    let next = step + 1;
                    if next >= plan.steps.len() || weight_of(plan, next) >= 100 {
                        promote(plan, progress, now, step, "every step passed")
                    } else {
                        progress.phase = Phase::Running { step: next, since: now };
                        note(
                            progress,
                            now,
                            next,
                            // People count steps from 1.
                            format!("step {} passed: {} at {} %", step + 1, plan.candidate, weight_of(plan, next)),
                        );
                        weights(weight_of(plan, next))
                    }
                }
                Verdict::Pass | Verdict::Inconclusive(_) => Move::Stay,
            }
        }
    }
}

fn weight_of(plan: &Plan, step: usize) -> u32 {
    plan.steps.get(step).map_or(100, |s| s.weight.min(100))
}

fn weights(candidate: u32) -> Move {
    Move::Weights { stable: 100 - candidate, candidate }
}

fn abort(progress: &mut Progress, now: Duration, step: usize, why: String) -> Move {
    progress.phase = Phase::Aborted { step };
    note(progress, now, step, format!("rolled back: {why}"));
    weights(0)
}

fn promote(plan: &Plan, progress: &mut Progress, now: Duration, step: usize, why: &str) -> Move {
    progress.phase = Phase::Promoted;
    note(progress, now, step, format!("promoted: {} at 100 % ({why})", plan.candidate));
    weights(100)
}

/// The findings, as the history, the logs and the admin API say them.
pub fn failed(findings: &[Finding]) -> String {
    let said: Vec<String> = findings
        .iter()
        .map(|f| match f {
            Finding::FailureRate { candidate, stable, p } => format!(
                "failure rate {:.1} % against the stable cohort's {:.1} % (p = {p:.1e})",
                candidate * 100.0,
                stable * 100.0
            ),
            Finding::Latency { candidate_median_ms, stable_median_ms, p } => format!(
                "ack latency median {candidate_median_ms:.1} ms against the stable cohort's {stable_median_ms:.1} ms (p = {p:.1e})"
            ),
        })
        .collect();
    said.join("; ")
}

fn note(progress: &mut Progress, at: Duration, step: usize, what: String) {
    if progress.history.len() >= HISTORY {
        progress.history.remove(0);
    }
    progress.history.push(Event { at, step, what });
}

/// Durations as whole milliseconds in the stored state.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::judge::Wait;

    const S: Duration = Duration::from_secs(1);

    fn plan(weights: &[u32]) -> Plan {
        Plan {
            stable: "stable".into(),
            candidate: "canary".into(),
            steps: weights.iter().map(|&weight| Step { weight, hold: 60 * S, min_deliveries: 100 }).collect(),
        }
    }

    fn look(verdict: Verdict, candidate_deliveries: u64) -> Input {
        Input::Look { verdict, candidate_deliveries }
    }

    fn bad() -> Verdict {
        Verdict::Fail(vec![Finding::FailureRate { candidate: 0.2, stable: 0.01, p: 1e-6 }])
    }

    #[test]
    fn a_passing_candidate_walks_the_steps_after_each_hold_and_is_promoted() {
        let p = plan(&[1, 10, 50]);
        let (mut r, first) = start(&p, Duration::ZERO);
        assert_eq!(first, Move::Weights { stable: 99, candidate: 1 });
        // Passing, but the hold is not over; then over, but too few deliveries.
        assert_eq!(decide(&p, &mut r, look(Verdict::Pass, 500), 30 * S), Move::Stay);
        assert_eq!(decide(&p, &mut r, look(Verdict::Pass, 99), 60 * S), Move::Stay);
        assert_eq!(decide(&p, &mut r, look(Verdict::Pass, 100), 61 * S), Move::Weights { stable: 90, candidate: 10 });
        assert_eq!(r.phase, Phase::Running { step: 1, since: 61 * S });
        assert_eq!(decide(&p, &mut r, look(Verdict::Inconclusive(Wait::TooFewDeliveries), 10), 200 * S), Move::Stay);
        assert_eq!(decide(&p, &mut r, look(Verdict::Pass, 300), 200 * S), Move::Weights { stable: 50, candidate: 50 });
        assert_eq!(decide(&p, &mut r, look(Verdict::Pass, 300), 300 * S), Move::Weights { stable: 0, candidate: 100 });
        assert_eq!(r.phase, Phase::Promoted);
        assert_eq!(decide(&p, &mut r, look(bad(), 300), 301 * S), Move::Stay, "promoted is final");
        let said: Vec<&str> = r.history.iter().map(|e| e.what.as_str()).collect();
        assert_eq!(said.len(), 4, "{said:?}");
        assert!(said[3].starts_with("promoted: canary at 100 %"), "{said:?}");
    }

    #[test]
    fn a_failing_verdict_rolls_back_at_once_whatever_the_hold() {
        let p = plan(&[10, 50]);
        let (mut r, _) = start(&p, Duration::ZERO);
        assert_eq!(decide(&p, &mut r, look(bad(), 40), 5 * S), Move::Weights { stable: 100, candidate: 0 });
        assert_eq!(r.phase, Phase::Aborted { step: 0 });
        let last = &r.history[r.history.len() - 1].what;
        assert!(last.contains("rolled back: failure rate 20.0 % against the stable cohort's 1.0 %"), "{last}");
        assert_eq!(decide(&p, &mut r, Input::Resume, 6 * S), Move::Stay, "aborted is final");
        assert_eq!(decide(&p, &mut r, Input::Promote, 6 * S), Move::Stay);
    }

    #[test]
    fn a_step_of_100_percent_is_the_promotion() {
        let p = plan(&[20, 100]);
        let (mut r, _) = start(&p, Duration::ZERO);
        assert_eq!(decide(&p, &mut r, look(Verdict::Pass, 100), 60 * S), Move::Weights { stable: 0, candidate: 100 });
        assert_eq!(r.phase, Phase::Promoted);
    }

    #[test]
    fn paused_it_holds_its_weights_and_judges_nothing_and_resumed_it_holds_the_step_again() {
        let p = plan(&[10, 50]);
        let (mut r, _) = start(&p, Duration::ZERO);
        assert_eq!(decide(&p, &mut r, Input::Pause, 10 * S), Move::Stay);
        assert_eq!(decide(&p, &mut r, look(bad(), 500), 20 * S), Move::Stay, "a paused rollout is not judged");
        assert_eq!(decide(&p, &mut r, look(Verdict::Pass, 500), 100 * S), Move::Stay);
        assert_eq!(decide(&p, &mut r, Input::Resume, 100 * S), Move::Stay);
        assert_eq!(decide(&p, &mut r, look(Verdict::Pass, 500), 120 * S), Move::Stay, "the hold starts over");
        assert_eq!(decide(&p, &mut r, look(Verdict::Pass, 500), 160 * S), Move::Weights { stable: 50, candidate: 50 });
    }

    #[test]
    fn an_operator_may_promote_or_abort_at_any_step() {
        let p = plan(&[10, 50]);
        let (mut r, _) = start(&p, Duration::ZERO);
        assert_eq!(decide(&p, &mut r, Input::Promote, S), Move::Weights { stable: 0, candidate: 100 });
        let (mut r, _) = start(&p, Duration::ZERO);
        decide(&p, &mut r, Input::Pause, S);
        assert_eq!(decide(&p, &mut r, Input::Abort, 2 * S), Move::Weights { stable: 100, candidate: 0 });
        assert!(r.history.last().is_some_and(|e| e.what == "rolled back: aborted by an operator"));
    }

    #[test]
    fn the_state_survives_a_round_trip_through_its_stored_form() {
        let p = plan(&[10, 50]);
        let (mut r, _) = start(&p, Duration::ZERO);
        decide(&p, &mut r, look(Verdict::Pass, 100), 61 * S);
        let stored = serde_json::to_string(&(&p, &r)).expect("serializes");
        assert!(stored.contains(r#""phase":"running","step":1,"since_ms":61000"#), "{stored}");
        let (p2, r2): (Plan, Progress) = serde_json::from_str(&stored).expect("reads back");
        assert_eq!((p2, r2), (p, r));
    }

    #[test]
    fn a_plan_names_each_of_its_problems() {
        assert!(plan(&[1, 10, 50]).problems().is_empty());
        let mut wrong = plan(&[0, 10, 10, 101]);
        wrong.candidate = "stable".into();
        let said: Vec<String> = wrong.problems().iter().map(ToString::to_string).collect();
        assert_eq!(said.len(), 4, "{said:?}");
        assert!(said[0].starts_with("rollout.candidate is the stable cohort"), "{said:?}");
        assert!(said[1].starts_with("rollout.steps[0].weight is 0"), "{said:?}");
        assert!(said[2].starts_with("rollout.steps[2].weight is 10, not above"), "{said:?}");
        assert!(said[3].starts_with("rollout.steps[3].weight is 101"), "{said:?}");
        assert_eq!(plan(&[]).problems(), vec![PlanError::NoSteps]);
    }

    #[test]
    fn history_keeps_the_latest() {
        let p = plan(&[10, 50]);
        let (mut r, _) = start(&p, Duration::ZERO);
        for i in 0..100 {
            decide(&p, &mut r, if i % 2 == 0 { Input::Pause } else { Input::Resume }, i * S);
        }
        assert_eq!(r.history.len(), HISTORY);
        assert_eq!(r.history.last().map(|e| e.at), Some(99 * S));
    }
}
