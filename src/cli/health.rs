//! `narra health`: prints the report `engine::health` assesses, as `views::health` shapes it.

use std::io::Write;
use std::process::ExitCode;

use crate::cli::{CliError, io};
use crate::engine::Engine;
use crate::engine::health::assess;
use crate::model::health::HealthOptions;
use crate::model::job::Timestamp;
use crate::views;

/// `narra health`: exits 1 when something calls for escalation.
pub async fn health(
    engine: &Engine,
    out: &mut impl Write,
    options: HealthOptions,
    json: bool,
) -> Result<ExitCode, CliError> {
    let report = assess(engine, &options, Timestamp::now()).await?;
    if json {
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
