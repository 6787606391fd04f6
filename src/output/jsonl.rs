//! The JSONL writer: one OS thread owns the output file. Records reach the kernel as soon as
//! they arrive: the writer takes whatever is waiting in its channel (one record when the run
//! is slow, a few hundred when it is fast), serializes them into one buffer and hands it over in
//! one `write`, so `kill -9` loses no received result and a fast run does not pay a system call
//! per record. Data is fsynced in small groups: once 64 records are waiting for it and 100 ms
//! have passed since the last fsync, and at least every second, which bounds fsyncs to ten a
//! second on a fast run. On a write error (a full disk) the file is cut back to its last whole
//! line and the run stops admitting jobs, but answers already paid for are not dropped: they are
//! held in memory (at most what was in flight) and the write is retried until the grace period
//! ends. What is in the file stays valid; what could never be written is counted, and the run
//! resumes once there is space.

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
/// After a batch smaller than [`BATCH`], the writer waits this long before it looks again, so
/// the next records gather while it is not parked on the channel: a sender then has no thread
/// to wake (a futex call and a context switch a record at tens of thousands a second). Kept
/// short: a record waiting here is an answer paid for and not yet handed to the kernel, which
/// `kill -9` would lose (4 ms made a third of the writes and sleeps, and lost 16 answers a
/// `kill -9` against 12, on average of five, at 3,000 answers a second).
const LINGER: Duration = Duration::from_millis(1);

/// What the writer is sent: one record, boxed so the channel moves a pointer.
pub type WriterMsg = Box<Record>;

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
            .read(true)
            .append(true)
            .open(path)
            .map_err(err)?;
        hold(&file).map_err(err)?;
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

    /// Makes sure the path still names the file being written. Deleted (the file, or its
    /// folder, `.bulkprompt/` for a Parquet output's journal), it is made again from what this
    /// writer has written, so nothing is lost and the next run finds it; replaced by another
    /// file, writing stops: something else owns that path now.
    fn ensure_named(&mut self) -> Result<(), WriteError> {
        use std::os::unix::fs::{FileExt, MetadataExt};
        let ours = self.file.metadata().map_err(|e| self.err(e))?;
        match std::fs::metadata(&self.path) {
            Ok(m) if m.dev() == ours.dev() && m.ino() == ours.ino() => return Ok(()),
            Ok(_) => {
                return Err(self.err(io::Error::other(
                    "the file was replaced by another while this run wrote it; writing stopped (re-run to resume)",
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.err(e)),
        }
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| self.err(e))?;
        }
        let new = OpenOptions::new()
            .create_new(true)
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| self.err(e))?;
        hold(&new).map_err(|e| self.err(e))?;
        let mut at = 0u64;
        let mut chunk = vec![0u8; 1 << 20];
        while at < self.good_len {
            let want = chunk.len().min((self.good_len - at) as usize);
            let n = self
                .file
                .read_at(&mut chunk[..want], at)
                .map_err(|e| self.err(e))?;
            if n == 0 {
                break;
            }
            (&new).write_all(&chunk[..n]).map_err(|e| self.err(e))?;
            at += n as u64;
        }
        new.sync_all().map_err(|e| self.err(e))?;
        tracing::warn!(
            "{} was deleted while this run wrote it: written again from the {at} bytes this run had",
            self.path.display()
        );
        self.file = new;
        Ok(())
    }

    /// Writes records as lines, in one `write`.
    pub fn write(&mut self, records: &[Box<Record>]) -> Result<(), WriteError> {
        self.ensure_named()?;
        self.buf.clear();
        for r in records {
            super::encode::record(&mut self.buf, r).map_err(|e| self.err(e.into()))?;
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

/// Takes an exclusive lock on the file being written, so that no second run can start on it
/// even when the run's own folder (and the lock file in it) was deleted under this one.
fn hold(file: &File) -> io::Result<()> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "another bulkprompt run is writing this file",
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Whether another process is writing `path` (holds the writer's lock on it).
pub fn is_being_written(path: &Path) -> bool {
    match File::open(path) {
        Ok(f) => matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
        Err(_) => false,
    }
}

/// How the writer ended.
#[derive(Debug, Default)]
pub struct Drained {
    /// The first write failure, if any (the run then exits 5).
    pub error: Option<WriteError>,
    /// Records that arrived and could never be written (at most what was in flight).
    pub unwritten: u64,
    /// Records written by a retry after the failure.
    pub written_late: u64,
}

/// How often a failed write is tried again.
const RETRY_EVERY: Duration = Duration::from_millis(200);

/// Takes what is queued for the writer (up to a batch, or everything while writes fail), waiting
/// up to `wait` for the first. Returns whether it is time to sync (nothing came, or the channel
/// closed, which clears `open`).
fn gather(
    rx: &mpsc::Receiver<WriterMsg>,
    wait: Duration,
    pending: &mut Vec<WriterMsg>,
    failing: bool,
    open: &mut bool,
) -> bool {
    match rx.recv_timeout(wait) {
        Ok(first) => {
            let mut next = Some(first);
            while let Some(r) = next.take() {
                pending.push(r);
                if failing || pending.len() < BATCH {
                    next = rx.try_recv().ok();
                }
            }
            false
        }
        Err(mpsc::RecvTimeoutError::Timeout) => true,
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            *open = false;
            true
        }
    }
}

/// Runs the writer on the current thread until the channel closes. `each` is called for every
/// record once it reached the file (the run counts progress there, once).
///
/// A write failure (a full disk) does not drop answers: `on_failure` is called once (the run
/// stops admitting jobs), the failed batch and every record still arriving are kept in memory
/// (bounded by the requests in flight), and the write is tried again every 200 ms, until
/// `retry_for` after the failure. What is still unwritten then is counted, not lost silently.
/// `synced` is called after each fsync: every record passed to `each` so far is durable.
pub fn drain(
    mut writer: JsonlWriter,
    rx: mpsc::Receiver<WriterMsg>,
    retry_for: Duration,
    on_failure: impl FnOnce(&WriteError),
    mut each: impl FnMut(&Record),
    mut synced: impl FnMut(),
) -> Drained {
    let mut out = Drained::default();
    let mut on_failure = Some(on_failure);
    let mut pending: Vec<Box<Record>> = Vec::with_capacity(BATCH);
    let mut failed_at: Option<Instant> = None;
    let mut open = true;
    loop {
        let wait = if failed_at.is_some() && !pending.is_empty() {
            RETRY_EVERY
        } else {
            SYNC_INTERVAL
        };
        let sync = match open {
            true => gather(&rx, wait, &mut pending, failed_at.is_some(), &mut open),
            false => {
                std::thread::sleep(RETRY_EVERY);
                false
            }
        };
        let mut result = Ok(());
        let linger = open && !pending.is_empty() && pending.len() < BATCH;
        if !pending.is_empty() {
            result = writer.write(&pending);
            if result.is_ok() {
                if failed_at.is_some() {
                    out.written_late += pending.len() as u64;
                }
                pending.drain(..).for_each(|r| each(&r));
            }
        }
        if result.is_ok() && sync {
            result = writer.sync();
            if result.is_ok() {
                synced();
            }
        }
        if let Err(e) = result {
            if failed_at.is_none() {
                failed_at = Some(Instant::now());
                tracing::warn!(
                    "{e}; no more jobs are sent, answers in flight are kept and the write is retried for up to {}s",
                    retry_for.as_secs()
                );
                if let Some(f) = on_failure.take() {
                    f(&e);
                }
                out.error = Some(e);
            }
        }
        let gave_up = failed_at.is_some_and(|t| t.elapsed() >= retry_for);
        if !open && (pending.is_empty() || gave_up) {
            out.unwritten += pending.len() as u64;
            return out;
        }
        if gave_up && !pending.is_empty() {
            // Keep receiving (so the run can finish), but stop holding what cannot be written.
            out.unwritten += pending.len() as u64;
            pending.clear();
        }
        if linger && failed_at.is_none() {
            std::thread::sleep(LINGER);
        }
    }
}
