//! What a run is, resolved: a [`RunConfig`] (where requests go, the job file, limits, money,
//! output) built once from the flags and the spec, and passed down; nothing below reads a
//! flag again. `spec` reads job specs (`jobs/*.toml`); `resolve` turns flags and a spec into
//! a `RunConfig` (the one file here that knows the command line's types). Precedence is
//! command line, then spec, then environment (`BULKPROMPT_ENDPOINT`, `BULKPROMPT_API_KEY_ENV`,
//! `BULKPROMPT_MODEL`), then defaults. A spec names the key's variable, never the key.

mod resolve;
mod spec;

pub use resolve::{load_spec, resolve_estimate, resolve_input, resolve_run};
pub use spec::{MockSpec, Spec};

use crate::cost::{Money, PriceTable};
use crate::job::InputSpec;
use crate::mock::MockConfig;
use crate::output::parquet::ParquetOptions;
use crate::progress::ProgressMode;
use crate::retry::Backoff;
use crate::secret::ApiKey;
use std::path::PathBuf;
use std::time::Duration;

/// Where requests go.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// An OpenAI-compatible base URL.
    Url(String),
    /// The simulator, started in-process on 127.0.0.1.
    Mock(Box<MockConfig>),
}

/// Everything a run needs, resolved from flags, spec and defaults.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub input: InputSpec,
    pub output: PathBuf,
    pub endpoint: Endpoint,
    pub api_key: Option<ApiKey>,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    pub max_response_bytes: usize,
    pub allow_insecure_http: bool,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    /// Without `--rpm`: the provider's documented default to start finding its limit from.
    pub start_rpm: Option<u64>,
    /// Do not pace to the provider's advertised `x-ratelimit-limit-*`.
    pub ignore_limit_headers: bool,
    /// `--fixed-concurrency`: the in-flight limit stays at `concurrency`.
    pub fixed_concurrency: bool,
    pub concurrency: usize,
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// Output tokens charged to the limiter for jobs without `max_tokens`.
    pub default_output_tokens: u64,
    pub retry_failed: bool,
    /// Times an answer that does not match its schema is asked again.
    pub retry_invalid: u32,
    /// Models tried in turn when the provider says a job's model is not there.
    pub fallback_models: Vec<String>,
    /// `--mode batch`: the batch engine's settings (`None`: live).
    pub batch: Option<crate::batch::BatchSettings>,
    /// Hard cap on the money recorded in the output, over all runs.
    pub max_cost: Option<Money>,
    /// Jobs failing in a row with the same kind of error that stop the run (0: never).
    pub circuit_breaker: u32,
    /// Send at most this many jobs this run (a sample before the whole file).
    pub limit: Option<u64>,
    pub fresh: bool,
    /// Move unreadable output lines to the quarantine file instead of refusing the output.
    pub repair: bool,
    /// Drop records of ids no longer in the job file.
    pub prune: bool,
    pub keep_response: bool,
    /// Records keep the messages sent.
    pub keep_prompt: bool,
    /// `--dedupe`: each distinct request sent once.
    pub dedupe: Option<crate::job::Dedupe>,
    /// `--order input`: the final rewrite puts records in the job file's order.
    pub order_input: bool,
    pub prices: PriceTable,
    pub progress: ProgressMode,
    pub grace: Duration,
    /// The command line, for the resume hint and the output's meta.
    pub argv: Vec<String>,
    /// Parquet output: the file, written from the journal (`output`) at the end of the run.
    pub parquet: Option<(PathBuf, ParquetOptions)>,
    /// Files the run reads besides the job file (spec, template, prices): never written.
    pub reads: Vec<PathBuf>,
    /// Where the caller writes the summary as JSON, checked with the run's own files.
    pub summary_json: Option<PathBuf>,
    /// Problems `validate` lists before giving up.
    pub max_errors: usize,
    /// `--coordinator`: limits and budget shared with the other workers of the run.
    pub coordinator: Option<crate::coordinator::CoordinatorConfig>,
    /// `--metrics-addr`: where the run's counters are served for Prometheus.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl RunConfig {
    /// Every file this run reads or writes for its output, named once.
    pub fn files(&self) -> crate::run_files::RunFiles {
        match &self.parquet {
            Some((target, _)) => crate::run_files::RunFiles::of_parquet(target),
            None => crate::run_files::RunFiles::of(&self.output),
        }
    }
}

/// Whether `url` points at this machine.
pub fn is_loopback(url: &str) -> bool {
    let Ok(u) = reqwest::Url::parse(url) else {
        return false;
    };
    match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// A configuration problem (exit 1, nothing sent).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The spec file could not be read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The spec is not valid TOML or has unknown keys.
    #[error("{path}: {message}")]
    Spec { path: PathBuf, message: String },
    /// A setting is missing or wrong.
    #[error("{0}")]
    Invalid(String),
}

/// An endpoint as the summary shows it: without credentials in it or a query.
pub fn shown_endpoint(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => "(not a URL)".into(),
    }
}

/// The command line to resume with: the same, minus `--fresh` (which would start over) and
/// `--repair` (done once), with secret header values redacted ([`redact_argv`]).
pub fn resume_command(argv: &[String]) -> String {
    redact_argv(argv)
        .iter()
        .filter(|a| a.as_str() != "--fresh" && a.as_str() != "--repair")
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The command line as it may be shown or stored: the value of every `--header` whose name
/// looks secret (`Authorization`, `x-api-key`, anything with key, token, secret...) and the
/// password in `--coordinator`'s URL replaced by `(redacted)`. `--header-env` names a
/// variable, never a value, and is kept.
pub fn redact_argv(argv: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(argv.len());
    let mut next: Option<&str> = None;
    for a in argv {
        match next.take() {
            Some("--header") => out.push(crate::secret::redact_header_arg(a)),
            Some(_) => out.push(crate::coordinator::redact_url(a)),
            None => {
                if let Some(v) = a.strip_prefix("--header=") {
                    out.push(format!("--header={}", crate::secret::redact_header_arg(v)));
                } else if let Some(v) = a.strip_prefix("--coordinator=") {
                    out.push(format!(
                        "--coordinator={}",
                        crate::coordinator::redact_url(v)
                    ));
                } else {
                    if a == "--header" || a == "--coordinator" {
                        next = Some(a.as_str());
                    }
                    out.push(a.clone());
                }
            }
        }
    }
    out
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}
