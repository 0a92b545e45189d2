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
//! status its oldest lines are trimmed to [`LOG_LINES_MAX`](crate::store::LOG_LINES_MAX); while a job runs, its log may grow past
//! the bound until the job ends.
//!
//! sled calls are synchronous and made on the caller's task: a commit touches sled's in-memory
//! log buffer, and at worst waits for a concurrent flush's fsync (sled serializes transactions
//! against flushes with one process-wide lock). The flush itself runs on tokio's blocking pool.
//!
//! The files: `open.rs` (opening, migrations), `keys.rs` (the key layout), `tx.rs` (transactions,
//! the shared writes, the flush), `claims.rs` (the claim queue), `consistency.rs` (the check),
//! one file per trait (`reader.rs`, `orchestrator.rs`, `maintenance.rs`, `webhooks.rs`,
//! `worker.rs`, `logs.rs`), and `compaction.rs`, `group_commit.rs`, `import.rs`, `leftovers.rs`
//! and `prune.rs`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

mod claims;
mod compaction;
mod consistency;
mod group_commit;
mod import;
mod keys;
mod leftovers;
mod logs;
mod maintenance;
mod open;
mod orchestrator;
mod prune;
mod reader;
#[cfg(test)]
mod tests;
mod tx;
mod webhooks;
mod worker;

pub use open::HANDOVER_PATIENCE;
pub use prune::StoreStats;

/// The page cache narra asks sled for unless told otherwise. sled's own default is 1 GiB, far more
/// than a job table needs.
pub const DEFAULT_CACHE_CAPACITY_BYTES: u64 = 64 * 1024 * 1024;

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
    /// Pending jobs in claim order: see `keys::queue_key`.
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

impl SledStore {
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
}

/// How long a test waits to reopen a store it closed: bounds a hang only, nothing is asserted
/// about how long the wait took.
#[cfg(test)]
pub(crate) const TEST_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);
