//! The jobs validation built, kept for the run so the job file is read once: each job as it
//! came out of the file (request body, id, metadata, estimates, what its answers must be) in a
//! compact binary form, in an unnamed file next to the output that vanishes when the run ends
//! (or is killed). Reading it back costs a copy a job, not a JSON parse and a serialization:
//! on a file of short prompts that is most of what reading the file costs.
//!
//! The spill takes at most a quarter of the disk's free space (and 4 GiB); a job file that
//! would need more, a disk that fills or an error writing it drops the spill, and the run reads
//! the job file again as it did before (see [`SpillWriter`]). What is sent is what was
//! validated: a job file edited after validation changes nothing.

use super::image::ImageFile;
use super::{Fingerprint, InputError, Job, JobId, Jobs};
use crate::answer::{Expect, Schema};
use serde_json::{Map, Value};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Most bytes a spill may take, whatever the disk has free.
const MOST: u64 = 4 << 30;

/// Writes validated jobs to a spill; any failure (or the cap) ends it quietly.
pub struct SpillWriter {
    out: BufWriter<File>,
    written: u64,
    cap: u64,
    jobs: u64,
    schemas: Slots<u64>,
    record: Vec<u8>,
}

/// The jobs of a finished spill, read back in order.
#[derive(Debug)]
pub struct Spill {
    file: File,
    jobs: u64,
    /// Its length, the bound of any record's.
    bytes: u64,
    /// The job file the jobs came from, for messages.
    input: PathBuf,
}

impl SpillWriter {
    /// A spill in `dir` (an unnamed file where the system allows it, else one removed when
    /// closed), if the disk has room for one; `None` when it cannot be made.
    pub fn create(dir: &Path) -> Option<SpillWriter> {
        Self::capped(dir, (free_bytes(dir)? / 4).min(MOST))
    }

    fn capped(dir: &Path, cap: u64) -> Option<SpillWriter> {
        let file = tempfile::tempfile_in(dir)
            .map_err(|e| tracing::debug!("no spill in {}: {e}", dir.display()))
            .ok()?;
        Some(SpillWriter {
            out: BufWriter::with_capacity(1 << 18, file),
            written: 0,
            cap,
            jobs: 0,
            schemas: Slots::default(),
            record: Vec::with_capacity(1024),
        })
    }

    /// Adds a job; `false` (the spill is to be dropped) when it would pass the cap or could
    /// not be written.
    #[must_use]
    pub fn push(&mut self, job: &Job) -> bool {
        self.record.clear();
        encode(job, &mut self.schemas, &mut self.record);
        self.written += self.record.len() as u64 + 8;
        if self.written > self.cap {
            tracing::debug!("the spill would pass {} bytes: dropped", self.cap);
            return false;
        }
        let len = (self.record.len() as u64).to_le_bytes();
        let put = self
            .out
            .write_all(&len)
            .and_then(|()| self.out.write_all(&self.record));
        self.jobs += 1;
        put.map_err(|e| tracing::debug!("spill: {e}")).is_ok()
    }

    /// The spill, ready to be read from its start; `None` if it could not be finished.
    pub fn finish(self, input: &Path) -> Option<Spill> {
        let mut file = self
            .out
            .into_inner()
            .map_err(|e| tracing::debug!("spill: {}", e.error()))
            .ok()?;
        file.rewind()
            .map_err(|e| tracing::debug!("spill: {e}"))
            .ok()?;
        Some(Spill {
            file,
            jobs: self.jobs,
            bytes: self.written,
            input: input.to_path_buf(),
        })
    }
}

/// Bytes free to an unprivileged writer on the disk of `dir`.
#[cfg(unix)]
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: `path` is a NUL-terminated string and `st` a plain struct statvfs fills in.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Without a way to ask for free space, no spill: the job file is read again.
#[cfg(not(unix))]
fn free_bytes(_dir: &Path) -> Option<u64> {
    None
}

impl Spill {
    /// How many jobs it holds.
    pub fn jobs(&self) -> u64 {
        self.jobs
    }

    /// Its jobs in file order. A spill that cannot be read (it never should) ends with an
    /// error naming the job file.
    pub fn into_jobs(self) -> Jobs {
        Box::new(SpillJobs {
            input: self.input,
            from: BufReader::with_capacity(1 << 18, self.file),
            left: self.jobs,
            bytes: self.bytes,
            schemas: Slots::default(),
            record: Vec::new(),
        })
    }
}

struct SpillJobs {
    input: PathBuf,
    from: BufReader<File>,
    left: u64,
    /// Bytes not read yet: no length read from the file asks for more memory than that.
    bytes: u64,
    schemas: Slots<Arc<Schema>>,
    record: Vec<u8>,
}

impl Iterator for SpillJobs {
    type Item = Result<Job, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let read = self.read_record().and_then(|()| {
            decode(&self.record, &mut self.schemas).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "a job is cut short")
            })
        });
        Some(read.map_err(|e| {
            self.left = 0;
            InputError::Io {
                file: self.input.clone(),
                source: std::io::Error::new(
                    e.kind(),
                    format!("reading back the validated jobs: {e}"),
                ),
            }
        }))
    }
}

impl SpillJobs {
    fn read_record(&mut self) -> std::io::Result<()> {
        let mut len = [0u8; 8];
        self.from.read_exact(&mut len)?;
        let len = u64::from_le_bytes(len);
        if len.saturating_add(8) > self.bytes {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
        self.bytes -= len + 8;
        let len = len as usize;
        self.record.clear();
        self.record.reserve(len);
        (&mut self.from)
            .take(len as u64)
            .read_to_end(&mut self.record)?;
        if self.record.len() != len {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
}

/// What a job expects of its answers, in the spill: a schema is written whole into one of a
/// few slots, and by its slot while it is there (a file of a million jobs usually repeats one
/// schema; one of a million schemas costs the reader no more than a few).
const TEXT: u8 = 0;
const JSON_OBJECT: u8 = 1;
const NEW_SCHEMA: u8 = 2;
const KNOWN_SCHEMA: u8 = 3;

/// The schemas a spill's writer and reader both hold, as a ring.
const SLOTS: usize = 64;

struct Slots<T> {
    held: Vec<T>,
    next: usize,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots {
            held: Vec::new(),
            next: 0,
        }
    }
}

impl<T> Slots<T> {
    /// Puts `item` in slot `at`: a used one, or the first unused; None for any other.
    fn put(&mut self, at: usize, item: T) -> Option<()> {
        match at.cmp(&self.held.len()) {
            std::cmp::Ordering::Less => self.held[at] = item,
            std::cmp::Ordering::Equal if at < SLOTS => self.held.push(item),
            _ => return None,
        }
        Some(())
    }

    /// The slot for a new item: the next unused, then the oldest.
    fn next_slot(&mut self) -> usize {
        let at = self.next;
        self.next = (self.next + 1) % SLOTS;
        at
    }
}

fn encode(job: &Job, schemas: &mut Slots<u64>, out: &mut Vec<u8>) {
    for n in [job.index, job.line] {
        out.extend_from_slice(&n.to_le_bytes());
    }
    out.extend_from_slice(&job.fingerprint.0.to_le_bytes());
    let max = job.max_output_tokens.map_or(u64::MAX, u64::from);
    out.extend_from_slice(&max.to_le_bytes());
    for n in [job.est_prompt_tokens, job.choices, job.images] {
        out.extend_from_slice(&n.to_le_bytes());
    }
    match &job.expect {
        Expect::Text => out.push(TEXT),
        Expect::JsonObject => out.push(JSON_OBJECT),
        Expect::Schema(s) => match schemas.held.iter().position(|h| *h == s.hash) {
            Some(at) => {
                out.push(KNOWN_SCHEMA);
                out.extend_from_slice(&(at as u32).to_le_bytes());
            }
            None => {
                let at = schemas.next_slot();
                let _ = schemas.put(at, s.hash);
                out.push(NEW_SCHEMA);
                out.extend_from_slice(&(at as u32).to_le_bytes());
                put(out, &serde_json::to_vec(&s.value).unwrap_or_default());
            }
        },
    }
    put(out, job.id.as_str().as_bytes());
    put(out, job.model.as_bytes());
    put(out, &job.body);
    match job.metadata.is_empty() {
        true => put(out, b""),
        false => put(out, &serde_json::to_vec(&job.metadata).unwrap_or_default()),
    }
    out.extend_from_slice(&(job.image_files.len() as u64).to_le_bytes());
    for f in &job.image_files {
        put(out, path_bytes(&f.path).as_ref());
        put(out, f.mime.as_bytes());
        out.extend_from_slice(&f.max_bytes.to_le_bytes());
    }
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// A cursor over one record.
struct Take<'a>(&'a [u8]);

impl<'a> Take<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.bytes(8)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.bytes(4)?.try_into().ok()?))
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.bytes(1)?[0])
    }
    fn field(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u64()?).ok()?;
        self.bytes(n)
    }
    fn text(&mut self) -> Option<String> {
        String::from_utf8(self.field()?.to_vec()).ok()
    }
}

fn decode(record: &[u8], schemas: &mut Slots<Arc<Schema>>) -> Option<Job> {
    let mut t = Take(record);
    let (index, line) = (t.u64()?, t.u64()?);
    let fingerprint = Fingerprint(u128::from_le_bytes(t.bytes(16)?.try_into().ok()?));
    let max_output_tokens = match t.u64()? {
        u64::MAX => None,
        n => Some(u32::try_from(n).ok()?),
    };
    let (est_prompt_tokens, choices, images) = (t.u32()?, t.u32()?, t.u32()?);
    let expect = match t.u8()? {
        TEXT => Expect::Text,
        JSON_OBJECT => Expect::JsonObject,
        NEW_SCHEMA => {
            let at = t.u32()? as usize;
            let value: Value = serde_json::from_slice(t.field()?).ok()?;
            let schema = Arc::new(Schema::new(value));
            schemas.put(at, schema.clone())?;
            Expect::Schema(schema)
        }
        KNOWN_SCHEMA => Expect::Schema(schemas.held.get(t.u32()? as usize)?.clone()),
        _ => return None,
    };
    let id = JobId::new(t.text()?);
    let model = t.text()?;
    let body = bytes::Bytes::copy_from_slice(t.field()?);
    let metadata = match t.field()? {
        b"" => Map::new(),
        m => serde_json::from_slice(m).ok()?,
    };
    let files = t.u64()?;
    let mut image_files = Vec::with_capacity(files.min(64) as usize);
    for _ in 0..files {
        let path = bytes_path(t.field()?)?;
        let mime = super::image::known_mime(std::str::from_utf8(t.field()?).ok()?)?;
        image_files.push(ImageFile {
            path,
            mime,
            max_bytes: t.u64()?,
        });
    }
    t.0.is_empty().then_some(Job {
        id,
        index,
        line,
        model,
        body,
        fingerprint,
        metadata,
        est_prompt_tokens,
        max_output_tokens,
        choices,
        images,
        expect,
        image_files,
    })
}

#[cfg(unix)]
fn path_bytes(p: &Path) -> std::borrow::Cow<'_, [u8]> {
    use std::os::unix::ffi::OsStrExt;
    std::borrow::Cow::Borrowed(p.as_os_str().as_bytes())
}

#[cfg(not(unix))]
fn path_bytes(p: &Path) -> std::borrow::Cow<'_, [u8]> {
    std::borrow::Cow::Owned(p.to_string_lossy().into_owned().into_bytes())
}

#[cfg(unix)]
fn bytes_path(b: &[u8]) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(b)))
}

#[cfg(not(unix))]
fn bytes_path(b: &[u8]) -> Option<PathBuf> {
    String::from_utf8(b.to_vec()).ok().map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::request::JobDefaults;
    use crate::job::source::{validate, Keep};
    use crate::job::{InputFormat, InputSpec, Template};

    fn spec(path: &Path, defaults: JobDefaults) -> InputSpec {
        InputSpec {
            path: path.to_path_buf(),
            format: InputFormat::from_path(path),
            delimiter: b',',
            defaults: Arc::new(defaults),
            max_line_bytes: 1 << 20,
            shard: None,
        }
    }

    /// A job file in a folder of its own.
    fn job_file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.jsonl");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    const ONE_JOB: &str =
        "{\"id\":\"a\",\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}\n";

    fn shown(jobs: impl Iterator<Item = Result<Job, InputError>>) -> Vec<String> {
        jobs.map(|j| format!("{:?}", j.unwrap())).collect()
    }

    const SCHEMA: &str = r#"{"type":"json_schema","json_schema":{"name":"s","schema":{"type":"object","properties":{"a":{"type":"number"}}}}}"#;

    #[test]
    fn the_run_reads_the_jobs_validation_built_whatever_the_file_becomes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.jsonl");
        let png = dir.path().join("cat.png");
        std::fs::write(&png, b"\x89PNG\r\n\x1a\n0000").unwrap();
        let lines = [
            format!(r#"{{"id":"a","model":"m","messages":[{{"role":"user","content":"hi \u00e9"}}],"response_format":{SCHEMA},"metadata":{{"k":[1,2.5,null,"x"]}}}}"#),
            format!(r#"{{"id":"b","model":"m2","max_tokens":7,"n":2,"messages":[{{"role":"user","content":"two"}}],"response_format":{SCHEMA}}}"#),
            r#"{"id":"c","model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"}}"#.to_string(),
            r#"{"text":"plain","img":"cat.png","extra":{"deep":true}}"#.to_string(),
        ];
        std::fs::write(&path, lines.join("\n")).unwrap();
        let spec = spec(
            &path,
            JobDefaults {
                model: Some("dm".into()),
                system: Some("be brief".into()),
                template: Some(Template::parse("say {text}").unwrap()),
                image_columns: vec!["img".into()],
                ..Default::default()
            },
        );
        let built = shown(spec.open().unwrap());
        let keep = Keep {
            ids: false,
            jobs_in: Some(dir.path()),
        };
        let spill = validate(&spec, 10, keep).unwrap().spill.expect("a spill");
        assert_eq!(spill.jobs(), 4);
        // The job file changes (or goes) after validation: the run sends what was validated.
        std::fs::write(&path, "not a job file").unwrap();
        assert_eq!(shown(spill.into_jobs()), built);
        assert!(built[3].contains("cat.png") && built[1].contains("Schema"));
        // The spill has no name in the folder.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn a_file_of_many_schemas_reads_back_whole() {
        // More schemas than the spill's slots, the first ones again after the ring has turned.
        let line = |i: usize| {
            format!(
                r#"{{"id":"{i}-{}","model":"m","messages":[{{"role":"user","content":"x"}}],"response_format":{{"type":"json_schema","json_schema":{{"name":"s","schema":{{"type":"object","required":["k{}"]}}}}}}}}"#,
                i * 7,
                i / 2 % 90
            )
        };
        // Each schema twice in a row: the second by its slot, slots reused after the 64th.
        let text: String = (0..400).map(|i| line(i) + "\n").collect();
        let (dir, path) = job_file(&text);
        let spec = spec(&path, JobDefaults::default());
        let built = shown(spec.open().unwrap());
        let keep = Keep {
            ids: false,
            jobs_in: Some(dir.path()),
        };
        let spill = validate(&spec, 10, keep).unwrap().spill.unwrap();
        assert_eq!(shown(spill.into_jobs()), built);
    }

    #[test]
    fn no_spill_when_a_line_is_bad_or_none_is_asked_for() {
        let (dir, path) = job_file(&format!("{ONE_JOB}{{nope\n"));
        let spec = spec(&path, JobDefaults::default());
        let keep = Keep {
            ids: false,
            jobs_in: Some(dir.path()),
        };
        let v = validate(&spec, 10, keep).unwrap();
        assert_eq!(v.errors.len(), 1);
        assert!(v.spill.is_none());
        std::fs::write(&path, ONE_JOB).unwrap();
        assert!(validate(&spec, 10, Keep::default())
            .unwrap()
            .spill
            .is_none());
        assert!(validate(&spec, 10, keep).unwrap().spill.is_some());
    }

    #[test]
    fn a_spill_that_would_pass_its_cap_is_given_up() {
        let text: String = (0..10)
            .map(|i| ONE_JOB.replace("\"a\"", &format!("\"{i}\"")))
            .collect();
        let (dir, path) = job_file(&text);
        let spec = spec(&path, JobDefaults::default());
        let mut w = SpillWriter::capped(dir.path(), 400).unwrap();
        let mut pushed = 0;
        for job in spec.open().unwrap() {
            if !w.push(&job.unwrap()) {
                break;
            }
            pushed += 1;
        }
        assert!((1..10).contains(&pushed), "{pushed} jobs fit 400 bytes");
    }

    #[test]
    fn a_spill_cut_short_is_an_error_naming_the_job_file() {
        let (dir, path) = job_file(ONE_JOB);
        let spec = spec(&path, JobDefaults::default());
        let mut w = SpillWriter::capped(dir.path(), 1 << 20).unwrap();
        for job in spec.open().unwrap() {
            assert!(w.push(&job.unwrap()));
        }
        let spill = w.finish(&path).unwrap();
        spill.file.set_len(20).unwrap();
        let read: Vec<_> = spill.into_jobs().collect();
        assert_eq!(read.len(), 1);
        let e = read[0].as_ref().unwrap_err().to_string();
        assert!(
            e.contains("jobs.jsonl") && e.contains("validated jobs"),
            "{e}"
        );
    }
}
