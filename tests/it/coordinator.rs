//! Many workers, one key: three shards share one rate limit and one budget through a real
//! `redis-server` (started here on 127.0.0.1 at a free port), against one simulator that
//! enforces the limit over a sliding minute. Each test tries to break a promise: the limit in
//! any minute, the cap in total and across runs, a worker killed mid-run, Redis gone mid-run,
//! the Redis password in logs.

use crate::harness::*;
use bulkprompt::mock::MockConfig;
use bulkprompt::output::{Record, Status};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::time::{Duration, Instant, SystemTime};

/// Waits for every child (killing them all after `limit`: a run that does not end is a bug).
fn wait_all(children: Vec<Child>, limit: Duration) -> Vec<Output> {
    let started = Instant::now();
    let mut children: Vec<Option<Child>> = children.into_iter().map(Some).collect();
    let mut done: Vec<Option<Output>> = children.iter().map(|_| None).collect();
    while done.iter().any(Option::is_none) {
        for (c, d) in children.iter_mut().zip(done.iter_mut()) {
            if d.is_none() && c.as_mut().unwrap().try_wait().unwrap().is_some() {
                *d = Some(c.take().unwrap().wait_with_output().unwrap());
            }
        }
        if started.elapsed() > limit {
            for c in children.iter_mut().flatten() {
                let _ = c.kill();
            }
            panic!("the workers did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done.into_iter().map(Option::unwrap).collect()
}

/// The flags of worker `i` of 3 of run `name`.
fn worker(redis: &Redis, name: &str, i: u32) -> Vec<String> {
    vec![
        "--shard".into(),
        format!("{i}/3"),
        "--coordinator".into(),
        redis.url(),
        "--run-name".into(),
        name.into(),
    ]
}

/// `run INPUT -o OUT --shard i/3 --coordinator URL --run-name NAME` + `extra`, started.
fn spawn_worker(
    input: &Path,
    out: &Path,
    mock: &str,
    redis: &Redis,
    name: &str,
    i: u32,
    extra: &[&str],
) -> Child {
    let mut args = worker(redis, name, i);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_cmd(input, out, mock, &args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn shard_outputs(dir: &Dir) -> Vec<PathBuf> {
    (0..3)
        .map(|i| dir.path(&format!("out.shard-{i}-of-3.jsonl")))
        .collect()
}

fn all_records(outputs: &[PathBuf]) -> Vec<Record> {
    outputs.iter().flat_map(|p| records(p)).collect()
}

fn at(ts: &str) -> SystemTime {
    humantime::parse_rfc3339(ts).unwrap()
}

/// The most weight (requests: 1 each; tokens: each record's) whose records started within any
/// 60 seconds, and the weight a minute from the first start to the last.
fn busiest_minute_and_rate(recs: &[Record], weight: impl Fn(&Record) -> u64) -> (u64, f64) {
    let mut t: Vec<(SystemTime, u64)> = recs
        .iter()
        .map(|r| (at(&r.started_at), weight(r)))
        .collect();
    t.sort();
    let (mut most, mut sum, mut j) = (0u64, 0u64, 0usize);
    for i in 0..t.len() {
        while j < t.len() && t[j].0.duration_since(t[i].0).unwrap() < Duration::from_secs(60) {
            sum += t[j].1;
            j += 1;
        }
        most = most.max(sum);
        sum -= t[i].1;
    }
    let total: u64 = t.iter().map(|x| x.1).sum();
    let (first, last) = (t[0], t[t.len() - 1]);
    let span = last.0.duration_since(first.0).unwrap();
    (most, (total - last.1) as f64 / span.as_secs_f64() * 60.0)
}

/// Three workers, each given the whole limit in `extra`, sharing it through `redis` against
/// `mock`, which enforces it over a sliding minute: every job answered once, 429s under 1%.
/// Their records.
fn three_workers_at_the_limit(
    redis: &Redis,
    mock: &Mock,
    jobs: usize,
    name: &str,
    extra: &[&str],
) -> Vec<Record> {
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(jobs));
    let out = dir.path("out.jsonl");
    let children = (0..3)
        .map(|i| spawn_worker(&input, &out, &mock.url(), redis, name, i, extra))
        .collect();
    for o in wait_all(children, Duration::from_secs(240)) {
        assert_code(&o, 0);
    }
    let st = mock.stats();
    assert_eq!(st.ok, jobs as u64);
    assert!(
        st.rate_limited * 100 < st.requests,
        "429s are 1% of requests or more: {st:?}"
    );
    let recs = all_records(&shard_outputs(&dir));
    assert_eq!(recs.len(), jobs);
    recs
}

#[test]
fn three_workers_given_the_full_rpm_share_it_and_never_pass_it() {
    let Some(redis) = Redis::start() else { return };
    const R: u64 = 3000;
    let mock = Mock::start(MockConfig {
        rpm: Some(R),
        latency: Duration::from_millis(20),
        ..Default::default()
    });
    // About 67 s at 98% of R: more than one sliding minute.
    let recs = three_workers_at_the_limit(&redis, &mock, 3300, "rpm", &["--rpm", "3000"]);
    let (most, rate) = busiest_minute_and_rate(&recs, |_| 1);
    assert!(most <= R, "{most} requests in one minute, limit {R}");
    assert!(
        rate >= R as f64 * 0.95,
        "three workers together reached {rate:.0} a minute of {R}"
    );
    eprintln!("three workers, --rpm {R} each: {rate:.0}/min together, busiest minute {most}");
}

#[test]
fn three_workers_given_the_full_tpm_share_it_and_never_pass_it() {
    let Some(redis) = Redis::start() else { return };
    const T: u64 = 60_000;
    let mock = Mock::start(MockConfig {
        tpm: Some(T),
        latency: Duration::from_millis(20),
        ..Default::default()
    });
    let recs = three_workers_at_the_limit(
        &redis,
        &mock,
        2200,
        "tpm",
        &["--tpm", "60000", "--max-tokens", "40"],
    );
    let (most, rate) = busiest_minute_and_rate(&recs, |r| r.total_tokens.unwrap());
    assert!(most <= T, "{most} tokens in one minute, limit {T}");
    assert!(
        rate >= T as f64 * 0.95,
        "three workers together reached {rate:.0} tokens a minute of {T}"
    );
    eprintln!("three workers, --tpm {T} each: {rate:.0}/min together, busiest minute {most}");
}

/// Priced jobs of about 70 prompt tokens, each allowed 200 output tokens.
fn priced_jobs(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "{{\"id\":\"j{i}\",\"model\":\"google/gemini-2.0-flash-001\",\"max_tokens\":200,\"messages\":[{{\"role\":\"user\",\"content\":\"Label item {i}: {}\"}}]}}\n",
                "some words to read ".repeat(12)
            )
        })
        .collect()
}

fn total_spent(summaries: &[PathBuf]) -> f64 {
    summaries
        .iter()
        .map(|p| summary(p)["total_cost_usd"].as_f64().unwrap())
        .sum()
}

#[test]
fn a_shared_cap_holds_over_three_workers_and_across_runs() {
    let Some(redis) = Redis::start() else { return };
    const CAP: f64 = 0.01;
    let mock = Mock::start(MockConfig {
        latency: Duration::from_millis(20),
        ..Default::default()
    });
    let dir = Dir::new();
    // Each worker alone could spend three times the cap.
    let input = dir.write("jobs.jsonl", priced_jobs(3000));
    let out = dir.path("out.jsonl");
    let sums: Vec<PathBuf> = (0..3).map(|i| dir.path(&format!("s{i}.json"))).collect();
    let spawn_all = || {
        (0..3)
            .map(|i| {
                spawn_worker(
                    &input,
                    &out,
                    &mock.url(),
                    &redis,
                    "cap",
                    i,
                    // 8 in flight each: their worst cases (3 x 8 x $0.000095) leave most of
                    // the cap to spend, so the test checks it is used, not only kept.
                    &[
                        "--max-cost",
                        &CAP.to_string(),
                        "--concurrency",
                        "8",
                        "--summary-json",
                        sums[i as usize].to_str().unwrap(),
                    ],
                )
            })
            .collect::<Vec<_>>()
    };
    for o in wait_all(spawn_all(), Duration::from_secs(120)) {
        assert_code(&o, 3);
        assert!(
            stderr(&o).contains("cost cap $0.010000 reached"),
            "{}",
            stderr(&o)
        );
    }
    let spent = total_spent(&sums);
    let billed = mock.stats().billed as f64 / 1e12;
    let recorded: f64 = all_records(&shard_outputs(&dir))
        .iter()
        .filter_map(|r| r.cost_usd)
        .sum();
    assert!(
        spent <= CAP && billed <= CAP,
        "spent {spent}, billed {billed}, cap {CAP}"
    );
    assert!(
        (recorded - billed).abs() < 1e-9,
        "recorded {recorded}, billed {billed}"
    );
    // At most 24 holds of $0.000095 stand between the spend and the cap when it stops.
    assert!(spent > CAP * 0.7, "the cap was not used: {spent}");
    eprintln!("three workers under a shared cap of {CAP}: {spent} spent");
    // The same three again, twice: the cap is over every run of every worker. They spend
    // what the holds of the first run's calls in flight left, and no more.
    for _ in 0..2 {
        for o in wait_all(spawn_all(), Duration::from_secs(60)) {
            assert_code(&o, 3);
        }
        let billed = mock.stats().billed as f64 / 1e12;
        assert!(billed <= CAP, "billed {billed} over runs, cap {CAP}");
        assert!(total_spent(&sums) <= CAP);
    }
}

#[test]
fn a_worker_killed_mid_run_is_rerun_without_losing_or_rebuying_a_result() {
    let Some(redis) = Redis::start() else { return };
    const JOBS: usize = 1500;
    let mock = Mock::start(MockConfig {
        latency: Duration::from_millis(20),
        capture_bodies: true,
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", priced_jobs(JOBS));
    let out = dir.path("out.jsonl");
    let outputs = shard_outputs(&dir);
    let extra = ["--rpm", "3000", "--max-cost", "5"];
    let mut children: Vec<Child> = (0..3)
        .map(|i| spawn_worker(&input, &out, &mock.url(), &redis, "kill", i, &extra))
        .collect();
    let lines =
        |p: &Path| std::fs::read(p).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count());
    let started = Instant::now();
    while lines(&outputs[1]) < 100 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "worker 1 wrote nothing"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut victim = children.remove(1);
    victim.kill().unwrap();
    victim.wait().unwrap();
    let recorded_before: Vec<String> = records(&outputs[1]).into_iter().map(|r| r.id).collect();
    // The dead worker's holds are still in Redis, under a live lease.
    let key = "bulkprompt:{kill}:budget";
    let held = redis.hget_u64(key, "shard-1-of-3|held").unwrap();
    assert!(held > 0, "the killed worker held nothing");
    for o in wait_all(children, Duration::from_secs(120)) {
        assert_code(&o, 0);
    }
    // Run again, it takes its place at once (its process is dead on this host) and finishes.
    let mut args = worker(&redis, "kill", 1);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let rerun_started = Instant::now();
    let o = output_within(
        &mut run_cmd(&input, &out, &mock.url(), &args),
        Duration::from_secs(60),
    );
    assert_code(&o, 0);
    assert!(
        stderr(&o).contains("is gone; the ") && stderr(&o).contains("it held counts as spent"),
        "{}",
        stderr(&o)
    );
    assert!(
        rerun_started.elapsed() < Duration::from_secs(40),
        "the re-run waited for the dead worker's lease"
    );
    assert_eq!(redis.hget_u64(key, "shard-1-of-3|held"), Some(0));

    let recs = all_records(&outputs);
    assert_eq!(recs.len(), JOBS);
    let by_id: HashMap<&str, &Record> = recs.iter().map(|r| (r.id.as_str(), r)).collect();
    assert_eq!(by_id.len(), JOBS, "an id has two records");
    assert!(by_id.values().all(|r| r.status == Status::Ok));
    // What the simulator answered, per id: a result on disk is never bought again; only the
    // requests in flight at the kill (64 at most) may be.
    let mut sent: HashMap<String, u32> = HashMap::new();
    for b in mock.bodies() {
        let text = b["messages"][0]["content"].as_str().unwrap().to_string();
        let id = text
            .strip_prefix("Label item ")
            .and_then(|r| r.split(':').next())
            .unwrap();
        *sent.entry(format!("j{id}")).or_default() += 1;
    }
    assert_eq!(sent.len(), JOBS);
    for id in &recorded_before {
        assert_eq!(
            sent[id], 1,
            "{id} was recorded before the kill and bought again"
        );
    }
    let twice = sent.values().filter(|&&n| n > 1).count();
    assert!(twice <= 64, "{twice} ids bought twice");
}

#[test]
fn redis_gone_mid_run_stops_dispatch_ends_with_exit_4_and_the_rerun_resumes() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    const JOBS: usize = 600;
    let mock = Mock::start(MockConfig {
        latency: Duration::from_millis(20),
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(JOBS));
    let out = dir.path("out.jsonl");
    let url = redis.url();
    let args = |rpm: &'static str| {
        vec![
            "--coordinator".to_string(),
            url.clone(),
            "--run-name".into(),
            "down".into(),
            "--coordinator-timeout".into(),
            "3".into(),
            "--grace".into(),
            "2".into(),
            "--rpm".into(),
            rpm.into(),
        ]
    };
    let a = args("600");
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let mut cmd = run_cmd(&input, &out, &mock.url(), &a);
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines =
        |p: &Path| std::fs::read(p).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count());
    let started = Instant::now();
    while lines(&out) < 50 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "nothing written"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    redis.stop();
    let at_stop = mock.stats().requests;
    let stopped = Instant::now();
    let o = wait_all(vec![child], Duration::from_secs(60)).remove(0);
    assert_code(&o, 4);
    let err = stderr(&o);
    assert!(
        err.contains("coordinator") && err.contains("unreachable for 3 s"),
        "{err}"
    );
    assert!(
        stopped.elapsed() < Duration::from_secs(20),
        "{:?}",
        stopped.elapsed()
    );
    // Nothing went out unpaced: at most the one grant already given.
    let after = mock.stats().requests - at_stop;
    assert!(after <= 2, "{after} requests sent while Redis was gone");
    let partial = records_by_id(&out).len();
    assert!((50..JOBS).contains(&partial), "{partial}");

    redis.restart();
    let a = args("60000");
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let o = run(&input, &out, &mock.url(), &a);
    assert_code(&o, 0);
    assert_eq!(records_by_id(&out).len(), JOBS);
    assert!(mock.stats().ok <= JOBS as u64 + 2);
}

#[test]
fn the_redis_password_is_a_secret_and_a_wrong_one_stops_at_once() {
    const PW: &str = "s3cret-redis-pw";
    let Some(redis) = Redis::start_with(Some(PW)) else {
        return;
    };
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(5));
    let out = dir.path("out.jsonl");
    let sum = dir.path("s.json");
    let url = redis.url();
    let o = run(
        &input,
        &out,
        &mock.url(),
        &[
            "--coordinator",
            &url,
            "--run-name",
            "pw",
            "--limit",
            "2",
            "-vv",
            "--summary-json",
            sum.to_str().unwrap(),
        ],
    );
    assert_code(&o, 0);
    let meta = std::fs::read_to_string(dir.path(".bulkprompt/out.jsonl.meta.json")).unwrap();
    for (what, text) in [
        ("stderr", stderr(&o)),
        ("summary", std::fs::read_to_string(&sum).unwrap()),
        ("meta", meta),
        ("output", std::fs::read_to_string(&out).unwrap()),
    ] {
        assert!(!text.contains(PW), "the password is in the {what}:\n{text}");
    }
    assert!(
        std::fs::read_to_string(&sum)
            .unwrap()
            .contains("(redacted)@127.0.0.1"),
        "the summary should name the coordinator"
    );
    // A wrong password: Redis says no, and waiting would not change that.
    let wrong = format!("redis://:not-{PW}@127.0.0.1:{}", redis.port);
    let started = Instant::now();
    let o = run(
        &input,
        &out,
        &mock.url(),
        &["--coordinator", &wrong, "--run-name", "pw"],
    );
    assert_code(&o, 4);
    assert!(stderr(&o).contains("refused"), "{}", stderr(&o));
    assert!(!stderr(&o).contains(PW), "{}", stderr(&o));
    assert!(started.elapsed() < Duration::from_secs(20));
    // Without a name, workers could not know what they share.
    let o = run(&input, &out, &mock.url(), &["--coordinator", &url]);
    assert_code(&o, 1);
    assert!(stderr(&o).contains("--run-name"), "{}", stderr(&o));
}

#[test]
fn rediss_works_with_the_systems_trust_store() {
    let Some(redis) = Redis::start_tls() else {
        return;
    };
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(20));
    let out = dir.path("out.jsonl");
    let sum = dir.path("s.json");
    let url = redis.url();
    let args = [
        "--coordinator",
        url.as_str(),
        "--run-name",
        "tls",
        "--rpm",
        "6000",
        "--coordinator-timeout",
        "3",
        "--summary-json",
        sum.to_str().unwrap(),
    ];
    // The test's CA is trusted the way a system's CA file would be (SSL_CERT_FILE).
    let o = run_cmd(&input, &out, &mock.url(), &args)
        .env("SSL_CERT_FILE", redis.dir.path().join("ca.pem"))
        .output()
        .unwrap();
    assert_code(&o, 0);
    let s = typed_summary(&sum);
    let c = s.coordinator.unwrap();
    assert!(c.url.starts_with("rediss://"), "{c:?}");
    // Through TLS: the limits agreed, the grants (20 jobs in a batch or two), the done ids.
    assert!(c.round_trips >= 3, "{c:?}");
    // Without the CA the certificate is not trusted: nothing is sent, exit 4 after the timeout.
    let o = run(&input, &dir.path("other.jsonl"), &mock.url(), &args);
    assert_code(&o, 4);
    assert!(stderr(&o).contains("certificate"), "{}", stderr(&o));
}

#[test]
fn a_429_seen_by_one_worker_pauses_every_worker() {
    let Some(redis) = Redis::start() else { return };
    // The 31st request anywhere gets a 429 asking for 3 s; everything else is answered.
    let mut script = vec![bulkprompt::mock::Step::Ok; 30];
    script.push(bulkprompt::mock::Step::RateLimited {
        retry_after_secs: 3,
    });
    let mock = Mock::start(MockConfig {
        latency: Duration::from_millis(20),
        script,
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(120));
    let out = dir.path("out.jsonl");
    // Paced (600 a minute in all), so the run is still going when the 429 comes.
    let children = (0..3)
        .map(|i| {
            spawn_worker(
                &input,
                &out,
                &mock.url(),
                &redis,
                "pause",
                i,
                &["--rpm", "600", "--concurrency", "4"],
            )
        })
        .collect();
    for o in wait_all(children, Duration::from_secs(120)) {
        assert_code(&o, 0);
    }
    assert_eq!(mock.stats().rate_limited, 1);
    // One gap of about the pause in the requests of all three together: nobody sent meanwhile
    // (but the one grant each worker may already have had scheduled).
    let mut starts: Vec<(SystemTime, usize)> = shard_outputs(&dir)
        .iter()
        .enumerate()
        .flat_map(|(w, p)| records(p).into_iter().map(move |r| (at(&r.started_at), w)))
        .collect();
    starts.sort();
    let (i, gap) = starts
        .windows(2)
        .enumerate()
        .map(|(i, w)| (i, w[1].0.duration_since(w[0].0).unwrap()))
        .max_by_key(|(_, g)| *g)
        .unwrap();
    assert!(
        gap >= Duration::from_secs(2),
        "the longest pause was {gap:?}"
    );
    for w in 0..3 {
        assert!(
            starts[..=i].iter().any(|s| s.1 == w) && starts[i + 1..].iter().any(|s| s.1 == w),
            "worker {w} did not run on both sides of the pause"
        );
    }
}

#[test]
fn three_workers_share_the_limit_and_the_budget_in_few_round_trips() {
    // Grants come in batches while the buckets hold them, and reservations from a block of
    // the cap leased to each worker: well under one round trip a job (two, one grant and one
    // reservation a job, before them), with the limit and the cap still shared.
    let Some(redis) = Redis::start() else { return };
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", priced_jobs(3000));
    let out = dir.path("out.jsonl");
    let sums: Vec<PathBuf> = (0..3).map(|i| dir.path(&format!("s{i}.json"))).collect();
    let children = (0..3)
        .map(|i| {
            spawn_worker(
                &input,
                &out,
                &mock.url(),
                &redis,
                "trips",
                i,
                &[
                    "--rpm",
                    "10000000",
                    "--max-cost",
                    "100",
                    "--concurrency",
                    "64",
                    "--summary-json",
                    sums[i as usize].to_str().unwrap(),
                ],
            )
        })
        .collect();
    for o in wait_all(children, Duration::from_secs(120)) {
        assert_code(&o, 0);
    }
    let trips: u64 = sums
        .iter()
        .map(|p| typed_summary(p).coordinator.unwrap().round_trips)
        .sum();
    let per_job = trips as f64 / 3000.0;
    eprintln!("{trips} round trips for 3000 jobs: {per_job:.3} a job");
    assert!(per_job < 0.25, "{trips} round trips for 3000 jobs");
    // Every job once, and Redis's ledgers hold what the outputs recorded.
    let recs = all_records(&shard_outputs(&dir));
    assert_eq!(recs.len(), 3000);
    assert_eq!(mock.stats().requests, 3000);
}

#[test]
fn a_worker_killed_holding_a_block_of_the_cap_never_lets_the_run_pass_it() {
    // Leased blocks are money a worker may spend without asking Redis: a worker killed with
    // one must not free it for the others (it lapses with the lease, or returns when the shard
    // is run again), and a re-run spends only what is left.
    let Some(redis) = Redis::start() else { return };
    const CAP: f64 = 0.01;
    let mock = Mock::start(MockConfig {
        latency: Duration::from_millis(20),
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", priced_jobs(3000));
    let out = dir.path("out.jsonl");
    let outputs = shard_outputs(&dir);
    let cap = CAP.to_string();
    let extra = ["--max-cost", cap.as_str(), "--concurrency", "8"];
    let mut children: Vec<Child> = (0..3)
        .map(|i| spawn_worker(&input, &out, &mock.url(), &redis, "killcap", i, &extra))
        .collect();
    let lines =
        |p: &Path| std::fs::read(p).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count());
    let started = Instant::now();
    while lines(&outputs[1]) < 20 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "worker 1 wrote nothing"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut victim = children.remove(1);
    victim.kill().unwrap();
    victim.wait().unwrap();
    let key = "bulkprompt:{killcap}:budget";
    assert!(
        redis.hget_u64(key, "shard-1-of-3|held").unwrap() > 0,
        "the killed worker held nothing (no block, no reservation in flight)"
    );
    for o in wait_all(children, Duration::from_secs(120)) {
        assert_code(&o, 3);
    }
    let billed = || mock.stats().billed as f64 / 1e12;
    assert!(
        billed() <= CAP,
        "billed {} with a dead worker's block, cap {CAP}",
        billed()
    );
    // The shard again: it takes the dead worker's place, and the run stays under the cap.
    let mut args = worker(&redis, "killcap", 1);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = output_within(
        &mut run_cmd(&input, &out, &mock.url(), &args),
        Duration::from_secs(60),
    );
    assert_code(&o, 3);
    assert!(
        billed() <= CAP,
        "billed {} after the re-run, cap {CAP}",
        billed()
    );
    let recorded: f64 = all_records(&outputs)
        .iter()
        .filter_map(|r| r.cost_usd)
        .sum();
    assert!(
        recorded <= billed() + 1e-9,
        "recorded {recorded}, billed {}",
        billed()
    );
    assert!(billed() > CAP * 0.6, "the cap was not used: {}", billed());
}

#[test]
fn what_a_killed_worker_held_counts_as_spent_when_its_shard_runs_again() {
    // A worker killed with requests in flight may have been billed for them (the provider
    // answers into a closed socket and bills all the same): its shard run again must not get
    // that money back. Before, the re-run's claim returned the dead process's holds to the cap
    // and the run could pass it by what was in flight at the kill.
    beside_a_dead_worker("deadheld", 0, u64::MAX >> 12);
}

#[test]
fn what_a_killed_worker_held_counts_for_the_others_once_its_lease_lapsed() {
    // The same money seen from another shard, once the dead worker's lease ran out (its
    // machine is gone and nobody runs it again): before, its holds stopped counting then.
    beside_a_dead_worker("deadlapsed", 1, 1);
}

/// Seeds shard `dead` of run `name` as a process of this machine killed holding money (its
/// lease until Redis ms `lease`), runs shard 0 under a cap, and checks the cap counts it.
fn beside_a_dead_worker(name: &str, dead: u32, lease: u64) {
    let Some(redis) = Redis::start() else { return };
    const CAP: f64 = 0.002;
    const HELD: f64 = 0.0015;
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", priced_jobs(3000));
    let out = dir.path("out.jsonl");
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let key = format!("bulkprompt:{{{name}}}:budget");
    let field = |f: &str| format!("shard-{dead}-of-3|{f}");
    let desc = format!("pid {} on this-test", gone.id());
    let held = ((HELD * 1e12) as u64).to_string();
    let lease = lease.to_string();
    let seeded = redis.command(&[
        "HSET",
        &key,
        &field("owner"),
        "a-process-killed",
        &field("desc"),
        &desc,
        &field("spent"),
        "0",
        &field("held"),
        &held,
        &field("lease"),
        &lease,
        &field("seq"),
        "7",
    ]);
    assert!(
        seeded.as_deref().is_some_and(|r| r.starts_with(':')),
        "{seeded:?}"
    );
    let mut args = worker(&redis, name, 0);
    args.extend(["--max-cost".into(), CAP.to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = output_within(
        run_cmd(&input, &out, &mock.url(), &args).env("BULKPROMPT_WORKER_HOST", "this-test"),
        Duration::from_secs(60),
    );
    assert_code(&o, 3);
    if dead == 0 {
        assert!(
            stderr(&o).contains("counts as spent"),
            "the takeover is not said: {}",
            stderr(&o)
        );
        let spent = redis.hget_u64(&key, &field("spent")).unwrap() as f64 / 1e12;
        assert!(spent >= HELD, "Redis counts {spent} spent");
    }
    let billed = mock.stats().billed as f64 / 1e12;
    assert!(
        billed <= CAP - HELD + 1e-12,
        "billed {billed}: the dead process's {HELD} was spent again under a cap of {CAP}"
    );
    assert!(
        billed > 0.0,
        "nothing was sent: the room left was {}",
        CAP - HELD
    );
}
