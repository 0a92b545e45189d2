//! A fleet on PostgreSQL through the binary: `NARRA_STATE=postgres://...` on every process, one
//! shared storage, a home per "machine". The store's own semantics are the conformance suite's
//! (`src/store/pg_store.rs`); this is the CLI's wiring: no home lock, no socket, every process opens
//! the shared store itself, and idle workers pick up work another process submits.

use std::process::Stdio;

use narra::store::pg_store::test_server::TestServer;

use super::fixture::{ChildGuard, Home, Origin, id_of, sample_video, wait_until};

// Guards the fleet's wiring: two workers (two homes, as on two machines) and a third process that
// submits share one PostgreSQL store; every job runs once, to success, and no home is locked.
#[test]
fn two_workers_and_a_submitter_share_one_postgres_store() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let server = runtime.block_on(TestServer::start());
    let uri = runtime.block_on(server.fresh_schema("fleet"));
    let storage_dir = tempfile::tempdir().expect("a temp dir");
    let storage = format!("fs://{}", storage_dir.path().display());
    let env = [
        ("NARRA_STATE", uri.as_str()),
        ("NARRA_STORAGE", storage.as_str()),
    ];
    let submitter = Home::new();
    let machines = [Home::new(), Home::new()];
    let origin = Origin::start();

    let migrate = submitter.narra_env(&["--json", "migrate"], &env);
    assert!(migrate.status.success(), "{migrate:?}");
    let migrated: serde_json::Value = serde_json::from_slice(&migrate.stdout).expect("JSON");
    assert_eq!(migrated["applied"], serde_json::json!([1, 2]), "{migrated}");

    let workers: Vec<ChildGuard> = machines
        .iter()
        .map(|machine| {
            let child = machine
                .command(&["worker", "--concurrency", "2"])
                .envs(env)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("narra worker starts");
            ChildGuard::from_child(child)
        })
        .collect();

    let sources: Vec<String> = (0..4)
        .map(|index| origin.serve_video(&format!("fleet-{index}.mp4"), sample_video()))
        .collect();
    let mut args = vec!["--json", "submit"];
    args.extend(sources.iter().map(String::as_str));
    let submit = submitter.narra_env(&args, &env);
    assert!(
        submit.status.success(),
        "submit while workers run: {}",
        String::from_utf8_lossy(&submit.stderr)
    );
    let submitted: serde_json::Value = serde_json::from_slice(&submit.stdout).expect("JSON");
    let ids: Vec<String> = submitted
        .as_array()
        .expect("a list")
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(ids.len(), 4);

    wait_until("every job succeeded", || {
        let output = submitter.narra_env(&["--json", "jobs"], &env);
        let jobs: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        jobs.as_array().is_some_and(|jobs| {
            jobs.len() == 4 && jobs.iter().all(|job| job["status"] == "succeeded")
        })
    });
    for index in 0..4 {
        assert_eq!(
            origin.gets(&format!("fleet-{index}.mp4")),
            1,
            "each job downloaded once, by one worker"
        );
    }
    for home in machines.iter().chain([&submitter]) {
        assert!(
            !home.lock_file().exists(),
            "a home whose state is on PostgreSQL is not locked"
        );
    }
    for worker in workers {
        let status = worker.interrupt_and_wait();
        assert!(status.success(), "a worker stops cleanly: {status:?}");
    }
    runtime.block_on(server.cleanup());
}
