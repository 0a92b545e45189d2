//! Stuck jobs and bulk operations: `jobs --stuck`, `reset` (with and without `--force`), and
//! `retry`/`cancel` by status, error class and backfill.

use super::fixture::{Home, Origin, StallingOrigin, id_of, sample_video};

// Guards the recovery of stuck jobs: a job left running by a killed worker is listed by
// `jobs --stuck`, `reset` refuses it while its lease is live, `reset --force` returns it to pending
// recording who and why (event and incident), and a worker then finishes it.
#[test]
fn a_stuck_job_is_listed_and_reset_only_with_force_while_its_lease_is_live() {
    let home = Home::new();
    let origin = StallingOrigin::start(std::fs::read(sample_video()).unwrap());
    let submitted = home.json(&["submit", &origin.url], 0);
    let id = id_of(&submitted[0]);
    // A lease far longer than the test: it is live for certain when `reset` is tried.
    let lease = [("NARRA_LEASE_TTL_MS", "3600000")];
    let mut worker = home.command(&["worker"]);
    worker
        .envs(lease)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut worker = super::fixture::ChildGuard::from_child(worker.spawn().expect("narra starts"));
    origin.wait_for_stall();
    worker.kill();

    let stuck = home.json(&["jobs", "--stuck", "--stuck-after-s", "0"], 0);
    let stuck = stuck.as_array().expect("a list");
    assert_eq!(stuck.len(), 1, "{stuck:?}");
    assert_eq!(id_of(&stuck[0]), id);
    assert_eq!(stuck[0]["status"], "running");
    assert!(
        stuck[0]["stuck"].to_string().contains("no_progress"),
        "{}",
        stuck[0]
    );

    let refused = home.narra(&["reset", &id]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("live lease"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(home.show(&id)["status"], "running", "nothing changed");

    let output = home.narra_env(
        &[
            "--json",
            "reset",
            &id,
            "--force",
            "--reason",
            "worker host lost",
        ],
        &[("USER", "ops")],
    );
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let show = home.show(&id);
    assert_eq!(show["status"], "pending");
    assert_eq!(show["ingestion_phase"], serde_json::Value::Null);
    assert_eq!(show["lease"], serde_json::Value::Null);
    assert!(
        show["events"]
            .to_string()
            .contains("reset by ops (forced): worker host lost"),
        "{}",
        show["events"]
    );
    let incidents = home.json(&["incidents"], 0);
    let incident = incidents.as_array().unwrap().last().unwrap().clone();
    assert_eq!(incident["actor"], "ops");
    assert_eq!(incident["action"], "reset_job");
    assert_eq!(incident["job"], id.as_str());

    assert_eq!(
        home.json(&["jobs", "--stuck", "--stuck-after-s", "0"], 0),
        serde_json::json!([])
    );
    let pending_again = home.narra(&["reset", &id]);
    assert_eq!(
        pending_again.status.code(),
        Some(1),
        "a pending job is not reset"
    );

    origin.fix();
    home.json(&["worker", "--drain"], 0);
    assert_eq!(home.show(&id)["status"], "succeeded");
}

// Guards the bulk filters: `retry --status failed --class C` touches only that class, `cancel
// --status failed` the rest, and `cancel` by backfill acts on that backfill's jobs only.
#[test]
fn bulk_retry_and_cancel_select_by_status_class_and_backfill() {
    let home = Home::new();
    let origin = Origin::start();
    origin.fail_with("gone-1.mp4", 404);
    origin.fail_with("gone-2.mp4", 404);
    origin.fail_with("blocked.mp4", 403);
    let sources = [
        origin.url("gone-1.mp4"),
        origin.url("gone-2.mp4"),
        origin.url("blocked.mp4"),
    ];
    let failed = home.json(&["ingest", &sources[0], &sources[1], &sources[2]], 1);
    let class_of = |job: &serde_json::Value| job["error"]["class"].as_str().unwrap().to_string();
    let not_found: Vec<String> = failed
        .as_array()
        .unwrap()
        .iter()
        .filter(|job| class_of(job) == "not_found")
        .map(id_of)
        .collect();
    assert_eq!(not_found.len(), 2, "{failed}");
    let blocked = id_of(&failed[2]);
    assert_eq!(class_of(&failed[2]), "download_blocked");

    let retried = home.json(
        &[
            "retry",
            "--status",
            "failed",
            "--class",
            "not_found",
            "--detach",
        ],
        1,
    );
    let mut retried_ids: Vec<String> = retried.as_array().unwrap().iter().map(id_of).collect();
    retried_ids.sort();
    let mut expected = not_found.clone();
    expected.sort();
    assert_eq!(retried_ids, expected);
    for id in &not_found {
        assert_eq!(home.show(id)["status"], "pending");
    }
    assert_eq!(home.show(&blocked)["status"], "failed");

    let cancelled = home.json(&["cancel", "--status", "failed"], 0);
    assert_eq!(cancelled.as_array().unwrap().len(), 1, "{cancelled}");
    assert_eq!(home.show(&blocked)["status"], "cancelled");

    let cancelled = home.json(
        &["cancel", "--status", "pending", "--class", "not_found"],
        0,
    );
    assert_eq!(cancelled.as_array().unwrap().len(), 2, "{cancelled}");

    // A backfill's jobs only: one more source, submitted by a backfill, then cancelled through it.
    let manifest = home.dir.path().join("more.txt");
    origin.fail_with("later.mp4", 404);
    std::fs::write(&manifest, format!("{}\n", origin.url("later.mp4"))).unwrap();
    let summary = home.json(&["backfill", manifest.to_str().unwrap()], 1);
    let backfill = summary["backfill"].as_str().unwrap().to_string();
    // Like every `retry --detach`, it exits 1: the jobs are pending, not succeeded.
    let retried = home.json(&["retry", "--backfill", &backfill, "--detach"], 1);
    assert_eq!(retried.as_array().unwrap().len(), 1, "{retried}");
    let later = id_of(&retried[0]);
    assert_eq!(home.show(&later)["status"], "pending");
    let cancelled = home.json(&["cancel", "--backfill", &backfill], 0);
    assert_eq!(cancelled.as_array().unwrap().len(), 1, "{cancelled}");
    assert_eq!(home.show(&later)["status"], "cancelled");
    for id in &not_found {
        assert_eq!(home.show(id)["status"], "cancelled");
    }

    let usage = home.narra(&["retry"]);
    assert_eq!(usage.status.code(), Some(2), "ids or a filter are required");
}
