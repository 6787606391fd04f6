//! What the user sees while a run goes and when it ends: live counters shared by the tasks and
//! the writer, a progress bar on a terminal (a log line every 10 s otherwise), and the final
//! [`Summary`], printed on stderr and optionally written as JSON for pipelines.

use crate::cost::Money;
use crate::histogram::Histogram;
use crate::output::ErrorKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// A bar on a terminal, log lines otherwise.
    Auto,
    /// Log lines every 10 s, even on a terminal.
    Log,
    /// Nothing but the summary.
    Quiet,
}

const KINDS: [ErrorKind; 11] = [
    ErrorKind::RateLimited,
    ErrorKind::Server,
    ErrorKind::Timeout,
    ErrorKind::Connection,
    ErrorKind::BadResponse,
    ErrorKind::Client,
    ErrorKind::Auth,
    ErrorKind::Budget,
    ErrorKind::Internal,
    ErrorKind::Quota,
    ErrorKind::InvalidOutput,
];

fn kind_index(k: ErrorKind) -> usize {
    KINDS.iter().position(|&x| x == k).unwrap_or(0)
}

/// Counters shared by every task. Results are counted by the writer, once each, after they
/// reached the file; attempts and retries by the tasks.
#[derive(Debug, Default)]
pub struct Counters {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub skipped: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    pub spent: AtomicU64,
    pub unpriced: AtomicU64,
    pub requests: AtomicU64,
    pub http_429: AtomicU64,
    retries: [AtomicU64; 11],
    failed_by: [AtomicU64; 11],
    /// Batches created at the provider this run.
    pub batches_submitted: AtomicU64,
    /// Records written to the output, and of those, fsynced (the batch engine waits for its
    /// records to be durable before it marks a batch collected).
    pub written: AtomicU64,
    pub durable: AtomicU64,
    /// Answers that did not match their schema (paid for), and what they cost.
    pub invalid_answers: AtomicU64,
    pub invalid_cost: AtomicU64,
    /// Models of this run's records.
    pub models: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// This run's failure messages, with their kind and count (at most 1,000 distinct).
    pub errors: std::sync::Mutex<std::collections::HashMap<String, (String, u64)>>,
    /// Dispatch is paused until then, and why (for the progress line).
    paused: std::sync::Mutex<Option<(Instant, &'static str)>>,
    /// HTTP attempts by the status they got (0: no answer: refused, cut, timed out).
    pub statuses: Statuses,
    /// Job tasks with a request in flight or waiting to retry (live mode).
    pub in_flight: AtomicU64,
    /// Grants of the rate limit that had to wait, and the microseconds they waited.
    pub limiter_waits: AtomicU64,
    pub limiter_wait_us: AtomicU64,
    /// Jobs this run set out to do (the file less what earlier runs finished, at most --limit).
    pub to_do: AtomicU64,
}

/// Counts by HTTP status, without a lock: one counter per status code.
#[derive(Debug)]
pub struct Statuses([AtomicU64; 600]);

impl Default for Statuses {
    fn default() -> Self {
        Statuses(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl Statuses {
    /// Counts one attempt that got `status` (none: no HTTP answer).
    pub fn count(&self, status: Option<u16>) {
        let i = status.map_or(0, |s| usize::from(s).min(599));
        self.0[i].fetch_add(1, Relaxed);
    }

    /// Every status seen, with its count (0 stands for no answer).
    pub fn seen(&self) -> Vec<(u16, u64)> {
        self.0
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let n = c.load(Relaxed);
                (n > 0).then_some((i as u16, n))
            })
            .collect()
    }
}

/// Distinct failure messages counted; more are lumped together.
const ERROR_KINDS_KEPT: usize = 1000;

/// One of the most frequent failure messages of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopError {
    pub kind: String,
    pub message: String,
    pub count: u64,
}

impl Counters {
    /// Notes a written record's model and, for a failure, its message.
    pub fn note_record(&self, r: &crate::output::Record) {
        {
            // The models the run asked for, as the summary lists them: a handful, bounded
            // for a job file that names a model per line.
            let mut m = self.models.lock().unwrap_or_else(|p| p.into_inner());
            if m.len() < 100 && !m.contains(&r.model) {
                m.insert(r.model.clone());
            }
        }
        if let Some(e) = &r.error {
            let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
            // Messages differ in the attempts they name: count them as one.
            let message = match e.message.find(" (gave up after") {
                Some(i) => &e.message[..i],
                None => e.message.as_str(),
            };
            let message: String = message.chars().take(300).collect();
            let full = errors.len() >= ERROR_KINDS_KEPT && !errors.contains_key(&message);
            let key = if full {
                "(other messages)".to_string()
            } else {
                message
            };
            errors
                .entry(key)
                .or_insert_with(|| (e.kind.as_str().to_string(), 0))
                .1 += 1;
        }
    }

    /// The three most frequent failure messages.
    pub fn top_errors(&self) -> Vec<TopError> {
        let errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<TopError> = errors
            .iter()
            .map(|(m, (k, n))| TopError {
                kind: k.clone(),
                message: m.clone(),
                count: *n,
            })
            .collect();
        all.sort_by(|a, b| b.count.cmp(&a.count).then(a.message.cmp(&b.message)));
        all.truncate(3);
        all
    }

    /// An answer that did not match its schema, paid `cost`.
    pub fn invalid(&self, cost: Money) {
        self.invalid_answers.fetch_add(1, Relaxed);
        self.invalid_cost.fetch_add(cost.0, Relaxed);
    }

    /// Dispatch is paused for `d` because of `why`: the progress line says so.
    pub fn paused(&self, d: Duration, why: &'static str) {
        let until = Instant::now() + d;
        let mut p = self.paused.lock().unwrap_or_else(|p| p.into_inner());
        if p.is_none_or(|(t, _)| t < until) {
            *p = Some((until, why));
        }
    }

    /// "paused 14 s: rate limit · " while dispatch is paused, else nothing.
    fn pause_note(&self) -> String {
        let p = *self.paused.lock().unwrap_or_else(|p| p.into_inner());
        match p {
            Some((until, why)) if until > Instant::now() => {
                let left = until
                    .saturating_duration_since(Instant::now())
                    .as_secs_f64();
                format!("paused {:.0} s: {why} · ", left.ceil())
            }
            _ => String::new(),
        }
    }

    pub fn retry(&self, kind: ErrorKind) {
        self.retries[kind_index(kind)].fetch_add(1, Relaxed);
    }
    pub fn failed(&self, kind: ErrorKind) {
        self.failed.fetch_add(1, Relaxed);
        self.failed_by[kind_index(kind)].fetch_add(1, Relaxed);
    }
    pub fn retries_total(&self) -> u64 {
        self.retries.iter().map(|a| a.load(Relaxed)).sum()
    }
    fn by_kind(counts: &[AtomicU64; 11]) -> BTreeMap<String, u64> {
        KINDS
            .iter()
            .zip(counts)
            .filter_map(|(k, c)| {
                let n = c.load(Relaxed);
                (n > 0).then(|| (k.as_str().to_string(), n))
            })
            .collect()
    }
    pub fn retries_by_reason(&self) -> BTreeMap<String, u64> {
        Self::by_kind(&self.retries)
    }
    pub fn failed_by_kind(&self) -> BTreeMap<String, u64> {
        Self::by_kind(&self.failed_by)
    }
    pub fn spent(&self) -> Money {
        Money(self.spent.load(Relaxed))
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Latency {
    pub p50: u64,
    pub p95: u64,
    pub max: u64,
}

impl From<&Histogram> for Latency {
    fn from(h: &Histogram) -> Self {
        Latency {
            p50: h.quantile(0.5).unwrap_or(0),
            p95: h.quantile(0.95).unwrap_or(0),
            max: h.max(),
        }
    }
}

/// How the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every job has an ok record.
    Completed,
    /// Finished, but some jobs' latest record is a failure.
    FailedJobs,
    /// `--max-cost` reached.
    Budget,
    /// Stopped: authentication or another run-wide provider error.
    Aborted,
    /// The output could not be written.
    OutputFailed,
    /// SIGINT / SIGTERM.
    Interrupted,
    /// `--mode batch --no-wait`: batches submitted; a later run collects them.
    Submitted,
}

impl Outcome {
    /// The outcome in words, as the summary's first line says it.
    pub fn words(self) -> &'static str {
        match self {
            Outcome::Completed => "done",
            Outcome::FailedJobs => "done, with failed jobs",
            Outcome::Budget => "stopped at the cost cap",
            Outcome::Aborted => "aborted",
            Outcome::OutputFailed => "stopped, the output could not be written",
            Outcome::Interrupted => "interrupted",
            Outcome::Submitted => "batches submitted",
        }
    }

    /// The process exit code for schedulers.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Completed => 0,
            Outcome::FailedJobs => 2,
            Outcome::Budget => 3,
            Outcome::Aborted => 4,
            Outcome::OutputFailed => 5,
            Outcome::Interrupted => 130,
            Outcome::Submitted => 6,
        }
    }
}

/// The end-of-run report (`--summary-json` writes this; it reads back as this type).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    pub outcome: Outcome,
    pub exit_code: i32,
    pub message: Option<String>,
    pub input: String,
    pub output: String,
    /// Jobs in the job file.
    pub jobs: u64,
    /// Jobs with an ok record from an earlier run, skipped.
    pub skipped_done: u64,
    /// Jobs whose earlier record is a permanent failure, skipped (no `--retry-failed`).
    pub skipped_failed: u64,
    /// Jobs that got a record this run, by why they ran: never seen before, failed before,
    /// or changed since their record. `jobs = skipped_done + skipped_failed + new +
    /// retried_failed + changed + not_run`.
    pub new: u64,
    pub retried_failed: u64,
    pub changed: u64,
    /// Jobs without a record from this run (not reached, or abandoned at a stop).
    pub not_run: u64,
    /// Records written: `ok + failed + unwritten = new + retried_failed + changed`.
    pub ok: u64,
    pub failed: u64,
    /// Answers that arrived but could not be written (a full disk), at most what was in
    /// flight; the next run buys them again.
    pub unwritten: u64,
    pub failed_by_kind: BTreeMap<String, u64>,
    /// HTTP attempts made.
    pub requests: u64,
    pub retries: u64,
    pub retries_by_reason: BTreeMap<String, u64>,
    pub http_429: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
    /// Jobs whose model has no known price (their cost is null).
    pub unpriced_jobs: u64,
    /// Spend recorded in the output over all runs.
    pub total_cost_usd: f64,
    pub latency_ms: Latency,
    pub elapsed_secs: f64,
    pub requests_per_sec: f64,
    /// Ids whose latest record in the output is a failure, over all runs.
    pub output_failed: u64,
    /// The lowest limits the provider advertised (`x-ratelimit-limit-*`), per minute.
    pub provider_limits: crate::limit::Advertised,
    /// Batches created at the provider this run (`--mode batch`).
    pub batches: u64,
    /// The most frequent failure messages of this run, with their counts.
    pub top_errors: Vec<TopError>,
    /// When the run started and ended (RFC 3339, UTC), and the bulkprompt that ran it.
    pub started_at: String,
    pub ended_at: String,
    pub version: String,
    /// Where requests went (no credentials, no query), and the models of this run's records.
    pub endpoint: String,
    pub models: Vec<String>,
    /// Answers that did not match their job's schema (each paid for), and what they cost.
    pub invalid_answers: u64,
    pub invalid_cost_usd: f64,
    /// The requests-a-minute limit found from the provider's 429s (it stated none, or less
    /// than it enforces), as the run ended.
    pub found_rpm: Option<u64>,
    /// The requests in flight the server took (lowered from `--concurrency` when it queued).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found_concurrency: Option<usize>,
    pub resume_command: Option<String>,
    /// What the jobs not run would cost and take, from this run's real answers (their mean
    /// cost and its pace): the estimate, re-made from what the provider billed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<Remaining>,
    /// Failed jobs a re-run retries (their failures were transient).
    #[serde(default)]
    pub retried_on_resume: u64,
    /// `--coordinator`: jobs an earlier process of this shard got an ok record for on another
    /// disk (its output holds them), not bought again.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub done_elsewhere: u64,
    /// `--dedupe`: jobs answered with another job's answer to the same request (not sent).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deduplicated: u64,
    /// `--coordinator`: the run's shared limits and budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator: Option<CoordinatorReport>,
}

/// What a worker did with the coordinator.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorReport {
    /// The Redis URL without its password.
    pub url: String,
    pub run_name: String,
    /// This worker's name in the shared budget.
    pub worker: String,
    /// Calls made to Redis, and per job that got a record this run.
    pub round_trips: u64,
    pub round_trips_per_job: f64,
}

impl Summary {
    /// The human summary for stderr.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut line = |t: String| {
            s.push_str(&t);
            s.push('\n');
        };
        self.render_head(&mut line);
        self.render_jobs(&mut line);
        self.render_pace(&mut line);
        self.render_answers(&mut line);
        self.render_money(&mut line);
        self.render_tail(&mut line);
        s
    }

    /// The outcome, where the output is, and why the run stopped.
    fn render_head(&self, line: &mut impl FnMut(String)) {
        let head = format!("bulkprompt: {}", self.outcome.words());
        line(format!(
            "{head} in {:.1}s -> {}",
            self.elapsed_secs, self.output
        ));
        if let Some(m) = &self.message {
            line(format!("  reason:    {m}"));
        }
    }

    /// What the job file held and what became of this run's jobs.
    fn render_jobs(&self, line: &mut impl FnMut(String)) {
        let mut jobs = format!("  jobs:      {} in file:", self.jobs);
        let mut sep = " ";
        for (n, what) in [
            (self.skipped_done, "already done"),
            (
                self.skipped_failed,
                "failed before (skipped; --retry-failed)",
            ),
            (self.new, "new"),
            (self.retried_failed, "retried"),
            (self.changed, "changed"),
            (self.deduplicated, "answered by copy (--dedupe)"),
            (
                self.done_elsewhere,
                "done by an earlier process of this shard on another disk (merge its output)",
            ),
            (self.not_run, "not run"),
        ] {
            if n > 0 {
                jobs.push_str(&format!("{sep}{n} {what}"));
                sep = ", ";
            }
        }
        line(jobs);
        let mut results = format!("  results:   {} ok, {} failed", self.ok, self.failed);
        if self.unwritten > 0 {
            results.push_str(&format!(", {} answers not written", self.unwritten));
        }
        if !self.failed_by_kind.is_empty() {
            results.push_str(&format!(" ({})", counts_text(&self.failed_by_kind)));
        }
        line(results);
    }

    /// Requests, retries, and the limits the run found or was told.
    fn render_pace(&self, line: &mut impl FnMut(String)) {
        let mut req = format!(
            "  requests:  {} ({:.1}/s), {} retries",
            self.requests, self.requests_per_sec, self.retries
        );
        if !self.retries_by_reason.is_empty() {
            req.push_str(&format!(" ({})", counts_text(&self.retries_by_reason)));
        }
        req.push_str(&format!(", {} x 429", self.http_429));
        line(req);
        let p = self.provider_limits;
        if p.rpm.is_some() || p.tpm.is_some() {
            let show = |v: Option<u64>, what: &str| v.map(|n| format!("{n} {what}"));
            let parts: Vec<String> = [show(p.rpm, "requests"), show(p.tpm, "tokens")]
                .into_iter()
                .flatten()
                .collect();
            line(format!(
                "  provider:  allows {} a minute (advertised; never exceeded)",
                parts.join(", ")
            ));
        }
        if let Some(c) = &self.coordinator {
            line(format!(
                "  shared:    run {} as worker {} ({}): {} Redis calls, {:.2} a job",
                c.run_name, c.worker, c.url, c.round_trips, c.round_trips_per_job
            ));
        }
        if let Some(n) = self.found_concurrency {
            line(format!(
                "  server:    served about {n} requests at once (more queued: found from its latency; --concurrency is the ceiling)"
            ));
        }
        if let Some(n) = self.found_rpm {
            line(format!(
                "  provider:  refused beyond about {n} requests a minute (found from its 429s; paced to it)"
            ));
        }
    }

    /// Tokens, the most frequent errors, and invalid answers.
    fn render_answers(&self, line: &mut impl FnMut(String)) {
        line(format!(
            "  tokens:    {} in, {} out",
            self.prompt_tokens, self.completion_tokens
        ));
        for (i, e) in self.top_errors.iter().enumerate() {
            let head = if i == 0 {
                "  errors:   "
            } else {
                "            "
            };
            line(format!("{head} {} x {}: {}", e.count, e.kind, e.message));
        }
        if self.invalid_answers > 0 {
            let left = self
                .failed_by_kind
                .get("invalid_output")
                .copied()
                .unwrap_or(0);
            line(format!(
                "  invalid:   {} answers did not match the schema ({} paid for them); {left} jobs left invalid",
                self.invalid_answers,
                Money::from_usd(self.invalid_cost_usd)
            ));
        }
    }

    /// This run's cost, the output's, and the rest's at this run's pace.
    fn render_money(&self, line: &mut impl FnMut(String)) {
        let mut cost = format!("  cost:      {} this run", Money::from_usd(self.cost_usd));
        if self.total_cost_usd > self.cost_usd {
            cost.push_str(&format!(
                ", {} in the output over all runs",
                Money::from_usd(self.total_cost_usd)
            ));
        }
        if self.unpriced_jobs > 0 {
            cost.push_str(&format!(
                " ({} jobs of models with no known price)",
                self.unpriced_jobs
            ));
        }
        line(cost);
        if let Some(r) = self.remaining {
            line(format!(
                "  left:      {} jobs not run: about {} and {:.0} s more at this run's cost a job and pace",
                r.jobs,
                Money::from_usd(r.cost_usd),
                r.secs
            ));
        }
        if self.batches > 0 {
            line(format!(
                "  batches:   {} submitted this run (the batch API, at batch prices)",
                self.batches
            ));
        }
    }

    /// Latencies, and the command that resumes the run.
    fn render_tail(&self, line: &mut impl FnMut(String)) {
        // Latencies only when requests were timed (not a batch run, not a run with nothing to do).
        if self.requests > 0 {
            let l = self.latency_ms;
            line(format!(
                "  latency:   p50 {} ms, p95 {} ms, max {} ms",
                l.p50, l.p95, l.max
            ));
        }
        if let Some(cmd) = &self.resume_command {
            let retries = match self.retried_on_resume {
                0 => String::new(),
                1 => "   (retries 1 failed job)".to_string(),
                n => format!("   (retries {n} failed jobs)"),
            };
            line(format!("  resume:    {cmd}{retries}"));
        }
    }
}

/// Whether `path` is absent or holds an earlier run summary (and nothing else worth keeping):
/// where `--summary-json` may write.
pub fn replaceable_summary(path: &std::path::Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        Ok(m) if !m.is_file() || m.len() > 1 << 20 => false,
        Ok(_) => std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|v| v.get("outcome").is_some() && v.get("exit_code").is_some()),
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The rest of the job file, at this run's measured cost and pace.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Remaining {
    pub jobs: u64,
    pub cost_usd: f64,
    pub secs: f64,
}

/// 1234 -> "1.2k", 5600000 -> "5.6M".
/// `{"client": 4, "server": 2}` -> `client 4, server 2`.
pub fn counts_text(counts: &BTreeMap<String, u64>) -> String {
    counts
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn human(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.1}M", n as f64 / 1e6),
    }
}

/// What the progress line shows, at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Snapshot {
    /// Jobs this run will do (`--limit` and earlier runs taken into account), and has done.
    pub to_do: u64,
    pub done: u64,
    pub failed: u64,
    pub retries: u64,
    pub requests: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub spent: Money,
    pub elapsed: Duration,
    /// Requests the server was found to serve at once, when fewer than `--concurrency`.
    pub at_once: Option<usize>,
}

/// The progress line, fitted to `width` columns: fields are dropped, least useful first, and
/// never cut in the middle. Rates and the ETA appear only once they mean something.
pub fn progress_line(s: &Snapshot, pause: &str, width: usize) -> String {
    let secs = s.elapsed.as_secs_f64();
    // Say nothing rather than something false: a rate needs a few seconds and answers.
    let settled = secs >= 5.0 && s.done >= 10;
    let eta = (settled && s.to_do > s.done).then(|| {
        let left = (s.to_do - s.done) as f64 / (s.done as f64 / secs);
        human_duration(Duration::from_secs_f64(left.min(1e7)))
    });
    let projected = (s.done >= 10 && s.to_do > s.done)
        .then(|| Money((s.spent.0 as f64 / s.done as f64 * s.to_do as f64) as u64).short());
    // In order of usefulness; the count, the pause and the failures always stay.
    let mut fields: Vec<(u8, String)> = vec![(0, format!("{}/{} this run", s.done, s.to_do))];
    if !pause.is_empty() {
        fields.push((0, pause.trim_end_matches(" · ").to_string()));
    }
    if let Some(e) = eta {
        fields.push((1, format!("ETA {e}")));
    }
    fields.push((
        2,
        match projected {
            Some(p) => format!("{} of ~{p}", s.spent.short()),
            None => s.spent.short(),
        },
    ));
    if s.failed > 0 {
        fields.push((0, format!("{} failed", s.failed)));
    }
    if settled {
        fields.push((3, format!("{:.0} req/s", s.requests as f64 / secs)));
    }
    if s.retries > 0 {
        fields.push((4, format!("{} retries", s.retries)));
    }
    if let Some(n) = s.at_once {
        fields.push((4, format!("{n} at once")));
    }
    fields.push((
        5,
        format!("tok {}/{}", human(s.tokens_in), human(s.tokens_out)),
    ));
    loop {
        let line = fields
            .iter()
            .map(|(_, f)| f.as_str())
            .collect::<Vec<_>>()
            .join(" · ");
        if line.chars().count() <= width {
            return line;
        }
        // Drop the least useful field left (the highest rank), keeping the must-haves.
        match fields
            .iter()
            .enumerate()
            .filter(|(_, (rank, _))| *rank > 0)
            .max_by_key(|(i, (rank, _))| (*rank, *i))
            .map(|(i, _)| i)
        {
            Some(i) => {
                fields.remove(i);
            }
            None => return line,
        }
    }
}

fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// Columns of the terminal on stderr (80 when it cannot be told).
fn terminal_width() -> usize {
    #[cfg(unix)]
    // SAFETY: TIOCGWINSZ only writes the struct we pass.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(2, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_col > 0 {
            return ws.ws_col as usize;
        }
    }
    80
}

impl Snapshot {
    /// The counters now.
    fn of(c: &Counters, to_do: u64, elapsed: Duration) -> Snapshot {
        Snapshot {
            to_do,
            done: c.ok.load(Relaxed) + c.failed.load(Relaxed),
            failed: c.failed.load(Relaxed),
            retries: c.retries_total(),
            requests: c.requests.load(Relaxed),
            tokens_in: c.prompt_tokens.load(Relaxed),
            tokens_out: c.completion_tokens.load(Relaxed),
            spent: c.spent(),
            elapsed,
            at_once: None,
        }
    }
}

/// One tick: the bar's line on a terminal, else a log line with the counts as fields.
fn show(bar: Option<&indicatif::ProgressBar>, snap: &Snapshot, pause: &str) {
    match bar {
        Some(bar) => {
            // The bar takes 17 columns; one more keeps the cursor off the edge.
            let width = terminal_width().saturating_sub(18).max(20);
            bar.set_position(snap.done.min(snap.to_do));
            bar.set_message(progress_line(snap, pause, width));
        }
        None => tracing::info!(
            done = snap.done,
            to_do = snap.to_do,
            failed = snap.failed,
            retries = snap.retries,
            requests = snap.requests,
            tokens_in = snap.tokens_in,
            tokens_out = snap.tokens_out,
            spent_usd = snap.spent.usd(),
            paused = !pause.is_empty(),
            "progress: {}",
            progress_line(snap, pause, usize::MAX)
        ),
    }
}

/// Draws progress until dropped.
pub struct Reporter {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Reporter {
    /// `to_do`: the jobs this run will do (after earlier runs' records and `--limit`);
    /// `at_once`: the concurrency found below the ceiling, asked at every tick.
    pub fn start(
        mode: ProgressMode,
        to_do: u64,
        counters: Arc<Counters>,
        at_once: impl Fn() -> Option<usize> + Send + 'static,
    ) -> Reporter {
        if mode == ProgressMode::Quiet {
            return Reporter {
                stop: None,
                task: None,
            };
        }
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let bar_on = mode == ProgressMode::Auto && std::io::stderr().is_terminal();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let bar = bar_on.then(|| {
                let bar = indicatif::ProgressBar::new(to_do.max(1));
                bar.set_style(
                    indicatif::ProgressStyle::with_template(if crate::term::no_color() {
                        "{bar:16} {msg}"
                    } else {
                        "{bar:16.cyan/blue} {msg}"
                    })
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                bar
            });
            let every = if bar.is_some() {
                Duration::from_millis(250)
            } else {
                Duration::from_secs(10)
            };
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut rx => break,
                }
                let snap = Snapshot {
                    at_once: at_once(),
                    ..Snapshot::of(&counters, to_do, started.elapsed())
                };
                show(bar.as_ref(), &snap, &counters.pause_note());
            }
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
        });
        Reporter {
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stops drawing and clears the bar.
    pub async fn finish(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(done: u64, to_do: u64, secs: u64) -> Snapshot {
        Snapshot {
            to_do,
            done,
            failed: 3,
            retries: 12,
            requests: done + 12,
            tokens_in: 1_234_567,
            tokens_out: 345_678,
            spent: Money::from_usd(0.378591),
            elapsed: Duration::from_secs(secs),
            at_once: None,
        }
    }

    #[test]
    fn the_concurrency_found_shows_when_wide_enough() {
        let s = Snapshot {
            at_once: Some(2),
            ..snap(40, 64, 20)
        };
        assert!(progress_line(&s, "", 200).contains(" · 2 at once"));
        assert!(!progress_line(&snap(40, 64, 20), "", 200).contains("at once"));
    }

    #[test]
    fn the_line_fits_80_and_120_columns_without_splitting_a_number() {
        let s = snap(12_345, 20_000, 60);
        for width in [120, 80, 62, 40] {
            let line = progress_line(&s, "", width);
            assert!(line.chars().count() <= width, "{width}: {line}");
            assert!(line.starts_with("12345/20000 this run"), "{line}");
            assert!(line.contains("3 failed"), "{line}");
            // Every figure shown whole: the cost is never cut.
            assert!(!line.contains("~$0 ") && !line.ends_with('.'), "{line}");
        }
        let wide = progress_line(&s, "", 200);
        assert!(
            wide.contains("ETA ") && wide.contains("req/s") && wide.contains("tok 1.2M"),
            "{wide}"
        );
        assert!(
            progress_line(&s, "", 80).contains("ETA "),
            "the ETA is worth more than the rate"
        );
        let paused = progress_line(&s, "paused 14 s: rate limit · ", 40);
        assert!(paused.contains("paused 14 s: rate limit"), "{paused}");
    }

    #[test]
    fn no_rate_or_eta_from_one_sample() {
        let line = progress_line(&snap(3, 1500, 1), "", 200);
        assert!(!line.contains("ETA") && !line.contains("req/s"), "{line}");
        assert!(line.starts_with("3/1500 this run"), "{line}");
    }

    #[test]
    fn a_pause_shows_until_it_ends_and_the_longest_wins() {
        let c = Counters::default();
        assert_eq!(c.pause_note(), "");
        c.paused(Duration::from_secs(47), "rate limit");
        c.paused(Duration::from_secs(5), "something shorter");
        assert_eq!(c.pause_note(), "paused 47 s: rate limit · ");
        c.paused(Duration::from_millis(1), "x");
        *c.paused.lock().unwrap() = Some((Instant::now(), "over"));
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(c.pause_note(), "");
    }
}
