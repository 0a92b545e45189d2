//! Whom a death is charged to (`model::attribution`), through the store: a reclaimed orphan is
//! charged only if it ran alone, three deaths at the same point quarantine it, and a shared
//! store's takeover is charged only if its holder stays silent.

use super::fixtures::{
    Answer, LEASE_TTL_MS, checkpoint, claim_next_as, next_millisecond, read_job, submit_new, worker,
};
use crate::model::job::{Job, JobId, JobProgress, Phase, Status, Timestamp};
use crate::store::StateStore;

/// A reclaimed orphan once its death was charged: a shared store's takeover is provisional
/// (`model::attribution`), settled here as if two lease lengths had passed without a word from
/// its holder (a lease length of 0); a store held alone charges at once and settles nothing.
async fn reclaimed_and_settled(store: &dyn StateStore, id: JobId) -> Job {
    let reclaimed = store.reclaim_orphan(id, "died").await;
    reclaimed.accepted("running is reclaimable");
    store.settle_takeovers(0).await.expect("settle");
    read_job(store, id).await
}

/// The third death in a row at the same point fails the job as `crash_loop`; progress in between
/// starts the count again.
pub(super) async fn orphans_that_die_at_the_same_point_are_quarantined(store: &dyn StateStore) {
    let moving = submit_new(store, "moving").await.id;
    for bytes_done in [10, 20, 30, 40] {
        let (_, token) = claim_next_as(store, &worker(1)).await.expect("claimed");
        let progress = JobProgress {
            bytes_done,
            bytes_total: None,
            rate_bytes_per_s: 0,
            updated_at: Timestamp::now(),
        };
        let set = store.set_progress(&token, &progress).await;
        set.accepted("the lease holder may");
        let job = reclaimed_and_settled(store, moving).await;
        assert_eq!(job.status, Status::Pending, "progress was made each time");
        assert_eq!(job.crashes.expect("recorded").count, 1);
    }
    store.cancel(moving).await.accepted("pending");

    let stuck = submit_new(store, "stuck").await.id;
    for death in 1..=3 {
        let (_, token) = claim_next_as(store, &worker(1)).await.expect("claimed");
        let phase = store.set_phase(&token, Phase::Processing).await;
        phase.accepted("the lease holder may");
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
pub(super) async fn deaths_are_charged_only_to_jobs_that_ran_alone(store: &dyn StateStore) {
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
    let beside = claim_next_as(store, &crowded).await;
    beside.expect("claimed beside it");
    let held = read_job(store, first).await;
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
    let claimed = store.claim(other, &busy, LEASE_TTL_MS).await;
    let (busy_job, busy_token) = claimed.accepted("claimable");
    assert!(busy_job.attribution.alone);
    assert!(
        claim_next_as(store, &busy).await.is_none(),
        "a suspect is not claimed beside another job"
    );
    store.complete(&busy_token).await.accepted("holder");

    let lone = worker(3);
    let claimed = claim_next_as(store, &lone).await;
    let (suspect, token) = claimed.expect("claimed alone");
    assert_eq!(suspect.id, first);
    assert!(suspect.attribution.alone && suspect.attribution.suspect);
    assert!(
        claim_next_as(store, &lone).await.is_none(),
        "nothing is claimed beside a running suspect"
    );
    let download = checkpoint("download", 1);
    let recorded = store.record_checkpoint(&token, &download, None).await;
    recorded.accepted("the lease holder may");
    let passed = read_job(store, first).await;
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
pub(super) async fn a_takeover_is_charged_only_if_its_holder_stays_silent(store: &dyn StateStore) {
    if !store.shared() {
        return;
    }
    let id = submit_new(store, "taken").await.id;
    for comeback in ["renewal", "phase", "none"] {
        let (_, token) = claim_next_as(store, &worker(1)).await.expect("claimed");
        let taken = store.reclaim_orphan(id, "lease expired").await;
        let taken = taken.accepted("running is reclaimable");
        let takeover = taken.attribution.takeover.clone().expect("provisional");
        assert_eq!(takeover.fencing_token, token.fencing_token);
        assert_eq!(taken.crashes, None, "not charged at once");
        let settled = store.settle_takeovers(LEASE_TTL_MS).await;
        assert!(
            settled.expect("settle").is_empty(),
            "not charged within two lease lengths"
        );
        match comeback {
            "renewal" => {
                let renewed = store.renew_lease(&token, LEASE_TTL_MS).await;
                renewed.fenced("renew");
            }
            "phase" => {
                let phase = store.set_phase(&token, Phase::Storing).await;
                phase.fenced("set phase");
            }
            _ => {
                let settled = store.settle_takeovers(0).await.expect("settle");
                assert_eq!(settled.len(), 1);
                assert_eq!(settled[0].crashes.expect("charged").count, 1);
                assert_eq!(settled[0].attribution.takeover, None);
                continue;
            }
        }
        let job = read_job(store, id).await;
        assert_eq!(job.attribution.takeover, None, "its holder came back");
        assert!(store.settle_takeovers(0).await.expect("settle").is_empty());
        assert_eq!(read_job(store, id).await.crashes, None);
    }
}
