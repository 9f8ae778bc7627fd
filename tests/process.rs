//! The gateway as operators run it: separate processes. A `dev-kafka` process holds the
//! brokers (librdkafka's mock cluster), `serve` processes are killed with SIGKILL or stopped
//! with SIGTERM, and subscribers in this test process reconnect to whichever gateway is up.
//!
//! What a crash may cost is bounded by design: the deliveries in flight at the crash plus the
//! acks that arrived after the last commit. Nothing may be lost.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout_client::stream::{self, Subscription};
use parking_lot::Mutex;
use rand::seq::SliceRandom;
use rand::Rng;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::sync::watch;

#[path = "support/processes.rs"]
mod processes;
mod support;

use processes::*;

use support::{committed, high_watermarks, produce, ROUTE, TOPIC};

// === tests ===

const SIGKILL_WINDOWS: [u32; 3] = [40, 80, 120];
const SIGKILL_COMMIT_INTERVAL: Duration = Duration::from_millis(200);

/// What one SIGKILL-and-restart run measured.
struct CrashCounts {
    duplicates: u64,
    in_flight_at_kill: u64,
    acked_two_intervals: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_stream_then_restart_loses_nothing() {
    let c = sigkill_and_restart(false).await;
    // After a crash the next owner redelivers what was in flight plus what was acked since
    // the last commit landed. A commit taken at a tick contains the acks the dispatcher had
    // by then and lands a round trip later, so the acks not covered by a landed commit were
    // sent at most one interval plus one round trip (plus the ack's own way to the
    // dispatcher) before the kill: one more interval of acks is that margin.
    assert!(
        c.duplicates <= c.in_flight_at_kill + c.acked_two_intervals,
        "duplicates {} exceed in-flight-at-kill {} + acks in the last two commit intervals {}",
        c.duplicates,
        c.in_flight_at_kill,
        c.acked_two_intervals
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_with_window_until_commit_redelivers_at_most_the_windows() {
    let c = sigkill_and_restart(true).await;
    // Acked deliveries keep their window places until their commit lands, so what a crash can
    // redeliver (in flight, or acked and not yet committed) never exceeds the windows.
    let windows: u32 = SIGKILL_WINDOWS.iter().sum();
    assert!(c.duplicates <= u64::from(windows), "duplicates {} exceed the sum of the windows {windows}", c.duplicates);
}

/// Runs subscribers against a `serve` process, SIGKILLs it mid-stream, starts another and
/// checks that nothing was lost; returns what it measured about duplicates.
async fn sigkill_and_restart(window_until_commit: bool) -> CrashCounts {
    const MESSAGES: usize = 20_000;
    const PARTITIONS: i32 = 8;
    const COMMIT_INTERVAL: Duration = SIGKILL_COMMIT_INTERVAL;
    const WINDOWS: [u32; 3] = SIGKILL_WINDOWS;

    let dir = scratch();
    let run = async {
        let kafka = DevKafka::start(dir.path(), &[(TOPIC, PARTITIONS)]).await;
        let ids = produce(&kafka.bootstrap, MESSAGES, 500).await;
        let settings = GatewaySettings {
            commit_interval_ms: COMMIT_INTERVAL.as_millis() as u64,
            window_until_commit,
            ..GatewaySettings::new(&kafka.bootstrap, "crash")
        };
        let config = settings.write(dir.path());
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let (stop_tx, stop) = watch::channel(false);
        let subscribers = slow_ackers(&WINDOWS, &settings.endpoint(), &ledger, &stop);
        let (kill_at, _) = kill_once_acked(&config, dir.path(), &ledger, MESSAGES * 2 / 5).await;

        let mut gw2 = Gateway::start(&config, dir.path().join("serve-2.log"));
        wait_until(Duration::from_secs(120), "every produced message acked", &mut [&mut gw2], || {
            let l = ledger.lock();
            ids.iter().all(|id| l.acked.contains(id))
        })
        .await;
        let takeover = ledger.lock().first_delivery_after_kill.map(|t| t - kill_at);
        let bootstrap = kafka.bootstrap.clone();
        let group = settings.route_group();
        let mut last = HashMap::new();
        wait_until(Duration::from_secs(30), "committed offsets at the high watermarks", &mut [&mut gw2], || {
            let (committed, ends) =
                (committed(&bootstrap, &group, PARTITIONS), high_watermarks(&bootstrap, PARTITIONS));
            last = committed.clone();
            ends.iter().all(|(p, end)| committed.get(p).copied().unwrap_or(0) == *end)
        })
        .await;
        let _ = stop_tx.send(true);
        for s in subscribers {
            let _ = s.await;
        }

        let l = ledger.lock();
        let kill = l.killed.as_ref().expect("the kill was recorded");
        // Lost = produced and never acked to a live gateway. (An ack sent just before the kill
        // may not have reached the gateway; then the message is redelivered and acked again,
        // unless the killed gateway recorded it as acked without its ack, which the SIGTERM
        // test rules out by checking the committed offset against the acks exactly.)
        let lost: Vec<&String> = ids.iter().filter(|id| !l.acked.contains(*id)).collect();
        assert!(lost.is_empty(), "{} messages never acked, e.g. {:?}", lost.len(), &lost[..lost.len().min(10)]);
        assert_eq!(l.received.len(), MESSAGES, "subscribers received exactly the produced messages");

        let duplicates: u64 = l.received.values().map(|n| u64::from(n - 1)).sum();
        let in_flight_at_kill = (kill.holding + l.received_late_on_dead_streams) as u64;
        let acked_last_interval = l.acks_sent_within(kill.at, COMMIT_INTERVAL);
        let acked_two_intervals = l.acks_sent_within(kill.at, COMMIT_INTERVAL * 2);
        eprintln!(
            "sigkill: window_until_commit={window_until_commit} messages={MESSAGES} windows={WINDOWS:?} sum_of_windows={} acked_before_kill={} \
             in_flight_at_kill={in_flight_at_kill} (held={} + arrived after the kill on dead streams={}) \
             acked_in_last_commit_interval={acked_last_interval} acked_in_last_two_intervals={acked_two_intervals} \
             acks_sent_to_the_dead_process={} duplicates={duplicates} duplicated_ids={} takeover={takeover:?} committed={last:?}",
            WINDOWS.iter().sum::<u32>(),
            l.acked_before_kill,
            kill.holding,
            l.received_late_on_dead_streams,
            l.acked_on_dead_streams,
            l.received.values().filter(|n| **n > 1).count(),
        );
        assert_eq!(l.duplicates_before_kill, 0, "nothing is redelivered while the gateway and its subscribers stay up");
        assert!(in_flight_at_kill > 0, "the kill happened with deliveries in flight");
        CrashCounts { duplicates, in_flight_at_kill, acked_two_intervals }
    };
    tokio::time::timeout(Duration::from_secs(240), run).await.expect("test finished in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_most_once_never_delivers_twice_across_a_crash() {
    const MESSAGES: usize = 10_000;
    const PARTITIONS: i32 = 4;
    const WINDOWS: [u32; 2] = [50, 100];

    let dir = scratch();
    let run = async {
        let kafka = DevKafka::start(dir.path(), &[(TOPIC, PARTITIONS)]).await;
        let ids = produce(&kafka.bootstrap, MESSAGES, 500).await;
        let settings = GatewaySettings { delivery: "at-most-once", ..GatewaySettings::new(&kafka.bootstrap, "amo") };
        let config = settings.write(dir.path());
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let (stop_tx, stop) = watch::channel(false);
        let subscribers = slow_ackers(&WINDOWS, &settings.endpoint(), &ledger, &stop);
        let (_, in_flight_at_kill) = kill_once_acked(&config, dir.path(), &ledger, MESSAGES * 2 / 5).await;
        let received_before_restart = ledger.lock().received.len();

        let mut gw2 = Gateway::start(&config, dir.path().join("serve-2.log"));
        let (bootstrap, group) = (kafka.bootstrap.clone(), settings.route_group());
        wait_until(Duration::from_secs(120), "committed offsets at the high watermarks", &mut [&mut gw2], || {
            let (committed, ends) =
                (committed(&bootstrap, &group, PARTITIONS), high_watermarks(&bootstrap, PARTITIONS));
            ends.iter().all(|(p, end)| committed.get(p).copied().unwrap_or(0) == *end)
        })
        .await;
        // Committed before sending: what is committed has been sent, or was lost at the kill.
        // Room for the last batches, and for any (wrong) redelivery, to show up.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let _ = stop_tx.send(true);
        for s in subscribers {
            let _ = s.await;
        }

        let l = ledger.lock();
        let twice: Vec<(&String, &u32)> = l.received.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "at-most-once delivered {} messages more than once, e.g. {:?}",
            twice.len(),
            &twice[..twice.len().min(5)]
        );
        // What may be lost: the deliveries the dead gateway had committed and was sending, and
        // nothing else. Its sessions' windows bound them: committed at send time, not at
        // receipt, so what it had buffered but not sent is delivered by the next gateway.
        let never_received: Vec<&String> = ids.iter().filter(|id| !l.received.contains_key(*id)).collect();
        let unacked: Vec<&String> =
            ids.iter().filter(|id| l.received.contains_key(*id) && !l.acked.contains(*id)).collect();
        // Delivered and never acked: held at the kill, or written by the dead gateway just
        // before it died and read afterwards (its ack then went nowhere).
        let late = l.received_late_on_dead_streams;
        for id in &unacked {
            assert!(
                in_flight_at_kill.contains(*id) || late > 0,
                "{id} was delivered, never acked, yet not in flight at the kill"
            );
        }
        assert!(
            unacked.len() <= in_flight_at_kill.len() + late,
            "{} un-acked > {} held + {late} late",
            unacked.len(),
            in_flight_at_kill.len()
        );
        let lost = never_received.len() + unacked.len();
        let windows: u32 = WINDOWS.iter().sum();
        eprintln!(
            "at-most-once: messages={MESSAGES} delivered_once={} duplicates=0 lost={lost} (held un-acked by subscribers at the kill={}, \
             committed and being sent but never received={}) sum_of_windows={windows} received_before_restart={received_before_restart}",
            l.received.len(),
            unacked.len(),
            never_received.len(),
        );
        assert!(lost <= windows as usize, "lost {lost} > the sum of the windows {windows}");
        assert!(l.received.len() > received_before_restart, "the restarted gateway delivered the rest");
    };
    tokio::time::timeout(Duration::from_secs(240), run).await.expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_exits_zero_within_grace_with_acked_offsets_committed() {
    const MESSAGES: usize = 8_000;
    const PARTITIONS: i32 = 4;
    const GRACE: Duration = Duration::from_millis(3_000);
    const HELD: usize = 3;

    let dir = scratch();
    let run = async {
        let kafka = DevKafka::start(dir.path(), &[(TOPIC, PARTITIONS)]).await;
        let ids = produce(&kafka.bootstrap, MESSAGES, 200).await;
        let settings = GatewaySettings {
            shutdown_grace_ms: GRACE.as_millis() as u64,
            // No periodic commit fires during the test (the first tick, at start, has nothing
            // to commit): whatever is committed at the end, the graceful stop committed.
            commit_interval_ms: 600_000,
            ..GatewaySettings::new(&kafka.bootstrap, "sigterm")
        };
        let config = settings.write(dir.path());
        let mut gw = Gateway::start(&config, dir.path().join("serve.log"));

        let acked = Arc::new(Mutex::new(HashSet::new()));
        let held = Arc::new(Mutex::new(Vec::new()));
        let (stop_tx, stop) = watch::channel(false);
        let eager = tokio::spawn(holding_acker(
            "eager".into(),
            100,
            0,
            settings.endpoint(),
            acked.clone(),
            held.clone(),
            stop.clone(),
        ));
        let holder = tokio::spawn(holding_acker(
            "holder".into(),
            10,
            HELD,
            settings.endpoint(),
            acked.clone(),
            held.clone(),
            stop.clone(),
        ));

        wait_until(Duration::from_secs(60), "acks flowing and a few deliveries held", &mut [&mut gw], || {
            acked.lock().len() >= 2_000 && held.lock().len() == HELD
        })
        .await;
        let acked_at_signal = acked.lock().len();
        let signalled = Instant::now();
        gw.sigterm();
        let status = gw
            .wait_exit(GRACE + Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("serve did not exit within grace {GRACE:?} + 10 s after SIGTERM"));
        let took = signalled.elapsed();
        let _ = stop_tx.send(true);
        let _ = tokio::join!(eager, holder);

        assert!(status.success(), "serve exits 0 on SIGTERM, got {status:?}");
        // The holder never acks its held deliveries and keeps its stream open, so the gateway
        // has deliveries in flight until the grace period runs out: it must not leave earlier.
        assert!(took >= GRACE, "serve exited {took:?} after SIGTERM, before the {GRACE:?} grace period ran out");

        let acked = acked.lock().clone();
        let held = held.lock().clone();
        assert!(held.iter().all(|id| !acked.contains(id)), "held deliveries stayed un-acked");
        let committed = committed(&kafka.bootstrap, &settings.route_group(), PARTITIONS);
        let mut produced: HashMap<i32, Vec<i64>> = HashMap::new();
        for id in &ids {
            let (p, o) = partition_offset(id);
            produced.entry(p).or_default().push(o);
        }
        for (p, offsets) in &mut produced {
            offsets.sort_unstable();
            // One past the contiguous acked prefix: the first produced offset nobody acked.
            let first_unacked = offsets
                .iter()
                .copied()
                .find(|o| !acked.contains(&format!("{TOPIC}/{p}/{o}")))
                .unwrap_or(offsets.last().map_or(0, |o| o + 1));
            let c = committed.get(p).copied().unwrap_or(0);
            assert!(
                c >= first_unacked,
                "partition {p}: committed {c} is behind the acked prefix, which ends at {first_unacked}"
            );
            // And never past an offset nobody acked: that message would be lost.
            assert!(c <= first_unacked, "partition {p}: committed {c} passes un-acked offset {first_unacked}");
        }
        eprintln!(
            "sigterm: exited {took:?} after the signal (grace {GRACE:?}), produced={MESSAGES} acked_at_signal={acked_at_signal} acked={} held={held:?} committed={committed:?}",
            acked.len()
        );
    };
    tokio::time::timeout(Duration::from_secs(120), run).await.expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_kafka_serves_its_topics_until_stdin_closes_or_sigterm() {
    let dir = scratch();
    let run = async {
        let mut kafka = DevKafka::start(dir.path(), &[("events", 8), ("other", 2)]).await;
        let bootstrap = kafka.bootstrap.clone();
        assert_eq!(bootstrap.split(',').count(), 3, "three brokers by default: {bootstrap}");
        let partitions = tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer =
                ClientConfig::new().set("bootstrap.servers", &bootstrap).create().expect("consumer");
            let metadata = consumer.fetch_metadata(None, Duration::from_secs(10)).expect("metadata");
            metadata.topics().iter().map(|t| (t.name().to_string(), t.partitions().len())).collect::<HashMap<_, _>>()
        })
        .await
        .expect("metadata task");
        assert_eq!(partitions.get("events"), Some(&8), "{partitions:?}");
        assert_eq!(partitions.get("other"), Some(&2), "{partitions:?}");

        drop(kafka.stdin.take());
        let status = kafka.process.wait_exit(Duration::from_secs(10)).await.expect("exits when stdin closes");
        assert!(status.success(), "{status:?}");

        let mut kafka = DevKafka::start(dir.path(), &[("events", 1)]).await;
        kafka.process.sigterm();
        let status = kafka.process.wait_exit(Duration::from_secs(10)).await.expect("exits on SIGTERM");
        assert!(status.success(), "{status:?}");
    };
    tokio::time::timeout(Duration::from_secs(60), run).await.expect("test finished in time");
}

// === subscribers ===

/// What the sigkill test's subscribers saw, shared by all of them.
#[derive(Default)]
struct Ledger {
    /// Times each delivery id was received.
    received: HashMap<String, u32>,
    /// Ids acked on a stream whose gateway was alive when the ack was sent.
    acked: HashSet<String>,
    /// Received and not yet acked, on live streams.
    holding: HashSet<String>,
    /// When acks were sent, and how many ids each carried.
    ack_log: Vec<(Instant, usize)>,
    killed: Option<Kill>,
    acked_before_kill: usize,
    /// Deliveries the killed gateway had written before it died that arrived afterwards.
    received_late_on_dead_streams: usize,
    /// Acks sent after the kill on streams of the killed gateway: nobody got them.
    acked_on_dead_streams: usize,
    duplicates_before_kill: usize,
    first_delivery_after_kill: Option<Instant>,
}

struct Kill {
    at: Instant,
    /// Deliveries subscribers held un-acked at that instant.
    holding: usize,
}

impl Ledger {
    /// Whether a stream opened at `opened` belongs to the killed gateway.
    fn dead(&self, opened: Instant) -> bool {
        self.killed.as_ref().is_some_and(|k| opened < k.at)
    }

    fn receive(&mut self, opened: Instant, ids: &[String]) {
        let now = Instant::now();
        for id in ids {
            let n = self.received.entry(id.clone()).or_default();
            *n += 1;
            if *n > 1 && self.killed.is_none() {
                self.duplicates_before_kill += 1;
            }
        }
        if self.dead(opened) {
            self.received_late_on_dead_streams += ids.len();
            return;
        }
        if self.killed.is_some() && self.first_delivery_after_kill.is_none() {
            self.first_delivery_after_kill = Some(now);
        }
        self.holding.extend(ids.iter().cloned());
    }

    fn ack(&mut self, opened: Instant, ids: &[String]) {
        if self.dead(opened) {
            self.acked_on_dead_streams += ids.len();
            return;
        }
        for id in ids {
            self.holding.remove(id);
        }
        self.acked.extend(ids.iter().cloned());
        self.ack_log.push((Instant::now(), ids.len()));
        if self.killed.is_none() {
            self.acked_before_kill += ids.len();
        }
    }

    /// Ids acked in the `window` before `at`.
    fn acks_sent_within(&self, at: Instant, window: Duration) -> u64 {
        self.ack_log.iter().filter(|(t, _)| *t <= at && at - *t <= window).map(|(_, n)| *n as u64).sum()
    }
}

/// A subscriber with `window` deliveries in flight that acks a bit slowly and out of order:
/// each delivery takes 20 to 150 ms to "process", acks go out every 10 ms for whatever is
/// done. Reconnects (to whichever gateway listens on `endpoint`) when its stream ends.
async fn slow_acker(
    name: String,
    window: u32,
    endpoint: String,
    ledger: Arc<Mutex<Ledger>>,
    mut stop: watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        let Ok(mut sub) = Subscription::connect(&endpoint, stream::hello(ROUTE, &name, window)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let opened = Instant::now();
        let mut holding: Vec<(Instant, String)> = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        loop {
            tokio::select! {
                batch = sub.next() => match batch {
                    Ok(Some(batch)) => {
                        let ids: Vec<String> = batch.into_iter().map(|d| stream::id_of(&d)).collect();
                        ledger.lock().receive(opened, &ids);
                        let mut rng = rand::rng();
                        let now = Instant::now();
                        holding.extend(ids.into_iter().map(|id| (now + Duration::from_millis(rng.random_range(20..150)), id)));
                    }
                    Ok(None) | Err(_) => break,
                },
                _ = tick.tick() => {
                    let now = Instant::now();
                    let (done, rest): (Vec<_>, Vec<_>) = holding.drain(..).partition(|(due, _)| *due <= now);
                    holding = rest;
                    let mut done: Vec<String> = done.into_iter().map(|(_, id)| id).collect();
                    done.shuffle(&mut rand::rng());
                    if !ack(&sub, opened, done, &ledger).await {
                        break;
                    }
                }
                _ = stop.changed() => break,
            }
        }
        // The rest is abandoned with the stream: the gateway redelivers it.
        let mut l = ledger.lock();
        for (_, id) in holding {
            l.holding.remove(&id);
        }
    }
}

/// Runs a first `serve` process until the subscribers have acked `acked` messages, then
/// SIGKILLs it. The kill happens with the ledger locked, so the snapshot of what subscribers
/// hold is exact: no receipt or ack can be recorded between the signal and the snapshot.
/// Returns when it was killed and the ids held un-acked at that moment.
async fn kill_once_acked(
    config: &Path,
    dir: &Path,
    ledger: &Arc<Mutex<Ledger>>,
    acked: usize,
) -> (Instant, HashSet<String>) {
    let mut gw1 = Gateway::start(config, dir.join("serve-1.log"));
    wait_until(Duration::from_secs(60), "enough messages acked before the kill", &mut [&mut gw1], || {
        ledger.lock().acked.len() >= acked
    })
    .await;
    let killed = {
        let mut l = ledger.lock();
        gw1.child.kill().expect("SIGKILL the gateway");
        let at = Instant::now();
        l.killed = Some(Kill { at, holding: l.holding.len() });
        (at, l.holding.clone())
    };
    let status = gw1.child.wait().expect("reap the killed gateway");
    assert!(!status.success(), "a SIGKILLed process does not exit 0: {status:?}");
    killed
}

/// One [`slow_acker`] per window, all recording into `ledger`.
fn slow_ackers(
    windows: &[u32],
    endpoint: &str,
    ledger: &Arc<Mutex<Ledger>>,
    stop: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    windows
        .iter()
        .enumerate()
        .map(|(i, window)| {
            tokio::spawn(slow_acker(format!("sub-{i}"), *window, endpoint.to_string(), ledger.clone(), stop.clone()))
        })
        .collect()
}

/// Records, then sends, an ack; false when the stream is gone.
async fn ack(sub: &Subscription, opened: Instant, ids: Vec<String>, ledger: &Mutex<Ledger>) -> bool {
    if ids.is_empty() {
        return true;
    }
    ledger.lock().ack(opened, &ids);
    sub.ack(ids).await.is_ok()
}

/// A subscriber that never acks the first `hold` deliveries it gets and acks every other one
/// after a short pause per batch (its "processing").
async fn holding_acker(
    name: String,
    window: u32,
    hold: usize,
    endpoint: String,
    acked: Arc<Mutex<HashSet<String>>>,
    held: Arc<Mutex<Vec<String>>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut holding = 0;
    while !*stop.borrow() {
        let Ok(mut sub) = Subscription::connect(&endpoint, stream::hello(ROUTE, &name, window)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        loop {
            let batch = tokio::select! {
                batch = sub.next() => batch,
                _ = stop.changed() => return,
            };
            let Ok(Some(batch)) = batch else { break };
            let mut now = Vec::new();
            for d in batch {
                if holding < hold {
                    holding += 1;
                    held.lock().push(stream::id_of(&d));
                } else {
                    now.push(stream::id_of(&d));
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            acked.lock().extend(now.iter().cloned());
            if !now.is_empty() && sub.ack(now).await.is_err() {
                break;
            }
        }
    }
}

// === processes ===

// === kafka ===

fn partition_offset(id: &str) -> (i32, i64) {
    let mut parts = id.rsplitn(3, '/');
    let offset = parts.next().and_then(|o| o.parse().ok()).expect("offset in the id");
    let partition = parts.next().and_then(|p| p.parse().ok()).expect("partition in the id");
    (partition, offset)
}
