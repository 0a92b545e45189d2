//! One job end to end: narra against the shell script a user would write instead, on the same
//! input, alternately, in the same run.
//!
//! Run with `cargo bench --bench e2e`. Prints figures and ratios; asserts nothing about time.
//!
//! - Media: an MP4 of a noisy test pattern (MPEG-4 part 2) and a sine tone (AAC) of the asked size,
//!   generated once with ffmpeg into `target/bench-media/` and kept (delete it to regenerate).
//! - The origin: axum (a dev-dependency) streaming the file from disk with its length, on
//!   loopback, on a one-thread runtime of its own inside this process.
//! - The shell baseline, one process at a time as a script runs them: `curl -sf -o`, `b3sum` of the
//!   video, `ffmpeg -vn -c:a copy` of the audio, `b3sum` of the audio, `cp` of both into a store
//!   directory. It never fsyncs.
//! - narra: the release binary cargo builds for this bench (`CARGO_BIN_EXE_narra`, that is
//!   `target/release/narra`) as a process: `narra --home H ingest URL`, a fresh home each round,
//!   objects on `fs://H/objects` (the same filesystem as its scratch space), with
//!   `NARRA_REPORT_PEAK_RSS=1`. Its per-step times come from the job's events (ms clock).
//! - The floor: the baseline's `curl` alone plus its `ffmpeg` alone, measured in the same round.
//! - fsync cost: right after each baseline round, the baseline's downloaded video and extracted
//!   audio (the bytes narra fsyncs before its download and extract checkpoints) are fsynced and
//!   timed, and so are its stored copies (what a store that copies would fsync on top).
//! - Resume: a fresh home, narra killed by the failpoint `storage.put_file.before_close` (every
//!   byte of the video written to storage's temp path, nothing at its key yet), then `narra retry
//!   ID` timed, against the median fresh run.
//!
//! Before each timed run, `sync(2)` writes back what earlier runs left dirty, so no run pays for
//! another's writeback. With `NARRA_BENCH_DROP_CACHES=1` the page cache is also dropped (root only,
//! and it slows down everything else on the machine); otherwise the origin serves from the page
//! cache, as a fast network would.
//!
//! Settings: `NARRA_BENCH_SIZES` (MiB, comma-separated; default `60,1024`), `NARRA_BENCH_ROUNDS`
//! (default 3), `NARRA_BENCH_RESUME=0` to skip the resume figure. The 1,000 tiny jobs and the
//! re-run of a finished backfill are `benches/backfill.rs`; checkpoint commits and blake3 are
//! `benches/engine.rs`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use narra::model::job::EventKind;
use narra::store::{JobFilter, JobReader, SledStore};

const MIB: u64 = 1024 * 1024;
/// The chunk the origin reads the file in.
const ORIGIN_CHUNK_BYTES: usize = 256 * 1024;

struct Settings {
    sizes_mib: Vec<u64>,
    rounds: usize,
    drop_caches: bool,
    resume: bool,
}

impl Settings {
    fn from_env() -> Settings {
        let sizes_mib = std::env::var("NARRA_BENCH_SIZES")
            .unwrap_or_else(|_| "60,1024".to_string())
            .split(',')
            .map(|size| {
                size.trim()
                    .parse::<u64>()
                    .expect("NARRA_BENCH_SIZES: MiB, comma-separated")
            })
            .collect();
        let rounds = std::env::var("NARRA_BENCH_ROUNDS")
            .ok()
            .map(|rounds| {
                rounds
                    .parse::<usize>()
                    .expect("NARRA_BENCH_ROUNDS: a number")
            })
            .unwrap_or(3)
            .max(1);
        Settings {
            sizes_mib,
            rounds,
            drop_caches: std::env::var("NARRA_BENCH_DROP_CACHES").as_deref() == Ok("1"),
            resume: std::env::var("NARRA_BENCH_RESUME").as_deref() != Ok("0"),
        }
    }
}

fn main() {
    let settings = Settings::from_env();
    let narra = PathBuf::from(env!("CARGO_BIN_EXE_narra"));
    let b3sum = which("b3sum").unwrap_or_else(|| {
        eprintln!("e2e bench: b3sum is not on PATH (nor in ~/.cargo/bin): `cargo install b3sum`");
        std::process::exit(2);
    });
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is inside the target dir")
        .to_path_buf();
    let media_dir = target.join("bench-media");
    let work_dir = target.join("bench-e2e");
    let _ = std::fs::remove_dir_all(&work_dir);
    std::fs::create_dir_all(&media_dir).expect("create target/bench-media");
    std::fs::create_dir_all(&work_dir).expect("create target/bench-e2e");

    print_machine(&settings, &narra, &work_dir);
    let origin = Origin::start(media_dir.clone());
    let tools = Tools { narra, b3sum };
    for &size_mib in &settings.sizes_mib {
        let name = format!("video-{size_mib}mib.mp4");
        let media = media_dir.join(&name);
        if !media.exists() {
            generate_media(&media, size_mib);
        }
        let size = std::fs::metadata(&media).expect("the media").len();
        println!();
        println!(
            "== {size_mib} MiB: {} ({size} bytes), {} rounds, load average {}",
            media.display(),
            settings.rounds,
            load_average()
        );
        let url = origin.url(&name);
        let rounds = run_rounds(&settings, &tools, &url, &work_dir.join(&name));
        print_rounds(&rounds, size);
        if settings.resume {
            let fresh = median(rounds.iter().map(|round| round.narra.wall).collect());
            resume(
                &settings,
                &tools,
                &url,
                &work_dir.join(format!("{name}-resume")),
                fresh,
            );
        }
    }
    println!();
    println!("load average at the end {}", load_average());
}

struct Tools {
    narra: PathBuf,
    b3sum: PathBuf,
}

fn which(program: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

fn print_machine(settings: &Settings, narra: &Path, work_dir: &Path) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
    let ffmpeg = first_line(Command::new("ffmpeg").arg("-version"));
    let curl = first_line(Command::new("curl").arg("--version"));
    // `df` prints a header line first.
    let filesystem = Command::new("df")
        .args(["--output=source,fstype"])
        .arg(work_dir)
        .output()
        .ok()
        .and_then(|output| {
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .nth(1)
                .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!(
        "machine: {cores} cores, {cpu}; {ffmpeg}; {curl}; load average {}",
        load_average()
    );
    println!(
        "narra: {}; work dir {} on {filesystem}; page cache dropped before each run: {}",
        narra.display(),
        work_dir.display(),
        if settings.drop_caches {
            "yes"
        } else {
            "no (sync only)"
        }
    );
}

fn first_line(command: &mut Command) -> String {
    command
        .output()
        .ok()
        .map(|output| {
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .unwrap_or_else(|| "not found".to_string())
}

/// The 1-, 5- and 15-minute load averages: how much else the machine was running.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "unknown".to_string())
}

/// Writes `size_mib` MiB of MP4: a noisy 640x360 test pattern (so the encoder cannot shrink it)
/// at a high quality, and a 440 Hz tone. `-fs` stops at the size and the file is finalised.
fn generate_media(path: &Path, size_mib: u64) {
    eprintln!("e2e bench: generating {} (once)", path.display());
    let partial = path.with_extension("part.mp4");
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args([
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=640x360:rate=25,noise=alls=60:allf=t",
        ])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args([
            "-t", "7200", "-c:v", "mpeg4", "-q:v", "2", "-c:a", "aac", "-b:a", "128k",
        ])
        .args(["-fs", &(size_mib * MIB).to_string()])
        .arg(&partial)
        .status()
        .expect("ffmpeg runs (apt-get install ffmpeg)");
    assert!(status.success(), "ffmpeg generated {}", path.display());
    std::fs::rename(&partial, path).expect("rename the generated media");
}

/// A loopback HTTP origin streaming the files of one directory at `/m/<name>`.
struct Origin {
    addr: SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

impl Origin {
    fn start(dir: PathBuf) -> Origin {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the origin");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind loopback");
        let addr = listener.local_addr().expect("an address");
        let app = axum::Router::new()
            .route("/m/{name}", axum::routing::get(serve))
            .with_state(Arc::new(dir));
        runtime.spawn(async move {
            axum::serve(listener, app).await.expect("the origin serves");
        });
        Origin {
            addr,
            _runtime: runtime,
        }
    }

    fn url(&self, name: &str) -> String {
        format!("http://{}/m/{name}", self.addr)
    }
}

async fn serve(State(dir): State<Arc<PathBuf>>, UrlPath(name): UrlPath<String>) -> Response {
    if name.contains('/') || name.starts_with('.') {
        return StatusCode::NOT_FOUND.into_response();
    }
    let Ok(file) = tokio::fs::File::open(dir.join(&name)).await else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Ok(metadata) = file.metadata().await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let stream = futures::stream::unfold(file, |mut file| async move {
        let mut buffer = vec![0u8; ORIGIN_CHUNK_BYTES];
        match tokio::io::AsyncReadExt::read(&mut file, &mut buffer).await {
            Ok(0) => None,
            Ok(count) => {
                buffer.truncate(count);
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buffer)), file))
            }
            Err(error) => Some((Err(error), file)),
        }
    });
    (
        [
            (header::CONTENT_TYPE, "video/mp4".to_string()),
            (header::CONTENT_LENGTH, metadata.len().to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Writes back what is dirty, and drops the page cache when asked, so that no run pays for the
/// writeback of another.
fn settle(settings: &Settings) {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    if settings.drop_caches
        && let Err(error) = std::fs::write("/proc/sys/vm/drop_caches", "3")
    {
        eprintln!("e2e bench: cannot drop the page cache: {error}");
    }
}

/// One baseline run, step by step.
#[derive(Default, Clone, Copy)]
struct Baseline {
    wall: Duration,
    curl: Duration,
    b3sum_video: Duration,
    ffmpeg: Duration,
    b3sum_audio: Duration,
    copies: Duration,
    /// fsync of the downloaded video and the extracted audio, right after the run.
    fsync_scratch: Duration,
    /// fsync of the two stored copies, after that.
    fsync_stored: Duration,
}

/// One narra run.
#[derive(Default, Clone, Copy)]
struct NarraRun {
    wall: Duration,
    peak_rss_kib: u64,
    download_ms: i64,
    extract_ms: i64,
    store_ms: i64,
}

struct Round {
    baseline: Baseline,
    narra: NarraRun,
}

fn run_rounds(settings: &Settings, tools: &Tools, url: &str, dir: &Path) -> Vec<Round> {
    let mut rounds = Vec::new();
    for round in 0..settings.rounds {
        // Alternate which goes first, so neither always inherits the other's leftovers.
        let narra_first = round % 2 == 1;
        let mut narra = None;
        if narra_first {
            settle(settings);
            narra = Some(run_narra(tools, url, &dir.join(format!("narra-{round}"))));
        }
        settle(settings);
        let baseline = run_baseline(tools, url, &dir.join(format!("shell-{round}")));
        if !narra_first {
            settle(settings);
            narra = Some(run_narra(tools, url, &dir.join(format!("narra-{round}"))));
        }
        let narra = narra.expect("narra ran");
        println!(
            "  round {}: shell {:.2} s, narra {:.2} s, ratio {:.2}",
            round + 1,
            baseline.wall.as_secs_f64(),
            narra.wall.as_secs_f64(),
            narra.wall.as_secs_f64() / baseline.wall.as_secs_f64()
        );
        rounds.push(Round { baseline, narra });
    }
    rounds
}

fn timed(command: &mut Command) -> Duration {
    let started = Instant::now();
    let output = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("the program runs");
    let took = started.elapsed();
    assert!(
        output.status.success(),
        "{command:?}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    took
}

fn run_baseline(tools: &Tools, url: &str, dir: &Path) -> Baseline {
    let scratch = dir.join("work");
    let store = dir.join("store");
    std::fs::create_dir_all(&scratch).expect("create the baseline's dirs");
    std::fs::create_dir_all(&store).expect("create the baseline's dirs");
    let video = scratch.join("video.mp4");
    let audio = scratch.join("audio.m4a");
    let started = Instant::now();
    let curl = timed(
        Command::new("curl")
            .args(["-sf", "-o"])
            .arg(&video)
            .arg(url),
    );
    let b3sum_video = timed(Command::new(&tools.b3sum).arg(&video));
    let ffmpeg = timed(
        Command::new("ffmpeg")
            .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i"])
            .arg(&video)
            .args(["-vn", "-map", "0:a:0", "-c:a", "copy"])
            .arg(&audio),
    );
    let b3sum_audio = timed(Command::new(&tools.b3sum).arg(&audio));
    let copies_started = Instant::now();
    timed(Command::new("cp").arg(&video).arg(store.join("video.mp4")));
    timed(Command::new("cp").arg(&audio).arg(store.join("audio.m4a")));
    let copies = copies_started.elapsed();
    let wall = started.elapsed();
    let fsync_scratch = fsync_files(&[&video, &audio]);
    let fsync_stored = fsync_files(&[&store.join("video.mp4"), &store.join("audio.m4a")]);
    let _ = std::fs::remove_dir_all(dir);
    Baseline {
        wall,
        curl,
        b3sum_video,
        ffmpeg,
        b3sum_audio,
        copies,
        fsync_scratch,
        fsync_stored,
    }
}

fn fsync_files(paths: &[&Path]) -> Duration {
    let started = Instant::now();
    for path in paths {
        std::fs::File::open(path)
            .and_then(|file| file.sync_all())
            .expect("fsync a baseline file");
    }
    started.elapsed()
}

fn run_narra(tools: &Tools, url: &str, home: &Path) -> NarraRun {
    let started = Instant::now();
    let output = narra_command(tools, home)
        .args(["ingest", url])
        .output()
        .expect("narra runs");
    let wall = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "narra ingest: {}\n{stderr}",
        output.status
    );
    let mut run = NarraRun {
        wall,
        peak_rss_kib: peak_rss_kib(&output),
        ..NarraRun::default()
    };
    step_times(home, &mut run);
    let _ = std::fs::remove_dir_all(home);
    run
}

fn narra_command(tools: &Tools, home: &Path) -> Command {
    let mut command = Command::new(&tools.narra);
    command
        .arg("--home")
        .arg(home)
        .env("NARRA_ALLOW_PRIVATE_NETWORK", "1")
        .env("NARRA_REPORT_PEAK_RSS", "1")
        .env("NARRA_LOG", "warn")
        .env_remove("NARRA_FAILPOINT")
        .env_remove("NARRA_STORAGE")
        .stdin(Stdio::null());
    command
}

fn peak_rss_kib(output: &Output) -> u64 {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .find_map(|line| line.strip_prefix("narra: peak_rss_kib="))
        .and_then(|kib| kib.trim().parse().ok())
        .unwrap_or(0)
}

/// Each step's running time, from the job's events (the home is no longer held: narra exited).
fn step_times(home: &Path, run: &mut NarraRun) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let store = SledStore::open(&home.join("state"), 8 * MIB).expect("open the home's state");
        let jobs = store
            .jobs(&JobFilter {
                status: None,
                limit: 10,
            })
            .await
            .expect("the jobs");
        let Some(job) = jobs.first() else { return };
        let mut started_at = std::collections::HashMap::new();
        for event in store.events(job.id).await.expect("the events") {
            match &event.kind {
                EventKind::StepStarted { step } => {
                    started_at.insert(step.clone(), event.at.0);
                }
                EventKind::StepCompleted { step, .. } => {
                    let took = event.at.0 - started_at.remove(step).unwrap_or(event.at.0);
                    match step.as_str() {
                        "download" => run.download_ms += took,
                        "extract" => run.extract_ms += took,
                        "store" => run.store_ms += took,
                        _ => {}
                    }
                }
                _ => {}
            }
        }
    });
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn median_i64(mut samples: Vec<i64>) -> i64 {
    samples.sort();
    samples[samples.len() / 2]
}

fn print_rounds(rounds: &[Round], size: u64) {
    let of_baseline = |pick: fn(&Baseline) -> Duration| {
        median(rounds.iter().map(|round| pick(&round.baseline)).collect())
    };
    let shell = of_baseline(|baseline| baseline.wall);
    let curl = of_baseline(|baseline| baseline.curl);
    let ffmpeg = of_baseline(|baseline| baseline.ffmpeg);
    let floor = median(
        rounds
            .iter()
            .map(|round| round.baseline.curl + round.baseline.ffmpeg)
            .collect(),
    );
    let narra = median(rounds.iter().map(|round| round.narra.wall).collect());
    let secs = |duration: Duration| duration.as_secs_f64();
    let mib_s = |duration: Duration| size as f64 / MIB as f64 / duration.as_secs_f64();
    println!(
        "shell script: {:.2} s (median) = curl {:.2} + b3sum video {:.2} + ffmpeg {:.2} + b3sum audio {:.2} + cp both {:.2}",
        secs(shell),
        secs(curl),
        secs(of_baseline(|baseline| baseline.b3sum_video)),
        secs(ffmpeg),
        secs(of_baseline(|baseline| baseline.b3sum_audio)),
        secs(of_baseline(|baseline| baseline.copies)),
    );
    println!(
        "narra ingest: {:.2} s (median), {:.0} MiB/s; steps (median, from its events): download {} ms, extract {} ms, store {} ms",
        secs(narra),
        mib_s(narra),
        median_i64(rounds.iter().map(|round| round.narra.download_ms).collect()),
        median_i64(rounds.iter().map(|round| round.narra.extract_ms).collect()),
        median_i64(rounds.iter().map(|round| round.narra.store_ms).collect()),
    );
    println!(
        "  ratio narra / shell: {:.2} (median of the rounds' ratios {:.2})",
        secs(narra) / secs(shell),
        median_f64(
            rounds
                .iter()
                .map(|round| secs(round.narra.wall) / secs(round.baseline.wall))
                .collect()
        )
    );
    println!(
        "floor: download alone (curl) {:.2} s + extraction alone (ffmpeg) {:.2} s = {:.2} s (median of sums); ratio narra / floor {:.2}",
        secs(curl),
        secs(ffmpeg),
        secs(floor),
        secs(narra) / secs(floor)
    );
    println!(
        "fsync, on the baseline's files right after its run: video + audio {:.0} ms ({:.1} % of narra's time); the two stored copies {:.0} ms more (median)",
        of_baseline(|baseline| baseline.fsync_scratch).as_secs_f64() * 1000.0,
        100.0 * secs(of_baseline(|baseline| baseline.fsync_scratch)) / secs(narra),
        of_baseline(|baseline| baseline.fsync_stored).as_secs_f64() * 1000.0,
    );
    let rss: Vec<u64> = rounds
        .iter()
        .map(|round| round.narra.peak_rss_kib)
        .collect();
    println!(
        "narra peak RSS: {:.1} MiB (max of {} runs; {})",
        *rss.iter().max().unwrap_or(&0) as f64 / 1024.0,
        rss.len(),
        rss.iter()
            .map(|kib| format!("{:.1}", *kib as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

fn median_f64(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Crashes narra with every byte of the video in storage's temp path (the first pass through
/// `storage.put_file.before_close`), then times `narra retry`.
fn resume(settings: &Settings, tools: &Tools, url: &str, home: &Path, fresh: Duration) {
    settle(settings);
    let crashed_started = Instant::now();
    let crashed = narra_command(tools, home)
        .args(["ingest", url])
        .env("NARRA_FAILPOINT", "storage.put_file.before_close")
        .output()
        .expect("narra runs");
    let crashed_took = crashed_started.elapsed();
    let stderr = String::from_utf8_lossy(&crashed.stderr);
    assert!(
        stderr.contains("failpoint fired: storage.put_file.before_close"),
        "the failpoint fired: {stderr}"
    );
    let listed = narra_command(tools, home)
        .args(["--json", "jobs"])
        .output()
        .expect("narra jobs");
    let jobs: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("jobs as JSON");
    let id = jobs[0]["id"].as_str().expect("a job id").to_string();
    settle(settings);
    let started = Instant::now();
    let retried = narra_command(tools, home)
        .args(["retry", &id])
        .output()
        .expect("narra retry");
    let took = started.elapsed();
    assert!(
        retried.status.success(),
        "narra retry: {}\n{}",
        retried.status,
        String::from_utf8_lossy(&retried.stderr)
    );
    let mut run = NarraRun::default();
    step_times(home, &mut run);
    println!(
        "resume after a crash during store (killed after {:.2} s): retry {:.2} s (its store step {} ms), ratio retry / fresh run {:.2}; peak RSS {:.1} MiB",
        crashed_took.as_secs_f64(),
        took.as_secs_f64(),
        run.store_ms,
        took.as_secs_f64() / fresh.as_secs_f64(),
        peak_rss_kib(&retried) as f64 / 1024.0,
    );
    let _ = std::fs::remove_dir_all(home);
}
