//! The batch APIs. OpenAI's, as OpenAI and Gemini's OpenAI-compatible endpoint serve it: upload
//! a JSONL file of Batch API lines (`POST /files`, `purpose=batch`), create a batch
//! (`POST /batches`, a 24 h window, our key in `metadata`), poll `GET /batches/{id}`, download
//! `GET /files/{id}/content`, find a batch by key (`GET /batches`, newest first), cancel.
//! OpenRouter's: the requests inline in `POST /batches` (at most 5,000, one model; `endpoint`
//! and `model` before `requests` in the body, or it answers 400), the results inline in
//! `GET /batches/{id}` once it ended; finding, polling and cancelling as OpenAI's.

use crate::provider::{Call, Client};
use bytes::Bytes;
use reqwest::Method;
use serde::Deserialize;

/// The metadata key carrying bulkprompt's own key for a batch.
pub const KEY_FIELD: &str = "bulkprompt_key";

/// A failed call: whether trying again may help (no answer, 429, 5xx), and what was said.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub transient: bool,
    pub message: String,
    /// The HTTP status of the refusal, when there was one.
    pub status: Option<u16>,
}

/// What the runner reads of a batch.
#[derive(Debug, Clone, Deserialize)]
pub struct BatchInfo {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub input_file_id: Option<String>,
    #[serde(default)]
    pub output_file_id: Option<String>,
    #[serde(default)]
    pub error_file_id: Option<String>,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    #[serde(default)]
    pub request_counts: Option<Counts>,
    /// OpenRouter style: the result lines, once the batch ended.
    #[serde(default)]
    pub results: Option<Vec<serde_json::Value>>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct Counts {
    #[serde(default)]
    pub total: u64,
    #[serde(default)]
    pub completed: u64,
    #[serde(default)]
    pub failed: u64,
}

impl BatchInfo {
    /// The batch will not change any more.
    pub fn ended(&self) -> bool {
        matches!(
            self.status.as_str(),
            "completed" | "failed" | "expired" | "cancelled"
        )
    }

    pub fn key(&self) -> Option<&str> {
        self.metadata.as_ref()?.get(KEY_FIELD)?.as_str()
    }
}

#[derive(Deserialize)]
struct FileObject {
    id: String,
}

#[derive(Deserialize)]
struct Page {
    data: Vec<BatchInfo>,
    #[serde(default)]
    has_more: bool,
    #[serde(default)]
    last_id: Option<String>,
}

async fn ok_body(
    client: &Client,
    method: Method,
    path: &str,
    body: Option<(String, Vec<u8>)>,
) -> Result<Bytes, ApiError> {
    match client.call(method, path, body).await {
        Call::Http { status, body } if (200..300).contains(&status) => Ok(body),
        Call::Http { status, body } => Err(ApiError {
            status: Some(status),
            transient: status == 429 || status >= 500 || status == 408,
            message: format!(
                "{path}: HTTP {status}: {}",
                crate::provider::classify::error_message(&body)
            ),
        }),
        Call::Transport(message) => Err(ApiError {
            status: None,
            transient: true,
            message: format!("{path}: {message}"),
        }),
    }
}

fn parse<T: serde::de::DeserializeOwned>(path: &str, body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError {
        status: None,
        transient: false,
        message: format!("{path}: unexpected answer ({e})"),
    })
}

/// Uploads a batch input file; its id.
pub async fn upload(client: &Client, name: &str, lines: &[u8]) -> Result<String, ApiError> {
    let boundary = format!("bulkprompt-{:016x}", fastrand::u64(..));
    let mut body = Vec::with_capacity(lines.len() + 512);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}.jsonl\"\r\nContent-Type: application/jsonl\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(lines);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let b = ok_body(client, Method::POST, "files", Some((content_type, body))).await?;
    Ok(parse::<FileObject>("files", &b)?.id)
}

#[derive(Deserialize)]
struct FileList {
    #[serde(default)]
    data: Vec<ListedFile>,
}

#[derive(Deserialize)]
struct ListedFile {
    id: String,
    #[serde(default)]
    filename: Option<String>,
}

/// The batch input file uploaded as `name` (`{name}.jsonl`), if the provider has it: how a
/// run whose upload answer was lost finds the file instead of uploading it twice.
pub async fn find_file(client: &Client, name: &str) -> Result<Option<String>, ApiError> {
    let path = "files?purpose=batch&limit=10000&order=desc";
    let b = ok_body(client, Method::GET, path, None).await?;
    let list: FileList = parse(path, &b)?;
    let wanted = format!("{name}.jsonl");
    Ok(list
        .data
        .into_iter()
        .find(|f| f.filename.as_deref() == Some(wanted.as_str()))
        .map(|f| f.id))
}

/// Creates a batch of an uploaded file, our `key` in its metadata.
pub async fn create(client: &Client, file_id: &str, key: &str) -> Result<BatchInfo, ApiError> {
    let req = serde_json::json!({
        "input_file_id": file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "metadata": {KEY_FIELD: key},
    });
    let b = ok_body(
        client,
        Method::POST,
        "batches",
        Some((
            "application/json".to_string(),
            serde_json::to_vec(&req).unwrap_or_default(),
        )),
    )
    .await?;
    parse("batches", &b)
}

/// Most requests in one OpenRouter-style batch.
pub const INLINE_MAX: usize = 5_000;

/// OpenRouter style: creates a batch with the requests inline. `lines` are Batch API lines
/// (custom_id, method, url, body); `endpoint` and `model` are written before `requests`.
pub async fn create_inline(
    client: &Client,
    model: &str,
    key: &str,
    lines: &[u8],
) -> Result<BatchInfo, ApiError> {
    #[derive(Deserialize)]
    struct Line<'a> {
        custom_id: String,
        #[serde(borrow)]
        body: &'a serde_json::value::RawValue,
    }
    let mut body = Vec::with_capacity(lines.len() + 256);
    body.extend_from_slice(b"{\"endpoint\":\"/v1/chat/completions\",\"model\":");
    let _ = serde_json::to_writer(&mut body, model);
    body.extend_from_slice(b",\"completion_window\":\"24h\",\"metadata\":");
    let _ = serde_json::to_writer(&mut body, &serde_json::json!({KEY_FIELD: key}));
    body.extend_from_slice(b",\"requests\":[");
    let mut first = true;
    for raw in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let line: Line = serde_json::from_slice(raw).map_err(|e| ApiError {
            status: None,
            transient: false,
            message: format!("a batch line: {e}"),
        })?;
        if !first {
            body.push(b',');
        }
        first = false;
        body.extend_from_slice(b"{\"custom_id\":");
        let _ = serde_json::to_writer(&mut body, &line.custom_id);
        body.extend_from_slice(b",\"body\":");
        body.extend_from_slice(line.body.get().as_bytes());
        body.push(b'}');
    }
    body.extend_from_slice(b"]}");
    let b = ok_body(
        client,
        Method::POST,
        "batches",
        Some(("application/json".to_string(), body)),
    )
    .await?;
    parse("batches", &b)
}

pub async fn get(client: &Client, id: &str) -> Result<BatchInfo, ApiError> {
    let path = format!("batches/{id}");
    let b = ok_body(client, Method::GET, &path, None).await?;
    parse(&path, &b)
}

pub async fn cancel(client: &Client, id: &str) -> Result<BatchInfo, ApiError> {
    let path = format!("batches/{id}/cancel");
    let b = ok_body(client, Method::POST, &path, None).await?;
    parse(&path, &b)
}

/// A file's content.
pub async fn content(client: &Client, file_id: &str) -> Result<Bytes, ApiError> {
    ok_body(
        client,
        Method::GET,
        &format!("files/{file_id}/content"),
        None,
    )
    .await
}

/// Walks the newest `max_pages` pages of the provider's batches, newest first, handing each
/// page to `visit` until it says stop (`true`).
async fn each_page(
    client: &Client,
    max_pages: usize,
    mut visit: impl FnMut(&[BatchInfo]) -> bool,
) -> Result<(), ApiError> {
    let mut after: Option<String> = None;
    for _ in 0..max_pages {
        let path = match &after {
            Some(a) => format!("batches?limit=100&after={a}"),
            None => "batches?limit=100".to_string(),
        };
        let b = ok_body(client, Method::GET, &path, None).await?;
        let page: Page = parse(&path, &b)?;
        if visit(&page.data) {
            return Ok(());
        }
        match (
            page.has_more,
            page.last_id
                .or_else(|| page.data.last().map(|b| b.id.clone())),
        ) {
            (true, Some(last)) => after = Some(last),
            _ => return Ok(()),
        }
    }
    Ok(())
}

/// Every batch among the newest `max_pages` pages whose key starts with `prefix`: how a run
/// whose journal is gone finds the batches its output submitted.
pub async fn list_with_prefix(
    client: &Client,
    prefix: &str,
    max_pages: usize,
) -> Result<Vec<BatchInfo>, ApiError> {
    let mut found = Vec::new();
    each_page(client, max_pages, |page| {
        found.extend(
            page.iter()
                .filter(|b| b.key().is_some_and(|k| k.starts_with(prefix)))
                .cloned(),
        );
        false
    })
    .await?;
    Ok(found)
}

/// The batch carrying `key` in its metadata, looked for among the newest `max_pages` pages:
/// how a run finds a batch whose creation it sent but whose answer it never read.
pub async fn find_by_key(
    client: &Client,
    key: &str,
    max_pages: usize,
) -> Result<Option<BatchInfo>, ApiError> {
    let mut found = None;
    each_page(client, max_pages, |page| {
        found = page.iter().find(|b| b.key() == Some(key)).cloned();
        found.is_some()
    })
    .await?;
    Ok(found)
}
