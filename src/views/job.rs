//! A job as people and programs see it: its summary (what `submit`, `retry`, `jobs` and most
//! `POST`s answer), its line of text, its progress, its artifacts, and the whole of it as `show`
//! and `GET /jobs/{id}` display it.

use serde::Serialize;
use serde_json::Value;

use super::history::{EventDetail, HistoryView, event_summary_text, event_text, history};
use super::stuck::StuckDetail;
use super::webhook::{WebhookView, webhook, webhook_text};
use super::{Rfc3339, Text};
use crate::model::job::{
    ChangeToken, Checkpoint, CrashRecord, ErrorInfo, Event, EventSummary, Hash, Job, JobId,
    JobProgress, Lease, Location, Phase, Status, StepOutput, Webhook,
};
use crate::model::redact::redact_url;
use crate::model::sources::source_host;

/// A default key is `<workflow>:<normalised source>`: redact the URL part.
pub fn redact_url_in_key(key: &str) -> String {
    match key.split_once(':') {
        Some((workflow, rest)) if rest.contains("://") => {
            format!("{workflow}:{}", redact_url(rest))
        }
        _ => redact_url(key),
    }
}

/// Where an output is, for people: the object key, the scratch path, or `state`.
pub fn location_text(location: &Location) -> &str {
    match location {
        Location::Object(key) => key,
        Location::Scratch(path) => path,
        Location::State => "state",
    }
}

/// `{id, source, status, ingestion_phase, attempts, priority, not_before, error, lease}`: what
/// `ingest`, `submit`, `retry`, `jobs` print. `lease` says which worker (`host:pid`) holds a
/// running job, so a fleet's jobs can be told apart by machine and process.
#[derive(Debug, Serialize)]
pub struct JobSummary<'a> {
    /// The job's ULID, 26 characters; ids sort by submission time.
    pub id: Text<JobId>,
    /// The source, its secrets redacted.
    pub source: String,
    /// `pending`, `running`, `succeeded`, `failed` or `cancelled`.
    pub status: &'static str,
    /// What a running job is doing: `downloading`, `processing` or `storing`.
    pub ingestion_phase: Option<&'static str>,
    /// Runs started so far: each claim by a worker counts one; a run handed back because its host's
    /// breaker is open does not.
    pub attempts: u32,
    /// Pending jobs are claimed highest priority first.
    pub priority: i32,
    /// A pending job is not claimed before this: an automatic retry's delay.
    pub not_before: Option<Rfc3339>,
    /// The job's last error; `null` until it first fails, kept while it is retried or waits to run
    /// again, cleared when it succeeds.
    pub error: Option<ErrorView<'a>>,
    /// Who holds the job; present exactly when `status` is `running`.
    pub lease: Option<LeaseView<'a>>,
}

pub fn summary(job: &Job) -> JobSummary<'_> {
    JobSummary {
        id: Text(job.id),
        source: redact_url(&job.source),
        status: job.status.as_str(),
        ingestion_phase: job.ingestion_phase.map(Phase::as_str),
        attempts: job.attempts,
        priority: job.priority,
        not_before: job.not_before.map(Rfc3339),
        error: job.error.as_ref().map(ErrorView::of),
        lease: job.lease.as_ref().map(LeaseView::of),
    }
}

/// `{class, message}`: why a job (or a step) failed.
#[derive(Debug, Serialize)]
pub struct ErrorView<'a> {
    /// A stable error class to filter on (`download_blocked`, `corrupt_media`, `crash_loop`, ...).
    pub class: &'a str,
    /// What went wrong, in words for people; its wording is not stable.
    pub message: &'a str,
}

impl ErrorView<'_> {
    pub fn of(error: &ErrorInfo) -> ErrorView<'_> {
        ErrorView {
            class: &error.class,
            message: &error.message,
        }
    }
}

/// `{worker_id, fencing_token, expires_at}` of a job's lease.
#[derive(Debug, Serialize)]
pub struct LeaseView<'a> {
    /// The process that holds the job: `host:pid`.
    pub worker_id: &'a str,
    /// Grows with every claim; a write under an older token is refused.
    pub fencing_token: u64,
    /// When the lease lapses unless its worker renews it; past it, the job may be taken over.
    pub expires_at: Rfc3339,
}

impl LeaseView<'_> {
    pub fn of(lease: &Lease) -> LeaseView<'_> {
        LeaseView {
            worker_id: &lease.worker_id.0,
            fencing_token: lease.fencing_token,
            expires_at: Rfc3339(lease.expires_at),
        }
    }
}

/// One line of `ingest`, `submit`, `retry`, `jobs` for people: id, status, phase, source, error.
pub fn job_line(job: &Job) -> String {
    let mut line = format!(
        "{}  {:<9}  {:<11}  {}",
        job.id,
        job.status.as_str(),
        job.ingestion_phase.map(Phase::as_str).unwrap_or("-"),
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

/// A job of `narra jobs --json`: its summary and its progress record.
#[derive(Debug, Serialize)]
pub struct JobItem<'a> {
    /// The job's summary, its fields at the top level of the item.
    #[serde(flatten)]
    pub summary: JobSummary<'a>,
    /// The running step's progress, or the last step's final figures; `null` when no step has
    /// recorded any.
    pub progress: Option<ProgressView>,
}

pub fn job_item<'a>(job: &'a Job, progress: Option<&JobProgress>) -> JobItem<'a> {
    JobItem {
        summary: summary(job),
        progress: progress_view(job, progress),
    }
}

/// A job of `GET /jobs`: its summary, why it is stuck (on a page of stuck jobs), its progress, its
/// source's host (as `health` names it) and when it last changed.
#[derive(Debug, Serialize)]
pub struct PageItem<'a> {
    /// The job's summary, its fields at the top level of the item.
    #[serde(flatten)]
    pub summary: JobSummary<'a>,
    /// On a page of stuck jobs (`stuck=true`), `last_moved_at` and the `stuck` reasons at the top
    /// level; absent otherwise.
    #[serde(flatten)]
    pub stuck: Option<&'a StuckDetail>,
    /// The running step's progress, or the last step's final figures; `null` when no step has
    /// recorded any.
    pub progress: Option<ProgressView>,
    /// The source's host and port, as `health` groups failures; `local` for files.
    pub source_host: String,
    /// When the job record last changed: any transition, a lease renewal included.
    pub updated_at: Rfc3339,
}

pub fn page_item<'a>(
    job: &'a Job,
    stuck: Option<&'a StuckDetail>,
    progress: Option<&JobProgress>,
) -> PageItem<'a> {
    PageItem {
        summary: summary(job),
        stuck,
        progress: progress_view(job, progress),
        source_host: source_host(&job.source),
        updated_at: Rfc3339(job.updated_at),
    }
}

/// `GET /jobs`: a page of jobs, newest first, and the cursor of the next page, if any.
#[derive(Debug, Serialize)]
pub struct JobsPage<'a> {
    /// At most `limit` jobs, newest first (descending id).
    pub jobs: Vec<PageItem<'a>>,
    /// The id to pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// `POST /jobs`: the job and what the submission did (`created`, `existing`, `retried`,
/// `reingested`).
#[derive(Debug, Serialize)]
pub struct Submitted<'a> {
    /// The job's summary, its fields at the top level.
    #[serde(flatten)]
    pub summary: JobSummary<'a>,
    /// `created` (a new job), `existing` (the key's job, returned as it is), `retried` (its failed
    /// or cancelled job is pending again) or `reingested` (its succeeded job is pending again).
    pub outcome: &'static str,
}

/// `narra reprobe --json`: the job, what changed in its metadata record, and whether its manifest
/// was written again.
#[derive(Debug, Serialize)]
pub struct Reprobed<'a> {
    /// The job after the reprobe, and after its run when it was republished.
    pub job: JobSummary<'a>,
    /// Each difference from the replaced metadata record, as `field: old -> new`; empty when the
    /// record was right.
    pub changes: &'a [String],
    /// Whether the job (a succeeded one whose record changed) ran again to store the new metadata
    /// object and manifest.
    pub republished: bool,
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

/// `{step, bytes_done, bytes_total, rate_bytes_per_s, updated_at}`; `step` is
/// [`progress_step`]'s.
#[derive(Debug, Serialize)]
pub struct ProgressView {
    /// `download`, `extract` or `store`; `null` for a job that is not running (its last step's
    /// final figures).
    pub step: Option<&'static str>,
    /// Bytes downloaded, written or sent to storage so far.
    pub bytes_done: u64,
    /// The whole, when it is known.
    pub bytes_total: Option<u64>,
    /// Bytes per second over the last interval between writes (about a second); 0 in a step's final
    /// figures.
    pub rate_bytes_per_s: u64,
    /// When the record was last written: about once a second while the step moves.
    pub updated_at: Rfc3339,
}

pub fn progress_view(job: &Job, progress: Option<&JobProgress>) -> Option<ProgressView> {
    progress.map(|progress| ProgressView {
        step: progress_step(job),
        bytes_done: progress.bytes_done,
        bytes_total: progress.bytes_total,
        rate_bytes_per_s: progress.rate_bytes_per_s,
        updated_at: Rfc3339(progress.updated_at),
    })
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

/// `{kind, key, size, blake3}`: one of the video, audio and metadata objects the store step wrote.
#[derive(Debug, Serialize)]
pub struct Artifact<'a> {
    /// `video`, `audio`, `metadata` or `platform_metadata`.
    pub kind: &'a str,
    /// The object's key in storage.
    pub key: &'a str,
    /// The object's size in bytes.
    pub size: u64,
    /// The blake3 of the object's bytes, 64 hex digits.
    pub blake3: Text<Hash>,
}

/// The artifacts the store step's checkpoint names, video first; none before it is recorded.
pub fn artifacts(checkpoints: &[Checkpoint]) -> Vec<Artifact<'_>> {
    let Some(store) = checkpoints
        .iter()
        .find(|checkpoint| checkpoint.step == "store")
    else {
        return Vec::new();
    };
    ["video", "audio", "metadata", "platform_metadata"]
        .iter()
        .filter_map(|kind| store.output(kind))
        .map(|output| Artifact {
            kind: &output.name,
            key: location_text(&output.location),
            size: output.size,
            blake3: Text(output.blake3),
        })
        .collect()
}

/// `{location, size, blake3}`: where some bytes are and what they are.
#[derive(Debug, Serialize)]
pub struct Bytes<'a> {
    /// `scratch:<path>`, `object:<key>` or `state`.
    pub location: Text<&'a Location>,
    /// The size in bytes.
    pub size: u64,
    /// The blake3 of the bytes, 64 hex digits.
    pub blake3: Text<Hash>,
}

impl Bytes<'_> {
    pub fn of(location: &Location, size: u64, blake3: Hash) -> Bytes<'_> {
        Bytes {
            location: Text(location),
            size,
            blake3: Text(blake3),
        }
    }
}

/// `{name, location, size, blake3}` of a step output.
#[derive(Debug, Serialize)]
pub struct OutputView<'a> {
    /// The output's name within its step (`video`, `audio`, `metadata`, `manifest`, ...).
    pub name: &'a str,
    /// `location`, `size` and `blake3`, at the top level.
    #[serde(flatten)]
    pub bytes: Bytes<'a>,
}

impl OutputView<'_> {
    pub fn of(output: &StepOutput) -> OutputView<'_> {
        OutputView {
            name: &output.name,
            bytes: Bytes::of(&output.location, output.size, output.blake3),
        }
    }
}

/// `{step, definition_hash, input_hash, outputs: [{name, location, size, blake3, change_token}],
/// recorded_at}`.
#[derive(Debug, Serialize)]
pub struct CheckpointView<'a> {
    /// The step's name in the workflow (`download`, `extract`, `store`).
    pub step: &'a str,
    /// The blake3 of the step's definition: a changed workflow runs the step again.
    pub definition_hash: Text<Hash>,
    /// The blake3 of what the step read.
    pub input_hash: Text<Hash>,
    /// What the step produced, each with the token that tells cheaply whether it changed since.
    pub outputs: Vec<CheckedOutput<'a>>,
    /// When the step finished and its checkpoint was written.
    pub recorded_at: Rfc3339,
}

#[derive(Debug, Serialize)]
pub struct CheckedOutput<'a> {
    /// `name`, `location`, `size` and `blake3`, at the top level.
    #[serde(flatten)]
    pub output: OutputView<'a>,
    /// How a later run tells the output is unchanged without hashing it again.
    pub change_token: ChangeTokenView<'a>,
}

/// `{kind: file, inode, size, mtime_ns}`, `{kind: etag, etag}` or `{kind: none}`.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChangeTokenView<'a> {
    File {
        /// The file's inode number.
        inode: u64,
        /// The file's size in bytes when the checkpoint was recorded.
        size: u64,
        /// Its modification time, in nanoseconds since the Unix epoch.
        mtime_ns: i64,
    },
    Etag {
        /// The ETag storage gave the object.
        etag: &'a str,
    },
    None,
}

impl ChangeTokenView<'_> {
    pub fn of(token: &ChangeToken) -> ChangeTokenView<'_> {
        match *token {
            ChangeToken::File {
                inode,
                size,
                mtime_ns,
            } => ChangeTokenView::File {
                inode,
                size,
                mtime_ns,
            },
            ChangeToken::ETag(ref etag) => ChangeTokenView::Etag { etag },
            ChangeToken::None => ChangeTokenView::None,
        }
    }
}

pub fn checkpoint_view(checkpoint: &Checkpoint) -> CheckpointView<'_> {
    CheckpointView {
        step: &checkpoint.step,
        definition_hash: Text(checkpoint.definition_hash),
        input_hash: Text(checkpoint.input_hash),
        outputs: checkpoint
            .outputs
            .iter()
            .map(|output| CheckedOutput {
                output: OutputView::of(output),
                change_token: ChangeTokenView::of(&output.change_token),
            })
            .collect(),
        recorded_at: Rfc3339(checkpoint.recorded_at),
    }
}

/// What `show` displays of one job, as `engine::show` reads it. `metadata` is the metadata record
/// as the extract step shows it (`steps::extract::metadata_json`, the shape its stored manifest
/// holds too).
#[derive(Debug, Clone)]
pub struct ShowRecords {
    /// The job record.
    pub job: Job,
    /// Its checkpoints, in step order.
    pub checkpoints: Vec<Checkpoint>,
    /// `None` until the extract step records the metadata record.
    pub metadata: Option<Value>,
    /// What compaction kept of the oldest events; `None` when none were compacted.
    pub summary: Option<EventSummary>,
    /// The events still held, oldest first.
    pub events: Vec<Event>,
    /// The running step's progress record, or the last step's final figures.
    pub progress: Option<JobProgress>,
    /// `None` when the job was submitted without a callback URL.
    pub webhook: Option<Webhook>,
}

/// `{count, phase, checkpoints, bytes_done}`: the deaths in a row at one point.
#[derive(Debug, Serialize)]
pub struct CrashesView {
    /// Deaths in a row; a crash loop at `model::machine::CRASH_LOOP_DEATHS`.
    pub count: u32,
    /// Where they died: the phase, the checkpoints recorded and the running step's bytes.
    pub phase: Option<&'static str>,
    /// How many steps had a checkpoint.
    pub checkpoints: u32,
    /// The running step's recorded bytes.
    pub bytes_done: u64,
}

impl CrashesView {
    pub fn of(record: &CrashRecord) -> CrashesView {
        CrashesView {
            count: record.count,
            phase: record.marker.phase.map(Phase::as_str),
            checkpoints: record.marker.checkpoints,
            bytes_done: record.marker.bytes_done,
        }
    }
}

/// The whole job: `show --json` and `GET /jobs/{id}`. `events` lists the events still held;
/// `events_compacted` says how many older ones were folded into `events_summary`.
#[derive(Debug, Serialize)]
pub struct JobDetail<'a> {
    /// The job's summary, its fields at the top level.
    #[serde(flatten)]
    pub summary: JobSummary<'a>,
    /// The idempotency key, its URL redacted.
    pub key: String,
    /// The name of the workflow the job runs.
    pub workflow: &'a str,
    /// Deaths of its process in a row with no progress in between; `null` when none, cleared when
    /// the job finishes.
    pub crashes: Option<CrashesView>,
    /// When the job was submitted.
    pub created_at: Rfc3339,
    /// When the job record last changed: any transition, a lease renewal included.
    pub updated_at: Rfc3339,
    /// A cancel of a running job waits for its next step boundary.
    pub cancel_requested: bool,
    /// Each finished step's record, in step order; empty before the first step completes.
    pub checkpoints: Vec<CheckpointView<'a>>,
    /// The objects the store step wrote, video first; empty until its checkpoint is recorded.
    pub artifacts: Vec<Artifact<'a>>,
    /// The manifest's key, once the store step wrote it.
    pub manifest: Option<&'a str>,
    /// The media's metadata record (format, duration, streams) as the extract step records it;
    /// `null` before that.
    pub metadata: Option<&'a Value>,
    /// `events_compacted`, `events_summary` and `events`, at the top level.
    #[serde(flatten)]
    pub history: HistoryView<'a>,
    /// The running step's progress, or the last step's final figures; `null` when no step has
    /// recorded any.
    pub progress: Option<ProgressView>,
    /// The completion webhook and its deliveries; `null` when the job has no callback URL.
    pub webhook: Option<WebhookView<'a>>,
}

pub fn detail(records: &ShowRecords) -> JobDetail<'_> {
    let job = &records.job;
    JobDetail {
        summary: summary(job),
        key: redact_url_in_key(&job.key),
        workflow: &job.workflow,
        crashes: job.crashes.as_ref().map(CrashesView::of),
        created_at: Rfc3339(job.created_at),
        updated_at: Rfc3339(job.updated_at),
        cancel_requested: job.cancel_requested,
        checkpoints: records.checkpoints.iter().map(checkpoint_view).collect(),
        artifacts: artifacts(&records.checkpoints),
        manifest: manifest_key(&records.checkpoints),
        metadata: records.metadata.as_ref(),
        history: history(records.summary.as_ref(), &records.events),
        progress: progress_view(job, records.progress.as_ref()),
        webhook: records.webhook.as_ref().map(webhook),
    }
}

fn manifest_key(checkpoints: &[Checkpoint]) -> Option<&str> {
    checkpoints
        .iter()
        .find(|checkpoint| checkpoint.step == "store")
        .and_then(|checkpoint| checkpoint.output("manifest"))
        .map(|output| location_text(&output.location))
}

/// `show` for people: the job, its progress and webhook, then its checkpoints, artifacts,
/// metadata record and events.
pub fn detail_text(records: &ShowRecords) -> String {
    let ShowRecords {
        job,
        checkpoints,
        metadata,
        summary,
        events,
        progress,
        webhook,
    } = records;
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
        job.ingestion_phase.map(Phase::as_str).unwrap_or("null")
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
    // A finished job's record at zero (a step that failed before any byte) says nothing.
    if let Some(progress) = progress
        .as_ref()
        .filter(|progress| job.status == Status::Running || progress.bytes_done > 0)
    {
        line(format!("progress         {}", progress_text(job, progress)));
    }
    for text in webhook.iter().flat_map(webhook_text) {
        line(text);
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
            artifact.kind, artifact.key, artifact.size
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
    if let Some(summary) = summary {
        for text in event_summary_text(summary) {
            line(text);
        }
    }
    for event in events {
        line(format!(
            "  {}  {}",
            event.at.to_rfc3339(),
            event_text(&EventDetail::of(&event.kind))
        ));
    }
    out
}

/// The metadata record for people, from its shown shape: the format line, then a line per stream
/// with what is known.
pub fn metadata_text(view: &Value) -> Vec<String> {
    let known = |value: &Value| !value.is_null();
    let number = |value: &Value, unit: &str| match value.as_f64() {
        Some(number) => format!("{number:.3} {unit}"),
        None => "?".to_string(),
    };
    let mut lines = vec![format!(
        "  format {}  duration {}  start {}  size {}  bit rate {}",
        view["format_name"].as_str().unwrap_or_default(),
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::job::Timestamp;

    fn job_in(phase: Option<Phase>) -> Job {
        let mut job = crate::model::fixtures::job(1, "http://example.com/a.mp4");
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
            let json = super::super::to_json(&progress_view(&job, Some(&record)));
            assert_eq!(json["step"], step, "{json}");
            assert_eq!(json["bytes_done"], record.bytes_done, "{json}");
            assert_eq!(json["bytes_total"], json!(record.bytes_total), "{json}");
            assert_eq!(json["rate_bytes_per_s"], 2 * mib, "{json}");
        }
        assert!(progress_view(&job_in(None), None).is_none());
    }
}
