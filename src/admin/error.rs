//! Why an operator's request was refused, with the sources kept (`grpc::admin` maps each to a
//! gRPC status).

use crate::config::Problem;

use super::config_map::ConfigMapError;
use super::{dead_letters, weights};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("route `{route}` is not configured (configured routes: {known})")]
    UnknownRoute { route: String, known: String },
    #[error("the change would not validate: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<Problem>),
    /// The config file (the source of truth) cannot be read.
    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The config file cannot be written back.
    #[error("cannot rewrite {path}: {source}")]
    WriteFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The route runs on this replica but its source of truth no longer holds it.
    #[error("route `{route}` runs here but is not in {source_of_truth} any more; reload or restart first")]
    RouteGone { route: String, source_of_truth: String },
    /// The source of truth's text cannot be edited (it does not parse as TOML).
    #[error("{source_of_truth}: {source}")]
    Edit {
        source_of_truth: String,
        #[source]
        source: weights::EditError,
    },
    /// The ConfigMap cannot be read or replaced.
    #[error(transparent)]
    ConfigMap(#[from] ConfigMapError),
    /// A blocking Kafka task of the admin API ended without an answer (it panicked).
    #[error("{what} failed: {source}")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    /// A replay needs acks to know when it is done; at-most-once deliveries have none.
    #[error("route `{0}` is at-most-once: its deliveries are not acked, so a replay could not tell when it is done")]
    AtMostOnceReplay(String),
    #[error("no subscriber `{who}` on route `{route}` on this replica (Status lists names and session numbers)")]
    NoSubscriber { route: String, who: String },
    #[error("route `{0}` is stopping")]
    Stopping(String),
    #[error(transparent)]
    DeadLetters(#[from] dead_letters::DeadLetterError),
    #[error("replay: {0}")]
    Replay(#[from] crate::kafka::replay::ReplayError),
    #[error("{0}")]
    BadRequest(String),
    #[error("no replay {0} on this replica (`fanoutctl replay list` shows them)")]
    NoReplay(u64),
    #[error(transparent)]
    Refused(#[from] weights::Refusal),
    /// A rollout cannot start or be steered as things stand; the message says what to fix.
    #[error("{0}")]
    Rollout(String),
    #[error("route `{0}` has no rollout (`fanoutctl rollout start` starts one)")]
    NoRollout(String),
}
