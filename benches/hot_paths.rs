//! Criterion benches of the engine's hot paths, each beside the baseline it is judged against:
//!
//! - `blake3_64MiB`: `storage::hash_file` (a 64 MiB file in the page cache, through the runtime's
//!   blocking pool, as the engine calls it) against `blake3::Hasher::update` over the same bytes in
//!   memory in 64 KiB chunks;
//! - `job_record`: a job record's round trip through the store's codec (schema byte + bincode)
//!   against serde_json;
//! - `checkpoint_commit`: `WorkerStore::record_checkpoint` on a `SledStore` on disk (a transaction
//!   and a flush) against one plain sled insert and flush.
//!
//! Run with `cargo bench --bench hot_paths` (criterion's report: times, throughput, and the change
//! since the last run). The figures the performance goals name, as ratios measured in one run, are
//! printed by `cargo bench --bench engine` (docs/PERFORMANCE.md).

use std::hint::black_box;
use std::time::{Duration, Instant};

mod common;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use narra::model::job::{Checkpoint, Hash, Job, Timestamp};
use narra::store::sled_store::DEFAULT_CACHE_CAPACITY_BYTES;
use narra::store::{SledStore, WorkerStore};

const HASHED_BYTES: usize = 64 * 1024 * 1024;
/// Commits per job in the checkpoint bench: each appends two events, kept under the store's bound.
const COMMITS_PER_JOB: u64 = 200;

fn blake3_64mib(criterion: &mut Criterion) {
    let bytes: Vec<u8> = (0..HASHED_BYTES).map(|i| (i % 251) as u8).collect();
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("bytes.bin");
    std::fs::write(&path, &bytes).expect("write the bytes");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let mut group = criterion.benchmark_group("blake3_64MiB");
    group.throughput(Throughput::Bytes(HASHED_BYTES as u64));
    group.sample_size(20);
    group.bench_function("narra_hash_file", |bench| {
        bench.iter(|| {
            runtime
                .block_on(narra::storage::hash_file(&path))
                .expect("hash the file")
        })
    });
    group.bench_function("crate_update_64KiB_in_memory", |bench| {
        bench.iter(|| {
            let mut hasher = blake3::Hasher::new();
            for chunk in black_box(&bytes).chunks(64 * 1024) {
                hasher.update(chunk);
            }
            hasher.finalize()
        })
    });
    group.finish();
}

fn job_record(criterion: &mut Criterion) {
    let job = common::sample_job();
    let mut group = criterion.benchmark_group("job_record");
    group.bench_function("codec_round_trip", |bench| {
        bench.iter(|| {
            let encoded = narra::store::codec::encode(black_box(&job)).expect("encodes");
            let decoded: Job =
                narra::store::codec::decode("jobs", b"bench", &encoded).expect("decodes");
            decoded
        })
    });
    group.bench_function("serde_json_round_trip", |bench| {
        bench.iter(|| {
            let encoded = serde_json::to_vec(black_box(&job)).expect("encodes");
            let decoded: Job = serde_json::from_slice(&encoded).expect("decodes");
            decoded
        })
    });
    group.finish();
}

fn checkpoint_commit(criterion: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = SledStore::open(&dir.path().join("state"), DEFAULT_CACHE_CAPACITY_BYTES)
        .expect("open sled");
    let checkpoint = Checkpoint {
        step: "download".into(),
        definition_hash: Hash::of(b"definition"),
        input_hash: Hash::of(b"input"),
        outputs: Vec::new(),
        recorded_at: Timestamp::now(),
    };
    let floor = sled::open(dir.path().join("floor")).expect("open plain sled");
    let mut group = criterion.benchmark_group("checkpoint_commit");
    group.measurement_time(Duration::from_secs(5));
    // A fresh job every COMMITS_PER_JOB commits, claimed outside the timed part: a job's events
    // stay under the store's bound, so every commit takes the same path (no folding of old events
    // into the summary), as in `benches/engine.rs`.
    let mut jobs = 0;
    group.bench_function("record_checkpoint", |bench| {
        bench.iter_custom(|iterations| {
            let mut elapsed = Duration::ZERO;
            let mut done = 0;
            while done < iterations {
                let token = runtime
                    .block_on(common::claimed_jobs(&store, jobs, 1))
                    .pop()
                    .expect("a claimed job");
                jobs += 1;
                let commits = (iterations - done).min(COMMITS_PER_JOB);
                let started = Instant::now();
                for _ in 0..commits {
                    runtime
                        .block_on(store.record_checkpoint(&token, &checkpoint, None))
                        .expect("the store works")
                        .expect("the lease holds");
                }
                elapsed += started.elapsed();
                done += commits;
            }
            elapsed
        })
    });
    let mut key = 0u64;
    group.bench_function("sled_insert_and_flush", |bench| {
        bench.iter(|| {
            key += 1;
            floor
                .insert(key.to_be_bytes(), &[7u8; 300][..])
                .expect("insert");
            floor.flush().expect("flush")
        })
    });
    group.finish();
}

criterion_group!(hot_paths, blake3_64mib, job_record, checkpoint_commit);
criterion_main!(hot_paths);
