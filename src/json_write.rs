//! JSON written as serde_json writes it, byte for byte, with the common string (nothing to
//! escape: most prompts, every key) copied whole instead of looked at byte by byte through
//! serde_json's escape table, which was a third of validation's time on short prompts. Byte
//! for byte matters: a job's fingerprint is the hash of its body written here, and a resumed
//! run compares it with the one its records hold; records are read back by serde.

use serde_json::{Map, Value};

type Result = serde_json::Result<()>;

/// `serde_json::to_vec(map)`, faster.
pub fn to_vec(map: &Map<String, Value>) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(256);
    object(&mut out, map)?;
    Ok(out)
}

/// A value, as `serde_json::to_writer` writes it.
pub fn value(out: &mut Vec<u8>, v: &Value) -> Result {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::String(s) => string(out, s)?,
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                value(out, item)?;
            }
            out.push(b']');
        }
        Value::Object(map) => object(out, map)?,
        // Numbers are rare in a body and serde_json's formatting is the reference.
        Value::Number(n) => serde_json::to_writer(&mut *out, n)?,
    }
    Ok(())
}

/// An object, as `serde_json::to_writer` writes it.
pub fn object(out: &mut Vec<u8>, map: &Map<String, Value>) -> Result {
    out.push(b'{');
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, k)?;
        out.push(b':');
        value(out, v)?;
    }
    out.push(b'}');
    Ok(())
}

/// A string, quoted and escaped as `serde_json::to_writer` writes it.
pub fn string(out: &mut Vec<u8>, s: &str) -> Result {
    if !plain(s.as_bytes()) {
        return serde_json::to_writer(&mut *out, s);
    }
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
    Ok(())
}

/// A whole number, as serde_json writes it.
pub fn uint(out: &mut Vec<u8>, mut n: u64) {
    // Most of a record's numbers (its tokens, attempts, a loopback latency) are one or two
    // digits: pushed, without the copy of a digit buffer.
    if n < 100 {
        if n >= 10 {
            out.push(b'0' + (n / 10) as u8);
        }
        out.push(b'0' + (n % 10) as u8);
        return;
    }
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Whether no byte needs escaping in JSON (`"`, `\` and the control characters below 0x20:
/// what serde_json escapes; it passes everything else through), eight bytes at a time.
fn plain(s: &[u8]) -> bool {
    crate::json_scan::plain_until(s, 0) == s.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn same(v: Value) {
        let Value::Object(map) = v else {
            panic!("an object")
        };
        assert_eq!(
            String::from_utf8(to_vec(&map).unwrap()).unwrap(),
            serde_json::to_string(&map).unwrap()
        );
    }

    #[test]
    fn writes_what_serde_json_writes() {
        same(json!({}));
        same(json!({
            "model": "google/gemini-2.0-flash-001",
            "max_tokens": 40,
            "temperature": 0.7,
            "top_p": 1e-7,
            "big": 18446744073709551615u64,
            "neg": -12,
            "stream": false,
            "stop": null,
            "n": [1, 2.5, true, null, "x", [], {}],
            "messages": [
                {"role": "system", "content": "Say \"yes\" or \\no\\."},
                {"role": "user", "content": "line one\nline two\ttab\r\u{1}\u{1f}\u{7f} é 漢字 🎉"},
                {"role": "user", "content": [{"type": "text", "text": "a 16-byte chunk\"x"}]}
            ],
            "response_format": {"type": "json_schema", "json_schema": {"name": "k\"ey", "schema": {"type": "object"}}}
        }));
    }

    #[test]
    fn every_byte_that_needs_escaping_is_found_at_every_place() {
        // Each escaped character at each position of a string longer than two chunks, and
        // every other ASCII byte, written as serde_json writes it.
        for c in (0u8..0x80).map(char::from) {
            for at in 0..40 {
                let mut s: String = "abcdefghijklmnopqrstuvwxyz0123456789ABCD"[..39].into();
                s.insert(at.min(s.len()), c);
                same(json!({ s.clone(): s }));
            }
        }
    }

    #[test]
    fn whole_numbers_are_written_as_serde_json_writes_them() {
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            12_345,
            u64::from(u32::MAX),
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            uint(&mut out, n);
            assert_eq!(out, serde_json::to_vec(&n).unwrap());
        }
    }
}
