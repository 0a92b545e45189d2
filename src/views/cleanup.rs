//! What `narra cleanup` (runbook step 5), `GET /cleanup`, `POST /cleanup` and `narra delete` show:
//! the plan, what a confirmed plan did, and a takedown.

use serde::Serialize;

use super::{Text, ids};
use crate::model::cleanup::{
    CanonicalDeletion, CanonicalPlan, DEFAULT_MIN_AGE_S, Executed, Plan, Takedown,
};
use crate::model::job::JobId;
use crate::model::redact::redact_url;

/// The plan's canonical form (what its id hashes), its id, what it left alone, and each deletion's
/// reason in words.
#[derive(Debug, Serialize)]
pub struct PlanView<'a> {
    /// `format`, `deep`, `min_age_s`, `deletions`, `scratch` and `resets` (what the id hashes), at
    /// the top level.
    #[serde(flatten)]
    pub canonical: CanonicalPlan<'a, DeletionView<'a>>,
    /// What `--confirm` (`POST /cleanup`'s `plan_id`) repeats.
    pub id: &'a str,
    /// What was seen and left alone: young objects, cancelled jobs, ...
    pub notes: &'a [String],
}

#[derive(Debug, Serialize)]
pub struct DeletionView<'a> {
    /// `key`, `size`, `last_modified_ms`, `reason`, `found_blake3` and `jobs`, at the top level.
    #[serde(flatten)]
    pub canonical: CanonicalDeletion<'a>,
    /// Why the object is deleted, in words.
    pub message: String,
}

pub fn plan(plan: &Plan) -> PlanView<'_> {
    PlanView {
        canonical: plan.canonical_with(|deletion| DeletionView {
            canonical: CanonicalDeletion::of(deletion),
            message: deletion.message(),
        }),
        id: &plan.id,
        notes: &plan.notes,
    }
}

/// The plan for people: a section per kind of action, then what was left alone.
pub fn plan_text(plan: &Plan) -> Vec<String> {
    let mut lines = vec![format!(
        "cleanup plan {}  ({}, minimum age {} s)",
        plan.id,
        if plan.options.deep {
            "deep: every object re-hashed"
        } else {
            "shallow: size and change token"
        },
        plan.options.min_age_s
    )];
    let section = |lines: &mut Vec<String>, title: &str, items: Vec<String>| {
        lines.push(format!("{title} ({})", items.len()));
        for item in items {
            lines.push(format!("  {item}"));
        }
    };
    let of = |reason: &str| -> Vec<String> {
        plan.deletions
            .iter()
            .filter(|deletion| deletion.reason.as_str() == reason)
            .map(|deletion| format!("delete {}  {}", deletion.key, deletion.message()))
            .collect()
    };
    section(&mut lines, "corrupt artifacts", of("corrupt"));
    section(&mut lines, "orphan blobs", of("orphan"));
    section(&mut lines, "partial writes", of("partial"));
    section(
        &mut lines,
        "stale scratch",
        plan.scratch
            .iter()
            .map(|dir| {
                format!(
                    "remove {}  (job {})",
                    dir.path.display(),
                    dir.status.map(|status| status.as_str()).unwrap_or("gone")
                )
            })
            .collect(),
    );
    section(
        &mut lines,
        "jobs to reset to pending",
        plan.resets
            .iter()
            .map(|reset| {
                format!(
                    "reset {} ({})  {}",
                    reset.job_id, reset.status, reset.reason
                )
            })
            .collect(),
    );
    if !plan.notes.is_empty() {
        section(&mut lines, "left alone", plan.notes.clone());
    }
    lines
}

/// The line after a dry run: nothing to do, or the command that carries out exactly this plan.
pub fn dry_run_text(plan: &Plan) -> String {
    if plan.is_empty() {
        return format!("nothing to clean up (plan {})", plan.id);
    }
    format!(
        "dry run: nothing was changed. To carry out exactly this plan: narra cleanup{}{} --confirm {}",
        if plan.options.deep { " --deep" } else { "" },
        if plan.options.min_age_s == DEFAULT_MIN_AGE_S {
            String::new()
        } else {
            format!(" --min-age-s {}", plan.options.min_age_s)
        },
        plan.id
    )
}

/// `{plan, deleted, removed_scratch, reset, skipped}`: what a confirmed plan did.
#[derive(Debug, Serialize)]
pub struct ExecutedView<'a> {
    /// The plan that was carried out.
    pub plan: PlanView<'a>,
    /// The keys of the objects deleted.
    pub deleted: &'a [String],
    /// The paths of the scratch directories removed.
    pub removed_scratch: Vec<String>,
    /// The jobs sent back to pending.
    pub reset: Vec<Text<JobId>>,
    /// Plan items not carried out, and why.
    pub skipped: &'a [String],
}

pub fn executed(executed: &Executed) -> ExecutedView<'_> {
    ExecutedView {
        plan: plan(&executed.plan),
        deleted: &executed.deleted,
        removed_scratch: executed
            .removed_scratch
            .iter()
            .map(|path| path.display().to_string())
            .collect(),
        reset: ids(&executed.reset),
        skipped: &executed.skipped,
    }
}

pub fn executed_text(executed: &Executed) -> Vec<String> {
    let mut lines = vec![format!("cleanup plan {} carried out", executed.plan.id)];
    for deletion in &executed.plan.deletions {
        if executed.deleted.contains(&deletion.key) {
            lines.push(format!(
                "  deleted {} ({})",
                deletion.key,
                deletion.reason.as_str()
            ));
        }
    }
    for path in &executed.removed_scratch {
        lines.push(format!("  removed {}", path.display()));
    }
    for id in &executed.reset {
        lines.push(format!("  reset {id} to pending"));
    }
    for skipped in &executed.skipped {
        lines.push(format!("  NOT DONE: {skipped}"));
    }
    lines.push(format!(
        "{} objects deleted, {} scratch directories removed, {} jobs reset; see `narra incidents`",
        executed.deleted.len(),
        executed.removed_scratch.len(),
        executed.reset.len()
    ));
    lines
}

/// `{id, deleted, objects, shared: [{key, jobs}], scratch}`: what `narra delete` removed, or
/// would (`deleted: false`).
#[derive(Debug, Serialize)]
pub struct TakedownView<'a> {
    /// The id of the job taken down.
    pub id: Text<JobId>,
    /// `true` when the takedown was carried out, `false` for a dry run.
    pub deleted: bool,
    /// The job's objects that exist and no other job references.
    pub objects: &'a [String],
    /// The job's objects kept because other jobs reference them.
    pub shared: Vec<SharedView<'a>>,
    /// The job's scratch directory, when it has one.
    pub scratch: Option<String>,
}

/// An object of the job kept because other jobs reference it.
#[derive(Debug, Serialize)]
pub struct SharedView<'a> {
    /// The object's key in storage.
    pub key: &'a str,
    /// The other jobs that reference it.
    pub jobs: Vec<Text<JobId>>,
}

/// `done` says whether the takedown was carried out or is a dry run.
pub fn takedown(takedown: &Takedown, done: bool) -> TakedownView<'_> {
    TakedownView {
        id: Text(takedown.job.id),
        deleted: done,
        objects: &takedown.objects,
        shared: takedown
            .shared
            .iter()
            .map(|(key, jobs)| SharedView {
                key,
                jobs: ids(jobs),
            })
            .collect(),
        scratch: takedown
            .scratch
            .as_ref()
            .map(|path| path.display().to_string()),
    }
}

pub fn takedown_text(takedown: &Takedown, done: bool) -> Vec<String> {
    let verb = if done { "deleted" } else { "would delete" };
    let mut lines = vec![format!(
        "job {} ({}, {}): {verb} its records (job, checkpoints, events, metadata, logs, progress, references)",
        takedown.job.id,
        takedown.job.status,
        redact_url(&takedown.job.source)
    )];
    for key in &takedown.objects {
        lines.push(format!("  {verb} {key}"));
    }
    for (key, jobs) in &takedown.shared {
        lines.push(format!(
            "  kept {key}: also referenced by {}",
            jobs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let Some(path) = &takedown.scratch {
        lines.push(format!("  {verb} {}", path.display()));
    }
    if !done {
        lines.push(format!(
            "dry run: nothing was changed. To delete: narra delete {} --confirm",
            takedown.job.id
        ));
    }
    lines
}
