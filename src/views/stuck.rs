//! Stuck jobs as people and programs see them (`jobs --stuck`, `health`, `GET /jobs?stuck=true`).

use serde::Serialize;

use super::Rfc3339;
use super::job::{JobSummary, job_line, summary};
use crate::model::stuck::StuckJob;

/// `{last_moved_at, stuck: [{reason, detail}]}`: why a job is listed as stuck.
#[derive(Debug, Serialize)]
pub struct StuckDetail {
    /// When anything last moved: the latest event or progress record.
    pub last_moved_at: Rfc3339,
    /// Why it is listed: its lease expired, nothing moved for `stuck_after_s`, or both.
    pub stuck: Vec<StuckReasonView>,
}

#[derive(Debug, Serialize)]
pub struct StuckReasonView {
    /// `lease_expired` or `no_progress`.
    pub reason: &'static str,
    /// The reason in words, with its time (`lease expired at ...`, `no progress since ...`).
    pub detail: String,
}

pub fn stuck_detail(stuck: &StuckJob) -> StuckDetail {
    StuckDetail {
        last_moved_at: Rfc3339(stuck.last_moved_at),
        stuck: stuck
            .reasons
            .iter()
            .map(|reason| StuckReasonView {
                reason: reason.name(),
                detail: reason.describe(),
            })
            .collect(),
    }
}

/// One stuck job: its summary and why it is stuck.
#[derive(Debug, Serialize)]
pub struct StuckView<'a> {
    /// The job's summary, its fields at the top level.
    #[serde(flatten)]
    pub summary: JobSummary<'a>,
    /// `last_moved_at` and `stuck`, at the top level.
    #[serde(flatten)]
    pub detail: StuckDetail,
}

pub fn stuck_view(stuck: &StuckJob) -> StuckView<'_> {
    StuckView {
        summary: summary(&stuck.job),
        detail: stuck_detail(stuck),
    }
}

/// The job's line and why it is stuck.
pub fn stuck_text(stuck: &StuckJob) -> String {
    let reasons: Vec<String> = stuck
        .reasons
        .iter()
        .map(|reason| reason.describe())
        .collect();
    format!("{}  stuck: {}", job_line(&stuck.job), reasons.join("; "))
}
