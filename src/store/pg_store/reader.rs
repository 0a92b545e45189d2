//! `JobReader` on PostgreSQL: each read one statement on a pooled connection, outside any
//! transaction; and [`record_of`], the read of one record that transactions make too. Reads only.

use std::sync::atomic::Ordering;

use async_trait::async_trait;
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row};

use super::PgStore;
use super::rows::{
    TABLE_BACKFILLS, TABLE_CHECKPOINTS, TABLE_HOSTS, TABLE_INCIDENTS, TABLE_LOGS, TABLE_METADATA,
    TABLE_PROGRESS, TABLE_PRUNED, decode_event_row, decode_in, decode_job, decode_job_row,
    decode_summary, id_bytes, job_id_in, status_column,
};
use crate::model::job::{
    Backfill, BackfillId, Checkpoint, Event, EventSummary, HostState, Incident, Job, JobId,
    JobProgress, LogLine, MediaMetadata, PrunedJob,
};
use crate::model::records;
use crate::store::{JobFilter, JobReader, StoreError, StoreResult, codec};

/// The record the query `sql` finds for the job `id` (its one parameter), decoded by `decode`, on
/// `client`: a pooled connection or a transaction, whose caller keeps its own error type (a
/// transaction tells a conflict from other failures).
pub(super) async fn record_of<T, E>(
    client: &impl GenericClient,
    sql: &str,
    id: JobId,
    decode: impl FnOnce(&[u8]) -> StoreResult<T>,
) -> Result<Option<T>, E>
where
    E: From<tokio_postgres::Error> + From<StoreError>,
{
    match client.query_opt(sql, &[&id_bytes(id)]).await? {
        Some(row) => Ok(Some(decode(row.get(0))?)),
        None => Ok(None),
    }
}

impl PgStore {
    pub(super) async fn read_job(&self, id: JobId) -> StoreResult<Option<Job>> {
        self.record_of("SELECT record FROM jobs WHERE id = $1", id, |record| {
            decode_job(id, record)
        })
        .await
    }

    /// The records of `table` the query `sql` finds for the job `id` (its one parameter), on a
    /// pooled connection.
    pub(super) async fn records_of<T: serde::de::DeserializeOwned>(
        &self,
        sql: &str,
        table: &'static str,
        id: JobId,
    ) -> StoreResult<Vec<T>> {
        self.rows_read(sql, &[&id_bytes(id)], |row| {
            decode_in(table, id, row.get(0))
        })
        .await
    }

    /// Every row the query `sql` finds with `params`, each read by `read`, on a pooled connection.
    pub(super) async fn rows_read<T>(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        read: impl FnMut(&Row) -> StoreResult<T>,
    ) -> StoreResult<Vec<T>> {
        let client = self.client().await?;
        client.query(sql, params).await?.iter().map(read).collect()
    }

    /// The record `table` keeps for the job `id` (its one row's `record`), on a pooled connection.
    pub(super) async fn record_in<T: serde::de::DeserializeOwned>(
        &self,
        table: &'static str,
        id: JobId,
    ) -> StoreResult<Option<T>> {
        self.record_of(
            &format!("SELECT record FROM {table} WHERE job_id = $1"),
            id,
            |record| decode_in(table, id, record),
        )
        .await
    }

    /// The record the query `sql` finds for the job `id` (its one parameter), on a pooled
    /// connection, decoded by `decode`.
    pub(super) async fn record_of<T>(
        &self,
        sql: &str,
        id: JobId,
        decode: impl FnOnce(&[u8]) -> StoreResult<T>,
    ) -> StoreResult<Option<T>> {
        let client = self.client().await?;
        record_of(&**client, sql, id, decode).await
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
        match filter.status {
            Some(status) => {
                self.rows_read(
                    "SELECT id, record FROM jobs WHERE status = $1 ORDER BY id DESC LIMIT $2",
                    &[&status_column(status), &limit],
                    decode_job_row,
                )
                .await
            }
            None => {
                self.rows_read(
                    "SELECT id, record FROM jobs ORDER BY id DESC LIMIT $1",
                    &[&limit],
                    decode_job_row,
                )
                .await
            }
        }
    }

    async fn checkpoints(&self, id: JobId) -> StoreResult<Vec<Checkpoint>> {
        let mut checkpoints = self
            .records_of(
                "SELECT record FROM checkpoints WHERE job_id = $1",
                TABLE_CHECKPOINTS,
                id,
            )
            .await?;
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
        self.rows_read(
            "SELECT seq, record FROM events WHERE job_id = $1 ORDER BY seq",
            &[&id_bytes(id)],
            |row| decode_event_row(id, row),
        )
        .await
    }

    async fn event_summary(&self, id: JobId) -> StoreResult<Option<EventSummary>> {
        self.record_of(
            "SELECT record FROM event_summaries WHERE job_id = $1",
            id,
            |record| decode_summary(id, record),
        )
        .await
    }

    fn events_max(&self) -> u64 {
        self.events_max.load(Ordering::Relaxed)
    }

    async fn metadata(&self, id: JobId) -> StoreResult<Option<MediaMetadata>> {
        self.record_in(TABLE_METADATA, id).await
    }

    async fn logs(&self, id: JobId) -> StoreResult<Vec<LogLine>> {
        // Lines this process appended are written first, so a reader sees its own lines.
        self.logs.drain().await;
        self.records_of(
            "SELECT record FROM logs WHERE job_id = $1 ORDER BY seq",
            TABLE_LOGS,
            id,
        )
        .await
    }

    async fn progress(&self, id: JobId) -> StoreResult<Option<JobProgress>> {
        self.record_in(TABLE_PROGRESS, id).await
    }

    async fn jobs_referencing(&self, key: &str) -> StoreResult<Vec<JobId>> {
        self.rows_read(
            "SELECT job_id FROM blob_refs WHERE blob = $1 ORDER BY job_id",
            &[&key],
            |row| job_id_in("blob_refs", row.get(0)),
        )
        .await
    }

    async fn blob_refs(&self) -> StoreResult<Vec<(String, JobId)>> {
        self.rows_read(
            "SELECT blob, job_id FROM blob_refs ORDER BY blob, job_id",
            &[],
            |row| Ok((row.get(0), job_id_in("blob_refs", row.get(1))?)),
        )
        .await
    }

    async fn incidents(&self) -> StoreResult<Vec<Incident>> {
        self.rows_read(
            "SELECT seq, record FROM incidents ORDER BY seq",
            &[],
            |row| {
                let seq: i64 = row.get(0);
                let key = seq.to_be_bytes();
                let incident: Incident = codec::decode(TABLE_INCIDENTS, &key, row.get(1))?;
                if i64::try_from(incident.seq).ok() != Some(seq) {
                    return Err(StoreError::corrupt(
                        TABLE_INCIDENTS,
                        &key,
                        format!("record holds incident seq {}", incident.seq),
                    ));
                }
                Ok(incident)
            },
        )
        .await
    }

    async fn pruned_job(&self, id: JobId) -> StoreResult<Option<PrunedJob>> {
        self.record_in(TABLE_PRUNED, id).await
    }

    async fn pruned_jobs(&self) -> StoreResult<Vec<PrunedJob>> {
        self.rows_read(
            "SELECT job_id, record FROM pruned ORDER BY job_id",
            &[],
            |row| {
                let id = job_id_in(TABLE_PRUNED, row.get(0))?;
                codec::decode_keyed(TABLE_PRUNED, &id.to_bytes(), row.get(1))
            },
        )
        .await
    }

    async fn backfills(&self) -> StoreResult<Vec<Backfill>> {
        self.rows_read("SELECT id, record FROM backfills ORDER BY id", &[], |row| {
            codec::decode_keyed(TABLE_BACKFILLS, row.get(0), row.get(1))
        })
        .await
    }

    async fn backfill_jobs(&self, id: BackfillId) -> StoreResult<Vec<JobId>> {
        self.rows_read(
            "SELECT job_id FROM backfill_jobs WHERE backfill_id = $1 ORDER BY job_id",
            &[&id.to_bytes().to_vec()],
            |row| job_id_in("backfill_jobs", row.get(0)),
        )
        .await
    }

    async fn hosts(&self) -> StoreResult<Vec<HostState>> {
        self.rows_read("SELECT host, record FROM hosts ORDER BY host", &[], |row| {
            let host: &str = row.get(0);
            codec::decode(TABLE_HOSTS, host.as_bytes(), row.get(1))
        })
        .await
    }
}
