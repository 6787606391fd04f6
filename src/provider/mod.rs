//! The OpenAI-compatible HTTP client: one pooled reqwest client (rustls, keep-alive pool sized
//! to the concurrency), the headers every request carries, and one attempt at a time; chat
//! completions to a plain-HTTP endpoint with no proxy go through hyper directly (`direct.rs`).
//! It does not decide anything: [`classify()`] judges what an attempt produced.

pub mod classify;
mod direct;
mod heard;
mod http1;
mod pacific;
pub mod refusal;
pub mod response;
mod scan;
pub mod stream;

pub use classify::{classify, Attempt, ErrorKind, Verdict};
pub use response::Completion;

use crate::secret::{ApiKey, Scrubber};
use bytes::Bytes;
use direct::Received;
use heard::Heard;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use std::time::{Duration, Instant};

/// Default cap on a response body.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 16 << 20;

/// How to reach the provider.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Base URL, e.g. `https://openrouter.ai/api/v1`; `/chat/completions` is appended.
    pub base_url: String,
    pub api_key: Option<ApiKey>,
    /// Extra headers (OpenRouter's `HTTP-Referer`, `X-Title`, anything from the spec).
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    /// Idle connections kept per host; the concurrency.
    pub pool_size: usize,
    pub max_response_bytes: usize,
    /// The run's secrets, scrubbed from every answer and error text as it arrives.
    pub scrubber: Scrubber,
}

/// Problems building the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint is not a usable URL.
    #[error("endpoint {url:?}: {message}")]
    BadEndpoint { url: String, message: String },
    /// A header name or value is not valid HTTP.
    #[error("header {name:?}: {message}")]
    BadHeader { name: String, message: String },
    /// The TLS/HTTP stack could not be set up.
    #[error("HTTP client: {0}")]
    Build(String),
}

/// Sends chat-completion requests.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// Chat completions without reqwest, where the endpoint allows.
    direct: Option<direct::Direct>,
    url: reqwest::Url,
    /// The base URL, `/` at the end, for the API's other endpoints (files, batches).
    base: reqwest::Url,
    max_response_bytes: usize,
    scrubber: Scrubber,
}

/// `https://host/v1` + `/chat/completions`, without doubling slashes.
pub fn completions_url(base: &str) -> String {
    format!("{}/chat/completions", base.trim_end_matches('/'))
}

impl Client {
    pub fn new(cfg: &ClientConfig) -> Result<Self, ClientError> {
        // reqwest is built without a bundled crypto provider; ring is ours. A second call
        // finds one installed and changes nothing.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url_text = completions_url(&cfg.base_url);
        let url = reqwest::Url::parse(&url_text).map_err(|e| ClientError::BadEndpoint {
            url: cfg.base_url.clone(),
            message: e.to_string(),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ClientError::BadEndpoint {
                url: cfg.base_url.clone(),
                message: "must start with http:// or https://".into(),
            });
        }
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in &cfg.headers {
            let bad = |m: String| ClientError::BadHeader {
                name: name.clone(),
                message: m,
            };
            let n = HeaderName::from_bytes(name.as_bytes()).map_err(|e| bad(e.to_string()))?;
            let v = HeaderValue::from_str(value).map_err(|e| bad(e.to_string()))?;
            headers.insert(n, v);
        }
        if let Some(key) = &cfg.api_key {
            let mut v =
                HeaderValue::from_str(&format!("Bearer {}", key.expose())).map_err(|_| {
                    ClientError::BadHeader {
                        name: "Authorization".into(),
                        message: "the API key holds characters that cannot go in a header".into(),
                    }
                })?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        let user_agent = concat!("bulkprompt/", env!("CARGO_PKG_VERSION"));
        let mut all = headers.clone();
        all.insert(
            reqwest::header::USER_AGENT,
            HeaderValue::from_static(user_agent),
        );
        let direct = direct::Direct::for_url(&url, &all, cfg.timeout, cfg.pool_size);
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(30)))
            .pool_max_idle_per_host(cfg.pool_size)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .user_agent(user_agent)
            .build()
            .map_err(|e| ClientError::Build(e.to_string()))?;
        let base = reqwest::Url::parse(&format!("{}/", cfg.base_url.trim_end_matches('/')))
            .map_err(|e| ClientError::BadEndpoint {
                url: cfg.base_url.clone(),
                message: e.to_string(),
            })?;
        Ok(Client {
            http,
            direct,
            url,
            base,
            max_response_bytes: cfg.max_response_bytes,
            scrubber: cfg.scrubber.clone(),
        })
    }

    /// One attempt: sends `body` and reads the answer (up to the size cap). Every text in the
    /// result (body, transport error) has the run's secrets scrubbed out already.
    pub async fn send(&self, body: &Bytes) -> (Attempt, Duration) {
        let started = Instant::now();
        let mut attempt = self.try_send(body).await;
        match &mut attempt {
            Attempt::Http { body, .. } => *body = self.scrubber.scrub_bytes(std::mem::take(body)),
            Attempt::Transport { message, .. } => {
                *message = self.scrubber.scrub(std::mem::take(message))
            }
            Attempt::TooLarge { .. } => {}
        }
        (attempt, started.elapsed())
    }

    async fn try_send(&self, body: &Bytes) -> Attempt {
        let limit = self.max_response_bytes;
        let received = match &self.direct {
            Some(d) => d.post(body, limit).await,
            // Boxed as the direct client's exchange is: see `Direct::post`.
            None => Box::pin(self.via_reqwest(body.clone())).await,
        };
        match received {
            Received::Answer {
                status,
                heard,
                body,
            } => answer(status, heard, body),
            Received::TooLarge { status } => Attempt::TooLarge { status, limit },
            Received::Failed { message, timed_out } => Attempt::Transport {
                kind: match timed_out {
                    true => ErrorKind::Timeout,
                    false => ErrorKind::Connection,
                },
                message,
            },
        }
    }

    async fn via_reqwest(&self, body: Bytes) -> Received {
        let mut resp = match self.http.post(self.url.clone()).body(body).send().await {
            Ok(r) => r,
            Err(e) => return failed(e),
        };
        let status = resp.status().as_u16();
        let too_large = Received::TooLarge { status };
        if resp
            .content_length()
            .is_some_and(|n| n > self.max_response_bytes as u64)
        {
            return too_large;
        }
        let mut buf = bytes::BytesMut::with_capacity(
            resp.content_length().unwrap_or(4096).min(1 << 20) as usize,
        );
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) if buf.len() + chunk.len() > self.max_response_bytes => {
                    return too_large
                }
                Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) => return failed(e),
            }
        }
        Received::Answer {
            status,
            heard: Heard::of_map(resp.headers()),
            body: buf.freeze(),
        }
    }
}

/// An HTTP answer as the attempt's: a streamed one read whole is the answer it streams.
fn answer(status: u16, heard: Heard, mut body: Bytes) -> Attempt {
    if (200..300).contains(&status) && stream::is_event_stream(heard.content_type.as_deref(), &body)
    {
        match stream::assemble(&body) {
            Ok(b) => body = b.into(),
            Err(message) => {
                let kind = match message.contains("carried an error") {
                    true => ErrorKind::Server,
                    false => ErrorKind::Connection,
                };
                return Attempt::Transport { kind, message };
            }
        }
    }
    Attempt::Http {
        status,
        retry_after: heard.retry_after,
        reset_requests: heard.reset_requests,
        reset_tokens: heard.reset_tokens,
        quota_exhausted: heard.quota_exhausted,
        advertised: heard.advertised,
        body,
    }
}

fn failed(e: reqwest::Error) -> Received {
    Received::Failed {
        timed_out: e.is_timeout(),
        message: transport(e),
    }
}

/// The answer of a call to another endpoint of the API, or what went wrong on the way.
#[derive(Debug)]
pub enum Call {
    /// Any HTTP status, with its body (secrets scrubbed).
    Http { status: u16, body: Bytes },
    /// No answer: timeout, refused or cut connection (secrets scrubbed).
    Transport(String),
}

impl Client {
    /// One request to `path` under the base URL (`files`, `batches/b1`), with an optional body
    /// of the given content type; bodies up to 1 GiB are read (batch output files are large).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(String, Vec<u8>)>,
    ) -> Call {
        let url = match self.base.join(path) {
            Ok(u) => u,
            Err(e) => return Call::Transport(format!("{path}: {e}")),
        };
        let mut req = self.http.request(method, url);
        if let Some((content_type, bytes)) = body {
            req = req.header(CONTENT_TYPE, content_type).body(bytes);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Call::Transport(self.scrubber.scrub(transport(e))),
        };
        let status = resp.status().as_u16();
        match resp.bytes().await {
            Ok(b) if b.len() <= 1 << 30 => Call::Http {
                status,
                body: self.scrubber.scrub_bytes(b),
            },
            Ok(_) => Call::Transport("the answer is larger than 1 GiB".into()),
            Err(e) => Call::Transport(self.scrubber.scrub(e.to_string())),
        }
    }
}

/// A transport error and its causes in one line: the chain holds the useful part
/// ("connection refused", "unexpected EOF").
pub(crate) fn transport(e: impl std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

#[cfg(test)]
mod tests {
    #[test]
    fn url_joins_without_double_slash() {
        assert_eq!(
            super::completions_url("https://openrouter.ai/api/v1/"),
            "https://openrouter.ai/api/v1/chat/completions"
        );
        assert_eq!(
            super::completions_url("http://127.0.0.1:8080/v1"),
            "http://127.0.0.1:8080/v1/chat/completions"
        );
    }
}
