//! How a PostgreSQL store's records sit in its rows: the tables' names, the columns a job's row
//! keeps beside its record (what queries filter and sort on), and the checks a record gets right
//! after it is read (its id, its invariants). Nothing here runs a statement.

use tokio_postgres::Row;

use crate::model::job::{Event, EventSummary, Job, JobId, Status};
use crate::model::sources::source_host;
use crate::store::{StoreError, StoreResult, codec};

pub(super) const TABLE_JOBS: &str = "jobs";

pub(super) const TABLE_CHECKPOINTS: &str = "checkpoints";

pub(super) const TABLE_EVENTS: &str = "events";

pub(super) const TABLE_EVENT_SUMMARIES: &str = "event_summaries";

pub(super) const TABLE_METADATA: &str = "metadata";

pub(super) const TABLE_PROGRESS: &str = "progress";

pub(super) const TABLE_LOGS: &str = "logs";

pub(super) const TABLE_INCIDENTS: &str = "incidents";

pub(super) const TABLE_BACKFILLS: &str = "backfills";

pub(super) const TABLE_HOSTS: &str = "hosts";

pub(super) const TABLE_PRUNED: &str = "pruned";

pub(super) const TABLE_WEBHOOKS: &str = "webhooks";

/// The columns of a job's row besides its record.
pub(super) struct JobColumns<'a> {
    pub(super) key: &'a str,
    pub(super) status: i16,
    pub(super) priority: i32,
    pub(super) not_before: Option<i64>,
    pub(super) host: String,
}

impl JobColumns<'_> {
    pub(super) fn of(job: &Job) -> JobColumns<'_> {
        JobColumns {
            key: &job.key,
            status: status_column(job.status),
            priority: job.priority,
            not_before: job.not_before.map(|at| at.0),
            host: source_host(&job.source),
        }
    }
}

pub(super) fn status_column(status: Status) -> i16 {
    i16::from(status.index_byte())
}

pub(super) fn id_bytes(id: JobId) -> Vec<u8> {
    id.to_bytes().to_vec()
}

pub(super) fn seq_column(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| StoreError::Encode(format!("sequence {seq} is past i64")))
}

pub(super) fn decode_in<T: serde::de::DeserializeOwned>(
    table: &'static str,
    id: JobId,
    bytes: &[u8],
) -> StoreResult<T> {
    codec::decode(table, &id.to_bytes(), bytes)
}

/// Decodes each row's first column as a record of the job `id` in `table`.
pub(super) fn decode_records<T: serde::de::DeserializeOwned>(
    rows: &[Row],
    table: &'static str,
    id: JobId,
) -> StoreResult<Vec<T>> {
    rows.iter()
        .map(|row| decode_in(table, id, row.get(0)))
        .collect()
}

/// The job `id`'s event history is corrupt: an event is missing, or not the one its row says.
pub(super) fn corrupt_events(id: JobId, reason: String) -> StoreError {
    StoreError::corrupt(TABLE_EVENTS, &id.to_bytes(), reason)
}

/// Decodes a row of `events` (`seq, record`) of the job `id`, and checks the record is the row's.
pub(super) fn decode_event_row(id: JobId, row: &Row) -> StoreResult<Event> {
    let seq: i64 = row.get(0);
    let event: Event = decode_in(TABLE_EVENTS, id, row.get(1))?;
    if i64::try_from(event.seq).ok() != Some(seq) {
        let reason = format!("row {seq} holds event seq {}", event.seq);
        return Err(corrupt_events(id, reason));
    }
    Ok(event)
}

/// Decodes a job and checks it right after reading it back: its id and its invariants.
pub(super) fn decode_job(id: JobId, bytes: &[u8]) -> StoreResult<Job> {
    let key = id.to_bytes();
    let job = codec::decode_job(TABLE_JOBS, &key, bytes)?;
    if job.id != id {
        return Err(StoreError::corrupt(
            TABLE_JOBS,
            &key,
            format!("record holds job {}", job.id),
        ));
    }
    job.invariants_hold()
        .map_err(|reason| StoreError::corrupt(TABLE_JOBS, &key, reason))?;
    Ok(job)
}

/// Decodes a row whose first column is the job id and whose last is the record.
pub(super) fn decode_job_row(row: &Row) -> StoreResult<Job> {
    let id = job_id_in(TABLE_JOBS, row.get(0))?;
    decode_job(id, row.get(row.len() - 1))
}

pub(super) fn decode_summary(id: JobId, bytes: &[u8]) -> StoreResult<EventSummary> {
    codec::decode_keyed(TABLE_EVENT_SUMMARIES, &id.to_bytes(), bytes)
}

pub(super) fn job_id_in(table: &'static str, bytes: &[u8]) -> StoreResult<JobId> {
    let bytes = <[u8; 16]>::try_from(bytes)
        .map_err(|_| StoreError::corrupt(table, bytes, "expected a 16-byte job id".to_string()))?;
    Ok(JobId::from_bytes(bytes))
}
