//! Bounded event histories: a job holds at most the store's `events_max` events; appending past
//! it folds the oldest into the job's `EventSummary` (`model::history::fold`) and removes them, in
//! the transaction of the append, so the summary and the events never disagree and nothing is
//! folded twice or lost.
//!
//! A compaction leaves `records::events_kept` events (three quarters of the bound), so a long history is
//! compacted once per quarter-bound appends, not on every one. Each job's events are then
//! `summary.events_compacted..events_next`, numbered with no gap (`check_consistency`).

use super::{
    SledStore, TREE_EVENT_SUMMARIES, TREE_EVENTS, Tx, TxResult, codec, corrupt, encode_in_tx,
    seq_key, store_abort,
};
use crate::model::history;
use crate::model::job::{Event, EventSummary, Job, JobId};
use crate::store::StoreResult;

use crate::model::records;

/// Decodes a summary and checks it right after reading it back: it is the summary of the job its
/// key names.
fn decode_summary(key: &[u8], bytes: &[u8]) -> StoreResult<EventSummary> {
    let summary: EventSummary = codec::decode(TREE_EVENT_SUMMARIES, key, bytes)?;
    if summary.job_id.to_bytes() != key {
        return Err(corrupt(
            TREE_EVENT_SUMMARIES,
            key,
            format!("record holds the summary of job {}", summary.job_id),
        ));
    }
    Ok(summary)
}

impl Tx<'_> {
    fn event_summary(&self, id: JobId) -> TxResult<Option<EventSummary>> {
        let key = id.to_bytes();
        match self.event_summaries.get(key)? {
            None => Ok(None),
            Some(bytes) => decode_summary(&key, &bytes).map(Some).map_err(store_abort),
        }
    }

    /// Folds the job's oldest events into its summary while it holds more than the bound. Cheap
    /// for a job that never had that many events: it reads nothing.
    pub(super) fn bound_history(&self, job: &Job) -> TxResult<()> {
        if !records::may_exceed(job.events_next, self.events_max) {
            return Ok(());
        }
        let summary = self.event_summary(job.id)?;
        let compacted = summary
            .as_ref()
            .map_or(0, |summary| summary.events_compacted);
        let Some(fold_until) = records::fold_until(job.events_next, compacted, self.events_max)
        else {
            return Ok(());
        };
        let mut summary = summary.unwrap_or_else(|| history::empty(job.id));
        for seq in compacted..fold_until {
            let key = seq_key(job.id, seq);
            let Some(bytes) = self.events.get(key)? else {
                return Err(store_abort(corrupt(
                    TREE_EVENTS,
                    &key,
                    format!(
                        "event {seq} of job {} is missing from its history (summary up to {compacted})",
                        job.id
                    ),
                )));
            };
            let event: Event = codec::decode(TREE_EVENTS, &key, &bytes).map_err(store_abort)?;
            if event.seq != seq {
                return Err(store_abort(corrupt(
                    TREE_EVENTS,
                    &key,
                    format!("record holds event seq {}", event.seq),
                )));
            }
            history::fold(&mut summary, &event);
            self.events.remove(&key[..])?;
        }
        if summary.events_compacted != fold_until {
            return Err(store_abort(corrupt(
                TREE_EVENT_SUMMARIES,
                &job.id.to_bytes(),
                format!(
                    "compaction folded events up to {} instead of {fold_until}",
                    summary.events_compacted
                ),
            )));
        }
        self.event_summaries
            .insert(&job.id.to_bytes()[..], encode_in_tx(&summary)?)?;
        Ok(())
    }

    /// Removes a job's whole history: the events it holds and its summary (`delete`, `prune`).
    pub(super) fn remove_history(&self, job: &Job) -> TxResult<()> {
        let compacted = self
            .event_summary(job.id)?
            .map_or(0, |summary| summary.events_compacted);
        for seq in compacted..job.events_next {
            self.events.remove(&seq_key(job.id, seq)[..])?;
        }
        self.event_summaries.remove(&job.id.to_bytes()[..])?;
        Ok(())
    }
}

impl SledStore {
    /// Sets the most events a job holds (at least 1): `store::EVENTS_MAX` unless a test, or
    /// `NARRA_EVENTS_MAX`, asks for less. Jobs above a lowered bound are compacted at their next
    /// append.
    pub fn set_events_max(&self, events_max: u64) {
        self.events_max
            .store(events_max.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    pub(super) fn read_event_summary(&self, id: JobId) -> StoreResult<Option<EventSummary>> {
        let key = id.to_bytes();
        self.event_summaries
            .get(key)?
            .map(|bytes| decode_summary(&key, &bytes))
            .transpose()
    }

    /// The number of the job's first event still held.
    pub(super) fn events_compacted(&self, job: &Job) -> StoreResult<u64> {
        Ok(self
            .read_event_summary(job.id)?
            .map_or(0, |summary| summary.events_compacted))
    }

    /// Every summary decodes, is its key's, belongs to a job, and folded no more events than the
    /// job has. (That no event below a summary's `events_compacted` is left is checked with the
    /// job's events.)
    pub(super) fn check_event_summaries(&self) -> StoreResult<()> {
        for entry in self.event_summaries.iter() {
            let (key, bytes) = entry?;
            let summary = decode_summary(&key, &bytes)?;
            let Some(job) = self.read_job(summary.job_id)? else {
                return Err(corrupt(
                    TREE_EVENT_SUMMARIES,
                    &key,
                    "summary of a job that does not exist".to_string(),
                ));
            };
            if summary.events_compacted > job.events_next {
                return Err(corrupt(
                    TREE_EVENT_SUMMARIES,
                    &key,
                    format!(
                        "{} events compacted but job {} has only {}",
                        summary.events_compacted, job.id, job.events_next
                    ),
                ));
            }
        }
        Ok(())
    }
}
