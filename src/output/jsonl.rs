//! The JSONL writer: one OS thread owns the output file. Each record reaches the kernel in one
//! `write` as soon as it arrives (so `kill -9` loses no received result) and is fsynced in small
//! groups (every 64 records or every second, whichever first). On a write error (a full disk)
//! the file is cut back to its last whole line, the error is reported, and nothing more is
//! written: what is in the file stays valid and the run can resume once there is space.

use super::Record;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const SYNC_EVERY: usize = 64;
const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Something the writer was asked to do.
pub enum WriterMsg {
    Record(Box<Record>),
    /// Flush and fsync now (sent on a timer and before shutdown).
    Sync,
}

/// Why the writer stopped early.
#[derive(Debug, thiserror::Error)]
#[error("writing {path}: {source}")]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Appends records to a JSONL file.
pub struct JsonlWriter {
    path: PathBuf,
    file: File,
    /// Length of the file up to its last whole line.
    good_len: u64,
    unsynced: usize,
    last_sync: Instant,
    line: Vec<u8>,
}

impl JsonlWriter {
    /// Opens `path` for appending; the checkpoint scan has already cut any torn tail.
    pub fn open(path: &Path) -> Result<Self, WriteError> {
        let err = |source| WriteError {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(err)?;
        let good_len = file.metadata().map_err(err)?.len();
        Ok(JsonlWriter {
            path: path.to_path_buf(),
            file,
            good_len,
            unsynced: 0,
            last_sync: Instant::now(),
            line: Vec::with_capacity(4096),
        })
    }

    fn err(&self, source: io::Error) -> WriteError {
        WriteError {
            path: self.path.clone(),
            source,
        }
    }

    /// Writes one record as one line.
    pub fn write(&mut self, record: &Record) -> Result<(), WriteError> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, record).map_err(|e| self.err(e.into()))?;
        self.line.push(b'\n');
        if let Err(e) = self.file.write_all(&self.line) {
            // A short write leaves a partial line: cut it so every line stays whole.
            let _ = self.file.set_len(self.good_len);
            return Err(self.err(e));
        }
        self.good_len += self.line.len() as u64;
        self.unsynced += 1;
        if self.unsynced >= SYNC_EVERY || self.last_sync.elapsed() >= SYNC_INTERVAL {
            self.sync()?;
        }
        Ok(())
    }

    pub fn sync(&mut self) -> Result<(), WriteError> {
        if self.unsynced > 0 {
            self.file.sync_data().map_err(|e| self.err(e))?;
            self.unsynced = 0;
        }
        self.last_sync = Instant::now();
        Ok(())
    }
}

/// Runs the writer on the current thread until the channel closes or a write fails. `each` is
/// called after every record reached the file (the run counts progress there, exactly once).
pub fn drain(
    mut writer: JsonlWriter,
    rx: mpsc::Receiver<WriterMsg>,
    mut each: impl FnMut(&Record),
) -> Result<(), WriteError> {
    loop {
        match rx.recv_timeout(SYNC_INTERVAL) {
            Ok(WriterMsg::Record(r)) => {
                writer.write(&r)?;
                each(&r);
            }
            Ok(WriterMsg::Sync) | Err(mpsc::RecvTimeoutError::Timeout) => writer.sync()?,
            Err(mpsc::RecvTimeoutError::Disconnected) => return writer.sync(),
        }
    }
}
