//! Folder entries made durable. A new file or folder survives a power loss only once the
//! folder holding its entry is synced as well; syncing the file itself does not cover its
//! name.

use std::fs::File;
use std::path::Path;

/// The folder holding `path`'s entry: `.` for a relative path's first part (whose
/// `parent()` is empty, which no call can open), `path` itself for the root (`/`).
#[must_use]
pub fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if parent.as_os_str().is_empty() => Path::new("."),
        Some(parent) => parent,
        None => path,
    }
}

/// Makes the entries of the folder `path` durable.
///
/// # Errors
/// The folder cannot be opened or synced.
pub fn sync(path: &Path) -> std::io::Result<()> {
    File::open(path)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_paths_first_part_is_in_the_current_folder() {
        assert_eq!(parent_of(Path::new("data")), Path::new("."));
        assert_eq!(parent_of(Path::new("data/archive")), Path::new("data"));
        assert_eq!(parent_of(Path::new(".")), Path::new("."));
        assert_eq!(parent_of(Path::new("/srv")), Path::new("/"));
        assert_eq!(parent_of(Path::new("/")), Path::new("/"));
    }

    #[test]
    fn syncs_a_folder_and_refuses_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        sync(dir.path()).unwrap();
        sync(parent_of(Path::new("relative"))).unwrap();
        let err = sync(&dir.path().join("missing")).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
}
