//! Transactions over the job trees and the writes every operation shares: reading a job inside
//! one, writing a transition (the job, its status-index and queue entries, its events, and the
//! webhook notice of a terminal one), the blob index and the webhook records; committing, and
//! the flush (group commit) that makes a commit durable before a call returns. Nothing here
//! decides what to write: `model::` does, and the operations call these.

use std::sync::atomic::Ordering;

use sled::transaction::{
    ConflictableTransactionError, ConflictableTransactionResult, TransactionError,
    TransactionalTree,
};
use sled::{IVec, Transactional};

use super::SledStore;
use super::keys::{
    TREE_CHECKPOINTS, TREE_JOBS, TREE_WEBHOOKS, blob_ref_key, checkpoint_key, decode_job, due_key,
    index_key, plain, queue_key, queue_value, seq_key,
};
use crate::model::claims::Claimant;
use crate::model::job::{Checkpoint, EventKind, Job, JobId, Status, Timestamp, Webhook};
use crate::model::machine::{Rejected, Transition};
use crate::model::records::{STORE_STEP, referenced_blobs};
use crate::model::{attribution, machine, notices, records};
use crate::store::{JobReader, StoreError, StoreResult, codec};

/// Why a transaction body aborted.
pub(super) enum TxAbort {
    Rejected(Rejected),
    Store(StoreError),
}

pub(super) type TxResult<T> = ConflictableTransactionResult<T, TxAbort>;

pub(super) fn reject(rejected: Rejected) -> ConflictableTransactionError<TxAbort> {
    ConflictableTransactionError::Abort(TxAbort::Rejected(rejected))
}

pub(super) fn store_abort(error: StoreError) -> ConflictableTransactionError<TxAbort> {
    ConflictableTransactionError::Abort(TxAbort::Store(error))
}

/// What `tree` holds under `key` inside a transaction, decoded by `decode`.
pub(super) fn read_in_tx<T>(
    tree: &TransactionalTree,
    key: &[u8],
    decode: impl Fn(&[u8], &[u8]) -> StoreResult<T>,
) -> TxResult<Option<T>> {
    match tree.get(key)? {
        None => Ok(None),
        Some(bytes) => decode(key, &bytes).map(Some).map_err(store_abort),
    }
}

pub(super) fn encode_in_tx<T: serde::Serialize>(value: &T) -> TxResult<Vec<u8>> {
    codec::encode(value).map_err(store_abort)
}

/// The trees of one transaction, with the writes every operation shares.
pub(super) struct Tx<'a> {
    pub(super) jobs: &'a TransactionalTree,
    pub(super) keys: &'a TransactionalTree,
    pub(super) status_index: &'a TransactionalTree,
    pub(super) checkpoints: &'a TransactionalTree,
    pub(super) events: &'a TransactionalTree,
    pub(super) metadata: &'a TransactionalTree,
    pub(super) blob_refs: &'a TransactionalTree,
    pub(super) queue: &'a TransactionalTree,
    pub(super) event_summaries: &'a TransactionalTree,
    pub(super) webhooks: &'a TransactionalTree,
    pub(super) webhook_due: &'a TransactionalTree,
    /// The store's bound on a job's events, for `append_events`.
    pub(super) events_max: u64,
}

impl Tx<'_> {
    pub(super) fn job(&self, id: JobId) -> TxResult<Option<Job>> {
        read_in_tx(self.jobs, &id.to_bytes(), decode_job)
    }

    pub(super) fn existing_job(&self, id: JobId) -> TxResult<Job> {
        self.job(id)?.ok_or_else(|| reject(Rejected::NotFound(id)))
    }

    /// The job's store checkpoint as stored, if any.
    pub(super) fn store_checkpoint(&self, id: JobId) -> TxResult<Option<Checkpoint>> {
        read_in_tx(
            self.checkpoints,
            &checkpoint_key(id, STORE_STEP),
            plain(TREE_CHECKPOINTS),
        )
    }

    /// Moves the job's blob references from what `before` names to what `after` names.
    pub(super) fn replace_blob_refs(
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
    pub(super) fn write_transition(
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
    pub(super) fn append_events(
        &self,
        job: &mut Job,
        kinds: Vec<EventKind>,
        now: Timestamp,
    ) -> TxResult<()> {
        let events = records::number_events(job, kinds, now).map_err(|exhausted| {
            store_abort(StoreError::corrupt(
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
    pub(super) fn put_job(&self, status_before: Option<Status>, job: &Job) -> TxResult<()> {
        let key = job.id.to_bytes();
        if let Err(reason) = job.invariants_hold() {
            return Err(store_abort(StoreError::corrupt(
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
    pub(super) fn claim(&self, id: JobId, claimant: &Claimant, now: Timestamp) -> TxResult<Job> {
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

    pub(super) fn webhook(&self, id: JobId) -> TxResult<Option<Webhook>> {
        read_in_tx(self.webhooks, &id.to_bytes(), plain(TREE_WEBHOOKS))
    }

    /// Writes a webhook record and moves its `webhook_due` entry; `before` is the record read.
    pub(super) fn put_webhook(&self, before: Option<&Webhook>, webhook: &Webhook) -> TxResult<()> {
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

    /// Removes every record of `job` in the job trees but its blob references (the caller decides
    /// about those): the job, its key, its status-index and queue entries, its checkpoints (under
    /// `checkpoint_keys`, read before the transaction), its history, metadata and webhook.
    pub(super) fn remove_job(&self, job: &Job, checkpoint_keys: &[IVec]) -> TxResult<()> {
        let id = job.id;
        for key in checkpoint_keys {
            self.checkpoints.remove(key)?;
        }
        self.remove_history(job)?;
        self.remove_webhook(id)?;
        self.metadata.remove(&id.to_bytes()[..])?;
        self.status_index.remove(&index_key(job.status, id)[..])?;
        self.queue.remove(&queue_key(job.priority, id)[..])?;
        self.keys.remove(job.key.as_bytes())?;
        self.jobs.remove(&id.to_bytes()[..])?;
        Ok(())
    }

    /// Removes a job's webhook record with its job (`delete_job`, `prune`).
    pub(super) fn remove_webhook(&self, id: JobId) -> TxResult<()> {
        if let Some(webhook) = self.webhook(id)? {
            if let Some(due_at) = notices::due_at(&webhook) {
                self.webhook_due.remove(&due_key(due_at, id)[..])?;
            }
            self.webhooks.remove(&id.to_bytes()[..])?;
        }
        Ok(())
    }
}

impl SledStore {
    /// Runs `body` as one transaction over every tree but `logs`, `progress`, `incidents`,
    /// `backfills`, `backfill_jobs` and `pruned`. A `Rejected` abort comes back as the inner
    /// error, with nothing written.
    pub(super) fn transact<T>(
        &self,
        body: impl Fn(&Tx<'_>) -> TxResult<T>,
    ) -> StoreResult<Result<T, Rejected>> {
        self.transact_over(None, |tx, _| body(tx))
    }

    /// [`SledStore::transact`] with one more tree in the same transaction (`backfill_jobs`: a
    /// batch of submissions and their backfill entries commit together; `pruned`: a job and its
    /// tombstone).
    pub(super) fn transact_with<T>(
        &self,
        extra: &sled::Tree,
        body: impl Fn(&Tx<'_>, &TransactionalTree) -> TxResult<T>,
    ) -> StoreResult<Result<T, Rejected>> {
        self.transact_over(Some(extra), |tx, view| match view {
            Some(view) => body(tx, view),
            None => unreachable!("the extra tree is part of the transaction"),
        })
    }

    /// [`SledStore::transact`], and a flush once it committed: what an operation acknowledges.
    pub(super) async fn transact_durably<T>(
        &self,
        body: impl Fn(&Tx<'_>) -> TxResult<T>,
    ) -> StoreResult<Result<T, Rejected>> {
        let outcome = self.transact(body)?;
        if outcome.is_ok() {
            self.flush().await?;
        }
        Ok(outcome)
    }

    /// One transaction over the job trees, in the order `Tx` names them, and `extra`.
    fn transact_over<T>(
        &self,
        extra: Option<&sled::Tree>,
        body: impl Fn(&Tx<'_>, Option<&TransactionalTree>) -> TxResult<T>,
    ) -> StoreResult<Result<T, Rejected>> {
        let mut trees = vec![
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
        ];
        trees.extend(extra);
        let events_max = self.events_max();
        // `views` holds the trees in the order of `trees`, then `extra`.
        let result = trees
            .as_slice()
            .transaction(|views: &Vec<TransactionalTree>| {
                let tx = Tx {
                    jobs: &views[0],
                    keys: &views[1],
                    status_index: &views[2],
                    checkpoints: &views[3],
                    events: &views[4],
                    metadata: &views[5],
                    blob_refs: &views[6],
                    queue: &views[7],
                    event_summaries: &views[8],
                    webhooks: &views[9],
                    webhook_due: &views[10],
                    events_max,
                };
                body(&tx, views.get(11))
            });
        self.settle(result)
    }

    /// A committed transaction's value (counted), or the `Rejected` it aborted with, or the store
    /// failure.
    pub(super) fn settle<T>(
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
    pub(super) async fn flush(&self) -> StoreResult<()> {
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
}
