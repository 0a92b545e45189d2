//! Downloads that survive the real internet: resume, completeness, error classes, retries, the
//! network guard, the size limit, secrets in URLs, yt-dlp and flat memory, against a loopback
//! origin whose every answer is scripted.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::Value;

use super::fixture::{
    ChildGuard, Home, StallingOrigin, artifact, blake3_hex, id_of, other_video, sample_video,
    wait_until,
};

/// The size of the pieces the origin sends small bodies in.
const CHUNK: u64 = 4096;

/// The size of the pieces of generated (large) bodies.
const GENERATED_CHUNK: u64 = 64 * 1024;

/// Download parameters with fast retries, for scripted faults.
const FAST: &str =
    "connect_timeout_s = 5, read_timeout_s = 5, backoff_initial_ms = 10, backoff_max_ms = 50";

// ---------------------------------------------------------------------------------------------
// A scripted loopback origin.
// ---------------------------------------------------------------------------------------------

/// What one request to a path gets. A path's script is consumed one behaviour per request; once it
/// is empty the path behaves `Normal`.
#[derive(Debug, Clone)]
enum Behaviour {
    /// 200 with the whole resource, its ETag and Content-Length; `Range: bytes=N-` is honoured with
    /// a 206 only when `If-Range` equals the current ETag.
    Normal,
    /// What `Normal` would answer, headers included, but the connection drops after this many
    /// body bytes.
    DropAfter(u64),
    /// What `Normal` would answer, but after this many body bytes nothing more ever comes.
    Stall(u64),
    /// This status, an empty body and, when given, `Retry-After` in seconds.
    Status(u16, Option<u64>),
    /// A 302 to this location.
    Redirect(String),
    /// The resource is replaced by these bytes with this ETag, then the answer is `Normal`.
    ChangeTo(Vec<u8>, String),
    /// `Normal` without Content-Length: chunked transfer encoding.
    Chunked,
}

/// A resource's bytes: stored, or generated piece by piece so that no test holds them whole.
#[derive(Clone)]
enum Content {
    Bytes(Arc<Vec<u8>>),
    /// `len` bytes made of `block` repeated, each repetition stamped with its index in its first
    /// eight bytes.
    Generated {
        len: u64,
        block: Arc<Vec<u8>>,
    },
}

impl Content {
    fn generated(len: u64, seed: u64) -> Content {
        let mut state = seed;
        let block = (0..GENERATED_CHUNK / 8)
            .flat_map(|_| {
                // splitmix64
                state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                (z ^ (z >> 31)).to_le_bytes()
            })
            .collect();
        Content::Generated {
            len,
            block: Arc::new(block),
        }
    }

    fn len(&self) -> u64 {
        match self {
            Content::Bytes(bytes) => bytes.len() as u64,
            Content::Generated { len, .. } => *len,
        }
    }

    /// Bytes `start..end`.
    fn slice(&self, start: u64, end: u64) -> Bytes {
        match self {
            Content::Bytes(bytes) => Bytes::copy_from_slice(&bytes[start as usize..end as usize]),
            Content::Generated { block, .. } => {
                let size = block.len() as u64;
                let mut out = Vec::with_capacity((end - start) as usize);
                let mut offset = start;
                while offset < end {
                    let index = offset / size;
                    let mut stamped = block.as_ref().clone();
                    stamped[..8].copy_from_slice(&index.to_le_bytes());
                    let from = offset - index * size;
                    let to = (end - index * size).min(size);
                    out.extend_from_slice(&stamped[from as usize..to as usize]);
                    offset = index * size + to;
                }
                Bytes::from(out)
            }
        }
    }

    /// blake3 of the whole content, computed piece by piece.
    fn blake3_hex(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        let mut offset = 0;
        while offset < self.len() {
            let end = (offset + GENERATED_CHUNK).min(self.len());
            hasher.update(&self.slice(offset, end));
            offset = end;
        }
        hasher.finalize().to_hex().to_string()
    }
}

#[derive(Clone)]
struct Resource {
    content: Content,
    etag: String,
    content_type: String,
    chunk: u64,
}

/// One request the origin answered.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Served {
    method: String,
    path: String,
    range: Option<String>,
    if_range: Option<String>,
    accept_encoding: Option<String>,
    status: u16,
    /// Body bytes handed to the connection.
    sent: u64,
}

struct LogEntry {
    served: Served,
    sent: Arc<AtomicU64>,
}

#[derive(Default)]
struct Shared {
    resources: Mutex<HashMap<String, Resource>>,
    scripts: Mutex<HashMap<String, VecDeque<Behaviour>>>,
    log: Mutex<Vec<LogEntry>>,
}

/// A loopback HTTP origin whose answers are scripted per path, logging every request.
struct ScriptedOrigin {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _runtime: tokio::runtime::Runtime,
}

impl ScriptedOrigin {
    fn start() -> ScriptedOrigin {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let shared = Arc::new(Shared::default());
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind loopback");
        let addr = listener.local_addr().expect("an address");
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(shared.clone());
        runtime.spawn(async move {
            axum::serve(listener, app).await.expect("the origin serves");
        });
        ScriptedOrigin {
            addr,
            shared,
            _runtime: runtime,
        }
    }

    /// Serves `bytes` at `path` with a strong ETag derived from them; returns the ETag.
    fn put(&self, path: &str, bytes: Vec<u8>) -> String {
        let etag = etag_of(&bytes);
        self.put_resource(
            path,
            Resource {
                content: Content::Bytes(Arc::new(bytes)),
                etag: etag.clone(),
                content_type: "video/mp4".into(),
                chunk: CHUNK,
            },
        );
        etag
    }

    /// Serves the sample video at `path`; returns its ETag.
    fn put_sample(&self, path: &str) -> String {
        self.put(
            path,
            std::fs::read(sample_video()).expect("read the sample"),
        )
    }

    fn put_resource(&self, path: &str, resource: Resource) {
        self.shared
            .resources
            .lock()
            .unwrap()
            .insert(path.to_string(), resource);
    }

    /// Appends behaviours to `path`'s script.
    fn script(&self, path: &str, behaviours: impl IntoIterator<Item = Behaviour>) {
        self.shared
            .scripts
            .lock()
            .unwrap()
            .entry(path.to_string())
            .or_default()
            .extend(behaviours);
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every request so far, in order.
    fn log(&self) -> Vec<Served> {
        self.shared
            .log
            .lock()
            .unwrap()
            .iter()
            .map(|entry| Served {
                sent: entry.sent.load(Ordering::SeqCst),
                ..entry.served.clone()
            })
            .collect()
    }

    /// The requests for `path`, in order.
    fn log_of(&self, path: &str) -> Vec<Served> {
        self.log()
            .into_iter()
            .filter(|served| served.path == path)
            .collect()
    }
}

fn etag_of(bytes: &[u8]) -> String {
    format!("\"{}\"", &blake3::hash(bytes).to_hex()[..16])
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string)
}

async fn answer(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let path = uri.path().to_string();
    let mut behaviour = shared
        .scripts
        .lock()
        .unwrap()
        .get_mut(&path)
        .and_then(VecDeque::pop_front)
        .unwrap_or(Behaviour::Normal);
    if let Behaviour::ChangeTo(bytes, etag) = behaviour {
        let mut resources = shared.resources.lock().unwrap();
        let content_type = resources
            .get(&path)
            .map_or_else(|| "video/mp4".to_string(), |old| old.content_type.clone());
        resources.insert(
            path.clone(),
            Resource {
                content: Content::Bytes(Arc::new(bytes)),
                etag,
                content_type,
                chunk: CHUNK,
            },
        );
        behaviour = Behaviour::Normal;
    }
    let resource = shared.resources.lock().unwrap().get(&path).cloned();
    let range = header_text(&headers, header::RANGE);
    let if_range = header_text(&headers, header::IF_RANGE);
    let sent = Arc::new(AtomicU64::new(0));
    let mut builder = Response::builder();
    let (status, body) = match (&behaviour, resource) {
        (Behaviour::Status(code, retry_after), _) => {
            if let Some(seconds) = retry_after {
                builder = builder.header(header::RETRY_AFTER, seconds.to_string());
            }
            (*code, Body::empty())
        }
        (Behaviour::Redirect(location), _) => {
            builder = builder.header(header::LOCATION, location.as_str());
            (302, Body::empty())
        }
        (_, None) => (404, Body::empty()),
        (_, Some(resource)) => {
            let total = resource.content.len();
            let asked_from = range
                .as_deref()
                .and_then(|range| range.strip_prefix("bytes="))
                .and_then(|range| range.strip_suffix('-'))
                .and_then(|start| start.parse::<u64>().ok());
            let validated = if_range.as_deref() == Some(resource.etag.as_str());
            builder = builder
                .header(header::ETAG, resource.etag.as_str())
                .header(header::ACCEPT_RANGES, "bytes")
                .header(header::CONTENT_TYPE, resource.content_type.as_str());
            let (status, start) = match asked_from {
                Some(start) if validated && start >= total => {
                    builder = builder.header(header::CONTENT_RANGE, format!("bytes */{total}"));
                    (416, total)
                }
                Some(start) if validated => {
                    builder = builder.header(
                        header::CONTENT_RANGE,
                        format!("bytes {start}-{}/{total}", total - 1),
                    );
                    (206, start)
                }
                _ => (200, 0),
            };
            if !matches!(behaviour, Behaviour::Chunked) {
                builder = builder.header(header::CONTENT_LENGTH, (total - start).to_string());
            }
            if status == 416 || method == Method::HEAD {
                (status, Body::empty())
            } else {
                let cut = match behaviour {
                    Behaviour::DropAfter(bytes) => Cut::Drop(bytes),
                    Behaviour::Stall(bytes) => Cut::Stall(bytes),
                    _ => Cut::None,
                };
                (status, body_stream(resource, start, cut, sent.clone()))
            }
        }
    };
    shared.log.lock().unwrap().push(LogEntry {
        served: Served {
            method: method.to_string(),
            path,
            range,
            if_range,
            accept_encoding: header_text(&headers, header::ACCEPT_ENCODING),
            status,
            sent: 0,
        },
        sent,
    });
    builder
        .status(StatusCode::from_u16(status).expect("a valid status"))
        .body(body)
        .expect("a valid response")
}

/// Where a body stops early.
#[derive(Debug, Clone, Copy)]
enum Cut {
    None,
    /// The connection drops after this many bytes.
    Drop(u64),
    /// Nothing more comes after this many bytes.
    Stall(u64),
}

/// The resource from `start` on, in pieces, counting the bytes handed to the connection.
fn body_stream(resource: Resource, start: u64, cut: Cut, sent: Arc<AtomicU64>) -> Body {
    let end = resource.content.len();
    let stop = match cut {
        Cut::None => end,
        Cut::Drop(bytes) | Cut::Stall(bytes) => (start + bytes).min(end),
    };
    let stream = futures::stream::unfold((start, false), move |(offset, over)| {
        let resource = resource.clone();
        let sent = sent.clone();
        async move {
            if over {
                return None;
            }
            if offset < stop {
                let next = (offset + resource.chunk).min(stop);
                let bytes = resource.content.slice(offset, next);
                sent.fetch_add(next - offset, Ordering::SeqCst);
                return Some((Ok(bytes), (next, false)));
            }
            match cut {
                Cut::None => None,
                Cut::Drop(_) => {
                    // Return to the server once, so that it writes out what it has been given,
                    // then fail the body: the server drops the connection.
                    tokio::task::yield_now().await;
                    Some((
                        Err(std::io::Error::new(
                            std::io::ErrorKind::ConnectionReset,
                            "scripted drop",
                        )),
                        (offset, true),
                    ))
                }
                Cut::Stall(_) => std::future::pending().await,
            }
        }
    });
    Body::from_stream(stream)
}

/// A loopback TCP listener standing in for a proxy: it accepts nothing while the test runs, and
/// counts the connections made to it afterwards (they wait in its backlog).
struct ProxyTrap {
    listener: std::net::TcpListener,
}

impl ProxyTrap {
    fn start() -> ProxyTrap {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        ProxyTrap { listener }
    }

    fn url(&self) -> String {
        format!("http://{}", self.listener.local_addr().expect("an address"))
    }

    /// Connections made to the trap so far.
    fn connections(&self) -> usize {
        let mut count = 0;
        loop {
            match self.listener.accept() {
                Ok(_) => count += 1,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return count,
                Err(error) => panic!("accept on the proxy trap: {error}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

/// Writes `<home dir>/workflows/ingest.toml`: the built-in ingest workflow with its download
/// parameters replaced by `download_params` (TOML key = value pairs). Returns the directory for
/// `--workflows`.
pub fn workflows(home: &Home, download_params: &str) -> String {
    const BUILTIN: &str = include_str!("../../workflows/ingest.toml");
    let mut in_download = false;
    let mut replaced = false;
    let mut text = String::new();
    for line in BUILTIN.lines() {
        if line.trim() == "kind = \"download\"" {
            in_download = true;
        }
        // One job run: these tests count the download step's own attempts, not the job's
        // automatic retries.
        if line.trim() == "attempts_max = 3" {
            text.push_str("attempts_max = 1\n");
            continue;
        }
        if in_download && !replaced && line.trim_start().starts_with("params") {
            text.push_str(&format!("params = {{ {download_params} }}\n"));
            replaced = true;
            continue;
        }
        text.push_str(line);
        text.push('\n');
    }
    assert!(
        replaced,
        "the built-in ingest workflow has a download params line:\n{BUILTIN}"
    );
    let dir = home.dir.path().join("workflows");
    std::fs::create_dir_all(&dir).expect("create the workflows directory");
    std::fs::write(dir.join("ingest.toml"), text).expect("write ingest.toml");
    dir.to_str().expect("a UTF-8 path").to_string()
}

/// `ingest URL` with the workflows of `dir`, asserting the exit code: the job.
fn ingest(home: &Home, dir: &str, url: &str, expected_code: i32) -> Value {
    home.one_job(&["--workflows", dir, "ingest", url], expected_code)
}

/// Runs `command` (which must print one job as JSON), asserting its exit code: that job.
fn run_one_job(mut command: Command, expected_code: i32) -> (Value, Output) {
    let output = command.output().expect("narra runs");
    assert_eq!(
        output.status.code(),
        Some(expected_code),
        "{command:?} exited {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let list: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "stdout of {command:?} is not JSON ({error}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    let jobs = list.as_array().expect("a list of jobs");
    assert_eq!(jobs.len(), 1, "{command:?} printed one job: {list}");
    (jobs[0].clone(), output)
}

/// `ingest` of `url` with the guard's environment variables removed: only public addresses
/// allowed, plus `env`.
fn ingest_guarded(home: &Home, dir: &str, url: &str, env: &[(&str, &str)]) -> Value {
    let mut command = home.command(&["--json", "--workflows", dir, "ingest", url]);
    command
        .env_remove("NARRA_ALLOW_PRIVATE_NETWORK")
        .env_remove("NARRA_ALLOWED_HOSTS")
        .env_remove("NARRA_PROXY");
    command.envs(env.iter().copied());
    run_one_job(command, 1).0
}

fn assert_failed_with(job: &Value, class: &str) {
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["class"], class, "{}", job["error"]);
}

/// The file of the stored video of a succeeded job.
fn stored_video(home: &Home, show: &Value) -> PathBuf {
    home.object(artifact(show, "video")["key"].as_str().expect("a key"))
}

/// Every regular file under `dir` (none when it does not exist), with its size.
fn files_under(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries {
            let entry = entry.expect("a directory entry");
            let metadata = entry.metadata().expect("stat an entry");
            if metadata.is_dir() {
                pending.push(entry.path());
            } else {
                files.push((entry.path(), metadata.len()));
            }
        }
    }
    files
}

fn has_download_checkpoint(show: &Value) -> bool {
    show["checkpoints"]
        .as_array()
        .expect("a checkpoints list")
        .iter()
        .any(|checkpoint| checkpoint["step"] == "download")
}

// ---------------------------------------------------------------------------------------------
// Resume and completeness.
// ---------------------------------------------------------------------------------------------

// Guards resume: after a connection drops mid-body, the step's own retry asks only for the rest
// (`Range` from the bytes kept, `If-Range` with the ETag), the download's progress ends at the whole
// file, and the stored video is the source.
#[test]
fn a_dropped_connection_is_resumed_from_the_bytes_received() {
    let home = Home::new();
    let dir = workflows(&home, FAST);
    let origin = ScriptedOrigin::start();
    let source = std::fs::read(sample_video()).expect("read the sample");
    let size = source.len() as u64;
    let cut = 3 * CHUNK + 100;
    assert!(
        cut < size,
        "the sample ({size} bytes) is longer than the cut"
    );
    let etag = origin.put("/media/clip.mp4", source);
    origin.script("/media/clip.mp4", [Behaviour::DropAfter(cut)]);

    // Stopped right after the download's checkpoint, while the job's progress record is still the
    // download's (later steps start their own), then resumed.
    let stop = "download.checkpoint.after";
    let output = home
        .command(&[
            "--workflows",
            &dir,
            "ingest",
            &origin.url("/media/clip.mp4"),
        ])
        .env(narra::failpoint::FAILPOINT_ENV, stop)
        .output()
        .expect("narra runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("narra: failpoint fired: {stop}")),
        "{stderr}"
    );
    let jobs = home.json(&["jobs"], 0);
    let progress = &jobs[0]["progress"];
    assert_eq!(progress["step"], "download", "{progress}");
    assert_eq!(progress["bytes_done"], size, "{progress}");
    assert_eq!(progress["bytes_total"], size, "{progress}");
    let job = home.one_job(&["--workflows", &dir, "retry", &id_of(&jobs[0])], 0);

    assert_eq!(job["status"], "succeeded", "{job}");
    let log = origin.log_of("/media/clip.mp4");
    assert_eq!(log.len(), 2, "{log:#?}");
    assert_eq!((log[0].status, log[0].sent), (200, cut), "{log:#?}");
    assert_eq!(log[0].range, None, "{log:#?}");
    assert_eq!(log[1].range, Some(format!("bytes={cut}-")), "{log:#?}");
    assert_eq!(log[1].if_range, Some(etag), "{log:#?}");
    assert_eq!((log[1].status, log[1].sent), (206, size - cut), "{log:#?}");
    assert!(
        log.iter()
            .all(|served| served.accept_encoding.as_deref() == Some("identity")),
        "every request asks for the bytes as they are: {log:#?}"
    );
    let served: u64 = log.iter().map(|served| served.sent).sum();
    assert!(served <= size + CHUNK, "served {served} of {size}");
    let show = home.show(&id_of(&job));
    assert_eq!(
        blake3_hex(&stored_video(&home, &show)),
        blake3_hex(sample_video())
    );
}

// Guards against splicing: when the remote file changes between attempts (new ETag), the resume
// request's `If-Range` no longer matches, the download starts over and stores the new file whole.
#[test]
fn a_file_changed_between_attempts_is_downloaded_again_from_zero() {
    let home = Home::new();
    let dir = workflows(&home, FAST);
    let origin = ScriptedOrigin::start();
    let old_etag = origin.put_sample("/media/clip.mp4");
    let new = std::fs::read(other_video()).expect("read the other video");
    let new_etag = etag_of(&new);
    assert_ne!(old_etag, new_etag);
    let cut = 2 * CHUNK;
    origin.script(
        "/media/clip.mp4",
        [
            Behaviour::DropAfter(cut),
            Behaviour::ChangeTo(new.clone(), new_etag),
        ],
    );

    let job = ingest(&home, &dir, &origin.url("/media/clip.mp4"), 0);

    assert_eq!(job["status"], "succeeded", "{job}");
    let log = origin.log_of("/media/clip.mp4");
    assert_eq!(log.len(), 2, "{log:#?}");
    assert_eq!(log[1].range, Some(format!("bytes={cut}-")), "{log:#?}");
    assert_eq!(log[1].if_range, Some(old_etag), "{log:#?}");
    assert_eq!(
        (log[1].status, log[1].sent),
        (200, new.len() as u64),
        "{log:#?}"
    );
    let show = home.show(&id_of(&job));
    let stored = std::fs::read(stored_video(&home, &show)).expect("read the stored video");
    assert!(
        stored == new,
        "the stored video is the new file byte for byte"
    );
}

// Guards completeness: a server that always sends fewer bytes than it announced fails the job as
// `truncated_download` after `attempts_max` attempts with no download checkpoint, and a later run
// against a fixed origin resumes from the kept bytes.
#[test]
fn a_body_shorter_than_announced_is_never_accepted_and_is_resumed_later() {
    let home = Home::new();
    let dir = workflows(&home, &format!("{FAST}, attempts_max = 3"));
    let origin = ScriptedOrigin::start();
    let source = std::fs::read(sample_video()).expect("read the sample");
    let size = source.len() as u64;
    assert!(
        3 * CHUNK < size,
        "the sample ({size} bytes) outlasts three cuts"
    );
    let etag = origin.put("/media/clip.mp4", source);
    origin.script("/media/clip.mp4", vec![Behaviour::DropAfter(CHUNK); 3]);

    let failed = ingest(&home, &dir, &origin.url("/media/clip.mp4"), 1);

    let id = id_of(&failed);
    assert_eq!(failed["status"], "failed", "{failed}");
    let log = origin.log_of("/media/clip.mp4");
    let ranges: Vec<Option<String>> = log.iter().map(|served| served.range.clone()).collect();
    assert_eq!(
        ranges,
        [
            None,
            Some(format!("bytes={CHUNK}-")),
            Some(format!("bytes={}-", 2 * CHUNK))
        ],
        "exactly attempts_max requests, each resuming: {log:#?}"
    );
    let show = home.show(&id);
    assert!(
        !has_download_checkpoint(&show),
        "a truncated download is never checkpointed: {}",
        show["checkpoints"]
    );

    // The origin is fixed (its script is used up): a retry resumes from the kept bytes.
    let retried = home.one_job(&["--workflows", &dir, "retry", &id], 0);

    assert_eq!(retried["status"], "succeeded", "{retried}");
    let log = origin.log_of("/media/clip.mp4");
    assert_eq!(log.len(), 4, "{log:#?}");
    assert_eq!(
        log[3].range,
        Some(format!("bytes={}-", 3 * CHUNK)),
        "{log:#?}"
    );
    assert_eq!(log[3].if_range, Some(etag), "{log:#?}");
    assert_eq!(log[3].status, 206, "{log:#?}");
    let show = home.show(&id);
    assert_eq!(
        blake3_hex(&stored_video(&home, &show)),
        blake3_hex(sample_video())
    );
    assert_eq!(
        failed["error"]["class"], "truncated_download",
        "fewer bytes than Content-Length announced: {}",
        failed["error"]
    );
}

// ---------------------------------------------------------------------------------------------
// Error classes and retries.
// ---------------------------------------------------------------------------------------------

// Guards permanent refusals: a 403 fails at once as `download_blocked` with words an operator
// understands, without a retry.
#[test]
fn http_403_is_download_blocked_without_retry() {
    let home = Home::new();
    let dir = workflows(&home, FAST);
    let origin = ScriptedOrigin::start();
    origin.put("/media/clip.mp4", b"never served".to_vec());
    origin.script("/media/clip.mp4", [Behaviour::Status(403, None)]);

    let job = ingest(&home, &dir, &origin.url("/media/clip.mp4"), 1);

    assert_failed_with(&job, "download_blocked");
    let message = job["error"]["message"].as_str().expect("a message");
    assert!(message.contains("HTTP 403"), "{message}");
    assert_eq!(origin.log().len(), 1, "{:#?}", origin.log());
}

// Guards the not-found class: a 404 fails as `not_found`, without a retry.
#[test]
fn http_404_is_not_found() {
    let home = Home::new();
    let dir = workflows(&home, FAST);
    let origin = ScriptedOrigin::start();

    let job = ingest(&home, &dir, &origin.url("/media/gone.mp4"), 1);

    assert_failed_with(&job, "not_found");
    assert_eq!(origin.log().len(), 1, "{:#?}", origin.log());
}

// Guards rate limiting: a 429 with `Retry-After: 1` is retried after the wait the server asked
// for (not the workflow's 10-50 ms backoff), and the job then succeeds.
#[test]
fn http_429_is_retried_after_the_wait_asked_for() {
    let home = Home::new();
    let dir = workflows(&home, FAST);
    let origin = ScriptedOrigin::start();
    origin.put_sample("/media/clip.mp4");
    origin.script("/media/clip.mp4", [Behaviour::Status(429, Some(1))]);

    let (job, output) = run_one_job(
        home.command(&[
            "--json",
            "--workflows",
            &dir,
            "ingest",
            &origin.url("/media/clip.mp4"),
        ]),
        0,
    );

    assert_eq!(job["status"], "succeeded", "{job}");
    let statuses: Vec<u16> = origin.log().iter().map(|served| served.status).collect();
    assert_eq!(statuses, [429, 200]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("delay_ms=1000"),
        "the retry waited the Retry-After:\n{stderr}"
    );
}

// Guards transient server errors: a 500 is retried inside the step and the job succeeds.
#[test]
fn http_500_is_retried_and_then_succeeds() {
    let home = Home::new();
    let dir = workflows(&home, FAST);
    let origin = ScriptedOrigin::start();
    origin.put_sample("/media/clip.mp4");
    origin.script("/media/clip.mp4", [Behaviour::Status(500, None)]);

    let job = ingest(&home, &dir, &origin.url("/media/clip.mp4"), 0);

    assert_eq!(job["status"], "succeeded", "{job}");
    let statuses: Vec<u16> = origin.log().iter().map(|served| served.status).collect();
    assert_eq!(statuses, [500, 200]);
    let show = home.show(&id_of(&job));
    assert_eq!(
        blake3_hex(&stored_video(&home, &show)),
        blake3_hex(sample_video())
    );
}

// Guards the read-idle timeout: a body that stops coming fails as `network_timeout`.
#[test]
fn a_stalled_body_is_a_network_timeout() {
    let home = Home::new();
    let dir = workflows(
        &home,
        "connect_timeout_s = 5, read_timeout_s = 1, attempts_max = 1",
    );
    let origin = ScriptedOrigin::start();
    origin.put_sample("/media/clip.mp4");
    origin.script("/media/clip.mp4", [Behaviour::Stall(CHUNK)]);

    let job = ingest(&home, &dir, &origin.url("/media/clip.mp4"), 1);

    assert_failed_with(&job, "network_timeout");
    let log = origin.log();
    assert_eq!(log.len(), 1, "{log:#?}");
    assert_eq!(log[0].sent, CHUNK, "{log:#?}");
}

// ---------------------------------------------------------------------------------------------
// The network guard.
// ---------------------------------------------------------------------------------------------

// Guards the default policy: a URL on 127.0.0.1 is refused as `forbidden_address` before any
// request is made.
#[test]
fn a_loopback_url_is_a_forbidden_address() {
    let home = Home::new();
    let dir = workflows(&home, FAST);
    let origin = ScriptedOrigin::start();
    origin.put("/media/clip.mp4", b"secret intranet video".to_vec());

    let job = ingest_guarded(&home, &dir, &origin.url("/media/clip.mp4"), &[]);

    assert_failed_with(&job, "forbidden_address");
    assert_eq!(origin.log(), [], "the origin saw no request");
}

// Guards every redirect hop: an allowed host redirecting to the cloud metadata address is refused.
#[test]
fn a_redirect_to_the_metadata_address_is_a_forbidden_address() {
    let home = Home::new();
    let dir = workflows(&home, FAST);
    let origin = ScriptedOrigin::start();
    origin.script(
        "/media/clip.mp4",
        [Behaviour::Redirect(
            "http://169.254.169.254/latest/meta-data/".into(),
        )],
    );

    let job = ingest_guarded(
        &home,
        &dir,
        &origin.url("/media/clip.mp4"),
        &[("NARRA_ALLOWED_HOSTS", "127.0.0.1")],
    );

    assert_failed_with(&job, "forbidden_address");
    let paths: Vec<String> = origin.log().into_iter().map(|served| served.path).collect();
    assert_eq!(paths, ["/media/clip.mp4"]);
}

// Guards resolution: a host name that resolves to loopback is refused even when the loopback
// address itself is an allowed host (the allow-list names hosts, not addresses).
#[test]
fn a_hostname_resolving_to_loopback_is_a_forbidden_address() {
    let home = Home::new();
    let dir = workflows(&home, FAST);
    let origin = ScriptedOrigin::start();
    origin.put("/x.mp4", b"secret intranet video".to_vec());

    let job = ingest_guarded(
        &home,
        &dir,
        &format!("http://localhost:{}/x.mp4", origin.port()),
        &[("NARRA_ALLOWED_HOSTS", "127.0.0.1")],
    );

    assert_failed_with(&job, "forbidden_address");
    assert_eq!(origin.log(), [], "the origin saw no request");
}

/// `command` run inside new network and mount namespaces where only `lo` is up and `hosts` is
/// bind-mounted over /etc/hosts: nothing it tries can leave the machine, and names resolve as the
/// test says without touching the machine's own /etc/hosts.
fn sealed(command: &Command, hosts: &Path) -> Command {
    let mut sealed = Command::new("unshare");
    sealed
        .args(["--net", "--mount", "sh", "-c"])
        .arg(r#"ip link set lo up && mount --bind "$0" /etc/hosts && exec "$@""#)
        .arg(hosts)
        .arg(command.get_program())
        .args(command.get_args());
    for (name, value) in command.get_envs() {
        match value {
            Some(value) => sealed.env(name, value),
            None => sealed.env_remove(name),
        };
    }
    sealed
}

// Guards against reaching cloud metadata: with private networks allowed, the cloud metadata
// addresses (an IPv4 and an IPv6 literal, and a name resolving to one) are still
// `forbidden_address`. It runs where nothing can leave the machine: without the rule each job fails
// as `network_error` (no route).
#[test]
fn metadata_addresses_are_refused_with_private_networks_allowed() {
    let home = Home::new();
    let dir = workflows(&home, FAST);
    let hosts = home.dir.path().join("hosts");
    std::fs::write(
        &hosts,
        "127.0.0.1 localhost\n169.254.169.254 metadata.test\n",
    )
    .expect("write the namespace's hosts file");
    let sources = [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://metadata.test/latest/meta-data/",
    ];
    let mut args = vec![
        "--json",
        "--allow-private-network",
        "--workflows",
        &dir,
        "ingest",
    ];
    args.extend(sources);
    let mut command = home.command(&args);
    command
        .env_remove("NARRA_ALLOWED_HOSTS")
        .env_remove("NARRA_PROXY");

    let output = sealed(&command, &hosts).output().expect("unshare runs");

    assert_eq!(
        output.status.code(),
        Some(1),
        "stderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let jobs: Value = serde_json::from_slice(&output.stdout).expect("a JSON list of jobs");
    let jobs = jobs.as_array().expect("a list of jobs");
    assert_eq!(jobs.len(), sources.len(), "{jobs:?}");
    for job in jobs {
        assert_failed_with(job, "forbidden_address");
    }
}

// Guards IP literals in other spellings: an IPv4-mapped IPv6 loopback literal is refused.
#[test]
fn an_ipv4_mapped_loopback_literal_is_a_forbidden_address() {
    let home = Home::new();
    let dir = workflows(&home, FAST);
    let origin = ScriptedOrigin::start();
    origin.put("/x.mp4", b"secret intranet video".to_vec());

    let job = ingest_guarded(
        &home,
        &dir,
        &format!("http://[::ffff:127.0.0.1]:{}/x.mp4", origin.port()),
        &[],
    );

    assert_failed_with(&job, "forbidden_address");
    assert_eq!(origin.log(), [], "the origin saw no request");
}

// Guards the redirect limit: five hops are followed, a sixth is refused as `http_error`.
#[test]
fn redirects_are_followed_up_to_the_limit() {
    let home = Home::new();
    let dir = workflows(&home, FAST);
    let origin = ScriptedOrigin::start();
    origin.put_sample("/media/clip.mp4");
    for (chain, hops) in [("long", 6), ("short", 5)] {
        for hop in 0..hops {
            let next = if hop + 1 == hops {
                "/media/clip.mp4".to_string()
            } else {
                format!("/{chain}/{}", hop + 1)
            };
            origin.script(&format!("/{chain}/{hop}"), [Behaviour::Redirect(next)]);
        }
    }

    let long = ingest(&home, &dir, &origin.url("/long/0"), 1);

    assert_failed_with(&long, "http_error");
    let paths: Vec<String> = origin.log().into_iter().map(|served| served.path).collect();
    assert_eq!(
        paths,
        [
            "/long/0", "/long/1", "/long/2", "/long/3", "/long/4", "/long/5"
        ],
        "six hops, the last refused"
    );

    let short = ingest(&home, &dir, &origin.url("/short/0"), 0);

    assert_eq!(short["status"], "succeeded", "{short}");
    assert_eq!(origin.log_of("/media/clip.mp4").len(), 1);
}

/// The proxy variables, upper and lower case, all pointing at `proxy`.
fn proxy_env(proxy: &str) -> Vec<(&'static str, String)> {
    [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ]
    .into_iter()
    .map(|name| (name, proxy.to_string()))
    .collect()
}

// Guards against proxies from the environment: with `HTTP_PROXY` and friends set, a forbidden host
// is still refused (no proxy resolves it for us), and an allowed one is fetched directly.
#[test]
fn proxies_from_the_environment_are_ignored() {
    let home = Home::new();
    let dir = workflows(
        &home,
        "connect_timeout_s = 5, read_timeout_s = 10, attempts_max = 1",
    );
    let origin = ScriptedOrigin::start();
    origin.put_sample("/media/clip.mp4");
    let trap = ProxyTrap::start();
    let proxies = proxy_env(&trap.url());

    let mut guarded = home.command(&[
        "--json",
        "--workflows",
        &dir,
        "ingest",
        &format!("http://localhost:{}/media/clip.mp4", origin.port()),
    ]);
    guarded
        .env_remove("NARRA_ALLOW_PRIVATE_NETWORK")
        .env_remove("NARRA_ALLOWED_HOSTS")
        .env_remove("NARRA_PROXY")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .envs(proxies.iter().map(|(name, value)| (*name, value.as_str())));
    let (refused, _) = run_one_job(guarded, 1);

    assert_failed_with(&refused, "forbidden_address");
    assert_eq!(trap.connections(), 0, "no connection to the proxy");
    assert_eq!(origin.log(), [], "the origin saw no request");

    let mut allowed = home.command(&[
        "--json",
        "--workflows",
        &dir,
        "ingest",
        &origin.url("/media/clip.mp4"),
    ]);
    allowed
        .env_remove("NARRA_PROXY")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .envs(proxies.iter().map(|(name, value)| (*name, value.as_str())));
    let (fetched, _) = run_one_job(allowed, 0);

    assert_eq!(fetched["status"], "succeeded", "{fetched}");
    assert_eq!(trap.connections(), 0, "no connection to the proxy");
    assert_eq!(origin.log_of("/media/clip.mp4").len(), 1);
}

// Guards against reaching loopback through a configured proxy: with `NARRA_PROXY` set, a name that
// resolves to loopback is still `forbidden_address`, checked before anything is sent to the proxy
// (which would resolve the name itself, past narra's resolver).
#[test]
fn a_name_resolving_to_loopback_is_refused_before_the_configured_proxy() {
    let home = Home::new();
    let dir = workflows(&home, FAST);
    let origin = ScriptedOrigin::start();
    origin.put_sample("/media/clip.mp4");
    let trap = ProxyTrap::start();

    let job = ingest_guarded(
        &home,
        &dir,
        &format!("http://localhost:{}/media/clip.mp4", origin.port()),
        &[("NARRA_PROXY", &trap.url())],
    );

    assert_failed_with(&job, "forbidden_address");
    assert_eq!(trap.connections(), 0, "nothing was sent to the proxy");
    assert_eq!(origin.log(), [], "the origin saw no request");
}

// ---------------------------------------------------------------------------------------------
// The size limit.
// ---------------------------------------------------------------------------------------------

// Guards `max_bytes` before the body: a Content-Length over the limit fails as `too_large` before
// a byte of the body is written.
#[test]
fn a_content_length_over_max_bytes_is_too_large_before_the_body() {
    let home = Home::new();
    let dir = workflows(&home, &format!("{FAST}, max_bytes = 1000"));
    let origin = ScriptedOrigin::start();
    origin.put_sample("/media/clip.mp4");

    let job = ingest(&home, &dir, &origin.url("/media/clip.mp4"), 1);

    assert_failed_with(&job, "too_large");
    let part = home
        .path()
        .join("scratch")
        .join(id_of(&job))
        .join("original.part");
    let written = std::fs::metadata(&part).map_or(0, |metadata| metadata.len());
    assert_eq!(written, 0, "no body byte written to {}", part.display());
    let scratch = files_under(&home.path().join("scratch"));
    assert!(scratch.iter().all(|(_, size)| *size <= 1000), "{scratch:?}");
}

// Guards `max_bytes` during the body: a chunked response (no length announced) over the limit
// fails as `too_large` without more than the limit on disk.
#[test]
fn a_chunked_body_over_max_bytes_is_too_large_without_more_than_the_limit_on_disk() {
    let home = Home::new();
    let dir = workflows(&home, &format!("{FAST}, max_bytes = 1000"));
    let origin = ScriptedOrigin::start();
    origin.put_sample("/media/clip.mp4");
    origin.script("/media/clip.mp4", [Behaviour::Chunked]);

    let job = ingest(&home, &dir, &origin.url("/media/clip.mp4"), 1);

    assert_failed_with(&job, "too_large");
    let log = origin.log();
    assert_eq!(log.len(), 1, "{log:#?}");
    let scratch = files_under(&home.path().join("scratch"));
    assert!(scratch.iter().all(|(_, size)| *size <= 1000), "{scratch:?}");
}

// ---------------------------------------------------------------------------------------------
// Secrets in URLs.
// ---------------------------------------------------------------------------------------------

// Guards signed URLs: the query's secrets fetch the video but appear in no log line, no `show`,
// `jobs` or `logs` output and not in the stored manifest; the rest of the query stays readable.
#[test]
fn a_signed_urls_secrets_appear_in_no_output() {
    const SECRETS: [&str; 2] = ["SECRETSIG123", "SECRETTOK456"];
    let home = Home::new();
    let dir = workflows(&home, FAST);
    let origin = ScriptedOrigin::start();
    origin.put_sample("/media/clip.mp4");
    let url =
        origin.url("/media/clip.mp4?X-Amz-Signature=SECRETSIG123&token=SECRETTOK456&quality=hd");

    let mut command = home.command(&["--json", "--workflows", &dir, "ingest", &url]);
    // Debug lines of narra and of the HTTP client too. (Not sled's: see
    // `a_download_logged_at_debug_level_finishes`.)
    command.env(
        "NARRA_LOG",
        "narra=debug,reqwest=debug,hyper=debug,hyper_util=debug",
    );
    let (job, output) = run_one_job(command, 0);

    assert_eq!(job["status"], "succeeded", "{job}");
    let id = id_of(&job);
    let text = |output: Output| {
        assert!(output.status.success(), "{output:?}");
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    };
    let outputs = [
        ("ingest", text(output)),
        ("show", text(home.narra(&["show", &id]))),
        ("show --json", text(home.narra(&["--json", "show", &id]))),
        ("jobs", text(home.narra(&["jobs"]))),
        ("jobs --json", text(home.narra(&["--json", "jobs"]))),
        ("logs", text(home.narra(&["logs", &id]))),
        ("logs --json", text(home.narra(&["--json", "logs", &id]))),
        (
            "manifest",
            std::fs::read_to_string(home.object(&format!("jobs/{id}/manifest.json")))
                .expect("read the manifest"),
        ),
    ];
    for (what, text) in &outputs {
        for secret in SECRETS {
            assert!(!text.contains(secret), "{secret} in {what}:\n{text}");
        }
    }
    let show = home.show(&id);
    let source = show["source"].as_str().expect("a source");
    assert!(source.contains("quality=hd"), "{source}");
    let requests = origin.log_of("/media/clip.mp4");
    assert_eq!(requests.len(), 1, "{requests:#?}");
}

/// A child process killed and reaped when dropped, so that a failing test leaves none behind.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// Guards the job log against re-entrance: with `NARRA_LOG=debug` every crate's debug lines reach
// the job log, sled's included (emitted while sled holds its own lock), and the job still finishes.
#[test]
fn a_download_logged_at_debug_level_finishes() {
    let home = Home::new();
    let dir = workflows(&home, FAST);
    let origin = ScriptedOrigin::start();
    origin.put_sample("/media/clip.mp4");
    let mut command = home.command(&[
        "--json",
        "--workflows",
        &dir,
        "ingest",
        &origin.url("/media/clip.mp4"),
    ]);
    command
        .env("NARRA_LOG", "debug")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = KillOnDrop(command.spawn().expect("narra starts"));

    let mut status = None;
    super::fixture::wait_until("narra ingest with NARRA_LOG=debug exits", || {
        status = child.0.try_wait().expect("query the child");
        status.is_some()
    });

    assert_eq!(status.and_then(|status| status.code()), Some(0));
    let jobs = home.json(&["jobs"], 0);
    assert_eq!(jobs[0]["status"], "succeeded", "{jobs}");
}

// ---------------------------------------------------------------------------------------------
// Platform pages through yt-dlp.
// ---------------------------------------------------------------------------------------------

/// Asserts that yt-dlp runs, with the way to install it when it does not.
fn require_yt_dlp() {
    let output = Command::new("yt-dlp").arg("--version").output();
    assert!(
        output.as_ref().is_ok_and(|output| output.status.success()),
        "yt-dlp runs (install it: pip install yt-dlp, as .ci/setup does): {output:?}"
    );
}

/// Download parameters that send 127.0.0.1 through yt-dlp.
fn platform_params() -> String {
    format!("{FAST}, platform_hosts = [\"127.0.0.1\"]")
}

// Guards platform pages: a page on a platform host goes through yt-dlp (here its generic extractor
// on a loopback page with a `<video>` tag); the stored video is the clip and yt-dlp's description
// is stored as `platform_metadata`.
#[test]
fn a_platform_page_is_downloaded_with_yt_dlp() {
    require_yt_dlp();
    let home = Home::new();
    let dir = workflows(&home, &platform_params());
    let origin = ScriptedOrigin::start();
    origin.put_sample("/media/clip.mp4");
    put_text(
        &origin,
        "/watch/page.html",
        "text/html; charset=utf-8",
        "<html><body><video src=\"/media/clip.mp4\"></video></body></html>",
    );

    let job = ingest(&home, &dir, &origin.url("/watch/page.html"), 0);

    assert_eq!(job["status"], "succeeded", "{job}");
    let show = home.show(&id_of(&job));
    assert_eq!(
        blake3_hex(&stored_video(&home, &show)),
        blake3_hex(sample_video())
    );
    let description = home.object(
        artifact(&show, "platform_metadata")["key"]
            .as_str()
            .expect("a key"),
    );
    let description: Value =
        serde_json::from_slice(&std::fs::read(&description).expect("read the platform metadata"))
            .expect("the platform metadata is JSON");
    assert!(
        description.get("extractor").is_some(),
        "yt-dlp's description: {description}"
    );
    assert!(
        !origin.log_of("/media/clip.mp4").is_empty(),
        "yt-dlp fetched the clip"
    );
}

/// Serves `text` at `path` as `content_type` (a platform page, a playlist).
fn put_text(origin: &ScriptedOrigin, path: &str, content_type: &str, text: &str) {
    let bytes = text.as_bytes().to_vec();
    origin.put_resource(
        path,
        Resource {
            etag: etag_of(&bytes),
            content: Content::Bytes(Arc::new(bytes)),
            content_type: content_type.into(),
            chunk: CHUNK,
        },
    );
}

/// Serves a platform page at `/watch/page.html` whose video is the HLS playlist `/hls/index.m3u8`
/// of one segment at `segment`, with `key_line` (an `#EXT-X-KEY` line, or nothing) before it.
fn put_hls_page(platform: &ScriptedOrigin, key_line: &str, segment: &str) {
    put_text(
        platform,
        "/watch/page.html",
        "text/html; charset=utf-8",
        "<html><body><video src=\"/hls/index.m3u8\"></video></body></html>",
    );
    put_text(
        platform,
        "/hls/index.m3u8",
        "application/vnd.apple.mpegurl",
        &format!(
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n\
             {key_line}#EXTINF:2.0,\n{segment}\n#EXT-X-ENDLIST\n"
        ),
    );
}

/// `ingest` of a platform page on `localhost:port` through yt-dlp, with only `localhost` allowed
/// (by name): loopback addresses reached under any other name are refused.
fn ingest_platform_on_localhost(home: &Home, port: u16, path: &str) -> Value {
    let dir = workflows(home, &format!("{FAST}, platform_hosts = [\"localhost\"]"));
    ingest_guarded(
        home,
        &dir,
        &format!("http://localhost:{port}{path}"),
        &[("NARRA_ALLOWED_HOSTS", "localhost")],
    )
}

// Guards against reaching an internal address through a redirect: a platform page on an allowed
// host whose media URL redirects to another loopback origin, by address. yt-dlp follows the
// redirect itself; every hop goes through narra's egress proxy, which refuses the internal one:
// `forbidden_address`, and the internal origin never sees a request.
#[test]
fn a_platform_media_redirect_to_an_internal_address_is_a_forbidden_address() {
    require_yt_dlp();
    let home = Home::new();
    let platform = ScriptedOrigin::start();
    let internal = ScriptedOrigin::start();
    internal.put_sample("/secret.mp4");
    put_text(
        &platform,
        "/watch/page.html",
        "text/html; charset=utf-8",
        "<html><body><video src=\"/media/clip.mp4\"></video></body></html>",
    );
    platform.script(
        "/media/clip.mp4",
        vec![Behaviour::Redirect(internal.url("/secret.mp4")); 20],
    );

    let job = ingest_platform_on_localhost(&home, platform.port(), "/watch/page.html");

    assert_failed_with(&job, "forbidden_address");
    assert_eq!(internal.log(), [], "the internal origin saw no request");
    assert!(
        !platform.log_of("/media/clip.mp4").is_empty(),
        "the allowed host was reached"
    );
}

// Guards against reaching an internal address through HLS segments: a platform page whose video is
// an HLS playlist on the allowed host with its segment on another loopback origin, by address.
// yt-dlp's own HLS downloader fetches the segment through the egress proxy; a SAMPLE-AES playlist,
// which yt-dlp hands to ffmpeg, is fetched by ffmpeg through the proxy too. Each time the proxy
// refuses the segment: `forbidden_address`, and the internal origin never sees a request.
#[test]
fn hls_segments_on_an_internal_address_are_a_forbidden_address() {
    require_yt_dlp();
    let home = Home::new();
    for key_line in ["", "#EXT-X-KEY:METHOD=SAMPLE-AES,URI=\"/hls/key\"\n"] {
        let platform = ScriptedOrigin::start();
        let internal = ScriptedOrigin::start();
        internal.put_sample("/segment0.ts");
        put_hls_page(&platform, key_line, &internal.url("/segment0.ts"));

        let job = ingest_platform_on_localhost(&home, platform.port(), "/watch/page.html");

        assert_failed_with(&job, "forbidden_address");
        assert_eq!(
            internal.log(),
            [],
            "{key_line}: the internal origin saw no request"
        );
        assert!(
            !platform.log_of("/hls/index.m3u8").is_empty(),
            "the playlist on the allowed host was read"
        );
    }
}

/// `(pid, parent pid, process group)` of every process.
fn processes() -> Vec<(u32, u32, u32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // After the parenthesised command name: state, parent pid, process group.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if let (Some(ppid), Some(pgrp)) = (fields.get(1), fields.get(2))
            && let (Ok(ppid), Ok(pgrp)) = (ppid.parse(), pgrp.parse())
        {
            found.push((pid, ppid, pgrp));
        }
    }
    found
}

/// `(pid, process group)` of every descendant of `root`.
fn descendants(root: u32) -> Vec<(u32, u32)> {
    let all = processes();
    let mut found: Vec<(u32, u32)> = Vec::new();
    let mut parents = vec![root];
    while let Some(parent) = parents.pop() {
        for &(pid, ppid, pgrp) in &all {
            if ppid == parent {
                found.push((pid, pgrp));
                parents.push(pid);
            }
        }
    }
    found
}

/// Whether `pid` is gone or a zombie.
fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

// Guards against processes a timed-out yt-dlp leaves behind: yt-dlp hands an HLS playlist it cannot
// read itself (SAMPLE-AES) to ffmpeg, whose request stalls; the step's timeout ends the job. yt-dlp
// must lead a process group of its own with ffmpeg in it (not narra's group: a kill of yt-dlp alone
// left ffmpeg behind), and once narra has given up on the job neither yt-dlp nor ffmpeg is left
// running.
#[test]
fn a_timed_out_yt_dlp_leaves_no_process_behind() {
    require_yt_dlp();
    let home = Home::new();
    let dir = workflows(
        &home,
        "connect_timeout_s = 5, read_timeout_s = 600, total_timeout_s = 20, platform_hosts = [\"127.0.0.1\"]",
    );
    let platform = ScriptedOrigin::start();
    let stalling = StallingOrigin::start(vec![0u8; 64 * 1024]);
    // SAMPLE-AES is a feature yt-dlp's own HLS downloader lacks: it hands the playlist to ffmpeg.
    put_hls_page(
        &platform,
        &format!("#EXT-X-KEY:METHOD=SAMPLE-AES,URI=\"{}\"\n", stalling.url),
        &stalling.url,
    );
    let output = home.dir.path().join("ingest.json");
    let mut command = home.command(&[
        "--json",
        "--workflows",
        &dir,
        "ingest",
        &platform.url("/watch/page.html"),
    ]);
    command.stdout(std::fs::File::create(&output).expect("create the output file"));
    // Killed if the test fails before it exits.
    let narra = ChildGuard::from_child(command.spawn().expect("narra starts"));

    stalling.wait_for_stall();
    let narra_pid = narra.id();
    let narra_group = processes()
        .into_iter()
        .find(|&(pid, _, _)| pid == narra_pid)
        .map(|(_, _, pgrp)| pgrp)
        .expect("narra runs");
    let mut tree = Vec::new();
    wait_until("yt-dlp's ffmpeg runs", || {
        tree = descendants(narra_pid);
        tree.len() >= 2
    });
    for &(pid, pgrp) in &tree {
        assert_ne!(
            pgrp, narra_group,
            "process {pid} is in narra's group: {tree:?}"
        );
    }
    // yt-dlp's command line, which any local user can read, does not carry the proxy's credential.
    let yt_dlp = tree[0].0;
    let command_line = std::fs::read(format!("/proc/{yt_dlp}/cmdline")).unwrap_or_default();
    assert!(
        !String::from_utf8_lossy(&command_line).contains("narra:"),
        "{}",
        String::from_utf8_lossy(&command_line)
    );
    let groups: std::collections::HashSet<u32> = tree.iter().map(|&(_, pgrp)| pgrp).collect();
    assert_eq!(
        groups.len(),
        1,
        "yt-dlp and ffmpeg share one group: {tree:?}"
    );

    let status = narra.wait();
    assert_eq!(status.code(), Some(1));
    let jobs: Value = serde_json::from_slice(&std::fs::read(&output).expect("read the output"))
        .expect("a JSON list of jobs");
    assert_failed_with(&jobs[0], "network_timeout");
    wait_until("yt-dlp and ffmpeg are gone", || {
        tree.iter().all(|&(pid, _)| dead(pid))
    });
}

// Guards yt-dlp's failures: a platform page that is not there fails as `not_found`.
#[test]
fn a_missing_platform_page_is_not_found() {
    require_yt_dlp();
    let home = Home::new();
    let dir = workflows(&home, &platform_params());
    let origin = ScriptedOrigin::start();

    let job = ingest(&home, &dir, &origin.url("/watch/missing.html"), 1);

    assert_failed_with(&job, "not_found");
}

// ---------------------------------------------------------------------------------------------
// Memory.
// ---------------------------------------------------------------------------------------------

/// Serves `mib` MiB of generated bytes at a fresh path and ingests them with
/// `NARRA_REPORT_PEAK_RSS=1`: narra's peak RSS in KiB. The job fails at extract (the bytes are not
/// media) after its download is checkpointed whole.
fn download_peak_rss_kib(mib: u64) -> u64 {
    let home = Home::new();
    let dir = workflows(&home, FAST);
    let origin = ScriptedOrigin::start();
    let content = Content::generated(mib * 1024 * 1024, mib);
    let path = format!("/generated/{mib}.bin");
    origin.put_resource(
        &path,
        Resource {
            content: content.clone(),
            etag: format!("\"generated-{mib}\""),
            content_type: "application/octet-stream".into(),
            chunk: GENERATED_CHUNK,
        },
    );

    let mut command = home.command(&["--json", "--workflows", &dir, "ingest", &origin.url(&path)]);
    command.env("NARRA_REPORT_PEAK_RSS", "1");
    let (job, output) = run_one_job(command, 1);

    assert_eq!(job["status"], "failed", "{job}");
    let show = home.show(&id_of(&job));
    let video = super::fixture::step_output(&show, "download", "video");
    assert_eq!(video["size"], content.len(), "the download completed");
    assert_eq!(video["blake3"], content.blake3_hex().as_str());
    let stderr = String::from_utf8_lossy(&output.stderr);
    stderr
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("narra: peak_rss_kib="))
        .unwrap_or_else(|| panic!("narra reports its peak RSS:\n{stderr}"))
        .trim()
        .parse()
        .expect("a number of KiB")
}

// Guards streaming: downloading ten times more bytes does not grow narra's peak resident memory
// with the size (bytes go to disk chunk by chunk).
#[test]
fn memory_stays_flat_as_the_download_grows() {
    let large_mib: u64 = std::env::var("NARRA_TEST_LARGE_MIB")
        .ok()
        .map(|text| {
            text.parse()
                .expect("NARRA_TEST_LARGE_MIB is a number of MiB")
        })
        .unwrap_or(160);
    let small = download_peak_rss_kib(16);
    let large = download_peak_rss_kib(large_mib);
    assert!(
        large < small + 48 * 1024,
        "peak RSS {large} KiB for {large_mib} MiB vs {small} KiB for 16 MiB"
    );
}
