//! Requests that waste nothing (issue 23): an answer cut at `max_tokens` is not bought again,
//! a template that makes every prompt the same is refused, a named key variable that is not
//! set stops the run before anything is sent, and a run with transient failures says how to
//! resume.

use crate::harness::*;
use bulkprompt::mock::{Fault, MockConfig};
use bulkprompt::output::{ErrorKind, Status};

#[test]
fn a_structured_answer_cut_at_max_tokens_is_not_bought_again() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(6));
    let out = dir.path("out.jsonl");
    let o = run(
        &input,
        &out,
        &mock.url(),
        &[
            "--param",
            r#"response_format={"type":"json_object"}"#,
            "--max-tokens",
            "2",
            "--retry-invalid",
            "3",
        ],
    );
    assert_code(&o, 2);
    assert_eq!(
        mock.stats().requests,
        6,
        "one request a job: a retry is the same cut answer"
    );
    for r in records(&out) {
        assert_eq!(r.status, Status::Failed);
        assert_eq!(r.finish_reason.as_deref(), Some("length"));
        let e = r.error.unwrap();
        assert_eq!(e.kind, ErrorKind::InvalidOutput);
        assert!(
            e.message
                .contains("cut at max_tokens 2: raise --max-tokens"),
            "{}",
            e.message
        );
    }
}

#[test]
fn a_template_that_makes_every_prompt_the_same_is_refused() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let rows: String = std::iter::once("id,text\n".to_string())
        .chain((0..64).map(|i| format!("r{i},review number {i}\n")))
        .collect();
    let input = dir.write("reviews.csv", rows);
    for template in ["", "Classify this review."] {
        let o = run(
            &input,
            &dir.path("o.jsonl"),
            &mock.url(),
            &["--template", template],
        );
        assert_code(&o, 1);
        let e = stderr(&o);
        assert!(e.contains("all 64 jobs send the same request"), "{e}");
        assert!(e.contains("--allow-constant-prompt"), "{e}");
        let o = bulkprompt()
            .arg("validate")
            .arg(&input)
            .args(["--template", template, "--model", "m"])
            .output()
            .unwrap();
        assert_code(&o, 1);
    }
    assert_eq!(mock.stats().requests, 0);
    // Said on purpose, it runs; a template with a placeholder was never in question.
    let o = run(
        &input,
        &dir.path("same.jsonl"),
        &mock.url(),
        &[
            "--template",
            "Classify this review.",
            "--allow-constant-prompt",
        ],
    );
    assert_code(&o, 0);
    let o = run(
        &input,
        &dir.path("t.jsonl"),
        &mock.url(),
        &["--template", "Classify: {text}"],
    );
    assert_code(&o, 0);
    // One job is never "the same request twice".
    let one = dir.write("one.csv", "id,text\nr1,x\n");
    let o = run(
        &one,
        &dir.path("one.jsonl"),
        &mock.url(),
        &["--template", "Hi"],
    );
    assert_code(&o, 0);
}

#[test]
fn a_named_key_variable_that_is_not_set_stops_before_anything_is_sent() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(3));
    for value in [None, Some("")] {
        let mut cmd = run_cmd(
            &input,
            &dir.path("o.jsonl"),
            &mock.url(),
            &["--api-key-env", "BULKPROMPT_TEST_UNSET_KEY"],
        );
        match value {
            None => cmd.env_remove("BULKPROMPT_TEST_UNSET_KEY"),
            Some(v) => cmd.env("BULKPROMPT_TEST_UNSET_KEY", v),
        };
        let o = cmd.output().unwrap();
        assert_code(&o, 1);
        assert!(
            stderr(&o).contains("BULKPROMPT_TEST_UNSET_KEY is not set or empty"),
            "{}",
            stderr(&o)
        );
    }
    assert_eq!(mock.stats().requests, 0);
}

#[test]
fn a_run_ending_with_transient_failures_prints_how_to_resume() {
    let mock = Mock::start(MockConfig::with_fault(Fault::ServerError, 1.0));
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(4));
    let out = dir.path("out.jsonl");
    let sum = dir.path("s.json");
    let o = bulkprompt()
        .arg("run")
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .args(["--endpoint", &mock.url(), "--model", "m"])
        .args([
            "--max-attempts",
            "1",
            "--retry-base-ms",
            "1",
            "--circuit-breaker",
            "0",
        ])
        .arg("--summary-json")
        .arg(&sum)
        .output()
        .unwrap();
    assert_code(&o, 2);
    let e = stderr(&o);
    assert!(e.contains("resume:"), "{e}");
    assert!(e.contains("(retries 4 failed jobs)"), "{e}");
    let s = summary(&sum);
    assert_eq!(s["retried_on_resume"], 4);
    assert!(s["resume_command"].is_string());
}

#[test]
fn a_streamed_answer_is_read_whole_and_bought_once() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let jobs: String = (0..5)
        .map(|i| format!("{{\"id\":\"s{i}\",\"stream\":true,\"n\":2,\"messages\":[{{\"role\":\"user\",\"content\":\"Tell me about item {i}.\"}}]}}\n"))
        .collect();
    let input = dir.write("jobs.jsonl", jobs);
    let out = dir.path("out.jsonl");
    let model = "google/gemini-2.0-flash-001";
    let o = run(
        &input,
        &out,
        &mock.url(),
        &["--model", model, "--keep-response"],
    );
    assert_code(&o, 0);
    assert_eq!(mock.stats().requests, 5, "one generation a job");
    for r in records(&out) {
        assert_eq!(r.status, Status::Ok);
        assert!(r.content.as_deref().is_some_and(|c| !c.is_empty()));
        assert!(r.finish_reason.is_some());
        assert_eq!(r.choices.as_ref().map(Vec::len), Some(2), "every choice");
        assert!(
            r.prompt_tokens.is_some() && r.cost_usd.is_some(),
            "usage from the last chunk"
        );
        assert!(
            r.response.is_some(),
            "--keep-response keeps the assembled answer"
        );
    }
    let billed = mock.stats().billed as f64 / 1e12;
    let recorded: f64 = records(&out).iter().filter_map(|r| r.cost_usd).sum();
    assert!((recorded - billed).abs() < 1e-12, "{recorded} vs {billed}");
    // The same through --param, and a re-run buys nothing.
    let plain = dir.write("plain.jsonl", chat_jobs(3));
    let out2 = dir.path("p.jsonl");
    let o = run(&plain, &out2, &mock.url(), &["--param", "stream=true"]);
    assert_code(&o, 0);
    assert_eq!(mock.stats().requests, 8);
    let o = run(&plain, &out2, &mock.url(), &["--param", "stream=true"]);
    assert_code(&o, 0);
    assert_eq!(mock.stats().requests, 8);
}

#[test]
fn batch_mode_against_a_server_without_a_batch_api_says_so_and_offers_no_resume() {
    let server = canned(
        r#"{"choices":[{"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}]}"#,
    );
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(3));
    let sum = dir.path("s.json");
    let o = run(
        &input,
        &dir.path("out.jsonl"),
        &server.url,
        &["--mode", "batch", "--summary-json", sum.to_str().unwrap()],
    );
    assert_code(&o, 4);
    let e = stderr(&o);
    assert!(e.contains("has no batch API"), "{e}");
    assert!(e.contains("--mode live"), "{e}");
    assert!(!e.contains("resume:"), "{e}");
    assert!(summary(&sum)["resume_command"].is_null());
    assert_eq!(
        server.requests.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[test]
fn a_calibrated_estimate_counts_as_the_provider_counts() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let rows: String = std::iter::once("id,text\n".to_string())
        .chain((0..60).map(|i| {
            format!(
                "r{i},\"{}\"\n",
                "the parcel came late and the box was torn ".repeat(1 + i % 7)
            )
        }))
        .collect();
    let input = dir.write("reviews.csv", rows);
    let t = "Is this review positive or negative? {text}";
    let estimate = |extra: &[&str]| -> serde_json::Value {
        let o = bulkprompt()
            .arg("estimate")
            .arg(&input)
            .args([
                "--template",
                t,
                "--model",
                "google/gemini-2.0-flash-001",
                "--json",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert_code(&o, 0);
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let offline = estimate(&[])["prompt_tokens"].as_u64().unwrap();
    let url = mock.url();
    let calibrated = estimate(&["--endpoint", &url, "--calibrate", "6", "--concurrency", "8"]);
    assert_eq!(mock.stats().requests, 6, "N requests");
    assert_eq!(
        mock.stats().completion_tokens,
        6,
        "of one answer token each"
    );
    assert_eq!(
        calibrated["concurrency"], 8,
        "the time at the given concurrency"
    );
    // What the provider then counts for the whole file.
    let out = dir.path("out.jsonl");
    let o = run(
        &input,
        &out,
        &mock.url(),
        &[
            "--template",
            t,
            "--model",
            "google/gemini-2.0-flash-001",
            "--max-tokens",
            "1",
        ],
    );
    assert_code(&o, 0);
    let served: u64 = records(&out).iter().filter_map(|r| r.prompt_tokens).sum();
    let within = |e: u64| (e as f64 - served as f64).abs() / served as f64;
    let c = calibrated["prompt_tokens"].as_u64().unwrap();
    eprintln!("prompt tokens: offline {offline}, calibrated {c}, provider {served}");
    assert!(within(c) < 0.10, "calibrated {c} against {served}");
    // Within --max-cost, or nothing is sent.
    let o = bulkprompt()
        .arg("estimate")
        .arg(&input)
        .args(["--template", t, "--model", "google/gemini-2.0-flash-001"])
        .args([
            "--endpoint",
            &url,
            "--calibrate",
            "6",
            "--max-cost",
            "0.0000001",
        ])
        .output()
        .unwrap();
    assert_code(&o, 1);
    assert!(
        stderr(&o).contains("more than --max-cost"),
        "{}",
        stderr(&o)
    );
    // A run command becomes an estimate by its verb: its run flags are taken.
    let o = bulkprompt()
        .arg("estimate")
        .arg(&input)
        .args([
            "--template",
            t,
            "--model",
            "gpt-4o-mini",
            "--endpoint",
            &url,
            "-o",
            "x.jsonl",
        ])
        .args(["--max-cost", "1", "--rpm", "600", "--quiet"])
        .output()
        .unwrap();
    assert_code(&o, 0);
}

#[test]
fn a_run_that_stops_early_says_what_the_rest_will_cost_from_its_own_bills() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(100));
    let out = dir.path("out.jsonl");
    let sum = dir.path("s.json");
    let model = "google/gemini-2.0-flash-001";
    let o = run(
        &input,
        &out,
        &mock.url(),
        &[
            "--model",
            model,
            "--limit",
            "20",
            "--summary-json",
            sum.to_str().unwrap(),
        ],
    );
    assert_code(&o, 0);
    assert!(
        stderr(&o).contains("left:      80 jobs not run"),
        "{}",
        stderr(&o)
    );
    let s = typed_summary(&sum);
    let left = s.remaining.expect("the rest re-estimated");
    assert_eq!(left.jobs, 80);
    let first = mock.stats().billed as f64 / 1e12;
    // The rest, run: what they cost against what the first 20 said they would.
    let o = run(&input, &out, &mock.url(), &["--model", model]);
    assert_code(&o, 0);
    let rest = mock.stats().billed as f64 / 1e12 - first;
    assert!(
        (left.cost_usd - rest).abs() / rest < 0.3,
        "estimated {} for the rest, billed {rest}",
        left.cost_usd
    );
}

#[test]
fn a_streamed_answer_that_echoes_the_key_is_scrubbed_like_any_answer() {
    let server = canned(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"your key is sk-echo-secret-123456\"}}]}\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":5}}\n\ndata: [DONE]\n\n",
    );
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(2));
    let out = dir.path("out.jsonl");
    let o = run_cmd(
        &input,
        &out,
        &server.url,
        &[
            "--api-key-env",
            "K",
            "--param",
            "stream=true",
            "--keep-response",
            "-vv",
        ],
    )
    .env("K", "sk-echo-secret-123456")
    .output()
    .unwrap();
    assert_code(&o, 0);
    assert_eq!(
        server.requests.load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    let written = std::fs::read_to_string(&out).unwrap();
    assert!(written.contains("your key is"), "{written}");
    for (what, text) in [("output", written), ("stderr", stderr(&o))] {
        assert!(
            !text.contains("sk-echo-secret-123456"),
            "the key leaked into the {what}"
        );
    }
}
