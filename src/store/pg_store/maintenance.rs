//! `MaintenanceStore` on PostgreSQL: the incident log, deleting and pruning a job's records
//! (importing is `import.rs`).

use async_trait::async_trait;

use super::PgStore;
use super::import::import_in_tx;
use super::rows::{TABLE_INCIDENTS, id_bytes, seq_column};
use crate::model::job::{Incident, Job, JobId, PrunedJob, Timestamp};
use crate::model::machine::Rejected;
use crate::model::records::STORE_STEP;
use crate::model::{machine, records};
use crate::store::transfer::ImportOutcome;
use crate::store::{MaintenanceStore, NewIncident, StoreError, StoreResult, codec};

#[async_trait]
impl MaintenanceStore for PgStore {
    async fn record_incident(&self, incident: NewIncident) -> StoreResult<Incident> {
        let at = Timestamp::now();
        let outcome = transaction!(self, tx => {
            // Numbering needs one appender at a time, in every process.
            tx.sql
                .batch_execute("LOCK TABLE incidents IN EXCLUSIVE MODE")
                .await?;
            let last: Option<i64> = tx
                .sql
                .query_one("SELECT max(seq) FROM incidents", &[])
                .await?
                .get(0);
            let seq = match last {
                None => 0,
                Some(last) => u64::try_from(last)
                    .ok()
                    .and_then(|last| last.checked_add(1))
                    .ok_or_else(|| {
                        StoreError::corrupt(
                            TABLE_INCIDENTS,
                            &last.to_be_bytes(),
                            "incident sequence exhausted".into(),
                        )
                    })?,
            };
            let incident = Incident {
                seq,
                at,
                actor: incident.actor.clone(),
                action: incident.action.clone(),
                job: incident.job,
                key: incident.key.clone(),
                reason: incident.reason.clone(),
            };
            tx.sql
                .execute(
                    "INSERT INTO incidents (seq, record) VALUES ($1, $2)",
                    &[&seq_column(seq)?, &codec::encode(&incident)?],
                )
                .await?;
            Ok(incident)
        })?;
        let incident = outcome.map_err(|rejected| {
            StoreError::corrupt(
                TABLE_INCIDENTS,
                b"",
                format!("an incident was refused: {rejected}"),
            )
        })?;
        crate::store::log_incident(&incident);
        Ok(incident)
    }

    async fn delete_job(&self, id: JobId) -> StoreResult<Result<Job, Rejected>> {
        // Lines still buffered in this process are written first, so none outlives the job.
        self.logs.drain().await;
        let outcome = transaction!(self, tx => {
            let job = tx.job_for_update(id).await?;
            machine::check_deletable(&job).map_err(TxAbort::Rejected)?;
            tx.sql
                .execute("DELETE FROM blob_refs WHERE job_id = $1", &[&id_bytes(id)])
                .await?;
            tx.remove_job(id).await?;
            Ok(job)
        })?;
        if outcome.is_ok() {
            tracing::info!(job_id = %id, "deleted the job's records");
        }
        Ok(outcome)
    }

    async fn prune_jobs(
        &self,
        ids: &[JobId],
        cutoff: Timestamp,
    ) -> StoreResult<Vec<Result<PrunedJob, Rejected>>> {
        self.logs.drain().await;
        let mut outcomes = Vec::with_capacity(ids.len());
        for &id in ids {
            let pruned_at = Timestamp::now();
            let outcome = transaction!(self, tx => {
                let job = tx.job_for_update(id).await?;
                machine::check_prunable(&job, cutoff).map_err(TxAbort::Rejected)?;
                let store_checkpoint = tx.checkpoint(id, STORE_STEP).await?;
                let tombstone = records::tombstone(&job, store_checkpoint.as_ref(), pruned_at);
                // The blob references stay: they are the tombstone's now.
                tx.remove_job(id).await?;
                tx.put_record(
                    "INSERT INTO pruned (job_id, record) VALUES ($1, $2)",
                    id,
                    &tombstone,
                )
                .await?;
                Ok(tombstone)
            })?;
            outcomes.push(outcome);
        }
        crate::store::log_pruned(&outcomes);
        Ok(outcomes)
    }

    async fn import(
        &self,
        records: &[crate::store::transfer::Record],
    ) -> StoreResult<Vec<crate::store::transfer::ImportOutcome>> {
        let mut outcomes = Vec::with_capacity(records.len());
        for record in records {
            let outcome = transaction!(self, tx => import_in_tx(&tx, record).await)?;
            outcomes.push(ImportOutcome::or_conflict(outcome));
        }
        Ok(outcomes)
    }
}
