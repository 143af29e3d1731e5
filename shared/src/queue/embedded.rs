//! The embedded queue: one SQLite file in WAL mode, shared by the ingest and worker processes.
//!
//! Durability: every publish is committed with `synchronous=FULL`, so the WAL is fsync'd
//! before ingest answers 200. Publishes go through one writer thread that commits everything
//! waiting in one transaction ([`crate::group_commit`]): under load many requests share one
//! fsync, when idle a request pays for exactly one.
//! The bodies themselves go to append-only segment files beside the queue file ([`bodies`]),
//! fsync'd before the commit of the rows that point at them.
//!
//! Settling is committed with `synchronous=NORMAL` on the consumer's connection, through a
//! writer thread of its own, so the acks of many messages share a commit too: a lease,
//! ack or nack survives the process being killed (the WAL is written), but the last ones may
//! be lost if the machine loses power before the next checkpoint. Losing an ack means a
//! redelivery, which the worker's idempotent sinks absorb; it never loses a message. An
//! fsync per ack was the worker's largest cost after the archive (BENCHMARKS.md: 372 ->
//! 936 events/s on the 2-core benchmark machine).
//!
//! Delivery: a row is *leased* by setting `visible_at` to now + ack deadline and a random
//! `lease` token, and counting the attempt. Ack deletes the row, nack makes it visible again
//! after the retry backoff, and a lease that runs out makes it visible by itself. Only the
//! holder of the current lease can settle a row, so a slow consumer whose deadline passed
//! cannot ack a message another consumer is now working on. A row whose attempts reached the
//! maximum moves to the dead-letter topic instead of being leased again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::Utc;
use rusqlite::functions::FunctionFlags;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use super::{Acker, DeadLetter, Delivery, Publisher, QueueError, Subscriber, redelivery_backoff};
use crate::config::EmbeddedQueueSettings;
use crate::envelope::Envelope;
use crate::folders;
use crate::group_commit::{CommitError, GroupCommit, Upkeep, io_error};

mod bodies;
use bodies::{BodyReader, BodyRef, BodyWriter};

/// Topic names inside the file; the same names the Pub/Sub engine uses by default.
pub const MAIN_TOPIC: &str = "hookline-events";
pub const DEAD_LETTER_TOPIC: &str = "hookline-events-dead-letter";

/// Publishes waiting for the writer beyond this many are refused (503) rather than queued
/// without bound in memory.
const WRITER_BACKLOG: usize = 4096;
/// The most publishes one transaction commits.
const GROUP_COMMIT_MAX: usize = 512;
/// How long closing waits for other processes' readers before leaving the WAL as it is.
const CLOSE_WAIT: Duration = Duration::from_millis(300);
/// The consumer's writes (leases, acks, nacks) wait for at most this many others; the worker
/// has at most its concurrency in flight, plus lease extensions.
const CONSUMER_BACKLOG: usize = 1024;
const CONSUMER_BATCH_MAX: usize = 256;

const TABLE: &str = "
CREATE TABLE IF NOT EXISTS messages (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    topic        TEXT    NOT NULL,
    body         BLOB    NOT NULL,  -- empty when the body is in a segment (below)
    attributes   TEXT    NOT NULL,  -- JSON object of string attributes
    published_at INTEGER NOT NULL,  -- unix milliseconds
    visible_at   INTEGER NOT NULL,  -- unix milliseconds; leased until then
    attempts     INTEGER NOT NULL DEFAULT 0,
    lease        INTEGER,           -- token of the current lease, NULL when not leased
    segment      TEXT,              -- the body's segment file (bodies.rs); NULL: in `body`
    body_at      INTEGER,           -- its offset in the segment
    body_len     INTEGER            -- its length
);";

/// The columns queue files from before the body segments lack, added on open.
const SEGMENT_COLUMNS: [&str; 3] = ["segment TEXT", "body_at INTEGER", "body_len INTEGER"];

const INDEXES: &str = "
-- Versions of hookline from before the body segments would lease a row whose body is in a
-- segment as an empty body, and ack it. They do not define this function, so once a version
-- that does has opened the file, their lease statement fails to prepare (no such function).
CREATE TRIGGER IF NOT EXISTS messages_leased_by_segment_readers
BEFORE UPDATE OF lease ON messages WHEN hookline_reads_body_segments() = 0
BEGIN SELECT RAISE(ABORT, 'this queue file needs a hookline that reads body segments'); END;
CREATE INDEX IF NOT EXISTS messages_ready ON messages (topic, visible_at, id);
-- Which segments are still in use, for collecting the others.
CREATE INDEX IF NOT EXISTS messages_segment ON messages (segment) WHERE segment IS NOT NULL;
-- Finds the few messages out of attempts without reading any other row: `attempts` is
-- stored after the body, so checking it row by row would read every ready body.
CREATE INDEX IF NOT EXISTS messages_exhausted ON messages (topic, attempts, visible_at);
";

/// The next ready messages of topic ?3 at time ?4, at most ?5, the longest-visible first
/// (publish order, for messages never nacked). Ordered as `messages_ready` is, so SQLite
/// reads the first ?5 index entries and stops: ordered by `id` alone it read and sorted
/// every ready entry on each pull, a fifth of the worker's time with 20,000 queued.
const NEXT_READY: &str = "SELECT id FROM messages WHERE topic = ?3 AND visible_at <= ?4
                          ORDER BY visible_at, id LIMIT ?5";
/// The body sizes of the same messages, in the same order, to lease no more than a byte
/// budget. `length` of a blob reads the record header, not the body.
const READY_SIZES: &str =
    "SELECT COALESCE(body_len, length(body)) FROM messages WHERE topic = ?3 AND visible_at <= ?4
                           ORDER BY visible_at, id LIMIT ?5";

/// A handle on the queue file. Cheap to clone; every clone shares the writer threads.
#[derive(Clone)]
pub struct EmbeddedQueue {
    /// Publishes (`synchronous=FULL`).
    publisher: GroupCommit,
    /// Leases, settling and reads (`synchronous=NORMAL`).
    consumer: GroupCommit,
    settings: Arc<EmbeddedQueueSettings>,
    poll_interval: Duration,
    path: PathBuf,
    /// Asks the checkpoint thread for a truncating checkpoint; dropped with the last clone,
    /// which ends the thread.
    checkpoints: Arc<SyncSender<oneshot::Sender<()>>>,
    /// Where the bodies are ([`bodies`]).
    bodies: Arc<Path>,
    /// This handle's segment; appended to only on the publisher's writer thread.
    body_writer: Arc<Mutex<BodyWriter>>,
}

impl std::fmt::Debug for EmbeddedQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedQueue")
            .field("path", &self.path)
            .finish()
    }
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.create_scalar_function(
        "hookline_reads_body_segments",
        0,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |_| Ok(1),
    )?;
    create_schema(&conn)?;
    Ok(conn)
}

/// Creates the table and indexes, adding the segment columns to a queue file written before
/// them (its rows keep their bodies inline and are read as before).
fn create_schema(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(TABLE)?;
    let missing = |conn: &Connection| {
        conn.query_row(
            "SELECT count(*) = 0 FROM pragma_table_info('messages') WHERE name = 'segment'",
            [],
            |r| r.get::<_, bool>(0),
        )
    };
    if missing(conn)? {
        // Checked again under the write lock: another process may be adding them too.
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let added = (|| {
            if missing(conn)? {
                for column in SEGMENT_COLUMNS {
                    conn.execute_batch(&format!("ALTER TABLE messages ADD COLUMN {column}"))?;
                }
            }
            conn.execute_batch("COMMIT")
        })();
        if added.is_err() && !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        added?;
    }
    conn.execute_batch(INDEXES)
}

/// `file`'s name with `suffix` added: where SQLite keeps its WAL, and the segments' folder.
fn beside(file: &Path, suffix: &str) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

impl EmbeddedQueue {
    /// Opens (creating if needed) the queue file and starts its writer thread.
    ///
    /// # Errors
    /// The file or its folder cannot be created or opened as a SQLite database.
    pub fn open(
        settings: &EmbeddedQueueSettings,
        poll_interval: Duration,
    ) -> Result<Self, QueueError> {
        let path = settings.path.clone();
        let folder = folders::parent_of(&path);
        let created: Vec<PathBuf> = folder
            .ancestors()
            .take_while(|f| !f.as_os_str().is_empty() && !f.is_dir())
            .map(Path::to_path_buf)
            .collect();
        std::fs::create_dir_all(folder).map_err(QueueError::unavailable)?;
        let writer_conn = open_connection(&path).map_err(QueueError::unavailable)?;
        let consumer = open_connection(&path).map_err(QueueError::unavailable)?;
        // Checkpoints run on their own thread, not inside a commit: a commit that has to copy
        // the WAL into a large queue file first stalls every request waiting on it.
        for conn in [&writer_conn, &consumer] {
            conn.pragma_update(None, "wal_autocheckpoint", 0)
                .map_err(QueueError::unavailable)?;
        }
        let checkpoint_conn = open_connection(&path).map_err(QueueError::unavailable)?;
        let (checkpoints, checkpoint_rx) = sync_channel(1);
        let restart = Arc::new(AtomicBool::new(false));
        let wanted = Arc::clone(&restart);
        let bodies: Arc<Path> = bodies::folder(&path).into();
        // Made now, so that a folder that cannot be made fails the start, not every publish.
        bodies::create_folder(&bodies).map_err(|e| {
            QueueError::unavailable(format!(
                "cannot create the body segments' folder {}: {e}",
                bodies.display()
            ))
        })?;
        // The queue's folder holds the entries of the queue file, its WAL and the segments'
        // folder; its parent holds its own; each folder made above, its parent's. Synced at
        // every start (a few ms): an earlier start may have died before syncing them, and
        // SQLite syncs the folder only for its WAL.
        let entries: BTreeSet<&Path> = [folder, folders::parent_of(folder)]
            .into_iter()
            .chain(created.iter().map(|f| folders::parent_of(f)))
            .collect();
        for entries_of in entries {
            folders::sync(entries_of).map_err(|e| {
                QueueError::unavailable(format!(
                    "cannot make the entries of {} durable: {e}",
                    entries_of.display()
                ))
            })?;
        }
        let body_writer = Arc::new(Mutex::new(BodyWriter::new(
            bodies.to_path_buf(),
            settings.segment_bytes,
        )));
        let collected = Arc::clone(&bodies);
        let wal = beside(&path, "-wal");
        std::thread::Builder::new()
            .name("queue-checkpoint".into())
            .spawn(move || {
                checkpoint_loop(&checkpoint_conn, &checkpoint_rx, &wanted, &collected, &wal)
            })
            .map_err(QueueError::unavailable)?;
        // Settling (leases, acks, nacks, dead-letter moves) is not fsync'd: see the module docs.
        consumer
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(QueueError::unavailable)?;
        Ok(Self {
            publisher: GroupCommit::start_with(
                "queue-writer",
                writer_conn,
                WRITER_BACKLOG,
                GROUP_COMMIT_MAX,
                WriterUpkeep {
                    restart: Arc::clone(&restart),
                    bodies: Some(Arc::clone(&body_writer)),
                },
            )
            .map_err(QueueError::unavailable)?,
            consumer: GroupCommit::start_with(
                "queue-consumer",
                consumer,
                CONSUMER_BACKLOG,
                CONSUMER_BATCH_MAX,
                WriterUpkeep {
                    restart,
                    bodies: None,
                },
            )
            .map_err(QueueError::unavailable)?,
            settings: Arc::new(settings.clone()),
            poll_interval,
            path,
            checkpoints: Arc::new(checkpoints),
            bodies,
            body_writer,
        })
    }

    /// A subscriber on the main topic, dead-lettering after the configured attempts.
    pub fn subscriber(&self) -> EmbeddedSubscription {
        EmbeddedSubscription {
            queue: self.clone(),
            topic: MAIN_TOPIC,
            dead_letter_topic: Some(DEAD_LETTER_TOPIC),
        }
    }

    /// A subscriber on the dead-letter topic, for operators' replay.
    pub fn dead_letter_subscriber(&self) -> EmbeddedSubscription {
        EmbeddedSubscription {
            queue: self.clone(),
            topic: DEAD_LETTER_TOPIC,
            dead_letter_topic: None,
        }
    }

    /// Publishes to a named topic and waits for the fsync'd commit (of the body's segment,
    /// then of its row).
    ///
    /// # Errors
    /// The writer's backlog is full, the writer is gone, the body could not be written, or
    /// the commit failed.
    pub async fn publish_to(
        &self,
        topic: &'static str,
        body: Bytes,
        attributes: &BTreeMap<String, String>,
    ) -> Result<String, QueueError> {
        let attributes = serde_json::to_string(attributes).map_err(QueueError::unavailable)?;
        let writer = Arc::clone(&self.body_writer);
        let id = self
            .publisher
            .run(move |conn| {
                let at = writer
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .append(&body)
                    .map_err(|e| io_error("cannot start a body segment", &e))?;
                conn.prepare_cached(
                    "INSERT INTO messages
                       (topic, body, attributes, published_at, visible_at, segment, body_at,
                        body_len)
                     VALUES (?1, X'', ?2, ?3, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    topic,
                    attributes,
                    now_ms(),
                    &*at.segment,
                    at.offset,
                    at.len
                ])?;
                Ok(conn.last_insert_rowid())
            })
            .await
            .map_err(queue_error)?;
        Ok(id.to_string())
    }

    /// Folds the WAL into the file and empties it (a truncating checkpoint), so the next
    /// process to open the queue does not replay it first. Gives up after [`CLOSE_WAIT`] if
    /// another process is reading (its WAL is then checkpointed as usual).
    pub async fn close(&self) {
        let (done, finished) = oneshot::channel();
        if self.checkpoints.try_send(done).is_ok() {
            let _ = tokio::time::timeout(CLOSE_WAIT * 4, finished).await;
        }
    }

    /// Messages per topic: (visible now, leased), for tests, readiness and operators.
    ///
    /// # Errors
    /// The file cannot be read.
    pub async fn depth(&self, topic: &'static str) -> Result<(i64, i64), QueueError> {
        self.with_consumer(move |conn| {
            conn.query_row(
                "SELECT COALESCE(SUM(visible_at <= ?2), 0), COALESCE(SUM(visible_at > ?2), 0)
                 FROM messages WHERE topic = ?1",
                params![topic, now_ms()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
        .await
    }

    async fn with_consumer<T, F>(&self, f: F) -> Result<T, QueueError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.consumer.run(f).await.map_err(queue_error)
    }
}

fn queue_error(e: CommitError) -> QueueError {
    match e {
        CommitError::Backlog(_) => QueueError::Full,
        CommitError::Stopped(_) => QueueError::Closed,
        other => QueueError::unavailable(other),
    }
}

/// How often the checkpoint thread looks at the WAL when its last pass left nothing to copy.
/// Short, so that the remainder a restart waits on stays small (see BENCHMARKS.md).
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(20);
/// From this many frames (about 16 MB at 4 KiB pages) the WAL is started over, so that it
/// stays about this size instead of growing with every write.
const RESTART_AT_FRAMES: i64 = 4096;
/// A writer thread copies what the checkpoint thread left before a restart, with its
/// writes waiting, so it is asked to only once that is at most this many frames
/// (about 0.5 MB). At 5,000 publishes/s, 512 frames (with a 100 ms interval) gave a p99 of
/// 10-11 ms, 128 (with 20 ms) 3.6-6.2 ms in five runs of six (BENCHMARKS.md).
const RESTART_REMAINDER_FRAMES: i64 = 128;

/// Keeps the WAL small without stalling publishes, until the queue handle is dropped.
///
/// Why not SQLite's own checkpoints: a passive checkpoint never blocks a writer, but SQLite
/// starts the WAL over only when a write transaction begins while every frame is already in
/// the database. Under steady load that moment never comes (new frames arrive while a pass
/// copies), so the WAL grew with every write: 4 GB in a 36 s ingest benchmark, where the
/// kernel spent more time zeroing the growing file's new pages than copying the data, and
/// every lookup in the WAL's index slowed down with it. A RESTART checkpoint from this thread
/// makes that moment, but it fights the publisher's writer thread for SQLite's locks, and both
/// sleep in SQLite's busy handler: 30-40 ms stalls, and the restart often gave up anyway.
///
/// So this thread copies passively, again at once while there is more to copy, and once the
/// WAL is large and the remainder small it sets `restart`. Whichever of this process's two
/// writer threads (publishes; leases and settles) runs a batch next sees it first
/// ([`GroupCommit::start_with`]) and copies the remainder itself ([`restart_wal`]), between
/// its own transactions, so its write starts the WAL over. Both, because a worker process
/// alone only settles and an idle ingest only publishes. This thread keeps copying while the
/// request waits: if no batch comes, the WAL still reaches the database.
///
/// On request (the process is closing the queue) it copies everything and empties the WAL
/// (TRUNCATE), waiting briefly for readers.
///
/// Every [`COLLECT_INTERVAL`] it also deletes the body segments nobody needs any more.
fn checkpoint_loop(
    conn: &Connection,
    requests: &Receiver<oneshot::Sender<()>>,
    restart: &AtomicBool,
    bodies: &Path,
    wal: &Path,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut behind = false;
    let mut collected = std::time::Instant::now();
    loop {
        if collected.elapsed() >= COLLECT_INTERVAL {
            collected = std::time::Instant::now();
            match bodies::collect(conn, bodies, wal) {
                Ok(0) => {}
                Ok(n) => tracing::debug!(deleted = n, "body segments collected"),
                Err(e) => tracing::warn!(error = %e, "body segments not collected"),
            }
        }
        let wait = if behind {
            Duration::ZERO
        } else {
            CHECKPOINT_INTERVAL
        };
        match requests.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(done) => {
                let _ = conn.busy_timeout(CLOSE_WAIT);
                if let Err(e) = checkpoint(conn, "TRUNCATE") {
                    tracing::debug!(error = %e, "queue WAL not truncated at close");
                }
                let _ = done.send(());
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
        behind = match checkpoint(conn, "PASSIVE") {
            Ok((frames, copied)) => {
                if frames >= RESTART_AT_FRAMES && frames - copied <= RESTART_REMAINDER_FRAMES {
                    restart.store(true, Ordering::Relaxed);
                    false
                } else {
                    copied < frames
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "queue checkpoint skipped");
                false
            }
        };
    }
}

/// How often the checkpoint thread looks for body segments to delete (often in tests, so
/// that collection races with publishing and leasing there).
const COLLECT_INTERVAL: Duration = if cfg!(test) {
    Duration::from_millis(50)
} else {
    Duration::from_secs(5)
};

/// What the queue's writer threads do around their batches.
struct WriterUpkeep {
    /// Set by the checkpoint thread: copy the rest of the WAL before the next batch, so that
    /// the batch's write starts the WAL over.
    restart: Arc<AtomicBool>,
    /// The publisher's bodies, made durable before the commit of their rows.
    bodies: Option<Arc<Mutex<BodyWriter>>>,
}

impl Upkeep for WriterUpkeep {
    fn before_batch(&mut self, conn: &Connection) {
        if self.restart.swap(false, Ordering::Relaxed)
            && let Err(e) = checkpoint(conn, "PASSIVE")
        {
            tracing::debug!(error = %e, "queue WAL not restarted");
        }
    }

    fn before_commit(&mut self) -> std::io::Result<()> {
        match &self.bodies {
            Some(bodies) => bodies
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .sync()
                .map_err(|e| {
                    std::io::Error::new(e.kind(), format!("message bodies not written: {e}"))
                }),
            None => Ok(()),
        }
    }
}

/// Runs a checkpoint in `mode`; returns the WAL's frames and how many of them are now in the
/// database.
fn checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<(i64, i64)> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok((r.get(1)?, r.get(2)?))
    })
}

#[async_trait]
impl Publisher for EmbeddedQueue {
    async fn publish(&self, envelope: &Envelope) -> Result<String, QueueError> {
        self.publish_to(
            MAIN_TOPIC,
            envelope.body.clone(),
            &envelope.meta.to_attributes(),
        )
        .await
    }

    async fn ready(&self) -> Result<(), QueueError> {
        self.with_consumer(|conn| conn.query_row("SELECT 1", [], |_| Ok(())))
            .await
    }

    async fn close(&self) {
        EmbeddedQueue::close(self).await;
    }
}

/// A subscription on one topic of the file.
#[derive(Debug, Clone)]
pub struct EmbeddedSubscription {
    queue: EmbeddedQueue,
    topic: &'static str,
    dead_letter_topic: Option<&'static str>,
}

type LeasedRow = (i64, Vec<u8>, String, u32);

/// A leased row as stored: its body inline, or where it is in a segment.
struct StoredRow {
    id: i64,
    inline: Vec<u8>,
    attributes: String,
    attempts: u32,
    at: Option<BodyRef>,
}

impl StoredRow {
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        let segment: Option<String> = r.get(4)?;
        Ok(Self {
            id: r.get(0)?,
            inline: r.get(1)?,
            attributes: r.get(2)?,
            attempts: r.get(3)?,
            at: match segment {
                Some(segment) => Some(BodyRef {
                    segment: segment.into(),
                    offset: r.get(5)?,
                    len: r.get(6)?,
                }),
                None => None,
            },
        })
    }
}

/// A message whose body is gone (its segment deleted or cut short) is not delivered: on the
/// main topic it moves to the dead-letter topic with the error, where operators see it; on
/// the dead-letter topic it stays leased until its deadline, and is tried again then.
fn unreadable(
    tx: &Connection,
    row: &StoredRow,
    lease: i64,
    error: &std::io::Error,
    dead_letter_topic: Option<&'static str>,
) -> rusqlite::Result<()> {
    tracing::error!(
        message_id = row.id,
        segment = row.at.as_ref().map(|at| &*at.segment),
        error = %error,
        "message body unreadable"
    );
    let Some(dlq) = dead_letter_topic else {
        return Ok(());
    };
    let reason = DeadLetter {
        sink: "queue".into(),
        reason: format!("body unreadable: {error}"),
        attempts: row.attempts,
    };
    move_to_dead_letter(tx, row.id, lease, row.attributes.clone(), &reason, dlq)
}

/// Moves leased message `id` to topic `dlq`, its `attributes` annotated with `reason`.
fn move_to_dead_letter(
    tx: &Connection,
    id: i64,
    lease: i64,
    attributes: String,
    reason: &DeadLetter,
    dlq: &'static str,
) -> rusqlite::Result<()> {
    let mut map: BTreeMap<String, String> = serde_json::from_str(&attributes).unwrap_or_default();
    reason.annotate(&mut map);
    let attributes = serde_json::to_string(&map).unwrap_or(attributes);
    tx.execute(
        "UPDATE messages SET topic = ?3, attributes = ?4, attempts = 0,
           visible_at = ?5, lease = NULL WHERE id = ?1 AND lease = ?2",
        params![id, lease, dlq, attributes, now_ms()],
    )?;
    Ok(())
}

impl EmbeddedSubscription {
    fn lease(
        &self,
        max: usize,
        max_bytes: usize,
    ) -> impl FnOnce(&Connection) -> rusqlite::Result<(i64, Vec<LeasedRow>)> + Send + 'static {
        let topic = self.topic;
        let dead_letter_topic = self.dead_letter_topic;
        let settings = Arc::clone(&self.queue.settings);
        let bodies = Arc::clone(&self.queue.bodies);
        move |tx| {
            let now = now_ms();
            if let Some(dlq) = dead_letter_topic {
                // A message whose last lease expired after its final attempt moves on, as
                // Pub/Sub forwards it to the dead-letter topic.
                let reason = "max_delivery_attempts";
                tx.execute(
                    "UPDATE messages SET topic = ?1, visible_at = ?2, lease = NULL,
                       attributes = json_set(attributes,
                         '$.dead_letter_sink', 'queue',
                         '$.dead_letter_reason', ?5,
                         '$.dead_letter_attempts', CAST(attempts AS TEXT),
                         '$.dead_letter_at', strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
                       attempts = 0
                     WHERE id IN (SELECT id FROM messages INDEXED BY messages_exhausted
                                  WHERE topic = ?3 AND attempts >= ?4 AND visible_at <= ?2)",
                    params![dlq, now, topic, settings.max_delivery_attempts, reason],
                )?;
            }
            let max = if max_bytes == usize::MAX {
                max
            } else {
                let sizes = tx
                    .prepare_cached(READY_SIZES)?
                    .query_map(params![0, 0, topic, now, max as i64], |r| {
                        r.get::<_, i64>(0)
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                within_budget(&sizes, max_bytes)
            };
            let lease: i64 = rand::random::<i64>().abs().max(1);
            let deadline =
                now + i64::try_from(settings.ack_deadline_secs * 1000).unwrap_or(i64::MAX);
            let rows = {
                let mut stmt = tx.prepare_cached(&format!(
                    "UPDATE messages SET attempts = attempts + 1, visible_at = ?1, lease = ?2
                     WHERE id IN ({NEXT_READY})
                     RETURNING id, body, attributes, attempts, segment, body_at, body_len"
                ))?;
                stmt.query_map(
                    params![deadline, lease, topic, now, max as i64],
                    StoredRow::from_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?
            };
            let mut reader = BodyReader::new(&bodies);
            let mut leased = Vec::with_capacity(rows.len());
            for row in rows {
                match row.at.as_ref().map(|at| reader.read(at)) {
                    None => leased.push((row.id, row.inline, row.attributes, row.attempts)),
                    Some(Ok(body)) => leased.push((row.id, body, row.attributes, row.attempts)),
                    Some(Err(e)) if bodies::is_gone(&e) => {
                        unreadable(tx, &row, lease, &e, dead_letter_topic)?;
                    }
                    // Anything else (no file descriptors left, an I/O error that may pass):
                    // this message stays leased, the attempt counted, and comes back at its
                    // deadline like any message not acked; after its last attempt it moves
                    // to the dead-letter topic. Failing the whole pull instead would hold
                    // back every message behind it for as long as the error lasts, without
                    // ever counting an attempt.
                    Some(Err(e)) => tracing::warn!(
                        message_id = row.id,
                        segment = row.at.as_ref().map(|at| &*at.segment),
                        attempt = row.attempts,
                        error = %e,
                        "message body not read; tried again at its deadline"
                    ),
                }
            }
            Ok((lease, leased))
        }
    }
}

/// How many of the messages, taken in order, fit in `max_bytes`: at least one.
fn within_budget(sizes: &[i64], max_bytes: usize) -> usize {
    let mut total = 0usize;
    let fit = sizes
        .iter()
        .take_while(|&&size| {
            total = total.saturating_add(usize::try_from(size).unwrap_or(0));
            total <= max_bytes
        })
        .count();
    fit.max(1)
}

#[async_trait]
impl Subscriber for EmbeddedSubscription {
    async fn pull(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        self.pull_within(max, usize::MAX, wait).await
    }

    async fn close(&self) {
        self.queue.close().await;
    }

    async fn pull_within(
        &self,
        max: usize,
        max_bytes: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let give_up = tokio::time::Instant::now() + wait;
        loop {
            let (lease, rows) = self.lease_for_caller(max, max_bytes).await?;
            if !rows.is_empty() {
                let mut out = Vec::with_capacity(rows.len());
                for (id, body, attributes, attempts) in rows {
                    // Attributes were written by us as a JSON object of strings; anything
                    // else is kept visible as a decode failure for the worker to dead-letter.
                    let attributes: BTreeMap<String, String> =
                        serde_json::from_str(&attributes).unwrap_or_default();
                    out.push(Delivery {
                        message_id: id.to_string(),
                        body: Bytes::from(body),
                        attributes,
                        attempt: attempts,
                        acker: Box::new(EmbeddedAcker {
                            queue: self.queue.clone(),
                            id,
                            lease,
                            attempt: attempts,
                            dead_letter_topic: self.dead_letter_topic,
                        }),
                    });
                }
                return Ok(out);
            }
            if tokio::time::Instant::now() >= give_up {
                return Ok(Vec::new());
            }
            tokio::time::sleep(self.queue.poll_interval).await;
        }
    }
}

impl EmbeddedSubscription {
    /// Leases as [`EmbeddedSubscription::lease`] does, for a caller that may stop waiting
    /// (a worker shutting down drops its pull). The lease commits on the writer thread
    /// regardless; if the caller is gone by then, the rows are handed back at once with
    /// their attempt uncounted, rather than staying leased until their deadline with an
    /// attempt spent (the last one dead-lettering a message that never ran).
    async fn lease_for_caller(
        &self,
        max: usize,
        max_bytes: usize,
    ) -> Result<(i64, Vec<LeasedRow>), QueueError> {
        let queue = self.queue.clone();
        let job = self.lease(max, max_bytes);
        let (answer, answered) = oneshot::channel();
        tokio::spawn(async move {
            let leased = queue.with_consumer(job).await;
            let Err(Ok((lease, rows))) = answer.send(leased) else {
                return;
            };
            if rows.is_empty() {
                return;
            }
            let ids: Vec<i64> = rows.iter().map(|row| row.0).collect();
            let handed_back = queue
                .with_consumer(move |conn| {
                    let mut stmt = conn.prepare_cached(
                        "UPDATE messages SET lease = NULL, visible_at = ?3,
                           attempts = max(attempts - 1, 0) WHERE id = ?1 AND lease = ?2",
                    )?;
                    for id in ids {
                        stmt.execute(params![id, lease, now_ms()])?;
                    }
                    Ok(())
                })
                .await;
            if let Err(e) = handed_back {
                tracing::warn!(
                    error = %e,
                    "messages leased for a pull nobody waits for any more were not handed \
                     back; they return at their deadline"
                );
            }
        });
        answered.await.map_err(|_| QueueError::Closed)?
    }
}

/// Settles one leased row, provided the lease is still ours.
#[derive(Debug)]
struct EmbeddedAcker {
    queue: EmbeddedQueue,
    id: i64,
    lease: i64,
    attempt: u32,
    dead_letter_topic: Option<&'static str>,
}

impl EmbeddedAcker {
    /// Runs `sql` on this message's row if it still holds the lease; how many rows changed.
    async fn on_leased_row(
        &self,
        sql: &'static str,
        extra: Option<i64>,
    ) -> Result<usize, QueueError> {
        let (id, lease) = (self.id, self.lease);
        self.queue
            .with_consumer(move |conn| match extra {
                Some(v) => conn.prepare_cached(sql)?.execute(params![id, lease, v]),
                None => conn.prepare_cached(sql)?.execute(params![id, lease]),
            })
            .await
    }

    async fn settle(&self, sql: &'static str, extra: Option<i64>) -> Result<(), QueueError> {
        let id = self.id;
        if self.on_leased_row(sql, extra).await? == 0 {
            // The deadline passed and the message was leased again (or dead-lettered). The
            // other holder will settle it; our effects were idempotent.
            tracing::warn!(
                message_id = id,
                "lease expired before settling; message left to its new holder"
            );
        }
        Ok(())
    }
}

#[async_trait]
impl Acker for EmbeddedAcker {
    async fn ack(self: Box<Self>) -> Result<(), QueueError> {
        self.settle("DELETE FROM messages WHERE id = ?1 AND lease = ?2", None)
            .await
    }

    async fn nack(self: Box<Self>) -> Result<(), QueueError> {
        self.nack_after(Duration::ZERO).await
    }

    async fn nack_after(self: Box<Self>, wait: Duration) -> Result<(), QueueError> {
        let s = &self.queue.settings;
        let delay = redelivery_backoff(
            self.attempt,
            Duration::from_millis(s.min_backoff_ms),
            Duration::from_millis(s.max_backoff_ms),
        )
        .max(wait);
        let visible_at = now_ms() + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        self.settle(
            "UPDATE messages SET visible_at = ?3, lease = NULL WHERE id = ?1 AND lease = ?2",
            Some(visible_at),
        )
        .await
    }

    async fn dead_letter(self: Box<Self>, reason: DeadLetter) -> Result<(), QueueError> {
        let Some(dlq) = self.dead_letter_topic else {
            // Already on the dead-letter topic: leave it for the next operator run.
            return self.nack().await;
        };
        let (id, lease) = (self.id, self.lease);
        self.queue
            .with_consumer(move |tx| {
                let attributes: Option<String> = tx
                    .query_row(
                        "SELECT attributes FROM messages WHERE id = ?1 AND lease = ?2",
                        params![id, lease],
                        |r| r.get(0),
                    )
                    .optional()?;
                match attributes {
                    Some(attributes) => {
                        move_to_dead_letter(tx, id, lease, attributes, &reason, dlq)
                    }
                    None => Ok(()),
                }
            })
            .await
    }

    fn lease(&self) -> Option<Duration> {
        Some(Duration::from_secs(self.queue.settings.ack_deadline_secs))
    }

    async fn extend(&self, by: Duration) -> Result<(), QueueError> {
        let visible_at = now_ms() + i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        let extended = self
            .on_leased_row(
                "UPDATE messages SET visible_at = ?3 WHERE id = ?1 AND lease = ?2",
                Some(visible_at),
            )
            .await?;
        if extended == 0 {
            return Err(QueueError::LeaseLost);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
