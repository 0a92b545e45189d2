//! `OrchestratorStore` on sled: submissions (`model::submission` decides), claims, the transitions
//! of a job's status, host outcomes, reprobes and the reclaim of an orphan. Each is one
//! transaction and a flush before it returns.

use async_trait::async_trait;

use super::SledStore;
use super::keys::{
    TREE_CHECKPOINTS, TREE_JOBS, TREE_KEYS, TREE_PROGRESS, backfill_job_key, checkpoint_key,
    job_id_in,
};
use super::tx::{Tx, TxResult, encode_in_tx, reject, store_abort};
use crate::model::attribution::DeathSeen;
use crate::model::claims as claims_model;
use crate::model::claims::Claimant;
use crate::model::job::{
    Backfill, BackfillId, Checkpoint, EventKind, Job, JobId, JobProgress, LeaseToken,
    MediaMetadata, Timestamp, WorkerId,
};
use crate::model::machine::{OrchestratorOp, Rejected};
use crate::model::records::STORE_STEP;
use crate::model::scheduling::{HostOutcome, OutcomeVerdict, SchedulingPolicy};
use crate::model::{machine, scheduling, submission};
use crate::store::{
    BatchOptions, ClaimNext, ClaimRequest, JobReader, OrchestratorStore, Resubmit, StoreError,
    StoreResult, SubmitOutcome, SubmitRequest, Submitted, TransitionOp, claims, codec, submit,
};

/// One submission inside a transaction, for `submit` and `submit_batch`: `model::submission`
/// decides, this reads the key's job and writes what it returns.
pub(super) fn submit_in_tx(
    tx: &Tx<'_>,
    request: &SubmitRequest,
    rule: Resubmit,
    now: Timestamp,
) -> TxResult<Submitted> {
    let key = request.key.as_bytes();
    let Some(id_bytes) = tx.keys.get(key)? else {
        let job = tx.write_transition(None, submission::create(request, now), now)?;
        tx.keys.insert(key, &job.id.to_bytes()[..])?;
        return Ok(Submitted {
            job,
            outcome: SubmitOutcome::Created,
        });
    };
    let id = job_id_in(TREE_KEYS, key, &id_bytes).map_err(store_abort)?;
    let Some(job) = tx.job(id)? else {
        return Err(store_abort(StoreError::corrupt(
            TREE_KEYS,
            key,
            format!("key names job {id}, which does not exist"),
        )));
    };
    match submission::resubmit(&job, request, rule, now).map_err(|refused| {
        store_abort(StoreError::corrupt(
            TREE_JOBS,
            &id.to_bytes(),
            refused.to_string(),
        ))
    })? {
        None => Ok(Submitted {
            job,
            outcome: SubmitOutcome::Existing,
        }),
        Some(resubmission) => Ok(Submitted {
            job: tx.write_transition(Some(&job), resubmission.transition, now)?,
            outcome: resubmission.outcome,
        }),
    }
}

#[async_trait]
impl OrchestratorStore for SledStore {
    /// Transaction, flush, and the log bound.
    async fn transition(
        &self,
        id: JobId,
        op: TransitionOp<'_>,
    ) -> StoreResult<Result<Job, Rejected>> {
        let op = op.op();
        let now = Timestamp::now();
        let outcome = self.transact(|tx| {
            let job = tx.existing_job(id)?;
            let transition = machine::apply_orchestrator(&job, op, now).map_err(reject)?;
            tx.write_transition(Some(&job), transition, now)
        })?;
        let job = match outcome {
            Ok(job) => job,
            Err(rejected) => return Ok(Err(rejected)),
        };
        self.flush().await?;
        tracing::debug!(job_id = %id, op = op.name(), status = %job.status, "job transition");
        if job.status.is_terminal() {
            self.trim_logs_best_effort(id);
        }
        Ok(Ok(job))
    }

    async fn submit(&self, request: &SubmitRequest) -> StoreResult<Submitted> {
        let now = Timestamp::now();
        let outcome = self.transact(|tx| submit_in_tx(tx, request, Resubmit::default(), now))?;
        let submitted = submit::one(outcome, TREE_KEYS, request)?;
        // Also for an existing job: another caller may have committed it and not yet flushed, and
        // this call is about to acknowledge it. A flush with nothing to write returns at once.
        self.flush().await?;
        tracing::debug!(
            job_id = %submitted.job.id,
            outcome = ?submitted.outcome,
            "job submitted"
        );
        Ok(submitted)
    }

    async fn submit_batch(
        &self,
        requests: &[SubmitRequest],
        options: &BatchOptions,
    ) -> StoreResult<Vec<Submitted>> {
        let submitted = submit::in_chunks(requests, TREE_KEYS, |chunk, now| {
            std::future::ready(
                self.transact_with(&self.backfill_jobs, |tx, backfill_jobs| {
                    let mut chunk_submitted = Vec::with_capacity(chunk.len());
                    for request in chunk {
                        let one = submit_in_tx(tx, request, options.resubmit, now)?;
                        if let Some(backfill) = options.backfill {
                            backfill_jobs
                                .insert(&backfill_job_key(backfill, one.job.id)[..], Vec::new())?;
                        }
                        chunk_submitted.push(one);
                    }
                    Ok(chunk_submitted)
                }),
            )
        })
        .await?;
        // One flush for the whole batch, before any of it is acknowledged (as `submit` does for
        // one request, existing jobs included).
        self.flush().await?;
        tracing::debug!(requests = requests.len(), "batch submitted");
        Ok(submitted)
    }

    async fn open_backfill(&self, manifest: &str) -> StoreResult<Backfill> {
        let _one_at_a_time = self.backfill_lock.lock().await;
        for backfill in self.backfills().await? {
            if backfill.manifest == manifest {
                return Ok(backfill);
            }
        }
        let backfill = Backfill {
            id: BackfillId::new(),
            manifest: manifest.to_string(),
            created_at: Timestamp::now(),
        };
        self.backfills
            .insert(backfill.id.to_bytes(), codec::encode(&backfill)?)?;
        self.flush().await?;
        tracing::info!(backfill_id = %backfill.id, manifest, "backfill recorded");
        Ok(backfill)
    }

    async fn claim_next(&self, request: &ClaimRequest<'_>) -> StoreResult<ClaimNext> {
        let claimed = {
            let _one_scheduler = self.schedule_lock.lock().await;
            claims::claim_next(self, request, Timestamp::now()).await?
        };
        if let ClaimNext::Claimed(job, _) = &claimed {
            self.flush().await?;
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
        let claimant = Claimant::new(worker_id, lease_ttl_ms, &self.read_running_jobs()?);
        let now = Timestamp::now();
        let outcome = self
            .transact_durably(|tx| tx.claim(id, &claimant, now))
            .await?;
        Ok(outcome.map(claims_model::with_lease))
    }

    async fn retry_from(
        &self,
        id: JobId,
        step: &str,
        later_steps: &[String],
        reason: &str,
    ) -> StoreResult<Result<Job, Rejected>> {
        // No iterator is open while the transaction runs (see `ClaimScan for SledStore`): the keys
        // are read first. Only a finished job passes the machine, and a finished job gets no new
        // checkpoint, so the list cannot go stale; each checkpoint is read again inside.
        let checkpoint_keys = self.checkpoint_keys(id)?;
        let now = Timestamp::now();
        let outcome = self.transact(|tx| {
            let job = tx.existing_job(id)?;
            let mut checkpoints: Vec<Checkpoint> = Vec::new();
            for key in &checkpoint_keys {
                let Some(bytes) = tx.checkpoints.get(key)? else {
                    continue;
                };
                checkpoints
                    .push(codec::decode(TREE_CHECKPOINTS, key, &bytes).map_err(store_abort)?);
            }
            let (discarded, kept) = machine::split_for_retry_from(checkpoints, step, later_steps);
            let decision =
                machine::retry_from(&job, step, &discarded, &kept, reason, now).map_err(reject)?;
            for checkpoint in &discarded {
                if checkpoint.step == STORE_STEP {
                    // The index follows the store checkpoint, in the same transaction.
                    tx.replace_blob_refs(id, Some(checkpoint), None)?;
                }
                tx.checkpoints
                    .remove(checkpoint_key(id, &checkpoint.step))?;
            }
            for checkpoint in &decision.repointed {
                tx.checkpoints.insert(
                    checkpoint_key(id, &checkpoint.step),
                    encode_in_tx(checkpoint)?,
                )?;
            }
            tx.write_transition(Some(&job), decision.transition, now)
        })?;
        if outcome.is_ok() {
            self.flush().await?;
            tracing::info!(job_id = %id, step, "retry from a step: later checkpoints discarded");
        }
        Ok(outcome)
    }

    async fn record_reprobe(
        &self,
        id: JobId,
        checkpoint: &Checkpoint,
        metadata: &MediaMetadata,
        changes: Vec<String>,
    ) -> StoreResult<Result<Job, Rejected>> {
        let now = Timestamp::now();
        self.transact_durably(|tx| {
            let mut job = tx.existing_job(id)?;
            machine::check_reprobe(&job).map_err(reject)?;
            tx.checkpoints.insert(
                checkpoint_key(id, &checkpoint.step),
                encode_in_tx(checkpoint)?,
            )?;
            tx.metadata
                .insert(&id.to_bytes()[..], encode_in_tx(metadata)?)?;
            let reprobed = EventKind::Reprobed {
                changes: changes.clone(),
            };
            tx.append_events(&mut job, vec![reprobed], now)?;
            tx.put_job(Some(job.status), &job)?;
            Ok(job)
        })
        .await
    }

    async fn reclaim_orphan(&self, id: JobId, reason: &str) -> StoreResult<Result<Job, Rejected>> {
        // Where the job was when its process died. Nothing writes to an orphan while its
        // reclaim is decided: its process is gone, and this process holds the store alone.
        let Some(job) = self.read_job(id)? else {
            return Ok(Err(Rejected::NotFound(id)));
        };
        let checkpoints = self.checkpoints.scan_prefix(id.to_bytes()).keys().count();
        let progress = self
            .progress
            .get(id.to_bytes())?
            .map(|bytes| codec::decode::<JobProgress>(TREE_PROGRESS, &id.to_bytes(), &bytes))
            .transpose()?;
        // This process holds the store alone: the job's process is certainly gone.
        let op = OrchestratorOp::reclaim_orphan(
            &job,
            reason,
            checkpoints,
            progress.as_ref(),
            DeathSeen::Certain,
        );
        self.transition(id, TransitionOp(&op)).await
    }

    async fn record_host_outcome(
        &self,
        host: &str,
        job: JobId,
        outcome: &HostOutcome,
        policy: &SchedulingPolicy,
    ) -> StoreResult<OutcomeVerdict> {
        let _one_scheduler = self.schedule_lock.lock().await;
        let before = self.read_host(host)?;
        let update = scheduling::outcome_update(
            before.as_ref(),
            host,
            job,
            outcome,
            policy,
            Timestamp::now(),
        );
        if let Some(state) = &update.state {
            self.hosts.insert(host.as_bytes(), codec::encode(state)?)?;
            // The job's own transition follows and flushes; an opened breaker is flushed now.
            if update.verdict.opened {
                self.flush().await?;
            }
        }
        Ok(update.verdict)
    }
}
