//! The state store: jobs, checkpoints, events (bounded: the oldest are folded into a summary),
//! metadata records, job logs, the blob -> jobs index, pruned-job tombstones and the incident log.
//!
//! Only this module imports sled and tokio-postgres: `sled_store` is the embedded store of one
//! machine, `pg_store` the shared store of a fleet on PostgreSQL, and both pass `conformance`.
//! The store exposes domain operations, never a raw "put job": every status or phase change goes
//! through `model::machine`, and is written together with its events (and, for
//! `record_checkpoint`, the checkpoint) in one transaction that is durable before the call returns,
//! so nothing acknowledged is lost in a crash.
//!
//! The ownership rule is in the traits: [`OrchestratorStore`] can move a job's status but has no
//! operation that names a phase; [`WorkerStore`] can set the phase and record checkpoints but has no
//! operation that names a status. The engine hands each side only its own trait.

mod claims;
pub mod codec;
#[cfg(test)]
pub(crate) mod conformance;
pub mod lock;
pub mod pg_store;
pub mod sled_store;
mod submit;
#[cfg(test)]
mod test_support;
pub mod transfer;

use std::collections::BTreeSet;

use async_trait::async_trait;

use crate::model::job::{
    AudioSelection, Backfill, BackfillId, Checkpoint, Delivery, ErrorInfo, Event, EventKind,
    EventSummary, HostState, Incident, Job, JobId, JobProgress, LeaseToken, LogLine, MediaMetadata,
    Phase, PrunedJob, Status, Timestamp, Webhook, WorkerId,
};
use crate::model::machine::{OrchestratorOp, Rejected};
use crate::model::scheduling::{HostOutcome, OutcomeVerdict, SchedulingPolicy};

pub use crate::model::claims::ClaimNext;
pub use crate::model::notices::DELIVERIES_MAX;
pub use crate::model::submission::{Resubmit, SubmitOutcome, SubmitRequest};
pub use lock::{HomeLock, LockError};
pub use pg_store::PgStore;
pub use sled_store::SledStore;

/// Which state store a home uses: `--state` / `NARRA_STATE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateUri {
    /// `sled://<path>`: the embedded store of one machine (the default, `sled://<home>/state`).
    Sled(std::path::PathBuf),
    /// `postgres://...` (or `postgresql://`): the store a fleet shares (`pg_store`).
    Postgres(String),
}

impl StateUri {
    /// Reads a state URI; `None` is the home's own sled store. A relative sled path is relative
    /// to the home.
    pub fn parse(uri: Option<&str>, home: &std::path::Path) -> StoreResult<StateUri> {
        let Some(uri) = uri.map(str::trim).filter(|uri| !uri.is_empty()) else {
            return Ok(StateUri::Sled(home.join("state")));
        };
        if let Some(path) = uri.strip_prefix("sled://") {
            if path.is_empty() {
                return Err(StoreError::InvalidUri {
                    uri: uri.to_string(),
                    reason: "sled:// needs a path, e.g. sled:///var/lib/narra/state".to_string(),
                });
            }
            return Ok(StateUri::Sled(home.join(path)));
        }
        if uri.starts_with("postgres://") || uri.starts_with("postgresql://") {
            pg_store::parse_uri(uri)?;
            return Ok(StateUri::Postgres(uri.to_string()));
        }
        Err(StoreError::InvalidUri {
            uri: pg_store::redact(uri),
            reason: "expected sled://<path> or postgres://user@host/database".to_string(),
        })
    }

    /// The URI as it may be shown: a password is hidden.
    pub fn display(&self) -> String {
        match self {
            StateUri::Sled(path) => format!("sled://{}", path.display()),
            StateUri::Postgres(uri) => pg_store::redact(uri),
        }
    }
}

/// Store failures: the store itself is broken or unreachable. Refused transitions are not here:
/// they come back as the inner [`Rejected`] of a nested result.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("state store error: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt record in {tree} at key {key}: {reason}")]
    Corrupt {
        tree: &'static str,
        key: String,
        reason: String,
    },
    #[error(
        "record schema version {found} is not supported (this narra reads version {supported})"
    )]
    UnsupportedSchema { found: u8, supported: u8 },
    #[error("cannot encode record: {0}")]
    Encode(String),
    #[error("state store error (PostgreSQL): {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// No connection to the PostgreSQL server could be had from the pool.
    #[error("state store connection pool: {0}")]
    Pool(String),
    #[error(
        "the PostgreSQL schema is at migration {found}, newer than this narra knows ({supported})"
    )]
    UnsupportedMigration { found: i32, supported: i32 },
    /// The `--state` URI names no state store narra knows.
    #[error("invalid state store URI {uri:?}: {reason}")]
    InvalidUri { uri: String, reason: String },
}

impl StoreError {
    /// The record of `tree` (a sled tree or a PostgreSQL table) at `key` is not what it should
    /// be, for `reason`.
    pub fn corrupt(tree: &'static str, key: &[u8], reason: String) -> Self {
        StoreError::Corrupt {
            tree,
            key: codec::hex(key),
            reason,
        }
    }

    /// Store failures are not worth retrying blindly: an I/O error on the state store is escalated.
    pub fn retryable(&self) -> bool {
        false
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// What `claim_next` may claim, and by which rules.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRequest<'a> {
    pub worker_id: &'a WorkerId,
    pub lease_ttl_ms: u64,
    pub policy: &'a SchedulingPolicy,
    /// Only these jobs (a command running the jobs it was given); all pending jobs when `None`.
    pub only: Option<&'a BTreeSet<JobId>>,
}

/// How `submit_batch` applies its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchOptions {
    pub resubmit: Resubmit,
    /// The backfill the submitted jobs are recorded under (its `backfill_jobs` index), in the same
    /// transaction as the submissions.
    pub backfill: Option<BackfillId>,
}

/// The most submissions `submit_batch` applies in one transaction; a longer slice is applied in
/// transactions of this many, all made durable by one flush at the end.
pub const SUBMIT_BATCH_MAX: usize = 500;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub job: Job,
    pub outcome: SubmitOutcome,
}

/// Which jobs `jobs` lists: newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFilter {
    pub status: Option<Status>,
    pub limit: usize,
}

/// The step events a worker may append. Status and phase events are written by transitions only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepEvent {
    Started,
    Skipped {
        reason: String,
    },
    Failed {
        error: ErrorInfo,
    },
    /// The extract step's choice of audio stream and output (`EventKind::AudioSelected`).
    AudioSelected(AudioSelection),
    /// The step has a checkpoint and runs again, for this cause (`EventKind::StepRedone`).
    Redone {
        cause: String,
        reason: String,
    },
    /// The objects this run of the step wrote (`EventKind::ObjectsWritten`).
    ObjectsWritten {
        keys: Vec<String>,
    },
}

impl StepEvent {
    /// The event a worker's step event of `step` appends.
    pub(crate) fn into_event(self, step: &str) -> EventKind {
        let step = step.to_string();
        match self {
            StepEvent::Started => EventKind::StepStarted { step },
            StepEvent::Skipped { reason } => EventKind::StepSkipped { step, reason },
            StepEvent::Failed { error } => EventKind::StepFailed { step, error },
            StepEvent::AudioSelected(selection) => EventKind::AudioSelected(selection),
            StepEvent::Redone { cause, reason } => EventKind::StepRedone {
                step,
                cause,
                reason,
            },
            StepEvent::ObjectsWritten { keys } => EventKind::ObjectsWritten { step, keys },
        }
    }
}

/// Reads shared by every side.
#[async_trait]
pub trait JobReader: Send + Sync {
    async fn job(&self, id: JobId) -> StoreResult<Option<Job>>;
    async fn job_by_key(&self, key: &str) -> StoreResult<Option<Job>>;
    async fn jobs(&self, filter: &JobFilter) -> StoreResult<Vec<Job>>;
    /// The job's checkpoints, in the order the steps were recorded.
    async fn checkpoints(&self, id: JobId) -> StoreResult<Vec<Checkpoint>>;
    async fn checkpoint(&self, id: JobId, step: &str) -> StoreResult<Option<Checkpoint>>;
    /// The job's events still held, oldest first: at most [`JobReader::events_max`]. The older
    /// ones were folded into [`JobReader::event_summary`] (`model::history`), in the transaction
    /// that appended past the bound.
    async fn events(&self, id: JobId) -> StoreResult<Vec<Event>>;
    /// What the job's compacted events left: `None` while none was compacted.
    async fn event_summary(&self, id: JobId) -> StoreResult<Option<EventSummary>>;
    /// The most events a job holds (see [`EVENTS_MAX`]).
    fn events_max(&self) -> u64;
    async fn metadata(&self, id: JobId) -> StoreResult<Option<MediaMetadata>>;
    async fn logs(&self, id: JobId) -> StoreResult<Vec<LogLine>>;
    /// The job's last recorded step progress (the current phase's step while it runs).
    async fn progress(&self, id: JobId) -> StoreResult<Option<JobProgress>>;
    /// The jobs whose store checkpoint names the object `key` (a blob under `blobs/`), in id order.
    /// Kept in the same transaction as the checkpoint, so it never disagrees with the checkpoints.
    async fn jobs_referencing(&self, key: &str) -> StoreResult<Vec<JobId>>;
    /// Every (blob key, job) reference, ordered by key then job.
    async fn blob_refs(&self) -> StoreResult<Vec<(String, JobId)>>;
    /// The incident log, oldest first.
    async fn incidents(&self) -> StoreResult<Vec<Incident>>;
    /// What is left of a job `narra prune` removed, if `id` is one.
    async fn pruned_job(&self, id: JobId) -> StoreResult<Option<PrunedJob>>;
    /// Every pruned job's tombstone, in id order (`narra export`).
    async fn pruned_jobs(&self) -> StoreResult<Vec<PrunedJob>>;
    /// Every backfill, oldest first.
    async fn backfills(&self) -> StoreResult<Vec<Backfill>>;
    /// The jobs recorded under a backfill, in id order (oldest first). A job deleted since
    /// (`narra delete`) may still be named; readers skip ids that have no job.
    async fn backfill_jobs(&self, id: BackfillId) -> StoreResult<Vec<JobId>>;
    /// Every source host narra has a breaker or rate state for, by name.
    async fn hosts(&self) -> StoreResult<Vec<HostState>>;
}

/// One of [`OrchestratorStore`]'s own operations, as the machine transition it makes: what a
/// store's [`OrchestratorStore::transition`] applies. Only this module builds one (its field is
/// private), so a caller moves a job through the trait's named operations, never by naming a
/// transition the trait does not offer (a claim without the claiming process's holding, a
/// reclaim at a marker the store did not read).
pub struct TransitionOp<'a>(&'a OrchestratorOp);

impl TransitionOp<'_> {
    pub(crate) fn op(&self) -> &OrchestratorOp {
        self.0
    }
}

/// The orchestrator's side: the global status. Nothing here can set a phase.
#[async_trait]
pub trait OrchestratorStore: JobReader {
    /// Whether other processes use this store at the same time (a fleet on PostgreSQL). Then a
    /// job running when this process starts is not an orphan merely because this process holds
    /// the home: only one whose lease has expired is (`orchestrator::reclaim_orphans`).
    fn shared(&self) -> bool {
        false
    }

    /// Waits until there may be work to claim, or `timeout`: what an idle scheduler does between
    /// two `claim_next` calls. A store that cannot tell sleeps `timeout`; PostgreSQL wakes on
    /// `NOTIFY` from any process (`pg_store/listen.rs`).
    async fn wait_for_work(&self, timeout: std::time::Duration) {
        tokio::time::sleep(timeout).await;
    }
    /// Idempotent by key: never creates a second job for a key that has one.
    async fn submit(&self, request: &SubmitRequest) -> StoreResult<Submitted>;
    /// Many submissions at once, each with `submit`'s semantics (but for `options.resubmit`), in
    /// transactions of at most [`SUBMIT_BATCH_MAX`] and ONE flush before it returns; outcomes in
    /// request order. A key twice in one batch is one job (the second sees the first).
    async fn submit_batch(
        &self,
        requests: &[SubmitRequest],
        options: &BatchOptions,
    ) -> StoreResult<Vec<Submitted>>;
    /// The backfill recorded for `manifest` (see `Backfill::manifest`), or a new one, flushed.
    async fn open_backfill(&self, manifest: &str) -> StoreResult<Backfill>;
    /// Claims the pending job that comes first (highest priority, then oldest) among those the
    /// scheduling rules let start now (`model::scheduling::admit`: retry delays, per-host
    /// limits, breakers), recording the start on its host in the same call.
    async fn claim_next(&self, request: &ClaimRequest<'_>) -> StoreResult<ClaimNext>;
    /// Claims one pending job by id, whatever the scheduling rules say (tests, tools).
    async fn claim(
        &self,
        id: JobId,
        worker_id: &WorkerId,
        lease_ttl_ms: u64,
    ) -> StoreResult<Result<(Job, LeaseToken), Rejected>>;
    /// Makes one of this trait's own transitions of the job `id` (see [`TransitionOp`]), with
    /// its events, in one transaction durable before it returns: the one write the operations
    /// below that name a job and a transition share.
    async fn transition(
        &self,
        id: JobId,
        op: TransitionOp<'_>,
    ) -> StoreResult<Result<Job, Rejected>>;
    async fn renew_lease(
        &self,
        token: &LeaseToken,
        lease_ttl_ms: u64,
    ) -> StoreResult<Result<Job, Rejected>> {
        under_lease(self, token, |token| OrchestratorOp::RenewLease {
            token,
            lease_ttl_ms,
        })
        .await
    }
    async fn complete(&self, token: &LeaseToken) -> StoreResult<Result<Job, Rejected>> {
        under_lease(self, token, |token| OrchestratorOp::Complete { token }).await
    }
    async fn fail(
        &self,
        token: &LeaseToken,
        error: ErrorInfo,
    ) -> StoreResult<Result<Job, Rejected>> {
        under_lease(self, token, |token| OrchestratorOp::Fail { token, error }).await
    }
    /// running -> pending after a transient failure, not claimed before `not_before`.
    async fn retry_later(
        &self,
        token: &LeaseToken,
        error: ErrorInfo,
        not_before: Timestamp,
    ) -> StoreResult<Result<Job, Rejected>> {
        under_lease(self, token, |token| OrchestratorOp::RetryLater {
            token,
            error,
            not_before,
        })
        .await
    }
    /// running -> pending without spending the attempt (its host's breaker is open; with `until`,
    /// not claimed before that time, keeping the error that made it wait).
    async fn hold(
        &self,
        token: &LeaseToken,
        reason: &str,
        until: Option<(Timestamp, ErrorInfo)>,
    ) -> StoreResult<Result<Job, Rejected>> {
        under_lease(self, token, |token| OrchestratorOp::Hold {
            token,
            reason: reason.to_string(),
            until,
        })
        .await
    }
    /// Records how a run of `job` went on its source host's breaker (`model::scheduling`).
    async fn record_host_outcome(
        &self,
        host: &str,
        job: JobId,
        outcome: &HostOutcome,
        policy: &SchedulingPolicy,
    ) -> StoreResult<OutcomeVerdict>;
    async fn cancel(&self, id: JobId) -> StoreResult<Result<Job, Rejected>> {
        self.transition(id, TransitionOp(&OrchestratorOp::Cancel))
            .await
    }
    async fn confirm_cancel(&self, token: &LeaseToken) -> StoreResult<Result<Job, Rejected>> {
        under_lease(self, token, |token| OrchestratorOp::ConfirmCancel { token }).await
    }
    async fn retry(&self, id: JobId, reason: &str) -> StoreResult<Result<Job, Rejected>> {
        let op = OrchestratorOp::Retry {
            reason: reason.to_string(),
        };
        self.transition(id, TransitionOp(&op)).await
    }
    async fn reingest(&self, id: JobId) -> StoreResult<Result<Job, Rejected>> {
        self.transition(id, TransitionOp(&OrchestratorOp::Reingest))
            .await
    }
    /// `narra retry --from STEP` (`machine::retry_from`): a succeeded, failed or cancelled job back
    /// to pending, with the checkpoints of `step` and of `later_steps` (the steps after it, in
    /// workflow order) discarded, the job's blob references with the store checkpoint, and each
    /// discard recorded as an event, in one transaction. Earlier checkpoints whose scratch outputs
    /// the discarded ones had stored name those stored copies from then on.
    async fn retry_from(
        &self,
        id: JobId,
        step: &str,
        later_steps: &[String],
        reason: &str,
    ) -> StoreResult<Result<Job, Rejected>>;
    /// running -> pending: the holder let go of the job (graceful shutdown).
    async fn reclaim(&self, id: JobId, reason: &str) -> StoreResult<Result<Job, Rejected>> {
        let op = OrchestratorOp::Reclaim {
            reason: reason.to_string(),
        };
        self.transition(id, TransitionOp(&op)).await
    }
    /// running -> pending for a job whose process died; the store reads where the job was (its
    /// phase, checkpoints and progress) for the crash-loop rule (`OrchestratorOp::ReclaimOrphan`).
    async fn reclaim_orphan(&self, id: JobId, reason: &str) -> StoreResult<Result<Job, Rejected>>;
    /// Charges the provisional takeover charges (`model::attribution`) that two lease lengths
    /// of `lease_ttl_ms` left standing, quarantining a pending job that reaches the crash-loop
    /// count; returns the jobs it changed. Only a shared store takes jobs over: a store held by
    /// one process has none to settle.
    async fn settle_takeovers(&self, lease_ttl_ms: u64) -> StoreResult<Vec<Job>> {
        let _ = lease_ttl_ms;
        Ok(Vec::new())
    }
    /// succeeded|failed -> pending after `cleanup` removed artifacts the job needs.
    async fn reset(&self, id: JobId, reason: &str) -> StoreResult<Result<Job, Rejected>> {
        let op = OrchestratorOp::Reset {
            reason: reason.to_string(),
        };
        self.transition(id, TransitionOp(&op)).await
    }
    /// An operator's `narra reset` (`machine::OrchestratorOp::ResetByOperator`): a running job
    /// whose lease expired (or any, with `force`), or a succeeded or failed one, back to pending.
    async fn reset_by_operator(
        &self,
        id: JobId,
        reason: &str,
        force: bool,
    ) -> StoreResult<Result<Job, Rejected>> {
        let op = OrchestratorOp::ResetByOperator {
            reason: reason.to_string(),
            force,
        };
        self.transition(id, TransitionOp(&op)).await
    }
    /// `narra reprobe`: replaces a finished job's metadata record and its extract checkpoint (whose
    /// `metadata` output hashes the record) and appends a `reprobed` event listing `changes`, in one
    /// transaction. Refused unless the job is succeeded, failed or cancelled, so no worker is
    /// writing the same records. Names no status and no phase; neither changes.
    async fn record_reprobe(
        &self,
        id: JobId,
        checkpoint: &Checkpoint,
        metadata: &MediaMetadata,
        changes: Vec<String>,
    ) -> StoreResult<Result<Job, Rejected>>;
}

/// The transition `op` makes of the job `token` leases, built with the lease's fencing token: every
/// operation of a lease holder names its job and presents its token the same way.
async fn under_lease<S: OrchestratorStore + ?Sized>(
    store: &S,
    token: &LeaseToken,
    op: impl FnOnce(u64) -> OrchestratorOp,
) -> StoreResult<Result<Job, Rejected>> {
    let op = op(token.fencing_token);
    store.transition(token.job_id, TransitionOp(&op)).await
}

/// The worker's side: execution details. Nothing here can set a status.
#[async_trait]
pub trait WorkerStore: JobReader {
    async fn set_phase(
        &self,
        token: &LeaseToken,
        phase: Phase,
    ) -> StoreResult<Result<Job, Rejected>>;
    /// Records a finished step's checkpoint and its `step_completed` event in one transaction;
    /// `metadata`, when given, is written in the same transaction.
    async fn record_checkpoint(
        &self,
        token: &LeaseToken,
        checkpoint: &Checkpoint,
        metadata: Option<&MediaMetadata>,
    ) -> StoreResult<Result<(), Rejected>>;
    async fn record_step_event(
        &self,
        token: &LeaseToken,
        step: &str,
        event: StepEvent,
    ) -> StoreResult<Result<(), Rejected>>;
    /// Records a step's progress under the current lease. Informational: not flushed.
    async fn set_progress(
        &self,
        token: &LeaseToken,
        progress: &JobProgress,
    ) -> StoreResult<Result<(), Rejected>>;
}

/// The log sink every store is: `logging`'s per-job layer hands it the lines.
pub use crate::logging::JobLogSink;

/// Operator maintenance (`cleanup`, `delete`, `prune`): the incident log and removing a job's
/// records.
#[async_trait]
pub trait MaintenanceStore: JobReader {
    /// Appends a line to the incident log, flushed before it returns; `seq` is assigned here.
    async fn record_incident(&self, incident: NewIncident) -> StoreResult<Incident>;
    /// Removes every record of a job that is not running: the job, its key, its status-index
    /// entry, checkpoints, events, metadata record, blob references, logs and progress. The
    /// incident log keeps what was done.
    async fn delete_job(&self, id: JobId) -> StoreResult<Result<Job, Rejected>>;
    /// `narra prune`: removes the records of each job that is succeeded, failed or cancelled and
    /// was last updated before `cutoff` (`machine::check_prunable`, decided again in each job's
    /// transaction), as `delete_job` does, but for its blob references: they stay, under the job's
    /// id, beside a [`PrunedJob`] tombstone, so the blobs stay referenced. One transaction per
    /// job and one flush at the end; outcomes in `ids` order.
    async fn prune_jobs(
        &self,
        ids: &[JobId],
        cutoff: Timestamp,
    ) -> StoreResult<Vec<Result<PrunedJob, Rejected>>>;
    /// `narra import`: writes exported records as they were, each in one transaction, with the indexes every other operation keeps (key, status, queue, blob
    /// references, a backfill's manifest). A record whose identity the store already holds is
    /// not written: `AlreadyPresent` when the stored record is the same (an import run again),
    /// `Conflict` naming the difference otherwise. A job's records are written all or none.
    /// One outcome per record, in order; one flush (sled) or one commit per record (PostgreSQL)
    /// before it returns.
    async fn import(
        &self,
        records: &[transfer::Record],
    ) -> StoreResult<Vec<transfer::ImportOutcome>>;
}

/// An incident line before the log numbers and dates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewIncident {
    pub actor: String,
    pub action: String,
    pub job: Option<JobId>,
    pub key: Option<String>,
    pub reason: String,
}

/// What `claim_notice` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimNotice {
    /// A job's webhook whose pending notice was due: claimed, so no other notifier sends it before
    /// its `next_attempt_at`, which the claim moved `lease_ms` ahead.
    Claimed(Box<Webhook>),
    /// No notice is due now; the earliest pending one is due at `until` (`None`: none pending).
    Wait { until: Option<Timestamp> },
}

/// Completion webhooks (`webhook::`): each job's callback URL, the notice its terminal
/// transitions queue (in the transition's own transaction, by every store's `put_job`), and the
/// deliveries. A record is removed with its job (`delete_job`, `prune_jobs`).
#[async_trait]
pub trait WebhookStore: JobReader {
    /// Sets each job's callback URL (replacing one it had), in one transaction, flushed. When a
    /// job gets its first webhook and is already succeeded, failed or cancelled, a notice of that
    /// status is queued at once, so a job that finished before its webhook was recorded is not
    /// missed. Jobs that do not exist are skipped.
    async fn set_webhooks(&self, hooks: &[(JobId, String)]) -> StoreResult<()>;
    async fn webhook(&self, id: JobId) -> StoreResult<Option<Webhook>>;
    /// Claims the pending notice due first (`next_attempt_at <= now`), moving its
    /// `next_attempt_at` to `now + lease_ms`: a notifier that dies while sending leaves it to be
    /// sent again after that, and another notifier (PostgreSQL: another process) does not send it
    /// meanwhile.
    async fn claim_notice(&self, now: Timestamp, lease_ms: u64) -> StoreResult<ClaimNotice>;
    /// Records one attempt of a notice (see `model::notices::apply_delivery`), flushed.
    async fn record_delivery(
        &self,
        id: JobId,
        delivery: &Delivery,
        retry_at: Option<Timestamp>,
    ) -> StoreResult<()>;
}

/// The store as the orchestrator is handed it (`engine::Orchestrator`): statuses, leases,
/// submissions, webhook notices and incidents, and never a phase ([`WorkerStore`] is not in it).
pub trait OrchestratorSide: OrchestratorStore + MaintenanceStore + WebhookStore {}

impl<T: OrchestratorStore + MaintenanceStore + WebhookStore> OrchestratorSide for T {}

/// A whole state store: both sides, maintenance, webhooks, plus the log sink.
pub trait StateStore: OrchestratorSide + WorkerStore + JobLogSink {}

impl<T: OrchestratorSide + WorkerStore + JobLogSink> StateStore for T {}

/// Bounds on what one job may accumulate.
pub const LOG_LINES_MAX: usize = 2_000;
/// The most events a job holds: appending past it folds the oldest into the job's event summary,
/// in the same transaction (a store may be opened with a smaller bound for tests).
pub const EVENTS_MAX: u64 = 1_000;
pub const LOG_LINE_BYTES_MAX: usize = 4_096;

/// Cuts a message to at most `bytes_max` bytes, at a character boundary: every store's
/// `append_log` keeps [`LOG_LINE_BYTES_MAX`] of a line.
pub(crate) fn truncate_message(message: &mut String, bytes_max: usize) {
    if message.len() <= bytes_max {
        return;
    }
    let mut end = bytes_max;
    // Index 0 is always a boundary, so this stops.
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message.truncate(end);
}

/// Logs an incident line a store just recorded, in every store.
pub(crate) fn log_incident(incident: &Incident) {
    tracing::info!(
        seq = incident.seq,
        actor = %incident.actor,
        action = %incident.action,
        job_id = ?incident.job.map(|id| id.to_string()),
        key = ?incident.key,
        "incident recorded: {}",
        incident.reason
    );
}

/// Logs what a `prune_jobs` call did, in every store.
pub(crate) fn log_pruned(outcomes: &[Result<PrunedJob, Rejected>]) {
    let pruned = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
    tracing::info!(
        pruned,
        refused = outcomes.len() - pruned,
        "pruned finished jobs"
    );
}

/// The value of a transaction whose body never aborts with a `Rejected` (the webhook operations
/// name no transition).
pub(crate) fn refuses_nothing<T>(outcome: Result<T, Rejected>, operation: &str) -> T {
    match outcome {
        Ok(value) => value,
        Err(rejected) => unreachable!("{operation} refuses nothing, yet: {rejected}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_cut_at_a_char_boundary() {
        let mut message = "ééé".to_string(); // 6 bytes
        truncate_message(&mut message, 3);
        assert_eq!(message, "é");
        let mut message = "abc".to_string();
        truncate_message(&mut message, 3);
        assert_eq!(message, "abc");
    }

    #[test]
    fn state_uris_name_sled_by_default_and_postgres_when_asked() {
        let home = std::path::Path::new("/srv/narra");
        assert_eq!(
            StateUri::parse(None, home).expect("default"),
            StateUri::Sled(home.join("state"))
        );
        assert_eq!(
            StateUri::parse(Some("sled:///var/lib/narra"), home).expect("absolute"),
            StateUri::Sled("/var/lib/narra".into())
        );
        assert_eq!(
            StateUri::parse(Some("sled://other"), home).expect("relative to the home"),
            StateUri::Sled(home.join("other"))
        );
        let uri = "postgres://narra:secret@db:5432/narra";
        let parsed = StateUri::parse(Some(uri), home).expect("postgres");
        assert_eq!(parsed, StateUri::Postgres(uri.to_string()));
        assert!(!parsed.display().contains("secret"), "{}", parsed.display());
        for bad in ["sled://", "mysql://db/narra", "/var/lib/narra"] {
            assert!(
                matches!(
                    StateUri::parse(Some(bad), home),
                    Err(StoreError::InvalidUri { .. })
                ),
                "{bad}"
            );
        }
    }
}
