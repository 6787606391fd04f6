//! Many workers, one key: the coordinator shares the rate limit and the budget of every worker
//! of a run (`--coordinator redis://... --run-name NAME`) through Redis, the one shared piece.
//! The engines never see it: `SharedLimit` implements the run's `RateLimit` and
//! `SharedBudget` its `Budget`, each a thin client of atomic Lua scripts (`scripts`) that run
//! on Redis's clock.
//!
//! - **Limits.** One requests bucket and one tokens bucket for the run, sized as the local
//!   limiter's; a grant is one round trip; tokens are reconciled with real usage (the refunds
//!   ride on the next grant); a 429 pause seen by one worker pauses every worker; the lowest
//!   limit the provider advertised caps the buckets.
//! - **Budget.** Each worker (a shard, or the output when unsharded) keeps its own spent and
//!   held in Redis, written as absolute values with a sequence number, so a call repeated after
//!   a lost answer changes nothing. A reservation is granted only when everyone's spent, the
//!   live holds and this job's worst case fit the cap. Holds are leased: a worker that
//!   vanished stops counting once its lease lapses; the same worker run again takes its place
//!   at once when the one before it is dead on the same host.
//! - **Redis out of reach.** Nothing is granted, so nothing is sent unpaced; after
//!   `--coordinator-timeout` in a row the run stops (exit 4), its output whole.

mod budget;
mod done;
mod limit;
mod link;
mod pace;
mod scripts;

pub(crate) use budget::SharedBudget;
pub(crate) use done::{DoneLedger, DoneSender};
pub(crate) use limit::SharedLimit;

use crate::cost::Money;
use crate::limit::Limiter;
use link::Link;
use std::sync::Arc;
use std::time::Duration;

pub use crate::unreachable::Unreachable;

/// `--coordinator` and its settings, resolved.
#[derive(Clone)]
pub struct CoordinatorConfig {
    /// `redis://` or `rediss://` URL; its password is a secret.
    url: String,
    /// `--run-name`: every key is under `bulkprompt:{NAME}:`.
    pub run_name: String,
    /// How long Redis may be out of reach before the run stops.
    pub timeout: Duration,
    /// This worker's name in the shared budget: `shard-I-of-N`, or the output's.
    pub worker: String,
}

impl std::fmt::Debug for CoordinatorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorConfig")
            .field("url", &self.shown_url())
            .field("run_name", &self.run_name)
            .field("timeout", &self.timeout)
            .field("worker", &self.worker)
            .finish()
    }
}

impl CoordinatorConfig {
    /// Checks the URL and the run's name.
    pub fn new(
        url: String,
        run_name: String,
        timeout: Duration,
        worker: String,
    ) -> Result<Self, String> {
        let parsed = url::Url::parse(&url).map_err(|_| {
            "--coordinator: expected redis://[:PASSWORD@]HOST:PORT[/DB] or rediss://... (TLS)"
                .to_string()
        })?;
        if !matches!(parsed.scheme(), "redis" | "rediss") {
            return Err(format!(
                "--coordinator {}: expected a redis:// or rediss:// URL",
                shown(&url)
            ));
        }
        if run_name.is_empty()
            || run_name.len() > 200
            || !run_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "--run-name {run_name:?}: 1 to 200 letters, digits, '-', '_' or '.'"
            ));
        }
        Ok(CoordinatorConfig {
            url,
            run_name,
            timeout,
            worker,
        })
    }

    /// The URL without its password, for messages and the summary.
    pub fn shown_url(&self) -> String {
        shown(&self.url)
    }
}

/// A `--coordinator` value as it may be shown or stored: its password `(redacted)`.
pub fn redact_url(url: &str) -> String {
    shown(url)
}

fn shown(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("(redacted)"));
            }
            u.to_string()
        }
        Err(_) => "(not a URL)".into(),
    }
}

/// A connected coordinator: hands out the shared limit and budget.
pub(crate) struct Coordinator {
    link: Arc<Link>,
    prefix: String,
    cfg: CoordinatorConfig,
}

impl Coordinator {
    /// Connects (trying again for the coordinator timeout).
    pub(crate) async fn connect(cfg: &CoordinatorConfig) -> Result<Coordinator, Unreachable> {
        let link = Link::connect(&cfg.url, cfg.shown_url(), cfg.timeout).await?;
        Ok(Coordinator {
            link: Arc::new(link),
            // Braces: a hash tag, so every key of a run lands on one Redis Cluster slot.
            prefix: format!("bulkprompt:{{{}}}", cfg.run_name),
            cfg: cfg.clone(),
        })
    }

    /// The run's shared rate limit; `local` still finds a limit nobody states.
    /// The run's requests and tokens a minute: the first worker's, which every later one
    /// takes. A worker that named other limits is refused (it would pace the others by its
    /// own idea of the key's limit); one that named none takes the run's and says so.
    pub(crate) async fn agree_limits(
        &self,
        rpm: Option<u64>,
        tpm: Option<u64>,
    ) -> Result<(Option<u64>, Option<u64>), Unreachable> {
        let key = format!("{}:limit", self.prefix);
        let (run_rpm, run_tpm): (u64, u64) = self
            .link
            .invoke(&scripts::AGREE, &key, |_| {
                vec![rpm.unwrap_or(0).to_string(), tpm.unwrap_or(0).to_string()]
            })
            .await?;
        let shown = |v: u64| match v {
            0 => "none".to_string(),
            v => v.to_string(),
        };
        let run = (
            (run_rpm > 0).then_some(run_rpm),
            (run_tpm > 0).then_some(run_tpm),
        );
        for (what, mine, theirs) in [("--rpm", rpm, run.0), ("--tpm", tpm, run.1)] {
            match mine {
                Some(m) if Some(m) != theirs => {
                    return Err(Unreachable(format!(
                        "the coordinator: run {:?} paces every worker by {what} {} (its first worker's); this worker says {what} {m}: give the run's limits, or another --run-name",
                        self.cfg.run_name,
                        shown(theirs.unwrap_or(0))
                    )))
                }
                None if theirs.is_some() => tracing::info!(
                    "the coordinator: run {:?} is paced at {what} {} (its first worker's)",
                    self.cfg.run_name,
                    shown(theirs.unwrap_or(0))
                ),
                _ => {}
            }
        }
        Ok(run)
    }

    pub(crate) fn limit(&self, rpm: Option<u64>, tpm: Option<u64>, local: Limiter) -> SharedLimit {
        SharedLimit::new(
            self.link.clone(),
            format!("{}:limit", self.prefix),
            rpm,
            tpm,
            local,
        )
    }

    /// Joins the run's shared budget as this worker, with what its output already recorded.
    /// Holds are leased for `lease`: longer than a worker cut off from Redis can still have
    /// requests in flight.
    pub(crate) async fn budget(
        &self,
        cap: Money,
        spent_before: Money,
        lease: Duration,
    ) -> Result<SharedBudget, Unreachable> {
        SharedBudget::join(
            self.link.clone(),
            format!("{}:budget", self.prefix),
            self.cfg.worker.clone(),
            cap,
            spent_before,
            lease,
        )
        .await
    }

    /// The ids this worker's earlier processes got an ok record for (on any disk).
    pub(crate) async fn done_before(
        &self,
    ) -> Result<std::collections::HashSet<crate::job::IdKey>, Unreachable> {
        done::load(&self.link, &self.done_key()).await
    }

    /// Where this worker's ok records' ids are kept from now on.
    pub(crate) fn done_ledger(&self) -> DoneLedger {
        DoneLedger::start(self.link.clone(), self.done_key())
    }

    fn done_key(&self) -> String {
        format!("{}:done:{}", self.prefix, self.cfg.worker)
    }

    /// Calls made to Redis so far.
    pub(crate) fn round_trips(&self) -> u64 {
        self.link.round_trips()
    }

    pub(crate) fn shown_url(&self) -> &str {
        &self.link.shown
    }
}

/// This machine's name, for the budget's "held by" messages: `BULKPROMPT_WORKER_HOST` when
/// set (containers that share a host name), else the system's.
fn hostname() -> String {
    match std::env::var("BULKPROMPT_WORKER_HOST") {
        Ok(h) if !h.is_empty() => h,
        _ => system_hostname(),
    }
}

#[cfg(unix)]
fn system_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return "unknown-host".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(not(unix))]
fn system_hostname() -> String {
    std::env::var("COMPUTERNAME").unwrap_or_else(|_| "unknown-host".into())
}

/// Whether process `pid` is alive on this machine.
#[cfg(not(unix))]
fn alive(_pid: u32) -> bool {
    true
}

/// Whether process `pid` is alive on this machine.
#[cfg(unix)]
fn alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_names_are_checked_and_the_password_never_shown() {
        let ok = CoordinatorConfig::new(
            "redis://:hunter2@10.0.0.1:6379/2".into(),
            "label-reviews.2026-12".into(),
            Duration::from_secs(60),
            "shard-0-of-3".into(),
        )
        .unwrap();
        assert_eq!(ok.shown_url(), "redis://:(redacted)@10.0.0.1:6379/2");
        assert!(!format!("{ok:?}").contains("hunter2"));
        assert_eq!(
            redact_url("rediss://user:pw@h:1"),
            "rediss://user:(redacted)@h:1"
        );
        assert_eq!(redact_url("redis://h:1/0"), "redis://h:1/0");
        let bad = |url: &str, name: &str| {
            CoordinatorConfig::new(url.into(), name.into(), Duration::from_secs(1), "w".into())
                .unwrap_err()
        };
        assert!(bad("http://h:1", "n").contains("redis://"));
        assert!(bad("h:6379", "n").contains("redis://"));
        assert!(bad("redis://h:1", "").contains("--run-name"));
        assert!(bad("redis://h:1", "a b").contains("--run-name"));
        assert!(bad("redis://h:1", "a{b}").contains("--run-name"));
    }
}
