//! API keys. The key lives in a type that cannot be printed: `Debug` shows `(redacted)`, there
//! is no `Display`, and the only way to the bytes is [`ApiKey::expose`], called where the
//! `Authorization` header is built (and marked sensitive there).
//!
//! Secrets also arrive as extra headers (`--header "x-api-key: ..."`): their values are kept
//! out of everything bulkprompt writes ([`redact_header_arg`]), and a [`Scrubber`] holding the
//! key and those values cleans every text a provider sends back, once, where it enters.

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Self {
        ApiKey(key.into())
    }

    /// The key itself, for building the request header. Never format or log the result.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(redacted)")
    }
}

/// Whether a header's value is a credential, by its name: `Authorization`,
/// `Proxy-Authorization`, `Cookie`, `api-key`, `x-api-key`, or anything naming a key, token,
/// secret, password or signature.
pub fn is_secret_header(name: &str) -> bool {
    let n = name.trim().to_ascii_lowercase();
    n.contains("auth")
        || n.contains("cookie")
        || n.contains("key")
        || n.contains("token")
        || n.contains("secret")
        || n.contains("password")
        || n.contains("signature")
        || n.contains("credential")
}

/// `"x-api-key: abc"` -> `"x-api-key: (redacted)"`; other headers are returned as they are.
pub fn redact_header_arg(arg: &str) -> String {
    match arg.split_once(':') {
        Some((name, _)) if is_secret_header(name) => format!("{}: (redacted)", name.trim()),
        Some(_) => arg.to_string(),
        // No colon: a malformed flag, possibly a pasted secret; show none of it.
        None => "(redacted)".to_string(),
    }
}

/// Replaces every secret of a run (the key, secret header values) in texts that come from the
/// provider, so an echoed credential reaches no log line, record or summary.
#[derive(Clone, Default)]
pub struct Scrubber {
    secrets: Vec<String>,
}

impl fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scrubber({} secrets)", self.secrets.len())
    }
}

/// Secrets shorter than this are not searched for: a four-character value would scrub
/// ordinary words out of answers, and is no secret worth the name.
const MIN_SECRET_LEN: usize = 6;

impl Scrubber {
    pub fn new<'a>(
        key: Option<&ApiKey>,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Self {
        let mut secrets: Vec<String> = key.map(|k| k.expose().to_string()).into_iter().collect();
        for (name, value) in headers {
            if is_secret_header(name) {
                let v = value.trim();
                // "Bearer sk-..." -> also the bare token, which is what gets echoed.
                let bare = v.split_once(' ').map_or(v, |(_, t)| t.trim());
                secrets.push(v.to_string());
                secrets.push(bare.to_string());
            }
        }
        secrets.retain(|s| s.len() >= MIN_SECRET_LEN);
        // Longest first, so a value is replaced whole before a part of it is looked for.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Scrubber { secrets }
    }

    /// Whether `bytes` hold a secret.
    pub fn finds_in(&self, bytes: &[u8]) -> bool {
        self.secrets
            .iter()
            .any(|s| memchr::memmem::find(bytes, s.as_bytes()).is_some())
    }

    /// `text` with every secret replaced by `(redacted)`.
    pub fn scrub(&self, text: String) -> String {
        if !self.finds_in(text.as_bytes()) {
            return text;
        }
        let mut text = text;
        for s in &self.secrets {
            if text.contains(s.as_str()) {
                text = text.replace(s.as_str(), "(redacted)");
            }
        }
        text
    }

    /// Raw response bytes with every secret replaced (a no-op copy-free path when none is in).
    pub fn scrub_bytes(&self, bytes: bytes::Bytes) -> bytes::Bytes {
        if !self.finds_in(&bytes) {
            return bytes;
        }
        let mut out = bytes.to_vec();
        for s in &self.secrets {
            let mut i = 0;
            let mut next = Vec::with_capacity(out.len());
            while let Some(at) = memchr::memmem::find(&out[i..], s.as_bytes()) {
                next.extend_from_slice(&out[i..i + at]);
                next.extend_from_slice(b"(redacted)");
                i += at + s.len();
            }
            next.extend_from_slice(&out[i..]);
            out = next;
        }
        bytes::Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn debug_is_redacted() {
        let k = super::ApiKey::new("sk-live-SECRET");
        assert_eq!(format!("{k:?}"), "ApiKey(redacted)");
        assert_eq!(format!("{:?}", Some(k)), "Some(ApiKey(redacted))");
    }

    #[test]
    fn secret_headers_are_redacted_by_name() {
        use super::redact_header_arg as r;
        assert_eq!(r("Authorization: Bearer abc"), "Authorization: (redacted)");
        assert_eq!(r("x-api-key:abc"), "x-api-key: (redacted)");
        assert_eq!(r("api-key: abc"), "api-key: (redacted)");
        assert_eq!(r("X-Auth-Token: abc"), "X-Auth-Token: (redacted)");
        assert_eq!(r("X-Title: my run"), "X-Title: my run");
        assert_eq!(r("garbage"), "(redacted)");
    }

    #[test]
    fn scrubber_finds_the_key_and_bare_header_tokens() {
        let k = super::ApiKey::new("sk-live-SECRET");
        let s = super::Scrubber::new(
            Some(&k),
            [
                ("Authorization", "Bearer tok-123456"),
                ("X-Title", "public-title"),
            ],
        );
        assert_eq!(
            s.scrub("bad key sk-live-SECRET and tok-123456, public-title".into()),
            "bad key (redacted) and (redacted), public-title"
        );
        let b = s.scrub_bytes(bytes::Bytes::from_static(b"{\"m\":\"sk-live-SECRET!\"}"));
        assert_eq!(&b[..], b"{\"m\":\"(redacted)!\"}");
        let clean = bytes::Bytes::from_static(b"nothing here");
        assert_eq!(s.scrub_bytes(clean.clone()), clean);
    }
}
