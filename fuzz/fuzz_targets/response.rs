//! Provider answers: any status and body are judged without a panic.
#![no_main]

use bulkprompt::provider::{classify, Attempt};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, SystemTime};

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else { return };
    let status = [200, 201, 400, 401, 404, 408, 429, 500, 503][first as usize % 9];
    let text = |range: std::ops::Range<usize>| body.get(range).map(|b| String::from_utf8_lossy(b).into_owned());
    let attempt = Attempt::Http {
        status,
        retry_after: text(0..8),
        reset_requests: text(8..16),
        reset_tokens: text(16..24),
        quota_exhausted: None,
        body: bytes::Bytes::copy_from_slice(body),
    };
    let _ = classify(attempt, SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let _ = bulkprompt::provider::response::parse_completion(body);
});
