//! `narra jobs --stuck` and `narra reset`: the glue to `engine::stuck`, printed as `views::stuck`
//! and `views::job` shape it.

use std::io::Write;
use std::process::ExitCode;

use crate::cli::{CliError, io};
use crate::engine::Engine;
use crate::engine::stuck::{reset_job, stuck_jobs};
use crate::model::job::{JobId, Timestamp};
use crate::views;

/// `jobs --stuck`.
pub async fn list(
    engine: &Engine,
    out: &mut impl Write,
    stuck_after_s: u64,
    json: bool,
) -> Result<ExitCode, CliError> {
    let stuck = stuck_jobs(engine, stuck_after_s, Timestamp::now()).await?;
    let (view, line) = (views::stuck::stuck_view, views::stuck::stuck_text);
    super::print_list(out, &stuck, json, view, line)?;
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
