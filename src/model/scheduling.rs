//! Scheduling rules: which pending job may start now, how long an automatic retry waits, and the
//! circuit breaker of each source host.
//!
//! Pure decisions over plain data, like `model::machine`: the state store applies them inside its
//! claim and outcome transactions (`OrchestratorStore::claim_next`, `record_host_outcome`), so a
//! host's breaker, its failures and its rate clock live in the store and hold across restarts.
//!
//! The breaker of a host opens after `failures_max` failures of a blocking class
//! ([`BLOCKING_CLASSES`]) within `window_ms` with no job of the host answered in between: single
//! forbidden videos on a healthy platform do not trip it, a platform that refuses everything does.
//! While it is open the host's pending jobs are not claimed (they stay pending, attempts unspent)
//! and its running jobs that fail with a blocking class are held (sent back to pending, their
//! attempt given back). When the cool-down ends, one probe job runs; if the host answers it, the
//! breaker closes and the rest resume; if it refuses again, the breaker opens for twice as long.

use crate::model::job::{Breaker, HostFailure, HostState, JobId, Timestamp};

/// Error classes that say the host refused us, not that one input is bad.
pub const BLOCKING_CLASSES: &[&str] = &["download_blocked", "rate_limited"];

/// The name the storage backend's breaker is kept under, beside the source hosts. One
/// `storage_unavailable` failure opens it: while it is open no job is claimed at all (every job
/// ends by storing), and jobs that fail with `storage_unavailable` meanwhile are held, not failed;
/// after the cool-down one probe job tests the storage. Storing pauses globally instead of
/// failing jobs one by one.
pub const STORAGE_BREAKER: &str = "(storage)";

/// The most blocking failures kept per host (only the last `failures_max` matter).
pub const HOST_FAILURES_KEPT: usize = 64;

/// How jobs are started: per-host limits, the breaker and automatic retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulingPolicy {
    /// At most this many jobs of one source host run at once (0: no limit).
    pub host_running_max: usize,
    /// At least this long between two job starts on one source host (0: no limit); the per-host
    /// request-rate limit, since each job opens its download with one request.
    pub host_start_interval_ms: u64,
    pub breaker: BreakerPolicy,
    pub retry: RetryPolicy,
}

impl Default for SchedulingPolicy {
    fn default() -> SchedulingPolicy {
        SchedulingPolicy {
            host_running_max: 4,
            host_start_interval_ms: 0,
            breaker: BreakerPolicy::default(),
            retry: RetryPolicy::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Blocking failures in a row (within the window) that open a host's breaker (0: never).
    pub failures_max: usize,
    pub window_ms: u64,
    /// The first cool-down; it doubles each time a probe is refused, up to `cooldown_max_ms`.
    pub cooldown_ms: u64,
    pub cooldown_max_ms: u64,
}

impl BreakerPolicy {
    /// The storage backend's breaker: as this one, but one failure opens it (the store step has
    /// already waited for the storage to come back before it failed).
    pub fn for_storage(&self) -> BreakerPolicy {
        BreakerPolicy {
            failures_max: self.failures_max.min(1),
            ..self.clone()
        }
    }
}

impl Default for BreakerPolicy {
    fn default() -> BreakerPolicy {
        BreakerPolicy {
            failures_max: 5,
            window_ms: 10 * 60 * 1000,
            cooldown_ms: 60 * 1000,
            cooldown_max_ms: 60 * 60 * 1000,
        }
    }
}

/// Delays of automatic retries: `delay_initial_ms` after the first failed attempt, doubling per
/// attempt, at most `delay_max_ms`. How many attempts a job gets is its workflow's `attempts_max`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub delay_initial_ms: u64,
    pub delay_max_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            delay_initial_ms: 30 * 1000,
            delay_max_ms: 30 * 60 * 1000,
        }
    }
}

impl RetryPolicy {
    /// The delay before the attempt after attempt number `attempts` (1 for the first).
    pub fn delay_ms(&self, attempts: u32) -> u64 {
        let doublings = attempts.saturating_sub(1).min(32);
        self.delay_initial_ms
            .saturating_mul(1u64 << doublings)
            .min(self.delay_max_ms)
    }
}

/// Whether a claim may start a job of a host now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Yes; with `probe`, the job is the one that tests an open breaker's host.
    Start { probe: bool },
    /// Not before this time (an open breaker's cool-down, the rate limit).
    NotBefore(Timestamp),
    /// Not until one of the host's running jobs ends (the concurrency limit, a running probe).
    Busy,
}

/// Decides whether a job of the host whose state is `state` may start at `now`, with
/// `running_on_host` of its jobs running; `is_running` tells whether a job is running.
pub fn admit(
    state: Option<&HostState>,
    running_on_host: usize,
    policy: &SchedulingPolicy,
    now: Timestamp,
    is_running: impl Fn(JobId) -> bool,
) -> Admission {
    let Some(state) = state else {
        return admit_closed(None, running_on_host, policy, now);
    };
    match &state.breaker {
        Breaker::Closed => admit_closed(Some(state), running_on_host, policy, now),
        Breaker::Open { until, .. } if *until > now => Admission::NotBefore(*until),
        Breaker::Open { .. } => Admission::Start { probe: true },
        // A probe that is no longer running (its process died, it was released) is replaced.
        Breaker::Probing { probe, .. } if is_running(*probe) => Admission::Busy,
        Breaker::Probing { .. } => Admission::Start { probe: true },
    }
}

fn admit_closed(
    state: Option<&HostState>,
    running_on_host: usize,
    policy: &SchedulingPolicy,
    now: Timestamp,
) -> Admission {
    if policy.host_running_max > 0 && running_on_host >= policy.host_running_max {
        return Admission::Busy;
    }
    match state {
        Some(state) if state.next_start_at > now => Admission::NotBefore(state.next_start_at),
        _ => Admission::Start { probe: false },
    }
}

/// Makes `job` the probe of an open (or abandoned-probe) breaker.
pub fn start_probe(state: &mut HostState, job: JobId, policy: &SchedulingPolicy, now: Timestamp) {
    let cooldown_ms = match state.breaker {
        Breaker::Open { cooldown_ms, .. } | Breaker::Probing { cooldown_ms, .. } => cooldown_ms,
        Breaker::Closed => policy.breaker.cooldown_ms,
    };
    state.breaker = Breaker::Probing {
        probe: job,
        cooldown_ms,
    };
    state.updated_at = now;
}

/// Records a claim's start on the host's state.
pub fn record_start(
    state: &mut HostState,
    job: JobId,
    probe: bool,
    policy: &SchedulingPolicy,
    now: Timestamp,
) {
    if policy.host_start_interval_ms > 0 {
        state.next_start_at = now.plus_ms(policy.host_start_interval_ms);
    }
    if probe {
        start_probe(state, job, policy, now);
    }
    state.updated_at = now;
}

/// How a finished run of a job went, as far as its source host is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostOutcome {
    /// The host served the job (it succeeded, or failed for a reason of its own: a 404, corrupt
    /// media, a storage fault).
    Answered,
    /// The host refused: a failure of a [`BLOCKING_CLASSES`] class.
    Blocked { class: String },
}

/// Failure classes that say nothing about whether the source host serves us: its network or
/// server trouble (retried on their own), our storage, our scratch space, our own bugs, an operator.
const HOST_NEUTRAL_CLASSES: &[&str] = &[
    "network_timeout",
    "network_error",
    "server_error",
    "truncated_download",
    "forbidden_address",
    "storage_unavailable",
    "storage_auth",
    "storage_error",
    "checksum_mismatch",
    "scratch_error",
    "cancelled",
    "internal",
    "crash_loop",
    "scratch_low",
];

impl HostOutcome {
    /// What a finished run (`None` for success, else its error class) says about the storage
    /// backend's breaker ([`STORAGE_BREAKER`]).
    pub fn of_storage(class: Option<&str>) -> Option<HostOutcome> {
        match class {
            None => Some(HostOutcome::Answered),
            Some("storage_unavailable") => Some(HostOutcome::Blocked {
                class: "storage_unavailable".to_string(),
            }),
            Some(_) => None,
        }
    }

    /// The outcome a finished run stands for: `None` for success, else its error class. `None`
    /// back when the run says nothing about the host.
    pub fn of_run(class: Option<&str>) -> Option<HostOutcome> {
        match class {
            Some(class) if BLOCKING_CLASSES.contains(&class) => Some(HostOutcome::Blocked {
                class: class.to_string(),
            }),
            Some(class) if HOST_NEUTRAL_CLASSES.contains(&class) => None,
            _ => Some(HostOutcome::Answered),
        }
    }
}

/// What recording an outcome decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutcomeVerdict {
    /// The job is held: sent back to pending, its attempt given back, because the host's breaker
    /// was already open (or testing) when it failed. Its failure says nothing about the job.
    pub hold: bool,
    /// This outcome opened (or re-opened) the breaker: an escalation.
    pub opened: bool,
}

/// Records `job`'s outcome on its host's state.
pub fn record_outcome(
    state: &mut HostState,
    job: JobId,
    outcome: &HostOutcome,
    policy: &BreakerPolicy,
    now: Timestamp,
) -> OutcomeVerdict {
    state.updated_at = now;
    let class = match outcome {
        HostOutcome::Answered => {
            state.failures.clear();
            state.breaker = Breaker::Closed;
            return OutcomeVerdict::default();
        }
        HostOutcome::Blocked { class } => class,
    };
    match state.breaker.clone() {
        Breaker::Open { .. } => {
            state.held_total += 1;
            OutcomeVerdict {
                hold: true,
                opened: false,
            }
        }
        Breaker::Probing { probe, cooldown_ms } if probe == job => {
            let cooldown_ms = cooldown_ms.saturating_mul(2).min(policy.cooldown_max_ms);
            open(state, cooldown_ms, now);
            OutcomeVerdict {
                hold: false,
                opened: true,
            }
        }
        Breaker::Probing { .. } => {
            state.held_total += 1;
            OutcomeVerdict {
                hold: true,
                opened: false,
            }
        }
        Breaker::Closed => {
            let since = Timestamp(
                now.0
                    .saturating_sub(i64::try_from(policy.window_ms).unwrap_or(i64::MAX)),
            );
            state.failures.retain(|failure| failure.at >= since);
            state.failures.push(HostFailure {
                at: now,
                class: class.clone(),
                job,
            });
            if state.failures.len() > HOST_FAILURES_KEPT {
                let excess = state.failures.len() - HOST_FAILURES_KEPT;
                state.failures.drain(..excess);
            }
            let opened = policy.failures_max > 0 && state.failures.len() >= policy.failures_max;
            if opened {
                open(state, policy.cooldown_ms, now);
            }
            OutcomeVerdict {
                hold: false,
                opened,
            }
        }
    }
}

/// What recording an outcome writes: the verdict, and the host's state when the outcome changed
/// it (`None`: nothing to write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutcomeUpdate {
    pub verdict: OutcomeVerdict,
    pub state: Option<HostState>,
}

/// Records `job`'s outcome on `host`, whose state is `before` (`None`: it has none yet): what
/// `OrchestratorStore::record_host_outcome` writes. A host with no state that answered keeps none:
/// only a refusal starts a host's record. A state is written again only when its breaker, its
/// failures or its held count changed, not for a new `updated_at` alone.
pub fn outcome_update(
    before: Option<&HostState>,
    host: &str,
    job: JobId,
    outcome: &HostOutcome,
    policy: &SchedulingPolicy,
    now: Timestamp,
) -> OutcomeUpdate {
    if before.is_none() && *outcome == HostOutcome::Answered {
        return OutcomeUpdate {
            verdict: OutcomeVerdict::default(),
            state: None,
        };
    }
    let mut state = before.cloned().unwrap_or_else(|| HostState::new(host, now));
    let verdict = record_outcome(&mut state, job, outcome, &policy.breaker, now);
    let changed = before.is_none_or(|before| {
        before.breaker != state.breaker
            || before.failures != state.failures
            || before.held_total != state.held_total
    });
    OutcomeUpdate {
        verdict,
        state: changed.then_some(state),
    }
}

fn open(state: &mut HostState, cooldown_ms: u64, now: Timestamp) {
    state.breaker = Breaker::Open {
        until: now.plus_ms(cooldown_ms),
        cooldown_ms,
    };
    state.opened_total += 1;
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A policy with every limit small enough for a test to reach (`model::claims` uses it too).
    pub(crate) fn policy() -> SchedulingPolicy {
        SchedulingPolicy {
            host_running_max: 2,
            host_start_interval_ms: 100,
            breaker: BreakerPolicy {
                failures_max: 3,
                window_ms: 1_000,
                cooldown_ms: 500,
                cooldown_max_ms: 1_500,
            },
            retry: RetryPolicy {
                delay_initial_ms: 10,
                delay_max_ms: 35,
            },
        }
    }

    fn blocked() -> HostOutcome {
        HostOutcome::Blocked {
            class: "download_blocked".to_string(),
        }
    }

    /// The host refused `job` at `at` ms, under [`policy`]'s breaker.
    fn refused(state: &mut HostState, job: u128, at: i64) -> OutcomeVerdict {
        record_outcome(
            state,
            JobId(job),
            &blocked(),
            &policy().breaker,
            Timestamp(at),
        )
    }

    // Guards what `record_host_outcome` writes: nothing for a host never seen that answered, a new
    // record for its first refusal, and no rewrite when only the time would change.
    #[test]
    fn an_outcome_writes_the_host_state_only_when_it_changed() {
        let policy = policy();
        let now = Timestamp(10_000);
        let answered = outcome_update(None, "a:1", JobId(1), &HostOutcome::Answered, &policy, now);
        assert_eq!(
            answered,
            OutcomeUpdate {
                verdict: OutcomeVerdict::default(),
                state: None
            }
        );

        let first = outcome_update(None, "a:1", JobId(1), &blocked(), &policy, now);
        assert_eq!(first.verdict, OutcomeVerdict::default());
        let state = first.state.expect("a refusal starts the host's record");
        assert_eq!((state.host.as_str(), state.failures.len()), ("a:1", 1));

        let closed = HostState::new("a:1", now);
        let again = outcome_update(
            Some(&closed),
            "a:1",
            JobId(2),
            &HostOutcome::Answered,
            &policy,
            Timestamp(20_000),
        );
        assert_eq!(again.state, None, "only updated_at would change");

        let mut open = HostState::new("a:1", now);
        open.breaker = Breaker::Open {
            until: Timestamp(99_000),
            cooldown_ms: 500,
        };
        let held = outcome_update(Some(&open), "a:1", JobId(3), &blocked(), &policy, now);
        assert!(held.verdict.hold);
        assert_eq!(held.state.expect("the held count changed").held_total, 1);
    }

    // Guards the per-host limits: the concurrency cap and the start interval each hold a job back.
    #[test]
    fn a_closed_host_admits_within_its_concurrency_and_rate() {
        let policy = policy();
        let now = Timestamp(10_000);
        let mut state = HostState::new("a:1", now);
        assert_eq!(
            admit(Some(&state), 1, &policy, now, |_| false),
            Admission::Start { probe: false }
        );
        assert_eq!(
            admit(Some(&state), 2, &policy, now, |_| false),
            Admission::Busy
        );
        record_start(&mut state, JobId(1), false, &policy, now);
        assert_eq!(
            admit(Some(&state), 0, &policy, now, |_| false),
            Admission::NotBefore(Timestamp(10_100))
        );
        assert_eq!(
            admit(Some(&state), 0, &policy, Timestamp(10_100), |_| false),
            Admission::Start { probe: false }
        );
        assert_eq!(
            admit(None, 0, &policy, now, |_| false),
            Admission::Start { probe: false }
        );
    }

    // Guards the breaker's whole cycle: K refusals in a row open it, jobs failing while it is open
    // are held, the cool-down admits one probe, a refused probe doubles the cool-down (capped),
    // and an answered probe closes it.
    #[test]
    fn the_breaker_opens_holds_probes_and_closes() {
        let policy = policy();
        let mut state = HostState::new("a:1", Timestamp(0));
        for job in 1..=2 {
            let verdict = refused(&mut state, job, 100);
            assert_eq!(verdict, OutcomeVerdict::default());
        }
        let verdict = refused(&mut state, 3, 200);
        assert!(verdict.opened && !verdict.hold);
        assert_eq!(state.opened_total, 1);
        assert_eq!(
            admit(Some(&state), 0, &policy, Timestamp(300), |_| false),
            Admission::NotBefore(Timestamp(700))
        );
        // A job that was already running when it opened, refused too: held, not failed.
        let verdict = refused(&mut state, 4, 300);
        assert!(verdict.hold);
        assert_eq!(state.held_total, 1);

        assert_eq!(
            admit(Some(&state), 0, &policy, Timestamp(700), |_| false),
            Admission::Start { probe: true }
        );
        record_start(&mut state, JobId(5), true, &policy, Timestamp(700));
        assert_eq!(
            admit(Some(&state), 0, &policy, Timestamp(710), |id| id
                == JobId(5)),
            Admission::Busy,
            "no other job starts while the probe runs"
        );
        let verdict = refused(&mut state, 5, 800);
        assert!(verdict.opened && !verdict.hold);
        assert_eq!(
            state.breaker,
            Breaker::Open {
                until: Timestamp(1_800),
                cooldown_ms: 1_000
            }
        );
        record_start(&mut state, JobId(6), true, &policy, Timestamp(1_800));
        refused(&mut state, 6, 1_900);
        assert_eq!(
            state.breaker,
            Breaker::Open {
                until: Timestamp(3_400),
                cooldown_ms: 1_500
            },
            "the cool-down doubles up to its cap"
        );
        record_start(&mut state, JobId(7), true, &policy, Timestamp(3_400));
        let verdict = record_outcome(
            &mut state,
            JobId(7),
            &HostOutcome::Answered,
            &policy.breaker,
            Timestamp(3_500),
        );
        assert_eq!(verdict, OutcomeVerdict::default());
        assert_eq!(state.breaker, Breaker::Closed);
        assert!(state.failures.is_empty());
        assert_eq!(state.opened_total, 3);
    }

    // Guards "in a row": a job the host answered between refusals resets the count, and refusals
    // older than the window do not count.
    #[test]
    fn answers_and_the_window_keep_scattered_refusals_from_opening_it() {
        let policy = policy();
        let mut state = HostState::new("a:1", Timestamp(0));
        for (job, at) in [(1, 0), (2, 10)] {
            refused(&mut state, job, at);
        }
        record_outcome(
            &mut state,
            JobId(3),
            &HostOutcome::Answered,
            &policy.breaker,
            Timestamp(20),
        );
        for (job, at) in [(4, 30), (5, 40)] {
            refused(&mut state, job, at);
        }
        assert_eq!(state.breaker, Breaker::Closed);
        let verdict = refused(&mut state, 6, 5_000);
        assert!(!verdict.opened, "the two earlier refusals left the window");
        assert_eq!(state.failures.len(), 1);
    }

    // Guards the probe's replacement: a probe that stopped running without an outcome (its process
    // died) does not hold the host forever.
    #[test]
    fn a_probe_that_is_no_longer_running_is_replaced() {
        let policy = policy();
        let mut state = HostState::new("a:1", Timestamp(0));
        state.breaker = Breaker::Probing {
            probe: JobId(9),
            cooldown_ms: 500,
        };
        assert_eq!(
            admit(Some(&state), 0, &policy, Timestamp(0), |_| false),
            Admission::Start { probe: true }
        );
    }

    #[test]
    fn retry_delays_double_up_to_the_cap() {
        let retry = policy().retry;
        let delays: Vec<u64> = (1..=5).map(|attempts| retry.delay_ms(attempts)).collect();
        assert_eq!(delays, vec![10, 20, 35, 35, 35]);
    }

    #[test]
    fn only_blocking_classes_count_against_a_host() {
        assert_eq!(
            HostOutcome::of_run(Some("rate_limited")),
            Some(blocked_with("rate_limited"))
        );
        assert_eq!(
            HostOutcome::of_run(Some("not_found")),
            Some(HostOutcome::Answered),
            "a 404 is the host answering"
        );
        assert_eq!(HostOutcome::of_run(None), Some(HostOutcome::Answered));
        assert_eq!(HostOutcome::of_run(Some("storage_unavailable")), None);
    }

    fn blocked_with(class: &str) -> HostOutcome {
        HostOutcome::Blocked {
            class: class.to_string(),
        }
    }
}
