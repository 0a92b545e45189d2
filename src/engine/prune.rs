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
use crate::model::job::{Incident, Job, JobId, PrunedJob, Status, Timestamp};
use crate::store::{JobFilter, NewIncident};

/// The statuses a job may be pruned in.
pub const PRUNABLE: [Status; 3] = [Status::Succeeded, Status::Failed, Status::Cancelled];

/// How many jobs one call of `prune_jobs` takes (one flush each).
pub const PRUNE_BATCH_MAX: usize = 500;

/// Incident ids listed in full up to this many; beyond, the count says the rest.
const IDS_IN_INCIDENT_MAX: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneOptions {
    /// Jobs last updated longer ago than this are pruned.
    pub older_than_ms: u64,
    /// Which finished statuses; all of [`PRUNABLE`] when empty.
    pub statuses: Vec<Status>,
}

/// What a prune would remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrunePlan {
    /// Jobs last updated before this are pruned.
    pub cutoff: Timestamp,
    pub statuses: Vec<Status>,
    /// Oldest first.
    pub jobs: Vec<Job>,
}

/// What a confirmed prune did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pruned {
    pub plan: PrunePlan,
    pub pruned: Vec<PrunedJob>,
    /// Jobs of the plan left alone, and why (they changed since the plan was made).
    pub refused: Vec<(JobId, String)>,
    /// The incident that records the run, when it pruned anything.
    pub incident: Option<Incident>,
}

/// Parses a duration typed on the command line: a whole number and one unit, `d`, `h`, `m` or
/// `s` (`30d`, `12h`, `90m`, `45s`). Returns milliseconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let invalid = || {
        format!(
            "invalid duration {text:?}: a whole number and a unit, d, h, m or s (30d, 12h, 90m, 45s)"
        )
    };
    let split = text
        .find(|character: char| !character.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let unit_ms: u64 = match unit {
        "d" => 86_400_000,
        "h" => 3_600_000,
        "m" => 60_000,
        "s" => 1_000,
        _ => return Err(invalid()),
    };
    number
        .checked_mul(unit_ms)
        .ok_or_else(|| format!("duration {text:?} is too long"))
}

/// A duration in the largest unit that states it exactly (`30d`, `90m`).
pub fn duration_text(duration_ms: u64) -> String {
    if duration_ms == 0 {
        return "0s".to_string();
    }
    for (unit, unit_ms) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if duration_ms.is_multiple_of(unit_ms) {
            return format!("{}{unit}", duration_ms / unit_ms);
        }
    }
    format!("{duration_ms}ms")
}

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
        let filter = JobFilter {
            status: Some(*status),
            limit: usize::MAX,
        };
        jobs.extend(
            engine
                .store
                .jobs(&filter)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_days_hours_minutes_and_seconds() {
        assert_eq!(parse_duration("30d"), Ok(30 * 86_400_000));
        assert_eq!(parse_duration("12h"), Ok(12 * 3_600_000));
        assert_eq!(parse_duration("90m"), Ok(90 * 60_000));
        assert_eq!(parse_duration(" 45s "), Ok(45_000));
        assert_eq!(parse_duration("0s"), Ok(0));
        for bad in ["", "30", "d", "1.5d", "-1d", "30 d", "30w", "30dd"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} is refused");
        }
        assert!(parse_duration("99999999999999999d").is_err());
        assert_eq!(duration_text(30 * 86_400_000), "30d");
        assert_eq!(duration_text(90 * 60_000), "90m");
        assert_eq!(duration_text(45_000), "45s");
        assert_eq!(duration_text(1), "1ms");
        assert_eq!(duration_text(0), "0s");
    }
}
