//! Money: recorded cost, provider-reported cost, the hard cap, estimates and price sync.

use crate::harness::*;
use bulkprompt::mock::{MockConfig, MOCK_ONLY_MODEL, PROVIDER_FEE};
use bulkprompt::output::{CostSource, Status};
use std::time::Duration;

const FLASH: &str = "google/gemini-2.0-flash-001";

#[test]
fn provider_reported_cost_wins_over_the_table() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(20));
    let out = dir.path("out.jsonl");
    let o = run(
        &input,
        &out,
        &mock.url(),
        &["--model", FLASH, "--param", "usage={\"include\":true}"],
    );
    assert_code(&o, 0);
    for r in records(&out) {
        let table = (r.prompt_tokens.unwrap() * 100_000 + r.completion_tokens.unwrap() * 400_000)
            as f64
            / 1e12;
        assert_eq!(r.cost_source, Some(CostSource::Provider));
        assert!(
            (r.cost_usd.unwrap() - table * PROVIDER_FEE).abs() < 1e-12,
            "{r:?}"
        );
    }
}

fn total_cost(path: &std::path::Path) -> f64 {
    records(path).iter().filter_map(|r| r.cost_usd).sum()
}

#[test]
fn max_cost_is_a_hard_cap_across_resumes() {
    let mock = Mock::start(MockConfig {
        latency: Duration::from_millis(20),
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(2000));
    let args = [
        "--model",
        FLASH,
        "--max-tokens",
        "40",
        "--concurrency",
        "256",
    ];
    // What the whole file costs, measured on a separate output.
    let full = dir.path("full.jsonl");
    assert_code(&run(&input, &full, &mock.url(), &args), 0);
    let whole = total_cost(&full);
    assert!(whole > 0.0);

    let out = dir.path("out.jsonl");
    let cap = whole / 2.0;
    let mut capped: Vec<&str> = args.to_vec();
    let cap_text = format!("{cap:.9}");
    capped.extend(["--max-cost", &cap_text]);
    let o = run(&input, &out, &mock.url(), &capped);
    assert_code(&o, 3);
    assert!(stderr(&o).contains("cost cap $"), "{}", stderr(&o));
    let spent = total_cost(&out);
    assert!(spent <= cap + 1e-12, "spent {spent} over the cap {cap}");
    assert!(spent > cap * 0.5, "stopped far too early: {spent} of {cap}");
    let partial = records_by_id(&out).len();
    assert!(partial < 2000);

    // The same cap again: what settled below its worst case leaves room for a few more jobs,
    // and the cap still holds over both runs.
    assert_code(&run(&input, &out, &mock.url(), &capped), 3);
    assert!(total_cost(&out) <= cap + 1e-12);

    let bigger = format!("{:.9}", whole * 2.0);
    let mut more: Vec<&str> = args.to_vec();
    more.extend(["--max-cost", &bigger]);
    assert_code(&run(&input, &out, &mock.url(), &more), 0);
    let recs = records_by_id(&out);
    assert_eq!(recs.len(), 2000);
    assert!(recs.values().all(|r| r.status == Status::Ok));
    assert!(total_cost(&out) <= whole * 2.0);
}

#[test]
fn max_cost_with_an_unpriced_model_is_refused_before_sending() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(5));
    let o = run(
        &input,
        &dir.path("o.jsonl"),
        &mock.url(),
        &["--model", "nobody/knows", "--max-cost", "1"],
    );
    assert_code(&o, 1);
    assert!(
        stderr(&o).contains("no price is known for nobody/knows"),
        "{}",
        stderr(&o)
    );
    assert_eq!(mock.stats().requests, 0);
}

#[test]
fn estimate_agrees_with_a_simulator_run_of_the_demo() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/jobs/classify-reviews.toml");
    let out = dir.path("demo.jsonl");
    let e = bulkprompt()
        .args([
            "estimate",
            "-c",
            spec,
            "-o",
            out.to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    assert_code(&e, 0);
    let e: serde_json::Value = serde_json::from_slice(&e.stdout).unwrap();
    let o = bulkprompt()
        .args([
            "run",
            "-c",
            spec,
            "-o",
            out.to_str().unwrap(),
            "--endpoint",
            &mock.url(),
            "--quiet",
            "--rpm",
            "100000",
        ])
        .output()
        .unwrap();
    assert_code(&o, 0);
    let estimated = e["prompt_tokens"].as_f64().unwrap();
    let actual = mock.stats().prompt_tokens as f64;
    assert!(
        (estimated / actual - 1.0).abs() < 0.10,
        "estimated {estimated}, the simulator counted {actual}"
    );
    assert_eq!(e["jobs"], 300);
    // With the output there, the typical case is its median answer.
    let again = bulkprompt()
        .args([
            "estimate",
            "-c",
            spec,
            "-o",
            out.to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert!(
        again["typical_from"].as_str().unwrap().contains("median"),
        "{again}"
    );
    let typical = again["cost_typical_usd"].as_f64().unwrap();
    assert!(typical < again["cost_worst_usd"].as_f64().unwrap());
}

#[test]
fn synced_prices_are_used_by_the_next_run() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(5));
    let out = dir.path("out.jsonl");
    let home = dir.path("config");
    // Before: the simulator-only model has no price.
    let o = run(&input, &out, &mock.url(), &["--model", MOCK_ONLY_MODEL]);
    assert_code(&o, 0);
    assert!(records(&out).iter().all(|r| r.cost_usd.is_none()));
    assert!(stderr(&o).contains("has no known price"));
    let s = bulkprompt()
        .env("XDG_CONFIG_HOME", &home)
        .args(["prices", "--sync", &mock.url()])
        .output()
        .unwrap();
    assert_code(&s, 0);
    let file = home.join("bulkprompt/prices.toml");
    assert!(std::fs::read_to_string(&file)
        .unwrap()
        .contains(MOCK_ONLY_MODEL));
    let o = run_cmd(
        &input,
        &out,
        &mock.url(),
        &["--model", MOCK_ONLY_MODEL, "--fresh"],
    )
    .env("XDG_CONFIG_HOME", &home)
    .output()
    .unwrap();
    assert_code(&o, 0);
    for r in records(&out) {
        let expect = (r.prompt_tokens.unwrap() * 1_000_000
            + r.completion_tokens.unwrap() * 3_000_000) as f64
            / 1e12;
        assert!((r.cost_usd.unwrap() - expect).abs() < 1e-15, "{r:?}");
    }
    let listed = bulkprompt()
        .env("XDG_CONFIG_HOME", &home)
        .args(["prices"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains(MOCK_ONLY_MODEL));
}

#[test]
fn estimate_compares_models_and_refuses_what_it_cannot_price_under_a_cap() {
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(30));
    let o = bulkprompt()
        .args(["estimate"])
        .arg(&input)
        .args([
            "--model",
            "gpt-4o-mini",
            "--model",
            "google/gemini-2.5-flash",
            "--json",
        ])
        .output()
        .unwrap();
    assert_code(&o, 0);
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for r in rows {
        let (live, batch) = (&r["live"], &r["batch"]);
        assert_eq!(live["jobs"], 30);
        // A typical figure by default, said to be an assumption; batch at half the live price.
        assert!(live["typical_from"].as_str().unwrap().contains("assumed"));
        let (t, w) = (
            live["cost_typical_usd"].as_f64().unwrap(),
            live["cost_worst_usd"].as_f64().unwrap(),
        );
        assert!(t > 0.0 && t < w, "{live}");
        let b = batch["cost_worst_usd"].as_f64().unwrap();
        assert!((b - w / 2.0).abs() < 1e-9, "{b} vs {w}");
    }
    assert!(
        rows[1]["live"]["cost_worst_usd"].as_f64() > rows[0]["live"]["cost_worst_usd"].as_f64(),
        "gemini-2.5-flash costs more than gpt-4o-mini"
    );
    // A model with no price: said by name; with --max-cost, exit 1 as `run` refuses it.
    let o = bulkprompt()
        .args(["estimate"])
        .arg(&input)
        .args(["--model", "no-such-model"])
        .output()
        .unwrap();
    assert_code(&o, 0);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("no known price (no-such-model)"), "{text}");
    assert!(!text.contains("at most $0.000000"), "{text}");
    let o = bulkprompt()
        .args(["estimate"])
        .arg(&input)
        .args(["--model", "no-such-model", "--max-cost", "1"])
        .output()
        .unwrap();
    assert_code(&o, 1);
    assert!(
        stderr(&o).contains("no price is known for no-such-model"),
        "{}",
        stderr(&o)
    );
    // A run takes one model.
    let o = bulkprompt()
        .args(["run"])
        .arg(&input)
        .args(["--model", "a", "--model", "b", "--endpoint", "mock"])
        .output()
        .unwrap();
    assert_code(&o, 1);
    assert!(
        stderr(&o).contains("--model given 2 times"),
        "{}",
        stderr(&o)
    );
}
