//! The `hookline` binary's library half: wiring that the binary and the end-to-end tests
//! share.
//!
//! - [`engines`]: open the configured queue as a publisher (ingest) or subscriber (worker).
#![forbid(unsafe_code)]

pub mod engines;
