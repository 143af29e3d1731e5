//! The ingest service: `POST /hooks/{source}` verifies the provider's signature over the raw
//! body, publishes body + metadata to the queue, and answers 200 only once the queue has
//! confirmed. Everything slow happens later, in the worker.
//!
//! - [`server`]: routes, the listener, graceful shutdown.
//! - [`handler`]: the webhook request path, step by step.
//! - [`body`]: reading the body under the size limit.
//! - [`error`]: every refusal, with its status and stable error code.
//! - [`state`]: what handlers share (sources, publisher, limits, clock).
//! - [`headers`]: actix headers seen through the verifier's `HeaderLookup`.
#![forbid(unsafe_code)]

pub mod body;
pub mod error;
pub mod handler;
pub mod headers;
pub mod server;
pub mod state;

pub use server::run;
pub use state::AppState;
