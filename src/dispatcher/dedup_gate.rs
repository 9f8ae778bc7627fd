//! The dedup gate of effectively-once routes: records wait in order for the store's verdict;
//! duplicates are acked to their partition without delivery, the rest go on to the registry.

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::dedup::{Claim, DedupConfig, DedupError, DedupStore, Verdict};
use crate::kafka::Record;

/// A record on its way through the gate: its epoch, and its idempotency key with the index of
/// its claim (None: the record has no key and is never deduplicated).
pub(super) type Keyed = (Arc<Record>, u64, Option<(usize, Arc<str>)>);

/// The store's answer to a claim batch, one verdict per claim.
pub(super) type Verdicts = BoxFuture<'static, Result<Vec<Verdict>, DedupError>>;

/// An effectively-once route's duplicate filter. Records wait here, in order, for the store's
/// verdict; one claim batch is out at a time, so verdicts (and deliveries) keep Kafka's order.
pub struct RouteDedup {
    pub store: Arc<dyn DedupStore>,
    pub config: DedupConfig,
    waiting: Vec<(Arc<Record>, u64)>,
    claiming: bool,
}

impl RouteDedup {
    pub fn new(store: Arc<dyn DedupStore>, config: DedupConfig) -> Self {
        Self { store, config, waiting: Vec::new(), claiming: false }
    }

    /// A record of assignment `epoch` waits for the next claim batch.
    pub(super) fn wait(&mut self, record: Arc<Record>, epoch: u64) {
        self.waiting.push((record, epoch));
    }

    /// The waiting records as one claim batch, with the store's answer to come, unless a
    /// batch is still out (or nothing waits).
    pub(super) fn start_claims(&mut self) -> Option<(Vec<Keyed>, Verdicts)> {
        if self.claiming || self.waiting.is_empty() {
            return None;
        }
        let waiting = std::mem::take(&mut self.waiting);
        let mut claims = Vec::new();
        let batch: Vec<Keyed> = waiting
            .into_iter()
            .map(|(record, epoch)| {
                let key = crate::dedup::key_of(&self.config, &record).map(|key| {
                    let shared: Arc<str> = Arc::from(key.as_str());
                    claims.push(Claim::for_record(key, &record));
                    (claims.len() - 1, shared)
                });
                (record, epoch, key)
            })
            .collect();
        self.claiming = true;
        Some((batch, self.store.claim(claims)))
    }

    /// The store answered the batch out: the next one may go.
    pub(super) fn answered(&mut self) {
        self.claiming = false;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::dedup::MemoryStore;
    use crate::kafka::TopicPartition;

    fn record(offset: i64) -> Arc<Record> {
        Arc::new(Record {
            tp: TopicPartition { topic: "t".into(), partition: 0 },
            offset,
            key: Some(Bytes::from(format!("k{offset}"))),
            value: Some(Bytes::from_static(b"v")),
            headers: vec![],
            timestamp_ms: None,
        })
    }

    #[tokio::test]
    async fn one_claim_batch_is_out_at_a_time_in_the_order_records_came() {
        let store = Arc::new(MemoryStore::new(Duration::from_secs(60), 100));
        let mut gate = RouteDedup::new(store, DedupConfig::default());
        assert!(gate.start_claims().is_none(), "nothing waits");
        gate.wait(record(0), 1);
        gate.wait(record(1), 1);
        let (batch, verdicts) = gate.start_claims().expect("a batch");
        assert_eq!(batch.iter().map(|(r, _, _)| r.offset).collect::<Vec<_>>(), vec![0, 1]);
        gate.wait(record(2), 1);
        assert!(gate.start_claims().is_none(), "the first batch is still out");
        let verdicts = verdicts.await.expect("memory store answers");
        let claimed = batch.iter().filter(|(_, _, key)| key.is_some()).count();
        assert_eq!(verdicts.len(), claimed, "one verdict per record with a key");
        gate.answered();
        let (batch, _) = gate.start_claims().expect("the next batch");
        assert_eq!(batch.iter().map(|(r, _, _)| r.offset).collect::<Vec<_>>(), vec![2]);
    }
}
