//! Images from CSV columns and plain JSONL fields (`--image-column`): a cell holding an
//! `http(s)://` or `data:` URL is sent as it is; any other non-empty value is a file (relative
//! to the job file's folder), checked when the job is read (it exists, is PNG, JPEG, GIF or
//! WebP by its first bytes, and is no larger than `--max-image-bytes`), hashed into the job's
//! fingerprint (a changed image re-runs its job), and read and base64-encoded only when the
//! job is sent, so a million rows never hold their images in memory.

use serde_json::{json, Value};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Images larger than this are refused unless `--max-image-bytes` says otherwise (providers
/// take about 20 MB a request).
pub const DEFAULT_MAX_BYTES: u64 = 20 << 20;

/// What a file part's URL says until the job is sent: `bulkprompt-file:N`, the job's N-th file.
const FILE_URL: &str = "bulkprompt-file:";

/// A local image a job sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    pub path: PathBuf,
    pub mime: &'static str,
    /// `--max-image-bytes`: checked again when the file is read to be sent.
    pub max_bytes: u64,
}

/// Opens an image file without blocking on it (a FIFO or a device never hangs the run) and
/// checks the opened file itself: a regular file of at most `max_bytes`. The reader it gives
/// stops one byte past the limit, whatever the file becomes after the check.
fn open_image(path: &Path, max_bytes: u64) -> Result<std::io::Take<std::fs::File>, String> {
    let shown = path.display();
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options
        .open(path)
        .map_err(|e| format!("image file {shown}: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("image file {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("image file {shown}: not a regular file"));
    }
    if meta.len() > max_bytes {
        return Err(format!(
            "image file {shown}: {} bytes, more than --max-image-bytes {max_bytes}",
            meta.len()
        ));
    }
    Ok(file.take(max_bytes.saturating_add(1)))
}

/// Reads an opened image whole, refusing it if it grew past the limit since it was checked.
fn read_image(path: &Path, max_bytes: u64) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    open_image(path, max_bytes)?
        .read_to_end(&mut bytes)
        .map_err(|e| format!("image file {}: {e}", path.display()))?;
    if bytes.len() as u64 > max_bytes {
        return Err(format!(
            "image file {}: more than --max-image-bytes {max_bytes}",
            path.display()
        ));
    }
    Ok(bytes)
}

/// What one image cell becomes.
#[derive(Debug)]
pub enum Image {
    /// Sent as it is.
    Url(String),
    /// A local file, and a hash of its bytes.
    File(ImageFile, u128),
}

/// The image type by its first bytes.
pub fn sniff(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if head.starts_with(b"\xff\xd8\xff") {
        Some("image/jpeg")
    } else if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

/// The name [`sniff`] gives a type of image, as the same static string.
pub fn known_mime(name: &str) -> Option<&'static str> {
    ["image/png", "image/jpeg", "image/gif", "image/webp"]
        .into_iter()
        .find(|m| *m == name)
}

/// Resolves one cell: `None` for an empty one, else the image, or why it cannot be sent.
pub fn resolve(cell: &str, base: &Path, max_bytes: u64) -> Result<Option<Image>, String> {
    let cell = cell.trim();
    if cell.is_empty() {
        return Ok(None);
    }
    let lower = cell.get(..8).unwrap_or(cell).to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") || lower.starts_with("data:") {
        return Ok(Some(Image::Url(cell.to_string())));
    }
    let path = base.join(cell);
    let shown = path.display();
    let file = open_image(&path, max_bytes)?;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut reader = std::io::BufReader::with_capacity(1 << 16, file);
    let mut read = 0u64;
    let mut head = Vec::with_capacity(16);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| format!("image file {shown}: {e}"))?;
        if n == 0 {
            break;
        }
        read += n as u64;
        if read > max_bytes {
            return Err(format!(
                "image file {shown}: more than --max-image-bytes {max_bytes}"
            ));
        }
        if head.len() < 16 {
            head.extend_from_slice(&buf[..n.min(16 - head.len())]);
        }
        hasher.update(&buf[..n]);
    }
    let mime = sniff(&head).ok_or_else(|| {
        format!("image file {shown}: not a PNG, JPEG, GIF or WebP image (by its first bytes)")
    })?;
    Ok(Some(Image::File(
        ImageFile {
            path,
            mime,
            max_bytes,
        },
        hasher.digest128(),
    )))
}

/// The content part for an image: its URL, or a stand-in for the `n`-th file.
pub fn part(image: &Image, n: usize) -> Value {
    let url = match image {
        Image::Url(u) => u.clone(),
        Image::File(..) => format!("{FILE_URL}{n}"),
    };
    json!({"type": "image_url", "image_url": {"url": url}})
}

/// The body with each file stand-in replaced by the file as a base64 `data:` URL.
pub fn embed(body: &[u8], files: &[ImageFile]) -> Result<Vec<u8>, String> {
    let mut v: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if let Some(Value::Array(messages)) = v.get_mut("messages") {
        for m in messages {
            let Some(Value::Array(parts)) = m.get_mut("content") else {
                continue;
            };
            for p in parts {
                let Some(Value::String(url)) =
                    p.get_mut("image_url").and_then(|i| i.get_mut("url"))
                else {
                    continue;
                };
                let Some(n) = url
                    .strip_prefix(FILE_URL)
                    .and_then(|n| n.parse::<usize>().ok())
                else {
                    continue;
                };
                let f = files
                    .get(n)
                    .ok_or_else(|| format!("image {n} of the job is missing"))?;
                let bytes = read_image(&f.path, f.max_bytes)?;
                *url = format!(
                    "data:{};base64,{}",
                    f.mime,
                    data_encoding::BASE64.encode(&bytes)
                );
            }
        }
    }
    serde_json::to_vec(&v).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_told_by_their_first_bytes() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n...."), Some("image/png"));
        assert_eq!(sniff(b"\xff\xd8\xff\xe0"), Some("image/jpeg"));
        assert_eq!(sniff(b"GIF89a"), Some("image/gif"));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff(b"%PDF-1.7"), None);
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn cells_resolve_to_urls_files_or_reasons() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.png"), b"\x89PNG\r\n\x1a\nrest").unwrap();
        std::fs::write(dir.path().join("a.txt"), b"hello").unwrap();
        assert!(resolve("", dir.path(), 100).unwrap().is_none());
        assert!(matches!(
            resolve("https://x.test/a.jpg", dir.path(), 100).unwrap(),
            Some(Image::Url(_))
        ));
        let Some(Image::File(f, _)) = resolve("a.png", dir.path(), 100).unwrap() else {
            panic!()
        };
        assert_eq!(f.mime, "image/png");
        assert!(resolve("a.txt", dir.path(), 100)
            .unwrap_err()
            .contains("not a PNG"));
        assert!(resolve("gone.png", dir.path(), 100)
            .unwrap_err()
            .contains("gone.png"));
        assert!(resolve("a.png", dir.path(), 5)
            .unwrap_err()
            .contains("--max-image-bytes"));
        let body = serde_json::to_vec(&json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "x"}, part(&Image::File(f.clone(), 0), 0)]}]}))
        .unwrap();
        let sent: Value = serde_json::from_slice(&embed(&body, &[f]).unwrap()).unwrap();
        assert_eq!(
            sent["messages"][0]["content"][1]["image_url"]["url"],
            "data:image/png;base64,iVBORw0KGgpyZXN0"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_or_a_swapped_file_never_hangs_or_reads_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("f.png");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(resolve("f.png", dir.path(), 100)
            .unwrap_err()
            .contains("not a regular file"));
        // Checked when read, then swapped for a device before it is sent.
        let real = dir.path().join("a.png");
        std::fs::write(&real, b"\x89PNG\r\n\x1a\nrest").unwrap();
        let Some(Image::File(f, _)) = resolve("a.png", dir.path(), 100).unwrap() else {
            panic!()
        };
        std::fs::remove_file(&real).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &real).unwrap();
        let body = serde_json::to_vec(&json!({"messages": [{"role": "user", "content": [
            part(&Image::File(f.clone(), 0), 0)]}]}))
        .unwrap();
        assert!(embed(&body, std::slice::from_ref(&f))
            .unwrap_err()
            .contains("not a regular file"));
        // Grown past the limit after the check.
        std::fs::remove_file(&real).unwrap();
        std::fs::write(&real, vec![0x89; 500]).unwrap();
        assert!(embed(&body, &[f])
            .unwrap_err()
            .contains("--max-image-bytes"));
    }
}
