//! A full disk under the whole home: what sled leaves in its directory when a write runs out of
//! space does not keep the state store from opening once space is back, and every step of a job
//! that ran out of space fails with a scratch or storage class, never as if the media were bad,
//! and completes on retry.

use std::path::{Path, PathBuf};

use super::fixture::{Home, id_of, sample_video};

/// The name of the newest snapshot sled finished in `state` (`snap.<LSN in 16 hex digits>`), or
/// the one it would write first.
fn newest_snapshot(state: &Path) -> String {
    std::fs::read_dir(state)
        .expect("list the state store")
        .map(|entry| {
            entry
                .expect("an entry")
                .file_name()
                .into_string()
                .expect("UTF-8")
        })
        .filter(|name| name.starts_with("snap.") && !name.ends_with(".generating"))
        .max()
        .unwrap_or_else(|| format!("snap.{:016X}", 0))
}

// Guards item 4 of #16, deterministically: sled 0.34.7 writes a snapshot only while opening a
// database, into `snap.<LSN>.generating`, renamed once whole; a write that ran out of space leaves
// that file empty or partial, and sled then reads it first on every open and fails with "Read
// corrupted data". Planted here as a full disk leaves them (one empty at the newest snapshot's
// LSN, one partial at a later one), every command opens the store again and says what it removed.
#[test]
fn the_snapshots_sled_left_unfinished_are_removed_when_the_store_opens() {
    let home = Home::new();
    let job = home.one_job(&["ingest", sample_video().to_str().expect("UTF-8")], 0);
    // A second open writes sled's first snapshot, so a finished one sits beside the leftovers.
    home.json(&["jobs"], 0);
    let state = home.path().join("state");
    let newest = newest_snapshot(&state);
    let empty: PathBuf = state.join(format!("{newest}.generating"));
    let partial: PathBuf = state.join(format!("snap.{:016X}.generating", u64::MAX >> 8));
    std::fs::write(&empty, b"").expect("plant an empty snapshot");
    std::fs::write(&partial, [0x5a_u8; 100]).expect("plant a partial snapshot");

    let output = home.narra(&["--json", "doctor"]);

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(0),
        "doctor opens the store: {stderr}"
    );
    for leftover in [&empty, &partial] {
        assert!(
            stderr.contains(&leftover.display().to_string()),
            "says it removed {}: {stderr}",
            leftover.display()
        );
        assert!(!leftover.exists(), "{} is gone", leftover.display());
    }
    let jobs = home.json(&["jobs"], 0);
    assert_eq!(jobs[0]["id"], job["id"], "the job is still there: {jobs}");
    assert_eq!(jobs[0]["status"], "succeeded", "{jobs}");
    let export = home.dir.path().join("export.jsonl");
    let exported = home.narra(&["export", "-o", export.to_str().expect("UTF-8")]);
    assert!(
        exported.status.success(),
        "export reads the store: {exported:?}"
    );
}

// Guards ffmpeg's side of item 4: ffmpeg that runs out of space writing the audio (its output is
// the kernel's /dev/full here, which answers every write with ENOSPC, as a full scratch file
// system does) fails the job as `scratch_error`, naming the cause, not as `extract_failed` (which
// sends an operator after the media or ffmpeg); once there is space, a retry completes it.
#[test]
fn ffmpeg_out_of_space_is_a_scratch_error_and_a_retry_completes_the_job() {
    let home = Home::new();
    let source = sample_video().to_str().expect("UTF-8");
    let crashed = home
        .command(&["ingest", source])
        .env(narra::failpoint::FAILPOINT_ENV, "download.checkpoint.after")
        .output()
        .expect("narra runs");
    assert!(
        String::from_utf8_lossy(&crashed.stderr).contains("failpoint fired"),
        "the ingest stopped after the download: {}",
        String::from_utf8_lossy(&crashed.stderr)
    );
    let jobs = home.json(&["jobs"], 0);
    let id = id_of(&jobs[0]);
    let scratch = home.path().join("scratch").join(&id);
    std::os::unix::fs::symlink("/dev/full", scratch.join("tmp-audio.m4a"))
        .expect("point the audio's temp file at /dev/full");

    let failed = home.one_job(&["retry", &id], 1);

    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["error"]["class"], "scratch_error", "{failed}");
    let message = failed["error"]["message"].as_str().expect("a message");
    assert!(
        message.contains("No space left on device"),
        "names the cause: {message}"
    );
    let retried = home.one_job(&["retry", &id], 0);
    assert_eq!(retried["status"], "succeeded", "{retried}");
}
