//! `--repair`: an output with a line that is not a record (a disk error, a hand edit, a line
//! from another tool) cannot be resumed, and starting over would buy every job again. This
//! moves each unreadable line, as it was, to `OUT.quarantine.jsonl` (appended, fsynced) and
//! rewrites the output without them through a temporary file and a rename; only the jobs of
//! the quarantined lines run again.

use super::{io_err, CheckpointError};
use crate::job::source::{LineReader, RawLine};
use crate::job::Fingerprint;
use crate::output::RecordHead;
use crate::paths::TempFile;
use crate::run_files::RunFiles;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;

/// Whether a line is a record the checkpoint can use.
fn readable(bytes: &[u8]) -> bool {
    serde_json::from_slice::<RecordHead>(bytes)
        .is_ok_and(|h| Fingerprint::parse(&h.fingerprint).is_some())
}

fn for_each_line(
    path: &Path,
    mut f: impl FnMut(&[u8], bool) -> Result<(), CheckpointError>,
) -> Result<(), CheckpointError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mut lines = LineReader::new(BufReader::with_capacity(1 << 20, file), usize::MAX);
    while let Some(raw) = lines.next_line().map_err(io_err(path))? {
        if let RawLine::Line { .. } = raw {
            let bytes = lines.bytes();
            if !bytes.is_empty() {
                f(bytes, readable(bytes))?;
            }
        }
    }
    Ok(())
}

/// Moves the output's unreadable lines to the quarantine file. Returns how many were moved.
pub fn repair(output: &Path) -> Result<u64, CheckpointError> {
    let mut bad = 0u64;
    for_each_line(output, |_, ok| {
        bad += u64::from(!ok);
        Ok(())
    })?;
    if bad == 0 {
        return Ok(0);
    }
    let qpath = RunFiles::of(output).quarantine();
    let qfile = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&qpath)
        .map_err(io_err(&qpath))?;
    let mut quarantine = BufWriter::new(qfile);
    let tmp = TempFile::new(RunFiles::of(output).repair_temp());
    let file = File::create(tmp.path()).map_err(io_err(tmp.path()))?;
    let mut good = BufWriter::with_capacity(1 << 20, file);
    for_each_line(output, |bytes, ok| {
        let (w, p) = if ok {
            (&mut good, tmp.path())
        } else {
            (&mut quarantine, qpath.as_path())
        };
        w.write_all(bytes)
            .and_then(|_| w.write_all(b"\n"))
            .map_err(io_err(p))
    })?;
    // The quarantine is durable before the lines leave the output.
    let q = quarantine
        .into_inner()
        .map_err(|e| io_err(&qpath)(e.into_error()))?;
    q.sync_all().map_err(io_err(&qpath))?;
    let g = good
        .into_inner()
        .map_err(|e| io_err(tmp.path())(e.into_error()))?;
    tmp.persist(g, output).map_err(io_err(output))?;
    Ok(bad)
}

#[cfg(test)]
mod tests {
    use super::super::scan;
    use super::super::tests::line;
    use super::*;

    #[test]
    fn unreadable_lines_move_to_the_quarantine() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.jsonl");
        let (a, b) = (line("a", "ok", 1, None), line("b", "ok", 2, None));
        std::fs::write(&p, format!("{a}garbage\n{b}{{\"id\":\"x\"}}\n")).unwrap();
        assert!(scan(&p).is_err());
        assert_eq!(repair(&p).unwrap(), 2);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), format!("{a}{b}"));
        assert_eq!(
            std::fs::read_to_string(RunFiles::of(&p).quarantine()).unwrap(),
            "garbage\n{\"id\":\"x\"}\n"
        );
        assert_eq!(scan(&p).unwrap().ids(), 2);
        assert_eq!(repair(&p).unwrap(), 0);
        assert!(!RunFiles::of(&p).repair_temp().exists());
    }
}
