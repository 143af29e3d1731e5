//! The queue contract between ingest and worker, with one engine per file.
//!
//! The contract is Pub/Sub's, because that is where users end up: at-least-once delivery,
//! ack/nack, an ack deadline after which an unacknowledged message is delivered again, a
//! delivery-attempt count, and a dead-letter topic. The embedded engine reproduces exactly
//! that on one machine, so the worker's logic is the same on both.

pub mod discard;
pub mod embedded;
#[cfg(feature = "gcp")]
mod publish_lanes;
#[cfg(feature = "gcp")]
pub mod pubsub;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::Utc;

use crate::envelope::{Envelope, EnvelopeError, Metadata, attr, format_time};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why the queue could not do what was asked. Ingest answers all of them with 503 so the
/// provider retries; the worker leaves the message for redelivery.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the queue is unavailable")]
    Unavailable(#[source] BoxError),
    #[error("the queue is full; try again later")]
    Full,
    #[error("the queue did not confirm within {0:?}")]
    Timeout(Duration),
    #[error("the queue has been closed")]
    Closed,
    /// The message's lease ran out and the queue handed it to another consumer (or moved
    /// it on): whatever this consumer still does with it, the new holder does too.
    #[error("the message's lease was lost to another consumer")]
    LeaseLost,
}

impl QueueError {
    pub fn unavailable(e: impl Into<BoxError>) -> Self {
        Self::Unavailable(e.into())
    }
}

/// Publishes envelopes. `publish` returns only once the message is durable: an fsync'd
/// commit for the embedded queue, a message id from Pub/Sub.
#[async_trait]
pub trait Publisher: Send + Sync + fmt::Debug {
    /// # Errors
    /// The message was not stored; the caller must not acknowledge the webhook.
    async fn publish(&self, envelope: &Envelope) -> Result<String, QueueError>;

    /// Whether the queue can take messages now (`/readyz`).
    ///
    /// # Errors
    /// The queue cannot be reached.
    async fn ready(&self) -> Result<(), QueueError>;

    /// Leaves the queue tidy before the process exits (the embedded queue folds its
    /// write-ahead log into the file, so the next process opens it without replaying it).
    async fn close(&self) {}
}

/// Pulls leased messages from a subscription.
#[async_trait]
pub trait Subscriber: Send + Sync + fmt::Debug {
    /// Waits up to `wait` for at least one message and returns up to `max`; empty when none
    /// arrived in time.
    ///
    /// # Errors
    /// The queue cannot be reached.
    async fn pull(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError>;

    /// As [`Subscriber::pull`], but stops adding messages once their bodies add up to
    /// `max_bytes`; the first message comes whatever its size, so nothing is stuck behind
    /// a large one. The worker's memory bound. An engine whose client already bounds what it
    /// holds (Pub/Sub's flow control, set from the same budget) keeps this default.
    ///
    /// # Errors
    /// The queue cannot be reached.
    async fn pull_within(
        &self,
        max: usize,
        max_bytes: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let _ = max_bytes;
        self.pull(max, wait).await
    }

    /// Flushes pending acknowledgements before the process exits. Engines that settle
    /// synchronously (the embedded queue) have nothing to flush.
    async fn close(&self) {}
}

/// Settles one leased message. Exactly one of `ack`, `nack`, `dead_letter` consumes it; a
/// message dropped without either is delivered again after its ack deadline.
#[async_trait]
pub trait Acker: Send + Sync + fmt::Debug {
    /// The message is done and must not be delivered again.
    async fn ack(self: Box<Self>) -> Result<(), QueueError>;
    /// Deliver again later, after the subscription's retry backoff.
    async fn nack(self: Box<Self>) -> Result<(), QueueError>;
    /// Deliver again later, and not before `wait` (or the retry backoff, if longer) where
    /// the queue can say so: the sink said when it can take the message again. A delivery
    /// attempt is counted either way, so waiting out what the sink asked for spends fewer of
    /// them than coming back after a short backoff. The default is [`Acker::nack`] (Pub/Sub:
    /// its subscription's backoff, minutes at most, already spaces redeliveries).
    async fn nack_after(self: Box<Self>, wait: Duration) -> Result<(), QueueError> {
        let _ = wait;
        self.nack().await
    }
    /// Moves the message to the dead-letter topic with the reason, then acknowledges it.
    async fn dead_letter(self: Box<Self>, reason: DeadLetter) -> Result<(), QueueError>;
    /// Pushes the ack deadline out by `by` from now, while work is still under way.
    async fn extend(&self, by: Duration) -> Result<(), QueueError>;
    /// How long the queue holds the message for this consumer (its ack deadline), when the
    /// consumer must [`extend`](Acker::extend) it itself; `None` when something else keeps
    /// it alive or no deadline applies.
    fn lease(&self) -> Option<Duration> {
        None
    }
}

/// Why a message is dead-lettered. Travels as attributes so operators can filter on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The sink that failed (`archive`, `warehouse`, `slack`) or `decode`.
    pub sink: String,
    pub reason: String,
    pub attempts: u32,
}

impl DeadLetter {
    /// Adds the dead-letter attributes to a message's attributes.
    pub fn annotate(&self, attributes: &mut BTreeMap<String, String>) {
        attributes.insert(attr::DEAD_LETTER_SINK.into(), self.sink.clone());
        attributes.insert(attr::DEAD_LETTER_REASON.into(), self.reason.clone());
        attributes.insert(attr::DEAD_LETTER_ATTEMPTS.into(), self.attempts.to_string());
        attributes.insert(attr::DEAD_LETTER_AT.into(), format_time(Utc::now()));
    }
}

/// One leased message: the raw parts as stored, its delivery attempt, and its acker.
#[derive(Debug)]
pub struct Delivery {
    pub message_id: String,
    pub body: Bytes,
    pub attributes: BTreeMap<String, String>,
    /// 1 on first delivery, as Pub/Sub's `delivery_attempt`.
    pub attempt: u32,
    pub acker: Box<dyn Acker>,
}

impl Delivery {
    /// Decodes the envelope.
    ///
    /// # Errors
    /// The attributes were not written by hookline: such a message can only be dead-lettered.
    pub fn envelope(&self) -> Result<Envelope, EnvelopeError> {
        Ok(Envelope {
            body: self.body.clone(),
            meta: Metadata::from_attributes(&self.attributes)?,
        })
    }
}

/// Pub/Sub-style retry backoff: exponential in the attempt number, clamped.
pub fn redelivery_backoff(attempt: u32, min: Duration, max: Duration) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
    min.saturating_mul(factor).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_clamped() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(10));
        let got: Vec<u64> = (1..=6)
            .map(|a| redelivery_backoff(a, min, max).as_secs())
            .collect();
        assert_eq!(got, [1, 2, 4, 8, 10, 10]);
        assert_eq!(redelivery_backoff(u32::MAX, min, max), max);
    }
}
