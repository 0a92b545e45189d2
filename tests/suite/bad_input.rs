//! Bad input: sources that cannot be ingested become failed jobs with a stable error class, and
//! malformed commands are usage errors.

use super::fixture::{Home, Origin, id_of, sample_video};

// Guards error classification: an unsupported scheme, a file that is not media and a 403 each
// become a failed job with its class, next to a good source that succeeds, and `ingest` exits 1.
#[test]
fn unfetchable_sources_become_failed_jobs_with_their_error_class() {
    let home = Home::new();
    let origin = Origin::start();
    let good = origin.serve_video("sample.mp4", sample_video());
    let not_media = home.dir.path().join("notes.mp4");
    std::fs::write(&not_media, "these are meeting notes, not a video\n")
        .expect("write a text file");
    let not_media = not_media.to_str().expect("a UTF-8 path");
    origin.fail_with("private.mp4", 403);
    let blocked = origin.url("private.mp4");
    let sources = [
        "ftp://example.com/a.mp4",
        not_media,
        blocked.as_str(),
        good.as_str(),
    ];

    let jobs = home.json(
        &["ingest", sources[0], sources[1], sources[2], sources[3]],
        1,
    );

    let jobs = jobs.as_array().expect("a list of jobs");
    assert_eq!(jobs.len(), sources.len(), "{jobs:?}");
    let expected = [
        ("failed", Some("unsupported_source")),
        ("failed", Some("corrupt_media")),
        ("failed", Some("download_blocked")),
        ("succeeded", None),
    ];
    for ((job, source), (status, class)) in jobs.iter().zip(sources).zip(expected) {
        assert_eq!(job["source"], source);
        assert_eq!(job["status"], status, "{job}");
        assert_eq!(job["error"]["class"].as_str(), class, "{job}");
        assert_eq!(home.show(&id_of(job))["status"], status);
    }
    let blocked_message = jobs[2]["error"]["message"].as_str().expect("a message");
    assert!(blocked_message.contains("403"), "{blocked_message}");

    let completed = home.json(&["jobs", "--status", "completed"], 0);
    let succeeded = home.json(&["jobs", "--status", "succeeded"], 0);
    assert_eq!(completed, succeeded, "completed is an alias of succeeded");
    let listed: Vec<&str> = completed
        .as_array()
        .expect("a list of jobs")
        .iter()
        .map(|job| job["id"].as_str().expect("an id"))
        .collect();
    assert_eq!(listed, [jobs[3]["id"].as_str().expect("an id")]);
    let failed = home.json(&["jobs", "--status", "failed"], 0);
    assert_eq!(failed.as_array().map(Vec::len), Some(3));
}

// Guards job ids as a type: a well-formed but unknown id is an error, a malformed one a usage error.
#[test]
fn show_refuses_unknown_and_malformed_ids() {
    let home = Home::new();
    let unknown = ulid::Ulid::new().to_string();

    let output = home.narra(&["show", &unknown]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "show of an unknown id fails");
    assert!(
        stderr.contains(&unknown),
        "the error names the id: {stderr}"
    );

    let output = home.narra(&["show", "not-an-id"]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
