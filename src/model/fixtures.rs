//! Model values for tests: a job as `submit` creates it, so each test changes only what it is about.
//!
//! Compiled for tests only; never used by the library itself.

use crate::model::job::{Job, JobId, PRIORITY_LIVE, Timestamp};

/// A pending job `id` of workflow `ingest` from `source`, keyed `key-<id>`, created at time 0.
pub fn job(id: u128, source: &str) -> Job {
    crate::model::machine::new_job(
        JobId(id),
        format!("key-{id}"),
        source.to_string(),
        "ingest".to_string(),
        PRIORITY_LIVE,
        Timestamp(0),
    )
    .job
}
