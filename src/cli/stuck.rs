//! Output of `narra jobs --stuck` and `narra reset` (the library side is `engine::stuck`).

use std::io::Write;
use std::process::ExitCode;

use serde_json::json;

use crate::cli::{CliError, io, views};
use crate::engine::Engine;
use crate::engine::stuck::{reset_job, stuck_jobs};
use crate::model::job::{JobId, Timestamp};
use crate::model::stuck::StuckJob;

/// The JSON of one stuck job: its summary plus `last_moved_at` and `stuck: [{reason, detail}]`.
pub fn stuck_json(stuck: &StuckJob) -> serde_json::Value {
    let mut value = views::job_summary(&stuck.job);
    value["last_moved_at"] = json!(stuck.last_moved_at.to_rfc3339());
    value["stuck"] = stuck
        .reasons
        .iter()
        .map(|reason| json!({"reason": reason.name(), "detail": reason.describe()}))
        .collect();
    value
}

pub fn stuck_text(stuck: &StuckJob) -> String {
    let reasons: Vec<String> = stuck
        .reasons
        .iter()
        .map(|reason| reason.describe())
        .collect();
    format!(
        "{}  stuck: {}",
        views::job_line(&stuck.job),
        reasons.join("; ")
    )
}

/// `jobs --stuck`.
pub async fn list(
    engine: &Engine,
    out: &mut impl Write,
    stuck_after_s: u64,
    json: bool,
) -> Result<ExitCode, CliError> {
    let stuck = stuck_jobs(engine, stuck_after_s, Timestamp::now()).await?;
    if json {
        let list: Vec<_> = stuck.iter().map(stuck_json).collect();
        super::print_json(out, &list)?;
    } else {
        for stuck in &stuck {
            writeln!(out, "{}", stuck_text(stuck)).map_err(io)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `reset ID [--force] [--reason TEXT]`.
pub async fn reset(
    engine: &Engine,
    out: &mut impl Write,
    err: &mut impl Write,
    id: JobId,
    reason: Option<&str>,
    force: bool,
    context: &crate::cli::Context,
) -> Result<ExitCode, CliError> {
    let json = context.json;
    match reset_job(engine, id, &context.actor, reason, force).await? {
        Ok(job) => {
            crate::cli::print_jobs(out, std::slice::from_ref(&job), json)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(rejected) => {
            writeln!(err, "narra: {rejected}").map_err(io)?;
            Ok(ExitCode::from(1))
        }
    }
}
