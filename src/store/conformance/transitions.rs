//! The operator's and the orchestrator's transitions: leaving running (complete, fail, confirmed
//! cancel, reclaim) clears the phase and the lease in the same write; cancel, retry, reingest,
//! reset and `retry_from` take a job where the machine says and are refused elsewhere.

use super::fixtures::{
    Answer, checkpoint, claim, error_info, event_names, listed, read_job, running_job,
    store_checkpoint, submit_new, succeeded_job,
};
use crate::model::job::{
    ChangeToken, Checkpoint, Event, EventKind, Hash, JobId, Location, Phase, Status, StepOutput,
    Timestamp,
};
use crate::model::machine::Rejected;
use crate::store::StateStore;

/// complete, fail and confirm_cancel clear the phase and the lease in the same write.
pub(super) async fn leaving_running_clears_phase_and_lease(store: &dyn StateStore) {
    for (key, expected) in [
        ("complete", Status::Succeeded),
        ("fail", Status::Failed),
        ("cancel", Status::Cancelled),
        ("reclaim", Status::Pending),
    ] {
        let token = running_job(store, key).await;
        let id = token.job_id;
        store.set_phase(&token, Phase::Storing).await.accepted(key);
        if key == "cancel" {
            store.cancel(id).await.accepted("cancel request");
        }
        let events_before = store.events(id).await.expect("events").len();
        let returned = match key {
            "complete" => store.complete(&token).await,
            "fail" => store.fail(&token, error_info()).await,
            "cancel" => store.confirm_cancel(&token).await,
            _ => store.reclaim(id, "lease expired").await,
        }
        .accepted(key);
        let stored = read_job(store, id).await;
        assert_eq!(
            stored, returned,
            "{key}: the returned job is the stored job"
        );
        assert_eq!(stored.status, expected, "{key}");
        assert_eq!(stored.ingestion_phase, None, "{key} clears the phase");
        assert_eq!(stored.lease, None, "{key} clears the lease");
        assert!(!stored.cancel_requested, "{key} clears the cancel request");
        // The transition's own events, in whatever order the state machine gives them.
        let events = store.events(id).await.expect("events");
        let written: Vec<&EventKind> = events[events_before..]
            .iter()
            .map(|event| &event.kind)
            .collect();
        assert_eq!(written.len(), 2, "{key} wrote {written:?}");
        assert!(
            written.contains(&&EventKind::PhaseChanged {
                from: Some(Phase::Storing),
                to: None
            }),
            "{key}: the phase is cleared by the same transition: {written:?}"
        );
        assert!(
            written.iter().any(|kind| matches!(
                kind,
                EventKind::StatusChanged { from: Some(Status::Running), to, .. } if *to == expected
            )),
            "{key}: the status change is in the same transition: {written:?}"
        );
        if expected == Status::Failed {
            assert_eq!(stored.error, Some(error_info()));
        }
    }
}

/// Cancel ends a pending job at once, and asks a running job's worker to stop at a step boundary.
pub(super) async fn cancel_pending_and_running(store: &dyn StateStore) {
    let pending = submit_new(store, "cancel-pending").await;
    let cancelled = store.cancel(pending.id).await.accepted("pending");
    assert_eq!(cancelled.status, Status::Cancelled);
    let again = store.cancel(pending.id).await;
    again.not_allowed("cancel of a cancelled job");

    let token = running_job(store, "cancel-running").await;
    let id = token.job_id;
    let confirmed = store.confirm_cancel(&token).await;
    confirmed.not_allowed("confirm_cancel without a request");
    let phase = store.set_phase(&token, Phase::Downloading).await;
    phase.accepted("current token");
    let requested = store.cancel(id).await.accepted("running");
    assert_eq!(requested.status, Status::Running);
    assert!(requested.cancel_requested);
    assert_eq!(requested.ingestion_phase, Some(Phase::Downloading));
    // Asking twice is one request.
    let again = store.cancel(id).await.accepted("running");
    assert!(again.cancel_requested);
    let events = store.events(id).await.expect("events");
    let cancel_requests = events
        .iter()
        .filter(|event| event.kind == EventKind::CancelRequested)
        .count();
    assert_eq!(cancel_requests, 1);

    let confirmed = store.confirm_cancel(&token).await;
    let confirmed = confirmed.accepted("current token");
    assert_eq!(confirmed.status, Status::Cancelled);
    assert_eq!(confirmed.ingestion_phase, None);
    assert_eq!(confirmed.lease, None);
    assert_eq!(read_job(store, id).await, confirmed);

    let (succeeded, _) = succeeded_job(store, "cancel-succeeded").await;
    let cancelled = store.cancel(succeeded.id).await;
    cancelled.not_allowed("cancel of a succeeded job");
}

/// Retry takes failed jobs back to pending; reingest does it for succeeded ones.
pub(super) async fn retry_and_reingest(store: &dyn StateStore) {
    let token = running_job(store, "retry").await;
    let id = token.job_id;
    store.fail(&token, error_info()).await.accepted("fail");
    let retried = store.retry(id, "operator retry").await.accepted("failed");
    assert_eq!(retried.status, Status::Pending);
    assert_eq!(retried.lease, None);
    let events = store.events(id).await.expect("events");
    let names = event_names(&events);
    assert_eq!(
        names[names.len() - 2..],
        ["retry_requested", "status_changed"]
    );
    assert_eq!(
        events[events.len() - 2].kind,
        EventKind::RetryRequested {
            reason: "operator retry".to_string()
        }
    );
    let again = store.retry(id, "again").await;
    again.not_allowed("retry of a pending job");

    let token = claim(store, id).await;
    store.complete(&token).await.accepted("complete");
    let retried = store.retry(id, "why").await;
    retried.not_allowed("retry of a succeeded job");
    let reingested = store.reingest(id).await.accepted("succeeded");
    assert_eq!(reingested.status, Status::Pending);
    let again = store.reingest(id).await;
    again.not_allowed("reingest of a pending job");
}

/// Reclaim takes a running job whose worker is gone back to pending.
pub(super) async fn reclaim_returns_running_to_pending(store: &dyn StateStore) {
    let token = running_job(store, "reclaim").await;
    let id = token.job_id;
    let phase = store.set_phase(&token, Phase::Processing).await;
    phase.accepted("current token");
    let reclaimed = store.reclaim(id, "lease expired").await.accepted("running");
    assert_eq!(reclaimed.status, Status::Pending);
    assert_eq!(reclaimed.ingestion_phase, None);
    assert_eq!(reclaimed.lease, None);
    assert_eq!(
        reclaimed.fencing_token, token.fencing_token,
        "reclaim hands out no token"
    );
    let again = store.reclaim(id, "again").await;
    again.not_allowed("reclaim of a pending job");
    assert_eq!(listed(store, Some(Status::Pending)).await, vec![reclaimed]);
}

/// Reset sends a succeeded or failed job back to pending (cleanup removed its artifacts), with a
/// `retry_requested` event; it leaves pending, running and cancelled jobs alone.
pub(super) async fn reset_returns_finished_jobs_to_pending(store: &dyn StateStore) {
    let token = running_job(store, "reset").await;
    let id = token.job_id;
    store
        .reset(id, "x")
        .await
        .not_allowed("reset of a running job");
    store.complete(&token).await.accepted("complete");
    let reason = "cleanup removed a corrupt artifact";
    let reset = store.reset(id, reason).await.accepted("succeeded");
    assert_eq!(reset.status, Status::Pending);
    assert_eq!(reset.ingestion_phase, None);
    assert_eq!(read_job(store, id).await, reset);
    let events = store.events(id).await.expect("events");
    assert_eq!(
        events[events.len() - 2].kind,
        EventKind::RetryRequested {
            reason: reason.to_string()
        }
    );
    assert_eq!(
        events[events.len() - 1].kind,
        EventKind::StatusChanged {
            from: Some(Status::Succeeded),
            to: Status::Pending,
            reason: reason.to_string()
        }
    );
    let again = store.reset(id, "again").await;
    again.not_allowed("reset of a pending job");

    let token = claim(store, id).await;
    store.fail(&token, error_info()).await.accepted("fail");
    let reset = store.reset(id, "cleanup").await.accepted("failed");
    assert_eq!(reset.status, Status::Pending);

    let cancelled = submit_new(store, "reset-cancelled").await;
    store.cancel(cancelled.id).await.accepted("pending");
    let reset = store.reset(cancelled.id, "x").await;
    reset.not_allowed("reset of a cancelled job");
    let unknown = JobId::new();
    let reset = store.reset(unknown, "x").await;
    assert_eq!(reset.refused("reset"), Rejected::NotFound(unknown));
}

/// A download checkpoint whose video is in scratch, an extract checkpoint, and a store checkpoint
/// that stored the same video bytes as a blob (and the audio).
fn rewind_checkpoints(id: JobId) -> [Checkpoint; 3] {
    let video = Hash::of(b"video");
    let download = Checkpoint {
        step: "download".to_string(),
        definition_hash: Hash::of(b"download"),
        input_hash: Hash::of(b"source"),
        outputs: vec![StepOutput {
            name: "video".to_string(),
            location: Location::Scratch("/scratch/original".to_string()),
            size: 100,
            blake3: video,
            change_token: ChangeToken::File {
                inode: 1,
                size: 100,
                mtime_ns: 1,
            },
        }],
        recorded_at: Timestamp(1),
    };
    let mut store = store_checkpoint(id, &["blobs/aa/audio.m4a"], 3);
    store.outputs.insert(
        0,
        StepOutput {
            name: "video".to_string(),
            location: Location::Object("blobs/vv/video.mp4".to_string()),
            size: 100,
            blake3: video,
            change_token: ChangeToken::ETag("\"v\"".to_string()),
        },
    );
    [download, checkpoint("extract", 2), store]
}

/// `retry_from` sends a finished job back to pending with the step's checkpoint and the later
/// ones gone (the blob references with the store checkpoint), records each discard, re-points a
/// kept scratch output at the stored copy of its bytes, and is refused for a job that is pending,
/// running or unknown, changing nothing.
pub(super) async fn retry_from_discards_the_step_and_those_after_it(store: &dyn StateStore) {
    let token = running_job(store, "rewind").await;
    let id = token.job_id;
    let [download, extract, stored] = rewind_checkpoints(id);
    for checkpoint in [&download, &extract, &stored] {
        let recorded = store.record_checkpoint(&token, checkpoint, None).await;
        recorded.accepted("current token");
    }
    let later = vec!["store".to_string()];
    let running = read_job(store, id).await;
    let refused = store.retry_from(id, "extract", &later, "too early").await;
    refused.not_allowed("retry --from of a running job");
    assert_eq!(read_job(store, id).await, running);
    assert_eq!(store.checkpoints(id).await.expect("checkpoints").len(), 3);
    store.complete(&token).await.accepted("complete");
    let before = read_job(store, id).await.events_next;

    let retried = store
        .retry_from(id, "extract", &later, "by conformance")
        .await
        .accepted("a succeeded job may be retried from a step");

    assert_eq!(retried.status, Status::Pending);
    assert_eq!(retried.ingestion_phase, None);
    let checkpoints = store.checkpoints(id).await.expect("checkpoints");
    assert_eq!(checkpoints.len(), 1, "{checkpoints:?}");
    assert_eq!(checkpoints[0].step, "download");
    assert_eq!(
        checkpoints[0].outputs[0].location,
        Location::Object("blobs/vv/video.mp4".to_string()),
        "the video now stands at its stored copy"
    );
    assert_eq!(
        checkpoints[0].outputs[0].change_token,
        stored.outputs[0].change_token
    );
    assert_eq!(checkpoints[0].outputs[0].blake3, download.outputs[0].blake3);
    let referencing = store.jobs_referencing("blobs/aa/audio.m4a").await;
    assert_eq!(
        referencing.expect("refs"),
        vec![],
        "the blob references went with the store checkpoint"
    );
    let events = store.events(id).await.expect("events");
    let new: Vec<Event> = events
        .into_iter()
        .filter(|event| event.seq >= before)
        .collect();
    assert_eq!(
        event_names(&new),
        vec![
            "step_redone",
            "step_redone",
            "retry_requested",
            "status_changed"
        ]
    );
    for (event, step) in new.iter().zip(["extract", "store"]) {
        assert!(
            matches!(&event.kind, EventKind::StepRedone { step: redone, cause, .. }
                if redone == step && cause == "checkpoint_discarded"),
            "{event:?}"
        );
    }

    let pending = read_job(store, id).await;
    let refused = store.retry_from(id, "download", &[], "again").await;
    refused.not_allowed("retry --from of a pending job");
    assert_eq!(read_job(store, id).await, pending);
    assert_eq!(store.checkpoints(id).await.expect("checkpoints").len(), 1);
    let unknown = JobId(u128::MAX);
    let refused = store.retry_from(unknown, "extract", &later, "x").await;
    assert_eq!(refused.refused("retry_from"), Rejected::NotFound(unknown));
}
