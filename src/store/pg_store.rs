//! The PostgreSQL state store: the store of a fleet, where several narra processes on several
//! machines share jobs, checkpoints and events. The only file, with its children, that speaks
//! tokio-postgres.
//!
//! It keeps sled's semantics (the conformance suite in `store::conformance` runs against both) and
//! sled's record format: every record column holds `store::codec` bytes, beside the columns queries
//! filter and sort on (`schema.rs`).
//!
//! The write protocol of every mutating operation:
//! 1. One SQL transaction (READ COMMITTED) locks the job's row (`SELECT ... FOR UPDATE`), decodes it,
//!    asks `model::machine` for the transition (a refusal rolls the transaction back, so a refused
//!    call writes nothing), checks the result's invariants and writes the job row, its events
//!    (folding the oldest into its summary past the bound) and, for `record_checkpoint`, the
//!    checkpoint, metadata record and blob references. Every writer of a job's records locks the
//!    job's row first, so writes to one job are serialized and the rows it reads cannot change
//!    under it.
//! 2. The commit makes it durable (PostgreSQL's WAL, fsynced at commit with the server's default
//!    `synchronous_commit`). A crash before the commit leaves none of it.
//! 3. Only then does the call return success.
//!
//! A transaction that loses a race (a deadlock, a serialization failure, two submissions of one new
//! key) is run again from the start, at most [`TRANSACTION_ATTEMPTS_MAX`] times.
//!
//! Leases: `claim_next` and `claim` hand out a fencing token (`Job::fencing_token`, one more than
//! the last), and every write by a lease holder (`renew_lease`, `set_phase`, `record_checkpoint`,
//! `complete`, ...) is decided by `model::machine::check_token` in the transaction that holds the
//! job's row lock: a worker that lost its lease cannot overwrite the work of the one that took over.
//! No row lock is held while a step runs; each write is a short transaction of its own.
//!
//! Scheduling: `claim_next` and `record_host_outcome` run under a transaction-level advisory lock
//! (per schema), so a host's limits are checked and its state written by one claimer at a time, as
//! sled's `schedule_lock` does in one process. Candidates are read in claim order, and the one the
//! scheduling rules admit is locked with `FOR UPDATE SKIP LOCKED`: a job another transaction is
//! changing (a cancel, an operator's reset) is passed over, not waited for.
//!
//! Wake-ups: a transaction that makes a job pending, or stops a running one, sends
//! `NOTIFY narra_jobs` (delivered at commit); `wait_for_work` LISTENs (`listen.rs`), so an idle
//! scheduler wakes when there is something to claim instead of polling often.
//!
//! Job logs are best effort, as in sled: `append_log` (synchronous, called from the tracing layer)
//! buffers a line, and a task writes the buffer (`logs.rs`).
//!
//! Clocks: decisions use the process's clock (`Timestamp::now`), as sled does; the machines of a
//! fleet must keep their clocks in sync (NTP), since a lease's expiry is compared across them.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, Row, Transaction};

use super::claims::{self, Attempted, Batch, ClaimScan};
use super::codec;
use super::{BatchOptions, ClaimNext, ClaimNotice, ClaimRequest, Resubmit, SUBMIT_BATCH_MAX};
use super::{
    JobFilter, JobLogSink, JobReader, LOG_LINES_MAX, MaintenanceStore, NewIncident,
    OrchestratorStore, StepEvent, StoreError, StoreResult, SubmitOutcome, SubmitRequest, Submitted,
    TransitionOp, WebhookStore, WorkerStore, refuses_nothing,
};
use crate::model::attribution::{self, DeathSeen, Holding};
use crate::model::claims::{self as claims_model, Candidate, Claimant};
use crate::model::consistency::{self, EventSeqs, Mismatch};
use crate::model::history;
use crate::model::job::{
    Backfill, BackfillId, Checkpoint, Delivery, Event, EventKind, EventSummary, HostState,
    Incident, Job, JobId, JobProgress, LeaseToken, LogLine, MediaMetadata, Phase, PrunedJob,
    Status, Timestamp, Webhook, WorkerId,
};
use crate::model::machine::{self, OrchestratorOp, Rejected, Transition, WorkerOp};
use crate::model::records::{STORE_STEP, referenced_blobs};
use crate::model::scheduling::{self, HostOutcome, OutcomeVerdict, SchedulingPolicy};
use crate::model::sources::source_host;
use crate::model::{notices, records, submission};

mod listen;
mod logs;
pub mod schema;
#[doc(hidden)]
pub mod test_server;

use listen::Listener;
use logs::LogBuffer;

/// Connections the pool opens at most, unless the URI's `pool_max` says otherwise. Each running
/// job's writes take one for the length of a transaction, never while a step runs.
pub const DEFAULT_POOL_MAX: usize = 16;

/// The server ends a session of ours that sits idle inside a transaction this long (PostgreSQL's
/// `idle_in_transaction_session_timeout`), unless the URI's `options` set it. narra's transactions
/// are a few statements sent back to back, so only a process that was stopped (SIGSTOP, a paused
/// VM) or cut off mid-transaction ever reaches it; without it, such a process would hold the claim
/// lock and its rows' locks until it resumed, and every claim across the fleet would wait for it.
pub const IDLE_IN_TRANSACTION_TIMEOUT_MS: u64 = 10_000;
/// How many times a transaction that lost a race (deadlock, serialization failure, a unique key
/// taken meanwhile) is run again before the error is returned.
const TRANSACTION_ATTEMPTS_MAX: u32 = 8;
/// How many pending jobs a claim reads at a time, in claim order.
const QUEUE_SCAN_BATCH: i64 = 256;
/// The second key of the advisory locks (the first is the schema's name, hashed).
pub(crate) const SCHEMA_LOCK: i32 = 1;
const SCHEDULE_LOCK: i32 = 2;
/// The channel a transaction that makes a job pending notifies.
pub const JOBS_CHANNEL: &str = "narra_jobs";

const TABLE_JOBS: &str = "jobs";
const TABLE_CHECKPOINTS: &str = "checkpoints";
const TABLE_EVENTS: &str = "events";
const TABLE_EVENT_SUMMARIES: &str = "event_summaries";
const TABLE_METADATA: &str = "metadata";
const TABLE_PROGRESS: &str = "progress";
const TABLE_LOGS: &str = "logs";
const TABLE_INCIDENTS: &str = "incidents";
const TABLE_BACKFILLS: &str = "backfills";
const TABLE_HOSTS: &str = "hosts";
const TABLE_PRUNED: &str = "pruned";
const TABLE_WEBHOOKS: &str = "webhooks";

/// Runs `$body` (an expression that may use `?` and `.await`, with `$tx: Tx` in scope) as one
/// transaction, committed when the body returns `Ok`, and run again from the start when it loses a
/// race. Evaluates to `StoreResult<Result<T, Rejected>>`: a `Rejected` abort is the inner error,
/// with nothing written.
macro_rules! transaction {
    ($store:expr, $tx:ident => $body:expr) => {{
        let store: &PgStore = $store;
        let mut attempt: u32 = 1;
        loop {
            let mut client = store.client().await?;
            let sql_transaction = client.transaction().await?;
            let outcome = {
                let $tx = Tx {
                    sql: &sql_transaction,
                    events_max: store.events_max.load(Ordering::Relaxed),
                };
                async { $body }.await
            };
            let outcome = match outcome {
                Ok(value) => sql_transaction
                    .commit()
                    .await
                    .map(|()| value)
                    .map_err(TxAbort::from),
                Err(abort) => {
                    // A failed rollback leaves the connection to the pool's recycling check.
                    let _ = sql_transaction.rollback().await;
                    Err(abort)
                }
            };
            match outcome {
                Ok(value) => break Ok::<_, StoreError>(Ok(value)),
                Err(TxAbort::Rejected(rejected)) => {
                    if let $crate::model::machine::Rejected::Fenced {
                        job_id, presented, ..
                    } = &rejected
                    {
                        store.note_fenced(*job_id, *presented).await;
                    }
                    break Ok(Err(rejected));
                }
                Err(TxAbort::Conflict(error)) if attempt < TRANSACTION_ATTEMPTS_MAX => {
                    tracing::debug!(%error, attempt, "transaction lost a race; running it again");
                    attempt += 1;
                }
                Err(TxAbort::Conflict(error)) => break Err(StoreError::Postgres(error)),
                Err(TxAbort::Store(error)) => break Err(error),
            }
        }
    }};
}

mod import;

/// The state store on PostgreSQL.
pub struct PgStore {
    pool: Pool,
    /// The URI without its password, for messages.
    display: String,
    /// The most events a job holds (`store::EVENTS_MAX` unless set lower for a test).
    events_max: AtomicU64,
    logs: Arc<LogBuffer>,
    /// Wakes `wait_for_work` on `NOTIFY narra_jobs` (`listen.rs`).
    listener: Listener,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("uri", &self.display)
            .finish_non_exhaustive()
    }
}

/// What `PgStore::open` reads from a `postgres://` URI besides what tokio-postgres reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgOptions {
    /// The pool's connection bound (`?pool_max=N`).
    pub pool_max: usize,
}

/// Splits narra's own query parameters (`pool_max`) out of a `postgres://` URI; the rest is
/// tokio-postgres's (`options=-csearch_path%3Dname`, `connect_timeout`, ...).
pub fn parse_uri(uri: &str) -> StoreResult<(tokio_postgres::Config, PgOptions, String)> {
    let invalid = |reason: String| StoreError::InvalidUri {
        uri: redact(uri),
        reason,
    };
    let mut url = url::Url::parse(uri).map_err(|error| invalid(error.to_string()))?;
    let mut options = PgOptions {
        pool_max: DEFAULT_POOL_MAX,
    };
    let mut kept: Vec<(String, String)> = Vec::new();
    for (name, value) in url.query_pairs() {
        if name == "pool_max" {
            options.pool_max = value
                .parse::<usize>()
                .ok()
                .filter(|&max| max > 0)
                .ok_or_else(|| invalid(format!("pool_max must be a positive number: {value}")))?;
        } else {
            kept.push((name.into_owned(), value.into_owned()));
        }
    }
    if kept.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(kept);
        // Form encoding writes a space as `+` (and a `+` as `%2B`); tokio-postgres decodes only
        // `%XX`, so `options=-ca%3D1%20-cb%3D2` would reach the server as one option.
        let query = url.query().map(|query| query.replace('+', "%20"));
        url.set_query(query.as_deref());
    }
    let mut config = tokio_postgres::Config::from_str(url.as_str())
        .map_err(|error| invalid(error.to_string()))?;
    let server_options = config.get_options().unwrap_or_default();
    if !server_options.contains("idle_in_transaction_session_timeout") {
        let server_options = format!(
            "{server_options} -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_TIMEOUT_MS}"
        );
        config.options(server_options.trim_start());
    }
    Ok((config, options, redact(uri)))
}

/// The URI with its user info and secret parameters (`?password=`) redacted as every URL is
/// (`model::redact`), fit for logs and messages.
pub fn redact(uri: &str) -> String {
    match url::Url::parse(uri) {
        Ok(url) => crate::model::redact::redact_url(url.as_str()),
        Err(_) => "(unparsable URI)".to_string(),
    }
}

pub(crate) fn pg_error(error: tokio_postgres::Error) -> StoreError {
    StoreError::Postgres(error)
}

impl PgStore {
    /// Connects to the server `uri` names (`postgres://user:password@host:port/database`, plain
    /// TCP or a Unix socket directory as `host`), and applies the schema migrations it lacks.
    pub async fn open(uri: &str) -> StoreResult<PgStore> {
        let store = PgStore::connect(uri).await?;
        store.migrate().await?;
        tracing::debug!(uri = %store.display, "opened state store");
        Ok(store)
    }

    /// Sets up the pool without touching the schema (`narra migrate` applies it then). No
    /// connection is made until the first use.
    pub async fn connect(uri: &str) -> StoreResult<PgStore> {
        let (config, options, display) = parse_uri(uri)?;
        let listener = Listener::new(config.clone());
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_max)
            .build()
            .map_err(|error| StoreError::Pool(error.to_string()))?;
        let store = PgStore {
            logs: Arc::new(LogBuffer::new(pool.clone())),
            pool,
            display,
            events_max: AtomicU64::new(super::EVENTS_MAX),
            listener,
        };
        tracing::debug!(uri = %store.display, pool_max = options.pool_max, "state store pool");
        Ok(store)
    }

    /// Applies the migrations the schema lacks (see `schema.rs`); returns those applied.
    pub async fn migrate(&self) -> StoreResult<Vec<i32>> {
        let mut client = self.client().await?;
        schema::migrate(&mut client).await
    }

    /// The newest migration the schema has had (0 for an empty database).
    pub async fn schema_version(&self) -> StoreResult<i32> {
        let client = self.client().await?;
        let exists: Option<String> = client
            .query_one("SELECT to_regclass('schema_migrations')::text", &[])
            .await?
            .get(0);
        if exists.is_none() {
            return Ok(0);
        }
        let version: Option<i32> = client
            .query_one("SELECT max(version) FROM schema_migrations", &[])
            .await?
            .get(0);
        Ok(version.unwrap_or(0))
    }

    /// The URI the store was opened with, its password hidden.
    pub fn uri(&self) -> &str {
        &self.display
    }

    /// Sets the most events a job holds (at least 1): `store::EVENTS_MAX` unless a test, or
    /// `NARRA_EVENTS_MAX`, asks for less.
    pub fn set_events_max(&self, events_max: u64) {
        self.events_max.store(events_max.max(1), Ordering::Relaxed);
    }

    /// How many log lines `append_log` failed to write since the store was opened.
    pub fn log_lines_dropped(&self) -> u64 {
        self.logs.dropped()
    }

    async fn client(&self) -> StoreResult<deadpool_postgres::Object> {
        self.pool.get().await.map_err(|error| match error {
            deadpool_postgres::PoolError::Backend(error) => StoreError::Postgres(error),
            other => StoreError::Pool(other.to_string()),
        })
    }

    /// Checks the tables against each other, as `SledStore::check_consistency` checks its trees:
    /// every job decodes, holds its invariants and agrees with its columns; each job's events are
    /// numbered from its summary's `events_compacted` to `events_next` with no gap; the blob index
    /// names exactly the blobs of the store checkpoints and of the pruned jobs. For tests and
    /// `narra doctor`, not for the hot path.
    pub async fn check_consistency(&self) -> StoreResult<()> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, key, status, priority, not_before, host, record FROM jobs ORDER BY id",
                &[],
            )
            .await?;
        for row in rows {
            let job = decode_job_row(&row)?;
            let columns = JobColumns::of(&job);
            let key: String = row.get(1);
            let status: i16 = row.get(2);
            let priority: i32 = row.get(3);
            let not_before: Option<i64> = row.get(4);
            let host: String = row.get(5);
            if (key, status, priority, not_before, host)
                != (
                    columns.key.to_string(),
                    columns.status,
                    columns.priority,
                    columns.not_before,
                    columns.host,
                )
            {
                return Err(corrupt(
                    TABLE_JOBS,
                    &job.id.to_bytes(),
                    "the row's columns disagree with its record".to_string(),
                ));
            }
            let compacted = match client
                .query_opt(
                    "SELECT record FROM event_summaries WHERE job_id = $1",
                    &[&id_bytes(job.id)],
                )
                .await?
            {
                Some(row) => decode_summary(job.id, row.get(0))?.events_compacted,
                None => 0,
            };
            let seqs: Vec<i64> = client
                .query(
                    "SELECT seq FROM events WHERE job_id = $1 ORDER BY seq",
                    &[&id_bytes(job.id)],
                )
                .await?
                .iter()
                .map(|row| row.get(0))
                .collect();
            let mut walk = EventSeqs::after(compacted);
            // A negative number is never one a job's events run through.
            let held_as_numbered = seqs
                .iter()
                .all(|seq| walk.next(u64::try_from(*seq).unwrap_or(u64::MAX)).is_ok());
            if !held_as_numbered || walk.end(job.events_next).is_err() {
                return Err(corrupt(
                    TABLE_EVENTS,
                    &job.id.to_bytes(),
                    format!(
                        "events {seqs:?} but the summary ends at {compacted} and events_next is {}",
                        job.events_next
                    ),
                ));
            }
        }
        let mut store_checkpoints = Vec::new();
        for row in client
            .query(
                "SELECT job_id, record FROM checkpoints WHERE step = $1",
                &[&STORE_STEP],
            )
            .await?
        {
            let id = job_id_in(TABLE_CHECKPOINTS, row.get(0))?;
            let checkpoint: Checkpoint = decode_in(TABLE_CHECKPOINTS, id, row.get(1))?;
            store_checkpoints.push((id, checkpoint));
        }
        let mut tombstones = Vec::new();
        for row in client
            .query("SELECT job_id, record FROM pruned", &[])
            .await?
        {
            let id = job_id_in(TABLE_PRUNED, row.get(0))?;
            let pruned: PrunedJob = decode_in(TABLE_PRUNED, id, row.get(1))?;
            if pruned.id != id {
                return Err(corrupt(
                    TABLE_PRUNED,
                    &id.to_bytes(),
                    format!("record holds pruned job {}", pruned.id),
                ));
            }
            tombstones.push(pruned);
        }
        let expected_refs = consistency::expected_blob_refs(
            store_checkpoints
                .iter()
                .map(|(id, checkpoint)| (*id, checkpoint)),
            &tombstones,
        );
        let found_refs: BTreeSet<(String, JobId)> = self.blob_refs().await?.into_iter().collect();
        match consistency::first_mismatch(&expected_refs, &found_refs) {
            None => {}
            Some(Mismatch::Unexpected((blob, id))) => {
                return Err(corrupt(
                    "blob_refs",
                    blob.as_bytes(),
                    format!("reference of job {id} no store checkpoint makes"),
                ));
            }
            Some(Mismatch::Missing((blob, id))) => {
                return Err(corrupt(
                    "blob_refs",
                    blob.as_bytes(),
                    format!("job {id}'s store checkpoint names a blob that is not indexed"),
                ));
            }
        }
        // A webhook's due column is its pending notice's time (NULL with none pending).
        for row in client
            .query("SELECT job_id, next_attempt_at, record FROM webhooks", &[])
            .await?
        {
            let id = job_id_in(TABLE_WEBHOOKS, row.get(0))?;
            let next_attempt_at: Option<i64> = row.get(1);
            let webhook: Webhook = decode_in(TABLE_WEBHOOKS, id, row.get(2))?;
            let pending_at = notices::due_at(&webhook).map(|due_at| due_at.0);
            if webhook.job_id != id || next_attempt_at != pending_at {
                return Err(corrupt(
                    TABLE_WEBHOOKS,
                    &id.to_bytes(),
                    format!(
                        "record of job {} due at {pending_at:?}, column {next_attempt_at:?}",
                        webhook.job_id
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A write presenting `fencing_token` for job `id` was fenced. If a takeover took the job from
    /// that lease, its holder lived: the takeover's provisional charge is cleared
    /// (`attribution::holder_returned`). Best effort, outside `transaction!` (which calls this):
    /// a failure is logged, and the charge is then settled as if the holder had not come back.
    async fn note_fenced(&self, id: JobId, fencing_token: u64) {
        let cleared: Result<bool, StoreError> = async {
            let mut client = self.client().await?;
            let sql = client.transaction().await?;
            let Some(row) = sql
                .query_opt(
                    "SELECT record FROM jobs WHERE id = $1 FOR UPDATE",
                    &[&id_bytes(id)],
                )
                .await?
            else {
                return Ok(false);
            };
            let job = decode_job(id, row.get(0))?;
            let Some(cleared) = attribution::holder_returned(&job, fencing_token) else {
                return Ok(false);
            };
            sql.execute(
                "UPDATE jobs SET record = $2 WHERE id = $1",
                &[&id_bytes(id), &codec::encode(&cleared)?],
            )
            .await?;
            sql.commit().await?;
            Ok(true)
        }
        .await;
        match cleared {
            Ok(true) => {
                tracing::info!(job_id = %id, "the holder a takeover took this job from came back: its death is not charged")
            }
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(job_id = %id, %error, "could not clear a takeover's charge after a fenced write")
            }
        }
    }

    async fn read_job(&self, id: JobId) -> StoreResult<Option<Job>> {
        let client = self.client().await?;
        client
            .query_opt("SELECT record FROM jobs WHERE id = $1", &[&id_bytes(id)])
            .await?
            .map(|row| decode_job(id, row.get(0)))
            .transpose()
    }

    /// `claim_next` in one transaction under the schedule lock: see the module docs.
    async fn claim_first_admitted(&self, request: &ClaimRequest<'_>) -> StoreResult<ClaimNext> {
        let now = Timestamp::now();
        let outcome = transaction!(self, tx => {
            tx.sql
                .execute(
                    "SELECT pg_advisory_xact_lock(hashtext(current_schema()), $1)",
                    &[&SCHEDULE_LOCK],
                )
                .await?;
            claims::claim_next(&tx, request, now).await
        })?;
        match outcome {
            Ok(claimed) => Ok(claimed),
            // The body refuses nothing: a refused candidate is passed over.
            Err(rejected) => Err(StoreError::Corrupt {
                tree: TABLE_JOBS,
                key: String::new(),
                reason: format!("claim_next was refused: {rejected}"),
            }),
        }
    }

    /// A worker's write under a lease that changes no status: locks the job, checks the token,
    /// lets `body` write, and appends `events`.
    async fn leased_write(
        &self,
        token: &LeaseToken,
        events: Vec<EventKind>,
    ) -> StoreResult<Result<(), Rejected>> {
        let now = Timestamp::now();
        transaction!(self, tx => {
            let mut job = tx.job_for_update(token.job_id).await?;
            machine::check_lease(&job, token).map_err(TxAbort::Rejected)?;
            tx.append_events(&mut job, events.clone(), now).await?;
            tx.put_job(Some(job.status), &job).await
        })
    }
}

/// Why a transaction body stopped.
pub(crate) enum TxAbort {
    Rejected(Rejected),
    /// A race another transaction won: the whole transaction runs again.
    Conflict(tokio_postgres::Error),
    Store(StoreError),
}

impl From<tokio_postgres::Error> for TxAbort {
    fn from(error: tokio_postgres::Error) -> TxAbort {
        let conflict = matches!(
            error.code(),
            Some(code) if *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::UNIQUE_VIOLATION
        );
        if conflict {
            TxAbort::Conflict(error)
        } else {
            TxAbort::Store(StoreError::Postgres(error))
        }
    }
}

impl From<StoreError> for TxAbort {
    fn from(error: StoreError) -> TxAbort {
        TxAbort::Store(error)
    }
}

type TxResult<T> = Result<T, TxAbort>;

/// One transaction, with the writes every operation shares.
pub(crate) struct Tx<'a> {
    sql: &'a Transaction<'a>,
    /// The store's bound on a job's events, for `append_events`.
    events_max: u64,
}

impl Tx<'_> {
    /// Every running job. A record that does not decode is named and passed over, as a claim
    /// passes over a corrupt pending job.
    async fn running(&self) -> TxResult<Vec<Job>> {
        let rows = self
            .sql
            .query(
                "SELECT id, record FROM jobs WHERE status = $1",
                &[&status_column(Status::Running)],
            )
            .await?;
        let mut running = Vec::with_capacity(rows.len());
        for row in &rows {
            match decode_job_row(row) {
                Ok(job) => running.push(job),
                Err(error) => {
                    tracing::error!(%error, "passing over a running job whose record is corrupt")
                }
            }
        }
        Ok(running)
    }

    /// The jobs a process holds when it claims another: their runs are no longer alone
    /// (`attribution::joined`).
    async fn join_held(&self, holding: &Holding) -> TxResult<()> {
        for &id in &holding.jobs {
            let held = self.job_for_update(id).await?;
            if let Some(joined) = attribution::joined(&held) {
                self.put_job(Some(held.status), &joined).await?;
            }
        }
        Ok(())
    }

    /// Reads and locks the job's row; a job that does not exist is refused as not found.
    async fn job_for_update(&self, id: JobId) -> TxResult<Job> {
        match self
            .sql
            .query_opt(
                "SELECT record FROM jobs WHERE id = $1 FOR UPDATE",
                &[&id_bytes(id)],
            )
            .await?
        {
            Some(row) => Ok(decode_job(id, row.get(0))?),
            None => Err(TxAbort::Rejected(Rejected::NotFound(id))),
        }
    }

    async fn checkpoint(&self, id: JobId, step: &str) -> TxResult<Option<Checkpoint>> {
        Ok(self
            .sql
            .query_opt(
                "SELECT record FROM checkpoints WHERE job_id = $1 AND step = $2",
                &[&id_bytes(id), &step],
            )
            .await?
            .map(|row| decode_in(TABLE_CHECKPOINTS, id, row.get(0)))
            .transpose()?)
    }

    async fn all_checkpoints(&self, id: JobId) -> TxResult<Vec<Checkpoint>> {
        let mut checkpoints = Vec::new();
        for row in self
            .sql
            .query(
                "SELECT record FROM checkpoints WHERE job_id = $1 ORDER BY step",
                &[&id_bytes(id)],
            )
            .await?
        {
            checkpoints.push(decode_in(TABLE_CHECKPOINTS, id, row.get(0))?);
        }
        Ok(checkpoints)
    }

    async fn put_checkpoint(&self, id: JobId, checkpoint: &Checkpoint) -> TxResult<()> {
        self.sql
            .execute(
                "INSERT INTO checkpoints (job_id, step, record) VALUES ($1, $2, $3)
                 ON CONFLICT (job_id, step) DO UPDATE SET record = EXCLUDED.record",
                &[&id_bytes(id), &checkpoint.step, &codec::encode(checkpoint)?],
            )
            .await?;
        Ok(())
    }

    async fn put_metadata(&self, id: JobId, metadata: &MediaMetadata) -> TxResult<()> {
        self.sql
            .execute(
                "INSERT INTO metadata (job_id, record) VALUES ($1, $2)
                 ON CONFLICT (job_id) DO UPDATE SET record = EXCLUDED.record",
                &[&id_bytes(id), &codec::encode(metadata)?],
            )
            .await?;
        Ok(())
    }

    /// Moves the job's blob references from what `before` names to what `after` names.
    async fn replace_blob_refs(
        &self,
        id: JobId,
        before: Option<&Checkpoint>,
        after: Option<&Checkpoint>,
    ) -> TxResult<()> {
        for blob in before.into_iter().flat_map(referenced_blobs) {
            self.sql
                .execute(
                    "DELETE FROM blob_refs WHERE blob = $1 AND job_id = $2",
                    &[&blob, &id_bytes(id)],
                )
                .await?;
        }
        for blob in after.into_iter().flat_map(referenced_blobs) {
            self.sql
                .execute(
                    "INSERT INTO blob_refs (blob, job_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&blob, &id_bytes(id)],
                )
                .await?;
        }
        Ok(())
    }

    /// Writes a transition's job and appends its events; `before` is the job as it was read.
    async fn write_transition(
        &self,
        before: Option<&Job>,
        transition: Transition,
        now: Timestamp,
    ) -> TxResult<Job> {
        let Transition { mut job, events } = transition;
        let status_before = match before {
            Some(before) => Some(before.status),
            None => {
                // A new job's row goes first, so its events' foreign key holds.
                self.put_job(None, &job).await?;
                Some(job.status)
            }
        };
        self.append_events(&mut job, events, now).await?;
        self.put_job(status_before, &job).await?;
        Ok(job)
    }

    /// Appends events at the job's `events_next`, advancing it, and folds the oldest into the
    /// job's summary when it holds more than the bound; the caller then writes the job.
    async fn append_events(
        &self,
        job: &mut Job,
        kinds: Vec<EventKind>,
        now: Timestamp,
    ) -> TxResult<()> {
        let events = records::number_events(job, kinds, now)
            .map_err(|exhausted| corrupt(TABLE_JOBS, &job.id.to_bytes(), exhausted.to_string()))?;
        for event in &events {
            self.sql
                .execute(
                    "INSERT INTO events (job_id, seq, record) VALUES ($1, $2, $3)",
                    &[
                        &id_bytes(job.id),
                        &seq_column(event.seq)?,
                        &codec::encode(event)?,
                    ],
                )
                .await?;
        }
        self.bound_history(job).await
    }

    /// Folds the job's oldest events into its summary while it holds more than the bound (as
    /// sled's `compaction.rs` does, to the same point).
    async fn bound_history(&self, job: &Job) -> TxResult<()> {
        if !records::may_exceed(job.events_next, self.events_max) {
            return Ok(());
        }
        let summary = self.event_summary(job.id).await?;
        let compacted = summary
            .as_ref()
            .map_or(0, |summary| summary.events_compacted);
        let Some(fold_until) = records::fold_until(job.events_next, compacted, self.events_max)
        else {
            return Ok(());
        };
        let mut summary = summary.unwrap_or_else(|| history::empty(job.id));
        let rows = self
            .sql
            .query(
                "DELETE FROM events WHERE job_id = $1 AND seq < $2 RETURNING seq, record",
                &[&id_bytes(job.id), &seq_column(fold_until)?],
            )
            .await?;
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            let seq: i64 = row.get(0);
            let event: Event = decode_in(TABLE_EVENTS, job.id, row.get(1))?;
            if i64::try_from(event.seq).ok() != Some(seq) {
                return Err(corrupt(
                    TABLE_EVENTS,
                    &job.id.to_bytes(),
                    format!("row {seq} holds event seq {}", event.seq),
                )
                .into());
            }
            events.push(event);
        }
        events.sort_by_key(|event| event.seq);
        for (expected, event) in (compacted..fold_until).zip(&events) {
            if event.seq != expected {
                return Err(corrupt(
                    TABLE_EVENTS,
                    &job.id.to_bytes(),
                    format!(
                        "event {expected} of job {} is missing from its history",
                        job.id
                    ),
                )
                .into());
            }
            history::fold(&mut summary, event);
        }
        if summary.events_compacted != fold_until {
            return Err(corrupt(
                TABLE_EVENT_SUMMARIES,
                &job.id.to_bytes(),
                format!(
                    "compaction folded events up to {} instead of {fold_until}",
                    summary.events_compacted
                ),
            )
            .into());
        }
        self.sql
            .execute(
                "INSERT INTO event_summaries (job_id, record) VALUES ($1, $2)
                 ON CONFLICT (job_id) DO UPDATE SET record = EXCLUDED.record",
                &[&id_bytes(job.id), &codec::encode(&summary)?],
            )
            .await?;
        Ok(())
    }

    async fn event_summary(&self, id: JobId) -> TxResult<Option<EventSummary>> {
        Ok(self
            .sql
            .query_opt(
                "SELECT record FROM event_summaries WHERE job_id = $1",
                &[&id_bytes(id)],
            )
            .await?
            .map(|row| decode_summary(id, row.get(0)))
            .transpose()?)
    }

    /// Writes the job's row. A job that breaks its invariants is a bug in the machine or the
    /// store; it is refused here rather than written. A job that becomes pending wakes idle
    /// workers (`NOTIFY`, delivered at commit).
    async fn put_job(&self, status_before: Option<Status>, job: &Job) -> TxResult<()> {
        if let Err(reason) = job.invariants_hold() {
            return Err(corrupt(
                TABLE_JOBS,
                &job.id.to_bytes(),
                format!("refusing to write a job that breaks its invariants: {reason}"),
            )
            .into());
        }
        let columns = JobColumns::of(job);
        self.sql
            .execute(
                "INSERT INTO jobs (id, key, status, priority, not_before, host, record)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (id) DO UPDATE SET key = EXCLUDED.key, status = EXCLUDED.status,
                     priority = EXCLUDED.priority, not_before = EXCLUDED.not_before,
                     host = EXCLUDED.host, record = EXCLUDED.record",
                &[
                    &id_bytes(job.id),
                    &columns.key,
                    &columns.status,
                    &columns.priority,
                    &columns.not_before,
                    &columns.host,
                    &codec::encode(job)?,
                ],
            )
            .await?;
        // New work, or a slot and a host freed: what an idle scheduler waits for.
        let became_pending =
            job.status == Status::Pending && status_before != Some(Status::Pending);
        let stopped_running =
            status_before == Some(Status::Running) && job.status != Status::Running;
        if became_pending || stopped_running {
            self.sql
                .execute("SELECT pg_notify($1, '')", &[&JOBS_CHANNEL])
                .await?;
        }
        // A terminal transition queues its webhook notice in the same transaction.
        if notices::queues_notice(status_before, job)
            && let Some(mut webhook) = self.webhook_for_update(job.id).await?
        {
            notices::queue_notice(&mut webhook, job, Timestamp::now());
            self.put_webhook(&webhook).await?;
        }
        Ok(())
    }

    async fn webhook_for_update(&self, id: JobId) -> TxResult<Option<Webhook>> {
        Ok(self
            .sql
            .query_opt(
                "SELECT record FROM webhooks WHERE job_id = $1 FOR UPDATE",
                &[&id_bytes(id)],
            )
            .await?
            .map(|row| decode_in(TABLE_WEBHOOKS, id, row.get(0)))
            .transpose()?)
    }

    /// Writes a webhook record, with its pending notice's due time as a column.
    async fn put_webhook(&self, webhook: &Webhook) -> TxResult<()> {
        let next_attempt_at = notices::due_at(webhook).map(|due_at| due_at.0);
        self.sql
            .execute(
                "INSERT INTO webhooks (job_id, next_attempt_at, record) VALUES ($1, $2, $3)
                 ON CONFLICT (job_id) DO UPDATE SET next_attempt_at = EXCLUDED.next_attempt_at,
                     record = EXCLUDED.record",
                &[
                    &id_bytes(webhook.job_id),
                    &next_attempt_at,
                    &codec::encode(webhook)?,
                ],
            )
            .await?;
        Ok(())
    }

    /// Removes the job's row and every record hanging off it but its blob references, logs and
    /// progress (the caller decides about those).
    async fn remove_job(&self, id: JobId) -> TxResult<()> {
        // checkpoints, events, event_summaries and metadata go with the row (ON DELETE CASCADE).
        self.sql
            .execute("DELETE FROM jobs WHERE id = $1", &[&id_bytes(id)])
            .await?;
        Ok(())
    }

    async fn host_state(&self, host: &str) -> TxResult<Option<HostState>> {
        Ok(self
            .sql
            .query_opt("SELECT record FROM hosts WHERE host = $1", &[&host])
            .await?
            .map(|row| codec::decode(TABLE_HOSTS, host.as_bytes(), row.get(0)))
            .transpose()?)
    }

    async fn put_host_state(&self, state: &HostState) -> TxResult<()> {
        self.sql
            .execute(
                "INSERT INTO hosts (host, record) VALUES ($1, $2)
                 ON CONFLICT (host) DO UPDATE SET record = EXCLUDED.record",
                &[&state.host, &codec::encode(state)?],
            )
            .await?;
        Ok(())
    }
}

/// `claim_next`'s reads and writes (`store::claims`), in the claim's transaction: candidates are
/// read in claim order, and the one the planner admits is locked with `FOR UPDATE SKIP LOCKED`.
#[async_trait]
impl ClaimScan for Tx<'_> {
    type Error = TxAbort;
    /// The (priority, id) of the last candidate of the previous batch.
    type Cursor = (i32, Vec<u8>);

    /// A record that does not decode is named and passed over, as a claim passes over a
    /// corrupt pending job.
    async fn running_jobs(&self) -> TxResult<Vec<Job>> {
        self.running().await
    }

    async fn host(&self, host: &str) -> TxResult<Option<HostState>> {
        self.host_state(host).await
    }

    async fn put_host(&self, state: &HostState) -> TxResult<()> {
        self.put_host_state(state).await
    }

    /// A batch of the whole queue, or, for a claim limited to some jobs, all of those that are
    /// pending.
    async fn candidates(
        &self,
        only: Option<&BTreeSet<JobId>>,
        cursor: Option<&(i32, Vec<u8>)>,
    ) -> TxResult<Batch<(i32, Vec<u8>)>> {
        // `status = 0` is written out (pending's column value, `status_column`), so that the
        // planner matches the `jobs_pending` partial index whatever plan it caches.
        let rows = match (only, cursor) {
            (Some(_), Some(_)) => Vec::new(),
            (Some(only), None) => {
                let only: Vec<Vec<u8>> = only.iter().map(|id| id_bytes(*id)).collect();
                self.sql
                    .query(
                        "SELECT id, priority, not_before, host FROM jobs
                         WHERE status = 0 AND id = ANY($1) ORDER BY priority DESC, id",
                        &[&only],
                    )
                    .await?
            }
            (None, None) => {
                self.sql
                    .query(
                        "SELECT id, priority, not_before, host FROM jobs
                         WHERE status = 0 ORDER BY priority DESC, id LIMIT $1",
                        &[&QUEUE_SCAN_BATCH],
                    )
                    .await?
            }
            (None, Some((priority, id))) => {
                self.sql
                    .query(
                        "SELECT id, priority, not_before, host FROM jobs
                         WHERE status = 0 AND (priority < $1 OR (priority = $1 AND id > $2))
                         ORDER BY priority DESC, id LIMIT $3",
                        &[priority, id, &QUEUE_SCAN_BATCH],
                    )
                    .await?
            }
        };
        let mut entries = Vec::with_capacity(rows.len());
        let mut next = None;
        for row in &rows {
            let id = job_id_in(TABLE_JOBS, row.get(0))?;
            let priority: i32 = row.get(1);
            entries.push(Ok(Candidate {
                id,
                not_before: Timestamp(row.get::<_, Option<i64>>(2).unwrap_or(i64::MIN)),
                host: row.get(3),
            }));
            next = Some((priority, id_bytes(id)));
        }
        Ok(Batch { entries, next })
    }

    /// Locked only if no other transaction holds it: one that does is changing the job (a
    /// cancel, a reset), and the claim moves on.
    async fn try_claim(
        &self,
        id: JobId,
        claimant: &Claimant,
        now: Timestamp,
    ) -> TxResult<Attempted> {
        let Some(row) = self
            .sql
            .query_opt(
                "SELECT record FROM jobs WHERE id = $1 AND status = $2
                 FOR UPDATE SKIP LOCKED",
                &[&id_bytes(id), &status_column(Status::Pending)],
            )
            .await?
        else {
            return Ok(Attempted::Locked);
        };
        let job = match decode_job(id, row.get(0)) {
            Ok(job) => job,
            Err(error) => return Ok(Attempted::Corrupt(error)),
        };
        let transition = match machine::apply_orchestrator(&job, &claimant.op, now) {
            Ok(transition) => transition,
            Err(rejected) => return Ok(Attempted::Refused(rejected)),
        };
        let job = self.write_transition(Some(&job), transition, now).await?;
        self.join_held(&claimant.holding).await?;
        Ok(Attempted::Claimed(Box::new(job)))
    }
}

/// The columns of a job's row besides its record.
struct JobColumns<'a> {
    key: &'a str,
    status: i16,
    priority: i32,
    not_before: Option<i64>,
    host: String,
}

impl JobColumns<'_> {
    fn of(job: &Job) -> JobColumns<'_> {
        JobColumns {
            key: &job.key,
            status: status_column(job.status),
            priority: job.priority,
            not_before: job.not_before.map(|at| at.0),
            host: source_host(&job.source),
        }
    }
}

fn status_column(status: Status) -> i16 {
    i16::from(status.index_byte())
}

fn id_bytes(id: JobId) -> Vec<u8> {
    id.to_bytes().to_vec()
}

fn seq_column(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| StoreError::Encode(format!("sequence {seq} is past i64")))
}

fn corrupt(table: &'static str, key: &[u8], reason: String) -> StoreError {
    StoreError::Corrupt {
        tree: table,
        key: codec::hex(key),
        reason,
    }
}

fn decode_in<T: serde::de::DeserializeOwned>(
    table: &'static str,
    id: JobId,
    bytes: &[u8],
) -> StoreResult<T> {
    codec::decode(table, &id.to_bytes(), bytes)
}

/// Decodes a job and checks it right after reading it back: its id and its invariants.
fn decode_job(id: JobId, bytes: &[u8]) -> StoreResult<Job> {
    let key = id.to_bytes();
    let job = codec::decode_job(TABLE_JOBS, &key, bytes)?;
    if job.id != id {
        return Err(corrupt(
            TABLE_JOBS,
            &key,
            format!("record holds job {}", job.id),
        ));
    }
    job.invariants_hold()
        .map_err(|reason| corrupt(TABLE_JOBS, &key, reason))?;
    Ok(job)
}

/// Decodes a row whose first column is the job id and whose last is the record.
fn decode_job_row(row: &Row) -> StoreResult<Job> {
    let id = job_id_in(TABLE_JOBS, row.get(0))?;
    decode_job(id, row.get(row.len() - 1))
}

fn decode_summary(id: JobId, bytes: &[u8]) -> StoreResult<EventSummary> {
    let summary: EventSummary = decode_in(TABLE_EVENT_SUMMARIES, id, bytes)?;
    if summary.job_id != id {
        return Err(corrupt(
            TABLE_EVENT_SUMMARIES,
            &id.to_bytes(),
            format!("record holds the summary of job {}", summary.job_id),
        ));
    }
    Ok(summary)
}

fn job_id_in(table: &'static str, bytes: &[u8]) -> StoreResult<JobId> {
    let bytes = <[u8; 16]>::try_from(bytes)
        .map_err(|_| corrupt(table, bytes, "expected a 16-byte job id".to_string()))?;
    Ok(JobId::from_bytes(bytes))
}

/// One submission inside a transaction, for `submit` and `submit_batch`: `model::submission`
/// decides, this reads (and locks) the key's job and writes what it returns.
async fn submit_in_tx(
    tx: &Tx<'_>,
    request: &SubmitRequest,
    rule: Resubmit,
    now: Timestamp,
) -> TxResult<Submitted> {
    let Some(row) = tx
        .sql
        .query_opt(
            "SELECT id, record FROM jobs WHERE key = $1 FOR UPDATE",
            &[&request.key],
        )
        .await?
    else {
        // A concurrent submission of the same new key makes one of the two inserts fail on the
        // key's unique index; that transaction runs again and finds the job.
        let job = tx
            .write_transition(None, submission::create(request, now), now)
            .await?;
        return Ok(Submitted {
            job,
            outcome: SubmitOutcome::Created,
        });
    };
    let job = decode_job_row(&row)?;
    match submission::resubmit(&job, request, rule, now)
        .map_err(|refused| corrupt(TABLE_JOBS, &job.id.to_bytes(), refused.to_string()))?
    {
        None => Ok(Submitted {
            job,
            outcome: SubmitOutcome::Existing,
        }),
        Some(resubmission) => Ok(Submitted {
            job: tx
                .write_transition(Some(&job), resubmission.transition, now)
                .await?,
            outcome: resubmission.outcome,
        }),
    }
}

#[async_trait]
impl JobReader for PgStore {
    async fn job(&self, id: JobId) -> StoreResult<Option<Job>> {
        self.read_job(id).await
    }

    async fn job_by_key(&self, key: &str) -> StoreResult<Option<Job>> {
        let client = self.client().await?;
        client
            .query_opt("SELECT id, record FROM jobs WHERE key = $1", &[&key])
            .await?
            .map(|row| decode_job_row(&row))
            .transpose()
    }

    async fn jobs(&self, filter: &JobFilter) -> StoreResult<Vec<Job>> {
        if filter.limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(filter.limit).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let rows =
            match filter.status {
                Some(status) => client
                    .query(
                        "SELECT id, record FROM jobs WHERE status = $1 ORDER BY id DESC LIMIT $2",
                        &[&status_column(status), &limit],
                    )
                    .await?,
                None => {
                    client
                        .query(
                            "SELECT id, record FROM jobs ORDER BY id DESC LIMIT $1",
                            &[&limit],
                        )
                        .await?
                }
            };
        rows.iter().map(decode_job_row).collect()
    }

    async fn checkpoints(&self, id: JobId) -> StoreResult<Vec<Checkpoint>> {
        let client = self.client().await?;
        let mut checkpoints = Vec::new();
        for row in client
            .query(
                "SELECT record FROM checkpoints WHERE job_id = $1",
                &[&id_bytes(id)],
            )
            .await?
        {
            checkpoints.push(decode_in::<Checkpoint>(TABLE_CHECKPOINTS, id, row.get(0))?);
        }
        // The trait promises the order the steps were recorded in.
        records::in_recorded_order(&mut checkpoints);
        Ok(checkpoints)
    }

    async fn checkpoint(&self, id: JobId, step: &str) -> StoreResult<Option<Checkpoint>> {
        let client = self.client().await?;
        client
            .query_opt(
                "SELECT record FROM checkpoints WHERE job_id = $1 AND step = $2",
                &[&id_bytes(id), &step],
            )
            .await?
            .map(|row| decode_in(TABLE_CHECKPOINTS, id, row.get(0)))
            .transpose()
    }

    async fn events(&self, id: JobId) -> StoreResult<Vec<Event>> {
        let client = self.client().await?;
        let mut events = Vec::new();
        for row in client
            .query(
                "SELECT seq, record FROM events WHERE job_id = $1 ORDER BY seq",
                &[&id_bytes(id)],
            )
            .await?
        {
            let seq: i64 = row.get(0);
            let event: Event = decode_in(TABLE_EVENTS, id, row.get(1))?;
            if i64::try_from(event.seq).ok() != Some(seq) {
                return Err(corrupt(
                    TABLE_EVENTS,
                    &id.to_bytes(),
                    format!("row {seq} holds event seq {}", event.seq),
                ));
            }
            events.push(event);
        }
        Ok(events)
    }

    async fn event_summary(&self, id: JobId) -> StoreResult<Option<EventSummary>> {
        let client = self.client().await?;
        client
            .query_opt(
                "SELECT record FROM event_summaries WHERE job_id = $1",
                &[&id_bytes(id)],
            )
            .await?
            .map(|row| decode_summary(id, row.get(0)))
            .transpose()
    }

    fn events_max(&self) -> u64 {
        self.events_max.load(Ordering::Relaxed)
    }

    async fn metadata(&self, id: JobId) -> StoreResult<Option<MediaMetadata>> {
        let client = self.client().await?;
        client
            .query_opt(
                "SELECT record FROM metadata WHERE job_id = $1",
                &[&id_bytes(id)],
            )
            .await?
            .map(|row| decode_in(TABLE_METADATA, id, row.get(0)))
            .transpose()
    }

    async fn logs(&self, id: JobId) -> StoreResult<Vec<LogLine>> {
        // Lines this process appended are written first, so a reader sees its own lines.
        self.logs.drain().await;
        let client = self.client().await?;
        let mut lines = Vec::new();
        for row in client
            .query(
                "SELECT record FROM logs WHERE job_id = $1 ORDER BY seq",
                &[&id_bytes(id)],
            )
            .await?
        {
            lines.push(decode_in(TABLE_LOGS, id, row.get(0))?);
        }
        Ok(lines)
    }

    async fn progress(&self, id: JobId) -> StoreResult<Option<JobProgress>> {
        let client = self.client().await?;
        client
            .query_opt(
                "SELECT record FROM progress WHERE job_id = $1",
                &[&id_bytes(id)],
            )
            .await?
            .map(|row| decode_in(TABLE_PROGRESS, id, row.get(0)))
            .transpose()
    }

    async fn jobs_referencing(&self, key: &str) -> StoreResult<Vec<JobId>> {
        let client = self.client().await?;
        client
            .query(
                "SELECT job_id FROM blob_refs WHERE blob = $1 ORDER BY job_id",
                &[&key],
            )
            .await?
            .iter()
            .map(|row| job_id_in("blob_refs", row.get(0)))
            .collect()
    }

    async fn blob_refs(&self) -> StoreResult<Vec<(String, JobId)>> {
        let client = self.client().await?;
        client
            .query(
                "SELECT blob, job_id FROM blob_refs ORDER BY blob, job_id",
                &[],
            )
            .await?
            .iter()
            .map(|row| Ok((row.get(0), job_id_in("blob_refs", row.get(1))?)))
            .collect()
    }

    async fn incidents(&self) -> StoreResult<Vec<Incident>> {
        let client = self.client().await?;
        let mut incidents = Vec::new();
        for row in client
            .query("SELECT seq, record FROM incidents ORDER BY seq", &[])
            .await?
        {
            let seq: i64 = row.get(0);
            let key = seq.to_be_bytes();
            let incident: Incident = codec::decode(TABLE_INCIDENTS, &key, row.get(1))?;
            if i64::try_from(incident.seq).ok() != Some(seq) {
                return Err(corrupt(
                    TABLE_INCIDENTS,
                    &key,
                    format!("record holds incident seq {}", incident.seq),
                ));
            }
            incidents.push(incident);
        }
        Ok(incidents)
    }

    async fn pruned_job(&self, id: JobId) -> StoreResult<Option<PrunedJob>> {
        let client = self.client().await?;
        client
            .query_opt(
                "SELECT record FROM pruned WHERE job_id = $1",
                &[&id_bytes(id)],
            )
            .await?
            .map(|row| decode_in(TABLE_PRUNED, id, row.get(0)))
            .transpose()
    }

    async fn pruned_jobs(&self) -> StoreResult<Vec<PrunedJob>> {
        let client = self.client().await?;
        let mut tombstones = Vec::new();
        for row in client
            .query("SELECT job_id, record FROM pruned ORDER BY job_id", &[])
            .await?
        {
            let id = job_id_in(TABLE_PRUNED, row.get(0))?;
            let tombstone: PrunedJob = decode_in(TABLE_PRUNED, id, row.get(1))?;
            if tombstone.id != id {
                return Err(corrupt(
                    TABLE_PRUNED,
                    &id.to_bytes(),
                    format!("record holds pruned job {}", tombstone.id),
                ));
            }
            tombstones.push(tombstone);
        }
        Ok(tombstones)
    }

    async fn backfills(&self) -> StoreResult<Vec<Backfill>> {
        let client = self.client().await?;
        let mut backfills = Vec::new();
        for row in client
            .query("SELECT id, record FROM backfills ORDER BY id", &[])
            .await?
        {
            let key: &[u8] = row.get(0);
            let backfill: Backfill = codec::decode(TABLE_BACKFILLS, key, row.get(1))?;
            if backfill.id.to_bytes() != key {
                return Err(corrupt(
                    TABLE_BACKFILLS,
                    key,
                    format!("record holds backfill {}", backfill.id),
                ));
            }
            backfills.push(backfill);
        }
        Ok(backfills)
    }

    async fn backfill_jobs(&self, id: BackfillId) -> StoreResult<Vec<JobId>> {
        let client = self.client().await?;
        client
            .query(
                "SELECT job_id FROM backfill_jobs WHERE backfill_id = $1 ORDER BY job_id",
                &[&id.to_bytes().to_vec()],
            )
            .await?
            .iter()
            .map(|row| job_id_in("backfill_jobs", row.get(0)))
            .collect()
    }

    async fn hosts(&self) -> StoreResult<Vec<HostState>> {
        let client = self.client().await?;
        client
            .query("SELECT host, record FROM hosts ORDER BY host", &[])
            .await?
            .iter()
            .map(|row| {
                let host: &str = row.get(0);
                codec::decode(TABLE_HOSTS, host.as_bytes(), row.get(1))
            })
            .collect()
    }
}

#[async_trait]
impl OrchestratorStore for PgStore {
    /// One transaction, and the log bound once the job ends.
    async fn transition(
        &self,
        id: JobId,
        op: TransitionOp<'_>,
    ) -> StoreResult<Result<Job, Rejected>> {
        let op = op.op();
        let now = Timestamp::now();
        let outcome = transaction!(self, tx => {
            let job = tx.job_for_update(id).await?;
            let transition = machine::apply_orchestrator(&job, op, now).map_err(TxAbort::Rejected)?;
            tx.write_transition(Some(&job), transition, now).await
        })?;
        let job = match outcome {
            Ok(job) => job,
            Err(rejected) => return Ok(Err(rejected)),
        };
        tracing::debug!(job_id = %id, op = op.name(), status = %job.status, "job transition");
        if job.status.is_terminal() {
            self.logs.trim_best_effort(id).await;
        }
        Ok(Ok(job))
    }

    fn shared(&self) -> bool {
        true
    }

    async fn wait_for_work(&self, timeout: std::time::Duration) {
        self.listener.wait(timeout).await;
    }

    async fn submit(&self, request: &SubmitRequest) -> StoreResult<Submitted> {
        let now = Timestamp::now();
        let outcome = transaction!(self, tx => {
            submit_in_tx(&tx, request, Resubmit::default(), now).await
        })?;
        let submitted = outcome.map_err(|rejected| {
            corrupt(
                TABLE_JOBS,
                request.key.as_bytes(),
                format!("submit was refused: {rejected}"),
            )
        })?;
        tracing::debug!(job_id = %submitted.job.id, outcome = ?submitted.outcome, "job submitted");
        Ok(submitted)
    }

    async fn submit_batch(
        &self,
        requests: &[SubmitRequest],
        options: &BatchOptions,
    ) -> StoreResult<Vec<Submitted>> {
        let mut submitted = Vec::with_capacity(requests.len());
        for chunk in requests.chunks(SUBMIT_BATCH_MAX) {
            let now = Timestamp::now();
            let outcome = transaction!(self, tx => {
                let mut chunk_submitted = Vec::with_capacity(chunk.len());
                for request in chunk {
                    let one = submit_in_tx(&tx, request, options.resubmit, now).await?;
                    if let Some(backfill) = options.backfill {
                        tx.sql
                            .execute(
                                "INSERT INTO backfill_jobs (backfill_id, job_id) VALUES ($1, $2)
                                 ON CONFLICT DO NOTHING",
                                &[&backfill.to_bytes().to_vec(), &id_bytes(one.job.id)],
                            )
                            .await?;
                    }
                    chunk_submitted.push(one);
                }
                Ok(chunk_submitted)
            })?;
            let chunk_submitted = outcome.map_err(|rejected| {
                corrupt(
                    TABLE_JOBS,
                    b"",
                    format!("a batch submit was refused: {rejected}"),
                )
            })?;
            submitted.extend(chunk_submitted);
        }
        tracing::debug!(requests = requests.len(), "batch submitted");
        Ok(submitted)
    }

    async fn open_backfill(&self, manifest: &str) -> StoreResult<Backfill> {
        let backfill = Backfill {
            id: BackfillId::new(),
            manifest: manifest.to_string(),
            created_at: Timestamp::now(),
        };
        let client = self.client().await?;
        // The manifest's unique index makes find-or-create one statement for every process.
        let inserted = client
            .execute(
                "INSERT INTO backfills (id, manifest, record) VALUES ($1, $2, $3)
                 ON CONFLICT (manifest) DO NOTHING",
                &[
                    &backfill.id.to_bytes().to_vec(),
                    &manifest,
                    &codec::encode(&backfill)?,
                ],
            )
            .await?;
        if inserted == 1 {
            tracing::info!(backfill_id = %backfill.id, manifest, "backfill recorded");
            return Ok(backfill);
        }
        let row = client
            .query_one(
                "SELECT id, record FROM backfills WHERE manifest = $1",
                &[&manifest],
            )
            .await?;
        let key: &[u8] = row.get(0);
        codec::decode(TABLE_BACKFILLS, key, row.get(1))
    }

    async fn claim_next(&self, request: &ClaimRequest<'_>) -> StoreResult<ClaimNext> {
        let claimed = self.claim_first_admitted(request).await?;
        if let ClaimNext::Claimed(job, _) = &claimed {
            tracing::debug!(job_id = %job.id, worker_id = %request.worker_id, token = job.fencing_token, "job claimed");
        }
        Ok(claimed)
    }

    async fn claim(
        &self,
        id: JobId,
        worker_id: &WorkerId,
        lease_ttl_ms: u64,
    ) -> StoreResult<Result<(Job, LeaseToken), Rejected>> {
        let now = Timestamp::now();
        let outcome = transaction!(self, tx => {
            let claimant = Claimant::new(worker_id, lease_ttl_ms, &tx.running().await?);
            let job = tx.job_for_update(id).await?;
            let transition =
                machine::apply_orchestrator(&job, &claimant.op, now).map_err(TxAbort::Rejected)?;
            let claimed = tx.write_transition(Some(&job), transition, now).await?;
            tx.join_held(&claimant.holding).await?;
            Ok(claimed)
        })?;
        Ok(outcome.map(|job| {
            let token = claims_model::lease_of(&job);
            (job, token)
        }))
    }

    async fn record_host_outcome(
        &self,
        host: &str,
        job: JobId,
        outcome: &HostOutcome,
        policy: &SchedulingPolicy,
    ) -> StoreResult<OutcomeVerdict> {
        let now = Timestamp::now();
        let verdict = transaction!(self, tx => {
            tx.sql
                .execute(
                    "SELECT pg_advisory_xact_lock(hashtext(current_schema()), $1)",
                    &[&SCHEDULE_LOCK],
                )
                .await?;
            let before = tx.host_state(host).await?;
            let update = scheduling::outcome_update(before.as_ref(), host, job, outcome, policy, now);
            if let Some(state) = &update.state {
                tx.put_host_state(state).await?;
            }
            Ok(update.verdict)
        })?;
        verdict.map_err(|rejected| {
            corrupt(
                TABLE_HOSTS,
                host.as_bytes(),
                format!("recording a host outcome was refused: {rejected}"),
            )
        })
    }

    async fn retry_from(
        &self,
        id: JobId,
        step: &str,
        later_steps: &[String],
        reason: &str,
    ) -> StoreResult<Result<Job, Rejected>> {
        let now = Timestamp::now();
        let outcome = transaction!(self, tx => {
            let job = tx.job_for_update(id).await?;
            let (discarded, kept) =
                machine::split_for_retry_from(tx.all_checkpoints(id).await?, step, later_steps);
            let decision = machine::retry_from(&job, step, &discarded, &kept, reason, now)
                .map_err(TxAbort::Rejected)?;
            for checkpoint in &discarded {
                if checkpoint.step == STORE_STEP {
                    // The index follows the store checkpoint, in the same transaction.
                    tx.replace_blob_refs(id, Some(checkpoint), None).await?;
                }
                tx.sql
                    .execute(
                        "DELETE FROM checkpoints WHERE job_id = $1 AND step = $2",
                        &[&id_bytes(id), &checkpoint.step],
                    )
                    .await?;
            }
            for checkpoint in &decision.repointed {
                tx.put_checkpoint(id, checkpoint).await?;
            }
            tx.write_transition(Some(&job), decision.transition, now).await
        })?;
        if outcome.is_ok() {
            tracing::info!(job_id = %id, step, "retry from a step: later checkpoints discarded");
        }
        Ok(outcome)
    }

    async fn reclaim_orphan(&self, id: JobId, reason: &str) -> StoreResult<Result<Job, Rejected>> {
        // Where the job was when its process died, read in the transaction that holds its row.
        let now = Timestamp::now();
        transaction!(self, tx => {
            let job = tx.job_for_update(id).await?;
            let checkpoints: i64 = tx
                .sql
                .query_one(
                    "SELECT count(*) FROM checkpoints WHERE job_id = $1",
                    &[&id_bytes(id)],
                )
                .await?
                .get(0);
            let progress = tx
                .sql
                .query_opt(
                    "SELECT record FROM progress WHERE job_id = $1",
                    &[&id_bytes(id)],
                )
                .await?
                .map(|row| decode_in::<JobProgress>(TABLE_PROGRESS, id, row.get(0)))
                .transpose()?;
            // A fleet sees a death only as a lease that ran out: its holder may have stalled.
            let op = OrchestratorOp::reclaim_orphan(
                &job,
                reason,
                usize::try_from(checkpoints).unwrap_or(usize::MAX),
                progress.as_ref(),
                DeathSeen::LeaseExpired,
            );
            let transition =
                machine::apply_orchestrator(&job, &op, now).map_err(TxAbort::Rejected)?;
            tx.write_transition(Some(&job), transition, now).await
        })
    }

    async fn settle_takeovers(&self, lease_ttl_ms: u64) -> StoreResult<Vec<Job>> {
        let now = Timestamp::now();
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, record FROM jobs WHERE status = $1 OR status = $2",
                &[
                    &status_column(Status::Pending),
                    &status_column(Status::Running),
                ],
            )
            .await?;
        drop(client);
        let op = OrchestratorOp::SettleTakeover { lease_ttl_ms };
        let mut settled = Vec::new();
        for row in rows {
            let job = match decode_job_row(&row) {
                Ok(job) => job,
                Err(error) => {
                    tracing::error!(%error, "passing over a job whose record is corrupt");
                    continue;
                }
            };
            if attribution::settle_takeover(&job, now, lease_ttl_ms).is_none() {
                continue;
            }
            // Decided again under the row's lock: a renewal may have cleared it meanwhile.
            if let Ok(job) = self.transition(job.id, TransitionOp(&op)).await? {
                settled.push(job);
            }
        }
        Ok(settled)
    }

    async fn record_reprobe(
        &self,
        id: JobId,
        checkpoint: &Checkpoint,
        metadata: &MediaMetadata,
        changes: Vec<String>,
    ) -> StoreResult<Result<Job, Rejected>> {
        let now = Timestamp::now();
        transaction!(self, tx => {
            let mut job = tx.job_for_update(id).await?;
            machine::check_reprobe(&job).map_err(TxAbort::Rejected)?;
            tx.put_checkpoint(id, checkpoint).await?;
            tx.put_metadata(id, metadata).await?;
            let reprobed = EventKind::Reprobed {
                changes: changes.clone(),
            };
            tx.append_events(&mut job, vec![reprobed], now).await?;
            tx.put_job(Some(job.status), &job).await?;
            Ok(job)
        })
    }
}

#[async_trait]
impl MaintenanceStore for PgStore {
    async fn record_incident(&self, incident: NewIncident) -> StoreResult<Incident> {
        let at = Timestamp::now();
        let outcome = transaction!(self, tx => {
            // Numbering needs one appender at a time, in every process.
            tx.sql
                .batch_execute("LOCK TABLE incidents IN EXCLUSIVE MODE")
                .await?;
            let last: Option<i64> = tx
                .sql
                .query_one("SELECT max(seq) FROM incidents", &[])
                .await?
                .get(0);
            let seq = match last {
                None => 0,
                Some(last) => u64::try_from(last)
                    .ok()
                    .and_then(|last| last.checked_add(1))
                    .ok_or_else(|| {
                        corrupt(
                            TABLE_INCIDENTS,
                            &last.to_be_bytes(),
                            "incident sequence exhausted".into(),
                        )
                    })?,
            };
            let incident = Incident {
                seq,
                at,
                actor: incident.actor.clone(),
                action: incident.action.clone(),
                job: incident.job,
                key: incident.key.clone(),
                reason: incident.reason.clone(),
            };
            tx.sql
                .execute(
                    "INSERT INTO incidents (seq, record) VALUES ($1, $2)",
                    &[&seq_column(seq)?, &codec::encode(&incident)?],
                )
                .await?;
            Ok(incident)
        })?;
        let incident = outcome.map_err(|rejected| {
            corrupt(
                TABLE_INCIDENTS,
                b"",
                format!("an incident was refused: {rejected}"),
            )
        })?;
        tracing::info!(
            seq = incident.seq,
            actor = %incident.actor,
            action = %incident.action,
            job_id = ?incident.job.map(|id| id.to_string()),
            key = ?incident.key,
            "incident recorded: {}",
            incident.reason
        );
        Ok(incident)
    }

    async fn delete_job(&self, id: JobId) -> StoreResult<Result<Job, Rejected>> {
        // Lines still buffered in this process are written first, so none outlives the job.
        self.logs.drain().await;
        let outcome = transaction!(self, tx => {
            let job = tx.job_for_update(id).await?;
            machine::check_deletable(&job).map_err(TxAbort::Rejected)?;
            tx.sql
                .execute("DELETE FROM blob_refs WHERE job_id = $1", &[&id_bytes(id)])
                .await?;
            tx.sql
                .execute("DELETE FROM logs WHERE job_id = $1", &[&id_bytes(id)])
                .await?;
            tx.sql
                .execute("DELETE FROM progress WHERE job_id = $1", &[&id_bytes(id)])
                .await?;
            tx.remove_job(id).await?;
            Ok(job)
        })?;
        if outcome.is_ok() {
            tracing::info!(job_id = %id, "deleted the job's records");
        }
        Ok(outcome)
    }

    async fn prune_jobs(
        &self,
        ids: &[JobId],
        cutoff: Timestamp,
    ) -> StoreResult<Vec<Result<PrunedJob, Rejected>>> {
        self.logs.drain().await;
        let mut outcomes = Vec::with_capacity(ids.len());
        for &id in ids {
            let pruned_at = Timestamp::now();
            let outcome = transaction!(self, tx => {
                let job = tx.job_for_update(id).await?;
                machine::check_prunable(&job, cutoff).map_err(TxAbort::Rejected)?;
                let store_checkpoint = tx.checkpoint(id, STORE_STEP).await?;
                let tombstone = records::tombstone(&job, store_checkpoint.as_ref(), pruned_at);
                // The blob references stay: they are the tombstone's now.
                tx.sql
                    .execute("DELETE FROM logs WHERE job_id = $1", &[&id_bytes(id)])
                    .await?;
                tx.sql
                    .execute("DELETE FROM progress WHERE job_id = $1", &[&id_bytes(id)])
                    .await?;
                tx.remove_job(id).await?;
                tx.sql
                    .execute(
                        "INSERT INTO pruned (job_id, record) VALUES ($1, $2)",
                        &[&id_bytes(id), &codec::encode(&tombstone)?],
                    )
                    .await?;
                Ok(tombstone)
            })?;
            outcomes.push(outcome);
        }
        super::log_pruned(&outcomes);
        Ok(outcomes)
    }

    async fn import(
        &self,
        records: &[super::transfer::Record],
    ) -> StoreResult<Vec<super::transfer::ImportOutcome>> {
        self.import_records(records).await
    }
}

#[async_trait]
impl WebhookStore for PgStore {
    async fn set_webhooks(&self, hooks: &[(JobId, String)]) -> StoreResult<()> {
        let now = Timestamp::now();
        let outcome = transaction!(self, tx => {
            for (id, url) in hooks {
                // The job's row is locked as a terminal transition locks it, so the two are
                // ordered: either the transition sees this record and queues the notice, or this
                // sees the finished job and queues it here.
                let Some(row) = tx
                    .sql
                    .query_opt(
                        "SELECT record FROM jobs WHERE id = $1 FOR UPDATE",
                        &[&id_bytes(*id)],
                    )
                    .await?
                else {
                    continue;
                };
                let job = decode_job(*id, row.get(0))?;
                let before = tx.webhook_for_update(*id).await?;
                let webhook = notices::set_url(before, &job, url, now);
                tx.put_webhook(&webhook).await?;
            }
            Ok(())
        })?;
        refuses_nothing(outcome, "set_webhooks");
        Ok(())
    }

    async fn webhook(&self, id: JobId) -> StoreResult<Option<Webhook>> {
        self.client()
            .await?
            .query_opt(
                "SELECT record FROM webhooks WHERE job_id = $1",
                &[&id_bytes(id)],
            )
            .await?
            .map(|row| decode_in(TABLE_WEBHOOKS, id, row.get(0)))
            .transpose()
    }

    async fn claim_notice(&self, now: Timestamp, lease_ms: u64) -> StoreResult<ClaimNotice> {
        let outcome = transaction!(self, tx => {
            // SKIP LOCKED: a notice another notifier is claiming right now is not waited for.
            let row = tx
                .sql
                .query_opt(
                    "SELECT job_id, record FROM webhooks WHERE next_attempt_at <= $1
                     ORDER BY next_attempt_at LIMIT 1 FOR UPDATE SKIP LOCKED",
                    &[&now.0],
                )
                .await?;
            let Some(row) = row else {
                let until: Option<i64> = tx
                    .sql
                    .query_one("SELECT min(next_attempt_at) FROM webhooks", &[])
                    .await?
                    .get(0);
                return Ok(ClaimNotice::Wait {
                    // One due but locked by another notifier's claim: ask again soon.
                    until: until.map(|until| Timestamp(until.max(now.0))),
                });
            };
            let id = job_id_in(TABLE_WEBHOOKS, row.get(0))?;
            let mut webhook: Webhook = decode_in(TABLE_WEBHOOKS, id, row.get(1))?;
            if !notices::claim_notice(&mut webhook, now, lease_ms) {
                return Err(corrupt(
                    TABLE_WEBHOOKS,
                    &id.to_bytes(),
                    "a due time but no pending notice".to_string(),
                )
                .into());
            }
            tx.put_webhook(&webhook).await?;
            Ok(ClaimNotice::Claimed(Box::new(webhook)))
        })?;
        Ok(refuses_nothing(outcome, "claim_notice"))
    }

    async fn record_delivery(
        &self,
        id: JobId,
        delivery: &Delivery,
        retry_at: Option<Timestamp>,
    ) -> StoreResult<()> {
        let outcome = transaction!(self, tx => {
            if let Some(mut webhook) = tx.webhook_for_update(id).await? {
                notices::apply_delivery(&mut webhook, delivery, retry_at);
                tx.put_webhook(&webhook).await?;
            }
            Ok(())
        })?;
        refuses_nothing(outcome, "record_delivery");
        Ok(())
    }
}

#[async_trait]
impl WorkerStore for PgStore {
    async fn set_phase(
        &self,
        token: &LeaseToken,
        phase: Phase,
    ) -> StoreResult<Result<Job, Rejected>> {
        let now = Timestamp::now();
        let op = WorkerOp::SetPhase {
            token: token.fencing_token,
            phase,
        };
        transaction!(self, tx => {
            let job = tx.job_for_update(token.job_id).await?;
            let transition = machine::apply_worker(&job, &op, now).map_err(TxAbort::Rejected)?;
            tx.write_transition(Some(&job), transition, now).await
        })
    }

    async fn record_checkpoint(
        &self,
        token: &LeaseToken,
        checkpoint: &Checkpoint,
        metadata: Option<&MediaMetadata>,
    ) -> StoreResult<Result<(), Rejected>> {
        let now = Timestamp::now();
        let id = token.job_id;
        let outcome = transaction!(self, tx => {
            let job = tx.job_for_update(id).await?;
            let write =
                records::record_checkpoint(&job, token, checkpoint).map_err(TxAbort::Rejected)?;
            if write.blob_refs {
                let before = tx.checkpoint(id, STORE_STEP).await?;
                tx.replace_blob_refs(id, before.as_ref(), Some(checkpoint)).await?;
            }
            tx.put_checkpoint(id, checkpoint).await?;
            if let Some(metadata) = metadata {
                tx.put_metadata(id, metadata).await?;
            }
            let mut job = write.job;
            tx.append_events(&mut job, write.events, now).await?;
            tx.put_job(Some(job.status), &job).await
        })?;
        if outcome.is_ok() {
            tracing::debug!(job_id = %id, step = %checkpoint.step, "checkpoint recorded");
        }
        Ok(outcome)
    }

    async fn record_step_event(
        &self,
        token: &LeaseToken,
        step: &str,
        event: StepEvent,
    ) -> StoreResult<Result<(), Rejected>> {
        self.leased_write(token, vec![event.into_event(step)]).await
    }

    async fn set_progress(
        &self,
        token: &LeaseToken,
        progress: &JobProgress,
    ) -> StoreResult<Result<(), Rejected>> {
        let record = codec::encode(progress)?;
        transaction!(self, tx => {
            // A share lock is enough: progress is informational, and the token is what matters.
            let Some(row) = tx
                .sql
                .query_opt(
                    "SELECT record FROM jobs WHERE id = $1 FOR SHARE",
                    &[&id_bytes(token.job_id)],
                )
                .await?
            else {
                return Err(TxAbort::Rejected(Rejected::NotFound(token.job_id)));
            };
            let job = decode_job(token.job_id, row.get(0))?;
            machine::check_lease(&job, token).map_err(TxAbort::Rejected)?;
            tx.sql
                .execute(
                    "INSERT INTO progress (job_id, record) VALUES ($1, $2)
                     ON CONFLICT (job_id) DO UPDATE SET record = EXCLUDED.record",
                    &[&id_bytes(token.job_id), &record],
                )
                .await?;
            Ok(())
        })
    }
}

impl JobLogSink for PgStore {
    /// Best effort and buffered; see `logs.rs`.
    fn append_log(&self, id: JobId, line: LogLine) {
        self.logs.append(id, line);
    }

    fn flush_logs(&self) {
        self.logs.flush_blocking();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;

    /// The event bound of the conformance suite's stores, as for sled's.
    const CONFORMANCE_EVENTS_MAX: u64 = 16;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_suite_passes_on_postgres() {
        let server = test_server::TestServer::start().await;
        let count = AtomicU64::new(0);
        let stores = Arc::new(std::sync::Mutex::new(Vec::new()));
        conformance::run_all(|| async {
            let index = count.fetch_add(1, Ordering::Relaxed);
            let uri = server.fresh_schema(&format!("conformance_{index}")).await;
            let store = PgStore::open(&uri)
                .await
                .expect("open the PostgreSQL store");
            store.set_events_max(CONFORMANCE_EVENTS_MAX);
            stores.lock().expect("lock").push(uri);
            store
        })
        .await;
        // Every schema the suite left behind is consistent, as sled's trees are.
        let uris = stores.lock().expect("lock").clone();
        assert!(uris.len() > 10, "the suite made {} stores", uris.len());
        for uri in uris {
            let store = PgStore::open(&uri).await.expect("reopen");
            if let Err(error) = store.check_consistency().await {
                panic!("{uri} after the conformance suite: {error}");
            }
        }
        server.cleanup().await;
    }

    fn request(key: &str) -> SubmitRequest {
        SubmitRequest {
            key: key.to_string(),
            source: format!("https://example.com/{key}.mp4"),
            workflow: "ingest".to_string(),
            reingest: false,
            priority: crate::model::job::PRIORITY_LIVE,
        }
    }

    // Guards the fleet's webhook rule: notifiers in eight processes claiming the due notices of
    // 20 finished jobs at once each claim a different one, and every notice is claimed exactly
    // once (the claim moves its due time ahead, SKIP LOCKED passes over one being claimed).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_notifiers_never_claim_the_same_notice() {
        let server = test_server::TestServer::start().await;
        let uri = server.fresh_schema("notifiers").await;
        let store = PgStore::open(&uri).await.expect("open");
        let jobs_total = 20;
        let mut hooks = Vec::new();
        for index in 0..jobs_total {
            let job = store
                .submit(&request(&format!("hooked-{index}")))
                .await
                .expect("submit")
                .job;
            hooks.push((job.id, format!("https://hooks.example.com/{index}")));
        }
        store.set_webhooks(&hooks).await.expect("set_webhooks");
        for (id, _) in &hooks {
            store.cancel(*id).await.expect("cancel").expect("allowed");
        }
        let now = Timestamp::now().plus_ms(1);
        let mut notifiers = Vec::new();
        for _ in 0..8 {
            let store = PgStore::open(&uri).await.expect("open");
            notifiers.push(tokio::spawn(async move {
                let mut claimed = Vec::new();
                loop {
                    match store.claim_notice(now, 600_000).await.expect("claim") {
                        ClaimNotice::Claimed(webhook) => claimed.push(webhook.job_id),
                        // Due but being claimed by another notifier: ask again.
                        ClaimNotice::Wait { until: Some(until) } if until <= now => {
                            tokio::task::yield_now().await;
                        }
                        ClaimNotice::Wait { .. } => return claimed,
                    }
                }
            }));
        }
        let mut claimed = Vec::new();
        for notifier in notifiers {
            claimed.extend(notifier.await.expect("notifier task"));
        }
        let distinct: BTreeSet<JobId> = claimed.iter().copied().collect();
        assert_eq!(claimed.len(), jobs_total, "{claimed:?}");
        assert_eq!(distinct.len(), jobs_total);
        store.check_consistency().await.expect("consistent");
        server.cleanup().await;
    }

    // Guards claiming across processes: eight claimers, each with a pool of its own (as eight
    // narra processes would have), take forty jobs and never the same one twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_claimers_never_share_a_job() {
        let server = test_server::TestServer::start().await;
        let uri = server.fresh_schema("claimers").await;
        let store = PgStore::open(&uri).await.expect("open");
        let jobs_total = 40;
        for index in 0..jobs_total {
            store
                .submit(&request(&format!("job-{index}")))
                .await
                .expect("submit");
        }
        let mut claimers = Vec::new();
        for claimer in 0..8 {
            let store = PgStore::open(&uri).await.expect("open");
            claimers.push(tokio::spawn(async move {
                let worker_id = WorkerId(format!("test:{claimer}:1"));
                let mut claimed = Vec::new();
                while let Some((job, _token)) = conformance::claim_next_as(&store, &worker_id).await
                {
                    claimed.push(job.id);
                }
                claimed
            }));
        }
        let mut claimed = Vec::new();
        for claimer in claimers {
            claimed.extend(claimer.await.expect("claimer task"));
        }
        let distinct: BTreeSet<JobId> = claimed.iter().copied().collect();
        assert_eq!(claimed.len(), jobs_total);
        assert_eq!(distinct.len(), jobs_total);
        store.check_consistency().await.expect("consistent");
        server.cleanup().await;
    }

    // Guards idempotent submission across processes: the same new key submitted at once by many
    // stores is one job (the losers of the key's unique index run their transaction again).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_submissions_of_one_key_make_one_job() {
        let server = test_server::TestServer::start().await;
        let uri = server.fresh_schema("submitters").await;
        let mut submitters = Vec::new();
        for _ in 0..6 {
            let store = PgStore::open(&uri).await.expect("open");
            submitters.push(tokio::spawn(async move {
                store.submit(&request("same")).await.expect("submit")
            }));
        }
        let mut ids = BTreeSet::new();
        let mut created = 0;
        for submitter in submitters {
            let submitted = submitter.await.expect("submitter task");
            ids.insert(submitted.job.id);
            if submitted.outcome == SubmitOutcome::Created {
                created += 1;
            }
        }
        assert_eq!(ids.len(), 1, "one job for the key");
        assert_eq!(created, 1, "one submission created it");
        server.cleanup().await;
    }

    // Guards the migrations: opening a store applies them once; a second open (or `narra
    // migrate`) applies nothing; a schema newer than this narra is refused, not used.
    #[tokio::test]
    async fn migrations_apply_once_and_a_newer_schema_is_refused() {
        let server = test_server::TestServer::start().await;
        let uri = server.fresh_schema("migrations").await;
        let store = PgStore::open(&uri).await.expect("open");
        assert!(store.migrate().await.expect("migrate").is_empty());
        let client = store.client().await.expect("client");
        let versions: Vec<i32> = client
            .query(
                "SELECT version FROM schema_migrations ORDER BY version",
                &[],
            )
            .await
            .expect("versions")
            .iter()
            .map(|row| row.get(0))
            .collect();
        let expected: Vec<i32> = schema::MIGRATIONS
            .iter()
            .map(|(version, _)| *version)
            .collect();
        assert_eq!(versions, expected);
        client
            .execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[&(schema::latest_version() + 1)],
            )
            .await
            .expect("a future migration");
        match PgStore::open(&uri).await {
            Err(StoreError::UnsupportedMigration { found, supported }) => {
                assert_eq!(
                    (found, supported),
                    (schema::latest_version() + 1, schema::latest_version())
                );
            }
            other => panic!("expected UnsupportedMigration, got {other:?}"),
        }
        server.cleanup().await;
    }

    // Guards the wake-up: a transaction that makes a job pending notifies `narra_jobs` at commit.
    #[tokio::test]
    async fn a_new_pending_job_notifies_the_jobs_channel() {
        let server = test_server::TestServer::start().await;
        let uri = server.fresh_schema("notify").await;
        let store = PgStore::open(&uri).await.expect("open");
        let (config, _, _) = parse_uri(&uri).expect("parse");
        let (client, mut connection) = config.connect(NoTls).await.expect("connect");
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(message)) = futures::StreamExt::next(&mut messages).await {
                if let tokio_postgres::AsyncMessage::Notification(notification) = message {
                    let _ = sender.send(notification.channel().to_string());
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {JOBS_CHANNEL}"))
            .await
            .expect("listen");
        store.submit(&request("wake")).await.expect("submit");
        let channel = tokio::time::timeout(std::time::Duration::from_secs(30), receiver.recv())
            .await
            .expect("a notification within 30 s")
            .expect("the listener is running");
        assert_eq!(channel, JOBS_CHANNEL);
        drop(client);
        driver.abort();
        server.cleanup().await;
    }

    // Guards waking idle workers through LISTEN/NOTIFY: a scheduler waiting for work (with a
    // timeout far beyond the test's patience) returns when another process submits a job, and
    // again when another process's running job ends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_wait_ends_when_another_process_submits_or_finishes_a_job() {
        let server = test_server::TestServer::start().await;
        let uri = server.fresh_schema("wakeup").await;
        let waiting = Arc::new(PgStore::open(&uri).await.expect("open"));
        let other = PgStore::open(&uri).await.expect("open");
        assert!(
            waiting
                .listener
                .listening(std::time::Duration::from_secs(30))
                .await,
            "the listener subscribes"
        );
        let patience = std::time::Duration::from_secs(60);
        let forever = std::time::Duration::from_secs(24 * 3600);

        let wait = tokio::spawn({
            let waiting = Arc::clone(&waiting);
            async move { waiting.wait_for_work(forever).await }
        });
        let submitted = other.submit(&request("wake")).await.expect("submit");
        tokio::time::timeout(patience, wait)
            .await
            .expect("the submission wakes the wait")
            .expect("wait task");

        let (_, token) = other
            .claim(submitted.job.id, &WorkerId("other:1".into()), 60_000)
            .await
            .expect("claim")
            .expect("claimable");
        // The claim made no job pending; a permit it may have left is used up here.
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(1),
            waiting.wait_for_work(forever),
        )
        .await;
        let wait = tokio::spawn({
            let waiting = Arc::clone(&waiting);
            async move { waiting.wait_for_work(forever).await }
        });
        other
            .complete(&token)
            .await
            .expect("complete")
            .expect("current token");
        tokio::time::timeout(patience, wait)
            .await
            .expect("a job that stops running wakes the wait")
            .expect("wait task");
        server.cleanup().await;
    }

    // Guards fault isolation on PostgreSQL (issue 6, as sled's test of the same name): garbage in
    // one job's record is an error naming the `jobs` table and that job wherever it is read, and
    // `check_consistency` reports it; `claim_next` passes over it and the other jobs still run.
    #[tokio::test]
    async fn a_corrupted_job_record_is_named_and_leaves_the_other_jobs_working() {
        let server = test_server::TestServer::start().await;
        let uri = server.fresh_schema("corrupt").await;
        let store = PgStore::open(&uri).await.expect("open");
        let corrupted = store.submit(&request("corrupted")).await.expect("submit");
        let healthy = store.submit(&request("healthy")).await.expect("submit");
        let corrupted_id = corrupted.job.id;
        let key_hex = codec::hex(&corrupted_id.to_bytes());
        let mut garbage = vec![codec::SCHEMA_VERSION];
        garbage.extend((0u8..61).map(|byte| byte.wrapping_mul(37) ^ 0xa5));
        store
            .client()
            .await
            .expect("client")
            .execute(
                "UPDATE jobs SET record = $1 WHERE id = $2",
                &[&garbage, &id_bytes(corrupted_id)],
            )
            .await
            .expect("corrupt the record");

        let names_the_job = |result: StoreResult<Option<Job>>| match result {
            Err(StoreError::Corrupt { tree, key, .. }) => {
                assert_eq!((tree, key.as_str()), (TABLE_JOBS, key_hex.as_str()));
            }
            other => panic!("expected Corrupt naming the job, got {other:?}"),
        };
        names_the_job(store.job(corrupted_id).await);
        names_the_job(store.job_by_key("corrupted").await);
        assert!(matches!(
            store.check_consistency().await,
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            store.cancel(corrupted_id).await,
            Err(StoreError::Corrupt { .. })
        ));
        let (_, token) = conformance::claim_next_as(&store, &WorkerId("test:1:1".into()))
            .await
            .expect("the healthy job is claimable");
        assert_eq!(token.job_id, healthy.job.id);
        let done = store
            .complete(&token)
            .await
            .expect("complete")
            .expect("current token");
        assert_eq!(done.status, Status::Succeeded);
        server.cleanup().await;
    }

    // Guards the literal `status = 0` of the claim queries and the `jobs_pending` index.
    #[test]
    fn pending_is_status_zero() {
        assert_eq!(status_column(Status::Pending), 0);
        assert!(schema::MIGRATIONS[0].1.contains("WHERE status = 0"));
    }

    #[test]
    fn pool_max_is_narras_and_the_rest_goes_to_tokio_postgres() {
        let (config, options, display) =
            parse_uri("postgres://narra:secret@127.0.0.1:5433/narra?pool_max=4&connect_timeout=3")
                .expect("parse");
        assert_eq!(options.pool_max, 4);
        assert_eq!(config.get_dbname(), Some("narra"));
        assert_eq!(
            config.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(3))
        );
        assert!(!display.contains("secret"), "{display}");
        assert!(parse_uri("postgres://h/db?pool_max=0").is_err());
    }

    // Guards the fleet against a stopped process: sessions end when idle inside a transaction
    // (so a SIGSTOPped worker cannot hold the claim lock), unless the URI sets its own timeout; the
    // URI's other server options are kept, several of them too (a space, `%20`, separates them).
    #[test]
    fn sessions_idle_in_a_transaction_are_ended_unless_the_uri_says_otherwise() {
        let (config, _, _) =
            parse_uri("postgres://h/db?options=-csearch_path%3Dingest").expect("parse");
        assert_eq!(
            config.get_options(),
            Some("-csearch_path=ingest -c idle_in_transaction_session_timeout=10000")
        );
        let (config, _, _) = parse_uri(
            "postgres://h/db?options=-csearch_path%3Dingest%20-cwork_mem%3D8MB&pool_max=2",
        )
        .expect("parse");
        assert_eq!(
            config.get_options(),
            Some(
                "-csearch_path=ingest -cwork_mem=8MB -c idle_in_transaction_session_timeout=10000"
            )
        );
        let (config, _, _) =
            parse_uri("postgres://h/db?options=-cidle_in_transaction_session_timeout%3D0")
                .expect("parse");
        assert_eq!(
            config.get_options(),
            Some("-cidle_in_transaction_session_timeout=0")
        );
    }
}
