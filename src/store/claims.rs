//! `claim_next`'s walk over the queue, written once for every store: it reads what
//! `model::claims::ClaimPlanner` asks for, tries the claim the planner names, and writes the host
//! states the planner returns, through a store's [`ClaimScan`].
//!
//! The decisions are the planner's; how a store reads its queue, locks and claims a job, and where
//! it writes a host's state is the store's (`sled_store/claims.rs`, `pg_store/claims.rs`). This
//! module never judges a candidate itself, and never holds a lock of its own: the store calls it
//! under its schedule lock (sled's mutex, PostgreSQL's advisory lock).

use std::collections::BTreeSet;

use async_trait::async_trait;

use super::{ClaimRequest, StoreError};
use crate::model::claims::{Candidate, ClaimNext, ClaimPlanner, Claimant, Verdict};
use crate::model::job::{HostState, Job, JobId, Timestamp};
use crate::model::machine::Rejected;
use crate::model::scheduling;

/// A store's reads and writes for one claim.
#[async_trait]
pub(crate) trait ClaimScan: Sync {
    type Error: Send;
    /// Where the next batch of the queue starts.
    type Cursor: Send + Sync;

    /// Every running job: what the concurrency limits, a probe's liveness and the attribution
    /// rule need.
    async fn running_jobs(&self) -> Result<Vec<Job>, Self::Error>;
    /// A host's state (`None`: none yet), or the storage breaker's.
    async fn host(&self, host: &str) -> Result<Option<HostState>, Self::Error>;
    async fn put_host(&self, state: &HostState) -> Result<(), Self::Error>;
    /// The next queue entries in claim order from `cursor` (the queue's start with `None`): a
    /// batch of the whole queue, or, for a claim limited to `only`, all of those that are pending.
    /// An entry the store cannot read is an error the walk names and passes over.
    async fn candidates(
        &self,
        only: Option<&BTreeSet<JobId>>,
        cursor: Option<&Self::Cursor>,
    ) -> Result<Batch<Self::Cursor>, Self::Error>;
    /// Claims the candidate `id` for `claimant`, in one transaction of its own or the claim's.
    async fn try_claim(
        &self,
        id: JobId,
        claimant: &Claimant,
        now: Timestamp,
    ) -> Result<Attempted, Self::Error>;
}

/// A batch of queue entries, and where the batch after it starts.
pub(crate) struct Batch<C> {
    pub(crate) entries: Vec<Result<Candidate, StoreError>>,
    pub(crate) next: Option<C>,
}

/// How a claim of one candidate went.
pub(crate) enum Attempted {
    Claimed(Box<Job>),
    /// The machine refused it: the job moved on since the queue was read, or it must run alone.
    Refused(Rejected),
    /// Another transaction holds the job (a cancel, a reset): passed over, not waited for.
    Locked,
    /// Its record does not read. One unreadable record must not stop every other job: it stays
    /// pending, named here and by `check_consistency` (`narra doctor`), and is passed over.
    Corrupt(StoreError),
}

/// Claims the first job the scheduling rules admit, at `now`: see the module docs.
pub(crate) async fn claim_next<S: ClaimScan + ?Sized>(
    store: &S,
    request: &ClaimRequest<'_>,
    now: Timestamp,
) -> Result<ClaimNext, S::Error> {
    let running = store.running_jobs().await?;
    let storage = store.host(scheduling::STORAGE_BREAKER).await?;
    let mut planner = match ClaimPlanner::begin(
        request.worker_id,
        request.lease_ttl_ms,
        &running,
        storage,
        request.policy,
        now,
    ) {
        Ok(planner) => planner,
        Err(paused) => {
            let any_pending = !store
                .candidates(request.only, None)
                .await?
                .entries
                .is_empty();
            return Ok(ClaimNext::idle(any_pending, paused.until));
        }
    };
    let mut cursor = None;
    loop {
        let batch = store.candidates(request.only, cursor.as_ref()).await?;
        if batch.entries.is_empty() {
            break;
        }
        for entry in batch.entries {
            let candidate = match entry {
                Ok(candidate) => candidate,
                Err(error) => {
                    tracing::error!(%error, "passing over a corrupt queue entry");
                    continue;
                }
            };
            if planner.needs_host(&candidate) {
                let state = store.host(&candidate.host).await?;
                planner.learn_host(&candidate.host, state);
            }
            let Verdict::Try(attempt) = planner.judge(&candidate) else {
                continue;
            };
            let id = attempt.id;
            match store.try_claim(id, planner.claimant(), now).await? {
                Attempted::Claimed(job) => {
                    let writes = planner.claimed(&attempt, job.id);
                    if writes.probe {
                        tracing::warn!(host = %attempt.host, job_id = %id, "circuit breaker: a probe job tests the host");
                    }
                    if let Some(state) = &writes.host {
                        store.put_host(state).await?;
                    }
                    if let Some(storage) = &writes.storage {
                        tracing::warn!(job_id = %id, "storing is paused: a probe job tests the storage");
                        store.put_host(storage).await?;
                    }
                    return Ok(ClaimNext::claimed(*job));
                }
                Attempted::Refused(rejected) => {
                    if let Some(end) = planner.refused(&rejected) {
                        tracing::debug!(job_id = %id, %rejected, "not claimed");
                        return Ok(end);
                    }
                    tracing::trace!(job_id = %id, %rejected, "pending job no longer claimable");
                }
                Attempted::Locked => {}
                Attempted::Corrupt(error) => {
                    tracing::error!(job_id = %id, %error, "passing over a pending job whose record is corrupt");
                }
            }
        }
        if request.only.is_some() {
            break;
        }
        cursor = batch.next;
    }
    Ok(planner.finish())
}
