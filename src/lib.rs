//! The `hookline` binary's library half: wiring that the binary and the end-to-end tests
//! share.
//!
//! - [`engines`]: open the configured queue as a publisher (ingest) or subscriber (worker).
//! - [`replay`]: operators' replay of dead-lettered messages, on either engine.
//! - [`replay_archive`]: replay of processed deliveries from the archive, on either engine.
#![forbid(unsafe_code)]

pub mod engines;
pub mod replay;
pub mod replay_archive;
