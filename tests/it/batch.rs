//! Batch mode against the simulator's batch API: the same records at the batch price, several
//! batches, nothing created or answered twice through kill -9 at every phase, expired and
//! partly failed batches resubmitted, --no-wait and exit 6, the cost cap.

use crate::harness::*;
use bulkprompt::mock::{BatchConfig, MockConfig};
use bulkprompt::output::Status;
use std::time::Duration;

const MODEL: &str = "google/gemini-2.0-flash-001";

fn batch_mock(batch: BatchConfig) -> Mock {
    Mock::start(MockConfig {
        batch,
        ..Default::default()
    })
}

fn batch_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["--model", MODEL, "--mode", "batch", "--poll-interval", "1"];
    a.extend(extra);
    a
}

#[test]
fn twelve_thousand_jobs_become_several_batches_at_half_the_price() {
    let mock = batch_mock(BatchConfig {
        delay: Duration::from_millis(300),
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(12_000));
    let out = dir.path("out.jsonl");
    let sum = dir.path("s.json");
    let o = output_within(
        run_cmd(
            &input,
            &out,
            &mock.url(),
            &batch_args(&[
                "--batch-max-lines",
                "5000",
                "--summary-json",
                sum.to_str().unwrap(),
            ]),
        )
        .env_remove("NO_SUCH"),
        Duration::from_secs(120),
    );
    assert_code(&o, 0);
    let recs = records(&out);
    assert_eq!(recs.len(), 12_000, "every id exactly once");
    let by_id = records_by_id(&out);
    assert_eq!(by_id.len(), 12_000);
    assert!(recs.iter().all(|r| r.status == Status::Ok));
    let b = mock.batch_stats();
    assert_eq!((b.batches_created, b.duplicate_keys), (3, 0));
    assert_eq!((b.lines_answered, b.most_answers_per_id), (12_000, 1));
    // Costed at half the live price ($0.10/M in, $0.40/M out for this model).
    for r in recs.iter().take(50) {
        let live = r.prompt_tokens.unwrap() as f64 * 0.10e-6
            + r.completion_tokens.unwrap() as f64 * 0.40e-6;
        assert!(
            (r.cost_usd.unwrap() - live / 2.0).abs() < 1e-12,
            "{} vs half of {live}",
            r.cost_usd.unwrap()
        );
    }
    let recorded: f64 = recs.iter().map(|r| r.cost_usd.unwrap()).sum();
    let billed = mock.stats().billed as f64 / 1e12;
    assert!((recorded - billed).abs() < 1e-9, "{recorded} vs {billed}");
    // A re-run finds everything done and creates nothing.
    let o = run(&input, &out, &mock.url(), &batch_args(&[]));
    assert_code(&o, 0);
    assert_eq!(mock.batch_stats().batches_created, 3);
}

/// kill -9 in every phase of a batch run (uploading, creating, polling, downloading, and at
/// random moments), then a run to the end: every id once, no batch created twice, no id
/// answered twice.
#[test]
fn kill_9_at_any_moment_never_creates_a_batch_twice_or_answers_an_id_twice() {
    let mock = batch_mock(BatchConfig {
        delay: Duration::from_millis(1500),
        // Every call takes a while, so a kill lands inside it.
        latency: Duration::from_millis(400),
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(900));
    let out = dir.path("out.jsonl");
    let args = batch_args(&["--batch-max-lines", "300", "-v"]);
    let mut kills = Vec::new();
    let mut said = String::new();
    let phases: [(&str, u64); 8] = [
        ("uploading", 150),
        ("creating it", 150),
        ("creating it", 150),
        ("in_progress", 100),
        ("downloading", 150),
        ("downloading", 450),
        ("created as", 0),
        ("completed", 0),
    ];
    for (needle, after_ms) in phases {
        let mut cmd = run_cmd(&input, &out, &mock.url(), &args);
        let (mut child, rx, reader) = spawn_with_stderr_lines(&mut cmd);
        let seen = std::time::Instant::now() + Duration::from_secs(30);
        let mut found = false;
        while std::time::Instant::now() < seen {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(l) if l.contains(needle) => {
                    found = true;
                    break;
                }
                Ok(_) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if child.try_wait().unwrap().is_some() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        std::thread::sleep(Duration::from_millis(after_ms));
        // SAFETY: a plain kill(2) of our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let _ = child.wait();
        said.push_str(&reader.join().unwrap_or_default());
        kills.push((needle, found));
    }
    assert!(
        kills.iter().filter(|(_, found)| *found).count() >= 6,
        "kills that landed in their phase: {kills:?}"
    );
    let o = output_within(
        &mut run_cmd(
            &input,
            &out,
            &mock.url(),
            &batch_args(&["--batch-max-lines", "300", "-v"]),
        ),
        Duration::from_secs(120),
    );
    assert_code(&o, 0);
    said.push_str(&stderr(&o));
    // A creation whose answer a kill cut off was found by its key, not made again.
    assert!(said.contains("found at the provider as"), "{said}");
    assert!(said.contains("still open: collecting them"), "{said}");
    let recs = records(&out);
    let by_id = records_by_id(&out);
    assert_eq!(by_id.len(), 900);
    assert_eq!(recs.len(), 900, "every id exactly once after compaction");
    assert!(recs.iter().all(|r| r.status == Status::Ok));
    let b = mock.batch_stats();
    assert_eq!(b.duplicate_keys, 0, "{b:?}");
    assert_eq!(b.most_answers_per_id, 1, "an id was answered twice: {b:?}");
    // Money: what the output records is what the simulator billed.
    let recorded: f64 = recs.iter().map(|r| r.cost_usd.unwrap()).sum();
    let billed = mock.stats().billed as f64 / 1e12;
    assert!((recorded - billed).abs() < 1e-9, "{recorded} vs {billed}");
}

#[test]
fn expired_and_partly_failed_batches_end_with_every_id_ok() {
    let mock = Mock::start(MockConfig {
        batch: BatchConfig {
            delay: Duration::from_millis(200),
            fail_rate: 0.1,
            expire_rate: 0.5,
            ..Default::default()
        },
        seed: 3,
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(400));
    let out = dir.path("out.jsonl");
    let o = output_within(
        &mut run_cmd(
            &input,
            &out,
            &mock.url(),
            &batch_args(&["--batch-max-lines", "100", "--max-attempts", "12"]),
        ),
        Duration::from_secs(120),
    );
    assert_code(&o, 0);
    let recs = records_by_id(&out);
    assert_eq!(recs.len(), 400);
    assert!(recs.values().all(|r| r.status == Status::Ok));
    let b = mock.batch_stats();
    assert!(b.batches_created > 4, "{b:?}");
    assert_eq!(b.most_answers_per_id, 1, "{b:?}");
    assert!(recs.values().any(|r| r.attempts > 1));
}

#[test]
fn no_wait_submits_and_exits_6_and_the_next_run_collects() {
    let mock = batch_mock(BatchConfig {
        delay: Duration::from_millis(1500),
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(250));
    let out = dir.path("out.jsonl");
    let sum = dir.path("s.json");
    let o = run(
        &input,
        &out,
        &mock.url(),
        &batch_args(&["--no-wait", "--summary-json", sum.to_str().unwrap()]),
    );
    assert_code(&o, 6);
    assert!(
        stderr(&o).contains("re-run the same command to collect"),
        "{}",
        stderr(&o)
    );
    assert_eq!(summary(&sum)["outcome"], "submitted");
    assert_eq!(mock.batch_stats().batches_created, 1);
    // Collected while still running: exit 6 again, nothing submitted twice.
    let o = run(&input, &out, &mock.url(), &batch_args(&["--no-wait"]));
    assert_code(&o, 6);
    assert_eq!(mock.batch_stats().batches_created, 1);
    // `batches` lists it, asks the provider, and cancels it.
    let batches = |extra: &[&str]| {
        let o = bulkprompt()
            .arg("batches")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap();
        assert_code(&o, 0);
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let url = mock.url();
    assert!(batches(&[]).contains("open: a run collects it"));
    assert!(
        batches(&["--check", "--endpoint", &url]).contains("open (in_progress at the provider)")
    );
    assert!(batches(&["--cancel", "--endpoint", &url]).contains("open (cancelled at the provider)"));
    // The next run collects the half it answered and submits the rest again.
    let o = run(&input, &out, &mock.url(), &batch_args(&[]));
    assert_code(&o, 0);
    let recs = records_by_id(&out);
    assert_eq!(recs.len(), 250);
    assert!(recs.values().all(|r| r.status == Status::Ok));
    let b = mock.batch_stats();
    assert_eq!((b.batches_created, b.most_answers_per_id), (2, 1));
    assert!(batches(&[]).contains("ended (cancelled), collected"));
}

#[test]
fn the_cost_cap_holds_in_batch_mode() {
    let mock = batch_mock(BatchConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(400));
    let out = dir.path("out.jsonl");
    // Each job's worst case at the batch price is about $0.0002 (1,024 output tokens at
    // $0.20/M): a cap of $0.02 holds about a hundred of them.
    let o = run(
        &input,
        &out,
        &mock.url(),
        &batch_args(&["--max-cost", "0.02", "--batch-max-lines", "60"]),
    );
    assert_code(&o, 3);
    let recs = records_by_id(&out);
    let total: f64 = recs.values().map(|r| r.cost_usd.unwrap_or(0.0)).sum();
    assert!(total <= 0.02, "{total}");
    assert!(!recs.is_empty() && recs.len() < 400, "{}", recs.len());
    // Nothing was submitted beyond what the cap could hold.
    assert_eq!(mock.batch_stats().lines_answered, recs.len() as u64);
}

/// OpenRouter style: requests inline, at most 5,000 a batch (a larger --batch-max-lines is cut
/// to that), `endpoint` and `model` before `requests` (the simulator answers 400 otherwise),
/// results inline.
#[test]
fn openrouter_style_inline_batches_hold_at_most_five_thousand() {
    let mock = batch_mock(BatchConfig {
        delay: Duration::from_millis(200),
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(6_000));
    let out = dir.path("out.jsonl");
    let o = output_within(
        &mut run_cmd(
            &input,
            &out,
            &mock.url(),
            &batch_args(&["--batch-api", "openrouter", "--batch-max-lines", "9000"]),
        ),
        Duration::from_secs(120),
    );
    assert_code(&o, 0);
    let recs = records(&out);
    assert_eq!(recs.len(), 6_000);
    assert!(recs.iter().all(|r| r.status == Status::Ok));
    let b = mock.batch_stats();
    assert_eq!((b.batches_created, b.files_uploaded), (2, 0), "{b:?}");
    assert_eq!((b.lines_answered, b.most_answers_per_id), (6_000, 1));
}

/// `--batch-fallback live`: what an expired batch left unanswered is sent live at once instead
/// of waiting for another batch.
#[test]
fn the_leftovers_of_an_expired_batch_can_go_live() {
    let mock = batch_mock(BatchConfig {
        delay: Duration::from_millis(200),
        expire_rate: 1.0,
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(200));
    let out = dir.path("out.jsonl");
    let o = run(
        &input,
        &out,
        &mock.url(),
        &batch_args(&["--batch-fallback", "live"]),
    );
    assert_code(&o, 0);
    let recs = records_by_id(&out);
    assert_eq!(recs.len(), 200);
    assert!(recs.values().all(|r| r.status == Status::Ok));
    let b = mock.batch_stats();
    assert_eq!((b.batches_created, b.lines_answered), (1, 100), "{b:?}");
    // The other hundred went live, once each.
    assert_eq!(mock.stats().requests, 100);
    // Live answers at the live price, batch answers at the batch price: as billed.
    let recorded: f64 = recs.values().map(|r| r.cost_usd.unwrap()).sum();
    let billed = mock.stats().billed as f64 / 1e12;
    assert!((recorded - billed).abs() < 1e-9, "{recorded} vs {billed}");
}

/// Local images go into the batch file as data: URLs, read as the batch is built.
#[test]
fn local_images_are_embedded_in_batch_lines() {
    let mock = batch_mock(BatchConfig::default());
    let dir = Dir::new();
    dir.write("img/a.png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR");
    let input = dir.write("p.csv", "id,caption,photo\np1,a,img/a.png\np2,b,\n");
    let out = dir.path("out.jsonl");
    let o = run(
        &input,
        &out,
        &mock.url(),
        &batch_args(&["--template", "{caption}", "--image-column", "photo"]),
    );
    assert_code(&o, 0);
    assert_eq!(records_by_id(&out).len(), 2);
    assert_eq!(mock.stats().images, 1);
}

/// A dead endpoint in batch mode: the run ends (exit 4) after its tries, saying so; the batch
/// it meant to submit is in the journal, and the next run against a live provider finds nothing
/// was created, submits it and collects it.
#[test]
fn a_dead_endpoint_ends_a_batch_run_and_the_next_run_submits_once() {
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(20));
    let out = dir.path("out.jsonl");
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/v1", l.local_addr().unwrap())
    };
    let o = output_within(
        &mut run_cmd(&input, &out, &dead, &batch_args(&["--retry-base-ms", "10"])),
        Duration::from_secs(60),
    );
    assert_code(&o, 4);
    // A fresh output first asks the provider for batches of its own (a journal deleted), so
    // the dead endpoint shows there, before anything is journaled or uploaded.
    assert!(
        stderr(&o).contains("batch API: list batches"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("this run submitted no batch"),
        "{}",
        stderr(&o)
    );
    let journal = std::fs::read_to_string(dir.path(".bulkprompt/out.jsonl.batches.jsonl"))
        .unwrap_or_default();
    assert!(!journal.contains("\"created\""), "{journal}");
    let mock = batch_mock(BatchConfig::default());
    let o = run(&input, &out, &mock.url(), &batch_args(&[]));
    assert_code(&o, 0);
    assert_eq!(records_by_id(&out).len(), 20);
    assert_eq!(mock.batch_stats().batches_created, 1);
}
