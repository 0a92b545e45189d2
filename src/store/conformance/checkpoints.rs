//! Checkpoints, the metadata record and the blob -> jobs index: they read back as written, only
//! under the current lease, and the index follows each job's store checkpoint in its own write;
//! a reprobe replaces a finished job's record.

use super::fixtures::{
    Answer, checkpoint, media_metadata, read_job, record_stored, running_job, store_checkpoint,
    submit_new, taken_over,
};
use crate::model::job::{Checkpoint, EventKind, Hash, MediaMetadata, StepOutput, Timestamp};
use crate::store::StateStore;

/// A checkpoint under a stale token is refused and writes nothing: no checkpoint, no metadata, no
/// event.
pub(super) async fn stale_checkpoint_writes_nothing(store: &dyn StateStore) {
    let (stale, current) = taken_over(store, "stale-checkpoint").await;
    let id = stale.job_id;
    let job_before = read_job(store, id).await;
    let events_before = store.events(id).await.expect("events");

    let metadata = media_metadata();
    let download = checkpoint("download", 1);
    let recorded = store
        .record_checkpoint(&stale, &download, Some(&metadata))
        .await;
    recorded.fenced("record_checkpoint with a stale token");
    assert_eq!(store.checkpoints(id).await.expect("checkpoints"), vec![]);
    let read = store.checkpoint(id, "download").await;
    assert_eq!(read.expect("checkpoint"), None);
    assert_eq!(store.metadata(id).await.expect("metadata"), None);
    assert_eq!(store.events(id).await.expect("events"), events_before);
    assert_eq!(read_job(store, id).await, job_before);

    // The same write under the current token goes through.
    let recorded = store
        .record_checkpoint(&current, &download, Some(&metadata))
        .await;
    recorded.accepted("current token");
    assert_eq!(store.checkpoints(id).await.expect("checkpoints").len(), 1);
}

/// Checkpoints and the metadata record read back as written, in the order the steps were recorded.
pub(super) async fn checkpoints_and_metadata_read_back_equal(store: &dyn StateStore) {
    let token = running_job(store, "checkpoints").await;
    let id = token.job_id;
    // Recorded out of name order, to tell recording order from key order.
    let download = checkpoint("download", 100);
    let extract = checkpoint("extract", 200);
    let store_step = checkpoint("store", 300);
    let metadata = media_metadata();
    for (checkpoint, metadata) in [
        (&download, None),
        (&store_step, None),
        (&extract, Some(&metadata)),
    ] {
        let recorded = store.record_checkpoint(&token, checkpoint, metadata).await;
        recorded.accepted("current token");
    }
    assert_eq!(
        store.checkpoints(id).await.expect("checkpoints"),
        vec![download.clone(), extract.clone(), store_step.clone()]
    );
    let read = store.checkpoint(id, "extract").await;
    assert_eq!(read.expect("checkpoint"), Some(extract.clone()));
    let missing = store.checkpoint(id, "missing").await;
    assert_eq!(missing.expect("checkpoint"), None);
    assert_eq!(store.metadata(id).await.expect("metadata"), Some(metadata));

    // Recording a step again replaces its checkpoint.
    let redone = Checkpoint {
        input_hash: Hash::of(b"new input"),
        recorded_at: Timestamp(400),
        ..download.clone()
    };
    let recorded = store.record_checkpoint(&token, &redone, None).await;
    recorded.accepted("current token");
    assert_eq!(
        store.checkpoints(id).await.expect("checkpoints"),
        vec![extract, store_step, redone]
    );

    // Another job's checkpoints are its own.
    let other = submit_new(store, "other").await;
    let checkpoints = store.checkpoints(other.id).await;
    assert_eq!(checkpoints.expect("checkpoints"), vec![]);
    assert_eq!(store.metadata(other.id).await.expect("metadata"), None);
}

/// `record_reprobe` replaces the metadata record and the extract checkpoint of a finished job, with
/// a `reprobed` event, in one write; on a job a worker may be writing it writes nothing.
pub(super) async fn reprobe_replaces_the_record_of_a_finished_job_only(store: &dyn StateStore) {
    let token = running_job(store, "reprobe").await;
    let id = token.job_id;
    let extract = checkpoint("extract", 200);
    let metadata = media_metadata();
    let recorded = store
        .record_checkpoint(&token, &extract, Some(&metadata))
        .await;
    recorded.accepted("current token");
    let reprobed_metadata = MediaMetadata {
        duration_s: Some(2.0),
        ..metadata.clone()
    };
    let reprobed_checkpoint = Checkpoint {
        outputs: vec![StepOutput {
            blake3: Hash::of(b"the new record"),
            ..extract.outputs[0].clone()
        }],
        ..extract.clone()
    };
    let changes = vec!["duration_s: 12.5 -> 2.0".to_string()];
    let events_before = store.events(id).await.expect("events").len();
    let reprobe = || {
        store.record_reprobe(
            id,
            &reprobed_checkpoint,
            &reprobed_metadata,
            changes.clone(),
        )
    };

    reprobe().await.not_allowed("reprobe of a running job");
    assert_eq!(
        store.metadata(id).await.expect("metadata"),
        Some(metadata.clone())
    );
    assert_eq!(store.events(id).await.expect("events").len(), events_before);

    let done = store.complete(&token).await.accepted("complete");
    let job = reprobe().await.accepted("a succeeded job may be reprobed");

    assert_eq!(job.status, done.status, "a reprobe changes no status");
    assert_eq!(job.ingestion_phase, None);
    assert_eq!(
        store.metadata(id).await.expect("metadata"),
        Some(reprobed_metadata.clone())
    );
    let read = store.checkpoint(id, "extract").await;
    assert_eq!(read.expect("checkpoint"), Some(reprobed_checkpoint.clone()));
    let events = store.events(id).await.expect("events");
    assert_eq!(
        events.last().map(|event| &event.kind),
        Some(&EventKind::Reprobed { changes })
    );
    assert_eq!(read_job(store, id).await, job);
}

/// The blob -> jobs index follows each job's store checkpoint, in the checkpoint's own write: it
/// lists the `blobs/` objects only, is replaced when the store step is recorded again, ignores
/// other steps and refused writes, and tells apart keys that are prefixes of each other.
pub(super) async fn blob_refs_follow_the_store_checkpoint(store: &dyn StateStore) {
    let first = running_job(store, "refs-first").await;
    let second = running_job(store, "refs-second").await;
    let shared = "blobs/aa/aaaa.mp4";
    let first_audio = "blobs/bb/bbbb.m4a";
    let second_audio = "blobs/cc/cccc.m4a";
    let referencing =
        |key: String| async move { store.jobs_referencing(&key).await.expect("refs") };
    assert_eq!(referencing(shared.into()).await, vec![]);

    for (token, blobs) in [
        (&first, [shared, first_audio]),
        (&second, [shared, second_audio]),
    ] {
        record_stored(store, token, &blobs, 10).await;
    }
    let mut both = vec![first.job_id, second.job_id];
    both.sort();
    assert_eq!(referencing(shared.into()).await, both);
    assert_eq!(referencing(first_audio.into()).await, vec![first.job_id]);
    assert_eq!(
        referencing(format!("jobs/{}/manifest.json", first.job_id)).await,
        vec![],
        "manifests are not indexed"
    );
    assert_eq!(
        referencing("blobs/aa/aaaa".into()).await,
        vec![],
        "a key that is a prefix of an indexed key names no job"
    );

    // Another step's checkpoint never touches the index, even when it names a blob.
    let mut extract = store_checkpoint(first.job_id, &["blobs/dd/dddd.flac"], 20);
    extract.step = "extract".to_string();
    let recorded = store.record_checkpoint(&first, &extract, None).await;
    recorded.accepted("current token");
    assert_eq!(referencing("blobs/dd/dddd.flac".into()).await, vec![]);

    // Recording the store step again replaces the job's references.
    let redone_audio = "blobs/ee/eeee.m4a";
    record_stored(store, &first, &[shared, redone_audio], 30).await;
    assert_eq!(referencing(first_audio.into()).await, vec![]);
    assert_eq!(referencing(redone_audio.into()).await, vec![first.job_id]);
    assert_eq!(referencing(shared.into()).await, both);

    // A refused checkpoint changes no reference.
    let reclaimed = store.reclaim(second.job_id, "worker gone").await;
    reclaimed.accepted("reclaimable");
    let refused = store_checkpoint(second.job_id, &["blobs/ff/ffff.mp4"], 40);
    let recorded = store.record_checkpoint(&second, &refused, None).await;
    recorded.fenced("a store checkpoint under a stale token");
    assert_eq!(referencing("blobs/ff/ffff.mp4".into()).await, vec![]);

    let mut expected = vec![
        (shared.to_string(), both[0]),
        (shared.to_string(), both[1]),
        (second_audio.to_string(), second.job_id),
        (redone_audio.to_string(), first.job_id),
    ];
    expected.sort();
    assert_eq!(store.blob_refs().await.expect("blob_refs"), expected);
}
