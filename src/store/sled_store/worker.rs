//! `WorkerStore` on sled: the worker's writes under its lease (the phase, step events, progress;
//! checkpoints go through `group_commit.rs`).

use async_trait::async_trait;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::SledStore;
use super::keys::TREE_JOBS;
use super::tx::reject;
use crate::model::job::{
    Checkpoint, Job, JobProgress, LeaseToken, MediaMetadata, Phase, Timestamp,
};
use crate::model::machine;
use crate::model::machine::{Rejected, WorkerOp};
use crate::store::{StepEvent, StoreResult, WorkerStore, codec};

#[async_trait]
impl WorkerStore for SledStore {
    async fn set_phase(
        &self,
        token: &LeaseToken,
        phase: Phase,
    ) -> StoreResult<Result<Job, Rejected>> {
        let now = Timestamp::now();
        let op = WorkerOp::SetPhase {
            token: token.fencing_token,
            phase,
        };
        self.transact_durably(|tx| {
            let job = tx.existing_job(token.job_id)?;
            let transition = machine::apply_worker(&job, &op, now).map_err(reject)?;
            tx.write_transition(Some(&job), transition, now)
        })
        .await
    }

    async fn record_checkpoint(
        &self,
        token: &LeaseToken,
        checkpoint: &Checkpoint,
        metadata: Option<&MediaMetadata>,
    ) -> StoreResult<Result<(), Rejected>> {
        self.record_checkpoint_grouped(token, checkpoint, metadata)
            .await
    }

    async fn record_step_event(
        &self,
        token: &LeaseToken,
        step: &str,
        event: StepEvent,
    ) -> StoreResult<Result<(), Rejected>> {
        let now = Timestamp::now();
        let kind = event.into_event(step);
        self.transact_durably(|tx| {
            let mut job = tx.existing_job(token.job_id)?;
            machine::check_lease(&job, token).map_err(reject)?;
            tx.append_events(&mut job, vec![kind.clone()], now)?;
            tx.put_job(Some(job.status), &job)
        })
        .await
    }

    async fn set_progress(
        &self,
        token: &LeaseToken,
        progress: &JobProgress,
    ) -> StoreResult<Result<(), Rejected>> {
        self.write_progress(token, progress)
    }
}

impl SledStore {
    pub(super) fn write_progress(
        &self,
        token: &LeaseToken,
        progress: &JobProgress,
    ) -> StoreResult<Result<(), Rejected>> {
        let key = token.job_id.to_bytes();
        let value = codec::encode(progress)?;
        let result = (&self.jobs, &self.progress).transaction(|(jobs, progress_tree)| {
            let Some(bytes) = jobs.get(key)? else {
                return Ok(Err(Rejected::NotFound(token.job_id)));
            };
            let job: Job = codec::decode_job(TREE_JOBS, &key, &bytes)
                .map_err(ConflictableTransactionError::Abort)?;
            if let Err(rejected) = machine::check_lease(&job, token) {
                return Ok(Err(rejected));
            }
            progress_tree.insert(&key, value.as_slice())?;
            Ok(Ok(()))
        });
        match result {
            Ok(outcome) => Ok(outcome),
            Err(TransactionError::Abort(error)) => Err(error),
            Err(TransactionError::Storage(error)) => Err(error.into()),
        }
    }
}
