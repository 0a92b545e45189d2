//! The command line: the glue that opens a home and calls the library, and the printing of views.
//! The clap definitions are `args.rs`; `dispatch` hands each command to one function of its own,
//! grouped by concern (`jobs.rs`, `maintenance.rs`, `backfill.rs`, `health.rs`, `serve.rs`,
//! `transfer.rs`). No behaviour lives here that the library does not expose to tests and the API
//! too.
//!
//! Data goes to stdout (text or, with `--json`, JSON only); logs go to stderr, always.

pub mod args;
pub mod backfill;
pub mod doctor;
pub mod health;
pub mod jobs;
pub mod maintenance;
pub mod remote;
pub mod serve;
pub mod signals;
pub mod transfer;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use serde_json::json;

use crate::engine::Engine;
use crate::engine::orchestrator::EngineError;
use crate::model::job::Status;
use crate::model::sources::LocalPaths;
use crate::storage::Storage;
use crate::store::{HomeLock, LockError, PgStore, SledStore, StateStore, StateUri, StoreError};
use crate::views;
use crate::workflow::WorkflowRegistry;
pub use args::{
    Cli, Command, GlobalArgs, RunningArgs, SchedulingArgs, SelectionArgs, ShutdownArgs,
};

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
    // This binary can be its own media helper: the extract step gets helpers unless
    // NARRA_MEDIA=cli. Helpers read stored originals of an fs:// store in place.
    let read_roots = engine.storage.local_root().map(Path::to_path_buf);
    engine.tools.media = crate::steps::media::Media::from_env(
        &engine.scratch_root(),
        read_roots.into_iter().collect(),
    )
    .map_err(CliError::Usage)?;
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
    let (grace_s, scheduling) = match cli.command.running() {
        Some(running) => (
            Some(running.shutdown.grace_s),
            Some(running.scheduling.policy()?),
        ),
        None => (None, None),
    };
    if let Some(grace_s) = grace_s {
        signals::install(shutdown.clone(), std::time::Duration::from_secs(grace_s))
            .map_err(|error| CliError::Other(error.into()))?;
    }
    // Before anything is shown: the operator's secret parameters are redacted everywhere.
    crate::engine::install_redactor_from_env();
    // Doctor must answer when the home is missing, broken or held by another process.
    if let Command::Doctor(args) = &cli.command {
        return run_doctor(&cli.global, args.scratch_min_free_mb).await;
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
    if let Command::Export(_) | Command::Import(_) = &cli.command {
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
    match command {
        Command::Ingest(args) => jobs::ingest(engine, args, context, out).await,
        Command::Submit(args) => jobs::submit(engine, args, context, out).await,
        Command::Worker(args) => jobs::worker(engine, args, context, out).await,
        Command::Serve(args) => serve::serve(engine, args, context, out).await,
        Command::Jobs(args) => jobs::jobs(engine, args, context, out).await,
        Command::Show(args) => jobs::show(engine, args, context, out).await,
        Command::Logs(args) => jobs::logs(engine, args, context, out).await,
        Command::Retry(args) => jobs::retry(engine, args, context, out, err).await,
        Command::Cancel(args) => jobs::cancel(engine, args, context, out, err).await,
        Command::Reset(args) => jobs::reset(engine, args, context, out, err).await,
        Command::Backfill(args) => backfill::backfill(engine, args, context, out, err).await,
        Command::Reprobe(args) => maintenance::reprobe(engine, args, context, out).await,
        Command::Verify(args) => maintenance::verify(engine, args, context, out).await,
        Command::Audit(args) => maintenance::audit(engine, args, context, out).await,
        Command::Cleanup(args) => maintenance::cleanup(engine, args, context, out, err).await,
        Command::Health(args) => health::health(engine, args, context, out).await,
        Command::Incidents => maintenance::incidents(engine, context, out).await,
        Command::Delete(args) => maintenance::delete(engine, args, context, out, err).await,
        Command::Prune(args) => maintenance::prune(engine, args, context, out).await,
        Command::Doctor(_) => unreachable!("doctor runs before the home is opened"),
        Command::Migrate => unreachable!("migrate runs before the home is opened"),
        Command::Export(_) | Command::Import(_) => Err(CliError::Usage(format!(
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

pub(crate) fn io(error: std::io::Error) -> CliError {
    CliError::Other(error.into())
}
