//! Stage 1, before anything is sent: the configuration checked (no file the run writes is one it
//! reads; every output a regular, writable file), the output locked, leftovers of a killed run
//! removed, the meta compared, unreadable lines quarantined on `--repair`, and the job file and
//! the output read at the same time. Nothing is written to the output before this succeeds, and
//! a signal meanwhile stops it at once.

use super::RunError;
use crate::checkpoint::{self, Checkpoint, OutputLock, RunMeta, SendMode};
use crate::config::{is_loopback, Endpoint, RunConfig};
use crate::cost::Money;
use crate::job::{self, keys::KeyMap};
use crate::output::jsonl::WriteError;
use crate::output::record::timestamp;
use crate::paths;
use crate::shutdown::{Phase, Shutdown};
use std::path::PathBuf;
use std::time::{Instant, SystemTime};

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
        job: Some(cfg.input.settings()),
        runs: Vec::new(),
    }
}

/// Moves what an earlier version left beside the output into `.bulkprompt/` (under the lock,
/// before anything reads them); a file already at its new place is left as it is.
fn migrate(cfg: &RunConfig) -> Result<(), RunError> {
    for (old, new) in cfg.files().legacy_moves() {
        if new.exists() || !old.is_file() {
            continue;
        }
        std::fs::rename(&old, &new).map_err(|source| WriteError {
            path: old.clone(),
            source,
        })?;
        paths::sync_dir(&new);
        tracing::info!("moved {} to {}", old.display(), new.display());
    }
    Ok(())
}

/// Every file a run writes: the run's files ([`crate::run_files::RunFiles::written`]) and
/// `--summary-json`.
fn written_files(cfg: &RunConfig) -> Vec<PathBuf> {
    let mut w = cfg.files().written();
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

/// What a run knows before it sends anything.
pub(super) struct Prepared {
    /// Jobs in the file.
    pub(super) jobs: u64,
    /// Their ids, kept only for `--prune`.
    pub(super) input_ids: Option<KeyMap>,
    /// The jobs as validation built them, for the run to read instead of the job file.
    pub(super) spill: Option<job::spill::Spill>,
    /// Money of records pruned from the output by earlier runs.
    pub(super) removed_cost: Money,
    pub(super) checkpoint: Checkpoint,
    /// What this run is, written when it starts ([`Prepared::start`]).
    meta: RunMeta,
    /// No batch journal where one may belong: the provider is asked for the output's batches.
    pub(super) batches_unknown: bool,
    pub(super) _lock: OutputLock,
}

/// Checks the configuration, locks the output, and reads the job file and the output (at the
/// same time: they are independent, and on two cores that halves the wait for the first
/// request). Nothing is sent and nothing is written to the output before this succeeds; a
/// signal meanwhile stops it at once.
pub(super) async fn prepare(
    cfg: &RunConfig,
    started: Instant,
    shutdown: &Shutdown,
) -> Result<Prepared, RunError> {
    check_transport(cfg)?;
    check_overwrites(cfg)?;
    if let Some(p) = cfg
        .summary_json
        .as_ref()
        .filter(|p| !crate::progress::replaceable_summary(p))
    {
        return Err(RunError::Config(format!(
            "--summary-json {}: the file there is not a bulkprompt summary, and a scheduler reading it would read something else: give another path",
            p.display()
        )));
    }
    check_targets(cfg)?;
    let lock = OutputLock::acquire(&cfg.output)?;
    migrate(cfg)?;
    let leftovers = cfg
        .files()
        .temps()
        .into_iter()
        .filter(|p| std::fs::remove_file(p).is_ok());
    for l in leftovers {
        tracing::info!("removed {}, left by an interrupted run", l.display());
    }
    let (meta, batches_unknown) = this_runs_meta(cfg)?;
    if cfg.repair && !cfg.fresh {
        repair(cfg)?;
    }
    let (validation, checkpoint) = read_both(cfg, shutdown).await?;
    check_prices(cfg, &validation)?;
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
    Ok(Prepared {
        jobs: validation.jobs,
        input_ids: validation.ids,
        spill: validation.spill,
        removed_cost: Money::from_usd(meta.removed_cost_usd),
        checkpoint,
        meta,
        batches_unknown,
        _lock: lock,
    })
}

/// The key is never sent over plain http to another machine unless the user says so.
fn check_transport(cfg: &RunConfig) -> Result<(), RunError> {
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
    Ok(())
}

/// The output (and the Parquet file) can be written: their folders made, each a regular file
/// or not there yet, in a folder that takes new files.
fn check_targets(cfg: &RunConfig) -> Result<(), RunError> {
    let targets = std::iter::once(&cfg.output).chain(cfg.parquet.as_ref().map(|(p, _)| p));
    for target in targets {
        if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
            // The run's own folder is made with the lock, once the run starts; the folder it
            // goes in is checked with the Parquet target beside it.
            if parent
                .file_name()
                .is_some_and(|n| n == crate::run_files::RUN_DIR)
                && !parent.exists()
            {
                continue;
            }
            std::fs::create_dir_all(parent).map_err(|source| WriteError {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        paths::check_writable(target)?;
    }
    Ok(())
}

/// This run's meta, checked against the one that wrote the output (a different job file,
/// endpoint or model is refused), with the money of pruned records and each run's mode
/// carried over; and whether the output's batches may be open at the provider with no
/// journal here to say so (the run folder lost under an output, or a batch-mode run's
/// journal).
fn this_runs_meta(cfg: &RunConfig) -> Result<(RunMeta, bool), RunError> {
    let mut meta = run_meta(cfg);
    let has_records = std::fs::metadata(&cfg.output).is_ok_and(|m| m.len() > 0);
    let old = RunMeta::load(&cfg.output)?;
    if let (false, true, Some(old)) = (cfg.fresh, has_records, &old) {
        if let Some(diff) = old.compare(&meta) {
            let shown = cfg.parquet.as_ref().map_or(&cfg.output, |(p, _)| p);
            return Err(RunError::Config(format!(
                "{} was written by a different run ({diff}); pass --fresh to start it over, or -o to write elsewhere (a new job file each night: one output a night, docs/scheduling.md)",
                shown.display()
            )));
        }
    }
    if !cfg.fresh {
        meta.removed_cost_usd = old.as_ref().map_or(0.0, |m| m.removed_cost_usd);
    }
    let mode = match cfg.batch {
        Some(_) => SendMode::Batch,
        None => SendMode::Live,
    };
    // `--fresh` empties the output, not the provider: earlier runs' modes stay known.
    meta.carry_runs(old.as_ref().map_or(&[], |m| &m.runs[..]), mode);
    let batches_unknown = !cfg.files().has_batch_journal()
        && match &old {
            Some(m) => m.used_batches(),
            None => std::fs::metadata(&cfg.output).is_ok(),
        };
    Ok((meta, batches_unknown))
}

/// `--repair`: unreadable lines moved to the quarantine file.
fn repair(cfg: &RunConfig) -> Result<(), RunError> {
    let moved = checkpoint::repair(&cfg.output)?;
    if moved > 0 {
        tracing::warn!(
            "--repair: moved {moved} unreadable line{} of {} to {}; their jobs run again",
            if moved == 1 { "" } else { "s" },
            cfg.output.display(),
            cfg.files().quarantine().display()
        );
    }
    Ok(())
}

/// The job file validated and the output scanned, at the same time (they are independent,
/// and on two cores that halves the wait for the first request); a signal stops it at once.
async fn read_both(
    cfg: &RunConfig,
    shutdown: &Shutdown,
) -> Result<(job::source::Validation, Checkpoint), RunError> {
    tracing::debug!("reading the job file {}", cfg.input.path.display());
    let joined = RunError::Task;
    let (input, max_errors, ids) = (cfg.input.clone(), cfg.max_errors, cfg.prune);
    let folder = spill_folder(&cfg.output);
    let validation = tokio::task::spawn_blocking(move || {
        let keep = job::source::Keep {
            ids,
            jobs_in: folder.as_deref(),
        };
        job::source::validate(&input, max_errors, keep)
    });
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
    Ok((validation, checkpoint))
}

/// Where the spill of validated jobs goes: the output's folder, on the disk the user chose for
/// the run's files. Debug builds only: `BULKPROMPT_TEST_NO_SPILL` makes none, so that the
/// integration tests can reach the path that reads the job file again.
fn spill_folder(output: &std::path::Path) -> Option<std::path::PathBuf> {
    if cfg!(debug_assertions) && std::env::var_os("BULKPROMPT_TEST_NO_SPILL").is_some() {
        return None;
    }
    Some(match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    })
}

/// Under `--max-cost`, every model has a price (or nothing is sent), and jobs without a
/// `max_tokens` are warned about.
fn check_prices(cfg: &RunConfig, validation: &job::source::Validation) -> Result<(), RunError> {
    warn_retired(&cfg.prices, &validation.models);
    let Some(cap) = cfg.max_cost else {
        return Ok(());
    };
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
    Ok(())
}

impl Prepared {
    /// The jobs to run: those validation built (its spill), else the job file read again.
    pub(super) fn jobs(&mut self, cfg: &RunConfig) -> Result<job::JobStream, RunError> {
        const AHEAD: usize = 1024;
        Ok(match self.spill.take() {
            Some(spill) => job::JobStream::of(spill.into_jobs(), &cfg.input.path, AHEAD)?,
            None => job::JobStream::spawn(cfg.input.clone(), AHEAD)?,
        })
    }

    /// The run starts: its meta is written (and `--fresh` empties the output). Called once
    /// everything else the run needs is in place (the coordinator, the metrics endpoint), so a
    /// run that stops before it leaves no meta behind.
    pub(super) fn start(&self, cfg: &RunConfig) -> Result<(), RunError> {
        self.meta.store(&cfg.output)?;
        if cfg.fresh {
            std::fs::File::create(&cfg.output).map_err(|source| WriteError {
                path: cfg.output.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

/// Jobs for a model its provider retired (or will retire) are said before anything is sent:
/// they will be refused, and `--fallback-model` is the cure.
pub(crate) fn warn_retired<'a>(
    prices: &crate::cost::PriceTable,
    models: impl IntoIterator<Item = &'a String>,
) {
    let today = crate::cost::today();
    for m in models {
        let Some(life) = prices.lifecycle(m) else {
            continue;
        };
        match (life.retired(&today), life.say(&today)) {
            (true, Some(said)) => tracing::warn!(
                "model {m:?} was {said}; its provider refuses it, so its jobs will fail"
            ),
            (false, Some(said)) => tracing::info!("model {m:?} is {said}"),
            _ => {}
        }
    }
}
