//! `bulkprompt merge A B ... -o OUT`: shards' outputs into one, each id's latest record once;
//! with `--jobs`, which shards and ids have no record.

use super::{writable_target, write_through_temp, AppError};
use crate::run_files::RunFiles;
use std::path::{Path, PathBuf};

pub(super) fn merge_cmd(args: crate::cli::MergeArgs) -> Result<i32, AppError> {
    let inputs: Vec<PathBuf> = args
        .inputs
        .iter()
        .map(|p| RunFiles::named(p).found_records())
        .collect();
    check_distinct(&args.inputs, &args.output)?;
    let target = writable_target(&args.output)?;
    let parquet = crate::output::parquet::is_parquet(&target);
    // JSONL straight to the target, or to a journal converted to Parquet.
    let jsonl = if parquet {
        let journal = RunFiles::of_parquet(&target).records().to_path_buf();
        if let Some(dir) = journal.parent() {
            std::fs::create_dir_all(dir).map_err(|source| AppError::Write {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        journal
    } else {
        target.clone()
    };
    let m = write_through_temp(&jsonl, &args.output, |w| {
        Ok(crate::output::merge::merge(&inputs, w)?)
    })?;
    if parquet {
        crate::output::parquet::convert(&jsonl, &target, Default::default())?;
    }
    eprintln!(
        "bulkprompt: merged {} outputs into {}: {} records ({} superseded left out)",
        inputs.len(),
        args.output.display(),
        m.records,
        m.superseded
    );
    match &args.jobs {
        Some(jobs) => missing(&inputs, &jsonl, jobs),
        None => Ok(0),
    }
}

/// The same output twice (as JSONL, its Parquet, its journal, a link) would count its costs
/// twice: each input once, none of them the target.
fn check_distinct(inputs: &[PathBuf], output: &Path) -> Result<(), AppError> {
    // Every name one output goes by: the file, and for a Parquet output its journal (where
    // it was found and where it is written).
    let forms = |p: &Path| -> Vec<PathBuf> {
        let mut f = vec![p.to_path_buf()];
        if crate::output::parquet::is_parquet(p) {
            let files = RunFiles::of_parquet(p);
            f.push(files.records().to_path_buf());
            f.push(files.found_records());
        }
        f
    };
    let same = |a: &Path, b: &Path| {
        let (fa, fb) = (forms(a), forms(b));
        fa.iter()
            .any(|x| fb.iter().any(|y| crate::paths::same_file(x, y)))
    };
    for (n, i) in inputs.iter().enumerate() {
        if let Some(j) = inputs[..n].iter().find(|j| same(j, i)) {
            return Err(AppError::Usage(format!(
                "{} and {} are the same output: give each once",
                j.display(),
                i.display()
            )));
        }
        if same(i, output) {
            return Err(AppError::Usage(format!(
                "{} is one of the outputs being merged (as {}): give another -o",
                output.display(),
                i.display()
            )));
        }
    }
    Ok(())
}

/// `--jobs`: the shards with no output given and the ids with no record (exit 2 when any).
fn missing(inputs: &[PathBuf], merged: &Path, jobs: &Path) -> Result<i32, AppError> {
    let mut code = 0;
    // The shards' metas say how the job file was read.
    let metas: Vec<_> = inputs
        .iter()
        .filter_map(|i| crate::checkpoint::RunMeta::load(i).ok().flatten())
        .collect();
    let settings = metas.iter().find_map(|m| m.job.clone()).ok_or_else(|| {
        AppError::Usage("--jobs: no output has run metadata saying how to read the job file".into())
    })?;
    let shards: Vec<_> = metas.iter().filter_map(|m| m.job.as_ref()?.shard).collect();
    if let Some(n) = shards.first().map(|s| s.count) {
        let missing: Vec<String> = (0..n)
            .filter(|i| !shards.iter().any(|s| s.index == *i))
            .map(|i| format!("{i}/{n}"))
            .collect();
        if !missing.is_empty() {
            eprintln!(
                "bulkprompt: shards with no output given: {}",
                missing.join(", ")
            );
            code = 2;
        }
    }
    let missing =
        crate::output::merge::missing_ids(merged, jobs, &settings).map_err(AppError::Usage)?;
    if !missing.is_empty() {
        let shown: Vec<&str> = missing.iter().take(10).map(String::as_str).collect();
        eprintln!(
            "bulkprompt: {} ids of {} have no record: {}{}",
            missing.len(),
            jobs.display(),
            shown.join(", "),
            if missing.len() > 10 { ", ..." } else { "" }
        );
        code = 2;
    }
    Ok(code)
}
