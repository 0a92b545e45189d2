//! The job commands' glue and output: `ingest`, `submit`, `worker`, `jobs` (and `jobs --stuck`),
//! `show`, `logs`, `retry` (and `retry --from STEP`), `cancel` and `reset`. Each calls the
//! orchestrator, the store or `engine::{show, retry, stuck}` and prints what `views::job` shapes;
//! no decision about a job is taken here.
//!
//! Exit codes: 0 when every job run (or acted on) succeeded, 1 when one did not or was refused.

use std::io::Write;
use std::process::ExitCode;

use super::args::{
    IngestArgs, JobArg, JobsArgs, ResetArgs, RetryArgs, SubmitArgs, TargetArgs, WorkerArgs,
};
use super::{CliError, Context, exit_for, io, print_jobs, print_json, print_list};
use crate::engine::Orchestrator;
use crate::engine::orchestrator::{SubmitOptions, reclaim_orphans, run_jobs, work};
use crate::engine::{Engine, stuck::stuck_jobs};
use crate::model::job::{Job, JobId, Status, Timestamp};
use crate::model::machine::Rejected;
use crate::store::{JobFilter, Submitted};
use crate::views;

/// `narra ingest SOURCE...`: submits the sources as `submit` does and runs their jobs here, to
/// their end.
pub async fn ingest(
    engine: &Engine,
    args: IngestArgs,
    context: &Context,
    out: &mut impl Write,
) -> Result<ExitCode, CliError> {
    // `ingest` is a `submit` whose jobs are then run here, `concurrency` at once.
    let orchestrator = engine.orchestrator();
    reclaim_orphans(&orchestrator).await?;
    let submitted = submit_sources(&orchestrator, args.submit, context).await?;
    // The same source twice on one command line is one job, run once.
    let mut ids: Vec<JobId> = Vec::with_capacity(submitted.len());
    for submitted in &submitted {
        if !ids.contains(&submitted.job.id) {
            ids.push(submitted.job.id);
        }
    }
    let jobs = run_jobs(&orchestrator, &ids, args.concurrency).await?;
    print_jobs(out, &jobs, context.json)?;
    Ok(exit_for(&jobs))
}

/// Submits the sources of `ingest` and `submit`; relative local paths are the context's.
async fn submit_sources(
    orchestrator: &Orchestrator,
    args: SubmitArgs,
    context: &Context,
) -> Result<Vec<Submitted>, CliError> {
    let options = SubmitOptions {
        workflow: args.workflow,
        key: args.key,
        reingest: args.reingest,
        priority: args.new_job.priority,
        local_paths: context.local_paths(),
        callback_url: args.new_job.callback_url,
    };
    Ok(crate::engine::orchestrator::submit(orchestrator, &args.sources, &options).await?)
}

/// `narra submit SOURCE...`: the job ids, one a line (or the jobs, with `--json`).
pub async fn submit(
    engine: &Engine,
    args: SubmitArgs,
    context: &Context,
    out: &mut impl Write,
) -> Result<ExitCode, CliError> {
    let submitted = submit_sources(&engine.orchestrator(), args, context).await?;
    let jobs: Vec<_> = submitted
        .into_iter()
        .map(|submitted| submitted.job)
        .collect();
    if context.json {
        print_jobs(out, &jobs, true)?;
    } else {
        for job in &jobs {
            writeln!(out, "{}", job.id).map_err(io)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `narra worker [--drain]`.
pub async fn worker(
    engine: &Engine,
    args: WorkerArgs,
    context: &Context,
    out: &mut impl Write,
) -> Result<ExitCode, CliError> {
    let orchestrator = engine.orchestrator();
    reclaim_orphans(&orchestrator).await?;
    let draining = engine.shutdown.draining();
    let jobs = work(&orchestrator, args.concurrency, args.drain, draining).await?;
    print_jobs(out, &jobs, context.json)?;
    // Stopped by a signal: the jobs it held are released, which is a clean exit.
    if engine.shutdown.is_draining() {
        return Ok(ExitCode::SUCCESS);
    }
    Ok(exit_for(&jobs))
}

/// `narra jobs`: a line a job, with its download progress while it runs; `--stuck` lists the
/// running jobs that look stuck instead.
pub async fn jobs(
    engine: &Engine,
    args: JobsArgs,
    context: &Context,
    out: &mut impl Write,
) -> Result<ExitCode, CliError> {
    let json = context.json;
    if args.stuck {
        let stuck = stuck_jobs(engine, args.stuck_after_s, Timestamp::now()).await?;
        let (view, line) = (views::stuck::stuck_view, views::stuck::stuck_text);
        print_list(out, &stuck, json, view, line)?;
        return Ok(ExitCode::SUCCESS);
    }
    let (status, limit) = (args.status, args.limit);
    let jobs = match args.backfill {
        None => engine.store.jobs(&JobFilter { status, limit }).await?,
        Some(id) => {
            if !engine.store.backfills().await?.iter().any(|b| b.id == id) {
                return Err(CliError::Other(anyhow::anyhow!("backfill {id} not found")));
            }
            crate::engine::backfill::jobs_of_backfill(engine, id, status, limit).await?
        }
    };
    if json {
        let mut list = Vec::with_capacity(jobs.len());
        for job in &jobs {
            let progress = engine.store.progress(job.id).await?;
            list.push(views::job::job_item(job, progress.as_ref()));
        }
        print_json(out, &list)?;
    } else {
        for job in &jobs {
            let mut line = views::job::job_line(job);
            if job.status == Status::Running
                && let Some(progress) = engine.store.progress(job.id).await?
            {
                line.push_str(&format!("  {}", views::job::progress_text(job, &progress)));
            }
            writeln!(out, "{line}").map_err(io)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `narra show ID`.
pub async fn show(
    engine: &Engine,
    JobArg { id }: JobArg,
    context: &Context,
    out: &mut impl Write,
) -> Result<ExitCode, CliError> {
    let Some(records) = crate::engine::show::records(engine, id).await? else {
        return Err(super::maintenance::missing_job(engine, id).await);
    };
    if context.json {
        print_json(out, &views::job::detail(&records))?;
    } else {
        write!(out, "{}", views::job::detail_text(&records)).map_err(io)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `narra logs ID`: a line (or a JSON document) a log line.
pub async fn logs(
    engine: &Engine,
    JobArg { id }: JobArg,
    context: &Context,
    out: &mut impl Write,
) -> Result<ExitCode, CliError> {
    engine.store.job(id).await?.ok_or_else(|| not_found(id))?;
    let lines = engine.store.logs(id).await?;
    for line in &lines {
        let text = if context.json {
            views::to_json(&views::history::LogLineView::of(line)).to_string()
        } else {
            views::history::log_line_text(line)
        };
        writeln!(out, "{text}").map_err(io)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The jobs a bulk command acted on, and whether it was refused any.
#[derive(Default)]
struct Outcomes {
    jobs: Vec<Job>,
    refused: bool,
}

impl Outcomes {
    /// Takes one job's outcome: a refusal is told on `err`, and the command will exit 1.
    fn take(
        &mut self,
        outcome: Result<Job, Rejected>,
        err: &mut impl Write,
    ) -> Result<(), CliError> {
        match outcome {
            Ok(job) => self.jobs.push(job),
            Err(rejected) => {
                self.refused = true;
                writeln!(err, "narra: {rejected}").map_err(io)?;
            }
        }
        Ok(())
    }
}

/// The ids given, or the jobs a selection names that `allowed` statuses admit (a bulk operation
/// skips jobs it could not act on rather than refusing them one by one).
async fn ids_or_selection(
    engine: &Engine,
    targets: TargetArgs,
    allowed: &[Status],
) -> Result<Vec<JobId>, CliError> {
    if !targets.ids.is_empty() {
        return Ok(targets.ids);
    }
    let jobs = crate::engine::stuck::select_jobs(engine, &targets.selection.selection()).await?;
    Ok(jobs
        .into_iter()
        .filter(|job| allowed.contains(&job.status))
        .map(|job| job.id)
        .collect())
}

/// `narra retry (ID... | --status S [--class C] [--backfill ID]) [--from STEP]`: the jobs sent
/// back to pending and (unless `--detach`, or served for another process) run here. With `--from`,
/// exit 2 when STEP is not a step of a selected job's workflow (nothing changed); 1 when a job was
/// refused or did not succeed.
pub async fn retry(
    engine: &Engine,
    args: RetryArgs,
    context: &Context,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<ExitCode, CliError> {
    // One orchestrator serves the whole command: the reclaim before and the run after.
    let orchestrator = engine.orchestrator();
    let queued = match &args.from {
        Some(step) => retry_from(engine, &orchestrator, args.targets, step).await?,
        None => {
            let queued = retry_failed(engine, &orchestrator, args.targets, context, err).await?;
            if let Some(holder) = &context.served {
                // The holder's own work goes on; the jobs wait in the queue it may be running.
                if !queued.jobs.is_empty() {
                    let note = holder.queued_note(queued.jobs.len(), engine.shutdown.is_draining());
                    writeln!(err, "narra: {note}").map_err(io)?;
                }
                return print_outcomes(out, queued, context.json);
            }
            queued
        }
    };
    if args.detach {
        return print_outcomes(out, queued, context.json);
    }
    let ids: Vec<JobId> = queued.jobs.iter().map(|job| job.id).collect();
    let jobs = run_jobs(&orchestrator, &ids, args.concurrency).await?;
    let refused = queued.refused;
    print_outcomes(out, Outcomes { jobs, refused }, context.json)
}

/// `retry`: failed, cancelled and pending jobs back to pending. A served retry leaves the running
/// jobs alone: they are the holder's, alive.
async fn retry_failed(
    engine: &Engine,
    orchestrator: &Orchestrator,
    targets: TargetArgs,
    context: &Context,
    err: &mut impl Write,
) -> Result<Outcomes, CliError> {
    if context.served.is_none() {
        reclaim_orphans(orchestrator).await?;
    }
    let allowed = [Status::Failed, Status::Cancelled, Status::Pending];
    let ids = ids_or_selection(engine, targets, &allowed).await?;
    let mut queued = Outcomes::default();
    for id in ids {
        let outcome = match engine
            .store
            .retry(id, "retry requested by an operator")
            .await?
        {
            // A pending job (one reclaimed from a dead process, say) needs no transition: it is
            // simply run.
            Err(Rejected::NotAllowed {
                status: Status::Pending,
                ..
            }) => Ok(engine.store.job(id).await?.ok_or_else(|| not_found(id))?),
            outcome => outcome,
        };
        queued.take(outcome, err)?;
    }
    Ok(queued)
}

/// `retry --from STEP`: the step's checkpoint and those after it discarded (`engine::retry`).
async fn retry_from(
    engine: &Engine,
    orchestrator: &Orchestrator,
    targets: TargetArgs,
    step: &str,
) -> Result<Outcomes, CliError> {
    reclaim_orphans(orchestrator).await?;
    let allowed = [Status::Succeeded, Status::Failed, Status::Cancelled];
    let ids = ids_or_selection(engine, targets, &allowed).await?;
    let reason = format!("asked by {}", crate::engine::cleanup::actor_from_env());
    let outcomes = crate::engine::retry::retry_from(engine, &ids, step, &reason).await?;
    let mut queued = Outcomes::default();
    for (_, outcome) in outcomes {
        match outcome {
            Ok(job) => queued.jobs.push(job),
            Err(rejected) => {
                queued.refused = true;
                eprintln!("narra: {rejected}");
            }
        }
    }
    Ok(queued)
}

/// Prints the jobs; exit 1 when one was refused or did not succeed.
fn print_outcomes(
    out: &mut impl Write,
    outcomes: Outcomes,
    json: bool,
) -> Result<ExitCode, CliError> {
    print_jobs(out, &outcomes.jobs, json)?;
    Ok(if outcomes.refused {
        ExitCode::from(1)
    } else {
        exit_for(&outcomes.jobs)
    })
}

/// `narra cancel (ID... | --status S [--class C] [--backfill ID])`: exit 1 when a job was refused.
pub async fn cancel(
    engine: &Engine,
    targets: TargetArgs,
    context: &Context,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<ExitCode, CliError> {
    let allowed = [Status::Pending, Status::Failed, Status::Running];
    let ids = ids_or_selection(engine, targets, &allowed).await?;
    let mut cancelled = Outcomes::default();
    for id in ids {
        cancelled.take(engine.store.cancel(id).await?, err)?;
    }
    print_jobs(out, &cancelled.jobs, context.json)?;
    Ok(if cancelled.refused {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `narra reset ID [--force] [--reason TEXT]`: exit 1 when the job may not be reset.
pub async fn reset(
    engine: &Engine,
    args: ResetArgs,
    context: &Context,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<ExitCode, CliError> {
    let reason = args.reason.as_deref();
    let actor = &context.actor;
    match crate::engine::stuck::reset_job(engine, args.id, actor, reason, args.force).await? {
        Ok(job) => {
            print_jobs(out, std::slice::from_ref(&job), context.json)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(rejected) => {
            writeln!(err, "narra: {rejected}").map_err(io)?;
            Ok(ExitCode::from(1))
        }
    }
}

fn not_found(id: JobId) -> CliError {
    CliError::Other(anyhow::anyhow!("job {id} not found"))
}
