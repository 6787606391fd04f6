//! Shards: every id in exactly one shard, each shard its own resumable output (from the flag or
//! the scheduler's environment), `merge` back to one record per id, `status` over them all.

use crate::harness::*;
use bulkprompt::mock::MockConfig;

#[test]
fn three_shards_cover_every_id_once_and_merge_back() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(300));
    let out = dir.path("out.jsonl");
    let mut outputs = Vec::new();
    for i in 0..3 {
        let shard = format!("{i}/3");
        let o = run(&input, &out, &mock.url(), &["--shard", &shard]);
        assert_code(&o, 0);
        outputs.push(dir.path(&format!("out.shard-{i}-of-3.jsonl")));
    }
    let sizes: Vec<usize> = outputs.iter().map(|p| records(p).len()).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 300, "{sizes:?}");
    assert!(sizes.iter().all(|&n| n > 70), "{sizes:?}");
    assert_eq!(mock.stats().requests, 300, "each id sent by one shard only");
    // A shard from Slurm's environment writes the same shard's output (and resumes it).
    let o = run_cmd(&input, &out, &mock.url(), &[])
        .env("SLURM_ARRAY_TASK_ID", "2")
        .env("SLURM_ARRAY_TASK_MIN", "1")
        .env("SLURM_ARRAY_TASK_COUNT", "3")
        .output()
        .unwrap();
    assert_code(&o, 0);
    assert_eq!(mock.stats().requests, 300, "shard 1 was done already");

    let status = bulkprompt()
        .arg("status")
        .args(&outputs)
        .arg("--check")
        .output()
        .unwrap();
    assert_code(&status, 0);
    assert_eq!(
        String::from_utf8_lossy(&status.stdout)
            .matches("jobs:")
            .count(),
        3
    );

    let merged = dir.path("all.parquet");
    let o = bulkprompt()
        .arg("merge")
        .args(&outputs)
        .arg("-o")
        .arg(&merged)
        .arg("--jobs")
        .arg(&input)
        .output()
        .unwrap();
    assert_code(&o, 0);
    let journal = dir.path(".bulkprompt/all.parquet.journal.jsonl");
    assert_eq!(records(&journal).len(), 300);
    assert_eq!(records_by_id(&journal).len(), 300);
    assert!(merged.exists());
    // With a shard left out, merge says which shard and how many ids are missing.
    let o = bulkprompt()
        .arg("merge")
        .args(&outputs[..2])
        .arg("-o")
        .arg(dir.path("part.jsonl"))
        .arg("--jobs")
        .arg(&input)
        .output()
        .unwrap();
    assert_code(&o, 2);
    let err = stderr(&o);
    assert!(err.contains("shards with no output given: 2/3"), "{err}");
    assert!(err.contains(&format!("{} ids of", sizes[2])), "{err}");
    // The same shard twice, here through a symlink, would count its money twice: refused.
    let link = dir.path("link.jsonl");
    std::os::unix::fs::symlink(&outputs[0], &link).unwrap();
    let o = bulkprompt()
        .arg("merge")
        .arg(&outputs[0])
        .arg(&link)
        .arg("-o")
        .arg(dir.path("twice.jsonl"))
        .output()
        .unwrap();
    assert_code(&o, 1);
    assert!(stderr(&o).contains("are the same output"), "{}", stderr(&o));
    // Nor can the merged output be one of the shards.
    let o = bulkprompt()
        .arg("merge")
        .args(&outputs)
        .arg("-o")
        .arg(&link)
        .output()
        .unwrap();
    assert_code(&o, 1);
    assert_eq!(
        records(&outputs[0]).len(),
        sizes[0],
        "the shard is untouched"
    );
}

#[test]
fn a_bad_line_in_another_shard_stops_every_shard() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let mut jobs = chat_jobs(50);
    jobs.push_str("{\"id\": \"broken\"}\n");
    let input = dir.write("jobs.jsonl", jobs);
    for i in 0..2 {
        let o = run(
            &input,
            &dir.path("out.jsonl"),
            &mock.url(),
            &["--shard", &format!("{i}/2")],
        );
        assert_code(&o, 1);
        assert!(stderr(&o).contains("jobs.jsonl:51"), "{}", stderr(&o));
    }
    assert_eq!(mock.stats().requests, 0);
}
