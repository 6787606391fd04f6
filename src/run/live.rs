//! The live engine: one request per job. Each job that must run waits, in this order, for an
//! in-flight permit, the first-request gate (until one answer shows the endpoint and key work,
//! nothing else is sent, and that answer's cost is known before the next reservation), its
//! budget reservation and the rate limiter; then a task makes its attempts ([`super::task`]).
//! On a stop or a write failure it admits nothing more and lets the calls in flight finish within
//! the grace period: they are paid for.

use super::engine::{Engine, EngineEnd, Intake};
use super::task::{run_job, Ctx, Hold, NoHold, TaskEnd};
use crate::budget::CapReached;
use crate::checkpoint::Decision;
use crate::limit::Grant;
use crate::shutdown::Phase;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinError, JoinSet};

pub(super) struct LiveEngine {
    pub(super) ctx: Arc<Ctx>,
    pub(super) concurrency: usize,
    pub(super) grace: Duration,
    /// Notified when the writer fails.
    pub(super) write_failed: Arc<Notify>,
}

/// What the dispatcher got for a job.
enum Admit {
    Go(OwnedSemaphorePermit, Grant, Option<Hold>),
    /// The budget cannot hold the job's worst case.
    Cap(CapReached),
    Closed,
}

type Tasks = JoinSet<(Decision, TaskEnd)>;

fn ended(end: &mut EngineEnd, r: Result<(Decision, TaskEnd), JoinError>) {
    match r {
        Ok((decision, TaskEnd::Recorded)) => end.recorded(decision),
        Ok((_, TaskEnd::Abandoned)) => {}
        // Job tasks catch their own panics (and record the job); only an abort lands here.
        Err(e) if e.is_panic() => tracing::error!("a job task panicked: {e}"),
        Err(_) => {}
    }
}

impl Engine for LiveEngine {
    async fn execute(self, intake: &mut Intake<'_>) -> EngineEnd {
        let concurrency = self.concurrency.max(1);
        let permits = Arc::new(Semaphore::new(concurrency));
        let mut tasks = Tasks::new();
        let mut end = EngineEnd::default();
        let failed = self.write_failed.notified();
        tokio::pin!(failed);
        self.dispatch(intake, &permits, &mut tasks, &mut end, &mut failed)
            .await;
        let in_flight = concurrency - permits.available_permits();
        self.drain(tasks, in_flight, &mut end, &mut failed).await;
        end
    }
}

/// Resolves when the writer fails.
type WriteFailed<'a, 'b> = std::pin::Pin<&'a mut tokio::sync::futures::Notified<'b>>;

impl LiveEngine {
    /// Admits job after job and spawns its task, until the intake ends, the run stops, the
    /// cap is reached or the writer fails.
    async fn dispatch(
        &self,
        intake: &mut Intake<'_>,
        permits: &Arc<Semaphore>,
        tasks: &mut Tasks,
        end: &mut EngineEnd,
        failed: &mut WriteFailed<'_, '_>,
    ) {
        let ctx = &self.ctx;
        let mut spawned = 0u64;
        // One wait for a stop for the whole dispatch, not one a job.
        let stopping = ctx.stopping();
        tokio::pin!(stopping);
        loop {
            while let Some(r) = tasks.try_join_next() {
                ended(end, r);
            }
            // The next job and its admission under one watch for a stop (each poll of a
            // watch takes its lock).
            let next = async {
                let (job, decision) = intake.next().await?;
                let admitted = admit(ctx, permits, spawned, &job).await;
                Some((job, decision, admitted))
            };
            let next = tokio::select! {
                biased;
                _ = failed.as_mut() => { end.writer_broke = true; break }
                _ = &mut stopping => break,
                n = next => n,
            };
            let Some((job, decision, admitted)) = next else {
                break;
            };
            let (permit, grant, hold) = match admitted {
                Admit::Go(permit, grant, hold) => (permit, grant, hold),
                Admit::Cap(cap) => {
                    end.cap_reached = Some(cap);
                    break;
                }
                Admit::Closed => break,
            };
            spawned += 1;
            let ctx = ctx.clone();
            // Boxed: the task's future (moved as it is spawned, run and finished) holds a
            // pointer, not the job.
            let job = Box::new(job);
            tasks.spawn(async move {
                ctx.records.counters.in_flight.fetch_add(1, Relaxed);
                let counters = ctx.records.counters.clone();
                let end = run_job(ctx, job, decision, grant, hold).await;
                counters.in_flight.fetch_sub(1, Relaxed);
                drop(permit);
                (decision, end)
            });
        }
    }

    /// Lets calls in flight finish: they are paid for. On a stop or a write failure, within
    /// the grace period (the writer keeps their answers and retries the write meanwhile); a
    /// second stop (Phase::Now) drops them at once, each writing the answer it already paid
    /// for.
    async fn drain(
        &self,
        mut tasks: Tasks,
        in_flight: usize,
        end: &mut EngineEnd,
        failed: &mut WriteFailed<'_, '_>,
    ) {
        let ctx = &self.ctx;
        let grace = self.grace;
        let draining = ctx.control.shutdown.phase() >= Phase::Draining || end.writer_broke;
        if draining && in_flight > 0 {
            tracing::warn!(
                "stopping: waiting up to {}s for {in_flight} requests in flight (press Ctrl-C again to stop now)",
                grace.as_secs()
            );
        }
        // Counted as they end, so a grace period that runs out loses no count.
        let mut done = EngineEnd::default();
        {
            let all = async {
                while let Some(r) = tasks.join_next().await {
                    ended(&mut done, r);
                }
            };
            tokio::pin!(all);
            let bounded = async {
                tokio::select! {
                    _ = tokio::time::sleep(grace) => {}
                    _ = ctx.control.shutdown.reached(Phase::Now) => {}
                }
            };
            if draining {
                tokio::select! {
                    _ = &mut all => {}
                    _ = bounded => {}
                }
            } else {
                tokio::select! {
                    _ = &mut all => {}
                    // A stop that cannot wait: the calls in flight are dropped below (tasks
                    // do not each watch for it).
                    _ = ctx.control.shutdown.reached(Phase::Now) => {}
                    _ = failed.as_mut() => {
                        end.writer_broke = true;
                        tokio::select! {
                            _ = &mut all => {}
                            _ = bounded => {}
                        }
                    }
                }
            }
        }
        end.new += done.new;
        end.retried += done.retried;
        end.changed += done.changed;
        tasks.abort_all();
        while let Some(r) = tasks.join_next().await {
            ended(end, r);
        }
        ctx.records.count_dropped(end);
    }
}

/// A job's place: an in-flight permit, the first-request gate (after the first job), its
/// budget reservation and a grant of the rate limit.
async fn admit(ctx: &Ctx, permits: &Arc<Semaphore>, spawned: u64, job: &crate::job::Job) -> Admit {
    let charge = ctx.pacing.charge(job);
    let Ok(permit) = permits.clone().acquire_owned().await else {
        return Admit::Closed;
    };
    if spawned > 0 {
        ctx.control.opened.wait().await;
    }
    // Both at once: a shared budget and limit are a round trip each.
    let (hold, grant) = tokio::join!(
        ctx.reserve(|| ctx.money.worst_case(job)),
        ctx.acquire(charge)
    );
    match (hold, grant) {
        (Ok(hold), Some(grant)) => Admit::Go(permit, grant, hold),
        (hold, grant) => {
            // The request is not sent: its tokens go back, its hold is released.
            if let Some(g) = grant {
                ctx.pacing.limiter.reconcile(g, 0);
            }
            match hold {
                Err(NoHold::Cap(cap)) => Admit::Cap(cap),
                _ => Admit::Closed,
            }
        }
    }
}
