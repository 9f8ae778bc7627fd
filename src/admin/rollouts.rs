//! Rollouts on the control surface: an operator starts, pauses, resumes, promotes or aborts
//! one, and every replica runs [`Control::drive_rollouts`], which looks at each running
//! rollout's step on this replica's traffic, asks the judge, and writes the move the steps
//! decide (new weights and the rollout's record, in one edit) where weights are kept. A move
//! is written only if the record is still the one it was decided from, so two replicas that
//! decide the same move at once make it once, and an operator's pause is never overtaken.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use parking_lot::RwLock;
use tracing::{debug, info, warn};

use super::{weights, AdminError, Control};
use crate::rollout::judge::{self, CohortSample, Verdict};
use crate::rollout::steps::{Input, Move, Phase, Plan};
use crate::rollout::window::{Totals, Window, WindowKey};
use crate::rollout::{Analysis, Rollout};
use crate::subscriptions::{now_ms, CohortCounts};

/// How often the driver wakes to see whether a rollout is due a look.
const TICK: Duration = Duration::from_millis(200);

/// The latest look at one route's rollout on this replica.
#[derive(Debug, Clone, PartialEq)]
pub struct Look {
    /// When (Unix ms).
    pub at_ms: u64,
    pub step: usize,
    pub verdict: Verdict,
    /// What each cohort did in the step so far, on this replica (latencies: their median).
    pub stable: CohortSummary,
    pub candidate: CohortSummary,
}

/// A cohort's sample, summed up for the operator.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CohortSummary {
    pub deliveries: u64,
    pub failures: u64,
    /// Median ack latency, None before any ack was timed.
    pub median_latency_ms: Option<f64>,
}

impl CohortSummary {
    fn of(sample: &CohortSample) -> Self {
        Self {
            deliveries: sample.deliveries,
            failures: sample.failures,
            median_latency_ms: (!sample.latencies_ms.is_empty()).then(|| judge::median(&sample.latencies_ms)),
        }
    }
}

/// A route's rollout as `fanoutctl rollout status` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutView {
    pub route: String,
    /// The record in the source of truth (as this replica last applied it).
    pub rollout: Option<Rollout>,
    /// This replica's latest look, if it looked at this rollout.
    pub look: Option<Look>,
}

/// The latest look per route, and the verdict counts the metrics export.
#[derive(Debug, Default)]
pub struct Looks {
    latest: RwLock<BTreeMap<String, Look>>,
    /// (route, "pass" | "fail" | "inconclusive") → looks.
    verdicts: RwLock<BTreeMap<(String, &'static str), u64>>,
}

impl Looks {
    fn record(&self, route: &str, look: Look) {
        *self.verdicts.write().entry((route.to_string(), look.verdict.name())).or_default() += 1;
        self.latest.write().insert(route.to_string(), look);
    }

    /// Looks per route and verdict since start (for `/metrics`).
    pub fn verdict_counts(&self) -> BTreeMap<(String, &'static str), u64> {
        self.verdicts.read().clone()
    }
}

/// A route's running totals as the judge counts them: settled is acked, nacked or expired;
/// failed is nacked or expired (a dead letter was first a nack or an expiry).
fn totals(counts: &BTreeMap<String, CohortCounts>) -> BTreeMap<String, Totals> {
    counts
        .iter()
        .map(|(cohort, c)| {
            let failed = c.nacked + c.expired;
            (cohort.clone(), Totals { settled: c.acked + failed, failed })
        })
        .collect()
}

/// Why a rollout cannot start on a route as it stands, or None. Pure: `weights` are the
/// route's now; `active` the rollout it is in, if any.
fn refuse_start(route: &str, plan: &Plan, weights: &BTreeMap<String, u32>, active: Option<&Rollout>) -> Option<String> {
    if let Some(r) = active {
        return Some(format!(
            "route `{route}` is in a rollout of {} already (step {}, {} %): promote or abort it first",
            r.plan.candidate,
            r.step(),
            r.candidate_weight()
        ));
    }
    if weights.get(&plan.stable).copied().unwrap_or(0) == 0 {
        let serving: Vec<&str> = weights.iter().filter(|(_, w)| **w > 0).map(|(c, _)| c.as_str()).collect();
        return Some(format!(
            "cohort `{}` has no share of route `{route}` now (serving: {}): a rollout starts from the cohort that \
             serves the route",
            plan.stable,
            serving.join(", ")
        ));
    }
    let others: Vec<String> = weights
        .iter()
        .filter(|(c, w)| **w > 0 && **c != plan.stable && **c != plan.candidate)
        .map(|(c, w)| format!("{c} = {w}"))
        .collect();
    if !others.is_empty() {
        return Some(format!(
            "route `{route}` also gives a share to {}: a rollout moves traffic between two cohorts; set their \
             weights to 0 first",
            others.join(", ")
        ));
    }
    None
}

impl Control {
    /// Starts a rollout of `plan` on route `route`: its first step's weights and the record go
    /// to the source of truth in one edit. Refused, with what to fix, when the route is in a
    /// rollout already, when the plan or the route cannot carry one (no split label, an
    /// at-most-once route, an unknown candidate, a stable cohort that serves nothing), or when
    /// the first step would strand messages ([`weights::guard`]).
    pub async fn start_rollout(&self, route: &str, plan: Plan, analysis: Analysis) -> Result<Rollout, AdminError> {
        let (_, config) = self.route_config(route)?;
        if config.split_label.is_none() {
            return Err(AdminError::Rollout(format!(
                "route `{route}` has no split_label: a rollout moves weights between cohorts of the split label; set \
                 split_label (and weights) first"
            )));
        }
        let active = config.rollout.as_ref().filter(|r| r.active());
        if let Some(why) = refuse_start(route, &plan, &config.weights, active) {
            return Err(AdminError::Rollout(why));
        }
        let (rollout, first) = Rollout::start(plan, analysis, now_ms().max(0) as u64);
        let weights = weights_of(&rollout, &config.weights, first);
        // What does not validate is said first, naming the field; then what would strand.
        self.with_rollout(route, &rollout, &weights)?;
        weights::guard(&self.weights_view(route).await?, &weights)?;
        self.write_rollout(route, config.rollout.as_ref(), rollout.clone(), weights).await?;
        info!(
            route,
            stable = rollout.plan.stable,
            candidate = rollout.plan.candidate,
            steps = rollout.plan.steps.len(),
            "rollout started by an operator"
        );
        Ok(rollout)
    }

    /// An operator's pause, resume, promote or abort of route `route`'s rollout.
    pub async fn steer_rollout(&self, route: &str, input: Input) -> Result<Rollout, AdminError> {
        let (_, config) = self.route_config(route)?;
        let Some(before) = config.rollout.clone() else {
            return Err(AdminError::NoRollout(route.to_string()));
        };
        if !before.active() {
            return Err(AdminError::Rollout(format!(
                "route `{route}`'s rollout of {} is over ({}); start another",
                before.plan.candidate,
                before.progress.phase.name()
            )));
        }
        let mut next = before.clone();
        let moved = next.decide(input.clone(), now_ms().max(0) as u64);
        if next == before {
            return Ok(before);
        }
        let weights = weights_of(&next, &config.weights, moved);
        self.write_rollout(route, Some(&before), next.clone(), weights).await?;
        info!(route, action = ?input, phase = next.progress.phase.name(), "rollout steered by an operator");
        Ok(next)
    }

    /// Route `route`'s rollout and this replica's latest look at it.
    pub fn rollout(&self, route: &str) -> Result<RolloutView, AdminError> {
        let (_, config) = self.route_config(route)?;
        let look = config.rollout.as_ref().and_then(|_| self.inner.looks.latest.read().get(route).cloned());
        Ok(RolloutView { route: route.to_string(), rollout: config.rollout, look })
    }

    /// The verdicts this replica's judge gave, for `/metrics`.
    pub fn rollout_looks(&self) -> &Looks {
        &self.inner.looks
    }

    /// Writes `next` (and `weights`) over route `route`'s rollout record, provided it is
    /// still `expected` here and in the source of truth; applies it here.
    async fn write_rollout(
        &self,
        route: &str,
        expected: Option<&Rollout>,
        next: Rollout,
        weights: BTreeMap<String, u32>,
    ) -> Result<(), AdminError> {
        // One change at a time, from the config as it is then (see `set_weights`).
        let _one_at_a_time = self.inner.changing.lock().await;
        if self.route_config(route)?.1.rollout.as_ref() != expected {
            return Err(AdminError::Edit {
                source_of_truth: self.inner.source.to_string(),
                source: weights::EditError::RolloutMoved(route.to_string()),
            });
        }
        let candidate = self.with_rollout(route, &next, &weights)?;
        let edit = |text: &str| weights::set_rollout(text, route, expected, &next, &weights);
        let config = match self.inner.source.write_route(route, edit).await? {
            Some(config) => config,
            None => candidate,
        };
        self.apply(config).await;
        Ok(())
    }

    /// The applied config with route `route`'s rollout and weights replaced, validated.
    fn with_rollout(
        &self,
        route: &str,
        rollout: &Rollout,
        weights: &BTreeMap<String, u32>,
    ) -> Result<crate::config::Config, AdminError> {
        let mut candidate = self.inner.applied.read().config.clone();
        if let Some(r) = candidate.routes.iter_mut().find(|r| r.name == route) {
            r.rollout = Some(rollout.clone());
            r.weights = weights.clone();
        }
        candidate.validate().map_err(super::source::invalid)?;
        Ok(candidate)
    }

    /// Looks at every running rollout on this replica's traffic, each as often as its
    /// `analysis.look_every_ms`, until the process ends.
    pub async fn drive_rollouts(self) {
        let mut windows: HashMap<String, Window> = HashMap::new();
        let mut last_look: HashMap<String, u64> = HashMap::new();
        let mut said: HashMap<String, &'static str> = HashMap::new();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let rollouts: Vec<(String, Rollout)> = {
                let applied = self.inner.applied.read();
                applied.config.routes.iter().filter_map(|r| Some((r.name.clone(), r.rollout.clone()?))).collect()
            };
            windows.retain(|route, _| rollouts.iter().any(|(r, o)| r == route && o.active()));
            for (route, rollout) in rollouts {
                let Phase::Running { step, .. } = rollout.progress.phase else { continue };
                let now = now_ms().max(0) as u64;
                if last_look.get(&route).is_some_and(|at| now.saturating_sub(*at) < rollout.analysis.look_every_ms) {
                    continue;
                }
                last_look.insert(route.clone(), now);
                let Ok(handle) = self.route(&route).cloned() else { continue };
                let Ok(outcomes) = handle.outcomes().await else { continue };
                let totals = totals(&outcomes.counts);
                let key = WindowKey { started_at_ms: rollout.started_at_ms, step };
                let window = windows.entry(route.clone()).or_insert_with(|| Window::new(key, &totals));
                if window.key() != key {
                    // A new step: counted from now; what was timed before it was the last step's.
                    *window = Window::new(key, &totals);
                } else {
                    for (cohort, latencies) in &outcomes.latencies_ms {
                        window.add_latencies(cohort, latencies);
                    }
                }
                let stable = window.sample(&rollout.plan.stable, &totals);
                let candidate = window.sample(&rollout.plan.candidate, &totals);
                let verdict = judge::judge(&stable, &candidate, &rollout.analysis.thresholds());
                let name = verdict.name();
                if said.insert(route.clone(), name) != Some(name) {
                    info!(
                        route,
                        step,
                        verdict = name,
                        detail = ?verdict,
                        stable = stable.deliveries,
                        stable_failed = stable.failures,
                        candidate = candidate.deliveries,
                        candidate_failed = candidate.failures,
                        "rollout judged"
                    );
                }
                let look = Look {
                    at_ms: now,
                    step,
                    verdict: verdict.clone(),
                    stable: CohortSummary::of(&stable),
                    candidate: CohortSummary::of(&candidate),
                };
                self.inner.looks.record(&route, look);
                let mut next = rollout.clone();
                let moved = next.decide(Input::Look { verdict, candidate_deliveries: candidate.deliveries }, now);
                if next == rollout {
                    continue;
                }
                let (_, config) = match self.route_config(&route) {
                    Ok(c) => c,
                    Err(_) => continue,
                };
                let weights = weights_of(&next, &config.weights, moved);
                let what = next.progress.history.last().map(|e| e.what.clone()).unwrap_or_default();
                match self.write_rollout(&route, Some(&rollout), next, weights).await {
                    Ok(()) => info!(route, %what, "rollout moved"),
                    Err(AdminError::Edit { source: weights::EditError::RolloutMoved(_), .. }) => {
                        debug!(route, "rollout moved meanwhile elsewhere; looking again")
                    }
                    Err(error) => warn!(route, %error, "rollout move not written; trying again at the next look"),
                }
            }
        }
    }
}

/// The route's weights after `moved`: the rollout's two cohorts' shares (every other cohort
/// at 0), or the weights it has when nothing moves.
fn weights_of(rollout: &Rollout, now: &BTreeMap<String, u32>, moved: Move) -> BTreeMap<String, u32> {
    match moved {
        Move::Weights { stable, candidate } => rollout.weights_for(now.keys().cloned(), stable, candidate),
        Move::Stay => now.clone(),
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
            steps: vec![Step { weight: 10, hold: Duration::from_secs(1), min_deliveries: 10 }],
        }
    }

    fn w(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs.iter().map(|(c, w)| (c.to_string(), *w)).collect()
    }

    #[test]
    fn a_start_is_refused_where_it_cannot_work_naming_what_to_fix() {
        assert_eq!(refuse_start("r", &plan(), &w(&[("stable", 100), ("canary", 0)]), None), None);
        assert_eq!(refuse_start("r", &plan(), &w(&[("stable", 100)]), None), None, "a candidate without a weight yet");
        let idle = refuse_start("r", &plan(), &w(&[("stable", 0), ("canary", 100)]), None).expect("refused");
        assert!(idle.contains("cohort `stable` has no share") && idle.contains("serving: canary"), "{idle}");
        let three = refuse_start("r", &plan(), &w(&[("stable", 80), ("legacy", 20)]), None).expect("refused");
        assert!(three.contains("legacy = 20"), "{three}");
        let (running, _) = Rollout::start(plan(), Analysis::default(), 0);
        let again = refuse_start("r", &plan(), &w(&[("stable", 90), ("canary", 10)]), Some(&running)).expect("refused");
        assert!(again.contains("in a rollout of canary already (step 0, 10 %)"), "{again}");
    }

    #[test]
    fn totals_count_nacks_and_expiries_as_failures() {
        let counts: BTreeMap<String, CohortCounts> = [(
            "canary".to_string(),
            CohortCounts { delivered: 20, acked: 10, nacked: 3, expired: 2, dead_lettered: 1, ..Default::default() },
        )]
        .into();
        assert_eq!(totals(&counts)["canary"], Totals { settled: 15, failed: 5 });
    }

    #[test]
    fn a_move_sets_the_two_cohorts_and_zeroes_the_rest() {
        let (r, first) = Rollout::start(plan(), Analysis::default(), 0);
        let now = w(&[("stable", 100), ("old", 0)]);
        assert_eq!(weights_of(&r, &now, first), w(&[("stable", 90), ("canary", 10), ("old", 0)]));
        assert_eq!(weights_of(&r, &now, Move::Stay), now);
    }
}
