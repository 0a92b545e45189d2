//! `GET /metrics`: Prometheus text exposition (format 0.0.4), written by hand.
//!
//! Every figure is derived from the state store at scrape time, not from counters in this process:
//! jobs by status and running jobs by phase (gauges), and, from each job's checkpoints and event
//! history (the events still held plus the counts of its compacted summary), bytes downloaded and
//! stored, step durations, retries, skips and failures by class. So the figures are the same
//! whichever process ran the work and survive restarts; they only go down when `prune` or `delete`
//! removes jobs' history. A scrape reads every job, so it costs what `narra audit` costs: scrape
//! it every minute or so, not every second. Compacted failures have no class any more: they are
//! counted under `class="compacted"`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::{ApiError, ApiState};
use crate::engine::Engine;
use crate::model::job::{EventKind, Location, Status, Timestamp};
use crate::store::StoreError;

/// The statuses always exposed, so a series exists at 0 before its first job.
const STATUSES: [Status; 5] = [
    Status::Pending,
    Status::Running,
    Status::Succeeded,
    Status::Failed,
    Status::Cancelled,
];
const PHASES: [&str; 3] = ["downloading", "processing", "storing"];

/// What a scrape reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    pub jobs_by_status: BTreeMap<String, u64>,
    pub running_by_phase: BTreeMap<String, u64>,
    pub bytes_downloaded: u64,
    pub bytes_stored: u64,
    /// Per step: (sum of seconds, count) of finished runs whose start is still held.
    pub step_durations: BTreeMap<String, (f64, u64)>,
    pub retries: u64,
    pub steps_skipped: u64,
    pub failures_by_class: BTreeMap<String, u64>,
}

/// Reads the store and sums the figures.
pub async fn collect(engine: &Engine) -> Result<Metrics, StoreError> {
    let mut metrics = Metrics::default();
    for status in STATUSES {
        metrics
            .jobs_by_status
            .insert(status.as_str().to_string(), 0);
    }
    for phase in PHASES {
        metrics.running_by_phase.insert(phase.to_string(), 0);
    }
    let jobs = engine.all_jobs(None).await?;
    for job in &jobs {
        *metrics
            .jobs_by_status
            .entry(job.status.as_str().to_string())
            .or_default() += 1;
        if job.status == Status::Running
            && let Some(phase) = job.ingestion_phase
        {
            *metrics
                .running_by_phase
                .entry(phase.as_str().to_string())
                .or_default() += 1;
        }
        let checkpoints = engine.store.checkpoints(job.id).await?;
        let events = engine.store.events(job.id).await?;
        let summary = engine.store.event_summary(job.id).await?;
        let mut written: BTreeSet<String> = BTreeSet::new();
        if let Some(summary) = &summary {
            for (kind, count) in &summary.kinds {
                if kind == "retry_requested" {
                    metrics.retries += count;
                }
            }
            for step in &summary.steps {
                metrics.steps_skipped += step.skipped;
                if step.failed > 0 {
                    *metrics
                        .failures_by_class
                        .entry("compacted".to_string())
                        .or_default() += step.failed;
                }
                written.extend(step.objects_written.iter().map(|(key, _)| key.clone()));
            }
        }
        let mut started: BTreeMap<String, Timestamp> = BTreeMap::new();
        for event in &events {
            match &event.kind {
                EventKind::StepStarted { step } => {
                    started.insert(step.clone(), event.at);
                }
                EventKind::StepCompleted { step, .. } | EventKind::StepFailed { step, .. } => {
                    if let Some(at) = started.remove(step) {
                        let seconds = event.at.0.saturating_sub(at.0).max(0) as f64 / 1000.0;
                        let entry = metrics.step_durations.entry(step.clone()).or_default();
                        entry.0 += seconds;
                        entry.1 += 1;
                    }
                }
                _ => {}
            }
            match &event.kind {
                EventKind::StepFailed { error, .. } => {
                    *metrics
                        .failures_by_class
                        .entry(error.class.clone())
                        .or_default() += 1;
                }
                EventKind::StepSkipped { .. } => metrics.steps_skipped += 1,
                EventKind::RetryRequested { .. } => metrics.retries += 1,
                EventKind::ObjectsWritten { keys, .. } => written.extend(keys.iter().cloned()),
                _ => {}
            }
        }
        for checkpoint in &checkpoints {
            for output in &checkpoint.outputs {
                if checkpoint.step == "download" {
                    metrics.bytes_downloaded += output.size;
                }
                if let Location::Object(key) = &output.location
                    && written.contains(key)
                {
                    metrics.bytes_stored += output.size;
                }
            }
        }
    }
    Ok(metrics)
}

/// A label value, escaped as the exposition format requires.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The exposition text of `metrics`.
pub fn exposition(metrics: &Metrics) -> String {
    let mut text = String::new();
    let mut section = |name: &str, kind: &str, help: &str, samples: &str| {
        let _ = writeln!(text, "# HELP {name} {help}");
        let _ = writeln!(text, "# TYPE {name} {kind}");
        text.push_str(samples);
    };
    // A family with one sample a value of its one label, in the map's order.
    let by_label = |name: &str, key: &str, counts: &BTreeMap<String, u64>| {
        let mut samples = String::new();
        for (value, count) in counts {
            let _ = writeln!(samples, "{name}{{{key}=\"{}\"}} {count}", label(value));
        }
        samples
    };
    section(
        "narra_jobs",
        "gauge",
        "Jobs in the state store by status.",
        &by_label("narra_jobs", "status", &metrics.jobs_by_status),
    );
    section(
        "narra_jobs_running",
        "gauge",
        "Running jobs by ingestion_phase.",
        &by_label("narra_jobs_running", "phase", &metrics.running_by_phase),
    );
    section(
        "narra_bytes_downloaded_total",
        "counter",
        "Bytes of the downloads jobs' checkpoints hold.",
        &format!(
            "narra_bytes_downloaded_total {}\n",
            metrics.bytes_downloaded
        ),
    );
    section(
        "narra_bytes_stored_total",
        "counter",
        "Bytes of the objects jobs wrote to storage (not those found already stored).",
        &format!("narra_bytes_stored_total {}\n", metrics.bytes_stored),
    );
    let mut samples = String::new();
    for (step, (seconds, count)) in &metrics.step_durations {
        let step = label(step);
        let _ = writeln!(
            samples,
            "narra_step_duration_seconds_sum{{step=\"{step}\"}} {seconds}"
        );
        let _ = writeln!(
            samples,
            "narra_step_duration_seconds_count{{step=\"{step}\"}} {count}"
        );
    }
    section(
        "narra_step_duration_seconds",
        "summary",
        "How long step runs took, from step_started to step_completed or step_failed.",
        &samples,
    );
    section(
        "narra_retries_total",
        "counter",
        "Retries requested (by operators, submissions, or automatically).",
        &format!("narra_retries_total {}\n", metrics.retries),
    );
    section(
        "narra_steps_skipped_total",
        "counter",
        "Steps skipped because their checkpoint verified.",
        &format!("narra_steps_skipped_total {}\n", metrics.steps_skipped),
    );
    section(
        "narra_failures_total",
        "counter",
        "Step failures by error class.",
        &by_label("narra_failures_total", "class", &metrics.failures_by_class),
    );
    text
}

/// `GET /metrics`.
pub async fn metrics(axum::extract::State(state): State<ApiState>) -> Result<Response, ApiError> {
    let metrics = collect(&state.engine).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        exposition(&metrics),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_has_help_and_type_before_its_samples_and_labels_are_escaped() {
        let mut metrics = Metrics::default();
        metrics.jobs_by_status.insert("failed".into(), 2);
        metrics.failures_by_class.insert("we\"ird\\".into(), 1);
        metrics.step_durations.insert("download".into(), (1.5, 3));
        let text = exposition(&metrics);
        assert!(text.contains("narra_jobs{status=\"failed\"} 2\n"));
        assert!(text.contains("narra_failures_total{class=\"we\\\"ird\\\\\"} 1\n"));
        assert!(text.contains("narra_step_duration_seconds_sum{step=\"download\"} 1.5\n"));
        let mut typed = BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = name
                    .strip_suffix("_sum")
                    .or_else(|| name.strip_suffix("_count"))
                    .filter(|family| typed.contains(*family))
                    .unwrap_or(name);
                assert!(typed.contains(family), "{line}: no TYPE before it");
            }
        }
    }
}
