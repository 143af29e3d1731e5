//! One writer thread per SQLite file that commits every write waiting for it in one
//! transaction (group commit).
//!
//! Why: a commit costs far more than the statements in it: an fsync with `synchronous=FULL`,
//! a WAL frame and lock round trips with `NORMAL`, and in both cases a hand-off to a
//! blocking thread. The worker writes the same few files (queue, ledger, warehouse) from many
//! messages at once, so while one commit runs the next writes pile up, and the next commit
//! takes them all. Under load many writes share a commit; an idle caller pays for exactly one.
//!
//! Each job runs inside its own savepoint: a job that fails is undone alone and gets its own
//! error, the other jobs of the batch still commit. A job's result is handed back only once
//! its transaction committed, so a caller that sees `Ok` can rely on the write (as durable as
//! the connection's `synchronous` setting makes it), and a commit that fails fails every job
//! of the batch.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use rusqlite::Connection;
use tokio::sync::oneshot;

/// Why a job did not commit.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// More jobs are waiting than the writer's backlog holds: refuse rather than queue
    /// without bound in memory.
    #[error("too many writes are waiting for {0}")]
    Backlog(&'static str),
    /// The writer thread is gone (the handle is being dropped, or the thread panicked).
    #[error("the writer of {0} has stopped")]
    Stopped(&'static str),
    /// SQLite refused the job's statements or the batch's commit.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// The writer thread could not be started.
    #[error("cannot start the writer thread {0}")]
    Spawn(&'static str, #[source] std::io::Error),
}

/// What the writer thread calls once the batch's fate is known: `None` when it committed.
type Finish = Box<dyn FnOnce(Option<&rusqlite::Error>) + Send>;
/// A job as the writer thread sees it: run the statements (or learn that the transaction
/// could not begin), return how to answer.
type Job = Box<dyn FnOnce(Result<&Connection, &rusqlite::Error>) -> Finish + Send>;

/// What a writer thread does around each batch besides its jobs (see the embedded queue: WAL
/// restarts before a batch, its bodies made durable before the commit).
pub trait Upkeep: Send + 'static {
    /// Runs before each batch, outside any transaction: upkeep that must not race with the
    /// writes.
    fn before_batch(&mut self, _conn: &Connection) {}

    /// Runs after the batch's jobs, before its commit: what the commit must not get ahead
    /// of. An error rolls the batch back and fails each of its jobs with it.
    ///
    /// # Errors
    /// Whatever the upkeep could not do.
    fn before_commit(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// No upkeep.
struct Nothing;
impl Upkeep for Nothing {}

/// A handle on the writer thread of one connection. Cheap to clone; the thread ends when the
/// last handle is dropped.
#[derive(Clone)]
pub struct GroupCommit {
    name: &'static str,
    jobs: SyncSender<Job>,
    commits: Arc<AtomicU64>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl GroupCommit {
    /// Starts the writer thread `name` on `conn`: at most `backlog` jobs wait, at most
    /// `max_batch` share a transaction.
    ///
    /// # Errors
    /// The thread cannot be spawned.
    pub fn start(
        name: &'static str,
        conn: Connection,
        backlog: usize,
        max_batch: usize,
    ) -> Result<Self, CommitError> {
        Self::start_with(name, conn, backlog, max_batch, Nothing)
    }

    /// [`GroupCommit::start`], with `upkeep` run on the writer thread around each batch.
    ///
    /// # Errors
    /// The thread cannot be spawned.
    pub fn start_with(
        name: &'static str,
        conn: Connection,
        backlog: usize,
        max_batch: usize,
        mut upkeep: impl Upkeep,
    ) -> Result<Self, CommitError> {
        let (jobs, rx) = sync_channel(backlog);
        let commits = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&commits);
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || writer_loop(&conn, &rx, max_batch.max(1), &counter, &mut upkeep))
            .map_err(|e| CommitError::Spawn(name, e))?;
        Ok(Self {
            name,
            jobs,
            commits,
        })
    }

    /// Runs `work` in the next transaction and returns its result once that transaction
    /// committed. `work` runs on the writer thread: keep it to SQL.
    ///
    /// # Errors
    /// The backlog is full, the writer stopped, `work` failed (its statements are undone),
    /// or the transaction did not commit.
    pub async fn run<T, F>(&self, work: F) -> Result<T, CommitError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = match conn {
                Ok(conn) => in_savepoint(conn, work),
                Err(e) => Err(clone_error(e)),
            };
            Box::new(move |commit_failed| {
                let result = match (result, commit_failed) {
                    (Ok(_), Some(e)) => Err(CommitError::Sqlite(clone_error(e))),
                    (result, _) => result.map_err(CommitError::Sqlite),
                };
                // The caller may have given up waiting; the write stands regardless.
                let _ = reply.send(result);
            })
        });
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(CommitError::Backlog(self.name)),
            Err(TrySendError::Disconnected(_)) => return Err(CommitError::Stopped(self.name)),
        }
        answer.await.map_err(|_| CommitError::Stopped(self.name))?
    }

    /// Transactions committed so far (batches, not jobs).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }
}

/// Runs `work` between a savepoint and its release, rolling back to it on failure.
fn in_savepoint<T>(
    conn: &Connection,
    work: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.execute_batch("SAVEPOINT job")?;
    match work(conn) {
        Ok(value) => conn.execute_batch("RELEASE job").map(|()| value),
        Err(e) => {
            // An error that ended the whole transaction (a full disk, an I/O error) leaves no
            // savepoint to roll back to; the batch notices and fails as a whole.
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
            }
            Err(e)
        }
    }
}

/// Takes what is waiting (at most `max_batch`), runs it in one transaction, answers, repeats
/// until every handle is dropped.
fn writer_loop(
    conn: &Connection,
    rx: &Receiver<Job>,
    max_batch: usize,
    commits: &AtomicU64,
    upkeep: &mut impl Upkeep,
) {
    while let Ok(first) = rx.recv() {
        upkeep.before_batch(conn);
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            // Nothing ran: every job answers with why the transaction could not begin.
            for job in batch {
                job(Err(&e))(None);
            }
            continue;
        }
        let mut finishers = Vec::with_capacity(batch.len());
        let mut ended = None;
        for job in batch {
            // A job's failure that rolled the whole transaction back (a full disk, an I/O
            // error) leaves the connection outside any transaction. The jobs after it must
            // not run there: each savepoint's release would commit on its own, past the
            // upkeep that comes before every commit.
            if ended.is_none() && conn.is_autocommit() {
                ended = Some(rolled_back());
            }
            finishers.push(match &ended {
                Some(e) => job(Err(e)),
                None => job(Ok(conn)),
            });
        }
        let outcome = if let Some(e) = ended.or_else(|| conn.is_autocommit().then(rolled_back)) {
            // Nothing of this batch stands.
            Err(e)
        } else {
            upkeep
                .before_commit()
                .map_err(|e| io_error("not committed", &e))
                .and_then(|()| conn.execute_batch("COMMIT"))
                .inspect_err(|_| {
                    let _ = conn.execute_batch("ROLLBACK");
                })
        };
        if outcome.is_ok() {
            commits.fetch_add(1, Ordering::Relaxed);
        }
        for finish in finishers {
            finish(outcome.as_ref().err());
        }
    }
}

/// Why every job of a batch whose transaction a failed job rolled back fails.
fn rolled_back() -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
        Some("the transaction was rolled back by a failed write".into()),
    )
}

/// An I/O failure on a writer thread (not SQLite's own), as the SQLite error its jobs fail
/// with: `what` happened, and why.
pub fn io_error(what: &str, e: &std::io::Error) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
        Some(format!("{what}: {e}")),
    )
}

/// A copy of a SQLite error for each job of a failed batch (`rusqlite::Error` is not `Clone`).
fn clone_error(e: &rusqlite::Error) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqliteFailure(code, msg) => {
            rusqlite::Error::SqliteFailure(*code, msg.clone())
        }
        other => rusqlite::Error::ToSqlConversionFailure(other.to_string().into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer() -> (tempfile::TempDir, GroupCommit) {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("t.sqlite3")).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL);",
        )
        .unwrap();
        (
            dir,
            GroupCommit::start("test-writer", conn, 64, 16).unwrap(),
        )
    }

    fn insert(k: &'static str) -> impl FnOnce(&Connection) -> rusqlite::Result<usize> + Send {
        move |c: &Connection| c.execute("INSERT INTO t (k, v) VALUES (?1, 1)", [k])
    }

    async fn keys(w: &GroupCommit) -> Vec<String> {
        w.run(|c| {
            c.prepare("SELECT k FROM t ORDER BY k")?
                .query_map([], |r| r.get(0))?
                .collect()
        })
        .await
        .unwrap()
    }

    /// Holds the writer inside a job until released, so the jobs sent meanwhile queue up
    /// and go into the next transaction together.
    fn hold(w: &GroupCommit) -> (tokio::task::JoinHandle<()>, std::sync::mpsc::Sender<()>) {
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let w = w.clone();
        let held = tokio::spawn(async move {
            w.run(move |_| {
                wait.recv().ok();
                Ok(())
            })
            .await
            .unwrap();
        });
        (held, release)
    }

    #[tokio::test]
    async fn waiting_jobs_share_one_commit_and_a_failed_job_is_undone_alone() {
        let (_dir, w) = writer();
        w.run(insert("taken")).await.unwrap();
        let before = w.commits();
        let (held, release) = hold(&w);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let jobs = [
            tokio::spawn({
                let w = w.clone();
                async move { w.run(insert("a")).await }
            }),
            tokio::spawn({
                let w = w.clone();
                // Two statements, the second refused: the first must be undone too.
                async move {
                    w.run(|c| {
                        c.execute("INSERT INTO t (k, v) VALUES ('half', 1)", [])?;
                        c.execute("INSERT INTO t (k, v) VALUES ('taken', 2)", [])
                    })
                    .await
                }
            }),
            tokio::spawn({
                let w = w.clone();
                async move { w.run(insert("b")).await }
            }),
        ];
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        release.send(()).unwrap();
        held.await.unwrap();
        let mut results = Vec::new();
        for job in jobs {
            results.push(job.await.unwrap());
        }
        assert_eq!(results[0].as_ref().unwrap(), &1);
        assert!(
            matches!(&results[1], Err(CommitError::Sqlite(e))
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation)),
            "{:?}",
            results[1]
        );
        assert_eq!(results[2].as_ref().unwrap(), &1);
        assert_eq!(
            w.commits() - before,
            2,
            "the held job, then the three together"
        );
        assert_eq!(keys(&w).await, ["a", "b", "taken"]);
    }

    #[tokio::test]
    async fn a_job_that_ends_the_transaction_fails_its_whole_batch() {
        let (_dir, w) = writer();
        let (held, release) = hold(&w);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let good = tokio::spawn({
            let w = w.clone();
            async move { w.run(insert("a")).await }
        });
        let rogue = tokio::spawn({
            let w = w.clone();
            async move { w.run(|c| c.execute_batch("ROLLBACK")).await }
        });
        // Queued after the rogue job, in the same batch: it must not run outside a
        // transaction, where its savepoint's release would commit it on its own, past the
        // upkeep that comes before every commit.
        let after = tokio::spawn({
            let w = w.clone();
            async move { w.run(insert("b")).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        release.send(()).unwrap();
        held.await.unwrap();
        // The good job's insert was rolled back with the rest: it must not report success.
        assert!(good.await.unwrap().is_err());
        assert!(rogue.await.unwrap().is_err());
        assert!(after.await.unwrap().is_err());
        assert!(keys(&w).await.is_empty());
        // The writer carries on.
        w.run(insert("c")).await.unwrap();
        assert_eq!(keys(&w).await, ["c"]);
    }

    /// Fails every commit while its flag is set, as a body segment that cannot be written.
    struct Refuse(Arc<std::sync::atomic::AtomicBool>);

    impl Upkeep for Refuse {
        fn before_commit(&mut self) -> std::io::Result<()> {
            if self.0.load(Ordering::Relaxed) {
                Err(std::io::Error::other("disk gone"))
            } else {
                Ok(())
            }
        }
    }

    #[tokio::test]
    async fn an_upkeep_failure_before_the_commit_fails_and_undoes_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("t.sqlite3")).unwrap();
        conn.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL);")
            .unwrap();
        let refuse = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let w =
            GroupCommit::start_with("refusing-writer", conn, 8, 8, Refuse(refuse.clone())).unwrap();
        let failed = w.run(insert("a")).await.unwrap_err();
        assert!(failed.to_string().contains("disk gone"), "{failed}");
        refuse.store(false, Ordering::Relaxed);
        w.run(insert("b")).await.unwrap();
        assert_eq!(keys(&w).await, ["b"]);
    }

    #[tokio::test]
    async fn a_full_backlog_is_refused_and_a_stopped_writer_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("t.sqlite3")).unwrap();
        let w = GroupCommit::start("tiny-writer", conn, 1, 1).unwrap();
        let (held, release) = hold(&w);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let waiting = tokio::spawn({
            let w = w.clone();
            async move { w.run(|_| Ok(())).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(matches!(
            w.run(|_| Ok(())).await,
            Err(CommitError::Backlog("tiny-writer"))
        ));
        release.send(()).unwrap();
        held.await.unwrap();
        waiting.await.unwrap().unwrap();
        // A job that panics takes the thread down; later callers learn it stopped.
        let _ = w.run(|_| -> rusqlite::Result<()> { panic!("boom") }).await;
        assert!(matches!(
            w.run(|_| Ok(())).await,
            Err(CommitError::Stopped("tiny-writer"))
        ));
    }
}
