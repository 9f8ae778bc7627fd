//! The Redis dedup store against a real Redis (127.0.0.1:6379; `.ci/run` starts one): verdicts,
//! a key repeated in a batch, TTL expiry by Redis's own clock, what is stored where, replicas
//! sharing claims, and what happens while Redis is unreachable or restarting.
//!
//! Every test works under its own key prefix (test name, process id, random number) and deletes
//! its keys when done, pass or fail.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::process::Stdio;
use std::time::Duration;

use fanout_gateway::dedup::{self, Claim, DedupConfig, DedupError, DedupStore, RedisStore, StoreKind, Verdict};
use futures::FutureExt;

mod support;

const REDIS: &str = "redis://127.0.0.1:6379";
const LONG_TTL: Duration = Duration::from_secs(60);
/// Overall limit of each test: a hang fails instead of blocking CI.
const TEST_LIMIT: Duration = Duration::from_secs(60);

fn claims(list: &[(&str, &str)]) -> Vec<Claim> {
    list.iter().map(|(key, origin)| Claim::new(*key, *origin)).collect()
}

fn dup(holder: &str) -> Verdict {
    Verdict::Duplicate { holder: holder.to_string() }
}

async fn claim(store: &dyn DedupStore, list: &[(&str, &str)]) -> Vec<Verdict> {
    store.claim(claims(list)).await.expect("redis answers the claim")
}

/// A direct connection, to look at what the store wrote.
async fn inspect() -> redis::aio::MultiplexedConnection {
    redis::Client::open(REDIS)
        .expect("valid url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis must run on 127.0.0.1:6379 (redis-server --daemonize yes --port 6379 --save '')")
}

async fn keys_under(prefix: &str) -> Vec<String> {
    let mut conn = inspect().await;
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .expect("SCAN");
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    keys.sort();
    keys
}

/// Runs `body` with a fresh key prefix under the test limit, then deletes every key under the
/// prefix whether the body passed, failed or hung.
async fn with_prefix<F, Fut>(test: &str, body: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let prefix = format!("fanout-test:dedup:{test}:{}:{:x}:", std::process::id(), rand::random::<u64>());
    let outcome = tokio::time::timeout(TEST_LIMIT, AssertUnwindSafe(body(prefix.clone())).catch_unwind()).await;
    let keys = keys_under(&prefix).await;
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut inspect().await).await.expect("DEL");
    }
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("{test} did not finish within {TEST_LIMIT:?}"),
    }
}

async fn store(prefix: &str, ttl: Duration) -> RedisStore {
    RedisStore::connect(REDIS, prefix, ttl).await.expect("connects to the local redis")
}

#[tokio::test]
async fn a_key_is_first_then_again_for_its_holder_and_duplicate_for_others() {
    with_prefix("verdicts", |prefix| async move {
        let store = store(&prefix, LONG_TTL).await;
        assert_eq!(store.kind(), "redis");
        assert_eq!(claim(&store, &[("order-1", "orders/0/10")]).await, vec![Verdict::First]);
        assert_eq!(claim(&store, &[("order-1", "orders/0/10")]).await, vec![Verdict::Again], "a redelivery");
        assert_eq!(claim(&store, &[("order-1", "orders/3/99")]).await, vec![dup("orders/0/10")]);
        // The duplicate did not take the key over.
        assert_eq!(claim(&store, &[("order-1", "orders/0/10")]).await, vec![Verdict::Again]);
        assert_eq!(store.claim(Vec::new()).await.expect("empty batch"), Vec::<Verdict>::new());
        assert_eq!(store.evictions(), 0, "redis evicts by its own policy");
    })
    .await;
}

#[tokio::test]
async fn a_key_repeated_in_one_batch_goes_to_its_first_claim() {
    with_prefix("batch", |prefix| async move {
        let store = store(&prefix, LONG_TTL).await;
        let verdicts =
            claim(&store, &[("k", "t/0/1"), ("k", "t/0/2"), ("j", "t/1/1"), ("k", "t/0/1"), ("j", "t/1/5")]).await;
        assert_eq!(verdicts, vec![Verdict::First, dup("t/0/1"), Verdict::First, Verdict::Again, dup("t/1/1")]);
    })
    .await;
}

#[tokio::test]
async fn replicas_sharing_redis_see_each_others_claims() {
    with_prefix("replicas", |prefix| async move {
        let (a, b) = (store(&prefix, LONG_TTL).await, store(&prefix, LONG_TTL).await);
        assert_eq!(claim(&a, &[("k", "t/0/1")]).await, vec![Verdict::First]);
        // After a rebalance the other replica gets the same record again: deliver it.
        assert_eq!(claim(&b, &[("k", "t/0/1")]).await, vec![Verdict::Again]);
        assert_eq!(claim(&b, &[("k", "t/2/8")]).await, vec![dup("t/0/1")]);
    })
    .await;
}

#[tokio::test]
async fn a_claim_expires_with_its_ttl_and_the_key_is_free_again() {
    with_prefix("ttl", |prefix| async move {
        let store = store(&prefix, Duration::from_millis(300)).await;
        // One batch, so the key is certainly still held for the second claim.
        assert_eq!(claim(&store, &[("k", "a/0/1"), ("k", "b/0/1")]).await, vec![Verdict::First, dup("a/0/1")]);
        let key = format!("{prefix}k");
        let mut conn = inspect().await;
        for _ in 0..100 {
            let exists: bool = redis::cmd("EXISTS").arg(&key).query_async(&mut conn).await.expect("EXISTS");
            if !exists {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(claim(&store, &[("k", "b/0/1")]).await, vec![Verdict::First], "redis expired the claim");
        let holder: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await.expect("GET");
        assert_eq!(holder.as_deref(), Some("b/0/1"));
    })
    .await;
}

#[tokio::test]
async fn claims_are_stored_under_the_prefix_with_the_ttl() {
    with_prefix("layout", |prefix| async move {
        let store = store(&prefix, LONG_TTL).await;
        assert_eq!(store.prefix(), prefix);
        claim(&store, &[("a", "t/0/1"), ("b", "t/0/2"), ("a", "t/0/3")]).await;
        assert_eq!(keys_under(&prefix).await, vec![format!("{prefix}a"), format!("{prefix}b")]);
        let mut conn = inspect().await;
        for (key, origin) in [("a", "t/0/1"), ("b", "t/0/2")] {
            let key = format!("{prefix}{key}");
            let holder: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await.expect("GET");
            assert_eq!(holder.as_deref(), Some(origin), "{key} holds its first origin");
            let pttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut conn).await.expect("PTTL");
            assert!(pttl > 0 && pttl <= LONG_TTL.as_millis() as i64, "{key}: PTTL {pttl} not in (0, ttl]");
        }
    })
    .await;
}

#[tokio::test]
async fn open_gives_each_route_its_own_prefix() {
    with_prefix("open", |prefix| async move {
        let config = DedupConfig {
            store: StoreKind::Redis,
            redis_url: REDIS.to_string(),
            key_prefix: Some(format!("{prefix}{{route}}:")),
            ..DedupConfig::default()
        };
        let orders = dedup::open(&config, "orders").await.expect("opens the redis store");
        let billing = dedup::open(&config, "billing").await.expect("opens the redis store");
        assert_eq!(orders.kind(), "redis");
        assert_eq!(claim(orders.as_ref(), &[("k", "t/0/1")]).await, vec![Verdict::First]);
        assert_eq!(claim(billing.as_ref(), &[("k", "u/0/1")]).await, vec![Verdict::First], "routes do not share keys");
        assert_eq!(keys_under(&prefix).await, vec![format!("{prefix}billing:k"), format!("{prefix}orders:k")]);
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_redis_is_a_clear_error_at_connect() {
    tokio::time::timeout(TEST_LIMIT, async {
        // Nothing listens on port 1; the password must not show in the error.
        let url = "redis://:hunter2@127.0.0.1:1";
        let error = RedisStore::connect(url, "unused:", LONG_TTL).await.expect_err("connect fails");
        assert!(matches!(error, DedupError::Unreachable { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains("cannot reach redis at redis://***@127.0.0.1:1"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");

        let config = DedupConfig {
            store: StoreKind::Redis,
            redis_url: "http://127.0.0.1:6379".into(),
            ..DedupConfig::default()
        };
        let error = dedup::open(&config, "orders").await.err().expect("a non-redis URL is refused");
        assert!(error.to_string().contains("`redis_url`"), "{error}");
    })
    .await
    .expect("test timed out");
}

/// A redis-server of this test's own, on a free port, killed when dropped.
struct PrivateRedis {
    port: u16,
    child: tokio::process::Child,
}

impl PrivateRedis {
    async fn start(port: u16) -> Self {
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server must be installed (.ci/run installs it)");
        let url = format!("redis://127.0.0.1:{port}");
        for _ in 0..100 {
            if let Ok(client) = redis::Client::open(url.as_str()) {
                if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                    if redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok() {
                        return Self { port, child };
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server on port {port} did not come up");
    }

    async fn stop(mut self) -> u16 {
        self.child.kill().await.expect("kill our redis-server");
        self.port
    }
}

#[tokio::test]
async fn claims_fail_clearly_while_redis_is_down_and_work_again_after_it_restarts() {
    tokio::time::timeout(TEST_LIMIT, async {
        let port = support::free_port();
        let redis = PrivateRedis::start(port).await;
        let url = format!("redis://127.0.0.1:{port}");
        let store = RedisStore::connect(&url, "dedup:", LONG_TTL).await.expect("connects");
        assert_eq!(claim(&store, &[("k", "t/0/1")]).await, vec![Verdict::First]);

        let port = redis.stop().await;
        let error = store.claim(claims(&[("k", "t/0/2")])).await.expect_err("no claim without redis");
        assert!(matches!(error, DedupError::Unreachable { .. }), "{error:?}");
        assert!(error.to_string().contains(&format!("cannot reach redis at {url}")), "{error}");

        let _redis = PrivateRedis::start(port).await;
        let mut last = None;
        for _ in 0..50 {
            match store.claim(claims(&[("k", "t/0/2")])).await {
                Ok(verdicts) => {
                    // Nothing persisted across the restart, so the key is free: the store is on
                    // the new server.
                    assert_eq!(verdicts, vec![Verdict::First]);
                    return;
                }
                Err(error) => last = Some(error),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("the store did not reconnect after redis restarted; last error: {last:?}");
    })
    .await
    .expect("test timed out");
}
