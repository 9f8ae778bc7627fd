//! The `Fanout.Subscribe` stream: reads the hello, registers the session with the dispatcher,
//! then forwards the client's acks, nacks, credits and drain to the dispatcher while the
//! session's deliveries flow down the response stream.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

use crate::dispatcher::Command;
use crate::pipeline::Routes;
use crate::proto::fanout_server::Fanout;
use crate::proto::subscribe_request::Kind;
use crate::proto::{Disposition, SubscribeRequest, SubscribeResponse};
use crate::subscriptions::{Failure, SessionId, SessionMessage};

/// How long a new stream may take to send its hello; a stream that never does would hold a
/// handler forever.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The Subscribe service. Holds only the routes' front door: all state is in the routes'
/// dispatchers, and a stream talks to its own route's dispatcher only.
#[derive(Clone)]
pub struct FanoutService {
    routes: Routes,
}

impl FanoutService {
    pub fn new(routes: Routes) -> Self {
        Self { routes }
    }
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
        let peer = request.remote_addr();
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| {
                Status::invalid_argument(format!(
                    "no hello within {} s: send SubscribeRequest.hello first",
                    HELLO_TIMEOUT.as_secs()
                ))
            })??
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
        let commands = self.routes.find(&hello.route).map_err(super::register_status)?.clone();
        let (reply, answer) = oneshot::channel();
        commands.send(Command::Register { hello, peer, reply }).await.map_err(|_| dispatcher_gone())?;
        let registered = answer.await.map_err(|_| dispatcher_gone())?.map_err(super::register_status)?;
        let session = registered.session;

        let reader = commands.clone();
        tokio::spawn(async move {
            read_client(session, inbound, &reader).await;
            let _ = reader.send(Command::Unregister { session }).await;
        });

        Ok(Response::new(SessionStream { session, outbox: registered.outbox, commands, finished: false }))
    }
}

/// Forwards the client's messages until its side of the stream ends or fails.
async fn read_client(session: SessionId, mut inbound: Streaming<SubscribeRequest>, commands: &mpsc::Sender<Command>) {
    loop {
        let message = match inbound.message().await {
            Ok(Some(m)) => m,
            Ok(None) => {
                debug!(session, "client closed its side of the stream");
                return;
            }
            Err(status) => {
                debug!(session, %status, "client stream failed");
                return;
            }
        };
        let command = match message.kind {
            Some(Kind::Ack(ack)) => Command::Ack { session, delivery_ids: ack.delivery_ids },
            Some(Kind::Nack(nack)) => {
                let failure = Failure {
                    reason: if nack.reason.is_empty() { "nacked".to_string() } else { nack.reason.clone() },
                    retry_after: nack.retry_after.and_then(|d| Duration::try_from(d).ok()),
                    dead_letter: nack.disposition() == Disposition::DeadLetter,
                };
                Command::Nack { session, delivery_id: nack.delivery_id, failure }
            }
            Some(Kind::Credit(credit)) => Command::Credit { session, additional: credit.additional },
            Some(Kind::Drain(_)) => Command::Drain { session },
            Some(Kind::Hello(_)) => {
                warn!(session, "second hello on one stream ignored");
                continue;
            }
            None => continue,
        };
        if commands.send(command).await.is_err() {
            return;
        }
    }
}

/// The response stream of one session. Dropping it (the client went away) unregisters the
/// session, so its in-flight deliveries are redelivered.
pub struct SessionStream {
    session: SessionId,
    outbox: mpsc::UnboundedReceiver<SessionMessage>,
    commands: mpsc::Sender<Command>,
    finished: bool,
}

impl Stream for SessionStream {
    type Item = Result<SubscribeResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        match self.outbox.poll_recv(cx) {
            Poll::Ready(Some(SessionMessage::Deliveries(deliveries))) => {
                Poll::Ready(Some(Ok(SubscribeResponse { deliveries })))
            }
            Poll::Ready(Some(SessionMessage::Closed(reason))) => {
                self.finished = true;
                Poll::Ready(super::close_status(reason).map(Err))
            }
            Poll::Ready(None) => {
                self.finished = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for SessionStream {
    fn drop(&mut self) {
        let commands = self.commands.clone();
        let session = self.session;
        // Unregister is idempotent; the reader task sends one too when the client side ends.
        if let Err(mpsc::error::TrySendError::Full(command)) = commands.try_send(Command::Unregister { session }) {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let _ = commands.send(command).await;
                });
            }
        }
    }
}
