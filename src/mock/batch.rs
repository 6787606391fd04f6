//! The simulator's batch API, OpenAI style (also what Gemini's OpenAI-compatible endpoint
//! serves): `POST /files` (multipart, `purpose=batch`), `GET /files/{id}/content`,
//! `POST /batches`, `GET /batches/{id}`, `GET /batches?after=&limit=`,
//! `POST /batches/{id}/cancel`. A batch ends `batch_delay` after it was created: each line is
//! answered (its custom id counted, so tests can prove nothing was answered twice), a share
//! fails with a 500 into the error file, and a share of batches expire with half their lines
//! answered. Every call takes `batch_latency`, so a test can kill a client in the middle of one.
//!
//! OpenRouter style too: `POST /batches` with the requests inline (at most 5,000; `endpoint`
//! and `model` must come before `requests` in the body, else 400, as OpenRouter does), the
//! results inline in `GET /batches/{id}` once it ended.

use super::{content, json_response, Resp, State};
use bytes::Bytes;
use hyper::StatusCode;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// Batch-API settings of the simulator.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// A batch ends this long after it was created.
    pub delay: Duration,
    /// Every batch-API call takes this long before it answers (its effect happens at once).
    pub latency: Duration,
    /// Share of lines that fail (HTTP 500 in the error file).
    pub fail_rate: f64,
    /// Share of batches that expire with half their lines answered.
    pub expire_rate: f64,
    /// The first this many uploads and creations take effect, then answer 502: their answer
    /// is lost on the wire, as a client sees it.
    pub lose_answers: u32,
    /// The first this many output files asked for are lost: 404 for ever after.
    pub lose_output_files: u32,
    /// A batch of more lines is refused at creation (400, saying the limit).
    pub max_lines: Option<usize>,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            delay: Duration::from_millis(200),
            latency: Duration::ZERO,
            fail_rate: 0.0,
            expire_rate: 0.0,
            lose_answers: 0,
            lose_output_files: 0,
            max_lines: None,
        }
    }
}

#[derive(Debug)]
struct MockBatch {
    id: String,
    input_file_id: String,
    metadata: Value,
    created: tokio::time::Instant,
    created_unix: u64,
    /// `in_progress` until it ends; then `completed`, `expired` or `cancelled`.
    status: &'static str,
    output_file_id: Option<String>,
    error_file_id: Option<String>,
    lines: usize,
    done: usize,
    failed: usize,
    /// Created with its requests inline (OpenRouter style): results come back inline.
    inline: bool,
}

impl MockBatch {
    fn json(&self) -> Value {
        let mut v = self.json_head();
        if self.inline && self.status != "in_progress" {
            v["results"] = Value::Array(Vec::new());
        }
        v
    }

    fn json_head(&self) -> Value {
        json!({
            "id": self.id,
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "input_file_id": self.input_file_id,
            "completion_window": "24h",
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_unix,
            "metadata": self.metadata,
            "request_counts": {"total": self.lines, "completed": self.done, "failed": self.failed},
        })
    }
}

/// Files and batches the simulator holds.
#[derive(Debug, Default)]
pub struct Store {
    files: HashMap<String, Bytes>,
    /// Uploaded files' names, by id.
    names: HashMap<String, String>,
    /// Answers lost so far (`lose_answers`).
    lost: u32,
    /// Output files the provider lost (`lose_output_files`): 404 for ever.
    lost_files: std::collections::HashSet<String>,
    batches: Vec<MockBatch>,
    /// Answers given per custom id, over every batch.
    answered: HashMap<String, u32>,
    next: u64,
}

/// What tests read of the batch API.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BatchStats {
    pub batches_created: u64,
    /// Metadata keys (`bulkprompt_key`) of created batches that were created more than once.
    pub duplicate_keys: u64,
    pub lines_answered: u64,
    /// The most answers any one custom id got.
    pub most_answers_per_id: u32,
    pub files_uploaded: u64,
}

fn lock(state: &State) -> std::sync::MutexGuard<'_, Store> {
    state.batch_store.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn stats(state: &State) -> BatchStats {
    let s = lock(state);
    let mut keys: HashMap<&str, u32> = HashMap::new();
    for b in &s.batches {
        if let Some(k) = b.metadata.get("bulkprompt_key").and_then(Value::as_str) {
            *keys.entry(k).or_default() += 1;
        }
    }
    BatchStats {
        batches_created: s.batches.len() as u64,
        duplicate_keys: keys.values().filter(|&&n| n > 1).count() as u64,
        lines_answered: s.answered.values().map(|&n| u64::from(n)).sum(),
        most_answers_per_id: s.answered.values().copied().max().unwrap_or(0),
        files_uploaded: s.files.keys().filter(|k| k.starts_with("file-in")).count() as u64,
    }
}

fn not_found(what: &str) -> Resp {
    json_response(
        StatusCode::NOT_FOUND,
        json!({"error": {"message": format!("no such {what}"), "type": "invalid_request_error"}})
            .to_string(),
    )
}

fn bad(message: &str) -> Resp {
    json_response(
        StatusCode::BAD_REQUEST,
        json!({"error": {"message": message, "type": "invalid_request_error"}}).to_string(),
    )
}

/// Routes a batch-API request (path without the `/v1` prefix); `None` if it is not one.
pub async fn handle(
    state: &State,
    method: &hyper::Method,
    path: &str,
    query: Option<&str>,
    content_type: Option<String>,
    body: Bytes,
) -> Option<Resp> {
    let cfg = state.config.batch;
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let resp = match (method.as_str(), segments.as_slice()) {
        ("POST", ["files"]) => lose(state, cfg, upload(state, content_type.as_deref(), &body)),
        ("GET", ["files"]) => {
            let s = lock(state);
            let mut data: Vec<Value> = s
                .names
                .iter()
                .map(|(id, name)| json!({"id": id, "object": "file", "filename": name, "purpose": "batch"}))
                .collect();
            data.sort_by(|a, b| b["id"].as_str().cmp(&a["id"].as_str()));
            json_response(
                StatusCode::OK,
                json!({"object": "list", "data": data}).to_string(),
            )
        }
        ("GET", ["files", id, "content"]) => {
            let mut s = lock(state);
            // The first `lose_output_files` output files are lost by the provider.
            if id.starts_with("file-out") && !s.lost_files.contains(*id) {
                let lose = s.lost_files.len() < cfg.lose_output_files as usize;
                if lose {
                    s.lost_files.insert(id.to_string());
                }
            }
            match s.files.get(*id) {
                Some(_) if s.lost_files.contains(*id) => not_found("file"),
                Some(b) => json_response(StatusCode::OK, b.clone()),
                None => not_found("file"),
            }
        }
        ("POST", ["batches"]) => lose(state, cfg, create(state, &body)),
        ("GET", ["batches"]) => list(state, query),
        ("GET", ["batches", id]) => {
            advance(state, cfg);
            let s = lock(state);
            match s.batches.iter().find(|b| b.id == *id) {
                Some(b) => {
                    let mut v = b.json();
                    if v.get("results").is_some() {
                        // The result lines, from its output and error files.
                        let mut rows = Vec::new();
                        for f in [&b.output_file_id, &b.error_file_id].into_iter().flatten() {
                            if let Some(bytes) = s.files.get(f) {
                                rows.extend(
                                    bytes
                                        .split(|&c| c == b'\n')
                                        .filter_map(|l| serde_json::from_slice::<Value>(l).ok()),
                                );
                            }
                        }
                        v["results"] = Value::Array(rows);
                    }
                    json_response(StatusCode::OK, v.to_string())
                }
                None => not_found("batch"),
            }
        }
        ("POST", ["batches", id, "cancel"]) => cancel(state, id),
        _ => return None,
    };
    if !cfg.latency.is_zero() {
        tokio::time::sleep(cfg.latency).await;
    }
    Some(resp)
}

/// `resp`, or (while `lose_answers` lasts, for a call that took effect) a 502 in its place.
fn lose(state: &State, cfg: BatchConfig, resp: Resp) -> Resp {
    if resp.status().is_success() {
        let mut s = lock(state);
        if s.lost < cfg.lose_answers {
            s.lost += 1;
            return json_response(
                StatusCode::BAD_GATEWAY,
                json!({"error": {"message": "upstream connection reset", "type": "server_error"}})
                    .to_string(),
            );
        }
    }
    resp
}

/// The `filename` of a multipart upload's file part.
fn multipart_name(body: &[u8]) -> Option<String> {
    let at = find(body, b"filename=\"")? + 10;
    let len = find(&body[at..], b"\"")?;
    Some(String::from_utf8_lossy(&body[at..at + len]).into_owned())
}

/// The file part of a `multipart/form-data` upload.
fn multipart_file(content_type: &str, body: &[u8]) -> Option<Bytes> {
    let boundary = content_type.split("boundary=").nth(1)?.trim_matches('"');
    let delim = format!("--{boundary}");
    let text = body;
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(at) = find(rest, delim.as_bytes()) {
        rest = &rest[at + delim.len()..];
        parts.push(rest);
    }
    for p in parts {
        let head_end = find(p, b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&p[..head_end]);
        if head.contains("name=\"file\"") {
            let data = &p[head_end + 4..];
            let end = find(data, format!("\r\n{delim}").as_bytes())?;
            return Some(Bytes::copy_from_slice(&data[..end]));
        }
    }
    None
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn upload(state: &State, content_type: Option<&str>, body: &[u8]) -> Resp {
    let Some(file) = content_type.and_then(|ct| multipart_file(ct, body)) else {
        return bad("expected multipart/form-data with a file part");
    };
    // Every line must be a batch line for the chat endpoint.
    for (i, line) in file.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let ok = serde_json::from_slice::<Value>(line).ok().is_some_and(|v| {
            v["custom_id"].is_string() && v["method"] == "POST" && v["body"].is_object()
        });
        if !ok {
            return bad(&format!("line {}: not a batch request line", i + 1));
        }
    }
    let mut s = lock(state);
    s.next += 1;
    let id = format!("file-in{:06}", s.next);
    let bytes = file.len();
    s.files.insert(id.clone(), file);
    if let Some(name) = multipart_name(body) {
        s.names.insert(id.clone(), name);
    }
    json_response(
        StatusCode::OK,
        json!({"id": id, "object": "file", "bytes": bytes, "purpose": "batch"}).to_string(),
    )
}

fn create(state: &State, body: &[u8]) -> Resp {
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return bad("body is not JSON");
    };
    let mut s = lock(state);
    let inline = req.get("requests").is_some();
    let file_id = if let Some(Value::Array(requests)) = req.get("requests") {
        // OpenRouter's rules: endpoint and model before requests, one model, at most 5,000.
        let at = |key: &str| find(body, format!("\"{key}\"").as_bytes());
        let (Some(e), Some(m), Some(r)) = (at("endpoint"), at("model"), at("requests")) else {
            return bad("endpoint, model and requests are required");
        };
        if e > r || m > r {
            return bad("endpoint and model must come before requests");
        }
        if requests.len() > 5_000 {
            return bad("at most 5000 requests in a batch");
        }
        let model = req["model"].as_str().unwrap_or_default();
        let mut lines = Vec::new();
        for q in requests {
            if q["body"]["model"].as_str().is_some_and(|m2| m2 != model) {
                return bad("every request of a batch must use the batch's model");
            }
            let line = json!({"custom_id": q["custom_id"], "method": "POST",
                "url": "/v1/chat/completions", "body": q["body"]});
            lines.extend_from_slice(line.to_string().as_bytes());
            lines.push(b'\n');
        }
        s.next += 1;
        let id = format!("inline-{:06}", s.next);
        s.files.insert(id.clone(), Bytes::from(lines));
        id
    } else {
        match req["input_file_id"].as_str() {
            Some(f) => f.to_string(),
            None => return bad("input_file_id is required"),
        }
    };
    let file_id = file_id.as_str();
    let Some(file) = s.files.get(file_id) else {
        return not_found("file");
    };
    let lines = file
        .split(|&b| b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .count();
    if let Some(max) = state.config.batch.max_lines.filter(|&m| lines > m) {
        return bad(&format!(
            "The batch input file has {lines} requests, more than allowed: the limit is {max} requests per batch."
        ));
    }
    s.next += 1;
    let b = MockBatch {
        id: format!("batch_{:06}", s.next),
        input_file_id: file_id.to_string(),
        metadata: req.get("metadata").cloned().unwrap_or(Value::Null),
        created: tokio::time::Instant::now(),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        status: "in_progress",
        output_file_id: None,
        error_file_id: None,
        lines,
        done: 0,
        failed: 0,
        inline,
    };
    let out = b.json().to_string();
    s.batches.push(b);
    json_response(StatusCode::OK, out)
}

fn list(state: &State, query: Option<&str>) -> Resp {
    advance(state, state.config.batch);
    let param = |name: &str| {
        query?
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .map(str::to_string)
    };
    let limit = param("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(20)
        .clamp(1, 100);
    let s = lock(state);
    // Newest first, as OpenAI lists them.
    let mut all: Vec<&MockBatch> = s.batches.iter().rev().collect();
    if let Some(after) = param("after") {
        if let Some(at) = all.iter().position(|b| b.id == after) {
            all.drain(..=at);
        }
    }
    let has_more = all.len() > limit;
    let page: Vec<Value> = all.iter().take(limit).map(|b| b.json()).collect();
    let last = page.last().map(|b| b["id"].clone());
    json_response(
        StatusCode::OK,
        json!({"object": "list", "data": page, "has_more": has_more, "last_id": last}).to_string(),
    )
}

fn cancel(state: &State, id: &str) -> Resp {
    let mut s = lock(state);
    let Some(at) = s.batches.iter().position(|b| b.id == id) else {
        return not_found("batch");
    };
    if s.batches[at].status != "in_progress" {
        // As OpenAI answers: only a running batch can be cancelled.
        let status = s.batches[at].status;
        return bad(&format!("Cannot cancel a batch with status '{status}'."));
    }
    {
        finish(
            &mut s,
            at,
            "cancelled",
            0.5,
            state.config.batch.fail_rate,
            state,
        );
    }
    json_response(StatusCode::OK, s.batches[at].json().to_string())
}

/// Ends every batch whose time has come.
fn advance(state: &State, cfg: BatchConfig) {
    let mut s = lock(state);
    let now = tokio::time::Instant::now();
    for at in 0..s.batches.len() {
        let b = &s.batches[at];
        if b.status != "in_progress" || now.duration_since(b.created) < cfg.delay {
            continue;
        }
        let mut rng = fastrand::Rng::with_seed(state.config.seed ^ ((at as u64 + 1) * 7919));
        if rng.f64() < cfg.expire_rate {
            finish(&mut s, at, "expired", 0.5, cfg.fail_rate, state);
        } else {
            finish(&mut s, at, "completed", 1.0, cfg.fail_rate, state);
        }
    }
}

/// Answers the first `share` of the batch's lines (a `fail_rate` of them with a 500) and ends it
/// with `status`.
fn finish(
    s: &mut Store,
    at: usize,
    status: &'static str,
    share: f64,
    fail_rate: f64,
    state: &State,
) {
    let file = s
        .files
        .get(&s.batches[at].input_file_id)
        .cloned()
        .unwrap_or_default();
    let lines: Vec<&[u8]> = file
        .split(|&b| b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .collect();
    let answer_n = ((lines.len() as f64) * share).ceil() as usize;
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let (mut done, mut failed) = (0, 0);
    let mut rng = fastrand::Rng::with_seed(state.config.seed ^ 0x5eed ^ at as u64);
    for line in lines.iter().take(answer_n) {
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        let custom_id = v["custom_id"].as_str().unwrap_or_default().to_string();
        let n = s.next;
        s.next += 1;
        if rng.f64() < fail_rate {
            failed += 1;
            let row = json!({"id": format!("batch_req_{n}"), "custom_id": custom_id,
                "response": {"status_code": 500, "request_id": format!("req_{n}"),
                    "body": {"error": {"message": "internal error", "type": "server_error"}}},
                "error": null});
            errors.extend_from_slice(row.to_string().as_bytes());
            errors.push(b'\n');
            continue;
        }
        let body = &v["body"];
        let answer = chat_answer(body, line, n, state);
        *s.answered.entry(custom_id.clone()).or_default() += 1;
        done += 1;
        let row = json!({"id": format!("batch_req_{n}"), "custom_id": custom_id,
            "response": {"status_code": 200, "request_id": format!("req_{n}"), "body": answer},
            "error": null});
        out.extend_from_slice(row.to_string().as_bytes());
        out.push(b'\n');
    }
    // The lines a batch that ended early never ran, in its error file as OpenAI writes them.
    let code = match status {
        "cancelled" => Some("batch_cancelled"),
        "expired" => Some("batch_expired"),
        _ => None,
    };
    for line in lines.iter().skip(answer_n).filter(|_| code.is_some()) {
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        let row = json!({"custom_id": v["custom_id"], "response": null, "error": {"code": code,
            "message": format!("This request was not executed because the batch was {status}.")}});
        errors.extend_from_slice(row.to_string().as_bytes());
        errors.push(b'\n');
    }
    s.next += 1;
    let out_id = format!("file-out{:06}", s.next);
    s.files.insert(out_id.clone(), Bytes::from(out));
    let err_id = (!errors.is_empty()).then(|| {
        let id = format!("file-err{:06}", s.next);
        s.files.insert(id.clone(), Bytes::from(errors));
        id
    });
    let b = &mut s.batches[at];
    b.status = status;
    b.output_file_id = Some(out_id);
    b.error_file_id = err_id;
    b.done = done;
    b.failed = failed;
}

/// A chat completion for one batch line's body, as the live endpoint would answer it.
fn chat_answer(body: &Value, raw: &[u8], n: u64, state: &State) -> Value {
    let model = body["model"].as_str().unwrap_or("unknown").to_string();
    let prompt_chars: usize = body["messages"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| crate::job::request::content_chars(m.get("content")) + 16)
                .sum()
        })
        .unwrap_or(0);
    let prompt_tokens = crate::job::approx_tokens(prompt_chars) as u64;
    let max_tokens = body["max_completion_tokens"]
        .as_u64()
        .or(body["max_tokens"].as_u64());
    let json = body["response_format"]["type"]
        .as_str()
        .is_some_and(|t| t != "text");
    let seed = xxhash_rust::xxh3::xxh3_64(raw);
    // Several choices (`n`), each its own answer and billed as one.
    let answers: Vec<content::Answer> = (0..body["n"].as_u64().unwrap_or(1).clamp(1, 16))
        .map(|i| content::answer(seed.wrapping_add(i), max_tokens, json))
        .collect();
    let choices: Vec<Value> = answers
        .iter()
        .enumerate()
        .map(|(i, a)| {
            json!({"index": i, "message": {"role": "assistant", "content": a.content},
            "finish_reason": a.finish_reason})
        })
        .collect();
    let completion_tokens = answers.iter().map(|a| a.completion_tokens).sum();
    let usage = bill(state, body, &model, prompt_tokens, completion_tokens);
    json!({
        "id": format!("chatcmpl-batch-{n}"),
        "object": "chat.completion",
        "model": model,
        "choices": choices,
        "usage": usage,
    })
}

/// A batch line's usage, counted in the stats and billed: at batch prices, or at the
/// configured multiple of the live price, said in `usage.cost`.
fn bill(
    state: &State,
    body: &Value,
    model: &str,
    prompt_tokens: u64,
    completion_tokens: u64,
) -> Value {
    let stats = &state.stats;
    // Images sent inline as data: URLs, as the live endpoint counts them.
    let images = body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .filter(|p| {
            p["image_url"]["url"]
                .as_str()
                .is_some_and(|u| u.starts_with("data:image/") || u.starts_with("http"))
        })
        .count() as u64;
    stats.images.fetch_add(images, Relaxed);
    stats.ok.fetch_add(1, Relaxed);
    stats.prompt_tokens.fetch_add(prompt_tokens, Relaxed);
    stats
        .completion_tokens
        .fetch_add(completion_tokens, Relaxed);
    let mut usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens});
    let Some(p) = state.prices.get(model) else {
        return usage;
    };
    let u = crate::cost::Usage {
        prompt: prompt_tokens,
        completion: completion_tokens,
        ..Default::default()
    };
    match state.config.cost_factor {
        Some(f) => {
            let cost = crate::cost::Money((p.cost(&u, 0).0 as f64 * f) as u64);
            stats.billed.fetch_add(cost.0, Relaxed);
            usage["cost"] = json!(cost.usd());
        }
        None => {
            stats.billed.fetch_add(p.batch_cost(&u, 0).0, Relaxed);
        }
    }
    usage
}
