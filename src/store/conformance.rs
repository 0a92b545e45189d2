//! The state-store conformance suite: what every `StateStore` implementation must do, written once
//! against the traits so that the sled store and any later store (Postgres, say) run the same checks.
//!
//! This is test code that lives in the library so that every implementation's tests can call it:
//! each check panics with a message on the first broken promise, and nothing outside tests calls it.
//! Each check takes a fresh, empty store. Run them all with [`run_all`], or one at a time.
//!
//! The suite never sleeps except between submissions whose order it checks: job ids are ULIDs,
//! which sort by millisecond, and two ids made in the same millisecond sort at random.

use std::future::Future;
use std::time::Duration;

use super::{
    BatchOptions, ClaimNext, ClaimNotice, ClaimRequest, JobFilter, LOG_LINE_BYTES_MAX,
    LOG_LINES_MAX, NewIncident, Resubmit, SUBMIT_BATCH_MAX, StateStore, StepEvent, SubmitOutcome,
    SubmitRequest,
};
use crate::model::job::{
    ChangeToken, Checkpoint, Delivery, ErrorInfo, Event, EventKind, Hash, Job, JobId, JobProgress,
    LeaseToken, Location, LogLine, MediaMetadata, Phase, Status, StepOutput, StreamInfo, Timestamp,
    WorkerId,
};
use crate::model::machine::Rejected;
use crate::model::scheduling::{BreakerPolicy, HostOutcome, RetryPolicy, SchedulingPolicy};

/// A lease long enough that no check sees it expire.
const LEASE_TTL_MS: u64 = 60_000;

/// Runs every check, each on a fresh store from `make_store`.
pub async fn run_all<S, F, Fut>(make_store: F)
where
    S: StateStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    submit_is_idempotent(&make_store().await).await;
    submit_retries_failed_and_cancelled_jobs(&make_store().await).await;
    submit_reingests_only_when_asked(&make_store().await).await;
    claim_starts_a_lease_with_a_growing_token(&make_store().await).await;
    stale_tokens_are_fenced(&make_store().await).await;
    leaving_running_clears_phase_and_lease(&make_store().await).await;
    event_history_is_complete_and_in_order(&make_store().await).await;
    stale_checkpoint_writes_nothing(&make_store().await).await;
    checkpoints_and_metadata_read_back_equal(&make_store().await).await;
    step_events_need_the_current_lease(&make_store().await).await;
    cancel_pending_and_running(&make_store().await).await;
    retry_and_reingest(&make_store().await).await;
    reclaim_returns_running_to_pending(&make_store().await).await;
    unknown_jobs_are_not_found(&make_store().await).await;
    jobs_lists_newest_first_and_filters_by_status(&make_store().await).await;
    claim_next_picks_the_oldest_pending(&make_store().await).await;
    logs_are_ordered_and_bounded(&make_store().await).await;
    progress_needs_the_current_lease(&make_store().await).await;
    reprobe_replaces_the_record_of_a_finished_job_only(&make_store().await).await;
    blob_refs_follow_the_store_checkpoint(&make_store().await).await;
    reset_returns_finished_jobs_to_pending(&make_store().await).await;
    delete_removes_every_record_of_a_job(&make_store().await).await;
    incidents_are_appended_in_order(&make_store().await).await;
    submit_batch_is_submit_in_bulk(&make_store().await).await;
    claims_go_by_priority_then_age(&make_store().await).await;
    retry_later_waits_and_hold_gives_the_attempt_back(&make_store().await).await;
    host_limits_and_breakers_gate_claims(&make_store().await).await;
    orphans_that_die_at_the_same_point_are_quarantined(&make_store().await).await;
    deaths_are_charged_only_to_jobs_that_ran_alone(&make_store().await).await;
    a_takeover_is_charged_only_if_its_holder_stays_silent(&make_store().await).await;
    events_are_bounded_and_folded_into_a_summary(&make_store().await).await;
    retry_from_discards_the_step_and_those_after_it(&make_store().await).await;
    prune_removes_a_finished_job_but_keeps_its_blob_references(&make_store().await).await;
    export_then_import_reproduces_every_record(&make_store().await, &make_store().await).await;
    terminal_transitions_queue_one_webhook_notice_each(&make_store().await).await;
    notices_are_claimed_once_and_retried_until_delivered(&make_store().await).await;
    a_webhook_set_on_a_finished_job_gets_a_notice_and_goes_with_its_job(&make_store().await).await;
}

/// Higher priority first, then oldest first; `only` limits the claim to some jobs.
pub async fn claims_go_by_priority_then_age(store: &dyn StateStore) {
    let mut ids = Vec::new();
    for (key, priority) in [
        ("low", 0),
        ("high-old", 10),
        ("high-new", 10),
        ("negative", -3),
    ] {
        let mut request = request(key);
        request.priority = priority;
        ids.push(store.submit(&request).await.expect("submit").job.id);
        next_millisecond().await;
    }
    let only: std::collections::BTreeSet<JobId> = [ids[0], ids[3]].into_iter().collect();
    let (job, _) = claim_next_with(store, &worker(1), &open_policy(), Some(&only))
        .await
        .expect("one of the two");
    assert_eq!(job.id, ids[0], "only the jobs asked for are claimed");
    let mut order = Vec::new();
    while let Some((job, _)) = claim_next_as(store, &worker(1)).await {
        order.push(job.id);
    }
    assert_eq!(order, vec![ids[1], ids[2], ids[3]]);
    let listed = store.job(ids[1]).await.expect("read").expect("exists");
    assert_eq!(listed.priority, 10);
}

/// An automatic retry is pending with its error and is not claimed before its time; a held job
/// gets its attempt back.
pub async fn retry_later_waits_and_hold_gives_the_attempt_back(store: &dyn StateStore) {
    let delayed = submit_new(store, "delayed").await.id;
    let (_, token) = claim_next_as(store, &worker(1)).await.expect("claimed");
    let not_before = Timestamp::now().plus_ms(3_600_000);
    let error = ErrorInfo {
        class: "server_error".to_string(),
        message: "HTTP 503".to_string(),
    };
    let job = store
        .retry_later(&token, error.clone(), not_before)
        .await
        .expect("retry_later")
        .expect("the lease holder may");
    assert_eq!(job.status, Status::Pending);
    assert_eq!(job.not_before, Some(not_before));
    assert_eq!(job.error, Some(error));
    assert_eq!(job.attempts, 1);
    let request = ClaimRequest {
        worker_id: &worker(1),
        lease_ttl_ms: LEASE_TTL_MS,
        policy: &open_policy(),
        only: None,
    };
    assert_eq!(
        store.claim_next(&request).await.expect("claim_next"),
        ClaimNext::Wait {
            until: Some(not_before)
        }
    );
    let stale = store
        .retry_later(&token, job.error.clone().expect("error"), not_before)
        .await
        .expect("retry_later");
    assert!(matches!(stale, Err(Rejected::Fenced { .. })), "{stale:?}");
    // An operator's retry runs it now.
    store
        .cancel(delayed)
        .await
        .expect("cancel")
        .expect("pending is cancellable");
    let retried = store
        .retry(delayed, "operator")
        .await
        .expect("retry")
        .expect("cancelled is retryable");
    assert_eq!(retried.not_before, None);

    let (_, token) = claim_next_as(store, &worker(2)).await.expect("claimed now");
    let held = store
        .hold(&token, "held: breaker open", None)
        .await
        .expect("hold")
        .expect("the lease holder may");
    assert_eq!(held.status, Status::Pending);
    assert_eq!(held.attempts, 1, "the held run's attempt is given back");
    assert!(held.lease.is_none());
}

/// A host at its concurrency limit or behind an open breaker starts no job; other hosts do; the
/// breaker's state reads back through `hosts`.
pub async fn host_limits_and_breakers_gate_claims(store: &dyn StateStore) {
    let mut policy = open_policy();
    policy.host_running_max = 1;
    let mut on_a = Vec::new();
    for key in ["a1", "a2", "a3"] {
        let mut request = request(key);
        request.source = format!("https://a.example:8443/{key}.mp4");
        on_a.push(store.submit(&request).await.expect("submit").job.id);
        next_millisecond().await;
    }
    let on_b = submit_new(store, "b1").await.id;
    let (first, first_token) = claim_next_with(store, &worker(1), &policy, None)
        .await
        .expect("claimed");
    assert_eq!(first.id, on_a[0]);
    let (second, _) = claim_next_with(store, &worker(1), &policy, None)
        .await
        .expect("claimed");
    assert_eq!(second.id, on_b, "host a is at its limit; host b is not");
    let request = ClaimRequest {
        worker_id: &worker(1),
        lease_ttl_ms: LEASE_TTL_MS,
        policy: &policy,
        only: None,
    };
    assert_eq!(
        store.claim_next(&request).await.expect("claim_next"),
        ClaimNext::Wait { until: None },
        "pending jobs wait for a running one to end"
    );

    let refused = HostOutcome::Blocked {
        class: "download_blocked".to_string(),
    };
    let host = "a.example:8443";
    let verdict = store
        .record_host_outcome(host, on_a[0], &refused, &policy)
        .await
        .expect("record");
    assert!(!verdict.opened && !verdict.hold);
    store
        .fail(
            &first_token,
            ErrorInfo {
                class: "download_blocked".to_string(),
                message: "HTTP 403".to_string(),
            },
        )
        .await
        .expect("fail")
        .expect("the lease holder may");
    let verdict = store
        .record_host_outcome(host, on_a[0], &refused, &policy)
        .await
        .expect("record");
    assert!(verdict.opened, "the second refusal in a row opens it");
    match store.claim_next(&request).await.expect("claim_next") {
        ClaimNext::Wait { until: Some(until) } => assert!(until > Timestamp::now()),
        other => panic!("host a's jobs are held while its breaker is open: {other:?}"),
    }
    let hosts = store.hosts().await.expect("hosts");
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].host, host);
    assert_eq!(hosts[0].opened_total, 1);
    assert!(matches!(
        hosts[0].breaker,
        crate::model::job::Breaker::Open { .. }
    ));
    let untouched = store.job(on_a[1]).await.expect("read").expect("exists");
    assert_eq!(untouched.attempts, 0, "held jobs spend no attempt");
}

/// A reclaimed orphan once its death was charged: a shared store's takeover is provisional
/// (`model::attribution`), settled here as if two lease lengths had passed without a word from
/// its holder (a lease length of 0); a store held alone charges at once and settles nothing.
async fn reclaimed_and_settled(store: &dyn StateStore, id: JobId) -> Job {
    store
        .reclaim_orphan(id, "died")
        .await
        .expect("reclaim")
        .expect("running is reclaimable");
    store.settle_takeovers(0).await.expect("settle");
    store.job(id).await.expect("read").expect("exists")
}

/// The third death in a row at the same point fails the job as `crash_loop`; progress in between
/// starts the count again.
pub async fn orphans_that_die_at_the_same_point_are_quarantined(store: &dyn StateStore) {
    let moving = submit_new(store, "moving").await.id;
    for bytes_done in [10, 20, 30, 40] {
        let (_, token) = claim_next_as(store, &worker(1)).await.expect("claimed");
        store
            .set_progress(
                &token,
                &crate::model::job::JobProgress {
                    bytes_done,
                    bytes_total: None,
                    rate_bytes_per_s: 0,
                    updated_at: Timestamp::now(),
                },
            )
            .await
            .expect("progress")
            .expect("the lease holder may");
        let job = reclaimed_and_settled(store, moving).await;
        assert_eq!(job.status, Status::Pending, "progress was made each time");
        assert_eq!(job.crashes.expect("recorded").count, 1);
    }
    store
        .cancel(moving)
        .await
        .expect("cancel")
        .expect("pending");

    let stuck = submit_new(store, "stuck").await.id;
    for death in 1..=3 {
        let (_, token) = claim_next_as(store, &worker(1)).await.expect("claimed");
        store
            .set_phase(&token, Phase::Processing)
            .await
            .expect("phase")
            .expect("the lease holder may");
        let job = reclaimed_and_settled(store, stuck).await;
        if death < 3 {
            assert_eq!(job.status, Status::Pending);
            assert_eq!(job.crashes.expect("recorded").count, death);
        } else {
            assert_eq!(job.status, Status::Failed);
            assert_eq!(job.error.expect("error").class, "crash_loop");
            assert_eq!(job.crashes, None);
        }
    }
}

/// Attribution (`model::attribution`) through the store: a death of a process holding two jobs
/// charges neither and makes both suspects; a suspect is claimed only by a process holding
/// nothing, and nothing is claimed beside it; its next checkpoint clears the mark; a death of a
/// process holding one job is charged to it.
pub async fn deaths_are_charged_only_to_jobs_that_ran_alone(store: &dyn StateStore) {
    let first = submit_new(store, "first").await.id;
    next_millisecond().await;
    let second = submit_new(store, "second").await.id;
    let crowded = worker(1);
    let (alone, _) = claim_next_as(store, &crowded).await.expect("claimed");
    assert_eq!(alone.id, first);
    assert!(
        alone.attribution.alone,
        "claimed by a process holding nothing"
    );
    claim_next_as(store, &crowded)
        .await
        .expect("claimed beside it");
    let held = store.job(first).await.expect("read").expect("exists");
    assert!(
        !held.attribution.alone,
        "a claim beside it ends its run alone"
    );
    for id in [first, second] {
        let job = reclaimed_and_settled(store, id).await;
        assert_eq!(job.status, Status::Pending);
        assert_eq!(
            job.crashes, None,
            "a death beside another job is charged to neither"
        );
        assert!(job.attribution.suspect, "both are suspects");
        assert_eq!(job.attribution.takeover, None);
    }

    // A suspect first in line waits for a process that holds nothing.
    let busy = worker(2);
    let other = submit_new(store, "other").await.id;
    let (busy_job, busy_token) = store
        .claim(other, &busy, LEASE_TTL_MS)
        .await
        .expect("claim")
        .expect("claimable");
    assert!(busy_job.attribution.alone);
    assert!(
        claim_next_as(store, &busy).await.is_none(),
        "a suspect is not claimed beside another job"
    );
    store
        .complete(&busy_token)
        .await
        .expect("complete")
        .expect("holder");

    let lone = worker(3);
    let (suspect, token) = claim_next_as(store, &lone).await.expect("claimed alone");
    assert_eq!(suspect.id, first);
    assert!(suspect.attribution.alone && suspect.attribution.suspect);
    assert!(
        claim_next_as(store, &lone).await.is_none(),
        "nothing is claimed beside a running suspect"
    );
    store
        .record_checkpoint(&token, &checkpoint("download", 1), None)
        .await
        .expect("checkpoint")
        .expect("the lease holder may");
    let passed = store.job(first).await.expect("read").expect("exists");
    assert!(
        !passed.attribution.suspect,
        "its checkpoint clears the mark"
    );
    assert!(passed.attribution.alone, "it still runs alone");
    // The other suspect, first in line now, waits for this process to hold nothing.
    assert!(claim_next_as(store, &lone).await.is_none());

    // Alone, its death is charged to it.
    let job = reclaimed_and_settled(store, first).await;
    assert_eq!(job.crashes.expect("charged").count, 1);
    assert!(!job.attribution.suspect);
}

/// A shared store's takeover is a provisional charge: a write by the holder whose lease was taken
/// over (a renewal or any other, fenced) clears it, and it is charged only when two lease lengths
/// pass with no such attempt. A store held alone charges at once.
pub async fn a_takeover_is_charged_only_if_its_holder_stays_silent(store: &dyn StateStore) {
    if !store.shared() {
        return;
    }
    let id = submit_new(store, "taken").await.id;
    for comeback in ["renewal", "phase", "none"] {
        let (_, token) = claim_next_as(store, &worker(1)).await.expect("claimed");
        let taken = store
            .reclaim_orphan(id, "lease expired")
            .await
            .expect("reclaim")
            .expect("running is reclaimable");
        let takeover = taken.attribution.takeover.clone().expect("provisional");
        assert_eq!(takeover.fencing_token, token.fencing_token);
        assert_eq!(taken.crashes, None, "not charged at once");
        assert!(
            store
                .settle_takeovers(LEASE_TTL_MS)
                .await
                .expect("settle")
                .is_empty(),
            "not charged within two lease lengths"
        );
        if comeback != "none" {
            let refused = match comeback {
                "renewal" => store
                    .renew_lease(&token, LEASE_TTL_MS)
                    .await
                    .expect("renew")
                    .map(drop),
                _ => store
                    .set_phase(&token, Phase::Storing)
                    .await
                    .expect("set phase")
                    .map(drop),
            };
            assert!(
                matches!(refused, Err(Rejected::Fenced { .. })),
                "{refused:?}"
            );
            let job = store.job(id).await.expect("read").expect("exists");
            assert_eq!(job.attribution.takeover, None, "its holder came back");
            assert!(store.settle_takeovers(0).await.expect("settle").is_empty());
            assert_eq!(
                store.job(id).await.expect("read").expect("exists").crashes,
                None
            );
        } else {
            let settled = store.settle_takeovers(0).await.expect("settle");
            assert_eq!(settled.len(), 1);
            assert_eq!(settled[0].crashes.expect("charged").count, 1);
            assert_eq!(settled[0].attribution.takeover, None);
        }
    }
}

fn request(key: &str) -> SubmitRequest {
    SubmitRequest {
        key: key.to_string(),
        source: format!("https://example.com/{key}.mp4"),
        workflow: "ingest".to_string(),
        reingest: false,
        priority: crate::model::job::PRIORITY_LIVE,
    }
}

/// A scheduling policy with no per-host limit and a breaker that opens after two refusals.
fn open_policy() -> SchedulingPolicy {
    SchedulingPolicy {
        host_running_max: 0,
        host_start_interval_ms: 0,
        breaker: BreakerPolicy {
            failures_max: 2,
            window_ms: 60_000,
            cooldown_ms: 60_000,
            cooldown_max_ms: 120_000,
        },
        retry: RetryPolicy::default(),
    }
}

/// `claim_next` under [`open_policy`]: the claimed job and its token, or `None`.
pub async fn claim_next_as(
    store: &dyn StateStore,
    worker_id: &WorkerId,
) -> Option<(Job, LeaseToken)> {
    claim_next_with(store, worker_id, &open_policy(), None).await
}

async fn claim_next_with(
    store: &dyn StateStore,
    worker_id: &WorkerId,
    policy: &SchedulingPolicy,
    only: Option<&std::collections::BTreeSet<JobId>>,
) -> Option<(Job, LeaseToken)> {
    let request = ClaimRequest {
        worker_id,
        lease_ttl_ms: LEASE_TTL_MS,
        policy,
        only,
    };
    match store.claim_next(&request).await.expect("claim_next") {
        ClaimNext::Claimed(job, token) => Some((*job, token)),
        ClaimNext::Wait { .. } | ClaimNext::Empty => None,
    }
}

fn worker(n: u32) -> WorkerId {
    WorkerId(format!("conformance:0:{n}"))
}

fn error_info() -> ErrorInfo {
    ErrorInfo {
        class: "download_blocked".to_string(),
        message: "403 Forbidden".to_string(),
    }
}

fn checkpoint(step: &str, recorded_at: i64) -> Checkpoint {
    Checkpoint {
        step: step.to_string(),
        definition_hash: Hash::of(step.as_bytes()),
        input_hash: Hash::of(b"input"),
        outputs: vec![
            StepOutput {
                name: "file".to_string(),
                location: Location::Scratch(format!("/scratch/{step}.bin")),
                size: 42,
                blake3: Hash::of(b"file"),
                change_token: ChangeToken::File {
                    inode: 7,
                    size: 42,
                    mtime_ns: 1_700_000_000_000_000_000,
                },
            },
            StepOutput {
                name: "object".to_string(),
                location: Location::Object(format!("jobs/{step}")),
                size: 42,
                blake3: Hash::of(b"object"),
                change_token: ChangeToken::ETag("\"etag\"".to_string()),
            },
        ],
        recorded_at: Timestamp(recorded_at),
    }
}

fn media_metadata() -> MediaMetadata {
    MediaMetadata {
        format_name: "mov,mp4,m4a".to_string(),
        duration_s: Some(3.5),
        size: Some(1_000),
        bit_rate: Some(128_000),
        streams: vec![StreamInfo {
            index: 0,
            codec_type: "audio".to_string(),
            codec_name: Some("aac".to_string()),
            width: None,
            height: None,
            sample_rate: Some(44_100),
            channels: Some(2),
            duration_s: Some(3.5),
        }],
        raw: "{\"format\":{}}".to_string(),
    }
}

/// Makes the next job id sort after every id made so far.
async fn next_millisecond() {
    tokio::time::sleep(Duration::from_millis(2)).await;
}

async fn submit_new(store: &dyn StateStore, key: &str) -> Job {
    let submitted = store.submit(&request(key)).await.expect("submit");
    assert_eq!(
        submitted.outcome,
        SubmitOutcome::Created,
        "submit of new key {key}"
    );
    submitted.job
}

async fn claim(store: &dyn StateStore, id: JobId) -> LeaseToken {
    let (job, token) = store
        .claim(id, &worker(1), LEASE_TTL_MS)
        .await
        .expect("claim")
        .expect("a pending job is claimable");
    assert_eq!(job.status, Status::Running);
    assert_eq!(token.job_id, id);
    assert_eq!(token.fencing_token, job.fencing_token);
    token
}

/// Submits and claims a job.
async fn running_job(store: &dyn StateStore, key: &str) -> LeaseToken {
    let job = submit_new(store, key).await;
    claim(store, job.id).await
}

async fn read_job(store: &dyn StateStore, id: JobId) -> Job {
    store.job(id).await.expect("job").expect("job exists")
}

fn expect_fenced<T: std::fmt::Debug>(result: Result<T, Rejected>, what: &str) {
    match result {
        Err(Rejected::Fenced { .. }) => {}
        other => panic!("{what}: expected Rejected::Fenced, got {other:?}"),
    }
}

fn expect_not_allowed<T: std::fmt::Debug>(result: Result<T, Rejected>, what: &str) {
    match result {
        Err(Rejected::NotAllowed { .. }) => {}
        other => panic!("{what}: expected Rejected::NotAllowed, got {other:?}"),
    }
}

fn event_names(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(|event| event.kind.name()).collect()
}

/// The same key twice makes one job, returned unchanged the second time.
pub async fn submit_is_idempotent(store: &dyn StateStore) {
    let created = submit_new(store, "same").await;
    assert_eq!(created.status, Status::Pending);
    assert_eq!(created.ingestion_phase, None);
    assert_eq!(created.attempts, 0);

    let again = store.submit(&request("same")).await.expect("submit again");
    assert_eq!(again.outcome, SubmitOutcome::Existing);
    assert_eq!(again.job, created);

    let token = claim(store, created.id).await;
    let running = store
        .submit(&request("same"))
        .await
        .expect("submit while running");
    assert_eq!(running.outcome, SubmitOutcome::Existing);
    assert_eq!(running.job, read_job(store, token.job_id).await);

    let all = store
        .jobs(&JobFilter {
            status: None,
            limit: usize::MAX,
        })
        .await
        .expect("jobs");
    assert_eq!(all.len(), 1, "one key, one job");
    assert_eq!(
        store
            .job_by_key("same")
            .await
            .expect("job_by_key")
            .map(|job| job.id),
        Some(created.id)
    );
    assert_eq!(store.job_by_key("other").await.expect("job_by_key"), None);
}

/// Re-submitting the key of a failed or cancelled job sends that job back to pending.
pub async fn submit_retries_failed_and_cancelled_jobs(store: &dyn StateStore) {
    let token = running_job(store, "failed").await;
    store
        .fail(&token, error_info())
        .await
        .expect("fail")
        .expect("current token");
    let retried = store.submit(&request("failed")).await.expect("resubmit");
    assert_eq!(retried.outcome, SubmitOutcome::Retried);
    assert_eq!(retried.job.id, token.job_id);
    assert_eq!(retried.job.status, Status::Pending);
    assert_eq!(read_job(store, token.job_id).await, retried.job);
    let events = store.events(token.job_id).await.expect("events");
    assert!(
        events
            .iter()
            .any(|event| matches!(&event.kind, EventKind::RetryRequested { .. })),
        "a retry leaves a retry_requested event: {events:?}"
    );

    let cancelled = submit_new(store, "cancelled").await;
    store
        .cancel(cancelled.id)
        .await
        .expect("cancel")
        .expect("pending is cancellable");
    let retried = store.submit(&request("cancelled")).await.expect("resubmit");
    assert_eq!(retried.outcome, SubmitOutcome::Retried);
    assert_eq!(retried.job.status, Status::Pending);
}

/// A succeeded job is returned as it is, unless the submission asks to reingest it.
pub async fn submit_reingests_only_when_asked(store: &dyn StateStore) {
    let token = running_job(store, "done").await;
    let succeeded = store
        .complete(&token)
        .await
        .expect("complete")
        .expect("current token");
    assert_eq!(succeeded.status, Status::Succeeded);

    let existing = store.submit(&request("done")).await.expect("resubmit");
    assert_eq!(existing.outcome, SubmitOutcome::Existing);
    assert_eq!(
        existing.job, succeeded,
        "an existing job is returned unchanged"
    );
    assert_eq!(read_job(store, token.job_id).await, succeeded);

    let reingest = SubmitRequest {
        reingest: true,
        ..request("done")
    };
    let reingested = store.submit(&reingest).await.expect("reingest");
    assert_eq!(reingested.outcome, SubmitOutcome::Reingested);
    assert_eq!(reingested.job.id, token.job_id);
    assert_eq!(reingested.job.status, Status::Pending);

    // Reingest on a job that is not succeeded is an ordinary idempotent submission.
    let again = store.submit(&reingest).await.expect("reingest pending");
    assert_eq!(again.outcome, SubmitOutcome::Existing);
    assert_eq!(again.job, reingested.job);
}

/// Claiming makes a job running under a new lease: attempts + 1 and the next fencing token.
pub async fn claim_starts_a_lease_with_a_growing_token(store: &dyn StateStore) {
    let job = submit_new(store, "claim").await;
    assert_eq!(job.fencing_token, 0);
    let before = Timestamp::now();
    let (claimed, first) = store
        .claim(job.id, &worker(1), LEASE_TTL_MS)
        .await
        .expect("claim")
        .expect("claimable");
    assert_eq!(claimed.status, Status::Running);
    assert_eq!(claimed.attempts, 1);
    assert_eq!(claimed.ingestion_phase, None);
    let lease = claimed.lease.clone().expect("a running job has a lease");
    assert_eq!(lease.worker_id, worker(1));
    assert_eq!(lease.fencing_token, first.fencing_token);
    assert!(lease.expires_at >= before.plus_ms(LEASE_TTL_MS));
    assert_eq!(read_job(store, job.id).await, claimed);

    expect_not_allowed(
        store
            .claim(job.id, &worker(2), LEASE_TTL_MS)
            .await
            .expect("claim"),
        "claim of a running job",
    );

    let renewed = store
        .renew_lease(&first, LEASE_TTL_MS * 2)
        .await
        .expect("renew")
        .expect("current token");
    let renewed_lease = renewed.lease.expect("lease");
    assert_eq!(renewed_lease.fencing_token, first.fencing_token);
    assert!(renewed_lease.expires_at > lease.expires_at);

    store
        .reclaim(job.id, "lease expired")
        .await
        .expect("reclaim")
        .expect("running is reclaimable");
    let (reclaimed, second) = store
        .claim(job.id, &worker(2), LEASE_TTL_MS)
        .await
        .expect("claim")
        .expect("claimable");
    assert_eq!(reclaimed.attempts, 2);
    assert_eq!(second.fencing_token, first.fencing_token + 1);
    assert_eq!(reclaimed.lease.expect("lease").worker_id, worker(2));
}

/// After a reclaim and a new claim, every write under the old token is fenced and changes nothing.
pub async fn stale_tokens_are_fenced(store: &dyn StateStore) {
    let stale = running_job(store, "fenced").await;
    store
        .reclaim(stale.job_id, "worker gone")
        .await
        .expect("reclaim")
        .expect("reclaimable");
    let current = claim(store, stale.job_id).await;
    let before = read_job(store, stale.job_id).await;
    let events_before = store.events(stale.job_id).await.expect("events");

    expect_fenced(
        store
            .set_phase(&stale, Phase::Downloading)
            .await
            .expect("set_phase"),
        "set_phase with a stale token",
    );
    expect_fenced(
        store
            .renew_lease(&stale, LEASE_TTL_MS)
            .await
            .expect("renew"),
        "renew_lease with a stale token",
    );
    expect_fenced(
        store.complete(&stale).await.expect("complete"),
        "complete with a stale token",
    );
    expect_fenced(
        store.fail(&stale, error_info()).await.expect("fail"),
        "fail with a stale token",
    );
    store
        .cancel(stale.job_id)
        .await
        .expect("cancel")
        .expect("cancel request");
    expect_fenced(
        store.confirm_cancel(&stale).await.expect("confirm_cancel"),
        "confirm_cancel with a stale token",
    );
    let after = read_job(store, stale.job_id).await;
    assert_eq!(after.status, Status::Running);
    assert_eq!(after.ingestion_phase, None);
    assert_eq!(
        after.lease, before.lease,
        "fenced writes leave the lease alone"
    );
    assert_eq!(
        store.events(stale.job_id).await.expect("events").len(),
        events_before.len() + 1,
        "only the cancel request was written"
    );

    let job = store
        .set_phase(&current, Phase::Downloading)
        .await
        .expect("set_phase")
        .expect("the current token is accepted");
    assert_eq!(job.ingestion_phase, Some(Phase::Downloading));

    // A token from the future is as wrong as one from the past.
    let future = LeaseToken {
        job_id: current.job_id,
        fencing_token: current.fencing_token + 1,
    };
    expect_fenced(
        store
            .set_phase(&future, Phase::Storing)
            .await
            .expect("set_phase"),
        "set_phase with a future token",
    );
}

/// complete, fail and confirm_cancel clear the phase and the lease in the same write.
pub async fn leaving_running_clears_phase_and_lease(store: &dyn StateStore) {
    for (key, expected) in [
        ("complete", Status::Succeeded),
        ("fail", Status::Failed),
        ("cancel", Status::Cancelled),
        ("reclaim", Status::Pending),
    ] {
        let token = running_job(store, key).await;
        store
            .set_phase(&token, Phase::Storing)
            .await
            .expect("set_phase")
            .expect("current token");
        if key == "cancel" {
            store
                .cancel(token.job_id)
                .await
                .expect("cancel")
                .expect("cancel request");
        }
        let events_before = store.events(token.job_id).await.expect("events").len();
        let returned = match key {
            "complete" => store.complete(&token).await.expect("complete"),
            "fail" => store.fail(&token, error_info()).await.expect("fail"),
            "cancel" => store.confirm_cancel(&token).await.expect("confirm_cancel"),
            _ => store
                .reclaim(token.job_id, "lease expired")
                .await
                .expect("reclaim"),
        }
        .expect("accepted");
        let stored = read_job(store, token.job_id).await;
        assert_eq!(
            stored, returned,
            "{key}: the returned job is the stored job"
        );
        assert_eq!(stored.status, expected, "{key}");
        assert_eq!(stored.ingestion_phase, None, "{key} clears the phase");
        assert_eq!(stored.lease, None, "{key} clears the lease");
        assert!(!stored.cancel_requested, "{key} clears the cancel request");
        // The transition's own events, in whatever order the state machine gives them.
        let events = store.events(token.job_id).await.expect("events");
        let written: Vec<&EventKind> = events[events_before..]
            .iter()
            .map(|event| &event.kind)
            .collect();
        assert_eq!(written.len(), 2, "{key} wrote {written:?}");
        assert!(
            written.contains(&&EventKind::PhaseChanged {
                from: Some(Phase::Storing),
                to: None
            }),
            "{key}: the phase is cleared by the same transition: {written:?}"
        );
        assert!(
            written.iter().any(|kind| matches!(
                kind,
                EventKind::StatusChanged { from: Some(Status::Running), to, .. } if *to == expected
            )),
            "{key}: the status change is in the same transition: {written:?}"
        );
        if expected == Status::Failed {
            assert_eq!(stored.error, Some(error_info()));
        }
    }
}

/// A whole run leaves a gapless, ordered history that tells the job's story.
pub async fn event_history_is_complete_and_in_order(store: &dyn StateStore) {
    let job = submit_new(store, "story").await;
    let token = claim(store, job.id).await;
    store
        .set_phase(&token, Phase::Downloading)
        .await
        .expect("set_phase")
        .expect("current token");
    // Setting the same phase again is not a change and writes no event.
    store
        .set_phase(&token, Phase::Downloading)
        .await
        .expect("set_phase")
        .expect("current token");
    store
        .record_step_event(&token, "download", StepEvent::Started)
        .await
        .expect("step event")
        .expect("current token");
    store
        .record_checkpoint(&token, &checkpoint("download", 1), None)
        .await
        .expect("checkpoint")
        .expect("current token");
    store
        .set_phase(&token, Phase::Processing)
        .await
        .expect("set_phase")
        .expect("current token");
    store
        .record_step_event(
            &token,
            "extract",
            StepEvent::Skipped {
                reason: "done before".to_string(),
            },
        )
        .await
        .expect("step event")
        .expect("current token");
    let completed = store
        .complete(&token)
        .await
        .expect("complete")
        .expect("current token");

    let events = store.events(job.id).await.expect("events");
    assert_eq!(events.len(), 11, "{:?}", event_names(&events));
    assert_eq!(
        event_names(&events[..9]),
        vec![
            "submitted",
            "status_changed",
            "status_changed",
            "phase_changed",
            "step_started",
            "step_completed",
            "checkpoint_recorded",
            "phase_changed",
            "step_skipped",
        ]
    );
    for (index, event) in events.iter().enumerate() {
        assert_eq!(
            event.seq,
            u64::try_from(index).expect("small"),
            "gapless sequence"
        );
    }
    assert_eq!(
        completed.events_next,
        u64::try_from(events.len()).expect("small")
    );
    assert_eq!(
        events[1].kind,
        EventKind::StatusChanged {
            from: None,
            to: Status::Pending,
            reason: "submitted".to_string()
        }
    );
    assert!(matches!(
        &events[2].kind,
        EventKind::StatusChanged {
            from: Some(Status::Pending),
            to: Status::Running,
            ..
        }
    ));
    assert_eq!(
        events[5].kind,
        EventKind::StepCompleted {
            step: "download".to_string(),
            outputs: 2
        }
    );
    let download = checkpoint("download", 1);
    assert_eq!(
        events[6].kind,
        EventKind::CheckpointRecorded {
            step: "download".to_string(),
            definition_hash: download.definition_hash,
            input_hash: download.input_hash,
            outputs: download
                .outputs
                .iter()
                .map(|output| (output.name.clone(), output.blake3))
                .collect(),
        }
    );
    // `complete` writes a status change and the phase's end, in the state machine's order.
    let mut last_names = event_names(&events[9..]);
    last_names.sort_unstable();
    assert_eq!(last_names, vec!["phase_changed", "status_changed"]);
    assert!(events[9..].iter().any(|event| matches!(
        &event.kind,
        EventKind::StatusChanged {
            from: Some(Status::Running),
            to: Status::Succeeded,
            ..
        }
    )));
    assert!(
        events.windows(2).all(|pair| pair[0].at <= pair[1].at),
        "event times do not go backwards"
    );
}

/// A checkpoint under a stale token is refused and writes nothing: no checkpoint, no metadata, no
/// event.
pub async fn stale_checkpoint_writes_nothing(store: &dyn StateStore) {
    let stale = running_job(store, "stale-checkpoint").await;
    store
        .reclaim(stale.job_id, "worker gone")
        .await
        .expect("reclaim")
        .expect("reclaimable");
    let current = claim(store, stale.job_id).await;
    let job_before = read_job(store, stale.job_id).await;
    let events_before = store.events(stale.job_id).await.expect("events");

    let metadata = media_metadata();
    expect_fenced(
        store
            .record_checkpoint(&stale, &checkpoint("download", 1), Some(&metadata))
            .await
            .expect("record_checkpoint"),
        "record_checkpoint with a stale token",
    );
    assert_eq!(
        store.checkpoints(stale.job_id).await.expect("checkpoints"),
        vec![]
    );
    assert_eq!(
        store
            .checkpoint(stale.job_id, "download")
            .await
            .expect("checkpoint"),
        None
    );
    assert_eq!(store.metadata(stale.job_id).await.expect("metadata"), None);
    assert_eq!(
        store.events(stale.job_id).await.expect("events"),
        events_before
    );
    assert_eq!(read_job(store, stale.job_id).await, job_before);

    // The same write under the current token goes through.
    store
        .record_checkpoint(&current, &checkpoint("download", 1), Some(&metadata))
        .await
        .expect("record_checkpoint")
        .expect("current token");
    assert_eq!(
        store
            .checkpoints(stale.job_id)
            .await
            .expect("checkpoints")
            .len(),
        1
    );
}

/// Checkpoints and the metadata record read back as written, in the order the steps were recorded.
pub async fn checkpoints_and_metadata_read_back_equal(store: &dyn StateStore) {
    let token = running_job(store, "checkpoints").await;
    // Recorded out of name order, to tell recording order from key order.
    let download = checkpoint("download", 100);
    let extract = checkpoint("extract", 200);
    let store_step = checkpoint("store", 300);
    let metadata = media_metadata();
    for (checkpoint, metadata) in [
        (&download, None),
        (&store_step, None),
        (&extract, Some(&metadata)),
    ] {
        store
            .record_checkpoint(&token, checkpoint, metadata)
            .await
            .expect("record_checkpoint")
            .expect("current token");
    }
    assert_eq!(
        store.checkpoints(token.job_id).await.expect("checkpoints"),
        vec![download.clone(), extract.clone(), store_step.clone()]
    );
    assert_eq!(
        store
            .checkpoint(token.job_id, "extract")
            .await
            .expect("checkpoint"),
        Some(extract.clone())
    );
    assert_eq!(
        store
            .checkpoint(token.job_id, "missing")
            .await
            .expect("checkpoint"),
        None
    );
    assert_eq!(
        store.metadata(token.job_id).await.expect("metadata"),
        Some(metadata)
    );

    // Recording a step again replaces its checkpoint.
    let redone = Checkpoint {
        input_hash: Hash::of(b"new input"),
        recorded_at: Timestamp(400),
        ..download.clone()
    };
    store
        .record_checkpoint(&token, &redone, None)
        .await
        .expect("record_checkpoint")
        .expect("current token");
    assert_eq!(
        store.checkpoints(token.job_id).await.expect("checkpoints"),
        vec![extract, store_step, redone]
    );

    // Another job's checkpoints are its own.
    let other = submit_new(store, "other").await;
    assert_eq!(
        store.checkpoints(other.id).await.expect("checkpoints"),
        vec![]
    );
    assert_eq!(store.metadata(other.id).await.expect("metadata"), None);
}

/// `record_reprobe` replaces the metadata record and the extract checkpoint of a finished job, with
/// a `reprobed` event, in one write; on a job a worker may be writing it writes nothing.
pub async fn reprobe_replaces_the_record_of_a_finished_job_only(store: &dyn StateStore) {
    let token = running_job(store, "reprobe").await;
    let extract = checkpoint("extract", 200);
    let metadata = media_metadata();
    store
        .record_checkpoint(&token, &extract, Some(&metadata))
        .await
        .expect("record_checkpoint")
        .expect("current token");
    let reprobed_metadata = MediaMetadata {
        duration_s: Some(2.0),
        ..metadata.clone()
    };
    let reprobed_checkpoint = Checkpoint {
        outputs: vec![StepOutput {
            blake3: Hash::of(b"the new record"),
            ..extract.outputs[0].clone()
        }],
        ..extract.clone()
    };
    let changes = vec!["duration_s: 3.5 -> 2.0".to_string()];
    let events_before = store.events(token.job_id).await.expect("events").len();

    let refused = store
        .record_reprobe(
            token.job_id,
            &reprobed_checkpoint,
            &reprobed_metadata,
            changes.clone(),
        )
        .await
        .expect("record_reprobe");

    expect_not_allowed(refused, "reprobe of a running job");
    assert_eq!(
        store.metadata(token.job_id).await.expect("metadata"),
        Some(metadata.clone())
    );
    assert_eq!(
        store.events(token.job_id).await.expect("events").len(),
        events_before
    );

    let done = store
        .complete(&token)
        .await
        .expect("complete")
        .expect("current token");
    let job = store
        .record_reprobe(
            token.job_id,
            &reprobed_checkpoint,
            &reprobed_metadata,
            changes.clone(),
        )
        .await
        .expect("record_reprobe")
        .expect("a succeeded job may be reprobed");

    assert_eq!(job.status, done.status, "a reprobe changes no status");
    assert_eq!(job.ingestion_phase, None);
    assert_eq!(
        store.metadata(token.job_id).await.expect("metadata"),
        Some(reprobed_metadata)
    );
    assert_eq!(
        store
            .checkpoint(token.job_id, "extract")
            .await
            .expect("checkpoint"),
        Some(reprobed_checkpoint)
    );
    let events = store.events(token.job_id).await.expect("events");
    assert_eq!(
        events.last().map(|event| &event.kind),
        Some(&EventKind::Reprobed { changes })
    );
    assert_eq!(read_job(store, token.job_id).await, job);
}

/// Step events are appended under the current lease only.
pub async fn step_events_need_the_current_lease(store: &dyn StateStore) {
    let token = running_job(store, "steps").await;
    let failed = StepEvent::Failed {
        error: error_info(),
    };
    store
        .record_step_event(&token, "download", failed)
        .await
        .expect("step event")
        .expect("current token");
    let events = store.events(token.job_id).await.expect("events");
    assert_eq!(
        events[events.len() - 1].kind,
        EventKind::StepFailed {
            step: "download".to_string(),
            error: error_info()
        }
    );
    store
        .complete(&token)
        .await
        .expect("complete")
        .expect("current token");
    expect_fenced(
        store
            .record_step_event(&token, "download", StepEvent::Started)
            .await
            .expect("step event"),
        "a step event after the job ended",
    );
}

/// Step progress is recorded under the current lease only, and reads back as written.
pub async fn progress_needs_the_current_lease(store: &dyn StateStore) {
    let token = running_job(store, "progress").await;
    assert_eq!(store.progress(token.job_id).await.expect("progress"), None);
    let progress = crate::model::job::JobProgress {
        bytes_done: 4096,
        bytes_total: Some(10_000),
        rate_bytes_per_s: 2048,
        updated_at: Timestamp(1_790_000_000_000),
    };
    store
        .set_progress(&token, &progress)
        .await
        .expect("set progress")
        .expect("current token");
    assert_eq!(
        store.progress(token.job_id).await.expect("progress"),
        Some(progress.clone())
    );
    store
        .complete(&token)
        .await
        .expect("complete")
        .expect("current token");
    let later = crate::model::job::JobProgress {
        bytes_done: 9_999,
        ..progress.clone()
    };
    expect_fenced(
        store
            .set_progress(&token, &later)
            .await
            .expect("set progress"),
        "progress after the job ended",
    );
    assert_eq!(
        store.progress(token.job_id).await.expect("progress"),
        Some(progress),
        "a refused progress write changes nothing"
    );
}

/// Cancel ends a pending job at once, and asks a running job's worker to stop at a step boundary.
pub async fn cancel_pending_and_running(store: &dyn StateStore) {
    let pending = submit_new(store, "cancel-pending").await;
    let cancelled = store
        .cancel(pending.id)
        .await
        .expect("cancel")
        .expect("pending is cancellable");
    assert_eq!(cancelled.status, Status::Cancelled);
    expect_not_allowed(
        store.cancel(pending.id).await.expect("cancel"),
        "cancel of a cancelled job",
    );

    let token = running_job(store, "cancel-running").await;
    expect_not_allowed(
        store.confirm_cancel(&token).await.expect("confirm_cancel"),
        "confirm_cancel without a request",
    );
    store
        .set_phase(&token, Phase::Downloading)
        .await
        .expect("set_phase")
        .expect("current token");
    let requested = store
        .cancel(token.job_id)
        .await
        .expect("cancel")
        .expect("running is cancellable");
    assert_eq!(requested.status, Status::Running);
    assert!(requested.cancel_requested);
    assert_eq!(requested.ingestion_phase, Some(Phase::Downloading));
    // Asking twice is one request.
    let again = store
        .cancel(token.job_id)
        .await
        .expect("cancel")
        .expect("running is cancellable");
    assert!(again.cancel_requested);
    let cancel_requests = store
        .events(token.job_id)
        .await
        .expect("events")
        .iter()
        .filter(|event| event.kind == EventKind::CancelRequested)
        .count();
    assert_eq!(cancel_requests, 1);

    let confirmed = store
        .confirm_cancel(&token)
        .await
        .expect("confirm_cancel")
        .expect("current token");
    assert_eq!(confirmed.status, Status::Cancelled);
    assert_eq!(confirmed.ingestion_phase, None);
    assert_eq!(confirmed.lease, None);
    assert_eq!(read_job(store, token.job_id).await, confirmed);

    let succeeded_token = running_job(store, "cancel-succeeded").await;
    store
        .complete(&succeeded_token)
        .await
        .expect("complete")
        .expect("current token");
    expect_not_allowed(
        store.cancel(succeeded_token.job_id).await.expect("cancel"),
        "cancel of a succeeded job",
    );
}

/// Retry takes failed jobs back to pending; reingest does it for succeeded ones.
pub async fn retry_and_reingest(store: &dyn StateStore) {
    let token = running_job(store, "retry").await;
    store
        .fail(&token, error_info())
        .await
        .expect("fail")
        .expect("current token");
    let retried = store
        .retry(token.job_id, "operator retry")
        .await
        .expect("retry")
        .expect("failed is retryable");
    assert_eq!(retried.status, Status::Pending);
    assert_eq!(retried.lease, None);
    let events = store.events(token.job_id).await.expect("events");
    let names = event_names(&events);
    assert_eq!(
        names[names.len() - 2..],
        ["retry_requested", "status_changed"]
    );
    assert_eq!(
        events[events.len() - 2].kind,
        EventKind::RetryRequested {
            reason: "operator retry".to_string()
        }
    );
    expect_not_allowed(
        store.retry(token.job_id, "again").await.expect("retry"),
        "retry of a pending job",
    );

    let token = claim(store, token.job_id).await;
    store
        .complete(&token)
        .await
        .expect("complete")
        .expect("current token");
    expect_not_allowed(
        store.retry(token.job_id, "why").await.expect("retry"),
        "retry of a succeeded job",
    );
    let reingested = store
        .reingest(token.job_id)
        .await
        .expect("reingest")
        .expect("succeeded is reingestable");
    assert_eq!(reingested.status, Status::Pending);
    expect_not_allowed(
        store.reingest(token.job_id).await.expect("reingest"),
        "reingest of a pending job",
    );
}

/// Reclaim takes a running job whose worker is gone back to pending.
pub async fn reclaim_returns_running_to_pending(store: &dyn StateStore) {
    let token = running_job(store, "reclaim").await;
    store
        .set_phase(&token, Phase::Processing)
        .await
        .expect("set_phase")
        .expect("current token");
    let reclaimed = store
        .reclaim(token.job_id, "lease expired")
        .await
        .expect("reclaim")
        .expect("running is reclaimable");
    assert_eq!(reclaimed.status, Status::Pending);
    assert_eq!(reclaimed.ingestion_phase, None);
    assert_eq!(reclaimed.lease, None);
    assert_eq!(
        reclaimed.fencing_token, token.fencing_token,
        "reclaim hands out no token"
    );
    expect_not_allowed(
        store.reclaim(token.job_id, "again").await.expect("reclaim"),
        "reclaim of a pending job",
    );
    let pending = store
        .jobs(&JobFilter {
            status: Some(Status::Pending),
            limit: usize::MAX,
        })
        .await
        .expect("jobs");
    assert_eq!(pending, vec![reclaimed]);
}

/// Operations on a job that does not exist are refused as not found and create nothing.
pub async fn unknown_jobs_are_not_found(store: &dyn StateStore) {
    let id = JobId::new();
    let token = LeaseToken {
        job_id: id,
        fencing_token: 1,
    };
    let not_found = Err(Rejected::NotFound(id));
    assert_eq!(store.job(id).await.expect("job"), None);
    assert_eq!(
        store
            .claim(id, &worker(1), LEASE_TTL_MS)
            .await
            .expect("claim")
            .map(|_| ()),
        not_found
    );
    assert_eq!(
        store.cancel(id).await.expect("cancel").map(|_| ()),
        not_found
    );
    assert_eq!(
        store.retry(id, "x").await.expect("retry").map(|_| ()),
        not_found
    );
    assert_eq!(
        store.reingest(id).await.expect("reingest").map(|_| ()),
        not_found
    );
    assert_eq!(
        store.reclaim(id, "x").await.expect("reclaim").map(|_| ()),
        not_found
    );
    assert_eq!(
        store.complete(&token).await.expect("complete").map(|_| ()),
        not_found
    );
    assert_eq!(
        store
            .set_phase(&token, Phase::Storing)
            .await
            .expect("set_phase")
            .map(|_| ()),
        not_found
    );
    assert_eq!(
        store
            .record_checkpoint(&token, &checkpoint("download", 1), None)
            .await
            .expect("record_checkpoint"),
        not_found
    );
    assert_eq!(store.events(id).await.expect("events"), vec![]);
    assert_eq!(store.checkpoints(id).await.expect("checkpoints"), vec![]);
    assert_eq!(store.logs(id).await.expect("logs"), vec![]);
    assert_eq!(
        store
            .jobs(&JobFilter {
                status: None,
                limit: usize::MAX
            })
            .await
            .expect("jobs"),
        vec![]
    );
}

/// `jobs` lists newest first, filters by status through the index, and stops at the limit.
pub async fn jobs_lists_newest_first_and_filters_by_status(store: &dyn StateStore) {
    let mut ids = Vec::new();
    for key in ["first", "second", "third", "fourth"] {
        ids.push(submit_new(store, key).await.id);
        next_millisecond().await;
    }
    let listed = |status: Option<Status>, limit: usize| async move {
        store
            .jobs(&JobFilter { status, limit })
            .await
            .expect("jobs")
            .into_iter()
            .map(|job| job.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        listed(None, usize::MAX).await,
        vec![ids[3], ids[2], ids[1], ids[0]]
    );
    assert_eq!(listed(None, 2).await, vec![ids[3], ids[2]]);
    assert_eq!(listed(None, 0).await, vec![]);

    let token = claim(store, ids[1]).await;
    store
        .fail(&token, error_info())
        .await
        .expect("fail")
        .expect("current token");
    claim(store, ids[2]).await;
    assert_eq!(
        listed(Some(Status::Pending), usize::MAX).await,
        vec![ids[3], ids[0]]
    );
    assert_eq!(listed(Some(Status::Pending), 1).await, vec![ids[3]]);
    assert_eq!(
        listed(Some(Status::Running), usize::MAX).await,
        vec![ids[2]]
    );
    assert_eq!(listed(Some(Status::Failed), usize::MAX).await, vec![ids[1]]);
    assert_eq!(listed(Some(Status::Succeeded), usize::MAX).await, vec![]);

    // The index follows the job: a retried job leaves `failed` and is listed as pending.
    store
        .retry(ids[1], "again")
        .await
        .expect("retry")
        .expect("failed is retryable");
    assert_eq!(listed(Some(Status::Failed), usize::MAX).await, vec![]);
    assert_eq!(
        listed(Some(Status::Pending), usize::MAX).await,
        vec![ids[3], ids[1], ids[0]]
    );
}

/// `claim_next` takes the oldest pending job, skips jobs that are not pending, and returns None
/// when there is nothing to claim.
pub async fn claim_next_picks_the_oldest_pending(store: &dyn StateStore) {
    assert_eq!(claim_next_as(store, &worker(1)).await, None);
    let mut ids = Vec::new();
    for key in ["a", "b", "c"] {
        ids.push(submit_new(store, key).await.id);
        next_millisecond().await;
    }
    store
        .cancel(ids[1])
        .await
        .expect("cancel")
        .expect("pending is cancellable");

    let (job, token) = claim_next_as(store, &worker(1))
        .await
        .expect("a pending job");
    assert_eq!(job.id, ids[0]);
    assert_eq!(job.status, Status::Running);
    assert_eq!(token.job_id, ids[0]);
    assert_eq!(token.fencing_token, job.fencing_token);
    assert_eq!(read_job(store, ids[0]).await, job);

    let (job, _) = claim_next_as(store, &worker(2))
        .await
        .expect("a pending job");
    assert_eq!(job.id, ids[2], "the cancelled job is skipped");
    assert_eq!(claim_next_as(store, &worker(3)).await, None);

    // A reclaimed job is pending again and is claimed before newer jobs.
    let newer = submit_new(store, "d").await;
    store
        .reclaim(ids[0], "lease expired")
        .await
        .expect("reclaim")
        .expect("running is reclaimable");
    let (job, token) = claim_next_as(store, &worker(4))
        .await
        .expect("a pending job");
    assert_eq!(job.id, ids[0]);
    assert_eq!(job.attempts, 2);
    assert_eq!(token.fencing_token, 2);
    let (job, _) = claim_next_as(store, &worker(4))
        .await
        .expect("a pending job");
    assert_eq!(job.id, newer.id);
}

/// A job's log reads back in order, long lines are cut at a character boundary, and a job that
/// ends keeps at most `LOG_LINES_MAX` lines: its newest.
pub async fn logs_are_ordered_and_bounded(store: &dyn StateStore) {
    let token = running_job(store, "logs").await;
    let other = submit_new(store, "quiet").await;
    let line = |message: String| LogLine {
        at: Timestamp(1),
        level: "INFO".to_string(),
        message,
    };
    let lines_total = LOG_LINES_MAX + 5;
    for index in 0..lines_total {
        store.append_log(token.job_id, line(format!("line {index}")));
    }
    store.append_log(other.id, line("other job".to_string()));

    let logs = store.logs(token.job_id).await.expect("logs");
    assert_eq!(
        logs.len(),
        lines_total,
        "a running job's log is trimmed when it ends"
    );
    assert_eq!(logs[0].message, "line 0");
    assert_eq!(
        logs[lines_total - 1].message,
        format!("line {}", lines_total - 1)
    );

    store
        .complete(&token)
        .await
        .expect("complete")
        .expect("current token");
    let logs = store.logs(token.job_id).await.expect("logs");
    assert_eq!(logs.len(), LOG_LINES_MAX);
    assert_eq!(logs[0].message, "line 5", "the oldest lines go first");
    assert_eq!(
        logs[LOG_LINES_MAX - 1].message,
        format!("line {}", lines_total - 1)
    );
    assert_eq!(
        store.logs(other.id).await.expect("logs"),
        vec![line("other job".to_string())],
        "trimming one job's log leaves the others alone"
    );

    // 'é' is two bytes: a cut at an odd byte count must step back to a character boundary.
    let long = format!("x{}", "é".repeat(LOG_LINE_BYTES_MAX));
    store.append_log(other.id, line(long.clone()));
    let logs = store.logs(other.id).await.expect("logs");
    let cut = &logs[1].message;
    assert!(
        cut.len() <= LOG_LINE_BYTES_MAX,
        "cut to {} bytes",
        cut.len()
    );
    assert!(
        cut.len() >= LOG_LINE_BYTES_MAX - 3,
        "cut no shorter than needed"
    );
    assert!(long.starts_with(cut.as_str()));
}

/// A store checkpoint whose outputs are the `blobs/` objects `blobs`, a manifest and a scratch file.
fn store_checkpoint(id: JobId, blobs: &[&str], recorded_at: i64) -> Checkpoint {
    let mut outputs: Vec<StepOutput> = blobs
        .iter()
        .map(|key| StepOutput {
            name: format!("blob {key}"),
            location: Location::Object((*key).to_string()),
            size: 10,
            blake3: Hash::of(key.as_bytes()),
            change_token: ChangeToken::None,
        })
        .collect();
    outputs.push(StepOutput {
        name: "manifest".to_string(),
        location: Location::Object(format!("jobs/{id}/manifest.json")),
        size: 3,
        blake3: Hash::of(b"{}"),
        change_token: ChangeToken::None,
    });
    outputs.push(StepOutput {
        name: "scratch".to_string(),
        location: Location::Scratch("/scratch/blobs/not-an-object".to_string()),
        size: 1,
        blake3: Hash::of(b"s"),
        change_token: ChangeToken::None,
    });
    Checkpoint {
        step: "store".to_string(),
        definition_hash: Hash::of(b"store"),
        input_hash: Hash::of(b"input"),
        outputs,
        recorded_at: Timestamp(recorded_at),
    }
}

/// The blob -> jobs index follows each job's store checkpoint, in the checkpoint's own write: it
/// lists the `blobs/` objects only, is replaced when the store step is recorded again, ignores
/// other steps and refused writes, and tells apart keys that are prefixes of each other.
pub async fn blob_refs_follow_the_store_checkpoint(store: &dyn StateStore) {
    let first = running_job(store, "refs-first").await;
    let second = running_job(store, "refs-second").await;
    let shared = "blobs/aa/aaaa.mp4";
    let first_audio = "blobs/bb/bbbb.m4a";
    let second_audio = "blobs/cc/cccc.m4a";
    assert_eq!(store.jobs_referencing(shared).await.expect("refs"), vec![]);

    for (token, blobs) in [
        (&first, [shared, first_audio]),
        (&second, [shared, second_audio]),
    ] {
        store
            .record_checkpoint(token, &store_checkpoint(token.job_id, &blobs, 10), None)
            .await
            .expect("record_checkpoint")
            .expect("current token");
    }
    let mut both = vec![first.job_id, second.job_id];
    both.sort();
    assert_eq!(store.jobs_referencing(shared).await.expect("refs"), both);
    assert_eq!(
        store.jobs_referencing(first_audio).await.expect("refs"),
        vec![first.job_id]
    );
    assert_eq!(
        store
            .jobs_referencing(&format!("jobs/{}/manifest.json", first.job_id))
            .await
            .expect("refs"),
        vec![],
        "manifests are not indexed"
    );
    assert_eq!(
        store.jobs_referencing("blobs/aa/aaaa").await.expect("refs"),
        vec![],
        "a key that is a prefix of an indexed key names no job"
    );

    // Another step's checkpoint never touches the index, even when it names a blob.
    let mut extract = store_checkpoint(first.job_id, &["blobs/dd/dddd.flac"], 20);
    extract.step = "extract".to_string();
    store
        .record_checkpoint(&first, &extract, None)
        .await
        .expect("record_checkpoint")
        .expect("current token");
    assert_eq!(
        store
            .jobs_referencing("blobs/dd/dddd.flac")
            .await
            .expect("refs"),
        vec![]
    );

    // Recording the store step again replaces the job's references.
    let redone_audio = "blobs/ee/eeee.m4a";
    store
        .record_checkpoint(
            &first,
            &store_checkpoint(first.job_id, &[shared, redone_audio], 30),
            None,
        )
        .await
        .expect("record_checkpoint")
        .expect("current token");
    assert_eq!(
        store.jobs_referencing(first_audio).await.expect("refs"),
        vec![]
    );
    assert_eq!(
        store.jobs_referencing(redone_audio).await.expect("refs"),
        vec![first.job_id]
    );
    assert_eq!(store.jobs_referencing(shared).await.expect("refs"), both);

    // A refused checkpoint changes no reference.
    store
        .reclaim(second.job_id, "worker gone")
        .await
        .expect("reclaim")
        .expect("reclaimable");
    expect_fenced(
        store
            .record_checkpoint(
                &second,
                &store_checkpoint(second.job_id, &["blobs/ff/ffff.mp4"], 40),
                None,
            )
            .await
            .expect("record_checkpoint"),
        "a store checkpoint under a stale token",
    );
    assert_eq!(
        store
            .jobs_referencing("blobs/ff/ffff.mp4")
            .await
            .expect("refs"),
        vec![]
    );

    let mut expected = vec![
        (shared.to_string(), both[0]),
        (shared.to_string(), both[1]),
        (second_audio.to_string(), second.job_id),
        (redone_audio.to_string(), first.job_id),
    ];
    expected.sort();
    assert_eq!(store.blob_refs().await.expect("blob_refs"), expected);
}

/// Reset sends a succeeded or failed job back to pending (cleanup removed its artifacts), with a
/// `retry_requested` event; it leaves pending, running and cancelled jobs alone.
pub async fn reset_returns_finished_jobs_to_pending(store: &dyn StateStore) {
    let token = running_job(store, "reset").await;
    expect_not_allowed(
        store.reset(token.job_id, "x").await.expect("reset"),
        "reset of a running job",
    );
    store
        .complete(&token)
        .await
        .expect("complete")
        .expect("current token");
    let reset = store
        .reset(token.job_id, "cleanup removed a corrupt artifact")
        .await
        .expect("reset")
        .expect("succeeded is resettable");
    assert_eq!(reset.status, Status::Pending);
    assert_eq!(reset.ingestion_phase, None);
    assert_eq!(read_job(store, token.job_id).await, reset);
    let events = store.events(token.job_id).await.expect("events");
    assert_eq!(
        events[events.len() - 2].kind,
        EventKind::RetryRequested {
            reason: "cleanup removed a corrupt artifact".to_string()
        }
    );
    assert_eq!(
        events[events.len() - 1].kind,
        EventKind::StatusChanged {
            from: Some(Status::Succeeded),
            to: Status::Pending,
            reason: "cleanup removed a corrupt artifact".to_string()
        }
    );
    expect_not_allowed(
        store.reset(token.job_id, "again").await.expect("reset"),
        "reset of a pending job",
    );

    let token = claim(store, token.job_id).await;
    store
        .fail(&token, error_info())
        .await
        .expect("fail")
        .expect("current token");
    let reset = store
        .reset(token.job_id, "cleanup")
        .await
        .expect("reset")
        .expect("failed is resettable");
    assert_eq!(reset.status, Status::Pending);

    let cancelled = submit_new(store, "reset-cancelled").await;
    store
        .cancel(cancelled.id)
        .await
        .expect("cancel")
        .expect("pending is cancellable");
    expect_not_allowed(
        store.reset(cancelled.id, "x").await.expect("reset"),
        "reset of a cancelled job",
    );
    let unknown = JobId::new();
    assert_eq!(
        store.reset(unknown, "x").await.expect("reset").map(|_| ()),
        Err(Rejected::NotFound(unknown))
    );
}

/// Delete removes every record of a job that is not running and nothing of any other job; its
/// key becomes free, so submitting the source again makes a new job.
pub async fn delete_removes_every_record_of_a_job(store: &dyn StateStore) {
    let token = running_job(store, "delete-me").await;
    let keeper = running_job(store, "keep-me").await;
    let shared = "blobs/aa/shared.mp4";
    let own = "blobs/bb/own.m4a";
    store
        .set_phase(&token, Phase::Storing)
        .await
        .expect("set_phase")
        .expect("current token");
    store
        .record_checkpoint(&token, &checkpoint("download", 1), Some(&media_metadata()))
        .await
        .expect("record_checkpoint")
        .expect("current token");
    for (token, blobs) in [
        (&token, [shared, own]),
        (&keeper, [shared, "blobs/cc/keep.m4a"]),
    ] {
        store
            .record_checkpoint(token, &store_checkpoint(token.job_id, &blobs, 2), None)
            .await
            .expect("record_checkpoint")
            .expect("current token");
    }
    store
        .set_progress(
            &token,
            &crate::model::job::JobProgress {
                bytes_done: 1,
                bytes_total: None,
                rate_bytes_per_s: 1,
                updated_at: Timestamp(1),
            },
        )
        .await
        .expect("set_progress")
        .expect("current token");
    store.append_log(
        token.job_id,
        LogLine {
            at: Timestamp(1),
            level: "INFO".to_string(),
            message: "doomed".to_string(),
        },
    );
    expect_not_allowed(
        store.delete_job(token.job_id).await.expect("delete"),
        "delete of a running job",
    );
    assert!(store.job(token.job_id).await.expect("job").is_some());
    store
        .complete(&token)
        .await
        .expect("complete")
        .expect("current token");
    let keeper_events = store.events(keeper.job_id).await.expect("events");

    let deleted = store
        .delete_job(token.job_id)
        .await
        .expect("delete")
        .expect("a succeeded job is deletable");
    assert_eq!(deleted.id, token.job_id);
    let id = token.job_id;
    assert_eq!(store.job(id).await.expect("job"), None);
    assert_eq!(store.job_by_key("delete-me").await.expect("key"), None);
    assert_eq!(store.checkpoints(id).await.expect("checkpoints"), vec![]);
    assert_eq!(store.events(id).await.expect("events"), vec![]);
    assert_eq!(store.metadata(id).await.expect("metadata"), None);
    assert_eq!(store.logs(id).await.expect("logs"), vec![]);
    assert_eq!(store.progress(id).await.expect("progress"), None);
    assert_eq!(store.jobs_referencing(own).await.expect("refs"), vec![]);
    assert_eq!(
        store.jobs_referencing(shared).await.expect("refs"),
        vec![keeper.job_id]
    );
    let all = store
        .jobs(&JobFilter {
            status: None,
            limit: usize::MAX,
        })
        .await
        .expect("jobs");
    assert_eq!(
        all.iter().map(|job| job.id).collect::<Vec<_>>(),
        vec![keeper.job_id]
    );
    let succeeded = store
        .jobs(&JobFilter {
            status: Some(Status::Succeeded),
            limit: usize::MAX,
        })
        .await
        .expect("jobs");
    assert_eq!(succeeded, vec![]);
    assert_eq!(
        store.events(keeper.job_id).await.expect("events"),
        keeper_events
    );
    assert_eq!(
        store.delete_job(id).await.expect("delete").map(|_| ()),
        Err(Rejected::NotFound(id))
    );

    let again = submit_new(store, "delete-me").await;
    assert_ne!(again.id, id, "a deleted job's key makes a new job");
}

/// The incident log numbers its lines from 0 and reads them back as written, oldest first.
pub async fn incidents_are_appended_in_order(store: &dyn StateStore) {
    assert_eq!(store.incidents().await.expect("incidents"), vec![]);
    let job = submit_new(store, "incident").await;
    let lines = [
        (
            "deleted_object",
            Some(job.id),
            Some("blobs/aa/x.mp4"),
            "corrupt",
        ),
        ("removed_scratch", None, Some("/scratch/x"), "stale"),
        ("reset_job", Some(job.id), None, "artifacts removed"),
    ];
    for (action, job, key, reason) in lines {
        store
            .record_incident(NewIncident {
                actor: "ops".to_string(),
                action: action.to_string(),
                job,
                key: key.map(str::to_string),
                reason: reason.to_string(),
            })
            .await
            .expect("record_incident");
    }
    let incidents = store.incidents().await.expect("incidents");
    assert_eq!(incidents.len(), lines.len());
    for (index, (incident, (action, job, key, reason))) in incidents.iter().zip(lines).enumerate() {
        assert_eq!(incident.seq, u64::try_from(index).expect("small"));
        assert_eq!(incident.actor, "ops");
        assert_eq!(incident.action, action);
        assert_eq!(incident.job, job);
        assert_eq!(incident.key.as_deref(), key);
        assert_eq!(incident.reason, reason);
    }
    assert!(incidents.windows(2).all(|pair| pair[0].at <= pair[1].at));
}

/// `submit_batch` applies each request as `submit` would (idempotent by key, a key twice in one
/// batch is one job), retries only transient failures when asked to, records every submitted job
/// under its backfill, and takes batches longer than one transaction.
pub async fn submit_batch_is_submit_in_bulk(store: &dyn StateStore) {
    let backfill = store.open_backfill("/manifests/a.txt").await.expect("open");
    let again = store
        .open_backfill("/manifests/a.txt")
        .await
        .expect("reopen");
    assert_eq!(again, backfill, "the same manifest is the same backfill");
    // Backfill ids are ULIDs too: the listing's order is checked across a millisecond.
    next_millisecond().await;
    let other = store.open_backfill("/manifests/b.txt").await.expect("open");
    assert_ne!(other.id, backfill.id);
    assert_eq!(
        store.backfills().await.expect("backfills"),
        vec![backfill.clone(), other.clone()]
    );

    let options = BatchOptions {
        resubmit: Resubmit::TransientFailures,
        backfill: Some(backfill.id),
    };
    let first = store
        .submit_batch(&[request("a"), request("b"), request("a")], &options)
        .await
        .expect("submit_batch");
    let outcomes: Vec<_> = first.iter().map(|submitted| submitted.outcome).collect();
    assert_eq!(
        outcomes,
        [
            SubmitOutcome::Created,
            SubmitOutcome::Created,
            SubmitOutcome::Existing
        ]
    );
    assert_eq!(first[0].job.id, first[2].job.id, "one key, one job");
    assert_eq!(read_job(store, first[0].job.id).await, first[0].job);
    let mut expected = vec![first[0].job.id, first[1].job.id];
    expected.sort();
    assert_eq!(
        store
            .backfill_jobs(backfill.id)
            .await
            .expect("backfill_jobs"),
        expected
    );
    assert!(
        store
            .backfill_jobs(other.id)
            .await
            .expect("backfill_jobs")
            .is_empty()
    );

    // Finished jobs of every kind, then a re-run that retries only the transient failure.
    let transient = running_job(store, "transient").await;
    let timeout = ErrorInfo {
        class: "network_timeout".to_string(),
        message: "timed out".to_string(),
    };
    store
        .fail(&transient, timeout)
        .await
        .expect("fail")
        .expect("token");
    let permanent = running_job(store, "permanent").await;
    store
        .fail(&permanent, error_info())
        .await
        .expect("fail")
        .expect("token");
    let cancelled = submit_new(store, "cancelled").await;
    store
        .cancel(cancelled.id)
        .await
        .expect("cancel")
        .expect("pending");
    let done = running_job(store, "done").await;
    store
        .complete(&done)
        .await
        .expect("complete")
        .expect("token");
    let rerun = [
        request("transient"),
        request("permanent"),
        request("cancelled"),
        request("done"),
    ];
    let resumed = store
        .submit_batch(&rerun, &options)
        .await
        .expect("submit_batch");
    let states: Vec<_> = resumed
        .iter()
        .map(|submitted| (submitted.outcome, submitted.job.status))
        .collect();
    assert_eq!(
        states,
        [
            (SubmitOutcome::Retried, Status::Pending),
            (SubmitOutcome::Existing, Status::Failed),
            (SubmitOutcome::Existing, Status::Cancelled),
            (SubmitOutcome::Existing, Status::Succeeded),
        ]
    );

    // The default is `submit`'s: every failed or cancelled job is retried, reingest when asked.
    let mut everything = rerun.to_vec();
    everything[3].reingest = true;
    let retried = store
        .submit_batch(&everything, &BatchOptions::default())
        .await
        .expect("submit_batch");
    let outcomes: Vec<_> = retried.iter().map(|submitted| submitted.outcome).collect();
    assert_eq!(
        outcomes,
        [
            SubmitOutcome::Existing,
            SubmitOutcome::Retried,
            SubmitOutcome::Retried,
            SubmitOutcome::Reingested
        ]
    );
    assert!(
        retried
            .iter()
            .all(|submitted| submitted.job.status == Status::Pending)
    );

    // Longer than one transaction: every request is applied, in order.
    let many: Vec<SubmitRequest> = (0..SUBMIT_BATCH_MAX + 3)
        .map(|index| request(&format!("many-{index}")))
        .collect();
    let submitted = store
        .submit_batch(&many, &BatchOptions::default())
        .await
        .expect("submit_batch");
    assert_eq!(submitted.len(), many.len());
    for (request, submitted) in many.iter().zip(&submitted) {
        assert_eq!(submitted.outcome, SubmitOutcome::Created);
        assert_eq!(submitted.job.key, request.key);
    }
}

/// A job holds at most `events_max()` events: past the bound the oldest are folded into its
/// summary in the append's own write, so the summary and the events held always add up to the
/// whole history (numbered with no gap), the counts in the summary are the folded events', a
/// refused write changes neither, and deleting the job removes the summary too.
pub async fn events_are_bounded_and_folded_into_a_summary(store: &dyn StateStore) {
    let events_max = store.events_max();
    let token = running_job(store, "bounded").await;
    let id = token.job_id;
    assert_eq!(store.event_summary(id).await.expect("summary"), None);
    let rounds = events_max * 2 + 5;
    let mut appended = 3; // submitted, pending, running
    for round in 0..rounds {
        store
            .record_step_event(&token, "download", StepEvent::Started)
            .await
            .expect("step event")
            .expect("current token");
        appended += 1;
        if round % 4 == 0 {
            store
                .record_step_event(
                    &token,
                    "store",
                    StepEvent::ObjectsWritten {
                        keys: vec![
                            format!("blobs/aa/{}.mp4", round % 8),
                            "jobs/x/manifest.json".into(),
                        ],
                    },
                )
                .await
                .expect("step event")
                .expect("current token");
            appended += 1;
        }
        let held = store.events(id).await.expect("events");
        assert!(
            u64::try_from(held.len()).expect("small") <= events_max,
            "{} events held, bound {events_max}",
            held.len()
        );
    }

    let job = read_job(store, id).await;
    assert_eq!(job.events_next, appended);
    let held = store.events(id).await.expect("events");
    let summary = store
        .event_summary(id)
        .await
        .expect("summary")
        .expect("a history past the bound has a summary");
    assert_eq!(summary.job_id, id);
    assert_eq!(
        summary.events_compacted + u64::try_from(held.len()).expect("small"),
        job.events_next,
        "the summary and the events held are the whole history"
    );
    for (offset, event) in held.iter().enumerate() {
        assert_eq!(
            event.seq,
            summary.events_compacted + u64::try_from(offset).expect("small"),
            "gapless after the summary"
        );
    }
    assert_eq!(
        summary.kinds.iter().map(|(_, count)| count).sum::<u64>(),
        summary.events_compacted
    );
    // The claim was folded: a replay starts from the summary's status.
    assert_eq!(summary.status, Some(Status::Running));
    let held_started = held
        .iter()
        .filter(|event| matches!(event.kind, EventKind::StepStarted { .. }))
        .count();
    let download = summary
        .steps
        .iter()
        .find(|step| step.step == "download")
        .expect("download in the summary");
    assert_eq!(
        download.executed + u64::try_from(held_started).expect("small"),
        rounds,
        "every start is counted once, folded or held"
    );
    let manifest_writes_held = held
        .iter()
        .filter(|event| matches!(event.kind, EventKind::ObjectsWritten { .. }))
        .count();
    let manifest_writes_folded = summary
        .steps
        .iter()
        .flat_map(|step| &step.objects_written)
        .find(|(key, _)| key == "jobs/x/manifest.json")
        .map_or(0, |(_, count)| *count);
    assert_eq!(
        manifest_writes_folded + u64::try_from(manifest_writes_held).expect("small"),
        rounds.div_ceil(4)
    );

    // A refused write past the bound changes nothing.
    let stale = LeaseToken {
        job_id: id,
        fencing_token: token.fencing_token + 1,
    };
    expect_fenced(
        store
            .record_step_event(&stale, "download", StepEvent::Started)
            .await
            .expect("step event"),
        "a write under a future token",
    );
    assert_eq!(store.events(id).await.expect("events"), held);
    assert_eq!(
        store.event_summary(id).await.expect("summary"),
        Some(summary)
    );

    store
        .complete(&token)
        .await
        .expect("complete")
        .expect("current token");
    store
        .delete_job(id)
        .await
        .expect("delete")
        .expect("a succeeded job is deletable");
    assert_eq!(store.event_summary(id).await.expect("summary"), None);
    assert_eq!(store.events(id).await.expect("events"), vec![]);
}

/// A download checkpoint whose video is in scratch, an extract checkpoint, and a store checkpoint
/// that stored the same video bytes as a blob (and the audio).
fn rewind_checkpoints(id: JobId) -> [Checkpoint; 3] {
    let video = Hash::of(b"video");
    let download = Checkpoint {
        step: "download".to_string(),
        definition_hash: Hash::of(b"download"),
        input_hash: Hash::of(b"source"),
        outputs: vec![StepOutput {
            name: "video".to_string(),
            location: Location::Scratch("/scratch/original".to_string()),
            size: 100,
            blake3: video,
            change_token: ChangeToken::File {
                inode: 1,
                size: 100,
                mtime_ns: 1,
            },
        }],
        recorded_at: Timestamp(1),
    };
    let mut store = store_checkpoint(id, &["blobs/aa/audio.m4a"], 3);
    store.outputs.insert(
        0,
        StepOutput {
            name: "video".to_string(),
            location: Location::Object("blobs/vv/video.mp4".to_string()),
            size: 100,
            blake3: video,
            change_token: ChangeToken::ETag("\"v\"".to_string()),
        },
    );
    [download, checkpoint("extract", 2), store]
}

/// `retry_from` sends a finished job back to pending with the step's checkpoint and the later
/// ones gone (the blob references with the store checkpoint), records each discard, re-points a
/// kept scratch output at the stored copy of its bytes, and is refused for a job that is pending,
/// running or unknown, changing nothing.
pub async fn retry_from_discards_the_step_and_those_after_it(store: &dyn StateStore) {
    let token = running_job(store, "rewind").await;
    let id = token.job_id;
    let [download, extract, stored] = rewind_checkpoints(id);
    for checkpoint in [&download, &extract, &stored] {
        store
            .record_checkpoint(&token, checkpoint, None)
            .await
            .expect("record_checkpoint")
            .expect("current token");
    }
    let later = vec!["store".to_string()];
    let running = read_job(store, id).await;
    expect_not_allowed(
        store
            .retry_from(id, "extract", &later, "too early")
            .await
            .expect("retry_from"),
        "retry --from of a running job",
    );
    assert_eq!(read_job(store, id).await, running);
    assert_eq!(store.checkpoints(id).await.expect("checkpoints").len(), 3);
    store
        .complete(&token)
        .await
        .expect("complete")
        .expect("current token");
    let before = read_job(store, id).await.events_next;

    let retried = store
        .retry_from(id, "extract", &later, "by conformance")
        .await
        .expect("retry_from")
        .expect("a succeeded job may be retried from a step");

    assert_eq!(retried.status, Status::Pending);
    assert_eq!(retried.ingestion_phase, None);
    let checkpoints = store.checkpoints(id).await.expect("checkpoints");
    assert_eq!(checkpoints.len(), 1, "{checkpoints:?}");
    assert_eq!(checkpoints[0].step, "download");
    assert_eq!(
        checkpoints[0].outputs[0].location,
        Location::Object("blobs/vv/video.mp4".to_string()),
        "the video now stands at its stored copy"
    );
    assert_eq!(
        checkpoints[0].outputs[0].change_token,
        stored.outputs[0].change_token
    );
    assert_eq!(checkpoints[0].outputs[0].blake3, download.outputs[0].blake3);
    assert_eq!(
        store
            .jobs_referencing("blobs/aa/audio.m4a")
            .await
            .expect("refs"),
        vec![],
        "the blob references went with the store checkpoint"
    );
    let events = store.events(id).await.expect("events");
    let new: Vec<&Event> = events.iter().filter(|event| event.seq >= before).collect();
    assert_eq!(
        new.iter()
            .map(|event| event.kind.name())
            .collect::<Vec<_>>(),
        vec![
            "step_redone",
            "step_redone",
            "retry_requested",
            "status_changed"
        ]
    );
    for (event, step) in new.iter().zip(["extract", "store"]) {
        assert!(
            matches!(&event.kind, EventKind::StepRedone { step: redone, cause, .. }
                if redone == step && cause == "checkpoint_discarded"),
            "{event:?}"
        );
    }

    let pending = read_job(store, id).await;
    expect_not_allowed(
        store
            .retry_from(id, "download", &[], "again")
            .await
            .expect("retry_from"),
        "retry --from of a pending job",
    );
    assert_eq!(read_job(store, id).await, pending);
    assert_eq!(store.checkpoints(id).await.expect("checkpoints").len(), 1);
    let unknown = JobId(u128::MAX);
    assert_eq!(
        store
            .retry_from(unknown, "extract", &later, "x")
            .await
            .expect("retry_from")
            .map(|_| ()),
        Err(Rejected::NotFound(unknown))
    );
}

/// `prune_jobs` removes the records of finished jobs last updated before the cutoff, as
/// `delete_job` does, but their blob references stay beside a tombstone; it refuses (changing
/// nothing) a pending, running, unknown or too recent job; and the pruned job's key is free.
pub async fn prune_removes_a_finished_job_but_keeps_its_blob_references(store: &dyn StateStore) {
    let old = running_job(store, "prune-old").await;
    let running = running_job(store, "prune-running").await;
    let pending = submit_new(store, "prune-pending").await;
    let shared = "blobs/aa/shared.mp4";
    let own = "blobs/bb/own.m4a";
    store
        .record_checkpoint(&old, &checkpoint("download", 1), Some(&media_metadata()))
        .await
        .expect("record_checkpoint")
        .expect("current token");
    for (token, blobs) in [
        (&old, [shared, own]),
        (&running, [shared, "blobs/cc/c.m4a"]),
    ] {
        store
            .record_checkpoint(token, &store_checkpoint(token.job_id, &blobs, 2), None)
            .await
            .expect("record_checkpoint")
            .expect("current token");
    }
    store.append_log(
        old.job_id,
        LogLine {
            at: Timestamp(1),
            level: "INFO".to_string(),
            message: "pruned soon".to_string(),
        },
    );
    let finished = store
        .complete(&old)
        .await
        .expect("complete")
        .expect("current token");
    let refs_before = store.blob_refs().await.expect("blob_refs");

    // Updated after the cutoff: not old enough.
    let too_recent = store
        .prune_jobs(&[old.job_id], finished.updated_at)
        .await
        .expect("prune_jobs");
    assert!(
        matches!(too_recent.as_slice(), [Err(Rejected::UpdatedSince { .. })]),
        "{too_recent:?}"
    );
    assert_eq!(read_job(store, old.job_id).await, finished);

    let unknown = JobId(u128::MAX);
    let cutoff = Timestamp::now().plus_ms(60_000);
    let running_before = read_job(store, running.job_id).await;
    let outcomes = store
        .prune_jobs(&[old.job_id, running.job_id, pending.id, unknown], cutoff)
        .await
        .expect("prune_jobs");
    assert_eq!(outcomes.len(), 4);
    let tombstone = outcomes[0]
        .clone()
        .expect("a succeeded job older than the cutoff");
    expect_not_allowed(outcomes[1].clone(), "prune of a running job");
    expect_not_allowed(outcomes[2].clone(), "prune of a pending job");
    assert_eq!(outcomes[3], Err(Rejected::NotFound(unknown)));

    let id = old.job_id;
    assert_eq!(tombstone.id, id);
    assert_eq!(tombstone.status, Status::Succeeded);
    assert_eq!(tombstone.key, "prune-old");
    assert_eq!(tombstone.updated_at, finished.updated_at);
    assert_eq!(tombstone.blobs, vec![shared.to_string(), own.to_string()]);
    assert_eq!(tombstone.manifest, Some(format!("jobs/{id}/manifest.json")));
    assert_eq!(store.pruned_job(id).await.expect("pruned"), Some(tombstone));
    assert_eq!(store.job(id).await.expect("job"), None);
    assert_eq!(store.job_by_key("prune-old").await.expect("key"), None);
    assert_eq!(store.checkpoints(id).await.expect("checkpoints"), vec![]);
    assert_eq!(store.events(id).await.expect("events"), vec![]);
    assert_eq!(store.event_summary(id).await.expect("summary"), None);
    assert_eq!(store.metadata(id).await.expect("metadata"), None);
    assert_eq!(store.logs(id).await.expect("logs"), vec![]);
    assert_eq!(
        store.blob_refs().await.expect("blob_refs"),
        refs_before,
        "the pruned job's blobs stay referenced"
    );
    assert!(
        store
            .jobs_referencing(own)
            .await
            .expect("refs")
            .contains(&id)
    );
    assert_eq!(read_job(store, running.job_id).await, running_before);
    assert_eq!(read_job(store, pending.id).await.status, Status::Pending);
    assert_eq!(store.pruned_job(pending.id).await.expect("pruned"), None);
    assert_eq!(
        store.prune_jobs(&[id], cutoff).await.expect("prune_jobs"),
        vec![Err(Rejected::NotFound(id))]
    );

    let again = submit_new(store, "prune-old").await;
    assert_ne!(again.id, id, "a pruned job's key makes a new job");
}

/// `narra export` of `source` then `narra import` into the empty `target` (`engine::transfer`):
/// every record reads back the same, an import run again writes nothing, a record the target
/// holds with other content is a conflict, and the target goes on from where the source was.
pub async fn export_then_import_reproduces_every_record(
    source: &dyn StateStore,
    target: &dyn StateStore,
) {
    use crate::engine::transfer;
    use crate::store::transfer::ImportOutcome;

    // A succeeded job with every kind of record, then pruned; another succeeded and kept.
    let pruned = running_job(source, "transfer-pruned").await;
    let kept = running_job(source, "transfer-kept").await;
    for (token, blob) in [
        (&pruned, "blobs/aa/pruned.mp4"),
        (&kept, "blobs/bb/kept.mp4"),
    ] {
        source
            .record_checkpoint(token, &checkpoint("download", 1), Some(&media_metadata()))
            .await
            .expect("record_checkpoint")
            .expect("current token");
        source
            .record_checkpoint(token, &store_checkpoint(token.job_id, &[blob], 2), None)
            .await
            .expect("record_checkpoint")
            .expect("current token");
        source
            .set_progress(
                token,
                &JobProgress {
                    bytes_done: 10,
                    bytes_total: Some(20),
                    rate_bytes_per_s: 5,
                    updated_at: Timestamp(3),
                },
            )
            .await
            .expect("set_progress")
            .expect("current token");
        source.append_log(
            token.job_id,
            LogLine {
                at: Timestamp(4),
                level: "INFO".to_string(),
                message: format!("line of {}", token.job_id),
            },
        );
        source
            .complete(token)
            .await
            .expect("complete")
            .expect("current token");
    }
    source.flush_logs();
    // A finished job's first webhook queues a notice at once: a pending notice travels too.
    source
        .set_webhooks(&[(kept.job_id, "https://hooks.example/narra".to_string())])
        .await
        .expect("set_webhooks");
    assert!(
        source
            .webhook(kept.job_id)
            .await
            .expect("webhook")
            .is_some_and(|webhook| webhook.pending.is_some())
    );
    let cutoff = Timestamp::now().plus_ms(60_000);
    let tombstone = source
        .prune_jobs(&[pruned.job_id], cutoff)
        .await
        .expect("prune_jobs")
        .remove(0)
        .expect("prunable");
    let failed = running_job(source, "transfer-failed").await;
    source
        .fail(&failed, error_info())
        .await
        .expect("fail")
        .expect("current token");
    let running = running_job(source, "transfer-running").await;
    let backfill = source
        .open_backfill("/manifests/transfer.txt")
        .await
        .expect("open_backfill");
    let batch = source
        .submit_batch(
            &[
                request("transfer-backfill-1"),
                request("transfer-backfill-2"),
            ],
            &BatchOptions {
                resubmit: Resubmit::default(),
                backfill: Some(backfill.id),
            },
        )
        .await
        .expect("submit_batch");
    source
        .record_incident(NewIncident {
            actor: "tester".to_string(),
            action: "reset_job".to_string(),
            job: Some(failed.job_id),
            key: None,
            reason: "export me".to_string(),
        })
        .await
        .expect("record_incident");
    source
        .record_host_outcome(
            "transfer.example",
            running.job_id,
            &HostOutcome::Blocked {
                class: "download_blocked".to_string(),
            },
            &open_policy(),
        )
        .await
        .expect("record_host_outcome");

    let path = std::env::temp_dir().join(format!(
        "narra-conformance-export-{}-{}.jsonl",
        std::process::id(),
        JobId::new()
    ));
    let mut bytes = Vec::new();
    let exported = transfer::export(
        source,
        "conformance",
        transfer::Secrets::Included,
        &mut bytes,
    )
    .await
    .expect("export");
    assert_eq!(
        (
            exported.records.job,
            exported.records.pruned,
            exported.records.backfill
        ),
        (5, 1, 1)
    );
    assert_eq!(
        (
            exported.records.incident,
            exported.records.host,
            exported.running
        ),
        (1, 1, 1)
    );
    std::fs::write(&path, &bytes).expect("write the export");

    let (checked, summary) = transfer::import(target, &path).await.expect("import");
    assert_eq!(checked.records, exported.records);
    assert_eq!(summary.imported, exported.records, "{summary:?}");
    assert!(summary.conflicts.is_empty(), "{summary:?}");

    let all = JobFilter {
        status: None,
        limit: usize::MAX,
    };
    let jobs = source.jobs(&all).await.expect("jobs");
    assert_eq!(target.jobs(&all).await.expect("jobs"), jobs);
    for job in &jobs {
        let id = job.id;
        assert_eq!(
            target.job_by_key(&job.key).await.expect("key").as_ref(),
            Some(job)
        );
        assert_eq!(
            target.checkpoints(id).await.expect("checkpoints"),
            source.checkpoints(id).await.expect("checkpoints")
        );
        assert_eq!(
            target.events(id).await.expect("events"),
            source.events(id).await.expect("events")
        );
        assert_eq!(
            target.event_summary(id).await.expect("summary"),
            source.event_summary(id).await.expect("summary")
        );
        assert_eq!(
            target.metadata(id).await.expect("metadata"),
            source.metadata(id).await.expect("metadata")
        );
        assert_eq!(
            target.progress(id).await.expect("progress"),
            source.progress(id).await.expect("progress")
        );
        assert_eq!(
            target.logs(id).await.expect("logs"),
            source.logs(id).await.expect("logs")
        );
        assert_eq!(
            target.webhook(id).await.expect("webhook"),
            source.webhook(id).await.expect("webhook")
        );
    }
    for status in Status::ALL {
        let by_status = JobFilter {
            status: Some(status),
            limit: usize::MAX,
        };
        assert_eq!(
            target.jobs(&by_status).await.expect("jobs"),
            source.jobs(&by_status).await.expect("jobs"),
            "the status index of {status}"
        );
    }
    assert_eq!(
        target.blob_refs().await.expect("blob_refs"),
        source.blob_refs().await.expect("blob_refs")
    );
    assert_eq!(target.pruned_jobs().await.expect("pruned"), vec![tombstone]);
    assert_eq!(
        target.backfills().await.expect("backfills"),
        vec![backfill.clone()]
    );
    assert_eq!(
        target
            .backfill_jobs(backfill.id)
            .await
            .expect("backfill_jobs"),
        source
            .backfill_jobs(backfill.id)
            .await
            .expect("backfill_jobs")
    );
    assert_eq!(
        target.incidents().await.expect("incidents"),
        source.incidents().await.expect("incidents")
    );
    assert_eq!(
        target.hosts().await.expect("hosts"),
        source.hosts().await.expect("hosts")
    );

    // Run again (after an interruption, say): nothing is written twice.
    let (_, again) = transfer::import(target, &path).await.expect("import again");
    assert_eq!(again.already_present, exported.records, "{again:?}");
    assert_eq!(again.imported.total(), 0);

    // The target goes on: the pending backfill jobs are claimed with the next fencing token, and
    // the lease of the job that was running travelled with it.
    let pending = &batch[0].job;
    let (claimed, token) = target
        .claim(pending.id, &worker(9), LEASE_TTL_MS)
        .await
        .expect("claim")
        .expect("pending in the target");
    assert_eq!(token.fencing_token, pending.fencing_token + 1);
    assert_eq!(claimed.status, Status::Running);
    target
        .record_step_event(&running, "download", StepEvent::Started)
        .await
        .expect("record_step_event")
        .expect("the running job's lease holds in the target");

    // A record the target holds with other content is a conflict, and is not written.
    let conflicting =
        crate::store::transfer::Record::Job(Box::new(crate::store::transfer::JobRecords {
            job: Job {
                id: JobId::new(),
                ..jobs[0].clone()
            },
            checkpoints: vec![],
            events: vec![],
            event_summary: None,
            metadata: None,
            progress: None,
            logs: vec![],
            blobs: vec![],
            webhook: None,
        }));
    let outcomes = target.import(&[conflicting]).await.expect("import");
    assert!(
        matches!(&outcomes[..], [ImportOutcome::Conflict(reason)] if reason.contains(&jobs[0].key)),
        "{outcomes:?}"
    );
    assert_eq!(target.jobs(&all).await.expect("jobs").len(), jobs.len());

    // A file cut short is refused before anything is written.
    std::fs::write(&path, &bytes[..bytes.len() - 10]).expect("write");
    let error = transfer::check(&path).expect_err("a file cut short");
    assert!(error.to_string().contains("cut short"), "{error}");
    let _ = std::fs::remove_file(&path);
}

fn delivery_of(notice: &crate::model::job::Notice, attempt: u32, ok: bool) -> Delivery {
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

/// Every terminal transition of a job with a webhook queues exactly one notice of that status, in
/// the transition's transaction; a job without a webhook queues none, and neither does a
/// transition that is not terminal.
pub async fn terminal_transitions_queue_one_webhook_notice_each(store: &dyn StateStore) {
    let watched = submit_new(store, "watched").await;
    let unwatched = submit_new(store, "unwatched").await;
    store
        .set_webhooks(&[(watched.id, "https://hooks.example.com/a".to_string())])
        .await
        .expect("set_webhooks");
    let webhook = store.webhook(watched.id).await.expect("read").expect("set");
    assert_eq!(webhook.url, "https://hooks.example.com/a");
    assert!(
        webhook.pending.is_none(),
        "a pending job has nothing to tell"
    );
    assert!(store.webhook(unwatched.id).await.expect("read").is_none());

    let token = claim(store, watched.id).await;
    assert!(
        store
            .webhook(watched.id)
            .await
            .expect("read")
            .unwrap()
            .pending
            .is_none()
    );
    store
        .fail(&token, error_info())
        .await
        .expect("fail")
        .expect("allowed");
    let unwatched_token = claim(store, unwatched.id).await;
    store
        .complete(&unwatched_token)
        .await
        .expect("complete")
        .expect("allowed");
    assert!(store.webhook(unwatched.id).await.expect("read").is_none());
    let failed = store.webhook(watched.id).await.expect("read").unwrap();
    let notice = failed.pending.clone().expect("the failure queued a notice");
    assert_eq!(notice.status, Status::Failed);
    assert_eq!(notice.error, Some(error_info()));
    assert_eq!(notice.attempts, 0);

    // Retried and finished again: a new notice, with a new delivery id, replaces the old one.
    store
        .retry(watched.id, "again")
        .await
        .expect("retry")
        .expect("allowed");
    let token = claim(store, watched.id).await;
    store
        .complete(&token)
        .await
        .expect("complete")
        .expect("allowed");
    let succeeded = store.webhook(watched.id).await.expect("read").unwrap();
    let second = succeeded.pending.expect("the success queued a notice");
    assert_eq!(second.status, Status::Succeeded);
    assert_eq!(second.error, None);
    assert_ne!(second.delivery_id, notice.delivery_id);
    // Cancelling a pending job is terminal too.
    let cancelled = submit_new(store, "cancelled").await;
    store
        .set_webhooks(&[(cancelled.id, "https://hooks.example.com/c".to_string())])
        .await
        .expect("set_webhooks");
    store
        .cancel(cancelled.id)
        .await
        .expect("cancel")
        .expect("allowed");
    let notice = store
        .webhook(cancelled.id)
        .await
        .expect("read")
        .unwrap()
        .pending
        .expect("cancelling queued a notice");
    assert_eq!(notice.status, Status::Cancelled);
}

/// A due notice is claimed by one notifier at a time (the claim moves its due time ahead); a
/// failed attempt waits until its retry time, a delivered notice is cleared, and every attempt
/// stays in the record.
pub async fn notices_are_claimed_once_and_retried_until_delivered(store: &dyn StateStore) {
    assert_eq!(
        store
            .claim_notice(Timestamp::now(), 60_000)
            .await
            .expect("claim"),
        ClaimNotice::Wait { until: None },
        "no webhook, nothing to claim"
    );
    let job = submit_new(store, "notified").await;
    store
        .set_webhooks(&[(job.id, "https://hooks.example.com/n".to_string())])
        .await
        .expect("set_webhooks");
    let token = claim(store, job.id).await;
    store
        .complete(&token)
        .await
        .expect("complete")
        .expect("allowed");
    let now = Timestamp::now().plus_ms(1);
    let ClaimNotice::Claimed(webhook) = store.claim_notice(now, 60_000).await.expect("claim")
    else {
        panic!("a due notice is claimed");
    };
    assert_eq!(webhook.job_id, job.id);
    let notice = webhook.pending.clone().expect("the claimed notice");
    assert_eq!(notice.next_attempt_at, now.plus_ms(60_000));
    assert_eq!(
        store.claim_notice(now, 60_000).await.expect("claim"),
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
    let waiting = store.webhook(job.id).await.expect("read").unwrap();
    let pending = waiting
        .pending
        .clone()
        .expect("still pending after a failure");
    assert_eq!((pending.attempts, pending.next_attempt_at), (1, retry_at));
    assert_eq!(waiting.deliveries.len(), 1);
    assert_eq!(
        store.claim_notice(now, 60_000).await.expect("claim"),
        ClaimNotice::Wait {
            until: Some(retry_at)
        }
    );
    let ClaimNotice::Claimed(again) = store.claim_notice(retry_at, 60_000).await.expect("claim")
    else {
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
    let delivered = store.webhook(job.id).await.expect("read").unwrap();
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
        store
            .claim_notice(retry_at.plus_ms(3_600_000), 60_000)
            .await
            .expect("claim"),
        ClaimNotice::Wait { until: None }
    );
}

/// A job that finished before its webhook was recorded gets a notice at once (a fast worker
/// cannot make a submission miss it); a second `set_webhooks` changes the URL without a second
/// notice; deleting the job removes its webhook and its pending notice.
pub async fn a_webhook_set_on_a_finished_job_gets_a_notice_and_goes_with_its_job(
    store: &dyn StateStore,
) {
    let job = submit_new(store, "fast").await;
    let token = claim(store, job.id).await;
    store
        .complete(&token)
        .await
        .expect("complete")
        .expect("allowed");
    store
        .set_webhooks(&[(job.id, "https://hooks.example.com/1".to_string())])
        .await
        .expect("set_webhooks");
    let first = store
        .webhook(job.id)
        .await
        .expect("read")
        .unwrap()
        .pending
        .expect("a notice for the finished job");
    assert_eq!(first.status, Status::Succeeded);
    store
        .set_webhooks(&[
            (job.id, "https://hooks.example.com/2".to_string()),
            (JobId::new(), "https://hooks.example.com/nobody".to_string()),
        ])
        .await
        .expect("set_webhooks");
    let updated = store.webhook(job.id).await.expect("read").unwrap();
    assert_eq!(updated.url, "https://hooks.example.com/2");
    assert_eq!(
        updated.pending.map(|notice| notice.delivery_id),
        Some(first.delivery_id)
    );

    store
        .delete_job(job.id)
        .await
        .expect("delete")
        .expect("allowed");
    assert!(store.webhook(job.id).await.expect("read").is_none());
    assert_eq!(
        store
            .claim_notice(Timestamp::now(), 60_000)
            .await
            .expect("claim"),
        ClaimNotice::Wait { until: None },
        "a deleted job's notice is gone with it"
    );
}
