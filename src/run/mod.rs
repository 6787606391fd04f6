//! The orchestrator: validates the job file, takes the output lock, scans the checkpoint, and
//! wires the stages: reader thread -> dispatcher (skip done -> in-flight permit -> rate limit)
//! -> one task per job (attempts, retries) -> writer thread. It owns shutdown: on a stop it
//! admits nothing more, lets in-flight calls finish within the grace period, and always
//! leaves the output whole.

mod task;

use task::{run_job, Ctx, Hold, TaskEnd};

use crate::budget::{Budget, CapReached, LocalBudget};
use crate::checkpoint::{self, Checkpoint, CheckpointError, Decision, OutputLock, RunMeta};
use crate::cost::{Money, PriceTable};
use crate::histogram::Histogram;
use crate::job::keys::KeyMap;
use crate::job::{self, InputError, InputSpec, JobStream};
use crate::limit::Limiter;
use crate::mock::{MockConfig, MockServer};
use crate::output::jsonl::{self, Drained, JsonlWriter, WriteError};
use crate::output::parquet::{self, ParquetOptions};
use crate::output::record::timestamp;
use crate::output::Status;
use crate::paths::{self, TargetError};
use crate::progress::{Counters, Latency, Outcome, ProgressMode, Reporter, Summary};
use crate::provider::{Client, ClientConfig, ClientError, ErrorKind};
use crate::retry::Backoff;
use crate::secret::{ApiKey, Scrubber};
use crate::shutdown::{Phase, Shutdown};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

/// Where requests go.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// An OpenAI-compatible base URL.
    Url(String),
    /// The simulator, started in-process on 127.0.0.1.
    Mock(Box<MockConfig>),
}

/// Everything a run needs, resolved from flags, spec and defaults.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub input: InputSpec,
    pub output: PathBuf,
    pub endpoint: Endpoint,
    pub api_key: Option<ApiKey>,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    pub max_response_bytes: usize,
    pub allow_insecure_http: bool,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub concurrency: usize,
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// Output tokens charged to the limiter for jobs without `max_tokens`.
    pub default_output_tokens: u64,
    pub retry_failed: bool,
    /// Hard cap on the money recorded in the output, over all runs.
    pub max_cost: Option<Money>,
    /// Jobs failing in a row with the same kind of error that stop the run (0: never).
    pub circuit_breaker: u32,
    /// Send at most this many jobs this run (a sample before the whole file).
    pub limit: Option<u64>,
    pub fresh: bool,
    /// Move unreadable output lines to the quarantine file instead of refusing the output.
    pub repair: bool,
    /// Drop records of ids no longer in the job file.
    pub prune: bool,
    pub keep_response: bool,
    pub prices: PriceTable,
    pub progress: ProgressMode,
    pub grace: Duration,
    /// The command line, for the resume hint and the output's meta.
    pub argv: Vec<String>,
    /// Parquet output: the file, written from the journal (`output`) at the end of the run.
    pub parquet: Option<(PathBuf, ParquetOptions)>,
    /// Files the run reads besides the job file (spec, template, prices): never written.
    pub reads: Vec<PathBuf>,
    /// Where the caller writes the summary as JSON, checked with the run's own files.
    pub summary_json: Option<PathBuf>,
    /// Problems `validate` lists before giving up.
    pub max_errors: usize,
}

/// Errors that stop a run before anything is sent (exit 1).
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
    /// A signal stopped the run before anything was sent.
    #[error("interrupted while {0}; nothing was sent")]
    Interrupted(&'static str),
}

impl RunError {
    /// The exit code of a run that ended with this error (README's table).
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Write(_)
            | RunError::Target(_)
            | RunError::Checkpoint(CheckpointError::Io { .. }) => 5,
            RunError::Interrupted(_) => 130,
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

/// What this run is, for the output's meta.
fn run_meta(cfg: &RunConfig) -> RunMeta {
    let input = std::fs::canonicalize(&cfg.input.path).unwrap_or_else(|_| cfg.input.path.clone());
    RunMeta {
        bulkprompt: env!("CARGO_PKG_VERSION").into(),
        input: input.display().to_string(),
        endpoint: match &cfg.endpoint {
            Endpoint::Url(u) => u.trim_end_matches('/').to_string(),
            Endpoint::Mock(_) => "mock".into(),
        },
        model: cfg.input.defaults.model.clone(),
        argv: crate::config::redact_argv(&cfg.argv),
        cwd: std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_default(),
        updated_at: timestamp(SystemTime::now()),
        removed_cost_usd: 0.0,
    }
}

/// Every file a run writes: the output (or journal), its lock, meta, quarantine and
/// temporary files, and the Parquet target with its temporary file.
fn written_files(cfg: &RunConfig) -> Vec<PathBuf> {
    let out = &cfg.output;
    let meta = RunMeta::path_for(out);
    let mut w = vec![
        out.clone(),
        OutputLock::path_for(out),
        checkpoint::temp_path(out),
        paths::sibling(&meta, ".tmp"),
        meta,
        checkpoint::quarantine_path(out),
        paths::sibling(out, ".repair.tmp"),
    ];
    if let Some((target, _)) = &cfg.parquet {
        w.push(target.clone());
        w.push(parquet::temp_path(target));
    }
    w.extend(cfg.summary_json.clone());
    w
}

/// Refuses a run that would write over a file it reads (`-o jobs.jsonl`, a symlink to it, a
/// job file named like the output's meta): checked before anything is opened for writing.
fn check_overwrites(cfg: &RunConfig) -> Result<(), RunError> {
    let reads = std::iter::once((&cfg.input.path, "the job file"))
        .chain(cfg.reads.iter().map(|p| (p, "a file this run reads")));
    for (read, what) in reads {
        if let Some(w) = written_files(cfg)
            .iter()
            .find(|w| paths::same_file(w, read))
        {
            return Err(RunError::Overwrites {
                written: w.clone(),
                what,
                read: read.clone(),
            });
        }
    }
    Ok(())
}

/// Whether `url` points at this machine.
pub fn is_loopback(url: &str) -> bool {
    let Ok(u) = reqwest::Url::parse(url) else {
        return false;
    };
    match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Tallies kept by the writer thread.
#[derive(Default)]
struct Tally {
    latency: Histogram,
}

/// What a run knows before it sends anything.
struct Prepared {
    /// Jobs in the file.
    jobs: u64,
    /// Their ids, kept only for `--prune`.
    input_ids: Option<KeyMap>,
    /// Money of records pruned from the output by earlier runs.
    removed_cost: Money,
    checkpoint: Checkpoint,
    _lock: OutputLock,
}

/// Checks the configuration, locks the output, and reads the job file and the output (at the
/// same time: they are independent, and on two cores that halves the wait for the first
/// request). Nothing is sent and nothing is written to the output before this succeeds; a
/// signal meanwhile stops it at once.
async fn prepare(
    cfg: &RunConfig,
    started: Instant,
    shutdown: &Shutdown,
) -> Result<Prepared, RunError> {
    if let Endpoint::Url(u) = &cfg.endpoint {
        if u.starts_with("http://")
            && cfg.api_key.is_some()
            && !is_loopback(u)
            && !cfg.allow_insecure_http
        {
            return Err(RunError::Config(format!(
                "refusing to send the API key over plain http to {u}; use https, or pass --allow-insecure-http"
            )));
        }
    }
    check_overwrites(cfg)?;
    let targets = std::iter::once(&cfg.output).chain(cfg.parquet.as_ref().map(|(p, _)| p));
    for target in targets {
        if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| WriteError {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        paths::check_writable(target)?;
    }
    let lock = OutputLock::acquire(&cfg.output)?;
    let mut leftovers = checkpoint::remove_leftovers(&cfg.output);
    if let Some((target, _)) = &cfg.parquet {
        let tmp = parquet::temp_path(target);
        if std::fs::remove_file(&tmp).is_ok() {
            leftovers.push(tmp);
        }
    }
    for l in leftovers {
        tracing::info!("removed {}, left by an interrupted run", l.display());
    }
    let mut meta = run_meta(cfg);
    let has_records = std::fs::metadata(&cfg.output).is_ok_and(|m| m.len() > 0);
    let old = RunMeta::load(&cfg.output)?;
    if let (false, true, Some(old)) = (cfg.fresh, has_records, &old) {
        if let Some(diff) = old.compare(&meta) {
            return Err(RunError::Config(format!(
                "{} was written by a different run ({diff}); pass --fresh to start it over, or -o to write elsewhere",
                cfg.output.display()
            )));
        }
    }
    if !cfg.fresh {
        meta.removed_cost_usd = old.as_ref().map_or(0.0, |m| m.removed_cost_usd);
    }
    if cfg.repair && !cfg.fresh {
        let moved = checkpoint::repair(&cfg.output)?;
        if moved > 0 {
            tracing::warn!(
                "--repair: moved {moved} unreadable line{} of {} to {}; their jobs run again",
                if moved == 1 { "" } else { "s" },
                cfg.output.display(),
                checkpoint::quarantine_path(&cfg.output).display()
            );
        }
    }
    tracing::debug!("reading the job file {}", cfg.input.path.display());
    let joined = |e: tokio::task::JoinError| RunError::Config(format!("reading task failed: {e}"));
    let (input, max_errors, prune) = (cfg.input.clone(), cfg.max_errors, cfg.prune);
    let validation =
        tokio::task::spawn_blocking(move || job::source::validate(&input, max_errors, prune));
    let out = cfg.output.clone();
    let scan = (!cfg.fresh).then(|| tokio::task::spawn_blocking(move || checkpoint::scan(&out)));
    let read = async {
        let validation = validation.await.map_err(joined)??;
        let checkpoint = match scan {
            Some(scan) => scan.await.map_err(joined)??,
            None => Checkpoint::default(),
        };
        Ok::<_, RunError>((validation, checkpoint))
    };
    // The reading threads cannot be cancelled; the runtime is shut down without waiting for
    // them (app.rs), so a stop here ends the process at once.
    let (validation, checkpoint) = tokio::select! {
        r = read => r?,
        _ = shutdown.reached(Phase::Draining) => {
            return Err(RunError::Interrupted("reading the job file and the output"))
        }
    };
    if !validation.errors.is_empty() {
        return Err(RunError::InvalidInput {
            errors: validation.errors,
            more: validation.more_errors,
        });
    }
    if let Some(cap) = cfg.max_cost {
        let unpriced: Vec<&str> = validation
            .models
            .iter()
            .filter(|m| cfg.prices.get(m).is_none())
            .map(String::as_str)
            .collect();
        if !unpriced.is_empty() {
            return Err(RunError::Config(format!(
                "--max-cost {cap}: no price is known for {}; add prices with --prices FILE or `bulkprompt prices --sync URL`",
                unpriced.join(", ")
            )));
        }
        if validation.without_max_tokens > 0 {
            tracing::warn!(
                "--max-cost: {} jobs set no max_tokens, so {} output tokens are reserved for each; a longer answer could overrun the cap (set --max-tokens to make it exact)",
                validation.without_max_tokens,
                cfg.default_output_tokens
            );
        }
    }
    tracing::debug!(
        "read {} jobs and {} records of {} ids; ready at {:.2}s",
        validation.jobs,
        checkpoint.lines,
        checkpoint.ids(),
        started.elapsed().as_secs_f64()
    );
    if checkpoint.repaired_bytes > 0 {
        tracing::warn!(
            "{}: cut {} bytes of a record torn by an earlier crash",
            cfg.output.display(),
            checkpoint.repaired_bytes
        );
    }
    meta.store(&cfg.output)?;
    if cfg.fresh {
        std::fs::File::create(&cfg.output).map_err(|source| WriteError {
            path: cfg.output.clone(),
            source,
        })?;
    }
    Ok(Prepared {
        jobs: validation.jobs,
        input_ids: validation.ids,
        removed_cost: Money::from_usd(meta.removed_cost_usd),
        checkpoint,
        _lock: lock,
    })
}

/// Runs a job file to completion (or until stopped) and reports how it went.
pub async fn run(cfg: RunConfig, shutdown: Shutdown) -> Result<Summary, RunError> {
    let started = Instant::now();
    let Prepared {
        jobs: total_jobs,
        input_ids,
        removed_cost,
        checkpoint,
        _lock,
    } = prepare(&cfg, started, &shutdown).await?;
    let spent_before = checkpoint.totals.spent + removed_cost;

    let _mock;
    let base_url = match &cfg.endpoint {
        Endpoint::Url(u) => {
            _mock = None;
            u.clone()
        }
        Endpoint::Mock(mc) => {
            let server = MockServer::start(([127, 0, 0, 1], 0).into(), (**mc).clone())
                .await
                .map_err(RunError::Mock)?;
            let url = server.base_url();
            _mock = Some(server);
            url
        }
    };
    let client = Client::new(&ClientConfig {
        base_url,
        api_key: cfg.api_key.clone(),
        headers: cfg.headers.clone(),
        timeout: cfg.timeout,
        pool_size: cfg.concurrency,
        max_response_bytes: cfg.max_response_bytes,
        scrubber: Scrubber::new(
            cfg.api_key.as_ref(),
            cfg.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        ),
    })?;

    let counters = Arc::new(Counters::default());
    let writer = JsonlWriter::open(&cfg.output)?;
    let (wtx, wrx) = std::sync::mpsc::channel();
    let writer_failed = Arc::new(Notify::new());
    let writer_thread = {
        let counters = counters.clone();
        let failed = writer_failed.clone();
        let retry_for = cfg.grace;
        std::thread::Builder::new()
            .name("bulkprompt-writer".into())
            .spawn(move || {
                let mut tally = Tally::default();
                let drained = jsonl::drain(
                    writer,
                    wrx,
                    retry_for,
                    |_| failed.notify_one(),
                    |r| {
                        tally.latency.record(r.latency_ms);
                        match (&r.status, &r.error) {
                            (Status::Ok, _) => {
                                counters.ok.fetch_add(1, Relaxed);
                            }
                            (Status::Failed, e) => {
                                counters.failed(e.as_ref().map_or(ErrorKind::Server, |e| e.kind))
                            }
                        }
                        counters
                            .prompt_tokens
                            .fetch_add(r.prompt_tokens.unwrap_or(0), Relaxed);
                        counters
                            .completion_tokens
                            .fetch_add(r.completion_tokens.unwrap_or(0), Relaxed);
                        if let Some(c) = r.cost_usd {
                            counters.spent.fetch_add(Money::from_usd(c).0, Relaxed);
                        }
                    },
                );
                (drained, tally)
            })
            .map_err(|e| RunError::Config(format!("starting the writer: {e}")))?
    };

    let ctx = Arc::new(Ctx {
        client,
        endpoint: match &cfg.endpoint {
            Endpoint::Url(u) => u.clone(),
            Endpoint::Mock(_) => "the simulator".into(),
        },
        limiter: Limiter::new(cfg.rpm, cfg.tpm),
        counters: counters.clone(),
        prices: cfg.prices.clone(),
        writer: wtx,
        shutdown: shutdown.clone(),
        max_attempts: cfg.max_attempts.max(1),
        backoff: cfg.backoff,
        default_output_tokens: cfg.default_output_tokens,
        keep_response: cfg.keep_response,
        opened: AtomicBool::new(false),
        opened_notify: Notify::new(),
        abort: Mutex::new(None),
        abort_notify: Notify::new(),
        warned_unpriced: AtomicBool::new(false),
        streak: Mutex::new((None, 0)),
        breaker_at: cfg.circuit_breaker,
        budget: cfg
            .max_cost
            .map(|cap| Arc::new(LocalBudget::new(cap, spent_before)) as Arc<dyn Budget>),
        cost_ratio: Mutex::new(Default::default()),
    });
    let reporter = Reporter::start(cfg.progress, total_jobs, counters.clone());

    // Dispatch.
    let mut stream = JobStream::spawn(cfg.input.clone(), 1024)?;
    let permits = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let mut tasks: JoinSet<(Decision, TaskEnd)> = JoinSet::new();
    let mut tally = DispatchTally::default();
    let mut writer_broke = false;
    let mut cap_reached: Option<CapReached> = None;
    let mut input_error = None;
    let mut read_all = false;
    let write_failed = writer_failed.notified();
    tokio::pin!(write_failed);
    loop {
        while let Some(end) = tasks.try_join_next() {
            tally.ended(end);
        }
        let next = tokio::select! {
            biased;
            _ = &mut write_failed => { writer_broke = true; break }
            _ = ctx.stopping() => break,
            j = stream.next() => j,
        };
        let job = match next {
            None => {
                read_all = true;
                break;
            }
            Some(Ok(job)) => job,
            Some(Err(e)) => {
                input_error = Some(e.to_string());
                break;
            }
        };
        tally.read += 1;
        let decision = checkpoint.decide(&job, cfg.retry_failed);
        match decision {
            Decision::Done => {
                tally.skipped_done += 1;
                counters.skipped.fetch_add(1, Relaxed);
                continue;
            }
            Decision::SkipFailed => {
                tally.skipped_failed += 1;
                counters.skipped.fetch_add(1, Relaxed);
                continue;
            }
            _ if cfg.limit.is_some_and(|l| tally.dispatched >= l) => break,
            _ => {}
        }
        let charge = ctx.charge(&job);
        let admitted = async {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return Admit::Closed;
            };
            // The first request goes alone: a bad key or endpoint costs one call, not thousands,
            // and its cost teaches the budget before anything else is reserved.
            if tally.dispatched > 0 {
                let opened = ctx.opened_notify.notified();
                if !ctx.opened.load(Relaxed) {
                    opened.await;
                }
            }
            let hold = match &ctx.budget {
                None => None,
                Some(budget) => match budget.reserve(ctx.worst_case(&job)) {
                    Ok(r) => Some(Hold {
                        budget: budget.clone(),
                        reservation: Some(r),
                    }),
                    Err(cap) => return Admit::Cap(cap),
                },
            };
            let grant = ctx.limiter.acquire(charge).await;
            Admit::Go(permit, grant, hold)
        };
        let (permit, grant, hold) = tokio::select! {
            biased;
            _ = &mut write_failed => { writer_broke = true; break }
            _ = ctx.stopping() => break,
            a = admitted => match a {
                Admit::Go(permit, grant, hold) => (permit, grant, hold),
                Admit::Cap(cap) => { cap_reached = Some(cap); break }
                Admit::Closed => break,
            },
        };
        tally.dispatched += 1;
        let ctx = ctx.clone();
        tasks.spawn(async move {
            let end = run_job(ctx, job, grant, hold).await;
            drop(permit);
            (decision, end)
        });
    }
    drop(stream);
    if read_all && tally.read < total_jobs {
        input_error = Some(format!(
            "{} jobs were read of the {total_jobs} validated",
            tally.read
        ));
    }
    // Let calls in flight finish: they are paid for. On a stop or a write failure, within the
    // grace period (the writer keeps their answers and retries the write meanwhile).
    let in_flight = cfg.concurrency.max(1) - permits.available_permits();
    if ctx.shutdown.phase() >= Phase::Draining || writer_broke {
        if in_flight > 0 {
            tracing::warn!(
                "stopping: waiting up to {}s for {in_flight} requests in flight (press Ctrl-C again to stop now)",
                cfg.grace.as_secs()
            );
        }
        tokio::select! {
            _ = async { while let Some(end) = tasks.join_next().await { tally.ended(end) } } => {}
            _ = tokio::time::sleep(cfg.grace) => {}
            _ = ctx.shutdown.reached(Phase::Now) => {}
        }
    } else {
        tokio::select! {
            _ = async { while let Some(end) = tasks.join_next().await { tally.ended(end) } } => {}
            _ = &mut write_failed => {
                writer_broke = true;
                tokio::select! {
                    _ = async { while let Some(end) = tasks.join_next().await { tally.ended(end) } } => {}
                    _ = tokio::time::sleep(cfg.grace) => {}
                    _ = ctx.shutdown.reached(Phase::Now) => {}
                }
            }
        }
    }
    tasks.abort_all();
    while let Some(end) = tasks.join_next().await {
        tally.ended(end);
    }
    let stopped_early = ctx.shutdown.phase() >= Phase::Draining
        || ctx.aborted()
        || writer_broke
        || input_error.is_some()
        || cap_reached.is_some();

    let abort_reason = ctx.abort.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let ctx = Arc::into_inner(ctx);
    drop(ctx); // closes the writer channel
    reporter.finish().await;
    let (drained, wtally) = writer_thread
        .join()
        .map_err(|_| RunError::Config("the writer thread panicked".into()))?;
    let Drained {
        error: write_error,
        unwritten,
        written_late,
    } = drained;
    if written_late > 0 {
        tracing::warn!("{written_late} answers were written after the write failure cleared");
    }

    // One record per id: drop superseded lines once everything is written (their cost is
    // carried into the surviving records; pruned records' cost goes into the meta first).
    let mut compact_error = None;
    let prune_ids = input_ids.filter(|_| !stopped_early);
    let rewrote = tally.retried + tally.changed > 0;
    if write_error.is_none() && (checkpoint.has_superseded() || rewrote || prune_ids.is_some()) {
        let out = cfg.output.clone();
        let compacted = tokio::task::spawn_blocking(move || {
            let keep = prune_ids.map(|ids| move |k: &crate::job::IdKey| ids.contains(k));
            let keep = keep
                .as_ref()
                .map(|k| k as &dyn Fn(&crate::job::IdKey) -> bool);
            checkpoint::compact(&out, keep, &mut |c| {
                if c.pruned_cost > Money::ZERO {
                    if let Some(mut meta) = RunMeta::load(&out)? {
                        meta.removed_cost_usd =
                            (Money::from_usd(meta.removed_cost_usd) + c.pruned_cost).usd();
                        meta.store(&out)?;
                    }
                }
                Ok(())
            })
        });
        match compacted.await {
            Ok(Ok(c)) => tracing::debug!(
                "compacted the output: {} superseded or pruned records dropped",
                c.dropped
            ),
            Ok(Err(e)) => compact_error = Some(e.to_string()),
            Err(e) => compact_error = Some(format!("compaction task failed: {e}")),
        }
    }
    // Parquet: convert the journal, whole or partial, so the file always reflects the journal.
    let mut convert_error = None;
    if let (Some((target, options)), None) = (&cfg.parquet, &write_error) {
        let (journal, target, options) = (cfg.output.clone(), target.clone(), *options);
        match tokio::task::spawn_blocking(move || parquet::convert(&journal, &target, options))
            .await
        {
            Ok(Ok(c)) => tracing::debug!("wrote {} Parquet rows", c.rows),
            Ok(Err(e)) => convert_error = Some(e.to_string()),
            Err(e) => convert_error = Some(format!("conversion task failed: {e}")),
        }
    }

    let c = &counters;
    let ok = c.ok.load(Relaxed);
    let failed = c.failed.load(Relaxed);
    let requests = c.requests.load(Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let answered = tally.new + tally.retried + tally.changed;
    let not_run = total_jobs.saturating_sub(tally.skipped_done + tally.skipped_failed + answered);
    let total_spent = spent_before + c.spent();
    // Failures in the output after this run: this run's, plus permanent ones it skipped.
    let output_failed = failed + tally.skipped_failed;
    let (outcome, message) = if let Some(e) = convert_error {
        (
            Outcome::OutputFailed,
            Some(format!(
                "{e}; the journal {} is intact, re-run to convert again",
                cfg.output.display()
            )),
        )
    } else if let Some(e) = &write_error {
        let lost = match unwritten {
            0 => "every answer that arrived was written".to_string(),
            n => format!(
                "{n} answers that arrived could not be written and will be bought again on resume"
            ),
        };
        (
            Outcome::OutputFailed,
            Some(format!(
                "{e}; {lost}; what was written is valid, re-run to resume once fixed"
            )),
        )
    } else if let Some(e) = compact_error {
        (
            Outcome::OutputFailed,
            Some(format!(
                "could not compact the output: {e}; every record is kept and valid, but ids that ran again appear more than once until a re-run compacts it"
            )),
        )
    } else if let Some(e) = &input_error {
        (
            Outcome::Aborted,
            Some(format!("the job file changed while running: {e}")),
        )
    } else if let Some(r) = abort_reason {
        (Outcome::Aborted, Some(r))
    } else if let Some(cap) = cap_reached {
        (
            Outcome::Budget,
            Some(format!(
                "cost cap {} reached: {total_spent} recorded in the output over all runs, and the next job could cost up to {}; re-run with a larger --max-cost to continue",
                cap.cap, cap.wanted
            )),
        )
    } else if shutdown.phase() >= Phase::Draining {
        (Outcome::Interrupted, None)
    } else if output_failed > 0 {
        (Outcome::FailedJobs, None)
    } else {
        (Outcome::Completed, None)
    };
    let resume = (stopped_early || not_run > 0).then(|| crate::config::resume_command(&cfg.argv));
    Ok(Summary {
        outcome,
        exit_code: outcome.exit_code(),
        message,
        input: cfg.input.path.display().to_string(),
        output: cfg
            .parquet
            .as_ref()
            .map_or(&cfg.output, |(p, _)| p)
            .display()
            .to_string(),
        jobs: total_jobs,
        skipped_done: tally.skipped_done,
        skipped_failed: tally.skipped_failed,
        new: tally.new,
        retried_failed: tally.retried,
        changed: tally.changed,
        not_run,
        ok,
        failed,
        unwritten,
        failed_by_kind: c.failed_by_kind(),
        requests,
        retries: c.retries_total(),
        retries_by_reason: c.retries_by_reason(),
        http_429: c.http_429.load(Relaxed),
        prompt_tokens: c.prompt_tokens.load(Relaxed),
        completion_tokens: c.completion_tokens.load(Relaxed),
        cost_usd: c.spent().usd(),
        unpriced_jobs: c.unpriced.load(Relaxed),
        total_cost_usd: total_spent.usd(),
        latency_ms: Latency::from(&wtally.latency),
        elapsed_secs: elapsed,
        requests_per_sec: requests as f64 / elapsed.max(1e-9),
        output_failed,
        resume_command: resume,
    })
}

/// What the dispatcher got for a job.
enum Admit {
    Go(
        tokio::sync::OwnedSemaphorePermit,
        crate::limit::Grant,
        Option<Hold>,
    ),
    /// The budget cannot hold the job's worst case.
    Cap(CapReached),
    Closed,
}

/// The dispatcher's counts. Jobs in the file = skipped_done + skipped_failed + new + retried +
/// changed (jobs that got a record this run) + not run (the rest, abandoned ones included).
#[derive(Default)]
struct DispatchTally {
    /// Jobs read from the file so far.
    read: u64,
    skipped_done: u64,
    skipped_failed: u64,
    new: u64,
    retried: u64,
    changed: u64,
    dispatched: u64,
}

impl DispatchTally {
    /// Counts a finished job task by what it was dispatched as, if it produced a record.
    fn ended(&mut self, end: Result<(Decision, TaskEnd), tokio::task::JoinError>) {
        match end {
            Ok((decision, TaskEnd::Recorded)) => match decision {
                Decision::Retry => self.retried += 1,
                Decision::Changed => self.changed += 1,
                _ => self.new += 1,
            },
            Ok((_, TaskEnd::Abandoned)) => {}
            // Job tasks catch their own panics (and record the job); only an abort lands here.
            Err(e) if e.is_panic() => tracing::error!("a job task panicked: {e}"),
            Err(_) => {}
        }
    }
}
