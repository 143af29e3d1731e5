//! The embedded warehouse: the `events` table in a SQLite file, created from the schema file
//! under `infra/`, plus the analytics views from `infra/sql/sqlite/`. Users query it with
//! `sqlite3 data/warehouse.sqlite3` and SQLite's JSON functions.
//!
//! `(source, id)` is unique, so inserting a delivery twice is a no-op reported as
//! [`Outcome::AlreadyDone`]. A busy or locked database, a full disk and I/O errors are
//! transient; a row the table refuses (a constraint, a type) is permanent.
//!
//! Rows are committed with `synchronous=FULL` (the worker acks the message once its row is
//! in), through one writer thread ([`GroupCommit`]): the rows of every message in flight
//! share one transaction and one fsync.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use hookline_shared::envelope::{Envelope, format_time};
use hookline_shared::group_commit::{CommitError, GroupCommit};
use hookline_shared::schema;
use hookline_shared::sink::{IndexQuery, Outcome, SinkError, StoredDelivery, Warehouse};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, ErrorCode};

/// The SQLite views, one file per view, applied in name order.
pub const VIEWS: &[(&str, &str)] = &[
    (
        "events_common",
        include_str!("../../../infra/sql/sqlite/events_common.sql"),
    ),
    (
        "github_issue_lifecycle",
        include_str!("../../../infra/sql/sqlite/github_issue_lifecycle.sql"),
    ),
];

/// Inserts waiting for a commit beyond this many are refused (a transient error).
const BACKLOG: usize = 4096;
const BATCH_MAX: usize = 512;

#[derive(Debug, Clone)]
pub struct SqliteWarehouse {
    writer: GroupCommit,
    insert_sql: Arc<str>,
}

impl SqliteWarehouse {
    /// Opens (creating if needed) the warehouse file with its table and views.
    ///
    /// # Errors
    /// The file cannot be opened or the schema cannot be applied.
    pub fn open(path: &Path) -> Result<Self, CommitError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(2))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.execute_batch(&schema::sqlite_ddl())?;
        for (name, sql) in VIEWS {
            conn.execute_batch(&format!("DROP VIEW IF EXISTS {name};\n{sql}"))?;
        }
        let columns: Vec<&str> = schema::FIELDS.iter().map(|f| f.name.as_str()).collect();
        let placeholders: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
        let insert_sql = format!(
            "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT (source, id) DO NOTHING",
            schema::TABLE,
            columns.join(", "),
            placeholders.join(", ")
        );
        Ok(Self {
            writer: GroupCommit::start("warehouse-writer", conn, BACKLOG, BATCH_MAX)?,
            insert_sql: insert_sql.into(),
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, SinkError> {
        self.writer.run(f).await.map_err(classify)
    }
}

fn classify(e: CommitError) -> SinkError {
    let e = match e {
        CommitError::Sqlite(e) => e,
        other => return SinkError::transient("warehouse temporarily unavailable", other),
    };
    let transient = matches!(
        e.sqlite_error_code(),
        Some(
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::DiskFull
                | ErrorCode::SystemIoFailure
                | ErrorCode::CannotOpen
                | ErrorCode::ReadOnly
                | ErrorCode::OutOfMemory
                // Another write of the same batch ended the transaction (a full disk, an
                // I/O error): this row was not refused, only not committed.
                | ErrorCode::OperationAborted
        )
    );
    if transient {
        SinkError::transient("warehouse temporarily unavailable", e)
    } else {
        SinkError::permanent("warehouse refused the row", Some(e.into()))
    }
}

#[async_trait]
impl Warehouse for SqliteWarehouse {
    async fn insert(
        &self,
        envelope: &Envelope,
        archive_object: &str,
    ) -> Result<Outcome, SinkError> {
        // SQLite has no practical row limit below the body limit.
        let row = schema::row(envelope, archive_object, Utc::now(), usize::MAX);
        let values: Vec<rusqlite::types::Value> = schema::FIELDS
            .iter()
            .map(|f| match &row[&f.name] {
                serde_json::Value::Null => rusqlite::types::Value::Null,
                serde_json::Value::Number(n) => n.as_i64().map_or_else(
                    || rusqlite::types::Value::Real(n.as_f64().unwrap_or(0.0)),
                    rusqlite::types::Value::Integer,
                ),
                serde_json::Value::String(s) => rusqlite::types::Value::Text(s.clone()),
                other => rusqlite::types::Value::Text(other.to_string()),
            })
            .collect();
        let sql = Arc::clone(&self.insert_sql);
        self.with(move |conn| {
            let changed = conn
                .prepare_cached(&sql)?
                .execute(rusqlite::params_from_iter(values))?;
            Ok(if changed == 1 {
                Outcome::Written
            } else {
                Outcome::AlreadyDone
            })
        })
        .await
    }

    fn deduplicates(&self) -> bool {
        true // unique on (source, id)
    }

    async fn contains(
        &self,
        source: &str,
        delivery_id: &str,
        _: chrono::DateTime<Utc>,
    ) -> Result<bool, SinkError> {
        let (source, id) = (source.to_owned(), delivery_id.to_owned());
        self.with(move |conn| {
            conn.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM events WHERE source = ?1 AND id = ?2)",
            )?
            .query_row(rusqlite::params![source, id], |r| r.get(0))
        })
        .await
    }

    async fn deliveries(&self, query: &IndexQuery) -> Result<Vec<StoredDelivery>, SinkError> {
        // `ts` is stored as fixed-width RFC 3339 text (milliseconds, `Z`), which sorts and
        // compares as time does.
        let sql = format!(
            "SELECT {} FROM {} WHERE source = ?1 AND ts >= ?2 AND ts < ?3
               AND (?4 IS NULL OR event_type = ?4)
               AND (?5 IS NULL OR ts > ?5 OR (ts = ?5 AND id > ?6))
             ORDER BY ts, id LIMIT ?7",
            schema::INDEX_COLUMNS.join(", "),
            schema::TABLE
        );
        let params: Vec<rusqlite::types::Value> = vec![
            query.source.clone().into(),
            format_time(query.since).into(),
            format_time(query.until).into(),
            query.event_type.clone().into(),
            query.after.as_ref().map(|(t, _)| format_time(*t)).into(),
            query.after.as_ref().map(|(_, id)| id.clone()).into(),
            i64::try_from(query.page).unwrap_or(i64::MAX).into(),
        ];
        let rows = self
            .with(move |conn| {
                let mut stmt = conn.prepare_cached(&sql)?;
                let rows = stmt.query_map(rusqlite::params_from_iter(params), |r| {
                    (0..schema::INDEX_COLUMNS.len())
                        .map(|i| {
                            Ok(match r.get_ref(i)? {
                                ValueRef::Null => None,
                                ValueRef::Integer(n) => Some(n.to_string()),
                                other => {
                                    Some(String::from_utf8_lossy(other.as_bytes()?).into_owned())
                                }
                            })
                        })
                        .collect::<rusqlite::Result<Vec<_>>>()
                })?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        rows.iter()
            .map(|r| schema::stored_delivery(r).map_err(|m| SinkError::permanent(m, None)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(code: i32) -> CommitError {
        CommitError::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(code),
            None,
        ))
    }

    /// A row that did not commit because another write of its batch ended the transaction
    /// is tried again; a row SQLite refuses is not.
    #[test]
    fn a_batch_aborted_by_another_write_is_transient_a_refused_row_permanent() {
        for transient in [
            rusqlite::ffi::SQLITE_ABORT,
            rusqlite::ffi::SQLITE_FULL,
            rusqlite::ffi::SQLITE_IOERR,
            rusqlite::ffi::SQLITE_BUSY,
        ] {
            assert!(classify(sqlite(transient)).is_transient(), "{transient}");
        }
        for permanent in [
            rusqlite::ffi::SQLITE_CONSTRAINT,
            rusqlite::ffi::SQLITE_MISMATCH,
        ] {
            assert!(!classify(sqlite(permanent)).is_transient(), "{permanent}");
        }
        assert!(classify(CommitError::Backlog("warehouse")).is_transient());
    }
}
