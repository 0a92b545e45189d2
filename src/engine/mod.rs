//! The engine: the job model, the status/phase state machine, the orchestrator that moves status,
//! and the worker that runs steps and moves the phase.
//!
//! The engine never spawns ffmpeg and never speaks HTTP; steps do. It never imports sled or opendal;
//! it talks to `store::StateStore` and `storage::Storage`. The orchestrator (`orchestrator.rs`) sees
//! the store only as an `OrchestratorStore`, the worker (`worker.rs`) only as a `WorkerStore`.

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
pub mod worker;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::model::job::{Job, JobId, Status, WorkerId};
use crate::steps::StepError;
use crate::steps::extract::Tools;
use crate::steps::net::NetworkPolicy;
use crate::storage::Storage;
use crate::store::{JobFilter, StateStore, StoreError};
use crate::webhook::WebhookPolicy;
use crate::workflow::{DownloadParams, WorkflowRegistry};

/// The user agent of webhook notices.
const WEBHOOK_USER_AGENT: &str = concat!("narra-webhook/", env!("CARGO_PKG_VERSION"));

/// How long a claim lasts without renewal. The holder renews it every third of this.
pub const LEASE_TTL_MS: u64 = 30_000;

/// Everything a running narra needs, built once per process.
#[derive(Clone)]
pub struct Engine {
    pub store: Arc<dyn StateStore>,
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
    /// Download clients by connect timeout and user agent: one connection pool each.
    http_clients: Arc<Mutex<HashMap<(u64, String), reqwest::Client>>>,
}

impl Engine {
    pub fn new(
        store: Arc<dyn StateStore>,
        storage: Storage,
        workflows: WorkflowRegistry,
        home: &Path,
        network: NetworkPolicy,
    ) -> Engine {
        Engine {
            store,
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
            http_clients: Arc::default(),
        }
    }

    /// The guarded HTTP client for a workflow's download limits.
    pub fn http_client(&self, params: &DownloadParams) -> Result<reqwest::Client, StepError> {
        let key = (params.connect_timeout_s, params.user_agent.clone());
        let mut clients = self
            .http_clients
            .lock()
            .expect("the client cache is never poisoned");
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = crate::steps::download::http_client(params, &self.network)?;
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// The guarded HTTP client webhook notices are sent with: the download client's guard (no
    /// proxy from the environment, addresses checked at connect time, redirects not followed).
    pub fn webhook_client(&self) -> Result<reqwest::Client, StepError> {
        let connect_timeout_s = self.webhooks.timeout_ms.div_ceil(1000);
        let key = (connect_timeout_s, WEBHOOK_USER_AGENT.to_string());
        let mut clients = self
            .http_clients
            .lock()
            .expect("the client cache is never poisoned");
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = crate::steps::net::guarded_client(
            &self.webhooks.network,
            std::time::Duration::from_secs(connect_timeout_s),
            WEBHOOK_USER_AGENT,
        )?;
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// The job's scratch directory: partial and unstored outputs live here until the store step's
    /// checkpoint is durable.
    pub fn scratch_dir(&self, id: JobId) -> PathBuf {
        self.home.join("scratch").join(id.to_string())
    }

    /// Every job in `status` (every job at all for `None`), newest first: what the reports
    /// (health, stuck jobs, audits, cleanup, prune, metrics) read whole.
    pub async fn all_jobs(&self, status: Option<Status>) -> Result<Vec<Job>, StoreError> {
        self.store
            .jobs(&JobFilter {
                status,
                limit: usize::MAX,
            })
            .await
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
