//! Hot paths of the engine, measured against a baseline in the same run.
//!
//! Run with `cargo bench --bench engine`. Prints figures and ratios; asserts nothing about time.
//! - blake3 hashing of a 64 MiB buffer vs a plain memory copy of it (the floor for any pass over bytes);
//! - record encoding (schema byte + bincode) vs serde_json of the same job record;
//! - blake3 the way narra hashes files (`storage::hash_file`: 1 MiB reads through a `BufReader`,
//!   from the page cache) vs `blake3::Hasher::update` over the same bytes in memory, one thread,
//!   in 64 KiB and 1 MiB chunks (the goal: narra's hashing at least 80 % of the crate's);
//! - checkpoint commits (`WorkerStore::record_checkpoint` on a `SledStore` in a temp dir, each one
//!   a transaction and a flush): one job alone, and 64 jobs committing at once, against a plain
//!   sled insert + flush.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use std::sync::Arc;

use narra::model::job::{ChangeToken, Checkpoint, Hash, Job, Location, StepOutput, Timestamp};
use narra::store::sled_store::DEFAULT_CACHE_CAPACITY_BYTES;
use narra::store::{SledStore, WorkerStore};

/// Commits per job in the checkpoint figures (each appends an event: kept under the event bound).
const COMMITS_PER_JOB: usize = 200;
/// Jobs committing at once in the concurrent checkpoint figure.
const CONCURRENT_JOBS: usize = 64;
/// Rounds of the concurrent checkpoint figure (each on fresh jobs).
const CONCURRENT_ROUNDS: usize = 5;

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
    if part_selected("hash") {
        hash_vs_copy(&bytes);
    }
    if part_selected("codec") {
        codec();
    }
    if part_selected("hashing") {
        hashing(&bytes);
    }
    if part_selected("checkpoints") {
        checkpoints();
    }
}

/// blake3 over a 64 MiB buffer against a plain copy of it.
fn hash_vs_copy(bytes: &[u8]) {
    let mut target = vec![0u8; bytes.len()];
    let copy = time(7, || {
        target.copy_from_slice(black_box(bytes));
        black_box(&target);
    });
    let hash = time(7, || {
        black_box(blake3::hash(black_box(bytes)));
    });
    let mib = bytes.len() as f64 / (1024.0 * 1024.0);
    println!(
        "blake3 64 MiB: {:.1} MiB/s; memcpy baseline {:.1} MiB/s; ratio blake3/memcpy time {:.2}",
        mib / hash.as_secs_f64(),
        mib / copy.as_secs_f64(),
        hash.as_secs_f64() / copy.as_secs_f64()
    );
}

/// The job record's round trip through the codec against serde_json.
fn codec() {
    let job = common::sample_job();
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
}

/// `NARRA_BENCH_PARTS` (comma-separated: `hash`, `codec`, `hashing`, `checkpoints`; default all)
/// picks the figures to measure, e.g. to profile one of them alone.
fn part_selected(part: &str) -> bool {
    match std::env::var("NARRA_BENCH_PARTS") {
        Ok(parts) => parts.split(',').any(|selected| selected.trim() == part),
        Err(_) => true,
    }
}

/// Rounds of the hashing figure: each round times narra and the crate once each, in turn.
const HASHING_ROUNDS: usize = 15;

/// blake3 through narra's file hashing against the crate over the same bytes in memory. The two
/// vCPUs of a shared VM change speed from one second to the next (their neighbours' load), so the
/// two are timed in turn, round after round, and the figure is the median of the rounds' ratios:
/// a ratio compares two timings taken a few milliseconds apart. The single-thread read-and-hash
/// loop (one 1 MiB buffer) shows what the copy out of the page cache costs when it is not
/// overlapped with the hashing.
fn hashing(bytes: &[u8]) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("bytes.bin");
    std::fs::write(&path, bytes).expect("write the bytes");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let narra = || {
        let started = Instant::now();
        black_box(
            runtime
                .block_on(narra::storage::hash_file(&path))
                .expect("hash the file"),
        );
        started.elapsed()
    };
    let in_memory = |chunk_bytes: usize| {
        let started = Instant::now();
        let mut hasher = blake3::Hasher::new();
        for chunk in black_box(bytes).chunks(chunk_bytes) {
            hasher.update(chunk);
        }
        black_box(hasher.finalize());
        started.elapsed()
    };
    let read_then_hash = || {
        use std::io::Read;
        let started = Instant::now();
        let mut file = std::fs::File::open(&path).expect("open the file");
        let mut buffer = vec![0u8; 1024 * 1024];
        let mut hasher = blake3::Hasher::new();
        loop {
            let read = file.read(&mut buffer).expect("read the file");
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
        }
        black_box(hasher.finalize());
        started.elapsed()
    };
    // The first pass reads the file into the page cache.
    narra();
    let mut rounds = Vec::with_capacity(HASHING_ROUNDS);
    for _ in 0..HASHING_ROUNDS {
        rounds.push([
            narra(),
            in_memory(64 * 1024),
            in_memory(1024 * 1024),
            read_then_hash(),
        ]);
    }
    let mib = bytes.len() as f64 / (1024.0 * 1024.0);
    let rate = |column: usize| {
        let times: Vec<Duration> = rounds.iter().map(|round| round[column]).collect();
        mib / median(times).as_secs_f64()
    };
    // The median of the rounds' ratios of the crate's time to narra's (narra's share of its speed).
    let share = |column: usize| {
        let mut ratios: Vec<f64> = rounds
            .iter()
            .map(|round| round[column].as_secs_f64() / round[0].as_secs_f64())
            .collect();
        ratios.sort_by(f64::total_cmp);
        100.0 * ratios[ratios.len() / 2]
    };
    for (column, chunk_kib) in [(1, 64), (2, 1024)] {
        println!(
            "blake3 of 64 MiB, one thread: narra (storage::hash_file, from the page cache) {:.0} MiB/s; \
             blake3::Hasher::update in {chunk_kib} KiB chunks from memory {:.0} MiB/s; narra at {:.0} % \
             of it (median of {HASHING_ROUNDS} rounds' ratios, each timed in turn)",
            rate(0),
            rate(column),
            share(column),
        );
    }
    println!(
        "  reference: read and hash on one thread (1 MiB reads, no second thread) {:.0} MiB/s, {:.0} % \
         of the crate in 64 KiB chunks",
        rate(3),
        {
            let mut ratios: Vec<f64> = rounds
                .iter()
                .map(|round| round[1].as_secs_f64() / round[3].as_secs_f64())
                .collect();
            ratios.sort_by(f64::total_cmp);
            100.0 * ratios[ratios.len() / 2]
        }
    );
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
        let mut tokens = common::claimed_jobs(&store, 0, CONCURRENT_JOBS + 1).await;

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

        // Each round commits on 64 fresh jobs (the event bound is per job), timed alone; the
        // figure is the median round.
        let mut rounds = Vec::with_capacity(CONCURRENT_ROUNDS);
        for round in 0..CONCURRENT_ROUNDS {
            let first = (CONCURRENT_JOBS + 1) * (round + 1);
            let tokens = common::claimed_jobs(&store, first, CONCURRENT_JOBS).await;
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
            rounds.push(started.elapsed());
        }
        let concurrent = median(rounds.clone());
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
        let per_second: Vec<String> = rounds
            .iter()
            .map(|round| format!("{:.0}", commits as f64 / round.as_secs_f64()))
            .collect();
        println!(
            "checkpoint commits, {CONCURRENT_JOBS} jobs at once: {commits} in {:.2} s, {:.0} commits/s \
             (median of {CONCURRENT_ROUNDS} rounds: {})",
            concurrent.as_secs_f64(),
            commits as f64 / concurrent.as_secs_f64(),
            per_second.join(", ")
        );
    });
}
