//! `--metrics-addr HOST:PORT`: the run's counters in Prometheus's text format at `/metrics`
//! while it goes, so a team watching fifty workers on Kubernetes sees each one. The numbers are
//! the ones the summary is made of ([`Counters`], read at each scrape through a
//! `prometheus-client` collector): what a scrape says mid-run the summary says at the end, and
//! nothing on a request's path takes a lock for it.

use crate::progress::Counters;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

#[derive(Debug)]
struct RunCollector {
    counters: Arc<Counters>,
}

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: impl prometheus_client::encoding::EncodeCounterValue,
) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

/// A counter with one label, one series per `(value, count)`.
fn family(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    series: impl IntoIterator<Item = (String, u64)>,
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for (value, n) in series {
        let labels = [(label, value.as_str())];
        ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for RunCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let c = &self.counters;
        let ok = c.ok.load(Relaxed);
        let failed = c.failed.load(Relaxed);
        family(
            &mut e,
            "bulkprompt_jobs",
            "Jobs that got a record this run, by status.",
            "status",
            [("ok".to_string(), ok), ("failed".to_string(), failed)],
        )?;
        family(
            &mut e,
            "bulkprompt_jobs_failed",
            "Jobs recorded as failed this run, by error kind.",
            "kind",
            c.failed_by_kind(),
        )?;
        counter(
            &mut e,
            "bulkprompt_jobs_skipped",
            "Jobs an earlier run finished, skipped.",
            c.skipped.load(Relaxed),
        )?;
        gauge(
            &mut e,
            "bulkprompt_jobs_pending",
            "Jobs this run is still to do (the queue).",
            c.to_do.load(Relaxed).saturating_sub(ok + failed) as i64,
        )?;
        family(
            &mut e,
            "bulkprompt_requests",
            "HTTP attempts, by the status they got (none: no answer).",
            "status",
            c.statuses.seen().into_iter().map(|(s, n)| {
                (
                    if s == 0 {
                        "none".to_string()
                    } else {
                        s.to_string()
                    },
                    n,
                )
            }),
        )?;
        family(
            &mut e,
            "bulkprompt_retries",
            "Attempts retried, by error kind.",
            "kind",
            c.retries_by_reason(),
        )?;
        counter(
            &mut e,
            "bulkprompt_http_429",
            "Answers refused for their rate (HTTP 429).",
            c.http_429.load(Relaxed),
        )?;
        gauge(
            &mut e,
            "bulkprompt_requests_in_flight",
            "Jobs with a request in flight or waiting to retry.",
            c.in_flight.load(Relaxed) as i64,
        )?;
        counter(
            &mut e,
            "bulkprompt_limiter_waits",
            "Grants of the rate limit that had to wait.",
            c.limiter_waits.load(Relaxed),
        )?;
        counter(
            &mut e,
            "bulkprompt_limiter_wait_seconds",
            "Time requests waited for the rate limit.",
            c.limiter_wait_us.load(Relaxed) as f64 / 1e6,
        )?;
        family(
            &mut e,
            "bulkprompt_tokens",
            "Tokens of this run's answers, by direction.",
            "direction",
            [
                ("in".to_string(), c.prompt_tokens.load(Relaxed)),
                ("out".to_string(), c.completion_tokens.load(Relaxed)),
            ],
        )?;
        counter(
            &mut e,
            "bulkprompt_cost_usd",
            "What this run's answers cost, in US dollars.",
            c.spent().usd(),
        )?;
        counter(
            &mut e,
            "bulkprompt_invalid_answers",
            "Answers that did not match their schema (each paid for).",
            c.invalid_answers.load(Relaxed),
        )?;
        Ok(())
    }
}

/// The metrics endpoint of a run; stops serving when dropped.
pub(crate) struct MetricsServer {
    accept: tokio::task::JoinHandle<()>,
    pub(crate) addr: SocketAddr,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `counters` at `http://addr/metrics`.
pub(crate) async fn serve(
    addr: SocketAddr,
    counters: Arc<Counters>,
) -> std::io::Result<MetricsServer> {
    use http_body_util::Full;
    use hyper::{Response, StatusCode};
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let mut registry = Registry::default();
    registry.register_collector(Box::new(RunCollector { counters }));
    let registry = Arc::new(registry);
    let accept = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let registry = registry.clone();
                    async move {
                        let mut body = String::new();
                        let (status, ctype) = if req.uri().path() == "/metrics" {
                            let _ = prometheus_client::encoding::text::encode(&mut body, &registry);
                            (StatusCode::OK, CONTENT_TYPE)
                        } else {
                            body.push_str("bulkprompt: the metrics are at /metrics\n");
                            (StatusCode::NOT_FOUND, "text/plain; charset=utf-8")
                        };
                        Response::builder()
                            .status(status)
                            .header("content-type", ctype)
                            .body(Full::new(bytes::Bytes::from(body)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(MetricsServer { accept, addr })
}
