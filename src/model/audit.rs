//! The audit of a job's history (`narra audit`): the findings that say whether the engine kept
//! its idempotency promises, their severity, and the report of one job.
//!
//! [`analyze`] is a pure function of the events (read through `model::history::fold`, which also
//! reads the summary compaction left of a long history's oldest events, so compaction never
//! changes an answer), the incident log and the writes other jobs made of the same blobs.
//! `engine::audit` reads those, adds what only the stores can say, and fills a [`JobAudit`]; the
//! findings and their meaning are listed in `engine::audit`'s docs.

use std::collections::{BTreeMap, HashMap};

use crate::model::history;
use crate::model::job::{
    Checkpoint, Event, EventSummary, Hash, HistoryFindingKind, Incident, Job, JobId, Timestamp,
};
use crate::model::verification::JobVerification;

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
    /// `Violation` makes `narra audit` exit 1; `Warning` and `Info` do not.
    pub severity: Severity,
    /// The step it is about, if one.
    pub step: Option<String>,
    /// The object key it is about, if one.
    pub key: Option<String>,
    /// The event the finding is about, if one.
    pub seq: Option<u64>,
    /// The finding in words, for people.
    pub message: String,
}

impl Finding {
    /// A finding about what the store step left (its objects, its manifest, the blob index),
    /// which no event of the history is about.
    pub fn of_store(
        kind: &'static str,
        severity: Severity,
        key: Option<String>,
        message: String,
    ) -> Finding {
        Finding {
            kind,
            severity,
            step: Some("store".to_string()),
            key,
            seq: None,
            message,
        }
    }
}

/// How one step went over the job's whole history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepCounts {
    /// `step_started` events: how many times the step executed.
    pub executed: u32,
    /// `step_completed` events: runs that recorded a checkpoint.
    pub completed: u32,
    /// `step_skipped` events: runs skipped because the checkpoint verified.
    pub skipped: u32,
    /// `step_failed` events.
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
    /// What the history supports, judged with other jobs' writes and the incident log.
    pub findings: Vec<Finding>,
    /// The history predates the audit events (`checkpoint_recorded`, `objects_written`).
    pub legacy: bool,
}

/// A write of a blob by some job, for comparing writes across jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobWrite {
    /// The job whose run wrote the blob.
    pub job_id: JobId,
    /// When the `objects_written` event was recorded.
    pub at: Timestamp,
    /// The blob's key (`blobs/...`).
    pub key: String,
}

/// The blob writes recorded in a history: those of the summary of its compacted events, then those
/// of the events still held.
pub fn blob_writes(
    job_id: JobId,
    summary: Option<&EventSummary>,
    events: &[Event],
) -> Vec<BlobWrite> {
    folded_blob_writes(&history::fold_all(job_id, summary, events))
}

/// The blob writes of a history already folded (`model::history::fold_all`).
pub fn folded_blob_writes(folded: &EventSummary) -> Vec<BlobWrite> {
    folded
        .audit
        .blob_writes
        .iter()
        .map(|write| BlobWrite {
            job_id: folded.job_id,
            at: write.at,
            key: write.key.clone(),
        })
        .collect()
}

/// Reads a whole job history (no event compacted): see [`analyze`].
pub fn analyze_history(
    job_id: JobId,
    events: &[Event],
    other_writes: &[BlobWrite],
    incidents: &[Incident],
) -> HistoryAnalysis {
    analyze(job_id, None, events, other_writes, incidents)
}

/// Reads a job's history, the summary of its compacted events first (`model::history`): the
/// per-step counts, this job's writes, and the findings the events alone support. `other_writes`
/// are blob writes by other jobs; `incidents` is the incident log. The answer does not depend on
/// how much of the history was compacted.
pub fn analyze(
    job_id: JobId,
    summary: Option<&EventSummary>,
    events: &[Event],
    other_writes: &[BlobWrite],
    incidents: &[Incident],
) -> HistoryAnalysis {
    evaluate(
        &history::fold_all(job_id, summary, events),
        other_writes,
        incidents,
    )
}

/// The findings of a folded history: what the fold met, worded, and each blob write judged
/// against the writes before it (this job's and other jobs') and the incident log.
pub fn evaluate(
    folded: &EventSummary,
    other_writes: &[BlobWrite],
    incidents: &[Incident],
) -> HistoryAnalysis {
    let job_id = folded.job_id;
    let audit = &folded.audit;
    let legacy = audit.saw_step_completed && !audit.saw_audit_events;
    let rerun_severity = if legacy {
        Severity::Warning
    } else {
        Severity::Violation
    };
    let count = |count: u64| u32::try_from(count).unwrap_or(u32::MAX);
    let steps = folded
        .steps
        .iter()
        .map(|step| {
            (
                step.step.clone(),
                StepCounts {
                    executed: count(step.executed),
                    completed: count(step.completed),
                    skipped: count(step.skipped),
                    failed: count(step.failed),
                    redone: count(step.redone),
                },
            )
        })
        .collect();
    let writes = history::writes(folded)
        .into_iter()
        .map(|(key, times)| (key, count(times)))
        .collect();

    let mut findings: Vec<Finding> = Vec::new();
    for found in &audit.findings {
        let step = found.step.as_str();
        let (kind, severity, message) = match &found.kind {
            HistoryFindingKind::RerunAfterSkip => (
                "rerun_after_skip",
                Severity::Violation,
                format!("step {step} ran after it was skipped as verified in the same run"),
            ),
            HistoryFindingKind::RerunWithoutCause => (
                "rerun_without_cause",
                rerun_severity,
                if legacy {
                    format!(
                        "step {step} ran again with no recorded cause (the history predates recorded causes)"
                    )
                } else {
                    format!(
                        "step {step} ran again though it had a checkpoint, and no cause was recorded"
                    )
                },
            ),
            HistoryFindingKind::RerunCauseFalse => (
                "rerun_cause_false",
                Severity::Violation,
                format!(
                    "step {step} ran again because an earlier step ran, but none ran in this run"
                ),
            ),
            HistoryFindingKind::RerunUnknownCause { cause } => (
                "rerun_without_cause",
                Severity::Warning,
                format!("step {step} ran again for an unknown cause {cause:?}"),
            ),
            HistoryFindingKind::OutputsDiffer {
                first_seq,
                first,
                outputs,
            } => {
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
                (
                    kind,
                    severity,
                    format!(
                        "step {step} recorded {} for the same definition and input as event {first_seq} ({}): {what}",
                        outputs_text(outputs),
                        outputs_text(first)
                    ),
                )
            }
        };
        findings.push(Finding {
            kind,
            severity,
            step: Some(found.step.clone()),
            key: None,
            seq: Some(found.seq),
            message,
        });
    }

    // Blob key -> when this job last wrote it.
    let mut own_writes: HashMap<&str, Timestamp> = HashMap::new();
    for write in &audit.blob_writes {
        let key = write.key.as_str();
        let own_prior = own_writes.get(key).map(|at| (*at, job_id));
        let other_prior = other_writes
            .iter()
            .filter(|other| other.key == key && other.job_id != job_id && other.at < write.at)
            .map(|other| (other.at, other.job_id))
            .max();
        let prior = own_prior.into_iter().chain(other_prior).max();
        if let Some((prior_at, prior_job)) = prior {
            let deleted_between = incidents.iter().any(|incident| {
                incident.key.as_deref() == Some(key)
                    && incident.action == "deleted_object"
                    && incident.at >= prior_at
                    && incident.at <= write.at
            });
            let by = if prior_job == job_id {
                "this job".to_string()
            } else {
                format!("job {prior_job}")
            };
            let (kind, severity, message) = if write.after_verification_failure || deleted_between {
                let why = if deleted_between {
                    "cleanup had deleted it"
                } else {
                    "a verification failure showed it missing or changed"
                };
                (
                    "object_restored",
                    Severity::Info,
                    format!("{key} was written again after {by} wrote it, once {why}"),
                )
            } else {
                (
                    "object_rewritten",
                    Severity::Violation,
                    format!(
                        "{key} was written again after {by} wrote it at {}, and nothing showed it missing or changed",
                        prior_at.to_rfc3339()
                    ),
                )
            };
            findings.push(Finding {
                kind,
                severity,
                step: Some(write.step.clone()),
                key: Some(write.key.clone()),
                seq: Some(write.seq),
                message,
            });
        }
        own_writes.insert(key, write.at);
    }
    // In history order, as the events met them (a stable sort keeps each event's own order).
    findings.sort_by_key(|finding| finding.seq);

    // What a compacted history counted beyond its bounds is said, not judged.
    let truncated = |message: String| Finding {
        kind: "history_truncated",
        severity: Severity::Warning,
        step: None,
        key: None,
        seq: None,
        message,
    };
    if audit.findings_dropped > 0 {
        findings.push(truncated(format!(
            "{} more findings of this history were counted but not kept (the first {} are)",
            audit.findings_dropped,
            history::HISTORY_FINDINGS_MAX
        )));
    }
    if audit.blob_writes_dropped > 0 {
        findings.push(truncated(format!(
            "the {} oldest blob writes of this history were counted but not kept: rewrites of them are not judged",
            audit.blob_writes_dropped
        )));
    }
    HistoryAnalysis {
        steps,
        writes,
        findings,
        legacy,
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
    /// The step's name in the workflow.
    pub step: String,
    /// How the step went over the whole history.
    pub counts: StepCounts,
    /// Its current checkpoint; `None` when it has none.
    pub checkpoint: Option<Checkpoint>,
}

/// The audit of one job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobAudit {
    /// The audited job as it was read.
    pub job: Job,
    /// The workflow's steps in order, then any other step the history names.
    pub steps: Vec<StepAudit>,
    /// How many times this job wrote each key.
    pub writes: BTreeMap<String, u32>,
    /// Shallow `verify`: does storage agree with the checkpoints?
    pub storage: JobVerification,
    /// What the history and the stores support, each with its severity.
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

#[cfg(test)]
mod tests {
    //! The history analysis on hand-written histories: a clean history has no finding, and each
    //! injected violation is named.

    use super::*;
    use crate::model::job::{ErrorInfo, EventKind, Status};

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

        fn start(&mut self, step: &str) -> &mut Self {
            self.push(EventKind::StepStarted { step: step.into() })
        }

        fn run(&mut self, step: &str, input: u8, outputs: &[(&str, u8)]) -> &mut Self {
            self.start(step).complete(step, input, outputs)
        }

        /// A step that has a checkpoint runs again for `cause`.
        fn rerun(
            &mut self,
            step: &str,
            cause: &str,
            input: u8,
            outputs: &[(&str, u8)],
        ) -> &mut Self {
            self.redo(step, cause).run(step, input, outputs)
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

        /// A history whose first run did download, extract and store.
        fn after_first_run() -> History {
            let mut history = History::default();
            history.first_run();
            history
        }

        /// The analysis of this history alone, with no other job's writes and no incident.
        fn analysis(&self) -> HistoryAnalysis {
            analyze_history(JOB, &self.events, &[], &[])
        }

        /// The store step runs again for `cause` on `input`, writes `keys`, and records the first
        /// run's outputs.
        fn store_again(&mut self, cause: &str, input: u8, keys: &[&str]) -> &mut Self {
            self.redo("store", cause)
                .start("store")
                .wrote(keys)
                .complete("store", input, &[("video", 10), ("audio", 20)])
        }

        /// download, extract and store, from nothing.
        fn first_run(&mut self) -> &mut Self {
            self.claim()
                .run("download", 1, &[("video", 10)])
                .run("extract", 2, &[("audio", 20)])
                .start("store")
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
        let mut history = History::after_first_run();
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
            .rerun("extract", "definition_changed", 2, &[("audio", 21)])
            .redo("store", "earlier_step_ran")
            .start("store")
            .wrote(&["blobs/cc/audio.flac", "jobs/1/manifest.json"])
            .complete("store", 4, &[("video", 10), ("audio", 21)]);

        let analysis = history.analysis();

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
        let mut history = History::after_first_run();
        history
            .claim()
            .skip("download")
            .skip("extract")
            .store_again("inputs_changed", 5, &["blobs/aa/video.mp4"]);

        let analysis = history.analysis();

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
        let mut history = History::after_first_run();
        history
            .claim()
            .rerun("download", "output_missing", 1, &[("video", 10)])
            .rerun("extract", "earlier_step_ran", 2, &[("audio", 20)])
            .store_again("earlier_step_ran", 3, &["blobs/aa/video.mp4"]);
        let analysis = history.analysis();
        assert_eq!(kinds(&analysis), vec![("object_restored", Severity::Info)]);

        // Another job wrote the blob first; cleanup deleted it in between.
        let history = History::after_first_run();
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
        let mut history = History::after_first_run();
        history
            .claim()
            .run("download", 1, &[("video", 10)])
            .claim()
            .skip("download")
            .rerun("extract", "earlier_step_ran", 2, &[("audio", 20)]);
        let analysis = history.analysis();
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
        let mut history = History::after_first_run();
        history
            .claim()
            .skip("download")
            .redo("download", "output_changed")
            .start("download");
        let analysis = history.analysis();
        assert_eq!(
            kinds(&analysis),
            vec![("rerun_after_skip", Severity::Violation)]
        );
    }

    #[test]
    fn different_outputs_for_the_same_input_are_named() {
        let mut history = History::after_first_run();
        history
            .claim()
            .rerun("download", "output_missing", 1, &[("video", 11)])
            .redo("extract", "earlier_step_ran")
            .start("extract")
            // Same input hash as the first run, other audio: extract is not deterministic.
            .complete("extract", 2, &[("audio", 29)]);
        let analysis = history.analysis();
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
        let mut history = History::after_first_run();
        history
            .push(EventKind::Reprobed {
                changes: vec!["duration_s".into()],
            })
            .claim()
            .rerun("download", "output_missing", 1, &[("video", 11)])
            .rerun("extract", "earlier_step_ran", 2, &[("audio", 29)]);
        let analysis = history.analysis();
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
}
