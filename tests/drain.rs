//! A subscriber's Drain over the real stream: nothing new is sent to it, its in-flight
//! deliveries finish, then the server ends the stream; the rest goes to the other subscriber.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use fanout_client::stream::{self, Subscription};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_draining_subscriber_gets_nothing_new_and_its_stream_ends_once_its_deliveries_settle() {
    init_logs();
    let cluster = mock_cluster(4);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("drain");
    let ids = produce(&bootstrap, 2_000, 200).await;
    let config = config(&bootstrap, &group);

    let run = async {
        let gw = start_gateway(config).await;
        let mut leaving =
            Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "leaving", 5)).await.expect("subscribes");
        let mut held: Vec<String> = Vec::new();
        while held.len() < 5 {
            let batch = next_batch(&mut leaving).await;
            held.extend(batch.into_iter().map(|d| stream::id_of(&d)));
        }
        assert_eq!(held.len(), 5, "the window is 5");
        leaving.drain().await.expect("drain sent");
        let staying = tokio::spawn({
            let endpoint = gw.endpoint();
            async move {
                let mut sub =
                    Subscription::connect(&endpoint, stream::hello(ROUTE, "staying", 100)).await.expect("subscribes");
                let mut got = HashSet::new();
                while got.len() < 2_000 - 5 {
                    let batch = next_batch(&mut sub).await;
                    let ids: Vec<String> = batch.into_iter().map(|d| stream::id_of(&d)).collect();
                    got.extend(ids.iter().cloned());
                    sub.ack(ids).await.expect("ack");
                }
                // Keep the stream open: dropping it could cut off the last acks.
                (got, sub)
            }
        });
        // While it drains, nothing new comes and the stream stays open for the acks.
        let quiet = tokio::time::timeout(Duration::from_millis(700), leaving.next()).await;
        assert!(quiet.is_err(), "nothing new is sent to a draining subscriber: {quiet:?}");
        leaving.ack(held.clone()).await.expect("acks of in-flight deliveries are taken while draining");
        let end = tokio::time::timeout(Duration::from_secs(10), leaving.next()).await.expect("the stream ends");
        assert!(matches!(end, Ok(None)), "drained stream ends cleanly once its deliveries are acked: {end:?}");
        let (others, _staying) =
            tokio::time::timeout(Duration::from_secs(60), staying).await.expect("the rest is delivered").expect("task");
        assert!(held.iter().all(|id| !others.contains(id)), "acked in-flight deliveries are not sent again");
        assert!(ids.iter().all(|id| others.contains(id) || held.contains(id)));
        eventually(Duration::from_secs(30), "all committed", || fully_committed(&bootstrap, &group, 4)).await;
        gw.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(120), run).await.expect("test finishes in time");
    drop(cluster);
}
