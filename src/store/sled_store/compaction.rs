//! Bounded event histories: a job holds at most the store's `events_max` events; appending past
//! it folds the oldest into the job's `EventSummary` (`model::history::fold`) and removes them, in
//! the transaction of the append, so the summary and the events never disagree and nothing is
//! folded twice or lost.
//!
//! A compaction leaves `records::events_kept` events (three quarters of the bound), so a long history is
//! compacted once per quarter-bound appends, not on every one. Each job's events are then
//! `summary.events_compacted..events_next`, numbered with no gap (`check_consistency`).

use super::SledStore;
use super::keys::{TREE_EVENT_SUMMARIES, TREE_EVENTS, read_by_id, seq_key};
use super::tx::{Tx, TxResult, encode_in_tx, read_in_tx, store_abort};
use crate::model::job::{Event, EventSummary, Job, JobId};
use crate::model::records;
use crate::store::{StoreError, StoreResult, codec};

/// Decodes a summary and checks it right after reading it back: it is the summary of the job its
/// key names.
pub(super) fn decode_summary(key: &[u8], bytes: &[u8]) -> StoreResult<EventSummary> {
    codec::decode_keyed(TREE_EVENT_SUMMARIES, key, bytes)
}

impl Tx<'_> {
    fn event_summary(&self, id: JobId) -> TxResult<Option<EventSummary>> {
        read_in_tx(self.event_summaries, &id.to_bytes(), decode_summary)
    }

    /// Folds the job's oldest events into its summary while it holds more than the bound. Cheap
    /// for a job that never had that many events: it reads nothing.
    pub(super) fn bound_history(&self, job: &Job) -> TxResult<()> {
        if !records::may_exceed(job.events_next, self.events_max) {
            return Ok(());
        }
        let summary = self.event_summary(job.id)?;
        let Some(mut compaction) =
            records::compaction(job.id, job.events_next, summary, self.events_max)
        else {
            return Ok(());
        };
        let compacted = compaction.from;
        for seq in compacted..compaction.until {
            let key = seq_key(job.id, seq);
            let Some(bytes) = self.events.get(key)? else {
                return Err(store_abort(StoreError::corrupt(
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
                return Err(store_abort(StoreError::corrupt(
                    TREE_EVENTS,
                    &key,
                    format!("record holds event seq {}", event.seq),
                )));
            }
            compaction.fold(&event);
            self.events.remove(&key[..])?;
        }
        let summary = compaction.finish().map_err(|reason| {
            store_abort(StoreError::corrupt(
                TREE_EVENT_SUMMARIES,
                &job.id.to_bytes(),
                reason,
            ))
        })?;
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
        read_by_id(&self.event_summaries, id, decode_summary)
    }

    /// The number of the job's first event still held.
    pub(super) fn events_compacted(&self, job: &Job) -> StoreResult<u64> {
        Ok(self
            .read_event_summary(job.id)?
            .map_or(0, |summary| summary.events_compacted))
    }
}
