//! Opening a job file and streaming its jobs. `validate` reads the whole file once, checking
//! every line and every id (a 24-byte entry per id, dropped afterwards), so a bad line anywhere
//! stops the run before anything is sent; for a run it also keeps the jobs it built in a spill
//! (`super::spill`). `JobStream` then reads the spill (or, without one, the job file again) on
//! a plain thread and hands jobs to the async scheduler through a bounded channel: memory does
//! not grow with the file, and the scheduler never blocks on disk.

use super::csv::CsvJobs;
use super::jsonl::JsonlJobs;
use super::keys::KeyMap;
use super::request::JobDefaults;
use super::spill::{Spill, SpillWriter};
use super::{InputError, Job, Location};
use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Default cap on one input line; a longer one is an input error, not an allocation.
pub const DEFAULT_MAX_LINE_BYTES: usize = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    Jsonl,
    Csv,
    Parquet,
}

impl InputFormat {
    /// `.csv` and `.tsv` are CSV, `.parquet` is Parquet; everything else is JSONL.
    pub fn from_path(path: &Path) -> Self {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("csv" | "tsv") => InputFormat::Csv,
            Some("parquet") => InputFormat::Parquet,
            _ => InputFormat::Jsonl,
        }
    }
}

/// Everything needed to read a job file.
#[derive(Debug, Clone)]
pub struct InputSpec {
    pub path: PathBuf,
    pub format: InputFormat,
    /// CSV field delimiter.
    pub delimiter: u8,
    pub defaults: Arc<JobDefaults>,
    pub max_line_bytes: usize,
    /// Only this shard's jobs (problems of every line still reported).
    pub shard: Option<super::shard::Shard>,
}

pub type Jobs = Box<dyn Iterator<Item = Result<Job, InputError>> + Send>;

/// How a job file is read, as plain data: the output's meta keeps it, so `status` can read the
/// job file again exactly as the run did, without the command line or today's environment.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InputSettings {
    /// `jsonl`, `csv` or `parquet`.
    pub format: String,
    pub delimiter: char,
    pub model: Option<String>,
    pub system: Option<String>,
    pub template: Option<String>,
    pub id_field: Option<String>,
    pub params: serde_json::Map<String, serde_json::Value>,
    pub max_line_bytes: usize,
    #[serde(default)]
    pub image_columns: Vec<String>,
    #[serde(default)]
    pub max_image_bytes: u64,
    #[serde(default)]
    pub shard: Option<super::shard::Shard>,
}

impl InputSpec {
    pub fn settings(&self) -> InputSettings {
        let d = &self.defaults;
        InputSettings {
            format: match self.format {
                InputFormat::Jsonl => "jsonl".into(),
                InputFormat::Csv => "csv".into(),
                InputFormat::Parquet => "parquet".into(),
            },
            delimiter: char::from(self.delimiter),
            model: d.model.clone(),
            system: d.system.clone(),
            template: d.template.as_ref().map(|t| t.text().to_string()),
            id_field: d.id_field.clone(),
            params: d.params.clone(),
            max_line_bytes: self.max_line_bytes,
            image_columns: d.image_columns.clone(),
            max_image_bytes: d.max_image_bytes,
            shard: self.shard,
        }
    }

    /// The spec `settings` describe, for the job file at `path`.
    pub fn from_settings(path: PathBuf, s: &InputSettings) -> Result<InputSpec, String> {
        let template = s
            .template
            .as_deref()
            .map(super::Template::parse)
            .transpose()
            .map_err(|e| format!("template: {e}"))?;
        Ok(InputSpec {
            path,
            format: match s.format.as_str() {
                "csv" => InputFormat::Csv,
                "parquet" => InputFormat::Parquet,
                _ => InputFormat::Jsonl,
            },
            delimiter: u8::try_from(s.delimiter).map_err(|_| "delimiter: not one byte")?,
            defaults: Arc::new(JobDefaults {
                model: s.model.clone(),
                system: s.system.clone(),
                template,
                id_field: s.id_field.clone(),
                params: s.params.clone(),
                image_columns: s.image_columns.clone(),
                max_image_bytes: s.max_image_bytes,
                ..Default::default()
            }),
            max_line_bytes: s.max_line_bytes,
            shard: s.shard,
        })
    }
}

impl InputSpec {
    /// Opens the file and returns its jobs in order.
    pub fn open(&self) -> Result<Jobs, InputError> {
        let file = File::open(&self.path).map_err(|source| InputError::Io {
            file: self.path.clone(),
            source,
        })?;
        if self.format == InputFormat::Parquet {
            let jobs: Jobs = Box::new(super::parquet::ParquetJobs::new(
                &self.path,
                file,
                self.defaults.clone(),
            )?);
            return Ok(self.sharded(jobs));
        }
        let reader = BufReader::with_capacity(1 << 16, file);
        let jobs: Jobs = match self.format {
            InputFormat::Jsonl => Box::new(
                JsonlJobs::new(
                    &self.path,
                    reader,
                    self.defaults.clone(),
                    self.max_line_bytes,
                )
                .only(self.shard),
            ),
            InputFormat::Csv | InputFormat::Parquet => Box::new(CsvJobs::new(
                &self.path,
                reader,
                self.defaults.clone(),
                self.delimiter,
            )?),
        };
        Ok(self.sharded(jobs))
    }

    /// Only this shard's jobs, when it is one.
    fn sharded(&self, jobs: Jobs) -> Jobs {
        match self.shard {
            None => jobs,
            // Other shards' jobs are skipped, their problems are not: a bad line anywhere
            // stops every shard before anything is spent.
            Some(shard) => Box::new(jobs.filter(move |j| match j {
                Ok(job) => shard.owns(job.id.as_str()),
                Err(_) => true,
            })),
        }
    }
}

/// The result of reading a whole job file.
#[derive(Debug)]
pub struct Validation {
    /// Jobs that parsed.
    pub jobs: u64,
    /// Problems found, in file order, up to the cap.
    pub errors: Vec<InputError>,
    /// More problems than the cap were found.
    pub more_errors: u64,
    /// Every problem found, those said once for many lines included.
    pub problems: u64,
    /// Every id's hash and line, when asked for (`--prune` needs them).
    pub ids: Option<KeyMap>,
    /// The models the jobs name (a handful, whatever the file's size).
    pub models: BTreeSet<String>,
    /// Jobs that set no `max_tokens` / `max_completion_tokens`.
    pub without_max_tokens: u64,
    /// The jobs as built, for the run to read instead of the job file (when asked for, the
    /// file held no problem and the disk had room).
    pub spill: Option<Spill>,
}

/// What validation does besides checking.
#[derive(Debug, Clone, Copy, Default)]
pub struct Keep<'a> {
    /// Every id's hash and line (`--prune` needs them); 24 bytes an id while it runs.
    pub ids: bool,
    /// The jobs, spilled to a file in this folder (see [`super::spill`]).
    pub jobs_in: Option<&'a Path>,
}

/// Reads every job, checks ids are unique, and collects up to `max_errors` problems; hands
/// back what `keep` asks for.
pub fn validate(spec: &InputSpec, max_errors: usize, keep: Keep) -> Result<Validation, InputError> {
    let mut t = Tally::new(spec, max_errors);
    let mut spill = keep.jobs_in.and_then(SpillWriter::create);
    let mut any_line = false;
    for job in spec.open()? {
        any_line = true;
        match job {
            Ok(job) => {
                if spill.as_mut().is_some_and(|s| !s.push(&job)) {
                    spill = None;
                }
                t.job(job)
            }
            Err(e @ InputError::Io { .. }) => return Err(e),
            Err(e) => {
                spill = None;
                t.problem(e)
            }
        }
    }
    if !any_line {
        return Err(InputError::Empty {
            file: spec.path.clone(),
        });
    }
    t.say_grouped();
    t.constant_prompt(spec);
    t.ids.seal_ordered();
    t.duplicates(spec)?;
    let spill = spill
        .filter(|_| t.errors.is_empty())
        .and_then(|s| s.finish(&spec.path));
    Ok(Validation {
        jobs: t.jobs,
        more_errors: t.problems - t.grouped - t.errors.len() as u64,
        problems: t.problems,
        errors: t.errors,
        spill,
        ids: keep.ids.then_some(t.ids),
        models: t.models,
        without_max_tokens: t.without_max_tokens,
    })
}

/// Jobs whose request (the body as sent, its files included) repeats an earlier job's: what
/// `--dedupe` would not buy. Reads the file once more; a line that does not parse counts as
/// no job.
pub fn duplicate_requests(spec: &InputSpec) -> u64 {
    let Ok(jobs) = spec.open() else { return 0 };
    let mut seen = std::collections::HashSet::new();
    jobs.flatten()
        .filter(|j| !seen.insert(j.fingerprint.0))
        .count() as u64
}

/// What validation has seen so far.
struct Tally {
    max_errors: usize,
    ids: KeyMap,
    errors: Vec<InputError>,
    problems: u64,
    jobs: u64,
    models: BTreeSet<String>,
    without_max_tokens: u64,
    /// The same problem on many lines ("no model" on every row) is one message with its
    /// lines: per message, its error's place, how many lines, the first few.
    same: HashMap<String, (usize, u64, Vec<u64>)>,
    grouped: u64,
    /// The first job's request, and the line of a second job, while every job sends it.
    first: Option<super::Fingerprint>,
    all_same: Option<u64>,
    differ: bool,
}

impl Tally {
    fn new(spec: &InputSpec, max_errors: usize) -> Tally {
        Tally {
            max_errors,
            ids: KeyMap::with_capacity(super::keys::estimate_lines(&spec.path)),
            errors: Vec::new(),
            problems: 0,
            jobs: 0,
            models: BTreeSet::new(),
            without_max_tokens: 0,
            same: HashMap::new(),
            grouped: 0,
            first: None,
            all_same: None,
            differ: false,
        }
    }

    fn job(&mut self, job: super::Job) {
        self.ids.push(job.id.key(), job.line);
        self.jobs += 1;
        match self.first {
            None => self.first = Some(job.fingerprint),
            Some(f) if f == job.fingerprint => {
                self.all_same.get_or_insert(job.line);
            }
            Some(_) => self.differ = true,
        }
        if !self.models.contains(&job.model) {
            self.models.insert(job.model);
        }
        self.without_max_tokens += u64::from(job.max_output_tokens.is_none());
    }

    fn problem(&mut self, e: InputError) {
        self.problems += 1;
        let InputError::Invalid { at, message } = e else {
            if self.errors.len() < self.max_errors {
                self.errors.push(e);
            }
            return;
        };
        if let Some((_, n, lines)) = self.same.get_mut(&message) {
            *n += 1;
            self.grouped += 1;
            if lines.len() < 5 {
                lines.push(at.line);
            }
        } else if self.errors.len() < self.max_errors {
            self.same
                .insert(message.clone(), (self.errors.len(), 1, Vec::new()));
            self.errors.push(InputError::Invalid { at, message });
        }
    }

    /// A problem seen on many lines says on which.
    fn say_grouped(&mut self) {
        for (_, (at, n, lines)) in std::mem::take(&mut self.same) {
            if n < 2 {
                continue;
            }
            if let Some(InputError::Invalid { message, .. }) = self.errors.get_mut(at) {
                let shown: Vec<String> = lines.iter().map(u64::to_string).collect();
                let etc = if n - 1 > lines.len() as u64 {
                    ", ..."
                } else {
                    ""
                };
                *message = format!(
                    "{message} (the same on {} more lines: {}{etc})",
                    n - 1,
                    shown.join(", ")
                );
            }
        }
    }

    /// A template that renders every row to one request (an unset shell variable, a missing
    /// placeholder) buys the same prompt once a row. Jobs that write their own messages may
    /// repeat a prompt on purpose (two ids, two samples).
    fn constant_prompt(&mut self, spec: &InputSpec) {
        let template = spec.defaults.template.as_ref().map(|t| t.text());
        let (false, Some(line), false, Some(t)) = (
            self.differ,
            self.all_same,
            spec.defaults.allow_constant,
            template,
        ) else {
            return;
        };
        self.problems += 1;
        let why = match t {
            "" => " (the template is empty: an unset shell variable?)".to_string(),
            t => format!(" (the template {t:?} has no {{column}} placeholder)"),
        };
        let jobs = self.jobs;
        self.errors.insert(
            0,
            InputError::invalid(
                &spec.path,
                line,
                format!(
                    "all {jobs} jobs send the same request{why}: each would be paid for; fix the template, or pass --allow-constant-prompt to send it {jobs} times"
                ),
            ),
        );
    }

    /// Duplicate ids are rare: their lines are found from the sorted hashes, then the ids'
    /// text is read back from the file only for those lines.
    fn duplicates(&mut self, spec: &InputSpec) -> Result<(), InputError> {
        let repeats: HashMap<u64, u64> = self
            .ids
            .repeats()
            .map(|(_, first, dup)| (dup, first))
            .collect();
        if repeats.is_empty() {
            return Ok(());
        }
        self.jobs -= repeats.len() as u64;
        self.problems += repeats.len() as u64;
        for job in spec.open()?.flatten() {
            let Some(&first_line) = repeats.get(&job.line) else {
                continue;
            };
            if self.errors.len() < self.max_errors {
                self.errors.push(InputError::DuplicateId {
                    at: Location {
                        file: spec.path.clone(),
                        line: job.line,
                        column: None,
                    },
                    id: job.id.to_string(),
                    first_line,
                });
            }
        }
        self.errors.sort_by_key(InputError::line);
        Ok(())
    }
}

/// Jobs flowing from a reader thread to the scheduler, in batches (one channel hand-off per
/// batch, not per job: a resume that skips a million done jobs is bound by parsing, not by
/// thread wake-ups).
pub struct JobStream {
    rx: mpsc::Receiver<Vec<Result<Job, InputError>>>,
    batch: std::vec::IntoIter<Result<Job, InputError>>,
    room: Arc<Room>,
}

const BATCH: usize = 64;

/// Most request-body bytes the reader holds ahead of the run: jobs with a large shared part
/// (a 2 MB schema in every body) cannot fill memory however many fit the job count.
const MAX_AHEAD_BYTES: usize = 64 << 20;

/// The bytes of the jobs read ahead and not taken yet, with a wait for room.
struct Room {
    max: usize,
    held: std::sync::Mutex<Held>,
    freed: std::sync::Condvar,
}

#[derive(Default)]
struct Held {
    bytes: usize,
    closed: bool,
    /// Whether the reader waits for room: a job taken wakes it only then (a wake-up is a
    /// system call whether anyone waits or not, and jobs are taken tens of thousands a
    /// second).
    waiting: bool,
}

impl Room {
    fn new(max: usize) -> Self {
        Room {
            max,
            held: Default::default(),
            freed: Default::default(),
        }
    }

    /// Waits until `bytes` more fit (one batch always fits into an empty room); false once
    /// the stream is gone.
    fn take(&self, bytes: usize) -> bool {
        let mut g = self.lock();
        while !g.closed && g.bytes > 0 && g.bytes + bytes > self.max {
            g.waiting = true;
            g = self.freed.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        g.waiting = false;
        g.bytes += bytes;
        !g.closed
    }

    fn give(&self, bytes: usize) {
        let mut g = self.lock();
        g.bytes = g.bytes.saturating_sub(bytes);
        if g.waiting {
            self.freed.notify_all();
        }
    }

    fn close(&self) {
        self.lock().closed = true;
        self.freed.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn body_bytes(job: &Result<Job, InputError>) -> usize {
    job.as_ref().map_or(0, |j| j.body.len())
}

impl Drop for JobStream {
    fn drop(&mut self) {
        self.room.close();
    }
}

impl JobStream {
    /// Starts the reader thread with room for `capacity` jobs in flight (and at most 64 MB of
    /// their request bodies). It stops when the stream is dropped.
    pub fn spawn(spec: InputSpec, capacity: usize) -> Result<Self, InputError> {
        let jobs = spec.open()?;
        Self::of(jobs, &spec.path, capacity)
    }

    /// [`spawn`](Self::spawn) for jobs read from elsewhere (a spill of `path`'s jobs).
    pub fn of(jobs: Jobs, path: &Path, capacity: usize) -> Result<Self, InputError> {
        let (tx, rx) = mpsc::channel((capacity / BATCH).max(1));
        let room = Arc::new(Room::new(MAX_AHEAD_BYTES));
        let reader_room = room.clone();
        std::thread::Builder::new()
            .name("bulkprompt-reader".into())
            .spawn(move || {
                let mut batch = Vec::with_capacity(BATCH);
                let mut bytes = 0usize;
                for job in jobs {
                    bytes += body_bytes(&job);
                    batch.push(job);
                    if batch.len() == BATCH || bytes >= MAX_AHEAD_BYTES / 16 {
                        let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                        if !reader_room.take(std::mem::take(&mut bytes))
                            || tx.blocking_send(full).is_err()
                        {
                            return;
                        }
                    }
                }
                if !batch.is_empty() && reader_room.take(bytes) {
                    let _ = tx.blocking_send(batch);
                }
            })
            .map_err(|source| InputError::Io {
                file: path.to_path_buf(),
                source,
            })?;
        Ok(JobStream {
            rx,
            batch: Vec::new().into_iter(),
            room,
        })
    }

    /// The next job, or `None` at the end of the file.
    pub async fn next(&mut self) -> Option<Result<Job, InputError>> {
        loop {
            if let Some(job) = self.batch.next() {
                self.room.give(body_bytes(&job));
                return Some(job);
            }
            self.batch = self.rx.recv().await?.into_iter();
        }
    }
}

/// What [`LineReader::next_line`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawLine {
    /// A line; its bytes (without `\n`, `\r\n` or a leading BOM) are in [`LineReader::bytes`].
    Line { line: u64 },
    /// A line over the cap, skipped without being kept in memory.
    TooLong { line: u64, len: u64 },
}

/// Splits a reader into lines with a cap on line length.
pub struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    line: u64,
    max_line: usize,
}

impl<R: BufRead> LineReader<R> {
    pub fn new(inner: R, max_line: usize) -> Self {
        LineReader {
            inner,
            buf: Vec::new(),
            line: 0,
            max_line,
        }
    }

    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// The bytes of the line last returned as [`RawLine::Line`].
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn next_line(&mut self) -> std::io::Result<Option<RawLine>> {
        self.buf.clear();
        let mut len: u64 = 0;
        let mut saw_any = false;
        loop {
            let chunk = self.inner.fill_buf()?;
            if chunk.is_empty() {
                break;
            }
            saw_any = true;
            let (take, done) = match memchr::memchr(b'\n', chunk) {
                Some(i) => (i, true),
                None => (chunk.len(), false),
            };
            len += take as u64;
            if len as usize <= self.max_line {
                self.buf.extend_from_slice(&chunk[..take]);
            }
            self.inner.consume(take + done as usize);
            if done {
                break;
            }
        }
        if !saw_any {
            return Ok(None);
        }
        self.line += 1;
        if len as usize > self.max_line {
            self.buf.clear();
            return Ok(Some(RawLine::TooLong {
                line: self.line,
                len,
            }));
        }
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        if self.line == 1 && self.buf.starts_with(b"\xEF\xBB\xBF") {
            self.buf.drain(..3);
        }
        Ok(Some(RawLine::Line { line: self.line }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reader_holds_no_more_body_bytes_ahead_than_its_room() {
        let room = Arc::new(Room::new(100));
        let ahead = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let reader = {
            let (room, ahead, most) = (room.clone(), ahead.clone(), most.clone());
            std::thread::spawn(move || {
                for _ in 0..50 {
                    assert!(room.take(40));
                    let now = ahead.fetch_add(40, std::sync::atomic::Ordering::SeqCst) + 40;
                    most.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                }
            })
        };
        let mut taken = 0;
        while taken < 50 {
            if ahead.load(std::sync::atomic::Ordering::SeqCst) >= 40 {
                ahead.fetch_sub(40, std::sync::atomic::Ordering::SeqCst);
                room.give(40);
                taken += 1;
            } else {
                std::thread::yield_now();
            }
        }
        reader.join().unwrap();
        assert!(most.load(std::sync::atomic::Ordering::SeqCst) <= 100);
        // One item larger than the room still goes through an empty room, and a closed room
        // never blocks.
        let big = Room::new(10);
        assert!(big.take(500));
        big.close();
        assert!(!big.take(500));
    }

    #[test]
    fn caps_long_lines_without_keeping_them() {
        let text = b"short\n0123456789abcdef\nend";
        let mut r = LineReader::new(&text[..], 8);
        assert_eq!(r.next_line().unwrap(), Some(RawLine::Line { line: 1 }));
        assert_eq!(r.bytes(), b"short");
        assert_eq!(
            r.next_line().unwrap(),
            Some(RawLine::TooLong { line: 2, len: 16 })
        );
        assert_eq!(r.next_line().unwrap(), Some(RawLine::Line { line: 3 }));
        assert_eq!(r.bytes(), b"end");
        assert_eq!(r.next_line().unwrap(), None);
    }
}
