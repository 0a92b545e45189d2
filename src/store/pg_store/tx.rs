//! One SQL transaction and the statements every operation shares: locking and reading a job,
//! writing a transition (the job's row and columns, its events, the `NOTIFY` that wakes idle
//! schedulers, the webhook notice of a terminal one), checkpoints, metadata records, blob
//! references, webhook records and host states; and what a fenced write tells the attribution
//! rule. Nothing here decides what to write: `model::` does, and the operations call these.

use super::rows::decode_records;
use tokio_postgres::Transaction;
use tokio_postgres::error::SqlState;

use super::rows::{
    JobColumns, TABLE_CHECKPOINTS, TABLE_HOSTS, TABLE_JOBS, TABLE_WEBHOOKS, decode_in, decode_job,
    decode_job_row, id_bytes, seq_column, status_column,
};
use super::{JOBS_CHANNEL, PgStore, SCHEDULE_LOCK};
use crate::model::attribution::Holding;
use crate::model::job::{
    Checkpoint, EventKind, HostState, Job, JobId, MediaMetadata, Status, Timestamp, Webhook,
};
use crate::model::machine::{Rejected, Transition};
use crate::model::records::referenced_blobs;
use crate::model::{attribution, notices, records};
use crate::store::{StoreError, codec};

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

pub(super) type TxResult<T> = Result<T, TxAbort>;

/// One transaction, with the writes every operation shares.
pub(crate) struct Tx<'a> {
    pub(super) sql: &'a Transaction<'a>,
    /// The store's bound on a job's events, for `append_events`.
    pub(super) events_max: u64,
}

impl Tx<'_> {
    /// Every running job. A record that does not decode is named and passed over, as a claim
    /// passes over a corrupt pending job.
    pub(super) async fn running(&self) -> TxResult<Vec<Job>> {
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
    pub(super) async fn join_held(&self, holding: &Holding) -> TxResult<()> {
        for &id in &holding.jobs {
            let held = self.job_for_update(id).await?;
            if let Some(joined) = attribution::joined(&held) {
                self.put_job(Some(held.status), &joined).await?;
            }
        }
        Ok(())
    }

    /// Takes the schedule's advisory lock (per schema) until the transaction ends: a host's limits
    /// are checked and its state written by one claimer at a time, in every process.
    pub(super) async fn lock_schedule(&self) -> TxResult<()> {
        self.sql
            .execute(
                "SELECT pg_advisory_xact_lock(hashtext(current_schema()), $1)",
                &[&SCHEDULE_LOCK],
            )
            .await?;
        Ok(())
    }

    /// Reads and locks the job's row; a job that does not exist is refused as not found.
    pub(super) async fn job_for_update(&self, id: JobId) -> TxResult<Job> {
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

    pub(super) async fn checkpoint(&self, id: JobId, step: &str) -> TxResult<Option<Checkpoint>> {
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

    pub(super) async fn all_checkpoints(&self, id: JobId) -> TxResult<Vec<Checkpoint>> {
        let rows = self
            .sql
            .query(
                "SELECT record FROM checkpoints WHERE job_id = $1 ORDER BY step",
                &[&id_bytes(id)],
            )
            .await?;
        Ok(decode_records(&rows, TABLE_CHECKPOINTS, id)?)
    }

    pub(super) async fn put_checkpoint(&self, id: JobId, checkpoint: &Checkpoint) -> TxResult<()> {
        self.sql
            .execute(
                "INSERT INTO checkpoints (job_id, step, record) VALUES ($1, $2, $3)
                 ON CONFLICT (job_id, step) DO UPDATE SET record = EXCLUDED.record",
                &[&id_bytes(id), &checkpoint.step, &codec::encode(checkpoint)?],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn put_metadata(&self, id: JobId, metadata: &MediaMetadata) -> TxResult<()> {
        self.put_record(
            "INSERT INTO metadata (job_id, record) VALUES ($1, $2)
             ON CONFLICT (job_id) DO UPDATE SET record = EXCLUDED.record",
            id,
            metadata,
        )
        .await
    }

    /// Moves the job's blob references from what `before` names to what `after` names.
    pub(super) async fn replace_blob_refs(
        &self,
        id: JobId,
        before: Option<&Checkpoint>,
        after: Option<&Checkpoint>,
    ) -> TxResult<()> {
        let removed: Vec<&str> = before.into_iter().flat_map(referenced_blobs).collect();
        if !removed.is_empty() {
            self.sql
                .execute(
                    "DELETE FROM blob_refs WHERE job_id = $1 AND blob = ANY($2)",
                    &[&id_bytes(id), &removed],
                )
                .await?;
        }
        let added: Vec<&str> = after.into_iter().flat_map(referenced_blobs).collect();
        self.insert_blob_refs(id, &added).await
    }

    /// Adds references of the job `id` to `blobs` (those it has already stay).
    pub(super) async fn insert_blob_refs(&self, id: JobId, blobs: &[&str]) -> TxResult<()> {
        if !blobs.is_empty() {
            self.sql
                .execute(
                    "INSERT INTO blob_refs (blob, job_id) SELECT unnest($1::text[]), $2
                     ON CONFLICT DO NOTHING",
                    &[&blobs, &id_bytes(id)],
                )
                .await?;
        }
        Ok(())
    }

    /// Writes `record` as the job `id`'s row of the table `sql` inserts into (`$1` the job id,
    /// `$2` the record).
    pub(super) async fn put_record(
        &self,
        sql: &str,
        id: JobId,
        record: &impl serde::Serialize,
    ) -> TxResult<()> {
        self.sql
            .execute(sql, &[&id_bytes(id), &codec::encode(record)?])
            .await?;
        Ok(())
    }

    /// Writes a transition's job and appends its events; `before` is the job as it was read.
    pub(super) async fn write_transition(
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
    pub(super) async fn append_events(
        &self,
        job: &mut Job,
        kinds: Vec<EventKind>,
        now: Timestamp,
    ) -> TxResult<()> {
        let events = records::number_events(job, kinds, now).map_err(|exhausted| {
            StoreError::corrupt(TABLE_JOBS, &job.id.to_bytes(), exhausted.to_string())
        })?;
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

    /// Writes the job's row. A job that breaks its invariants is a bug in the machine or the
    /// store; it is refused here rather than written. A job that becomes pending wakes idle
    /// workers (`NOTIFY`, delivered at commit).
    pub(super) async fn put_job(&self, status_before: Option<Status>, job: &Job) -> TxResult<()> {
        if let Err(reason) = job.invariants_hold() {
            return Err(StoreError::corrupt(
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

    pub(super) async fn webhook_for_update(&self, id: JobId) -> TxResult<Option<Webhook>> {
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
    pub(super) async fn put_webhook(&self, webhook: &Webhook) -> TxResult<()> {
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

    /// Removes the job's row and every record hanging off it but its blob references (the caller
    /// decides about those): its log lines and progress first, which have no foreign key.
    pub(super) async fn remove_job(&self, id: JobId) -> TxResult<()> {
        self.sql
            .execute("DELETE FROM logs WHERE job_id = $1", &[&id_bytes(id)])
            .await?;
        self.sql
            .execute("DELETE FROM progress WHERE job_id = $1", &[&id_bytes(id)])
            .await?;
        // checkpoints, events, event_summaries and metadata go with the row (ON DELETE CASCADE).
        self.sql
            .execute("DELETE FROM jobs WHERE id = $1", &[&id_bytes(id)])
            .await?;
        Ok(())
    }

    pub(super) async fn host_state(&self, host: &str) -> TxResult<Option<HostState>> {
        Ok(self
            .sql
            .query_opt("SELECT record FROM hosts WHERE host = $1", &[&host])
            .await?
            .map(|row| codec::decode(TABLE_HOSTS, host.as_bytes(), row.get(0)))
            .transpose()?)
    }

    pub(super) async fn put_host_state(&self, state: &HostState) -> TxResult<()> {
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

impl PgStore {
    /// A write presenting `fencing_token` for job `id` was fenced. If a takeover took the job from
    /// that lease, its holder lived: the takeover's provisional charge is cleared
    /// (`attribution::holder_returned`). Best effort, outside `transaction!` (which calls this):
    /// a failure is logged, and the charge is then settled as if the holder had not come back.
    pub(super) async fn note_fenced(&self, id: JobId, fencing_token: u64) {
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
}
