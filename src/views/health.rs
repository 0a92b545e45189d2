//! The health report as people and programs see it (`narra health`, `GET /health`): a line per
//! signal saying whether it calls for escalation, or the report as JSON.

use std::collections::BTreeMap;

use serde::Serialize;

use super::stuck::{StuckView, stuck_text, stuck_view};
use super::{Rfc3339, Text, ids};
use crate::model::health::{FailingHost, HealthReport};
use crate::model::job::{Breaker, HostState, JobId};

/// `{escalate, escalations, window_s, failed_recently, failing_hosts, host_failures_min, storage,
/// stuck, corruption, crash_loops, circuit_breakers, waiting_for_scratch, workers,
/// fenced_writes}`.
#[derive(Debug, Serialize)]
pub struct HealthView<'a> {
    /// Whether any signal calls for escalation: `narra health` then exits 1.
    pub escalate: bool,
    /// The signals that do, by name (`failing_hosts`, `storage`, `stuck_jobs`, ...).
    pub escalations: Vec<&'static str>,
    /// How far back failures, storage faults and corruption count.
    pub window_s: u64,
    /// Jobs that failed in the window (last updated within `window_s`).
    pub failed_recently: usize,
    /// Source hosts with failed jobs in the window, busiest first.
    pub failing_hosts: Vec<FailingHostView<'a>>,
    /// A host with this many failed jobs in the window escalates.
    pub host_failures_min: usize,
    /// Whether storage answers, and the window's job failures of a storage class.
    pub storage: StorageView<'a>,
    /// Running jobs whose lease expired or that made no progress for `stuck_after_s`.
    pub stuck: Vec<StuckView<'a>>,
    /// The window's checksum failures, and the corrupt artifacts cleanup deleted.
    pub corruption: CorruptionView<'a>,
    /// Jobs quarantined as `crash_loop` in the window.
    pub crash_loops: Vec<Text<JobId>>,
    /// Source hosts whose breaker is open or probing: their pending jobs are held.
    pub circuit_breakers: Vec<BreakerView<'a>>,
    /// Pending jobs held back (`scratch_low`) until scratch space frees up.
    pub waiting_for_scratch: Vec<WaitingView<'a>>,
    /// The running jobs by the worker that holds them: information, not an escalation.
    pub workers: Vec<WorkerView<'a>>,
    /// Writes refused by fencing in the window: information, not an escalation.
    pub fenced_writes: usize,
}

#[derive(Debug, Serialize)]
pub struct FailingHostView<'a> {
    /// The source's host and port; `local` for files.
    pub host: &'a str,
    /// Its jobs that failed in the window.
    pub failures: usize,
    /// The failures by error class.
    pub classes: &'a BTreeMap<String, usize>,
    /// Whether `failures` reached `host_failures_min`.
    pub escalate: bool,
}

/// Whether storage answers, and recent job failures of a storage class.
#[derive(Debug, Serialize)]
pub struct StorageView<'a> {
    /// Whether storage answered a probe just now.
    pub reachable: bool,
    /// The storage URI and what the probe found, in words.
    pub detail: &'a str,
    /// Jobs that failed in the window with a storage class (`storage_unavailable`, `storage_auth`),
    /// by class.
    pub failures: &'a BTreeMap<String, usize>,
    /// Storage is unreachable, or some job failed with a storage class.
    pub escalate: bool,
}

/// Recent checksum failures, and corrupt artifacts cleanup removed.
#[derive(Debug, Serialize)]
pub struct CorruptionView<'a> {
    /// Jobs that failed in the window with `checksum_mismatch`, by class.
    pub failures: &'a BTreeMap<String, usize>,
    /// Corrupt artifacts cleanup deleted in the window.
    pub corrupt_artifacts_removed: usize,
    /// Whether either count is above zero.
    pub escalate: bool,
}

/// A source host whose breaker is not closed: `{host, state, until, probe, recent_refusals,
/// opened_total, held_total}`.
#[derive(Debug, Serialize)]
pub struct BreakerView<'a> {
    /// The source's host and port.
    pub host: &'a str,
    /// `closed`, `open` (until `until`) or `probing` (with job `probe`).
    pub state: &'static str,
    /// When an open breaker lets one probe job through; `null` unless `open`.
    pub until: Option<Rfc3339>,
    /// The job testing the host; `null` unless `probing`.
    pub probe: Option<Text<JobId>>,
    /// The host's blocking failures since it last answered a job, oldest first.
    pub recent_refusals: Vec<RefusalView<'a>>,
    /// How many times the breaker opened, ever.
    pub opened_total: u64,
    /// Jobs sent back to pending while it was open, without spending an attempt.
    pub held_total: u64,
}

#[derive(Debug, Serialize)]
pub struct RefusalView<'a> {
    /// When the job failed.
    pub at: Rfc3339,
    /// The blocking error class (`download_blocked`, `rate_limited`, ...).
    pub class: &'a str,
    /// The job that failed.
    pub job: Text<JobId>,
}

/// A pending job that waits for scratch space, and why.
#[derive(Debug, Serialize)]
pub struct WaitingView<'a> {
    /// The waiting job's id.
    pub id: Text<JobId>,
    /// Why it waits, as its error message says.
    pub reason: Option<&'a str>,
    /// When it is tried again; `null` when it may be claimed now.
    pub not_before: Option<Rfc3339>,
}

/// A worker (`host:pid`) and the running jobs it holds.
#[derive(Debug, Serialize)]
pub struct WorkerView<'a> {
    /// The worker, as its leases name it (`host:pid`).
    pub worker_id: &'a str,
    /// The running jobs whose lease it holds.
    pub running: Vec<Text<JobId>>,
}

pub fn health(report: &HealthReport) -> HealthView<'_> {
    HealthView {
        escalate: report.escalate(),
        escalations: report.escalations(),
        window_s: report.options.window_s,
        failed_recently: report.failed_recently,
        failing_hosts: report.hosts.iter().map(failing_host).collect(),
        host_failures_min: report.options.host_failures_min,
        storage: StorageView {
            reachable: report.storage.reachable,
            detail: &report.storage.detail,
            failures: &report.storage.failures,
            escalate: report.storage_escalates(),
        },
        stuck: report.stuck.iter().map(stuck_view).collect(),
        corruption: CorruptionView {
            failures: &report.corruption.failures,
            corrupt_artifacts_removed: report.corruption.corrupt_artifacts_removed,
            escalate: report.corruption_escalates(),
        },
        crash_loops: ids(&report.crash_loops),
        circuit_breakers: report.breakers.iter().map(breaker).collect(),
        waiting_for_scratch: report
            .waiting_for_scratch
            .iter()
            .map(|job| WaitingView {
                id: Text(job.id),
                reason: job.error.as_ref().map(|error| error.message.as_str()),
                not_before: job.not_before.map(Rfc3339),
            })
            .collect(),
        workers: report
            .workers
            .iter()
            .map(|(worker_id, running)| WorkerView {
                worker_id,
                running: ids(running),
            })
            .collect(),
        fenced_writes: report.fenced_writes,
    }
}

fn failing_host(host: &FailingHost) -> FailingHostView<'_> {
    FailingHostView {
        host: &host.host,
        failures: host.failures,
        classes: &host.classes,
        escalate: host.escalate,
    }
}

fn breaker(host: &HostState) -> BreakerView<'_> {
    let (state, until, probe) = match &host.breaker {
        Breaker::Closed => ("closed", None, None),
        Breaker::Open { until, .. } => ("open", Some(Rfc3339(*until)), None),
        Breaker::Probing { probe, .. } => ("probing", None, Some(Text(*probe))),
    };
    BreakerView {
        host: &host.host,
        state,
        until,
        probe,
        recent_refusals: host
            .failures
            .iter()
            .map(|failure| RefusalView {
                at: Rfc3339(failure.at),
                class: &failure.class,
                job: Text(failure.job),
            })
            .collect(),
        opened_total: host.opened_total,
        held_total: host.held_total,
    }
}

fn counts_text(counts: &BTreeMap<String, usize>) -> String {
    counts
        .iter()
        .map(|(class, count)| format!("{class} {count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn verdict(escalate: bool) -> &'static str {
    if escalate { "ESCALATE" } else { "ok" }
}

/// One signal's line: its name, its verdict (`ok`, `ESCALATE`, `info`) and what was seen.
fn signal(name: &str, verdict: &str, detail: &str) -> String {
    format!("{name:<14} {verdict:<8}  {detail}")
}

fn breaker_text(host: &HostState) -> String {
    let state = match &host.breaker {
        Breaker::Closed => "closed".to_string(),
        Breaker::Open { until, .. } => format!("open until {}", until.to_rfc3339()),
        Breaker::Probing { probe, .. } => format!("testing the host with job {probe}"),
    };
    let classes: Vec<&str> = host
        .failures
        .iter()
        .map(|failure| failure.class.as_str())
        .collect();
    format!(
        "{}: {state}; its pending jobs are held ({} refusals in a row: {}; opened {} times, {} jobs held)",
        host.host,
        host.failures.len(),
        classes.join(", "),
        host.opened_total,
        host.held_total
    )
}

/// A signal's lines: one `ESCALATE` line per finding, or its `ok` line when there is none.
fn findings_or_ok(name: &str, findings: Vec<String>, ok: String) -> Vec<String> {
    if findings.is_empty() {
        return vec![signal(name, "ok", &ok)];
    }
    findings
        .iter()
        .map(|finding| signal(name, "ESCALATE", finding))
        .collect()
}

/// The report for people: a line per signal, then what calls for escalation.
pub fn report_text(report: &HealthReport) -> String {
    let options = &report.options;
    let hosts = report
        .hosts
        .iter()
        .filter(|host| host.escalate)
        .map(|host| {
            format!(
                "{}: {} failed jobs in the last {} s ({})",
                host.host,
                host.failures,
                options.window_s,
                counts_text(&host.classes)
            )
        })
        .collect();
    let mut lines = findings_or_ok(
        "failing_hosts",
        hosts,
        format!(
            "no host with {} or more failed jobs in the last {} s ({} failed)",
            options.host_failures_min, options.window_s, report.failed_recently
        ),
    );
    let mut storage = report.storage.detail.clone();
    if !report.storage.failures.is_empty() {
        storage.push_str(&format!(
            "; jobs failed by storage: {}",
            counts_text(&report.storage.failures)
        ));
    }
    lines.push(signal(
        "storage",
        verdict(report.storage_escalates()),
        &storage,
    ));
    lines.extend(findings_or_ok(
        "stuck_jobs",
        report.stuck.iter().map(stuck_text).collect(),
        format!(
            "none (lease expired, or no progress for {} s)",
            options.stuck_after_s
        ),
    ));
    let corruption = if report.corruption_escalates() {
        format!(
            "jobs failed: {}; corrupt artifacts removed by cleanup: {}",
            if report.corruption.failures.is_empty() {
                "none".to_string()
            } else {
                counts_text(&report.corruption.failures)
            },
            report.corruption.corrupt_artifacts_removed
        )
    } else {
        "no checksum mismatch and no corrupt artifact removed".to_string()
    };
    lines.push(signal(
        "corruption",
        verdict(report.corruption_escalates()),
        &corruption,
    ));
    let crash_loops = (!report.crash_loops.is_empty()).then(|| {
        format!(
            "{} job(s) quarantined: their process died {} times at the same point: {}",
            report.crash_loops.len(),
            crate::model::machine::CRASH_LOOP_DEATHS,
            report
                .crash_loops
                .iter()
                .map(|id| id.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    });
    lines.extend(findings_or_ok(
        "crash_loops",
        crash_loops.into_iter().collect(),
        format!(
            "no job quarantined as crash_loop in the last {} s",
            options.window_s
        ),
    ));
    lines.extend(findings_or_ok(
        "circuit_open",
        report.breakers.iter().map(breaker_text).collect(),
        "every source host's breaker is closed".to_string(),
    ));
    let scratch = report.waiting_for_scratch.first().map(|job| {
        format!(
            "{} job(s) wait for scratch space: {}",
            report.waiting_for_scratch.len(),
            job.error
                .as_ref()
                .map_or(String::new(), |error| error.message.clone())
        )
    });
    lines.extend(findings_or_ok(
        "scratch_space",
        scratch.into_iter().collect(),
        "no job waits for scratch space".to_string(),
    ));
    let running: usize = report.workers.values().map(Vec::len).sum();
    let holders: Vec<String> = report
        .workers
        .iter()
        .map(|(worker_id, jobs)| format!("{worker_id} ({})", jobs.len()))
        .collect();
    lines.push(signal(
        "workers",
        "info",
        &format!(
            "{} worker(s) hold {running} running job(s){}",
            report.workers.len(),
            if holders.is_empty() {
                String::new()
            } else {
                format!(": {}", holders.join(", "))
            }
        ),
    ));
    lines.push(signal(
        "fenced_writes",
        "info",
        &format!(
            "{} write(s) refused by fencing in the window (narra incidents: fenced_write)",
            report.fenced_writes
        ),
    ));
    let escalations = report.escalations();
    lines.push(if escalations.is_empty() {
        "nothing calls for escalation".to_string()
    } else {
        format!("escalate: {}", escalations.join(", "))
    });
    lines.join("\n")
}
