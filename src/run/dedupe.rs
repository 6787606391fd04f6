//! `--dedupe`, after the engine: every job the intake held back (its request is another
//! job's) gets a copy of that request's answer, read from the output: an earlier run's answer,
//! or the one this run bought for the first job of the group. The copy says whose answer it is
//! (`dedup_of`) and costs 0, so the output's total is still the bill. A job whose request has
//! no answer yet (the run stopped before its first job was sent) stays pending.
//!
//! Two streaming passes over the job file (which requests are wanted, then the copies) and one
//! over the output (where each wanted answer is): memory is a hash per wanted request, never
//! the jobs or the answers.

use super::RunError;
use crate::checkpoint::Checkpoint;
use crate::checkpoint::Decision;
use crate::config::RunConfig;
use crate::job::{Dedupe, IdKey, Job};
use crate::output::jsonl::{JsonlWriter, WriteError};
use crate::output::{Record, Status};
use crate::progress::Counters;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Read, Seek};
use std::path::Path;

/// What the pass did.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Copied {
    /// Jobs answered with another job's answer.
    pub(super) copied: u64,
    /// Jobs whose request has no answer in the output yet.
    pub(super) waiting: u64,
}

/// Gives every held-back job its copy. `exclude`: ids in batches still open.
pub(super) fn answer_followers(
    cfg: &RunConfig,
    checkpoint: &Checkpoint,
    rule: Dedupe,
    exclude: &HashSet<IdKey>,
    counters: &Counters,
) -> Result<Copied, RunError> {
    let mut wanted = HashSet::new();
    followers(cfg, checkpoint, rule, exclude, |job| {
        wanted.insert(job.fingerprint.0);
        Ok(())
    })?;
    if wanted.is_empty() {
        return Ok(Copied::default());
    }
    let answers = find_answers(&cfg.output, &wanted)?;
    let mut file = std::fs::File::open(&cfg.output).map_err(|source| write_err(cfg, source))?;
    let mut out = JsonlWriter::open(&cfg.output)?;
    let mut batch: Vec<Box<Record>> = Vec::new();
    let mut done = Copied::default();
    followers(cfg, checkpoint, rule, exclude, |job| {
        let Some(&(at, len)) = answers.get(&job.fingerprint.0) else {
            done.waiting += 1;
            return Ok(());
        };
        let source = read_record(&mut file, at, len).map_err(|source| write_err(cfg, source))?;
        batch.push(Box::new(copy_of(source, job)));
        done.copied += 1;
        if batch.len() >= 1024 {
            flush(&mut out, &mut batch, counters)?;
        }
        Ok(())
    })?;
    flush(&mut out, &mut batch, counters)?;
    out.sync()?;
    Ok(done)
}

/// The jobs the intake held back, in file order, by the intake's own rule.
fn followers(
    cfg: &RunConfig,
    checkpoint: &Checkpoint,
    rule: Dedupe,
    exclude: &HashSet<IdKey>,
    mut each: impl FnMut(&Job) -> Result<(), RunError>,
) -> Result<(), RunError> {
    let answered = checkpoint.answered_requests();
    let mut handed = HashSet::new();
    for job in cfg.input.open()? {
        let Ok(job) = job else { continue };
        if exclude.contains(&job.id.key()) || !rule.applies(&job) {
            continue;
        }
        match checkpoint.decide(&job, cfg.retry_failed) {
            Decision::Done | Decision::SkipFailed => continue,
            _ => {}
        }
        let follows = answered.contains(&Checkpoint::request_key(job.fingerprint))
            || !handed.insert(job.fingerprint.0);
        if follows {
            each(&job)?;
        }
    }
    Ok(())
}

/// Where each wanted request's answer is in the output (offset and length of its line): an
/// ok record if there is one, else the latest failed one.
fn find_answers(
    output: &Path,
    wanted: &HashSet<u128>,
) -> Result<HashMap<u128, (u64, usize)>, RunError> {
    #[derive(serde::Deserialize)]
    struct Head {
        status: Status,
        fingerprint: String,
        #[serde(default)]
        dedup_of: Option<serde::de::IgnoredAny>,
    }
    let io = |source| {
        RunError::Write(WriteError {
            path: output.to_path_buf(),
            source,
        })
    };
    let mut found: HashMap<u128, (u64, usize, bool)> = HashMap::new();
    let mut reader = std::io::BufReader::new(std::fs::File::open(output).map_err(io)?);
    let (mut at, mut line) = (0u64, Vec::new());
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(io)?;
        if n == 0 {
            break;
        }
        let head = serde_json::from_slice::<Head>(&line).ok();
        let fp = head
            .as_ref()
            .and_then(|h| crate::job::Fingerprint::parse(&h.fingerprint));
        if let (Some(h), Some(fp)) = (head, fp) {
            let ok = h.status == Status::Ok && h.dedup_of.is_none();
            let better = found.get(&fp.0).is_none_or(|&(_, _, was_ok)| ok || !was_ok);
            if wanted.contains(&fp.0) && better {
                found.insert(fp.0, (at, n, ok));
            }
        }
        at += n as u64;
    }
    Ok(found
        .into_iter()
        .map(|(k, (a, n, _))| (k, (a, n)))
        .collect())
}

fn read_record(file: &mut std::fs::File, at: u64, len: usize) -> std::io::Result<Record> {
    file.seek(std::io::SeekFrom::Start(at))?;
    let mut buf = vec![0; len];
    file.read_exact(&mut buf)?;
    serde_json::from_slice(&buf).map_err(std::io::Error::other)
}

/// `job`'s record: the answer of `source` (the same request), at no cost.
fn copy_of(source: Record, job: &Job) -> Record {
    let now = crate::output::record::timestamp(std::time::SystemTime::now());
    Record {
        id: job.id.to_string(),
        index: job.index,
        metadata: job.metadata.clone(),
        fingerprint: job.fingerprint.to_string(),
        dedup_of: Some(source.dedup_of.clone().unwrap_or(source.id.clone())),
        // The answer was bought once, by the record it copies.
        prompt_tokens: None,
        completion_tokens: None,
        total_tokens: None,
        cached_tokens: None,
        reasoning_tokens: None,
        billed_output_tokens: None,
        usage_rule: None,
        cost_usd: Some(0.0),
        cost_source: None,
        upstream_cost_usd: None,
        latency_ms: 0,
        attempts: 0,
        retries: None,
        stale: None,
        started_at: now.clone(),
        finished_at: now,
        ..source
    }
}

fn flush(
    out: &mut JsonlWriter,
    batch: &mut Vec<crate::output::jsonl::WriterMsg>,
    counters: &Counters,
) -> Result<(), RunError> {
    if batch.is_empty() {
        return Ok(());
    }
    out.write(batch)?;
    for r in batch.drain(..) {
        super::writer::count(counters, &r);
    }
    Ok(())
}

fn write_err(cfg: &RunConfig, source: std::io::Error) -> RunError {
    RunError::Write(WriteError {
        path: cfg.output.clone(),
        source,
    })
}
