//! Maintenance: `verify` (runbook step 3), `audit`, `cleanup` (runbook step 5), `incidents` and
//! `delete`, run through the real binary on real homes.

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::fixture::{Home, Origin, artifact, blake3_hex, file_snapshot, id_of, sample_video};

/// Ingests the sample video from two URLs: two jobs whose video, audio and metadata are the same
/// blobs. Returns their ids.
fn two_jobs_sharing_blobs(home: &Home, origin: &Origin) -> (String, String) {
    let first_url = origin.serve_video("first.mp4", sample_video());
    let second_url = origin.serve_video("second.mp4", sample_video());
    let first = id_of(&home.one_job(&["ingest", &first_url], 0));
    let second = id_of(&home.one_job(&["ingest", &second_url], 0));
    (first, second)
}

/// Flips one byte in the middle of a file, in place, and puts its mtime back: inode, size and
/// mtime (the change token) are what they were, and only the bytes differ.
fn flip_byte_keeping_change_token(path: &Path) {
    let modified = std::fs::metadata(path)
        .and_then(|metadata| metadata.modified())
        .expect("stat the object");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open the object");
    let middle = file.metadata().expect("stat").len() / 2;
    let mut byte = [0u8; 1];
    file.seek(SeekFrom::Start(middle)).expect("seek");
    file.read_exact(&mut byte).expect("read a byte");
    file.seek(SeekFrom::Start(middle)).expect("seek");
    file.write_all(&[!byte[0]]).expect("write the flipped byte");
    file.set_modified(modified).expect("restore the mtime");
}

/// Writes a file `age` old (by its mtime), creating its directory.
fn write_aged(path: &Path, bytes: &[u8], age: Duration) {
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("create the directory");
    std::fs::write(path, bytes).expect("write the file");
    let file = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open the file");
    file.set_modified(SystemTime::now() - age)
        .expect("set the mtime");
}

fn strings(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .expect("a list")
        .iter()
        .map(|item| item.as_str().expect("a string").to_string())
        .collect()
}

fn findings<'a>(audit: &'a Value, kind: &str) -> Vec<&'a Value> {
    audit["findings"]
        .as_array()
        .expect("a findings list")
        .iter()
        .filter(|finding| finding["kind"] == kind)
        .collect()
}

// Guards `verify --deep` (runbook step 3): a byte flipped in a stored video, with its change token
// left as it was, passes the shallow check (which trusts an unchanged token) and is found by the
// deep one, which re-hashes; `--full` is the same as `--deep`.
#[test]
fn verify_deep_finds_a_flipped_byte_that_keeps_the_change_token() {
    let home = Home::new();
    let origin = Origin::start();
    let url = origin.serve_video("sample.mp4", sample_video());
    let id = id_of(&home.one_job(&["ingest", &url], 0));
    let show = home.show(&id);
    let video_key = artifact(&show, "video")["key"].as_str().expect("a key");

    flip_byte_keeping_change_token(&home.object(video_key));

    let shallow = home.json(&["verify", &id], 0);
    assert_eq!(shallow[0]["ok"], true);
    assert_eq!(shallow[0]["deep"], false);
    for flag in ["--deep", "--full"] {
        let deep = home.json(&["verify", flag, &id], 1);
        assert_eq!(deep[0]["ok"], false);
        let problems = deep[0]["problems"].as_array().expect("problems");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0]["artifact"], "video");
        assert_eq!(problems[0]["problem"], "mismatch");
        // Every artifact has its own verdict.
        let states: Vec<(&str, &str)> = deep[0]["artifacts"]
            .as_array()
            .expect("artifacts")
            .iter()
            .map(|a| {
                (
                    a["artifact"].as_str().expect("a name"),
                    a["state"].as_str().expect("a state"),
                )
            })
            .collect();
        assert_eq!(
            states,
            vec![
                ("video", "mismatch"),
                ("audio", "ok"),
                ("metadata", "ok"),
                ("manifest", "ok"),
                ("metadata_record", "ok"),
            ]
        );
    }
    let text = home.narra(&["verify", "--deep", &id]);
    assert_eq!(text.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout
            .lines()
            .any(|line| line.contains("video") && line.contains("mismatch")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|line| line.contains("audio") && line.contains(" ok ")),
        "{stdout}"
    );
}

// Guards the audit of a clean history: two jobs sharing blobs, a re-ingest that skips every step,
// and a cleanup-and-restore cycle report zero violations; the step counts and the single write of
// each shared blob are read back from the history.
#[test]
fn audit_reports_no_violation_on_a_clean_history() {
    let home = Home::new();
    let origin = Origin::start();
    let (first, second) = two_jobs_sharing_blobs(&home, &origin);
    let first_url = origin.url("first.mp4");
    home.one_job(&["ingest", "--reingest", &first_url], 0);

    let audits = home.json(&["audit"], 0);

    let audits = audits.as_array().expect("a list of audits");
    assert_eq!(audits.len(), 2);
    for audit in audits {
        assert_eq!(audit["violations"], 0, "{audit:#}");
        assert_eq!(audit["storage"]["agrees"], true);
    }
    let first_audit = audits
        .iter()
        .find(|audit| audit["id"] == first.as_str())
        .expect("the first job's audit");
    let steps: Vec<(String, u64, u64)> = first_audit["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|step| {
            (
                step["step"].as_str().expect("a step").to_string(),
                step["executed"].as_u64().expect("a count"),
                step["skipped"].as_u64().expect("a count"),
            )
        })
        .collect();
    assert_eq!(
        steps,
        vec![
            ("download".to_string(), 1, 1),
            ("extract".to_string(), 1, 1),
            ("store".to_string(), 1, 1),
        ]
    );
    // The second job found the shared blobs stored and wrote only its manifest.
    let second_audit = audits
        .iter()
        .find(|audit| audit["id"] == second.as_str())
        .expect("the second job's audit");
    let written: Vec<&str> = second_audit["writes"]
        .as_array()
        .expect("writes")
        .iter()
        .map(|write| write["key"].as_str().expect("a key"))
        .collect();
    assert_eq!(written, vec![format!("jobs/{second}/manifest.json")]);

    let text = home.narra(&["audit"]);
    assert_eq!(text.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("2 jobs audited, 0 violations"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
}

// Guards the audit's violations: a blob deleted outside narra is named as missing from the job's
// manifest; and when another job then writes that blob again, with nothing in narra's records to
// show it was gone, the second write is named as an object written twice. Both exit 1.
#[test]
fn audit_names_a_lost_blob_and_an_unexplained_second_write() {
    let home = Home::new();
    let origin = Origin::start();
    let first_url = origin.serve_video("first.mp4", sample_video());
    let first = id_of(&home.one_job(&["ingest", &first_url], 0));
    let show = home.show(&first);
    let video_key = artifact(&show, "video")["key"]
        .as_str()
        .expect("a key")
        .to_string();
    assert_eq!(home.json(&["audit", &first], 0)[0]["violations"], 0);

    std::fs::remove_file(home.object(&video_key)).expect("delete the video blob");

    let audit = home.json(&["audit", &first], 1);
    let missing = findings(&audit[0], "manifest_names_missing_blob");
    assert_eq!(missing.len(), 1, "{:#}", audit[0]["findings"]);
    assert_eq!(missing[0]["key"], video_key.as_str());
    assert_eq!(missing[0]["severity"], "violation");
    assert_eq!(
        findings(&audit[0], "storage_disagrees")[0]["key"],
        video_key.as_str()
    );

    // Another job of the same video writes the blob again.
    let second_url = origin.serve_video("second.mp4", sample_video());
    let second = id_of(&home.one_job(&["ingest", &second_url], 0));
    assert_eq!(home.json(&["audit", &first], 0)[0]["violations"], 0);
    let audit = home.json(&["audit", &second], 1);
    let rewritten = findings(&audit[0], "object_rewritten");
    assert_eq!(rewritten.len(), 1, "{:#}", audit[0]["findings"]);
    assert_eq!(rewritten[0]["key"], video_key.as_str());
    assert!(
        rewritten[0]["message"]
            .as_str()
            .expect("a message")
            .contains(&first),
        "{}",
        rewritten[0]["message"]
    );
    let text = String::from_utf8_lossy(&home.narra(&["audit"]).stdout).to_string();
    assert!(text.contains("violation object_rewritten"), "{text}");
}

// Guards runbook step 5: the dry run lists exactly the corrupt shared blob (and both jobs that
// reference it, to reset), the old orphan, the old partial write and the stale scratch; it leaves
// the young orphan and every valid blob alone. A wrong plan id changes nothing; the right one does
// exactly the dry run's plan, logs each action as an incident, and the reset jobs then restore
// their artifacts.
#[test]
fn cleanup_does_exactly_what_its_dry_run_listed() {
    let home = Home::new();
    let origin = Origin::start();
    let (first, second) = two_jobs_sharing_blobs(&home, &origin);
    let show = home.show(&first);
    let audio_key = artifact(&show, "audio")["key"]
        .as_str()
        .expect("a key")
        .to_string();
    let video_key = artifact(&show, "video")["key"]
        .as_str()
        .expect("a key")
        .to_string();
    let audio_bytes = std::fs::read(home.object(&audio_key)).expect("the audio blob");
    let hour = Duration::from_secs(3_600);
    std::fs::write(home.object(&audio_key), b"not the audio").expect("corrupt the audio blob");
    write_aged(&home.object("blobs/ee/orphan.mp4"), b"orphan", 2 * hour);
    write_aged(&home.object("blobs/ee/young.mp4"), b"young", Duration::ZERO);
    write_aged(&home.object(".narra-tmp/partial"), b"part", 3 * hour);
    let stale_scratch = home.path().join("scratch").join(&first);
    write_aged(&stale_scratch.join("original"), b"leftover", Duration::ZERO);

    let plan = home.json(&["cleanup"], 0);

    let plan_id = plan["id"].as_str().expect("a plan id").to_string();
    let deletions: Vec<(String, String)> = plan["deletions"]
        .as_array()
        .expect("deletions")
        .iter()
        .map(|deletion| {
            (
                deletion["key"].as_str().expect("a key").to_string(),
                deletion["reason"].as_str().expect("a reason").to_string(),
            )
        })
        .collect();
    assert_eq!(
        deletions,
        vec![
            (".narra-tmp/partial".to_string(), "partial".to_string()),
            (audio_key.clone(), "corrupt".to_string()),
            ("blobs/ee/orphan.mp4".to_string(), "orphan".to_string()),
        ]
    );
    let corrupt = &plan["deletions"][1];
    assert_eq!(
        strings(&corrupt["jobs"]),
        BTreeSet::from([first.clone(), second.clone()])
    );
    let scratch: Vec<&str> = plan["scratch"]
        .as_array()
        .expect("scratch")
        .iter()
        .map(|dir| dir["path"].as_str().expect("a path"))
        .collect();
    assert_eq!(scratch, vec![stale_scratch.display().to_string()]);
    let resets: BTreeSet<String> = plan["resets"]
        .as_array()
        .expect("resets")
        .iter()
        .map(|reset| reset["job"].as_str().expect("a job").to_string())
        .collect();
    assert_eq!(resets, BTreeSet::from([first.clone(), second.clone()]));
    // The same state plans the same id.
    assert_eq!(home.json(&["cleanup"], 0)["id"], plan_id.as_str());

    let before = file_snapshot(&home.objects());
    let refused = home.narra(&["cleanup", "--confirm", "0123456789abcdef"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("plan changed"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(
        file_snapshot(&home.objects()),
        before,
        "a refused plan deletes nothing"
    );
    assert!(stale_scratch.exists());

    let output = home.narra_env(
        &["--json", "cleanup", "--confirm", &plan_id],
        &[("USER", "ops")],
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let executed: Value = serde_json::from_slice(&output.stdout).expect("JSON");

    let planned: BTreeSet<String> = deletions.iter().map(|(key, _)| key.clone()).collect();
    assert_eq!(strings(&executed["deleted"]), planned);
    assert_eq!(strings(&executed["reset"]), resets);
    assert_eq!(executed["skipped"], Value::Array(vec![]));
    for key in &planned {
        assert!(!home.object(key).exists(), "{key} was deleted");
    }
    assert!(!stale_scratch.exists());
    assert!(home.object("blobs/ee/young.mp4").exists());
    assert!(
        home.object(&video_key).exists(),
        "a valid shared blob stays"
    );
    for id in [&first, &second] {
        assert_eq!(home.show(id)["status"], "pending");
    }
    let incidents = home.json(&["incidents"], 0);
    let incidents = incidents.as_array().expect("incidents");
    let actions: Vec<(&str, &str)> = incidents
        .iter()
        .map(|incident| {
            assert_eq!(incident["actor"], "ops");
            (
                incident["action"].as_str().expect("an action"),
                incident["key"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        actions,
        vec![
            ("deleted_object", ".narra-tmp/partial"),
            ("deleted_object", audio_key.as_str()),
            ("deleted_object", "blobs/ee/orphan.mp4"),
            ("removed_scratch", stale_scratch.to_str().expect("UTF-8")),
            ("reset_job", "-"),
            ("reset_job", "-"),
        ]
    );

    // The reset jobs run again and restore the audio's exact bytes; the history explains the
    // second write, so the audit stays clean.
    let jobs = home.json(&["worker", "--drain"], 0);
    assert_eq!(jobs.as_array().map(Vec::len), Some(2));
    assert_eq!(
        std::fs::read(home.object(&audio_key)).expect("the restored audio"),
        audio_bytes
    );
    assert_eq!(blake3_hex(&home.object(&audio_key)), audio_key[9..73]);
    for report in home.json(&["verify"], 0).as_array().expect("reports") {
        assert_eq!(report["ok"], true);
    }
    let audits = home.json(&["audit"], 0);
    assert!(
        audits
            .as_array()
            .expect("audits")
            .iter()
            .any(|audit| !findings(audit, "object_restored").is_empty()),
        "{audits:#}"
    );
    // Nothing is left to clean up but the young orphan, which is still too young.
    let after = home.json(&["cleanup"], 0);
    assert_eq!(after["deletions"], Value::Array(vec![]));
    assert_eq!(after["resets"], Value::Array(vec![]));
}

// Guards the takedown: without `--confirm` nothing changes; with it the job and its own manifest
// go, the blobs another job references stay (and still verify for it), and deleting that job too
// removes the last copies. Every removal is an incident.
#[test]
fn delete_removes_a_job_and_only_the_artifacts_no_other_job_references() {
    let home = Home::new();
    let origin = Origin::start();
    let (first, second) = two_jobs_sharing_blobs(&home, &origin);
    let show = home.show(&first);
    let blob_keys: Vec<String> = ["video", "audio", "metadata"]
        .iter()
        .map(|kind| {
            artifact(&show, kind)["key"]
                .as_str()
                .expect("a key")
                .to_string()
        })
        .collect();
    let first_manifest = format!("jobs/{first}/manifest.json");

    let before = file_snapshot(&home.objects());
    let dry_run = home.json(&["delete", &first], 0);
    assert_eq!(dry_run["deleted"], false);
    assert_eq!(
        strings(&dry_run["objects"]),
        BTreeSet::from([first_manifest.clone()])
    );
    assert_eq!(
        file_snapshot(&home.objects()),
        before,
        "a dry run deletes nothing"
    );
    assert_eq!(home.show(&first)["status"], "succeeded");

    let deleted = home.json(&["delete", &first, "--confirm"], 0);
    assert_eq!(deleted["deleted"], true);
    assert!(!home.object(&first_manifest).exists());
    let shown = home.narra(&["show", &first]);
    assert_eq!(shown.status.code(), Some(1), "the job is gone");
    for key in &blob_keys {
        assert!(home.object(key).exists(), "{key} is still {second}'s");
    }
    assert_eq!(home.json(&["verify", &second], 0)[0]["ok"], true);
    assert_eq!(home.json(&["jobs"], 0).as_array().map(Vec::len), Some(1));

    let deleted = home.json(&["delete", &second, "--confirm"], 0);
    let mut expected: BTreeSet<String> = blob_keys.iter().cloned().collect();
    expected.insert(format!("jobs/{second}/manifest.json"));
    assert_eq!(strings(&deleted["objects"]), expected);
    for key in &expected {
        assert!(!home.object(key).exists(), "{key} was deleted");
    }
    let incidents = home.json(&["incidents"], 0);
    let deleted_jobs: Vec<&str> = incidents
        .as_array()
        .expect("incidents")
        .iter()
        .filter(|incident| incident["action"] == "deleted_job")
        .map(|incident| incident["job"].as_str().expect("a job"))
        .collect();
    assert_eq!(deleted_jobs, vec![first.as_str(), second.as_str()]);
    // Nothing is orphaned by the takedowns.
    let plan = home.json(&["cleanup", "--min-age-s", "0"], 0);
    assert_eq!(plan["deletions"], Value::Array(vec![]));
}

// Guards resumability against cleanup: a failed job that never stored its artifacts keeps its
// scratch (the only copy of its checkpointed download and extraction), so cleanup leaves it alone,
// and the retry after it still downloads nothing again.
#[test]
fn cleanup_keeps_the_scratch_a_failed_job_resumes_from() {
    let home = Home::new();
    let origin = Origin::start();
    let url = origin.serve_video("kept.mp4", sample_video());
    home.block_storage();
    let failed = home.one_job(&["ingest", &url], 1);
    let id = id_of(&failed);
    let scratch = home.path().join("scratch").join(&id);
    assert!(
        scratch.join("original").exists(),
        "the failed job's download is in scratch"
    );
    home.unblock_storage();

    let plan = home.json(&["cleanup"], 0);
    assert_eq!(plan["scratch"].as_array().map(Vec::len), Some(0), "{plan}");
    assert!(
        plan["notes"]
            .as_array()
            .expect("notes")
            .iter()
            .any(|note| note.as_str().is_some_and(|note| note.contains(&id))),
        "{plan}"
    );
    let confirmed = home.narra(&[
        "cleanup",
        "--confirm",
        plan["id"].as_str().expect("a plan id"),
    ]);
    assert!(
        confirmed.status.success(),
        "{}",
        String::from_utf8_lossy(&confirmed.stderr)
    );
    assert!(scratch.join("original").exists(), "cleanup left it alone");

    let retried = home.one_job(&["retry", &id], 0);
    assert_eq!(retried["status"], "succeeded");
    assert_eq!(origin.gets("kept.mp4"), 1, "nothing downloaded again");
}
