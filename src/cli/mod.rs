//! The command line: clap definitions, the glue that opens a home and calls the library, and output
//! formatting. No behaviour lives here that the library does not expose to tests and the API too.
//!
//! Data goes to stdout (text or, with `--json`, JSON only); logs go to stderr, always.

pub mod backfill;
pub mod doctor;
pub mod health;
pub mod maintenance;
pub mod remote;
pub mod serve;
pub mod signals;
pub mod stuck;
pub mod transfer;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::engine::Engine;
use crate::engine::orchestrator::{
    EngineError, SubmitOptions, reclaim_orphans, run_jobs, submit, work,
};
use crate::logging::LogFormat;
use crate::model::job::{BackfillId, JobId, Status};
use crate::model::sources::LocalPaths;
use crate::storage::Storage;
use crate::store::{
    HomeLock, JobFilter, LockError, PgStore, SledStore, StateStore, StateUri, StoreError,
};
use crate::views;
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
    fn selection(&self) -> crate::engine::stuck::Selection {
        crate::engine::stuck::Selection {
            status: self.status,
            class: self.class.clone(),
            backfill: self.backfill,
        }
    }
}

/// The ids given, or the jobs a selection names that `allowed` statuses admit (a bulk operation
/// skips jobs it could not act on rather than refusing them one by one).
async fn ids_or_selection(
    engine: &Engine,
    ids: Vec<JobId>,
    selection: &SelectionArgs,
    allowed: &[Status],
) -> Result<Vec<JobId>, CliError> {
    if !ids.is_empty() {
        return Ok(ids);
    }
    let jobs = crate::engine::stuck::select_jobs(engine, &selection.selection()).await?;
    Ok(jobs
        .into_iter()
        .filter(|job| allowed.contains(&job.status))
        .map(|job| job.id)
        .collect())
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
        /// The new jobs' priority: higher runs first (default 10; backfill lines default to 0).
        #[arg(long, allow_hyphen_values = true, value_parser = clap::value_parser!(i32).range(-1000..=1000))]
        priority: Option<i32>,
        /// Send a signed notice to this http(s) URL when each job finishes (default: the
        /// workflow's `callback_url`). Needs NARRA_WEBHOOK_SECRET; see docs/RUNBOOK.md.
        #[arg(long)]
        callback_url: Option<String>,
        #[command(flatten)]
        shutdown: ShutdownArgs,
        #[command(flatten)]
        scheduling: SchedulingArgs,
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
        /// The new jobs' priority: higher runs first (default 10; backfill lines default to 0).
        #[arg(long, allow_hyphen_values = true, value_parser = clap::value_parser!(i32).range(-1000..=1000))]
        priority: Option<i32>,
        /// Send a signed notice to this http(s) URL when each job finishes (default: the
        /// workflow's `callback_url`). Needs NARRA_WEBHOOK_SECRET; see docs/RUNBOOK.md.
        #[arg(long)]
        callback_url: Option<String>,
    },
    /// Run queued jobs.
    Worker {
        #[arg(long, default_value_t = 2)]
        concurrency: usize,
        /// Exit once no job is left to run.
        #[arg(long)]
        drain: bool,
        #[command(flatten)]
        shutdown: ShutdownArgs,
        #[command(flatten)]
        scheduling: SchedulingArgs,
    },
    /// Serve the HTTP API and the admin console on `--bind`, and run queued jobs like `worker`
    /// (unless `--no-worker`). Mutations need `NARRA_API_TOKEN`; a non-loopback address is refused
    /// without it. Prints the URL it serves on stdout.
    Serve {
        /// The address to listen on; port 0 picks a free port.
        #[arg(long, default_value = "127.0.0.1:8080")]
        bind: std::net::SocketAddr,
        /// Only serve: run no jobs (another `narra worker` cannot run while this holds the home,
        /// so queued jobs wait until it ends).
        #[arg(long)]
        no_worker: bool,
        #[arg(long, default_value_t = 2)]
        concurrency: usize,
        #[command(flatten)]
        shutdown: ShutdownArgs,
        #[command(flatten)]
        scheduling: SchedulingArgs,
    },
    /// List jobs, newest first.
    Jobs {
        /// pending, running, succeeded (or completed), failed or cancelled.
        #[arg(long)]
        status: Option<Status>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Only the jobs of this backfill (`backfill --list` shows the ids).
        #[arg(long, value_name = "ID")]
        backfill: Option<BackfillId>,
        /// Only running jobs whose lease expired or that have not moved (no event, no download
        /// progress) for `--stuck-after-s` seconds.
        #[arg(long, conflicts_with_all = ["status", "backfill"])]
        stuck: bool,
        #[arg(long, value_name = "SECONDS", default_value_t = crate::model::stuck::DEFAULT_STUCK_AFTER_S)]
        stuck_after_s: u64,
    },
    /// Return a job to pending (the runbook's "manually reset job status"): a running job whose
    /// lease expired, or a succeeded or failed one. Recorded as an event and an incident.
    Reset {
        id: JobId,
        /// Also reset a running job whose lease is still live (its holder may still be working).
        #[arg(long)]
        force: bool,
        /// Why, for the event history and the incident log.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Submit a manifest of sources in batches and run them; running it again resumes it.
    Backfill {
        /// One source per line, JSON Lines ({"source": ...}) or CSV with a `source` column; `-`
        /// reads standard input.
        #[arg(required_unless_present = "list")]
        manifest: Option<String>,
        /// The workflow of lines that name none (default: ingest).
        #[arg(long)]
        workflow: Option<String>,
        #[arg(long, default_value_t = crate::engine::backfill::DEFAULT_CONCURRENCY)]
        concurrency: usize,
        /// Also retry jobs that failed with a permanent class (and cancelled ones).
        #[arg(long)]
        retry_permanent: bool,
        /// Re-run succeeded jobs through their checkpoints: only missing or changed work is done.
        #[arg(long)]
        reingest: bool,
        /// List the backfills instead: id, creation time, jobs, manifest.
        #[arg(long, conflicts_with = "manifest")]
        list: bool,
        #[command(flatten)]
        shutdown: ShutdownArgs,
        #[command(flatten)]
        scheduling: SchedulingArgs,
    },
    /// Show a job: status, phase, checkpoints, artifacts, metadata and events.
    Show { id: JobId },
    /// Print a job's own log lines.
    Logs { id: JobId },
    /// Send failed or cancelled jobs back to pending and run them, resuming from their last done step.
    Retry {
        #[arg(required_unless_present_any = ["status", "class", "backfill"], conflicts_with_all = ["status", "class", "backfill"])]
        ids: Vec<JobId>,
        #[command(flatten)]
        selection: SelectionArgs,
        /// Redo from this step: its checkpoint and those of the steps after it are discarded
        /// first (succeeded jobs too; never pending or running ones).
        #[arg(long, value_name = "STEP")]
        from: Option<String>,
        /// Only enqueue; a worker runs them.
        #[arg(long)]
        detach: bool,
        #[arg(long, default_value_t = 2)]
        concurrency: usize,
        #[command(flatten)]
        shutdown: ShutdownArgs,
        #[command(flatten)]
        scheduling: SchedulingArgs,
    },
    /// Cancel jobs: pending or failed ones at once, running ones at their next step boundary.
    Cancel {
        #[arg(required_unless_present_any = ["status", "class", "backfill"], conflicts_with_all = ["status", "class", "backfill"])]
        ids: Vec<JobId>,
        #[command(flatten)]
        selection: SelectionArgs,
    },
    /// Check that each job's video, audio, metadata object, manifest and metadata record exist and
    /// match their checkpoints (runbook step 3). Exits 1 on any problem.
    Verify {
        /// Jobs to verify (default: every succeeded job).
        ids: Vec<JobId>,
        /// Stream and re-hash every object, even when its change token says it is unchanged.
        #[arg(long, visible_alias = "full")]
        deep: bool,
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
    /// Audit jobs' checkpoint chains and idempotency from their event history (default: every
    /// job). Exits 1 when any finding is a violation.
    Audit { ids: Vec<JobId> },
    /// Runbook step 5: list stale scratch, orphan and partial objects, corrupt artifacts and the
    /// jobs to reset (a dry run, with a plan id); `--confirm PLAN_ID` carries out that exact plan.
    Cleanup {
        /// Re-hash every stored artifact to find corruption (default: size and change token).
        #[arg(long)]
        deep: bool,
        /// Unreferenced objects younger than this are left alone: they may be uploads in flight.
        #[arg(long, default_value_t = crate::model::cleanup::DEFAULT_MIN_AGE_S)]
        min_age_s: u64,
        /// Carry out the plan the dry run printed; refused if the plan changed since.
        #[arg(long, value_name = "PLAN_ID")]
        confirm: Option<String>,
    },
    /// The runbook's escalation signals: hosts with repeated failures, storage reachability and
    /// failures, stuck jobs, corruption. Exits 1 when something calls for escalation.
    Health {
        /// A host with at least this many failed jobs in the window calls for escalation.
        #[arg(long, default_value_t = 3)]
        host_failures_min: usize,
        /// How far back failures count, in seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 86_400)]
        window_s: u64,
        #[arg(long, value_name = "SECONDS", default_value_t = crate::model::stuck::DEFAULT_STUCK_AFTER_S)]
        stuck_after_s: u64,
    },
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
    Export {
        /// The file to write (written beside it, then renamed into place); default: stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Keep the secrets in sources, keys and callback URLs, as moving a store with `import`
        /// needs (the file is then as sensitive as the store). Default: redacted, which `import`
        /// refuses.
        #[arg(long)]
        include_secrets: bool,
    },
    /// Read a file `export` wrote into the state store `--state` names. The whole file is checked
    /// first (trailer, count, hash); records are written as they were, each in one transaction;
    /// run again after an interruption, it skips what it already wrote. Records the store holds
    /// with other content are conflicts: listed, never overwritten (exit 1).
    Import {
        file: PathBuf,
        /// Only check the file; write nothing.
        #[arg(long)]
        check: bool,
    },
    /// Delete a job's records and its artifacts no other job references (a takedown). Without
    /// `--confirm`, prints what it would delete and changes nothing.
    Delete {
        id: JobId,
        #[arg(long)]
        confirm: bool,
    },
    /// Remove the state of finished jobs last updated longer ago than `--older-than`, keeping
    /// their objects and manifests in storage. Without `--confirm`, lists them and changes nothing.
    Prune {
        /// A whole number and a unit: 30d, 12h, 90m, 45s.
        #[arg(long, value_name = "DURATION")]
        older_than: String,
        /// Only jobs with these statuses (succeeded, failed, cancelled; default: all three).
        #[arg(long, num_args = 1..)]
        status: Vec<Status>,
        #[arg(long)]
        confirm: bool,
    },
}

impl Command {
    /// The subcommand's name, as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Ingest { .. } => "ingest",
            Command::Submit { .. } => "submit",
            Command::Worker { .. } => "worker",
            Command::Serve { .. } => "serve",
            Command::Jobs { .. } => "jobs",
            Command::Reset { .. } => "reset",
            Command::Backfill { .. } => "backfill",
            Command::Show { .. } => "show",
            Command::Logs { .. } => "logs",
            Command::Retry { .. } => "retry",
            Command::Cancel { .. } => "cancel",
            Command::Verify { .. } => "verify",
            Command::Reprobe { .. } => "reprobe",
            Command::Doctor { .. } => "doctor",
            Command::Audit { .. } => "audit",
            Command::Cleanup { .. } => "cleanup",
            Command::Health { .. } => "health",
            Command::Incidents => "incidents",
            Command::Migrate => "migrate",
            Command::Delete { .. } => "delete",
            Command::Prune { .. } => "prune",
            Command::Export { .. } => "export",
            Command::Import { .. } => "import",
        }
    }
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
    /// The one line the user is told (after `narra: `): the whole cause chain of an `Other`.
    pub fn message(&self) -> String {
        match self {
            CliError::Other(inner) => format!("{inner:#}"),
            other => other.to_string(),
        }
    }

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
            EngineError::Usage(message) => CliError::Usage(message),
            EngineError::Callback(error) => CliError::Usage(format!("{}: {error}", error.class)),
            EngineError::Source(error) => CliError::Usage(format!("{}: {error}", error.class())),
            other => CliError::Other(other.into()),
        }
    }
}

/// An opened home: the lock, the engine over it, and (once `serve` is called) the socket through
/// which other narra processes run their commands meanwhile. A home whose state is on PostgreSQL
/// is not locked: the store is shared by design, and every process opens it itself.
pub struct Home {
    pub engine: Engine,
    // Declared before the lock, so it is dropped first: the socket file is gone before another
    // process can take the home and bind its own.
    server: Option<remote::Server>,
    /// `None` for a PostgreSQL home, which is not locked.
    lock: Option<HomeLock>,
}

impl Home {
    /// Serves other narra processes' commands on `<home>/narra.sock` until `close` (or drop). A
    /// socket that cannot be set up is logged and does without: this process's own command runs
    /// the same, and the others are told the home is held, as they were before sockets.
    pub fn serve(&mut self, holder: remote::Holder) {
        // A shared store needs no go-between: other processes open it themselves.
        if self.lock.is_none() {
            return;
        }
        match remote::Server::start(self.engine.clone(), holder) {
            Ok(server) => self.server = Some(server),
            Err(error) => tracing::warn!(
                %error,
                "cannot listen on {}: other narra commands will find the home held",
                remote::socket_path(&self.engine.home).display()
            ),
        }
    }

    /// Stops serving, letting commands already started for other processes finish.
    pub async fn close(&mut self) {
        if let Some(server) = self.server.take() {
            server.close().await;
        }
    }
}

impl Drop for Home {
    /// Job log lines reach the store before the lock is let go (fields drop after this runs).
    fn drop(&mut self) {
        crate::logging::flush_job_logs();
    }
}

/// The state URI of `--state` / `NARRA_STATE`, read against the home.
pub fn state_uri(global: &GlobalArgs, home: &Path) -> Result<StateUri, CliError> {
    StateUri::parse(global.state.as_deref(), home)
        .map_err(|error| CliError::Usage(error.to_string()))
}

/// Opens a home: opens the state store (taking the home's lock when the store is sled, which one
/// process holds at a time), the storage and the workflows.
pub async fn open_home(global: &GlobalArgs) -> Result<Home, CliError> {
    let home = absolute(&global.home)?;
    crate::private_files::create_dir_all(&home).map_err(|error| {
        CliError::Usage(format!("cannot create home {}: {error}", home.display()))
    })?;
    let events_max = maintenance::events_max_from_env()?;
    let (store, lock): (Arc<dyn StateStore>, Option<HomeLock>) = match state_uri(global, &home)? {
        StateUri::Sled(path) => {
            let lock = HomeLock::acquire(&home).map_err(CliError::Locked)?;
            // With the home ours, a database still locked belongs to a process that is exiting.
            let store = SledStore::open_handed_over(&path).await?;
            if let Some(events_max) = events_max {
                store.set_events_max(events_max);
            }
            (Arc::new(store), Some(lock))
        }
        StateUri::Postgres(uri) => {
            let store = PgStore::open(&uri).await?;
            if let Some(events_max) = events_max {
                store.set_events_max(events_max);
            }
            (Arc::new(store), None)
        }
    };
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
    let mut engine = Engine::new(store, storage, workflows, &home, network);
    // The lease length is a knob for tests and for stores shared by slow networks.
    if let Some(ttl_ms) = positive_from_env("NARRA_LEASE_TTL_MS", "milliseconds")? {
        engine.lease_ttl_ms = ttl_ms;
    }
    Ok(Home {
        engine,
        server: None,
        lock,
    })
}

fn absolute(path: &Path) -> Result<PathBuf, CliError> {
    std::path::absolute(path)
        .map_err(|error| CliError::Usage(format!("cannot resolve {}: {error}", path.display())))
}

/// Runs a parsed command line: the whole of `main`, short of process setup. `http` is what `narra
/// serve` serves (`api::http_service`, handed in by the binary).
pub async fn run(cli: Cli, http: serve::HttpServer) -> Result<ExitCode, CliError> {
    // Commands that run jobs stop gracefully on SIGINT/SIGTERM; the handlers are installed before
    // anything else, so an early signal is never the default "die at once".
    let shutdown = crate::engine::shutdown::Shutdown::new();
    let (grace_s, scheduling) = match &cli.command {
        Command::Worker {
            shutdown,
            scheduling,
            ..
        }
        | Command::Serve {
            shutdown,
            scheduling,
            ..
        }
        | Command::Ingest {
            shutdown,
            scheduling,
            ..
        }
        | Command::Retry {
            shutdown,
            scheduling,
            ..
        }
        | Command::Backfill {
            shutdown,
            scheduling,
            ..
        } => (Some(shutdown.grace_s), Some(scheduling.policy()?)),
        _ => (None, None),
    };
    if let Some(grace_s) = grace_s {
        signals::install(shutdown.clone(), std::time::Duration::from_secs(grace_s))
            .map_err(|error| CliError::Other(error.into()))?;
    }
    // Doctor must answer when the home is missing, broken or held by another process.
    if let Command::Doctor {
        scratch_min_free_mb,
    } = cli.command
    {
        return run_doctor(&cli.global, scratch_min_free_mb).await;
    }
    if let Command::Migrate = cli.command {
        return run_migrate(&cli.global).await;
    }
    // While another process holds the home, that process runs the command for us.
    let mut home = match remote::open_or_forward(&cli.global, &shutdown).await? {
        remote::Opened::Home(home) => *home,
        remote::Opened::Forwarded(code) => return Ok(code),
    };
    home.engine.shutdown = shutdown;
    if let Command::Export { .. } | Command::Import { .. } = &cli.command {
        let home_dir = absolute(&cli.global.home)?;
        let state = state_uri(&cli.global, &home_dir)?.display();
        let result = transfer::run(&home.engine, &cli.command, &state, cli.global.json).await;
        home.close().await;
        return result;
    }
    if let Some(scheduling) = scheduling {
        home.engine.scheduling = scheduling;
    }
    // From here until the home is closed, other narra processes are served through the socket.
    home.serve(remote::Holder::new(&cli.command));
    let context = Context {
        json: cli.global.json,
        cwd: None,
        actor: crate::engine::cleanup::actor_from_env(),
        served: None,
        http: Some(http),
    };
    let result = dispatch(
        &home.engine,
        cli.command,
        &context,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr(),
    )
    .await;
    home.close().await;
    result
}

/// What a command runs with besides its own arguments.
#[derive(Debug, Clone)]
pub struct Context {
    /// `--json`: JSON on stdout instead of text.
    pub json: bool,
    /// The directory relative local paths (`submit`) are resolved against: the client's, for a
    /// served command; `None`, this process's working directory.
    pub cwd: Option<PathBuf>,
    /// Who acts, for the incident log and the events of `reset`, `cleanup` and `delete`: `$USER`
    /// of the process the command was typed in.
    pub actor: String,
    /// Set when this process holds the home and serves the command for another process
    /// (`remote`): the jobs it finds running are its own, alive, and it runs no job for a client.
    pub served: Option<remote::Holder>,
    /// What `serve` serves: `None` for a command served for another process, which is never
    /// `serve`.
    pub http: Option<serve::HttpServer>,
}

impl Context {
    /// Local paths are the host's to name: relative ones are resolved against the directory the
    /// command was typed in.
    pub fn local_paths(&self) -> LocalPaths {
        match &self.cwd {
            Some(cwd) => LocalPaths::RelativeTo(cwd.clone()),
            None => LocalPaths::CurrentDir,
        }
    }
}

/// Runs one command against an opened engine, writing data to `out` and messages for the user to
/// `err`: the same function for a command run here and one served for another process (whose
/// `out` and `err` go back to it), which must be one `remote::served_remotely` admits.
pub async fn dispatch(
    engine: &Engine,
    command: Command,
    context: &Context,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<ExitCode, CliError> {
    let json = context.json;
    let mut out = out;
    match command {
        Command::Ingest {
            sources,
            workflow,
            key,
            concurrency,
            reingest,
            priority,
            callback_url,
            shutdown: _,
            scheduling: _,
        } => {
            reclaim_orphans(&engine.orchestrator()).await?;
            let options = SubmitOptions {
                workflow,
                key,
                reingest,
                priority,
                local_paths: context.local_paths(),
                callback_url,
            };
            let submitted = submit(&engine.orchestrator(), &sources, &options).await?;
            // The same source twice on one command line is one job, run once.
            let mut ids: Vec<JobId> = Vec::with_capacity(submitted.len());
            for submitted in &submitted {
                if !ids.contains(&submitted.job.id) {
                    ids.push(submitted.job.id);
                }
            }
            let jobs = run_jobs(&engine.orchestrator(), &ids, concurrency).await?;
            print_jobs(&mut out, &jobs, json)?;
            Ok(exit_for(&jobs))
        }
        Command::Submit {
            sources,
            workflow,
            key,
            reingest,
            priority,
            callback_url,
        } => {
            let options = SubmitOptions {
                workflow,
                key,
                reingest,
                priority,
                local_paths: context.local_paths(),
                callback_url,
            };
            let submitted = submit(&engine.orchestrator(), &sources, &options).await?;
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
        Command::Worker {
            concurrency, drain, ..
        } => {
            reclaim_orphans(&engine.orchestrator()).await?;
            let jobs = work(
                &engine.orchestrator(),
                concurrency,
                drain,
                engine.shutdown.draining(),
            )
            .await?;
            print_jobs(&mut out, &jobs, json)?;
            // Stopped by a signal: the jobs it held are released, which is a clean exit.
            if engine.shutdown.is_draining() {
                return Ok(ExitCode::SUCCESS);
            }
            Ok(exit_for(&jobs))
        }
        Command::Serve {
            bind,
            no_worker,
            concurrency,
            ..
        } => serve::serve(engine, &mut out, bind, no_worker, concurrency, context.http).await,
        Command::Jobs {
            status,
            limit,
            backfill,
            stuck,
            stuck_after_s,
        } => {
            if stuck {
                return stuck::list(engine, &mut out, stuck_after_s, json).await;
            }
            let jobs = match backfill {
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
                print_json(&mut out, &list)?;
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
        Command::Show { id } => {
            let Some(records) = crate::engine::show::records(engine, id).await? else {
                return Err(maintenance::missing_job(engine, id).await);
            };
            if json {
                print_json(&mut out, &views::job::detail(&records))?;
            } else {
                write!(out, "{}", views::job::detail_text(&records)).map_err(io)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs { id } => {
            engine.store.job(id).await?.ok_or_else(|| not_found(id))?;
            let lines = engine.store.logs(id).await?;
            for line in &lines {
                let text = if json {
                    views::to_json(&views::history::LogLineView::of(line)).to_string()
                } else {
                    views::history::log_line_text(line)
                };
                writeln!(out, "{text}").map_err(io)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Retry {
            ids,
            selection,
            from: Some(step),
            detach,
            concurrency,
            ..
        } => {
            let options = maintenance::RetryFrom {
                step,
                detach,
                concurrency,
            };
            maintenance::retry_from(engine, &mut out, ids, &selection, options, json).await
        }
        Command::Retry {
            ids,
            detach,
            concurrency,
            selection,
            ..
        } => {
            // A served retry leaves the running jobs alone: they are the holder's, alive.
            if context.served.is_none() {
                reclaim_orphans(&engine.orchestrator()).await?;
            }
            let ids = ids_or_selection(
                engine,
                ids,
                &selection,
                &[Status::Failed, Status::Cancelled, Status::Pending],
            )
            .await?;
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
                    Err(crate::model::machine::Rejected::NotAllowed {
                        status: Status::Pending,
                        ..
                    }) => queued.push(engine.store.job(id).await?.ok_or_else(|| not_found(id))?),
                    Err(rejected) => {
                        refused = true;
                        writeln!(err, "narra: {rejected}").map_err(io)?;
                    }
                }
            }
            let jobs = if let Some(holder) = &context.served {
                // The holder's own work goes on; the jobs wait in the queue it may be running.
                if !queued.is_empty() {
                    let note = holder.queued_note(queued.len(), engine.shutdown.is_draining());
                    writeln!(err, "narra: {note}").map_err(io)?;
                }
                queued
            } else if detach {
                queued
            } else {
                let ids: Vec<JobId> = queued.iter().map(|job| job.id).collect();
                run_jobs(&engine.orchestrator(), &ids, concurrency).await?
            };
            print_jobs(&mut out, &jobs, json)?;
            if refused {
                Ok(ExitCode::from(1))
            } else {
                Ok(exit_for(&jobs))
            }
        }
        Command::Cancel { ids, selection } => {
            let ids = ids_or_selection(
                engine,
                ids,
                &selection,
                &[Status::Pending, Status::Failed, Status::Running],
            )
            .await?;
            let mut refused = false;
            let mut jobs = Vec::new();
            for id in ids {
                match engine.store.cancel(id).await? {
                    Ok(job) => jobs.push(job),
                    Err(rejected) => {
                        refused = true;
                        writeln!(err, "narra: {rejected}").map_err(io)?;
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
        Command::Backfill { list: true, .. } => backfill::list(engine, &mut out, json).await,
        Command::Backfill {
            manifest,
            workflow,
            concurrency,
            retry_permanent,
            reingest,
            list: false,
            ..
        } => {
            let manifest = manifest.expect("clap requires a manifest unless --list");
            let options = crate::engine::backfill::BackfillOptions {
                workflow,
                concurrency,
                retry_permanent,
                reingest,
                local_paths: context.local_paths(),
            };
            backfill::run(engine, &mut out, err, &manifest, options, json).await
        }
        Command::Doctor { .. } => unreachable!("doctor runs before the home is opened"),
        Command::Migrate => unreachable!("migrate runs before the home is opened"),
        Command::Reprobe { id } => {
            reclaim_orphans(&engine.orchestrator()).await?;
            let reprobed = crate::engine::reprobe::reprobe(engine, id)
                .await
                .map_err(|error| CliError::Other(error.into()))?;
            if json {
                let view = views::job::Reprobed {
                    job: views::job::summary(&reprobed.job),
                    changes: &reprobed.changes,
                    republished: reprobed.republished,
                };
                print_json(&mut out, &view)?;
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
        Command::Verify { ids, deep } => {
            maintenance::verify(engine, &mut out, ids, deep, json).await
        }
        Command::Audit { ids } => maintenance::audit(engine, &mut out, ids, json).await,
        Command::Cleanup {
            deep,
            min_age_s,
            confirm,
        } => {
            let options = crate::model::cleanup::CleanupOptions { deep, min_age_s };
            maintenance::cleanup(engine, &mut out, err, options, confirm, context).await
        }
        Command::Reset { id, force, reason } => {
            stuck::reset(engine, &mut out, err, id, reason.as_deref(), force, context).await
        }
        Command::Health {
            host_failures_min,
            window_s,
            stuck_after_s,
        } => {
            let options = crate::model::health::HealthOptions {
                host_failures_min,
                window_s,
                stuck_after_s,
            };
            health::health(engine, &mut out, options, json).await
        }
        Command::Incidents => maintenance::incidents(engine, &mut out, json).await,
        Command::Delete { id, confirm } => {
            maintenance::delete(engine, &mut out, err, id, confirm, context).await
        }
        Command::Prune {
            older_than,
            status,
            confirm,
        } => maintenance::prune(engine, &mut out, &older_than, status, confirm, json).await,
        Command::Export { .. } | Command::Import { .. } => Err(CliError::Usage(format!(
            "`narra {}` is not run for another process: stop the process that holds the home \
             first",
            command.name()
        ))),
    }
}

/// `narra migrate`: see `Command::Migrate`.
async fn run_migrate(global: &GlobalArgs) -> Result<ExitCode, CliError> {
    let home = absolute(&global.home)?;
    let state = state_uri(global, &home)?;
    let (applied, version, note) = match &state {
        StateUri::Postgres(uri) => {
            let store = PgStore::connect(uri).await?;
            let applied = store.migrate().await?;
            let note = if applied.is_empty() {
                "the schema was up to date".to_string()
            } else {
                format!("applied migrations {applied:?}")
            };
            (
                applied,
                crate::store::pg_store::schema::latest_version(),
                note,
            )
        }
        StateUri::Sled(_) => {
            let note = match open_home(global).await {
                Ok(_home) => "sled's records are migrated when it is opened: done".to_string(),
                Err(CliError::Locked(LockError::Held { pid, .. })) => format!(
                    "the home is held by {}, which opened (and so migrated) the store",
                    pid.map_or_else(|| "another process".to_string(), |pid| format!("pid {pid}"))
                ),
                Err(error) => return Err(error),
            };
            (
                Vec::new(),
                i32::from(crate::store::codec::SCHEMA_VERSION),
                note,
            )
        }
    };
    let mut out = std::io::stdout().lock();
    if global.json {
        print_json(
            &mut out,
            &json!({"state": state.display(), "applied": applied, "version": version}),
        )?;
    } else {
        writeln!(out, "{}: schema version {version}; {note}", state.display()).map_err(io)?;
    }
    Ok(ExitCode::SUCCESS)
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
        print_json(&mut out, &value)?;
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

pub(crate) fn print_jobs(
    out: &mut impl Write,
    jobs: &[crate::model::job::Job],
    json: bool,
) -> Result<(), CliError> {
    print_list(out, jobs, json, views::job::summary, views::job::job_line)
}

/// Prints a list: with `--json`, one array of each item's view; otherwise a line per item.
pub(crate) fn print_list<'a, T, V: serde::Serialize>(
    out: &mut impl Write,
    items: &'a [T],
    json: bool,
    view: impl Fn(&'a T) -> V,
    line: impl Fn(&'a T) -> String,
) -> Result<(), CliError> {
    if json {
        let views: Vec<V> = items.iter().map(view).collect();
        return print_json(out, &views);
    }
    for item in items {
        writeln!(out, "{}", line(item)).map_err(io)?;
    }
    Ok(())
}

fn exit_for(jobs: &[crate::model::job::Job]) -> ExitCode {
    if jobs.iter().all(|job| job.status == Status::Succeeded) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Prints a view (or any JSON value), pretty, as one document on stdout.
pub(crate) fn print_json(
    out: &mut impl Write,
    value: &impl serde::Serialize,
) -> Result<(), CliError> {
    writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(&views::to_json(value)).expect("JSON values serialize")
    )
    .map_err(io)
}

/// A positive whole number of `unit` from the variable `name`; `None` when it is not set.
pub(crate) fn positive_from_env(name: &str, unit: &str) -> Result<Option<u64>, CliError> {
    let Ok(text) = std::env::var(name) else {
        return Ok(None);
    };
    text.trim()
        .parse::<u64>()
        .ok()
        .filter(|number| *number > 0)
        .map(Some)
        .ok_or_else(|| {
            CliError::Usage(format!(
                "{name} must be a positive number of {unit}, not {text:?}"
            ))
        })
}

fn not_found(id: JobId) -> CliError {
    CliError::Other(anyhow::anyhow!("job {id} not found"))
}

pub(crate) fn io(error: std::io::Error) -> CliError {
    CliError::Other(error.into())
}
