//! `narra import` into PostgreSQL: each exported record written as it was, in one SQL
//! transaction of its own (see `store::transfer`). A job's row, checkpoints, events, summary,
//! metadata, progress, log lines, blob references and webhook commit together, so an interrupted import
//! run again finds each job whole or absent.

use std::sync::atomic::Ordering;

// `transaction!` names these where it is expanded.
use super::{
    PgStore, TABLE_BACKFILLS, TABLE_INCIDENTS, TABLE_PRUNED, TRANSACTION_ATTEMPTS_MAX, Tx, TxAbort,
    TxResult, codec, decode_in, decode_job, id_bytes, seq_column,
};
use crate::model::job::{Backfill, Incident, JobId, PrunedJob};
use crate::store::transfer::{ImportOutcome, JobRecords, Record};
use crate::store::{StoreError, StoreResult};

impl PgStore {
    pub(super) async fn import_records(
        &self,
        records: &[Record],
    ) -> StoreResult<Vec<ImportOutcome>> {
        let mut outcomes = Vec::with_capacity(records.len());
        for record in records {
            let outcome = transaction!(self, tx => import_in_tx(&tx, record).await)?;
            outcomes.push(
                outcome.unwrap_or_else(|rejected| ImportOutcome::Conflict(rejected.to_string())),
            );
        }
        Ok(outcomes)
    }
}

async fn import_in_tx(tx: &Tx<'_>, record: &Record) -> TxResult<ImportOutcome> {
    match record {
        Record::Job(records) => import_job(tx, records).await,
        Record::Incident(incident) => import_incident(tx, incident).await,
        Record::Backfill { backfill, jobs } => import_backfill(tx, backfill, jobs).await,
        Record::Host(host) => {
            let existing = tx.host_state(&host.host).await?;
            Ok(match existing {
                Some(existing) if existing == *host => ImportOutcome::AlreadyPresent,
                Some(_) => ImportOutcome::Conflict(format!(
                    "the store has another state for host {}",
                    host.host
                )),
                None => {
                    tx.put_host_state(host).await?;
                    ImportOutcome::Imported
                }
            })
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
        let holder_id = super::job_id_in(super::TABLE_JOBS, row.get(0))?;
        if holder_id != id {
            return Ok(ImportOutcome::Conflict(format!(
                "the store has job {holder_id} under key {:?}",
                job.key
            )));
        }
        let existing = decode_job(id, row.get(1))?;
        return Ok(if existing == *job {
            ImportOutcome::AlreadyPresent
        } else {
            ImportOutcome::Conflict(format!("the store has another record for job {id}"))
        });
    }
    let pruned = tx
        .sql
        .query_opt("SELECT 1 FROM pruned WHERE job_id = $1", &[&id_bytes(id)])
        .await?;
    if pruned.is_some() {
        return Ok(ImportOutcome::Conflict(format!(
            "the store has job {id} as pruned"
        )));
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
    if let Some(summary) = &records.event_summary {
        tx.sql
            .execute(
                "INSERT INTO event_summaries (job_id, record) VALUES ($1, $2)",
                &[&id_bytes(id), &codec::encode(summary)?],
            )
            .await?;
    }
    if let Some(metadata) = &records.metadata {
        tx.put_metadata(id, metadata).await?;
    }
    // Progress and log lines have no foreign key: lines an earlier, failed import could not have
    // left (it rolled back), but a deleted job's could.
    tx.sql
        .execute("DELETE FROM progress WHERE job_id = $1", &[&id_bytes(id)])
        .await?;
    if let Some(progress) = &records.progress {
        tx.sql
            .execute(
                "INSERT INTO progress (job_id, record) VALUES ($1, $2)",
                &[&id_bytes(id), &codec::encode(progress)?],
            )
            .await?;
    }
    tx.sql
        .execute("DELETE FROM logs WHERE job_id = $1", &[&id_bytes(id)])
        .await?;
    for line in &records.logs {
        tx.sql
            .execute(
                "INSERT INTO logs (job_id, record) VALUES ($1, $2)",
                &[&id_bytes(id), &codec::encode(line)?],
            )
            .await?;
    }
    insert_blob_refs(tx, id, &records.blobs).await?;
    if let Some(webhook) = &records.webhook {
        tx.put_webhook(webhook).await?;
    }
    Ok(ImportOutcome::Imported)
}

async fn insert_blob_refs(tx: &Tx<'_>, id: JobId, blobs: &[String]) -> TxResult<()> {
    for blob in blobs {
        tx.sql
            .execute(
                "INSERT INTO blob_refs (blob, job_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[blob, &id_bytes(id)],
            )
            .await?;
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
        return Ok(if existing == *incident {
            ImportOutcome::AlreadyPresent
        } else {
            ImportOutcome::Conflict(format!(
                "the store has another incident at seq {}",
                incident.seq
            ))
        });
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
            if existing != *backfill {
                return Ok(ImportOutcome::Conflict(format!(
                    "the store has backfill {} of manifest {:?}",
                    existing.id, existing.manifest
                )));
            }
            ImportOutcome::AlreadyPresent
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
    let existing = tx
        .sql
        .query_opt(
            "SELECT record FROM pruned WHERE job_id = $1",
            &[&id_bytes(id)],
        )
        .await?;
    if let Some(row) = existing {
        let existing: PrunedJob = decode_in(TABLE_PRUNED, id, row.get(0))?;
        return Ok(if existing == *pruned {
            ImportOutcome::AlreadyPresent
        } else {
            ImportOutcome::Conflict(format!(
                "the store has another tombstone for pruned job {id}"
            ))
        });
    }
    let live = tx
        .sql
        .query_opt("SELECT 1 FROM jobs WHERE id = $1", &[&id_bytes(id)])
        .await?;
    if live.is_some() {
        return Ok(ImportOutcome::Conflict(format!(
            "the store has a live job {id}"
        )));
    }
    tx.sql
        .execute(
            "INSERT INTO pruned (job_id, record) VALUES ($1, $2)",
            &[&id_bytes(id), &codec::encode(pruned)?],
        )
        .await?;
    insert_blob_refs(tx, id, &pruned.blobs).await?;
    Ok(ImportOutcome::Imported)
}
