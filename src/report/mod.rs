//! `bulkprompt report OUT` (and `run --report`): one self-contained HTML page that shows how a
//! run went. The output is read in two streaming passes (which line is each id's latest, then
//! those records, as `export` does), gathered in bounded memory (`aggregate`) and drawn as
//! inline SVG (`svg`) in one page (`html`), written through a temporary file and a rename.
//!
//! Why hand-written SVG rather than a plotting crate: the charts are stacked columns and
//! horizontal bars, about two hundred lines; a crate (plotters) would add a dependency tree and
//! draw text as paths or need fonts, where here text stays text (selectable, sharp in print),
//! each shape has a hover title, and the whole page stays a few hundred KB for any run.

pub(crate) mod aggregate;
pub(crate) mod html;
pub(crate) mod numbers;
pub(crate) mod over_time;
pub(crate) mod svg;

use crate::output::parquet::ParquetError;
use crate::progress::Summary;
use std::path::{Path, PathBuf};

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The output could not be read (exit 1), names the file and line.
    #[error(transparent)]
    Read(#[from] ParquetError),
    /// The report could not be written (exit 5).
    #[error("writing the report {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The report would be written over the output.
    #[error("{0} is the output: give the report another name (-o)")]
    IsTheOutput(PathBuf),
}

/// What a report covered.
#[derive(Debug, Clone, Copy)]
pub struct Reported {
    pub records: u64,
    pub bytes: u64,
}

/// The estimate of the job file that wrote `jsonl` (from its meta, this shard's jobs only),
/// with this output's median answer length as the typical case; why not, when it cannot be.
fn estimate_of(jsonl: &Path) -> Result<crate::estimate::Estimate, String> {
    let meta = crate::checkpoint::RunMeta::load(jsonl)
        .map_err(|e| e.to_string())?
        .ok_or("the output has no meta")?;
    let settings = meta
        .job
        .as_ref()
        .ok_or("the output was written by an older bulkprompt")?;
    let input = crate::job::InputSpec::from_settings(PathBuf::from(&meta.input), settings)?;
    let batch = meta
        .argv
        .windows(2)
        .any(|w| w[0] == "--mode" && w[1] == "batch")
        || meta.argv.iter().any(|a| a == "--mode=batch");
    // The run's own price file (`--prices`, relative to where it ran), else the user's.
    let prices_file = meta
        .argv
        .windows(2)
        .find(|w| w[0] == "--prices")
        .map(|w| w[1].clone())
        .or_else(|| {
            meta.argv
                .iter()
                .find_map(|a| a.strip_prefix("--prices=").map(str::to_string))
        })
        .map(|p| Path::new(&meta.cwd).join(p));
    let prices = crate::cost::PriceTable::load_effective(prices_file.as_deref())
        .map_err(|e| e.to_string())?;
    let cfg = crate::estimate::EstimateConfig {
        input,
        prices,
        rpm: None,
        tpm: None,
        concurrency: None,
        calibrated: Default::default(),
        assume_output_tokens: None,
        reserve_output_tokens: 1024,
        output: Some(jsonl.to_path_buf()),
        batch,
    };
    crate::estimate::estimate(&cfg).map_err(|e| format!("the job file {}: {e}", meta.input))
}

/// `out.jsonl` -> `out.jsonl.report.html`, beside it.
pub fn default_path(output: &Path) -> PathBuf {
    crate::run_files::RunFiles::of(output).report()
}

/// Reads the JSONL records at `jsonl` (the output, or a Parquet output's journal) and writes
/// the report to `target`; `source` is the name shown; `summary` adds this run's figures.
pub fn write(
    jsonl: &Path,
    source: &Path,
    target: &Path,
    summary: Option<&Summary>,
) -> Result<Reported, ReportError> {
    if crate::paths::same_file(jsonl, target) || crate::paths::same_file(source, target) {
        return Err(ReportError::IsTheOutput(target.to_path_buf()));
    }
    let (last, _) = crate::output::flat::scan(jsonl)?;
    let mut a = aggregate::Aggregate::new();
    crate::output::flat::each_latest(jsonl, &last, |r| {
        a.add(&r);
        Ok(())
    })?;
    let estimate = estimate_of(jsonl);
    let page = html::page(
        &a,
        &source.display().to_string(),
        summary,
        estimate.as_ref(),
    );
    crate::paths::write_atomic(target, page.as_bytes()).map_err(|source| ReportError::Write {
        path: target.to_path_buf(),
        source,
    })?;
    Ok(Reported {
        records: a.records,
        bytes: page.len() as u64,
    })
}
