//! The sink contracts: what the worker does with each message, one engine per backend.
//!
//! Every sink call is keyed by the delivery id so that repeating it is harmless: the archive
//! writes a deterministic object name create-only, the warehouse inserts with the delivery id
//! as a unique key (and `insertId` on BigQuery). Errors say whether trying again can help:
//! the worker retries `Transient` ones and dead-letters `Permanent` ones.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::envelope::{Envelope, Metadata};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A sink failure, classified.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Worth retrying (timeouts, 5xx, 429, a locked database); `retry_after` when the other
    /// side said how long to wait.
    #[error("transient failure: {message}")]
    Transient {
        message: String,
        retry_after: Option<Duration>,
        #[source]
        source: Option<BoxError>,
    },
    /// Retrying cannot help (a rejected row, a 4xx, an undecodable body).
    #[error("permanent failure: {message}")]
    Permanent {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
}

impl SinkError {
    pub fn transient(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Transient {
            message: message.into(),
            retry_after: None,
            source: Some(source.into()),
        }
    }
    pub fn permanent(message: impl Into<String>, source: Option<BoxError>) -> Self {
        Self::Permanent {
            message: message.into(),
            source,
        }
    }
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }
}

/// Whether an effect happened now or had already happened (a redelivery).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Written,
    AlreadyDone,
}

/// Stores the raw body under a name derived from the envelope.
#[async_trait]
pub trait Archive: Send + Sync + std::fmt::Debug {
    /// Writes the body create-only; an existing object with that name means done.
    ///
    /// # Errors
    /// Classified per engine.
    async fn put(&self, object: &str, envelope: &Envelope) -> Result<Outcome, SinkError>;

    /// Reads an object back (claim checks, replay from the archive).
    ///
    /// # Errors
    /// Classified per engine; a missing object is permanent.
    async fn get(&self, object: &str) -> Result<bytes::Bytes, SinkError>;
}

/// Stores one row per delivery.
#[async_trait]
pub trait Warehouse: Send + Sync + std::fmt::Debug {
    /// Inserts the row for this delivery; a row already present for it means done.
    ///
    /// # Errors
    /// Classified per engine.
    async fn insert(&self, envelope: &Envelope, archive_object: &str)
    -> Result<Outcome, SinkError>;

    /// Reads one page of the index (see [`IndexQuery`]). Rows come back as stored; a
    /// delivery the warehouse holds twice (BigQuery's `insertId` is best-effort) comes twice.
    ///
    /// # Errors
    /// Classified per engine; a row that cannot be read back is permanent.
    async fn deliveries(&self, query: &IndexQuery) -> Result<Vec<StoredDelivery>, SinkError>;

    /// Whether `insert` itself turns a second insert of a delivery into a no-op (a unique
    /// key). When it does not (BigQuery's `insertId` is best-effort), the worker asks
    /// [`Warehouse::contains`] before inserting whenever an earlier attempt at the delivery
    /// may have inserted without recording it, and before retrying a failed insert.
    fn deduplicates(&self) -> bool {
        false
    }

    /// Whether a row for (source, delivery id), received around `received_at`, exists.
    ///
    /// # Errors
    /// Classified per engine.
    async fn contains(
        &self,
        source: &str,
        delivery_id: &str,
        received_at: DateTime<Utc>,
    ) -> Result<bool, SinkError>;
}

/// One page of the warehouse used as an index of what was processed (replay from the
/// archive): one source's rows received in `[since, until)`, ordered by (receive time,
/// delivery id), the first `page` after `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexQuery {
    pub source: String,
    pub event_type: Option<String>,
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    /// The (receive time, delivery id) of the previous page's last row.
    pub after: Option<(DateTime<Utc>, String)>,
    pub page: usize,
}

/// A processed delivery as the warehouse remembers it: its metadata and where the archive
/// keeps its body, which is all it takes to publish it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDelivery {
    pub meta: Metadata,
    pub archive_object: String,
}

/// Which effects of a delivery are done: the idempotency ledger.
///
/// Keyed by (source, delivery id), so redeliveries of a message *and* a provider's resend
/// of the same delivery (a new request, a new receive time) find what is already done.
/// Steps are `archive.name` (the object name, claimed before writing, so every copy of a
/// delivery — redeliveries, a provider's resend with a new receive time, even two copies
/// processed at once — writes the first name), `lease.N` (which queue message owns the
/// delivery, see the worker's `ownership`), `archive`, `warehouse`, `slack.intent` and
/// `slack`.
/// Recording is create-only: the first record of a step stays.
#[async_trait]
pub trait Ledger: Send + Sync + std::fmt::Debug {
    /// The steps recorded for a delivery, with their notes.
    ///
    /// # Errors
    /// Classified per engine.
    async fn done(
        &self,
        source: &str,
        delivery_id: &str,
    ) -> Result<std::collections::BTreeMap<String, String>, SinkError>;

    /// Records a step (a no-op when it is already recorded).
    ///
    /// # Errors
    /// Classified per engine.
    async fn record(
        &self,
        source: &str,
        delivery_id: &str,
        step: &str,
        note: &str,
    ) -> Result<(), SinkError>;

    /// Records several steps (each a no-op when already recorded). The pipeline records
    /// what it did since the last record in one call, just before the next effect that
    /// depends on it, so a message costs fewer round trips to the ledger. A failure may
    /// leave some of the steps recorded: each step is one an earlier attempt may have done.
    /// But a lease's release (`lease.N.released`, the worker's ownership module) must not
    /// be stored before the call's other steps: it tells a waiting replay the work is over.
    ///
    /// # Errors
    /// Classified per engine.
    async fn record_all(
        &self,
        source: &str,
        delivery_id: &str,
        steps: &[(&str, &str)],
    ) -> Result<(), SinkError> {
        for (step, note) in steps {
            self.record(source, delivery_id, step, note).await?;
        }
        Ok(())
    }

    /// Records `proposed` for `step` unless a note is already there, and returns the note
    /// that won. Create-only recording makes this a claim: copies of a delivery processed
    /// at the same time all end up with the first name.
    ///
    /// # Errors
    /// Classified per engine.
    async fn claim(
        &self,
        source: &str,
        delivery_id: &str,
        step: &str,
        proposed: &str,
    ) -> Result<String, SinkError> {
        self.record(source, delivery_id, step, proposed).await?;
        Ok(self
            .done(source, delivery_id)
            .await?
            .remove(step)
            .unwrap_or_else(|| proposed.to_owned()))
    }

    /// [`Ledger::claim`] for several steps in one call (a first attempt claims its lease and
    /// its archive name together); the winning notes, in the order of `claims`.
    ///
    /// # Errors
    /// Classified per engine.
    async fn claim_all(
        &self,
        source: &str,
        delivery_id: &str,
        claims: &[(&str, &str)],
    ) -> Result<Vec<String>, SinkError> {
        let mut winners = Vec::with_capacity(claims.len());
        for (step, proposed) in claims {
            winners.push(self.claim(source, delivery_id, step, proposed).await?);
        }
        Ok(winners)
    }
}
