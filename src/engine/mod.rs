//! The engine: it runs jobs and the maintenance commands over the pure model (`model`: the job,
//! the status/phase machine, scheduling, the report types). The orchestrator (`orchestrator.rs`)
//! moves status; the worker (`worker.rs`) runs steps and moves the phase; the notifier
//! (`webhook.rs`) sends completion notices; `audit`, `cleanup`, `health`, `prune`, `verify` and the
//! rest read the stores and storage and fill the model's reports for `views` to show.
//!
//! The engine never spawns ffmpeg and never fetches a source; steps do. It builds the network
//! guard's HTTP clients (`steps::net`, in [`Services`]) and hands the download step its own; the
//! only requests it sends itself are the notifier's. It never imports sled or opendal: it talks
//! to `store::StateStore` and `storage::Storage`. The orchestrator is handed an [`Orchestrator`]
//! (the store as an `OrchestratorSide`), the worker only a `WorkerStore`; the whole store stays
//! with the doors and the maintenance commands.

pub mod audit;
pub mod backfill;
pub mod cleanup;
pub mod health;
pub mod orchestrator;
pub mod prune;
pub mod reprobe;
pub mod retry;
pub mod show;
pub mod shutdown;
pub mod stuck;
pub mod transfer;
pub mod verify;
pub mod webhook;
pub mod worker;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::engine::webhook::WebhookPolicy;
use crate::model::job::{Job, JobId, Status, WorkerId};
use crate::steps::StepError;
use crate::steps::extract::Tools;
use crate::steps::net::{HttpClients, NetworkPolicy};
use crate::storage::Storage;
use crate::store::{JobFilter, JobReader, OrchestratorSide, StateStore, StoreError};
use crate::workflow::{DownloadParams, WorkflowRegistry};

/// The user agent of webhook notices.
const WEBHOOK_USER_AGENT: &str = concat!("narra-webhook/", env!("CARGO_PKG_VERSION"));

/// The environment variable that names more secret parameters, beside the model's built-in list.
pub const REDACT_PARAMS_ENV: &str = "NARRA_REDACT_PARAMS";

/// Installs the process's redactor: the built-in rules plus the names in `NARRA_REDACT_PARAMS`.
/// The model reads no environment, so the doors call this before they show anything, and
/// [`Engine::new`] does for a caller of the library; the first call wins.
pub fn install_redactor_from_env() {
    let extra = std::env::var(REDACT_PARAMS_ENV).unwrap_or_default();
    crate::model::redact::Redactor::install(crate::model::redact::Redactor::with_params(&extra));
}

/// This process's working directory, what `LocalPaths::CurrentDir` resolves relative local paths
/// against (empty when it cannot be read, which leaves such a path relative).
pub fn working_dir() -> PathBuf {
    std::env::current_dir().unwrap_or_default()
}

/// How long a claim lasts without renewal. The holder renews it every third of this.
pub const LEASE_TTL_MS: u64 = 30_000;

/// Everything a running narra needs, built once per process: the whole state store, which the doors
/// (`cli`, `api`) and the maintenance commands use, and the [`Services`] every part shares.
///
/// The orchestrator and the worker are never handed the whole store: the orchestrator runs with an
/// [`Orchestrator`] (its side of the store, [`OrchestratorSide`], and the worker's side sealed in a
/// [`worker::WorkerSide`] it can only pass on), the worker with [`Services`] and the
/// [`WorkerStore`] it unseals (`worker::execute`). So a status is set only where an
/// `OrchestratorSide` is held and a phase only where a `WorkerStore` is: the split by owner is in
/// the types.
#[derive(Clone)]
pub struct Engine {
    pub store: Arc<dyn StateStore>,
    services: Services,
}

/// What every part of a running narra shares besides the state store.
#[derive(Clone)]
pub struct Services {
    pub storage: Storage,
    pub workflows: Arc<WorkflowRegistry>,
    pub home: PathBuf,
    pub worker_id: WorkerId,
    /// Which addresses downloads may reach.
    pub network: NetworkPolicy,
    /// The ffmpeg and ffprobe the extract step and `reprobe` run (`NARRA_FFMPEG`, `NARRA_FFPROBE`).
    pub tools: Tools,
    pub lease_ttl_ms: u64,
    /// Per-host limits, breakers and automatic retries (`model::scheduling`).
    pub scheduling: crate::model::scheduling::SchedulingPolicy,
    /// SIGINT/SIGTERM: claim no more, release running jobs (`engine::shutdown`).
    pub shutdown: shutdown::Shutdown,
    /// How completion notices are signed, timed and retried (`webhook`).
    pub webhooks: WebhookPolicy,
    /// Wakes this process's webhook notifier: a job it ran reached a terminal status.
    pub notifier_wake: Arc<tokio::sync::Notify>,
    /// The guarded HTTP clients, built next to the network guard (`steps::net`).
    http_clients: HttpClients,
}

impl Engine {
    pub fn new(
        store: Arc<dyn StateStore>,
        storage: Storage,
        workflows: WorkflowRegistry,
        home: &Path,
        network: NetworkPolicy,
    ) -> Engine {
        install_redactor_from_env();
        Engine {
            store,
            services: Services {
                storage,
                workflows: Arc::new(workflows),
                home: home.to_path_buf(),
                worker_id: WorkerId(format!("{}:{}", hostname(), std::process::id())),
                network,
                tools: Tools::from_env(),
                lease_ttl_ms: LEASE_TTL_MS,
                scheduling: crate::model::scheduling::SchedulingPolicy::default(),
                shutdown: shutdown::Shutdown::new(),
                webhooks: WebhookPolicy::from_env(),
                notifier_wake: Arc::default(),
                http_clients: HttpClients::default(),
            },
        }
    }

    /// The services, without the store.
    pub fn services(&self) -> &Services {
        &self.services
    }

    /// Every job in `status` (every job at all for `None`), newest first: what the reports
    /// (health, stuck jobs, audits, cleanup, prune, metrics) read whole.
    pub async fn all_jobs(&self, status: Option<Status>) -> Result<Vec<Job>, StoreError> {
        all_jobs(&*self.store, status).await
    }

    /// What the orchestrator's functions are handed (`orchestrator::submit`, `run_jobs`, `work`, ...).
    pub fn orchestrator(&self) -> Orchestrator {
        Orchestrator {
            services: self.services.clone(),
            store: self.store.clone(),
            worker: worker::WorkerSide::new(self.store.clone()),
        }
    }
}

/// The orchestrator's view of a running narra: the services, its side of the store, and the
/// worker's side, sealed.
#[derive(Clone)]
pub struct Orchestrator {
    services: Services,
    /// Statuses, leases, submissions, webhook notices, incidents: never a phase.
    pub store: Arc<dyn OrchestratorSide>,
    /// What the worker of a claimed job is handed; only `worker::execute` opens it.
    pub worker: worker::WorkerSide,
}

impl Orchestrator {
    /// Every job in `status`, newest first, as [`Engine::all_jobs`] reads them.
    pub async fn all_jobs(&self, status: Option<Status>) -> Result<Vec<Job>, StoreError> {
        all_jobs(&*self.store, status).await
    }
}

/// Every job in `status` (every job at all for `None`), newest first, with no limit: the one read
/// of the engine's and the orchestrator's `all_jobs`, and of `export`.
pub(crate) async fn all_jobs(
    store: &(impl JobReader + ?Sized),
    status: Option<Status>,
) -> Result<Vec<Job>, StoreError> {
    store
        .jobs(&JobFilter {
            status,
            limit: usize::MAX,
        })
        .await
}

impl std::ops::Deref for Orchestrator {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.services
    }
}

impl std::ops::Deref for Engine {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.services
    }
}

impl std::ops::DerefMut for Engine {
    fn deref_mut(&mut self) -> &mut Services {
        &mut self.services
    }
}

impl Services {
    /// The guarded HTTP client for a workflow's download limits.
    pub fn http_client(&self, params: &DownloadParams) -> Result<reqwest::Client, StepError> {
        self.http_clients
            .get(&self.network, params.connect_timeout_s, &params.user_agent)
    }

    /// The guarded HTTP client webhook notices are sent with: the download client's guard (no
    /// proxy from the environment, addresses checked at connect time, redirects not followed).
    pub fn webhook_client(&self) -> Result<reqwest::Client, StepError> {
        let connect_timeout_s = self.webhooks.timeout_ms.div_ceil(1000);
        self.http_clients.get(
            &self.webhooks.network,
            connect_timeout_s,
            WEBHOOK_USER_AGENT,
        )
    }

    /// The job's scratch directory: partial and unstored outputs live here until the store step's
    /// checkpoint is durable.
    pub fn scratch_dir(&self, id: JobId) -> PathBuf {
        self.scratch_root().join(id.to_string())
    }

    /// Where every job's scratch directory is: all a media helper may read or write.
    pub fn scratch_root(&self) -> PathBuf {
        self.home.join("scratch")
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
