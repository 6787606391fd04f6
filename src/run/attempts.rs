//! A job's life, as stages: its images read, then attempts until a record: each attempt is
//! admitted (a grant of the rate limit, a place under the in-flight limit), sent, judged
//! (`classify`) and acted on (an answer kept or asked again, a retry after a pause, a fallback
//! model, a failure), and one record goes to the writer. Money paid for answers that were not
//! kept (invalid ones) is carried into the job's record, whatever ends it, so the output's
//! total is what the provider billed.

use super::task::{base_record, Ctx, Hold, NoHold, TaskEnd};
use crate::checkpoint::Decision;
use crate::cost::Money;
use crate::job::Job;
use crate::limit::Grant;
use crate::output::{CostSource, Record, RecordError, Retries, Status};
use crate::provider::{classify, Attempt, Completion, ErrorKind, Verdict};
use crate::shutdown::Phase;
use std::borrow::Cow;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime};

/// Runs a job, started at `started`, to its record (or to a stop, which leaves it to the
/// next run).
pub(super) async fn execute(
    ctx: &Ctx,
    job: &Job,
    decision: Decision,
    (first, hold): (Grant, Option<Hold>),
    started: SystemTime,
) -> TaskEnd {
    let base_body = match with_images(ctx, job, started).await {
        Ok(b) => b,
        Err(r) => {
            ctx.pacing.limiter.reconcile(first, 0);
            ctx.open();
            ctx.note_result(&r);
            ctx.records.send(r);
            return TaskEnd::Recorded;
        }
    };
    let mut life = Life {
        ctx,
        job,
        decision,
        started,
        charge: first.tokens,
        grant: Some(first),
        hold,
        attempts: 0,
        tries: 0,
        model_at: 0,
        model: &job.model,
        body: None,
        base_body,
        paid: Money::ZERO,
        invalid: 0,
        pending: None,
        latency: Duration::ZERO,
        retried: Retries::new(),
    };
    loop {
        match life.attempt().await {
            Next::Again => continue,
            Next::Stop => return life.abandon(),
            Next::Record(r) => return life.record(r),
        }
    }
}

/// The request body with the job's local images read and embedded (now, as the job goes,
/// never held for the whole file); a record of the failure when one cannot be read.
async fn with_images<'a>(
    ctx: &Ctx,
    job: &'a Job,
    started: SystemTime,
) -> Result<Cow<'a, bytes::Bytes>, Box<Record>> {
    if job.image_files.is_empty() {
        return Ok(Cow::Borrowed(&job.body));
    }
    let _ = ctx;
    let (body, files) = (job.body.clone(), job.image_files.clone());
    let embedded = tokio::task::spawn_blocking(move || crate::job::image::embed(&body, &files))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    embedded.map(|b| Cow::Owned(b.into())).map_err(|message| {
        let mut r = base_record(job, started, 0, Duration::ZERO);
        r.status = Status::Failed;
        r.error = Some(RecordError {
            kind: ErrorKind::Client,
            http_status: None,
            message: format!("{message}; not sent (fix the file, then re-run with --retry-failed)"),
        });
        r
    })
}

/// What comes after an attempt.
enum Next {
    /// Another attempt (a retry, an invalid answer asked again, a fallback model).
    Again,
    /// Stopped before a record: the next run does the job.
    Stop,
    /// The job's record.
    Record(Box<Record>),
}

/// An answer off its schema: its record so far, its cost, whether `max_tokens` cut it, why.
struct Invalid(Box<Record>, Money, bool, String);

/// A job between its attempts.
struct Life<'a> {
    ctx: &'a Ctx,
    job: &'a Job,
    /// Why it runs, for the count of a record written as its task is dropped.
    decision: Decision,
    started: SystemTime,
    /// What the dispatcher charged the first grant: retries are charged the same.
    charge: u64,
    grant: Option<Grant>,
    /// The worst case held against `--max-cost` for the next answer.
    hold: Option<Hold>,
    attempts: u32,
    /// Attempts at the current model (`--max-attempts` is per model).
    tries: u32,
    /// 0: the job's own model; i: the i-th `--fallback-model`.
    model_at: usize,
    model: &'a str,
    /// The job's body (borrowed, as nearly always: not cloned for each attempt), or with its
    /// images embedded.
    base_body: Cow<'a, bytes::Bytes>,
    /// The body for a fallback model, once one is tried.
    body: Option<bytes::Bytes>,
    /// Paid for answers that were not kept, and the last of them as a record: written if the
    /// job ends without another (a stop), so no paid answer goes unrecorded.
    paid: Money,
    invalid: u32,
    pending: Option<Box<Record>>,
    /// The last attempt's.
    latency: Duration,
    /// The failed attempts that were tried again, by kind (the record's `retries`).
    retried: Retries,
}

impl<'a> Life<'a> {
    /// Admit, send, judge, act.
    async fn attempt(&mut self) -> Next {
        let ctx = self.ctx;
        let Some(g) = self.grant().await else {
            return Next::Stop;
        };
        self.attempts += 1;
        self.tries += 1;
        let Some(slot) = self.place().await else {
            return Next::Stop;
        };
        ctx.records.counters.requests.fetch_add(1, Relaxed);
        // A stop that cannot wait ends the call by dropping the task (the live engine's
        // drain); what this job already paid for is written then ([`Life`]'s drop).
        let body = self.body.as_ref().unwrap_or(&self.base_body);
        let (attempt, latency) = ctx.client.send(body).await;
        self.latency = latency;
        super::task::test_panic(self.job);
        self.heard(&attempt);
        let raw = match (&attempt, ctx.records.keep_response) {
            (
                Attempt::Http {
                    status: 200..=299,
                    body,
                    ..
                },
                true,
            ) => Some(body.clone()),
            _ => None,
        };
        let verdict = classify(attempt, SystemTime::now);
        slot.done(match &verdict {
            Verdict::Done(_) => crate::flight::Sample::Answer,
            Verdict::Retry {
                kind: ErrorKind::Timeout,
                ..
            } => crate::flight::Sample::Timeout,
            _ => crate::flight::Sample::Other,
        });
        match verdict {
            // The rare paths are boxed: their state (a record, a reservation, a timer) is not
            // part of every job's future, which is copied as the task starts.
            Verdict::Done(c) => match self.answered(g, *c, raw) {
                Ok(next) => next,
                Err(invalid) => {
                    let Invalid(r, this, cut, why) = invalid;
                    Box::pin(self.invalid(r, this, cut, why)).await
                }
            },
            Verdict::Retry {
                kind,
                status,
                after,
                message,
            } => Box::pin(self.retry(g, kind, status, after, message)).await,
            Verdict::Fail {
                kind,
                status,
                message,
            } => Box::pin(self.refused(g, kind, status, message)).await,
            Verdict::Abort {
                kind,
                status,
                message,
            } => {
                ctx.pacing.limiter.reconcile(g, 0);
                ctx.abort(match kind {
                    ErrorKind::Quota => format!(
                        "the provider's account is out of credits or quota (HTTP {status}): {message}; the remaining jobs are pending: add credits or wait for the quota to reset, then re-run to resume"
                    ),
                    _ => format!(
                        "the provider refused the credentials (HTTP {status}): {message}; check --api-key-env and the key's access to the model"
                    ),
                });
                Next::Record(self.failed(kind, Some(status), message))
            }
        }
    }

    /// The first attempt's grant (the dispatcher's), or one for a retry; None on a stop. A
    /// retry's wait is boxed, as every wait off the common path, so that its state is not part
    /// of every job's future (copied as the task starts).
    async fn grant(&mut self) -> Option<Grant> {
        if let Some(g) = self.grant.take() {
            return Some(g);
        }
        let ctx = self.ctx;
        Box::pin(async {
            tokio::select! {
                g = ctx.acquire(self.charge) => g,
                _ = ctx.stopping() => None,
            }
        })
        .await
    }

    /// A place under the in-flight limit (a timed-out attempt comes back here only once the
    /// limit has come down), waited for only when there is none now (boxed, as above); none
    /// on a stop.
    async fn place(&self) -> Option<crate::flight::Slot<'a>> {
        let flight = &self.ctx.flight;
        match flight.try_acquire() {
            Some(s) => Some(s),
            None => {
                Box::pin(async {
                    tokio::select! {
                        s = flight.acquire() => Some(s),
                        _ = self.ctx.stopping() => None,
                    }
                })
                .await
            }
        }
    }

    /// What an HTTP answer tells the run besides its body: its status, the provider's limits
    /// and a quota used up.
    fn heard(&self, attempt: &Attempt) {
        let ctx = self.ctx;
        ctx.records.counters.statuses.count(match attempt {
            Attempt::Http { status, .. } => Some(*status),
            _ => None,
        });
        let Attempt::Http {
            status,
            quota_exhausted,
            advertised,
            ..
        } = attempt
        else {
            return;
        };
        if *status != 429 {
            ctx.pacing.limiter.answered();
        }
        if ctx.pacing.ignore_limit_headers {
            return;
        }
        if let Some(d) = quota_exhausted {
            ctx.pacing.limiter.pause(*d);
            ctx.records
                .counters
                .paused(*d, "the provider's quota for this minute is used up");
        }
        if *advertised != crate::limit::Advertised::default() {
            ctx.pacing.limiter.advertised(*advertised);
        }
    }

    /// An answer: billed, learnt from, checked; kept, or (`Err`) invalid.
    fn answered(
        &mut self,
        g: Grant,
        c: Completion,
        raw: Option<bytes::Bytes>,
    ) -> Result<Next, Invalid> {
        let (ctx, job, model) = (self.ctx, self.job, self.model);
        let total = c.usage.map_or(self.charge, |u| u.prompt + u.completion);
        ctx.pacing.limiter.reconcile(g, total);
        if let Some(u) = &c.usage {
            ctx.pacing.learn_completion(model, u.completion);
        }
        let (cost, source) = ctx.money.cost(job, model, &c);
        let this = cost.unwrap_or(Money::ZERO);
        // Learn and settle before opening the gate: the first job goes alone so that the next
        // reservation sees what it really cost.
        ctx.money.learn_cost(job, model, &c, this);
        if let Some(h) = self.hold.take() {
            h.settle(this);
        }
        ctx.open();
        let mut r = base_record(job, self.started, self.attempts, self.latency);
        r.fallback_model = self.fallback();
        r.cost_usd = match (self.paid > Money::ZERO, cost) {
            (true, _) => Some((self.paid + this).usd()),
            (false, c) => c.map(Money::usd),
        };
        r.cost_source = source;
        let cut = c.finish_reason.as_deref() == Some("length");
        match ctx.records.answer_into(job, &mut r, c, raw.as_deref()) {
            Ok(parsed) => {
                r.parsed = parsed;
                Ok(Next::Record(r))
            }
            Err(why) => Err(Invalid(r, this, cut, why)),
        }
    }

    /// An answer that does not match the schema: paid for, and asked again unless it was cut
    /// at `max_tokens` (the same answer bought twice) or `--retry-invalid` is used up.
    async fn invalid(&mut self, mut r: Box<Record>, this: Money, cut: bool, why: String) -> Next {
        let (ctx, job) = (self.ctx, self.job);
        ctx.records.counters.invalid(this);
        self.paid += this;
        self.invalid += 1;
        let paid_for = format!(
            "{} invalid answer{} paid for",
            self.invalid,
            if self.invalid == 1 { "" } else { "s" }
        );
        r.status = Status::Failed;
        r.error = Some(RecordError {
            kind: ErrorKind::InvalidOutput,
            http_status: None,
            message: match cut {
                true => format!(
                    "cut at max_tokens {}: raise --max-tokens ({why}; {paid_for})",
                    ctx.pacing.allowance.of(job) / u64::from(job.choices.max(1)),
                ),
                false => format!("{why} ({paid_for})"),
            },
        });
        let again = !cut
            && self.invalid <= ctx.policy.retry_invalid
            && ctx.control.shutdown.phase() < Phase::Draining
            && !ctx.aborted();
        // The next answer is paid for too: it reserves its worst case again.
        let held = match again {
            true => ctx
                .reserve(|| ctx.money.worst_case_of(job, self.model))
                .await
                .ok(),
            false => None,
        };
        match held {
            Some(h) => {
                self.hold = h;
                tracing::debug!(id = %job.id, "asking again: {why}");
                self.retried_for(ErrorKind::InvalidOutput);
                self.pending = Some(r);
                Next::Again
            }
            None => Next::Record(r),
        }
    }

    /// A failure worth another attempt: after a pause, unless the attempts are used up (then
    /// the next model on a 503, or the record of the failure).
    async fn retry(
        &mut self,
        g: Grant,
        kind: ErrorKind,
        status: Option<u16>,
        after: Option<Duration>,
        message: String,
    ) -> Next {
        let ctx = self.ctx;
        ctx.pacing.limiter.reconcile(g, 0);
        if status.is_some() {
            ctx.open();
        }
        if kind == ErrorKind::RateLimited {
            self.rate_limited(after);
        }
        if self.tries >= ctx.policy.max_attempts {
            return self.gave_up(kind, status, message);
        }
        if ctx.control.shutdown.phase() >= Phase::Draining || ctx.aborted() {
            return Next::Stop;
        }
        ctx.records.counters.retry(kind);
        self.retried_for(kind);
        tracing::debug!(id = %self.job.id, attempt = self.attempts, kind = kind.as_str(), "retrying: {message}");
        let wait = ctx.policy.backoff.delay(self.tries, fastrand::f64(), after);
        tokio::select! {
            _ = tokio::time::sleep(wait) => Next::Again,
            _ = ctx.stopping() => Next::Stop,
        }
    }

    /// A 429: counted, and the dispatch paused for what it says.
    fn rate_limited(&self, after: Option<Duration>) {
        let ctx = self.ctx;
        ctx.records.counters.http_429.fetch_add(1, Relaxed);
        if let Some(d) = after {
            ctx.records.counters.paused(d, "rate limit");
        }
        if ctx.pacing.limiter.rate_limited(after) {
            if let Some(d) = after.filter(|d| *d >= Duration::from_secs(1)) {
                tracing::info!(
                    "dispatch paused {:.0} s: the provider's rate limit (HTTP 429)",
                    d.as_secs_f64()
                );
            }
        }
    }

    /// The attempts at this model are used up.
    fn gave_up(&mut self, kind: ErrorKind, status: Option<u16>, message: String) -> Next {
        let ctx = self.ctx;
        if let (Some(503), Some(next)) = (status, ctx.policy.fallback_models.get(self.model_at)) {
            tracing::debug!(id = %self.job.id, "model {:?} unavailable (503): trying {next:?}", self.model);
            self.retried_for(kind);
            self.next_model(next);
            return Next::Again;
        }
        if status.is_none() && !ctx.control.opened.is_set() {
            // Not one HTTP answer yet, and the first job used up its attempts: the endpoint
            // cannot be reached. Waiting on would never end.
            ctx.abort(format!(
                "cannot reach the endpoint {} ({} after {} attempts: {message}); check --endpoint and the network, then re-run to resume",
                ctx.endpoint,
                kind.as_str(),
                self.attempts
            ));
        }
        let attempts = self.attempts;
        let message = format!(
            "{message} (gave up after {attempts} attempt{})",
            if attempts == 1 { "" } else { "s" }
        );
        Next::Record(self.failed(kind, status, message))
    }

    /// A refusal for good: the wrong URL (the run stops), the next model when this one is not
    /// there, or the record of the failure.
    async fn refused(
        &mut self,
        g: Grant,
        kind: ErrorKind,
        status: Option<u16>,
        message: String,
    ) -> Next {
        let ctx = self.ctx;
        ctx.pacing.limiter.reconcile(g, 0);
        // A 404 on the very first request that is not about a model: the URL is wrong, a fault
        // of the run, not of this job (which stays pending, not failed).
        if status == Some(404)
            && !ctx.control.opened.is_set()
            && !message.to_ascii_lowercase().contains("model")
        {
            ctx.abort(format!(
                "the endpoint answered HTTP 404 ({message}) to {}/chat/completions: is the endpoint right? (--endpoint is the base URL, such as https://openrouter.ai/api/v1); nothing was marked failed, re-run once it is fixed",
                ctx.endpoint.trim_end_matches('/')
            ));
            return Next::Stop;
        }
        ctx.open();
        let message = self.retired(status, message);
        let next = match ctx.policy.fallback_models.get(self.model_at) {
            Some(next) if model_unavailable(status, &message) => next,
            _ => return Next::Record(self.failed(kind, status, message)),
        };
        tracing::debug!(id = %self.job.id, "model {:?} not available ({message}): trying {next:?}", self.model);
        self.retried_for(kind);
        self.next_model(next);
        // Its price may differ: the reservation is made again for it.
        let Some(h) = self.hold.take() else {
            return Next::Again;
        };
        h.settle(Money::ZERO);
        match ctx
            .reserve(|| ctx.money.worst_case_of(self.job, self.model))
            .await
        {
            Ok(h) => {
                self.hold = h;
                Next::Again
            }
            Err(NoHold::Cap(cap)) => Next::Record(self.failed(
                ErrorKind::Budget,
                None,
                format!("fallback model {:?} not tried: {cap}", self.model),
            )),
            Err(NoHold::Stopped) => Next::Stop,
        }
    }

    /// A 404 or 410 for a model the price table says is retired names the day (and what
    /// replaced it).
    fn retired(&self, status: Option<u16>, message: String) -> String {
        if !matches!(status, Some(404 | 410)) {
            return message;
        }
        let today = crate::cost::today();
        match self.ctx.money.prices.lifecycle(self.model) {
            Some(life) if life.retired(&today) => match life.say(&today) {
                Some(said) => format!("{message} (model {:?} was {said})", self.model),
                None => message,
            },
            _ => message,
        }
    }

    /// The next `--fallback-model`, from its first attempt.
    fn next_model(&mut self, next: &str) {
        self.model_at += 1;
        self.model = &self.ctx.policy.fallback_models[self.model_at - 1];
        debug_assert_eq!(self.model, next);
        self.body = Some(with_model(&self.base_body, self.model));
        self.tries = 0;
    }

    fn fallback(&self) -> Option<String> {
        (self.model_at > 0).then(|| self.model.to_string())
    }

    /// The record of a failure, with what invalid answers before it cost. Provider texts
    /// arrive scrubbed of the run's secrets (`Client::send`).
    fn failed(&self, kind: ErrorKind, status: Option<u16>, message: String) -> Box<Record> {
        let mut r = base_record(self.job, self.started, self.attempts, self.latency);
        r.status = Status::Failed;
        r.fallback_model = self.fallback();
        r.error = Some(RecordError {
            kind,
            http_status: status,
            message,
        });
        if self.paid > Money::ZERO {
            r.cost_usd = Some(self.paid.usd());
            r.cost_source = Some(CostSource::PriceTable);
        }
        r
    }

    fn retried_for(&mut self, kind: ErrorKind) {
        *self.retried.entry(kind).or_default() += 1;
    }

    /// The record's `retries`: the failed attempts that were tried again.
    fn retries(&mut self) -> Option<Retries> {
        self.retried.retain(|_, n| *n > 0);
        (!self.retried.is_empty()).then(|| std::mem::take(&mut self.retried))
    }

    /// Stopped: the last paid answer's record, if there is one (no paid answer unrecorded).
    fn abandon(mut self) -> TaskEnd {
        match self.record_pending() {
            true => TaskEnd::Recorded,
            false => TaskEnd::Abandoned,
        }
    }

    /// Writes the last paid answer's record, if there is one and no record came after it.
    fn record_pending(&mut self) -> bool {
        let Some(mut r) = self.pending.take() else {
            return false;
        };
        // Its own invalid answer is the record, not a retry before it.
        if let Some(n) = self.retried.get_mut(&ErrorKind::InvalidOutput) {
            *n -= 1;
        }
        r.retries = self.retries();
        self.ctx.note_result(&r);
        self.ctx.records.send(r);
        true
    }

    /// The job's record, to the writer. Paid answers settled their holds as they came; what
    /// is left was not paid.
    fn record(mut self, mut record: Box<Record>) -> TaskEnd {
        drop(self.hold.take());
        // This record follows the paid answer before it (and carries its cost).
        self.pending = None;
        record.retries = self.retries();
        self.ctx.records.with_prompt(self.job, &mut record);
        self.ctx.note_result(&record);
        self.ctx.records.send(record);
        TaskEnd::Recorded
    }
}

/// A job's task dropped before its record (a stop that could not wait for the answer in
/// flight) still writes the answer it paid for last.
impl Drop for Life<'_> {
    fn drop(&mut self) {
        if self.record_pending() {
            self.ctx.records.recorded_when_dropped(self.decision);
        }
    }
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
