//! Job specs (`jobs/*.toml`) and the resolution of flags into a `RunConfig`. Precedence is
//! command line, then spec, then environment (`BULKPROMPT_ENDPOINT`, `BULKPROMPT_API_KEY_ENV`,
//! `BULKPROMPT_MODEL`), then defaults. Paths in a spec are relative to the spec's folder, so a
//! spec works from any working directory. A spec names the key's variable, never the key.

use crate::cli::{InputFormatArg, JobArgs, OutputFormat, RunArgs};
use crate::cost::{Money, PriceTable};
use crate::job::request::JobDefaults;
use crate::job::source::DEFAULT_MAX_LINE_BYTES;
use crate::job::{InputFormat, InputSpec, Template};
use crate::mock::MockConfig;
use crate::output::parquet::{self, ParquetOptions};
use crate::progress::ProgressMode;
use crate::provider::DEFAULT_MAX_RESPONSE_BYTES;
use crate::retry::Backoff;
use crate::secret::ApiKey;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
    pub batch: Option<crate::run::BatchSettings>,
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

/// A job spec file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub input: Option<PathBuf>,
    pub output: Option<PathBuf>,
    pub input_format: Option<String>,
    pub delimiter: Option<String>,
    pub endpoint: Option<String>,
    pub provider: Option<String>,
    pub api_key_env: Option<String>,
    pub model: Option<String>,
    pub template: Option<String>,
    pub template_file: Option<PathBuf>,
    pub json_schema: Option<PathBuf>,
    pub schema_name: Option<String>,
    #[serde(default)]
    pub image_columns: Vec<String>,
    pub max_image_bytes: Option<u64>,
    pub retry_invalid: Option<u32>,
    #[serde(default)]
    pub fallback_models: Vec<String>,
    pub mode: Option<String>,
    pub poll_interval: Option<f64>,
    pub batch_max_lines: Option<usize>,
    pub system: Option<String>,
    pub id_column: Option<String>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub ignore_limit_headers: Option<bool>,
    pub concurrency: Option<usize>,
    pub max_attempts: Option<u32>,
    pub timeout: Option<f64>,
    pub retry_base_ms: Option<u64>,
    pub reserve_output_tokens: Option<u64>,
    pub keep_response: Option<bool>,
    pub keep_prompt: Option<bool>,
    pub max_cost: Option<f64>,
    pub format: Option<String>,
    pub content_json: Option<bool>,
    pub circuit_breaker: Option<u32>,
    pub prices: Option<PathBuf>,
    pub grace: Option<f64>,
    pub referer: Option<String>,
    pub title: Option<String>,
    pub max_line_bytes: Option<usize>,
    pub max_response_bytes: Option<usize>,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Extra request parameters for jobs that set none (response_format, seed, provider, ...).
    #[serde(default)]
    pub params: Map<String, Value>,
    /// Simulator settings for `endpoint = "mock"`.
    pub mock: Option<MockSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MockSpec {
    pub latency_ms: Option<u64>,
    pub fail_rate: Option<f64>,
}

impl Spec {
    pub fn load(path: &Path) -> Result<Spec, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut spec: Spec = toml::from_str(&text).map_err(|e| ConfigError::Spec {
            path: path.to_path_buf(),
            message: spec_hint(e.to_string()),
        })?;
        let dir = path.parent().unwrap_or(Path::new(""));
        for p in [
            &mut spec.input,
            &mut spec.output,
            &mut spec.template_file,
            &mut spec.json_schema,
            &mut spec.prices,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = lexical_join(dir, p);
            }
        }
        Ok(spec)
    }
}

/// The names inside backticks after `expected one of` in a serde "unknown field" message.
fn expected_names(message: &str) -> Vec<String> {
    message
        .split("expected one of ")
        .nth(1)
        .unwrap_or("")
        .split(", ")
        .filter_map(|n| {
            n.trim()
                .strip_prefix('`')?
                .split('`')
                .next()
                .map(str::to_string)
        })
        .collect()
}

/// Edit distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// A spec's "unknown field" error, with what was probably meant: a near key ("did you mean"),
/// or a top-level key written after a `[table]` header (which makes it part of that table).
fn spec_hint(message: String) -> String {
    let Some(field) = message
        .split("unknown field `")
        .nth(1)
        .and_then(|r| r.split('`').next())
        .map(str::to_string)
    else {
        return message;
    };
    let here = expected_names(&message);
    let top_level = toml::from_str::<Spec>("bulkprompt_no_such_key = 0")
        .err()
        .map(|e| expected_names(&e.to_string()))
        .unwrap_or_default();
    if !here.contains(&field) && top_level.contains(&field) && here != top_level {
        return format!(
            "{message}\n`{field}` is a top-level key: it is inside a [table] because it comes after the table's header; move it above the first [table]"
        );
    }
    match here
        .iter()
        .map(|n| (distance(&field, n), n))
        .filter(|(d, _)| *d <= 2)
        .min()
    {
        Some((_, near)) => format!("{message}\ndid you mean `{near}`?"),
        None => message,
    }
}

/// `jobs` + `../out/x.jsonl` -> `out/x.jsonl`: joins and folds `..` without touching the disk
/// (the target may not exist yet), so messages show the path a person would write.
fn lexical_join(dir: &Path, rel: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in dir.join(rel).components() {
        match c {
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn delimiter(text: &str) -> Result<u8, ConfigError> {
    match text {
        "\\t" | "\t" | "tab" => Ok(b'\t'),
        t if t.len() == 1 && t.is_ascii() => Ok(t.as_bytes()[0]),
        t => Err(ConfigError::Invalid(format!(
            "--delimiter {t:?}: expected one ASCII character"
        ))),
    }
}

/// Resolves how to read the job file.
pub fn resolve_input(args: &JobArgs, spec: &Spec) -> Result<InputSpec, ConfigError> {
    let path = args
        .input
        .clone()
        .or_else(|| spec.input.clone())
        .ok_or_else(|| {
            ConfigError::Invalid("no job file: give one, or `input` in the spec (-c)".into())
        })?;
    if path.as_os_str() == "-" {
        return Err(ConfigError::Invalid(
            "the job file cannot be standard input (`-`): a run reads it twice (every line is checked before anything is sent) and a resume reads it again; write it to a file first".into(),
        ));
    }
    let template_text = match (
        &args.template,
        &args.template_file,
        &spec.template,
        &spec.template_file,
    ) {
        (Some(t), _, _, _) => Some(t.clone()),
        (None, Some(f), _, _) => Some(read(f)?),
        (None, None, Some(t), _) => Some(t.clone()),
        (None, None, None, Some(f)) => Some(read(f)?),
        _ => None,
    };
    let template = template_text
        .map(|t| Template::parse(&t).map_err(|e| ConfigError::Invalid(format!("--template: {e}"))))
        .transpose()?;
    let mut params = spec.params.clone();
    if let Some(t) = args.temperature.or(spec.temperature) {
        params.insert("temperature".into(), serde_json::json!(t));
    }
    if let Some(m) = args.max_tokens.or(spec.max_tokens) {
        params.insert("max_tokens".into(), serde_json::json!(m));
    }
    for p in &args.params {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| ConfigError::Invalid(format!("--param {p:?}: expected KEY=JSON")))?;
        // A bare word is taken as a string, so --param user=alice works without quotes.
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        params.insert(k.trim().to_string(), value);
    }
    if let Some(path) = args.json_schema.as_ref().or(spec.json_schema.as_ref()) {
        if params.contains_key("response_format") {
            return Err(ConfigError::Invalid(
                "--json-schema and a response_format parameter: give one of them".into(),
            ));
        }
        let name = args.schema_name.as_deref().or(spec.schema_name.as_deref());
        let file = crate::answer::SchemaFile::load(path, name).map_err(ConfigError::Invalid)?;
        params.insert("response_format".into(), file.response_format());
    }
    let defaults = JobDefaults {
        model: args
            .model
            .clone()
            .or_else(|| spec.model.clone())
            .or_else(|| env("BULKPROMPT_MODEL")),
        system: args.system.clone().or_else(|| spec.system.clone()),
        template,
        id_field: args.id_column.clone().or_else(|| spec.id_column.clone()),
        params,
        image_columns: if args.image_columns.is_empty() {
            spec.image_columns.clone()
        } else {
            args.image_columns.clone()
        },
        max_image_bytes: args
            .max_image_bytes
            .or(spec.max_image_bytes)
            .unwrap_or(crate::job::image::DEFAULT_MAX_BYTES),
        allow_constant: args.allow_constant_prompt,
        ..Default::default()
    };
    let format = match (args.input_format, spec.input_format.as_deref()) {
        (Some(InputFormatArg::Csv), _) | (None, Some("csv")) => InputFormat::Csv,
        (Some(InputFormatArg::Jsonl), _) | (None, Some("jsonl")) => InputFormat::Jsonl,
        (Some(InputFormatArg::Parquet), _) | (None, Some("parquet")) => InputFormat::Parquet,
        (None, Some(other)) => {
            return Err(ConfigError::Invalid(format!(
                "input_format {other:?}: expected jsonl, csv or parquet"
            )))
        }
        (None, None) => InputFormat::from_path(&path),
    };
    let is_tsv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("tsv"));
    let delimiter = match args.delimiter.as_deref().or(spec.delimiter.as_deref()) {
        Some(d) => delimiter(d)?,
        None if is_tsv => b'\t',
        None => b',',
    };
    let shard = match &args.shard {
        Some(text) => Some(crate::job::shard::Shard::parse(text).map_err(ConfigError::Invalid)?),
        None => {
            crate::job::shard::Shard::from_env(env, args.shards).map_err(ConfigError::Invalid)?
        }
    };
    Ok(InputSpec {
        path,
        format,
        delimiter,
        defaults: Arc::new(defaults),
        max_line_bytes: args
            .max_line_bytes
            .or(spec.max_line_bytes)
            .unwrap_or(DEFAULT_MAX_LINE_BYTES),
        shard,
    })
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Loads the spec named by `-c`, or an empty one.
pub fn load_spec(args: &JobArgs) -> Result<Spec, ConfigError> {
    args.spec
        .as_deref()
        .map(Spec::load)
        .transpose()
        .map(Option::unwrap_or_default)
}

/// The output: the flag, the spec's, or beside the input.
fn output_path(flag: Option<&PathBuf>, spec: &Spec, input: &InputSpec) -> PathBuf {
    flag.cloned()
        .or_else(|| spec.output.clone())
        .unwrap_or_else(|| default_output(&input.path))
}

/// `reviews.csv` -> `reviews.results.jsonl`, beside it.
fn default_output(input: &Path) -> PathBuf {
    let stem = input.file_stem().unwrap_or_default().to_string_lossy();
    input.with_file_name(format!("{stem}.results.jsonl"))
}

fn secs(v: f64, flag: &str) -> Result<Duration, ConfigError> {
    Duration::try_from_secs_f64(v).map_err(|_| {
        ConfigError::Invalid(format!("{flag} {v}: expected a positive number of seconds"))
    })
}

/// Resolves `run`'s flags and spec into a `RunConfig`. `argv` is the command line, for the
/// resume hint.
pub fn resolve_run(args: &RunArgs, argv: &[String]) -> Result<RunConfig, ConfigError> {
    let spec = load_spec(&args.job)?;
    let input = resolve_input(&args.job, &spec)?;
    let output = output_path(args.output.as_ref(), &spec, &input);
    // Each shard writes its own output, with every resume guarantee.
    let output = match input.shard {
        Some(s) => s.output(&output),
        None => output,
    };
    if output.as_os_str() == "-" {
        return Err(ConfigError::Invalid(
            "-o -: records cannot go to standard output: the output file is the run's checkpoint (what makes a re-run resume); give a file and read it as it grows (tail -f)".into(),
        ));
    }
    let format = args.format.or(match spec.format.as_deref() {
        Some("parquet") => Some(OutputFormat::Parquet),
        Some("jsonl") => Some(OutputFormat::Jsonl),
        Some(other) => {
            return Err(ConfigError::Invalid(format!(
                "format {other:?}: expected jsonl or parquet"
            )))
        }
        None => None,
    });
    // Parquet output: the run writes (and resumes from) a JSONL journal beside it.
    let (output, parquet) = match format {
        Some(OutputFormat::Parquet) => (parquet::journal_path(&output), Some(output)),
        None if parquet::is_parquet(&output) => (parquet::journal_path(&output), Some(output)),
        _ => (output, None),
    };
    // Every name the run writes sits beside the file the output really is, symlinks followed.
    let output = resolve_target(&output)?;
    let parquet = parquet.map(|p| resolve_target(&p)).transpose()?;
    let parquet = parquet.map(|p| {
        (
            p,
            ParquetOptions {
                content_json: args.content_json || spec.content_json.unwrap_or(false),
                parsed_columns: crate::answer::run_schema(&input.defaults.params)
                    .map(crate::answer::typed_columns)
                    .unwrap_or_default(),
            },
        )
    });
    let provider = match args.provider.as_deref().or(spec.provider.as_deref()) {
        Some(name) => Some(crate::providers::preset(name).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "--provider {name:?}: one of {}",
                crate::providers::names()
            ))
        })?),
        None => None,
    };
    let endpoint_text = args
        .endpoint
        .clone()
        .or_else(|| spec.endpoint.clone())
        .or_else(|| env("BULKPROMPT_ENDPOINT"))
        .or_else(|| provider.map(|p| p.base_url.to_string()))
        .ok_or_else(|| {
            ConfigError::Invalid(
                "no endpoint: give --endpoint URL or --provider NAME (or `--endpoint mock` for the offline simulator)".into(),
            )
        })?;
    let endpoint = if endpoint_text == "mock" {
        let ms = spec.mock.as_ref();
        let fail_rate = args
            .mock_fail_rate
            .or(ms.and_then(|m| m.fail_rate))
            .unwrap_or(0.0);
        if !(0.0..1.0).contains(&fail_rate) {
            return Err(ConfigError::Invalid(format!(
                "--mock-fail-rate {fail_rate}: expected 0 <= rate < 1"
            )));
        }
        Endpoint::Mock(Box::new(MockConfig {
            latency: Duration::from_millis(
                args.mock_latency_ms
                    .or(ms.and_then(|m| m.latency_ms))
                    .unwrap_or(200),
            ),
            seed: fastrand::u64(..),
            ..MockConfig::with_fault(crate::mock::Fault::ServerError, fail_rate)
        }))
    } else {
        if !endpoint_text.contains("://") {
            return Err(ConfigError::Invalid(format!(
                "--endpoint {endpoint_text:?}: no scheme; add https:// (https://{endpoint_text}), or http:// for a server on this machine"
            )));
        }
        Endpoint::Url(endpoint_text.clone())
    };
    let key_var = args
        .api_key_env
        .clone()
        .or_else(|| spec.api_key_env.clone())
        .or_else(|| env("BULKPROMPT_API_KEY_ENV"))
        .or_else(|| provider.and_then(|p| p.key_env).map(String::from));
    // A variable named on the command line is meant: unset, it is an error wherever the
    // requests go (a key silently left out is a run of 401s, or of unpaced free requests).
    let named = args.api_key_env.is_some();
    let api_key = match (&key_var, &endpoint) {
        // The simulator and loopback servers (vLLM, a local mock) need no key: send one only if
        // the variable is set.
        (Some(var), Endpoint::Mock(_)) => env(var).map(ApiKey::new),
        (Some(var), Endpoint::Url(u)) if is_loopback(u) && !named => env(var).map(ApiKey::new),
        (Some(var), _) => Some(ApiKey::new(env(var).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "--api-key-env {var}: the environment variable {var} is not set or empty"
            ))
        })?)),
        (None, Endpoint::Url(u)) if !is_loopback(u) => {
            // The variable that fits the endpoint: the preset of the same host, if any.
            let host = |url: &str| {
                url::Url::parse(url)
                    .ok()
                    .and_then(|x| x.host_str().map(str::to_string))
            };
            let var = crate::providers::PRESETS
                .iter()
                .find(|p| p.key_env.is_some() && host(p.base_url) == host(u))
                .and_then(|p| p.key_env)
                .unwrap_or("OPENROUTER_API_KEY");
            return Err(ConfigError::Invalid(format!(
                "no API key for {u}: name its environment variable with --api-key-env (e.g. --api-key-env {var})"
            )));
        }
        (None, _) => None,
    };
    let mut headers: Vec<(String, String)> = spec
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(r) = args.referer.clone().or_else(|| spec.referer.clone()) {
        headers.push(("HTTP-Referer".into(), r));
    }
    let title = args.title.clone().or_else(|| spec.title.clone());
    // OpenRouter shows requests by app: name this one unless the user did.
    let title = title.or_else(|| {
        provider
            .filter(|p| p.attribution)
            .map(|_| "bulkprompt".to_string())
    });
    if let Some(t) = title {
        headers.push(("X-Title".into(), t));
    }
    for h in &args.headers {
        let (name, value) = h.split_once(':').ok_or_else(|| {
            ConfigError::Invalid(format!(
                "--header {:?}: expected \"Name: value\"",
                crate::secret::redact_header_arg(h)
            ))
        })?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    for h in &args.header_envs {
        let (name, var) = h
            .split_once(':')
            .map(|(n, v)| (n.trim(), v.trim()))
            .filter(|(n, v)| !n.is_empty() && !v.is_empty())
            .ok_or_else(|| {
                ConfigError::Invalid(format!("--header-env {h:?}: expected \"Name: VAR\""))
            })?;
        let value = env(var).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "--header-env {name}: the environment variable {var} is not set or empty"
            ))
        })?;
        headers.push((name.to_string(), value));
    }
    let prices_path = args.prices.clone().or_else(|| spec.prices.clone());
    let prices = PriceTable::load_effective(prices_path.as_deref())
        .map_err(|e| ConfigError::Invalid(e.to_string()))?;
    let concurrency = args.concurrency.or(spec.concurrency).unwrap_or(64);
    if concurrency == 0 {
        return Err(ConfigError::Invalid(
            "--concurrency must be at least 1".into(),
        ));
    }
    let backoff = Backoff {
        base: Duration::from_millis(args.retry_base_ms.or(spec.retry_base_ms).unwrap_or(500)),
        ..Backoff::default()
    };
    let coordinator = resolve_coordinator(args, input.shard, &output)?;
    Ok(RunConfig {
        input,
        output,
        endpoint,
        api_key,
        headers,
        timeout: secs(args.timeout.or(spec.timeout).unwrap_or(120.0), "--timeout")?,
        max_response_bytes: args
            .max_response_bytes
            .or(spec.max_response_bytes)
            .unwrap_or(DEFAULT_MAX_RESPONSE_BYTES),
        allow_insecure_http: args.allow_insecure_http,
        rpm: args.rpm.or(spec.rpm),
        tpm: args.tpm.or(spec.tpm),
        start_rpm: provider.and_then(|p| p.start_rpm),
        ignore_limit_headers: args.ignore_limit_headers
            || spec.ignore_limit_headers.unwrap_or(false),
        fixed_concurrency: args.fixed_concurrency,
        concurrency,
        max_attempts: args.max_attempts.or(spec.max_attempts).unwrap_or(6).max(1),
        backoff,
        default_output_tokens: args
            .reserve_output_tokens
            .or(spec.reserve_output_tokens)
            .unwrap_or(1024),
        retry_failed: args.retry_failed,
        retry_invalid: args.retry_invalid.or(spec.retry_invalid).unwrap_or(1),
        batch: {
            let batch = match (args.mode, spec.mode.as_deref()) {
                (Some(crate::cli::ModeArg::Batch), _) | (None, Some("batch")) => true,
                (Some(crate::cli::ModeArg::Live), _) | (None, Some("live") | None) => false,
                (None, Some(other)) => {
                    return Err(ConfigError::Invalid(format!(
                        "mode {other:?}: expected live or batch"
                    )))
                }
            };
            if !batch
                && (args.no_wait
                    || args.poll_interval.is_some()
                    || args.batch_api.is_some()
                    || args.batch_fallback.is_some())
            {
                return Err(ConfigError::Invalid(
                    "--no-wait, --poll-interval, --batch-api and --batch-fallback need --mode batch"
                        .into(),
                ));
            }
            match batch {
                false => None,
                true => {
                    use crate::run::BatchApi;
                    let d = crate::run::BatchSettings::default();
                    let api = match args.batch_api {
                        Some(crate::cli::BatchApiArg::Openrouter) => BatchApi::OpenRouter,
                        Some(crate::cli::BatchApiArg::Openai) => BatchApi::OpenAi,
                        None => BatchApi::for_endpoint(&endpoint_text),
                    };
                    let most = match api {
                        BatchApi::OpenAi => d.max_lines,
                        BatchApi::OpenRouter => crate::batch::openai::INLINE_MAX,
                    };
                    Some(crate::run::BatchSettings {
                        api,
                        poll: secs(
                            args.poll_interval
                                .or(spec.poll_interval)
                                .unwrap_or(30.0)
                                .max(1.0),
                            "--poll-interval",
                        )?,
                        max_lines: args
                            .batch_max_lines
                            .or(spec.batch_max_lines)
                            .unwrap_or(most)
                            .clamp(1, most),
                        no_wait: args.no_wait,
                        fallback_live: args.batch_fallback.is_some(),
                        ..d
                    })
                }
            }
        },
        fallback_models: if args.fallback_models.is_empty() {
            spec.fallback_models.clone()
        } else {
            args.fallback_models.clone()
        },
        circuit_breaker: args.circuit_breaker.or(spec.circuit_breaker).unwrap_or(20),
        limit: args.limit,
        max_cost: match args.max_cost.or(spec.max_cost) {
            Some(usd) if usd.is_finite() && usd >= 0.0 => Some(crate::cost::Money::from_usd(usd)),
            Some(usd) => {
                return Err(ConfigError::Invalid(format!(
                    "--max-cost {usd}: expected a dollar amount"
                )))
            }
            None => None,
        },
        fresh: args.fresh,
        repair: args.repair,
        prune: args.prune,
        keep_response: args.keep_response || spec.keep_response.unwrap_or(false),
        keep_prompt: args.keep_prompt || spec.keep_prompt.unwrap_or(false),
        order_input: args.order == Some(crate::cli::OrderArg::Input),
        prices,
        progress: if args.quiet {
            ProgressMode::Quiet
        } else if args.progress_log {
            ProgressMode::Log
        } else {
            ProgressMode::Auto
        },
        grace: secs(args.grace.or(spec.grace).unwrap_or(30.0), "--grace")?,
        argv: argv.to_vec(),
        parquet,
        reads: [
            args.job.spec.clone(),
            args.job.template_file.clone(),
            spec.template_file.clone(),
            args.job.json_schema.clone(),
            spec.json_schema.clone(),
            prices_path,
        ]
        .into_iter()
        .flatten()
        .collect(),
        summary_json: args.summary_json.clone(),
        max_errors: 20,
        coordinator,
        metrics_addr: args.metrics_addr.as_deref().map(metrics_addr).transpose()?,
    })
}

/// `--metrics-addr HOST:PORT`, a name resolved (`localhost:9464`). Anything but loopback
/// serves the run's counters to whoever can reach the port: said once.
fn metrics_addr(text: &str) -> Result<std::net::SocketAddr, ConfigError> {
    use std::net::ToSocketAddrs;
    let addr = text
        .to_socket_addrs()
        .map_err(|e| {
            ConfigError::Invalid(format!("--metrics-addr {text:?}: {e} (expected HOST:PORT)"))
        })?
        .next()
        .ok_or_else(|| {
            ConfigError::Invalid(format!("--metrics-addr {text:?}: the name has no address"))
        })?;
    if !addr.ip().is_loopback() {
        tracing::warn!(
            "--metrics-addr {text}: serving the run's counters on {addr}, to anyone who can reach it (127.0.0.1 keeps them on this machine)"
        );
    }
    Ok(addr)
}

/// `--coordinator`, `--run-name` and `--coordinator-timeout` (or `BULKPROMPT_COORDINATOR`), with
/// this worker's name in the shared budget: its shard, or its output.
fn resolve_coordinator(
    args: &RunArgs,
    shard: Option<crate::job::shard::Shard>,
    output: &Path,
) -> Result<Option<crate::coordinator::CoordinatorConfig>, ConfigError> {
    let url = args
        .coordinator
        .clone()
        .or_else(|| env("BULKPROMPT_COORDINATOR"));
    let Some(url) = url else {
        if args.run_name.is_some() || args.coordinator_timeout.is_some() {
            return Err(ConfigError::Invalid(
                "--run-name and --coordinator-timeout need --coordinator redis://HOST:PORT".into(),
            ));
        }
        return Ok(None);
    };
    let run_name = args.run_name.clone().ok_or_else(|| {
        ConfigError::Invalid(
            "--coordinator needs --run-name NAME: the workers that share limits and budget give the same name".into(),
        )
    })?;
    let timeout = secs(
        args.coordinator_timeout.unwrap_or(60.0),
        "--coordinator-timeout",
    )?;
    if timeout.is_zero() {
        return Err(ConfigError::Invalid(
            "--coordinator-timeout must be more than 0 seconds".into(),
        ));
    }
    let worker = match shard {
        Some(s) => format!("shard-{}-of-{}", s.index, s.count),
        None => format!(
            "output-{:016x}",
            xxhash_rust::xxh3::xxh3_64(output.as_os_str().as_encoded_bytes())
        ),
    };
    crate::coordinator::CoordinatorConfig::new(url, run_name, timeout, worker)
        .map(Some)
        .map_err(ConfigError::Invalid)
}

/// An output name resolved to the file it writes (see [`crate::paths::resolve`]).
fn resolve_target(path: &Path) -> Result<PathBuf, ConfigError> {
    crate::paths::resolve(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Resolves `estimate`'s flags and spec.
pub fn resolve_estimate(
    args: &crate::cli::EstimateArgs,
) -> Result<crate::estimate::EstimateConfig, ConfigError> {
    let run = &args.run;
    let spec = load_spec(&run.job)?;
    let input = resolve_input(&run.job, &spec)?;
    let output = output_path(run.output.as_ref(), &spec, &input);
    let prices = PriceTable::load_effective(run.prices.as_deref().or(spec.prices.as_deref()))
        .map_err(|e| ConfigError::Invalid(e.to_string()))?;
    Ok(crate::estimate::EstimateConfig {
        input,
        prices,
        rpm: run.rpm.or(spec.rpm),
        tpm: run.tpm.or(spec.tpm),
        concurrency: run.concurrency.or(spec.concurrency),
        assume_output_tokens: args.assume_output_tokens,
        reserve_output_tokens: run
            .reserve_output_tokens
            .or(spec.reserve_output_tokens)
            .unwrap_or(1024),
        // Only a regular file: a device or a pipe could be read for ever.
        output: output.is_file().then_some(output),
        batch: run.mode == Some(crate::cli::ModeArg::Batch)
            || (run.mode.is_none() && spec.mode.as_deref() == Some("batch")),
        calibrated: Default::default(),
    })
}

/// The command line to resume with: the same, minus `--fresh` (which would start over) and
/// `--repair` (done once), with secret header values redacted ([`redact_argv`]).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coordinators_password_is_redacted_in_the_command_line() {
        let argv: Vec<String> = [
            "bulkprompt",
            "run",
            "--coordinator",
            "redis://:pw1@h:1",
            "--coordinator=rediss://u:pw2@h:2/0",
        ]
        .map(String::from)
        .into();
        let shown = resume_command(&argv);
        assert!(!shown.contains("pw1") && !shown.contains("pw2"), "{shown}");
        assert!(shown.contains("redis://:(redacted)@h:1"), "{shown}");
        assert!(shown.contains("rediss://u:(redacted)@h:2/0"), "{shown}");
    }

    #[test]
    fn resume_command_drops_fresh_and_quotes() {
        let argv: Vec<String> = [
            "bulkprompt",
            "run",
            "a b.csv",
            "--fresh",
            "--template",
            "it's {x}",
        ]
        .map(String::from)
        .into();
        assert_eq!(
            resume_command(&argv),
            "bulkprompt run 'a b.csv' --template 'it'\\''s {x}'"
        );
    }

    #[test]
    fn spec_paths_are_relative_to_the_spec() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("job.toml");
        std::fs::write(
            &p,
            "input = \"data/x.csv\"\nmodel = \"m\"\n[params]\nseed = 1\n",
        )
        .unwrap();
        let s = Spec::load(&p).unwrap();
        assert_eq!(s.input.unwrap(), dir.path().join("data/x.csv"));
        assert_eq!(s.params["seed"], 1);
    }

    #[test]
    fn unknown_spec_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("job.toml");
        std::fs::write(&p, "modle = \"m\"\n").unwrap();
        assert!(Spec::load(&p)
            .unwrap_err()
            .to_string()
            .contains("unknown field `modle`"));
    }

    #[test]
    fn spec_relative_paths_fold_parent_dirs() {
        assert_eq!(
            lexical_join(Path::new("jobs"), Path::new("../out/x.jsonl")),
            PathBuf::from("out/x.jsonl")
        );
        assert_eq!(
            lexical_join(Path::new(""), Path::new("../x")),
            PathBuf::from("../x")
        );
        assert_eq!(
            lexical_join(Path::new("/a/b"), Path::new("./c")),
            PathBuf::from("/a/b/c")
        );
    }

    fn resolve(argv: &[&str]) -> Result<RunConfig, ConfigError> {
        use clap::Parser;
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let crate::cli::Command::Run(args) =
            crate::cli::Cli::try_parse_from(&argv).unwrap().command
        else {
            panic!("not a run")
        };
        resolve_run(&args, &argv)
    }

    #[test]
    fn a_provider_preset_fills_endpoint_key_and_attribution_and_flags_win() {
        // SAFETY (edition 2021: safe): no other test reads this variable.
        std::env::set_var("OPENROUTER_API_KEY", "sk-or-test-preset");
        let cfg = resolve(&[
            "b",
            "run",
            "x.jsonl",
            "--provider",
            "openrouter",
            "--model",
            "m",
        ])
        .unwrap();
        assert!(matches!(&cfg.endpoint, Endpoint::Url(u) if u == "https://openrouter.ai/api/v1"));
        assert_eq!(
            cfg.api_key.as_ref().map(|k| k.expose()),
            Some("sk-or-test-preset")
        );
        assert!(cfg
            .headers
            .contains(&("X-Title".into(), "bulkprompt".into())));
        let cfg = resolve(&[
            "b",
            "run",
            "x.jsonl",
            "--provider",
            "openrouter",
            "--endpoint",
            "http://127.0.0.1:9/v1",
            "--title",
            "mine",
            "--model",
            "m",
        ])
        .unwrap();
        assert!(matches!(&cfg.endpoint, Endpoint::Url(u) if u == "http://127.0.0.1:9/v1"));
        assert!(cfg.headers.contains(&("X-Title".into(), "mine".into())));
        let cfg = resolve(&["b", "run", "x.jsonl", "--provider", "vllm", "--model", "m"]).unwrap();
        assert!(cfg.api_key.is_none());
        let e = resolve(&["b", "run", "x.jsonl", "--provider", "acme"])
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains("one of openrouter, aimlapi, openai, gemini, vllm"),
            "{e}"
        );
    }

    #[test]
    fn delimiters() {
        assert_eq!(delimiter(";").unwrap(), b';');
        assert_eq!(delimiter("\\t").unwrap(), b'\t');
        assert!(delimiter("ab").is_err());
    }
}
