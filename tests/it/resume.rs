//! Resuming: the output is the checkpoint.

use crate::harness::*;
use bulkprompt::mock::MockConfig;

#[test]
fn a_finished_run_rerun_sends_nothing() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(50));
    let out = dir.path("out.jsonl");
    assert_code(&run(&input, &out, &mock.url(), &[]), 0);
    assert_eq!(mock.stats().requests, 50);
    let o = run(&input, &out, &mock.url(), &[]);
    assert_code(&o, 0);
    assert_eq!(
        mock.stats().requests,
        50,
        "a re-run must not buy anything again"
    );
    assert!(stderr(&o).contains("50 already done"), "{}", stderr(&o));
    assert_eq!(records_by_id(&out).len(), 50);
}
