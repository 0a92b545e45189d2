//! `WorkerStore` on PostgreSQL: the worker's writes under its lease (the phase, checkpoints, step
//! events, progress), each in a transaction that locks the job's row and checks the token.

use async_trait::async_trait;

use super::PgStore;
use super::rows::{decode_job, id_bytes};
use crate::model::job::{
    Checkpoint, EventKind, Job, JobProgress, LeaseToken, MediaMetadata, Phase, Timestamp,
};
use crate::model::machine::{Rejected, WorkerOp};
use crate::model::records::STORE_STEP;
use crate::model::{machine, records};
use crate::store::{StepEvent, StoreResult, WorkerStore, codec};

impl PgStore {
    /// A worker's write under a lease that changes no status: locks the job, checks the token,
    /// and appends `events`.
    pub(super) async fn leased_write(
        &self,
        token: &LeaseToken,
        events: Vec<EventKind>,
    ) -> StoreResult<Result<(), Rejected>> {
        let now = Timestamp::now();
        transaction!(self, tx => {
            let mut job = tx.job_for_update(token.job_id).await?;
            machine::check_lease(&job, token).map_err(TxAbort::Rejected)?;
            tx.append_events(&mut job, events.clone(), now).await?;
            tx.put_job(Some(job.status), &job).await
        })
    }
}

#[async_trait]
impl WorkerStore for PgStore {
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
        transaction!(self, tx => {
            let job = tx.job_for_update(token.job_id).await?;
            let transition = machine::apply_worker(&job, &op, now).map_err(TxAbort::Rejected)?;
            tx.write_transition(Some(&job), transition, now).await
        })
    }

    async fn record_checkpoint(
        &self,
        token: &LeaseToken,
        checkpoint: &Checkpoint,
        metadata: Option<&MediaMetadata>,
    ) -> StoreResult<Result<(), Rejected>> {
        let now = Timestamp::now();
        let id = token.job_id;
        let outcome = transaction!(self, tx => {
            let job = tx.job_for_update(id).await?;
            let write =
                records::record_checkpoint(&job, token, checkpoint).map_err(TxAbort::Rejected)?;
            if write.blob_refs {
                let before = tx.checkpoint(id, STORE_STEP).await?;
                tx.replace_blob_refs(id, before.as_ref(), Some(checkpoint)).await?;
            }
            tx.put_checkpoint(id, checkpoint).await?;
            if let Some(metadata) = metadata {
                tx.put_metadata(id, metadata).await?;
            }
            let mut job = write.job;
            tx.append_events(&mut job, write.events, now).await?;
            tx.put_job(Some(job.status), &job).await
        })?;
        if outcome.is_ok() {
            tracing::debug!(job_id = %id, step = %checkpoint.step, "checkpoint recorded");
        }
        Ok(outcome)
    }

    async fn record_step_event(
        &self,
        token: &LeaseToken,
        step: &str,
        event: StepEvent,
    ) -> StoreResult<Result<(), Rejected>> {
        self.leased_write(token, vec![event.into_event(step)]).await
    }

    async fn set_progress(
        &self,
        token: &LeaseToken,
        progress: &JobProgress,
    ) -> StoreResult<Result<(), Rejected>> {
        let record = codec::encode(progress)?;
        transaction!(self, tx => {
            // A share lock is enough: progress is informational, and the token is what matters.
            let Some(row) = tx
                .sql
                .query_opt(
                    "SELECT record FROM jobs WHERE id = $1 FOR SHARE",
                    &[&id_bytes(token.job_id)],
                )
                .await?
            else {
                return Err(TxAbort::Rejected(Rejected::NotFound(token.job_id)));
            };
            let job = decode_job(token.job_id, row.get(0))?;
            machine::check_lease(&job, token).map_err(TxAbort::Rejected)?;
            tx.sql
                .execute(
                    "INSERT INTO progress (job_id, record) VALUES ($1, $2)
                     ON CONFLICT (job_id) DO UPDATE SET record = EXCLUDED.record",
                    &[&id_bytes(token.job_id), &record],
                )
                .await?;
            Ok(())
        })
    }
}
