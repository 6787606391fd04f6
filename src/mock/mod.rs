//! The offline simulator of an OpenAI-compatible provider (`bulkprompt serve-mock`, and
//! in-process for `--endpoint mock`). It answers `POST /v1/chat/completions` and
//! `GET /v1/models` in OpenAI/OpenRouter shape, enforces `--rpm`/`--tpm` over a sliding
//! 60-second window, injects failures at a given rate, and counts what it saw
//! (`GET /mock/stats`), so tests can assert on requests made. It is built on bare hyper to be
//! fast: benchmarks use it as the server, and it must not hide the runner's costs.

mod batch;
mod body;
mod chat;
mod content;
mod dialect;
mod faults;
mod listen;
mod schema;
mod window;

pub use batch::{BatchConfig, BatchStats};
pub use dialect::Dialect;
pub use faults::{Fault, Faults, Storm};
pub use window::SlidingWindow;

use body::MockBody;

use crate::cost::PriceTable;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// How the simulator bills, beyond its price table.
    pub billing: Billing,
}

/// Usage the way real providers report it, each billed as they bill it.
#[derive(Debug, Clone, Default)]
pub struct Billing {
    /// Answer as this model (an auto-router, a fallback at the provider, a server that
    /// ignores the name), billed at its price.
    pub serve_as: Option<String>,
    /// Reasoning tokens each answer used and left out of `completion_tokens` (in
    /// `completion_tokens_details.reasoning_tokens` and `total_tokens`, as gateways in front
    /// of Gemini report them), billed as output.
    pub hidden_reasoning: u64,
    /// Prompt tokens of each answer read from the cache (`prompt_tokens_details.cached_tokens`),
    /// billed at the cached price.
    pub cached_prompt: u64,
    /// Prompt tokens of each answer written to the cache (OpenRouter's `cache_write_tokens`),
    /// billed at the write price.
    pub cache_writes: u64,
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
            billing: Billing::default(),
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
        let listener = listen::bind(addr)?;
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
            return chat::chat(state, req).await
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
            cache_write: None,
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
