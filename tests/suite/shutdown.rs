//! Graceful shutdown: SIGTERM/SIGINT stop claiming, give running steps a grace period, then cancel
//! them and release their jobs to pending; a second signal exits at once.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;

use super::fixture::{ChildGuard, Home, StallingOrigin, id_of, sample_video, signal};

// Guards graceful shutdown: a worker told to stop while a download is stalled waits out its grace
// period, cancels the step, releases the job to pending (not left running), exits 0, and a later
// worker finishes the job.
#[test]
fn sigterm_releases_a_stalled_job_to_pending_and_exits_0() {
    let home = Home::new();
    let origin = StallingOrigin::start(std::fs::read(sample_video()).unwrap());
    let submitted = home.json(&["submit", &origin.url], 0);
    let id = id_of(&submitted[0]);

    let worker = home.spawn(&["worker", "--grace-s", "1"]);
    origin.wait_for_stall();
    signal(worker.id(), "TERM");
    let status = worker.wait();
    assert_eq!(status.code(), Some(0), "the worker exits 0: {status:?}");

    let show = home.show(&id);
    assert_eq!(show["status"], "pending", "{show}");
    assert_eq!(show["ingestion_phase"], serde_json::Value::Null);
    assert_eq!(show["lease"], serde_json::Value::Null);
    assert!(
        show["events"]
            .to_string()
            .contains("released: the worker shut down"),
        "the release is in the history: {}",
        show["events"]
    );

    origin.fix();
    let finished = home.json(&["worker", "--drain"], 0);
    assert_eq!(finished.as_array().map(Vec::len), Some(1), "{finished}");
    assert_eq!(home.show(&id)["status"], "succeeded");
}

// Guards that a second signal does not wait for the grace period: the process exits at once (130),
// and the job it held is reclaimed and finished by the next worker.
#[test]
fn a_second_signal_exits_at_once_and_the_next_run_resumes() {
    let home = Home::new();
    let origin = StallingOrigin::start(std::fs::read(sample_video()).unwrap());
    let submitted = home.json(&["submit", &origin.url], 0);
    let id = id_of(&submitted[0]);

    let mut child = home
        .command(&["worker", "--grace-s", "600"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("narra starts");
    let stderr = child.stderr.take().unwrap();
    let pid = child.id();
    let worker = ChildGuard::from_child(child);
    origin.wait_for_stall();

    // The second signal is sent once the first one was seen (its log line), so the two are not
    // merged into one.
    let (seen_sender, seen) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("shutting down") {
                let _ = seen_sender.send(());
            }
        }
    });
    signal(pid, "TERM");
    seen.recv_timeout(std::time::Duration::from_secs(60))
        .expect("the first signal is logged");
    signal(pid, "INT");
    let status = worker.wait();
    assert_eq!(status.code(), Some(130), "{status:?}");

    origin.fix();
    home.json(&["worker", "--drain"], 0);
    assert_eq!(home.show(&id)["status"], "succeeded");
}
