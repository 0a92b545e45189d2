//! `narra prune`: removing the state of finished jobs that nobody has touched for a while, so the
//! state store does not grow with every job ever ingested.
//!
//! [`plan`] only reads: the succeeded, failed or cancelled jobs (never pending or running) whose
//! `updated_at` is older than the cutoff. [`execute`] prunes them through
//! `MaintenanceStore::prune_jobs`, which decides again for each job in that job's own transaction
//! (`machine::check_prunable`: a job retried since the plan is left alone), and records the run as
//! one incident (action `pruned_jobs`).
//!
//! What stays: every object in storage (blobs and each job's manifest, `jobs/<id>/manifest.json`),
//! and in the store a tombstone per pruned job (`PrunedJob`) under which its blob references stay,
//! so `cleanup` never takes a pruned job's media for an orphan. What goes: the job record and its
//! key, checkpoints, events and event summary, metadata record, logs and progress. A pruned job's
//! key is free again: submitting the same source creates a new job, whose store step finds every
//! blob already stored with its hash and does not upload it again. Its scratch directory, if it
//! left one, belongs to no job any more: `cleanup` lists it as stale.
//!
//! Prune never deletes an object: only `engine::cleanup` does.

use crate::engine::Engine;
use crate::engine::orchestrator::EngineError;
use crate::model::job::{JobId, Status, Timestamp};
use crate::model::prune::{PRUNABLE, PruneOptions, PrunePlan, Pruned, duration_text};
use crate::store::NewIncident;

/// How many jobs one call of `prune_jobs` takes (one flush each).
pub const PRUNE_BATCH_MAX: usize = 500;

/// Incident ids listed in full up to this many; beyond, the count says the rest.
const IDS_IN_INCIDENT_MAX: usize = 20;

fn statuses(options: &PruneOptions) -> Result<Vec<Status>, EngineError> {
    if options.statuses.is_empty() {
        return Ok(PRUNABLE.to_vec());
    }
    let mut statuses = Vec::new();
    for status in &options.statuses {
        if !PRUNABLE.contains(status) {
            return Err(EngineError::Usage(format!(
                "a {status} job is never pruned: --status takes succeeded, failed or cancelled"
            )));
        }
        if !statuses.contains(status) {
            statuses.push(*status);
        }
    }
    Ok(statuses)
}

/// The jobs a prune at `now` would remove. Reads only.
pub async fn plan(
    engine: &Engine,
    options: &PruneOptions,
    now: Timestamp,
) -> Result<PrunePlan, EngineError> {
    let statuses = statuses(options)?;
    let cutoff = Timestamp(
        now.0
            .saturating_sub(i64::try_from(options.older_than_ms).unwrap_or(i64::MAX)),
    );
    let mut jobs = Vec::new();
    for status in &statuses {
        jobs.extend(
            engine
                .all_jobs(Some(*status))
                .await?
                .into_iter()
                .filter(|job| job.updated_at < cutoff),
        );
    }
    jobs.sort_by_key(|job| job.id);
    Ok(PrunePlan {
        cutoff,
        statuses,
        jobs,
    })
}

/// Prunes what [`plan`] lists at `now`, and records the run in the incident log by `actor`.
pub async fn execute(
    engine: &Engine,
    options: &PruneOptions,
    actor: &str,
    now: Timestamp,
) -> Result<Pruned, EngineError> {
    let plan = plan(engine, options, now).await?;
    let ids: Vec<JobId> = plan.jobs.iter().map(|job| job.id).collect();
    let mut pruned = Vec::new();
    let mut refused = Vec::new();
    for chunk in ids.chunks(PRUNE_BATCH_MAX) {
        let outcomes = engine.store.prune_jobs(chunk, plan.cutoff).await?;
        for (id, outcome) in chunk.iter().zip(outcomes) {
            match outcome {
                Ok(tombstone) => pruned.push(tombstone),
                Err(rejected) => refused.push((*id, rejected.to_string())),
            }
        }
    }
    let incident = if pruned.is_empty() {
        None
    } else {
        let mut listed: Vec<String> = pruned
            .iter()
            .take(IDS_IN_INCIDENT_MAX)
            .map(|tombstone| tombstone.id.to_string())
            .collect();
        if pruned.len() > IDS_IN_INCIDENT_MAX {
            listed.push(format!("and {} more", pruned.len() - IDS_IN_INCIDENT_MAX));
        }
        let reason = format!(
            "prune --older-than {}: removed the state of {} finished jobs ({}) last updated before {}: {}; their objects and manifests stay in storage, their blob references stay with their tombstones",
            duration_text(options.older_than_ms),
            pruned.len(),
            plan.statuses
                .iter()
                .map(|status| status.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            plan.cutoff.to_rfc3339(),
            listed.join(", "),
        );
        Some(
            engine
                .store
                .record_incident(NewIncident {
                    actor: actor.to_string(),
                    action: "pruned_jobs".to_string(),
                    job: match pruned.as_slice() {
                        [only] => Some(only.id),
                        _ => None,
                    },
                    key: None,
                    reason,
                })
                .await?,
        )
    };
    Ok(Pruned {
        plan,
        pruned,
        refused,
        incident,
    })
}
