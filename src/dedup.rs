//! The dedup store: which idempotency keys have been claimed, and by which record.
//!
//! A route in `effectively-once` mode asks the store, before delivering a batch of records,
//! to claim each record's idempotency key for that record's origin (`topic/partition/offset`).
//! The verdicts go back to the dispatcher: [`Verdict::First`] and [`Verdict::Again`] are
//! delivered, [`Verdict::Duplicate`] is acked to Kafka without delivery.
//!
//! `Again` exists because Kafka redelivers: after a crash or a rebalance between claim and ack,
//! the same record comes back and finds its key held by itself. Treating that as a duplicate
//! would ack a record nobody processed, so the store remembers the first holder of each key and
//! only a *different* origin is a duplicate.
//!
//! Two stores sit behind [`DedupStore`]: [`MemoryStore`] (one gateway process; bounded, lazily
//! expired) and [`RedisStore`] (shared by every replica; one pipelined round trip per batch).
//! [`open`] picks one from a route's [`DedupConfig`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use xxhash_rust::xxh3::Xxh3;

use crate::kafka::Record;

mod memory;
mod redis_store;

pub use memory::MemoryStore;
pub use redis_store::RedisStore;

pub use crate::config::dedup::{DedupConfig, KeySource, StoreKind, MAX_TTL_MS};

/// The idempotency key of `record` under `config` (see [`idempotency_key`]).
pub fn key_of(config: &DedupConfig, record: &Record) -> Option<String> {
    // A tombstone hashes like an empty value: the content key's encoding predates nulls.
    let value = record.value.as_deref().unwrap_or_default();
    idempotency_key(&config.key, &config.header, record.key.as_deref(), value, &record.headers)
}

/// The idempotency key of a record, or `None` when it has none.
///
/// Header mode: the value of header `header` (the last one if the producer sent several, as
/// Kafka's own `lastHeader` does). An absent or empty value gives `None`: such records are never
/// deduplicated, because an empty key would make every keyless record a duplicate of the first.
/// A value that is not UTF-8 is written as `hex:` and its bytes in hex, so distinct values stay
/// distinct.
///
/// Content mode: a stable 128-bit hash (xxh3-128, seed 0) of key and value, as 32 hex digits.
/// The key is tagged (absent vs present) and both parts are length-prefixed, so
/// (key "ab", value "c") and (key "a", value "bc") differ. The encoding must never change: keys
/// already in Redis would stop matching after an upgrade.
pub fn idempotency_key(
    source: &KeySource,
    header: &str,
    key: Option<&[u8]>,
    value: &[u8],
    headers: &[(String, Option<Bytes>)],
) -> Option<String> {
    match source {
        KeySource::Header => {
            let (_, raw) = headers.iter().rev().find(|(name, _)| name == header)?;
            let raw = raw.as_deref()?;
            if raw.is_empty() {
                return None;
            }
            Some(match std::str::from_utf8(raw) {
                Ok(text) => text.to_string(),
                Err(_) => format!("hex:{}", hex(raw)),
            })
        }
        KeySource::Content => {
            let mut hasher = Xxh3::new();
            match key {
                None => hasher.update(&[0]),
                Some(key) => {
                    hasher.update(&[1]);
                    hasher.update(&(key.len() as u64).to_le_bytes());
                    hasher.update(key);
                }
            }
            hasher.update(&(value.len() as u64).to_le_bytes());
            hasher.update(value);
            Some(format!("{:032x}", hasher.digest128()))
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// One record's request to hold an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub key: String,
    /// The record's `topic/partition/offset` ([`Record::delivery_id`]): stable across redeliveries.
    pub origin: String,
}

impl Claim {
    pub fn new(key: impl Into<String>, origin: impl Into<String>) -> Self {
        Self { key: key.into(), origin: origin.into() }
    }

    /// The claim of `record` for `key`.
    pub fn for_record(key: String, record: &Record) -> Self {
        Self { key, origin: record.delivery_id().to_string() }
    }
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nobody held the key; now this origin does. Deliver.
    First,
    /// This same origin already holds the key: a redelivery. Deliver again.
    Again,
    /// Another origin holds the key. Ack without delivering.
    Duplicate { holder: String },
}

impl Verdict {
    /// The verdict for `origin` when the key was held by `holder` (`None`: free, now claimed).
    fn of(origin: &str, holder: Option<String>) -> Self {
        match holder {
            None => Self::First,
            Some(holder) if holder == origin => Self::Again,
            Some(holder) => Self::Duplicate { holder },
        }
    }

    pub fn is_duplicate(&self) -> bool {
        matches!(self, Self::Duplicate { .. })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DedupError {
    #[error("invalid dedup config: {}", .0.iter().map(|(f, m)| format!("`{f}`: {m}")).collect::<Vec<_>>().join("; "))]
    InvalidConfig(Vec<(String, String)>),
    #[error("dedup redis_url `{url}` is not usable: {source}")]
    InvalidUrl {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("cannot reach redis at {url} (is it running, and is dedup.redis_url right?): {source}")]
    Unreachable {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("redis at {url} is version {version}; the dedup store needs redis >= 7.0 (SET .. NX GET)")]
    Unsupported { url: String, version: String },
    #[error("redis at {url} refused a dedup claim: {source}")]
    Command {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("redis at {url} answered {got} replies to {expected} claims")]
    Protocol { url: String, expected: usize, got: usize },
}

/// Holds idempotency keys for a TTL, per origin.
pub trait DedupStore: Send + Sync + 'static {
    /// Claims each key for its origin for the TTL, in order; one verdict per claim, same order.
    /// Claims of the same key inside one batch: the first wins, later ones with another origin
    /// are `Duplicate`. A holder keeps its key for the TTL from its first claim: `Again` and
    /// `Duplicate` do not extend it.
    ///
    /// The future owns what it needs, so the dispatcher can run it outside its loop. Two batches
    /// in flight at once may be applied in either order; a caller that needs one applied before
    /// the other awaits the first.
    fn claim(&self, claims: Vec<Claim>) -> BoxFuture<'static, Result<Vec<Verdict>, DedupError>>;
    /// Keys evicted for capacity before their TTL (memory store; Redis returns 0 — Redis evicts
    /// by its own policy).
    fn evictions(&self) -> u64;
    fn kind(&self) -> &'static str;
}

/// Opens the store `config` asks for, for the route named `route`.
pub async fn open(config: &DedupConfig, route: &str) -> Result<Arc<dyn DedupStore>, DedupError> {
    let problems = config.problems();
    if !problems.is_empty() {
        return Err(DedupError::InvalidConfig(problems));
    }
    let ttl = Duration::from_millis(config.ttl_ms);
    Ok(match config.store {
        StoreKind::Memory => Arc::new(MemoryStore::new(ttl, config.capacity)),
        StoreKind::Redis => Arc::new(RedisStore::connect(&config.redis_url, &config.prefix_for(route), ttl).await?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn claims(list: &[(&str, &str)]) -> Vec<Claim> {
        list.iter().map(|(k, o)| Claim::new(*k, *o)).collect()
    }

    pub(super) fn dup(holder: &str) -> Verdict {
        Verdict::Duplicate { holder: holder.to_string() }
    }

    fn headers(list: &[(&str, &[u8])]) -> Vec<(String, Option<Bytes>)> {
        list.iter().map(|(k, v)| (k.to_string(), Some(Bytes::copy_from_slice(v)))).collect()
    }

    fn header_key(list: &[(&str, &[u8])]) -> Option<String> {
        idempotency_key(&KeySource::Header, "idempotency-key", Some(b"k"), b"v", &headers(list))
    }

    #[test]
    fn header_mode_uses_the_named_header() {
        assert_eq!(header_key(&[("other", b"x"), ("idempotency-key", b"order-42")]), Some("order-42".into()));
        assert_eq!(header_key(&[("other", b"x")]), None, "absent: never deduplicated");
        assert_eq!(header_key(&[]), None);
        assert_eq!(header_key(&[("idempotency-key", b"")]), None, "empty: never deduplicated");
        assert_eq!(header_key(&[("Idempotency-Key", b"x")]), None, "Kafka header names are case-sensitive");
        assert_eq!(
            header_key(&[("idempotency-key", b"first"), ("idempotency-key", b"last")]),
            Some("last".into()),
            "the last header of that name wins, as Kafka's lastHeader"
        );
        assert_eq!(header_key(&[("idempotency-key", &[0xff, 0x00])]), Some("hex:ff00".into()));
    }

    fn content_key(key: Option<&[u8]>, value: &[u8]) -> String {
        idempotency_key(&KeySource::Content, "ignored", key, value, &headers(&[("ignored", b"x")]))
            .expect("content mode always has a key")
    }

    #[test]
    fn content_mode_hashes_key_and_value_unambiguously() {
        let k = content_key(Some(b"ab"), b"c");
        assert_eq!(k.len(), 32);
        assert!(k.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(k, content_key(Some(b"ab"), b"c"), "deterministic");
        assert_ne!(k, content_key(Some(b"a"), b"bc"), "length-prefixed");
        assert_ne!(content_key(None, b"v"), content_key(Some(b""), b"v"), "no key differs from an empty key");
        assert_ne!(content_key(Some(b"k"), b"v1"), content_key(Some(b"k"), b"v2"));
        // Keys already stored in Redis must keep matching after an upgrade: the encoding is fixed.
        assert_eq!(content_key(Some(b"ab"), b"c"), GOLDEN_AB_C);
    }

    /// xxh3-128 (seed 0) of `[1] ++ 2u64le ++ "ab" ++ 1u64le ++ "c"`, computed with the Python
    /// `xxhash` package, independently of this crate.
    const GOLDEN_AB_C: &str = "c7bad18300bfb1f993ebd0e60c2a192b";

    #[test]
    fn defaults_apply_to_an_empty_section() {
        let config: DedupConfig = toml::from_str("").expect("an empty section is valid");
        assert_eq!(config, DedupConfig::default());
        assert_eq!(config.store, StoreKind::Memory);
        assert_eq!(config.key, KeySource::Header);
        assert_eq!(config.header, "idempotency-key");
        assert_eq!(config.redis_url, "redis://127.0.0.1:6379");
        assert_eq!(config.ttl_ms, 86_400_000);
        assert!(config.problems().is_empty());
    }

    #[test]
    fn config_parses_every_field_and_refuses_unknown_ones() {
        let config: DedupConfig = toml::from_str(
            r#"store = "redis"
               redis_url = "redis://cache:6380/2"
               key_prefix = "orders:{route}:"
               key = "content"
               header = ""
               ttl_ms = 5000
               capacity = 10"#,
        )
        .expect("valid section");
        assert_eq!(config.store, StoreKind::Redis);
        assert_eq!(config.key, KeySource::Content);
        assert!(config.problems().is_empty(), "an empty header is fine in content mode: {:?}", config.problems());
        assert_eq!(config.prefix_for("billing"), "orders:billing:");
        assert!(toml::from_str::<DedupConfig>("ttl = 5").is_err());
        assert!(toml::from_str::<DedupConfig>(r#"store = "etcd""#).is_err());
    }

    #[test]
    fn default_prefix_separates_routes() {
        let config = DedupConfig::default();
        assert_eq!(config.prefix_for("orders"), "fanout:dedup:orders:");
        assert_ne!(config.prefix_for("a"), config.prefix_for("b"));
    }

    fn fields(config: &DedupConfig) -> Vec<String> {
        config.problems().into_iter().map(|(field, _)| field).collect()
    }

    #[test]
    fn problems_name_the_field_at_fault() {
        let base = DedupConfig::default;
        assert_eq!(fields(&DedupConfig { ttl_ms: 0, ..base() }), vec!["ttl_ms"]);
        assert_eq!(fields(&DedupConfig { ttl_ms: MAX_TTL_MS + 1, ..base() }), vec!["ttl_ms"]);
        assert_eq!(fields(&DedupConfig { capacity: 0, ..base() }), vec!["capacity"]);
        assert_eq!(fields(&DedupConfig { header: " ".into(), ..base() }), vec!["header"]);
        assert_eq!(fields(&DedupConfig { key_prefix: Some(String::new()), ..base() }), vec!["key_prefix"]);
        let redis = |url: &str| DedupConfig { store: StoreKind::Redis, redis_url: url.into(), ..base() };
        assert_eq!(fields(&redis("http://cache:6379")), vec!["redis_url"]);
        assert_eq!(fields(&redis("cache:6379")), vec!["redis_url"]);
        assert_eq!(fields(&redis("rediss://cache:6379")), vec!["redis_url"], "no TLS built in");
        assert!(fields(&redis("redis://:secret@cache:6379/1")).is_empty());
        // The memory store never uses the URL.
        assert!(fields(&DedupConfig { redis_url: "nonsense".into(), ..base() }).is_empty());
        // Every problem at once.
        let all = DedupConfig { ttl_ms: 0, capacity: 0, header: String::new(), ..redis("x") };
        assert_eq!(fields(&all), vec!["ttl_ms", "capacity", "header", "redis_url"]);
        let (_, message) = &DedupConfig { ttl_ms: 0, ..base() }.problems()[0];
        assert_eq!(message, "must be > 0");
    }

    #[tokio::test]
    async fn open_refuses_a_config_with_problems_and_opens_memory_by_default() {
        tokio::time::timeout(Duration::from_secs(60), async {
            let bad = DedupConfig { ttl_ms: 0, ..DedupConfig::default() };
            let error = open(&bad, "orders").await.err().expect("a zero TTL is refused");
            assert!(error.to_string().contains("`ttl_ms`: must be > 0"), "{error}");
            let store = open(&DedupConfig::default(), "orders").await.expect("memory store opens");
            assert_eq!(store.kind(), "memory");
            let verdicts = store.claim(claims(&[("k", "t/0/1"), ("k", "t/0/2")])).await.expect("claims");
            assert_eq!(verdicts, vec![Verdict::First, dup("t/0/1")]);
        })
        .await
        .expect("test timed out");
    }
}
