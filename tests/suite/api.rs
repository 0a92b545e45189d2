//! The HTTP API of `narra serve`: every endpoint over real HTTP on loopback, against a real
//! `narra serve` process with its worker, real sled, real ffmpeg and a loopback origin. Auth
//! failures (401/403), bad input (400 with a class), idempotent `POST /jobs`, pagination, the SSRF
//! guard on sources, `/metrics` as valid Prometheus text whose counters move with the work.

use std::io::BufRead as _;
use std::process::Stdio;

use serde_json::{Value, json};

use super::fixture::{ChildGuard, Home, Origin, id_of, other_video, sample_video, wait_until};

pub const TOKEN: &str = "test-token-0123456789";

/// A running `narra serve` and an HTTP client for it.
pub struct Server {
    pub url: String,
    _child: ChildGuard,
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Server {
    /// `narra serve --bind 127.0.0.1:0 ARGS` with the test token. Only the origin's address
    /// (127.0.0.1) is let past the network guard, so other private addresses stay refused.
    pub fn start(home: &Home, args: &[&str]) -> Server {
        Server::start_env(home, args, &[("NARRA_API_TOKEN", TOKEN)])
    }

    pub fn start_env(home: &Home, args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_bind(home, "127.0.0.1:0", args, env)
    }

    /// `narra serve --bind BIND ARGS`; an unspecified address is reached through loopback.
    pub fn start_bind(home: &Home, bind: &str, args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_in(home, None, bind, args, env)
    }

    /// `start_bind`, with `narra serve` started in `cwd` (the tests' own directory when `None`).
    pub fn start_in(
        home: &Home,
        cwd: Option<&std::path::Path>,
        bind: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let mut full = vec!["serve", "--bind", bind];
        full.extend_from_slice(args);
        let stderr = std::fs::File::create(home.dir.path().join("serve.stderr")).unwrap();
        let mut command = home.command(&full);
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        command
            .env_remove("NARRA_ALLOW_PRIVATE_NETWORK")
            .env_remove("NARRA_API_TOKEN")
            .env("NARRA_ALLOWED_HOSTS", "127.0.0.1")
            // Webhooks have a network policy of their own: the tests' receivers are on loopback.
            .env_remove("NARRA_WEBHOOK_ALLOW_PRIVATE_NETWORK")
            .env("NARRA_WEBHOOK_ALLOWED_HOSTS", "127.0.0.1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut child = command.spawn().expect("narra serve starts");
        let stdout = child.stdout.take().unwrap();
        let child = ChildGuard::from_child(child);
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the served URL");
        let line = line.replace("http://0.0.0.0:", "http://127.0.0.1:");
        assert!(
            line.starts_with("http://127.0.0.1:"),
            "narra serve printed {line:?}; stderr:\n{}",
            std::fs::read_to_string(home.dir.path().join("serve.stderr")).unwrap_or_default()
        );
        Server {
            url: line.trim().trim_end_matches('/').to_string(),
            _child: child,
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            client: reqwest::Client::new(),
        }
    }

    /// SIGINT, as Ctrl-C: the exit status once `serve` has stopped.
    pub fn stop(self) -> std::process::ExitStatus {
        self._child.interrupt_and_wait()
    }

    /// A request; the status and the raw body.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (u16, String) {
        self.raw_with_headers(method, path, token, body, &[])
    }

    /// `raw`, with more headers (a forged `Host`, say).
    pub fn raw_with_headers(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> (u16, String) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.client.request(method, format!("{}{path}", self.url));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        self.runtime.block_on(async {
            let response = request.send().await.expect("the server answers");
            let status = response.status().as_u16();
            (status, response.text().await.expect("a body"))
        })
    }

    /// A POST that announces a body of `bytes` and sends none: the server must answer from the
    /// headers alone (an HTTP client would see the connection closed mid-upload instead).
    pub fn announce_body(&self, path: &str, bytes: usize) -> (u16, String) {
        use std::io::{Read as _, Write as _};
        let address = self.url.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(address).expect("connect");
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {bytes}\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).expect("send the head");
        // The server keeps the connection for the body it was promised: read one response.
        let mut response = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            let read = stream.read(&mut buffer).expect("read the answer");
            assert!(read > 0, "the connection closed before a whole response");
            response.extend_from_slice(&buffer[..read]);
            let text = String::from_utf8_lossy(&response).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length: usize = head
                    .lines()
                    .find_map(|line| {
                        line.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .expect("a content-length");
                if body.len() >= length {
                    let status = head
                        .split(' ')
                        .nth(1)
                        .and_then(|code| code.parse().ok())
                        .expect("a status");
                    return (status, body[..length].to_string());
                }
            }
        }
    }

    /// A request with a JSON body (or none), answered with JSON.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let (status, text) = self.raw(
            method,
            path,
            token,
            body.map(|body| body.to_string().into_bytes()),
        );
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|error| panic!("{method} {path} answered non-JSON ({error}): {text}"));
        (status, value)
    }

    pub fn get(&self, path: &str) -> Value {
        let (status, value) = self.call("GET", path, None, None);
        assert_eq!(status, 200, "GET {path}: {value}");
        value
    }

    /// A POST with the token that must answer `expected`.
    pub fn post(&self, path: &str, body: Value, expected: u16) -> Value {
        let (status, value) = self.call("POST", path, Some(TOKEN), Some(body));
        assert_eq!(status, expected, "POST {path}: {value}");
        value
    }

    pub fn wait_for_status(&self, id: &str, status: &str) -> Value {
        let mut last = Value::Null;
        wait_until(&format!("job {id} is {status}"), || {
            last = self.get(&format!("/jobs/{id}"));
            last["status"] == status
        });
        last
    }
}

/// Asserts that an error response has the documented shape and class.
fn assert_error(answer: (u16, Value), status: u16, class: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["error"]["class"], class, "{}", answer.1);
    assert!(
        answer.1["error"]["message"]
            .as_str()
            .is_some_and(|message| !message.is_empty())
    );
}

// Guards the submission rules: mutations need the token (401 without, 403 wrong), sources are
// http(s) URLs checked by the download guard (a private literal address, a local path and file://
// are refused with the guard's classes, and nothing is submitted), bad JSON and oversized bodies
// are JSON errors, POST /jobs is idempotent (201 then 200, one job), and the job runs in serve's
// worker; GET /jobs/{id} is what the CLI's `show --json` prints (the CLI reaching serve through
// the home socket), and events, logs and verify answer for it; bad and unknown ids are 400 and 404.
#[test]
fn submission_is_authenticated_guarded_idempotent_and_runs_in_serves_worker() {
    let home = Home::new();
    let origin = Origin::start();
    let source = origin.serve_video("talk.mp4", sample_video());
    let server = Server::start(&home, &[]);
    let body = json!({"source": source});

    assert_error(
        server.call("POST", "/jobs", None, Some(body.clone())),
        401,
        "unauthorized",
    );
    assert_error(
        server.call(
            "POST",
            "/jobs",
            Some("wrong-token-0123456789"),
            Some(body.clone()),
        ),
        403,
        "forbidden",
    );
    for (source, class) in [
        (
            "http://169.254.169.254/latest/meta-data/",
            "forbidden_address",
        ),
        ("http://10.0.0.8/video.mp4", "forbidden_address"),
        ("/etc/passwd", "unsupported_source"),
        ("file:///etc/passwd", "unsupported_source"),
        ("ftp://example.com/video.mp4", "unsupported_source"),
    ] {
        assert_error(
            server.call(
                "POST",
                "/jobs",
                Some(TOKEN),
                Some(json!({"source": source})),
            ),
            400,
            class,
        );
    }
    assert_error(
        server.call("POST", "/jobs", Some(TOKEN), Some(json!({"sauce": source}))),
        400,
        "bad_request",
    );
    assert_error(
        server.call(
            "POST",
            "/jobs",
            Some(TOKEN),
            Some(json!({"source": source, "workflow": "nope"})),
        ),
        400,
        "bad_request",
    );
    let (status, text) = server.announce_body("/jobs", 5 * 1024 * 1024);
    assert_eq!(status, 413, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["error"]["class"],
        "payload_too_large"
    );
    assert_eq!(
        server.get("/jobs")["jobs"],
        json!([]),
        "nothing refused was submitted"
    );

    let created = server.post("/jobs", body.clone(), 201);
    assert_eq!(created["outcome"], "created");
    let again = server.post("/jobs", body.clone(), 200);
    assert_eq!(id_of(&again), id_of(&created));
    let id = id_of(&created);
    let shown = server.wait_for_status(&id, "succeeded");
    assert_eq!(server.get("/jobs")["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(origin.gets("talk.mp4"), 1, "one job, downloaded once");

    // The CLI is served by the process that holds the home, with the same JSON.
    let from_cli = home.json(&["show", &id], 0);
    assert_eq!(from_cli, shown);
    assert_eq!(shown["artifacts"].as_array().unwrap().len(), 3, "{shown}");

    let events = server.get(&format!("/jobs/{id}/events"));
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"submitted") && kinds.contains(&"step_completed"),
        "{kinds:?}"
    );
    let logs = server.get(&format!("/jobs/{id}/logs"));
    assert!(!logs["lines"].as_array().unwrap().is_empty(), "{logs}");
    let verified = server.get(&format!("/verify/{id}"));
    assert_eq!(verified["ok"], true, "{verified}");

    assert_error(
        server.call("GET", "/jobs/not-a-job-id", None, None),
        400,
        "bad_request",
    );
    assert_error(
        server.call("GET", "/jobs/01M8HBG81MHAXSJF1KSJWXGZRJ", None, None),
        404,
        "not_found",
    );
    assert_error(
        server.call(
            "POST",
            "/jobs/01M8HBG81MHAXSJF1KSJWXGZRJ/retry",
            Some(TOKEN),
            None,
        ),
        404,
        "not_found",
    );
    assert_error(
        server.call("GET", "/verify/..%2F..%2Fetc", None, None),
        400,
        "bad_request",
    );
    assert_error(
        server.call("GET", "/no/such/endpoint", None, None),
        404,
        "not_found",
    );
    assert_error(
        server.call("DELETE", "/jobs", Some(TOKEN), None),
        405,
        "method_not_allowed",
    );
}

// Guards the runbook's retry path over HTTP: a job that failed (the origin answered 404) is found
// by status and error class, the fault is healed, POST retry sends it back and serve's worker runs
// it to success; retry from a step redoes extract without downloading again; a transition the
// status does not allow is 409 conflict; reset of a finished job returns it to pending, recorded
// as the API's in the incident log; cancel of a pending job cancels it.
#[test]
fn a_failed_job_is_found_retried_from_a_step_reset_and_cancelled() {
    let home = Home::new();
    let origin = Origin::start();
    let source = origin.serve_video("flaky.mp4", sample_video());
    origin.fail_with("flaky.mp4", 404);
    let server = Server::start(&home, &[]);
    let id = id_of(&server.post("/jobs", json!({"source": source}), 201));
    let failed = server.wait_for_status(&id, "failed");
    assert_eq!(failed["error"]["class"], "not_found");
    let listed = server.get("/jobs?status=failed&class=not_found");
    assert_eq!(
        listed["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(id_of)
            .collect::<Vec<_>>(),
        vec![id.clone()]
    );
    assert_eq!(
        server.get("/jobs?status=failed&class=rate_limited")["jobs"],
        json!([])
    );
    let host = origin.addr.to_string();
    assert_eq!(
        server.get(&format!("/jobs?host={host}"))["jobs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(server.get("/jobs?host=example.com")["jobs"], json!([]));

    origin.heal("flaky.mp4");
    assert_error(
        server.call("POST", &format!("/jobs/{id}/retry"), None, None),
        401,
        "unauthorized",
    );
    server.post(&format!("/jobs/{id}/retry"), json!({}), 200);
    server.wait_for_status(&id, "succeeded");
    let downloads = origin.gets("flaky.mp4");

    assert_error(
        server.call(
            "POST",
            &format!("/jobs/{id}/retry"),
            Some(TOKEN),
            Some(json!({"from": "transcode"})),
        ),
        400,
        "bad_request",
    );
    assert_error(
        server.call("POST", &format!("/jobs/{id}/cancel"), Some(TOKEN), None),
        409,
        "conflict",
    );
    let before = server.get(&format!("/jobs/{id}/events"))["events"]
        .as_array()
        .unwrap()
        .len();
    server.post(
        &format!("/jobs/{id}/retry"),
        json!({"from": "extract"}),
        200,
    );
    wait_until("the retry from extract ran", || {
        let job = server.get(&format!("/jobs/{id}"));
        job["status"] == "succeeded" && job["events"].as_array().unwrap().len() > before
    });
    assert_eq!(
        origin.gets("flaky.mp4"),
        downloads,
        "retry --from extract does not download"
    );

    let reset = server.post(
        &format!("/jobs/{id}/reset"),
        json!({"reason": "from the test"}),
        200,
    );
    assert_eq!(reset["status"], "pending");
    server.wait_for_status(&id, "succeeded");
    let incidents = home.json(&["incidents"], 0);
    assert!(
        incidents
            .as_array()
            .unwrap()
            .iter()
            .any(|incident| incident["action"] == "reset_job" && incident["actor"] == "api"),
        "{incidents}"
    );
}

// Guards listing: newest first, cursor pagination that visits every job once, filters by status,
// phase and host, and bad filters as 400. With --no-worker the jobs stay pending; SIGINT stops
// serve with exit 0 and frees the home; a server without a token is read-only (403); on a
// non-loopback address reads need the token too, and serve refuses one without a token.
#[test]
fn jobs_page_through_a_cursor_and_a_tokenless_server_is_read_only() {
    let home = Home::new();
    let origin = Origin::start();
    let server = Server::start(&home, &["--no-worker"]);
    let mut submitted = Vec::new();
    for index in 0..5 {
        let url = origin.url(&format!("clip-{index}.mp4"));
        submitted.push(id_of(&server.post("/jobs", json!({"source": url}), 201)));
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/jobs?limit=2&cursor={cursor}"),
            None => "/jobs?limit=2".to_string(),
        };
        let page = server.get(&path);
        pages += 1;
        seen.extend(page["jobs"].as_array().unwrap().iter().map(id_of));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    submitted.reverse();
    assert_eq!(seen, submitted, "newest first, each job once");
    assert_eq!(
        server.get("/jobs?status=pending&limit=1000")["jobs"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    assert_eq!(server.get("/jobs?status=running")["jobs"], json!([]));
    assert_eq!(server.get("/jobs?phase=downloading")["jobs"], json!([]));
    assert_eq!(server.get("/jobs?stuck=true")["jobs"], json!([]));
    for bad in [
        "/jobs?status=lost",
        "/jobs?phase=dancing",
        "/jobs?limit=0",
        "/jobs?cursor=xyz",
        "/jobs?colour=red",
    ] {
        assert_error(server.call("GET", bad, None, None), 400, "bad_request");
    }
    // SIGINT stops serve cleanly and lets the home go: the CLI opens it itself again.
    assert!(server.stop().success());
    let listed = home.json(&["jobs"], 0);
    assert_eq!(listed.as_array().unwrap().len(), 5);

    let read_only = Server::start_env(&home, &["--no-worker"], &[]);
    assert_error(
        read_only.call(
            "POST",
            "/jobs",
            Some(TOKEN),
            Some(json!({"source": origin.url("x.mp4")})),
        ),
        403,
        "forbidden",
    );
    assert_eq!(read_only.get("/jobs")["jobs"].as_array().unwrap().len(), 5);
    drop(read_only);

    // On an address other than loopback, reads need the token too; the console page does not.
    let exposed = Server::start_bind(
        &home,
        "0.0.0.0:0",
        &["--no-worker"],
        &[("NARRA_API_TOKEN", TOKEN)],
    );
    assert_error(
        exposed.call("GET", "/jobs", None, None),
        401,
        "unauthorized",
    );
    assert_error(
        exposed.call("GET", "/metrics", Some("wrong-token-0123456789"), None),
        403,
        "forbidden",
    );
    let (status, listed) = exposed.call("GET", "/jobs", Some(TOKEN), None);
    assert_eq!((status, listed["jobs"].as_array().unwrap().len()), (200, 5));
    assert_eq!(exposed.raw("GET", "/", None, None).0, 200);
    drop(exposed);

    let refused = home
        .command(&["serve", "--bind", "0.0.0.0:0"])
        .env_remove("NARRA_API_TOKEN")
        .output()
        .unwrap();
    assert_eq!(
        refused.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("NARRA_API_TOKEN"));
}

/// Checks every line of a Prometheus text exposition: `# HELP name text`, `# TYPE name kind`
/// before a family's samples, and samples `name{label="value",...} number`. Returns the samples.
pub fn parse_exposition(text: &str) -> Vec<(String, f64)> {
    let mut typed: Vec<String> = Vec::new();
    let mut samples = Vec::new();
    let name_ok = |name: &str| {
        !name.is_empty()
            && name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP has a text");
            assert!(name_ok(name) && !help.is_empty(), "{line}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a kind");
            assert!(name_ok(name), "{line}");
            assert!(
                ["counter", "gauge", "summary", "histogram", "untyped"].contains(&kind),
                "{line}"
            );
            typed.push(name.to_string());
        } else {
            assert!(
                !line.starts_with('#') && !line.is_empty(),
                "unexpected line {line:?}"
            );
            let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("{line}: not a number"));
            let name = match series.split_once('{') {
                Some((name, labels)) => {
                    let labels = labels
                        .strip_suffix('}')
                        .unwrap_or_else(|| panic!("{line}: unclosed labels"));
                    for pair in labels.split("\",").filter(|pair| !pair.is_empty()) {
                        let (label, quoted) = pair
                            .split_once('=')
                            .unwrap_or_else(|| panic!("{line}: label"));
                        assert!(name_ok(label) && quoted.starts_with('"'), "{line}");
                    }
                    name
                }
                None => series,
            };
            assert!(name_ok(name), "{line}");
            let family = ["_sum", "_count", "_bucket"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix)
                        .filter(|family| typed.iter().any(|t| t == family))
                })
                .unwrap_or(name);
            assert!(
                typed.iter().any(|t| t == family),
                "{line}: sample before its TYPE"
            );
            samples.push((series.to_string(), value));
        }
    }
    samples
}

fn sample(samples: &[(String, f64)], series: &str) -> f64 {
    samples
        .iter()
        .find(|(name, _)| name == series)
        .map_or(0.0, |(_, value)| *value)
}

// Guards /metrics: valid exposition on an empty home and after work, with the counters moving:
// jobs by status, bytes downloaded and stored, step durations, failures by class, retries and
// skipped steps all go up as jobs fail, are retried and succeed.
#[test]
fn metrics_scrape_as_prometheus_text_and_move_with_the_work() {
    let home = Home::new();
    let origin = Origin::start();
    let server = Server::start(&home, &[]);
    let (status, text) = server.raw("GET", "/metrics", None, None);
    assert_eq!(status, 200);
    let before = parse_exposition(&text);
    assert_eq!(sample(&before, "narra_jobs{status=\"succeeded\"}"), 0.0);
    assert_eq!(sample(&before, "narra_bytes_downloaded_total"), 0.0);

    let good = origin.serve_video("good.mp4", sample_video());
    origin.serve_video("bad.mp4", other_video());
    origin.fail_with("bad.mp4", 404);
    let good_id = id_of(&server.post("/jobs", json!({"source": good}), 201));
    let bad_id = id_of(&server.post("/jobs", json!({"source": origin.url("bad.mp4")}), 201));
    server.wait_for_status(&good_id, "succeeded");
    server.wait_for_status(&bad_id, "failed");
    let after = parse_exposition(&server.raw("GET", "/metrics", None, None).1);
    assert_eq!(sample(&after, "narra_jobs{status=\"succeeded\"}"), 1.0);
    assert_eq!(sample(&after, "narra_jobs{status=\"failed\"}"), 1.0);
    assert_eq!(
        sample(&after, "narra_failures_total{class=\"not_found\"}"),
        1.0
    );
    let video_bytes = std::fs::metadata(sample_video()).unwrap().len() as f64;
    assert_eq!(sample(&after, "narra_bytes_downloaded_total"), video_bytes);
    assert!(sample(&after, "narra_bytes_stored_total") > video_bytes);
    assert_eq!(
        sample(
            &after,
            "narra_step_duration_seconds_count{step=\"extract\"}"
        ),
        1.0
    );
    assert!(sample(&after, "narra_step_duration_seconds_sum{step=\"extract\"}") > 0.0);

    // A retry of the healed job, then a retry from store of the good one: both counters move, and
    // the second skips nothing it must redo but finds download and extract done.
    origin.heal("bad.mp4");
    server.post(&format!("/jobs/{bad_id}/retry"), json!({}), 200);
    server.wait_for_status(&bad_id, "succeeded");
    let retried = parse_exposition(&server.raw("GET", "/metrics", None, None).1);
    assert!(sample(&retried, "narra_retries_total") > sample(&after, "narra_retries_total"));
    assert_eq!(sample(&retried, "narra_jobs{status=\"succeeded\"}"), 2.0);
    assert!(
        sample(&retried, "narra_bytes_downloaded_total")
            > sample(&after, "narra_bytes_downloaded_total")
    );
    server.post(
        &format!("/jobs/{good_id}/retry"),
        json!({"from": "store"}),
        200,
    );
    wait_until("the redo from store finished", || {
        let skipped = parse_exposition(&server.raw("GET", "/metrics", None, None).1);
        sample(&skipped, "narra_steps_skipped_total")
            > sample(&retried, "narra_steps_skipped_total")
            && server.get(&format!("/jobs/{good_id}"))["status"] == "succeeded"
    });
}

// Guards backfills and cleanup over HTTP: a manifest body is submitted as one backfill whose
// progress GET /backfills/{id} reports until done; a manifest naming a local path is refused
// whole; cleanup's dry run lists an orphan blob, a wrong plan id is 409 plan_changed (nothing
// deleted), and confirming the listed plan deletes it; health answers with its signals.
#[test]
fn backfills_run_and_cleanup_confirms_exactly_its_plan() {
    let home = Home::new();
    let origin = Origin::start();
    let first = origin.serve_video("a.mp4", sample_video());
    let second = origin.serve_video("b.mp4", other_video());
    let server = Server::start(&home, &[]);
    let manifest = format!("{first}\n{second}\n");
    let (status, refused) = server.raw(
        "POST",
        "/backfills",
        Some(TOKEN),
        Some(format!("{first}\n/etc/passwd\n").into_bytes()),
    );
    assert_eq!(status, 400, "{refused}");
    assert!(refused.contains("line 2"), "{refused}");
    assert_eq!(
        server.get("/jobs")["jobs"],
        json!([]),
        "a refused manifest submits nothing"
    );
    let (status, created) = server.raw(
        "POST",
        "/backfills?name=nightly",
        Some(TOKEN),
        Some(manifest.into_bytes()),
    );
    assert_eq!(status, 201, "{created}");
    let created: Value = serde_json::from_str(&created).unwrap();
    assert_eq!(created["jobs"], 2);
    let backfill = created["id"].as_str().unwrap().to_string();
    let mut progress = Value::Null;
    wait_until("the backfill is done", || {
        progress = server.get(&format!("/backfills/{backfill}"));
        progress["done"] == true
    });
    assert_eq!(progress["by_status"], json!({"succeeded": 2}));
    // The byte totals: both originals downloaded whole; stored, each video and its audio and
    // metadata record, so more than the videos alone.
    let videos_bytes = std::fs::metadata(sample_video()).unwrap().len()
        + std::fs::metadata(other_video()).unwrap().len();
    assert_eq!(progress["bytes_downloaded"], videos_bytes, "{progress}");
    assert!(
        progress["bytes_stored"].as_u64().unwrap() > videos_bytes,
        "{progress}"
    );
    assert_error(
        server.call("GET", "/backfills/nope", None, None),
        400,
        "bad_request",
    );

    let orphan = home.objects().join("blobs/ff/ffff0000.mp4");
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, b"nobody references me").unwrap();
    let (status, plan) = server.call("GET", "/cleanup?min_age_s=0", Some(TOKEN), None);
    assert_eq!(status, 200, "{plan}");
    let plan_id = plan["id"].as_str().unwrap().to_string();
    assert!(plan.to_string().contains("blobs/ff/ffff0000.mp4"), "{plan}");
    assert_error(
        server.call(
            "POST",
            "/cleanup",
            Some(TOKEN),
            Some(json!({"plan_id": "0000", "min_age_s": 0})),
        ),
        409,
        "plan_changed",
    );
    assert!(orphan.exists(), "a refused confirmation deletes nothing");
    let executed = server.post("/cleanup", json!({"plan_id": plan_id, "min_age_s": 0}), 200);
    assert!(!orphan.exists(), "{executed}");
    assert_eq!(
        server.get(&format!(
            "/verify/{}",
            id_of(&server.get("/jobs")["jobs"][0])
        ))["ok"],
        true
    );

    let health = server.get("/health");
    assert_eq!(health["escalate"], false, "{health}");
    assert_eq!(health["storage"]["reachable"], true);
    let openapi = server.get("/openapi.json");
    assert!(openapi["paths"]["/jobs"].is_object());
}
