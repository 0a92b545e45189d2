//! Group commit of checkpoints: when many jobs finish steps at once, their `record_checkpoint`
//! calls share one sled transaction and one flush (issue 9: "many jobs, one flush").
//!
//! Each call queues its checkpoint, then waits its turn at the committer lock. Whoever holds the
//! lock takes every queued checkpoint (its own and those that arrived while the previous batch was
//! committed), applies them in one transaction, flushes once, and answers each caller before it
//! lets the lock go; a caller whose checkpoint an earlier holder already committed finds its
//! answer waiting and returns. One job alone pays what it paid before: a batch of one.
//!
//! A caller that stops waiting (its future dropped) leaves its checkpoint queued: a later batch
//! may still commit it, checked against the job's lease as any other.
//!
//! A checkpoint refused in a batch (its lease lost, its job gone) writes nothing and does not
//! abort the others: each is checked before any of its writes, inside the transaction. Only a
//! store failure fails the whole batch, and every caller in it gets it.

use tokio::sync::oneshot;

use super::{SledStore, StoreError, Tx, TxResult, checkpoint_key, encode_in_tx};
use crate::engine::job::{Checkpoint, EventKind, LeaseToken, MediaMetadata, Timestamp};
use crate::engine::machine::{self, Rejected};
use crate::store::StoreResult;

/// The most checkpoints one transaction applies; more wait for the next batch.
const BATCH_MAX: usize = 256;

type Answer = StoreResult<Result<(), Rejected>>;

pub(super) struct Pending {
    token: LeaseToken,
    checkpoint: Checkpoint,
    metadata: Option<MediaMetadata>,
    reply: oneshot::Sender<Answer>,
}

/// The queue and the committer lock.
#[derive(Default)]
pub(super) struct CheckpointQueue {
    pending: std::sync::Mutex<Vec<Pending>>,
    committer: tokio::sync::Mutex<()>,
}

impl SledStore {
    pub(super) async fn record_checkpoint_grouped(
        &self,
        token: &LeaseToken,
        checkpoint: &Checkpoint,
        metadata: Option<&MediaMetadata>,
    ) -> Answer {
        let (reply, mut answer) = oneshot::channel();
        self.checkpoint_queue
            .pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(Pending {
                token: token.clone(),
                checkpoint: checkpoint.clone(),
                metadata: metadata.cloned(),
                reply,
            });
        loop {
            let committer = self.checkpoint_queue.committer.lock().await;
            // An earlier holder may have committed this checkpoint in its batch.
            if let Some(answered) = answered(&mut answer) {
                return answered;
            }
            let batch: Vec<Pending> = {
                let mut pending = self
                    .checkpoint_queue
                    .pending
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                let take = pending.len().min(BATCH_MAX);
                pending.drain(..take).collect()
            };
            self.commit_batch(batch).await;
            drop(committer);
            if let Some(answered) = answered(&mut answer) {
                return answered;
            }
            // Ours was past the batch limit: queue again for the next batch.
        }
    }

    /// Applies a batch in one transaction, flushes once, answers every caller.
    async fn commit_batch(&self, batch: Vec<Pending>) {
        if batch.is_empty() {
            return;
        }
        let now = Timestamp::now();
        let outcome = self.transact(|tx| {
            batch
                .iter()
                .map(|pending| {
                    apply(
                        tx,
                        &pending.token,
                        &pending.checkpoint,
                        pending.metadata.as_ref(),
                        now,
                    )
                })
                .collect::<TxResult<Vec<Result<(), Rejected>>>>()
        });
        let results: Result<Vec<Result<(), Rejected>>, String> = match outcome {
            Ok(Ok(results)) => Ok(results),
            Ok(Err(rejected)) => Err(format!("a checkpoint batch was refused whole: {rejected}")),
            Err(error) => Err(error.to_string()),
        };
        let results = match results {
            Ok(results) if results.iter().any(Result::is_ok) => match self.flush().await {
                Ok(()) => Ok(results),
                Err(error) => Err(error.to_string()),
            },
            other => other,
        };
        match results {
            Ok(results) => {
                for (pending, result) in batch.into_iter().zip(results) {
                    if result.is_ok() {
                        tracing::debug!(job_id = %pending.token.job_id, step = %pending.checkpoint.step, "checkpoint recorded");
                    }
                    let _ = pending.reply.send(Ok(result));
                }
            }
            Err(message) => {
                for pending in batch {
                    let error = StoreError::Io(std::io::Error::other(message.clone()));
                    let _ = pending.reply.send(Err(error));
                }
            }
        }
    }
}

/// The answer, once the batch that held the checkpoint was committed; an error when that batch's
/// committer was dropped mid-commit (its caller stopped waiting), so whether it was written is not
/// known: the caller treats it as any store failure.
fn answered(answer: &mut oneshot::Receiver<Answer>) -> Option<Answer> {
    match answer.try_recv() {
        Ok(answered) => Some(answered),
        Err(oneshot::error::TryRecvError::Empty) => None,
        Err(oneshot::error::TryRecvError::Closed) => {
            Some(Err(StoreError::Io(std::io::Error::other(
                "the commit of this checkpoint's batch was interrupted; whether it was recorded \
                 is not known",
            ))))
        }
    }
}

/// One checkpoint inside the batch's transaction: checked first, then written; a refusal is an
/// answer, not an abort.
fn apply(
    tx: &Tx<'_>,
    token: &LeaseToken,
    checkpoint: &Checkpoint,
    metadata: Option<&MediaMetadata>,
    now: Timestamp,
) -> TxResult<Result<(), Rejected>> {
    let id = token.job_id;
    let Some(mut job) = tx.job(id)? else {
        return Ok(Err(Rejected::NotFound(id)));
    };
    if let Err(rejected) = machine::check_lease(&job, token) {
        return Ok(Err(rejected));
    }
    if checkpoint.step == super::STORE_STEP {
        let before = tx.store_checkpoint(id)?;
        tx.replace_blob_refs(id, before.as_ref(), Some(checkpoint))?;
    }
    tx.checkpoints.insert(
        checkpoint_key(id, &checkpoint.step),
        encode_in_tx(checkpoint)?,
    )?;
    if let Some(metadata) = metadata {
        tx.metadata
            .insert(&id.to_bytes()[..], encode_in_tx(metadata)?)?;
    }
    let completed = EventKind::StepCompleted {
        step: checkpoint.step.clone(),
        outputs: u32::try_from(checkpoint.outputs.len()).unwrap_or(u32::MAX),
    };
    let recorded = EventKind::CheckpointRecorded {
        step: checkpoint.step.clone(),
        definition_hash: checkpoint.definition_hash,
        input_hash: checkpoint.input_hash,
        outputs: checkpoint
            .outputs
            .iter()
            .map(|output| (output.name.clone(), output.blake3))
            .collect(),
    };
    tx.append_events(&mut job, vec![completed, recorded], now)?;
    tx.put_job(Some(job.status), &job)?;
    Ok(Ok(()))
}
