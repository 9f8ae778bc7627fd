//! A route's `dedup` section (effectively-once routes): which store keeps the claims, where
//! the idempotency key comes from, how long a claim lasts. Plain settings and their checks; the
//! stores and the key derivation that use them are `crate::dedup`'s.

use serde::Deserialize;

/// Longest TTL accepted: a year. Longer windows only grow the store, and a bound keeps
/// `Instant + ttl` from overflowing.
pub const MAX_TTL_MS: u64 = 365 * 24 * 60 * 60 * 1000;

/// Where a route's idempotency key comes from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KeySource {
    /// The value of the record header named by [`DedupConfig::header`]; records without it
    /// are never deduplicated.
    #[default]
    Header,
    /// A hash of the record's key and value: identical payloads are duplicates.
    Content,
}

/// Which store keeps the claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// In this process: lost on restart and not shared between replicas.
    #[default]
    Memory,
    /// In Redis (>= 7.0): survives gateway restarts and is shared by every replica.
    Redis,
}

/// A route's `dedup` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupConfig {
    /// Memory for one replica; Redis when several replicas (or restarts) must share claims.
    #[serde(default)]
    pub store: StoreKind,
    /// Where the Redis store connects; ignored by the memory store.
    #[serde(default = "default_redis_url")]
    pub redis_url: String,
    /// Prefix of every Redis key of this route; `{route}` in it is replaced by the route's name.
    /// Unset: `fanout:dedup:{route}:`, so routes never share keys.
    #[serde(default)]
    pub key_prefix: Option<String>,
    /// Where each record's idempotency key comes from.
    #[serde(default)]
    pub key: KeySource,
    /// Header that carries the idempotency key when `key = "header"`.
    #[serde(default = "default_header")]
    pub header: String,
    /// How long a claim holds its key.
    #[serde(default = "default_ttl_ms")]
    pub ttl_ms: u64,
    /// Most keys the memory store holds; past it the oldest claim is forgotten early (counted
    /// in `DedupStore::evictions`).
    #[serde(default = "default_capacity")]
    pub capacity: usize,
}

/// `redis://127.0.0.1:6379`: a Redis beside the gateway (a sidecar or the local host).
fn default_redis_url() -> String {
    "redis://127.0.0.1:6379".to_string()
}

/// `idempotency-key`: the header name most HTTP APIs use for the same purpose.
fn default_header() -> String {
    "idempotency-key".to_string()
}

/// 24 hours. Duplicates come from producer retries (seconds), replays after a producer's
/// crash (minutes) and re-runs of an upstream job (within the day); a longer window costs
/// memory in proportion to rate × TTL and rarely catches more.
const fn default_ttl_ms() -> u64 {
    24 * 60 * 60 * 1000
}

/// 1 000 000 keys: about 200 MB in the memory store (key, origin and bookkeeping, ~200 B each).
/// At the default TTL that covers ~11 distinct keys per second for a full day; faster routes
/// should use Redis or accept a shorter effective window (see `evictions`).
const fn default_capacity() -> usize {
    1_000_000
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self {
            store: StoreKind::default(),
            redis_url: default_redis_url(),
            key_prefix: None,
            key: KeySource::default(),
            header: default_header(),
            ttl_ms: default_ttl_ms(),
            capacity: default_capacity(),
        }
    }
}

impl DedupConfig {
    /// Every problem as (field suffix, message), e.g. `("ttl_ms", "must be > 0")`; the caller
    /// prefixes the route's path (`routes[0].dedup.ttl_ms`).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut bad = |field: &str, message: String| problems.push((field.to_string(), message));
        if self.ttl_ms == 0 {
            bad("ttl_ms", "must be > 0".into());
        } else if self.ttl_ms > MAX_TTL_MS {
            bad("ttl_ms", format!("must be at most {MAX_TTL_MS} (365 days)"));
        }
        if self.capacity == 0 {
            bad("capacity", "must be > 0".into());
        }
        if self.key == KeySource::Header && self.header.trim().is_empty() {
            bad("header", "must name a header when key = \"header\"".into());
        }
        if self.key_prefix.as_deref().is_some_and(str::is_empty) {
            bad("key_prefix", "must not be empty when set (keys would mix with other data)".into());
        }
        if self.store == StoreKind::Redis {
            if let Some(message) = redis_url_problem(&self.redis_url) {
                bad("redis_url", message);
            }
        }
        problems
    }

    /// The Redis key prefix of `route`'s claims.
    pub fn prefix_for(&self, route: &str) -> String {
        match &self.key_prefix {
            Some(prefix) => prefix.replace("{route}", route),
            None => format!("fanout:dedup:{route}:"),
        }
    }
}

/// Why `url` cannot be used for the Redis store, if it cannot.
fn redis_url_problem(url: &str) -> Option<String> {
    let Some(parsed) = redis::parse_redis_url(url) else {
        return Some("must be a redis URL like redis://host:6379[/db]".into());
    };
    if matches!(parsed.scheme(), "rediss" | "valkeys") {
        return Some("TLS (rediss://) is not built into this gateway; use redis:// (a TLS sidecar can add it)".into());
    }
    match redis::Client::open(url) {
        Ok(_) => None,
        Err(error) => Some(format!("must be a redis URL like redis://host:6379[/db] ({error})")),
    }
}
