//! A labeled field's numbers as a histogram (a `confidence` between 0 and 1, a score, a
//! count): about twenty columns of a round width over the numbers' range, with the mean, the
//! median and the range beside it. Drawn from the field's sample: every number up to
//! [`SAMPLE`], a reservoir sample past that (said under the chart).

use super::aggregate::{Numbers, SAMPLE};
use super::html::{card, esc, single};
use super::svg::nice;
use crate::estimate::thousands;
use std::fmt::Write;

/// Columns at most, and about how many a range is cut into.
const MAX_COLUMNS: usize = 40;
const COLUMNS: f64 = 20.0;

/// The columns of a histogram: where the first starts, how wide each is, how many.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Edges {
    low: f64,
    width: f64,
    n: usize,
}

impl Edges {
    fn of(min: f64, max: f64) -> Edges {
        if max <= min {
            return Edges {
                low: min,
                width: 1.0,
                n: 1,
            };
        }
        let width = nice((max - min) / COLUMNS);
        let low = (min / width + 1e-9).floor() * width;
        let n = (((max - low) / width - 1e-9).ceil() as usize).clamp(1, MAX_COLUMNS);
        Edges { low, width, n }
    }

    /// The column of `v` (the range's top in the last one).
    fn column(&self, v: f64) -> usize {
        (((v - self.low) / self.width + 1e-9).floor().max(0.0) as usize).min(self.n - 1)
    }

    /// A column's lower edge, with as many decimals as the width needs.
    fn label(&self, i: usize) -> String {
        to_width(self.low + i as f64 * self.width, self.width)
    }
}

fn figure(v: f64) -> String {
    match v.fract() == 0.0 && v.abs() < 1e15 {
        true => thousands(v as u64),
        false => format!("{v:.3}"),
    }
}

/// The field `name`'s histogram, its cards first.
pub(crate) fn histogram(s: &mut String, name: &str, n: &Numbers) {
    let mut sorted = n.sample.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    let id = |what: &str| format!("{name}.{what}");
    s.push_str(r#"<div class="cards">"#);
    card(s, &id("count"), &thousands(n.count), "numbers", false);
    card(s, &id("mean"), &figure(n.mean()), "mean", false);
    card(s, &id("median"), &figure(median), "median", false);
    card(
        s,
        &id("range"),
        &format!("{} to {}", figure(n.min), figure(n.max)),
        "least to most",
        false,
    );
    s.push_str("</div><p></p>");
    let edges = Edges::of(n.min, n.max);
    let mut counts = vec![0u64; edges.n];
    for &v in &sorted {
        counts[edges.column(v)] += 1;
    }
    let labels = (0..edges.n).map(|i| edges.label(i)).collect();
    let values = counts.iter().map(|&c| c as f64).collect();
    let _ = write!(
        s,
        r#"<div data-histogram="{}">{}</div><p class="note">{}{}.</p>"#,
        esc(name),
        single(values, labels, "answers"),
        match n.max > n.min {
            true => format!("Columns {} wide, by their lower edge", to_width(edges.width, edges.width)),
            false => format!("Every number is {}", figure(n.min)),
        },
        match n.count > SAMPLE as u64 {
            true => format!(
                "; drawn from a sample of {} of the {} numbers (the cards are exact but for the median)",
                thousands(SAMPLE as u64),
                thousands(n.count)
            ),
            false => String::new(),
        }
    );
}

/// `v` with as many decimals as a step of `width` needs (0.05: two).
fn to_width(v: f64, width: f64) -> String {
    let decimals = (-width.log10().floor()).max(0.0) as usize;
    format!("{v:.decimals$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_range_is_cut_in_twentieths_with_the_top_in_the_last() {
        let e = Edges::of(0.0, 1.0);
        assert_eq!((e.low, e.n), (0.0, 20));
        assert!((e.width - 0.05).abs() < 1e-12, "{e:?}");
        assert_eq!(e.column(0.0), 0);
        assert_eq!(e.column(0.15), 3, "not 2 by a rounding");
        assert_eq!(e.column(1.0), 19);
        assert_eq!(e.label(3), "0.15");
    }

    #[test]
    fn wide_odd_and_flat_ranges_get_round_columns() {
        let e = Edges::of(13.0, 977.0);
        assert_eq!(e.low, 0.0);
        assert!((e.width - 50.0).abs() < 1e-9, "{e:?}");
        assert_eq!(e.n, 20);
        assert_eq!(e.label(19), "950");
        let flat = Edges::of(0.7, 0.7);
        assert_eq!(flat.n, 1);
        assert_eq!(flat.column(0.7), 0);
        let tiny = Edges::of(0.0012, 0.0019);
        assert!(
            tiny.n <= MAX_COLUMNS && (tiny.width - 0.00005).abs() < 1e-12,
            "{tiny:?}"
        );
    }
}
