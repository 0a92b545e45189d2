//! `JobReader` on sled, and the reads the other operations share (a job, a host, the running
//! jobs). Reads only: nothing here writes.

use std::sync::atomic::Ordering;

use async_trait::async_trait;
use sled::IVec;

use super::SledStore;
use super::keys::{
    JOB_ID_BYTES, TREE_BACKFILL_JOBS, TREE_BACKFILLS, TREE_CHECKPOINTS, TREE_EVENTS, TREE_HOSTS,
    TREE_INCIDENTS, TREE_KEYS, TREE_LOGS, TREE_METADATA, TREE_PROGRESS, TREE_STATUS_INDEX,
    blob_ref_prefix, checkpoint_key, decode_all, decode_checked, decode_job, job_id_in, plain,
    read_by_id, seq_in, split_blob_ref,
};
use crate::model::job::{
    Backfill, BackfillId, Checkpoint, Event, EventSummary, HostState, Incident, Job, JobId,
    JobProgress, LogLine, MediaMetadata, PrunedJob, Status,
};
use crate::model::records;
use crate::model::records::STORE_STEP;
use crate::store::{JobFilter, JobReader, StoreResult, codec};

impl SledStore {
    pub(super) fn read_job(&self, id: JobId) -> StoreResult<Option<Job>> {
        read_by_id(&self.jobs, id, decode_job)
    }

    /// Visits every store checkpoint (the ones that feed the blob index), in key order, with its
    /// key and its job.
    pub(super) fn for_each_store_checkpoint(
        &self,
        mut visit: impl FnMut(&[u8], JobId, Checkpoint) -> StoreResult<()>,
    ) -> StoreResult<()> {
        for entry in self.checkpoints.iter() {
            let (key, bytes) = entry?;
            if key.get(JOB_ID_BYTES..) != Some(STORE_STEP.as_bytes()) {
                continue;
            }
            let id = job_id_in(TREE_CHECKPOINTS, &key, &key[..JOB_ID_BYTES])?;
            visit(&key, id, codec::decode(TREE_CHECKPOINTS, &key, &bytes)?)?;
        }
        Ok(())
    }

    /// The keys of a job's checkpoints, read before a transaction that removes or rewrites them:
    /// no iterator is open while a transaction runs (see `ClaimScan for SledStore`).
    pub(super) fn checkpoint_keys(&self, id: JobId) -> StoreResult<Vec<IVec>> {
        Ok(self
            .checkpoints
            .scan_prefix(id.to_bytes())
            .keys()
            .collect::<Result<Vec<_>, _>>()?)
    }

    pub(super) fn read_host(&self, host: &str) -> StoreResult<Option<HostState>> {
        self.hosts
            .get(host.as_bytes())?
            .map(|bytes| codec::decode(TREE_HOSTS, host.as_bytes(), &bytes))
            .transpose()
    }

    /// Every running job, read through the status index.
    pub(super) fn read_running_jobs(&self) -> StoreResult<Vec<Job>> {
        let mut running = Vec::new();
        for key in self
            .status_index
            .scan_prefix([Status::Running.index_byte()])
            .keys()
        {
            let key = key?;
            let id = job_id_in(TREE_STATUS_INDEX, &key, &key[1..])?;
            if let Some(job) = self.read_job(id)?
                && job.status == Status::Running
            {
                running.push(job);
            }
        }
        Ok(running)
    }
}

#[async_trait]
impl JobReader for SledStore {
    async fn job(&self, id: JobId) -> StoreResult<Option<Job>> {
        self.read_job(id)
    }

    async fn job_by_key(&self, key: &str) -> StoreResult<Option<Job>> {
        match self.keys.get(key.as_bytes())? {
            None => Ok(None),
            Some(id_bytes) => {
                let id = job_id_in(TREE_KEYS, key.as_bytes(), &id_bytes)?;
                self.read_job(id)
            }
        }
    }

    async fn jobs(&self, filter: &JobFilter) -> StoreResult<Vec<Job>> {
        let mut jobs = Vec::new();
        if filter.limit == 0 {
            return Ok(jobs);
        }
        match filter.status {
            Some(status) => {
                for key in self
                    .status_index
                    .scan_prefix([status.index_byte()])
                    .keys()
                    .rev()
                {
                    let key = key?;
                    let id = job_id_in(TREE_STATUS_INDEX, &key, &key[1..])?;
                    // The index and the job are read apart: skip a job that moved on in between.
                    if let Some(job) = self.read_job(id)?
                        && job.status == status
                    {
                        jobs.push(job);
                        if jobs.len() >= filter.limit {
                            break;
                        }
                    }
                }
            }
            None => {
                for entry in self.jobs.iter().rev() {
                    let (key, bytes) = entry?;
                    jobs.push(decode_job(&key, &bytes)?);
                    if jobs.len() >= filter.limit {
                        break;
                    }
                }
            }
        }
        Ok(jobs)
    }

    async fn checkpoints(&self, id: JobId) -> StoreResult<Vec<Checkpoint>> {
        let mut checkpoints = Vec::new();
        for entry in self.checkpoints.scan_prefix(id.to_bytes()) {
            let (key, bytes) = entry?;
            checkpoints.push(codec::decode::<Checkpoint>(TREE_CHECKPOINTS, &key, &bytes)?);
        }
        // Keys sort by step name; the trait promises the order the steps were recorded in.
        records::in_recorded_order(&mut checkpoints);
        Ok(checkpoints)
    }

    async fn checkpoint(&self, id: JobId, step: &str) -> StoreResult<Option<Checkpoint>> {
        let key = checkpoint_key(id, step);
        self.checkpoints
            .get(&key)?
            .map(|bytes| codec::decode(TREE_CHECKPOINTS, &key, &bytes))
            .transpose()
    }

    async fn events(&self, id: JobId) -> StoreResult<Vec<Event>> {
        decode_checked(
            self.events.scan_prefix(id.to_bytes()),
            TREE_EVENTS,
            |key, event: &Event| {
                Ok((seq_in(TREE_EVENTS, key)? != event.seq)
                    .then(|| format!("record holds event seq {}", event.seq)))
            },
        )
    }

    async fn event_summary(&self, id: JobId) -> StoreResult<Option<EventSummary>> {
        self.read_event_summary(id)
    }

    fn events_max(&self) -> u64 {
        self.events_max.load(Ordering::Relaxed)
    }

    async fn metadata(&self, id: JobId) -> StoreResult<Option<MediaMetadata>> {
        read_by_id(&self.metadata, id, plain(TREE_METADATA))
    }

    async fn progress(&self, id: JobId) -> StoreResult<Option<JobProgress>> {
        read_by_id(&self.progress, id, plain(TREE_PROGRESS))
    }

    async fn logs(&self, id: JobId) -> StoreResult<Vec<LogLine>> {
        let mut lines = Vec::new();
        for entry in self.logs.scan_prefix(id.to_bytes()) {
            let (key, bytes) = entry?;
            lines.push(codec::decode(TREE_LOGS, &key, &bytes)?);
        }
        Ok(lines)
    }

    async fn jobs_referencing(&self, key: &str) -> StoreResult<Vec<JobId>> {
        let mut ids = Vec::new();
        for ref_key in self.blob_refs.scan_prefix(blob_ref_prefix(key)).keys() {
            let (_, id) = split_blob_ref(&ref_key?)?;
            ids.push(id);
        }
        Ok(ids)
    }

    async fn blob_refs(&self) -> StoreResult<Vec<(String, JobId)>> {
        self.blob_refs
            .iter()
            .keys()
            .map(|key| split_blob_ref(&key?))
            .collect()
    }

    async fn incidents(&self) -> StoreResult<Vec<Incident>> {
        decode_all(self.incidents.iter(), TREE_INCIDENTS)
    }

    async fn pruned_job(&self, id: JobId) -> StoreResult<Option<PrunedJob>> {
        self.read_pruned(id)
    }

    async fn pruned_jobs(&self) -> StoreResult<Vec<PrunedJob>> {
        self.read_pruned_all()
    }

    async fn backfills(&self) -> StoreResult<Vec<Backfill>> {
        decode_all(self.backfills.iter(), TREE_BACKFILLS)
    }

    async fn backfill_jobs(&self, id: BackfillId) -> StoreResult<Vec<JobId>> {
        let mut ids = Vec::new();
        for key in self.backfill_jobs.scan_prefix(id.to_bytes()).keys() {
            let key = key?;
            ids.push(job_id_in(
                TREE_BACKFILL_JOBS,
                &key,
                key.get(JOB_ID_BYTES..).unwrap_or_default(),
            )?);
        }
        Ok(ids)
    }

    async fn hosts(&self) -> StoreResult<Vec<HostState>> {
        let mut hosts = Vec::new();
        for entry in self.hosts.iter() {
            let (key, bytes) = entry?;
            hosts.push(codec::decode(TREE_HOSTS, &key, &bytes)?);
        }
        Ok(hosts)
    }
}
