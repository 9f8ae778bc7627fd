//! One replica's stream, kept open for as long as the replica is wanted: open, hello, hand
//! deliveries to the pool, batch the outcomes up as acks and nacks; on any stream error
//! reopen after a jittered exponential backoff (tower's), reset once a stream has stayed up;
//! on a status that no retry can fix, give up and report it. Asked to leave, it drains: sends
//! `Drain`, keeps handling and acking what is in flight until the gateway closes the stream
//! (it does once nothing is in flight) or the drain deadline passes. A stream the gateway
//! ends with OK unasked was drained by an operator (`fanoutctl drain` of this pod): it is not
//! reopened.

use std::sync::Arc;
use std::time::Duration;

use fanout_proto::v1::fanout_client::FanoutClient;
use fanout_proto::v1::subscribe_request::Kind;
use fanout_proto::v1::{Ack, Drain, Extend, Hello, SubscribeRequest};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tower::retry::backoff::{Backoff, ExponentialBackoff, ExponentialBackoffMaker, MakeBackoff};
use tower::util::rng::HasherRng;
use tracing::{debug, info, warn};

use crate::acks::AckBatch;
use crate::lease::Keeper;
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
    /// Reconnect backoff bounds (checked by the builder).
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    /// A stream up this long resets the backoff.
    pub(crate) healthy_after: Duration,
    /// How long PERMISSION_DENIED / UNAUTHENTICATED are retried before they are final.
    pub(crate) identity_grace: Duration,
    /// The largest response accepted (one record can be as large as Kafka allows).
    pub(crate) max_message_bytes: usize,
    /// How long a held delivery (handled or waiting) is kept by extending its deadline (zero:
    /// never extended; see [`crate::lease`]).
    pub(crate) max_lease_extension: Duration,
}

impl Settings {
    /// A fresh backoff with a random generator of its own, so that the streams of one process
    /// (and one stream after each reset) do not retry in lockstep.
    fn backoff(&self) -> ExponentialBackoff {
        ExponentialBackoffMaker::new(self.backoff_min, self.backoff_max, 0.5, HasherRng::default())
            .map(|mut maker| maker.make_backoff())
            // The builder checked the bounds; this default is never used.
            .unwrap_or_else(|_| ExponentialBackoffMaker::default().make_backoff())
    }
}

/// What a status that ends a stream means for the next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The route, the hello or the peer is wrong, and every replica will say the same.
    Fatal,
    /// The gateway does not (yet, or any more) accept this pod: in Kubernetes a pod that just
    /// started is refused until the gateway's watch has seen it running, and one that is
    /// terminating is refused from then on. Retried for a while, then final.
    Identity,
    /// A stopping replica (UNAVAILABLE), its stream limit (RESOURCE_EXHAUSTED), a broken
    /// connection: retried with backoff for as long as it takes.
    Retry,
}

pub(crate) fn verdict(code: Code) -> Verdict {
    match code {
        Code::InvalidArgument | Code::NotFound | Code::Unimplemented => Verdict::Fatal,
        Code::PermissionDenied | Code::Unauthenticated => Verdict::Identity,
        _ => Verdict::Retry,
    }
}

/// Why a replica's connection ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// We asked to leave (shutdown, or the replica left discovery).
    Left,
    /// The gateway drained this subscriber without being asked: an operator took the pod out
    /// of the route (`fanoutctl drain`), and a pod taken out stays out until it restarts.
    DrainedByGateway,
}

/// How one stream ended.
enum Ended {
    /// We asked to leave; nothing of ours is left in flight (or the deadline passed).
    Left,
    /// The gateway ended the stream with OK though we did not ask: it drained us (it closes a
    /// drained stream once nothing is in flight, so nothing of ours is left).
    Drained,
    /// The stream broke or the gateway ended it: open another.
    Lost(String),
    /// The gateway refused the stream or ended it with this status.
    Refused(Status),
    /// This subscriber's own settings are wrong.
    Invalid(Error),
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
    /// Keeps the replica's stream open until asked to leave or drained by the gateway (`Ok`),
    /// or refused for good.
    pub(crate) async fn run(mut self) -> Result<Exit, Error> {
        let mut backoff = self.settings.backoff();
        // Since when this replica has refused this pod's identity, without a stream between.
        let mut denied_since: Option<Instant> = None;
        loop {
            if *self.leave.borrow() {
                return Ok(Exit::Left);
            }
            let mut opened = None;
            let ended = self.stream(&mut opened).await;
            if opened.is_some() {
                denied_since = None;
            }
            match ended {
                Ended::Left => return Ok(Exit::Left),
                Ended::Drained => {
                    warn!(
                        replica = %self.replica.authority,
                        route = %self.settings.hello.route,
                        "the gateway drained this subscriber (an operator's `fanoutctl drain`); not reconnecting until restarted"
                    );
                    return Ok(Exit::DrainedByGateway);
                }
                Ended::Invalid(error) => return Err(error),
                Ended::Refused(status) => {
                    let identity = verdict(status.code()) == Verdict::Identity;
                    let since = *denied_since.get_or_insert_with(Instant::now);
                    if !identity || since.elapsed() >= self.settings.identity_grace {
                        return Err(Error::Refused {
                            replica: self.replica.authority.clone(),
                            route: self.settings.hello.route.clone(),
                            code: status.code(),
                            message: status.message().to_string(),
                        });
                    }
                    warn!(
                        replica = %self.replica.authority,
                        code = ?status.code(),
                        message = status.message(),
                        "the gateway refused this pod's identity; retrying (a pod it has not seen yet)"
                    );
                }
                Ended::Lost(why) => {
                    warn!(replica = %self.replica.authority, why, "stream lost; reconnecting with backoff")
                }
            }
            // Only a stream that was open and stayed up counts as healthy.
            if opened.is_some_and(|at: Instant| at.elapsed() >= self.settings.healthy_after) {
                backoff = self.settings.backoff();
            }
            tokio::select! {
                _ = backoff.next_backoff() => Counters::add(&self.counters.reconnects, 1),
                _ = leaving(&mut self.leave) => return Ok(Exit::Left),
            }
        }
    }

    /// One stream, from hello to its end; `opened` is set when the gateway accepted it.
    async fn stream(&mut self, opened_at: &mut Option<Instant>) -> Ended {
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
                    return Ended::Invalid(Error::Setting {
                        field: "token_file",
                        reason: "the file does not hold a valid token (a projected token is base64url text)".into(),
                    })
                }
            }
        }
        let mut client =
            FanoutClient::new(self.channel.clone()).max_decoding_message_size(self.settings.max_message_bytes);
        let opened = tokio::select! {
            opened = client.subscribe(request) => opened,
            _ = leaving(&mut self.leave) => return Ended::Left,
        };
        let mut deliveries = match opened {
            Ok(response) => response.into_inner(),
            Err(status) if verdict(status.code()) != Verdict::Retry => return Ended::Refused(status),
            Err(status) => return Ended::Lost(format!("{:?}: {}", status.code(), status.message())),
        };
        *opened_at = Some(Instant::now());
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
                        Outcome::Extend(ack_id, extension) => {
                            let extension = prost_types::Duration::try_from(extension).ok();
                            send(&requests, Kind::Extend(Extend { ack_ids: vec![ack_id], extension })).await
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
                        let (received, timeout) = (Instant::now(), Duration::from_millis(response.ack_timeout_ms));
                        for delivery in response.deliveries {
                            let lease = Keeper::new(received, timeout, self.settings.max_lease_extension);
                            self.pool.submit(Job { delivery, origin: origin.clone(), lease });
                        }
                    }
                    Ok(None) if drain_deadline.is_some() => {
                        debug!(replica = %self.replica.authority, "drained: the gateway closed the stream");
                        return Ended::Left;
                    }
                    // The gateway ends a stream with OK only when it drained it: an operator's
                    // drain (a stopping replica or a broken route end with an error status).
                    Ok(None) => {
                        let _ = flush(&mut batch, &requests).await;
                        return Ended::Drained;
                    }
                    // Leaving anyway: a terminating pod's stream may be ended by the gateway
                    // (its identity gone) or by a stopping replica; either way it is over.
                    Err(status) if drain_deadline.is_some() => {
                        debug!(replica = %self.replica.authority, status = %status, "stream ended while draining");
                        let _ = flush(&mut batch, &requests).await;
                        return Ended::Left;
                    }
                    Err(status) if verdict(status.code()) != Verdict::Retry => return Ended::Refused(status),
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
                    // What finished is acked; what did not is redelivered.
                    let _ = flush(&mut batch, &requests).await;
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
    fn configuration_errors_are_fatal_identity_is_retried_a_while_and_the_rest_always() {
        for code in [Code::NotFound, Code::InvalidArgument, Code::Unimplemented] {
            assert_eq!(verdict(code), Verdict::Fatal, "{code:?}");
        }
        for code in [Code::PermissionDenied, Code::Unauthenticated] {
            assert_eq!(verdict(code), Verdict::Identity, "{code:?}");
        }
        for code in [Code::Unavailable, Code::ResourceExhausted, Code::Cancelled, Code::Internal, Code::Unknown] {
            assert_eq!(verdict(code), Verdict::Retry, "{code:?}");
        }
    }
}
