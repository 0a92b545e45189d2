//! Completion webhooks: a signed JSON notice to a job's `callback_url` when it reaches a terminal
//! status, retried with backoff until it is delivered or `attempts_max` is spent.
//!
//! The state store queues a notice in the same transaction as the terminal transition
//! (`store::WebhookStore`), so a crash never loses one; this module sends them. The notifier
//! ([`run_notifier`], started by `orchestrator::schedule` in every process that runs jobs) claims
//! a due notice (its due time moves a lease ahead, so no other notifier sends it meanwhile),
//! sends it through the network guard's client (`steps::net`: addresses checked at connect time,
//! no proxy from the environment, no redirect followed), and records the attempt. Delivery is at
//! least once: a notifier that dies after the receiver answered sends the notice again, with the
//! same `X-Narra-Delivery` id.
//!
//! This module never decides a job's status and never writes a job: it reads jobs and writes
//! only webhook records.

use std::time::Duration;

use hmac::{KeyInit, Mac};
use tracing::Instrument;

use crate::engine::{Orchestrator, Services};
use crate::model::job::{Delivery, DeliveryId, Status, Timestamp, Webhook};
use crate::steps::net::NetworkPolicy;
use crate::store::{ClaimNotice, StoreError};
use crate::views;

/// The header naming the notice: the same on every retry of one notice.
pub const HEADER_DELIVERY: &str = "x-narra-delivery";
/// Unix seconds when the attempt was signed.
pub const HEADER_TIMESTAMP: &str = "x-narra-timestamp";
/// `sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`, keyed with `NARRA_WEBHOOK_SECRET`.
pub const HEADER_SIGNATURE: &str = "x-narra-signature";

/// The longest a callback URL may be.
pub const CALLBACK_URL_BYTES_MAX: usize = 2_048;
/// The shortest secret narra signs with: shorter ones are refused as guessable.
pub const SECRET_BYTES_MIN: usize = 16;
/// How long an idle notifier waits before it looks for due notices again (another process may
/// have queued some; this process's own jobs wake it at once).
const POLL_MAX: Duration = Duration::from_secs(2);

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// How notices are signed, timed and retried. From the environment ([`WebhookPolicy::from_env`]).
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookPolicy {
    /// `NARRA_WEBHOOK_SECRET`: without it, callback URLs are refused at submission.
    pub secret: Option<Vec<u8>>,
    /// Attempts per notice, the first included (`NARRA_WEBHOOK_ATTEMPTS_MAX`, default 8).
    pub attempts_max: u32,
    /// The delay after the first failed attempt, doubled after each (`NARRA_WEBHOOK_RETRY_DELAY_MS`,
    /// default 30 s), at most `delay_max_ms` (`NARRA_WEBHOOK_RETRY_DELAY_MAX_MS`, default 30 min):
    /// eight attempts span about an hour.
    pub delay_initial_ms: u64,
    pub delay_max_ms: u64,
    /// Each attempt's whole time, connect included (`NARRA_WEBHOOK_TIMEOUT_MS`, default 10 s).
    pub timeout_ms: u64,
    /// Which addresses callbacks may reach: its own, not the downloads' (allowing private
    /// networks for on-premises sources must not let an API client make narra POST to internal
    /// services). Public addresses only unless `NARRA_WEBHOOK_ALLOW_PRIVATE_NETWORK=1` or
    /// `NARRA_WEBHOOK_ALLOWED_HOSTS=a,b`; never through a proxy, so the address checked at
    /// connect time is the one reached.
    pub network: NetworkPolicy,
}

impl std::fmt::Debug for WebhookPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookPolicy")
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .field("attempts_max", &self.attempts_max)
            .field("delay_initial_ms", &self.delay_initial_ms)
            .field("delay_max_ms", &self.delay_max_ms)
            .field("timeout_ms", &self.timeout_ms)
            .field("network", &self.network)
            .finish()
    }
}

impl Default for WebhookPolicy {
    fn default() -> WebhookPolicy {
        WebhookPolicy {
            secret: None,
            attempts_max: 8,
            delay_initial_ms: 30_000,
            delay_max_ms: 30 * 60_000,
            timeout_ms: 10_000,
            network: NetworkPolicy {
                allow_private_network: false,
                allowed_hosts: Vec::new(),
                proxy: None,
            },
        }
    }
}

impl WebhookPolicy {
    /// The policy from `NARRA_WEBHOOK_*`; a variable that does not parse keeps the default.
    pub fn from_env() -> WebhookPolicy {
        let defaults = WebhookPolicy::default();
        let number = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|value| value.trim().parse::<u64>().ok())
                .unwrap_or(default)
        };
        WebhookPolicy {
            secret: std::env::var("NARRA_WEBHOOK_SECRET")
                .ok()
                .map(|secret| secret.trim().as_bytes().to_vec())
                .filter(|secret| !secret.is_empty()),
            attempts_max: u32::try_from(number(
                "NARRA_WEBHOOK_ATTEMPTS_MAX",
                u64::from(defaults.attempts_max),
            ))
            .unwrap_or(defaults.attempts_max)
            .clamp(1, 100),
            delay_initial_ms: number("NARRA_WEBHOOK_RETRY_DELAY_MS", defaults.delay_initial_ms),
            delay_max_ms: number("NARRA_WEBHOOK_RETRY_DELAY_MAX_MS", defaults.delay_max_ms),
            timeout_ms: number("NARRA_WEBHOOK_TIMEOUT_MS", defaults.timeout_ms).max(1),
            network: NetworkPolicy::from_env_named(
                "NARRA_WEBHOOK_ALLOW_PRIVATE_NETWORK",
                "NARRA_WEBHOOK_ALLOWED_HOSTS",
                None,
            ),
        }
    }

    /// The delay after failed attempt `attempt` (1 for the first) of the notice `delivery_id`:
    /// doubled each time up to the cap, then spread by -20 %..+20 % from the delivery id, so the
    /// notices a receiver's outage held back do not all come back in the same instant.
    pub fn retry_delay_ms(&self, delivery_id: DeliveryId, attempt: u32) -> u64 {
        let doublings = attempt.saturating_sub(1).min(32);
        let base = self
            .delay_initial_ms
            .saturating_mul(1u64 << doublings)
            .min(self.delay_max_ms);
        let mut seed = blake3::Hasher::new();
        seed.update(&delivery_id.0.to_be_bytes());
        seed.update(&attempt.to_be_bytes());
        let spread = u64::from(seed.finalize().as_bytes()[0]) * 40 / 255; // 0..=40
        base.saturating_mul(80 + spread) / 100
    }
}

/// Why a callback URL is refused at submission. `class` is stable: `invalid_callback_url`,
/// `forbidden_address` (the network guard), `webhook_secret_missing`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("callback_url: {message}")]
pub struct CallbackError {
    pub class: &'static str,
    pub message: String,
}

/// Checks a callback URL before a job is given it: an absolute http(s) URL with a host, not
/// longer than [`CALLBACK_URL_BYTES_MAX`], whose IP literal (if it is one) the network guard
/// allows, in a process that has a secret to sign with. A host name is checked again by the
/// guard's resolver at every attempt.
pub fn check_callback_url(engine: &Services, url: &str) -> Result<String, CallbackError> {
    let invalid = |message: String| CallbackError {
        class: "invalid_callback_url",
        message,
    };
    let url = url.trim();
    if url.len() > CALLBACK_URL_BYTES_MAX {
        return Err(invalid(format!(
            "longer than {CALLBACK_URL_BYTES_MAX} bytes"
        )));
    }
    let parsed = url::Url::parse(url).map_err(|error| {
        invalid(format!(
            "{} is not a URL: {error}",
            crate::model::redact::redact_url(url)
        ))
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "scheme {:?} is not allowed (http and https only)",
            parsed.scheme()
        )));
    }
    engine
        .webhooks
        .network
        .check_url(&parsed)
        .map_err(|error| CallbackError {
            class: if error.class == crate::model::ErrorClass::ForbiddenAddress {
                "forbidden_address"
            } else {
                "invalid_callback_url"
            },
            message: error.message,
        })?;
    match &engine.webhooks.secret {
        None => {
            return Err(CallbackError {
                class: "webhook_secret_missing",
                message: "this narra has no NARRA_WEBHOOK_SECRET to sign notices with; set it \
                          (the same in every process of a fleet) to accept callback URLs"
                    .to_string(),
            });
        }
        Some(secret) if secret.len() < SECRET_BYTES_MIN => {
            return Err(CallbackError {
                class: "webhook_secret_missing",
                message: format!(
                    "NARRA_WEBHOOK_SECRET is shorter than {SECRET_BYTES_MIN} bytes: too easy to \
                     guess to sign notices with"
                ),
            });
        }
        Some(_) => {}
    }
    Ok(parsed.to_string())
}

/// `sha256=<hex>`: the HMAC-SHA256, keyed with `secret`, of `"<timestamp>.<body>"`.
pub fn sign(secret: &[u8], timestamp_s: i64, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(timestamp_s.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(7 + 2 * digest.len());
    hex.push_str("sha256=");
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// Whether `signature` is [`sign`]'s for these bytes, compared in constant time: what a receiver
/// does (docs/RUNBOOK.md has the recipe).
pub fn verify(secret: &[u8], timestamp_s: i64, body: &[u8], signature: &str) -> bool {
    let expected = sign(secret, timestamp_s, body);
    subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), signature.trim().as_bytes()).into()
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Attempted {
    status_code: Option<u16>,
    error: Option<String>,
    /// No later attempt could do better (an address the guard refuses, a job that is gone).
    final_: bool,
}

/// Sends one attempt of `body` to `url`.
async fn send(
    client: &reqwest::Client,
    network: &NetworkPolicy,
    policy: &WebhookPolicy,
    url: &str,
    delivery_id: DeliveryId,
    body: &[u8],
) -> Attempted {
    let failed = |error: String, final_: bool| Attempted {
        status_code: None,
        error: Some(error),
        final_,
    };
    let Some(secret) = policy.secret.as_deref() else {
        return failed(
            "NARRA_WEBHOOK_SECRET is not set in this process: nothing to sign with".to_string(),
            false,
        );
    };
    let parsed = match url::Url::parse(url) {
        Ok(parsed) => parsed,
        Err(error) => return failed(format!("invalid_callback_url: {error}"), true),
    };
    // An IP literal never reaches the guard's resolver: check it here, as downloads do.
    if let Err(error) = network.check_url(&parsed) {
        return failed(format!("{}: {}", error.class.as_str(), error.message), true);
    }
    let timestamp_s = Timestamp::now().0.div_euclid(1000);
    let request = client
        .post(parsed)
        .timeout(Duration::from_millis(policy.timeout_ms))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(HEADER_DELIVERY, delivery_id.to_string())
        .header(HEADER_TIMESTAMP, timestamp_s.to_string())
        .header(HEADER_SIGNATURE, sign(secret, timestamp_s, body))
        .body(body.to_vec());
    match request.send().await {
        Ok(response) if response.status().is_success() => Attempted {
            status_code: Some(response.status().as_u16()),
            error: None,
            final_: false,
        },
        Ok(response) => Attempted {
            status_code: Some(response.status().as_u16()),
            error: Some(format!("the receiver answered {}", response.status())),
            final_: false,
        },
        Err(error) => match crate::steps::net::forbidden_cause(&error) {
            Some(message) => failed(format!("forbidden_address: {message}"), true),
            None if error.is_timeout() => {
                failed(format!("no answer within {} ms", policy.timeout_ms), false)
            }
            None => failed(describe(error.without_url()), false),
        },
    }
}

/// An error and its causes in one line ("error sending request: ... Connection refused").
fn describe(error: reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(&error);
    while let Some(inner) = cause {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        cause = inner.source();
    }
    crate::model::redact::redact_url(&text)
}

/// Delivers one claimed notice and records the attempt: cleared when delivered or given up,
/// otherwise due again after [`WebhookPolicy::retry_delay_ms`]. Logged in the job's span, so the
/// attempts are in `narra logs ID` too.
pub async fn deliver(engine: &Orchestrator, webhook: &Webhook) -> Result<Delivery, StoreError> {
    let span = tracing::info_span!("webhook", job_id = %webhook.job_id);
    deliver_in_span(engine, webhook).instrument(span).await
}

async fn deliver_in_span(engine: &Orchestrator, webhook: &Webhook) -> Result<Delivery, StoreError> {
    let notice = webhook
        .pending
        .clone()
        .expect("a claimed webhook has a pending notice");
    let attempt = notice.attempts.saturating_add(1);
    let policy = &engine.webhooks;
    let attempted = match engine.store.job(webhook.job_id).await? {
        None => Attempted {
            status_code: None,
            error: Some("the job no longer exists".to_string()),
            final_: true,
        },
        Some(job) => {
            // Only a succeeded job's notice lists its artifacts.
            let checkpoints = if notice.status == Status::Succeeded {
                engine.store.checkpoints(job.id).await?
            } else {
                Vec::new()
            };
            let body = views::webhook::notice_body(&job, &notice, &checkpoints);
            let body = views::to_json(&body).to_string();
            match engine.webhook_client() {
                Ok(client) => {
                    send(
                        &client,
                        &engine.webhooks.network,
                        policy,
                        &webhook.url,
                        notice.delivery_id,
                        body.as_bytes(),
                    )
                    .await
                }
                Err(error) => Attempted {
                    status_code: None,
                    error: Some(error.message),
                    final_: false,
                },
            }
        }
    };
    let ok = attempted.error.is_none();
    let gave_up = !ok && (attempted.final_ || attempt >= policy.attempts_max);
    let delivery = Delivery {
        delivery_id: notice.delivery_id,
        status: notice.status,
        attempt,
        at: Timestamp::now(),
        status_code: attempted.status_code,
        error: attempted.error,
        ok,
        gave_up,
    };
    let retry_at = (!ok && !gave_up)
        .then(|| Timestamp::now().plus_ms(policy.retry_delay_ms(notice.delivery_id, attempt)));
    let url = crate::model::redact::redact_url(&webhook.url);
    match (&delivery.error, retry_at) {
        (None, _) => {
            tracing::info!(delivery = %notice.delivery_id, attempt, %url, "webhook notice delivered");
        }
        (Some(error), Some(retry_at)) => {
            tracing::warn!(delivery = %notice.delivery_id, attempt, %url, retry_at = %retry_at.to_rfc3339(), "webhook notice not delivered: {error}; retried later");
        }
        (Some(error), None) => {
            tracing::error!(delivery = %notice.delivery_id, attempt, %url, "webhook notice given up: {error}");
        }
    }
    engine
        .store
        .record_delivery(webhook.job_id, &delivery, retry_at)
        .await?;
    Ok(delivery)
}

/// Sends the notices due now, one after another, until none is due or `stop_now` says so
/// (checked before each claim); the time the next pending one is due, if any. What a command that
/// runs jobs does once more before it exits (`orchestrator::schedule`, with a time budget: a
/// receiver that never answers must not hold a finished command for hours).
pub async fn deliver_due(
    engine: &Orchestrator,
    stop_now: impl Fn() -> bool,
) -> Result<Option<Timestamp>, StoreError> {
    let lease_ms = engine
        .webhooks
        .timeout_ms
        .saturating_mul(2)
        .saturating_add(5_000);
    loop {
        if stop_now() {
            return Ok(None);
        }
        let now = Timestamp::now();
        match engine.store.claim_notice(now, lease_ms).await? {
            ClaimNotice::Claimed(webhook) => {
                deliver(engine, &webhook).await?;
            }
            // Taken by another notifier in the same instant: look again.
            ClaimNotice::Wait { until: Some(until) } if until <= now => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                return Ok(Some(until));
            }
            ClaimNotice::Wait { until } => return Ok(until),
        }
    }
}

/// The notifier: sends due notices until `stop` turns true (checked before each delivery) or the
/// task is dropped, waking when a job of this process finishes (`Engine::notifier_wake`), when
/// the next notice is due, or every [`POLL_MAX`]. A store failure is logged and tried again after
/// the poll interval: notices wait in the store.
pub async fn run_notifier(engine: Orchestrator, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        let wait = match deliver_due(&engine, || *stop.borrow()).await {
            Ok(Some(until)) => {
                let ms = u64::try_from(until.0.saturating_sub(Timestamp::now().0)).unwrap_or(0);
                Duration::from_millis(ms).clamp(Duration::from_millis(10), POLL_MAX)
            }
            Ok(None) => POLL_MAX,
            Err(error) => {
                tracing::error!(%error, "the webhook notifier could not read or write the state store");
                POLL_MAX
            }
        };
        tokio::select! {
            () = engine.notifier_wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
            changed = stop.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Guards the signature format receivers verify: HMAC-SHA256 of "<timestamp>.<body>", hex,
    // checked against RFC 4231's test case 2 for the primitive and against a changed timestamp,
    // body and key for the binding.
    #[test]
    fn signatures_bind_the_secret_the_timestamp_and_the_body() {
        // RFC 4231, test case 2: key "Jefe", data "what do ya want for nothing?".
        let mut mac = HmacSha256::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        let digest: Vec<String> = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        assert_eq!(
            digest.concat(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );

        let secret = b"0123456789abcdef-secret";
        let body = br#"{"status":"succeeded"}"#;
        let signature = sign(secret, 1_700_000_000, body);
        assert!(signature.starts_with("sha256="), "{signature}");
        assert_eq!(signature.len(), 7 + 64);
        let mut direct = HmacSha256::new_from_slice(secret).unwrap();
        direct.update(b"1700000000.");
        direct.update(body);
        assert!(
            direct
                .verify_slice(&hex_bytes(signature.trim_start_matches("sha256=")))
                .is_ok()
        );
        assert!(verify(secret, 1_700_000_000, body, &signature));
        assert!(!verify(secret, 1_700_000_001, body, &signature));
        assert!(!verify(
            secret,
            1_700_000_000,
            br#"{"status":"failed"}"#,
            &signature
        ));
        assert!(!verify(
            b"another-secret-of-16",
            1_700_000_000,
            body,
            &signature
        ));
    }

    fn hex_bytes(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|index| u8::from_str_radix(&hex[index..index + 2], 16).unwrap())
            .collect()
    }

    // Guards the retry schedule: doubling from the initial delay, capped, spread by at most 20 %
    // either way, the same for the same notice and attempt; eight attempts span about an hour.
    #[test]
    fn retry_delays_double_up_to_the_cap_with_bounded_jitter() {
        let policy = WebhookPolicy::default();
        let id = DeliveryId::new();
        let mut total_ms = 0;
        for attempt in 1..policy.attempts_max {
            let base = (30_000u64 << (attempt - 1)).min(30 * 60_000);
            let delay = policy.retry_delay_ms(id, attempt);
            assert!(
                (base * 80 / 100..=base * 120 / 100).contains(&delay),
                "attempt {attempt}: {delay} ms against {base} ms"
            );
            assert_eq!(delay, policy.retry_delay_ms(id, attempt), "stable");
            total_ms += delay;
        }
        assert!(
            (45 * 60_000..=75 * 60_000).contains(&total_ms),
            "{total_ms} ms"
        );
        let spread: std::collections::BTreeSet<u64> = (0..32)
            .map(|_| policy.retry_delay_ms(DeliveryId::new(), 1))
            .collect();
        assert!(spread.len() > 1, "notices are spread: {spread:?}");
    }

    #[test]
    fn the_policy_never_shows_its_secret() {
        let policy = WebhookPolicy {
            secret: Some(b"do-not-print-this-secret".to_vec()),
            ..WebhookPolicy::default()
        };
        let shown = format!("{policy:?}");
        assert!(!shown.contains("do-not-print"), "{shown}");
        assert!(shown.contains("<set>"), "{shown}");
    }
}
