//! Hot paths of the engine, measured against a baseline in the same run.
//!
//! Run with `cargo bench --bench engine`. Prints figures and ratios; asserts nothing about time.
//! - blake3 hashing of a 64 MiB buffer vs a plain memory copy of it (the floor for any pass over bytes);
//! - record encoding (schema byte + bincode) vs serde_json of the same job record.

use std::hint::black_box;
use std::time::{Duration, Instant};

use narra::engine::job::{ErrorInfo, Job, JobId, Lease, Status, Timestamp, WorkerId};

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
}
