//! Webhook notices: every terminal transition of a watched job queues one notice in its own
//! transaction, a notice is claimed by one notifier at a time and retried until delivered, and a
//! webhook goes with its job.

use super::fixtures::{Answer, claim, error_info, submit_new, succeeded_job, watch, webhook_of};
use crate::model::job::{Delivery, JobId, Notice, Status, Timestamp};
use crate::store::{ClaimNotice, StateStore};

fn delivery_of(notice: &Notice, attempt: u32, ok: bool) -> Delivery {
    Delivery {
        delivery_id: notice.delivery_id,
        status: notice.status,
        attempt,
        at: Timestamp::now(),
        status_code: Some(if ok { 204 } else { 503 }),
        error: (!ok).then(|| "503 Service Unavailable".to_string()),
        ok,
        gave_up: false,
    }
}

/// The notice the job's webhook has pending.
async fn pending_notice(store: &dyn StateStore, id: JobId, why: &str) -> Notice {
    webhook_of(store, id).await.pending.expect(why)
}

/// What `claim_notice` answers at `now`, with a one-minute claim.
async fn claim_notice_at(store: &dyn StateStore, now: Timestamp) -> ClaimNotice {
    store.claim_notice(now, 60_000).await.expect("claim")
}

/// Every terminal transition of a job with a webhook queues exactly one notice of that status, in
/// the transition's transaction; a job without a webhook queues none, and neither does a
/// transition that is not terminal.
pub(super) async fn terminal_transitions_queue_one_webhook_notice_each(store: &dyn StateStore) {
    let watched = submit_new(store, "watched").await;
    let unwatched = submit_new(store, "unwatched").await;
    watch(store, watched.id, "https://hooks.example.com/a").await;
    let webhook = webhook_of(store, watched.id).await;
    assert_eq!(webhook.url, "https://hooks.example.com/a");
    assert!(
        webhook.pending.is_none(),
        "a pending job has nothing to tell"
    );
    assert!(store.webhook(unwatched.id).await.expect("read").is_none());

    let token = claim(store, watched.id).await;
    assert!(webhook_of(store, watched.id).await.pending.is_none());
    store.fail(&token, error_info()).await.accepted("fail");
    let unwatched_token = claim(store, unwatched.id).await;
    store.complete(&unwatched_token).await.accepted("complete");
    assert!(store.webhook(unwatched.id).await.expect("read").is_none());
    let notice = pending_notice(store, watched.id, "the failure queued a notice").await;
    assert_eq!(notice.status, Status::Failed);
    assert_eq!(notice.error, Some(error_info()));
    assert_eq!(notice.attempts, 0);

    // Retried and finished again: a new notice, with a new delivery id, replaces the old one.
    store.retry(watched.id, "again").await.accepted("retry");
    let token = claim(store, watched.id).await;
    store.complete(&token).await.accepted("complete");
    let second = pending_notice(store, watched.id, "the success queued a notice").await;
    assert_eq!(second.status, Status::Succeeded);
    assert_eq!(second.error, None);
    assert_ne!(second.delivery_id, notice.delivery_id);
    // Cancelling a pending job is terminal too.
    let cancelled = submit_new(store, "cancelled").await;
    watch(store, cancelled.id, "https://hooks.example.com/c").await;
    store.cancel(cancelled.id).await.accepted("cancel");
    let notice = pending_notice(store, cancelled.id, "cancelling queued a notice").await;
    assert_eq!(notice.status, Status::Cancelled);
}

/// A due notice is claimed by one notifier at a time (the claim moves its due time ahead); a
/// failed attempt waits until its retry time, a delivered notice is cleared, and every attempt
/// stays in the record.
pub(super) async fn notices_are_claimed_once_and_retried_until_delivered(store: &dyn StateStore) {
    assert_eq!(
        claim_notice_at(store, Timestamp::now()).await,
        ClaimNotice::Wait { until: None },
        "no webhook, nothing to claim"
    );
    let job = submit_new(store, "notified").await;
    watch(store, job.id, "https://hooks.example.com/n").await;
    let token = claim(store, job.id).await;
    store.complete(&token).await.accepted("complete");
    let now = Timestamp::now().plus_ms(1);
    let ClaimNotice::Claimed(webhook) = claim_notice_at(store, now).await else {
        panic!("a due notice is claimed");
    };
    assert_eq!(webhook.job_id, job.id);
    let notice = webhook.pending.clone().expect("the claimed notice");
    assert_eq!(notice.next_attempt_at, now.plus_ms(60_000));
    assert_eq!(
        claim_notice_at(store, now).await,
        ClaimNotice::Wait {
            until: Some(now.plus_ms(60_000))
        },
        "a claimed notice is not claimed again before its lease ends"
    );

    let retry_at = now.plus_ms(5_000);
    store
        .record_delivery(job.id, &delivery_of(&notice, 1, false), Some(retry_at))
        .await
        .expect("record");
    let waiting = webhook_of(store, job.id).await;
    let pending = waiting
        .pending
        .clone()
        .expect("still pending after a failure");
    assert_eq!((pending.attempts, pending.next_attempt_at), (1, retry_at));
    assert_eq!(waiting.deliveries.len(), 1);
    assert_eq!(
        claim_notice_at(store, now).await,
        ClaimNotice::Wait {
            until: Some(retry_at)
        }
    );
    let ClaimNotice::Claimed(again) = claim_notice_at(store, retry_at).await else {
        panic!("due again at its retry time");
    };
    assert_eq!(
        again.pending.as_ref().unwrap().delivery_id,
        notice.delivery_id
    );
    store
        .record_delivery(job.id, &delivery_of(&notice, 2, true), None)
        .await
        .expect("record");
    let delivered = webhook_of(store, job.id).await;
    assert!(delivered.pending.is_none(), "delivered: nothing pending");
    assert_eq!(
        delivered
            .deliveries
            .iter()
            .map(|delivery| (delivery.attempt, delivery.ok))
            .collect::<Vec<_>>(),
        vec![(1, false), (2, true)]
    );
    assert_eq!(
        claim_notice_at(store, retry_at.plus_ms(3_600_000)).await,
        ClaimNotice::Wait { until: None }
    );
}

/// A job that finished before its webhook was recorded gets a notice at once (a fast worker
/// cannot make a submission miss it); a second `set_webhooks` changes the URL without a second
/// notice; deleting the job removes its webhook and its pending notice.
pub(super) async fn a_webhook_set_on_a_finished_job_gets_a_notice_and_goes_with_its_job(
    store: &dyn StateStore,
) {
    let (job, _) = succeeded_job(store, "fast").await;
    watch(store, job.id, "https://hooks.example.com/1").await;
    let first = pending_notice(store, job.id, "a notice for the finished job").await;
    assert_eq!(first.status, Status::Succeeded);
    store
        .set_webhooks(&[
            (job.id, "https://hooks.example.com/2".to_string()),
            (JobId::new(), "https://hooks.example.com/nobody".to_string()),
        ])
        .await
        .expect("set_webhooks");
    let updated = webhook_of(store, job.id).await;
    assert_eq!(updated.url, "https://hooks.example.com/2");
    assert_eq!(
        updated.pending.map(|notice| notice.delivery_id),
        Some(first.delivery_id)
    );

    store.delete_job(job.id).await.accepted("delete");
    assert!(store.webhook(job.id).await.expect("read").is_none());
    assert_eq!(
        claim_notice_at(store, Timestamp::now()).await,
        ClaimNotice::Wait { until: None },
        "a deleted job's notice is gone with it"
    );
}
