//! `WebhookStore` on PostgreSQL: each job's webhook record, with its pending notice's due time as
//! a column (`model::notices` decides what a record holds).

use async_trait::async_trait;

use super::PgStore;
use super::rows::{TABLE_WEBHOOKS, decode_in, decode_job, id_bytes, job_id_in};
use crate::model::job::{Delivery, JobId, Timestamp, Webhook};
use crate::model::notices;
use crate::store::{ClaimNotice, StoreError, StoreResult, WebhookStore, refuses_nothing};

#[async_trait]
impl WebhookStore for PgStore {
    async fn set_webhooks(&self, hooks: &[(JobId, String)]) -> StoreResult<()> {
        let now = Timestamp::now();
        let outcome = transaction!(self, tx => {
            for (id, url) in hooks {
                // The job's row is locked as a terminal transition locks it, so the two are
                // ordered: either the transition sees this record and queues the notice, or this
                // sees the finished job and queues it here.
                let Some(row) = tx
                    .sql
                    .query_opt(
                        "SELECT record FROM jobs WHERE id = $1 FOR UPDATE",
                        &[&id_bytes(*id)],
                    )
                    .await?
                else {
                    continue;
                };
                let job = decode_job(*id, row.get(0))?;
                let before = tx.webhook_for_update(*id).await?;
                let webhook = notices::set_url(before, &job, url, now);
                tx.put_webhook(&webhook).await?;
            }
            Ok(())
        })?;
        refuses_nothing(outcome, "set_webhooks");
        Ok(())
    }

    async fn webhook(&self, id: JobId) -> StoreResult<Option<Webhook>> {
        self.record_in(TABLE_WEBHOOKS, id).await
    }

    async fn claim_notice(&self, now: Timestamp, lease_ms: u64) -> StoreResult<ClaimNotice> {
        let outcome = transaction!(self, tx => {
            // SKIP LOCKED: a notice another notifier is claiming right now is not waited for.
            let row = tx
                .sql
                .query_opt(
                    "SELECT job_id, record FROM webhooks WHERE next_attempt_at <= $1
                     ORDER BY next_attempt_at LIMIT 1 FOR UPDATE SKIP LOCKED",
                    &[&now.0],
                )
                .await?;
            let Some(row) = row else {
                let until: Option<i64> = tx
                    .sql
                    .query_one("SELECT min(next_attempt_at) FROM webhooks", &[])
                    .await?
                    .get(0);
                return Ok(ClaimNotice::Wait {
                    // One due but locked by another notifier's claim: ask again soon.
                    until: until.map(|until| Timestamp(until.max(now.0))),
                });
            };
            let id = job_id_in(TABLE_WEBHOOKS, row.get(0))?;
            let mut webhook: Webhook = decode_in(TABLE_WEBHOOKS, id, row.get(1))?;
            if !notices::claim_notice(&mut webhook, now, lease_ms) {
                return Err(StoreError::corrupt(
                    TABLE_WEBHOOKS,
                    &id.to_bytes(),
                    "a due time but no pending notice".to_string(),
                )
                .into());
            }
            tx.put_webhook(&webhook).await?;
            Ok(ClaimNotice::Claimed(Box::new(webhook)))
        })?;
        Ok(refuses_nothing(outcome, "claim_notice"))
    }

    async fn record_delivery(
        &self,
        id: JobId,
        delivery: &Delivery,
        retry_at: Option<Timestamp>,
    ) -> StoreResult<()> {
        let outcome = transaction!(self, tx => {
            if let Some(mut webhook) = tx.webhook_for_update(id).await? {
                notices::apply_delivery(&mut webhook, delivery, retry_at);
                tx.put_webhook(&webhook).await?;
            }
            Ok(())
        })?;
        refuses_nothing(outcome, "record_delivery");
        Ok(())
    }
}
