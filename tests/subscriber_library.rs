//! The subscriber library (`fanout-client`) against a real gateway on the mock cluster:
//! handler concurrency with per-key order, a panicking handler, a refused subscription, the
//! drain on shutdown, and an operator's drain that takes the subscriber out.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fanout_client::stream::{self, Subscription};
use fanout_client::{Delivery, Error, Nack, Replicas, Subscriber};
use fanout_gateway::config;
use fanout_gateway::stats::Stats;
use parking_lot::Mutex;
use support::*;
use tokio::sync::Notify;

/// Per key: whether a handler of it is running, and the last offset it finished.
type KeyStates = HashMap<Vec<u8>, (bool, i64)>;

/// Resolves once `n` handlers have finished.
async fn after(done: &AtomicUsize, n: usize, wake: &Notify) {
    while done.load(Ordering::SeqCst) < n {
        let _ = tokio::time::timeout(Duration::from_millis(50), wake.notified()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_keys_on_eight_handlers_keep_each_keys_order_and_never_run_more_than_eight() {
    init_logs();
    let cluster = mock_cluster(4);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("library-concurrency");
    const KEYS: usize = 16;
    const MESSAGES: usize = KEYS * 25;
    produce(&bootstrap, MESSAGES, KEYS).await;
    let mut config = config(&bootstrap, &group);
    // The gateway may send a key's messages all at once: the library alone keeps their order.
    config.routes[0].ordering = config::Ordering::None;

    let run = async {
        let gw = start_gateway(config).await;
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let wake = Arc::new(Notify::new());
        let keys: Arc<Mutex<KeyStates>> = Arc::default();
        let violations = Arc::new(Mutex::new(Vec::<String>::new()));
        let handler = {
            let (running, most, done, wake, keys, violations) =
                (running.clone(), most.clone(), done.clone(), wake.clone(), keys.clone(), violations.clone());
            move |d: Delivery| {
                let (running, most, done, wake, keys, violations) =
                    (running.clone(), most.clone(), done.clone(), wake.clone(), keys.clone(), violations.clone());
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    let key = d.key.as_deref().unwrap_or_default().to_vec();
                    {
                        let mut keys = keys.lock();
                        let (busy, last) = keys.entry(key.clone()).or_insert((false, -1));
                        if *busy {
                            violations.lock().push(format!("{} ran beside another of its key", stream::id_of(&d)));
                        }
                        if d.offset <= *last {
                            violations.lock().push(format!("{} ran after offset {last}", stream::id_of(&d)));
                        }
                        *busy = true;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    keys.lock().insert(key, (false, d.offset));
                    running.fetch_sub(1, Ordering::SeqCst);
                    done.fetch_add(1, Ordering::SeqCst);
                    wake.notify_waiters();
                    Ok::<(), Nack>(())
                }
            }
        };
        let subscriber = Subscriber::builder(ROUTE)
            .replicas(Replicas::list([gw.endpoint()]))
            .name("library-0")
            .max_in_flight(64)
            .concurrency(8)
            .build()
            .expect("valid settings");
        let stats = subscriber.stats();
        subscriber.run(handler, after(&done, MESSAGES, &wake)).await.expect("drains cleanly");

        assert_eq!(violations.lock().as_slice(), &[] as &[String], "per-key order");
        assert_eq!(most.load(Ordering::SeqCst), 8, "at most 8 handlers at once, and 8 were used");
        let s = stats.snapshot();
        assert_eq!((s.acked, s.nacked, s.reconnects), (MESSAGES as u64, 0, 0), "{s:?}");
        eventually(Duration::from_secs(20), "everything committed", || fully_committed(&bootstrap, &group, 4)).await;
        gw.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(90), run).await.expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panicking_handler_nacks_and_the_message_comes_again() {
    init_logs();
    let cluster = mock_cluster(2);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("library-panic");
    let ids = produce(&bootstrap, 20, 5).await;
    let mut config = config(&bootstrap, &group);
    config.routes[0].retry.initial_backoff_ms = 50;
    let poison = ids[7].clone();

    let run = async {
        let gw = start_gateway(config).await;
        let seen: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
        let done = Arc::new(AtomicUsize::new(0));
        let wake = Arc::new(Notify::new());
        let handler = {
            let (seen, done, wake, poison) = (seen.clone(), done.clone(), wake.clone(), poison.clone());
            move |d: Delivery| {
                let id = stream::id_of(&d);
                seen.lock().push((id.clone(), d.attempt));
                let panics = id == poison && d.attempt == 1;
                let (done, wake) = (done.clone(), wake.clone());
                async move {
                    if panics {
                        panic!("the handler's bug, on its first attempt at {id}");
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                    wake.notify_waiters();
                    Ok::<(), Nack>(())
                }
            }
        };
        let subscriber = Subscriber::builder(ROUTE)
            .replicas(Replicas::list([gw.endpoint()]))
            .name("library-panic")
            .build()
            .expect("valid settings");
        let stats = subscriber.stats();
        subscriber.run(handler, after(&done, 20, &wake)).await.expect("drains cleanly");

        let attempts: Vec<u32> = seen.lock().iter().filter(|(id, _)| *id == poison).map(|(_, a)| *a).collect();
        assert_eq!(attempts, vec![1, 2], "the panic nacked the first attempt; the second was acked");
        let s = stats.snapshot();
        assert_eq!((s.panicked, s.nacked, s.acked), (1, 1, 20), "{s:?}");
        assert_eq!(Stats::get(&gw.stats().nacked), 1);
        eventually(Duration::from_secs(20), "everything committed", || fully_committed(&bootstrap, &group, 2)).await;
        gw.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(60), run).await.expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_route_is_an_error_on_the_first_attempt() {
    init_logs();
    let cluster = mock_cluster(2);
    let bootstrap = cluster.bootstrap_servers();
    let gw = start_gateway(config(&bootstrap, &unique_group("library-refused"))).await;
    let subscriber =
        Subscriber::builder("no-such-route").replicas(Replicas::list([gw.endpoint()])).build().expect("valid settings");
    let stats = subscriber.stats();
    let handler = |_: Delivery| async { Ok::<(), Nack>(()) };
    let ran = tokio::time::timeout(Duration::from_secs(10), subscriber.run(handler, std::future::pending())).await;
    let error = ran.expect("returns instead of retrying").expect_err("refused");
    match &error {
        Error::Refused { code, route, .. } => {
            assert_eq!((*code, route.as_str()), (tonic::Code::NotFound, "no-such-route"), "{error}")
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    assert!(error.to_string().contains("no-such-route"), "{error}");
    assert_eq!(stats.snapshot().reconnects, 0, "one attempt, no retries");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_drains_every_handled_delivery_so_nothing_is_redelivered() {
    init_logs();
    let cluster = mock_cluster(4);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("library-drain");
    let ids = produce(&bootstrap, 400, 40).await;
    let config = config(&bootstrap, &group);

    let run = async {
        let gw = start_gateway(config).await;
        let handled: Arc<Mutex<Vec<String>>> = Arc::default();
        let done = Arc::new(AtomicUsize::new(0));
        let wake = Arc::new(Notify::new());
        let handler = {
            let (handled, done, wake) = (handled.clone(), done.clone(), wake.clone());
            move |d: Delivery| {
                let (handled, done, wake) = (handled.clone(), done.clone(), wake.clone());
                async move {
                    // Slow: when the shutdown comes, handlers are running and more are queued.
                    tokio::time::sleep(Duration::from_millis(40)).await;
                    handled.lock().push(stream::id_of(&d));
                    done.fetch_add(1, Ordering::SeqCst);
                    wake.notify_waiters();
                    Ok::<(), Nack>(())
                }
            }
        };
        let subscriber = Subscriber::builder(ROUTE)
            .replicas(Replicas::list([gw.endpoint()]))
            .name("leaving")
            .max_in_flight(20)
            .concurrency(4)
            .drain_timeout(Duration::from_secs(10))
            .build()
            .expect("valid settings");
        let stats = subscriber.stats();
        let started = tokio::time::Instant::now();
        subscriber.run(handler, after(&done, 40, &wake)).await.expect("drains cleanly");
        assert!(started.elapsed() < Duration::from_secs(20), "within its drain deadline");
        let s = stats.snapshot();
        let handled = handled.lock().clone();
        assert!(handled.len() >= 40 && handled.len() < 400, "stopped mid-stream: {}", handled.len());
        assert_eq!(s.acked, handled.len() as u64, "everything handled was acked: {s:?}");
        assert_eq!(s.abandoned, 0, "nothing received was dropped: {s:?}");

        // The rest goes to the next subscriber, and nothing of the first one's comes again.
        let mut next =
            Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "next", 100)).await.expect("subscribes");
        let rest = receive_and_ack(&mut next, 400 - handled.len()).await;
        let mut all: Vec<String> = handled.iter().chain(rest.iter()).cloned().collect();
        all.sort();
        let mut expected = ids.clone();
        expected.sort();
        assert_eq!(all, expected, "every message once");
        assert_eq!(Stats::get(&gw.stats().redelivered), 0, "no redeliveries after the drain");
        eventually(Duration::from_secs(20), "everything committed", || fully_committed(&bootstrap, &group, 4)).await;
        gw.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(90), run).await.expect("in time");
}

/// An operator's `fanoutctl drain` of a pod that keeps running (to debug it, or before deleting
/// it): the library settles what it holds, leaves, and does not come back; the rest goes to
/// the pod that stays, and nothing is redelivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operators_drain_takes_the_subscriber_out_until_it_restarts() {
    init_logs();
    let cluster = mock_cluster(4);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("library-operator-drain");
    let ids = produce(&bootstrap, 400, 40).await;
    let config = config(&bootstrap, &group);

    let run = async {
        let gw = start_gateway(config).await;
        let handled: Arc<Mutex<Vec<String>>> = Arc::default();
        let handler = {
            let handled = handled.clone();
            move |d: Delivery| {
                let handled = handled.clone();
                async move {
                    // Slow: when the drain comes, handlers are running and more are queued.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    handled.lock().push(stream::id_of(&d));
                    Ok::<(), Nack>(())
                }
            }
        };
        let subscriber = Subscriber::builder(ROUTE)
            .replicas(Replicas::list([gw.endpoint()]))
            .name("drained-pod")
            .max_in_flight(20)
            .concurrency(4)
            // Quick reconnects: a stream wrongly reopened would show within the wait below.
            .backoff(Duration::from_millis(20), Duration::from_millis(100), Duration::from_secs(1))
            .build()
            .expect("valid settings");
        let stats = subscriber.stats();
        let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
        let running = tokio::spawn(subscriber.run(handler, async move {
            let _ = stop.wait_for(|&s| s).await;
        }));
        eventually(Duration::from_secs(30), "40 handled", || handled.lock().len() >= 40).await;

        let drained = gw.control().drain(ROUTE, "drained-pod").await.expect("the operator's drain finds the pod");
        assert_eq!(drained.len(), 1, "one stream of the pod: {drained:?}");
        eventually(Duration::from_secs(10), "the drained stream closed", || {
            let s = stats.snapshot();
            s.streams == 0 && s.drained_by_gateway == 1
        })
        .await;
        let (at_drain, reconnects) = (handled.lock().len(), stats.snapshot().reconnects);
        // Twenty backoff periods: a reconnecting subscriber would be back and handling.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let s = stats.snapshot();
        assert_eq!((s.streams, s.reconnects), (0, reconnects), "not reconnected after the operator's drain: {s:?}");
        assert_eq!(handled.lock().len(), at_drain, "nothing handled after the drain");
        assert_eq!(s.acked, at_drain as u64, "everything it held was settled and acked: {s:?}");
        assert_eq!(s.abandoned, 0, "{s:?}");
        assert!(!running.is_finished(), "run waits for its shutdown, so the pod is not restarted into the route");

        // The pod that stays gets the rest; nothing the drained one handled comes again.
        let mut stays =
            Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "stays", 100)).await.expect("subscribes");
        let rest = receive_and_ack(&mut stays, 400 - at_drain).await;
        let mut all: Vec<String> = handled.lock().iter().chain(rest.iter()).cloned().collect();
        all.sort();
        let mut expected = ids.clone();
        expected.sort();
        assert_eq!(all, expected, "every message once");
        assert_eq!(Stats::get(&gw.stats().redelivered), 0, "no redeliveries");

        let _ = stop_tx.send(true);
        running.await.expect("joins").expect("a drained subscriber ends cleanly at shutdown");
        gw.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(90), run).await.expect("in time");
}

/// A stand-in for a gateway in Kubernetes mode, to script what its pod watch says: it refuses
/// the first `denials` streams with PERMISSION_DENIED (the pod not seen running yet), then
/// sends one delivery, and when the stream drains ends it with PERMISSION_DENIED (the pod
/// terminating), as the gateway does when the pod's deletion shows in its watch.
struct PodWatchLag {
    denials: usize,
    attempts: Arc<AtomicUsize>,
    acked: Arc<Mutex<Vec<u64>>>,
}

#[tonic::async_trait]
impl fanout_gateway::proto::fanout_server::Fanout for PodWatchLag {
    type SubscribeStream =
        tokio_stream::wrappers::ReceiverStream<Result<fanout_gateway::proto::SubscribeResponse, tonic::Status>>;

    async fn subscribe(
        &self,
        request: tonic::Request<tonic::Streaming<fanout_gateway::proto::SubscribeRequest>>,
    ) -> Result<tonic::Response<Self::SubscribeStream>, tonic::Status> {
        use fanout_gateway::proto::subscribe_request::Kind;
        let attempt = self.attempts.fetch_add(1, Ordering::SeqCst) + 1;
        if attempt <= self.denials {
            return Err(tonic::Status::permission_denied("pod orders-0 is not running yet"));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let delivery = fanout_gateway::proto::Delivery {
            ack_id: 7,
            topic: TOPIC.into(),
            offset: 1,
            value: Some("hello".into()),
            attempt: 1,
            ..Default::default()
        };
        let _ = tx
            .send(Ok(fanout_gateway::proto::SubscribeResponse { deliveries: vec![delivery], ack_timeout_ms: 0 }))
            .await;
        let mut inbound = request.into_inner();
        let acked = self.acked.clone();
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                match message.kind {
                    Some(Kind::Ack(ack)) => acked.lock().extend(ack.ack_ids),
                    Some(Kind::Drain(_)) => {
                        let status = tonic::Status::permission_denied("pod orders-0 is terminating");
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    _ => {}
                }
            }
        });
        Ok(tonic::Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

/// Serves `service` on a free loopback port; its endpoint.
async fn serve_stand_in(service: PodWatchLag) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(fanout_gateway::proto::fanout_server::FanoutServer::new(service))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_identity_is_retried_through_the_grace_and_a_terminating_pods_drain_ends_cleanly() {
    init_logs();
    // The pod watch catches up after three refusals: the subscriber streams.
    let (attempts, acked) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(Vec::new())));
    let endpoint = serve_stand_in(PodWatchLag { denials: 3, attempts: attempts.clone(), acked: acked.clone() }).await;
    let handled = Arc::new(AtomicUsize::new(0));
    let subscriber = Subscriber::builder(ROUTE)
        .replicas(Replicas::list([endpoint]))
        .backoff(Duration::from_millis(20), Duration::from_millis(100), Duration::from_secs(10))
        .identity_grace(Duration::from_secs(20))
        .build()
        .expect("valid settings");
    let handler = {
        let handled = handled.clone();
        move |_: Delivery| {
            handled.fetch_add(1, Ordering::SeqCst);
            async { Ok::<(), Nack>(()) }
        }
    };
    let done = {
        let acked = acked.clone();
        async move {
            while acked.lock().is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), subscriber.run(handler, done))
        .await
        .expect("in time")
        .expect("refusals within the grace are retried; the drain ended by PERMISSION_DENIED is a clean end");
    assert_eq!(attempts.load(Ordering::SeqCst), 4, "three refusals, then the stream");
    assert_eq!((handled.load(Ordering::SeqCst), acked.lock().clone()), (1, vec![7]));

    // A pod the gateway never accepts: the refusal is returned once the grace has passed.
    let attempts = Arc::new(AtomicUsize::new(0));
    let endpoint =
        serve_stand_in(PodWatchLag { denials: usize::MAX, attempts: attempts.clone(), acked: Arc::default() }).await;
    let subscriber = Subscriber::builder(ROUTE)
        .replicas(Replicas::list([endpoint]))
        .backoff(Duration::from_millis(20), Duration::from_millis(100), Duration::from_secs(10))
        .identity_grace(Duration::from_millis(500))
        .build()
        .expect("valid settings");
    let started = tokio::time::Instant::now();
    let handler = |_: Delivery| async { Ok::<(), Nack>(()) };
    let ran = tokio::time::timeout(Duration::from_secs(10), subscriber.run(handler, std::future::pending())).await;
    let error = ran.expect("returns instead of retrying forever").expect_err("refused");
    assert!(matches!(&error, Error::Refused { code: tonic::Code::PermissionDenied, .. }), "{error:?}");
    assert!(started.elapsed() >= Duration::from_millis(500), "not before the grace passed");
    assert!(attempts.load(Ordering::SeqCst) > 1, "retried within the grace");
}
