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
    pub image: Option<u64>,
    /// The batch price as thousandths of the live price; [`DEFAULT_BATCH_PERMILLE`] where
    /// none is given.
    pub batch_permille: Option<u32>,
}

/// Batch APIs charge half the live price: OpenAI's Batch API ("50% discount"), Gemini's Batch
/// Mode ("50% of the standard cost"), as both document it.
pub const DEFAULT_BATCH_PERMILLE: u32 = 500;

/// Token counts from a response's `usage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt: u64,
    pub completion: u64,
    pub cached: u64,
    pub reasoning: u64,
}

impl Price {
    /// Cost of one response. Cached input tokens are part of `prompt` and are billed at the
    /// cached price; reasoning tokens are part of `completion` and billed as output; input
    /// images at the per-image price where one is published.
    pub fn cost(&self, u: &Usage, images: u32) -> Money {
        let cached = u.cached.min(u.prompt);
        let fresh = u.prompt - cached;
        let cached_price = self.cached_input.unwrap_or(self.input);
        Money(
            fresh
                .saturating_mul(self.input)
                .saturating_add(cached.saturating_mul(cached_price))
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
            ..*self
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
    image: Option<f64>,
    /// The batch price as a share of the live price (0.5 where the provider documents half).
    batch: Option<f64>,
    source: Option<String>,
    read_on: Option<String>,
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
            self.models.insert(
                model,
                Price {
                    input: per_million(e.input),
                    output: per_million(e.output),
                    cached_input: e.cached_input.map(per_million),
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
            image: None,
            batch_permille: None,
        };
        let u = Usage {
            prompt: 10,
            cached: 4,
            completion: 1,
            reasoning: 0,
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
}
