//! The sled store's own tests: the conformance suite on disk, and what only sled has (reopening
//! from disk, the hand-over wait, group commit's counts, the blob index rebuilt, a corrupt record).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::keys::{TREE_BLOB_REFS, TREE_JOBS, TREE_LOGS, seq_key};
use super::logs::next_log_seq;
use super::open::held_by_another;
use super::{SledStore, TEST_PATIENCE};
use crate::model::job::{Delivery, Job, JobId, Phase, Status, Timestamp, WorkerId};
use crate::store::conformance::fixtures::{self, Answer};
use crate::store::test_support::request;
use crate::store::{
    ClaimNotice, JobFilter, JobLogSink, JobReader, OrchestratorStore, StateStore, StoreError,
    StoreResult, SubmitRequest, WebhookStore, WorkerStore, codec, conformance, test_support,
};

fn open(path: &Path) -> SledStore {
    SledStore::open_patiently(path, 8 * 1024 * 1024, TEST_PATIENCE).expect("open the sled store")
}

/// The event bound of the conformance suite's stores: above the longest history a check
/// writes by hand, far below `store::EVENTS_MAX`.
const CONFORMANCE_EVENTS_MAX: u64 = 16;

/// A factory of fresh stores, each in its own directory under one temp dir.
struct Stores {
    parent: tempfile::TempDir,
    count: AtomicUsize,
}

impl Stores {
    fn new() -> Stores {
        Stores {
            parent: tempfile::tempdir().expect("tempdir"),
            count: AtomicUsize::new(0),
        }
    }

    /// A fresh store with a small event bound, so that every check also runs over
    /// compacted histories.
    fn fresh(&self) -> SledStore {
        let index = self.count.fetch_add(1, Ordering::Relaxed);
        let store = open(&self.parent.path().join(format!("store-{index}")));
        store.set_events_max(CONFORMANCE_EVENTS_MAX);
        store
    }
}

#[tokio::test]
async fn conformance_suite_passes_on_disk() {
    let stores = Stores::new();
    conformance::run_all(|| async { stores.fresh() }).await;
    // Each check's store was dropped when the check ended: reopen every one from disk, and
    // check that the trees of what the suite left behind agree with each other.
    let count = stores.count.load(Ordering::Relaxed);
    assert!(count > 10, "the suite made {count} stores");
    for index in 0..count {
        let store = open(&stores.parent.path().join(format!("store-{index}")));
        if let Err(error) = store.check_consistency() {
            panic!("store {index} after the conformance suite: {error}");
        }
    }
}

// Guards the durability of webhook notices: a notice queued by a terminal transition, and the
// retry time a failed attempt set, are there after the store is closed and opened again.
#[tokio::test]
async fn a_pending_webhook_notice_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = {
        let store = open(dir.path());
        let id = store.submit(&request("hooked")).await.unwrap().job.id;
        store
            .set_webhooks(&[(id, "https://hooks.example.com/x".to_string())])
            .await
            .unwrap();
        let (_, token) = store.claim(id, &worker(), 60_000).await.unwrap().unwrap();
        store.complete(&token).await.unwrap().unwrap();
        id
    };
    let store = open(dir.path());
    store.check_consistency().expect("consistent");
    let now = Timestamp::now().plus_ms(1);
    let ClaimNotice::Claimed(webhook) = store.claim_notice(now, 1_000).await.unwrap() else {
        panic!("the notice survived the restart");
    };
    assert_eq!(webhook.job_id, id);
    let notice = webhook.pending.clone().unwrap();
    assert_eq!(notice.status, Status::Succeeded);
    let delivery = Delivery {
        delivery_id: notice.delivery_id,
        status: notice.status,
        attempt: 1,
        at: now,
        status_code: None,
        error: Some("connection refused".to_string()),
        ok: false,
        gave_up: false,
    };
    let retry_at = now.plus_ms(30_000);
    store
        .record_delivery(id, &delivery, Some(retry_at))
        .await
        .unwrap();
    drop(store);
    let store = open(dir.path());
    store.check_consistency().expect("consistent");
    assert_eq!(
        store.claim_notice(now, 1_000).await.unwrap(),
        ClaimNotice::Wait {
            until: Some(retry_at)
        }
    );
    let webhook = store.webhook(id).await.unwrap().unwrap();
    assert_eq!(webhook.deliveries, vec![delivery]);
}

// Guards the hand-over wait's end: a database another open file still holds at the deadline
// is reported as locked, naming it (flock locks belong to the open file, so a second open in
// this process conflicts as another process would); other errors are not waited on.
#[test]
fn a_database_still_locked_at_the_deadline_is_named_as_locked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _holder = open(dir.path());
    let error = SledStore::open_patiently(
        dir.path(),
        8 * 1024 * 1024,
        std::time::Duration::from_millis(20),
    )
    .expect_err("the database is held");
    let StoreError::Io(io) = &error else {
        panic!("an I/O error, not {error:?}");
    };
    assert_eq!(io.kind(), std::io::ErrorKind::WouldBlock);
    let message = error.to_string();
    assert!(
        message.contains("is still locked by another process"),
        "{message}"
    );
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );

    let not_a_directory = dir.path().join("file");
    std::fs::write(&not_a_directory, b"x").expect("write a file");
    let error = SledStore::open_patiently(&not_a_directory, 8 * 1024 * 1024, TEST_PATIENCE)
        .expect_err("a file is no database");
    assert!(!held_by_another(&error), "{error}");
}

fn worker() -> WorkerId {
    WorkerId("test:1:1".to_string())
}

// Guards the point of `submit_batch`: a 2,000-line backfill costs one flush and a transaction
// per SUBMIT_BATCH_MAX submissions, not a flush and a transaction per line; and a re-run of
// the same batch (every job existing) costs the same, not more.
#[tokio::test]
async fn a_batch_of_2000_submissions_is_one_flush_and_four_transactions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let backfill = store
        .open_backfill("manifest")
        .await
        .expect("open_backfill");
    let requests: Vec<SubmitRequest> = (0..2_000)
        .map(|index| request(&format!("source-{}", index % 7 + index)))
        .collect();
    let options = crate::store::BatchOptions {
        backfill: Some(backfill.id),
        ..Default::default()
    };
    for _ in 0..2 {
        let (flushes, transactions) = (store.flush_count(), store.transaction_count());
        let submitted = store
            .submit_batch(&requests, &options)
            .await
            .expect("submit_batch");
        assert_eq!(submitted.len(), 2_000);
        assert_eq!(store.flush_count() - flushes, 1, "one flush for the batch");
        assert_eq!(
            store.transaction_count() - transactions,
            2_000_u64.div_ceil(u64::try_from(crate::store::SUBMIT_BATCH_MAX).expect("small")),
            "one transaction per SUBMIT_BATCH_MAX submissions"
        );
    }
    let distinct: BTreeSet<String> = requests.iter().map(|r| r.key.clone()).collect();
    assert_eq!(
        store.backfill_jobs(backfill.id).await.expect("jobs").len(),
        distinct.len()
    );
    // One at a time, the same work would flush once per submission.
    let flushes = store.flush_count();
    for request in requests.iter().take(10) {
        store.submit(request).await.expect("submit");
    }
    assert_eq!(store.flush_count() - flushes, 10);
    store.check_consistency().expect("consistent");
}

#[tokio::test]
async fn reopened_store_finds_what_was_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let checkpoint = fixtures::checkpoint("download", 1_000);
    let (job, events) = {
        let store = open(dir.path());
        let (_, token) = test_support::submit_and_claim(&store, "a", &worker()).await;
        let phase_set = store.set_phase(&token, Phase::Downloading).await;
        phase_set.accepted("set_phase");
        let recorded = store.record_checkpoint(&token, &checkpoint, None).await;
        recorded.accepted("record_checkpoint");
        store.append_log(token.job_id, fixtures::log_line(5, "before reopen"));
        let job = store.job(token.job_id).await.expect("job").expect("exists");
        let events = store.events(token.job_id).await.expect("events");
        (job, events)
    };

    let store = open(dir.path());
    assert_eq!(store.job(job.id).await.expect("job"), Some(job.clone()));
    assert_eq!(
        store.job_by_key("a").await.expect("job_by_key"),
        Some(job.clone())
    );
    assert_eq!(store.events(job.id).await.expect("events"), events);
    assert_eq!(
        store
            .checkpoint(job.id, "download")
            .await
            .expect("checkpoint"),
        Some(checkpoint)
    );
    let running = fixtures::listed(&store, Some(Status::Running)).await;
    assert_eq!(running, vec![job.clone()]);

    // The log sequence resumes past the lines already on disk, so new lines sort after them.
    store.append_log(job.id, fixtures::log_line(6, "after reopen"));
    let messages: Vec<String> = store
        .logs(job.id)
        .await
        .expect("logs")
        .into_iter()
        .map(|line| line.message)
        .collect();
    assert_eq!(messages, vec!["before reopen", "after reopen"]);
    assert_eq!(store.log_lines_dropped(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claimers_never_share_a_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(open(dir.path()));
    let claimers = (0..8)
        .map(|_| Arc::clone(&store) as Arc<dyn StateStore>)
        .collect();
    test_support::claim_concurrently(
        store.as_ref(),
        claimers,
        |claimer| WorkerId(format!("test:1:{claimer}")),
        40,
    )
    .await;
}

#[test]
fn next_log_seq_is_one_past_the_highest_of_any_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = sled::Config::new().path(dir.path()).open().expect("open");
    let logs = db.open_tree(TREE_LOGS).expect("tree");
    assert_eq!(next_log_seq(&logs).expect("empty"), 0);
    for (id, seq) in [(JobId(1), 7), (JobId(1), 3), (JobId(2), 12), (JobId(3), 5)] {
        logs.insert(seq_key(id, seq), Vec::new()).expect("insert");
    }
    assert_eq!(next_log_seq(&logs).expect("filled"), 13);
}

// Guards the blob index of stores written before it existed: opening one builds the index
// from the store checkpoints, and `check_consistency` names an index that lost an entry.
#[tokio::test]
async fn the_blob_index_is_built_when_a_store_without_one_is_opened() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blob = "blobs/aa/aaaa.mp4";
    let id = {
        let store = open(dir.path());
        let (job, token) = test_support::submit_and_claim(&store, "indexed", &worker()).await;
        fixtures::record_stored(&store, &token, &[blob], 1_000).await;
        store.check_consistency().expect("consistent");
        // What a store written before the index looks like.
        store.blob_refs.clear().expect("clear");
        match store.check_consistency() {
            Err(StoreError::Corrupt { tree, reason, .. }) => {
                assert_eq!(tree, TREE_BLOB_REFS);
                assert!(reason.contains("not indexed"), "{reason}");
            }
            other => panic!("expected the missing reference to be named, got {other:?}"),
        }
        store.db.flush().expect("flush");
        job.id
    };
    let store = open(dir.path());
    assert_eq!(store.jobs_referencing(blob).await.expect("refs"), vec![id]);
    store
        .check_consistency()
        .expect("consistent after the rebuild");
}

#[tokio::test]
async fn a_corrupt_job_record_names_its_tree_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let id = JobId(0xff);
    store
        .jobs
        .insert(id.to_bytes(), vec![codec::SCHEMA_VERSION, 0xff])
        .expect("insert");
    match store.job(id).await {
        Err(StoreError::Corrupt { tree, key, .. }) => {
            assert_eq!(tree, TREE_JOBS);
            assert_eq!(key, codec::hex(&id.to_bytes()));
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

// Guards fault isolation: garbage in one job's record is an error that names the
// `jobs` tree and that job's key wherever the record is read, and `check_consistency` (what
// `narra doctor` runs) reports it; the other jobs still read, checkpoint and complete, and
// `claim_next` passes over the corrupt pending job instead of stopping every worker.
#[tokio::test]
async fn a_corrupted_job_record_is_named_and_leaves_the_other_jobs_working() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let corrupted = store.submit(&request("corrupted")).await.expect("submit");
    let healthy = store.submit(&request("healthy")).await.expect("submit");
    let corrupted_id = corrupted.job.id;
    let key_hex = codec::hex(&corrupted_id.to_bytes());
    store
        .jobs
        .insert(corrupted_id.to_bytes(), test_support::garbage_record())
        .expect("insert");

    let names_the_job = |result: StoreResult<Option<Job>>| match result {
        Err(error) => {
            assert!(
                matches!(&error, StoreError::Corrupt { tree, key, .. } if *tree == TREE_JOBS && *key == key_hex),
                "{error:?}"
            );
            assert!(error.to_string().contains(&key_hex), "{error}");
        }
        other => panic!("expected Corrupt naming the job, got {other:?}"),
    };
    names_the_job(store.job(corrupted_id).await);
    names_the_job(store.job_by_key("corrupted").await);
    match store.check_consistency() {
        Err(StoreError::Corrupt { tree, key, .. }) => {
            assert_eq!((tree, key), (TREE_JOBS, key_hex.clone()));
        }
        other => panic!("check_consistency names the record, got {other:?}"),
    }
    // Listing every job reports the record rather than hiding it.
    assert!(matches!(
        store
            .jobs(&JobFilter {
                status: None,
                limit: usize::MAX
            })
            .await,
        Err(StoreError::Corrupt { .. })
    ));
    // A transition of the corrupted job is refused as corrupt, writing nothing.
    assert!(matches!(
        store.cancel(corrupted_id).await,
        Err(StoreError::Corrupt { .. })
    ));

    let id = healthy.job.id;
    assert_eq!(
        store.job(id).await.expect("read").map(|job| job.status),
        Some(Status::Pending)
    );
    let (_, token) = crate::store::conformance::claim_next_as(&store, &worker())
        .await
        .expect("the healthy job is claimable");
    assert_eq!(token.job_id, id);
    let phase_set = store.set_phase(&token, Phase::Downloading).await;
    phase_set.accepted("set_phase");
    let checkpoint = fixtures::checkpoint("download", Timestamp::now().0);
    let recorded = store.record_checkpoint(&token, &checkpoint, None).await;
    recorded.accepted("record_checkpoint");
    let done = test_support::complete(&store, &token).await;
    assert_eq!(done.status, Status::Succeeded);
    // The status index still lists the healthy job.
    let succeeded = fixtures::listed(&store, Some(Status::Succeeded)).await;
    assert_eq!(
        succeeded.iter().map(|job| job.id).collect::<Vec<_>>(),
        vec![id]
    );
}
