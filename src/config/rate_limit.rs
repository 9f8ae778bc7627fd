//! A route's `rate_limit` (and a subscriber's, from its Hello): how fast the route may deliver,
//! for a downstream that can take only so much (a database, a third-party API). Plain settings,
//! their checks, and how a subscriber's limit is capped by its route's; the token buckets that
//! enforce them are `crate::subscriptions`'.

use serde::Deserialize;

/// Most messages (or bytes) per second a limit may name: far above what one route delivers,
/// low enough that a bucket's arithmetic in `f64` stays exact to the message.
pub const MAX_PER_SECOND: u64 = 1 << 40;

/// Share of a second's worth a bucket holds when `burst` is not set: a tenth, so a limited
/// route starts and resumes smoothly instead of in once-a-second lumps.
const DEFAULT_BURST_SECONDS: f64 = 0.1;

/// Longest burst, in seconds of the rate: a bucket that holds more than a minute's worth is no
/// longer a limit a downstream can plan for.
const MAX_BURST_SECONDS: u64 = 60;

/// A token-bucket limit: messages and/or bytes per second, with a burst. Zero or unset means
/// that dimension is not limited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Messages per second, redeliveries included (each is work for the downstream).
    #[serde(default)]
    pub messages_per_s: u64,
    /// Bytes per second: key, value and headers of each delivery.
    #[serde(default)]
    pub bytes_per_s: u64,
    /// Messages that may go at once after a quiet spell (the message bucket's size); the byte
    /// bucket holds the same share of a second of `bytes_per_s`. Unset: a tenth of a second's
    /// worth. Needs `messages_per_s`.
    #[serde(default)]
    pub burst: u64,
}

impl RateLimit {
    /// Whether any dimension is limited.
    pub fn limits(&self) -> bool {
        self.messages_per_s > 0 || self.bytes_per_s > 0
    }

    /// How many seconds of the rate a bucket holds.
    pub fn burst_seconds(&self) -> f64 {
        if self.burst > 0 && self.messages_per_s > 0 {
            self.burst as f64 / self.messages_per_s as f64
        } else {
            DEFAULT_BURST_SECONDS
        }
    }

    /// A subscriber's limit under its route's: each dimension the lower of the two that are
    /// set, so a subscriber can ask to go slower than its route, never faster.
    pub fn capped_by(&self, route: Option<&RateLimit>) -> RateLimit {
        let lower = |mine: u64, theirs: u64| match (mine, theirs) {
            (0, t) => t,
            (m, 0) => m,
            (m, t) => m.min(t),
        };
        let Some(route) = route else { return *self };
        let messages_per_s = lower(self.messages_per_s, route.messages_per_s);
        // The burst follows the message rate it was given for.
        let burst = if messages_per_s == self.messages_per_s { self.burst } else { route.burst };
        RateLimit { messages_per_s, bytes_per_s: lower(self.bytes_per_s, route.bytes_per_s), burst }
    }

    /// What is wrong with this limit: (field under `rate_limit`, what to fix).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut found = Vec::new();
        if !self.limits() {
            found.push((
                "messages_per_s",
                "set messages_per_s or bytes_per_s above 0 (or remove rate_limit for no limit)".to_string(),
            ));
        }
        for (field, value) in [("messages_per_s", self.messages_per_s), ("bytes_per_s", self.bytes_per_s)] {
            if value > MAX_PER_SECOND {
                found.push((field, format!("must be at most {MAX_PER_SECOND}")));
            }
        }
        if self.burst > 0 && self.messages_per_s == 0 {
            found.push(("burst", "counts messages: it needs messages_per_s".to_string()));
        }
        let longest = self.messages_per_s.saturating_mul(MAX_BURST_SECONDS);
        if self.burst > longest && self.messages_per_s > 0 {
            found.push(("burst", format!("must be at most {MAX_BURST_SECONDS} s of messages_per_s ({longest})")));
        }
        found
    }
}

impl std::fmt::Display for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if self.messages_per_s > 0 {
            parts.push(format!("{} msg/s", self.messages_per_s));
        }
        if self.bytes_per_s > 0 {
            parts.push(format!("{} B/s", self.bytes_per_s));
        }
        if self.burst > 0 {
            parts.push(format!("burst {}", self.burst));
        }
        if parts.is_empty() {
            return f.write_str("none");
        }
        f.write_str(&parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(messages_per_s: u64, bytes_per_s: u64, burst: u64) -> RateLimit {
        RateLimit { messages_per_s, bytes_per_s, burst }
    }

    #[test]
    fn a_subscriber_may_go_slower_than_its_route_never_faster() {
        let route = limit(1_000, 0, 50);
        assert_eq!(limit(100, 0, 5).capped_by(Some(&route)), limit(100, 0, 5));
        assert_eq!(limit(5_000, 0, 500).capped_by(Some(&route)), limit(1_000, 0, 50), "the route's rate and burst");
        assert_eq!(limit(0, 2_048, 0).capped_by(Some(&route)), limit(1_000, 2_048, 50), "both dimensions apply");
        assert_eq!(limit(100, 0, 0).capped_by(None), limit(100, 0, 0));
    }

    #[test]
    fn each_problem_names_its_field() {
        let fields = |l: RateLimit| l.problems().into_iter().map(|(f, _)| f).collect::<Vec<_>>();
        assert_eq!(fields(limit(0, 0, 0)), vec!["messages_per_s"]);
        assert_eq!(fields(limit(0, 1_000, 10)), vec!["burst"]);
        assert_eq!(fields(limit(10, 0, 601)), vec!["burst"]);
        assert_eq!(fields(limit(MAX_PER_SECOND + 1, 0, 0)), vec!["messages_per_s"]);
        assert!(fields(limit(10, 0, 600)).is_empty());
        assert!(fields(limit(0, 1, 0)).is_empty());
    }

    #[test]
    fn the_burst_is_a_share_of_a_second_of_the_message_rate() {
        assert_eq!(limit(1_000, 0, 250).burst_seconds(), 0.25);
        assert_eq!(limit(1_000, 0, 0).burst_seconds(), 0.1);
        assert_eq!(limit(0, 1_000, 0).burst_seconds(), 0.1);
    }
}
