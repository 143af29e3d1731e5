//! The embedded archive: objects are files under a root folder.
//!
//! A write is create-only and atomic: the body goes to a temporary file in the same folder,
//! is fsync'd, then hard-linked to its final name. `link` fails if the name exists, which is
//! exactly "already archived" — a crash can leave a stray temporary file, never a torn or
//! overwritten object. Every I/O error is transient: a full disk or a folder made unwritable
//! recovers, and the queue's dead-letter policy bounds the retries.
//!
//! The new name is durable once its folder is fsync'd. Writers in the same folder share
//! that fsync ([`FolderSyncs`]): a name linked before an fsync started is covered by it, so
//! under load one folder fsync serves every object linked while the previous one ran.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use hookline_shared::envelope::Envelope;
use hookline_shared::sink::{Archive, Outcome, SinkError};

#[derive(Debug, Clone)]
pub struct LocalArchive {
    root: PathBuf,
    folders: Arc<FolderSyncs>,
}

impl LocalArchive {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            folders: Arc::default(),
        }
    }

    fn path(&self, object: &str) -> PathBuf {
        self.root.join(object)
    }
}

/// Folder fsyncs shared by the writers of one archive.
#[derive(Debug, Default)]
struct FolderSyncs {
    folders: Mutex<HashMap<PathBuf, FolderSync>>,
    finished: Condvar,
}

#[derive(Debug, Default)]
struct FolderSync {
    /// Requests so far; a request's ticket is the count including it.
    requested: u64,
    /// Every ticket up to this one is durable.
    synced: u64,
    /// An fsync is under way (covering the tickets issued before it started).
    running: bool,
}

impl FolderSyncs {
    /// Returns once everything linked into `folder` before this call is durable: by an fsync
    /// that started after the call (another writer's, waited for) or by its own. `fsync`
    /// does the work; a failed one is reported to its caller and the next waiter tries again.
    fn sync(
        &self,
        folder: &Path,
        fsync: impl Fn(&Path) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let mut folders = self.folders.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = folders.entry(folder.to_path_buf()).or_default();
        entry.requested += 1;
        let ticket = entry.requested;
        loop {
            let entry = folders.get_mut(folder).expect("entries are never removed");
            if entry.synced >= ticket {
                return Ok(());
            }
            if !entry.running {
                entry.running = true;
                let covers = entry.requested;
                drop(folders);
                let result = fsync(folder);
                let mut folders = self.folders.lock().unwrap_or_else(PoisonError::into_inner);
                let entry = folders.get_mut(folder).expect("entries are never removed");
                entry.running = false;
                if result.is_ok() {
                    entry.synced = entry.synced.max(covers);
                }
                self.finished.notify_all();
                return result;
            }
            folders = self
                .finished
                .wait(folders)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

fn fsync_folder(folder: &Path) -> std::io::Result<()> {
    std::fs::File::open(folder)?.sync_all()
}

fn write_create_only(path: &Path, body: &[u8], folders: &FolderSyncs) -> std::io::Result<Outcome> {
    let dir = path.parent().expect("object paths have a folder");
    std::fs::create_dir_all(dir)?;
    if path.exists() {
        // An earlier attempt may have died between its link and its folder fsync.
        folders.sync(dir, fsync_folder)?;
        return Ok(Outcome::AlreadyDone);
    }
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    tmp.write_all(body)?;
    tmp.as_file().sync_all()?;
    let outcome = match std::fs::hard_link(tmp.path(), path) {
        Ok(()) => Outcome::Written,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Outcome::AlreadyDone,
        Err(e) => return Err(e),
    };
    drop(tmp); // removes the temporary name; the object keeps the data
    folders.sync(dir, fsync_folder)?;
    Ok(outcome)
}

#[async_trait]
impl Archive for LocalArchive {
    async fn put(&self, object: &str, envelope: &Envelope) -> Result<Outcome, SinkError> {
        let path = self.path(object);
        let body = envelope.body.clone();
        let folders = Arc::clone(&self.folders);
        tokio::task::spawn_blocking(move || write_create_only(&path, &body, &folders))
            .await
            .map_err(|e| SinkError::transient("archive task failed", e))?
            .map_err(|e| SinkError::transient(format!("archive write failed ({})", e.kind()), e))
    }

    async fn get(&self, object: &str) -> Result<Bytes, SinkError> {
        match tokio::fs::read(self.path(object)).await {
            Ok(data) => Ok(Bytes::from(data)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(SinkError::permanent(
                format!("archive object {object} does not exist"),
                Some(e.into()),
            )),
            Err(e) => Err(SinkError::transient("archive read failed", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(body: &'static [u8]) -> Envelope {
        let mut e = crate::pipeline::tests::envelope("d1", "issues");
        e.body = Bytes::from_static(body);
        e
    }

    #[tokio::test]
    async fn writes_once_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let archive = LocalArchive::new(dir.path());
        let obj = "gh/2026-11-22/2026-11-22--10-00-00_d1";
        assert_eq!(
            archive.put(obj, &envelope(b"first")).await.unwrap(),
            Outcome::Written
        );
        assert_eq!(
            archive.put(obj, &envelope(b"second")).await.unwrap(),
            Outcome::AlreadyDone
        );
        assert_eq!(&archive.get(obj).await.unwrap()[..], b"first");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("gh/2026-11-22"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "no temporary files left: {leftovers:?}");
        assert!(!archive.get("gh/missing").await.unwrap_err().is_transient());
    }

    /// Three writers in one folder, the fsync answering `answers` in turn: the first writer
    /// fsyncs alone, the two that ask while it runs wait for the next fsync. Returns the
    /// first's result, the two others', and how many fsyncs ran.
    fn three_writers(
        answers: Vec<std::io::Result<()>>,
    ) -> (std::io::Result<()>, [std::io::Result<()>; 2], usize) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::time::Duration;

        let syncs = Arc::new(FolderSyncs::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let (release, gate) = std::sync::mpsc::channel::<std::io::Result<()>>();
        let gate = Arc::new(Mutex::new(gate));
        let folder = Path::new("gh/2026-11-23");
        let writer = || {
            let (syncs, calls, gate) = (Arc::clone(&syncs), Arc::clone(&calls), Arc::clone(&gate));
            std::thread::spawn(move || {
                syncs.sync(folder, |_| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    gate.lock().unwrap().recv().unwrap()
                })
            })
        };
        let requested = |n: u64| {
            while syncs
                .folders
                .lock()
                .unwrap()
                .get(folder)
                .map(|f| f.requested)
                != Some(n)
            {
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        let first = writer();
        requested(1);
        while calls.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        // The first fsync is running (held at the gate) when the two others ask.
        let (second, third) = (writer(), writer());
        requested(3);
        for answer in answers {
            release.send(answer).unwrap();
        }
        let first = first.join().unwrap();
        let others = [second.join().unwrap(), third.join().unwrap()];
        (first, others, calls.load(Ordering::SeqCst))
    }

    #[test]
    fn writers_that_ask_during_an_fsync_share_the_next_one() {
        let (first, others, calls) = three_writers(vec![Ok(()), Ok(()), Ok(())]);
        assert!(first.is_ok() && others.iter().all(Result::is_ok));
        assert_eq!(
            calls, 2,
            "one fsync for the first writer, one shared by the others"
        );
    }

    #[test]
    fn a_failed_fsync_goes_to_its_caller_and_the_next_waiter_tries_again() {
        let gone = || Err(std::io::Error::other("disk gone"));
        let (first, others, calls) = three_writers(vec![gone(), gone(), Ok(())]);
        assert!(first.is_err());
        assert_eq!(others.iter().filter(|r| r.is_err()).count(), 1);
        assert_eq!(calls, 3);
    }
}
