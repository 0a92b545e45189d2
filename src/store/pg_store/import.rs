//! `narra import` into PostgreSQL: each exported record written as it was, in one SQL
//! transaction of its own (see `store::transfer`). A job's row, checkpoints, events, summary,
//! metadata, progress, log lines, blob references and webhook commit together, so an interrupted import
//! run again finds each job whole or absent.

use super::reader::record_of;
use super::rows::{
    TABLE_BACKFILLS, TABLE_INCIDENTS, TABLE_JOBS, TABLE_PRUNED, decode_in, decode_job, id_bytes,
    job_id_in, seq_column,
};
use super::tx::{Tx, TxAbort, TxResult};
use crate::model::job::{Backfill, Incident, JobId, PrunedJob};
use crate::store::codec;
use crate::store::transfer::{ImportOutcome, JobRecords, Record};

/// One record in the caller's transaction: `import` commits each on its own.
pub(super) async fn import_in_tx(tx: &Tx<'_>, record: &Record) -> TxResult<ImportOutcome> {
    match record {
        Record::Job(records) => import_job(tx, records).await,
        Record::Incident(incident) => import_incident(tx, incident).await,
        Record::Backfill { backfill, jobs } => import_backfill(tx, backfill, jobs).await,
        Record::Host(host) => {
            if let Some(existing) = tx.host_state(&host.host).await? {
                return Ok(ImportOutcome::host_over(&existing, host));
            }
            tx.put_host_state(host).await?;
            Ok(ImportOutcome::Imported)
        }
        Record::Pruned(pruned) => import_pruned(tx, pruned).await,
    }
}

async fn import_job(tx: &Tx<'_>, records: &JobRecords) -> TxResult<ImportOutcome> {
    let job = &records.job;
    let id = job.id;
    // Two rows when the id is one job's and the key another's: the first that differs is named.
    let holders = tx
        .sql
        .query(
            "SELECT id, record FROM jobs WHERE id = $1 OR key = $2 ORDER BY id <> $1 DESC FOR UPDATE",
            &[&id_bytes(id), &job.key],
        )
        .await?;
    if let Some(row) = holders.first() {
        let holder_id = job_id_in(TABLE_JOBS, row.get(0))?;
        if holder_id != id {
            return Ok(ImportOutcome::key_held(holder_id, &job.key));
        }
        return Ok(ImportOutcome::job_over(&decode_job(id, row.get(1))?, job));
    }
    if holds_row(tx, "SELECT 1 FROM pruned WHERE job_id = $1", id).await? {
        return Ok(ImportOutcome::job_pruned(id));
    }
    // The row first: the others reference it.
    tx.put_job(None, job).await?;
    for checkpoint in &records.checkpoints {
        tx.put_checkpoint(id, checkpoint).await?;
    }
    for event in &records.events {
        tx.sql
            .execute(
                "INSERT INTO events (job_id, seq, record) VALUES ($1, $2, $3)",
                &[
                    &id_bytes(id),
                    &seq_column(event.seq)?,
                    &codec::encode(event)?,
                ],
            )
            .await?;
    }
    put_each(
        tx,
        "INSERT INTO event_summaries (job_id, record) VALUES ($1, $2)",
        id,
        &records.event_summary,
    )
    .await?;
    if let Some(metadata) = &records.metadata {
        tx.put_metadata(id, metadata).await?;
    }
    // Progress and log lines have no foreign key: lines an earlier, failed import could not have
    // left (it rolled back), but a deleted job's could.
    for table in ["progress", "logs"] {
        tx.sql
            .execute(
                &format!("DELETE FROM {table} WHERE job_id = $1"),
                &[&id_bytes(id)],
            )
            .await?;
    }
    put_each(
        tx,
        "INSERT INTO progress (job_id, record) VALUES ($1, $2)",
        id,
        &records.progress,
    )
    .await?;
    put_each(
        tx,
        "INSERT INTO logs (job_id, record) VALUES ($1, $2)",
        id,
        &records.logs,
    )
    .await?;
    let blobs: Vec<&str> = records.blobs.iter().map(String::as_str).collect();
    tx.insert_blob_refs(id, &blobs).await?;
    if let Some(webhook) = &records.webhook {
        tx.put_webhook(webhook).await?;
    }
    Ok(ImportOutcome::Imported)
}

/// Whether the query `sql` finds a row for the job `id` (its one parameter).
async fn holds_row(tx: &Tx<'_>, sql: &str, id: JobId) -> TxResult<bool> {
    Ok(tx.sql.query_opt(sql, &[&id_bytes(id)]).await?.is_some())
}

/// Writes each of `records` (none, one or many) as a row of the job `id` with `sql` (as
/// [`Tx::put_record`]).
async fn put_each<'a, T: serde::Serialize + 'a>(
    tx: &Tx<'_>,
    sql: &str,
    id: JobId,
    records: impl IntoIterator<Item = &'a T>,
) -> TxResult<()> {
    for record in records {
        tx.put_record(sql, id, record).await?;
    }
    Ok(())
}

async fn import_incident(tx: &Tx<'_>, incident: &Incident) -> TxResult<ImportOutcome> {
    // As `record_incident`: one appender at a time, in every process.
    tx.sql
        .batch_execute("LOCK TABLE incidents IN EXCLUSIVE MODE")
        .await?;
    let seq = seq_column(incident.seq)?;
    let existing = tx
        .sql
        .query_opt("SELECT record FROM incidents WHERE seq = $1", &[&seq])
        .await?;
    if let Some(row) = existing {
        let existing: Incident =
            codec::decode(TABLE_INCIDENTS, &incident.seq.to_be_bytes(), row.get(0))?;
        return Ok(ImportOutcome::incident_over(&existing, incident));
    }
    tx.sql
        .execute(
            "INSERT INTO incidents (seq, record) VALUES ($1, $2)",
            &[&seq, &codec::encode(incident)?],
        )
        .await?;
    Ok(ImportOutcome::Imported)
}

async fn import_backfill(
    tx: &Tx<'_>,
    backfill: &Backfill,
    jobs: &[JobId],
) -> TxResult<ImportOutcome> {
    let existing = tx
        .sql
        .query(
            "SELECT id, record FROM backfills WHERE id = $1 OR manifest = $2
             ORDER BY id <> $1 DESC",
            &[&backfill.id.to_bytes().to_vec(), &backfill.manifest],
        )
        .await?;
    let outcome = match existing.first() {
        Some(row) => {
            let key: &[u8] = row.get(0);
            let existing: Backfill = codec::decode(TABLE_BACKFILLS, key, row.get(1))?;
            let outcome = ImportOutcome::backfill_over(&existing, backfill);
            if outcome != ImportOutcome::AlreadyPresent {
                return Ok(outcome);
            }
            outcome
        }
        None => {
            tx.sql
                .execute(
                    "INSERT INTO backfills (id, manifest, record) VALUES ($1, $2, $3)",
                    &[
                        &backfill.id.to_bytes().to_vec(),
                        &backfill.manifest,
                        &codec::encode(backfill)?,
                    ],
                )
                .await?;
            ImportOutcome::Imported
        }
    };
    for &job in jobs {
        tx.sql
            .execute(
                "INSERT INTO backfill_jobs (backfill_id, job_id) VALUES ($1, $2)
                 ON CONFLICT DO NOTHING",
                &[&backfill.id.to_bytes().to_vec(), &id_bytes(job)],
            )
            .await?;
    }
    Ok(outcome)
}

async fn import_pruned(tx: &Tx<'_>, pruned: &PrunedJob) -> TxResult<ImportOutcome> {
    let id = pruned.id;
    let existing = record_of::<PrunedJob, TxAbort>(
        tx.sql,
        "SELECT record FROM pruned WHERE job_id = $1",
        id,
        |record| decode_in(TABLE_PRUNED, id, record),
    )
    .await?;
    if let Some(existing) = existing {
        return Ok(ImportOutcome::tombstone_over(&existing, pruned));
    }
    if holds_row(tx, "SELECT 1 FROM jobs WHERE id = $1", id).await? {
        return Ok(ImportOutcome::job_live(id));
    }
    tx.put_record(
        "INSERT INTO pruned (job_id, record) VALUES ($1, $2)",
        id,
        pruned,
    )
    .await?;
    let blobs: Vec<&str> = pruned.blobs.iter().map(String::as_str).collect();
    tx.insert_blob_refs(id, &blobs).await?;
    Ok(ImportOutcome::Imported)
}
