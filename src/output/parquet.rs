//! Parquet output. Parquet files cannot be appended to, so a run writes its append-only JSONL
//! journal (`.bulkprompt/OUT.parquet.journal.jsonl`, the checkpoint, with every guarantee of JSONL output)
//! and converts it at the end: streaming, in batches of 8,192 rows and row groups of at most
//! 65,536, zstd-compressed, into a temporary file that is renamed over the target, so a reader
//! never sees a half-written file.
//!
//! Columns have real types: strings, int64 token counts, float64 cost, timestamps in UTC. The
//! `error` object becomes `error_kind`, `error_http_status`, `error_message`; each `metadata`
//! key becomes a `meta_<key>` string column (CSV columns and JSONL metadata), so results join
//! back to the input in one line of SQL; `metadata` itself is kept as JSON text. With
//! `content_json`, two more columns hold the content parsed as JSON and whether it parsed.

use super::latest::{add_carried, Latest};
use super::Record;
use crate::answer::ColumnType;
use crate::job::source::{LineReader, RawLine};
use crate::job::IdKey;
use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use std::collections::BTreeSet;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const BATCH_ROWS: usize = 8192;
const ROW_GROUP_ROWS: usize = 65_536;

/// How to write the Parquet file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParquetOptions {
    /// Add `content_json` (the content parsed as JSON, re-serialized) and `content_json_ok`.
    pub content_json: bool,
    /// One typed `parsed_<property>` column each, from the run's answer schema.
    pub parsed_columns: Vec<(String, ColumnType)>,
}

/// Columns written only when some record has the field.
#[derive(Debug, Clone, Copy, Default)]
struct Present {
    response: bool,
    parsed: bool,
    tool_calls: bool,
    choices: bool,
    fallback_model: bool,
    stale: bool,
    dedup_of: bool,
    retries: bool,
    /// `billed_output_tokens` and `usage_rule`.
    billing: bool,
    upstream: bool,
}

/// Problems converting to Parquet.
#[derive(Debug, thiserror::Error)]
pub enum ParquetError {
    /// The journal could not be read.
    #[error("{path}: {source}")]
    Journal {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A line of the journal is not a record.
    #[error("{path}:{line}: not a bulkprompt record: {message}")]
    Record {
        path: PathBuf,
        line: u64,
        message: String,
    },
    /// The Parquet file could not be written.
    #[error("writing {path}: {message}")]
    Write { path: PathBuf, message: String },
}

/// Whether a path names Parquet output.
pub use crate::run_files::is_parquet;

/// What a conversion wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Converted {
    pub rows: u64,
    /// Lines skipped because a later line has the same id.
    pub superseded: u64,
}

/// Calls `f` with each non-blank line of `path` and its number.
pub(crate) fn for_each_line(
    path: &Path,
    mut f: impl FnMut(u64, &[u8]) -> Result<(), ParquetError>,
) -> Result<(), ParquetError> {
    let io = |source| ParquetError::Journal {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let mut lines = LineReader::new(BufReader::with_capacity(1 << 20, file), usize::MAX);
    while let Some(raw) = lines.next_line().map_err(io)? {
        if let RawLine::Line { line } = raw {
            if !lines.bytes().is_empty() {
                f(line, lines.bytes())?;
            }
        }
    }
    Ok(())
}

/// What pass 1 learns: each id's last line, the metadata keys (they become columns), which
/// optional columns some record fills.
struct Survey {
    last: Latest,
    meta_keys: Vec<String>,
    present: Present,
}

/// Pass 1 over `jsonl`, reading only each record's head.
fn survey(jsonl: &Path) -> Result<Survey, ParquetError> {
    use serde::de::IgnoredAny;
    #[derive(serde::Deserialize)]
    struct Head {
        id: String,
        metadata: serde_json::Map<String, serde_json::Value>,
        #[serde(default)]
        response: Option<IgnoredAny>,
        #[serde(default)]
        parsed: Option<IgnoredAny>,
        #[serde(default)]
        tool_calls: Option<IgnoredAny>,
        #[serde(default)]
        choices: Option<IgnoredAny>,
        #[serde(default)]
        fallback_model: Option<IgnoredAny>,
        #[serde(default)]
        stale: Option<IgnoredAny>,
        #[serde(default)]
        usage_rule: Option<IgnoredAny>,
        #[serde(default)]
        dedup_of: Option<IgnoredAny>,
        #[serde(default)]
        retries: Option<IgnoredAny>,
        #[serde(default)]
        upstream_cost_usd: Option<IgnoredAny>,
        #[serde(default)]
        cost_usd: Option<f64>,
    }
    let mut last = Latest::with_capacity(crate::job::keys::estimate_lines(jsonl));
    let mut meta_keys = BTreeSet::new();
    let mut p = Present::default();
    for_each_line(jsonl, |line, bytes| {
        let h: Head = serde_json::from_slice(bytes).map_err(|e| bad_record(jsonl, line, e))?;
        last.push(IdKey::of(h.id.as_bytes()), line, h.cost_usd);
        meta_keys.extend(h.metadata.into_iter().map(|(key, _)| key));
        p.response |= h.response.is_some();
        p.parsed |= h.parsed.is_some();
        p.tool_calls |= h.tool_calls.is_some();
        p.choices |= h.choices.is_some();
        p.fallback_model |= h.fallback_model.is_some();
        p.stale |= h.stale.is_some();
        p.billing |= h.usage_rule.is_some();
        p.dedup_of |= h.dedup_of.is_some();
        p.retries |= h.retries.is_some();
        p.upstream |= h.upstream_cost_usd.is_some();
        Ok(())
    })?;
    last.seal();
    Ok(Survey {
        last,
        meta_keys: meta_keys.into_iter().collect(),
        present: p,
    })
}

fn bad_record(jsonl: &Path, line: u64, e: serde_json::Error) -> ParquetError {
    ParquetError::Record {
        path: jsonl.to_path_buf(),
        line,
        message: e.to_string(),
    }
}

/// Converts a JSONL output (or journal) into a Parquet file, one row per id (the last record).
pub fn convert(
    jsonl: &Path,
    parquet: &Path,
    options: ParquetOptions,
) -> Result<Converted, ParquetError> {
    let Survey {
        last,
        meta_keys,
        mut present,
    } = survey(jsonl)?;
    present.parsed |= !options.parsed_columns.is_empty();
    let schema = Arc::new(schema(&meta_keys, present, &options));

    // Pass 2: stream the records into batches.
    // Removed on every failure path (a full disk): a leftover would keep the disk full.
    let tmp = crate::paths::TempFile::new(crate::run_files::parquet_temp(parquet));
    let werr = |m: String| ParquetError::Write {
        path: parquet.to_path_buf(),
        message: m,
    };
    let out = File::create(tmp.path()).map_err(|e| werr(e.to_string()))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by(concat!("bulkprompt ", env!("CARGO_PKG_VERSION")).to_string())
        .build();
    let mut writer =
        ArrowWriter::try_new(out, schema.clone(), Some(props)).map_err(|e| werr(e.to_string()))?;
    let mut cols = Columns::new(&meta_keys, present, &options);
    let mut converted = Converted {
        rows: 0,
        superseded: 0,
    };
    for_each_line(jsonl, |line, bytes| {
        let mut r: Record =
            serde_json::from_slice(bytes).map_err(|e| bad_record(jsonl, line, e))?;
        if !last.is_last(&IdKey::of(r.id.as_bytes()), line) {
            converted.superseded += 1;
            return Ok(());
        }
        // What superseded records of the id cost was paid too (see checkpoint::latest).
        if let Some(c) = last.carried(line) {
            r.cost_usd = Some(add_carried(r.cost_usd, c));
        }
        cols.push(&r);
        converted.rows += 1;
        if cols.len == BATCH_ROWS {
            let batch = cols.finish(&schema).map_err(werr)?;
            writer.write(&batch).map_err(|e| werr(e.to_string()))?;
        }
        Ok(())
    })?;
    if cols.len > 0 {
        let batch = cols.finish(&schema).map_err(werr)?;
        writer.write(&batch).map_err(|e| werr(e.to_string()))?;
    }
    let file = writer.into_inner().map_err(|e| werr(e.to_string()))?;
    tmp.persist(file, parquet)
        .map_err(|e| werr(e.to_string()))?;
    Ok(converted)
}

/// The column names and types.
fn schema(meta_keys: &[String], present: Present, options: &ParquetOptions) -> Schema {
    let utc = || DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    let mut fields = vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("index", DataType::Int64, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("model", DataType::Utf8, false),
        Field::new("response_model", DataType::Utf8, true),
        Field::new("content", DataType::Utf8, true),
        Field::new("finish_reason", DataType::Utf8, true),
    ];
    for (on, name) in [
        (present.parsed, "parsed"),
        (present.tool_calls, "tool_calls"),
        (present.choices, "choices"),
        (present.fallback_model, "fallback_model"),
        (present.stale, "stale"),
        (present.dedup_of, "dedup_of"),
        (present.retries, "retries"),
        (present.response, "response"),
    ] {
        if on {
            fields.push(Field::new(name, DataType::Utf8, true));
        }
    }
    for name in [
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cached_tokens",
        "reasoning_tokens",
    ] {
        fields.push(Field::new(name, DataType::Int64, true));
    }
    if present.billing {
        fields.push(Field::new("billed_output_tokens", DataType::Int64, true));
        fields.push(Field::new("usage_rule", DataType::Utf8, true));
    }
    fields.extend([
        Field::new("cost_usd", DataType::Float64, true),
        Field::new("cost_source", DataType::Utf8, true),
    ]);
    if present.upstream {
        fields.push(Field::new("upstream_cost_usd", DataType::Float64, true));
    }
    fields.extend([
        Field::new("latency_ms", DataType::Int64, false),
        Field::new("attempts", DataType::Int64, false),
        Field::new("error_kind", DataType::Utf8, true),
        Field::new("error_http_status", DataType::Int32, true),
        Field::new("error_message", DataType::Utf8, true),
        Field::new("started_at", utc(), false),
        Field::new("finished_at", utc(), false),
        Field::new("fingerprint", DataType::Utf8, false),
        Field::new("metadata", DataType::Utf8, false),
    ]);
    if options.content_json {
        fields.push(Field::new("content_json", DataType::Utf8, true));
        fields.push(Field::new("content_json_ok", DataType::Boolean, true));
    }
    for (name, ty) in &options.parsed_columns {
        let dt = match ty {
            ColumnType::Utf8 | ColumnType::Json => DataType::Utf8,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::Boolean => DataType::Boolean,
        };
        fields.push(Field::new(format!("parsed_{name}"), dt, true));
    }
    for k in meta_keys {
        fields.push(Field::new(format!("meta_{k}"), DataType::Utf8, true));
    }
    Schema::new(fields)
}

/// Column builders for one batch.
/// A `parsed_<property>` column's builder.
enum Typed {
    Utf8(StringBuilder),
    Json(StringBuilder),
    Int64(Int64Builder),
    Float64(Float64Builder),
    Boolean(BooleanBuilder),
}

impl Typed {
    fn new(ty: ColumnType) -> Self {
        match ty {
            ColumnType::Utf8 => Typed::Utf8(StringBuilder::new()),
            ColumnType::Json => Typed::Json(StringBuilder::new()),
            ColumnType::Int64 => Typed::Int64(Int64Builder::new()),
            ColumnType::Float64 => Typed::Float64(Float64Builder::new()),
            ColumnType::Boolean => Typed::Boolean(BooleanBuilder::new()),
        }
    }

    /// Appends `v` (null when absent or of another type than the schema says).
    fn push(&mut self, v: Option<&serde_json::Value>) {
        use serde_json::Value;
        let v = v.filter(|v| !v.is_null());
        match self {
            Typed::Utf8(b) => b.append_option(v.and_then(Value::as_str)),
            Typed::Json(b) => b.append_option(v.map(Value::to_string)),
            Typed::Int64(b) => b.append_option(v.and_then(Value::as_i64)),
            Typed::Float64(b) => b.append_option(v.and_then(Value::as_f64)),
            Typed::Boolean(b) => b.append_option(v.and_then(Value::as_bool)),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Typed::Utf8(b) | Typed::Json(b) => Arc::new(b.finish()),
            Typed::Int64(b) => Arc::new(b.finish()),
            Typed::Float64(b) => Arc::new(b.finish()),
            Typed::Boolean(b) => Arc::new(b.finish()),
        }
    }
}

struct Columns {
    len: usize,
    present: Present,
    content_json: bool,
    id: StringBuilder,
    index: Int64Builder,
    status: StringBuilder,
    model: StringBuilder,
    response_model: StringBuilder,
    content: StringBuilder,
    finish_reason: StringBuilder,
    response: StringBuilder,
    parsed: StringBuilder,
    tool_calls: StringBuilder,
    choices: StringBuilder,
    fallback_model: StringBuilder,
    stale: StringBuilder,
    dedup_of: StringBuilder,
    retries: StringBuilder,
    typed_names: Vec<String>,
    typed: Vec<Typed>,
    tokens: [Int64Builder; 5],
    billed_output_tokens: Int64Builder,
    usage_rule: StringBuilder,
    upstream_cost_usd: Float64Builder,
    cost_usd: Float64Builder,
    cost_source: StringBuilder,
    latency_ms: Int64Builder,
    attempts: Int64Builder,
    error_kind: StringBuilder,
    error_http_status: Int32Builder,
    error_message: StringBuilder,
    started_at: TimestampMillisecondBuilder,
    finished_at: TimestampMillisecondBuilder,
    fingerprint: StringBuilder,
    metadata: StringBuilder,
    content_json_text: StringBuilder,
    content_json_ok: BooleanBuilder,
    meta_keys: Vec<String>,
    meta: Vec<StringBuilder>,
}

fn millis(ts: &str) -> i64 {
    humantime::parse_rfc3339_weak(ts)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64)
}

impl Columns {
    fn new(meta_keys: &[String], present: Present, options: &ParquetOptions) -> Self {
        let s = StringBuilder::new;
        let i = Int64Builder::new;
        Columns {
            len: 0,
            present,
            content_json: options.content_json,
            id: s(),
            index: i(),
            status: s(),
            model: s(),
            response_model: s(),
            content: s(),
            finish_reason: s(),
            response: s(),
            parsed: s(),
            tool_calls: s(),
            choices: s(),
            fallback_model: s(),
            stale: s(),
            dedup_of: s(),
            retries: s(),
            typed_names: options
                .parsed_columns
                .iter()
                .map(|(n, _)| n.clone())
                .collect(),
            typed: options
                .parsed_columns
                .iter()
                .map(|(_, t)| Typed::new(*t))
                .collect(),
            tokens: [i(), i(), i(), i(), i()],
            billed_output_tokens: i(),
            usage_rule: s(),
            upstream_cost_usd: Float64Builder::new(),
            cost_usd: Float64Builder::new(),
            cost_source: s(),
            latency_ms: i(),
            attempts: i(),
            error_kind: s(),
            error_http_status: Int32Builder::new(),
            error_message: s(),
            started_at: TimestampMillisecondBuilder::new().with_timezone("UTC"),
            finished_at: TimestampMillisecondBuilder::new().with_timezone("UTC"),
            fingerprint: s(),
            metadata: s(),
            content_json_text: s(),
            content_json_ok: BooleanBuilder::new(),
            meta_keys: meta_keys.to_vec(),
            meta: meta_keys.iter().map(|_| s()).collect(),
        }
    }

    fn push(&mut self, r: &Record) {
        self.len += 1;
        self.id.append_value(&r.id);
        self.index.append_value(r.index as i64);
        self.status.append_value(r.status.as_str());
        self.model.append_value(&r.model);
        self.response_model
            .append_option(r.response_model.as_deref());
        self.content.append_option(r.content.as_deref());
        self.finish_reason.append_option(r.finish_reason.as_deref());
        self.push_optional(r);
        self.push_money(r);
        self.push_outcome(r);
        self.push_derived(r);
    }

    /// The columns written only when some record has the field.
    fn push_optional(&mut self, r: &Record) {
        let p = self.present;
        if p.parsed {
            self.parsed
                .append_option(r.parsed.as_ref().map(|v| v.to_string()));
        }
        if p.tool_calls {
            self.tool_calls
                .append_option(r.tool_calls.as_ref().map(|v| v.get()));
        }
        if p.choices {
            self.choices.append_option(
                r.choices
                    .as_ref()
                    .and_then(|c| serde_json::to_string(c).ok()),
            );
        }
        if p.fallback_model {
            self.fallback_model
                .append_option(r.fallback_model.as_deref());
        }
        if p.stale {
            self.stale.append_option(r.stale.map(|s| s.as_str()));
        }
        if p.dedup_of {
            self.dedup_of.append_option(r.dedup_of.as_deref());
        }
        if p.retries {
            self.retries.append_option(
                r.retries
                    .as_ref()
                    .and_then(|m| serde_json::to_string(m).ok()),
            );
        }
        if p.response {
            self.response
                .append_option(r.response.as_ref().map(|v| v.get()));
        }
    }

    /// Tokens, what was billed and how, the cost.
    fn push_money(&mut self, r: &Record) {
        let p = self.present;
        let t = [
            r.prompt_tokens,
            r.completion_tokens,
            r.total_tokens,
            r.cached_tokens,
            r.reasoning_tokens,
        ];
        for (b, v) in self.tokens.iter_mut().zip(t) {
            b.append_option(v.map(|n| n as i64));
        }
        if p.billing {
            self.billed_output_tokens
                .append_option(r.billed_output_tokens.map(|n| n as i64));
            self.usage_rule
                .append_option(r.usage_rule.map(|u| u.as_str()));
        }
        if p.upstream {
            self.upstream_cost_usd.append_option(r.upstream_cost_usd);
        }
        self.cost_usd.append_option(r.cost_usd);
        self.cost_source
            .append_option(r.cost_source.map(super::CostSource::as_str));
    }

    /// Latency, attempts, the error, the times, the fingerprint and the metadata.
    fn push_outcome(&mut self, r: &Record) {
        self.latency_ms.append_value(r.latency_ms as i64);
        self.attempts.append_value(i64::from(r.attempts));
        self.error_kind
            .append_option(r.error.as_ref().map(|e| e.kind.as_str()));
        self.error_http_status
            .append_option(r.error.as_ref().and_then(|e| e.http_status).map(i32::from));
        self.error_message
            .append_option(r.error.as_ref().map(|e| e.message.as_str()));
        self.started_at.append_value(millis(&r.started_at));
        self.finished_at.append_value(millis(&r.finished_at));
        self.fingerprint.append_value(&r.fingerprint);
        self.metadata
            .append_value(serde_json::to_string(&r.metadata).unwrap_or_default());
    }

    /// The columns read out of the record: `content_json`, `parsed_<property>`, `meta_<key>`.
    fn push_derived(&mut self, r: &Record) {
        if self.content_json {
            let parsed = r
                .content
                .as_deref()
                .map(serde_json::from_str::<serde_json::Value>);
            match parsed {
                Some(Ok(v)) => {
                    self.content_json_text.append_value(v.to_string());
                    self.content_json_ok.append_value(true);
                }
                Some(Err(_)) => {
                    self.content_json_text.append_null();
                    self.content_json_ok.append_value(false);
                }
                None => {
                    self.content_json_text.append_null();
                    self.content_json_ok.append_null();
                }
            }
        }
        for (name, b) in self.typed_names.iter().zip(self.typed.iter_mut()) {
            b.push(r.parsed.as_ref().and_then(|v| v.get(name)));
        }
        for (k, b) in self.meta_keys.iter().zip(self.meta.iter_mut()) {
            match r.metadata.get(k) {
                Some(serde_json::Value::String(s)) => b.append_value(s),
                Some(serde_json::Value::Null) | None => b.append_null(),
                Some(other) => b.append_value(other.to_string()),
            }
        }
    }

    /// The batch so far, in schema order; the builders start over.
    fn finish(&mut self, schema: &Arc<Schema>) -> Result<RecordBatch, String> {
        self.len = 0;
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(self.id.finish()),
            Arc::new(self.index.finish()),
            Arc::new(self.status.finish()),
            Arc::new(self.model.finish()),
            Arc::new(self.response_model.finish()),
            Arc::new(self.content.finish()),
            Arc::new(self.finish_reason.finish()),
        ];
        let p = self.present;
        for (on, b) in [
            (p.parsed, &mut self.parsed),
            (p.tool_calls, &mut self.tool_calls),
            (p.choices, &mut self.choices),
            (p.fallback_model, &mut self.fallback_model),
            (p.stale, &mut self.stale),
            (p.dedup_of, &mut self.dedup_of),
            (p.retries, &mut self.retries),
            (p.response, &mut self.response),
        ] {
            if on {
                cols.push(Arc::new(b.finish()));
            }
        }
        for b in &mut self.tokens {
            cols.push(Arc::new(b.finish()));
        }
        if p.billing {
            cols.push(Arc::new(self.billed_output_tokens.finish()));
            cols.push(Arc::new(self.usage_rule.finish()));
        }
        cols.push(Arc::new(self.cost_usd.finish()));
        cols.push(Arc::new(self.cost_source.finish()));
        if p.upstream {
            cols.push(Arc::new(self.upstream_cost_usd.finish()));
        }
        cols.extend([
            Arc::new(self.latency_ms.finish()) as ArrayRef,
            Arc::new(self.attempts.finish()),
            Arc::new(self.error_kind.finish()),
            Arc::new(self.error_http_status.finish()),
            Arc::new(self.error_message.finish()),
            Arc::new(self.started_at.finish()),
            Arc::new(self.finished_at.finish()),
            Arc::new(self.fingerprint.finish()),
            Arc::new(self.metadata.finish()),
        ]);
        if self.content_json {
            cols.push(Arc::new(self.content_json_text.finish()));
            cols.push(Arc::new(self.content_json_ok.finish()));
        }
        for b in &mut self.typed {
            cols.push(b.finish());
        }
        for b in &mut self.meta {
            cols.push(Arc::new(b.finish()));
        }
        RecordBatch::try_new(schema.clone(), cols).map_err(|e| e.to_string())
    }
}
