//! The connection to Redis every shared piece goes through: one multiplexed connection
//! (redis-rs's `ConnectionManager`, which pipelines the calls of every task over one socket and
//! reconnects by itself), each call bounded in time, retried while Redis is unreachable, and
//! given up only once Redis has been unreachable for `--coordinator-timeout` in a row. Calls
//! are counted, for the summary's round trips per job.

use super::Unreachable;
use redis::aio::ConnectionManager;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// How long one call may take before it counts as a failure and is tried again.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) struct Link {
    conn: ConnectionManager,
    /// The URL as it may be shown: no password.
    pub(super) shown: String,
    timeout: Duration,
    /// Since when every call failed (none: the last call worked).
    down_since: Mutex<Option<Instant>>,
    round_trips: AtomicU64,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("url", &self.shown).finish()
    }
}

/// Whether an error is Redis saying no (a wrong password, a script error) rather than Redis
/// being out of reach or busy: waiting would not change the answer.
fn refused(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind as K, ServerErrorKind as S};
    let passing = matches!(
        e.kind(),
        K::Io
            | K::ClusterConnectionNotFound
            | K::Server(
                S::BusyLoading | S::TryAgain | S::MasterDown | S::ReadOnly | S::ClusterDown
            )
    );
    !(passing || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal())
}

impl Link {
    /// Connects, trying again until `timeout` has passed.
    pub(super) async fn connect(
        url: &str,
        shown: String,
        timeout: Duration,
    ) -> Result<Link, Unreachable> {
        // rediss:// goes through rustls, which needs its process-wide crypto provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = redis::Client::open(url).map_err(|e| {
            Unreachable(format!(
                "--coordinator {shown}: {}",
                scrub(&e.to_string(), url)
            ))
        })?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let started = Instant::now();
        let mut wait = Duration::from_millis(100);
        loop {
            let attempt = tokio::time::timeout(
                CALL_TIMEOUT * 2,
                ConnectionManager::new_with_config(client.clone(), config.clone()),
            )
            .await;
            let why = match attempt {
                Ok(Ok(conn)) => {
                    return Ok(Link {
                        conn,
                        shown,
                        timeout,
                        down_since: Mutex::new(None),
                        round_trips: AtomicU64::new(0),
                    })
                }
                Ok(Err(e)) if refused(&e) => {
                    return Err(Unreachable(format!(
                        "the coordinator {shown} refused the connection: {}",
                        scrub(&e.to_string(), url)
                    )))
                }
                Ok(Err(e)) => scrub(&e.to_string(), url),
                Err(_) => "no answer".to_string(),
            };
            if started.elapsed() >= timeout {
                return Err(Unreachable(format!(
                    "the coordinator {shown} cannot be reached ({why}) after {} s (--coordinator-timeout); nothing was sent",
                    timeout.as_secs()
                )));
            }
            tracing::warn!("the coordinator {shown} cannot be reached ({why}): trying again");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }

    /// Runs `script` with the arguments `args(first)` gives (`first`: no earlier try of
    /// this call, so something not safe to apply twice may ride on it), trying again while
    /// Redis is out of reach; an error once it has been out of reach for the coordinator
    /// timeout in a row, or when Redis refuses the call.
    pub(super) async fn invoke<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        key: &str,
        args: impl Fn(bool) -> Vec<String>,
    ) -> Result<T, Unreachable> {
        let mut wait = Duration::from_millis(50);
        let mut first = true;
        loop {
            let mut inv = script.key(key);
            for a in args(first) {
                inv.arg(a);
            }
            first = false;
            let mut conn = self.conn.clone();
            self.round_trips.fetch_add(1, Relaxed);
            let why =
                match tokio::time::timeout(CALL_TIMEOUT, inv.invoke_async::<T>(&mut conn)).await {
                    Ok(Ok(v)) => {
                        let was = self
                            .down_since
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .take();
                        if let Some(since) = was {
                            tracing::info!(
                                "the coordinator {} answers again (after {:.0} s)",
                                self.shown,
                                since.elapsed().as_secs_f64()
                            );
                        }
                        return Ok(v);
                    }
                    Ok(Err(e)) if refused(&e) => {
                        return Err(Unreachable(format!(
                            "the coordinator {} refused a call: {}",
                            self.shown,
                            explained(e.to_string())
                        )))
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no answer within {} s", CALL_TIMEOUT.as_secs()),
                };
            let since = {
                let mut d = self.down_since.lock().unwrap_or_else(|p| p.into_inner());
                if d.is_none() {
                    tracing::warn!(
                        "the coordinator {} cannot be reached ({why}): dispatch waits for it, for {} s at most",
                        self.shown,
                        self.timeout.as_secs()
                    );
                }
                *d.get_or_insert_with(Instant::now)
            };
            if since.elapsed() >= self.timeout {
                return Err(Unreachable(format!(
                    "the coordinator {} has been unreachable for {} s ({why}; --coordinator-timeout): the run stops, the output is whole; re-run once Redis is back to resume",
                    self.shown,
                    self.timeout.as_secs()
                )));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(1000));
        }
    }

    /// Calls made so far.
    pub(crate) fn round_trips(&self) -> u64 {
        self.round_trips.load(Relaxed)
    }
}

/// `text` without the password of `url` (redis-rs may quote the URL it was given).
fn scrub(text: &str, url: &str) -> String {
    let text = match url::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(String::from))
    {
        Some(pw) if !pw.is_empty() => text.replace(&pw, "(redacted)"),
        _ => text.to_string(),
    };
    explained(text)
}

/// Redis's own words for "a password is needed" ("NOAUTH", or "Protocol error: unauthenticated
/// multibulk length" to a client that sent none), said plainly.
fn explained(text: String) -> String {
    let lower = text.to_ascii_lowercase();
    if ["noauth", "unauthenticated", "authentication required"]
        .iter()
        .any(|w| lower.contains(w))
    {
        format!("{text} (Redis needs a password: give it in the URL, redis://:PASSWORD@HOST:PORT, best through BULKPROMPT_COORDINATOR)")
    } else {
        text
    }
}
