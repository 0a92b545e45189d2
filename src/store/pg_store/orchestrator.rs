//! `OrchestratorStore` on PostgreSQL: submissions (`model::submission` decides), claims, the
//! transitions of a job's status, host outcomes, reprobes, the reclaim of an orphan and the
//! fleet's settling of takeovers. Each is one transaction that locks the job's row first.

use async_trait::async_trait;

use super::PgStore;
use super::rows::{
    TABLE_BACKFILLS, TABLE_HOSTS, TABLE_JOBS, TABLE_PROGRESS, decode_in, decode_job_row, id_bytes,
    status_column,
};
use super::tx::{Tx, TxResult};
use crate::model::attribution::DeathSeen;
use crate::model::claims as claims_model;
use crate::model::claims::Claimant;
use crate::model::job::{
    Backfill, BackfillId, Checkpoint, EventKind, Job, JobId, JobProgress, LeaseToken,
    MediaMetadata, Status, Timestamp, WorkerId,
};
use crate::model::machine::{OrchestratorOp, Rejected};
use crate::model::records::STORE_STEP;
use crate::model::scheduling::{HostOutcome, OutcomeVerdict, SchedulingPolicy};
use crate::model::{attribution, machine, scheduling, submission};
use crate::store::{
    BatchOptions, ClaimNext, ClaimRequest, OrchestratorStore, Resubmit, StoreError, StoreResult,
    SubmitOutcome, SubmitRequest, Submitted, TransitionOp, codec, submit,
};

/// One submission inside a transaction, for `submit` and `submit_batch`: `model::submission`
/// decides, this reads (and locks) the key's job and writes what it returns.
pub(super) async fn submit_in_tx(
    tx: &Tx<'_>,
    request: &SubmitRequest,
    rule: Resubmit,
    now: Timestamp,
) -> TxResult<Submitted> {
    let Some(row) = tx
        .sql
        .query_opt(
            "SELECT id, record FROM jobs WHERE key = $1 FOR UPDATE",
            &[&request.key],
        )
        .await?
    else {
        // A concurrent submission of the same new key makes one of the two inserts fail on the
        // key's unique index; that transaction runs again and finds the job.
        let job = tx
            .write_transition(None, submission::create(request, now), now)
            .await?;
        return Ok(Submitted {
            job,
            outcome: SubmitOutcome::Created,
        });
    };
    let job = decode_job_row(&row)?;
    match submission::resubmit(&job, request, rule, now).map_err(|refused| {
        StoreError::corrupt(TABLE_JOBS, &job.id.to_bytes(), refused.to_string())
    })? {
        None => Ok(Submitted {
            job,
            outcome: SubmitOutcome::Existing,
        }),
        Some(resubmission) => Ok(Submitted {
            job: tx
                .write_transition(Some(&job), resubmission.transition, now)
                .await?,
            outcome: resubmission.outcome,
        }),
    }
}

#[async_trait]
impl OrchestratorStore for PgStore {
    /// One transaction, and the log bound once the job ends.
    async fn transition(
        &self,
        id: JobId,
        op: TransitionOp<'_>,
    ) -> StoreResult<Result<Job, Rejected>> {
        let op = op.op();
        let now = Timestamp::now();
        let outcome = transaction!(self, tx => {
            let job = tx.job_for_update(id).await?;
            let transition = machine::apply_orchestrator(&job, op, now).map_err(TxAbort::Rejected)?;
            tx.write_transition(Some(&job), transition, now).await
        })?;
        let job = match outcome {
            Ok(job) => job,
            Err(rejected) => return Ok(Err(rejected)),
        };
        tracing::debug!(job_id = %id, op = op.name(), status = %job.status, "job transition");
        if job.status.is_terminal() {
            self.logs.trim_best_effort(id).await;
        }
        Ok(Ok(job))
    }

    fn shared(&self) -> bool {
        true
    }

    async fn wait_for_work(&self, timeout: std::time::Duration) {
        self.listener.wait(timeout).await;
    }

    async fn submit(&self, request: &SubmitRequest) -> StoreResult<Submitted> {
        let now = Timestamp::now();
        let outcome = transaction!(self, tx => {
            submit_in_tx(&tx, request, Resubmit::default(), now).await
        })?;
        let submitted = submit::one(outcome, TABLE_JOBS, request)?;
        tracing::debug!(job_id = %submitted.job.id, outcome = ?submitted.outcome, "job submitted");
        Ok(submitted)
    }

    async fn submit_batch(
        &self,
        requests: &[SubmitRequest],
        options: &BatchOptions,
    ) -> StoreResult<Vec<Submitted>> {
        let submitted = submit::in_chunks(requests, TABLE_JOBS, |chunk, now| async move {
            transaction!(self, tx => {
                let mut chunk_submitted = Vec::with_capacity(chunk.len());
                for request in chunk {
                    let one = submit_in_tx(&tx, request, options.resubmit, now).await?;
                    if let Some(backfill) = options.backfill {
                        tx.sql
                            .execute(
                                "INSERT INTO backfill_jobs (backfill_id, job_id) VALUES ($1, $2)
                                 ON CONFLICT DO NOTHING",
                                &[&backfill.to_bytes().to_vec(), &id_bytes(one.job.id)],
                            )
                            .await?;
                    }
                    chunk_submitted.push(one);
                }
                Ok(chunk_submitted)
            })
        })
        .await?;
        tracing::debug!(requests = requests.len(), "batch submitted");
        Ok(submitted)
    }

    async fn open_backfill(&self, manifest: &str) -> StoreResult<Backfill> {
        let backfill = Backfill {
            id: BackfillId::new(),
            manifest: manifest.to_string(),
            created_at: Timestamp::now(),
        };
        let client = self.client().await?;
        // The manifest's unique index makes find-or-create one statement for every process.
        let inserted = client
            .execute(
                "INSERT INTO backfills (id, manifest, record) VALUES ($1, $2, $3)
                 ON CONFLICT (manifest) DO NOTHING",
                &[
                    &backfill.id.to_bytes().to_vec(),
                    &manifest,
                    &codec::encode(&backfill)?,
                ],
            )
            .await?;
        if inserted == 1 {
            tracing::info!(backfill_id = %backfill.id, manifest, "backfill recorded");
            return Ok(backfill);
        }
        let row = client
            .query_one(
                "SELECT id, record FROM backfills WHERE manifest = $1",
                &[&manifest],
            )
            .await?;
        let key: &[u8] = row.get(0);
        codec::decode(TABLE_BACKFILLS, key, row.get(1))
    }

    async fn claim_next(&self, request: &ClaimRequest<'_>) -> StoreResult<ClaimNext> {
        let claimed = self.claim_first_admitted(request).await?;
        if let ClaimNext::Claimed(job, _) = &claimed {
            tracing::debug!(job_id = %job.id, worker_id = %request.worker_id, token = job.fencing_token, "job claimed");
        }
        Ok(claimed)
    }

    async fn claim(
        &self,
        id: JobId,
        worker_id: &WorkerId,
        lease_ttl_ms: u64,
    ) -> StoreResult<Result<(Job, LeaseToken), Rejected>> {
        let now = Timestamp::now();
        let outcome = transaction!(self, tx => {
            let claimant = Claimant::new(worker_id, lease_ttl_ms, &tx.running().await?);
            let job = tx.job_for_update(id).await?;
            let transition =
                machine::apply_orchestrator(&job, &claimant.op, now).map_err(TxAbort::Rejected)?;
            let claimed = tx.write_transition(Some(&job), transition, now).await?;
            tx.join_held(&claimant.holding).await?;
            Ok(claimed)
        })?;
        Ok(outcome.map(claims_model::with_lease))
    }

    async fn record_host_outcome(
        &self,
        host: &str,
        job: JobId,
        outcome: &HostOutcome,
        policy: &SchedulingPolicy,
    ) -> StoreResult<OutcomeVerdict> {
        let now = Timestamp::now();
        let verdict = transaction!(self, tx => {
            tx.lock_schedule().await?;
            let before = tx.host_state(host).await?;
            let update = scheduling::outcome_update(before.as_ref(), host, job, outcome, policy, now);
            if let Some(state) = &update.state {
                tx.put_host_state(state).await?;
            }
            Ok(update.verdict)
        })?;
        verdict.map_err(|rejected| {
            StoreError::corrupt(
                TABLE_HOSTS,
                host.as_bytes(),
                format!("recording a host outcome was refused: {rejected}"),
            )
        })
    }

    async fn retry_from(
        &self,
        id: JobId,
        step: &str,
        later_steps: &[String],
        reason: &str,
    ) -> StoreResult<Result<Job, Rejected>> {
        let now = Timestamp::now();
        let outcome = transaction!(self, tx => {
            let job = tx.job_for_update(id).await?;
            let (discarded, kept) =
                machine::split_for_retry_from(tx.all_checkpoints(id).await?, step, later_steps);
            let decision = machine::retry_from(&job, step, &discarded, &kept, reason, now)
                .map_err(TxAbort::Rejected)?;
            for checkpoint in &discarded {
                if checkpoint.step == STORE_STEP {
                    // The index follows the store checkpoint, in the same transaction.
                    tx.replace_blob_refs(id, Some(checkpoint), None).await?;
                }
                tx.sql
                    .execute(
                        "DELETE FROM checkpoints WHERE job_id = $1 AND step = $2",
                        &[&id_bytes(id), &checkpoint.step],
                    )
                    .await?;
            }
            for checkpoint in &decision.repointed {
                tx.put_checkpoint(id, checkpoint).await?;
            }
            tx.write_transition(Some(&job), decision.transition, now).await
        })?;
        if outcome.is_ok() {
            tracing::info!(job_id = %id, step, "retry from a step: later checkpoints discarded");
        }
        Ok(outcome)
    }

    async fn reclaim_orphan(&self, id: JobId, reason: &str) -> StoreResult<Result<Job, Rejected>> {
        // Where the job was when its process died, read in the transaction that holds its row.
        let now = Timestamp::now();
        transaction!(self, tx => {
            let job = tx.job_for_update(id).await?;
            let checkpoints: i64 = tx
                .sql
                .query_one(
                    "SELECT count(*) FROM checkpoints WHERE job_id = $1",
                    &[&id_bytes(id)],
                )
                .await?
                .get(0);
            let progress = tx
                .sql
                .query_opt(
                    "SELECT record FROM progress WHERE job_id = $1",
                    &[&id_bytes(id)],
                )
                .await?
                .map(|row| decode_in::<JobProgress>(TABLE_PROGRESS, id, row.get(0)))
                .transpose()?;
            // A fleet sees a death only as a lease that ran out: its holder may have stalled.
            let op = OrchestratorOp::reclaim_orphan(
                &job,
                reason,
                usize::try_from(checkpoints).unwrap_or(usize::MAX),
                progress.as_ref(),
                DeathSeen::LeaseExpired,
            );
            let transition =
                machine::apply_orchestrator(&job, &op, now).map_err(TxAbort::Rejected)?;
            tx.write_transition(Some(&job), transition, now).await
        })
    }

    async fn settle_takeovers(&self, lease_ttl_ms: u64) -> StoreResult<Vec<Job>> {
        let now = Timestamp::now();
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, record FROM jobs WHERE status = $1 OR status = $2",
                &[
                    &status_column(Status::Pending),
                    &status_column(Status::Running),
                ],
            )
            .await?;
        drop(client);
        let op = OrchestratorOp::SettleTakeover { lease_ttl_ms };
        let mut settled = Vec::new();
        for row in rows {
            let job = match decode_job_row(&row) {
                Ok(job) => job,
                Err(error) => {
                    tracing::error!(%error, "passing over a job whose record is corrupt");
                    continue;
                }
            };
            if attribution::settle_takeover(&job, now, lease_ttl_ms).is_none() {
                continue;
            }
            // Decided again under the row's lock: a renewal may have cleared it meanwhile.
            if let Ok(job) = self.transition(job.id, TransitionOp(&op)).await? {
                settled.push(job);
            }
        }
        Ok(settled)
    }

    async fn record_reprobe(
        &self,
        id: JobId,
        checkpoint: &Checkpoint,
        metadata: &MediaMetadata,
        changes: Vec<String>,
    ) -> StoreResult<Result<Job, Rejected>> {
        let now = Timestamp::now();
        transaction!(self, tx => {
            let mut job = tx.job_for_update(id).await?;
            machine::check_reprobe(&job).map_err(TxAbort::Rejected)?;
            tx.put_checkpoint(id, checkpoint).await?;
            tx.put_metadata(id, metadata).await?;
            let reprobed = EventKind::Reprobed {
                changes: changes.clone(),
            };
            tx.append_events(&mut job, vec![reprobed], now).await?;
            tx.put_job(Some(job.status), &job).await?;
            Ok(job)
        })
    }
}
