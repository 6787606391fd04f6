//! The JSONL writer: one OS thread owns the output file. Records reach the kernel as soon as
//! they arrive: the writer takes whatever is waiting in its channel (one record when the run
//! is slow, a few hundred when it is fast), serializes them into one buffer and hands it over in
//! one `write`, so `kill -9` loses no received result and a fast run does not pay a system call
//! per record. Data is fsynced in small groups: once 64 records are waiting for it and 100 ms
//! have passed since the last fsync, and at least every second, which bounds fsyncs to ten a
//! second on a fast run. On a write error (a full disk) the file is cut back to its last whole
//! line, the error is reported, and nothing more is written: what is in the file stays valid and
//! the run can resume once there is space.

use super::Record;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const SYNC_AFTER_RECORDS: usize = 64;
const SYNC_MIN_GAP: Duration = Duration::from_millis(100);
const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Most records gathered into one write.
const BATCH: usize = 512;

/// Something the writer was asked to do.
pub enum WriterMsg {
    Record(Box<Record>),
    /// Flush and fsync now.
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
    buf: Vec<u8>,
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
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    fn err(&self, source: io::Error) -> WriteError {
        WriteError {
            path: self.path.clone(),
            source,
        }
    }

    /// Writes records as lines, in one `write`.
    pub fn write(&mut self, records: &[Box<Record>]) -> Result<(), WriteError> {
        self.buf.clear();
        for r in records {
            serde_json::to_writer(&mut self.buf, r).map_err(|e| self.err(e.into()))?;
            self.buf.push(b'\n');
        }
        if let Err(e) = self.file.write_all(&self.buf) {
            // A short write leaves a partial line: cut it so every line stays whole.
            let _ = self.file.set_len(self.good_len);
            return Err(self.err(e));
        }
        self.good_len += self.buf.len() as u64;
        self.unsynced += records.len();
        let since = self.last_sync.elapsed();
        if (self.unsynced >= SYNC_AFTER_RECORDS && since >= SYNC_MIN_GAP) || since >= SYNC_INTERVAL
        {
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
/// called for every record once it reached the file (the run counts progress there, once).
pub fn drain(
    mut writer: JsonlWriter,
    rx: mpsc::Receiver<WriterMsg>,
    mut each: impl FnMut(&Record),
) -> Result<(), WriteError> {
    let mut batch: Vec<Box<Record>> = Vec::with_capacity(BATCH);
    loop {
        let first = match rx.recv_timeout(SYNC_INTERVAL) {
            Ok(m) => m,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                writer.sync()?;
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return writer.sync(),
        };
        let mut sync = false;
        let mut next = Some(first);
        while let Some(m) = next.take() {
            match m {
                WriterMsg::Record(r) => batch.push(r),
                WriterMsg::Sync => sync = true,
            }
            if batch.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            writer.write(&batch)?;
            batch.drain(..).for_each(|r| each(&r));
        }
        if sync {
            writer.sync()?;
        }
    }
}
