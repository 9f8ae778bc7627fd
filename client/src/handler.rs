//! What a service writes: a [`Handler`] that processes one delivery and either succeeds (the
//! library acks it) or returns a [`Nack`] saying what the gateway should do instead.

use std::future::Future;
use std::time::Duration;

use fanout_proto::v1::{self as proto, Delivery, Disposition};

/// Processes one delivery. `Ok(())` acks it; `Err(Nack)` asks for a retry or a dead letter.
///
/// Implemented for every `Fn(Delivery) -> impl Future<Output = Result<(), Nack>>` closure, so
/// an `async fn` or an `async move` block is a handler. The future runs on its own tokio task
/// (a slow handler holds back only its key); a panic in it is a nack, not a crash.
pub trait Handler: Send + Sync + 'static {
    /// Processes `delivery`; the outcome settles it at the gateway.
    fn handle(&self, delivery: Delivery) -> impl Future<Output = Result<(), Nack>> + Send;
}

impl<F, Fut> Handler for F
where
    F: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Nack>> + Send,
{
    fn handle(&self, delivery: Delivery) -> impl Future<Output = Result<(), Nack>> + Send {
        self(delivery)
    }
}

/// A handler's refusal of a delivery.
///
/// Any `std::error::Error` converts into a retry (so `?` works in a handler); say
/// [`Nack::dead_letter`] for a message that can never succeed, so it stops taking attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    reason: String,
    disposition: NackDisposition,
}

/// What the gateway does with a nacked delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackDisposition {
    /// Deliver it again: after the route's backoff, or after `retry_after` when given (the
    /// gateway caps it at the route's `retry.max_backoff_ms`).
    Retry {
        /// The delay before the next attempt, instead of the route's backoff.
        retry_after: Option<Duration>,
    },
    /// Give up: the gateway produces it to the route's dead-letter topic.
    DeadLetter,
    /// The service is overloaded (back-pressure): another attempt after the route's backoff,
    /// not counted against its `retry.max_attempts`; an adaptive route halves the window.
    Overloaded,
}

impl Nack {
    /// Another attempt after the route's backoff.
    pub fn retry(reason: impl Into<String>) -> Self {
        Self { reason: reason.into(), disposition: NackDisposition::Retry { retry_after: None } }
    }

    /// Another attempt after `retry_after` instead of the route's backoff.
    pub fn retry_after(reason: impl Into<String>, retry_after: Duration) -> Self {
        Self { reason: reason.into(), disposition: NackDisposition::Retry { retry_after: Some(retry_after) } }
    }

    /// No more attempts: to the route's dead-letter topic, with `reason` in its headers.
    pub fn dead_letter(reason: impl Into<String>) -> Self {
        Self { reason: reason.into(), disposition: NackDisposition::DeadLetter }
    }

    /// The service cannot take more now: delivered again after the route's backoff without
    /// using up an attempt, and on a route with `window = "adaptive"` fewer are sent at once.
    pub fn overloaded(reason: impl Into<String>) -> Self {
        Self { reason: reason.into(), disposition: NackDisposition::Overloaded }
    }

    /// Why, as the gateway logs it and writes it into a dead letter's headers.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Retry, dead letter or overloaded.
    pub fn disposition(&self) -> NackDisposition {
        self.disposition
    }

    /// The wire form for the delivery `ack_id`.
    pub(crate) fn into_proto(self, ack_id: u64) -> proto::Nack {
        let (disposition, retry_after) = match self.disposition {
            NackDisposition::Retry { retry_after } => (Disposition::Retry, retry_after),
            NackDisposition::DeadLetter => (Disposition::DeadLetter, None),
            NackDisposition::Overloaded => (Disposition::Overloaded, None),
        };
        proto::Nack {
            ack_id,
            reason: self.reason,
            disposition: disposition as i32,
            retry_after: retry_after.and_then(|d| prost_types::Duration::try_from(d).ok()),
        }
    }
}

/// An error is a retry, its message (with its sources) the reason.
impl<E: std::error::Error> From<E> for Nack {
    fn from(error: E) -> Self {
        let mut reason = error.to_string();
        let mut source = error.source();
        while let Some(s) = source {
            reason.push_str(": ");
            reason.push_str(&s.to_string());
            source = s.source();
        }
        Nack::retry(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_a_retry_with_its_sources_in_the_reason() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot save the order")]
        struct Save(#[source] std::io::Error);
        let nack: Nack = Save(std::io::Error::other("disk full")).into();
        assert_eq!(nack.disposition(), NackDisposition::Retry { retry_after: None });
        assert_eq!(nack.reason(), "cannot save the order: disk full");
    }

    #[test]
    fn the_wire_form_carries_disposition_and_delay() {
        let wire = Nack::retry_after("busy", Duration::from_millis(1_500)).into_proto(7);
        assert_eq!((wire.ack_id, wire.disposition), (7, Disposition::Retry as i32));
        assert_eq!(wire.retry_after, Some(prost_types::Duration { seconds: 1, nanos: 500_000_000 }));
        let wire = Nack::dead_letter("poison").into_proto(8);
        assert_eq!(
            (wire.disposition, wire.retry_after, wire.reason.as_str()),
            (Disposition::DeadLetter as i32, None, "poison")
        );
        assert_eq!(Nack::overloaded("busy").into_proto(9).disposition, Disposition::Overloaded as i32);
    }
}
