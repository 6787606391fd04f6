//! Stage 2: the writer thread. It owns the output file ([`jsonl::drain`]) and counts every
//! record once, after it reached the file: results, tokens and money into the shared
//! [`Counters`] (which the progress line reads), latencies into a histogram for the summary.

use super::RunError;
use crate::cost::Money;
use crate::histogram::Histogram;
use crate::output::jsonl::{self, Drained, JsonlWriter, WriterMsg};
use crate::output::{ErrorKind, Status};
use crate::progress::Counters;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{mpsc, Arc};
use std::time::Duration;
use tokio::sync::Notify;

/// The running writer: where records go, and how to learn that writing failed.
pub(super) struct Writer {
    pub(super) sender: mpsc::Sender<WriterMsg>,
    /// Notified once, when a write first fails (the run then stops admitting).
    pub(super) failed: Arc<Notify>,
    thread: std::thread::JoinHandle<(Drained, Histogram)>,
}

/// What the writer reports once every sender is gone.
pub(super) struct Written {
    pub(super) drained: Drained,
    pub(super) latency: Histogram,
}

/// A record on disk, counted: its status, tokens and money, once.
pub(super) fn count(counters: &Counters, r: &crate::output::Record) {
    match (&r.status, &r.error) {
        (Status::Ok, _) => {
            counters.ok.fetch_add(1, Relaxed);
        }
        (Status::Failed, e) => counters.failed(e.as_ref().map_or(ErrorKind::Server, |e| e.kind)),
    }
    counters
        .prompt_tokens
        .fetch_add(r.prompt_tokens.unwrap_or(0), Relaxed);
    counters
        .completion_tokens
        .fetch_add(r.output_tokens().unwrap_or(0), Relaxed);
    if let Some(c) = r.cost_usd {
        counters.spent.fetch_add(Money::from_usd(c).0, Relaxed);
    }
    counters.note_record(r);
    counters.written.fetch_add(1, Relaxed);
}

impl Writer {
    /// Opens `output` for appending and starts the thread. A failed write is retried for
    /// `retry_for` (the grace period) while answers in flight arrive.
    pub(super) fn start(
        output: &Path,
        counters: Arc<Counters>,
        retry_for: Duration,
        done: Option<crate::coordinator::DoneSender>,
    ) -> Result<Writer, RunError> {
        let file = JsonlWriter::open(output).map_err(|e| match e.source.kind() {
            // Another run took the output between this run's check and its first write.
            std::io::ErrorKind::WouldBlock => {
                RunError::Checkpoint(crate::checkpoint::CheckpointError::Locked {
                    path: output.to_path_buf(),
                    pid: None,
                })
            }
            _ => RunError::Write(e),
        })?;
        let (sender, rx) = mpsc::channel();
        let failed = Arc::new(Notify::new());
        let notify = failed.clone();
        let thread = std::thread::Builder::new()
            .name("bulkprompt-writer".into())
            .spawn(move || {
                let mut latency = Histogram::default();
                let drained = jsonl::drain(
                    file,
                    rx,
                    retry_for,
                    |_| notify.notify_one(),
                    |r| {
                        latency.record(r.latency_ms);
                        count(&counters, r);
                        if let (Some(done), Status::Ok) = (&done, &r.status) {
                            let _ = done.send(crate::job::IdKey::of(r.id.as_bytes()));
                        }
                    },
                    || {
                        let n = counters.written.load(Relaxed);
                        counters.durable.store(n, Relaxed);
                    },
                );
                (drained, latency)
            })
            .map_err(RunError::Thread)?;
        Ok(Writer {
            sender,
            failed,
            thread,
        })
    }

    /// Waits for the thread to write what it holds. Every sender must be dropped first.
    pub(super) fn join(self) -> Result<Written, RunError> {
        drop(self.sender);
        let (drained, latency) = self
            .thread
            .join()
            .map_err(|_| RunError::Thread(std::io::Error::other("the writer thread panicked")))?;
        if drained.written_late > 0 {
            tracing::warn!(
                "{} answers were written after the write failure cleared",
                drained.written_late
            );
        }
        Ok(Written { drained, latency })
    }
}
