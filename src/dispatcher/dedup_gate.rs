//! The dedup gate of effectively-once routes: records wait in order for the store's verdict;
//! duplicates are acked to their partition without delivery, the rest go on to the registry.

use std::sync::Arc;

use tracing::warn;

use super::{Dispatcher, Internal};
use crate::dedup::{Claim, DedupConfig, DedupError, DedupStore, Verdict};
use crate::kafka::Record;
use crate::stats::Stats;

/// A record on its way through the gate: its epoch, and its idempotency key with the index of
/// its claim (None: the record has no key and is never deduplicated).
pub(super) type Keyed = (Arc<Record>, u64, Option<(usize, Arc<str>)>);

/// An effectively-once route's duplicate filter. Records wait here, in order, for the store's
/// verdict; one claim batch is out at a time, so verdicts (and deliveries) keep Kafka's order.
pub struct RouteDedup {
    pub store: Arc<dyn DedupStore>,
    pub config: DedupConfig,
    pub(super) waiting: Vec<(Arc<Record>, u64)>,
    claiming: bool,
}

impl RouteDedup {
    pub fn new(store: Arc<dyn DedupStore>, config: DedupConfig) -> Self {
        Self { store, config, waiting: Vec::new(), claiming: false }
    }
}

impl Dispatcher {
    /// Hands over the duplicate filter of an effectively-once route.
    pub fn with_dedup(mut self, dedup: Option<RouteDedup>) -> Self {
        self.dedup = dedup;
        self
    }

    /// Sends the waiting records to the dedup store, unless a batch is still out.
    pub(super) fn start_claims(&mut self) {
        if let Some(d) = &mut self.dedup {
            if d.claiming || d.waiting.is_empty() {
                return;
            }
            let waiting = std::mem::take(&mut d.waiting);
            let mut claims = Vec::new();
            let batch: Vec<Keyed> = waiting
                .into_iter()
                .map(|(record, epoch)| {
                    let key = crate::dedup::key_of(&d.config, &record).map(|key| {
                        let shared: Arc<str> = Arc::from(key.as_str());
                        claims.push(Claim::for_record(key, &record));
                        (claims.len() - 1, shared)
                    });
                    (record, epoch, key)
                })
                .collect();
            d.claiming = true;
            let claim = d.store.claim(claims);
            self.tasks.spawn(async move {
                let verdicts = claim.await;
                Internal::Claimed { batch, verdicts }
            });
        }
    }

    /// Delivers what the store says is new (or a redelivery of the same record); acks
    /// duplicates to Kafka without delivering them. If the store failed, delivers everything:
    /// a duplicate is better than a loss.
    pub(super) fn on_claimed(&mut self, batch: Vec<Keyed>, verdicts: Result<Vec<Verdict>, DedupError>) {
        if let Some(d) = &mut self.dedup {
            d.claiming = false;
        }
        let verdicts = match verdicts {
            Ok(v) => Some(v),
            Err(error) => {
                Stats::bump(&self.stats.dedup_errors, 1);
                warn!(%error, records = batch.len(), "dedup store failed; delivering without duplicate checks");
                None
            }
        };
        for (record, epoch, key) in batch {
            if self.stopping {
                break; // the next owner has them
            }
            let Some(state) = self.current(&record.tp, epoch) else {
                continue; // revoked meanwhile: the next owner has it
            };
            let verdict = key.as_ref().and_then(|(i, _)| verdicts.as_ref().and_then(|v| v.get(*i)));
            if verdict.is_some_and(Verdict::is_duplicate) {
                state.tracker.ack(record.offset);
                Stats::bump(&self.stats.dedup_duplicates, 1);
                continue;
            }
            self.registry.dispatch_keyed(record, epoch, key.map(|(_, key)| key));
        }
    }
}
