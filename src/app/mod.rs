//! The commands behind the binary: each turns parsed flags into a call on the library and
//! returns the process exit code. `main` only parses, sets up logging and prints errors.

mod batches;
mod merge;

use crate::cli::{Command, PricesArgs, RunArgs, ServeMockArgs, StatusArgs, ValidateArgs};
use crate::config::{self, ConfigError};
use crate::cost::{PriceError, PriceTable};
use crate::mock::{Faults, MockConfig, MockServer, Storm};
use crate::output::parquet::ParquetError;
use crate::paths::TargetError;
use crate::prices_sync::SyncError;
use crate::run::{self, RunError};
use crate::run_files::RunFiles;
use crate::secret::ApiKey;
use crate::shutdown::Shutdown;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// Errors that end a command; [`AppError::exit_code`] picks the code (README's table).
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Flags, spec or environment do not hold together (exit 1).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A run (or a command reading an output) could not start or go on.
    #[error(transparent)]
    Run(#[from] RunError),
    /// A flag's value this command cannot use (exit 1).
    #[error("{0}")]
    Usage(String),
    /// The async runtime or a listening socket could not be set up (exit 1).
    #[error("{what}")]
    Setup {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A file could not be written (exit 5).
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An export target cannot be written (exit 5).
    #[error(transparent)]
    Target(#[from] TargetError),
    /// An export could not read its source (exit 1) or write Parquet (exit 5).
    #[error(transparent)]
    Parquet(#[from] ParquetError),
    /// The price table could not be read (exit 1).
    #[error(transparent)]
    Prices(#[from] PriceError),
    /// Prices could not be fetched (exit 1) or written (exit 5).
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// A report could not read its output (exit 1) or be written (exit 5).
    #[error(transparent)]
    Report(#[from] crate::report::ReportError),
}

impl AppError {
    pub fn exit_code(&self) -> i32 {
        match self {
            AppError::Run(e) => e.exit_code(),
            AppError::Write { .. }
            | AppError::Target(_)
            | AppError::Parquet(ParquetError::Write { .. })
            | AppError::Sync(SyncError::Write { .. })
            | AppError::Report(crate::report::ReportError::Write { .. })
            | AppError::Report(crate::report::ReportError::Read(ParquetError::Write { .. })) => 5,
            _ => 1,
        }
    }
}

/// An error and its causes, each once: a cause whose text the message already holds (many
/// messages end with `: {source}`) is not repeated.
pub fn render_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let t = c.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        cause = c.source();
    }
    text
}

/// `--log-format json`: the end-of-run summary is one JSON line on stderr too, not text.
pub static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub use crate::term::no_color;
pub use crate::version::{version, VERSION};

/// Runs a command to completion; `Ok` is the exit code.
pub fn execute(command: Command, argv: Vec<String>) -> Result<i32, AppError> {
    match command {
        Command::Run(args) => {
            let rt = run_runtime()?;
            // Spawned, not polled by `block_on` itself: a panic comes back as the task's
            // error and goes on below as if there had been no task.
            let result = rt.block_on(async {
                match tokio::spawn(run_cmd(*args, argv)).await {
                    Ok(r) => r,
                    // A panic goes on as if the run had not been spawned.
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(e) => Err(AppError::Setup {
                        what: "the run's task was cancelled".into(),
                        source: std::io::Error::other(e.to_string()),
                    }),
                }
            });
            // Reading threads interrupted by a signal may still be going: do not wait for them.
            rt.shutdown_background();
            result
        }
        Command::Validate(args) => validate_cmd(args),
        Command::Status(args) => status_cmd(args),
        Command::Estimate(args) => estimate_cmd(*args),
        Command::ServeMock(args) => {
            let threads = args.threads;
            runtime(threads)?.block_on(serve_mock_cmd(args))
        }
        Command::Prices(args) => prices_cmd(args),
        Command::Export(args) => export_cmd(args),
        Command::Providers => providers_cmd(),
        Command::Batches(args) => batches::batches_cmd(args),
        Command::Merge(args) => merge::merge_cmd(args),
        Command::Report(args) => report_cmd(args),
    }
}

/// The JSONL an output's records are in (a Parquet output's journal), and the name to show.
fn records_of(output: &std::path::Path) -> PathBuf {
    RunFiles::named(output).found_records()
}

fn report_cmd(args: crate::cli::ReportArgs) -> Result<i32, AppError> {
    let jsonl = records_of(&args.output);
    if !jsonl.is_file() {
        return Err(AppError::Usage(format!(
            "{}: no such output",
            args.output.display()
        )));
    }
    let summary = match &args.summary {
        None => None,
        Some(p) => {
            let bytes = std::fs::read(p)
                .map_err(|e| AppError::Usage(format!("--summary {}: {e}", p.display())))?;
            Some(
                serde_json::from_slice::<crate::progress::Summary>(&bytes).map_err(|e| {
                    AppError::Usage(format!(
                        "--summary {}: not a run summary (--summary-json): {e}",
                        p.display()
                    ))
                })?,
            )
        }
    };
    let target = args
        .report
        .clone()
        .unwrap_or_else(|| crate::report::default_path(&args.output));
    let target = writable_target(&target)?;
    let r = crate::report::write(&jsonl, &args.output, &target, summary.as_ref())?;
    let _ = writeln!(
        std::io::stderr(),
        "{}: {} records, {} KB",
        target.display(),
        r.records,
        r.bytes.div_ceil(1024)
    );
    Ok(0)
}

/// Thousands of requests in flight need thousands of sockets: raise the soft limit on open
/// files to the hard one (often 1,024 soft against 500,000 or more hard).
fn raise_open_files_limit() {
    #[cfg(unix)]
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max.min(1 << 20);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// A run is a batch job and tells the kernel so: Linux's `SCHED_BATCH`, taken before any of
/// the run's threads start (they inherit it). The kernel then never lets one of the run's
/// wake-ups (an answer arriving, a timer) preempt whatever holds the core: a server on the same
/// machine (llama.cpp, vLLM, the simulator) and the run's other threads each finish their slice,
/// and the run wakes to more answers at once. Three workers and a simulator on two cores
/// measured 8-14% less wall time with it, one worker 3-9% (docs/design.md).
/// A policy other than the default (real-time, idle, one set with `chrt`) is left as it is, and
/// a refusal (a sandbox) changes nothing.
fn schedule_as_batch() {
    #[cfg(target_os = "linux")]
    // SAFETY: both calls act on the calling thread and only read the struct we pass.
    unsafe {
        if libc::sched_getscheduler(0) == libc::SCHED_OTHER {
            let param = libc::sched_param { sched_priority: 0 };
            libc::sched_setscheduler(0, libc::SCHED_BATCH, &param);
        }
    }
}

/// The run's runtime: every request, the dispatcher and the limiters on one thread, the
/// blocking work (validation, the checkpoint's scan, the finish) on the blocking pool and the
/// reader and writer on threads of their own (docs/design.md, "One thread for the requests").
fn run_runtime() -> Result<tokio::runtime::Runtime, AppError> {
    raise_open_files_limit();
    schedule_as_batch();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| AppError::Setup {
            what: "starting the async runtime".into(),
            source,
        })
}

pub(super) fn runtime(threads: Option<usize>) -> Result<tokio::runtime::Runtime, AppError> {
    raise_open_files_limit();
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        b.worker_threads(n.max(1));
    }
    b.enable_all().build().map_err(|source| AppError::Setup {
        what: "starting the async runtime".into(),
        source,
    })
}

async fn run_cmd(args: RunArgs, argv: Vec<String>) -> Result<i32, AppError> {
    let started_at = crate::output::record::timestamp(std::time::SystemTime::now());
    let summary_path = args.summary_json.clone();
    let result = async {
        let cfg = config::resolve_run(&args, &argv)?;
        let shutdown = Shutdown::default();
        shutdown.listen_for_signals();
        Ok::<_, AppError>(run::run(cfg, shutdown).await?)
    }
    .await;
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            // A scheduler reading the summary must never find yesterday's: say what failed.
            // Only over nothing or an earlier summary: the path could be a file the run reads.
            let replaceable = |p: &&PathBuf| {
                let ok = crate::progress::replaceable_summary(p);
                if !ok {
                    eprintln!(
                        "bulkprompt: --summary-json {}: not written: the file there is not a bulkprompt summary",
                        p.display()
                    );
                }
                ok
            };
            if let Some(path) = summary_path.as_ref().filter(replaceable) {
                let json = serde_json::json!({
                    "outcome": "error",
                    "exit_code": e.exit_code(),
                    "message": render_chain(&e),
                    "started_at": started_at,
                    "ended_at": crate::output::record::timestamp(std::time::SystemTime::now()),
                    "version": VERSION,
                });
                let _ = std::fs::write(path, serde_json::to_vec_pretty(&json).unwrap_or_default());
            }
            return Err(e);
        }
    };
    let mut err = std::io::stderr().lock();
    if JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed) {
        let line = serde_json::json!({"level": "INFO", "fields": {"message": "summary", "summary": &summary}});
        let _ = writeln!(err, "{line}");
    } else {
        let _ = err.write_all(summary.render().as_bytes());
    }
    if let Some(path) = summary_path {
        let json = serde_json::to_vec_pretty(&summary).unwrap_or_default();
        std::fs::write(&path, json).map_err(|source| AppError::Write { path, source })?;
    }
    if args.report {
        // The output as the user named it (the Parquet target, or the JSONL output).
        let shown = PathBuf::from(&summary.output);
        let target = crate::report::default_path(&shown);
        match crate::report::write(&records_of(&shown), &shown, &target, Some(&summary)) {
            Ok(_) => tracing::info!("report: {}", target.display()),
            Err(e) => tracing::warn!("the report could not be written: {}", render_chain(&e)),
        }
    }
    Ok(summary.exit_code)
}

fn estimate_cmd(mut args: crate::cli::EstimateArgs) -> Result<i32, AppError> {
    if args.run.job.model.len() > 1 {
        return compare_cmd(args);
    }
    let mut cfg = config::resolve_estimate(&args)?;
    let calibration = match args.calibrate {
        None | Some(0) => None,
        Some(n) => {
            let argv: Vec<String> = std::env::args().collect();
            let run = config::resolve_run(&args.run, &argv)?;
            let c = runtime(Some(1))?
                .block_on(crate::calibrate::calibrate(&run, n))
                .map_err(AppError::Usage)?;
            cfg.calibrated = c.factors();
            Some(c)
        }
    };
    let e = crate::estimate::estimate(&cfg).map_err(RunError::from)?;
    let mut out = std::io::stdout().lock();
    if let (Some(c), false) = (&calibration, args.json) {
        let _ = out.write_all(c.render().as_bytes());
    }
    if args.json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&e).unwrap_or_default()
        );
    } else {
        let _ = out.write_all(e.render().as_bytes());
    }
    args.run.job.model.clear();
    Ok(unpriced_code(&e, args.run.max_cost))
}

/// Under `--max-cost`, an estimate that cannot price some jobs exits 1, as `run` refuses them.
fn unpriced_code(e: &crate::estimate::Estimate, max_cost: Option<f64>) -> i32 {
    if e.unpriced_jobs == 0 || max_cost.is_none() {
        return 0;
    }
    eprintln!(
        "bulkprompt: --max-cost: no price is known for {} ({} jobs): `run` refuses them; add prices with --prices FILE",
        e.unpriced_models().join(", "),
        e.unpriced_jobs
    );
    1
}

/// `estimate --model A --model B`: the job file priced for each model (jobs that name their
/// own model keep it), live and at batch prices, a row each.
fn compare_cmd(args: crate::cli::EstimateArgs) -> Result<i32, AppError> {
    let models = args.run.job.model.clone();
    let mut rows = Vec::new();
    for m in &models {
        let mut one = crate::cli::EstimateArgs {
            run: args.run.clone(),
            assume_output_tokens: args.assume_output_tokens,
            calibrate: None,
            json: args.json,
        };
        one.run.job.model = vec![m.clone()];
        let mut cfg = config::resolve_estimate(&one)?;
        cfg.batch = false;
        let live = crate::estimate::estimate(&cfg).map_err(RunError::from)?;
        cfg.batch = true;
        let batch = crate::estimate::estimate(&cfg).map_err(RunError::from)?;
        rows.push((m.clone(), live, batch));
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let json: Vec<serde_json::Value> = rows
            .iter()
            .map(|(m, l, b)| serde_json::json!({"model": m, "live": l, "batch": b}))
            .collect();
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&json).unwrap_or_default()
        );
    } else {
        let _ = out.write_all(crate::estimate::comparison(&rows).as_bytes());
    }
    let code = rows
        .iter()
        .map(|(_, l, _)| unpriced_code(l, args.run.max_cost))
        .max()
        .unwrap_or(0);
    Ok(code)
}

fn providers_cmd() -> Result<i32, AppError> {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{:<11} {:<58} {:<19} {:<13} out of money or quota",
        "provider", "base URL", "key variable", "limit headers"
    );
    for p in crate::providers::PRESETS {
        let _ = writeln!(
            out,
            "{:<11} {:<58} {:<19} {:<13} {}",
            p.name,
            p.base_url,
            p.key_env.unwrap_or("-"),
            if p.sends_limit_headers { "yes" } else { "no" },
            p.exhausted
        );
    }
    Ok(0)
}

/// The file a command writes to `output` names, symlinks followed (a rename would replace the
/// link), checked writable before any work.
pub(super) fn writable_target(output: &std::path::Path) -> Result<PathBuf, AppError> {
    let target = crate::paths::resolve(output).map_err(|source| AppError::Write {
        path: output.to_path_buf(),
        source,
    })?;
    crate::paths::check_writable(&target)?;
    Ok(target)
}

/// Writes `target` through a temporary file renamed over it once whole (fsynced): a reader
/// never sees half of it, and a failure leaves no temporary file. `shown` names it in errors.
pub(super) fn write_through_temp<T>(
    target: &std::path::Path,
    shown: &std::path::Path,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> Result<T, AppError>,
) -> Result<T, AppError> {
    let werr = |source| AppError::Write {
        path: shown.to_path_buf(),
        source,
    };
    let tmp = crate::paths::TempFile::new(crate::run_files::parquet_temp(target));
    let file = std::fs::File::create(tmp.path()).map_err(werr)?;
    let mut w = std::io::BufWriter::new(file);
    let value = write(&mut w)?;
    let file = w.into_inner().map_err(|e| werr(e.into_error()))?;
    tmp.persist(file, target).map_err(werr)?;
    Ok(value)
}

fn export_cmd(args: crate::cli::ExportArgs) -> Result<i32, AppError> {
    use crate::output::parquet::{convert, ParquetOptions};
    // Typed columns from the schema given, or the one the run used (its meta).
    let schema = match &args.json_schema {
        Some(path) => Some(
            crate::answer::SchemaFile::load(path, None)
                .map_err(AppError::Usage)?
                .schema,
        ),
        None => crate::checkpoint::RunMeta::load(&args.input)
            .ok()
            .flatten()
            .and_then(|m| m.job)
            .and_then(|j| crate::answer::run_schema(&j.params).cloned()),
    };
    let options = ParquetOptions {
        content_json: args.content_json,
        parsed_columns: schema
            .as_ref()
            .map(crate::answer::typed_columns)
            .unwrap_or_default(),
    };
    if crate::paths::same_file(&args.input, &args.output) {
        return Err(AppError::Usage(format!(
            "{} is the output being exported: writing Parquet to it would destroy it; give another -o",
            args.output.display()
        )));
    }
    let target = writable_target(&args.output)?;
    use crate::cli::ExportFormat;
    let ext = |e: &str| {
        target
            .extension()
            .is_some_and(|x| x.eq_ignore_ascii_case(e))
    };
    let format = match args.format {
        Some(f) => f,
        None if ext("parquet") => ExportFormat::Parquet,
        None if ext("csv") => ExportFormat::Csv,
        None => {
            return Err(AppError::Usage(format!(
                "{}: give --format parquet, csv or openai-batch (the name does not say)",
                args.output.display()
            )))
        }
    };
    let rows = match format {
        ExportFormat::Parquet => convert(&args.input, &target, options)?.rows,
        flat => write_through_temp(&target, &args.output, |w| {
            Ok(match flat {
                ExportFormat::Csv => {
                    crate::output::flat::to_csv(&args.input, w, &options.parsed_columns)?.rows
                }
                _ => crate::output::flat::to_openai_batch(&args.input, w)?.rows,
            })
        })?,
    };
    eprintln!("bulkprompt: wrote {rows} rows to {}", args.output.display());
    Ok(0)
}

fn status_cmd(args: StatusArgs) -> Result<i32, AppError> {
    let mut all = Vec::new();
    for output in &args.outputs {
        let output = RunFiles::named(output).found_records();
        all.push(crate::status::status(&output).map_err(|e| AppError::Run(e.into()))?);
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let json = match all.as_slice() {
            [one] => serde_json::to_string_pretty(one),
            many => serde_json::to_string_pretty(many),
        };
        let _ = writeln!(out, "{}", json.unwrap_or_default());
    } else {
        for s in &all {
            let _ = out.write_all(s.render().as_bytes());
        }
    }
    let complete = all.iter().all(|s| s.complete());
    Ok(if args.check && !complete { 2 } else { 0 })
}

fn validate_cmd(args: ValidateArgs) -> Result<i32, AppError> {
    let spec = config::load_spec(&args.job)?;
    let input = config::resolve_input(&args.job, &spec)?;
    let v = crate::job::source::validate(&input, args.max_errors.max(1), Default::default())
        .map_err(RunError::from)?;
    let mut out = std::io::stdout().lock();
    let problems = v.problems;
    for e in &v.errors {
        let _ = writeln!(out, "{e}");
    }
    if v.more_errors > 0 {
        let _ = writeln!(out, "... and {} more", v.more_errors);
    }
    let duplicates = crate::job::source::duplicate_requests(&input);
    if duplicates > 0 {
        let _ = writeln!(
            out,
            "{duplicates} jobs ({:.1}%) repeat an earlier job's request: --dedupe would send each once",
            duplicates as f64 * 100.0 / v.jobs.max(1) as f64
        );
    }
    let _ = writeln!(
        out,
        "{}: {} jobs valid, {} problem{}",
        input.path.display(),
        v.jobs,
        problems,
        if problems == 1 { "" } else { "s" }
    );
    Ok(if problems == 0 { 0 } else { 1 })
}

async fn serve_mock_cmd(args: ServeMockArgs) -> Result<i32, AppError> {
    let mut faults = Faults::default();
    faults
        .apply(&format!("server-error={}", args.fail_rate))
        .map_err(AppError::Usage)?;
    faults
        .apply(&format!("hang={}", args.hang_rate))
        .map_err(AppError::Usage)?;
    for f in &args.faults {
        faults.apply(f).map_err(AppError::Usage)?;
    }
    let storm = args
        .storm
        .as_deref()
        .map(Storm::parse)
        .transpose()
        .map_err(AppError::Usage)?;
    let api_key = match &args.require_key_env {
        Some(var) => Some(ApiKey::new(std::env::var(var).map_err(|_| {
            AppError::Usage(format!("--require-key-env {var}: not set"))
        })?)),
        None => None,
    };
    let config = MockConfig {
        latency: Duration::from_millis(args.latency_ms),
        faults,
        storm,
        rpm: args.rpm,
        tpm: args.tpm,
        window: Duration::from_secs_f64(args.window_secs.max(0.001)),
        seed: args.seed,
        api_key,
        capture_bodies: false,
        cost_factor: None,
        dialect: crate::mock::Dialect::parse(&args.dialect).ok_or_else(|| {
            AppError::Usage(format!(
                "--dialect {:?}: one of openai, openrouter, gemini, aiml",
                args.dialect
            ))
        })?,
        quota_after: args.quota_after,
        advertise_rpm: args.advertise_rpm,
        script: Vec::new(),
        refuse_unknown_models: args.refuse_unknown_models,
        slots: args.slots,
        billing: Default::default(),
        batch: crate::mock::BatchConfig {
            delay: Duration::from_millis(args.batch_delay_ms),
            latency: Duration::from_millis(args.batch_latency_ms),
            fail_rate: args.batch_fail_rate,
            expire_rate: args.batch_expire_rate,
            lose_answers: args.batch_lose_answers,
            lose_output_files: 0,
            max_lines: None,
        },
    };
    let server = MockServer::start((args.host, args.port).into(), config)
        .await
        .map_err(|source| AppError::Setup {
            what: format!("binding {}:{}", args.host, args.port),
            source,
        })?;
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "bulkprompt mock listening on {}", server.base_url());
        let _ = out.flush();
    }
    let _ = tokio::signal::ctrl_c().await;
    let s = server.stats();
    eprintln!(
        "bulkprompt mock: {} requests, {} ok, {} x 429, {} x 5xx, {} hung",
        s.requests, s.ok, s.rate_limited, s.server_errors, s.hung
    );
    Ok(0)
}

fn prices_cmd(args: PricesArgs) -> Result<i32, AppError> {
    if let Some(url) = &args.sync {
        let path = args
            .output
            .clone()
            .or_else(PriceTable::user_file)
            .ok_or_else(|| {
                AppError::Usage("no home directory: give the file to write with -o".into())
            })?;
        let table = runtime(Some(1))?.block_on(crate::prices_sync::fetch(url))?;
        crate::prices_sync::write(&table, url, &path)?;
        eprintln!(
            "bulkprompt: synced {} model prices into {}",
            table.iter().count(),
            path.display()
        );
        return Ok(0);
    }
    let table = PriceTable::load_effective(args.prices.as_deref())?;
    let per_m = |p: u64| p as f64 / 1e6;
    let mut out = std::io::stdout().lock();
    if args.json {
        let rows: Vec<serde_json::Value> = table
            .iter()
            .map(|(m, p)| {
                serde_json::json!({
                    "model": m,
                    "input_per_million": per_m(p.input),
                    "output_per_million": per_m(p.output),
                    "cached_input_per_million": p.cached_input.map(per_m),
                    "cache_write_per_million": p.cache_write.map(per_m),
                    "image_per_thousand": p.image.map(|i| i as f64 / 1e9),
                    "source": table.source(m).0,
                    "read_on": table.source(m).1,
                    "retired_on": table.lifecycle(m).and_then(|l| l.retired_on.clone()),
                    "deprecated_on": table.lifecycle(m).and_then(|l| l.deprecated_on.clone()),
                    "replaced_by": table.lifecycle(m).and_then(|l| l.replaced_by.clone()),
                })
            })
            .collect();
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
        return Ok(0);
    }
    let _ = writeln!(
        out,
        "{:<40} {:>10} {:>10} {:>10} {:>12} {:>6}  read on     source",
        "model", "input/M", "output/M", "cached/M", "images/K", "batch"
    );
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("${v}"));
    for (m, p) in table.iter() {
        let (source, day) = table.source(m);
        let share = p
            .batch_permille
            .unwrap_or(crate::cost::DEFAULT_BATCH_PERMILLE) as f64
            / 1000.0;
        let _ = writeln!(
            out,
            "{:<40} {:>10} {:>10} {:>10} {:>12} {:>6}  {:<10}  {}",
            m,
            format!("${}", per_m(p.input)),
            format!("${}", per_m(p.output)),
            opt(p.cached_input.map(per_m)),
            opt(p.image.map(|i| i as f64 / 1e9)),
            format!("{share}x"),
            day.unwrap_or("-"),
            source.unwrap_or("-"),
        );
        if let Some(said) = table
            .lifecycle(m)
            .and_then(|l| l.say(&crate::cost::today()))
        {
            let _ = writeln!(out, "{:<40} {said}", "");
        }
    }
    Ok(0)
}
