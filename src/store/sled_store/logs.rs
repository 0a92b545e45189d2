//! Job logs on sled: best effort, never in a job's transactions, never flushed line by line; a
//! job's oldest lines are trimmed to `LOG_LINES_MAX` when it ends.

use std::sync::atomic::Ordering;

use super::SledStore;
use super::keys::{JOB_ID_BYTES, TREE_LOGS, job_id_in, seq_in, seq_key};
use crate::model::job::{JobId, LogLine};
use crate::store::{
    JobLogSink, LOG_LINE_BYTES_MAX, LOG_LINES_MAX, StoreError, StoreResult, codec, truncate_message,
};

impl JobLogSink for SledStore {
    /// Best effort and not flushed line by line; see the module docs for the bound on a job's lines.
    fn append_log(&self, id: JobId, line: LogLine) {
        let mut line = line;
        truncate_message(&mut line.message, LOG_LINE_BYTES_MAX);
        if self.try_append_log(id, &line).is_err() {
            self.log_lines_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn flush_logs(&self) {
        if self.db.flush().is_err() {
            self.log_lines_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl SledStore {
    pub(super) fn trim_logs_best_effort(&self, id: JobId) {
        match self.trim_logs(id) {
            Ok(0) => {}
            Ok(removed) => tracing::debug!(job_id = %id, removed, "trimmed job log"),
            Err(error) => tracing::warn!(job_id = %id, %error, "cannot trim job log"),
        }
    }

    /// Removes a job's oldest log lines beyond [`LOG_LINES_MAX`]; returns how many.
    pub(super) fn trim_logs(&self, id: JobId) -> StoreResult<usize> {
        let keys = self
            .logs
            .scan_prefix(id.to_bytes())
            .keys()
            .collect::<Result<Vec<_>, _>>()?;
        let Some(excess) = keys
            .len()
            .checked_sub(LOG_LINES_MAX)
            .filter(|&excess| excess > 0)
        else {
            return Ok(0);
        };
        let mut batch = sled::Batch::default();
        for key in &keys[..excess] {
            batch.remove(key.clone());
        }
        self.logs.apply_batch(batch)?;
        Ok(excess)
    }

    /// Removes a deleted or pruned job's log lines and progress. They live outside the job's
    /// transaction (best effort, see the module docs): a crash before this leaves lines of a job
    /// that no longer exists, which nothing reads.
    pub(super) fn remove_logs_and_progress(&self, id: JobId) -> StoreResult<()> {
        let mut batch = sled::Batch::default();
        for key in self.logs.scan_prefix(id.to_bytes()).keys() {
            batch.remove(key?);
        }
        self.logs.apply_batch(batch)?;
        self.progress.remove(id.to_bytes())?;
        Ok(())
    }

    pub(super) fn try_append_log(&self, id: JobId, line: &LogLine) -> StoreResult<()> {
        let seq = self.log_seq_next.fetch_add(1, Ordering::Relaxed);
        self.logs.insert(seq_key(id, seq), codec::encode(line)?)?;
        Ok(())
    }
}

/// The first free log sequence number: one past the highest in the tree. Keys sort by job first,
/// so this visits the last line of each job, jumping from one job's prefix to the next.
pub(super) fn next_log_seq(logs: &sled::Tree) -> StoreResult<u64> {
    let mut seq_max: Option<u64> = None;
    let mut next_entry = logs.first()?;
    while let Some((key, _)) = next_entry {
        let id = job_id_in(TREE_LOGS, &key, key.get(..JOB_ID_BYTES).unwrap_or(&key))?;
        let Some(last) = logs.scan_prefix(id.to_bytes()).keys().next_back() else {
            break;
        };
        let seq = seq_in(TREE_LOGS, &last?)?;
        seq_max = Some(seq_max.map_or(seq, |seq_max| seq_max.max(seq)));
        next_entry = match id.0.checked_add(1) {
            Some(next_id) => logs.range(JobId(next_id).to_bytes()..).next().transpose()?,
            None => None,
        };
    }
    match seq_max {
        None => Ok(0),
        Some(seq_max) => seq_max.checked_add(1).ok_or_else(|| {
            StoreError::corrupt(TREE_LOGS, &[], "log sequence exhausted".to_string())
        }),
    }
}
