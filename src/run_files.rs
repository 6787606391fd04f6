//! Every file a run of one output reads or writes, named in one place. An output `data/out.jsonl`
//! has its records there and its own files in `data/.bulkprompt/`:
//!
//! | file | name |
//! |---|---|
//! | records | `data/out.jsonl` (a Parquet output: `.bulkprompt/out.parquet.journal.jsonl`) |
//! | lock | `.bulkprompt/out.jsonl.lock` |
//! | meta | `.bulkprompt/out.jsonl.meta.json` |
//! | batch journal | `.bulkprompt/out.jsonl.batches.jsonl` |
//! | quarantine (`--repair`) | `data/out.jsonl.quarantine.jsonl` |
//! | temporary files | `out.jsonl.compact.tmp`, `out.jsonl.repair.tmp`, `.bulkprompt/out.jsonl.meta.json.tmp`, `out.parquet.tmp` |
//! | report | `data/out.jsonl.report.html` |
//!
//! Versions before `.bulkprompt/` kept the meta, the batch journal and a Parquet output's
//! journal beside the output; [`RunFiles::legacy_moves`] names where each was and where it
//! goes, and readers find either ([`RunFiles::found_meta`], [`RunFiles::found_batch_journal`]).
//! A file already inside `.bulkprompt/` (a Parquet output's journal) has its own files beside it.

use crate::paths::sibling;
use std::path::{Path, PathBuf};

/// The folder beside an output that holds the run's own files, out of the data's way.
pub const RUN_DIR: &str = ".bulkprompt";

/// The files of one output's runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFiles {
    /// Where records are appended: the JSONL output, or a Parquet output's journal.
    records: PathBuf,
    /// A Parquet output's file, rewritten from the journal at the end of each run.
    parquet: Option<PathBuf>,
}

impl RunFiles {
    /// The files of the output whose records are appended to `records` (a JSONL output, or a
    /// Parquet output's journal).
    pub fn of(records: &Path) -> RunFiles {
        RunFiles {
            records: records.to_path_buf(),
            parquet: None,
        }
    }

    /// The files of a Parquet output: its records go to its journal in `.bulkprompt/`.
    pub fn of_parquet(target: &Path) -> RunFiles {
        RunFiles {
            records: run_file(target, ".journal.jsonl"),
            parquet: Some(target.to_path_buf()),
        }
    }

    /// The files of the output a user names: a Parquet output by its extension.
    pub fn named(output: &Path) -> RunFiles {
        if is_parquet(output) {
            RunFiles::of_parquet(output)
        } else {
            RunFiles::of(output)
        }
    }

    /// The records as a reader finds them: a Parquet output's journal at its place, or where
    /// an earlier version left it.
    pub fn found_records(&self) -> PathBuf {
        found(self.records.clone(), self.legacy_records())
    }

    /// Where records are appended.
    pub fn records(&self) -> &Path {
        &self.records
    }

    /// A Parquet output's file, when the output is one.
    pub fn parquet(&self) -> Option<&Path> {
        self.parquet.as_deref()
    }

    /// Held (`flock`) while a run writes the output.
    pub fn lock(&self) -> PathBuf {
        run_file(&self.records, ".lock")
    }

    /// What wrote the output (job file, endpoint, model, command line, each run's mode).
    pub fn meta(&self) -> PathBuf {
        run_file(&self.records, ".meta.json")
    }

    /// The batches submitted for the output, and how each ended.
    pub fn batch_journal(&self) -> PathBuf {
        run_file(&self.records, ".batches.jsonl")
    }

    /// Where `--repair` moves unreadable lines.
    pub fn quarantine(&self) -> PathBuf {
        sibling(&self.records, ".quarantine.jsonl")
    }

    /// Compaction's temporary file, beside the records so the rename stays on one filesystem.
    pub fn compact_temp(&self) -> PathBuf {
        compact_temp(&self.records)
    }

    /// `--repair`'s temporary file.
    pub fn repair_temp(&self) -> PathBuf {
        sibling(&self.records, ".repair.tmp")
    }

    /// The meta's temporary file (`paths::write_atomic`).
    pub fn meta_temp(&self) -> PathBuf {
        sibling(&self.meta(), ".tmp")
    }

    /// The Parquet file's temporary file, renamed over it once whole.
    pub fn parquet_temp(&self) -> Option<PathBuf> {
        self.parquet.as_deref().map(parquet_temp)
    }

    /// The temporary files a killed run may leave behind.
    pub fn temps(&self) -> Vec<PathBuf> {
        let mut t = vec![self.compact_temp(), self.meta_temp(), self.repair_temp()];
        t.extend(self.parquet_temp());
        t
    }

    /// `report`'s page, beside the output.
    pub fn report(&self) -> PathBuf {
        sibling(
            self.parquet.as_deref().unwrap_or(&self.records),
            ".report.html",
        )
    }

    /// Where versions before `.bulkprompt/` kept the records (a Parquet output's journal), the
    /// meta and the batch journal, and where each goes now.
    pub fn legacy_moves(&self) -> Vec<(PathBuf, PathBuf)> {
        let old = self.legacy_records();
        let mut moves = Vec::new();
        if old != self.records {
            moves.push((old.clone(), self.records.clone()));
        }
        moves.push((sibling(&old, ".meta.json"), self.meta()));
        moves.push((sibling(&old, ".batches.jsonl"), self.batch_journal()));
        moves
    }

    /// The meta as a reader finds it: at its place, or where an earlier version left it.
    pub fn found_meta(&self) -> PathBuf {
        found(self.meta(), sibling(&self.legacy_records(), ".meta.json"))
    }

    /// The batch journal as a reader finds it.
    pub fn found_batch_journal(&self) -> PathBuf {
        found(
            self.batch_journal(),
            sibling(&self.legacy_records(), ".batches.jsonl"),
        )
    }

    /// Whether a batch journal exists at either place.
    pub fn has_batch_journal(&self) -> bool {
        self.found_batch_journal().exists()
    }

    /// Every file a run writes: the records, the run's own files, the temporary files, the
    /// Parquet file, and the files of earlier versions it moves.
    pub fn written(&self) -> Vec<PathBuf> {
        let mut w = vec![
            self.records.clone(),
            self.lock(),
            self.meta(),
            self.quarantine(),
            self.batch_journal(),
        ];
        w.extend(self.legacy_moves().into_iter().map(|(old, _)| old));
        w.extend(self.temps());
        w.extend(self.parquet.clone());
        w
    }

    /// The records' name before `.bulkprompt/`: a Parquet journal beside its file.
    fn legacy_records(&self) -> PathBuf {
        match &self.parquet {
            Some(t) => sibling(t, ".journal.jsonl"),
            None => self.records.clone(),
        }
    }
}

/// Whether a path names a Parquet output.
pub fn is_parquet(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
}

/// Where a Parquet file is written before the rename: `results.parquet` -> `results.parquet.tmp`.
pub fn parquet_temp(target: &Path) -> PathBuf {
    sibling(target, ".tmp")
}

/// `OUT.jsonl` -> `OUT.jsonl.compact.tmp`: any file rewritten in place (a compacted output, a
/// merged one) is written here first.
pub fn compact_temp(path: &Path) -> PathBuf {
    sibling(path, ".compact.tmp")
}

/// Where a run keeps its file `OUT` + `suffix`: in [`RUN_DIR`] beside the output
/// (`data/out.jsonl` -> `data/.bulkprompt/out.jsonl.lock`); for a file already in that folder
/// (a Parquet output's journal), beside it.
fn run_file(output: &Path, suffix: &str) -> PathBuf {
    let parent = output.parent().unwrap_or(Path::new(""));
    let dir = if parent.file_name().is_some_and(|n| n == RUN_DIR) {
        parent.to_path_buf()
    } else {
        parent.join(RUN_DIR)
    };
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    dir.join(name)
}

/// For readers of outputs that a version before [`RUN_DIR`] wrote: `new` when it exists or
/// `old` does not, else `old` (the next run moves it).
fn found(new: PathBuf, old: PathBuf) -> PathBuf {
    if !new.exists() && old.exists() {
        old
    } else {
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jsonl_outputs_files() {
        let f = RunFiles::of(Path::new("data/out.jsonl"));
        assert_eq!(f.lock(), Path::new("data/.bulkprompt/out.jsonl.lock"));
        assert_eq!(f.meta(), Path::new("data/.bulkprompt/out.jsonl.meta.json"));
        assert_eq!(
            f.batch_journal(),
            Path::new("data/.bulkprompt/out.jsonl.batches.jsonl")
        );
        assert_eq!(f.quarantine(), Path::new("data/out.jsonl.quarantine.jsonl"));
        assert_eq!(f.report(), Path::new("data/out.jsonl.report.html"));
        assert_eq!(
            f.legacy_moves(),
            [
                (
                    PathBuf::from("data/out.jsonl.meta.json"),
                    PathBuf::from("data/.bulkprompt/out.jsonl.meta.json")
                ),
                (
                    PathBuf::from("data/out.jsonl.batches.jsonl"),
                    PathBuf::from("data/.bulkprompt/out.jsonl.batches.jsonl")
                ),
            ]
        );
        assert_eq!(f.temps().len(), 3);
    }

    #[test]
    fn a_parquet_outputs_files_sit_beside_its_journal() {
        let f = RunFiles::of_parquet(Path::new("data/out.parquet"));
        assert_eq!(
            f.records(),
            Path::new("data/.bulkprompt/out.parquet.journal.jsonl")
        );
        assert_eq!(
            f.meta(),
            Path::new("data/.bulkprompt/out.parquet.journal.jsonl.meta.json")
        );
        assert_eq!(f.report(), Path::new("data/out.parquet.report.html"));
        assert_eq!(
            f.parquet_temp(),
            Some(PathBuf::from("data/out.parquet.tmp"))
        );
        assert_eq!(
            f.legacy_moves()[0],
            (
                PathBuf::from("data/out.parquet.journal.jsonl"),
                PathBuf::from("data/.bulkprompt/out.parquet.journal.jsonl")
            )
        );
        // The same files whether named from the file or from its journal.
        assert_eq!(RunFiles::of(f.records()).meta(), f.meta());
        assert!(f.written().contains(&PathBuf::from("data/out.parquet")));
    }
}
