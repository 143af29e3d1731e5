//! Message bodies in append-only segment files beside the queue file; the queue's row keeps
//! where its body is (segment, offset, length).
//!
//! Why: in a SQLite row an 8 KB body is written twice, into the WAL (checksummed frame by
//! frame) and again into the database when the WAL is checkpointed, and that was half of
//! what a publish cost: the ingest benchmark with empty bodies in the rows ran at about twice
//! the requests/s (BENCHMARKS.md, 2026-11-24). Here a body is written once.
//!
//! Durability: a publisher writes a batch's bodies and `fdatasync`s the segment before the
//! transaction that commits their rows ([`BodyWriter::sync`]), so a committed row never
//! points at bytes that are not on disk. Bodies whose rows did not commit stay in the segment
//! as unreferenced bytes until it is deleted.
//!
//! Segments are never shared: each publisher (a process's queue handle) appends to a segment
//! of its own and holds an exclusive `flock` on it while it may still add rows that point
//! into it. A segment nobody holds and no row points into is garbage: [`collect`] deletes it
//! (holding the lock itself, so two processes collecting do not race). A publisher lets go
//! of a full segment only at its next append, after the rows pointing into it committed.
//! One message left in the queue (a dead letter nobody replays) keeps its whole segment.

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, params};

use crate::folders;

/// Suffix of a segment in use or done with; only these are ever collected.
const SEGMENT: &str = "seg";
/// Suffix of a segment being created (before it is locked and renamed).
const CREATING: &str = "new";
/// A `.new` file older than this and not locked was left by a publisher that died while
/// creating it.
const ABANDONED_AFTER: Duration = Duration::from_secs(60);

/// The folder holding a queue file's segments: `<queue file>-bodies`.
pub(super) fn folder(queue_file: &Path) -> PathBuf {
    super::beside(queue_file, "-bodies")
}

/// Creates the segments' folder, durably (its entry in the parent folder too).
///
/// # Errors
/// The folder cannot be created or synced.
pub(super) fn create_folder(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    folders::sync(folders::parent_of(dir))
}

/// Whether a read error means the body is not there (its segment deleted or shorter than
/// the row says), rather than a failure that may pass.
pub(super) fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
    )
}

/// Where one body is (as SQLite stores it: signed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BodyRef {
    pub segment: Arc<str>,
    pub offset: i64,
    pub len: i64,
}

/// One publisher's appends. Lives behind the queue's publisher writer thread: jobs append,
/// the batch syncs before its commit.
#[derive(Debug)]
pub(super) struct BodyWriter {
    dir: PathBuf,
    segment_bytes: i64,
    active: Option<Active>,
    /// Bodies appended since the last sync, written with one `write` at the sync.
    pending: Vec<u8>,
    /// The active segment reached `segment_bytes` at the last sync: let go of it (and its
    /// lock) at the next append, once the rows pointing into it have committed.
    full: bool,
    /// Tests only: the next sync fails after its write, as an `fdatasync` that reports a
    /// writeback error (no real one can be provoked on demand).
    #[cfg(test)]
    fail_next_sync: bool,
}

#[derive(Debug)]
struct Active {
    name: Arc<str>,
    /// Holds the segment's `flock` for as long as it is open.
    file: File,
    /// Bytes in the segment, pending ones included.
    len: i64,
}

impl BodyWriter {
    /// Segments go to `dir` (created if missing) and are let go of from `segment_bytes`.
    pub fn new(dir: PathBuf, segment_bytes: u64) -> Self {
        Self {
            dir,
            segment_bytes: i64::try_from(segment_bytes).unwrap_or(i64::MAX).max(1),
            active: None,
            pending: Vec::new(),
            full: false,
            #[cfg(test)]
            fail_next_sync: false,
        }
    }

    /// Tests only: see [`BodyWriter::fail_next_sync`].
    #[cfg(test)]
    pub fn fail_next_sync(&mut self) {
        self.fail_next_sync = true;
    }

    /// Adds `body` to the pending bytes of the active segment (starting one if needed).
    ///
    /// # Errors
    /// A new segment cannot be created.
    pub fn append(&mut self, body: &[u8]) -> io::Result<BodyRef> {
        if std::mem::take(&mut self.full) {
            self.active = None;
        }
        let active = match &mut self.active {
            Some(active) => active,
            None => self.active.insert(start_segment(&self.dir)?),
        };
        let at = BodyRef {
            segment: Arc::clone(&active.name),
            offset: active.len,
            len: i64::try_from(body.len()).map_err(io::Error::other)?,
        };
        self.pending.extend_from_slice(body);
        active.len += at.len;
        Ok(at)
    }

    /// Writes the pending bodies and makes them durable. Called before the commit of the
    /// rows that point at them. On failure the segment is given up (what it holds is no
    /// longer known): the failed batch's rows roll back and the next append starts another.
    ///
    /// # Errors
    /// The write or the `fdatasync` failed.
    pub fn sync(&mut self) -> io::Result<()> {
        let Some(active) = &mut self.active else {
            return Ok(());
        };
        if self.pending.is_empty() {
            return Ok(());
        }
        let written = active.file.write_all(&self.pending).and_then(|()| {
            #[cfg(test)]
            if std::mem::take(&mut self.fail_next_sync) {
                return Err(io::Error::other("injected fdatasync failure"));
            }
            active.file.sync_data()
        });
        self.pending.clear();
        match written {
            Ok(()) => {
                self.full = active.len >= self.segment_bytes;
                Ok(())
            }
            Err(e) => {
                self.active = None;
                Err(e)
            }
        }
    }
}

/// Creates a segment, locked before it gets the name collectors look at.
fn start_segment(dir: &Path) -> io::Result<Active> {
    create_folder(dir)?;
    let micros = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros();
    let name = format!(
        "{micros:020}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    let creating = dir.join(format!("{name}.{CREATING}"));
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create_new(true)
        .open(&creating)?;
    file.lock()?;
    std::fs::rename(&creating, dir.join(format!("{name}.{SEGMENT}")))?;
    // The new name must survive a crash before any row points at it.
    File::open(dir)?.sync_all()?;
    Ok(Active {
        name: name.into(),
        file,
        len: 0,
    })
}

/// Reads bodies, keeping each segment open for the length of one pull.
#[derive(Debug)]
pub(super) struct BodyReader<'a> {
    dir: &'a Path,
    open: HashMap<Arc<str>, File>,
}

impl<'a> BodyReader<'a> {
    pub fn new(dir: &'a Path) -> Self {
        Self {
            dir,
            open: HashMap::new(),
        }
    }

    /// The body at `at`.
    ///
    /// # Errors
    /// The segment is missing or shorter than the row says.
    pub fn read(&mut self, at: &BodyRef) -> io::Result<Vec<u8>> {
        let file = match self.open.get(&at.segment) {
            Some(file) => file,
            None => {
                let file = File::open(self.dir.join(format!("{}.{SEGMENT}", at.segment)))?;
                self.open.entry(Arc::clone(&at.segment)).or_insert(file)
            }
        };
        let size = file.metadata()?.len();
        let (Ok(offset), Ok(len)) = (u64::try_from(at.offset), usize::try_from(at.len)) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("no body at offset {} length {}", at.offset, at.len),
            ));
        };
        // Checked before allocating: a damaged length must not ask for gigabytes.
        if offset.saturating_add(at.len.unsigned_abs()) > size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the body at offset {offset} length {len} ends past the segment ({size} bytes)"
                ),
            ));
        }
        let mut body = vec![0; len];
        file.read_exact_at(&mut body, offset)?;
        Ok(body)
    }
}

/// Deletes the segments in `dir` that no publisher holds and no row of `messages` points
/// into, and `.new` files abandoned while being created. Returns how many files it deleted.
/// An entry it cannot check is logged and skipped, so one bad entry does not stop the rest.
///
/// Before deleting, it syncs the queue's WAL (`wal`): the acks that made a segment garbage
/// were committed without an fsync, and a power failure must not keep the deletion but undo
/// the acks (the messages would come back with their bodies gone).
///
/// # Errors
/// The folder cannot be listed or the WAL cannot be synced.
pub(super) fn collect(conn: &Connection, dir: &Path, wal: &Path) -> Result<usize, CollectError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    // Held (locked) until deleted.
    let mut garbage = Vec::new();
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        match is_garbage(conn, &entry) {
            Ok(Some(file)) => garbage.push((path, file)),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "body segment not checked")
            }
        }
    }
    if garbage.is_empty() {
        return Ok(0);
    }
    match File::open(wal) {
        Ok(wal) => wal.sync_data()?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let mut deleted = 0;
    for (path, file) in garbage {
        match std::fs::remove_file(&path) {
            Ok(()) => deleted += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "body segment not deleted")
            }
        }
        drop(file);
    }
    Ok(deleted)
}

/// The entry, opened and locked, when it is a segment no publisher holds and no row points
/// into, or a `.new` file abandoned.
fn is_garbage(conn: &Connection, entry: &std::fs::DirEntry) -> Result<Option<File>, CollectError> {
    let path = entry.path();
    let (Some(stem), Some(suffix)) = (
        path.file_stem().and_then(|s| s.to_str()),
        path.extension().and_then(|s| s.to_str()),
    ) else {
        return Ok(None);
    };
    // Only plain files of ours are opened (a FIFO would block the open).
    if ![SEGMENT, CREATING].contains(&suffix) || !entry.file_type()?.is_file() {
        return Ok(None);
    }
    let Some(file) = open_unheld(&path)? else {
        return Ok(None);
    };
    let garbage = if suffix == SEGMENT {
        !conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM messages WHERE segment = ?1)")?
            .query_row(params![stem], |r| r.get::<_, bool>(0))?
    } else {
        file.metadata()?
            .modified()?
            .elapsed()
            .is_ok_and(|age| age >= ABANDONED_AFTER)
    };
    Ok(garbage.then_some(file))
}

/// `path` opened and locked, or `None` when a publisher holds it or it is already gone.
fn open_unheld(path: &Path) -> io::Result<Option<File>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// Why a collection pass stopped.
#[derive(Debug, thiserror::Error)]
pub(super) enum CollectError {
    #[error("cannot list or delete body segments: {0}")]
    Io(#[from] io::Error),
    #[error("cannot read which segments are in use: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue_file(dir: &Path) -> Connection {
        let conn = Connection::open(dir.join("q.sqlite3")).unwrap();
        super::super::create_schema(&conn).unwrap();
        conn
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_full_segment_is_let_go_at_the_next_append_and_collected_once_no_row_points_into_it() {
        let dir = tempfile::tempdir().unwrap();
        let bodies = dir.path().join("q.sqlite3-bodies");
        let conn = queue_file(dir.path());
        let mut writer = BodyWriter::new(bodies.clone(), 10);
        let a = writer.append(b"hello").unwrap();
        let b = writer.append(b"world!").unwrap();
        assert_eq!((a.offset, a.len, b.offset, b.len), (0, 5, 5, 6));
        assert_eq!(a.segment, b.segment);
        writer.sync().unwrap();
        let mut reader = BodyReader::new(&bodies);
        assert_eq!(reader.read(&a).unwrap(), b"hello");
        assert_eq!(reader.read(&b).unwrap(), b"world!");

        // Full, but still held: the rows pointing into it may not have committed yet.
        assert_eq!(
            collect(&conn, &bodies, &dir.path().join("q.sqlite3-wal")).unwrap(),
            0
        );
        let c = writer.append(b"next").unwrap();
        assert_ne!(c.segment, a.segment);
        assert_eq!(c.offset, 0);

        // Let go of, but a row still points into it.
        conn.execute(
            "INSERT INTO messages (topic, body, attributes, published_at, visible_at, segment,
               body_at, body_len) VALUES ('t', X'', '{}', 0, 0, ?1, 0, 5)",
            [&*a.segment],
        )
        .unwrap();
        assert_eq!(
            collect(&conn, &bodies, &dir.path().join("q.sqlite3-wal")).unwrap(),
            0
        );

        conn.execute("DELETE FROM messages", []).unwrap();
        assert_eq!(
            collect(&conn, &bodies, &dir.path().join("q.sqlite3-wal")).unwrap(),
            1
        );
        // The segment being appended to stays, though no row points into it yet.
        assert_eq!(names(&bodies), [format!("{}.{SEGMENT}", c.segment)]);
        let gone = BodyReader::new(&bodies).read(&a).unwrap_err();
        assert_eq!(gone.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn a_body_the_segment_does_not_hold_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let bodies = dir.path().join("q.sqlite3-bodies");
        let mut writer = BodyWriter::new(bodies.clone(), 1024);
        let at = writer.append(b"short").unwrap();
        writer.sync().unwrap();
        let mut reader = BodyReader::new(&bodies);
        let past_the_end = BodyRef {
            len: 6,
            ..at.clone()
        };
        assert_eq!(
            reader.read(&past_the_end).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        let damaged = BodyRef {
            len: i64::MAX,
            ..at.clone()
        };
        assert_eq!(
            reader.read(&damaged).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        let negative = BodyRef { offset: -1, ..at };
        assert_eq!(
            reader.read(&negative).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn a_segment_abandoned_while_being_created_is_collected_after_a_minute() {
        let dir = tempfile::tempdir().unwrap();
        let conn = queue_file(dir.path());
        let bodies = dir.path().join("q.sqlite3-bodies");
        std::fs::create_dir_all(&bodies).unwrap();
        let old = File::create(bodies.join(format!("old.{CREATING}"))).unwrap();
        old.set_modified(SystemTime::now() - ABANDONED_AFTER * 2)
            .unwrap();
        File::create(bodies.join(format!("fresh.{CREATING}"))).unwrap();
        File::create(bodies.join("notes.txt")).unwrap();
        // Not a file: skipped, and the rest still collected.
        std::fs::create_dir(bodies.join(format!("odd.{SEGMENT}"))).unwrap();
        assert_eq!(
            collect(&conn, &bodies, &dir.path().join("q.sqlite3-wal")).unwrap(),
            1
        );
        assert_eq!(
            names(&bodies),
            [
                format!("fresh.{CREATING}"),
                "notes.txt".to_owned(),
                format!("odd.{SEGMENT}")
            ]
        );
    }
}
