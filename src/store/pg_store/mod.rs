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
//!
//! The files: `open.rs` (the pool, migrations through `schema.rs`), `rows.rs` (tables, columns,
//! decoding), `tx.rs` (a transaction's shared statements), `compaction.rs`, `claims.rs`,
//! `consistency.rs`, one file per trait (`reader.rs`, `orchestrator.rs`, `maintenance.rs`,
//! `webhooks.rs`, `worker.rs`, `logs.rs`), `import.rs`, `listen.rs`, `test_server.rs`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use deadpool_postgres::Pool;

use crate::store::{StoreError, StoreResult};

/// Runs `$body` (an expression that may use `?` and `.await`, with `$tx: Tx` in scope) as one
/// transaction, committed when the body returns `Ok`, and run again from the start when it loses a
/// race. Evaluates to `StoreResult<Result<T, Rejected>>`: a `Rejected` abort is the inner error,
/// with nothing written. Usable in any module of this store: it names what it needs by path.
macro_rules! transaction {
    ($store:expr, $tx:ident => $body:expr) => {{
        use $crate::store::pg_store::tx::{Tx, TxAbort};
        let store: &$crate::store::pg_store::PgStore = $store;
        let mut attempt: u32 = 1;
        loop {
            let mut client = store.client().await?;
            let sql_transaction = client.transaction().await?;
            let outcome = {
                let $tx = Tx {
                    sql: &sql_transaction,
                    events_max: store
                        .events_max
                        .load(std::sync::atomic::Ordering::Relaxed),
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
                Ok(value) => break Ok::<_, $crate::store::StoreError>(Ok(value)),
                Err(TxAbort::Rejected(rejected)) => {
                    if let $crate::model::machine::Rejected::Fenced {
                        job_id, presented, ..
                    } = &rejected
                    {
                        store.note_fenced(*job_id, *presented).await;
                    }
                    break Ok(Err(rejected));
                }
                Err(TxAbort::Conflict(error))
                    if attempt < $crate::store::pg_store::TRANSACTION_ATTEMPTS_MAX =>
                {
                    tracing::debug!(%error, attempt, "transaction lost a race; running it again");
                    attempt += 1;
                }
                Err(TxAbort::Conflict(error)) => {
                    break Err($crate::store::StoreError::Postgres(error));
                }
                Err(TxAbort::Store(error)) => break Err(error),
            }
        }
    }};
}

mod claims;
mod compaction;
mod consistency;
mod import;
mod listen;
mod logs;
mod maintenance;
mod open;
mod orchestrator;
mod reader;
mod rows;
pub mod schema;
#[doc(hidden)]
pub mod test_server;
#[cfg(test)]
mod tests;
mod tx;
mod webhooks;
mod worker;

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

/// The second key of the advisory locks (the first is the schema's name, hashed).
pub(crate) const SCHEMA_LOCK: i32 = 1;

const SCHEDULE_LOCK: i32 = 2;

/// The channel a transaction that makes a job pending notifies.
pub const JOBS_CHANNEL: &str = "narra_jobs";

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
