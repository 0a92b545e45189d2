//! `narra health`: the runbook's escalation signals, computed from the state store and one storage
//! probe: hosts with repeated failures among recent failed jobs, storage reachability and storage
//! failures, stuck jobs (`engine::stuck`), and corruption (objects that did not read back, corrupt
//! artifacts cleanup removed). Each signal says whether it calls for escalation.
//!
//! Reads only: health never changes a job, an object or the incident log. The report and its
//! escalation rules are `model::health`'s.

use std::collections::BTreeMap;

use crate::engine::Engine;
use crate::engine::orchestrator::EngineError;
use crate::engine::stuck::stuck_jobs;
use crate::model::health::{
    CorruptionHealth, HealthOptions, HealthReport, StorageHealth, failing_hosts,
};
use crate::model::job::{Breaker, Incident, Job, JobId, Status, Timestamp};

/// The object key whose `stat` proves the storage backend answers; it need not exist.
pub const PROBE_KEY: &str = "jobs/.narra-health";

/// Error classes that say the storage backend failed (not the input).
pub const STORAGE_CLASSES: &[&str] = &["storage_unavailable", "storage_auth"];

/// Error classes that say stored bytes are not what was written.
pub const CORRUPTION_CLASSES: &[&str] = &["checksum_mismatch"];

fn classes_among(failed: &[Job], since: Timestamp, classes: &[&str]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for job in failed.iter().filter(|job| job.updated_at >= since) {
        if let Some(error) = &job.error
            && classes.contains(&error.class.as_str())
        {
            *counts.entry(error.class.clone()).or_default() += 1;
        }
    }
    counts
}

/// Cleanup's deletions of corrupt artifacts since `since` (its reasons start `cleanup: corrupt`).
fn corrupt_removals(incidents: &[Incident], since: Timestamp) -> usize {
    incidents
        .iter()
        .filter(|incident| {
            incident.at >= since
                && incident.action == "deleted_object"
                && incident.reason.starts_with("cleanup: corrupt")
        })
        .count()
}

/// Reads the signals and assesses them at `now`.
pub async fn assess(
    engine: &Engine,
    options: &HealthOptions,
    now: Timestamp,
) -> Result<HealthReport, EngineError> {
    let since =
        Timestamp(now.0.saturating_sub(
            i64::try_from(options.window_s.saturating_mul(1000)).unwrap_or(i64::MAX),
        ));
    let failed = engine.all_jobs(Some(Status::Failed)).await?;
    let failed_recently = failed.iter().filter(|job| job.updated_at >= since).count();
    let hosts = failing_hosts(&failed, since, options.host_failures_min);
    let (reachable, detail) = match engine.storage.stat(PROBE_KEY).await {
        Ok(_) => (true, format!("{}: reachable", engine.storage.uri())),
        Err(error) => (
            false,
            format!("{} does not answer: {error}", engine.storage.uri()),
        ),
    };
    let storage = StorageHealth {
        reachable,
        detail,
        failures: classes_among(&failed, since, STORAGE_CLASSES),
    };
    let stuck = stuck_jobs(engine, options.stuck_after_s, now).await?;
    let incidents = engine.store.incidents().await?;
    let corruption = CorruptionHealth {
        failures: classes_among(&failed, since, CORRUPTION_CLASSES),
        corrupt_artifacts_removed: corrupt_removals(&incidents, since),
    };
    let crash_loops = failed
        .iter()
        .filter(|job| {
            job.updated_at >= since
                && job.error.as_ref().is_some_and(|error| {
                    error.class == crate::model::ErrorClass::CrashLoop.as_str()
                })
        })
        .map(|job| job.id)
        .collect();
    let breakers = engine
        .store
        .hosts()
        .await?
        .into_iter()
        .filter(|host| host.breaker != Breaker::Closed)
        .collect();
    let waiting_for_scratch = engine
        .all_jobs(Some(Status::Pending))
        .await?
        .into_iter()
        .filter(|job| {
            job.error
                .as_ref()
                .is_some_and(|error| error.class == crate::model::ErrorClass::ScratchLow.as_str())
        })
        .collect();
    let mut workers = BTreeMap::<String, Vec<JobId>>::new();
    for job in engine.all_jobs(Some(Status::Running)).await? {
        if let Some(lease) = &job.lease {
            workers
                .entry(lease.worker_id.to_string())
                .or_default()
                .push(job.id);
        }
    }
    let fenced_writes = incidents
        .iter()
        .filter(|incident| {
            incident.at >= since && incident.action == crate::engine::orchestrator::FENCED_WRITE
        })
        .count();
    Ok(HealthReport {
        options: options.clone(),
        workers,
        fenced_writes,
        failed_recently,
        hosts,
        storage,
        stuck,
        corruption,
        crash_loops,
        breakers,
        waiting_for_scratch,
    })
}
