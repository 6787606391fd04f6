//! JSONL job lines: any bytes give jobs or located errors, never a panic.
#![no_main]

use bulkprompt::job::jsonl::JsonlJobs;
use bulkprompt::job::request::JobDefaults;
use bulkprompt::job::Template;
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let defaults = Arc::new(JobDefaults {
        model: Some("m".into()),
        system: Some("s".into()),
        template: Template::parse("Say {text} ({lang})").ok(),
        ..Default::default()
    });
    for job in JsonlJobs::new(Path::new("fuzz.jsonl"), data, defaults, 1 << 16) {
        let _ = job.map(|j| j.fingerprint);
    }
});
