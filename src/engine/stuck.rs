//! Stuck jobs and bulk selections: `narra jobs --stuck` (running jobs whose lease expired or that
//! have not moved for a while), `narra reset` (the runbook's "manually reset job status"), and the
//! filters of `narra retry --status ...` and `narra cancel --status ...`.
//!
//! Whether a job is stuck is decided by `model::stuck::classify`, from what this module reads. A
//! reset goes through the machine's `ResetByOperator` transition (phase cleared in the same write)
//! and is logged in the incident log with who asked and why. This module never decides a
//! transition itself.

use crate::engine::Engine;
use crate::engine::orchestrator::EngineError;
use crate::model::job::{BackfillId, Job, JobId, Status, Timestamp};
use crate::model::machine::Rejected;
use crate::model::stuck::{StuckJob, classify};
use crate::store::NewIncident;

/// Every running job that is stuck at `now`, newest first.
pub async fn stuck_jobs(
    engine: &Engine,
    stuck_after_s: u64,
    now: Timestamp,
) -> Result<Vec<StuckJob>, EngineError> {
    let running = engine.all_jobs(Some(Status::Running)).await?;
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
        None => engine.all_jobs(selection.status).await?,
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
