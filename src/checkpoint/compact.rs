//! Compaction: after a run that re-ran jobs, the output holds more than one line for some ids.
//! This rewrites it to hold only each id's last line (and, with `--prune`, only ids still in
//! the job file), through a temporary file, an fsync and a rename: a crash at any point leaves
//! either the old file or the new one, whole, and a failure (a full disk) leaves no temporary
//! file behind. Money is never dropped with a line: what superseded lines cost is carried into
//! the surviving record ([`super::latest`]), and what pruned records cost is reported so the
//! caller can keep it in the run's meta before the new file replaces the old.

use super::{for_each_head, io_err, CheckpointError};
use crate::cost::Money;
use crate::job::source::{LineReader, RawLine};
use crate::job::IdKey;
use crate::output::latest::{add_carried, Latest};
use crate::output::{Record, RecordHead};
use crate::paths::TempFile;
use crate::run_files::compact_temp;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;

/// What a compaction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compaction {
    /// Lines dropped (superseded or pruned).
    pub dropped: u64,
    /// Money of the records pruned (their ids are gone from the job file).
    pub pruned_cost: Money,
}

/// Rewrites the output keeping only the last record of each id, and only ids `keep` accepts.
/// `before_replace` runs once the new file is whole and before it replaces the old one.
pub fn compact(
    path: &Path,
    keep: Option<&dyn Fn(&IdKey) -> bool>,
    before_replace: &mut dyn FnMut(&Compaction) -> Result<(), CheckpointError>,
) -> Result<Compaction, CheckpointError> {
    let open = || File::open(path).map_err(io_err(path));
    let mut latest = Latest::with_capacity(crate::job::keys::estimate_lines(path));
    for_each_head(path, open()?, false, |line, head| {
        latest.push(IdKey::of(head.id.as_bytes()), line, head.cost_usd);
        Ok(())
    })?;
    latest.seal();
    let tmp = TempFile::new(compact_temp(path));
    let file = File::create(tmp.path()).map_err(io_err(tmp.path()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut lines = LineReader::new(BufReader::with_capacity(1 << 20, open()?), usize::MAX);
    let mut done = Compaction::default();
    let mut rewritten = Vec::new();
    while let Some(RawLine::Line { line }) = lines.next_line().map_err(io_err(path))? {
        let bytes = lines.bytes();
        if bytes.is_empty() {
            continue;
        }
        let corrupt = |e: serde_json::Error| CheckpointError::Corrupt {
            path: path.to_path_buf(),
            line,
            message: e.to_string(),
        };
        let head: RecordHead = serde_json::from_slice(bytes).map_err(corrupt)?;
        let key = IdKey::of(head.id.as_bytes());
        if !latest.is_last(&key, line) {
            done.dropped += 1;
            continue;
        }
        let carried = latest.carried(line);
        if keep.is_some_and(|k| !k(&key)) {
            done.dropped += 1;
            done.pruned_cost +=
                carried.unwrap_or(Money::ZERO) + head.cost_usd.map_or(Money::ZERO, Money::from_usd);
            continue;
        }
        let bytes = match carried {
            None => bytes,
            Some(c) => {
                let mut r: Record = serde_json::from_slice(bytes).map_err(corrupt)?;
                r.cost_usd = Some(add_carried(r.cost_usd, c));
                rewritten.clear();
                serde_json::to_writer(&mut rewritten, &r).map_err(corrupt)?;
                &rewritten[..]
            }
        };
        out.write_all(bytes)
            .and_then(|_| out.write_all(b"\n"))
            .map_err(io_err(tmp.path()))?;
    }
    let file = out
        .into_inner()
        .map_err(|e| io_err(tmp.path())(e.into_error()))?;
    before_replace(&done)?;
    tmp.persist(file, path).map_err(io_err(path))?;
    Ok(done)
}

/// Rewrites an output holding one line per id in input order (`index`), for `--order input`:
/// the offset of every line is read once (24 bytes a line in memory), sorted, and the lines
/// copied in that order into a temporary file renamed over the output (fsynced, as compaction).
pub fn sort_by_index(path: &Path) -> Result<u64, CheckpointError> {
    use std::os::unix::fs::FileExt;
    #[derive(serde::Deserialize)]
    struct Index {
        index: u64,
    }
    let file = File::open(path).map_err(io_err(path))?;
    let mut reader = BufReader::with_capacity(1 << 20, &file);
    let mut spans: Vec<(u64, u64, u32)> = Vec::new();
    let (mut at, mut line_no, mut buf) = (0u64, 0u64, Vec::new());
    loop {
        buf.clear();
        let n = std::io::BufRead::read_until(&mut reader, b'\n', &mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let text = buf.strip_suffix(b"\n").unwrap_or(&buf);
        if !text.iter().all(u8::is_ascii_whitespace) {
            let i: Index = serde_json::from_slice(text).map_err(|e| CheckpointError::Corrupt {
                path: path.to_path_buf(),
                line: line_no,
                message: e.to_string(),
            })?;
            spans.push((i.index, at, text.len() as u32));
        }
        at += n as u64;
    }
    if spans.windows(2).all(|w| w[0].0 <= w[1].0) {
        return Ok(spans.len() as u64);
    }
    spans.sort_unstable_by_key(|s| s.0);
    let tmp = TempFile::new(compact_temp(path));
    let out = File::create(tmp.path()).map_err(io_err(tmp.path()))?;
    let mut w = BufWriter::with_capacity(1 << 20, out);
    let mut line = Vec::new();
    for &(_, offset, len) in &spans {
        line.resize(len as usize, 0);
        file.read_exact_at(&mut line, offset)
            .map_err(io_err(path))?;
        line.push(b'\n');
        w.write_all(&line).map_err(io_err(tmp.path()))?;
    }
    let out = w
        .into_inner()
        .map_err(|e| io_err(tmp.path())(e.into_error()))?;
    tmp.persist(out, path).map_err(io_err(path))?;
    Ok(spans.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::super::scan;
    use super::super::tests::line;
    use super::*;

    fn no_hook(_: &Compaction) -> Result<(), CheckpointError> {
        Ok(())
    }

    #[test]
    fn compact_keeps_the_last_record_of_each_id() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.jsonl");
        let text = [
            line("a", "failed", 1, Some("server")),
            line("b", "ok", 1, None),
            line("a", "ok", 1, None),
        ]
        .concat();
        std::fs::write(&p, text).unwrap();
        let before = scan(&p).unwrap();
        assert!(before.has_superseded());
        assert_eq!(compact(&p, None, &mut no_hook).unwrap().dropped, 1);
        let after = scan(&p).unwrap();
        assert!(!after.has_superseded());
        // Every line cost 0.5: a's failed attempt is carried into its ok record.
        assert_eq!(after.totals.spent, before.totals.spent);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with(&line("b", "ok", 1, None)), "{text}");
        assert!(
            text.lines().nth(1).unwrap().contains("\"cost_usd\":1.0"),
            "{text}"
        );
        let only_a = |k: &IdKey| *k == IdKey::of(b"a");
        let mut seen = None;
        let c = compact(&p, Some(&only_a), &mut |c| {
            seen = Some(*c);
            Ok(())
        })
        .unwrap();
        assert_eq!(c.dropped, 1);
        assert_eq!(c.pruned_cost, Money::from_usd(0.5));
        assert_eq!(seen, Some(c));
    }

    #[test]
    fn a_failed_compaction_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.jsonl");
        std::fs::write(
            &p,
            [line("a", "ok", 1, None), line("a", "ok", 1, None)].concat(),
        )
        .unwrap();
        let before = std::fs::read(&p).unwrap();
        let e = compact(&p, None, &mut |_| {
            Err(io_err(&p)(std::io::Error::other("disk full")))
        });
        assert!(e.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), before);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
