//! `narra prune` in the store, and what `narra doctor` reports of the store's size.
//!
//! Pruning a finished job removes what `delete_job` removes (the job, its key, its status-index
//! entry, checkpoints, events and summary, metadata record, logs, progress) but its `blob_refs`
//! entries: those stay under the job's id, beside a `PrunedJob` tombstone in the `pruned` tree
//! written in the same transaction. So `cleanup` still sees the job's blobs as referenced (it never
//! deletes them as orphans), `delete` of another job keeps the blobs they share, and
//! `check_consistency` accounts for every reference: a store checkpoint's or a tombstone's.

use super::SledStore;
use super::keys::{TREE_EVENT_SUMMARIES, TREE_PRUNED, TREE_STATUS_INDEX, decode_all, read_by_id};
use super::tx::{encode_in_tx, reject};
use crate::model::job::{EventSummary, JobId, PrunedJob, Status, Timestamp};
use crate::model::machine;
use crate::model::machine::Rejected;
use crate::store::{JobReader, StoreError, StoreResult, codec};

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

pub(super) fn decode_pruned(key: &[u8], bytes: &[u8]) -> StoreResult<PrunedJob> {
    codec::decode_keyed(TREE_PRUNED, key, bytes)
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
            let checkpoint_keys = self.checkpoint_keys(id)?;
            let pruned_at = Timestamp::now();
            let outcome = self.transact_with(&self.pruned, |tx, pruned| {
                let job = tx.existing_job(id)?;
                machine::check_prunable(&job, cutoff).map_err(reject)?;
                let store_checkpoint = tx.store_checkpoint(id)?;
                let tombstone =
                    crate::model::records::tombstone(&job, store_checkpoint.as_ref(), pruned_at);
                // The blob references stay: they are the tombstone's now.
                tx.remove_job(&job, &checkpoint_keys)?;
                pruned.insert(&id.to_bytes()[..], encode_in_tx(&tombstone)?)?;
                Ok(tombstone)
            })?;
            if outcome.is_ok() {
                self.remove_logs_and_progress(id)?;
            }
            outcomes.push(outcome);
        }
        // One flush before any of it is acknowledged, as `submit_batch` does.
        self.flush().await?;
        crate::store::log_pruned(&outcomes);
        Ok(outcomes)
    }

    pub(super) fn read_pruned(&self, id: JobId) -> StoreResult<Option<PrunedJob>> {
        read_by_id(&self.pruned, id, decode_pruned)
    }

    /// Every tombstone, in id order.
    pub(super) fn read_pruned_all(&self) -> StoreResult<Vec<PrunedJob>> {
        decode_all(self.pruned.iter(), TREE_PRUNED)
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
                return Err(StoreError::corrupt(
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
