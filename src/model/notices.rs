//! Completion webhooks' notices, decided once for every store: which transition queues a notice,
//! what a job's first webhook queues, what claiming a notice and recording a delivery attempt do
//! to the record, and when a record is due.
//!
//! Pure: a store reads the job's webhook record in the transaction that changes it, applies these,
//! and writes the record (with its due-time index). Sending is `webhook::`'s; deciding that a job
//! ended is the machine's.

use crate::model::job::{Delivery, DeliveryId, Job, Notice, Status, Timestamp, Webhook};

/// The most delivery attempts a webhook record keeps: the oldest go first.
pub const DELIVERIES_MAX: usize = 50;

/// Whether a transition from `status_before` (`None`: no job before) to `job`'s status queues the
/// job's notice: every move into a terminal status, and nothing else.
pub fn queues_notice(status_before: Option<Status>, job: &Job) -> bool {
    status_before.is_some_and(|before| before != job.status) && job.status.is_terminal()
}

/// What a terminal transition does to the job's webhook, in the transition's transaction: a new
/// notice of the job's status, due now. A notice of an earlier transition still pending is
/// replaced (its delivery id is not reused): the receiver learns the job's latest end.
pub fn queue_notice(webhook: &mut Webhook, job: &Job, now: Timestamp) {
    debug_assert!(
        job.status.is_terminal(),
        "a notice is for a terminal status"
    );
    webhook.pending = Some(Notice {
        delivery_id: DeliveryId::new(),
        status: job.status,
        error: job.error.clone().filter(|_| job.status == Status::Failed),
        finished_at: job.updated_at,
        attempts: 0,
        next_attempt_at: now,
    });
}

/// A new webhook record for a job; with a notice when the job is already finished.
pub fn new_webhook(job: &Job, url: &str, now: Timestamp) -> Webhook {
    let mut webhook = Webhook {
        job_id: job.id,
        url: url.to_string(),
        pending: None,
        deliveries: Vec::new(),
    };
    if job.status.is_terminal() {
        queue_notice(&mut webhook, job, now);
    }
    webhook
}

/// `set_webhooks` for one job: the record it had, with the new URL, or a new record (with a
/// notice when the job is already finished, so a job that ended before its webhook was recorded
/// is not missed).
pub fn set_url(before: Option<Webhook>, job: &Job, url: &str, now: Timestamp) -> Webhook {
    match before {
        Some(before) => Webhook {
            url: url.to_string(),
            ..before
        },
        None => new_webhook(job, url, now),
    }
}

/// Claims the record's pending notice for a notifier: not sent by another before `lease_ms` from
/// `now`, when this one may have died sending it. `false` when no notice is pending.
pub fn claim_notice(webhook: &mut Webhook, now: Timestamp, lease_ms: u64) -> bool {
    match webhook.pending.as_mut() {
        Some(notice) => {
            notice.next_attempt_at = now.plus_ms(lease_ms);
            true
        }
        None => false,
    }
}

/// Records one attempt in `webhook`: appended to its deliveries (at most [`DELIVERIES_MAX`]).
/// When it is the pending notice's, a delivered or given-up notice (`retry_at` `None`) is
/// cleared, and any other waits until `retry_at`. An attempt of a notice replaced meanwhile
/// changes only the history.
pub fn apply_delivery(webhook: &mut Webhook, delivery: &Delivery, retry_at: Option<Timestamp>) {
    webhook.deliveries.push(delivery.clone());
    if webhook.deliveries.len() > DELIVERIES_MAX {
        let excess = webhook.deliveries.len() - DELIVERIES_MAX;
        webhook.deliveries.drain(..excess);
    }
    let Some(notice) = webhook.pending.as_mut() else {
        return;
    };
    if notice.delivery_id != delivery.delivery_id {
        return;
    }
    match retry_at {
        Some(retry_at) if !delivery.ok => {
            notice.attempts = delivery.attempt;
            notice.next_attempt_at = retry_at;
        }
        _ => webhook.pending = None,
    }
}

/// When the record is due to be sent: its pending notice's next attempt; `None` with none
/// pending. A store's due-time index holds exactly this for every record.
pub fn due_at(webhook: &Webhook) -> Option<Timestamp> {
    webhook
        .pending
        .as_ref()
        .map(|notice| notice.next_attempt_at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::job::{ErrorInfo, JobId};
    use crate::model::machine;

    fn job(status: Status) -> Job {
        let mut job = machine::new_job(
            JobId(5),
            "key".to_string(),
            "https://cdn.example.com/a.mp4".to_string(),
            "ingest".to_string(),
            0,
            Timestamp(1),
        )
        .job;
        job.status = status;
        job.updated_at = Timestamp(40);
        job.error = Some(ErrorInfo {
            class: "corrupt_media".to_string(),
            message: "bad".to_string(),
        });
        job
    }

    fn delivery(webhook: &Webhook, attempt: u32, ok: bool) -> Delivery {
        let notice = webhook.pending.as_ref().expect("a pending notice");
        Delivery {
            delivery_id: notice.delivery_id,
            status: notice.status,
            attempt,
            at: Timestamp(50),
            status_code: Some(if ok { 204 } else { 500 }),
            error: None,
            ok,
            gave_up: false,
        }
    }

    // Guards which transitions queue a notice: into a terminal status only, and only a move.
    #[test]
    fn only_a_move_into_a_terminal_status_queues_a_notice() {
        assert!(queues_notice(Some(Status::Running), &job(Status::Failed)));
        assert!(queues_notice(
            Some(Status::Pending),
            &job(Status::Cancelled)
        ));
        assert!(!queues_notice(Some(Status::Failed), &job(Status::Failed)));
        assert!(!queues_notice(Some(Status::Running), &job(Status::Pending)));
        assert!(!queues_notice(None, &job(Status::Succeeded)));
    }

    // Guards a job's first webhook: queued at once for a finished job (with a failed job's
    // error), none for a running one; a second URL keeps the record's notice and history.
    #[test]
    fn a_first_webhook_of_a_finished_job_queues_its_notice() {
        let failed = job(Status::Failed);
        let webhook = set_url(None, &failed, "https://hooks.example.com/a", Timestamp(60));
        let notice = webhook.pending.clone().expect("queued");
        assert_eq!(
            (notice.status, notice.finished_at, notice.next_attempt_at),
            (Status::Failed, Timestamp(40), Timestamp(60))
        );
        assert_eq!(notice.error, failed.error);
        assert_eq!(due_at(&webhook), Some(Timestamp(60)));
        let renamed = set_url(Some(webhook.clone()), &failed, "https://b", Timestamp(99));
        assert_eq!(
            (renamed.url.as_str(), renamed.pending),
            ("https://b", webhook.pending)
        );

        let cancelled = new_webhook(&job(Status::Cancelled), "https://c", Timestamp(60));
        assert_eq!(cancelled.pending.expect("queued").error, None);
        assert_eq!(
            new_webhook(&job(Status::Running), "https://d", Timestamp(60)).pending,
            None
        );
    }

    // Guards a notice's life: a claim moves its due time, a failed attempt waits for its retry, a
    // delivered one clears it, an attempt of a replaced notice only adds to the history, and the
    // history keeps the newest DELIVERIES_MAX attempts.
    #[test]
    fn attempts_move_clear_or_only_record_the_notice() {
        let mut webhook = new_webhook(&job(Status::Succeeded), "https://a", Timestamp(60));
        assert!(claim_notice(&mut webhook, Timestamp(70), 1_000));
        assert_eq!(due_at(&webhook), Some(Timestamp(1_070)));

        let failed = delivery(&webhook, 1, false);
        apply_delivery(&mut webhook, &failed, Some(Timestamp(5_000)));
        assert_eq!(due_at(&webhook), Some(Timestamp(5_000)));
        assert_eq!(
            webhook.pending.as_ref().map(|notice| notice.attempts),
            Some(1)
        );

        let mut replaced = delivery(&webhook, 2, true);
        replaced.delivery_id = DeliveryId(1);
        apply_delivery(&mut webhook, &replaced, None);
        assert_eq!(due_at(&webhook), Some(Timestamp(5_000)));

        let delivered = delivery(&webhook, 2, true);
        apply_delivery(&mut webhook, &delivered, None);
        assert_eq!(due_at(&webhook), None);
        assert!(!claim_notice(&mut webhook, Timestamp(80), 1_000));
        assert_eq!(webhook.deliveries.len(), 3);

        for attempt in 0..DELIVERIES_MAX {
            let mut old = delivered.clone();
            old.attempt = u32::try_from(attempt).expect("small") + 10;
            apply_delivery(&mut webhook, &old, None);
        }
        assert_eq!(webhook.deliveries.len(), DELIVERIES_MAX);
        assert_eq!(webhook.deliveries[0].attempt, 10);
    }
}
