//! A backfill's outcome, as plain data: how its manifest is written, the lines that could not be
//! read, and the summary at the end of a run (`narra backfill`, `POST /backfills`).
//!
//! `engine::backfill` parses manifests, submits and runs them, and fills these.

use std::collections::BTreeMap;

use crate::model::job::Backfill;

/// How a manifest is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestFormat {
    /// One source per line.
    Lines,
    /// One JSON object per line: `{"source": ..., "workflow": ..., "key": ..., "priority": ...}`.
    JsonLines,
    /// A header line naming a `source` column (and optionally `key`, `workflow`, `priority`).
    Csv,
}

impl ManifestFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ManifestFormat::Lines => "lines",
            ManifestFormat::JsonLines => "jsonl",
            ManifestFormat::Csv => "csv",
        }
    }
}

/// A line that could not be read as a source: reported, skipped, never fatal for the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// The line's number in the manifest, from 1.
    pub line: usize,
    /// Why it could not be read as a source.
    pub reason: String,
}

/// The end of a backfill run.
#[derive(Debug, Clone)]
pub struct BackfillSummary {
    /// The backfill's record: its id, its manifest's name, when it was first run.
    pub backfill: Backfill,
    /// How the manifest was read.
    pub format: ManifestFormat,
    /// Lines read as a source (blank lines and `#` comments are not counted).
    pub lines_accepted: usize,
    /// Lines that could not be read, skipped.
    pub bad_lines: Vec<BadLine>,
    /// Distinct jobs the manifest names: several lines may name one.
    pub jobs: usize,
    /// Jobs run by this run, and jobs recognised without running.
    pub ran: usize,
    /// Jobs recognised without running: finished already after submission.
    pub skipped: usize,
    /// Every job of the manifest by its status at the end (names as `jobs` shows them).
    pub by_status: BTreeMap<String, usize>,
    /// The failed jobs by error class and by source host (`local` for files).
    pub failures_by_class: BTreeMap<String, usize>,
    /// Failed jobs by source host.
    pub failures_by_host: BTreeMap<String, usize>,
    /// Bytes this run's finished jobs downloaded.
    pub bytes_downloaded: u64,
    /// Bytes this run's finished jobs stored.
    pub bytes_stored: u64,
    /// How long the run took, in milliseconds.
    pub elapsed_ms: u64,
}

impl BackfillSummary {
    pub fn failed(&self) -> usize {
        self.by_status.get("failed").copied().unwrap_or(0)
    }
}
