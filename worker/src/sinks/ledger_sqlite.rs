//! The embedded ledger: one SQLite table, `(source, delivery_id, step)` unique, written with
//! `INSERT OR IGNORE` so the first record of a step stays.
//!
//! Records are committed with `synchronous=NORMAL`: they survive the worker being killed,
//! not a power failure just after. A record lost that way makes the step run again, which
//! the archive (create-only) and the warehouse (unique key) absorb; for Slack it can repeat
//! a post. Paying an fsync for each of a message's records cost more than half the
//! worker's throughput.
//!
//! Every read and write goes through one writer thread ([`GroupCommit`]): the records of all
//! the messages in flight share a commit instead of taking a blocking thread and a commit
//! each.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use hookline_shared::group_commit::{CommitError, GroupCommit};
use hookline_shared::sink::{Ledger, SinkError};
use rusqlite::{Connection, params};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ledger (
    source      TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    step        TEXT NOT NULL,
    note        TEXT NOT NULL,
    at          TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (source, delivery_id, step)
);";

/// Records waiting for a commit beyond this many are refused (a transient error).
const BACKLOG: usize = 4096;
const BATCH_MAX: usize = 512;

#[derive(Debug, Clone)]
pub struct SqliteLedger {
    writer: GroupCommit,
}

impl SqliteLedger {
    /// # Errors
    /// The file cannot be opened or created.
    pub fn open(path: &Path) -> Result<Self, CommitError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(2))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?; // see the module docs
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            writer: GroupCommit::start("ledger-writer", conn, BACKLOG, BATCH_MAX)?,
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, SinkError> {
        // Every ledger failure is worth retrying: the file is ours and well-formed.
        self.writer
            .run(f)
            .await
            .map_err(|e| SinkError::transient("ledger unavailable", e))
    }
}

#[async_trait]
impl Ledger for SqliteLedger {
    async fn done(
        &self,
        source: &str,
        delivery_id: &str,
    ) -> Result<BTreeMap<String, String>, SinkError> {
        let (source, id) = (source.to_owned(), delivery_id.to_owned());
        self.with(move |c| {
            c.prepare_cached(
                "SELECT step, note FROM ledger WHERE source = ?1 AND delivery_id = ?2",
            )?
            .query_map(params![source, id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect()
        })
        .await
    }

    async fn record(
        &self,
        source: &str,
        delivery_id: &str,
        step: &str,
        note: &str,
    ) -> Result<(), SinkError> {
        self.record_all(source, delivery_id, &[(step, note)]).await
    }

    /// One job, so the steps commit together.
    async fn record_all(
        &self,
        source: &str,
        delivery_id: &str,
        steps: &[(&str, &str)],
    ) -> Result<(), SinkError> {
        let (source, id) = (source.to_owned(), delivery_id.to_owned());
        let steps = owned(steps);
        self.with(move |c| {
            steps
                .iter()
                .try_for_each(|(step, note)| insert(c, &source, &id, step, note))
        })
        .await
    }

    /// One job instead of a record and a read: the claim and its answer commit together.
    async fn claim(
        &self,
        source: &str,
        delivery_id: &str,
        step: &str,
        proposed: &str,
    ) -> Result<String, SinkError> {
        let (source, id, step, proposed) = (
            source.to_owned(),
            delivery_id.to_owned(),
            step.to_owned(),
            proposed.to_owned(),
        );
        self.with(move |c| claim(c, &source, &id, &step, &proposed))
            .await
    }

    /// One job: the claims and their answers commit together.
    async fn claim_all(
        &self,
        source: &str,
        delivery_id: &str,
        claims: &[(&str, &str)],
    ) -> Result<Vec<String>, SinkError> {
        let (source, id) = (source.to_owned(), delivery_id.to_owned());
        let claims = owned(claims);
        self.with(move |c| {
            claims
                .iter()
                .map(|(step, proposed)| claim(c, &source, &id, step, proposed))
                .collect()
        })
        .await
    }
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

/// Records `proposed` unless the step has a note, and returns the note that stays.
fn claim(
    c: &Connection,
    source: &str,
    id: &str,
    step: &str,
    proposed: &str,
) -> rusqlite::Result<String> {
    insert(c, source, id, step, proposed)?;
    c.prepare_cached(
        "SELECT note FROM ledger WHERE source = ?1 AND delivery_id = ?2 AND step = ?3",
    )?
    .query_row(params![source, id, step], |r| r.get(0))
}

/// Records a step unless it is recorded already (the first record stays).
fn insert(c: &Connection, source: &str, id: &str, step: &str, note: &str) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT OR IGNORE INTO ledger (source, delivery_id, step, note) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![source, id, step, note])
    .map(drop)
}
