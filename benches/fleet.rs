//! Fleet figures: claims per second and jobs per second on one PostgreSQL state store, with 1, 2
//! and 4 claimers or workers, each against the 1 measured in the same run.
//!
//! Run with `cargo bench --bench fleet`. Prints figures and ratios; asserts nothing about time.
//! The PostgreSQL server is `NARRA_TEST_POSTGRES_URL`'s (what `.ci/setup` starts) or, without it, a
//! throwaway cluster this bench starts (`pg_store::test_server`); every round gets a fresh schema.
//!
//! 1. Claims: `NARRA_BENCH_CLAIMS` (2,000) jobs submitted, then K concurrent claimers (K = 1, 2,
//!    4), each with a store of its own (a pool, as a process has), loop `claim_next` and
//!    `complete` through the `StateStore` API until nothing is left. Claims/s is jobs / wall time;
//!    the median of `NARRA_BENCH_ROUNDS` (3) rounds is printed. Claims are serialized by the
//!    store's claim lock (`docs/DEPLOYMENT.md`), so this is the fleet's claim ceiling.
//! 2. Jobs: `NARRA_BENCH_FLEET_JOBS` (60) distinct half-second clips (one ffmpeg run cut into
//!    segments; local files as sources), submitted, then W `narra worker --concurrency
//!    NARRA_BENCH_WORKER_CONCURRENCY` (2) processes (W = 1, 2, 4; the release binary, one home
//!    each, one shared `fs://` storage) run them; jobs/s is jobs / the time from the workers'
//!    start to the last job's success (read from the store every 20 ms). Every job runs ffmpeg
//!    and ffprobe: on a machine with few cores, the workers share them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use narra::model::job::{Status, WorkerId};
use narra::model::scheduling::SchedulingPolicy;
use narra::store::pg_store::PgStore;
use narra::store::pg_store::test_server::TestServer;
use narra::store::{
    ClaimNext, ClaimRequest, JobFilter, JobReader, OrchestratorStore, SubmitRequest,
};

const COUNTS: [usize; 3] = [1, 2, 4];

fn env_number(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text} is not a number")),
        Err(_) => default,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let claims_jobs = env_number("NARRA_BENCH_CLAIMS", 2000);
    let rounds = env_number("NARRA_BENCH_ROUNDS", 3).max(1);
    let fleet_jobs = env_number("NARRA_BENCH_FLEET_JOBS", 60);
    let concurrency = env_number("NARRA_BENCH_WORKER_CONCURRENCY", 2);
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let server = runtime.block_on(TestServer::start());
    println!(
        "fleet bench: {} cores, load average {}, PostgreSQL {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        load_average(),
        if std::env::var("NARRA_TEST_POSTGRES_URL").is_ok() {
            "from NARRA_TEST_POSTGRES_URL"
        } else {
            "throwaway cluster"
        }
    );

    println!("\nclaims: {claims_jobs} jobs, claim_next + complete, median of {rounds} rounds");
    let mut baseline = None;
    for claimers in COUNTS {
        let per_round: Vec<f64> = (0..rounds)
            .map(|_| runtime.block_on(claims_round(&server, claims_jobs, claimers)))
            .collect();
        let claims_per_s = median(per_round);
        let base = *baseline.get_or_insert(claims_per_s);
        println!(
            "  {claimers} claimer(s)  {claims_per_s:>8.0} claims/s  x{:.2} of 1",
            claims_per_s / base
        );
    }

    println!(
        "\njobs: {fleet_jobs} distinct 0.5 s clips, narra worker --concurrency {concurrency}, fs:// storage"
    );
    let media = tempfile::tempdir().expect("a temp dir");
    let clips = distinct_clips(media.path(), fleet_jobs);
    let mut baseline = None;
    for workers in COUNTS {
        let (jobs_per_s, seconds) =
            runtime.block_on(jobs_round(&server, &clips, workers, concurrency));
        let base = *baseline.get_or_insert(jobs_per_s);
        println!(
            "  {workers} worker(s)  {jobs_per_s:>6.2} jobs/s  ({seconds:.1} s)  x{:.2} of 1",
            jobs_per_s / base
        );
    }
    println!("\nload average at the end {}", load_average());
    runtime.block_on(server.cleanup());
}

/// The first three fields of `/proc/loadavg`: how busy the machine was around the figures.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".to_string())
}

/// One round of claims: `jobs` submitted, then `claimers` stores claim and complete them all.
/// Returns claims per second.
async fn claims_round(server: &TestServer, jobs: usize, claimers: usize) -> f64 {
    let uri = server.fresh_schema("claims").await;
    let store = PgStore::open(&uri).await.expect("open the store");
    for index in 0..jobs {
        let source = format!("http://host{}.example/{index}.mp4", index % 64);
        store
            .submit(&SubmitRequest {
                key: format!("ingest:{source}"),
                source,
                workflow: "ingest".to_string(),
                reingest: false,
                priority: narra::model::job::PRIORITY_LIVE,
            })
            .await
            .expect("submit");
    }
    let mut stores = Vec::with_capacity(claimers);
    for _ in 0..claimers {
        stores.push(Arc::new(PgStore::open(&uri).await.expect("open the store")));
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (index, store) in stores.into_iter().enumerate() {
        tasks.spawn(async move {
            let worker_id = WorkerId(format!("bench:{index}"));
            let policy = SchedulingPolicy::default();
            let request = ClaimRequest {
                worker_id: &worker_id,
                lease_ttl_ms: narra::engine::LEASE_TTL_MS,
                policy: &policy,
                only: None,
            };
            let mut claimed = 0usize;
            loop {
                match store.claim_next(&request).await.expect("claim_next") {
                    ClaimNext::Claimed(_, token) => {
                        store
                            .complete(&token)
                            .await
                            .expect("complete")
                            .expect("our lease");
                        claimed += 1;
                    }
                    ClaimNext::Empty => return claimed,
                    ClaimNext::Wait { .. } => tokio::task::yield_now().await,
                }
            }
        });
    }
    let mut claimed = 0;
    while let Some(joined) = tasks.join_next().await {
        claimed += joined.expect("a claimer");
    }
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(claimed, jobs, "every job claimed once");
    jobs as f64 / seconds
}

/// One round of jobs: the clips submitted, then `workers` worker processes run them. Returns jobs
/// per second and the seconds it took.
async fn jobs_round(
    server: &TestServer,
    clips: &[PathBuf],
    workers: usize,
    concurrency: usize,
) -> (f64, f64) {
    let uri = server.fresh_schema("jobs").await;
    let storage = tempfile::tempdir().expect("a temp dir");
    let storage_uri = format!("fs://{}", storage.path().display());
    let homes: Vec<tempfile::TempDir> = (0..=workers)
        .map(|_| tempfile::tempdir().expect("a temp dir"))
        .collect();
    let narra = |home: &Path, args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_narra"));
        command
            .arg("--home")
            .arg(home)
            .args(args)
            .env("NARRA_STATE", &uri)
            .env("NARRA_STORAGE", &storage_uri)
            .env("NARRA_LOG", "warn")
            .env_remove("NARRA_HOME")
            .env_remove("NARRA_WORKFLOWS");
        command
    };
    let mut submit = vec!["submit".to_string()];
    submit.extend(clips.iter().map(|clip| clip.display().to_string()));
    let submit: Vec<&str> = submit.iter().map(String::as_str).collect();
    let submitted = narra(homes[0].path(), &submit)
        .stdout(Stdio::null())
        .output()
        .expect("narra submit runs");
    assert!(
        submitted.status.success(),
        "{}",
        String::from_utf8_lossy(&submitted.stderr)
    );
    let store = PgStore::open(&uri).await.expect("open the store");
    let started = Instant::now();
    let concurrency = concurrency.to_string();
    let mut children: Vec<Child> = homes[1..]
        .iter()
        .map(|home| {
            narra(home.path(), &["worker", "--concurrency", &concurrency])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .expect("narra worker starts")
        })
        .collect();
    loop {
        let succeeded = store
            .jobs(&JobFilter {
                status: Some(Status::Succeeded),
                limit: usize::MAX,
            })
            .await
            .expect("read the jobs")
            .len();
        if succeeded == clips.len() {
            break;
        }
        for child in &mut children {
            if let Some(status) = child.try_wait().expect("query a worker") {
                panic!("a worker exited early: {status}");
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    for child in &mut children {
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }
    (clips.len() as f64 / seconds, seconds)
}

/// `count` distinct half-second clips (H.264 + AAC noise) from one ffmpeg run cut into segments.
fn distinct_clips(dir: &Path, count: usize) -> Vec<PathBuf> {
    let seconds = count.div_ceil(2) + 1;
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i", "testsrc=size=160x120:rate=16"])
        .args([
            "-f",
            "lavfi",
            "-i",
            "anoisesrc=color=pink:amplitude=0.2:seed=11:sample_rate=44100",
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
        .args(["-force_key_frames", "expr:gte(t,n_forced*0.5)"])
        .args(["-c:a", "aac", "-b:a", "64k"])
        .args([
            "-f",
            "segment",
            "-segment_time",
            "0.5",
            "-reset_timestamps",
            "1",
        ])
        .args(["-segment_format", "mp4"])
        .arg(dir.join("clip%04d.mp4"))
        .status()
        .expect("ffmpeg runs");
    assert!(status.success(), "ffmpeg cut the clips");
    (0..count)
        .map(|index| dir.join(format!("clip{index:04}.mp4")))
        .collect()
}
