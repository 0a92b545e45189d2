//! `check_consistency` on PostgreSQL: the tables read against each other (`model::consistency`
//! holds the rules every store shares; the columns beside a record are this store's own). Reads
//! every record: for tests and `narra doctor`, never the hot path.

use std::collections::BTreeSet;

use super::PgStore;
use super::rows::{
    JobColumns, TABLE_CHECKPOINTS, TABLE_JOBS, TABLE_WEBHOOKS, corrupt_events, decode_in,
    decode_job_row, decode_summary, id_bytes, job_id_in,
};
use crate::model::consistency::{EventSeqs, Mismatch};
use crate::model::job::{Checkpoint, JobId, Webhook};
use crate::model::records::STORE_STEP;
use crate::model::{consistency, notices};
use crate::store::{JobReader, StoreError, StoreResult};

impl PgStore {
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
                return Err(StoreError::corrupt(
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
                let reason = format!(
                    "events {seqs:?} but the summary ends at {compacted} and events_next is {}",
                    job.events_next
                );
                return Err(corrupt_events(job.id, reason));
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
        let tombstones = self.pruned_jobs().await?;
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
                return Err(StoreError::corrupt(
                    "blob_refs",
                    blob.as_bytes(),
                    format!("reference of job {id} no store checkpoint makes"),
                ));
            }
            Some(Mismatch::Missing((blob, id))) => {
                return Err(StoreError::corrupt(
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
                return Err(StoreError::corrupt(
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
}
