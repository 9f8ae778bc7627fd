//! A change made on every replica or on none: each replica checks it first (a dry run), and
//! it is made only when all of them accept it; then it is made on each, and the replicas that
//! did not take it are named with what to do. Weights and rate limits change this way.

use std::future::Future;

use serde::Serialize;

use super::reach::{failure_lines, with_tail, Failure, Missing};
use super::view::render_changes;
use super::{CtlError, Outcome};

/// What is changing, for the messages: "weights", "rate limit".
pub(super) struct Change<'a> {
    pub(super) what: &'a str,
    /// Added to a refusal that a flag would override (FAILED_PRECONDITION), if one does.
    pub(super) force_hint: Option<&'a str>,
}

/// Asks every replica with `ask(dry_run)`: first a dry run, then, when all accept, the change.
/// `line` says what changed on one replica (table output).
pub(super) async fn everywhere<T, Fut>(
    output: super::args::Output,
    flag: &str,
    change: Change<'_>,
    ask: impl Fn(bool) -> Fut,
    line: impl Fn(&str, &T) -> String,
) -> Result<Outcome, CtlError>
where
    T: Serialize,
    Fut: Future<Output = Vec<(String, Result<T, Failure>)>>,
{
    dry_run_verdict(&ask(true).await, flag, &change)?;
    let mut done: Vec<(String, T)> = Vec::new();
    let mut failed: Vec<Missing> = Vec::new();
    for (address, answer) in ask(false).await {
        match answer {
            Ok(answer) => done.push((address, answer)),
            Err(failure) => failed.push(Missing { address, failure }),
        }
    }
    if done.is_empty() {
        return Err(CtlError(failure_lines(&failed, flag).join("\n")));
    }
    let stdout = render_changes(output, &done, line)?;
    let failure = (!failed.is_empty()).then(|| {
        let changed: Vec<&str> = done.iter().map(|(a, _)| a.as_str()).collect();
        let tail = format!(
            "the {} changed on {} only: run the command again once the replica(s) above answer, so all agree",
            change.what,
            changed.join(", ")
        );
        CtlError(with_tail(failure_lines(&failed, flag), &tail))
    });
    Ok(Outcome { stdout, failure })
}

/// The dry run's verdict: the change goes ahead only when every replica accepts it. Otherwise
/// the error names each refusal (replicas refusing alike share a line) and says nothing changed;
/// when a refusal is one that a flag overrides (FAILED_PRECONDITION), it says so.
fn dry_run_verdict<T>(
    checked: &[(String, Result<T, Failure>)],
    flag: &str,
    change: &Change<'_>,
) -> Result<(), CtlError> {
    let refused: Vec<Missing> = checked
        .iter()
        .filter_map(|(address, answer)| {
            answer.as_ref().err().map(|failure| Missing { address: address.clone(), failure: failure.clone() })
        })
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    let forcible =
        refused.iter().any(|m| matches!(m.failure, Failure::Call { code: tonic::Code::FailedPrecondition, .. }));
    let tail = match change.force_hint {
        Some(hint) if forcible => format!("no replica's {} changed {hint}", change.what),
        _ => format!("no replica's {} changed", change.what),
    };
    Err(CtlError(with_tail(failure_lines(&refused, flag), &tail)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEIGHTS: Change<'static> =
        Change { what: "weights", force_hint: Some("(add --force to change the weights anyway)") };

    fn refusal(address: &str, code: tonic::Code, message: &str) -> (String, Result<(), Failure>) {
        (address.into(), Err(Failure::Call { code, message: message.into() }))
    }

    #[test]
    fn a_set_goes_ahead_only_when_every_replica_accepts_the_dry_run() {
        let all_accept = [("a:9090".to_string(), Ok(())), ("b:9090".to_string(), Ok(()))];
        assert!(dry_run_verdict(&all_accept, "--gateway", &WEIGHTS).is_ok());

        let one_refuses = [
            ("a:9090".to_string(), Ok(())),
            refusal("b:9090", tonic::Code::FailedPrecondition, "route orders has never seen cohort `gren`"),
        ];
        let e = dry_run_verdict(&one_refuses, "--gateway", &WEIGHTS).expect_err("refused");
        assert_eq!(
            e.0,
            "b:9090: FAILED_PRECONDITION: route orders has never seen cohort `gren`; \
             no replica's weights changed (add --force to change the weights anyway)"
        );
    }

    #[test]
    fn refusals_force_cannot_override_get_no_force_hint() {
        let unauthenticated = [
            refusal("a:9090", tonic::Code::Unauthenticated, "no token"),
            refusal("b:9090", tonic::Code::Unauthenticated, "no token"),
        ];
        let e = dry_run_verdict(&unauthenticated, "--gateway", &WEIGHTS).expect_err("refused");
        assert_eq!(e.0, "a:9090, b:9090: UNAUTHENTICATED: no token; no replica's weights changed");
    }

    #[test]
    fn each_different_refusal_is_a_line_of_its_own() {
        let two = [
            refusal("a:9090", tonic::Code::FailedPrecondition, "cohort green has no subscriber on this replica"),
            refusal("b:9090", tonic::Code::InvalidArgument, "routes[0].weights: all zero"),
        ];
        let e = dry_run_verdict(&two, "--gateway", &WEIGHTS).expect_err("refused");
        let lines: Vec<&str> = e.0.lines().collect();
        assert_eq!(lines.len(), 3, "{e}");
        assert!(lines[0].starts_with("a:9090: FAILED_PRECONDITION"), "{e}");
        assert!(lines[1].starts_with("b:9090: INVALID_ARGUMENT"), "{e}");
        assert!(lines[2].contains("--force"), "{e}");
    }
}
