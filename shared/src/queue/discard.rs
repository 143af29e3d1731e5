//! The benchmark-only publisher: confirms every publish and keeps nothing.
//!
//! `queue.backend = "bench_discard"` exists for one measurement, the ceiling of receive +
//! verify + answer on a machine (BENCHMARKS.md, contender 1), so that the cost of each real
//! queue can be read as a ratio against it. It loses every message by design: ingest warns
//! at start, the worker and `provision` refuse it.

use async_trait::async_trait;

use super::{Publisher, QueueError};
use crate::envelope::Envelope;

#[derive(Debug, Default)]
pub struct DiscardPublisher;

#[async_trait]
impl Publisher for DiscardPublisher {
    async fn publish(&self, envelope: &Envelope) -> Result<String, QueueError> {
        Ok(envelope.meta.delivery_id.clone())
    }

    async fn ready(&self) -> Result<(), QueueError> {
        Ok(())
    }
}
