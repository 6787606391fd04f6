//! One job's life after the dispatcher admits it: attempts through the client, each judged by
//! `classify`, retries with backoff (each through the limiter again), the record built with its
//! usage and cost, the budget settled, the circuit breaker told, and the record handed to the
//! writer. `Ctx` is what every task shares.

use super::latch::{Abort, Latch};
use crate::budget::{Budget, CapReached, Refused, Reservation};
use crate::cost::{Money, PriceTable, Usage};
use crate::job::Job;
use crate::limit::{Grant, RateLimit};
use crate::output::jsonl::WriterMsg;
use crate::output::record::{timestamp, Choice};
use crate::output::{CostSource, Record, RecordError, Status};
use crate::progress::Counters;
use crate::provider::{classify, Client, Completion, ErrorKind, Verdict};
use crate::retry::Backoff;
use crate::shutdown::{Phase, Shutdown};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, SystemTime};

/// State shared by the dispatcher and the job tasks.
pub(super) struct Ctx {
    pub(super) client: Client,
    /// Where requests go, for messages.
    pub(super) endpoint: String,
    pub(super) limiter: Arc<dyn RateLimit>,
    /// `--ignore-limit-headers`: the `x-ratelimit-*` headers (limits, remaining, reset) do not
    /// pace the run; `Retry-After` still does.
    pub(super) ignore_limit_headers: bool,
    pub(super) counters: Arc<Counters>,
    pub(super) prices: PriceTable,
    pub(super) writer: std::sync::mpsc::Sender<WriterMsg>,
    pub(super) shutdown: Shutdown,
    pub(super) max_attempts: u32,
    pub(super) backoff: Backoff,
    pub(super) default_output_tokens: u64,
    pub(super) keep_response: bool,
    /// `--keep-prompt`: records keep the messages sent.
    pub(super) keep_prompt: bool,
    /// Set once a first answer shows the endpoint and key work; until then one request at a time.
    pub(super) opened: Latch,
    /// Why the run was aborted, if it was.
    pub(super) abort: Abort,
    pub(super) warned_unpriced: AtomicBool,
    /// Warned once that an answer's usage could not be read.
    pub(super) warned_usage: AtomicBool,
    pub(super) budget: Option<Arc<dyn Budget>>,
    /// Jobs failing in a row with the same kind of error; `breaker_at` of them stop the run.
    pub(super) streak: Mutex<(Option<ErrorKind>, u32)>,
    pub(super) breaker_at: u32,
    /// Per model, the worst ratio seen of a recorded cost to its job's worst case, where it
    /// was above 1 (a provider billing more than the price table says): later reservations
    /// for that model are scaled by it.
    pub(super) cost_ratio: Mutex<HashMap<String, f64>>,
    /// Per model, the completion tokens answers really used: once enough are seen, the token
    /// bucket reserves their 95th percentile instead of every job's whole `max_tokens`.
    pub(super) completions: Mutex<HashMap<String, crate::histogram::Histogram>>,
    /// Compiled answer schemas.
    pub(super) validators: crate::answer::Validators,
    /// Times an invalid answer is asked again.
    pub(super) retry_invalid: u32,
    /// Models tried in turn when the provider says a job's model is not there.
    pub(super) fallback_models: Vec<String>,
    /// Attempts in flight: the concurrency the server takes, found under `--concurrency`.
    pub(super) flight: crate::flight::Flight,
}

/// Answers of a model seen before its typical length replaces `max_tokens` in the token bucket.
const LEARN_AFTER: u64 = 20;

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
    /// Holds `worst` for a job (no budget, no hold). A shared budget out of reach aborts the
    /// run (exit 4): nothing may be sent that the cap has not seen.
    pub(super) async fn reserve(&self, worst: Money) -> Result<Option<Hold>, NoHold> {
        let Some(b) = &self.budget else {
            return Ok(None);
        };
        match b.reserve(worst).await {
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
        let asked = std::time::Instant::now();
        let granted = self.limiter.acquire(charge).await;
        let waited = asked.elapsed();
        if waited >= Duration::from_millis(1) {
            self.counters.limiter_waits.fetch_add(1, Relaxed);
            self.counters
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
        self.opened.set();
    }

    pub(super) fn abort(&self, reason: String) {
        self.abort.abort(reason);
        self.open();
    }

    /// The circuit breaker: a run where job after job fails the same way (an outage longer
    /// than the retry budget, a model that does not exist) stops instead of marking a million
    /// jobs failed.
    pub(super) fn note_result(&self, record: &Record) {
        if self.breaker_at == 0 {
            return;
        }
        let mut streak = self.streak.lock().unwrap_or_else(|p| p.into_inner());
        match &record.error {
            None => *streak = (None, 0),
            Some(e) if streak.0 == Some(e.kind) => streak.1 += 1,
            Some(e) => *streak = (Some(e.kind), 1),
        }
        if streak.1 == self.breaker_at {
            let e = record
                .error
                .as_ref()
                .map(|e| (e.kind.as_str(), e.http_status, e.message.clone()));
            drop(streak);
            if let Some((kind, status, message)) = e {
                let status = status.map(|s| format!("HTTP {s}, ")).unwrap_or_default();
                self.abort(format!(
                    "circuit breaker: {} jobs in a row failed with {kind} ({status}last: {message}); the provider looks down or the requests are wrong; re-run later to resume",
                    self.breaker_at
                ));
            }
        }
    }

    /// The record with the messages sent, under `--keep-prompt`.
    pub(super) fn with_prompt(&self, job: &Job, mut r: Record) -> Record {
        if self.keep_prompt {
            r.prompt = serde_json::from_slice::<serde_json::Value>(&job.body)
                .ok()
                .and_then(|mut b| b.get_mut("messages").map(serde_json::Value::take));
        }
        r
    }

    pub(super) fn aborted(&self) -> bool {
        self.abort.is_set()
    }

    /// Resolves when the run is aborted or asked to stop admitting.
    pub(super) async fn stopping(&self) {
        tokio::select! {
            _ = self.abort.wait() => {}
            _ = self.shutdown.reached(Phase::Draining) => {}
        }
    }

    /// What the token bucket is charged for `job`: its prompt estimate and the output it will
    /// likely use (reconciled with the real usage when the answer comes). The budget keeps
    /// reserving the whole allowance ([`Ctx::worst_case`]): it is a hard cap.
    pub(super) fn charge(&self, job: &Job) -> u64 {
        let allowance = self.output_allowance(job);
        let learned = {
            let seen = self.completions.lock().unwrap_or_else(|p| p.into_inner());
            seen.get(&job.model)
                .filter(|h| h.count() >= LEARN_AFTER)
                .and_then(|h| h.quantile(0.95))
        };
        job.est_prompt_tokens as u64 + learned.map_or(allowance, |l| l.clamp(1, allowance))
    }

    /// Notes how many completion tokens an answer of `model` used.
    fn learn_completion(&self, model: &str, tokens: u64) {
        let mut seen = self.completions.lock().unwrap_or_else(|p| p.into_inner());
        match seen.get_mut(model) {
            Some(h) => h.record(tokens),
            None => {
                let mut h = crate::histogram::Histogram::default();
                h.record(tokens);
                seen.insert(model.to_string(), h);
            }
        }
    }

    /// The output a job may be billed: its allowance for every choice it asks for (`n`).
    pub(super) fn output_allowance(&self, job: &Job) -> u64 {
        job.max_output_tokens
            .map_or(self.default_output_tokens, u64::from)
            .saturating_mul(u64::from(job.choices.max(1)))
    }

    /// The most `job` can cost: the price table's worst case ([`Ctx::table_worst_case`]),
    /// scaled by what this run has learnt of the model's real bills.
    pub(super) fn worst_case(&self, job: &Job) -> Money {
        self.worst_case_of(job, &job.model)
    }

    /// [`Ctx::worst_case`] of `job` sent to `model` (a fallback).
    pub(super) fn worst_case_of(&self, job: &Job, model: &str) -> Money {
        let base = self.table_worst_case(job, model);
        let ratios = self.cost_ratio.lock().unwrap_or_else(|p| p.into_inner());
        match ratios.get(model) {
            Some(&r) => Money((base.0 as f64 * r).ceil().min(u64::MAX as f64 / 8.0) as u64),
            None => base,
        }
    }

    /// Learns from a recorded cost the price table did not foresee: later reservations for
    /// the model grow by the worst ratio seen, so a wrong price table (or a provider's
    /// surcharge) cannot carry the run past `--max-cost` job after job. Two ratios count: the
    /// provider's bill over the table's price of the same usage (exact when the provider's
    /// markup is steady, whatever the answer's length), and the bill over the job's worst case
    /// (an answer longer than its `max_tokens`).
    fn learn_cost(&self, job: &Job, model: &str, c: &Completion, actual: Money) {
        if self.budget.is_none() || actual == Money::ZERO {
            return;
        }
        let worst = self.table_worst_case(job, model);
        let listed = match (self.prices.get(model), &c.usage) {
            (Some(p), Some(u)) => p.cost(u, job.images),
            _ => Money::ZERO,
        };
        let ratio_of = |base: Money| {
            (base > Money::ZERO && actual > base).then(|| actual.0 as f64 / base.0 as f64)
        };
        let Some(ratio) = [ratio_of(listed), ratio_of(worst)]
            .into_iter()
            .flatten()
            .reduce(f64::max)
        else {
            return;
        };
        let mut ratios = self.cost_ratio.lock().unwrap_or_else(|p| p.into_inner());
        let known = ratios.get(model).copied();
        if known.is_none_or(|k| ratio > k) {
            ratios.insert(model.to_string(), ratio);
            drop(ratios);
            let say = format!(
                "--max-cost: job {} of model {model:?} cost {actual}, {ratio:.2}x what the price table foresaw; later jobs of this model reserve {ratio:.2}x their worst case",
                job.id
            );
            if known.is_none() {
                tracing::warn!("{say}");
            } else {
                tracing::debug!("{say}");
            }
        }
    }

    /// The most `job` can cost by the price table. Prompt tokens are bounded by half the
    /// request body's bytes: a byte-level BPE token is at least one byte, natural language
    /// averages three to four bytes a token, and the body also carries JSON punctuation, tools
    /// and schemas.
    pub(super) fn table_worst_case(&self, job: &Job, model: &str) -> Money {
        match self.prices.get(model) {
            Some(p) => p.worst_case(
                job.body.len().div_ceil(2) as u64,
                self.output_allowance(job),
                job.images,
            ),
            // Refused before the run starts under --max-cost.
            None => Money(u64::MAX / 4),
        }
    }

    /// Fills a record with what an answer carries (served model, content, every choice, tool
    /// calls, usage, the raw body under `--keep-response`): one shape for live and batch
    /// answers. Returns the check of the first choice against the job's schema.
    pub(super) fn answer_into(
        &self,
        job: &Job,
        r: &mut Record,
        c: Completion,
        raw: Option<&[u8]>,
    ) -> Result<Option<serde_json::Value>, String> {
        let checked = self.validators.check(&job.expect, c.content.as_deref());
        let u: Option<Usage> = c.usage;
        r.response_model = c.response_model;
        r.finish_reason = c.finish_reason;
        r.prompt_tokens = u.map(|u| u.prompt);
        r.completion_tokens = u.map(|u| u.completion);
        r.total_tokens = u.map(|u| u.prompt + u.completion);
        r.cached_tokens = u.map(|u| u.cached);
        r.reasoning_tokens = u.map(|u| u.reasoning);
        if self.keep_response {
            r.response = raw.and_then(|b| serde_json::from_slice(b).ok());
        }
        if !c.more.is_empty() {
            let parse =
                |content: Option<&str>| self.validators.check(&job.expect, content).ok().flatten();
            let mut all = vec![Choice {
                content: c.content.clone(),
                finish_reason: r.finish_reason.clone(),
                tool_calls: c.tool_calls.clone(),
                parsed: checked.as_ref().ok().cloned().flatten(),
            }];
            all.extend(c.more.into_iter().map(|m| Choice {
                parsed: parse(m.content.as_deref()),
                content: m.content,
                finish_reason: m.finish_reason,
                tool_calls: m.tool_calls,
            }));
            r.choices = Some(all);
        }
        r.content = c.content;
        r.tool_calls = c.tool_calls;
        checked
    }

    pub(super) fn cost(
        &self,
        job: &Job,
        model: &str,
        c: &Completion,
    ) -> (Option<Money>, Option<CostSource>) {
        self.cost_at(job, model, c, |p, u| p.cost(u, job.images))
    }

    /// The cost of an answer: the provider's own figure first, else its usage at `price` of
    /// the model's (or the served model's) listed price (live or batch). A paid answer whose usage cannot be
    /// read is taken at the job's worst case, with a warning, so the cap still counts it.
    pub(super) fn cost_at(
        &self,
        job: &Job,
        model: &str,
        c: &Completion,
        price: impl Fn(&crate::cost::Price, &Usage) -> Money,
    ) -> (Option<Money>, Option<CostSource>) {
        if let Some(usd) = c.provider_cost {
            return (Some(Money::from_usd(usd)), Some(CostSource::Provider));
        }
        let listed = self
            .prices
            .get(model)
            .or_else(|| c.response_model.as_deref().and_then(|m| self.prices.get(m)));
        match (listed, &c.usage, &c.usage_problem) {
            (Some(p), Some(u), _) => (Some(price(p, u)), Some(CostSource::PriceTable)),
            (Some(_), None, Some(problem)) => {
                // At the full price, batch or not: nothing says what share was billed.
                let worst = self.table_worst_case(job, model);
                if !self.warned_usage.swap(true, Relaxed) {
                    tracing::warn!(
                        "job {}: the answer's usage cannot be read ({problem}); its cost is recorded at the job's worst case, {worst}",
                        job.id
                    );
                }
                (Some(worst), Some(CostSource::WorstCase))
            }
            (None, Some(_), _) => {
                self.counters.unpriced.fetch_add(1, Relaxed);
                if !self.warned_unpriced.swap(true, Relaxed) {
                    tracing::warn!("model {model:?} has no known price: its cost is recorded as null (add it with --prices)");
                }
                (None, None)
            }
            _ => (None, None),
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
) -> Record {
    Record {
        id: job.id.to_string(),
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
        response: None,
        prompt: None,
        prompt_tokens: None,
        completion_tokens: None,
        total_tokens: None,
        cached_tokens: None,
        reasoning_tokens: None,
        cost_usd: None,
        cost_source: None,
        latency_ms: latency.as_millis() as u64,
        attempts,
        error: None,
        started_at: timestamp(started),
        finished_at: timestamp(SystemTime::now()),
        metadata: job.metadata.clone(),
        fingerprint: job.fingerprint.to_string(),
    }
}

/// Runs one job's task: [`execute`], with a panic caught and turned into a failed record (so
/// a bug costs one job, counted and visible, never a silent hole in the output).
pub(super) async fn run_job(ctx: Arc<Ctx>, job: Job, first: Grant, hold: Option<Hold>) -> TaskEnd {
    let started = SystemTime::now();
    match CatchUnwind(Box::pin(execute(&ctx, &job, first, hold))).await {
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
            let _ = ctx.writer.send(Box::new(r));
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
fn test_panic(job: &Job) {
    #[cfg(debug_assertions)]
    if std::env::var("BULKPROMPT_TEST_PANIC_ID").is_ok_and(|id| id == job.id.as_str()) {
        panic!("test panic for job {}", job.id);
    }
    let _ = job;
}

/// Whether a refusal says the model does not exist or is not available (a fallback applies).
fn model_unavailable(status: Option<u16>, message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    match status {
        Some(404) => true,
        Some(400 | 422) => {
            m.contains("model")
                && [
                    "not found",
                    "does not exist",
                    "unknown",
                    "not available",
                    "invalid model",
                    "not a valid model",
                    "no endpoints",
                    "unsupported",
                ]
                .iter()
                .any(|w| m.contains(w))
        }
        _ => false,
    }
}

/// The request body with another model.
fn with_model(body: &bytes::Bytes, model: &str) -> bytes::Bytes {
    match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body) {
        Ok(mut m) => {
            m.insert("model".into(), serde_json::Value::String(model.into()));
            serde_json::to_vec(&m)
                .map(Into::into)
                .unwrap_or_else(|_| body.clone())
        }
        Err(_) => body.clone(),
    }
}

/// A job's attempts: sends, classifies, retries (through the limiter again), asks again after
/// an invalid answer (`--retry-invalid`), falls back to the next model when the provider says
/// a model is not there, and hands one record to the writer. Money paid for answers that were
/// not kept (invalid ones) is carried into the job's record, whatever ends it, so the output's
/// total is what the provider billed.
async fn execute(ctx: &Ctx, job: &Job, first: Grant, mut hold: Option<Hold>) -> TaskEnd {
    let started = SystemTime::now();
    // What the dispatcher charged the first grant: retries are charged the same.
    let charge = first.tokens;
    let mut grant = Some(first);
    let mut attempts = 0u32;
    // Attempts at the current model (`--max-attempts` is per model).
    let mut tries = 0u32;
    // 0: the job's own model; i: the i-th `--fallback-model`.
    let mut model_at = 0usize;
    let mut model: &str = &job.model;
    // Local images are read and encoded now, as the job goes, never held for the whole file.
    let base_body = if job.image_files.is_empty() {
        job.body.clone()
    } else {
        let (body, files) = (job.body.clone(), job.image_files.clone());
        let embedded = tokio::task::spawn_blocking(move || crate::job::image::embed(&body, &files))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        match embedded {
            Ok(b) => b.into(),
            Err(message) => {
                let mut r = base_record(job, started, 0, Duration::ZERO);
                r.status = Status::Failed;
                r.error = Some(RecordError {
                    kind: ErrorKind::Client,
                    http_status: None,
                    message: format!(
                        "{message}; not sent (fix the file, then re-run with --retry-failed)"
                    ),
                });
                ctx.limiter.reconcile(first, 0);
                ctx.open();
                ctx.note_result(&r);
                let _ = ctx.writer.send(Box::new(r));
                return TaskEnd::Recorded;
            }
        }
    };
    let mut body = base_body.clone();
    // Paid for answers that were not kept, and the last of them as a record: written if the
    // job ends without another (a stop), so no paid answer goes unrecorded.
    let mut paid = Money::ZERO;
    let mut invalid = 0u32;
    let mut pending: Option<Record> = None;
    let abandon = |pending: Option<Record>| match pending {
        Some(r) => {
            ctx.note_result(&r);
            let _ = ctx.writer.send(Box::new(r));
            TaskEnd::Recorded
        }
        None => TaskEnd::Abandoned,
    };
    loop {
        let g = match grant.take() {
            Some(g) => g,
            None => tokio::select! {
                g = ctx.acquire(charge) => match g {
                    Some(g) => g,
                    None => return abandon(pending),
                },
                _ = ctx.stopping() => return abandon(pending),
            },
        };
        attempts += 1;
        tries += 1;
        // A place under the in-flight limit (a timed-out attempt comes back here only once
        // the limit has come down).
        let slot = tokio::select! {
            s = ctx.flight.acquire() => s,
            _ = ctx.stopping() => return abandon(pending),
        };
        ctx.counters.requests.fetch_add(1, Relaxed);
        let send = ctx.client.send(body.clone());
        let (attempt, latency) = tokio::select! {
            r = send => r,
            _ = ctx.shutdown.reached(Phase::Now) => return abandon(pending),
        };
        test_panic(job);
        ctx.counters.statuses.count(match &attempt {
            crate::provider::Attempt::Http { status, .. } => Some(*status),
            _ => None,
        });
        if let crate::provider::Attempt::Http {
            status,
            quota_exhausted,
            advertised,
            ..
        } = &attempt
        {
            if *status != 429 {
                ctx.limiter.answered();
            }
            if !ctx.ignore_limit_headers {
                if let Some(d) = quota_exhausted {
                    ctx.limiter.pause(*d);
                    ctx.counters
                        .paused(*d, "the provider's quota for this minute is used up");
                }
                if *advertised != crate::limit::Advertised::default() {
                    ctx.limiter.advertised(*advertised);
                }
            }
        }
        let raw = match (&attempt, ctx.keep_response) {
            (
                crate::provider::Attempt::Http {
                    status: 200..=299,
                    body,
                    ..
                },
                true,
            ) => Some(body.clone()),
            _ => None,
        };
        let fallback = (model_at > 0).then(|| model.to_string());
        // Provider texts arrive scrubbed of the run's secrets (Client::send).
        let failed = |kind: ErrorKind, status: Option<u16>, message: String| {
            let mut r = base_record(job, started, attempts, latency);
            r.status = Status::Failed;
            r.fallback_model = fallback.clone();
            r.error = Some(RecordError {
                kind,
                http_status: status,
                message,
            });
            if paid > Money::ZERO {
                r.cost_usd = Some(paid.usd());
                r.cost_source = Some(CostSource::PriceTable);
            }
            r
        };
        // The next model to try, if the provider says this one is not there.
        let next_model = ctx.fallback_models.get(model_at);
        let verdict = classify(attempt, SystemTime::now());
        slot.done(match &verdict {
            Verdict::Done(_) => crate::flight::Sample::Answer,
            Verdict::Retry {
                kind: ErrorKind::Timeout,
                ..
            } => crate::flight::Sample::Timeout,
            _ => crate::flight::Sample::Other,
        });
        let record = match verdict {
            Verdict::Done(c) => {
                let total = c.usage.map_or(charge, |u| u.prompt + u.completion);
                ctx.limiter.reconcile(g, total);
                if let Some(u) = &c.usage {
                    ctx.learn_completion(model, u.completion);
                }
                let (cost, source) = ctx.cost(job, model, &c);
                let this = cost.unwrap_or(Money::ZERO);
                // Learn and settle before opening the gate: the first job goes alone so that
                // the next reservation sees what it really cost.
                ctx.learn_cost(job, model, &c, this);
                if let Some(h) = hold.take() {
                    h.settle(this);
                }
                ctx.open();
                let mut r = base_record(job, started, attempts, latency);
                r.fallback_model = fallback.clone();
                r.cost_usd = match (paid > Money::ZERO, cost) {
                    (true, _) => Some((paid + this).usd()),
                    (false, c) => c.map(Money::usd),
                };
                r.cost_source = source;
                let cut = c.finish_reason.as_deref() == Some("length");
                let checked = ctx.answer_into(job, &mut r, *c, raw.as_deref());
                match checked {
                    Ok(parsed) => {
                        r.parsed = parsed;
                        r
                    }
                    Err(why) => {
                        ctx.counters.invalid(this);
                        paid += this;
                        invalid += 1;
                        r.status = Status::Failed;
                        r.error = Some(RecordError {
                            kind: ErrorKind::InvalidOutput,
                            http_status: None,
                            message: match cut {
                                true => format!(
                                    "cut at max_tokens {}: raise --max-tokens ({why}; {invalid} invalid answer{} paid for)",
                                    ctx.output_allowance(job) / u64::from(job.choices.max(1)),
                                    if invalid == 1 { "" } else { "s" }
                                ),
                                false => format!(
                                    "{why} ({invalid} invalid answer{} paid for)",
                                    if invalid == 1 { "" } else { "s" }
                                ),
                            },
                        });
                        // An answer cut at `max_tokens` would be cut again: asking again buys
                        // the same answer twice.
                        let again = !cut
                            && invalid <= ctx.retry_invalid
                            && ctx.shutdown.phase() < Phase::Draining
                            && !ctx.aborted();
                        // The next answer is paid for too: it reserves its worst case again.
                        let held = match again {
                            true => ctx.reserve(ctx.worst_case_of(job, model)).await.ok(),
                            false => None,
                        };
                        match held {
                            Some(h) => {
                                hold = h;
                                tracing::debug!(id = %job.id, "asking again: {why}");
                                pending = Some(r);
                                continue;
                            }
                            None => r,
                        }
                    }
                }
            }
            Verdict::Retry {
                kind,
                status,
                after,
                message,
            } => {
                ctx.limiter.reconcile(g, 0);
                if status.is_some() {
                    ctx.open();
                }
                if kind == ErrorKind::RateLimited {
                    ctx.counters.http_429.fetch_add(1, Relaxed);
                    if let Some(d) = after {
                        ctx.counters.paused(d, "rate limit");
                    }
                    if ctx.limiter.rate_limited(after) {
                        if let Some(d) = after.filter(|d| *d >= Duration::from_secs(1)) {
                            tracing::info!(
                                "dispatch paused {:.0} s: the provider's rate limit (HTTP 429)",
                                d.as_secs_f64()
                            );
                        }
                    }
                }
                if tries >= ctx.max_attempts {
                    if let (Some(503), Some(next)) = (status, next_model) {
                        tracing::debug!(id = %job.id, "model {model:?} unavailable (503): trying {next:?}");
                        model_at += 1;
                        model = next;
                        body = with_model(&base_body, model);
                        tries = 0;
                        continue;
                    }
                    if status.is_none() && !ctx.opened.is_set() {
                        // Not one HTTP answer yet, and the first job used up its attempts:
                        // the endpoint cannot be reached. Waiting on would never end.
                        ctx.abort(format!(
                            "cannot reach the endpoint {} ({} after {attempts} attempts: {message}); check --endpoint and the network, then re-run to resume",
                            ctx.endpoint,
                            kind.as_str()
                        ));
                    }
                    failed(
                        kind,
                        status,
                        format!("{message} (gave up after {attempts} attempts)"),
                    )
                } else {
                    if ctx.shutdown.phase() >= Phase::Draining || ctx.aborted() {
                        return abandon(pending);
                    }
                    ctx.counters.retry(kind);
                    tracing::debug!(id = %job.id, attempt = attempts, kind = kind.as_str(), "retrying: {message}");
                    let wait = ctx.backoff.delay(tries, fastrand::f64(), after);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = ctx.stopping() => return abandon(pending),
                    }
                    continue;
                }
            }
            Verdict::Fail {
                kind,
                status,
                message,
            } => {
                ctx.limiter.reconcile(g, 0);
                // A 404 on the very first request that is not about a model: the URL is wrong,
                // a fault of the run, not of this job (which stays pending, not failed).
                if status == Some(404)
                    && !ctx.opened.is_set()
                    && !message.to_ascii_lowercase().contains("model")
                {
                    ctx.abort(format!(
                        "the endpoint answered HTTP 404 ({message}) to {}/chat/completions: is the endpoint right? (--endpoint is the base URL, such as https://openrouter.ai/api/v1); nothing was marked failed, re-run once it is fixed",
                        ctx.endpoint.trim_end_matches('/')
                    ));
                    return abandon(pending);
                }
                ctx.open();
                match next_model {
                    Some(next) if model_unavailable(status, &message) => {
                        tracing::debug!(id = %job.id, "model {model:?} not available ({message}): trying {next:?}");
                        model_at += 1;
                        model = next;
                        body = with_model(&base_body, model);
                        tries = 0;
                        // Its price may differ: the reservation is made again for it.
                        let mut refused = None;
                        if let Some(h) = hold.take() {
                            h.settle(Money::ZERO);
                            match ctx.reserve(ctx.worst_case_of(job, model)).await {
                                Ok(h) => hold = h,
                                Err(NoHold::Cap(cap)) => refused = Some(cap),
                                Err(NoHold::Stopped) => return abandon(pending),
                            }
                        }
                        match refused {
                            Some(cap) => failed(
                                ErrorKind::Budget,
                                None,
                                format!("fallback model {model:?} not tried: {cap}"),
                            ),
                            None => continue,
                        }
                    }
                    _ => failed(kind, status, message),
                }
            }
            Verdict::Abort {
                kind,
                status,
                message,
            } => {
                ctx.limiter.reconcile(g, 0);
                ctx.abort(match kind {
                    ErrorKind::Quota => format!(
                        "the provider's account is out of credits or quota (HTTP {status}): {message}; the remaining jobs are pending: add credits or wait for the quota to reset, then re-run to resume"
                    ),
                    _ => format!(
                        "the provider refused the credentials (HTTP {status}): {message}; check --api-key-env and the key's access to the model"
                    ),
                });
                failed(kind, Some(status), message)
            }
        };
        // Paid answers settled their holds as they came; what is left was not paid.
        drop(hold);
        let record = ctx.with_prompt(job, record);
        ctx.note_result(&record);
        let _ = ctx.writer.send(Box::new(record));
        return TaskEnd::Recorded;
    }
}
