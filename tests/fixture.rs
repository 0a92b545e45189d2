//! Shared test fixtures: a temporary narra home, the real `narra` binary, a loopback HTTP origin
//! with a request log, and media generated with ffmpeg's test sources.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

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
        let mut command = Command::new(env!("CARGO_BIN_EXE_narra"));
        command
            .arg("--home")
            .arg(self.path())
            .args(args)
            .env_remove("NARRA_HOME")
            .env_remove("NARRA_STORAGE")
            .env_remove("NARRA_WORKFLOWS")
            .env("NARRA_LOG", "info");
        for (key, value) in env {
            command.env(key, value);
        }
        command.output().expect("narra runs")
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

    /// Makes `path` answer with `status` and no body.
    pub fn fail_with(&self, path: &str, status: u16) {
        self.state
            .statuses
            .lock()
            .unwrap()
            .insert(path.trim_start_matches('/').to_string(), status);
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
    match file {
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

fn generate(name: &str, seconds: f64, frequency: u32) -> PathBuf {
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

/// The kinds of a job's events, in order.
pub fn event_kinds(show: &Value) -> Vec<String> {
    show["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["kind"].as_str().unwrap().to_string())
        .collect()
}

/// `(kind, step)` of the step events of a job, in order.
pub fn step_events(show: &Value) -> Vec<(String, String)> {
    show["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|event| {
            event["step"].as_str().map(|step| {
                (
                    event["kind"].as_str().unwrap().to_string(),
                    step.to_string(),
                )
            })
        })
        .collect()
}
