//! The batch engine (`--mode batch`): the same job file and records as a live run, at the
//! batch APIs' half price, with nothing paid twice.
//!
//! 1. Replay the batch journal ([`crate::batch::journal`]): batches of earlier runs that have
//!    not ended are found again (a creation whose answer was lost is looked up by the key in
//!    its metadata) and their worst case stays held against `--max-cost`.
//! 2. Jobs the intake hands over, except those already in such a batch, are reserved against
//!    the budget one by one and grouped by model into batches of at most `max_lines` lines and
//!    `max_bytes` bytes; each batch's intent is journaled (fsynced) before its file is uploaded,
//!    then its file id, then its batch id.
//! 3. With `--no-wait` the run ends there (exit 6). Otherwise every open batch is polled until it
//!    ends; its output and error files become records through the one writer, and only once they
//!    are durable is the batch journaled as ended. Lines that failed for a passing reason (5xx,
//!    429, a batch that expired or was cancelled before them) go into a later batch, up to
//!    `--max-attempts` batches; other failures are recorded as failed.

mod life;

use super::engine::{Engine, EngineEnd, Intake};
use super::task::{base_record, Ctx, Hold, NoHold};
use crate::batch::journal::{Entry, Event, Journal};
use crate::batch::openai::{self, ApiError, BatchInfo};
use crate::batch::{BatchApi, BatchSettings};
use crate::checkpoint::Decision;
use crate::cost::Money;
use crate::job::{IdKey, InputSpec, Job};
use crate::output::{Record, RecordError, Stale, Status};
use crate::provider::response::parse_completion;
use crate::provider::ErrorKind;
use crate::shutdown::Phase;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub(super) struct BatchEngine {
    pub(super) ctx: Arc<Ctx>,
    pub(super) input: InputSpec,
    pub(super) journal: PathBuf,
    pub(super) settings: BatchSettings,
    /// Notified when the writer fails.
    pub(super) write_failed: Arc<tokio::sync::Notify>,
    /// The most lines a batch may have, as the provider's refusal of a larger one said (0:
    /// none said yet).
    pub(super) learned_max_lines: std::sync::atomic::AtomicUsize,
}

/// A batch in flight, with what it holds of the budget.
struct Open {
    entry: Entry,
    holds: Vec<Hold>,
}

/// Jobs gathered for one batch.
#[derive(Default)]
struct Chunk {
    ids: Vec<String>,
    fingerprints: Vec<String>,
    lines: Vec<u8>,
    worst: Money,
    /// Each job's worst case and holds, in line order (a refused batch is split by them).
    jobs: Vec<(Money, Vec<Hold>)>,
}

impl Chunk {
    fn holds(&mut self) -> Vec<Hold> {
        std::mem::take(&mut self.jobs)
            .into_iter()
            .flat_map(|(_, h)| h)
            .collect()
    }

    /// The chunk cut into chunks of at most `max` lines, in order.
    fn split(mut self, max: usize) -> Vec<Chunk> {
        let mut out = Vec::new();
        let mut lines = self.lines.split_inclusive(|&b| b == b'\n');
        while !self.ids.is_empty() {
            let n = max.min(self.ids.len());
            let jobs: Vec<(Money, Vec<Hold>)> = self.jobs.drain(..n).collect();
            out.push(Chunk {
                ids: self.ids.drain(..n).collect(),
                fingerprints: self.fingerprints.drain(..n).collect(),
                lines: lines.by_ref().take(n).flatten().copied().collect(),
                worst: jobs.iter().fold(Money::ZERO, |t, (w, _)| t + *w),
                jobs,
            });
        }
        out
    }
}

/// The largest batch a provider's refusal states, when the refusal says a batch of `lines`
/// lines is too large: a number in the message under `lines` next to "limit", "maximum",
/// "at most" or "exceed" (a size in bytes or MB is not a line count).
fn stated_limit(e: &ApiError, lines: usize) -> Option<usize> {
    if e.transient || e.status != Some(400) {
        return None;
    }
    let text = e.message.to_ascii_lowercase();
    if !["limit", "maximum", "at most", "exceed", "too many"]
        .iter()
        .any(|w| text.contains(w))
    {
        return None;
    }
    let words: Vec<&str> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == ','))
        .filter(|w| !w.is_empty())
        .collect();
    words
        .iter()
        .enumerate()
        .filter(|(i, _)| {
            let unit = words.get(i + 1).copied().unwrap_or("");
            !matches!(
                unit,
                "mb" | "gb" | "kb" | "bytes" | "byte" | "tokens" | "mib"
            )
        })
        .filter_map(|(_, w)| w.replace(',', "").parse::<usize>().ok())
        .filter(|&n| n >= 1 && n < lines)
        .max()
}

/// What a batch said about one of its lines.
enum Outcome {
    Answered(bytes::Bytes),
    /// A refusal; `transient` ones go into a later batch.
    Refused {
        status: Option<u16>,
        message: String,
        transient: bool,
    },
}

/// Calls to the batch API are tried this many times (with backoff) before the run stops.
const API_TRIES: u32 = 6;

impl BatchEngine {
    /// A batch-API call, retried while the failure is transient; `None` after a stop.
    async fn call<T, F, Fut>(&self, what: &str, f: F) -> Option<Result<T, ApiError>>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiError>>,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            let r = tokio::select! {
                r = f() => r,
                _ = self.ctx.control.shutdown.reached(Phase::Now) => return None,
            };
            match r {
                Err(e) if e.transient && tries < API_TRIES => {
                    tracing::debug!("{what}: {e}; trying again");
                    let wait = self.ctx.policy.backoff.delay(tries, fastrand::f64(), None);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.ctx.control.shutdown.reached(Phase::Now) => return None,
                    }
                }
                r => return Some(r),
            }
        }
    }

    /// Money a batch already at the provider holds, whatever the cap says now: it was
    /// submitted (by an earlier run, or found again there).
    fn committed(&self, worst: Money) -> Vec<Hold> {
        self.ctx
            .money
            .budget
            .iter()
            .map(|b| Hold {
                budget: b.clone(),
                reservation: Some(b.hold(worst)),
            })
            .collect()
    }

    /// Whether this engine can find the output's batches at the provider without a journal
    /// (the OpenAI-style API lists batches with their keys).
    pub(super) fn finds_lost_batches(&self) -> bool {
        self.settings.api == BatchApi::OpenAi
    }

    fn key_prefix(&self) -> String {
        crate::batch::journal::key_prefix(&self.journal)
    }

    /// The journal is gone (deleted with `.bulkprompt/`, or a new disk): the output's batches
    /// are found at the provider by their keys, read back from their input files, journaled
    /// again and collected like any open batch, so none of their jobs is bought twice.
    async fn rediscover(&self, journal: &mut Journal, open: &mut Vec<Open>) -> Result<(), ()> {
        let client = &self.ctx.client;
        let prefix = self.key_prefix();
        let found = match self
            .call("list batches", || {
                openai::list_with_prefix(client, &prefix, 20)
            })
            .await
        {
            None => return Err(()),
            Some(Err(e)) => {
                self.fail("list batches", &e);
                return Err(());
            }
            Some(Ok(found)) => found,
        };
        for info in found {
            let (Some(key), Some(file)) =
                (info.key().map(str::to_string), info.input_file_id.clone())
            else {
                continue;
            };
            let bytes = match self
                .call("download", || openai::content(client, &file))
                .await
            {
                None => return Err(()),
                Some(Ok(b)) => b,
                // Its input is gone too: nothing to match its answers with.
                Some(Err(e)) => {
                    tracing::warn!(
                        "batch {}: its input file cannot be read ({e}); left alone",
                        info.id
                    );
                    continue;
                }
            };
            let Some(entry) = self.entry_from_lines(&key, &file, &info.id, &bytes) else {
                continue;
            };
            for event in [
                Event::Intent {
                    key: key.clone(),
                    model: entry.model.clone(),
                    ids: entry.ids.clone(),
                    fingerprints: entry.fingerprints.clone(),
                    worst_usd: entry.worst.usd(),
                },
                Event::File {
                    key: key.clone(),
                    file_id: file.clone(),
                },
                Event::Created {
                    key: key.clone(),
                    batch_id: info.id.clone(),
                },
            ] {
                if !self.journal_append(journal, &event) {
                    return Err(());
                }
            }
            tracing::warn!(
                "the batch journal was gone: batch {} ({} jobs) of this output found at the provider by its key; collecting it",
                info.id,
                entry.ids.len()
            );
            let holds = self.committed(entry.worst);
            open.push(Open { entry, holds });
        }
        Ok(())
    }

    /// A journal entry rebuilt from a batch's input file: its ids, the fingerprints of the
    /// bodies as sent, and their worst case at the live price.
    fn entry_from_lines(&self, key: &str, file: &str, batch: &str, bytes: &[u8]) -> Option<Entry> {
        #[derive(serde::Deserialize)]
        struct Line<'a> {
            custom_id: String,
            #[serde(borrow)]
            body: &'a serde_json::value::RawValue,
        }
        let (mut ids, mut fingerprints, mut worst, mut model) =
            (Vec::new(), Vec::new(), Money::ZERO, None);
        for raw in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(line) = serde_json::from_slice::<Line>(raw) else {
                continue;
            };
            let body: serde_json::Value = serde_json::from_str(line.body.get()).ok()?;
            let m = body["model"].as_str().unwrap_or_default().to_string();
            let out = body["max_completion_tokens"]
                .as_u64()
                .or(body["max_tokens"].as_u64())
                .unwrap_or(self.ctx.pacing.allowance.default_tokens)
                * body["n"].as_u64().unwrap_or(1).max(1);
            if let Some(p) = self.ctx.money.prices.get(&m) {
                worst += p.worst_case(line.body.get().len().div_ceil(2) as u64, out, 0);
            }
            model.get_or_insert(m);
            ids.push(line.custom_id);
            fingerprints.push(crate::job::Fingerprint::of(line.body.get().as_bytes()).to_string());
        }
        Some(Entry {
            key: key.to_string(),
            model: model?,
            ids,
            fingerprints,
            worst,
            file_id: Some(file.to_string()),
            batch_id: Some(batch.to_string()),
        })
    }

    /// Creates a batch, retried like any call, but each retry first looks for the batch by its
    /// key: a creation whose answer was lost on the wire is found, never made twice.
    async fn create_once<F, Fut>(&self, key: &str, create: F) -> Option<Result<BatchInfo, ApiError>>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<BatchInfo, ApiError>>,
    {
        let client = &self.ctx.client;
        let retried = std::sync::atomic::AtomicBool::new(false);
        self.call("create", || async {
            if retried.swap(true, Relaxed) {
                if let Some(found) = openai::find_by_key(client, key, 20).await? {
                    tracing::info!("batch {key}: created after all, as {}", found.id);
                    return Ok(found);
                }
            }
            create().await
        })
        .await
    }

    /// Stops the run for a batch-API failure (exit 4); open batches stay in the journal.
    fn fail(&self, what: &str, e: &ApiError) {
        if e.status == Some(404) && matches!(what, "upload" | "create" | "list batches") {
            // Nothing there to take a batch: the same command would stop the same way.
            self.ctx.control.why.abort_fatal(format!(
                "the endpoint {} has no batch API ({what} answered HTTP 404: {}); nothing was submitted: run with --mode live",
                self.ctx.endpoint, e.message
            ));
            self.ctx.open();
            return;
        }
        let submitted = self.ctx.records.counters.batches_submitted.load(Relaxed);
        self.ctx.abort(match submitted {
            0 => format!("batch API: {what}: {e}; this run submitted no batch; re-run to try again (batches of earlier runs, if any, stay in the journal and are collected then)"),
            n => format!(
                "batch API: {what}: {e}; the {n} batches this run submitted are in the journal {} and the next run collects them",
                self.journal.display()
            ),
        });
    }

    fn journal_append(&self, journal: &mut Journal, event: &Event) -> bool {
        match journal.append(event) {
            Ok(()) => true,
            Err(e) => {
                self.ctx.abort(format!("batch journal: {e}"));
                false
            }
        }
    }

    /// What `job` is held at against `--max-cost`: its worst case at the *live* price. The
    /// batch share is the price table's idea of the provider's discount; a provider that bills
    /// its batch API at more than that (at the live price, say) would otherwise carry the run
    /// past the cap with every job of the batches already submitted, before the first one is
    /// collected and its real cost seen. Collected answers settle at what they cost, so the
    /// money held beyond that returns to the cap for the next batches.
    fn worst(&self, job: &Job) -> Money {
        self.ctx.money.worst_case(job)
    }

    /// Journals, uploads and creates one batch. False when the run must stop.
    async fn submit(
        &self,
        journal: &mut Journal,
        model: &str,
        mut chunk: Chunk,
        open: &mut Vec<Open>,
    ) -> bool {
        if chunk.ids.is_empty() {
            return true;
        }
        let Some(mut entry) = self.intend(journal, model, &chunk) else {
            return false;
        };
        let key = entry.key.clone();
        let client = &self.ctx.client;
        let lines = std::mem::take(&mut chunk.lines);
        let created = if self.settings.api == BatchApi::OpenRouter {
            tracing::info!(
                "batch {key}: creating it with {} jobs of {model} inline",
                entry.ids.len()
            );
            self.create_once(&key, || openai::create_inline(client, model, &key, &lines))
                .await
        } else {
            let file_id = match self.upload(&key, model, &entry, &lines).await {
                Some(Ok(id)) => id,
                refused => {
                    if let Some(Err(e)) = &refused {
                        if let Some(max) = stated_limit(e, entry.ids.len()) {
                            chunk.lines = lines;
                            return Box::pin(self.smaller(journal, model, &key, chunk, max, open))
                                .await;
                        }
                        self.fail("upload", e);
                    }
                    // Stopped: whatever arrived is found again by its key.
                    let holds = chunk.holds();
                    open.push(Open { entry, holds });
                    return false;
                }
            };
            entry.file_id = Some(file_id.clone());
            if !self.journal_append(
                journal,
                &Event::File {
                    key: key.clone(),
                    file_id: file_id.clone(),
                },
            ) {
                return false;
            }
            tracing::info!("batch {key}: creating it from {file_id}");
            self.create_once(&key, || openai::create(client, &file_id, &key))
                .await
        };
        if let Some(Err(e)) = &created {
            if let Some(max) = stated_limit(e, entry.ids.len()) {
                chunk.lines = lines;
                return Box::pin(self.smaller(journal, model, &key, chunk, max, open)).await;
            }
        }
        let holds = chunk.holds();
        self.created(journal, entry, holds, created, open)
    }

    /// The batch journaled as intended before anything is sent (a crash after this finds it
    /// again by its key): its entry, or `None` when the journal cannot be written.
    fn intend(&self, journal: &mut Journal, model: &str, chunk: &Chunk) -> Option<Entry> {
        let key = format!("{}{:016x}", self.key_prefix(), fastrand::u64(..));
        let intent = Event::Intent {
            key: key.clone(),
            model: model.to_string(),
            ids: chunk.ids.clone(),
            fingerprints: chunk.fingerprints.clone(),
            worst_usd: chunk.worst.usd(),
        };
        if !self.journal_append(journal, &intent) {
            return None;
        }
        Some(Entry {
            key,
            model: model.to_string(),
            ids: chunk.ids.clone(),
            fingerprints: chunk.fingerprints.clone(),
            worst: chunk.worst,
            file_id: None,
            batch_id: None,
        })
    }

    /// Uploads a batch's input file once: a retry first asks whether the upload before it
    /// arrived after all.
    async fn upload(
        &self,
        key: &str,
        model: &str,
        entry: &Entry,
        lines: &[u8],
    ) -> Option<Result<String, ApiError>> {
        tracing::info!(
            "batch {key}: uploading {} jobs of {model} ({} bytes)",
            entry.ids.len(),
            lines.len()
        );
        let client = &self.ctx.client;
        let retried = std::sync::atomic::AtomicBool::new(false);
        self.call("upload", || async {
            if retried.swap(true, Relaxed) {
                if let Some(id) = openai::find_file(client, key).await? {
                    tracing::info!("batch {key}: its file was uploaded after all, as {id}");
                    return Ok(id);
                }
            }
            openai::upload(client, key, lines).await
        })
        .await
    }

    /// The provider refused a batch as larger than it takes, saying how large one may be:
    /// the refused batch ends unsubmitted, and its jobs go in batches of that size (and so
    /// does every batch after it in this run).
    async fn smaller(
        &self,
        journal: &mut Journal,
        model: &str,
        key: &str,
        chunk: Chunk,
        max: usize,
        open: &mut Vec<Open>,
    ) -> bool {
        tracing::warn!(
            "batch {key}: the provider takes at most {max} lines a batch (its refusal said so); submitting its {} jobs in batches of {max} (set --batch-max-lines {max} to start so)",
            chunk.ids.len()
        );
        self.learned_max_lines.store(max, Relaxed);
        if !self.journal_append(
            journal,
            &Event::Ended {
                key: key.to_string(),
                status: "never_submitted".into(),
            },
        ) {
            return false;
        }
        for piece in chunk.split(max) {
            if !self.submit(journal, model, piece, open).await {
                return false;
            }
        }
        true
    }

    fn created(
        &self,
        journal: &mut Journal,
        mut entry: Entry,
        holds: Vec<Hold>,
        created: Option<Result<BatchInfo, ApiError>>,
        open: &mut Vec<Open>,
    ) -> bool {
        let key = entry.key.clone();
        match created {
            None => {
                open.push(Open { entry, holds });
                false
            }
            Some(Err(e)) => {
                open.push(Open { entry, holds });
                self.fail("create", &e);
                false
            }
            Some(Ok(info)) => {
                tracing::info!("batch {key}: created as {}", info.id);
                entry.batch_id = Some(info.id.clone());
                let ok = self.journal_append(
                    journal,
                    &Event::Created {
                        key,
                        batch_id: info.id,
                    },
                );
                self.ctx
                    .records
                    .counters
                    .batches_submitted
                    .fetch_add(1, Relaxed);
                // Each line is a request the provider runs (the summary counts them).
                self.ctx
                    .records
                    .counters
                    .requests
                    .fetch_add(entry.ids.len() as u64, Relaxed);
                open.push(Open { entry, holds });
                ok
            }
        }
    }

    /// An earlier run's batch whose creation was never journaled: found by its key, or created
    /// from its uploaded file, or (nothing uploaded) given up so its jobs go again.
    async fn recover(&self, journal: &mut Journal, o: &mut Open) -> Result<bool, ()> {
        let client = &self.ctx.client;
        let key = o.entry.key.clone();
        match self
            .call("list batches", || openai::find_by_key(client, &key, 20))
            .await
        {
            None => return Err(()),
            Some(Err(e)) => {
                self.fail("list batches", &e);
                return Err(());
            }
            Some(Ok(Some(info))) => {
                tracing::info!("batch {key}: found at the provider as {}", info.id);
                o.entry.batch_id = Some(info.id.clone());
                return self
                    .journal_append(
                        journal,
                        &Event::Created {
                            key,
                            batch_id: info.id,
                        },
                    )
                    .then_some(true)
                    .ok_or(());
            }
            Some(Ok(None)) => {}
        }
        let Some(file_id) = o.entry.file_id.clone() else {
            // Nothing was created, nothing uploaded we know of: its jobs go again.
            self.journal_append(
                journal,
                &Event::Ended {
                    key,
                    status: "never_submitted".into(),
                },
            );
            return Ok(false);
        };
        match self
            .create_once(&key, || openai::create(client, &file_id, &key))
            .await
        {
            None => Err(()),
            Some(Err(e)) => {
                self.fail("create", &e);
                Err(())
            }
            Some(Ok(info)) => {
                o.entry.batch_id = Some(info.id.clone());
                self.ctx
                    .records
                    .counters
                    .batches_submitted
                    .fetch_add(1, Relaxed);
                self.journal_append(
                    journal,
                    &Event::Created {
                        key,
                        batch_id: info.id,
                    },
                )
                .then_some(true)
                .ok_or(())
            }
        }
    }

    /// Reads a batch's results (its output and error files, or inline) into what each of its
    /// lines got.
    async fn outcomes(
        &self,
        info: &BatchInfo,
    ) -> Option<Result<HashMap<String, Outcome>, ApiError>> {
        let client = &self.ctx.client;
        let mut out = HashMap::new();
        let mut sources: Vec<(Vec<serde_json::Value>, bool)> = Vec::new();
        if let Some(inline) = &info.results {
            sources.push((inline.clone(), false));
        }
        for (file, is_errors) in [(&info.output_file_id, false), (&info.error_file_id, true)] {
            let Some(file) = file else { continue };
            let bytes = match self
                .call("download", || openai::content(client, file))
                .await?
            {
                Ok(b) => b,
                // An ended batch's file the provider no longer has: its lines were never
                // delivered, so they go again (asking again would answer 404 for ever).
                Err(e) if e.status == Some(404) => {
                    tracing::warn!(
                        "batch {}: the provider has lost its {} file {file} ({e}); its lines are submitted again",
                        info.id,
                        if is_errors { "error" } else { "output" }
                    );
                    continue;
                }
                Err(e) => return Some(Err(e)),
            };
            let values = bytes
                .split(|&b| b == b'\n')
                .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
                .filter_map(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
                .collect();
            sources.push((values, is_errors));
        }
        for (values, is_errors) in sources {
            for v in values {
                let Some(id) = v["custom_id"].as_str() else {
                    continue;
                };
                let status = v["response"]["status_code"].as_u64().map(|s| s as u16);
                let outcome = match (status, is_errors) {
                    (Some(200..=299), false) => Outcome::Answered(bytes::Bytes::from(
                        serde_json::to_vec(&v["response"]["body"]).unwrap_or_default(),
                    )),
                    (status, _) => {
                        let body = &v["response"]["body"];
                        let message = body["error"]["message"]
                            .as_str()
                            .or(v["error"]["message"].as_str())
                            .unwrap_or("failed in the batch")
                            .to_string();
                        // A line with no response was never run (the batch expired or was
                        // cancelled first): nothing was paid, it goes again.
                        let transient = match status {
                            Some(s) => s == 429 || s == 408 || s >= 500,
                            None => true,
                        };
                        Outcome::Refused {
                            status,
                            message,
                            transient,
                        }
                    }
                };
                out.insert(id.to_string(), outcome);
            }
        }
        Some(Ok(out))
    }

    /// The jobs of `ids`, read from the job file (their metadata and index go in the records).
    async fn jobs_of(&self, ids: HashSet<IdKey>) -> HashMap<IdKey, Job> {
        let input = self.input.clone();
        tokio::task::spawn_blocking(move || {
            let mut found = HashMap::new();
            if let Ok(jobs) = input.open() {
                for job in jobs.flatten() {
                    let k = job.id.key();
                    if ids.contains(&k) {
                        found.insert(k, job);
                    }
                }
            }
            found
        })
        .await
        .unwrap_or_default()
    }

    /// The record of one answered line.
    fn answered(
        &self,
        job: &Job,
        fingerprint: &str,
        body: &[u8],
        attempts: u32,
    ) -> (Box<Record>, Money) {
        let started = SystemTime::now();
        let mut r = base_record(job, started, attempts, Duration::ZERO);
        r.fingerprint = fingerprint.to_string();
        let c = match parse_completion(body) {
            Ok(c) => c,
            Err(message) => {
                r.status = Status::Failed;
                r.error = Some(RecordError {
                    kind: ErrorKind::BadResponse,
                    http_status: Some(200),
                    message,
                });
                return (r, Money::ZERO);
            }
        };
        let (cost, source) = self
            .ctx
            .money
            .cost_at(job, &job.model, &c, |p, u| p.batch_cost(u, job.images));
        r.cost_usd = cost.map(Money::usd);
        r.cost_source = source;
        let checked = self.ctx.records.answer_into(job, &mut r, c, Some(body));
        match checked {
            Ok(parsed) => r.parsed = parsed,
            Err(why) => {
                self.ctx
                    .records
                    .counters
                    .invalid(cost.unwrap_or(Money::ZERO));
                r.status = Status::Failed;
                r.error = Some(RecordError {
                    kind: ErrorKind::InvalidOutput,
                    http_status: None,
                    message: why,
                });
            }
        }
        (r, cost.unwrap_or(Money::ZERO))
    }

    /// The record of an answer this run did not ask for (beyond `--limit`, or a job edited or
    /// removed since it was submitted): paid for, so written with the request it answers and
    /// flagged when that is not the job file's request any more.
    fn unasked(
        &self,
        id: &str,
        fingerprint: &str,
        model: &str,
        job: Option<&Job>,
        body: &[u8],
    ) -> (Box<Record>, Money) {
        let gone;
        let (job, stale) = match job {
            Some(j) if j.fingerprint.to_string() == fingerprint => (j, None),
            Some(j) => (j, Some(Stale::JobChanged)),
            None => {
                gone = Job {
                    id: crate::job::JobId::new(id),
                    index: u64::MAX,
                    line: 0,
                    model: model.to_string(),
                    body: bytes::Bytes::new(),
                    fingerprint: crate::job::Fingerprint(0),
                    metadata: serde_json::Map::new(),
                    est_prompt_tokens: 0,
                    max_output_tokens: None,
                    choices: 1,
                    images: 0,
                    expect: crate::answer::Expect::Text,
                    image_files: Vec::new(),
                };
                (&gone, Some(Stale::JobRemoved))
            }
        };
        let (mut r, cost) = self.answered(job, fingerprint, body, 1);
        r.stale = stale;
        if let Some(s) = stale {
            tracing::debug!(
                "batch answer for {id}: {}; recorded with the request it answers (its cost counts)",
                match s {
                    Stale::JobChanged => "the job changed after the batch was submitted",
                    Stale::JobRemoved => "the job left the job file after the batch was submitted",
                }
            );
        }
        (r, cost)
    }

    /// Waits until every record sent so far is on disk (fsynced by the writer).
    async fn durable(&self, sent: u64) -> bool {
        let failed = self.write_failed.notified();
        tokio::pin!(failed);
        loop {
            if self.ctx.records.counters.durable.load(Relaxed) >= sent {
                return true;
            }
            tokio::select! {
                _ = &mut failed => return false,
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    }
}

/// The batch line for a job: OpenAI's Batch API input shape.
/// Local images are embedded into the line as the batch is built (`Err`: a file that can no
/// longer be read).
fn batch_line(job: &Job, out: &mut Vec<u8>) -> Result<(), String> {
    let embedded;
    let body: &[u8] = if job.image_files.is_empty() {
        &job.body
    } else {
        embedded = crate::job::image::embed(&job.body, &job.image_files)?;
        &embedded
    };
    out.extend_from_slice(b"{\"custom_id\":");
    let _ = serde_json::to_writer(&mut *out, job.id.as_str());
    out.extend_from_slice(b",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":");
    out.extend_from_slice(body);
    out.extend_from_slice(b"}\n");
    Ok(())
}

/// Batches being filled, one per model, with their size limits.
struct Chunks {
    by_model: HashMap<String, Chunk>,
    max_lines: usize,
    max_bytes: usize,
}

impl BatchEngine {
    /// Adds a job's line to its model's batch, submitting that batch first when the line would
    /// not fit. False when the run must stop.
    #[allow(clippy::too_many_arguments)]
    async fn enqueue(
        &self,
        journal: &mut Journal,
        chunks: &mut Chunks,
        open: &mut Vec<Open>,
        job: &Job,
        line: &[u8],
        worst: Money,
        holds: Vec<Hold>,
    ) -> bool {
        let max_lines = match self.learned_max_lines.load(Relaxed) {
            0 => chunks.max_lines,
            learned => learned.min(chunks.max_lines),
        };
        let full = chunks.by_model.get(&job.model).is_some_and(|c| {
            c.ids.len() >= max_lines || c.lines.len() + line.len() > chunks.max_bytes
        });
        if full {
            let c = chunks.by_model.remove(&job.model).unwrap_or_default();
            if !self.submit(journal, &job.model, c, open).await {
                return false;
            }
        }
        let c = chunks.by_model.entry(job.model.clone()).or_default();
        c.ids.push(job.id.to_string());
        c.fingerprints.push(job.fingerprint.to_string());
        c.lines.extend_from_slice(line);
        c.worst += worst;
        c.jobs.push((worst, holds));
        true
    }

    /// Submits every batch still filling, in model order. False when the run must stop.
    async fn submit_all(
        &self,
        journal: &mut Journal,
        chunks: &mut Chunks,
        open: &mut Vec<Open>,
    ) -> bool {
        let mut models: Vec<String> = chunks.by_model.keys().cloned().collect();
        models.sort();
        for model in models {
            let c = chunks.by_model.remove(&model).unwrap_or_default();
            if !self.submit(journal, &model, c, open).await {
                return false;
            }
        }
        true
    }

    /// A job whose line could not be built: recorded as failed, not sent.
    fn unsendable(&self, job: &Job, message: String) {
        let mut r = base_record(job, SystemTime::now(), 0, Duration::ZERO);
        r.status = Status::Failed;
        r.error = Some(RecordError {
            kind: ErrorKind::Client,
            http_status: None,
            message: format!("{message}; not sent (fix it, then re-run with --retry-failed)"),
        });
        self.ctx.records.send(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(message: &str) -> ApiError {
        ApiError {
            transient: false,
            message: message.into(),
            status: Some(400),
        }
    }

    #[test]
    fn a_refusal_that_states_the_batch_limit_is_read() {
        for (message, want) in [
            (
                "The batch has 12000 requests; the limit is 5000 requests per batch.",
                Some(5000),
            ),
            ("at most 5,000 requests in a batch", Some(5000)),
            ("Maximum of 2000 lines exceeded", Some(2000)),
            ("the file exceeds 200 MB", None),
            ("model is required", None),
        ] {
            assert_eq!(stated_limit(&refusal(message), 12_000), want, "{message}");
        }
        let not_400 = ApiError {
            status: Some(500),
            ..refusal("the limit is 10")
        };
        assert_eq!(stated_limit(&not_400, 100), None);
        assert_eq!(
            stated_limit(&refusal("the limit is 5000"), 4000),
            None,
            "not smaller"
        );
    }

    #[test]
    fn a_chunk_splits_by_lines_with_each_jobs_money() {
        let mut c = Chunk::default();
        for i in 0..5u64 {
            c.ids.push(format!("j{i}"));
            c.fingerprints.push(format!("f{i}"));
            c.lines
                .extend_from_slice(format!("{{\"custom_id\":\"j{i}\"}}\n").as_bytes());
            c.worst += Money(i + 1);
            c.jobs.push((Money(i + 1), Vec::new()));
        }
        let parts = c.split(2);
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].ids, ["j0", "j1"]);
        assert_eq!(parts[2].ids, ["j4"]);
        assert_eq!(
            parts[1].lines,
            b"{\"custom_id\":\"j2\"}\n{\"custom_id\":\"j3\"}\n"
        );
        assert_eq!(
            parts.iter().map(|p| p.worst.0).collect::<Vec<_>>(),
            [3, 7, 5]
        );
    }
}
