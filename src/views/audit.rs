//! What `narra audit` shows: per job, each step's runs and current checkpoint, whether storage
//! agrees, how often each object was written, and the findings.

use serde::Serialize;

use super::history::{KeyCount, StepCountsView};
use super::job::OutputView;
use super::verify::{ArtifactCheckView, artifact_checks};
use super::{Rfc3339, Text};
use crate::model::audit::{JobAudit, StepAudit, StepCounts};
use crate::model::job::{Checkpoint, Hash, JobId};

/// `{id, status, violations, steps, storage: {agrees, artifacts}, writes: [{key, count}],
/// findings: [{kind, severity, step, key, seq, message}]}`.
#[derive(Debug, Serialize)]
pub struct AuditView<'a> {
    /// The audited job's id.
    pub id: Text<JobId>,
    /// The job's status now: `pending`, `running`, `succeeded`, `failed` or `cancelled`.
    pub status: &'static str,
    /// Findings of severity `violation`: `narra audit` exits 1 when there is one.
    pub violations: usize,
    /// The workflow's steps in order, then any other step the history names.
    pub steps: Vec<AuditStepView<'a>>,
    /// Whether storage agrees with the checkpoints (a shallow `verify`: size and change token).
    pub storage: AuditStorageView<'a>,
    /// How many times this job wrote each object.
    pub writes: Vec<KeyCount<'a>>,
    /// Everything the audit found, each with its severity and what it is about.
    pub findings: Vec<FindingView<'a>>,
}

/// `{step, executed, completed, skipped, failed, redone, checkpoint}`.
#[derive(Debug, Serialize)]
pub struct AuditStepView<'a> {
    /// `step`, `executed`, `completed`, `skipped`, `failed` and `redone`, at the top level.
    #[serde(flatten)]
    pub counts: StepCountsView<'a>,
    /// The step's current checkpoint; `null` when it has none.
    pub checkpoint: Option<AuditCheckpointView<'a>>,
}

/// `{definition_hash, input_hash, recorded_at, outputs: [{name, location, size, blake3}]}`.
#[derive(Debug, Serialize)]
pub struct AuditCheckpointView<'a> {
    /// The blake3 of the step's definition, 64 hex digits.
    pub definition_hash: Text<Hash>,
    /// The blake3 of what the step read, 64 hex digits.
    pub input_hash: Text<Hash>,
    /// When the checkpoint was recorded.
    pub recorded_at: Rfc3339,
    /// Each output with its location, size in bytes and blake3.
    pub outputs: Vec<OutputView<'a>>,
}

/// Does storage agree with the checkpoints (a shallow `verify`)?
#[derive(Debug, Serialize)]
pub struct AuditStorageView<'a> {
    /// The store step completed and every artifact it recorded is found as recorded.
    pub agrees: bool,
    /// Each recorded artifact with what was found (`state`, `message`).
    pub artifacts: Vec<ArtifactCheckView<'a>>,
}

/// One thing the audit found (`engine::audit` lists the kinds).
#[derive(Debug, Serialize)]
pub struct FindingView<'a> {
    /// A stable code: `object_rewritten`, `rerun_without_cause`, `storage_disagrees`, ...
    pub kind: &'static str,
    /// `info`, `warning` or `violation`.
    pub severity: &'static str,
    /// The step it is about; `null` when it is about no one step.
    pub step: Option<&'a str>,
    /// The object it is about, if one.
    pub key: Option<&'a str>,
    /// The event it is about, if one.
    pub seq: Option<u64>,
    /// The finding in words.
    pub message: &'a str,
}

fn counts<'a>(step: &'a str, counts: &StepCounts) -> StepCountsView<'a> {
    StepCountsView {
        step,
        executed: u64::from(counts.executed),
        completed: u64::from(counts.completed),
        skipped: u64::from(counts.skipped),
        failed: u64::from(counts.failed),
        redone: u64::from(counts.redone),
    }
}

fn checkpoint(checkpoint: &Checkpoint) -> AuditCheckpointView<'_> {
    AuditCheckpointView {
        definition_hash: Text(checkpoint.definition_hash),
        input_hash: Text(checkpoint.input_hash),
        recorded_at: Rfc3339(checkpoint.recorded_at),
        outputs: checkpoint.outputs.iter().map(OutputView::of).collect(),
    }
}

fn step(step: &StepAudit) -> AuditStepView<'_> {
    AuditStepView {
        counts: counts(&step.step, &step.counts),
        checkpoint: step.checkpoint.as_ref().map(checkpoint),
    }
}

pub fn audit(audit: &JobAudit) -> AuditView<'_> {
    AuditView {
        id: Text(audit.job.id),
        status: audit.job.status.as_str(),
        violations: audit.violations(),
        steps: audit.steps.iter().map(step).collect(),
        storage: AuditStorageView {
            agrees: audit.storage.ok(),
            artifacts: artifact_checks(&audit.storage),
        },
        writes: audit
            .writes
            .iter()
            .map(|(key, count)| KeyCount {
                key,
                count: u64::from(*count),
            })
            .collect(),
        findings: audit
            .findings
            .iter()
            .map(|finding| FindingView {
                kind: finding.kind,
                severity: finding.severity.as_str(),
                step: finding.step.as_deref(),
                key: finding.key.as_deref(),
                seq: finding.seq,
                message: &finding.message,
            })
            .collect(),
    }
}

/// The audit of one job for people: a table of its steps, then storage, writes and findings.
pub fn audit_text(audit: &JobAudit) -> Vec<String> {
    let mut lines = vec![format!(
        "job {}  {}  {} violations",
        audit.job.id,
        audit.job.status,
        audit.violations()
    )];
    lines.push(format!(
        "  {:<9} {:>4} {:>4} {:>4} {:>4} {:>4}  {:<16}  outputs",
        "step", "runs", "done", "skip", "fail", "redo", "input"
    ));
    for step in &audit.steps {
        let (input, outputs) = match &step.checkpoint {
            Some(checkpoint) => (
                checkpoint.input_hash.to_hex()[..16].to_string(),
                checkpoint
                    .outputs
                    .iter()
                    .map(|output| format!("{} {}", output.name, &output.blake3.to_hex()[..16]))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            None => ("-".to_string(), "no checkpoint".to_string()),
        };
        lines.push(format!(
            "  {:<9} {:>4} {:>4} {:>4} {:>4} {:>4}  {input:<16}  {outputs}",
            step.step,
            step.counts.executed,
            step.counts.completed,
            step.counts.skipped,
            step.counts.failed,
            step.counts.redone,
        ));
    }
    let storage = if !audit.storage.stored {
        "nothing stored yet".to_string()
    } else if audit.storage.ok() {
        format!(
            "agrees ({} artifacts, shallow check)",
            audit.storage.artifacts.len()
        )
    } else {
        format!(
            "DISAGREES on {} of {} artifacts",
            audit.storage.problems().count(),
            audit.storage.artifacts.len()
        )
    };
    lines.push(format!("  storage   {storage}"));
    let rewritten: Vec<String> = audit
        .writes
        .iter()
        .filter(|(_, count)| **count > 1)
        .map(|(key, count)| format!("{key} x{count}"))
        .collect();
    lines.push(format!(
        "  writes    {} objects written{}",
        audit.writes.values().sum::<u32>(),
        if rewritten.is_empty() {
            String::new()
        } else {
            format!(" (more than once: {})", rewritten.join(", "))
        }
    ));
    for finding in &audit.findings {
        lines.push(format!(
            "  {:<9} {} {}",
            finding.severity.as_str(),
            finding.kind,
            finding.message
        ));
    }
    lines
}
