//! Every paid answer once: the edges of "nothing paid twice" found by a careless user and a
//! hostile world (issue 22). Each test is named after what it protects; the money checks
//! compare what the simulator billed with what the output records.

use crate::harness::*;
use bulkprompt::mock::{BatchConfig, MockConfig};
use bulkprompt::output::{CostSource, Stale, Status};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

const MODEL: &str = "google/gemini-2.0-flash-001";
const ENDS: Duration = Duration::from_secs(60);

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

fn billed(mock: &Mock) -> f64 {
    mock.stats().billed as f64 / 1e12
}

fn recorded(out: &std::path::Path) -> f64 {
    records(out).iter().filter_map(|r| r.cost_usd).sum()
}

// ---- 5. A paid answer with odd usage -----------------------------------------------------

#[test]
fn an_answer_with_odd_usage_is_bought_once_and_still_counted() {
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(3));
    // Whole floats and numeric strings are read as they are meant.
    let floats = canned(
        r#"{"choices":[{"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10.0,"completion_tokens":"5","cost":"0.01"}}"#,
    );
    let out = dir.path("floats.jsonl");
    let o = run(&input, &out, &floats.url, &["--model", MODEL]);
    assert_code(&o, 0);
    assert_eq!(floats.requests.load(Relaxed), 3, "one request a job");
    for r in records(&out) {
        assert_eq!((r.prompt_tokens, r.completion_tokens), (Some(10), Some(5)));
        assert_eq!(r.cost_usd, Some(0.01));
        assert_eq!(r.cost_source, Some(CostSource::Provider));
    }
    // Usage that cannot be read: one request a job, the job's worst case recorded, so the cap
    // counts it; the cap holds.
    let negative = canned(
        r#"{"choices":[{"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":-4,"completion_tokens":[5]}}"#,
    );
    let out = dir.path("negative.jsonl");
    let args = ["--model", MODEL, "--max-tokens", "100", "--max-cost", "1"];
    let o = run(&input, &out, &negative.url, &args);
    assert_code(&o, 0);
    assert_eq!(
        negative.requests.load(Relaxed),
        3,
        "never retried for its usage"
    );
    assert!(
        stderr(&o).contains("usage cannot be read"),
        "{}",
        stderr(&o)
    );
    for r in records(&out) {
        assert_eq!(r.status, Status::Ok);
        assert_eq!(r.cost_source, Some(CostSource::WorstCase));
        // At least the whole output allowance at $0.40/M.
        assert!(r.cost_usd.unwrap() >= 100.0 * 0.40e-6, "{:?}", r.cost_usd);
    }
    let again = run(&input, &out, &negative.url, &args);
    assert_code(&again, 0);
    assert_eq!(
        negative.requests.load(Relaxed),
        3,
        "the re-run buys nothing"
    );
}

// ---- 8. n > 1 in the worst case ----------------------------------------------------------

#[test]
fn several_choices_count_in_the_worst_case_so_the_cap_holds() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let jobs: String = (0..40)
        .map(|i| format!("{{\"id\":\"j{i}\",\"n\":8,\"max_tokens\":32,\"messages\":[{{\"role\":\"user\",\"content\":\"Write a line about item {i}.\"}}]}}\n"))
        .collect();
    let input = dir.write("jobs.jsonl", jobs);
    let out = dir.path("out.jsonl");
    let o = run(
        &input,
        &out,
        &mock.url(),
        &["--model", MODEL, "--max-cost", "0.0002"],
    );
    assert_code(&o, 3);
    let spent = recorded(&out);
    assert!(spent <= 0.0002 + 1e-12, "recorded {spent} over the cap");
    assert!(
        (spent - billed(&mock)).abs() < 1e-9,
        "{spent} vs billed {}",
        billed(&mock)
    );
    // The estimate's worst case counts every choice too.
    let o = bulkprompt()
        .args(["estimate"])
        .arg(&input)
        .args(["--model", MODEL])
        .output()
        .unwrap();
    assert_code(&o, 0);
    let text = String::from_utf8_lossy(&o.stdout).replace(',', "");
    assert!(
        text.contains("10240"),
        "40 jobs x 8 choices x 32 tokens: {text}"
    );
}

// ---- 13. An image cell naming a FIFO -----------------------------------------------------

#[cfg(unix)]
#[test]
fn an_image_cell_naming_a_fifo_never_blocks_validate_or_run() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let fifo = dir.path("pipe.png");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let input = dir.write("jobs.csv", "id,caption,photo\na,shoe,pipe.png\n");
    let args = [
        "--template",
        "Describe: {caption}",
        "--image-column",
        "photo",
    ];
    let o = output_within(
        bulkprompt()
            .arg("validate")
            .arg(&input)
            .args(args)
            .args(["--model", "m"]),
        ENDS,
    );
    assert_code(&o, 1);
    let said = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(said.contains("pipe.png: not a regular file"), "{said}");
    let o = output_within(
        &mut run_cmd(&input, &dir.path("o.jsonl"), &mock.url(), &args),
        ENDS,
    );
    assert_code(&o, 1);
    assert_eq!(mock.stats().requests, 0);
}

// ---- 2. A creation whose answer is lost --------------------------------------------------

#[test]
fn a_batch_creation_or_upload_whose_answer_is_lost_is_made_once() {
    for lose in [1, 2] {
        // 1: the upload's answer is lost; 2: the upload's and the creation's.
        let mock = batch_mock(BatchConfig {
            lose_answers: lose,
            ..Default::default()
        });
        let dir = Dir::new();
        let input = dir.write("jobs.jsonl", chat_jobs(100));
        let out = dir.path("out.jsonl");
        let o = output_within(
            &mut run_cmd(
                &input,
                &out,
                &mock.url(),
                &batch_args(&["--retry-base-ms", "10"]),
            ),
            ENDS,
        );
        assert_code(&o, 0);
        let b = mock.batch_stats();
        assert_eq!(b.files_uploaded, 1, "lose {lose}: one upload");
        assert_eq!((b.batches_created, b.duplicate_keys), (1, 0), "lose {lose}");
        assert_eq!((b.lines_answered, b.most_answers_per_id), (100, 1));
        assert_eq!(records_by_id(&out).len(), 100);
    }
}

// ---- 3. Collecting with --limit, or after the job file was edited ------------------------

#[test]
fn collecting_with_a_limit_or_an_edited_job_file_keeps_every_paid_answer() {
    let mock = batch_mock(BatchConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(100));
    let out = dir.path("out.jsonl");
    let o = run(&input, &out, &mock.url(), &batch_args(&["--no-wait"]));
    assert_code(&o, 6);
    std::thread::sleep(Duration::from_millis(400));
    let o = run(&input, &out, &mock.url(), &batch_args(&["--limit", "10"]));
    assert_code(&o, 0);
    assert_eq!(
        records_by_id(&out).len(),
        100,
        "all 100 paid answers are written"
    );
    assert!((recorded(&out) - billed(&mock)).abs() < 1e-9);
    let o = run(&input, &out, &mock.url(), &batch_args(&[]));
    assert_code(&o, 0);
    assert_eq!(
        mock.batch_stats().lines_answered,
        100,
        "nothing submitted again"
    );

    // Ids 51-100 removed, id j0 changed, before collecting.
    let mock = batch_mock(BatchConfig::default());
    let out = dir.path("edited.jsonl");
    let o = run(&input, &out, &mock.url(), &batch_args(&["--no-wait"]));
    assert_code(&o, 6);
    std::thread::sleep(Duration::from_millis(400));
    let kept: String = chat_jobs(50).replacen("item number 0 ", "item number zero ", 1);
    let edited = dir.write("edited-jobs.jsonl", kept);
    std::fs::copy(&edited, &input).unwrap();
    let o = run(&input, &out, &mock.url(), &batch_args(&[]));
    assert_code(&o, 0);
    let by_id = records_by_id(&out);
    assert_eq!(
        by_id.len(),
        100,
        "the removed jobs' answers stay: they were bought"
    );
    assert_eq!(by_id["j77"].stale, Some(Stale::JobRemoved));
    assert_eq!(by_id["j7"].stale, None);
    assert_eq!(by_id["j0"].stale, Some(Stale::JobChanged));
    // The changed job runs again (its record was for the old request); the rest is done.
    let before = mock.batch_stats().lines_answered;
    let o = run(&input, &out, &mock.url(), &batch_args(&[]));
    assert_code(&o, 0);
    assert_eq!(mock.batch_stats().lines_answered, before + 1);
    assert_eq!(records_by_id(&out)["j0"].stale, None);
    assert!(
        (recorded(&out) - billed(&mock)).abs() < 1e-9,
        "the output's total is the bill"
    );
}

// ---- 1. A live run on an output whose batches are open -----------------------------------

#[test]
fn a_live_run_never_buys_again_what_an_open_batch_holds() {
    let mock = batch_mock(BatchConfig {
        delay: Duration::from_millis(300),
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(200));
    let out = dir.path("out.jsonl");
    let o = run(&input, &out, &mock.url(), &batch_args(&["--no-wait"]));
    assert_code(&o, 6);
    let live = ["--model", MODEL];
    let o = output_within(&mut run_cmd(&input, &out, &mock.url(), &live), ENDS);
    assert_code(&o, 0);
    assert!(stderr(&o).contains("batches still open"), "{}", stderr(&o));
    assert_eq!(
        mock.stats().requests,
        0,
        "nothing in an open batch is sent live"
    );
    assert_eq!(records_by_id(&out).len(), 200);
    let o = run(&input, &out, &mock.url(), &batch_args(&[]));
    assert_code(&o, 0);
    assert_eq!(mock.batch_stats().most_answers_per_id, 1);
    assert!((recorded(&out) - billed(&mock)).abs() < 1e-9);
}

// ---- 4. The run's own folder deleted mid-run ---------------------------------------------

#[test]
fn a_deleted_run_folder_lets_no_second_writer_in_and_loses_nothing() {
    for parquet in [false, true] {
        let mock = Mock::start(MockConfig {
            latency: Duration::from_millis(40),
            ..Default::default()
        });
        let dir = Dir::new();
        let input = dir.write("jobs.jsonl", chat_jobs(400));
        let out = dir.path(if parquet { "out.parquet" } else { "out.jsonl" });
        let args = ["--concurrency", "8", "--rpm", "1000000"];
        let mut first = run_cmd(&input, &out, &mock.url(), &args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let folder = dir.path(".bulkprompt");
        let end = std::time::Instant::now() + ENDS;
        while mock.stats().requests < 40 && std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::fs::remove_dir_all(&folder).unwrap();
        // A second run on the same output is refused while the first writes it.
        let second = run(&input, &out, &mock.url(), &args);
        assert_code(&second, 1);
        assert!(
            stderr(&second).contains("being written by another bulkprompt run"),
            "parquet {parquet}: {}",
            stderr(&second)
        );
        let status = first.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(first.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert_eq!(status.code(), Some(0), "parquet {parquet}: {err}");
        let ids: std::collections::HashSet<String> = if parquet {
            let f = std::fs::File::open(&out).unwrap();
            let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
                .unwrap()
                .build()
                .unwrap();
            let mut ids = std::collections::HashSet::new();
            for b in r {
                let b = b.unwrap();
                let col = b
                    .column_by_name("id")
                    .unwrap()
                    .as_any()
                    .downcast_ref::<arrow_array::StringArray>()
                    .unwrap()
                    .clone();
                ids.extend(col.iter().flatten().map(str::to_string));
            }
            ids
        } else {
            records_by_id(&out).into_keys().collect()
        };
        assert_eq!(ids.len(), 400, "parquet {parquet}: every id, once");
        assert_eq!(
            mock.stats().requests,
            400,
            "parquet {parquet}: nothing bought twice"
        );
    }
}

// ---- 6. merge and copies of one record ---------------------------------------------------

#[test]
fn merge_refuses_an_output_in_any_form_and_counts_a_copied_record_once() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(60));
    let out = dir.path("out.jsonl");
    let mut shards = Vec::new();
    for i in 0..2 {
        let o = run(
            &input,
            &out,
            &mock.url(),
            &["--model", MODEL, "--shard", &format!("{i}/2")],
        );
        assert_code(&o, 0);
        shards.push(dir.path(&format!("out.shard-{i}-of-2.jsonl")));
    }
    let paid = billed(&mock);
    let merge = |inputs: &[&std::path::Path], target: &std::path::Path| {
        bulkprompt()
            .arg("merge")
            .args(inputs)
            .arg("-o")
            .arg(target)
            .output()
            .unwrap()
    };
    let p = dir.path("p.parquet");
    assert_code(&merge(&[&shards[0], &shards[1]], &p), 0);
    let journal = dir.path(".bulkprompt/p.parquet.journal.jsonl");
    let total =
        |path: &std::path::Path| -> f64 { records(path).iter().filter_map(|r| r.cost_usd).sum() };
    assert!((total(&journal) - paid).abs() < 1e-12);
    // The target among the inputs, as its Parquet or its journal: refused.
    for same in [&p, &journal] {
        let o = merge(&[&shards[0], &shards[1], same], &p);
        assert_code(&o, 1);
        assert!(
            stderr(&o).contains("is one of the outputs being merged"),
            "{}",
            stderr(&o)
        );
    }
    let o = merge(&[&shards[0], &p, &journal], &dir.path("q.jsonl"));
    assert_code(&o, 1);
    assert!(stderr(&o).contains("are the same output"), "{}", stderr(&o));
    // Merged again with the shards it holds (another file), and again: the total stays the bill.
    let q = dir.path("q.jsonl");
    assert_code(&merge(&[&shards[0], &shards[1], &p], &q), 0);
    assert!((total(&q) - paid).abs() < 1e-12, "{} vs {paid}", total(&q));
    let r = dir.path("r.jsonl");
    assert_code(&merge(&[&q, &shards[0], &shards[1]], &r), 0);
    assert!((total(&r) - paid).abs() < 1e-12, "{} vs {paid}", total(&r));
    assert_eq!(records_by_id(&r).len(), 60);
}

// ---- 11, 12. A lost output file; cancelled lines ----------------------------------------

#[test]
fn a_batch_whose_output_file_is_lost_goes_again_instead_of_blocking_the_output() {
    let mock = batch_mock(BatchConfig {
        lose_output_files: 1,
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(50));
    let out = dir.path("out.jsonl");
    let o = output_within(
        &mut run_cmd(&input, &out, &mock.url(), &batch_args(&[])),
        ENDS,
    );
    assert_code(&o, 0);
    assert!(
        stderr(&o).contains("has lost its output file"),
        "{}",
        stderr(&o)
    );
    let recs = records_by_id(&out);
    assert_eq!(recs.len(), 50);
    assert!(recs.values().all(|r| r.status == Status::Ok));
    assert_eq!(mock.batch_stats().batches_created, 2);
}

#[test]
fn cancelled_lines_go_again_and_a_refused_cancel_says_so() {
    let mock = batch_mock(BatchConfig {
        delay: Duration::from_secs(3),
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(40));
    let out = dir.path("out.jsonl");
    let o = run(&input, &out, &mock.url(), &batch_args(&["--no-wait"]));
    assert_code(&o, 6);
    let batches = |extra: &[&str]| {
        bulkprompt()
            .arg("batches")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    let url = mock.url();
    let o = batches(&["--cancel", "--endpoint", &url]);
    assert_code(&o, 0);
    // The provider wrote the lines it never ran into the error file: they go again, in this
    // run, and nothing is recorded as failed.
    let o = output_within(
        &mut run_cmd(&input, &out, &mock.url(), &batch_args(&[])),
        ENDS,
    );
    assert!(o.status.code() == Some(0), "{}", stderr(&o));
    let recs = records_by_id(&out);
    assert_eq!(recs.len(), 40);
    assert!(
        recs.values().all(|r| r.status == Status::Ok),
        "no cancelled line recorded as failed"
    );
    assert_eq!(mock.batch_stats().most_answers_per_id, 1);
    // Cancelling what has ended is refused by the provider: said, and exit 4.
    let o = run(
        &input,
        &dir.path("other.jsonl"),
        &mock.url(),
        &batch_args(&["--no-wait"]),
    );
    assert_code(&o, 6);
    let other = dir.path("other.jsonl");
    let cancel = |target: &std::path::Path| {
        bulkprompt()
            .arg("batches")
            .arg(target)
            .args(["--cancel", "--endpoint", &url])
            .output()
            .unwrap()
    };
    assert_code(&cancel(&other), 0);
    // Already cancelled at the provider, still open in the journal: the second cancel is refused.
    let o = cancel(&other);
    assert_code(&o, 4);
    assert!(
        stderr(&o).contains("refused to cancel 1 of 1"),
        "{}",
        stderr(&o)
    );
}

// ---- 16. The report and many model names --------------------------------------------------

#[test]
fn the_report_stays_bounded_however_many_model_names_the_output_holds() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let page_for = |models: usize| -> usize {
        let jobs: String = (0..2000)
            .map(|i| format!("{{\"id\":\"j{i}\",\"model\":\"m-{}\",\"messages\":[{{\"role\":\"user\",\"content\":\"x {i}\"}}]}}\n", i % models))
            .collect();
        let input = dir.write(&format!("jobs-{models}.jsonl"), jobs);
        let out = dir.path(&format!("out-{models}.jsonl"));
        let o = run(&input, &out, &mock.url(), &["--model", MODEL]);
        assert_code(&o, 0);
        let page = dir.path(&format!("r-{models}.html"));
        let o = bulkprompt()
            .arg("report")
            .arg(&out)
            .arg("-o")
            .arg(&page)
            .output()
            .unwrap();
        assert_code(&o, 0);
        let html = std::fs::read_to_string(&page).unwrap();
        if models > 40 {
            assert!(html.contains("other models"), "the rest share one row");
        }
        html.len()
    };
    let (few, many) = (page_for(50), page_for(2000));
    assert!(
        many < few + 4096,
        "2,000 model names made a page of {many} bytes, 50 one of {few}"
    );
}

// ---- 7, 9. The shared budget and the shared limit ----------------------------------------

fn coordinated<'a>(redis: &'a str, name: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["--model", MODEL, "--coordinator", redis, "--run-name", name];
    a.extend(extra);
    a
}

fn priced(n: usize) -> String {
    (0..n)
        .map(|i| format!("{{\"id\":\"j{i}\",\"max_tokens\":200,\"messages\":[{{\"role\":\"user\",\"content\":\"Label item {i}: {}\"}}]}}\n", "some words ".repeat(12)))
        .collect()
}

#[test]
fn a_shard_rerun_from_a_fresh_folder_keeps_what_it_spent_under_the_shared_cap() {
    let Some(redis) = Redis::start() else { return };
    let url = redis.url();
    let mock = Mock::start(MockConfig::default());
    const CAP: &str = "0.005";
    let args = coordinated(
        &url,
        "fresh",
        &["--shard", "0/2", "--max-cost", CAP, "--concurrency", "4"],
    );
    // Shard 0 runs to the cap, then again from a new folder (a rescheduled pod, a new disk).
    for folder in ["a", "b"] {
        let dir = Dir::new();
        let input = dir.write("jobs.jsonl", priced(2000));
        let o = run(
            &input,
            &dir.path(&format!("{folder}.jsonl")),
            &mock.url(),
            &args,
        );
        assert_code(&o, 3);
        std::mem::forget(dir);
    }
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", priced(2000));
    let shard1 = coordinated(&url, "fresh", &["--shard", "1/2", "--max-cost", CAP]);
    let o = run(&input, &dir.path("c.jsonl"), &mock.url(), &shard1);
    assert_code(&o, 3);
    let billed = billed(&mock);
    assert!(
        billed <= 0.005 + 1e-12,
        "billed {billed} against a cap of {CAP}"
    );
}

#[test]
fn a_second_process_on_a_running_shard_is_refused_at_once() {
    let Some(redis) = Redis::start() else { return };
    let url = redis.url();
    let mock = Mock::start(MockConfig {
        latency: Duration::from_millis(50),
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", priced(400));
    let args = coordinated(
        &url,
        "twice",
        &["--shard", "0/2", "--max-cost", "5", "--concurrency", "2"],
    );
    let mut first = run_cmd(&input, &dir.path("a.jsonl"), &mock.url(), &args)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let end = std::time::Instant::now() + ENDS;
    while mock.stats().requests < 5 && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    let other = Dir::new();
    let o = output_within(
        &mut run_cmd(&input, &other.path("b.jsonl"), &mock.url(), &args),
        Duration::from_secs(20),
    );
    assert_code(&o, 4);
    assert!(stderr(&o).contains("is being run by pid"), "{}", stderr(&o));
    let _ = first.kill();
    let _ = first.wait();
}

#[test]
fn every_worker_paces_by_the_runs_limit_not_its_own() {
    let Some(redis) = Redis::start() else { return };
    let url = redis.url();
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(20));
    let a = coordinated(&url, "limits", &["--shard", "0/2", "--rpm", "600"]);
    assert_code(&run(&input, &dir.path("a.jsonl"), &mock.url(), &a), 0);
    // Another limit: refused, saying the run's.
    let b = coordinated(&url, "limits", &["--shard", "1/2", "--rpm", "6000"]);
    let o = run(&input, &dir.path("b.jsonl"), &mock.url(), &b);
    assert_code(&o, 4);
    assert!(
        stderr(&o).contains("paces every worker by --rpm 600"),
        "{}",
        stderr(&o)
    );
    assert!(!dir.path("b.shard-1-of-2.jsonl").exists());
    // No limit of its own: it takes the run's.
    let c = coordinated(&url, "limits", &["--shard", "1/2", "-v"]);
    let o = run(&input, &dir.path("b.jsonl"), &mock.url(), &c);
    assert_code(&o, 0);
    assert!(
        stderr(&o).contains("is paced at --rpm 600"),
        "{}",
        stderr(&o)
    );
}

// ---- 8. Batch mode and a provider that bills more than the table's batch share ----------

#[test]
fn batch_mode_holds_the_cap_when_the_provider_bills_the_full_price() {
    let mock = Mock::start(MockConfig {
        // The batch API's usage.cost is the live price: no discount.
        cost_factor: Some(1.0),
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", priced(400));
    let out = dir.path("out.jsonl");
    let o = output_within(
        &mut run_cmd(
            &input,
            &out,
            &mock.url(),
            &batch_args(&["--max-cost", "0.005", "--batch-max-lines", "40"]),
        ),
        ENDS,
    );
    assert_code(&o, 3);
    let spent = recorded(&out);
    assert!(
        spent <= 0.005 + 1e-12,
        "recorded {spent} under a cap of $0.005"
    );
    assert!(
        (spent - billed(&mock)).abs() < 1e-9,
        "{spent} vs billed {}",
        billed(&mock)
    );
    // Several choices in batch mode count in full too.
    let mock = batch_mock(BatchConfig::default());
    let jobs: String = (0..40)
        .map(|i| format!("{{\"id\":\"j{i}\",\"n\":8,\"max_tokens\":32,\"messages\":[{{\"role\":\"user\",\"content\":\"Write a line about item {i}.\"}}]}}\n"))
        .collect();
    let input = dir.write("n.jsonl", jobs);
    let out = dir.path("n-out.jsonl");
    let o = output_within(
        &mut run_cmd(
            &input,
            &out,
            &mock.url(),
            &batch_args(&["--max-cost", "0.0001"]),
        ),
        ENDS,
    );
    assert_code(&o, 3);
    assert!(recorded(&out) <= 0.0001 + 1e-12);
}

#[test]
fn a_redis_that_needs_a_password_says_so() {
    let Some(redis) = Redis::start_with(Some("s3cret-pw-123")) else {
        return;
    };
    let url = redis.url().replace(":s3cret-pw-123@", "");
    assert!(!url.contains("s3cret"), "{url}");
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(3));
    let o = output_within(
        &mut run_cmd(
            &input,
            &dir.path("o.jsonl"),
            &mock.url(),
            &coordinated(&url, "pw", &["--max-cost", "1"]),
        ),
        ENDS,
    );
    assert_code(&o, 4);
    assert!(
        stderr(&o).contains("Redis needs a password"),
        "{}",
        stderr(&o)
    );
    assert_eq!(mock.stats().requests, 0);
}

// ---- The smaller ones --------------------------------------------------------------------

#[test]
fn metrics_addr_takes_a_name_and_warns_off_loopback() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(3));
    let o = run(
        &input,
        &dir.path("a.jsonl"),
        &mock.url(),
        &["--metrics-addr", "localhost:0"],
    );
    assert_code(&o, 0);
    assert!(!stderr(&o).contains("to anyone"), "{}", stderr(&o));
    let o = run(
        &input,
        &dir.path("b.jsonl"),
        &mock.url(),
        &["--metrics-addr", "0.0.0.0:0"],
    );
    assert_code(&o, 0);
    assert!(
        stderr(&o).contains("to anyone who can reach it"),
        "{}",
        stderr(&o)
    );
    // No port: refused by name, before any look-up.
    let o = run(
        &input,
        &dir.path("c.jsonl"),
        &mock.url(),
        &["--metrics-addr", "localhost"],
    );
    assert_code(&o, 1);
    assert!(stderr(&o).contains("--metrics-addr"), "{}", stderr(&o));
}

#[test]
fn a_batch_summary_counts_its_lines_as_requests() {
    let mock = batch_mock(BatchConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(30));
    let sum = dir.path("s.json");
    let o = run(
        &input,
        &dir.path("out.jsonl"),
        &mock.url(),
        &batch_args(&["--summary-json", sum.to_str().unwrap()]),
    );
    assert_code(&o, 0);
    assert_eq!(summary(&sum)["requests"], 30);
}

#[test]
fn a_deleted_batch_journal_is_found_again_at_the_provider() {
    let mock = batch_mock(BatchConfig {
        delay: Duration::from_millis(300),
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(400));
    let out = dir.path("out.jsonl");
    let o = run(
        &input,
        &out,
        &mock.url(),
        &batch_args(&["--no-wait", "--batch-max-lines", "150"]),
    );
    assert_code(&o, 6);
    // Another output's batch in the same account is not this output's.
    let other = dir.path("other.jsonl");
    assert_code(
        &run(&input, &other, &mock.url(), &batch_args(&["--no-wait"])),
        6,
    );
    std::fs::remove_file(dir.path(".bulkprompt/out.jsonl.batches.jsonl")).unwrap();
    let o = output_within(
        &mut run_cmd(&input, &out, &mock.url(), &batch_args(&[])),
        ENDS,
    );
    assert_code(&o, 0);
    assert!(
        stderr(&o).contains("found at the provider by its key"),
        "{}",
        stderr(&o)
    );
    let b = mock.batch_stats();
    assert_eq!(
        b.batches_created, 4,
        "3 for the output, 1 for the other: none again"
    );
    assert_eq!(records_by_id(&out).len(), 400);
    assert_eq!(
        b.most_answers_per_id, 2,
        "400 ids answered once per output, never twice in one"
    );
    assert_eq!(b.lines_answered, 800);
    let journal = std::fs::read_to_string(dir.path(".bulkprompt/out.jsonl.batches.jsonl")).unwrap();
    assert_eq!(
        journal
            .matches("\"created\"")
            .count()
            .max(journal.matches("batch_id").count()),
        3,
        "{journal}"
    );
}

// ---- 10. Batch records are live records ---------------------------------------------------

#[test]
fn a_batch_record_keeps_every_choice_and_the_response_as_a_live_one() {
    let mock = batch_mock(BatchConfig::default());
    let dir = Dir::new();
    let jobs: String = (0..5)
        .map(|i| format!("{{\"id\":\"j{i}\",\"n\":3,\"messages\":[{{\"role\":\"user\",\"content\":\"Name a colour, {i}.\"}}]}}\n"))
        .collect();
    let input = dir.write("jobs.jsonl", jobs);
    let batch_out = dir.path("batch.jsonl");
    let o = run(
        &input,
        &batch_out,
        &mock.url(),
        &batch_args(&["--keep-response"]),
    );
    assert_code(&o, 0);
    let live_out = dir.path("live.jsonl");
    let o = run(
        &input,
        &live_out,
        &mock.url(),
        &["--model", MODEL, "--keep-response"],
    );
    assert_code(&o, 0);
    let (batch, live) = (records_by_id(&batch_out), records_by_id(&live_out));
    for (id, b) in &batch {
        let l = &live[id];
        assert_eq!(
            b.choices.as_ref().map(Vec::len),
            Some(3),
            "{id}: every choice"
        );
        assert_eq!(
            b.choices.as_ref().map(Vec::len),
            l.choices.as_ref().map(Vec::len)
        );
        assert!(
            b.response.is_some() && l.response.is_some(),
            "{id}: --keep-response"
        );
        assert_eq!(b.content.is_some(), l.content.is_some());
    }
    assert!((recorded(&batch_out) + recorded(&live_out) - billed(&mock)).abs() < 1e-9);
}

#[test]
fn a_live_run_finds_the_open_batches_of_a_lost_run_folder_at_the_provider() {
    for lost in ["the journal", "the run folder"] {
        let mock = batch_mock(BatchConfig {
            delay: Duration::from_millis(300),
            ..Default::default()
        });
        let dir = Dir::new();
        let input = dir.write("jobs.jsonl", chat_jobs(200));
        let out = dir.path("out.jsonl");
        let o = run(&input, &out, &mock.url(), &batch_args(&["--no-wait"]));
        assert_code(&o, 6);
        // Ended at the provider by the time the live run looks (it polls every 30 s).
        std::thread::sleep(Duration::from_millis(500));
        match lost {
            "the journal" => {
                std::fs::remove_file(dir.path(".bulkprompt/out.jsonl.batches.jsonl")).unwrap()
            }
            _ => std::fs::remove_dir_all(dir.path(".bulkprompt")).unwrap(),
        }
        let live = ["--model", MODEL];
        let o = output_within(&mut run_cmd(&input, &out, &mock.url(), &live), ENDS);
        assert_code(&o, 0);
        assert!(
            stderr(&o).contains("at the provider"),
            "{lost}: {}",
            stderr(&o)
        );
        assert_eq!(
            mock.stats().requests,
            0,
            "{lost}: nothing in a batch found at the provider is sent live"
        );
        assert_eq!(records_by_id(&out).len(), 200, "{lost}");
        assert_eq!(mock.batch_stats().most_answers_per_id, 1, "{lost}");
        assert!((recorded(&out) - billed(&mock)).abs() < 1e-9, "{lost}");
        // The meta remembers each run's mode.
        let meta = std::fs::read_to_string(dir.path(".bulkprompt/out.jsonl.meta.json")).unwrap();
        let modes: Vec<&str> = ["\"batch\"", "\"live\""]
            .into_iter()
            .filter(|m| meta.contains(m))
            .collect();
        let want: &[&str] = match lost {
            "the journal" => &["\"batch\"", "\"live\""],
            _ => &["\"live\""],
        };
        assert_eq!(modes, want, "{lost}: {meta}");
    }
}

#[test]
fn a_batch_refused_as_too_large_is_split_by_the_limit_the_provider_states() {
    let mock = batch_mock(BatchConfig {
        max_lines: Some(500),
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(1_200));
    let out = dir.path("out.jsonl");
    let o = output_within(
        &mut run_cmd(&input, &out, &mock.url(), &batch_args(&[])),
        ENDS,
    );
    assert_code(&o, 0);
    assert!(
        stderr(&o).contains("takes at most 500 lines a batch"),
        "{}",
        stderr(&o)
    );
    let b = mock.batch_stats();
    assert_eq!(b.batches_created, 3, "500 + 500 + 200");
    assert_eq!(b.most_answers_per_id, 1);
    assert_eq!(records_by_id(&out).len(), 1_200);
    assert!((recorded(&out) - billed(&mock)).abs() < 1e-9);
    // The refused batch is journaled as never submitted, not as open.
    let o = run(&input, &out, &mock.url(), &batch_args(&[]));
    assert_code(&o, 0);
    assert_eq!(mock.batch_stats().batches_created, 3);
}

#[test]
fn a_second_process_on_a_shard_running_on_another_host_is_refused_within_seconds() {
    let Some(redis) = Redis::start() else { return };
    let url = redis.url();
    let mock = Mock::start(MockConfig {
        latency: Duration::from_millis(50),
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", priced(400));
    let args = coordinated(
        &url,
        "elsewhere",
        &["--shard", "0/2", "--max-cost", "5", "--concurrency", "2"],
    );
    let mut first = run_cmd(&input, &dir.path("a.jsonl"), &mock.url(), &args)
        .env("BULKPROMPT_WORKER_HOST", "pod-a")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let end = std::time::Instant::now() + ENDS;
    while mock.stats().requests < 5 && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    let other = Dir::new();
    let o = output_within(
        run_cmd(&input, &other.path("b.jsonl"), &mock.url(), &args)
            .env("BULKPROMPT_WORKER_HOST", "pod-b"),
        Duration::from_secs(20),
    );
    assert_code(&o, 4);
    assert!(
        stderr(&o).contains("renewed its lease just now"),
        "{}",
        stderr(&o)
    );
    let _ = first.kill();
    let _ = first.wait();
    let second = other.path("b.shard-0-of-2.jsonl");
    assert!(
        std::fs::read(&second).map_or(true, |b| b.is_empty()),
        "the second wrote nothing"
    );
}

#[test]
fn a_shard_run_again_on_a_fresh_disk_buys_nothing_an_earlier_process_bought() {
    let Some(redis) = Redis::start() else { return };
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", priced(40));
    let url = redis.url();
    let args = coordinated(&url, "again", &["--shard", "0/2"]);
    let first = Dir::new();
    assert_code(
        &run(&input, &first.path("out.jsonl"), &mock.url(), &args),
        0,
    );
    let bought = mock.stats().requests;
    assert!(bought > 0);
    // The same shard, rescheduled on a new disk: the ledger in Redis says what was bought.
    let second = Dir::new();
    let o = run(&input, &second.path("out.jsonl"), &mock.url(), &args);
    assert_code(&o, 0);
    assert_eq!(mock.stats().requests, bought, "nothing bought twice");
    assert!(
        stderr(&o).contains("done by an earlier process of this shard on another disk"),
        "{}",
        stderr(&o)
    );
    // The other shard is untouched by it.
    let other = coordinated(&url, "again", &["--shard", "1/2"]);
    assert_code(
        &run(&input, &second.path("out.jsonl"), &mock.url(), &other),
        0,
    );
    assert!(mock.stats().requests > bought);
}
