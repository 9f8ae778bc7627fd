//! Adaptive windows end to end on the mock cluster: on a route with `window = "adaptive"`, a
//! subscriber that nacks `DISPOSITION_OVERLOADED` has its window halved at once (what
//! `fanout_subscriber_window` and Status show), and the message comes again without using up
//! an attempt, even on a route that allows one. The window's behaviour under a subscriber
//! that slows down is `cargo tools bench --only adaptive`'s.

mod support;

use std::time::Duration;

use fanout_client::stream::{self, Subscription};
use fanout_gateway::config::WindowMode;
use fanout_gateway::proto::subscribe_request::Kind;
use fanout_gateway::proto::{Disposition, Nack};
use fanout_gateway::stats::Stats;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_nack_halves_the_window_and_the_message_comes_again_without_using_an_attempt() {
    init_logs();
    let cluster = mock_cluster(1);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("adaptive");
    let ids = produce(&bootstrap, 5, 5).await;
    let mut config = config(&bootstrap, &group);
    let route = &mut config.routes[0];
    route.window = WindowMode::Adaptive;
    route.retry.max_attempts = 1;
    route.retry.initial_backoff_ms = 100;
    route.retry.max_backoff_ms = 100;
    config.validate().expect("valid config");
    let run = async {
        let gw = start_gateway(config).await;
        let stats = gw.stats();
        let mut sub =
            Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "busy", 100)).await.expect("subscribes");
        let window = || async {
            let (_, values) = scrape(gw.admin_addr()).await;
            values.iter().find(|(k, _)| k.starts_with("fanout_subscriber_window{")).map(|(_, v)| *v)
        };
        let first = next_batch(&mut sub).await;
        assert_eq!(window().await, Some(100.0), "the adaptive window starts at the subscriber's own");
        let overloaded = first.iter().find(|d| stream::id_of(d) == ids[0]).expect("the first message").ack_id;
        let rest: Vec<u64> = first.iter().map(|d| d.ack_id).filter(|id| *id != overloaded).collect();
        sub.send(Kind::Nack(Nack {
            ack_id: overloaded,
            reason: "database saturated".into(),
            disposition: Disposition::Overloaded as i32,
            retry_after: None,
        }))
        .await
        .expect("nack sent");
        sub.ack_ids(rest).await.expect("acks sent");
        let halved = poll_until(Duration::from_secs(10), window, |w| *w == Some(50.0)).await;
        let again = next_batch(&mut sub).await;
        let attempts: Vec<(String, u32)> = again.iter().map(|d| (stream::id_of(d), d.attempt)).collect();
        figure(format!(
            "adaptive window: after an OVERLOADED nack the window is {halved:?} (was 100); came again {attempts:?}; \
             dead-lettered or exhausted {}",
            Stats::get(&stats.exhausted_without_dlq)
        ));
        assert_eq!(halved, Some(50.0), "halved at once");
        assert_eq!(attempts, vec![(ids[0].clone(), 2)], "delivered again though the route allows one attempt");
        assert_eq!(Stats::get(&stats.exhausted_without_dlq), 0, "an overload is not a failure of the message");
        sub.ack_ids(again.iter().map(|d| d.ack_id).collect()).await.expect("ack sent");
        let committed =
            poll_until(Duration::from_secs(10), || async { fully_committed(&bootstrap, &group, 1) }, |c| *c).await;
        assert!(committed, "everything committed");
        drop(sub);
        gw.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(60), run).await.expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overloads_through_the_retry_topic_never_use_up_the_attempts() {
    const RETRY: &str = "orders-retry";
    const DLQ: &str = "orders-dead-letters";
    init_logs();
    let cluster = mock_cluster(1);
    cluster.create_topic(RETRY, 1, 3).expect("retry topic");
    cluster.create_topic(DLQ, 1, 3).expect("dead-letter topic");
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("overloads-retry-topic");
    let ids = produce(&bootstrap, 1, 1).await;
    let mut config = config(&bootstrap, &group);
    let route = &mut config.routes[0];
    route.retry.max_attempts = 2;
    route.retry.initial_backoff_ms = 50;
    route.retry.max_backoff_ms = 100;
    route.retry.retry_topic = Some(RETRY.into());
    route.dead_letter_topic = Some(DLQ.into());
    config.validate().expect("valid config");
    let run = async {
        let gw = start_gateway(config).await;
        let stats = gw.stats();
        let mut sub =
            Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "busy", 10)).await.expect("subscribes");
        // Overloaded four times over a route that allows two attempts, then handled.
        let mut attempts = Vec::new();
        while attempts.len() < 5 {
            let batch = next_batch(&mut sub).await;
            for d in batch {
                attempts.push((d.topic.clone(), d.attempt));
                if attempts.len() < 5 {
                    let disposition = Disposition::Overloaded as i32;
                    let nack = Nack { ack_id: d.ack_id, reason: "busy".into(), disposition, retry_after: None };
                    sub.send(Kind::Nack(nack)).await.expect("nack sent");
                } else {
                    sub.ack_ids(vec![d.ack_id]).await.expect("ack sent");
                }
            }
        }
        let committed = poll_until(
            Duration::from_secs(10),
            || async { (fully_committed(&bootstrap, &group, 1), topic_fully_committed(&bootstrap, &group, RETRY, 1)) },
            |c| *c == (true, true),
        )
        .await;
        figure(format!(
            "overloads through the retry topic: deliveries {attempts:?}, dead-lettered {}",
            Stats::get(&stats.dead_lettered)
        ));
        let numbers: Vec<u32> = attempts.iter().map(|(_, a)| *a).collect();
        assert_eq!(numbers, vec![1, 2, 3, 4, 5], "each came again, counted as a delivery");
        assert!(attempts[1..].iter().all(|(topic, _)| topic == RETRY), "through the retry topic: {attempts:?}");
        assert_eq!(Stats::get(&stats.dead_lettered), 0, "overloads never used up its two attempts");
        assert_eq!(committed, (true, true));
        assert_eq!(ids.len(), 1);
        drop(sub);
        gw.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(60), run).await.expect("test finished in time");
}
