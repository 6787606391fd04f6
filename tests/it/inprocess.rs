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
/// same runtime; the summary and the simulated time from the first request to the end.
fn paused_run(jobs: usize, extra: &[&str]) -> (bulkprompt::progress::Summary, Duration) {
    let r = paused_run_against(MockConfig::default(), jobs, extra, Duration::ZERO);
    (r.summary, r.took)
}

/// What a run under the paused clock saw.
struct PausedRun {
    summary: bulkprompt::progress::Summary,
    /// From the first request to the end of the run.
    took: Duration,
    /// The simulator's counts `sample_at` after the first request, and at the end.
    sampled: bulkprompt::mock::StatsSnapshot,
    end: bulkprompt::mock::StatsSnapshot,
}

/// [`paused_run`] against a simulator configured as `mock`, its counts sampled `sample_at`
/// into the run.
fn paused_run_against(
    mock: MockConfig,
    jobs: usize,
    extra: &[&str],
    sample_at: Duration,
) -> PausedRun {
    use bulkprompt::mock::MockServer;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let mock = MockServer::start(([127, 0, 0, 1], 0).into(), mock)
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
        // From the first request: validation runs on threads of its own, and the paused clock
        // may jump while the runtime waits for them.
        let sampler = async {
            while mock.stats().requests == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let first = tokio::time::Instant::now();
            tokio::time::sleep(sample_at).await;
            (first, mock.stats())
        };
        let (s, (first, sampled)) =
            tokio::join!(bulkprompt::run::run(cfg, Shutdown::default()), sampler);
        let s = s.unwrap();
        let took = first.elapsed();
        assert_eq!(mock.stats().requests, s.requests);
        PausedRun {
            summary: s,
            took,
            sampled,
            end: mock.stats(),
        }
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

/// A provider that states no limit (AIML's dialect: no headers, no Retry-After) enforcing 600
/// requests a minute, and no `--rpm`: the runner finds the limit from the 429s. The first
/// minute fills the provider's window at once; after it, fewer than 5% of requests are refused
/// and the rate reached is at least 80% of the limit. Six simulated minutes.
#[test]
fn a_limit_nobody_states_is_found_from_the_429s() {
    let r = paused_run_against(
        MockConfig {
            rpm: Some(600),
            dialect: bulkprompt::mock::Dialect::Aiml,
            ..Default::default()
        },
        3600,
        &["--max-attempts", "30"],
        Duration::from_secs(60),
    );
    assert_eq!(
        (r.summary.outcome, r.summary.ok),
        (Outcome::Completed, 3600),
        "{:?}",
        r.summary.failed_by_kind
    );
    let after = r.took - Duration::from_secs(60);
    let refused = r.end.rate_limited - r.sampled.rate_limited;
    let sent = r.end.requests - r.sampled.requests;
    let ok = r.end.ok - r.sampled.ok;
    let per_minute = ok as f64 * 60.0 / after.as_secs_f64();
    eprintln!(
        "first minute: {} ok, {} refused; then {ok} ok, {refused} refused of {sent} in {after:?}: {per_minute:.0}/min",
        r.sampled.ok, r.sampled.rate_limited
    );
    assert!(
        (refused as f64) < 0.05 * sent as f64,
        "{refused} of {sent} refused after the first minute"
    );
    assert!(per_minute >= 480.0, "{per_minute:.0} a minute");
    assert!(per_minute <= 600.0, "{per_minute:.0} a minute");
    let found = r
        .summary
        .found_rpm
        .expect("the summary names the limit found");
    // It probes upwards while no 429 comes: a few 5% steps above the limit at most.
    assert!((480..=700).contains(&found), "{found}");
}

/// The same provider with no limit at all but a 429 now and then: nothing is found, nothing is
/// throttled (a stray 429 is not congestion).
#[test]
fn a_stray_429_does_not_throttle_a_run() {
    let mut faults = bulkprompt::mock::Faults::default();
    faults.set(bulkprompt::mock::Fault::RateLimitPlain, 0.1);
    let r = paused_run_against(
        MockConfig {
            faults,
            dialect: bulkprompt::mock::Dialect::Aiml,
            ..Default::default()
        },
        3000,
        &["--max-attempts", "30", "--retry-base-ms", "10"],
        Duration::ZERO,
    );
    assert_eq!(
        (r.summary.outcome, r.summary.ok),
        (Outcome::Completed, 3000)
    );
    assert!(r.end.rate_limited > 100, "{:?}", r.end);
    assert!(r.took < Duration::from_secs(10), "{:?}", r.took);
}

/// A simulator enforcing 600 a minute and saying so in `x-ratelimit-limit-requests`, the runner
/// given `--rpm 1200`: reading the headers, it keeps under the advertised limit and is refused
/// less than with header reading off (`--ignore-limit-headers`), where only 429s teach it.
#[test]
fn advertised_limits_spare_the_429s_that_ignoring_them_costs() {
    let mock = || MockConfig {
        rpm: Some(600),
        ..Default::default()
    };
    let args = ["--rpm", "1200", "--max-attempts", "30"];
    let read = paused_run_against(mock(), 1500, &args, Duration::ZERO);
    let ignored = paused_run_against(
        mock(),
        1500,
        &[&args[..], &["--ignore-limit-headers"]].concat(),
        Duration::ZERO,
    );
    for r in [&read, &ignored] {
        assert_eq!(
            (r.summary.outcome, r.summary.ok),
            (Outcome::Completed, 1500)
        );
    }
    assert_eq!(read.summary.provider_limits.rpm, Some(600));
    eprintln!(
        "headers read: {} refused in {:?}; ignored: {} refused in {:?}",
        read.end.rate_limited, read.took, ignored.end.rate_limited, ignored.took
    );
    // 1,500 at 600 a minute: at least two minutes and a half, whatever the burst.
    assert!(read.took >= Duration::from_secs(140), "{:?}", read.took);
    assert_eq!(read.end.rate_limited, 0);
    assert!(ignored.end.rate_limited > 0);
}

/// A simulator that serves 4 requests at a time and queues the rest, like a self-hosted server
/// with 4 slots: the run finds 4 (give or take one) under a ceiling of 64, and sends no
/// request twice; with `--fixed-concurrency` it keeps 64 in flight.
#[test]
fn the_concurrency_a_queueing_server_takes_is_found() {
    let slots = MockConfig {
        slots: Some(4),
        latency: Duration::from_millis(400),
        ..Default::default()
    };
    let r = paused_run_against(slots.clone(), 400, &["--concurrency", "64"], Duration::ZERO);
    assert_eq!(r.summary.ok, 400);
    let found = r
        .summary
        .found_concurrency
        .expect("the summary names the concurrency found");
    assert!((3..=5).contains(&found), "found {found} for 4 slots");
    assert_eq!(r.summary.requests, 400, "nothing sent twice");
    let fixed = paused_run_against(
        slots,
        400,
        &["--concurrency", "64", "--fixed-concurrency"],
        Duration::ZERO,
    );
    assert_eq!(fixed.summary.found_concurrency, None);
    // The same work, as fast: the server was the bottleneck either way.
    assert!(
        r.took.as_secs_f64() <= fixed.took.as_secs_f64() * 1.1,
        "{:?} against {:?} fixed",
        r.took,
        fixed.took
    );
}

/// A provider whose latency does not grow with load keeps the whole ceiling.
#[test]
fn a_provider_that_does_not_queue_keeps_the_ceiling() {
    let r = paused_run_against(
        MockConfig {
            latency: Duration::from_millis(500),
            ..Default::default()
        },
        4000,
        &["--concurrency", "512", "--rpm", "100000000"],
        Duration::ZERO,
    );
    assert_eq!(r.summary.ok, 4000);
    assert_eq!(r.summary.found_concurrency, None, "never lowered");
}
