//! Progress of the extract and store steps, observed in the state store while a real job runs in
//! this process: the record starts at zero as a step begins and moves with the bytes the step
//! writes, so `jobs --stuck` and crash-loop detection can tell a working step from a dead one.
//!
//! The first test's job runs on an engine opened in-process (the home's store cannot be read by a second
//! process while a worker holds it), with ffmpeg behind a wrapper that waits at two gates the test
//! opens: before ffmpeg starts and after it ended, while the extract step is still running. The
//! gates make the observations deterministic without sleeps or a slow input. The views are
//! checked through the binary on jobs a failpoint stopped inside a step.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use narra::engine::Engine;
use narra::engine::orchestrator::{SubmitOptions, run_job, submit};
use narra::model::job::{JobId, JobProgress, Location, Phase, Status};
use narra::steps::extract::Tools;
use narra::steps::net::NetworkPolicy;
use narra::storage::Storage;
use narra::store::SledStore;
use narra::store::sled_store::DEFAULT_CACHE_CAPACITY_BYTES;
use narra::workflow::WorkflowRegistry;

use serde_json::Value;

use super::fixture::{Home, generate, id_of, sample_video, step_output, wait_until};

/// A FIFO the wrapper reads one line from before going on.
struct Gate {
    path: PathBuf,
}

impl Gate {
    fn new(dir: &Path, name: &str) -> Gate {
        let path = dir.join(name);
        let status = Command::new("mkfifo").arg(&path).status().expect("mkfifo");
        assert!(status.success(), "mkfifo {}", path.display());
        Gate { path }
    }

    /// Waits until the wrapper waits at this gate (a non-blocking open for writing succeeds only
    /// once a reader has the FIFO open), failing at once if the job ended instead.
    fn wait_for_arrival(&self, job_ended: impl Fn() -> bool) -> std::fs::File {
        let mut opened = None;
        wait_until(
            &format!("ffmpeg's wrapper waits at {}", self.path.display()),
            || {
                assert!(!job_ended(), "the job ended before ffmpeg reached the gate");
                opened = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&self.path)
                    .ok();
                opened.is_some()
            },
        );
        opened.expect("opened")
    }

    fn open(mut writer: std::fs::File) {
        writer.write_all(b"go\n").expect("open the gate");
    }
}

/// A script that runs the real ffmpeg between two gates.
fn gated_ffmpeg(dir: &Path, start: &Gate, end: &Gate) -> PathBuf {
    let path = dir.join("ffmpeg-gated");
    let script = format!(
        "#!/bin/sh\nread _ < '{}'\nffmpeg \"$@\"\nstatus=$?\nread _ < '{}'\nexit $status\n",
        start.path.display(),
        end.path.display()
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn open_engine(home: &Home, tools: Tools) -> Engine {
    let store = SledStore::open(&home.path().join("state"), DEFAULT_CACHE_CAPACITY_BYTES)
        .expect("open the state store");
    let storage =
        Storage::from_uri(&format!("fs://{}", home.objects().display())).expect("the storage");
    let workflows = WorkflowRegistry::load(None).expect("the built-in workflows");
    let mut engine = Engine::new(
        Arc::new(store),
        storage,
        workflows,
        &home.path(),
        NetworkPolicy::from_env(),
    );
    engine.tools = tools;
    engine
}

/// The job's phase and progress record, read together from the store.
fn observe(
    runtime: &tokio::runtime::Runtime,
    engine: &Engine,
    id: JobId,
) -> (Option<Phase>, Option<JobProgress>) {
    runtime.block_on(async {
        let job = engine.store.job(id).await.unwrap().expect("the job");
        let progress = engine.store.progress(id).await.unwrap();
        (job.ingestion_phase, progress)
    })
}

// Guards extract-step progress: as extraction begins the record is reset to zero (off the
// download's final figure), and while the step still runs it reaches exactly the bytes ffmpeg
// reported writing on its `-progress` pipe, without going backwards. Then guards store-step
// progress: the finished job's record is the store step's, every blob's bytes of the total done.
#[test]
fn extraction_progress_moves_with_the_bytes_ffmpeg_writes_while_the_step_runs() {
    let home = Home::new();
    let gates = tempfile::tempdir().unwrap();
    let start = Gate::new(gates.path(), "start.fifo");
    let end = Gate::new(gates.path(), "end.fifo");
    let tools = Tools {
        ffmpeg: gated_ffmpeg(gates.path(), &start, &end),
        ffprobe: PathBuf::from("ffprobe"),
        ..Tools::default()
    };
    let video = generate("progress.mp4", 60.0, 330);
    let video_size = std::fs::metadata(&video).unwrap().len();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let engine = open_engine(&home, tools);
    let options = SubmitOptions {
        workflow: Some("asr".into()),
        ..SubmitOptions::default()
    };
    let source = video.display().to_string();
    let submitted = runtime
        .block_on(submit(&engine.orchestrator(), &[source], &options))
        .expect("submitted");
    let id = submitted[0].job.id;
    let running = runtime.spawn({
        let engine = engine.clone();
        async move { run_job(&engine.orchestrator(), id).await }
    });

    // At the start gate the step runs and ffmpeg has not written a byte.
    let start_writer = start.wait_for_arrival(|| running.is_finished());
    let (phase, progress) = observe(&runtime, &engine, id);
    assert_eq!(phase, Some(Phase::Processing));
    let progress = progress.expect("a progress record");
    assert_eq!(
        (progress.bytes_done, progress.bytes_total),
        (0, None),
        "extraction starts at zero, not at the download's {video_size} bytes: {progress:?}"
    );
    Gate::open(start_writer);

    // At the end gate ffmpeg is done but the step is not: the audio is written, unchecked.
    let end_writer = end.wait_for_arrival(|| running.is_finished());
    let written = std::fs::metadata(engine.scratch_dir(id).join("tmp-audio.flac"))
        .expect("ffmpeg wrote the audio")
        .len();
    assert!(written > 0);
    let mut seen = Vec::new();
    wait_until("the progress record reaches what ffmpeg wrote", || {
        let (phase, progress) = observe(&runtime, &engine, id);
        assert_eq!(phase, Some(Phase::Processing), "the step still runs");
        let progress = progress.expect("a progress record");
        assert_eq!(progress.bytes_total, None, "{progress:?}");
        seen.push(progress.bytes_done);
        progress.bytes_done == written
    });
    assert!(
        seen.windows(2).all(|pair| pair[0] <= pair[1]),
        "bytes_done never goes backwards: {seen:?}"
    );
    Gate::open(end_writer);

    let job = runtime
        .block_on(running)
        .expect("the job task")
        .expect("the job ran");
    assert_eq!(job.status, Status::Succeeded, "{:?}", job.error);
    let checkpoints = runtime.block_on(engine.store.checkpoints(id)).unwrap();
    let stored = checkpoints
        .iter()
        .find(|checkpoint| checkpoint.step == "store")
        .expect("a store checkpoint");
    let blob_bytes: u64 = stored
        .outputs
        .iter()
        .filter(
            |output| matches!(&output.location, Location::Object(key) if key.starts_with("blobs/")),
        )
        .filter(|output| output.name != "metadata")
        .map(|output| output.size)
        .sum();
    assert_eq!(
        blob_bytes,
        video_size + written,
        "the video and the audio as ffmpeg wrote it"
    );
    let (phase, progress) = observe(&runtime, &engine, id);
    assert_eq!(phase, None);
    let progress = progress.expect("a progress record");
    assert_eq!(
        (progress.bytes_done, progress.bytes_total),
        (blob_bytes, Some(blob_bytes)),
        "the store step's final figures: {progress:?}"
    );
}

/// Runs `ingest SOURCE` until the failpoint `stop` aborts it: the job is left running where it
/// stopped, with the progress record the step left.
fn ingest_until(home: &Home, source: &Path, stop: &str) -> String {
    let output = home
        .command(&["ingest", &source.display().to_string()])
        .env(narra::failpoint::FAILPOINT_ENV, stop)
        .output()
        .expect("narra runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("narra: failpoint fired: {stop}")),
        "{stderr}"
    );
    let jobs = home.json(&["jobs"], 0);
    id_of(&jobs[0])
}

fn text(home: &Home, args: &[&str]) -> String {
    let output = home.narra(args);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    String::from_utf8(output.stdout).expect("UTF-8")
}

// Guards the views: a job stopped in the extract step and one stopped in the store step show their
// progress labelled by phase in `show` and `jobs`, and name the step in `--json`, with the figures
// each step left: the audio written (no total), and every blob of the total stored.
#[test]
fn show_and_jobs_label_progress_by_the_step_it_belongs_to() {
    let extracting = Home::new();
    let id = ingest_until(&extracting, sample_video(), "extract.checkpoint.before");
    let show = extracting.show(&id);
    assert_eq!(show["ingestion_phase"], "processing");
    // The sample's AAC is copied into M4A.
    let audio = extracting
        .path()
        .join("scratch")
        .join(&id)
        .join("audio.m4a");
    assert!(
        show["checkpoints"]
            .as_array()
            .unwrap()
            .iter()
            .all(|checkpoint| checkpoint["step"] != "extract"),
        "stopped before the extract checkpoint"
    );
    let audio_size = std::fs::metadata(&audio)
        .expect("the extracted audio")
        .len();
    let progress = &show["progress"];
    assert_eq!(progress["step"], "extract", "{progress}");
    assert_eq!(progress["bytes_done"], audio_size, "{progress}");
    assert_eq!(progress["bytes_total"], Value::Null, "{progress}");
    let shown = text(&extracting, &["show", &id]);
    let line = shown
        .lines()
        .find(|line| line.starts_with("progress "))
        .unwrap_or_else(|| panic!("a progress line in:\n{shown}"));
    assert!(
        line.contains("extracting: ") && line.contains(" MiB written at "),
        "{line}"
    );
    assert!(
        text(&extracting, &["jobs"]).contains("  extracting: "),
        "{}",
        text(&extracting, &["jobs"])
    );

    let storing = Home::new();
    let id = ingest_until(&storing, sample_video(), "store.checkpoint.before");
    let show = storing.show(&id);
    assert_eq!(show["ingestion_phase"], "storing");
    let video_size = std::fs::metadata(sample_video()).unwrap().len();
    let audio_size = step_output(&show, "extract", "audio")["size"]
        .as_u64()
        .expect("a size");
    let progress = &show["progress"];
    assert_eq!(progress["step"], "store", "{progress}");
    assert_eq!(
        progress["bytes_done"],
        video_size + audio_size,
        "{progress}"
    );
    assert_eq!(
        progress["bytes_total"],
        video_size + audio_size,
        "{progress}"
    );
    let jobs = storing.json(&["jobs"], 0);
    assert_eq!(jobs[0]["progress"], *progress);
    let listed = text(&storing, &["jobs"]);
    assert!(
        listed.contains("  storing ") && listed.contains("(100%)"),
        "{listed}"
    );
}
