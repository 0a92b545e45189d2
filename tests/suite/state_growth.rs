//! State growth and `retry --from STEP`, through the real binary: bounded event histories (`show`
//! tells what was compacted, `audit` does not change), `prune` of old finished jobs (their media
//! stays, and stays protected from `cleanup`), the store's size in `doctor`, and redoing a finished
//! job from a named step.

use serde_json::Value;

use super::fixture::{
    Home, Origin, artifact, id_of, last_seq, sample_video, step_events_after, steps, wait_until,
};

fn stderr_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .expect("a checks list")
        .iter()
        .find(|check| check["name"] == name)
        .unwrap_or_else(|| panic!("a {name} check in {report}"))
}

/// The keys of every `objects_written` event after event `seq`.
fn keys_written_after(show: &Value, seq: u64) -> Vec<String> {
    show["events"]
        .as_array()
        .expect("an events list")
        .iter()
        .filter(|event| event["seq"].as_u64().expect("a seq") > seq)
        .filter(|event| event["kind"] == "objects_written")
        .flat_map(|event| event["keys"].as_array().expect("keys").clone())
        .map(|key| key.as_str().expect("a key").to_string())
        .collect()
}

// Guards `prune`: a dry run lists only finished jobs older than the cutoff and changes nothing;
// `--confirm` removes their state (show says the job was pruned) but never a pending job's, keeps
// every object in storage, and `cleanup` afterwards plans no deletion of the pruned job's media
// (its blob references stay under a tombstone); the run is one incident; the same source submitted
// again is a new job whose store step uploads no blob again; `doctor` counts the pruned job.
#[test]
fn prune_removes_old_finished_jobs_and_their_media_stays_protected() {
    let home = Home::new();
    let origin = Origin::start();
    let url = origin.serve_video("talk.mp4", sample_video());
    let id = id_of(&home.one_job(&["ingest", &url], 0));
    let pending = id_of(&home.one_job(&["submit", &origin.url("later.mp4")], 0));
    let show = home.show(&id);
    let keys: Vec<String> = ["video", "audio", "metadata"]
        .iter()
        .map(|kind| {
            artifact(&show, kind)["key"]
                .as_str()
                .expect("a key")
                .to_string()
        })
        .chain([format!("jobs/{id}/manifest.json")])
        .collect();

    let nothing = home.json(&["prune", "--older-than", "1d"], 0);
    assert_eq!(nothing["count"], 0, "{nothing}");
    let dry = home.json(&["prune", "--older-than", "0s"], 0);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["count"], 1, "only the finished job: {dry}");
    assert_eq!(dry["jobs"][0]["id"], id.as_str());
    assert_eq!(
        home.show(&id)["status"],
        "succeeded",
        "a dry run changes nothing"
    );

    let pruned = home.json(&["prune", "--older-than", "0s", "--confirm"], 0);
    assert_eq!(pruned["pruned"], serde_json::json!([id]), "{pruned}");

    let gone = home.narra(&["show", &id]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(
        stderr_of(&gone).contains("was pruned"),
        "{}",
        stderr_of(&gone)
    );
    assert_eq!(home.show(&pending)["status"], "pending");
    for key in &keys {
        assert!(home.object(key).exists(), "{key} stays in storage");
    }
    let cleanup_plans_none_of = |keys: &[String]| {
        let plan = home.json(&["cleanup", "--min-age-s", "0"], 0);
        let planned: Vec<&str> = plan["deletions"]
            .as_array()
            .expect("deletions")
            .iter()
            .map(|deletion| deletion["key"].as_str().expect("a key"))
            .collect();
        for key in keys {
            assert!(
                !planned.contains(&key.as_str()),
                "cleanup would delete {key}: {plan}"
            );
        }
    };
    cleanup_plans_none_of(&keys);
    // Not only the manifest protects the blobs: without it, the pruned job's blob references
    // (kept with its tombstone) still do.
    std::fs::remove_file(home.object(&format!("jobs/{id}/manifest.json"))).expect("remove");
    cleanup_plans_none_of(&keys[..3]);
    let incidents = home.json(&["incidents"], 0);
    let last = incidents
        .as_array()
        .expect("incidents")
        .last()
        .expect("an incident");
    assert_eq!(last["action"], "pruned_jobs");
    assert!(last["reason"].as_str().expect("a reason").contains(&id));
    let doctor = home.json(&["doctor"], 0);
    let stats = &check(&doctor, "state_store")["stats"];
    assert_eq!(stats["pruned_jobs"], 1, "{doctor}");
    assert_eq!(stats["jobs"]["pending"], 1);
    assert_eq!(stats["jobs"]["succeeded"], 0);

    let again = id_of(&home.one_job(&["ingest", &url], 0));
    assert_ne!(again, id, "the pruned job's key is free");
    let written = keys_written_after(&home.show(&again), 0);
    assert!(
        written.iter().all(|key| !key.starts_with("blobs/")),
        "every blob was already stored with its hash: {written:?}"
    );

    for args in [
        ["prune", "--older-than", "0s", "--status", "running"],
        ["prune", "--older-than", "30w", "--status", "failed"],
    ] {
        let refused = home.narra(&args);
        assert_eq!(
            refused.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr_of(&refused)
        );
    }
}

// Guards `retry --from STEP`: a succeeded job retried from extract runs extract and store again
// but skips download (the origin sees no new request), stores no blob again (same bytes), ends
// succeeded with no audit violation; a step the workflow lacks is a usage error naming the valid
// steps; a pending job is refused; the bulk selection takes `--from` too.
#[test]
fn retry_from_a_step_redoes_it_and_those_after_but_downloads_nothing() {
    let home = Home::new();
    let origin = Origin::start();
    let url = origin.serve_video("lecture.mp4", sample_video());
    let id = id_of(&home.one_job(&["ingest", &url], 0));
    let downloads = origin.gets("lecture.mp4");
    let before = last_seq(&home.show(&id));

    let retried = home.one_job(&["retry", &id, "--from", "extract"], 0);

    assert_eq!(retried["status"], "succeeded", "{retried}");
    assert_eq!(
        origin.gets("lecture.mp4"),
        downloads,
        "nothing downloaded again"
    );
    let show = home.show(&id);
    assert_eq!(
        step_events_after(&show, before),
        steps(&[
            ("step_skipped", "download"),
            ("step_started", "extract"),
            ("step_completed", "extract"),
            ("step_started", "store"),
            ("step_completed", "store"),
        ])
    );
    let written = keys_written_after(&show, before);
    assert!(
        written.iter().all(|key| !key.starts_with("blobs/")),
        "{written:?}"
    );
    let audit = home.json(&["audit", &id], 0);
    assert_eq!(audit[0]["violations"], 0, "{audit}");
    let verify = home.json(&["verify", &id], 0);
    assert_eq!(verify[0]["ok"], true, "{verify}");

    let unknown = home.narra(&["retry", &id, "--from", "nosuchstep"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        stderr_of(&unknown).contains("download, extract, store"),
        "{}",
        stderr_of(&unknown)
    );
    assert_eq!(home.show(&id)["status"], "succeeded", "nothing changed");

    let pending = id_of(&home.one_job(&["submit", &origin.url("later.mp4")], 0));
    let refused = home.narra(&["retry", &pending, "--from", "extract"]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr_of(&refused));
    assert!(
        stderr_of(&refused).contains("pending"),
        "{}",
        stderr_of(&refused)
    );
    assert_eq!(home.show(&pending)["status"], "pending");

    let bulk = home.json(&["retry", "--status", "succeeded", "--from", "store"], 0);
    let bulk = bulk.as_array().expect("a list of jobs");
    assert_eq!(bulk.len(), 1, "{bulk:?}");
    assert_eq!(bulk[0]["id"], id.as_str());
    assert_eq!(bulk[0]["status"], "succeeded");
    assert_eq!(origin.gets("lecture.mp4"), downloads);
}

// Guards the bounded history as users see it: once a job's events outgrow the bound
// (`NARRA_EVENTS_MAX` here), `show` lists only the events held and says how many older ones were
// compacted, with their per-step counts; and `audit` answers exactly as it did over the whole
// history.
#[test]
fn show_tells_what_was_compacted_and_audit_does_not_change() {
    let home = Home::new();
    let source = sample_video().to_str().expect("a UTF-8 path");
    let id = id_of(&home.one_job(&["ingest", source], 0));
    for _ in 0..3 {
        home.one_job(&["ingest", "--reingest", source], 0);
    }
    let whole = home.show(&id);
    assert_eq!(whole["events_compacted"], 0);
    assert_eq!(whole["events_summary"], Value::Null);
    let audit_before = home.json(&["audit", &id], 0);

    // A reprobe that finds the record unchanged appends one event; under a small bound that
    // append compacts the history.
    let bound = [("NARRA_EVENTS_MAX", "20")];
    let reprobed = home.narra_env(&["reprobe", &id], &bound);
    assert!(reprobed.status.success(), "{}", stderr_of(&reprobed));

    let show = home.show(&id);
    let compacted = show["events_compacted"].as_u64().expect("a count");
    let held = show["events"].as_array().expect("events");
    assert!(compacted > 0, "{show}");
    assert!(held.len() <= 20, "{} events held", held.len());
    assert_eq!(
        held[0]["seq"].as_u64(),
        Some(compacted),
        "the events held follow the summary"
    );
    assert_eq!(
        compacted + u64::try_from(held.len()).expect("small"),
        last_seq(&whole) + 2,
        "the summary and the events held are the whole history, the reprobe's event included"
    );
    let summary = &show["events_summary"];
    assert_eq!(summary["events"].as_u64(), Some(compacted));
    let download = summary["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|step| step["step"] == "download")
        .expect("download in the summary");
    assert_eq!(download["executed"], 1, "{summary}");
    let text = home.narra(&["show", &id]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!("{compacted} older events compacted")),
        "{text}"
    );

    let audit_after = home.json(&["audit", &id], 0);
    assert_eq!(audit_after, audit_before);
    let doctor = home.json(&["doctor"], 0);
    let stats = &check(&doctor, "state_store")["stats"];
    assert_eq!(
        stats["events_compacted"].as_u64(),
        Some(compacted),
        "{doctor}"
    );
    assert!(stats["size_on_disk_bytes"].as_u64().expect("a size") > 0);
}

// Guards `doctor` on a home another process holds: the store is not opened, and its size is still
// reported, read from its files.
#[test]
fn doctor_reports_the_store_size_of_a_home_in_use() {
    let home = Home::new();
    home.one_job(
        &["ingest", sample_video().to_str().expect("a UTF-8 path")],
        0,
    );
    let mut worker = home.spawn(&["worker"]);
    let pid = worker.id().to_string();
    wait_until("the worker holds the home", || {
        assert!(worker.has_exited().is_none(), "the worker runs");
        std::fs::read_to_string(home.lock_file()).is_ok_and(|text| text.trim() == pid)
    });

    let busy = home.json(&["doctor"], 0);

    let state = check(&busy, "state_store");
    let detail = state["detail"].as_str().expect("a detail");
    assert!(
        detail.contains("in use") && detail.contains("on disk"),
        "{detail}"
    );
    assert_eq!(state["stats"]["measured_from"], "files");
    assert!(
        state["stats"]["size_on_disk_bytes"]
            .as_u64()
            .expect("a size")
            > 0
    );
    worker.interrupt_and_wait();
}
