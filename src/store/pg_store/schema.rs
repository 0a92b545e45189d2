//! The PostgreSQL schema as numbered migrations, applied in order when a store is opened (and by
//! `narra migrate`), each at most once: `schema_migrations` records which ran.
//!
//! Every record column holds the same bytes as sled's trees (`store::codec`: a schema-version byte
//! and bincode), so both stores share one record format; the other columns are what queries filter
//! and sort on, copied out of the record by the one function that writes it. Text that is sorted
//! on uses the "C" collation, so it sorts by bytes, as sled's keys do.
//!
//! A migration is never edited once released: a change to the schema is a new entry at the end.

use tokio_postgres::Client;

use super::{SCHEMA_LOCK, pg_error};
use crate::store::{StoreError, StoreResult};

/// The migrations, in order: `(version, SQL)`. Versions start at 1 and have no gap.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
CREATE TABLE jobs (
    id          bytea PRIMARY KEY CHECK (length(id) = 16),
    key         text COLLATE "C" NOT NULL UNIQUE,
    status      smallint NOT NULL,
    priority    integer NOT NULL,
    not_before  bigint,
    host        text COLLATE "C" NOT NULL,
    record      bytea NOT NULL
);
-- The claim order of pending jobs: highest priority first, then oldest (ids are ULIDs).
CREATE INDEX jobs_pending ON jobs (priority DESC, id) WHERE status = 0;
CREATE INDEX jobs_status ON jobs (status, id);
CREATE TABLE checkpoints (
    job_id  bytea NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    step    text COLLATE "C" NOT NULL,
    record  bytea NOT NULL,
    PRIMARY KEY (job_id, step)
);
CREATE TABLE events (
    job_id  bytea NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq     bigint NOT NULL,
    record  bytea NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE event_summaries (
    job_id  bytea PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    record  bytea NOT NULL
);
CREATE TABLE metadata (
    job_id  bytea PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    record  bytea NOT NULL
);
CREATE TABLE progress (
    job_id  bytea PRIMARY KEY,
    record  bytea NOT NULL
);
-- Job logs are best effort and written apart from the job's transactions: no foreign key.
CREATE TABLE logs (
    seq     bigserial PRIMARY KEY,
    job_id  bytea NOT NULL,
    record  bytea NOT NULL
);
CREATE INDEX logs_job ON logs (job_id, seq);
-- The blob -> jobs index; a pruned job's references stay under its id (no foreign key).
CREATE TABLE blob_refs (
    blob    text COLLATE "C" NOT NULL,
    job_id  bytea NOT NULL,
    PRIMARY KEY (blob, job_id)
);
CREATE INDEX blob_refs_job ON blob_refs (job_id);
CREATE TABLE incidents (
    seq     bigint PRIMARY KEY,
    record  bytea NOT NULL
);
CREATE TABLE backfills (
    id        bytea PRIMARY KEY,
    manifest  text COLLATE "C" NOT NULL UNIQUE,
    record    bytea NOT NULL
);
CREATE TABLE backfill_jobs (
    backfill_id  bytea NOT NULL,
    job_id       bytea NOT NULL,
    PRIMARY KEY (backfill_id, job_id)
);
CREATE TABLE hosts (
    host    text COLLATE "C" PRIMARY KEY,
    record  bytea NOT NULL
);
CREATE TABLE pruned (
    job_id  bytea PRIMARY KEY,
    record  bytea NOT NULL
);
"#,
    ),
    (
        2,
        r#"
-- Completion webhooks: a job's callback URL, pending notice and deliveries (`store::WebhookStore`).
-- `next_attempt_at` is the pending notice's, NULL when none is pending.
CREATE TABLE webhooks (
    job_id           bytea PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    next_attempt_at  bigint,
    record           bytea NOT NULL
);
CREATE INDEX webhooks_due ON webhooks (next_attempt_at) WHERE next_attempt_at IS NOT NULL;
"#,
    ),
];

/// The version the newest migration brings the schema to.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |(version, _)| *version)
}

/// Applies the migrations the schema lacks, in one transaction under an advisory lock, so that
/// processes opening the same store at once apply each migration once. Returns the versions
/// applied (empty when the schema was current). A schema newer than this narra is refused.
pub async fn migrate(client: &mut Client) -> StoreResult<Vec<i32>> {
    let transaction = client.transaction().await?;
    transaction
        .execute(
            "SELECT pg_advisory_xact_lock(hashtext(current_schema()), $1)",
            &[&SCHEMA_LOCK],
        )
        .await?;
    // Checked rather than `CREATE TABLE IF NOT EXISTS`, whose notice the server would send on
    // every start; the advisory lock keeps the check and the creation together.
    let table: Option<String> = transaction
        .query_one("SELECT to_regclass('schema_migrations')::text", &[])
        .await?
        .get(0);
    if table.is_none() {
        transaction
            .batch_execute(
                "CREATE TABLE schema_migrations (
                    version     integer PRIMARY KEY,
                    applied_at  timestamptz NOT NULL DEFAULT now()
                )",
            )
            .await?;
    }
    let found: Option<i32> = transaction
        .query_one("SELECT max(version) FROM schema_migrations", &[])
        .await?
        .get(0);
    let found = found.unwrap_or(0);
    if found > latest_version() {
        return Err(StoreError::UnsupportedMigration {
            found,
            supported: latest_version(),
        });
    }
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS.iter().filter(|(version, _)| *version > found) {
        transaction.batch_execute(sql).await.map_err(pg_error)?;
        transaction
            .execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[version],
            )
            .await?;
        applied.push(*version);
    }
    transaction.commit().await?;
    if !applied.is_empty() {
        tracing::info!(?applied, "applied PostgreSQL schema migrations");
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_start_at_one_with_no_gap() {
        for (index, (version, _)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(usize::try_from(*version).expect("positive"), index + 1);
        }
    }
}
