//! Job logs on PostgreSQL: best effort, as on sled, and never in a job's transactions.
//!
//! `append_log` is synchronous (the tracing layer calls it) and must not wait for the network, so
//! it only buffers the line; the first line of an empty buffer spawns a task that writes the whole
//! buffer in one statement. One writer runs at a time (`writer`), and each takes the buffer only
//! once it holds the writer lock, so lines reach the table in the order they were appended.
//! `logs()` drains the buffer first, so a process reads its own lines. Lines that cannot be
//! written are counted, not logged (logging the failure would feed it back in).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use deadpool_postgres::Pool;

use super::PgStore;
use super::rows::id_bytes;
use crate::model::job::{JobId, LogLine};
use crate::store::{
    JobLogSink, LOG_LINE_BYTES_MAX, LOG_LINES_MAX, StoreError, codec, truncate_message,
};

pub(super) struct LogBuffer {
    pool: Pool,
    lines: Mutex<Vec<(JobId, LogLine)>>,
    writer: tokio::sync::Mutex<()>,
    dropped: AtomicU64,
    /// The runtime the store was opened on: `append_log` may be called from a thread of its own.
    runtime: Option<tokio::runtime::Handle>,
}

impl LogBuffer {
    pub(super) fn new(pool: Pool) -> LogBuffer {
        LogBuffer {
            pool,
            lines: Mutex::new(Vec::new()),
            writer: tokio::sync::Mutex::new(()),
            dropped: AtomicU64::new(0),
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    pub(super) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub(super) fn append(self: &std::sync::Arc<Self>, id: JobId, mut line: LogLine) {
        truncate_message(&mut line.message, LOG_LINE_BYTES_MAX);
        let was_empty = match self.lines.lock() {
            Ok(mut lines) => {
                lines.push((id, line));
                lines.len() == 1
            }
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        if was_empty && let Some(runtime) = &self.runtime {
            let buffer = std::sync::Arc::clone(self);
            runtime.spawn(async move { buffer.drain().await });
        }
    }

    /// Writes every buffered line; the lines of a failed write are counted as dropped.
    pub(super) async fn drain(&self) {
        let _one_writer = self.writer.lock().await;
        let lines = match self.lines.lock() {
            Ok(mut lines) => std::mem::take(&mut *lines),
            Err(_) => return,
        };
        if lines.is_empty() {
            return;
        }
        let count = u64::try_from(lines.len()).unwrap_or(u64::MAX);
        if self.write(lines).await.is_err() {
            self.dropped.fetch_add(count, Ordering::Relaxed);
        }
    }

    async fn write(&self, lines: Vec<(JobId, LogLine)>) -> Result<(), StoreError> {
        let mut ids = Vec::with_capacity(lines.len());
        let mut records = Vec::with_capacity(lines.len());
        for (id, line) in &lines {
            ids.push(id_bytes(*id));
            records.push(codec::encode(line)?);
        }
        let client = self
            .pool
            .get()
            .await
            .map_err(|error| StoreError::Pool(error.to_string()))?;
        // `WITH ORDINALITY` keeps the buffer's order in the sequence numbers.
        client
            .execute(
                "INSERT INTO logs (job_id, record)
                 SELECT job_id, record FROM unnest($1::bytea[], $2::bytea[])
                     WITH ORDINALITY AS line (job_id, record, position)
                 ORDER BY position",
                &[&ids, &records],
            )
            .await?;
        Ok(())
    }

    /// Drains from a thread that is not the runtime's (the log thread, before the process exits);
    /// on a runtime thread, where blocking is not allowed, the spawned writer does it.
    pub(super) fn flush_blocking(&self) {
        if tokio::runtime::Handle::try_current().is_ok() {
            return;
        }
        if let Some(runtime) = &self.runtime {
            runtime.block_on(self.drain());
        }
    }

    /// Removes a job's oldest lines beyond [`LOG_LINES_MAX`], once the job has ended.
    pub(super) async fn trim_best_effort(&self, id: JobId) {
        self.drain().await;
        let Ok(client) = self.pool.get().await else {
            return;
        };
        let keep = i64::try_from(LOG_LINES_MAX).unwrap_or(i64::MAX);
        let trimmed = client
            .execute(
                "DELETE FROM logs WHERE job_id = $1 AND seq <= (
                     SELECT seq FROM logs WHERE job_id = $1 ORDER BY seq DESC OFFSET $2 LIMIT 1)",
                &[&id_bytes(id), &keep],
            )
            .await;
        match trimmed {
            Ok(0) => {}
            Ok(removed) => tracing::debug!(job_id = %id, removed, "trimmed job log"),
            Err(error) => tracing::warn!(job_id = %id, %error, "cannot trim job log"),
        }
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
