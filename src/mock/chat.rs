//! The simulator's chat-completions endpoint, as stages: the key, the request, the quota and
//! the rate window, a slot and the latency, the fault, the answer and its bill, the bytes on
//! the wire.

use super::body::MockBody;
use super::{
    bad_request, content, error_response, json_response, rate_limited_response, schema, window,
    Fault, MockConfig, Reply, Resp, State, Step, PROVIDER_FEE,
};
use crate::job::approx_tokens;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

#[derive(Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<ChatMessage>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    temperature: Option<f64>,
    response_format: Option<ResponseFormat>,
    usage: Option<UsageRequest>,
    /// Choices to return.
    n: Option<u32>,
    #[serde(default)]
    tools: Vec<serde_json::Value>,
    tool_choice: Option<serde_json::Value>,
    /// Answer as server-sent events.
    #[serde(default)]
    stream: bool,
    stream_options: Option<serde_json::Value>,
}

impl ChatRequest {
    /// The function a `tool_choice` requires ("required": the first tool), with its
    /// parameters' schema.
    fn required_function(&self) -> Option<(String, serde_json::Value)> {
        let function = |t: &serde_json::Value| {
            let f = t.get("function")?;
            Some((
                f.get("name")?.as_str()?.to_string(),
                f.get("parameters")
                    .cloned()
                    .unwrap_or(serde_json::json!({})),
            ))
        };
        match self.tool_choice.as_ref()? {
            serde_json::Value::String(s) if s == "required" => {
                self.tools.first().and_then(function)
            }
            c @ serde_json::Value::Object(_) => {
                let name = c.get("function")?.get("name")?.as_str()?;
                self.tools
                    .iter()
                    .filter_map(function)
                    .find(|(n, _)| n == name)
                    .or_else(|| Some((name.to_string(), serde_json::json!({}))))
            }
            _ => None,
        }
    }
}

/// OpenRouter's `"usage": {"include": true}`: report the cost in the response.
#[derive(Deserialize)]
struct UsageRequest {
    #[serde(default)]
    include: bool,
}

#[derive(Deserialize)]
struct ChatMessage {
    #[allow(dead_code)]
    role: String,
    #[serde(default)]
    content: serde_json::Value,
}

#[derive(Deserialize)]
struct ResponseFormat {
    #[serde(rename = "type")]
    kind: String,
    json_schema: Option<JsonSchemaFormat>,
}

#[derive(Deserialize)]
struct JsonSchemaFormat {
    schema: Option<serde_json::Value>,
}

/// Counts the `image_url` parts of the messages; `Err` for a `data:` URL whose base64 does not
/// decode (providers answer 400).
fn count_images(messages: &[ChatMessage]) -> Result<u64, String> {
    let mut n = 0;
    for m in messages {
        let serde_json::Value::Array(parts) = &m.content else {
            continue;
        };
        for p in parts {
            if p.get("type").and_then(|t| t.as_str()) != Some("image_url") {
                continue;
            }
            n += 1;
            let url = p
                .get("image_url")
                .and_then(|i| i.get("url"))
                .and_then(|u| u.as_str())
                .ok_or("image_url part without a url")?;
            if let Some(rest) = url.strip_prefix("data:") {
                let (_, data) = rest
                    .split_once(";base64,")
                    .ok_or("a data: URL must be base64 (data:TYPE;base64,...)")?;
                data_encoding::BASE64
                    .decode(data.as_bytes())
                    .map_err(|e| format!("invalid base64 image data: {e}"))?;
            } else if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(format!("image url must be http(s) or data:, got {url:.40}"));
            }
        }
    }
    Ok(n)
}

#[derive(Serialize)]
struct ChatResponse<'a> {
    id: String,
    object: &'static str,
    created: u64,
    model: &'a str,
    provider: &'static str,
    choices: Vec<Choice>,
    usage: UsageOut,
}

#[derive(Serialize)]
struct Choice {
    index: u32,
    message: MessageOut,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct MessageOut {
    role: &'static str,
    content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct UsageOut {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    cost: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_tokens_details: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    completion_tokens_details: Option<serde_json::Value>,
}

/// `POST /v1/chat/completions`: checks the key, reads and checks the request, admits it under
/// the quota and the rate window, waits for a slot and the latency, answers with the fault the
/// draw picked, or with the answer, billed.
pub(super) async fn chat(state: &State, req: Request<Incoming>) -> Reply {
    match answer(state, req).await {
        Ok(r) => r,
        Err(r) => *r,
    }
}

/// A reply before the answer is made (a refusal), boxed: it is the rare path.
type Early = Box<Reply>;

fn early(r: Resp) -> Early {
    Box::new(Ok(r))
}

/// The stages of a chat request; `Err` is an early reply (a refusal).
async fn answer(state: &State, req: Request<Incoming>) -> Result<Reply, Early> {
    state.stats.requests.fetch_add(1, Relaxed);
    let echoed = authorize(state, &req)?;
    let (body, parsed) = read_request(state, req).await?;
    let asked = Asked::of(state, &body, &parsed)?;
    let limit_headers = admit(state, &asked)?;
    let (draw, jitter, faults) = {
        let mut c = state.chance.lock().unwrap_or_else(|p| p.into_inner());
        (c.0.f64(), c.0.f64(), c.1)
    };
    // A place in one of the server's slots, held while the answer is made.
    let _slot = match &state.slots {
        Some(s) => s.clone().acquire_owned().await.ok(),
        None => None,
    };
    let cfg = &state.config;
    if !cfg.latency.is_zero() {
        tokio::time::sleep(cfg.latency.mul_f64(0.75 + jitter * 0.5)).await;
    }
    let storm = cfg
        .storm
        .is_some_and(|s| s.raging(state.started_at.elapsed()));
    let fault = pick_fault(state, storm, || faults.pick(draw))?;
    if let Some(reply) = fault_reply(state, fault, storm, draw, echoed).await {
        return Ok(reply);
    }
    let response = respond(state, &parsed, &asked, fault);
    Ok(Ok(send(state, &parsed, &response, fault, limit_headers)))
}

/// The key, when the simulator wants one; and what was sent as one, for the fault that echoes
/// it back.
fn authorize(state: &State, req: &Request<Incoming>) -> Result<Option<String>, Early> {
    let sent = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
    let echoed = (state.config.faults.rate(Fault::EchoKey) > 0.0)
        .then(|| String::from_utf8_lossy(sent.unwrap_or_default()).into_owned());
    let Some(key) = &state.config.api_key else {
        return Ok(echoed);
    };
    let expected = format!("Bearer {}", key.expose());
    if sent == Some(expected.as_bytes()) {
        return Ok(echoed);
    }
    state.stats.unauthorized.fetch_add(1, Relaxed);
    // Like some providers, echo what was sent: the runner must scrub it.
    let sent = sent.map(String::from_utf8_lossy).unwrap_or_default();
    let msg = format!(
        "invalid API key provided: {}",
        sent.trim_start_matches("Bearer ")
    );
    Err(early(error_response(
        state.config.dialect,
        StatusCode::UNAUTHORIZED,
        "authentication_error",
        &msg,
    )))
}

/// The body, captured when asked, and parsed into a request that makes sense.
async fn read_request(
    state: &State,
    req: Request<Incoming>,
) -> Result<(Bytes, ChatRequest), Early> {
    let body = match Limited::new(req.into_body(), 64 << 20).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            state.stats.bad_requests.fetch_add(1, Relaxed);
            return Err(early(error_response(
                state.config.dialect,
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "body too large",
            )));
        }
    };
    if state.config.capture_bodies {
        state
            .bodies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(body.clone());
    }
    let parsed: ChatRequest =
        serde_json::from_slice(&body).map_err(|e| early(bad_request(state, &e.to_string())))?;
    if parsed.messages.is_empty() {
        return Err(early(bad_request(state, "messages must not be empty")));
    }
    if parsed
        .temperature
        .is_some_and(|t| !(0.0..=2.0).contains(&t))
    {
        return Err(early(bad_request(
            state,
            "temperature must be between 0 and 2",
        )));
    }
    Ok((body, parsed))
}

/// What a request asks for, as the simulator counts it.
struct Asked<'a> {
    prompt_tokens: u64,
    images: u64,
    json: bool,
    schema: Option<&'a serde_json::Value>,
    max_tokens: Option<u64>,
    /// The body's hash: the same request gets the same answer.
    seed: u64,
    /// The first choice's answer (a plain answer's content and length).
    first: content::Answer,
    choices: u64,
}

impl<'a> Asked<'a> {
    fn of(state: &State, body: &[u8], parsed: &'a ChatRequest) -> Result<Asked<'a>, Early> {
        let prompt_tokens = approx_tokens(
            parsed
                .messages
                .iter()
                .map(|m| crate::job::request::content_chars(Some(&m.content)) + 16)
                .sum(),
        ) as u64;
        if state.config.refuse_unknown_models && state.prices.get(&parsed.model).is_none() {
            state.stats.bad_requests.fetch_add(1, Relaxed);
            return Err(early(error_response(
                state.config.dialect,
                StatusCode::NOT_FOUND,
                "model_not_found",
                &format!(
                    "The model `{}` does not exist or you do not have access to it.",
                    parsed.model
                ),
            )));
        }
        let images = count_images(&parsed.messages).map_err(|e| early(bad_request(state, &e)))?;
        let format = parsed.response_format.as_ref();
        let json = format.is_some_and(|f| f.kind != "text");
        let schema = format
            .filter(|f| f.kind == "json_schema")
            .and_then(|f| f.json_schema.as_ref())
            .and_then(|j| j.schema.as_ref());
        let max_tokens = parsed.max_completion_tokens.or(parsed.max_tokens);
        let seed = xxhash_rust::xxh3::xxh3_64(body);
        Ok(Asked {
            prompt_tokens,
            images,
            json,
            schema,
            max_tokens,
            seed,
            first: content::answer(seed, max_tokens, json),
            choices: parsed.n.unwrap_or(1).clamp(1, 16) as u64,
        })
    }

    /// Tokens the rate window charges: several choices cost several answers.
    fn window_tokens(&self) -> u64 {
        self.prompt_tokens + self.first.completion_tokens * self.choices
    }
}

/// The quota, then the rate window, as providers check them before doing any work. Returns
/// the window's headroom for the limit headers, when it has a limit and the dialect says it.
fn admit(state: &State, asked: &Asked<'_>) -> Result<Option<(u64, Duration)>, Early> {
    let stats = &state.stats;
    // An exhausted account refuses everything, before any rate limit.
    if stats.ok.load(Relaxed) >= state.quota_after.load(Relaxed) {
        stats.refused.fetch_add(1, Relaxed);
        let (status, body) = state.config.dialect.exhausted();
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::TOO_MANY_REQUESTS);
        return Err(early(json_response(status, body)));
    }
    let mut window = state.window.lock().unwrap_or_else(|p| p.into_inner());
    if !window.is_limited() {
        return Ok(None);
    }
    // tokio's clock, so that a test can run the window over paused, simulated minutes.
    let now = tokio::time::Instant::now();
    if let Err(wait) = window.admit(now, asked.window_tokens()) {
        drop(window);
        stats.rate_limited.fetch_add(1, Relaxed);
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        return Err(early(rate_limited_response(
            state.config.dialect,
            secs.max(1),
        )));
    }
    Ok(state
        .config
        .dialect
        .sends_limit_headers()
        .then(|| window.headroom(now)))
}

/// This request's fault: the script's next step when there is a script, a 5xx in a storm,
/// else the configured draw.
fn pick_fault(
    state: &State,
    storm: bool,
    drawn: impl FnOnce() -> Option<Fault>,
) -> Result<Option<Fault>, Early> {
    let cfg = &state.config;
    if cfg.script.is_empty() {
        return Ok(if storm {
            Some(Fault::ServerError)
        } else {
            drawn()
        });
    }
    let step = cfg
        .script
        .get(state.script_pos.fetch_add(1, Relaxed) as usize)
        .copied();
    Ok(match step {
        None => drawn(),
        Some(Step::Ok) => None,
        Some(Step::RateLimited { retry_after_secs }) => {
            state.stats.rate_limited.fetch_add(1, Relaxed);
            return Err(early(rate_limited_response(cfg.dialect, retry_after_secs)));
        }
        Some(Step::ServerError) => Some(Fault::ServerError),
        Some(Step::Hang) => Some(Fault::Hang),
        Some(Step::Close) => Some(Fault::Close),
    })
}

/// The reply of a fault that replaces the answer (`None`: the answer is made, perhaps
/// spoiled later).
async fn fault_reply(
    state: &State,
    fault: Option<Fault>,
    storm: bool,
    draw: f64,
    echoed: Option<String>,
) -> Option<Reply> {
    let stats = &state.stats;
    let dialect = state.config.dialect;
    Some(match fault? {
        Fault::ServerError => {
            stats.server_errors.fetch_add(1, Relaxed);
            let (status, msg) = match (draw * 1e6) as u64 % 3 {
                _ if storm => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "service unavailable (storm)",
                ),
                0 => (StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
                1 => (StatusCode::BAD_GATEWAY, "upstream provider error"),
                _ => (StatusCode::SERVICE_UNAVAILABLE, "model overloaded"),
            };
            Ok(error_response(dialect, status, "server_error", msg))
        }
        Fault::Hang => {
            stats.hung.fetch_add(1, Relaxed);
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Err(std::io::Error::other("hung"))
        }
        Fault::Close => {
            stats.faults.fetch_add(1, Relaxed);
            Err(std::io::Error::other("simulated close"))
        }
        Fault::Garbage => {
            stats.faults.fetch_add(1, Relaxed);
            let mut r = Response::new(MockBody::full("<html><body>502 Bad Gateway</body></html>"));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
            Ok(r)
        }
        Fault::Error200 => {
            stats.faults.fetch_add(1, Relaxed);
            Ok(json_response(
                StatusCode::OK,
                r#"{"error":{"message":"upstream model overloaded","code":502}}"#,
            ))
        }
        Fault::RateLimitPlain => Ok(rate_limited_fault(state, false)),
        Fault::RateLimitDate => Ok(rate_limited_fault(state, true)),
        Fault::EchoKey => {
            stats.server_errors.fetch_add(1, Relaxed);
            let sent = echoed.unwrap_or_default();
            let msg = format!(
                "upstream rejected the credentials {}",
                sent.trim_start_matches("Bearer ")
            );
            Ok(error_response(
                dialect,
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                &msg,
            ))
        }
        _ => return None,
    })
}

/// A 429 without the dialect's usual hints; with `date`, a `Retry-After` HTTP date.
fn rate_limited_fault(state: &State, date: bool) -> Resp {
    state.stats.rate_limited.fetch_add(1, Relaxed);
    let mut r = error_response(
        state.config.dialect,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_exceeded",
        "slow down",
    );
    if date {
        // An HTTP date has whole seconds: "now" is at most a second in the past, so a
        // client that honours it waits no longer than the date says.
        let at = std::time::SystemTime::now();
        if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(at)) {
            r.headers_mut().insert(RETRY_AFTER, v);
        }
    }
    r
}

/// The answer: its choices, its usage (and cost, when the request or the simulator asks), and
/// the bill counted in the stats.
fn respond<'p>(
    state: &'p State,
    parsed: &'p ChatRequest,
    asked: &Asked<'_>,
    fault: Option<Fault>,
) -> ChatResponse<'p> {
    let n = state.next_id.fetch_add(1, Relaxed);
    let (choices, completion_tokens) = make_choices(parsed, asked, fault, n);
    let b = &state.config.billing;
    let served: &str = b.serve_as.as_deref().unwrap_or(&parsed.model);
    let prompt = asked.prompt_tokens.max(b.cached_prompt + b.cache_writes);
    // What the provider bills: every prompt token (cached, written, fresh), the visible
    // answer and the reasoning it left out of `completion_tokens`.
    let billed = crate::cost::Usage {
        prompt,
        completion: completion_tokens + b.hidden_reasoning,
        cached: b.cached_prompt,
        reasoning: b.hidden_reasoning,
        cache_write: b.cache_writes,
        ..Default::default()
    };
    let price = state.prices.get(served);
    let reported = state
        .config
        .cost_factor
        .or(parsed
            .usage
            .as_ref()
            .filter(|u| u.include)
            .map(|_| PROVIDER_FEE))
        .and_then(|factor| Some(price?.cost(&billed, asked.images as u32).usd() * factor));
    let stats = &state.stats;
    stats.images.fetch_add(asked.images, Relaxed);
    // The provider did the work: it counts as answered even if the body then goes wrong.
    stats.ok.fetch_add(1, Relaxed);
    if let Some(p) = price {
        stats
            .billed
            .fetch_add(p.cost(&billed, asked.images as u32).0, Relaxed);
    }
    stats.prompt_tokens.fetch_add(prompt, Relaxed);
    stats
        .completion_tokens
        .fetch_add(billed.completion, Relaxed);
    ChatResponse {
        id: format!("gen-mock-{n:016x}"),
        object: "chat.completion",
        created: state
            .started
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model: served,
        provider: "bulkprompt-mock",
        choices,
        usage: UsageOut {
            prompt_tokens: prompt,
            completion_tokens,
            total_tokens: prompt + billed.completion,
            cost: reported,
            prompt_tokens_details: (b.cached_prompt + b.cache_writes > 0).then(|| {
                serde_json::json!({"cached_tokens": b.cached_prompt, "cache_write_tokens": b.cache_writes})
            }),
            completion_tokens_details: (b.hidden_reasoning > 0)
                .then(|| serde_json::json!({"reasoning_tokens": b.hidden_reasoning})),
        },
    }
}

/// Every choice asked for, and their completion tokens together.
fn make_choices(
    parsed: &ChatRequest,
    asked: &Asked<'_>,
    fault: Option<Fault>,
    n: u64,
) -> (Vec<Choice>, u64) {
    let required = parsed.required_function();
    let mut completion_tokens = 0;
    let choices = (0..asked.choices)
        .map(|i| {
            let (content, finish_reason, tool_calls) =
                choice_content(asked, fault, &required, n, i);
            completion_tokens += match (&content, i) {
                (_, 0) if asked.schema.is_none() && required.is_none() => {
                    asked.first.completion_tokens
                }
                (Some(c), _) => approx_tokens(c.len()) as u64,
                (None, _) => 8,
            };
            Choice {
                index: i as u32,
                message: MessageOut {
                    role: "assistant",
                    content,
                    tool_calls,
                },
                finish_reason,
            }
        })
        .collect();
    (choices, completion_tokens)
}

/// Choice `i`'s content, finish reason and tool calls: a filtered answer, a tool call (asked
/// for, or the fault's), a schema's value (conforming, or not with the fault), or words.
fn choice_content(
    asked: &Asked<'_>,
    fault: Option<Fault>,
    required: &Option<(String, serde_json::Value)>,
    n: u64,
    i: u64,
) -> (Option<String>, &'static str, Option<serde_json::Value>) {
    let mut rng = fastrand::Rng::with_seed(asked.seed.wrapping_add(i));
    match (fault, required, asked.schema) {
        (Some(Fault::ContentFilter), _, _) => (Some(String::new()), "content_filter", None),
        (Some(Fault::ToolCalls), None, _) => (
            None,
            "tool_calls",
            Some(
                serde_json::json!([{"id": format!("call_{n}"), "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]),
            ),
        ),
        (_, Some((name, params)), _) => {
            let args = schema::conforming(params, &mut rng);
            (
                None,
                "tool_calls",
                Some(
                    serde_json::json!([{"id": format!("call_{n}_{i}"), "type": "function",
                    "function": {"name": name, "arguments": args.to_string()}}]),
                ),
            )
        }
        (_, None, Some(schema)) => {
            let value = if fault == Some(Fault::OffSchema) {
                schema::off_schema(schema, &mut rng)
            } else {
                schema::conforming(schema, &mut rng)
            };
            let text = if fault == Some(Fault::Fenced) {
                format!("```json\n{value:#}\n```")
            } else {
                value.to_string()
            };
            (Some(text), "stop", None)
        }
        (_, None, None) if i == 0 => (
            Some(asked.first.content.clone()),
            asked.first.finish_reason,
            None,
        ),
        (_, None, None) => {
            let a = content::answer(asked.seed.wrapping_add(i), asked.max_tokens, asked.json);
            (Some(a.content), a.finish_reason, None)
        }
    }
}

/// The answer on the wire: JSON or an event stream, spoiled by a body fault, with the limit
/// headers the dialect sends.
fn send(
    state: &State,
    parsed: &ChatRequest,
    response: &ChatResponse<'_>,
    fault: Option<Fault>,
    limit_headers: Option<(u64, Duration)>,
) -> Resp {
    let streamed = parsed.stream;
    let bytes = match streamed {
        false => Bytes::from(serde_json::to_vec(response).unwrap_or_default()),
        true => {
            let usage = parsed
                .stream_options
                .as_ref()
                .is_some_and(|o| o["include_usage"] == true);
            event_stream(response, usage)
        }
    };
    let mut r = match fault {
        Some(Fault::Truncated) => {
            state.stats.faults.fetch_add(1, Relaxed);
            Response::new(MockBody::cut(bytes))
        }
        Some(Fault::SlowBody) => {
            state.stats.faults.fetch_add(1, Relaxed);
            Response::new(MockBody::slow(bytes, Duration::from_secs(5)))
        }
        _ => Response::new(MockBody::full(bytes)),
    };
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(match streamed {
            true => "text/event-stream",
            false => "application/json",
        }),
    );
    limit_header_values(&state.config, r.headers_mut(), limit_headers);
    r
}

/// The limit it enforces, as providers say it (or the one it was told to advertise), and the
/// window's headroom.
fn limit_header_values(
    cfg: &MockConfig,
    h: &mut hyper::HeaderMap,
    headroom: Option<(u64, Duration)>,
) {
    if cfg.dialect.sends_limit_headers() {
        let per_minute = cfg.window == window::MINUTE;
        if let Some(n) = cfg.advertise_rpm.or(cfg.rpm.filter(|_| per_minute)) {
            h.insert("x-ratelimit-limit-requests", HeaderValue::from(n));
        }
        if let Some(n) = cfg.tpm.filter(|_| per_minute) {
            h.insert("x-ratelimit-limit-tokens", HeaderValue::from(n));
        }
    }
    if let Some((remaining, reset)) = headroom {
        h.insert(
            "x-ratelimit-remaining-requests",
            HeaderValue::from(remaining),
        );
        if let Ok(v) = HeaderValue::from_str(&format!("{}ms", reset.as_millis())) {
            h.insert("x-ratelimit-reset-requests", v);
        }
    }
}

/// A response as the server-sent events of a streamed answer: each choice's content in two
/// deltas, its tool calls in one, a last chunk with every `finish_reason`, the usage chunk
/// when `stream_options.include_usage` asked for it, and `[DONE]`.
fn event_stream(response: &ChatResponse<'_>, usage: bool) -> Bytes {
    let mut out = String::new();
    let mut send = |chunk: serde_json::Value| {
        out.push_str("data: ");
        out.push_str(&chunk.to_string());
        out.push_str("\n\n");
    };
    let head = |choices: serde_json::Value| {
        serde_json::json!({"id": response.id, "object": "chat.completion.chunk",
            "created": response.created, "model": response.model, "choices": choices})
    };
    for c in &response.choices {
        let text = c.message.content.clone().unwrap_or_default();
        let mut cut = text.len() / 2;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        for (i, piece) in [&text[..cut], &text[cut..]].into_iter().enumerate() {
            let mut delta = serde_json::json!({"content": piece});
            if i == 0 {
                delta["role"] = "assistant".into();
                if c.message.content.is_none() {
                    delta["content"] = serde_json::Value::Null;
                }
            }
            if let (1, Some(calls)) = (i, &c.message.tool_calls) {
                let calls: Vec<serde_json::Value> = calls
                    .as_array()
                    .into_iter()
                    .flatten()
                    .enumerate()
                    .map(|(n, t)| {
                        let mut t = t.clone();
                        t["index"] = n.into();
                        t
                    })
                    .collect();
                delta["tool_calls"] = calls.into();
            }
            send(head(
                serde_json::json!([{"index": c.index, "delta": delta, "finish_reason": null}]),
            ));
        }
    }
    let ends: Vec<serde_json::Value> = response
        .choices
        .iter()
        .map(|c| serde_json::json!({"index": c.index, "delta": {}, "finish_reason": c.finish_reason}))
        .collect();
    send(head(ends.into()));
    if usage {
        let mut last = head(serde_json::json!([]));
        last["usage"] = serde_json::to_value(&response.usage).unwrap_or_default();
        send(last);
    }
    out.push_str("data: [DONE]\n\n");
    Bytes::from(out)
}
