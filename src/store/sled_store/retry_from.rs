//! `narra retry --from STEP` in the store: one transaction discards the step's checkpoint and
//! those of the steps after it (with the job's blob references when the store checkpoint goes),
//! re-points earlier checkpoints at the stored copies of their outputs, appends the events that
//! record it and makes the job pending, as `machine::retry_from` decides.

use super::{
    STORE_STEP, SledStore, TREE_CHECKPOINTS, checkpoint_key, codec, encode_in_tx, reject,
    store_abort,
};
use crate::model::job::{Checkpoint, Job, JobId, Timestamp};
use crate::model::machine::{self, Rejected};
use crate::store::StoreResult;

impl SledStore {
    pub(super) async fn retry_job_from(
        &self,
        id: JobId,
        step: &str,
        later_steps: &[String],
        reason: &str,
    ) -> StoreResult<Result<Job, Rejected>> {
        // No iterator is open while the transaction runs (see `claim_oldest_pending`): the keys
        // are read first. Only a finished job passes the machine, and a finished job gets no new
        // checkpoint, so the list cannot go stale; each checkpoint is read again inside.
        let checkpoint_keys = self
            .checkpoints
            .scan_prefix(id.to_bytes())
            .keys()
            .collect::<Result<Vec<_>, _>>()?;
        let order: Vec<&str> = std::iter::once(step)
            .chain(later_steps.iter().map(String::as_str))
            .collect();
        let now = Timestamp::now();
        let outcome = self.transact(|tx| {
            let job = tx.existing_job(id)?;
            let mut discarded: Vec<Checkpoint> = Vec::new();
            let mut kept: Vec<Checkpoint> = Vec::new();
            for key in &checkpoint_keys {
                let Some(bytes) = tx.checkpoints.get(key)? else {
                    continue;
                };
                let checkpoint: Checkpoint =
                    codec::decode(TREE_CHECKPOINTS, key, &bytes).map_err(store_abort)?;
                if order.contains(&checkpoint.step.as_str()) {
                    discarded.push(checkpoint);
                } else {
                    kept.push(checkpoint);
                }
            }
            discarded.sort_by_key(|checkpoint| {
                order
                    .iter()
                    .position(|name| *name == checkpoint.step)
                    .unwrap_or(order.len())
            });
            let decision =
                machine::retry_from(&job, step, &discarded, &kept, reason, now).map_err(reject)?;
            for checkpoint in &discarded {
                if checkpoint.step == STORE_STEP {
                    // The index follows the store checkpoint, in the same transaction.
                    tx.replace_blob_refs(id, Some(checkpoint), None)?;
                }
                tx.checkpoints
                    .remove(checkpoint_key(id, &checkpoint.step))?;
            }
            for checkpoint in &decision.repointed {
                tx.checkpoints.insert(
                    checkpoint_key(id, &checkpoint.step),
                    encode_in_tx(checkpoint)?,
                )?;
            }
            tx.write_transition(Some(&job), decision.transition, now)
        })?;
        if outcome.is_ok() {
            self.flush().await?;
            tracing::info!(job_id = %id, step, "retry from a step: later checkpoints discarded");
        }
        Ok(outcome)
    }
}
