//! Resuming: the output is the checkpoint. Kills, signals, edits to the job file, write
//! failures and concurrent runs.

use crate::harness::*;
use bulkprompt::mock::{Fault, MockConfig};
use bulkprompt::output::Status;
use std::time::{Duration, Instant};

fn summary_of(
    dir: &Dir,
    input: &std::path::Path,
    out: &std::path::Path,
    mock: &Mock,
    extra: &[&str],
) -> (std::process::Output, serde_json::Value) {
    let sum = dir.path("summary.json");
    let mut args = extra.to_vec();
    args.extend(["--summary-json", sum.to_str().unwrap()]);
    let o = run(input, out, &mock.url(), &args);
    let s = summary(&sum);
    (o, s)
}

#[test]
fn a_finished_run_rerun_sends_nothing() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(50));
    let out = dir.path("out.jsonl");
    assert_code(&run(&input, &out, &mock.url(), &[]), 0);
    assert_eq!(mock.stats().requests, 50);
    let o = run(&input, &out, &mock.url(), &[]);
    assert_code(&o, 0);
    assert_eq!(
        mock.stats().requests,
        50,
        "a re-run must not buy anything again"
    );
    assert!(stderr(&o).contains("50 already done"), "{}", stderr(&o));
    assert_eq!(records_by_id(&out).len(), 50);
}

#[test]
fn sigkill_at_ten_moments_loses_nothing_received_and_rebuys_little() {
    const JOBS: u64 = 3000;
    const CONCURRENCY: u64 = 64;
    const KILLS: u64 = 10;
    let mock = Mock::start(MockConfig {
        latency: Duration::from_millis(50),
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(JOBS as usize));
    let out = dir.path("out.jsonl");
    let mut rng = fastrand::Rng::with_seed(11);
    let lines =
        || std::fs::read(&out).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count() as u64);
    for k in 0..KILLS {
        // Kill at a random point of progress, so every kill lands mid-run on any machine.
        let target = 100 + k * (JOBS - 300) / KILLS + rng.u64(0..200);
        let mut child = run_cmd(
            &input,
            &out,
            &mock.url(),
            &["--concurrency", &CONCURRENCY.to_string()],
        )
        .spawn()
        .unwrap();
        while lines() < target && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(rng.u64(1..6)));
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let before_final = records(&out).len();
    assert!(
        before_final > 0 && (before_final as u64) < JOBS,
        "kills should interrupt: {before_final} records"
    );
    let o = run(
        &input,
        &out,
        &mock.url(),
        &["--concurrency", &CONCURRENCY.to_string()],
    );
    assert_code(&o, 0);
    let recs = records_by_id(&out);
    assert_eq!(recs.len() as u64, JOBS);
    assert!(recs.values().all(|r| r.status == Status::Ok));
    let answered = mock.stats().ok;
    assert!(
        answered <= JOBS + KILLS * CONCURRENCY,
        "answered {answered}: more re-bought than was in flight"
    );
}

#[test]
fn editing_one_job_reruns_it_and_appending_runs_only_the_new() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(100));
    let out = dir.path("out.jsonl");
    assert_code(&run(&input, &out, &mock.url(), &[]), 0);
    let first = records_by_id(&out);

    let edited = chat_jobs(100).replace("item number 42 of", "item number 42 (revised) of");
    std::fs::write(&input, &edited).unwrap();
    let (o, s) = summary_of(&dir, &input, &out, &mock, &[]);
    assert_code(&o, 0);
    assert_eq!(
        (
            s["changed"].as_u64(),
            s["new"].as_u64(),
            s["skipped_done"].as_u64()
        ),
        (Some(1), Some(0), Some(99))
    );
    assert_eq!(mock.stats().requests, 101);
    let second = records_by_id(&out);
    assert_eq!(second.len(), 100, "one record per id after a change");
    assert_ne!(second["j42"].fingerprint, first["j42"].fingerprint);

    let more: String = (100..110)
        .map(|i| format!("{{\"id\":\"j{i}\",\"messages\":[{{\"role\":\"user\",\"content\":\"new row {i}\"}}]}}\n"))
        .collect();
    std::fs::write(&input, format!("{edited}{more}")).unwrap();
    let (o, s) = summary_of(&dir, &input, &out, &mock, &[]);
    assert_code(&o, 0);
    assert_eq!(
        (s["new"].as_u64(), s["changed"].as_u64()),
        (Some(10), Some(0))
    );
    assert_eq!(mock.stats().requests, 111);
    assert_eq!(records_by_id(&out).len(), 110);
}

#[test]
fn removed_jobs_stay_unless_pruned() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(20));
    let out = dir.path("out.jsonl");
    assert_code(&run(&input, &out, &mock.url(), &[]), 0);
    std::fs::write(&input, chat_jobs(15)).unwrap();
    assert_code(&run(&input, &out, &mock.url(), &[]), 0);
    assert_eq!(records_by_id(&out).len(), 20);
    let st = bulkprompt()
        .args(["status", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert_code(&st, 0);
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(
        text.contains("15 in file: 15 done") && text.contains("5 records of ids no longer"),
        "{text}"
    );
    assert_code(&run(&input, &out, &mock.url(), &["--prune"]), 0);
    assert_eq!(records_by_id(&out).len(), 15);
    assert_eq!(mock.stats().requests, 20);
}

#[test]
fn same_prompt_under_two_ids_is_two_jobs() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let line = |id: &str| {
        format!(
            "{{\"id\":\"{id}\",\"messages\":[{{\"role\":\"user\",\"content\":\"same words\"}}]}}\n"
        )
    };
    let input = dir.write("jobs.jsonl", line("a") + &line("b"));
    let out = dir.path("out.jsonl");
    assert_code(&run(&input, &out, &mock.url(), &[]), 0);
    let recs = records_by_id(&out);
    assert_eq!(recs.len(), 2);
    assert_eq!(recs["a"].fingerprint, recs["b"].fingerprint);
    assert_code(&run(&input, &out, &mock.url(), &[]), 0);
    assert_eq!(mock.stats().requests, 2);
}

#[test]
fn transient_failures_retry_next_run_permanent_ones_only_when_asked() {
    let mock = Mock::start(MockConfig::with_fault(Fault::ServerError, 1.0));
    let dir = Dir::new();
    let mut jobs = chat_jobs(10);
    jobs.push_str(&rejected_job("bad"));
    let input = dir.write("jobs.jsonl", jobs);
    let out = dir.path("out.jsonl");
    // An outage: every job fails after its attempts (the 400 is checked before faults).
    let o = run(
        &input,
        &out,
        &mock.url(),
        &["--max-attempts", "2", "--retry-base-ms", "1"],
    );
    assert_code(&o, 2);
    let recs = records_by_id(&out);
    assert_eq!(recs["j0"].error.as_ref().unwrap().kind.as_str(), "server");
    assert_eq!(recs["bad"].error.as_ref().unwrap().kind.as_str(), "client");

    mock.set_fail_rate(0.0);
    let (o, s) = summary_of(&dir, &input, &out, &mock, &[]);
    assert_code(&o, 2);
    assert_eq!(
        (s["retried_failed"].as_u64(), s["skipped_failed"].as_u64()),
        (Some(10), Some(1))
    );
    let recs = records_by_id(&out);
    assert_eq!(recs.values().filter(|r| r.status == Status::Ok).count(), 10);

    let before = mock.stats().requests;
    let (o, s) = summary_of(&dir, &input, &out, &mock, &["--retry-failed"]);
    assert_code(&o, 2);
    assert_eq!(s["retried_failed"].as_u64(), Some(1));
    assert_eq!(mock.stats().requests, before + 1);
    assert_eq!(records_by_id(&out).len(), 11);
}

/// Runs with 16 in flight and `grace`, sends `signals` (300 ms apart) after `after`; the
/// output and the time from the first signal to the exit.
fn interrupted(
    input: &std::path::Path,
    out: &std::path::Path,
    mock: &Mock,
    grace: &str,
    after: Duration,
    signals: &[i32],
) -> (std::process::Output, Duration) {
    let child = run_cmd(
        input,
        out,
        &mock.url(),
        &["--concurrency", "16", "--grace", grace],
    )
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(after);
    let signalled = Instant::now();
    for (i, &sig) in signals.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(300));
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
    }
    let o = child.wait_with_output().unwrap();
    (o, signalled.elapsed())
}

#[test]
fn sigterm_drains_exits_130_and_the_resume_finishes_without_rebuying() {
    const JOBS: u64 = 300;
    let mock = Mock::start(MockConfig {
        latency: Duration::from_millis(500),
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(JOBS as usize));
    let out = dir.path("out.jsonl");
    let (o, took) = interrupted(
        &input,
        &out,
        &mock,
        "5",
        Duration::from_millis(1500),
        &[libc::SIGTERM],
    );
    assert_code(&o, 130);
    assert!(
        took < Duration::from_secs(5 + 3),
        "took {took:?} after SIGTERM with --grace 5"
    );
    let err = stderr(&o);
    assert!(
        err.contains("interrupted") && err.contains("resume:    ") && err.contains(" run "),
        "{err}"
    );
    let partial = records_by_id(&out).len() as u64;
    assert!(partial > 0 && partial < JOBS, "{partial}");
    // Everything the provider answered before the stop was kept.
    assert_eq!(mock.stats().ok, partial);
    assert_code(&run(&input, &out, &mock.url(), &["--concurrency", "64"]), 0);
    assert_eq!(records_by_id(&out).len() as u64, JOBS);
    assert_eq!(mock.stats().ok, JOBS, "nothing bought twice");
}

#[test]
fn a_write_failure_stops_cleanly_and_the_run_resumes_after() {
    use std::os::unix::process::CommandExt;
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(300));
    let out = dir.path("out.jsonl");
    // A "full disk" that works as root too: a 24 KB file-size limit (EFBIG past it).
    let mut cmd = run_cmd(&input, &out, &mock.url(), &[]);
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 24 * 1024,
                rlim_max: 24 * 1024,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &lim);
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let o = cmd.output().unwrap();
    assert_code(&o, 5);
    let err = stderr(&o);
    assert!(
        err.contains("writing") && err.contains("out.jsonl") && err.contains("re-run to resume"),
        "{err}"
    );
    let kept = records_by_id(&out);
    assert!(!kept.is_empty() && kept.len() < 300, "{}", kept.len());
    assert!(
        std::fs::read(&out).unwrap().ends_with(b"\n"),
        "only whole lines"
    );
    assert_code(&run(&input, &out, &mock.url(), &[]), 0);
    assert_eq!(records_by_id(&out).len(), 300);
}

#[test]
fn a_different_job_file_or_model_is_refused_and_fresh_starts_over() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(5));
    let other = dir.write("other.jsonl", chat_jobs(5));
    let out = dir.path("out.jsonl");
    assert_code(&run(&input, &out, &mock.url(), &[]), 0);
    let o = run(&other, &out, &mock.url(), &[]);
    assert_code(&o, 1);
    assert!(
        stderr(&o).contains("written by a different run (job file was"),
        "{}",
        stderr(&o)
    );
    let o = run(&input, &out, &mock.url(), &["--model", "another-model"]);
    assert_code(&o, 1);
    assert!(
        stderr(&o).contains("model was \"test-model\", now \"another-model\""),
        "{}",
        stderr(&o)
    );
    assert_code(&run(&other, &out, &mock.url(), &["--fresh"]), 0);
    assert_eq!(records_by_id(&out).len(), 5);
    assert_eq!(mock.stats().requests, 10);
}

#[test]
fn a_second_run_on_the_same_output_is_refused_with_the_first_pid() {
    let mock = Mock::start(MockConfig {
        latency: Duration::from_millis(300),
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(100));
    let out = dir.path("out.jsonl");
    let mut first = run_cmd(&input, &out, &mock.url(), &["--concurrency", "4"])
        .spawn()
        .unwrap();
    // Wait until the first run holds the lock (its meta file appears once it does).
    let meta = dir.path(".bulkprompt/out.jsonl.meta.json");
    let t = Instant::now();
    while !meta.exists() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = run(&input, &out, &mock.url(), &[]);
    let _ = first.kill();
    let _ = first.wait();
    assert_code(&o, 1);
    assert!(
        stderr(&o).contains(&format!(
            "being written by another bulkprompt run (pid {})",
            first.id()
        )),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_second_signal_stops_at_once_and_leaves_the_output_whole() {
    const JOBS: u64 = 200;
    let mock = Mock::start(MockConfig {
        latency: Duration::from_millis(2000),
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(JOBS as usize));
    let out = dir.path("out.jsonl");
    let signals = [libc::SIGTERM, libc::SIGINT];
    let (o, took) = interrupted(
        &input,
        &out,
        &mock,
        "60",
        Duration::from_millis(3000),
        &signals,
    );
    assert_code(&o, 130);
    assert!(
        took < Duration::from_secs(10),
        "a second signal must not wait out the 60 s grace ({took:?})"
    );
    // Every line is a whole record; the resume finishes the rest.
    let partial = records_by_id(&out).len() as u64;
    assert!(partial < JOBS);
    assert_code(&run(&input, &out, &mock.url(), &["--concurrency", "64"]), 0);
    assert_eq!(records_by_id(&out).len() as u64, JOBS);
}

#[test]
fn status_reads_the_job_file_as_the_run_did_whatever_the_environment_says_now() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(12));
    let out = dir.path("out.jsonl");
    // The model comes from the environment, not the command line.
    let o = bulkprompt()
        .env("BULKPROMPT_MODEL", "model-a")
        .arg("run")
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .args(["--endpoint", &mock.url(), "--quiet"])
        .output()
        .unwrap();
    assert_code(&o, 0);
    let st = bulkprompt()
        .env("BULKPROMPT_MODEL", "model-b")
        .args(["status", out.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert_code(&st, 0);
    let s: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(s["jobs"]["done"], 12, "{s}");
    assert_eq!(s["jobs"]["changed"], 0, "{s}");
}

#[test]
fn a_parquet_output_of_another_job_file_is_refused_by_its_own_name() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("monday.jsonl", chat_jobs(5));
    let other = dir.write("tuesday.jsonl", chat_jobs(5));
    let out = dir.path("labels.parquet");
    assert_code(&run(&input, &out, &mock.url(), &[]), 0);
    let o = run(&other, &out, &mock.url(), &[]);
    assert_code(&o, 1);
    let e = stderr(&o);
    assert!(
        e.contains("labels.parquet was written by a different run") && !e.contains("journal"),
        "the output as the user named it, not its hidden journal: {e}"
    );
    assert!(e.contains("docs/scheduling.md"), "{e}");
}

#[test]
fn a_second_signal_while_an_invalid_answer_is_asked_again_keeps_the_paid_one() {
    // Every answer breaks the schema and takes 3 s: the first job alone answers at 3 s, the
    // rest at 6 s, and by 7 s every job has paid for an invalid answer and is asking again
    // (answers due at 9 s). The file is all handed out, so the run is past dispatch. Two
    // signals drop the calls in flight at once, and each job's task writes the answer it
    // paid for as it is dropped.
    const JOBS: usize = 8;
    let mut cfg = MockConfig {
        latency: Duration::from_millis(3000),
        ..Default::default()
    };
    cfg.faults.set(Fault::OffSchema, 1.0);
    let mock = Mock::start(cfg);
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(JOBS));
    let schema = dir.write(
        "label.schema.json",
        r#"{"type":"object","properties":{"label":{"type":"string"}},"required":["label"]}"#,
    );
    let out = dir.path("out.jsonl");
    let sum = dir.path("s.json");
    let child = run_cmd(
        &input,
        &out,
        &mock.url(),
        &[
            "--summary-json",
            sum.to_str().unwrap(),
            "--model",
            "google/gemini-2.5-flash",
            "--json-schema",
            schema.to_str().unwrap(),
            "--retry-invalid",
            "10",
            "--grace",
            "60",
            // Every job in flight: the adaptive limit would hold some back at these latencies.
            "--fixed-concurrency",
        ],
    )
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(7000));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(200));
    let second = Instant::now();
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    assert_code(&o, 130);
    // The answers in flight were due about 1.8 s after the second signal.
    let took = second.elapsed();
    assert!(
        took < Duration::from_millis(1200),
        "the second signal waited for the calls in flight ({took:?})"
    );
    let recs = records_by_id(&out);
    assert_eq!(recs.len(), JOBS, "every job paid for an answer: {recs:?}");
    for r in recs.values() {
        let e = r.error.as_ref().expect("an invalid answer's record");
        assert_eq!(e.kind.as_str(), "invalid_output", "{r:?}");
        assert!(
            r.cost_usd.unwrap_or(0.0) > 0.0,
            "its cost is counted: {r:?}"
        );
    }
    // The summary counts them as run this time, none left over.
    let s = summary(&sum);
    assert_eq!(
        (s["new"].as_u64(), s["not_run"].as_u64()),
        (Some(8), Some(0)),
        "{s}"
    );
}
