//! The sled store's key layout: the trees' names, how each key is built from a job id, a sequence
//! number, a status, a priority or a blob key, and read back, and the checks a record gets right
//! after it is read (its key, its invariants). Every key and every decoded record goes through
//! here; nothing here opens a tree or a transaction.

use sled::IVec;

use crate::model::claims::Candidate;
use crate::model::job::{BackfillId, Job, JobId, Status, Timestamp};
use crate::store::codec::Keyed;
use crate::store::{StoreError, StoreResult, codec};

pub(super) const TREE_JOBS: &str = "jobs";

pub(super) const TREE_KEYS: &str = "keys";

pub(super) const TREE_STATUS_INDEX: &str = "status_index";

pub(super) const TREE_CHECKPOINTS: &str = "checkpoints";

pub(super) const TREE_EVENTS: &str = "events";

pub(super) const TREE_METADATA: &str = "metadata";

pub(super) const TREE_LOGS: &str = "logs";

pub(super) const TREE_PROGRESS: &str = "progress";

pub(super) const TREE_BLOB_REFS: &str = "blob_refs";

pub(super) const TREE_INCIDENTS: &str = "incidents";

pub(super) const TREE_BACKFILLS: &str = "backfills";

pub(super) const TREE_BACKFILL_JOBS: &str = "backfill_jobs";

pub(super) const TREE_QUEUE: &str = "queue";

pub(super) const TREE_HOSTS: &str = "hosts";

pub(super) const TREE_META: &str = "meta";

pub(super) const TREE_EVENT_SUMMARIES: &str = "event_summaries";

pub(super) const TREE_PRUNED: &str = "pruned";

/// Job id -> `Webhook`: a job's callback URL, pending notice and deliveries.
pub(super) const TREE_WEBHOOKS: &str = "webhooks";

/// `next_attempt_at` (order-preserving bytes) ++ job id -> nothing: the pending notices in the
/// order they are due; exactly one entry per webhook with a pending notice.
pub(super) const TREE_WEBHOOK_DUE: &str = "webhook_due";

pub(super) const JOB_ID_BYTES: usize = 16;

pub(super) const SEQ_KEY_BYTES: usize = JOB_ID_BYTES + 8;

/// Decodes every record of a scan and checks each against its key right after reading it back:
/// `mismatch` names what is wrong, and the first wrong record is reported as corrupt.
pub(super) fn decode_checked<T: serde::de::DeserializeOwned>(
    entries: impl Iterator<Item = sled::Result<(IVec, IVec)>>,
    tree: &'static str,
    mismatch: impl Fn(&[u8], &T) -> StoreResult<Option<String>>,
) -> StoreResult<Vec<T>> {
    let mut records = Vec::new();
    for entry in entries {
        let (key, bytes) = entry?;
        let record: T = codec::decode(tree, &key, &bytes)?;
        if let Some(reason) = mismatch(&key, &record)? {
            return Err(StoreError::corrupt(tree, &key, reason));
        }
        records.push(record);
    }
    Ok(records)
}

/// What `tree` holds under the job `id`, decoded by `decode` (which checks it against its key).
pub(super) fn read_by_id<T>(
    tree: &sled::Tree,
    id: JobId,
    decode: impl Fn(&[u8], &[u8]) -> StoreResult<T>,
) -> StoreResult<Option<T>> {
    let key = id.to_bytes();
    tree.get(key)?.map(|bytes| decode(&key, &bytes)).transpose()
}

/// Decodes a record of `tree` with no check but its codec's.
pub(super) fn plain<T: serde::de::DeserializeOwned>(
    tree: &'static str,
) -> impl Fn(&[u8], &[u8]) -> StoreResult<T> {
    move |key, bytes| codec::decode(tree, key, bytes)
}

/// Decodes every record of a scan of `tree`, each checked against its key
/// (`codec::decode_keyed`): the first that does not belong under its key is reported as corrupt.
pub(super) fn decode_all<T: Keyed>(
    entries: impl Iterator<Item = sled::Result<(IVec, IVec)>>,
    tree: &'static str,
) -> StoreResult<Vec<T>> {
    let mut records = Vec::new();
    for entry in entries {
        let (key, bytes) = entry?;
        records.push(codec::decode_keyed(tree, &key, &bytes)?);
    }
    Ok(records)
}

/// Decodes a job and checks it right after reading it back: its key and its invariants.
pub(super) fn decode_job(key: &[u8], bytes: &[u8]) -> StoreResult<Job> {
    let job: Job = codec::decode_job(TREE_JOBS, key, bytes)?;
    if job.id.to_bytes() != key {
        return Err(StoreError::corrupt(
            TREE_JOBS,
            key,
            format!("record holds job {}", job.id),
        ));
    }
    job.invariants_hold()
        .map_err(|reason| StoreError::corrupt(TREE_JOBS, key, reason))?;
    Ok(job)
}

/// Reads a job id out of `bytes`, part of a key of `tree`.
pub(super) fn job_id_in(tree: &'static str, key: &[u8], bytes: &[u8]) -> StoreResult<JobId> {
    let bytes = <[u8; JOB_ID_BYTES]>::try_from(bytes).map_err(|_| {
        StoreError::corrupt(tree, key, format!("expected a {JOB_ID_BYTES}-byte job id"))
    })?;
    Ok(JobId::from_bytes(bytes))
}

pub(super) fn backfill_job_key(backfill: BackfillId, id: JobId) -> [u8; 2 * JOB_ID_BYTES] {
    let mut key = [0; 2 * JOB_ID_BYTES];
    key[..JOB_ID_BYTES].copy_from_slice(&backfill.to_bytes());
    key[JOB_ID_BYTES..].copy_from_slice(&id.to_bytes());
    key
}

pub(super) fn index_key(status: Status, id: JobId) -> [u8; 1 + JOB_ID_BYTES] {
    let mut key = [0; 1 + JOB_ID_BYTES];
    key[0] = status.index_byte();
    key[1..].copy_from_slice(&id.to_bytes());
    key
}

/// A pending job's place in the claim queue: priority descending, then id (age) ascending.
pub(super) fn queue_key(priority: i32, id: JobId) -> [u8; 4 + JOB_ID_BYTES] {
    // Flipping the sign bit orders i32s as u32s; inverting all bits puts the highest first.
    let order = !((priority as u32) ^ 0x8000_0000);
    let mut key = [0; 4 + JOB_ID_BYTES];
    key[..4].copy_from_slice(&order.to_be_bytes());
    key[4..].copy_from_slice(&id.to_bytes());
    key
}

/// What a claim needs to know of a pending job before reading it: when it may start
/// (`Job::not_before`, 8 big-endian bytes, `i64::MIN` for now) and its source host (the rest).
pub(super) fn queue_value(job: &Job) -> Vec<u8> {
    let host = crate::model::sources::source_host(&job.source);
    let mut value = Vec::with_capacity(8 + host.len());
    value.extend_from_slice(&job.not_before.map_or(i64::MIN, |at| at.0).to_be_bytes());
    value.extend_from_slice(host.as_bytes());
    value
}

/// Reads a queue entry: the job, when it may start, and its host.
pub(super) fn split_queue_entry(key: &[u8], value: &[u8]) -> StoreResult<Candidate> {
    let id = job_id_in(TREE_QUEUE, key, key.get(4..).unwrap_or_default())?;
    let not_before = value
        .get(..8)
        .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
        .map(i64::from_be_bytes)
        .ok_or_else(|| {
            StoreError::corrupt(TREE_QUEUE, key, "value shorter than 8 bytes".to_string())
        })?;
    let host = std::str::from_utf8(&value[8..])
        .map_err(|_| StoreError::corrupt(TREE_QUEUE, key, "host is not UTF-8".to_string()))?;
    Ok(Candidate {
        id,
        not_before: Timestamp(not_before),
        host: host.to_string(),
    })
}

pub(super) fn seq_key(id: JobId, seq: u64) -> [u8; SEQ_KEY_BYTES] {
    let mut key = [0; SEQ_KEY_BYTES];
    key[..JOB_ID_BYTES].copy_from_slice(&id.to_bytes());
    key[JOB_ID_BYTES..].copy_from_slice(&seq.to_be_bytes());
    key
}

pub(super) fn seq_in(tree: &'static str, key: &[u8]) -> StoreResult<u64> {
    let bytes = key
        .get(JOB_ID_BYTES..)
        .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
        .ok_or_else(|| {
            StoreError::corrupt(
                tree,
                key,
                format!("expected a {SEQ_KEY_BYTES}-byte job id and sequence number"),
            )
        })?;
    Ok(u64::from_be_bytes(bytes))
}

/// `blob key ++ 0 ++ job id`: object keys hold no NUL, so a scan of `key ++ 0` finds exactly the
/// jobs of one blob.
pub(super) fn blob_ref_key(blob: &str, id: JobId) -> Vec<u8> {
    let mut key = Vec::with_capacity(blob.len() + 1 + JOB_ID_BYTES);
    key.extend_from_slice(blob.as_bytes());
    key.push(0);
    key.extend_from_slice(&id.to_bytes());
    key
}

pub(super) fn blob_ref_prefix(blob: &str) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(blob.len() + 1);
    prefix.extend_from_slice(blob.as_bytes());
    prefix.push(0);
    prefix
}

/// Splits a `blob_refs` key back into the blob key and the job.
pub(super) fn split_blob_ref(key: &[u8]) -> StoreResult<(String, JobId)> {
    let split = key
        .len()
        .checked_sub(JOB_ID_BYTES + 1)
        .filter(|&split| key[split] == 0)
        .ok_or_else(|| {
            StoreError::corrupt(
                TREE_BLOB_REFS,
                key,
                "expected blob key ++ 0 ++ job id".into(),
            )
        })?;
    let blob = std::str::from_utf8(&key[..split])
        .map_err(|_| StoreError::corrupt(TREE_BLOB_REFS, key, "blob key is not UTF-8".into()))?;
    let id = job_id_in(TREE_BLOB_REFS, key, &key[split + 1..])?;
    Ok((blob.to_string(), id))
}

pub(super) fn checkpoint_key(id: JobId, step: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(JOB_ID_BYTES + step.len());
    key.extend_from_slice(&id.to_bytes());
    key.extend_from_slice(step.as_bytes());
    key
}

/// A `webhook_due` key: the time as big-endian bytes with the sign bit flipped (so negative times
/// sort first, as they would as numbers), then the job id.
pub(super) fn due_key(at: Timestamp, id: JobId) -> [u8; 8 + JOB_ID_BYTES] {
    let mut key = [0u8; 8 + JOB_ID_BYTES];
    key[..8].copy_from_slice(&(at.0.cast_unsigned() ^ (1 << 63)).to_be_bytes());
    key[8..].copy_from_slice(&id.to_bytes());
    key
}

pub(super) fn split_due_key(key: &[u8]) -> StoreResult<(Timestamp, JobId)> {
    let (Some(at), Some(id)) = (key.get(..8), key.get(8..)) else {
        return Err(StoreError::corrupt(
            TREE_WEBHOOK_DUE,
            key,
            "a key of 24 bytes".to_string(),
        ));
    };
    let at = u64::from_be_bytes(at.try_into().expect("8 bytes")) ^ (1 << 63);
    let id: [u8; JOB_ID_BYTES] = id
        .try_into()
        .map_err(|_| StoreError::corrupt(TREE_WEBHOOK_DUE, key, "a key of 24 bytes".to_string()))?;
    Ok((Timestamp(at.cast_signed()), JobId::from_bytes(id)))
}
