//! Providers as they really are: each dialect of the simulator says no the way its provider
//! does, and the runner stops, pauses or retries for the right reason, with the provider's own
//! message.

use crate::harness::*;
use bulkprompt::mock::{Dialect, MockConfig, Step};
use bulkprompt::output::Status;
use std::time::{Duration, Instant};

const ENDS: Duration = Duration::from_secs(90);

#[test]
fn an_exhausted_account_stops_the_run_with_the_providers_message_and_the_rest_resumes() {
    for (dialect, says) in [
        (Dialect::OpenAi, "You exceeded your current quota"),
        (Dialect::OpenRouter, "Insufficient credits"),
        (
            Dialect::Gemini,
            "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
        ),
        (Dialect::Aiml, "Insufficient balance"),
    ] {
        let mock = Mock::start(MockConfig {
            dialect,
            quota_after: Some(5),
            ..Default::default()
        });
        let dir = Dir::new();
        let input = dir.write("jobs.jsonl", chat_jobs(60));
        let out = dir.path("out.jsonl");
        let sum = dir.path("s.json");
        let o = output_within(
            &mut run_cmd(
                &input,
                &out,
                &mock.url(),
                &[
                    "--concurrency",
                    "4",
                    "--summary-json",
                    sum.to_str().unwrap(),
                ],
            ),
            ENDS,
        );
        assert_code(&o, 4);
        let err = stderr(&o);
        assert!(
            err.contains("out of credits or quota") && err.contains(says),
            "{dialect:?}: {err}"
        );
        // Within a few requests: the five answered, and what was in flight.
        let sent = mock.stats().requests;
        assert!(sent <= 5 + 4 + 1, "{dialect:?}: {sent} requests");
        let s = typed_summary(&sum);
        assert!(s.not_run > 0 && s.resume_command.is_some(), "{dialect:?}");
        for r in records(&out).iter().filter(|r| r.status == Status::Failed) {
            let e = r.error.as_ref().unwrap();
            assert_eq!(e.kind.as_str(), "quota", "{dialect:?}");
            assert!(e.message.contains(says), "{dialect:?}: {}", e.message);
            assert!(
                !e.message.starts_with(['{', '[']),
                "a raw body: {}",
                e.message
            );
        }
        // Credits added: the same command finishes, buying nothing twice.
        mock.set_quota_after(None);
        assert_code(
            &output_within(&mut run_cmd(&input, &out, &mock.url(), &[]), ENDS),
            0,
        );
        assert_eq!(records_by_id(&out).len(), 60);
        assert_eq!(mock.stats().ok, 60, "{dialect:?}: nothing bought twice");
    }
}

#[test]
fn geminis_retry_delay_pauses_all_dispatch_without_any_header() {
    let mock = Mock::start(MockConfig {
        dialect: Dialect::Gemini,
        script: vec![Step::RateLimited {
            retry_after_secs: 2,
        }],
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(5));
    let out = dir.path("out.jsonl");
    let started = Instant::now();
    let o = output_within(
        &mut run_cmd(&input, &out, &mock.url(), &["--retry-base-ms", "1"]),
        ENDS,
    );
    assert_code(&o, 0);
    // The 429 said "retry in 2s" in its body only; nobody hammered meanwhile.
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(mock.stats().requests, 6);
    assert_eq!(mock.stats().rate_limited, 1);
}

#[test]
fn every_dialects_error_message_is_the_providers_own() {
    for dialect in Dialect::ALL {
        let mock = Mock::start(MockConfig {
            dialect,
            ..Default::default()
        });
        let dir = Dir::new();
        let input = dir.write("jobs.jsonl", rejected_job("bad"));
        let out = dir.path("out.jsonl");
        assert_code(&run(&input, &out, &mock.url(), &[]), 2);
        let r = &records(&out)[0];
        let e = r.error.as_ref().unwrap();
        assert_eq!(
            e.message, "temperature must be between 0 and 2",
            "{dialect:?}"
        );
        assert_eq!(e.http_status, Some(400));
    }
}

#[test]
fn the_presets_are_listed() {
    let o = bulkprompt().arg("providers").output().unwrap();
    assert_code(&o, 0);
    let text = String::from_utf8_lossy(&o.stdout);
    for want in [
        "openrouter",
        "https://openrouter.ai/api/v1",
        "OPENROUTER_API_KEY",
        "AIMLAPI_API_KEY",
        "GEMINI_API_KEY",
        "https://generativelanguage.googleapis.com/v1beta/openai",
        "vllm",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    // An unknown preset is a usage error naming the known ones.
    let o = bulkprompt()
        .args(["run", "x.jsonl", "--provider", "acme"])
        .output()
        .unwrap();
    assert_code(&o, 1);
    assert!(stderr(&o).contains("one of openrouter"), "{}", stderr(&o));
}

#[test]
fn the_runner_never_runs_faster_than_the_provider_says_the_key_allows() {
    let mock = Mock::start(MockConfig {
        advertise_rpm: Some(600),
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(40));
    let out = dir.path("out.jsonl");
    let sum = dir.path("s.json");
    let started = Instant::now();
    // --rpm far above what the key has: the advertised limit wins.
    let o = run(
        &input,
        &out,
        &mock.url(),
        &["--rpm", "60000", "--summary-json", sum.to_str().unwrap()],
    );
    assert_code(&o, 0);
    // After the first answer: a burst of 6, then 9.8 a second for the other 33.
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let s = typed_summary(&sum);
    assert_eq!(s.provider_limits.rpm, Some(600));
    assert!(
        stderr(&o).contains("provider:  allows 600 requests a minute"),
        "{}",
        stderr(&o)
    );
}
