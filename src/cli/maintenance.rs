//! The maintenance commands' glue and output: `verify` (runbook step 3), `audit`, `cleanup`
//! (runbook step 5), `incidents`, `delete`, `prune` and `reprobe`. The behaviour lives in
//! `engine::verify`, `engine::audit`, `engine::cleanup`, `engine::prune` and `engine::reprobe`;
//! this file only calls them and prints what they return.
//!
//! Exit codes: 0 when nothing is wrong (and for dry runs), 1 when a check found a problem, an audit
//! found a violation, or a confirmed plan no longer matches.

use std::io::Write;
use std::process::ExitCode;

use super::args::{AuditArgs, CleanupArgs, DeleteArgs, JobArg, PruneArgs, VerifyArgs};
use super::{CliError, Context};
use crate::engine::Engine;
use crate::engine::audit::audit_jobs;
use crate::engine::cleanup::{CleanupError, execute, execute_takedown, plan, plan_takedown};
use crate::engine::verify::verify_job;
use crate::model::audit::JobAudit;
use crate::model::job::{JobId, Status, Timestamp};
use crate::model::prune::{PruneOptions, parse_duration};
use crate::views;

use super::{exit_for, io, print_json};

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
    VerifyArgs { ids, deep }: VerifyArgs,
    context: &Context,
    out: &mut impl Write,
) -> Result<ExitCode, CliError> {
    let json = context.json;
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
    AuditArgs { ids }: AuditArgs,
    context: &Context,
    out: &mut impl Write,
) -> Result<ExitCode, CliError> {
    let json = context.json;
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
    args: CleanupArgs,
    context: &Context,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<ExitCode, CliError> {
    let json = context.json;
    let options = crate::model::cleanup::CleanupOptions {
        deep: args.deep,
        min_age_s: args.min_age_s,
    };
    let Some(plan_id) = args.confirm else {
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
    context: &Context,
    out: &mut impl Write,
) -> Result<ExitCode, CliError> {
    let incidents = engine.store.incidents().await?;
    let (view, line) = (views::incidents::incident, views::incidents::incident_text);
    super::print_list(out, &incidents, context.json, view, line)?;
    Ok(ExitCode::SUCCESS)
}

/// `narra delete ID [--confirm]`: without `--confirm`, prints what would go and exits 0.
pub async fn delete(
    engine: &Engine,
    DeleteArgs { id, confirm }: DeleteArgs,
    context: &Context,
    out: &mut impl Write,
    err: &mut impl Write,
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

/// `narra prune --older-than D [--status S...] [--confirm]`: without `--confirm`, lists what would
/// go and exits 0; with it, exits 1 when a listed job was left alone (it changed meanwhile).
pub async fn prune(
    engine: &Engine,
    args: PruneArgs,
    context: &Context,
    out: &mut impl Write,
) -> Result<ExitCode, CliError> {
    let options = PruneOptions {
        older_than_ms: parse_duration(&args.older_than).map_err(CliError::Usage)?,
        statuses: args.status,
    };
    let now = Timestamp::now();
    if !args.confirm {
        let plan = crate::engine::prune::plan(engine, &options, now).await?;
        if context.json {
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
    if context.json {
        print_json(out, &views::prune::pruned(&pruned, &options))?;
    } else {
        for line in views::prune::pruned_text(&pruned) {
            writeln!(out, "{line}").map_err(io)?;
        }
    }
    Ok(exit(pruned.refused.is_empty()))
}

/// `narra reprobe ID`: what changed in the job's metadata record, and the job when it was stored
/// again (exit 1 when that run did not succeed).
pub async fn reprobe(
    engine: &Engine,
    JobArg { id }: JobArg,
    context: &Context,
    out: &mut impl Write,
) -> Result<ExitCode, CliError> {
    crate::engine::orchestrator::reclaim_orphans(&engine.orchestrator()).await?;
    let reprobed = crate::engine::reprobe::reprobe(engine, id)
        .await
        .map_err(|error| CliError::Other(error.into()))?;
    if context.json {
        let view = views::job::Reprobed {
            job: views::job::summary(&reprobed.job),
            changes: &reprobed.changes,
            republished: reprobed.republished,
        };
        print_json(out, &view)?;
    } else {
        if reprobed.changes.is_empty() {
            writeln!(out, "{id}  metadata record unchanged").map_err(io)?;
        }
        for change in &reprobed.changes {
            writeln!(out, "{id}  changed  {change}").map_err(io)?;
        }
        if reprobed.republished {
            writeln!(out, "{}", views::job::job_line(&reprobed.job)).map_err(io)?;
        }
    }
    Ok(if reprobed.republished {
        exit_for(std::slice::from_ref(&reprobed.job))
    } else {
        ExitCode::SUCCESS
    })
}
