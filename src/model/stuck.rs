//! Stuck jobs, decided: a running job whose lease expired, or that has not moved (no event, no step
//! progress) for a while, is stuck ([`classify`]), and why ([`StuckReason`]).
//!
//! Pure: `engine::stuck` reads the running jobs, their last event and their progress record, and
//! asks [`classify`]; `narra jobs --stuck`, `narra health` and `GET /jobs?stuck=true` show the answer.

use crate::model::job::{Job, JobProgress, Status, Timestamp};

/// How long a running job may go without progress before `jobs --stuck` lists it, by default.
pub const DEFAULT_STUCK_AFTER_S: u64 = 600;

/// Why a running job is listed as stuck.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StuckReason {
    /// Its lease expired at this time: the process holding it is gone or hung.
    LeaseExpired { expired_at: Timestamp },
    /// Nothing moved (no event, no step progress) since this time.
    NoProgress { since: Timestamp },
}

impl StuckReason {
    pub fn describe(&self) -> String {
        match self {
            StuckReason::LeaseExpired { expired_at } => {
                format!("lease expired at {}", expired_at.to_rfc3339())
            }
            StuckReason::NoProgress { since } => {
                format!("no progress since {}", since.to_rfc3339())
            }
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            StuckReason::LeaseExpired { .. } => "lease_expired",
            StuckReason::NoProgress { .. } => "no_progress",
        }
    }
}

/// A running job that looks stuck.
#[derive(Debug, Clone)]
pub struct StuckJob {
    /// The running job as it was read.
    pub job: Job,
    /// When anything last moved: the latest event or progress record.
    pub last_moved_at: Timestamp,
    /// Why it is stuck: an expired lease, no progress, or both; never empty.
    pub reasons: Vec<StuckReason>,
}

/// Whether a running job is stuck at `now`. `last_event_at` is its latest event; lease renewals
/// write none, so a live worker that stopped making progress is still seen.
pub fn classify(
    job: &Job,
    last_event_at: Option<Timestamp>,
    progress: Option<&JobProgress>,
    stuck_after_ms: u64,
    now: Timestamp,
) -> Option<StuckJob> {
    if job.status != Status::Running {
        return None;
    }
    let last_moved_at = [
        Some(job.updated_at).filter(|_| last_event_at.is_none()),
        last_event_at,
        progress.map(|progress| progress.updated_at),
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or(job.updated_at);
    let mut reasons = Vec::new();
    match &job.lease {
        Some(lease) if lease.expires_at <= now => reasons.push(StuckReason::LeaseExpired {
            expired_at: lease.expires_at,
        }),
        Some(_) => {}
        // A running job always has a lease; one without is stuck by definition.
        None => reasons.push(StuckReason::LeaseExpired {
            expired_at: job.updated_at,
        }),
    }
    if last_moved_at.plus_ms(stuck_after_ms) <= now {
        reasons.push(StuckReason::NoProgress {
            since: last_moved_at,
        });
    }
    (!reasons.is_empty()).then(|| StuckJob {
        job: job.clone(),
        last_moved_at,
        reasons,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::job::{Lease, WorkerId};

    fn running(lease_expires_at: i64, updated_at: i64) -> Job {
        let mut job = crate::model::fixtures::job(1, "http://example.com/a.mp4");
        job.status = Status::Running;
        job.updated_at = Timestamp(updated_at);
        job.lease = Some(Lease {
            worker_id: WorkerId("w".into()),
            fencing_token: 1,
            expires_at: Timestamp(lease_expires_at),
        });
        job
    }

    // Guards the two stuck rules: an expired lease, and no event or progress for the window, where
    // a step's progress (download, extract or store) counts as movement even when no event was
    // written.
    #[test]
    fn a_running_job_is_stuck_when_its_lease_expired_or_nothing_moved() {
        let progress = JobProgress {
            bytes_done: 10,
            bytes_total: None,
            rate_bytes_per_s: 1,
            updated_at: Timestamp(2_500),
        };
        let mut pending = running(0, 0);
        pending.status = Status::Pending;
        let expired = StuckReason::LeaseExpired {
            expired_at: Timestamp(1_000),
        };
        let idle = StuckReason::NoProgress {
            since: Timestamp(1_000),
        };
        // (what, job, its last event, its progress, stuck after (ms), now, why it is stuck)
        let cases = [
            (
                "live and moving",
                running(10_000, 0),
                Some(5_000),
                None,
                1_000,
                5_500,
                vec![],
            ),
            (
                "lease expired",
                running(1_000, 0),
                Some(1_500),
                None,
                60_000,
                2_000,
                vec![expired],
            ),
            (
                "nothing moved",
                running(100_000, 0),
                Some(1_000),
                None,
                1_000,
                3_000,
                vec![idle],
            ),
            (
                "step progress is movement",
                running(100_000, 0),
                Some(1_000),
                Some(&progress),
                1_000,
                3_000,
                vec![],
            ),
            ("not running", pending, None, None, 0, 1, vec![]),
        ];
        for (what, job, last_event_at, progress, stuck_after_ms, now, reasons) in cases {
            let last_event_at = last_event_at.map(Timestamp);
            let stuck = classify(
                &job,
                last_event_at,
                progress,
                stuck_after_ms,
                Timestamp(now),
            );
            // A job that is not stuck has no reasons: `None`, never an empty list.
            assert_eq!(
                stuck.map(|stuck| stuck.reasons),
                (!reasons.is_empty()).then_some(reasons),
                "{what}"
            );
        }
    }
}
