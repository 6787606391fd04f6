//! A JSONL job line of the usual shape read in one pass ([`crate::json_scan`]): an object with
//! an `id`, a `model`, `messages` whose every message is a `role` and a string `content`, and
//! any request parameters, in a run that adds nothing to it (no `--system`, no parameters, the
//! id in `id`). Its body is written from the line's own text, keys sorted and strings copied
//! whole, byte for byte as [`super::request::finish`] writes it through a `serde_json::Map`,
//! without building the map: on a file of short prompts the map was half of validation's
//! time. Anything else (a batch line, a plain record, `n`, `stream`, `response_format`, images,
//! a message of another shape, an escape this reading does not decode, a key twice, any
//! error) gives None, and the line is read as before: every message about a bad line is that
//! reading's.

use super::request::{expect_of, JobDefaults};
use super::shard::Shard;
use super::{approx_tokens, Fingerprint, Job, JobId};
use crate::json_scan::Scan;
use serde_json::Map;
use std::borrow::Cow;

/// What the one-pass reading made of a line.
// The job goes on by value, as the general reading's does: boxed, it would cost an allocation
// a line for a variant that holds nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum Read {
    /// The line's job.
    Job(Job),
    /// A job of another shard: checked as a job would be, its body never written.
    Elsewhere,
}

/// The job on line `line` (the file's `index`-th), or None for the general reading. `scratch`
/// is a buffer kept from line to line (a line's values are written into it first); with a
/// `shard`, a job of another one is checked and not built.
pub(super) fn job(
    d: &JobDefaults,
    text: &str,
    at: (u64, u64),
    scratch: &mut Vec<u8>,
    shard: Option<Shard>,
) -> Option<Read> {
    // A template run's lines are plain records; the run's additions are the general
    // reading's to make.
    if !d.params.is_empty() || d.system.is_some() || d.id_field.is_some() || d.template.is_some() {
        return None;
    }
    let mut l = Line {
        values: std::mem::take(scratch),
        shard,
        ..Line::default()
    };
    l.values.clear();
    let read = l.read(d, text, at);
    *scratch = l.values;
    read
}

/// What a line holds, as it is read.
#[derive(Default)]
struct Line<'a> {
    /// The id's text (a string's or a number's), made a [`JobId`] only for a job built.
    id: Option<&'a str>,
    model: Option<&'a str>,
    /// The characters of the messages' token estimate; None until they are read.
    chars: Option<usize>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    metadata: Option<&'a str>,
    /// The body's members (but `model` when the run gives it), each as the body writes it:
    /// its key and where its value is in `values`.
    body: Vec<(&'a str, std::ops::Range<usize>)>,
    values: Vec<u8>,
    /// The shard this reading builds jobs for, if any.
    shard: Option<Shard>,
    /// The line's id is another shard's: what follows is checked as it would be for a job and
    /// nothing is written (no value, no token estimate, no key order).
    elsewhere: bool,
}

impl<'a> Line<'a> {
    /// Where the line's values go: nowhere for another shard's line.
    fn out(&mut self) -> Option<&mut Vec<u8>> {
        (!self.elsewhere).then_some(&mut self.values)
    }

    fn member(&mut self, s: &mut Scan<'a>, key: &'a str) -> Option<()> {
        let start = self.values.len();
        // A key named twice: `id` and `metadata` here, the body's keys at the end.
        match key {
            "id" if self.id.is_none() => {
                let id = id(s)?;
                self.id = Some(id);
                self.elsewhere = self.shard.is_some_and(|shard| !shard.owns(id));
                return Some(());
            }
            "metadata" if self.metadata.is_none() => {
                return s.raw().map(|raw| self.metadata = Some(raw))
            }
            "id" | "metadata" => return None,
            "model" => {
                let model = plain_string(s).filter(|m| !m.is_empty())?;
                self.model = Some(model);
                if let Some(out) = self.out() {
                    quoted(out, model);
                }
            }
            "messages" => {
                let chars = messages(s, self.out())?;
                self.chars = Some(chars);
            }
            "max_tokens" | "max_completion_tokens" => {
                let raw = s.raw()?;
                let n = whole(raw)?;
                match key {
                    "max_tokens" => self.max_tokens = Some(n),
                    _ => self.max_completion_tokens = Some(n),
                }
                if let Some(out) = self.out() {
                    out.extend_from_slice(raw.as_bytes());
                }
            }
            // What the general reading gives a meaning to, beyond copying it.
            "custom_id" | "n" | "stream" | "response_format" => return None,
            _ => {
                let v = super::jsonl::strict_value(s.raw()?).ok()?;
                if let Some(out) = self.out() {
                    crate::json_write::value(out, &v).ok()?;
                }
            }
        }
        self.body.push((key, start..self.values.len()));
        Some(())
    }

    fn read(&mut self, d: &JobDefaults, text: &'a str, at: (u64, u64)) -> Option<Read> {
        let mut s = Scan::new(text);
        s.object(|s, key| self.member(s, key))?;
        if !s.at_end() {
            return None;
        }
        self.checked_job(d, at)
    }

    /// The job the line holds, checked whole before it is built (a job of another shard is
    /// only checked).
    fn checked_job(&mut self, d: &JobDefaults, (index, line): (u64, u64)) -> Option<Read> {
        let chars = self.chars?;
        let model: &str = match self.model {
            Some(m) => m,
            None => {
                let m = d.model.as_deref()?;
                let start = self.values.len();
                if let Some(out) = self.out() {
                    crate::json_write::string(out, m).ok()?;
                }
                self.body.push(("model", start..self.values.len()));
                m
            }
        };
        let metadata = match self.metadata {
            None => Map::new(),
            Some(raw) => match super::jsonl::strict_value(raw).ok()? {
                serde_json::Value::Object(m) => m,
                _ => return None,
            },
        };
        if self.repeats_a_key() {
            return None;
        }
        let id = match self.id {
            Some(id) => Cow::Borrowed(id),
            None => Cow::Owned((index + 1).to_string()),
        };
        // An id on the line told its shard when it was read; a place's is told here.
        self.elsewhere |= self.id.is_none() && self.shard.is_some_and(|s| !s.owns(&id));
        if self.elsewhere {
            return Some(Read::Elsewhere);
        }
        // The run's own (this reading runs only without default parameters): the same for
        // every line, never refused here.
        let expect = expect_of(d, &Map::new()).ok()?;
        let body = self.body_bytes();
        Some(Read::Job(Job {
            id: JobId::new(id),
            index,
            line,
            model: model.to_owned(),
            fingerprint: Fingerprint::of(&body),
            body: body.into(),
            metadata,
            est_prompt_tokens: approx_tokens(chars),
            max_output_tokens: self
                .max_completion_tokens
                .or(self.max_tokens)
                .map(|n| n.min(u64::from(u32::MAX)) as u32),
            choices: 1,
            images: 0,
            expect,
            image_files: Vec::new(),
        }))
    }

    /// Whether a body's key is there twice. A job's keys are sorted for its body and compared
    /// side by side; another shard's few are compared each with each (a long list is sorted).
    fn repeats_a_key(&mut self) -> bool {
        let keys = &mut self.body;
        if self.elsewhere && keys.len() <= 16 {
            return (1..keys.len()).any(|i| keys[..i].iter().any(|k| k.0 == keys[i].0));
        }
        keys.sort_unstable_by(|a, b| a.0.cmp(b.0));
        keys.windows(2).any(|w| w[0].0 == w[1].0)
    }

    /// The body: its members in key order.
    fn body_bytes(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.values.len() + 16 * self.body.len());
        for (i, (key, value)) in self.body.iter().enumerate() {
            body.push(if i == 0 { b'{' } else { b',' });
            quoted(&mut body, key);
            body.push(b':');
            body.extend_from_slice(&self.values[value.clone()]);
        }
        body.push(b'}');
        body
    }
}

/// A string without escapes (one with an escape is left to the general reading), or None.
fn plain_string<'a>(s: &mut Scan<'a>) -> Option<&'a str> {
    if s.peek()? != b'"' {
        return None;
    }
    s.key()
}

/// `"text"`, for text that needs no escaping.
fn quoted(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    out.extend_from_slice(text.as_bytes());
    out.push(b'"');
}

/// A whole number as serde_json reads it into a `u64`: digits only (the scan has refused a
/// leading zero), no more than fit.
fn whole(raw: &str) -> Option<u64> {
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse().ok()
}

/// The id: a non-empty string without escapes, or a whole number.
fn id<'a>(s: &mut Scan<'a>) -> Option<&'a str> {
    if s.peek()? == b'"' {
        return plain_string(s).filter(|i| !i.is_empty());
    }
    let raw = s.raw()?;
    whole(raw)?;
    Some(raw)
}

/// The messages written into `out` as the body writes them (each
/// `{"content":...,"role":...}`); the characters the token estimate counts (each message's
/// content and 16). Without `out` (another shard's line) they are only checked, and count 0.
fn messages(s: &mut Scan<'_>, mut out: Option<&mut Vec<u8>>) -> Option<usize> {
    if let Some(out) = out.as_deref_mut() {
        out.push(b'[');
    }
    let (mut count, mut chars) = (0, 0);
    s.array(|s| {
        let (mut role, mut content) = (None, None);
        s.object(|s, key| match key {
            "role" if role.is_none() => {
                role = Some(plain_string(s)?);
                Some(())
            }
            "content" if content.is_none() && s.peek()? == b'"' => {
                content = Some(s.text()?);
                Some(())
            }
            _ => None,
        })?;
        let (role, content) = (role?, content?);
        count += 1;
        let Some(out) = out.as_deref_mut() else {
            return Some(());
        };
        if count > 1 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"content\":");
        match &content {
            // No escape, no quote, no control character (the scan refuses them raw): what
            // the body's writer would write, copied.
            Cow::Borrowed(text) => quoted(out, text),
            Cow::Owned(text) => crate::json_write::string(out, text).ok()?,
        }
        out.extend_from_slice(b",\"role\":");
        quoted(out, role);
        out.push(b'}');
        chars += content.chars().count() + 16;
        Some(())
    })?;
    if count == 0 {
        return None;
    }
    if let Some(out) = out {
        out.push(b']');
    }
    Some(chars)
}
