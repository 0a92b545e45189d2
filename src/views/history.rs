//! A job's history as people and programs see it: its events, the summary of the events
//! compaction folded away, and its own log lines (`show`, `GET /jobs/{id}/events`, `logs`).

use std::collections::BTreeMap;

use serde::Serialize;

use super::job::ErrorView;
use super::{Rfc3339, Text};
use crate::model::job::{Event, EventKind, EventSummary, Hash, LogLine, Phase, Status};

/// `{events_compacted, events_summary, events}`: the history `show` and
/// `GET /jobs/{id}/events` show.
#[derive(Debug, Serialize)]
pub struct HistoryView<'a> {
    /// How many of the oldest events compaction folded into `events_summary`; 0 when none were.
    pub events_compacted: u64,
    /// What the folded events left; `null` when none were compacted.
    pub events_summary: Option<EventSummaryView<'a>>,
    /// The events still held, oldest first; at most 1,000, older ones are folded away.
    pub events: Vec<EventView<'a>>,
}

pub fn history<'a>(summary: Option<&'a EventSummary>, events: &'a [Event]) -> HistoryView<'a> {
    HistoryView {
        events_compacted: summary.map_or(0, |summary| summary.events_compacted),
        events_summary: summary.map(event_summary),
        events: events.iter().map(event_view).collect(),
    }
}

/// `{seq, at, kind, ...}`: the fields after `kind` are the kind's.
#[derive(Debug, Serialize)]
pub struct EventView<'a> {
    /// The event's place in the job's history, from 0.
    pub seq: u64,
    /// When the event happened.
    pub at: Rfc3339,
    /// `submitted`, `status_changed`, `step_started`, ... (`EventKind::name`).
    pub kind: &'static str,
    /// The kind's own fields, at the top level (none for `cancel_requested`).
    #[serde(flatten)]
    pub detail: EventDetail<'a>,
}

pub fn event_view(event: &Event) -> EventView<'_> {
    EventView {
        seq: event.seq,
        at: Rfc3339(event.at),
        kind: event.kind.name(),
        detail: EventDetail::of(&event.kind),
    }
}

/// What an event of each kind says besides its kind (`EventKind::name`).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum EventDetail<'a> {
    Submitted {
        /// The source as submitted, its secrets redacted.
        source: &'a str,
        /// The name of the workflow the job runs.
        workflow: &'a str,
    },
    StatusChanged {
        /// The status before; `null` for the job's first status.
        from: Option<&'static str>,
        /// `pending`, `running`, `succeeded`, `failed` or `cancelled`.
        to: &'static str,
        /// Why, in words (`submitted`, `claimed by host:pid:n`, `all steps done`, ...).
        reason: &'a str,
    },
    PhaseChanged {
        /// `downloading`, `processing`, `storing`, or `null` when the job was not running.
        from: Option<&'static str>,
        /// `downloading`, `processing`, `storing`, or `null` when the job stops running.
        to: Option<&'static str>,
    },
    StepStarted {
        /// The step's name in the workflow (`download`, `extract`, `store`).
        step: &'a str,
    },
    StepCompleted {
        /// The step's name in the workflow.
        step: &'a str,
        /// How many outputs the step's checkpoint recorded.
        outputs: u32,
    },
    StepSkipped {
        /// The step's name in the workflow.
        step: &'a str,
        /// Why the step did not run (its checkpoint verified), in words.
        reason: &'a str,
    },
    StepFailed {
        /// The step's name in the workflow.
        step: &'a str,
        /// The step's error class and message.
        error: ErrorView<'a>,
    },
    RetryRequested {
        /// Who asked, or why, in words.
        reason: &'a str,
    },
    CancelRequested {},
    AudioSelected(AudioSelection<'a>),
    Reprobed {
        /// Each difference from the replaced metadata record, as `field: old -> new`; empty when it
        /// was right.
        changes: &'a [String],
    },
    StepRedone {
        /// The step that runs again.
        step: &'a str,
        /// A stable code: `definition_changed`, `inputs_changed`, `output_missing`,
        /// `output_changed`, `earlier_step_ran` or `checkpoint_discarded`.
        cause: &'a str,
        /// The cause in words.
        reason: &'a str,
    },
    ObjectsWritten {
        /// The step whose run wrote them.
        step: &'a str,
        /// The object keys this run wrote, not those it found stored already with their bytes.
        keys: &'a [String],
    },
    CheckpointRecorded(CheckpointRecord<'a>),
}

/// The audio stream the extract step chose and how it writes it.
#[derive(Debug, Serialize)]
pub struct AudioSelection<'a> {
    /// The chosen stream's index, as ffprobe numbers the streams.
    pub stream_index: u32,
    /// The stream's codec as ffprobe names it (`aac`, `opus`, ...).
    pub codec: &'a str,
    /// The stream's language tag, when the container has one.
    pub language: Option<&'a str>,
    /// `copy`, or what it is transcoded to (`flac`, `wav`, `opus`, `mp3`).
    pub output: &'a str,
    /// The audio file's container, as its extension.
    pub container: &'a str,
    /// Why this stream and this output, in words.
    pub reason: &'a str,
}

/// The hashes a checkpoint recorded.
#[derive(Debug, Serialize)]
pub struct CheckpointRecord<'a> {
    /// The step whose checkpoint was recorded.
    pub step: &'a str,
    /// The blake3 of the step's definition, 64 hex digits.
    pub definition_hash: Text<Hash>,
    /// The blake3 of what the step read, 64 hex digits.
    pub input_hash: Text<Hash>,
    /// Each output's name and blake3: what `audit` compares across runs.
    pub outputs: Vec<NamedHash<'a>>,
}

/// `{name, blake3}` of a recorded output.
#[derive(Debug, Serialize)]
pub struct NamedHash<'a> {
    /// The output's name (`video`, `audio`, `metadata`, ...).
    pub name: &'a str,
    /// The output's blake3, 64 hex digits.
    pub blake3: Text<Hash>,
}

impl EventDetail<'_> {
    pub fn of(kind: &EventKind) -> EventDetail<'_> {
        match kind {
            EventKind::Submitted { source, workflow } => {
                EventDetail::Submitted { source, workflow }
            }
            EventKind::StatusChanged { from, to, reason } => EventDetail::StatusChanged {
                from: from.map(Status::as_str),
                to: to.as_str(),
                reason,
            },
            EventKind::PhaseChanged { from, to } => EventDetail::PhaseChanged {
                from: from.map(Phase::as_str),
                to: to.map(Phase::as_str),
            },
            EventKind::StepStarted { step } => EventDetail::StepStarted { step },
            EventKind::StepCompleted { step, outputs } => EventDetail::StepCompleted {
                step,
                outputs: *outputs,
            },
            EventKind::StepSkipped { step, reason } => EventDetail::StepSkipped { step, reason },
            EventKind::StepFailed { step, error } => EventDetail::StepFailed {
                step,
                error: ErrorView::of(error),
            },
            EventKind::RetryRequested { reason } => EventDetail::RetryRequested { reason },
            EventKind::CancelRequested => EventDetail::CancelRequested {},
            EventKind::AudioSelected(selection) => EventDetail::AudioSelected(AudioSelection {
                stream_index: selection.stream_index,
                codec: &selection.codec,
                language: selection.language.as_deref(),
                output: &selection.output,
                container: &selection.container,
                reason: &selection.reason,
            }),
            EventKind::Reprobed { changes } => EventDetail::Reprobed { changes },
            EventKind::StepRedone {
                step,
                cause,
                reason,
            } => EventDetail::StepRedone {
                step,
                cause,
                reason,
            },
            EventKind::ObjectsWritten { step, keys } => EventDetail::ObjectsWritten { step, keys },
            EventKind::CheckpointRecorded {
                step,
                definition_hash,
                input_hash,
                outputs,
            } => EventDetail::CheckpointRecorded(CheckpointRecord {
                step,
                definition_hash: Text(*definition_hash),
                input_hash: Text(*input_hash),
                outputs: outputs
                    .iter()
                    .map(|(name, blake3)| NamedHash {
                        name,
                        blake3: Text(*blake3),
                    })
                    .collect(),
            }),
        }
    }
}

/// An event for people: one line after its time.
pub fn event_text(detail: &EventDetail<'_>) -> String {
    let short = |hash: &Hash| hash.to_hex()[..16].to_string();
    match detail {
        EventDetail::Submitted { source, workflow } => format!("submitted {source} ({workflow})"),
        EventDetail::StatusChanged { from, to, reason } => {
            format!("status {} -> {to} ({reason})", from.unwrap_or("none"))
        }
        EventDetail::PhaseChanged { from, to } => format!(
            "ingestion_phase {} -> {}",
            from.unwrap_or("null"),
            to.unwrap_or("null")
        ),
        EventDetail::StepStarted { step } => format!("step {step} started"),
        EventDetail::StepCompleted { step, outputs } => {
            format!("step {step} completed ({outputs} outputs checkpointed)")
        }
        EventDetail::StepSkipped { step, reason } => format!("step {step} skipped ({reason})"),
        EventDetail::StepFailed { step, error } => {
            format!("step {step} failed [{}] {}", error.class, error.message)
        }
        EventDetail::RetryRequested { reason } => format!("retry requested ({reason})"),
        EventDetail::CancelRequested {} => "cancel requested".to_string(),
        EventDetail::AudioSelected(audio) => format!(
            "audio stream {} ({}{}) -> {} .{} ({})",
            audio.stream_index,
            audio.codec,
            audio
                .language
                .map(|language| format!(", {language}"))
                .unwrap_or_default(),
            audio.output,
            audio.container,
            audio.reason
        ),
        EventDetail::Reprobed { changes: [] } => {
            "reprobed: the metadata record is unchanged".to_string()
        }
        EventDetail::Reprobed { changes } => {
            format!(
                "reprobed: {} changed: {}",
                changes.len(),
                changes.join("; ")
            )
        }
        EventDetail::StepRedone {
            step,
            cause,
            reason,
        } => format!("step {step} runs again [{cause}] {reason}"),
        EventDetail::ObjectsWritten { step, keys } => {
            format!(
                "step {step} wrote {} objects: {}",
                keys.len(),
                keys.join(", ")
            )
        }
        EventDetail::CheckpointRecorded(record) => format!(
            "checkpoint {}: input {} -> {}",
            record.step,
            short(&record.input_hash.0),
            record
                .outputs
                .iter()
                .map(|output| format!("{} {}", output.name, short(&output.blake3.0)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// How one step went: `{step, executed, completed, skipped, failed, redone}`, as the summary of a
/// compacted history and `audit` count them.
#[derive(Debug, Serialize)]
pub struct StepCountsView<'a> {
    /// The step's name in the workflow.
    pub step: &'a str,
    /// `step_started` events: how many times the step ran.
    pub executed: u64,
    /// `step_completed` events: runs that recorded a checkpoint.
    pub completed: u64,
    /// Skipped because its checkpoint verified.
    pub skipped: u64,
    /// `step_failed` events.
    pub failed: u64,
    /// Runs of a step that had a checkpoint (`step_redone`).
    pub redone: u64,
}

/// `{key, count}`: how many times an object was written.
#[derive(Debug, Serialize)]
pub struct KeyCount<'a> {
    /// The object's key in storage.
    pub key: &'a str,
    /// How many times it was written; above 1, the same key was written again.
    pub count: u64,
}

/// `{events, first_at, last_at, kinds: {kind: count}, steps: [{step, executed, completed,
/// skipped, failed, redone, objects_written: [{key, count}]}], status, ingestion_phase}`: what the
/// compacted events left.
#[derive(Debug, Serialize)]
pub struct EventSummaryView<'a> {
    /// How many events were folded in.
    pub events: u64,
    /// When the oldest folded event happened.
    pub first_at: Rfc3339,
    /// When the newest folded event happened.
    pub last_at: Rfc3339,
    /// How many folded events of each kind.
    pub kinds: BTreeMap<&'a str, u64>,
    /// Per step, in the order steps first appear in the history.
    pub steps: Vec<StepSummaryView<'a>>,
    /// The status and phase the history had reached at its last folded event.
    pub status: Option<&'static str>,
    /// `null` when the job was not running at that event.
    pub ingestion_phase: Option<&'static str>,
}

/// How one step went over the folded events, and the objects it wrote.
#[derive(Debug, Serialize)]
pub struct StepSummaryView<'a> {
    /// `step`, `executed`, `completed`, `skipped`, `failed` and `redone`, at the top level.
    #[serde(flatten)]
    pub counts: StepCountsView<'a>,
    /// Each object key a run of this step wrote, with how many times.
    pub objects_written: Vec<KeyCount<'a>>,
}

pub fn event_summary(summary: &EventSummary) -> EventSummaryView<'_> {
    EventSummaryView {
        events: summary.events_compacted,
        first_at: Rfc3339(summary.first_at),
        last_at: Rfc3339(summary.last_at),
        kinds: summary
            .kinds
            .iter()
            .map(|(kind, count)| (kind.as_str(), *count))
            .collect(),
        steps: summary
            .steps
            .iter()
            .map(|step| StepSummaryView {
                counts: StepCountsView {
                    step: &step.step,
                    executed: step.executed,
                    completed: step.completed,
                    skipped: step.skipped,
                    failed: step.failed,
                    redone: step.redone,
                },
                objects_written: step
                    .objects_written
                    .iter()
                    .map(|(key, count)| KeyCount { key, count: *count })
                    .collect(),
            })
            .collect(),
        status: summary.status.map(Status::as_str),
        ingestion_phase: summary.phase.map(Phase::as_str),
    }
}

/// The summary for people: one line for the span, one per step.
pub fn event_summary_text(summary: &EventSummary) -> Vec<String> {
    let mut lines = vec![format!(
        "  {} older events compacted ({} to {}):",
        summary.events_compacted,
        summary.first_at.to_rfc3339(),
        summary.last_at.to_rfc3339()
    )];
    for step in &summary.steps {
        let written: u64 = step.objects_written.iter().map(|(_, count)| count).sum();
        lines.push(format!(
            "    step {:<9} executed {}, completed {}, skipped {}, failed {}, redone {}; {} object writes",
            step.step, step.executed, step.completed, step.skipped, step.failed, step.redone, written
        ));
    }
    lines
}

/// `{at, level, message}`: one line of a job's own log.
#[derive(Debug, Serialize)]
pub struct LogLineView<'a> {
    /// When the line was logged.
    pub at: Rfc3339,
    /// `ERROR`, `WARN`, `INFO`, `DEBUG` or `TRACE`.
    pub level: &'a str,
    /// The message, followed by the event's fields.
    pub message: &'a str,
}

impl LogLineView<'_> {
    pub fn of(line: &LogLine) -> LogLineView<'_> {
        LogLineView {
            at: Rfc3339(line.at),
            level: &line.level,
            message: &line.message,
        }
    }
}

/// `GET /jobs/{id}/logs`: `{lines: [{at, level, message}]}`.
#[derive(Debug, Serialize)]
pub struct LogsView<'a> {
    /// The job's log lines, oldest first; a finished job keeps its last 2,000.
    pub lines: Vec<LogLineView<'a>>,
}

pub fn logs(lines: &[LogLine]) -> LogsView<'_> {
    LogsView {
        lines: lines.iter().map(LogLineView::of).collect(),
    }
}

pub fn log_line_text(line: &LogLine) -> String {
    format!(
        "{} {:>5} {}",
        line.at.to_rfc3339(),
        line.level,
        line.message
    )
}
