//! Scheduling through the store: claims by priority then age, an automatic retry that waits for
//! its time, a hold that gives the attempt back, and the per-host limits and breakers that gate
//! claims.

use std::collections::BTreeSet;

use super::fixtures::{
    Answer, claim_next_answer, claim_next_as, claim_next_with, next_millisecond, open_policy,
    request, submit_new, worker,
};
use crate::model::job::{Breaker, ErrorInfo, JobId, Status, Timestamp};
use crate::model::scheduling::HostOutcome;
use crate::store::{ClaimNext, StateStore};

/// Higher priority first, then oldest first; `only` limits the claim to some jobs.
pub(super) async fn claims_go_by_priority_then_age(store: &dyn StateStore) {
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
    let only: BTreeSet<JobId> = [ids[0], ids[3]].into_iter().collect();
    let claimed = claim_next_with(store, &worker(1), &open_policy(), Some(&only)).await;
    let (job, _) = claimed.expect("one of the two");
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
pub(super) async fn retry_later_waits_and_hold_gives_the_attempt_back(store: &dyn StateStore) {
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
        .accepted("the lease holder may");
    assert_eq!(job.status, Status::Pending);
    assert_eq!(job.not_before, Some(not_before));
    assert_eq!(job.error, Some(error.clone()));
    assert_eq!(job.attempts, 1);
    assert_eq!(
        claim_next_answer(store, &worker(1), &open_policy(), None).await,
        ClaimNext::Wait {
            until: Some(not_before)
        }
    );
    let stale = store.retry_later(&token, error, not_before).await;
    stale.fenced("retry_later");
    // An operator's retry runs it now.
    store
        .cancel(delayed)
        .await
        .accepted("pending is cancellable");
    let retried = store.retry(delayed, "operator").await;
    let retried = retried.accepted("cancelled is retryable");
    assert_eq!(retried.not_before, None);

    let (_, token) = claim_next_as(store, &worker(2)).await.expect("claimed now");
    let held = store.hold(&token, "held: breaker open", None).await;
    let held = held.accepted("the lease holder may");
    assert_eq!(held.status, Status::Pending);
    assert_eq!(held.attempts, 1, "the held run's attempt is given back");
    assert!(held.lease.is_none());
}

/// A host at its concurrency limit or behind an open breaker starts no job; other hosts do; the
/// breaker's state reads back through `hosts`.
pub(super) async fn host_limits_and_breakers_gate_claims(store: &dyn StateStore) {
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
    let claimed = claim_next_with(store, &worker(1), &policy, None).await;
    let (first, first_token) = claimed.expect("claimed");
    assert_eq!(first.id, on_a[0]);
    let claimed = claim_next_with(store, &worker(1), &policy, None).await;
    let (second, _) = claimed.expect("claimed");
    assert_eq!(second.id, on_b, "host a is at its limit; host b is not");
    assert_eq!(
        claim_next_answer(store, &worker(1), &policy, None).await,
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
    let blocked = ErrorInfo {
        class: "download_blocked".to_string(),
        message: "HTTP 403".to_string(),
    };
    let failed = store.fail(&first_token, blocked).await;
    failed.accepted("the lease holder may");
    let verdict = store
        .record_host_outcome(host, on_a[0], &refused, &policy)
        .await
        .expect("record");
    assert!(verdict.opened, "the second refusal in a row opens it");
    match claim_next_answer(store, &worker(1), &policy, None).await {
        ClaimNext::Wait { until: Some(until) } => assert!(until > Timestamp::now()),
        other => panic!("host a's jobs are held while its breaker is open: {other:?}"),
    }
    let hosts = store.hosts().await.expect("hosts");
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].host, host);
    assert_eq!(hosts[0].opened_total, 1);
    assert!(matches!(hosts[0].breaker, Breaker::Open { .. }));
    let untouched = store.job(on_a[1]).await.expect("read").expect("exists");
    assert_eq!(untouched.attempts, 0, "held jobs spend no attempt");
}
