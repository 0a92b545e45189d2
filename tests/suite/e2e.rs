//! End to end: real sources in, real artifacts out.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::fixture::{
    Home, Origin, artifact, blake3_hex, ffprobe, id_of, other_video, sample_video, stream_duration,
};

// Guards the whole spine: a job from an HTTP URL and a job from a local path each store the
// byte-identical original, its audio (audio-only, same duration) and its metadata, plus a manifest.
#[test]
fn http_and_local_sources_are_ingested_into_storage() {
    let home = Home::new();
    let origin = Origin::start();
    let url = origin.serve_video("media/sample.mp4", sample_video());
    let local = other_video().to_str().expect("a UTF-8 path");

    let jobs = home.json(&["ingest", &url, local], 0);

    let jobs = jobs.as_array().expect("a list of jobs");
    assert_eq!(jobs.len(), 2, "one job per source: {jobs:?}");
    assert_eq!(jobs[0]["source"], url.as_str());
    assert_eq!(jobs[1]["source"], local);
    for (job, source_file) in jobs.iter().zip([sample_video(), other_video()]) {
        assert_eq!(job["status"], "succeeded", "{job}");
        let show = home.show(&id_of(job));
        assert_ingested(&show, &id_of(job), source_file, &|key| home.object(key));
    }
    assert_eq!(origin.gets("media/sample.mp4"), 1);
}

/// Everything a succeeded job must show and have stored for `source_file`. `object` gives a local
/// file holding the object at a key (the file itself on `fs://`, a downloaded copy elsewhere), so
/// the same checks run against every backend.
pub(super) fn assert_ingested(
    show: &Value,
    id: &str,
    source_file: &Path,
    object: &dyn Fn(&str) -> PathBuf,
) {
    assert_eq!(show["status"], "succeeded");
    assert_eq!(show["ingestion_phase"], Value::Null);
    assert_eq!(show["error"], Value::Null);
    let source_probe = ffprobe(source_file);

    let kinds: Vec<&str> = show["artifacts"]
        .as_array()
        .expect("an artifacts list")
        .iter()
        .map(|artifact| artifact["kind"].as_str().expect("a kind"))
        .collect();
    assert_eq!(kinds, ["video", "audio", "metadata"]);
    let source_audio_codec = source_probe["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .find(|stream| stream["codec_type"] == "audio")
        .and_then(|stream| stream["codec_name"].as_str())
        .expect("the source has an audio stream");
    for (kind, extension) in [
        ("video", "mp4"),
        ("audio", copy_extension(source_audio_codec)),
        ("metadata", "json"),
    ] {
        assert_content_addressed(object, artifact(show, kind), extension);
    }

    // The original: byte-identical to the source.
    let video = artifact(show, "video");
    assert_eq!(video["blake3"], blake3_hex(source_file).as_str());
    let stored_video = object(video["key"].as_str().expect("a key"));
    assert!(
        std::fs::read(&stored_video).expect("the stored video")
            == std::fs::read(source_file).expect("the source"),
        "the stored video is byte-identical to the source"
    );

    // The audio: audio-only, with the source's audio duration (a stream copy keeps it).
    let stored_audio = object(artifact(show, "audio")["key"].as_str().expect("a key"));
    let audio_probe = ffprobe(&stored_audio);
    let stream_types: Vec<&Value> = audio_probe["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .map(|stream| &stream["codec_type"])
        .collect();
    assert!(
        !stream_types.is_empty() && stream_types.iter().all(|kind| *kind == "audio"),
        "the stored audio has audio streams only: {stream_types:?}"
    );
    let expected_duration = stream_duration(&source_probe, "audio");
    let found_duration = stream_duration(&audio_probe, "audio");
    assert!(
        (found_duration - expected_duration).abs() <= 0.1,
        "audio lasts {found_duration} s, the source's audio {expected_duration} s"
    );

    // The metadata object: ffprobe's view of the source.
    let stored_metadata = object(artifact(show, "metadata")["key"].as_str().expect("a key"));
    let metadata: Value =
        serde_json::from_slice(&std::fs::read(stored_metadata).expect("the metadata object"))
            .expect("the metadata object is JSON");
    assert_eq!(
        metadata["format_name"],
        source_probe["format"]["format_name"]
    );
    let stored_stream_types: Vec<&Value> = metadata["streams"]
        .as_array()
        .expect("metadata streams")
        .iter()
        .map(|stream| &stream["codec_type"])
        .collect();
    let source_stream_types: Vec<&Value> = source_probe["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .map(|stream| &stream["codec_type"])
        .collect();
    assert_eq!(stored_stream_types, source_stream_types);
    assert_eq!(metadata["format_name"], show["metadata"]["format_name"]);
    assert_eq!(metadata["streams"], show["metadata"]["streams"]);

    // The manifest names the same artifacts.
    let manifest_key = format!("jobs/{id}/manifest.json");
    assert_eq!(show["manifest"], manifest_key.as_str());
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(object(&manifest_key)).expect("the manifest"))
            .expect("the manifest is JSON");
    assert_eq!(manifest["job_id"], id);
    assert_eq!(manifest["source"], show["source"]);
    assert_eq!(manifest["artifacts"], show["artifacts"]);
}

/// An artifact's key is `blobs/<2 hex>/<blake3>.<ext>`, and the object behind it has that size
/// and hash.
fn assert_content_addressed(object: &dyn Fn(&str) -> PathBuf, artifact: &Value, extension: &str) {
    let blake3 = artifact["blake3"].as_str().expect("a blake3");
    let key = artifact["key"].as_str().expect("a key");
    assert_eq!(key, format!("blobs/{}/{blake3}.{extension}", &blake3[..2]));
    let stored = object(key);
    assert_eq!(
        blake3_hex(&stored),
        blake3,
        "the object at {key} has the recorded hash"
    );
    let size = std::fs::metadata(&stored).expect("the object exists").len();
    assert_eq!(
        artifact["size"], size,
        "the object at {key} has the recorded size"
    );
}

/// The container a stream copy of an audio codec goes into.
fn copy_extension(codec: &str) -> &'static str {
    match codec {
        "aac" => "m4a",
        "mp3" => "mp3",
        "opus" => "opus",
        "vorbis" => "ogg",
        "flac" => "flac",
        "pcm_s16le" => "wav",
        other => panic!("no container is specified for {other}"),
    }
}
