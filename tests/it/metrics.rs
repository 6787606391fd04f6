//! `--metrics-addr`: the counters a scrape shows mid-run are the summary's, on their way.

use crate::harness::*;
use bulkprompt::mock::{Fault, MockConfig};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// `GET /metrics`: every sample line as `name{labels}` -> value.
fn scrape(port: u16) -> Option<BTreeMap<String, f64>> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("openmetrics-text"), "{head}");
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    Some(
        body.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').unwrap();
                (k.to_string(), v.parse().unwrap())
            })
            .collect(),
    )
}

#[test]
fn a_scrape_mid_run_agrees_with_the_final_summary() {
    let mock = Mock::start(MockConfig {
        latency: Duration::from_millis(20),
        ..MockConfig::with_fault(Fault::ServerError, 0.1)
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(400));
    let out = dir.path("out.jsonl");
    let sum = dir.path("s.json");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = run_cmd(
        &input,
        &out,
        &mock.url(),
        &[
            "--rpm",
            "4000",
            "--metrics-addr",
            &addr,
            "--summary-json",
            sum.to_str().unwrap(),
        ],
    )
    .spawn()
    .unwrap();
    // Mid-run: some jobs done, not all.
    let started = Instant::now();
    let mid = loop {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no scrape mid-run"
        );
        if let Some(m) = scrape(port) {
            let ok = m["bulkprompt_jobs_total{status=\"ok\"}"];
            if ok >= 50.0 {
                break m;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let status = child.wait().unwrap();
    assert!(status.code().is_some(), "{status:?}");
    let s = summary(&sum);
    let get = |m: &BTreeMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);
    let ok = get(&mid, "bulkprompt_jobs_total{status=\"ok\"}");
    assert!(ok < s["ok"].as_f64().unwrap(), "the scrape was not mid-run");
    assert!(get(&mid, "bulkprompt_jobs_pending") > 0.0);
    assert_eq!(
        get(&mid, "bulkprompt_jobs_pending")
            + ok
            + get(&mid, "bulkprompt_jobs_total{status=\"failed\"}"),
        400.0,
        "pending + done = what the run set out to do"
    );
    // Every counter is on its way to the summary's figure, never past it.
    let requests: f64 = mid
        .iter()
        .filter(|(k, _)| k.starts_with("bulkprompt_requests_total{"))
        .map(|(_, v)| v)
        .sum();
    assert!(requests >= ok && requests <= s["requests"].as_f64().unwrap());
    assert!(get(&mid, "bulkprompt_requests_total{status=\"200\"}") >= ok);
    let retries = get(&mid, "bulkprompt_retries_total{kind=\"server\"}");
    assert!(retries <= s["retries"].as_f64().unwrap());
    let five = get(&mid, "bulkprompt_requests_total{status=\"500\"}")
        + get(&mid, "bulkprompt_requests_total{status=\"502\"}")
        + get(&mid, "bulkprompt_requests_total{status=\"503\"}");
    assert!(
        five >= retries,
        "each retry follows a 5xx here: {five} < {retries}"
    );
    assert!(
        get(&mid, "bulkprompt_tokens_total{direction=\"in\"}")
            <= s["prompt_tokens"].as_f64().unwrap()
    );
    assert!(get(&mid, "bulkprompt_cost_usd_total") <= s["cost_usd"].as_f64().unwrap() + 1e-12);
    assert!(
        get(&mid, "bulkprompt_limiter_waits_total") > 0.0,
        "--rpm 4000 makes requests wait"
    );
    assert!(get(&mid, "bulkprompt_requests_in_flight") >= 0.0);
    // The endpoint goes with the run.
    assert!(scrape(port).is_none(), "still serving after the run ended");
}
