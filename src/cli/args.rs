//! The command line's definitions (clap): the commands, their options and the global ones, with
//! what each option means. Running them is `cli::run`'s and `cli::dispatch`'s.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use super::CliError;
use crate::logging::LogFormat;
use crate::model::job::{BackfillId, JobId, Status};

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
    /// The state store (jobs, checkpoints, events): sled://<path> (default: sled://<home>/state) or
    /// postgres://user:password@host:port/database, a store several narra processes share.
    #[arg(long, global = true, env = "NARRA_STATE")]
    pub state: Option<String>,
    /// Where artifacts are stored: fs:///absolute/path or memory:// (default: fs://<home>/objects).
    #[arg(long, global = true, env = "NARRA_STORAGE")]
    pub storage: Option<String>,
    /// A directory of workflow definitions (*.toml) to load besides the built-in ones.
    #[arg(long, global = true, env = "NARRA_WORKFLOWS")]
    pub workflows: Option<PathBuf>,
    /// Print JSON on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Let downloads reach loopback and private addresses (on-premises sources, tests); link-local
    /// and cloud metadata addresses stay refused. Also `NARRA_ALLOW_PRIVATE_NETWORK=1`;
    /// `NARRA_ALLOWED_HOSTS=a,b` allows single hosts, whatever their addresses.
    #[arg(long, global = true)]
    pub allow_private_network: bool,
    /// How logs are written to stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// A bulk selection of jobs for `retry` and `cancel` instead of ids.
#[derive(Debug, Args, Clone)]
pub struct SelectionArgs {
    /// Every job with this status.
    #[arg(long)]
    pub status: Option<Status>,
    /// Only jobs whose last error has this class (`download_blocked`, ...).
    #[arg(long)]
    pub class: Option<String>,
    /// Only the jobs of this backfill.
    #[arg(long, value_name = "ID")]
    pub backfill: Option<BackfillId>,
}

impl SelectionArgs {
    pub(super) fn selection(&self) -> crate::engine::stuck::Selection {
        crate::engine::stuck::Selection {
            status: self.status,
            class: self.class.clone(),
            backfill: self.backfill,
        }
    }
}

/// How a job-running command stops on SIGINT/SIGTERM.
#[derive(Debug, Args, Clone, Copy)]
pub struct ShutdownArgs {
    /// After SIGINT/SIGTERM, how long running steps may take to reach their checkpoint before
    /// they are cancelled and their jobs released to pending.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub grace_s: u64,
}

/// How a job-running command schedules jobs (`model::scheduling`). Each is also an environment
/// variable, so a service's unit file can set them once.
#[derive(Debug, Args, Clone, Copy)]
pub struct SchedulingArgs {
    /// At most this many jobs of one source host run at once (0: no limit).
    #[arg(long, env = "NARRA_HOST_CONCURRENCY", default_value_t = 4)]
    pub host_concurrency: usize,
    /// At most this many job starts per second on one source host (0: no limit).
    #[arg(long, env = "NARRA_HOST_RATE", default_value_t = 0.0)]
    pub host_rate: f64,
    /// Refusals (403, 429, ...) in a row from one host that open its circuit breaker (0: never).
    #[arg(long, env = "NARRA_BREAKER_FAILURES", default_value_t = 5)]
    pub breaker_failures: usize,
    /// The window those refusals must fall in.
    #[arg(long, env = "NARRA_BREAKER_WINDOW_S", default_value_t = 600)]
    pub breaker_window_s: u64,
    /// How long an open breaker holds its host's jobs before a probe job tests it; doubled each
    /// time the probe is refused, up to an hour.
    #[arg(long, env = "NARRA_BREAKER_COOLDOWN_MS", default_value_t = 60_000)]
    pub breaker_cooldown_ms: u64,
    /// The delay before the first automatic retry of a transient failure; doubled per attempt, up
    /// to 30 minutes. How many attempts a job gets is its workflow's `attempts_max`.
    #[arg(long, env = "NARRA_RETRY_DELAY_MS", default_value_t = 30_000)]
    pub retry_delay_ms: u64,
}

impl SchedulingArgs {
    pub fn policy(&self) -> Result<crate::model::scheduling::SchedulingPolicy, CliError> {
        use crate::model::scheduling::{BreakerPolicy, RetryPolicy, SchedulingPolicy};
        if !self.host_rate.is_finite() || self.host_rate < 0.0 {
            return Err(CliError::Usage(format!(
                "--host-rate must be a number of job starts per second, 0 or more, not {}",
                self.host_rate
            )));
        }
        let host_start_interval_ms = if self.host_rate > 0.0 {
            (1000.0 / self.host_rate).ceil() as u64
        } else {
            0
        };
        Ok(SchedulingPolicy {
            host_running_max: self.host_concurrency,
            host_start_interval_ms,
            breaker: BreakerPolicy {
                failures_max: self.breaker_failures,
                window_ms: self.breaker_window_s.saturating_mul(1000),
                cooldown_ms: self.breaker_cooldown_ms,
                cooldown_max_ms: (60 * 60 * 1000).max(self.breaker_cooldown_ms),
            },
            retry: RetryPolicy {
                delay_initial_ms: self.retry_delay_ms,
                delay_max_ms: (30 * 60 * 1000).max(self.retry_delay_ms),
            },
        })
    }
}

/// What every command that runs jobs takes: how it stops and how it schedules.
#[derive(Debug, Args, Clone, Copy)]
pub struct RunningArgs {
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
    #[command(flatten)]
    pub scheduling: SchedulingArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit sources and run their jobs to completion in this process.
    Ingest(IngestArgs),
    /// Enqueue sources without running them; prints the job ids.
    Submit(SubmitArgs),
    /// Run queued jobs.
    Worker(WorkerArgs),
    /// Serve the HTTP API and the admin console on `--bind`, and run queued jobs like `worker`
    /// (unless `--no-worker`). Mutations need `NARRA_API_TOKEN`; a non-loopback address is refused
    /// without it. Prints the URL it serves on stdout.
    Serve(ServeArgs),
    /// List jobs, newest first.
    Jobs(JobsArgs),
    /// Return a job to pending (the runbook's "manually reset job status"): a running job whose
    /// lease expired, or a succeeded or failed one. Recorded as an event and an incident.
    Reset(ResetArgs),
    /// Submit a manifest of sources in batches and run them; running it again resumes it.
    Backfill(BackfillArgs),
    /// Show a job: status, phase, checkpoints, artifacts, metadata and events.
    Show(JobArg),
    /// Print a job's own log lines.
    Logs(JobArg),
    /// Send failed or cancelled jobs back to pending and run them, resuming from their last done step.
    Retry(RetryArgs),
    /// Cancel jobs: pending or failed ones at once, running ones at their next step boundary.
    Cancel(TargetArgs),
    /// Check that each job's video, audio, metadata object, manifest and metadata record exist and
    /// match their checkpoints (runbook step 3). Exits 1 on any problem.
    Verify(VerifyArgs),
    /// Re-derive a finished job's metadata record from its stored original, record what changed,
    /// and store the new record (a succeeded job runs again; only its store step does work).
    Reprobe(JobArg),
    /// Check that narra can run here: ffmpeg, ffprobe, workflows and their encoders, the state
    /// store, the storage backend and free scratch space. Exits 1 on any problem.
    Doctor(DoctorArgs),
    /// Audit jobs' checkpoint chains and idempotency from their event history (default: every
    /// job). Exits 1 when any finding is a violation.
    Audit(AuditArgs),
    /// Runbook step 5: list stale scratch, orphan and partial objects, corrupt artifacts and the
    /// jobs to reset (a dry run, with a plan id); `--confirm PLAN_ID` carries out that exact plan.
    Cleanup(CleanupArgs),
    /// The runbook's escalation signals: hosts with repeated failures, storage reachability and
    /// failures, stuck jobs, corruption. Exits 1 when something calls for escalation.
    Health(HealthArgs),
    /// Print the incident log: every action cleanup and delete took.
    Incidents,
    /// Bring the state store's schema up to this narra's: on PostgreSQL, apply the migrations
    /// the database lacks (every process also does on start) and list them; sled migrates its
    /// records whenever it is opened.
    Migrate,
    /// Write the whole state store (every job with its checkpoints, events, metadata and logs,
    /// pruned jobs, backfills, the incident log, hosts) as one JSON Lines file, ending in a
    /// checksummed trailer: what `import` reads to move a home's state into PostgreSQL. Needs a
    /// home no other process holds.
    Export(ExportArgs),
    /// Read a file `export` wrote into the state store `--state` names. The whole file is checked
    /// first (trailer, count, hash); records are written as they were, each in one transaction;
    /// run again after an interruption, it skips what it already wrote. Records the store holds
    /// with other content are conflicts: listed, never overwritten (exit 1).
    Import(ImportArgs),
    /// Delete a job's records and its artifacts no other job references (a takedown). Without
    /// `--confirm`, prints what it would delete and changes nothing.
    Delete(DeleteArgs),
    /// Remove the state of finished jobs last updated longer ago than `--older-than`, keeping
    /// their objects and manifests in storage. Without `--confirm`, lists them and changes nothing.
    Prune(PruneArgs),
}

// Each command's own options. The help a command prints is its variant's doc comment above, which
// clap applies after these structs' own (so theirs never reach the user).

/// What a new job is given besides its source, in `ingest` and `submit` alike.
#[derive(Debug, Args, Clone)]
pub struct NewJobArgs {
    /// The new jobs' priority: higher runs first (default 10; backfill lines default to 0).
    #[arg(long, allow_hyphen_values = true, value_parser = clap::value_parser!(i32).range(-1000..=1000))]
    pub priority: Option<i32>,
    /// Send a signed notice to this http(s) URL when each job finishes (default: the
    /// workflow's `callback_url`). Needs NARRA_WEBHOOK_SECRET; see docs/RUNBOOK.md.
    #[arg(long)]
    pub callback_url: Option<String>,
}

/// `narra ingest`: a `submit` whose jobs are then run here.
#[derive(Debug, Args)]
pub struct IngestArgs {
    #[command(flatten)]
    pub submit: SubmitArgs,
    /// How many jobs run at once.
    #[arg(long, default_value_t = 2)]
    pub concurrency: usize,
    #[command(flatten)]
    pub running: RunningArgs,
}

/// `narra submit`, and what `ingest` submits.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// HTTP(S) URLs, file:// URLs or local paths.
    #[arg(required = true)]
    pub sources: Vec<String>,
    /// The workflow to run (default: ingest).
    #[arg(long)]
    pub workflow: Option<String>,
    /// Your own idempotency key (for signed or expiring URLs); default: the normalised source.
    #[arg(long)]
    pub key: Option<String>,
    /// Re-run succeeded jobs through their checkpoints: only missing or changed work is done.
    #[arg(long)]
    pub reingest: bool,
    #[command(flatten)]
    pub new_job: NewJobArgs,
}

/// `narra worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[arg(long, default_value_t = 2)]
    pub concurrency: usize,
    /// Exit once no job is left to run.
    #[arg(long)]
    pub drain: bool,
    #[command(flatten)]
    pub running: RunningArgs,
}

/// `narra serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub bind: std::net::SocketAddr,
    /// Only serve: run no jobs (another `narra worker` cannot run while this holds the home,
    /// so queued jobs wait until it ends).
    #[arg(long)]
    pub no_worker: bool,
    #[arg(long, default_value_t = 2)]
    pub concurrency: usize,
    #[command(flatten)]
    pub running: RunningArgs,
}

/// `narra jobs`.
#[derive(Debug, Args)]
pub struct JobsArgs {
    /// pending, running, succeeded (or completed), failed or cancelled.
    #[arg(long)]
    pub status: Option<Status>,
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Only the jobs of this backfill (`backfill --list` shows the ids).
    #[arg(long, value_name = "ID")]
    pub backfill: Option<BackfillId>,
    /// Only running jobs whose lease expired or that have not moved (no event, no download
    /// progress) for `--stuck-after-s` seconds.
    #[arg(long, conflicts_with_all = ["status", "backfill"])]
    pub stuck: bool,
    #[arg(long, value_name = "SECONDS", default_value_t = crate::model::stuck::DEFAULT_STUCK_AFTER_S)]
    pub stuck_after_s: u64,
}

/// `narra reset`.
#[derive(Debug, Args)]
pub struct ResetArgs {
    pub id: JobId,
    /// Also reset a running job whose lease is still live (its holder may still be working).
    #[arg(long)]
    pub force: bool,
    /// Why, for the event history and the incident log.
    #[arg(long)]
    pub reason: Option<String>,
}

/// `narra backfill`.
#[derive(Debug, Args)]
pub struct BackfillArgs {
    /// One source per line, JSON Lines ({"source": ...}) or CSV with a `source` column; `-`
    /// reads standard input.
    #[arg(required_unless_present = "list")]
    pub manifest: Option<String>,
    /// The workflow of lines that name none (default: ingest).
    #[arg(long)]
    pub workflow: Option<String>,
    #[arg(long, default_value_t = crate::engine::backfill::DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
    /// Also retry jobs that failed with a permanent class (and cancelled ones).
    #[arg(long)]
    pub retry_permanent: bool,
    /// Re-run succeeded jobs through their checkpoints: only missing or changed work is done.
    #[arg(long)]
    pub reingest: bool,
    /// List the backfills instead: id, creation time, jobs, manifest.
    #[arg(long, conflicts_with = "manifest")]
    pub list: bool,
    #[command(flatten)]
    pub running: RunningArgs,
}

/// One job: `show`, `logs`, `reprobe`.
#[derive(Debug, Args)]
pub struct JobArg {
    pub id: JobId,
}

/// The jobs a bulk command acts on: ids, or the jobs a selection names (`retry`, `cancel`).
#[derive(Debug, Args)]
pub struct TargetArgs {
    #[arg(required_unless_present_any = ["status", "class", "backfill"], conflicts_with_all = ["status", "class", "backfill"])]
    pub ids: Vec<JobId>,
    #[command(flatten)]
    pub selection: SelectionArgs,
}

/// `narra retry`.
#[derive(Debug, Args)]
pub struct RetryArgs {
    #[command(flatten)]
    pub targets: TargetArgs,
    /// Redo from this step: its checkpoint and those of the steps after it are discarded
    /// first (succeeded jobs too; never pending or running ones).
    #[arg(long, value_name = "STEP")]
    pub from: Option<String>,
    /// Only enqueue; a worker runs them.
    #[arg(long)]
    pub detach: bool,
    #[arg(long, default_value_t = 2)]
    pub concurrency: usize,
    #[command(flatten)]
    pub running: RunningArgs,
}

/// `narra verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Jobs to verify (default: every succeeded job).
    pub ids: Vec<JobId>,
    /// Stream and re-hash every object, even when its change token says it is unchanged.
    #[arg(long, visible_alias = "full")]
    pub deep: bool,
}

/// `narra doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The least free space the scratch directory's file system must have, in MiB.
    #[arg(long, default_value_t = 1024)]
    pub scratch_min_free_mb: u64,
}

/// `narra audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    pub ids: Vec<JobId>,
}

/// `narra cleanup`.
#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Re-hash every stored artifact to find corruption (default: size and change token).
    #[arg(long)]
    pub deep: bool,
    /// Unreferenced objects younger than this are left alone: they may be uploads in flight.
    #[arg(long, default_value_t = crate::model::cleanup::DEFAULT_MIN_AGE_S)]
    pub min_age_s: u64,
    /// Carry out the plan the dry run printed; refused if the plan changed since.
    #[arg(long, value_name = "PLAN_ID")]
    pub confirm: Option<String>,
}

/// `narra health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// A host with at least this many failed jobs in the window calls for escalation.
    #[arg(long, default_value_t = 3)]
    pub host_failures_min: usize,
    /// How far back failures count, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 86_400)]
    pub window_s: u64,
    #[arg(long, value_name = "SECONDS", default_value_t = crate::model::stuck::DEFAULT_STUCK_AFTER_S)]
    pub stuck_after_s: u64,
}

/// `narra export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The file to write (written beside it, then renamed into place); default: stdout.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Keep the secrets in sources, keys and callback URLs, as moving a store with `import`
    /// needs (the file is then as sensitive as the store). Default: redacted, which `import`
    /// refuses.
    #[arg(long)]
    pub include_secrets: bool,
}

/// `narra import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    pub file: PathBuf,
    /// Only check the file; write nothing.
    #[arg(long)]
    pub check: bool,
}

/// `narra delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    pub id: JobId,
    #[arg(long)]
    pub confirm: bool,
}

/// `narra prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// A whole number and a unit: 30d, 12h, 90m, 45s.
    #[arg(long, value_name = "DURATION")]
    pub older_than: String,
    /// Only jobs with these statuses (succeeded, failed, cancelled; default: all three).
    #[arg(long, num_args = 1..)]
    pub status: Vec<Status>,
    #[arg(long)]
    pub confirm: bool,
}

impl Command {
    /// The subcommand's name, as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Ingest(_) => "ingest",
            Command::Submit(_) => "submit",
            Command::Worker(_) => "worker",
            Command::Serve(_) => "serve",
            Command::Jobs(_) => "jobs",
            Command::Reset(_) => "reset",
            Command::Backfill(_) => "backfill",
            Command::Show(_) => "show",
            Command::Logs(_) => "logs",
            Command::Retry(_) => "retry",
            Command::Cancel(_) => "cancel",
            Command::Verify(_) => "verify",
            Command::Reprobe(_) => "reprobe",
            Command::Doctor(_) => "doctor",
            Command::Audit(_) => "audit",
            Command::Cleanup(_) => "cleanup",
            Command::Health(_) => "health",
            Command::Incidents => "incidents",
            Command::Migrate => "migrate",
            Command::Delete(_) => "delete",
            Command::Prune(_) => "prune",
            Command::Export(_) => "export",
            Command::Import(_) => "import",
        }
    }

    /// How a command that runs jobs stops and schedules them; `None` for the others.
    pub fn running(&self) -> Option<&RunningArgs> {
        match self {
            Command::Ingest(IngestArgs { running, .. })
            | Command::Worker(WorkerArgs { running, .. })
            | Command::Serve(ServeArgs { running, .. })
            | Command::Retry(RetryArgs { running, .. })
            | Command::Backfill(BackfillArgs { running, .. }) => Some(running),
            _ => None,
        }
    }
}
