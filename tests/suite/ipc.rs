//! The CLI while another narra process holds the home: the holder serves other processes' commands
//! on `<home>/narra.sock`, so `jobs`, `show`, `logs`, `verify`, `submit`, `retry` and `cancel` work
//! during a running worker or backfill.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Output;

use serde_json::Value;

use super::fixture::{
    ChildGuard, FileId, Home, Origin, StallingOrigin, id_of, other_video, sample_video, wait_until,
};

fn socket(home: &Home) -> PathBuf {
    home.socket()
}

/// Starts `narra ARGS` and waits until it holds the home and listens on a socket other than
/// `stale` (a socket file a dead process left behind).
fn spawn_holder(home: &Home, args: &[&str], stale: Option<FileId>) -> ChildGuard {
    let mut holder = home.spawn(args);
    home.wait_for_holder(&mut holder, stale);
    holder
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Exit code and stdout, for comparing a served command with the same command run locally.
fn code_and_stdout(output: &Output) -> (Option<i32>, String) {
    (output.status.code(), text(&output.stdout))
}

// Guards the commands served over the home's socket: while `narra worker` holds the home, another
// process's `jobs`, `show`, `logs`, `verify` and `backfill --list` print exactly what they print
// with nobody holding it; `submit` of a path relative to the client's directory queues a job the
// worker runs to success; `retry` of a failed job sends it back to pending and the worker runs it
// again; `reset` is recorded as the client's user's; the socket is private (0600) and gone once the
// worker exits.
#[test]
fn while_a_worker_runs_other_processes_inspect_submit_retry_and_verify() {
    let home = Home::new();
    let origin = Origin::start();
    let good = origin.serve_video("good.mp4", sample_video());
    origin.serve_video("gone.mp4", other_video());
    origin.fail_with("gone.mp4", 404);
    let succeeded = id_of(&home.one_job(&["ingest", &good], 0));
    let failed = id_of(&home.one_job(&["ingest", &origin.url("gone.mp4")], 1));
    let reads: [&[&str]; 7] = [
        &["--json", "jobs"],
        &["jobs"],
        &["--json", "show", &succeeded],
        &["show", &failed],
        &["logs", &succeeded],
        &["--json", "verify", &succeeded],
        &["--json", "backfill", "--list"],
    ];
    let local: Vec<_> = reads
        .iter()
        .map(|args| code_and_stdout(&home.narra(args)))
        .collect();
    assert!(
        local[4].1.contains("job finished status=succeeded"),
        "the job has log lines to compare: {}",
        local[4].1
    );

    let mut worker = spawn_holder(&home, &["worker"], None);
    let mode = std::fs::metadata(socket(&home))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the socket is private: {mode:o}");

    for (args, local) in reads.iter().zip(&local) {
        let served = home.narra(args);
        assert_eq!(
            &code_and_stdout(&served),
            local,
            "narra {args:?} served by the worker prints what it prints locally; stderr:\n{}",
            text(&served.stderr)
        );
    }

    // A relative path is the client's: the worker runs in another directory.
    let client_dir = home.dir.path().join("client");
    std::fs::create_dir_all(&client_dir).unwrap();
    std::fs::copy(sample_video(), client_dir.join("clip.mp4")).unwrap();
    let submitted = home
        .command(&["--json", "submit", "clip.mp4"])
        .current_dir(&client_dir)
        .output()
        .expect("narra runs");
    assert_eq!(submitted.status.code(), Some(0), "{submitted:?}");
    let submitted: Value = serde_json::from_slice(&submitted.stdout).unwrap();
    let clip = id_of(&submitted[0]);
    assert_eq!(
        submitted[0]["source"],
        client_dir.join("clip.mp4").to_str().unwrap()
    );
    wait_until("the worker ran the submitted job", || {
        home.show(&clip)["status"] == "succeeded"
    });

    origin.heal("gone.mp4");
    let retried = home.narra(&["--json", "retry", &failed]);
    let stderr = text(&retried.stderr);
    // As with `--detach`: the job is pending when the command ends, so it exits 1.
    assert_eq!(retried.status.code(), Some(1), "{stderr}");
    let retried: Value = serde_json::from_slice(&retried.stdout).unwrap();
    assert_eq!(retried[0]["id"], failed.as_str());
    assert_eq!(retried[0]["status"], "pending");
    assert!(
        stderr.contains(&format!(
            "queued: the running narra (pid {}, narra worker) will run it",
            worker.id()
        )),
        "{stderr}"
    );
    wait_until("the worker ran the retried job", || {
        home.show(&failed)["status"] == "succeeded"
    });
    assert_eq!(
        origin.gets("gone.mp4"),
        2,
        "one failed and one good download"
    );

    // The actor is the client's: `reset` by USER=ops is recorded as ops's, whoever the worker is.
    let reset = home.narra_env(
        &["reset", &succeeded, "--reason", "operator check"],
        &[("USER", "ops")],
    );
    assert_eq!(reset.status.code(), Some(0), "{}", text(&reset.stderr));
    wait_until("the worker ran the reset job again", || {
        let show = home.show(&succeeded);
        show["status"] == "succeeded"
            && show["events"]
                .to_string()
                .contains("reset by ops: operator check")
    });
    let incidents = home.json(&["incidents"], 0);
    let incident = incidents.as_array().unwrap().last().unwrap().clone();
    assert_eq!(incident["actor"], "ops", "{incident}");
    assert_eq!(incident["action"], "reset_job", "{incident}");

    let verified = home.json(&["verify", &succeeded, &failed, &clip], 0);
    assert!(
        verified
            .as_array()
            .unwrap()
            .iter()
            .all(|job| job["ok"] == true),
        "{verified}"
    );
    assert!(
        worker.has_exited().is_none(),
        "the worker held the home all along"
    );
    let status = worker.interrupt_and_wait();
    assert_eq!(status.code(), Some(0));
    assert!(!socket(&home).exists(), "the socket went with the worker");
}

// Guards "inspect without stopping a backfill": while a backfill's download is stalled, another
// process lists the backfill and its running job (phase downloading), shows it, verifies an
// earlier job, retries a failed one (which the backfill then runs to success) and cancels the
// stalled one; the backfill sees the cancel, ends, and exits 0.
#[test]
fn while_a_backfill_runs_another_process_lists_its_jobs_and_cancels_one() {
    let home = Home::new();
    // Before the backfill: one job that succeeded, one that failed (its video was missing).
    let healthy = Origin::start();
    let done_url = healthy.serve_video("media/done.mp4", sample_video());
    let done = home.one_job(&["ingest", &done_url], 0);
    let missing_url = healthy.url("media/later.mp4");
    let failed = home.one_job(&["ingest", &missing_url], 1);
    assert_eq!(failed["error"]["class"], "not_found", "{failed}");
    let origin = StallingOrigin::start(std::fs::read(sample_video()).unwrap());
    let manifest = home.dir.path().join("manifest.txt");
    std::fs::write(&manifest, format!("{}\n", origin.url)).unwrap();
    // A short lease: the running job's holder looks for cancel requests as often as it renews.
    let mut command = home.command(&["backfill", manifest.to_str().unwrap()]);
    command
        .env("NARRA_LEASE_TTL_MS", "900")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let backfill = ChildGuard::from_child(command.spawn().expect("narra starts"));
    origin.wait_for_stall();

    let backfills = home.json(&["backfill", "--list"], 0);
    assert_eq!(backfills[0]["jobs"], 1, "{backfills}");
    let backfill_id = backfills[0]["id"].as_str().unwrap();
    let jobs = home.json(&["jobs", "--backfill", backfill_id], 0);
    let id = id_of(&jobs[0]);
    assert_eq!(jobs[0]["status"], "running", "{jobs}");
    assert_eq!(jobs[0]["ingestion_phase"], "downloading", "{jobs}");
    assert_eq!(home.show(&id)["status"], "running");

    // verify and retry are served by the backfill, which runs the retried job from its queue.
    let verified = home.json(&["verify", &id_of(&done)], 0);
    assert_eq!(verified[0]["ok"], true, "{verified}");
    healthy.serve_video("media/later.mp4", sample_video());
    let retry = home.narra(&["retry", &id_of(&failed)]);
    assert!(
        String::from_utf8_lossy(&retry.stdout).contains(&id_of(&failed)),
        "{retry:?}"
    );
    wait_until("the backfill runs the retried job", || {
        home.show(&id_of(&failed))["status"] == "succeeded"
    });

    let cancelled = home.one_job(&["cancel", &id], 0);
    assert_eq!(
        cancelled["status"], "running",
        "a cancel is requested: {cancelled}"
    );
    let status = backfill.wait();
    assert_eq!(
        status.code(),
        Some(0),
        "the backfill ends once its job is cancelled"
    );
    assert_eq!(home.show(&id)["status"], "cancelled");
}

// Guards the stale socket: a holder killed with SIGKILL leaves `narra.sock` behind; the next
// holder replaces it and serves, and a command that finds nobody holding the home runs locally
// despite it.
#[test]
fn a_socket_left_by_a_killed_holder_stops_neither_the_next_holder_nor_a_local_command() {
    let home = Home::new();
    let origin = Origin::start();
    let url = origin.serve_video("sample.mp4", sample_video());
    let submitted = home.json(&["submit", &url], 0);
    let cancelled = home.json(&["cancel", &id_of(&submitted[0])], 0);
    let jobs = home.json(&["jobs"], 0);
    assert_eq!(jobs[0]["status"], "cancelled", "{cancelled}");

    let mut first = spawn_holder(&home, &["worker"], None);
    first.kill();
    let stale = home
        .socket_id()
        .expect("the killed worker's socket is left");

    let mut second = spawn_holder(&home, &["worker"], Some(stale));
    assert_eq!(home.json(&["jobs"], 0), jobs, "served by the second worker");
    second.kill();
    assert!(
        socket(&home).exists(),
        "the second worker's socket is left too"
    );

    assert_eq!(home.json(&["jobs"], 0), jobs, "run locally");
    assert!(
        !socket(&home).exists(),
        "the local command replaced the stale socket while it held the home, then removed it"
    );
}

// Guards the fallback: when the holder does not answer on its socket (here the file is gone, as
// when it could not listen), a command still ends with the home-in-use error, exit 3, naming the
// holder's pid, rather than hanging.
#[test]
fn a_holder_that_does_not_answer_leaves_the_home_in_use_exit_3() {
    let home = Home::new();
    let worker = spawn_holder(&home, &["worker"], None);
    std::fs::remove_file(socket(&home)).unwrap();

    let output = home.narra(&["jobs"]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("in use by another narra process")
            && stderr.contains(&format!("pid {}", worker.id())),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}
