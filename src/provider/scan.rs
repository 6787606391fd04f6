//! A chat completion read in one pass over its text, for the shape nearly every answer has:
//! an object whose `choices` are objects with a `message` whose `content` is a string or null.
//! Every byte is checked as JSON as serde_json checks it (strings, escapes, numbers, nesting,
//! nothing after the end), and the fields [`super::response`] keeps are taken as it goes;
//! everything else is passed over without being built. Anything this reading does not know
//! for certain to read as serde_json would (a key or a kept string with a surrogate escape,
//! content that is not a string, a field named twice, an `error` beside the choices, no
//! choices, nesting over 64 deep) gives None, and the answer is read through serde_json.

/// What an answer holds, as [`super::response`] keeps it.
pub(super) struct Scanned<'a> {
    pub(super) choices: Vec<ScannedChoice<'a>>,
    /// `model` when it is a string.
    pub(super) model: Option<String>,
    /// `usage`'s text, as written.
    pub(super) usage: Option<&'a str>,
}

/// One choice.
pub(super) struct ScannedChoice<'a> {
    pub(super) content: Option<String>,
    /// `finish_reason` when it is a string.
    pub(super) finish_reason: Option<String>,
    /// `tool_calls`' text, as written (`null` included).
    pub(super) tool_calls: Option<&'a str>,
}

/// The answer in `text`, or None for serde_json to read it.
pub(super) fn completion(text: &str) -> Option<Scanned<'_>> {
    let mut s = Scan {
        text,
        b: text.as_bytes(),
        at: 0,
        depth: 0,
    };
    let body = s.body()?;
    s.ws();
    (s.at == s.b.len() && !body.choices.is_empty()).then_some(body)
}

/// `usage` as nearly every provider writes it: each count a whole number (or null), each cost
/// a number (or null, its text kept for serde_json to convert as it would). None for anything
/// else, a field named twice included.
#[derive(Default)]
pub(super) struct ScannedUsage<'a> {
    pub(super) prompt_tokens: Option<u64>,
    pub(super) completion_tokens: Option<u64>,
    pub(super) total_tokens: Option<u64>,
    pub(super) cost: Option<&'a str>,
    /// `prompt_tokens_details`, when it is an object.
    pub(super) prompt: Option<(Option<u64>, Option<u64>)>,
    /// `completion_tokens_details.reasoning_tokens`, when the details are an object.
    pub(super) reasoning: Option<Option<u64>>,
    /// `cost_details.upstream_inference_cost`, when the details are an object.
    pub(super) upstream: Option<Option<&'a str>>,
}

/// The `usage` in `text`, or None for serde_json to read it.
pub(super) fn usage(text: &str) -> Option<ScannedUsage<'_>> {
    let mut s = Scan {
        text,
        b: text.as_bytes(),
        at: 0,
        depth: 0,
    };
    let mut u = ScannedUsage::default();
    let mut seen = [false; 7];
    s.object(|s, key| match key {
        "prompt_tokens" => s.count(&mut seen[0], &mut u.prompt_tokens),
        "completion_tokens" => s.count(&mut seen[1], &mut u.completion_tokens),
        "total_tokens" => s.count(&mut seen[2], &mut u.total_tokens),
        "cost" => s.money(&mut seen[3], &mut u.cost),
        "prompt_tokens_details" => {
            first(&mut seen[4])?;
            let (mut cached, mut write) = (None, None);
            let mut seen = [false; 2];
            s.details(|s, key| match key {
                "cached_tokens" => s.count(&mut seen[0], &mut cached),
                "cache_write_tokens" => s.count(&mut seen[1], &mut write),
                _ => s.skip(),
            })?
            .then(|| u.prompt = Some((cached, write)));
            Some(())
        }
        "completion_tokens_details" => {
            first(&mut seen[5])?;
            let (mut reasoning, mut once) = (None, false);
            s.details(|s, key| match key {
                "reasoning_tokens" => s.count(&mut once, &mut reasoning),
                _ => s.skip(),
            })?
            .then(|| u.reasoning = Some(reasoning));
            Some(())
        }
        "cost_details" => {
            first(&mut seen[6])?;
            let (mut upstream, mut once) = (None, false);
            s.details(|s, key| match key {
                "upstream_inference_cost" => s.money(&mut once, &mut upstream),
                _ => s.skip(),
            })?
            .then(|| u.upstream = Some(upstream));
            Some(())
        }
        _ => s.skip(),
    })?;
    s.ws();
    (s.at == s.b.len()).then_some(u)
}

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

struct Scan<'a> {
    text: &'a str,
    b: &'a [u8],
    at: usize,
    depth: u32,
}

/// Marks a field as read, None when it was read before (serde refuses a field named twice).
fn first(seen: &mut bool) -> Option<()> {
    (!std::mem::replace(seen, true)).then_some(())
}

impl<'a> Scan<'a> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.b.get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte after whitespace, not taken.
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.at).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.at += 1)
    }

    /// The top-level object.
    fn body(&mut self) -> Option<Scanned<'a>> {
        let mut body = Scanned {
            choices: Vec::new(),
            model: None,
            usage: None,
        };
        let (mut choices, mut model, mut usage, mut error) = (false, false, false, false);
        self.object(|s, key| match key {
            "choices" => {
                first(&mut choices)?;
                s.choices(&mut body.choices)
            }
            "model" => {
                first(&mut model)?;
                body.model = s.string_or_null()?;
                Some(())
            }
            "usage" => {
                first(&mut usage)?;
                body.usage = Some(s.raw()?);
                Some(())
            }
            // `error: null` is none; an error beside choices is left to serde_json.
            "error" => {
                first(&mut error)?;
                (s.peek()? == b'n').then_some(())?;
                s.literal(b"null")
            }
            _ => s.skip(),
        })?;
        Some(body)
    }

    fn choices(&mut self, out: &mut Vec<ScannedChoice<'a>>) -> Option<()> {
        if self.peek()? == b'n' {
            return self.literal(b"null");
        }
        self.array(|s| {
            let mut c = ScannedChoice {
                content: None,
                finish_reason: None,
                tool_calls: None,
            };
            let (mut message, mut reason) = (false, false);
            s.object(|s, key| match key {
                "message" => {
                    first(&mut message)?;
                    s.message(&mut c)
                }
                "finish_reason" => {
                    first(&mut reason)?;
                    c.finish_reason = s.string_or_null()?;
                    Some(())
                }
                _ => s.skip(),
            })?;
            out.push(c);
            Some(())
        })
    }

    fn message(&mut self, c: &mut ScannedChoice<'a>) -> Option<()> {
        if self.peek()? == b'n' {
            return self.literal(b"null");
        }
        let (mut content, mut calls) = (false, false);
        self.object(|s, key| match key {
            "content" => {
                first(&mut content)?;
                c.content = s.string_or_null()?;
                Some(())
            }
            "tool_calls" => {
                first(&mut calls)?;
                c.tool_calls = Some(s.raw()?);
                Some(())
            }
            _ => s.skip(),
        })
    }

    /// A count: a whole number without sign, fraction or exponent that fits, or null.
    fn count(&mut self, seen: &mut bool, out: &mut Option<u64>) -> Option<()> {
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

    /// A cost: a number's text, or null.
    fn money(&mut self, seen: &mut bool, out: &mut Option<&'a str>) -> Option<()> {
        first(seen)?;
        if self.peek()? == b'n' {
            return self.literal(b"null");
        }
        let start = self.at;
        self.number()?;
        *out = Some(self.text.get(start..self.at)?);
        Some(())
    }

    /// A details object read through `f` (true), or null (false).
    fn details(&mut self, f: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<bool> {
        if self.peek()? == b'n' {
            return self.literal(b"null").map(|()| false);
        }
        self.object(f).map(|()| true)
    }

    /// A string (decoded) or null; anything else is left to serde_json.
    fn string_or_null(&mut self) -> Option<Option<String>> {
        match self.peek()? {
            b'"' => self.string().map(Some),
            b'n' => self.literal(b"null").map(|()| None),
            _ => None,
        }
    }

    /// `{`, then `f` for each key (with the scan at its value), then `}`.
    fn object(&mut self, mut f: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        self.enter()?;
        if self.eat(b'}').is_none() {
            loop {
                if self.peek()? != b'"' {
                    return None;
                }
                let key = self.key()?;
                self.eat(b':')?;
                f(self, key)?;
                match self.peek()? {
                    b',' => self.at += 1,
                    b'}' => {
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

    /// `[`, then `f` for each element, then `]`.
    fn array(&mut self, mut f: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'[')?;
        self.enter()?;
        if self.eat(b']').is_none() {
            loop {
                f(self)?;
                match self.peek()? {
                    b',' => self.at += 1,
                    b']' => {
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
    fn skip(&mut self) -> Option<()> {
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

    /// A value's text, as written.
    fn raw(&mut self) -> Option<&'a str> {
        self.ws();
        let start = self.at;
        self.skip()?;
        self.text.get(start..self.at)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.at + word.len();
        (self.b.get(self.at..end)? == word).then(|| self.at = end)
    }

    /// A number as JSON writes one: `-? (0 | [1-9][0-9]*) (.[0-9]+)? ([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> Option<()> {
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
    fn key(&mut self) -> Option<&'a str> {
        let (body, escaped) = self.plain_run()?;
        (!escaped).then_some(body)
    }

    /// A string, decoded.
    fn string(&mut self) -> Option<String> {
        let (body, escaped) = self.plain_run()?;
        if !escaped {
            return Some(body.to_owned());
        }
        unescape(body)
    }

    /// A string checked (its escapes well formed, no control characters): its text between
    /// the quotes, and whether it holds an escape.
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
fn plain_until(b: &[u8], mut at: usize) -> usize {
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
