//! What ingest and worker share.
//!
//! - [`envelope`]: the raw body plus metadata attributes, the unit on the queue.
//! - [`verify`]: provider signature schemes, one file per provider, and delivery ids.
//! - [`config`]: typed settings, layered defaults → file → environment.
//! - [`queue`]: the publish/subscribe contract and the embedded SQLite engine.
//! - [`group_commit`]: one writer thread per SQLite file, many writes per commit.
//! - [`sink`]: the archive and warehouse contracts and their error classification.
//! - [`schema`]: the warehouse table, read from the one schema file under `infra/`.
//! - [`archive_name`]: where a delivery's body is archived.
//! - [`metrics`]: the Prometheus registry both services expose on `/metrics`.
//! - [`provision`]: what creating a resource did, for `hookline provision`.
#![forbid(unsafe_code)]

pub mod archive_name;
pub mod config;
pub mod envelope;
pub mod folders;
pub mod group_commit;
pub mod metrics;
pub mod provision;
pub mod queue;
pub mod schema;
pub mod sink;
pub mod verify;

#[cfg(test)]
pub(crate) mod test_support;
