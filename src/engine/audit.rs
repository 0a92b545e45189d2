//! Idempotency audits (`narra audit`): each job's checkpoint chain read back from its event history,
//! and the findings that say whether the engine kept its promises.
//!
//! The history is the evidence. The worker records why a step that has a checkpoint runs again
//! (`step_redone`), which objects each store run wrote (`objects_written`), and the store records
//! every checkpoint's hashes with it (`checkpoint_recorded`). [`analyze_history`] is a pure function
//! of those events, the incident log and the writes other jobs made of the same blobs; [`audit_job`]
//! adds what only the state store and the object store can say (the current checkpoints, whether
//! storage agrees with them, whether the manifest's blobs exist, whether the blob index agrees).
//!
//! Findings and their severity:
//!
//! | kind | severity | meaning |
//! |---|---|---|
//! | `rerun_without_cause` | violation | a step with a checkpoint ran again and no cause was recorded (warning in histories written before narra recorded causes) |
//! | `rerun_cause_false` | violation | the recorded cause is `earlier_step_ran` but no earlier step ran in that run |
//! | `rerun_after_skip` | violation | a step ran after it was skipped as verified in the same run |
//! | `outputs_differ` | violation | two runs of the same step definition on the same input recorded different outputs |
//! | `source_changed` | info | the same, for `download`: the origin served other bytes for the same source |
//! | `object_rewritten` | violation | a content-addressed blob was written again though nothing showed it missing or changed |
//! | `object_restored` | info | a blob written again after a verification failure or a cleanup deletion |
//! | `manifest_names_missing_blob` | violation | the job's manifest names a blob that does not exist |
//! | `manifest_unreadable` | violation | the store checkpoint names a manifest that is missing or not a manifest |
//! | `storage_disagrees` | violation (succeeded jobs), warning (others) | an artifact is missing or does not match its checkpoint (shallow `verify`) |
//! | `index_disagrees` | violation | the blob -> jobs index does not list this job for a blob its checkpoint names |
//!
//! Limits: a store run that fails records no `objects_written` (a retry skips what it stored, so no
//! write is counted twice); writes by other jobs are found through the blob index, so a job that no
//! longer references a blob it once wrote is not compared; manifests are not compared across writes,
//! since their bytes change with their job's outputs.
//!
//! This module only reads: it never writes to the state store or to storage.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::engine::Engine;
use crate::engine::job::{
    Checkpoint, Event, EventKind, Hash, Incident, Job, JobId, Location, Status, Timestamp,
};
use crate::engine::verify::{JobVerification, verify_job};
use crate::store::{JobFilter, StoreError};

/// Redo causes that mean an output failed verification: a rewrite in the same run is a repair.
const VERIFICATION_FAILURES: [&str; 2] = ["output_missing", "output_changed"];

/// Every cause the worker records.
const KNOWN_CAUSES: [&str; 5] = [
    "definition_changed",
    "inputs_changed",
    "output_missing",
    "output_changed",
    "earlier_step_ran",
];

/// Only content-addressed keys are compared across writes: the key fixes the bytes, so writing one
/// twice is writing the same bytes twice. A manifest's bytes change with its job's outputs.
const BLOB_PREFIX: &str = "blobs/";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Info,
    Warning,
    Violation,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Violation => "violation",
        }
    }
}

/// One thing the audit found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// A stable code (see the module docs).
    pub kind: &'static str,
    pub severity: Severity,
    pub step: Option<String>,
    pub key: Option<String>,
    /// The event the finding is about, if one.
    pub seq: Option<u64>,
    pub message: String,
}

/// How one step went over the job's whole history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepCounts {
    /// `step_started` events: how many times the step executed.
    pub executed: u32,
    pub completed: u32,
    pub skipped: u32,
    pub failed: u32,
    /// `step_redone` events: how many of the executions re-ran a checkpointed step.
    pub redone: u32,
}

/// What the history says, before storage is consulted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryAnalysis {
    /// By step, in the order steps first appear in the history.
    pub steps: Vec<(String, StepCounts)>,
    /// How many times this job wrote each key, by key.
    pub writes: BTreeMap<String, u32>,
    pub findings: Vec<Finding>,
    /// The history predates the audit events (`checkpoint_recorded`, `objects_written`).
    pub legacy: bool,
}

/// A write of a blob by some job, for comparing writes across jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobWrite {
    pub job_id: JobId,
    pub at: Timestamp,
    pub key: String,
}

/// The blob writes recorded in a history.
pub fn blob_writes(job_id: JobId, events: &[Event]) -> Vec<BlobWrite> {
    events
        .iter()
        .filter_map(|event| match &event.kind {
            EventKind::ObjectsWritten { keys, .. } => Some((event.at, keys)),
            _ => None,
        })
        .flat_map(|(at, keys)| {
            keys.iter()
                .filter(|key| key.starts_with(BLOB_PREFIX))
                .map(move |key| BlobWrite {
                    job_id,
                    at,
                    key: key.clone(),
                })
        })
        .collect()
}

/// Reads a job's history: the per-step counts, this job's writes, and the findings the events
/// alone support. `other_writes` are blob writes by other jobs; `incidents` is the incident log.
pub fn analyze_history(
    job_id: JobId,
    events: &[Event],
    other_writes: &[BlobWrite],
    incidents: &[Incident],
) -> HistoryAnalysis {
    let mut analysis = HistoryAnalysis {
        legacy: events
            .iter()
            .any(|event| matches!(event.kind, EventKind::StepCompleted { .. }))
            && !events.iter().any(|event| {
                matches!(
                    event.kind,
                    EventKind::CheckpointRecorded { .. } | EventKind::ObjectsWritten { .. }
                )
            }),
        ..HistoryAnalysis::default()
    };
    let mut counts: Vec<(String, StepCounts)> = Vec::new();
    let mut completed_ever: HashSet<String> = HashSet::new();
    // Per run (from one claim to the next).
    let mut started_in_run: Vec<String> = Vec::new();
    let mut skipped_in_run: HashSet<String> = HashSet::new();
    let mut redo_pending: HashMap<String, String> = HashMap::new();
    let mut verification_failed_in_run = false;
    // (step, definition, input) -> the first outputs recorded for it, with the event's seq.
    let mut recorded: HashMap<RunSlot, (u64, Vec<(String, Hash)>)> = HashMap::new();
    // Blob key -> when this job last wrote it.
    let mut own_writes: HashMap<String, Timestamp> = HashMap::new();

    let rerun_severity = if analysis.legacy {
        Severity::Warning
    } else {
        Severity::Violation
    };

    for event in events {
        match &event.kind {
            EventKind::StatusChanged {
                to: Status::Running,
                ..
            } => {
                started_in_run.clear();
                skipped_in_run.clear();
                redo_pending.clear();
                verification_failed_in_run = false;
            }
            EventKind::StepRedone { step, cause, .. } => {
                let index = counts_of(&mut counts, step);
                counts[index].1.redone += 1;
                if VERIFICATION_FAILURES.contains(&cause.as_str()) {
                    verification_failed_in_run = true;
                }
                redo_pending.insert(step.clone(), cause.clone());
            }
            EventKind::StepStarted { step } => {
                let index = counts_of(&mut counts, step);
                counts[index].1.executed += 1;
                if skipped_in_run.contains(step) {
                    analysis.findings.push(Finding {
                        kind: "rerun_after_skip",
                        severity: Severity::Violation,
                        step: Some(step.clone()),
                        key: None,
                        seq: Some(event.seq),
                        message: format!(
                            "step {step} ran after it was skipped as verified in the same run"
                        ),
                    });
                }
                let cause = redo_pending.remove(step);
                if completed_ever.contains(step) {
                    match cause.as_deref() {
                        None => analysis.findings.push(Finding {
                            kind: "rerun_without_cause",
                            severity: rerun_severity,
                            step: Some(step.clone()),
                            key: None,
                            seq: Some(event.seq),
                            message: if analysis.legacy {
                                format!(
                                    "step {step} ran again with no recorded cause (the history predates recorded causes)"
                                )
                            } else {
                                format!(
                                    "step {step} ran again though it had a checkpoint, and no cause was recorded"
                                )
                            },
                        }),
                        Some("earlier_step_ran") if started_in_run.is_empty() => {
                            analysis.findings.push(Finding {
                                kind: "rerun_cause_false",
                                severity: Severity::Violation,
                                step: Some(step.clone()),
                                key: None,
                                seq: Some(event.seq),
                                message: format!(
                                    "step {step} ran again because an earlier step ran, but none ran in this run"
                                ),
                            })
                        }
                        Some(cause) if !KNOWN_CAUSES.contains(&cause) => {
                            analysis.findings.push(Finding {
                                kind: "rerun_without_cause",
                                severity: Severity::Warning,
                                step: Some(step.clone()),
                                key: None,
                                seq: Some(event.seq),
                                message: format!(
                                    "step {step} ran again for an unknown cause {cause:?}"
                                ),
                            })
                        }
                        Some(_) => {}
                    }
                }
                started_in_run.push(step.clone());
            }
            EventKind::StepCompleted { step, .. } => {
                let index = counts_of(&mut counts, step);
                counts[index].1.completed += 1;
                completed_ever.insert(step.clone());
            }
            EventKind::StepSkipped { step, .. } => {
                let index = counts_of(&mut counts, step);
                counts[index].1.skipped += 1;
                skipped_in_run.insert(step.clone());
            }
            EventKind::StepFailed { step, .. } => {
                let index = counts_of(&mut counts, step);
                counts[index].1.failed += 1;
            }
            EventKind::CheckpointRecorded {
                step,
                definition_hash,
                input_hash,
                outputs,
            } => {
                let mut outputs = outputs.clone();
                outputs.sort();
                let slot = (step.clone(), *definition_hash, *input_hash);
                match recorded.get(&slot) {
                    None => {
                        recorded.insert(slot, (event.seq, outputs));
                    }
                    Some((first_seq, first)) if *first != outputs => {
                        let (kind, severity, what) = if step == "download" {
                            (
                                "source_changed",
                                Severity::Info,
                                "the origin served other bytes for the same source",
                            )
                        } else {
                            (
                                "outputs_differ",
                                Severity::Violation,
                                "the step is not deterministic",
                            )
                        };
                        analysis.findings.push(Finding {
                            kind,
                            severity,
                            step: Some(step.clone()),
                            key: None,
                            seq: Some(event.seq),
                            message: format!(
                                "step {step} recorded {} for the same definition and input as event {first_seq} ({}): {what}",
                                outputs_text(&outputs),
                                outputs_text(first)
                            ),
                        });
                    }
                    Some(_) => {}
                }
            }
            EventKind::Reprobed { .. } => {
                // `reprobe` re-derived the metadata record on purpose: the extract step's recorded
                // outputs start a new baseline, so a later extraction is compared with it afresh.
                recorded.retain(|(step, _, _), _| step != "extract");
            }
            EventKind::ObjectsWritten { step, keys } => {
                for key in keys {
                    *analysis.writes.entry(key.clone()).or_insert(0) += 1;
                    if !key.starts_with(BLOB_PREFIX) {
                        continue;
                    }
                    let own_prior = own_writes.get(key).map(|at| (*at, job_id));
                    let other_prior = other_writes
                        .iter()
                        .filter(|write| {
                            write.key == *key && write.job_id != job_id && write.at < event.at
                        })
                        .map(|write| (write.at, write.job_id))
                        .max();
                    let prior = own_prior.into_iter().chain(other_prior).max();
                    if let Some((prior_at, prior_job)) = prior {
                        let deleted_between = incidents.iter().any(|incident| {
                            incident.key.as_deref() == Some(key.as_str())
                                && incident.action == "deleted_object"
                                && incident.at >= prior_at
                                && incident.at <= event.at
                        });
                        let by = if prior_job == job_id {
                            "this job".to_string()
                        } else {
                            format!("job {prior_job}")
                        };
                        let finding = if verification_failed_in_run || deleted_between {
                            Finding {
                                kind: "object_restored",
                                severity: Severity::Info,
                                step: Some(step.clone()),
                                key: Some(key.clone()),
                                seq: Some(event.seq),
                                message: format!(
                                    "{key} was written again after {by} wrote it, once {}",
                                    if deleted_between {
                                        "cleanup had deleted it"
                                    } else {
                                        "a verification failure showed it missing or changed"
                                    }
                                ),
                            }
                        } else {
                            Finding {
                                kind: "object_rewritten",
                                severity: Severity::Violation,
                                step: Some(step.clone()),
                                key: Some(key.clone()),
                                seq: Some(event.seq),
                                message: format!(
                                    "{key} was written again after {by} wrote it at {}, and nothing showed it missing or changed",
                                    prior_at.to_rfc3339()
                                ),
                            }
                        };
                        analysis.findings.push(finding);
                    }
                    own_writes.insert(key.clone(), event.at);
                }
            }
            _ => {}
        }
    }
    analysis.steps = counts;
    analysis
}

/// A step run on one definition and one input: its outputs should always be the same.
type RunSlot = (String, Hash, Hash);

/// The index of `step` in `counts`, adding it on first sight.
fn counts_of(counts: &mut Vec<(String, StepCounts)>, step: &str) -> usize {
    match counts.iter().position(|(name, _)| name == step) {
        Some(index) => index,
        None => {
            counts.push((step.to_string(), StepCounts::default()));
            counts.len() - 1
        }
    }
}

fn outputs_text(outputs: &[(String, Hash)]) -> String {
    outputs
        .iter()
        .map(|(name, blake3)| format!("{name} {}", &blake3.to_hex()[..16]))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One step of a job's audit: its counts and its current checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct StepAudit {
    pub step: String,
    pub counts: StepCounts,
    pub checkpoint: Option<Checkpoint>,
}

/// The audit of one job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobAudit {
    pub job: Job,
    /// The workflow's steps in order, then any other step the history names.
    pub steps: Vec<StepAudit>,
    /// How many times this job wrote each key.
    pub writes: BTreeMap<String, u32>,
    /// Shallow `verify`: does storage agree with the checkpoints?
    pub storage: JobVerification,
    pub findings: Vec<Finding>,
}

impl JobAudit {
    pub fn violations(&self) -> usize {
        self.findings
            .iter()
            .filter(|finding| finding.severity == Severity::Violation)
            .count()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("job {0} not found")]
    NotFound(JobId),
}

/// Audits jobs: `ids`, or every job when `ids` is empty (newest first).
pub async fn audit_jobs(engine: &Engine, ids: &[JobId]) -> Result<Vec<JobAudit>, AuditError> {
    let jobs = if ids.is_empty() {
        engine
            .store
            .jobs(&JobFilter {
                status: None,
                limit: usize::MAX,
            })
            .await?
    } else {
        let mut jobs = Vec::with_capacity(ids.len());
        for id in ids {
            jobs.push(
                engine
                    .store
                    .job(*id)
                    .await?
                    .ok_or(AuditError::NotFound(*id))?,
            );
        }
        jobs
    };
    let incidents = engine.store.incidents().await?;
    let mut histories: HashMap<JobId, Vec<Event>> = HashMap::new();
    let mut audits = Vec::with_capacity(jobs.len());
    for job in jobs {
        audits.push(audit_job(engine, job, &incidents, &mut histories).await?);
    }
    Ok(audits)
}

/// Audits one job. `histories` caches the event histories of jobs read so far (other jobs'
/// histories are read for the blobs this job wrote, found through the blob index).
pub async fn audit_job(
    engine: &Engine,
    job: Job,
    incidents: &[Incident],
    histories: &mut HashMap<JobId, Vec<Event>>,
) -> Result<JobAudit, AuditError> {
    let events = engine.store.events(job.id).await?;
    let checkpoints = engine.store.checkpoints(job.id).await?;

    // Other jobs that wrote the same blobs are the ones the index says reference them.
    let mut other_writes = Vec::new();
    let mut others_read = HashSet::new();
    for write in blob_writes(job.id, &events) {
        for other in engine.store.jobs_referencing(&write.key).await? {
            if other == job.id || !others_read.insert(other) {
                continue;
            }
            if let std::collections::hash_map::Entry::Vacant(slot) = histories.entry(other) {
                slot.insert(engine.store.events(other).await?);
            }
            other_writes.extend(blob_writes(other, &histories[&other]));
        }
    }
    let analysis = analyze_history(job.id, &events, &other_writes, incidents);
    histories.insert(job.id, events);

    let mut steps: Vec<StepAudit> = Vec::new();
    let workflow_steps: Vec<String> = engine
        .workflows
        .get(&job.workflow)
        .map(|workflow| {
            workflow
                .steps
                .iter()
                .map(|step| step.kind().name().to_string())
                .collect()
        })
        .unwrap_or_default();
    let history_steps = analysis.steps.iter().map(|(step, _)| step.clone());
    for step in workflow_steps.into_iter().chain(history_steps) {
        if steps.iter().any(|audit| audit.step == step) {
            continue;
        }
        let counts = analysis
            .steps
            .iter()
            .find(|(name, _)| *name == step)
            .map(|(_, counts)| counts.clone())
            .unwrap_or_default();
        let checkpoint = checkpoints
            .iter()
            .find(|checkpoint| checkpoint.step == step)
            .cloned();
        steps.push(StepAudit {
            step,
            counts,
            checkpoint,
        });
    }

    let mut findings = analysis.findings;
    let storage = verify_job(engine, job.id, &checkpoints, false).await;
    for problem in storage.problems() {
        findings.push(Finding {
            kind: "storage_disagrees",
            severity: if job.status == Status::Succeeded {
                Severity::Violation
            } else {
                Severity::Warning
            },
            step: Some("store".to_string()),
            key: match &problem.location {
                Location::Object(key) => Some(key.clone()),
                _ => None,
            },
            seq: None,
            message: problem.message(),
        });
    }
    if let Some(store_checkpoint) = checkpoints
        .iter()
        .find(|checkpoint| checkpoint.step == "store")
    {
        findings.extend(check_manifest(engine, store_checkpoint).await);
        for output in &store_checkpoint.outputs {
            let Location::Object(key) = &output.location else {
                continue;
            };
            if key.starts_with(BLOB_PREFIX)
                && !engine.store.jobs_referencing(key).await?.contains(&job.id)
            {
                findings.push(Finding {
                    kind: "index_disagrees",
                    severity: Severity::Violation,
                    step: Some("store".to_string()),
                    key: Some(key.clone()),
                    seq: None,
                    message: format!(
                        "the blob index does not list this job for {key}, which its store checkpoint names"
                    ),
                });
            }
        }
    }
    findings.sort_by(|left, right| {
        right
            .severity
            .cmp(&left.severity)
            .then(left.seq.cmp(&right.seq))
    });
    Ok(JobAudit {
        job,
        steps,
        writes: analysis.writes,
        storage,
        findings,
    })
}

/// The manifest the store checkpoint names must exist, parse, and name only blobs that exist.
async fn check_manifest(engine: &Engine, store_checkpoint: &Checkpoint) -> Vec<Finding> {
    let Some(Location::Object(manifest_key)) = store_checkpoint
        .output("manifest")
        .map(|output| &output.location)
    else {
        return Vec::new();
    };
    let unreadable = |message: String| {
        vec![Finding {
            kind: "manifest_unreadable",
            severity: Severity::Violation,
            step: Some("store".to_string()),
            key: Some(manifest_key.clone()),
            seq: None,
            message,
        }]
    };
    let bytes = match engine.storage.read_bytes(manifest_key).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return unreadable(format!("the manifest {manifest_key} is missing")),
        Err(error) => return unreadable(format!("the manifest cannot be read: {error}")),
    };
    let keys = match manifest_blob_keys(&bytes) {
        Some(keys) => keys,
        None => return unreadable(format!("{manifest_key} is not a narra manifest")),
    };
    let mut findings = Vec::new();
    for key in keys {
        match engine.storage.stat(&key).await {
            Ok(Some(_)) => {}
            Ok(None) => findings.push(Finding {
                kind: "manifest_names_missing_blob",
                severity: Severity::Violation,
                step: Some("store".to_string()),
                key: Some(key.clone()),
                seq: None,
                message: format!("the manifest {manifest_key} names {key}, which does not exist"),
            }),
            Err(error) => findings.push(Finding {
                kind: "manifest_names_missing_blob",
                severity: Severity::Warning,
                step: Some("store".to_string()),
                key: Some(key.clone()),
                seq: None,
                message: format!("cannot check {key}, named by {manifest_key}: {error}"),
            }),
        }
    }
    findings
}

/// The blob keys a manifest names (`artifacts[].key`), or `None` when the bytes are not one.
pub fn manifest_blob_keys(bytes: &[u8]) -> Option<Vec<String>> {
    let manifest: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    manifest["artifacts"]
        .as_array()?
        .iter()
        .map(|artifact| artifact["key"].as_str().map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    //! The history analysis on hand-written histories: a clean history has no finding, and each
    //! injected violation is named.

    use super::*;
    use crate::engine::job::ErrorInfo;

    const JOB: JobId = JobId(1);
    const OTHER: JobId = JobId(2);

    /// Builds a history one event at a time, one millisecond apart.
    #[derive(Default)]
    struct History {
        events: Vec<Event>,
        /// Added to each step's definition hash: a changed workflow.
        definition: u8,
    }

    impl History {
        fn push(&mut self, kind: EventKind) -> &mut Self {
            let seq = u64::try_from(self.events.len()).expect("small");
            self.events.push(Event {
                seq,
                at: Timestamp(1_000 + i64::try_from(seq).expect("small")),
                kind,
            });
            self
        }

        fn claim(&mut self) -> &mut Self {
            self.push(EventKind::StatusChanged {
                from: Some(Status::Pending),
                to: Status::Running,
                reason: "claimed".into(),
            })
        }

        fn run(&mut self, step: &str, input: u8, outputs: &[(&str, u8)]) -> &mut Self {
            self.push(EventKind::StepStarted { step: step.into() });
            self.complete(step, input, outputs)
        }

        fn complete(&mut self, step: &str, input: u8, outputs: &[(&str, u8)]) -> &mut Self {
            self.push(EventKind::StepCompleted {
                step: step.into(),
                outputs: u32::try_from(outputs.len()).expect("small"),
            });
            self.push(EventKind::CheckpointRecorded {
                step: step.into(),
                definition_hash: Hash(
                    [u8::try_from(step.len()).expect("short") + self.definition; 32],
                ),
                input_hash: Hash([input; 32]),
                outputs: outputs
                    .iter()
                    .map(|(name, byte)| (name.to_string(), Hash([*byte; 32])))
                    .collect(),
            })
        }

        fn skip(&mut self, step: &str) -> &mut Self {
            self.push(EventKind::StepSkipped {
                step: step.into(),
                reason: "checkpoint verified".into(),
            })
        }

        fn redo(&mut self, step: &str, cause: &str) -> &mut Self {
            self.push(EventKind::StepRedone {
                step: step.into(),
                cause: cause.into(),
                reason: cause.into(),
            })
        }

        fn wrote(&mut self, keys: &[&str]) -> &mut Self {
            self.push(EventKind::ObjectsWritten {
                step: "store".into(),
                keys: keys.iter().map(|key| key.to_string()).collect(),
            })
        }

        /// download, extract and store, from nothing.
        fn first_run(&mut self) -> &mut Self {
            self.claim()
                .run("download", 1, &[("video", 10)])
                .run("extract", 2, &[("audio", 20)])
                .push(EventKind::StepStarted {
                    step: "store".into(),
                })
                .wrote(&[
                    "blobs/aa/video.mp4",
                    "blobs/bb/audio.m4a",
                    "jobs/1/manifest.json",
                ])
                .complete("store", 3, &[("video", 10), ("audio", 20)])
        }
    }

    fn kinds(analysis: &HistoryAnalysis) -> Vec<(&'static str, Severity)> {
        analysis
            .findings
            .iter()
            .map(|finding| (finding.kind, finding.severity))
            .collect()
    }

    #[test]
    fn a_clean_history_has_no_finding() {
        let mut history = History::default();
        history.first_run();
        // A re-run that skips everything, then a reingest whose changed extract re-runs the store
        // step, which writes only the new audio.
        history
            .claim()
            .skip("download")
            .skip("extract")
            .skip("store");
        history.definition = 1;
        history
            .claim()
            .skip("download")
            .redo("extract", "definition_changed")
            .push(EventKind::StepStarted {
                step: "extract".into(),
            })
            .complete("extract", 2, &[("audio", 21)])
            .redo("store", "earlier_step_ran")
            .push(EventKind::StepStarted {
                step: "store".into(),
            })
            .wrote(&["blobs/cc/audio.flac", "jobs/1/manifest.json"])
            .complete("store", 4, &[("video", 10), ("audio", 21)]);

        let analysis = analyze_history(JOB, &history.events, &[], &[]);

        assert_eq!(kinds(&analysis), vec![]);
        assert!(!analysis.legacy);
        let counts: HashMap<_, _> = analysis.steps.iter().cloned().collect();
        assert_eq!(
            counts["download"],
            StepCounts {
                executed: 1,
                completed: 1,
                skipped: 2,
                failed: 0,
                redone: 0
            }
        );
        assert_eq!(counts["store"].executed, 2);
        assert_eq!(counts["store"].redone, 1);
        assert_eq!(analysis.writes["jobs/1/manifest.json"], 2);
        assert_eq!(analysis.writes["blobs/aa/video.mp4"], 1);
    }

    #[test]
    fn a_store_step_that_writes_a_stored_blob_again_is_a_violation() {
        let mut history = History::default();
        history.first_run();
        history
            .claim()
            .skip("download")
            .skip("extract")
            .redo("store", "inputs_changed")
            .push(EventKind::StepStarted {
                step: "store".into(),
            })
            .wrote(&["blobs/aa/video.mp4"])
            .complete("store", 5, &[("video", 10), ("audio", 20)]);

        let analysis = analyze_history(JOB, &history.events, &[], &[]);

        assert_eq!(
            kinds(&analysis),
            vec![("object_rewritten", Severity::Violation)]
        );
        assert_eq!(
            analysis.findings[0].key.as_deref(),
            Some("blobs/aa/video.mp4")
        );
        assert_eq!(analysis.writes["blobs/aa/video.mp4"], 2);
    }

    #[test]
    fn a_rewrite_after_a_verification_failure_or_a_cleanup_is_a_repair() {
        let mut history = History::default();
        history.first_run();
        history
            .claim()
            .redo("download", "output_missing")
            .push(EventKind::StepStarted {
                step: "download".into(),
            })
            .complete("download", 1, &[("video", 10)])
            .redo("extract", "earlier_step_ran")
            .push(EventKind::StepStarted {
                step: "extract".into(),
            })
            .complete("extract", 2, &[("audio", 20)])
            .redo("store", "earlier_step_ran")
            .push(EventKind::StepStarted {
                step: "store".into(),
            })
            .wrote(&["blobs/aa/video.mp4"])
            .complete("store", 3, &[("video", 10), ("audio", 20)]);
        let analysis = analyze_history(JOB, &history.events, &[], &[]);
        assert_eq!(kinds(&analysis), vec![("object_restored", Severity::Info)]);

        // Another job wrote the blob first; cleanup deleted it in between.
        let mut history = History::default();
        history.first_run();
        let earlier = BlobWrite {
            job_id: OTHER,
            at: Timestamp(10),
            key: "blobs/aa/video.mp4".into(),
        };
        let deleted = Incident {
            seq: 0,
            at: Timestamp(20),
            actor: "ops".into(),
            action: "deleted_object".into(),
            job: Some(OTHER),
            key: Some("blobs/aa/video.mp4".into()),
            reason: "corrupt".into(),
        };
        let analysis = analyze_history(
            JOB,
            &history.events,
            std::slice::from_ref(&earlier),
            &[deleted],
        );
        assert_eq!(kinds(&analysis), vec![("object_restored", Severity::Info)]);

        // Without the deletion, the second job's write is a duplicate.
        let analysis = analyze_history(JOB, &history.events, &[earlier], &[]);
        assert_eq!(
            kinds(&analysis),
            vec![("object_rewritten", Severity::Violation)]
        );
        assert!(analysis.findings[0].message.contains(&OTHER.to_string()));
    }

    #[test]
    fn a_rerun_with_no_or_a_false_cause_is_a_violation() {
        let mut history = History::default();
        history.first_run();
        history
            .claim()
            .push(EventKind::StepStarted {
                step: "download".into(),
            })
            .complete("download", 1, &[("video", 10)])
            .claim()
            .skip("download")
            .redo("extract", "earlier_step_ran")
            .push(EventKind::StepStarted {
                step: "extract".into(),
            })
            .complete("extract", 2, &[("audio", 20)]);
        let analysis = analyze_history(JOB, &history.events, &[], &[]);
        assert_eq!(
            kinds(&analysis),
            vec![
                ("rerun_without_cause", Severity::Violation),
                ("rerun_cause_false", Severity::Violation)
            ]
        );
        assert_eq!(analysis.findings[0].step.as_deref(), Some("download"));
        assert_eq!(analysis.findings[1].step.as_deref(), Some("extract"));
    }

    #[test]
    fn a_step_run_after_its_skip_in_the_same_run_is_a_violation() {
        let mut history = History::default();
        history.first_run();
        history
            .claim()
            .skip("download")
            .redo("download", "output_changed")
            .push(EventKind::StepStarted {
                step: "download".into(),
            });
        let analysis = analyze_history(JOB, &history.events, &[], &[]);
        assert_eq!(
            kinds(&analysis),
            vec![("rerun_after_skip", Severity::Violation)]
        );
    }

    #[test]
    fn different_outputs_for_the_same_input_are_named() {
        let mut history = History::default();
        history.first_run();
        history
            .claim()
            .redo("download", "output_missing")
            .push(EventKind::StepStarted {
                step: "download".into(),
            })
            .complete("download", 1, &[("video", 11)])
            .redo("extract", "earlier_step_ran")
            .push(EventKind::StepStarted {
                step: "extract".into(),
            })
            // Same input hash as the first run, other audio: extract is not deterministic.
            .complete("extract", 2, &[("audio", 29)]);
        let analysis = analyze_history(JOB, &history.events, &[], &[]);
        assert_eq!(
            kinds(&analysis),
            vec![
                ("source_changed", Severity::Info),
                ("outputs_differ", Severity::Violation)
            ]
        );
    }

    // Guards reprobe: a deliberate re-derivation of the metadata record starts a new extract
    // baseline, so a later extraction is not reported as non-deterministic against the old one.
    #[test]
    fn a_reprobe_starts_a_new_extract_baseline() {
        let mut history = History::default();
        history.first_run();
        history
            .push(EventKind::Reprobed {
                changes: vec!["duration_s".into()],
            })
            .claim()
            .redo("download", "output_missing")
            .push(EventKind::StepStarted {
                step: "download".into(),
            })
            .complete("download", 1, &[("video", 11)])
            .redo("extract", "earlier_step_ran")
            .push(EventKind::StepStarted {
                step: "extract".into(),
            })
            .complete("extract", 2, &[("audio", 29)]);
        let analysis = analyze_history(JOB, &history.events, &[], &[]);
        assert_eq!(kinds(&analysis), vec![("source_changed", Severity::Info)]);
    }

    #[test]
    fn a_history_from_before_recorded_causes_only_warns() {
        let events = vec![
            Event {
                seq: 0,
                at: Timestamp(1),
                kind: EventKind::StepStarted {
                    step: "download".into(),
                },
            },
            Event {
                seq: 1,
                at: Timestamp(2),
                kind: EventKind::StepCompleted {
                    step: "download".into(),
                    outputs: 1,
                },
            },
            Event {
                seq: 2,
                at: Timestamp(3),
                kind: EventKind::StepFailed {
                    step: "extract".into(),
                    error: ErrorInfo {
                        class: "corrupt_media".into(),
                        message: "x".into(),
                    },
                },
            },
            Event {
                seq: 3,
                at: Timestamp(4),
                kind: EventKind::StepStarted {
                    step: "download".into(),
                },
            },
        ];
        let analysis = analyze_history(JOB, &events, &[], &[]);
        assert!(analysis.legacy);
        assert_eq!(
            kinds(&analysis),
            vec![("rerun_without_cause", Severity::Warning)]
        );
    }

    #[test]
    fn manifest_blob_keys_reads_the_artifacts() {
        let manifest = br#"{"artifacts": [{"kind": "video", "key": "blobs/aa/a.mp4"}, {"kind": "audio", "key": "blobs/bb/b.m4a"}]}"#;
        assert_eq!(
            manifest_blob_keys(manifest),
            Some(vec![
                "blobs/aa/a.mp4".to_string(),
                "blobs/bb/b.m4a".to_string()
            ])
        );
        assert_eq!(manifest_blob_keys(b"not json"), None);
        assert_eq!(
            manifest_blob_keys(br#"{"artifacts": [{"kind": "x"}]}"#),
            None
        );
    }
}
