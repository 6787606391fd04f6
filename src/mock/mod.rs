//! The offline simulator of an OpenAI-compatible provider (`bulkprompt serve-mock`, and
//! in-process for `--endpoint mock`). It answers `POST /v1/chat/completions` and
//! `GET /v1/models` in OpenAI/OpenRouter shape, enforces `--rpm`/`--tpm` over a sliding
//! 60-second window, injects failures at a given rate, and counts what it saw
//! (`GET /mock/stats`), so tests can assert on requests made. It is built on bare hyper to be
//! fast: benchmarks use it as the server, and it must not hide the runner's costs.

mod batch;
mod body;
mod content;
mod dialect;
mod faults;
mod schema;
mod window;

pub use batch::{BatchConfig, BatchStats};
pub use dialect::Dialect;
pub use faults::{Fault, Faults, Storm};
pub use window::SlidingWindow;

use body::MockBody;

use crate::cost::PriceTable;
use crate::job::approx_tokens;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// How the simulator behaves.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// Mean answer latency; each answer takes it within ±25%.
    pub latency: Duration,
    /// Faults injected by rate.
    pub faults: Faults,
    /// Periodic outages (503 for everyone).
    pub storm: Option<Storm>,
    /// Requests per sliding minute before 429.
    pub rpm: Option<u64>,
    /// Tokens (prompt + completion) per sliding minute before 429.
    pub tpm: Option<u64>,
    /// The window `rpm` and `tpm` count over: a minute, shorter in quick tests.
    pub window: Duration,
    pub seed: u64,
    /// When set, requests must carry `Authorization: Bearer <key>` or get 401.
    pub api_key: Option<crate::secret::ApiKey>,
    /// Keep every chat request body, for tests to inspect ([`MockServer::bodies`]).
    pub capture_bodies: bool,
    /// Report `usage.cost` on every answer at this multiple of the price table: a provider
    /// whose bill differs from the list prices (a new surcharge, a wrong table).
    pub cost_factor: Option<f64>,
    /// Whose manners: error shapes, rate-limit headers, what an exhausted account says.
    pub dialect: Dialect,
    /// Requests a minute to advertise in `x-ratelimit-limit-requests` on every answer (in the
    /// dialects that send such headers), whatever `rpm` enforces.
    pub advertise_rpm: Option<u64>,
    /// After this many answered requests the account is exhausted: every request gets the
    /// dialect's refusal (OpenAI's `insufficient_quota`, OpenRouter's 402, Gemini's per-day
    /// quota, AIML's 403).
    pub quota_after: Option<u64>,
    /// What the first requests get, in arrival order, one step each; later requests are served
    /// as the rest of the configuration says. Tests assert exact sequences with it instead of
    /// relying on fault rates.
    pub script: Vec<Step>,
    /// Answer 404 for a model the simulator's price table does not know, as providers do.
    pub refuse_unknown_models: bool,
    /// The batch API's timing and failures.
    pub batch: BatchConfig,
    /// Like a self-hosted server: this many requests are served at once (each taking
    /// `latency`); the rest wait in line for a slot, their wait part of their latency.
    pub slots: Option<usize>,
}

/// One scripted answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A normal answer, whatever the fault rates say.
    Ok,
    /// 429 with `Retry-After` in whole seconds.
    RateLimited { retry_after_secs: u64 },
    /// 500.
    ServerError,
    /// Accept and never answer.
    Hang,
    /// Close the connection without answering.
    Close,
}

impl MockConfig {
    /// A simulator with one fault at `rate`.
    pub fn with_fault(fault: Fault, rate: f64) -> Self {
        let mut c = MockConfig::default();
        c.faults.set(fault, rate);
        c
    }
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            latency: Duration::ZERO,
            faults: Faults::default(),
            storm: None,
            rpm: None,
            tpm: None,
            window: window::MINUTE,
            seed: 0,
            api_key: None,
            capture_bodies: false,
            cost_factor: None,
            dialect: Dialect::OpenAi,
            advertise_rpm: None,
            quota_after: None,
            script: Vec::new(),
            refuse_unknown_models: false,
            batch: BatchConfig::default(),
            slots: None,
        }
    }
}

/// What the simulator has seen since it started.
#[derive(Debug, Default)]
pub struct Stats {
    /// Chat-completion requests received.
    pub requests: AtomicU64,
    /// Answered 200 with a completion.
    pub ok: AtomicU64,
    pub rate_limited: AtomicU64,
    pub server_errors: AtomicU64,
    pub hung: AtomicU64,
    pub bad_requests: AtomicU64,
    pub unauthorized: AtomicU64,
    /// Refused because the account is exhausted (`quota_after`).
    pub refused: AtomicU64,
    /// Other injected faults (close, garbage, error in a 200, cut or slow body).
    pub faults: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    /// `image_url` parts received in answered requests' messages.
    pub images: AtomicU64,
    /// What the answers cost at the simulator's price table, in picodollars: what a provider
    /// would bill.
    pub billed: AtomicU64,
}

/// A snapshot of [`Stats`], as `GET /mock/stats` returns it.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub requests: u64,
    pub ok: u64,
    pub rate_limited: u64,
    pub server_errors: u64,
    pub hung: u64,
    pub bad_requests: u64,
    pub unauthorized: u64,
    #[serde(default)]
    pub refused: u64,
    pub faults: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    #[serde(default)]
    pub images: u64,
    /// Picodollars ([`crate::cost::Money`]).
    #[serde(default)]
    pub billed: u64,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            requests: self.requests.load(Relaxed),
            ok: self.ok.load(Relaxed),
            rate_limited: self.rate_limited.load(Relaxed),
            server_errors: self.server_errors.load(Relaxed),
            hung: self.hung.load(Relaxed),
            bad_requests: self.bad_requests.load(Relaxed),
            unauthorized: self.unauthorized.load(Relaxed),
            refused: self.refused.load(Relaxed),
            faults: self.faults.load(Relaxed),
            prompt_tokens: self.prompt_tokens.load(Relaxed),
            completion_tokens: self.completion_tokens.load(Relaxed),
            images: self.images.load(Relaxed),
            billed: self.billed.load(Relaxed),
        }
    }
}

struct State {
    config: MockConfig,
    stats: Arc<Stats>,
    window: Mutex<SlidingWindow>,
    /// The draw for faults and jitter, and the fault rates (changeable while serving).
    chance: Mutex<(fastrand::Rng, Faults)>,
    models_json: Bytes,
    prices: PriceTable,
    started: std::time::SystemTime,
    next_id: AtomicU64,
    bodies: Mutex<Vec<Bytes>>,
    started_at: Instant,
    /// Requests that took a step of the script.
    script_pos: AtomicU64,
    /// `quota_after`, changeable while serving (`u64::MAX`: none).
    quota_after: AtomicU64,
    /// The batch API's files and batches.
    batch_store: Mutex<batch::Store>,
    /// `slots`: the server's places.
    slots: Option<Arc<tokio::sync::Semaphore>>,
}

/// A running simulator. Dropping it stops accepting connections.
pub struct MockServer {
    addr: SocketAddr,
    state: Arc<State>,
    stats: Arc<Stats>,
    accept: tokio::task::JoinHandle<()>,
}

impl MockServer {
    /// Binds `addr` (use port 0 for any free port) and serves on the current runtime.
    pub async fn start(addr: SocketAddr, config: MockConfig) -> std::io::Result<MockServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(Stats::default());
        let state = Arc::new(State {
            window: Mutex::new(SlidingWindow::with_window(
                config.rpm,
                config.tpm,
                config.window,
            )),
            chance: Mutex::new((fastrand::Rng::with_seed(config.seed), config.faults)),
            models_json: models_json(&mock_prices()),
            prices: mock_prices(),
            started: std::time::SystemTime::now(),
            next_id: AtomicU64::new(0),
            bodies: Mutex::new(Vec::new()),
            started_at: Instant::now(),
            script_pos: AtomicU64::new(0),
            quota_after: AtomicU64::new(config.quota_after.unwrap_or(u64::MAX)),
            batch_store: Mutex::new(batch::Store::default()),
            slots: config
                .slots
                .map(|n| Arc::new(tokio::sync::Semaphore::new(n.max(1)))),
            stats: stats.clone(),
            config,
        });
        let accept_state = state.clone();
        let accept = tokio::spawn(async move {
            let state = accept_state;
            loop {
                let (stream, _) = match listener.accept().await {
                    Ok(s) => s,
                    Err(_) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        // An `Err` makes hyper drop the connection without an answer.
                        async move { handle(&state, req).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(MockServer {
            addr,
            state,
            stats,
            accept,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to give `--endpoint`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// What the batch API has seen.
    pub fn batch_stats(&self) -> BatchStats {
        batch::stats(&self.state)
    }

    /// Exhausts the account after `n` answers in all (`None`: never), as if credits were added
    /// or a quota reset.
    pub fn set_quota_after(&self, n: Option<u64>) {
        self.state.quota_after.store(n.unwrap_or(u64::MAX), Relaxed);
    }

    /// Changes the share of requests answered 5xx, while serving.
    pub fn set_fail_rate(&self, rate: f64) {
        let mut c = self.state.chance.lock().unwrap_or_else(|p| p.into_inner());
        c.1.set(Fault::ServerError, rate);
    }

    /// The chat request bodies received (only with `capture_bodies`).
    pub fn bodies(&self) -> Vec<Bytes> {
        self.state
            .bodies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

type Resp = Response<MockBody>;
/// An answer, or `Err` to close the connection without one.
type Reply = Result<Resp, std::io::Error>;

fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(MockBody::full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A 400 for a request the provider would refuse, counted.
fn bad_request(state: &State, message: &str) -> Resp {
    state.stats.bad_requests.fetch_add(1, Relaxed);
    error_response(
        state.config.dialect,
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        message,
    )
}

fn error_response(d: Dialect, status: StatusCode, kind: &str, message: &str) -> Resp {
    json_response(status, d.error_body(status.as_u16(), kind, message))
}

/// A 429 asking to wait `secs`, in the dialect's shape (with `Retry-After` where it sends one).
fn rate_limited_response(d: Dialect, secs: u64) -> Resp {
    let (body, header) = d.rate_limited(secs);
    let mut r = json_response(StatusCode::TOO_MANY_REQUESTS, body);
    if header {
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

async fn handle(state: &State, req: Request<Incoming>) -> Reply {
    let path = req.uri().path();
    // The batch API, under /v1 or Gemini's /v1beta/openai.
    let rest = path
        .strip_prefix("/v1beta/openai")
        .or_else(|| path.strip_prefix("/v1"))
        .unwrap_or(path);
    if rest.starts_with("/files") || rest.starts_with("/batches") {
        let (method, rest, query) = (
            req.method().clone(),
            rest.to_string(),
            req.uri().query().map(str::to_string),
        );
        let content_type = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = match Limited::new(req.into_body(), 512 << 20).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return Err(std::io::Error::other("body too large")),
        };
        if let Some(r) =
            batch::handle(state, &method, &rest, query.as_deref(), content_type, body).await
        {
            return Ok(r);
        }
        return Ok(error_response(
            state.config.dialect,
            StatusCode::NOT_FOUND,
            "not_found",
            "no such route",
        ));
    }
    Ok(match (req.method(), path) {
        (&Method::POST, "/v1/chat/completions" | "/chat/completions") => {
            return chat(state, req).await
        }
        (&Method::GET, "/v1/models" | "/models") => {
            json_response(StatusCode::OK, state.models_json.clone())
        }
        (&Method::GET, "/mock/stats") => json_response(
            StatusCode::OK,
            serde_json::to_vec(&state.stats.snapshot()).unwrap_or_default(),
        ),
        (&Method::GET, "/mock/batch-stats") => json_response(
            StatusCode::OK,
            serde_json::to_vec(&batch::stats(state)).unwrap_or_default(),
        ),
        _ => error_response(
            state.config.dialect,
            StatusCode::NOT_FOUND,
            "not_found",
            "no such route",
        ),
    })
}

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
}

async fn chat(state: &State, req: Request<Incoming>) -> Reply {
    let stats = &state.stats;
    stats.requests.fetch_add(1, Relaxed);
    let echoed = (state.config.faults.rate(Fault::EchoKey) > 0.0).then(|| {
        let sent = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
        String::from_utf8_lossy(sent.unwrap_or_default()).into_owned()
    });
    if let Some(key) = &state.config.api_key {
        let expected = format!("Bearer {}", key.expose());
        let got = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
        if got != Some(expected.as_bytes()) {
            stats.unauthorized.fetch_add(1, Relaxed);
            // Like some providers, echo what was sent: the runner must scrub it.
            let sent = got.map(String::from_utf8_lossy).unwrap_or_default();
            let msg = format!(
                "invalid API key provided: {}",
                sent.trim_start_matches("Bearer ")
            );
            return Ok(error_response(
                state.config.dialect,
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                &msg,
            ));
        }
    }
    let body = match Limited::new(req.into_body(), 64 << 20).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            stats.bad_requests.fetch_add(1, Relaxed);
            return Ok(error_response(
                state.config.dialect,
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "body too large",
            ));
        }
    };
    if state.config.capture_bodies {
        state
            .bodies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(body.clone());
    }
    let parsed: ChatRequest = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return Ok(bad_request(state, &e.to_string()));
        }
    };
    if parsed.messages.is_empty() {
        return Ok(bad_request(state, "messages must not be empty"));
    }
    if parsed
        .temperature
        .is_some_and(|t| !(0.0..=2.0).contains(&t))
    {
        return Ok(bad_request(state, "temperature must be between 0 and 2"));
    }

    let prompt_tokens = approx_tokens(
        parsed
            .messages
            .iter()
            .map(|m| crate::job::request::content_chars(Some(&m.content)) + 16)
            .sum(),
    ) as u64;
    if state.config.refuse_unknown_models && state.prices.get(&parsed.model).is_none() {
        stats.bad_requests.fetch_add(1, Relaxed);
        return Ok(error_response(
            state.config.dialect,
            StatusCode::NOT_FOUND,
            "model_not_found",
            &format!(
                "The model `{}` does not exist or you do not have access to it.",
                parsed.model
            ),
        ));
    }
    let images = match count_images(&parsed.messages) {
        Ok(n) => n,
        Err(e) => {
            return Ok(bad_request(state, &e));
        }
    };
    let json = parsed
        .response_format
        .as_ref()
        .is_some_and(|f| f.kind != "text");
    let schema = parsed
        .response_format
        .as_ref()
        .filter(|f| f.kind == "json_schema")
        .and_then(|f| f.json_schema.as_ref())
        .and_then(|j| j.schema.as_ref());
    let max_tokens = parsed.max_completion_tokens.or(parsed.max_tokens);
    let seed = xxhash_rust::xxh3::xxh3_64(&body);
    let answer = content::answer(seed, max_tokens, json);
    let choices_wanted = parsed.n.unwrap_or(1).clamp(1, 16) as u64;
    // Several choices cost several answers (a fair estimate for the window's tokens).
    let total = prompt_tokens + answer.completion_tokens * choices_wanted;

    // An exhausted account refuses everything, before any rate limit.
    if stats.ok.load(Relaxed) >= state.quota_after.load(Relaxed) {
        stats.refused.fetch_add(1, Relaxed);
        let (status, body) = state.config.dialect.exhausted();
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::TOO_MANY_REQUESTS);
        return Ok(json_response(status, body));
    }
    // Rate limits first, as providers check them before doing any work.
    let mut limit_headers = None;
    {
        let mut window = state.window.lock().unwrap_or_else(|p| p.into_inner());
        if window.is_limited() {
            // tokio's clock, so that a test can run the window over paused, simulated minutes.
            let now = tokio::time::Instant::now();
            if let Err(wait) = window.admit(now, total) {
                drop(window);
                stats.rate_limited.fetch_add(1, Relaxed);
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                return Ok(rate_limited_response(state.config.dialect, secs.max(1)));
            }
            if state.config.dialect.sends_limit_headers() {
                limit_headers = Some(window.headroom(now));
            }
        }
    }

    let (draw, jitter, faults) = {
        let mut c = state.chance.lock().unwrap_or_else(|p| p.into_inner());
        (c.0.f64(), c.0.f64(), c.1)
    };
    let cfg = &state.config;
    // A place in one of the server's slots, held while the answer is made.
    let _slot = match &state.slots {
        Some(s) => s.clone().acquire_owned().await.ok(),
        None => None,
    };
    if !cfg.latency.is_zero() {
        tokio::time::sleep(cfg.latency.mul_f64(0.75 + jitter * 0.5)).await;
    }
    let storm = cfg
        .storm
        .is_some_and(|s| s.raging(state.started_at.elapsed()));
    let step = if cfg.script.is_empty() {
        None
    } else {
        cfg.script
            .get(state.script_pos.fetch_add(1, Relaxed) as usize)
            .copied()
    };
    let fault = if let Some(step) = step {
        match step {
            Step::Ok => None,
            Step::RateLimited { retry_after_secs } => {
                stats.rate_limited.fetch_add(1, Relaxed);
                return Ok(rate_limited_response(cfg.dialect, retry_after_secs));
            }
            Step::ServerError => Some(Fault::ServerError),
            Step::Hang => Some(Fault::Hang),
            Step::Close => Some(Fault::Close),
        }
    } else if storm {
        Some(Fault::ServerError)
    } else {
        faults.pick(draw)
    };
    let server_error = |which: f64| {
        stats.server_errors.fetch_add(1, Relaxed);
        let (status, msg) = match (which * 1e6) as u64 % 3 {
            _ if storm => (
                StatusCode::SERVICE_UNAVAILABLE,
                "service unavailable (storm)",
            ),
            0 => (StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
            1 => (StatusCode::BAD_GATEWAY, "upstream provider error"),
            _ => (StatusCode::SERVICE_UNAVAILABLE, "model overloaded"),
        };
        Ok(error_response(
            state.config.dialect,
            status,
            "server_error",
            msg,
        ))
    };
    let rate_limited = |date: bool| {
        stats.rate_limited.fetch_add(1, Relaxed);
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
        Ok(r)
    };
    match fault {
        Some(Fault::ServerError) => return server_error(draw),
        Some(Fault::Hang) => {
            stats.hung.fetch_add(1, Relaxed);
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return Err(std::io::Error::other("hung"));
        }
        Some(Fault::Close) => {
            stats.faults.fetch_add(1, Relaxed);
            return Err(std::io::Error::other("simulated close"));
        }
        Some(Fault::Garbage) => {
            stats.faults.fetch_add(1, Relaxed);
            let mut r = Response::new(MockBody::full("<html><body>502 Bad Gateway</body></html>"));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
            return Ok(r);
        }
        Some(Fault::Error200) => {
            stats.faults.fetch_add(1, Relaxed);
            return Ok(json_response(
                StatusCode::OK,
                r#"{"error":{"message":"upstream model overloaded","code":502}}"#,
            ));
        }
        Some(Fault::RateLimitPlain) => return rate_limited(false),
        Some(Fault::RateLimitDate) => return rate_limited(true),
        Some(Fault::EchoKey) => {
            stats.server_errors.fetch_add(1, Relaxed);
            let sent = echoed.unwrap_or_default();
            let msg = format!(
                "upstream rejected the credentials {}",
                sent.trim_start_matches("Bearer ")
            );
            return Ok(error_response(
                state.config.dialect,
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                &msg,
            ));
        }
        _ => {}
    }

    let n = state.next_id.fetch_add(1, Relaxed);
    let required = parsed.required_function();
    let mut completion_tokens = 0;
    let choices: Vec<Choice> = (0..choices_wanted)
        .map(|i| {
            let mut rng = fastrand::Rng::with_seed(seed.wrapping_add(i));
            let (content, finish_reason, tool_calls): (Option<String>, &'static str, _) =
                match (fault, &required, schema) {
                    (Some(Fault::ContentFilter), _, _) => (Some(String::new()), "content_filter", None),
                    (Some(Fault::ToolCalls), None, _) => (
                        None,
                        "tool_calls",
                        Some(serde_json::json!([{"id": format!("call_{n}"), "type": "function", "function": {"name": "lookup", "arguments": "{}"}}])),
                    ),
                    (_, Some((name, params)), _) => {
                        let args = schema::conforming(params, &mut rng);
                        (
                            None,
                            "tool_calls",
                            Some(serde_json::json!([{"id": format!("call_{n}_{i}"), "type": "function",
                                "function": {"name": name, "arguments": args.to_string()}}])),
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
                    (_, None, None) if i == 0 => {
                        (Some(answer.content.clone()), answer.finish_reason, None)
                    }
                    (_, None, None) => {
                        let a = content::answer(seed.wrapping_add(i), max_tokens, json);
                        (Some(a.content), a.finish_reason, None)
                    }
                };
            completion_tokens += match (&content, i) {
                (_, 0) if schema.is_none() && required.is_none() => answer.completion_tokens,
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
    let answer = content::Answer {
        completion_tokens,
        ..answer
    };
    let total = prompt_tokens + answer.completion_tokens;
    stats.images.fetch_add(images, Relaxed);
    let response = ChatResponse {
        id: format!("gen-mock-{n:016x}"),
        object: "chat.completion",
        created: state
            .started
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model: &parsed.model,
        provider: "bulkprompt-mock",
        choices,
        usage: UsageOut {
            prompt_tokens,
            completion_tokens: answer.completion_tokens,
            total_tokens: total,
            cost: state
                .config
                .cost_factor
                .or(parsed
                    .usage
                    .as_ref()
                    .filter(|u| u.include)
                    .map(|_| PROVIDER_FEE))
                .and_then(|factor| Some((factor, state.prices.get(&parsed.model)?)))
                .map(|(factor, p)| {
                    let u = crate::cost::Usage {
                        prompt: prompt_tokens,
                        completion: answer.completion_tokens,
                        ..Default::default()
                    };
                    p.cost(&u, images as u32).usd() * factor
                }),
        },
    };
    // The provider did the work: it counts as answered even if the body then goes wrong.
    stats.ok.fetch_add(1, Relaxed);
    if let Some(p) = state.prices.get(&parsed.model) {
        let u = crate::cost::Usage {
            prompt: prompt_tokens,
            completion: answer.completion_tokens,
            ..Default::default()
        };
        stats.billed.fetch_add(p.cost(&u, images as u32).0, Relaxed);
    }
    stats.prompt_tokens.fetch_add(prompt_tokens, Relaxed);
    stats
        .completion_tokens
        .fetch_add(answer.completion_tokens, Relaxed);
    let streamed = parsed.stream;
    let bytes = match streamed {
        false => Bytes::from(serde_json::to_vec(&response).unwrap_or_default()),
        true => {
            let usage = parsed
                .stream_options
                .as_ref()
                .is_some_and(|o| o["include_usage"] == true);
            event_stream(&response, usage)
        }
    };
    let mut r = match fault {
        Some(Fault::Truncated) => {
            stats.faults.fetch_add(1, Relaxed);
            Response::new(MockBody::cut(bytes))
        }
        Some(Fault::SlowBody) => {
            stats.faults.fetch_add(1, Relaxed);
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
    // The limit it enforces, as providers say it (or the one it was told to advertise).
    if cfg.dialect.sends_limit_headers() {
        let per_minute = cfg.window == window::MINUTE;
        if let Some(n) = cfg.advertise_rpm.or(cfg.rpm.filter(|_| per_minute)) {
            r.headers_mut()
                .insert("x-ratelimit-limit-requests", HeaderValue::from(n));
        }
        if let Some(n) = cfg.tpm.filter(|_| per_minute) {
            r.headers_mut()
                .insert("x-ratelimit-limit-tokens", HeaderValue::from(n));
        }
    }
    if let Some((remaining, reset)) = limit_headers {
        let h = r.headers_mut();
        h.insert(
            "x-ratelimit-remaining-requests",
            HeaderValue::from(remaining),
        );
        if let Ok(v) = HeaderValue::from_str(&format!("{}ms", reset.as_millis())) {
            h.insert("x-ratelimit-reset-requests", v);
        }
    }
    Ok(r)
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

/// What the simulator charges when asked to report cost: its price table plus 5%, like a
/// provider whose own accounting differs from list prices, so tests can tell the two apart.
pub const PROVIDER_FEE: f64 = 1.05;

/// Models the simulator lists: the embedded table plus one model only it knows, so
/// `prices --sync` has something to add.
pub fn mock_prices() -> PriceTable {
    let mut t = PriceTable::embedded();
    t.insert(
        MOCK_ONLY_MODEL,
        crate::cost::Price {
            input: 1_000_000,
            output: 3_000_000,
            cached_input: Some(250_000),
            image: None,
            batch_permille: None,
        },
    );
    t
}

/// A model the simulator lists that the embedded table does not: $1.00 / $3.00 per million.
pub const MOCK_ONLY_MODEL: &str = "bulkprompt/mock-large";

/// `GET /v1/models` in OpenRouter's shape: prices per token as decimal strings.
fn models_json(prices: &PriceTable) -> Bytes {
    let per_token = |pico: u64| format!("{:.12}", pico as f64 / 1e12);
    let data: Vec<serde_json::Value> = prices
        .iter()
        .map(|(id, p)| {
            serde_json::json!({
                "id": id,
                "name": id,
                "context_length": 1_048_576,
                "pricing": {
                    "prompt": per_token(p.input),
                    "completion": per_token(p.output),
                    "input_cache_read": p.cached_input.map(per_token),
                    "image": p.image.map(per_token),
                },
            })
        })
        .collect();
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({ "object": "list", "data": data }))
            .unwrap_or_default(),
    )
}
