//! The API key appears nowhere: not in stdout, stderr (even at trace level), outputs or the
//! summary, including when the provider echoes it back in an error.

use crate::harness::*;
use bulkprompt::mock::MockConfig;
use bulkprompt::secret::ApiKey;

const KEY: &str = "sk-test-LEAKCHECK-8f3a9c2e71d04b6a";

fn assert_clean(what: &str, bytes: &[u8]) {
    assert!(
        !String::from_utf8_lossy(bytes).contains(KEY),
        "the key leaked into {what}"
    );
    assert!(
        !String::from_utf8_lossy(bytes).contains("LEAKCHECK"),
        "part of the key leaked into {what}"
    );
}

#[test]
fn the_key_is_never_printed_or_written() {
    let mock = Mock::start(MockConfig {
        api_key: Some(ApiKey::new(KEY)),
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(10));
    let out = dir.path("out.jsonl");
    let sum = dir.path("s.json");
    let o = bulkprompt()
        .env("MY_KEY", KEY)
        .args([
            "-vv",
            "run",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--endpoint",
            &mock.url(),
        ])
        .args([
            "--model",
            "m",
            "--api-key-env",
            "MY_KEY",
            "--keep-response",
            "--summary-json",
            sum.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_code(&o, 0);
    assert_eq!(records(&out).len(), 10);
    assert_clean("stdout", &o.stdout);
    assert_clean("stderr", &o.stderr);
    assert_clean("the output", &std::fs::read(&out).unwrap());
    assert_clean("the summary", &std::fs::read(&sum).unwrap());
}

#[test]
fn a_wrong_key_stops_the_run_after_one_request_and_is_not_echoed() {
    let mock = Mock::start(MockConfig {
        api_key: Some(ApiKey::new("sk-right-key")),
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(2000));
    let out = dir.path("out.jsonl");
    let o = bulkprompt()
        .env("MY_KEY", KEY)
        .args([
            "-vv",
            "run",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--endpoint",
            &mock.url(),
        ])
        .args([
            "--model",
            "m",
            "--api-key-env",
            "MY_KEY",
            "--concurrency",
            "256",
        ])
        .output()
        .unwrap();
    assert_code(&o, 4);
    let err = stderr(&o);
    assert!(err.contains("refused the credentials (HTTP 401)"), "{err}");
    assert!(err.contains("resume:"), "{err}");
    assert!(mock.stats().requests <= 5, "{:?}", mock.stats());
    assert_clean("stderr", &o.stderr);
    assert_clean("stdout", &o.stdout);
    assert_clean("the output", &std::fs::read(&out).unwrap());
}

#[test]
fn a_key_is_not_sent_over_plain_http_to_another_host() {
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(1));
    let o = bulkprompt()
        .env("MY_KEY", KEY)
        .args([
            "run",
            input.to_str().unwrap(),
            "--endpoint",
            "http://example.invalid/v1",
            "--model",
            "m",
            "--api-key-env",
            "MY_KEY",
        ])
        .output()
        .unwrap();
    assert_code(&o, 1);
    assert!(
        stderr(&o).contains("refusing to send the API key over plain http"),
        "{}",
        stderr(&o)
    );
}
