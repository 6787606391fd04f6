//! Chat completions to a plain-HTTP endpoint with no proxy (the simulator, vLLM, llama.cpp and
//! other self-hosted servers), on connections of our own: the job's task writes its request
//! and reads the answer itself ([`super::http1`]), on a connection taken from a pool and put
//! back once the answer is whole. No connection task, no channel between the request and its
//! connection, no header map: a request is one `writev` of a head built once for the run, its
//! length and its body; an answer is read into the connection's buffer of [`READ_BUFFER`]
//! bytes (the body straight into its own when it is larger). TLS endpoints and proxies keep
//! reqwest (HTTP/2 by ALPN, the proxy variables, rustls), behind the same [`super::Client`].

use super::heard::Heard;
use super::http1::{self, Read};
use bytes::{Bytes, BytesMut};
use hyper::header::{HeaderMap, HOST};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;

/// Each connection's read buffer (an answer of a few KB takes a few reads).
const READ_BUFFER: usize = 2048;

/// What an answer came to before it is judged.
pub(super) enum Received {
    Answer {
        status: u16,
        heard: Heard,
        body: Bytes,
    },
    TooLarge {
        status: u16,
    },
    /// No whole answer: the message, and whether it was the timeout.
    Failed {
        message: String,
        timed_out: bool,
    },
}

#[derive(Clone)]
pub(super) struct Direct {
    shared: Arc<Shared>,
}

/// What every request to the endpoint shares.
struct Shared {
    /// `host:port`, to connect to.
    address: String,
    /// The request line and every header but the length (the key among them: never printed).
    head: Box<[u8]>,
    timeout: Duration,
    connect_timeout: Duration,
    pool: Mutex<Pool>,
    /// Connections kept idle, at most: the concurrency, which also bounds the requests that
    /// can be waiting for one.
    max_idle: usize,
}

/// Connections not in use, and requests waiting for one while they connect.
#[derive(Default)]
struct Pool {
    /// Connections that carried a whole answer and may carry the next, the latest last.
    idle: Vec<Conn>,
    /// Requests making a connection, first come first: a connection put back goes to the
    /// first one still waiting before it goes idle (a closed receiver is a request served
    /// by its own connect, or gone).
    waiting: std::collections::VecDeque<tokio::sync::oneshot::Sender<Conn>>,
}

/// A connection and what was read from it and not yet used.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    /// When it was last put back in the pool.
    idle_since: tokio::time::Instant,
}

/// Idle this long, a connection is asked the kernel itself whether the server closed it:
/// servers close idle connections after a keep-alive timeout of seconds, and the answer
/// from tokio's readiness (no system call) may not have seen the close yet.
const LOOK_CLOSER_AFTER: Duration = Duration::from_millis(200);

impl Conn {
    /// Whether the connection still stands: the server has not closed it while it was idle,
    /// nor sent anything unasked.
    fn stands(&self) -> bool {
        let mut probe = [0u8; 1];
        // A read that would block says it stands; tokio answers without a system call
        // while the socket has not been seen readable since its last read.
        let idle = matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        idle && (self.idle_since.elapsed() < LOOK_CLOSER_AFTER || open_in_kernel(&self.stream))
    }
}

/// Whether the kernel holds no end of stream (and no bytes) for the socket: a peek that
/// does not wait, past tokio's readiness.
#[cfg(unix)]
fn open_in_kernel(stream: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut probe = [0u8; 1];
    // SAFETY: a one-byte peek into a local buffer on a descriptor the stream owns.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            probe.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && {
        let e = std::io::Error::last_os_error();
        e.kind() == std::io::ErrorKind::WouldBlock
    }
}

#[cfg(not(unix))]
fn open_in_kernel(_: &TcpStream) -> bool {
    true
}

impl Direct {
    /// A client for `url`, or None when it is not plain HTTP, carries credentials of its own,
    /// or a proxy may apply (then reqwest, which reads the proxy variables).
    pub(super) fn for_url(
        url: &reqwest::Url,
        headers: &HeaderMap,
        timeout: Duration,
        pool: usize,
    ) -> Option<Direct> {
        if url.scheme() != "http" || proxy_configured() {
            return None;
        }
        if !url.username().is_empty() || url.password().is_some() {
            return None;
        }
        let host = url.host_str()?;
        let port = url.port_or_known_default()?;
        let authority = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        let mut path = url.path().to_string();
        if let Some(q) = url.query() {
            path.push('?');
            path.push_str(q);
        }
        Some(Direct {
            shared: Arc::new(Shared {
                address: format!("{host}:{port}"),
                head: head(&path, &authority, headers),
                timeout,
                connect_timeout: timeout.min(Duration::from_secs(30)),
                pool: Mutex::new(Pool::default()),
                max_idle: pool.max(1),
            }),
        })
    }

    /// Posts `body` and reads the answer whole (up to `max` bytes), within the timeout.
    pub(super) async fn post(&self, body: &[u8], max: usize) -> Received {
        let timeout = self.shared.timeout;
        // Boxed where it is made: every future above it (the timeout, the client's, the
        // job's) stays small, and is not copied whole at each layer as it is made.
        let exchange = Box::pin(self.exchange(body, max));
        match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Received::Failed {
                message: format!(
                    "no whole answer within the timeout ({} s)",
                    timeout.as_secs_f64()
                ),
                timed_out: true,
            },
        }
    }

    /// One request on one connection, which goes back to the pool only once its answer was
    /// read whole (a request dropped half way, by the timeout or a stop, closes it).
    async fn exchange(&self, body: &[u8], max: usize) -> Received {
        let mut conn = match self.checkout().await {
            Ok(c) => c,
            Err(message) => return failed(message),
        };
        if let Err(e) = http1::write_request(&mut conn.stream, &self.shared.head, body).await {
            return failed(format!("sending the request: {e}"));
        }
        match http1::read_answer(&mut conn.stream, &mut conn.buf, max).await {
            Ok(Read::Answer(a)) => {
                if a.reusable {
                    self.put_back(conn);
                }
                Received::Answer {
                    status: a.status,
                    heard: a.heard,
                    body: a.body,
                }
            }
            Ok(Read::TooLarge { status }) => Received::TooLarge { status },
            Err(e) => failed(format!("reading the answer: {e}")),
        }
    }

    /// An idle connection, else a new one, unless a connection is put back first (it goes
    /// to the request that has waited longest): a server slow to accept (a burst of
    /// connections over its listen backlog waits for its SYNs to be sent again, a second or
    /// more later) does not hold up requests that a connection freed meanwhile can carry.
    /// The connection being made is then finished apart and put in the pool: with every
    /// connection busy, the next request would start another just the same.
    async fn checkout(&self) -> Result<Conn, String> {
        let mut handed = {
            let mut pool = self.pool();
            if let Some(c) = take_standing(&mut pool.idle) {
                return Ok(c);
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            pool.forget_gone(self.shared.max_idle);
            pool.waiting.push_back(tx);
            rx
        };
        let mut connecting = Box::pin(connect(self.shared.clone()));
        tokio::select! {
            biased;
            Ok(c) = &mut handed => {
                let pool = self.clone();
                tokio::spawn(async move {
                    if let Ok(made) = connecting.await {
                        pool.put_back(made);
                    }
                });
                Ok(c)
            }
            c = &mut connecting => {
                // A connection handed over meanwhile goes back, not down with the receiver.
                handed.close();
                if let Ok(other) = handed.try_recv() {
                    self.put_back(other);
                }
                c
            }
        }
    }

    fn put_back(&self, mut conn: Conn) {
        // An answer that grew the buffer does not keep it grown on an idle connection.
        if conn.buf.capacity() > 4 * READ_BUFFER {
            conn.buf = BytesMut::with_capacity(READ_BUFFER);
        }
        conn.idle_since = tokio::time::Instant::now();
        let mut pool = self.pool();
        while let Some(waiter) = pool.waiting.pop_front() {
            match waiter.send(conn) {
                Ok(()) => return,
                Err(back) => conn = back,
            }
        }
        if pool.idle.len() < self.shared.max_idle {
            pool.idle.push(conn);
        }
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.shared
            .pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Pool {
    /// Drops the entries of requests no longer waiting, so that a server that closes every
    /// connection (nothing is ever put back) does not grow the queue: the oldest as they
    /// come, all of them once the queue is longer than the requests that can be waiting.
    fn forget_gone(&mut self, at_most_waiting: usize) {
        while self.waiting.front().is_some_and(|w| w.is_closed()) {
            self.waiting.pop_front();
        }
        if self.waiting.len() > at_most_waiting {
            self.waiting.retain(|w| !w.is_closed());
        }
    }
}

/// A new connection to the endpoint, within the connect timeout.
async fn connect(shared: Arc<Shared>) -> Result<Conn, String> {
    let address = &shared.address;
    let stream =
        match tokio::time::timeout(shared.connect_timeout, TcpStream::connect(address)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(format!("cannot connect to {address}: {e}")),
            Err(_) => {
                return Err(format!(
                    "cannot connect to {address}: no connection within {} s",
                    shared.connect_timeout.as_secs_f64()
                ))
            }
        };
    let _ = stream.set_nodelay(true);
    Ok(Conn {
        stream,
        buf: BytesMut::with_capacity(READ_BUFFER),
        idle_since: tokio::time::Instant::now(),
    })
}

/// The latest idle connection that still stands (those that do not are closed).
fn take_standing(idle: &mut Vec<Conn>) -> Option<Conn> {
    loop {
        let conn = idle.pop()?;
        if conn.stands() {
            return Some(conn);
        }
    }
}

/// The request line and the headers every request carries, `Host` first.
fn head(path: &str, authority: &str, headers: &HeaderMap) -> Box<[u8]> {
    let mut head = format!("POST {path} HTTP/1.1\r\nhost: {authority}\r\n").into_bytes();
    for (name, value) in headers.iter().filter(|(n, _)| *n != HOST) {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.into_boxed_slice()
}

fn failed(message: String) -> Received {
    Received::Failed {
        message,
        timed_out: false,
    }
}

/// Whether a proxy variable reqwest reads is set for plain HTTP.
fn proxy_configured() -> bool {
    ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// How the scripted server treats a connection after each answer.
    #[derive(Clone, Copy)]
    enum After {
        /// Keeps it open.
        Keep,
        /// Says `Connection: close` and closes it.
        SayClose,
        /// Closes it without a word once it has answered `n` requests.
        Vanish(usize),
    }

    /// A server on 127.0.0.1 answering every request with `{"n":<request number>}`; it
    /// counts the connections it accepted.
    async fn server(after: After) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/chat/completions", l.local_addr().unwrap());
        let (conns, requests) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (c, r) = (conns.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                c.fetch_add(1, SeqCst);
                let r = r.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut answered = 0;
                    loop {
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            if !read_more(&mut s, &mut buf).await {
                                return;
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .and_then(|v| v.parse().ok())
                            .unwrap();
                        while buf.len() < end + 4 + len {
                            assert!(read_more(&mut s, &mut buf).await, "a body cut short");
                        }
                        buf.drain(..end + 4 + len);
                        let n = r.fetch_add(1, SeqCst) + 1;
                        answered += 1;
                        let body = format!("{{\"n\":{n}}}");
                        let close = matches!(after, After::SayClose);
                        let wire = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{}content-length: {}\r\n\r\n{body}",
                            if close { "connection: close\r\n" } else { "" },
                            body.len()
                        );
                        // Header and body apart, as servers often write them.
                        let (h, b) = wire.split_at(wire.len() - body.len());
                        s.write_all(h.as_bytes()).await.unwrap();
                        s.write_all(b.as_bytes()).await.unwrap();
                        match after {
                            After::SayClose => return,
                            After::Vanish(k) if answered >= k => return,
                            _ => {}
                        }
                    }
                });
            }
        });
        (url, conns, requests)
    }

    /// Reads what the client sent next onto `buf`; false at its end.
    async fn read_more(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> bool {
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    fn client(url: &str) -> Direct {
        client_of(url, 4)
    }

    fn client_of(url: &str, pool: usize) -> Direct {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/json".parse().unwrap());
        Direct::for_url(
            &url.parse().unwrap(),
            &headers,
            Duration::from_secs(5),
            pool,
        )
        .expect("a plain-HTTP endpoint is called directly")
    }

    async fn ok(d: &Direct, n: usize) {
        match d.post(b"{\"q\":1}", 1 << 20).await {
            Received::Answer { status, body, .. } => {
                assert_eq!(status, 200);
                assert_eq!(body, format!("{{\"n\":{n}}}").as_bytes());
            }
            Received::TooLarge { .. } => panic!("too large"),
            Received::Failed { message, .. } => panic!("request {n}: {message}"),
        }
    }

    #[tokio::test]
    async fn one_connection_carries_request_after_request() {
        let (url, conns, _) = server(After::Keep).await;
        let d = client(&url);
        for n in 1..=20 {
            ok(&d, n).await;
        }
        assert_eq!(conns.load(SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_server_closes_is_never_used_again() {
        // Said: a new connection for every request, and no request fails.
        let (url, conns, _) = server(After::SayClose).await;
        let d = client(&url);
        for n in 1..=5 {
            ok(&d, n).await;
        }
        assert_eq!(conns.load(SeqCst), 5);
        assert!(
            d.pool().waiting.len() <= 1,
            "the requests served are not kept waiting"
        );
        // Not said: the server drops each connection after two answers while it is idle in
        // the pool; the next request sees it closed and takes a new one, and nothing fails.
        let (url, conns, _) = server(After::Vanish(2)).await;
        let d = client(&url);
        for n in 1..=6 {
            ok(&d, n).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(conns.load(SeqCst), 3);
    }

    #[tokio::test]
    async fn many_requests_at_once_each_get_their_own_answer() {
        let (url, conns, requests) = server(After::Keep).await;
        let d = client(&url);
        let mut all = tokio::task::JoinSet::new();
        for _ in 0..64 {
            let d = d.clone();
            all.spawn(async move { d.post(b"{}", 1 << 20).await });
        }
        let mut seen = std::collections::HashSet::new();
        while let Some(r) = all.join_next().await {
            let Received::Answer { body, .. } = r.unwrap() else {
                panic!("a request failed")
            };
            assert!(seen.insert(body), "two requests got one answer");
        }
        assert_eq!(requests.load(SeqCst), 64);
        // At most the pool's four are kept; the rest were closed after their answers.
        assert!(d.pool().idle.len() <= 4);
        assert!(conns.load(SeqCst) >= 1);
    }

    #[tokio::test]
    async fn a_connection_started_for_a_request_served_by_another_is_kept() {
        // A request finds no idle connection and starts one; before it is made, a request
        // that ends puts its own back and this one takes it. The one being made is kept for
        // the next request, not closed unused: in a run that keeps the pool's every
        // connection busy, that was a socket, a handshake and a close for one request in four.
        let (url, conns, _) = server(After::Keep).await;
        let d = client_of(&url, 4);
        ok(&d, 1).await;
        let busy = d.checkout().await.expect("the idle connection");
        let waiting = {
            let d = d.clone();
            tokio::spawn(async move { d.post(b"{}", 1 << 20).await })
        };
        // The request is polled: no idle connection, so it waits and starts its own.
        tokio::task::yield_now().await;
        assert_eq!(d.pool().waiting.len(), 1);
        d.put_back(busy);
        assert!(matches!(waiting.await.unwrap(), Received::Answer { .. }));
        for _ in 0..100 {
            if d.pool().idle.len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            d.pool().idle.len(),
            2,
            "the connection made meanwhile is kept"
        );
        assert_eq!(conns.load(SeqCst), 2);
        // Both carry requests, and no third is made.
        for n in 3..=10 {
            ok(&d, n).await;
        }
        assert_eq!(conns.load(SeqCst), 2);
    }

    #[tokio::test]
    async fn a_server_that_is_not_there_is_a_failure_that_names_the_address() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let d = client(&format!("http://{addr}/v1/chat/completions"));
        match d.post(b"{}", 1024).await {
            Received::Failed { message, timed_out } => {
                assert!(!timed_out);
                assert!(
                    message.contains(&format!("cannot connect to {addr}")),
                    "{message}"
                );
            }
            _ => panic!("answered"),
        }
    }

    #[test]
    fn the_head_has_the_path_the_host_and_every_header_once() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/json".parse().unwrap());
        headers.insert(HOST, "ignored".parse().unwrap());
        headers.insert("authorization", "Bearer k".parse().unwrap());
        let url: reqwest::Url = "http://127.0.0.1:8080/v1/chat/completions?x=1"
            .parse()
            .unwrap();
        let d = Direct::for_url(&url, &headers, Duration::from_secs(1), 1).unwrap();
        let head = String::from_utf8(d.shared.head.to_vec()).unwrap();
        assert!(
            head.starts_with("POST /v1/chat/completions?x=1 HTTP/1.1\r\nhost: 127.0.0.1:8080\r\n"),
            "{head}"
        );
        assert!(head.contains("content-type: application/json\r\n"));
        assert!(head.contains("authorization: Bearer k\r\n"));
        assert!(!head.contains("ignored"));
        assert!(head.ends_with("\r\n") && !head.ends_with("\r\n\r\n"));
        assert_eq!(d.shared.address, "127.0.0.1:8080");
        // The default port is not named in Host; credentials in the URL go through reqwest.
        let url: reqwest::Url = "http://localhost/v1/chat/completions".parse().unwrap();
        let d = Direct::for_url(&url, &headers, Duration::from_secs(1), 1).unwrap();
        assert!(String::from_utf8_lossy(&d.shared.head).contains("host: localhost\r\n"));
        assert_eq!(d.shared.address, "localhost:80");
        let url: reqwest::Url = "http://u:p@localhost/v1/chat/completions".parse().unwrap();
        assert!(Direct::for_url(&url, &headers, Duration::from_secs(1), 1).is_none());
    }
}
