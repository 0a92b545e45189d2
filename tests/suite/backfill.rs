//! `narra backfill`: manifests in every format with bad lines, resuming by running it again
//! (succeeded jobs recognised, transient failures retried, permanent ones only when asked), the
//! `--json` summary, `jobs --backfill`, and a long manifest read from standard input.
//!
//! That submission is batched (one flush per batch, not per line) is proven by the store's unit
//! test `a_batch_of_2000_submissions_is_one_flush_and_four_transactions`, by counting, not timing.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Output, Stdio};

use serde_json::Value;

use super::fixture::{Home, Origin, other_video, sample_video};

/// Writes `name` beside the home with `text`: the manifest's path.
fn manifest(home: &Home, name: &str, text: &str) -> String {
    let path: PathBuf = home.dir.path().join(name);
    std::fs::write(&path, text).expect("write the manifest");
    path.to_str().expect("a UTF-8 path").to_string()
}

/// `narra --json [extra] backfill ARGS`, asserting the exit code: the summary and the stderr.
fn backfill(home: &Home, args: &[&str], expected_code: i32) -> (Value, String) {
    let mut full = vec!["--json", "backfill"];
    full.extend_from_slice(args);
    let output = home.narra(&full);
    parse(&full, output, expected_code)
}

fn parse(args: &[&str], output: Output, expected_code: i32) -> (Value, String) {
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(
        output.status.code(),
        Some(expected_code),
        "narra {args:?} exited {:?}\nstdout:\n{}\nstderr:\n{stderr}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
    );
    let summary = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "stdout of narra {args:?} is not JSON ({error}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    (summary, stderr)
}

fn bad_line_numbers(summary: &Value) -> Vec<u64> {
    summary["bad_lines"]
        .as_array()
        .expect("a bad_lines list")
        .iter()
        .map(|bad| bad["line"].as_u64().expect("a line number"))
        .collect()
}

/// Writes `<home dir>/workflows/ingest.toml`: the built-in ingest workflow whose download tries
/// once, so a 500 fails the job at once. Returns the directory for `--workflows`.
fn one_attempt_workflows(home: &Home) -> String {
    const BUILTIN: &str = include_str!("../../workflows/ingest.toml");
    const DOWNLOAD_PARAMS: &str =
        "params = { connect_timeout_s = 10, read_timeout_s = 30, total_timeout_s = 21600 }";
    assert!(BUILTIN.contains(DOWNLOAD_PARAMS), "{BUILTIN}");
    // One attempt of the download step, and one run of the job (no automatic retry).
    assert!(BUILTIN.contains("\nattempts_max = 3\n"), "{BUILTIN}");
    let text = BUILTIN
        .replacen(
            DOWNLOAD_PARAMS,
            "params = { connect_timeout_s = 5, read_timeout_s = 5, attempts_max = 1 }",
            1,
        )
        .replacen("\nattempts_max = 3\n", "\nattempts_max = 1\n", 1);
    let dir = home.dir.path().join("workflows");
    std::fs::create_dir_all(&dir).expect("create the workflows directory");
    std::fs::write(dir.join("ingest.toml"), text).expect("write ingest.toml");
    dir.to_str().expect("a UTF-8 path").to_string()
}

// Guards the manifest formats and bad lines: in a text list, JSON Lines and a CSV, the good lines
// become jobs that succeed and each bad line is named on stderr by its number, never stopping the
// others; running the same manifest again downloads nothing and runs no job.
#[test]
fn good_lines_of_every_format_succeed_and_bad_lines_are_named_by_number() {
    let home = Home::new();
    let origin = Origin::start();
    let sample = origin.serve_video("media/sample.mp4", sample_video());
    let other = origin.serve_video("media/other.mp4", other_video());

    let text = manifest(
        &home,
        "list.txt",
        &format!("# two videos\n{sample}\n\nhttp://bad host/x.mp4\n{other}\n"),
    );
    let (summary, stderr) = backfill(&home, &[&text], 0);
    assert_eq!(summary["format"], "lines");
    assert_eq!(bad_line_numbers(&summary), [4]);
    assert!(stderr.contains("list.txt:4: "), "{stderr}");
    assert_eq!(summary["by_status"], serde_json::json!({"succeeded": 2}));
    assert_eq!(summary["ran"], 2);
    assert!(
        summary["bytes_downloaded"].as_u64().unwrap() > 0,
        "{summary}"
    );
    assert!(summary["bytes_stored"].as_u64().unwrap() > 0, "{summary}");

    // JSON Lines: the same sample under its own key is a new job; a line without a source is bad.
    let jsonl = manifest(
        &home,
        "list.jsonl",
        &format!(
            "{{\"source\": \"{sample}\", \"key\": \"sample-by-key\", \"priority\": 1}}\n{{\"key\": \"nothing\"}}\n{{\"source\": \"{other}\"}}\n"
        ),
    );
    let (summary, stderr) = backfill(&home, &[&jsonl], 0);
    assert_eq!(summary["format"], "jsonl");
    assert_eq!(bad_line_numbers(&summary), [2]);
    assert!(stderr.contains("list.jsonl:2: "), "{stderr}");
    assert_eq!(summary["by_status"], serde_json::json!({"succeeded": 2}));
    assert_eq!(summary["ran"], 1, "only the keyed line is new: {summary}");
    assert_eq!(summary["skipped"], 1);

    // CSV with a key column; a row with too few fields is bad; an unknown workflow is that line's.
    let csv = manifest(
        &home,
        "list.csv",
        &format!("source,key,workflow\n{sample},csv-sample,\nonly-one-field\n{other},,nope\n"),
    );
    let (summary, stderr) = backfill(&home, &[&csv], 0);
    assert_eq!(summary["format"], "csv");
    assert_eq!(bad_line_numbers(&summary), [3, 4]);
    assert!(stderr.contains("list.csv:3: "), "{stderr}");
    assert!(stderr.contains("list.csv:4: "), "{stderr}");
    assert_eq!(summary["by_status"], serde_json::json!({"succeeded": 1}));

    // The same text manifest again: the same backfill, nothing downloaded, no job run.
    let gets = (
        origin.gets("media/sample.mp4"),
        origin.gets("media/other.mp4"),
    );
    let (again, _) = backfill(&home, &[&text], 0);
    assert_eq!(again["backfill"], summary_id(&home, &text));
    assert_eq!(again["ran"], 0, "{again}");
    assert_eq!(again["skipped"], 2);
    assert_eq!(again["by_status"], serde_json::json!({"succeeded": 2}));
    assert_eq!(again["bytes_downloaded"], 0);
    assert_eq!(
        (
            origin.gets("media/sample.mp4"),
            origin.gets("media/other.mp4")
        ),
        gets,
        "a re-run downloads nothing"
    );

    // `jobs --backfill` lists the backfill's jobs; `backfill --list` every backfill.
    let id = again["backfill"].as_str().unwrap().to_string();
    let jobs = home.json(&["jobs", "--backfill", &id], 0);
    // Both jobs were created by one batch, possibly in the same millisecond, where ULID order
    // (and so "newest first") is not defined: compare them as a set.
    let mut sources: Vec<&str> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["source"].as_str().unwrap())
        .collect();
    sources.sort();
    let mut expected = [other.as_str(), sample.as_str()];
    expected.sort();
    assert_eq!(sources, expected);
    let list = home.json(&["backfill", "--list"], 0);
    assert_eq!(list.as_array().unwrap().len(), 3, "{list}");
}

/// The id `backfill --list` gives the manifest at `path`.
fn summary_id(home: &Home, path: &str) -> Value {
    let list = home.json(&["backfill", "--list"], 0);
    list.as_array()
        .unwrap()
        .iter()
        .find(|backfill| backfill["manifest"] == path)
        .map(|backfill| backfill["id"].clone())
        .unwrap_or_else(|| panic!("{path} in {list}"))
}

// Guards that a permanent failure is not hammered on every re-run: a 403 stays failed (no request
// reaches the origin) until `--retry-permanent`, which asks again. The summary counts the failure
// by class and by host, and the exit code is 1 while any job is failed.
#[test]
fn a_refused_source_is_retried_only_with_retry_permanent() {
    let home = Home::new();
    let origin = Origin::start();
    let sample = origin.serve_video("media/sample.mp4", sample_video());
    origin.fail_with("media/blocked.mp4", 403);
    let blocked = origin.url("media/blocked.mp4");
    let path = manifest(&home, "list.txt", &format!("{sample}\n{blocked}\n"));

    let (summary, _) = backfill(&home, &[&path], 1);
    assert_eq!(
        summary["by_status"],
        serde_json::json!({"succeeded": 1, "failed": 1})
    );
    assert_eq!(
        summary["failures_by_class"],
        serde_json::json!({"download_blocked": 1})
    );
    let host = format!("127.0.0.1:{}", origin.addr.port());
    assert_eq!(summary["failures_by_host"], serde_json::json!({ host: 1 }));
    assert_eq!(origin.gets("media/blocked.mp4"), 1);

    let (again, _) = backfill(&home, &[&path], 1);
    assert_eq!(again["ran"], 0, "{again}");
    assert_eq!(
        again["failures_by_class"],
        serde_json::json!({"download_blocked": 1})
    );
    assert_eq!(origin.gets("media/blocked.mp4"), 1, "not asked again");

    origin.heal("media/blocked.mp4");
    origin.serve_video("media/blocked.mp4", other_video());
    let (retried, _) = backfill(&home, &[&path, "--retry-permanent"], 0);
    assert_eq!(retried["ran"], 1, "{retried}");
    assert_eq!(retried["by_status"], serde_json::json!({"succeeded": 2}));
    assert_eq!(origin.gets("media/blocked.mp4"), 2, "asked once more");
    assert_eq!(
        origin.gets("media/sample.mp4"),
        1,
        "the succeeded job did nothing"
    );
}

// Guards that a transient failure is retried by the next run without any flag: a 500 fails the
// job (one attempt), the origin recovers, and the same backfill run again completes it.
#[test]
fn a_transient_failure_is_retried_when_the_backfill_runs_again() {
    let home = Home::new();
    let origin = Origin::start();
    origin.serve_video("media/flaky.mp4", sample_video());
    origin.fail_with("media/flaky.mp4", 500);
    let dir = one_attempt_workflows(&home);
    let path = manifest(
        &home,
        "list.txt",
        &format!("{}\n", origin.url("media/flaky.mp4")),
    );

    let (summary, _) = backfill(&home, &["--workflows", &dir, &path], 1);
    assert_eq!(
        summary["failures_by_class"],
        serde_json::json!({"server_error": 1})
    );
    assert_eq!(origin.gets("media/flaky.mp4"), 1);

    origin.heal("media/flaky.mp4");
    let (again, _) = backfill(&home, &["--workflows", &dir, &path], 0);
    assert_eq!(again["ran"], 1, "{again}");
    assert_eq!(again["by_status"], serde_json::json!({"succeeded": 1}));
    assert_eq!(origin.gets("media/flaky.mp4"), 2);
}

// Guards a long manifest read from standard input: 2,000 lines naming a few sources (one good,
// three that fail fast as unsupported) are a handful of jobs, every line accepted; the same input
// piped again is the same backfill, and resumes with nothing to run.
#[test]
fn two_thousand_lines_from_stdin_are_a_few_jobs_and_resume_as_one_backfill() {
    let home = Home::new();
    let origin = Origin::start();
    let sample = origin.serve_video("media/sample.mp4", sample_video());
    let mut text = String::new();
    for index in 0..2_000 {
        match index % 4 {
            0 => text.push_str(&sample),
            other => text.push_str(&format!("ftp://example.com/{other}.mp4")),
        }
        text.push('\n');
    }
    let run = |expected_code: i32| {
        let mut command = home.command(&["--json", "backfill", "-"]);
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("narra starts");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write the manifest");
        let output = child.wait_with_output().expect("narra ends");
        parse(&["backfill", "-"], output, expected_code).0
    };
    let summary = run(1);
    assert_eq!(summary["lines_accepted"], 2_000);
    assert_eq!(summary["jobs"], 4);
    assert_eq!(
        summary["by_status"],
        serde_json::json!({"succeeded": 1, "failed": 3})
    );
    assert_eq!(
        summary["failures_by_class"],
        serde_json::json!({"unsupported_source": 3})
    );
    assert!(
        summary["manifest"].as_str().unwrap().starts_with("stdin:"),
        "{summary}"
    );
    assert_eq!(origin.gets("media/sample.mp4"), 1);

    let again = run(1);
    assert_eq!(again["backfill"], summary["backfill"]);
    assert_eq!(again["ran"], 0, "{again}");
    assert_eq!(origin.gets("media/sample.mp4"), 1);
}

// Guards a large mixed backfill of 200 lines: good sources, refusals (403), missing videos (404),
// corrupt files, duplicate lines and bad lines finish with the right counts by class and the bad
// lines named by number; run again, the succeeded jobs are recognised at once and nothing is
// downloaded or run.
#[test]
fn a_mixed_backfill_of_200_lines_counts_each_class_and_resumes_with_no_work() {
    let home = Home::new();
    let origin = Origin::start();
    let mut lines = Vec::new();
    let mut bad = Vec::new();
    let mut good = Vec::new();
    for index in 0..200 {
        let line = match index % 20 {
            // 403: refused, never retried by a re-run.
            3 | 13 => {
                let path = format!("refused/{index}.mp4");
                origin.serve_video(&path, sample_video());
                origin.fail_with(&path, 403);
                origin.url(&path)
            }
            // 404: never served.
            7 | 17 => origin.url(&format!("missing/{index}.mp4")),
            // Not media at all.
            9 => {
                let path = format!("corrupt/{index}.mp4");
                origin.put(&path, b"this is not a video".repeat(100));
                origin.url(&path)
            }
            // A duplicate of the line before: the same job.
            11 => lines.last().cloned().expect("a line before"),
            // A line that is not a source.
            19 => {
                bad.push(index as u64 + 1);
                "http://bad host/x.mp4".to_string()
            }
            _ => {
                let url = origin.serve_video(&format!("good/{index}.mp4"), sample_video());
                good.push(format!("good/{index}.mp4"));
                url
            }
        };
        lines.push(line);
    }
    assert_eq!(lines.len(), 200);
    let path = manifest(&home, "mixed.txt", &(lines.join("\n") + "\n"));

    let (summary, stderr) = backfill(&home, &[&path, "--concurrency", "4"], 1);
    assert_eq!(bad_line_numbers(&summary), bad);
    for line in &bad {
        assert!(stderr.contains(&format!("mixed.txt:{line}: ")), "{stderr}");
    }
    // 200 lines: 10 bad, 10 duplicates; 20 refused, 20 missing, 10 corrupt, the rest good.
    assert_eq!(
        summary["by_status"],
        serde_json::json!({"succeeded": good.len(), "failed": 50}),
        "{summary}"
    );
    assert_eq!(
        summary["failures_by_class"],
        serde_json::json!({"download_blocked": 20, "not_found": 20, "corrupt_media": 10})
    );
    let gets: usize = good.iter().map(|path| origin.gets(path)).sum();
    assert_eq!(gets, good.len(), "each good video downloaded once");

    let (again, _) = backfill(&home, &[&path], 1);
    assert_eq!(again["ran"], 0, "{again}");
    assert_eq!(
        again["by_status"],
        serde_json::json!({"succeeded": good.len(), "failed": 50})
    );
    let gets_again: usize = good.iter().map(|path| origin.gets(path)).sum();
    assert_eq!(gets_again, gets, "nothing downloaded again");
}
