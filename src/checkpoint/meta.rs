//! What wrote an output: the job file, endpoint and model of the run, kept in
//! `.bulkprompt/OUT.meta.json` beside it (`OUT.meta.json` itself in earlier versions, moved
//! there by the next run). A later run with a different job file, endpoint or model is refused with a
//! message saying what differs, instead of silently mixing two runs' results in one file.
//! `status` reads the stored command line to find the job file and its settings again.

use super::{io_err, CheckpointError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

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
    /// `.bulkprompt/OUT.meta.json`, where a run writes it.
    pub fn path_for(output: &Path) -> PathBuf {
        crate::paths::run_file(output, ".meta.json")
    }

    /// `OUT.meta.json` beside the output, where versions before `.bulkprompt/` kept it.
    pub fn legacy_path_for(output: &Path) -> PathBuf {
        crate::paths::sibling(output, ".meta.json")
    }

    /// The meta of an existing output, if it has one.
    pub fn load(output: &Path) -> Result<Option<RunMeta>, CheckpointError> {
        let path = crate::paths::found(Self::path_for(output), Self::legacy_path_for(output));
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
        let path = Self::path_for(output);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| io_err(&path)(e.into()))?;
        crate::paths::write_atomic(&path, &bytes).map_err(io_err(&path))
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
        }
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
