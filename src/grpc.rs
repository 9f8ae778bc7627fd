//! gRPC surface: the `Fanout` service that subscribers stream from, and the `Admin` service
//! on the admin port with its token check.
//!
//! Conversion of the gateway's errors into `tonic::Status` happens here and only here.

pub mod admin;
pub mod auth;
pub mod connections;
pub mod fanout;
pub mod health;
pub mod rollouts;
pub mod tls;

use tonic::Status;

use crate::discovery::IdentityError;
use crate::subscriptions::{CloseReason, RegisterError};

/// Server reflection over the contract and the health service, so `grpcurl list` and friends
/// work unmodified. The gateway serves it in both versions generic tools speak (grpcurl 1.8
/// knows only v1alpha).
pub fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Reflection on the admin port: the admin API and health.
pub fn admin_reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::admin::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Longest status message the gateway sends. Messages echo what the client sent (a route name,
/// labels); a client that sends 100 KB must still get its status, not a RESOURCE_EXHAUSTED
/// from its own metadata limit (16 KiB by default in most gRPC stacks).
pub const MAX_STATUS_MESSAGE: usize = 1024;

/// `message` cut to [`MAX_STATUS_MESSAGE`] bytes on a character boundary, marked as cut.
pub fn bounded(message: String) -> String {
    if message.len() <= MAX_STATUS_MESSAGE {
        return message;
    }
    const MARK: &str = "… (truncated)";
    let mut end = MAX_STATUS_MESSAGE - MARK.len();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &message[..end])
}

/// `status` with its message bounded (see [`bounded`]).
pub fn bounded_status(status: Status) -> Status {
    Status::new(status.code(), bounded(status.message().to_string()))
}

/// The status a refused subscription gets, with a message that says what to fix.
pub fn register_status(error: RegisterError) -> Status {
    let message = bounded(error.to_string());
    match error {
        RegisterError::UnknownRoute { .. } => Status::not_found(message),
        RegisterError::MissingRoute => Status::invalid_argument(message),
        RegisterError::NotSelected { .. } | RegisterError::Identity(IdentityError::Denied(_)) => {
            Status::permission_denied(message)
        }
        RegisterError::Identity(IdentityError::Unauthenticated(_)) => Status::unauthenticated(message),
        RegisterError::ShuttingDown => {
            Status::unavailable("the gateway is shutting down; reconnect with backoff (another replica may serve you)")
        }
    }
}

/// The status that ends a session closed by the gateway, if any (a drained session ends OK).
pub fn close_status(reason: CloseReason) -> Option<Status> {
    match reason {
        CloseReason::Drained => None,
        CloseReason::NotSelected(why) => Some(Status::permission_denied(bounded(format!(
            "subscription closed: {why}; in-flight deliveries were settled or will be redelivered"
        )))),
        CloseReason::ShuttingDown => Some(Status::unavailable(
            "the gateway is shutting down; in-flight deliveries will be redelivered, reconnect with backoff",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        assert_eq!(bounded("short".into()), "short");
        let long = "é".repeat(2 * MAX_STATUS_MESSAGE);
        let cut = bounded(long);
        assert!(cut.len() <= MAX_STATUS_MESSAGE, "{}", cut.len());
        assert!(cut.ends_with("(truncated)"));
        let exact = "x".repeat(MAX_STATUS_MESSAGE);
        assert_eq!(bounded(exact.clone()), exact, "at the limit nothing is cut");
    }
}
