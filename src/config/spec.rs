//! Job specs (`jobs/*.toml`): every setting a flag has, read from a file. Paths in a spec
//! are relative to the spec's folder, so a spec works from any working directory; an unknown
//! key is an error that suggests the nearest known one.

use super::ConfigError;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    /// `dedupe = true` or `dedupe = "always"`.
    pub dedupe: Option<toml::Value>,
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
