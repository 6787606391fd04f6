//! `bulkprompt estimate`: what a job file will cost and how long it will take, before anything
//! is sent. It streams the whole file, counts prompt tokens with a real BPE tokenizer
//! (OpenAI's o200k_base, offline; an approximation for other vendors' models), and prices the
//! output twice: the worst case (every job uses its whole `max_tokens`) and a typical case
//! (`--assume-output-tokens`, else the median answer length of an earlier output).

use crate::cost::{Money, PriceTable, Usage};
use crate::histogram::Histogram;
use crate::job::{InputError, InputSpec};
use crate::output::RecordHead;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// What to estimate.
#[derive(Debug, Clone)]
pub struct EstimateConfig {
    pub input: InputSpec,
    pub prices: PriceTable,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    /// Requests in flight (`--concurrency`), for the time when no limit is given.
    pub concurrency: Option<usize>,
    /// Per model, the provider's prompt count over the local one (`--calibrate`).
    pub calibrated: BTreeMap<String, f64>,
    /// Typical answer length, when the user knows it.
    pub assume_output_tokens: Option<u64>,
    /// Output allowance for jobs that set no max_tokens (the worst case).
    pub reserve_output_tokens: u64,
    /// An earlier output, whose median answer length is the typical case.
    pub output: Option<PathBuf>,
    /// Price at the batch APIs' prices.
    pub batch: bool,
}

/// One model's share of the job file.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ModelEstimate {
    pub model: String,
    pub jobs: u64,
    pub prompt_tokens: u64,
    /// Images sent (`image_url` parts), priced per image where the model has a price.
    pub images: u64,
    /// Output tokens if every job uses its whole allowance.
    pub output_tokens_worst: u64,
    /// Output tokens in the typical case, when one is known.
    pub output_tokens_typical: Option<u64>,
    /// Cost range in USD; null when the model has no known price.
    pub cost_typical_usd: Option<f64>,
    pub cost_worst_usd: Option<f64>,
    /// Jobs whose request repeats an earlier job's (what `--dedupe` would not buy).
    #[serde(default)]
    pub duplicate_jobs: u64,
    /// The model's end as its provider announced it ("retired on 2026-06-01 (replaced by
    /// ...)"), when the price table knows one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<String>,
}

/// The whole estimate (`--json` prints this).
#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    pub input: String,
    pub tokenizer: &'static str,
    pub jobs: u64,
    pub prompt_tokens: u64,
    pub images: u64,
    pub output_tokens_worst: u64,
    pub output_tokens_typical: Option<u64>,
    /// Where the typical answer length came from.
    pub typical_from: Option<String>,
    pub cost_typical_usd: Option<f64>,
    pub cost_worst_usd: f64,
    /// Priced at batch prices (`--mode batch`).
    pub batch_prices: bool,
    /// Jobs of models with no known price (not in the cost figures).
    pub unpriced_jobs: u64,
    /// Jobs whose request repeats an earlier job's, and what they would cost (typical where
    /// known, else at most): what `--dedupe` saves.
    pub duplicate_jobs: u64,
    pub dedupe_saves_usd: f64,
    /// Minutes the rate limits imply (typical case), when limits are given.
    pub minutes_at_limits: Option<f64>,
    /// Requests in flight the time is reckoned at without limits.
    pub concurrency: usize,
    /// Prompt counts scaled by what the provider counted (`--calibrate`).
    pub calibrated: bool,
    pub models: Vec<ModelEstimate>,
}

/// Tokens a chat request's messages take, by OpenAI's counting: the text of each message plus
/// three tokens of framing, plus three to prime the answer.
pub fn prompt_tokens(body: &Value, bpe: &tiktoken_rs::CoreBPE) -> u64 {
    let Some(messages) = body.get("messages").and_then(Value::as_array) else {
        return 0;
    };
    let text = |v: &Value| -> u64 {
        match v {
            Value::String(s) => bpe.count_ordinary(s) as u64,
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .map(|t| bpe.count_ordinary(t) as u64)
                .sum(),
            _ => 0,
        }
    };
    3 + messages
        .iter()
        .map(|m| 3 + m.get("content").map_or(0, text) + m.get("role").map_or(0, text))
        .sum::<u64>()
}

/// The median `completion_tokens` of ok records in an earlier output.
fn median_answer(path: &std::path::Path) -> Option<u64> {
    let file = std::fs::File::open(path).ok()?;
    let mut h = Histogram::default();
    let reader = std::io::BufReader::new(file);
    for line in std::io::BufRead::lines(reader).map_while(Result::ok) {
        if let Ok(head) = serde_json::from_str::<RecordHead>(&line) {
            if let (crate::output::Status::Ok, Some(c)) = (head.status, head.output_tokens()) {
                h.record(c);
            }
        }
    }
    h.quantile(0.5)
}

/// Reads the whole job file and estimates it. Sends nothing.
pub fn estimate(cfg: &EstimateConfig) -> Result<Estimate, InputError> {
    let (typical, typical_from) = typical_answer(cfg);
    let models = count_models(cfg, typical)?;
    let mut e = Estimate {
        input: cfg.input.path.display().to_string(),
        tokenizer: "o200k_base (exact for current OpenAI models, an approximation for others)",
        jobs: 0,
        prompt_tokens: 0,
        images: 0,
        output_tokens_worst: 0,
        output_tokens_typical: typical.map(|_| 0),
        typical_from,
        cost_typical_usd: typical.map(|_| 0.0),
        cost_worst_usd: 0.0,
        batch_prices: cfg.batch,
        unpriced_jobs: 0,
        duplicate_jobs: 0,
        dedupe_saves_usd: 0.0,
        minutes_at_limits: None,
        concurrency: cfg.concurrency.unwrap_or(64).max(1),
        calibrated: !cfg.calibrated.is_empty(),
        models: Vec::new(),
    };
    let (mut worst_total, mut typical_total) = (Money::ZERO, Money::ZERO);
    for (_, mut m) in models {
        let (worst, typ) = price_model(cfg, &mut m);
        if worst.is_none() {
            e.unpriced_jobs += m.jobs;
        }
        worst_total += worst.unwrap_or(Money::ZERO);
        typical_total += typ.unwrap_or(Money::ZERO);
        e.jobs += m.jobs;
        e.duplicate_jobs += m.duplicate_jobs;
        if let Some(c) = typ.or(worst) {
            e.dedupe_saves_usd += c.usd() * m.duplicate_jobs as f64 / m.jobs.max(1) as f64;
        }
        e.prompt_tokens += m.prompt_tokens;
        e.images += m.images;
        e.output_tokens_worst += m.output_tokens_worst;
        if let (Some(t), Some(mt)) = (e.output_tokens_typical.as_mut(), m.output_tokens_typical) {
            *t += mt;
        }
        e.models.push(m);
    }
    e.cost_worst_usd = worst_total.usd();
    e.cost_typical_usd = e.cost_typical_usd.map(|_| typical_total.usd());
    let tokens = e.prompt_tokens + e.output_tokens_typical.unwrap_or(e.output_tokens_worst);
    let by_requests = cfg.rpm.map(|r| e.jobs as f64 / r as f64);
    let by_tokens = cfg.tpm.map(|t| tokens as f64 / t as f64);
    e.minutes_at_limits = match (by_requests, by_tokens) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    Ok(e)
}

/// A typical answer's length, and where it comes from: `--assume-output-tokens`, else the
/// median of an earlier output's answers.
fn typical_answer(cfg: &EstimateConfig) -> (Option<u64>, Option<String>) {
    match (
        cfg.assume_output_tokens,
        cfg.output.as_deref().and_then(median_answer),
    ) {
        (Some(n), _) => (Some(n), Some("--assume-output-tokens".to_string())),
        (None, Some(m)) => (
            Some(m),
            cfg.output
                .as_ref()
                .map(|p| format!("median answer length in {}", p.display())),
        ),
        (None, None) => (
            Some(ASSUMED_ANSWER_TOKENS),
            Some(format!(
                "an assumed {ASSUMED_ANSWER_TOKENS} tokens an answer: no earlier output; --assume-output-tokens N"
            )),
        ),
    }
}

/// The typical answer when nothing better is known: a label with a short reason, a few
/// sentences of summary. Shown as an assumption wherever it is used.
const ASSUMED_ANSWER_TOKENS: u64 = 100;

/// Per model: its jobs, prompt tokens (counted with o200k_base), images, and the output each
/// may be billed (every choice, `n`, its own), worst and typical.
fn count_models(
    cfg: &EstimateConfig,
    typical: Option<u64>,
) -> Result<BTreeMap<String, ModelEstimate>, InputError> {
    let bpe = tiktoken_rs::o200k_base_singleton();
    let mut models: BTreeMap<String, ModelEstimate> = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    for job in cfg.input.open()? {
        let job = job?;
        let body: Value = serde_json::from_slice(&job.body).unwrap_or(Value::Null);
        let m = models
            .entry(job.model.clone())
            .or_insert_with(|| ModelEstimate {
                model: job.model.clone(),
                ..Default::default()
            });
        m.jobs += 1;
        if !seen.insert(job.fingerprint.0) {
            m.duplicate_jobs += 1;
        }
        m.prompt_tokens += prompt_tokens(&body, bpe);
        m.images += u64::from(job.images);
        let allowance = job
            .max_output_tokens
            .map_or(cfg.reserve_output_tokens, u64::from)
            .saturating_mul(u64::from(job.choices.max(1)));
        m.output_tokens_worst += allowance;
        if let Some(t) = typical {
            *m.output_tokens_typical.get_or_insert(0) += t.min(allowance);
        }
    }
    if models.is_empty() {
        return Err(InputError::Empty {
            file: cfg.input.path.clone(),
        });
    }
    Ok(models)
}

/// A model's worst and typical cost (live or batch prices), its prompt count scaled by the
/// calibration when there is one. `None`: no price is known.
fn price_model(cfg: &EstimateConfig, m: &mut ModelEstimate) -> (Option<Money>, Option<Money>) {
    if let Some(f) = cfg.calibrated.get(&m.model) {
        m.prompt_tokens = (m.prompt_tokens as f64 * f).round() as u64;
    }
    let cost = |out: u64| {
        cfg.prices.get(&m.model).map(|p| {
            let u = Usage {
                prompt: m.prompt_tokens,
                completion: out,
                ..Usage::default()
            };
            let images = u32::try_from(m.images).unwrap_or(u32::MAX);
            match cfg.batch {
                true => p.batch_cost(&u, images),
                false => p.cost(&u, images),
            }
        })
    };
    let worst = cost(m.output_tokens_worst);
    let typ = m.output_tokens_typical.and_then(cost);
    m.lifecycle = cfg
        .prices
        .lifecycle(&m.model)
        .and_then(|l| l.say(&crate::cost::today()));
    m.cost_worst_usd = worst.map(Money::usd);
    m.cost_typical_usd = typ.map(Money::usd);
    (worst, typ)
}

impl Estimate {
    /// The models of the job file with no known price.
    pub fn unpriced_models(&self) -> Vec<&str> {
        self.models
            .iter()
            .filter(|m| m.cost_worst_usd.is_none())
            .map(|m| m.model.as_str())
            .collect()
    }
}

/// `estimate --model A --model B`: a row a model, live and batch, typical and at most.
pub fn comparison(rows: &[(String, Estimate, Estimate)]) -> String {
    let mut s = format!(
        "{:<36} {:>9} {:>13} {:>13} {:>13} {:>13} {:>13}  time\n",
        "model", "jobs", "prompt tok", "typical", "at most", "batch typ.", "batch most"
    );
    let money =
        |v: Option<f64>| v.map_or("no price".to_string(), |u| Money::from_usd(u).to_string());
    for (m, live, batch) in rows {
        let priced = live.unpriced_jobs < live.jobs;
        let (worst, bworst) = match priced {
            true => (Some(live.cost_worst_usd), Some(batch.cost_worst_usd)),
            false => (None, None),
        };
        s.push_str(&format!(
            "{:<36} {:>9} {:>13} {:>13} {:>13} {:>13} {:>13}  {}\n",
            m,
            thousands(live.jobs),
            thousands(live.prompt_tokens),
            money(live.cost_typical_usd.filter(|_| priced)),
            money(worst),
            money(batch.cost_typical_usd.filter(|_| priced)),
            money(bworst),
            human_minutes(live.minutes())
        ));
    }
    if let Some((_, first, _)) = rows.first() {
        if let Some(from) = &first.typical_from {
            s.push_str(&format!("typical: {from}; at most: every job using its whole max_tokens (what --max-cost reserves); jobs naming their own model keep it\n"));
        }
    }
    s
}

/// `1234567` -> `1,234,567`.
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn jobs(n: u64) -> String {
    match n {
        1 => "1 job".into(),
        n => format!("{} jobs", thousands(n)),
    }
}

/// Seconds an answer is assumed to take, for the time without `--rpm`/`--tpm`.
const ASSUMED_SECS: f64 = 1.0;

impl Estimate {
    /// Minutes the run would take: at the given limits, or at the assumed concurrency.
    pub fn minutes(&self) -> f64 {
        self.minutes_at_limits
            .unwrap_or_else(|| self.jobs as f64 / (self.concurrency as f64 * 60.0 / ASSUMED_SECS))
    }

    /// How long the run would take: at the given limits, or at an assumed concurrency.
    fn time_line(&self) -> String {
        match self.minutes_at_limits {
            Some(min) => format!(
                "  time at the given rate limits: about {}\n",
                human_minutes(min)
            ),
            None => {
                let per_minute = self.concurrency as f64 * 60.0 / ASSUMED_SECS;
                format!(
                    "  time: about {} assuming {} requests in flight of about a second each ({} a minute; a self-hosted server takes fewer at once); give --rpm/--tpm for your provider's limits\n",
                    human_minutes(self.jobs as f64 / per_minute),
                    self.concurrency,
                    thousands(per_minute as u64)
                )
            }
        }
    }

    pub fn render(&self) -> String {
        let mut images = match self.images {
            0 => String::new(),
            n => format!(", {n} images (priced per image)"),
        };
        if self.batch_prices {
            images.push_str(", at batch prices");
        }
        let counted = match self.calibrated {
            true => format!("{}, scaled to the provider's own counts", self.tokenizer),
            false => self.tokenizer.to_string(),
        };
        let mut s = format!(
            "{}: {}, {} prompt tokens{images} ({})\n",
            self.input,
            jobs(self.jobs),
            thousands(self.prompt_tokens),
            counted
        );
        for m in &self.models {
            let range = match (m.cost_typical_usd, m.cost_worst_usd) {
                (_, None) => "no known price".to_string(),
                (Some(t), Some(w)) => format!(
                    "{} typical, {} at most",
                    Money::from_usd(t),
                    Money::from_usd(w)
                ),
                (None, Some(w)) => format!("at most {}", Money::from_usd(w)),
            };
            s.push_str(&format!(
                "  {:<36} {:>12}  {:>13} in  {:>13} out at most  {}\n",
                m.model,
                jobs(m.jobs),
                thousands(m.prompt_tokens),
                thousands(m.output_tokens_worst),
                range
            ));
            if let Some(life) = &m.lifecycle {
                s.push_str(&format!("    {}: {life}\n", m.model));
            }
        }
        match (self.cost_typical_usd, &self.typical_from) {
            _ if self.unpriced_jobs == self.jobs => s.push_str(
                "  total: no price is known for any of these models: the cost cannot be told\n",
            ),
            (Some(t), Some(from)) => s.push_str(&format!(
                "  total: {} typical ({} output tokens, from {from}), {} at most\n",
                Money::from_usd(t),
                self.output_tokens_typical.unwrap_or(0),
                Money::from_usd(self.cost_worst_usd)
            )),
            _ => s.push_str(&format!(
                "  total: at most {} (every job using its whole max_tokens; --assume-output-tokens N gives a typical figure)\n",
                Money::from_usd(self.cost_worst_usd)
            )),
        }
        if self.duplicate_jobs > 0 && self.unpriced_jobs < self.jobs {
            s.push_str(&format!(
                "  {} jobs ({:.1}%) repeat an earlier job's request: --dedupe would send each once and save about {}\n",
                self.duplicate_jobs,
                self.duplicate_jobs as f64 * 100.0 / self.jobs.max(1) as f64,
                Money::from_usd(self.dedupe_saves_usd)
            ));
        }
        if self.unpriced_jobs > 0 {
            s.push_str(&format!(
                "  {} jobs are for models with no known price ({}): not in the totals; add prices with --prices FILE\n",
                self.unpriced_jobs,
                self.unpriced_models().join(", ")
            ));
        }
        s.push_str(&self.time_line());
        s
    }
}

fn human_minutes(min: f64) -> String {
    if min < 1.0 {
        format!("{:.0} s", min * 60.0)
    } else if min < 120.0 {
        format!("{min:.1} min")
    } else {
        format!("{:.1} h", min / 60.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_messages_like_openai() {
        let bpe = tiktoken_rs::o200k_base_singleton();
        let body = serde_json::json!({"messages": [{"role": "user", "content": "Hello world"}]});
        // "Hello world" is 2 tokens, "user" 1, plus 3 framing and 3 priming.
        assert_eq!(prompt_tokens(&body, bpe), 2 + 1 + 3 + 3);
    }

    #[test]
    fn numbers_read_easily() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(jobs(1), "1 job");
        assert_eq!(jobs(20000), "20,000 jobs");
    }

    #[test]
    fn minutes_format() {
        assert_eq!(human_minutes(0.5), "30 s");
        assert_eq!(human_minutes(90.0), "90.0 min");
        assert_eq!(human_minutes(600.0), "10.0 h");
    }
}
