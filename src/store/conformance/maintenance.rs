//! What maintenance does to the records: `delete_job` removes every record of a job, `prune_jobs`
//! removes a finished job's records but keeps its blob references beside a tombstone, and the
//! incident log appends in order.

use super::fixtures::{
    Answer, expect_not_allowed, listed, log_line, read_job, record_run, record_stored, running_job,
    submit_new,
};
use crate::model::job::{JobId, JobProgress, Phase, Status, Timestamp};
use crate::model::machine::Rejected;
use crate::store::{NewIncident, StateStore};

/// The job and every record it had are gone, and its key names no job.
async fn assert_records_gone(store: &dyn StateStore, id: JobId, key: &str) {
    assert_eq!(store.job(id).await.expect("job"), None);
    assert_eq!(store.job_by_key(key).await.expect("key"), None);
    assert_eq!(store.checkpoints(id).await.expect("checkpoints"), vec![]);
    assert_eq!(store.events(id).await.expect("events"), vec![]);
    assert_eq!(store.metadata(id).await.expect("metadata"), None);
    assert_eq!(store.logs(id).await.expect("logs"), vec![]);
}

/// Delete removes every record of a job that is not running and nothing of any other job; its
/// key becomes free, so submitting the source again makes a new job.
pub(super) async fn delete_removes_every_record_of_a_job(store: &dyn StateStore) {
    let token = running_job(store, "delete-me").await;
    let keeper = running_job(store, "keep-me").await;
    let id = token.job_id;
    let shared = "blobs/aa/shared.mp4";
    let own = "blobs/bb/own.m4a";
    store
        .set_phase(&token, Phase::Storing)
        .await
        .accepted("phase");
    record_run(store, &token, &[shared, own]).await;
    record_stored(store, &keeper, &[shared, "blobs/cc/keep.m4a"], 2).await;
    let progress = JobProgress {
        bytes_done: 1,
        bytes_total: None,
        rate_bytes_per_s: 1,
        updated_at: Timestamp(1),
    };
    let set = store.set_progress(&token, &progress).await;
    set.accepted("set_progress");
    store.append_log(id, log_line(1, "doomed"));
    let refused = store.delete_job(id).await;
    refused.not_allowed("delete of a running job");
    assert!(store.job(id).await.expect("job").is_some());
    store.complete(&token).await.accepted("complete");
    let keeper_events = store.events(keeper.job_id).await.expect("events");

    let deleted = store.delete_job(id).await;
    let deleted = deleted.accepted("a succeeded job is deletable");
    assert_eq!(deleted.id, id);
    assert_records_gone(store, id, "delete-me").await;
    assert_eq!(store.progress(id).await.expect("progress"), None);
    let referencing = |key| async move { store.jobs_referencing(key).await.expect("refs") };
    assert_eq!(referencing(own).await, vec![]);
    assert_eq!(referencing(shared).await, vec![keeper.job_id]);
    let all = listed(store, None).await;
    assert_eq!(
        all.iter().map(|job| job.id).collect::<Vec<_>>(),
        vec![keeper.job_id]
    );
    assert_eq!(listed(store, Some(Status::Succeeded)).await, vec![]);
    assert_eq!(
        store.events(keeper.job_id).await.expect("events"),
        keeper_events
    );
    let again = store.delete_job(id).await;
    assert_eq!(again.refused("delete"), Rejected::NotFound(id));

    let again = submit_new(store, "delete-me").await;
    assert_ne!(again.id, id, "a deleted job's key makes a new job");
}

/// The incident log numbers its lines from 0 and reads them back as written, oldest first.
pub(super) async fn incidents_are_appended_in_order(store: &dyn StateStore) {
    assert_eq!(store.incidents().await.expect("incidents"), vec![]);
    let job = submit_new(store, "incident").await;
    let lines = [
        (
            "deleted_object",
            Some(job.id),
            Some("blobs/aa/x.mp4"),
            "corrupt",
        ),
        ("removed_scratch", None, Some("/scratch/x"), "stale"),
        ("reset_job", Some(job.id), None, "artifacts removed"),
    ];
    for (action, job, key, reason) in lines {
        store
            .record_incident(NewIncident {
                actor: "ops".to_string(),
                action: action.to_string(),
                job,
                key: key.map(str::to_string),
                reason: reason.to_string(),
            })
            .await
            .expect("record_incident");
    }
    let incidents = store.incidents().await.expect("incidents");
    assert_eq!(incidents.len(), lines.len());
    for (index, (incident, (action, job, key, reason))) in incidents.iter().zip(lines).enumerate() {
        assert_eq!(incident.seq, u64::try_from(index).expect("small"));
        assert_eq!(incident.actor, "ops");
        assert_eq!(incident.action, action);
        assert_eq!(incident.job, job);
        assert_eq!(incident.key.as_deref(), key);
        assert_eq!(incident.reason, reason);
    }
    assert!(incidents.windows(2).all(|pair| pair[0].at <= pair[1].at));
}

/// `prune_jobs` removes the records of finished jobs last updated before the cutoff, as
/// `delete_job` does, but their blob references stay beside a tombstone; it refuses (changing
/// nothing) a pending, running, unknown or too recent job; and the pruned job's key is free.
pub(super) async fn prune_removes_a_finished_job_but_keeps_its_blob_references(
    store: &dyn StateStore,
) {
    let old = running_job(store, "prune-old").await;
    let running = running_job(store, "prune-running").await;
    let pending = submit_new(store, "prune-pending").await;
    let id = old.job_id;
    let shared = "blobs/aa/shared.mp4";
    let own = "blobs/bb/own.m4a";
    record_run(store, &old, &[shared, own]).await;
    record_stored(store, &running, &[shared, "blobs/cc/c.m4a"], 2).await;
    store.append_log(id, log_line(1, "pruned soon"));
    let finished = store.complete(&old).await.accepted("complete");
    let refs_before = store.blob_refs().await.expect("blob_refs");

    // Updated after the cutoff: not old enough.
    let too_recent = store.prune_jobs(&[id], finished.updated_at).await;
    let too_recent = too_recent.expect("prune_jobs");
    assert!(
        matches!(too_recent.as_slice(), [Err(Rejected::UpdatedSince { .. })]),
        "{too_recent:?}"
    );
    assert_eq!(read_job(store, id).await, finished);

    let unknown = JobId(u128::MAX);
    let cutoff = Timestamp::now().plus_ms(60_000);
    let running_before = read_job(store, running.job_id).await;
    let outcomes = store
        .prune_jobs(&[id, running.job_id, pending.id, unknown], cutoff)
        .await
        .expect("prune_jobs");
    assert_eq!(outcomes.len(), 4);
    let tombstone = outcomes[0]
        .clone()
        .expect("a succeeded job older than the cutoff");
    expect_not_allowed(outcomes[1].clone(), "prune of a running job");
    expect_not_allowed(outcomes[2].clone(), "prune of a pending job");
    assert_eq!(outcomes[3], Err(Rejected::NotFound(unknown)));

    assert_eq!(tombstone.id, id);
    assert_eq!(tombstone.status, Status::Succeeded);
    assert_eq!(tombstone.key, "prune-old");
    assert_eq!(tombstone.updated_at, finished.updated_at);
    assert_eq!(tombstone.blobs, vec![shared.to_string(), own.to_string()]);
    assert_eq!(tombstone.manifest, Some(format!("jobs/{id}/manifest.json")));
    assert_eq!(store.pruned_job(id).await.expect("pruned"), Some(tombstone));
    assert_records_gone(store, id, "prune-old").await;
    assert_eq!(store.event_summary(id).await.expect("summary"), None);
    assert_eq!(
        store.blob_refs().await.expect("blob_refs"),
        refs_before,
        "the pruned job's blobs stay referenced"
    );
    let referencing = store.jobs_referencing(own).await;
    assert!(referencing.expect("refs").contains(&id));
    assert_eq!(read_job(store, running.job_id).await, running_before);
    assert_eq!(read_job(store, pending.id).await.status, Status::Pending);
    assert_eq!(store.pruned_job(pending.id).await.expect("pruned"), None);
    assert_eq!(
        store.prune_jobs(&[id], cutoff).await.expect("prune_jobs"),
        vec![Err(Rejected::NotFound(id))]
    );

    let again = submit_new(store, "prune-old").await;
    assert_ne!(again.id, id, "a pruned job's key makes a new job");
}
