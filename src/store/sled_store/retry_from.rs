//! `narra retry --from STEP` in the store: one transaction discards the step's checkpoint and
//! those of the steps after it (with the job's blob references when the store checkpoint goes),
//! re-points earlier checkpoints at the stored copies of their outputs, appends the events that
//! record it and makes the job pending, as `machine::retry_from` decides.

use super::{
    SledStore, TREE_CHECKPOINTS, checkpoint_key, codec, encode_in_tx, reject, store_abort,
};
use crate::model::job::{Checkpoint, Job, JobId, Timestamp};
use crate::model::machine::{self, Rejected};
use crate::model::records::STORE_STEP;
use crate::store::StoreResult;

impl SledStore {
    pub(super) async fn retry_job_from(
        &self,
        id: JobId,
        step: &str,
        later_steps: &[String],
        reason: &str,
    ) -> StoreResult<Result<Job, Rejected>> {
        // No iterator is open while the transaction runs (see `ClaimScan for SledStore`): the keys
        // are read first. Only a finished job passes the machine, and a finished job gets no new
        // checkpoint, so the list cannot go stale; each checkpoint is read again inside.
        let checkpoint_keys = self
            .checkpoints
            .scan_prefix(id.to_bytes())
            .keys()
            .collect::<Result<Vec<_>, _>>()?;
        let now = Timestamp::now();
        let outcome = self.transact(|tx| {
            let job = tx.existing_job(id)?;
            let mut checkpoints: Vec<Checkpoint> = Vec::new();
            for key in &checkpoint_keys {
                let Some(bytes) = tx.checkpoints.get(key)? else {
                    continue;
                };
                checkpoints
                    .push(codec::decode(TREE_CHECKPOINTS, key, &bytes).map_err(store_abort)?);
            }
            let (discarded, kept) = machine::split_for_retry_from(checkpoints, step, later_steps);
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
