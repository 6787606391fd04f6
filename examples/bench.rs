//! The benchmark suite: starts the simulator, runs bulkprompt against it in each scenario of
//! BENCHMARKS.md, and prints a table of figures with the reference each is compared with,
//! measured in the same run. Run it with `scripts/bench.sh` (which builds in release mode and
//! installs `wrk` when missing); `--quick` shrinks every scenario for a smoke test, and
//! `--only 1,3` picks scenarios.
//!
//! Processes are measured from outside: wall time, CPU (user + system) and peak RSS of the
//! runner from `wait4`, of the simulator from `/proc/PID/stat` and `/proc/PID/status`.

use bulkprompt::cost::Usage;
use bulkprompt::job::request::JobDefaults;
use bulkprompt::job::{InputFormat, InputSpec};
use bulkprompt::output::record::timestamp;
use bulkprompt::output::{CostSource, Record, Status};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// One line of the final table.
struct Row {
    scenario: String,
    figure: String,
    reference: String,
    ratio: String,
    target: String,
    met: Option<bool>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only: Option<Vec<u32>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect());
    let wants = |n: u32| only.as_ref().is_none_or(|o| o.contains(&n));
    let bin = binary();
    let dir = tempfile::tempdir().expect("temp dir");
    let scale = if quick { 10 } else { 1 };
    let mut rows = Vec::new();
    println!("bulkprompt benchmark on {}", machine());
    if wants(1) {
        rows.extend(raw_overhead(&bin, dir.path(), 200_000 / scale));
    }
    if wants(2) {
        rows.extend(latency_bound(
            &bin,
            dir.path(),
            100_000 / scale,
            if quick { 1024 } else { 4096 },
        ));
    }
    if wants(3) {
        rows.extend(memory_growth(&bin, dir.path(), quick));
    }
    if wants(4) {
        let secs = if quick { 20 } else { 120 };
        rows.extend(limiter_accuracy(&bin, dir.path(), secs));
    }
    if wants(5) {
        rows.extend(resume_scan(&bin, dir.path(), 1_000_000 / scale));
    }
    if wants(6) {
        rows.extend(parquet_export(&bin, dir.path(), 1_000_000 / scale));
    }
    if wants(7) {
        rows.extend(coordinator_overhead(&bin, dir.path(), 60_000 / scale));
    }
    if wants(8) {
        rows.extend(report_memory(&bin, dir.path(), 1_000_000 / scale));
    }
    if wants(9) {
        rows.extend(parquet_input_memory(&bin, dir.path(), 1_000_000 / scale));
    }
    print_table(&rows);
}

fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("bulkprompt");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --release` first (scripts/bench.sh does)",
        bin.display()
    );
    bin
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
            })
        })
        .unwrap_or(0);
    format!(
        "{cpu}, {cores} cores, {:.0} GiB",
        mem as f64 / 1024.0 / 1024.0
    )
}

/// A simulator process.
struct Sim {
    child: Child,
    url: String,
}

impl Sim {
    fn start(bin: &Path, args: &[&str]) -> Sim {
        let mut child = Command::new(bin)
            .args(["serve-mock", "--port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the simulator");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("simulator URL");
        let url = line.trim().rsplit(' ').next().expect("url").to_string();
        Sim { child, url }
    }

    /// CPU seconds (user + system) so far.
    fn cpu(&self) -> f64 {
        proc_cpu(self.child.id())
    }

    fn peak_rss_mb(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("VmHWM"))
                    .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
            })
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    /// `GET /mock/stats`, over a plain socket.
    fn stats(&self) -> serde_json::Value {
        use std::io::Read;
        let addr = self
            .url
            .trim_start_matches("http://")
            .trim_end_matches("/v1")
            .to_string();
        let Ok(mut s) = std::net::TcpStream::connect(&addr) else {
            return serde_json::Value::Null;
        };
        let _ = write!(
            s,
            "GET /mock/stats HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        );
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text.split("\r\n\r\n")
            .nth(1)
            .and_then(|b| serde_json::from_str(b).ok())
            .unwrap_or(serde_json::Value::Null)
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proc_cpu(pid: u32) -> f64 {
    let tick = 100.0; // USER_HZ on Linux
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| {
            let rest = t.rsplit(')').next()?.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / tick)
        })
        .unwrap_or(0.0)
}

/// What one runner process cost.
struct Measured {
    wall: Duration,
    cpu: f64,
    peak_rss_mb: f64,
    code: i32,
}

// The child is reaped by `wait4` (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn run_bulkprompt(bin: &Path, args: &[String], summary: &Path) -> Measured {
    let started = Instant::now();
    let child = Command::new(bin)
        .arg("run")
        .args(args)
        .args(["--quiet", "--summary-json", summary.to_str().expect("path")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start bulkprompt");
    let (code, cpu, rss_kb) = wait4(child.id());
    let wall = started.elapsed();
    Measured {
        wall,
        cpu,
        peak_rss_mb: rss_kb as f64 / 1024.0,
        code,
    }
}

/// Waits for `pid`; its exit code, CPU seconds and peak RSS in KiB.
fn wait4(pid: u32) -> (i32, f64, i64) {
    let mut status = 0;
    // SAFETY: wait4 fills the rusage we pass; the child is ours.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::wait4(pid as i32, &mut status, 0, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    (code, secs(ru.ru_utime) + secs(ru.ru_stime), ru.ru_maxrss)
}

/// A JSONL job file of `n` chat jobs; prompt sizes vary with `varied`.
fn job_file(dir: &Path, name: &str, n: usize, varied: bool) -> PathBuf {
    let path = dir.join(name);
    if path.exists() {
        return path;
    }
    let mut w = BufWriter::new(std::fs::File::create(&path).expect("job file"));
    let filler = "The product arrived on time, works as described and the battery lasts all day. ";
    for i in 0..n {
        let repeat = if varied { 1 + (i * 7919) % 25 } else { 1 };
        writeln!(
            w,
            "{{\"id\":\"j{i}\",\"model\":\"google/gemini-2.0-flash-001\",\"max_tokens\":40,\"messages\":[{{\"role\":\"user\",\"content\":\"Classify review {i}: {}\"}}]}}",
            filler.repeat(repeat).trim_end()
        )
        .expect("write");
    }
    path
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Scenario 1: how close the runner comes to wrk against the same simulator.
fn raw_overhead(bin: &Path, dir: &Path, jobs: usize) -> Vec<Row> {
    eprintln!("1. raw overhead: {jobs} jobs, zero latency, concurrency 256");
    let input = job_file(dir, "raw.jsonl", jobs, false);
    let sim = Sim::start(bin, &["--threads", "1"]);
    let cpu0 = sim.cpu();
    let out = dir.join("raw.out.jsonl");
    let m = run_bulkprompt(
        bin,
        &args(&[
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--endpoint",
            &sim.url,
            "--concurrency",
            "256",
            "--fresh",
        ]),
        &dir.join("raw.summary.json"),
    );
    let sim_cpu = sim.cpu() - cpu0;
    drop(sim);
    let rps = jobs as f64 / m.wall.as_secs_f64();
    // wrk posting the same body to a fresh simulator for as long as the run took.
    let sim = Sim::start(bin, &["--threads", "1"]);
    let lua = dir.join("post.lua");
    std::fs::write(
        &lua,
        "wrk.method = \"POST\"\nwrk.body = '{\"id\":\"j1\",\"model\":\"google/gemini-2.0-flash-001\",\"max_tokens\":40,\"messages\":[{\"role\":\"user\",\"content\":\"Classify review 1: The product arrived on time, works as described and the battery lasts all day.\"}]}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n",
    )
    .expect("lua");
    let secs = m.wall.as_secs().clamp(5, 60);
    // wrk's own CPU too, from wait4, for the CPU a request costs a bare load generator.
    let wrk = Command::new("wrk")
        .args([
            "-t1",
            "-c256",
            &format!("-d{secs}s"),
            "-s",
            lua.to_str().unwrap(),
            &format!("{}/chat/completions", sim.url),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()
        .map(|mut child| {
            let mut text = String::new();
            let _ = child.stdout.take().map(|mut o| o.read_to_string(&mut text));
            let (_, cpu, _) = wait4(child.id());
            (text, cpu)
        });
    let wrk_cpu = wrk.as_ref().map(|w| w.1);
    let wrk_rps = wrk
        .and_then(|(text, _)| {
            text.lines()
                .find(|l| l.starts_with("Requests/sec:"))
                .map(str::to_string)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<f64>().ok())
        });
    let ratio = wrk_rps.map(|w| rps / w);
    let runner_per_1000 = m.cpu / jobs as f64 * 1000.0;
    let wrk_per_1000 = wrk_rps
        .zip(wrk_cpu)
        .map(|(r, c)| c / (r * secs as f64) * 1000.0);
    vec![
        Row {
            scenario: "1. raw overhead: requests/s".into(),
            figure: format!(
                "{rps:.0}/s ({jobs} jobs in {:.1} s, exit {})",
                m.wall.as_secs_f64(),
                m.code
            ),
            reference: wrk_rps.map_or("wrk not installed".into(), |w| format!("wrk: {w:.0}/s")),
            ratio: ratio.map_or("-".into(), |r| format!("{r:.2}")),
            target: ">= 0.60".into(),
            met: ratio.map(|r| r >= 0.6),
        },
        Row {
            scenario: "1. CPU per 1,000 requests".into(),
            figure: format!("runner {runner_per_1000:.3} s"),
            reference: wrk_per_1000.map_or("wrk not installed".into(), |w| {
                format!(
                    "wrk {w:.3} s (simulator {:.3} s)",
                    sim_cpu / jobs as f64 * 1000.0
                )
            }),
            ratio: wrk_per_1000.map_or("-".into(), |w| format!("{:.2}", runner_per_1000 / w)),
            target: "<= 2.0".into(),
            met: wrk_per_1000.map(|w| runner_per_1000 / w <= 2.0),
        },
    ]
}

/// Scenario 2: slow answers, many in flight.
fn latency_bound(bin: &Path, dir: &Path, jobs: usize, concurrency: usize) -> Vec<Row> {
    eprintln!("2. latency-bound: {jobs} jobs, 500 ms latency, concurrency {concurrency}");
    let input = job_file(dir, &format!("lat{jobs}.jsonl"), jobs, false);
    let sim = Sim::start(bin, &["--threads", "1", "--latency-ms", "500"]);
    let out = dir.join("lat.out.jsonl");
    let c = concurrency.to_string();
    let m = run_bulkprompt(
        bin,
        &args(&[
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--endpoint",
            &sim.url,
            "--concurrency",
            &c,
            "--fresh",
        ]),
        &dir.join("lat.summary.json"),
    );
    let ideal = concurrency as f64 / 0.5;
    let rps = jobs as f64 / m.wall.as_secs_f64();
    vec![
        Row {
            scenario: "2. latency-bound: requests/s".into(),
            figure: format!(
                "{rps:.0}/s ({:.1} s, exit {})",
                m.wall.as_secs_f64(),
                m.code
            ),
            reference: format!("ideal concurrency/latency: {ideal:.0}/s"),
            ratio: format!("{:.2}", rps / ideal),
            target: ">= 0.90".into(),
            met: Some(rps / ideal >= 0.9),
        },
        Row {
            scenario: "2. latency-bound: peak RSS".into(),
            figure: format!("{:.1} MB", m.peak_rss_mb),
            reference: format!("simulator {:.1} MB", sim.peak_rss_mb()),
            ratio: "-".into(),
            target: "< 150 MB".into(),
            met: Some(m.peak_rss_mb < 150.0),
        },
    ]
}

/// Scenario 3: memory against input size and prompt size.
fn memory_growth(bin: &Path, dir: &Path, quick: bool) -> Vec<Row> {
    let (small, large, completions) = if quick {
        (10_000, 100_000, 2_000)
    } else {
        (100_000, 1_000_000, 20_000)
    };
    eprintln!(
        "3. memory: {small} and {large} input lines, stopped after {completions} completions"
    );
    let sim = Sim::start(bin, &["--threads", "1"]);
    let mut rss = Vec::new();
    for n in [small, large] {
        let input = job_file(dir, &format!("mem{n}.jsonl"), n, false);
        let out = dir.join(format!("mem{n}.out.jsonl"));
        let m = run_bulkprompt(
            bin,
            &args(&[
                input.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
                "--endpoint",
                &sim.url,
                "--rpm",
                "600000",
                "--limit",
                &completions.to_string(),
                "--fresh",
            ]),
            &dir.join("mem.summary.json"),
        );
        rss.push(m.peak_rss_mb);
    }
    let growth = rss[1] - rss[0];
    let per_id = growth * 1024.0 * 1024.0 / (large - small) as f64;
    vec![Row {
        scenario: format!("3. peak RSS, {large} input lines"),
        figure: format!("{:.1} MB", rss[1]),
        reference: format!("{small} lines: {:.1} MB", rss[0]),
        ratio: format!("+{growth:.1} MB ({per_id:.0} B/id)"),
        target: "< 64 MB, <= +24 MB".into(),
        met: Some(rss[1] < 64.0 && growth <= 24.0),
    }]
}

/// Scenario 4: a limit on both sides, for two minutes.
fn limiter_accuracy(bin: &Path, dir: &Path, secs: u64) -> Vec<Row> {
    let mut rows = Vec::new();
    let rpm = 6000u64;
    eprintln!("4a. --rpm {rpm} against a simulator enforcing it, {secs} s");
    let jobs = (rpm * secs / 60) as usize;
    let input = job_file(dir, &format!("rpm{jobs}.jsonl"), jobs, false);
    let sim = Sim::start(
        bin,
        &[
            "--threads",
            "1",
            "--latency-ms",
            "20",
            "--rpm",
            &rpm.to_string(),
        ],
    );
    let out = dir.join("rpm.out.jsonl");
    let m = run_bulkprompt(
        bin,
        &args(&[
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--endpoint",
            &sim.url,
            "--rpm",
            &rpm.to_string(),
            "--fresh",
        ]),
        &dir.join("rpm.summary.json"),
    );
    let st = sim.stats();
    let requests = st["requests"].as_f64().unwrap_or(0.0);
    let r429 = st["rate_limited"].as_f64().unwrap_or(0.0);
    let achieved = jobs as f64 / m.wall.as_secs_f64() * 60.0;
    rows.push(Row {
        scenario: format!("4a. --rpm {rpm}: achieved rate"),
        figure: format!("{achieved:.0}/min ({:.0} s)", m.wall.as_secs_f64()),
        reference: format!("limit {rpm}/min"),
        ratio: format!("{:.3}", achieved / rpm as f64),
        target: ">= 0.97".into(),
        met: Some(achieved / rpm as f64 >= 0.97),
    });
    rows.push(Row {
        scenario: "4a. 429s".into(),
        figure: format!("{r429:.0} of {requests:.0} requests"),
        reference: "-".into(),
        ratio: format!("{:.4}", r429 / requests.max(1.0)),
        target: "< 0.005".into(),
        met: Some(r429 / requests.max(1.0) < 0.005),
    });
    drop(sim);

    let tpm = 600_000u64;
    eprintln!("4b. --tpm {tpm} with varied prompt sizes, {secs} s");
    // About 120 tokens a job on average (prompt 20-500 tokens plus up to 40 out).
    let input = job_file(dir, "tpm.jsonl", 40_000, true);
    let sim = Sim::start(
        bin,
        &[
            "--threads",
            "1",
            "--latency-ms",
            "20",
            "--tpm",
            &tpm.to_string(),
        ],
    );
    let out = dir.join("tpm.out.jsonl");
    let started = Instant::now();
    let mut child = Command::new(bin)
        .args([
            "run",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--endpoint",
            &sim.url,
            "--tpm",
            &tpm.to_string(),
            "--fresh",
            "--quiet",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start");
    std::thread::sleep(Duration::from_secs(secs));
    let st = sim.stats();
    let elapsed = started.elapsed().as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();
    let tokens = st["prompt_tokens"].as_f64().unwrap_or(0.0)
        + st["completion_tokens"].as_f64().unwrap_or(0.0);
    let achieved = tokens / elapsed * 60.0;
    let requests = st["requests"].as_f64().unwrap_or(0.0);
    let r429 = st["rate_limited"].as_f64().unwrap_or(0.0);
    rows.push(Row {
        scenario: format!("4b. --tpm {tpm}: achieved tokens"),
        figure: format!("{achieved:.0}/min ({elapsed:.0} s)"),
        reference: format!("limit {tpm}/min"),
        ratio: format!("{:.3}", achieved / tpm as f64),
        target: ">= 0.97".into(),
        met: Some(achieved / tpm as f64 >= 0.97),
    });
    rows.push(Row {
        scenario: "4b. 429s".into(),
        figure: format!("{r429:.0} of {requests:.0} requests"),
        reference: "-".into(),
        ratio: format!("{:.4}", r429 / requests.max(1.0)),
        target: "< 0.005".into(),
        met: Some(r429 / requests.max(1.0) < 0.005),
    });
    rows
}

/// Scenario 5: a finished 1M-record output, re-run: time until the run could dispatch.
fn resume_scan(bin: &Path, dir: &Path, jobs: usize) -> Vec<Row> {
    eprintln!("5. resume scan: {jobs} records");
    let input = job_file(dir, &format!("scan{jobs}.jsonl"), jobs, false);
    let out = dir.join("scan.out.jsonl");
    write_done_output(&input, &out);
    let sim = Sim::start(bin, &["--threads", "1"]);
    let started = Instant::now();
    let o = Command::new(bin)
        .args([
            "-v",
            "run",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--endpoint",
            &sim.url,
            "--quiet",
        ])
        .output()
        .expect("run");
    let wall = started.elapsed();
    let err = String::from_utf8_lossy(&o.stderr);
    let ready = err
        .lines()
        .find_map(|l| l.split("ready at ").nth(1))
        .and_then(|s| s.trim_end_matches('s').parse::<f64>().ok());
    let sent = sim.stats()["requests"].as_u64().unwrap_or(u64::MAX);
    vec![Row {
        scenario: format!("5. resume scan, {jobs} records"),
        figure: ready.map_or("?".into(), |r| format!("ready in {r:.2} s")),
        reference: format!(
            "whole no-op re-run {:.2} s, {sent} requests",
            wall.as_secs_f64()
        ),
        ratio: "-".into(),
        target: "< 2 s".into(),
        met: ready.map(|r| r < 2.0 && sent == 0),
    }]
}

/// Scenario 6: converting a journal of `records` records with 1 KB of content each.
fn parquet_export(bin: &Path, dir: &Path, records: usize) -> Vec<Row> {
    eprintln!("6. Parquet conversion: {records} records of 1 KB content");
    let input = job_file(dir, &format!("pq{records}.jsonl"), records, false);
    let journal = dir.join("pq.journal.jsonl");
    write_output(&input, &journal, &"All good. ".repeat(102));
    let size_mb = std::fs::metadata(&journal).map_or(0, |m| m.len()) as f64 / 1e6;
    let out = dir.join("pq.parquet");
    let started = Instant::now();
    let child = Command::new(bin)
        .args([
            "export",
            journal.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("export");
    let (code, cpu, rss_kb) = wait4(child.id());
    std::mem::forget(child);
    let wall = started.elapsed().as_secs_f64();
    let rss = rss_kb as f64 / 1024.0;
    let out_mb = std::fs::metadata(&out).map_or(0, |m| m.len()) as f64 / 1e6;
    vec![
        Row {
            scenario: format!("6. Parquet conversion, {records} x 1 KB"),
            figure: format!(
                "{:.0} records/s ({wall:.1} s, {cpu:.1} s CPU, exit {code})",
                records as f64 / wall
            ),
            reference: format!("journal {size_mb:.0} MB -> Parquet {out_mb:.0} MB"),
            ratio: "-".into(),
            target: "-".into(),
            met: None,
        },
        Row {
            scenario: "6. Parquet conversion: peak RSS".into(),
            figure: format!("{rss:.0} MB"),
            reference: "-".into(),
            ratio: "-".into(),
            target: "< 300 MB".into(),
            met: Some(rss < 300.0),
        },
    ]
}

/// Scenario 8: `bulkprompt report` over an output of 100,000 and of `records` records: its
/// memory must not grow with the output, nor the page.
fn report_memory(bin: &Path, dir: &Path, records: usize) -> Vec<Row> {
    eprintln!("8. report: {} and {records} records", records / 10);
    let mut measured = Vec::new();
    for n in [records / 10, records] {
        let input = job_file(dir, &format!("rep{n}.jsonl"), n, false);
        let out = dir.join(format!("rep{n}.out.jsonl"));
        write_done_output(&input, &out);
        let html = dir.join(format!("rep{n}.html"));
        let started = Instant::now();
        let child = Command::new(bin)
            .args([
                "report",
                out.to_str().unwrap(),
                "-o",
                html.to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("report");
        let (code, _cpu, rss_kb) = wait4(child.id());
        std::mem::forget(child);
        let kb = std::fs::metadata(&html).map_or(0, |m| m.len()) / 1024;
        measured.push((
            n,
            started.elapsed().as_secs_f64(),
            rss_kb as f64 / 1024.0,
            kb,
            code,
        ));
    }
    let (small, big) = (measured[0], measured[1]);
    vec![
        Row {
            scenario: format!("8. report over {} records", big.0),
            figure: format!(
                "{:.0} records/s ({:.1} s, exit {}), page {} KB",
                big.0 as f64 / big.1,
                big.1,
                big.4,
                big.3
            ),
            reference: format!("{} records: page {} KB", small.0, small.3),
            ratio: "-".into(),
            target: "page < 1 MB".into(),
            met: Some(big.3 < 1024),
        },
        Row {
            scenario: "8. report: peak RSS".into(),
            figure: format!("{:.1} MB", big.2),
            reference: format!("{} records: {:.1} MB", small.0, small.2),
            ratio: format!(
                "+{:.1} MB ({:.0} B an id)",
                big.2 - small.2,
                (big.2 - small.2) * 1048576.0 / (big.0 - small.0) as f64
            ),
            // The charts and tables are constant; which line is each id's latest is not.
            target: "<= 48 B an id".into(),
            met: Some((big.2 - small.2) * 1048576.0 / (big.0 - small.0) as f64 <= 48.0),
        },
    ]
}

/// A Parquet job file of `n` rows (id, text, n), in row groups of 65,536 rows.
fn parquet_jobs(dir: &Path, n: usize) -> PathBuf {
    use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
    let path = dir.join(format!("jobs{n}.parquet"));
    let file = std::fs::File::create(&path).expect("parquet job file");
    let filler = "The product arrived on time, works as described and the battery lasts all day.";
    let mut w = None;
    for start in (0..n).step_by(65_536) {
        let end = (start + 65_536).min(n);
        let batch = RecordBatch::try_from_iter(vec![
            (
                "id",
                std::sync::Arc::new(StringArray::from_iter_values(
                    (start..end).map(|i| format!("j{i}")),
                )) as ArrayRef,
            ),
            (
                "text",
                std::sync::Arc::new(StringArray::from_iter_values(
                    (start..end).map(|i| format!("Review {i}: {filler}")),
                )) as ArrayRef,
            ),
            (
                "n",
                std::sync::Arc::new(Int64Array::from_iter_values((start..end).map(|i| i as i64)))
                    as ArrayRef,
            ),
        ])
        .expect("batch");
        let w = w.get_or_insert_with(|| {
            parquet::arrow::ArrowWriter::try_new(
                file.try_clone().expect("file"),
                batch.schema(),
                None,
            )
            .expect("writer")
        });
        w.write(&batch).expect("write");
        w.flush().expect("row group");
    }
    w.expect("rows").close().expect("close");
    path
}

/// Scenario 9: reading a Parquet job file (`validate`: every row rendered into its request)
/// of `rows` and of three times as many rows: memory must not grow with the file but by the
/// 24 bytes an id the duplicate check keeps.
fn parquet_input_memory(bin: &Path, dir: &Path, rows: usize) -> Vec<Row> {
    eprintln!("9. Parquet job files: {rows} and {} rows", rows * 3);
    let mut measured = Vec::new();
    // From one million rows up, past the allocator's own warm-up.
    for n in [rows, rows * 3] {
        let input = parquet_jobs(dir, n);
        let started = Instant::now();
        let child = Command::new(bin)
            .args(["validate", input.to_str().unwrap()])
            .args(["--template", "Classify: {text}", "--model", "m"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("validate");
        let (code, _cpu, rss_kb) = wait4(child.id());
        std::mem::forget(child);
        measured.push((
            n,
            started.elapsed().as_secs_f64(),
            rss_kb as f64 / 1024.0,
            code,
        ));
    }
    let (small, big) = (measured[0], measured[1]);
    let per_row = (big.2 - small.2) * 1048576.0 / (big.0 - small.0) as f64;
    vec![
        Row {
            scenario: format!("9. Parquet job file, {} rows: read", big.0),
            figure: format!(
                "{:.0} rows/s ({:.1} s, exit {})",
                big.0 as f64 / big.1,
                big.1,
                big.3
            ),
            reference: format!("{} rows: {:.1} s", small.0, small.1),
            ratio: "-".into(),
            target: "-".into(),
            met: None,
        },
        Row {
            scenario: "9. Parquet job file: peak RSS".into(),
            figure: format!("{:.1} MB", big.2),
            reference: format!("{} rows: {:.1} MB", small.0, small.2),
            ratio: format!("+{:.1} MB ({per_row:.0} B a row)", big.2 - small.2),
            target: "<= 32 B a row".into(),
            met: Some(per_row <= 32.0),
        },
    ]
}

/// Writes an output where every job of `input` is done, as a finished run would leave it.
fn write_done_output(input: &Path, out: &Path) {
    write_output(
        input,
        out,
        "{\"label\":\"positive\",\"confidence\":0.91,\"summary\":\"Arrived on time and works as described\"}",
    );
}

/// Writes an output where every job of `input` is done, each with `content`.
fn write_output(input: &Path, out: &Path, content: &str) {
    let spec = InputSpec {
        path: input.to_path_buf(),
        format: InputFormat::Jsonl,
        delimiter: b',',
        defaults: Arc::new(JobDefaults::default()),
        max_line_bytes: 1 << 20,
        shard: None,
    };
    let mut w = BufWriter::new(std::fs::File::create(out).expect("output"));
    let now = timestamp(SystemTime::now());
    for job in spec.open().expect("open") {
        let job = job.expect("job");
        let u = Usage {
            prompt: 30,
            completion: 20,
            ..Default::default()
        };
        let r = Record {
            id: job.id.to_string(),
            index: job.index,
            status: Status::Ok,
            model: job.model.clone(),
            response_model: Some(job.model.clone()),
            content: Some(content.into()),
            parsed: None,
            finish_reason: Some("stop".into()),
            tool_calls: None,
            choices: None,
            fallback_model: None,
            stale: None,
            dedup_of: None,
            response: None,
            prompt: None,
            prompt_tokens: Some(u.prompt),
            completion_tokens: Some(u.completion),
            total_tokens: Some(u.prompt + u.completion),
            cached_tokens: Some(0),
            reasoning_tokens: Some(0),
            billed_output_tokens: None,
            usage_rule: None,
            cost_usd: Some(0.000011),
            cost_source: Some(CostSource::PriceTable),
            upstream_cost_usd: None,
            latency_ms: 412,
            attempts: 1,
            retries: None,
            error: None,
            started_at: now.clone(),
            finished_at: now.clone(),
            metadata: job.metadata.clone(),
            fingerprint: job.fingerprint.to_string(),
        };
        serde_json::to_writer(&mut w, &r).expect("record");
        w.write_all(b"\n").expect("newline");
    }
}

/// A `redis-server` on 127.0.0.1 at a free port, in its own folder, killed when dropped.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn start(dir: &Path) -> Option<RedisServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let r = RedisServer { child, port };
        let end = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(r)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Scenario 7: what sharing limits and budget through Redis costs. The same jobs against a
/// simulator that answers at once: one worker with its own limiter and budget, then three
/// workers sharing them through a coordinator (grants taken in batches while the buckets hold
/// them, reservations drawn from blocks of the cap leased to each worker). A limit and a cap
/// are set high enough never to bind, so only their machinery is measured.
///
/// Three rounds of the pair, alternating, and the median of their ratios: a pair of one-second
/// runs on a shared two-core machine spreads by a third (the three workers need both cores
/// whole, one worker alone a core and a half, so a neighbour's burst falls unevenly).
fn coordinator_overhead(bin: &Path, dir: &Path, jobs: usize) -> Vec<Row> {
    eprintln!("7. coordinator: {jobs} jobs, one worker alone, then three sharing through Redis (three rounds)");
    let redis_dir = dir.join("redis");
    let _ = std::fs::create_dir_all(&redis_dir);
    let Some(redis) = RedisServer::start(&redis_dir) else {
        return vec![Row {
            scenario: "7. coordinator".into(),
            figure: "redis-server not installed (apt-get install redis-server)".into(),
            reference: "-".into(),
            ratio: "-".into(),
            target: "-".into(),
            met: None,
        }];
    };
    let pair = Pair {
        bin,
        dir,
        input: job_file(dir, "coord.jsonl", jobs, false),
        redis: format!("redis://127.0.0.1:{}", redis.port),
    };
    let mut rounds: Vec<Round> = (0..ROUNDS).map(|round| pair.round(round)).collect();
    rounds.sort_by(|a, b| a.ratio().total_cmp(&b.ratio()));
    let spread: Vec<String> = rounds.iter().map(|r| format!("{:.2}", r.ratio())).collect();
    let m = &rounds[ROUNDS / 2];
    let (alone, shared) = (jobs as f64 / m.alone, jobs as f64 / m.shared);
    let trips = m.round_trips as f64 / jobs as f64;
    vec![
        Row {
            scenario: "7. coordinator: Redis round trips per job".into(),
            figure: format!("{trips:.2} ({} for {jobs} jobs)", m.round_trips),
            reference: "one grant + one reservation a job: 2".into(),
            ratio: "-".into(),
            // Grants in batches, reservations from leased blocks.
            target: "<= 0.25".into(),
            met: Some(trips <= 0.25),
        },
        Row {
            scenario: "7. coordinator: three workers' requests/s (median of three rounds)".into(),
            figure: format!(
                "{shared:.0}/s ({:.1} s, exits {:?}; rounds {})",
                m.shared,
                m.codes,
                spread.join(", ")
            ),
            reference: format!("one worker, no coordinator: {alone:.0}/s"),
            ratio: format!("{:.2}", m.ratio()),
            target: ">= 0.60".into(),
            met: Some(m.ratio() >= 0.6),
        },
    ]
}

/// Rounds of scenario 7's pair.
const ROUNDS: usize = 3;

/// What scenario 7's pair runs: the same jobs, alone and shared.
struct Pair<'a> {
    bin: &'a Path,
    dir: &'a Path,
    input: PathBuf,
    redis: String,
}

/// One round of the pair: wall seconds alone and shared, the shared workers' Redis calls
/// and exit codes.
struct Round {
    alone: f64,
    shared: f64,
    round_trips: u64,
    codes: Vec<i32>,
}

impl Round {
    /// Three workers' throughput against one worker's.
    fn ratio(&self) -> f64 {
        self.alone / self.shared
    }
}

impl Pair<'_> {
    fn common(&self, out: &Path) -> Vec<String> {
        args(&[
            self.input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--concurrency",
            "256",
            "--rpm",
            "100000000",
            "--max-cost",
            "1000",
            "--fresh",
        ])
    }

    fn round(&self, round: usize) -> Round {
        let sim = Sim::start(self.bin, &["--threads", "1"]);
        let mut alone = self.common(&self.dir.join("coord-alone.jsonl"));
        alone.extend(args(&["--endpoint", &sim.url]));
        let m = run_bulkprompt(self.bin, &alone, &self.dir.join("coord-alone.summary.json"));
        drop(sim);
        let (shared, round_trips, codes) = self.shared(round);
        Round {
            alone: m.wall.as_secs_f64(),
            shared,
            round_trips,
            codes,
        }
    }

    /// Three workers, each a shard, under one run name: their wall time, Redis calls and exits.
    fn shared(&self, round: usize) -> (f64, u64, Vec<i32>) {
        let sim = Sim::start(self.bin, &["--threads", "1"]);
        let run_name = format!("bench-{}-{round}", std::process::id());
        let started = Instant::now();
        let workers: Vec<(Child, PathBuf)> = (0..3)
            .map(|i| {
                let summary = self.dir.join(format!("coord-{i}.summary.json"));
                let mut a = self.common(&self.dir.join("coord.jsonl.out.jsonl"));
                a.extend(args(&[
                    "--endpoint",
                    &sim.url,
                    "--shard",
                    &format!("{i}/3"),
                    "--coordinator",
                    &self.redis,
                    "--run-name",
                    &run_name,
                    "--quiet",
                    "--summary-json",
                    summary.to_str().unwrap(),
                ]));
                let child = Command::new(self.bin)
                    .arg("run")
                    .args(&a)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start a worker");
                (child, summary)
            })
            .collect();
        let mut codes = Vec::new();
        let mut round_trips = 0u64;
        for (mut child, summary) in workers {
            codes.push(child.wait().map_or(-1, |s| s.code().unwrap_or(-1)));
            round_trips += std::fs::read(&summary)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["coordinator"]["round_trips"].as_u64())
                .unwrap_or(0);
        }
        let wall = started.elapsed().as_secs_f64();
        drop(sim);
        (wall, round_trips, codes)
    }
}

fn print_table(rows: &[Row]) {
    println!();
    println!("| scenario | measured | reference (same run) | ratio | target | met |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for r in rows {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "-",
        };
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.scenario, r.figure, r.reference, r.ratio, r.target, met
        );
    }
}
