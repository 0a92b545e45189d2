//! Completion webhooks as people and programs see them: the notice a receiver gets, and a job's
//! webhook with its deliveries as `show` displays it. URLs are redacted wherever they are shown.

use serde::Serialize;

use super::job::{Artifact, ErrorView, artifacts, redact_url_in_key};
use super::{Rfc3339, Text};
use crate::model::job::{Checkpoint, DeliveryId, Job, JobId, Notice, Webhook};
use crate::model::redact::redact_url;

/// The JSON a receiver gets: the job as it ended (key and source redacted as everywhere), its
/// error when it failed, and its artifacts when it succeeded.
#[derive(Debug, Serialize)]
pub struct NoticeBody<'a> {
    /// Always `job.finished`.
    pub event: &'static str,
    /// The same on every retry of one notice (`X-Narra-Delivery`): a receiver drops repeats.
    pub delivery_id: Text<DeliveryId>,
    /// The id of the job that ended.
    pub job_id: Text<JobId>,
    /// The job's idempotency key, its URL part redacted.
    pub key: String,
    /// The job's source, its secrets redacted.
    pub source: String,
    /// The name of the workflow the job ran.
    pub workflow: &'a str,
    /// `succeeded`, `failed` or `cancelled`.
    pub status: &'static str,
    /// The job's error at that transition (a failed job's class and message); `null` when it had
    /// none.
    pub error: Option<ErrorView<'a>>,
    /// When the job reached its terminal status.
    pub finished_at: Rfc3339,
    /// Runs the job took, as its summary counts them.
    pub attempts: u32,
    /// What the store step wrote, for a job that succeeded.
    pub artifacts: Vec<Artifact<'a>>,
}

/// The notice of `job`'s end; `checkpoints` are the job's (the artifacts its store step recorded),
/// or none for a job that did not succeed.
pub fn notice_body<'a>(
    job: &'a Job,
    notice: &'a Notice,
    checkpoints: &'a [Checkpoint],
) -> NoticeBody<'a> {
    NoticeBody {
        event: "job.finished",
        delivery_id: Text(notice.delivery_id),
        job_id: Text(job.id),
        key: redact_url_in_key(&job.key),
        source: redact_url(&job.source),
        workflow: &job.workflow,
        status: notice.status.as_str(),
        error: notice.error.as_ref().map(ErrorView::of),
        finished_at: Rfc3339(notice.finished_at),
        attempts: job.attempts,
        artifacts: artifacts(checkpoints),
    }
}

/// `{url, pending: {delivery_id, status, attempts, next_attempt_at} | null, deliveries:
/// [{delivery_id, status, attempt, at, status_code, error, ok, gave_up}]}` (the URL redacted):
/// `show --json`'s and `GET /jobs/{id}`'s `webhook`.
#[derive(Debug, Serialize)]
pub struct WebhookView<'a> {
    /// The callback URL, its secrets redacted.
    pub url: String,
    /// The notice waiting to be delivered or retried; `null` when none waits.
    pub pending: Option<PendingView>,
    /// Every delivery attempt, oldest first; only the last 50 are kept.
    pub deliveries: Vec<DeliveryView<'a>>,
}

/// The notice waiting to be delivered or retried.
#[derive(Debug, Serialize)]
pub struct PendingView {
    /// The same on every retry of this notice (`X-Narra-Delivery`).
    pub delivery_id: Text<DeliveryId>,
    /// The terminal status the notice reports: `succeeded`, `failed` or `cancelled`.
    pub status: &'static str,
    /// Attempts made so far.
    pub attempts: u32,
    /// Not sent before this: a retry's backoff, or a notifier's claim while it sends.
    pub next_attempt_at: Rfc3339,
}

/// One attempt to deliver a notice.
#[derive(Debug, Serialize)]
pub struct DeliveryView<'a> {
    /// The notice this attempt carried (`X-Narra-Delivery`).
    pub delivery_id: Text<DeliveryId>,
    /// The status the notice was for.
    pub status: &'static str,
    /// 1 for a notice's first attempt.
    pub attempt: u32,
    /// When the attempt was made.
    pub at: Rfc3339,
    /// The receiver's HTTP status, when it answered.
    pub status_code: Option<u16>,
    /// Why the attempt failed (no answer, a non-2xx status, a refused address); `null` when it was
    /// delivered.
    pub error: Option<&'a str>,
    /// A 2xx answer: the notice is delivered.
    pub ok: bool,
    /// The last attempt of a notice never delivered.
    pub gave_up: bool,
}

pub fn webhook(webhook: &Webhook) -> WebhookView<'_> {
    WebhookView {
        url: redact_url(&webhook.url),
        pending: webhook.pending.as_ref().map(|notice| PendingView {
            delivery_id: Text(notice.delivery_id),
            status: notice.status.as_str(),
            attempts: notice.attempts,
            next_attempt_at: Rfc3339(notice.next_attempt_at),
        }),
        deliveries: webhook
            .deliveries
            .iter()
            .map(|delivery| DeliveryView {
                delivery_id: Text(delivery.delivery_id),
                status: delivery.status.as_str(),
                attempt: delivery.attempt,
                at: Rfc3339(delivery.at),
                status_code: delivery.status_code,
                error: delivery.error.as_deref(),
                ok: delivery.ok,
                gave_up: delivery.gave_up,
            })
            .collect(),
    }
}

/// The webhook lines of `show`: the URL, the notice waiting, then each attempt.
pub fn webhook_text(webhook: &Webhook) -> Vec<String> {
    let mut lines = vec![format!("webhook          {}", redact_url(&webhook.url))];
    if let Some(notice) = &webhook.pending {
        lines.push(format!(
            "  pending        {} notice {}, {} attempts so far, next at {}",
            notice.status,
            notice.delivery_id,
            notice.attempts,
            notice.next_attempt_at.to_rfc3339()
        ));
    }
    for delivery in &webhook.deliveries {
        let outcome = match (&delivery.error, delivery.status_code) {
            (None, Some(code)) => format!("delivered ({code})"),
            (None, None) => "delivered".to_string(),
            (Some(error), _) if delivery.gave_up => format!("failed, gave up: {error}"),
            (Some(error), _) => format!("failed: {error}"),
        };
        lines.push(format!(
            "  delivery       {} {} notice {} attempt {}: {outcome}",
            delivery.at.to_rfc3339(),
            delivery.status,
            delivery.delivery_id,
            delivery.attempt
        ));
    }
    lines
}
