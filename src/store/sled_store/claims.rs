//! `claim_next`'s reads and writes on sled (`store::claims` walks, `model::claims` decides): the
//! running jobs, the hosts' states, the claim queue in batches, one claim per transaction.

use std::collections::BTreeSet;

use async_trait::async_trait;

use super::SledStore;
use super::keys::{queue_key, queue_value, split_queue_entry};
use crate::model::claims::Claimant;
use crate::model::job::{HostState, Job, JobId, Status, Timestamp};
use crate::store::claims::{Attempted, Batch, ClaimScan};
use crate::store::{StoreError, StoreResult, codec};

/// How many queue entries a claim reads at a time (no iterator is open while it claims).
pub(super) const QUEUE_SCAN_BATCH: usize = 256;

/// `claim_next`'s reads and writes (`store::claims`), called under `schedule_lock`. No sled
/// iterator is open while a transaction runs (sled 0.34 has had deadlocks between the two,
/// spacejam/sled#1301): candidates are read in batches, then claimed one by one, each in a
/// transaction of its own. A host's state is written on its own, after the claim's commit.
#[async_trait]
impl ClaimScan for SledStore {
    type Error = StoreError;
    /// The first queue key after the previous batch.
    type Cursor = Vec<u8>;

    async fn running_jobs(&self) -> StoreResult<Vec<Job>> {
        self.read_running_jobs()
    }

    async fn host(&self, host: &str) -> StoreResult<Option<HostState>> {
        self.read_host(host)
    }

    async fn put_host(&self, state: &HostState) -> StoreResult<()> {
        self.hosts
            .insert(state.host.as_bytes(), codec::encode(state)?)?;
        Ok(())
    }

    /// A batch of the whole queue, or, for a claim limited to some jobs, all of those that are
    /// pending (read by id, not by scanning).
    async fn candidates(
        &self,
        only: Option<&BTreeSet<JobId>>,
        cursor: Option<&Vec<u8>>,
    ) -> StoreResult<Batch<Vec<u8>>> {
        let entries: Vec<(Vec<u8>, Vec<u8>)> = match only {
            None => self
                .queue
                .range(cursor.map(Vec::as_slice).unwrap_or_default()..)
                .take(QUEUE_SCAN_BATCH)
                .map(|entry| entry.map(|(key, value)| (key.to_vec(), value.to_vec())))
                .collect::<Result<_, _>>()?,
            Some(only) => {
                let mut entries = Vec::new();
                for &id in only {
                    if let Some(job) = self.read_job(id)?
                        && job.status == Status::Pending
                    {
                        entries.push((queue_key(job.priority, id).to_vec(), queue_value(&job)));
                    }
                }
                entries.sort();
                entries
            }
        };
        let next = entries.last().map(|(last_key, _)| {
            let mut next = last_key.clone();
            next.push(0);
            next
        });
        Ok(Batch {
            entries: entries
                .iter()
                .map(|(key, value)| split_queue_entry(key, value))
                .collect(),
            next,
        })
    }

    async fn try_claim(
        &self,
        id: JobId,
        claimant: &Claimant,
        now: Timestamp,
    ) -> StoreResult<Attempted> {
        match self.transact(|tx| tx.claim(id, claimant, now)) {
            Ok(Ok(job)) => Ok(Attempted::Claimed(Box::new(job))),
            Ok(Err(rejected)) => Ok(Attempted::Refused(rejected)),
            Err(error @ StoreError::Corrupt { .. }) => Ok(Attempted::Corrupt(error)),
            Err(error) => Err(error),
        }
    }
}
