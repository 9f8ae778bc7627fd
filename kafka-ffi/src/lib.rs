//! `commit_async`: an offset commit that returns at once and whose result comes back through
//! the consumer's own queue, as an offset-commit event that `BaseConsumer::poll` hands to
//! `ConsumerContext::commit_callback` with each partition's error.
//!
//! rust-rdkafka's `commit(.., CommitMode::Async)` calls `rd_kafka_commit`, whose result reaches
//! the application only through a configured `offset_commit_cb` (rust-rdkafka installs the
//! event API instead, which librdkafka uses for automatic commits alone): an explicit
//! asynchronous commit is never answered. `CommitMode::Sync` is answered, but blocks the
//! calling thread for a broker round trip (longer while the group coordinator moves), and
//! reports a commit that Kafka refused for one partition as failed for all.
//! `rd_kafka_commit_queue` with the consumer's queue gives both: no blocking, and the
//! per-partition outcome.
#![deny(rust_2018_idioms)]

use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::TopicPartitionList;

/// Commits `offsets` for `consumer`'s group without waiting. The outcome arrives, per
/// partition, in `ConsumerContext::commit_callback` during a later `poll` of `consumer`.
/// An error here means the commit was not sent (no group, an invalid list).
pub fn commit_async<C: ConsumerContext>(consumer: &BaseConsumer<C>, offsets: &TopicPartitionList) -> KafkaResult<()> {
    let client = consumer.client().native_ptr();
    // SAFETY: `client` is the live handle of `consumer`, borrowed for this call. The consumer
    // queue handle is taken and released here (librdkafka refcounts it; the commit's reply op
    // holds its own reference). `offsets` is only read (librdkafka copies it). A null callback
    // makes librdkafka enqueue the result as an OFFSET_COMMIT op on the queue, which
    // rust-rdkafka's poll turns into `commit_callback`.
    let err = unsafe {
        let queue = rdsys::rd_kafka_queue_get_consumer(client);
        let err = rdsys::rd_kafka_commit_queue(client, offsets.ptr(), queue, None, std::ptr::null_mut());
        if !queue.is_null() {
            rdsys::rd_kafka_queue_destroy(queue);
        }
        err
    };
    let code = RDKafkaErrorCode::from(err);
    if code == RDKafkaErrorCode::NoError {
        Ok(())
    } else {
        Err(KafkaError::ConsumerCommit(code))
    }
}
