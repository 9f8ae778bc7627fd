//! A route's `head_of_line` rescue: when one message holds its partition's commits back (the
//! lowest offset not yet settled, with later ones acked) for `after_ms`, it is moved to the
//! retry topic or the dead-letter topic so that the partition's commits go on. Without it, a
//! message whose handler hangs and extends its lease, or that keeps failing, holds the
//! partition's committed offset (and the route's lag alarm) until it exhausts its attempts.
//! Plain settings and their checks; the watching and the moving are the dispatcher's.

use serde::Deserialize;

/// Where a message that holds its partition's commits back goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rescue {
    /// To the route's `retry.retry_topic`, as its next attempt after the route's backoff: it
    /// comes back from there (its key's order is not kept across it, as for any retry there).
    RetryTopic,
    /// To the route's `dead_letter_topic`, with the reason: an operator redrives it.
    DeadLetter,
}

impl Rescue {
    pub fn as_str(self) -> &'static str {
        match self {
            Rescue::RetryTopic => "retry-topic",
            Rescue::DeadLetter => "dead-letter",
        }
    }
}

/// A route's `head_of_line` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadOfLine {
    /// How long one message may hold its partition's commits back while later ones are acked.
    pub after_ms: u64,
    pub action: Rescue,
}

/// Shortest `after_ms`: below it a message that is merely being worked on (a normal handler,
/// a retry's backoff) would be moved.
pub const MIN_AFTER_MS: u64 = 100;

impl HeadOfLine {
    /// What is wrong with it on a route with a retry topic and a dead-letter topic as given:
    /// (field under `head_of_line`, what to fix).
    pub fn problems(&self, retry_topic: bool, dead_letter_topic: bool) -> Vec<(&'static str, String)> {
        let mut found = Vec::new();
        if self.after_ms < MIN_AFTER_MS {
            found.push(("after_ms", format!("must be at least {MIN_AFTER_MS}")));
        }
        match self.action {
            Rescue::RetryTopic if !retry_topic => found.push((
                "action",
                "\"retry-topic\" needs retry.retry_topic: set it, or use \"dead-letter\"".to_string(),
            )),
            Rescue::DeadLetter if !dead_letter_topic => found.push((
                "action",
                "\"dead-letter\" needs dead_letter_topic: set it, or use \"retry-topic\"".to_string(),
            )),
            _ => {}
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_action_needs_its_topic_and_the_wait_a_floor() {
        let hol = |after_ms, action| HeadOfLine { after_ms, action };
        let fields = |h: HeadOfLine, retry, dlq| h.problems(retry, dlq).into_iter().map(|(f, _)| f).collect::<Vec<_>>();
        assert!(fields(hol(5_000, Rescue::RetryTopic), true, false).is_empty());
        assert!(fields(hol(5_000, Rescue::DeadLetter), false, true).is_empty());
        assert_eq!(fields(hol(5_000, Rescue::RetryTopic), false, true), vec!["action"]);
        assert_eq!(fields(hol(5_000, Rescue::DeadLetter), true, false), vec!["action"]);
        assert_eq!(fields(hol(10, Rescue::DeadLetter), true, true), vec!["after_ms"]);
    }
}
