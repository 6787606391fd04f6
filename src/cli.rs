//! The command line, as clap sees it. These structs mirror the flags and validate only their
//! shapes; `config` resolves them (with the job spec, environment and defaults) into the
//! `RunConfig` the rest of the code sees.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "bulkprompt",
    version = crate::version::VERSION,
    about = "Run bulk LLM prompts against OpenAI-compatible endpoints: rate-limited, retried, resumable, costed."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// More log detail (-v debug, -vv trace).
    #[arg(help_heading = "Logs", short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log format on stderr.
    #[arg(help_heading = "Logs", long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a job file and write one result record per job (resumes an existing output).
    Run(Box<RunArgs>),
    /// Read the whole job file and report every problem; sends nothing.
    Validate(ValidateArgs),
    /// Count jobs and prompt tokens and price them per model; sends nothing.
    Estimate(Box<EstimateArgs>),
    /// How an output stands against its job file: done, failed, changed, pending, spend.
    Status(StatusArgs),
    /// Start the offline simulator of an OpenAI-compatible provider.
    ServeMock(ServeMockArgs),
    /// Print the effective price table.
    Prices(PricesArgs),
    /// Convert a JSONL output to Parquet (one row per id).
    Export(ExportArgs),
    /// List the provider presets (`--provider`).
    Providers,
    /// List an output's batches (batch mode) and their states; --cancel the open ones.
    Batches(BatchesArgs),
    /// Combine shard outputs into one, one record per id.
    Merge(MergeArgs),
    /// Write an output's run report: one self-contained HTML page of charts and tables.
    Report(ReportArgs),
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The output of a run (JSONL, or a Parquet output).
    pub output: PathBuf,
    /// The HTML file to write [default: OUT.report.html beside the output].
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// A run's --summary-json, for that run's own figures (wall time, requests a second).
    #[arg(long, value_name = "FILE")]
    pub summary: Option<PathBuf>,
}

/// How to read the job file (shared by run and validate).
#[derive(Debug, Clone, Args, Default)]
pub struct JobArgs {
    /// Job file: JSONL (one request or record a line) or CSV (with --template).
    pub input: Option<PathBuf>,
    /// Job spec (TOML) holding any of these settings; flags override it.
    #[arg(short = 'c', long = "config", value_name = "SPEC")]
    pub spec: Option<PathBuf>,
    /// Model for jobs that name none (`estimate`: give it several times to compare models).
    #[arg(long, action = clap::ArgAction::Append)]
    pub model: Vec<String>,
    /// Prompt template with {column} placeholders, for CSV rows and plain JSONL records.
    #[arg(long, conflicts_with = "template_file")]
    pub template: Option<String>,
    /// Read the template from a file.
    #[arg(long, value_name = "FILE")]
    pub template_file: Option<PathBuf>,
    /// Accept a job file whose jobs all send the same request (a template with no
    /// placeholder is otherwise refused: the same paid prompt, once a row).
    #[arg(long)]
    pub allow_constant_prompt: bool,
    /// System prompt, prepended to jobs without a system message.
    #[arg(long)]
    pub system: Option<String>,
    /// Field or CSV column holding the job id (default: id, else the row number).
    #[arg(long)]
    pub id_column: Option<String>,
    /// Input format (default: by extension; .csv/.tsv are CSV).
    #[arg(long, value_enum)]
    pub input_format: Option<InputFormatArg>,
    /// CSV delimiter (one character; `\t` for tab).
    #[arg(long)]
    pub delimiter: Option<String>,
    /// max_tokens for jobs that set none.
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// temperature for jobs that set none.
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Extra request parameter for jobs that set none, as KEY=JSON (repeatable), e.g.
    /// --param 'response_format={"type":"json_object"}'.
    #[arg(long = "param", value_name = "KEY=JSON")]
    pub params: Vec<String>,
    /// JSON Schema every answer must match: sent as a strict `json_schema` response_format to
    /// jobs without one, each answer validated into the record's `parsed`.
    #[arg(long, value_name = "FILE")]
    pub json_schema: Option<PathBuf>,
    /// Column (CSV) or field (plain JSONL record) holding an image: an http(s) or data: URL,
    /// or a PNG, JPEG, GIF or WebP file relative to the job file's folder (repeatable).
    #[arg(long = "image-column", value_name = "COL")]
    pub image_columns: Vec<String>,
    /// Largest image file accepted, in bytes [default: 20 MiB].
    #[arg(long, value_name = "BYTES")]
    pub max_image_bytes: Option<u64>,
    /// The schema's name sent to the provider [default: the schema file's name].
    #[arg(long, value_name = "NAME", requires = "json_schema")]
    pub schema_name: Option<String>,
    /// Run only shard I of N: the jobs whose id hashes there (XXH3-64 of the id, mod N); the
    /// output gets `.shard-I-of-N` (or replaces `{shard}` in -o). Without it, the shard comes
    /// from JOB_COMPLETION_INDEX (with --shards) or SLURM_ARRAY_TASK_ID/_COUNT when set.
    #[arg(help_heading = "Many workers", long, value_name = "I/N")]
    pub shard: Option<String>,
    /// The number of shards, for a Kubernetes Indexed Job (JOB_COMPLETION_INDEX gives I).
    #[arg(help_heading = "Many workers", long, value_name = "N")]
    pub shards: Option<u32>,
    /// Longest input line accepted, in bytes.
    #[arg(long)]
    pub max_line_bytes: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OrderArg {
    Completion,
    Input,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Parquet,
    Csv,
    OpenaiBatch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    Live,
    Batch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BatchApiArg {
    Openai,
    Openrouter,
}

/// `--dedupe`: for deterministic requests, or for every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DedupeArg {
    /// Requests that ask for the same answer every time (temperature 0, or a seed).
    On,
    /// Every request, samples included.
    Always,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Jsonl,
    Parquet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InputFormatArg {
    Jsonl,
    Csv,
    Parquet,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten, next_help_heading = "Input")]
    pub job: JobArgs,
    /// Output file: JSONL, or Parquet by a .parquet extension. Default: the input's name with
    /// .results.jsonl.
    #[arg(help_heading = "Output", short, long)]
    pub output: Option<PathBuf>,
    /// Output format, when the extension does not say.
    #[arg(help_heading = "Output", long, value_enum)]
    pub format: Option<OutputFormat>,
    /// Parquet: add content_json (the content parsed as JSON) and content_json_ok columns.
    #[arg(help_heading = "Output", long)]
    pub content_json: bool,
    /// Base URL of an OpenAI-compatible API (…/v1), or `mock` for the in-process simulator.
    #[arg(help_heading = "Provider", long)]
    pub endpoint: Option<String>,
    /// A provider preset: its base URL, key variable and attribution headers
    /// (openrouter, aimlapi, openai, gemini, vllm; `bulkprompt providers` lists them).
    #[arg(help_heading = "Provider", long)]
    pub provider: Option<String>,
    /// Environment variable holding the API key (the key itself is never a flag).
    #[arg(help_heading = "Provider", long, value_name = "VAR")]
    pub api_key_env: Option<String>,
    /// Extra request header, "Name: value" (repeatable). Values of headers named like a
    /// credential (Authorization, x-api-key, ...key/token/secret...) are redacted wherever the
    /// command line is shown or stored; prefer --header-env for them.
    #[arg(help_heading = "Provider", long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Extra request header whose value is read from an environment variable, "Name: VAR"
    /// (repeatable), e.g. --header-env "x-api-key: AZURE_KEY".
    #[arg(
        help_heading = "Provider",
        long = "header-env",
        value_name = "NAME: VAR"
    )]
    pub header_envs: Vec<String>,
    /// OpenRouter attribution: HTTP-Referer header.
    #[arg(help_heading = "Provider", long)]
    pub referer: Option<String>,
    /// OpenRouter attribution: X-Title header.
    #[arg(help_heading = "Provider", long)]
    pub title: Option<String>,
    /// Requests per minute (token bucket; a sliding minute never sees more) [default:
    /// unlimited, or what the provider advertises or its 429s show].
    #[arg(help_heading = "Limits", long)]
    pub rpm: Option<u64>,
    /// Tokens per minute (prompt estimate + max output, reconciled with real usage) [default:
    /// unlimited, or what the provider advertises].
    #[arg(help_heading = "Limits", long)]
    pub tpm: Option<u64>,
    /// Do not pace to the x-ratelimit-* headers the provider sends (limits, remaining, reset);
    /// Retry-After and 429s are still honoured.
    #[arg(help_heading = "Limits", long)]
    pub ignore_limit_headers: bool,
    /// Requests in flight at once [default: 64].
    #[arg(help_heading = "Limits", long)]
    pub concurrency: Option<usize>,
    /// Keep --concurrency requests in flight whatever the server's latency says (by default
    /// the run lowers it to what a queueing server serves at once; --concurrency is the
    /// ceiling).
    #[arg(help_heading = "Limits", long)]
    pub fixed_concurrency: bool,
    /// HTTP attempts per job before it is recorded as failed [default: 6].
    #[arg(help_heading = "Limits", long)]
    pub max_attempts: Option<u32>,
    /// Per-request timeout in seconds [default: 120].
    #[arg(help_heading = "Limits", long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// First retry's backoff ceiling in milliseconds; doubles each retry up to 60 s [default: 500].
    #[arg(help_heading = "Limits", long, value_name = "MS")]
    pub retry_base_ms: Option<u64>,
    /// Output tokens the limiter reserves for jobs without max_tokens [default: 1024].
    #[arg(help_heading = "Limits", long)]
    pub reserve_output_tokens: Option<u64>,
    /// Hard cap in US dollars on the cost recorded in the output, over all runs; dispatch stops
    /// before a job that could cross it (exit 3).
    #[arg(help_heading = "Money", long, value_name = "USD")]
    pub max_cost: Option<f64>,
    /// Send each distinct request once (the same model, messages and parameters after
    /// templating): every other id with that request gets a copy of its answer (`dedup_of`,
    /// cost 0), also from answers already in the output. Jobs sampling at a temperature above
    /// 0 without a seed are meant to differ and are left alone unless `--dedupe=always`.
    #[arg(help_heading = "Money", long, value_enum, num_args = 0..=1, require_equals = true,
          default_missing_value = "on", value_name = "WHEN")]
    pub dedupe: Option<DedupeArg>,
    /// Share --rpm, --tpm and --max-cost with every worker of the same --run-name through
    /// Redis: `redis://[:PASSWORD@]HOST:PORT[/DB]`, or `rediss://` for TLS [default: the
    /// environment's BULKPROMPT_COORDINATOR, the way to keep a password off the command line].
    #[arg(help_heading = "Many workers", long, value_name = "URL")]
    pub coordinator: Option<String>,
    /// The name workers sharing limits and budget have in common (the Redis key prefix).
    #[arg(help_heading = "Many workers", long, value_name = "NAME")]
    pub run_name: Option<String>,
    /// Seconds Redis may be out of reach before the run stops (exit 4); dispatch waits
    /// meanwhile [default: 60].
    #[arg(help_heading = "Many workers", long, value_name = "SECS")]
    pub coordinator_timeout: Option<f64>,
    /// Stop the run (exit 4) after this many jobs in a row fail with the same kind of error,
    /// retries exhausted; 0 never stops [default: 20].
    #[arg(help_heading = "Limits", long, value_name = "N")]
    pub circuit_breaker: Option<u32>,
    /// Send at most N jobs this run (try a sample first; re-run without it for the rest).
    #[arg(help_heading = "Behaviour", long, value_name = "N")]
    pub limit: Option<u64>,
    /// Also retry jobs whose earlier record is a permanent failure (400, 404, 413, 422).
    #[arg(help_heading = "Behaviour", long)]
    pub retry_failed: bool,
    /// Times a job whose answer does not match its schema (or is not the JSON object asked
    /// for) is asked again; each invalid answer is paid for [default: 1].
    #[arg(help_heading = "Limits", long, value_name = "N")]
    pub retry_invalid: Option<u32>,
    /// live: one request per job; batch: the provider's batch API at about half the price,
    /// answers within 24 h [default: live].
    #[arg(help_heading = "Batch mode", long, value_enum)]
    pub mode: Option<ModeArg>,
    /// Batch mode: submit the batches and exit 6; re-run the same command to collect.
    #[arg(help_heading = "Batch mode", long)]
    pub no_wait: bool,
    /// Batch mode: seconds between polls of open batches [default: 30; at least 1].
    #[arg(help_heading = "Batch mode", long, value_name = "SECS")]
    pub poll_interval: Option<f64>,
    /// Batch mode: the batch protocol [default: openai].
    #[arg(help_heading = "Batch mode", long, value_enum)]
    pub batch_api: Option<BatchApiArg>,
    /// Batch mode: send what an expired or failed batch left unanswered live instead of in a
    /// new batch.
    #[arg(help_heading = "Batch mode", long, value_name = "live", value_parser = ["live"])]
    pub batch_fallback: Option<String>,
    /// Batch mode: most lines in one batch [default: 50000].
    #[arg(help_heading = "Batch mode", long, value_name = "N")]
    pub batch_max_lines: Option<usize>,
    /// Model to try when the provider says a job's model does not exist or is not available
    /// (404; a 400/422 about the model; 503 after the retries). Repeatable, tried in order.
    #[arg(
        help_heading = "Provider",
        long = "fallback-model",
        value_name = "MODEL"
    )]
    pub fallback_models: Vec<String>,
    /// Start over: truncate the output instead of resuming it.
    #[arg(help_heading = "Output", long)]
    pub fresh: bool,
    /// Move output lines that are not readable records to OUT.quarantine.jsonl and resume with
    /// the rest (only those jobs run again), instead of refusing the output.
    #[arg(help_heading = "Output", long)]
    pub repair: bool,
    /// Drop records of ids that are no longer in the job file.
    #[arg(help_heading = "Output", long)]
    pub prune: bool,
    /// Keep the provider's full response body in each record (`response`).
    #[arg(help_heading = "Output", long)]
    pub keep_response: bool,
    /// Keep the messages sent in each record (`prompt`), for audits of labels.
    #[arg(help_heading = "Output", long)]
    pub keep_prompt: bool,
    /// Order of the records once the run ends: completion (as they came) or input (the job
    /// file's order, rewritten at the end) [default: completion].
    #[arg(help_heading = "Output", long, value_enum)]
    pub order: Option<OrderArg>,
    /// Allow sending the API key over plain http to a non-loopback host.
    #[arg(help_heading = "Provider", long)]
    pub allow_insecure_http: bool,
    /// Price table overrides (TOML, same layout as the embedded table).
    #[arg(help_heading = "Money", long, value_name = "FILE")]
    pub prices: Option<PathBuf>,
    /// Largest response body accepted, in bytes [default: 16 MiB].
    #[arg(help_heading = "Provider", long)]
    pub max_response_bytes: Option<usize>,
    /// Seconds to let in-flight calls finish after Ctrl-C / SIGTERM [default: 30].
    #[arg(help_heading = "Behaviour", long, value_name = "SECS")]
    pub grace: Option<f64>,
    /// Write the end-of-run summary as JSON to this file.
    #[arg(help_heading = "Output", long, value_name = "FILE")]
    pub summary_json: Option<PathBuf>,
    /// When the run ends, write its report (HTML) to OUT.report.html beside the output.
    #[arg(help_heading = "Output", long)]
    pub report: bool,
    /// Serve the run's counters in Prometheus's format at http://ADDR/metrics while it goes,
    /// e.g. 127.0.0.1:9464 or localhost:9464 (0.0.0.0:9464 in a container).
    #[arg(help_heading = "Output", long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
    /// No progress display, warnings and the summary only.
    #[arg(help_heading = "Behaviour", short, long)]
    pub quiet: bool,
    /// Progress as log lines every 10 s even on a terminal.
    #[arg(help_heading = "Behaviour", long)]
    pub progress_log: bool,
    /// With --endpoint mock: the simulator's mean latency [default: 200].
    #[arg(help_heading = "Behaviour", long, value_name = "MS")]
    pub mock_latency_ms: Option<u64>,
    /// With --endpoint mock: share of requests the simulator fails with 5xx.
    #[arg(help_heading = "Behaviour", long, value_name = "RATE")]
    pub mock_fail_rate: Option<f64>,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// Problems to list at most.
    #[arg(long, default_value_t = 100)]
    pub max_errors: usize,
}

/// `estimate` takes every `run` flag (so a run command becomes an estimate by its verb alone):
/// `-o` is the earlier output whose median answer is the typical case, `--rpm`, `--tpm` and
/// `--concurrency` shape the time, `--mode batch` prices at batch prices, and the provider
/// flags are where `--calibrate` asks.
#[derive(Debug, Args)]
pub struct EstimateArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Typical answer length in tokens (overrides the earlier output's median).
    #[arg(help_heading = "Estimate", long)]
    pub assume_output_tokens: Option<u64>,
    /// Send N of the jobs to the endpoint with max_tokens 1 (their cost is shown, within
    /// --max-cost) and scale every model's prompt tokens by what the provider counted for them
    /// against the local count: chat templates and system prompts a server adds are counted.
    #[arg(help_heading = "Estimate", long, value_name = "N")]
    pub calibrate: Option<usize>,
    /// Print as JSON.
    #[arg(help_heading = "Estimate", long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A JSONL output of a run.
    pub input: PathBuf,
    /// The file to write.
    #[arg(short, long)]
    pub output: PathBuf,
    /// parquet, csv (a spreadsheet), or openai-batch (OpenAI Batch API output lines)
    /// [default: by the file's extension: .parquet, .csv].
    #[arg(long, value_enum)]
    pub format: Option<ExportFormat>,
    /// Add content_json (the content parsed as JSON) and content_json_ok columns.
    #[arg(long)]
    pub content_json: bool,
    /// Typed `parsed_<property>` columns from this JSON Schema [default: the run's own
    /// --json-schema, from the output's meta].
    #[arg(long, value_name = "FILE")]
    pub json_schema: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Shard outputs (JSONL, or the Parquet outputs' journals), in order: for an id in
    /// several, the last one given wins.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// The merged output: JSONL, or Parquet by a .parquet name.
    #[arg(short, long)]
    pub output: PathBuf,
    /// The job file: say which ids (and shards) have no record yet.
    #[arg(long, value_name = "FILE")]
    pub jobs: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BatchesArgs {
    /// The output of a batch-mode run.
    pub output: PathBuf,
    /// Ask the provider for each open batch's state (needs the endpoint and key).
    #[arg(long)]
    pub check: bool,
    /// Cancel every open batch; the next run collects their partial results.
    #[arg(long)]
    pub cancel: bool,
    /// Base URL of the provider (as for `run`).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// A provider preset (as for `run`).
    #[arg(long)]
    pub provider: Option<String>,
    /// Environment variable holding the key (as for `run`).
    #[arg(long, value_name = "VAR")]
    pub api_key_env: Option<String>,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The output of a run (several: each in turn, e.g. every shard's).
    #[arg(required = true)]
    pub outputs: Vec<PathBuf>,
    /// Exit 2 unless every job of the job file has an ok record (and no batch is open).
    #[arg(long)]
    pub check: bool,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ServeMockArgs {
    /// Port on 127.0.0.1 (0 picks a free one; the URL is printed on stdout).
    #[arg(help_heading = "Server", long, default_value_t = 8080)]
    pub port: u16,
    /// Address to bind.
    #[arg(help_heading = "Server", long, default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// Mean latency of an answer, in ms (each within ±25%).
    #[arg(help_heading = "Answers", long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Share of requests answered 500/502/503.
    #[arg(help_heading = "Faults", long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Share of requests accepted and never answered.
    #[arg(help_heading = "Faults", long, default_value_t = 0.0)]
    pub hang_rate: f64,
    /// Inject a fault at a rate, KIND=RATE (repeatable): server-error, hang, close, garbage,
    /// error-200, truncated, slow-body, 429, 429-date, content-filter, tool-calls, echo-key,
    /// off-schema (an answer that breaks the request's schema), fenced (JSON in a markdown
    /// fence), or all.
    #[arg(help_heading = "Faults", long = "fault", value_name = "KIND=RATE")]
    pub faults: Vec<String>,
    /// Periodic outages, EVERY:LASTS in seconds (e.g. 60:20): all requests get 503 meanwhile.
    #[arg(help_heading = "Faults", long, value_name = "EVERY:LASTS")]
    pub storm: Option<String>,
    /// Requests per sliding minute before 429.
    #[arg(help_heading = "Limits", long)]
    pub rpm: Option<u64>,
    /// Tokens per sliding minute before 429.
    #[arg(help_heading = "Limits", long)]
    pub tpm: Option<u64>,
    /// The window --rpm and --tpm count over, in seconds (shorter than a minute for quick tests).
    #[arg(help_heading = "Limits", long, default_value_t = 60.0)]
    pub window_secs: f64,
    /// Seed for fault injection and latency jitter.
    #[arg(help_heading = "Answers", long, default_value_t = 0)]
    pub seed: u64,
    /// Whose manners: error shapes, rate-limit headers and what an exhausted account says
    /// (openai, openrouter, gemini, aiml).
    #[arg(help_heading = "Answers", long, default_value = "openai")]
    pub dialect: String,
    /// Requests a minute to advertise in `x-ratelimit-limit-requests` on every answer.
    #[arg(help_heading = "Limits", long, value_name = "N")]
    pub advertise_rpm: Option<u64>,
    /// After this many answered requests the account is exhausted and every request is refused
    /// as the dialect does it (429 insufficient_quota, 402, a per-day quota, 403).
    #[arg(help_heading = "Limits", long, value_name = "N")]
    pub quota_after: Option<u64>,
    /// Answer 404 for models the simulator's price table does not know.
    #[arg(help_heading = "Answers", long)]
    pub refuse_unknown_models: bool,
    /// Batch API: a batch ends this long after it is created.
    #[arg(
        help_heading = "Batch API",
        long,
        value_name = "MS",
        default_value_t = 2000
    )]
    pub batch_delay_ms: u64,
    /// Batch API: every call takes this long.
    #[arg(
        help_heading = "Batch API",
        long,
        value_name = "MS",
        default_value_t = 0
    )]
    pub batch_latency_ms: u64,
    /// Batch API: share of lines that fail with a 500.
    #[arg(
        help_heading = "Batch API",
        long,
        value_name = "RATE",
        default_value_t = 0.0
    )]
    pub batch_fail_rate: f64,
    /// Batch API: share of batches that expire with half their lines answered.
    #[arg(
        help_heading = "Batch API",
        long,
        value_name = "RATE",
        default_value_t = 0.0
    )]
    pub batch_expire_rate: f64,
    /// Serve N requests at once, like a self-hosted server's slots; the rest wait in line.
    #[arg(help_heading = "Answers", long, value_name = "N")]
    pub slots: Option<usize>,
    /// Batch API: the first N uploads and creations take effect, then answer 502 (their
    /// answer lost on the wire).
    #[arg(
        help_heading = "Batch API",
        long,
        value_name = "N",
        default_value_t = 0
    )]
    pub batch_lose_answers: u32,
    /// Require `Authorization: Bearer <key>` with the key from this environment variable.
    #[arg(help_heading = "Server", long, value_name = "VAR")]
    pub require_key_env: Option<String>,
    /// Worker threads (default: one per core).
    #[arg(help_heading = "Server", long)]
    pub threads: Option<usize>,
}

#[derive(Debug, Args)]
pub struct PricesArgs {
    /// Price table overrides (TOML) [default: ~/.config/bulkprompt/prices.toml if present].
    #[arg(long, value_name = "FILE")]
    pub prices: Option<PathBuf>,
    /// Read prices from an OpenRouter-style model list (a base URL such as
    /// `https://openrouter.ai/api/v1`, or its /models) and write them to the user's price file.
    #[arg(long, value_name = "URL")]
    pub sync: Option<String>,
    /// With --sync: the file to write [default: ~/.config/bulkprompt/prices.toml].
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}
