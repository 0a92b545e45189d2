//! `narra prune` in the store, and what `narra doctor` reports of the store's size.
//!
//! Pruning a finished job removes what `delete_job` removes (the job, its key, its status-index
//! entry, checkpoints, events and summary, metadata record, logs, progress) but its `blob_refs`
//! entries: those stay under the job's id, beside a `PrunedJob` tombstone in the `pruned` tree
//! written in the same transaction. So `cleanup` still sees the job's blobs as referenced (it never
//! deletes them as orphans), `delete` of another job keeps the blobs they share, and
//! `check_consistency` accounts for every reference: a store checkpoint's or a tombstone's.

use super::{
    SledStore, TREE_EVENT_SUMMARIES, TREE_PRUNED, TREE_STATUS_INDEX, codec, corrupt, encode_in_tx,
    index_key, reject,
};
use crate::model::job::{EventSummary, JobId, PrunedJob, Status, Timestamp};
use crate::model::machine::{self, Rejected};
use crate::store::{JobReader, StoreResult};

/// The state store's size and what it holds, for `narra doctor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStats {
    /// What sled reports its files take (`Db::size_on_disk`).
    pub size_on_disk_bytes: u64,
    /// Jobs by status, in `Status::ALL` order.
    pub jobs_by_status: Vec<(Status, u64)>,
    /// Events the jobs hold, and those folded into summaries.
    pub events_held: u64,
    pub events_compacted: u64,
    pub event_summaries: u64,
    pub pruned_jobs: u64,
    pub blob_refs: u64,
    pub log_lines: u64,
    /// The most events a job holds.
    pub events_max: u64,
}

fn decode_pruned(key: &[u8], bytes: &[u8]) -> StoreResult<PrunedJob> {
    let pruned: PrunedJob = codec::decode(TREE_PRUNED, key, bytes)?;
    if pruned.id.to_bytes() != key {
        return Err(corrupt(
            TREE_PRUNED,
            key,
            format!("record holds pruned job {}", pruned.id),
        ));
    }
    Ok(pruned)
}

impl SledStore {
    pub(super) async fn prune(
        &self,
        ids: &[JobId],
        cutoff: Timestamp,
    ) -> StoreResult<Vec<Result<PrunedJob, Rejected>>> {
        let mut outcomes = Vec::with_capacity(ids.len());
        for &id in ids {
            // As in `delete_job`: no iterator is open while the transaction runs, and a finished
            // job gets no new checkpoint, so the keys read first cannot go stale.
            let checkpoint_keys = self
                .checkpoints
                .scan_prefix(id.to_bytes())
                .keys()
                .collect::<Result<Vec<_>, _>>()?;
            let pruned_at = Timestamp::now();
            let outcome = self.transact_with(&self.pruned, |tx, pruned| {
                let job = tx.existing_job(id)?;
                machine::check_prunable(&job, cutoff).map_err(reject)?;
                let store_checkpoint = tx.store_checkpoint(id)?;
                let tombstone =
                    crate::model::records::tombstone(&job, store_checkpoint.as_ref(), pruned_at);
                // The blob references stay: they are the tombstone's now.
                for key in &checkpoint_keys {
                    tx.checkpoints.remove(key)?;
                }
                tx.remove_history(&job)?;
                tx.remove_webhook(id)?;
                tx.metadata.remove(&id.to_bytes()[..])?;
                tx.status_index.remove(&index_key(job.status, id)[..])?;
                tx.keys.remove(job.key.as_bytes())?;
                tx.jobs.remove(&id.to_bytes()[..])?;
                pruned.insert(&id.to_bytes()[..], encode_in_tx(&tombstone)?)?;
                Ok(tombstone)
            })?;
            if outcome.is_ok() {
                // Best effort, as for `delete_job`: lines of a job that no longer exists are
                // read by nothing.
                let mut batch = sled::Batch::default();
                for key in self.logs.scan_prefix(id.to_bytes()).keys() {
                    batch.remove(key?);
                }
                self.logs.apply_batch(batch)?;
                self.progress.remove(id.to_bytes())?;
            }
            outcomes.push(outcome);
        }
        // One flush before any of it is acknowledged, as `submit_batch` does.
        self.flush().await?;
        crate::store::log_pruned(&outcomes);
        Ok(outcomes)
    }

    pub(super) fn read_pruned(&self, id: JobId) -> StoreResult<Option<PrunedJob>> {
        let key = id.to_bytes();
        self.pruned
            .get(key)?
            .map(|bytes| decode_pruned(&key, &bytes))
            .transpose()
    }

    /// Every tombstone, in id order.
    pub(super) fn read_pruned_all(&self) -> StoreResult<Vec<PrunedJob>> {
        let mut tombstones = Vec::new();
        for entry in self.pruned.iter() {
            let (key, bytes) = entry?;
            tombstones.push(decode_pruned(&key, &bytes)?);
        }
        Ok(tombstones)
    }

    /// Every tombstone decodes, is its key's, and names no job that exists.
    pub(super) fn check_pruned(&self) -> StoreResult<()> {
        for entry in self.pruned.iter() {
            let (key, bytes) = entry?;
            let pruned = decode_pruned(&key, &bytes)?;
            if self.read_job(pruned.id)?.is_some() {
                return Err(corrupt(
                    TREE_PRUNED,
                    &key,
                    format!("job {} is pruned and exists", pruned.id),
                ));
            }
        }
        Ok(())
    }

    /// The store's size on disk and how many records of each kind it holds. Reads every key of
    /// the job trees (and decodes the summaries): for `doctor`, not for the hot path.
    pub fn stats(&self) -> StoreResult<StoreStats> {
        let mut jobs_by_status: Vec<(Status, u64)> =
            Status::ALL.iter().map(|status| (*status, 0)).collect();
        for key in self.status_index.iter().keys() {
            let key = key?;
            let byte = key.first().copied();
            let Some(slot) = jobs_by_status
                .iter_mut()
                .find(|(status, _)| Some(status.index_byte()) == byte)
            else {
                return Err(corrupt(
                    TREE_STATUS_INDEX,
                    &key,
                    "unknown status byte".to_string(),
                ));
            };
            slot.1 += 1;
        }
        let mut events_compacted = 0u64;
        let mut event_summaries = 0u64;
        for entry in self.event_summaries.iter() {
            let (key, bytes) = entry?;
            let summary: EventSummary = codec::decode(TREE_EVENT_SUMMARIES, &key, &bytes)?;
            events_compacted = events_compacted.saturating_add(summary.events_compacted);
            event_summaries += 1;
        }
        let count = |tree: &sled::Tree| -> u64 { u64::try_from(tree.len()).unwrap_or(u64::MAX) };
        Ok(StoreStats {
            size_on_disk_bytes: self.db.size_on_disk()?,
            jobs_by_status,
            events_held: count(&self.events),
            events_compacted,
            event_summaries,
            pruned_jobs: count(&self.pruned),
            blob_refs: count(&self.blob_refs),
            log_lines: count(&self.logs),
            events_max: self.events_max(),
        })
    }
}
