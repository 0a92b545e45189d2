//! `WebhookStore` on sled: each job's webhook record and the `webhook_due` index of its pending
//! notice (`model::notices` decides what a record holds).

use async_trait::async_trait;

use super::SledStore;
use super::keys::{TREE_WEBHOOK_DUE, TREE_WEBHOOKS, plain, read_by_id, split_due_key};
use super::tx::store_abort;
use crate::model::job::{Delivery, JobId, Timestamp, Webhook};
use crate::model::notices;
use crate::store::{ClaimNotice, StoreError, StoreResult, WebhookStore, refuses_nothing};

#[async_trait]
impl WebhookStore for SledStore {
    async fn set_webhooks(&self, hooks: &[(JobId, String)]) -> StoreResult<()> {
        let now = Timestamp::now();
        self.transact(|tx| {
            for (id, url) in hooks {
                let Some(job) = tx.job(*id)? else {
                    continue;
                };
                let before = tx.webhook(*id)?;
                let webhook = notices::set_url(before.clone(), &job, url, now);
                tx.put_webhook(before.as_ref(), &webhook)?;
            }
            Ok(())
        })
        .map(|outcome| refuses_nothing(outcome, "set_webhooks"))?;
        self.flush().await
    }

    async fn webhook(&self, id: JobId) -> StoreResult<Option<Webhook>> {
        read_by_id(&self.webhooks, id, plain(TREE_WEBHOOKS))
    }

    async fn claim_notice(&self, now: Timestamp, lease_ms: u64) -> StoreResult<ClaimNotice> {
        // The first entry is read before the transaction: no iterator is open while one runs
        // (see `ClaimScan for SledStore`); the transaction checks the entry is still there.
        let Some((key, _)) = self.webhook_due.first()? else {
            return Ok(ClaimNotice::Wait { until: None });
        };
        let (due_at, id) = split_due_key(&key)?;
        if due_at > now {
            return Ok(ClaimNotice::Wait {
                until: Some(due_at),
            });
        }
        let claimed = self.transact(|tx| {
            if tx.webhook_due.get(&key)?.is_none() {
                return Ok(None);
            }
            let Some(before) = tx.webhook(id)? else {
                return Err(store_abort(StoreError::corrupt(
                    TREE_WEBHOOK_DUE,
                    &key,
                    format!("names job {id}, which has no webhook"),
                )));
            };
            let mut webhook = before.clone();
            if !notices::claim_notice(&mut webhook, now, lease_ms) {
                return Err(store_abort(StoreError::corrupt(
                    TREE_WEBHOOK_DUE,
                    &key,
                    format!("names job {id}, whose webhook has no pending notice"),
                )));
            }
            tx.put_webhook(Some(&before), &webhook)?;
            Ok(Some(webhook))
        })?;
        match refuses_nothing(claimed, "claim_notice") {
            Some(webhook) => Ok(ClaimNotice::Claimed(Box::new(webhook))),
            // Taken meanwhile: the caller asks again.
            None => Ok(ClaimNotice::Wait { until: Some(now) }),
        }
    }

    async fn record_delivery(
        &self,
        id: JobId,
        delivery: &Delivery,
        retry_at: Option<Timestamp>,
    ) -> StoreResult<()> {
        self.transact(|tx| {
            let Some(before) = tx.webhook(id)? else {
                return Ok(());
            };
            let mut webhook = before.clone();
            notices::apply_delivery(&mut webhook, delivery, retry_at);
            tx.put_webhook(Some(&before), &webhook)
        })
        .map(|outcome| refuses_nothing(outcome, "record_delivery"))?;
        self.flush().await
    }
}
