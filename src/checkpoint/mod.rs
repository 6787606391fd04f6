//! The output file is its own checkpoint. `scan` reads it back: it cuts a torn last line left
//! by a crash, and builds the done set, a map from each id's 128-bit hash to its last record's
//! fingerprint and state (24 bytes an id, never the ids or the records themselves). `compact`
//! rewrites the file to hold exactly one record per id, the latest, by way of a temporary file
//! and a rename, so a crash mid-way leaves the old file whole ([`compact`]). [`OutputLock`]
//! keeps two runs from writing one output at once; [`RunMeta`] remembers what wrote it.

mod compact;
mod lock;
mod meta;
mod repair;

pub use compact::{compact, sort_by_index};
pub use lock::OutputLock;
pub use meta::{RunMeta, SendMode};
pub use repair::repair;

use crate::cost::Money;
use crate::job::keys::KeyMap;
use crate::job::source::{LineReader, RawLine};
use crate::job::{Fingerprint, IdKey, Job};
use crate::output::{RecordHead, Status};
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Problems with an existing output.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The output could not be read or repaired.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A line in the middle of the output is not a record.
    #[error("{path}:{line}: not a bulkprompt record ({message}); pass --repair to move unreadable lines aside and resume with the rest (only their jobs run again)")]
    Corrupt {
        path: PathBuf,
        line: u64,
        message: String,
    },
    /// Another run holds the output.
    #[error("{path} is being written by another bulkprompt run{}", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked { path: PathBuf, pid: Option<u32> },
}

/// What the last record of an id says, packed into 64 bits: the fingerprint's low 62 bits and
/// a 2-bit state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry(u64);

/// The state of a job's last record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DoneState {
    Ok,
    /// Failed in a way a later run may fix (rate limits, outages, timeouts).
    Transient,
    /// Failed in a way that needs a change of request (400, 404, 413, 422).
    Permanent,
}

const FP_MASK: u64 = (1 << 62) - 1;

impl Entry {
    fn new(fp: u64, state: DoneState) -> Self {
        let s = match state {
            DoneState::Ok => 0,
            DoneState::Transient => 1,
            DoneState::Permanent => 2,
        };
        Entry((fp & FP_MASK) | (s << 62))
    }
    fn fingerprint(self) -> u64 {
        self.0 & FP_MASK
    }
    fn state(self) -> DoneState {
        match self.0 >> 62 {
            0 => DoneState::Ok,
            1 => DoneState::Transient,
            _ => DoneState::Permanent,
        }
    }
}

/// What to do with a job, given the output so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// No record yet.
    New,
    /// Done with this exact request: skip.
    Done,
    /// Failed permanently with this exact request, and `--retry-failed` is off: skip.
    SkipFailed,
    /// Failed transiently (or permanently, with `--retry-failed`): run again.
    Retry,
    /// The request changed since its record was written: run again.
    Changed,
}

/// Totals of the records in an output: states by each id's last record; tokens and spend over
/// every line, superseded ones included (what was bought was bought).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub ok: u64,
    pub failed_transient: u64,
    pub failed_permanent: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub spent: Money,
}

/// The done set and what the scan found.
#[derive(Debug, Default)]
pub struct Checkpoint {
    done: KeyMap,
    /// Lines in the file.
    pub lines: u64,
    /// Bytes cut from a torn last line.
    pub repaired_bytes: u64,
    pub totals: Totals,
}

impl Checkpoint {
    /// Ids with a record.
    pub fn ids(&self) -> u64 {
        self.done.len() as u64
    }

    /// Whether some ids have more than one line (so `compact` has work).
    pub fn has_superseded(&self) -> bool {
        self.lines > self.done.len() as u64
    }

    /// The requests the output holds an ok answer to (62 bits of each fingerprint), for
    /// `--dedupe`.
    pub fn answered_requests(&self) -> std::collections::HashSet<u64> {
        self.done
            .values()
            .map(Entry)
            .filter(|e| e.state() == DoneState::Ok)
            .map(Entry::fingerprint)
            .collect()
    }

    /// Whether the output holds an ok record of `key` (for any request).
    pub fn has_ok(&self, key: IdKey) -> bool {
        self.done
            .get(&key)
            .is_some_and(|e| Entry(e).state() == DoneState::Ok)
    }

    /// A request's key in [`Checkpoint::answered_requests`].
    pub fn request_key(fp: Fingerprint) -> u64 {
        fp.short() & FP_MASK
    }

    pub fn decide(&self, job: &Job, retry_failed: bool) -> Decision {
        self.decide_key(job.id.key(), job.fingerprint, retry_failed)
    }

    /// Whether the output already holds an ok record of `key` for exactly this request.
    pub fn is_done(&self, key: IdKey, fp: Fingerprint) -> bool {
        self.decide_key(key, fp, false) == Decision::Done
    }

    fn decide_key(&self, key: IdKey, fp: Fingerprint, retry_failed: bool) -> Decision {
        match self.done.get(&key).map(Entry) {
            None => Decision::New,
            Some(e) if e.fingerprint() != fp.short() & FP_MASK => Decision::Changed,
            Some(e) => match e.state() {
                DoneState::Ok => Decision::Done,
                DoneState::Transient => Decision::Retry,
                DoneState::Permanent if retry_failed => Decision::Retry,
                DoneState::Permanent => Decision::SkipFailed,
            },
        }
    }

    /// Notes a record read from the output.
    fn push(&mut self, key: IdKey, fp: Fingerprint, state: DoneState) {
        self.lines += 1;
        self.done.push(key, Entry::new(fp.short(), state).0);
    }
}

pub(crate) fn io_err(path: &Path) -> impl Fn(io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The state a record head stands for.
pub fn state_of(head: &RecordHead) -> DoneState {
    match (head.status, &head.error) {
        (Status::Ok, _) => DoneState::Ok,
        (Status::Failed, Some(e)) if e.kind.is_permanent() => DoneState::Permanent,
        (Status::Failed, _) => DoneState::Transient,
    }
}

/// Reads an output (if it exists), repairing a torn last line.
pub fn scan(path: &Path) -> Result<Checkpoint, CheckpointError> {
    scan_with(path, true)
}

/// Reads an output without changing it (for `status`, which may look while a run writes):
/// a torn last line is skipped instead of cut.
pub fn scan_read_only(path: &Path) -> Result<Checkpoint, CheckpointError> {
    scan_with(path, false)
}

fn scan_with(path: &Path, repair: bool) -> Result<Checkpoint, CheckpointError> {
    let mut cp = Checkpoint {
        done: KeyMap::with_capacity(crate::job::keys::estimate_lines(path)),
        ..Checkpoint::default()
    };
    let mut file = match OpenOptions::new().read(true).write(repair).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(cp),
        Err(e) => return Err(io_err(path)(e)),
    };
    if repair {
        cp.repaired_bytes = repair_tail(&mut file).map_err(io_err(path))?;
        file.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
    }
    for_each_head(path, file, !repair, |line, head| {
        let fp = Fingerprint::parse(&head.fingerprint).ok_or_else(|| CheckpointError::Corrupt {
            path: path.to_path_buf(),
            line,
            message: "fingerprint is not hex".into(),
        })?;
        let key = IdKey::of(head.id.as_bytes());
        let state = state_of(&head);
        cp.push(key, fp, state);
        if let Some(c) = head.cost_usd {
            cp.totals.spent += Money::from_usd(c);
        }
        cp.totals.prompt_tokens += head.prompt_tokens.unwrap_or(0);
        cp.totals.completion_tokens += head.output_tokens().unwrap_or(0);
        Ok(())
    })?;
    cp.done.seal();
    cp.done.keep_last();
    for state in cp.done.values().map(|v| Entry(v).state()) {
        match state {
            DoneState::Ok => cp.totals.ok += 1,
            DoneState::Transient => cp.totals.failed_transient += 1,
            DoneState::Permanent => cp.totals.failed_permanent += 1,
        }
    }
    Ok(cp)
}

/// Cuts everything after the last newline: a record is written with its newline in one
/// `write`, so bytes after the last newline are a record a crash cut short.
fn repair_tail(file: &mut File) -> io::Result<u64> {
    let len = file.metadata()?.len();
    let mut end = len;
    let mut buf = [0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            let keep = start + i as u64 + 1;
            if keep < len {
                file.set_len(keep)?;
                file.sync_all()?;
            }
            return Ok(len - keep);
        }
        end = start;
    }
    if len > 0 {
        file.set_len(0)?;
        file.sync_all()?;
    }
    Ok(len)
}

/// Calls `f` with each line's number and head.
pub(crate) fn for_each_head(
    path: &Path,
    file: File,
    tolerate_torn_tail: bool,
    mut f: impl FnMut(u64, RecordHead) -> Result<(), CheckpointError>,
) -> Result<(), CheckpointError> {
    let mut lines = LineReader::new(BufReader::with_capacity(1 << 20, file), usize::MAX);
    let mut bad: Option<(u64, String)> = None;
    while let Some(raw) = lines.next_line().map_err(io_err(path))? {
        let RawLine::Line { line } = raw else {
            continue;
        };
        let corrupt = |(line, message)| CheckpointError::Corrupt {
            path: path.to_path_buf(),
            line,
            message,
        };
        if let Some(b) = bad.take() {
            return Err(corrupt(b));
        }
        if lines.bytes().is_empty() {
            continue;
        }
        match serde_json::from_slice::<RecordHead>(lines.bytes()) {
            Ok(head) => f(line, head)?,
            Err(e) => bad = Some((line, e.to_string())),
        }
    }
    match bad {
        // A read-only scan may meet the last line of a run still writing it.
        Some((line, message)) if !tolerate_torn_tail => Err(CheckpointError::Corrupt {
            path: path.to_path_buf(),
            line,
            message,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A whole record line, as the runner writes it.
    pub(super) fn line(id: &str, status: &str, fp: u128, kind: Option<&str>) -> String {
        let error = kind.map_or("null".to_string(), |k| {
            format!("{{\"kind\":\"{k}\",\"http_status\":null,\"message\":\"x\"}}")
        });
        format!(
            "{{\"id\":\"{id}\",\"index\":0,\"status\":\"{status}\",\"model\":\"m\",\"response_model\":null,\"content\":null,\"finish_reason\":null,\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5,\"cached_tokens\":null,\"reasoning_tokens\":null,\"cost_usd\":0.5,\"cost_source\":null,\"latency_ms\":1,\"attempts\":1,\"error\":{error},\"started_at\":\"t\",\"finished_at\":\"t\",\"metadata\":{{}},\"fingerprint\":\"{fp:032x}\"}}\n"
        )
    }

    #[test]
    fn torn_tail_is_cut_and_states_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.jsonl");
        let text = format!(
            "{}{}{}{{\"id\":\"torn",
            line("a", "ok", 1, None),
            line("b", "failed", 2, Some("client")),
            line("c", "failed", 3, Some("server"))
        );
        std::fs::write(&p, &text).unwrap();
        let cp = scan(&p).unwrap();
        assert_eq!(cp.repaired_bytes, 11);
        assert!(std::fs::read_to_string(&p).unwrap().ends_with("}\n"));
        let d =
            |id: &str, fp: u128, rf| cp.decide_key(IdKey::of(id.as_bytes()), Fingerprint(fp), rf);
        assert_eq!(d("a", 1, false), Decision::Done);
        assert_eq!(d("a", 9, false), Decision::Changed);
        assert_eq!(d("b", 2, false), Decision::SkipFailed);
        assert_eq!(d("b", 2, true), Decision::Retry);
        assert_eq!(d("c", 3, false), Decision::Retry);
        assert_eq!(d("z", 3, false), Decision::New);
        assert_eq!(cp.totals.spent, Money::from_usd(1.5));
        assert_eq!(
            (
                cp.totals.ok,
                cp.totals.failed_permanent,
                cp.totals.failed_transient
            ),
            (1, 1, 1)
        );
    }

    #[test]
    fn a_bad_middle_line_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.jsonl");
        std::fs::write(
            &p,
            format!(
                "{}garbage\n{}",
                line("a", "ok", 1, None),
                line("b", "ok", 1, None)
            ),
        )
        .unwrap();
        let e = scan(&p).unwrap_err().to_string();
        assert!(e.contains("out.jsonl:2: not a bulkprompt record"), "{e}");
    }
}
