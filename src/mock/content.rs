//! Deterministic answers: the same request always gets the same content and usage, so tests
//! can compare runs, and token counts follow the four-characters-a-token rule the runner's
//! estimates use.

use crate::job::approx_tokens;

const WORDS: &[&str] = &[
    "the",
    "product",
    "arrived",
    "quickly",
    "and",
    "works",
    "as",
    "described",
    "customers",
    "mention",
    "battery",
    "life",
    "quality",
    "price",
    "value",
    "shipping",
    "support",
    "design",
    "overall",
    "positive",
    "negative",
    "mixed",
    "feedback",
    "about",
    "durable",
    "comfortable",
    "easy",
    "setup",
    "sound",
    "screen",
    "recommend",
    "would",
    "buy",
    "again",
    "not",
    "great",
    // Answers are not all ASCII: outputs must carry any Unicode intact.
    "très",
    "naïve",
    "日本製",
    "отлично",
];

const LABELS: &[&str] = &["positive", "negative", "neutral", "mixed"];

/// A generated answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub content: String,
    pub finish_reason: &'static str,
    pub completion_tokens: u64,
}

/// Builds the answer for a request whose hash is `seed`. `max_tokens` truncates it (finish
/// reason `length`, a JSON answer then cut mid-object); `json` makes it a JSON object.
pub fn answer(seed: u64, max_tokens: Option<u64>, json: bool) -> Answer {
    let mut rng = fastrand::Rng::with_seed(seed);
    let content = if json {
        let label = LABELS[rng.usize(..LABELS.len())];
        let confidence = rng.u32(50..100) as f64 / 100.0;
        let summary = sentence(&mut rng, 6);
        format!("{{\"label\":\"{label}\",\"confidence\":{confidence},\"summary\":\"{summary}\"}}")
    } else {
        let words = rng.usize(8..40);
        let mut s = sentence(&mut rng, words);
        s.push('.');
        s
    };
    let tokens = approx_tokens(content.len()) as u64;
    match max_tokens {
        // Cut at `max_tokens`, JSON too, as a real server cuts it (no longer JSON then).
        Some(max) if tokens > max => {
            let keep = (max as usize * 4).min(content.len());
            let mut cut = keep;
            while !content.is_char_boundary(cut) {
                cut -= 1;
            }
            Answer {
                content: content[..cut].to_string(),
                finish_reason: "length",
                completion_tokens: max,
            }
        }
        _ => Answer {
            content,
            finish_reason: "stop",
            completion_tokens: tokens,
        },
    }
}

/// A few lowercase words, for generated strings.
pub fn words(rng: &mut fastrand::Rng, n: usize) -> String {
    (0..n)
        .map(|_| WORDS[rng.usize(..WORDS.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

fn sentence(rng: &mut fastrand::Rng, words: usize) -> String {
    let mut s = String::with_capacity(words * 8);
    for i in 0..words {
        if i > 0 {
            s.push(' ');
        }
        let w = WORDS[rng.usize(..WORDS.len())];
        if i == 0 {
            let mut c = w.chars();
            if let Some(f) = c.next() {
                s.extend(f.to_uppercase());
                s.push_str(c.as_str());
            }
        } else {
            s.push_str(w);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_truncated_by_max_tokens() {
        assert_eq!(answer(7, None, false), answer(7, None, false));
        let a = answer(7, Some(2), false);
        assert_eq!(
            (a.finish_reason, a.completion_tokens, a.content.len()),
            ("length", 2, 8)
        );
    }

    #[test]
    fn json_answers_parse_unless_cut_at_max_tokens() {
        for seed in 0..50 {
            let a = answer(seed, Some(200), true);
            let v: serde_json::Value = serde_json::from_str(&a.content).unwrap();
            assert!(v["label"].is_string());
            // Cut as a real server cuts it: no longer JSON.
            let cut = answer(seed, Some(1), true);
            assert_eq!(cut.finish_reason, "length");
            assert!(serde_json::from_str::<serde_json::Value>(&cut.content).is_err());
        }
    }
}
