//! Object storage on a real S3-compatible server: moto's server mode on loopback (`.ci/setup`
//! installs it with pip), reached through a counting proxy that can also fail, refuse or stall
//! requests, so writes are counted at the storage layer and outages are scripted.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::fixture::{
    ChildGuard, Home, Origin, artifact, blake3_hex, id_of, other_video, sample_video,
    step_events_after, wait_until,
};

const BUCKET: &str = "media";

/// moto's S3 server on a loopback port, killed when dropped.
pub(super) struct Moto {
    port: u16,
    _process: ChildGuard,
}

impl Moto {
    pub(super) fn start() -> Moto {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server runs (install it: pip install 'moto[server]')");
        let moto = Moto {
            port,
            _process: ChildGuard::from_child(child),
        };
        wait_until("moto accepts connections", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let created = http(
            Method::PUT,
            &format!("http://127.0.0.1:{port}/{BUCKET}"),
            Vec::new(),
        );
        assert!(created.0.is_success(), "create bucket: {created:?}");
        moto
    }

    /// Downloads the object at `key` into `dir`, for checks that need a file (ffprobe).
    fn fetch(&self, dir: &std::path::Path, key: &str) -> std::path::PathBuf {
        let bytes = self
            .object(key)
            .unwrap_or_else(|| panic!("{key} is in the bucket"));
        let path = dir.join(key.replace('/', "_"));
        std::fs::write(&path, bytes).expect("write the fetched copy");
        path
    }

    fn object(&self, key: &str) -> Option<Vec<u8>> {
        let (status, body) = http(
            Method::GET,
            &format!("http://127.0.0.1:{}/{BUCKET}/narra/{key}", self.port),
            Vec::new(),
        );
        status.is_success().then_some(body)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

/// A plain HTTP request from the test, on its own small runtime.
fn http(method: Method, url: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client = reqwest::Client::builder().no_proxy().build().expect("client");
        // moto checks no signature, but wants an S3 authorization header to name the account.
        let response = client
            .request(method, url)
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=narra-test/20261128/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00",
            )
            .body(body)
            .send()
            .await
            .expect("request");
        let status = StatusCode::from_u16(response.status().as_u16()).expect("status");
        (status, response.bytes().await.expect("body").to_vec())
    })
}

/// What the proxy does with requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    /// Every request fails with 503, as an unavailable store does.
    Unavailable,
    /// Every request is refused with 403 AccessDenied, as bad credentials are.
    Denied,
    /// Multipart part uploads are held forever (everything else is forwarded).
    StallParts,
}

#[derive(Debug, Clone)]
pub(super) struct Seen {
    pub(super) method: String,
    pub(super) path: String,
    pub(super) query: String,
    pub(super) answered: u16,
    /// The blake3 of the request's body, so writes of one key can be compared by content.
    pub(super) body_blake3: String,
}

#[derive(Clone)]
struct ProxyState {
    upstream: String,
    mode: Arc<Mutex<Mode>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    stalled: Arc<Mutex<usize>>,
    client: reqwest::Client,
}

/// A loopback reverse proxy in front of moto that logs every request.
pub(super) struct Proxy {
    addr: SocketAddr,
    state: ProxyState,
    _runtime: tokio::runtime::Runtime,
}

impl Proxy {
    pub(super) fn start(moto: &Moto) -> Proxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let state = ProxyState {
            upstream: format!("http://127.0.0.1:{}", moto.port),
            mode: Arc::new(Mutex::new(Mode::Forward)),
            seen: Arc::default(),
            stalled: Arc::default(),
            client: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("client"),
        };
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let app = axum::Router::new()
            .fallback(forward)
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(state.clone());
        runtime.spawn(async move {
            axum::serve(listener, app).await.expect("proxy serves");
        });
        Proxy {
            addr,
            state,
            _runtime: runtime,
        }
    }

    pub(super) fn storage_uri(&self, query: &str) -> String {
        format!(
            "s3://{BUCKET}/narra?endpoint=http://{}&region=us-east-1{query}",
            self.addr
        )
    }

    fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Requests that write: PUT (objects and parts) and POST (multipart create and complete).
    pub(super) fn writes(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|seen| seen.method == "PUT" || seen.method == "POST")
            .collect()
    }

    fn stalled(&self) -> usize {
        *self.state.stalled.lock().unwrap()
    }
}

async fn forward(
    axum::extract::State(state): axum::extract::State<ProxyState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mode = *state.mode.lock().unwrap();
    let query = uri.query().unwrap_or_default().to_string();
    let body_blake3 = blake3::hash(&body).to_hex().to_string();
    let record = |answered: u16| {
        state.seen.lock().unwrap().push(Seen {
            method: method.to_string(),
            path: uri.path().to_string(),
            query: query.clone(),
            answered,
            body_blake3: body_blake3.clone(),
        });
    };
    match mode {
        Mode::Unavailable => {
            record(503);
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "<Error><Code>ServiceUnavailable</Code></Error>",
            )
                .into_response();
        }
        Mode::Denied => {
            record(403);
            return (
                StatusCode::FORBIDDEN,
                "<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>",
            )
                .into_response();
        }
        Mode::StallParts if method == Method::PUT && query.contains("partNumber") => {
            record(0);
            *state.stalled.lock().unwrap() += 1;
            std::future::pending::<()>().await;
        }
        _ => {}
    }
    let url = format!(
        "{}{}",
        state.upstream,
        uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    );
    let method_upstream = reqwest::Method::from_bytes(method.as_str().as_bytes()).expect("method");
    let mut request = state
        .client
        .request(method_upstream, url)
        .body(body.to_vec());
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            request = request.header(name.as_str(), value.as_bytes());
        }
    }
    let response = request.send().await.expect("moto answers");
    let status = response.status().as_u16();
    let mut out_headers = HeaderMap::new();
    for (name, value) in response.headers() {
        if name != "transfer-encoding" {
            out_headers.insert(
                axum::http::HeaderName::from_bytes(name.as_str().as_bytes()).expect("name"),
                axum::http::HeaderValue::from_bytes(value.as_bytes()).expect("value"),
            );
        }
    }
    let bytes = response.bytes().await.expect("body");
    record(status);
    (
        StatusCode::from_u16(status).expect("status"),
        out_headers,
        bytes,
    )
        .into_response()
}

/// moto accepts any credentials, but the S3 signer needs some.
pub(super) const CREDENTIALS: [(&str, &str); 2] = [
    ("AWS_ACCESS_KEY_ID", "narra-test"),
    ("AWS_SECRET_ACCESS_KEY", "narra-test-secret"),
];

/// `narra --storage STORAGE ARGS` with credentials, as a command.
fn narra(home: &Home, storage: &str, args: &[&str]) -> Command {
    let mut full = vec!["--storage", storage];
    full.extend_from_slice(args);
    let mut command = home.command(&full);
    command.envs(CREDENTIALS).env_remove("AWS_PROFILE");
    command
}

fn spawn(home: &Home, storage: &str, args: &[&str]) -> ChildGuard {
    let log = std::fs::File::create(home.dir.path().join("child.log")).expect("log file");
    let child = narra(home, storage, args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("narra starts");
    ChildGuard::from_child(child)
}

fn ingest_json(home: &Home, storage: &str, args: &[&str], expected_code: i32) -> Vec<Value> {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    let output = narra(home, storage, &full).output().expect("narra runs");
    assert_eq!(
        output.status.code(),
        Some(expected_code),
        "narra {full:?}\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&output.stdout).expect("a JSON list")
}

fn show(home: &Home, storage: &str, id: &str) -> Value {
    let output = narra(home, storage, &["--json", "show", id])
        .output()
        .expect("narra runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON")
}

// Guards the end-to-end scenario on S3: an HTTP source and a local file each store the
// byte-identical original, audio-only audio of the source's duration, the metadata object and the
// manifest in the bucket, checked by the very assertions the filesystem run uses.
#[test]
fn http_and_local_sources_are_ingested_into_s3() {
    let home = Home::new();
    let moto = Moto::start();
    let storage = format!(
        "s3://{BUCKET}/narra?endpoint=http://127.0.0.1:{}&region=us-east-1",
        moto.port
    );
    let origin = Origin::start();
    let url = origin.serve_video("media/sample.mp4", sample_video());
    let local = other_video().to_str().expect("a UTF-8 path");

    let jobs = ingest_json(&home, &storage, &["ingest", &url, local], 0);

    let copies = tempfile::tempdir().unwrap();
    for (job, source_file) in jobs.iter().zip([sample_video(), other_video()]) {
        assert_eq!(job["status"], "succeeded", "{job}");
        let shown = show(&home, &storage, &id_of(job));
        super::e2e::assert_ingested(&shown, &id_of(job), source_file, &|key| {
            moto.fetch(copies.path(), key)
        });
    }
}

// Guards the S3 path end to end: artifacts land in the bucket byte-identical, identical media from
// two jobs is written once, and re-running a finished job writes zero objects (counted at the
// storage layer, by the proxy).
#[test]
fn s3_stores_once_and_a_rerun_writes_nothing() {
    let home = Home::new();
    let moto = Moto::start();
    let proxy = Proxy::start(&moto);
    let storage = proxy.storage_uri("");
    let origin = Origin::start();
    let first_url = origin.serve_video("a/clip.mp4", sample_video());
    let second_url = origin.serve_video("b/same-clip.mp4", sample_video());

    let first = ingest_json(&home, &storage, &["ingest", &first_url], 0);
    let first_show = show(&home, &storage, &id_of(&first[0]));
    let video_key = artifact(&first_show, "video")["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        blake3::hash(&moto.object(&video_key).expect("the video is in the bucket"))
            .to_hex()
            .to_string(),
        blake3_hex(sample_video())
    );
    let video_writes = |proxy: &Proxy| {
        proxy
            .writes()
            .iter()
            .filter(|seen| seen.path.ends_with(&video_key))
            .count()
    };
    assert!(video_writes(&proxy) >= 1);
    let after_first = video_writes(&proxy);

    let second = ingest_json(&home, &storage, &["ingest", &second_url], 0);
    assert_ne!(id_of(&first[0]), id_of(&second[0]), "two sources, two jobs");
    let second_show = show(&home, &storage, &id_of(&second[0]));
    assert_eq!(artifact(&second_show, "video")["key"], video_key.as_str());
    assert_eq!(
        video_writes(&proxy),
        after_first,
        "the shared video blob is not written again"
    );

    let writes_before = proxy.writes().len();
    let seq = first_show["events"].as_array().unwrap().len() as u64;
    ingest_json(&home, &storage, &["ingest", &first_url, "--reingest"], 0);
    assert_eq!(
        proxy.writes().len(),
        writes_before,
        "{:?}",
        &proxy.writes()[writes_before..]
    );
    let rerun = show(&home, &storage, &id_of(&first[0]));
    let skipped: Vec<_> = step_events_after(&rerun, seq - 1)
        .into_iter()
        .filter(|(kind, _)| kind == "step_skipped")
        .collect();
    assert_eq!(skipped.len(), 3, "{skipped:?}");

    let verify = narra(&home, &storage, &["verify"])
        .output()
        .expect("narra runs");
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

// Guards storage outages: while the store answers 503 the job waits and retries inside the store
// step, keeps its verified checkpoints, downloads nothing again, and succeeds once the store is back.
#[test]
fn an_outage_during_store_is_waited_out_without_redownloading() {
    let home = Home::new();
    let moto = Moto::start();
    let proxy = Proxy::start(&moto);
    let storage = proxy.storage_uri("");
    let origin = Origin::start();
    let url = origin.serve_video("outage/clip.mp4", sample_video());
    proxy.set_mode(Mode::Unavailable);

    let child = spawn(&home, &storage, &["ingest", &url]);
    wait_until("the store step has met the outage a few times", || {
        proxy
            .seen()
            .iter()
            .filter(|seen| seen.answered == 503)
            .count()
            >= 3
    });
    proxy.set_mode(Mode::Forward);
    let status = child.wait();
    assert!(
        status.success(),
        "the job succeeds once the store is back: {status:?}"
    );

    assert_eq!(
        origin.gets("outage/clip.mp4"),
        1,
        "nothing is downloaded again"
    );
    let jobs = ingest_json(&home, &storage, &["jobs"], 0);
    let shown = show(&home, &storage, &id_of(&jobs[0]));
    assert_eq!(shown["status"], "succeeded");
    let started: Vec<_> = step_events_after(&shown, 0)
        .into_iter()
        .filter(|(kind, _)| kind == "step_started")
        .collect();
    assert_eq!(started.len(), 3, "each step ran once: {started:?}");
}

// Guards bad credentials: a 403 from the store fails the job at once as `storage_auth` (not
// retried), its download and extract checkpoints are kept, and a retry after the fix skips them.
#[test]
fn refused_credentials_fail_as_storage_auth_and_keep_checkpoints() {
    let home = Home::new();
    let moto = Moto::start();
    let proxy = Proxy::start(&moto);
    let storage = proxy.storage_uri("");
    let origin = Origin::start();
    let url = origin.serve_video("auth/clip.mp4", sample_video());
    proxy.set_mode(Mode::Denied);

    let failed = ingest_json(&home, &storage, &["ingest", &url], 1);
    assert_eq!(failed[0]["error"]["class"], "storage_auth", "{failed:?}");
    // The blobs and the metadata record are stored at once, so each may be refused once; none is
    // asked for twice.
    let seen = proxy.seen();
    let refused = seen.len();
    let mut requests: Vec<(&str, &str)> = seen
        .iter()
        .map(|seen| (seen.method.as_str(), seen.path.as_str()))
        .collect();
    requests.sort();
    let asked = requests.len();
    requests.dedup();
    assert!(
        refused <= 3 && requests.len() == asked,
        "not retried: {seen:?}"
    );
    let shown = show(&home, &storage, &id_of(&failed[0]));
    let steps: Vec<_> = shown["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|checkpoint| checkpoint["step"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(steps, ["download", "extract"]);

    proxy.set_mode(Mode::Forward);
    let seq = shown["events"].as_array().unwrap().len() as u64;
    ingest_json(&home, &storage, &["retry", &id_of(&failed[0])], 0);
    let retried = show(&home, &storage, &id_of(&failed[0]));
    let skipped: Vec<_> = step_events_after(&retried, seq - 1)
        .into_iter()
        .filter(|(kind, _)| kind == "step_skipped")
        .map(|(_, step)| step)
        .collect();
    assert_eq!(skipped, ["download", "extract"]);
    assert_eq!(origin.gets("auth/clip.mp4"), 1);
}

/// A video of about 12 MB: noise does not compress, so it needs several 5 MiB parts.
fn large_video(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("large.mkv");
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args([
            "-f",
            "lavfi",
            "-i",
            "nullsrc=s=640x360:r=25,geq=random(1)*255:128:128",
        ])
        .args(["-f", "lavfi", "-i", "sine=frequency=330:sample_rate=48000"])
        .args([
            "-t",
            "2",
            "-c:v",
            "mpeg4",
            "-q:v",
            "1",
            "-c:a",
            "flac",
            "-shortest",
        ])
        .arg(&path)
        .status()
        .expect("ffmpeg runs");
    assert!(status.success());
    path
}

// Guards multipart uploads and crash safety: a large video goes up in parts; a process killed
// while a part is in flight leaves no object at the final key, and a retry completes the upload.
#[test]
fn a_process_killed_mid_upload_leaves_no_object_and_the_retry_completes_it() {
    let home = Home::new();
    let moto = Moto::start();
    let proxy = Proxy::start(&moto);
    let storage = proxy.storage_uri("&chunk_mib=5&concurrency=2");
    let origin = Origin::start();
    let media = tempfile::tempdir().unwrap();
    let video = large_video(media.path());
    let size = std::fs::metadata(&video).unwrap().len();
    assert!(
        size > 10 * 1024 * 1024,
        "the video needs several parts: {size} bytes"
    );
    let url = origin.serve_video("large/clip.mkv", &video);
    let video_key = format!(
        "blobs/{}/{}.mkv",
        &blake3_hex(&video)[..2],
        blake3_hex(&video)
    );
    proxy.set_mode(Mode::StallParts);

    let mut child = spawn(&home, &storage, &["ingest", &url]);
    wait_until("a part upload is in flight", || {
        if child.has_exited().is_some() {
            panic!(
                "narra exited before uploading: {}\nrequests: {:?}",
                std::fs::read_to_string(home.dir.path().join("child.log")).unwrap_or_default(),
                proxy.seen()
            );
        }
        proxy.stalled() >= 1
    });
    child.kill();
    assert_eq!(moto.object(&video_key), None, "no object at the final key");
    assert!(
        proxy
            .seen()
            .iter()
            .any(|seen| seen.method == "POST" && seen.query.contains("uploads")),
        "the upload was multipart: {:?}",
        proxy.seen()
    );

    proxy.set_mode(Mode::Forward);
    let jobs = ingest_json(&home, &storage, &["jobs"], 0);
    let id = id_of(&jobs[0]);
    assert_eq!(
        jobs[0]["status"], "running",
        "the killed process left it running"
    );
    ingest_json(&home, &storage, &["retry", &id], 0);
    let stored = moto
        .object(&video_key)
        .expect("the retry completed the upload");
    assert_eq!(
        blake3::hash(&stored).to_hex().to_string(),
        blake3_hex(&video)
    );
    assert_eq!(
        origin.gets("large/clip.mkv"),
        1,
        "the verified download was not fetched again"
    );
}

// Guards the storage breaker: one `storage_unavailable` failure pauses storing globally. No job is
// claimed while it is open (nothing more is downloaded), the jobs that meet the outage meanwhile
// are held rather than failed, the opening is an incident that `health` reports while the worker
// runs (over the home's socket), and once the storage answers a probe job gets through and every
// job succeeds, each downloaded once.
#[test]
fn a_storage_outage_pauses_storing_instead_of_failing_jobs_one_by_one() {
    const BUILTIN: &str = include_str!("../../workflows/ingest.toml");
    const STORE_PARAMS: &str = "params = { storage_unavailable_wait_s = 60 }";
    assert!(BUILTIN.contains(STORE_PARAMS), "{BUILTIN}");
    let home = Home::new();
    let workflows = home.dir.path().join("workflows");
    std::fs::create_dir_all(&workflows).expect("create the workflows directory");
    std::fs::write(
        workflows.join("ingest.toml"),
        BUILTIN.replacen(
            STORE_PARAMS,
            "params = { storage_unavailable_wait_s = 1 }",
            1,
        ),
    )
    .expect("write ingest.toml");
    let workflows = workflows.to_str().expect("UTF-8").to_string();
    let moto = Moto::start();
    let proxy = Proxy::start(&moto);
    let storage = proxy.storage_uri("");
    let origin = Origin::start();
    let paths: Vec<String> = (0..5).map(|index| format!("pause/{index}.mp4")).collect();
    let mut submit = vec!["--workflows", workflows.as_str(), "submit"];
    let urls: Vec<String> = paths
        .iter()
        .map(|path| origin.serve_video(path, sample_video()))
        .collect();
    submit.extend(urls.iter().map(String::as_str));
    ingest_json(&home, &storage, &submit, 0);
    proxy.set_mode(Mode::Unavailable);

    let mut worker = spawn(
        &home,
        &storage,
        &[
            "--workflows",
            &workflows,
            "worker",
            "--drain",
            "--concurrency",
            "2",
            "--breaker-cooldown-ms",
            "2000",
        ],
    );
    // Held and served before the first `incidents`, which would otherwise race it for the home.
    home.wait_for_holder(&mut worker, None);
    let incidents = || {
        let output = narra(&home, &storage, &["--json", "incidents"])
            .output()
            .expect("narra runs");
        serde_json::from_slice::<Value>(&output.stdout).unwrap_or(Value::Null)
    };
    wait_until("the storage breaker opened", || {
        incidents().as_array().is_some_and(|incidents| {
            incidents.iter().any(|incident| {
                incident["action"] == "circuit_opened" && incident["key"] == "(storage)"
            })
        })
    });
    let health = narra(&home, &storage, &["--json", "health"])
        .output()
        .expect("narra runs");
    let health: Value = serde_json::from_slice(&health.stdout).expect("health JSON");
    assert!(
        health["circuit_breakers"]
            .as_array()
            .expect("a list")
            .iter()
            .any(|breaker| breaker["host"] == "(storage)"),
        "{health}"
    );
    let downloaded: usize = paths.iter().map(|path| origin.gets(path)).sum();
    assert!(
        downloaded <= 2,
        "no job started while storing is paused: {downloaded}"
    );
    proxy.set_mode(Mode::Forward);
    let status = worker.wait();
    let log = std::fs::read_to_string(home.dir.path().join("child.log")).unwrap_or_default();
    assert!(status.success(), "{status:?}\n{log}");

    let jobs = ingest_json(&home, &storage, &["jobs"], 0);
    assert_eq!(jobs.len(), paths.len());
    for job in &jobs {
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    for path in &paths {
        assert_eq!(origin.gets(path), 1, "{path} downloaded once");
    }
    let attempts: Vec<u64> = jobs
        .iter()
        .map(|job| {
            show(&home, &storage, &id_of(job))["attempts"]
                .as_u64()
                .expect("attempts")
        })
        .collect();
    assert!(
        attempts.iter().filter(|&&attempts| attempts > 1).count() <= 1,
        "only the job that met the outage first spent an attempt on it: {attempts:?}"
    );
}
