//! Where a run really writes. Every output name is resolved to the file it lands in before
//! anything is opened: symlinks are followed (a dangling one to the file it would create), so
//! the lock, the meta, the temporary files and the final rename all sit beside the real target
//! and a second run through another name finds the same lock. The same resolution decides
//! whether a file the run writes is a file it reads (the job file, the spec, the template, the
//! price table), which is refused before anything is touched.

use std::io;
use std::path::{Component, Path, PathBuf};

/// Symlink hops followed before giving up (the kernel's own limit).
const MAX_HOPS: usize = 40;

/// The file `path` names once every symlink is followed: an absolute path, whose parent folder
/// exists (or is created by the caller) and whose last part is not a symlink. For a path that
/// does not exist yet, the folder is resolved and the name kept.
pub fn resolve(path: &Path) -> io::Result<PathBuf> {
    let mut p = absolute(path)?;
    for _ in 0..MAX_HOPS {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&p)?;
                let dir = p.parent().map(Path::to_path_buf).unwrap_or_default();
                p = normalize(&dir.join(target));
            }
            Ok(_) => return std::fs::canonicalize(&p),
            // Not there, or not reachable (a parent that is a file): the name as it is, and
            // creating it reports the problem as an output error.
            Err(_) => {
                let name = p.file_name().map(|n| n.to_os_string());
                let (Some(dir), Some(name)) = (p.parent(), name) else {
                    return Ok(p);
                };
                return Ok(match std::fs::canonicalize(dir) {
                    Ok(d) => d.join(name),
                    // The folder does not exist yet either: the caller creates it.
                    Err(_) => p,
                });
            }
        }
    }
    Err(io::Error::other(format!(
        "{}: too many levels of symbolic links",
        path.display()
    )))
}

fn absolute(path: &Path) -> io::Result<PathBuf> {
    Ok(normalize(&std::path::absolute(path)?))
}

/// Folds `.` and `..` without touching the disk.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Whether two paths name the same file: the same device and inode when both exist (hard links
/// and bind mounts included), else the same resolved path.
pub fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    match (resolve(a), resolve(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Why a path cannot be an output.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// It exists and is not a regular file (a device, a pipe, a folder).
    #[error("{path}: not a regular file ({kind}); outputs must be regular files")]
    NotRegular { path: PathBuf, kind: &'static str },
    /// It could not be looked at or created.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Checks that `path` (resolved) is a regular file or does not exist yet, and that its folder
/// takes new files: a probe file is created and removed, so a read-only mount or a folder
/// without write permission is found before the first request, not after the first answers.
pub fn check_writable(path: &Path) -> Result<(), TargetError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| TargetError::Io { path: p, source }
    };
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => {
            let kind = if m.is_dir() {
                "a folder"
            } else {
                file_kind(&m)
            };
            return Err(TargetError::NotRegular {
                path: path.to_path_buf(),
                kind,
            });
        }
        Ok(_) => {
            std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .map_err(io(path))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(path)(e)),
    }
    let probe = sibling(path, &format!(".probe-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(io(path))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

fn file_kind(m: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = m.file_type();
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_fifo() {
            return "a named pipe";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    let _ = m;
    "not a file"
}

/// `OUT` + `suffix`, beside it: `out.jsonl` -> `out.jsonl.lock`.
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Removes a temporary file on drop unless [`keep`](TempFile::keep) was called: every failure
/// path of a write-then-rename leaves no temporary file behind.
pub struct TempFile {
    path: Option<PathBuf>,
}

impl TempFile {
    pub fn new(path: PathBuf) -> Self {
        TempFile { path: Some(path) }
    }

    pub fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    /// Makes `file` (written at this temporary path) durable and puts it in place of `target`:
    /// fsync the data, rename, fsync the folder. A crash at any point leaves the old file or the
    /// new one, whole; a failure leaves no temporary file.
    pub fn persist(mut self, file: std::fs::File, target: &Path) -> io::Result<()> {
        file.sync_all()?;
        drop(file);
        std::fs::rename(self.path(), target)?;
        self.path = None;
        sync_dir(target);
        Ok(())
    }
}

/// Writes a small file whole or not at all, through [`TempFile::persist`]: `target` +
/// `.tmp`, beside it, so the rename stays on one filesystem.
pub fn write_atomic(target: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = TempFile::new(sibling(target, ".tmp"));
    let mut file = std::fs::File::create(tmp.path())?;
    io::Write::write_all(&mut file, bytes)?;
    tmp.persist(file, target)
}

/// Makes a rename in `path`'s folder durable. Best effort: not every platform can fsync a
/// folder.
pub fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_resolve_to_their_target_even_when_dangling() {
        let dir = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::write(real.join("a.jsonl"), "x").unwrap();
        std::os::unix::fs::symlink("a.jsonl", real.join("link.jsonl")).unwrap();
        std::os::unix::fs::symlink("sub/../new.jsonl", real.join("dangling")).unwrap();
        assert_eq!(
            resolve(&real.join("link.jsonl")).unwrap(),
            real.join("a.jsonl")
        );
        assert_eq!(
            resolve(&real.join("dangling")).unwrap(),
            real.join("new.jsonl")
        );
        assert_eq!(resolve(&real.join("none")).unwrap(), real.join("none"));
        assert!(same_file(&real.join("link.jsonl"), &real.join("a.jsonl")));
        assert!(!same_file(&real.join("none"), &real.join("a.jsonl")));
    }

    #[test]
    fn a_symlink_loop_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("b", dir.path().join("a")).unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("b")).unwrap();
        assert!(resolve(&dir.path().join("a")).is_err());
    }

    #[test]
    fn devices_and_folders_are_not_outputs() {
        let e = check_writable(Path::new("/dev/null")).unwrap_err();
        assert!(e.to_string().contains("character device"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        assert!(check_writable(dir.path()).is_err());
        assert!(check_writable(&dir.path().join("new.jsonl")).is_ok());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn temp_files_are_removed_unless_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.tmp");
        std::fs::write(&p, "x").unwrap();
        drop(TempFile::new(p.clone()));
        assert!(!p.exists());
        let target = dir.path().join("t");
        write_atomic(&target, b"whole").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"whole");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
