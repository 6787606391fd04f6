//! JSONL job files. Each non-blank line is one of three shapes:
//! an OpenAI Batch API line (`custom_id`, `method`, `url`, `body`), a chat request with an id
//! (`messages` present), or a plain record rendered through the template. A UTF-8 BOM, CRLF line
//! endings, blank lines and a last line without a newline are accepted as users write them.

use super::line::Read;
use super::request::{finish, id_from_value, kind, JobDefaults};
use super::shard::Shard;
use super::source::{LineReader, RawLine};
use super::{InputError, Job, JobId, Location};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// Streams jobs from a JSONL reader.
pub struct JsonlJobs<R> {
    file: PathBuf,
    lines: LineReader<R>,
    defaults: std::sync::Arc<JobDefaults>,
    index: u64,
    /// The one-pass reading's buffer, kept from line to line.
    scratch: Vec<u8>,
    /// Only this shard's jobs are built (the others' lines are still checked).
    shard: Option<Shard>,
}

impl<R: BufRead> JsonlJobs<R> {
    pub fn new(
        file: &Path,
        reader: R,
        defaults: std::sync::Arc<JobDefaults>,
        max_line: usize,
    ) -> Self {
        JsonlJobs {
            file: file.to_path_buf(),
            lines: LineReader::new(reader, max_line),
            defaults,
            index: 0,
            scratch: Vec::new(),
            shard: None,
        }
    }

    /// Builds only `shard`'s jobs, when there is one: a line of another shard in the usual
    /// shape is checked in its one pass and not built. Jobs of other shards read the general
    /// way still come out (the caller filters them too).
    pub fn only(mut self, shard: Option<Shard>) -> Self {
        self.shard = shard;
        self
    }

    fn err(&self, line: u64, column: Option<u64>, message: String) -> InputError {
        InputError::Invalid {
            at: Location {
                file: self.file.clone(),
                line,
                column,
            },
            message,
        }
    }

    fn general(&self, line_no: u64, text: &str) -> Result<Job, InputError> {
        let value: Value = strict_value(text).map_err(|e| {
            self.err(
                line_no,
                Some(e.column() as u64),
                match e.classify() {
                    serde_json::error::Category::Data => json_reason(&e),
                    _ => format!("malformed JSON: {}", json_reason(&e)),
                },
            )
        })?;
        let Value::Object(mut obj) = value else {
            return Err(self.err(
                line_no,
                None,
                format!("expected a JSON object, found {}", kind(&value)),
            ));
        };
        let d = &*self.defaults;
        let at = |m: String| self.err(line_no, None, m);
        let (id, body, metadata, attached) = if obj.contains_key("custom_id") {
            let (id, body, metadata) = batch_line(obj).map_err(at)?;
            (id, body, metadata, Default::default())
        } else if obj.contains_key("messages") {
            let id = take_id(&mut obj, d, self.index).map_err(at)?;
            let metadata = match obj.remove("metadata") {
                Some(Value::Object(m)) => m,
                None => Map::new(),
                Some(other) => {
                    return Err(at(format!(
                        "field \"metadata\": expected an object, found {}",
                        kind(&other)
                    )))
                }
            };
            (id, obj, metadata, Default::default())
        } else {
            let Some(template) = &d.template else {
                return Err(at(
                    "no \"messages\" and no --template to build them from a plain record".into(),
                ));
            };
            let id = take_id(&mut obj, d, self.index).map_err(at)?;
            let prompt = template
                .render(|f| obj.get(f).map(value_text))
                .map_err(|f| {
                    at(format!(
                        "template field {{{f}}}: no such field in this record"
                    ))
                })?;
            let used = template.fields();
            let metadata: Map<String, Value> = obj
                .into_iter()
                .filter(|(k, _)| !used.contains(k.as_str()))
                .collect();
            let base = self.file.parent().unwrap_or(Path::new(""));
            let attached = d
                .attach(base, |name| match metadata.get(name) {
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(Value::Null) | None => None,
                    Some(other) => Some(other.to_string()),
                })
                .map_err(at)?;
            let mut body = Map::new();
            body.insert("messages".into(), d.templated_messages(prompt, &attached));
            (id, body, metadata, attached)
        };
        finish(d, id, self.index, line_no, body, metadata, attached).map_err(at)
    }
}

/// Parses a JSON value like `serde_json::from_str`, but refuses an object with a repeated key
/// (`{"id":"a","id":"b"}`), which serde_json would resolve silently by keeping the last.
pub fn strict_value(text: &str) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let v = serde::Deserializer::deserialize_any(&mut de, StrictVisitor)?;
    de.end()?;
    Ok(v)
}

struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(Strict(x)) = seq.next_element()? {
            v.push(x);
        }
        Ok(Value::Array(v))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut m = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            if m.contains_key(&k) {
                return Err(serde::de::Error::custom(format_args!(
                    "the key {k:?} appears twice in one object"
                )));
            }
            let Strict(v) = map.next_value()?;
            m.insert(k, v);
        }
        Ok(Value::Object(m))
    }
}

/// serde_json's message without its " at line L column C" (the location is given already).
pub fn json_reason(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// A template value: strings verbatim, everything else as its JSON text, null as nothing.
pub fn value_text(v: &Value) -> Cow<'_, str> {
    match v {
        Value::String(s) => Cow::Borrowed(s),
        Value::Null => Cow::Borrowed(""),
        other => Cow::Owned(other.to_string()),
    }
}

fn take_id(obj: &mut Map<String, Value>, d: &JobDefaults, index: u64) -> Result<JobId, String> {
    let field = d.id_field();
    match obj.remove(field) {
        Some(v) => id_from_value(&v).map_err(|e| format!("field \"{field}\": {e}")),
        None if d.id_field.is_some() => {
            Err(format!("field \"{field}\": missing (named by --id-column)"))
        }
        // No id at all: the job's 1-based position. Stable only while lines are not inserted
        // above it, which is why the README asks for explicit ids.
        None => Ok(JobId::new((index + 1).to_string())),
    }
}

type Parts = (JobId, Map<String, Value>, Map<String, Value>);

fn batch_line(mut obj: Map<String, Value>) -> Result<Parts, String> {
    let id = id_from_value(&obj.remove("custom_id").unwrap_or(Value::Null))
        .map_err(|e| format!("field \"custom_id\": {e}"))?;
    match obj.remove("method") {
        None => {}
        Some(Value::String(m)) if m.eq_ignore_ascii_case("POST") => {}
        Some(other) => {
            return Err(format!(
                "field \"method\": only POST is supported, found {other}"
            ))
        }
    }
    match obj.remove("url") {
        None => {}
        Some(Value::String(u)) if u == "/v1/chat/completions" || u == "/chat/completions" => {}
        Some(other) => {
            return Err(format!(
                "field \"url\": only /v1/chat/completions is supported, found {other}"
            ))
        }
    }
    let body = match obj.remove("body") {
        Some(Value::Object(b)) => b,
        Some(other) => {
            return Err(format!(
                "field \"body\": expected an object, found {}",
                kind(&other)
            ))
        }
        None => return Err("field \"body\": missing".into()),
    };
    // Anything else on a batch line travels with the result.
    Ok((id, body, obj))
}

impl<R: BufRead> Iterator for JsonlJobs<R> {
    type Item = Result<Job, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let raw = match self.lines.next_line() {
                Ok(Some(raw)) => raw,
                Ok(None) => return None,
                Err(source) => {
                    return Some(Err(InputError::Io {
                        file: self.file.clone(),
                        source,
                    }))
                }
            };
            let line_no = match raw {
                RawLine::TooLong { line, len } => {
                    self.index += 1;
                    let cap = self.lines.max_line();
                    return Some(Err(self.err(line, None, format!(
                        "line is {len} bytes, over the {cap}-byte limit (raise it with --max-line-bytes)"
                    ))));
                }
                RawLine::Line { line } => line,
            };
            let text = match std::str::from_utf8(self.lines.bytes()) {
                Ok(t) => t,
                Err(e) => {
                    let column = e.valid_up_to() as u64 + 1;
                    self.index += 1;
                    return Some(Err(self.err(line_no, Some(column), "invalid UTF-8".into())));
                }
            };
            if text.trim().is_empty() {
                continue;
            }
            // In one pass when the line has the usual shape ([`super::line`]), else through a
            // `serde_json::Map`.
            let at = (self.index, line_no);
            let job =
                match super::line::job(&self.defaults, text, at, &mut self.scratch, self.shard) {
                    Some(Read::Job(job)) => Some(Ok(job)),
                    Some(Read::Elsewhere) => None,
                    None => Some(self.general(line_no, text)),
                };
            self.index += 1;
            if job.is_some() {
                return job;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Template;
    use std::sync::Arc;

    fn jobs(text: &[u8], d: JobDefaults) -> Vec<Result<Job, String>> {
        JsonlJobs::new(Path::new("t.jsonl"), text, Arc::new(d), 1 << 20)
            .map(|r| r.map_err(|e| e.to_string()))
            .collect()
    }

    fn model() -> JobDefaults {
        JobDefaults {
            model: Some("m".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_shards_reading_builds_its_own_jobs_and_finds_every_lines_problems() {
        // Lines of the usual shape (some without an id, which take their place's), one with
        // an escape (the general reading), and problems: metadata not an object, a repeated
        // key (the id; a body's key), no messages, bad JSON, a message of another shape.
        let mut text = String::new();
        for i in 0..40 {
            match i % 10 {
                3 => text.push_str("{\"messages\":[{\"role\":\"user\",\"content\":\"no id\"}]}\n"),
                4 => text.push_str(&format!("{{\"id\":\"t{i}\",\"metadata\":5,\"messages\":[{{\"role\":\"user\",\"content\":\"x\"}}]}}\n")),
                6 => text.push_str(&format!("{{\"id\":\"u{i}\",\"seed\":1,\"seed\":2,\"messages\":[{{\"role\":\"user\",\"content\":\"x\"}}]}}\n")),
                5 => text.push_str(&format!("{{\"id\":\"e{i}\",\"messages\":[{{\"role\":\"user\",\"content\":\"a\\n\"}}]}}\n")),
                7 => text.push_str(&format!("{{\"id\":\"r{i}\",\"id\":\"s{i}\",\"messages\":[{{\"role\":\"user\",\"content\":\"x\"}}]}}\n")),
                8 => text.push_str(&format!("{{\"id\":\"n{i}\"}}\n{{\"id\":\"b{i}\",\n")),
                9 => text.push_str(&format!("{{\"id\":\"m{i}\",\"messages\":[{{\"role\":\"user\",\"content\":1}}]}}\n")),
                _ => text.push_str(&format!("{{\"id\":\"j{i}\",\"max_tokens\":5,\"messages\":[{{\"role\":\"user\",\"content\":\"job {i}\"}}]}}\n")),
            }
        }
        let all = jobs(text.as_bytes(), model());
        let problems = |v: &[Result<Job, String>]| -> Vec<String> {
            v.iter().filter_map(|r| r.clone().err()).collect()
        };
        assert_eq!(problems(&all).len(), 24, "{:?}", problems(&all));
        for index in 0..3 {
            let shard = Shard { index, count: 3 };
            let read: Vec<_> = JsonlJobs::new(
                Path::new("t.jsonl"),
                text.as_bytes(),
                Arc::new(model()),
                1 << 20,
            )
            .only(Some(shard))
            .map(|r| r.map_err(|e| e.to_string()))
            .filter(|r| r.as_ref().map_or(true, |j| shard.owns(j.id.as_str())))
            .collect();
            let expected: Vec<_> = all
                .iter()
                .filter(|r| r.as_ref().map_or(true, |j| shard.owns(j.id.as_str())))
                .collect();
            assert_eq!(
                format!("{read:?}"),
                format!("{expected:?}"),
                "shard {index}"
            );
        }
    }

    #[test]
    fn a_repeated_key_is_an_error_at_any_depth() {
        let out = jobs(
            concat!(
                "{\"id\":\"a\",\"id\":\"b\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}\n",
                "{\"id\":\"c\",\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"content\":\"y\"}]}\n",
                "{\"id\":\"d\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"seed\":1.5}\n",
            )
            .as_bytes(),
            model(),
        );
        let e = out[0].as_ref().unwrap_err();
        assert!(
            e.starts_with("t.jsonl:1:") && e.contains("the key \"id\" appears twice"),
            "{e}"
        );
        let e = out[1].as_ref().unwrap_err();
        assert!(
            e.starts_with("t.jsonl:2:") && e.contains("\"content\" appears twice"),
            "{e}"
        );
        assert!(out[2].is_ok());
    }

    #[test]
    fn reads_all_three_shapes() {
        let text = concat!(
            "{\"custom_id\": \"b1\", \"method\": \"POST\", \"url\": \"/v1/chat/completions\", \"body\": {\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}}\n",
            "{\"id\": 7, \"messages\": [{\"role\": \"user\", \"content\": \"y\"}], \"metadata\": {\"k\": 1}, \"logit_bias\": {}}\n",
            "{\"id\": \"p\", \"text\": \"hello\", \"lang\": \"en\"}\n",
        );
        let d = JobDefaults {
            template: Some(Template::parse("Say: {text}").unwrap()),
            ..model()
        };
        let out: Vec<Job> = jobs(text.as_bytes(), d)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            out.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
            ["b1", "7", "p"]
        );
        assert_eq!(out[1].metadata["k"], 1);
        let body: Value = serde_json::from_slice(&out[1].body).unwrap();
        assert!(
            body.get("logit_bias").is_some(),
            "unknown fields pass through"
        );
        assert!(body.get("id").is_none() && body.get("metadata").is_none());
        let body: Value = serde_json::from_slice(&out[2].body).unwrap();
        assert_eq!(body["messages"][0]["content"], "Say: hello");
        assert_eq!(out[2].metadata["lang"], "en");
        assert_eq!(out[2].index, 2);
    }

    #[test]
    fn bom_crlf_blank_lines_and_no_final_newline() {
        let text = b"\xEF\xBB\xBF{\"id\":\"a\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}\r\n\r\n\n{\"id\":\"b\",\"messages\":[{\"role\":\"user\",\"content\":\"y\"}]}";
        let out = jobs(text, model());
        assert_eq!(out.len(), 2);
        let b = out[1].as_ref().unwrap();
        assert_eq!((b.id.as_str(), b.line, b.index), ("b", 4, 1));
    }

    #[test]
    fn errors_carry_line_and_column() {
        let text = b"{\"id\":\"a\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}\n{\"id\": oops}\n[1]\n{\"id\":\"c\",\"text\":\"\xff\"}\n";
        let out = jobs(text, model());
        assert!(
            out[1]
                .as_ref()
                .unwrap_err()
                .starts_with("t.jsonl:2:8: malformed JSON"),
            "{:?}",
            out[1]
        );
        assert!(out[2]
            .as_ref()
            .unwrap_err()
            .contains("t.jsonl:3: expected a JSON object, found an array"));
        assert!(
            out[3]
                .as_ref()
                .unwrap_err()
                .starts_with("t.jsonl:4:19: invalid UTF-8"),
            "{:?}",
            out[3]
        );
    }

    #[test]
    fn batch_lines_must_target_chat_completions() {
        let text = b"{\"custom_id\":\"a\",\"url\":\"/v1/embeddings\",\"body\":{}}\n";
        assert!(jobs(text, model())[0]
            .as_ref()
            .unwrap_err()
            .contains("only /v1/chat/completions"));
    }

    #[test]
    fn template_field_missing_is_an_error() {
        let d = JobDefaults {
            template: Some(Template::parse("{body}").unwrap()),
            ..model()
        };
        let out = jobs(b"{\"id\":\"a\",\"text\":\"x\"}\n", d);
        assert!(out[0]
            .as_ref()
            .unwrap_err()
            .contains("template field {body}"));
    }

    /// Lines of the usual shape, which the one-pass reading must read itself (`true`), and
    /// lines it must leave to the general reading; under a run that gives the model `m`.
    const LINES: &[(bool, &str)] = &[
        (true, r#"{"id":"j0","model":"google/gemini-2.0-flash-001","max_tokens":40,"messages":[{"role":"user","content":"Classify review 0: The product arrived on time, works as described and the battery lasts all day."}]}"#),
        (true, r#"{"id":17,"messages":[{"role":"system","content":"Be brief.\n"},{"content":"caf\u00e9 \"q\" 日本 \\ \/ \t\u0001","role":"user"}],"temperature":0.70,"stop":["\n","END"],"metadata":{"b":1,"a":[2,{"z":null}]},"top_p":1e0,"seed":-3}"#),
        (true, r#"{"model":"x","messages":[{"role":"user","content":""}],"max_completion_tokens":5,"max_tokens":9}"#),
        (true, " { \"id\" : \"a b\" , \"messages\" : [ { \"role\" : \"user\" , \"content\" : \"hi\" } ] , \"model\" : \"m2\" }\t"),
        (true, r#"{"messages":[{"role":"user","content":"id last"}],"seed":7,"id":"last"}"#),
        (true, r#"{"id":"t","messages":[{"role":"user","content":"x"},{"role":"assistant","content":"y"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{}}}}],"logit_bias":{"50256":-100},"user":"u-1","max_tokens":0}"#),
        (false, r#"{"custom_id":"a","body":{"messages":[{"role":"user","content":"x"}]}}"#),
        (false, r#"{"id":"a","n":2,"messages":[{"role":"user","content":"x"}]}"#),
        (false, r#"{"id":"a","stream":true,"messages":[{"role":"user","content":"x"}]}"#),
        (false, r#"{"id":"a","response_format":{"type":"json_object"},"messages":[{"role":"user","content":"x"}]}"#),
        (false, r#"{"id":"a","messages":[{"role":"user","content":[{"type":"text","text":"x"}]}]}"#),
        (false, r#"{"id":"a","messages":[{"role":"assistant","content":null,"tool_calls":[]}]}"#),
        (false, r#"{"id":"a","messages":[{"role":"user","name":"n","content":"x"}]}"#),
        (false, r#"{"id":"j\u0031","messages":[{"role":"user","content":"x"}]}"#),
        (false, r#"{"id":"a","messages":[{"role":"user","content":"\ud83d\ude00"}]}"#),
        (false, r#"{"id":"a","model":"","messages":[{"role":"user","content":"x"}]}"#),
        (false, r#"{"id":"","messages":[{"role":"user","content":"x"}]}"#),
        (false, r#"{"id":"a","id":"b","messages":[{"role":"user","content":"x"}]}"#),
        (false, r#"{"id":"a","model":"x","temperature":1,"temperature":2,"messages":[{"role":"user","content":"x"}]}"#),
        (false, r#"{"metadata":{},"id":"a","metadata":{},"messages":[{"role":"user","content":"x"}]}"#),
        (false, r#"{"id":"a","messages":[{"role":"user","role":"user","content":"x"}]}"#),
        (false, r#"{"id":"a","max_tokens":-1,"messages":[{"role":"user","content":"x"}]}"#),
        (false, r#"{"id":"a","max_tokens":1.5,"messages":[{"role":"user","content":"x"}]}"#),
        (false, r#"{"id":"a","metadata":"x","messages":[{"role":"user","content":"x"}]}"#),
        (false, r#"{"id":"a","x":{"a":1,"a":2},"messages":[{"role":"user","content":"x"}]}"#),
        (false, r#"{"id":"a","model":5,"messages":[{"role":"user","content":"x"}]}"#),
        (false, r#"{"id":"a","messages":[]}"#),
        (false, r#"{"id":"a","messages":[{"role":"user","content":"x"}]} x"#),
        (false, r#"{"id":"a","text":"a plain record"}"#),
        (false, r#"[{"role":"user","content":"x"}]"#),
    ];

    /// The one-pass reading gives the job the general reading gives, or leaves the line; and
    /// every shard's reading agrees with it.
    fn same_as_general(d: &Arc<JobDefaults>, text: &str) -> bool {
        let jobs = JsonlJobs::new(Path::new("t.jsonl"), &b""[..], d.clone(), 1 << 20);
        let whole = super::super::line::job(d, text, (0, 1), &mut Vec::new(), None);
        every_shard_reads_it_alike(d, text, &whole);
        let Some(Read::Job(fast)) = whole else {
            return false;
        };
        match jobs.general(1, text) {
            Ok(slow) => assert_eq!(format!("{fast:?}"), format!("{slow:?}"), "{text}"),
            Err(e) => panic!("read in one pass, refused by the general reading ({e}): {text}"),
        }
        true
    }

    /// A shard's reading of a line is the job read whole when the shard owns it, "another
    /// shard's" when it does not, and nothing when the whole reading leaves the line: another
    /// shard's line, read without writing its values, is checked exactly as a job.
    fn every_shard_reads_it_alike(d: &JobDefaults, text: &str, whole: &Option<Read>) {
        let told = |read: &Option<Read>| match read {
            None => "left".to_string(),
            Some(Read::Job(job)) => format!("{job:?}"),
            Some(Read::Elsewhere) => "elsewhere".into(),
        };
        for index in 0..3 {
            let shard = Shard { index, count: 3 };
            let read = super::super::line::job(d, text, (0, 1), &mut Vec::new(), Some(shard));
            let expected = match whole {
                Some(Read::Job(job)) if !shard.owns(job.id.as_str()) => "elsewhere".into(),
                other => told(other),
            };
            assert_eq!(told(&read), expected, "shard {index}: {text}");
        }
    }

    #[test]
    fn the_one_pass_reading_gives_the_general_readings_job_or_none() {
        let run = Arc::new(model());
        for (usual, text) in LINES {
            assert_eq!(same_as_general(&run, text), *usual, "{text}");
        }
        // No model from the run: a line without one is left (to be refused there).
        let bare = Arc::new(JobDefaults::default());
        assert!(!same_as_general(&bare, LINES[1].1));
        assert!(same_as_general(&bare, LINES[0].1));
        // A run that adds to every body (parameters, a system prompt, an id column) reads
        // every line the general way.
        let added = [
            JobDefaults {
                params: serde_json::json!({"temperature": 0})
                    .as_object()
                    .unwrap()
                    .clone(),
                ..model()
            },
            JobDefaults {
                system: Some("s".into()),
                ..model()
            },
            JobDefaults {
                id_field: Some("id".into()),
                ..model()
            },
            JobDefaults {
                template: Some(Template::parse("{text}").unwrap()),
                ..model()
            },
        ];
        for d in added {
            assert!(!same_as_general(&Arc::new(d), LINES[0].1));
        }
    }

    #[test]
    fn every_line_one_byte_off_gives_the_general_readings_job_or_none() {
        let run = Arc::new(model());
        let bytes: &[u8] = b"\"\\{}[],:0-e.nu \x1fa";
        let mut read = 0;
        for (_, text) in LINES.iter().filter(|(usual, _)| *usual) {
            for line in crate::json_scan::one_byte_off(text, bytes) {
                read += usize::from(same_as_general(&run, &line));
            }
        }
        assert!(read > 5_000, "{read}");
    }
}
