//! The maintenance commands' glue and output: `verify` (runbook step 3), `audit`, `cleanup`
//! (runbook step 5), `incidents`, `delete`, `prune` and `retry --from STEP`. The behaviour lives in
//! `engine::verify`, `engine::audit`, `engine::cleanup`, `engine::prune` and `engine::retry`; this
//! file only calls them and prints what they return.
//!
//! Exit codes: 0 when nothing is wrong (and for dry runs), 1 when a check found a problem, an audit
//! found a violation, or a confirmed plan no longer matches.

use std::io::Write;
use std::process::ExitCode;

use super::CliError;
use crate::engine::Engine;
use crate::engine::audit::audit_jobs;
use crate::engine::cleanup::{CleanupError, execute, execute_takedown, plan, plan_takedown};
use crate::engine::verify::verify_job;
use crate::model::audit::JobAudit;
use crate::model::cleanup::CleanupOptions;
use crate::model::job::{JobId, Status, Timestamp};
use crate::model::prune::{PruneOptions, parse_duration};
use crate::views;

use super::{io, print_json};

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
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
            .all_jobs(Some(Status::Succeeded))
            .await?
            .into_iter()
            .map(|job| job.id)
            .collect()
    } else {
        ids
    };
    let mut all_ok = true;
    let mut verifications = Vec::new();
    for id in ids {
        if engine.store.job(id).await?.is_none() {
            return Err(CliError::Other(anyhow::anyhow!("job {id} not found")));
        }
        let checkpoints = engine.store.checkpoints(id).await?;
        let verification = verify_job(engine, id, &checkpoints, deep).await;
        all_ok &= verification.ok();
        if !json {
            for line in views::verify::verification_text(&verification) {
                writeln!(out, "{line}").map_err(io)?;
            }
        }
        verifications.push(verification);
    }
    if json {
        let reports: Vec<_> = verifications
            .iter()
            .map(|verification| views::verify::verification(verification, deep))
            .collect();
        print_json(out, &reports)?;
    }
    Ok(exit(all_ok))
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
        let views: Vec<_> = audits.iter().map(views::audit::audit).collect();
        print_json(out, &views)?;
    } else {
        for audit in &audits {
            for line in views::audit::audit_text(audit) {
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
            print_json(out, &views::cleanup::plan(&plan))?;
        } else {
            for line in views::cleanup::plan_text(&plan) {
                writeln!(out, "{line}").map_err(io)?;
            }
            writeln!(out, "{}", views::cleanup::dry_run_text(&plan)).map_err(io)?;
        }
        return Ok(ExitCode::SUCCESS);
    };
    match execute(engine, &options, &plan_id, &context.actor).await {
        Ok(executed) => {
            if json {
                print_json(out, &views::cleanup::executed(&executed))?;
            } else {
                for line in views::cleanup::executed_text(&executed) {
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

/// `narra incidents`: the incident log, oldest first.
pub async fn incidents(
    engine: &Engine,
    out: &mut impl Write,
    json: bool,
) -> Result<ExitCode, CliError> {
    let incidents = engine.store.incidents().await?;
    let (view, line) = (views::incidents::incident, views::incidents::incident_text);
    super::print_list(out, &incidents, json, view, line)?;
    Ok(ExitCode::SUCCESS)
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
        print_json(out, &views::cleanup::takedown(&takedown, confirm))?;
    } else {
        for line in views::cleanup::takedown_text(&takedown, confirm) {
            writeln!(out, "{line}").map_err(io)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `NARRA_EVENTS_MAX`: the most events a job holds in this home's store, instead of
/// `store::EVENTS_MAX` (tests force compaction with a small one); `None` when it is not set.
pub fn events_max_from_env() -> Result<Option<u64>, CliError> {
    super::positive_from_env("NARRA_EVENTS_MAX", "events")
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
    crate::engine::orchestrator::reclaim_orphans(&engine.orchestrator()).await?;
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
        crate::engine::orchestrator::run_jobs(&engine.orchestrator(), &ids, options.concurrency)
            .await?
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
            print_json(out, &views::prune::prune_plan(&plan, &options))?;
        } else {
            for line in views::prune::prune_plan_text(&plan, &options) {
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
        print_json(out, &views::prune::pruned(&pruned, &options))?;
    } else {
        for line in views::prune::pruned_text(&pruned) {
            writeln!(out, "{line}").map_err(io)?;
        }
    }
    Ok(exit(pruned.refused.is_empty()))
}
