//! The last stage, pure: what the stages counted and why the run stopped, turned into the
//! [`Summary`] and its exit code. The precedence of stop reasons is decided here and nowhere
//! else: an output problem first (the user must act before anything else helps), then a job
//! file that changed, a run-wide abort, the cost cap, a signal, failed jobs.

use super::engine::{EngineEnd, IntakeCounts};
use crate::budget::CapReached;
use crate::cost::Money;
use crate::progress::{Latency, Outcome, Summary};
use std::collections::BTreeMap;

/// Why a run stopped early, each as the stage that saw it reported it.
#[derive(Debug, Default)]
pub(super) struct Stops {
    pub(super) convert_error: Option<String>,
    /// The first write failure, and how many answers could never be written.
    pub(super) write_error: Option<(String, u64)>,
    pub(super) compact_error: Option<String>,
    pub(super) input_error: Option<String>,
    pub(super) abort: Option<String>,
    /// The cap, and the money recorded in the output once every call settled.
    pub(super) cap: Option<(CapReached, Money)>,
    pub(super) interrupted: bool,
    /// `--no-wait`: batches submitted (or still open) that a later run collects.
    pub(super) submitted: u64,
    /// The run stopped for a reason the same command cannot get past: no resume line.
    pub(super) fatal: bool,
}

impl Stops {
    /// Whether the run ended before it ran everything it could.
    pub(super) fn early(&self) -> bool {
        self.write_error.is_some()
            || self.input_error.is_some()
            || self.abort.is_some()
            || self.cap.is_some()
            || self.interrupted
    }
}

/// The outcome and the message that explains it. `output_failed`: ids whose latest record is
/// a failure after this run.
pub(super) fn outcome(stops: &Stops, output_failed: u64) -> (Outcome, Option<String>) {
    if let Some(e) = &stops.convert_error {
        return (
            Outcome::OutputFailed,
            Some(format!(
                "{e}; the journal is intact, re-run to convert again"
            )),
        );
    }
    if let Some((e, unwritten)) = &stops.write_error {
        let lost = match unwritten {
            0 => "every answer that arrived was written".to_string(),
            n => format!(
                "{n} answers that arrived could not be written and will be bought again on resume"
            ),
        };
        return (
            Outcome::OutputFailed,
            Some(format!(
                "{e}; {lost}; what was written is valid, re-run to resume once fixed"
            )),
        );
    }
    if let Some(e) = &stops.compact_error {
        return (
            Outcome::OutputFailed,
            Some(format!(
                "could not compact the output: {e}; every record is kept and valid, but ids that ran again appear more than once until a re-run compacts it"
            )),
        );
    }
    if let Some(e) = &stops.input_error {
        return (
            Outcome::Aborted,
            Some(format!("the job file changed while running: {e}")),
        );
    }
    if let Some(r) = &stops.abort {
        return (Outcome::Aborted, Some(r.clone()));
    }
    if let Some((cap, total)) = &stops.cap {
        return (
            Outcome::Budget,
            Some(format!(
                "cost cap {} reached: dispatch stopped when {} recorded + {} held by requests in flight{} + up to {} for the next job would have passed it; {total} is recorded in {} over all runs; re-run with a larger --max-cost to continue",
                cap.cap,
                cap.spent,
                cap.reserved,
                cap.scope(),
                cap.wanted,
                if cap.shared {
                    "this worker's output"
                } else {
                    "the output"
                }
            )),
        );
    }
    if stops.interrupted {
        return (Outcome::Interrupted, None);
    }
    if stops.submitted > 0 {
        return (
            Outcome::Submitted,
            Some(format!(
                "{} batches submitted and not ended yet; re-run the same command to collect their results",
                stops.submitted
            )),
        );
    }
    if output_failed > 0 {
        return (Outcome::FailedJobs, None);
    }
    (Outcome::Completed, None)
}

/// This run's counts, as the writer's shared counters had them at the end.
#[derive(Debug, Default)]
pub(super) struct Counted {
    pub(super) ok: u64,
    pub(super) failed: u64,
    pub(super) failed_by_kind: BTreeMap<String, u64>,
    pub(super) requests: u64,
    pub(super) retries: u64,
    pub(super) retries_by_reason: BTreeMap<String, u64>,
    pub(super) http_429: u64,
    pub(super) prompt_tokens: u64,
    pub(super) completion_tokens: u64,
    pub(super) spent: Money,
    pub(super) unpriced: u64,
    pub(super) provider_limits: crate::limit::Advertised,
    pub(super) found_rpm: Option<u64>,
    pub(super) found_concurrency: Option<usize>,
    pub(super) invalid_answers: u64,
    pub(super) invalid_cost: Money,
    pub(super) batches: u64,
    pub(super) top_errors: Vec<crate::progress::TopError>,
    pub(super) models: Vec<String>,
}

/// Everything the summary is made of.
pub(super) struct Tallies {
    pub(super) input: String,
    pub(super) output: String,
    pub(super) jobs: u64,
    pub(super) intake: IntakeCounts,
    pub(super) engine: EngineEnd,
    pub(super) counted: Counted,
    pub(super) unwritten: u64,
    pub(super) spent_before: Money,
    pub(super) latency: Latency,
    pub(super) elapsed_secs: f64,
    pub(super) stops: Stops,
    /// The command to resume with, used when something is left to do.
    pub(super) resume_command: String,
    pub(super) started_at: String,
    pub(super) endpoint: String,
    /// `--coordinator`: where, as whom, and the Redis calls made.
    pub(super) coordinator: Option<crate::progress::CoordinatorReport>,
    /// `--dedupe`: jobs answered with a copy of another job's answer.
    pub(super) copied: u64,
}

/// The jobs not run, re-estimated from this run's own answers: their mean cost (what the
/// provider billed, not the table's guess) and the pace the run kept.
fn remaining(
    not_run: u64,
    answered: u64,
    spent: crate::cost::Money,
    secs: f64,
) -> Option<crate::progress::Remaining> {
    (not_run > 0 && answered > 0 && secs > 0.0).then(|| crate::progress::Remaining {
        jobs: not_run,
        cost_usd: spent.usd() / answered as f64 * not_run as f64,
        secs: secs / answered as f64 * not_run as f64,
    })
}

/// The summary: job counts that add up to the file, the outcome, the exit code.
pub(super) fn summarize(t: Tallies) -> Summary {
    let skipped = t.intake.skipped_done + t.intake.skipped_failed + t.intake.done_elsewhere;
    let not_run = t
        .jobs
        .saturating_sub(skipped + t.engine.answered() + t.copied);
    let output_failed = t.counted.failed + t.intake.skipped_failed;
    let (outcome, message) = outcome(&t.stops, output_failed);
    let c = t.counted;
    // Failures a re-run retries: every kind but the permanent ones.
    let retried_on_resume: u64 = c
        .failed_by_kind
        .iter()
        .filter(|(kind, _)| !matches!(kind.as_str(), "client" | "invalid_output"))
        .map(|(_, n)| n)
        .sum();
    Summary {
        outcome,
        exit_code: outcome.exit_code(),
        message,
        input: t.input,
        output: t.output,
        jobs: t.jobs,
        skipped_done: t.intake.skipped_done,
        skipped_failed: t.intake.skipped_failed,
        new: t.engine.new,
        retried_failed: t.engine.retried,
        changed: t.engine.changed,
        not_run,
        ok: c.ok,
        failed: c.failed,
        unwritten: t.unwritten,
        failed_by_kind: c.failed_by_kind,
        requests: c.requests,
        retries: c.retries,
        retries_by_reason: c.retries_by_reason,
        http_429: c.http_429,
        prompt_tokens: c.prompt_tokens,
        completion_tokens: c.completion_tokens,
        cost_usd: c.spent.usd(),
        unpriced_jobs: c.unpriced,
        total_cost_usd: (t.spent_before + c.spent).usd(),
        latency_ms: t.latency,
        elapsed_secs: t.elapsed_secs,
        requests_per_sec: c.requests as f64 / t.elapsed_secs.max(1e-9),
        output_failed,
        provider_limits: c.provider_limits,
        found_rpm: c.found_rpm,
        found_concurrency: c.found_concurrency,
        invalid_answers: c.invalid_answers,
        batches: c.batches,
        top_errors: c.top_errors,
        started_at: t.started_at,
        ended_at: crate::output::record::timestamp(std::time::SystemTime::now()),
        version: crate::version::version().to_string(),
        endpoint: t.endpoint,
        models: c.models,
        invalid_cost_usd: c.invalid_cost.usd(),
        resume_command: (!t.stops.fatal
            && (t.stops.early() || not_run > 0 || retried_on_resume > 0))
            .then_some(t.resume_command),
        retried_on_resume,
        deduplicated: t.copied,
        done_elsewhere: t.intake.done_elsewhere,
        remaining: remaining(not_run, c.ok + c.failed, c.spent, t.elapsed_secs),
        coordinator: t.coordinator,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap() -> (CapReached, Money) {
        let c = CapReached {
            cap: Money::from_usd(1.0),
            spent: Money::from_usd(0.9),
            reserved: Money::ZERO,
            wanted: Money::from_usd(0.2),
            shared: false,
        };
        (c, Money::from_usd(0.95))
    }

    #[test]
    fn stop_reasons_take_precedence_in_order() {
        let all = Stops {
            convert_error: Some("c".into()),
            write_error: Some(("w".into(), 3)),
            compact_error: Some("k".into()),
            input_error: Some("i".into()),
            abort: Some("a".into()),
            cap: Some(cap()),
            interrupted: true,
            submitted: 2,
            fatal: false,
        };
        let mut s = all;
        let mut seen = vec![];
        loop {
            let (o, m) = outcome(&s, 1);
            seen.push(o);
            match () {
                _ if s.convert_error.take().is_some() => {}
                _ if s.write_error.take().is_some() => {}
                _ if s.compact_error.take().is_some() => {}
                _ if s.input_error.take().is_some() => {}
                _ if s.abort.take().is_some() => {}
                _ if s.cap.take().is_some() => {
                    assert!(m.unwrap().contains("$0.950000 is recorded"));
                }
                _ if std::mem::take(&mut s.interrupted) => {}
                _ if std::mem::take(&mut s.submitted) > 0 => {}
                _ => break,
            }
        }
        use Outcome::*;
        assert_eq!(
            seen,
            [
                OutputFailed,
                OutputFailed,
                OutputFailed,
                Aborted,
                Aborted,
                Budget,
                Interrupted,
                Submitted,
                FailedJobs
            ]
        );
        assert_eq!(outcome(&Stops::default(), 0).0, Completed);
    }

    #[test]
    fn a_write_failure_says_what_was_lost() {
        let s = Stops {
            write_error: Some(("disk full".into(), 0)),
            ..Stops::default()
        };
        assert!(outcome(&s, 0)
            .1
            .unwrap()
            .contains("every answer that arrived was written"));
        let s = Stops {
            write_error: Some(("disk full".into(), 7)),
            ..Stops::default()
        };
        assert!(outcome(&s, 0)
            .1
            .unwrap()
            .contains("7 answers that arrived could not be written"));
    }

    #[test]
    fn job_counts_add_up_to_the_file() {
        let t = Tallies {
            input: "in".into(),
            output: "out".into(),
            started_at: String::new(),
            endpoint: String::new(),
            coordinator: None,
            copied: 0,
            jobs: 200,
            intake: IntakeCounts {
                read: 120,
                skipped_done: 50,
                skipped_failed: 5,
                in_open_batch: 0,
                handed: 65,
                deduped: 0,
                done_elsewhere: 0,
                read_all: false,
            },
            engine: EngineEnd {
                new: 10,
                retried: 2,
                changed: 50,
                ..EngineEnd::default()
            },
            counted: Counted {
                ok: 60,
                failed: 1,
                ..Counted::default()
            },
            unwritten: 1,
            spent_before: Money::ZERO,
            latency: Latency::default(),
            elapsed_secs: 1.0,
            stops: Stops {
                cap: Some(cap()),
                ..Stops::default()
            },
            resume_command: "bulkprompt run x".into(),
        };
        let s = summarize(t);
        assert_eq!(
            s.skipped_done + s.skipped_failed + s.new + s.retried_failed + s.changed + s.not_run,
            s.jobs
        );
        assert_eq!(s.not_run, 83);
        assert_eq!(
            s.ok + s.failed + s.unwritten,
            s.new + s.retried_failed + s.changed
        );
        assert_eq!((s.exit_code, s.output_failed), (3, 6));
        assert_eq!(s.resume_command.as_deref(), Some("bulkprompt run x"));
    }
}
