//! Maps keyed by a model's name, looked up on every request (the token bucket's charge, an
//! answer's learnt length and cost ratio). The names are short and come from the user's own
//! job file, so std's SipHash, which guards against keys chosen to collide, costs more than it
//! protects: FNV-1a hashes a name in a few instructions a byte.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A map from a model's name.
pub type NameMap<V> = HashMap<String, V, BuildHasherDefault<NameHasher>>;

/// FNV-1a, 64 bits.
#[derive(Debug, Clone, Copy)]
pub struct NameHasher(u64);

impl Default for NameHasher {
    fn default() -> Self {
        NameHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn names_hash_as_fnv_1a_and_apart() {
        let b = BuildHasherDefault::<NameHasher>::default();
        let mut h = b.build_hasher();
        h.write(b"a");
        // The published FNV-1a 64 of "a".
        assert_eq!(h.finish(), 0xaf63_dc4c_8601_ec8c);
        let names = [
            "google/gemini-2.0-flash-001",
            "google/gemini-2.0-flash-002",
            "a",
            "",
        ];
        let hashes: std::collections::HashSet<u64> = names.iter().map(|n| b.hash_one(n)).collect();
        assert_eq!(hashes.len(), names.len());
        let mut m = NameMap::default();
        for (i, n) in names.iter().enumerate() {
            m.insert(n.to_string(), i);
        }
        assert!(names.iter().enumerate().all(|(i, n)| m.get(*n) == Some(&i)));
    }
}
