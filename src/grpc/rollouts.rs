//! The admin contract's rollout messages, to and from the control surface's types
//! ([`crate::admin::rollouts`]): a request's plan and analysis (missing fields take their
//! defaults, a plan that cannot be read names its field), and a rollout's status.

use std::time::Duration;

use tonic::Status;

use crate::admin::rollouts::{CohortSummary, RolloutView};
use crate::proto::admin as pb;
use crate::rollout::judge::{Verdict, Wait};
use crate::rollout::steps::{Input, Plan, Step};
use crate::rollout::{Analysis, Rollout};

/// The plan and analysis a StartRollout asks for.
pub fn plan_of(request: &pb::StartRolloutRequest) -> (Plan, Analysis) {
    let steps = request
        .steps
        .iter()
        .map(|s| Step { weight: s.weight, hold: Duration::from_millis(s.hold_ms), min_deliveries: s.min_deliveries })
        .collect();
    let plan = Plan { stable: request.stable.clone(), candidate: request.candidate.clone(), steps };
    let mut analysis = Analysis::default();
    if let Some(a) = &request.analysis {
        analysis.failure_rate_tolerance = a.failure_rate_tolerance.unwrap_or(analysis.failure_rate_tolerance);
        analysis.latency_tolerance = a.latency_tolerance.unwrap_or(analysis.latency_tolerance);
        analysis.latency_allowance_ms = a.latency_allowance_ms.unwrap_or(analysis.latency_allowance_ms);
        analysis.min_deliveries = a.min_deliveries.unwrap_or(analysis.min_deliveries);
        analysis.look_every_ms = a.look_every_ms.unwrap_or(analysis.look_every_ms);
    }
    (plan, analysis)
}

/// What a SteerRollout's action asks.
pub fn input_of(action: i32) -> Result<Input, Status> {
    match pb::RolloutAction::try_from(action) {
        Ok(pb::RolloutAction::Pause) => Ok(Input::Pause),
        Ok(pb::RolloutAction::Resume) => Ok(Input::Resume),
        Ok(pb::RolloutAction::Promote) => Ok(Input::Promote),
        Ok(pb::RolloutAction::Abort) => Ok(Input::Abort),
        Ok(pb::RolloutAction::Unspecified) | Err(_) => {
            Err(Status::invalid_argument("action: set one of ROLLOUT_ACTION_PAUSE, _RESUME, _PROMOTE or _ABORT"))
        }
    }
}

/// A rollout as the contract says it.
pub fn status_of(view: RolloutView, rollout: &Rollout, replica: String, generation: String) -> pb::RolloutStatus {
    let at = |since_start: Duration| {
        i64::try_from(rollout.started_at_ms.saturating_add(since_start.as_millis() as u64)).unwrap_or(i64::MAX)
    };
    let a = rollout.analysis;
    pb::RolloutStatus {
        route: view.route,
        stable: rollout.plan.stable.clone(),
        candidate: rollout.plan.candidate.clone(),
        steps: rollout.plan.steps.iter().map(step_out).collect(),
        analysis: Some(pb::RolloutAnalysis {
            failure_rate_tolerance: Some(a.failure_rate_tolerance),
            latency_tolerance: Some(a.latency_tolerance),
            latency_allowance_ms: Some(a.latency_allowance_ms),
            min_deliveries: Some(a.min_deliveries),
            look_every_ms: Some(a.look_every_ms),
        }),
        started_at_unix_ms: i64::try_from(rollout.started_at_ms).unwrap_or(i64::MAX),
        phase: rollout.progress.phase.name().to_string(),
        step: rollout.step() as u32,
        candidate_weight: rollout.candidate_weight(),
        history: rollout
            .progress
            .history
            .iter()
            .map(|e| pb::RolloutEvent { at_unix_ms: at(e.at), step: e.step as u32, what: e.what.clone() })
            .collect(),
        look: view.look.map(|l| pb::RolloutLook {
            at_unix_ms: i64::try_from(l.at_ms).unwrap_or(i64::MAX),
            step: l.step as u32,
            verdict: l.verdict.name().to_string(),
            detail: detail(&l.verdict),
            stable: Some(outcome(l.stable)),
            candidate: Some(outcome(l.candidate)),
        }),
        replica,
        config_generation: generation,
    }
}

fn step_out(s: &Step) -> pb::RolloutStep {
    pb::RolloutStep { weight: s.weight, hold_ms: s.hold.as_millis() as u64, min_deliveries: s.min_deliveries }
}

fn outcome(c: CohortSummary) -> pb::CohortOutcome {
    pb::CohortOutcome { deliveries: c.deliveries, failures: c.failures, median_latency_ms: c.median_latency_ms }
}

/// Why the judge said what it said, in a line.
pub fn detail(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Pass => "the candidate is within the tolerances on failure rate and ack latency".into(),
        Verdict::Inconclusive(Wait::TooFewDeliveries) => "waiting for enough settled deliveries in each cohort".into(),
        Verdict::Inconclusive(Wait::FailureRateUnclear) => {
            "waiting: the failure rates are not yet shown to be within the tolerance".into()
        }
        Verdict::Inconclusive(Wait::TooFewLatencies) => "waiting for enough timed acks in each cohort".into(),
        Verdict::Fail(findings) => crate::rollout::steps::failed(findings),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_analysis_fields_take_their_defaults() {
        let request = pb::StartRolloutRequest {
            route: "r".into(),
            stable: "blue".into(),
            candidate: "green".into(),
            steps: vec![pb::RolloutStep { weight: 10, hold_ms: 60_000, min_deliveries: 5 }],
            analysis: Some(pb::RolloutAnalysis { failure_rate_tolerance: Some(0.05), ..Default::default() }),
        };
        let (plan, analysis) = plan_of(&request);
        assert_eq!(plan.steps, vec![Step { weight: 10, hold: Duration::from_secs(60), min_deliveries: 5 }]);
        assert_eq!(analysis, Analysis { failure_rate_tolerance: 0.05, ..Analysis::default() });
    }

    #[test]
    fn an_action_must_be_set() {
        assert_eq!(input_of(pb::RolloutAction::Abort as i32).ok(), Some(Input::Abort));
        let unset = input_of(0).expect_err("unspecified");
        assert!(unset.message().contains("ROLLOUT_ACTION_PAUSE"), "{unset:?}");
        assert!(input_of(99).is_err());
    }
}
