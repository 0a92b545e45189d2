//! `narra export` and `narra import`: glue and output. The behaviour is `engine::transfer`'s.
//!
//! The export itself is data (stdout, or the `--output` file written beside its name and renamed
//! into place once synced, so no partial export ever sits under the name); what export says about
//! it goes to stderr, or to stdout as JSON with `--json` when the export went to a file.
//!
//! Exit codes: 0 done; 1 when the file is unusable or the import met conflicts.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use serde_json::json;

use super::args::ExportArgs;
use super::{CliError, Command, io, print_json};
use crate::engine::Engine;
use crate::engine::transfer::{self, ExportSummary, RecordCounts, Secrets, TransferError};

impl From<TransferError> for CliError {
    fn from(error: TransferError) -> CliError {
        CliError::Other(error.into())
    }
}

/// `narra export` or `narra import`, run by `cli::run` before the home serves other processes
/// (these two are never run for another process).
pub async fn run(
    engine: &Engine,
    command: &Command,
    state: &str,
    json: bool,
) -> Result<ExitCode, CliError> {
    match command {
        Command::Export(args) => export(engine, args, state, json).await,
        Command::Import(args) => import(engine, &args.file, args.check, json).await,
        _ => unreachable!("only export and import are run here"),
    }
}

async fn export(
    engine: &Engine,
    args: &ExportArgs,
    state: &str,
    json: bool,
) -> Result<ExitCode, CliError> {
    let output = args.output.as_deref();
    let secrets = if args.include_secrets {
        Secrets::Included
    } else {
        Secrets::Redacted
    };
    let summary = match output {
        None => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            transfer::export(engine.store.as_ref(), state, secrets, &mut out).await?
        }
        Some(path) => export_to_file(engine, path, state, secrets).await?,
    };
    if json && output.is_some() {
        print_json(&mut std::io::stdout().lock(), &summary)?;
    } else if json {
        let line = serde_json::to_string(&summary).expect("the summary serializes");
        eprintln!("{line}");
    } else {
        eprintln!("{}", export_text(&summary, output));
    }
    Ok(ExitCode::SUCCESS)
}

async fn export_to_file(
    engine: &Engine,
    path: &Path,
    state: &str,
    secrets: Secrets,
) -> Result<ExportSummary, CliError> {
    let file_name = path
        .file_name()
        .ok_or_else(|| CliError::Usage(format!("{} names no file", path.display())))?;
    let mut partial_name = file_name.to_os_string();
    partial_name.push(".partial");
    let partial = path.with_file_name(partial_name);
    let file = std::fs::File::create(&partial).map_err(|error| {
        CliError::Usage(format!("cannot create {}: {error}", partial.display()))
    })?;
    let mut out = std::io::BufWriter::new(file);
    let summary = match transfer::export(engine.store.as_ref(), state, secrets, &mut out).await {
        Ok(summary) => summary,
        Err(error) => {
            drop(out);
            let _ = std::fs::remove_file(&partial);
            return Err(error.into());
        }
    };
    let file = out
        .into_inner()
        .map_err(|error| CliError::Other(error.into_error().into()))?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&partial, path).map_err(io)?;
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::File::open(parent)
            .and_then(|dir| dir.sync_all())
            .map_err(io)?;
    }
    Ok(summary)
}

fn counts_text(counts: &RecordCounts) -> String {
    format!(
        "{} jobs, {} pruned, {} backfills, {} incidents, {} hosts",
        counts.job, counts.pruned, counts.backfill, counts.incident, counts.host
    )
}

fn export_text(summary: &ExportSummary, output: Option<&Path>) -> String {
    let mut text = format!(
        "exported {} to {} (blake3 {})",
        counts_text(&summary.records),
        output.map_or_else(|| "stdout".to_string(), |path| path.display().to_string()),
        summary.blake3
    );
    if summary.secrets == Secrets::Redacted {
        text.push_str(
            "\nnote: secrets in sources, keys and callback URLs are redacted; `import` refuses this \
             file (use --include-secrets to move a store)",
        );
    }
    if summary.running > 0 {
        text.push_str(&format!(
            "\nnote: {} jobs were running; they keep their leases and go back to pending when a \
             worker of the target store reclaims them",
            summary.running
        ));
    }
    text
}

async fn import(
    engine: &Engine,
    file: &Path,
    check_only: bool,
    json: bool,
) -> Result<ExitCode, CliError> {
    let mut out = std::io::stdout().lock();
    if check_only {
        let path = file.to_path_buf();
        let checked = tokio::task::spawn_blocking(move || transfer::check(&path))
            .await
            .map_err(|error| CliError::Other(error.into()))??;
        if json {
            print_json(&mut out, &json!({"checked": checked}))?;
        } else {
            writeln!(
                out,
                "{}: a whole export of {} ({}), made {} by narra {}{}",
                file.display(),
                checked.header.state,
                counts_text(&checked.records),
                checked.header.exported_at.to_rfc3339(),
                checked.header.narra,
                match checked.header.secrets {
                    Secrets::Redacted => ", secrets redacted (import refuses it)",
                    Secrets::Included => ", secrets included",
                }
            )
            .map_err(io)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (checked, summary) = transfer::import(engine.store.as_ref(), file).await?;
    if json {
        print_json(
            &mut out,
            &json!({"checked": checked, "imported": summary.imported,
                    "already_present": summary.already_present, "conflicts": summary.conflicts}),
        )?;
    } else {
        writeln!(
            out,
            "imported {} from {}",
            counts_text(&summary.imported),
            file.display()
        )
        .map_err(io)?;
        if summary.already_present.total() > 0 {
            writeln!(
                out,
                "already present (skipped): {}",
                counts_text(&summary.already_present)
            )
            .map_err(io)?;
        }
        for conflict in &summary.conflicts {
            writeln!(
                out,
                "conflict: {} {}: {}; not written",
                conflict.kind, conflict.name, conflict.reason
            )
            .map_err(io)?;
        }
    }
    Ok(if summary.conflicts.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
