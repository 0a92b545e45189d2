//! Hot paths of the engine, measured against a baseline in the same run.
//!
//! Run with `cargo bench --bench engine`. Prints figures and ratios; asserts nothing about time.
//! - blake3 hashing of a 64 MiB buffer vs a plain memory copy of it (the floor for any pass over bytes);
//! - record encoding (schema byte + bincode) vs serde_json of the same job record;
//! - blake3 the way narra hashes files (`storage::hash_file`: 1 MiB reads through a `BufReader`,
//!   from the page cache) vs `blake3::Hasher::update` over the same bytes in memory, one thread,
//!   in 64 KiB and 1 MiB chunks (issue 9: narra's hashing at least 80 % of the crate's);
//! - checkpoint commits (`WorkerStore::record_checkpoint` on a `SledStore` in a temp dir, each one
//!   a transaction and a flush): one job alone, and 64 jobs committing at once, against a plain
//!   sled insert + flush.

use std::hint::black_box;
use std::time::{Duration, Instant};

use std::sync::Arc;

use narra::engine::job::{
    ChangeToken, Checkpoint, ErrorInfo, Hash, Job, JobId, Lease, Location, Status, StepOutput,
    Timestamp, WorkerId,
};
use narra::store::sled_store::DEFAULT_CACHE_CAPACITY_BYTES;
use narra::store::{OrchestratorStore, SledStore, SubmitRequest, WorkerStore};

/// Commits per job in the checkpoint figures (each appends an event: kept under the event bound).
const COMMITS_PER_JOB: usize = 200;
/// Jobs committing at once in the concurrent checkpoint figure.
const CONCURRENT_JOBS: usize = 64;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn time<F: FnMut()>(rounds: usize, mut work: F) -> Duration {
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        work();
        samples.push(started.elapsed());
    }
    median(samples)
}

fn main() {
    let bytes: Vec<u8> = (0..64 * 1024 * 1024)
        .map(|i: usize| (i % 251) as u8)
        .collect();
    let mut target = vec![0u8; bytes.len()];
    let copy = time(7, || {
        target.copy_from_slice(black_box(&bytes));
        black_box(&target);
    });
    let hash = time(7, || {
        black_box(blake3::hash(black_box(&bytes)));
    });
    let mib = bytes.len() as f64 / (1024.0 * 1024.0);
    println!(
        "blake3 64 MiB: {:.1} MiB/s; memcpy baseline {:.1} MiB/s; ratio blake3/memcpy time {:.2}",
        mib / hash.as_secs_f64(),
        mib / copy.as_secs_f64(),
        hash.as_secs_f64() / copy.as_secs_f64()
    );

    let now = Timestamp::now();
    let job = Job {
        id: JobId::new(),
        key: "ingest:https://cdn.example.com/video.mp4".into(),
        source: "https://cdn.example.com/video.mp4".into(),
        workflow: "ingest".into(),
        status: Status::Running,
        ingestion_phase: None,
        attempts: 3,
        error: Some(ErrorInfo {
            class: "network_timeout".into(),
            message: "no data from cdn.example.com for 30 s".into(),
        }),
        created_at: now,
        updated_at: now,
        lease: Some(Lease {
            worker_id: WorkerId("host:1234".into()),
            fencing_token: 3,
            expires_at: now.plus_ms(30_000),
        }),
        fencing_token: 3,
        cancel_requested: false,
        events_next: 17,
        priority: 0,
        not_before: None,
        crashes: None,
    };
    let rounds = 100_000;
    let codec = time(5, || {
        for _ in 0..rounds {
            let encoded = narra::store::codec::encode(black_box(&job)).expect("encodes");
            let decoded: Job =
                narra::store::codec::decode("jobs", b"bench", &encoded).expect("decodes");
            black_box(decoded);
        }
    });
    let json = time(5, || {
        for _ in 0..rounds {
            let encoded = serde_json::to_vec(black_box(&job)).expect("encodes");
            let decoded: Job = serde_json::from_slice(&encoded).expect("decodes");
            black_box(decoded);
        }
    });
    println!(
        "job record round trip: codec {:.0} ns; serde_json baseline {:.0} ns; ratio codec/json {:.2}",
        codec.as_nanos() as f64 / rounds as f64,
        json.as_nanos() as f64 / rounds as f64,
        codec.as_secs_f64() / json.as_secs_f64()
    );

    hashing(&bytes);
    checkpoints();
}

/// blake3 through narra's file hashing against the crate over the same bytes in memory.
fn hashing(bytes: &[u8]) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("bytes.bin");
    std::fs::write(&path, bytes).expect("write the bytes");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    // The first pass reads the file into the page cache; the median leaves it out.
    let narra = time(7, || {
        black_box(
            runtime
                .block_on(narra::storage::hash_file(&path))
                .expect("hash the file"),
        );
    });
    let mib = bytes.len() as f64 / (1024.0 * 1024.0);
    for chunk_bytes in [64 * 1024, 1024 * 1024] {
        let crate_time = time(7, || {
            let mut hasher = blake3::Hasher::new();
            for chunk in black_box(bytes).chunks(chunk_bytes) {
                hasher.update(chunk);
            }
            black_box(hasher.finalize());
        });
        println!(
            "blake3 of 64 MiB, one thread: narra (storage::hash_file, from the page cache) {:.0} MiB/s; \
             blake3::Hasher::update in {} KiB chunks from memory {:.0} MiB/s; narra at {:.0} % of it",
            mib / narra.as_secs_f64(),
            chunk_bytes / 1024,
            mib / crate_time.as_secs_f64(),
            100.0 * crate_time.as_secs_f64() / narra.as_secs_f64()
        );
    }
}

fn checkpoint(job: u64, commit: usize) -> Checkpoint {
    let output = |name: &str, location: Location| StepOutput {
        name: name.to_string(),
        location,
        size: 1_073_741_824,
        blake3: Hash::of(name.as_bytes()),
        change_token: ChangeToken::File {
            inode: job,
            size: 1_073_741_824,
            mtime_ns: 1_700_000_000_000_000_000,
        },
    };
    Checkpoint {
        step: ["download", "extract", "store"][commit % 3].to_string(),
        definition_hash: Hash::of(b"definition"),
        input_hash: Hash::of(&commit.to_le_bytes()),
        outputs: vec![
            output(
                "video",
                Location::Scratch(format!("/home/scratch/{job}/original")),
            ),
            output("audio", Location::Object(format!("blobs/ab/{job}.m4a"))),
        ],
        recorded_at: Timestamp::now(),
    }
}

/// Checkpoint commits: one job alone (per-commit latency), then 64 jobs at once (commits/s).
fn checkpoints() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Arc::new(
            SledStore::open(&dir.path().join("state"), DEFAULT_CACHE_CAPACITY_BYTES)
                .expect("open sled"),
        );
        let mut tokens = Vec::new();
        for job in 0..=CONCURRENT_JOBS {
            let submitted = store
                .submit(&SubmitRequest {
                    key: format!("ingest:https://cdn.example.com/{job}.mp4"),
                    source: format!("https://cdn.example.com/{job}.mp4"),
                    workflow: "ingest".into(),
                    reingest: false,
                    priority: 0,
                })
                .await
                .expect("submit");
            let (_, token) = store
                .claim(submitted.job.id, &WorkerId("bench:1".into()), 600_000)
                .await
                .expect("claim")
                .expect("a pending job is claimable");
            tokens.push(token);
        }

        let alone = tokens.pop().expect("a job of its own");
        let mut samples = Vec::with_capacity(COMMITS_PER_JOB);
        for commit in 0..COMMITS_PER_JOB {
            let checkpoint = checkpoint(0, commit);
            let started = Instant::now();
            store
                .record_checkpoint(&alone, &checkpoint, None)
                .await
                .expect("the store works")
                .expect("the lease holds");
            samples.push(started.elapsed());
        }
        samples.sort();
        let single = samples[samples.len() / 2];
        let p99 = samples[samples.len() * 99 / 100];

        let started = Instant::now();
        let mut tasks = Vec::new();
        for (job, token) in tokens.into_iter().enumerate() {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for commit in 0..COMMITS_PER_JOB {
                    store
                        .record_checkpoint(&token, &checkpoint(job as u64 + 1, commit), None)
                        .await
                        .expect("the store works")
                        .expect("the lease holds");
                }
            }));
        }
        for task in tasks {
            task.await.expect("a committing task");
        }
        let concurrent = started.elapsed();
        let commits = CONCURRENT_JOBS * COMMITS_PER_JOB;

        let db = sled::open(dir.path().join("floor")).expect("open plain sled");
        let mut floor = Vec::with_capacity(COMMITS_PER_JOB);
        for commit in 0..COMMITS_PER_JOB {
            let started = Instant::now();
            db.insert(commit.to_be_bytes(), &[7u8; 300][..])
                .expect("insert");
            db.flush_async().await.expect("flush");
            floor.push(started.elapsed());
        }
        let floor = median(floor);
        println!(
            "checkpoint commit, one job alone: median {:.3} ms, p99 {:.3} ms ({COMMITS_PER_JOB} commits); \
             floor: one plain sled insert + flush {:.3} ms; ratio {:.1}",
            single.as_secs_f64() * 1000.0,
            p99.as_secs_f64() * 1000.0,
            floor.as_secs_f64() * 1000.0,
            single.as_secs_f64() / floor.as_secs_f64()
        );
        println!(
            "checkpoint commits, {CONCURRENT_JOBS} jobs at once: {commits} in {:.2} s, {:.0} commits/s",
            concurrent.as_secs_f64(),
            commits as f64 / concurrent.as_secs_f64()
        );
    });
}
