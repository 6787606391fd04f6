//! Jobs: what one line (or CSV row) of a job file turns into, and the streaming sources that
//! produce them. A [`Job`] is fully resolved: its request body is serialized once, its id and
//! fingerprint are fixed, and its token estimates are known, so the scheduler never re-parses.

pub mod csv;
pub mod image;
pub mod jsonl;
pub mod keys;
mod line;
pub mod parquet;
pub mod request;
pub mod shard;
pub mod source;
pub mod spill;
pub mod template;

use serde_json::{Map, Value};
use std::fmt;
use std::path::PathBuf;

pub use source::{InputFormat, InputSpec, JobStream, Jobs};
pub use template::Template;

/// A job's identity as the user wrote it (`id`, `custom_id` or the id column).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct JobId(String);

impl JobId {
    pub fn new(s: impl Into<String>) -> Self {
        JobId(s.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// 128-bit hash of the id: the only per-job state the runner keeps in memory.
    pub fn key(&self) -> IdKey {
        IdKey::of(self.0.as_bytes())
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A 128-bit hash of a job id, stored as two `u64`s so that a map entry keyed by it packs into
/// 24 bytes with an 8-byte value (a `u128` would force 16-byte alignment and 32-byte entries).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct IdKey([u64; 2]);

/// The derived order (the first word, then the second), compared as one number: the derived
/// one walks the array as a slice, and a million ids are sorted, then searched, every run.
impl Ord for IdKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let wide = |k: &IdKey| (u128::from(k.0[0]) << 64) | u128::from(k.0[1]);
        wide(self).cmp(&wide(other))
    }
}

impl PartialOrd for IdKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl IdKey {
    /// 32 hex digits, for stores outside the process (the coordinator's done ids).
    pub fn to_hex(self) -> String {
        format!("{:016x}{:016x}", self.0[0], self.0[1])
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 32 {
            return None;
        }
        let a = u64::from_str_radix(&s[..16], 16).ok()?;
        let b = u64::from_str_radix(&s[16..], 16).ok()?;
        Some(IdKey([a, b]))
    }

    pub fn of(bytes: &[u8]) -> Self {
        let h = xxhash_rust::xxh3::xxh3_128(bytes);
        IdKey([h as u64, (h >> 64) as u64])
    }
}

/// Hash of the exact request body sent to the provider. Keys are sorted (serde_json's default
/// map), so reordering keys in the job file does not change it; any change of value does.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub u128);

impl Fingerprint {
    pub fn of(body: &[u8]) -> Self {
        Fingerprint(xxhash_rust::xxh3::xxh3_128(body))
    }
    /// The body's fingerprint, with the hashes of the files it will carry.
    pub fn with_files(body: &[u8], files: &[u128]) -> Self {
        if files.is_empty() {
            return Self::of(body);
        }
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(body);
        for f in files {
            h.update(&f.to_le_bytes());
        }
        Fingerprint(h.digest128())
    }
    pub fn parse(s: &str) -> Option<Self> {
        u128::from_str_radix(s, 16).ok().map(Fingerprint)
    }
    /// 64 bits are plenty to notice that a given id's request changed.
    pub fn short(self) -> u64 {
        self.0 as u64
    }
}

impl Fingerprint {
    /// 32 hex digits, as `{:032x}` writes them (a record each: without the formatter's
    /// padding machinery, in a string of its size).
    pub fn hex(&self) -> String {
        // Hex digits only.
        String::from_utf8(self.digits().to_vec()).unwrap_or_default()
    }

    fn digits(&self) -> [u8; 32] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut hex = [0u8; 32];
        for (half, word) in hex
            .chunks_exact_mut(16)
            .zip([(self.0 >> 64) as u64, self.0 as u64])
        {
            for (i, d) in half.iter_mut().enumerate() {
                *d = DIGITS[((word >> (60 - 4 * i)) & 0xf) as usize];
            }
        }
        hex
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(&self.digits()).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `--dedupe`: which jobs may share an answer with another job of the same request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dedupe {
    /// Requests that ask for the same answer every time: no `temperature` above 0, or a `seed`.
    Deterministic,
    /// Every request, samples included.
    Always,
}

impl Dedupe {
    /// Whether `job` may be answered with another job's answer to the same request.
    pub fn applies(self, job: &Job) -> bool {
        #[derive(serde::Deserialize)]
        struct Sampling {
            temperature: Option<f64>,
            seed: Option<serde::de::IgnoredAny>,
        }
        match self {
            Dedupe::Always => true,
            Dedupe::Deterministic => match serde_json::from_slice::<Sampling>(&job.body) {
                Ok(s) => s.seed.is_some() || s.temperature.is_none_or(|t| t <= 0.0),
                Err(_) => false,
            },
        }
    }
}

/// One request to make, ready to send.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: JobId,
    /// 0-based position among the file's jobs.
    pub index: u64,
    /// 1-based line of the file where the job starts (for messages).
    pub line: u64,
    pub model: String,
    /// The serialized chat-completions request body.
    pub body: bytes::Bytes,
    pub fingerprint: Fingerprint,
    pub metadata: Map<String, Value>,
    /// Estimated prompt tokens (about four characters a token), for the token bucket.
    pub est_prompt_tokens: u32,
    /// `max_tokens` / `max_completion_tokens` of the request, if it names one.
    pub max_output_tokens: Option<u32>,
    /// Choices asked for (`n`, 1 when not given): each is billed its own output.
    pub choices: u32,
    /// Images in the messages (`image_url` parts), for per-image prices.
    pub images: u32,
    /// What its answers must be (its `response_format`).
    pub expect: crate::answer::Expect,
    /// Local images, embedded into `body` when the job is sent.
    pub image_files: Vec<image::ImageFile>,
}

/// Where an input problem is: file, line and, where known, column or field.
#[derive(Debug, Clone)]
pub struct Location {
    pub file: PathBuf,
    pub line: u64,
    pub column: Option<u64>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)?;
        if let Some(c) = self.column {
            write!(f, ":{c}")?;
        }
        Ok(())
    }
}

/// A problem with the job file. Every variant names where it is.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The file could not be opened or read.
    #[error("{file}: {source}")]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A line or row is not what a job file may hold.
    #[error("{at}: {message}")]
    Invalid { at: Location, message: String },
    /// Two jobs share an id.
    #[error("{at}: duplicate id {id:?} (first used on line {first_line})")]
    DuplicateId {
        at: Location,
        id: String,
        first_line: u64,
    },
    /// The file holds no jobs at all.
    #[error("{file}: the job file holds no jobs")]
    Empty { file: PathBuf },
}

impl InputError {
    /// The line a problem is on (0 when it is about the whole file).
    pub fn line(&self) -> u64 {
        match self {
            InputError::Invalid { at, .. } | InputError::DuplicateId { at, .. } => at.line,
            InputError::Io { .. } | InputError::Empty { .. } => 0,
        }
    }

    pub fn invalid(file: &std::path::Path, line: u64, message: impl Into<String>) -> Self {
        InputError::Invalid {
            at: Location {
                file: file.to_path_buf(),
                line,
                column: None,
            },
            message: message.into(),
        }
    }
}

/// Rough token count of a text: about four characters a token, the rule of thumb providers
/// quote for English. `estimate` (issue 5) uses a real tokenizer; the limiter only needs this.
pub fn approx_tokens(chars: usize) -> u32 {
    chars.div_ceil(4).min(u32::MAX as usize) as u32
}

#[cfg(test)]
mod tests {
    use super::{Fingerprint, IdKey};

    #[test]
    fn id_keys_order_as_their_words_do() {
        let words = [0, 1, u64::MAX / 2, u64::MAX / 2 + 1, u64::MAX];
        for a in words {
            for b in words {
                for c in words {
                    for d in words {
                        assert_eq!(IdKey([a, b]).cmp(&IdKey([c, d])), [a, b].cmp(&[c, d]));
                    }
                }
            }
        }
    }

    #[test]
    fn a_fingerprint_is_written_as_32_hex_digits() {
        let mut x: u128 = 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834;
        let mut all = vec![0, 1, 0xf, u128::MAX, 1 << 127, u128::MAX >> 4];
        for _ in 0..1000 {
            x = x.rotate_left(17).wrapping_mul(0x2545_f491_4f6c_dd1d) ^ (x >> 64);
            all.push(x);
            all.push(x >> (x % 128));
        }
        for v in all {
            assert_eq!(Fingerprint(v).to_string(), format!("{v:032x}"));
            assert_eq!(
                Fingerprint::parse(&Fingerprint(v).to_string()),
                Some(Fingerprint(v))
            );
        }
    }
}
