//! The crash matrix: one job, aborted once at every failpoint of the checkpoint protocol
//! (`narra::failpoint::FAILPOINTS`), then resumed without it.
//!
//! Guards the promise of docs/ARCHITECTURE.md's checkpoint protocol: whatever boundary a crash hits,
//! the next run ends with the job succeeded and its artifacts byte-identical to a run that never
//! crashed, no step whose checkpoint was durable runs again, the origin is asked for the video a
//! second time only if the crash came before the download's checkpoint, no stored object is
//! written twice, nothing partial is left at a final key, and `verify` and `audit` are clean.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;

use serde_json::Value;

use super::fixture::{
    FileIdentity, Home, Origin, blake3_hex, file_snapshot, id_of, last_seq, sample_video,
    step_events_after,
};

const SIGABRT: i32 = 6;
const STEPS: [&str; 3] = ["download", "extract", "store"];
const VIDEO_PATH: &str = "videos/sample.mp4";

/// A failpoint and the pass it fires on, with the situation that reaches it.
struct Case {
    /// What `NARRA_FAILPOINT` is set to.
    spec: String,
    name: &'static str,
    /// The `fail.*` failpoints are on the failure path: the store step fails on blocked storage,
    /// and storage is unblocked before the job is resumed.
    store_fails: bool,
}

fn cases() -> Vec<Case> {
    let mut cases: Vec<Case> = narra::failpoint::FAILPOINTS
        .iter()
        .map(|&name| Case {
            spec: name.to_string(),
            name,
            store_fails: name.starts_with("fail."),
        })
        .collect();
    // The store step writes three blobs (video, audio, metadata record) and files go through the
    // temp-file path twice (video, audio): the later passes are boundaries of their own.
    for (name, hit) in [
        ("store.blob.after", 2),
        ("store.blob.after", 3),
        ("storage.put_file.before_close", 2),
    ] {
        cases.push(Case {
            spec: format!("{name}@{hit}"),
            name,
            store_fails: false,
        });
    }
    cases
}

/// What a run without crashes stored: each artifact's blake3 and the manifest with its job id and
/// source (which differ between homes and origins) taken out.
#[derive(Debug, PartialEq, Eq)]
struct Stored {
    artifacts: BTreeMap<String, String>,
    manifest: Value,
}

fn stored(home: &Home, show: &Value) -> Stored {
    let mut artifacts = BTreeMap::new();
    for artifact in show["artifacts"].as_array().expect("artifacts") {
        let kind = artifact["kind"].as_str().expect("a kind").to_string();
        let key = artifact["key"].as_str().expect("a key");
        let found = blake3_hex(&home.object(key));
        assert_eq!(
            artifact["blake3"],
            found.as_str(),
            "{kind} at {key} holds its recorded bytes"
        );
        artifacts.insert(kind, found);
    }
    let manifest_key = show["manifest"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("jobs/{}/manifest.json", id_of(show)));
    let bytes = std::fs::read(home.object(&manifest_key)).expect("read the manifest");
    artifacts.insert("manifest".into(), blake3::hash(&bytes).to_hex().to_string());
    let mut manifest: Value = serde_json::from_slice(&bytes).expect("a JSON manifest");
    let object = manifest.as_object_mut().expect("a manifest object");
    object.remove("job_id");
    object.remove("source");
    // The manifest's own hash covers the job id and source: compared through its fields instead.
    artifacts.remove("manifest");
    Stored {
        artifacts,
        manifest,
    }
}

/// Every stored object but the fs backend's temp directory, with its identity.
fn objects(home: &Home) -> BTreeMap<PathBuf, FileIdentity> {
    if !home.objects().exists() {
        return BTreeMap::new();
    }
    file_snapshot(&home.objects())
        .into_iter()
        .filter(|(path, _)| !path.starts_with(temp_dir(home)))
        .collect()
}

fn temp_dir(home: &Home) -> PathBuf {
    home.objects().join(narra::storage::FS_ATOMIC_WRITE_DIR)
}

fn temp_files(home: &Home) -> Vec<PathBuf> {
    let dir = temp_dir(home);
    if !dir.exists() {
        return Vec::new();
    }
    file_snapshot(&dir).into_keys().collect()
}

fn checkpointed_steps(show: &Value) -> BTreeSet<String> {
    show["checkpoints"]
        .as_array()
        .expect("checkpoints")
        .iter()
        .map(|checkpoint| checkpoint["step"].as_str().expect("a step").to_string())
        .collect()
}

/// One row of the summary table.
struct Row {
    spec: String,
    status_at_crash: String,
    resumed: String,
    skipped: Vec<String>,
    gets: usize,
}

#[test]
fn every_failpoint_crash_resumes_to_the_same_artifacts() {
    let origin = Origin::start();
    let url = origin.serve_video(VIDEO_PATH, sample_video());

    let reference_home = Home::new();
    let reference = reference_home.one_job(&["ingest", &url], 0);
    let reference_stored = stored(&reference_home, &reference_home.show(&id_of(&reference)));

    let mut rows = Vec::new();
    for case in cases() {
        rows.push(crash_and_resume(&case, &url, &origin, &reference_stored));
    }

    eprintln!("\ncrash matrix: {} failpoint passes", rows.len());
    eprintln!(
        "{:<36} {:<10} {:<10} {:<26} GETs",
        "failpoint", "at crash", "resumed", "skipped as done"
    );
    for row in &rows {
        eprintln!(
            "{:<36} {:<10} {:<10} {:<26} {}",
            row.spec,
            row.status_at_crash,
            row.resumed,
            if row.skipped.is_empty() {
                "-".to_string()
            } else {
                row.skipped.join(",")
            },
            row.gets
        );
    }
}

fn crash_and_resume(case: &Case, url: &str, origin: &Origin, reference: &Stored) -> Row {
    let home = Home::new();
    if case.store_fails {
        home.block_storage();
    }
    let gets_before = origin.gets(VIDEO_PATH);
    let spec = &case.spec;

    // The crash.
    let output = home
        .command(&["--json", "ingest", url])
        .env(narra::failpoint::FAILPOINT_ENV, spec)
        .output()
        .expect("narra runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.signal(),
        Some(SIGABRT),
        "{spec}: narra died by abort, not {:?}\n{stderr}",
        output.status
    );
    assert!(
        stderr.contains(&format!("narra: failpoint fired: {}", case.name)),
        "{spec}: the failpoint fired\n{stderr}"
    );
    let jobs = home.json(&["jobs"], 0);
    let jobs = jobs.as_array().expect("a list of jobs");
    let id = match jobs.as_slice() {
        [] => {
            // Only a crash before the submission leaves no job; no failpoint is that early.
            panic!("{spec}: the crash lost the submitted job");
        }
        [job] => id_of(job),
        _ => panic!("{spec}: one job, not {jobs:?}"),
    };
    let at_crash = home.show(&id);
    let status_at_crash = at_crash["status"].as_str().expect("a status").to_string();
    let crash_seq = last_seq(&at_crash);
    let done_at_crash = checkpointed_steps(&at_crash);
    // Only the store step's writes may leave temp files (opendal buffers up to a chunk, 8 MiB on
    // `fs://`, before it creates one, so a small sample leaves none): the interrupted one, and
    // those of the other objects it writes at once, still in flight; never at a final key.
    let temp_at_crash = temp_files(&home);
    assert!(
        temp_at_crash.is_empty()
            || (case.name.starts_with("store.") || case.name.starts_with("storage."))
                && temp_at_crash.len() <= 3,
        "{spec}: temp files {temp_at_crash:?}"
    );
    if case.store_fails {
        home.unblock_storage();
    }
    let objects_at_crash = objects(&home);

    // The resumption.
    if status_at_crash != "succeeded" {
        let retried = home.one_job(&["retry", &id], 0);
        assert_eq!(retried["status"], "succeeded", "{spec}: {retried}");
    }
    let show = home.show(&id);
    assert_eq!(show["status"], "succeeded", "{spec}");
    assert_eq!(show["ingestion_phase"], Value::Null, "{spec}");
    assert_eq!(
        stored(&home, &show),
        *reference,
        "{spec}: the same artifacts as without a crash"
    );

    // No step whose checkpoint was durable at the crash ran again: each was skipped.
    let events = step_events_after(&show, crash_seq);
    for step in &done_at_crash {
        let ran = events
            .iter()
            .any(|(kind, event_step)| kind == "step_started" && event_step == step);
        assert!(
            !ran,
            "{spec}: {step} was checkpointed before the crash and ran again: {events:?}"
        );
        if status_at_crash != "succeeded" {
            assert!(
                events.contains(&("step_skipped".to_string(), step.clone())),
                "{spec}: {step} was skipped as done: {events:?}"
            );
        }
    }
    let resumed = STEPS
        .iter()
        .find(|step| {
            events
                .iter()
                .any(|(kind, event_step)| kind == "step_started" && event_step == *step)
        })
        .map(|step| step.to_string())
        .unwrap_or_else(|| "-".to_string());

    // The origin was asked again only when the download had no checkpoint yet.
    let gets = origin.gets(VIDEO_PATH) - gets_before;
    let gets_max = if done_at_crash.contains("download") {
        1
    } else {
        2
    };
    assert!(
        gets >= 1 && gets <= gets_max,
        "{spec}: {gets} GETs of the video"
    );

    // No object was written twice: what was stored at the crash is untouched (same inode, size
    // and mtime), and the history names each blob written at most once.
    let objects_after = objects(&home);
    for (path, identity) in &objects_at_crash {
        assert_eq!(
            objects_after.get(path),
            Some(identity),
            "{spec}: {} was rewritten after the crash",
            path.display()
        );
    }
    let mut written = BTreeMap::<String, usize>::new();
    for event in show["events"].as_array().expect("events") {
        if event["kind"] == "objects_written" {
            for key in event["keys"].as_array().expect("keys") {
                *written
                    .entry(key.as_str().expect("a key").to_string())
                    .or_default() += 1;
            }
        }
    }
    assert!(
        written.values().all(|&count| count == 1),
        "{spec}: objects written {written:?}"
    );

    // No partial or orphan object: the objects are exactly those the store checkpoint names.
    let named: BTreeSet<PathBuf> = super::fixture::checkpoint(&show, "store")["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .map(|output| {
            let location = output["location"].as_str().expect("a location");
            home.object(location.strip_prefix("object:").unwrap_or(location))
        })
        .collect();
    let found: BTreeSet<PathBuf> = objects_after.keys().cloned().collect();
    assert_eq!(found, named, "{spec}: only the job's artifacts are stored");
    if !temp_at_crash.is_empty() {
        // The interrupted write is a partial in the temp dir, never at its key; cleanup removes it.
        remove_partials(&home, spec);
    }
    assert_eq!(
        temp_files(&home),
        Vec::<PathBuf>::new(),
        "{spec}: no temp file left"
    );
    assert!(
        !home.path().join("scratch").join(&id).exists(),
        "{spec}: scratch removed"
    );

    assert_eq!(home.json(&["verify", &id], 0)[0]["ok"], true, "{spec}");
    let audit = home.json(&["audit", &id], 0);
    assert_eq!(audit[0]["violations"], 0, "{spec}: {audit}");

    Row {
        spec: spec.clone(),
        status_at_crash,
        resumed,
        skipped: STEPS
            .iter()
            .filter(|step| events.contains(&("step_skipped".to_string(), step.to_string())))
            .map(|step| step.to_string())
            .collect(),
        gets,
    }
}

/// `cleanup` finds the interrupted writes as partials and removes them when confirmed: one per
/// object being written when the process died (the video, the audio and the metadata record are
/// stored at once, so a crash can interrupt all three), all in storage's temp directory, none at
/// a key.
fn remove_partials(home: &Home, spec: &str) {
    let plan = home.json(&["cleanup", "--min-age-s", "0"], 0);
    let deletions = plan["deletions"].as_array().expect("deletions");
    assert!(
        (1..=3).contains(&deletions.len())
            && deletions
                .iter()
                .all(|deletion| deletion["reason"] == "partial"
                    && deletion["key"]
                        .as_str()
                        .is_some_and(|key| key.starts_with(".narra-tmp/"))),
        "{spec}: cleanup plans to delete the partial writes only: {plan}"
    );
    let plan_id = plan["id"].as_str().expect("a plan id");
    home.json(&["cleanup", "--min-age-s", "0", "--confirm", plan_id], 0);
}
