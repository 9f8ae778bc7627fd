//! The Redis store: claims shared by every replica, one pipelined round trip per batch.

use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};

use super::{Claim, DedupError, DedupStore, Verdict, MAX_TTL_MS};

/// Each connection attempt gives up after this long (an unroutable host would otherwise hang).
const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A batch's round trip gives up after this long; the caller may retry the batch, and a claim
/// that did land meanwhile comes back as `Again`.
const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnect attempts per outage before a claim fails; the next claim starts a new round.
/// Backoff 100 ms doubling, capped at 1 s, so a claim fails within a few seconds while Redis is down.
const REDIS_RECONNECT_RETRIES: usize = 3;

/// Claims in Redis, one key per claim: `SET <prefix><key> <origin> NX GET PX <ttl_ms>`.
///
/// `NX GET` (Redis >= 7.0) sets the key only when absent and returns the previous holder in
/// the same step, so there is no window between "is it held?" and "hold it". A batch is one
/// pipelined round trip; Redis runs its commands in order, so a key repeated in a batch sees
/// the earlier claim. The connection manager reconnects after Redis restarts.
pub struct RedisStore {
    conn: redis::aio::ConnectionManager,
    prefix: String,
    ttl_ms: u64,
    /// The URL with any password masked, for errors and logs.
    url: Arc<str>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .field("ttl_ms", &self.ttl_ms)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects (failing if Redis is unreachable now, so a bad URL shows at startup) and checks
    /// that the server supports `SET .. NX GET`.
    pub async fn connect(url: &str, prefix: &str, ttl: Duration) -> Result<Self, DedupError> {
        let shown: Arc<str> = Arc::from(redact(url));
        let client =
            redis::Client::open(url).map_err(|source| DedupError::InvalidUrl { url: shown.to_string(), source })?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_CONNECT_TIMEOUT))
            .set_response_timeout(Some(REDIS_RESPONSE_TIMEOUT))
            .set_number_of_retries(REDIS_RECONNECT_RETRIES)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(1));
        let mut conn = redis::aio::ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|source| error_for(&shown, source))?;
        match redis::cmd("INFO").arg("server").query_async::<String>(&mut conn).await {
            Ok(info) => {
                if let Some(version) = redis_version(&info) {
                    if version.0 < 7 {
                        return Err(DedupError::Unsupported {
                            url: shown.to_string(),
                            version: format!("{}.{}", version.0, version.1),
                        });
                    }
                }
            }
            // INFO may be forbidden by ACLs; the first claim will tell if SET .. GET is missing.
            Err(error) if error.code() == Some("NOPERM") => {
                tracing::warn!(%error, url = %shown, "cannot read the redis version; assuming >= 7.0");
            }
            Err(source) => return Err(error_for(&shown, source)),
        }
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(MAX_TTL_MS).clamp(1, MAX_TTL_MS);
        tracing::info!(url = %shown, prefix, ttl_ms, "dedup store connected to redis");
        Ok(Self { conn, prefix: prefix.to_string(), ttl_ms, url: shown })
    }

    /// The prefix every key of this store starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl DedupStore for RedisStore {
    fn claim(&self, claims: Vec<Claim>) -> BoxFuture<'static, Result<Vec<Verdict>, DedupError>> {
        if claims.is_empty() {
            return futures::future::ready(Ok(Vec::new())).boxed();
        }
        let mut pipe = redis::pipe();
        for claim in &claims {
            pipe.cmd("SET")
                .arg(format!("{}{}", self.prefix, claim.key))
                .arg(&claim.origin)
                .arg("NX")
                .arg("GET")
                .arg("PX")
                .arg(self.ttl_ms);
        }
        let mut conn = self.conn.clone();
        let url = self.url.clone();
        async move {
            let holders: Vec<Option<Vec<u8>>> =
                pipe.query_async(&mut conn).await.map_err(|source| error_for(&url, source))?;
            if holders.len() != claims.len() {
                return Err(DedupError::Protocol { url: url.to_string(), expected: claims.len(), got: holders.len() });
            }
            Ok(claims
                .iter()
                .zip(holders)
                .map(|(claim, holder)| {
                    Verdict::of(&claim.origin, holder.map(|h| String::from_utf8_lossy(&h).into_owned()))
                })
                .collect())
        }
        .boxed()
    }

    fn evictions(&self) -> u64 {
        0
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

/// Connection trouble reads as "unreachable"; anything Redis itself refused as a command error.
fn error_for(url: &str, source: redis::RedisError) -> DedupError {
    let url = url.to_string();
    if source.is_io_error() || source.is_connection_refusal() || source.is_timeout() || source.is_connection_dropped() {
        DedupError::Unreachable { url, source }
    } else {
        DedupError::Command { url, source }
    }
}

/// `redis_version` (major, minor) from `INFO server`.
fn redis_version(info: &str) -> Option<(u32, u32)> {
    let value = info.lines().find_map(|line| line.strip_prefix("redis_version:"))?;
    let mut parts = value.trim().split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some((major, minor))
}

/// `url` with its user-info masked, so errors and logs never carry a password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***{}", &url[..scheme_end], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_errors() {
        assert_eq!(redact("redis://:hunter2@cache:6379/0"), "redis://***@cache:6379/0");
        assert_eq!(redact("redis://user:hunter2@cache:6379"), "redis://***@cache:6379");
        assert_eq!(redact("redis://cache:6379"), "redis://cache:6379");
    }

    #[test]
    fn redis_version_is_read_from_info() {
        let info = "# Server\r\nredis_version:7.0.15\r\nredis_git_sha1:00000000\r\n";
        assert_eq!(redis_version(info), Some((7, 0)));
        assert_eq!(redis_version("redis_version:6.2.14\r\n"), Some((6, 2)));
        assert_eq!(redis_version("# Server\r\n"), None);
    }
}
