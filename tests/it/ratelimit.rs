//! The limiter against a simulator that enforces the same limit over a sliding minute.

use crate::harness::*;
use bulkprompt::mock::MockConfig;
use std::time::Duration;

#[test]
fn same_rpm_on_both_sides_means_few_429s_and_the_full_rate() {
    const RPM: u64 = 3000;
    let mock = Mock::start(MockConfig {
        rpm: Some(RPM),
        latency: Duration::from_millis(20),
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(900));
    let out = dir.path("out.jsonl");
    let sum = dir.path("s.json");
    let o = run(
        &input,
        &out,
        &mock.url(),
        &[
            "--rpm",
            &RPM.to_string(),
            "--summary-json",
            sum.to_str().unwrap(),
        ],
    );
    assert_code(&o, 0);
    let s = summary(&sum);
    let st = mock.stats();
    assert_eq!(st.ok, 900);
    assert!(st.rate_limited * 100 < st.requests, "429s: {st:?}");
    let per_minute = st.requests as f64 / s["elapsed_secs"].as_f64().unwrap() * 60.0;
    assert!(
        (RPM as f64 * 0.9..=RPM as f64 * 1.1).contains(&per_minute),
        "achieved {per_minute:.0}/min against {RPM}"
    );
}

#[test]
fn a_429_with_retry_after_is_honoured_and_the_job_completes() {
    // The simulator allows 30 requests in any 3 seconds; the runner is not told, so it meets
    // 429s with Retry-After, pauses everyone, and still finishes every job once.
    let mock = Mock::start(MockConfig {
        rpm: Some(30),
        window: Duration::from_secs(3),
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(32));
    let out = dir.path("out.jsonl");
    let sum = dir.path("s.json");
    let o = run(
        &input,
        &out,
        &mock.url(),
        &[
            "--max-attempts",
            "3",
            "--summary-json",
            sum.to_str().unwrap(),
        ],
    );
    let s = summary(&sum);
    assert_code(&o, 0);
    assert_eq!(records_by_id(&out).len(), 32);
    assert!(s["http_429"].as_u64().unwrap() >= 1);
    assert_eq!(mock.stats().ok, 32);
}
