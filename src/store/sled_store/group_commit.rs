//! Group commit of checkpoints: when many jobs finish steps at once, their `record_checkpoint`
//! calls share one sled transaction and one flush.
//!
//! Each call queues its checkpoint, then waits its turn at the committer lock. Whoever holds the
//! lock takes every queued checkpoint (its own and those that arrived while the previous batch was
//! committed), applies them in one transaction, flushes once, and answers each caller before it
//! lets the lock go; a caller whose checkpoint an earlier holder already committed finds its
//! answer waiting and returns. One job alone pays what it paid before: a batch of one.
//!
//! A caller that stops waiting (its future dropped) before its checkpoint was taken into a batch
//! gives it up: it is dropped from the queue, never written later. If the committer's caller stops
//! waiting mid-flush, the others in its batch are told their checkpoint was committed but not yet
//! flushed, and flush before they return. A batch that fails on a store error (a corrupt record)
//! is committed again one checkpoint at a time, so only the culprit's caller gets the error.
//!
//! A checkpoint refused in a batch (its lease lost, its job gone) writes nothing and does not
//! abort the others: each is checked before any of its writes, inside the transaction. Only a
//! store failure fails the whole batch, and every caller in it gets it.

use tokio::sync::oneshot;

use super::SledStore;
use super::keys::checkpoint_key;
use super::tx::{Tx, TxResult, encode_in_tx};
use crate::model::job::{Checkpoint, LeaseToken, MediaMetadata, Timestamp};
use crate::model::machine::Rejected;
use crate::model::records;
use crate::store::{StoreError, StoreResult};

/// The most checkpoints one transaction applies; more wait for the next batch.
const BATCH_MAX: usize = 256;

type Answer = StoreResult<Result<(), Rejected>>;

/// What a caller is told.
enum Reply {
    /// Committed and flushed (or refused, or failed).
    Done(Answer),
    /// Committed, but the committer went away (its caller stopped waiting) before the flush:
    /// the caller flushes before it acknowledges.
    Unflushed(Result<(), Rejected>),
}

pub(super) struct Pending {
    token: LeaseToken,
    checkpoint: Checkpoint,
    metadata: Option<MediaMetadata>,
    reply: oneshot::Sender<Reply>,
}

/// The answers of a committed batch until its flush returns: dropped before that (the committer's
/// caller stopped waiting mid-flush), it tells each caller to flush for itself.
struct Unflushed(Vec<(oneshot::Sender<Reply>, Result<(), Rejected>)>);

impl Drop for Unflushed {
    fn drop(&mut self) {
        for (reply, result) in self.0.drain(..) {
            let _ = reply.send(Reply::Unflushed(result));
        }
    }
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
            if let Some(reply) = replied(&mut answer) {
                drop(committer);
                return self.settle_reply(reply).await;
            }
            let batch: Vec<Pending> = {
                let mut pending = self
                    .checkpoint_queue
                    .pending
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                // A caller that stopped waiting gave up on its checkpoint: it is not written
                // later behind its back.
                pending.retain(|entry| !entry.reply.is_closed());
                let take = pending.len().min(BATCH_MAX);
                pending.drain(..take).collect()
            };
            self.commit_batch(batch).await;
            drop(committer);
            if let Some(reply) = replied(&mut answer) {
                return self.settle_reply(reply).await;
            }
            // Ours was past the batch limit: queue again for the next batch.
        }
    }

    /// A reply as the caller's answer: flushing first when the committer could not.
    async fn settle_reply(&self, reply: Reply) -> Answer {
        match reply {
            Reply::Done(answer) => answer,
            Reply::Unflushed(result) => {
                self.flush().await?;
                Ok(result)
            }
        }
    }

    /// Applies a batch in one transaction, flushes once, answers every caller. When the batch's
    /// transaction fails on a store error (a corrupt record, say), each checkpoint is committed
    /// again alone, so the error reaches only the caller whose job caused it, as it is.
    async fn commit_batch(&self, batch: Vec<Pending>) {
        if batch.is_empty() {
            return;
        }
        let now = Timestamp::now();
        match self.transact(|tx| apply_all(tx, &batch, now)) {
            Ok(Ok(results)) => self.flush_and_answer(batch, results).await,
            Ok(Err(rejected)) => {
                // `apply` answers refusals instead of aborting; nothing else rejects.
                for pending in batch {
                    let _ = pending.reply.send(Reply::Done(Ok(Err(rejected.clone()))));
                }
            }
            Err(error) if batch.len() == 1 => {
                if let Some(pending) = batch.into_iter().next() {
                    let _ = pending.reply.send(Reply::Done(Err(error)));
                }
            }
            Err(_) => {
                for pending in batch {
                    let single = std::slice::from_ref(&pending);
                    match self.transact(|tx| apply_all(tx, single, now)) {
                        Ok(Ok(results)) => self.flush_and_answer(vec![pending], results).await,
                        Ok(Err(rejected)) => {
                            let _ = pending.reply.send(Reply::Done(Ok(Err(rejected))));
                        }
                        Err(error) => {
                            let _ = pending.reply.send(Reply::Done(Err(error)));
                        }
                    }
                }
            }
        }
    }

    async fn flush_and_answer(&self, batch: Vec<Pending>, results: Vec<Result<(), Rejected>>) {
        let any_written = results.iter().any(Result::is_ok);
        let mut unflushed = Unflushed(
            batch
                .into_iter()
                .zip(results)
                .map(|(pending, result)| {
                    if result.is_ok() {
                        tracing::debug!(job_id = %pending.token.job_id, step = %pending.checkpoint.step, "checkpoint recorded");
                    }
                    (pending.reply, result)
                })
                .collect(),
        );
        let flushed = if any_written {
            self.flush().await.map_err(|error| error.to_string())
        } else {
            Ok(())
        };
        for (reply, result) in std::mem::take(&mut unflushed.0) {
            let answer = match &flushed {
                Ok(()) => Ok(result),
                Err(message) => Err(StoreError::Io(std::io::Error::other(message.clone()))),
            };
            let _ = reply.send(Reply::Done(answer));
        }
    }
}

fn apply_all(
    tx: &Tx<'_>,
    batch: &[Pending],
    now: Timestamp,
) -> TxResult<Vec<Result<(), Rejected>>> {
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
        .collect()
}

/// The reply, once the batch that held the checkpoint was committed. Every batch answers each of
/// its callers, whatever happens to its committer (`Unflushed`), so a closed channel means the
/// entry was dropped unanswered: a bug, reported as a store failure rather than a hang.
fn replied(answer: &mut oneshot::Receiver<Reply>) -> Option<Reply> {
    match answer.try_recv() {
        Ok(reply) => Some(reply),
        Err(oneshot::error::TryRecvError::Empty) => None,
        Err(oneshot::error::TryRecvError::Closed) => Some(Reply::Done(Err(StoreError::Io(
            std::io::Error::other("a checkpoint's commit ended without an answer"),
        )))),
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
    let Some(job) = tx.job(id)? else {
        return Ok(Err(Rejected::NotFound(id)));
    };
    let write = match records::record_checkpoint(&job, token, checkpoint) {
        Ok(write) => write,
        Err(rejected) => return Ok(Err(rejected)),
    };
    if write.blob_refs {
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
    let mut job = write.job;
    tx.append_events(&mut job, write.events, now)?;
    tx.put_job(Some(job.status), &job)?;
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::job::{Hash, WorkerId};
    use crate::store::JobReader;
    use crate::store::test_support;

    fn checkpoint(step: &str) -> Checkpoint {
        Checkpoint {
            step: step.to_string(),
            definition_hash: Hash::of(b"definition"),
            input_hash: Hash::of(b"input"),
            outputs: Vec::new(),
            recorded_at: Timestamp::now(),
        }
    }

    // Guards fault isolation under group commit: a batch holding a checkpoint of a job
    // whose record is corrupt commits the others, and only that job's caller gets the error, as
    // the `Corrupt` naming where it was found.
    #[tokio::test]
    async fn a_corrupt_job_in_a_batch_fails_only_its_own_checkpoint() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = SledStore::open(&dir.path().join("state"), 8 << 20).expect("open");
        let mut tokens = Vec::new();
        for key in ["good", "bad"] {
            let (_, token) =
                test_support::submit_and_claim(&store, key, &WorkerId("test:1".into())).await;
            tokens.push(token);
        }
        store
            .jobs
            .insert(
                tokens[1].job_id.to_bytes(),
                vec![crate::store::codec::SCHEMA_VERSION, 0xff],
            )
            .expect("corrupt the record");
        let (good_reply, good) = oneshot::channel();
        let (bad_reply, bad) = oneshot::channel();
        store
            .commit_batch(vec![
                Pending {
                    token: tokens[0].clone(),
                    checkpoint: checkpoint("download"),
                    metadata: None,
                    reply: good_reply,
                },
                Pending {
                    token: tokens[1].clone(),
                    checkpoint: checkpoint("download"),
                    metadata: None,
                    reply: bad_reply,
                },
            ])
            .await;
        assert!(matches!(good.await, Ok(Reply::Done(Ok(Ok(()))))));
        assert!(matches!(
            bad.await,
            Ok(Reply::Done(Err(StoreError::Corrupt { .. })))
        ));
        assert!(
            store
                .checkpoint(tokens[0].job_id, "download")
                .await
                .expect("read")
                .is_some(),
            "the healthy job's checkpoint was committed"
        );
    }
}
