//! A batch run's life, as stages: open the journal (and find lost batches again), submit what
//! this run must send, then until every batch has ended: poll, collect what ended (every
//! line's record written, its money counted), settle the holds and journal the end, and send
//! what a batch left unanswered again (in new batches, or live with `--batch-fallback live`).

use super::*;

/// A batch run's state between its stages.
struct Batches {
    journal: Journal,
    open: Vec<Open>,
    /// Per id: the batches it was in, over every run.
    attempts: HashMap<IdKey, u32>,
    /// Ids in an open batch, or submitted by this run.
    taken: HashSet<IdKey>,
    /// This run's decision for each id it was handed and has not recorded yet.
    decisions: HashMap<IdKey, Decision>,
    /// Ids given a record from a batch this run (an id can be in two ended batches).
    recorded_now: HashSet<IdKey>,
    chunks: Chunks,
    end: EngineEnd,
    /// Records handed to the writer, which must be on disk before batches are marked ended.
    sent: u64,
}

/// The run stops here; its `end` says how it ended.
struct Stop;

/// A line of an ended batch: its id, the fingerprint it was sent with, what it said, and the
/// batch's status.
struct Line {
    id: String,
    fingerprint: String,
    outcome: Option<Outcome>,
    batch_status: String,
}

/// What recording one line did.
enum Recorded {
    /// A record written; its cost.
    Paid(Money),
    /// Failed for a passing reason: sent again.
    Again(IdKey),
    /// Not this run's to send, written all the same; whether its job changed or left.
    Unasked { cost: Money, stale: bool },
    /// Nothing to write.
    Nothing,
}

/// Whether a job went into a batch.
enum Admitted {
    Yes,
    /// Not sendable: recorded as failed.
    Unsendable,
    /// The cap or a stop: no more jobs.
    NoMore,
}

impl Engine for BatchEngine {
    async fn execute(self, intake: &mut Intake<'_>) -> EngineEnd {
        let mut b = match self.open_journal().await {
            Ok(b) => b,
            Err(end) => return end,
        };
        let _ = self.life(&mut b, intake).await;
        b.end
    }
}

impl BatchEngine {
    /// The journal replayed: batches of earlier runs (and those found again at the provider
    /// when the journal is gone) open, with their money committed.
    async fn open_journal(&self) -> Result<Batches, EngineEnd> {
        let end = EngineEnd::default();
        // No journal where a run of this output would have left one: look at the provider.
        let gone = !self.journal.exists() && self.settings.api == BatchApi::OpenAi;
        let (mut journal, replay) = match Journal::open(&self.journal) {
            Ok(j) => j,
            Err(e) => {
                self.ctx.abort(format!("batch journal: {e}"));
                return Err(end);
            }
        };
        let mut open: Vec<Open> = Vec::new();
        if gone && self.rediscover(&mut journal, &mut open).await.is_err() {
            return Err(end);
        }
        for entry in replay.open {
            // Submitted by an earlier run: its money is committed whatever the cap says now.
            let holds = self.committed(entry.worst);
            open.push(Open { entry, holds });
        }
        let mut kept = Vec::new();
        for mut o in open {
            if o.entry.batch_id.is_some() {
                kept.push(o);
                continue;
            }
            match self.recover(&mut journal, &mut o).await {
                Ok(true) => kept.push(o),
                Ok(false) => {}
                Err(()) => return Err(end),
            }
        }
        if !kept.is_empty() {
            tracing::info!(
                "{} batches of earlier runs are still open: collecting them",
                kept.len()
            );
        }
        let taken = kept
            .iter()
            .flat_map(|o| o.entry.ids.iter().map(|id| IdKey::of(id.as_bytes())))
            .collect();
        Ok(Batches {
            journal,
            open: kept,
            attempts: replay.attempts,
            taken,
            decisions: HashMap::new(),
            recorded_now: HashSet::new(),
            chunks: Chunks {
                by_model: HashMap::new(),
                max_lines: self.settings.max_lines.max(1),
                max_bytes: self.settings.max_bytes.max(1024),
            },
            end,
            sent: 0,
        })
    }

    /// Submit, then poll and collect until every batch has ended.
    async fn life(&self, b: &mut Batches, intake: &mut Intake<'_>) -> Result<(), Stop> {
        let ctx = &self.ctx;
        self.submit_intake(b, intake).await?;
        if ctx.aborted() || ctx.control.shutdown.phase() >= Phase::Draining {
            return Err(Stop);
        }
        if self.settings.no_wait {
            b.end.submitted = b.open.len() as u64;
            return Ok(());
        }
        let poll = self.settings.poll.max(Duration::from_secs(1));
        b.sent = ctx.records.counters.written.load(Relaxed);
        let mut first = true;
        while !b.open.is_empty() {
            if !first {
                tokio::select! {
                    _ = tokio::time::sleep(poll) => {}
                    _ = ctx.stopping() => return Err(Stop),
                }
            }
            first = false;
            let ended = self.poll(b).await?;
            if ended.is_empty() {
                continue;
            }
            let again = self.collect(b, intake, ended).await?;
            if again.is_empty() {
                continue;
            }
            if self.settings.fallback_live {
                self.send_live(b, again).await;
            } else {
                self.resubmit(b, again).await?;
            }
        }
        Ok(())
    }

    /// Every job this run's intake hands over that no open batch holds, into batches as
    /// they fill.
    async fn submit_intake(&self, b: &mut Batches, intake: &mut Intake<'_>) -> Result<(), Stop> {
        loop {
            let next = tokio::select! {
                j = intake.next() => j,
                _ = self.ctx.stopping() => None,
            };
            let Some((job, decision)) = next else { break };
            let k = job.id.key();
            b.decisions.insert(k, decision);
            if b.taken.contains(&k) {
                continue;
            }
            match self.admit(b, &job).await? {
                Admitted::Yes => {}
                Admitted::Unsendable => {
                    b.decisions.remove(&k);
                    b.end.recorded(decision);
                }
                Admitted::NoMore => break,
            }
        }
        self.flush(b).await
    }

    /// A job's worst case held and its line put in its model's batch.
    async fn admit(&self, b: &mut Batches, job: &Job) -> Result<Admitted, Stop> {
        let worst = self.worst(job);
        let holds: Vec<Hold> = match self.ctx.reserve(|| worst).await {
            Ok(h) => h.into_iter().collect(),
            Err(NoHold::Cap(cap)) => {
                // The rest stay pending for a run with a larger cap.
                b.end.cap_reached = Some(cap);
                return Ok(Admitted::NoMore);
            }
            Err(NoHold::Stopped) => return Ok(Admitted::NoMore),
        };
        let mut line = Vec::with_capacity(job.body.len() + 96);
        if let Err(e) = batch_line(job, &mut line) {
            drop(holds);
            self.unsendable(job, e);
            return Ok(Admitted::Unsendable);
        }
        let (journal, chunks, open) = (&mut b.journal, &mut b.chunks, &mut b.open);
        if !self
            .enqueue(journal, chunks, open, job, &line, worst, holds)
            .await
        {
            return Err(Stop);
        }
        let k = job.id.key();
        b.taken.insert(k);
        *b.attempts.entry(k).or_default() += 1;
        Ok(Admitted::Yes)
    }

    /// Submits every batch still filling.
    async fn flush(&self, b: &mut Batches) -> Result<(), Stop> {
        match self
            .submit_all(&mut b.journal, &mut b.chunks, &mut b.open)
            .await
        {
            true => Ok(()),
            false => Err(Stop),
        }
    }

    /// Asks for every open batch; returns those that ended, and keeps the rest open.
    async fn poll(&self, b: &mut Batches) -> Result<Vec<(Open, BatchInfo)>, Stop> {
        let mut ended = Vec::new();
        for o in std::mem::take(&mut b.open) {
            let Some(id) = o.entry.batch_id.clone() else {
                continue;
            };
            let client = &self.ctx.client;
            match self.call("poll", || openai::get(client, &id)).await {
                None => return Err(Stop),
                Some(Err(e)) => {
                    self.fail("poll", &e);
                    return Err(Stop);
                }
                Some(Ok(info)) if info.ended() => ended.push((o, info)),
                Some(Ok(info)) => {
                    let c = info.request_counts.unwrap_or_default();
                    tracing::info!(
                        "batch {id}: {} ({} of {} done)",
                        info.status,
                        c.completed + c.failed,
                        c.total
                    );
                    b.open.push(o);
                }
            }
        }
        Ok(ended)
    }

    /// Every line of the ended batches recorded, on disk, the holds settled and the batches
    /// journaled as ended. Returns the ids to send again.
    async fn collect(
        &self,
        b: &mut Batches,
        intake: &Intake<'_>,
        ended: Vec<(Open, BatchInfo)>,
    ) -> Result<HashSet<IdKey>, Stop> {
        let lines = self.download(&ended).await?;
        // Every line's job, handed over by this run's intake or not: a batch's answers are
        // paid for whatever this run was asked to do (`--limit`, an edited job file).
        let wanted = lines
            .iter()
            .map(|(l, _)| IdKey::of(l.id.as_bytes()))
            .collect();
        let jobs = self.jobs_of(wanted).await;
        let models: Vec<&str> = ended.iter().map(|(o, _)| o.entry.model.as_str()).collect();
        let mut again = HashSet::new();
        let mut spent: HashMap<usize, Money> = HashMap::new();
        let (mut unasked, mut stale) = (0u64, 0u64);
        for (line, at) in lines {
            match self.record(b, intake, &jobs, models[at], line) {
                Recorded::Paid(cost) => *spent.entry(at).or_default() += cost,
                Recorded::Again(k) => {
                    again.insert(k);
                }
                Recorded::Unasked { cost, stale: s } => {
                    unasked += 1;
                    stale += u64::from(s);
                    *spent.entry(at).or_default() += cost;
                }
                Recorded::Nothing => {}
            }
        }
        if unasked > 0 {
            tracing::warn!(
                "{unasked} answers of the collected batches were not asked for by this run ({stale} of them for jobs edited or removed since, the rest beyond --limit or another run's); written all the same, their cost counted"
            );
        }
        // The records are on disk before the batches are marked collected.
        if !self.durable(b.sent).await {
            return Err(Stop);
        }
        self.settle(b, ended, &spent)?;
        Ok(again)
    }

    /// Every line of the ended batches, with the index of its batch.
    async fn download(&self, ended: &[(Open, BatchInfo)]) -> Result<Vec<(Line, usize)>, Stop> {
        let mut lines = Vec::new();
        for (at, (o, info)) in ended.iter().enumerate() {
            tracing::info!(
                "batch {}: {}, downloading its results",
                info.id,
                info.status
            );
            let mut got = match self.outcomes(info).await {
                None => return Err(Stop),
                Some(Err(e)) => {
                    self.fail("download", &e);
                    return Err(Stop);
                }
                Some(Ok(m)) => m,
            };
            for (id, fp) in o.entry.ids.iter().zip(&o.entry.fingerprints) {
                let line = Line {
                    id: id.clone(),
                    fingerprint: fp.clone(),
                    outcome: got.remove(id),
                    batch_status: info.status.clone(),
                };
                lines.push((line, at));
            }
        }
        Ok(lines)
    }

    /// One line's record, handed to the writer.
    fn record(
        &self,
        b: &mut Batches,
        intake: &Intake<'_>,
        jobs: &HashMap<IdKey, Job>,
        model: &str,
        line: Line,
    ) -> Recorded {
        let ctx = &self.ctx;
        let k = IdKey::of(line.id.as_bytes());
        let Some(decision) = b.decisions.get(&k).copied() else {
            return self.record_unasked(b, intake, jobs.get(&k), model, line);
        };
        let Some(job) = jobs.get(&k) else {
            return Recorded::Nothing;
        };
        b.recorded_now.insert(k);
        let tries = b.attempts.get(&k).copied().unwrap_or(1);
        let (mut record, cost) = match line.outcome {
            Some(Outcome::Answered(body)) => {
                let (mut r, cost) = self.answered(job, &line.fingerprint, &body, tries);
                if job.fingerprint.to_string() != line.fingerprint {
                    r.stale = Some(Stale::JobChanged);
                }
                (r, cost)
            }
            refused => {
                let (status, message, transient) = match refused {
                    Some(Outcome::Refused {
                        status,
                        message,
                        transient,
                    }) => (status, message, transient),
                    _ => (
                        None,
                        format!("not answered before the batch was {}", line.batch_status),
                        true,
                    ),
                };
                if transient && tries < ctx.policy.max_attempts {
                    return Recorded::Again(k);
                }
                let message = match transient {
                    true => format!("{message} (in {tries} batches)"),
                    false => message,
                };
                let r = failed_line(job, line.fingerprint, status, message, tries);
                (r, Money::ZERO)
            }
        };
        b.decisions.remove(&k);
        b.end.recorded(decision);
        b.sent += 1;
        ctx.records.with_prompt(job, &mut record);
        ctx.records.send(record);
        Recorded::Paid(cost)
    }

    /// A line this run was not asked to send: an answer is still written (and its money
    /// counted) unless the output already has it.
    fn record_unasked(
        &self,
        b: &mut Batches,
        intake: &Intake<'_>,
        job: Option<&Job>,
        model: &str,
        line: Line,
    ) -> Recorded {
        let k = IdKey::of(line.id.as_bytes());
        let Some(Outcome::Answered(body)) = line.outcome else {
            return Recorded::Nothing;
        };
        let known = crate::job::Fingerprint::parse(&line.fingerprint)
            .is_some_and(|f| intake.checkpoint().is_done(k, f));
        if known || !b.recorded_now.insert(k) {
            return Recorded::Nothing;
        }
        let (r, cost) = self.unasked(&line.id, &line.fingerprint, model, job, &body);
        let stale = r.stale.is_some();
        b.sent += 1;
        self.ctx.records.send(r);
        Recorded::Unasked { cost, stale }
    }

    /// Each ended batch's holds settled at what its lines cost, and its end journaled.
    fn settle(
        &self,
        b: &mut Batches,
        ended: Vec<(Open, BatchInfo)>,
        spent: &HashMap<usize, Money>,
    ) -> Result<(), Stop> {
        for (i, (o, info)) in ended.into_iter().enumerate() {
            let cost = spent.get(&i).copied().unwrap_or(Money::ZERO);
            let mut holds = o.holds.into_iter();
            if let Some(h) = holds.next() {
                h.settle(cost);
            }
            drop(holds);
            let event = Event::Ended {
                key: o.entry.key.clone(),
                status: info.status.clone(),
            };
            if !self.journal_append(&mut b.journal, &event) {
                return Err(Stop);
            }
        }
        Ok(())
    }

    /// `--batch-fallback live`: what a batch left unanswered goes live now.
    async fn send_live(&self, b: &mut Batches, again: HashSet<IdKey>) {
        let ctx = &self.ctx;
        tracing::info!("{} jobs a batch left unanswered are sent live", again.len());
        let mut jobs: Vec<Job> = self.jobs_of(again).await.into_values().collect();
        jobs.sort_by_key(|j| j.index);
        let permits = Arc::new(tokio::sync::Semaphore::new(64));
        let mut tasks = tokio::task::JoinSet::new();
        for job in jobs {
            let Some(decision) = b.decisions.remove(&job.id.key()) else {
                continue;
            };
            let hold = match ctx.reserve(|| ctx.money.worst_case(&job)).await {
                Ok(h) => h,
                Err(NoHold::Cap(cap)) => {
                    b.end.cap_reached = Some(cap);
                    break;
                }
                Err(NoHold::Stopped) => break,
            };
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let grant = tokio::select! {
                g = ctx.acquire(ctx.pacing.charge(&job)) => match g {
                    Some(g) => g,
                    None => break,
                },
                _ = ctx.stopping() => break,
            };
            let ctx = ctx.clone();
            tasks.spawn(async move {
                let r =
                    super::super::task::run_job(ctx, Box::new(job), decision, grant, hold).await;
                drop(permit);
                (decision, r)
            });
        }
        // A stop that cannot wait drops the calls in flight (each job writes the answer it
        // already paid for as its task is dropped): job tasks do not each watch for it.
        let now = ctx.control.shutdown.reached(crate::shutdown::Phase::Now);
        tokio::pin!(now);
        let mut dropped = false;
        loop {
            let r = tokio::select! {
                r = tasks.join_next() => r,
                _ = &mut now, if !dropped => {
                    dropped = true;
                    tasks.abort_all();
                    continue;
                }
            };
            let Some(r) = r else { break };
            if let Ok((decision, super::super::task::TaskEnd::Recorded)) = r {
                b.end.recorded(decision);
                b.sent += 1;
            }
        }
        ctx.records.count_dropped(&mut b.end);
    }

    /// Lines that failed for a passing reason go into new batches.
    async fn resubmit(&self, b: &mut Batches, again: HashSet<IdKey>) -> Result<(), Stop> {
        tracing::info!("{} jobs go into new batches", again.len());
        for k in &again {
            b.taken.remove(k);
        }
        let mut jobs: Vec<Job> = self.jobs_of(again).await.into_values().collect();
        jobs.sort_by_key(|j| j.index);
        for job in jobs {
            match self.admit(b, &job).await? {
                Admitted::Yes => {}
                Admitted::Unsendable => {
                    if let Some(d) = b.decisions.remove(&job.id.key()) {
                        b.end.recorded(d);
                        b.sent += 1;
                    }
                }
                Admitted::NoMore => break,
            }
        }
        self.flush(b).await
    }
}

/// The record of a line the provider refused for good (or too often).
fn failed_line(
    job: &Job,
    fingerprint: String,
    status: Option<u16>,
    message: String,
    tries: u32,
) -> Box<Record> {
    let mut r = base_record(job, SystemTime::now(), tries, Duration::ZERO);
    r.fingerprint = fingerprint;
    r.status = Status::Failed;
    r.error = Some(RecordError {
        kind: match status {
            Some(429) => ErrorKind::RateLimited,
            Some(s) if s >= 500 => ErrorKind::Server,
            Some(_) => ErrorKind::Client,
            None => ErrorKind::Server,
        },
        http_status: status,
        message,
    });
    r
}
