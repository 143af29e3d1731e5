//! The embedded archive: objects are files under a root folder.
//!
//! A write is create-only and atomic: the body goes to a temporary file in the same folder,
//! is fsync'd, then hard-linked to its final name. `link` fails if the name exists, which is
//! exactly "already archived" — a crash can leave a stray temporary file, never a torn or
//! overwritten object. Every I/O error is transient: a full disk or a folder made unwritable
//! recovers, and the queue's dead-letter policy bounds the retries.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use hookline_shared::envelope::Envelope;
use hookline_shared::sink::{Archive, Outcome, SinkError};

#[derive(Debug, Clone)]
pub struct LocalArchive {
    root: PathBuf,
}

impl LocalArchive {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, object: &str) -> PathBuf {
        self.root.join(object)
    }
}

fn write_create_only(path: &Path, body: &[u8]) -> std::io::Result<Outcome> {
    let dir = path.parent().expect("object paths have a folder");
    std::fs::create_dir_all(dir)?;
    if path.exists() {
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
    std::fs::File::open(dir)?.sync_all()?;
    Ok(outcome)
}

#[async_trait]
impl Archive for LocalArchive {
    async fn put(&self, object: &str, envelope: &Envelope) -> Result<Outcome, SinkError> {
        let path = self.path(object);
        let body = envelope.body.clone();
        tokio::task::spawn_blocking(move || write_create_only(&path, &body))
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
}
