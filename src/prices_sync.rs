//! `bulkprompt prices --sync URL`: reads an OpenRouter-style `GET /models` (prices per token as
//! decimal strings) and writes a price file in the embedded table's layout, which later runs
//! read as the user's overrides. Decimal strings are converted exactly, without floats.

use crate::cost::{Price, PriceTable};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Problems syncing prices.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The endpoint could not be reached or answered an error.
    #[error("{url}: {message}")]
    Fetch { url: String, message: String },
    /// The answer is not a model list.
    #[error("{url}: not an OpenRouter-style model list: {message}")]
    Parse { url: String, message: String },
    /// The price file could not be written.
    #[error("{path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Deserialize)]
struct ModelList {
    data: Vec<ModelEntry>,
}

#[derive(Deserialize)]
struct ModelEntry {
    id: String,
    pricing: Option<Pricing>,
}

#[derive(Deserialize)]
struct Pricing {
    prompt: Option<serde_json::Value>,
    completion: Option<serde_json::Value>,
    input_cache_read: Option<serde_json::Value>,
    input_cache_write: Option<serde_json::Value>,
    image: Option<serde_json::Value>,
}

/// Dollars as a decimal string (or number) to picodollars, exactly for up to 12 decimals.
/// Negative values (OpenRouter's "-1" for variable pricing) and junk give `None`.
pub fn picodollars(v: &serde_json::Value) -> Option<u64> {
    let text = match v {
        serde_json::Value::String(s) => s.trim().to_string(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => return None,
    };
    if text.starts_with('-') {
        return None;
    }
    let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
    if int.is_empty() && frac.is_empty()
        || !int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let int: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut digits: String = frac.chars().take(12).collect();
    let round_up = frac.chars().nth(12).is_some_and(|c| c >= '5');
    while digits.len() < 12 {
        digits.push('0');
    }
    let frac: u64 = digits.parse().ok()?;
    int.checked_mul(1_000_000_000_000)?
        .checked_add(frac)?
        .checked_add(u64::from(round_up))
}

/// `https://openrouter.ai/api/v1` -> `.../v1/models`; a URL ending in `/models` is kept.
pub fn models_url(url: &str) -> String {
    let u = url.trim_end_matches('/');
    if u.ends_with("/models") {
        u.to_string()
    } else {
        format!("{u}/models")
    }
}

/// Reads the model list at `url` into a price table (prices per token become per token in
/// picodollars, which is the table's unit).
pub async fn fetch(url: &str) -> Result<PriceTable, SyncError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = models_url(url);
    let fetch_err = |m: String| SyncError::Fetch {
        url: url.clone(),
        message: m,
    };
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .user_agent(concat!("bulkprompt/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| fetch_err(e.to_string()))?;
    let resp = client
        .get(&url)
        .send()
        .await
        .map_err(|e| fetch_err(e.to_string()))?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| fetch_err(e.to_string()))?;
    if !status.is_success() {
        return Err(fetch_err(format!(
            "HTTP {status}: {}",
            crate::provider::classify::error_message(&body)
        )));
    }
    parse(&url, &body)
}

fn parse(url: &str, body: &[u8]) -> Result<PriceTable, SyncError> {
    let list: ModelList = serde_json::from_slice(body).map_err(|e| SyncError::Parse {
        url: url.to_string(),
        message: e.to_string(),
    })?;
    let mut table = PriceTable::default();
    for m in list.data {
        let Some(p) = m.pricing else { continue };
        let (Some(input), Some(output)) = (
            p.prompt.as_ref().and_then(picodollars),
            p.completion.as_ref().and_then(picodollars),
        ) else {
            continue;
        };
        table.insert(
            &m.id,
            Price {
                input,
                output,
                cached_input: p.input_cache_read.as_ref().and_then(picodollars),
                cache_write: p.input_cache_write.as_ref().and_then(picodollars),
                image: p.image.as_ref().and_then(picodollars),
                batch_permille: None,
            },
        );
    }
    Ok(table)
}

/// Writes `table` as a price file (dollars per million tokens, per thousand images).
pub fn write(table: &PriceTable, source: &str, path: &Path) -> Result<(), SyncError> {
    let werr = |source| SyncError::Write {
        path: path.to_path_buf(),
        source,
    };
    let today = humantime::format_rfc3339(std::time::SystemTime::now()).to_string();
    let today = &today[..10];
    let mut out = format!(
        "# Prices synced by `bulkprompt prices --sync {source}` on {today}.\n# Dollars per million tokens; images per thousand. Re-sync to refresh.\n"
    );
    for (model, p) in table.iter() {
        let per_m = |pico: u64| pico as f64 / 1e6;
        out.push_str(&format!(
            "\n[models.{}]\ninput = {}\noutput = {}\n",
            toml_key(model),
            per_m(p.input),
            per_m(p.output)
        ));
        if let Some(c) = p.cached_input {
            out.push_str(&format!("cached_input = {}\n", per_m(c)));
        }
        if let Some(c) = p.cache_write {
            out.push_str(&format!("cache_write = {}\n", per_m(c)));
        }
        if let Some(i) = p.image {
            out.push_str(&format!("image = {}\n", i as f64 / 1e9));
        }
        out.push_str(&format!(
            "source = {}\nread_on = \"{today}\"\n",
            toml_key(source)
        ));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(werr)?;
    }
    crate::paths::write_atomic(path, out.as_bytes()).map_err(werr)
}

/// A TOML basic string.
fn toml_key(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{}\"", s.replace('"', "")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decimal_strings_convert_exactly() {
        assert_eq!(picodollars(&json!("0.0000001")), Some(100_000));
        assert_eq!(picodollars(&json!("0.000000075")), Some(75_000));
        assert_eq!(picodollars(&json!("0.000619")), Some(619_000_000));
        assert_eq!(picodollars(&json!("0")), Some(0));
        assert_eq!(picodollars(&json!("-1")), None);
        assert_eq!(picodollars(&json!("abc")), None);
        assert_eq!(picodollars(&json!("0.0000000000005")), Some(1));
    }

    #[test]
    fn parses_and_round_trips_through_a_file() {
        let body = br#"{"data":[{"id":"a/b","pricing":{"prompt":"0.0000001","completion":"0.0000004","image":"0.000026"}},
            {"id":"auto","pricing":{"prompt":"-1","completion":"-1"}},{"id":"x"}]}"#;
        let t = parse("u", body).unwrap();
        assert_eq!(t.iter().count(), 1);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("prices.toml");
        write(&t, "http://x/v1", &p).unwrap();
        let back = PriceTable::load(Some(&p)).unwrap();
        assert_eq!(back.get("a/b"), t.get("a/b"));
    }
}
