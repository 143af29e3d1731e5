//! The embedded archive: objects are files under a root folder.
//!
//! A write is create-only and atomic: the body goes to a temporary file in the object's
//! folder, which is made durable, then hard-linked to its final name, which is made durable
//! before the write is answered. `link` fails if the name exists, which is exactly "already
//! archived" — a crash (or a temporary name that cannot be removed) can leave a stray
//! temporary file, never a torn or overwritten object.
//! Every I/O error is transient: a full disk or a folder made unwritable recovers, and the
//! queue's dead-letter policy bounds the retries.
//!
//! Writes are grouped, as the SQLite files' writes are ([`hookline_shared::group_commit`]):
//! one writer thread takes every write waiting, writes all their temporary files, makes them
//! durable together, links them all, and makes the names durable together. On Linux
//! "together" is one `syncfs` of the archive's file system ([`Barrier::Syncfs`]): two disk
//! cache flushes per batch, where an `fsync` per object costs a data write, an inode write
//! and a flush of its own, each a disk request (on a VM, an exit to the hypervisor), plus
//! one per folder. See BENCHMARKS.md ("sixth session") for what that measured. A folder
//! found on another file system (a mount or a symbolic link inside the archive) turns
//! `syncfs` off for good: one file system's sync would not cover it.

use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use async_trait::async_trait;
use bytes::Bytes;
use hookline_shared::envelope::Envelope;
use hookline_shared::folders::parent_of;
use hookline_shared::sink::{Archive, Outcome, SinkError};
use tokio::sync::oneshot;

/// Writes waiting for the writer thread at most; more are refused (transiently) rather than
/// queued without bound. The worker has at most `worker.concurrency` messages at once.
const BACKLOG: usize = 4096;

/// Threads one [`Barrier::Fsync`] barrier spreads its `fsync`s over.
const FSYNC_THREADS: usize = 16;

/// How a batch's files, then its names, are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Barrier {
    /// One `syncfs` of the archive's file system for the whole batch. Linux only, and only
    /// on kernels that report writeback errors from it (5.8 and later); it also writes out
    /// whatever else is waiting on that file system, which an archive on a disk shared with
    /// a heavy writer pays for.
    Syncfs,
    /// An `fsync` of each temporary file, then of each folder a name (or a new folder) went
    /// into, spread over [`FSYNC_THREADS`] threads: everywhere else. Measured on the bench
    /// machine it is as fast as an `fsync` per write was before batching, `Syncfs` 1.36×
    /// faster end to end; one after another, the same `fsync`s were 0.8× as fast.
    Fsync,
}

impl Barrier {
    /// `Syncfs` where it is sound, `Fsync` otherwise.
    #[must_use]
    pub fn for_this_system() -> Self {
        if cfg!(target_os = "linux") && kernel_reports_syncfs_errors() {
            Self::Syncfs
        } else {
            Self::Fsync
        }
    }
}

/// Linux 5.8 made `syncfs` report writeback errors; before, it returned success regardless.
fn kernel_reports_syncfs_errors() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .is_ok_and(|release| release_is_at_least_5_8(&release))
}

/// Whether a kernel release string (`6.18.44-fc-v657`, `4.18.0-553.el8_10.x86_64`) is 5.8
/// or later; an unreadable one is not.
fn release_is_at_least_5_8(release: &str) -> bool {
    let mut numbers = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().ok());
    match (numbers.next().flatten(), numbers.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (5, 8),
        _ => false,
    }
}

#[derive(Debug, Clone)]
pub struct LocalArchive {
    root: PathBuf,
    writes: SyncSender<Write>,
    /// Whether the writer still uses [`Barrier::Syncfs`] (it gives it up for good on
    /// finding a folder on another file system).
    syncfs: Arc<AtomicBool>,
    #[cfg(test)]
    probe: Arc<std::sync::Mutex<Probe>>,
}

/// Tests only: what no test can provoke or see from outside.
#[cfg(test)]
#[derive(Debug, Default)]
struct Probe {
    /// Whether each of the next barriers fails (`true`) or runs (`false`), in order: no
    /// real sync failure can be provoked on demand.
    faults: std::collections::VecDeque<bool>,
    /// The folders each `Fsync` barrier synced, in order.
    synced_folders: Vec<BTreeSet<PathBuf>>,
}

/// One `put` as the writer thread sees it.
struct Write {
    path: PathBuf,
    body: Bytes,
    done: oneshot::Sender<std::io::Result<Outcome>>,
}

impl LocalArchive {
    /// An archive under `root` (created with the first write), with the barrier
    /// [`Barrier::for_this_system`] picks.
    ///
    /// # Errors
    /// The writer thread cannot be started.
    pub fn new(root: impl Into<PathBuf>) -> std::io::Result<Self> {
        Self::with_barrier(root, Barrier::for_this_system())
    }

    /// An archive under `root` whose batches are made durable by `barrier`.
    ///
    /// # Errors
    /// The writer thread cannot be started.
    pub fn with_barrier(root: impl Into<PathBuf>, barrier: Barrier) -> std::io::Result<Self> {
        let root = root.into();
        let (writes, waiting) = sync_channel(BACKLOG);
        // `syncfs` exists on Linux only; asked for elsewhere, `Fsync` serves.
        let syncfs = Arc::new(AtomicBool::new(
            barrier == Barrier::Syncfs && cfg!(target_os = "linux"),
        ));
        #[cfg(test)]
        let probe = Arc::default();
        let mut writer = Writer {
            root: root.clone(),
            syncfs: Arc::clone(&syncfs),
            root_handle: None,
            folders: HashSet::new(),
            #[cfg(test)]
            probe: Arc::clone(&probe),
        };
        std::thread::Builder::new()
            .name("archive-writer".into())
            .spawn(move || writer.run(&waiting))?;
        Ok(Self {
            root,
            writes,
            syncfs,
            #[cfg(test)]
            probe,
        })
    }

    /// The barrier the writer uses now.
    #[must_use]
    pub fn barrier(&self) -> Barrier {
        barrier_of(&self.syncfs)
    }

    fn path(&self, object: &str) -> PathBuf {
        self.root.join(object)
    }
}

/// The writer thread's state; it ends when the last [`LocalArchive`] handle is dropped.
struct Writer {
    root: PathBuf,
    /// The barrier in use (set: `Syncfs`), shared with the handles: see
    /// [`LocalArchive::barrier`].
    syncfs: Arc<AtomicBool>,
    /// The root folder, opened for `syncfs` once it exists.
    root_handle: Option<File>,
    /// Folders known to exist with their entries durable (up to the root's own entry), so
    /// that a write does not ask the file system each time. A folder goes in only once a
    /// batch's last barrier has succeeded: until then, a failed barrier, an earlier
    /// process's crash or an operator may have left its entry unsynced.
    folders: HashSet<PathBuf>,
    #[cfg(test)]
    probe: Arc<std::sync::Mutex<Probe>>,
}

/// A write whose temporary file is written, waiting for the batch's barriers.
struct Staged {
    write: Write,
    tmp: tempfile::NamedTempFile,
}

impl Writer {
    fn run(&mut self, waiting: &Receiver<Write>) {
        while let Ok(first) = waiting.recv() {
            let mut batch = vec![first];
            batch.extend(waiting.try_iter());
            self.write_batch(batch);
        }
    }

    fn write_batch(&mut self, batch: Vec<Write>) {
        // Folders whose entries a new name, a new folder or a folder first seen went into:
        // what `Fsync` syncs at the end.
        let mut changed = BTreeSet::new();
        // Folders first seen in this batch: known durable once its last barrier succeeded.
        let mut seen = HashSet::new();
        let mut staged = Vec::with_capacity(batch.len());
        for write in batch {
            match self.stage(&write, &mut seen, &mut changed) {
                Ok(tmp) => staged.push(Staged { write, tmp }),
                Err(e) => {
                    let _ = write.done.send(Err(e));
                }
            }
        }
        if staged.is_empty() {
            return;
        }
        let files: Vec<&File> = staged.iter().map(|s| s.tmp.as_file()).collect();
        if let Err(e) = self.make_durable(&files, &BTreeSet::new()) {
            return fail_all(staged, &e);
        }
        let mut linked = Vec::with_capacity(staged.len());
        for Staged { write, tmp } in staged {
            let outcome = match std::fs::hard_link(tmp.path(), &write.path) {
                Ok(()) => Outcome::Written,
                // An earlier attempt linked it (and may have died before its barrier: the
                // one below covers it).
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Outcome::AlreadyDone,
                Err(e) => {
                    drop(tmp);
                    let _ = write.done.send(Err(e));
                    continue;
                }
            };
            drop(tmp); // removes the temporary name; the object keeps the data
            changed.insert(folder_of(&write.path).to_path_buf());
            linked.push((write, outcome));
        }
        let result = self.make_durable(&[], &changed);
        if result.is_ok() {
            self.folders.extend(seen);
        }
        for (write, outcome) in linked {
            let _ = write.done.send(match &result {
                Ok(()) => Ok(outcome),
                Err(e) => Err(copy(e)),
            });
        }
    }

    /// Writes `write`'s body to a temporary file in its folder, creating the folder first
    /// if it is not known (noting it in `seen`, and in `changed` every folder whose entries
    /// lead to it).
    fn stage(
        &mut self,
        write: &Write,
        seen: &mut HashSet<PathBuf>,
        changed: &mut BTreeSet<PathBuf>,
    ) -> std::io::Result<tempfile::NamedTempFile> {
        let folder = folder_of(&write.path);
        if !self.folders.contains(folder) && !seen.contains(folder) {
            self.create_folder(folder, changed)?;
            seen.insert(folder.to_path_buf());
        }
        let temporary = |folder| tempfile::Builder::new().prefix(".tmp-").tempfile_in(folder);
        let mut tmp = match temporary(folder) {
            // Deleted since we created it: once more from scratch.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.folders.clear();
                seen.clear();
                self.create_folder(folder, changed)?;
                seen.insert(folder.to_path_buf());
                temporary(folder)?
            }
            other => other?,
        };
        tmp.write_all(&write.body)?;
        Ok(tmp)
    }

    /// Creates `folder` if it is missing, and notes in `changed` every folder holding an
    /// entry on the way to it, from the root's own: any of them may be new, or left unsynced
    /// by a batch whose barrier failed or by a process that died before its barrier.
    fn create_folder(
        &mut self,
        folder: &Path,
        changed: &mut BTreeSet<PathBuf>,
    ) -> std::io::Result<()> {
        std::fs::create_dir_all(folder)?;
        for entry in folder.ancestors() {
            changed.insert(parent_of(entry).to_path_buf());
            if entry == self.root {
                break;
            }
        }
        if barrier_of(&self.syncfs) == Barrier::Syncfs && !self.on_root_file_system(folder)? {
            // A mount or a symbolic link inside the archive: one `syncfs` of the root's
            // file system would not cover this folder. This batch's barriers come after
            // every write is staged, so the switch covers the write that found it.
            tracing::warn!(
                folder = %folder.display(),
                "part of the archive is on another file system: syncing each file from now on"
            );
            self.syncfs.store(false, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The root folder, opened once (it exists once a folder under it was created).
    fn root_handle(&mut self) -> std::io::Result<&File> {
        if self.root_handle.is_none() {
            self.root_handle = Some(File::open(&self.root)?);
        }
        Ok(self.root_handle.as_ref().expect("opened above"))
    }

    /// Whether `folder` is on the file system of the root folder as opened, the one
    /// `syncfs` syncs (a file system mounted over the root later is not that one).
    #[cfg(unix)]
    fn on_root_file_system(&mut self, folder: &Path) -> std::io::Result<bool> {
        use std::os::unix::fs::MetadataExt as _;
        let root = self.root_handle()?.metadata()?.dev();
        Ok(std::fs::metadata(folder)?.dev() == root)
    }

    #[cfg(not(unix))]
    fn on_root_file_system(&mut self, _: &Path) -> std::io::Result<bool> {
        unreachable!("Barrier::for_this_system picks Syncfs on Linux only")
    }

    /// Makes `files` and the entries of `folders` durable, by the archive's barrier.
    fn make_durable(
        &mut self,
        files: &[&File],
        folders: &BTreeSet<PathBuf>,
    ) -> std::io::Result<()> {
        #[cfg(test)]
        if self.probe.lock().unwrap().faults.pop_front() == Some(true) {
            return Err(std::io::Error::other("injected barrier failure"));
        }
        match barrier_of(&self.syncfs) {
            Barrier::Syncfs => self.syncfs(),
            Barrier::Fsync => {
                #[cfg(test)]
                self.probe
                    .lock()
                    .unwrap()
                    .synced_folders
                    .push(folders.clone());
                let folders: Vec<File> =
                    folders.iter().map(File::open).collect::<Result<_, _>>()?;
                let all: Vec<&File> = files.iter().copied().chain(&folders).collect();
                sync_in_parallel(&all)
            }
        }
    }

    #[cfg(target_os = "linux")]
    fn syncfs(&mut self) -> std::io::Result<()> {
        rustix::fs::syncfs(self.root_handle()?).map_err(std::io::Error::from)
    }

    #[cfg(not(target_os = "linux"))]
    fn syncfs(&mut self) -> std::io::Result<()> {
        unreachable!("Barrier::for_this_system picks Syncfs on Linux only")
    }
}

/// `fsync`s of different files are independent; issued one after another, each waits out
/// a whole disk round trip, so a batch is spread over up to [`FSYNC_THREADS`] threads.
fn sync_in_parallel(files: &[&File]) -> std::io::Result<()> {
    if files.is_empty() {
        return Ok(());
    }
    let per_thread = files.len().div_ceil(FSYNC_THREADS);
    let sync = |chunk: &[&File]| chunk.iter().try_for_each(|f| f.sync_all());
    std::thread::scope(|scope| {
        let mut here = Ok(());
        let mut threads = Vec::new();
        for chunk in files.chunks(per_thread) {
            match std::thread::Builder::new().spawn_scoped(scope, move || sync(chunk)) {
                Ok(thread) => threads.push(thread),
                // No thread to be had (a process or memory limit): this one does it.
                Err(_) => here = here.and_then(|()| sync(chunk)),
            }
        }
        threads
            .into_iter()
            .map(|t| t.join().expect("fsync threads do not panic"))
            .fold(here, Result::and)
    })
}

fn barrier_of(syncfs: &AtomicBool) -> Barrier {
    if syncfs.load(Ordering::Relaxed) {
        Barrier::Syncfs
    } else {
        Barrier::Fsync
    }
}

fn folder_of(path: &Path) -> &Path {
    path.parent().expect("object paths have a folder")
}

/// `std::io::Error` is not `Clone`; a batch's failed barrier goes to each of its writes.
fn copy(e: &std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), e.to_string())
}

fn fail_all(staged: Vec<Staged>, e: &std::io::Error) {
    for Staged { write, tmp } in staged {
        // Removed before the answer: whoever gets it may look at the folder at once.
        drop(tmp);
        let _ = write.done.send(Err(copy(e)));
    }
}

#[async_trait]
impl Archive for LocalArchive {
    async fn put(&self, object: &str, envelope: &Envelope) -> Result<Outcome, SinkError> {
        let (done, answer) = oneshot::channel();
        let write = Write {
            path: self.path(object),
            body: envelope.body.clone(),
            done,
        };
        match self.writes.try_send(write) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(SinkError::transient(
                    "too many archive writes are waiting",
                    std::io::Error::other("archive backlog full"),
                ));
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(SinkError::transient(
                    "the archive's writer has stopped",
                    std::io::Error::other("archive writer gone"),
                ));
            }
        }
        answer
            .await
            .map_err(|e| SinkError::transient("the archive's writer has stopped", e))?
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

    fn envelope(body: &[u8]) -> Envelope {
        let mut e = crate::pipeline::tests::envelope("d1", "issues");
        e.body = Bytes::copy_from_slice(body);
        e
    }

    /// Every barrier this system can run.
    fn barriers() -> Vec<Barrier> {
        if cfg!(target_os = "linux") {
            vec![Barrier::Syncfs, Barrier::Fsync]
        } else {
            vec![Barrier::Fsync]
        }
    }

    /// Every file under `root`, as paths relative to it.
    fn files_under(root: &Path) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        let mut folders = vec![root.to_path_buf()];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(&folder).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    folders.push(path);
                } else {
                    let relative = path.strip_prefix(root).unwrap();
                    found.insert(relative.to_string_lossy().into_owned());
                }
            }
        }
        found
    }

    #[tokio::test]
    async fn writes_once_and_reads_back() {
        for barrier in barriers() {
            let dir = tempfile::tempdir().unwrap();
            let archive = LocalArchive::with_barrier(dir.path(), barrier).unwrap();
            let obj = "gh/2026-11-22/2026-11-22--10-00-00_d1";
            assert_eq!(
                archive.put(obj, &envelope(b"first")).await.unwrap(),
                Outcome::Written,
                "{barrier:?}"
            );
            assert_eq!(
                archive.put(obj, &envelope(b"second")).await.unwrap(),
                Outcome::AlreadyDone,
                "{barrier:?}"
            );
            assert_eq!(&archive.get(obj).await.unwrap()[..], b"first");
            assert_eq!(files_under(dir.path()), BTreeSet::from([obj.to_owned()]));
            assert!(!archive.get("gh/missing").await.unwrap_err().is_transient());
        }
    }

    /// Many writes at once, into one folder and into new folders, share batches: each is
    /// written exactly once with its own body, and no temporary file is left.
    #[tokio::test]
    async fn concurrent_writes_each_land_once() {
        for barrier in barriers() {
            let dir = tempfile::tempdir().unwrap();
            let archive = LocalArchive::with_barrier(dir.path(), barrier).unwrap();
            let objects: Vec<String> = (0..200)
                .map(|i| format!("gh/2026-11-{:02}/object-{i}", 1 + i % 7))
                .collect();
            // Each object twice at once: one of the two writes it, the other finds it.
            let puts = objects.iter().chain(&objects).map(|obj| {
                let archive = archive.clone();
                let body = format!("body of {obj}");
                async move { archive.put(obj, &envelope(body.as_bytes())).await.unwrap() }
            });
            let outcomes = futures_util::future::join_all(puts).await;
            let written = outcomes.iter().filter(|o| **o == Outcome::Written).count();
            assert_eq!(written, objects.len(), "{barrier:?}: {outcomes:?}");
            for obj in &objects {
                let body = archive.get(obj).await.unwrap();
                assert_eq!(body, format!("body of {obj}").as_bytes());
            }
            let expected: BTreeSet<String> = objects.iter().cloned().collect();
            assert_eq!(files_under(dir.path()), expected, "{barrier:?}");
        }
    }

    /// A write that cannot be made (its folder's place is taken by a file) fails alone and
    /// transiently; the writes around it are archived.
    #[tokio::test]
    async fn a_failing_write_fails_alone() {
        for barrier in barriers() {
            let dir = tempfile::tempdir().unwrap();
            let archive = LocalArchive::with_barrier(dir.path(), barrier).unwrap();
            archive
                .put("gh/blocker", &envelope(b"a file"))
                .await
                .unwrap();
            let (nowhere, one, two) = (
                envelope(b"nowhere to go"),
                envelope(b"one"),
                envelope(b"two"),
            );
            let (bad, good_before, good_after) = tokio::join!(
                archive.put("gh/blocker/object", &nowhere),
                archive.put("gh/day/one", &one),
                archive.put("gh/day/two", &two),
            );
            let err = bad.unwrap_err();
            assert!(err.is_transient(), "{barrier:?}: {err:?}");
            assert_eq!(good_before.unwrap(), Outcome::Written);
            assert_eq!(good_after.unwrap(), Outcome::Written);
            assert_eq!(
                files_under(dir.path()),
                BTreeSet::from(["gh/blocker", "gh/day/one", "gh/day/two"].map(String::from))
            );
        }
    }

    /// The writer remembers which folders exist; one removed behind its back (an operator
    /// cleaning up) is created again rather than failing every later write.
    #[tokio::test]
    async fn a_removed_folder_is_created_again() {
        for barrier in barriers() {
            let dir = tempfile::tempdir().unwrap();
            let archive = LocalArchive::with_barrier(dir.path(), barrier).unwrap();
            archive.put("gh/day/one", &envelope(b"one")).await.unwrap();
            std::fs::remove_dir_all(dir.path().join("gh")).unwrap();
            assert_eq!(
                archive.put("gh/day/two", &envelope(b"two")).await.unwrap(),
                Outcome::Written,
                "{barrier:?}"
            );
            assert_eq!(&archive.get("gh/day/two").await.unwrap()[..], b"two");
        }
    }

    /// A folder on another file system (here a symbolic link to tmpfs) is not covered by
    /// one `syncfs` of the root's: the writer switches to `fsync`s, and writes land.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_folder_on_another_file_system_turns_syncfs_off() {
        let shm = Path::new("/dev/shm");
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir_in(shm).expect("/dev/shm (tmpfs) is writable");
        assert!(
            {
                use std::os::unix::fs::MetadataExt as _;
                let dev = |p: &Path| std::fs::metadata(p).unwrap().dev();
                dev(dir.path()) != dev(elsewhere.path())
            },
            "the test needs {} and /dev/shm on different file systems",
            dir.path().display()
        );
        let archive = LocalArchive::with_barrier(dir.path(), Barrier::Syncfs).unwrap();
        archive.put("gh/day/one", &envelope(b"one")).await.unwrap();
        assert_eq!(archive.barrier(), Barrier::Syncfs);
        std::os::unix::fs::symlink(elsewhere.path(), dir.path().join("slack")).unwrap();
        assert_eq!(
            archive
                .put("slack/day/two", &envelope(b"two"))
                .await
                .unwrap(),
            Outcome::Written
        );
        assert_eq!(archive.barrier(), Barrier::Fsync);
        assert_eq!(&archive.get("slack/day/two").await.unwrap()[..], b"two");
        assert_eq!(
            std::fs::read(elsewhere.path().join("day/two")).unwrap(),
            b"two"
        );
    }

    /// The barrier over the temporary files fails: every write of the batch fails
    /// transiently and leaves nothing behind, and its retry is written.
    #[tokio::test]
    async fn a_failed_first_barrier_fails_every_write_of_its_batch() {
        for barrier in barriers() {
            let dir = tempfile::tempdir().unwrap();
            let archive = LocalArchive::with_barrier(dir.path(), barrier).unwrap();
            // Every barrier fails while the three writes are under way, whichever batches
            // they fall into.
            archive.probe.lock().unwrap().faults.extend([true; 3]);
            let (one, two, three) = (envelope(b"one"), envelope(b"two"), envelope(b"three"));
            let results = tokio::join!(
                archive.put("gh/day/one", &one),
                archive.put("gh/day/two", &two),
                archive.put("gh/other/three", &three),
            );
            for result in [results.0, results.1, results.2] {
                let err = result.unwrap_err();
                assert!(err.is_transient(), "{barrier:?}: {err:?}");
                assert!(err.to_string().contains("archive write failed"), "{err}");
            }
            assert_eq!(files_under(dir.path()), BTreeSet::new(), "{barrier:?}");
            archive.probe.lock().unwrap().faults.clear();
            assert_eq!(
                archive.put("gh/day/one", &one).await.unwrap(),
                Outcome::Written,
                "{barrier:?}"
            );
            assert_eq!(&archive.get("gh/day/one").await.unwrap()[..], b"one");
        }
    }

    /// The barrier over the new names fails: the write is reported failed although its
    /// object is linked; the retry finds it (`AlreadyDone`) and its own barrier makes the
    /// name durable, and (with `Fsync`) every folder entry on the way to it, which the
    /// failed batch created and never synced. The object is the first write's, whole.
    #[tokio::test]
    async fn a_failed_second_barrier_fails_the_write_and_its_retry_syncs_what_it_left() {
        for barrier in barriers() {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("archive");
            let archive = LocalArchive::with_barrier(&root, barrier).unwrap();
            archive.probe.lock().unwrap().faults.extend([false, true]);
            let obj = "gh/day/one";
            let err = archive.put(obj, &envelope(b"first")).await.unwrap_err();
            assert!(err.is_transient(), "{barrier:?}: {err:?}");
            {
                let mut probe = archive.probe.lock().unwrap();
                assert!(probe.faults.is_empty());
                probe.synced_folders.clear();
            }
            assert_eq!(
                archive.put(obj, &envelope(b"retried")).await.unwrap(),
                Outcome::AlreadyDone,
                "{barrier:?}"
            );
            assert_eq!(&archive.get(obj).await.unwrap()[..], b"first");
            assert_eq!(files_under(&root), BTreeSet::from([obj.to_owned()]));
            if barrier == Barrier::Fsync {
                let every_entry_on_the_way = BTreeSet::from([
                    dir.path().to_path_buf(),
                    root.clone(),
                    root.join("gh"),
                    root.join("gh/day"),
                ]);
                assert_eq!(
                    archive.probe.lock().unwrap().synced_folders,
                    vec![BTreeSet::new(), every_entry_on_the_way]
                );
            }
        }
    }

    /// Once a batch's barriers succeeded, its folders are known durable: the next write
    /// into one syncs only the folder its name went into.
    #[tokio::test]
    async fn a_known_folder_costs_one_folder_sync() {
        let dir = tempfile::tempdir().unwrap();
        let archive = LocalArchive::with_barrier(dir.path(), Barrier::Fsync).unwrap();
        archive.put("gh/day/one", &envelope(b"one")).await.unwrap();
        archive.probe.lock().unwrap().synced_folders.clear();
        archive.put("gh/day/two", &envelope(b"two")).await.unwrap();
        assert_eq!(
            archive.probe.lock().unwrap().synced_folders,
            vec![BTreeSet::new(), BTreeSet::from([dir.path().join("gh/day")])]
        );
    }

    #[test]
    fn syncfs_is_trusted_from_linux_5_8() {
        for (release, trusted) in [
            ("6.18.44-fc-v657\n", true),
            ("5.8.0", true),
            ("5.15.0-1057-gcp", true),
            ("5.4.0-150-generic", false),
            ("4.18.0-553.el8_10.x86_64", false),
            ("", false),
            ("unknown", false),
        ] {
            assert_eq!(release_is_at_least_5_8(release), trusted, "{release:?}");
        }
    }
}
