//! One writer per output: an exclusive OS lock (`flock`) on `.bulkprompt/OUT.lock`, held for the whole run
//! and released by the kernel however the process ends, `kill -9` included. The file holds the
//! holder's pid so the refusal can name it.

use super::{io_err, CheckpointError};
use crate::run_files::RunFiles;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::Path;

/// An exclusive OS lock on `.bulkprompt/OUT.lock`, held for the whole run; the lock file names the pid.
pub struct OutputLock {
    file: std::fs::File,
    path: std::path::PathBuf,
}

/// Whether `path` still names the file `file` has open.
fn still_named(file: &std::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

impl Drop for OutputLock {
    /// The lock file goes when the run ends (removed while still locked, so a run that opened
    /// it meanwhile sees it is gone and makes a new one).
    fn drop(&mut self) {
        if still_named(&self.file, &self.path) {
            let _ = std::fs::remove_file(&self.path);
            // A run that stopped before writing anything leaves no empty `.bulkprompt/`.
            if let Some(dir) = self.path.parent() {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

impl OutputLock {
    /// Takes the lock ([`RunFiles::lock`]), making the run's folder (`.bulkprompt/`) when it
    /// is the first file in it. Callers pass the resolved output ([`crate::paths::resolve`]),
    /// so every name of one file (symlinks) meets the same lock.
    pub fn acquire(output: &Path) -> Result<Self, CheckpointError> {
        let path = RunFiles::of(output).lock();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        // A lock file removed by the run that held it, between our open and our lock: again.
        for _ in 0..100 {
            let lock = Self::try_acquire(output, &path)?;
            if still_named(&lock.file, &path) {
                // The writer of a run whose folder was deleted under it still holds the
                // output itself.
                if crate::output::jsonl::is_being_written(output) {
                    return Err(CheckpointError::Locked {
                        path: output.to_path_buf(),
                        pid: None,
                    });
                }
                return Ok(lock);
            }
            // Locked a file nobody can find any more: its drop leaves the path alone.
            drop(lock);
        }
        let e = std::io::Error::other("the lock file keeps being replaced");
        let err = io_err(&path)(e);
        Err(err)
    }

    fn try_acquire(output: &Path, path: &Path) -> Result<Self, CheckpointError> {
        let path = path.to_path_buf();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(CheckpointError::Locked {
                    path: output.to_path_buf(),
                    pid: text.trim().parse().ok(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&path)(e)),
        }
        file.set_len(0).map_err(io_err(&path))?;
        write!(file, "{}", std::process::id()).map_err(io_err(&path))?;
        Ok(OutputLock { file, path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_names_the_first_pid() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.jsonl");
        let _held = OutputLock::acquire(&p).unwrap();
        let e = OutputLock::acquire(&p).err().unwrap().to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
    }
}
