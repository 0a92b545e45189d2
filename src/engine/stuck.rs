//! Stuck jobs and bulk selections: `narra jobs --stuck` (running jobs whose lease expired or that
//! have not moved for a while), `narra reset` (the runbook's "manually reset job status"), and the
//! filters of `narra retry --status ...` and `narra cancel --status ...`.
//!
//! Deciding whether a job is stuck ([`classify`]) is pure. A reset goes through the machine's
//! `ResetByOperator` transition (phase cleared in the same write) and is logged in the incident log
//! with who asked and why. This module never decides a transition itself.

use crate::engine::Engine;
use crate::engine::orchestrator::EngineError;
use crate::model::job::{BackfillId, Job, JobId, JobProgress, Status, Timestamp};
use crate::model::machine::Rejected;
use crate::store::{JobFilter, NewIncident};

/// How long a running job may go without progress before `jobs --stuck` lists it, by default.
pub const DEFAULT_STUCK_AFTER_S: u64 = 600;

/// Why a running job is listed as stuck.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StuckReason {
    /// Its lease expired at this time: the process holding it is gone or hung.
    LeaseExpired { expired_at: Timestamp },
    /// Nothing moved (no event, no step progress) since this time.
    NoProgress { since: Timestamp },
}

impl StuckReason {
    pub fn describe(&self) -> String {
        match self {
            StuckReason::LeaseExpired { expired_at } => {
                format!("lease expired at {}", expired_at.to_rfc3339())
            }
            StuckReason::NoProgress { since } => {
                format!("no progress since {}", since.to_rfc3339())
            }
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            StuckReason::LeaseExpired { .. } => "lease_expired",
            StuckReason::NoProgress { .. } => "no_progress",
        }
    }
}

/// A running job that looks stuck.
#[derive(Debug, Clone)]
pub struct StuckJob {
    pub job: Job,
    /// When anything last moved: the latest event or progress record.
    pub last_moved_at: Timestamp,
    pub reasons: Vec<StuckReason>,
}

/// Whether a running job is stuck at `now`. `last_event_at` is its latest event; lease renewals
/// write none, so a live worker that stopped making progress is still seen.
pub fn classify(
    job: &Job,
    last_event_at: Option<Timestamp>,
    progress: Option<&JobProgress>,
    stuck_after_ms: u64,
    now: Timestamp,
) -> Option<StuckJob> {
    if job.status != Status::Running {
        return None;
    }
    let last_moved_at = [
        Some(job.updated_at).filter(|_| last_event_at.is_none()),
        last_event_at,
        progress.map(|progress| progress.updated_at),
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or(job.updated_at);
    let mut reasons = Vec::new();
    match &job.lease {
        Some(lease) if lease.expires_at <= now => reasons.push(StuckReason::LeaseExpired {
            expired_at: lease.expires_at,
        }),
        Some(_) => {}
        // A running job always has a lease; one without is stuck by definition.
        None => reasons.push(StuckReason::LeaseExpired {
            expired_at: job.updated_at,
        }),
    }
    if last_moved_at.plus_ms(stuck_after_ms) <= now {
        reasons.push(StuckReason::NoProgress {
            since: last_moved_at,
        });
    }
    (!reasons.is_empty()).then(|| StuckJob {
        job: job.clone(),
        last_moved_at,
        reasons,
    })
}

/// Every running job that is stuck at `now`, newest first.
pub async fn stuck_jobs(
    engine: &Engine,
    stuck_after_s: u64,
    now: Timestamp,
) -> Result<Vec<StuckJob>, EngineError> {
    let running = engine
        .store
        .jobs(&JobFilter {
            status: Some(Status::Running),
            limit: usize::MAX,
        })
        .await?;
    let mut stuck = Vec::new();
    for job in running {
        let last_event_at = engine
            .store
            .events(job.id)
            .await?
            .last()
            .map(|event| event.at);
        let progress = engine.store.progress(job.id).await?;
        if let Some(found) = classify(
            &job,
            last_event_at,
            progress.as_ref(),
            stuck_after_s.saturating_mul(1000),
            now,
        ) {
            stuck.push(found);
        }
    }
    Ok(stuck)
}

/// `narra reset`: a job back to pending, refused for a running job with a live lease unless
/// `force`. The event and the incident log say who (`actor`) and why.
pub async fn reset_job(
    engine: &Engine,
    id: JobId,
    actor: &str,
    reason: Option<&str>,
    force: bool,
) -> Result<Result<Job, Rejected>, EngineError> {
    let why = reason.unwrap_or("manual reset");
    let reason = format!(
        "reset by {actor}{}: {why}",
        if force { " (forced)" } else { "" }
    );
    let reset = engine.store.reset_by_operator(id, &reason, force).await?;
    if reset.is_ok() {
        engine
            .store
            .record_incident(NewIncident {
                actor: actor.to_string(),
                action: "reset_job".to_string(),
                job: Some(id),
                key: None,
                reason,
            })
            .await?;
    }
    Ok(reset)
}

/// Which jobs a bulk `retry` or `cancel` acts on.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub status: Option<Status>,
    /// The error class of the job's last failure (`download_blocked`, ...).
    pub class: Option<String>,
    pub backfill: Option<BackfillId>,
}

impl Selection {
    pub fn is_empty(&self) -> bool {
        self.status.is_none() && self.class.is_none() && self.backfill.is_none()
    }
}

/// The jobs a selection names, newest first.
pub async fn select_jobs(engine: &Engine, selection: &Selection) -> Result<Vec<Job>, EngineError> {
    let jobs = match selection.backfill {
        Some(backfill) => {
            if !engine
                .store
                .backfills()
                .await?
                .iter()
                .any(|known| known.id == backfill)
            {
                return Err(EngineError::Usage(format!("backfill {backfill} not found")));
            }
            crate::engine::backfill::jobs_of_backfill(
                engine,
                backfill,
                selection.status,
                usize::MAX,
            )
            .await?
        }
        None => {
            engine
                .store
                .jobs(&JobFilter {
                    status: selection.status,
                    limit: usize::MAX,
                })
                .await?
        }
    };
    Ok(jobs
        .into_iter()
        .filter(|job| {
            selection.class.as_ref().is_none_or(|class| {
                job.error
                    .as_ref()
                    .is_some_and(|error| &error.class == class)
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::job::{Lease, WorkerId};

    fn running(lease_expires_at: i64, updated_at: i64) -> Job {
        let mut job = crate::model::machine::new_job(
            JobId(1),
            "key".into(),
            "http://example.com/a.mp4".into(),
            "ingest".into(),
            crate::model::job::PRIORITY_LIVE,
            Timestamp(0),
        )
        .job;
        job.status = Status::Running;
        job.updated_at = Timestamp(updated_at);
        job.lease = Some(Lease {
            worker_id: WorkerId("w".into()),
            fencing_token: 1,
            expires_at: Timestamp(lease_expires_at),
        });
        job
    }

    // Guards the two stuck rules: an expired lease, and no event or progress for the window, where
    // a step's progress (download, extract or store) counts as movement even when no event was
    // written.
    #[test]
    fn a_running_job_is_stuck_when_its_lease_expired_or_nothing_moved() {
        let live_and_moving = running(10_000, 0);
        assert!(
            classify(
                &live_and_moving,
                Some(Timestamp(5_000)),
                None,
                1_000,
                Timestamp(5_500)
            )
            .is_none()
        );

        let expired = classify(
            &running(1_000, 0),
            Some(Timestamp(1_500)),
            None,
            60_000,
            Timestamp(2_000),
        )
        .expect("stuck");
        assert_eq!(
            expired.reasons,
            vec![StuckReason::LeaseExpired {
                expired_at: Timestamp(1_000)
            }]
        );

        let idle = classify(
            &running(100_000, 0),
            Some(Timestamp(1_000)),
            None,
            1_000,
            Timestamp(3_000),
        )
        .expect("stuck");
        assert_eq!(
            idle.reasons,
            vec![StuckReason::NoProgress {
                since: Timestamp(1_000)
            }]
        );

        let progress = JobProgress {
            bytes_done: 10,
            bytes_total: None,
            rate_bytes_per_s: 1,
            updated_at: Timestamp(2_500),
        };
        assert!(
            classify(
                &running(100_000, 0),
                Some(Timestamp(1_000)),
                Some(&progress),
                1_000,
                Timestamp(3_000)
            )
            .is_none(),
            "step progress is movement"
        );
        let mut pending = running(0, 0);
        pending.status = Status::Pending;
        assert!(classify(&pending, None, None, 0, Timestamp(1)).is_none());
    }
}
