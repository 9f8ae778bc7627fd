//! Rate limits on the mock cluster: a route limited to so many messages a second delivers at
//! that rate to subscribers that could take far more, its backlog waits in Kafka (partitions
//! pause at the route's bound, nothing is buffered past it), the limit changes live, and a
//! subscriber may ask for a lower limit of its own in its Hello, never a higher one. Rates are
//! counted by the test over whole seconds of deliveries, not read from the gateway.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use fanout_client::stream::{self, Subscription};
use fanout_gateway::config::rate_limit::RateLimit;
use fanout_gateway::proto;
use fanout_gateway::stats::Stats;
use parking_lot::Mutex;
use support::*;
use tokio::time::Instant;

const PARTITIONS: i32 = 4;
/// The route's bound per partition: what a throttled route may hold at most.
const BOUND: usize = 300;

fn limited(bootstrap: &str, group: &str, messages_per_s: u64) -> fanout_gateway::config::Config {
    let mut c = config(bootstrap, group);
    c.kafka.max_uncommitted_per_partition = BOUND;
    c.routes[0].rate_limit = Some(RateLimit { messages_per_s, ..RateLimit::default() });
    c.validate().expect("valid config");
    c
}

/// Receives and acks at once, whatever comes, counting deliveries (and distinct ids) into
/// `seen` until the stream ends.
async fn ack_everything(mut sub: Subscription, seen: Arc<Mutex<(u64, HashSet<String>)>>) {
    while let Ok(Some(batch)) = sub.next().await {
        let ids: Vec<String> = batch.iter().map(stream::id_of).collect();
        {
            let mut s = seen.lock();
            s.0 += ids.len() as u64;
            s.1.extend(ids.iter().cloned());
        }
        if sub.ack(ids).await.is_err() {
            return;
        }
    }
}

/// Waits until deliveries flow (the route's group has its partitions), then a second more,
/// so that a measurement starts on a running route.
async fn until_flowing(seen: &Mutex<(u64, HashSet<String>)>) {
    let first = poll_until(Duration::from_secs(30), || async { seen.lock().0 }, |n| *n > 0).await;
    assert!(first > 0, "deliveries started");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Deliveries per second counted over `over`, after which the count is read again.
async fn rate_over(seen: &Mutex<(u64, HashSet<String>)>, over: Duration) -> f64 {
    let (start, at) = (seen.lock().0, Instant::now());
    tokio::time::sleep(over).await;
    let (end, took) = (seen.lock().0, at.elapsed());
    (end - start) as f64 / took.as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_limited_to_1000_a_second_delivers_at_that_rate_holds_its_bound_and_changes_live() {
    init_logs();
    let cluster = mock_cluster(PARTITIONS);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("rate-limit");
    // More than 10 s at 1 000/s and 5 s at 3 000/s: the subscribers never run dry.
    let ids = produce(&bootstrap, 40_000, 400).await;
    let run = async {
        let gw = start_gateway(limited(&bootstrap, &group, 1_000)).await;
        let stats = gw.stats();
        let seen = Arc::new(Mutex::new((0u64, HashSet::new())));
        let mut subscribers = Vec::new();
        for name in ["a", "b"] {
            // Windows far above the rate: only the limit holds them back.
            let sub =
                Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, name, 2_000)).await.expect("subscribes");
            subscribers.push(tokio::spawn(ack_everything(sub, seen.clone())));
        }
        // The first burst and the partitions' first fill are over after a second.
        until_flowing(&seen).await;
        let at_1000 = rate_over(&seen, Duration::from_secs(10)).await;
        let peak = Stats::get(&stats.buffered_peak);
        let pauses = Stats::get(&stats.partition_pauses);

        let mut route = limited(&bootstrap, &group, 3_000).routes.remove(0);
        route.group_id = None;
        let refused = gw.update_routes(vec![route]).await;
        assert!(refused.is_empty(), "the new limit is applied: {refused:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let at_3000 = rate_over(&seen, Duration::from_secs(5)).await;
        let (metrics, values) = scrape(gw.admin_addr()).await;

        figure(format!(
            "rate limit: {at_1000:.0} msg/s over 10 s at a limit of 1000, then {at_3000:.0} msg/s over 5 s after a \
             live change to 3000; peak buffered {peak} (bound {BOUND} x {PARTITIONS} partitions), {pauses} partition \
             pauses"
        ));
        assert!((900.0..=1_100.0).contains(&at_1000), "1 000 msg/s +-10%: {at_1000:.0}");
        assert!((2_700.0..=3_300.0).contains(&at_3000), "3 000 msg/s +-10% after the live change: {at_3000:.0}");
        assert!(peak <= (BOUND * PARTITIONS as usize) as u64, "buffered at most the bound: {peak}");
        assert!(pauses > 0, "the backlog waited in Kafka: partitions paused");
        let throttled = values.get("fanout_route_throttled_seconds_total{route=\"orders\"}").copied();
        assert!(throttled.is_some_and(|s| s > 10.0), "time held back is exported: {throttled:?}\n{metrics}");
        assert_eq!(values.get("fanout_route_rate_limit{route=\"orders\",unit=\"messages\"}"), Some(&3_000.0));

        // Nothing is lost to the limit: lifted, everything arrives.
        let mut route = limited(&bootstrap, &group, 1).routes.remove(0);
        route.rate_limit = None;
        assert!(gw.update_routes(vec![route]).await.is_empty());
        let all = poll_until(Duration::from_secs(30), || async { seen.lock().1.len() }, |n| *n >= ids.len()).await;
        assert_eq!(all, ids.len(), "every message delivered once the limit is lifted");
        gw.shutdown().await;
        for s in subscribers {
            let _ = s.await;
        }
    };
    tokio::time::timeout(Duration::from_secs(120), run).await.expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_may_ask_for_a_lower_limit_than_its_route_never_a_higher_one() {
    init_logs();
    let cluster = mock_cluster(1);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("rate-limit-hello");
    produce(&bootstrap, 5_000, 50).await;
    let run = async {
        let gw = start_gateway(limited(&bootstrap, &group, 1_000)).await;
        let ask = |name: &str, messages_per_s: u64, burst: u64| proto::Hello {
            rate_limit: Some(proto::RateLimit { messages_per_s, bytes_per_s: 0, burst }),
            ..stream::hello(ROUTE, name, 2_000)
        };

        // A burst without a message rate is refused, naming the field.
        let refused = match Subscription::connect(&gw.endpoint(), ask("bad", 0, 10)).await {
            Ok(mut sub) => sub.next().await.err().map(|s| s.message().to_string()),
            Err(e) => Some(e.to_string()),
        };
        let refused = format!("{refused:?}");
        assert!(refused.contains("Hello.rate_limit") && refused.contains("burst"), "{refused}");

        let sub = Subscription::connect(&gw.endpoint(), ask("slow", 100, 0)).await.expect("subscribes");
        let seen = Arc::new(Mutex::new((0u64, HashSet::new())));
        let task = tokio::spawn(ack_everything(sub, seen.clone()));
        until_flowing(&seen).await;
        let at_100 = rate_over(&seen, Duration::from_secs(5)).await;
        task.abort();

        // Asking for more than the route allows gets the route's.
        let greedy = Subscription::connect(&gw.endpoint(), ask("greedy", 50_000, 0)).await.expect("subscribes");
        let (_, values) = poll_until(
            Duration::from_secs(10),
            || scrape(gw.admin_addr()),
            |(_, v)| v.keys().any(|k| k.starts_with("fanout_subscriber_rate_limit_messages") && k.contains("greedy")),
        )
        .await;
        let limits: Vec<f64> = values
            .iter()
            .filter(|(k, _)| k.starts_with("fanout_subscriber_rate_limit_messages{") && k.contains("greedy"))
            .map(|(_, v)| *v)
            .collect();
        figure(format!("subscriber rate limit: asked 100/s on a 1000/s route, got {at_100:.0} msg/s; asked 50000/s, limited to {limits:?}"));
        assert!((90.0..=110.0).contains(&at_100), "the subscriber's own 100 msg/s +-10%: {at_100:.0}");
        assert_eq!(limits, vec![1_000.0], "capped by the route's limit");
        drop(greedy);
        gw.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(60), run).await.expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_asks_for_its_own_limit_in_its_hello() {
    use fanout_client::{Delivery, Nack, Replicas, Subscriber};
    init_logs();
    let cluster = mock_cluster(1);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("rate-limit-library");
    produce(&bootstrap, 2_000, 50).await;
    let run = async {
        // No route limit: the subscriber's own is the only one. The default bound, so that
        // what waits in the gateway outlasts a partition's refetch after a pause.
        let gw = start_gateway(config(&bootstrap, &group)).await;
        let seen = Arc::new(Mutex::new((0u64, HashSet::new())));
        let handler = {
            let seen = seen.clone();
            move |_: Delivery| {
                seen.lock().0 += 1;
                async { Ok::<(), Nack>(()) }
            }
        };
        let subscriber = Subscriber::builder(ROUTE)
            .replicas(Replicas::list([gw.endpoint()]))
            .max_messages_per_second(200)
            // A window and handlers far above the rate: only the limit holds it back.
            .max_in_flight(1_000)
            .concurrency(64)
            .build()
            .expect("valid settings");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(async move {
            subscriber
                .run(handler, async {
                    let _ = stop_rx.await;
                })
                .await
        });
        until_flowing(&seen).await;
        let at_200 = rate_over(&seen, Duration::from_secs(4)).await;
        let _ = stop_tx.send(());
        let _ = running.await;
        figure(format!("library rate limit: asked 200/s in its Hello, got {at_200:.0} msg/s"));
        assert!((180.0..=220.0).contains(&at_200), "200 msg/s +-10%: {at_200:.0}");
        gw.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(60), run).await.expect("test finished in time");
}
