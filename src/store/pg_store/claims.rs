//! `claim_next` on PostgreSQL (`store::claims` walks, `model::claims` decides): one transaction
//! under the schedule's advisory lock; candidates read in claim order, and the one the planner
//! admits locked with `FOR UPDATE SKIP LOCKED`, so a job another transaction is changing (a
//! cancel, a reset) is passed over, not waited for.

use std::collections::BTreeSet;

use async_trait::async_trait;

use super::PgStore;
use super::rows::{TABLE_JOBS, decode_job, id_bytes, job_id_in, status_column};
use super::tx::{Tx, TxAbort, TxResult};
use crate::model::claims::{Candidate, Claimant};
use crate::model::job::{HostState, Job, JobId, Status, Timestamp};
use crate::model::machine;
use crate::store::claims::{Attempted, Batch, ClaimScan};
use crate::store::{ClaimNext, ClaimRequest, StoreError, StoreResult, claims};

/// How many pending jobs a claim reads at a time, in claim order.
pub(super) const QUEUE_SCAN_BATCH: i64 = 256;

impl PgStore {
    /// `claim_next` in one transaction under the schedule lock: see the module docs.
    pub(super) async fn claim_first_admitted(
        &self,
        request: &ClaimRequest<'_>,
    ) -> StoreResult<ClaimNext> {
        let now = Timestamp::now();
        let outcome = transaction!(self, tx => {
            tx.lock_schedule().await?;
            claims::claim_next(&tx, request, now).await
        })?;
        match outcome {
            Ok(claimed) => Ok(claimed),
            // The body refuses nothing: a refused candidate is passed over.
            Err(rejected) => Err(StoreError::corrupt(
                TABLE_JOBS,
                b"",
                format!("claim_next was refused: {rejected}"),
            )),
        }
    }
}

/// `claim_next`'s reads and writes (`store::claims`), in the claim's transaction: candidates are
/// read in claim order, and the one the planner admits is locked with `FOR UPDATE SKIP LOCKED`.
#[async_trait]
impl ClaimScan for Tx<'_> {
    type Error = TxAbort;
    /// The (priority, id) of the last candidate of the previous batch.
    type Cursor = (i32, Vec<u8>);

    /// A record that does not decode is named and passed over, as a claim passes over a
    /// corrupt pending job.
    async fn running_jobs(&self) -> TxResult<Vec<Job>> {
        self.running().await
    }

    async fn host(&self, host: &str) -> TxResult<Option<HostState>> {
        self.host_state(host).await
    }

    async fn put_host(&self, state: &HostState) -> TxResult<()> {
        self.put_host_state(state).await
    }

    /// A batch of the whole queue, or, for a claim limited to some jobs, all of those that are
    /// pending.
    async fn candidates(
        &self,
        only: Option<&BTreeSet<JobId>>,
        cursor: Option<&(i32, Vec<u8>)>,
    ) -> TxResult<Batch<(i32, Vec<u8>)>> {
        // `status = 0` is written out (pending's column value, `status_column`), so that the
        // planner matches the `jobs_pending` partial index whatever plan it caches.
        let rows = match (only, cursor) {
            (Some(_), Some(_)) => Vec::new(),
            (Some(only), None) => {
                let only: Vec<Vec<u8>> = only.iter().map(|id| id_bytes(*id)).collect();
                self.sql
                    .query(
                        "SELECT id, priority, not_before, host FROM jobs
                         WHERE status = 0 AND id = ANY($1) ORDER BY priority DESC, id",
                        &[&only],
                    )
                    .await?
            }
            (None, None) => {
                self.sql
                    .query(
                        "SELECT id, priority, not_before, host FROM jobs
                         WHERE status = 0 ORDER BY priority DESC, id LIMIT $1",
                        &[&QUEUE_SCAN_BATCH],
                    )
                    .await?
            }
            (None, Some((priority, id))) => {
                self.sql
                    .query(
                        "SELECT id, priority, not_before, host FROM jobs
                         WHERE status = 0 AND (priority < $1 OR (priority = $1 AND id > $2))
                         ORDER BY priority DESC, id LIMIT $3",
                        &[priority, id, &QUEUE_SCAN_BATCH],
                    )
                    .await?
            }
        };
        let mut entries = Vec::with_capacity(rows.len());
        let mut next = None;
        for row in &rows {
            let id = job_id_in(TABLE_JOBS, row.get(0))?;
            let priority: i32 = row.get(1);
            entries.push(Ok(Candidate {
                id,
                not_before: Timestamp(row.get::<_, Option<i64>>(2).unwrap_or(i64::MIN)),
                host: row.get(3),
            }));
            next = Some((priority, id_bytes(id)));
        }
        Ok(Batch { entries, next })
    }

    /// Locked only if no other transaction holds it: one that does is changing the job (a
    /// cancel, a reset), and the claim moves on.
    async fn try_claim(
        &self,
        id: JobId,
        claimant: &Claimant,
        now: Timestamp,
    ) -> TxResult<Attempted> {
        let Some(row) = self
            .sql
            .query_opt(
                "SELECT record FROM jobs WHERE id = $1 AND status = $2
                 FOR UPDATE SKIP LOCKED",
                &[&id_bytes(id), &status_column(Status::Pending)],
            )
            .await?
        else {
            return Ok(Attempted::Locked);
        };
        let job = match decode_job(id, row.get(0)) {
            Ok(job) => job,
            Err(error) => return Ok(Attempted::Corrupt(error)),
        };
        let transition = match machine::apply_orchestrator(&job, &claimant.op, now) {
            Ok(transition) => transition,
            Err(rejected) => return Ok(Attempted::Refused(rejected)),
        };
        let job = self.write_transition(Some(&job), transition, now).await?;
        self.join_held(&claimant.holding).await?;
        Ok(Attempted::Claimed(Box::new(job)))
    }
}
