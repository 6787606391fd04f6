//! Against a real model server: llama.cpp's `llama-server` with SmolLM2-135M-Instruct, built
//! from PyPI packages by `scripts/real-server.sh` (`.ci/run` starts it and sets the variables).
//! Real tokenization, chat templates, grammar-constrained JSON, slots and queueing. Each test
//! counts what it bought from the server's log: one `launch_slot_` line per generation.
//!
//! Runs when `BULKPROMPT_REAL_SERVER=URL` (and `BULKPROMPT_REAL_SERVER_LOG=FILE`) are set;
//! says it skipped otherwise. The tests share the one server, so they take turns.

use crate::harness::*;
use bulkprompt::output::{ErrorKind, Status};
use std::path::PathBuf;
use std::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

struct Real {
    url: String,
    log: PathBuf,
}

impl Real {
    /// The server, or `None` (and a line saying the test skipped) when none is set.
    fn get(test: &str) -> Option<Real> {
        match (
            std::env::var("BULKPROMPT_REAL_SERVER"),
            std::env::var("BULKPROMPT_REAL_SERVER_LOG"),
        ) {
            (Ok(url), Ok(log)) if !url.is_empty() => Some(Real {
                url,
                log: log.into(),
            }),
            _ => {
                eprintln!("{test}: skipped (BULKPROMPT_REAL_SERVER is not set; scripts/real-server.sh --env sets it)");
                None
            }
        }
    }

    /// How long a generation of 96 tokens takes now with both slots busy (ms): the slower of
    /// two jobs sent at once.
    fn generation_ms(&self, dir: &Dir, a: &str, b: &str) -> u64 {
        let input = dir.write("calibrate.jsonl", format!("{a}{b}"));
        let sum = dir.path("calibrate.json");
        let o = run(
            &input,
            &dir.path("calibrate.out.jsonl"),
            &self.url,
            &[
                "--concurrency",
                "2",
                "--max-tokens",
                "96",
                "--summary-json",
                sum.to_str().unwrap(),
            ],
        );
        assert_code(&o, 0);
        typed_summary(&sum).latency_ms.max
    }

    /// Generations the server has started so far.
    fn generations(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches("launch_slot_")
            .count()
    }
}

/// Short prompts the small model answers quickly.
fn questions(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "{{\"id\":\"q{i}\",\"messages\":[{{\"role\":\"user\",\"content\":\"Name a colour. Item {i}.\"}}]}}\n"
            )
        })
        .collect()
}

#[test]
fn real_server_every_job_once_with_its_usage() {
    let Some(real) = Real::get("real_server_every_job_once_with_its_usage") else {
        return;
    };
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", questions(8));
    let out = dir.path("out.jsonl");
    let before = real.generations();
    let o = run(&input, &out, &real.url, &["--max-tokens", "12"]);
    assert_code(&o, 0);
    assert_eq!(real.generations() - before, 8, "one generation a job");
    let recs = records_by_id(&out);
    assert_eq!(recs.len(), 8);
    for r in recs.values() {
        assert_eq!(r.status, Status::Ok);
        assert!(r.prompt_tokens.unwrap() > 0 && r.completion_tokens.unwrap() > 0);
    }
    // Resumed: nothing bought again.
    let o = run(&input, &out, &real.url, &["--max-tokens", "12"]);
    assert_code(&o, 0);
    assert_eq!(real.generations() - before, 8);
}

#[test]
fn real_server_a_streamed_job_costs_one_generation() {
    let Some(real) = Real::get("real_server_a_streamed_job_costs_one_generation") else {
        return;
    };
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", questions(4));
    let out = dir.path("out.jsonl");
    let before = real.generations();
    let args = ["--param", "stream=true", "--max-tokens", "12"];
    let o = run(&input, &out, &real.url, &args);
    assert_code(&o, 0);
    assert_eq!(real.generations() - before, 4, "one generation a job");
    for r in records(&out) {
        assert_eq!(r.status, Status::Ok);
        assert!(r.content.as_deref().is_some_and(|c| !c.is_empty()));
        assert!(r.finish_reason.is_some());
        assert!(r.prompt_tokens.is_some(), "usage from the final chunk");
    }
    let o = run(&input, &out, &real.url, &args);
    assert_code(&o, 0);
    assert_eq!(
        real.generations() - before,
        4,
        "an answer that arrived whole is never asked again"
    );
}

#[test]
fn real_server_a_schema_answer_cut_at_max_tokens_is_bought_once() {
    let Some(real) = Real::get("real_server_a_schema_answer_cut_at_max_tokens_is_bought_once")
    else {
        return;
    };
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Dir::new();
    let schema = dir.write(
        "label.json",
        r#"{"type":"object","properties":{"colour":{"type":"string"},"why":{"type":"string"}},"required":["colour","why"]}"#,
    );
    let input = dir.write("jobs.jsonl", questions(6));
    let out = dir.path("out.jsonl");
    let before = real.generations();
    let o = run(
        &input,
        &out,
        &real.url,
        &[
            "--json-schema",
            schema.to_str().unwrap(),
            "--max-tokens",
            "6",
            "--temperature",
            "0",
        ],
    );
    assert_code(&o, 2);
    assert_eq!(
        real.generations() - before,
        6,
        "6 generations for 6 jobs, not 12"
    );
    for r in records(&out) {
        assert_eq!(r.finish_reason.as_deref(), Some("length"));
        let e = r.error.unwrap();
        assert_eq!(e.kind, ErrorKind::InvalidOutput);
        assert!(e.message.contains("cut at max_tokens 6"), "{}", e.message);
    }
}

#[test]
fn real_server_a_constant_template_sends_nothing() {
    let Some(real) = Real::get("real_server_a_constant_template_sends_nothing") else {
        return;
    };
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Dir::new();
    let rows: String = std::iter::once("id,text\n".to_string())
        .chain((0..64).map(|i| format!("r{i},review {i}\n")))
        .collect();
    let input = dir.write("reviews.csv", rows);
    let before = real.generations();
    for template in ["", "Classify this review."] {
        let o = run(
            &input,
            &dir.path("o.jsonl"),
            &real.url,
            &["--template", template],
        );
        assert_code(&o, 1);
    }
    assert_eq!(real.generations(), before);
}

#[test]
fn real_server_more_in_flight_than_slots_is_found_and_wastes_little() {
    let Some(real) = Real::get("real_server_more_in_flight_than_slots_is_found_and_wastes_little")
    else {
        return;
    };
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Dir::new();
    let story = |i: usize| {
        format!("{{\"id\":\"c{i}\",\"messages\":[{{\"role\":\"user\",\"content\":\"Write a short story about the number {i}.\"}}]}}\n")
    };
    // The timeout is three times a generation's time now, with both slots busy: at least 6 s
    // (1.2-2.5 s a generation on an idle machine), and longer beside the suite's load (a
    // busy loop on one of the 2 cores makes it 4-5 s, on both 11 s: llama.cpp's threads wait
    // for each other). 64 in flight queue 32 generations deep, well past it.
    let timeout = 3 * real.generation_ms(&dir, &story(1000), &story(1001));
    let timeout = format!("{:.1}", (timeout as f64 / 1000.0).max(6.0));
    let jobs: String = (0..64).map(story).collect();
    let input = dir.write("jobs.jsonl", jobs);
    let out = dir.path("out.jsonl");
    let sum = dir.path("s.json");
    let before = real.generations();
    let o = run(
        &input,
        &out,
        &real.url,
        &[
            "--concurrency",
            "64",
            "--timeout",
            &timeout,
            "--max-tokens",
            "96",
            "--summary-json",
            sum.to_str().unwrap(),
        ],
    );
    assert_code(&o, 0);
    let bought = real.generations() - before;
    let s = typed_summary(&sum);
    eprintln!(
        "64 jobs, 2 slots, timeout {timeout} s: {bought} generations, found concurrency {:?}, {} requests, {:.1} s",
        s.found_concurrency, s.requests, s.elapsed_secs
    );
    assert_eq!(s.ok, 64);
    // Measured with the machine otherwise idle: 68-82 (1.06-1.28 a job); beside the rest of
    // the suite on 2 cores, whose load slows the server's generations unevenly, usually up to
    // 88 (1.375), and twice 115 and 119 (2026-12-06 and -07, in CI runs that passed the same
    // test alone at 70-82 right after). With a fixed concurrency the same run buys about 280.
    // The bound is what holds under the suite's own load, well below that.
    assert!(
        bought <= 128,
        "{bought} generations for 64 jobs (at most 2 a job)"
    );
    // 2 slots: found 2-3 when idle, up to 5 under the suite's load; the ceiling was 64.
    assert!(
        s.found_concurrency.is_some_and(|n| n <= 8),
        "{:?}",
        s.found_concurrency
    );
}

#[test]
fn real_server_a_calibrated_estimate_is_within_ten_percent() {
    let Some(real) = Real::get("real_server_a_calibrated_estimate_is_within_ten_percent") else {
        return;
    };
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Dir::new();
    let words = [
        "good",
        "bad",
        "arrived",
        "late",
        "quality",
        "excellent",
        "poor",
        "would",
        "buy",
        "again",
        "never",
        "price",
        "shipping",
        "box",
        "broken",
        "works",
        "great",
    ];
    let rows: String = std::iter::once("id,text\n".to_string())
        .chain((0..40).map(|i| {
            let text: Vec<&str> = (0..5 + i * 7 % 35)
                .map(|k| words[(i * 3 + k) % words.len()])
                .collect();
            format!("r{i},{}\n", text.join(" "))
        }))
        .collect();
    let input = dir.write("reviews.csv", rows);
    let t = "Classify the sentiment of this review as positive or negative: {text}";
    let estimate = |extra: &[&str]| -> u64 {
        let o = bulkprompt()
            .arg("estimate")
            .arg(&input)
            .args(["--template", t, "--model", "m", "--json"])
            .args(extra)
            .output()
            .unwrap();
        assert_code(&o, 0);
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["prompt_tokens"]
            .as_u64()
            .unwrap()
    };
    let offline = estimate(&[]);
    let calibrated = estimate(&["--endpoint", &real.url, "--calibrate", "5"]);
    let out = dir.path("out.jsonl");
    let o = run(
        &input,
        &out,
        &real.url,
        &["--template", t, "--max-tokens", "2"],
    );
    assert_code(&o, 0);
    let served: u64 = records(&out).iter().filter_map(|r| r.prompt_tokens).sum();
    let off = |e: u64| (e as f64 - served as f64) / served as f64;
    eprintln!(
        "prompt tokens: offline {offline} ({:+.1}%), calibrated {calibrated} ({:+.1}%), server {served}",
        off(offline) * 100.0,
        off(calibrated) * 100.0
    );
    assert!(off(calibrated).abs() < 0.10);
}
