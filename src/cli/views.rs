//! The shapes users see: JSON objects for `--json` and lines of text for people.
//!
//! Stored records are bincode-friendly plain data; these functions turn them into the documented
//! JSON contract (`docs/CLI.md` in the README), so a change of storage never changes what users parse.

use serde_json::{Value, json};

use crate::model::job::{
    ChangeToken, Checkpoint, Event, EventKind, EventSummary, Job, JobProgress, LogLine,
    MediaMetadata, Phase, StepOutput, Webhook,
};
use crate::model::redact::redact_url;
use crate::steps::extract::metadata_json;

/// A default key is `<workflow>:<normalised source>`: redact the URL part.
pub fn redact_url_in_key(key: &str) -> String {
    match key.split_once(':') {
        Some((workflow, rest)) if rest.contains("://") => {
            format!("{workflow}:{}", redact_url(rest))
        }
        _ => redact_url(key),
    }
}

/// `{id, source, status, ingestion_phase, error, lease}`: what `ingest`, `submit`, `retry`, `jobs`
/// print. `lease` says which worker (`host:pid`) holds a running job, so a fleet's jobs can be
/// told apart by machine and process.
pub fn job_summary(job: &Job) -> Value {
    json!({
        "id": job.id.to_string(),
        "source": redact_url(&job.source),
        "status": job.status.as_str(),
        "ingestion_phase": job.ingestion_phase.map(|phase| phase.as_str()),
        "attempts": job.attempts,
        "priority": job.priority,
        "not_before": job.not_before.map(|at| at.to_rfc3339()),
        "error": error_json(job),
        "lease": lease_json(job),
    })
}

/// `{worker_id, fencing_token, expires_at}` of a job's lease, or null.
fn lease_json(job: &Job) -> Value {
    match &job.lease {
        Some(lease) => json!({
            "worker_id": lease.worker_id.0,
            "fencing_token": lease.fencing_token,
            "expires_at": lease.expires_at.to_rfc3339(),
        }),
        None => Value::Null,
    }
}

fn error_json(job: &Job) -> Value {
    match &job.error {
        Some(error) => json!({"class": error.class, "message": error.message}),
        None => Value::Null,
    }
}

/// A job's event history as the store keeps it: the summary of its compacted events, if any, and
/// the events it still holds.
#[derive(Debug, Clone, Copy)]
pub struct History<'a> {
    pub summary: Option<&'a EventSummary>,
    pub events: &'a [Event],
}

/// The whole job, as `show --json` prints it. `events` lists the events still held;
/// `events_compacted` says how many older ones were folded into `events_summary`.
pub fn job_detail(
    job: &Job,
    checkpoints: &[Checkpoint],
    metadata: Option<&MediaMetadata>,
    history: &History<'_>,
) -> Value {
    json!({
        "id": job.id.to_string(),
        "key": redact_url_in_key(&job.key),
        "source": redact_url(&job.source),
        "workflow": job.workflow,
        "status": job.status.as_str(),
        "ingestion_phase": job.ingestion_phase.map(|phase| phase.as_str()),
        "attempts": job.attempts,
        "priority": job.priority,
        // A pending job is not claimed before this: an automatic retry's delay.
        "not_before": job.not_before.map(|at| at.to_rfc3339()),
        "crashes": job.crashes.map(|record| json!({
            "count": record.count,
            "phase": record.marker.phase.map(|phase| phase.as_str()),
            "checkpoints": record.marker.checkpoints,
            "bytes_done": record.marker.bytes_done,
        })),
        "error": error_json(job),
        "created_at": job.created_at.to_rfc3339(),
        "updated_at": job.updated_at.to_rfc3339(),
        "lease": lease_json(job),
        "cancel_requested": job.cancel_requested,
        "checkpoints": checkpoints.iter().map(checkpoint_json).collect::<Vec<_>>(),
        "artifacts": artifacts(checkpoints),
        "manifest": checkpoints
            .iter()
            .find(|checkpoint| checkpoint.step == "store")
            .and_then(|checkpoint| checkpoint.output("manifest"))
            .map(location_text),
        "metadata": metadata.map(metadata_json),
        "events_compacted": history.summary.map_or(0, |summary| summary.events_compacted),
        "events_summary": history.summary.map(event_summary_json),
        "events": history.events.iter().map(event_json).collect::<Vec<_>>(),
    })
}

/// `{url, pending: {delivery_id, status, attempts, next_attempt_at} | null, deliveries: [{delivery_id,
/// status, attempt, at, status_code, error, ok, gave_up}]}` (the URL redacted), or null for a job
/// without a webhook: `show --json`'s and `GET /jobs/{id}`'s `webhook`.
pub fn webhook_json(webhook: Option<&Webhook>) -> Value {
    let Some(webhook) = webhook else {
        return Value::Null;
    };
    json!({
        "url": redact_url(&webhook.url),
        "pending": webhook.pending.as_ref().map(|notice| json!({
            "delivery_id": notice.delivery_id.to_string(),
            "status": notice.status.as_str(),
            "attempts": notice.attempts,
            "next_attempt_at": notice.next_attempt_at.to_rfc3339(),
        })),
        "deliveries": webhook.deliveries.iter().map(|delivery| json!({
            "delivery_id": delivery.delivery_id.to_string(),
            "status": delivery.status.as_str(),
            "attempt": delivery.attempt,
            "at": delivery.at.to_rfc3339(),
            "status_code": delivery.status_code,
            "error": delivery.error,
            "ok": delivery.ok,
            "gave_up": delivery.gave_up,
        })).collect::<Vec<_>>(),
    })
}

/// The webhook lines of `show`: the URL, the notice waiting, then each attempt.
pub fn webhook_text(webhook: &Webhook) -> Vec<String> {
    let mut lines = vec![format!("webhook          {}", redact_url(&webhook.url))];
    if let Some(notice) = &webhook.pending {
        lines.push(format!(
            "  pending        {} notice {}, {} attempts so far, next at {}",
            notice.status,
            notice.delivery_id,
            notice.attempts,
            notice.next_attempt_at.to_rfc3339()
        ));
    }
    for delivery in &webhook.deliveries {
        let outcome = match (&delivery.error, delivery.status_code) {
            (None, Some(code)) => format!("delivered ({code})"),
            (None, None) => "delivered".to_string(),
            (Some(error), _) if delivery.gave_up => format!("failed, gave up: {error}"),
            (Some(error), _) => format!("failed: {error}"),
        };
        lines.push(format!(
            "  delivery       {} {} notice {} attempt {}: {outcome}",
            delivery.at.to_rfc3339(),
            delivery.status,
            delivery.delivery_id,
            delivery.attempt
        ));
    }
    lines
}

/// `{events, first_at, last_at, kinds: {kind: count}, steps: [{step, executed, completed,
/// skipped, failed, redone, objects_written: [{key, count}]}], status, ingestion_phase}`: what the
/// compacted events left.
pub fn event_summary_json(summary: &EventSummary) -> Value {
    json!({
        "events": summary.events_compacted,
        "first_at": summary.first_at.to_rfc3339(),
        "last_at": summary.last_at.to_rfc3339(),
        "kinds": summary
            .kinds
            .iter()
            .map(|(kind, count)| (kind.clone(), json!(count)))
            .collect::<serde_json::Map<String, Value>>(),
        "steps": summary.steps.iter().map(|step| json!({
            "step": step.step,
            "executed": step.executed,
            "completed": step.completed,
            "skipped": step.skipped,
            "failed": step.failed,
            "redone": step.redone,
            "objects_written": step.objects_written.iter().map(|(key, count)| json!({
                "key": key,
                "count": count,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "status": summary.status.map(|status| status.as_str()),
        "ingestion_phase": summary.phase.map(|phase| phase.as_str()),
    })
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

/// `[{kind, key, size, blake3}]` for the video, audio and metadata objects the store step wrote.
pub fn artifacts(checkpoints: &[Checkpoint]) -> Vec<Value> {
    let Some(store) = checkpoints
        .iter()
        .find(|checkpoint| checkpoint.step == "store")
    else {
        return Vec::new();
    };
    ["video", "audio", "metadata", "platform_metadata"]
        .iter()
        .filter_map(|kind| store.output(kind))
        .map(|output| {
            json!({
                "kind": output.name,
                "key": location_text(output),
                "size": output.size,
                "blake3": output.blake3.to_hex(),
            })
        })
        .collect()
}

fn location_text(output: &StepOutput) -> String {
    match &output.location {
        crate::model::job::Location::Object(key) => key.clone(),
        crate::model::job::Location::Scratch(path) => path.clone(),
        crate::model::job::Location::State => "state".to_string(),
    }
}

pub fn checkpoint_json(checkpoint: &Checkpoint) -> Value {
    json!({
        "step": checkpoint.step,
        "definition_hash": checkpoint.definition_hash.to_hex(),
        "input_hash": checkpoint.input_hash.to_hex(),
        "outputs": checkpoint.outputs.iter().map(|output| json!({
            "name": output.name,
            "location": output.location.to_string(),
            "size": output.size,
            "blake3": output.blake3.to_hex(),
            "change_token": change_token_json(&output.change_token),
        })).collect::<Vec<_>>(),
        "recorded_at": checkpoint.recorded_at.to_rfc3339(),
    })
}

fn change_token_json(token: &ChangeToken) -> Value {
    match token {
        ChangeToken::File {
            inode,
            size,
            mtime_ns,
        } => {
            json!({"kind": "file", "inode": inode, "size": size, "mtime_ns": mtime_ns})
        }
        ChangeToken::ETag(etag) => json!({"kind": "etag", "etag": etag}),
        ChangeToken::None => json!({"kind": "none"}),
    }
}

/// `{at, kind, step?, ...}`.
pub fn event_json(event: &Event) -> Value {
    let mut value = json!({
        "seq": event.seq,
        "at": event.at.to_rfc3339(),
        "kind": event.kind.name(),
    });
    let object = value.as_object_mut().expect("an object");
    let mut put = |key: &str, field: Value| {
        object.insert(key.to_string(), field);
    };
    match &event.kind {
        EventKind::Submitted { source, workflow } => {
            put("source", json!(source));
            put("workflow", json!(workflow));
        }
        EventKind::StatusChanged { from, to, reason } => {
            put("from", json!(from.map(|status| status.as_str())));
            put("to", json!(to.as_str()));
            put("reason", json!(reason));
        }
        EventKind::PhaseChanged { from, to } => {
            put("from", json!(from.map(|phase| phase.as_str())));
            put("to", json!(to.map(|phase| phase.as_str())));
        }
        EventKind::StepStarted { step } => put("step", json!(step)),
        EventKind::StepCompleted { step, outputs } => {
            put("step", json!(step));
            put("outputs", json!(outputs));
        }
        EventKind::StepSkipped { step, reason } => {
            put("step", json!(step));
            put("reason", json!(reason));
        }
        EventKind::StepFailed { step, error } => {
            put("step", json!(step));
            put(
                "error",
                json!({"class": error.class, "message": error.message}),
            );
        }
        EventKind::RetryRequested { reason } => put("reason", json!(reason)),
        EventKind::CancelRequested => {}
        EventKind::AudioSelected {
            stream_index,
            codec,
            language,
            output,
            container,
            reason,
        } => {
            put("stream_index", json!(stream_index));
            put("codec", json!(codec));
            put("language", json!(language));
            put("output", json!(output));
            put("container", json!(container));
            put("reason", json!(reason));
        }
        EventKind::Reprobed { changes } => put("changes", json!(changes)),
        EventKind::StepRedone {
            step,
            cause,
            reason,
        } => {
            put("step", json!(step));
            put("cause", json!(cause));
            put("reason", json!(reason));
        }
        EventKind::ObjectsWritten { step, keys } => {
            put("step", json!(step));
            put("keys", json!(keys));
        }
        EventKind::CheckpointRecorded {
            step,
            definition_hash,
            input_hash,
            outputs,
        } => {
            put("step", json!(step));
            put("definition_hash", json!(definition_hash.to_hex()));
            put("input_hash", json!(input_hash.to_hex()));
            put(
                "outputs",
                json!(
                    outputs
                        .iter()
                        .map(|(name, blake3)| json!({"name": name, "blake3": blake3.to_hex()}))
                        .collect::<Vec<_>>()
                ),
            );
        }
    }
    value
}

/// One line of `ingest`, `submit`, `retry`, `jobs` for people: id, status, phase, source, error.
pub fn job_line(job: &Job) -> String {
    let mut line = format!(
        "{}  {:<9}  {:<11}  {}",
        job.id,
        job.status.as_str(),
        job.ingestion_phase
            .map(|phase| phase.as_str())
            .unwrap_or("-"),
        redact_url(&job.source)
    );
    if let Some(error) = &job.error {
        line.push_str(&format!("  [{}] {}", error.class, error.message));
    }
    if let Some(not_before) = job.not_before {
        line.push_str(&format!("  (retry at {})", not_before.to_rfc3339()));
    }
    if let Some(lease) = &job.lease {
        line.push_str(&format!("  (held by {})", lease.worker_id));
    }
    line
}

/// `show` for people.
pub fn job_text(
    job: &Job,
    checkpoints: &[Checkpoint],
    metadata: Option<&MediaMetadata>,
    history: &History<'_>,
) -> String {
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    line(format!("job              {}", job.id));
    line(format!("source           {}", redact_url(&job.source)));
    line(format!("workflow         {}", job.workflow));
    line(format!("key              {}", redact_url_in_key(&job.key)));
    line(format!("status           {}", job.status));
    line(format!(
        "ingestion_phase  {}",
        job.ingestion_phase
            .map(|phase| phase.as_str())
            .unwrap_or("null")
    ));
    line(format!("attempts         {}", job.attempts));
    line(format!("priority         {}", job.priority));
    if let Some(not_before) = job.not_before {
        line(format!(
            "next_attempt     not before {} (automatic retry)",
            not_before.to_rfc3339()
        ));
    }
    if let Some(crashes) = job.crashes {
        line(format!(
            "crashes          {} in a row at the same point (a crash_loop after {})",
            crashes.count,
            crate::model::machine::CRASH_LOOP_DEATHS
        ));
    }
    match &job.error {
        Some(error) => line(format!(
            "error            [{}] {}",
            error.class, error.message
        )),
        None => line("error            none".to_string()),
    }
    line(format!("created_at       {}", job.created_at.to_rfc3339()));
    line(format!("updated_at       {}", job.updated_at.to_rfc3339()));
    if let Some(lease) = &job.lease {
        line(format!(
            "lease            {} (token {}, expires {})",
            lease.worker_id,
            lease.fencing_token,
            lease.expires_at.to_rfc3339()
        ));
    }
    line(String::new());
    line("checkpoints".to_string());
    if checkpoints.is_empty() {
        line("  none".to_string());
    }
    for checkpoint in checkpoints {
        line(format!(
            "  {:<9} recorded {}  definition {}  input {}",
            checkpoint.step,
            checkpoint.recorded_at.to_rfc3339(),
            &checkpoint.definition_hash.to_hex()[..16],
            &checkpoint.input_hash.to_hex()[..16]
        ));
        for output in &checkpoint.outputs {
            line(format!(
                "    {:<9} {:>12} bytes  blake3 {}  {}",
                output.name,
                output.size,
                output.blake3.to_hex(),
                output.location
            ));
        }
    }
    line(String::new());
    line("artifacts".to_string());
    let artifacts = artifacts(checkpoints);
    if artifacts.is_empty() {
        line("  none stored".to_string());
    }
    for artifact in artifacts {
        line(format!(
            "  {:<9} {}  ({} bytes)",
            artifact["kind"].as_str().unwrap_or_default(),
            artifact["key"].as_str().unwrap_or_default(),
            artifact["size"]
        ));
    }
    if let Some(metadata) = metadata {
        line(String::new());
        line("metadata".to_string());
        for text in metadata_text(metadata) {
            line(text);
        }
    }
    line(String::new());
    line("events".to_string());
    if let Some(summary) = history.summary {
        for text in event_summary_text(summary) {
            line(text);
        }
    }
    for event in history.events {
        line(format!(
            "  {}  {}",
            event.at.to_rfc3339(),
            event_text(&event.kind)
        ));
    }
    out
}

/// The metadata record for people: the format line, then a line per stream with what is known.
pub fn metadata_text(metadata: &MediaMetadata) -> Vec<String> {
    let view = metadata_json(metadata);
    let known = |value: &Value| !value.is_null();
    let number = |value: &Value, unit: &str| match value.as_f64() {
        Some(number) => format!("{number:.3} {unit}"),
        None => "?".to_string(),
    };
    let mut lines = vec![format!(
        "  format {}  duration {}  start {}  size {}  bit rate {}",
        metadata.format_name,
        number(&view["duration_s"], "s"),
        number(&view["start_time_s"], "s"),
        view["size"],
        view["bit_rate"],
    )];
    for stream in view["streams"].as_array().into_iter().flatten() {
        let text_of = |key: &str| stream[key].as_str().unwrap_or("?").to_string();
        let mut text = format!(
            "  stream {} {} {}",
            stream["index"],
            text_of("codec_type"),
            text_of("codec_name")
        );
        if known(&stream["profile"]) {
            text.push_str(&format!(" ({})", text_of("profile")));
        }
        if known(&stream["width"]) && known(&stream["height"]) {
            text.push_str(&format!(" {}x{}", stream["width"], stream["height"]));
        }
        if let Some(rate) = stream["frame_rate"].as_f64() {
            text.push_str(&format!(" {rate:.3} fps"));
        }
        if known(&stream["sample_rate"]) {
            text.push_str(&format!(" {} Hz", stream["sample_rate"]));
        }
        if known(&stream["channels"]) {
            text.push_str(&format!(" {} ch", stream["channels"]));
        }
        if known(&stream["channel_layout"]) {
            text.push_str(&format!(" {}", text_of("channel_layout")));
        }
        if known(&stream["language"]) {
            text.push_str(&format!(" lang {}", text_of("language")));
        }
        if let Some(duration) = stream["duration_s"].as_f64() {
            text.push_str(&format!(" {duration:.3} s"));
        }
        if let Some(start) = stream["start_time_s"].as_f64() {
            text.push_str(&format!(" from {start:.3} s"));
        }
        lines.push(text);
    }
    lines
}

fn event_text(kind: &EventKind) -> String {
    match kind {
        EventKind::Submitted { source, workflow } => format!("submitted {source} ({workflow})"),
        EventKind::StatusChanged { from, to, reason } => format!(
            "status {} -> {to} ({reason})",
            from.map(|status| status.as_str()).unwrap_or("none")
        ),
        EventKind::PhaseChanged { from, to } => format!(
            "ingestion_phase {} -> {}",
            from.map(|phase| phase.as_str()).unwrap_or("null"),
            to.map(|phase| phase.as_str()).unwrap_or("null")
        ),
        EventKind::StepStarted { step } => format!("step {step} started"),
        EventKind::StepCompleted { step, outputs } => {
            format!("step {step} completed ({outputs} outputs checkpointed)")
        }
        EventKind::StepSkipped { step, reason } => format!("step {step} skipped ({reason})"),
        EventKind::StepFailed { step, error } => {
            format!("step {step} failed [{}] {}", error.class, error.message)
        }
        EventKind::RetryRequested { reason } => format!("retry requested ({reason})"),
        EventKind::CancelRequested => "cancel requested".to_string(),
        EventKind::AudioSelected {
            stream_index,
            codec,
            language,
            output,
            container,
            reason,
        } => format!(
            "audio stream {stream_index} ({codec}{}) -> {output} .{container} ({reason})",
            language
                .as_deref()
                .map(|language| format!(", {language}"))
                .unwrap_or_default()
        ),
        EventKind::Reprobed { changes } if changes.is_empty() => {
            "reprobed: the metadata record is unchanged".to_string()
        }
        EventKind::Reprobed { changes } => {
            format!(
                "reprobed: {} changed: {}",
                changes.len(),
                changes.join("; ")
            )
        }
        EventKind::StepRedone {
            step,
            cause,
            reason,
        } => format!("step {step} runs again [{cause}] {reason}"),
        EventKind::ObjectsWritten { step, keys } => {
            format!(
                "step {step} wrote {} objects: {}",
                keys.len(),
                keys.join(", ")
            )
        }
        EventKind::CheckpointRecorded {
            step,
            input_hash,
            outputs,
            ..
        } => format!(
            "checkpoint {step}: input {} -> {}",
            &input_hash.to_hex()[..16],
            outputs
                .iter()
                .map(|(name, blake3)| format!("{name} {}", &blake3.to_hex()[..16]))
                .collect::<Vec<_>>()
                .join(", ")
        ),
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

pub fn log_line_json(line: &LogLine) -> Value {
    json!({"at": line.at.to_rfc3339(), "level": line.level, "message": line.message})
}

/// The step a job's progress record belongs to, by the job's phase: `download`, `extract` or
/// `store`. The worker starts a fresh record as it enters each phase, so while the job runs its
/// record is its phase's step's; a job with no phase (not running) has no step to name.
pub fn progress_step(job: &Job) -> Option<&'static str> {
    job.ingestion_phase.map(|phase| match phase {
        Phase::Downloading => "download",
        Phase::Processing => "extract",
        Phase::Storing => "store",
    })
}

/// `{step, bytes_done, bytes_total, rate_bytes_per_s, updated_at}` or null; `step` is
/// [`progress_step`]'s.
pub fn progress_json(job: &Job, progress: Option<&JobProgress>) -> Value {
    match progress {
        Some(progress) => json!({
            "step": progress_step(job),
            "bytes_done": progress.bytes_done,
            "bytes_total": progress.bytes_total,
            "rate_bytes_per_s": progress.rate_bytes_per_s,
            "updated_at": progress.updated_at.to_rfc3339(),
        }),
        None => Value::Null,
    }
}

/// The progress record for people, labelled by the job's phase: `downloading 12.0 MiB of 60.0 MiB
/// (20%) at 3.2 MiB/s`, `extracting: 3.1 MiB written at 1.0 MiB/s`, `storing 40.0 MiB of 63.0 MiB
/// (63%) at 9.5 MiB/s`; unlabelled (`12.5 MiB of 40.0 MiB (31%) at 0.0 MiB/s`, the last step's
/// final figures) for a job that is not running.
pub fn progress_text(job: &Job, progress: &JobProgress) -> String {
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let mut figures = format!("{:.1} MiB", mib(progress.bytes_done));
    if job.ingestion_phase == Some(Phase::Processing) {
        figures.push_str(" written");
    }
    if let Some(total) = progress.bytes_total.filter(|total| *total > 0) {
        figures.push_str(&format!(
            " of {:.1} MiB ({}%)",
            mib(total),
            progress.bytes_done.saturating_mul(100) / total
        ));
    }
    figures.push_str(&format!(" at {:.1} MiB/s", mib(progress.rate_bytes_per_s)));
    match job.ingestion_phase {
        Some(Phase::Downloading) => format!("downloading {figures}"),
        Some(Phase::Processing) => format!("extracting: {figures}"),
        Some(Phase::Storing) => format!("storing {figures}"),
        None => figures,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::job::{JobId, Status, Timestamp};

    fn job_in(phase: Option<Phase>) -> Job {
        let mut job = crate::model::machine::new_job(
            JobId(1),
            "key".into(),
            "http://example.com/a.mp4".into(),
            "ingest".into(),
            crate::model::job::PRIORITY_LIVE,
            Timestamp(0),
        )
        .job;
        if phase.is_some() {
            job.status = Status::Running;
        }
        job.ingestion_phase = phase;
        job
    }

    // Guards the progress labels: each phase names what its step is doing, the JSON names the
    // step, and a job that is not running shows its last figures unlabelled with no step.
    #[test]
    fn progress_is_labelled_by_the_phase_it_belongs_to() {
        let mib = 1024 * 1024;
        let record = |done: u64, total: Option<u64>| JobProgress {
            bytes_done: done,
            bytes_total: total,
            rate_bytes_per_s: 2 * mib,
            updated_at: Timestamp(0),
        };
        let cases = [
            (
                Some(Phase::Downloading),
                record(12 * mib, Some(60 * mib)),
                "downloading 12.0 MiB of 60.0 MiB (20%) at 2.0 MiB/s",
                Value::from("download"),
            ),
            (
                Some(Phase::Processing),
                record(3 * mib + mib / 10, None),
                "extracting: 3.1 MiB written at 2.0 MiB/s",
                Value::from("extract"),
            ),
            (
                Some(Phase::Storing),
                record(40 * mib, Some(64 * mib)),
                "storing 40.0 MiB of 64.0 MiB (62%) at 2.0 MiB/s",
                Value::from("store"),
            ),
            (
                None,
                record(64 * mib, Some(64 * mib)),
                "64.0 MiB of 64.0 MiB (100%) at 2.0 MiB/s",
                Value::Null,
            ),
        ];
        for (phase, record, text, step) in cases {
            let job = job_in(phase);
            assert_eq!(progress_text(&job, &record), text);
            let json = progress_json(&job, Some(&record));
            assert_eq!(json["step"], step, "{json}");
            assert_eq!(json["bytes_done"], record.bytes_done, "{json}");
            assert_eq!(json["bytes_total"], json!(record.bytes_total), "{json}");
            assert_eq!(json["rate_bytes_per_s"], 2 * mib, "{json}");
        }
        assert_eq!(progress_json(&job_in(None), None), Value::Null);
    }
}
