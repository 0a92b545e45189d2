//! `MaintenanceStore` on sled: the incident log and deleting a job's records (pruning is
//! `prune.rs`, importing `import.rs`).

use async_trait::async_trait;

use super::SledStore;
use super::keys::TREE_INCIDENTS;
use super::tx::reject;
use crate::model::job::{Incident, Job, JobId, PrunedJob, Timestamp};
use crate::model::machine;
use crate::model::machine::Rejected;
use crate::store::{MaintenanceStore, NewIncident, StoreError, StoreResult, codec};

#[async_trait]
impl MaintenanceStore for SledStore {
    async fn record_incident(&self, incident: NewIncident) -> StoreResult<Incident> {
        let _one_append_at_a_time = self.incident_lock.lock().await;
        let seq = match self.incidents.last()? {
            None => 0,
            Some((key, _)) => {
                let bytes = <[u8; 8]>::try_from(key.as_ref()).map_err(|_| {
                    StoreError::corrupt(TREE_INCIDENTS, &key, "expected a u64 sequence key".into())
                })?;
                u64::from_be_bytes(bytes).checked_add(1).ok_or_else(|| {
                    StoreError::corrupt(TREE_INCIDENTS, &key, "incident sequence exhausted".into())
                })?
            }
        };
        let incident = Incident {
            seq,
            at: Timestamp::now(),
            actor: incident.actor,
            action: incident.action,
            job: incident.job,
            key: incident.key,
            reason: incident.reason,
        };
        self.incidents
            .insert(seq.to_be_bytes(), codec::encode(&incident)?)?;
        self.flush().await?;
        crate::store::log_incident(&incident);
        Ok(incident)
    }

    async fn delete_job(&self, id: JobId) -> StoreResult<Result<Job, Rejected>> {
        // No iterator is open while the transaction runs (see `ClaimScan for SledStore`): the
        // checkpoint keys are read first. A job that is not running gets no new checkpoint, and
        // the transaction re-reads the job, so the list cannot go stale under it.
        let checkpoint_keys = self.checkpoint_keys(id)?;
        let outcome = self.transact(|tx| {
            let job = tx.existing_job(id)?;
            machine::check_deletable(&job).map_err(reject)?;
            let store_checkpoint = tx.store_checkpoint(id)?;
            tx.replace_blob_refs(id, store_checkpoint.as_ref(), None)?;
            tx.remove_job(&job, &checkpoint_keys)?;
            Ok(job)
        })?;
        let job = match outcome {
            Ok(job) => job,
            Err(rejected) => return Ok(Err(rejected)),
        };
        self.remove_logs_and_progress(id)?;
        self.flush().await?;
        tracing::info!(job_id = %id, "deleted the job's records");
        Ok(Ok(job))
    }

    async fn prune_jobs(
        &self,
        ids: &[JobId],
        cutoff: Timestamp,
    ) -> StoreResult<Vec<Result<PrunedJob, Rejected>>> {
        self.prune(ids, cutoff).await
    }

    async fn import(
        &self,
        records: &[crate::store::transfer::Record],
    ) -> StoreResult<Vec<crate::store::transfer::ImportOutcome>> {
        let mut outcomes = Vec::with_capacity(records.len());
        for record in records {
            outcomes.push(self.import_record(record).await?);
        }
        // One flush before any of it is acknowledged.
        self.flush().await?;
        Ok(outcomes)
    }
}
