//! A provider that misbehaves in every way the simulator knows, and the runner surviving it
//! with nothing lost and a clear word for the user.

use crate::harness::*;
use bulkprompt::mock::{Fault, Faults, MockConfig, Storm};
use bulkprompt::output::Status;
use std::time::Duration;

#[test]
fn every_fault_mixed_at_five_percent_still_ends_with_each_id_once_and_ok() {
    let mut faults = Faults::default();
    faults.apply("all=0.05").unwrap();
    let mock = Mock::start(MockConfig {
        faults,
        seed: 5,
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(3000));
    let out = dir.path("out.jsonl");
    let sum = dir.path("s.json");
    // Nine of the eleven faults fail an attempt (the two paid ones do not): 45% of attempts.
    // Twenty attempts leave one chance in ten million per job of running out.
    let o = run(
        &input,
        &out,
        &mock.url(),
        &[
            "--timeout",
            "1",
            "--max-attempts",
            "20",
            "--retry-base-ms",
            "10",
            "--summary-json",
            sum.to_str().unwrap(),
        ],
    );
    assert_code(&o, 0);
    let recs = records_by_id(&out);
    assert_eq!(recs.len(), 3000);
    assert!(recs.values().all(|r| r.status == Status::Ok));
    let s = summary(&sum);
    let by = &s["retries_by_reason"];
    for kind in [
        "server",
        "timeout",
        "connection",
        "bad_response",
        "rate_limited",
    ] {
        assert!(by[kind].as_u64().unwrap_or(0) > 0, "no {kind} retries: {s}");
    }
    let filtered = recs
        .values()
        .filter(|r| r.finish_reason.as_deref() == Some("content_filter"))
        .count();
    let tools = recs
        .values()
        .filter(|r| r.finish_reason.as_deref() == Some("tool_calls"))
        .count();
    assert!(
        filtered > 50 && tools > 50,
        "{filtered} filtered, {tools} tool calls"
    );
}

#[test]
fn paid_answers_are_recorded_as_they_are_not_retried() {
    let mut faults = Faults::default();
    faults.set(Fault::ContentFilter, 0.5);
    faults.set(Fault::ToolCalls, 0.5);
    let mock = Mock::start(MockConfig {
        faults,
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(40));
    let out = dir.path("out.jsonl");
    assert_code(&run(&input, &out, &mock.url(), &[]), 0);
    assert_eq!(mock.stats().requests, 40, "no paid answer is bought twice");
    for r in records(&out) {
        assert_eq!((r.status, r.attempts), (Status::Ok, 1));
        match r.finish_reason.as_deref() {
            Some("content_filter") => assert_eq!(r.content.as_deref(), Some("")),
            Some("tool_calls") => assert_eq!(r.content, None),
            other => panic!("unexpected finish_reason {other:?}"),
        }
    }
}

#[test]
fn a_response_over_the_size_cap_is_refused_without_retry() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(5));
    let out = dir.path("out.jsonl");
    let o = run(&input, &out, &mock.url(), &["--max-response-bytes", "100"]);
    assert_code(&o, 2);
    for r in records(&out) {
        let e = r.error.unwrap();
        assert_eq!((e.kind.as_str(), r.attempts), ("bad_response", 1));
        assert!(
            e.message.contains("over the 100-byte limit"),
            "{}",
            e.message
        );
    }
}

#[test]
fn an_outage_longer_than_the_retry_budget_trips_the_breaker_and_the_next_run_retries() {
    let mock = Mock::start(MockConfig::with_fault(Fault::ServerError, 1.0));
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(500));
    let out = dir.path("out.jsonl");
    let o = run(
        &input,
        &out,
        &mock.url(),
        &[
            "--max-attempts",
            "2",
            "--retry-base-ms",
            "1",
            "--circuit-breaker",
            "10",
        ],
    );
    assert_code(&o, 4);
    let err = stderr(&o);
    assert!(
        err.contains("circuit breaker: 10 jobs in a row failed with server"),
        "{err}"
    );
    let spent = mock.stats().requests;
    assert!(spent < 300, "the run kept spinning: {spent} requests");
    mock.set_fail_rate(0.0);
    assert_code(&run(&input, &out, &mock.url(), &[]), 0);
    let recs = records_by_id(&out);
    assert_eq!(recs.len(), 500);
    assert!(recs.values().all(|r| r.status == Status::Ok));
}

#[test]
fn a_503_storm_is_ridden_out() {
    let mock = Mock::start(MockConfig {
        // Down from 3 s to 5 s, 8 s to 10 s, ...: the run (about 6 s at 200 a second) meets one.
        storm: Some(Storm::parse("5:2").unwrap()),
        latency: Duration::from_millis(20),
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(1200));
    let out = dir.path("out.jsonl");
    let o = run(
        &input,
        &out,
        &mock.url(),
        &[
            "--concurrency",
            "4",
            "--max-attempts",
            "20",
            "--retry-base-ms",
            "100",
        ],
    );
    assert_code(&o, 0);
    assert_eq!(records_by_id(&out).len(), 1200);
    assert!(
        mock.stats().server_errors > 0,
        "the run should have met the storm"
    );
}

#[test]
fn an_exhausted_quota_header_pauses_before_the_429() {
    // 10 requests a 2-second window, announced in x-ratelimit-* headers; the runner is not
    // told the limit and learns it from the headers.
    let mock = Mock::start(MockConfig {
        rpm: Some(10),
        window: Duration::from_secs(2),
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(40));
    let out = dir.path("out.jsonl");
    assert_code(&run(&input, &out, &mock.url(), &["--concurrency", "1"]), 0);
    assert_eq!(records_by_id(&out).len(), 40);
    let st = mock.stats();
    assert!(st.rate_limited <= 2, "{st:?}");
}
