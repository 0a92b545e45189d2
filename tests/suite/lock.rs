//! One process per home: a second one that would run jobs is refused, naming the holder, and
//! corrupts nothing (the commands the holder serves instead are in `ipc.rs`).

use super::fixture::{Home, Origin, id_of, other_video, sample_video, wait_until};

// Guards the home lock: while a worker holds the home, another process's `ingest`, `worker` or
// `backfill` (commands that run jobs where they run, which the holder does not serve) exits 3
// naming the worker's pid and changes nothing; once the worker stops, the store and its jobs are
// intact.
#[test]
fn a_second_process_that_would_run_jobs_exits_3_naming_the_holder_and_the_store_stays_intact() {
    let home = Home::new();
    let origin = Origin::start();
    let url = origin.serve_video("sample.mp4", sample_video());
    let ingested = home.one_job(&["ingest", &url], 0);
    let jobs_before = home.json(&["jobs"], 0);

    // Held and served: a client that found the home held but no socket yet would print the plain
    // "in use" message instead of the one that names the worker.
    let worker = home.spawn_holder(&["worker"]);
    let pid = worker.id().to_string();

    let other = other_video().to_str().expect("a UTF-8 path");
    let manifest = home.dir.path().join("manifest.txt");
    std::fs::write(&manifest, format!("{other}\n")).expect("write the manifest");
    let ingest = home.narra(&["ingest", other]);
    let second_worker = home.narra(&["worker", "--drain"]);
    let backfill = home.narra(&["backfill", manifest.to_str().expect("a UTF-8 path")]);

    for (command, output) in [
        ("ingest", &ingest),
        ("worker", &second_worker),
        ("backfill", &backfill),
    ] {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(3), "narra {command}: {stderr}");
        assert!(
            stderr.contains(&format!("held by pid {pid} (narra worker)"))
                && stderr.contains(&format!("`narra {command}`")),
            "narra {command} names the holder: {stderr}"
        );
        assert!(output.stdout.is_empty(), "narra {command} printed no data");
    }
    worker.interrupt_and_wait();
    assert_eq!(
        home.json(&["jobs"], 0),
        jobs_before,
        "the refused ingest created no job"
    );
    let show = home.show(&id_of(&ingested));
    assert_eq!(show["status"], "succeeded");
    assert_eq!(home.json(&["verify"], 0)[0]["ok"], true);
}

// Guards the hand-over between two processes: one that is exiting has let go of the home's lock
// file but not yet of sled's lock on the database (here, the test process holds the database
// open). The next process takes the home, waits for the database instead of failing, and runs.
#[test]
fn a_process_that_takes_the_home_waits_for_the_last_holder_to_let_go_of_the_database() {
    use narra::store::SledStore;
    use narra::store::sled_store::DEFAULT_CACHE_CAPACITY_BYTES;
    use std::process::Stdio;

    let home = Home::new();
    let origin = Origin::start();
    let url = origin.serve_video("sample.mp4", sample_video());
    let ingested = home.one_job(&["ingest", &url], 0);
    let store = SledStore::open(&home.path().join("state"), DEFAULT_CACHE_CAPACITY_BYTES)
        .expect("the test holds the database");

    let mut jobs = home
        .command(&["--json", "jobs"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("narra starts");
    let pid = jobs.id().to_string();
    wait_until("narra jobs holds the home", || {
        if let Ok(Some(status)) = jobs.try_wait() {
            panic!("narra jobs ended while the database was held: {status}");
        }
        std::fs::read_to_string(home.lock_file()).is_ok_and(|text| text.trim() == pid)
    });
    drop(store);
    let output = jobs.wait_with_output().expect("narra jobs ends");
    assert!(
        output.status.success(),
        "narra jobs: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(listed[0]["id"], ingested["id"], "{listed}");
}
