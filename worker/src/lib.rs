//! The worker: takes messages from the queue and performs the slow side effects.
//!
//! - [`pipeline`]: one message through every sink → a [`pipeline::Disposition`]
//!   (ack, nack for redelivery, or dead-letter with the reason). Tests drive it directly.
//! - [`ownership`]: which copy of a delivery does the work (a lease in the ledger).
//! - [`retry`]: capped exponential in-process retries with full jitter, per sink.
//! - [`runner`]: the pull loop with bounded concurrency and graceful shutdown.
//! - [`sinks`]: the engines: `archive_local` / `archive_gcs`, `warehouse_sqlite` /
//!   `warehouse_bigquery`, `slack`.
//! - [`http`]: `/healthz`, `/readyz` and, in push mode, [`push`]: `POST /pubsub/push` with
//!   OIDC verification.
#![forbid(unsafe_code)]

pub mod http;
pub mod ownership;
pub mod pipeline;
pub mod push;
pub mod retry;
pub mod runner;
pub mod sinks;

pub use pipeline::{Disposition, Pipeline};
