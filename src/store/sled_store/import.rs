//! `narra import` into sled: each exported record written as it was, with the indexes the other
//! operations keep (see `store::transfer`).
//!
//! A job's core records (the job, its key, status-index and queue entries, checkpoints, events,
//! summary, metadata, blob references, webhook) are one transaction. Its log lines and progress live in
//! trees outside that transaction (as everywhere in this store), so they are written first, after
//! removing any a previous, interrupted import left: the job record, written last, is what says
//! the job was imported, and an import run again finds either all of it or a job to write anew.

use super::SledStore;
use super::keys::{
    TREE_INCIDENTS, TREE_KEYS, TREE_PRUNED, backfill_job_key, blob_ref_key, checkpoint_key,
    job_id_in, seq_key,
};
use super::tx::{encode_in_tx, store_abort};
use crate::model::job::{Backfill, BackfillId, HostState, Incident, JobId, PrunedJob};
use crate::store::transfer::{ImportOutcome, JobRecords, Record};
use crate::store::{JobReader, StoreResult, codec};

impl SledStore {
    /// One record, not flushed: `import` flushes once for all.
    pub(super) async fn import_record(&self, record: &Record) -> StoreResult<ImportOutcome> {
        Ok(match record {
            Record::Job(records) => self.import_job(records)?,
            Record::Incident(incident) => self.import_incident(incident).await?,
            Record::Backfill { backfill, jobs } => self.import_backfill(backfill, jobs).await?,
            Record::Host(host) => self.import_host(host)?,
            Record::Pruned(pruned) => self.import_pruned(pruned)?,
        })
    }

    fn import_host(&self, host: &HostState) -> StoreResult<ImportOutcome> {
        if let Some(existing) = self.read_host(&host.host)? {
            return Ok(ImportOutcome::host_over(&existing, host));
        }
        Ok(
            match self.hosts.compare_and_swap(
                host.host.as_bytes(),
                None as Option<&[u8]>,
                Some(codec::encode(host)?),
            )? {
                Ok(()) => ImportOutcome::Imported,
                Err(_) => ImportOutcome::Conflict(format!(
                    "host {} was written while it was imported",
                    host.host
                )),
            },
        )
    }

    async fn import_backfill(
        &self,
        backfill: &Backfill,
        jobs: &[JobId],
    ) -> StoreResult<ImportOutcome> {
        let _one_at_a_time = self.backfill_lock.lock().await;
        let existing =
            self.backfills().await?.into_iter().find(|existing| {
                existing.id == backfill.id || existing.manifest == backfill.manifest
            });
        Ok(match existing {
            Some(existing) => {
                let outcome = ImportOutcome::backfill_over(&existing, backfill);
                if outcome == ImportOutcome::AlreadyPresent {
                    // Its list may be short of what an interrupted import meant to write.
                    self.import_backfill_jobs(backfill.id, jobs)?;
                }
                outcome
            }
            None => {
                // Its job list first: the record is what `backfills` lists.
                self.import_backfill_jobs(backfill.id, jobs)?;
                self.backfills
                    .insert(backfill.id.to_bytes(), codec::encode(backfill)?)?;
                ImportOutcome::Imported
            }
        })
    }

    fn import_pruned(&self, pruned: &PrunedJob) -> StoreResult<ImportOutcome> {
        let id = pruned.id;
        let outcome = self.transact_with(&self.pruned, |tx, pruned_tree| {
            if let Some(bytes) = pruned_tree.get(id.to_bytes())? {
                let existing: PrunedJob =
                    codec::decode(TREE_PRUNED, &id.to_bytes(), &bytes).map_err(store_abort)?;
                return Ok(ImportOutcome::tombstone_over(&existing, pruned));
            }
            if tx.job(id)?.is_some() {
                return Ok(ImportOutcome::job_live(id));
            }
            for blob in &pruned.blobs {
                tx.blob_refs.insert(blob_ref_key(blob, id), Vec::new())?;
            }
            pruned_tree.insert(&id.to_bytes()[..], encode_in_tx(pruned)?)?;
            Ok(ImportOutcome::Imported)
        })?;
        Ok(ImportOutcome::or_conflict(outcome))
    }

    fn import_job(&self, records: &JobRecords) -> StoreResult<ImportOutcome> {
        let job = &records.job;
        let id = job.id;
        if let Some(existing) = self.read_job(id)? {
            return Ok(ImportOutcome::job_over(&existing, job));
        }
        if let Some(id_bytes) = self.keys.get(job.key.as_bytes())? {
            let holder = job_id_in(TREE_KEYS, job.key.as_bytes(), &id_bytes)?;
            return Ok(ImportOutcome::key_held(holder, &job.key));
        }
        if self.read_pruned(id)?.is_some() {
            return Ok(ImportOutcome::job_pruned(id));
        }
        // Outside the transaction, and before the job (see the module docs).
        let mut batch = sled::Batch::default();
        for key in self.logs.scan_prefix(id.to_bytes()).keys() {
            batch.remove(key?);
        }
        for line in &records.logs {
            let seq = self
                .log_seq_next
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            batch.insert(&seq_key(id, seq)[..], codec::encode(line)?);
        }
        self.logs.apply_batch(batch)?;
        match &records.progress {
            Some(progress) => self
                .progress
                .insert(id.to_bytes(), codec::encode(progress)?)?,
            None => self.progress.remove(id.to_bytes())?,
        };
        let outcome = self.transact(|tx| {
            // Read again inside: another writer may have taken the id or the key meanwhile.
            if tx.job(id)?.is_some() || tx.keys.get(job.key.as_bytes())?.is_some() {
                return Ok(ImportOutcome::Conflict(format!(
                    "job {id} or its key {:?} was written while it was imported",
                    job.key
                )));
            }
            for checkpoint in &records.checkpoints {
                tx.checkpoints.insert(
                    checkpoint_key(id, &checkpoint.step),
                    encode_in_tx(checkpoint)?,
                )?;
            }
            for event in &records.events {
                tx.events
                    .insert(&seq_key(id, event.seq)[..], encode_in_tx(event)?)?;
            }
            if let Some(summary) = &records.event_summary {
                tx.event_summaries
                    .insert(&id.to_bytes()[..], encode_in_tx(summary)?)?;
            }
            if let Some(metadata) = &records.metadata {
                tx.metadata
                    .insert(&id.to_bytes()[..], encode_in_tx(metadata)?)?;
            }
            for blob in &records.blobs {
                tx.blob_refs.insert(blob_ref_key(blob, id), Vec::new())?;
            }
            tx.put_job(None, job)?;
            tx.keys.insert(job.key.as_bytes(), &id.to_bytes()[..])?;
            if let Some(webhook) = &records.webhook {
                tx.put_webhook(None, webhook)?;
            }
            Ok(ImportOutcome::Imported)
        })?;
        Ok(ImportOutcome::or_conflict(outcome))
    }

    async fn import_incident(&self, incident: &Incident) -> StoreResult<ImportOutcome> {
        let _one_append_at_a_time = self.incident_lock.lock().await;
        let key = incident.seq.to_be_bytes();
        if let Some(bytes) = self.incidents.get(key)? {
            let existing: Incident = codec::decode(TREE_INCIDENTS, &key, &bytes)?;
            return Ok(ImportOutcome::incident_over(&existing, incident));
        }
        self.incidents.insert(key, codec::encode(incident)?)?;
        Ok(ImportOutcome::Imported)
    }

    fn import_backfill_jobs(&self, backfill: BackfillId, jobs: &[JobId]) -> StoreResult<()> {
        let mut batch = sled::Batch::default();
        for &job in jobs {
            batch.insert(&backfill_job_key(backfill, job)[..], Vec::new());
        }
        self.backfill_jobs.apply_batch(batch)?;
        Ok(())
    }
}
