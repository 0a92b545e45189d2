//! The health report (`narra health`, `GET /health`): the runbook's escalation signals as plain
//! data, and which of them call for escalation.
//!
//! Pure: `engine::health::assess` reads the store and probes storage, then fills a [`HealthReport`];
//! grouping failed jobs by host ([`failing_hosts`]) and every escalation rule are decided here.

use std::collections::BTreeMap;

use crate::model::job::{HostState, Job, JobId, Status, Timestamp};
use crate::model::sources::source_host;
use crate::model::stuck::StuckJob;

#[derive(Debug, Clone)]
pub struct HealthOptions {
    /// A host with at least this many failed jobs in the window calls for escalation.
    pub host_failures_min: usize,
    /// How far back failures, storage faults and corruption count.
    pub window_s: u64,
    /// Passed to `engine::stuck`: how long a running job may go without moving.
    pub stuck_after_s: u64,
}

impl Default for HealthOptions {
    fn default() -> HealthOptions {
        HealthOptions {
            host_failures_min: 3,
            window_s: 24 * 3600,
            stuck_after_s: crate::model::stuck::DEFAULT_STUCK_AFTER_S,
        }
    }
}

/// A host whose jobs failed repeatedly in the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailingHost {
    /// The source's host and port (`model::sources::source_host`); `local` for files.
    pub host: String,
    /// Its jobs that failed in the window.
    pub failures: usize,
    /// Failures by error class.
    pub classes: BTreeMap<String, usize>,
    /// Whether `failures` reached `host_failures_min` (at least 1).
    pub escalate: bool,
}

#[derive(Debug, Clone)]
pub struct StorageHealth {
    /// Whether storage answered a probe of one key just now.
    pub reachable: bool,
    /// The storage URI and what the probe found, in words.
    pub detail: String,
    /// Recent job failures of a storage class, by class.
    pub failures: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Default)]
pub struct CorruptionHealth {
    /// Recent job failures of a corruption class, by class.
    pub failures: BTreeMap<String, usize>,
    /// Recent cleanup incidents that removed a corrupt artifact.
    pub corrupt_artifacts_removed: usize,
}

#[derive(Debug, Clone)]
pub struct HealthReport {
    /// The thresholds and window the report was made with.
    pub options: HealthOptions,
    /// Jobs that failed in the window (last updated within `window_s`).
    pub failed_recently: usize,
    /// Hosts with failed jobs in the window, busiest first ([`failing_hosts`]).
    pub hosts: Vec<FailingHost>,
    /// Whether storage answers, and the window's storage failures.
    pub storage: StorageHealth,
    /// Running jobs whose lease expired or that made no progress for `stuck_after_s`.
    pub stuck: Vec<StuckJob>,
    /// The window's checksum failures and corrupt-artifact removals.
    pub corruption: CorruptionHealth,
    /// Jobs quarantined as `crash_loop` in the window: their process died again and again.
    pub crash_loops: Vec<JobId>,
    /// Hosts whose circuit breaker is open or testing a probe: their jobs are held.
    pub breakers: Vec<HostState>,
    /// Pending jobs waiting for scratch space (`scratch_low`), with why.
    pub waiting_for_scratch: Vec<Job>,
    /// The running jobs by the worker (`host:pid`) that holds their lease: the whole fleet's
    /// work, whichever machine runs it. Information, not an escalation.
    pub workers: BTreeMap<String, Vec<JobId>>,
    /// `fenced_write` incidents in the window: writes refused because their worker had lost the
    /// job (stopped or starved past its lease). Information, not an escalation.
    pub fenced_writes: usize,
}

impl HealthReport {
    pub fn storage_escalates(&self) -> bool {
        !self.storage.reachable || !self.storage.failures.is_empty()
    }

    pub fn corruption_escalates(&self) -> bool {
        !self.corruption.failures.is_empty() || self.corruption.corrupt_artifacts_removed > 0
    }

    /// The runbook's escalation conditions, by name, that hold.
    pub fn escalations(&self) -> Vec<&'static str> {
        let mut reasons = Vec::new();
        if self.hosts.iter().any(|host| host.escalate) {
            reasons.push("failing_hosts");
        }
        if self.storage_escalates() {
            reasons.push("storage");
        }
        if !self.stuck.is_empty() {
            reasons.push("stuck_jobs");
        }
        if self.corruption_escalates() {
            reasons.push("corruption");
        }
        if !self.crash_loops.is_empty() {
            reasons.push("crash_loops");
        }
        if !self.breakers.is_empty() {
            reasons.push("circuit_open");
        }
        if !self.waiting_for_scratch.is_empty() {
            reasons.push("scratch_space");
        }
        reasons
    }

    pub fn escalate(&self) -> bool {
        !self.escalations().is_empty()
    }
}

/// Groups the failed jobs updated since `since` by host, busiest first (then by name).
pub fn failing_hosts(
    failed: &[Job],
    since: Timestamp,
    host_failures_min: usize,
) -> Vec<FailingHost> {
    let mut by_host: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for job in failed
        .iter()
        .filter(|job| job.status == Status::Failed && job.updated_at >= since)
    {
        let class = job
            .error
            .as_ref()
            .map(|error| error.class.clone())
            .unwrap_or_else(|| "unknown".to_string());
        *by_host
            .entry(source_host(&job.source))
            .or_default()
            .entry(class)
            .or_default() += 1;
    }
    let mut hosts: Vec<FailingHost> = by_host
        .into_iter()
        .map(|(host, classes)| {
            let failures = classes.values().sum();
            FailingHost {
                host,
                failures,
                classes,
                escalate: failures >= host_failures_min.max(1),
            }
        })
        .collect();
    hosts.sort_by(|a, b| {
        b.failures
            .cmp(&a.failures)
            .then_with(|| a.host.cmp(&b.host))
    });
    hosts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::job::ErrorInfo;

    fn failed(id: u128, source: &str, class: &str, at: i64) -> Job {
        let mut job = crate::model::fixtures::job(id, source);
        job.status = Status::Failed;
        job.updated_at = Timestamp(at);
        job.error = Some(ErrorInfo {
            class: class.into(),
            message: "m".into(),
        });
        job
    }

    // Guards the host rule: failures in the window are grouped by host with their classes, and
    // only a host at the threshold escalates; failures before the window do not count.
    #[test]
    fn hosts_with_repeated_recent_failures_escalate() {
        let jobs = vec![
            failed(1, "https://cdn.example.com/a.mp4", "download_blocked", 100),
            failed(2, "https://cdn.example.com/b.mp4", "download_blocked", 100),
            failed(3, "https://cdn.example.com/c.mp4", "rate_limited", 100),
            failed(4, "https://cdn.example.com/d.mp4", "rate_limited", 10),
            failed(5, "https://other.example.org/a.mp4", "not_found", 100),
            failed(6, "/media/local.mp4", "corrupt_media", 100),
        ];
        let hosts = failing_hosts(&jobs, Timestamp(50), 3);
        assert_eq!(hosts[0].host, "cdn.example.com");
        assert_eq!(hosts[0].failures, 3);
        assert_eq!(hosts[0].classes["download_blocked"], 2);
        assert_eq!(hosts[0].classes["rate_limited"], 1);
        assert!(hosts[0].escalate);
        assert!(
            hosts[1..]
                .iter()
                .all(|host| !host.escalate && host.failures == 1)
        );
        assert_eq!(hosts.len(), 3);
        assert!(
            failing_hosts(&jobs, Timestamp(50), 4)
                .iter()
                .all(|host| !host.escalate)
        );
    }
}
