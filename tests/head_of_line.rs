//! Head-of-line rescue on the mock cluster: one message whose handler hangs holds its
//! partition's commits back while the messages after it are acked; with the route's
//! `head_of_line`, it is moved after `after_ms` (to the retry topic, or the dead-letter topic),
//! the partition commits to its end, and the moved message arrives again from the retry topic
//! (or waits in the dead-letter topic with the reason). Nothing is lost.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use fanout_client::stream::{self, Subscription};
use fanout_gateway::config::head_of_line::{HeadOfLine, Rescue};
use fanout_gateway::config::{Config, RetryPolicy};
use fanout_gateway::dead_letters;
use fanout_gateway::stats::Stats;
use support::*;
use tokio::time::Instant;

const RETRY: &str = "orders-retry";
const DLQ: &str = "orders-dead-letters";
const AFTER_MS: u64 = 1_500;
const MESSAGES: usize = 200;

/// One partition, a deadline far away (only the rescue moves the hung message), fast retries.
fn rescuing(bootstrap: &str, group: &str, action: Rescue) -> Config {
    let mut c = config(bootstrap, group);
    let route = &mut c.routes[0];
    route.ack_timeout_ms = 120_000;
    route.retry =
        RetryPolicy { max_attempts: 5, initial_backoff_ms: 100, max_backoff_ms: 200, retry_topic: Some(RETRY.into()) };
    route.dead_letter_topic = Some(DLQ.into());
    route.head_of_line = Some(HeadOfLine { after_ms: AFTER_MS, action });
    c.validate().expect("valid config");
    c
}

/// What the subscriber saw: every delivery as (origin record id, topic it came from, attempt),
/// and when the hung one first came. A delivery from the retry topic is named by its origin.
#[derive(Default)]
struct Seen {
    deliveries: Vec<(String, String, u32)>,
    hung_at: Option<Instant>,
    hung_handle: Option<u64>,
    /// The last time the gateway had moved nothing yet (checked every 200 ms at most), and
    /// whether it has moved the message since.
    unmoved_at: Option<Instant>,
    moved: bool,
}

/// Acks everything but the first delivery of `hung` (held, never acked, as by a handler that
/// hangs) until `done` holds of what was seen or 30 s pass.
async fn hang_one(sub: &mut Subscription, hung: &str, stats: &Stats, done: impl Fn(&Seen) -> bool) -> Seen {
    let mut seen = Seen::default();
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        seen.moved = Stats::get(&stats.head_of_line_moved) > 0;
        if !seen.moved {
            seen.unmoved_at = Some(Instant::now());
        }
        if done(&seen) || Instant::now() >= until {
            break;
        }
        let Ok(Ok(Some(batch))) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await else { continue };
        let mut acks = Vec::new();
        for d in batch {
            let origin = |name: &str| {
                let h = d.headers.iter().rev().find(|h| h.name == name)?;
                Some(String::from_utf8_lossy(h.value.as_deref()?).into_owned())
            };
            let id = match (
                origin(dead_letters::HEADER_ORIGIN_TOPIC),
                origin(dead_letters::HEADER_ORIGIN_PARTITION),
                origin(dead_letters::HEADER_ORIGIN_OFFSET),
            ) {
                (Some(t), Some(p), Some(o)) => format!("{t}/{p}/{o}"),
                _ => stream::id_of(&d),
            };
            seen.deliveries.push((id.clone(), d.topic.clone(), d.attempt));
            if id == hung && d.attempt == 1 && seen.hung_at.is_none() {
                seen.hung_at = Some(Instant::now());
                seen.hung_handle = Some(d.ack_id);
                continue;
            }
            acks.push(d.ack_id);
        }
        sub.ack_ids(acks).await.expect("acks sent");
    }
    seen
}

/// One past the last offset of `topic`'s partition 0.
fn topic_end(bootstrap: &str, topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer =
        rdkafka::config::ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("consumer");
    consumer.fetch_watermarks(topic, 0, Duration::from_secs(10)).expect("watermarks").1
}

fn setup() -> (rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>, String) {
    init_logs();
    let cluster = mock_cluster(1);
    cluster.create_topic(RETRY, 1, 3).expect("retry topic");
    cluster.create_topic(DLQ, 1, 3).expect("dead-letter topic");
    let bootstrap = cluster.bootstrap_servers();
    (cluster, bootstrap)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_message_moves_to_the_retry_topic_and_the_partition_commits_to_its_end() {
    let (_cluster, bootstrap) = setup();
    let group = unique_group("hol-retry");
    let ids = produce(&bootstrap, MESSAGES, 20).await;
    let hung = ids[0].clone();
    let run = async {
        let gw = start_gateway(rescuing(&bootstrap, &group, Rescue::RetryTopic)).await;
        let stats = gw.stats();
        let mut sub = Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "a", 100)).await.expect("subscribes");
        let acked_all = |seen: &Seen| {
            let got: HashSet<&String> = seen.deliveries.iter().map(|(id, _, _)| id).collect();
            let again = seen.deliveries.iter().any(|(id, topic, _)| *id == hung && topic == RETRY);
            got.len() == ids.len() && again
        };
        let seen = hang_one(&mut sub, &hung, &stats, acked_all).await;
        let again = seen.deliveries.iter().find(|(id, topic, _)| *id == hung && topic == RETRY).cloned();
        // The hung delivery's own late ack is unknown now: counted and ignored.
        let unknown_before = Stats::get(&stats.unknown_acks);
        sub.ack_ids(seen.hung_handle.into_iter().collect()).await.expect("late ack sent");
        let committed = poll_until(
            Duration::from_secs(20),
            || async { (fully_committed(&bootstrap, &group, 1), topic_fully_committed(&bootstrap, &group, RETRY, 1)) },
            |c| *c == (true, true),
        )
        .await;
        let (code, partitions, err) =
            fanoutctl(&["--gateway", &gw.admin_addr().to_string(), "partitions", ROUTE]).await;
        let moved = Stats::get(&stats.head_of_line_moved);
        let unknown = Stats::get(&stats.unknown_acks) - unknown_before;
        let got: HashSet<&String> = seen.deliveries.iter().map(|(id, _, _)| id).collect();
        figure(format!(
            "head of line, retry topic: {} of {MESSAGES} ids delivered, hung {hung} came again as {again:?}, moved \
             {moved}, origin and retry topic committed to their ends {committed:?}, late ack counted unknown {unknown}",
            got.len()
        ));
        assert_eq!(got.len(), ids.len(), "nothing lost");
        assert_eq!(again.map(|(_, _, attempt)| attempt), Some(2), "the hung message came again from the retry topic");
        assert_eq!(moved, 1, "one message moved");
        assert_eq!(committed, (true, true), "the origin partition commits to its end, and so does the retry topic");
        assert_eq!(unknown, 1);
        assert_eq!(code, 0, "{err}");
        let row: Vec<&str> = partitions
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|cells| cells.get(2) == Some(&TOPIC) && cells.get(3) == Some(&"0"))
            .unwrap_or_default();
        assert_eq!(row.last(), Some(&"1"), "MOVED shows in fanoutctl partitions: {partitions}");
        drop(sub);
        gw.shutdown().await;
        seen.hung_at
    };
    let hung_at = tokio::time::timeout(Duration::from_secs(90), run).await.expect("test finished in time");
    assert!(hung_at.is_some(), "the hung message was delivered first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_message_moves_to_the_dead_letter_topic_with_the_reason() {
    let (_cluster, bootstrap) = setup();
    let group = unique_group("hol-dlq");
    let ids = produce(&bootstrap, MESSAGES, 20).await;
    let hung = ids[0].clone();
    let run = async {
        let gw = start_gateway(rescuing(&bootstrap, &group, Rescue::DeadLetter)).await;
        let stats = gw.stats();
        let mut sub = Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "a", 100)).await.expect("subscribes");
        let delivered_and_moved = |seen: &Seen| {
            seen.moved && seen.deliveries.iter().map(|(id, _, _)| id).collect::<HashSet<_>>().len() == ids.len()
        };
        let seen = hang_one(&mut sub, &hung, &stats, delivered_and_moved).await;
        let committed =
            poll_until(Duration::from_secs(20), || async { fully_committed(&bootstrap, &group, 1) }, |c| *c).await;
        // Not moved while the subscriber still looked (within 200 ms) before after_ms.
        let unmoved_for = seen.hung_at.zip(seen.unmoved_at).map(|(hung, unmoved)| unmoved - hung);
        // Every letter the topic holds (its end), and the first one's headers.
        let in_dlq = topic_end(&bootstrap, DLQ);
        let letters = read_topic(&bootstrap, DLQ, 1);
        let reason = letters.first().map(|(_, h)| h[dead_letters::HEADER_REASON].clone()).unwrap_or_default();
        let offset = letters.first().map(|(_, h)| h[dead_letters::HEADER_ORIGIN_OFFSET].clone());
        figure(format!(
            "head of line, dead-letter topic: {} letter(s), reason {reason:?}, origin committed to its end \
             {committed}, moved {}",
            letters.len(),
            Stats::get(&stats.head_of_line_moved)
        ));
        assert_eq!(in_dlq, 1, "the hung message is the one letter");
        assert_eq!(offset.as_deref(), Some("0"), "its origin offset");
        assert!(reason.contains("head_of_line") && reason.contains(&AFTER_MS.to_string()), "{reason}");
        assert!(committed, "the origin partition commits to its end");
        assert!(
            !seen.deliveries.iter().any(|(id, _, attempt)| *id == hung && *attempt > 1),
            "a dead-lettered message is not delivered again"
        );
        assert!(
            unmoved_for.is_some_and(|d| d >= Duration::from_millis(AFTER_MS - 250)),
            "not moved before after_ms: still unmoved {unmoved_for:?} after it was held"
        );
        drop(sub);
        gw.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(90), run).await.expect("test finished in time");
}
