//! The job state machine: which transitions exist, who may make them, and what each one writes.
//!
//! Pure functions, no I/O: a store reads the job, calls [`apply_orchestrator`] or [`apply_worker`],
//! and writes the returned job and events in one transaction. Property tests drive these functions
//! directly, without a disk, a network or ffmpeg.
//!
//! The ownership rule lives in the two operation types: [`OrchestratorOp`] moves `status` and has no
//! way to name a phase; [`WorkerOp`] sets `ingestion_phase` and has no way to name a status. Leaving
//! `running` clears the phase and the lease in the same transition, so no job ever has a phase while
//! it is not running.

use crate::model::attribution::{self, DeathSeen, Holding};
use crate::model::job::{
    Attribution, Checkpoint, ErrorInfo, EventKind, Job, JobId, JobProgress, Lease, LeaseToken,
    Location, Phase, ProgressMarker, Status, Timestamp, WorkerId,
};

/// How many deaths at the same [`ProgressMarker`], each attributed to the job
/// (`model::attribution`), quarantine it as `crash_loop`.
pub const CRASH_LOOP_DEATHS: u32 = 3;

/// Whether a job that failed with `error` may succeed on a later run without anyone changing
/// anything: its stored class is one `ErrorClass::retryable` admits. An unknown class (one a later
/// narra wrote, say) counts as permanent, so it is never retried in bulk by mistake.
pub fn is_transient_failure(error: Option<&ErrorInfo>) -> bool {
    error
        .and_then(|error| crate::model::ErrorClass::from_name(&error.class))
        .is_some_and(crate::model::ErrorClass::retryable)
}

/// Transitions of the global status, made by the orchestrator alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrchestratorOp {
    /// pending -> running: a new lease with the next fencing token, for a process that holds
    /// `holding` (`attribution::check_claim` decides whether it may).
    Claim {
        worker_id: WorkerId,
        lease_ttl_ms: u64,
        holding: Holding,
    },
    /// running -> running: the lease holder extends its lease.
    RenewLease { token: u64, lease_ttl_ms: u64 },
    /// running -> succeeded.
    Complete { token: u64 },
    /// running -> failed, with the error.
    Fail { token: u64, error: ErrorInfo },
    /// pending|failed -> cancelled; on a running job, a request its process honours at the next
    /// step boundary with [`OrchestratorOp::ConfirmCancel`].
    Cancel,
    /// running -> cancelled, by the lease holder after it saw the cancel request.
    ConfirmCancel { token: u64 },
    /// failed|cancelled -> pending (the runbook's "Retry Job").
    Retry { reason: String },
    /// succeeded -> pending: run the workflow again; done steps are skipped.
    Reingest,
    /// running -> pending: the lease holder let go of the job (graceful shutdown) or is gone
    /// and no death is to be counted.
    Reclaim { reason: String },
    /// running -> pending for a job whose process died at `marker`: found running by a process
    /// that opened a store it holds alone, or with an expired lease in a fleet (`seen`). Whom the
    /// death is charged to is `attribution::reclaim`'s decision; the [`CRASH_LOOP_DEATHS`]th
    /// charged death in a row at the same marker fails the job with the class `crash_loop`.
    ReclaimOrphan {
        reason: String,
        marker: ProgressMarker,
        seen: DeathSeen,
    },
    /// A fleet's provisional takeover charge that two lease lengths left standing is charged
    /// (`attribution::settle_takeover`); a pending job that reaches [`CRASH_LOOP_DEATHS`] is
    /// quarantined. Refused when no charge is due.
    SettleTakeover { lease_ttl_ms: u64 },
    /// running -> pending after a transient failure, not to be claimed before `not_before`: an
    /// automatic retry. The error is kept as the job's last error.
    RetryLater {
        token: u64,
        error: ErrorInfo,
        not_before: Timestamp,
    },
    /// running -> pending without spending the attempt: the job's source host is held by its
    /// circuit breaker (or storing is paused, or scratch space is short), through no fault of the
    /// job's. With `until`, it is not claimed before then and `error` says why it waits.
    Hold {
        token: u64,
        reason: String,
        until: Option<(Timestamp, ErrorInfo)>,
    },
    /// succeeded|failed -> pending: `cleanup` removed artifacts the job's checkpoints name, so the
    /// job must run again to restore them (runbook step 5, "reset job status").
    Reset { reason: String },
    /// An operator's `narra reset`: running -> pending for a job whose lease expired (its holder is
    /// gone or stuck), or any running job with `force`; succeeded|failed -> pending as [`Reset`].
    /// The phase and lease are cleared in the same transition, like every move out of running.
    ///
    /// [`Reset`]: OrchestratorOp::Reset
    ResetByOperator { reason: String, force: bool },
}

impl OrchestratorOp {
    /// The reclaim of `job`, whose process died where the store found it: its phase, its
    /// `checkpoints` count and its step's last recorded `progress` (the marker the crash-loop rule
    /// counts deaths at).
    pub fn reclaim_orphan(
        job: &Job,
        reason: &str,
        checkpoints: usize,
        progress: Option<&JobProgress>,
        seen: DeathSeen,
    ) -> OrchestratorOp {
        OrchestratorOp::ReclaimOrphan {
            reason: reason.to_string(),
            marker: ProgressMarker {
                phase: job.ingestion_phase,
                checkpoints: u32::try_from(checkpoints).unwrap_or(u32::MAX),
                bytes_done: progress.map_or(0, |progress| progress.bytes_done),
            },
            seen,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            OrchestratorOp::Claim { .. } => "claim",
            OrchestratorOp::RenewLease { .. } => "renew_lease",
            OrchestratorOp::Complete { .. } => "complete",
            OrchestratorOp::Fail { .. } => "fail",
            OrchestratorOp::Cancel => "cancel",
            OrchestratorOp::ConfirmCancel { .. } => "confirm_cancel",
            OrchestratorOp::Retry { .. } => "retry",
            OrchestratorOp::Reingest => "reingest",
            OrchestratorOp::Reclaim { .. } => "reclaim",
            OrchestratorOp::ReclaimOrphan { .. } => "reclaim",
            OrchestratorOp::SettleTakeover { .. } => "settle_takeover",
            OrchestratorOp::RetryLater { .. } => "retry_later",
            OrchestratorOp::Hold { .. } => "hold",
            OrchestratorOp::Reset { .. } => "reset",
            OrchestratorOp::ResetByOperator { .. } => "reset",
        }
    }
}

/// Transitions of the ingestion phase, made by the worker holding the lease alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerOp {
    SetPhase { token: u64, phase: Phase },
}

/// Why a transition was refused. These are expected outcomes, not store failures, so callers get
/// them as the inner `Result` and cannot lose them to a `?`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("job {0} not found")]
    NotFound(JobId),
    #[error("job {job_id}: lease token {presented} is stale (current lease: {current:?})")]
    Fenced {
        job_id: JobId,
        presented: u64,
        current: Option<u64>,
    },
    #[error("job {job_id} is {status}: cannot {op}")]
    NotAllowed {
        job_id: JobId,
        op: &'static str,
        status: Status,
    },
    /// A running job whose lease has not expired: its holder may be working on it.
    #[error(
        "job {job_id} is running under a live lease (worker {worker_id}, expires {expires_at}): not reset without --force"
    )]
    LeaseLive {
        job_id: JobId,
        worker_id: String,
        expires_at: String,
    },
    /// The attribution rule keeps the job from starting in this process now
    /// (`attribution::check_claim`).
    #[error("job {job_id} does not start beside the {held} job(s) its process holds: {why}")]
    MustRunAlone {
        job_id: JobId,
        held: usize,
        why: &'static str,
    },
    /// `prune` found the job updated since its cutoff: it is no longer old enough.
    #[error("job {job_id} was updated at {updated_at}, after the cutoff {cutoff}: not pruned")]
    UpdatedSince {
        job_id: JobId,
        updated_at: String,
        cutoff: String,
    },
}

/// A job after a transition, with the events the transition appends.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub job: Job,
    pub events: Vec<EventKind>,
}

/// A freshly submitted job: pending, no phase, no lease.
pub fn new_job(
    id: JobId,
    key: String,
    source: String,
    workflow: String,
    priority: i32,
    now: Timestamp,
) -> Transition {
    let job = Job {
        id,
        key,
        source: source.clone(),
        workflow: workflow.clone(),
        status: Status::Pending,
        ingestion_phase: None,
        attempts: 0,
        error: None,
        created_at: now,
        updated_at: now,
        lease: None,
        fencing_token: 0,
        cancel_requested: false,
        events_next: 0,
        priority,
        not_before: None,
        crashes: None,
        attribution: Attribution::default(),
    };
    Transition {
        job,
        events: vec![
            // Events are shown to people: a signed URL's secrets stay out of them.
            EventKind::Submitted {
                source: crate::model::redact::redact_url(&source),
                workflow,
            },
            EventKind::StatusChanged {
                from: None,
                to: Status::Pending,
                reason: "submitted".to_string(),
            },
        ],
    }
}

pub fn apply_orchestrator(
    job: &Job,
    op: &OrchestratorOp,
    now: Timestamp,
) -> Result<Transition, Rejected> {
    let mut next = job.clone();
    let mut events = Vec::new();
    let not_allowed = || Rejected::NotAllowed {
        job_id: job.id,
        op: op.name(),
        status: job.status,
    };
    // The ops that apply to jobs in one status only.
    let only_from = |status: Status| {
        if job.status == status {
            Ok(())
        } else {
            Err(not_allowed())
        }
    };
    match op {
        OrchestratorOp::Claim {
            worker_id,
            lease_ttl_ms,
            holding,
        } => {
            only_from(Status::Pending)?;
            attribution::check_claim(holding, job)?;
            next.attribution = attribution::claimed(&job.attribution, holding);
            next.fencing_token = job.fencing_token + 1;
            next.lease = Some(Lease {
                worker_id: worker_id.clone(),
                fencing_token: next.fencing_token,
                expires_at: now.plus_ms(*lease_ttl_ms),
            });
            next.attempts = job.attempts.saturating_add(1);
            next.not_before = None;
            set_status(
                &mut next,
                &mut events,
                Status::Running,
                format!("claimed by {worker_id}"),
            );
        }
        OrchestratorOp::RenewLease {
            token,
            lease_ttl_ms,
        } => {
            check_token(job, *token)?;
            if let Some(lease) = next.lease.as_mut() {
                lease.expires_at = now.plus_ms(*lease_ttl_ms);
            }
        }
        OrchestratorOp::Complete { token } => {
            check_token(job, *token)?;
            next.error = None;
            set_status(
                &mut next,
                &mut events,
                Status::Succeeded,
                "all steps done".into(),
            );
        }
        OrchestratorOp::Fail { token, error } => {
            check_token(job, *token)?;
            next.error = Some(error.clone());
            set_status(
                &mut next,
                &mut events,
                Status::Failed,
                format!("{}: {}", error.class, error.message),
            );
        }
        OrchestratorOp::Cancel => match job.status {
            Status::Pending | Status::Failed => {
                set_status(
                    &mut next,
                    &mut events,
                    Status::Cancelled,
                    "cancelled".into(),
                );
            }
            Status::Running => {
                if !job.cancel_requested {
                    next.cancel_requested = true;
                    events.push(EventKind::CancelRequested);
                }
            }
            Status::Succeeded | Status::Cancelled => return Err(not_allowed()),
        },
        OrchestratorOp::ConfirmCancel { token } => {
            check_token(job, *token)?;
            if !job.cancel_requested {
                return Err(not_allowed());
            }
            set_status(
                &mut next,
                &mut events,
                Status::Cancelled,
                "cancelled at a step boundary".into(),
            );
        }
        OrchestratorOp::Retry { reason } => match job.status {
            Status::Failed | Status::Cancelled => {
                request_retry(&mut next, &mut events, Status::Pending, reason);
            }
            _ => return Err(not_allowed()),
        },
        OrchestratorOp::Reingest => {
            only_from(Status::Succeeded)?;
            request_retry(&mut next, &mut events, Status::Pending, "reingest");
        }
        OrchestratorOp::Reclaim { reason } => {
            only_from(Status::Running)?;
            // A cancel asked of a job whose process then died is honoured, not forgotten.
            if job.cancel_requested {
                cancel_as_asked(&mut next, &mut events, reason);
            } else {
                set_status(&mut next, &mut events, Status::Pending, reason.clone());
            }
        }
        OrchestratorOp::ReclaimOrphan {
            reason,
            marker,
            seen,
        } => {
            only_from(Status::Running)?;
            let reclaimed = attribution::reclaim(job, *marker, *seen, now);
            next.crashes = reclaimed.crashes;
            next.attribution = reclaimed.attribution;
            let why = if reclaimed.charged {
                "; the death is charged to it (it ran alone)"
            } else if next.attribution.takeover.is_some() {
                "; the death is charged only if its holder never comes back"
            } else {
                "; a suspect: its process held other jobs, so it runs alone until its next checkpoint"
            };
            if job.cancel_requested {
                cancel_as_asked(&mut next, &mut events, reason);
            } else if !quarantine(&mut next, &mut events) {
                set_status(
                    &mut next,
                    &mut events,
                    Status::Pending,
                    format!("{reason}{why}"),
                );
            }
        }
        OrchestratorOp::SettleTakeover { lease_ttl_ms } => {
            let Some((settled, _)) = attribution::settle_takeover(job, now, *lease_ttl_ms) else {
                return Err(not_allowed());
            };
            next = settled;
            // A running job's holder is working on it: it is quarantined at its next charged
            // death, not under its holder's feet.
            if job.status == Status::Pending {
                quarantine(&mut next, &mut events);
            }
        }
        OrchestratorOp::RetryLater {
            token,
            error,
            not_before,
        } => {
            check_token(job, *token)?;
            next.error = Some(error.clone());
            set_status(
                &mut next,
                &mut events,
                Status::Pending,
                format!(
                    "{}: {}; retried automatically after {}",
                    error.class,
                    error.message,
                    not_before.to_rfc3339()
                ),
            );
            next.not_before = Some(*not_before);
        }
        OrchestratorOp::Hold {
            token,
            reason,
            until,
        } => {
            check_token(job, *token)?;
            // The claim that started this run is given back: holding spends no attempt.
            next.attempts = job.attempts.saturating_sub(1);
            set_status(&mut next, &mut events, Status::Pending, reason.clone());
            if let Some((not_before, error)) = until {
                next.not_before = Some(*not_before);
                next.error = Some(error.clone());
            }
        }
        OrchestratorOp::Reset { reason } => match job.status {
            // A cancelled job stays cancelled: someone decided it should not run. A pending or
            // running job will verify its checkpoints anyway when it next runs.
            Status::Succeeded | Status::Failed => {
                request_retry(&mut next, &mut events, Status::Pending, reason);
            }
            _ => return Err(not_allowed()),
        },
        OrchestratorOp::ResetByOperator { reason, force } => match job.status {
            Status::Running => {
                if let Some(lease) = &job.lease
                    && lease.expires_at > now
                    && !force
                {
                    return Err(Rejected::LeaseLive {
                        job_id: job.id,
                        worker_id: lease.worker_id.0.clone(),
                        expires_at: lease.expires_at.to_rfc3339(),
                    });
                }
                // As with reclaim, a cancel asked of the job is honoured, not forgotten.
                let to = if job.cancel_requested {
                    Status::Cancelled
                } else {
                    Status::Pending
                };
                request_retry(&mut next, &mut events, to, reason);
            }
            Status::Succeeded | Status::Failed => {
                request_retry(&mut next, &mut events, Status::Pending, reason);
            }
            _ => return Err(not_allowed()),
        },
    }
    next.updated_at = now;
    Ok(Transition { job: next, events })
}

pub fn apply_worker(job: &Job, op: &WorkerOp, now: Timestamp) -> Result<Transition, Rejected> {
    match op {
        WorkerOp::SetPhase { token, phase } => {
            check_token(job, *token)?;
            let mut next = job.clone();
            let mut events = Vec::new();
            if job.ingestion_phase != Some(*phase) {
                next.ingestion_phase = Some(*phase);
                events.push(EventKind::PhaseChanged {
                    from: job.ingestion_phase,
                    to: Some(*phase),
                });
            }
            next.updated_at = now;
            Ok(Transition { job: next, events })
        }
    }
}

/// Checks that a worker's write is made under the job's current lease.
pub fn check_token(job: &Job, token: u64) -> Result<(), Rejected> {
    match &job.lease {
        Some(lease) if job.status == Status::Running && lease.fencing_token == token => Ok(()),
        lease => Err(Rejected::Fenced {
            job_id: job.id,
            presented: token,
            current: lease.as_ref().map(|lease| lease.fencing_token),
        }),
    }
}

/// Whether a job's records may be deleted (`narra delete`): never while it runs, since a worker
/// holds its lease and would write to a job that no longer exists.
pub fn check_deletable(job: &Job) -> Result<(), Rejected> {
    if job.status == Status::Running {
        return Err(Rejected::NotAllowed {
            job_id: job.id,
            op: "delete",
            status: job.status,
        });
    }
    Ok(())
}

/// Checks a lease token against a job, for writes that are not state transitions (checkpoints).
pub fn check_lease(job: &Job, token: &LeaseToken) -> Result<(), Rejected> {
    check_token(job, token.fencing_token)
}

/// What `narra retry --from STEP` writes besides the job: see [`retry_from`].
#[derive(Debug, Clone, PartialEq)]
pub struct RetryFrom {
    pub transition: Transition,
    /// Kept checkpoints that changed: a scratch output whose bytes a discarded checkpoint had
    /// stored now names that stored copy.
    pub repointed: Vec<Checkpoint>,
}

/// `narra retry --from STEP`: a succeeded, failed or cancelled job goes back to pending with the
/// checkpoints of `step` and every later step (`discarded`, in workflow order, those the job has)
/// gone. Each discard is recorded as `step_redone {checkpoint_discarded}`, so `audit` reads the
/// step's next run as a first run; then `retry_requested` and the status change, as a retry.
///
/// A finished job's scratch outputs are gone once its store step ran: until then the stored objects
/// stood for them through the store checkpoint, which this discards. So each scratch output of a
/// `kept` checkpoint whose bytes (size and blake3) a discarded checkpoint stored is re-pointed at
/// that object, with its change token: the next run verifies the kept step there and skips it,
/// instead of downloading again.
pub fn retry_from(
    job: &Job,
    step: &str,
    discarded: &[Checkpoint],
    kept: &[Checkpoint],
    reason: &str,
    now: Timestamp,
) -> Result<RetryFrom, Rejected> {
    if !job.status.is_terminal() {
        return Err(Rejected::NotAllowed {
            job_id: job.id,
            op: "retry --from",
            status: job.status,
        });
    }
    let mut next = job.clone();
    let mut events: Vec<EventKind> = discarded
        .iter()
        .map(|checkpoint| EventKind::StepRedone {
            step: checkpoint.step.clone(),
            cause: crate::model::history::CHECKPOINT_DISCARDED.to_string(),
            reason: format!("retry --from {step}: its checkpoint was discarded ({reason})"),
        })
        .collect();
    let what = if discarded.is_empty() {
        "no checkpoint to discard".to_string()
    } else {
        format!(
            "discarded the checkpoints of {}",
            discarded
                .iter()
                .map(|checkpoint| checkpoint.step.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let reason = format!("retry from {step} ({reason}): {what}");
    events.push(EventKind::RetryRequested {
        reason: reason.clone(),
    });
    set_status(&mut next, &mut events, Status::Pending, reason);
    next.updated_at = now;

    let stored: Vec<_> = discarded
        .iter()
        .flat_map(|checkpoint| &checkpoint.outputs)
        .filter(|output| matches!(output.location, Location::Object(_)))
        .collect();
    let mut repointed = Vec::new();
    for checkpoint in kept {
        let mut changed = checkpoint.clone();
        let mut any = false;
        for output in &mut changed.outputs {
            if !matches!(output.location, Location::Scratch(_)) {
                continue;
            }
            if let Some(copy) = stored
                .iter()
                .find(|copy| copy.blake3 == output.blake3 && copy.size == output.size)
            {
                output.location = copy.location.clone();
                output.change_token = copy.change_token.clone();
                any = true;
            }
        }
        if any {
            repointed.push(changed);
        }
    }
    Ok(RetryFrom {
        transition: Transition { job: next, events },
        repointed,
    })
}

/// Out of a job's `checkpoints`, those `retry --from step` discards (of `step` and of
/// `later_steps`, the steps after it in workflow order, in that order) and those it keeps (in the
/// order given): what [`retry_from`] takes.
pub fn split_for_retry_from(
    checkpoints: Vec<Checkpoint>,
    step: &str,
    later_steps: &[String],
) -> (Vec<Checkpoint>, Vec<Checkpoint>) {
    let order: Vec<&str> = std::iter::once(step)
        .chain(later_steps.iter().map(String::as_str))
        .collect();
    let (mut discarded, kept): (Vec<Checkpoint>, Vec<Checkpoint>) = checkpoints
        .into_iter()
        .partition(|checkpoint| order.contains(&checkpoint.step.as_str()));
    discarded.sort_by_key(|checkpoint| {
        order
            .iter()
            .position(|name| *name == checkpoint.step)
            .unwrap_or(order.len())
    });
    (discarded, kept)
}

/// Checks that `narra prune` may remove a job's records: it is finished (succeeded, failed or
/// cancelled: never pending or running) and was last updated before `cutoff`.
pub fn check_prunable(job: &Job, cutoff: Timestamp) -> Result<(), Rejected> {
    if !job.status.is_terminal() {
        return Err(Rejected::NotAllowed {
            job_id: job.id,
            op: "prune",
            status: job.status,
        });
    }
    if job.updated_at >= cutoff {
        return Err(Rejected::UpdatedSince {
            job_id: job.id,
            updated_at: job.updated_at.to_rfc3339(),
            cutoff: cutoff.to_rfc3339(),
        });
    }
    Ok(())
}

/// Checks that a job's metadata record may be replaced by `narra reprobe`: only while no worker
/// may be writing it, i.e. when the job is succeeded, failed or cancelled.
pub fn check_reprobe(job: &Job) -> Result<(), Rejected> {
    if job.status.is_terminal() {
        Ok(())
    } else {
        Err(Rejected::NotAllowed {
            job_id: job.id,
            op: "reprobe",
            status: job.status,
        })
    }
}

/// Fails `job` as `crash_loop` if its crash record reached [`CRASH_LOOP_DEATHS`]; whether it did.
fn quarantine(job: &mut Job, events: &mut Vec<EventKind>) -> bool {
    let Some(record) = job
        .crashes
        .filter(|record| record.count >= CRASH_LOOP_DEATHS)
    else {
        return false;
    };
    let error = ErrorInfo {
        class: crate::model::ErrorClass::CrashLoop.as_str().to_string(),
        message: format!(
            "the process running this job alone died {} times in a row {} with no progress in between; quarantined",
            record.count,
            marker_words(&record.marker)
        ),
    };
    job.error = Some(error.clone());
    set_status(
        job,
        events,
        Status::Failed,
        format!("{}: {}", error.class, error.message),
    );
    true
}

/// A death's marker in words, for the `crash_loop` message.
fn marker_words(marker: &ProgressMarker) -> String {
    let phase = marker.phase.map_or("before any phase", Phase::as_str);
    format!(
        "at the same point ({phase}, {} step checkpoint(s), byte offset {})",
        marker.checkpoints, marker.bytes_done
    )
}

/// The one place a status changes. Leaving `running` clears the phase, the lease and any cancel
/// request in the same transition: the phase's life is bounded by `running`.
/// A retry asked of the job (retry, reingest, reset): the request is recorded, then the job moves
/// to `to` for the same reason.
fn request_retry(job: &mut Job, events: &mut Vec<EventKind>, to: Status, reason: &str) {
    events.push(EventKind::RetryRequested {
        reason: reason.to_string(),
    });
    set_status(job, events, to, reason.to_string());
}

/// A running job that was asked to cancel and lost its process: the cancel is honoured.
fn cancel_as_asked(job: &mut Job, events: &mut Vec<EventKind>, reason: &str) {
    set_status(
        job,
        events,
        Status::Cancelled,
        format!("{reason}; it had been asked to cancel"),
    );
}

fn set_status(job: &mut Job, events: &mut Vec<EventKind>, to: Status, reason: String) {
    let from = job.status;
    if to != Status::Running {
        // The phase event comes first, so replaying the history one event at a time never shows a
        // phase beside a status other than running.
        if job.ingestion_phase.is_some() {
            events.push(EventKind::PhaseChanged {
                from: job.ingestion_phase,
                to: None,
            });
        }
        job.ingestion_phase = None;
        job.lease = None;
        job.cancel_requested = false;
        job.not_before = None;
        job.attribution.alone = false;
    }
    if to.is_terminal() {
        job.crashes = None;
        job.attribution = Attribution::default();
    }
    job.status = to;
    events.push(EventKind::StatusChanged {
        from: Some(from),
        to,
        reason,
    });
}

#[cfg(test)]
mod tests {
    //! A property test of the machine: random operation sequences, with tokens that are sometimes
    //! current and sometimes stale, never break the ownership rule or the fencing rule.

    use proptest::prelude::*;

    use super::*;

    // Guards the resume rule of backfills: only the classes `ErrorClass::retryable` admits count
    // as transient when read back from a stored job; an unknown class is permanent.
    #[test]
    fn transient_failures_are_the_retryable_classes_by_name() {
        for class in crate::model::ErrorClass::ALL {
            assert_eq!(
                crate::model::ErrorClass::from_name(class.as_str()),
                Some(class)
            );
            let error = ErrorInfo {
                class: class.as_str().to_string(),
                message: String::new(),
            };
            assert_eq!(
                is_transient_failure(Some(&error)),
                class.retryable(),
                "{class}"
            );
        }
        let unknown = ErrorInfo {
            class: "from_the_future".to_string(),
            message: String::new(),
        };
        assert!(!is_transient_failure(Some(&unknown)));
        assert!(!is_transient_failure(None));
    }

    fn finished(status: Status) -> Job {
        let mut job = new_job(
            JobId(7),
            "k".into(),
            "https://example.com/a.mp4".into(),
            "ingest".into(),
            0,
            Timestamp(1_000),
        )
        .job;
        job.status = status;
        job.events_next = 10;
        job
    }

    fn checkpoint(step: &str, outputs: Vec<crate::model::job::StepOutput>) -> Checkpoint {
        Checkpoint {
            step: step.into(),
            definition_hash: crate::model::job::Hash([1; 32]),
            input_hash: crate::model::job::Hash([2; 32]),
            outputs,
            recorded_at: Timestamp(2_000),
        }
    }

    fn output(name: &str, location: Location, byte: u8) -> crate::model::job::StepOutput {
        crate::model::job::StepOutput {
            name: name.into(),
            location,
            size: 10,
            blake3: crate::model::job::Hash([byte; 32]),
            change_token: crate::model::job::ChangeToken::None,
        }
    }

    // Guards what `retry --from` discards: the step's checkpoint and the later steps', in
    // workflow order whatever order they were read in; the earlier ones are kept as read.
    #[test]
    fn retry_from_discards_the_step_and_the_later_ones_in_workflow_order() {
        let read = ["store", "download", "extract", "notify"]
            .map(|step| checkpoint(step, Vec::new()))
            .to_vec();
        let later = vec!["store".to_string(), "notify".to_string()];
        let (discarded, kept) = split_for_retry_from(read, "extract", &later);
        let steps = |checkpoints: &[Checkpoint]| {
            checkpoints
                .iter()
                .map(|checkpoint| checkpoint.step.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(steps(&discarded), vec!["extract", "store", "notify"]);
        assert_eq!(steps(&kept), vec!["download"]);
    }

    // Guards `retry --from`: only finished jobs go back (never pending or running ones); each
    // discarded checkpoint is recorded as `checkpoint_discarded`, before the retry's own events;
    // and a kept scratch output whose bytes the discarded store step stored now names that object,
    // so the next run verifies it there instead of downloading again.
    #[test]
    fn retry_from_discards_later_checkpoints_and_repoints_scratch_outputs() {
        let video = output("video", Location::Scratch("/s/original".into()), 5);
        let platform = output(
            "platform_metadata",
            Location::Scratch("/s/info.json".into()),
            6,
        );
        let download = checkpoint("download", vec![video, platform]);
        let extract = checkpoint(
            "extract",
            vec![output("audio", Location::Scratch("/s/audio.m4a".into()), 7)],
        );
        let mut stored_video = output("video", Location::Object("blobs/05/v.mp4".into()), 5);
        stored_video.change_token = crate::model::job::ChangeToken::ETag("e".into());
        let store = checkpoint(
            "store",
            vec![
                stored_video,
                output("audio", Location::Object("blobs/07/a.m4a".into()), 7),
            ],
        );
        for status in [Status::Succeeded, Status::Failed, Status::Cancelled] {
            let job = finished(status);
            let decided = retry_from(
                &job,
                "extract",
                &[extract.clone(), store.clone()],
                std::slice::from_ref(&download),
                "by ops",
                Timestamp(3_000),
            )
            .expect("a finished job may be retried from a step");
            let next = &decided.transition.job;
            assert_eq!(next.status, Status::Pending);
            assert_eq!(next.updated_at, Timestamp(3_000));
            assert!(next.invariants_hold().is_ok());
            let names: Vec<&str> = decided
                .transition
                .events
                .iter()
                .map(EventKind::name)
                .collect();
            assert_eq!(
                names,
                vec![
                    "step_redone",
                    "step_redone",
                    "retry_requested",
                    "status_changed"
                ]
            );
            assert!(matches!(
                &decided.transition.events[0],
                EventKind::StepRedone { step, cause, .. }
                    if step == "extract" && cause == crate::model::history::CHECKPOINT_DISCARDED
            ));
            assert!(matches!(
                &decided.transition.events[2],
                EventKind::RetryRequested { reason } if reason.contains("extract, store")
            ));
            assert_eq!(decided.repointed.len(), 1);
            let repointed = &decided.repointed[0];
            assert_eq!(
                repointed.outputs[0].location,
                Location::Object("blobs/05/v.mp4".into())
            );
            assert_eq!(
                repointed.outputs[0].change_token,
                crate::model::job::ChangeToken::ETag("e".into())
            );
            // No stored copy of these bytes: it stays where it was.
            assert_eq!(repointed.outputs[1], download.outputs[1]);
        }
        for status in [Status::Pending, Status::Running] {
            let mut job = finished(status);
            if status == Status::Running {
                job.lease = Some(Lease {
                    worker_id: WorkerId("w".into()),
                    fencing_token: 0,
                    expires_at: Timestamp(9_000),
                });
            }
            assert!(matches!(
                retry_from(&job, "store", &[], &[], "x", Timestamp(3_000)),
                Err(Rejected::NotAllowed {
                    op: "retry --from",
                    ..
                })
            ));
        }
    }

    // Guards prune's rule: never a pending or running job, never one updated at or after the cutoff.
    #[test]
    fn only_finished_jobs_older_than_the_cutoff_are_prunable() {
        for status in Status::ALL {
            let job = finished(status);
            let older = check_prunable(&job, Timestamp(1_001));
            assert_eq!(older.is_ok(), status.is_terminal(), "{status}");
            if status.is_terminal() {
                assert!(matches!(
                    check_prunable(&job, Timestamp(1_000)),
                    Err(Rejected::UpdatedSince { .. })
                ));
            }
        }
    }

    /// Which token a generated write presents, resolved against the job when it is applied.
    #[derive(Debug, Clone)]
    enum TokenChoice {
        /// The job's latest token.
        Current,
        /// A token this many claims old.
        Stale(u64),
        /// A token no claim has handed out yet.
        Future,
    }

    #[derive(Debug, Clone)]
    enum GenOp {
        Claim,
        Renew(TokenChoice),
        Complete(TokenChoice),
        Fail(TokenChoice),
        Cancel,
        ConfirmCancel(TokenChoice),
        Retry,
        Reingest,
        Reclaim,
        SetPhase(TokenChoice, Phase),
        Reset,
        ResetByOperator(bool),
    }

    fn token_choice() -> impl Strategy<Value = TokenChoice> {
        prop_oneof![
            6 => Just(TokenChoice::Current),
            3 => (1..4u64).prop_map(TokenChoice::Stale),
            1 => Just(TokenChoice::Future),
        ]
    }

    fn phase() -> impl Strategy<Value = Phase> {
        prop_oneof![
            Just(Phase::Downloading),
            Just(Phase::Processing),
            Just(Phase::Storing),
        ]
    }

    fn gen_op() -> impl Strategy<Value = GenOp> {
        prop_oneof![
            4 => Just(GenOp::Claim),
            1 => token_choice().prop_map(GenOp::Renew),
            2 => token_choice().prop_map(GenOp::Complete),
            2 => token_choice().prop_map(GenOp::Fail),
            2 => Just(GenOp::Cancel),
            2 => token_choice().prop_map(GenOp::ConfirmCancel),
            2 => Just(GenOp::Retry),
            1 => Just(GenOp::Reingest),
            2 => Just(GenOp::Reclaim),
            5 => (token_choice(), phase()).prop_map(|(token, phase)| GenOp::SetPhase(token, phase)),
            1 => Just(GenOp::Reset),
            1 => any::<bool>().prop_map(GenOp::ResetByOperator),
        ]
    }

    fn resolve(job: &Job, choice: &TokenChoice) -> u64 {
        match choice {
            TokenChoice::Current => job.fencing_token,
            TokenChoice::Stale(age) => job.fencing_token.saturating_sub(*age),
            TokenChoice::Future => job.fencing_token + 1,
        }
    }

    /// The token a write carries, if it carries one.
    fn presented_token(op: &Op) -> Option<u64> {
        match op {
            Op::Orchestrator(
                OrchestratorOp::RenewLease { token, .. }
                | OrchestratorOp::Complete { token }
                | OrchestratorOp::Fail { token, .. }
                | OrchestratorOp::ConfirmCancel { token },
            )
            | Op::Worker(WorkerOp::SetPhase { token, .. }) => Some(*token),
            Op::Orchestrator(_) => None,
        }
    }

    #[derive(Debug)]
    enum Op {
        Orchestrator(OrchestratorOp),
        Worker(WorkerOp),
    }

    fn materialize(job: &Job, gen_op: &GenOp) -> Op {
        let worker_id = WorkerId("prop:1:1".to_string());
        match gen_op {
            GenOp::Claim => Op::Orchestrator(OrchestratorOp::Claim {
                worker_id,
                lease_ttl_ms: 1_000,
                holding: Holding::default(),
            }),
            GenOp::Renew(choice) => Op::Orchestrator(OrchestratorOp::RenewLease {
                token: resolve(job, choice),
                lease_ttl_ms: 1_000,
            }),
            GenOp::Complete(choice) => Op::Orchestrator(OrchestratorOp::Complete {
                token: resolve(job, choice),
            }),
            GenOp::Fail(choice) => Op::Orchestrator(OrchestratorOp::Fail {
                token: resolve(job, choice),
                error: ErrorInfo {
                    class: "prop".to_string(),
                    message: "generated failure".to_string(),
                },
            }),
            GenOp::Cancel => Op::Orchestrator(OrchestratorOp::Cancel),
            GenOp::ConfirmCancel(choice) => Op::Orchestrator(OrchestratorOp::ConfirmCancel {
                token: resolve(job, choice),
            }),
            GenOp::Retry => Op::Orchestrator(OrchestratorOp::Retry {
                reason: "prop retry".to_string(),
            }),
            GenOp::Reingest => Op::Orchestrator(OrchestratorOp::Reingest),
            GenOp::Reclaim => Op::Orchestrator(OrchestratorOp::Reclaim {
                reason: "prop reclaim".to_string(),
            }),
            GenOp::SetPhase(choice, phase) => Op::Worker(WorkerOp::SetPhase {
                token: resolve(job, choice),
                phase: *phase,
            }),
            GenOp::Reset => Op::Orchestrator(OrchestratorOp::Reset {
                reason: "prop reset".to_string(),
            }),
            GenOp::ResetByOperator(force) => Op::Orchestrator(OrchestratorOp::ResetByOperator {
                reason: "prop operator reset".to_string(),
                force: *force,
            }),
        }
    }

    /// (status, ingestion_phase) rebuilt from events alone, checking that each event's `from`
    /// matches what the events before it said.
    #[derive(Debug, Default)]
    struct Replay {
        status: Option<Status>,
        phase: Option<Phase>,
    }

    impl Replay {
        fn apply(&mut self, event: &EventKind) -> Result<(), TestCaseError> {
            match event {
                EventKind::StatusChanged { from, to, .. } => {
                    prop_assert_eq!(
                        *from,
                        self.status,
                        "status event's from disagrees with history"
                    );
                    self.status = Some(*to);
                }
                EventKind::PhaseChanged { from, to } => {
                    prop_assert_eq!(
                        *from,
                        self.phase,
                        "phase event's from disagrees with history"
                    );
                    self.phase = *to;
                }
                _ => {}
            }
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_operations_keep_the_ownership_and_fencing_rules(
            gen_ops in proptest::collection::vec(gen_op(), 0..80)
        ) {
            let now = Timestamp(1_700_000_000_000);
            let Transition { mut job, events } = new_job(
                JobId(1),
                "key".to_string(),
                "https://example.com/a.mp4".to_string(),
                "ingest".to_string(),
                0,
                now,
            );
            prop_assert!(job.invariants_hold().is_ok());
            let mut replay = Replay::default();
            for event in &events {
                replay.apply(event)?;
            }
            prop_assert_eq!((replay.status, replay.phase), (Some(job.status), job.ingestion_phase));

            for (index, gen_op) in gen_ops.iter().enumerate() {
                let now = now.plus_ms(u64::try_from(index).expect("small") * 10);
                let op = materialize(&job, gen_op);
                let live_token = match (&job.lease, job.status) {
                    (Some(lease), Status::Running) => Some(lease.fencing_token),
                    _ => None,
                };
                let result = match &op {
                    Op::Orchestrator(op) => apply_orchestrator(&job, op, now),
                    Op::Worker(op) => apply_worker(&job, op, now),
                };

                // A write under anything but the live lease's token is fenced.
                if let Some(token) = presented_token(&op)
                    && Some(token) != live_token
                {
                    prop_assert!(
                        matches!(result, Err(Rejected::Fenced { .. })),
                        "{:?} with token {} against live token {:?} gave {:?}",
                        op, token, live_token, result
                    );
                }

                let Ok(Transition { job: next, events }) = result else {
                    continue;
                };
                // An operator's reset without --force never takes a job from a live lease.
                if let Op::Orchestrator(OrchestratorOp::ResetByOperator { force: false, .. }) = &op
                    && job.status == Status::Running
                {
                    prop_assert!(
                        job.lease.as_ref().is_none_or(|lease| lease.expires_at <= now),
                        "reset a job under a live lease: {:?}", job.lease
                    );
                }
                prop_assert!(next.invariants_hold().is_ok(), "{:?}", next.invariants_hold());
                prop_assert!(
                    next.ingestion_phase.is_none() || next.status == Status::Running,
                    "phase {:?} with status {}", next.ingestion_phase, next.status
                );
                prop_assert!(next.fencing_token >= job.fencing_token, "fencing token went down");
                if matches!(op, Op::Orchestrator(OrchestratorOp::Claim { .. })) {
                    prop_assert_eq!(next.fencing_token, job.fencing_token + 1);
                    prop_assert_eq!(next.attempts, job.attempts + 1);
                } else {
                    prop_assert_eq!(next.fencing_token, job.fencing_token);
                }
                if matches!(op, Op::Worker(_)) {
                    prop_assert_eq!(next.status, job.status, "a worker op moved the status");
                }
                for event in &events {
                    replay.apply(event)?;
                }
                prop_assert_eq!(
                    (replay.status, replay.phase),
                    (Some(next.status), next.ingestion_phase),
                    "events do not replay to the job after {:?}", op
                );
                job = next;
            }
        }
    }
}
