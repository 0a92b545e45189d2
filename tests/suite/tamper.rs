//! Tampering: bytes changed after their checkpoint are detected, and only the steps from the
//! changed one on run again.

use serde_json::Value;

use super::fixture::{
    Home, Origin, artifact, blake3_hex, ffprobe, id_of, invert_bytes, last_seq, sample_video,
    scratch_output, step_events_after, step_output, steps,
};

// Guards detection of a changed stored object: `verify` reports the tampered audio, and
// `--reingest` re-extracts (download skipped) and restores the audio blob's exact bytes.
#[test]
fn a_tampered_stored_audio_is_reported_and_re_extracted_on_reingest() {
    let home = Home::new();
    let origin = Origin::start();
    let url = origin.serve_video("sample.mp4", sample_video());
    let id = id_of(&home.one_job(&["ingest", &url], 0));
    let show = home.show(&id);
    let seq = last_seq(&show);
    let audio_path = home.object(artifact(&show, "audio")["key"].as_str().expect("a key"));
    let audio_bytes = std::fs::read(&audio_path).expect("the stored audio");

    invert_bytes(&audio_path);

    let reports = home.json(&["verify", &id], 1);
    let problems = only_report(&reports, &id);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0]["artifact"], "audio");
    assert_eq!(problems[0]["problem"], "mismatch");

    let job = home.one_job(&["ingest", "--reingest", &url], 0);

    assert_eq!(job["status"], "succeeded");
    assert_eq!(
        step_events_after(&home.show(&id), seq),
        steps(&[
            ("step_skipped", "download"),
            ("step_started", "extract"),
            ("step_completed", "extract"),
            ("step_started", "store"),
            ("step_completed", "store"),
        ])
    );
    assert!(
        std::fs::read(&audio_path).expect("the stored audio") == audio_bytes,
        "the audio blob holds its bytes from before the tampering again"
    );
    assert_eq!(origin.gets("sample.mp4"), 1);
    assert_eq!(home.json(&["verify", &id], 0)[0]["ok"], true);
}

// Guards detection of a changed scratch file: after a store failure, an extracted audio file whose
// bytes changed in scratch is extracted again by `retry` (download skipped), and the right audio
// is stored.
#[test]
fn a_tampered_scratch_audio_is_re_extracted_on_retry() {
    let home = Home::new();
    let origin = Origin::start();
    let url = origin.serve_video("sample.mp4", sample_video());
    home.block_storage();
    let failed = home.one_job(&["ingest", &url], 1);
    assert_eq!(
        failed["error"]["class"], "storage_error",
        "{}",
        failed["error"]
    );
    let id = id_of(&failed);
    let failed_show = home.show(&id);
    let seq = last_seq(&failed_show);
    let scratch_audio = scratch_output(&failed_show, "extract", "audio");
    assert_eq!(
        scratch_audio,
        home.path().join("scratch").join(&id).join("audio.m4a")
    );
    let extracted_blake3 = step_output(&failed_show, "extract", "audio")["blake3"].clone();
    assert_eq!(extracted_blake3, blake3_hex(&scratch_audio).as_str());

    invert_bytes(&scratch_audio);
    home.unblock_storage();
    let job = home.one_job(&["retry", &id], 0);

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
    assert_eq!(origin.gets("sample.mp4"), 1);
    // ffmpeg's stream copy of the same original gives the same bytes as the first extraction.
    let audio = artifact(&show, "audio");
    assert_eq!(audio["blake3"], extracted_blake3);
    let stored_audio = home.object(audio["key"].as_str().expect("a key"));
    assert_eq!(
        blake3_hex(&stored_audio),
        extracted_blake3.as_str().expect("a hash")
    );
    let probe = ffprobe(&stored_audio);
    assert!(
        probe["streams"]
            .as_array()
            .is_some_and(|streams| !streams.is_empty()
                && streams.iter().all(|stream| stream["codec_type"] == "audio")),
        "the stored audio is audio: {probe}"
    );
}

// Guards `verify` (runbook step 3) against a lost original: a deleted video blob makes it exit 1
// and name the video as missing.
#[test]
fn verify_names_a_deleted_video_as_missing() {
    let home = Home::new();
    let origin = Origin::start();
    let url = origin.serve_video("sample.mp4", sample_video());
    let id = id_of(&home.one_job(&["ingest", &url], 0));
    let show = home.show(&id);
    let video_key = artifact(&show, "video")["key"].as_str().expect("a key");

    std::fs::remove_file(home.object(video_key)).expect("delete the video blob");

    let reports = home.json(&["verify"], 1);
    let problems = only_report(&reports, &id);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0]["artifact"], "video");
    assert_eq!(problems[0]["problem"], "missing");
    let text = home.narra(&["verify", &id]);
    assert_eq!(text.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout.contains("video") && stdout.contains("missing"),
        "{stdout}"
    );
}

/// The problems `verify --json` reported for its only job, `id`.
fn only_report<'a>(reports: &'a Value, id: &str) -> &'a Vec<Value> {
    let reports = reports.as_array().expect("a list of reports");
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0]["id"], id);
    assert_eq!(reports[0]["ok"], false);
    reports[0]["problems"].as_array().expect("a problems list")
}
