//! `narra export` and `narra import`: a whole state store as one JSON Lines file, so a single
//! machine's sled state moves into PostgreSQL when a team outgrows one machine
//! (`docs/DEPLOYMENT.md`), or a store is copied between machines.
//!
//! The file:
//! 1. a header line, `{"narra_export": {"format", "schema_version", "narra", "state",
//!    "exported_at"}}`;
//! 2. one line per [`Record`] (`store::transfer`): every job with its checkpoints, events, event
//!    summary, metadata, progress, log lines, blob references and webhook, then pruned jobs' tombstones,
//!    backfills, the incident log and the hosts' scheduling state;
//! 3. a trailer line, `{"end": {"records", "blake3"}}`: the count, and the blake3 of every byte
//!    before the trailer.
//!
//! Secrets: by default every URL in the records (sources, idempotency keys, callback URLs) is
//! redacted as everywhere people read them (`model::redact`), and the header says
//! `"secrets": "redacted"`. Such a file is for reading, not for moving a store: its jobs could not
//! be fetched again, deduplicated or notified, so `import` refuses it. `--include-secrets`
//! ([`Secrets::Included`]) writes them as stored; that file is as sensitive as the state store.
//!
//! A file without its trailer, or whose hash or count does not match, was cut short or changed:
//! `import` reads the whole file and checks it before it writes anything. Records are written as
//! they were (ids, fencing tokens, event sequences and timestamps survive) and each is one store
//! transaction, so an import that was interrupted can be run again: what it already wrote is
//! `already_present`. A record whose identity the target holds with other content is a conflict,
//! listed, never overwritten.
//!
//! Export reads the store through `JobReader` only and writes nothing to it. It is a consistent
//! snapshot when nothing else writes the store meanwhile: the CLI runs it only on a home no other
//! process holds (sled), and `docs/DEPLOYMENT.md` says to stop the fleet's workers first
//! (PostgreSQL).

use std::collections::HashMap;
use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

use crate::model::job::{JobId, Status, Timestamp};
use crate::store::transfer::{ImportOutcome, JobRecords, Record};
use crate::store::{StateStore, StoreError};

/// The version of the file layout this narra writes and reads.
pub const EXPORT_FORMAT: u32 = 1;

/// Records handed to the store per `import` call: one flush (sled) per this many.
const IMPORT_BATCH: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the export: {0}")]
    Write(std::io::Error),
    #[error("cannot read {0}")]
    Read(String, #[source] std::io::Error),
    /// The file is not a whole, unchanged export this narra reads.
    #[error("{path} is not a usable export: {reason}")]
    BadFile { path: String, reason: String },
}

/// The first line of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: u32,
    /// `store::codec::SCHEMA_VERSION` of the narra that wrote it: the records' shape.
    pub schema_version: u8,
    pub narra: String,
    /// The state store it was exported from (`StateUri::display`, password redacted).
    pub state: String,
    pub exported_at: Timestamp,
    /// Whether the records keep their secrets. Files written before this field kept them.
    #[serde(default = "Secrets::included")]
    pub secrets: Secrets,
}

/// Whether an export keeps the secrets in its records' URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Secrets {
    /// Every URL redacted: a file to read or share, which `import` refuses.
    Redacted,
    /// As stored: a file that moves a store, as sensitive as the store.
    Included,
}

impl Secrets {
    fn included() -> Secrets {
        Secrets::Included
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum HeaderLine {
    NarraExport(Header),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum TrailerLine {
    End { records: u64, blake3: String },
}

/// How many records of each kind an export wrote or an import read, in `Record::kind` order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RecordCounts {
    pub job: u64,
    pub pruned: u64,
    pub backfill: u64,
    pub incident: u64,
    pub host: u64,
}

impl RecordCounts {
    fn add(&mut self, record: &Record) {
        match record {
            Record::Job(_) => self.job += 1,
            Record::Pruned(_) => self.pruned += 1,
            Record::Backfill { .. } => self.backfill += 1,
            Record::Incident(_) => self.incident += 1,
            Record::Host(_) => self.host += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.job + self.pruned + self.backfill + self.incident + self.host
    }
}

/// What `export` wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExportSummary {
    pub records: RecordCounts,
    /// Jobs exported while running: their leases travel with them, and they go back to pending
    /// when a worker of the target store reclaims them (at once on sled; on PostgreSQL once the
    /// lease has expired).
    pub running: u64,
    pub blake3: String,
    pub secrets: Secrets,
}

/// Writes every record of `store` to `out` (see the module docs); `state` names the store in
/// the header; `secrets` says whether the records' URLs keep their secrets.
pub async fn export(
    store: &dyn StateStore,
    state: &str,
    secrets: Secrets,
    out: &mut impl Write,
) -> Result<ExportSummary, TransferError> {
    let mut writer = HashingWriter {
        out,
        hasher: blake3::Hasher::new(),
        secrets,
    };
    let header = HeaderLine::NarraExport(Header {
        format: EXPORT_FORMAT,
        schema_version: crate::store::codec::SCHEMA_VERSION,
        narra: env!("CARGO_PKG_VERSION").to_string(),
        state: state.to_string(),
        exported_at: Timestamp::now(),
        secrets,
    });
    writer.line(&header)?;
    let mut blobs_by_job: HashMap<JobId, Vec<String>> = HashMap::new();
    for (blob, id) in store.blob_refs().await? {
        blobs_by_job.entry(id).or_default().push(blob);
    }
    let mut counts = RecordCounts::default();
    let mut running = 0;
    let mut jobs = crate::engine::all_jobs(store, None).await?;
    // Oldest first, so an import recreates them in the order they were made.
    jobs.reverse();
    for job in jobs {
        let id = job.id;
        if job.status == Status::Running {
            running += 1;
        }
        let mut blobs = blobs_by_job.remove(&id).unwrap_or_default();
        blobs.sort();
        let record = Record::Job(Box::new(JobRecords {
            checkpoints: store.checkpoints(id).await?,
            events: store.events(id).await?,
            event_summary: store.event_summary(id).await?,
            metadata: store.metadata(id).await?,
            progress: store.progress(id).await?,
            logs: store.logs(id).await?,
            webhook: store.webhook(id).await?,
            blobs,
            job,
        }));
        counts.add(&record);
        writer.line(&record)?;
    }
    let mut records: Vec<Record> = Vec::new();
    records.extend(store.pruned_jobs().await?.into_iter().map(Record::Pruned));
    for backfill in store.backfills().await? {
        let jobs = store.backfill_jobs(backfill.id).await?;
        records.push(Record::Backfill { backfill, jobs });
    }
    records.extend(store.incidents().await?.into_iter().map(Record::Incident));
    records.extend(store.hosts().await?.into_iter().map(Record::Host));
    for record in &records {
        counts.add(record);
        writer.line(record)?;
    }
    let blake3 = writer.hasher.finalize().to_hex().to_string();
    let trailer = TrailerLine::End {
        records: counts.total(),
        blake3: blake3.clone(),
    };
    let line = serde_json::to_string(&trailer).expect("the trailer serializes");
    writeln!(writer.out, "{line}").map_err(TransferError::Write)?;
    writer.out.flush().map_err(TransferError::Write)?;
    Ok(ExportSummary {
        records: counts,
        running,
        blake3,
        secrets,
    })
}

struct HashingWriter<'a, W: Write> {
    out: &'a mut W,
    hasher: blake3::Hasher,
    secrets: Secrets,
}

impl<W: Write> HashingWriter<'_, W> {
    fn line(&mut self, value: &impl Serialize) -> Result<(), TransferError> {
        let encode_failed = |error: serde_json::Error| {
            TransferError::Store(StoreError::Encode(format!("a record as JSON: {error}")))
        };
        let mut line = serde_json::to_vec(value).map_err(encode_failed)?;
        if self.secrets == Secrets::Redacted {
            // On the text: ids are u128 numbers, which `serde_json::Value` cannot hold.
            let text = String::from_utf8(line).expect("serde_json writes UTF-8");
            line = crate::model::redact::redact_json_text(&text).into_bytes();
        }
        line.push(b'\n');
        self.hasher.update(&line);
        self.out.write_all(&line).map_err(TransferError::Write)
    }
}

/// What `check` found in a whole, unchanged export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Checked {
    pub header: Header,
    pub records: RecordCounts,
}

/// Reads the whole export at `path` and checks it: its header (format and schema version), every
/// record line, and the trailer's count and hash. Nothing is written anywhere.
pub fn check(path: &std::path::Path) -> Result<Checked, TransferError> {
    let name = path.display().to_string();
    let file =
        std::fs::File::open(path).map_err(|error| TransferError::Read(name.clone(), error))?;
    check_file(&name, &file)
}

fn check_file(name: &str, file: &std::fs::File) -> Result<Checked, TransferError> {
    let mut header = None;
    let mut counts = RecordCounts::default();
    read_records(name, file, |item| {
        match item {
            Item::Header(read) => header = Some(read),
            Item::Record(record) => counts.add(&record),
        }
        Ok(())
    })?;
    Ok(Checked {
        header: header.expect("read_records fails on a file without a header"),
        records: counts,
    })
}

/// What `import` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportSummary {
    pub imported: RecordCounts,
    pub already_present: RecordCounts,
    /// `(kind, name, why)` of each record the target holds with other content: not written.
    pub conflicts: Vec<Conflict>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    pub kind: &'static str,
    pub name: String,
    pub reason: String,
}

/// Checks the export at `path` (see [`check`]), then writes its records into `store`.
pub async fn import(
    store: &dyn StateStore,
    path: &std::path::Path,
) -> Result<(Checked, ImportSummary), TransferError> {
    let name = path.display().to_string();
    // One open file for both passes: what was checked is what is read again, even if the path is
    // replaced meanwhile (and the second pass checks the trailer again).
    let file = std::sync::Arc::new(
        std::fs::File::open(path).map_err(|error| TransferError::Read(name.clone(), error))?,
    );
    let join_failed = |join_error: tokio::task::JoinError| {
        TransferError::Read(name.clone(), std::io::Error::other(join_error.to_string()))
    };
    let checked = {
        let (name, file) = (name.clone(), file.clone());
        tokio::task::spawn_blocking(move || check_file(&name, &file))
            .await
            .map_err(join_failed)??
    };
    if checked.header.secrets == Secrets::Redacted {
        return Err(TransferError::BadFile {
            path: name,
            reason: "it was exported without --include-secrets: its sources, keys and callback \
                     URLs are redacted, so its jobs could not be fetched again, deduplicated or \
                     notified (export again with `narra export --include-secrets`)"
                .to_string(),
        });
    }
    let mut summary = ImportSummary::default();
    let mut batch: Vec<Record> = Vec::with_capacity(IMPORT_BATCH);
    // Read again, records are handed over a batch at a time so memory holds one batch, not the
    // store. A channel keeps the blocking reader off the async threads.
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Record>(IMPORT_BATCH);
    let reader_name = name.clone();
    let reader = tokio::task::spawn_blocking(move || {
        read_records(&reader_name, &file, |item| {
            if let Item::Record(record) = item
                && sender.blocking_send(record).is_err()
            {
                // The importer stopped on an error it reports itself: stop reading.
                return Err(TransferError::Read(
                    reader_name.clone(),
                    std::io::Error::other("the import stopped"),
                ));
            }
            Ok(())
        })
    });
    while let Some(record) = receiver.recv().await {
        batch.push(record);
        if batch.len() == IMPORT_BATCH {
            import_batch(store, &mut batch, &mut summary).await?;
        }
    }
    import_batch(store, &mut batch, &mut summary).await?;
    reader.await.map_err(join_failed)??;
    Ok((checked, summary))
}

async fn import_batch(
    store: &dyn StateStore,
    batch: &mut Vec<Record>,
    summary: &mut ImportSummary,
) -> Result<(), TransferError> {
    if batch.is_empty() {
        return Ok(());
    }
    let outcomes = store.import(batch).await?;
    for (record, outcome) in batch.iter().zip(outcomes) {
        match outcome {
            ImportOutcome::Imported => summary.imported.add(record),
            ImportOutcome::AlreadyPresent => summary.already_present.add(record),
            ImportOutcome::Conflict(reason) => summary.conflicts.push(Conflict {
                kind: record.kind(),
                name: record.name(),
                reason,
            }),
        }
    }
    batch.clear();
    Ok(())
}

enum Item {
    Header(Header),
    Record(Record),
}

/// Reads the export `file` (named `name` in messages) from its start, line by line, handing over the header and each record, and fails on anything
/// that is not a whole export this narra reads; the trailer is checked at the end.
fn read_records(
    name: &str,
    file: &std::fs::File,
    mut each: impl FnMut(Item) -> Result<(), TransferError>,
) -> Result<(), TransferError> {
    use std::io::Seek;
    let name = name.to_string();
    let bad = |reason: String| TransferError::BadFile {
        path: name.clone(),
        reason,
    };
    let mut file = file;
    file.seek(std::io::SeekFrom::Start(0))
        .map_err(|error| TransferError::Read(name.clone(), error))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut hasher = blake3::Hasher::new();
    let mut line = Vec::new();
    let mut number: u64 = 0;
    let mut records: u64 = 0;
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(|error| TransferError::Read(name.clone(), error))?;
        if read == 0 {
            return Err(bad(format!(
                "it ends after line {number} with no trailer line: it was cut short"
            )));
        }
        number += 1;
        if line.last() != Some(&b'\n') {
            return Err(bad(format!("line {number} is cut short")));
        }
        if number == 1 {
            let header = match serde_json::from_slice::<HeaderLine>(&line) {
                Ok(HeaderLine::NarraExport(header)) => header,
                Err(error) => {
                    return Err(bad(format!("line 1 is not a narra export header: {error}")));
                }
            };
            if header.format != EXPORT_FORMAT {
                return Err(bad(format!(
                    "export format {} (this narra reads format {EXPORT_FORMAT})",
                    header.format
                )));
            }
            if header.schema_version != crate::store::codec::SCHEMA_VERSION {
                return Err(bad(format!(
                    "its records are schema version {}, this narra's are {}: export and import \
                     with the same narra version",
                    header.schema_version,
                    crate::store::codec::SCHEMA_VERSION
                )));
            }
            hasher.update(&line);
            each(Item::Header(header))?;
            continue;
        }
        if let Ok(TrailerLine::End {
            records: count,
            blake3,
        }) = serde_json::from_slice::<TrailerLine>(&line)
        {
            let actual = hasher.finalize().to_hex().to_string();
            if actual != blake3 {
                return Err(bad(format!(
                    "its content hash is {actual}, the trailer says {blake3}: it was changed"
                )));
            }
            if count != records {
                return Err(bad(format!(
                    "it holds {records} records, the trailer says {count}"
                )));
            }
            let mut rest = Vec::new();
            reader
                .read_until(b'\n', &mut rest)
                .map_err(|error| TransferError::Read(name.clone(), error))?;
            if !rest.is_empty() {
                return Err(bad(format!(
                    "there is more after the trailer (line {number})"
                )));
            }
            return Ok(());
        }
        let record: Record = serde_json::from_slice(&line)
            .map_err(|error| bad(format!("line {number} is not a record: {error}")))?;
        hasher.update(&line);
        records += 1;
        each(Item::Record(record))?;
    }
}

#[cfg(test)]
mod tests;
