//! The `Fanout.Subscribe` stream: reads the hello, registers the session with the dispatcher,
//! then forwards the client's acks, nacks, credits and drain to the dispatcher while the
//! session's deliveries flow down the response stream.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Future, Stream};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::{debug, warn};

use crate::config::rate_limit::RateLimit;
use crate::discovery::token_review::TokenReviewer;
use crate::discovery::Introduction;
use crate::dispatcher::RouteHandle;
use crate::pipeline::Routes;
use crate::proto::fanout_server::Fanout;
use crate::proto::subscribe_request::Kind;
use crate::proto::{self, Disposition, SubscribeRequest, SubscribeResponse};
use crate::subscriptions::{AckId, Failure, Outgoing, SessionId, SessionMessage};

/// How long a new stream may take to send its hello; a stream that never does would hold a
/// handler forever.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The Subscribe service. Holds only the routes' front door: all state is in the routes'
/// dispatchers, and a stream talks to its own route's dispatcher only.
#[derive(Clone)]
pub struct FanoutService {
    routes: Routes,
    /// One permit per open Subscribe stream, all connections together (`server.max_streams`).
    streams: Arc<Semaphore>,
    max_streams: usize,
    /// kube mode: reviews the ServiceAccount tokens streams present.
    reviewer: Option<TokenReviewer>,
}

impl FanoutService {
    pub fn new(routes: Routes, max_streams: usize) -> Self {
        Self { routes, streams: Arc::new(Semaphore::new(max_streams)), max_streams, reviewer: None }
    }

    /// Streams that present `authorization: Bearer <token>` have it reviewed by `reviewer`.
    pub fn with_token_reviewer(mut self, reviewer: Option<TokenReviewer>) -> Self {
        self.reviewer = reviewer;
        self
    }
}

/// The bearer token of a request's `authorization` metadata, if any.
fn bearer(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))?.trim();
    (!token.is_empty()).then(|| token.to_string())
}

fn dispatcher_gone() -> Status {
    Status::unavailable("the gateway is shutting down; reconnect with backoff")
}

#[tonic::async_trait]
impl Fanout for FanoutService {
    type SubscribeStream = SessionStream;

    async fn subscribe(
        &self,
        request: Request<Streaming<SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        // Before reading anything: a stream over the limit costs no hello wait and no session.
        let Ok(permit) = self.streams.clone().try_acquire_owned() else {
            warn!(limit = self.max_streams, "Subscribe stream limit reached; stream refused");
            return Err(Status::resource_exhausted(format!(
                "this gateway replica holds its limit of {} Subscribe streams (server.max_streams); retry with \
                 backoff or on another replica",
                self.max_streams
            )));
        };
        let peer = request.remote_addr();
        let token = bearer(request.metadata());
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| {
                Status::invalid_argument(format!(
                    "no hello within {} s: send SubscribeRequest.hello first",
                    HELLO_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|read| match frame_status(&read) {
                Some(status) => {
                    warn!(message = status.message(), "a stream's first frame was bad; stream refused");
                    status
                }
                None => read,
            })?
            .ok_or_else(|| {
                Status::invalid_argument("the stream ended before a hello: send SubscribeRequest.hello first")
            })?;
        let hello = match first.kind {
            Some(Kind::Hello(hello)) => hello,
            Some(_) | None => {
                return Err(Status::invalid_argument(
                    "the first message must be a hello (SubscribeRequest.hello with the route name); acks, nacks, credits and drain come after it",
                ))
            }
        };
        let mut hello = introduction(hello);
        if let Err(error) = hello.validate() {
            debug!(%error, "hello refused");
            return Err(Status::invalid_argument(super::bounded(format!(
                "{error}; the stream ended (fix the hello and subscribe again)"
            ))));
        }
        let route = self.routes.find(&hello.route).map_err(super::register_status)?.clone();
        if let (Some(reviewer), Some(token)) = (&self.reviewer, token) {
            hello.token = reviewer.review(&token).await;
        }
        let registered =
            route.register(hello, peer).await.map_err(|_| dispatcher_gone())?.map_err(super::register_status)?;
        let session = registered.session;

        let reader = route.clone();
        let (end_tx, end) = oneshot::channel();
        tokio::spawn(async move {
            if let Some(status) = read_client(session, inbound, &reader).await {
                // Before the unregister: the response stream ends with this status, not OK.
                let _ = end_tx.send(status);
            }
            let _ = reader.unregister(session).await;
        });

        Ok(Response::new(SessionStream {
            session,
            ack_timeout_ms: registered.ack_timeout_ms,
            outbox: registered.outbox,
            end,
            route,
            finished: false,
            _permit: permit,
        }))
    }
}

/// Forwards the client's messages until its side of the stream ends or fails. Returns the
/// status the response stream ends with when the client broke the contract or left early
/// (None: the client's transport is gone, nobody is left to tell).
async fn read_client(
    session: SessionId,
    mut inbound: Streaming<SubscribeRequest>,
    route: &RouteHandle,
) -> Option<Status> {
    loop {
        let message = match inbound.message().await {
            Ok(Some(m)) => m,
            Ok(None) => {
                debug!(session = session.0, "client closed its side of the stream");
                return Some(Status::cancelled(
                    "the client closed its side of the stream: nothing more can be acked, so the session ended \
                     and its in-flight deliveries will be redelivered (send Drain and keep the stream open to \
                     leave without redeliveries)",
                ));
            }
            Err(status) => return bad_frame(session, status),
        };
        let sent = match message.kind {
            Some(Kind::Ack(ack)) => route.ack(session, ack.ack_ids.into_iter().map(AckId).collect()).await,
            Some(Kind::Nack(nack)) => route.nack(session, AckId(nack.ack_id), failure_of(&nack)).await,
            Some(Kind::Credit(credit)) => route.credit(session, credit.additional).await,
            Some(Kind::Extend(extend)) => {
                let ack_ids = extend.ack_ids.into_iter().map(AckId).collect();
                route.extend(session, ack_ids, extension_of(extend.extension)).await
            }
            Some(Kind::Drain(_)) => route.drain(session).await,
            Some(Kind::Hello(_)) => {
                let status = Status::invalid_argument(
                    "SubscribeRequest.hello may be sent only once, first; the stream ended and its in-flight \
                     deliveries will be redelivered (open a new stream to subscribe again)",
                );
                warn!(session = session.0, message = status.message(), "subscriber broke the contract; stream ended");
                return Some(status);
            }
            // A kind this gateway does not know (a newer client): ignored, like unknown fields.
            None => {
                debug!(session = session.0, "SubscribeRequest without a known kind ignored");
                continue;
            }
        };
        if sent.is_err() {
            return None;
        }
    }
}

/// What a failed read of the client's stream means. Frames over the size limit and frames that
/// do not decode end the stream with a status naming the problem (logged at WARN: a client
/// with a bug, or a hostile one); a reset or a broken connection has nobody left to tell.
fn bad_frame(session: SessionId, read: Status) -> Option<Status> {
    let Some(status) = frame_status(&read) else {
        debug!(session = session.0, status = %read, "client stream failed");
        return None;
    };
    warn!(
        session = session.0,
        code = status.code().description(),
        message = status.message(),
        "subscriber sent a bad frame; stream ended"
    );
    Some(status)
}

/// The status for a request frame that failed to read because of what the client sent (a
/// frame over the size limit, one that does not decode), the hello included; None for a
/// transport that broke (nobody left to tell).
fn frame_status(read: &Status) -> Option<Status> {
    let status = match read.code() {
        Code::OutOfRange | Code::ResourceExhausted => Status::resource_exhausted(format!(
            "a SubscribeRequest was over the gateway's limit ({}); the stream ended and its in-flight deliveries \
             (if any) will be redelivered: send smaller hellos and acks in smaller batches",
            read.message()
        )),
        // tonic reports undecodable protobuf (invalid UTF-8 in a string, a bad wire type) and a
        // bad gRPC frame header as INTERNAL: both are the client's.
        Code::Internal => Status::invalid_argument(format!(
            "a SubscribeRequest could not be decoded ({}); the stream ended and its in-flight deliveries (if any) \
             will be redelivered",
            read.message()
        )),
        _ => return None,
    };
    Some(super::bounded_status(status))
}

/// The response stream of one session. Dropping it (the client went away) unregisters the
/// session, so its in-flight deliveries are redelivered.
pub struct SessionStream {
    session: SessionId,
    /// The route's ack deadline, on every response (see `SubscribeResponse.ack_timeout_ms`).
    ack_timeout_ms: u64,
    outbox: mpsc::UnboundedReceiver<SessionMessage>,
    /// Set by the reader when the client's side ended the session: the status to end with.
    end: oneshot::Receiver<Status>,
    /// The stream's place under `server.max_streams`, given back when the stream goes.
    _permit: OwnedSemaphorePermit,
    route: RouteHandle,
    finished: bool,
}

impl Stream for SessionStream {
    type Item = Result<SubscribeResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        if let Poll::Ready(Ok(status)) = Pin::new(&mut self.end).poll(cx) {
            self.finished = true;
            return Poll::Ready(Some(Err(status)));
        }
        match self.outbox.poll_recv(cx) {
            Poll::Ready(Some(SessionMessage::Deliveries(deliveries))) => Poll::Ready(Some(Ok(SubscribeResponse {
                deliveries: deliveries.iter().map(to_delivery).collect(),
                ack_timeout_ms: self.ack_timeout_ms,
            }))),
            Poll::Ready(Some(SessionMessage::Closed(reason))) => {
                self.finished = true;
                Poll::Ready(super::close_status(reason).map(Err))
            }
            // The session went without a close reason (its route's dispatcher stopped): not
            // OK, which tells the subscriber it was drained and should stay away.
            Poll::Ready(None) => {
                self.finished = true;
                Poll::Ready(Some(Err(dispatcher_gone())))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for SessionStream {
    fn drop(&mut self) {
        // Unregister is idempotent; the reader task sends one too when the client side ends.
        self.route.unregister_soon(self.session);
    }
}

/// The contract's Hello as the dispatcher takes it.
fn introduction(hello: proto::Hello) -> Introduction {
    Introduction {
        route: hello.route,
        pod_name: hello.pod_name,
        namespace: hello.namespace,
        max_in_flight: hello.max_in_flight,
        labels: hello.labels.into_iter().collect(),
        // An empty message is no limit, as if it were absent.
        rate_limit: hello
            .rate_limit
            .map(|l| RateLimit { messages_per_s: l.messages_per_s, bytes_per_s: l.bytes_per_s, burst: l.burst })
            .filter(|l| *l != RateLimit::default()),
        token: Default::default(),
    }
}

/// A delivery in the contract's form. Runs on the stream's task, not the dispatcher's.
fn to_delivery(d: &Outgoing) -> proto::Delivery {
    let r = &d.record;
    proto::Delivery {
        ack_id: d.ack_id.0,
        topic: r.tp.topic.to_string(),
        partition: r.tp.partition,
        offset: r.offset,
        key: r.key.clone(),
        value: r.value.clone(),
        headers: r
            .headers
            .iter()
            .map(|(name, value)| proto::Header { name: name.clone(), value: value.clone() })
            .collect(),
        timestamp: r.timestamp_ms.map(|ms| prost_types::Timestamp {
            seconds: ms.div_euclid(1000),
            nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
        }),
        attempt: d.attempt,
        cohort: d.cohort.to_string(),
        idempotency_key: d.idempotency_key.as_deref().unwrap_or_default().to_string(),
        replay_id: d.replay.map_or(0, |t| t.replay),
    }
}

/// An `Extend`'s extension, cut to 0..=[`fanout_proto::MAX_EXTENSION`] (absent or negative: 0, the
/// deliveries go back at the next deadline scan).
fn extension_of(extension: Option<prost_types::Duration>) -> Duration {
    extension.and_then(|d| Duration::try_from(d).ok()).unwrap_or(Duration::ZERO).min(fanout_proto::MAX_EXTENSION)
}

/// What a nack says about the failure, as the retry decision needs it.
fn failure_of(nack: &proto::Nack) -> Failure {
    Failure {
        reason: if nack.reason.is_empty() { "nacked".to_string() } else { nack.reason.clone() },
        retry_after: nack.retry_after.and_then(|d| Duration::try_from(d).ok()),
        dead_letter: nack.disposition() == Disposition::DeadLetter,
        overloaded: nack.disposition() == Disposition::Overloaded,
    }
}
