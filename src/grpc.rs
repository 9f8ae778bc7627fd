//! gRPC surface: the `Fanout` service that subscribers stream from.
//!
//! Conversion of the gateway's errors into `tonic::Status` happens here and only here.

pub mod fanout;

use tonic::Status;

use crate::subscriptions::{CloseReason, RegisterError};

/// The status a refused subscription gets, with a message that says what to fix.
pub fn register_status(error: RegisterError) -> Status {
    match error {
        RegisterError::UnknownRoute { .. } => Status::not_found(error.to_string()),
        RegisterError::MissingRoute => Status::invalid_argument(error.to_string()),
        RegisterError::NotSelected { .. } | RegisterError::Identity(_) => Status::permission_denied(error.to_string()),
        RegisterError::ShuttingDown => {
            Status::unavailable("the gateway is shutting down; reconnect with backoff (another replica may serve you)")
        }
    }
}

/// The status that ends a session closed by the gateway, if any (a drained session ends OK).
pub fn close_status(reason: CloseReason) -> Option<Status> {
    match reason {
        CloseReason::Drained => None,
        CloseReason::NotSelected(why) => Some(Status::permission_denied(format!(
            "subscription closed: {why}; in-flight deliveries were settled or will be redelivered"
        ))),
        CloseReason::ShuttingDown => Some(Status::unavailable(
            "the gateway is shutting down; in-flight deliveries will be redelivered, reconnect with backoff",
        )),
    }
}
