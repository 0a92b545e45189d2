//! The records `narra export` writes and `narra import` reads: a whole state store as a stream
//! of self-contained records, so that a single machine's sled store can move into PostgreSQL
//! or a store can be copied between machines.
//!
//! A [`Record`] is what one store transaction restores: a job with everything hanging off it, an
//! incident, a backfill with its job list, a host's scheduling state, or a pruned job's tombstone.
//! Importing writes records as they were, through [`super::MaintenanceStore::import`]; it never
//! runs the state machine, so ids, fencing tokens, event sequences and timestamps survive the
//! move. The file format around the records (header, trailer, checksum) is `engine::transfer`'s.
//!
//! This module owns no I/O; the stores do. It owns the import rules both stores apply: a record
//! whose identity the store holds already is never written, and is either the same record (an
//! import run again) or a conflict, worded here (`ImportOutcome::over` and its kin).

use serde::{Deserialize, Serialize};

use crate::model::job::{
    Backfill, Checkpoint, Event, EventSummary, HostState, Incident, Job, JobId, JobProgress,
    LogLine, MediaMetadata, PrunedJob, Webhook,
};
use crate::model::machine::Rejected;

/// A job and every record that belongs to it, restored in one transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecords {
    /// The job record, with its fencing token and event sequence as they were.
    pub job: Job,
    /// In step order, as `JobReader::checkpoints` returns them.
    pub checkpoints: Vec<Checkpoint>,
    /// The events still held, oldest first.
    pub events: Vec<Event>,
    /// What compaction kept of its oldest events; `None` when none were compacted.
    pub event_summary: Option<EventSummary>,
    /// Its metadata record; `None` before the extract step recorded one.
    pub metadata: Option<MediaMetadata>,
    /// The last progress record of its steps; `None` when no step wrote one.
    pub progress: Option<JobProgress>,
    /// Its own log lines, oldest first.
    pub logs: Vec<LogLine>,
    /// The blob keys the job references (the `blob_refs` index), sorted.
    pub blobs: Vec<String>,
    /// Its completion webhook: the URL, a pending notice, the delivery attempts.
    pub webhook: Option<Webhook>,
}

/// One unit of an export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Record {
    Job(Box<JobRecords>),
    Incident(Incident),
    Backfill {
        backfill: Backfill,
        /// Its jobs, in id order.
        jobs: Vec<JobId>,
    },
    Host(HostState),
    /// A pruned job's tombstone; its blob references are its `blobs`.
    Pruned(PrunedJob),
}

impl Record {
    /// What the record is, for messages and counts: `job`, `incident`, `backfill`, `host`,
    /// `pruned`.
    pub fn kind(&self) -> &'static str {
        match self {
            Record::Job(_) => "job",
            Record::Incident(_) => "incident",
            Record::Backfill { .. } => "backfill",
            Record::Host(_) => "host",
            Record::Pruned(_) => "pruned",
        }
    }

    /// What names the record in a message: the job id, the incident's seq, the backfill id, the
    /// host.
    pub fn name(&self) -> String {
        match self {
            Record::Job(records) => records.job.id.to_string(),
            Record::Incident(incident) => incident.seq.to_string(),
            Record::Backfill { backfill, .. } => backfill.id.to_string(),
            Record::Host(host) => host.host.clone(),
            Record::Pruned(pruned) => pruned.id.to_string(),
        }
    }
}

/// What importing one record did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportOutcome {
    /// Written: the store had nothing under its identity.
    Imported,
    /// The store already holds exactly this record (an import run again after an interruption):
    /// nothing written.
    AlreadyPresent,
    /// The store holds something else under the record's identity (its id, its key, its
    /// manifest, its seq): nothing written, and why.
    Conflict(String),
}

impl ImportOutcome {
    /// The outcome of a record's import transaction. A refusal there wrote nothing, as a
    /// conflict does, so it is reported as one, in the refusal's words.
    pub fn or_conflict(outcome: Result<ImportOutcome, Rejected>) -> Self {
        outcome.unwrap_or_else(|rejected| ImportOutcome::Conflict(rejected.to_string()))
    }

    /// `record` imported where the store holds `existing` under its identity: nothing is written;
    /// the same record is an import run again, anything else a conflict worded by `conflict`.
    fn over<T: PartialEq>(existing: &T, record: &T, conflict: impl FnOnce() -> String) -> Self {
        if existing == record {
            ImportOutcome::AlreadyPresent
        } else {
            ImportOutcome::Conflict(conflict())
        }
    }

    /// A job whose id the store holds.
    pub fn job_over(existing: &Job, job: &Job) -> Self {
        Self::over(existing, job, || {
            format!("the store has another record for job {}", job.id)
        })
    }

    /// A job whose key another job of the store, `holder`, holds.
    pub fn key_held(holder: JobId, key: &str) -> Self {
        ImportOutcome::Conflict(format!("the store has job {holder} under key {key:?}"))
    }

    /// A job the store holds as pruned.
    pub fn job_pruned(id: JobId) -> Self {
        ImportOutcome::Conflict(format!("the store has job {id} as pruned"))
    }

    /// A pruned job's tombstone whose job the store holds alive.
    pub fn job_live(id: JobId) -> Self {
        ImportOutcome::Conflict(format!("the store has a live job {id}"))
    }

    /// A tombstone the store holds one for.
    pub fn tombstone_over(existing: &PrunedJob, pruned: &PrunedJob) -> Self {
        Self::over(existing, pruned, || {
            format!(
                "the store has another tombstone for pruned job {}",
                pruned.id
            )
        })
    }

    /// An incident whose seq the store holds.
    pub fn incident_over(existing: &Incident, incident: &Incident) -> Self {
        Self::over(existing, incident, || {
            format!("the store has another incident at seq {}", incident.seq)
        })
    }

    /// A backfill whose id or manifest the store holds (`existing`, named in a conflict).
    pub fn backfill_over(existing: &Backfill, backfill: &Backfill) -> Self {
        Self::over(existing, backfill, || {
            format!(
                "the store has backfill {} of manifest {:?}",
                existing.id, existing.manifest
            )
        })
    }

    /// A host's state the store holds one for.
    pub fn host_over(existing: &HostState, host: &HostState) -> Self {
        Self::over(existing, host, || {
            format!("the store has another state for host {}", host.host)
        })
    }
}
