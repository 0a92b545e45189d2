//! Backfills as people and programs see them: the summary at the end of `narra backfill`, the
//! list of `backfill --list`, and the answers of `POST /backfills` and `GET /backfills/{id}`.

use std::collections::BTreeMap;
use std::time::Duration;

use indicatif::HumanBytes;
use serde::Serialize;

use super::{Rfc3339, Text};
use crate::model::backfill::{BackfillSummary, BadLine, ManifestFormat};
use crate::model::job::{Backfill, BackfillId};

/// `{id, manifest, created_at}`: a backfill's record.
#[derive(Debug, Serialize)]
pub struct BackfillView<'a> {
    /// The backfill's ULID, 26 characters.
    pub id: Text<BackfillId>,
    /// What names the manifest: its absolute path, `stdin:<hash>` or `api:<name>`; running the same
    /// name again resumes this backfill.
    pub manifest: &'a str,
    /// When the backfill was first run.
    pub created_at: Rfc3339,
}

pub fn backfill(backfill: &Backfill) -> BackfillView<'_> {
    BackfillView {
        id: Text(backfill.id),
        manifest: &backfill.manifest,
        created_at: Rfc3339(backfill.created_at),
    }
}

/// A backfill of `backfill --list`, with how many jobs it has.
#[derive(Debug, Serialize)]
pub struct ListItem<'a> {
    /// `id`, `manifest` and `created_at`, at the top level.
    #[serde(flatten)]
    pub backfill: BackfillView<'a>,
    /// How many jobs the backfill has.
    pub jobs: usize,
}

/// `{manifest, format, lines_accepted, bad_lines: [{line, reason}], jobs}`: how the manifest read,
/// and how many distinct jobs its lines name.
#[derive(Debug, Serialize)]
pub struct ManifestRead<'a> {
    /// What names the manifest: its absolute path, `stdin:<hash>`, or `api:<name>`.
    pub manifest: &'a str,
    /// `lines`, `jsonl` or `csv`.
    pub format: &'static str,
    /// Lines read as a source (blank lines and `#` comments are not counted).
    pub lines_accepted: usize,
    /// Lines that could not be read: skipped, each with why.
    pub bad_lines: Vec<BadLineView<'a>>,
    /// Distinct jobs: several lines may name one.
    pub jobs: usize,
}

#[derive(Debug, Serialize)]
pub struct BadLineView<'a> {
    /// The line's number in the manifest, from 1.
    pub line: usize,
    /// Why the line could not be read as a source.
    pub reason: &'a str,
}

pub fn manifest_read<'a>(
    backfill: &'a Backfill,
    format: ManifestFormat,
    lines_accepted: usize,
    bad_lines: &'a [BadLine],
    jobs: usize,
) -> ManifestRead<'a> {
    ManifestRead {
        manifest: &backfill.manifest,
        format: format.as_str(),
        lines_accepted,
        bad_lines: bad_lines
            .iter()
            .map(|bad| BadLineView {
                line: bad.line,
                reason: &bad.reason,
            })
            .collect(),
        jobs,
    }
}

/// `POST /backfills`: the backfill, how its manifest read, its jobs and how many will run.
#[derive(Debug, Serialize)]
pub struct Submitted<'a> {
    /// The backfill's id: `GET /backfills/{id}` follows it.
    pub id: Text<BackfillId>,
    /// `manifest`, `format`, `lines_accepted`, `bad_lines` and `jobs`, at the top level.
    #[serde(flatten)]
    pub read: ManifestRead<'a>,
    /// Jobs that will run: new, pending, retried or reingested.
    pub to_run: usize,
}

/// `GET /backfills/{id}`: its jobs by status, how many are finished, whether all are, and the
/// bytes its jobs' checkpoints record.
#[derive(Debug, Serialize)]
pub struct Progress<'a> {
    /// `id`, `manifest` and `created_at`, at the top level.
    #[serde(flatten)]
    pub backfill: BackfillView<'a>,
    /// How many jobs the backfill has.
    pub jobs: usize,
    /// Its jobs by status (`pending`, `running`, ...); a status no job has is absent.
    pub by_status: BTreeMap<&'static str, usize>,
    /// Jobs in a terminal status.
    pub finished: usize,
    /// Whether every job is in a terminal status.
    pub done: bool,
    /// The download step's outputs, once checkpointed.
    pub bytes_downloaded: u64,
    /// The artifacts the store step wrote or found stored.
    pub bytes_stored: u64,
}

/// The end of `narra backfill --json`.
#[derive(Debug, Serialize)]
pub struct SummaryView<'a> {
    /// The backfill's id.
    pub backfill: Text<BackfillId>,
    /// `manifest`, `format`, `lines_accepted`, `bad_lines` and `jobs`, at the top level.
    #[serde(flatten)]
    pub read: ManifestRead<'a>,
    /// Jobs this run ran, and jobs it recognised without running.
    pub ran: usize,
    /// Jobs recognised without running (already succeeded, permanently failed, cancelled).
    pub skipped: usize,
    /// Every job of the manifest by its status at the end.
    pub by_status: &'a BTreeMap<String, usize>,
    /// The failed jobs by error class and by source host (`local` for files).
    pub failures_by_class: &'a BTreeMap<String, usize>,
    /// Failed jobs by source host, as `health` names it.
    pub failures_by_host: &'a BTreeMap<String, usize>,
    /// Bytes this run's finished jobs downloaded.
    pub bytes_downloaded: u64,
    /// Bytes this run's finished jobs stored.
    pub bytes_stored: u64,
    /// How long the run took, in milliseconds.
    pub elapsed_ms: u64,
}

pub fn summary(summary: &BackfillSummary) -> SummaryView<'_> {
    SummaryView {
        backfill: Text(summary.backfill.id),
        read: manifest_read(
            &summary.backfill,
            summary.format,
            summary.lines_accepted,
            &summary.bad_lines,
            summary.jobs,
        ),
        ran: summary.ran,
        skipped: summary.skipped,
        by_status: &summary.by_status,
        failures_by_class: &summary.failures_by_class,
        failures_by_host: &summary.failures_by_host,
        bytes_downloaded: summary.bytes_downloaded,
        bytes_stored: summary.bytes_stored,
        elapsed_ms: summary.elapsed_ms,
    }
}

fn counts(map: &BTreeMap<String, usize>) -> String {
    if map.is_empty() {
        return "none".to_string();
    }
    map.iter()
        .map(|(name, count)| format!("{name} {count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The end of `narra backfill` for people.
pub fn summary_text(summary: &BackfillSummary) -> String {
    format!(
        "backfill   {} ({}, {})\n\
         jobs       {} (ran {}, recognised {}); {} lines accepted, {} bad\n\
         status     {}\n\
         failures   {}\n\
         hosts      {}\n\
         bytes      {} downloaded, {} stored\n\
         time       {:.1} s\n",
        summary.backfill.id,
        summary.backfill.manifest,
        summary.format.as_str(),
        summary.jobs,
        summary.ran,
        summary.skipped,
        summary.lines_accepted,
        summary.bad_lines.len(),
        counts(&summary.by_status),
        counts(&summary.failures_by_class),
        counts(&summary.failures_by_host),
        HumanBytes(summary.bytes_downloaded),
        HumanBytes(summary.bytes_stored),
        Duration::from_millis(summary.elapsed_ms).as_secs_f64(),
    )
}
