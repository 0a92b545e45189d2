//! The incident log as people and programs see it (`narra incidents`): every action cleanup,
//! delete, prune, reset and the fencing guard took, oldest first.

use serde::Serialize;

use super::{Rfc3339, Text};
use crate::model::job::{Incident, JobId};

/// `{seq, at, actor, action, job, key, reason}`.
#[derive(Debug, Serialize)]
pub struct IncidentView<'a> {
    /// The position in the log, from 0.
    pub seq: u64,
    /// When the action was taken.
    pub at: Rfc3339,
    /// Who acted: `$USER`, `api`, or the worker a fenced write came from.
    pub actor: &'a str,
    /// `deleted_object`, `removed_scratch`, `reset_job`, `deleted_job`, `pruned_jobs`, ...
    pub action: &'a str,
    /// The job acted on; `null` when the action concerned no single job (an orphan blob, a prune of
    /// several).
    pub job: Option<Text<JobId>>,
    /// The object key or scratch path acted on.
    pub key: Option<&'a str>,
    /// Why, in words.
    pub reason: &'a str,
}

pub fn incident(incident: &Incident) -> IncidentView<'_> {
    IncidentView {
        seq: incident.seq,
        at: Rfc3339(incident.at),
        actor: &incident.actor,
        action: &incident.action,
        job: incident.job.map(Text),
        key: incident.key.as_deref(),
        reason: &incident.reason,
    }
}

pub fn incident_text(incident: &Incident) -> String {
    format!(
        "{}  {:<8} {:<15} job {}  {}  {}",
        incident.at.to_rfc3339(),
        incident.actor,
        incident.action,
        incident
            .job
            .map(|id| id.to_string())
            .unwrap_or_else(|| "-".into()),
        incident.key.as_deref().unwrap_or("-"),
        incident.reason
    )
}
