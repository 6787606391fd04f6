//! Compaction: after a run that re-ran jobs, the output holds more than one line for some ids.
//! This rewrites it to hold only each id's last line (and, with `--prune`, only ids still in
//! the job file), through a temporary file, an fsync and a rename: a crash at any point leaves
//! either the old file or the new one, whole.

use super::{for_each_head, io_err, sync_dir, temp_path, CheckpointError};
use crate::job::keys::KeyMap;
use crate::job::source::{LineReader, RawLine};
use crate::job::IdKey;
use crate::output::RecordHead;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;

/// Rewrites the output keeping only the last record of each id, and only ids `keep` accepts.
/// Returns the lines dropped.
pub fn compact(path: &Path, keep: Option<&dyn Fn(&IdKey) -> bool>) -> Result<u64, CheckpointError> {
    let open = || File::open(path).map_err(io_err(path));
    let mut last = KeyMap::default();
    for_each_head(path, open()?, false, |line, head| {
        last.push(IdKey::of(head.id.as_bytes()), line);
        Ok(())
    })?;
    last.seal_ordered();
    last.keep_last();
    let tmp = temp_path(path);
    let mut out = BufWriter::with_capacity(1 << 20, File::create(&tmp).map_err(io_err(&tmp))?);
    let mut lines = LineReader::new(BufReader::with_capacity(1 << 20, open()?), usize::MAX);
    let mut dropped = 0;
    while let Some(RawLine::Line { line }) = lines.next_line().map_err(io_err(path))? {
        let bytes = lines.bytes();
        if bytes.is_empty() {
            continue;
        }
        let head: RecordHead =
            serde_json::from_slice(bytes).map_err(|e| CheckpointError::Corrupt {
                path: path.to_path_buf(),
                line,
                message: e.to_string(),
            })?;
        let key = IdKey::of(head.id.as_bytes());
        if last.get(&key) == Some(line) && keep.is_none_or(|k| k(&key)) {
            out.write_all(bytes)
                .and_then(|_| out.write_all(b"\n"))
                .map_err(io_err(&tmp))?;
        } else {
            dropped += 1;
        }
    }
    let file = out.into_inner().map_err(|e| io_err(&tmp)(e.into_error()))?;
    file.sync_all().map_err(io_err(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    sync_dir(path);
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::super::scan;
    use super::super::tests::line;
    use super::*;

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
        assert!(scan(&p).unwrap().has_superseded());
        assert_eq!(compact(&p, None).unwrap(), 1);
        let after = std::fs::read_to_string(&p).unwrap();
        assert_eq!(
            after,
            [line("b", "ok", 1, None), line("a", "ok", 1, None)].concat()
        );
        assert!(!scan(&p).unwrap().has_superseded());
        let only_a = |k: &IdKey| *k == IdKey::of(b"a");
        assert_eq!(compact(&p, Some(&only_a)).unwrap(), 1);
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            line("a", "ok", 1, None)
        );
    }
}
