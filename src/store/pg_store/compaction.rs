//! Bounded event histories on PostgreSQL: appending past the store's `events_max` folds the oldest
//! events into the job's summary (`model::history::fold`) and deletes them, in the append's
//! transaction, to the point `model::records::fold_until` names (the same as sled's).

use super::reader::record_of;
use super::rows::{
    TABLE_EVENT_SUMMARIES, corrupt_events, decode_event_row, decode_summary, id_bytes, seq_column,
};
use super::tx::{Tx, TxResult};
use crate::model::job::{Event, EventSummary, Job, JobId};
use crate::model::records;
use crate::store::{StoreError, StoreResult};

impl Tx<'_> {
    /// Folds the job's oldest events into its summary while it holds more than the bound (as
    /// sled's `compaction.rs` does, to the same point).
    pub(super) async fn bound_history(&self, job: &Job) -> TxResult<()> {
        if !records::may_exceed(job.events_next, self.events_max) {
            return Ok(());
        }
        let summary = self.event_summary(job.id).await?;
        let Some(mut compaction) =
            records::compaction(job.id, job.events_next, summary, self.events_max)
        else {
            return Ok(());
        };
        let rows = self
            .sql
            .query(
                "DELETE FROM events WHERE job_id = $1 AND seq < $2 RETURNING seq, record",
                &[&id_bytes(job.id), &seq_column(compaction.until)?],
            )
            .await?;
        let mut events = rows
            .iter()
            .map(|row| decode_event_row(job.id, row))
            .collect::<StoreResult<Vec<Event>>>()?;
        events.sort_by_key(|event| event.seq);
        for (expected, event) in (compaction.from..compaction.until).zip(&events) {
            if event.seq != expected {
                let reason = format!(
                    "event {expected} of job {} is missing from its history",
                    job.id
                );
                return Err(corrupt_events(job.id, reason).into());
            }
            compaction.fold(event);
        }
        let summary = compaction.finish().map_err(|reason| {
            StoreError::corrupt(TABLE_EVENT_SUMMARIES, &job.id.to_bytes(), reason)
        })?;
        self.put_record(
            "INSERT INTO event_summaries (job_id, record) VALUES ($1, $2)
             ON CONFLICT (job_id) DO UPDATE SET record = EXCLUDED.record",
            job.id,
            &summary,
        )
        .await
    }

    pub(super) async fn event_summary(&self, id: JobId) -> TxResult<Option<EventSummary>> {
        record_of(
            self.sql,
            "SELECT record FROM event_summaries WHERE job_id = $1",
            id,
            |record| decode_summary(id, record),
        )
        .await
    }
}
