//! Attacks on narra's doors, each a scenario that failed before its fix: a source that reads a
//! local file through the API, a source that forges log lines, a web page that reaches the loopback
//! API through DNS rebinding, and reads that make the server read every object.
//!
//! Nothing here lets a connection leave the machine: the API server runs without a worker where a
//! source names another host, and the CLI runs such sources inside a network namespace of its own
//! with only `lo` (`unshare -n`).

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use super::api::{Server, TOKEN};
use super::fixture::{Home, Origin, blake3_hex, id_of, sample_video};

/// A working directory that holds a directory named `http:`, and a video two levels above it that
/// `http:/../../../secret.mp4` reaches when it is read as a path from there.
struct Trap {
    cwd: std::path::PathBuf,
    secret: std::path::PathBuf,
}

fn trap(home: &Home) -> Trap {
    let cwd = home.dir.path().join("a/b/c");
    std::fs::create_dir_all(cwd.join("http:")).unwrap();
    std::fs::create_dir_all(cwd.join("https:")).unwrap();
    let secret = home.dir.path().join("a/secret.mp4");
    std::fs::copy(sample_video(), &secret).unwrap();
    // `http:/../../../secret.mp4` from `a/b/c`: `http:`, then up to `c`, `b`, `a`.
    assert!(
        cwd.join("http:/../../../secret.mp4").exists(),
        "the trap is laid"
    );
    Trap { cwd, secret }
}

/// Every string anywhere in a JSON value.
fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::String(text) => vec![text.clone()],
        Value::Array(items) => items.iter().flat_map(strings).collect(),
        Value::Object(map) => map.values().flat_map(strings).collect(),
        _ => Vec::new(),
    }
}

// Guards against sources read as local paths: a text that parses as a URL is a URL, in any case.
// `POST /jobs` with `http:/../../../secret.mp4` was accepted and joined onto serve's working
// directory, which held a directory named `http:`, and the job copied the local file;
// `http:/etc/passwd` and `https:etc/passwd` were accepted as paths too. Now the API answers each
// with the URL it parses to (or refuses it), what is stored is that URL, and no job ever names a
// path.
#[test]
fn the_api_never_takes_a_url_without_slashes_as_a_local_path() {
    let home = Home::new();
    let trap = trap(&home);
    let server = Server::start_in(
        &home,
        Some(&trap.cwd),
        "127.0.0.1:0",
        &["--no-worker"],
        &[("NARRA_API_TOKEN", TOKEN)],
    );
    for source in [
        "http:/../../../secret.mp4",
        "HTTP:/../../../secret.mp4",
        "http:/etc/passwd",
        "https:etc/passwd",
        "http:secret.mp4",
    ] {
        let (status, answer) = server.call(
            "POST",
            "/jobs",
            Some(TOKEN),
            Some(json!({ "source": source })),
        );
        match status {
            200 | 201 => {
                let stored = answer["source"].as_str().unwrap_or_default();
                assert!(
                    stored.starts_with("http://") || stored.starts_with("https://"),
                    "{source:?} was stored as {stored:?}, not as the URL it parses to: {answer}"
                );
                let shown = server.get(&format!("/jobs/{}", id_of(&answer)));
                assert_eq!(shown["source"], stored, "{shown}");
            }
            400 => assert_eq!(answer["error"]["class"], "unsupported_source", "{answer}"),
            other => panic!("{source:?}: {other} {answer}"),
        }
        let cwd = trap.cwd.display().to_string();
        assert!(
            strings(&answer).iter().all(|text| !text.contains(&cwd)),
            "{source:?}: the answer reveals the server's working directory: {answer}"
        );
    }
    let jobs = server.get("/jobs");
    for job in jobs["jobs"].as_array().unwrap() {
        assert!(
            !job["source"].as_str().unwrap().starts_with('/'),
            "a job names a path: {job}"
        );
    }
}

// Guards against sources read as local paths at the CLI: the same texts typed on the command line
// are URLs too, so a job never copies the file a path reading of them reaches. (The CLI runs in a
// network namespace with only `lo`, so the URLs' hosts resolve nowhere.)
#[test]
fn the_cli_takes_a_url_without_slashes_as_a_url_and_reads_no_local_file() {
    let home = Home::new();
    let trap = trap(&home);
    let secret_blake3 = blake3_hex(&trap.secret);
    let narra = env!("CARGO_BIN_EXE_narra");
    let output = Command::new("unshare")
        .args(["-n", "sh", "-c", r#"ip link set lo up && exec "$@""#, "sh"])
        .arg(narra)
        .arg("--home")
        .arg(home.path())
        .args([
            "--json",
            "ingest",
            "http:/../../../secret.mp4",
            "https:secret.mp4",
        ])
        .current_dir(&trap.cwd)
        .env("NARRA_LOG", "info")
        .env("NARRA_RETRY_DELAY_MS", "200")
        .env("NARRA_ALLOW_PRIVATE_NETWORK", "1")
        .output()
        .expect("narra runs under unshare -n");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let jobs: Value = serde_json::from_str(&stdout).unwrap_or_else(|error| {
        panic!(
            "{error}: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    for job in jobs.as_array().expect("a list of jobs") {
        assert_eq!(job["status"], "failed", "{job}");
        let source = job["source"].as_str().unwrap();
        assert!(source.starts_with("http"), "{job}");
        let show = home.show(&id_of(job));
        assert!(
            !show.to_string().contains(&secret_blake3),
            "the job read the local file: {show}"
        );
    }
    assert!(
        !walk(&home.path())
            .iter()
            .any(|file| file.ends_with("original")
                && std::fs::metadata(file).is_ok_and(|meta| meta.len() > 0)),
        "a download landed in scratch"
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else {
                files.push(path);
            }
        }
    }
    files
}

// Guards against forged log lines: a source with a control character forged a line in the server's
// log and in `narra jobs`. It is refused at every door: 400 from the API, exit 2 from the CLI, a
// bad line of a manifest; no job is made.
#[test]
fn a_source_with_a_control_character_is_refused_at_every_door() {
    let home = Home::new();
    let origin = Origin::start();
    let good = origin.serve_video("talk.mp4", sample_video());
    let forged = format!("{good}\n2026-12-07T00:00:00Z INFO job 01FORGED succeeded");
    let server = Server::start(&home, &["--no-worker"]);
    for source in [
        forged.clone(),
        format!("{good}\r"),
        format!("{good}\u{1b}[2K"),
    ] {
        let (status, answer) = server.call(
            "POST",
            "/jobs",
            Some(TOKEN),
            Some(json!({ "source": source })),
        );
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["class"], "invalid_source", "{answer}");
    }
    // A caller's key is shown like a source: the same rule.
    let (status, answer) = server.call(
        "POST",
        "/jobs",
        Some(TOKEN),
        Some(json!({ "source": good, "key": "k\n2026-12-07T00:00:00Z INFO forged" })),
    );
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["class"], "invalid_source", "{answer}");
    let manifest = home.dir.path().join("forged.txt");
    std::fs::write(&manifest, format!("{}\n", json!({ "source": forged }))).unwrap();
    drop(server);

    let output = home.narra(&["submit", &forged]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("invalid_source") && stderr.contains("control character"),
        "{stderr}"
    );
    let backfill = home.narra(&["backfill", manifest.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&backfill.stderr);
    assert!(stderr.contains("control character"), "{stderr}");
    let jobs = home.json(&["jobs"], 0);
    assert_eq!(jobs.as_array().map(Vec::len), Some(0), "{jobs}");
}

// Guards against DNS rebinding: on a loopback bind, reads needed no token, so a web page that
// rebinds its own name to 127.0.0.1 could read jobs, logs and health through a visitor's browser,
// and start heavy work. A request whose Host is not a loopback name or address is refused; the
// cleanup dry run and a deep verify need the token whatever the Host.
#[test]
fn a_rebinding_page_reaches_nothing_and_heavy_reads_need_the_token() {
    let home = Home::new();
    let origin = Origin::start();
    let source = origin.serve_video("talk.mp4", sample_video());
    let server = Server::start(&home, &[]);
    let job = server.post("/jobs", json!({ "source": source }), 201);
    let id = id_of(&job);
    server.wait_for_status(&id, "succeeded");
    let port = server.url.rsplit(':').next().unwrap().to_string();

    for path in ["/jobs", "/health", &format!("/jobs/{id}/logs"), "/"] {
        for host in [
            format!("attacker.example:{port}"),
            "attacker.example".to_string(),
            format!("127.0.0.1.attacker.example:{port}"),
            format!("localhost.attacker.example:{port}"),
        ] {
            let (status, text) =
                server.raw_with_headers("GET", path, None, None, &[("host", host.as_str())]);
            assert_eq!(status, 403, "GET {path} with Host {host}: {text}");
            assert!(text.contains("forbidden_host"), "{text}");
        }
        for host in [
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            format!("LOCALHOST:{port}"),
        ] {
            let (status, text) =
                server.raw_with_headers("GET", path, None, None, &[("host", host.as_str())]);
            assert_eq!(status, 200, "GET {path} with Host {host}: {text}");
        }
    }

    for path in [
        "/cleanup?deep=true&min_age_s=0".to_string(),
        "/cleanup?min_age_s=0".to_string(),
        format!("/verify/{id}?deep=true"),
    ] {
        let (status, answer) = server.call("GET", &path, None, None);
        assert_eq!(status, 401, "GET {path}: {answer}");
        let (status, answer) = server.call("GET", &path, Some(TOKEN), None);
        assert_eq!(status, 200, "GET {path} with the token: {answer}");
    }
    let (status, answer) = server.call("GET", &format!("/verify/{id}"), None, None);
    assert_eq!(status, 200, "a shallow verify stays open: {answer}");
}

// Guards against download parameters out of range: a workflow with `read_timeout_s = 0` or
// `redirects_max = 4294967295` loaded, and every download then failed at once or could follow
// redirects without bound. Such a workflow is refused when it is loaded (exit 2), naming the
// parameter and its range, and no job is made.
#[test]
fn download_parameters_out_of_range_refuse_the_workflow() {
    let home = Home::new();
    let origin = Origin::start();
    let source = origin.serve_video("talk.mp4", sample_video());
    for (params, named) in [
        (
            "read_timeout_s = 0",
            "read_timeout_s must be in 1..=3600, not 0",
        ),
        (
            "redirects_max = 4294967295",
            "redirects_max must be in 0..=20, not 4294967295",
        ),
    ] {
        let dir = super::downloads::workflows(&home, params);
        let output = home.narra(&["--workflows", &dir, "ingest", &source]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{params}: {stderr}");
        assert!(stderr.contains(named), "{params}: {stderr}");
    }
    assert_eq!(origin.gets("/talk.mp4"), 0, "no download was tried");
}
