//! Chat completions to a plain-HTTP endpoint with no proxy (the simulator, vLLM, llama.cpp and
//! other self-hosted servers): hyper's pooled HTTP/1 client called directly, with the URI and
//! every header built once, so a request costs a clone of both and nothing is parsed or merged
//! per request. Connections keep a read buffer of [`READ_BUFFER`] bytes (an answer of a few
//! KB takes a few reads; hyper's default grows to 8 KB and more, and keeps it, on each of
//! thousands of connections) and write the body from where it is (`writev`), not through a
//! second copy. TLS endpoints and proxies keep reqwest (HTTP/2 by ALPN, the proxy
//! variables, rustls), behind the same [`super::Client`].

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, HeaderValue, HOST};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::time::Duration;

/// Each connection's read buffer.
const READ_BUFFER: usize = 2048;

/// What an answer came to before it is judged.
pub(super) enum Received {
    Answer {
        status: u16,
        headers: HeaderMap,
        body: Bytes,
    },
    TooLarge {
        status: u16,
    },
    /// No whole answer: the message, and whether it was the timeout.
    Failed {
        message: String,
        timed_out: bool,
    },
}

#[derive(Clone)]
pub(super) struct Direct {
    http: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    headers: HeaderMap,
    timeout: Duration,
}

impl Direct {
    /// A client for `url`, or None when it is not plain HTTP or a proxy may apply (then
    /// reqwest, which reads the proxy variables).
    pub(super) fn for_url(
        url: &reqwest::Url,
        headers: &HeaderMap,
        timeout: Duration,
        pool: usize,
    ) -> Option<Direct> {
        if url.scheme() != "http" || proxy_configured() {
            return None;
        }
        let uri: Uri = url.as_str().parse().ok()?;
        let mut headers = headers.clone();
        let host = uri.authority()?.as_str();
        headers.insert(HOST, HeaderValue::from_str(host).ok()?);
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout.min(Duration::from_secs(30))));
        connector.set_keepalive(Some(Duration::from_secs(90)));
        let http = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(pool)
            .pool_idle_timeout(Duration::from_secs(90))
            .http1_read_buf_exact_size(READ_BUFFER)
            .http1_writev(true)
            .build(connector);
        Some(Direct {
            http,
            uri,
            headers,
            timeout,
        })
    }

    /// Posts `body` and reads the answer whole (up to `max` bytes), within the timeout.
    pub(super) async fn post(&self, body: Bytes, max: usize) -> Received {
        match tokio::time::timeout(self.timeout, self.exchange(body, max)).await {
            Ok(r) => r,
            Err(_) => Received::Failed {
                message: format!(
                    "no whole answer within the timeout ({} s)",
                    self.timeout.as_secs_f64()
                ),
                timed_out: true,
            },
        }
    }

    async fn exchange(&self, body: Bytes, max: usize) -> Received {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        let resp = match self.http.request(req).await {
            Ok(r) => r,
            Err(e) => return failed(e),
        };
        let status = resp.status().as_u16();
        let (parts, mut incoming) = resp.into_parts();
        let length = parts
            .headers
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if length.is_some_and(|n| n > max as u64) {
            return Received::TooLarge { status };
        }
        let mut buf = bytes::BytesMut::with_capacity(length.unwrap_or(4096).min(1 << 20) as usize);
        while let Some(frame) = incoming.frame().await {
            match frame {
                Ok(f) => {
                    if let Ok(chunk) = f.into_data() {
                        if buf.len() + chunk.len() > max {
                            return Received::TooLarge { status };
                        }
                        buf.extend_from_slice(&chunk);
                    }
                }
                Err(e) => return failed(e),
            }
        }
        Received::Answer {
            status,
            headers: parts.headers,
            body: buf.freeze(),
        }
    }
}

fn failed(e: impl std::error::Error) -> Received {
    Received::Failed {
        message: super::transport(e),
        timed_out: false,
    }
}

/// Whether a proxy variable reqwest reads is set for plain HTTP.
fn proxy_configured() -> bool {
    ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}
