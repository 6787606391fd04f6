//! What the job tasks share, by role: how the run is paced (`Pacing`), what it may spend and
//! what each answer cost (`Spending`), how a result becomes a record (`Recording`, with the
//! circuit breaker), when it stops (`Control`) and how hard a job is tried (`Policy`). `Ctx`
//! (`task.rs`) holds one of each, the client and the in-flight limiter.

use super::abort::Abort;
use crate::budget::Budget;
use crate::cost::{Money, PriceTable, Usage};
use crate::histogram::Histogram;
use crate::job::Job;
use crate::latch::Latch;
use crate::limit::RateLimit;
use crate::name_hash::NameMap;
use crate::output::jsonl::WriterMsg;
use crate::output::record::Choice;
use crate::output::{CostSource, Record};
use crate::progress::Counters;
use crate::provider::{Completion, ErrorKind};
use crate::retry::Backoff;
use crate::shutdown::{Phase, Shutdown};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Answers of a model seen before its typical length replaces `max_tokens` in the token bucket.
const LEARN_AFTER: u64 = 20;
/// Answers between two workings-out of that typical length (it moves slowly, and a charge is
/// reconciled with the real usage): a job's charge reads it, not the histogram.
const RECOUNT_EVERY: u64 = 64;

/// A model's answer lengths, and the 95th percentile of them the token bucket charges.
#[derive(Default)]
struct Lengths {
    seen: Histogram,
    p95: Option<u64>,
    /// Answers since `p95` was worked out.
    since: u64,
}

/// The output a job may be billed: its `max_tokens` (or the run's default) for every choice it
/// asks for (`n`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Allowance {
    /// `--reserve-output-tokens`: for jobs without a `max_tokens`.
    pub(super) default_tokens: u64,
}

impl Allowance {
    pub(super) fn of(&self, job: &Job) -> u64 {
        job.max_output_tokens
            .map_or(self.default_tokens, u64::from)
            .saturating_mul(u64::from(job.choices.max(1)))
    }
}

/// The rate limit and what the token bucket is charged.
pub(super) struct Pacing {
    pub(super) limiter: Arc<dyn RateLimit>,
    /// `--ignore-limit-headers`: the `x-ratelimit-*` headers (limits, remaining, reset) do not
    /// pace the run; `Retry-After` still does.
    pub(super) ignore_limit_headers: bool,
    pub(super) allowance: Allowance,
    /// Per model, the completion tokens answers really used: once enough are seen, the token
    /// bucket reserves their 95th percentile instead of every job's whole `max_tokens`.
    lengths: Mutex<NameMap<Lengths>>,
}

impl Pacing {
    pub(super) fn new(
        limiter: Arc<dyn RateLimit>,
        ignore_limit_headers: bool,
        allowance: Allowance,
    ) -> Pacing {
        Pacing {
            limiter,
            ignore_limit_headers,
            allowance,
            lengths: Mutex::default(),
        }
    }

    /// What the token bucket is charged for `job`: its prompt estimate and the output it will
    /// likely use (reconciled with the real usage when the answer comes). The budget keeps
    /// reserving the whole allowance ([`Spending::worst_case`]): it is a hard cap.
    pub(super) fn charge(&self, job: &Job) -> u64 {
        let allowance = self.allowance.of(job);
        let learned = {
            let seen = self.lengths.lock().unwrap_or_else(|p| p.into_inner());
            seen.get(&job.model).and_then(|l| l.p95)
        };
        job.est_prompt_tokens as u64 + learned.map_or(allowance, |l| l.clamp(1, allowance))
    }

    /// Notes how many completion tokens an answer of `model` used.
    pub(super) fn learn_completion(&self, model: &str, tokens: u64) {
        let mut seen = self.lengths.lock().unwrap_or_else(|p| p.into_inner());
        // The model's name copied only the first time it is seen, not an answer.
        let l = match seen.get_mut(model) {
            Some(l) => l,
            None => seen.entry(model.to_string()).or_default(),
        };
        l.seen.record(tokens);
        l.since += 1;
        if l.seen.count() >= LEARN_AFTER && (l.p95.is_none() || l.since >= RECOUNT_EVERY) {
            l.p95 = l.seen.quantile(0.95);
            l.since = 0;
        }
    }
}

/// The budget, the prices, and what this run learnt of real bills.
pub(super) struct Spending {
    pub(super) budget: Option<Arc<dyn Budget>>,
    pub(super) prices: PriceTable,
    pub(super) allowance: Allowance,
    /// Per model, the worst ratio seen of a recorded cost to its job's worst case, where it
    /// was above 1 (a provider billing more than the price table says): later reservations
    /// for that model are scaled by it.
    ratios: Mutex<NameMap<f64>>,
    counters: Arc<Counters>,
    warned_unpriced: AtomicBool,
    /// Warned once that an answer's usage could not be read.
    warned_usage: AtomicBool,
    /// (asked, served) pairs already said.
    served_said: Mutex<std::collections::HashSet<u64>>,
}

impl Spending {
    pub(super) fn new(
        budget: Option<Arc<dyn Budget>>,
        prices: PriceTable,
        allowance: Allowance,
        counters: Arc<Counters>,
    ) -> Spending {
        Spending {
            budget,
            prices,
            allowance,
            ratios: Mutex::default(),
            counters,
            warned_unpriced: AtomicBool::new(false),
            warned_usage: AtomicBool::new(false),
            served_said: Mutex::default(),
        }
    }

    /// The price of an answer of `model` served as `served`: the served model's when the
    /// table knows it (an auto-router, a fallback at the provider), else the asked one's; each
    /// pair said once. A served name that only adds a version to the asked one (OpenAI's
    /// dated snapshots) is the asked model.
    pub(super) fn price_for(
        &self,
        model: &str,
        served: Option<&str>,
    ) -> Option<&crate::cost::Price> {
        let asked = self.prices.get(model);
        let snapshot = |s: &str| s.strip_prefix(model).is_some_and(|r| r.starts_with('-'));
        let Some(served) = served.filter(|s| *s != model && !snapshot(s)) else {
            return asked;
        };
        let by_served = self.prices.get(served);
        // A hash of the pair: no allocation on the answer's path once the pair was said.
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(model.as_bytes());
        h.update(&[0]);
        h.update(served.as_bytes());
        let pair = h.digest();
        let first = self
            .served_said
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pair);
        if first {
            match (by_served, asked) {
                (Some(_), _) => tracing::warn!(
                    "jobs of {model:?} were answered by {served:?}: priced as {served:?}, the model that served them"
                ),
                (None, Some(_)) => tracing::warn!(
                    "jobs of {model:?} were answered by {served:?}, which has no known price: priced as {model:?}"
                ),
                (None, None) => {}
            }
        }
        by_served.or(asked)
    }

    /// The most `job` can cost: the price table's worst case ([`Spending::table_worst_case`]),
    /// scaled by what this run has learnt of the model's real bills.
    pub(super) fn worst_case(&self, job: &Job) -> Money {
        self.worst_case_of(job, &job.model)
    }

    /// [`Spending::worst_case`] of `job` sent to `model` (a fallback).
    pub(super) fn worst_case_of(&self, job: &Job, model: &str) -> Money {
        let base = self.table_worst_case(job, model);
        let ratios = self.ratios.lock().unwrap_or_else(|p| p.into_inner());
        match ratios.get(model) {
            Some(&r) => Money((base.0 as f64 * r).ceil().min(u64::MAX as f64 / 8.0) as u64),
            None => base,
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
                self.allowance.of(job),
                job.images,
            ),
            // Refused before the run starts under --max-cost.
            None => Money(u64::MAX / 4),
        }
    }

    /// Learns from a recorded cost the price table did not foresee: later reservations for
    /// the model grow by the worst ratio seen, so a wrong price table (or a provider's
    /// surcharge) cannot carry the run past `--max-cost` job after job. Two ratios count: the
    /// provider's bill over the table's price of the same usage (exact when the provider's
    /// markup is steady, whatever the answer's length), and the bill over the job's worst case
    /// (an answer longer than its `max_tokens`).
    pub(super) fn learn_cost(&self, job: &Job, model: &str, c: &Completion, actual: Money) {
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
        let mut ratios = self.ratios.lock().unwrap_or_else(|p| p.into_inner());
        let known = ratios.get(model).copied();
        if known.is_some_and(|k| ratio <= k) {
            return;
        }
        ratios.insert(model.to_string(), ratio);
        drop(ratios);
        let say = format!(
            "--max-cost: job {} of model {model:?} cost {actual}, {ratio:.2}x what the price table foresaw; later jobs of this model reserve {ratio:.2}x their worst case",
            job.id
        );
        match known {
            None => tracing::warn!("{say}"),
            Some(_) => tracing::debug!("{say}"),
        }
    }

    /// The cost of a live answer.
    pub(super) fn cost(
        &self,
        job: &Job,
        model: &str,
        c: &Completion,
    ) -> (Option<Money>, Option<CostSource>) {
        self.cost_at(job, model, c, |p, u| p.cost(u, job.images))
    }

    /// The cost of an answer: the provider's own figure first, else its usage at `price` of
    /// the model's (or the served model's) listed price (live or batch). A paid answer whose
    /// usage cannot be read is taken at the job's worst case, with a warning, so the cap
    /// still counts it.
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
        let listed = self.price_for(model, c.response_model.as_deref());
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

/// How a result becomes a record, and where records go.
pub(super) struct Recording {
    pub(super) writer: std::sync::mpsc::Sender<WriterMsg>,
    pub(super) counters: Arc<Counters>,
    pub(super) keep_response: bool,
    /// `--keep-prompt`: records keep the messages sent.
    pub(super) keep_prompt: bool,
    /// Compiled answer schemas.
    pub(super) validators: crate::answer::Validators,
    pub(super) breaker: Breaker,
    /// Jobs whose task was dropped (a stop that could not wait) after it wrote the answer it
    /// had paid for, by why they ran: their engine counts them when it has dropped its tasks.
    pub(super) dropped: std::sync::Mutex<super::engine::EngineEnd>,
}

impl Recording {
    /// Counts a job recorded as its task was dropped.
    pub(super) fn recorded_when_dropped(&self, decision: crate::checkpoint::Decision) {
        self.dropped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .recorded(decision);
    }

    /// Adds the jobs recorded as their tasks were dropped to `end`, once.
    pub(super) fn count_dropped(&self, end: &mut super::engine::EngineEnd) {
        let mut dropped = self
            .dropped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let d = std::mem::take(&mut *dropped);
        end.new += d.new;
        end.retried += d.retried;
        end.changed += d.changed;
    }

    /// The record with the messages sent, under `--keep-prompt`.
    pub(super) fn with_prompt(&self, job: &Job, r: &mut Record) {
        if self.keep_prompt {
            r.prompt = serde_json::from_slice::<serde_json::Value>(&job.body)
                .ok()
                .and_then(|mut b| b.get_mut("messages").map(serde_json::Value::take));
        }
    }

    /// Hands a record to the writer.
    pub(super) fn send(&self, r: Box<Record>) {
        let _ = self.writer.send(r);
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
        // The provider's figures as sent; the output billed beside them when it differs.
        r.completion_tokens = u.map(|u| u.reported_completion.unwrap_or(u.completion));
        r.total_tokens = u.map(|u| u.total.unwrap_or(u.prompt + u.completion));
        r.cached_tokens = u.map(|u| u.cached);
        r.reasoning_tokens = u.map(|u| u.reasoning);
        r.billed_output_tokens = u.and_then(|u| u.rule.map(|_| u.completion));
        r.usage_rule = u.and_then(|u| u.rule);
        r.upstream_cost_usd = c.upstream_cost;
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
}

/// The circuit breaker: a run where job after job fails the same way (an outage longer than
/// the retry budget, a model that does not exist) stops instead of marking a million jobs
/// failed.
pub(super) struct Breaker {
    /// Jobs failing in a row with the same kind of error that stop the run (0: never).
    at: u32,
    streak: Mutex<(Option<ErrorKind>, u32)>,
}

impl Breaker {
    pub(super) fn new(at: u32) -> Breaker {
        Breaker {
            at,
            streak: Mutex::new((None, 0)),
        }
    }

    /// Counts a record; the reason to stop when it is the `at`-th failure of one kind in a row.
    pub(super) fn note(&self, record: &Record) -> Option<String> {
        if self.at == 0 {
            return None;
        }
        let mut streak = self.streak.lock().unwrap_or_else(|p| p.into_inner());
        match &record.error {
            None => *streak = (None, 0),
            Some(e) if streak.0 == Some(e.kind) => streak.1 += 1,
            Some(e) => *streak = (Some(e.kind), 1),
        }
        if streak.1 != self.at {
            return None;
        }
        drop(streak);
        let e = record.error.as_ref()?;
        let status = e
            .http_status
            .map(|s| format!("HTTP {s}, "))
            .unwrap_or_default();
        Some(format!(
            "circuit breaker: {} jobs in a row failed with {} ({status}last: {}); the provider looks down or the requests are wrong; re-run later to resume",
            self.at,
            e.kind.as_str(),
            e.message
        ))
    }
}

/// When the run stops: a signal (`shutdown`), an abort, and the gate that lets one request
/// through until a first answer shows the endpoint and key work.
pub(super) struct Control {
    pub(super) shutdown: Shutdown,
    /// Set once a first answer shows the endpoint and key work; until then one request at a time.
    pub(super) opened: Latch,
    /// Why the run was aborted, if it was.
    pub(super) why: Abort,
}

impl Control {
    pub(super) fn new(shutdown: Shutdown) -> Control {
        Control {
            shutdown,
            opened: Latch::default(),
            why: Abort::default(),
        }
    }

    pub(super) fn open(&self) {
        self.opened.set();
    }

    /// Aborts the run (and opens the gate, so nothing waits on it).
    pub(super) fn abort(&self, reason: String) {
        self.why.abort(reason);
        self.open();
    }

    pub(super) fn aborted(&self) -> bool {
        self.why.is_set()
    }

    /// Resolves when the run is aborted or asked to stop admitting.
    pub(super) async fn stopping(&self) {
        tokio::select! {
            _ = self.why.wait() => {}
            _ = self.shutdown.reached(Phase::Draining) => {}
        }
    }
}

/// How hard a job is tried.
pub(super) struct Policy {
    /// Attempts a model (`--max-attempts`).
    pub(super) max_attempts: u32,
    pub(super) backoff: Backoff,
    /// Times an invalid answer is asked again.
    pub(super) retry_invalid: u32,
    /// Models tried in turn when the provider says a job's model is not there.
    pub(super) fallback_models: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{RecordError, Status};

    fn job(max_tokens: Option<u32>, n: u32) -> Job {
        let body = bytes::Bytes::from_static(br#"{"model":"m","messages":[]}"#);
        Job {
            id: crate::job::JobId::new("j1"),
            index: 0,
            line: 1,
            model: "m".into(),
            fingerprint: crate::job::Fingerprint::of(&body),
            body,
            metadata: serde_json::Map::new(),
            est_prompt_tokens: 7,
            max_output_tokens: max_tokens,
            choices: n,
            images: 0,
            expect: crate::answer::Expect::Text,
            image_files: Vec::new(),
        }
    }

    fn record(j: &Job) -> Record {
        *super::super::task::base_record(
            j,
            std::time::SystemTime::now(),
            1,
            std::time::Duration::ZERO,
        )
    }

    fn completion(usage: Option<Usage>) -> Completion {
        Completion {
            content: Some("x".into()),
            finish_reason: Some("stop".into()),
            response_model: None,
            usage,
            provider_cost: None,
            upstream_cost: None,
            tool_calls: None,
            more: Vec::new(),
            usage_problem: None,
        }
    }

    #[test]
    fn the_allowance_counts_every_choice() {
        let a = Allowance {
            default_tokens: 1024,
        };
        assert_eq!(a.of(&job(None, 1)), 1024);
        assert_eq!(a.of(&job(Some(50), 3)), 150);
    }

    #[test]
    fn pacing_charges_the_learnt_length_once_enough_answers_are_seen() {
        let limiter = Arc::new(crate::limit::Limiter::new(None, None));
        let p = Pacing::new(
            limiter,
            false,
            Allowance {
                default_tokens: 1000,
            },
        );
        let j = job(None, 1);
        let before = p.charge(&j);
        for _ in 1..LEARN_AFTER {
            p.learn_completion("m", 40);
        }
        assert_eq!(p.charge(&j), before);
        p.learn_completion("m", 40);
        assert_eq!(before - p.charge(&j), 1000 - 40);
        // Answers grown longer are charged once the length is worked out again.
        for _ in 0..RECOUNT_EVERY * 20 {
            p.learn_completion("m", 400);
        }
        assert_eq!(before - p.charge(&j), 1000 - 400);
        p.learn_completion("other", 5);
        assert!(p.charge(&job(Some(10), 1)) <= j.est_prompt_tokens as u64 + 10);
    }

    fn failed(kind: ErrorKind) -> Record {
        let mut r = record(&job(None, 1));
        r.status = Status::Failed;
        r.error = Some(RecordError {
            kind,
            http_status: Some(503),
            message: "down".into(),
        });
        r
    }

    #[test]
    fn the_breaker_trips_at_the_nth_failure_of_one_kind_in_a_row() {
        let b = Breaker::new(3);
        assert!(b.note(&failed(ErrorKind::Server)).is_none());
        assert!(b.note(&failed(ErrorKind::Server)).is_none());
        // Another kind, then an ok record, start the count again.
        assert!(b.note(&failed(ErrorKind::Timeout)).is_none());
        assert!(b.note(&record(&job(None, 1))).is_none());
        for _ in 0..2 {
            assert!(b.note(&failed(ErrorKind::Server)).is_none());
        }
        let why = b.note(&failed(ErrorKind::Server)).unwrap();
        assert!(
            why.contains("3 jobs in a row failed with server (HTTP 503"),
            "{why}"
        );
        assert!(Breaker::new(0).note(&failed(ErrorKind::Server)).is_none());
    }

    #[test]
    fn spending_scales_the_worst_case_by_what_a_model_really_cost() {
        let prices = PriceTable::embedded();
        let allowance = Allowance {
            default_tokens: 100,
        };
        let budget: Arc<dyn Budget> = Arc::new(crate::budget::LocalBudget::new(
            Money::from_usd(1.0),
            Money::ZERO,
        ));
        let s = Spending::new(
            Some(budget),
            prices,
            allowance,
            Arc::new(Counters::default()),
        );
        let mut j = job(Some(10), 1);
        j.model = "google/gemini-2.0-flash-001".into();
        let worst = s.worst_case(&j);
        assert!(worst > Money::ZERO);
        let c = completion(Some(Usage {
            prompt: 5,
            completion: 10,
            ..Usage::default()
        }));
        s.learn_cost(&j, &j.model.clone(), &c, Money(worst.0 * 3));
        let scaled = s.worst_case(&j);
        assert!(scaled.0 >= worst.0 * 3, "{worst} -> {scaled}");
        // Unknown usage: the job's worst case at the table's price, flagged as such.
        let unread = Completion {
            usage_problem: Some("unreadable".into()),
            ..completion(None)
        };
        let (cost, source) = s.cost(&j, &j.model.clone(), &unread);
        assert_eq!(cost, Some(s.table_worst_case(&j, &j.model.clone())));
        assert_eq!(source, Some(CostSource::WorstCase));
    }
}
