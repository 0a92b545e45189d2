//! Opening a sled store: the database's file lock and the wait for a previous holder to let go of
//! it (`open_patiently`), the trees, and what an older store needs once (`migrate`: the schema
//! version's records and the claim queue; the blob index built from the checkpoints). Nothing
//! here runs after the store is open.

use std::path::Path;
use std::sync::atomic::AtomicU64;

use super::keys::{
    TREE_BACKFILL_JOBS, TREE_BACKFILLS, TREE_BLOB_REFS, TREE_CHECKPOINTS, TREE_EVENT_SUMMARIES,
    TREE_EVENTS, TREE_HOSTS, TREE_INCIDENTS, TREE_JOBS, TREE_KEYS, TREE_LOGS, TREE_META,
    TREE_METADATA, TREE_PROGRESS, TREE_PRUNED, TREE_QUEUE, TREE_STATUS_INDEX, TREE_WEBHOOK_DUE,
    TREE_WEBHOOKS, blob_ref_key, decode_job, queue_key, queue_value,
};
use super::logs::next_log_seq;
use super::{DEFAULT_CACHE_CAPACITY_BYTES, SledStore, group_commit, leftovers};
use crate::model::job::Status;
use crate::model::records::referenced_blobs;
use crate::store::{StoreError, StoreResult, codec};

/// How long a process that took the home waits for the previous holder's lock on the database. A
/// process that is exiting lets go of `<home>/narra.lock` before its last reference to the
/// database (its job-log sink keeps the store until the process ends), so the next process can
/// find the home free and the database still locked for a moment.
pub const HANDOVER_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// sled's refusal to open a database whose file lock another open file holds (`flock` would
/// block); sled gives it only as text.
pub(super) fn held_by_another(error: &StoreError) -> bool {
    let text = error.to_string();
    text.contains("could not acquire lock") && text.contains("WouldBlock")
}

/// The `meta` key holding the schema version the store's records were last migrated to.
pub(super) const META_SCHEMA: &[u8] = b"schema";

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
            events_max: AtomicU64::new(crate::store::EVENTS_MAX),
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
}

impl SledStore {
    /// Brings a store written by an older schema version up to [`codec::SCHEMA_VERSION`], once:
    /// every job is rewritten in the current layout (`codec::decode_job` reads the old one) and the
    /// claim queue is built from the pending jobs. Other records read the same under every version
    /// and are left as they are. Flushed before the store is used.
    pub(super) fn migrate(&self) -> StoreResult<()> {
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
    pub(super) fn backfill_blob_refs(&self) -> StoreResult<()> {
        if !self.blob_refs.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        let mut count = 0usize;
        self.for_each_store_checkpoint(|_, id, checkpoint| {
            for blob in referenced_blobs(&checkpoint) {
                batch.insert(blob_ref_key(blob, id), Vec::new());
                count += 1;
            }
            Ok(())
        })?;
        if count > 0 {
            self.blob_refs.apply_batch(batch)?;
            self.db.flush()?;
            tracing::info!(references = count, "built the blob references index");
        }
        Ok(())
    }
}
