//! A template (the first line) rendered over CSV rows (the rest): no panics, whatever the bytes.
#![no_main]

use bulkprompt::job::csv::CsvJobs;
use bulkprompt::job::request::JobDefaults;
use bulkprompt::job::Template;
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let Ok(template_text) = std::str::from_utf8(&data[..split]) else { return };
    let Ok(template) = Template::parse(template_text) else { return };
    let rest = data.get(split + 1..).unwrap_or(&[]);
    let defaults = Arc::new(JobDefaults { model: Some("m".into()), template: Some(template), ..Default::default() });
    if let Ok(jobs) = CsvJobs::new(Path::new("fuzz.csv"), rest, defaults, b',') {
        for job in jobs {
            let _ = job.map(|j| j.fingerprint);
        }
    }
});
