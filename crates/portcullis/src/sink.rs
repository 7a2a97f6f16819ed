//! The audit trail's JSON-lines file, reopened on request so that it can be rotated.
//!
//! `logrotate` (or any tool) renames the file and sends `SIGUSR1`, as it does for nginx; the
//! writer finishes the batch it is writing into the old file and opens a new file at the
//! configured path before the next one. Nothing is lost or split: a batch goes whole to one
//! file. If the new file cannot be opened, the writer keeps writing to the old one and says
//! so.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Opens `path` for appending, creating it with mode 0600.
pub(crate) fn open_private_append(path: &Path) -> io::Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path)
}

/// An append-only file that is reopened at `path` at the first write after
/// [`Reopen::request`].
pub(crate) struct ReopeningFile {
    path: PathBuf,
    file: BufWriter<File>,
    reopen: Reopen,
}

/// Asks a [`ReopeningFile`] to reopen its path; cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Reopen(Arc<AtomicBool>);

impl Reopen {
    /// The next write goes to a newly opened file.
    pub(crate) fn request(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn take(&self) -> bool {
        // A load first: the swap (a write to a shared line) only when a reopen is pending.
        self.0.load(Ordering::Acquire) && self.0.swap(false, Ordering::AcqRel)
    }
}

impl ReopeningFile {
    /// `path`, opened for appending, and the handle that asks for it to be reopened.
    pub(crate) fn open(path: PathBuf) -> io::Result<(Self, Reopen)> {
        let file = BufWriter::new(open_private_append(&path)?);
        let reopen = Reopen::default();
        Ok((
            Self {
                path,
                file,
                reopen: reopen.clone(),
            },
            reopen,
        ))
    }

    fn reopen_if_asked(&mut self) {
        if !self.reopen.take() {
            return;
        }
        match open_private_append(&self.path) {
            Ok(f) => {
                // Whatever the old file still buffers goes to it, not to the new one.
                let old = std::mem::replace(&mut self.file, BufWriter::new(f));
                if let Err(e) = old.into_inner().map_err(|e| e.into_error()) {
                    tracing::error!(error = %e, "writing the end of the old audit file failed");
                }
                tracing::info!(path = %self.path.display(), "audit file reopened");
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e,
                    "cannot reopen the audit file; still writing to the old one");
            }
        }
    }
}

impl Write for ReopeningFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.reopen_if_asked();
        self.file.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        // One check per call: the audit writer hands over a whole batch in one call, and the
        // batch must not be split between two files.
        self.reopen_if_asked();
        self.file.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_go_to_the_new_file_after_a_reopen_and_whole_calls_stay_together() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let rotated = dir.path().join("audit.jsonl.1");
        let (mut f, reopen) = ReopeningFile::open(path.clone()).unwrap();
        f.write_all(b"one\n").unwrap();
        f.flush().unwrap();
        std::fs::rename(&path, &rotated).unwrap();
        // Renamed but not reopened: still the same (now renamed) file.
        f.write_all(b"two\n").unwrap();
        reopen.request();
        f.write_all(b"three\nfour\n").unwrap();
        f.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "one\ntwo\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\nfour\n");
        // One request, one reopen: after another rename without a request, the next write
        // still goes to the file that was opened, not to a new one at the path.
        let second = dir.path().join("audit.jsonl.2");
        std::fs::rename(&path, &second).unwrap();
        f.write_all(b"five\n").unwrap();
        f.flush().unwrap();
        assert_eq!(
            std::fs::read_to_string(&second).unwrap(),
            "three\nfour\nfive\n"
        );
        assert!(!path.exists());
    }

    #[cfg(unix)]
    #[test]
    fn a_reopened_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (mut f, reopen) = ReopeningFile::open(path.clone()).unwrap();
        std::fs::rename(&path, dir.path().join("old")).unwrap();
        reopen.request();
        f.write_all(b"x\n").unwrap();
        f.flush().unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_failed_reopen_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("logs");
        std::fs::create_dir(&sub).unwrap();
        let path = sub.join("audit.jsonl");
        let (mut f, reopen) = ReopeningFile::open(path.clone()).unwrap();
        let moved = dir.path().join("moved");
        std::fs::rename(&sub, &moved).unwrap(); // the path's directory is gone
        reopen.request();
        f.write_all(b"kept\n").unwrap();
        f.flush().unwrap();
        assert_eq!(
            std::fs::read_to_string(moved.join("audit.jsonl")).unwrap(),
            "kept\n"
        );
        assert!(!path.exists());
    }
}
