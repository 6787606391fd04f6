//! A JSON text read in one pass, checked as serde_json checks it (string escapes, control
//! characters, number grammar, nesting, nothing after the end) without building what the
//! caller does not keep: the reader of answers (`provider/scan.rs`) and of job lines
//! (`job/line.rs`) walk a text with it, take the fields they know, and leave anything they
//! cannot be sure to read as serde_json would (a surrogate escape, a key with an escape, a
//! number they would have to convert, nesting over 64) to serde_json, by giving None.

/// How deep values may nest before the reading leaves them to serde_json.
const MAX_DEPTH: u32 = 64;

/// Bytes that end a string's plain run: the quote, the backslash and control characters.
static STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// Marks a field as read, None when it was read before (serde refuses a field named twice).
pub(crate) fn first(seen: &mut bool) -> Option<()> {
    (!std::mem::replace(seen, true)).then_some(())
}

/// A text being read, and where the reading is in it.
pub(crate) struct Scan<'a> {
    text: &'a str,
    b: &'a [u8],
    at: usize,
    depth: u32,
}

impl<'a> Scan<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Scan {
            text,
            b: text.as_bytes(),
            at: 0,
            depth: 0,
        }
    }

    /// Whether nothing but whitespace is left.
    pub(crate) fn at_end(&mut self) -> bool {
        self.ws();
        self.at == self.b.len()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.b.get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte after whitespace, not taken.
    #[inline]
    pub(crate) fn peek(&mut self) -> Option<u8> {
        // Compact JSON has no whitespace: one comparison for the usual byte.
        match self.b.get(self.at) {
            Some(&c) if c > b' ' => Some(c),
            _ => {
                self.ws();
                self.b.get(self.at).copied()
            }
        }
    }

    pub(crate) fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.at += 1)
    }

    /// A count: a whole number without sign, fraction or exponent that fits, or null.
    pub(crate) fn count(&mut self, seen: &mut bool, out: &mut Option<u64>) -> Option<()> {
        first(seen)?;
        if self.peek()? == b'n' {
            return self.literal(b"null");
        }
        let start = self.at;
        self.number()?;
        let mut n: u64 = 0;
        for &d in &self.b[start..self.at] {
            if !d.is_ascii_digit() {
                return None;
            }
            n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        }
        *out = Some(n);
        Some(())
    }

    /// A number's text, as written, or null.
    pub(crate) fn number_text(&mut self, seen: &mut bool, out: &mut Option<&'a str>) -> Option<()> {
        first(seen)?;
        if self.peek()? == b'n' {
            return self.literal(b"null");
        }
        let start = self.at;
        self.number()?;
        *out = Some(self.text.get(start..self.at)?);
        Some(())
    }

    /// An object read through `f` (true), or null (false).
    pub(crate) fn object_or_null(
        &mut self,
        f: impl FnMut(&mut Self, &'a str) -> Option<()>,
    ) -> Option<bool> {
        if self.peek()? == b'n' {
            return self.literal(b"null").map(|()| false);
        }
        self.object(f).map(|()| true)
    }

    /// A string (decoded) or null; anything else is left to serde_json.
    pub(crate) fn string_or_null(&mut self) -> Option<Option<String>> {
        match self.peek()? {
            b'"' => self.string().map(Some),
            b'n' => self.literal(b"null").map(|()| None),
            _ => None,
        }
    }

    /// `{`, then `f` for each key (with the scan at its value), then `}`.
    pub(crate) fn object(
        &mut self,
        mut f: impl FnMut(&mut Self, &'a str) -> Option<()>,
    ) -> Option<()> {
        self.container(b'{', b'}', |s| {
            if s.peek()? != b'"' {
                return None;
            }
            let key = s.key()?;
            s.eat(b':')?;
            f(s, key)
        })
    }

    /// `[`, then `f` for each element, then `]`.
    pub(crate) fn array(&mut self, f: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.container(b'[', b']', f)
    }

    /// `open`, then `each` for each item with commas between, then `close`.
    fn container(
        &mut self,
        open: u8,
        close: u8,
        mut each: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
        self.eat(open)?;
        self.enter()?;
        if self.eat(close).is_none() {
            loop {
                each(self)?;
                match self.peek()? {
                    b',' => self.at += 1,
                    c if c == close => {
                        self.at += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        self.depth -= 1;
        Some(())
    }

    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    /// Any value, checked and passed over.
    pub(crate) fn skip(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.plain_run().map(drop),
            b'{' => self.object(|s, _| s.skip()),
            b'[' => self.array(Self::skip),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// Where the scan is, for [`Scan::since`].
    pub(crate) fn mark(&self) -> usize {
        self.at
    }

    /// The text from `mark` to the scan.
    pub(crate) fn since(&self, mark: usize) -> Option<&'a str> {
        self.text.get(mark..self.at)
    }

    /// `f`'s reading from here; when it gives None the scan is put back where it was, for
    /// another reading of the same text.
    pub(crate) fn or_back<T>(&mut self, f: impl FnOnce(&mut Self) -> Option<T>) -> Option<T> {
        let (at, depth) = (self.at, self.depth);
        let read = f(self);
        if read.is_none() {
            (self.at, self.depth) = (at, depth);
        }
        read
    }

    /// A value's text, as written.
    pub(crate) fn raw(&mut self) -> Option<&'a str> {
        self.ws();
        let start = self.at;
        self.skip()?;
        self.text.get(start..self.at)
    }

    pub(crate) fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.at + word.len();
        (self.b.get(self.at..end)? == word).then(|| self.at = end)
    }

    /// A number as JSON writes one: `-? (0 | [1-9][0-9]*) (.[0-9]+)? ([eE][+-]?[0-9]+)?`.
    pub(crate) fn number(&mut self) -> Option<()> {
        if self.b.get(self.at) == Some(&b'-') {
            self.at += 1;
        }
        match self.b.get(self.at)? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.b.get(self.at) == Some(&b'.') {
            self.at += 1;
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.b.get(self.at) {
            self.at += 1;
            if let Some(b'+' | b'-') = self.b.get(self.at) {
                self.at += 1;
            }
            self.some_digits()?;
        }
        // A digit after a leading zero (`01`) is refused by the container, as any byte that
        // is not a comma or its end.
        Some(())
    }

    fn digits(&mut self) {
        while self.b.get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let from = self.at;
        self.digits();
        (self.at > from).then_some(())
    }

    /// A key: a string without escapes (a key with one is left to serde_json).
    pub(crate) fn key(&mut self) -> Option<&'a str> {
        let (body, escaped) = self.plain_run()?;
        (!escaped).then_some(body)
    }

    /// A string, decoded.
    pub(crate) fn string(&mut self) -> Option<String> {
        Some(self.text()?.into_owned())
    }

    /// A string (the scan at its quote), decoded: borrowed from the text when it holds no
    /// escape.
    pub(crate) fn text(&mut self) -> Option<std::borrow::Cow<'a, str>> {
        let (body, escaped) = self.plain_run()?;
        match escaped {
            false => Some(body.into()),
            true => unescape(body).map(Into::into),
        }
    }

    /// A string checked (its escapes well formed, no control characters): its text between
    /// the quotes, and whether it holds an escape.
    #[inline]
    fn plain_run(&mut self) -> Option<(&'a str, bool)> {
        self.at += 1;
        let start = self.at;
        let mut escaped = false;
        loop {
            self.at = plain_until(self.b, self.at);
            match *self.b.get(self.at)? {
                b'"' => {
                    let body = self.text.get(start..self.at)?;
                    self.at += 1;
                    return Some((body, escaped));
                }
                b'\\' => {
                    escaped = true;
                    self.escape()?;
                }
                _ => return None,
            }
        }
    }

    /// The escape at the scan (its backslash), checked and passed over.
    fn escape(&mut self) -> Option<()> {
        match self.b.get(self.at + 1)? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 2,
            b'u' => {
                let hex = self.b.get(self.at + 2..self.at + 6)?;
                hex.iter().all(u8::is_ascii_hexdigit).then_some(())?;
                self.at += 6;
            }
            _ => return None,
        }
        Some(())
    }
}

/// Where the plain run of a string's bytes from `at` ends: at a quote, a backslash, a control
/// character or the end. Eight bytes at a time (the lowest byte the bit tricks flag is always
/// one of them), then byte by byte.
pub(crate) fn plain_until(b: &[u8], mut at: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGHS;
    while let Some(chunk) = b.get(at..at + 8) {
        let x = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        let hit = below(x ^ (ONES * u64::from(b'"')), 1)
            | below(x ^ (ONES * u64::from(b'\\')), 1)
            | below(x, 0x20);
        if hit != 0 {
            return at + (hit.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    while b.get(at).is_some_and(|&c| !STOP[usize::from(c)]) {
        at += 1;
    }
    at
}

/// A string's text with its escapes (checked already) decoded; None for a surrogate, which
/// serde_json pairs or refuses.
fn unescape(body: &str) -> Option<String> {
    let mut out = String::with_capacity(body.len());
    let mut rest = body;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest.as_bytes()[i + 1];
        let c = match code {
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let n = u32::from_str_radix(rest.get(i + 2..i + 6)?, 16).ok()?;
                rest = &rest[i + 6..];
                out.push(char::from_u32(n)?);
                continue;
            }
            other => char::from(other),
        };
        out.push(c);
        rest = &rest[i + 2..];
    }
    out.push_str(rest);
    Some(out)
}

/// Tests' edge cases: a text cut, a quote or bracket lost, a stray byte.
#[cfg(test)]
/// `text` with one byte deleted, or one of `bytes` inserted or put in its place, at every
/// place (the changes that are still UTF-8).
pub(crate) fn one_byte_off(text: &str, bytes: &[u8]) -> Vec<String> {
    let b = text.as_bytes();
    let mut all = Vec::new();
    for at in 0..=b.len() {
        if at < b.len() {
            all.push([&b[..at], &b[at + 1..]].concat());
        }
        for &x in bytes {
            all.push([&b[..at], &[x], &b[at..]].concat());
            if at < b.len() {
                all.push([&b[..at], &[x], &b[at + 1..]].concat());
            }
        }
    }
    all.into_iter()
        .filter_map(|m| String::from_utf8(m).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_run_ends_where_byte_by_byte_it_would() {
        let naive = |b: &[u8], at: usize| {
            (at..b.len())
                .find(|&i| STOP[usize::from(b[i])])
                .unwrap_or(b.len())
        };
        // Every byte value at every place of runs up to 19 long, among plain bytes of both
        // halves (ASCII, and the high bytes of UTF-8), from every start.
        for len in 1..20 {
            for place in 0..len {
                for byte in 0..=255u8 {
                    for filler in [b'a', 0x7f, 0x80, 0xe6, 0xff] {
                        let mut b = vec![filler; len];
                        b[place] = byte;
                        for at in 0..=len {
                            assert_eq!(plain_until(&b, at), naive(&b, at), "{b:?} from {at}");
                        }
                    }
                }
            }
        }
    }
}
