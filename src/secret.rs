//! API keys. The key lives in a type that cannot be printed: `Debug` shows `(redacted)`, there
//! is no `Display`, and the only way to the bytes is [`ApiKey::expose`], called where the
//! `Authorization` header is built (and marked sensitive there).

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

#[cfg(test)]
mod tests {
    #[test]
    fn debug_is_redacted() {
        let k = super::ApiKey::new("sk-live-SECRET");
        assert_eq!(format!("{k:?}"), "ApiKey(redacted)");
        assert_eq!(format!("{:?}", Some(k)), "Some(ApiKey(redacted))");
    }
}
