//! Turns one parsed input record into a [`Job`]: applies the run's defaults (model, system
//! prompt, request parameters), checks what every chat request needs, serializes the body once
//! and fingerprints it. Shared by the JSONL and CSV readers so both shapes behave the same.

use super::{approx_tokens, Fingerprint, Job, JobId, Template};
use crate::answer::Expect;
use serde_json::{Map, Value};

/// What the run adds to jobs that do not say it themselves.
#[derive(Debug, Clone, Default)]
pub struct JobDefaults {
    /// Model for jobs that name none; a job's own `model` wins.
    pub model: Option<String>,
    /// System prompt prepended to jobs that have no system message.
    pub system: Option<String>,
    /// Template for plain records and CSV rows.
    pub template: Option<Template>,
    /// Field or column holding the id, when the user named one.
    pub id_field: Option<String>,
    /// Request parameters added to bodies that do not set them (temperature, max_tokens, ...).
    pub params: Map<String, Value>,
    /// What `params.response_format` expects of answers, worked out once for every job that
    /// takes it.
    pub default_expect: std::sync::OnceLock<Result<Expect, String>>,
    /// Columns or fields holding an image (a URL or a file path).
    pub image_columns: Vec<String>,
    /// Largest image file accepted.
    pub max_image_bytes: u64,
    /// `--allow-constant-prompt`: jobs that all send one request are accepted.
    pub allow_constant: bool,
}

/// Images a templated job carries: their content parts, local files and the files' hashes.
#[derive(Debug, Default)]
pub struct Attached {
    parts: Vec<Value>,
    files: Vec<super::image::ImageFile>,
    hashes: Vec<u128>,
}

impl JobDefaults {
    pub fn id_field(&self) -> &str {
        self.id_field.as_deref().unwrap_or("id")
    }

    /// The messages of a templated job: optional system prompt, then the rendered user prompt
    /// (with the row's images after it).
    pub fn templated_messages(&self, prompt: String, images: &Attached) -> Value {
        let mut messages = Vec::with_capacity(2);
        if let Some(system) = &self.system {
            messages.push(message("system", system.clone()));
        }
        if images.parts.is_empty() {
            messages.push(message("user", prompt));
        } else {
            let mut parts = vec![serde_json::json!({"type": "text", "text": prompt})];
            parts.extend(images.parts.iter().cloned());
            messages.push(serde_json::json!({"role": "user", "content": parts}));
        }
        Value::Array(messages)
    }

    /// The images of a row or record: `cell` gives an image column's value. Files are
    /// relative to `base` (the job file's folder).
    pub fn attach(
        &self,
        base: &std::path::Path,
        cell: impl Fn(&str) -> Option<String>,
    ) -> Result<Attached, String> {
        use super::image::{part, resolve, Image, DEFAULT_MAX_BYTES};
        let mut a = Attached::default();
        let max = if self.max_image_bytes == 0 {
            DEFAULT_MAX_BYTES
        } else {
            self.max_image_bytes
        };
        for col in &self.image_columns {
            let Some(v) = cell(col) else { continue };
            match resolve(&v, base, max).map_err(|e| format!("column \"{col}\": {e}"))? {
                None => {}
                Some(img) => {
                    a.parts.push(part(&img, a.files.len()));
                    if let Image::File(f, h) = img {
                        a.files.push(f);
                        a.hashes.push(h);
                    }
                }
            }
        }
        Ok(a)
    }
}

fn message(role: &str, content: String) -> Value {
    let mut m = Map::new();
    m.insert("role".into(), Value::String(role.into()));
    m.insert("content".into(), Value::String(content));
    Value::Object(m)
}

/// Finishes a request body into a job: the run's defaults filled in, the model and messages
/// checked (the default system prompt added), the limits read. `Err` is a message for the
/// caller to locate.
pub fn finish(
    defaults: &JobDefaults,
    id: JobId,
    index: u64,
    line: u64,
    mut body: Map<String, Value>,
    metadata: Map<String, Value>,
    attached: Attached,
) -> Result<Job, String> {
    let expect = expect_of(defaults, &body)?;
    fill_defaults(defaults, &mut body);
    let model = model_of(defaults, &mut body)?;
    let (est_prompt_tokens, images) = check_messages(defaults, &mut body)?;
    let max_output_tokens = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| body.get(*k))
        .map(|v| {
            v.as_u64()
                .map(|n| n.min(u32::MAX as u64) as u32)
                .ok_or_else(|| format!("field \"max_tokens\": expected a whole number, found {v}"))
        })
        .transpose()?;
    let choices = match body.get("n") {
        None | Some(Value::Null) => 1,
        Some(v) => match v.as_u64() {
            Some(n @ 1..=128) => n as u32,
            _ => {
                return Err(format!(
                    "field \"n\": expected a whole number from 1 to 128, found {v}"
                ))
            }
        },
    };
    let bytes = crate::json_write::to_vec(&body).map_err(|e| e.to_string())?;
    Ok(Job {
        id,
        index,
        line,
        model,
        fingerprint: Fingerprint::with_files(&bytes, &attached.hashes),
        body: bytes.into(),
        metadata,
        est_prompt_tokens,
        max_output_tokens,
        choices,
        images,
        expect,
        image_files: attached.files,
    })
}

/// What the job's answers must be: its own `response_format`, else the run's (checked once).
pub(super) fn expect_of(
    defaults: &JobDefaults,
    body: &Map<String, Value>,
) -> Result<Expect, String> {
    if body.contains_key("response_format") {
        return own_expect(body);
    }
    defaults
        .default_expect
        .get_or_init(|| {
            let mut only = Map::new();
            if let Some(rf) = defaults.params.get("response_format") {
                only.insert("response_format".into(), rf.clone());
            }
            own_expect(&only)
        })
        .clone()
}

/// The run's parameters where the job sets none (`max_tokens` and `max_completion_tokens`
/// are one setting under two names); a streamed job asks for its usage.
fn fill_defaults(defaults: &JobDefaults, body: &mut Map<String, Value>) {
    for (k, v) in &defaults.params {
        if body.contains_key(k) {
            continue;
        }
        let alias = match k.as_str() {
            "max_tokens" => Some("max_completion_tokens"),
            "max_completion_tokens" => Some("max_tokens"),
            _ => None,
        };
        if alias.is_some_and(|a| body.contains_key(a)) {
            continue;
        }
        body.insert(k.clone(), v.clone());
    }
    // A streamed answer reports its usage only when asked to (OpenAI's `stream_options`):
    // without it the cost of a streamed job would be unknown.
    if body.get("stream") == Some(&Value::Bool(true)) && !body.contains_key("stream_options") {
        body.insert(
            "stream_options".into(),
            serde_json::json!({"include_usage": true}),
        );
    }
}

/// The job's model: its own, else the run's (written into the body).
fn model_of(defaults: &JobDefaults, body: &mut Map<String, Value>) -> Result<String, String> {
    match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => Ok(m.clone()),
        Some(Value::String(_)) | None => match &defaults.model {
            Some(m) => {
                body.insert("model".into(), Value::String(m.clone()));
                Ok(m.clone())
            }
            None => {
                Err("no model: give --model, a `model` in the spec, or a \"model\" field".into())
            }
        },
        Some(other) => Err(format!(
            "field \"model\": expected a string, found {}",
            kind(other)
        )),
    }
}

/// Every message checked (a role, content of the right shape); the run's system prompt added
/// when the job has none. Returns the prompt's estimated tokens and its images.
fn check_messages(
    defaults: &JobDefaults,
    body: &mut Map<String, Value>,
) -> Result<(u32, u32), String> {
    let messages = match body.get_mut("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => return Err("field \"messages\": is empty".into()),
        Some(other) => {
            return Err(format!(
                "field \"messages\": expected an array, found {}",
                kind(other)
            ))
        }
        None => return Err("field \"messages\": missing".into()),
    };
    let mut chars = 0usize;
    let mut has_system = false;
    let mut images = 0u32;
    for (i, m) in messages.iter().enumerate() {
        let Value::Object(m) = m else {
            return Err(format!(
                "field \"messages[{i}]\": expected an object, found {}",
                kind(m)
            ));
        };
        let Some(Value::String(role)) = m.get("role") else {
            return Err(format!(
                "field \"messages[{i}].role\": missing or not a string"
            ));
        };
        has_system |= role == "system" || role == "developer";
        check_content(i, role, m)?;
        chars += content_chars(m.get("content")) + 16;
        images += count_images(m.get("content"));
    }
    if let (false, Some(system)) = (has_system, &defaults.system) {
        chars += system.len() + 16;
        messages.insert(0, message("system", system.clone()));
    }
    Ok((approx_tokens(chars), images))
}

/// What a body's own `response_format` expects; each distinct schema is checked once per
/// thread (a file of a million jobs usually repeats one schema).
fn own_expect(body: &Map<String, Value>) -> Result<Expect, String> {
    thread_local! {
        static CHECKED: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let expect = Expect::of_request(body)?;
    if let Expect::Schema(s) = &expect {
        let known = CHECKED.with(|c| c.borrow().contains(&s.hash));
        if !known {
            crate::answer::check_schema(&s.value).map_err(|e| {
                format!(
                    "field \"response_format.json_schema.schema\": not a valid JSON Schema: {e}"
                )
            })?;
            CHECKED.with(|c| {
                let mut c = c.borrow_mut();
                if c.len() >= 64 {
                    c.remove(0);
                }
                c.push(s.hash);
            });
        }
    }
    Ok(expect)
}

/// `image_url` parts of a message's content array.
fn count_images(content: Option<&Value>) -> u32 {
    match content {
        Some(Value::Array(parts)) => parts
            .iter()
            .filter(|p| p.get("type").and_then(Value::as_str) == Some("image_url"))
            .count() as u32,
        _ => 0,
    }
}

/// Characters of a message's content: a string, or text parts of a content array. The one
/// walk over content text: the runner's token estimate and the simulator's usage both use it.
pub fn content_chars(content: Option<&Value>) -> usize {
    match content {
        Some(Value::String(s)) => s.chars().count(),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| {
                p.get("text")
                    .and_then(Value::as_str)
                    .map_or(0, |t| t.chars().count())
            })
            .sum(),
        _ => 0,
    }
}

/// A message's `content` must be text or a list of content parts; only an assistant message
/// that calls tools (or a function) may go without.
fn check_content(i: usize, role: &str, m: &Map<String, Value>) -> Result<(), String> {
    match m.get("content") {
        Some(Value::String(_)) => Ok(()),
        Some(Value::Array(parts)) => {
            match parts.iter().position(|p| !p.is_object()) {
                Some(j) => Err(format!(
                    "field \"messages[{i}].content[{j}]\": expected a content part (an object), found {}",
                    kind(&parts[j])
                )),
                None => Ok(()),
            }
        }
        None | Some(Value::Null)
            if role == "assistant"
                && (m.contains_key("tool_calls") || m.contains_key("function_call")) =>
        {
            Ok(())
        }
        None => Err(format!("field \"messages[{i}].content\": missing")),
        Some(other) => Err(format!(
            "field \"messages[{i}].content\": expected a string or a list of content parts, found {}",
            kind(other)
        )),
    }
}

/// A JSON value's kind, for messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A job id from a JSON value: strings as they are, whole numbers as their digits.
pub fn id_from_value(v: &Value) -> Result<JobId, String> {
    match v {
        Value::String(s) if !s.is_empty() => Ok(JobId::new(s.clone())),
        Value::String(_) => Err("is empty".into()),
        Value::Number(n) if n.is_u64() || n.is_i64() => Ok(JobId::new(n.to_string())),
        other => Err(format!(
            "expected a string or whole number, found {}",
            kind(other)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn defaults_fill_only_what_is_missing() {
        let d = JobDefaults {
            model: Some("m-default".into()),
            params: obj(json!({"temperature": 0, "max_tokens": 50})),
            ..Default::default()
        };
        let body = obj(
            json!({"model": "own", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 7}),
        );
        let job = finish(
            &d,
            JobId::new("a"),
            0,
            1,
            body,
            Map::new(),
            Default::default(),
        )
        .unwrap();
        assert_eq!(job.model, "own");
        assert_eq!(job.max_output_tokens, Some(7));
        let sent: Value = serde_json::from_slice(&job.body).unwrap();
        assert_eq!(sent["temperature"], 0);
        assert!(
            sent.get("max_tokens").is_none(),
            "alias must not be added twice"
        );
    }

    #[test]
    fn fingerprint_ignores_key_order_but_not_values() {
        let d = JobDefaults::default();
        let a =
            obj(json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "seed": 1}));
        let b =
            obj(json!({"seed": 1, "messages": [{"content": "x", "role": "user"}], "model": "m"}));
        let c =
            obj(json!({"seed": 2, "messages": [{"content": "x", "role": "user"}], "model": "m"}));
        let f = |m| {
            finish(&d, JobId::new("a"), 0, 1, m, Map::new(), Default::default())
                .unwrap()
                .fingerprint
        };
        assert_eq!(f(a.clone()), f(b));
        assert_ne!(f(a), f(c));
    }

    #[test]
    fn message_content_must_be_text_or_parts() {
        let d = JobDefaults {
            model: Some("m".into()),
            ..JobDefaults::default()
        };
        let try_ = |messages: Value| {
            finish(
                &d,
                JobId::new("a"),
                0,
                1,
                obj(json!({"messages": messages})),
                Map::new(),
                Default::default(),
            )
            .err()
        };
        assert!(try_(json!([{"role": "user"}]))
            .unwrap()
            .contains("messages[0].content\": missing"));
        assert!(try_(json!([{"role": "user", "content": 5}]))
            .unwrap()
            .contains("found a number"));
        assert!(try_(json!([{"role": "user", "content": ["x"]}]))
            .unwrap()
            .contains("content[0]"));
        assert!(
            try_(json!([{"role": "user", "content": [{"type": "text", "text": "x"}]}])).is_none()
        );
        assert!(try_(json!([{"role": "user", "content": "x"}, {"role": "assistant", "content": null, "tool_calls": []}, {"role": "tool", "content": "r", "tool_call_id": "1"}])).is_none());
    }

    #[test]
    fn missing_model_and_bad_messages_are_errors() {
        let d = JobDefaults::default();
        let e = finish(
            &d,
            JobId::new("a"),
            0,
            1,
            obj(json!({"messages": [{"role": "user", "content": "x"}]})),
            Map::new(),
            Default::default(),
        );
        assert!(e.unwrap_err().contains("no model"));
        let d = JobDefaults {
            model: Some("m".into()),
            ..Default::default()
        };
        let e = finish(
            &d,
            JobId::new("a"),
            0,
            1,
            obj(json!({"messages": "hi"})),
            Map::new(),
            Default::default(),
        );
        assert!(e.unwrap_err().contains("expected an array"));
    }

    #[test]
    fn system_prompt_is_prepended_once() {
        let d = JobDefaults {
            model: Some("m".into()),
            system: Some("be brief".into()),
            ..Default::default()
        };
        let job = finish(
            &d,
            JobId::new("a"),
            0,
            1,
            obj(json!({"messages": [{"role": "user", "content": "x"}]})),
            Map::new(),
            Default::default(),
        )
        .unwrap();
        let sent: Value = serde_json::from_slice(&job.body).unwrap();
        assert_eq!(sent["messages"][0]["role"], "system");
        let job = finish(&d, JobId::new("a"), 0, 1, obj(json!({"messages": [{"role": "system", "content": "own"}, {"role": "user", "content": "x"}]})), Map::new(), Default::default()).unwrap();
        let sent: Value = serde_json::from_slice(&job.body).unwrap();
        assert_eq!(sent["messages"].as_array().unwrap().len(), 2);
    }
}
