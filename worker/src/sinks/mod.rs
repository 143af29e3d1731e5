//! Sink engines, the two engines of each contract side by side (`archive_local` /
//! `archive_gcs`, `warehouse_sqlite` / `warehouse_bigquery`). Each file holds one engine: its client, its request, and how its errors
//! are classified as transient or permanent.

pub mod archive_gcs;
pub mod archive_local;
pub mod ledger_sqlite;
pub mod slack;
pub mod warehouse_bigquery;
pub mod warehouse_sqlite;
