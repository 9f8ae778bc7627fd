//! `rollout start|status|pause|resume|promote|abort`: a route's rollout. A start or a steer
//! goes to one replica (it writes the rollout where weights are kept, and every replica follows
//! from there); `status` asks every replica, since each judges the candidate on its own traffic
//! and has a look of its own to show.

use serde::Serialize;

use super::args::{Output, RolloutCommand, RolloutStart};
use super::reach::{ask_all, authorized, Missing, Reached, Replica};
use super::{call_error, json, missing_notes, nobody_answered, partly_answered, table, yaml, CtlError, Outcome};
use fanout_proto::admin::{
    CohortOutcome, GetRolloutRequest, RolloutAction, RolloutAnalysis, RolloutStatus, RolloutStep, StartRolloutRequest,
    SteerRolloutRequest,
};

/// Runs a `rollout` command.
pub(super) async fn run(cli: &super::Cli, command: &RolloutCommand, reached: Reached) -> Result<Outcome, CtlError> {
    let action = match command {
        RolloutCommand::Status { route } => return status(cli, reached, route).await,
        RolloutCommand::Start(args) => return start(cli, &mut reached.any()?, args).await.map(Outcome::shown),
        RolloutCommand::Pause { .. } => RolloutAction::Pause,
        RolloutCommand::Resume { .. } => RolloutAction::Resume,
        RolloutCommand::Promote { .. } => RolloutAction::Promote,
        RolloutCommand::Abort { .. } => RolloutAction::Abort,
    };
    let mut replica = reached.any()?;
    let request = SteerRolloutRequest { route: command.route().to_string(), action: action as i32 };
    let answer = replica
        .client
        .steer_rollout(cli.request(request)?)
        .await
        .map_err(|s| call_error(&replica.address, s))?
        .into_inner();
    shown(cli.output, &replica, &answer).map(Outcome::shown)
}

/// The request `rollout start` sends.
pub(super) fn start_request(args: &RolloutStart) -> StartRolloutRequest {
    StartRolloutRequest {
        route: args.route.clone(),
        stable: args.stable.clone(),
        candidate: args.candidate.clone(),
        steps: args
            .steps
            .iter()
            .map(|(weight, hold)| RolloutStep {
                weight: *weight,
                hold_ms: hold.unwrap_or(args.hold).as_millis() as u64,
                min_deliveries: args.min_deliveries,
            })
            .collect(),
        analysis: Some(RolloutAnalysis {
            failure_rate_tolerance: args.failure_rate_tolerance,
            latency_tolerance: args.latency_tolerance,
            latency_allowance_ms: args.latency_allowance_ms,
            min_deliveries: args.judge_min_deliveries,
            look_every_ms: args.look_every.map(|d| d.as_millis() as u64),
        }),
    }
}

async fn start(cli: &super::Cli, replica: &mut Replica, args: &RolloutStart) -> Result<String, CtlError> {
    let request = cli.request(start_request(args))?;
    let answer = replica.client.start_rollout(request).await.map_err(|s| call_error(&replica.address, s))?.into_inner();
    shown(cli.output, replica, &answer)
}

/// A start's or a steer's answer: one line for people, the status for scripts.
fn shown(output: Output, replica: &Replica, status: &RolloutStatus) -> Result<String, CtlError> {
    match output {
        Output::Json => json(status),
        Output::Yaml => yaml(status),
        Output::Table => Ok(format!("{}: route {}: {}\n", replica.address, status.route, headline(status))),
    }
}

/// One replica's answer, as `rollout status -o json|yaml` prints it.
#[derive(Serialize)]
struct ReplicaRollout {
    address: String,
    #[serde(flatten)]
    status: RolloutStatus,
}

async fn status(cli: &super::Cli, reached: Reached, route: &str) -> Result<Outcome, CtlError> {
    let token = cli.authorization()?;
    let asked = reached.replicas.len() + reached.missing.len();
    let answered = ask_all(&reached.replicas, |mut client| {
        let request = authorized(GetRolloutRequest { route: route.to_string() }, token.as_ref());
        async move { client.get_rollout(request).await }
    })
    .await;
    let mut all = Vec::new();
    let mut missing = reached.missing;
    for (address, answer) in answered {
        match answer {
            Ok(status) => all.push(ReplicaRollout { address, status }),
            Err(failure) => missing.push(Missing { address, failure }),
        }
    }
    if all.is_empty() {
        return Err(nobody_answered(&missing, reached.flag));
    }
    let stdout = match cli.output {
        Output::Json | Output::Yaml => super::answers_as(cli.output, &all, &missing)?,
        Output::Table => render(&all, &missing),
    };
    let failure = (!missing.is_empty()).then(|| partly_answered(&missing, asked));
    Ok(Outcome { stdout, failure })
}

/// Where a rollout stands, in a line.
fn headline(s: &RolloutStatus) -> String {
    let (candidate, stable, steps) = (&s.candidate, &s.stable, s.steps.len());
    let at = s.step + 1;
    match s.phase.as_str() {
        "running" => format!(
            "rolling out {candidate} over {stable}: step {at} of {steps}, {candidate} at {} %",
            s.candidate_weight
        ),
        "paused" => format!(
            "paused: {candidate} over {stable} at step {at} of {steps}, {candidate} at {} %",
            s.candidate_weight
        ),
        "promoted" => format!("{candidate} promoted to 100 % over {stable}"),
        "aborted" => format!("{candidate} rolled back at step {at} of {steps}: {stable} has 100 %"),
        other => other.to_string(),
    }
}

fn time(unix_ms: i64) -> String {
    jiff::Timestamp::from_millisecond(unix_ms).map_or_else(|_| unix_ms.to_string(), |t| t.to_string())
}

fn cohort(c: Option<&CohortOutcome>) -> String {
    let Some(c) = c else { return "-".into() };
    let median = c.median_latency_ms.map_or_else(|| "-".to_string(), |m| format!("{m:.1}ms"));
    format!("{}/{}/{median}", c.deliveries, c.failures)
}

/// `rollout status`'s table: the rollout (from the first replica's record), its steps, each
/// replica's latest look, and its history; steps counted from 1, as the headline does.
fn render(all: &[ReplicaRollout], missing: &[Missing]) -> String {
    let first = &all[0].status;
    let mut out = format!("route {}: {}, started {}\n\n", first.route, headline(first), time(first.started_at_unix_ms));
    let steps: Vec<Vec<String>> = first
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let at =
                if i as u32 == first.step && matches!(first.phase.as_str(), "running" | "paused") { ">" } else { "" };
            vec![
                format!("{at}{}", i + 1),
                format!("{} %", s.weight),
                format!("{} ms", s.hold_ms),
                s.min_deliveries.to_string(),
            ]
        })
        .collect();
    out.push_str(&table::render(&["STEP", "CANDIDATE", "HOLD", "MIN DELIVERIES"], &steps));
    out.push('\n');
    let looks: Vec<Vec<String>> = all
        .iter()
        .map(|r| {
            let look = r.status.look.as_ref();
            vec![
                r.status.replica.clone(),
                r.address.clone(),
                look.map_or_else(|| "-".to_string(), |l| (l.step + 1).to_string()),
                look.map_or_else(|| "no look yet".to_string(), |l| l.verdict.clone()),
                cohort(look.and_then(|l| l.stable.as_ref())),
                cohort(look.and_then(|l| l.candidate.as_ref())),
                look.map_or_else(String::new, |l| l.detail.clone()),
            ]
        })
        .collect();
    out.push_str(&table::render(
        &["REPLICA", "ADDRESS", "STEP", "VERDICT", "STABLE N/FAILED/MEDIAN", "CANDIDATE N/FAILED/MEDIAN", "WHY"],
        &looks,
    ));
    out.push('\n');
    let history: Vec<Vec<String>> =
        first.history.iter().map(|e| vec![time(e.at_unix_ms), (e.step + 1).to_string(), e.what.clone()]).collect();
    out.push_str(&table::render(&["AT", "STEP", "WHAT"], &history));
    out.push_str(&missing_notes(missing));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use fanout_proto::admin::{RolloutEvent, RolloutLook};

    fn status() -> RolloutStatus {
        RolloutStatus {
            route: "orders".into(),
            stable: "blue".into(),
            candidate: "green".into(),
            steps: vec![
                RolloutStep { weight: 10, hold_ms: 60_000, min_deliveries: 0 },
                RolloutStep { weight: 50, hold_ms: 60_000, min_deliveries: 0 },
            ],
            phase: "running".into(),
            step: 1,
            candidate_weight: 50,
            started_at_unix_ms: 1_700_000_000_000,
            history: vec![RolloutEvent {
                at_unix_ms: 1_700_000_000_000,
                step: 0,
                what: "started: green at 10 %".into(),
            }],
            look: Some(RolloutLook {
                verdict: "inconclusive".into(),
                step: 1,
                detail: "waiting for enough settled deliveries in each cohort".into(),
                stable: Some(CohortOutcome { deliveries: 120, failures: 1, median_latency_ms: Some(2.25) }),
                candidate: Some(CohortOutcome { deliveries: 90, failures: 0, median_latency_ms: None }),
                ..RolloutLook::default()
            }),
            replica: "gw-0".into(),
            ..RolloutStatus::default()
        }
    }

    #[test]
    fn a_status_shows_the_step_each_replicas_look_and_the_history() {
        let shown = render(&[ReplicaRollout { address: "10.0.0.1:9090".into(), status: status() }], &[]);
        assert!(
            shown.starts_with(
                "route orders: rolling out green over blue: step 2 of 2, green at 50 %, started 2023-11-14T22:13:20Z"
            ),
            "{shown}"
        );
        assert!(shown.contains(">2 "), "the current step is marked: {shown}");
        assert!(shown.contains("120/1/2.2ms") || shown.contains("120/1/2.3ms"), "{shown}");
        assert!(shown.contains("90/0/-"), "{shown}");
        assert!(shown.contains("started: green at 10 %"), "{shown}");
    }

    #[test]
    fn an_aborted_rollout_says_who_has_the_traffic() {
        let s = RolloutStatus { phase: "aborted".into(), step: 0, candidate_weight: 0, ..status() };
        assert_eq!(headline(&s), "green rolled back at step 1 of 2: blue has 100 %");
    }
}
