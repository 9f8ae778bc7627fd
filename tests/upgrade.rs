//! Upgrading from the shared-group layout (every route consumed as `kafka.group_id`) to one
//! group per route: the route starts exactly where the shared group left its topics.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use fanout_client::stream::{self, Subscription};
use support::*;

const PARTITIONS: i32 = 4;
const MESSAGES: usize = 3_000;

/// Acks everything it receives until it has acked `at_least`, then drains, acking what is still
/// in flight, until the gateway ends the stream. Returns the ids it acked.
async fn ack_then_drain(endpoint: &str, at_least: usize) -> HashSet<String> {
    let mut sub = Subscription::connect(endpoint, stream::hello(ROUTE, "old-layout", 50)).await.expect("subscribes");
    let mut acked = HashSet::new();
    let mut draining = false;
    loop {
        let batch = tokio::time::timeout(Duration::from_secs(20), sub.next()).await.expect("the stream moves");
        let Some(batch) = batch.expect("stream healthy") else { break };
        let ids: Vec<String> = batch.into_iter().map(|d| stream::id_of(&d)).collect();
        acked.extend(ids.iter().cloned());
        sub.ack(ids).await.expect("ack");
        if !draining && acked.len() >= at_least {
            draining = true;
            sub.drain().await.expect("drain");
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_route_of_the_new_layout_starts_where_the_shared_group_left_off() {
    init_logs();
    let cluster = mock_cluster(PARTITIONS);
    let bootstrap = cluster.bootstrap_servers();
    let shared = unique_group("upgrade");
    let ids: HashSet<String> = produce(&bootstrap, MESSAGES, 300).await.into_iter().collect();

    let run = async {
        // The former layout: the route consumed as the shared group itself.
        let old_layout = config(&bootstrap, &shared);
        assert_eq!(old_layout.routes[0].group(&old_layout.kafka), shared);
        let gw = start_gateway(old_layout.clone()).await;
        let before = ack_then_drain(&gw.endpoint(), MESSAGES / 3).await;
        gw.shutdown().await;
        let left_at = committed(&bootstrap, &shared, PARTITIONS);
        assert!(before.len() >= MESSAGES / 3 && before.len() < MESSAGES, "a part was processed: {}", before.len());

        // The upgrade: same config, but the route takes the group the new layout names it.
        let mut new_layout = old_layout;
        new_layout.routes[0].group_id = None;
        let route_group = new_layout.routes[0].group(&new_layout.kafka);
        assert_eq!(route_group, format!("{shared}.{ROUTE}"));
        assert!(committed(&bootstrap, &route_group, PARTITIONS).is_empty(), "the route's own group is new");
        let gw = start_gateway(new_layout).await;
        let mut sub =
            Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "new-layout", 100)).await.expect("subscribes");
        let rest: HashSet<String> = ids.difference(&before).cloned().collect();
        let mut after: Vec<String> = Vec::new();
        let mut got: HashSet<String> = HashSet::new();
        while !rest.iter().all(|id| got.contains(id)) {
            let batch = next_batch(&mut sub).await;
            let batch_ids: Vec<String> = batch.into_iter().map(|d| stream::id_of(&d)).collect();
            after.extend(batch_ids.iter().cloned());
            got.extend(batch_ids.iter().cloned());
            sub.ack(batch_ids).await.expect("ack");
        }
        // Anything delivered once the rest is in would be a replay: give it a moment to show.
        if let Ok(Ok(Some(extra))) = tokio::time::timeout(Duration::from_millis(1_000), sub.next()).await {
            after.extend(extra.into_iter().map(|d| stream::id_of(&d)));
        }
        eventually(Duration::from_secs(30), "the route's group committed to the high watermarks", || {
            fully_committed(&bootstrap, &route_group, PARTITIONS)
        })
        .await;
        gw.shutdown().await;
        (before, after, left_at)
    };
    let (before, after, left_at) =
        tokio::time::timeout(Duration::from_secs(120), run).await.expect("test finishes in time");
    let replayed: Vec<&String> = after.iter().filter(|id| before.contains(*id)).collect();
    let mut unique = HashSet::new();
    let twice: Vec<&String> = after.iter().filter(|id| !unique.insert(*id)).collect();
    eprintln!(
        "shared group left at {left_at:?} after {} acked; the new layout delivered {} more, {} replayed, {} twice",
        before.len(),
        after.len(),
        replayed.len(),
        twice.len()
    );
    assert!(
        replayed.is_empty(),
        "nothing acked under the shared group is delivered again, e.g. {:?}",
        &replayed[..replayed.len().min(5)]
    );
    assert!(twice.is_empty(), "nothing is delivered twice after the upgrade");
    assert_eq!(before.len() + after.len(), MESSAGES, "nothing is skipped");
}
