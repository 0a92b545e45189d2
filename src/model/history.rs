//! The fold of a job's event history into an [`EventSummary`]: what compaction keeps of the events
//! it removes, and what `narra audit` reads.
//!
//! One function, [`fold`], takes a summary and the next event and updates the summary. The store
//! calls it on the oldest events when a job's history outgrows its bound (`store::EVENTS_MAX`), in
//! the transaction that removes them; `engine::audit` calls it on the summary and the events still
//! held. Folding is sequential, so folding a prefix and then the rest is folding everything: an
//! audit reads the same state whether or not part of the history was compacted. The only loss is
//! bounded and reported: beyond [`BLOB_WRITES_KEPT_MAX`] blob writes and [`HISTORY_FINDINGS_MAX`]
//! findings, the surplus is counted rather than kept.
//!
//! Pure: no I/O, no clock.

use crate::model::job::{
    AuditState, BlobWriteRecord, Event, EventKind, EventSummary, HistoryFinding,
    HistoryFindingKind, JobId, RecordedOutputs, RunState, Status, StepSummary, Timestamp,
};

/// The most blob writes a summary keeps (the oldest go first). Each write of a blob after its
/// first is itself an audit finding, so a real history stays far below this.
pub const BLOB_WRITES_KEPT_MAX: usize = 256;

/// The most history findings a summary keeps (the first ones); later ones are only counted.
pub const HISTORY_FINDINGS_MAX: usize = 256;

/// The redo cause `narra retry --from STEP` records for each checkpoint it discards: the step no
/// longer has a checkpoint, so its next run is a first run, not a re-run.
pub const CHECKPOINT_DISCARDED: &str = "checkpoint_discarded";

/// Redo causes that mean an output failed verification: a rewrite in the same run is a repair.
pub const VERIFICATION_FAILURES: [&str; 2] = ["output_missing", "output_changed"];

/// Every cause narra records.
pub const KNOWN_CAUSES: [&str; 6] = [
    "definition_changed",
    "inputs_changed",
    "output_missing",
    "output_changed",
    "earlier_step_ran",
    CHECKPOINT_DISCARDED,
];

/// Only content-addressed keys are compared across writes: the key fixes the bytes.
pub const BLOB_PREFIX: &str = "blobs/";

/// The summary of no event at all.
pub fn empty(job_id: JobId) -> EventSummary {
    EventSummary {
        job_id,
        events_compacted: 0,
        first_at: Timestamp(0),
        last_at: Timestamp(0),
        kinds: Vec::new(),
        steps: Vec::new(),
        status: None,
        phase: None,
        audit: AuditState::default(),
    }
}

/// `summary` (or nothing) with `events` folded in, in order.
pub fn fold_all(job_id: JobId, summary: Option<&EventSummary>, events: &[Event]) -> EventSummary {
    let mut folded = summary.cloned().unwrap_or_else(|| empty(job_id));
    for event in events {
        fold(&mut folded, event);
    }
    folded
}

/// Folds the next event of the history into `summary`.
pub fn fold(summary: &mut EventSummary, event: &Event) {
    if summary.events_compacted == 0 {
        summary.first_at = event.at;
    }
    summary.events_compacted = summary.events_compacted.max(event.seq.saturating_add(1));
    summary.last_at = event.at;
    let name = event.kind.name();
    match summary.kinds.iter_mut().find(|(kind, _)| kind == name) {
        Some((_, count)) => *count += 1,
        None => summary.kinds.push((name.to_string(), 1)),
    }
    let audit = &mut summary.audit;
    match &event.kind {
        EventKind::StatusChanged { to, .. } => {
            summary.status = Some(*to);
            if *to == Status::Running {
                audit.run = RunState::default();
            }
        }
        EventKind::PhaseChanged { to, .. } => summary.phase = *to,
        EventKind::StepRedone { step, cause, .. } => {
            step_of(&mut summary.steps, step).redone += 1;
            if cause == CHECKPOINT_DISCARDED {
                audit.checkpointed.retain(|name| name != step);
            } else {
                if VERIFICATION_FAILURES.contains(&cause.as_str()) {
                    audit.run.verification_failed = true;
                }
                audit.run.redo_pending.retain(|(name, _)| name != step);
                audit.run.redo_pending.push((step.clone(), cause.clone()));
            }
        }
        EventKind::StepStarted { step } => {
            step_of(&mut summary.steps, step).executed += 1;
            let mut found = Vec::new();
            if audit.run.skipped.contains(step) {
                found.push(HistoryFindingKind::RerunAfterSkip);
            }
            let cause = audit
                .run
                .redo_pending
                .iter()
                .position(|(name, _)| name == step)
                .map(|index| audit.run.redo_pending.remove(index).1);
            if audit.checkpointed.contains(step) {
                match cause.as_deref() {
                    None => found.push(HistoryFindingKind::RerunWithoutCause),
                    Some("earlier_step_ran") if audit.run.started.is_empty() => {
                        found.push(HistoryFindingKind::RerunCauseFalse)
                    }
                    Some(cause) if !KNOWN_CAUSES.contains(&cause) => {
                        found.push(HistoryFindingKind::RerunUnknownCause {
                            cause: cause.to_string(),
                        })
                    }
                    Some(_) => {}
                }
            }
            audit.run.started.push(step.clone());
            for kind in found {
                let finding = HistoryFinding {
                    seq: event.seq,
                    step: step.clone(),
                    kind,
                };
                push_finding(audit, finding);
            }
        }
        EventKind::StepCompleted { step, .. } => {
            step_of(&mut summary.steps, step).completed += 1;
            audit.saw_step_completed = true;
            if !audit.checkpointed.contains(step) {
                audit.checkpointed.push(step.clone());
            }
        }
        EventKind::StepSkipped { step, .. } => {
            step_of(&mut summary.steps, step).skipped += 1;
            if !audit.run.skipped.contains(step) {
                audit.run.skipped.push(step.clone());
            }
        }
        EventKind::StepFailed { step, .. } => step_of(&mut summary.steps, step).failed += 1,
        EventKind::CheckpointRecorded {
            step,
            definition_hash,
            input_hash,
            outputs,
        } => {
            audit.saw_audit_events = true;
            let mut outputs = outputs.clone();
            outputs.sort();
            let first = audit.recorded.iter().find(|recorded| {
                recorded.step == *step
                    && recorded.definition_hash == *definition_hash
                    && recorded.input_hash == *input_hash
            });
            match first {
                None => audit.recorded.push(RecordedOutputs {
                    step: step.clone(),
                    definition_hash: *definition_hash,
                    input_hash: *input_hash,
                    seq: event.seq,
                    outputs,
                }),
                Some(first) if first.outputs != outputs => {
                    let finding = HistoryFinding {
                        seq: event.seq,
                        step: step.clone(),
                        kind: HistoryFindingKind::OutputsDiffer {
                            first_seq: first.seq,
                            first: first.outputs.clone(),
                            outputs,
                        },
                    };
                    push_finding(audit, finding);
                }
                Some(_) => {}
            }
        }
        EventKind::Reprobed { .. } => {
            // `reprobe` re-derived the metadata record on purpose: the extract step's recorded
            // outputs start a new baseline, so a later extraction is compared with it afresh.
            audit.recorded.retain(|recorded| recorded.step != "extract");
        }
        EventKind::ObjectsWritten { step, keys } => {
            audit.saw_audit_events = true;
            let step_summary = step_of(&mut summary.steps, step);
            for key in keys {
                match step_summary
                    .objects_written
                    .iter_mut()
                    .find(|(written, _)| written == key)
                {
                    Some((_, count)) => *count += 1,
                    None => step_summary.objects_written.push((key.clone(), 1)),
                }
                if !key.starts_with(BLOB_PREFIX) {
                    continue;
                }
                if audit.blob_writes.len() >= BLOB_WRITES_KEPT_MAX {
                    audit.blob_writes.remove(0);
                    audit.blob_writes_dropped += 1;
                }
                audit.blob_writes.push(BlobWriteRecord {
                    seq: event.seq,
                    at: event.at,
                    step: step.clone(),
                    key: key.clone(),
                    after_verification_failure: audit.run.verification_failed,
                });
            }
        }
        EventKind::Submitted { .. }
        | EventKind::RetryRequested { .. }
        | EventKind::CancelRequested
        | EventKind::AudioSelected { .. } => {}
    }
}

fn push_finding(audit: &mut AuditState, finding: HistoryFinding) {
    if audit.findings.len() < HISTORY_FINDINGS_MAX {
        audit.findings.push(finding);
    } else {
        audit.findings_dropped += 1;
    }
}

/// The summary of `step`, added on first sight.
fn step_of<'a>(steps: &'a mut Vec<StepSummary>, step: &str) -> &'a mut StepSummary {
    let index = match steps.iter().position(|summary| summary.step == step) {
        Some(index) => index,
        None => {
            steps.push(StepSummary {
                step: step.to_string(),
                ..StepSummary::default()
            });
            steps.len() - 1
        }
    };
    &mut steps[index]
}

/// Every object key the summary's steps wrote, with how many times, over all steps.
pub fn writes(summary: &EventSummary) -> std::collections::BTreeMap<String, u64> {
    let mut writes = std::collections::BTreeMap::new();
    for step in &summary.steps {
        for (key, count) in &step.objects_written {
            *writes.entry(key.clone()).or_insert(0) += count;
        }
    }
    writes
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::model::job::{ErrorInfo, Hash, Phase};

    fn event(seq: u64, kind: EventKind) -> Event {
        Event {
            seq,
            at: Timestamp(1_000 + i64::try_from(seq).expect("small")),
            kind,
        }
    }

    // Guards the promise compaction rests on: folding a history in two parts, with the summary of
    // the first in between, is folding it whole.
    proptest! {
        #[test]
        fn folding_a_prefix_then_the_rest_is_folding_everything(
            kinds in prop::collection::vec(event_kind(), 0..80),
            split in 0usize..80,
        ) {
            let events: Vec<Event> = kinds
                .into_iter()
                .enumerate()
                .map(|(seq, kind)| event(u64::try_from(seq).expect("small"), kind))
                .collect();
            let split = split.min(events.len());
            let whole = fold_all(JobId(1), None, &events);
            let prefix = fold_all(JobId(1), None, &events[..split]);
            // What compaction stores is this summary; `store::codec` proves it reads back equal.
            let resumed = fold_all(JobId(1), Some(&prefix), &events[split..]);
            prop_assert_eq!(resumed, whole);
        }
    }

    /// Events from a small vocabulary, so that steps, hashes and keys repeat and the fold's
    /// findings are reached.
    fn event_kind() -> impl Strategy<Value = EventKind> {
        let step = || prop::sample::select(vec!["download", "extract", "store"]);
        let hash = || (0u8..3).prop_map(|byte| Hash([byte; 32]));
        let cause = prop::sample::select(vec![
            "output_missing",
            "output_changed",
            "earlier_step_ran",
            "definition_changed",
            CHECKPOINT_DISCARDED,
            "made_up",
        ]);
        let key = prop::sample::select(vec![
            "blobs/aa/a.mp4",
            "blobs/bb/b.m4a",
            "jobs/1/manifest.json",
        ]);
        prop_oneof![
            3 => Just(EventKind::StatusChanged {
                from: Some(Status::Pending),
                to: Status::Running,
                reason: "claimed".into(),
            }),
            1 => Just(EventKind::StatusChanged {
                from: Some(Status::Running),
                to: Status::Succeeded,
                reason: "done".into(),
            }),
            1 => Just(EventKind::PhaseChanged { from: None, to: Some(Phase::Storing) }),
            4 => step().prop_map(|step| EventKind::StepStarted { step: step.into() }),
            3 => step().prop_map(|step| EventKind::StepCompleted { step: step.into(), outputs: 1 }),
            2 => step().prop_map(|step| EventKind::StepSkipped {
                step: step.into(),
                reason: "checkpoint verified".into(),
            }),
            1 => step().prop_map(|step| EventKind::StepFailed {
                step: step.into(),
                error: ErrorInfo { class: "network_error".into(), message: "x".into() },
            }),
            2 => (step(), cause).prop_map(|(step, cause)| EventKind::StepRedone {
                step: step.into(),
                cause: cause.into(),
                reason: "because".into(),
            }),
            2 => prop::collection::vec(key, 0..3).prop_map(|keys| EventKind::ObjectsWritten {
                step: "store".into(),
                keys: keys.into_iter().map(str::to_string).collect(),
            }),
            3 => (step(), hash(), hash()).prop_map(|(step, input, output)| {
                EventKind::CheckpointRecorded {
                    step: step.into(),
                    definition_hash: Hash([9; 32]),
                    input_hash: input,
                    outputs: vec![("out".into(), output)],
                }
            }),
            1 => Just(EventKind::Reprobed { changes: Vec::new() }),
            1 => Just(EventKind::CancelRequested),
        ]
    }

    // Guards the bounds: a history of many blob writes keeps the newest BLOB_WRITES_KEPT_MAX and
    // counts the rest, so a summary cannot grow without limit.
    #[test]
    fn blob_writes_beyond_the_bound_are_counted_not_kept() {
        let events: Vec<Event> = (0..BLOB_WRITES_KEPT_MAX as u64 + 10)
            .map(|seq| {
                event(
                    seq,
                    EventKind::ObjectsWritten {
                        step: "store".into(),
                        keys: vec![format!("blobs/00/{seq}.mp4")],
                    },
                )
            })
            .collect();
        let folded = fold_all(JobId(1), None, &events);
        assert_eq!(folded.audit.blob_writes.len(), BLOB_WRITES_KEPT_MAX);
        assert_eq!(folded.audit.blob_writes_dropped, 10);
        assert_eq!(folded.audit.blob_writes[0].key, "blobs/00/10.mp4");
        assert_eq!(folded.events_compacted, BLOB_WRITES_KEPT_MAX as u64 + 10);
        assert_eq!(
            folded.kinds,
            vec![(
                "objects_written".to_string(),
                BLOB_WRITES_KEPT_MAX as u64 + 10
            )]
        );
    }

    // Guards `retry --from`: a discarded checkpoint makes the step's next run a first run, so it
    // is no re-run without a cause.
    #[test]
    fn a_discarded_checkpoint_makes_the_next_run_a_first_run() {
        let events = [
            event(
                0,
                EventKind::StepStarted {
                    step: "extract".into(),
                },
            ),
            event(
                1,
                EventKind::StepCompleted {
                    step: "extract".into(),
                    outputs: 1,
                },
            ),
            event(
                2,
                EventKind::StepRedone {
                    step: "extract".into(),
                    cause: CHECKPOINT_DISCARDED.into(),
                    reason: "retry --from extract".into(),
                },
            ),
            event(
                3,
                EventKind::StatusChanged {
                    from: Some(Status::Pending),
                    to: Status::Running,
                    reason: "claimed".into(),
                },
            ),
            event(
                4,
                EventKind::StepStarted {
                    step: "extract".into(),
                },
            ),
        ];
        let folded = fold_all(JobId(1), None, &events);
        assert_eq!(folded.audit.findings, vec![]);
        assert_eq!(folded.steps[0].executed, 2);
        assert_eq!(folded.steps[0].redone, 1);
        assert_eq!(folded.status, Some(Status::Running));

        // Without the discard, the same run is a re-run with no cause.
        let mut kept: Vec<Event> = events.to_vec();
        kept.remove(2);
        let folded = fold_all(JobId(1), None, &kept);
        assert_eq!(
            folded.audit.findings[0].kind,
            HistoryFindingKind::RerunWithoutCause
        );
    }
}
