//! One job's life after the dispatcher admits it: attempts through the client, each judged by
//! `classify`, retries with backoff (each through the limiter again), the record built with its
//! usage and cost, the budget settled, the circuit breaker told, and the record handed to the
//! writer. `Ctx` is what every task shares.

use super::roles::{Control, Pacing, Policy, Recording, Spending};
use crate::budget::{Budget, CapReached, Refused, Reservation};
use crate::cost::Money;
use crate::job::Job;
use crate::limit::Grant;
use crate::output::record::timestamp;
use crate::output::{Record, RecordError, Status};
use crate::provider::{Client, ErrorKind};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};

/// What the dispatcher and the job tasks share: the client and the in-flight limiter, and one
/// of each role ([`super::roles`]).
pub(super) struct Ctx {
    pub(super) client: Client,
    /// Where requests go, for messages.
    pub(super) endpoint: String,
    /// Attempts in flight: the concurrency the server takes, found under `--concurrency`.
    pub(super) flight: crate::flight::Flight,
    pub(super) pacing: Pacing,
    pub(super) money: Spending,
    pub(super) records: Recording,
    pub(super) control: Control,
    pub(super) policy: Policy,
}

/// A job's hold on the budget; settles with zero if the job ends without a record (shutdown,
/// abort, or its task dropped), so an abandoned job never keeps money reserved.
pub(super) struct Hold {
    pub(super) budget: Arc<dyn Budget>,
    pub(super) reservation: Option<Reservation>,
}

impl Hold {
    pub(super) fn settle(mut self, actual: Money) {
        if let Some(r) = self.reservation.take() {
            self.budget.settle(r, actual);
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(r) = self.reservation.take() {
            self.budget.settle(r, Money::ZERO);
        }
    }
}

/// Why a job got no hold on the budget.
pub(super) enum NoHold {
    /// The cap would be crossed.
    Cap(CapReached),
    /// The shared budget cannot be reached: the run is aborted.
    Stopped,
}

impl Ctx {
    /// Holds `worst()` for a job (no budget, no hold, and the worst case is not worked out).
    /// A shared budget out of reach aborts the run (exit 4): nothing may be sent that the cap
    /// has not seen.
    pub(super) async fn reserve(
        &self,
        worst: impl FnOnce() -> Money,
    ) -> Result<Option<Hold>, NoHold> {
        let Some(b) = &self.money.budget else {
            return Ok(None);
        };
        match b.reserve(worst()).await {
            Ok(r) => Ok(Some(Hold {
                budget: b.clone(),
                reservation: Some(r),
            })),
            Err(Refused::Cap(cap)) => Err(NoHold::Cap(cap)),
            Err(Refused::Unreachable(e)) => {
                self.abort(e.0);
                Err(NoHold::Stopped)
            }
        }
    }

    /// A grant of the rate limit for `charge` tokens; none when a shared limit cannot be
    /// reached (the run is aborted, exit 4: nothing is sent unpaced).
    pub(super) async fn acquire(&self, charge: u64) -> Option<Grant> {
        if let Some(g) = self.pacing.limiter.try_acquire(charge) {
            return Some(g);
        }
        let asked = std::time::Instant::now();
        let granted = self.pacing.limiter.acquire(charge).await;
        let waited = asked.elapsed();
        if waited >= Duration::from_millis(1) {
            self.records.counters.limiter_waits.fetch_add(1, Relaxed);
            self.records
                .counters
                .limiter_wait_us
                .fetch_add(waited.as_micros() as u64, Relaxed);
        }
        match granted {
            Ok(g) => Some(g),
            Err(e) => {
                self.abort(e.0);
                None
            }
        }
    }

    pub(super) fn open(&self) {
        self.control.open();
    }

    pub(super) fn abort(&self, reason: String) {
        self.control.abort(reason);
    }

    pub(super) fn aborted(&self) -> bool {
        self.control.aborted()
    }

    /// Resolves when the run is aborted or asked to stop admitting.
    pub(super) async fn stopping(&self) {
        self.control.stopping().await
    }

    /// Counts a record for the circuit breaker, which may stop the run.
    pub(super) fn note_result(&self, record: &Record) {
        if let Some(why) = self.records.breaker.note(record) {
            self.abort(why);
        }
    }
}

/// What became of one job task.
pub(super) enum TaskEnd {
    /// A record was handed to the writer.
    Recorded,
    /// Stopped before an answer (shutdown or abort): no record, the next run does it.
    Abandoned,
}

pub(super) fn base_record(
    job: &Job,
    started: SystemTime,
    attempts: u32,
    latency: Duration,
) -> Box<Record> {
    // Made in its box: a record is some 700 bytes, and moves through the job's life, the
    // writer's channel and the writer as this pointer.
    Box::new(Record {
        id: job.id.as_str().to_owned(),
        index: job.index,
        status: Status::Ok,
        model: job.model.clone(),
        response_model: None,
        content: None,
        parsed: None,
        finish_reason: None,
        tool_calls: None,
        choices: None,
        fallback_model: None,
        stale: None,
        dedup_of: None,
        response: None,
        prompt: None,
        prompt_tokens: None,
        completion_tokens: None,
        total_tokens: None,
        cached_tokens: None,
        reasoning_tokens: None,
        billed_output_tokens: None,
        usage_rule: None,
        cost_usd: None,
        cost_source: None,
        upstream_cost_usd: None,
        latency_ms: latency.as_millis() as u64,
        attempts,
        retries: None,
        error: None,
        started_at: timestamp(started),
        finished_at: timestamp(SystemTime::now()),
        metadata: job.metadata.clone(),
        fingerprint: job.fingerprint.hex(),
    })
}

/// Runs one job's task: [`execute`], with a panic caught and turned into a failed record (so
/// a bug costs one job, counted and visible, never a silent hole in the output).
pub(super) async fn run_job(
    ctx: Arc<Ctx>,
    job: Box<Job>,
    decision: crate::checkpoint::Decision,
    first: Grant,
    hold: Option<Hold>,
) -> TaskEnd {
    let started = SystemTime::now();
    // Boxed where it is made: the task's own future stays small as it is spawned and moved.
    let life = Box::pin(super::attempts::execute(
        &ctx,
        &job,
        decision,
        (first, hold),
        started,
    ));
    match CatchUnwind(life).await {
        Ok(end) => end,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            tracing::error!(id = %job.id, "a job task panicked (a bulkprompt bug): {what}");
            let mut r = base_record(&job, started, 0, Duration::ZERO);
            r.status = Status::Failed;
            r.error = Some(RecordError {
                kind: ErrorKind::Internal,
                http_status: None,
                message: format!(
                    "bulkprompt bug: this job's task panicked ({what}); the next run retries it"
                ),
            });
            ctx.records.send(r);
            TaskEnd::Recorded
        }
    }
}

/// A future whose panic is caught and returned.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let fut = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

/// Debug builds only: `BULKPROMPT_TEST_PANIC_ID=<id>` makes that job's task panic, so the
/// integration tests can check that a bug in a task is recorded and counted.
pub(super) fn test_panic(job: &Job) {
    #[cfg(debug_assertions)]
    if std::env::var("BULKPROMPT_TEST_PANIC_ID").is_ok_and(|id| id == job.id.as_str()) {
        panic!("test panic for job {}", job.id);
    }
    let _ = job;
}
