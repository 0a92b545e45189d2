//! The state-store conformance suite: what every `StateStore` implementation must do, written once
//! against the traits so that the sled store and the PostgreSQL store run the same checks.
//!
//! Test code only (compiled under `cfg(test)`): each store's tests call [`run_all`] with a factory
//! of fresh, empty stores, and each check panics with a message on the first broken promise. The
//! checks are grouped by what they hold the store to, one file an area; [`fixtures`] holds what
//! they share; `model_tests` drives both stores against a model of the runbook. The suite checks
//! what the store reads and writes; it never reaches above the store (export and import, which
//! the engine does, are `engine::transfer`'s tests).
//!
//! The suite never sleeps except between submissions whose order it checks
//! ([`fixtures::next_millisecond`]).

mod attribution;
mod checkpoints;
pub(crate) mod fixtures;
mod history;
mod leases;
mod maintenance;
mod model_tests;
mod scheduling;
mod submit;
mod transitions;
mod webhooks;

use std::future::Future;

pub(crate) use fixtures::claim_next_as;

use crate::store::StateStore;

/// Runs every check, each on a fresh store from `make_store`.
pub(crate) async fn run_all<S, F, Fut>(make_store: F)
where
    S: StateStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    submit::submit_is_idempotent(&make_store().await).await;
    submit::submit_retries_failed_and_cancelled_jobs(&make_store().await).await;
    submit::submit_reingests_only_when_asked(&make_store().await).await;
    submit::submit_batch_is_submit_in_bulk(&make_store().await).await;
    submit::unknown_jobs_are_not_found(&make_store().await).await;
    submit::jobs_lists_newest_first_and_filters_by_status(&make_store().await).await;

    leases::claim_starts_a_lease_with_a_growing_token(&make_store().await).await;
    leases::stale_tokens_are_fenced(&make_store().await).await;
    leases::claim_next_picks_the_oldest_pending(&make_store().await).await;
    leases::step_events_need_the_current_lease(&make_store().await).await;
    leases::progress_needs_the_current_lease(&make_store().await).await;

    transitions::leaving_running_clears_phase_and_lease(&make_store().await).await;
    transitions::cancel_pending_and_running(&make_store().await).await;
    transitions::retry_and_reingest(&make_store().await).await;
    transitions::reclaim_returns_running_to_pending(&make_store().await).await;
    transitions::reset_returns_finished_jobs_to_pending(&make_store().await).await;
    transitions::retry_from_discards_the_step_and_those_after_it(&make_store().await).await;

    history::event_history_is_complete_and_in_order(&make_store().await).await;
    history::events_are_bounded_and_folded_into_a_summary(&make_store().await).await;
    history::logs_are_ordered_and_bounded(&make_store().await).await;

    checkpoints::stale_checkpoint_writes_nothing(&make_store().await).await;
    checkpoints::checkpoints_and_metadata_read_back_equal(&make_store().await).await;
    checkpoints::reprobe_replaces_the_record_of_a_finished_job_only(&make_store().await).await;
    checkpoints::blob_refs_follow_the_store_checkpoint(&make_store().await).await;

    maintenance::delete_removes_every_record_of_a_job(&make_store().await).await;
    maintenance::incidents_are_appended_in_order(&make_store().await).await;
    maintenance::prune_removes_a_finished_job_but_keeps_its_blob_references(&make_store().await)
        .await;

    scheduling::claims_go_by_priority_then_age(&make_store().await).await;
    scheduling::retry_later_waits_and_hold_gives_the_attempt_back(&make_store().await).await;
    scheduling::host_limits_and_breakers_gate_claims(&make_store().await).await;

    attribution::orphans_that_die_at_the_same_point_are_quarantined(&make_store().await).await;
    attribution::deaths_are_charged_only_to_jobs_that_ran_alone(&make_store().await).await;
    attribution::a_takeover_is_charged_only_if_its_holder_stays_silent(&make_store().await).await;

    webhooks::terminal_transitions_queue_one_webhook_notice_each(&make_store().await).await;
    webhooks::notices_are_claimed_once_and_retried_until_delivered(&make_store().await).await;
    webhooks::a_webhook_set_on_a_finished_job_gets_a_notice_and_goes_with_its_job(
        &make_store().await,
    )
    .await;
}
