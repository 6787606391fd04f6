//! Bad job files: exit 1, the file and line in the message, nothing sent.

use crate::harness::*;
use bulkprompt::mock::MockConfig;

fn refused(name: &str, content: &[u8], extra: &[&str], expect: &str) {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write(name, content);
    let out = dir.path("out.jsonl");
    let o = run(&input, &out, &mock.url(), extra);
    assert_code(&o, 1);
    let err = stderr(&o);
    let expect = expect.replace("FILE", &input.display().to_string());
    assert!(err.contains(&expect), "expected {expect:?} in:\n{err}");
    assert_eq!(mock.stats().requests, 0, "nothing may be sent");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn malformed_json_names_line_and_column() {
    let mut text = chat_jobs(3);
    text.push_str("{\"id\": \"x\", \"messages\": [}\n");
    text.push_str(&chat_jobs(1).replace("j0", "z"));
    refused(
        "jobs.jsonl",
        text.as_bytes(),
        &[],
        "FILE:4:26: malformed JSON: expected value\n",
    );
}

#[test]
fn a_missing_template_column_names_the_header_line() {
    refused(
        "r.csv",
        b"id,text\n1,hello\n",
        &["--template", "Say {body}"],
        "FILE:1: template field {body}: no such column (columns: id, text)",
    );
}

#[test]
fn duplicate_ids_name_both_lines() {
    let mut text = chat_jobs(3);
    text.push_str(&chat_jobs(2));
    refused(
        "jobs.jsonl",
        text.as_bytes(),
        &[],
        "FILE:4: duplicate id \"j0\" (first used on line 1)",
    );
}

#[test]
fn invalid_utf8_names_line_and_column() {
    let mut text = chat_jobs(2).into_bytes();
    text.extend_from_slice(b"{\"id\":\"x\",\"text\":\"caf\xe9\"}\n");
    refused(
        "jobs.jsonl",
        &text,
        &["--template", "{text}"],
        "FILE:3:22: invalid UTF-8",
    );
}

#[test]
fn an_empty_file_is_refused() {
    refused("jobs.jsonl", b"", &[], "FILE: the job file holds no jobs");
    refused(
        "blank.jsonl",
        b"\n\n",
        &[],
        "FILE: the job file holds no jobs",
    );
}

#[test]
fn every_problem_is_listed_not_only_the_first() {
    let mut text = chat_jobs(2);
    text.push_str("not json\n[1,2]\n{\"id\":\"q\",\"messages\":\"hi\"}\n");
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", text);
    let o = run(&input, &dir.path("o.jsonl"), &mock.url(), &[]);
    assert_code(&o, 1);
    let err = stderr(&o);
    assert!(err.contains("3 problems; nothing was sent"), "{err}");
    for line in [
        ":3:2: malformed JSON: expected ident\n",
        ":4: expected a JSON object",
        ":5: field \"messages\": expected an array",
    ] {
        assert!(err.contains(line), "{line} missing in:\n{err}");
    }
    let v = bulkprompt()
        .arg("validate")
        .arg(&input)
        .args(["--model", "m"])
        .output()
        .unwrap();
    assert_code(&v, 1);
    assert!(String::from_utf8_lossy(&v.stdout).contains("2 jobs valid, 3 problems"));
}

#[test]
fn a_job_without_a_model_is_an_input_error() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let input = dir.write("jobs.jsonl", chat_jobs(2));
    let o = bulkprompt()
        .args([
            "run",
            input.to_str().unwrap(),
            "--endpoint",
            &mock.url(),
            "--quiet",
        ])
        .output()
        .unwrap();
    assert_code(&o, 1);
    assert!(stderr(&o).contains(":1: no model"), "{}", stderr(&o));
    assert_eq!(mock.stats().requests, 0);
}

#[test]
fn bom_crlf_and_a_missing_final_newline_are_accepted() {
    let mock = Mock::start(MockConfig::default());
    let dir = Dir::new();
    let text = format!("\u{feff}{}", chat_jobs(3).replace('\n', "\r\n").trim_end());
    let input = dir.write("jobs.jsonl", text);
    let out = dir.path("out.jsonl");
    assert_code(&run(&input, &out, &mock.url(), &[]), 0);
    assert_eq!(records_by_id(&out).len(), 3);
}

#[test]
fn a_line_over_the_cap_is_refused_without_reading_it_into_memory() {
    let mut text = chat_jobs(2).into_bytes();
    text.extend_from_slice(b"{\"id\":\"huge\",\"text\":\"");
    text.extend(std::iter::repeat_n(b'x', 50 << 20));
    text.extend_from_slice(b"\"}\n");
    refused(
        "jobs.jsonl",
        &text,
        &["--template", "{text}"],
        "FILE:3: line is 52428823 bytes, over the 16777216-byte limit",
    );
}

#[test]
fn deeply_nested_json_is_refused() {
    let mut text = chat_jobs(1);
    text.push_str(&format!(
        "{{\"id\":\"deep\",\"text\":\"x\",\"extra\":{}{}}}\n",
        "[".repeat(5000),
        "]".repeat(5000)
    ));
    refused(
        "jobs.jsonl",
        text.as_bytes(),
        &["--template", "{text}"],
        "FILE:2:",
    );
}

#[test]
fn csv_problems_name_their_rows() {
    refused(
        "r.csv",
        b"id,text\n1,a\n2\n3,c\n",
        &["--template", "{text}"],
        "FILE:3: row has 1 fields, the header has 2",
    );
    refused(
        "q.csv",
        b"id,text\n1,a\n2,\"never closed\n3,c\n",
        &["--template", "{text}"],
        "FILE:3: unclosed quote: this row's last field runs to the end of the file",
    );
    refused(
        "m.csv",
        b"text\na\n",
        &["--template", "{text}", "--id-column", "review_id"],
        "FILE:1: id column \"review_id\" not found",
    );
}

#[test]
fn a_batch_line_for_another_endpoint_is_refused() {
    refused(
        "batch.jsonl",
        b"{\"custom_id\":\"a\",\"method\":\"POST\",\"url\":\"/v1/embeddings\",\"body\":{\"input\":\"x\"}}\n",
        &[],
        "FILE:1: field \"url\": only /v1/chat/completions is supported",
    );
}

#[test]
fn other_delimiters_and_quoted_headers_are_accepted() {
    let mock = Mock::start(MockConfig {
        capture_bodies: true,
        ..Default::default()
    });
    let dir = Dir::new();
    let input = dir.write("r.csv", "\"id\";\"the text\"\r\n1;\"a; b\"\r\n2;c\r\n");
    let out = dir.path("out.jsonl");
    assert_code(
        &run(
            &input,
            &out,
            &mock.url(),
            &["--delimiter", ";", "--template", "{the text}"],
        ),
        0,
    );
    let mut prompts: Vec<String> = mock
        .bodies()
        .iter()
        .map(|b| b["messages"][0]["content"].as_str().unwrap().to_string())
        .collect();
    prompts.sort();
    assert_eq!(prompts, ["a; b", "c"]);
}

#[test]
fn requests_the_provider_would_misread_are_refused_with_their_line() {
    let chat = |id: &str, message: &str| format!("{{\"id\":\"{id}\",\"messages\":[{message}]}}\n");
    let ok = chat("a", "{\"role\":\"user\",\"content\":\"x\"}");
    refused(
        "c.jsonl",
        (ok.clone() + &chat("b", "{\"role\":\"user\"}")).as_bytes(),
        &[],
        "FILE:2: field \"messages[0].content\": missing",
    );
    refused(
        "n.jsonl",
        (ok.clone() + &chat("b", "{\"role\":\"user\",\"content\":5}")).as_bytes(),
        &[],
        "FILE:2: field \"messages[0].content\": expected a string or a list of content parts, found a number",
    );
    refused(
        "d.jsonl",
        format!("{ok}{{\"id\":\"b\",\"id\":\"c\",\"messages\":[]}}\n").as_bytes(),
        &[],
        "FILE:2:",
    );
    refused(
        "d2.jsonl",
        format!("{ok}{{\"id\":\"b\",\"id\":\"c\",\"messages\":[]}}\n").as_bytes(),
        &[],
        "the key \"id\" appears twice in one object",
    );
    refused(
        "h.csv",
        b"id,text,text\n1,a,b\n",
        &["--template", "{text}"],
        "FILE:1: column name \"text\" appears twice (columns 2 and 3)",
    );
    refused(
        "e.csv",
        b"id,,text\n1,a,b\n",
        &["--template", "{text}"],
        "FILE:1: column 2 has no name",
    );
}
