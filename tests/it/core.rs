//! The core runner end to end: retries, permanent failures, timeouts, CSV rendering.

use crate::harness::*;
use bulkprompt::mock::{Fault, MockConfig};
use bulkprompt::output::Status;
use std::time::Duration;

#[test]
fn five_thousand_jobs_with_a_fifth_failing_all_end_ok_once() {
    let mock = Mock::start(MockConfig {
        seed: 7,
        ..MockConfig::with_fault(Fault::ServerError, 0.2)
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(5000));
    let out = dir.path("out.jsonl");
    let sum = dir.path("summary.json");
    // 10 attempts: 0.2^10 * 5000 jobs leaves a one-in-two-thousand chance of a failed job.
    let o = run(
        &input,
        &out,
        &mock.url(),
        &[
            "--max-attempts",
            "10",
            "--retry-base-ms",
            "5",
            "--summary-json",
            sum.to_str().unwrap(),
        ],
    );
    assert_code(&o, 0);
    let recs = records_by_id(&out);
    assert_eq!(recs.len(), 5000);
    assert!(recs
        .values()
        .all(|r| r.status == Status::Ok && r.content.is_some()));
    assert!((0..5000).all(|i| recs.contains_key(&format!("j{i}"))));
    let s = summary(&sum);
    let st = mock.stats();
    // Nothing paid twice: one successful answer per job.
    assert_eq!(st.ok, 5000);
    assert_eq!(s["retries"].as_u64().unwrap(), st.server_errors);
    assert!(st.server_errors > 800, "{st:?}");
    assert_eq!(
        s["retries_by_reason"]["server"].as_u64().unwrap(),
        st.server_errors
    );
    assert_eq!(s["requests"].as_u64().unwrap(), st.requests);
    let attempts: u64 = recs.values().map(|r| r.attempts as u64).sum();
    assert_eq!(attempts, st.requests);
}

#[test]
fn a_400_fails_its_job_at_once_and_the_rest_go_on() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let mut jobs = chat_jobs(20);
    jobs.push_str(&rejected_job("hot"));
    let input = dir.write("jobs.jsonl", jobs);
    let out = dir.path("out.jsonl");
    let o = run(&input, &out, &mock.url(), &[]);
    assert_code(&o, 2);
    let recs = records_by_id(&out);
    let hot = &recs["hot"];
    assert_eq!(hot.status, Status::Failed);
    assert_eq!(hot.attempts, 1);
    let e = hot.error.as_ref().unwrap();
    assert_eq!((e.kind.as_str(), e.http_status), ("client", Some(400)));
    assert!(e.message.contains("temperature"), "{}", e.message);
    assert_eq!(recs.values().filter(|r| r.status == Status::Ok).count(), 20);
    assert_eq!(mock.stats().requests, 21);
    assert!(stderr(&o).contains("1 failed (client 1)"), "{}", stderr(&o));
}

#[test]
fn hung_connections_time_out_and_are_retried() {
    let mock = Mock::start(MockConfig {
        seed: 3,
        ..MockConfig::with_fault(Fault::Hang, 0.3)
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(40));
    let out = dir.path("out.jsonl");
    let sum = dir.path("summary.json");
    let o = run(
        &input,
        &out,
        &mock.url(),
        &[
            "--timeout",
            "0.3",
            "--max-attempts",
            "12",
            "--retry-base-ms",
            "5",
            "--summary-json",
            sum.to_str().unwrap(),
        ],
    );
    assert_code(&o, 0);
    assert_eq!(records_by_id(&out).len(), 40);
    let s = summary(&sum);
    assert!(
        s["retries_by_reason"]["timeout"].as_u64().unwrap() >= 3,
        "{s}"
    );
    assert_eq!(
        s["retries_by_reason"]["timeout"].as_u64().unwrap(),
        mock.stats().hung
    );
}

#[test]
fn csv_quotes_newlines_and_unicode_render_exactly() {
    let mock = Mock::start(MockConfig {
        capture_bodies: true,
        ..Default::default()
    });
    let dir = Dir::new();
    let csv = "review_id,review,stars\nr1,\"Great, \"\"really\"\" great\nSecond line\",5\nr2,Très bien — 很好 👍,4\n";
    let input = dir.write("reviews.csv", csv);
    let out = dir.path("out.jsonl");
    let o = run(
        &input,
        &out,
        &mock.url(),
        &[
            "--template",
            "Review ({stars}★): {review}",
            "--system",
            "Be brief.",
            "--id-column",
            "review_id",
        ],
    );
    assert_code(&o, 0);
    let mut prompts: Vec<(String, String)> = mock
        .bodies()
        .iter()
        .map(|b| {
            assert_eq!(b["messages"][0]["content"], "Be brief.");
            assert_eq!(b["model"], "test-model");
            (
                b["messages"][1]["content"].as_str().unwrap().to_string(),
                b["messages"][1]["role"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    prompts.sort();
    assert_eq!(
        prompts,
        vec![
            (
                "Review (4★): Très bien — 很好 👍".to_string(),
                "user".to_string()
            ),
            (
                "Review (5★): Great, \"really\" great\nSecond line".to_string(),
                "user".to_string()
            ),
        ]
    );
    let recs = records_by_id(&out);
    assert_eq!(recs["r1"].index, 0);
    assert!(recs["r1"].metadata.is_empty());
}

#[test]
fn unknown_request_fields_pass_through_and_both_max_token_names_work() {
    let mock = Mock::start(MockConfig {
        capture_bodies: true,
        ..Default::default()
    });
    let dir = Dir::new();
    let jobs = concat!(
        "{\"id\":\"a\",\"messages\":[{\"role\":\"user\",\"content\":\"hello there, how are you today\"}],\"max_completion_tokens\":2,\"provider\":{\"order\":[\"x\"]},\"seed\":4}\n",
        "{\"id\":\"b\",\"messages\":[{\"role\":\"user\",\"content\":\"hello there, how are you today\"}],\"max_tokens\":2,\"metadata\":{\"batch\":\"n1\"}}\n",
    );
    let input = dir.write("jobs.jsonl", jobs);
    let out = dir.path("out.jsonl");
    let o = run(
        &input,
        &out,
        &mock.url(),
        &["--param", "user=alice", "--temperature", "0"],
    );
    assert_code(&o, 0);
    let bodies = mock.bodies();
    let a = bodies.iter().find(|b| b.get("seed").is_some()).unwrap();
    assert_eq!(a["provider"]["order"][0], "x");
    assert_eq!(a["user"], "alice");
    assert_eq!(a["temperature"], 0.0);
    let recs = records_by_id(&out);
    for id in ["a", "b"] {
        assert_eq!(recs[id].finish_reason.as_deref(), Some("length"), "{id}");
        assert_eq!(recs[id].completion_tokens, Some(2));
    }
    assert_eq!(recs["b"].metadata["batch"], "n1");
}

#[test]
fn cost_is_tokens_times_table_prices() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(30));
    let out = dir.path("out.jsonl");
    let o = run(
        &input,
        &out,
        &mock.url(),
        &["--model", "google/gemini-2.0-flash-lite-001"],
    );
    assert_code(&o, 0);
    for r in records(&out) {
        let expect = (r.prompt_tokens.unwrap() * 75_000 + r.completion_tokens.unwrap() * 300_000)
            as f64
            / 1e12;
        assert!((r.cost_usd.unwrap() - expect).abs() < 1e-15, "{r:?}");
        assert_eq!(
            r.cost_source,
            Some(bulkprompt::output::CostSource::PriceTable)
        );
    }
}

#[test]
fn serve_mock_runs_as_its_own_process() {
    let mut child = bulkprompt()
        .args(["serve-mock", "--port", "0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let url = line.trim().rsplit(' ').next().unwrap().to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(5));
    let out = dir.path("out.jsonl");
    let o = run(&input, &out, &url, &["--timeout", "5"]);
    let _ = child.kill();
    let _ = child.wait();
    assert_code(&o, 0);
    assert_eq!(records(&out).len(), 5);
    std::thread::sleep(Duration::from_millis(1));
}

#[test]
fn a_summary_path_holding_another_file_is_refused_before_anything_is_sent() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(3));
    let precious = dir.write("notes.json", "{\"hello\": \"world\"}");
    let p = precious.display().to_string();
    let o = run(
        &input,
        &dir.path("out.jsonl"),
        &mock.url(),
        &["--summary-json", &p],
    );
    assert_code(&o, 1);
    assert!(
        stderr(&o).contains("is not a bulkprompt summary"),
        "{}",
        stderr(&o)
    );
    assert_eq!(mock.stats().requests, 0);
    assert_eq!(
        std::fs::read_to_string(&precious).unwrap(),
        "{\"hello\": \"world\"}",
        "left as it was"
    );
    // An earlier summary is replaced as before.
    let s = dir.path("s.json");
    let sp = s.display().to_string();
    assert_code(
        &run(
            &input,
            &dir.path("out.jsonl"),
            &mock.url(),
            &["--summary-json", &sp],
        ),
        0,
    );
    assert_code(
        &run(
            &input,
            &dir.path("out.jsonl"),
            &mock.url(),
            &["--summary-json", &sp],
        ),
        0,
    );
    assert_eq!(summary(&s)["outcome"], "completed");
}
