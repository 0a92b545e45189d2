//! `check_consistency`: the trees read against each other (`model::consistency` holds the rules
//! every store shares; the status index, the keys, the queue and the due index are sled's own).
//! Reads every record: for tests and `narra doctor`, never the hot path.

use std::collections::BTreeSet;

use sled::IVec;

use super::SledStore;
use super::compaction::decode_summary;
use super::keys::{
    TREE_BLOB_REFS, TREE_CHECKPOINTS, TREE_EVENT_SUMMARIES, TREE_EVENTS, TREE_JOBS, TREE_KEYS,
    TREE_PRUNED, TREE_QUEUE, TREE_STATUS_INDEX, TREE_WEBHOOK_DUE, TREE_WEBHOOKS, blob_ref_key,
    decode_job, due_key, index_key, job_id_in, queue_key, queue_value, seq_in,
};
use super::prune::decode_pruned;
use crate::model::consistency::{EventSeqs, Mismatch};
use crate::model::job::{Status, Webhook};
use crate::model::{consistency, notices};
use crate::store::{StoreError, StoreResult, codec};

impl SledStore {
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
                return Err(StoreError::corrupt(
                    TREE_STATUS_INDEX,
                    &index_key,
                    format!("job {} is {} but not indexed as such", job.id, job.status),
                ));
            }
            let key_target = self.keys.get(job.key.as_bytes())?;
            if key_target.as_deref() != Some(&key[..]) {
                return Err(StoreError::corrupt(
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
                        StoreError::corrupt(
                            TREE_EVENTS,
                            &event_key,
                            format!("expected event seq {expected}"),
                        )
                    })?;
            }
            seqs.end(job.events_next).map_err(|held| {
                StoreError::corrupt(
                    TREE_JOBS,
                    &key,
                    format!("{held} events but events_next is {}", job.events_next),
                )
            })?;
        }
        if let Some(index_key) = index_keys.first() {
            return Err(StoreError::corrupt(
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
                return Err(StoreError::corrupt(
                    TREE_QUEUE,
                    &key,
                    "queue entry for no pending job, or with another host or time".to_string(),
                ));
            }
        }
        if let Some((missing, _)) = expected_queue.first_key_value() {
            return Err(StoreError::corrupt(
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
                return Err(StoreError::corrupt(
                    TREE_KEYS,
                    &key,
                    format!("names job {id}, which has another key"),
                ));
            }
        }
        let mut store_checkpoints = Vec::new();
        self.for_each_store_checkpoint(|key, id, checkpoint| {
            if self.read_job(id)?.is_none() {
                return Err(StoreError::corrupt(
                    TREE_CHECKPOINTS,
                    key,
                    "checkpoint of a job that does not exist".to_string(),
                ));
            }
            store_checkpoints.push((id, checkpoint));
            Ok(())
        })?;
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
                return Err(StoreError::corrupt(
                    TREE_BLOB_REFS,
                    extra,
                    "reference no store checkpoint makes".to_string(),
                ));
            }
            Some(Mismatch::Missing(missing)) => {
                return Err(StoreError::corrupt(
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
                return Err(StoreError::corrupt(
                    TREE_WEBHOOKS,
                    &key,
                    format!("holds the webhook of job {}", webhook.job_id),
                ));
            }
            if !self.jobs.contains_key(&key)? {
                return Err(StoreError::corrupt(
                    TREE_WEBHOOKS,
                    &key,
                    "no such job".to_string(),
                ));
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
            return Err(StoreError::corrupt(
                TREE_WEBHOOK_DUE,
                extra,
                "the due index and the pending notices disagree".to_string(),
            ));
        }
        Ok(())
    }

    /// Every summary decodes, is its key's, belongs to a job, and folded no more events than the
    /// job has. (That no event below a summary's `events_compacted` is left is checked with the
    /// job's events.)
    fn check_event_summaries(&self) -> StoreResult<()> {
        for entry in self.event_summaries.iter() {
            let (key, bytes) = entry?;
            let summary = decode_summary(&key, &bytes)?;
            let Some(job) = self.read_job(summary.job_id)? else {
                return Err(StoreError::corrupt(
                    TREE_EVENT_SUMMARIES,
                    &key,
                    "summary of a job that does not exist".to_string(),
                ));
            };
            if summary.events_compacted > job.events_next {
                return Err(StoreError::corrupt(
                    TREE_EVENT_SUMMARIES,
                    &key,
                    format!(
                        "{} events compacted but job {} has only {}",
                        summary.events_compacted, job.id, job.events_next
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Every tombstone decodes, is its key's, and names no job that exists.
    fn check_pruned(&self) -> StoreResult<()> {
        for entry in self.pruned.iter() {
            let (key, bytes) = entry?;
            let pruned = decode_pruned(&key, &bytes)?;
            if self.read_job(pruned.id)?.is_some() {
                return Err(StoreError::corrupt(
                    TREE_PRUNED,
                    &key,
                    format!("job {} is pruned and exists", pruned.id),
                ));
            }
        }
        Ok(())
    }
}
