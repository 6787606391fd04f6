//! Money as providers bill it: reasoning left out of `completion_tokens`, cached and written
//! input, the served model, today's prices and retired models. Each test checks what the
//! simulator billed against what the output records, to the micro-dollar.

use crate::harness::*;
use bulkprompt::mock::{Billing, MockConfig};
use bulkprompt::output::Status;

fn billed(mock: &Mock) -> f64 {
    mock.stats().billed as f64 / 1e12
}

fn recorded(out: &std::path::Path) -> f64 {
    records(out).iter().filter_map(|r| r.cost_usd).sum()
}

fn billing(b: Billing) -> Mock {
    Mock::start(MockConfig {
        billing: b,
        ..Default::default()
    })
}

#[test]
fn reasoning_left_out_of_completion_tokens_is_billed_as_output() {
    let mock = billing(Billing {
        hidden_reasoning: 405,
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(20));
    let out = dir.path("out.jsonl");
    let o = run(
        &input,
        &out,
        &mock.url(),
        &["--model", "google/gemini-2.5-flash"],
    );
    assert_code(&o, 0);
    assert!(billed(&mock) > 0.0);
    assert!(
        (recorded(&out) - billed(&mock)).abs() < 1e-6,
        "recorded {} billed {}",
        recorded(&out),
        billed(&mock)
    );
    for r in records(&out) {
        let (p, c) = (r.prompt_tokens.unwrap(), r.completion_tokens.unwrap());
        assert_eq!(
            r.total_tokens,
            Some(p + c + 405),
            "the provider's total is kept"
        );
        assert_eq!(r.billed_output_tokens, Some(c + 405));
        assert_eq!(r.reasoning_tokens, Some(405));
        assert_eq!(r.usage_rule.map(|u| u.as_str()), Some("total_minus_prompt"));
    }
}

#[test]
fn cached_and_written_input_is_priced_as_the_provider_bills_it() {
    // gpt-4.1-mini publishes a cached price ($0.10/M of $0.40/M); no write price: writes at
    // the input price.
    let mock = billing(Billing {
        cached_prompt: 40,
        cache_writes: 10,
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(20));
    let out = dir.path("out.jsonl");
    let o = run(&input, &out, &mock.url(), &["--model", "gpt-4.1-mini"]);
    assert_code(&o, 0);
    assert!((recorded(&out) - billed(&mock)).abs() < 1e-6);
    let r = &records(&out)[0];
    assert_eq!(r.cached_tokens, Some(40));
    // Every prompt token at the input price would be more than billed.
    let full: f64 = records(&out)
        .iter()
        .map(|r| {
            (r.prompt_tokens.unwrap() as f64 * 0.40 + r.completion_tokens.unwrap() as f64 * 1.60)
                / 1e6
        })
        .sum();
    assert!(recorded(&out) < full - 1e-9, "{} vs {full}", recorded(&out));
}

#[test]
fn an_answer_is_priced_by_the_model_that_served_it() {
    // Asked gpt-4o-mini, served gpt-4o (a router's choice): billed at gpt-4o's price.
    let mock = billing(Billing {
        serve_as: Some("gpt-4o".into()),
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(10));
    let out = dir.path("out.jsonl");
    let o = run(&input, &out, &mock.url(), &["--model", "gpt-4o-mini"]);
    assert_code(&o, 0);
    assert!((recorded(&out) - billed(&mock)).abs() < 1e-6);
    assert_eq!(
        stderr(&o).matches("were answered by \"gpt-4o\"").count(),
        1,
        "said once per pair: {}",
        stderr(&o)
    );
    assert!(records(&out)
        .iter()
        .all(|r| r.response_model.as_deref() == Some("gpt-4o")));
    // A server answering as a file path the table does not know: priced as asked, and said.
    let mock = billing(Billing {
        serve_as: Some("/models/SmolLM2-135M-Instruct.Q4_1.gguf".into()),
        ..Default::default()
    });
    let out = dir.path("gguf.jsonl");
    let o = run(&input, &out, &mock.url(), &["--model", "gpt-4o-mini"]);
    assert_code(&o, 0);
    assert!(
        stderr(&o).contains("which has no known price: priced as \"gpt-4o-mini\""),
        "{}",
        stderr(&o)
    );
}

#[test]
fn gemini_2_5_flash_has_a_price_and_runs_under_a_cap() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(10));
    for model in ["gemini-2.5-flash", "google/gemini-2.5-flash"] {
        let out = dir.path(&format!("{}.jsonl", model.replace('/', "_")));
        let o = run(
            &input,
            &out,
            &mock.url(),
            &["--model", model, "--max-cost", "1", "--max-tokens", "50"],
        );
        assert_code(&o, 0);
        assert!(records(&out)
            .iter()
            .all(|r| r.cost_usd.is_some_and(|c| c > 0.0)));
    }
}

#[test]
fn a_retired_model_is_said_before_anything_is_sent_and_its_404_names_the_day() {
    let mock = Mock::start(MockConfig {
        refuse_unknown_models: true,
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(3));
    // The table's own retired model: said first (the simulator still answers it).
    let out = dir.path("flash.jsonl");
    let o = run(
        &input,
        &out,
        &mock.url(),
        &["--model", "google/gemini-2.0-flash-001"],
    );
    assert!(
        stderr(&o).contains("was retired on 2026-06-01 (replaced by google/gemini-2.5-flash"),
        "{}",
        stderr(&o)
    );
    let e = bulkprompt()
        .args(["estimate"])
        .arg(&input)
        .args(["--model", "google/gemini-2.0-flash-001"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&e.stdout).contains("retired on 2026-06-01"),
        "{}",
        String::from_utf8_lossy(&e.stdout)
    );
    // A provider that answers 404 for a model it retired: the record names the day.
    let prices = dir.write(
        "prices.toml",
        "[models.\"old-model\"]\ninput = 0.1\noutput = 0.4\nsource = \"https://example.test/p\"\nread_on = \"2026-01-01\"\nretired_on = \"2026-02-01\"\nreplaced_by = \"gpt-4o-mini\"\n",
    );
    let out = dir.path("old.jsonl");
    let p = prices.display().to_string();
    let o = run(
        &input,
        &out,
        &mock.url(),
        &[
            "--model",
            "old-model",
            "--prices",
            &p,
            "--circuit-breaker",
            "0",
        ],
    );
    assert_code(&o, 2);
    for r in records(&out) {
        assert_eq!(r.status, Status::Failed);
        let m = &r.error.as_ref().unwrap().message;
        assert!(
            m.contains("was retired on 2026-02-01 (replaced by gpt-4o-mini"),
            "{m}"
        );
    }
}

fn repeating(ids: std::ops::Range<usize>, distinct: usize, extra: &str) -> String {
    ids.map(|i| {
        format!(
            "{{\"id\":\"j{i}\"{extra},\"messages\":[{{\"role\":\"user\",\"content\":\"Label review {}\"}}]}}\n",
            i % distinct
        )
    })
    .collect()
}

#[test]
fn dedupe_buys_each_distinct_request_once_and_answers_every_id() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", repeating(0..1000, 600, ""));
    let out = dir.path("out.jsonl");
    let args = ["--model", "gpt-4o-mini", "--max-tokens", "20", "--dedupe"];
    let o = run(&input, &out, &mock.url(), &args);
    assert_code(&o, 0);
    assert_eq!(mock.stats().requests, 600, "each distinct request once");
    let by_id = records_by_id(&out);
    assert_eq!(by_id.len(), 1000);
    assert!(by_id.values().all(|r| r.status == Status::Ok));
    let copies: Vec<_> = by_id.values().filter(|r| r.dedup_of.is_some()).collect();
    assert_eq!(copies.len(), 400);
    for c in &copies {
        let source = &by_id[c.dedup_of.as_ref().unwrap()];
        assert_eq!(c.content, source.content);
        assert_eq!(c.fingerprint, source.fingerprint);
        assert_eq!(c.cost_usd, Some(0.0));
    }
    assert!((recorded(&out) - billed(&mock)).abs() < 1e-6);
    let s = stderr(&o);
    assert!(s.contains("400 answered by copy (--dedupe)"), "{s}");
    // 200 new ids asking what the output already answered: nothing is sent.
    let more = format!(
        "{}{}",
        repeating(0..1000, 600, ""),
        repeating(1000..1200, 600, "")
    );
    std::fs::write(&input, more).unwrap();
    let o = run(&input, &out, &mock.url(), &args);
    assert_code(&o, 0);
    assert_eq!(mock.stats().requests, 600);
    assert_eq!(records_by_id(&out).len(), 1200);
    assert!((recorded(&out) - billed(&mock)).abs() < 1e-6);
}

#[test]
fn samples_are_deduplicated_only_when_asked_always() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", repeating(0..10, 5, ",\"temperature\":0.7"));
    let o = run(
        &input,
        &dir.path("a.jsonl"),
        &mock.url(),
        &["--model", "gpt-4o-mini", "--dedupe"],
    );
    assert_code(&o, 0);
    assert_eq!(mock.stats().requests, 10, "samples are meant to differ");
    let o = run(
        &input,
        &dir.path("b.jsonl"),
        &mock.url(),
        &["--model", "gpt-4o-mini", "--dedupe=always"],
    );
    assert_code(&o, 0);
    assert_eq!(mock.stats().requests, 15);
    // A seed makes a sample repeatable: deduplicated by default.
    let seeded = dir.write(
        "seeded.jsonl",
        repeating(0..10, 5, ",\"temperature\":0.7,\"seed\":1"),
    );
    let o = run(
        &seeded,
        &dir.path("c.jsonl"),
        &mock.url(),
        &["--model", "gpt-4o-mini", "--dedupe"],
    );
    assert_code(&o, 0);
    assert_eq!(mock.stats().requests, 20);
}

#[test]
fn batch_mode_submits_each_distinct_request_once_under_dedupe() {
    let mock = Mock::start(MockConfig {
        batch: bulkprompt::mock::BatchConfig::default(),
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", repeating(0..100, 40, ""));
    let out = dir.path("out.jsonl");
    let o = run(
        &input,
        &out,
        &mock.url(),
        &[
            "--model",
            "gpt-4o-mini",
            "--mode",
            "batch",
            "--poll-interval",
            "1",
            "--dedupe",
        ],
    );
    assert_code(&o, 0);
    assert_eq!(
        mock.batch_stats().lines_answered,
        40,
        "40 distinct requests, one line each"
    );
    let by_id = records_by_id(&out);
    assert_eq!(by_id.len(), 100);
    assert_eq!(by_id.values().filter(|r| r.dedup_of.is_some()).count(), 60);
    assert!((recorded(&out) - billed(&mock)).abs() < 1e-6);
}
