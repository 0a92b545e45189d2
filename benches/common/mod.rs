//! What the benches share.

use narra::model::job::{ErrorInfo, Job, JobId, Lease, LeaseToken, Status, Timestamp, WorkerId};
use narra::store::{OrchestratorStore, SledStore, SubmitRequest};

/// A running job record with an error and a lease: the record the store encodes most.
pub fn sample_job() -> Job {
    let now = Timestamp::now();
    Job {
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
        attribution: Default::default(),
    }
}

/// Submits and claims `count` jobs numbered from `first`: their lease tokens.
pub async fn claimed_jobs(store: &SledStore, first: usize, count: usize) -> Vec<LeaseToken> {
    let mut tokens = Vec::with_capacity(count);
    for job in first..first + count {
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
    tokens
}
