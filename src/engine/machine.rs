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

use super::job::{
    ErrorInfo, EventKind, Job, JobId, Lease, LeaseToken, Phase, Status, Timestamp, WorkerId,
};

/// Transitions of the global status, made by the orchestrator alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrchestratorOp {
    /// pending -> running: a new lease with the next fencing token.
    Claim {
        worker_id: WorkerId,
        lease_ttl_ms: u64,
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
    /// running -> pending: the lease holder is gone (dead process, expired lease).
    Reclaim { reason: String },
}

impl OrchestratorOp {
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
    };
    Transition {
        job,
        events: vec![
            EventKind::Submitted { source, workflow },
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
    match op {
        OrchestratorOp::Claim {
            worker_id,
            lease_ttl_ms,
        } => {
            if job.status != Status::Pending {
                return Err(not_allowed());
            }
            next.fencing_token = job.fencing_token + 1;
            next.lease = Some(Lease {
                worker_id: worker_id.clone(),
                fencing_token: next.fencing_token,
                expires_at: now.plus_ms(*lease_ttl_ms),
            });
            next.attempts = job.attempts.saturating_add(1);
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
                events.push(EventKind::RetryRequested {
                    reason: reason.clone(),
                });
                set_status(&mut next, &mut events, Status::Pending, reason.clone());
            }
            _ => return Err(not_allowed()),
        },
        OrchestratorOp::Reingest => {
            if job.status != Status::Succeeded {
                return Err(not_allowed());
            }
            events.push(EventKind::RetryRequested {
                reason: "reingest".into(),
            });
            set_status(&mut next, &mut events, Status::Pending, "reingest".into());
        }
        OrchestratorOp::Reclaim { reason } => {
            if job.status != Status::Running {
                return Err(not_allowed());
            }
            set_status(&mut next, &mut events, Status::Pending, reason.clone());
        }
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

/// Checks a lease token against a job, for writes that are not state transitions (checkpoints).
pub fn check_lease(job: &Job, token: &LeaseToken) -> Result<(), Rejected> {
    check_token(job, token.fencing_token)
}

/// The one place a status changes. Leaving `running` clears the phase, the lease and any cancel
/// request in the same transition: the phase's life is bounded by `running`.
fn set_status(job: &mut Job, events: &mut Vec<EventKind>, to: Status, reason: String) {
    let from = job.status;
    job.status = to;
    events.push(EventKind::StatusChanged {
        from: Some(from),
        to,
        reason,
    });
    if to != Status::Running {
        if job.ingestion_phase.is_some() {
            events.push(EventKind::PhaseChanged {
                from: job.ingestion_phase,
                to: None,
            });
        }
        job.ingestion_phase = None;
        job.lease = None;
        job.cancel_requested = false;
    }
}
