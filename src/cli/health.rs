//! `narra health`: prints the report `engine::health` assesses, as `views::health` shapes it.

use std::io::Write;
use std::process::ExitCode;

use crate::cli::args::HealthArgs;
use crate::cli::{CliError, Context, io};
use crate::engine::Engine;
use crate::engine::health::assess;
use crate::model::health::HealthOptions;
use crate::model::job::Timestamp;
use crate::views;

/// `narra health`: exits 1 when something calls for escalation.
pub async fn health(
    engine: &Engine,
    args: HealthArgs,
    context: &Context,
    out: &mut impl Write,
) -> Result<ExitCode, CliError> {
    let options = HealthOptions {
        host_failures_min: args.host_failures_min,
        window_s: args.window_s,
        stuck_after_s: args.stuck_after_s,
    };
    let report = assess(engine, &options, Timestamp::now()).await?;
    if context.json {
        super::print_json(out, &views::health::health(&report))?;
    } else {
        writeln!(out, "{}", views::health::report_text(&report)).map_err(io)?;
    }
    Ok(if report.escalate() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
