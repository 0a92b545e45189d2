//! Backfill figures, measured through the functions `narra backfill` calls, against floors measured
//! in the same run.
//!
//! Run with `cargo bench --bench backfill 2>backfill.log`: the engine logs to stderr at `NARRA_LOG`
//! (default `info`) as `narra backfill` does, and the figures go to stdout. Prints figures and
//! ratios; asserts nothing about time. Everything is real: a sled store and `fs://` objects in a
//! temp dir, ffmpeg and ffprobe, and an HTTP origin on loopback inside this process (so the
//! engine's network policy allows private networks).
//!
//! 1. A backfill of `NARRA_BENCH_JOBS` (1,000) tiny videos from the loopback origin, end to end at
//!    `narra backfill`'s default concurrency: wall time, jobs/s, and the engine's overhead per job,
//!    the wall time not explained by the extract step's ffmpeg and ffprobe runs, which are measured
//!    on the same files just before and just after the backfill (see [`measure_floors`] and
//!    [`print_end_to_end`]); from the jobs' own events, how their running time splits between
//!    download, extract, store and the rest; and the engine's CPU time against ffmpeg's and
//!    ffprobe's over the run ([`print_cpu`]), which no waiting and no drift of the machine's speed
//!    enters.
//! 2. Submission of `NARRA_BENCH_LINES` (100,000) manifest lines, parsed and submitted with
//!    `submit_manifest` and not run: lines/s, against the floor of plain sled inserts (one record
//!    per line) and one flush; and the same lines submitted again, as a re-run submits them.
//! 3. A re-run of the completed backfill of 1: per-job time, and the object writes it made (none is
//!    expected: inode, size and mtime of every object are compared before and after).
//!
//! Other sizes: `NARRA_BENCH_FLOOR_FILES` (100: the files the ffmpeg floor is measured on),
//! `NARRA_BENCH_ROUNDS` (3: rounds of the cheap figures, whose median is printed),
//! `NARRA_BENCH_CONCURRENCY` (default: `narra backfill`'s `--concurrency` default).
//!
//! The media: one ffmpeg run cuts a test pattern with a noise track into 0.2 s MP4 segments (about
//! 9 KB each), one per job, so that every job downloads, extracts and stores bytes of its own, as
//! in a real backfill. One video served under every path would be stored once and then recognised
//! by its hash by every other job, which would hide the object writes a backfill pays for. The
//! track is noise so that no two segments carry the same audio either.
//!
//! The library keeps sled to `src/store/`; this bench opens sled directly only for its floors.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use clap::Parser as _;

use narra::engine::Engine;
use narra::engine::backfill::{
    BackfillOptions, BackfillProgress, manifest_name, parse_manifest, run_backfill, submit_manifest,
};
use narra::engine::orchestrator::reclaim_orphans;
use narra::model::backfill::BackfillSummary;
use narra::model::job::{BackfillId, EventKind, Status};
use narra::steps::extract::{FORMAT_WHITELIST, Tools};
use narra::steps::net::NetworkPolicy;
use narra::steps::process::run_process;
use narra::storage::Storage;
use narra::store::sled_store::DEFAULT_CACHE_CAPACITY_BYTES;
use narra::store::{HomeLock, JobFilter, SledStore};
use narra::workflow::{DEFAULT_WORKFLOW, ExtractParams, WorkflowRegistry};

/// The length of one test video.
const SEGMENT_S: f64 = 0.2;
/// How long a floor's subprocess may run before the bench gives up on it.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);
/// The most ffprobe output kept (the extract step's own limit is larger; these probes are ~2 KiB).
const PROBE_OUTPUT_BYTES_MAX: usize = 1024 * 1024;
/// Samples of the fsync and flush floors.
const SYNC_SAMPLES: usize = 50;

struct Sizes {
    jobs: usize,
    lines: usize,
    floor_files: usize,
    rounds: usize,
    concurrency: usize,
    cores: usize,
}

impl Sizes {
    fn from_env() -> Sizes {
        let jobs = env_size("NARRA_BENCH_JOBS", 1_000);
        Sizes {
            jobs,
            lines: env_size("NARRA_BENCH_LINES", 100_000),
            floor_files: env_size("NARRA_BENCH_FLOOR_FILES", 100).min(jobs),
            rounds: env_size("NARRA_BENCH_ROUNDS", 3),
            concurrency: env_size("NARRA_BENCH_CONCURRENCY", cli_backfill_concurrency()),
            cores: std::thread::available_parallelism().map_or(1, usize::from),
        }
    }
}

/// A positive size from the environment, else `default`.
fn env_size(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|size| *size > 0)
            .unwrap_or_else(|| panic!("{name} must be a positive integer, not {text:?}")),
        Err(_) => default,
    }
}

/// `narra backfill`'s default `--concurrency`, read from the CLI definition so that it cannot drift.
fn cli_backfill_concurrency() -> usize {
    let cli = narra::cli::Cli::try_parse_from(["narra", "backfill", "manifest.txt"])
        .expect("`narra backfill MANIFEST` parses");
    match cli.command {
        narra::cli::Command::Backfill(args) => args.concurrency,
        _ => unreachable!("parsed as a backfill"),
    }
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

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn per_second(count: usize, duration: Duration) -> f64 {
    count as f64 / duration.as_secs_f64()
}

fn main() {
    let sizes = Sizes::from_env();
    narra::logging::init(narra::logging::LogFormat::Text);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let dir = tempfile::tempdir().expect("a temp dir");
    let tools = Tools::from_env();
    print_machine(&sizes, &tools);

    let media = generate_media(&tools, &dir.path().join("media"), sizes.jobs);
    let origin = Origin::start(&media);
    let params = WorkflowRegistry::builtin()
        .get(DEFAULT_WORKFLOW)
        .expect("the default workflow")
        .extract()
        .clone();
    let floors = runtime.block_on(measure_floors(
        &sizes,
        &tools,
        &params,
        &media,
        &origin,
        &dir.path().join("floors"),
    ));
    print_floors(&sizes, &floors);

    let home = BenchHome::open(&dir.path().join("backfill"));
    let manifest_path = dir.path().join("manifest.txt");
    let manifest_text: String = (0..sizes.jobs)
        .map(|index| format!("{}\n", origin.url(index)))
        .collect();
    std::fs::write(&manifest_path, &manifest_text).expect("write the manifest");
    let load_before = load_average();
    let cpu_before = CpuTimes::now(&origin);
    let (first_run, counts) =
        runtime.block_on(home.backfill_counted(&manifest_path, sizes.concurrency));
    let cpu = CpuTimes::now(&origin).since(&cpu_before);
    let load_after = load_average();
    // Measured again after the run: the floor is most of the run, and the CPU left to this process
    // on a shared machine changes from minute to minute (the load average is printed).
    let floor_after = runtime.block_on(concurrent_floor(
        &sizes,
        &tools,
        &params,
        &media[..sizes.floor_files],
        &dir.path().join("floors").join("after"),
    ));
    let attribution = runtime.block_on(attribute(&home, first_run.summary.backfill.id));
    print_end_to_end(
        &sizes,
        &floors,
        floor_after,
        &first_run,
        counts,
        &attribution,
    );
    print_cpu(&sizes, &cpu);
    print_objects(&home.objects());
    println!("  load average before the run {load_before}, after it {load_after}");

    let rerun = runtime.block_on(rerun(&sizes, &home, &manifest_path));
    print_rerun(&sizes, &rerun);
    narra::logging::flush_job_logs();
    drop(home);

    print_submission(&sizes, &runtime.block_on(submission(&sizes, dir.path())));
    println!("load average at the end {}", load_average());
    drop(origin);
}

fn print_machine(sizes: &Sizes, tools: &Tools) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let ffmpeg = Command::new(&tools.ffmpeg)
        .arg("-version")
        .output()
        .ok()
        .and_then(|output| {
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "ffmpeg: not found".to_string());
    println!(
        "machine: {} cores, {cpu}; {ffmpeg}; load average {}",
        sizes.cores,
        load_average()
    );
    println!(
        "sizes: {} jobs at concurrency {}, {} manifest lines, ffmpeg floor on {} files, {} rounds",
        sizes.jobs, sizes.concurrency, sizes.lines, sizes.floor_files, sizes.rounds
    );
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        println!(
            "note: the engine's log lines go to stderr, a terminal here, which slows the run; redirect it (2>backfill.log)"
        );
    }
}

/// Cuts `count` tiny MP4s (H.264 test pattern, AAC noise, 0.2 s each) out of one ffmpeg run, with
/// a key frame at every cut so each segment stands alone.
fn generate_media(tools: &Tools, dir: &Path, count: usize) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).expect("create the media directory");
    // A second more than needed: a cut can land a frame late, which makes one segment longer and
    // the run one segment shorter.
    let seconds = count as f64 * SEGMENT_S + 1.0;
    let status = Command::new(&tools.ffmpeg)
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i", "testsrc=size=160x120:rate=15"])
        .args([
            "-f",
            "lavfi",
            "-i",
            "anoisesrc=sample_rate=44100:amplitude=0.2:seed=7",
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
        .args([
            "-force_key_frames",
            &format!("expr:gte(t,n_forced*{SEGMENT_S})"),
        ])
        .args(["-c:a", "aac", "-b:a", "64k", "-shortest"])
        .args(["-f", "segment", "-segment_time", &SEGMENT_S.to_string()])
        .args(["-segment_format", "mp4", "-reset_timestamps", "1"])
        .arg(dir.join("%06d.mp4"))
        .status()
        .expect("ffmpeg runs (install it: apt-get install ffmpeg)");
    assert!(status.success(), "ffmpeg generated the test videos");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read the media directory")
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    files.sort();
    assert!(
        files.len() >= count,
        "ffmpeg cut {} segments, {count} needed",
        files.len()
    );
    files.truncate(count);
    files
}

/// A loopback HTTP origin serving the test videos from memory at `/v/<index>.mp4`, on a runtime
/// (one thread) of its own, as an origin outside the engine would be.
struct Origin {
    addr: SocketAddr,
    /// The origin runtime's threads, whose CPU time is the origin's, not the engine's.
    threads: Arc<std::sync::Mutex<Vec<libc::pid_t>>>,
    _runtime: tokio::runtime::Runtime,
}

impl Origin {
    fn start(media: &[PathBuf]) -> Origin {
        let files: Vec<Bytes> = media
            .iter()
            .map(|path| Bytes::from(std::fs::read(path).expect("read a test video")))
            .collect();
        let threads: Arc<std::sync::Mutex<Vec<libc::pid_t>>> = Arc::default();
        let recorded = threads.clone();
        // One blocking thread at most, kept alive: a thread that ended would take its CPU time out
        // of the origin's total, and its id could be reused by one of the engine's.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(1)
            .thread_keep_alive(Duration::from_secs(24 * 3600))
            .enable_all()
            .on_thread_start(move || {
                // SAFETY: gettid has no preconditions.
                let tid = unsafe { libc::gettid() };
                recorded
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(tid);
            })
            .build()
            .expect("a runtime for the origin");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind loopback");
        let addr = listener.local_addr().expect("an address");
        let app = axum::Router::new()
            .route("/v/{name}", axum::routing::get(serve))
            .with_state(Arc::new(files));
        runtime.spawn(async move {
            axum::serve(listener, app).await.expect("the origin serves");
        });
        Origin {
            addr,
            threads,
            _runtime: runtime,
        }
    }

    /// CPU time the origin's threads have used so far (from `/proc/self/task/<tid>/schedstat`,
    /// nanoseconds; a thread that has ended no longer counts).
    fn cpu(&self) -> Duration {
        let threads = self
            .threads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let nanos: u64 = threads
            .iter()
            .filter_map(|tid| {
                std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()
            })
            .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        Duration::from_nanos(nanos)
    }

    fn url(&self, index: usize) -> String {
        format!("http://{}/v/{index}.mp4", self.addr)
    }
}

async fn serve(State(files): State<Arc<Vec<Bytes>>>, UrlPath(name): UrlPath<String>) -> Response {
    let file = name
        .strip_suffix(".mp4")
        .and_then(|index| index.parse::<usize>().ok())
        .and_then(|index| files.get(index));
    match file {
        Some(bytes) => ([(header::CONTENT_TYPE, "video/mp4")], bytes.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// What bounds the figures from below, measured on this machine in this run.
struct Floors {
    /// One 8 KiB file written and fsynced (median).
    fsync: Duration,
    /// One small sled insert and a flush (median).
    sled_flush: Duration,
    /// One GET of a test video from the origin, one at a time, body read, nothing written (median).
    http_get: Duration,
    /// The extract step's three ffmpeg/ffprobe runs on one file, one file at a time (median).
    ffmpeg_sequential: Duration,
    /// The same runs on `floor_files` files, `concurrency` files at a time: wall time per file.
    ffmpeg_concurrent: Duration,
    /// `steps::extract::extract` itself on one file, one file at a time, taken in turn with
    /// `ffmpeg_sequential` (median): the same runs plus the step's own work (output validation,
    /// fsync and rename of the audio).
    extract_step: Duration,
}

async fn measure_floors(
    sizes: &Sizes,
    tools: &Tools,
    params: &ExtractParams,
    media: &[PathBuf],
    origin: &Origin,
    dir: &Path,
) -> Floors {
    std::fs::create_dir_all(dir).expect("create the floors directory");
    let files = &media[..sizes.floor_files];
    let (_cancel_sender, cancel) = tokio::sync::watch::channel(false);

    let payload = vec![7u8; 8 * 1024];
    let mut fsyncs = Vec::with_capacity(SYNC_SAMPLES);
    for index in 0..SYNC_SAMPLES {
        let started = Instant::now();
        let mut file =
            std::fs::File::create(dir.join(format!("fsync-{index}"))).expect("create a file");
        file.write_all(&payload).expect("write a file");
        file.sync_all().expect("fsync a file");
        fsyncs.push(started.elapsed());
    }

    let db = sled::Config::new()
        .path(dir.join("sled"))
        .cache_capacity(DEFAULT_CACHE_CAPACITY_BYTES)
        .open()
        .expect("open a sled database");
    let mut flushes = Vec::with_capacity(SYNC_SAMPLES);
    for index in 0..SYNC_SAMPLES {
        let started = Instant::now();
        db.insert(index.to_be_bytes(), &payload[..256])
            .expect("a sled insert");
        db.flush().expect("a sled flush");
        flushes.push(started.elapsed());
    }
    drop(db);

    let client = reqwest::Client::new();
    let mut gets = Vec::with_capacity(files.len());
    for index in 0..files.len() {
        let started = Instant::now();
        let body = client
            .get(origin.url(index))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("the origin answers")
            .bytes()
            .await
            .expect("the origin sends the body");
        gets.push(started.elapsed());
        std::hint::black_box(body);
    }

    // The command lines are a copy of the extract step's; the step's own output must match them
    // byte for byte, or the floor would measure some other work.
    let step_dir = dir.join("check-step");
    let mut step_cancel = cancel.clone();
    // The step reports progress as it runs; nobody reads it here.
    let (progress, _) = tokio::sync::watch::channel(narra::steps::Progress {
        bytes_done: 0,
        bytes_total: None,
    });
    let (_, extracted) = narra::steps::extract::extract(
        tools,
        &files[0],
        params,
        &step_dir,
        &progress,
        &mut step_cancel,
    )
    .await
    .expect("the extract step extracts a test video");
    let raw_output = dir.join("check-raw.m4a");
    run_extract_invocations(tools, params, &files[0], &raw_output, &cancel).await;
    assert!(
        std::fs::read(&extracted.audio_path).expect("read the step's audio")
            == std::fs::read(&raw_output).expect("read the bench's audio"),
        "the bench's copy of the extract command lines has drifted from src/steps/extract/"
    );

    // One file at a time, the bench's copy of the invocations and the step itself in turn, so
    // that both see the same machine (the CPU left to this process on a shared machine changes
    // from minute to minute).
    let mut sequential = Vec::with_capacity(files.len());
    let mut step = Vec::with_capacity(files.len());
    for (index, file) in files.iter().enumerate() {
        let output = dir.join(format!("sequential-{index}.m4a"));
        let started = Instant::now();
        run_extract_invocations(tools, params, file, &output, &cancel).await;
        sequential.push(started.elapsed());

        let mut step_cancel = cancel.clone();
        let scratch = dir.join(format!("step-{index}"));
        let started = Instant::now();
        narra::steps::extract::extract(tools, file, params, &scratch, &progress, &mut step_cancel)
            .await
            .expect("the extract step extracts a test video");
        step.push(started.elapsed());
    }

    Floors {
        fsync: median(fsyncs),
        sled_flush: median(flushes),
        http_get: median(gets),
        ffmpeg_sequential: median(sequential),
        ffmpeg_concurrent: concurrent_floor(sizes, tools, params, files, &dir.join("before")).await,
        extract_step: median(step),
    }
}

/// The extract step's runs on `files`, `concurrency` files at a time: wall time per file.
async fn concurrent_floor(
    sizes: &Sizes,
    tools: &Tools,
    params: &ExtractParams,
    files: &[PathBuf],
    dir: &Path,
) -> Duration {
    std::fs::create_dir_all(dir).expect("create a floor directory");
    let (_cancel_sender, cancel) = tokio::sync::watch::channel(false);
    let semaphore = Arc::new(tokio::sync::Semaphore::new(sizes.concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for (index, file) in files.iter().enumerate() {
        let (semaphore, tools, params, file, cancel) = (
            semaphore.clone(),
            tools.clone(),
            params.clone(),
            file.clone(),
            cancel.clone(),
        );
        let output = dir.join(format!("{index}.m4a"));
        tasks.spawn(async move {
            let _permit = semaphore.acquire_owned().await.expect("an open semaphore");
            run_extract_invocations(&tools, &params, &file, &output, &cancel).await;
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("a floor task ran");
    }
    started.elapsed() / u32::try_from(files.len()).expect("a small count")
}

/// The three runs the extract step makes for one of these files under the default workflow
/// (`audio = "copy"` of the AAC stream, index 1, into .m4a): ffprobe of the input, ffmpeg's stream
/// copy, ffprobe of the output. The step does not expose its command lines, so they are copied
/// here from `src/steps/extract/` (`probe`, `input_args`, `ffmpeg_args`, `plan_output`), and
/// [`measure_floors`] checks that this ffmpeg run writes the bytes the step writes. They run through the step's own
/// `run_process` (process group, stdin closed, output captured).
async fn run_extract_invocations(
    tools: &Tools,
    params: &ExtractParams,
    input: &Path,
    output: &Path,
    cancel: &tokio::sync::watch::Receiver<bool>,
) {
    let threads = params.threads.to_string();
    let input_args = |path: &Path| -> Vec<OsString> {
        let mut url = OsString::from("file:");
        url.push(path.as_os_str());
        vec![
            "-threads".into(),
            threads.clone().into(),
            "-protocol_whitelist".into(),
            "file".into(),
            "-format_whitelist".into(),
            FORMAT_WHITELIST.into(),
            "-i".into(),
            url,
        ]
    };
    let probe_args = |path: &Path| -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["-v".into(), "warning".into(), "-hide_banner".into()];
        args.extend(input_args(path));
        args.extend(
            ["-print_format", "json", "-show_format", "-show_streams"]
                .iter()
                .map(OsString::from),
        );
        args
    };
    let mut ffmpeg_args: Vec<OsString> = [
        "-nostdin",
        "-hide_banner",
        "-nostats",
        "-loglevel",
        "warning",
        "-y",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    ffmpeg_args.extend(input_args(input));
    ffmpeg_args.extend(
        [
            "-map",
            "0:1",
            "-vn",
            "-sn",
            "-dn",
            "-map_metadata",
            "-1",
            "-map_chapters",
            "-1",
            "-c:a",
            "copy",
            "-threads",
            &threads,
            "-filter_threads",
            &threads,
            "-fflags",
            "+bitexact",
            "-f",
            "ipod",
        ]
        .iter()
        .map(OsString::from),
    );
    let mut output_url = OsString::from("file:");
    output_url.push(output.as_os_str());
    ffmpeg_args.push(output_url);

    let runs = [
        (&tools.ffprobe, probe_args(input), PROBE_OUTPUT_BYTES_MAX),
        (&tools.ffmpeg, ffmpeg_args, 0),
        (&tools.ffprobe, probe_args(output), PROBE_OUTPUT_BYTES_MAX),
    ];
    for (program, args, stdout_max) in runs {
        let mut cancel = cancel.clone();
        let finished = run_process(program, &args, stdout_max, TOOL_TIMEOUT, &mut cancel)
            .await
            .unwrap_or_else(|error| panic!("{} did not run: {error:?}", program.display()));
        assert!(
            finished.success,
            "{} failed: {}",
            program.display(),
            finished.stderr
        );
    }
}

fn print_floors(sizes: &Sizes, floors: &Floors) {
    println!(
        "floors: fsync of 8 KiB {:.2} ms; sled insert + flush {:.2} ms; loopback GET of a test video {:.2} ms",
        ms(floors.fsync),
        ms(floors.sled_flush),
        ms(floors.http_get)
    );
    println!(
        "floors: extract's ffprobe + ffmpeg + ffprobe per file: {:.1} ms one at a time, and the extract \
         step itself {:.1} ms (medians of {} files, taken in turn); {:.1} ms per file {} at a time",
        ms(floors.ffmpeg_sequential),
        ms(floors.extract_step),
        sizes.floor_files,
        ms(floors.ffmpeg_concurrent),
        sizes.concurrency
    );
}

/// A narra home opened as `open_home` opens one (lock, sled store, job log sink, `fs://` objects,
/// built-in workflows), with private networks allowed for the loopback origin. The sled store is
/// kept by its type as well, for its flush and transaction counters.
struct BenchHome {
    engine: Engine,
    store: Arc<SledStore>,
    path: PathBuf,
    _lock: HomeLock,
}

/// What the state store did during a run.
#[derive(Debug, Clone, Copy, Default)]
struct StoreCounts {
    flushes: u64,
    transactions: u64,
}

impl BenchHome {
    fn open(path: &Path) -> BenchHome {
        let lock = HomeLock::acquire(path).expect("lock the bench home");
        let store = Arc::new(
            SledStore::open(&path.join("state"), DEFAULT_CACHE_CAPACITY_BYTES)
                .expect("open the state store"),
        );
        // Only the first store attached gets job log lines: the backfill's, opened first.
        narra::logging::attach_job_sink(store.clone());
        let storage = Storage::from_uri(&format!("fs://{}", path.join("objects").display()))
            .expect("the fs storage");
        let network = NetworkPolicy {
            allow_private_network: true,
            ..NetworkPolicy::default()
        };
        let engine = Engine::new(
            store.clone(),
            storage,
            WorkflowRegistry::builtin(),
            path,
            network,
        );
        BenchHome {
            engine,
            store,
            path: path.to_path_buf(),
            _lock: lock,
        }
    }

    fn objects(&self) -> PathBuf {
        self.path.join("objects")
    }

    fn counts(&self) -> StoreCounts {
        StoreCounts {
            flushes: self.store.flush_count(),
            transactions: self.store.transaction_count(),
        }
    }

    /// What `narra backfill MANIFEST` does short of printing: read and parse the manifest, reclaim
    /// orphans, submit, run (`src/cli/backfill.rs`, `run`). Timed from the read to the summary.
    async fn backfill(&self, manifest_path: &Path, concurrency: usize) -> Run {
        let started = Instant::now();
        let text = std::fs::read_to_string(manifest_path).expect("read the manifest");
        let path = manifest_path.to_str().expect("a UTF-8 temp path");
        let name = manifest_name(path, &text);
        let manifest = parse_manifest(path, &text);
        reclaim_orphans(&self.engine.orchestrator())
            .await
            .expect("reclaim orphans");
        let options = BackfillOptions {
            concurrency,
            ..BackfillOptions::default()
        };
        let submission = submit_manifest(&self.engine, &name, &manifest, &options)
            .await
            .expect("submit the manifest");
        let progress = Arc::new(Mutex::new(BackfillProgress::default()));
        let summary = run_backfill(&self.engine, submission, concurrency, progress)
            .await
            .expect("run the backfill");
        Run {
            elapsed: started.elapsed(),
            summary,
        }
    }

    async fn backfill_counted(
        &self,
        manifest_path: &Path,
        concurrency: usize,
    ) -> (Run, StoreCounts) {
        let before = self.counts();
        let run = self.backfill(manifest_path, concurrency).await;
        let after = self.counts();
        let counts = StoreCounts {
            flushes: after.flushes - before.flushes,
            transactions: after.transactions - before.transactions,
        };
        (run, counts)
    }
}

/// CPU time used so far: this process (the engine, the bench and the origin), the origin alone,
/// and the children waited for (ffmpeg and ffprobe: the only processes the engine starts).
struct CpuTimes {
    process: Duration,
    origin: Duration,
    children: Duration,
}

impl CpuTimes {
    fn now(origin: &Origin) -> CpuTimes {
        let usage = |who| {
            // SAFETY: getrusage fills the zeroed struct it is given.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            let status = unsafe { libc::getrusage(who, &mut usage) };
            assert_eq!(status, 0, "getrusage: {}", std::io::Error::last_os_error());
            let time = |value: libc::timeval| {
                Duration::from_secs(value.tv_sec as u64)
                    + Duration::from_micros(value.tv_usec as u64)
            };
            time(usage.ru_utime) + time(usage.ru_stime)
        };
        CpuTimes {
            process: usage(libc::RUSAGE_SELF),
            origin: origin.cpu(),
            children: usage(libc::RUSAGE_CHILDREN),
        }
    }

    fn since(&self, before: &CpuTimes) -> CpuTimes {
        CpuTimes {
            process: self.process.saturating_sub(before.process),
            origin: self.origin.saturating_sub(before.origin),
            children: self.children.saturating_sub(before.children),
        }
    }
}

/// The engine's overhead as CPU time: what this process spent during the backfill, less the
/// origin's threads, against what ffmpeg and ffprobe spent. Unlike the wall-time figures it does
/// not count time a job waited for a core or for the disk, and the machine's changing speed moves
/// both sides together.
fn print_cpu(sizes: &Sizes, cpu: &CpuTimes) {
    let jobs = sizes.jobs as f64;
    let engine = cpu.process.saturating_sub(cpu.origin);
    let per_job = |time: Duration| time.as_secs_f64() * 1e3 / jobs;
    println!(
        "  CPU time per job: engine {:.1} ms, ffmpeg + ffprobe {:.1} ms, origin {:.1} ms; engine \
         {:.1} % of the engine's and the tools' CPU time",
        per_job(engine),
        per_job(cpu.children),
        per_job(cpu.origin),
        100.0 * engine.as_secs_f64() / (engine + cpu.children).as_secs_f64().max(f64::MIN_POSITIVE)
    );
}

struct Run {
    elapsed: Duration,
    summary: BackfillSummary,
}

fn print_end_to_end(
    sizes: &Sizes,
    floors: &Floors,
    floor_after: Duration,
    run: &Run,
    counts: StoreCounts,
    attribution: &Attribution,
) {
    let summary = &run.summary;
    assert_eq!(
        summary.by_status.get("succeeded").copied().unwrap_or(0),
        sizes.jobs,
        "every job of the first run must succeed (by status {:?}, failures {:?})",
        summary.by_status,
        summary.failures_by_class
    );
    let jobs = sizes.jobs as f64;
    let total = run.elapsed.as_secs_f64();
    // Engine overhead = (total − ffmpeg floor at the backfill's concurrency) / jobs: the wall time
    // per job not explained by the extract step's ffprobe, ffmpeg and ffprobe runs. That rest is
    // what the engine adds: the download over loopback, the state store's transactions and
    // flushes, the object writes and their fsyncs, the bookkeeping and scheduling. Engine work that
    // overlaps a running ffmpeg is hidden from it, and ffmpeg slowed down by the engine's work is
    // counted in it: it is wall time added, not CPU time spent.
    //
    // The floor at concurrency C on P cores, two ways:
    // - by arithmetic, sequential time per job / min(C, P): what it would be if the runs were
    //   CPU-bound and scaled perfectly over the cores. That is the lowest the floor can be, so the
    //   overhead it gives is an upper bound. They need not scale: a run this small is mostly
    //   process start-up (ffmpeg and ffprobe link some 200 shared libraries each), and the cores
    //   are shared with whatever else the machine runs;
    // - measured: the same runs on the same files, C at a time, just before and just after the
    //   backfill. The headline subtracts their mean; the overhead with each is printed too, since
    //   the floor is nearly all of the run, and on a shared machine the CPU left to this process
    //   can change between two measurements by more than the overhead.
    let ideal_floor =
        floors.ffmpeg_sequential.as_secs_f64() / sizes.concurrency.min(sizes.cores) as f64;
    let (before, after) = (
        floors.ffmpeg_concurrent.as_secs_f64(),
        floor_after.as_secs_f64(),
    );
    let measured_floor = (before + after) / 2.0;
    let overhead_per_job = |floor: f64| (total - jobs * floor) / jobs;
    let overhead = overhead_per_job(measured_floor);
    println!(
        "backfill of {} tiny jobs end to end (concurrency {}, {} cores): {:.1} s, {:.1} jobs/s, {:.1} ms per job; all succeeded",
        sizes.jobs,
        sizes.concurrency,
        sizes.cores,
        total,
        jobs / total,
        total * 1e3 / jobs
    );
    println!(
        "  ffmpeg floor per job at concurrency {}: {:.1} ms measured (before the run {:.1}, after {:.1}; \
         {:.2}x faster than one at a time); {:.1} ms by arithmetic ({:.1} / min({}, {} cores))",
        sizes.concurrency,
        measured_floor * 1e3,
        before * 1e3,
        after * 1e3,
        floors.ffmpeg_sequential.as_secs_f64() / measured_floor,
        ideal_floor * 1e3,
        ms(floors.ffmpeg_sequential),
        sizes.concurrency,
        sizes.cores,
    );
    println!(
        "  engine overhead per job: ({:.1} s - {} x {:.1} ms) / {} = {:.1} ms, {:.0} % of the total \
         ({:.1} ms with the floor before the run, {:.1} ms with the floor after; \
         with the arithmetic floor, an upper bound: {:.1} ms, {:.0} %)",
        total,
        sizes.jobs,
        measured_floor * 1e3,
        sizes.jobs,
        overhead * 1e3,
        100.0 * overhead * jobs / total,
        overhead_per_job(before) * 1e3,
        overhead_per_job(after) * 1e3,
        overhead_per_job(ideal_floor) * 1e3,
        100.0 * overhead_per_job(ideal_floor) * jobs / total
    );
    // The same question answered inside the run, free of the drift between runs: each job's
    // events say how long it ran (claimed to succeeded) and how long its extract step took. The
    // time outside extract, as a share of the jobs' running time, applied to the wall time per job,
    // is the engine's. It includes time a job spent waiting for a core while other jobs' ffmpeg
    // ran, and the extract step's own work besides ffmpeg.
    let running = attribution.running_ms as f64;
    let outside_extract = 1.0 - attribution.extract_ms as f64 / running;
    let per_job = |ms: i64| ms as f64 / attribution.jobs as f64;
    println!(
        "  in the run, per job (from its events, ms clock): claimed to succeeded {:.1} ms = download {:.1} \
         + extract {:.1} + store {:.1} + the rest {:.1}; outside extract {:.1} % of it, {:.1} ms of wall per job",
        per_job(attribution.running_ms),
        per_job(attribution.download_ms),
        per_job(attribution.extract_ms),
        per_job(attribution.store_ms),
        per_job(
            attribution.running_ms
                - attribution.download_ms
                - attribution.extract_ms
                - attribution.store_ms
        ),
        100.0 * outside_extract,
        outside_extract * total * 1e3 / jobs
    );
    println!(
        "  state store: {:.1} flushes and {:.1} transactions per job; {} downloaded, {} stored",
        counts.flushes as f64 / jobs,
        counts.transactions as f64 / jobs,
        summary.bytes_downloaded,
        summary.bytes_stored
    );
}

/// Where a run's jobs spent their time, from their events (a millisecond clock): claimed to
/// succeeded, and each step within, summed over the jobs.
#[derive(Debug, Default)]
struct Attribution {
    jobs: usize,
    running_ms: i64,
    download_ms: i64,
    extract_ms: i64,
    store_ms: i64,
}

/// The attribution of a backfill's jobs that ran once and succeeded.
async fn attribute(home: &BenchHome, backfill: BackfillId) -> Attribution {
    let store = &home.engine.store;
    let mut attribution = Attribution::default();
    for id in store
        .backfill_jobs(backfill)
        .await
        .expect("the backfill's jobs")
    {
        let mut claimed_at = None;
        let mut step_started_at: BTreeMap<String, i64> = BTreeMap::new();
        for event in store.events(id).await.expect("a job's events") {
            let at = event.at.0;
            match &event.kind {
                EventKind::StatusChanged {
                    to: Status::Running,
                    ..
                } => claimed_at = Some(at),
                EventKind::StatusChanged {
                    to: Status::Succeeded,
                    ..
                } => {
                    if let Some(claimed_at) = claimed_at {
                        attribution.jobs += 1;
                        attribution.running_ms += at - claimed_at;
                    }
                }
                EventKind::StepStarted { step } => {
                    step_started_at.insert(step.clone(), at);
                }
                EventKind::StepCompleted { step, .. } => {
                    let took = at - step_started_at.remove(step).unwrap_or(at);
                    match step.as_str() {
                        "download" => attribution.download_ms += took,
                        "extract" => attribution.extract_ms += took,
                        "store" => attribution.store_ms += took,
                        _ => {}
                    }
                }
                _ => {}
            }
        }
    }
    attribution
}

/// Every regular file under `dir` with its inode, size and mtime (ns): two equal snapshots mean
/// nothing was written.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, u64, i128)> {
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

/// The stored objects by kind (top directory and extension), to show that content was distinct.
fn print_objects(objects: &Path) {
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for path in snapshot(objects).keys() {
        let relative = path.strip_prefix(objects).expect("under the objects root");
        let top = relative
            .components()
            .next()
            .map(|component| component.as_os_str().to_string_lossy().into_owned())
            .unwrap_or_default();
        let extension = path
            .extension()
            .map(|extension| extension.to_string_lossy().into_owned())
            .unwrap_or_default();
        *kinds.entry(format!("{top}/*.{extension}")).or_insert(0) += 1;
    }
    let listed: Vec<String> = kinds
        .iter()
        .map(|(kind, count)| format!("{kind} {count}"))
        .collect();
    println!("  objects stored: {}", listed.join(", "));
}

struct Rerun {
    elapsed: Duration,
    ran: usize,
    recognised: usize,
    objects: usize,
    objects_changed: usize,
    counts: StoreCounts,
}

/// Re-runs the completed backfill `rounds` times; the object root must not change.
async fn rerun(sizes: &Sizes, home: &BenchHome, manifest_path: &Path) -> Rerun {
    let before = snapshot(&home.objects());
    let mut samples = Vec::with_capacity(sizes.rounds);
    let mut last = None;
    for _ in 0..sizes.rounds {
        let (run, counts) = home
            .backfill_counted(manifest_path, sizes.concurrency)
            .await;
        samples.push(run.elapsed);
        last = Some((run, counts));
    }
    let after = snapshot(&home.objects());
    let changed = before
        .iter()
        .filter(|(path, identity)| after.get(*path) != Some(identity))
        .count()
        + after
            .keys()
            .filter(|path| !before.contains_key(*path))
            .count();
    let (run, counts) = last.expect("at least one round");
    Rerun {
        elapsed: median(samples),
        ran: run.summary.ran,
        recognised: run.summary.skipped,
        objects: after.len(),
        objects_changed: changed,
        counts,
    }
}

fn print_rerun(sizes: &Sizes, rerun: &Rerun) {
    println!(
        "re-run of the completed {}-job backfill: {:.1} ms, {:.1} µs per job (median of {}); ran {}, recognised {}",
        sizes.jobs,
        ms(rerun.elapsed),
        rerun.elapsed.as_secs_f64() * 1e6 / sizes.jobs as f64,
        sizes.rounds,
        rerun.ran,
        rerun.recognised
    );
    println!(
        "  object writes: {} of {} objects changed (inode, size, mtime) over {} re-runs; state store {} flushes, {} transactions per re-run",
        rerun.objects_changed,
        rerun.objects,
        sizes.rounds,
        rerun.counts.flushes,
        rerun.counts.transactions
    );
}

struct Submission {
    parse: Duration,
    submit: Duration,
    resubmit: Duration,
    baseline: Duration,
    counts: StoreCounts,
    record_bytes: usize,
}

/// Submits `lines` manifest lines to a fresh store per round (not run), submits them again, and
/// measures the baseline: one plain sled insert per line of a record of the same size, one flush.
async fn submission(sizes: &Sizes, dir: &Path) -> Submission {
    let text: String = (0..sizes.lines)
        .map(|index| format!("https://cdn.example.com/videos/{index}.mp4\n"))
        .collect();
    let path = dir.join("large-manifest.txt");
    std::fs::write(&path, &text).expect("write the manifest");
    let path = path.to_str().expect("a UTF-8 temp path").to_string();
    let name = manifest_name(&path, &text);
    let options = BackfillOptions {
        concurrency: sizes.concurrency,
        ..BackfillOptions::default()
    };
    let (mut parses, mut submits, mut resubmits) = (Vec::new(), Vec::new(), Vec::new());
    let mut counts = StoreCounts::default();
    let mut record = Vec::new();
    for round in 0..sizes.rounds {
        let round_dir = tempfile::tempdir_in(dir).expect("a round directory");
        let home = BenchHome::open(&round_dir.path().join(format!("submit-{round}")));

        let started = Instant::now();
        let manifest = parse_manifest(&path, &text);
        parses.push(started.elapsed());

        let before = home.counts();
        let started = Instant::now();
        let submitted = submit_manifest(&home.engine, &name, &manifest, &options)
            .await
            .expect("submit the manifest");
        submits.push(started.elapsed());
        let after = home.counts();
        counts = StoreCounts {
            flushes: after.flushes - before.flushes,
            transactions: after.transactions - before.transactions,
        };
        assert_eq!(submitted.to_run(), sizes.lines, "every line is a new job");

        let started = Instant::now();
        let again = submit_manifest(&home.engine, &name, &manifest, &options)
            .await
            .expect("submit the manifest again");
        resubmits.push(started.elapsed());
        assert_eq!(again.jobs(), sizes.lines, "the same jobs");

        if record.is_empty() {
            let job = home
                .engine
                .store
                .jobs(&JobFilter {
                    status: None,
                    limit: 1,
                })
                .await
                .expect("list a job")
                .pop()
                .expect("a submitted job");
            record = narra::store::codec::encode(&job).expect("encode a job");
        }
    }

    let mut baselines = Vec::new();
    for _ in 0..sizes.rounds {
        let round_dir = tempfile::tempdir_in(dir).expect("a round directory");
        let db = sled::Config::new()
            .path(round_dir.path().join("sled"))
            .cache_capacity(DEFAULT_CACHE_CAPACITY_BYTES)
            .open()
            .expect("open a sled database");
        let tree = db.open_tree("jobs").expect("a tree");
        let started = Instant::now();
        for index in 0..sizes.lines {
            let key = format!("ingest:https://cdn.example.com/videos/{index}.mp4");
            tree.insert(key.as_bytes(), record.as_slice())
                .expect("a sled insert");
        }
        db.flush().expect("a sled flush");
        baselines.push(started.elapsed());
    }

    Submission {
        parse: median(parses),
        submit: median(submits),
        resubmit: median(resubmits),
        baseline: median(baselines),
        counts,
        record_bytes: record.len(),
    }
}

fn print_submission(sizes: &Sizes, submission: &Submission) {
    let both = submission.parse + submission.submit;
    println!(
        "submission of {} manifest lines (parse and submit_manifest, not run): {:.0} ms, {:.0} lines/s \
         (parse {:.0} ms, submit {:.0} ms; median of {}); {} flushes, {} transactions",
        sizes.lines,
        ms(both),
        per_second(sizes.lines, both),
        ms(submission.parse),
        ms(submission.submit),
        sizes.rounds,
        submission.counts.flushes,
        submission.counts.transactions
    );
    println!(
        "  baseline: {} plain sled inserts of a {}-byte record + one flush: {:.0} ms, {:.0} inserts/s; ratio submission/baseline time {:.1}",
        sizes.lines,
        submission.record_bytes,
        ms(submission.baseline),
        per_second(sizes.lines, submission.baseline),
        both.as_secs_f64() / submission.baseline.as_secs_f64()
    );
    println!(
        "  the same {} lines submitted again (every job exists, as in a re-run): {:.0} ms, {:.0} lines/s",
        sizes.lines,
        ms(submission.resubmit),
        per_second(sizes.lines, submission.resubmit)
    );
}
