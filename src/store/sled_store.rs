//! The sled state store: the one implementation of the `store` traits, and the only file that
//! speaks sled's API.
//!
//! Trees and their keys (job ids are 16 bytes, big-endian, so keys sort by ULID, i.e. by creation
//! time; every value goes through `store::codec`):
//!
//! | tree           | key                               | value           |
//! |----------------|-----------------------------------|-----------------|
//! | `jobs`         | job id                            | `Job`           |
//! | `keys`         | idempotency key, UTF-8            | job id          |
//! | `status_index` | `[status.index_byte()]` ++ job id | empty           |
//! | `checkpoints`  | job id ++ step name, UTF-8        | `Checkpoint`    |
//! | `events`       | job id ++ seq (u64 BE)            | `Event`         |
//! | `metadata`     | job id                            | `MediaMetadata` |
//! | `logs`         | job id ++ seq (u64 BE)            | `LogLine`       |
//! | `progress`     | job id                            | `JobProgress`   |
//! | `blob_refs`    | blob key, UTF-8, ++ 0 ++ job id   | empty           |
//! | `incidents`    | seq (u64 BE)                      | `Incident`      |
//! | `backfills`    | backfill id                       | `Backfill`      |
//! | `backfill_jobs`| backfill id ++ job id             | empty           |
//! | `event_summaries` | job id                         | `EventSummary`  |
//! | `pruned`       | job id                            | `PrunedJob`     |
//! | `webhooks`     | job id                            | `Webhook`       |
//! | `webhook_due`  | due time (i64, sign flipped, BE) ++ job id | empty  |
//!
//! `webhooks` holds each job's callback URL, pending notice and deliveries; `webhook_due` orders
//! the pending notices by due time (one entry each, `check_consistency` checks it). `put_job`
//! queues a notice in the transaction of every terminal transition of a job that has a webhook,
//! so no terminal status is acknowledged without its notice being durable too.
//!
//! `event_summaries` bounds each job's history (`compaction.rs`): appending past the store's
//! `events_max` folds the oldest events into the job's summary and removes them, in the append's
//! transaction, so a job's events are always `summary.events_compacted..events_next`.
//!
//! `pruned` holds what `narra prune` left of a job (`prune.rs`): the job's other records are gone,
//! but its `blob_refs` entries stay under its id, so its blobs stay referenced.
//!
//! `blob_refs` is the blob -> jobs index: one entry per `blobs/` object a job's store checkpoint
//! names. `record_checkpoint` of the store step replaces the job's entries in the same transaction
//! as the checkpoint, and `delete_job` removes them in the job's, so the index never disagrees with
//! the checkpoints (`check_consistency` checks it). A store that predates the index gets it built
//! from the checkpoints when it is opened.
//!
//! `backfill_jobs` is the backfill -> jobs index. `submit_batch` writes a batch's entries in the
//! same transaction as its submissions, so a job submitted by a backfill is never missing from it;
//! `delete_job` leaves the entries of a deleted job, which readers skip.
//!
//! The write protocol of every mutating operation:
//! 1. One sled transaction over `jobs`, `keys`, `status_index`, `checkpoints`, `events`,
//!    `metadata`, `blob_refs` and `event_summaries` reads the job, asks `model::machine` for the
//!    transition (a refusal aborts the transaction, so a refused call writes nothing), checks the
//!    result's invariants, and writes the job, its status-index entry, its events (folding the
//!    oldest into its summary past the bound; and for `record_checkpoint` the checkpoint, metadata
//!    record and, for the store step, the job's `blob_refs` entries). A crash before the commit
//!    leaves none of it; the transaction is atomic. The incident log is appended on its own, one flushed insert per line.
//! 2. A flush syncs sled's log to disk. A crash between commit and flush may lose the write,
//!    but the caller has not been told it succeeded, so nothing acknowledged is lost.
//! 3. Only then does the call return success.
//!
//! Job logs are outside this protocol: they are best effort, never flushed by `append_log`, and
//! may lose their last lines in a crash. They are bounded lazily: when a job reaches a terminal
//! status its oldest lines are trimmed to [`LOG_LINES_MAX`]; while a job runs, its log may grow past
//! the bound until the job ends.
//!
//! sled calls are synchronous and made on the caller's task: a commit touches sled's in-memory
//! log buffer, and at worst waits for a concurrent flush's fsync (sled serializes transactions
//! against flushes with one process-wide lock). The flush itself runs on tokio's blocking pool.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use sled::transaction::{
    ConflictableTransactionError, ConflictableTransactionResult, TransactionError,
    TransactionalTree,
};
use sled::{IVec, Transactional};

use super::claims::{self, Attempted, Batch, ClaimScan};
use super::codec;
use super::{BatchOptions, ClaimNext, ClaimNotice, ClaimRequest, Resubmit, SUBMIT_BATCH_MAX};
use super::{
    JobFilter, JobLogSink, JobReader, LOG_LINE_BYTES_MAX, LOG_LINES_MAX, MaintenanceStore,
    NewIncident, OrchestratorStore, StepEvent, StoreError, StoreResult, SubmitOutcome,
    SubmitRequest, Submitted, TransitionOp, WebhookStore, WorkerStore, refuses_nothing,
    truncate_message,
};
use crate::model::attribution::{self, DeathSeen};
use crate::model::claims::{self as claims_model, Candidate, Claimant};
use crate::model::consistency::{self, EventSeqs, Mismatch};
use crate::model::job::{
    Backfill, BackfillId, Checkpoint, Delivery, Event, EventKind, EventSummary, HostState,
    Incident, Job, JobId, JobProgress, LeaseToken, LogLine, MediaMetadata, Phase, PrunedJob,
    Status, Timestamp, Webhook, WorkerId,
};
use crate::model::machine::{self, OrchestratorOp, Rejected, Transition, WorkerOp};
use crate::model::records::{STORE_STEP, referenced_blobs};
use crate::model::scheduling::{self, HostOutcome, OutcomeVerdict, SchedulingPolicy};
use crate::model::{notices, records, submission};

mod compaction;
mod group_commit;
mod import;
mod leftovers;
mod prune;
mod retry_from;

pub use prune::StoreStats;

/// The page cache narra asks sled for unless told otherwise. sled's own default is 1 GiB, far more
/// than a job table needs.
pub const DEFAULT_CACHE_CAPACITY_BYTES: u64 = 64 * 1024 * 1024;

const TREE_JOBS: &str = "jobs";
const TREE_KEYS: &str = "keys";
const TREE_STATUS_INDEX: &str = "status_index";
const TREE_CHECKPOINTS: &str = "checkpoints";
const TREE_EVENTS: &str = "events";
const TREE_METADATA: &str = "metadata";
const TREE_LOGS: &str = "logs";
const TREE_PROGRESS: &str = "progress";
const TREE_BLOB_REFS: &str = "blob_refs";
const TREE_INCIDENTS: &str = "incidents";
const TREE_BACKFILLS: &str = "backfills";
const TREE_BACKFILL_JOBS: &str = "backfill_jobs";
const TREE_QUEUE: &str = "queue";
const TREE_HOSTS: &str = "hosts";
const TREE_META: &str = "meta";

/// The `meta` key holding the schema version the store's records were last migrated to.
const META_SCHEMA: &[u8] = b"schema";
/// How many queue entries a claim reads at a time (no iterator is open while it claims).
const QUEUE_SCAN_BATCH: usize = 256;
const TREE_EVENT_SUMMARIES: &str = "event_summaries";
const TREE_PRUNED: &str = "pruned";
/// Job id -> `Webhook`: a job's callback URL, pending notice and deliveries.
const TREE_WEBHOOKS: &str = "webhooks";
/// `next_attempt_at` (order-preserving bytes) ++ job id -> nothing: the pending notices in the
/// order they are due; exactly one entry per webhook with a pending notice.
const TREE_WEBHOOK_DUE: &str = "webhook_due";

const JOB_ID_BYTES: usize = 16;
const SEQ_KEY_BYTES: usize = JOB_ID_BYTES + 8;

/// The state store on sled.
pub struct SledStore {
    path: PathBuf,
    db: sled::Db,
    jobs: sled::Tree,
    keys: sled::Tree,
    status_index: sled::Tree,
    checkpoints: sled::Tree,
    events: sled::Tree,
    metadata: sled::Tree,
    logs: sled::Tree,
    progress: sled::Tree,
    blob_refs: sled::Tree,
    incidents: sled::Tree,
    backfills: sled::Tree,
    backfill_jobs: sled::Tree,
    /// Pending jobs in claim order: see [`queue_key`].
    queue: sled::Tree,
    /// Source host -> `HostState`.
    hosts: sled::Tree,
    /// Store-wide settings: the schema version.
    meta: sled::Tree,
    /// Serializes `claim_next` and `record_host_outcome`: a host's limits are checked and its
    /// state written by one caller at a time.
    schedule_lock: tokio::sync::Mutex<()>,
    event_summaries: sled::Tree,
    pruned: sled::Tree,
    webhooks: sled::Tree,
    webhook_due: sled::Tree,
    /// The most events a job holds (`store::EVENTS_MAX` unless set lower for a test).
    events_max: AtomicU64,
    /// Serializes incident appends, which number the lines.
    incident_lock: tokio::sync::Mutex<()>,
    /// The sequence number of the next log line, over all jobs: keys still sort per job by seq.
    log_seq_next: AtomicU64,
    /// Serializes flushes; see [`SledStore::flush`].
    flush_lock: tokio::sync::Mutex<()>,
    /// Group commit: a ticket per `flush` call, taken after the caller's commit, and the highest
    /// ticket a completed flush covers (every ticket taken before that flush started).
    flush_tickets: AtomicU64,
    flushed_through: AtomicU64,
    /// `record_checkpoint`'s group commit (`group_commit.rs`).
    checkpoint_queue: group_commit::CheckpointQueue,
    /// Serializes `open_backfill`'s find-or-create.
    backfill_lock: tokio::sync::Mutex<()>,
    /// Flushes and committed transactions since the store was opened: what batching saves is
    /// counted, not timed (`submit_batch`'s tests).
    flushes: AtomicU64,
    transactions: AtomicU64,
    /// Log lines that could not be written. They are counted, not logged: `append_log` is called
    /// from inside the tracing layer, and logging its own failure would feed the failure back in.
    log_lines_dropped: AtomicU64,
}

impl fmt::Debug for SledStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// How long a process that took the home waits for the previous holder's lock on the database. A
/// process that is exiting lets go of `<home>/narra.lock` before its last reference to the
/// database (its job-log sink keeps the store until the process ends), so the next process can
/// find the home free and the database still locked for a moment.
pub const HANDOVER_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// sled's refusal to open a database whose file lock another open file holds (`flock` would
/// block); sled gives it only as text.
fn held_by_another(error: &StoreError) -> bool {
    let text = error.to_string();
    text.contains("could not acquire lock") && text.contains("WouldBlock")
}

impl SledStore {
    /// [`SledStore::open`], waiting up to `patience` for the database's file lock while another
    /// holder lets go of it (see [`HANDOVER_PATIENCE`]). Only for a caller that holds the home (or,
    /// in a test, closed the store itself a moment before): then the holder can only be a process
    /// that is exiting, or sled's own IO threads, which may keep the last reference to a dropped
    /// database (and its lock) for a moment after the drop returns. Any other error fails at once;
    /// a lock still held at the deadline is reported as such.
    pub fn open_patiently(
        path: &Path,
        cache_capacity_bytes: u64,
        patience: std::time::Duration,
    ) -> StoreResult<SledStore> {
        let deadline = std::time::Instant::now() + patience;
        loop {
            match SledStore::open(path, cache_capacity_bytes) {
                Err(error) if held_by_another(&error) => {
                    if std::time::Instant::now() >= deadline {
                        return Err(StoreError::Io(std::io::Error::new(
                            std::io::ErrorKind::WouldBlock,
                            format!(
                                "the state database {} is still locked by another process after \
                                 {} s (another home using the same --state?): {error}",
                                path.display(),
                                patience.as_secs()
                            ),
                        )));
                    }
                    // No event says the lock is free: a file lock is polled.
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                result => return result,
            }
        }
    }

    /// The store of a home this process just took, with the default cache: waits up to
    /// [`HANDOVER_PATIENCE`] for the previous holder's lock on the database, on the blocking pool
    /// (the wait polls).
    pub async fn open_handed_over(path: &Path) -> StoreResult<SledStore> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            SledStore::open_patiently(&path, DEFAULT_CACHE_CAPACITY_BYTES, HANDOVER_PATIENCE)
        })
        .await
        .map_err(|error| StoreError::Io(std::io::Error::other(error)))?
    }

    /// Opens (or creates) the store at `path` with a page cache of `cache_capacity_bytes`
    /// (see [`DEFAULT_CACHE_CAPACITY_BYTES`]). sled allows one process per database.
    pub fn open(path: &Path, cache_capacity_bytes: u64) -> StoreResult<SledStore> {
        // sled would create the directory with the umask's mode; the database is private.
        crate::private_files::create_dir_all(path)?;
        leftovers::remove_unfinished_snapshots(path)?;
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_capacity_bytes)
            .open()?;
        let logs = db.open_tree(TREE_LOGS)?;
        let log_seq_next = next_log_seq(&logs)?;
        let store = SledStore {
            path: path.to_path_buf(),
            jobs: db.open_tree(TREE_JOBS)?,
            keys: db.open_tree(TREE_KEYS)?,
            status_index: db.open_tree(TREE_STATUS_INDEX)?,
            checkpoints: db.open_tree(TREE_CHECKPOINTS)?,
            events: db.open_tree(TREE_EVENTS)?,
            metadata: db.open_tree(TREE_METADATA)?,
            logs,
            progress: db.open_tree(TREE_PROGRESS)?,
            blob_refs: db.open_tree(TREE_BLOB_REFS)?,
            incidents: db.open_tree(TREE_INCIDENTS)?,
            backfills: db.open_tree(TREE_BACKFILLS)?,
            backfill_jobs: db.open_tree(TREE_BACKFILL_JOBS)?,
            queue: db.open_tree(TREE_QUEUE)?,
            hosts: db.open_tree(TREE_HOSTS)?,
            meta: db.open_tree(TREE_META)?,
            schedule_lock: tokio::sync::Mutex::new(()),
            event_summaries: db.open_tree(TREE_EVENT_SUMMARIES)?,
            pruned: db.open_tree(TREE_PRUNED)?,
            webhooks: db.open_tree(TREE_WEBHOOKS)?,
            webhook_due: db.open_tree(TREE_WEBHOOK_DUE)?,
            events_max: AtomicU64::new(super::EVENTS_MAX),
            incident_lock: tokio::sync::Mutex::new(()),
            db,
            log_seq_next: AtomicU64::new(log_seq_next),
            flush_lock: tokio::sync::Mutex::new(()),
            flush_tickets: AtomicU64::new(0),
            flushed_through: AtomicU64::new(0),
            checkpoint_queue: group_commit::CheckpointQueue::default(),
            backfill_lock: tokio::sync::Mutex::new(()),
            flushes: AtomicU64::new(0),
            transactions: AtomicU64::new(0),
            log_lines_dropped: AtomicU64::new(0),
        };
        store.migrate()?;
        store.backfill_blob_refs()?;
        tracing::debug!(path = %path.display(), cache_capacity_bytes, "opened state store");
        Ok(store)
    }

    /// Brings a store written by an older schema version up to [`codec::SCHEMA_VERSION`], once:
    /// every job is rewritten in the current layout (`codec::decode_job` reads the old one) and the
    /// claim queue is built from the pending jobs. Other records read the same under every version
    /// and are left as they are. Flushed before the store is used.
    fn migrate(&self) -> StoreResult<()> {
        let current = self
            .meta
            .get(META_SCHEMA)?
            .and_then(|bytes| bytes.first().copied());
        if current == Some(codec::SCHEMA_VERSION) {
            return Ok(());
        }
        if let Some(found) = current
            && found > codec::SCHEMA_VERSION
        {
            return Err(StoreError::UnsupportedSchema {
                found,
                supported: codec::SCHEMA_VERSION,
            });
        }
        let mut jobs = sled::Batch::default();
        let mut queue = sled::Batch::default();
        let mut count = 0usize;
        for entry in self.jobs.iter() {
            let (key, bytes) = entry?;
            let job = decode_job(&key, &bytes)?;
            jobs.insert(key, codec::encode(&job)?);
            if job.status == Status::Pending {
                queue.insert(&queue_key(job.priority, job.id)[..], queue_value(&job));
            }
            count += 1;
        }
        self.jobs.apply_batch(jobs)?;
        self.queue.clear()?;
        self.queue.apply_batch(queue)?;
        self.meta.insert(META_SCHEMA, &[codec::SCHEMA_VERSION])?;
        self.db.flush()?;
        if count > 0 {
            tracing::info!(
                jobs = count,
                from = current.unwrap_or(1),
                to = codec::SCHEMA_VERSION,
                "migrated the state store's records"
            );
        }
        Ok(())
    }

    /// Builds `blob_refs` from the store checkpoints when the index is empty: a store written
    /// before the index existed, or one with no stored job (then there is nothing to build).
    fn backfill_blob_refs(&self) -> StoreResult<()> {
        if !self.blob_refs.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        let mut count = 0usize;
        for entry in self.checkpoints.iter() {
            let (key, bytes) = entry?;
            if key.get(JOB_ID_BYTES..) != Some(STORE_STEP.as_bytes()) {
                continue;
            }
            let id = job_id_in(TREE_CHECKPOINTS, &key, &key[..JOB_ID_BYTES])?;
            let checkpoint: Checkpoint = codec::decode(TREE_CHECKPOINTS, &key, &bytes)?;
            for blob in referenced_blobs(&checkpoint) {
                batch.insert(blob_ref_key(blob, id), Vec::new());
                count += 1;
            }
        }
        if count > 0 {
            self.blob_refs.apply_batch(batch)?;
            self.db.flush()?;
            tracing::info!(references = count, "built the blob references index");
        }
        Ok(())
    }

    /// Where the store lives on disk.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many times the store flushed (synced its log) since it was opened.
    pub fn flush_count(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// How many transactions over the job trees committed since the store was opened.
    pub fn transaction_count(&self) -> u64 {
        self.transactions.load(Ordering::Relaxed)
    }

    /// How many log lines `append_log` failed to write since the store was opened.
    pub fn log_lines_dropped(&self) -> u64 {
        self.log_lines_dropped.load(Ordering::Relaxed)
    }

    /// Checks the trees against each other: every job decodes and holds its invariants, the
    /// status index has exactly one entry per job, under its status, every idempotency key names a
    /// job with that key and back, each job's events are numbered from its summary's
    /// `events_compacted` (0 without one) to `events_next` with no gap, every summary and tombstone
    /// agrees with its key and its job, and the blob index names exactly the blobs of the store
    /// checkpoints and of the pruned jobs.
    /// Reads every record: for tests and offline checks, not for the hot path.
    pub fn check_consistency(&self) -> StoreResult<()> {
        let mut index_keys = self
            .status_index
            .iter()
            .keys()
            .collect::<Result<BTreeSet<IVec>, _>>()?;
        for entry in self.jobs.iter() {
            let (key, bytes) = entry?;
            let job = decode_job(&key, &bytes)?;
            let index_key = index_key(job.status, job.id);
            if !index_keys.remove(&index_key[..]) {
                return Err(corrupt(
                    TREE_STATUS_INDEX,
                    &index_key,
                    format!("job {} is {} but not indexed as such", job.id, job.status),
                ));
            }
            let key_target = self.keys.get(job.key.as_bytes())?;
            if key_target.as_deref() != Some(&key[..]) {
                return Err(corrupt(
                    TREE_KEYS,
                    job.key.as_bytes(),
                    format!(
                        "key of job {} names {:?}",
                        job.id,
                        key_target.map(|id| codec::hex(&id))
                    ),
                ));
            }
            // The compacted events are in the job's summary; the rest follow with no gap.
            let mut seqs = EventSeqs::after(self.events_compacted(&job)?);
            for event_key in self.events.scan_prefix(&key).keys() {
                let event_key = event_key?;
                seqs.next(seq_in(TREE_EVENTS, &event_key)?)
                    .map_err(|expected| {
                        corrupt(
                            TREE_EVENTS,
                            &event_key,
                            format!("expected event seq {expected}"),
                        )
                    })?;
            }
            seqs.end(job.events_next).map_err(|held| {
                corrupt(
                    TREE_JOBS,
                    &key,
                    format!("{held} events but events_next is {}", job.events_next),
                )
            })?;
        }
        if let Some(index_key) = index_keys.first() {
            return Err(corrupt(
                TREE_STATUS_INDEX,
                index_key,
                "index entry for no job with that status".to_string(),
            ));
        }
        let mut expected_queue = std::collections::BTreeMap::new();
        for entry in self.jobs.iter() {
            let (key, bytes) = entry?;
            let job = decode_job(&key, &bytes)?;
            if job.status == Status::Pending {
                expected_queue.insert(queue_key(job.priority, job.id).to_vec(), queue_value(&job));
            }
        }
        for entry in self.queue.iter() {
            let (key, value) = entry?;
            if expected_queue.remove(&key[..]).as_deref() != Some(&value[..]) {
                return Err(corrupt(
                    TREE_QUEUE,
                    &key,
                    "queue entry for no pending job, or with another host or time".to_string(),
                ));
            }
        }
        if let Some((missing, _)) = expected_queue.first_key_value() {
            return Err(corrupt(
                TREE_QUEUE,
                missing,
                "a pending job is not queued".to_string(),
            ));
        }
        for entry in self.keys.iter() {
            let (key, id_bytes) = entry?;
            let id = job_id_in(TREE_KEYS, &key, &id_bytes)?;
            let named = self.read_job(id)?;
            if named.as_ref().map(|job| job.key.as_bytes()) != Some(&key[..]) {
                return Err(corrupt(
                    TREE_KEYS,
                    &key,
                    format!("names job {id}, which has another key"),
                ));
            }
        }
        let mut store_checkpoints = Vec::new();
        for entry in self.checkpoints.iter() {
            let (key, bytes) = entry?;
            if key.get(JOB_ID_BYTES..) != Some(STORE_STEP.as_bytes()) {
                continue;
            }
            let id = job_id_in(TREE_CHECKPOINTS, &key, &key[..JOB_ID_BYTES])?;
            let checkpoint: Checkpoint = codec::decode(TREE_CHECKPOINTS, &key, &bytes)?;
            if self.read_job(id)?.is_none() {
                return Err(corrupt(
                    TREE_CHECKPOINTS,
                    &key,
                    "checkpoint of a job that does not exist".to_string(),
                ));
            }
            store_checkpoints.push((id, checkpoint));
        }
        let tombstones = self.read_pruned_all()?;
        let expected_refs: BTreeSet<Vec<u8>> = consistency::expected_blob_refs(
            store_checkpoints
                .iter()
                .map(|(id, checkpoint)| (*id, checkpoint)),
            &tombstones,
        )
        .iter()
        .map(|(blob, id)| blob_ref_key(blob, *id))
        .collect();
        let found_refs = self
            .blob_refs
            .iter()
            .keys()
            .map(|key| key.map(|key| key.to_vec()))
            .collect::<Result<BTreeSet<Vec<u8>>, _>>()?;
        match consistency::first_mismatch(&expected_refs, &found_refs) {
            None => {}
            Some(Mismatch::Unexpected(extra)) => {
                return Err(corrupt(
                    TREE_BLOB_REFS,
                    extra,
                    "reference no store checkpoint makes".to_string(),
                ));
            }
            Some(Mismatch::Missing(missing)) => {
                return Err(corrupt(
                    TREE_BLOB_REFS,
                    missing,
                    "a store checkpoint's blob is not indexed".to_string(),
                ));
            }
        }
        self.check_event_summaries()?;
        self.check_pruned()?;
        self.check_webhooks()
    }

    /// Every webhook belongs to a job, and `webhook_due` holds exactly one entry per pending
    /// notice, at its due time.
    fn check_webhooks(&self) -> StoreResult<()> {
        let mut expected_due = BTreeSet::new();
        for entry in self.webhooks.iter() {
            let (key, bytes) = entry?;
            let webhook: Webhook = codec::decode(TREE_WEBHOOKS, &key, &bytes)?;
            if webhook.job_id.to_bytes()[..] != key[..] {
                return Err(corrupt(
                    TREE_WEBHOOKS,
                    &key,
                    format!("holds the webhook of job {}", webhook.job_id),
                ));
            }
            if !self.jobs.contains_key(&key)? {
                return Err(corrupt(TREE_WEBHOOKS, &key, "no such job".to_string()));
            }
            if let Some(due_at) = notices::due_at(&webhook) {
                expected_due.insert(due_key(due_at, webhook.job_id).to_vec());
            }
        }
        let found_due = self
            .webhook_due
            .iter()
            .keys()
            .map(|key| key.map(|key| key.to_vec()))
            .collect::<Result<BTreeSet<_>, _>>()?;
        if let Some(extra) = found_due.symmetric_difference(&expected_due).next() {
            return Err(corrupt(
                TREE_WEBHOOK_DUE,
                extra,
                "the due index and the pending notices disagree".to_string(),
            ));
        }
        Ok(())
    }

    /// Runs `body` as one transaction over every tree but `logs`, `progress`, `incidents`,
    /// `backfills`, `backfill_jobs` and `pruned`. A `Rejected` abort comes back as the inner
    /// error, with nothing written.
    fn transact<T>(
        &self,
        body: impl Fn(&Tx<'_>) -> TxResult<T>,
    ) -> StoreResult<Result<T, Rejected>> {
        let trees = (
            &self.jobs,
            &self.keys,
            &self.status_index,
            &self.checkpoints,
            &self.events,
            &self.metadata,
            &self.blob_refs,
            &self.queue,
            &self.event_summaries,
            &self.webhooks,
            &self.webhook_due,
        );
        let events_max = self.events_max();
        let result = trees.transaction(
            |(
                jobs,
                keys,
                status_index,
                checkpoints,
                events,
                metadata,
                blob_refs,
                queue,
                event_summaries,
                webhooks,
                webhook_due,
            )| {
                body(&Tx {
                    jobs,
                    keys,
                    status_index,
                    checkpoints,
                    events,
                    metadata,
                    blob_refs,
                    queue,
                    event_summaries,
                    webhooks,
                    webhook_due,
                    events_max,
                })
            },
        );
        self.settle(result)
    }

    /// Syncs sled's log: called after every commit, before the call returns success.
    ///
    /// Not `Tree::flush_async`: in sled 0.34.7 it waits on sled's own IO thread pool, the pool that
    /// must also run the log write the flush waits for, and it deadlocks once seven flushes wait
    /// there at once (spacejam/sled#1241, #1308; reproduced here by
    /// `concurrent_claimers_never_share_a_job`). The blocking flush runs on tokio's blocking pool
    /// instead, one at a time.
    ///
    /// Group commit: callers that queue behind a flush are served by the next one, one flush for
    /// all of them. Each call takes a ticket after its commit; a flush covers every ticket taken
    /// before it started, so a caller whose ticket a completed flush covers returns without
    /// flushing again.
    async fn flush(&self) -> StoreResult<()> {
        let ticket = self.flush_tickets.fetch_add(1, Ordering::SeqCst) + 1;
        let _one_flush_at_a_time = self.flush_lock.lock().await;
        if self.flushed_through.load(Ordering::SeqCst) >= ticket {
            return Ok(());
        }
        // Every ticket up to here was taken after its commit, so this flush makes them durable.
        let covered = self.flush_tickets.load(Ordering::SeqCst);
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|join_error| {
                StoreError::Io(std::io::Error::other(format!(
                    "the state store flush task failed: {join_error}"
                )))
            })??;
        self.flushed_through.store(covered, Ordering::SeqCst);
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// [`SledStore::transact`] with one more tree in the same transaction (`backfill_jobs`: a
    /// batch of submissions and their backfill entries commit together; `pruned`: a job and its
    /// tombstone).
    fn transact_with<T>(
        &self,
        extra: &sled::Tree,
        body: impl Fn(&Tx<'_>, &TransactionalTree) -> TxResult<T>,
    ) -> StoreResult<Result<T, Rejected>> {
        let trees = (
            &self.jobs,
            &self.keys,
            &self.status_index,
            &self.checkpoints,
            &self.events,
            &self.metadata,
            &self.blob_refs,
            &self.queue,
            &self.event_summaries,
            &self.webhooks,
            &self.webhook_due,
            extra,
        );
        let events_max = self.events_max();
        let result = trees.transaction(
            |(
                jobs,
                keys,
                status_index,
                checkpoints,
                events,
                metadata,
                blob_refs,
                queue,
                event_summaries,
                webhooks,
                webhook_due,
                extra,
            )| {
                let tx = Tx {
                    jobs,
                    keys,
                    status_index,
                    checkpoints,
                    events,
                    metadata,
                    blob_refs,
                    queue,
                    event_summaries,
                    webhooks,
                    webhook_due,
                    events_max,
                };
                body(&tx, extra)
            },
        );
        self.settle(result)
    }

    /// A committed transaction's value (counted), or the `Rejected` it aborted with, or the store
    /// failure.
    fn settle<T>(
        &self,
        result: Result<T, TransactionError<TxAbort>>,
    ) -> StoreResult<Result<T, Rejected>> {
        match result {
            Ok(value) => {
                self.transactions.fetch_add(1, Ordering::Relaxed);
                Ok(Ok(value))
            }
            Err(TransactionError::Abort(TxAbort::Rejected(rejected))) => Ok(Err(rejected)),
            Err(TransactionError::Abort(TxAbort::Store(error))) => Err(error),
            Err(TransactionError::Storage(error)) => Err(StoreError::Sled(error)),
        }
    }

    /// Every running job, read through the status index.
    fn read_running_jobs(&self) -> StoreResult<Vec<Job>> {
        let mut running = Vec::new();
        for key in self
            .status_index
            .scan_prefix([Status::Running.index_byte()])
            .keys()
        {
            let key = key?;
            let id = job_id_in(TREE_STATUS_INDEX, &key, &key[1..])?;
            if let Some(job) = self.read_job(id)?
                && job.status == Status::Running
            {
                running.push(job);
            }
        }
        Ok(running)
    }

    fn read_host(&self, host: &str) -> StoreResult<Option<HostState>> {
        self.hosts
            .get(host.as_bytes())?
            .map(|bytes| codec::decode(TREE_HOSTS, host.as_bytes(), &bytes))
            .transpose()
    }

    fn read_job(&self, id: JobId) -> StoreResult<Option<Job>> {
        let key = id.to_bytes();
        self.jobs
            .get(key)?
            .map(|bytes| decode_job(&key, &bytes))
            .transpose()
    }

    fn trim_logs_best_effort(&self, id: JobId) {
        match self.trim_logs(id) {
            Ok(0) => {}
            Ok(removed) => tracing::debug!(job_id = %id, removed, "trimmed job log"),
            Err(error) => tracing::warn!(job_id = %id, %error, "cannot trim job log"),
        }
    }

    /// Removes a job's oldest log lines beyond [`LOG_LINES_MAX`]; returns how many.
    fn trim_logs(&self, id: JobId) -> StoreResult<usize> {
        let keys = self
            .logs
            .scan_prefix(id.to_bytes())
            .keys()
            .collect::<Result<Vec<_>, _>>()?;
        let Some(excess) = keys
            .len()
            .checked_sub(LOG_LINES_MAX)
            .filter(|&excess| excess > 0)
        else {
            return Ok(0);
        };
        let mut batch = sled::Batch::default();
        for key in &keys[..excess] {
            batch.remove(key.clone());
        }
        self.logs.apply_batch(batch)?;
        Ok(excess)
    }

    fn try_append_log(&self, id: JobId, line: &LogLine) -> StoreResult<()> {
        let seq = self.log_seq_next.fetch_add(1, Ordering::Relaxed);
        self.logs.insert(seq_key(id, seq), codec::encode(line)?)?;
        Ok(())
    }
}

/// `claim_next`'s reads and writes (`store::claims`), called under `schedule_lock`. No sled
/// iterator is open while a transaction runs (sled 0.34 has had deadlocks between the two,
/// spacejam/sled#1301): candidates are read in batches, then claimed one by one, each in a
/// transaction of its own. A host's state is written on its own, after the claim's commit.
#[async_trait]
impl ClaimScan for SledStore {
    type Error = StoreError;
    /// The first queue key after the previous batch.
    type Cursor = Vec<u8>;

    async fn running_jobs(&self) -> StoreResult<Vec<Job>> {
        self.read_running_jobs()
    }

    async fn host(&self, host: &str) -> StoreResult<Option<HostState>> {
        self.read_host(host)
    }

    async fn put_host(&self, state: &HostState) -> StoreResult<()> {
        self.hosts
            .insert(state.host.as_bytes(), codec::encode(state)?)?;
        Ok(())
    }

    /// A batch of the whole queue, or, for a claim limited to some jobs, all of those that are
    /// pending (read by id, not by scanning).
    async fn candidates(
        &self,
        only: Option<&BTreeSet<JobId>>,
        cursor: Option<&Vec<u8>>,
    ) -> StoreResult<Batch<Vec<u8>>> {
        let entries: Vec<(Vec<u8>, Vec<u8>)> = match only {
            None => self
                .queue
                .range(cursor.map(Vec::as_slice).unwrap_or_default()..)
                .take(QUEUE_SCAN_BATCH)
                .map(|entry| entry.map(|(key, value)| (key.to_vec(), value.to_vec())))
                .collect::<Result<_, _>>()?,
            Some(only) => {
                let mut entries = Vec::new();
                for &id in only {
                    if let Some(job) = self.read_job(id)?
                        && job.status == Status::Pending
                    {
                        entries.push((queue_key(job.priority, id).to_vec(), queue_value(&job)));
                    }
                }
                entries.sort();
                entries
            }
        };
        let next = entries.last().map(|(last_key, _)| {
            let mut next = last_key.clone();
            next.push(0);
            next
        });
        Ok(Batch {
            entries: entries
                .iter()
                .map(|(key, value)| split_queue_entry(key, value))
                .collect(),
            next,
        })
    }

    async fn try_claim(
        &self,
        id: JobId,
        claimant: &Claimant,
        now: Timestamp,
    ) -> StoreResult<Attempted> {
        match self.transact(|tx| tx.claim(id, claimant, now)) {
            Ok(Ok(job)) => Ok(Attempted::Claimed(Box::new(job))),
            Ok(Err(rejected)) => Ok(Attempted::Refused(rejected)),
            Err(error @ StoreError::Corrupt { .. }) => Ok(Attempted::Corrupt(error)),
            Err(error) => Err(error),
        }
    }
}

/// Why a transaction body aborted.
enum TxAbort {
    Rejected(Rejected),
    Store(StoreError),
}

type TxResult<T> = ConflictableTransactionResult<T, TxAbort>;

fn reject(rejected: Rejected) -> ConflictableTransactionError<TxAbort> {
    ConflictableTransactionError::Abort(TxAbort::Rejected(rejected))
}

fn store_abort(error: StoreError) -> ConflictableTransactionError<TxAbort> {
    ConflictableTransactionError::Abort(TxAbort::Store(error))
}

/// The trees of one transaction, with the writes every operation shares.
struct Tx<'a> {
    jobs: &'a TransactionalTree,
    keys: &'a TransactionalTree,
    status_index: &'a TransactionalTree,
    checkpoints: &'a TransactionalTree,
    events: &'a TransactionalTree,
    metadata: &'a TransactionalTree,
    blob_refs: &'a TransactionalTree,
    queue: &'a TransactionalTree,
    event_summaries: &'a TransactionalTree,
    webhooks: &'a TransactionalTree,
    webhook_due: &'a TransactionalTree,
    /// The store's bound on a job's events, for `append_events`.
    events_max: u64,
}

impl Tx<'_> {
    fn job(&self, id: JobId) -> TxResult<Option<Job>> {
        let key = id.to_bytes();
        match self.jobs.get(key)? {
            None => Ok(None),
            Some(bytes) => decode_job(&key, &bytes).map(Some).map_err(store_abort),
        }
    }

    fn existing_job(&self, id: JobId) -> TxResult<Job> {
        self.job(id)?.ok_or_else(|| reject(Rejected::NotFound(id)))
    }

    /// The job's store checkpoint as stored, if any.
    fn store_checkpoint(&self, id: JobId) -> TxResult<Option<Checkpoint>> {
        let key = checkpoint_key(id, STORE_STEP);
        match self.checkpoints.get(&key)? {
            None => Ok(None),
            Some(bytes) => codec::decode(TREE_CHECKPOINTS, &key, &bytes)
                .map(Some)
                .map_err(store_abort),
        }
    }

    /// Moves the job's blob references from what `before` names to what `after` names.
    fn replace_blob_refs(
        &self,
        id: JobId,
        before: Option<&Checkpoint>,
        after: Option<&Checkpoint>,
    ) -> TxResult<()> {
        for blob in before.into_iter().flat_map(referenced_blobs) {
            self.blob_refs.remove(blob_ref_key(blob, id))?;
        }
        for blob in after.into_iter().flat_map(referenced_blobs) {
            self.blob_refs.insert(blob_ref_key(blob, id), Vec::new())?;
        }
        Ok(())
    }

    /// Writes a transition's job and appends its events; `before` is the job as it was read.
    fn write_transition(
        &self,
        before: Option<&Job>,
        transition: Transition,
        now: Timestamp,
    ) -> TxResult<Job> {
        let Transition { mut job, events } = transition;
        self.append_events(&mut job, events, now)?;
        self.put_job(before.map(|before| before.status), &job)?;
        Ok(job)
    }

    /// Appends events at the job's `events_next`, advancing it, and folds the oldest into the
    /// job's summary when it holds more than the bound; the caller then writes the job.
    fn append_events(&self, job: &mut Job, kinds: Vec<EventKind>, now: Timestamp) -> TxResult<()> {
        let events = records::number_events(job, kinds, now).map_err(|exhausted| {
            store_abort(corrupt(
                TREE_JOBS,
                &job.id.to_bytes(),
                exhausted.to_string(),
            ))
        })?;
        for event in &events {
            self.events
                .insert(&seq_key(job.id, event.seq)[..], encode_in_tx(event)?)?;
        }
        self.bound_history(job)
    }

    /// Writes the job and moves its status-index entry. A job that breaks its invariants is a bug
    /// in the machine or the store; it is refused here rather than written.
    fn put_job(&self, status_before: Option<Status>, job: &Job) -> TxResult<()> {
        let key = job.id.to_bytes();
        if let Err(reason) = job.invariants_hold() {
            return Err(store_abort(corrupt(
                TREE_JOBS,
                &key,
                format!("refusing to write a job that breaks its invariants: {reason}"),
            )));
        }
        self.jobs.insert(&key[..], encode_in_tx(job)?)?;
        // The queue holds exactly the pending jobs, with what a claim checks before reading them.
        if status_before == Some(Status::Pending) {
            self.queue.remove(&queue_key(job.priority, job.id)[..])?;
        }
        if job.status == Status::Pending {
            self.queue
                .insert(&queue_key(job.priority, job.id)[..], queue_value(job))?;
        }
        if status_before != Some(job.status) {
            if let Some(status_before) = status_before {
                self.status_index
                    .remove(&index_key(status_before, job.id)[..])?;
            }
            self.status_index
                .insert(&index_key(job.status, job.id)[..], Vec::new())?;
        }
        // A terminal transition queues its webhook notice in the same transaction.
        if notices::queues_notice(status_before, job)
            && let Some(before) = self.webhook(job.id)?
        {
            let mut webhook = before.clone();
            notices::queue_notice(&mut webhook, job, Timestamp::now());
            self.put_webhook(Some(&before), &webhook)?;
        }
        Ok(())
    }

    /// Claims a pending job for `claimant`; the jobs its process holds no longer run alone
    /// (`attribution::joined`).
    fn claim(&self, id: JobId, claimant: &Claimant, now: Timestamp) -> TxResult<Job> {
        let job = self.existing_job(id)?;
        let transition = machine::apply_orchestrator(&job, &claimant.op, now).map_err(reject)?;
        let claimed = self.write_transition(Some(&job), transition, now)?;
        for &id in &claimant.holding.jobs {
            if let Some(held) = self.job(id)?
                && let Some(joined) = attribution::joined(&held)
            {
                self.put_job(Some(held.status), &joined)?;
            }
        }
        Ok(claimed)
    }

    fn webhook(&self, id: JobId) -> TxResult<Option<Webhook>> {
        let key = id.to_bytes();
        match self.webhooks.get(key)? {
            None => Ok(None),
            Some(bytes) => codec::decode(TREE_WEBHOOKS, &key, &bytes)
                .map(Some)
                .map_err(store_abort),
        }
    }

    /// Writes a webhook record and moves its `webhook_due` entry; `before` is the record read.
    fn put_webhook(&self, before: Option<&Webhook>, webhook: &Webhook) -> TxResult<()> {
        if let Some(due_at) = before.and_then(notices::due_at) {
            self.webhook_due
                .remove(&due_key(due_at, webhook.job_id)[..])?;
        }
        if let Some(due_at) = notices::due_at(webhook) {
            self.webhook_due
                .insert(&due_key(due_at, webhook.job_id)[..], Vec::new())?;
        }
        self.webhooks
            .insert(&webhook.job_id.to_bytes()[..], encode_in_tx(webhook)?)?;
        Ok(())
    }

    /// Removes a job's webhook record with its job (`delete_job`, `prune`).
    fn remove_webhook(&self, id: JobId) -> TxResult<()> {
        if let Some(webhook) = self.webhook(id)? {
            if let Some(due_at) = notices::due_at(&webhook) {
                self.webhook_due.remove(&due_key(due_at, id)[..])?;
            }
            self.webhooks.remove(&id.to_bytes()[..])?;
        }
        Ok(())
    }
}

/// A `webhook_due` key: the time as big-endian bytes with the sign bit flipped (so negative times
/// sort first, as they would as numbers), then the job id.
fn due_key(at: Timestamp, id: JobId) -> [u8; 8 + JOB_ID_BYTES] {
    let mut key = [0u8; 8 + JOB_ID_BYTES];
    key[..8].copy_from_slice(&(at.0.cast_unsigned() ^ (1 << 63)).to_be_bytes());
    key[8..].copy_from_slice(&id.to_bytes());
    key
}

fn split_due_key(key: &[u8]) -> StoreResult<(Timestamp, JobId)> {
    let (Some(at), Some(id)) = (key.get(..8), key.get(8..)) else {
        return Err(corrupt(
            TREE_WEBHOOK_DUE,
            key,
            "a key of 24 bytes".to_string(),
        ));
    };
    let at = u64::from_be_bytes(at.try_into().expect("8 bytes")) ^ (1 << 63);
    let id: [u8; JOB_ID_BYTES] = id
        .try_into()
        .map_err(|_| corrupt(TREE_WEBHOOK_DUE, key, "a key of 24 bytes".to_string()))?;
    Ok((Timestamp(at.cast_signed()), JobId::from_bytes(id)))
}

/// One submission inside a transaction, for `submit` and `submit_batch`: `model::submission`
/// decides, this reads the key's job and writes what it returns.
fn submit_in_tx(
    tx: &Tx<'_>,
    request: &SubmitRequest,
    rule: Resubmit,
    now: Timestamp,
) -> TxResult<Submitted> {
    let key = request.key.as_bytes();
    let Some(id_bytes) = tx.keys.get(key)? else {
        let job = tx.write_transition(None, submission::create(request, now), now)?;
        tx.keys.insert(key, &job.id.to_bytes()[..])?;
        return Ok(Submitted {
            job,
            outcome: SubmitOutcome::Created,
        });
    };
    let id = job_id_in(TREE_KEYS, key, &id_bytes).map_err(store_abort)?;
    let Some(job) = tx.job(id)? else {
        return Err(store_abort(corrupt(
            TREE_KEYS,
            key,
            format!("key names job {id}, which does not exist"),
        )));
    };
    match submission::resubmit(&job, request, rule, now)
        .map_err(|refused| store_abort(corrupt(TREE_JOBS, &id.to_bytes(), refused.to_string())))?
    {
        None => Ok(Submitted {
            job,
            outcome: SubmitOutcome::Existing,
        }),
        Some(resubmission) => Ok(Submitted {
            job: tx.write_transition(Some(&job), resubmission.transition, now)?,
            outcome: resubmission.outcome,
        }),
    }
}

fn encode_in_tx<T: serde::Serialize>(value: &T) -> TxResult<Vec<u8>> {
    codec::encode(value).map_err(store_abort)
}

fn corrupt(tree: &'static str, key: &[u8], reason: String) -> StoreError {
    StoreError::Corrupt {
        tree,
        key: codec::hex(key),
        reason,
    }
}

/// Decodes every record of a scan and checks each against its key right after reading it back:
/// `mismatch` names what is wrong, and the first wrong record is reported as corrupt.
fn decode_checked<T: serde::de::DeserializeOwned>(
    entries: impl Iterator<Item = sled::Result<(IVec, IVec)>>,
    tree: &'static str,
    mismatch: impl Fn(&[u8], &T) -> StoreResult<Option<String>>,
) -> StoreResult<Vec<T>> {
    let mut records = Vec::new();
    for entry in entries {
        let (key, bytes) = entry?;
        let record: T = codec::decode(tree, &key, &bytes)?;
        if let Some(reason) = mismatch(&key, &record)? {
            return Err(corrupt(tree, &key, reason));
        }
        records.push(record);
    }
    Ok(records)
}

/// Decodes a job and checks it right after reading it back: its key and its invariants.
fn decode_job(key: &[u8], bytes: &[u8]) -> StoreResult<Job> {
    let job: Job = codec::decode_job(TREE_JOBS, key, bytes)?;
    if job.id.to_bytes() != key {
        return Err(corrupt(
            TREE_JOBS,
            key,
            format!("record holds job {}", job.id),
        ));
    }
    job.invariants_hold()
        .map_err(|reason| corrupt(TREE_JOBS, key, reason))?;
    Ok(job)
}

/// Reads a job id out of `bytes`, part of a key of `tree`.
fn job_id_in(tree: &'static str, key: &[u8], bytes: &[u8]) -> StoreResult<JobId> {
    let bytes = <[u8; JOB_ID_BYTES]>::try_from(bytes)
        .map_err(|_| corrupt(tree, key, format!("expected a {JOB_ID_BYTES}-byte job id")))?;
    Ok(JobId::from_bytes(bytes))
}

fn backfill_job_key(backfill: BackfillId, id: JobId) -> [u8; 2 * JOB_ID_BYTES] {
    let mut key = [0; 2 * JOB_ID_BYTES];
    key[..JOB_ID_BYTES].copy_from_slice(&backfill.to_bytes());
    key[JOB_ID_BYTES..].copy_from_slice(&id.to_bytes());
    key
}

fn index_key(status: Status, id: JobId) -> [u8; 1 + JOB_ID_BYTES] {
    let mut key = [0; 1 + JOB_ID_BYTES];
    key[0] = status.index_byte();
    key[1..].copy_from_slice(&id.to_bytes());
    key
}

/// A pending job's place in the claim queue: priority descending, then id (age) ascending.
fn queue_key(priority: i32, id: JobId) -> [u8; 4 + JOB_ID_BYTES] {
    // Flipping the sign bit orders i32s as u32s; inverting all bits puts the highest first.
    let order = !((priority as u32) ^ 0x8000_0000);
    let mut key = [0; 4 + JOB_ID_BYTES];
    key[..4].copy_from_slice(&order.to_be_bytes());
    key[4..].copy_from_slice(&id.to_bytes());
    key
}

/// What a claim needs to know of a pending job before reading it: when it may start
/// (`Job::not_before`, 8 big-endian bytes, `i64::MIN` for now) and its source host (the rest).
fn queue_value(job: &Job) -> Vec<u8> {
    let host = crate::model::sources::source_host(&job.source);
    let mut value = Vec::with_capacity(8 + host.len());
    value.extend_from_slice(&job.not_before.map_or(i64::MIN, |at| at.0).to_be_bytes());
    value.extend_from_slice(host.as_bytes());
    value
}

/// Reads a queue entry: the job, when it may start, and its host.
fn split_queue_entry(key: &[u8], value: &[u8]) -> StoreResult<Candidate> {
    let id = job_id_in(TREE_QUEUE, key, key.get(4..).unwrap_or_default())?;
    let not_before = value
        .get(..8)
        .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
        .map(i64::from_be_bytes)
        .ok_or_else(|| corrupt(TREE_QUEUE, key, "value shorter than 8 bytes".to_string()))?;
    let host = std::str::from_utf8(&value[8..])
        .map_err(|_| corrupt(TREE_QUEUE, key, "host is not UTF-8".to_string()))?;
    Ok(Candidate {
        id,
        not_before: Timestamp(not_before),
        host: host.to_string(),
    })
}

fn seq_key(id: JobId, seq: u64) -> [u8; SEQ_KEY_BYTES] {
    let mut key = [0; SEQ_KEY_BYTES];
    key[..JOB_ID_BYTES].copy_from_slice(&id.to_bytes());
    key[JOB_ID_BYTES..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// `blob key ++ 0 ++ job id`: object keys hold no NUL, so a scan of `key ++ 0` finds exactly the
/// jobs of one blob.
fn blob_ref_key(blob: &str, id: JobId) -> Vec<u8> {
    let mut key = Vec::with_capacity(blob.len() + 1 + JOB_ID_BYTES);
    key.extend_from_slice(blob.as_bytes());
    key.push(0);
    key.extend_from_slice(&id.to_bytes());
    key
}

fn blob_ref_prefix(blob: &str) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(blob.len() + 1);
    prefix.extend_from_slice(blob.as_bytes());
    prefix.push(0);
    prefix
}

/// Splits a `blob_refs` key back into the blob key and the job.
fn split_blob_ref(key: &[u8]) -> StoreResult<(String, JobId)> {
    let split = key
        .len()
        .checked_sub(JOB_ID_BYTES + 1)
        .filter(|&split| key[split] == 0)
        .ok_or_else(|| {
            corrupt(
                TREE_BLOB_REFS,
                key,
                "expected blob key ++ 0 ++ job id".into(),
            )
        })?;
    let blob = std::str::from_utf8(&key[..split])
        .map_err(|_| corrupt(TREE_BLOB_REFS, key, "blob key is not UTF-8".into()))?;
    let id = job_id_in(TREE_BLOB_REFS, key, &key[split + 1..])?;
    Ok((blob.to_string(), id))
}

fn checkpoint_key(id: JobId, step: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(JOB_ID_BYTES + step.len());
    key.extend_from_slice(&id.to_bytes());
    key.extend_from_slice(step.as_bytes());
    key
}

fn seq_in(tree: &'static str, key: &[u8]) -> StoreResult<u64> {
    let bytes = key
        .get(JOB_ID_BYTES..)
        .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
        .ok_or_else(|| {
            corrupt(
                tree,
                key,
                format!("expected a {SEQ_KEY_BYTES}-byte job id and sequence number"),
            )
        })?;
    Ok(u64::from_be_bytes(bytes))
}

/// The first free log sequence number: one past the highest in the tree. Keys sort by job first,
/// so this visits the last line of each job, jumping from one job's prefix to the next.
fn next_log_seq(logs: &sled::Tree) -> StoreResult<u64> {
    let mut seq_max: Option<u64> = None;
    let mut next_entry = logs.first()?;
    while let Some((key, _)) = next_entry {
        let id = job_id_in(TREE_LOGS, &key, key.get(..JOB_ID_BYTES).unwrap_or(&key))?;
        let Some(last) = logs.scan_prefix(id.to_bytes()).keys().next_back() else {
            break;
        };
        let seq = seq_in(TREE_LOGS, &last?)?;
        seq_max = Some(seq_max.map_or(seq, |seq_max| seq_max.max(seq)));
        next_entry = match id.0.checked_add(1) {
            Some(next_id) => logs.range(JobId(next_id).to_bytes()..).next().transpose()?,
            None => None,
        };
    }
    match seq_max {
        None => Ok(0),
        Some(seq_max) => seq_max
            .checked_add(1)
            .ok_or_else(|| corrupt(TREE_LOGS, &[], "log sequence exhausted".to_string())),
    }
}

#[async_trait]
impl JobReader for SledStore {
    async fn job(&self, id: JobId) -> StoreResult<Option<Job>> {
        self.read_job(id)
    }

    async fn job_by_key(&self, key: &str) -> StoreResult<Option<Job>> {
        match self.keys.get(key.as_bytes())? {
            None => Ok(None),
            Some(id_bytes) => {
                let id = job_id_in(TREE_KEYS, key.as_bytes(), &id_bytes)?;
                self.read_job(id)
            }
        }
    }

    async fn jobs(&self, filter: &JobFilter) -> StoreResult<Vec<Job>> {
        let mut jobs = Vec::new();
        if filter.limit == 0 {
            return Ok(jobs);
        }
        match filter.status {
            Some(status) => {
                for key in self
                    .status_index
                    .scan_prefix([status.index_byte()])
                    .keys()
                    .rev()
                {
                    let key = key?;
                    let id = job_id_in(TREE_STATUS_INDEX, &key, &key[1..])?;
                    // The index and the job are read apart: skip a job that moved on in between.
                    if let Some(job) = self.read_job(id)?
                        && job.status == status
                    {
                        jobs.push(job);
                        if jobs.len() >= filter.limit {
                            break;
                        }
                    }
                }
            }
            None => {
                for entry in self.jobs.iter().rev() {
                    let (key, bytes) = entry?;
                    jobs.push(decode_job(&key, &bytes)?);
                    if jobs.len() >= filter.limit {
                        break;
                    }
                }
            }
        }
        Ok(jobs)
    }

    async fn checkpoints(&self, id: JobId) -> StoreResult<Vec<Checkpoint>> {
        let mut checkpoints = Vec::new();
        for entry in self.checkpoints.scan_prefix(id.to_bytes()) {
            let (key, bytes) = entry?;
            checkpoints.push(codec::decode::<Checkpoint>(TREE_CHECKPOINTS, &key, &bytes)?);
        }
        // Keys sort by step name; the trait promises the order the steps were recorded in.
        records::in_recorded_order(&mut checkpoints);
        Ok(checkpoints)
    }

    async fn checkpoint(&self, id: JobId, step: &str) -> StoreResult<Option<Checkpoint>> {
        let key = checkpoint_key(id, step);
        self.checkpoints
            .get(&key)?
            .map(|bytes| codec::decode(TREE_CHECKPOINTS, &key, &bytes))
            .transpose()
    }

    async fn events(&self, id: JobId) -> StoreResult<Vec<Event>> {
        decode_checked(
            self.events.scan_prefix(id.to_bytes()),
            TREE_EVENTS,
            |key, event: &Event| {
                Ok((seq_in(TREE_EVENTS, key)? != event.seq)
                    .then(|| format!("record holds event seq {}", event.seq)))
            },
        )
    }

    async fn event_summary(&self, id: JobId) -> StoreResult<Option<EventSummary>> {
        self.read_event_summary(id)
    }

    fn events_max(&self) -> u64 {
        self.events_max.load(Ordering::Relaxed)
    }

    async fn metadata(&self, id: JobId) -> StoreResult<Option<MediaMetadata>> {
        let key = id.to_bytes();
        self.metadata
            .get(key)?
            .map(|bytes| codec::decode(TREE_METADATA, &key, &bytes))
            .transpose()
    }

    async fn progress(&self, id: JobId) -> StoreResult<Option<JobProgress>> {
        let key = id.to_bytes();
        match self.progress.get(key)? {
            Some(bytes) => Ok(Some(codec::decode(TREE_PROGRESS, &key, &bytes)?)),
            None => Ok(None),
        }
    }

    async fn logs(&self, id: JobId) -> StoreResult<Vec<LogLine>> {
        let mut lines = Vec::new();
        for entry in self.logs.scan_prefix(id.to_bytes()) {
            let (key, bytes) = entry?;
            lines.push(codec::decode(TREE_LOGS, &key, &bytes)?);
        }
        Ok(lines)
    }

    async fn jobs_referencing(&self, key: &str) -> StoreResult<Vec<JobId>> {
        let mut ids = Vec::new();
        for ref_key in self.blob_refs.scan_prefix(blob_ref_prefix(key)).keys() {
            let (_, id) = split_blob_ref(&ref_key?)?;
            ids.push(id);
        }
        Ok(ids)
    }

    async fn blob_refs(&self) -> StoreResult<Vec<(String, JobId)>> {
        self.blob_refs
            .iter()
            .keys()
            .map(|key| split_blob_ref(&key?))
            .collect()
    }

    async fn incidents(&self) -> StoreResult<Vec<Incident>> {
        decode_checked(
            self.incidents.iter(),
            TREE_INCIDENTS,
            |key, incident: &Incident| {
                Ok((key != incident.seq.to_be_bytes())
                    .then(|| format!("record holds incident seq {}", incident.seq)))
            },
        )
    }

    async fn pruned_job(&self, id: JobId) -> StoreResult<Option<PrunedJob>> {
        self.read_pruned(id)
    }

    async fn pruned_jobs(&self) -> StoreResult<Vec<PrunedJob>> {
        self.read_pruned_all()
    }

    async fn backfills(&self) -> StoreResult<Vec<Backfill>> {
        decode_checked(
            self.backfills.iter(),
            TREE_BACKFILLS,
            |key, backfill: &Backfill| {
                Ok((key != backfill.id.to_bytes())
                    .then(|| format!("record holds backfill {}", backfill.id)))
            },
        )
    }

    async fn backfill_jobs(&self, id: BackfillId) -> StoreResult<Vec<JobId>> {
        let mut ids = Vec::new();
        for key in self.backfill_jobs.scan_prefix(id.to_bytes()).keys() {
            let key = key?;
            ids.push(job_id_in(
                TREE_BACKFILL_JOBS,
                &key,
                key.get(JOB_ID_BYTES..).unwrap_or_default(),
            )?);
        }
        Ok(ids)
    }

    async fn hosts(&self) -> StoreResult<Vec<HostState>> {
        let mut hosts = Vec::new();
        for entry in self.hosts.iter() {
            let (key, bytes) = entry?;
            hosts.push(codec::decode(TREE_HOSTS, &key, &bytes)?);
        }
        Ok(hosts)
    }
}

#[async_trait]
impl OrchestratorStore for SledStore {
    /// Transaction, flush, and the log bound.
    async fn transition(
        &self,
        id: JobId,
        op: TransitionOp<'_>,
    ) -> StoreResult<Result<Job, Rejected>> {
        let op = op.op();
        let now = Timestamp::now();
        let outcome = self.transact(|tx| {
            let job = tx.existing_job(id)?;
            let transition = machine::apply_orchestrator(&job, op, now).map_err(reject)?;
            tx.write_transition(Some(&job), transition, now)
        })?;
        let job = match outcome {
            Ok(job) => job,
            Err(rejected) => return Ok(Err(rejected)),
        };
        self.flush().await?;
        tracing::debug!(job_id = %id, op = op.name(), status = %job.status, "job transition");
        if job.status.is_terminal() {
            self.trim_logs_best_effort(id);
        }
        Ok(Ok(job))
    }

    async fn submit(&self, request: &SubmitRequest) -> StoreResult<Submitted> {
        let now = Timestamp::now();
        let outcome = self.transact(|tx| submit_in_tx(tx, request, Resubmit::default(), now))?;
        let submitted = match outcome {
            Ok(submitted) => submitted,
            // The body refuses only through `store_abort`.
            Err(rejected) => {
                return Err(corrupt(
                    TREE_KEYS,
                    request.key.as_bytes(),
                    format!("submit was refused: {rejected}"),
                ));
            }
        };
        // Also for an existing job: another caller may have committed it and not yet flushed, and
        // this call is about to acknowledge it. A flush with nothing to write returns at once.
        self.flush().await?;
        tracing::debug!(
            job_id = %submitted.job.id,
            outcome = ?submitted.outcome,
            "job submitted"
        );
        Ok(submitted)
    }

    async fn submit_batch(
        &self,
        requests: &[SubmitRequest],
        options: &BatchOptions,
    ) -> StoreResult<Vec<Submitted>> {
        let mut submitted = Vec::with_capacity(requests.len());
        for chunk in requests.chunks(SUBMIT_BATCH_MAX) {
            let now = Timestamp::now();
            let outcome = self.transact_with(&self.backfill_jobs, |tx, backfill_jobs| {
                let mut chunk_submitted = Vec::with_capacity(chunk.len());
                for request in chunk {
                    let one = submit_in_tx(tx, request, options.resubmit, now)?;
                    if let Some(backfill) = options.backfill {
                        backfill_jobs
                            .insert(&backfill_job_key(backfill, one.job.id)[..], Vec::new())?;
                    }
                    chunk_submitted.push(one);
                }
                Ok(chunk_submitted)
            })?;
            match outcome {
                Ok(chunk_submitted) => submitted.extend(chunk_submitted),
                // The body refuses only through `store_abort`.
                Err(rejected) => {
                    return Err(corrupt(
                        TREE_KEYS,
                        b"",
                        format!("a batch submit was refused: {rejected}"),
                    ));
                }
            }
        }
        // One flush for the whole batch, before any of it is acknowledged (as `submit` does for
        // one request, existing jobs included).
        self.flush().await?;
        tracing::debug!(requests = requests.len(), "batch submitted");
        Ok(submitted)
    }

    async fn open_backfill(&self, manifest: &str) -> StoreResult<Backfill> {
        let _one_at_a_time = self.backfill_lock.lock().await;
        for backfill in self.backfills().await? {
            if backfill.manifest == manifest {
                return Ok(backfill);
            }
        }
        let backfill = Backfill {
            id: BackfillId::new(),
            manifest: manifest.to_string(),
            created_at: Timestamp::now(),
        };
        self.backfills
            .insert(backfill.id.to_bytes(), codec::encode(&backfill)?)?;
        self.flush().await?;
        tracing::info!(backfill_id = %backfill.id, manifest, "backfill recorded");
        Ok(backfill)
    }

    async fn claim_next(&self, request: &ClaimRequest<'_>) -> StoreResult<ClaimNext> {
        let claimed = {
            let _one_scheduler = self.schedule_lock.lock().await;
            claims::claim_next(self, request, Timestamp::now()).await?
        };
        if let ClaimNext::Claimed(job, _) = &claimed {
            self.flush().await?;
            tracing::debug!(job_id = %job.id, worker_id = %request.worker_id, token = job.fencing_token, "job claimed");
        }
        Ok(claimed)
    }

    async fn claim(
        &self,
        id: JobId,
        worker_id: &WorkerId,
        lease_ttl_ms: u64,
    ) -> StoreResult<Result<(Job, LeaseToken), Rejected>> {
        let claimant = Claimant::new(worker_id, lease_ttl_ms, &self.read_running_jobs()?);
        let now = Timestamp::now();
        let outcome = self.transact(|tx| tx.claim(id, &claimant, now))?;
        if outcome.is_ok() {
            self.flush().await?;
        }
        Ok(outcome.map(|job| {
            let token = claims_model::lease_of(&job);
            (job, token)
        }))
    }

    async fn retry_from(
        &self,
        id: JobId,
        step: &str,
        later_steps: &[String],
        reason: &str,
    ) -> StoreResult<Result<Job, Rejected>> {
        self.retry_job_from(id, step, later_steps, reason).await
    }

    async fn record_reprobe(
        &self,
        id: JobId,
        checkpoint: &Checkpoint,
        metadata: &MediaMetadata,
        changes: Vec<String>,
    ) -> StoreResult<Result<Job, Rejected>> {
        let now = Timestamp::now();
        let outcome = self.transact(|tx| {
            let mut job = tx.existing_job(id)?;
            machine::check_reprobe(&job).map_err(reject)?;
            tx.checkpoints.insert(
                checkpoint_key(id, &checkpoint.step),
                encode_in_tx(checkpoint)?,
            )?;
            tx.metadata
                .insert(&id.to_bytes()[..], encode_in_tx(metadata)?)?;
            let reprobed = EventKind::Reprobed {
                changes: changes.clone(),
            };
            tx.append_events(&mut job, vec![reprobed], now)?;
            tx.put_job(Some(job.status), &job)?;
            Ok(job)
        })?;
        if outcome.is_ok() {
            self.flush().await?;
        }
        Ok(outcome)
    }

    async fn reclaim_orphan(&self, id: JobId, reason: &str) -> StoreResult<Result<Job, Rejected>> {
        // Where the job was when its process died. Nothing writes to an orphan while its
        // reclaim is decided: its process is gone, and this process holds the store alone.
        let Some(job) = self.read_job(id)? else {
            return Ok(Err(Rejected::NotFound(id)));
        };
        let checkpoints = self.checkpoints.scan_prefix(id.to_bytes()).keys().count();
        let progress = self
            .progress
            .get(id.to_bytes())?
            .map(|bytes| codec::decode::<JobProgress>(TREE_PROGRESS, &id.to_bytes(), &bytes))
            .transpose()?;
        // This process holds the store alone: the job's process is certainly gone.
        let op = OrchestratorOp::reclaim_orphan(
            &job,
            reason,
            checkpoints,
            progress.as_ref(),
            DeathSeen::Certain,
        );
        self.transition(id, TransitionOp(&op)).await
    }

    async fn record_host_outcome(
        &self,
        host: &str,
        job: JobId,
        outcome: &HostOutcome,
        policy: &SchedulingPolicy,
    ) -> StoreResult<OutcomeVerdict> {
        let _one_scheduler = self.schedule_lock.lock().await;
        let before = self.read_host(host)?;
        let update = scheduling::outcome_update(
            before.as_ref(),
            host,
            job,
            outcome,
            policy,
            Timestamp::now(),
        );
        if let Some(state) = &update.state {
            self.hosts.insert(host.as_bytes(), codec::encode(state)?)?;
            // The job's own transition follows and flushes; an opened breaker is flushed now.
            if update.verdict.opened {
                self.flush().await?;
            }
        }
        Ok(update.verdict)
    }
}

#[async_trait]
impl MaintenanceStore for SledStore {
    async fn record_incident(&self, incident: NewIncident) -> StoreResult<Incident> {
        let _one_append_at_a_time = self.incident_lock.lock().await;
        let seq = match self.incidents.last()? {
            None => 0,
            Some((key, _)) => {
                let bytes = <[u8; 8]>::try_from(key.as_ref()).map_err(|_| {
                    corrupt(TREE_INCIDENTS, &key, "expected a u64 sequence key".into())
                })?;
                u64::from_be_bytes(bytes).checked_add(1).ok_or_else(|| {
                    corrupt(TREE_INCIDENTS, &key, "incident sequence exhausted".into())
                })?
            }
        };
        let incident = Incident {
            seq,
            at: Timestamp::now(),
            actor: incident.actor,
            action: incident.action,
            job: incident.job,
            key: incident.key,
            reason: incident.reason,
        };
        self.incidents
            .insert(seq.to_be_bytes(), codec::encode(&incident)?)?;
        self.flush().await?;
        tracing::info!(
            seq,
            actor = %incident.actor,
            action = %incident.action,
            job_id = ?incident.job.map(|id| id.to_string()),
            key = ?incident.key,
            "incident recorded: {}",
            incident.reason
        );
        Ok(incident)
    }

    async fn delete_job(&self, id: JobId) -> StoreResult<Result<Job, Rejected>> {
        // No iterator is open while the transaction runs (see `ClaimScan for SledStore`): the
        // checkpoint keys are read first. A job that is not running gets no new checkpoint, and
        // the transaction re-reads the job, so the list cannot go stale under it.
        let checkpoint_keys = self
            .checkpoints
            .scan_prefix(id.to_bytes())
            .keys()
            .collect::<Result<Vec<IVec>, _>>()?;
        let outcome = self.transact(|tx| {
            let job = tx.existing_job(id)?;
            machine::check_deletable(&job).map_err(reject)?;
            let store_checkpoint = tx.store_checkpoint(id)?;
            tx.replace_blob_refs(id, store_checkpoint.as_ref(), None)?;
            for key in &checkpoint_keys {
                tx.checkpoints.remove(key)?;
            }
            tx.remove_history(&job)?;
            tx.remove_webhook(id)?;
            tx.metadata.remove(&id.to_bytes()[..])?;
            tx.status_index.remove(&index_key(job.status, id)[..])?;
            tx.queue.remove(&queue_key(job.priority, id)[..])?;
            tx.keys.remove(job.key.as_bytes())?;
            tx.jobs.remove(&id.to_bytes()[..])?;
            Ok(job)
        })?;
        let job = match outcome {
            Ok(job) => job,
            Err(rejected) => return Ok(Err(rejected)),
        };
        // Logs and progress live outside the transaction (they are best effort, see the module
        // docs): a crash here leaves lines of a job that no longer exists, which nothing reads.
        let mut batch = sled::Batch::default();
        for key in self.logs.scan_prefix(id.to_bytes()).keys() {
            batch.remove(key?);
        }
        self.logs.apply_batch(batch)?;
        self.progress.remove(id.to_bytes())?;
        self.flush().await?;
        tracing::info!(job_id = %id, "deleted the job's records");
        Ok(Ok(job))
    }

    async fn prune_jobs(
        &self,
        ids: &[JobId],
        cutoff: Timestamp,
    ) -> StoreResult<Vec<Result<PrunedJob, Rejected>>> {
        self.prune(ids, cutoff).await
    }

    async fn import(
        &self,
        records: &[super::transfer::Record],
    ) -> StoreResult<Vec<super::transfer::ImportOutcome>> {
        self.import_records(records).await
    }
}

#[async_trait]
impl WebhookStore for SledStore {
    async fn set_webhooks(&self, hooks: &[(JobId, String)]) -> StoreResult<()> {
        let now = Timestamp::now();
        self.transact(|tx| {
            for (id, url) in hooks {
                let Some(job) = tx.job(*id)? else {
                    continue;
                };
                let before = tx.webhook(*id)?;
                let webhook = notices::set_url(before.clone(), &job, url, now);
                tx.put_webhook(before.as_ref(), &webhook)?;
            }
            Ok(())
        })
        .map(|outcome| refuses_nothing(outcome, "set_webhooks"))?;
        self.flush().await
    }

    async fn webhook(&self, id: JobId) -> StoreResult<Option<Webhook>> {
        let key = id.to_bytes();
        self.webhooks
            .get(key)?
            .map(|bytes| codec::decode(TREE_WEBHOOKS, &key, &bytes))
            .transpose()
    }

    async fn claim_notice(&self, now: Timestamp, lease_ms: u64) -> StoreResult<ClaimNotice> {
        // The first entry is read before the transaction: no iterator is open while one runs
        // (see `ClaimScan for SledStore`); the transaction checks the entry is still there.
        let Some((key, _)) = self.webhook_due.first()? else {
            return Ok(ClaimNotice::Wait { until: None });
        };
        let (due_at, id) = split_due_key(&key)?;
        if due_at > now {
            return Ok(ClaimNotice::Wait {
                until: Some(due_at),
            });
        }
        let claimed = self.transact(|tx| {
            if tx.webhook_due.get(&key)?.is_none() {
                return Ok(None);
            }
            let Some(before) = tx.webhook(id)? else {
                return Err(store_abort(corrupt(
                    TREE_WEBHOOK_DUE,
                    &key,
                    format!("names job {id}, which has no webhook"),
                )));
            };
            let mut webhook = before.clone();
            if !notices::claim_notice(&mut webhook, now, lease_ms) {
                return Err(store_abort(corrupt(
                    TREE_WEBHOOK_DUE,
                    &key,
                    format!("names job {id}, whose webhook has no pending notice"),
                )));
            }
            tx.put_webhook(Some(&before), &webhook)?;
            Ok(Some(webhook))
        })?;
        match refuses_nothing(claimed, "claim_notice") {
            Some(webhook) => Ok(ClaimNotice::Claimed(Box::new(webhook))),
            // Taken meanwhile: the caller asks again.
            None => Ok(ClaimNotice::Wait { until: Some(now) }),
        }
    }

    async fn record_delivery(
        &self,
        id: JobId,
        delivery: &Delivery,
        retry_at: Option<Timestamp>,
    ) -> StoreResult<()> {
        self.transact(|tx| {
            let Some(before) = tx.webhook(id)? else {
                return Ok(());
            };
            let mut webhook = before.clone();
            notices::apply_delivery(&mut webhook, delivery, retry_at);
            tx.put_webhook(Some(&before), &webhook)
        })
        .map(|outcome| refuses_nothing(outcome, "record_delivery"))?;
        self.flush().await
    }
}

#[async_trait]
impl WorkerStore for SledStore {
    async fn set_phase(
        &self,
        token: &LeaseToken,
        phase: Phase,
    ) -> StoreResult<Result<Job, Rejected>> {
        let now = Timestamp::now();
        let op = WorkerOp::SetPhase {
            token: token.fencing_token,
            phase,
        };
        let outcome = self.transact(|tx| {
            let job = tx.existing_job(token.job_id)?;
            let transition = machine::apply_worker(&job, &op, now).map_err(reject)?;
            tx.write_transition(Some(&job), transition, now)
        })?;
        if outcome.is_ok() {
            self.flush().await?;
        }
        Ok(outcome)
    }

    async fn record_checkpoint(
        &self,
        token: &LeaseToken,
        checkpoint: &Checkpoint,
        metadata: Option<&MediaMetadata>,
    ) -> StoreResult<Result<(), Rejected>> {
        self.record_checkpoint_grouped(token, checkpoint, metadata)
            .await
    }

    async fn record_step_event(
        &self,
        token: &LeaseToken,
        step: &str,
        event: StepEvent,
    ) -> StoreResult<Result<(), Rejected>> {
        let now = Timestamp::now();
        let kind = event.into_event(step);
        let outcome = self.transact(|tx| {
            let mut job = tx.existing_job(token.job_id)?;
            machine::check_lease(&job, token).map_err(reject)?;
            tx.append_events(&mut job, vec![kind.clone()], now)?;
            tx.put_job(Some(job.status), &job)
        })?;
        if outcome.is_ok() {
            self.flush().await?;
        }
        Ok(outcome)
    }

    async fn set_progress(
        &self,
        token: &LeaseToken,
        progress: &JobProgress,
    ) -> StoreResult<Result<(), Rejected>> {
        self.write_progress(token, progress)
    }
}

impl SledStore {
    fn write_progress(
        &self,
        token: &LeaseToken,
        progress: &JobProgress,
    ) -> StoreResult<Result<(), Rejected>> {
        let key = token.job_id.to_bytes();
        let value = codec::encode(progress)?;
        let result = (&self.jobs, &self.progress).transaction(|(jobs, progress_tree)| {
            let Some(bytes) = jobs.get(key)? else {
                return Ok(Err(Rejected::NotFound(token.job_id)));
            };
            let job: Job = codec::decode_job(TREE_JOBS, &key, &bytes)
                .map_err(ConflictableTransactionError::Abort)?;
            if let Err(rejected) = machine::check_lease(&job, token) {
                return Ok(Err(rejected));
            }
            progress_tree.insert(&key, value.as_slice())?;
            Ok(Ok(()))
        });
        match result {
            Ok(outcome) => Ok(outcome),
            Err(TransactionError::Abort(error)) => Err(error),
            Err(TransactionError::Storage(error)) => Err(error.into()),
        }
    }
}

impl JobLogSink for SledStore {
    /// Best effort and not flushed line by line; see the module docs for the bound on a job's lines.
    fn append_log(&self, id: JobId, line: LogLine) {
        let mut line = line;
        truncate_message(&mut line.message, LOG_LINE_BYTES_MAX);
        if self.try_append_log(id, &line).is_err() {
            self.log_lines_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn flush_logs(&self) {
        if self.db.flush().is_err() {
            self.log_lines_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// How long a test waits to reopen a store it closed: bounds a hang only, nothing is asserted
/// about how long the wait took.
#[cfg(test)]
pub(crate) const TEST_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::model::job::{ChangeToken, Hash, Location, StepOutput};
    use crate::store::conformance;

    fn open(path: &Path) -> SledStore {
        SledStore::open_patiently(path, 8 * 1024 * 1024, TEST_PATIENCE)
            .expect("open the sled store")
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

    fn request(key: &str) -> SubmitRequest {
        SubmitRequest {
            key: key.to_string(),
            source: format!("https://example.com/{key}.mp4"),
            workflow: "ingest".to_string(),
            reingest: false,
            priority: crate::model::job::PRIORITY_LIVE,
        }
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
        let checkpoint = Checkpoint {
            step: "download".to_string(),
            definition_hash: Hash([1; 32]),
            input_hash: Hash([2; 32]),
            outputs: vec![StepOutput {
                name: "video".to_string(),
                location: Location::Object("jobs/x/video.mp4".to_string()),
                size: 10,
                blake3: Hash([3; 32]),
                change_token: ChangeToken::ETag("e".to_string()),
            }],
            recorded_at: Timestamp(1_000),
        };
        let (job, events) = {
            let store = open(dir.path());
            let submitted = store.submit(&request("a")).await.expect("submit");
            let (_, token) = store
                .claim(submitted.job.id, &worker(), 60_000)
                .await
                .expect("claim")
                .expect("claimable");
            store
                .set_phase(&token, Phase::Downloading)
                .await
                .expect("set_phase")
                .expect("current token");
            store
                .record_checkpoint(&token, &checkpoint, None)
                .await
                .expect("record_checkpoint")
                .expect("current token");
            store.append_log(
                token.job_id,
                LogLine {
                    at: Timestamp(5),
                    level: "INFO".to_string(),
                    message: "before reopen".to_string(),
                },
            );
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
        let running = store
            .jobs(&JobFilter {
                status: Some(Status::Running),
                limit: usize::MAX,
            })
            .await
            .expect("jobs");
        assert_eq!(running, vec![job.clone()]);

        // The log sequence resumes past the lines already on disk, so new lines sort after them.
        store.append_log(
            job.id,
            LogLine {
                at: Timestamp(6),
                level: "INFO".to_string(),
                message: "after reopen".to_string(),
            },
        );
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
        let jobs_total = 40;
        for index in 0..jobs_total {
            store
                .submit(&request(&format!("job-{index}")))
                .await
                .expect("submit");
        }
        let mut claimers = Vec::new();
        for claimer in 0..8 {
            let store = Arc::clone(&store);
            claimers.push(tokio::spawn(async move {
                let worker_id = WorkerId(format!("test:1:{claimer}"));
                let mut claimed = Vec::new();
                while let Some((job, _token)) =
                    crate::store::conformance::claim_next_as(store.as_ref(), &worker_id).await
                {
                    claimed.push(job.id);
                }
                claimed
            }));
        }
        let mut claimed = Vec::new();
        for claimer in claimers {
            claimed.extend(claimer.await.expect("claimer task"));
        }
        let distinct: HashSet<JobId> = claimed.iter().copied().collect();
        assert_eq!(claimed.len(), jobs_total);
        assert_eq!(distinct.len(), jobs_total);
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
            let submitted = store.submit(&request("indexed")).await.expect("submit");
            let (_, token) = store
                .claim(submitted.job.id, &worker(), 60_000)
                .await
                .expect("claim")
                .expect("claimable");
            let checkpoint = Checkpoint {
                step: STORE_STEP.to_string(),
                definition_hash: Hash([1; 32]),
                input_hash: Hash([2; 32]),
                outputs: vec![StepOutput {
                    name: "video".to_string(),
                    location: Location::Object(blob.to_string()),
                    size: 10,
                    blake3: Hash([3; 32]),
                    change_token: ChangeToken::None,
                }],
                recorded_at: Timestamp(1_000),
            };
            store
                .record_checkpoint(&token, &checkpoint, None)
                .await
                .expect("record_checkpoint")
                .expect("current token");
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
            submitted.job.id
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

    // Guards fault isolation (issue 6): garbage in one job's record is an error that names the
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
        // A torn or bit-rotted record: the schema byte survives, the rest is noise.
        let mut garbage = vec![codec::SCHEMA_VERSION];
        garbage.extend((0u8..61).map(|byte| byte.wrapping_mul(37) ^ 0xa5));
        store
            .jobs
            .insert(corrupted_id.to_bytes(), garbage)
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
        store
            .set_phase(&token, Phase::Downloading)
            .await
            .expect("set_phase")
            .expect("current token");
        let checkpoint = Checkpoint {
            step: "download".to_string(),
            definition_hash: Hash([1; 32]),
            input_hash: Hash([2; 32]),
            outputs: Vec::new(),
            recorded_at: Timestamp::now(),
        };
        store
            .record_checkpoint(&token, &checkpoint, None)
            .await
            .expect("record_checkpoint")
            .expect("current token");
        let done = store
            .complete(&token)
            .await
            .expect("complete")
            .expect("current token");
        assert_eq!(done.status, Status::Succeeded);
        let succeeded = store
            .jobs(&JobFilter {
                status: Some(Status::Succeeded),
                limit: usize::MAX,
            })
            .await
            .expect("the status index still lists the healthy job");
        assert_eq!(
            succeeded.iter().map(|job| job.id).collect::<Vec<_>>(),
            vec![id]
        );
    }
}
