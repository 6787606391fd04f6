//! `bulkprompt status OUT`: what an output holds against its job file. The job file and how
//! the run read it (format, template, defaults) are kept in the output's meta, so the answer
//! uses the same fingerprints a resume would: done, failed (by class), changed, pending, and
//! records whose job is no longer in the file.

use crate::checkpoint::{self, CheckpointError, Decision, RunMeta};
use crate::job::keys::KeyMap;
use crate::job::InputSpec;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// How an output stands.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    pub output: String,
    pub input: Option<String>,
    /// Ids with a record.
    pub records: u64,
    pub ok: u64,
    pub failed_transient: u64,
    pub failed_permanent: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub spent_usd: f64,
    /// Against the job file (absent when it could not be read).
    pub jobs: Option<JobCounts>,
    /// Latest records that are failures, by error kind.
    pub failed_by_kind: std::collections::BTreeMap<String, u64>,
    /// Batches of a batch-mode run not collected yet.
    pub open_batches: u64,
    /// Why the job file could not be compared.
    pub note: Option<String>,
}

impl Status {
    /// Whether everything in the job file has an ok record (`status --check`).
    pub fn complete(&self) -> bool {
        match &self.jobs {
            Some(j) => j.done == j.total && self.open_batches == 0,
            None => self.failed_transient + self.failed_permanent == 0 && self.open_batches == 0,
        }
    }
}

/// Latest failure kinds per id, from the output's lines (later lines win).
fn failure_kinds(output: &Path) -> std::collections::BTreeMap<String, u64> {
    use std::io::BufRead;
    let mut latest: std::collections::HashMap<crate::job::IdKey, Option<String>> =
        std::collections::HashMap::new();
    if let Ok(f) = std::fs::File::open(output) {
        for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
            if let Ok(h) = serde_json::from_str::<crate::output::record::RecordHead>(&line) {
                let key = crate::job::IdKey::of(h.id.as_bytes());
                match h.error {
                    Some(e) => {
                        latest.insert(key, Some(e.kind.as_str().to_string()));
                    }
                    None => {
                        if latest.contains_key(&key) {
                            latest.insert(key, None);
                        }
                    }
                }
            }
        }
    }
    let mut by = std::collections::BTreeMap::new();
    for k in latest.into_values().flatten() {
        *by.entry(k).or_insert(0) += 1;
    }
    by
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct JobCounts {
    pub total: u64,
    pub done: u64,
    /// Failed before and retried by the next run.
    pub retry: u64,
    /// Failed permanently; the next run skips them unless --retry-failed.
    pub failed_permanent: u64,
    /// Request changed since its record: the next run redoes them.
    pub changed: u64,
    /// Never run.
    pub pending: u64,
    /// Records of ids no longer in the job file (kept unless --prune).
    pub orphaned: u64,
}

/// Reads `output` (without changing it) and compares it with its job file.
pub fn status(output: &Path) -> Result<Status, CheckpointError> {
    let io = |source| CheckpointError::Io {
        path: output.to_path_buf(),
        source,
    };
    // Symlinks followed; a device or a pipe is never read (it could be endless).
    let resolved = crate::paths::resolve(output).map_err(io)?;
    match std::fs::metadata(&resolved) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            return Err(io(std::io::Error::other(
                "not a regular file, so not an output",
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such output",
            )))
        }
        Err(e) => return Err(io(e)),
    }
    let output = resolved.as_path();
    let cp = checkpoint::scan_read_only(output)?;
    let t = &cp.totals;
    let mut s = Status {
        output: output.display().to_string(),
        records: cp.ids(),
        ok: t.ok,
        failed_transient: t.failed_transient,
        failed_permanent: t.failed_permanent,
        prompt_tokens: t.prompt_tokens,
        completion_tokens: t.completion_tokens,
        spent_usd: (t.spent + RunMeta::removed_cost(output)).usd(),
        ..Default::default()
    };
    s.failed_by_kind = failure_kinds(output);
    s.open_batches =
        crate::batch::journal::list(&crate::run_files::RunFiles::of(output).found_batch_journal())
            .map(|l| l.iter().filter(|b| b.ended.is_none()).count() as u64)
            .unwrap_or(0);
    let meta = match RunMeta::load(output)? {
        Some(m) => m,
        None => {
            s.note =
                Some("no run metadata beside the output: cannot compare with a job file".into());
            return Ok(s);
        }
    };
    s.input = Some(meta.input.clone());
    match compare(&meta, &cp) {
        Ok(j) => s.jobs = Some(j),
        Err(e) => s.note = Some(e),
    }
    Ok(s)
}

fn compare(meta: &RunMeta, cp: &checkpoint::Checkpoint) -> Result<JobCounts, String> {
    // The run kept how it read the job file; today's flags and environment play no part.
    let settings = meta.job.as_ref().ok_or(
        "this output was written by an older bulkprompt: run it once more to let status compare it with its job file",
    )?;
    let input = InputSpec::from_settings(PathBuf::from(&meta.input), settings)?;
    let jobs = input.open().map_err(|e| e.to_string())?;
    let mut c = JobCounts::default();
    let mut seen = KeyMap::default();
    for j in jobs {
        let j = j.map_err(|e| format!("the job file has a problem now: {e}"))?;
        c.total += 1;
        let decision = cp.decide(&j, false);
        if decision != Decision::New {
            seen.push(j.id.key(), 0);
        }
        match decision {
            Decision::Done => c.done += 1,
            Decision::Retry => c.retry += 1,
            Decision::SkipFailed => c.failed_permanent += 1,
            Decision::Changed => c.changed += 1,
            Decision::New => c.pending += 1,
        }
    }
    c.orphaned = cp.ids().saturating_sub(seen.len() as u64);
    Ok(c)
}

impl Status {
    pub fn render(&self) -> String {
        let mut s = format!("{}\n", self.output);
        if let Some(i) = &self.input {
            s.push_str(&format!("  job file:  {i}\n"));
        }
        s.push_str(&format!(
            "  records:   {} ids: {} ok, {} failed transiently, {} failed permanently\n",
            self.records, self.ok, self.failed_transient, self.failed_permanent
        ));
        if let Some(j) = &self.jobs {
            s.push_str(&format!(
                "  jobs:      {} in file: {} done, {} to retry, {} failed permanently (--retry-failed), {} changed, {} pending\n",
                j.total, j.done, j.retry, j.failed_permanent, j.changed, j.pending
            ));
            if j.orphaned > 0 {
                s.push_str(&format!("  orphaned:  {} records of ids no longer in the job file (--prune drops them)\n", j.orphaned));
            }
        }
        if !self.failed_by_kind.is_empty() {
            s.push_str(&format!(
                "  failures:  {}\n",
                crate::progress::counts_text(&self.failed_by_kind)
            ));
        }
        if self.open_batches > 0 {
            s.push_str(&format!(
                "  batches:   {} open at the provider: re-run to collect them\n",
                self.open_batches
            ));
        }
        s.push_str(&format!(
            "  tokens:    {} in, {} out\n",
            self.prompt_tokens, self.completion_tokens
        ));
        s.push_str(&format!(
            "  spend:     {}\n",
            crate::cost::Money::from_usd(self.spent_usd)
        ));
        if let Some(n) = &self.note {
            s.push_str(&format!("  note:      {n}\n"));
        }
        s
    }
}
