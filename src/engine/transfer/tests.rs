//! `export` then `import` between two stores of the same kind, two sled stores and two
//! PostgreSQL schemas, written with the store conformance suite's fixtures. The store's own
//! `import` (one record, written only where the target holds nothing under its identity) is the
//! store's; this is the whole file's round trip.

use super::{Secrets, check, export, import};
use crate::model::job::{
    BackfillId, Checkpoint, Event, EventSummary, HostState, Incident, Job, JobId, JobProgress,
    LogLine, MediaMetadata, Status, Timestamp, Webhook,
};
use crate::model::scheduling::HostOutcome;
use crate::store::conformance::fixtures::{
    Answer, LEASE_TTL_MS, error_info, log_line, open_policy, record_run, request, running_job,
    worker,
};
use crate::store::pg_store::test_server::TestServer;
use crate::store::sled_store::TEST_PATIENCE;
use crate::store::transfer::{ImportOutcome, JobRecords, Record};
use crate::store::{
    BatchOptions, JobFilter, NewIncident, PgStore, Resubmit, SledStore, StateStore, StepEvent,
};

/// The event bound of both stores, the conformance suite's: every history here is compacted.
const EVENTS_MAX: u64 = 16;

fn open_sled(path: &std::path::Path) -> SledStore {
    let store = SledStore::open_patiently(path, 8 * 1024 * 1024, TEST_PATIENCE)
        .expect("open the sled store");
    store.set_events_max(EVENTS_MAX);
    store
}

async fn open_pg(uri: &str) -> PgStore {
    let store = PgStore::open(uri).await.expect("open the PostgreSQL store");
    store.set_events_max(EVENTS_MAX);
    store
}

#[tokio::test]
async fn export_then_import_reproduces_every_record_on_sled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let [source, target] = ["source", "target"].map(|name| dir.path().join(name));
    export_then_import_reproduces_every_record(&open_sled(&source), &open_sled(&target)).await;
    // Both stores were dropped: what they hold on disk agrees with itself.
    for path in [source, target] {
        if let Err(error) = open_sled(&path).check_consistency() {
            panic!("{} after the round trip: {error}", path.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import_reproduces_every_record_on_postgres() {
    let server = TestServer::start().await;
    let source = server.fresh_schema("transfer_source").await;
    let target = server.fresh_schema("transfer_target").await;
    export_then_import_reproduces_every_record(&open_pg(&source).await, &open_pg(&target).await)
        .await;
    for uri in [source, target] {
        if let Err(error) = open_pg(&uri).await.check_consistency().await {
            panic!("{uri} after the round trip: {error}");
        }
    }
    server.cleanup().await;
}

/// What a store holds of one job beside the job itself, read through `JobReader`.
#[derive(Debug, PartialEq)]
struct JobHeld {
    checkpoints: Vec<Checkpoint>,
    events: Vec<Event>,
    event_summary: Option<EventSummary>,
    metadata: Option<MediaMetadata>,
    progress: Option<JobProgress>,
    logs: Vec<LogLine>,
    webhook: Option<Webhook>,
}

impl JobHeld {
    async fn read(store: &dyn StateStore, id: JobId) -> JobHeld {
        JobHeld {
            checkpoints: store.checkpoints(id).await.expect("checkpoints"),
            events: store.events(id).await.expect("events"),
            event_summary: store.event_summary(id).await.expect("summary"),
            metadata: store.metadata(id).await.expect("metadata"),
            progress: store.progress(id).await.expect("progress"),
            logs: store.logs(id).await.expect("logs"),
            webhook: store.webhook(id).await.expect("webhook"),
        }
    }
}

/// What a store holds beside its jobs: the blob index, a backfill's jobs, the incident log and
/// the hosts' scheduling state.
#[derive(Debug, PartialEq)]
struct StoreHeld {
    blob_refs: Vec<(String, JobId)>,
    backfill_jobs: Vec<JobId>,
    incidents: Vec<Incident>,
    hosts: Vec<HostState>,
}

impl StoreHeld {
    async fn read(store: &dyn StateStore, backfill: BackfillId) -> StoreHeld {
        StoreHeld {
            blob_refs: store.blob_refs().await.expect("blob_refs"),
            backfill_jobs: store.backfill_jobs(backfill).await.expect("backfill_jobs"),
            incidents: store.incidents().await.expect("incidents"),
            hosts: store.hosts().await.expect("hosts"),
        }
    }
}

/// `narra export` of `source` then `narra import` into the empty `target`: every record reads
/// back the same, an import run again writes nothing, a record the target holds with other
/// content is a conflict, and the target goes on from where the source was.
async fn export_then_import_reproduces_every_record(
    source: &dyn StateStore,
    target: &dyn StateStore,
) {
    // A succeeded job with every kind of record, then pruned; another succeeded and kept.
    let pruned = running_job(source, "transfer-pruned").await;
    let kept = running_job(source, "transfer-kept").await;
    for (token, blob) in [
        (&pruned, "blobs/aa/pruned.mp4"),
        (&kept, "blobs/bb/kept.mp4"),
    ] {
        record_run(source, token, &[blob]).await;
        let progress = JobProgress {
            bytes_done: 10,
            bytes_total: Some(20),
            rate_bytes_per_s: 5,
            updated_at: Timestamp(3),
        };
        let set = source.set_progress(token, &progress).await;
        set.accepted("set_progress");
        let line = log_line(4, &format!("line of {}", token.job_id));
        source.append_log(token.job_id, line);
        source.complete(token).await.accepted("complete");
    }
    source.flush_logs();
    // A finished job's first webhook queues a notice at once: a pending notice travels too.
    source
        .set_webhooks(&[(kept.job_id, "https://hooks.example/narra".to_string())])
        .await
        .expect("set_webhooks");
    assert!(
        source
            .webhook(kept.job_id)
            .await
            .expect("webhook")
            .is_some_and(|webhook| webhook.pending.is_some())
    );
    let cutoff = Timestamp::now().plus_ms(60_000);
    let tombstone = source
        .prune_jobs(&[pruned.job_id], cutoff)
        .await
        .expect("prune_jobs")
        .remove(0)
        .expect("prunable");
    let failed = running_job(source, "transfer-failed").await;
    source.fail(&failed, error_info()).await.accepted("fail");
    let running = running_job(source, "transfer-running").await;
    let backfill = source
        .open_backfill("/manifests/transfer.txt")
        .await
        .expect("open_backfill");
    let batch = source
        .submit_batch(
            &[
                request("transfer-backfill-1"),
                request("transfer-backfill-2"),
            ],
            &BatchOptions {
                resubmit: Resubmit::default(),
                backfill: Some(backfill.id),
            },
        )
        .await
        .expect("submit_batch");
    source
        .record_incident(NewIncident {
            actor: "tester".to_string(),
            action: "reset_job".to_string(),
            job: Some(failed.job_id),
            key: None,
            reason: "export me".to_string(),
        })
        .await
        .expect("record_incident");
    source
        .record_host_outcome(
            "transfer.example",
            running.job_id,
            &HostOutcome::Blocked {
                class: "download_blocked".to_string(),
            },
            &open_policy(),
        )
        .await
        .expect("record_host_outcome");

    let path = std::env::temp_dir().join(format!(
        "narra-conformance-export-{}-{}.jsonl",
        std::process::id(),
        JobId::new()
    ));
    let mut bytes = Vec::new();
    let exported = export(source, "conformance", Secrets::Included, &mut bytes)
        .await
        .expect("export");
    assert_eq!(
        (
            exported.records.job,
            exported.records.pruned,
            exported.records.backfill
        ),
        (5, 1, 1)
    );
    assert_eq!(
        (
            exported.records.incident,
            exported.records.host,
            exported.running
        ),
        (1, 1, 1)
    );
    std::fs::write(&path, &bytes).expect("write the export");

    let (checked, summary) = import(target, &path).await.expect("import");
    assert_eq!(checked.records, exported.records);
    assert_eq!(summary.imported, exported.records, "{summary:?}");
    assert!(summary.conflicts.is_empty(), "{summary:?}");

    let all = JobFilter {
        status: None,
        limit: usize::MAX,
    };
    let jobs = source.jobs(&all).await.expect("jobs");
    assert_eq!(target.jobs(&all).await.expect("jobs"), jobs);
    for job in &jobs {
        assert_eq!(
            target.job_by_key(&job.key).await.expect("key").as_ref(),
            Some(job)
        );
        assert_eq!(
            JobHeld::read(target, job.id).await,
            JobHeld::read(source, job.id).await,
            "the records of {}",
            job.key
        );
    }
    for status in Status::ALL {
        let by_status = JobFilter {
            status: Some(status),
            limit: usize::MAX,
        };
        assert_eq!(
            target.jobs(&by_status).await.expect("jobs"),
            source.jobs(&by_status).await.expect("jobs"),
            "the status index of {status}"
        );
    }
    assert_eq!(target.pruned_jobs().await.expect("pruned"), vec![tombstone]);
    assert_eq!(
        target.backfills().await.expect("backfills"),
        vec![backfill.clone()]
    );
    assert_eq!(
        StoreHeld::read(target, backfill.id).await,
        StoreHeld::read(source, backfill.id).await
    );

    // Run again (after an interruption, say): nothing is written twice.
    let (_, again) = import(target, &path).await.expect("import again");
    assert_eq!(again.already_present, exported.records, "{again:?}");
    assert_eq!(again.imported.total(), 0);

    // The target goes on: the pending backfill jobs are claimed with the next fencing token, and
    // the lease of the job that was running travelled with it.
    let pending = &batch[0].job;
    let (claimed, token) = target
        .claim(pending.id, &worker(9), LEASE_TTL_MS)
        .await
        .accepted("pending in the target");
    assert_eq!(token.fencing_token, pending.fencing_token + 1);
    assert_eq!(claimed.status, Status::Running);
    target
        .record_step_event(&running, "download", StepEvent::Started)
        .await
        .accepted("the running job's lease holds in the target");

    // A record the target holds with other content is a conflict, and is not written.
    let conflicting = Record::Job(Box::new(JobRecords {
        job: Job {
            id: JobId::new(),
            ..jobs[0].clone()
        },
        checkpoints: vec![],
        events: vec![],
        event_summary: None,
        metadata: None,
        progress: None,
        logs: vec![],
        blobs: vec![],
        webhook: None,
    }));
    let outcomes = target.import(&[conflicting]).await.expect("import");
    assert!(
        matches!(&outcomes[..], [ImportOutcome::Conflict(reason)] if reason.contains(&jobs[0].key)),
        "{outcomes:?}"
    );
    assert_eq!(target.jobs(&all).await.expect("jobs").len(), jobs.len());

    // A file cut short is refused before anything is written.
    std::fs::write(&path, &bytes[..bytes.len() - 10]).expect("write");
    let error = check(&path).expect_err("a file cut short");
    assert!(error.to_string().contains("cut short"), "{error}");
    let _ = std::fs::remove_file(&path);
}
