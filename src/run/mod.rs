//! The orchestrator. A run is a row of stages, each in its own module with one job:
//!
//! 1. `prepare`: check, lock, read the job file and the output; nothing sent or written yet.
//! 2. `writer`: the thread that owns the output and counts each record once.
//! 3. an `engine`: jobs from the shared `engine::Intake` become records; today the
//!    `live` engine (one request per job, `task` for one job's life).
//! 4. `finish`: compaction and Parquet conversion.
//! 5. `summary`: a pure function from the stages' counts to the summary and exit code.
//!
//! It owns shutdown: on a stop it admits nothing more, lets in-flight calls finish within the
//! grace period, and always leaves the output whole.

mod abort;
mod attempts;
mod batch;
mod dedupe;
mod engine;
mod finish;
mod live;
mod open_batches;
mod prepare;
mod roles;
mod summary;
mod task;
mod writer;

pub use crate::batch::{BatchApi, BatchSettings};
pub use crate::config::{Endpoint, RunConfig};

use crate::budget::{Budget, LocalBudget};
use crate::checkpoint::CheckpointError;
use crate::coordinator::Coordinator;
use crate::job::{InputError, JobStream};
use crate::limit::{Limiter, RateLimit};
use crate::mock::MockServer;
use crate::output::jsonl::WriteError;
use crate::paths::TargetError;
use crate::progress::{Counters, Latency, Reporter, Summary};
use crate::provider::{Client, ClientConfig, ClientError};
use crate::secret::Scrubber;
use crate::shutdown::{Phase, Shutdown};
use engine::{Engine, Intake};
use open_batches::OpenBatches;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use summary::{Counted, Stops, Tallies};

/// Errors that stop a run before its first request (or, for the writer, end it).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The job file could not be read.
    #[error(transparent)]
    Input(#[from] InputError),
    /// The job file has bad lines; each is listed.
    #[error("{}", render_invalid(errors, *more))]
    InvalidInput { errors: Vec<InputError>, more: u64 },
    /// The output could not be read, repaired or locked.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The HTTP client could not be built.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The output could not be opened.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The output cannot be written (not a regular file, a read-only folder).
    #[error(transparent)]
    Target(#[from] TargetError),
    /// A file the run would write is one it reads.
    #[error(
        "{written} is {what} {read}: the run would overwrite it; write the output elsewhere (-o)"
    )]
    Overwrites {
        written: PathBuf,
        what: &'static str,
        read: PathBuf,
    },
    /// The in-process simulator could not start.
    #[error("starting the simulator: {0}")]
    Mock(std::io::Error),
    /// The configuration does not hold together.
    #[error("{0}")]
    Config(String),
    /// A reading task failed to finish.
    #[error("reading task failed")]
    Task(#[source] tokio::task::JoinError),
    /// A thread could not be started, or the writer thread died.
    #[error("the writer thread")]
    Thread(#[source] std::io::Error),
    /// A signal stopped the run before anything was sent.
    #[error("interrupted while {0}; nothing was sent")]
    Interrupted(&'static str),
    /// The coordinator (Redis) could not be reached, or refused this worker.
    #[error(transparent)]
    Coordinator(crate::coordinator::Unreachable),
}

impl RunError {
    /// The exit code of a run that ended with this error (README's table).
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Write(_)
            | RunError::Target(_)
            | RunError::Checkpoint(CheckpointError::Io { .. }) => 5,
            RunError::Interrupted(_) => 130,
            RunError::Coordinator(_) => 4,
            _ => 1,
        }
    }
}

fn render_invalid(errors: &[InputError], more: u64) -> String {
    let mut s = format!(
        "the job file has {} problem{}; nothing was sent:",
        errors.len() as u64 + more,
        if errors.len() as u64 + more == 1 {
            ""
        } else {
            "s"
        }
    );
    for e in errors {
        s.push_str("\n  ");
        s.push_str(&e.to_string());
    }
    if more > 0 {
        s.push_str(&format!(
            "\n  ... and {more} more (bulkprompt validate lists them)"
        ));
    }
    s
}

/// The client for the run's endpoint (the simulator started first for `mock`, kept alive by
/// the server handed back), with `pool` idle connections kept.
pub(crate) async fn connect(
    cfg: &RunConfig,
    pool: usize,
) -> Result<(Client, Option<MockServer>), RunError> {
    let (base_url, mock) = match &cfg.endpoint {
        Endpoint::Url(u) => (u.clone(), None),
        Endpoint::Mock(mc) => {
            let server = MockServer::start(([127, 0, 0, 1], 0).into(), (**mc).clone())
                .await
                .map_err(RunError::Mock)?;
            (server.base_url(), Some(server))
        }
    };
    let client = Client::new(&ClientConfig {
        base_url,
        api_key: cfg.api_key.clone(),
        headers: cfg.headers.clone(),
        timeout: cfg.timeout,
        pool_size: pool,
        max_response_bytes: cfg.max_response_bytes,
        scrubber: Scrubber::new(
            cfg.api_key.as_ref(),
            cfg.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        ),
    })?;
    Ok((client, mock))
}

/// Runs a job file to completion (or until stopped) and reports how it went: prepare, open the
/// gates (limits and budget, local or shared), start the writer, run the engine, wind down,
/// finish the output, summarize.
pub async fn run(cfg: RunConfig, shutdown: Shutdown) -> Result<Summary, RunError> {
    let started = Instant::now();
    let started_at = crate::output::record::timestamp(std::time::SystemTime::now());
    let mut prepared = prepare::prepare(&cfg, started, &shutdown).await?;
    let spent_before = prepared.checkpoint.totals.spent + prepared.removed_cost;
    let (client, _mock) = connect(&cfg, cfg.concurrency).await?;
    let mut gates = Gates::open(&cfg, spent_before).await?;
    let counters = Arc::new(Counters::default());
    let _metrics = serve_metrics(&cfg, &counters).await?;
    prepared.start(&cfg)?;
    let done = gates.done.as_ref().and_then(|d| d.sender());
    let writer = writer::Writer::start(&cfg.output, counters.clone(), cfg.grace, done)?;
    let ctx = Arc::new(context(&cfg, client, &gates, &counters, &writer, &shutdown));
    let to_do = to_do(&cfg, &prepared);
    counters.to_do.store(to_do, Relaxed);
    let reporter = Reporter::start(cfg.progress, to_do, counters.clone(), {
        let ctx = ctx.clone();
        move || ctx.flight.found()
    });
    let jobs = prepared.jobs(&cfg)?;
    let mut intake = intake(&cfg, jobs, &prepared, &mut gates, &counters);
    let end = run_engine(&cfg, &ctx, &prepared, &mut intake, &writer).await?;
    let excluded = intake.excluded().clone();
    let counts = intake.counts;
    let input_error = read_error(intake.error.take(), &counts, prepared.jobs);
    drop(intake);
    let found = Found::of(&ctx);
    if let Some(b) = &ctx.money.budget {
        b.close().await;
    }
    drop(ctx); // with the job tasks gone, this closes the writer's channel
    reporter.finish().await;
    let written = writer.join()?;
    if let Some(done) = gates.done.take() {
        done.close().await;
    }
    let copied = copy_answers(&cfg, &prepared, &excluded, &counters, &written)?;
    let cap = end
        .cap_reached
        .map(|cap| (cap, spent_before + counters.spent()));
    let stops = Stops {
        write_error: written
            .drained
            .error
            .as_ref()
            .map(|e| (e.to_string(), written.drained.unwritten)),
        input_error,
        abort: found.abort.clone(),
        cap,
        interrupted: shutdown.phase() >= Phase::Draining,
        submitted: end.submitted,
        fatal: found.fatal,
        ..Stops::default()
    };
    let superseded = prepared.checkpoint.has_superseded();
    let stops = finish_output(&cfg, superseded, prepared.input_ids, &end, stops).await;
    let run = Ran {
        cfg: &cfg,
        jobs: prepared.jobs,
        counts,
        end,
        counters: &counters,
        found,
        unwritten: written.drained.unwritten,
        latency: Latency::from(&written.latency),
        spent_before,
        elapsed_secs: started.elapsed().as_secs_f64(),
        started_at,
        coordinator: gates.coordinator.as_ref(),
        copied,
    };
    Ok(summary::summarize(run.tallies(stops)))
}

/// The run's intake: what is done skipped, `--limit` and `--dedupe` applied, and the ids other
/// workers finished (a shared run) left out.
fn intake<'a>(
    cfg: &RunConfig,
    jobs: JobStream,
    prepared: &'a prepare::Prepared,
    gates: &mut Gates,
    counters: &'a Counters,
) -> Intake<'a> {
    let mut intake = Intake::new(
        jobs,
        &prepared.checkpoint,
        cfg.retry_failed,
        cfg.limit,
        counters,
    );
    intake.dedupe(cfg.dedupe);
    intake.done_elsewhere(std::mem::take(&mut gates.done_before));
    intake
}

/// `--dedupe`: the jobs held back get their copies, unless the output could not be written.
fn copy_answers(
    cfg: &RunConfig,
    prepared: &prepare::Prepared,
    excluded: &std::collections::HashSet<crate::job::IdKey>,
    counters: &Counters,
    written: &writer::Written,
) -> Result<dedupe::Copied, RunError> {
    match (cfg.dedupe, &written.drained.error) {
        (Some(rule), None) => {
            dedupe::answer_followers(cfg, &prepared.checkpoint, rule, excluded, counters)
        }
        _ => Ok(Default::default()),
    }
}

/// Why the job file was not read to its end, if it was not: its reader's error, or fewer jobs
/// than validation counted (the file changed under the run).
fn read_error(error: Option<String>, counts: &engine::IntakeCounts, jobs: u64) -> Option<String> {
    match counts.read_all && counts.read < jobs {
        true => Some(format!(
            "{} jobs were read of the {jobs} validated",
            counts.read
        )),
        false => error,
    }
}

/// One record per id (compaction), and the Parquet file written, unless the output could not
/// be written; a run stopped early keeps records of ids it did not reach (`--prune` waits).
async fn finish_output(
    cfg: &RunConfig,
    superseded: bool,
    input_ids: Option<crate::job::keys::KeyMap>,
    end: &engine::EngineEnd,
    mut stops: Stops,
) -> Stops {
    if stops.write_error.is_some() {
        return stops;
    }
    let superseded = superseded || end.retried + end.changed > 0;
    let prune = input_ids.filter(|_| !stops.early());
    let f = finish::finish(cfg, superseded, prune).await;
    stops.compact_error = f.compact_error;
    stops.convert_error = f.convert_error;
    stops
}

/// The run's limits and budget: this process's own, or shared with the run's other workers.
struct Gates {
    coordinator: Option<Coordinator>,
    limiter: Arc<dyn RateLimit>,
    budget: Option<Arc<dyn Budget>>,
    /// Shared: the ids this worker's earlier processes got an ok record for, and where this
    /// one's are kept.
    done_before: std::collections::HashSet<crate::job::IdKey>,
    done: Option<crate::coordinator::DoneLedger>,
}

impl Gates {
    async fn open(cfg: &RunConfig, spent_before: crate::cost::Money) -> Result<Gates, RunError> {
        let Some(cc) = &cfg.coordinator else {
            return Ok(Gates {
                coordinator: None,
                limiter: Arc::new(Limiter::new(cfg.rpm, cfg.tpm).finding(cfg.start_rpm)),
                budget: cfg
                    .max_cost
                    .map(|cap| Arc::new(LocalBudget::new(cap, spent_before)) as Arc<dyn Budget>),
                done_before: Default::default(),
                done: None,
            });
        };
        let coordinator = Coordinator::connect(cc)
            .await
            .map_err(RunError::Coordinator)?;
        // The key's limits (or the provider's documented default) are shared; each worker
        // still finds a lower limit nobody states from its own answers.
        let local = Limiter::new(None, None).finding(None);
        let (rpm, tpm) = coordinator
            .agree_limits(cfg.rpm.or(cfg.start_rpm), cfg.tpm)
            .await
            .map_err(RunError::Coordinator)?;
        let limiter = Arc::new(coordinator.limit(rpm, tpm, local));
        let budget = match cfg.max_cost {
            None => None,
            Some(cap) => {
                // Held longer than a worker cut off from Redis can have requests in flight.
                let lease = cc.timeout + cfg.grace + Duration::from_secs(10);
                let b = coordinator
                    .budget(cap, spent_before, lease)
                    .await
                    .map_err(RunError::Coordinator)?;
                Some(Arc::new(b) as Arc<dyn Budget>)
            }
        };
        tracing::info!(
            "sharing limits{} with run {:?} at {} as worker {}",
            if budget.is_some() { " and budget" } else { "" },
            cc.run_name,
            coordinator.shown_url(),
            cc.worker
        );
        let done_before = coordinator
            .done_before()
            .await
            .map_err(RunError::Coordinator)?;
        let done = Some(coordinator.done_ledger());
        Ok(Gates {
            coordinator: Some(coordinator),
            limiter,
            budget,
            done_before,
            done,
        })
    }
}

/// `--metrics-addr`: the run's counters served for Prometheus while it runs.
async fn serve_metrics(
    cfg: &RunConfig,
    counters: &Arc<Counters>,
) -> Result<Option<crate::metrics::MetricsServer>, RunError> {
    let Some(addr) = cfg.metrics_addr else {
        return Ok(None);
    };
    let m = crate::metrics::serve(addr, counters.clone())
        .await
        .map_err(|e| RunError::Config(format!("--metrics-addr {addr}: {e}")))?;
    tracing::info!("metrics at http://{}/metrics", m.addr);
    Ok(Some(m))
}

/// What the job tasks share, one role each.
fn context(
    cfg: &RunConfig,
    client: Client,
    gates: &Gates,
    counters: &Arc<Counters>,
    writer: &writer::Writer,
    shutdown: &Shutdown,
) -> task::Ctx {
    let allowance = roles::Allowance {
        default_tokens: cfg.default_output_tokens,
    };
    task::Ctx {
        client,
        // Shown in messages: never with credentials in it.
        endpoint: match &cfg.endpoint {
            Endpoint::Url(u) => crate::config::shown_endpoint(u),
            Endpoint::Mock(_) => "the simulator".into(),
        },
        flight: crate::flight::Flight::new(cfg.concurrency, !cfg.fixed_concurrency),
        pacing: roles::Pacing::new(gates.limiter.clone(), cfg.ignore_limit_headers, allowance),
        money: roles::Spending::new(
            gates.budget.clone(),
            cfg.prices.clone(),
            allowance,
            counters.clone(),
        ),
        records: roles::Recording {
            writer: writer.sender.clone(),
            counters: counters.clone(),
            keep_response: cfg.keep_response,
            keep_prompt: cfg.keep_prompt,
            validators: Default::default(),
            breaker: roles::Breaker::new(cfg.circuit_breaker),
            dropped: Default::default(),
        },
        control: roles::Control::new(shutdown.clone()),
        policy: roles::Policy {
            max_attempts: cfg.max_attempts.max(1),
            backoff: cfg.backoff,
            retry_invalid: cfg.retry_invalid,
            fallback_models: cfg.fallback_models.clone(),
        },
    }
}

/// What this run will do: the file, less what earlier runs finished, at most `--limit`.
fn to_do(cfg: &RunConfig, prepared: &prepare::Prepared) -> u64 {
    let t = &prepared.checkpoint.totals;
    let finished = t.ok
        + match cfg.retry_failed {
            true => 0,
            false => t.failed_permanent,
        };
    let to_do = prepared.jobs.saturating_sub(finished);
    cfg.limit.map_or(to_do, |l| to_do.min(l))
}

/// The engine of the run's mode. A live run first collects the output's open batches (none
/// of their jobs is sent live).
async fn run_engine(
    cfg: &RunConfig,
    ctx: &Arc<task::Ctx>,
    prepared: &prepare::Prepared,
    intake: &mut Intake<'_>,
    writer: &writer::Writer,
) -> Result<engine::EngineEnd, RunError> {
    let journal = cfg.files().batch_journal();
    let batch_engine = |settings: &BatchSettings| batch::BatchEngine {
        ctx: ctx.clone(),
        input: cfg.input.clone(),
        journal: journal.clone(),
        settings: settings.clone(),
        write_failed: writer.failed.clone(),
        learned_max_lines: Default::default(),
    };
    if let Some(settings) = &cfg.batch {
        return Ok(batch_engine(settings).execute(intake).await);
    }
    let open = OpenBatches {
        journal: &journal,
        unknown: prepared.batches_unknown,
    };
    let collector = batch_engine(&BatchSettings {
        api: match &cfg.endpoint {
            Endpoint::Url(u) => BatchApi::for_endpoint(u),
            Endpoint::Mock(_) => BatchApi::OpenAi,
        },
        ..BatchSettings::default()
    });
    match open.collect_first(ctx, cfg, prepared, collector).await? {
        Some((end, _)) if ctx.aborted() || ctx.control.shutdown.phase() >= Phase::Draining => {
            Ok(end)
        }
        found => {
            if let Some((_, ids)) = found {
                intake.exclude(ids);
            }
            let live = live::LiveEngine {
                ctx: ctx.clone(),
                concurrency: cfg.concurrency,
                grace: cfg.grace,
                write_failed: writer.failed.clone(),
            };
            Ok(live.execute(intake).await)
        }
    }
}

/// What the run found out while it ran, read before its shared state goes.
struct Found {
    abort: Option<String>,
    fatal: bool,
    provider_limits: crate::limit::Advertised,
    found_rpm: Option<u64>,
    found_concurrency: Option<usize>,
}

impl Found {
    fn of(ctx: &task::Ctx) -> Found {
        Found {
            abort: ctx.control.why.reason(),
            fatal: ctx.control.why.is_fatal(),
            provider_limits: ctx.pacing.limiter.provider_limits(),
            found_rpm: ctx.pacing.limiter.found_rpm(),
            found_concurrency: ctx.flight.found(),
        }
    }
}

/// A run that ended, for its summary.
struct Ran<'a> {
    cfg: &'a RunConfig,
    jobs: u64,
    counts: engine::IntakeCounts,
    end: engine::EngineEnd,
    counters: &'a Counters,
    found: Found,
    unwritten: u64,
    latency: Latency,
    spent_before: crate::cost::Money,
    elapsed_secs: f64,
    started_at: String,
    coordinator: Option<&'a Coordinator>,
    copied: dedupe::Copied,
}

impl Ran<'_> {
    fn tallies(self, stops: Stops) -> Tallies {
        let (cfg, c) = (self.cfg, self.counters);
        let answered = self.end.answered();
        Tallies {
            copied: self.copied.copied,
            input: cfg.input.path.display().to_string(),
            output: cfg
                .parquet
                .as_ref()
                .map_or(&cfg.output, |(p, _)| p)
                .display()
                .to_string(),
            jobs: self.jobs,
            intake: self.counts,
            engine: self.end,
            counted: counted(c, self.found),
            unwritten: self.unwritten,
            spent_before: self.spent_before,
            latency: self.latency,
            elapsed_secs: self.elapsed_secs,
            stops,
            resume_command: crate::config::resume_command(&cfg.argv),
            started_at: self.started_at,
            endpoint: match &cfg.endpoint {
                Endpoint::Url(u) => crate::config::shown_endpoint(u),
                Endpoint::Mock(_) => "mock".into(),
            },
            coordinator: self
                .coordinator
                .zip(cfg.coordinator.as_ref())
                .map(|(c, cc)| {
                    let round_trips = c.round_trips();
                    crate::progress::CoordinatorReport {
                        url: cc.shown_url(),
                        run_name: cc.run_name.clone(),
                        worker: cc.worker.clone(),
                        round_trips,
                        round_trips_per_job: round_trips as f64 / answered.max(1) as f64,
                    }
                }),
        }
    }
}

/// The counters' figures, with what the run found.
fn counted(c: &Counters, found: Found) -> Counted {
    Counted {
        ok: c.ok.load(Relaxed),
        failed: c.failed.load(Relaxed),
        failed_by_kind: c.failed_by_kind(),
        requests: c.requests.load(Relaxed),
        retries: c.retries_total(),
        retries_by_reason: c.retries_by_reason(),
        http_429: c.http_429.load(Relaxed),
        prompt_tokens: c.prompt_tokens.load(Relaxed),
        completion_tokens: c.completion_tokens.load(Relaxed),
        spent: c.spent(),
        unpriced: c.unpriced.load(Relaxed),
        provider_limits: found.provider_limits,
        found_rpm: found.found_rpm,
        found_concurrency: found.found_concurrency,
        invalid_answers: c.invalid_answers.load(Relaxed),
        batches: c.batches_submitted.load(Relaxed),
        top_errors: c.top_errors(),
        models: c
            .models
            .lock()
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default(),
        invalid_cost: crate::cost::Money(c.invalid_cost.load(Relaxed)),
    }
}
