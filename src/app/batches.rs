//! `bulkprompt batches OUTPUT`: the output's batches as its journal knows them; with `--check`
//! their state at the provider, with `--cancel` a cancellation asked for each open one.

use super::{runtime, AppError};
use crate::batch::journal::{self, Listed};
use crate::batch::openai;
use crate::run_files::RunFiles;
use std::io::Write;
use std::time::Duration;

pub(super) fn batches_cmd(args: crate::cli::BatchesArgs) -> Result<i32, AppError> {
    let output = RunFiles::named(&args.output).found_records();
    let path = RunFiles::of(&output).found_batch_journal();
    if !path.exists() {
        return Err(AppError::Usage(format!(
            "{}: no batch journal: {} was not written by a batch-mode run",
            path.display(),
            args.output.display()
        )));
    }
    let listed = journal::list(&path).map_err(|e| AppError::Usage(e.to_string()))?;
    let (states, refused) = match args.check || args.cancel {
        true => ask_provider(&args, &listed)?,
        false => (vec![None; listed.len()], 0),
    };
    print(&listed, &states, args.json);
    let open = listed.iter().filter(|l| l.ended.is_none()).count();
    if refused > 0 {
        eprintln!(
            "bulkprompt: the provider refused to cancel {refused} of {open} open batches (their state above says why)"
        );
        return Ok(4);
    }
    if args.cancel && open > 0 {
        eprintln!("bulkprompt: asked to cancel {open} open batches; re-run the same command to collect what they answered and submit the rest again");
    }
    Ok(0)
}

/// Each open batch's state at the provider (`--check`), or its cancellation asked for
/// (`--cancel`); and how many cancellations the provider refused.
fn ask_provider(
    args: &crate::cli::BatchesArgs,
    listed: &[Listed],
) -> Result<(Vec<Option<String>>, usize), AppError> {
    let client = client(args)?;
    let rt = runtime(Some(1))?;
    let mut refused = 0;
    let mut states = Vec::with_capacity(listed.len());
    for l in listed {
        let (None, Some(id)) = (&l.ended, &l.batch_id) else {
            states.push(None);
            continue;
        };
        let got = rt.block_on(async {
            match args.cancel {
                true => openai::cancel(&client, id).await,
                false => openai::get(&client, id).await,
            }
        });
        states.push(Some(match got {
            Ok(info) => info.status,
            Err(e) if args.cancel => {
                refused += 1;
                format!("not cancelled: {e}")
            }
            Err(e) => format!("unknown ({e})"),
        }));
    }
    Ok((states, refused))
}

/// A client of the provider the batches were sent to: `--endpoint` or `--provider`, with the
/// key `--api-key-env` (or the preset) names.
fn client(args: &crate::cli::BatchesArgs) -> Result<crate::provider::Client, AppError> {
    let preset = match &args.provider {
        Some(name) => Some(crate::providers::preset(name).ok_or_else(|| {
            AppError::Usage(format!(
                "--provider {name:?}: one of {}",
                crate::providers::names()
            ))
        })?),
        None => None,
    };
    let base_url = args
        .endpoint
        .clone()
        .or_else(|| preset.map(|p| p.base_url.to_string()))
        .ok_or_else(|| {
            AppError::Usage("--check and --cancel need --endpoint or --provider".into())
        })?;
    let key_env = args
        .api_key_env
        .clone()
        .or_else(|| preset.and_then(|p| p.key_env).map(str::to_string));
    let api_key = key_env
        .as_deref()
        .and_then(|v| std::env::var(v).ok())
        .filter(|k| !k.is_empty())
        .map(crate::secret::ApiKey::new);
    crate::provider::Client::new(&crate::provider::ClientConfig {
        base_url,
        scrubber: crate::secret::Scrubber::new(api_key.as_ref(), std::iter::empty()),
        api_key,
        headers: Vec::new(),
        timeout: Duration::from_secs(120),
        pool_size: 4,
        max_response_bytes: crate::provider::DEFAULT_MAX_RESPONSE_BYTES,
    })
    .map_err(|e| AppError::Usage(e.to_string()))
}

/// The batches as a table, or as JSON.
fn print(listed: &[Listed], states: &[Option<String>], json: bool) {
    let mut out = std::io::stdout().lock();
    if json {
        let rows: Vec<serde_json::Value> = listed
            .iter()
            .zip(states)
            .map(|(l, s)| {
                let mut v = serde_json::to_value(l).unwrap_or_default();
                v["provider_status"] = serde_json::json!(s);
                v
            })
            .collect();
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
        return;
    }
    let _ = writeln!(
        out,
        "{:<20} {:<36} {:>7} {:<16} state",
        "key", "model", "jobs", "batch"
    );
    for (l, s) in listed.iter().zip(states) {
        let state = match (&l.ended, s) {
            (Some(e), _) if e == "never_submitted" => {
                "never submitted: its jobs go again".to_string()
            }
            (Some(e), _) => format!("ended ({e}), collected"),
            (None, Some(s)) => format!("open ({s} at the provider)"),
            (None, None) => "open: a run collects it".to_string(),
        };
        let _ = writeln!(
            out,
            "{:<20} {:<36} {:>7} {:<16} {state}",
            l.key,
            l.model,
            l.jobs,
            l.batch_id.as_deref().unwrap_or("-")
        );
    }
}
