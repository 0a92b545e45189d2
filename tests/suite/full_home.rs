//! A full disk under the whole home: what sled leaves in its directory when a write runs out of
//! space does not keep the state store from opening once space is back, and every step of a job
//! that ran out of space fails with a scratch or storage class, never as if the media were bad,
//! and completes on retry.

use std::path::{Path, PathBuf};

use super::fixture::{Home, Origin, generate, id_of, sample_video};

/// The names of the files in sled's directory `state`.
fn state_files(state: &Path) -> Vec<String> {
    std::fs::read_dir(state)
        .expect("list the state store")
        .map(|entry| {
            entry
                .expect("an entry")
                .file_name()
                .into_string()
                .expect("UTF-8")
        })
        .collect()
}

/// The name of the newest snapshot sled finished in `state` (`snap.<LSN in 16 hex digits>`), or
/// the one it would write first.
fn newest_snapshot(state: &Path) -> String {
    state_files(state)
        .into_iter()
        .filter(|name| name.starts_with("snap.") && !name.ends_with(".generating"))
        .max()
        .unwrap_or_else(|| format!("snap.{:016X}", 0))
}

// Guards recovery from a full disk, deterministically: sled 0.34.7 writes a snapshot only while
// opening a database, into `snap.<LSN>.generating`, renamed once whole; a write that ran out of
// space leaves that file empty or partial, and sled then reads it first on every open and fails
// with "Read corrupted data". Planted here as a full disk leaves them (one empty at the newest
// snapshot's LSN, one partial at a later one), every command opens the store again and says what it
// removed.
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

// Guards ffmpeg's side of a full disk: ffmpeg that runs out of space writing the audio (its output
// is the kernel's /dev/full here, which answers every write with ENOSPC, as a full scratch file
// system does) fails the job as `scratch_error`, naming the cause, not as `extract_failed` (which
// sends an operator after the media or ffmpeg); once there is space, a retry completes it. The
// media helper may write only beneath scratch, so its Landlock rule is switched off here to let it
// reach /dev/full: the point is what ENOSPC becomes.
#[test]
fn ffmpeg_out_of_space_is_a_scratch_error_and_a_retry_completes_the_job() {
    let home = Home::new();
    let source = sample_video().to_str().expect("UTF-8");
    let id = ingest_until(&home, &["ingest", source], "download.checkpoint.after");
    let scratch = home.path().join("scratch").join(&id);
    std::os::unix::fs::symlink("/dev/full", scratch.join("tmp-audio.m4a"))
        .expect("point the audio's temp file at /dev/full");

    let output = home
        .command(&["--json", "retry", &id])
        .env("NARRA_MEDIA_SANDBOX_DISABLE", "landlock")
        .output()
        .expect("narra runs");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let failed: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let failed = failed[0].clone();

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

/// Leaves `free_bytes` free on the file system holding `home` (a multiple of its 4 KiB pages), by
/// allocating the rest to `<home>/filler`; `free_bytes = None` removes the filler.
fn fill(home: &Path, free_bytes: Option<u64>) {
    let filler = home.join("filler");
    let _ = std::fs::remove_file(&filler);
    let Some(free_bytes) = free_bytes else {
        return;
    };
    let available = narra::steps::free_bytes(home).expect("measure the free space");
    let length = i64::try_from(available - free_bytes).expect("a file length");
    let file = std::fs::File::create(&filler).expect("create the filler");
    // SAFETY: `file` is open for writing and outlives the call.
    let error = unsafe { libc::posix_fallocate(std::os::fd::AsRawFd::as_raw_fd(&file), 0, length) };
    assert_eq!(error, 0, "allocate {length} bytes of filler");
    assert_eq!(narra::steps::free_bytes(home).expect("measure"), free_bytes);
}

/// `--workflows WORKFLOWS` followed by `rest`.
fn flagged<'a>(workflows: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--workflows", workflows];
    args.extend_from_slice(rest);
    args
}

/// Runs narra with `args` (an `ingest` of one new source) until it aborts at `failpoint`: the new
/// job's id.
fn ingest_until(home: &Home, args: &[&str], failpoint: &str) -> String {
    let before = home.json(&["jobs"], 0).as_array().expect("jobs").len();
    let crashed = home
        .command(args)
        .env(narra::failpoint::FAILPOINT_ENV, failpoint)
        .output()
        .expect("narra runs");
    assert!(
        String::from_utf8_lossy(&crashed.stderr).contains("failpoint fired"),
        "{args:?} stopped at {failpoint}: {}",
        String::from_utf8_lossy(&crashed.stderr)
    );
    let jobs = home.json(&["jobs"], 0);
    let jobs = jobs.as_array().expect("jobs");
    assert_eq!(jobs.len(), before + 1, "one job more: {jobs:?}");
    // `jobs` lists the newest first.
    id_of(&jobs[0])
}

/// The steps a job has checkpointed, in order.
fn checkpointed(home: &Home, id: &str) -> Vec<String> {
    home.show(id)["checkpoints"]
        .as_array()
        .expect("checkpoints")
        .iter()
        .map(|checkpoint| checkpoint["step"].as_str().expect("a step").to_string())
        .collect()
}

/// Asserts a job failed with `class`, naming ENOSPC, after checkpointing `done`. Frees the space
/// first: `show` opens the store, and sled writes a snapshot as it opens.
fn assert_out_of_space(home: &Home, job: &serde_json::Value, class: &str, done: &[&str]) {
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["class"], class, "{job}");
    let message = job["error"]["message"].as_str().expect("a message");
    assert!(
        message.contains("No space left on device"),
        "names the cause: {message}"
    );
    fill(&home.path(), None);
    assert_eq!(checkpointed(home, &id_of(job)), done, "{job}");
}

// Guards recovery from a real full disk: the WHOLE home (state store, scratch, objects, lock) on a
// 16 MiB tmpfs, filled so that space runs out in each step of a job in turn (the download, the
// extraction, the store step, and the state store's own writes, which leave sled's unfinished
// snapshot behind); once space is freed, every command opens the store again, each job completes on
// retry, and `verify` and `audit` are clean. The sizes: three 10 s clips of about 170 KiB with
// 80 KiB of audio; the store step links the scratch files into the objects (same file system) and
// writes only the metadata record and the manifest, so it runs out with one page free; every sled
// write lands in log pages its last open already zeroed, but for the snapshot an open writes.
#[test]
fn a_full_home_fails_each_step_clearly_and_every_job_completes_once_space_is_freed() {
    let home = Home::new();
    let workflows = super::faults::workflows_without_scratch_reserve(&home);
    let _tmpfs = super::faults::Tmpfs::mount(&home.path(), "16m")
        .expect("mount a tmpfs over the home (the test runs as root, as CI does)");
    let clips: Vec<PathBuf> = [330, 550, 770, 990]
        .iter()
        .map(|frequency| generate(&format!("full-home-{frequency}.mp4"), 10.0, *frequency))
        .collect();
    let clip = |index: usize| clips[index].to_str().expect("UTF-8").to_string();
    let origin = Origin::start();
    let url = origin.serve_video("full-home.mp4", &clips[0]);
    origin.unannounce("full-home.mp4");
    let run = |rest: &[&str], code: i32| home.one_job(&flagged(&workflows, rest), code);
    let home_dir = home.path();

    // The download: 64 KiB free, less than the original.
    fill(&home_dir, Some(64 * 1024));
    let download = run(&["ingest", &url], 1);
    assert_out_of_space(&home, &download, "scratch_error", &[]);

    // The extraction: downloaded with space, then 16 KiB free for the audio.
    fill(&home_dir, None);
    let extract = ingest_until(
        &home,
        &flagged(&workflows, &["ingest", &clip(1)]),
        "download.checkpoint.after",
    );
    fill(&home_dir, Some(16 * 1024));
    let extracted = run(&["retry", &extract], 1);
    assert_out_of_space(&home, &extracted, "scratch_error", &["download"]);

    // The store step: extracted with space, then one page free.
    fill(&home_dir, None);
    let store = ingest_until(
        &home,
        &flagged(&workflows, &["ingest", &clip(2)]),
        "extract.checkpoint.after",
    );
    fill(&home_dir, Some(4096));
    let stored = run(&["retry", &store], 1);
    assert_out_of_space(&home, &stored, "storage_error", &["download", "extract"]);

    // The state store: a job submitted with space (the store's log grows past its snapshot), then
    // no page free, so the snapshot sled writes as a draining worker opens the store fails,
    // unfinished.
    let submitted = home.json(&flagged(&workflows, &["submit", &clip(3)]), 0);
    let claimed = submitted[0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("a job id in {submitted}"))
        .to_string();
    fill(&home_dir, Some(0));
    let refused = home.narra(&flagged(&workflows, &["worker", "--drain"]));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    let state = home_dir.join("state");
    let leftovers: Vec<String> = state_files(&state)
        .into_iter()
        .filter(|name| name.ends_with(".generating"))
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "sled left its unfinished snapshot: {leftovers:?}"
    );

    // Space is back: the store opens (saying what it removed), and every job completes.
    fill(&home_dir, None);
    let doctor = home.narra(&["--json", "doctor", "--scratch-min-free-mb", "1"]);
    let stderr = String::from_utf8_lossy(&doctor.stderr);
    assert_eq!(doctor.status.code(), Some(0), "doctor: {stderr}");
    assert!(
        stderr.contains(&leftovers[0]),
        "names {}: {stderr}",
        leftovers[0]
    );
    let ids = [id_of(&download), extract, store];
    let mut retry = vec!["retry"];
    retry.extend(ids.iter().map(String::as_str));
    let retried = home.json(&flagged(&workflows, &retry), 0);
    assert_eq!(retried.as_array().expect("jobs").len(), 3, "{retried}");
    for job in retried.as_array().expect("jobs") {
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    let drained = home.narra(&flagged(&workflows, &["worker", "--drain"]));
    assert!(drained.status.success(), "the worker drains: {drained:?}");
    assert_eq!(home.show(&claimed)["status"], "succeeded");
    let verified = home.json(&["verify"], 0);
    assert!(
        verified
            .as_array()
            .expect("reports")
            .iter()
            .all(|report| report["ok"] == true),
        "{verified}"
    );
    let audit = home.json(&["audit"], 0);
    let audited = audit.as_array().expect("reports");
    assert_eq!(audited.len(), 4, "{audit}");
    assert!(
        audited.iter().all(|report| report["violations"] == 0),
        "{audit}"
    );
}
