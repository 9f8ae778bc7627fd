//! The front door of a route's dispatcher: [`RouteHandle`], one method per request, so the
//! gRPC layer, the admin API and the pipeline ask the dispatcher for things instead of
//! building its commands; the dispatcher reads them from [`Commands`].

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::RouteSnapshot;
use crate::config::RouteConfig;
use crate::discovery::Introduction;
use crate::kafka::Record;
use crate::subscriptions::{AckId, Failure, RegisterError, Registered, SessionId};

/// Capacity of the command channel from gRPC streams. A full channel makes stream readers
/// wait, which slows clients' acks down to what the dispatcher can take.
const COMMAND_CHANNEL: usize = 1_024;

/// Requests to the dispatcher. Built only by [`RouteHandle`]'s methods.
#[derive(Debug)]
pub(super) enum Command {
    Register {
        hello: Introduction,
        peer: Option<SocketAddr>,
        reply: oneshot::Sender<Result<Registered, RegisterError>>,
    },
    /// New settings for the route (hot reload, operator). Answers whether they were applied
    /// (not when they name another route).
    UpdateRoute {
        route: Box<RouteConfig>,
        reply: Option<oneshot::Sender<bool>>,
    },
    /// Acks of a session, by the deliveries' ack ids.
    Ack {
        session: SessionId,
        ack_ids: Vec<AckId>,
    },
    Nack {
        session: SessionId,
        ack_id: AckId,
        failure: Failure,
    },
    Credit {
        session: SessionId,
        additional: u32,
    },
    /// Moves the ack deadline of a session's deliveries (already bounded by the caller).
    Extend {
        session: SessionId,
        ack_ids: Vec<AckId>,
        extension: Duration,
    },
    Drain {
        session: SessionId,
    },
    /// Records of an operator's replay: routed like live ones, never tracked for commits.
    /// `done` fires once every one of them is settled (acked, or dead-lettered).
    Replay {
        replay: u64,
        records: Vec<Record>,
        done: oneshot::Sender<()>,
    },
    /// The route as it runs now (operator status).
    Status {
        reply: oneshot::Sender<RouteSnapshot>,
    },
    /// Each cohort's counts and its ack latencies since the last such request (a rollout's
    /// judge; latencies are kept only while asked for).
    Outcomes {
        reply: oneshot::Sender<super::Outcomes>,
    },
    /// An operator drains the sessions of a subscriber, by name or session number; the
    /// answer lists the sessions draining, with their in-flight counts.
    DrainSubscriber {
        who: String,
        reply: oneshot::Sender<Vec<(SessionId, usize)>>,
    },
    Unregister {
        session: SessionId,
    },
}

/// The route's dispatcher has stopped (the gateway is shutting down): nothing more can be
/// asked of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the route's dispatcher has stopped")]
pub struct Stopped;

/// What the dispatcher reads its requests from (given to [`super::run`]).
#[derive(Debug)]
pub struct Commands(pub(super) mpsc::Receiver<Command>);

/// A route's dispatcher as others reach it. Cheap to clone. Every method waits while the
/// channel is full ([`COMMAND_CHANNEL`]): a busy dispatcher slows its callers (a stream's acks)
/// down to what it can take.
#[derive(Debug, Clone)]
pub struct RouteHandle {
    commands: mpsc::Sender<Command>,
}

/// A dispatcher's channel: the handle for everyone else, the receiver for the dispatcher.
pub fn channel() -> (RouteHandle, Commands) {
    let (commands, receiver) = mpsc::channel(COMMAND_CHANNEL);
    (RouteHandle { commands }, Commands(receiver))
}

impl RouteHandle {
    async fn send(&self, command: Command) -> Result<(), Stopped> {
        self.commands.send(command).await.map_err(|_| Stopped)
    }

    /// Asks with `make(reply)` and waits for the answer.
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.send(make(reply)).await?;
        answer.await.map_err(|_| Stopped)
    }

    /// A subscriber's hello: its session, or why it was refused.
    pub async fn register(
        &self,
        hello: Introduction,
        peer: Option<SocketAddr>,
    ) -> Result<Result<Registered, RegisterError>, Stopped> {
        self.ask(|reply| Command::Register { hello, peer, reply }).await
    }

    /// New settings for the route; whether they were applied (not when they name another
    /// route).
    pub async fn update(&self, route: RouteConfig) -> Result<bool, Stopped> {
        self.ask(|reply| Command::UpdateRoute { route: Box::new(route), reply: Some(reply) }).await
    }

    pub async fn ack(&self, session: SessionId, ack_ids: Vec<AckId>) -> Result<(), Stopped> {
        self.send(Command::Ack { session, ack_ids }).await
    }

    pub async fn nack(&self, session: SessionId, ack_id: AckId, failure: Failure) -> Result<(), Stopped> {
        self.send(Command::Nack { session, ack_id, failure }).await
    }

    pub async fn extend(&self, session: SessionId, ack_ids: Vec<AckId>, extension: Duration) -> Result<(), Stopped> {
        self.send(Command::Extend { session, ack_ids, extension }).await
    }

    pub async fn credit(&self, session: SessionId, additional: u32) -> Result<(), Stopped> {
        self.send(Command::Credit { session, additional }).await
    }

    /// The subscriber asked to stop receiving (its stream ends once its in-flight settle).
    pub async fn drain(&self, session: SessionId) -> Result<(), Stopped> {
        self.send(Command::Drain { session }).await
    }

    /// The session's stream is gone. Idempotent.
    pub async fn unregister(&self, session: SessionId) -> Result<(), Stopped> {
        self.send(Command::Unregister { session }).await
    }

    /// [`Self::unregister`] from where nothing can wait (a stream's `Drop`): sent at once, or
    /// by a task of its own when the channel is full.
    pub fn unregister_soon(&self, session: SessionId) {
        if let Err(mpsc::error::TrySendError::Full(command)) = self.commands.try_send(Command::Unregister { session }) {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let commands = self.commands.clone();
                runtime.spawn(async move {
                    let _ = commands.send(command).await;
                });
            }
        }
    }

    /// Records of an operator's replay: routed like live ones, never tracked for commits;
    /// `done` fires once every one of them is settled.
    pub async fn replay(&self, replay: u64, records: Vec<Record>, done: oneshot::Sender<()>) -> Result<(), Stopped> {
        self.send(Command::Replay { replay, records, done }).await
    }

    /// The route as it runs now.
    pub async fn status(&self) -> Result<RouteSnapshot, Stopped> {
        self.ask(|reply| Command::Status { reply }).await
    }

    /// Each cohort's counts and its ack latencies since the last call (for a rollout's judge;
    /// the route keeps latencies only while this is called, at least every ten seconds).
    pub async fn outcomes(&self) -> Result<super::Outcomes, Stopped> {
        self.ask(|reply| Command::Outcomes { reply }).await
    }

    /// Drains the sessions of subscriber `who` (name or session number): the sessions
    /// draining, with their in-flight counts.
    pub async fn drain_subscriber(&self, who: &str) -> Result<Vec<(SessionId, usize)>, Stopped> {
        let who = who.to_string();
        self.ask(|reply| Command::DrainSubscriber { who, reply }).await
    }
}
