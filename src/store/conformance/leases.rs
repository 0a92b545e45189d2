//! Claims, leases and fencing: a claim starts a lease with the next fencing token, `claim_next`
//! takes the oldest pending job, and every write a worker makes (phase, step event, progress,
//! completion) is accepted under the current lease only and otherwise changes nothing.

use super::fixtures::{
    Answer, LEASE_TTL_MS, claim_next_as, error_info, next_millisecond, read_job, running_job,
    submit_new, taken_over, worker,
};
use crate::model::job::{EventKind, JobProgress, LeaseToken, Phase, Status, Timestamp};
use crate::store::{StateStore, StepEvent};

/// Claiming makes a job running under a new lease: attempts + 1 and the next fencing token.
pub(super) async fn claim_starts_a_lease_with_a_growing_token(store: &dyn StateStore) {
    let job = submit_new(store, "claim").await;
    assert_eq!(job.fencing_token, 0);
    let before = Timestamp::now();
    let (claimed, first) = store
        .claim(job.id, &worker(1), LEASE_TTL_MS)
        .await
        .accepted("claimable");
    assert_eq!(claimed.status, Status::Running);
    assert_eq!(claimed.attempts, 1);
    assert_eq!(claimed.ingestion_phase, None);
    let lease = claimed.lease.clone().expect("a running job has a lease");
    assert_eq!(lease.worker_id, worker(1));
    assert_eq!(lease.fencing_token, first.fencing_token);
    assert!(lease.expires_at >= before.plus_ms(LEASE_TTL_MS));
    assert_eq!(read_job(store, job.id).await, claimed);

    let again = store.claim(job.id, &worker(2), LEASE_TTL_MS).await;
    again.not_allowed("claim of a running job");

    let renewed = store.renew_lease(&first, LEASE_TTL_MS * 2).await;
    let renewed_lease = renewed.accepted("renew").lease.expect("lease");
    assert_eq!(renewed_lease.fencing_token, first.fencing_token);
    assert!(renewed_lease.expires_at > lease.expires_at);

    let reclaimed = store.reclaim(job.id, "lease expired").await;
    reclaimed.accepted("running is reclaimable");
    let (reclaimed, second) = store
        .claim(job.id, &worker(2), LEASE_TTL_MS)
        .await
        .accepted("claimable");
    assert_eq!(reclaimed.attempts, 2);
    assert_eq!(second.fencing_token, first.fencing_token + 1);
    assert_eq!(reclaimed.lease.expect("lease").worker_id, worker(2));
}

/// After a reclaim and a new claim, every write under the old token is fenced and changes nothing.
pub(super) async fn stale_tokens_are_fenced(store: &dyn StateStore) {
    let (stale, current) = taken_over(store, "fenced").await;
    let before = read_job(store, stale.job_id).await;
    let events_before = store.events(stale.job_id).await.expect("events");

    let phase = store.set_phase(&stale, Phase::Downloading).await;
    phase.fenced("set_phase with a stale token");
    let renewed = store.renew_lease(&stale, LEASE_TTL_MS).await;
    renewed.fenced("renew_lease with a stale token");
    let completed = store.complete(&stale).await;
    completed.fenced("complete with a stale token");
    let failed = store.fail(&stale, error_info()).await;
    failed.fenced("fail with a stale token");
    store.cancel(stale.job_id).await.accepted("cancel request");
    let confirmed = store.confirm_cancel(&stale).await;
    confirmed.fenced("confirm_cancel with a stale token");
    let after = read_job(store, stale.job_id).await;
    assert_eq!(after.status, Status::Running);
    assert_eq!(after.ingestion_phase, None);
    assert_eq!(
        after.lease, before.lease,
        "fenced writes leave the lease alone"
    );
    assert_eq!(
        store.events(stale.job_id).await.expect("events").len(),
        events_before.len() + 1,
        "only the cancel request was written"
    );

    let job = store.set_phase(&current, Phase::Downloading).await;
    let job = job.accepted("the current token is accepted");
    assert_eq!(job.ingestion_phase, Some(Phase::Downloading));

    // A token from the future is as wrong as one from the past.
    let future = LeaseToken {
        job_id: current.job_id,
        fencing_token: current.fencing_token + 1,
    };
    let phase = store.set_phase(&future, Phase::Storing).await;
    phase.fenced("set_phase with a future token");
}

/// `claim_next` takes the oldest pending job, skips jobs that are not pending, and returns None
/// when there is nothing to claim.
pub(super) async fn claim_next_picks_the_oldest_pending(store: &dyn StateStore) {
    assert_eq!(claim_next_as(store, &worker(1)).await, None);
    let mut ids = Vec::new();
    for key in ["a", "b", "c"] {
        ids.push(submit_new(store, key).await.id);
        next_millisecond().await;
    }
    store
        .cancel(ids[1])
        .await
        .accepted("pending is cancellable");

    let claimed = claim_next_as(store, &worker(1)).await;
    let (job, token) = claimed.expect("a pending job");
    assert_eq!(job.id, ids[0]);
    assert_eq!(job.status, Status::Running);
    assert_eq!(token.job_id, ids[0]);
    assert_eq!(token.fencing_token, job.fencing_token);
    assert_eq!(read_job(store, ids[0]).await, job);

    let claimed = claim_next_as(store, &worker(2)).await;
    let (job, _) = claimed.expect("a pending job");
    assert_eq!(job.id, ids[2], "the cancelled job is skipped");
    assert_eq!(claim_next_as(store, &worker(3)).await, None);

    // A reclaimed job is pending again and is claimed before newer jobs.
    let newer = submit_new(store, "d").await;
    let reclaimed = store.reclaim(ids[0], "lease expired").await;
    reclaimed.accepted("running is reclaimable");
    let claimed = claim_next_as(store, &worker(4)).await;
    let (job, token) = claimed.expect("a pending job");
    assert_eq!(job.id, ids[0]);
    assert_eq!(job.attempts, 2);
    assert_eq!(token.fencing_token, 2);
    let claimed = claim_next_as(store, &worker(4)).await;
    let (job, _) = claimed.expect("a pending job");
    assert_eq!(job.id, newer.id);
}

/// Step events are appended under the current lease only.
pub(super) async fn step_events_need_the_current_lease(store: &dyn StateStore) {
    let token = running_job(store, "steps").await;
    let failed = StepEvent::Failed {
        error: error_info(),
    };
    let recorded = store.record_step_event(&token, "download", failed).await;
    recorded.accepted("current token");
    let events = store.events(token.job_id).await.expect("events");
    assert_eq!(
        events[events.len() - 1].kind,
        EventKind::StepFailed {
            step: "download".to_string(),
            error: error_info()
        }
    );
    store.complete(&token).await.accepted("complete");
    let started = StepEvent::Started;
    let recorded = store.record_step_event(&token, "download", started).await;
    recorded.fenced("a step event after the job ended");
}

/// Step progress is recorded under the current lease only, and reads back as written.
pub(super) async fn progress_needs_the_current_lease(store: &dyn StateStore) {
    let token = running_job(store, "progress").await;
    assert_eq!(store.progress(token.job_id).await.expect("progress"), None);
    let progress = JobProgress {
        bytes_done: 4096,
        bytes_total: Some(10_000),
        rate_bytes_per_s: 2048,
        updated_at: Timestamp(1_790_000_000_000),
    };
    let set = store.set_progress(&token, &progress).await;
    set.accepted("current token");
    assert_eq!(
        store.progress(token.job_id).await.expect("progress"),
        Some(progress.clone())
    );
    store.complete(&token).await.accepted("complete");
    let later = JobProgress {
        bytes_done: 9_999,
        ..progress.clone()
    };
    let set = store.set_progress(&token, &later).await;
    set.fenced("progress after the job ended");
    assert_eq!(
        store.progress(token.job_id).await.expect("progress"),
        Some(progress),
        "a refused progress write changes nothing"
    );
}
