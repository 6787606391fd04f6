//! What wrote an output: the job file, endpoint and model of the run, kept in
//! `.bulkprompt/OUT.meta.json` beside it (`OUT.meta.json` itself in earlier versions, moved
//! there by the next run). A later run with a different job file, endpoint or model is refused with a
//! message saying what differs, instead of silently mixing two runs' results in one file.
//! `status` reads the stored command line to find the job file and its settings again.

use super::{io_err, CheckpointError};
use crate::run_files::RunFiles;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMeta {
    pub bulkprompt: String,
    /// The job file, absolute.
    pub input: String,
    /// The base URL, or `mock`.
    pub endpoint: String,
    /// The run's default model (jobs may name their own).
    pub model: Option<String>,
    /// The command line of the latest run (secret header values redacted), and where it ran,
    /// for `status`.
    pub argv: Vec<String>,
    pub cwd: String,
    pub updated_at: String,
    /// Money of records no longer in the output (pruned with `--prune`): still paid, so still
    /// counted against `--max-cost` and in `status`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub removed_cost_usd: f64,
    /// How the run read the job file, for `status` (absent in metas of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<crate::job::source::InputSettings>,
    /// How each run of this output sent its jobs, oldest first (the latest [`MAX_RUNS`]): a
    /// run that finds no batch journal where a batch-mode run left one looks for the output's
    /// batches at the provider before it sends anything live.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<RunMode>,
}

/// Runs kept in a meta's history.
pub const MAX_RUNS: usize = 100;

/// One run of an output: when it started and how it sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunMode {
    pub at: String,
    pub mode: SendMode,
}

/// Live requests or the provider's batch API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SendMode {
    Live,
    Batch,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

/// The settings that differ between an output's runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaMismatch(pub Vec<(&'static str, String, String)>);

impl std::fmt::Display for MetaMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(k, was, now)| format!("{k} was {was}, now {now}"))
            .collect();
        f.write_str(&parts.join("; "))
    }
}

fn show(v: &Option<String>) -> String {
    v.as_deref().map_or("(none)".into(), |s| format!("{s:?}"))
}

impl RunMeta {
    /// The meta of an existing output, if it has one.
    pub fn load(output: &Path) -> Result<Option<RunMeta>, CheckpointError> {
        let path = RunFiles::of(output).found_meta();
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| CheckpointError::Corrupt {
                        path: path.clone(),
                        line: e.line() as u64,
                        message: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// What differs between the run that wrote the output and this one.
    pub fn compare(&self, now: &RunMeta) -> Option<MetaMismatch> {
        let mut diffs = Vec::new();
        if self.input != now.input {
            diffs.push((
                "job file",
                format!("{:?}", self.input),
                format!("{:?}", now.input),
            ));
        }
        if self.endpoint != now.endpoint {
            diffs.push((
                "endpoint",
                format!("{:?}", self.endpoint),
                format!("{:?}", now.endpoint),
            ));
        }
        if self.model != now.model {
            diffs.push(("model", show(&self.model), show(&now.model)));
        }
        (!diffs.is_empty()).then_some(MetaMismatch(diffs))
    }

    /// Writes the meta beside `output`, atomically (no temporary file is left on a failure).
    pub fn store(&self, output: &Path) -> Result<(), CheckpointError> {
        let path = RunFiles::of(output).meta();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| io_err(&path)(e.into()))?;
        crate::paths::write_atomic(&path, &bytes).map_err(io_err(&path))
    }

    /// This run's mode added to the history of the runs before it.
    pub fn carry_runs(&mut self, before: &[RunMode], now: SendMode) {
        let keep = before.len().saturating_sub(MAX_RUNS - 1);
        self.runs = before[keep..].to_vec();
        self.runs.push(RunMode {
            at: self.updated_at.clone(),
            mode: now,
        });
    }

    /// Whether any run of the output used the batch API.
    pub fn used_batches(&self) -> bool {
        self.runs.iter().any(|r| r.mode == SendMode::Batch)
    }

    /// Money of records no longer in the output of `output`'s meta (zero without a meta).
    pub fn removed_cost(output: &Path) -> crate::cost::Money {
        match Self::load(output) {
            Ok(Some(m)) => crate::cost::Money::from_usd(m.removed_cost_usd),
            _ => crate::cost::Money::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(input: &str, endpoint: &str, model: Option<&str>) -> RunMeta {
        RunMeta {
            bulkprompt: "0".into(),
            input: input.into(),
            endpoint: endpoint.into(),
            model: model.map(String::from),
            argv: vec![],
            cwd: "/".into(),
            updated_at: "t".into(),
            removed_cost_usd: 0.0,
            job: None,
            runs: vec![],
        }
    }

    #[test]
    fn keeps_each_runs_mode_and_the_latest_hundred() {
        let mut m = meta("/a", "mock", None);
        assert!(!m.used_batches());
        m.carry_runs(&[], SendMode::Batch);
        let first = m.runs.clone();
        let mut next = meta("/a", "mock", None);
        next.carry_runs(&first, SendMode::Live);
        assert_eq!(next.runs.len(), 2);
        assert!(next.used_batches(), "an earlier batch run is remembered");
        let many = vec![first[0].clone(); 150];
        next.carry_runs(&many, SendMode::Live);
        assert_eq!(next.runs.len(), MAX_RUNS);
        assert_eq!(next.runs.last().unwrap().mode, SendMode::Live);
        // An older meta without the field reads as no history.
        let old = r#"{"bulkprompt":"0","input":"/a","endpoint":"mock","model":null,"argv":[],"cwd":"/","updated_at":"t"}"#;
        assert!(serde_json::from_str::<RunMeta>(old)
            .unwrap()
            .runs
            .is_empty());
    }

    #[test]
    fn says_what_differs() {
        let a = meta("/a.jsonl", "mock", Some("m1"));
        assert_eq!(a.compare(&meta("/a.jsonl", "mock", Some("m1"))), None);
        let d = a.compare(&meta("/b.jsonl", "mock", None)).unwrap();
        assert_eq!(
            d.to_string(),
            "job file was \"/a.jsonl\", now \"/b.jsonl\"; model was \"m1\", now (none)"
        );
    }

    #[test]
    fn round_trips_beside_the_output() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.jsonl");
        assert_eq!(RunMeta::load(&out).unwrap(), None);
        let m = meta("/a", "https://x/v1", None);
        m.store(&out).unwrap();
        assert_eq!(RunMeta::load(&out).unwrap(), Some(m));
        assert!(dir.path().join(".bulkprompt/out.jsonl.meta.json").exists());
    }
}
