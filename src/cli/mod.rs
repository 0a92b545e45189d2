//! The command line: clap definitions, the glue that opens a home and calls the library, and output
//! formatting. No behaviour lives here that the library does not expose to tests and the API too.
//!
//! Data goes to stdout (text or, with `--json`, JSON only); logs go to stderr, always.

pub mod doctor;
pub mod views;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::engine::Engine;
use crate::engine::job::{JobId, Location, Status};
use crate::engine::orchestrator::{
    EngineError, SubmitOptions, reclaim_orphans, run_jobs, submit, work,
};
use crate::engine::verify::{OutputState, check_output};
use crate::logging::LogFormat;
use crate::storage::Storage;
use crate::store::{HomeLock, JobFilter, LockError, SledStore, StoreError};
use crate::workflow::WorkflowRegistry;

/// narra: durable, resumable video ingestion (download -> extract audio -> store).
#[derive(Debug, Parser)]
#[command(name = "narra", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct GlobalArgs {
    /// narra's home: the state store, scratch space and (by default) the stored objects.
    #[arg(
        long,
        global = true,
        env = "NARRA_HOME",
        default_value = "./narra-data"
    )]
    pub home: PathBuf,
    /// Where artifacts are stored: fs:///absolute/path or memory:// (default: fs://<home>/objects).
    #[arg(long, global = true, env = "NARRA_STORAGE")]
    pub storage: Option<String>,
    /// A directory of workflow definitions (*.toml) to load besides the built-in ones.
    #[arg(long, global = true, env = "NARRA_WORKFLOWS")]
    pub workflows: Option<PathBuf>,
    /// Print JSON on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Let downloads reach loopback, private and link-local addresses (on-premises sources, tests).
    /// Also `NARRA_ALLOW_PRIVATE_NETWORK=1`; `NARRA_ALLOWED_HOSTS=a,b` allows single hosts.
    #[arg(long, global = true)]
    pub allow_private_network: bool,
    /// How logs are written to stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit sources and run their jobs to completion in this process.
    Ingest {
        /// HTTP(S) URLs, file:// URLs or local paths.
        #[arg(required = true)]
        sources: Vec<String>,
        /// The workflow to run (default: ingest).
        #[arg(long)]
        workflow: Option<String>,
        /// Your own idempotency key (for signed or expiring URLs); default: the normalised source.
        #[arg(long)]
        key: Option<String>,
        /// How many jobs run at once.
        #[arg(long, default_value_t = 2)]
        concurrency: usize,
        /// Re-run succeeded jobs through their checkpoints: only missing or changed work is done.
        #[arg(long)]
        reingest: bool,
    },
    /// Enqueue sources without running them; prints the job ids.
    Submit {
        #[arg(required = true)]
        sources: Vec<String>,
        #[arg(long)]
        workflow: Option<String>,
        #[arg(long)]
        key: Option<String>,
        #[arg(long)]
        reingest: bool,
    },
    /// Run queued jobs.
    Worker {
        #[arg(long, default_value_t = 2)]
        concurrency: usize,
        /// Exit once no job is left to run.
        #[arg(long)]
        drain: bool,
    },
    /// List jobs, newest first.
    Jobs {
        /// pending, running, succeeded (or completed), failed or cancelled.
        #[arg(long)]
        status: Option<Status>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show a job: status, phase, checkpoints, artifacts, metadata and events.
    Show { id: JobId },
    /// Print a job's own log lines.
    Logs { id: JobId },
    /// Send failed or cancelled jobs back to pending and run them, resuming from their last done step.
    Retry {
        #[arg(required = true)]
        ids: Vec<JobId>,
        /// Only enqueue; a worker runs them.
        #[arg(long)]
        detach: bool,
        #[arg(long, default_value_t = 2)]
        concurrency: usize,
    },
    /// Cancel jobs: pending or failed ones at once, running ones at their next step boundary.
    Cancel {
        #[arg(required = true)]
        ids: Vec<JobId>,
    },
    /// Check that each job's video, audio and metadata exist and match their checkpoints.
    Verify {
        /// Jobs to verify (default: every succeeded job).
        ids: Vec<JobId>,
        /// Re-hash every artifact, even when its change token says it is unchanged.
        #[arg(long)]
        full: bool,
    },
    /// Re-derive a finished job's metadata record from its stored original, record what changed,
    /// and store the new record (a succeeded job runs again; only its store step does work).
    Reprobe { id: JobId },
    /// Check that narra can run here: ffmpeg, ffprobe, workflows and their encoders, the state
    /// store, the storage backend and free scratch space. Exits 1 on any problem.
    Doctor {
        /// The least free space the scratch directory's file system must have, in MiB.
        #[arg(long, default_value_t = 1024)]
        scratch_min_free_mb: u64,
    },
}

/// A failure of a command as a whole, with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad arguments or configuration: exit 2.
    #[error("{0}")]
    Usage(String),
    /// The home is held by another process: exit 3.
    #[error(transparent)]
    Locked(LockError),
    /// Anything else: exit 1.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Locked(LockError::Held { .. }) => 3,
            CliError::Locked(_) | CliError::Other(_) => 1,
        }
    }
}

impl From<StoreError> for CliError {
    fn from(error: StoreError) -> CliError {
        CliError::Other(error.into())
    }
}

impl From<EngineError> for CliError {
    fn from(error: EngineError) -> CliError {
        match error {
            EngineError::Workflow(error) => CliError::Usage(error.to_string()),
            other => CliError::Other(other.into()),
        }
    }
}

/// An opened home: the lock, the engine over it.
pub struct Home {
    pub engine: Engine,
    _lock: HomeLock,
}

/// Opens a home: takes its lock, opens the state store, the storage and the workflows.
pub fn open_home(global: &GlobalArgs) -> Result<Home, CliError> {
    let home = absolute(&global.home)?;
    std::fs::create_dir_all(&home).map_err(|error| {
        CliError::Usage(format!("cannot create home {}: {error}", home.display()))
    })?;
    let lock = HomeLock::acquire(&home).map_err(CliError::Locked)?;
    let store = Arc::new(SledStore::open(
        &home.join("state"),
        crate::store::sled_store::DEFAULT_CACHE_CAPACITY_BYTES,
    )?);
    crate::logging::attach_job_sink(store.clone());
    let storage_uri = global
        .storage
        .clone()
        .unwrap_or_else(|| format!("fs://{}", home.join("objects").display()));
    let storage =
        Storage::from_uri(&storage_uri).map_err(|error| CliError::Usage(error.to_string()))?;
    let workflows = WorkflowRegistry::load(global.workflows.as_deref())
        .map_err(|error| CliError::Usage(error.to_string()))?;
    let mut network = crate::steps::net::NetworkPolicy::from_env();
    network.allow_private_network |= global.allow_private_network;
    let engine = Engine::new(store, storage, workflows, &home, network);
    Ok(Home {
        engine,
        _lock: lock,
    })
}

fn absolute(path: &Path) -> Result<PathBuf, CliError> {
    std::path::absolute(path)
        .map_err(|error| CliError::Usage(format!("cannot resolve {}: {error}", path.display())))
}

/// Runs a parsed command line: the whole of `main`, short of process setup.
pub async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    // Doctor must answer when the home is missing, broken or held by another process.
    if let Command::Doctor {
        scratch_min_free_mb,
    } = cli.command
    {
        return run_doctor(&cli.global, scratch_min_free_mb).await;
    }
    let home = open_home(&cli.global)?;
    let engine = &home.engine;
    let json = cli.global.json;
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Ingest {
            sources,
            workflow,
            key,
            concurrency,
            reingest,
        } => {
            reclaim_orphans(engine).await?;
            let options = SubmitOptions {
                workflow,
                key,
                reingest,
            };
            let submitted = submit(engine, &sources, &options).await?;
            // The same source twice on one command line is one job, run once.
            let mut ids: Vec<JobId> = Vec::with_capacity(submitted.len());
            for submitted in &submitted {
                if !ids.contains(&submitted.job.id) {
                    ids.push(submitted.job.id);
                }
            }
            let jobs = run_jobs(engine, &ids, concurrency).await?;
            print_jobs(&mut out, &jobs, json)?;
            Ok(exit_for(&jobs))
        }
        Command::Submit {
            sources,
            workflow,
            key,
            reingest,
        } => {
            let options = SubmitOptions {
                workflow,
                key,
                reingest,
            };
            let submitted = submit(engine, &sources, &options).await?;
            let jobs: Vec<_> = submitted
                .into_iter()
                .map(|submitted| submitted.job)
                .collect();
            if json {
                print_jobs(&mut out, &jobs, true)?;
            } else {
                for job in &jobs {
                    writeln!(out, "{}", job.id).map_err(io)?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker { concurrency, drain } => {
            reclaim_orphans(engine).await?;
            let shutdown = async {
                let _ = tokio::signal::ctrl_c().await;
                tracing::warn!("interrupted: finishing the running jobs, claiming no new ones");
            };
            let jobs = work(engine, concurrency, drain, shutdown).await?;
            print_jobs(&mut out, &jobs, json)?;
            Ok(exit_for(&jobs))
        }
        Command::Jobs { status, limit } => {
            let jobs = engine.store.jobs(&JobFilter { status, limit }).await?;
            if json {
                let mut list = Vec::with_capacity(jobs.len());
                for job in &jobs {
                    let mut summary = views::job_summary(job);
                    let progress = engine.store.progress(job.id).await?;
                    summary["progress"] = views::progress_json(progress.as_ref());
                    list.push(summary);
                }
                writeln!(out, "{}", serde_json::to_string_pretty(&list).expect("JSON")).map_err(io)?;
            } else {
                for job in &jobs {
                    let mut line = views::job_line(job);
                    if job.status == Status::Running
                        && let Some(progress) = engine.store.progress(job.id).await?
                    {
                        line.push_str(&format!("  {}", views::progress_text(&progress)));
                    }
                    writeln!(out, "{line}").map_err(io)?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Show { id } => {
            let job = engine.store.job(id).await?.ok_or_else(|| not_found(id))?;
            let checkpoints = engine.store.checkpoints(id).await?;
            let metadata = engine.store.metadata(id).await?;
            let events = engine.store.events(id).await?;
            let progress = engine.store.progress(id).await?;
            if json {
                let mut value = views::job_detail(&job, &checkpoints, metadata.as_ref(), &events);
                value["progress"] = views::progress_json(progress.as_ref());
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&value).expect("JSON")
                )
                .map_err(io)?;
            } else {
                let text = views::job_text(&job, &checkpoints, metadata.as_ref(), &events);
                let (head, rest) = text.split_once("\n\n").unwrap_or((text.as_str(), ""));
                writeln!(out, "{head}").map_err(io)?;
                if let Some(progress) = &progress {
                    writeln!(out, "progress         {}", views::progress_text(progress)).map_err(io)?;
                }
                write!(out, "\n{rest}").map_err(io)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs { id } => {
            engine.store.job(id).await?.ok_or_else(|| not_found(id))?;
            let lines = engine.store.logs(id).await?;
            for line in &lines {
                let text = if json {
                    views::log_line_json(line).to_string()
                } else {
                    views::log_line_text(line)
                };
                writeln!(out, "{text}").map_err(io)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Retry {
            ids,
            detach,
            concurrency,
        } => {
            reclaim_orphans(engine).await?;
            let mut refused = false;
            let mut queued = Vec::new();
            for id in ids {
                match engine
                    .store
                    .retry(id, "retry requested by an operator")
                    .await?
                {
                    Ok(job) => queued.push(job),
                    // A pending job (one reclaimed from a dead process, say) needs no transition:
                    // it is simply run.
                    Err(crate::engine::machine::Rejected::NotAllowed {
                        status: Status::Pending,
                        ..
                    }) => queued.push(engine.store.job(id).await?.ok_or_else(|| not_found(id))?),
                    Err(rejected) => {
                        refused = true;
                        eprintln!("narra: {rejected}");
                    }
                }
            }
            let jobs = if detach {
                queued
            } else {
                let ids: Vec<JobId> = queued.iter().map(|job| job.id).collect();
                run_jobs(engine, &ids, concurrency).await?
            };
            print_jobs(&mut out, &jobs, json)?;
            if refused {
                Ok(ExitCode::from(1))
            } else {
                Ok(exit_for(&jobs))
            }
        }
        Command::Cancel { ids } => {
            let mut refused = false;
            let mut jobs = Vec::new();
            for id in ids {
                match engine.store.cancel(id).await? {
                    Ok(job) => jobs.push(job),
                    Err(rejected) => {
                        refused = true;
                        eprintln!("narra: {rejected}");
                    }
                }
            }
            print_jobs(&mut out, &jobs, json)?;
            Ok(if refused {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Doctor { .. } => unreachable!("doctor runs before the home is opened"),
        Command::Reprobe { id } => {
            reclaim_orphans(engine).await?;
            let reprobed = crate::engine::reprobe::reprobe(engine, id)
                .await
                .map_err(|error| CliError::Other(error.into()))?;
            if json {
                let value = json!({
                    "job": views::job_summary(&reprobed.job),
                    "changes": reprobed.changes,
                    "republished": reprobed.republished,
                });
                writeln!(out, "{}", serde_json::to_string_pretty(&value).expect("JSON"))
                    .map_err(io)?;
            } else {
                if reprobed.changes.is_empty() {
                    writeln!(out, "{id}  metadata record unchanged").map_err(io)?;
                }
                for change in &reprobed.changes {
                    writeln!(out, "{id}  changed  {change}").map_err(io)?;
                }
                if reprobed.republished {
                    writeln!(out, "{}", views::job_line(&reprobed.job)).map_err(io)?;
                }
            }
            Ok(if reprobed.republished {
                exit_for(std::slice::from_ref(&reprobed.job))
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Verify { ids, full } => {
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
                let problems = verify_job(engine, id, full).await?;
                all_ok &= problems.is_empty();
                if json {
                    reports.push(json!({"id": id.to_string(), "ok": problems.is_empty(), "problems": problems}));
                } else if problems.is_empty() {
                    writeln!(out, "{id}  ok").map_err(io)?;
                } else {
                    for problem in problems {
                        writeln!(
                            out,
                            "{id}  {}",
                            problem["message"].as_str().unwrap_or_default()
                        )
                        .map_err(io)?;
                    }
                }
            }
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&reports).expect("JSON")
                )
                .map_err(io)?;
            }
            Ok(if all_ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// Runbook step 3 for one job: the stored video, audio, metadata object and manifest exist and match
/// the store checkpoint, and the metadata record in the state store matches the extract checkpoint.
pub async fn verify_job(
    engine: &Engine,
    id: JobId,
    full: bool,
) -> Result<Vec<serde_json::Value>, CliError> {
    engine.store.job(id).await?.ok_or_else(|| not_found(id))?;
    let checkpoints = engine.store.checkpoints(id).await?;
    let mut problems = Vec::new();
    let mut problem = |artifact: &str, location: String, kind: &str, message: String| {
        problems.push(json!({"artifact": artifact, "location": location, "problem": kind, "message": message}));
    };
    let Some(store_checkpoint) = checkpoints
        .iter()
        .find(|checkpoint| checkpoint.step == "store")
    else {
        problem(
            "all",
            String::new(),
            "not_stored",
            "no store checkpoint: ingestion did not complete".into(),
        );
        return Ok(problems);
    };
    let mut outputs: Vec<_> = store_checkpoint.outputs.iter().collect();
    if let Some(extract) = checkpoints
        .iter()
        .find(|checkpoint| checkpoint.step == "extract")
    {
        outputs.extend(
            extract
                .outputs
                .iter()
                .filter(|output| output.location == Location::State),
        );
    }
    for output in outputs {
        let state = check_output(engine, id, output, &checkpoints, full)
            .await
            .map_err(|error| CliError::Other(anyhow::anyhow!(error.to_string())))?;
        let name = if output.location == Location::State {
            "metadata_record"
        } else {
            output.name.as_str()
        };
        match state {
            OutputState::Present(_) => {}
            OutputState::Missing => problem(
                name,
                output.location.to_string(),
                "missing",
                format!("{name} is missing: {}", output.location),
            ),
            OutputState::Changed {
                found_size,
                found_blake3,
            } => problem(
                name,
                output.location.to_string(),
                "mismatch",
                format!(
                    "{name} at {} does not match its checkpoint: {found_size} bytes (expected {}), blake3 {} (expected {})",
                    output.location,
                    output.size,
                    found_blake3
                        .map(|hash| hash.to_hex())
                        .unwrap_or_else(|| "not computed".into()),
                    output.blake3
                ),
            ),
        }
    }
    Ok(problems)
}

async fn run_doctor(global: &GlobalArgs, scratch_min_free_mb: u64) -> Result<ExitCode, CliError> {
    let checks = doctor::run_checks(global, scratch_min_free_mb.saturating_mul(1024 * 1024)).await;
    let all_ok = checks.iter().all(|check| check.ok);
    let mut out = std::io::stdout().lock();
    if global.json {
        let value = json!({
            "ok": all_ok,
            "checks": checks.iter().map(doctor::Check::to_json).collect::<Vec<_>>(),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&value).expect("JSON")).map_err(io)?;
    } else {
        for check in &checks {
            writeln!(out, "{}", check.to_text()).map_err(io)?;
        }
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_jobs(
    out: &mut impl Write,
    jobs: &[crate::engine::job::Job],
    json: bool,
) -> Result<(), CliError> {
    if json {
        let list: Vec<_> = jobs.iter().map(views::job_summary).collect();
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&list).expect("JSON")
        )
        .map_err(io)?;
    } else {
        for job in jobs {
            writeln!(out, "{}", views::job_line(job)).map_err(io)?;
        }
    }
    Ok(())
}

fn exit_for(jobs: &[crate::engine::job::Job]) -> ExitCode {
    if jobs.iter().all(|job| job.status == Status::Succeeded) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn not_found(id: JobId) -> CliError {
    CliError::Other(anyhow::anyhow!("job {id} not found"))
}

fn io(error: std::io::Error) -> CliError {
    CliError::Other(error.into())
}
