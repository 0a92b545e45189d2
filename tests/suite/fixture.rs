//! Shared test fixtures: a temporary narra home, the real `narra` binary, a loopback HTTP origin
//! with a request log, and media generated with ffmpeg's test sources; plus readers of `show --json`
//! (artifacts, checkpoints, step events, the status/phase replay) and file-level helpers (hashes,
//! tampering, snapshots of inode, size and mtime).

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// What tells one file from another: inode and change time (a new file may get the inode number of
/// a removed one).
pub type FileId = (u64, i64, i64);

/// A temporary narra home and helpers to run the real binary against it.
pub struct Home {
    pub dir: tempfile::TempDir,
}

impl Home {
    pub fn new() -> Home {
        Home {
            dir: tempfile::tempdir().expect("a temp dir"),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn objects(&self) -> PathBuf {
        self.path().join("objects")
    }

    /// Runs `narra --home <home> ARGS`, returning its output.
    pub fn narra(&self, args: &[&str]) -> Output {
        self.narra_env(args, &[])
    }

    pub fn narra_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut command = self.command(args);
        command.envs(env.iter().copied());
        command.output().expect("narra runs")
    }

    /// The command `narra_env` runs (`narra --home <home> ARGS` in the tests' environment, private
    /// networks allowed), for tests that change that environment further: the network guard's tests
    /// remove `NARRA_ALLOW_PRIVATE_NETWORK`, others add variables.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_narra"));
        command
            .arg("--home")
            .arg(self.path())
            .args(args)
            .env_remove("NARRA_HOME")
            .env_remove("NARRA_STORAGE")
            .env_remove("NARRA_STATE")
            .env_remove("NARRA_WORKFLOWS")
            .env("NARRA_LOG", "info")
            .env("NARRA_ALLOW_PRIVATE_NETWORK", "1")
            .env("NARRA_WEBHOOK_ALLOW_PRIVATE_NETWORK", "1")
            // Automatic retries come after a fraction of a second, not half a minute.
            .env("NARRA_RETRY_DELAY_MS", "200")
            // And an open circuit breaker (a refusing host, storage down) tests again as soon.
            .env("NARRA_BREAKER_COOLDOWN_MS", "300");
        command
    }

    /// Runs narra with `--json` and parses stdout, asserting the exit code.
    pub fn json(&self, args: &[&str], expected_code: i32) -> Value {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let output = self.narra(&full);
        assert_eq!(
            output.status.code(),
            Some(expected_code),
            "narra {args:?} exited {:?}\nstdout:\n{}\nstderr:\n{}",
            output.status.code(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
            panic!(
                "stdout of narra {args:?} is not JSON ({error}):\n{}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }

    /// `show --json ID`.
    pub fn show(&self, id: &str) -> Value {
        self.json(&["show", id], 0)
    }

    /// `--json ARGS` for a command that prints one job (`ingest` or `retry` of one source or id),
    /// asserting the exit code: that job's `{id, source, status, ingestion_phase, error}`.
    pub fn one_job(&self, args: &[&str], expected_code: i32) -> Value {
        let list = self.json(args, expected_code);
        let jobs = list.as_array().expect("a list of jobs");
        assert_eq!(jobs.len(), 1, "narra {args:?} printed one job: {list}");
        jobs[0].clone()
    }

    /// Starts `narra --home <home> ARGS` as a child process, killed if the test ends before it.
    pub fn spawn(&self, args: &[&str]) -> ChildGuard {
        let child = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("narra starts");
        ChildGuard { child: Some(child) }
    }

    /// The file behind an object key in the default `fs://<home>/objects` storage.
    pub fn object(&self, key: &str) -> PathBuf {
        self.objects().join(key)
    }

    pub fn lock_file(&self) -> PathBuf {
        self.path().join("narra.lock")
    }

    /// The socket on which the process holding the home serves other processes' commands.
    pub fn socket(&self) -> PathBuf {
        self.path().join("narra.sock")
    }

    /// The socket file's identity, if there is one.
    pub fn socket_id(&self) -> Option<FileId> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(self.socket())
            .ok()
            .map(|metadata| (metadata.ino(), metadata.ctime(), metadata.ctime_nsec()))
    }

    /// Starts `narra ARGS` and waits until it holds the home and serves other processes: see
    /// [`Home::wait_for_holder`].
    pub fn spawn_holder(&self, args: &[&str]) -> ChildGuard {
        let mut holder = self.spawn(args);
        self.wait_for_holder(&mut holder, None);
        holder
    }

    /// Waits until `holder` holds the home (the lock file names its pid) and listens on a socket
    /// other than `stale` (one a dead process left behind). Until then, another narra started on
    /// the home may take it first, or find it held and nobody to serve it.
    pub fn wait_for_holder(&self, holder: &mut ChildGuard, stale: Option<FileId>) {
        wait_until("the holder listens on its socket", || {
            if let Some(status) = holder.has_exited() {
                panic!("the holder exited early: {status}");
            }
            self.held_by(holder, stale)
        });
    }

    /// Whether `holder` holds the home (the lock file names its pid) and listens on a socket
    /// other than `stale`.
    pub fn held_by(&self, holder: &ChildGuard, stale: Option<FileId>) -> bool {
        let pid = holder.id().to_string();
        let locked = std::fs::read_to_string(self.lock_file()).is_ok_and(|text| text.trim() == pid);
        locked && self.socket_id().is_some_and(|id| Some(id) != stale)
    }

    /// Makes every blob write fail with a local storage error: a regular file where the `blobs`
    /// directory must go.
    pub fn block_storage(&self) {
        std::fs::create_dir_all(self.objects()).expect("create the objects directory");
        std::fs::write(self.objects().join("blobs"), b"not a directory")
            .expect("write the blocker");
    }

    pub fn unblock_storage(&self) {
        std::fs::remove_file(self.objects().join("blobs")).expect("remove the blocker");
    }
}

/// A child process that is killed and reaped when dropped, so a failing test leaves no process.
pub struct ChildGuard {
    child: Option<Child>,
}

impl ChildGuard {
    pub fn id(&self) -> u32 {
        self.child.as_ref().expect("a running child").id()
    }

    /// Whether the child has exited, without waiting.
    pub fn has_exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .expect("a running child")
            .try_wait()
            .expect("query the child")
    }

    /// Sends SIGINT (what Ctrl-C sends) and waits for the child to exit.
    pub fn interrupt_and_wait(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("a running child");
        let status = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -INT {}", child.id());
        child.wait().expect("wait for the child")
    }
}

impl ChildGuard {
    /// Guards a child started elsewhere (a test server).
    pub fn from_child(child: Child) -> ChildGuard {
        ChildGuard { child: Some(child) }
    }

    /// Waits for the child to exit on its own.
    pub fn wait(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("a running child");
        child.wait().expect("wait for the child")
    }

    /// SIGKILL, as a crash would, and reap it.
    pub fn kill(&mut self) {
        let child = self.child.as_mut().expect("a running child");
        child.kill().expect("kill the child");
        child.wait().expect("reap the child");
        self.child = None;
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `condition` until it holds, failing the test after a generous deadline. The deadline only
/// bounds a hang; nothing is asserted about how long the wait took.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One request the origin saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
}

#[derive(Clone, Default)]
struct OriginState {
    files: Arc<Mutex<std::collections::HashMap<String, Arc<Vec<u8>>>>>,
    log: Arc<Mutex<Vec<Request>>>,
    statuses: Arc<Mutex<std::collections::HashMap<String, u16>>>,
    /// Paths served without a Content-Length (chunked): a source that announces no size.
    unannounced: Arc<Mutex<std::collections::HashSet<String>>>,
}

/// A loopback HTTP origin serving files from memory, with a log of every request.
pub struct Origin {
    pub addr: SocketAddr,
    state: OriginState,
    _runtime: tokio::runtime::Runtime,
}

impl Origin {
    pub fn start() -> Origin {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let state = OriginState::default();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind loopback");
        let addr = listener.local_addr().expect("an address");
        let app = axum::Router::new()
            .route("/{*path}", axum::routing::get(serve))
            .with_state(state.clone());
        runtime.spawn(async move {
            axum::serve(listener, app).await.expect("the origin serves");
        });
        Origin {
            addr,
            state,
            _runtime: runtime,
        }
    }

    pub fn put(&self, path: &str, bytes: Vec<u8>) {
        self.state
            .files
            .lock()
            .unwrap()
            .insert(path.trim_start_matches('/').to_string(), Arc::new(bytes));
    }

    /// Serves the bytes of the file `video` at `path`: the URL to fetch it from.
    pub fn serve_video(&self, path: &str, video: &Path) -> String {
        self.put(path, std::fs::read(video).expect("read the video"));
        self.url(path)
    }

    /// Serves `path` without announcing its size (chunked transfer encoding).
    pub fn unannounce(&self, path: &str) {
        self.state
            .unannounced
            .lock()
            .unwrap()
            .insert(path.trim_start_matches('/').to_string());
    }

    /// Makes `path` answer with `status` and no body.
    pub fn fail_with(&self, path: &str, status: u16) {
        self.state
            .statuses
            .lock()
            .unwrap()
            .insert(path.trim_start_matches('/').to_string(), status);
    }

    /// Undoes `fail_with`: `path` is served again.
    pub fn heal(&self, path: &str) {
        self.state
            .statuses
            .lock()
            .unwrap()
            .remove(path.trim_start_matches('/'));
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// How many GET requests asked for `path`.
    pub fn gets(&self, path: &str) -> usize {
        let path = format!("/{}", path.trim_start_matches('/'));
        self.state
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|request| request.method == "GET" && request.path == path)
            .count()
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.log.lock().unwrap().clone()
    }
}

async fn serve(
    State(state): State<OriginState>,
    UrlPath(path): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    state.log.lock().unwrap().push(Request {
        method: "GET".into(),
        path: format!("/{path}"),
        range: headers
            .get("range")
            .and_then(|value| value.to_str().ok())
            .map(str::to_string),
    });
    if let Some(status) = state.statuses.lock().unwrap().get(&path) {
        return StatusCode::from_u16(*status).unwrap().into_response();
    }
    let file = state.files.lock().unwrap().get(&path).cloned();
    let unannounced = state.unannounced.lock().unwrap().contains(&path);
    match file {
        Some(bytes) if unannounced => {
            let body = axum::body::Body::from_stream(futures::stream::once(async move {
                Ok::<_, std::io::Error>(bytes.as_ref().clone())
            }));
            (StatusCode::OK, body).into_response()
        }
        Some(bytes) => (StatusCode::OK, bytes.as_ref().clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// A small H.264 + AAC MP4 made with ffmpeg's test sources, generated once per test run.
pub fn sample_video() -> &'static Path {
    static VIDEO: OnceLock<PathBuf> = OnceLock::new();
    VIDEO.get_or_init(|| generate("sample.mp4", 2.0, 440))
}

/// Another video with different bytes (different tone and length).
pub fn other_video() -> &'static Path {
    static VIDEO: OnceLock<PathBuf> = OnceLock::new();
    VIDEO.get_or_init(|| generate("other.mp4", 1.5, 880))
}

fn media_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temp dir"))
        .path()
}

/// Generates `name` in the shared media directory: `seconds` of test pattern and a sine tone at
/// `frequency` Hz (H.264 + AAC in MP4). Each call runs ffmpeg.
pub fn generate(name: &str, seconds: f64, frequency: u32) -> PathBuf {
    let path = media_dir().join(name);
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i", "testsrc=size=160x120:rate=15"])
        .args([
            "-f",
            "lavfi",
            "-i",
            &format!("sine=frequency={frequency}:sample_rate=44100"),
        ])
        .args(["-t", &seconds.to_string()])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ])
        .args(["-c:a", "aac", "-b:a", "64k", "-shortest"])
        .arg(&path)
        .status()
        .expect("ffmpeg runs (install it: apt-get install ffmpeg)");
    assert!(status.success(), "ffmpeg generated {name}");
    path
}

/// Runs ffmpeg quietly with `args` into `output`, asserting success.
pub fn ffmpeg(args: &[&str], output: &Path) {
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .arg(output)
        .status()
        .expect("ffmpeg runs");
    assert!(status.success(), "ffmpeg {args:?} {}", output.display());
}

/// ffmpeg's test pattern as an input (before `-i`'s options end).
pub const TEST_VIDEO: [&str; 4] = ["-f", "lavfi", "-i", "testsrc=size=160x120:rate=15"];

/// H.264 as fast as it encodes, in the pixel format every player reads.
pub const X264: [&str; 6] = [
    "-c:v",
    "libx264",
    "-preset",
    "ultrafast",
    "-pix_fmt",
    "yuv420p",
];

/// ffprobe's JSON for a file.
pub fn ffprobe(path: &Path) -> Value {
    let output = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-print_format",
            "json",
            "-show_format",
            "-show_streams",
        ])
        .arg(path)
        .output()
        .expect("ffprobe runs");
    assert!(output.status.success(), "ffprobe reads {}", path.display());
    serde_json::from_slice(&output.stdout).expect("ffprobe JSON")
}

/// The duration of the first stream of `codec_type` in a file, in seconds.
pub fn stream_duration(probe: &Value, codec_type: &str) -> f64 {
    probe["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|stream| stream["codec_type"] == codec_type)
        .and_then(|stream| stream["duration"].as_str())
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| panic!("a {codec_type} stream with a duration in {probe}"))
}

/// The blake3 of a file's bytes, in hex.
pub fn blake3_hex(path: &Path) -> String {
    let bytes =
        std::fs::read(path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()));
    blake3::hash(&bytes).to_hex().to_string()
}

/// Overwrites a file with different bytes of the same length (every byte inverted), so that only
/// a content hash, not a size check, can tell.
pub fn invert_bytes(path: &Path) {
    let bytes =
        std::fs::read(path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()));
    let inverted: Vec<u8> = bytes.iter().map(|byte| !byte).collect();
    std::fs::write(path, inverted)
        .unwrap_or_else(|error| panic!("write {}: {error}", path.display()));
}

/// What identifies a file's stored version without reading it: inode, size and mtime (ns).
pub type FileIdentity = (u64, u64, i128);

/// Every regular file under `dir`, with its identity: two equal snapshots mean nothing was written.
pub fn file_snapshot(dir: &Path) -> BTreeMap<PathBuf, FileIdentity> {
    use std::os::unix::fs::MetadataExt;
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).expect("read a directory") {
            let entry = entry.expect("a directory entry");
            let metadata = entry.metadata().expect("stat an entry");
            if metadata.is_dir() {
                pending.push(entry.path());
            } else {
                let mtime_ns = i128::from(metadata.mtime()) * 1_000_000_000
                    + i128::from(metadata.mtime_nsec());
                files.insert(entry.path(), (metadata.ino(), metadata.len(), mtime_ns));
            }
        }
    }
    files
}

/// A job's id from a job summary or a `show`.
pub fn id_of(job: &Value) -> String {
    job["id"].as_str().expect("a job id").to_string()
}

/// The artifact of `kind` (video, audio, metadata) in a `show`.
pub fn artifact<'a>(show: &'a Value, kind: &str) -> &'a Value {
    show["artifacts"]
        .as_array()
        .expect("an artifacts list")
        .iter()
        .find(|artifact| artifact["kind"] == kind)
        .unwrap_or_else(|| panic!("a {kind} artifact in {}", show["artifacts"]))
}

/// The checkpoint of `step` in a `show`.
pub fn checkpoint<'a>(show: &'a Value, step: &str) -> &'a Value {
    show["checkpoints"]
        .as_array()
        .expect("a checkpoints list")
        .iter()
        .find(|checkpoint| checkpoint["step"] == step)
        .unwrap_or_else(|| panic!("a {step} checkpoint in {}", show["checkpoints"]))
}

/// Output `name` of the checkpoint of `step` in a `show`.
pub fn step_output<'a>(show: &'a Value, step: &str, name: &str) -> &'a Value {
    checkpoint(show, step)["outputs"]
        .as_array()
        .expect("an outputs list")
        .iter()
        .find(|output| output["name"] == name)
        .unwrap_or_else(|| panic!("output {name} of step {step}"))
}

/// The local file of a step output recorded in scratch (`scratch:<path>`).
pub fn scratch_output(show: &Value, step: &str, name: &str) -> PathBuf {
    let location = step_output(show, step, name)["location"]
        .as_str()
        .expect("a location");
    PathBuf::from(
        location
            .strip_prefix("scratch:")
            .unwrap_or_else(|| panic!("{name} of {step} is in scratch, not {location}")),
    )
}

/// The sequence number of a job's last event: later events belong to a later run.
pub fn last_seq(show: &Value) -> u64 {
    show["events"]
        .as_array()
        .expect("an events list")
        .iter()
        .map(|event| event["seq"].as_u64().expect("an event seq"))
        .max()
        .expect("at least one event")
}

/// `(kind, step)` of the step events (started, completed, skipped, failed) recorded after event
/// `seq`, in order. The audit trail's `step_redone` and `objects_written` are left out.
pub fn step_events_after(show: &Value, seq: u64) -> Vec<(String, String)> {
    const STEP_EVENTS: [&str; 4] = [
        "step_started",
        "step_completed",
        "step_skipped",
        "step_failed",
    ];
    show["events"]
        .as_array()
        .expect("an events list")
        .iter()
        .filter(|event| event["seq"].as_u64().expect("an event seq") > seq)
        .filter(|event| STEP_EVENTS.iter().any(|kind| event["kind"] == *kind))
        .filter_map(|event| {
            event["step"].as_str().map(|step| {
                (
                    event["kind"].as_str().expect("an event kind").to_string(),
                    step.to_string(),
                )
            })
        })
        .collect()
}

/// Step events written as `(kind, step)` pairs, for comparing with `step_events_after`.
pub fn steps(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(kind, step)| (kind.to_string(), step.to_string()))
        .collect()
}

/// `(status, ingestion_phase)` of a job.
pub type JobState = (Option<String>, Option<String>);

/// The job's `(status, ingestion_phase)` rebuilt from its events alone: the state after each
/// `status_changed` or `phase_changed` event, in order.
pub fn replayed_states(show: &Value) -> Vec<JobState> {
    let mut state: JobState = (None, None);
    let mut states = Vec::new();
    for event in show["events"].as_array().expect("an events list") {
        let to = event["to"].as_str().map(str::to_string);
        match event["kind"].as_str() {
            Some("status_changed") => state.0 = to,
            Some("phase_changed") => state.1 = to,
            _ => continue,
        }
        states.push(state.clone());
    }
    states
}

/// A `(status, phase)` pair as written in the runbook's table.
pub fn state(status: &str, phase: Option<&str>) -> JobState {
    (Some(status.to_string()), phase.map(str::to_string))
}

/// A loopback origin for one file that, while `stalling`, answers with the headers and the first
/// bytes, reports that on `stalled`, and then holds the connection open sending nothing; once
/// `stalling` is cleared it serves the whole file.
pub struct StallingOrigin {
    pub url: String,
    stalling: Arc<std::sync::atomic::AtomicBool>,
    stalled: std::sync::mpsc::Receiver<()>,
}

impl StallingOrigin {
    pub fn start(body: Vec<u8>) -> StallingOrigin {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let url = format!("http://{}/stall.mp4", listener.local_addr().unwrap());
        let stalling = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (sender, stalled) = std::sync::mpsc::channel();
        let serving = stalling.clone();
        std::thread::spawn(move || {
            // Stalled connections are kept here, open, for as long as the test runs.
            let mut held: Vec<std::net::TcpStream> = Vec::new();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut request = Vec::new();
                let mut buffer = [0u8; 1024];
                while !request.windows(4).any(|window| window == b"\r\n\r\n") {
                    match stream.read(&mut buffer) {
                        Ok(0) | Err(_) => break,
                        Ok(read) => request.extend_from_slice(&buffer[..read]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                if serving.load(std::sync::atomic::Ordering::SeqCst) {
                    let _ = stream.write_all(&body[..1000]);
                    let _ = stream.flush();
                    let _ = sender.send(());
                    held.push(stream);
                } else {
                    let _ = stream.write_all(&body);
                }
            }
        });
        StallingOrigin {
            url,
            stalling,
            stalled,
        }
    }

    pub fn wait_for_stall(&self) {
        self.stalled
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the download reached the origin");
    }

    pub fn fix(&self) {
        self.stalling
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Sends the signal `name` (`TERM`, `INT`, `KILL`) to process `pid`.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name} {pid}");
}
