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

/// `out.jsonl` -> `out.jsonl.report.html`, beside it.
pub fn default_path(output: &Path) -> PathBuf {
    crate::paths::sibling(output, ".report.html")
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
    let page = html::page(&a, &source.display().to_string(), summary);
    crate::paths::write_atomic(target, page.as_bytes()).map_err(|source| ReportError::Write {
        path: target.to_path_buf(),
        source,
    })?;
    Ok(Reported {
        records: a.records,
        bytes: page.len() as u64,
    })
}
