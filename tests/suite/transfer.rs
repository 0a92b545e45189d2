//! `narra export` and `narra import` through the binary: a single machine's sled state moves into
//! PostgreSQL and the fleet goes on from it. The record-level promises (every record reads back the
//! same, a second import writes nothing, conflicts are not written) are `engine::transfer`'s own
//! tests (`src/engine/transfer/tests.rs`); this is the CLI's wiring and the file's.

use std::process::Output;

use narra::store::pg_store::test_server::TestServer;
use serde_json::Value;

use super::fixture::{Home, Origin, id_of, sample_video};

fn stdout_json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "stdout is not JSON ({error}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn succeeded(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout_json(output)
}

// Guards the move from sled to PostgreSQL: a home's jobs (one succeeded, one failed), exported from
// sled while no process holds the home, imported into PostgreSQL over the same storage, read back
// the same there, verify and audit clean, and a re-run import writes nothing. Export is refused
// while a worker holds the home, and a cut export is refused before anything is written.
#[test]
fn a_sled_home_moves_into_postgres_and_goes_on_there() {
    let home = Home::new();
    let origin = Origin::start();
    let good = origin.serve_video("moved.mp4", sample_video());
    let missing = origin.url("missing.mp4");
    let done = id_of(&home.one_job(&["ingest", &good], 0));
    let failed = id_of(&home.one_job(&["ingest", &missing], 1));

    let worker = home.spawn(&["worker"]);
    // The holder serves other processes on this socket, removed when it lets the home go.
    let socket = home.path().join("narra.sock");
    super::fixture::wait_until("the worker serves the home", || socket.exists());
    let refused = home.narra(&["export"]);
    assert_ne!(refused.status.code(), Some(0), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("cannot run `narra export` for another process"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(refused.stdout.is_empty(), "no partial export on stdout");
    let status = worker.interrupt_and_wait();
    assert!(status.success(), "{status:?}");

    let export = home.path().with_file_name("state.jsonl");
    let export_arg = export.to_str().expect("a UTF-8 path");
    let summary = succeeded(&home.narra(&[
        "--json",
        "export",
        "--include-secrets",
        "--output",
        export_arg,
    ]));
    assert_eq!(summary["records"]["job"], 2, "{summary}");
    assert_eq!(summary["running"], 0, "{summary}");
    assert!(
        !export.with_file_name("state.jsonl.partial").exists(),
        "the export was renamed into place"
    );
    let checked = succeeded(&home.narra(&["--json", "import", "--check", export_arg]));
    assert_eq!(checked["checked"]["records"], summary["records"]);
    let sled_jobs = home.json(&["jobs"], 0);

    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let server = runtime.block_on(TestServer::start());
    let uri = runtime.block_on(server.fresh_schema("transfer"));
    let storage = format!("fs://{}", home.objects().display());
    let fleet = Home::new();
    let env = [
        ("NARRA_STATE", uri.as_str()),
        ("NARRA_STORAGE", storage.as_str()),
    ];
    let imported = succeeded(&fleet.narra_env(&["--json", "import", export_arg], &env));
    assert_eq!(imported["imported"], summary["records"], "{imported}");
    assert_eq!(imported["conflicts"], serde_json::json!([]), "{imported}");

    let pg_jobs = succeeded(&fleet.narra_env(&["--json", "jobs"], &env));
    assert_eq!(pg_jobs, sled_jobs, "the same jobs, as they were");
    let sled_show = home.show(&done);
    let pg_show = succeeded(&fleet.narra_env(&["--json", "show", &done], &env));
    assert_eq!(pg_show["checkpoints"], sled_show["checkpoints"]);
    assert_eq!(pg_show["events"], sled_show["events"]);
    assert_eq!(pg_show["metadata"], sled_show["metadata"]);
    let pg_failed = succeeded(&fleet.narra_env(&["--json", "show", &failed], &env));
    assert_eq!(pg_failed["status"], "failed");
    assert_eq!(pg_failed["error"], home.show(&failed)["error"]);

    let verify = succeeded(&fleet.narra_env(&["--json", "verify", &done], &env));
    assert_eq!(verify[0]["ok"], true, "{verify}");
    let audit = succeeded(&fleet.narra_env(&["--json", "audit"], &env));
    for job in audit.as_array().expect("a list") {
        assert_eq!(job["violations"], 0, "{audit}");
    }

    // Again, as after an interruption: nothing is written twice.
    let again = succeeded(&fleet.narra_env(&["--json", "import", export_arg], &env));
    assert_eq!(again["already_present"], summary["records"], "{again}");
    assert_eq!(again["imported"]["job"], 0, "{again}");

    // The fleet goes on from the moved state: the failed job is retried and succeeds there once
    // its source is served.
    origin.serve_video("missing.mp4", sample_video());
    let retried = succeeded(&fleet.narra_env(&["--json", "retry", &failed], &env));
    assert_eq!(retried[0]["status"], "succeeded", "{retried}");

    // A cut export is refused whole: an empty schema stays empty.
    let bytes = std::fs::read(&export).expect("read the export");
    let cut = export.with_file_name("cut.jsonl");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    let empty = runtime.block_on(server.fresh_schema("transfer_cut"));
    let cut_env = [
        ("NARRA_STATE", empty.as_str()),
        ("NARRA_STORAGE", storage.as_str()),
    ];
    let cut_arg = cut.to_str().expect("a UTF-8 path");
    let refused = fleet.narra_env(&["import", cut_arg], &cut_env);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("cut short"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let none = succeeded(&fleet.narra_env(&["--json", "jobs"], &cut_env));
    assert_eq!(none, serde_json::json!([]));
    runtime.block_on(server.cleanup());
}
