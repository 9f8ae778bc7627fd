//! One replica's stream, kept open for as long as the replica is wanted: open, hello, hand
//! deliveries to the pool, batch the outcomes up as acks and nacks; on any stream error
//! reopen after a jittered exponential backoff (tower's), reset once a stream has stayed up;
//! on a status that no retry can fix, give up and report it. Asked to leave, it drains: sends
//! `Drain`, keeps handling and acking what is in flight until the gateway closes the stream
//! (it does once nothing is in flight) or the drain deadline passes.

use std::sync::Arc;
use std::time::Duration;

use fanout_proto::v1::fanout_client::FanoutClient;
use fanout_proto::v1::subscribe_request::Kind;
use fanout_proto::v1::{Ack, Drain, Hello, SubscribeRequest};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tower::retry::backoff::{Backoff, ExponentialBackoffMaker, MakeBackoff};
use tracing::{debug, info, warn};

use crate::acks::AckBatch;
use crate::pool::{Job, Origin, Outcome, PoolHandle};
use crate::replicas::Replica;
use crate::stats::Counters;
use crate::Error;

/// What every stream of a subscriber shares.
pub(crate) struct Settings {
    pub(crate) hello: Hello,
    pub(crate) token_file: Option<std::path::PathBuf>,
    pub(crate) ack_batch: usize,
    pub(crate) ack_interval: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) backoff: ExponentialBackoffMaker,
    /// A stream up this long resets the backoff.
    pub(crate) healthy_after: Duration,
}

/// Statuses no retry can fix: the route, the hello or the credentials are wrong, and every
/// replica will say the same. UNAVAILABLE (a stopping replica), RESOURCE_EXHAUSTED (its stream
/// limit), CANCELLED and transport errors are retried.
pub(crate) fn is_fatal(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument | Code::NotFound | Code::PermissionDenied | Code::Unauthenticated | Code::Unimplemented
    )
}

/// How one stream ended.
enum Ended {
    /// We asked to leave; nothing of ours is left in flight (or the deadline passed).
    Left,
    /// The stream broke or the gateway ended it: open another.
    Lost(String),
    Fatal(Status),
}

pub(crate) struct Connection {
    pub(crate) replica: Replica,
    pub(crate) channel: Channel,
    pub(crate) settings: Arc<Settings>,
    pub(crate) pool: PoolHandle,
    pub(crate) counters: Arc<Counters>,
    /// Turns true when this replica's stream should drain and end (shutdown, or the replica
    /// left discovery); a dropped sender means the same.
    pub(crate) leave: watch::Receiver<bool>,
}

async fn leaving(leave: &mut watch::Receiver<bool>) {
    let _ = leave.wait_for(|&leave| leave).await;
}

impl Connection {
    /// Keeps the replica's stream open until asked to leave (`Ok`) or refused for good.
    pub(crate) async fn run(mut self) -> Result<(), Error> {
        let mut maker = self.settings.backoff.clone();
        let mut backoff = maker.make_backoff();
        loop {
            if *self.leave.borrow() {
                return Ok(());
            }
            let opened = Instant::now();
            match self.stream().await {
                Ended::Left => return Ok(()),
                Ended::Fatal(status) => {
                    return Err(Error::Refused {
                        replica: self.replica.authority.clone(),
                        route: self.settings.hello.route.clone(),
                        code: status.code(),
                        message: status.message().to_string(),
                    })
                }
                Ended::Lost(why) => {
                    warn!(replica = %self.replica.authority, why, "stream lost; reconnecting with backoff")
                }
            }
            if opened.elapsed() >= self.settings.healthy_after {
                backoff = maker.make_backoff();
            }
            Counters::add(&self.counters.reconnects, 1);
            tokio::select! {
                _ = backoff.next_backoff() => {}
                _ = leaving(&mut self.leave) => return Ok(()),
            }
        }
    }

    /// One stream, from hello to its end.
    async fn stream(&mut self) -> Ended {
        let token = match &self.settings.token_file {
            None => None,
            // Read at every attempt: projected tokens are rotated by the kubelet.
            Some(path) => match std::fs::read_to_string(path) {
                Ok(token) => Some(token),
                Err(error) => return Ended::Lost(format!("cannot read the token file {}: {error}", path.display())),
            },
        };
        // Acks are small; 1024 queued requests is far more than a window's worth of batches.
        let (requests, outbound) = mpsc::channel(1_024);
        let hello = SubscribeRequest { kind: Some(Kind::Hello(self.settings.hello.clone())) };
        if requests.send(hello).await.is_err() {
            return Ended::Lost("the request stream closed before the hello".into());
        }
        let mut request = tonic::Request::new(ReceiverStream::new(outbound));
        if let Some(token) = token {
            match format!("Bearer {}", token.trim()).parse() {
                Ok(value) => {
                    request.metadata_mut().insert("authorization", value);
                }
                Err(_) => {
                    return Ended::Fatal(Status::unauthenticated(
                        "the token file does not hold a valid metadata value (a projected token is base64url text)",
                    ))
                }
            }
        }
        let mut client = FanoutClient::new(self.channel.clone());
        let opened = tokio::select! {
            opened = client.subscribe(request) => opened,
            _ = leaving(&mut self.leave) => return Ended::Left,
        };
        let mut deliveries = match opened {
            Ok(response) => response.into_inner(),
            Err(status) if is_fatal(status.code()) => return Ended::Fatal(status),
            Err(status) => return Ended::Lost(format!("{:?}: {}", status.code(), status.message())),
        };
        info!(replica = %self.replica.authority, route = %self.settings.hello.route, "stream open");
        let _open = OpenStream::new(&self.counters);

        let (outcomes_tx, mut outcomes) = mpsc::unbounded_channel();
        let origin = Origin(outcomes_tx);
        let mut batch = AckBatch::new(self.settings.ack_batch, self.settings.ack_interval);
        let mut drain_deadline: Option<Instant> = None;
        loop {
            let ack_due = batch.due();
            tokio::select! {
                biased;
                Some(outcome) = outcomes.recv() => {
                    let sent = match outcome {
                        Outcome::Ack(ack_id) => match batch.push(ack_id, Instant::now()) {
                            Some(ack_ids) => send(&requests, Kind::Ack(Ack { ack_ids })).await,
                            None => true,
                        },
                        Outcome::Nack(nack) => {
                            flush(&mut batch, &requests).await && send(&requests, Kind::Nack(nack)).await
                        }
                    };
                    if !sent {
                        return Ended::Lost("the request stream closed".into());
                    }
                }
                _ = tokio::time::sleep_until(ack_due.unwrap_or_else(Instant::now)), if ack_due.is_some() => {
                    if !flush(&mut batch, &requests).await {
                        return Ended::Lost("the request stream closed".into());
                    }
                }
                message = deliveries.message() => match message {
                    Ok(Some(response)) => {
                        Counters::add(&self.counters.received, response.deliveries.len() as u64);
                        for delivery in response.deliveries {
                            self.pool.submit(Job { delivery, origin: origin.clone() });
                        }
                    }
                    Ok(None) if drain_deadline.is_some() => {
                        debug!(replica = %self.replica.authority, "drained: the gateway closed the stream");
                        return Ended::Left;
                    }
                    Ok(None) => return Ended::Lost("the gateway ended the stream".into()),
                    Err(status) if drain_deadline.is_some() && status.code() == Code::Unavailable => return Ended::Left,
                    Err(status) if is_fatal(status.code()) => return Ended::Fatal(status),
                    Err(status) => return Ended::Lost(format!("{:?}: {}", status.code(), status.message())),
                },
                _ = leaving(&mut self.leave), if drain_deadline.is_none() => {
                    info!(replica = %self.replica.authority, "draining the stream");
                    drain_deadline = Some(Instant::now() + self.settings.drain_timeout);
                    if !(flush(&mut batch, &requests).await && send(&requests, Kind::Drain(Drain {})).await) {
                        return Ended::Left;
                    }
                }
                _ = tokio::time::sleep_until(drain_deadline.unwrap_or_else(Instant::now)), if drain_deadline.is_some() => {
                    warn!(
                        replica = %self.replica.authority,
                        timeout_ms = self.settings.drain_timeout.as_millis() as u64,
                        "drain deadline passed with deliveries in flight; the gateway redelivers them"
                    );
                    return Ended::Left;
                }
            }
        }
    }
}

async fn send(requests: &mpsc::Sender<SubscribeRequest>, kind: Kind) -> bool {
    requests.send(SubscribeRequest { kind: Some(kind) }).await.is_ok()
}

async fn flush(batch: &mut AckBatch, requests: &mpsc::Sender<SubscribeRequest>) -> bool {
    match batch.take() {
        Some(ack_ids) => send(requests, Kind::Ack(Ack { ack_ids })).await,
        None => true,
    }
}

/// Counts an open stream for as long as it lives.
struct OpenStream<'a>(&'a Counters);

impl<'a> OpenStream<'a> {
    fn new(counters: &'a Counters) -> Self {
        Counters::add(&counters.streams, 1);
        Self(counters)
    }
}

impl Drop for OpenStream<'_> {
    fn drop(&mut self) {
        Counters::sub(&self.0.streams, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_errors_are_fatal_and_transient_ones_are_retried() {
        for code in [Code::NotFound, Code::InvalidArgument, Code::PermissionDenied, Code::Unauthenticated] {
            assert!(is_fatal(code), "{code:?}");
        }
        for code in [Code::Unavailable, Code::ResourceExhausted, Code::Cancelled, Code::Internal, Code::Unknown] {
            assert!(!is_fatal(code), "{code:?}");
        }
    }
}
