//! The worker: takes messages from the queue and performs the slow side effects.
//!
//! - [`pipeline`]: one message through every sink → a [`pipeline::Disposition`]
//!   (ack, nack for redelivery, or dead-letter with the reason). Tests drive it directly.
//! - [`retry`]: capped exponential in-process retries with full jitter, per sink.
//! - [`runner`]: the pull loop with bounded concurrency and graceful shutdown.
//! - [`sinks`]: the engines: `archive_local`, `warehouse_sqlite`, `slack`.
#![forbid(unsafe_code)]

pub mod pipeline;
pub mod retry;
pub mod runner;
pub mod sinks;

pub use pipeline::{Disposition, Pipeline};
