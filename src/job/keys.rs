//! A map from id hashes to a small value, as a sorted vector: exactly 24 bytes an entry (a
//! hash map would take about twice that once its buckets grow), looked up by binary search.
//! It is filled in file order, then sealed: a stable sort keeps equal keys in file order, so
//! duplicates can be reported and "the last record of an id" is the last of its run.

use super::IdKey;

#[derive(Debug, Clone)]
pub struct KeyMap {
    entries: Vec<(IdKey, u64)>,
    sealed: bool,
}

impl Default for KeyMap {
    fn default() -> Self {
        KeyMap::with_capacity(0)
    }
}

impl KeyMap {
    pub fn with_capacity(n: usize) -> Self {
        KeyMap {
            entries: Vec::with_capacity(n),
            sealed: true,
        }
    }

    /// Appends an entry; call [`seal`](Self::seal) before looking anything up.
    pub fn push(&mut self, key: IdKey, value: u64) {
        self.entries.push((key, value));
        self.sealed = false;
    }

    /// Sorts by key, keeping equal keys in the order they were pushed.
    pub fn seal(&mut self) {
        if !self.sealed {
            self.entries.sort_by_key(|e| e.0);
            self.sealed = true;
        }
    }

    /// [`seal`](Self::seal) for maps whose values grow in push order (line numbers): sorting by
    /// key and value keeps that order without the stable sort's scratch buffer (half the map
    /// again, at its peak).
    pub fn seal_ordered(&mut self) {
        if !self.sealed {
            debug_assert!(self.entries.windows(2).all(|w| w[0].1 <= w[1].1));
            self.entries.sort_unstable();
            self.sealed = true;
        }
    }

    /// Runs of equal keys: `(key, first value, later value)` for every repeat.
    pub fn repeats(&self) -> impl Iterator<Item = (IdKey, u64, u64)> + '_ {
        debug_assert!(self.sealed);
        self.entries.chunk_by(|a, b| a.0 == b.0).flat_map(|run| {
            let first = run[0].1;
            run[1..].iter().map(move |e| (e.0, first, e.1))
        })
    }

    /// The values of each key, in push order (call after [`seal_ordered`](Self::seal_ordered)
    /// or [`seal`](Self::seal)).
    pub fn runs(&self) -> impl Iterator<Item = impl Iterator<Item = u64> + '_> + '_ {
        debug_assert!(self.sealed);
        self.entries
            .chunk_by(|a, b| a.0 == b.0)
            .map(|run| run.iter().map(|e| e.1))
    }

    /// Keeps only the last entry of each key.
    pub fn keep_last(&mut self) {
        debug_assert!(self.sealed);
        // dedup_by keeps the first of a run; walking reversed runs keeps the last instead.
        self.entries.reverse();
        self.entries.dedup_by_key(|e| e.0);
        self.entries.reverse();
    }

    /// The value of `key` (the first pushed, unless [`keep_last`](Self::keep_last) ran).
    pub fn get(&self, key: &IdKey) -> Option<u64> {
        debug_assert!(self.sealed);
        let i = self.entries.partition_point(|e| e.0 < *key);
        self.entries.get(i).filter(|e| e.0 == *key).map(|e| e.1)
    }

    pub fn contains(&self, key: &IdKey) -> bool {
        self.get(key).is_some()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn values(&self) -> impl Iterator<Item = u64> + '_ {
        self.entries.iter().map(|e| e.1)
    }
}

/// About how many lines `path` has, from the first MiB, rounded up by a tenth: enough to size a
/// [`KeyMap`] once instead of doubling it (which would briefly hold the old and new vectors,
/// half again the memory at the worst moment).
pub fn estimate_lines(path: &std::path::Path) -> usize {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open(path) else {
        return 0;
    };
    let size = f.metadata().map_or(0, |m| m.len());
    let mut buf = vec![0u8; 1 << 20];
    let mut filled = 0;
    while filled < buf.len() {
        match f.read(&mut buf[filled..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => filled += n,
        }
    }
    let lines = buf[..filled].iter().filter(|&&b| b == b'\n').count() as u64 + 1;
    if filled as u64 >= size {
        return lines as usize;
    }
    (lines as f64 * size as f64 / filled as f64 * 1.1) as usize + 16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> IdKey {
        IdKey::of(s.as_bytes())
    }

    #[test]
    fn entries_are_24_bytes() {
        assert_eq!(std::mem::size_of::<(IdKey, u64)>(), 24);
    }

    #[test]
    fn repeats_and_keep_last() {
        let mut m = KeyMap::default();
        for (i, id) in ["a", "b", "a", "c", "a"].iter().enumerate() {
            m.push(k(id), i as u64 + 1);
        }
        m.seal();
        let reps: Vec<(u64, u64)> = m.repeats().map(|(_, f, l)| (f, l)).collect();
        assert_eq!(reps, vec![(1, 3), (1, 5)]);
        assert_eq!(m.get(&k("a")), Some(1));
        m.keep_last();
        assert_eq!(m.len(), 3);
        assert_eq!(m.get(&k("a")), Some(5));
        assert_eq!(m.get(&k("b")), Some(2));
        assert_eq!(m.get(&k("z")), None);
    }
}
