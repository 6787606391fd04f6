//! The execution-engine seam. Every engine shares what comes before and after it (prepare, the
//! checkpoint, the writer, the budget, progress, the summary) and differs only in how admitted
//! jobs become records: the live engine ([`super::live`]) sends one request per job; a batch
//! engine (provider batch APIs: submit, poll, collect) implements the same trait.
//!
//! [`Intake`] is the shared front: it reads the job stream, asks the checkpoint what each job
//! needs, skips what is done, honours `--limit`, and counts every job it reads. An engine pulls
//! the jobs that must run from it and reports how it ended in an [`EngineEnd`].

use crate::budget::CapReached;
use crate::checkpoint::{Checkpoint, Decision};
use crate::job::{Job, JobStream};
use crate::progress::Counters;
use std::sync::atomic::Ordering::Relaxed;

/// How an engine turns jobs into records.
pub(crate) trait Engine {
    /// Runs every job `intake` yields (or until a stop), handing records to the writer, and
    /// returns once no job of this run is in flight any more.
    async fn execute(self, intake: &mut Intake<'_>) -> EngineEnd;
}

/// Why an engine stopped before the job file ended (none: it ran everything it was given).
#[derive(Debug, Default)]
pub(crate) struct EngineEnd {
    /// Jobs that got a record this run, by why they ran.
    pub(crate) new: u64,
    pub(crate) retried: u64,
    pub(crate) changed: u64,
    /// The budget could not hold the next job's worst case.
    pub(crate) cap_reached: Option<CapReached>,
    /// The writer failed; dispatch stopped.
    pub(crate) writer_broke: bool,
    /// `--no-wait`: batches left running at the provider.
    pub(crate) submitted: u64,
}

impl EngineEnd {
    /// Counts a job that got a record, by what it was dispatched as.
    pub(crate) fn recorded(&mut self, decision: Decision) {
        match decision {
            Decision::Retry => self.retried += 1,
            Decision::Changed => self.changed += 1,
            _ => self.new += 1,
        }
    }

    pub(crate) fn answered(&self) -> u64 {
        self.new + self.retried + self.changed
    }
}

/// What the intake counted.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IntakeCounts {
    /// Jobs read from the file.
    pub(crate) read: u64,
    pub(crate) skipped_done: u64,
    pub(crate) skipped_failed: u64,
    /// Jobs not sent because they are in a batch that was open when the run started.
    pub(crate) in_open_batch: u64,
    /// Jobs handed to the engine.
    pub(crate) handed: u64,
    /// Jobs an earlier process of this shard got an ok record for on another disk (the
    /// coordinator's done ids): not bought again.
    pub(crate) done_elsewhere: u64,
    /// Jobs not sent under `--dedupe`: their request is another job's, answered in the output
    /// or handed to the engine this run; they get a copy of that answer when the run ends.
    pub(crate) deduped: u64,
    /// The stream ended (as opposed to a stop, an error or `--limit`).
    pub(crate) read_all: bool,
}

/// The shared front of every engine: jobs that must run, in file order.
pub(crate) struct Intake<'a> {
    stream: JobStream,
    checkpoint: &'a Checkpoint,
    retry_failed: bool,
    limit: Option<u64>,
    counters: &'a Counters,
    pub(crate) counts: IntakeCounts,
    /// The job file could not be read any more (it changed under the run).
    pub(crate) error: Option<String>,
    /// Ids this run must not send: they sit in batches of the output that were open when
    /// the run started (their answers are the batch's to deliver).
    exclude: std::collections::HashSet<crate::job::IdKey>,
    /// Ids an earlier process of this shard got an ok record for on another disk.
    elsewhere: std::collections::HashSet<crate::job::IdKey>,
    dedupe: Option<Followers>,
}

/// `--dedupe` at the intake: a job whose request the output already answered, or that an
/// earlier job of this run carries, is not handed over.
struct Followers {
    rule: crate::job::Dedupe,
    answered: std::collections::HashSet<u64>,
    handed: std::collections::HashSet<u128>,
}

impl Followers {
    /// Whether `job` follows another job's request (and is not sent).
    fn follows(&mut self, job: &Job) -> bool {
        if !self.rule.applies(job) {
            return false;
        }
        self.answered
            .contains(&Checkpoint::request_key(job.fingerprint))
            || !self.handed.insert(job.fingerprint.0)
    }
}

impl<'a> Intake<'a> {
    pub(crate) fn new(
        stream: JobStream,
        checkpoint: &'a Checkpoint,
        retry_failed: bool,
        limit: Option<u64>,
        counters: &'a Counters,
    ) -> Self {
        Intake {
            stream,
            checkpoint,
            retry_failed,
            limit,
            counters,
            counts: IntakeCounts::default(),
            error: None,
            exclude: Default::default(),
            elsewhere: Default::default(),
            dedupe: None,
        }
    }

    /// Ids done by an earlier process of this shard (the coordinator says), of which this
    /// output holds no ok record: not handed over.
    pub(crate) fn done_elsewhere(&mut self, ids: std::collections::HashSet<crate::job::IdKey>) {
        self.elsewhere = ids
            .into_iter()
            .filter(|k| !self.checkpoint.has_ok(*k))
            .collect();
    }

    /// `--dedupe`: each distinct request is handed over once.
    pub(crate) fn dedupe(&mut self, rule: Option<crate::job::Dedupe>) {
        self.dedupe = rule.map(|rule| Followers {
            rule,
            answered: self.checkpoint.answered_requests(),
            handed: Default::default(),
        });
    }

    /// Ids not to hand over, whatever the checkpoint says.
    pub(crate) fn exclude(&mut self, ids: std::collections::HashSet<crate::job::IdKey>) {
        self.exclude = ids;
    }

    /// Ids not handed over for an open batch.
    pub(crate) fn excluded(&self) -> &std::collections::HashSet<crate::job::IdKey> {
        &self.exclude
    }

    /// What the output held when the run started.
    pub(crate) fn checkpoint(&self) -> &Checkpoint {
        self.checkpoint
    }

    /// The next job that must run, with why; `None` at the end of the file, on a read error
    /// (kept in `error`) or when `--limit` is reached. Cancel-safe: a job is taken from the
    /// stream only when it is returned or counted as skipped.
    pub(crate) async fn next(&mut self) -> Option<(Job, Decision)> {
        loop {
            if self.limit.is_some_and(|l| self.counts.handed >= l) {
                return None;
            }
            let job = match self.stream.next().await {
                None => {
                    self.counts.read_all = true;
                    return None;
                }
                Some(Err(e)) => {
                    self.error = Some(e.to_string());
                    return None;
                }
                Some(Ok(job)) => job,
            };
            self.counts.read += 1;
            if !self.exclude.is_empty() && self.exclude.contains(&job.id.key()) {
                self.counts.in_open_batch += 1;
                self.counters.skipped.fetch_add(1, Relaxed);
                continue;
            }
            if !self.elsewhere.is_empty() && self.elsewhere.contains(&job.id.key()) {
                self.counts.done_elsewhere += 1;
                self.counters.skipped.fetch_add(1, Relaxed);
                continue;
            }
            match self.checkpoint.decide(&job, self.retry_failed) {
                Decision::Done => self.counts.skipped_done += 1,
                Decision::SkipFailed => self.counts.skipped_failed += 1,
                _ if self.dedupe.as_mut().is_some_and(|d| d.follows(&job)) => {
                    self.counts.deduped += 1;
                    continue;
                }
                decision => {
                    self.counts.handed += 1;
                    return Some((job, decision));
                }
            }
            self.counters.skipped.fetch_add(1, Relaxed);
        }
    }
}
