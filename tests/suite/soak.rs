//! The kill -9 soak: a backfill run by `narra worker --drain`, SIGKILLed again and again at seeded
//! pseudo-random moments and restarted each time.
//!
//! Guards crash-safe ingestion under load: whatever work was in flight at each kill, every job ends
//! succeeded, `verify` and `audit` are clean, no download whose checkpoint was recorded is fetched
//! again, and no stored object is written twice.
//!
//! `NARRA_SOAK_JOBS` (default 45) and `NARRA_SOAK_KILLS` (default 20) size it; `NARRA_SOAK_SEED`
//! (default 6) picks the kill moments. A kill comes after the home has made 0 to 3 observable
//! steps of progress since the last start (a request reached the origin, a scratch file or an
//! object appeared), so every wait is on an event, never on a clock.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::fixture::{FileIdentity, Home, file_snapshot, generate, id_of, wait_until};

const JOBS_DEFAULT: usize = 45;
const KILLS_DEFAULT: usize = 20;
const SEED_DEFAULT: u64 = 6;
/// Every `FLAKY_EVERY`-th source drops its connection halfway through the body, once.
const FLAKY_EVERY: usize = 5;
const CONCURRENCY: &str = "3";
/// The flapping-worker case runs 4 jobs at once, as the attack did.
const FLAP_CONCURRENCY: &str = "4";

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text} is not a number")),
        Err(_) => default,
    }
}

/// splitmix64: a seeded, reproducible sequence with no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

#[derive(Default)]
struct OriginState {
    files: Mutex<HashMap<String, Arc<Vec<u8>>>>,
    /// Paths that drop the connection halfway through their next body.
    flaky: Mutex<HashSet<String>>,
    requests: AtomicUsize,
    bytes_sent: AtomicU64,
    gets: Mutex<BTreeMap<String, usize>>,
}

/// A loopback origin serving generated videos, some of which drop mid-body once.
struct SoakOrigin {
    addr: std::net::SocketAddr,
    state: Arc<OriginState>,
    _runtime: tokio::runtime::Runtime,
}

impl SoakOrigin {
    fn start() -> SoakOrigin {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let state = Arc::new(OriginState::default());
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
        SoakOrigin {
            addr,
            state,
            _runtime: runtime,
        }
    }

    fn put(&self, path: &str, bytes: Arc<Vec<u8>>, flaky: bool) -> String {
        self.state
            .files
            .lock()
            .unwrap()
            .insert(path.to_string(), bytes);
        if flaky {
            self.state.flaky.lock().unwrap().insert(path.to_string());
        }
        format!("http://{}/{path}", self.addr)
    }

    fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }
}

async fn serve(State(state): State<Arc<OriginState>>, UrlPath(path): UrlPath<String>) -> Response {
    state.requests.fetch_add(1, Ordering::SeqCst);
    *state.gets.lock().unwrap().entry(path.clone()).or_default() += 1;
    let Some(bytes) = state.files.lock().unwrap().get(&path).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let drop_at = state
        .flaky
        .lock()
        .unwrap()
        .remove(&path)
        .then_some(bytes.len() / 2);
    let length = bytes.len();
    let stop = drop_at.unwrap_or(length);
    state.bytes_sent.fetch_add(stop as u64, Ordering::SeqCst);
    let head = bytes::Bytes::copy_from_slice(&bytes[..stop]);
    let dropping = drop_at.is_some();
    let stream = futures::stream::unfold(0u8, move |stage| {
        let head = head.clone();
        async move {
            match stage {
                0 => Some((Ok(head), 1)),
                1 if dropping => {
                    // Let the server write what it has, then fail the body: it drops the
                    // connection.
                    tokio::task::yield_now().await;
                    let error = std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "soak: dropped mid-body",
                    );
                    Some((Err(error), 2))
                }
                _ => None,
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_LENGTH, length)
        .header(header::CONTENT_TYPE, "video/mp4")
        .body(Body::from_stream(stream))
        .expect("a valid response")
}

/// Every file path ever seen under the home's scratch and objects directories: a counter of
/// progress that only grows, even as scratch directories are removed.
struct Progress {
    seen: HashSet<PathBuf>,
}

impl Progress {
    fn observe(&mut self, home: &Home) -> usize {
        for dir in [home.path().join("scratch"), home.objects()] {
            collect_files(&dir, &mut self.seen);
        }
        self.seen.len()
    }
}

/// Where a job stood when its process was killed, as the crash-loop rule sees it: its phase, how
/// many checkpoints it had, and its recorded byte offset.
fn marker(home: &Home, id: &str) -> (Value, usize, Value) {
    let show = home.show(id);
    (
        show["ingestion_phase"].clone(),
        show["checkpoints"].as_array().map_or(0, Vec::len),
        show["progress"]["bytes_done"].clone(),
    )
}

/// Whether a job has stored everything and let go of its scratch space (its store checkpoint is
/// recorded): it cannot die at its old point again.
fn stored(home: &Home, id: &str) -> bool {
    home.objects()
        .join(format!("jobs/{id}/manifest.json"))
        .exists()
        && !home.path().join("scratch").join(id).exists()
}

fn collect_files(dir: &Path, seen: &mut HashSet<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(kind) if kind.is_dir() => collect_files(&path, seen),
            Ok(_) => {
                seen.insert(path);
            }
            Err(_) => {}
        }
    }
}

fn jobs(home: &Home, status: Option<&str>) -> Vec<Value> {
    let mut args = vec!["jobs", "--limit", "100000"];
    if let Some(status) = status {
        args.extend(["--status", status]);
    }
    home.json(&args, 0)
        .as_array()
        .expect("a list of jobs")
        .clone()
}

/// The stored objects but the fs backend's temp directory.
fn objects(home: &Home) -> BTreeMap<PathBuf, FileIdentity> {
    if !home.objects().exists() {
        return BTreeMap::new();
    }
    let temp = home.objects().join(narra::storage::FS_ATOMIC_WRITE_DIR);
    file_snapshot(&home.objects())
        .into_iter()
        .filter(|(path, _)| !path.starts_with(&temp))
        .collect()
}

/// A generated video of `seconds` with a tone of `frequency`, shared by the soak's jobs.
fn soak_video(seconds: f64, frequency: u32) -> Arc<Vec<u8>> {
    let path = generate(&format!("soak-{frequency}.mp4"), seconds, frequency);
    Arc::new(std::fs::read(path).expect("read a generated video"))
}

/// Runs a last worker until nothing is left, and lists every job: as many as were submitted.
fn drain_and_list(home: &Home, concurrency: &str, jobs_total: usize) -> Vec<Value> {
    let finished = home
        .command(&["worker", "--drain", "--concurrency", concurrency])
        .output()
        .expect("narra runs");
    assert!(
        finished.status.success(),
        "the last worker finished: {}",
        String::from_utf8_lossy(&finished.stderr)
    );
    let all = jobs(home, None);
    assert_eq!(all.len(), jobs_total, "no job lost, none duplicated");
    all
}

fn assert_verify_clean(home: &Home) {
    let verify = home.narra(&["verify"]);
    assert!(
        verify.status.success(),
        "verify is clean:\n{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

#[test]
fn a_backfill_killed_again_and_again_ends_with_every_job_succeeded() {
    let jobs_total = env_number("NARRA_SOAK_JOBS", JOBS_DEFAULT as u64) as usize;
    let kills_total = env_number("NARRA_SOAK_KILLS", KILLS_DEFAULT as u64) as usize;
    let seed = env_number("NARRA_SOAK_SEED", SEED_DEFAULT);
    let mut rng = Rng(seed);

    // Mixed sizes: six distinct videos (1, 2 and 4 s, two tones each), shared by the jobs, so
    // identical media from different jobs is one blob written once.
    let videos: Vec<Arc<Vec<u8>>> = [
        (1.0, 330),
        (2.0, 440),
        (4.0, 550),
        (1.0, 660),
        (2.0, 770),
        (4.0, 880),
    ]
    .iter()
    .map(|&(seconds, frequency)| soak_video(seconds, frequency))
    .collect();
    let origin = SoakOrigin::start();
    let mut sources = Vec::with_capacity(jobs_total);
    let mut bytes_needed = 0u64;
    for index in 0..jobs_total {
        let video = videos[index % videos.len()].clone();
        bytes_needed += video.len() as u64;
        let flaky = index % FLAKY_EVERY == FLAKY_EVERY - 1;
        sources.push(origin.put(&format!("backfill/{index}.mp4"), video, flaky));
    }

    let home = Home::new();
    let mut submit = vec!["submit"];
    submit.extend(sources.iter().map(String::as_str));
    let submitted = home.json(&submit, 0);
    assert_eq!(submitted.as_array().map(Vec::len), Some(jobs_total));

    let mut progress = Progress {
        seen: HashSet::new(),
    };
    let mut kills_by_phase = BTreeMap::<String, usize>::new();
    let mut kills = 0;
    let mut restarts_without_kill = 0;
    // The first identity each object was seen with: a later change is a rewrite.
    let mut first_seen = BTreeMap::<PathBuf, FileIdentity>::new();
    // Each job the kills interrupted: where it stood when last killed, and how many kills in a row
    // found it there. The crash-loop rule quarantines a job after its third death at the same
    // point, so a job killed twice in a row at one point finishes storing before the next kill:
    // the soak tests recovery from unrelated restarts, not a crash storm (`scheduling.rs` tests
    // the quarantine).
    let mut interrupted: HashMap<String, ((Value, usize, Value), u32)> = HashMap::new();
    while kills < kills_total {
        let mut worker = home.spawn(&["worker", "--drain", "--concurrency", CONCURRENCY]);
        // Beyond the progress each interrupted job must make, at most one more file.
        let steps = rng.below(2) as usize;
        let target_files = progress.observe(&home) + steps;
        let target_requests = origin.requests() + usize::from(steps > 0 && rng.below(2) == 0);
        let mut exited = None;
        wait_until("the worker makes progress or exits", || {
            if let Some(status) = worker.has_exited() {
                exited = Some(status);
                return true;
            }
            progress.observe(&home) >= target_files
                && origin.requests() >= target_requests
                && interrupted
                    .iter()
                    .all(|(id, (_, stalled))| *stalled < 2 || stored(&home, id))
        });
        if let Some(status) = exited {
            // The backfill finished before this kill: nothing is left to interrupt.
            assert!(status.success(), "the worker exited {status}");
            restarts_without_kill += 1;
            assert!(
                jobs(&home, Some("pending")).is_empty(),
                "a draining worker exits only when nothing is pending"
            );
            break;
        }
        worker.kill();
        kills += 1;
        let running = jobs(&home, Some("running"));
        for job in &running {
            let id = job["id"].as_str().expect("an id").to_string();
            let at = marker(&home, &id);
            let stalled = match interrupted.get(&id) {
                Some((before, stalled)) if *before == at => stalled + 1,
                _ => 1,
            };
            interrupted.insert(id, (at, stalled));
        }
        if running.is_empty() {
            *kills_by_phase.entry("between jobs".into()).or_default() += 1;
        }
        for job in &running {
            let phase = job["ingestion_phase"]
                .as_str()
                .unwrap_or("claimed (no phase)");
            *kills_by_phase.entry(phase.to_string()).or_default() += 1;
        }
        for (path, identity) in objects(&home) {
            first_seen.entry(path).or_insert(identity);
        }
    }
    let all = drain_and_list(&home, CONCURRENCY, jobs_total);
    let not_succeeded: Vec<&Value> = all
        .iter()
        .filter(|job| job["status"] != "succeeded")
        .collect();
    assert!(
        not_succeeded.is_empty(),
        "every job succeeded: {not_succeeded:?}"
    );
    assert!(
        kills == kills_total,
        "the backfill ended after {kills} of {kills_total} kills: give it more jobs (NARRA_SOAK_JOBS)"
    );

    assert_verify_clean(&home);
    let audit = home.json(&["audit"], 0);
    let violations: u64 = audit
        .as_array()
        .expect("audits")
        .iter()
        .map(|job| job["violations"].as_u64().expect("a count"))
        .sum();
    assert_eq!(violations, 0, "audit is clean: {audit}");

    // Figures, and the promises behind them, from every job's history.
    let mut steps_run = 0usize;
    let mut steps_skipped = 0usize;
    let mut written = BTreeMap::<String, usize>::new();
    for job in &all {
        let show = home.show(&id_of(job));
        let mut download_checkpointed = false;
        for event in show["events"].as_array().expect("events") {
            let step = event["step"].as_str().unwrap_or_default();
            match event["kind"].as_str().unwrap_or_default() {
                "step_started" => {
                    steps_run += 1;
                    assert!(
                        !(step == "download" && download_checkpointed),
                        "job {}: downloaded again after its download checkpoint",
                        id_of(job)
                    );
                }
                "step_skipped" => steps_skipped += 1,
                "checkpoint_recorded" if step == "download" => download_checkpointed = true,
                "objects_written" => {
                    for key in event["keys"].as_array().expect("keys") {
                        *written
                            .entry(key.as_str().expect("a key").to_string())
                            .or_default() += 1;
                    }
                }
                _ => {}
            }
        }
    }
    let objects_rewritten_by_history = written.values().filter(|&&count| count > 1).count();
    let final_objects = objects(&home);
    let objects_rewritten_on_disk = first_seen
        .iter()
        .filter(|(path, identity)| final_objects.get(*path) != Some(identity))
        .count();
    assert_eq!(
        objects_rewritten_by_history, 0,
        "objects written twice: {written:?}"
    );
    assert_eq!(
        objects_rewritten_on_disk, 0,
        "objects stored before a kill were rewritten"
    );
    // A kill in the middle of an object write leaves its temp file, never an object at the key:
    // cleanup finds those as partial writes, and nothing else to delete or reset.
    let temp = home.objects().join(narra::storage::FS_ATOMIC_WRITE_DIR);
    let partials = if temp.exists() {
        file_snapshot(&temp).len()
    } else {
        0
    };
    let plan = home.json(&["cleanup", "--min-age-s", "0"], 0);
    let deletions = plan["deletions"].as_array().expect("deletions");
    assert_eq!(
        deletions.len(),
        partials,
        "cleanup plans the partial writes: {plan}"
    );
    assert!(
        deletions
            .iter()
            .all(|deletion| deletion["reason"] == "partial"),
        "cleanup finds nothing but partial writes: {plan}"
    );
    assert_eq!(
        plan["resets"],
        serde_json::json!([]),
        "no job to reset: {plan}"
    );
    if partials > 0 {
        let plan_id = plan["id"].as_str().expect("a plan id");
        home.json(&["cleanup", "--min-age-s", "0", "--confirm", plan_id], 0);
        assert!(
            file_snapshot(&temp).is_empty(),
            "cleanup removed the partial writes"
        );
    }
    let gets: usize = origin.state.gets.lock().unwrap().values().sum();
    let bytes_sent = origin.state.bytes_sent.load(Ordering::SeqCst);
    let flaky_total = jobs_total / FLAKY_EVERY;

    eprintln!("\nkill -9 soak: seed {seed}, {jobs_total} jobs, {kills} kills");
    eprintln!(
        "  jobs succeeded             {}",
        all.len() - not_succeeded.len()
    );
    eprintln!("  kills by phase (jobs in flight at each kill):");
    for (phase, count) in &kills_by_phase {
        eprintln!("    {phase:<24} {count}");
    }
    eprintln!("  worker runs that finished before a kill  {restarts_without_kill}");
    eprintln!(
        "  step runs                  {steps_run} (of {} steps: {} resumed after a kill or a drop)",
        jobs_total * 3,
        steps_run.saturating_sub(jobs_total * 3)
    );
    eprintln!("  steps skipped as done      {steps_skipped}");
    eprintln!(
        "  origin GETs                {gets} for {jobs_total} sources ({flaky_total} flaky, dropping once)"
    );
    eprintln!(
        "  bytes re-downloaded        {} (sent {bytes_sent}, needed {bytes_needed}; all of it work whose download had no checkpoint)",
        bytes_sent.saturating_sub(bytes_needed)
    );
    eprintln!(
        "  objects rewritten          {objects_rewritten_on_disk} on disk, {objects_rewritten_by_history} in the histories"
    );
    eprintln!(
        "  partial writes left        {partials} (temp files of writes cut by a kill; cleanup removed them)"
    );
    let distinct: BTreeSet<&PathBuf> = final_objects.keys().collect();
    eprintln!("  objects stored             {}", distinct.len());
}

/// Whether a job this worker runs has recorded a checkpoint since it was first seen running, or
/// succeeded. `seen` keeps each running job's checkpoint count as first seen (its phase would not
/// do: a resumed job passes through the phases of the steps it skips). A list that cannot be read
/// (the worker exiting between the check and the request) is no news.
fn a_running_job_progressed(home: &Home, seen: &mut HashMap<String, usize>) -> bool {
    let read = |args: &[&str]| {
        let output = home.command(args).output().expect("narra runs");
        serde_json::from_slice::<Value>(&output.stdout).ok()
    };
    let Some(Value::Array(listed)) = read(&["--json", "jobs", "--limit", "100000"]) else {
        return false;
    };
    let mut progressed = false;
    for job in &listed {
        let id = id_of(job);
        match job["status"].as_str() {
            Some("running") => {
                let Some(show) = read(&["--json", "show", &id]) else {
                    continue;
                };
                let checkpoints = show["checkpoints"].as_array().map_or(0, Vec::len);
                match seen.get(&id) {
                    Some(first) if checkpoints > *first => progressed = true,
                    Some(_) => {}
                    None => {
                        seen.insert(id, checkpoints);
                    }
                }
            }
            Some("succeeded") if seen.contains_key(&id) => progressed = true,
            _ => {}
        }
    }
    progressed
}

/// The flapping worker: `NARRA_SOAK_FLAP_KILLS` (default 12) kill -9 of a worker running 4 jobs
/// at once, during a backfill of `NARRA_SOAK_FLAP_JOBS` (default 480) healthy jobs, each kill
/// coming as soon as the worker is seen to have moved a job past a checkpoint: later after its
/// start than one step of a job running alone (a suspect's step, which is the first to end), and
/// sooner than a whole job. Kills are placed by what the worker did, not by a clock, so a loaded
/// machine that runs every step slower changes nothing.
///
/// Guards the attribution of deaths (`model::attribution`): a death of a process that held
/// several jobs charges none of them; they become suspects and run alone until their next
/// checkpoint. So healthy jobs killed again and again beside others are never quarantined as
/// `crash_loop`, and all succeed. (Before attribution, every job in flight was charged with every
/// death, and bystanders were quarantined.)
#[test]
fn a_flapping_worker_quarantines_no_healthy_job() {
    let jobs_total = env_number("NARRA_SOAK_FLAP_JOBS", 480) as usize;
    let kills_total = env_number("NARRA_SOAK_FLAP_KILLS", 12) as usize;
    let started = std::time::Instant::now();

    let videos: Vec<Arc<Vec<u8>>> = [(1.0, 330), (2.0, 440), (4.0, 550)]
        .iter()
        .map(|&(seconds, frequency)| soak_video(seconds, frequency))
        .collect();
    let origin = SoakOrigin::start();

    let sources: Vec<String> = (0..jobs_total)
        .map(|index| {
            let video = videos[index % videos.len()].clone();
            origin.put(&format!("flap/{index}.mp4"), video, false)
        })
        .collect();
    let home = Home::new();
    let mut submit = vec!["submit"];
    submit.extend(sources.iter().map(String::as_str));
    let submitted = home.json(&submit, 0);
    assert_eq!(submitted.as_array().map(Vec::len), Some(jobs_total));

    let mut kills = 0;
    let mut in_flight_at_kills = Vec::new();
    while kills < kills_total {
        let stale = home.socket_id();
        let mut worker = home.spawn(&["worker", "--drain", "--concurrency", FLAP_CONCURRENCY]);
        let mut seen = HashMap::new();
        let mut exited = None;
        // Polls, not a wait for a moment: the kill comes at the first sight of progress.
        loop {
            if let Some(status) = worker.has_exited() {
                exited = Some(status);
                break;
            }
            // Until the worker holds the home, a command on it would take the home itself.
            if home.held_by(&worker, stale) && a_running_job_progressed(&home, &mut seen) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if let Some(status) = exited {
            assert!(status.success(), "the worker exited {status}");
            break;
        }
        worker.kill();
        kills += 1;
        in_flight_at_kills.push(jobs(&home, Some("running")).len());
    }
    let all = drain_and_list(&home, FLAP_CONCURRENCY, jobs_total);
    let quarantined: Vec<&Value> = all
        .iter()
        .filter(|job| job["error"]["class"] == "crash_loop")
        .collect();
    let not_succeeded = all
        .iter()
        .filter(|job| job["status"] != "succeeded")
        .count();
    eprintln!(
        "\nflapping worker: {jobs_total} jobs at concurrency {FLAP_CONCURRENCY}, {kills} kills, \
         each at the first checkpoint seen after the worker's start (jobs in flight at each kill: \
         {in_flight_at_kills:?}); {} quarantined, {} not succeeded; {:.1} s",
        quarantined.len(),
        not_succeeded,
        started.elapsed().as_secs_f64()
    );
    assert!(
        quarantined.is_empty(),
        "{} of {jobs_total} healthy jobs quarantined as crash_loop: {quarantined:?}",
        quarantined.len()
    );
    assert_eq!(not_succeeded, 0, "every job succeeded: {all:?}");
    assert_eq!(
        kills, kills_total,
        "the backfill ended after {kills} of {kills_total} kills: give it more jobs (NARRA_SOAK_FLAP_JOBS)"
    );
    assert_verify_clean(&home);
}
