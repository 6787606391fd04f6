//! What a person or a scheduler reads: the summary JSON always written (also on exit 1), with
//! times, version, endpoint and models; the most frequent errors; a wrong URL said as such and
//! no job marked failed for it; the same input problem on many lines said once; the cap's
//! arithmetic; the version's commit.

use crate::harness::*;
use bulkprompt::mock::MockConfig;

#[test]
fn the_summary_json_is_written_on_exit_1_too_and_tells_when_what_and_where() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let sum = dir.path("s.json");
    // Yesterday's summary must not survive a failed start.
    std::fs::write(&sum, r#"{"outcome": "completed", "exit_code": 0}"#).unwrap();
    let bad = dir.write("bad.jsonl", "{\"id\": \"a\"}\n");
    let o = run(
        &bad,
        &dir.path("out.jsonl"),
        &mock.url(),
        &["--summary-json", sum.to_str().unwrap()],
    );
    assert_code(&o, 1);
    let s = summary(&sum);
    assert_eq!(
        (s["outcome"].as_str(), s["exit_code"].as_i64()),
        (Some("error"), Some(1))
    );
    assert!(
        s["message"].as_str().unwrap().contains("bad.jsonl:1"),
        "{s}"
    );
    assert!(s["started_at"].is_string() && s["ended_at"].is_string());
    assert!(s["version"].as_str().unwrap().contains("commit"), "{s}");
    // A config error before anything is read: written too.
    let o = run(
        &bad,
        &dir.path("out.jsonl"),
        &mock.url(),
        &[
            "--summary-json",
            sum.to_str().unwrap(),
            "--concurrency",
            "0",
        ],
    );
    assert_code(&o, 1);
    assert!(summary(&sum)["message"]
        .as_str()
        .unwrap()
        .contains("--concurrency"));
    // A file that is not a summary is never written over, whatever happened.
    let keep = dir.write("notes.txt", "keep me");
    let o = run(
        &bad,
        &dir.path("out.jsonl"),
        &mock.url(),
        &["--summary-json", keep.to_str().unwrap()],
    );
    assert_code(&o, 1);
    assert_eq!(std::fs::read_to_string(&keep).unwrap(), "keep me");

    // A run that ends: times, version, the endpoint without its credentials, the models.
    let input = dir.write("jobs.jsonl", chat_jobs(3));
    let url = mock.url().replace("http://", "http://user:secret@");
    let o = run(
        &input,
        &dir.path("out.jsonl"),
        &url,
        &["--summary-json", sum.to_str().unwrap()],
    );
    assert_code(&o, 0);
    let s = typed_summary(&sum);
    assert!(s.started_at <= s.ended_at && !s.started_at.is_empty());
    assert!(!s.endpoint.contains("secret"), "{}", s.endpoint);
    assert!(
        s.endpoint.starts_with("http://127.0.0.1:"),
        "{}",
        s.endpoint
    );
    assert_eq!(s.models, vec!["test-model".to_string()]);
    let o = bulkprompt().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("(commit "));
}

#[test]
fn the_most_frequent_errors_are_in_the_summary() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    // Temperature 5 is refused (400) by the simulator: every job fails the same way.
    let input = dir.write("jobs.jsonl", chat_jobs(4));
    let sum = dir.path("s.json");
    let o = run(
        &input,
        &dir.path("out.jsonl"),
        &mock.url(),
        &[
            "--param",
            "temperature=5",
            "--summary-json",
            sum.to_str().unwrap(),
        ],
    );
    assert_code(&o, 2);
    let s = typed_summary(&sum);
    assert_eq!(s.top_errors.len(), 1);
    assert_eq!(s.top_errors[0].count, 4);
    assert_eq!(s.top_errors[0].kind, "client");
    assert!(
        s.top_errors[0].message.contains("temperature"),
        "{:?}",
        s.top_errors
    );
    assert!(stderr(&o).contains("4 x client: "), "{}", stderr(&o));
}

#[test]
fn a_wrong_url_is_said_as_such_and_fails_no_job() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(30));
    let out = dir.path("out.jsonl");
    let wrong = mock.url().trim_end_matches("/v1").to_string() + "/api/v2";
    let o = run(&input, &out, &wrong, &[]);
    assert_code(&o, 4);
    assert!(
        stderr(&o).contains("is the endpoint right?"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("requests:  1 "),
        "one request told it: {}",
        stderr(&o)
    );
    // Nothing was marked failed: the right URL runs every job.
    assert!(records(&out).is_empty());
    let o = run(&input, &out, &mock.url(), &[]);
    assert_code(&o, 0);
    assert_eq!(records_by_id(&out).len(), 30);
}

#[test]
fn the_same_problem_on_many_lines_is_said_once() {
    let dir = Dir::new();
    let rows: String = (0..300).map(|i| format!("r{i},text {i}\n")).collect();
    let input = dir.write("rows.csv", format!("id,text\n{rows}"));
    let o = bulkprompt()
        .args(["validate"])
        .arg(&input)
        .args(["--template", "{text}"])
        .output()
        .unwrap();
    assert_code(&o, 1);
    let err = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(err.matches("no model").count(), 1, "{err}");
    assert!(err.contains("0 jobs valid, 300 problems"), "{err}");
    assert!(
        err.contains("rows.csv:2")
            && err.contains("the same on 299 more lines: 3, 4, 5, 6, 7, ..."),
        "{err}"
    );
}

#[test]
fn standard_input_and_output_are_refused_with_the_reason() {
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(2));
    let o = bulkprompt()
        .args(["run", "-", "--endpoint", "mock", "--model", "m"])
        .current_dir(dir.tmp.path())
        .output()
        .unwrap();
    assert_code(&o, 1);
    assert!(
        stderr(&o).contains("cannot be standard input"),
        "{}",
        stderr(&o)
    );
    let o = bulkprompt()
        .arg("run")
        .arg(&input)
        .args(["-o", "-", "--endpoint", "mock", "--model", "m"])
        .current_dir(dir.tmp.path())
        .output()
        .unwrap();
    assert_code(&o, 1);
    assert!(
        stderr(&o).contains("cannot go to standard output"),
        "{}",
        stderr(&o)
    );
    // Nothing was created for runs that never started: no file named `-`, no lock.
    let left: Vec<_> = std::fs::read_dir(dir.tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec!["jobs.jsonl".to_string()], "{left:?}");
}

#[test]
fn status_check_fails_while_anything_is_left_and_breaks_failures_down() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(6));
    let out = dir.path("out.jsonl");
    let o = run(
        &input,
        &out,
        &mock.url(),
        &["--limit", "4", "--param", "temperature=5"],
    );
    assert_code(&o, 2);
    let status = |extra: &[&str]| {
        bulkprompt()
            .arg("status")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    let o = status(&["--check"]);
    assert_code(&o, 2);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(text.contains("failures:  client 4"), "{text}");
    assert!(text.contains("2 pending"), "{text}");
    assert_code(&status(&[]), 0);
    let o = run(&input, &out, &mock.url(), &["--retry-failed"]);
    assert_code(&o, 0);
    assert_code(&status(&["--check"]), 0);
}

#[test]
fn set_up_mistakes_get_the_fix() {
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(1));
    let err_of = |args: &[&str]| {
        let o = bulkprompt()
            .arg("run")
            .arg(&input)
            .args(args)
            .env_remove("OPENAI_API_KEY")
            .output()
            .unwrap();
        assert_code(&o, 1);
        stderr(&o)
    };
    let e = err_of(&["--endpoint", "api.openai.com/v1", "--model", "m"]);
    assert!(
        e.contains("add https://") && !e.contains("relative URL"),
        "{e}"
    );
    let e = err_of(&["--endpoint", "https://api.openai.com/v1", "--model", "m"]);
    assert!(e.contains("--api-key-env OPENAI_API_KEY"), "{e}");
    let spec = dir.write("s.toml", "rmp = 600\n");
    let e = err_of(&["-c", spec.to_str().unwrap()]);
    assert!(e.contains("did you mean `rpm`?"), "{e}");
    let spec = dir.write(
        "t.toml",
        "model = \"m\"\n[mock]\nlatency_ms = 5\nrpm = 600\n",
    );
    let e = err_of(&["-c", spec.to_str().unwrap()]);
    assert!(e.contains("`rpm` is a top-level key"), "{e}");
}

#[test]
fn json_logs_are_json_to_the_last_line_and_text_logs_have_times_when_piped() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(5));
    let o = bulkprompt()
        .args(["--log-format", "json", "run"])
        .arg(&input)
        .arg("-o")
        .arg(dir.path("out.jsonl"))
        .args(["--endpoint", &mock.url(), "--model", "unpriced-model"])
        .output()
        .unwrap();
    assert_code(&o, 0);
    let lines: Vec<serde_json::Value> = stderr(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let last = lines.last().unwrap();
    assert_eq!(last["fields"]["summary"]["ok"], 5, "{last}");
    // Piped text logs carry their time.
    let o = run(
        &input,
        &dir.path("out2.jsonl"),
        &mock.url(),
        &["--model", "unpriced-model"],
    );
    assert_code(&o, 0);
    let warn = stderr(&o)
        .lines()
        .find(|l| l.contains("no known price"))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(warn.starts_with("20"), "{warn}");
}

/// The progress bar through a pseudo-terminal of 80 and of 120 columns: no line wraps.
#[test]
fn the_progress_line_fits_a_terminal_of_80_and_of_120_columns() {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    let mock = Mock::start(MockConfig {
        latency: std::time::Duration::from_millis(60),
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(120));
    for cols in [80u16, 120] {
        let (mut master, mut slave) = (0, 0);
        let ws = libc::winsize {
            ws_row: 24,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty fills the two descriptors; the winsize is read only.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &ws,
            )
        };
        assert_eq!(rc, 0);
        // SAFETY: the descriptors were just opened and are owned here.
        let (master_file, slave_file) = unsafe {
            (
                std::fs::File::from_raw_fd(master),
                std::fs::File::from_raw_fd(slave),
            )
        };
        let out = dir.path(&format!("out{cols}.jsonl"));
        // Not quiet: a bar is drawn on a terminal.
        let mut child = bulkprompt()
            .arg("run")
            .arg(&input)
            .arg("-o")
            .arg(&out)
            .args([
                "--endpoint",
                &mock.url(),
                "--model",
                "test-model",
                "--concurrency",
                "4",
            ])
            .env_remove("NO_COLOR")
            .stderr(slave_file)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut m = master_file;
            let mut buf = [0u8; 4096];
            while let Ok(n) = m.read(&mut buf) {
                if n == 0 {
                    break;
                }
                all.extend_from_slice(&buf[..n]);
            }
            all
        });
        assert!(child.wait().unwrap().success());
        let seen = reader.join().unwrap();
        let text = String::from_utf8_lossy(&seen);
        // Each redraw is separated by \r or an escape; none may pass the width.
        let plain = strip_ansi(&text);
        let bars: Vec<&str> = plain
            .split(['\r', '\n'])
            .filter(|l| l.contains("this run"))
            .collect();
        assert!(!bars.is_empty(), "no bar drawn at {cols}: {plain:?}");
        for b in bars {
            assert!(
                b.chars().count() <= cols as usize,
                "{cols}: {} chars: {b}",
                b.chars().count()
            );
        }
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[test]
fn exports_for_spreadsheets_and_batch_api_code_and_the_prompt_kept_for_audits() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write(
        "reviews.csv",
        "id,text,lang\nr1,\"Great, \"\"really\"\"\",en\nr2,Très bien,fr\n",
    );
    let out = dir.path("out.jsonl");
    let o = run(
        &input,
        &out,
        &mock.url(),
        &["--template", "Review: {text}", "--keep-prompt"],
    );
    assert_code(&o, 0);
    let recs = records_by_id(&out);
    let prompt = recs["r1"].prompt.as_ref().expect("prompt kept");
    assert_eq!(prompt[0]["content"], "Review: Great, \"really\"");
    // CSV, with the metadata as its own columns.
    let csv_path = dir.path("out.csv");
    let o = bulkprompt()
        .arg("export")
        .arg(&out)
        .arg("-o")
        .arg(&csv_path)
        .output()
        .unwrap();
    assert_code(&o, 0);
    let mut rdr = csv::Reader::from_path(&csv_path).unwrap();
    let header: Vec<String> = rdr.headers().unwrap().iter().map(str::to_string).collect();
    assert!(
        header.contains(&"meta_lang".to_string()) && header[0] == "id",
        "{header:?}"
    );
    let rows: Vec<csv::StringRecord> = rdr.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 2);
    let lang = header.iter().position(|h| h == "meta_lang").unwrap();
    let content = header.iter().position(|h| h == "content").unwrap();
    for row in &rows {
        let r = &recs[&row[0]];
        assert_eq!(&row[content], r.content.as_deref().unwrap());
        assert_eq!(&row[lang], r.metadata["lang"].as_str().unwrap());
    }
    // OpenAI Batch API output lines.
    let batch_path = dir.path("batch_output.jsonl");
    let o = bulkprompt()
        .arg("export")
        .arg(&out)
        .arg("-o")
        .arg(&batch_path)
        .args(["--format", "openai-batch"])
        .output()
        .unwrap();
    assert_code(&o, 0);
    for line in std::fs::read_to_string(&batch_path).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let r = &recs[v["custom_id"].as_str().unwrap()];
        assert_eq!(v["response"]["status_code"], 200);
        assert_eq!(
            v["response"]["body"]["choices"][0]["message"]["content"].as_str(),
            r.content.as_deref()
        );
        assert!(v["error"].is_null());
    }
    // A .jsonl target without --format: the name does not say which.
    let o = bulkprompt()
        .arg("export")
        .arg(&out)
        .arg("-o")
        .arg(dir.path("x.jsonl"))
        .output()
        .unwrap();
    assert_code(&o, 1);
}

#[test]
fn order_input_puts_the_final_records_in_the_job_files_order() {
    let mock = Mock::start(MockConfig {
        latency: std::time::Duration::from_millis(20),
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(200));
    let out = dir.path("out.jsonl");
    let o = run(
        &input,
        &out,
        &mock.url(),
        &["--order", "input", "--concurrency", "32"],
    );
    assert_code(&o, 0);
    let idx: Vec<u64> = records(&out).iter().map(|r| r.index).collect();
    assert_eq!(idx, (0..200).collect::<Vec<u64>>());
    // Without it, completion order (32 in flight do not finish in order).
    let out2 = dir.path("out2.jsonl");
    let o = run(&input, &out2, &mock.url(), &["--concurrency", "32"]);
    assert_code(&o, 0);
    let idx: Vec<u64> = records(&out2).iter().map(|r| r.index).collect();
    assert_ne!(idx, (0..200).collect::<Vec<u64>>());
}

#[test]
fn prices_say_where_each_comes_from() {
    let o = bulkprompt().arg("prices").output().unwrap();
    assert_code(&o, 0);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let flash = text
        .lines()
        .find(|l| l.starts_with("google/gemini-2.0-flash-001 "))
        .unwrap_or_default();
    assert!(
        flash.contains("https://openrouter.ai/google/gemini-2.0-flash-001")
            && flash.contains("2026-"),
        "{flash}"
    );
    assert!(flash.contains("0.5x"), "{flash}");
}

/// Names in `dir` (not recursive), sorted.
fn names(dir: &std::path::Path) -> Vec<String> {
    let mut n: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    n.sort();
    n
}

#[test]
fn the_runs_own_files_stay_in_one_folder_and_older_layouts_move_there() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(10));
    let data = dir.path("data");
    std::fs::create_dir(&data).unwrap();
    let out = data.join("labels.parquet");
    assert_code(&run(&input, &out, &mock.url(), &[]), 0);
    // Beside the data: the data, and one folder of the run's own files (no lock left).
    assert_eq!(names(&data), vec![".bulkprompt", "labels.parquet"]);
    let run_dir = data.join(".bulkprompt");
    assert_eq!(
        names(&run_dir),
        vec![
            "labels.parquet.journal.jsonl",
            "labels.parquet.journal.jsonl.meta.json"
        ]
    );
    // A run that does not start (a bad job file) leaves nothing, not even an empty folder.
    let bad = dir.write("bad.jsonl", "{\n");
    let fresh = dir.path("fresh");
    std::fs::create_dir(&fresh).unwrap();
    assert_code(&run(&bad, &fresh.join("o.parquet"), &mock.url(), &[]), 1);
    assert_code(&run(&bad, &fresh.join("o.jsonl"), &mock.url(), &[]), 1);
    // Nor one refused after reading everything (its metrics address is taken).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let o = run(
        &input,
        &fresh.join("o.jsonl"),
        &mock.url(),
        &["--metrics-addr", &addr],
    );
    assert_code(&o, 1);
    assert!(stderr(&o).contains("--metrics-addr"), "{}", stderr(&o));
    assert!(names(&fresh).is_empty(), "{:?}", names(&fresh));

    // The layout of earlier versions: journal and meta beside the Parquet target.
    let old_journal = data.join("labels.parquet.journal.jsonl");
    std::fs::rename(run_dir.join("labels.parquet.journal.jsonl"), &old_journal).unwrap();
    std::fs::rename(
        run_dir.join("labels.parquet.journal.jsonl.meta.json"),
        data.join("labels.parquet.journal.jsonl.meta.json"),
    )
    .unwrap();
    std::fs::remove_dir(&run_dir).unwrap();
    // Readers find it where it is...
    let status = bulkprompt()
        .arg("status")
        .arg(&out)
        .arg("--check")
        .output()
        .unwrap();
    assert_code(&status, 0);
    // ... and the next run moves it, resumes from it, and buys nothing again.
    let before = mock.stats().requests;
    assert_code(&run(&input, &out, &mock.url(), &[]), 0);
    assert_eq!(mock.stats().requests, before, "the resume bought again");
    assert_eq!(names(&data), vec![".bulkprompt", "labels.parquet"]);
    assert_eq!(
        records(&run_dir.join("labels.parquet.journal.jsonl")).len(),
        10
    );

    // A JSONL output's meta beside it (earlier versions) moves the same way.
    let jsonl = data.join("labels.jsonl");
    assert_code(&run(&input, &jsonl, &mock.url(), &[]), 0);
    std::fs::rename(
        run_dir.join("labels.jsonl.meta.json"),
        data.join("labels.jsonl.meta.json"),
    )
    .unwrap();
    // A run with another model is refused by the meta, wherever it is.
    let o = run(&input, &jsonl, &mock.url(), &["--model", "other"]);
    assert_code(&o, 1);
    assert!(stderr(&o).contains("different run"), "{}", stderr(&o));
    assert_code(&run(&input, &jsonl, &mock.url(), &[]), 0);
    assert!(run_dir.join("labels.jsonl.meta.json").exists());
    assert!(!data.join("labels.jsonl.meta.json").exists());
}

#[test]
fn a_plain_http_endpoint_is_called_directly_and_a_proxy_variable_still_applies() {
    const ANSWER: &str = r#"{"choices":[{"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":5}}"#;
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(3));
    // No proxy: straight to the server, with the headers every request carries.
    let server = canned(ANSWER);
    let key = ["--api-key-env", "DIRECT_TEST_KEY"];
    let o = run_cmd(&input, &dir.path("direct.jsonl"), &server.url, &key)
        .env("DIRECT_TEST_KEY", "sk-direct-test")
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY")
        .output()
        .unwrap();
    assert_code(&o, 0);
    let heads = server.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 3);
    let authority = server
        .url
        .trim_start_matches("http://")
        .trim_end_matches("/v1");
    for h in &heads {
        assert!(
            h.starts_with("post /v1/chat/completions http/1.1\r\n"),
            "{h}"
        );
        for header in [
            format!("host: {authority}"),
            "content-type: application/json".to_string(),
            "user-agent: bulkprompt/".to_string(),
            "authorization: bearer sk-direct-test".to_string(),
        ] {
            assert!(h.contains(&header), "{header} not in {h}");
        }
    }
    // HTTP_PROXY set: the request goes to the proxy, naming the endpoint (reqwest's path).
    let proxy = canned(ANSWER);
    let proxy_url = proxy.url.trim_end_matches("/v1").to_string();
    let o = run_cmd(
        &input,
        &dir.path("proxied.jsonl"),
        "http://endpoint.invalid/v1",
        &["--api-key-env", "DIRECT_TEST_KEY", "--allow-insecure-http"],
    )
    .env("DIRECT_TEST_KEY", "sk-direct-test")
    .env("HTTP_PROXY", &proxy_url)
    .env("http_proxy", &proxy_url)
    .env_remove("NO_PROXY")
    .env_remove("no_proxy")
    .output()
    .unwrap();
    assert_code(&o, 0);
    let heads = proxy.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 3, "{heads:?}");
    assert!(
        heads[0].starts_with("post http://endpoint.invalid/v1/chat/completions http/1.1"),
        "{}",
        heads[0]
    );
}

/// The scheduling policy of each of a process's threads (`/proc`'s stat, field 41).
#[cfg(target_os = "linux")]
fn thread_policies(pid: u32) -> Vec<(String, String)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(task.path().join("comm")),
            std::fs::read_to_string(task.path().join("stat")),
        ) else {
            continue; // a thread that ended meanwhile
        };
        // The name in parentheses may hold spaces: fields count from after it.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let policy = after.split_whitespace().nth(41 - 3).unwrap_or("?");
        out.push((comm.trim().to_string(), policy.to_string()));
    }
    out
}

/// Sets the calling thread's scheduling policy; whether the kernel allowed it.
#[cfg(target_os = "linux")]
fn set_policy(policy: libc::c_int) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: acts on the calling thread only and reads the struct we pass.
    unsafe { libc::sched_setscheduler(0, policy, &param) == 0 }
}

/// A run's threads as it sends, once its writer is up.
#[cfg(target_os = "linux")]
fn policies_while_running(cmd: &mut std::process::Command) -> Vec<(String, String)> {
    let mut child = cmd.spawn().unwrap();
    let mut seen = Vec::new();
    for _ in 0..200 {
        seen = thread_policies(child.id());
        if seen.iter().any(|(name, _)| name == "bulkprompt-writ") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    let _ = child.kill();
    let _ = child.wait();
    seen
}

#[test]
#[cfg(target_os = "linux")]
fn a_run_is_scheduled_as_a_batch_job_and_a_policy_set_by_hand_is_kept() {
    // A sandbox that refuses the call leaves the default policy, as the run does then.
    if !std::thread::spawn(|| set_policy(libc::SCHED_BATCH))
        .join()
        .unwrap()
    {
        eprintln!("skipped: this machine refuses SCHED_BATCH");
        return;
    }
    let mock = Mock::start(MockConfig {
        latency: std::time::Duration::from_millis(500),
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(40));
    let out = dir.path("out.jsonl");
    let extra = ["--concurrency", "2", "--fixed-concurrency"];
    // Every thread of the run, started after the policy was taken, is a batch thread (3):
    // its wake-ups never preempt a server on the same cores.
    let seen = policies_while_running(&mut run_cmd(&input, &out, &mock.url(), &extra));
    assert!(seen.len() >= 3, "{seen:?}");
    assert!(seen.iter().all(|(_, p)| p == "3"), "{seen:?}");
    // A policy given by the one who started it (idle, 5) is theirs.
    let mut by_hand = run_cmd(&input, &dir.path("idle.jsonl"), &mock.url(), &extra);
    // SAFETY: the child only sets its own policy between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut by_hand, || {
            set_policy(libc::SCHED_IDLE);
            Ok(())
        });
    }
    let seen = policies_while_running(&mut by_hand);
    assert!(seen.len() >= 3, "{seen:?}");
    assert!(seen.iter().all(|(_, p)| p == "5"), "{seen:?}");
}
