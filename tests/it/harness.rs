//! A tiny harness: a simulator on its own runtime, a temp dir with helpers to write job files
//! and read records back as typed structs (unknown fields are an error), and the binary with a
//! cleaned environment.

use bulkprompt::mock::{MockConfig, MockServer, StatsSnapshot};
use bulkprompt::output::Record;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

pub struct Mock {
    server: MockServer,
    _rt: tokio::runtime::Runtime,
}

impl Mock {
    pub fn start(config: MockConfig) -> Mock {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let server = rt
            .block_on(MockServer::start(([127, 0, 0, 1], 0).into(), config))
            .unwrap();
        Mock { server, _rt: rt }
    }

    pub fn url(&self) -> String {
        self.server.base_url()
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.server.stats()
    }

    pub fn batch_stats(&self) -> bulkprompt::mock::BatchStats {
        self.server.batch_stats()
    }

    pub fn set_fail_rate(&self, rate: f64) {
        self.server.set_fail_rate(rate);
    }

    pub fn set_quota_after(&self, n: Option<u64>) {
        self.server.set_quota_after(n);
    }

    pub fn bodies(&self) -> Vec<serde_json::Value> {
        self.server
            .bodies()
            .iter()
            .map(|b| serde_json::from_slice(b).unwrap())
            .collect()
    }
}

pub struct Dir {
    pub tmp: tempfile::TempDir,
}

impl Dir {
    pub fn new() -> Dir {
        Dir {
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    pub fn write(&self, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, content).unwrap();
        p
    }
}

/// `n` chat jobs with ids `j0`.. as JSONL.
pub fn chat_jobs(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "{{\"id\":\"j{i}\",\"messages\":[{{\"role\":\"user\",\"content\":\"Summarize item number {i} of the test set.\"}}]}}\n"
            )
        })
        .collect()
}

/// A job the simulator rejects with 400 (temperature out of range): a permanent failure.
pub fn rejected_job(id: &str) -> String {
    format!("{{\"id\":\"{id}\",\"temperature\":9,\"messages\":[{{\"role\":\"user\",\"content\":\"x\"}}]}}\n")
}

/// Every record of a JSONL output, typed.
pub fn records(path: &Path) -> Vec<Record> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}:{}: {e}: {l}", path.display(), i + 1))
        })
        .collect()
}

/// Records by id, asserting each id appears once.
pub fn records_by_id(path: &Path) -> HashMap<String, Record> {
    let mut map = HashMap::new();
    for r in records(path) {
        let id = r.id.clone();
        assert!(
            map.insert(id.clone(), r).is_none(),
            "id {id} appears twice in {}",
            path.display()
        );
    }
    map
}

/// The binary with an environment free of the user's bulkprompt settings.
pub fn bulkprompt() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_bulkprompt"));
    for (k, _) in std::env::vars() {
        if k.starts_with("BULKPROMPT_")
            || k.ends_with("_API_KEY")
            || k == "RUST_LOG"
            || k == "XDG_CONFIG_HOME"
            || k == "NO_COLOR"
            // A test run inside a Kubernetes Job or a Slurm array must not shard the runs.
            || k == "JOB_COMPLETION_INDEX"
            || k.starts_with("SLURM_ARRAY_")
        {
            c.env_remove(k);
        }
    }
    // No user price file leaks in from the machine running the tests.
    c.env(
        "HOME",
        std::env::temp_dir().join("bulkprompt-tests-no-home"),
    );
    c.stdin(std::process::Stdio::null());
    c
}

/// `bulkprompt run INPUT -o OUT --endpoint URL --model m --quiet` plus `extra`.
pub fn run(input: &Path, out: &Path, url: &str, extra: &[&str]) -> Output {
    run_cmd(input, out, url, extra).output().unwrap()
}

/// The command [`run`] runs, to spawn or adjust.
pub fn run_cmd(input: &Path, out: &Path, url: &str, extra: &[&str]) -> std::process::Command {
    let mut c = bulkprompt();
    c.arg("run")
        .arg(input)
        .arg("-o")
        .arg(out)
        .args(["--endpoint", url, "--quiet"]);
    if !extra.contains(&"--model") {
        c.args(["--model", "test-model"]);
    }
    c.args(extra);
    c
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the exit code, showing stderr when it differs.
pub fn assert_code(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "exit code; stderr:\n{}",
        stderr(o)
    );
}

/// Reads a `--summary-json` file as the typed summary (an unknown field is an error).
pub fn typed_summary(path: &Path) -> bulkprompt::progress::Summary {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Reads a `--summary-json` file.
pub fn summary(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Runs `cmd` to its end, or kills it after `limit` and fails the test: a run that does not
/// end is the bug, and the suite must not hang on it.
pub fn output_within(cmd: &mut std::process::Command, limit: std::time::Duration) -> Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "the run did not end within {limit:?}; stderr:\n{}",
                stderr(&o)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Spawns `cmd` with stderr piped into a channel of lines, for tests that act on what a run says.
pub fn spawn_with_stderr_lines(
    cmd: &mut std::process::Command,
) -> (
    std::process::Child,
    std::sync::mpsc::Receiver<String>,
    std::thread::JoinHandle<String>,
) {
    use std::io::BufRead;
    let mut child = cmd.stderr(std::process::Stdio::piped()).spawn().unwrap();
    let err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            all.push_str(&line);
            all.push('\n');
            let _ = tx.send(line);
        }
        all
    });
    (child, rx, reader)
}

/// Waits for a line containing `needle` (panics after `limit`).
pub fn wait_for_line(
    rx: &std::sync::mpsc::Receiver<String>,
    needle: &str,
    limit: std::time::Duration,
) -> String {
    let end = std::time::Instant::now() + limit;
    loop {
        let left = end.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(needle) => return l,
            Ok(_) => {}
            Err(_) => panic!("no line with {needle:?} within {limit:?}"),
        }
    }
}

/// Sets RLIMIT_FSIZE (a "full disk" that works as root too: writes past `bytes` fail with
/// EFBIG) in the child before it starts, with SIGXFSZ ignored so the write fails instead of
/// killing the process.
pub fn with_file_size_limit(cmd: &mut std::process::Command, bytes: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: libc::RLIM_INFINITY,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &lim);
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
}

/// A real `redis-server` on 127.0.0.1 at a free port, with its own temporary folder, stopped
/// when dropped.
pub struct Redis {
    child: Option<std::process::Child>,
    pub port: u16,
    password: Option<String>,
    /// Serving TLS only, with a certificate for 127.0.0.1 signed by `ca.pem` in `dir`.
    tls: bool,
    pub dir: tempfile::TempDir,
}

fn redis_binary() -> Option<PathBuf> {
    [
        "/usr/bin/redis-server",
        "/usr/sbin/redis-server",
        "/usr/local/bin/redis-server",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

impl Redis {
    /// Starts one, or says why not and gives none where redis-server is not installed (never
    /// in CI, where `.ci/run` installs it: there a missing server fails the test).
    pub fn start() -> Option<Redis> {
        Redis::start_with(None)
    }

    /// The same, with `requirepass`.
    pub fn start_with(password: Option<&str>) -> Option<Redis> {
        Redis::launch(password, false)
    }

    /// One serving TLS only (`rediss://`), its certificate signed by a CA made here with
    /// `openssl` (`ca.pem` in [`Redis::dir`]).
    pub fn start_tls() -> Option<Redis> {
        Redis::launch(None, true)
    }

    fn launch(password: Option<&str>, tls: bool) -> Option<Redis> {
        if redis_binary().is_none() {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is not installed; .ci/run installs it (apt-get install redis-server)"
            );
            eprintln!("skipped: redis-server is not installed (apt-get install redis-server)");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = Redis {
            child: None,
            port,
            password: password.map(String::from),
            tls,
            dir: tempfile::tempdir().unwrap(),
        };
        if tls {
            let d = r.dir.path();
            std::fs::write(
                d.join("ext.cnf"),
                "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
            )
            .unwrap();
            for args in [
                "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=bulkprompt-test-ca",
                "req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr -subj /CN=localhost",
                "x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 1 -extfile ext.cnf",
            ] {
                let o = std::process::Command::new("openssl")
                    .args(args.split(' '))
                    .current_dir(d)
                    .output()
                    .expect("openssl, to make the test's certificates");
                assert!(o.status.success(), "openssl {args}: {}", stderr(&o));
            }
        }
        r.restart();
        Some(r)
    }

    /// `redis://127.0.0.1:PORT` (with the password when there is one; `rediss://` for TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        match &self.password {
            Some(p) => format!("{scheme}://:{p}@127.0.0.1:{}", self.port),
            None => format!("{scheme}://127.0.0.1:{}", self.port),
        }
    }

    /// Kills the server (as a crash would: nothing saved).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port, empty, and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let mut cmd = std::process::Command::new(redis_binary().unwrap());
        let port = self.port.to_string();
        if self.tls {
            cmd.args(["--port", "0", "--tls-port", &port])
                .args(["--tls-cert-file", "srv.pem", "--tls-key-file", "srv.key"])
                .args(["--tls-auth-clients", "no"])
                .current_dir(self.dir.path());
        } else {
            cmd.args(["--port", &port]);
        }
        cmd.args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        self.child = Some(cmd.spawn().unwrap());
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let up = |r: &Redis| match r.tls {
            true => std::net::TcpStream::connect(("127.0.0.1", r.port)).is_ok(),
            false => r.command(&["PING"]).is_some(),
        };
        while !up(self) {
            assert!(
                std::time::Instant::now() < end,
                "redis-server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// One command over RESP; the reply's text, or none when the server does not answer.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .ok()?;
        let mut req = Vec::new();
        let mut push = |parts: &[&str]| {
            req.extend(format!("*{}\r\n", parts.len()).bytes());
            for a in parts {
                req.extend(format!("${}\r\n{a}\r\n", a.len()).bytes());
            }
        };
        if let Some(p) = &self.password {
            push(&["AUTH", p]);
        }
        push(args);
        s.write_all(&req).ok()?;
        s.shutdown(std::net::Shutdown::Write).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        if self.password.is_some() {
            out = out.strip_prefix("+OK\r\n")?.to_string();
        }
        (!out.is_empty()).then_some(out)
    }

    /// A field of a hash, parsed as a number (none when absent).
    pub fn hget_u64(&self, key: &str, field: &str) -> Option<u64> {
        let r = self.command(&["HGET", key, field])?;
        r.lines().nth(1)?.trim().parse().ok()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A chat-completions server that answers every `POST .../chat/completions` with `body`
/// (counting them) and anything else with 404, as llama.cpp's server does.
pub struct Canned {
    pub url: String,
    pub requests: Arc<AtomicU64>,
    /// Each request's head (request line and headers), lower-cased.
    pub heads: Arc<std::sync::Mutex<Vec<String>>>,
}

pub fn canned(body: &'static str) -> Canned {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", l.local_addr().unwrap());
    let requests = Arc::new(AtomicU64::new(0));
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let count = requests.clone();
    let seen = heads.clone();
    std::thread::spawn(move || {
        for stream in l.incoming() {
            let Ok(mut s) = stream else { return };
            let count = count.clone();
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // One request: headers, then Content-Length bytes.
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    seen.lock().unwrap().push(head.clone());
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < end + 4 + len {
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let chat = head
                        .lines()
                        .next()
                        .is_some_and(|l| l.contains("/chat/completions "));
                    buf.drain(..end + 4 + len);
                    let (status, text) = match chat {
                        true => {
                            count.fetch_add(1, Relaxed);
                            ("200 OK", body)
                        }
                        false => (
                            "404 Not Found",
                            r#"{"error":{"code":404,"message":"File Not Found","type":"not_found_error"}}"#,
                        ),
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}",
                        text.len()
                    );
                    if s.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    Canned {
        url,
        requests,
        heads,
    }
}
