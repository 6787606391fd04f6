//! `bulkprompt merge OUT... -o OUT`: shard outputs combined into one with exactly one record
//! per id: the last one in the order the outputs are given (each output's own order within
//! it), with what the records it replaces cost carried in, so the total stays what was billed.

use super::latest::{add_carried, Latest};
use super::parquet::{for_each_line, ParquetError};
use super::Record;
use crate::job::IdKey;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What a merge wrote.
#[derive(Debug, Clone, Copy, Default)]
pub struct Merged {
    pub records: u64,
    /// Records left out because a later one has the same id.
    pub superseded: u64,
}

/// Writes the merged records of `inputs` as JSONL to `out`.
pub fn merge(inputs: &[PathBuf], mut out: impl Write) -> Result<Merged, ParquetError> {
    // Lines are numbered across the inputs, so "last" means last in the order given.
    let mut starts = Vec::with_capacity(inputs.len());
    let mut last = Latest::with_capacity(
        inputs
            .iter()
            .map(|p| crate::job::keys::estimate_lines(p))
            .sum(),
    );
    let mut offset = 0u64;
    for path in inputs {
        starts.push(offset);
        let mut most = 0;
        for_each_line(path, |line, bytes| {
            #[derive(serde::Deserialize)]
            struct Head {
                id: String,
                #[serde(default)]
                cost_usd: Option<f64>,
                #[serde(default)]
                started_at: String,
                #[serde(default)]
                finished_at: String,
                #[serde(default)]
                fingerprint: String,
            }
            let h: Head = serde_json::from_slice(bytes).map_err(|e| ParquetError::Record {
                path: path.clone(),
                line,
                message: e.to_string(),
            })?;
            // One paid answer, in whichever output it is copied: its times and request.
            let mut answer = xxhash_rust::xxh3::Xxh3::new();
            for part in [&h.started_at, &h.finished_at, &h.fingerprint] {
                answer.update(part.as_bytes());
                answer.update(b"\0");
            }
            let answer = answer.digest().max(1);
            last.push_answer(
                IdKey::of(h.id.as_bytes()),
                offset + line,
                h.cost_usd,
                answer,
            );
            most = line;
            Ok(())
        })?;
        offset += most + 1;
    }
    last.seal();
    let mut m = Merged::default();
    for (path, start) in inputs.iter().zip(starts) {
        for_each_line(path, |line, bytes| {
            let bad = |message: String| ParquetError::Record {
                path: path.clone(),
                line,
                message,
            };
            let mut r: Record = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
            let global = start + line;
            if !last.is_last(&IdKey::of(r.id.as_bytes()), global) {
                m.superseded += 1;
                return Ok(());
            }
            if let Some(c) = last.carried(global) {
                r.cost_usd = Some(add_carried(r.cost_usd, c));
            }
            let mut text = serde_json::to_vec(&r).map_err(|e| bad(e.to_string()))?;
            text.push(b'\n');
            out.write_all(&text).map_err(|e| ParquetError::Write {
                path: PathBuf::from("merge output"),
                message: e.to_string(),
            })?;
            m.records += 1;
            Ok(())
        })?;
    }
    Ok(m)
}

/// The ids of the job file (read as `settings` say) that no merged record has.
pub fn missing_ids(
    merged: &Path,
    jobs: &Path,
    settings: &crate::job::source::InputSettings,
) -> Result<Vec<String>, String> {
    let mut have = crate::job::keys::KeyMap::default();
    let _ = for_each_line(merged, |_, bytes| {
        #[derive(serde::Deserialize)]
        struct Head {
            id: String,
        }
        if let Ok(h) = serde_json::from_slice::<Head>(bytes) {
            have.push(IdKey::of(h.id.as_bytes()), 0);
        }
        Ok(())
    });
    have.seal_ordered();
    let mut s = settings.clone();
    s.shard = None;
    let input = crate::job::InputSpec::from_settings(jobs.to_path_buf(), &s)?;
    let mut missing = Vec::new();
    for job in input.open().map_err(|e| e.to_string())? {
        let job = job.map_err(|e| e.to_string())?;
        if !have.contains(&job.id.key()) {
            missing.push(job.id.to_string());
        }
    }
    Ok(missing)
}
