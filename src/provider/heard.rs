//! What an answer's headers tell the run besides its body: its content type, when to try
//! again, the key's limits, a quota used up. Read through a lookup, so that reqwest's header
//! map and the direct client's parsed head give the same answer without a copy of either.

/// The headers of one answer, as the run reads them.
pub(super) struct Heard {
    pub(super) content_type: Option<String>,
    pub(super) retry_after: Option<String>,
    pub(super) reset_requests: Option<String>,
    pub(super) reset_tokens: Option<String>,
    pub(super) advertised: crate::limit::Advertised,
    pub(super) quota_exhausted: Option<std::time::Duration>,
}

impl Heard {
    /// Reads the headers through `header`, which gives a header's value by its lower-case
    /// name (the first one, when it is text).
    pub(super) fn of<'h>(header: impl Fn(&str) -> Option<&'h str>) -> Heard {
        let text = |name: &str| header(name).map(str::to_string);
        let per_minute = |name: &str| {
            header(name)
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|n| n.is_finite() && *n >= 1.0)
                .map(|n| n as u64)
        };
        let reset_requests = text("x-ratelimit-reset-requests");
        let reset_tokens = text("x-ratelimit-reset-tokens");
        let quota_exhausted = crate::retry::quota_exhausted(
            header("x-ratelimit-remaining-requests"),
            reset_requests.as_deref(),
            header("x-ratelimit-remaining-tokens"),
            reset_tokens.as_deref(),
        );
        Heard {
            content_type: text("content-type"),
            retry_after: text("retry-after"),
            // OpenAI's names; OpenRouter's `x-ratelimit-limit` counts requests.
            advertised: crate::limit::Advertised {
                rpm: per_minute("x-ratelimit-limit-requests")
                    .or_else(|| per_minute("x-ratelimit-limit")),
                tpm: per_minute("x-ratelimit-limit-tokens"),
            },
            reset_requests,
            reset_tokens,
            quota_exhausted,
        }
    }

    /// From reqwest's (http's) header map.
    pub(super) fn of_map(headers: &reqwest::header::HeaderMap) -> Heard {
        Heard::of(|name| headers.get(name).and_then(|v| v.to_str().ok()))
    }
}

#[cfg(test)]
mod tests {
    use super::Heard;
    use reqwest::header::{HeaderMap, HeaderValue};

    #[test]
    fn a_header_map_and_a_lookup_read_alike() {
        let mut map = HeaderMap::new();
        map.insert(
            "content-type",
            HeaderValue::from_static("text/event-stream"),
        );
        map.insert("retry-after", HeaderValue::from_static("7"));
        map.insert("x-ratelimit-limit", HeaderValue::from_static("600"));
        map.insert("x-ratelimit-limit-tokens", HeaderValue::from_static("0.5"));
        let heard = Heard::of_map(&map);
        assert_eq!(heard.content_type.as_deref(), Some("text/event-stream"));
        assert_eq!(heard.retry_after.as_deref(), Some("7"));
        assert_eq!(heard.advertised.rpm, Some(600));
        // Below one a minute is no limit anybody states.
        assert_eq!(heard.advertised.tpm, None);
        let pairs = [("retry-after", "7"), ("x-ratelimit-limit-requests", "90")];
        let looked = Heard::of(|n| pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| *v));
        assert_eq!(looked.retry_after.as_deref(), Some("7"));
        assert_eq!(looked.advertised.rpm, Some(90));
        assert_eq!(looked.content_type, None);
    }
}
