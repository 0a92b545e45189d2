//! Fixtures the stores' own tests share (`sled_store/tests.rs`, `pg_store/tests.rs`): a
//! submission (the conformance suite's), a record corrupted past reading, and concurrent claimers.
//! Test code only.

use std::collections::BTreeSet;
use std::sync::Arc;

pub(crate) use super::conformance::fixtures::request;
use super::{OrchestratorStore, StateStore, codec, conformance};
use crate::model::job::{Job, JobId, LeaseToken, WorkerId};

/// Submits `key` and claims its job as `worker_id`: a job running under a fresh lease.
pub(crate) async fn submit_and_claim(
    store: &dyn OrchestratorStore,
    key: &str,
    worker_id: &WorkerId,
) -> (Job, LeaseToken) {
    let submitted = store.submit(&request(key)).await.expect("submit");
    store
        .claim(submitted.job.id, worker_id, 60_000)
        .await
        .expect("claim")
        .expect("claimable")
}

/// Completes the job `token` leases: it must still hold the lease.
pub(crate) async fn complete(store: &dyn OrchestratorStore, token: &LeaseToken) -> Job {
    store
        .complete(token)
        .await
        .expect("complete")
        .expect("current token")
}

/// A torn or bit-rotted job record: the schema byte survives, the rest is noise.
pub(crate) fn garbage_record() -> Vec<u8> {
    let mut garbage = vec![codec::SCHEMA_VERSION];
    garbage.extend((0u8..61).map(|byte| byte.wrapping_mul(37) ^ 0xa5));
    garbage
}

/// Submits `jobs_total` jobs through `submitter`, then lets every claimer claim, concurrently,
/// until nothing is left (claimer `n` as `worker_id(n)`), and checks that every job was claimed
/// exactly once.
pub(crate) async fn claim_concurrently(
    submitter: &dyn OrchestratorStore,
    claimers: Vec<Arc<dyn StateStore>>,
    worker_id: impl Fn(usize) -> WorkerId,
    jobs_total: usize,
) {
    for index in 0..jobs_total {
        submitter
            .submit(&request(&format!("job-{index}")))
            .await
            .expect("submit");
    }
    let mut tasks = Vec::new();
    for (claimer, store) in claimers.into_iter().enumerate() {
        let worker_id = worker_id(claimer);
        tasks.push(tokio::spawn(async move {
            let mut claimed = Vec::new();
            while let Some((job, _token)) =
                conformance::claim_next_as(store.as_ref(), &worker_id).await
            {
                claimed.push(job.id);
            }
            claimed
        }));
    }
    let mut claimed = Vec::new();
    for task in tasks {
        claimed.extend(task.await.expect("claimer task"));
    }
    let distinct: BTreeSet<JobId> = claimed.iter().copied().collect();
    assert_eq!(claimed.len(), jobs_total);
    assert_eq!(distinct.len(), jobs_total);
}
