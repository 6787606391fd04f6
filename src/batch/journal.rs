//! The batch journal beside the output (`OUT.batches.jsonl`): append-only, one fsynced line per
//! event. A batch's *intent* (its key, model, ids and fingerprints) is written before anything
//! is uploaded, then its file id, then its batch id, then its end. Replaying it tells a resumed
//! run every batch it may already have paid for, so none is created twice.

use crate::cost::Money;
use crate::job::IdKey;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    /// About to submit these jobs as one batch (written before the upload).
    Intent {
        key: String,
        model: String,
        ids: Vec<String>,
        fingerprints: Vec<String>,
        /// Its worst case, held against `--max-cost` until its answers are recorded.
        worst_usd: f64,
    },
    /// Its input file is uploaded.
    File { key: String, file_id: String },
    /// The provider created it.
    Created { key: String, batch_id: String },
    /// Its results are in the output (or it was never submitted).
    Ended { key: String, status: String },
}

/// A batch as the journal knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub model: String,
    pub ids: Vec<String>,
    pub fingerprints: Vec<String>,
    pub worst: Money,
    pub file_id: Option<String>,
    pub batch_id: Option<String>,
}

/// What a replay found.
#[derive(Debug, Default)]
pub struct Replay {
    /// Batches not ended yet, in the order they were intended.
    pub open: Vec<Entry>,
    /// Per id, the batches it was put in (ended or not): its attempts.
    pub attempts: HashMap<IdKey, u32>,
}

/// Problems with the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: not a batch journal line: {message}")]
    Corrupt {
        path: PathBuf,
        line: u64,
        message: String,
    },
}

/// The open journal, appended to.
pub struct Journal {
    path: PathBuf,
    file: File,
}

/// Every batch of a journal, with how it ended (`None`: still open).
struct Read {
    entries: Vec<(Entry, Option<String>)>,
    attempts: HashMap<IdKey, u32>,
    /// Bytes of a last line cut short by a crash.
    cut_tail: Option<usize>,
}

impl Read {
    /// One event replayed onto the batches it names (`index`: each key's place).
    fn apply(&mut self, event: Event, index: &mut HashMap<String, usize>) {
        let at = |key: &str| index.get(key).copied();
        match event {
            Event::Intent {
                key,
                model,
                ids,
                fingerprints,
                worst_usd,
            } => {
                for id in &ids {
                    *self.attempts.entry(IdKey::of(id.as_bytes())).or_default() += 1;
                }
                index.insert(key.clone(), self.entries.len());
                let entry = Entry {
                    key,
                    model,
                    ids,
                    fingerprints,
                    worst: Money::from_usd(worst_usd),
                    file_id: None,
                    batch_id: None,
                };
                self.entries.push((entry, None));
            }
            Event::File { key, file_id } => {
                if let Some(a) = at(&key) {
                    self.entries[a].0.file_id = Some(file_id);
                }
            }
            Event::Created { key, batch_id } => {
                if let Some(a) = at(&key) {
                    self.entries[a].0.batch_id = Some(batch_id);
                }
            }
            Event::Ended { key, status } => {
                if let Some(a) = at(&key) {
                    self.entries[a].1 = Some(status);
                }
            }
        }
    }
}

fn read(path: &Path) -> Result<Read, JournalError> {
    let io = |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut r = Read {
        entries: Vec::new(),
        attempts: HashMap::new(),
        cut_tail: None,
    };
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(r),
        Err(e) => return Err(io(e)),
    };
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut lines = BufReader::new(f).lines().enumerate().peekable();
    while let Some((i, line)) = lines.next() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        let event: Event = match serde_json::from_str(&line) {
            Ok(e) => e,
            Err(_) if lines.peek().is_none() && !line.ends_with('}') => {
                r.cut_tail = Some(line.len());
                break;
            }
            Err(e) => {
                return Err(JournalError::Corrupt {
                    path: path.to_path_buf(),
                    line: i as u64 + 1,
                    message: e.to_string(),
                })
            }
        };
        r.apply(event, &mut index);
    }
    Ok(r)
}

/// A batch as `bulkprompt batches` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listed {
    pub key: String,
    pub model: String,
    pub jobs: usize,
    pub file_id: Option<String>,
    pub batch_id: Option<String>,
    /// How it ended (`None`: still open).
    pub ended: Option<String>,
}

/// The ids in batches of the journal at `path` that have not ended (none without a journal).
pub fn open_ids(path: &Path) -> Result<std::collections::HashSet<IdKey>, JournalError> {
    ids_where(path, |ended| ended.is_none())
}

/// The ids in every batch of the journal at `path`, ended or not (none without a journal).
pub fn all_ids(path: &Path) -> Result<std::collections::HashSet<IdKey>, JournalError> {
    ids_where(path, |_| true)
}

fn ids_where(
    path: &Path,
    keep: impl Fn(&Option<String>) -> bool,
) -> Result<std::collections::HashSet<IdKey>, JournalError> {
    if !path.exists() {
        return Ok(Default::default());
    }
    Ok(read(path)?
        .entries
        .into_iter()
        .filter(|(_, ended)| keep(ended))
        .flat_map(|(e, _)| e.ids.into_iter().map(|id| IdKey::of(id.as_bytes())))
        .collect())
}

/// The start of every batch key an output's runs submit: `bp-`, a hash of the journal's
/// path, `-`. A run whose journal is gone finds the output's batches at the provider by it.
pub fn key_prefix(journal: &Path) -> String {
    let path = crate::paths::resolve(journal).unwrap_or_else(|_| journal.to_path_buf());
    let tag = xxhash_rust::xxh3::xxh3_64(path.to_string_lossy().as_bytes());
    format!("bp-{:012x}-", tag >> 16)
}

/// Every batch the journal at `path` knows, oldest first.
pub fn list(path: &Path) -> Result<Vec<Listed>, JournalError> {
    Ok(read(path)?
        .entries
        .into_iter()
        .map(|(e, ended)| Listed {
            key: e.key,
            model: e.model,
            jobs: e.ids.len(),
            file_id: e.file_id,
            batch_id: e.batch_id,
            ended,
        })
        .collect())
}

impl Journal {
    /// Opens (or creates) the journal and replays it. A last line cut short by a crash is
    /// ignored (its event never completed); any other unreadable line is an error.
    pub fn open(path: &Path) -> Result<(Journal, Replay), JournalError> {
        let io = |source| JournalError::Io {
            path: path.to_path_buf(),
            source,
        };
        let r = read(path)?;
        let replay = Replay {
            open: r
                .entries
                .into_iter()
                .filter(|(_, ended)| ended.is_none())
                .map(|(e, _)| e)
                .collect(),
            attempts: r.attempts,
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        if let Some(n) = r.cut_tail {
            // Drop the torn line so the next event starts a line of its own.
            let len = file.metadata().map_err(io)?.len();
            file.set_len(len.saturating_sub(n as u64)).map_err(io)?;
        }
        Ok((
            Journal {
                path: path.to_path_buf(),
                file,
            },
            replay,
        ))
    }

    /// Appends one event and makes it durable before returning.
    pub fn append(&mut self, event: &Event) -> Result<(), JournalError> {
        let io = |source| JournalError::Io {
            path: self.path.clone(),
            source,
        };
        let mut line = serde_json::to_vec(event).unwrap_or_default();
        line.push(b'\n');
        self.file.write_all(&line).map_err(io)?;
        self.file.sync_data().map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(key: &str, ids: &[&str]) -> Event {
        Event::Intent {
            key: key.into(),
            model: "m".into(),
            ids: ids.iter().map(|s| s.to_string()).collect(),
            fingerprints: ids.iter().map(|_| "f".to_string()).collect(),
            worst_usd: 0.5,
        }
    }

    #[test]
    fn a_replay_finds_open_batches_and_counts_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl.batches.jsonl");
        let (mut j, r) = Journal::open(&path).unwrap();
        assert!(r.open.is_empty());
        j.append(&intent("k1", &["a", "b"])).unwrap();
        j.append(&Event::File {
            key: "k1".into(),
            file_id: "file-1".into(),
        })
        .unwrap();
        j.append(&Event::Created {
            key: "k1".into(),
            batch_id: "batch-1".into(),
        })
        .unwrap();
        j.append(&Event::Ended {
            key: "k1".into(),
            status: "expired".into(),
        })
        .unwrap();
        j.append(&intent("k2", &["b"])).unwrap();
        j.append(&Event::File {
            key: "k2".into(),
            file_id: "file-2".into(),
        })
        .unwrap();
        drop(j);
        // A crash in the middle of writing the next line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"event\":\"created\",\"key\":\"k2\",\"bat")
            .unwrap();
        drop(f);
        let (mut j, r) = Journal::open(&path).unwrap();
        assert_eq!(r.open.len(), 1);
        let e = &r.open[0];
        assert_eq!(
            (e.key.as_str(), e.file_id.as_deref(), e.batch_id.as_deref()),
            ("k2", Some("file-2"), None)
        );
        assert_eq!(r.attempts[&IdKey::of(b"b")], 2);
        assert_eq!(r.attempts[&IdKey::of(b"a")], 1);
        // The torn line is gone: the next event reads back.
        j.append(&Event::Created {
            key: "k2".into(),
            batch_id: "batch-2".into(),
        })
        .unwrap();
        let (_, r) = Journal::open(&path).unwrap();
        assert_eq!(r.open[0].batch_id.as_deref(), Some("batch-2"));
    }

    #[test]
    fn a_corrupt_line_in_the_middle_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        std::fs::write(
            &path,
            "{\"event\":\"nonsense\"}\n{\"event\":\"ended\",\"key\":\"k\",\"status\":\"x\"}\n",
        )
        .unwrap();
        let Err(e) = Journal::open(&path) else {
            panic!()
        };
        assert!(e.to_string().contains("j.jsonl:1"), "{e}");
    }
}
