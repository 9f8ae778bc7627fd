//! Load for the benchmarks: a backlog produced ahead of a measurement, and a producer that
//! keeps a fixed rate and stamps each message with its send time.
//!
//! Both run on their own threads with a plain `BaseProducer`, so that producing does not
//! share the tokio workers with the gateway being measured.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

/// Distinct keys: enough that every subscriber and partition gets its share.
const KEYS: u64 = 10_000;
/// Bytes of a payload taken by the send time.
const STAMP: usize = 8;

/// What a backlog holds once produced.
#[derive(Debug, Clone)]
pub struct Backlog {
    pub topic: String,
    /// One past the last offset, per partition (index = partition).
    pub ends: Vec<i64>,
    pub messages: u64,
    /// Payload bytes (what a consumer hands to its application).
    pub bytes: u64,
}

/// The clock all send stamps count from: one process, one monotonic origin.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Nanoseconds since [`origin`].
fn now_nanos() -> u64 {
    origin().elapsed().as_nanos() as u64
}

/// A payload of `size` bytes that starts with its send time.
fn stamped(size: usize) -> Vec<u8> {
    let mut payload = vec![b'.'; size.max(STAMP)];
    payload[..STAMP].copy_from_slice(&now_nanos().to_le_bytes());
    payload
}

/// Time since the payload was stamped, if it carries a stamp.
pub fn age(payload: &[u8]) -> Option<Duration> {
    let stamp: [u8; STAMP] = payload.get(..STAMP)?.try_into().ok()?;
    Some(Duration::from_nanos(now_nanos().saturating_sub(u64::from_le_bytes(stamp))))
}

fn producer(bootstrap: &str, linger_ms: u32) -> Result<BaseProducer, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", linger_ms.to_string())
        .set("batch.size", "1000000")
        .set("queue.buffering.max.kbytes", "262144")
        .create()
}

/// Produces `per_partition_bytes` of `size`-byte messages into every partition of `topic`
/// (round robin, so partitions are even) and waits until the broker has them all. Stays under
/// the mock broker's retention of 5 MiB per partition when `per_partition_bytes` does.
pub fn fill(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    size: usize,
    per_partition_bytes: usize,
) -> Result<Backlog, KafkaError> {
    let producer = producer(bootstrap, 20)?;
    // A record costs about 40 bytes beyond its payload in the log (key, headers, framing):
    // counted, so that the partition stays under the bytes asked for.
    let per_partition = (per_partition_bytes / (size + 40)).max(1) as u64;
    let key_of = |i: u64| format!("key-{}", i % KEYS);
    for i in 0..per_partition * partitions as u64 {
        let key = key_of(i);
        let payload = stamped(size);
        let partition = (i % partitions as u64) as i32;
        let mut record = BaseRecord::to(topic).key(&key).payload(&payload).partition(partition);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(5));
                }
                Err((error, _)) => return Err(error),
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(60))?;
    let ends = high_watermarks(bootstrap, topic, partitions)?;
    let messages = ends.iter().map(|e| *e as u64).sum();
    Ok(Backlog { topic: topic.to_string(), ends, messages, bytes: messages * size as u64 })
}

/// The high watermark of every partition of `topic`.
pub fn high_watermarks(bootstrap: &str, topic: &str, partitions: i32) -> Result<Vec<i64>, KafkaError> {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    (0..partitions)
        .map(|p| consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).map(|(_, high)| high))
        .collect()
}

/// Produces `size`-byte stamped messages at `rate` per second for `duration`, on the calling
/// thread, in steps of one millisecond. Returns how many were sent.
pub fn paced(bootstrap: &str, topic: &str, rate: u32, size: usize, duration: Duration) -> Result<u64, KafkaError> {
    // linger.ms=1: a latency-minded producer; batching delay stays out of the comparison.
    let producer = producer(bootstrap, 1)?;
    let started = Instant::now();
    let mut sent: u64 = 0;
    while started.elapsed() < duration {
        let due = (started.elapsed().as_secs_f64() * f64::from(rate)) as u64;
        while sent < due {
            let key = format!("key-{}", sent % KEYS);
            let payload = stamped(size);
            match producer.send(BaseRecord::to(topic).key(&key).payload(&payload)) {
                Ok(()) => sent += 1,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => break,
                Err((error, _)) => return Err(error),
            }
        }
        producer.poll(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(1));
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamped_payload_has_its_size_and_a_small_age() {
        let payload = stamped(100);
        assert_eq!(payload.len(), 100);
        let age = age(&payload).expect("stamped");
        assert!(age < Duration::from_secs(60), "age {age:?}");
        assert_eq!(stamped(3).len(), STAMP, "a payload always holds its stamp");
        assert_eq!(super::age(b"short"), None);
    }
}
