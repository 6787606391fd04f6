//! Money. Prices come from an embedded TOML table (`src/prices.toml`) that a user file can
//! override. Amounts are kept as whole picodollars (10^-12 USD): a price of $0.075 per million
//! tokens is exactly 75,000 picodollars a token, so sums over millions of records do not drift.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

const EMBEDDED: &str = include_str!("prices.toml");

/// An amount of US dollars in picodollars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Money(pub u64);

impl Money {
    pub const ZERO: Money = Money(0);

    pub fn from_usd(usd: f64) -> Money {
        Money((usd.max(0.0) * 1e12).round() as u64)
    }
    pub fn usd(self) -> f64 {
        self.0 as f64 / 1e12
    }

    /// Four significant figures, for a progress line: `$0.005610`, `$12.35`.
    pub fn short(self) -> String {
        let usd = self.usd();
        if usd >= 1.0 {
            format!("${usd:.2}")
        } else {
            format!("${usd:.6}")
        }
    }
}

impl std::ops::Add for Money {
    type Output = Money;
    fn add(self, o: Money) -> Money {
        Money(self.0.saturating_add(o.0))
    }
}

impl std::ops::AddAssign for Money {
    fn add_assign(&mut self, o: Money) {
        *self = *self + o;
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Micro-dollar precision is what a person reads; the record keeps the exact float.
        let micros = (self.0 + 500_000) / 1_000_000;
        write!(f, "${}.{:06}", micros / 1_000_000, micros % 1_000_000)
    }
}

/// One model's prices, in picodollars per token (or per image).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    pub input: u64,
    pub output: u64,
    /// Price of cached input tokens; the input price where none is published.
    pub cached_input: Option<u64>,
    /// Price of input tokens written to the provider's cache (OpenRouter's
    /// `cache_write_tokens`), where the provider documents one; the input price otherwise.
    pub cache_write: Option<u64>,
    pub image: Option<u64>,
    /// The batch price as thousandths of the live price; [`DEFAULT_BATCH_PERMILLE`] where
    /// none is given.
    pub batch_permille: Option<u32>,
}

/// Batch APIs charge half the live price: OpenAI's Batch API ("50% discount"), Gemini's Batch
/// Mode ("50% of the standard cost"), as both document it.
pub const DEFAULT_BATCH_PERMILLE: u32 = 500;

/// Token counts from a response's `usage`, as billed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt: u64,
    /// Output billed: `completion_tokens`, or more when the provider left the answer's
    /// reasoning out of it ([`OutputRule`]).
    pub completion: u64,
    /// Of `prompt`, read from the provider's cache.
    pub cached: u64,
    pub reasoning: u64,
    /// Of `prompt`, written to the provider's cache.
    pub cache_write: u64,
    /// What the provider said, when billing differs from it: its `completion_tokens`.
    pub reported_completion: Option<u64>,
    /// The provider's `total_tokens`, when it sent one.
    pub total: Option<u64>,
    /// How the billed output was read, when not as `completion_tokens`.
    pub rule: Option<OutputRule>,
}

/// How an answer's billed output is read when `completion_tokens` leaves its reasoning out
/// (gateways in front of Gemini report the visible answer only, the thinking in
/// `completion_tokens_details.reasoning_tokens` and in `total_tokens`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputRule {
    /// `total_tokens - prompt_tokens`, larger than `completion_tokens`.
    TotalMinusPrompt,
    /// No total, and reasoning larger than the completion: `completion + reasoning`.
    CompletionPlusReasoning,
}

impl OutputRule {
    pub fn as_str(self) -> &'static str {
        match self {
            OutputRule::TotalMinusPrompt => "total_minus_prompt",
            OutputRule::CompletionPlusReasoning => "completion_plus_reasoning",
        }
    }
}

impl Usage {
    /// Usage as a provider reported it, with the output billed as the larger of
    /// `completion_tokens` and `total_tokens - prompt_tokens` (and of completion + reasoning
    /// where the total is missing and reasoning exceeds the completion).
    pub fn reported(
        prompt: u64,
        completion: u64,
        total: Option<u64>,
        cached: u64,
        reasoning: u64,
        cache_write: u64,
    ) -> Usage {
        let (billed, rule) = match total {
            Some(t) if t.saturating_sub(prompt) > completion => {
                (t - prompt, Some(OutputRule::TotalMinusPrompt))
            }
            Some(_) => (completion, None),
            None if reasoning > completion => (
                completion + reasoning,
                Some(OutputRule::CompletionPlusReasoning),
            ),
            None => (completion, None),
        };
        Usage {
            prompt,
            completion: billed,
            cached,
            reasoning,
            cache_write,
            reported_completion: rule.map(|_| completion),
            total,
            rule,
        }
    }
}

impl Price {
    /// Cost of one response. Cached input tokens are part of `prompt` and are billed at the
    /// cached price; reasoning tokens are part of `completion` and billed as output; input
    /// images at the per-image price where one is published.
    pub fn cost(&self, u: &Usage, images: u32) -> Money {
        let cached = u.cached.min(u.prompt);
        let written = u.cache_write.min(u.prompt - cached);
        let fresh = u.prompt - cached - written;
        let cached_price = self.cached_input.unwrap_or(self.input);
        let write_price = self.cache_write.unwrap_or(self.input);
        Money(
            fresh
                .saturating_mul(self.input)
                .saturating_add(cached.saturating_mul(cached_price))
                .saturating_add(written.saturating_mul(write_price))
                .saturating_add(u.completion.saturating_mul(self.output))
                .saturating_add(u64::from(images).saturating_mul(self.image.unwrap_or(0))),
        )
    }

    /// Cost of one answer from a batch: the live cost at the batch share.
    pub fn batch_cost(&self, u: &Usage, images: u32) -> Money {
        let share = self.batch_permille.unwrap_or(DEFAULT_BATCH_PERMILLE);
        Money((u128::from(self.cost(u, images).0) * u128::from(share) / 1000) as u64)
    }

    /// The most a request can cost: every prompt token at the full input price, the whole
    /// output allowance, every image.
    pub fn worst_case(&self, prompt_tokens: u64, output_tokens: u64, images: u32) -> Money {
        let u = Usage {
            prompt: prompt_tokens,
            completion: output_tokens,
            ..Usage::default()
        };
        let full = Price {
            cached_input: None,
            cache_write: None,
            ..*self
        };
        // A cache write may cost more than a plain input token: the worst case takes it.
        let full = Price {
            input: self.input.max(self.cache_write.unwrap_or(0)),
            ..full
        };
        full.cost(&u, images)
    }
}

/// Errors reading a price table.
#[derive(Debug, thiserror::Error)]
pub enum PriceError {
    /// The file could not be read.
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a price table.
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TableFile {
    #[serde(default)]
    models: BTreeMap<String, Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    input: f64,
    output: f64,
    cached_input: Option<f64>,
    cache_write: Option<f64>,
    image: Option<f64>,
    /// The batch price as a share of the live price (0.5 where the provider documents half).
    batch: Option<f64>,
    source: Option<String>,
    read_on: Option<String>,
    /// The day the provider announced the model's end, and the day it stopped serving it.
    deprecated_on: Option<String>,
    retired_on: Option<String>,
    /// The model the provider names as its successor.
    replaced_by: Option<String>,
}

/// A model's end of life, as its provider announced it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lifecycle {
    pub deprecated_on: Option<String>,
    pub retired_on: Option<String>,
    pub replaced_by: Option<String>,
}

impl Lifecycle {
    /// Whether the model is retired on `today` (`YYYY-MM-DD`, compared as text).
    pub fn retired(&self, today: &str) -> bool {
        self.retired_on.as_deref().is_some_and(|d| d <= today)
    }

    /// "retired on 2026-06-01 (replaced by X)", or the deprecation when not retired yet.
    pub fn say(&self, today: &str) -> Option<String> {
        let then = |s: String| match &self.replaced_by {
            Some(r) => format!("{s} (replaced by {r}: --fallback-model {r})"),
            None => s,
        };
        match (&self.retired_on, &self.deprecated_on) {
            (Some(r), _) if r.as_str() <= today => Some(then(format!("retired on {r}"))),
            (Some(r), _) => Some(then(format!("to be retired on {r}"))),
            (None, Some(d)) => Some(then(format!("deprecated on {d}"))),
            (None, None) => None,
        }
    }
}

/// Today as `YYYY-MM-DD` (UTC).
pub fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs - secs % 86_400);
    humantime::format_rfc3339_seconds(t).to_string()[..10].to_string()
}

/// Dollars per million tokens to picodollars per token (the same digits, times 10^6).
fn per_million(usd: f64) -> u64 {
    (usd.max(0.0) * 1e6).round() as u64
}

/// The effective price table: embedded prices, overridden by a user file.
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    models: BTreeMap<String, Price>,
    /// Where each price was read, and on what day, as its file says.
    sources: BTreeMap<String, (Option<String>, Option<String>)>,
    /// Models whose end the provider announced.
    lifecycles: BTreeMap<String, Lifecycle>,
}

impl PriceTable {
    pub fn embedded() -> Self {
        let mut t = PriceTable::default();
        t.merge_str(EMBEDDED, "embedded prices.toml")
            .expect("embedded price table parses");
        t
    }

    /// The user's price file: `$XDG_CONFIG_HOME/bulkprompt/prices.toml`, else
    /// `~/.config/bulkprompt/prices.toml` (where `prices --sync` writes).
    pub fn user_file() -> Option<std::path::PathBuf> {
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|v| !v.is_empty())
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|h| std::path::PathBuf::from(h).join(".config"))
            })?;
        Some(base.join("bulkprompt").join("prices.toml"))
    }

    /// Embedded prices, the user file's if it exists, then `file`'s (which must exist).
    pub fn load_effective(file: Option<&Path>) -> Result<Self, PriceError> {
        match file {
            Some(f) => Self::load(Some(f)),
            None => Self::load(Self::user_file().filter(|p| p.exists()).as_deref()),
        }
    }

    /// Embedded prices with `file`'s entries on top.
    pub fn load(file: Option<&Path>) -> Result<Self, PriceError> {
        let mut t = Self::embedded();
        if let Some(path) = file {
            let name = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|source| PriceError::Io {
                file: name.clone(),
                source,
            })?;
            t.merge_str(&text, &name)?;
        }
        Ok(t)
    }

    fn merge_str(&mut self, text: &str, name: &str) -> Result<(), PriceError> {
        let file: TableFile = toml::from_str(text).map_err(|e| PriceError::Parse {
            file: name.to_string(),
            message: e.to_string(),
        })?;
        for (model, e) in file.models {
            self.sources
                .insert(model.clone(), (e.source.clone(), e.read_on.clone()));
            let life = Lifecycle {
                deprecated_on: e.deprecated_on.clone(),
                retired_on: e.retired_on.clone(),
                replaced_by: e.replaced_by.clone(),
            };
            match life == Lifecycle::default() {
                true => self.lifecycles.remove(&model),
                false => self.lifecycles.insert(model.clone(), life),
            };
            self.models.insert(
                model,
                Price {
                    input: per_million(e.input),
                    output: per_million(e.output),
                    cached_input: e.cached_input.map(per_million),
                    cache_write: e.cache_write.map(per_million),
                    // per thousand images -> per image, in picodollars
                    image: e.image.map(|usd| (usd.max(0.0) * 1e9).round() as u64),
                    batch_permille: e
                        .batch
                        .map(|share| (share.clamp(0.0, 1.0) * 1000.0).round() as u32),
                },
            );
        }
        Ok(())
    }

    pub fn insert(&mut self, model: &str, price: Price) {
        self.models.insert(model.to_string(), price);
    }

    /// Where a model's price comes from and the day it was read, when its file says.
    pub fn source(&self, model: &str) -> (Option<&str>, Option<&str>) {
        match self.sources.get(model) {
            Some((s, d)) => (s.as_deref(), d.as_deref()),
            None => (None, None),
        }
    }

    pub fn get(&self, model: &str) -> Option<&Price> {
        self.models.get(model)
    }

    /// A model's announced end, if the table knows one.
    pub fn lifecycle(&self, model: &str) -> Option<&Lifecycle> {
        self.lifecycles.get(model)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Price)> {
        self.models.iter().map(|(k, v)| (k.as_str(), v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_models_cost_exactly() {
        let t = PriceTable::embedded();
        let lite = t.get("google/gemini-2.0-flash-lite-001").unwrap();
        let u = Usage {
            prompt: 1_000_000,
            completion: 1_000_000,
            ..Default::default()
        };
        assert_eq!(lite.cost(&u, 0), Money::from_usd(0.375));
        let flash = t.get("google/gemini-2.0-flash-001").unwrap();
        let u = Usage {
            prompt: 123,
            completion: 45,
            ..Default::default()
        };
        // 123 * 0.10e-6 + 45 * 0.40e-6 = 0.0000303
        assert_eq!(flash.cost(&u, 0).0, 30_300_000);
        assert_eq!(flash.cost(&u, 0).to_string(), "$0.000030");
        assert!(t.get("google/gemini-2.0-flash").is_some());
    }

    #[test]
    fn no_drift_over_a_million_records() {
        let p = PriceTable::embedded()
            .get("google/gemini-2.0-flash-lite-001")
            .copied()
            .unwrap();
        let u = Usage {
            prompt: 7,
            completion: 3,
            ..Default::default()
        };
        let mut total = Money::ZERO;
        for _ in 0..1_000_000 {
            total += p.cost(&u, 0);
        }
        assert_eq!(total.0, 1_000_000 * (7 * 75_000 + 3 * 300_000));
    }

    #[test]
    fn cached_tokens_use_the_cached_price() {
        let p = Price {
            input: 100,
            output: 400,
            cached_input: Some(25),
            cache_write: None,
            image: None,
            batch_permille: None,
        };
        let u = Usage {
            prompt: 10,
            cached: 4,
            completion: 1,
            ..Usage::default()
        };
        assert_eq!(p.cost(&u, 0).0, 6 * 100 + 4 * 25 + 400);
        assert_eq!(p.cost(&u, 2).0, 6 * 100 + 4 * 25 + 400);
        let img = Price {
            image: Some(619_000_000),
            ..p
        };
        assert_eq!(img.cost(&u, 2).0, 6 * 100 + 4 * 25 + 400 + 2 * 619_000_000);
        assert_eq!(img.worst_case(10, 1, 1).0, 10 * 100 + 400 + 619_000_000);
    }

    #[test]
    fn reasoning_left_out_of_completion_tokens_is_billed() {
        // A gateway in front of Gemini: prompt 20, completion 198, total 623, reasoning 405.
        let u = Usage::reported(20, 198, Some(623), 0, 405, 0);
        assert_eq!(u.completion, 603);
        assert_eq!(u.reported_completion, Some(198));
        assert_eq!(u.rule, Some(OutputRule::TotalMinusPrompt));
        // No total: completion + reasoning when reasoning is the larger.
        let u = Usage::reported(20, 198, None, 0, 405, 0);
        assert_eq!(
            (u.completion, u.rule),
            (603, Some(OutputRule::CompletionPlusReasoning))
        );
        // OpenAI's shape (reasoning inside completion, total = prompt + completion): as sent.
        let u = Usage::reported(20, 603, Some(623), 0, 405, 0);
        assert_eq!(
            (u.completion, u.rule, u.reported_completion),
            (603, None, None)
        );
        let flash = PriceTable::embedded()
            .get("google/gemini-2.5-flash")
            .copied()
            .unwrap();
        let billed = flash.cost(&Usage::reported(20, 198, Some(623), 0, 405, 0), 0);
        assert_eq!(billed, Money((20 * 300_000) + 603 * 2_500_000));
    }

    #[test]
    fn cached_input_and_cache_writes_are_priced_as_published() {
        let t = PriceTable::embedded();
        // gpt-4.1-mini: $0.40/M input, $0.10/M cached: 10,000 cached tokens cost $0.001.
        let mini = t.get("gpt-4.1-mini").copied().unwrap();
        let u = Usage::reported(10_000, 0, None, 10_000, 0, 0);
        assert_eq!(mini.cost(&u, 0), Money::from_usd(0.001));
        for (model, cached) in [("gpt-4o-mini", 0.075), ("gemini-2.0-flash", 0.025)] {
            let p = t.get(model).copied().unwrap();
            assert_eq!(p.cached_input, Some(per_million(cached)), "{model}");
        }
        // A write price where one is documented; the input price where none is.
        let p = Price {
            cache_write: Some(125),
            ..Price {
                input: 100,
                output: 400,
                cached_input: Some(10),
                cache_write: None,
                image: None,
                batch_permille: None,
            }
        };
        let u = Usage::reported(10, 0, None, 2, 0, 3);
        assert_eq!(p.cost(&u, 0).0, 5 * 100 + 2 * 10 + 3 * 125);
        assert_eq!(p.worst_case(10, 0, 0).0, 10 * 125);
    }

    #[test]
    fn retired_models_say_when_and_what_replaced_them() {
        let t = PriceTable::embedded();
        let life = t.lifecycle("google/gemini-2.0-flash-001").unwrap();
        assert!(life.retired("2026-12-04"));
        assert!(!life.retired("2026-05-31"));
        let said = life.say("2026-12-04").unwrap();
        assert!(said.starts_with("retired on 2026-06-01"), "{said}");
        assert!(t.lifecycle("google/gemini-2.5-flash").is_none());
        assert_eq!(today().len(), 10);
    }

    #[test]
    fn every_source_is_the_providers_own_page_with_its_day() {
        let t = PriceTable::embedded();
        for (model, _) in t.iter() {
            let (source, day) = t.source(model);
            let source = source.unwrap_or_default();
            assert!(source.contains("https://"), "{model}: {source}");
            assert!(
                !source.contains("brief") && !source.contains("gaib"),
                "{model}: {source}"
            );
            assert!(day.is_some_and(|d| d.len() == 10), "{model}");
        }
    }
}
