//! Idempotency: one job per key, and re-runs that redo only what is missing or changed.

use super::fixture::{
    Home, Origin, artifact, ffprobe, file_snapshot, id_of, last_seq, other_video, sample_video,
    step_events_after, steps,
};

// Guards idempotent submission: the same source submitted twice (once with a fragment, which the
// key ignores) is one job, and ingesting a succeeded job again does no work.
#[test]
fn the_same_source_twice_is_one_job_and_a_succeeded_job_is_not_redone() {
    let home = Home::new();
    let origin = Origin::start();
    let url = origin.serve_video("sample.mp4", sample_video());

    let first = home.one_job(&["submit", &url], 0);
    let second = home.one_job(&["submit", &format!("{url}#t=1")], 0);

    assert_eq!(first["id"], second["id"]);
    assert_eq!(first["status"], "pending");
    let id = id_of(&first);
    let ingested = home.one_job(&["ingest", &url], 0);
    assert_eq!(ingested["id"], id.as_str());
    assert_eq!(ingested["status"], "succeeded");
    assert_eq!(origin.gets("sample.mp4"), 1);
    let seq = last_seq(&home.show(&id));

    let again = home.one_job(&["ingest", &url], 0);

    assert_eq!(again["id"], id.as_str());
    assert_eq!(again["status"], "succeeded");
    assert_eq!(origin.gets("sample.mp4"), 1, "no second download");
    let show = home.show(&id);
    assert_eq!(
        step_events_after(&show, seq),
        steps(&[]),
        "no step ran or was even checked"
    );
    assert_eq!(home.json(&["jobs"], 0).as_array().map(Vec::len), Some(1));
}

// Guards caller-chosen keys: two different URLs (signed URLs change on every request) under one
// `--key` are one job, and the second URL is never fetched.
#[test]
fn one_key_on_two_different_urls_is_one_job() {
    let home = Home::new();
    let origin = Origin::start();
    let first_url = origin.serve_video("signed/a.mp4", sample_video()) + "?signature=1";
    let second_url = origin.serve_video("signed/b.mp4", other_video()) + "?signature=2";

    let first = home.one_job(&["ingest", "--key", "lecture-42", &first_url], 0);
    let second = home.one_job(&["ingest", "--key", "lecture-42", &second_url], 0);

    assert_eq!(first["id"], second["id"]);
    assert_eq!(second["status"], "succeeded");
    // The job keeps its first source (shown with its signature redacted).
    let source = second["source"].as_str().expect("a source");
    assert!(source.starts_with(&origin.url("signed/a.mp4")), "{source}");
    let requests = origin.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].path, "/signed/a.mp4");
    let show = home.show(&id_of(&first));
    assert_eq!(show["key"], "lecture-42");
    assert_eq!(home.json(&["jobs"], 0).as_array().map(Vec::len), Some(1));
}

// Guards `--reingest` of an intact succeeded job: every step is skipped as done, no object is
// written (same inode, size and mtime everywhere) and nothing is downloaded.
#[test]
fn reingest_of_an_intact_job_skips_every_step_and_writes_nothing() {
    let home = Home::new();
    let origin = Origin::start();
    let url = origin.serve_video("sample.mp4", sample_video());
    let id = id_of(&home.one_job(&["ingest", &url], 0));
    let seq = last_seq(&home.show(&id));
    let objects_before = file_snapshot(&home.objects());

    let job = home.one_job(&["ingest", "--reingest", &url], 0);

    assert_eq!(job["id"], id.as_str());
    assert_eq!(job["status"], "succeeded");
    assert_eq!(
        step_events_after(&home.show(&id), seq),
        steps(&[
            ("step_skipped", "download"),
            ("step_skipped", "extract"),
            ("step_skipped", "store"),
        ])
    );
    assert_eq!(file_snapshot(&home.objects()), objects_before);
    assert_eq!(origin.gets("sample.mp4"), 1);
}

// Guards workflows as data: a changed extract parameter re-extracts from the stored original on
// `--reingest`, without downloading again, and only extract and store run.
#[test]
fn a_changed_extract_parameter_re_extracts_from_the_stored_original() {
    let home = Home::new();
    let origin = Origin::start();
    let url = origin.serve_video("sample.mp4", sample_video());
    let id = id_of(&home.one_job(&["ingest", &url], 0));
    let before = home.show(&id);
    let seq = last_seq(&before);
    let workflows = home.dir.path().join("workflows");
    std::fs::create_dir_all(&workflows).expect("create the workflows directory");
    let builtin = include_str!("../../workflows/ingest.toml");
    assert!(
        builtin.contains(r#"audio = "copy""#),
        "the built-in workflow copies audio"
    );
    std::fs::write(
        workflows.join("ingest.toml"),
        builtin.replace(r#"audio = "copy""#, r#"audio = "flac""#),
    )
    .expect("write the changed workflow");
    let workflows = workflows.to_str().expect("a UTF-8 path");

    let job = home.one_job(&["--workflows", workflows, "ingest", &url, "--reingest"], 0);

    assert_eq!(job["id"], id.as_str());
    assert_eq!(job["status"], "succeeded");
    let show = home.show(&id);
    assert_eq!(
        step_events_after(&show, seq),
        steps(&[
            ("step_skipped", "download"),
            ("step_started", "extract"),
            ("step_completed", "extract"),
            ("step_started", "store"),
            ("step_completed", "store"),
        ])
    );
    assert_eq!(
        origin.gets("sample.mp4"),
        1,
        "the original came from storage"
    );
    assert_eq!(artifact(&show, "video"), artifact(&before, "video"));
    let audio_key = artifact(&show, "audio")["key"].as_str().expect("a key");
    assert!(audio_key.ends_with(".flac"), "{audio_key}");
    let probe = ffprobe(&home.object(audio_key));
    let streams = probe["streams"].as_array().expect("streams");
    assert_eq!(streams.len(), 1, "{probe}");
    assert_eq!(streams[0]["codec_name"], "flac");
}

// Guards `--key` against silently dropping sources: one key names one job, so two sources under
// one key are refused as a usage error and nothing is submitted.
#[test]
fn one_key_with_two_sources_is_a_usage_error() {
    let home = Home::new();
    let origin = Origin::start();
    let first = origin.serve_video("k/a.mp4", sample_video());
    let second = origin.serve_video("k/b.mp4", other_video());

    let output = home.narra(&["ingest", "--key", "lecture-7", &first, &second]);

    assert_eq!(
        output.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("--key"));
    assert_eq!(origin.requests().len(), 0);
    assert_eq!(home.json(&["jobs"], 0).as_array().map(Vec::len), Some(0));
}
