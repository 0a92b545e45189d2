//! `narra backfill`: a manifest of sources submitted in batches under one backfill id, run to
//! completion, resumed by running it again.
//!
//! Owns manifest parsing ([`parse_manifest`], a pure function: no I/O, never panics, every bad line
//! named by its number), the resume rules (succeeded jobs are recognised at once; failed jobs are
//! retried only when their class is transient, unless `retry_permanent`), the live tally a progress
//! display reads ([`BackfillProgress`]) and the end summary ([`BackfillSummary`]).
//!
//! It never renders anything (the CLI draws the progress bar and prints the summary) and never
//! writes a job but through `OrchestratorStore::submit_batch` and `orchestrator::run_jobs`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::engine::Engine;
use crate::engine::orchestrator::{EngineError, ScheduleOptions, Until, schedule};
use crate::model::backfill::{BackfillSummary, BadLine, ManifestFormat};
use crate::model::job::{
    Backfill, BackfillId, EventKind, Job, JobId, Location, PRIORITY_BACKFILL, Phase, Status,
};
use crate::model::sources::{LocalPaths, canonical_source, idempotency_key, source_host};
use crate::store::{BatchOptions, JobFilter, Resubmit, SUBMIT_BATCH_MAX, SubmitRequest};

/// The longest manifest line accepted; a longer one is a bad line (no URL or path is this long).
pub const LINE_BYTES_MAX: usize = 64 * 1024;

/// One source of a manifest, with the line it came from (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    pub line: usize,
    pub source: String,
    pub workflow: Option<String>,
    pub key: Option<String>,
    /// The job's priority (`Job::priority`, higher runs first), within
    /// [`PRIORITY_MIN`]..=[`PRIORITY_MAX`]; [`PRIORITY_BACKFILL`] when the line gives none.
    pub priority: Option<i64>,
    /// Where the job's completion notice goes (`webhook`); the workflow's when `None`.
    pub callback_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub format: ManifestFormat,
    pub entries: Vec<ManifestEntry>,
    pub bad_lines: Vec<BadLine>,
}

/// Which format a manifest is in. The name's extension decides first (`.jsonl`, `.ndjson` ->
/// JSON Lines; `.csv` -> CSV); otherwise the first line that is neither blank nor a `#` comment
/// does: one starting with `{` is JSON Lines, one whose comma-separated fields include `source` is
/// a CSV header, anything else makes a list of sources.
pub fn detect_format(name: &str, text: &str) -> ManifestFormat {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".jsonl") || lower.ends_with(".ndjson") {
        return ManifestFormat::JsonLines;
    }
    if lower.ends_with(".csv") {
        return ManifestFormat::Csv;
    }
    let Some(first) = text.lines().map(str::trim).find(|line| !skipped(line)) else {
        return ManifestFormat::Lines;
    };
    if first.starts_with('{') {
        ManifestFormat::JsonLines
    } else if csv_fields(first).is_ok_and(|fields| {
        fields
            .iter()
            .any(|field| field.trim().eq_ignore_ascii_case("source"))
    }) {
        ManifestFormat::Csv
    } else {
        ManifestFormat::Lines
    }
}

/// Blank lines and `#` comments are skipped in every format.
fn skipped(trimmed: &str) -> bool {
    trimmed.is_empty() || trimmed.starts_with('#')
}

/// Parses a manifest named `name` (for its extension). Pure and total: any text gives entries and
/// bad lines, each with its 1-based line number, in line order.
pub fn parse_manifest(name: &str, text: &str) -> Manifest {
    let format = detect_format(name, text);
    let mut manifest = Manifest {
        format,
        entries: Vec::new(),
        bad_lines: Vec::new(),
    };
    let mut csv_header: Option<CsvHeader> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if skipped(trimmed) {
            continue;
        }
        let parsed = if raw.len() > LINE_BYTES_MAX {
            Err(format!("longer than {LINE_BYTES_MAX} bytes"))
        } else if trimmed.contains('\u{fffd}') {
            Err("not valid UTF-8".to_string())
        } else {
            match format {
                ManifestFormat::Lines => Ok(Some(ManifestEntry {
                    line,
                    source: trimmed.to_string(),
                    workflow: None,
                    key: None,
                    priority: None,
                    callback_url: None,
                })),
                ManifestFormat::JsonLines => parse_json_line(line, trimmed).map(Some),
                ManifestFormat::Csv => match &csv_header {
                    Some(header) => parse_csv_row(header, line, trimmed).map(Some),
                    None => CsvHeader::parse(trimmed).map(|header| {
                        csv_header = Some(header);
                        None
                    }),
                },
            }
        };
        match parsed.and_then(|entry| match entry {
            Some(entry) => check_entry(&entry).map(|()| Some(entry)),
            None => Ok(None),
        }) {
            Ok(Some(entry)) => manifest.entries.push(entry),
            Ok(None) => {}
            Err(reason) => manifest.bad_lines.push(BadLine { line, reason }),
        }
    }
    manifest
}

/// What makes a source unusable whatever fetches it. A URL with a scheme narra cannot fetch is not
/// bad here: it becomes a job that fails as `unsupported_source`, where it can be seen and retried.
fn check_entry(entry: &ManifestEntry) -> Result<(), String> {
    let source = entry.source.trim();
    if source.is_empty() {
        return Err("empty source".to_string());
    }
    if source.chars().any(char::is_control) {
        return Err("the source contains control characters".to_string());
    }
    if source.contains("://")
        && let Err(error) = url::Url::parse(source)
    {
        return Err(format!("not a valid URL: {error}"));
    }
    for (what, value) in [("key", &entry.key), ("workflow", &entry.workflow)] {
        if let Some(value) = value
            && value.trim().is_empty()
        {
            return Err(format!("empty {what}"));
        }
    }
    Ok(())
}

fn parse_json_line(line: usize, text: &str) -> Result<ManifestEntry, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|error| format!("not JSON: {error}"))?;
    let object = value
        .as_object()
        .ok_or_else(|| "not a JSON object".to_string())?;
    let text_field = |name: &str| -> Result<Option<String>, String> {
        match object.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(text)) => Ok(Some(text.trim().to_string())),
            Some(_) => Err(format!("\"{name}\" is not a string")),
        }
    };
    let source = text_field("source")?.ok_or_else(|| "no \"source\"".to_string())?;
    let priority = match object.get("priority") {
        None | Some(serde_json::Value::Null) => None,
        Some(value) => Some(
            value
                .as_i64()
                .ok_or_else(|| "\"priority\" is not an integer".to_string())
                .and_then(check_priority)?,
        ),
    };
    Ok(ManifestEntry {
        line,
        source,
        workflow: text_field("workflow")?,
        key: text_field("key")?,
        priority,
        callback_url: text_field("callback_url")?,
    })
}

/// The columns a CSV manifest's header names.
#[derive(Debug, Clone)]
struct CsvHeader {
    fields: usize,
    source: usize,
    key: Option<usize>,
    workflow: Option<usize>,
    priority: Option<usize>,
    callback_url: Option<usize>,
}

impl CsvHeader {
    fn parse(line: &str) -> Result<CsvHeader, String> {
        let fields = csv_fields(line)?;
        let column = |name: &str| {
            fields
                .iter()
                .position(|field| field.trim().eq_ignore_ascii_case(name))
        };
        Ok(CsvHeader {
            fields: fields.len(),
            source: column("source")
                .ok_or_else(|| "the CSV header has no \"source\" column".to_string())?,
            key: column("key"),
            workflow: column("workflow"),
            priority: column("priority"),
            callback_url: column("callback_url"),
        })
    }
}

fn parse_csv_row(header: &CsvHeader, line: usize, text: &str) -> Result<ManifestEntry, String> {
    let fields = csv_fields(text)?;
    if fields.len() != header.fields {
        return Err(format!(
            "{} fields where the header has {}",
            fields.len(),
            header.fields
        ));
    }
    let optional = |column: Option<usize>| {
        column
            .map(|column| fields[column].trim().to_string())
            .filter(|value| !value.is_empty())
    };
    let priority = match optional(header.priority) {
        None => None,
        Some(text) => Some(
            text.parse::<i64>()
                .map_err(|_| format!("priority {text:?} is not an integer"))
                .and_then(check_priority)?,
        ),
    };
    Ok(ManifestEntry {
        line,
        source: fields[header.source].trim().to_string(),
        workflow: optional(header.workflow),
        key: optional(header.key),
        priority,
        callback_url: optional(header.callback_url),
    })
}

/// The lowest and highest priority a manifest line may give.
pub const PRIORITY_MIN: i64 = -1_000;
pub const PRIORITY_MAX: i64 = 1_000;

fn check_priority(priority: i64) -> Result<i64, String> {
    if (PRIORITY_MIN..=PRIORITY_MAX).contains(&priority) {
        Ok(priority)
    } else {
        Err(format!(
            "priority {priority} is outside {PRIORITY_MIN}..={PRIORITY_MAX}"
        ))
    }
}

/// Splits one CSV line (RFC 4180 quoting: `"a, b"`, `""` for a quote). A quoted field cannot span
/// lines: an unterminated quote makes the line bad.
fn csv_fields(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut at_field_start = true;
    while let Some(c) = chars.next() {
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    quoted = false;
                }
            } else {
                field.push(c);
            }
        } else if c == '"' && at_field_start {
            quoted = true;
            at_field_start = false;
        } else if c == ',' {
            fields.push(std::mem::take(&mut field));
            at_field_start = true;
        } else {
            if !c.is_whitespace() {
                at_field_start = false;
            }
            field.push(c);
        }
    }
    if quoted {
        return Err("unterminated quoted field".to_string());
    }
    fields.push(field);
    Ok(fields)
}

/// What names a manifest read from `path` (`-`: standard input, named by its content's hash so
/// that the same list piped again resumes the same backfill).
pub fn manifest_name(path: &str, text: &str) -> String {
    if path == "-" {
        let hash = blake3::hash(text.as_bytes()).to_hex();
        return format!("stdin:{}", &hash.as_str()[..16]);
    }
    std::path::absolute(Path::new(path))
        .map(|absolute| absolute.display().to_string())
        .unwrap_or_else(|_| path.to_string())
}

/// Jobs a backfill runs at once unless told otherwise (`narra backfill --concurrency`).
pub const DEFAULT_CONCURRENCY: usize = 4;

/// What a backfill run is asked to do.
#[derive(Debug, Clone)]
pub struct BackfillOptions {
    /// The workflow of lines that name none (default: `ingest`).
    pub workflow: Option<String>,
    /// Jobs run at once (default: [`DEFAULT_CONCURRENCY`]).
    pub concurrency: usize,
    /// Retry failed jobs whatever their class (and cancelled ones), as `submit` does.
    pub retry_permanent: bool,
    /// Re-run succeeded jobs through their checkpoints.
    pub reingest: bool,
    /// Whether lines may name local paths (the CLI's manifests) and what relative ones are
    /// resolved against; refused for a manifest posted to the HTTP API.
    pub local_paths: LocalPaths,
}

impl Default for BackfillOptions {
    fn default() -> BackfillOptions {
        BackfillOptions {
            workflow: None,
            concurrency: DEFAULT_CONCURRENCY,
            retry_permanent: false,
            reingest: false,
            local_paths: LocalPaths::CurrentDir,
        }
    }
}

/// A job of the backfill and the first event of this run (what it did before is not counted).
#[derive(Debug, Clone)]
struct Planned {
    job: Job,
    events_from: u64,
    run: bool,
}

/// The manifest's sources, submitted.
#[derive(Debug)]
pub struct Submission {
    pub backfill: Backfill,
    pub format: ManifestFormat,
    /// Manifest lines that became a submission (several may name one job).
    pub lines_accepted: usize,
    /// Bad lines: unreadable, or naming an unknown workflow.
    pub bad_lines: Vec<BadLine>,
    /// One per distinct job, in manifest order.
    planned: Vec<Planned>,
}

impl Submission {
    /// Distinct jobs.
    pub fn jobs(&self) -> usize {
        self.planned.len()
    }

    /// Jobs that will run (new, pending, retried or reingested).
    pub fn to_run(&self) -> usize {
        self.planned.iter().filter(|planned| planned.run).count()
    }
}

/// Submits a parsed manifest under the backfill recorded for `manifest_name`, in batches of
/// [`SUBMIT_BATCH_MAX`] (one transaction and one flush each).
pub async fn submit_manifest(
    engine: &Engine,
    manifest_name: &str,
    manifest: &Manifest,
    options: &BackfillOptions,
) -> Result<Submission, EngineError> {
    let default_workflow = options
        .workflow
        .clone()
        .unwrap_or_else(|| crate::workflow::DEFAULT_WORKFLOW.to_string());
    // An unknown default workflow is a usage error; an unknown one on a line is that line's.
    engine.workflows.get(&default_workflow)?;
    let backfill = engine.store.open_backfill(manifest_name).await?;
    let base_dir = options.local_paths.base_dir(crate::engine::working_dir);
    let mut bad_lines = manifest.bad_lines.clone();
    let mut requests = Vec::with_capacity(manifest.entries.len());
    // Each request's callback URL, in request order.
    let mut callbacks = Vec::with_capacity(manifest.entries.len());
    for entry in &manifest.entries {
        let workflow = entry
            .workflow
            .clone()
            .unwrap_or_else(|| default_workflow.clone());
        let callback = match engine.workflows.get(&workflow) {
            Err(error) => Err(error.to_string()),
            Ok(definition) => crate::engine::orchestrator::callback_for(
                &engine.orchestrator(),
                definition,
                entry.callback_url.as_deref(),
            )
            .map_err(|error| match error {
                EngineError::Callback(error) => format!("{}: {error}", error.class),
                other => other.to_string(),
            }),
        };
        let callback = match callback {
            Ok(callback) => callback,
            Err(reason) => {
                bad_lines.push(BadLine {
                    line: entry.line,
                    reason,
                });
                continue;
            }
        };
        let source = match canonical_source(&entry.source, base_dir.as_deref()) {
            Ok(source) => source,
            Err(error) => {
                bad_lines.push(BadLine {
                    line: entry.line,
                    reason: format!("{}: {error}", error.class()),
                });
                continue;
            }
        };
        callbacks.push(callback);
        let key = entry
            .key
            .clone()
            .unwrap_or_else(|| idempotency_key(&source, &workflow));
        // Parsing checked the range.
        let priority = entry
            .priority
            .and_then(|priority| i32::try_from(priority).ok())
            .unwrap_or(PRIORITY_BACKFILL);
        requests.push(SubmitRequest {
            key,
            source,
            workflow,
            reingest: options.reingest,
            priority,
        });
    }
    bad_lines.sort_by_key(|bad| bad.line);
    let batch = BatchOptions {
        resubmit: if options.retry_permanent {
            Resubmit::FailedAndCancelled
        } else {
            Resubmit::TransientFailures
        },
        backfill: Some(backfill.id),
    };
    let mut planned = Vec::new();
    let mut seen = HashSet::new();
    for (chunk, chunk_callbacks) in requests
        .chunks(SUBMIT_BATCH_MAX)
        .zip(callbacks.chunks(SUBMIT_BATCH_MAX))
    {
        let submitted_chunk = engine.store.submit_batch(chunk, &batch).await?;
        // After the batch, as `orchestrator::submit` does: a job that finished meanwhile gets
        // its notice from `set_webhooks` itself.
        let hooks: Vec<_> = submitted_chunk
            .iter()
            .zip(chunk_callbacks)
            .filter_map(|(submitted, callback)| callback.clone().map(|url| (submitted.job.id, url)))
            .collect();
        if !hooks.is_empty() {
            engine.store.set_webhooks(&hooks).await?;
        }
        for submitted in submitted_chunk {
            if !seen.insert(submitted.job.id) {
                continue;
            }
            let job = submitted.job;
            // A failed or cancelled job that stayed so, or a succeeded one not reingested, is
            // recognised without running; anything pending runs.
            let run = matches!(job.status, Status::Pending | Status::Running);
            // What the job does from here on is this run's.
            let events_from = job.events_next;
            planned.push(Planned {
                job,
                events_from,
                run,
            });
        }
    }
    tracing::info!(
        backfill_id = %backfill.id,
        lines = requests.len(),
        jobs = planned.len(),
        bad_lines = bad_lines.len(),
        "backfill submitted"
    );
    Ok(Submission {
        backfill,
        format: manifest.format,
        lines_accepted: requests.len(),
        bad_lines,
        planned,
    })
}

/// The live tally of a backfill run, shared with a progress display.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackfillProgress {
    /// Distinct jobs in the backfill.
    pub total: usize,
    /// Jobs that ran and succeeded in this run.
    pub succeeded: usize,
    /// Jobs that ran and failed in this run.
    pub failed: usize,
    /// Jobs recognised without running (already succeeded, permanently failed, cancelled), and
    /// jobs that ended neither succeeded nor failed.
    pub skipped: usize,
    /// Bytes downloaded and stored by this run's finished jobs.
    pub bytes_downloaded: u64,
    pub bytes_stored: u64,
    /// Bytes the downloads still running have received so far (from their progress records).
    pub bytes_in_flight: u64,
}

impl BackfillProgress {
    pub fn finished(&self) -> usize {
        self.succeeded + self.failed + self.skipped
    }
}

/// Runs a submission's pending jobs, `concurrency` at once, keeping `progress` current, and sums
/// the end state of every job of the manifest.
pub async fn run_backfill(
    engine: &Engine,
    submission: Submission,
    concurrency: usize,
    progress: Arc<Mutex<BackfillProgress>>,
) -> Result<BackfillSummary, EngineError> {
    let started = Instant::now();
    let Submission {
        backfill,
        format,
        lines_accepted,
        bad_lines,
        planned,
    } = submission;
    let ids: Vec<JobId> = planned
        .iter()
        .filter(|planned| planned.run)
        .map(|planned| planned.job.id)
        .collect();
    {
        let mut tally = lock(&progress);
        tally.total = planned.len();
        tally.skipped = planned.len() - ids.len();
    }
    let events_from: BTreeMap<JobId, u64> = planned
        .iter()
        .map(|planned| (planned.job.id, planned.events_from))
        .collect();
    // Finished jobs go to a task that reads what they did (events, checkpoints) from the store;
    // the hook itself must not wait.
    let (finished_sender, mut finished) = tokio::sync::mpsc::unbounded_channel::<Job>();
    let counter = {
        let engine = engine.clone();
        let progress = progress.clone();
        async move {
            while let Some(job) = finished.recv().await {
                let from = events_from.get(&job.id).copied().unwrap_or(0);
                let (downloaded, stored) = bytes_of_run(&engine, job.id, from)
                    .await
                    .unwrap_or_else(|error| {
                        tracing::warn!(job_id = %job.id, %error, "cannot count the job's bytes");
                        (0, 0)
                    });
                let mut tally = lock(&progress);
                match job.status {
                    Status::Succeeded => tally.succeeded += 1,
                    Status::Failed => tally.failed += 1,
                    _ => tally.skipped += 1,
                }
                tally.bytes_downloaded += downloaded;
                tally.bytes_stored += stored;
            }
        }
    };
    let in_flight = {
        let engine = engine.clone();
        let progress = progress.clone();
        async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                let bytes = bytes_in_flight(&engine).await.unwrap_or(0);
                lock(&progress).bytes_in_flight = bytes;
            }
        }
    };
    // The backfill process runs the whole queue, not only its own jobs: while it holds the home,
    // jobs submitted or retried by other commands (over the home's socket) are run too, live
    // submissions first (they have the higher priority). It returns once the queue is drained.
    let runner = async move {
        let ours: BTreeSet<JobId> = ids.iter().copied().collect();
        let options = ScheduleOptions {
            concurrency,
            only: None,
            until: Until::Drained,
        };
        let result = schedule(
            &engine.orchestrator(),
            &options,
            std::future::pending(),
            |job| {
                if ours.contains(&job.id) {
                    let _ = finished_sender.send(job.clone());
                }
            },
        )
        .await;
        drop(finished_sender);
        result?;
        let mut jobs = Vec::with_capacity(ids.len());
        for &id in &ids {
            if let Some(job) = engine.store.job(id).await? {
                jobs.push(job);
            }
        }
        Ok::<_, EngineError>(jobs)
    };
    let in_flight = AbortOnDrop(tokio::spawn(in_flight));
    let (ran_jobs, ()) = tokio::join!(runner, counter);
    drop(in_flight);
    let ran_jobs = ran_jobs?;
    lock(&progress).bytes_in_flight = 0;

    let ran = ran_jobs.len();
    let mut final_jobs: BTreeMap<JobId, Job> = planned
        .into_iter()
        .map(|planned| (planned.job.id, planned.job))
        .collect();
    for job in ran_jobs {
        final_jobs.insert(job.id, job);
    }
    let mut by_status = BTreeMap::new();
    let mut failures_by_class = BTreeMap::new();
    let mut failures_by_host = BTreeMap::new();
    for job in final_jobs.values() {
        *by_status.entry(job.status.to_string()).or_insert(0) += 1;
        if job.status == Status::Failed {
            let class = job
                .error
                .as_ref()
                .map_or_else(|| "unknown".to_string(), |error| error.class.clone());
            *failures_by_class.entry(class).or_insert(0) += 1;
            *failures_by_host
                .entry(source_host(&job.source))
                .or_insert(0) += 1;
        }
    }
    let tally = lock(&progress).clone();
    Ok(BackfillSummary {
        backfill,
        format,
        lines_accepted,
        bad_lines,
        jobs: final_jobs.len(),
        ran,
        skipped: final_jobs.len() - ran,
        by_status,
        failures_by_class,
        failures_by_host,
        bytes_downloaded: tally.bytes_downloaded,
        bytes_stored: tally.bytes_stored,
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

fn lock(progress: &Mutex<BackfillProgress>) -> std::sync::MutexGuard<'_, BackfillProgress> {
    // A panic while holding the tally leaves counters, not invariants: keep using them.
    progress
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a job's run since event `from` downloaded (its download step completed: the checkpoint's
/// outputs) and stored (the objects its store step wrote, not those found already stored).
async fn bytes_of_run(
    engine: &Engine,
    id: JobId,
    from: u64,
) -> Result<(u64, u64), crate::store::StoreError> {
    let events = engine.store.events(id).await?;
    let mut downloaded = 0;
    let mut written: HashSet<String> = HashSet::new();
    for event in events.iter().filter(|event| event.seq >= from) {
        match &event.kind {
            EventKind::StepCompleted { step, .. } if step == "download" => {
                if let Some(checkpoint) = engine.store.checkpoint(id, step).await? {
                    downloaded = checkpoint.outputs.iter().map(|output| output.size).sum();
                }
            }
            EventKind::ObjectsWritten { keys, .. } => written.extend(keys.iter().cloned()),
            _ => {}
        }
    }
    let mut stored = 0;
    if !written.is_empty() {
        for checkpoint in engine.store.checkpoints(id).await? {
            for output in &checkpoint.outputs {
                if let Location::Object(key) = &output.location
                    && written.remove(key)
                {
                    stored += output.size;
                }
            }
        }
    }
    Ok((downloaded, stored))
}

/// Bytes received so far by the downloads of running jobs. This process holds the home alone, so
/// every running job is one of its own.
async fn bytes_in_flight(engine: &Engine) -> Result<u64, crate::store::StoreError> {
    let running = engine
        .store
        .jobs(&JobFilter {
            status: Some(Status::Running),
            limit: 1_000,
        })
        .await?;
    let mut bytes = 0;
    for job in running {
        if job.ingestion_phase == Some(Phase::Downloading)
            && let Some(progress) = engine.store.progress(job.id).await?
        {
            bytes += progress.bytes_done;
        }
    }
    Ok(bytes)
}

/// `narra jobs --backfill ID`: the backfill's jobs, newest first, optionally of one status.
pub async fn jobs_of_backfill(
    engine: &Engine,
    id: BackfillId,
    status: Option<Status>,
    limit: usize,
) -> Result<Vec<Job>, EngineError> {
    let mut jobs = Vec::new();
    for job_id in engine.store.backfill_jobs(id).await?.into_iter().rev() {
        if jobs.len() >= limit {
            break;
        }
        // A job deleted since is still named by the index: skipped.
        if let Some(job) = engine.store.job(job_id).await?
            && status.is_none_or(|status| job.status == status)
        {
            jobs.push(job);
        }
    }
    Ok(jobs)
}

/// `narra backfill --list`: every backfill with its number of jobs, oldest first.
pub async fn list_backfills(engine: &Engine) -> Result<Vec<(Backfill, usize)>, EngineError> {
    let mut list = Vec::new();
    for backfill in engine.store.backfills().await? {
        let jobs = engine.store.backfill_jobs(backfill.id).await?.len();
        list.push((backfill, jobs));
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lines(manifest: &Manifest) -> (Vec<usize>, Vec<usize>) {
        (
            manifest.entries.iter().map(|entry| entry.line).collect(),
            manifest.bad_lines.iter().map(|bad| bad.line).collect(),
        )
    }

    #[test]
    fn a_list_of_sources_skips_comments_and_blank_lines() {
        let text = "# videos\nhttps://cdn.example.com/a.mp4\n\n  /srv/b.mkv  \nhttp://bad host/x\n";
        let manifest = parse_manifest("list.txt", text);
        assert_eq!(manifest.format, ManifestFormat::Lines);
        assert_eq!(lines(&manifest), (vec![2, 4], vec![5]));
        assert_eq!(manifest.entries[1].source, "/srv/b.mkv");
        assert!(
            manifest.bad_lines[0].reason.contains("not a valid URL"),
            "{:?}",
            manifest.bad_lines
        );
    }

    #[test]
    fn json_lines_carry_workflow_key_and_priority() {
        let text = concat!(
            "{\"source\": \"https://h/a.mp4\", \"workflow\": \"asr\", \"key\": \"k1\", \"priority\": 5}\n",
            "{\"source\": 3}\n",
            "not json\n",
            "{\"key\": \"no source\"}\n",
            "{\"source\": \"https://h/b.mp4\", \"extra\": true}\n",
            "{\"source\": \"https://h/c.mp4\", \"priority\": \"high\"}\n",
        );
        let manifest = parse_manifest("-", text);
        assert_eq!(manifest.format, ManifestFormat::JsonLines);
        assert_eq!(lines(&manifest), (vec![1, 5], vec![2, 3, 4, 6]));
        assert_eq!(
            manifest.entries[0],
            ManifestEntry {
                line: 1,
                source: "https://h/a.mp4".to_string(),
                workflow: Some("asr".to_string()),
                key: Some("k1".to_string()),
                priority: Some(5),
                callback_url: None,
            }
        );
    }

    #[test]
    fn json_lines_and_csv_may_name_a_callback_url() {
        let callback_urls = |name: &str, text: &str| -> Vec<Option<String>> {
            let manifest = parse_manifest(name, text);
            manifest
                .entries
                .into_iter()
                .map(|entry| entry.callback_url)
                .collect()
        };
        assert_eq!(
            callback_urls(
                "-",
                "{\"source\": \"https://h/a.mp4\", \"callback_url\": \"https://hooks.example.com/a\"}\n",
            ),
            [Some("https://hooks.example.com/a".to_string())]
        );
        assert_eq!(
            callback_urls(
                "list.csv",
                "source,callback_url\nhttps://h/a.mp4,https://hooks.example.com/b\nhttps://h/c.mp4,\n",
            ),
            [Some("https://hooks.example.com/b".to_string()), None]
        );
    }

    #[test]
    fn csv_needs_a_source_column_and_quotes_may_hold_commas() {
        let text = "key,Source,workflow\nk1,\"https://h/a,b.mp4\",asr\n,https://h/c.mp4,\nonly,two\n\"x,https://h/d.mp4,\n";
        let manifest = parse_manifest("list", text);
        assert_eq!(manifest.format, ManifestFormat::Csv);
        assert_eq!(lines(&manifest), (vec![2, 3], vec![4, 5]));
        assert_eq!(manifest.entries[0].source, "https://h/a,b.mp4");
        assert_eq!(manifest.entries[0].key.as_deref(), Some("k1"));
        assert_eq!(manifest.entries[1].key, None);
        assert_eq!(manifest.entries[1].workflow, None);

        let headless = parse_manifest("list.csv", "url\nhttps://h/a.mp4\n");
        assert_eq!(lines(&headless), (vec![], vec![1, 2]));
        assert!(
            headless.bad_lines[0]
                .reason
                .contains("no \"source\" column")
        );
    }

    #[test]
    fn the_extension_decides_before_the_content() {
        assert_eq!(
            detect_format("a.jsonl", "https://h/a.mp4"),
            ManifestFormat::JsonLines
        );
        assert_eq!(
            detect_format("a.CSV", "https://h/a.mp4"),
            ManifestFormat::Csv
        );
        assert_eq!(
            detect_format("a.txt", "# c\n\n{\"source\": \"x\"}"),
            ManifestFormat::JsonLines
        );
        assert_eq!(detect_format("a", "source\nx"), ManifestFormat::Csv);
        assert_eq!(detect_format("a", ""), ManifestFormat::Lines);
    }

    #[test]
    fn stdin_is_named_by_its_content() {
        assert_eq!(manifest_name("-", "a\n"), manifest_name("-", "a\n"));
        assert_ne!(manifest_name("-", "a\n"), manifest_name("-", "b\n"));
        assert!(manifest_name("-", "a\n").starts_with("stdin:"));
        assert_eq!(manifest_name("/srv/m.txt", ""), "/srv/m.txt");
    }

    /// A good line of each format, and a bad one.
    fn good_line(format: ManifestFormat, n: usize) -> String {
        match format {
            ManifestFormat::Lines => format!("https://cdn.example.com/{n}.mp4"),
            ManifestFormat::JsonLines => {
                format!("{{\"source\": \"https://cdn.example.com/{n}.mp4\"}}")
            }
            ManifestFormat::Csv => format!("https://cdn.example.com/{n}.mp4,k{n}"),
        }
    }

    fn bad_line(format: ManifestFormat, n: usize) -> String {
        match (format, n % 3) {
            (ManifestFormat::Lines, 0) => format!("http://bad host/{n}"),
            (ManifestFormat::Lines, 1) => format!("/srv/\u{1}{n}"),
            (ManifestFormat::Lines, _) => format!("https://[::1/{n}"),
            (ManifestFormat::JsonLines, 0) => format!("{{\"source\": {n}}}"),
            (ManifestFormat::JsonLines, 1) => format!("{{source {n}"),
            (ManifestFormat::JsonLines, _) => format!("[\"https://h/{n}.mp4\"]"),
            (ManifestFormat::Csv, 0) => format!("https://h/{n}.mp4"),
            (ManifestFormat::Csv, 1) => format!("\"https://h/{n}.mp4,k"),
            (ManifestFormat::Csv, _) => format!(",k{n}"),
        }
    }

    proptest! {
        // Guards that no input makes parsing panic, and that what it reports is consistent: line
        // numbers within the text, in order, each line an entry or a bad line at most once.
        #[test]
        fn parsing_never_panics_and_numbers_lines_within_the_text(
            text in any::<String>(),
            name in prop::sample::select(vec!["m.txt", "m.jsonl", "m.csv", "-"]),
        ) {
            let manifest = parse_manifest(name, &text);
            let count = text.lines().count();
            let mut numbers: Vec<usize> = manifest.entries.iter().map(|entry| entry.line)
                .chain(manifest.bad_lines.iter().map(|bad| bad.line))
                .collect();
            prop_assert!(numbers.iter().all(|&line| (1..=count).contains(&line)));
            let before = numbers.len();
            numbers.sort_unstable();
            numbers.dedup();
            prop_assert_eq!(numbers.len(), before, "a line reported twice");
        }

        // Guards that every bad line is reported by its number and every good line becomes an
        // entry, whatever the mix, in each format.
        #[test]
        fn every_bad_line_is_reported_by_number(
            kinds in prop::collection::vec(0u8..4, 0..60),
            format in prop::sample::select(vec![
                ManifestFormat::Lines, ManifestFormat::JsonLines, ManifestFormat::Csv,
            ]),
        ) {
            let (name, mut text, offset) = match format {
                ManifestFormat::Lines => ("m.txt", String::new(), 0),
                ManifestFormat::JsonLines => ("m.jsonl", String::new(), 0),
                ManifestFormat::Csv => ("m.csv", "source,key\n".to_string(), 1),
            };
            let mut good = Vec::new();
            let mut bad = Vec::new();
            for (index, kind) in kinds.iter().enumerate() {
                let line = index + 1 + offset;
                match kind {
                    0 => { text.push_str(&bad_line(format, index)); bad.push(line); }
                    1 => text.push_str("# a comment"),
                    2 => text.push_str("   "),
                    _ => { text.push_str(&good_line(format, index)); good.push(line); }
                }
                text.push('\n');
            }
            let manifest = parse_manifest(name, &text);
            prop_assert_eq!(manifest.format, format);
            prop_assert_eq!(lines(&manifest), (good, bad));
        }
    }
}
