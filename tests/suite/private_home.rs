//! A narra home is private to its owner: the state store holds raw sources (passwords, signed
//! URLs, webhook tokens), scratch holds the media, so every directory narra creates under the home
//! is 0700 and every file 0600, whoever else shares the machine; `doctor` reports a home, state
//! store or object root that other local users can read.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::fixture::{Home, Origin, id_of, sample_video, wait_until};

/// Every path under `root` (itself included) whose mode lets anyone but the owner in: a directory
/// not 0700, anything else not 0600. Symlinks are not followed.
fn exposed_paths(root: &Path) -> Vec<(PathBuf, String)> {
    let mut exposed = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let metadata = std::fs::symlink_metadata(&path).expect("stat a path under the home");
        let mode = metadata.mode() & 0o7777;
        let expected = if metadata.is_dir() { 0o700 } else { 0o600 };
        if mode != expected {
            exposed.push((path.clone(), format!("{mode:04o}, not {expected:04o}")));
        }
        if metadata.is_dir() {
            for entry in std::fs::read_dir(&path).expect("list a directory under the home") {
                pending.push(entry.expect("a directory entry").path());
            }
        }
    }
    exposed.sort();
    exposed
}

fn files_under(root: &Path) -> usize {
    let mut count = 0;
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).expect("list a directory") {
                pending.push(entry.expect("a directory entry").path());
            }
        } else {
            count += 1;
        }
    }
    count
}

// Guards against a home readable by every local user: a fresh home after a job crashed between its
// steps (scratch holds the original and the audio), while a worker holds it (the lock file, the
// socket) and after that worker finished the job (sled's files, the stored objects): nothing in it
// is open to group or others.
#[test]
fn everything_narra_creates_under_a_fresh_home_is_private() {
    let home = Home::new();
    let origin = Origin::start();
    let url = origin.serve_video("media/sample.mp4", sample_video());

    let crashed = home
        .command(&["ingest", &url])
        .env(narra::failpoint::FAILPOINT_ENV, "extract.scratch.after")
        .output()
        .expect("narra runs");
    assert!(
        String::from_utf8_lossy(&crashed.stderr).contains("failpoint fired"),
        "the ingest stopped with the scratch files written: {}",
        String::from_utf8_lossy(&crashed.stderr)
    );
    let scratch = home.path().join("scratch");
    assert!(
        files_under(&scratch) >= 2,
        "scratch holds the original and the audio"
    );
    assert_eq!(exposed_paths(&home.path()), [], "after the crash");

    let worker = home.spawn_holder(&["worker"]);
    let jobs = home.json(&["jobs"], 0);
    let id = id_of(&jobs[0]);
    wait_until("the worker finished the job", || {
        home.show(&id)["status"] == "succeeded"
    });
    assert_eq!(exposed_paths(&home.path()), [], "while a worker holds it");
    worker.interrupt_and_wait();

    assert!(files_under(&home.objects()) >= 4, "the objects are stored");
    assert_eq!(exposed_paths(&home.path()), [], "after the job");
}

fn doctor_permissions(home: &Home, expected_code: i32) -> serde_json::Value {
    let report = home.json(&["doctor"], expected_code);
    report["checks"]
        .as_array()
        .expect("a list of checks")
        .iter()
        .find(|check| check["name"] == "permissions")
        .unwrap_or_else(|| panic!("a permissions check in {report}"))
        .clone()
}

// Guards doctor's part in keeping the home private: a home made by an older narra (0755, its files
// 0644) is reported naming each open path, its mode and the chmod that closes it, and passes once
// closed.
#[test]
fn doctor_reports_a_home_others_can_read_and_how_to_close_it() {
    let home = Home::new();
    home.one_job(
        &["ingest", sample_video().to_str().expect("a UTF-8 path")],
        0,
    );
    let passed = doctor_permissions(&home, 0);
    assert_eq!(passed["ok"], true, "{passed}");

    let state = home.path().join("state");
    for dir in [home.path(), state.clone(), home.objects()] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    std::fs::set_permissions(state.join("db"), std::fs::Permissions::from_mode(0o644))
        .expect("chmod");

    // A warning, not a failure: the home works, and doctor says how to close it.
    let failed = doctor_permissions(&home, 0);
    assert_eq!(failed["warning"], true, "{failed}");
    let detail = failed["detail"].as_str().expect("a detail");
    for dir in [home.path(), state.clone(), home.objects()] {
        let shown = dir.display();
        assert!(
            detail.contains(&format!("{shown} is 0755")),
            "names {shown} and its mode: {detail}"
        );
        assert!(
            detail.contains(&format!("chmod -R go-rwx {shown}")),
            "says how to close {shown}: {detail}"
        );
    }
    assert!(
        detail.contains(&format!("{} is 0644", state.join("db").display())),
        "names the state store's file: {detail}"
    );

    let closed = std::process::Command::new("chmod")
        .args(["-R", "go-rwx"])
        .arg(home.path())
        .status()
        .expect("chmod runs");
    assert!(closed.success());
    let passed = doctor_permissions(&home, 0);
    assert_eq!(passed["ok"], true, "{passed}");
    assert_eq!(passed.get("warning"), None, "{passed}");
}
