//! Output of `narra health` (the library side is `engine::health`): a line per signal, or JSON.

use std::io::Write;
use std::process::ExitCode;

use serde_json::json;

use crate::cli::{CliError, io};
use crate::engine::Engine;
use crate::engine::health::assess;
use crate::model::health::{HealthOptions, HealthReport};
use crate::model::job::{Breaker, HostState, Timestamp};

fn counts_text(counts: &std::collections::BTreeMap<String, usize>) -> String {
    counts
        .iter()
        .map(|(class, count)| format!("{class} {count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn verdict(escalate: bool) -> &'static str {
    if escalate { "ESCALATE" } else { "ok" }
}

pub fn report_json(report: &HealthReport) -> serde_json::Value {
    json!({
        "escalate": report.escalate(),
        "escalations": report.escalations(),
        "window_s": report.options.window_s,
        "failed_recently": report.failed_recently,
        "failing_hosts": report.hosts.iter().map(|host| json!({
            "host": host.host,
            "failures": host.failures,
            "classes": host.classes,
            "escalate": host.escalate,
        })).collect::<Vec<_>>(),
        "host_failures_min": report.options.host_failures_min,
        "storage": {
            "reachable": report.storage.reachable,
            "detail": report.storage.detail,
            "failures": report.storage.failures,
            "escalate": report.storage_escalates(),
        },
        "stuck": report.stuck.iter().map(crate::cli::stuck::stuck_json).collect::<Vec<_>>(),
        "corruption": {
            "failures": report.corruption.failures,
            "corrupt_artifacts_removed": report.corruption.corrupt_artifacts_removed,
            "escalate": report.corruption_escalates(),
        },
        "crash_loops": report.crash_loops.iter().map(|id| id.to_string()).collect::<Vec<_>>(),
        "circuit_breakers": report.breakers.iter().map(breaker_json).collect::<Vec<_>>(),
        "waiting_for_scratch": report.waiting_for_scratch.iter().map(|job| json!({
            "id": job.id.to_string(),
            "reason": job.error.as_ref().map(|error| error.message.clone()),
            "not_before": job.not_before.map(|at| at.to_rfc3339()),
        })).collect::<Vec<_>>(),
        "workers": report.workers.iter().map(|(worker_id, running)| json!({
            "worker_id": worker_id,
            "running": running.iter().map(|id| id.to_string()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "fenced_writes": report.fenced_writes,
    })
}

fn breaker_json(host: &HostState) -> serde_json::Value {
    let (state, until, probe) = match &host.breaker {
        Breaker::Closed => ("closed", None, None),
        Breaker::Open { until, .. } => ("open", Some(until.to_rfc3339()), None),
        Breaker::Probing { probe, .. } => ("probing", None, Some(probe.to_string())),
    };
    json!({
        "host": host.host,
        "state": state,
        "until": until,
        "probe": probe,
        "recent_refusals": host.failures.iter().map(|failure| json!({
            "at": failure.at.to_rfc3339(),
            "class": failure.class,
            "job": failure.job.to_string(),
        })).collect::<Vec<_>>(),
        "opened_total": host.opened_total,
        "held_total": host.held_total,
    })
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

pub fn report_text(report: &HealthReport) -> String {
    let mut lines = Vec::new();
    let escalating: Vec<_> = report.hosts.iter().filter(|host| host.escalate).collect();
    if escalating.is_empty() {
        lines.push(format!(
            "failing_hosts  ok        no host with {} or more failed jobs in the last {} s ({} failed)",
            report.options.host_failures_min, report.options.window_s, report.failed_recently
        ));
    }
    for host in escalating {
        lines.push(format!(
            "failing_hosts  ESCALATE  {}: {} failed jobs in the last {} s ({})",
            host.host,
            host.failures,
            report.options.window_s,
            counts_text(&host.classes)
        ));
    }
    let mut storage = report.storage.detail.clone();
    if !report.storage.failures.is_empty() {
        storage.push_str(&format!(
            "; jobs failed by storage: {}",
            counts_text(&report.storage.failures)
        ));
    }
    lines.push(format!(
        "storage        {:<8}  {storage}",
        verdict(report.storage_escalates())
    ));
    if report.stuck.is_empty() {
        lines.push(format!(
            "stuck_jobs     ok        none (lease expired, or no progress for {} s)",
            report.options.stuck_after_s
        ));
    }
    for stuck in &report.stuck {
        lines.push(format!(
            "stuck_jobs     ESCALATE  {}",
            crate::cli::stuck::stuck_text(stuck)
        ));
    }
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
    lines.push(format!(
        "corruption     {:<8}  {corruption}",
        verdict(report.corruption_escalates())
    ));
    if report.crash_loops.is_empty() {
        lines.push(format!(
            "crash_loops    ok        no job quarantined as crash_loop in the last {} s",
            report.options.window_s
        ));
    } else {
        lines.push(format!(
            "crash_loops    ESCALATE  {} job(s) quarantined: their process died {} times at the same point: {}",
            report.crash_loops.len(),
            crate::model::machine::CRASH_LOOP_DEATHS,
            report
                .crash_loops
                .iter()
                .map(|id| id.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if report.breakers.is_empty() {
        lines.push("circuit_open   ok        every source host's breaker is closed".to_string());
    }
    for host in &report.breakers {
        lines.push(format!("circuit_open   ESCALATE  {}", breaker_text(host)));
    }
    match report.waiting_for_scratch.first() {
        None => lines.push("scratch_space  ok        no job waits for scratch space".to_string()),
        Some(job) => lines.push(format!(
            "scratch_space  ESCALATE  {} job(s) wait for scratch space: {}",
            report.waiting_for_scratch.len(),
            job.error
                .as_ref()
                .map_or(String::new(), |error| error.message.clone())
        )),
    }
    let running: usize = report.workers.values().map(Vec::len).sum();
    let holders: Vec<String> = report
        .workers
        .iter()
        .map(|(worker_id, jobs)| format!("{worker_id} ({})", jobs.len()))
        .collect();
    lines.push(format!(
        "workers        info      {} worker(s) hold {running} running job(s){}",
        report.workers.len(),
        if holders.is_empty() {
            String::new()
        } else {
            format!(": {}", holders.join(", "))
        }
    ));
    lines.push(format!(
        "fenced_writes  info      {} write(s) refused by fencing in the window (narra incidents: fenced_write)",
        report.fenced_writes
    ));
    let escalations = report.escalations();
    lines.push(if escalations.is_empty() {
        "nothing calls for escalation".to_string()
    } else {
        format!("escalate: {}", escalations.join(", "))
    });
    lines.join("\n")
}

/// `narra health`: exits 1 when something calls for escalation.
pub async fn health(
    engine: &Engine,
    out: &mut impl Write,
    options: HealthOptions,
    json: bool,
) -> Result<ExitCode, CliError> {
    let report = assess(engine, &options, Timestamp::now()).await?;
    if json {
        let value = report_json(&report);
        super::print_json(out, &value)?;
    } else {
        writeln!(out, "{}", report_text(&report)).map_err(io)?;
    }
    Ok(if report.escalate() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
