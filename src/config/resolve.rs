//! Flags and a spec into a [`RunConfig`]: the half of the command line's layer that knows
//! both the flags' types ([`crate::cli`]) and the resolved ones. Each setting is taken from
//! the command line, then the spec, then the environment, then its default.

use super::*;
use crate::cli::{InputFormatArg, JobArgs, OutputFormat, RunArgs};
use crate::cost::PriceTable;
use crate::job::request::JobDefaults;
use crate::job::source::DEFAULT_MAX_LINE_BYTES;
use crate::job::{InputFormat, InputSpec, Template};
use crate::mock::MockConfig;
use crate::output::parquet::{self, ParquetOptions};
use crate::progress::ProgressMode;
use crate::provider::DEFAULT_MAX_RESPONSE_BYTES;
use crate::retry::Backoff;
use crate::run_files::RunFiles;
use crate::secret::ApiKey;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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
    let defaults = JobDefaults {
        model: match args.model.as_slice() {
            [] => spec.model.clone().or_else(|| env("BULKPROMPT_MODEL")),
            [one] => Some(one.clone()),
            many => {
                return Err(ConfigError::Invalid(format!(
                    "--model given {} times: a run sends jobs that name no model to one model (`bulkprompt estimate` compares several)",
                    many.len()
                )))
            }
        },
        system: args.system.clone().or_else(|| spec.system.clone()),
        template: resolve_template(args, spec)?,
        id_field: args.id_column.clone().or_else(|| spec.id_column.clone()),
        params: resolve_params(args, spec)?,
        image_columns: match args.image_columns.is_empty() {
            true => spec.image_columns.clone(),
            false => args.image_columns.clone(),
        },
        max_image_bytes: args
            .max_image_bytes
            .or(spec.max_image_bytes)
            .unwrap_or(crate::job::image::DEFAULT_MAX_BYTES),
        allow_constant: args.allow_constant_prompt,
        ..Default::default()
    };
    let (format, delimiter) = resolve_format(args, spec, &path)?;
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

/// The template: `--template`, `--template-file`, then the spec's.
fn resolve_template(args: &JobArgs, spec: &Spec) -> Result<Option<Template>, ConfigError> {
    let text = match (
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
    text.map(|t| Template::parse(&t).map_err(|e| ConfigError::Invalid(format!("--template: {e}"))))
        .transpose()
}

/// The request parameters every job gets: the spec's, `--temperature`, `--max-tokens`,
/// `--param KEY=JSON` (a bare word is a string), and `--json-schema` as a `response_format`.
fn resolve_params(args: &JobArgs, spec: &Spec) -> Result<Map<String, Value>, ConfigError> {
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
    Ok(params)
}

/// The job file's format (given, or by its extension) and a CSV's delimiter (a tab for
/// `.tsv`).
fn resolve_format(
    args: &JobArgs,
    spec: &Spec,
    path: &Path,
) -> Result<(InputFormat, u8), ConfigError> {
    let format = match (args.input_format, spec.input_format.as_deref()) {
        (Some(InputFormatArg::Csv), _) | (None, Some("csv")) => InputFormat::Csv,
        (Some(InputFormatArg::Jsonl), _) | (None, Some("jsonl")) => InputFormat::Jsonl,
        (Some(InputFormatArg::Parquet), _) | (None, Some("parquet")) => InputFormat::Parquet,
        (None, Some(other)) => {
            return Err(ConfigError::Invalid(format!(
                "input_format {other:?}: expected jsonl, csv or parquet"
            )))
        }
        (None, None) => InputFormat::from_path(path),
    };
    let is_tsv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("tsv"));
    let delimiter = match args.delimiter.as_deref().or(spec.delimiter.as_deref()) {
        Some(d) => delimiter(d)?,
        None if is_tsv => b'\t',
        None => b',',
    };
    Ok((format, delimiter))
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
    let (output, parquet) = resolve_output(args, &spec, &input)?;
    let provider = resolve_provider(args, &spec)?;
    let (endpoint, endpoint_text) = resolve_endpoint(args, &spec, provider)?;
    let api_key = resolve_key(args, &spec, provider, &endpoint)?;
    let headers = resolve_headers(args, &spec, provider)?;
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
        batch: resolve_batch(args, &spec, &endpoint_text)?,
        fallback_models: match args.fallback_models.is_empty() {
            true => spec.fallback_models.clone(),
            false => args.fallback_models.clone(),
        },
        circuit_breaker: args.circuit_breaker.or(spec.circuit_breaker).unwrap_or(20),
        limit: args.limit,
        max_cost: resolve_max_cost(args.max_cost.or(spec.max_cost))?,
        fresh: args.fresh,
        repair: args.repair,
        prune: args.prune,
        keep_response: args.keep_response || spec.keep_response.unwrap_or(false),
        keep_prompt: args.keep_prompt || spec.keep_prompt.unwrap_or(false),
        dedupe: resolve_dedupe(args.dedupe, spec.dedupe.as_ref())?,
        order_input: args.order == Some(crate::cli::OrderArg::Input),
        prices,
        progress: match (args.quiet, args.progress_log) {
            (true, _) => ProgressMode::Quiet,
            (false, true) => ProgressMode::Log,
            (false, false) => ProgressMode::Auto,
        },
        grace: secs(args.grace.or(spec.grace).unwrap_or(30.0), "--grace")?,
        argv: argv.to_vec(),
        parquet,
        reads: reads(args, &spec, prices_path),
        summary_json: args.summary_json.clone(),
        max_errors: 20,
        coordinator,
        metrics_addr: args.metrics_addr.as_deref().map(metrics_addr).transpose()?,
        input,
    })
}

/// Where the records go: the output (each shard its own), resolved through symlinks; for a
/// Parquet output, its journal and the file with its options.
fn resolve_output(
    args: &RunArgs,
    spec: &Spec,
    input: &InputSpec,
) -> Result<(PathBuf, Option<(PathBuf, ParquetOptions)>), ConfigError> {
    let output = output_path(args.output.as_ref(), spec, input);
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
    let is_parquet = match format {
        Some(f) => f == OutputFormat::Parquet,
        None => parquet::is_parquet(&output),
    };
    if !is_parquet {
        // Every name the run writes sits beside the file the output really is.
        return Ok((resolve_target(&output)?, None));
    }
    // Parquet output: the run writes (and resumes from) a JSONL journal beside it.
    let journal = resolve_target(RunFiles::of_parquet(&output).records())?;
    let options = ParquetOptions {
        content_json: args.content_json || spec.content_json.unwrap_or(false),
        parsed_columns: crate::answer::run_schema(&input.defaults.params)
            .map(crate::answer::typed_columns)
            .unwrap_or_default(),
    };
    Ok((journal, Some((resolve_target(&output)?, options))))
}

/// `--provider`: a preset of endpoint, key variable and pacing.
fn resolve_provider(
    args: &RunArgs,
    spec: &Spec,
) -> Result<Option<&'static crate::providers::Preset>, ConfigError> {
    let Some(name) = args.provider.as_deref().or(spec.provider.as_deref()) else {
        return Ok(None);
    };
    crate::providers::preset(name).map(Some).ok_or_else(|| {
        ConfigError::Invalid(format!(
            "--provider {name:?}: one of {}",
            crate::providers::names()
        ))
    })
}

/// Where requests go: a URL with its scheme, or the simulator (`mock`) with its settings.
/// Returns the endpoint and its text as given.
fn resolve_endpoint(
    args: &RunArgs,
    spec: &Spec,
    provider: Option<&crate::providers::Preset>,
) -> Result<(Endpoint, String), ConfigError> {
    let text = args
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
    if text != "mock" {
        if !text.contains("://") {
            return Err(ConfigError::Invalid(format!(
                "--endpoint {text:?}: no scheme; add https:// (https://{text}), or http:// for a server on this machine"
            )));
        }
        return Ok((Endpoint::Url(text.clone()), text));
    }
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
    let latency_ms = args
        .mock_latency_ms
        .or(ms.and_then(|m| m.latency_ms))
        .unwrap_or(200);
    let mock = MockConfig {
        latency: Duration::from_millis(latency_ms),
        seed: fastrand::u64(..),
        ..MockConfig::with_fault(crate::mock::Fault::ServerError, fail_rate)
    };
    Ok((Endpoint::Mock(Box::new(mock)), text))
}

/// The API key, read from the variable the flags, the spec, the environment or the preset
/// name. A variable named on the command line is meant: unset, it is an error wherever the
/// requests go (a key silently left out is a run of 401s, or of unpaced free requests).
fn resolve_key(
    args: &RunArgs,
    spec: &Spec,
    provider: Option<&crate::providers::Preset>,
    endpoint: &Endpoint,
) -> Result<Option<ApiKey>, ConfigError> {
    let key_var = args
        .api_key_env
        .clone()
        .or_else(|| spec.api_key_env.clone())
        .or_else(|| env("BULKPROMPT_API_KEY_ENV"))
        .or_else(|| provider.and_then(|p| p.key_env).map(String::from));
    let named = args.api_key_env.is_some();
    Ok(match (&key_var, endpoint) {
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
    })
}

/// Extra headers: the spec's, the attribution headers (`--referer`, `--title`; OpenRouter
/// shows requests by app, so this one is named unless the user did), `--header` and
/// `--header-env` (a value read from a variable, so it never shows on the command line).
fn resolve_headers(
    args: &RunArgs,
    spec: &Spec,
    provider: Option<&crate::providers::Preset>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut headers: Vec<(String, String)> = spec
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(r) = args.referer.clone().or_else(|| spec.referer.clone()) {
        headers.push(("HTTP-Referer".into(), r));
    }
    let title = args.title.clone().or_else(|| spec.title.clone());
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
    Ok(headers)
}

/// `--mode batch` and its settings (`None`: live). The batch flags need it.
fn resolve_batch(
    args: &RunArgs,
    spec: &Spec,
    endpoint_text: &str,
) -> Result<Option<crate::batch::BatchSettings>, ConfigError> {
    use crate::batch::{BatchApi, BatchSettings};
    use crate::cli::{BatchApiArg, ModeArg};
    let batch = match (args.mode, spec.mode.as_deref()) {
        (Some(ModeArg::Batch), _) | (None, Some("batch")) => true,
        (Some(ModeArg::Live), _) | (None, Some("live") | None) => false,
        (None, Some(other)) => {
            return Err(ConfigError::Invalid(format!(
                "mode {other:?}: expected live or batch"
            )))
        }
    };
    if !batch {
        if args.no_wait
            || args.poll_interval.is_some()
            || args.batch_api.is_some()
            || args.batch_fallback.is_some()
        {
            return Err(ConfigError::Invalid(
                "--no-wait, --poll-interval, --batch-api and --batch-fallback need --mode batch"
                    .into(),
            ));
        }
        return Ok(None);
    }
    let d = BatchSettings::default();
    let api = match args.batch_api {
        Some(BatchApiArg::Openrouter) => BatchApi::OpenRouter,
        Some(BatchApiArg::Openai) => BatchApi::OpenAi,
        None => BatchApi::for_endpoint(endpoint_text),
    };
    let most = match api {
        BatchApi::OpenAi => d.max_lines,
        BatchApi::OpenRouter => crate::batch::openai::INLINE_MAX,
    };
    let poll = args.poll_interval.or(spec.poll_interval).unwrap_or(30.0);
    Ok(Some(BatchSettings {
        api,
        poll: secs(poll.max(1.0), "--poll-interval")?,
        max_lines: args
            .batch_max_lines
            .or(spec.batch_max_lines)
            .unwrap_or(most)
            .clamp(1, most),
        no_wait: args.no_wait,
        fallback_live: args.batch_fallback.is_some(),
        ..d
    }))
}

/// `--dedupe[=always]`, or the spec's `dedupe = true | "always"`.
fn resolve_dedupe(
    flag: Option<crate::cli::DedupeArg>,
    spec: Option<&toml::Value>,
) -> Result<Option<crate::job::Dedupe>, ConfigError> {
    use crate::cli::DedupeArg;
    use crate::job::Dedupe;
    Ok(match (flag, spec) {
        (Some(DedupeArg::On), _) => Some(Dedupe::Deterministic),
        (Some(DedupeArg::Always), _) => Some(Dedupe::Always),
        (None, None) => None,
        (None, Some(toml::Value::Boolean(b))) => b.then_some(Dedupe::Deterministic),
        (None, Some(toml::Value::String(s))) if s == "always" => Some(Dedupe::Always),
        (None, Some(other)) => {
            return Err(ConfigError::Invalid(format!(
                "dedupe = {other:?}: expected true, false or \"always\""
            )))
        }
    })
}

/// `--max-cost USD`: a dollar amount.
fn resolve_max_cost(usd: Option<f64>) -> Result<Option<crate::cost::Money>, ConfigError> {
    match usd {
        Some(usd) if usd.is_finite() && usd >= 0.0 => Ok(Some(crate::cost::Money::from_usd(usd))),
        Some(usd) => Err(ConfigError::Invalid(format!(
            "--max-cost {usd}: expected a dollar amount"
        ))),
        None => Ok(None),
    }
}

/// Files the run reads besides the job file (spec, template, schema, prices): never written.
fn reads(args: &RunArgs, spec: &Spec, prices: Option<PathBuf>) -> Vec<PathBuf> {
    [
        args.job.spec.clone(),
        args.job.template_file.clone(),
        spec.template_file.clone(),
        args.job.json_schema.clone(),
        spec.json_schema.clone(),
        prices,
    ]
    .into_iter()
    .flatten()
    .collect()
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
