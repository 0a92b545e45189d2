//! Submission and listing: one job per key whatever is submitted again, what a resubmission does
//! to a finished job, `submit_batch` as `submit` in bulk, `jobs` and `job_by_key`, and jobs that
//! do not exist.

use super::fixtures::{
    Answer, LEASE_TTL_MS, checkpoint, claim, error_info, listed, next_millisecond, read_job,
    request, running_job, submit_new, succeeded_job, worker,
};
use crate::model::job::{ErrorInfo, EventKind, JobId, LeaseToken, Phase, Status};
use crate::model::machine::Rejected;
use crate::store::{
    BatchOptions, JobFilter, Resubmit, SUBMIT_BATCH_MAX, StateStore, SubmitOutcome, SubmitRequest,
    Submitted,
};

/// The same key twice makes one job, returned unchanged the second time.
pub(super) async fn submit_is_idempotent(store: &dyn StateStore) {
    let created = submit_new(store, "same").await;
    assert_eq!(created.status, Status::Pending);
    assert_eq!(created.ingestion_phase, None);
    assert_eq!(created.attempts, 0);

    let again = store.submit(&request("same")).await.expect("submit again");
    assert_eq!(again.outcome, SubmitOutcome::Existing);
    assert_eq!(again.job, created);

    let token = claim(store, created.id).await;
    let running = store.submit(&request("same")).await;
    let running = running.expect("submit while running");
    assert_eq!(running.outcome, SubmitOutcome::Existing);
    assert_eq!(running.job, read_job(store, token.job_id).await);

    assert_eq!(listed(store, None).await.len(), 1, "one key, one job");
    let by_key = store.job_by_key("same").await.expect("job_by_key");
    assert_eq!(by_key.map(|job| job.id), Some(created.id));
    assert_eq!(store.job_by_key("other").await.expect("job_by_key"), None);
}

/// Re-submitting the key of a failed or cancelled job sends that job back to pending.
pub(super) async fn submit_retries_failed_and_cancelled_jobs(store: &dyn StateStore) {
    let token = running_job(store, "failed").await;
    store.fail(&token, error_info()).await.accepted("fail");
    let retried = store.submit(&request("failed")).await.expect("resubmit");
    assert_eq!(retried.outcome, SubmitOutcome::Retried);
    assert_eq!(retried.job.id, token.job_id);
    assert_eq!(retried.job.status, Status::Pending);
    assert_eq!(read_job(store, token.job_id).await, retried.job);
    let events = store.events(token.job_id).await.expect("events");
    assert!(
        events
            .iter()
            .any(|event| matches!(&event.kind, EventKind::RetryRequested { .. })),
        "a retry leaves a retry_requested event: {events:?}"
    );

    let cancelled = submit_new(store, "cancelled").await;
    store
        .cancel(cancelled.id)
        .await
        .accepted("pending is cancellable");
    let retried = store.submit(&request("cancelled")).await.expect("resubmit");
    assert_eq!(retried.outcome, SubmitOutcome::Retried);
    assert_eq!(retried.job.status, Status::Pending);
}

/// A succeeded job is returned as it is, unless the submission asks to reingest it.
pub(super) async fn submit_reingests_only_when_asked(store: &dyn StateStore) {
    let (succeeded, token) = succeeded_job(store, "done").await;

    let existing = store.submit(&request("done")).await.expect("resubmit");
    assert_eq!(existing.outcome, SubmitOutcome::Existing);
    assert_eq!(
        existing.job, succeeded,
        "an existing job is returned unchanged"
    );
    assert_eq!(read_job(store, token.job_id).await, succeeded);

    let reingest = SubmitRequest {
        reingest: true,
        ..request("done")
    };
    let reingested = store.submit(&reingest).await.expect("reingest");
    assert_eq!(reingested.outcome, SubmitOutcome::Reingested);
    assert_eq!(reingested.job.id, token.job_id);
    assert_eq!(reingested.job.status, Status::Pending);

    // Reingest on a job that is not succeeded is an ordinary idempotent submission.
    let again = store.submit(&reingest).await.expect("reingest pending");
    assert_eq!(again.outcome, SubmitOutcome::Existing);
    assert_eq!(again.job, reingested.job);
}

/// `submit_batch` applies each request as `submit` would (idempotent by key, a key twice in one
/// batch is one job), retries only transient failures when asked to, records every submitted job
/// under its backfill, and takes batches longer than one transaction.
pub(super) async fn submit_batch_is_submit_in_bulk(store: &dyn StateStore) {
    let backfill = store.open_backfill("/manifests/a.txt").await.expect("open");
    let again = store.open_backfill("/manifests/a.txt").await;
    assert_eq!(
        again.expect("reopen"),
        backfill,
        "the same manifest is the same backfill"
    );
    // Backfill ids are ULIDs too: the listing's order is checked across a millisecond.
    next_millisecond().await;
    let other = store.open_backfill("/manifests/b.txt").await.expect("open");
    assert_ne!(other.id, backfill.id);
    assert_eq!(
        store.backfills().await.expect("backfills"),
        vec![backfill.clone(), other.clone()]
    );

    let options = BatchOptions {
        resubmit: Resubmit::TransientFailures,
        backfill: Some(backfill.id),
    };
    let (first, outcomes) =
        submitted_batch(store, &[request("a"), request("b"), request("a")], &options).await;
    assert_eq!(
        outcomes,
        [
            SubmitOutcome::Created,
            SubmitOutcome::Created,
            SubmitOutcome::Existing
        ]
    );
    assert_eq!(first[0].job.id, first[2].job.id, "one key, one job");
    assert_eq!(read_job(store, first[0].job.id).await, first[0].job);
    let mut expected = vec![first[0].job.id, first[1].job.id];
    expected.sort();
    let backfill_jobs = store.backfill_jobs(backfill.id).await;
    assert_eq!(backfill_jobs.expect("backfill_jobs"), expected);
    let other_jobs = store.backfill_jobs(other.id).await;
    assert!(other_jobs.expect("backfill_jobs").is_empty());

    // Finished jobs of every kind, then a re-run that retries only the transient failure.
    let transient = running_job(store, "transient").await;
    let timeout = ErrorInfo {
        class: "network_timeout".to_string(),
        message: "timed out".to_string(),
    };
    store.fail(&transient, timeout).await.accepted("fail");
    let permanent = running_job(store, "permanent").await;
    store.fail(&permanent, error_info()).await.accepted("fail");
    let cancelled = submit_new(store, "cancelled").await;
    store.cancel(cancelled.id).await.accepted("pending");
    succeeded_job(store, "done").await;
    let rerun = [
        request("transient"),
        request("permanent"),
        request("cancelled"),
        request("done"),
    ];
    let resumed = store.submit_batch(&rerun, &options).await;
    let states: Vec<_> = resumed
        .expect("submit_batch")
        .iter()
        .map(|submitted| (submitted.outcome, submitted.job.status))
        .collect();
    assert_eq!(
        states,
        [
            (SubmitOutcome::Retried, Status::Pending),
            (SubmitOutcome::Existing, Status::Failed),
            (SubmitOutcome::Existing, Status::Cancelled),
            (SubmitOutcome::Existing, Status::Succeeded),
        ]
    );

    // The default is `submit`'s: every failed or cancelled job is retried, reingest when asked.
    let mut everything = rerun.to_vec();
    everything[3].reingest = true;
    let (retried, outcomes) = submitted_batch(store, &everything, &BatchOptions::default()).await;
    assert_eq!(
        outcomes,
        [
            SubmitOutcome::Existing,
            SubmitOutcome::Retried,
            SubmitOutcome::Retried,
            SubmitOutcome::Reingested
        ]
    );
    assert!(
        retried
            .iter()
            .all(|submitted| submitted.job.status == Status::Pending)
    );

    // Longer than one transaction: every request is applied, in order.
    let many: Vec<SubmitRequest> = (0..SUBMIT_BATCH_MAX + 3)
        .map(|index| request(&format!("many-{index}")))
        .collect();
    let (submitted, _) = submitted_batch(store, &many, &BatchOptions::default()).await;
    assert_eq!(submitted.len(), many.len());
    for (request, submitted) in many.iter().zip(&submitted) {
        assert_eq!(submitted.outcome, SubmitOutcome::Created);
        assert_eq!(submitted.job.key, request.key);
    }
}

/// `submit_batch`'s submissions, and the outcome of each.
async fn submitted_batch(
    store: &dyn StateStore,
    requests: &[SubmitRequest],
    options: &BatchOptions,
) -> (Vec<Submitted>, Vec<SubmitOutcome>) {
    let submitted = store.submit_batch(requests, options).await;
    let submitted = submitted.expect("submit_batch");
    let outcomes = submitted
        .iter()
        .map(|submitted| submitted.outcome)
        .collect();
    (submitted, outcomes)
}

/// Operations on a job that does not exist are refused as not found and create nothing.
pub(super) async fn unknown_jobs_are_not_found(store: &dyn StateStore) {
    let id = JobId::new();
    let token = LeaseToken {
        job_id: id,
        fencing_token: 1,
    };
    let not_found = Rejected::NotFound(id);
    assert_eq!(store.job(id).await.expect("job"), None);
    let claimed = store.claim(id, &worker(1), LEASE_TTL_MS).await;
    assert_eq!(claimed.refused("claim"), not_found);
    assert_eq!(store.cancel(id).await.refused("cancel"), not_found);
    assert_eq!(store.retry(id, "x").await.refused("retry"), not_found);
    assert_eq!(store.reingest(id).await.refused("reingest"), not_found);
    assert_eq!(store.reclaim(id, "x").await.refused("reclaim"), not_found);
    assert_eq!(store.complete(&token).await.refused("complete"), not_found);
    let phase = store.set_phase(&token, Phase::Storing).await;
    assert_eq!(phase.refused("set_phase"), not_found);
    let recorded = store
        .record_checkpoint(&token, &checkpoint("download", 1), None)
        .await;
    assert_eq!(recorded.refused("record_checkpoint"), not_found);
    assert_eq!(store.events(id).await.expect("events"), vec![]);
    assert_eq!(store.checkpoints(id).await.expect("checkpoints"), vec![]);
    assert_eq!(store.logs(id).await.expect("logs"), vec![]);
    assert_eq!(listed(store, None).await, vec![]);
}

/// `jobs` lists newest first, filters by status through the index, and stops at the limit.
pub(super) async fn jobs_lists_newest_first_and_filters_by_status(store: &dyn StateStore) {
    let mut ids = Vec::new();
    for key in ["first", "second", "third", "fourth"] {
        ids.push(submit_new(store, key).await.id);
        next_millisecond().await;
    }
    let ids_listed = |status: Option<Status>, limit: usize| async move {
        store
            .jobs(&JobFilter { status, limit })
            .await
            .expect("jobs")
            .into_iter()
            .map(|job| job.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids_listed(None, usize::MAX).await,
        vec![ids[3], ids[2], ids[1], ids[0]]
    );
    assert_eq!(ids_listed(None, 2).await, vec![ids[3], ids[2]]);
    assert_eq!(ids_listed(None, 0).await, vec![]);

    let token = claim(store, ids[1]).await;
    store.fail(&token, error_info()).await.accepted("fail");
    claim(store, ids[2]).await;
    assert_eq!(
        ids_listed(Some(Status::Pending), usize::MAX).await,
        vec![ids[3], ids[0]]
    );
    assert_eq!(ids_listed(Some(Status::Pending), 1).await, vec![ids[3]]);
    assert_eq!(
        ids_listed(Some(Status::Running), usize::MAX).await,
        vec![ids[2]]
    );
    assert_eq!(
        ids_listed(Some(Status::Failed), usize::MAX).await,
        vec![ids[1]]
    );
    assert_eq!(
        ids_listed(Some(Status::Succeeded), usize::MAX).await,
        vec![]
    );

    // The index follows the job: a retried job leaves `failed` and is listed as pending.
    store
        .retry(ids[1], "again")
        .await
        .accepted("failed is retryable");
    assert_eq!(ids_listed(Some(Status::Failed), usize::MAX).await, vec![]);
    assert_eq!(
        ids_listed(Some(Status::Pending), usize::MAX).await,
        vec![ids[3], ids[1], ids[0]]
    );
}
