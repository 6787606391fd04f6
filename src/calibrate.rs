//! `estimate --calibrate N`: the estimate's token counts checked against the provider's own.
//! Offline, prompts are counted with o200k_base and OpenAI's framing; a server adds what it
//! adds (a chat template's special tokens, a default system prompt: SmolLM2's adds about 30 a
//! job) and tokenizes with its own vocabulary. N jobs of the file are sent with `max_tokens: 1`
//! (one token of answer each, their cost shown and held within `--max-cost`), each answer's
//! `prompt_tokens` set against the local count of the same request, and every model's prompt
//! tokens scaled by the ratio its calibration jobs showed.

use crate::config::RunConfig;
use crate::cost::{Money, Usage};
use crate::provider::{classify, Verdict};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// What the calibration requests showed, per model.
#[derive(Debug, Default, Clone)]
pub struct Calibration {
    /// Model -> (the provider's prompt tokens, the local count), summed over its requests.
    pub counts: BTreeMap<String, (u64, u64)>,
    pub requests: usize,
    /// What the calibration requests cost.
    pub cost: Money,
}

impl Calibration {
    /// Model -> the factor its prompt counts are scaled by.
    pub fn factors(&self) -> BTreeMap<String, f64> {
        self.counts
            .iter()
            .filter(|(_, (_, local))| *local > 0)
            .map(|(m, (theirs, local))| (m.clone(), *theirs as f64 / *local as f64))
            .collect()
    }

    pub fn render(&self) -> String {
        let mut s = format!(
            "calibrated with {} requests of 1 answer token each ({}):\n",
            self.requests, self.cost
        );
        for (m, (theirs, local)) in &self.counts {
            s.push_str(&format!(
                "  {m}: the provider counted {theirs} prompt tokens where the local count is {local} (x{:.2})\n",
                *theirs as f64 / (*local).max(1) as f64
            ));
        }
        s
    }
}

/// The request with one token of answer: no stream, one choice.
fn one_token(body: &[u8]) -> Option<(Vec<u8>, Value)> {
    let mut m: Map<String, Value> = serde_json::from_slice(body).ok()?;
    let key = if m.contains_key("max_completion_tokens") {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    m.insert(key.into(), Value::from(1));
    for k in ["stream", "stream_options", "n"] {
        m.remove(k);
    }
    let v = Value::Object(m);
    Some((serde_json::to_vec(&v).ok()?, v))
}

/// Sends the first `n` jobs of the run's job file with `max_tokens: 1` and counts.
pub async fn calibrate(cfg: &RunConfig, n: usize) -> Result<Calibration, String> {
    let (client, _mock) = crate::run::connect(cfg, 4)
        .await
        .map_err(|e| e.to_string())?;
    let mut jobs = Vec::new();
    for job in cfg.input.open().map_err(|e| e.to_string())? {
        let job = job.map_err(|e| e.to_string())?;
        if !job.image_files.is_empty() {
            continue;
        }
        if let Some(req) = one_token(&job.body) {
            jobs.push((job, req));
        }
        if jobs.len() >= n {
            break;
        }
    }
    // Within the cap before anything is sent: each at its worst case, one token of answer.
    if let Some(cap) = cfg.max_cost {
        let mut worst = Money::ZERO;
        for (job, (bytes, _)) in &jobs {
            if let Some(p) = cfg.prices.get(&job.model) {
                worst += p.worst_case(bytes.len().div_ceil(2) as u64, 1, job.images);
            }
        }
        if worst > cap {
            return Err(format!(
                "--calibrate {n}: the requests could cost up to {worst}, more than --max-cost {cap}"
            ));
        }
    }
    let bpe = tiktoken_rs::o200k_base_singleton();
    let mut c = Calibration::default();
    for (job, (bytes, value)) in jobs {
        let (attempt, _) = client.send(&bytes.into()).await;
        let done = match classify(attempt, std::time::SystemTime::now) {
            Verdict::Done(done) => done,
            Verdict::Retry { message, .. }
            | Verdict::Fail { message, .. }
            | Verdict::Abort { message, .. } => {
                return Err(format!("calibration request for {}: {message}", job.id))
            }
        };
        c.requests += 1;
        let Some(u) = done.usage else {
            return Err(format!(
                "calibration request for {}: the answer carries no usage to count by",
                job.id
            ));
        };
        c.cost += match (done.provider_cost, cfg.prices.get(&job.model)) {
            (Some(usd), _) => Money::from_usd(usd),
            (None, Some(p)) => p.cost(
                &Usage {
                    prompt: u.prompt,
                    completion: u.completion,
                    ..Usage::default()
                },
                job.images,
            ),
            (None, None) => Money::ZERO,
        };
        let local = crate::estimate::prompt_tokens(&value, bpe);
        let e = c.counts.entry(job.model.clone()).or_default();
        e.0 += u.prompt;
        e.1 += local;
    }
    if c.requests == 0 {
        return Err("--calibrate: no job of the file could be sent (only local images?)".into());
    }
    Ok(c)
}
