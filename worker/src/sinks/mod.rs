//! Sink engines. Each file holds one engine: its client, its request, and how its errors
//! are classified as transient or permanent.

pub mod archive_local;
pub mod slack;
pub mod warehouse_sqlite;
