//! `export --format csv|openai-batch`: an output as a spreadsheet, or in the shape of OpenAI's
//! Batch API output files (for code written against those), one row per id (the latest, with
//! what its superseded records cost carried in), streamed in two passes like the Parquet export.

use super::latest::{add_carried, Latest};
use super::parquet::{for_each_line, ParquetError};
use super::{Record, Status};
use crate::job::IdKey;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

/// What an export wrote.
#[derive(Debug, Clone, Copy)]
pub struct Exported {
    pub rows: u64,
}

fn bad(jsonl: &Path, line: u64, e: String) -> ParquetError {
    ParquetError::Record {
        path: jsonl.to_path_buf(),
        line,
        message: e,
    }
}

/// Pass 1: each id's last line, and every metadata key seen.
pub(crate) fn scan(jsonl: &Path) -> Result<(Latest, BTreeSet<String>), ParquetError> {
    let bad = |line, e: String| bad(jsonl, line, e);
    let mut last = Latest::with_capacity(crate::job::keys::estimate_lines(jsonl));
    let mut meta = BTreeSet::new();
    for_each_line(jsonl, |line, bytes| {
        #[derive(serde::Deserialize)]
        struct Head {
            id: String,
            #[serde(default)]
            metadata: serde_json::Map<String, serde_json::Value>,
            #[serde(default)]
            cost_usd: Option<f64>,
        }
        let h: Head = serde_json::from_slice(bytes).map_err(|e| bad(line, e.to_string()))?;
        last.push(IdKey::of(h.id.as_bytes()), line, h.cost_usd);
        meta.extend(h.metadata.into_iter().map(|(k, _)| k));
        Ok(())
    })?;
    last.seal();
    Ok((last, meta))
}

/// Pass 2: calls `f` with each id's latest record, in the file's order.
pub(crate) fn each_latest(
    jsonl: &Path,
    last: &Latest,
    mut f: impl FnMut(Record) -> Result<(), String>,
) -> Result<(), ParquetError> {
    let bad = |line, e: String| bad(jsonl, line, e);
    for_each_line(jsonl, |line, bytes| {
        let mut r: Record = serde_json::from_slice(bytes).map_err(|e| bad(line, e.to_string()))?;
        if !last.is_last(&IdKey::of(r.id.as_bytes()), line) {
            return Ok(());
        }
        if let Some(c) = last.carried(line) {
            r.cost_usd = Some(add_carried(r.cost_usd, c));
        }
        f(r).map_err(|e| ParquetError::Write {
            path: jsonl.to_path_buf(),
            message: e,
        })
    })
}

fn text(v: &Option<impl ToString>) -> String {
    v.as_ref().map(ToString::to_string).unwrap_or_default()
}

/// CSV: the record's fields as columns, `parsed` and `metadata` as JSON text, one
/// `parsed_<property>` column per property of the run's answer schema (as Parquet has them),
/// one `meta_<key>` column per metadata key; written to `out`.
pub fn to_csv(
    jsonl: &Path,
    out: impl Write,
    parsed_columns: &[(String, crate::answer::ColumnType)],
) -> Result<Exported, ParquetError> {
    let mut w = csv::Writer::from_writer(out);
    let werr = |e: String| ParquetError::Write {
        path: jsonl.to_path_buf(),
        message: e,
    };
    let (last, keys) = scan(jsonl)?;
    let meta_keys: Vec<String> = keys.into_iter().collect();
    let parsed: Vec<&str> = parsed_columns.iter().map(|(k, _)| k.as_str()).collect();
    w.write_record(csv_header(&parsed, &meta_keys))
        .map_err(|e| werr(e.to_string()))?;
    let mut rows = 0;
    each_latest(jsonl, &last, |r| {
        rows += 1;
        w.write_record(csv_row(&r, &parsed, &meta_keys))
            .map_err(|e| e.to_string())
    })?;
    w.flush().map_err(|e| werr(e.to_string()))?;
    Ok(Exported { rows })
}

fn csv_header(parsed: &[&str], meta_keys: &[String]) -> Vec<String> {
    let mut header: Vec<String> = [
        "id",
        "index",
        "status",
        "model",
        "response_model",
        "content",
        "parsed",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "latency_ms",
        "attempts",
        "error_kind",
        "error_message",
        "finished_at",
        "metadata",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    header.extend(parsed.iter().map(|k| format!("parsed_{k}")));
    header.extend(meta_keys.iter().map(|k| format!("meta_{k}")));
    header
}

/// A JSON value as a spreadsheet cell: strings as they are, null as empty, the rest as JSON.
fn cell(v: Option<&serde_json::Value>) -> String {
    match v {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => String::new(),
        Some(v) => v.to_string(),
    }
}

fn csv_row(r: &Record, parsed: &[&str], meta_keys: &[String]) -> Vec<String> {
    let mut row = vec![
        r.id.clone(),
        r.index.to_string(),
        r.status.as_str().into(),
        r.model.clone(),
        text(&r.response_model),
        text(&r.content),
        r.parsed.as_ref().map(|v| v.to_string()).unwrap_or_default(),
        text(&r.finish_reason),
        text(&r.prompt_tokens),
        text(&r.completion_tokens),
        text(&r.cost_usd),
        r.latency_ms.to_string(),
        r.attempts.to_string(),
        r.error
            .as_ref()
            .map(|e| e.kind.as_str().to_string())
            .unwrap_or_default(),
        r.error
            .as_ref()
            .map(|e| e.message.clone())
            .unwrap_or_default(),
        r.finished_at.clone(),
        serde_json::to_string(&r.metadata).unwrap_or_default(),
    ];
    row.extend(
        parsed
            .iter()
            .map(|k| cell(r.parsed.as_ref().and_then(|p| p.get(*k)))),
    );
    row.extend(meta_keys.iter().map(|k| cell(r.metadata.get(k))));
    row
}

/// OpenAI's Batch API output lines: `{"id", "custom_id", "response": {"status_code",
/// "request_id", "body"}, "error"}`; the body is the kept response (`--keep-response`) or one
/// rebuilt from the record.
pub fn to_openai_batch(jsonl: &Path, mut out: impl Write) -> Result<Exported, ParquetError> {
    let mut rows = 0;
    let (last, _) = scan(jsonl)?;
    each_latest(jsonl, &last, |r| {
        let body = match &r.response {
            Some(raw) => serde_json::from_str(raw.get()).unwrap_or(serde_json::Value::Null),
            None => serde_json::json!({
                "object": "chat.completion",
                "model": r.response_model.as_deref().unwrap_or(&r.model),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": r.content,
                    "tool_calls": r.tool_calls.as_ref().and_then(|t| serde_json::from_str::<serde_json::Value>(t.get()).ok())},
                    "finish_reason": r.finish_reason}],
                "usage": {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                    "total_tokens": r.total_tokens, "cost": r.cost_usd},
            }),
        };
        let line = match (&r.status, &r.error) {
            (Status::Ok, _) => serde_json::json!({
                "id": format!("batch_req_{}", r.fingerprint),
                "custom_id": r.id,
                "response": {"status_code": 200, "request_id": r.fingerprint, "body": body},
                "error": null,
            }),
            (Status::Failed, e) => serde_json::json!({
                "id": format!("batch_req_{}", r.fingerprint),
                "custom_id": r.id,
                "response": e.as_ref().and_then(|e| e.http_status).map(|s| serde_json::json!({
                    "status_code": s, "request_id": r.fingerprint,
                    "body": {"error": {"message": e.as_ref().map(|e| e.message.clone())}}})),
                "error": e.as_ref().map(|e| serde_json::json!({"code": e.kind.as_str(), "message": e.message})),
            }),
        };
        rows += 1;
        writeln!(out, "{line}").map_err(|e| e.to_string())
    })?;
    Ok(Exported { rows })
}
