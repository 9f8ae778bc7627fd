//! Leases on the mock cluster: a subscriber that needs longer than the route's
//! `ack_timeout_ms` extends its deliveries' deadlines (`Extend`, like Pub/Sub's
//! modifyAckDeadline) and is never redelivered to; one that keeps extending past the route's
//! `max_lease_ms` has its delivery taken back and redelivered as the next attempt; extensions
//! of ids not in flight are counted and ignored. The subscriber library extends a running
//! handler's deliveries by itself.

mod support;

use std::time::{Duration, Instant};

use std::sync::Arc;

use fanout_client::stream::{self, Subscription};
use fanout_client::{Delivery, Nack, Replicas, Subscriber};
use fanout_gateway::stats::Stats;
use support::*;

const ACK_TIMEOUT_MS: u64 = 1_000;

/// One route, one partition, a 1 s ack deadline and a lease of at most `max_lease_ms`.
fn lease_config(bootstrap: &str, group: &str, max_lease_ms: u64) -> fanout_gateway::config::Config {
    let mut c = config(bootstrap, group);
    c.routes[0].ack_timeout_ms = ACK_TIMEOUT_MS;
    c.routes[0].max_lease_ms = max_lease_ms;
    // A delivery taken back comes again at once.
    c.routes[0].retry.initial_backoff_ms = 100;
    c.routes[0].retry.max_backoff_ms = 100;
    c.validate().expect("valid config");
    c
}

/// Works on `id` for `hold`, extending its deadline by the ack timeout every 400 ms; what else
/// the stream delivered meanwhile (a redelivery would be there), as (id, attempt).
async fn work_extending(sub: &mut Subscription, id: &str, hold: Duration) -> Vec<(String, u32)> {
    let started = Instant::now();
    let mut meanwhile = Vec::new();
    while started.elapsed() < hold {
        sub.extend(&[id.to_string()], Duration::from_millis(ACK_TIMEOUT_MS)).await.expect("extend sent");
        if let Ok(Ok(Some(batch))) = tokio::time::timeout(Duration::from_millis(400), sub.next()).await {
            meanwhile.extend(batch.iter().map(|d| (stream::id_of(d), d.attempt)));
        }
    }
    meanwhile
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_three_times_the_ack_timeout_that_extends_is_never_redelivered() {
    init_logs();
    let cluster = mock_cluster(1);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("leases-kept");
    let ids = produce(&bootstrap, 1, 1).await;
    let run = async {
        let gw = start_gateway(lease_config(&bootstrap, &group, 60_000)).await;
        let stats = gw.stats();
        let mut sub = Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "a", 10)).await.expect("subscribes");
        let first = next_batch(&mut sub).await;
        assert_eq!(first.iter().map(|d| (stream::id_of(d), d.attempt)).collect::<Vec<_>>(), vec![(ids[0].clone(), 1)]);
        let meanwhile = work_extending(&mut sub, &ids[0], Duration::from_millis(3 * ACK_TIMEOUT_MS)).await;
        sub.ack(vec![ids[0].clone()]).await.expect("ack sent");
        // Two deadlines' worth more: nothing comes back.
        let after = tokio::time::timeout(Duration::from_millis(2 * ACK_TIMEOUT_MS), sub.next()).await;
        let extensions = Stats::get(&stats.lease_extensions);
        figure(format!(
            "lease kept: worked 3 x the {ACK_TIMEOUT_MS} ms ack timeout extending, {extensions} extensions, \
             redelivered meanwhile {meanwhile:?}, expired {}",
            Stats::get(&stats.expired)
        ));
        assert!(meanwhile.is_empty(), "nothing redelivered while it extended: {meanwhile:?}");
        assert!(after.is_err(), "nothing redelivered after the ack: {after:?}");
        assert_eq!(Stats::get(&stats.expired), 0, "no deadline passed");
        assert!(extensions >= 5, "the deadline was extended every 400 ms: {extensions}");
        let committed = poll_until(
            Duration::from_secs(10),
            || async { committed(&bootstrap, &group, 1).get(&0).copied() },
            |c| *c == Some(1),
        )
        .await;
        assert_eq!(committed, Some(1), "acked after its lease, then committed");
        drop(sub);
        gw.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(60), run).await.expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_extends_past_the_routes_max_lease_has_its_delivery_taken_back() {
    const MAX_LEASE_MS: u64 = 2_500;
    init_logs();
    let cluster = mock_cluster(1);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("leases-ended");
    let ids = produce(&bootstrap, 1, 1).await;
    let run = async {
        let gw = start_gateway(lease_config(&bootstrap, &group, MAX_LEASE_MS)).await;
        let stats = gw.stats();
        let mut sub = Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "a", 10)).await.expect("subscribes");
        let first = next_batch(&mut sub).await;
        let first_handle = first[0].ack_id;
        let sent = Instant::now();
        // Extends for longer than the lease allows (and shorter than two leases): the delivery
        // comes back as attempt 2, whose own lease outlasts the work.
        let meanwhile = work_extending(&mut sub, &ids[0], Duration::from_millis(MAX_LEASE_MS + 1_500)).await;
        let taken_back_after = sent.elapsed();
        assert_eq!(meanwhile, vec![(ids[0].clone(), 2)], "taken back at the lease's end and delivered again");
        assert_eq!(Stats::get(&stats.expired), 1, "as a passed deadline");
        // The first delivery's handle is settled: extending it is counted, not applied.
        let unknown_before = Stats::get(&stats.unknown_extensions);
        sub.extend_ids(vec![first_handle, 123_456_789], Duration::from_secs(5)).await.expect("extend sent");
        let unknown = poll_until(
            Duration::from_secs(5),
            || async { Stats::get(&stats.unknown_extensions) },
            |n| *n >= unknown_before + 2,
        )
        .await;
        figure(format!(
            "lease ended: extended past max_lease_ms {MAX_LEASE_MS}, deliveries meanwhile {meanwhile:?} ({:.1} s of \
             work), expired {}, unknown extensions {}",
            taken_back_after.as_secs_f64(),
            Stats::get(&stats.expired),
            unknown - unknown_before
        ));
        assert_eq!(unknown, unknown_before + 2, "two ids not in flight");
        sub.ack(vec![ids[0].clone()]).await.expect("ack sent");
        drop(sub);
        gw.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(60), run).await.expect("test finished in time");
}

/// What a library subscriber with one handler at a time, whose handler takes 3 s (three of
/// the route's ack timeouts) on the first attempt of each of two messages, saw until a second
/// after the second one finished: the attempts it handled, and the gateway's count of
/// extensions and passed deadlines. The second message waits 3 s in the library's queue.
async fn slow_library_handler(max_lease_extension: Duration) -> (Vec<u32>, u64, u64) {
    init_logs();
    let cluster = mock_cluster(1);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("leases-library");
    produce(&bootstrap, 2, 2).await;
    let gw = start_gateway(lease_config(&bootstrap, &group, 60_000)).await;
    let attempts: Arc<parking_lot::Mutex<Vec<u32>>> = Arc::default();
    let slow_done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let first_done = Arc::new(tokio::sync::Notify::new());
    let handler = {
        let (attempts, first_done, slow_done) = (attempts.clone(), first_done.clone(), slow_done.clone());
        move |d: Delivery| {
            attempts.lock().push(d.attempt);
            let (first_done, slow_done) = (first_done.clone(), slow_done.clone());
            async move {
                if d.attempt == 1 {
                    tokio::time::sleep(Duration::from_millis(3 * ACK_TIMEOUT_MS)).await;
                    if slow_done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
                        first_done.notify_one();
                    }
                }
                Ok::<(), Nack>(())
            }
        }
    };
    // What came meanwhile (queued: one handler at a time) runs right after it.
    let stop = async move {
        first_done.notified().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let subscriber = Subscriber::builder(ROUTE)
        .replicas(Replicas::list([gw.endpoint()]))
        .max_lease_extension(max_lease_extension)
        .concurrency(1)
        .build()
        .expect("valid settings");
    subscriber.run(handler, stop).await.expect("drains cleanly");
    let stats = gw.stats();
    let seen = (attempts.lock().clone(), Stats::get(&stats.lease_extensions), Stats::get(&stats.expired));
    gw.shutdown().await;
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_extends_a_slow_handlers_delivery_so_it_is_never_redelivered() {
    let run = slow_library_handler(Duration::from_secs(3_600));
    let (attempts, extensions, expired) = tokio::time::timeout(Duration::from_secs(60), run).await.expect("in time");
    figure(format!(
        "library lease: two messages, one handler at a time, each 3 x the {ACK_TIMEOUT_MS} ms ack timeout: attempts \
         {attempts:?}, {extensions} extensions, {expired} deadlines passed"
    ));
    assert_eq!(attempts, vec![1, 1], "each handled once, never redelivered, the queued one neither");
    assert_eq!(expired, 0, "no deadline passed");
    assert!(extensions >= 4, "extended about every half second: {extensions}");
}

/// The same handler with the library's extension off: the gateway takes the delivery back
/// while the handler still works on it, which is what the extension prevents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_librarys_extension_the_same_handler_is_redelivered() {
    let run = slow_library_handler(Duration::ZERO);
    let (attempts, extensions, expired) = tokio::time::timeout(Duration::from_secs(60), run).await.expect("in time");
    assert!(
        attempts.contains(&2),
        "redelivered while it ran: {attempts:?} (expired {expired}, extensions {extensions})"
    );
    assert!(expired >= 1 && extensions == 0, "expired {expired}, extensions {extensions}");
}
