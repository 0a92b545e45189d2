//! What `narra prune` shows: the finished jobs a prune would remove, or what it removed.

use serde::Serialize;

use super::job::{JobSummary, job_line, summary};
use super::{Rfc3339, Text};
use crate::model::job::{Job, JobId, Status};
use crate::model::prune::{PruneOptions, PrunePlan, Pruned, duration_text};

/// What a dry run and a confirmed prune both say: `{dry_run, older_than, cutoff, statuses,
/// count}`.
#[derive(Debug, Serialize)]
pub struct PruneHead {
    /// `true` when nothing was changed: the jobs listed would be pruned.
    pub dry_run: bool,
    /// The age asked for, in the largest unit that states it (`30d`).
    pub older_than: String,
    /// Jobs last updated before this are pruned.
    pub cutoff: Rfc3339,
    /// The finished statuses pruned: `succeeded`, `failed`, `cancelled`.
    pub statuses: Vec<&'static str>,
    /// Jobs listed (a dry run) or pruned.
    pub count: usize,
}

fn head(plan: &PrunePlan, options: &PruneOptions, dry_run: bool, count: usize) -> PruneHead {
    PruneHead {
        dry_run,
        older_than: duration_text(options.older_than_ms),
        cutoff: Rfc3339(plan.cutoff),
        statuses: plan.statuses.iter().copied().map(Status::as_str).collect(),
        count,
    }
}

/// The dry run: the head, and the jobs with when they last changed.
#[derive(Debug, Serialize)]
pub struct PrunePlanView<'a> {
    /// `dry_run`, `older_than`, `cutoff`, `statuses` and `count`, at the top level.
    #[serde(flatten)]
    pub head: PruneHead,
    /// The jobs a confirmed prune would remove, oldest first.
    pub jobs: Vec<DatedSummary<'a>>,
}

/// A job's summary and when it last changed.
#[derive(Debug, Serialize)]
pub struct DatedSummary<'a> {
    /// The job's summary, its fields at the top level.
    #[serde(flatten)]
    pub summary: JobSummary<'a>,
    /// When the job record last changed: the age the cutoff is compared with.
    pub updated_at: Rfc3339,
}

fn dated(job: &Job) -> DatedSummary<'_> {
    DatedSummary {
        summary: summary(job),
        updated_at: Rfc3339(job.updated_at),
    }
}

pub fn prune_plan<'a>(plan: &'a PrunePlan, options: &PruneOptions) -> PrunePlanView<'a> {
    PrunePlanView {
        head: head(plan, options, true, plan.jobs.len()),
        jobs: plan.jobs.iter().map(dated).collect(),
    }
}

/// A confirmed prune: the head, the jobs pruned, those left alone and why, and the incident
/// that records the run.
#[derive(Debug, Serialize)]
pub struct PrunedView<'a> {
    /// `dry_run`, `older_than`, `cutoff`, `statuses` and `count`, at the top level.
    #[serde(flatten)]
    pub head: PruneHead,
    /// The ids of the jobs pruned: their records are gone, their objects and manifests stay.
    pub pruned: Vec<Text<JobId>>,
    /// Jobs of the plan left alone: they changed since it was made.
    pub refused: Vec<RefusedView<'a>>,
    /// The `seq` of the incident that records the run, when it pruned anything.
    pub incident: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct RefusedView<'a> {
    /// The id of the job left alone.
    pub id: Text<JobId>,
    /// Why it was left alone: what changed since the plan was made.
    pub reason: &'a str,
}

pub fn pruned<'a>(pruned: &'a Pruned, options: &PruneOptions) -> PrunedView<'a> {
    PrunedView {
        head: head(&pruned.plan, options, false, pruned.pruned.len()),
        pruned: pruned
            .pruned
            .iter()
            .map(|tombstone| Text(tombstone.id))
            .collect(),
        refused: pruned
            .refused
            .iter()
            .map(|(id, reason)| RefusedView {
                id: Text(*id),
                reason,
            })
            .collect(),
        incident: pruned.incident.as_ref().map(|incident| incident.seq),
    }
}

fn statuses_text(plan: &PrunePlan) -> String {
    plan.statuses
        .iter()
        .map(|status| status.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn prune_plan_text(plan: &PrunePlan, options: &PruneOptions) -> Vec<String> {
    let mut lines = vec![format!(
        "{} finished jobs ({}) last updated before {} would be pruned",
        plan.jobs.len(),
        statuses_text(plan),
        plan.cutoff.to_rfc3339()
    )];
    for job in &plan.jobs {
        lines.push(format!(
            "  {}  updated {}",
            job_line(job),
            job.updated_at.to_rfc3339()
        ));
    }
    if !plan.jobs.is_empty() {
        lines.push(format!(
            "dry run: nothing was changed. Their objects and manifests stay in storage either way. To prune them: narra prune --older-than {}{} --confirm",
            duration_text(options.older_than_ms),
            options
                .statuses
                .iter()
                .map(|status| format!(" --status {status}"))
                .collect::<String>()
        ));
    }
    lines
}

pub fn pruned_text(pruned: &Pruned) -> Vec<String> {
    let mut lines = Vec::new();
    for tombstone in &pruned.pruned {
        lines.push(format!(
            "  pruned {}  {}  updated {}",
            tombstone.id,
            tombstone.status,
            tombstone.updated_at.to_rfc3339()
        ));
    }
    for (id, reason) in &pruned.refused {
        lines.push(format!("  NOT PRUNED {id}: {reason}"));
    }
    lines.push(format!(
        "{} finished jobs ({}) last updated before {} pruned; their objects and manifests stay in storage; see `narra incidents`",
        pruned.pruned.len(),
        statuses_text(&pruned.plan),
        pruned.plan.cutoff.to_rfc3339()
    ));
    lines
}
