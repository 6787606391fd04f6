//! The promises at their edges: nothing lost (the job file, answers, good records), nothing paid
//! twice (one lock per real file), never over budget (money that compaction or a provider's
//! surcharge would hide), the key never shown (echoed by a retryable error, passed as a
//! header), and every run ends (dead endpoints, `--rpm 1`, signals) with the code the README's
//! table gives. Each test is named after what it protects.

use crate::harness::*;
use bulkprompt::cost::Money;
use bulkprompt::mock::{Fault, MockConfig};
use bulkprompt::output::Status;
use bulkprompt::secret::ApiKey;
use std::path::Path;
use std::time::Duration;

const FLASH: &str = "google/gemini-2.0-flash-001";
const ENDS: Duration = Duration::from_secs(90);

fn slow_mock(ms: u64) -> Mock {
    Mock::start(MockConfig {
        latency: Duration::from_millis(ms),
        ..Default::default()
    })
}

fn total_cost(path: &Path) -> f64 {
    records(path).iter().filter_map(|r| r.cost_usd).sum()
}

// ---- Nothing lost ----------------------------------------------------------------------------

#[test]
fn the_job_file_is_never_overwritten_by_the_output() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let jobs = chat_jobs(20);
    let input = dir.write("r1.jsonl", &jobs);
    std::os::unix::fs::symlink(&input, dir.path("link.jsonl")).unwrap();
    let spec = dir.write("spec.toml", "model = \"m\"\n");
    let meta_named = dir.write("out.jsonl.meta.json", &jobs);
    let journal_named = dir.write("x.parquet.journal.jsonl", &jobs);
    let cases: Vec<(&Path, std::path::PathBuf, Vec<&str>)> = vec![
        (&input, input.clone(), vec!["--fresh"]),
        (&input, input.clone(), vec![]),
        (&input, dir.path("link.jsonl"), vec!["--fresh"]),
        (&journal_named, dir.path("x.parquet"), vec!["--fresh"]),
        (&meta_named, dir.path("out.jsonl"), vec!["--fresh"]),
        (&input, spec.clone(), vec!["-c", spec.to_str().unwrap()]),
        (
            &input,
            dir.path("o.jsonl"),
            vec!["--summary-json", input.to_str().unwrap()],
        ),
    ];
    for (job_file, out, extra) in cases {
        let before = std::fs::read(job_file).unwrap();
        let o = run(job_file, &out, &mock.url(), &extra);
        assert_code(&o, 1);
        let err = stderr(&o);
        assert!(err.contains("the run would overwrite it"), "{err}");
        assert!(!err.contains("--fresh"), "must not suggest --fresh: {err}");
        assert_eq!(
            std::fs::read(job_file).unwrap(),
            before,
            "{}",
            out.display()
        );
    }
    assert_eq!(std::fs::read(&spec).unwrap(), b"model = \"m\"\n");
    assert_eq!(mock.stats().requests, 0);
}

#[test]
fn export_refuses_to_overwrite_its_source() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(5));
    let out = dir.path("ex.jsonl");
    assert_code(&run(&input, &out, &mock.url(), &[]), 0);
    let before = std::fs::read(&out).unwrap();
    std::os::unix::fs::symlink(&out, dir.path("ex-link.parquet")).unwrap();
    for target in [out.clone(), dir.path("ex-link.parquet")] {
        let o = bulkprompt()
            .arg("export")
            .arg(&out)
            .arg("-o")
            .arg(&target)
            .output()
            .unwrap();
        assert_code(&o, 1);
        assert!(stderr(&o).contains("would destroy it"), "{}", stderr(&o));
        assert_eq!(std::fs::read(&out).unwrap(), before);
    }
}

#[test]
fn a_full_disk_during_compaction_leaves_no_temporary_file_and_a_leftover_is_removed() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(200));
    let out = dir.path("out.jsonl");
    assert_code(&run(&input, &out, &mock.url(), &[]), 0);
    // Every record twice: the next run has nothing to send and everything to compact.
    let once = std::fs::read(&out).unwrap();
    std::fs::write(&out, [once.clone(), once.clone()].concat()).unwrap();
    let doubled = std::fs::read(&out).unwrap();
    let tmp = dir.path("out.jsonl.compact.tmp");
    let mut cmd = run_cmd(&input, &out, &mock.url(), &[]);
    with_file_size_limit(&mut cmd, once.len() as u64 / 2);
    let o = cmd.output().unwrap();
    assert_code(&o, 5);
    assert!(stderr(&o).contains("could not compact"), "{}", stderr(&o));
    assert!(!tmp.exists(), "the temporary file was left behind");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        doubled,
        "the output is untouched"
    );
    assert_eq!(mock.stats().requests, 200);

    // A leftover from a killed run is removed by the next, which compacts.
    std::fs::write(&tmp, vec![b'x'; 4096]).unwrap();
    assert_code(&run(&input, &out, &mock.url(), &[]), 0);
    assert!(!tmp.exists());
    assert_eq!(records_by_id(&out).len(), 200);
    assert_eq!(mock.stats().requests, 200, "nothing bought twice");
}

#[test]
fn an_output_that_cannot_be_written_is_refused_before_the_first_request() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(50));
    let file = dir.write("plain-file", "x");
    for (out, says) in [
        (Path::new("/dev/full").to_path_buf(), "not a regular file"),
        (Path::new("/dev/zero").to_path_buf(), "not a regular file"),
        (file.join("out.jsonl"), "plain-file"),
        (dir.tmp.path().to_path_buf(), "not a regular file"),
    ] {
        let o = output_within(&mut run_cmd(&input, &out, &mock.url(), &[]), ENDS);
        assert_code(&o, 5);
        assert!(
            stderr(&o).contains(says),
            "{}: {}",
            out.display(),
            stderr(&o)
        );
    }
    // A Parquet target that cannot be written is found before sending too.
    let o = output_within(
        &mut run_cmd(&input, &file.join("x.parquet"), &mock.url(), &[]),
        ENDS,
    );
    assert_code(&o, 5);
    assert_eq!(mock.stats().requests, 0);
    // Reading commands never read a device as an output.
    let o = output_within(bulkprompt().args(["status", "/dev/zero"]), ENDS);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not a regular file"), "{}", stderr(&o));
}

#[test]
fn a_corrupt_line_is_quarantined_by_repair_and_only_its_job_runs_again() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(50));
    let out = dir.path("out.jsonl");
    assert_code(&run(&input, &out, &mock.url(), &[]), 0);
    let text = std::fs::read_to_string(&out).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let lost_id = records(&out)[9].id.clone();
    lines[9] = "{\"id\": \"j9\", garbage";
    std::fs::write(&out, lines.join("\n") + "\n").unwrap();

    let o = run(&input, &out, &mock.url(), &[]);
    assert_code(&o, 1);
    let err = stderr(&o);
    assert!(
        err.contains("out.jsonl:10:") && err.contains("--repair"),
        "{err}"
    );
    assert_eq!(mock.stats().requests, 50);

    let o = run(&input, &out, &mock.url(), &["--repair"]);
    assert_code(&o, 0);
    assert_eq!(
        mock.stats().requests,
        51,
        "only the quarantined job ran again"
    );
    let recs = records_by_id(&out);
    assert_eq!(recs.len(), 50);
    assert!(recs.contains_key(&lost_id));
    let q = std::fs::read_to_string(dir.path("out.jsonl.quarantine.jsonl")).unwrap();
    assert_eq!(q, "{\"id\": \"j9\", garbage\n");
}

// ---- Nothing paid twice ----------------------------------------------------------------------

#[test]
fn a_symlinked_output_shares_the_lock_and_compaction_writes_through_the_link() {
    let mock = slow_mock(200);
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(400));
    let out = dir.path("cc2.jsonl");
    let link = dir.path("cclink.jsonl");
    std::os::unix::fs::symlink("cc2.jsonl", &link).unwrap();
    let (mut first, rx, reader) = spawn_with_stderr_lines(
        run_cmd(&input, &out, &mock.url(), &["-v"]).args(["--concurrency", "8"]),
    );
    wait_for_line(&rx, "ready at", ENDS);
    let second = run(&input, &link, &mock.url(), &[]);
    assert_code(&second, 1);
    assert!(
        stderr(&second).contains("being written by another bulkprompt run"),
        "{}",
        stderr(&second)
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(first.id() as i32, libc::SIGTERM) };
    first.wait().unwrap();
    drop(reader);

    // Finish through the link, then edit a job so the next run compacts through it.
    assert_code(
        &run(&input, &link, &mock.url(), &["--concurrency", "64"]),
        0,
    );
    let edited = chat_jobs(400).replacen("item number 7 ", "item number seven ", 1);
    std::fs::write(&input, edited).unwrap();
    assert_code(
        &run(&input, &link, &mock.url(), &["--concurrency", "64"]),
        0,
    );
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    let recs = records_by_id(&out);
    assert_eq!(recs.len(), 400, "the target holds one record per id");
    assert_eq!(
        mock.stats().ok,
        401,
        "every job bought once, the edited one twice"
    );
}

/// 400 jobs, 32 in flight, a "disk" that fills at 16 KB; the job file, the output, the summary
/// and the command.
fn run_on_a_full_disk(
    dir: &Dir,
    mock: &Mock,
    grace: &str,
) -> (
    std::path::PathBuf,
    std::path::PathBuf,
    std::path::PathBuf,
    std::process::Command,
) {
    let input = dir.write("jobs.jsonl", chat_jobs(400));
    let out = dir.path("out.jsonl");
    let sum = dir.path("s.json");
    let mut cmd = run_cmd(
        &input,
        &out,
        &mock.url(),
        &["--concurrency", "32", "--grace", grace],
    );
    cmd.arg("--summary-json").arg(&sum);
    with_file_size_limit(&mut cmd, 16 * 1024);
    (input, out, sum, cmd)
}

#[test]
fn answers_that_arrive_after_a_write_failure_are_written_once_space_returns() {
    let mock = slow_mock(150);
    let dir = Dir::new();
    let (input, out, sum, mut cmd) = run_on_a_full_disk(&dir, &mock, "60");
    let (mut child, rx, reader) = spawn_with_stderr_lines(&mut cmd);
    wait_for_line(&rx, "the write is retried", ENDS);
    // Space comes back: lift the limit of the running process.
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: changing a limit of our own child.
    let rc = unsafe {
        libc::prlimit(
            child.id() as i32,
            libc::RLIMIT_FSIZE,
            &lim,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0);
    let status = child.wait().unwrap();
    let err = reader.join().unwrap();
    assert_eq!(status.code(), Some(5), "{err}");
    assert!(
        err.contains("every answer that arrived was written"),
        "{err}"
    );
    let s = summary(&sum);
    assert_eq!(s["unwritten"], 0);
    let written = records_by_id(&out).len() as u64;
    assert_eq!(mock.stats().ok, written, "every paid answer is in the file");
    assert!(written < 400);
    assert_code(&run(&input, &out, &mock.url(), &["--concurrency", "64"]), 0);
    assert_eq!(records_by_id(&out).len(), 400);
    assert_eq!(mock.stats().ok, 400, "nothing bought twice");
}

#[test]
fn when_the_disk_stays_full_the_unwritten_answers_are_counted_and_bounded() {
    let mock = slow_mock(100);
    let dir = Dir::new();
    let (_, out, sum, mut cmd) = run_on_a_full_disk(&dir, &mock, "2");
    let o = output_within(&mut cmd, ENDS);
    assert_code(&o, 5);
    let s = summary(&sum);
    let unwritten = s["unwritten"].as_u64().unwrap();
    let written = records_by_id(&out).len() as u64;
    // The batch that failed (answers whose slots had already gone to new jobs) plus the 32 in
    // flight when dispatch stopped.
    assert!(unwritten <= 64, "{unwritten} unwritten with 32 in flight");
    assert_eq!(written + unwritten, mock.stats().ok);
    assert!(
        stderr(&o).contains(&format!(
            "{unwritten} answers that arrived could not be written"
        )) || unwritten == 0,
        "{}",
        stderr(&o)
    );
}

// ---- Never over budget -----------------------------------------------------------------------

#[test]
fn the_cap_remembers_what_superseded_records_cost_across_edits() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let out = dir.path("out.jsonl");
    let jobs = |round: usize| -> String {
        (0..20)
            .map(|i| {
                format!(
                    "{{\"id\":\"j{i}\",\"messages\":[{{\"role\":\"user\",\"content\":\"Round {round}: summarize item {i}.\"}}]}}\n"
                )
            })
            .collect()
    };
    let input = dir.write("jobs.jsonl", jobs(0));
    let args = ["--model", FLASH, "--max-tokens", "40"];
    let whole = {
        let full = dir.path("full.jsonl");
        assert_code(&run(&input, &full, &mock.url(), &args), 0);
        total_cost(&full)
    };
    let cap = whole * 1.5;
    let cap_text = format!("{cap:.9}");
    let mut capped = args.to_vec();
    capped.extend(["--max-cost", &cap_text]);
    let mut paid = 0.0;
    for round in 0..7 {
        std::fs::write(&input, jobs(round)).unwrap();
        let sum = dir.path(&format!("s{round}.json"));
        let mut a = capped.clone();
        a.extend(["--summary-json", sum.to_str().unwrap()]);
        let o = run(&input, &out, &mock.url(), &a);
        assert!(matches!(o.status.code(), Some(0 | 3)), "{}", stderr(&o));
        paid += summary(&sum)["cost_usd"].as_f64().unwrap();
        let in_output = total_cost(&out);
        assert!(
            (in_output - paid).abs() < 1e-9,
            "round {round}: the output says {in_output}, the runs paid {paid}"
        );
    }
    assert!(
        paid <= cap + 1e-12,
        "seven edited runs paid {paid}, cap {cap}"
    );
    assert!(paid > whole, "the cap allowed more than one round");
    let st = bulkprompt()
        .args(["status", out.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert!(
        (st["spent_usd"].as_f64().unwrap() - paid).abs() < 1e-9,
        "{st}"
    );
}

#[test]
fn pruned_records_stay_counted_against_the_cap() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(20));
    let out = dir.path("out.jsonl");
    let args = ["--model", FLASH, "--max-tokens", "40"];
    assert_code(&run(&input, &out, &mock.url(), &args), 0);
    let paid = total_cost(&out);
    std::fs::write(&input, chat_jobs(10)).unwrap();
    let mut pruned = args.to_vec();
    pruned.push("--prune");
    assert_code(&run(&input, &out, &mock.url(), &pruned), 0);
    assert_eq!(records_by_id(&out).len(), 10);
    let st = bulkprompt()
        .args(["status", out.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert!(
        (st["spent_usd"].as_f64().unwrap() - paid).abs() < 1e-9,
        "{st}"
    );
    // A cap below what was paid: nothing more may be sent.
    std::fs::write(&input, chat_jobs(30)).unwrap();
    let cap = format!("{:.9}", paid * 0.9);
    let mut capped = args.to_vec();
    capped.extend(["--max-cost", &cap]);
    let before = mock.stats().requests;
    assert_code(&run(&input, &out, &mock.url(), &capped), 3);
    assert_eq!(mock.stats().requests, before);
}

#[test]
fn a_provider_billing_far_above_the_price_table_cannot_overrun_the_cap() {
    let mock = Mock::start(MockConfig {
        cost_factor: Some(250.0),
        latency: Duration::from_millis(5),
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(2000));
    let out = dir.path("out.jsonl");
    let o = run(
        &input,
        &out,
        &mock.url(),
        &[
            "--model",
            FLASH,
            "--max-tokens",
            "40",
            "--concurrency",
            "64",
            "--max-cost",
            "0.05",
        ],
    );
    assert_code(&o, 3);
    let spent = total_cost(&out);
    assert!(spent <= 0.05, "spent ${spent} under a $0.05 cap");
    assert!(spent > 0.025, "stopped far too early: ${spent}");
    let err = stderr(&o);
    assert!(err.contains("what the price table foresaw"), "{err}");
    // The stop message gives the final amount, the one in the output.
    let final_amount = Money::from_usd(spent).to_string();
    assert!(
        err.contains(&format!("{final_amount} is recorded in the output")),
        "want {final_amount}: {err}"
    );
}

// ---- The key never shown ---------------------------------------------------------------------

const KEY: &str = "sk-or-v1-ECHOCHECK-5b1f0e9d2c";

#[test]
fn a_key_echoed_by_a_retryable_error_stays_out_of_verbose_logs() {
    let mock = Mock::start(MockConfig::with_fault(Fault::EchoKey, 0.5));
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(40));
    let out = dir.path("out.jsonl");
    let sum = dir.path("s.json");
    let o = bulkprompt()
        .env("MY_KEY", KEY)
        .args(["-vv", "run"])
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .args(["--endpoint", &mock.url(), "--model", "m", "--api-key-env"])
        .args(["MY_KEY", "--retry-base-ms", "1", "--max-attempts", "2"])
        .args(["--summary-json", sum.to_str().unwrap()])
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(err.contains("retrying"), "the retry path ran: {err}");
    assert!(err.contains("(redacted)"), "{err}");
    for (what, text) in [
        ("stderr", err.clone()),
        ("stdout", String::from_utf8_lossy(&o.stdout).into_owned()),
        ("the output", std::fs::read_to_string(&out).unwrap()),
        ("the summary", std::fs::read_to_string(&sum).unwrap()),
    ] {
        assert!(!text.contains("ECHOCHECK"), "the key leaked into {what}");
    }
}

#[test]
fn secret_headers_are_redacted_everywhere_and_can_come_from_the_environment() {
    let mock = Mock::start(MockConfig {
        api_key: Some(ApiKey::new("sk-from-env-7c1d2e")),
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(10));
    let out = dir.path("out.jsonl");
    let sum = dir.path("s.json");
    let o = bulkprompt()
        .env("AUTH_HEADER", "Bearer sk-from-env-7c1d2e")
        .args(["run"])
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .args(["--endpoint", &mock.url(), "--model", "m", "--limit", "4"])
        .args(["--header", "x-api-key: hdr-SECRET-4411"])
        .args(["--header=X-Auth-Token: tok-SECRET-9931"])
        .args(["--header", "X-Title: visible-title"])
        .args(["--header-env", "Authorization: AUTH_HEADER"])
        .args(["--summary-json", sum.to_str().unwrap()])
        .output()
        .unwrap();
    // The header from the environment reached the provider (it requires the key).
    assert_code(&o, 0);
    assert_eq!(records_by_id(&out).len(), 4);
    let err = stderr(&o);
    assert!(err.contains("resume:"), "{err}");
    assert!(err.contains("x-api-key: (redacted)"), "{err}");
    assert!(err.contains("visible-title"), "{err}");
    let meta = std::fs::read_to_string(dir.path(".bulkprompt/out.jsonl.meta.json")).unwrap();
    for (what, text) in [
        ("stderr", err.as_str()),
        ("the meta", meta.as_str()),
        ("the summary", &std::fs::read_to_string(&sum).unwrap()),
        ("the output", &std::fs::read_to_string(&out).unwrap()),
    ] {
        for secret in ["hdr-SECRET", "tok-SECRET", "sk-from-env"] {
            assert!(!text.contains(secret), "{secret} leaked into {what}");
        }
    }
    // status still reads the redacted command line.
    let st = bulkprompt()
        .args(["status", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert_code(&st, 0);
}

// ---- Every run ends --------------------------------------------------------------------------

fn closed_port_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}/v1")
}

#[test]
fn an_unreachable_endpoint_ends_the_run_with_exit_4() {
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(20));
    let out = dir.path("out.jsonl");
    let url = closed_port_url();
    let o = output_within(
        &mut run_cmd(
            &input,
            &out,
            &url,
            &["--max-attempts", "2", "--retry-base-ms", "10"],
        ),
        ENDS,
    );
    assert_code(&o, 4);
    let err = stderr(&o);
    assert!(err.contains("cannot reach the endpoint"), "{err}");
    assert!(!err.contains("requests in flight"), "{err}");

    // A first request that hangs is the same, once its attempts time out.
    let mock = Mock::start(MockConfig::with_fault(Fault::Hang, 1.0));
    let o = output_within(
        &mut run_cmd(
            &input,
            &dir.path("out2.jsonl"),
            &mock.url(),
            &[
                "--max-attempts",
                "2",
                "--retry-base-ms",
                "10",
                "--timeout",
                "0.3",
            ],
        ),
        ENDS,
    );
    assert_code(&o, 4);
    assert!(
        stderr(&o).contains("cannot reach the endpoint"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_limit_of_one_request_a_minute_still_sends() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(1));
    let out = dir.path("out.jsonl");
    let o = output_within(
        &mut run_cmd(&input, &out, &mock.url(), &["--rpm", "1"]),
        ENDS,
    );
    assert_code(&o, 0);
    assert_eq!(records(&out).len(), 1);
}

#[test]
fn sighup_drains_like_sigterm_and_keeps_every_answer() {
    let mock = slow_mock(400);
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(300));
    let out = dir.path("out.jsonl");
    let (mut child, rx, reader) = spawn_with_stderr_lines(
        run_cmd(&input, &out, &mock.url(), &["-v", "--concurrency", "64"]).args(["--grace", "10"]),
    );
    wait_for_line(&rx, "ready at", ENDS);
    std::thread::sleep(Duration::from_millis(600));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let status = child.wait().unwrap();
    let err = reader.join().unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    let kept = records_by_id(&out).len() as u64;
    assert!(kept > 0 && kept < 300);
    assert_eq!(mock.stats().ok, kept, "answers in flight were kept");
}

#[test]
fn sigint_during_a_long_validation_stops_it_at_once() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(400_000));
    let out = dir.path("out.jsonl");
    let (mut child, rx, reader) =
        spawn_with_stderr_lines(&mut run_cmd(&input, &out, &mock.url(), &["-v"]));
    wait_for_line(&rx, "reading the job file", ENDS);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    let err = reader.join().unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(
        err.contains("interrupted while reading the job file"),
        "{err}"
    );
    assert_eq!(mock.stats().requests, 0);
}

// ---- Contracts -------------------------------------------------------------------------------

#[test]
fn exit_codes_follow_the_readme_table_row_by_row() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let good = dir.write("good.jsonl", chat_jobs(5));
    let code = |o: std::process::Output| o.status.code();
    // 0: every job ok.
    assert_eq!(
        code(run(&good, &dir.path("o0.jsonl"), &mock.url(), &[])),
        Some(0)
    );
    // 1: argument parser, configuration, input.
    assert_eq!(
        code(
            bulkprompt()
                .args(["run", "--no-such-flag"])
                .output()
                .unwrap()
        ),
        Some(1)
    );
    assert_eq!(
        code(
            bulkprompt()
                .args(["run", "--rpm", "many", "x.jsonl"])
                .output()
                .unwrap()
        ),
        Some(1)
    );
    assert_eq!(
        code(bulkprompt().arg("run").arg(&good).output().unwrap()),
        Some(1)
    );
    let bad = dir.write(
        "bad.jsonl",
        "{\"id\":\"a\",\"messages\":[{\"role\":\"user\",\"content\":5}]}\n",
    );
    assert_eq!(
        code(run(&bad, &dir.path("o1.jsonl"), &mock.url(), &[])),
        Some(1)
    );
    // Help and version are answers, not errors.
    assert_eq!(code(bulkprompt().arg("--help").output().unwrap()), Some(0));
    assert_eq!(
        code(bulkprompt().arg("--version").output().unwrap()),
        Some(0)
    );
    // 2: finished with failed jobs.
    let mixed = dir.write("mixed.jsonl", chat_jobs(3) + &rejected_job("bad"));
    assert_eq!(
        code(run(&mixed, &dir.path("o2.jsonl"), &mock.url(), &[])),
        Some(2)
    );
    // 3: the cost cap.
    assert_eq!(
        code(run(
            &good,
            &dir.path("o3.jsonl"),
            &mock.url(),
            &["--model", FLASH, "--max-cost", "0.0000001"]
        )),
        Some(3)
    );
    // 4: the provider refused the key.
    let locked = Mock::start(MockConfig {
        api_key: Some(ApiKey::new("sk-right-123456")),
        ..Default::default()
    });
    assert_eq!(
        code(
            run_cmd(
                &good,
                &dir.path("o4.jsonl"),
                &locked.url(),
                &["--api-key-env", "K"]
            )
            .env("K", "sk-wrong-123456")
            .output()
            .unwrap()
        ),
        Some(4)
    );
    // 5: the output cannot be written, found before anything is sent.
    let file = dir.write("a-file", "x");
    assert_eq!(
        code(run(&good, &file.join("o5.jsonl"), &mock.url(), &[])),
        Some(5)
    );
    let unreadable = dir.path("no-access");
    std::fs::create_dir(&unreadable).unwrap();
    let is_root = unsafe { libc::geteuid() } == 0;
    if !is_root {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&unreadable, std::fs::Permissions::from_mode(0o500)).unwrap();
        assert_eq!(
            code(run(&good, &unreadable.join("o.jsonl"), &mock.url(), &[])),
            Some(5)
        );
    }
    // 130: a signal (SIGTERM here; SIGHUP and SIGINT have their own tests).
    let slow = slow_mock(500);
    let many = dir.write("many.jsonl", chat_jobs(100));
    let (mut child, rx, reader) = spawn_with_stderr_lines(&mut run_cmd(
        &many,
        &dir.path("o130.jsonl"),
        &slow.url(),
        &["-v"],
    ));
    wait_for_line(&rx, "ready at", ENDS);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(130));
    drop(reader);
    // Sent: the 5 good jobs and the 4 mixed ones; every refusal sent nothing.
    assert_eq!(mock.stats().requests, 5 + 4);
}

/// Checks that the summary's job counts add up, in the JSON and in the text.
fn assert_counts_add_up(s: &serde_json::Value, text: &str) {
    let n = |k: &str| s[k].as_u64().unwrap();
    let jobs = n("jobs");
    let parts = [
        "skipped_done",
        "skipped_failed",
        "new",
        "retried_failed",
        "changed",
        "not_run",
    ];
    let sum: u64 = parts.iter().map(|k| n(k)).sum();
    assert_eq!(sum, jobs, "{s}");
    assert_eq!(
        n("ok") + n("failed") + n("unwritten"),
        n("new") + n("retried_failed") + n("changed"),
        "{s}"
    );
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("jobs:"))
        .unwrap_or_else(|| panic!("no jobs line: {text}"));
    let (head, rest) = line.split_once("in file:").unwrap();
    let total: u64 = head
        .trim()
        .trim_start_matches("jobs:")
        .trim()
        .parse()
        .unwrap();
    let shown: u64 = rest
        .split(',')
        .map(|p| p.split_whitespace().next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!((total, shown), (jobs, jobs), "{line}");
}

#[test]
fn job_counts_in_the_summary_add_up_to_the_file() {
    let mock = slow_mock(20);
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(200));
    let out = dir.path("out.jsonl");
    let sum = dir.path("s.json");
    let with_sum = |extra: &[&str]| {
        let mut a = extra.to_vec();
        a.extend(["--summary-json", sum.to_str().unwrap()]);
        let o = run(&input, &out, &mock.url(), &a);
        // The summary decodes into its type: no field missing, none unknown.
        let _ = typed_summary(&sum);
        let s = summary(&sum);
        assert_counts_add_up(&s, &stderr(&o));
        s
    };
    // A sample, then a cap stop among changed jobs, then the rest.
    let s = with_sum(&["--limit", "2", "--model", FLASH]);
    assert_eq!(
        (s["new"].as_u64(), s["not_run"].as_u64()),
        (Some(2), Some(198))
    );
    with_sum(&["--model", FLASH, "--max-tokens", "40"]);
    let whole = total_cost(&out);
    std::fs::write(&input, chat_jobs(200).replace("Summarize", "Describe")).unwrap();
    let cap = format!("{:.9}", whole * 1.3);
    let s = with_sum(&[
        "--model",
        FLASH,
        "--max-tokens",
        "40",
        "--max-cost",
        &cap,
        "--concurrency",
        "64",
    ]);
    assert_eq!(s["outcome"], "budget");
    assert!(
        s["changed"].as_u64().unwrap() > 0 && s["not_run"].as_u64().unwrap() > 0,
        "{s}"
    );
}

#[test]
fn a_panicking_job_task_is_recorded_as_failed_and_counted() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(20));
    let out = dir.path("out.jsonl");
    let sum = dir.path("s.json");
    let o = run_cmd(
        &input,
        &out,
        &mock.url(),
        &["--summary-json", sum.to_str().unwrap()],
    )
    .env("BULKPROMPT_TEST_PANIC_ID", "j3")
    .output()
    .unwrap();
    assert_code(&o, 2);
    let recs = records_by_id(&out);
    assert_eq!(recs.len(), 20);
    let j3 = &recs["j3"];
    assert_eq!(j3.status, Status::Failed);
    let e = j3.error.as_ref().unwrap();
    assert_eq!(e.kind.as_str(), "internal");
    assert!(e.message.contains("panicked"), "{}", e.message);
    let s = summary(&sum);
    assert_eq!(
        (s["ok"].as_u64(), s["failed"].as_u64()),
        (Some(19), Some(1))
    );
    assert_eq!(s["failed_by_kind"]["internal"], 1);
    // The next run retries it.
    assert_code(&run(&input, &out, &mock.url(), &[]), 0);
    assert_eq!(records_by_id(&out)["j3"].status, Status::Ok);
}

#[test]
fn a_job_file_cut_short_while_running_changes_nothing_sent() {
    // Validation keeps the jobs it built (the spill) and the run sends those: the job file is
    // read once. 3,000 jobs are more than the reader holds ahead of the run, so reading the
    // file again would meet the cut.
    let mock = slow_mock(5);
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(3_000));
    let out = dir.path("out.jsonl");
    let sum = dir.path("summary.json");
    let (mut child, rx, reader) = spawn_with_stderr_lines(
        run_cmd(&input, &out, &mock.url(), &["-v", "--concurrency", "4"])
            .arg("--summary-json")
            .arg(&sum),
    );
    wait_for_line(&rx, "ready at", ENDS);
    std::fs::File::create(&input).unwrap();
    let status = child.wait().unwrap();
    let err = reader.join().unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    let recs = records_by_id(&out);
    assert_eq!(recs.len(), 3_000);
    assert!(recs.values().all(|r| r.status == Status::Ok));
    assert_eq!(summary(&sum)["ok"].as_u64(), Some(3_000));
    // Nothing of the spill is left in the output's folder.
    let mut names: Vec<String> = std::fs::read_dir(dir.tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [".bulkprompt", "jobs.jsonl", "out.jsonl", "summary.json"]
    );
}

#[test]
fn a_run_killed_while_it_reads_its_validated_jobs_leaves_no_file_behind() {
    // The spill has no name: kill -9 in the middle of the run leaves the folder as it was,
    // and the next run resumes.
    let mock = slow_mock(20);
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(3_000));
    let out = dir.path("out.jsonl");
    let (mut child, rx, reader) = spawn_with_stderr_lines(&mut run_cmd(
        &input,
        &out,
        &mock.url(),
        &["-v", "--concurrency", "4"],
    ));
    wait_for_line(&rx, "ready at", ENDS);
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    drop(reader);
    let mut names: Vec<String> = std::fs::read_dir(dir.tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [".bulkprompt", "jobs.jsonl", "out.jsonl"]);
    let done = records_by_id(&out).len();
    assert!(done > 0 && done < 3_000, "{done} records before the kill");
    assert_code(&run(&input, &out, &mock.url(), &["--concurrency", "64"]), 0);
    assert_eq!(records_by_id(&out).len(), 3_000);
}

#[test]
fn a_job_file_cut_short_while_read_again_is_not_a_success() {
    // Without a spill (a disk without room for one), the run reads the job file again and
    // finds the cut.
    let mock = slow_mock(50);
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(50_000));
    let out = dir.path("out.jsonl");
    let (mut child, rx, reader) = spawn_with_stderr_lines(
        run_cmd(&input, &out, &mock.url(), &["-v", "--concurrency", "4"])
            .env("BULKPROMPT_TEST_NO_SPILL", "1"),
    );
    wait_for_line(&rx, "ready at", ENDS);
    std::fs::File::create(&input).unwrap();
    let status = child.wait().unwrap();
    let err = reader.join().unwrap();
    assert_eq!(status.code(), Some(4), "{err}");
    assert!(err.contains("the job file changed while running"), "{err}");
    assert!(err.contains("resume:"), "{err}");
}
