//! `narra backfill`: reading the manifest, the progress display on stderr (an indicatif bar on a
//! terminal, a plain line at most every [`PLAIN_PROGRESS_EVERY`] otherwise), and the summary (text,
//! or `--json`, on stdout, as `views::backfill` shapes it). The behaviour lives in
//! `engine::backfill`.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, HumanDuration, ProgressBar, ProgressStyle};

use super::args::BackfillArgs;
use super::{CliError, Context, io};
use crate::engine::Engine;
use crate::engine::backfill::{
    BackfillOptions, BackfillProgress, list_backfills, manifest_name, parse_manifest, run_backfill,
    submit_manifest,
};
use crate::engine::orchestrator::reclaim_orphans;
use crate::views;

/// How often the plain (not a terminal) progress line is printed, at most.
pub const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How often the bar is redrawn from the tally.
const BAR_REFRESH_EVERY: Duration = Duration::from_millis(200);

/// The manifest's bytes, from a file or (`-`) standard input. Bytes that are not UTF-8 become
/// U+FFFD, which makes their lines bad lines rather than the whole manifest unreadable.
fn read_manifest(path: &str) -> Result<String, CliError> {
    let mut bytes = Vec::new();
    let read = if path == "-" {
        std::io::stdin().lock().read_to_end(&mut bytes).map(|_| ())
    } else {
        std::fs::File::open(path).and_then(|mut file| file.read_to_end(&mut bytes).map(|_| ()))
    };
    read.map_err(|error| CliError::Usage(format!("cannot read manifest {path}: {error}")))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// `narra backfill MANIFEST` (or `--list`).
pub async fn backfill(
    engine: &Engine,
    args: BackfillArgs,
    context: &Context,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<ExitCode, CliError> {
    if args.list {
        return list(engine, out, context.json).await;
    }
    let manifest = args
        .manifest
        .expect("clap requires a manifest unless --list");
    let options = BackfillOptions {
        workflow: args.workflow,
        concurrency: args.concurrency,
        retry_permanent: args.retry_permanent,
        reingest: args.reingest,
        local_paths: context.local_paths(),
    };
    run(engine, out, err, &manifest, options, context.json).await
}

/// `narra backfill MANIFEST`.
async fn run(
    engine: &Engine,
    out: &mut impl Write,
    err: &mut impl Write,
    path: &str,
    options: BackfillOptions,
    json: bool,
) -> Result<ExitCode, CliError> {
    let text = read_manifest(path)?;
    let name = manifest_name(path, &text);
    let manifest = parse_manifest(path, &text);
    drop(text);
    reclaim_orphans(&engine.orchestrator()).await?;
    let submission = submit_manifest(engine, &name, &manifest, &options).await?;
    drop(manifest);
    for bad in &submission.bad_lines {
        writeln!(
            err,
            "narra: {path}:{}: {}; line skipped",
            bad.line, bad.reason
        )
        .map_err(io)?;
    }
    writeln!(
        err,
        "narra: backfill {} ({} manifest): {} jobs, {} to run, {} recognised without running; {} bad lines",
        submission.backfill.id,
        submission.format.as_str(),
        submission.jobs(),
        submission.to_run(),
        submission.jobs() - submission.to_run(),
        submission.bad_lines.len()
    )
    .map_err(io)?;
    let progress = Arc::new(Mutex::new(BackfillProgress::default()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let reporter = tokio::spawn(report_progress(progress.clone(), stopped));
    let summary = run_backfill(engine, submission, options.concurrency, progress).await;
    let _ = stop.send(());
    let _ = reporter.await;
    let summary = summary?;
    if json {
        super::print_json(out, &views::backfill::summary(&summary))?;
    } else {
        write!(out, "{}", views::backfill::summary_text(&summary)).map_err(io)?;
    }
    Ok(if summary.failed() > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `narra backfill --list`.
async fn list(engine: &Engine, out: &mut impl Write, json: bool) -> Result<ExitCode, CliError> {
    let backfills = list_backfills(engine).await?;
    if json {
        let list: Vec<_> = backfills
            .iter()
            .map(|(backfill, jobs)| views::backfill::ListItem {
                backfill: views::backfill::backfill(backfill),
                jobs: *jobs,
            })
            .collect();
        super::print_json(out, &list)?;
    } else {
        for (backfill, jobs) in &backfills {
            writeln!(
                out,
                "{}  {}  {jobs:>6} jobs  {}",
                backfill.id,
                backfill.created_at.to_rfc3339(),
                backfill.manifest
            )
            .map_err(io)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Draws the tally until `stopped`: a bar on a terminal, otherwise a plain line now and then.
async fn report_progress(
    progress: Arc<Mutex<BackfillProgress>>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let started = Instant::now();
    let terminal = std::io::stderr().is_terminal();
    let bar = terminal.then(|| {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} jobs  {msg}",
            )
            .expect("a valid template"),
        );
        bar
    });
    let every = if terminal {
        BAR_REFRESH_EVERY
    } else {
        PLAIN_PROGRESS_EVERY
    };
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            () = tokio::time::sleep(every) => {}
        }
        let tally = progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let line = progress_text(&tally, started.elapsed());
        match &bar {
            Some(bar) => {
                bar.set_length(u64::try_from(tally.total).unwrap_or(u64::MAX));
                bar.set_position(u64::try_from(tally.finished()).unwrap_or(u64::MAX));
                bar.set_message(line);
            }
            None => eprintln!(
                "narra: backfill {}/{} jobs: {line}",
                tally.finished(),
                tally.total
            ),
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}

/// Done/failed/skipped, bytes, throughput and ETA. The ETA extrapolates from the jobs this run
/// finished (skipped ones cost nothing and would make it look too short).
fn progress_text(tally: &BackfillProgress, elapsed: Duration) -> String {
    let downloaded = tally.bytes_downloaded + tally.bytes_in_flight;
    let rate = u64::try_from(u128::from(downloaded) * 1000 / elapsed.as_millis().max(1))
        .unwrap_or(u64::MAX);
    let ran = tally.succeeded + tally.failed;
    let remaining = tally.total.saturating_sub(tally.finished());
    let eta = if ran == 0 || remaining == 0 {
        "-".to_string()
    } else {
        let per_job = elapsed / u32::try_from(ran).unwrap_or(u32::MAX);
        HumanDuration(per_job * u32::try_from(remaining).unwrap_or(u32::MAX)).to_string()
    };
    format!(
        "{} done, {} failed, {} skipped; {} downloaded, {} stored; {}/s; ETA {eta}",
        tally.succeeded,
        tally.failed,
        tally.skipped,
        HumanBytes(downloaded),
        HumanBytes(tally.bytes_stored),
        HumanBytes(rate),
    )
}
