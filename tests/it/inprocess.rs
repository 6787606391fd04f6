//! The runner embedded in a Rust program: a run driven in-process through the library (config
//! from flags, `run::run`, the summary as a typed value), and exact provider sequences from
//! the simulator's script.

use crate::harness::*;
use bulkprompt::cli::{Cli, Command};
use bulkprompt::mock::{MockConfig, Step};
use bulkprompt::progress::Outcome;
use bulkprompt::shutdown::Shutdown;
use clap::Parser;
use std::time::Duration;

/// Runs on a runtime of its own, as an embedding program would.
fn run_in_process(
    cfg: bulkprompt::config::RunConfig,
    shutdown: Shutdown,
) -> bulkprompt::progress::Summary {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(bulkprompt::run::run(cfg, shutdown))
        .unwrap()
}

fn config(argv: &[&str]) -> bulkprompt::config::RunConfig {
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    let Command::Run(args) = Cli::try_parse_from(&argv).unwrap().command else {
        panic!("not a run")
    };
    bulkprompt::config::resolve_run(&args, &argv).unwrap()
}

#[test]
fn a_scripted_provider_sequence_is_retried_exactly_and_summarized() {
    let mock = Mock::start(MockConfig {
        script: vec![
            Step::RateLimited {
                retry_after_secs: 1,
            },
            Step::ServerError,
            Step::Close,
        ],
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(3));
    let out = dir.path("out.jsonl");
    let url = mock.url();
    let cfg = config(&[
        "bulkprompt",
        "run",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--endpoint",
        &url,
        "--model",
        "m",
        "--quiet",
        "--retry-base-ms",
        "10",
    ]);
    let started = std::time::Instant::now();
    let s = run_in_process(cfg, Shutdown::default());
    // 429 (Retry-After 1 s), 500 and a closed connection, then every answer ok.
    assert_eq!(s.outcome, Outcome::Completed);
    assert_eq!((s.jobs, s.new, s.ok, s.failed), (3, 3, 3, 0));
    assert_eq!(s.requests, 6);
    assert_eq!(s.http_429, 1);
    let by = |k: &str| s.retries_by_reason.get(k).copied();
    assert_eq!(
        (by("rate_limited"), by("server"), by("connection")),
        (Some(1), Some(1), Some(1))
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );
    let recs = records_by_id(&out);
    // A 429 answer opens the gate, so the steps spread over the jobs; every attempt counts.
    assert_eq!(recs.values().map(|r| r.attempts).sum::<u32>(), 6);
    assert_eq!(mock.stats().requests, 6);
}

#[test]
fn a_stop_from_the_embedding_program_drains_and_reports_interrupted() {
    let mock = Mock::start(MockConfig {
        latency: Duration::from_millis(300),
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(200));
    let out = dir.path("out.jsonl");
    let url = mock.url();
    let cfg = config(&[
        "bulkprompt",
        "run",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--endpoint",
        &url,
        "--model",
        "m",
        "--quiet",
        "--concurrency",
        "16",
    ]);
    let shutdown = Shutdown::default();
    let stopper = shutdown.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(800));
        stopper.escalate();
    });
    let s = run_in_process(cfg, shutdown);
    assert_eq!(s.outcome, Outcome::Interrupted);
    assert_eq!(s.exit_code, 130);
    let kept = records_by_id(&out).len() as u64;
    assert_eq!(s.ok, kept);
    assert_eq!(mock.stats().ok, kept, "every answer in flight was kept");
    assert_eq!(s.new + s.not_run, 200);
    assert!(s.resume_command.is_some());
}

/// Runs `jobs` chat jobs with `extra` flags under tokio's paused clock, the simulator in the
/// same runtime; the summary and the simulated time the run took.
fn paused_run(jobs: usize, extra: &[&str]) -> (bulkprompt::progress::Summary, Duration) {
    use bulkprompt::mock::MockServer;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let mock = MockServer::start(([127, 0, 0, 1], 0).into(), MockConfig::default())
            .await
            .unwrap();
        let dir = Dir::new();
        let input = dir.write("jobs.jsonl", chat_jobs(jobs));
        let out = dir.path("out.jsonl");
        let url = mock.base_url();
        let mut argv = vec![
            "bulkprompt",
            "run",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--endpoint",
            &url,
            "--model",
            "m",
            "--quiet",
        ];
        argv.extend(extra);
        let cfg = config(&argv);
        let started = tokio::time::Instant::now();
        let s = bulkprompt::run::run(cfg, Shutdown::default())
            .await
            .unwrap();
        assert_eq!(mock.stats().requests, s.requests);
        (s, started.elapsed())
    })
}

/// A whole run under tokio's paused clock: the limiter's pacing measured in simulated time (a
/// minute and a half of it passes in well under a second).
#[test]
fn the_limiter_paces_a_whole_run_over_simulated_minutes() {
    let (s, took) = paused_run(90, &["--rpm", "60"]);
    assert_eq!((s.outcome, s.ok, s.http_429), (Outcome::Completed, 90, 0));
    // One request at once, then 0.99 a second: 89 more take about 90 simulated seconds
    // (the sliding-window bound itself is the limiter's unit tests' business).
    assert!(
        (Duration::from_secs(88)..Duration::from_secs(95)).contains(&took),
        "{took:?}"
    );
}

/// The token bucket learns how long answers really are: after 20 answers it reserves their
/// 95th percentile instead of every job's whole `max_tokens` (reconciled with the real usage as
/// before), so a run whose answers are short is not paced as if each used 1,000 tokens.
#[test]
fn the_token_bucket_learns_the_typical_answer_length() {
    let (s, took) = paused_run(200, &["--tpm", "60000", "--max-tokens", "1000"]);
    assert_eq!((s.outcome, s.ok), (Outcome::Completed, 200));
    // Reserving 1,000 output tokens a job would take over 200 s at 60,000 a minute; the first
    // 20 jobs do, the rest reserve what answers use.
    let used = s.prompt_tokens + s.completion_tokens;
    assert!(
        used < 60_000 * 60 / 100,
        "{used} tokens: the test needs short answers"
    );
    assert!(took < Duration::from_secs(60), "{took:?}");
    assert!(took > Duration::from_secs(15), "{took:?}");
}
