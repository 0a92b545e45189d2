//! The maintenance commands' glue and output: `verify` (runbook step 3), `audit`, `cleanup`
//! (runbook step 5), `incidents`, `delete`, `prune` and `retry --from STEP`. The behaviour lives in
//! `engine::verify`, `engine::audit`, `engine::cleanup`, `engine::prune` and `engine::retry`; this
//! file only calls them and prints what they return.
//!
//! Exit codes: 0 when nothing is wrong (and for dry runs), 1 when a check found a problem, an audit
//! found a violation, or a confirmed plan no longer matches.

use std::io::Write;
use std::process::ExitCode;

use serde_json::{Value, json};

use super::CliError;
use crate::engine::Engine;
use crate::engine::audit::audit_jobs;
use crate::engine::cleanup::{CleanupError, execute, execute_takedown, plan, plan_takedown};
use crate::engine::verify::verify_job;
use crate::model::audit::JobAudit;
use crate::model::cleanup::{CleanupOptions, DeletionReason, Executed, Plan, Takedown};
use crate::model::job::{Incident, JobId, Location, Status, Timestamp};
use crate::model::prune::{PruneOptions, PrunePlan, Pruned, duration_text, parse_duration};
use crate::model::verification::{ArtifactState, JobVerification};
use crate::store::JobFilter;

use super::{io, print_json};

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn location_text(location: &Location) -> String {
    match location {
        Location::Object(key) => key.clone(),
        Location::Scratch(path) => path.clone(),
        Location::State => "state".to_string(),
    }
}

/// `narra verify [ID...] [--deep]`: every artifact of each job, one line each.
pub async fn verify(
    engine: &Engine,
    out: &mut impl Write,
    ids: Vec<JobId>,
    deep: bool,
    json: bool,
) -> Result<ExitCode, CliError> {
    let ids = if ids.is_empty() {
        engine
            .store
            .jobs(&JobFilter {
                status: Some(Status::Succeeded),
                limit: usize::MAX,
            })
            .await?
            .into_iter()
            .map(|job| job.id)
            .collect()
    } else {
        ids
    };
    let mut all_ok = true;
    let mut reports = Vec::new();
    for id in ids {
        if engine.store.job(id).await?.is_none() {
            return Err(CliError::Other(anyhow::anyhow!("job {id} not found")));
        }
        let checkpoints = engine.store.checkpoints(id).await?;
        let verification = verify_job(engine, id, &checkpoints, deep).await;
        all_ok &= verification.ok();
        if json {
            reports.push(verification_json(&verification, deep));
        } else {
            for line in verification_text(&verification) {
                writeln!(out, "{line}").map_err(io)?;
            }
        }
    }
    if json {
        print_json(out, &Value::Array(reports))?;
    }
    Ok(exit(all_ok))
}

/// `{id, ok, deep, artifacts: [{artifact, location, size, blake3, state, message}], problems:
/// [{artifact, location, problem, message}]}`.
pub fn verification_json(verification: &JobVerification, deep: bool) -> Value {
    let mut problems: Vec<Value> = verification
        .problems()
        .map(|artifact| {
            json!({
                "artifact": artifact.artifact,
                "location": artifact.location.to_string(),
                "problem": artifact.state.as_str(),
                "message": artifact.message(),
            })
        })
        .collect();
    if !verification.stored {
        problems.push(json!({
            "artifact": "all",
            "location": "",
            "problem": "not_stored",
            "message": "no store checkpoint: ingestion did not complete",
        }));
    }
    json!({
        "id": verification.job_id.to_string(),
        "ok": verification.ok(),
        "deep": deep,
        "artifacts": verification.artifacts.iter().map(|artifact| json!({
            "artifact": artifact.artifact,
            "location": artifact.location.to_string(),
            "size": artifact.size,
            "blake3": artifact.blake3.to_hex(),
            "state": artifact.state.as_str(),
            "message": artifact.message(),
        })).collect::<Vec<_>>(),
        "problems": problems,
    })
}

/// `<id>  <artifact>  <state>  <location>`, and the problem in words after a problem.
pub fn verification_text(verification: &JobVerification) -> Vec<String> {
    let id = verification.job_id;
    if !verification.stored {
        return vec![format!(
            "{id}  all               not_stored  no store checkpoint: ingestion did not complete"
        )];
    }
    verification
        .artifacts
        .iter()
        .map(|artifact| {
            let mut line = format!(
                "{id}  {:<16}  {:<10}  {}",
                artifact.artifact,
                artifact.state.as_str(),
                location_text(&artifact.location)
            );
            if artifact.state != ArtifactState::Ok {
                line.push_str(&format!("  ({})", artifact.message()));
            }
            line
        })
        .collect()
}

/// `narra audit [ID...]`: exit 1 when any job has a violation.
pub async fn audit(
    engine: &Engine,
    out: &mut impl Write,
    ids: Vec<JobId>,
    json: bool,
) -> Result<ExitCode, CliError> {
    let audits = audit_jobs(engine, &ids)
        .await
        .map_err(|error| CliError::Other(error.into()))?;
    let violations: usize = audits.iter().map(JobAudit::violations).sum();
    if json {
        print_json(out, &Value::Array(audits.iter().map(audit_json).collect()))?;
    } else {
        for audit in &audits {
            for line in audit_text(audit) {
                writeln!(out, "{line}").map_err(io)?;
            }
        }
        writeln!(
            out,
            "{} jobs audited, {violations} violations",
            audits.len()
        )
        .map_err(io)?;
    }
    Ok(exit(violations == 0))
}

pub fn audit_json(audit: &JobAudit) -> Value {
    json!({
        "id": audit.job.id.to_string(),
        "status": audit.job.status.as_str(),
        "violations": audit.violations(),
        "steps": audit.steps.iter().map(|step| json!({
            "step": step.step,
            "executed": step.counts.executed,
            "completed": step.counts.completed,
            "skipped": step.counts.skipped,
            "failed": step.counts.failed,
            "redone": step.counts.redone,
            "checkpoint": step.checkpoint.as_ref().map(|checkpoint| json!({
                "definition_hash": checkpoint.definition_hash.to_hex(),
                "input_hash": checkpoint.input_hash.to_hex(),
                "recorded_at": checkpoint.recorded_at.to_rfc3339(),
                "outputs": checkpoint.outputs.iter().map(|output| json!({
                    "name": output.name,
                    "location": output.location.to_string(),
                    "size": output.size,
                    "blake3": output.blake3.to_hex(),
                })).collect::<Vec<_>>(),
            })),
        })).collect::<Vec<_>>(),
        "storage": {
            "agrees": audit.storage.ok(),
            "artifacts": verification_json(&audit.storage, false)["artifacts"].clone(),
        },
        "writes": audit.writes.iter().map(|(key, count)| json!({"key": key, "count": count})).collect::<Vec<_>>(),
        "findings": audit.findings.iter().map(|finding| json!({
            "kind": finding.kind,
            "severity": finding.severity.as_str(),
            "step": finding.step,
            "key": finding.key,
            "seq": finding.seq,
            "message": finding.message,
        })).collect::<Vec<_>>(),
    })
}

pub fn audit_text(audit: &JobAudit) -> Vec<String> {
    let mut lines = vec![format!(
        "job {}  {}  {} violations",
        audit.job.id,
        audit.job.status,
        audit.violations()
    )];
    lines.push(format!(
        "  {:<9} {:>4} {:>4} {:>4} {:>4} {:>4}  {:<16}  outputs",
        "step", "runs", "done", "skip", "fail", "redo", "input"
    ));
    for step in &audit.steps {
        let (input, outputs) = match &step.checkpoint {
            Some(checkpoint) => (
                checkpoint.input_hash.to_hex()[..16].to_string(),
                checkpoint
                    .outputs
                    .iter()
                    .map(|output| format!("{} {}", output.name, &output.blake3.to_hex()[..16]))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            None => ("-".to_string(), "no checkpoint".to_string()),
        };
        lines.push(format!(
            "  {:<9} {:>4} {:>4} {:>4} {:>4} {:>4}  {input:<16}  {outputs}",
            step.step,
            step.counts.executed,
            step.counts.completed,
            step.counts.skipped,
            step.counts.failed,
            step.counts.redone,
        ));
    }
    let storage = if !audit.storage.stored {
        "nothing stored yet".to_string()
    } else if audit.storage.ok() {
        format!(
            "agrees ({} artifacts, shallow check)",
            audit.storage.artifacts.len()
        )
    } else {
        format!(
            "DISAGREES on {} of {} artifacts",
            audit.storage.problems().count(),
            audit.storage.artifacts.len()
        )
    };
    lines.push(format!("  storage   {storage}"));
    let rewritten: Vec<String> = audit
        .writes
        .iter()
        .filter(|(_, count)| **count > 1)
        .map(|(key, count)| format!("{key} x{count}"))
        .collect();
    lines.push(format!(
        "  writes    {} objects written{}",
        audit.writes.values().sum::<u32>(),
        if rewritten.is_empty() {
            String::new()
        } else {
            format!(" (more than once: {})", rewritten.join(", "))
        }
    ));
    for finding in &audit.findings {
        lines.push(format!(
            "  {:<9} {} {}",
            finding.severity.as_str(),
            finding.kind,
            finding.message
        ));
    }
    lines
}

fn cleanup_error(error: CleanupError) -> CliError {
    CliError::Other(error.into())
}

/// `narra cleanup [--deep] [--min-age-s N] [--confirm PLAN_ID]`.
pub async fn cleanup(
    engine: &Engine,
    out: &mut impl Write,
    err: &mut impl Write,
    options: CleanupOptions,
    confirm: Option<String>,
    context: &super::Context,
) -> Result<ExitCode, CliError> {
    let json = context.json;
    let Some(plan_id) = confirm else {
        let plan = plan(engine, &options).await.map_err(cleanup_error)?;
        if json {
            print_json(out, &plan_json(&plan))?;
        } else {
            for line in plan_text(&plan) {
                writeln!(out, "{line}").map_err(io)?;
            }
            if plan.is_empty() {
                writeln!(out, "nothing to clean up (plan {})", plan.id).map_err(io)?;
            } else {
                writeln!(
                    out,
                    "dry run: nothing was changed. To carry out exactly this plan: narra cleanup{}{} --confirm {}",
                    if options.deep { " --deep" } else { "" },
                    if options.min_age_s == crate::model::cleanup::DEFAULT_MIN_AGE_S {
                        String::new()
                    } else {
                        format!(" --min-age-s {}", options.min_age_s)
                    },
                    plan.id
                )
                .map_err(io)?;
            }
        }
        return Ok(ExitCode::SUCCESS);
    };
    match execute(engine, &options, &plan_id, &context.actor).await {
        Ok(executed) => {
            if json {
                print_json(out, &executed_json(&executed))?;
            } else {
                for line in executed_text(&executed) {
                    writeln!(out, "{line}").map_err(io)?;
                }
            }
            Ok(exit(executed.skipped.is_empty()))
        }
        Err(error @ CleanupError::PlanChanged { .. }) => {
            writeln!(err, "narra: {error}").map_err(io)?;
            Ok(ExitCode::from(1))
        }
        Err(error) => Err(cleanup_error(error)),
    }
}

pub fn plan_json(plan: &Plan) -> Value {
    let mut value = serde_json::to_value(plan.canonical()).expect("a plan serializes");
    value["id"] = json!(plan.id);
    value["notes"] = json!(plan.notes);
    if let Some(deletions) = value["deletions"].as_array_mut() {
        for (deletion, item) in deletions.iter_mut().zip(&plan.deletions) {
            deletion["message"] = json!(item.message());
        }
    }
    value
}

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

pub fn executed_json(executed: &Executed) -> Value {
    json!({
        "plan": plan_json(&executed.plan),
        "deleted": executed.deleted,
        "removed_scratch": executed.removed_scratch.iter().map(|path| path.display().to_string()).collect::<Vec<_>>(),
        "reset": executed.reset.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "skipped": executed.skipped,
    })
}

pub fn executed_text(executed: &Executed) -> Vec<String> {
    let mut lines = vec![format!("cleanup plan {} carried out", executed.plan.id)];
    for deletion in &executed.plan.deletions {
        if executed.deleted.contains(&deletion.key) {
            let what = match &deletion.reason {
                DeletionReason::Corrupt { .. } => "corrupt",
                DeletionReason::Orphan => "orphan",
                DeletionReason::Partial => "partial",
            };
            lines.push(format!("  deleted {} ({what})", deletion.key));
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

/// `narra incidents`: the incident log, oldest first.
pub async fn incidents(
    engine: &Engine,
    out: &mut impl Write,
    json: bool,
) -> Result<ExitCode, CliError> {
    let incidents = engine.store.incidents().await?;
    if json {
        print_json(
            out,
            &Value::Array(incidents.iter().map(incident_json).collect()),
        )?;
    } else {
        for incident in &incidents {
            writeln!(out, "{}", incident_text(incident)).map_err(io)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `{seq, at, actor, action, job, key, reason}`.
pub fn incident_json(incident: &Incident) -> Value {
    json!({
        "seq": incident.seq,
        "at": incident.at.to_rfc3339(),
        "actor": incident.actor,
        "action": incident.action,
        "job": incident.job.map(|id| id.to_string()),
        "key": incident.key,
        "reason": incident.reason,
    })
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

/// `narra delete ID [--confirm]`: without `--confirm`, prints what would go and exits 0.
pub async fn delete(
    engine: &Engine,
    out: &mut impl Write,
    err: &mut impl Write,
    id: JobId,
    confirm: bool,
    context: &super::Context,
) -> Result<ExitCode, CliError> {
    let json = context.json;
    let result = if confirm {
        execute_takedown(engine, id, &context.actor).await
    } else {
        plan_takedown(engine, id).await
    };
    let takedown = match result {
        Ok(takedown) => takedown,
        Err(CleanupError::Rejected(rejected)) => {
            writeln!(err, "narra: {rejected}").map_err(io)?;
            return Ok(ExitCode::from(1));
        }
        Err(error) => return Err(cleanup_error(error)),
    };
    if json {
        print_json(out, &takedown_json(&takedown, confirm))?;
    } else {
        for line in takedown_text(&takedown, confirm) {
            writeln!(out, "{line}").map_err(io)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn takedown_json(takedown: &Takedown, done: bool) -> Value {
    json!({
        "id": takedown.job.id.to_string(),
        "deleted": done,
        "objects": takedown.objects,
        "shared": takedown.shared.iter().map(|(key, jobs)| json!({
            "key": key,
            "jobs": jobs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "scratch": takedown.scratch.as_ref().map(|path| path.display().to_string()),
    })
}

pub fn takedown_text(takedown: &Takedown, done: bool) -> Vec<String> {
    let verb = if done { "deleted" } else { "would delete" };
    let mut lines = vec![format!(
        "job {} ({}, {}): {verb} its records (job, checkpoints, events, metadata, logs, progress, references)",
        takedown.job.id,
        takedown.job.status,
        crate::model::redact::redact_url(&takedown.job.source)
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

/// `NARRA_EVENTS_MAX`: the most events a job holds in this home's store, instead of
/// `store::EVENTS_MAX` (tests force compaction with a small one); `None` when it is not set.
pub fn events_max_from_env() -> Result<Option<u64>, CliError> {
    let Ok(text) = std::env::var("NARRA_EVENTS_MAX") else {
        return Ok(None);
    };
    let events_max = text
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|events_max| *events_max > 0)
        .ok_or_else(|| {
            CliError::Usage(format!(
                "NARRA_EVENTS_MAX must be a positive number of events, not {text:?}"
            ))
        })?;
    Ok(Some(events_max))
}

/// The error for a job id with no job: one `narra prune` removed is named as such.
pub async fn missing_job(engine: &Engine, id: JobId) -> CliError {
    match engine.store.pruned_job(id).await {
        Ok(Some(pruned)) => CliError::Other(anyhow::anyhow!(
            "job {id} was pruned at {} ({}, last updated {}); its objects stay in storage{}",
            pruned.pruned_at.to_rfc3339(),
            pruned.status,
            pruned.updated_at.to_rfc3339(),
            pruned
                .manifest
                .map(|key| format!(" (manifest {key})"))
                .unwrap_or_default()
        )),
        Ok(None) => CliError::Other(anyhow::anyhow!("job {id} not found")),
        Err(error) => error.into(),
    }
}

/// What `retry --from STEP` was asked besides the jobs.
#[derive(Debug, Clone)]
pub struct RetryFrom {
    pub step: String,
    pub detach: bool,
    pub concurrency: usize,
}

/// `narra retry (ID... | --status S [--class C] [--backfill ID]) --from STEP`: exit 2 when STEP is
/// not a step of a selected job's workflow (nothing changed), 1 when a job was refused (pending or
/// running) or did not succeed.
pub async fn retry_from(
    engine: &Engine,
    out: &mut impl Write,
    ids: Vec<JobId>,
    selection: &super::SelectionArgs,
    options: RetryFrom,
    json: bool,
) -> Result<ExitCode, CliError> {
    crate::engine::orchestrator::reclaim_orphans(engine).await?;
    let ids = super::ids_or_selection(
        engine,
        ids,
        selection,
        &[Status::Succeeded, Status::Failed, Status::Cancelled],
    )
    .await?;
    let reason = format!("asked by {}", crate::engine::cleanup::actor_from_env());
    let outcomes = crate::engine::retry::retry_from(engine, &ids, &options.step, &reason).await?;
    let mut refused = false;
    let mut queued = Vec::new();
    for (_, outcome) in outcomes {
        match outcome {
            Ok(job) => queued.push(job),
            Err(rejected) => {
                refused = true;
                eprintln!("narra: {rejected}");
            }
        }
    }
    let jobs = if options.detach {
        queued
    } else {
        let ids: Vec<JobId> = queued.iter().map(|job| job.id).collect();
        crate::engine::orchestrator::run_jobs(engine, &ids, options.concurrency).await?
    };
    super::print_jobs(out, &jobs, json)?;
    Ok(if refused {
        ExitCode::from(1)
    } else {
        super::exit_for(&jobs)
    })
}

/// `narra prune --older-than D [--status S...] [--confirm]`: without `--confirm`, lists what would
/// go and exits 0; with it, exits 1 when a listed job was left alone (it changed meanwhile).
pub async fn prune(
    engine: &Engine,
    out: &mut impl Write,
    older_than: &str,
    statuses: Vec<Status>,
    confirm: bool,
    json: bool,
) -> Result<ExitCode, CliError> {
    let options = PruneOptions {
        older_than_ms: parse_duration(older_than).map_err(CliError::Usage)?,
        statuses,
    };
    let now = Timestamp::now();
    if !confirm {
        let plan = crate::engine::prune::plan(engine, &options, now).await?;
        if json {
            print_json(out, &prune_plan_json(&plan, &options))?;
        } else {
            for line in prune_plan_text(&plan, &options) {
                writeln!(out, "{line}").map_err(io)?;
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let pruned = crate::engine::prune::execute(
        engine,
        &options,
        &crate::engine::cleanup::actor_from_env(),
        now,
    )
    .await?;
    if json {
        print_json(out, &pruned_json(&pruned, &options))?;
    } else {
        for line in pruned_text(&pruned) {
            writeln!(out, "{line}").map_err(io)?;
        }
    }
    Ok(exit(pruned.refused.is_empty()))
}

fn statuses_text(plan: &PrunePlan) -> String {
    plan.statuses
        .iter()
        .map(|status| status.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `{dry_run: true, older_than, cutoff, statuses, count, jobs: [{id, source, status, ..., updated_at}]}`.
pub fn prune_plan_json(plan: &PrunePlan, options: &PruneOptions) -> Value {
    json!({
        "dry_run": true,
        "older_than": duration_text(options.older_than_ms),
        "cutoff": plan.cutoff.to_rfc3339(),
        "statuses": plan.statuses.iter().map(|status| status.as_str()).collect::<Vec<_>>(),
        "count": plan.jobs.len(),
        "jobs": plan.jobs.iter().map(|job| {
            let mut summary = super::views::job_summary(job);
            summary["updated_at"] = json!(job.updated_at.to_rfc3339());
            summary
        }).collect::<Vec<_>>(),
    })
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
            super::views::job_line(job),
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

/// `{dry_run: false, older_than, cutoff, statuses, count, pruned: [id], refused: [{id, reason}],
/// incident}`.
pub fn pruned_json(pruned: &Pruned, options: &PruneOptions) -> Value {
    json!({
        "dry_run": false,
        "older_than": duration_text(options.older_than_ms),
        "cutoff": pruned.plan.cutoff.to_rfc3339(),
        "statuses": pruned.plan.statuses.iter().map(|status| status.as_str()).collect::<Vec<_>>(),
        "count": pruned.pruned.len(),
        "pruned": pruned.pruned.iter().map(|tombstone| tombstone.id.to_string()).collect::<Vec<_>>(),
        "refused": pruned.refused.iter().map(|(id, reason)| json!({
            "id": id.to_string(),
            "reason": reason,
        })).collect::<Vec<_>>(),
        "incident": pruned.incident.as_ref().map(|incident| incident.seq),
    })
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
