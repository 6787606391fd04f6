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
    /// This run's failure messages, with their kind and count (at most [`ERROR_KINDS_KEPT`]).
    pub errors: std::sync::Mutex<std::collections::HashMap<String, (String, u64)>>,
    /// Dispatch is paused until then, and why (for the progress line).
    paused: std::sync::Mutex<Option<(Instant, &'static str)>>,
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
            let mut m = self.models.lock().unwrap_or_else(|p| p.into_inner());
            if !m.contains(&r.model) {
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
    pub resume_command: Option<String>,
}

impl Summary {
    /// The human summary for stderr.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut line = |t: String| {
            s.push_str(&t);
            s.push('\n');
        };
        let head = match self.outcome {
            Outcome::Completed => "bulkprompt: done".to_string(),
            Outcome::FailedJobs => "bulkprompt: done, with failed jobs".to_string(),
            Outcome::Budget => "bulkprompt: stopped at the cost cap".to_string(),
            Outcome::Aborted => "bulkprompt: aborted".to_string(),
            Outcome::OutputFailed => {
                "bulkprompt: stopped, the output could not be written".to_string()
            }
            Outcome::Interrupted => "bulkprompt: interrupted".to_string(),
            Outcome::Submitted => "bulkprompt: batches submitted".to_string(),
        };
        line(format!(
            "{head} in {:.1}s -> {}",
            self.elapsed_secs, self.output
        ));
        if let Some(m) = &self.message {
            line(format!("  reason:    {m}"));
        }
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
            let kinds: Vec<String> = self
                .failed_by_kind
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            results.push_str(&format!(" ({})", kinds.join(", ")));
        }
        line(results);
        let mut req = format!(
            "  requests:  {} ({:.1}/s), {} retries",
            self.requests, self.requests_per_sec, self.retries
        );
        if !self.retries_by_reason.is_empty() {
            let r: Vec<String> = self
                .retries_by_reason
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            req.push_str(&format!(" ({})", r.join(", ")));
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
        if let Some(n) = self.found_rpm {
            line(format!(
                "  provider:  refused beyond about {n} requests a minute (found from its 429s; paced to it)"
            ));
        }
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
        if self.batches > 0 {
            line(format!(
                "  batches:   {} submitted this run (the batch API, at batch prices)",
                self.batches
            ));
        }
        // Latencies only when requests were timed (not a batch run, not a run with nothing to do).
        if self.requests > 0 {
            let l = self.latency_ms;
            line(format!(
                "  latency:   p50 {} ms, p95 {} ms, max {} ms",
                l.p50, l.p95, l.max
            ));
        }
        if let Some(cmd) = &self.resume_command {
            line(format!("  resume:    {cmd}"));
        }
        s
    }
}

/// 1234 -> "1.2k", 5600000 -> "5.6M".
fn human(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.1}M", n as f64 / 1e6),
    }
}

/// Draws progress until dropped.
pub struct Reporter {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Reporter {
    pub fn start(mode: ProgressMode, total: u64, counters: Arc<Counters>) -> Reporter {
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
                let bar = indicatif::ProgressBar::new(total);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{bar:20.cyan/blue} {pos}/{len} · {msg} · ETA {eta}",
                    )
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
                let c = &counters;
                let done = c.ok.load(Relaxed) + c.failed.load(Relaxed);
                let secs = started.elapsed().as_secs_f64().max(0.001);
                // Projected spend: this run's average cost a job, times the jobs left.
                let to_run = total.saturating_sub(c.skipped.load(Relaxed));
                let spent = c.spent();
                let projected = match done {
                    0 => String::new(),
                    d => format!(
                        " of ~{}",
                        Money((spent.0 as f64 / d as f64 * to_run as f64) as u64).short()
                    ),
                };
                let msg = format!(
                    "{}{:.0} req/s · tok {}/{} · {}{projected} · {} retries · {} failed",
                    c.pause_note(),
                    c.requests.load(Relaxed) as f64 / secs,
                    human(c.prompt_tokens.load(Relaxed)),
                    human(c.completion_tokens.load(Relaxed)),
                    spent.short(),
                    c.retries_total(),
                    c.failed.load(Relaxed),
                );
                match &bar {
                    Some(bar) => {
                        bar.set_position(done + c.skipped.load(Relaxed));
                        bar.set_message(msg);
                    }
                    None => tracing::info!(
                        "progress: {}/{} · {}",
                        done + c.skipped.load(Relaxed),
                        total,
                        msg
                    ),
                }
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
