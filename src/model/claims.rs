//! Claim planning: which pending job a claim tries next, when a claim that starts nothing may try
//! again, and what a claim writes on the hosts' states. The rules are `model::scheduling`'s
//! (`admit`, `record_start`) and `model::attribution`'s; this is the one walk over the queue that
//! applies them, for every store.
//!
//! Pure: a store reads the running jobs and the storage breaker ([`ClaimPlanner::begin`]), then
//! the queue in claim order; for each entry it asks [`ClaimPlanner::judge`] (reading the entry's
//! host state first when [`ClaimPlanner::needs_host`] says so), tries the claim a
//! [`Verdict::Try`] names, and writes the host states [`ClaimPlanner::claimed`] returns. It never
//! judges an entry itself, and the planner never reads or writes anything.
//!
//! The walk: an entry whose retry delay has not ended waits; a host that may start nothing now
//! (its breaker, its concurrency or its rate) is judged once per claim and passed over after; the
//! first entry admitted is tried, and the claim ends when one is claimed. Nothing is claimed while
//! the storage's breaker is open, and only its probe when the cool-down ends.

use std::collections::{BTreeSet, HashMap};

use crate::model::attribution::Holding;
use crate::model::job::{HostState, Job, JobId, LeaseToken, Timestamp, WorkerId};
use crate::model::machine::{OrchestratorOp, Rejected};
use crate::model::scheduling::{self, Admission, SchedulingPolicy};
use crate::model::sources::source_host;

/// What a claim of the next job found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimNext {
    /// The job, now running under the returned lease.
    Claimed(Box<Job>, LeaseToken),
    /// Pending jobs exist, but none may start now: a retry delay, a breaker's cool-down or a
    /// rate limit ends at `until`; with `None`, a running job must end first (a concurrency limit,
    /// a running probe).
    Wait { until: Option<Timestamp> },
    /// No pending job (of those asked for).
    Empty,
}

impl ClaimNext {
    /// A job just claimed, with its lease.
    pub fn claimed(job: Job) -> ClaimNext {
        let (job, token) = with_lease(job);
        ClaimNext::Claimed(Box::new(job), token)
    }

    /// What a claim that started nothing says: wait (until `until`) while any job it may claim is
    /// pending, else empty.
    pub fn idle(any_pending: bool, until: Option<Timestamp>) -> ClaimNext {
        if any_pending {
            ClaimNext::Wait { until }
        } else {
            ClaimNext::Empty
        }
    }
}

/// The lease a claimed job runs under: what the worker presents with every write.
pub fn lease_of(job: &Job) -> LeaseToken {
    LeaseToken {
        job_id: job.id,
        fencing_token: job.fencing_token,
    }
}

/// A claimed job and the lease it runs under: what a claim of one job by id returns.
pub fn with_lease(job: Job) -> (Job, LeaseToken) {
    let token = lease_of(&job);
    (job, token)
}

/// A claim by one process: the transition, and what the process holds already (its runs are no
/// longer alone once it claims another job: `attribution::joined`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimant {
    pub holding: Holding,
    pub op: OrchestratorOp,
}

impl Claimant {
    /// The claim of `worker_id`, whose lease lasts `lease_ttl_ms`, among the `running` jobs.
    pub fn new(worker_id: &WorkerId, lease_ttl_ms: u64, running: &[Job]) -> Claimant {
        let holding = Holding::of(worker_id, running);
        Claimant {
            op: OrchestratorOp::Claim {
                worker_id: worker_id.clone(),
                lease_ttl_ms,
                holding: holding.clone(),
            },
            holding,
        }
    }
}

/// A pending job as a claim sees it in the queue, before reading the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: JobId,
    /// When its retry delay ends (`Job::not_before`; the distant past for none).
    pub not_before: Timestamp,
    /// Its source host (`sources::source_host`).
    pub host: String,
}

/// What the planner says of a candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Passed over: its host may start nothing in this claim.
    Skip,
    /// Passed over until this time: its retry delay, or its host's cool-down or rate limit.
    WaitUntil(Timestamp),
    /// Try to claim it.
    Try(Attempt),
}

/// A candidate the planner admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub id: JobId,
    pub host: String,
    /// The job tests its host's open breaker.
    pub probe: bool,
}

/// The storage's breaker lets no job start: until `until`, or (`None`) until its probe ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoragePaused {
    pub until: Option<Timestamp>,
}

/// What a claim writes on the hosts: each state is written only when the claim changed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostWrites {
    /// The claimed job's host, after its start (its rate clock, its probe).
    pub host: Option<HostState>,
    /// The job tests its host's breaker.
    pub probe: bool,
    /// The storage's breaker, when the job is also its probe.
    pub storage: Option<HostState>,
}

/// One claim's walk over the queue: see the module docs.
#[derive(Debug)]
pub struct ClaimPlanner<'a> {
    claimant: Claimant,
    policy: &'a SchedulingPolicy,
    now: Timestamp,
    running_ids: BTreeSet<JobId>,
    running_by_host: HashMap<String, usize>,
    storage: Option<HostState>,
    /// The claimed job also tests the storage's breaker.
    storage_probe: bool,
    /// The states of the hosts read so far (`None`: a host with no state yet).
    host_states: HashMap<String, Option<HostState>>,
    /// Hosts that may not start a job in this claim: each is judged once.
    refused_hosts: BTreeSet<String>,
    wait_until: Option<Timestamp>,
    any_pending: bool,
}

impl<'a> ClaimPlanner<'a> {
    /// Starts a claim by `worker_id` at `now`, given the `running` jobs and the storage breaker's
    /// state (`scheduling::STORAGE_BREAKER`); refused while that breaker lets nothing start.
    pub fn begin(
        worker_id: &WorkerId,
        lease_ttl_ms: u64,
        running: &[Job],
        storage: Option<HostState>,
        policy: &'a SchedulingPolicy,
        now: Timestamp,
    ) -> Result<ClaimPlanner<'a>, StoragePaused> {
        let mut running_ids = BTreeSet::new();
        let mut running_by_host: HashMap<String, usize> = HashMap::new();
        for job in running {
            *running_by_host.entry(source_host(&job.source)).or_default() += 1;
            running_ids.insert(job.id);
        }
        // Storing is paused: no job is claimed until the storage breaker's cool-down ends, and
        // then only one, its probe (`scheduling::STORAGE_BREAKER`).
        let storage_probe = match scheduling::admit(storage.as_ref(), 0, policy, now, |id| {
            running_ids.contains(&id)
        }) {
            Admission::Start { probe } => probe,
            Admission::NotBefore(until) => return Err(StoragePaused { until: Some(until) }),
            Admission::Busy => return Err(StoragePaused { until: None }),
        };
        Ok(ClaimPlanner {
            claimant: Claimant::new(worker_id, lease_ttl_ms, running),
            policy,
            now,
            running_ids,
            running_by_host,
            storage,
            storage_probe,
            host_states: HashMap::new(),
            refused_hosts: BTreeSet::new(),
            wait_until: None,
            any_pending: false,
        })
    }

    /// The claim to try on an admitted candidate.
    pub fn claimant(&self) -> &Claimant {
        &self.claimant
    }

    /// Whether judging `candidate` needs its host's state, not read yet in this claim.
    pub fn needs_host(&self, candidate: &Candidate) -> bool {
        candidate.not_before <= self.now
            && !self.refused_hosts.contains(&candidate.host)
            && !self.host_states.contains_key(&candidate.host)
    }

    /// The state a store read for `host` (`None`: it has none).
    pub fn learn_host(&mut self, host: &str, state: Option<HostState>) {
        self.host_states.insert(host.to_string(), state);
    }

    /// Judges the next candidate in claim order.
    pub fn judge(&mut self, candidate: &Candidate) -> Verdict {
        self.any_pending = true;
        if candidate.not_before > self.now {
            return self.wait(candidate.not_before);
        }
        let host = &candidate.host;
        if self.refused_hosts.contains(host) {
            return Verdict::Skip;
        }
        debug_assert!(
            self.host_states.contains_key(host),
            "a host is judged after its state is read"
        );
        let state = self.host_states.get(host).and_then(Option::as_ref);
        let running_on_host = self.running_by_host.get(host).copied().unwrap_or(0);
        let running_ids = &self.running_ids;
        match scheduling::admit(state, running_on_host, self.policy, self.now, |id| {
            running_ids.contains(&id)
        }) {
            Admission::Start { probe } => Verdict::Try(Attempt {
                id: candidate.id,
                host: host.clone(),
                probe,
            }),
            Admission::NotBefore(until) => {
                self.refused_hosts.insert(host.clone());
                self.wait(until)
            }
            Admission::Busy => {
                self.refused_hosts.insert(host.clone());
                Verdict::Skip
            }
        }
    }

    fn wait(&mut self, until: Timestamp) -> Verdict {
        self.wait_until = Some(
            self.wait_until
                .map_or(until, |earliest| earliest.min(until)),
        );
        Verdict::WaitUntil(until)
    }

    /// The attempt was refused: a suspect of a crash first in line (or one this process runs)
    /// ends the claim, to wait for a process that holds nothing, rather than be passed over and
    /// starve (`attribution::check_claim`); any other refusal (the job moved on since the queue
    /// was read) passes to the next candidate (`None`).
    pub fn refused(&self, rejected: &Rejected) -> Option<ClaimNext> {
        match rejected {
            Rejected::MustRunAlone { .. } => Some(ClaimNext::Wait { until: None }),
            _ => None,
        }
    }

    /// The attempt claimed `job`: what its start writes on the hosts.
    pub fn claimed(&self, attempt: &Attempt, job: JobId) -> HostWrites {
        // A host with no state yet starts from a fresh one, and is written only if the start
        // changed that: a host with no limits and no breaker keeps no record.
        let before = self
            .host_states
            .get(&attempt.host)
            .and_then(Option::as_ref)
            .cloned()
            .unwrap_or_else(|| HostState::new(&attempt.host, self.now));
        let mut state = before.clone();
        scheduling::record_start(&mut state, job, attempt.probe, self.policy, self.now);
        let changed =
            state.next_start_at != before.next_start_at || state.breaker != before.breaker;
        let storage = self
            .storage
            .clone()
            .filter(|_| self.storage_probe)
            .map(|mut storage| {
                scheduling::start_probe(&mut storage, job, self.policy, self.now);
                storage
            });
        HostWrites {
            host: changed.then_some(state),
            probe: attempt.probe,
            storage,
        }
    }

    /// The end of a walk that claimed nothing.
    pub fn finish(self) -> ClaimNext {
        ClaimNext::idle(self.any_pending, self.wait_until)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::model::job::{Breaker, Lease, Status};
    use crate::model::machine;
    use crate::model::scheduling::tests::policy;

    const NOW: Timestamp = Timestamp(1_000_000);

    fn worker(name: &str) -> WorkerId {
        WorkerId(name.to_string())
    }

    fn running(id: u128, host: &str, worker_id: &str) -> Job {
        let mut job = machine::new_job(
            JobId(id),
            format!("key-{id}"),
            format!("https://{host}/{id}.mp4"),
            "ingest".to_string(),
            0,
            NOW,
        )
        .job;
        job.status = Status::Running;
        job.lease = Some(Lease {
            worker_id: worker(worker_id),
            expires_at: NOW.plus_ms(60_000),
            fencing_token: 1,
        });
        job.fencing_token = 1;
        job
    }

    fn candidate(id: u128, host: &str, not_before: Timestamp) -> Candidate {
        Candidate {
            id: JobId(id),
            not_before,
            host: host.to_string(),
        }
    }

    /// A claim by `w:1` at `at`.
    fn begin<'a>(
        policy: &'a SchedulingPolicy,
        running: &[Job],
        storage: Option<HostState>,
        at: Timestamp,
    ) -> Result<ClaimPlanner<'a>, StoragePaused> {
        ClaimPlanner::begin(&worker("w:1"), 60_000, running, storage, policy, at)
    }

    /// A candidate the planner must admit.
    fn admitted(
        planner: &mut ClaimPlanner<'_>,
        hosts: &HashMap<String, HostState>,
        candidate: &Candidate,
    ) -> Attempt {
        match judge(planner, hosts, candidate) {
            Verdict::Try(attempt) => attempt,
            other => panic!("{candidate:?} is admitted, not {other:?}"),
        }
    }

    /// Judges a candidate as a store does: reading its host's state from `hosts` first.
    fn judge(
        planner: &mut ClaimPlanner<'_>,
        hosts: &HashMap<String, HostState>,
        candidate: &Candidate,
    ) -> Verdict {
        if planner.needs_host(candidate) {
            planner.learn_host(&candidate.host, hosts.get(&candidate.host).cloned());
        }
        planner.judge(candidate)
    }

    // Guards the walk's order of rules: a retry delay waits, a host at its concurrency limit is
    // passed over (and judged once), and the first admitted entry is tried, with the lease the
    // claimant's op asks for.
    #[test]
    fn the_first_admitted_candidate_is_tried() {
        let policy = policy();
        let running = [
            running(1, "a.example", "w:1"),
            running(2, "a.example", "w:2"),
        ];
        let mut planner = begin(&policy, &running, None, NOW).expect("storing is not paused");
        assert_eq!(planner.claimant().holding.jobs, vec![JobId(1)]);
        let hosts = HashMap::new();
        assert_eq!(
            judge(
                &mut planner,
                &hosts,
                &candidate(10, "b.example", NOW.plus_ms(5))
            ),
            Verdict::WaitUntil(NOW.plus_ms(5))
        );
        assert_eq!(
            judge(&mut planner, &hosts, &candidate(11, "a.example", NOW)),
            Verdict::Skip
        );
        assert!(!planner.needs_host(&candidate(12, "a.example", NOW)));
        assert_eq!(
            judge(&mut planner, &hosts, &candidate(12, "a.example", NOW)),
            Verdict::Skip
        );
        assert_eq!(
            judge(&mut planner, &hosts, &candidate(13, "b.example", NOW)),
            Verdict::Try(Attempt {
                id: JobId(13),
                host: "b.example".to_string(),
                probe: false,
            })
        );
    }

    // Guards what a walk that claims nothing says: the earliest time anything waits for, or for
    // a running job (`None`) when only limits hold jobs back, or empty when nothing is pending.
    #[test]
    fn a_walk_that_claims_nothing_waits_for_the_earliest_time() {
        let policy = policy();
        let hosts = HashMap::new();
        let planner = begin(&policy, &[], None, NOW).expect("storing is not paused");
        assert_eq!(planner.finish(), ClaimNext::Empty);

        let mut planner = begin(&policy, &[], None, NOW).expect("storing is not paused");
        for (id, delay) in [(1, 30), (2, 10), (3, 20)] {
            judge(
                &mut planner,
                &hosts,
                &candidate(id, "a.example", NOW.plus_ms(delay)),
            );
        }
        assert_eq!(
            planner.finish(),
            ClaimNext::Wait {
                until: Some(NOW.plus_ms(10))
            }
        );

        let full = [
            running(1, "a.example", "w:2"),
            running(2, "a.example", "w:2"),
        ];
        let mut planner = begin(&policy, &full, None, NOW).expect("storing is not paused");
        assert_eq!(
            judge(&mut planner, &hosts, &candidate(3, "a.example", NOW)),
            Verdict::Skip
        );
        assert_eq!(planner.finish(), ClaimNext::Wait { until: None });
    }

    // Guards the rate limit: a claim moves its host's clock, and the host's next job waits for it.
    #[test]
    fn a_start_moves_the_host_rate_clock() {
        let policy = policy();
        let mut planner = begin(&policy, &[], None, NOW).expect("storing is not paused");
        let attempt = admitted(
            &mut planner,
            &HashMap::new(),
            &candidate(1, "a.example", NOW),
        );
        let writes = planner.claimed(&attempt, JobId(1));
        let state = writes.host.expect("the rate clock moved");
        assert_eq!(state.next_start_at, NOW.plus_ms(100));
        assert!(!writes.probe);
        assert_eq!(writes.storage, None);

        let hosts = HashMap::from([("a.example".to_string(), state)]);
        let mut planner = begin(&policy, &[], None, NOW).expect("storing is not paused");
        assert_eq!(
            judge(&mut planner, &hosts, &candidate(2, "a.example", NOW)),
            Verdict::WaitUntil(NOW.plus_ms(100))
        );
    }

    // Guards a start that changes nothing on its host: no write, for a host with a record or
    // without one (a host with no limits and no breaker keeps no record).
    #[test]
    fn a_start_without_a_rate_limit_writes_nothing() {
        let policy = SchedulingPolicy {
            host_start_interval_ms: 0,
            ..policy()
        };
        let hosts = HashMap::from([("a.example".to_string(), HostState::new("a.example", NOW))]);
        let mut planner = begin(&policy, &[], None, NOW).expect("storing is not paused");
        for (id, host) in [(1, "a.example"), (2, "b.example")] {
            let attempt = admitted(&mut planner, &hosts, &candidate(id, host, NOW));
            assert_eq!(planner.claimed(&attempt, JobId(id)).host, None, "{host}");
        }
    }

    // Guards the host breaker's probe: after the cool-down one job is tried as the probe, and the
    // start records it, so the host's next job waits for the probe to end.
    #[test]
    fn an_open_breaker_admits_one_probe_after_its_cooldown() {
        let policy = policy();
        let mut state = HostState::new("a.example", NOW);
        state.breaker = Breaker::Open {
            until: NOW,
            cooldown_ms: 500,
        };
        let hosts = HashMap::from([("a.example".to_string(), state)]);
        let mut planner = begin(&policy, &[], None, NOW).expect("storing is not paused");
        let attempt = admitted(&mut planner, &hosts, &candidate(1, "a.example", NOW));
        assert!(attempt.probe);
        let writes = planner.claimed(&attempt, JobId(1));
        assert!(writes.probe);
        assert_eq!(
            writes.host.expect("the probe is recorded").breaker,
            Breaker::Probing {
                probe: JobId(1),
                cooldown_ms: 500
            }
        );
    }

    // Guards the storage breaker: while it is open nothing is judged at all; after its cool-down
    // the claimed job is its probe too, and a running probe holds every claim back.
    #[test]
    fn the_storage_breaker_pauses_every_claim_and_admits_one_probe() {
        let policy = policy();
        let mut storage = HostState::new(scheduling::STORAGE_BREAKER, NOW);
        storage.breaker = Breaker::Open {
            until: NOW.plus_ms(50),
            cooldown_ms: 500,
        };
        assert_eq!(
            begin(&policy, &[], Some(storage.clone()), NOW).err(),
            Some(StoragePaused {
                until: Some(NOW.plus_ms(50))
            })
        );
        let later = NOW.plus_ms(50);
        let mut planner = begin(&policy, &[], Some(storage), later).expect("the cool-down ended");
        let attempt = admitted(
            &mut planner,
            &HashMap::new(),
            &candidate(7, "a.example", later),
        );
        let probing = planner
            .claimed(&attempt, JobId(7))
            .storage
            .expect("the job probes the storage");
        assert_eq!(
            probing.breaker,
            Breaker::Probing {
                probe: JobId(7),
                cooldown_ms: 500
            }
        );
        let running = [running(7, "a.example", "w:2")];
        assert_eq!(
            begin(&policy, &running, Some(probing), later).err(),
            Some(StoragePaused { until: None })
        );
    }

    // Guards the attribution rule in the walk: a suspect that must run alone ends the claim with
    // a wait for a running job; any other refusal passes to the next candidate.
    #[test]
    fn a_suspect_that_must_run_alone_ends_the_claim() {
        let policy = policy();
        let planner = begin(&policy, &[], None, NOW).expect("storing is not paused");
        let alone = Rejected::MustRunAlone {
            job_id: JobId(1),
            held: 1,
            why: "it is a suspect of a crash and runs alone",
        };
        assert_eq!(
            planner.refused(&alone),
            Some(ClaimNext::Wait { until: None })
        );
        assert_eq!(planner.refused(&Rejected::NotFound(JobId(1))), None);
    }

    #[test]
    fn a_claimed_job_carries_its_lease() {
        let mut job = running(3, "a.example", "w:1");
        job.fencing_token = 9;
        let ClaimNext::Claimed(claimed, token) = ClaimNext::claimed(job.clone()) else {
            panic!("claimed");
        };
        assert_eq!(*claimed, job);
        assert_eq!(
            token,
            LeaseToken {
                job_id: JobId(3),
                fencing_token: 9
            }
        );
        assert_eq!(ClaimNext::idle(false, Some(NOW)), ClaimNext::Empty);
    }

    fn host_state() -> impl Strategy<Value = Option<HostState>> {
        prop_oneof![
            Just(None),
            (0i64..300, 0i64..300, any::<bool>()).prop_map(|(next_start, until, probing)| {
                let mut state = HostState::new("h", NOW);
                state.next_start_at = Timestamp(NOW.0 - 150 + next_start);
                state.breaker = if probing {
                    Breaker::Probing {
                        probe: JobId(1 + u128::from(until.unsigned_abs() % 3)),
                        cooldown_ms: 500,
                    }
                } else if until % 2 == 0 {
                    Breaker::Open {
                        until: Timestamp(NOW.0 - 150 + until),
                        cooldown_ms: 500,
                    }
                } else {
                    Breaker::Closed
                };
                Some(state)
            }),
        ]
    }

    proptest! {
        // Guards the walk against the rules it applies: an entry is tried only if its delay ended
        // and `scheduling::admit` starts its host; a host refused once is never tried again in
        // the claim; a walk that tries nothing waits for exactly the earliest time it was told.
        #[test]
        fn the_planner_tries_only_what_the_rules_admit(
            entries in proptest::collection::vec((0u8..4, -100i64..100), 0..24),
            states in proptest::collection::vec(host_state(), 4),
            running_hosts in proptest::collection::vec(0u8..4, 0..4),
        ) {
            let policy = policy();
            let running: Vec<Job> = running_hosts
                .iter()
                .enumerate()
                .map(|(index, host)| running(
                    1 + u128::try_from(index).expect("small"),
                    &format!("h{host}"),
                    "w:2",
                ))
                .collect();
            let hosts: HashMap<String, HostState> = states
                .iter()
                .enumerate()
                .filter_map(|(index, state)| state.clone().map(|state| (format!("h{index}"), state)))
                .collect();
            let mut planner = begin(&policy, &running, None, NOW).expect("no storage breaker");
            let mut refused: BTreeSet<String> = BTreeSet::new();
            let mut earliest: Option<Timestamp> = None;
            for (index, (host, delay)) in entries.iter().enumerate() {
                let candidate = candidate(
                    100 + u128::try_from(index).expect("small"),
                    &format!("h{host}"),
                    Timestamp(NOW.0 + delay),
                );
                let verdict = judge(&mut planner, &hosts, &candidate);
                let on_host = running
                    .iter()
                    .filter(|job| source_host(&job.source) == candidate.host)
                    .count();
                let admission = scheduling::admit(
                    hosts.get(&candidate.host),
                    on_host,
                    &policy,
                    NOW,
                    |id| running.iter().any(|job| job.id == id),
                );
                match verdict {
                    Verdict::Try(attempt) => {
                        prop_assert!(candidate.not_before <= NOW);
                        prop_assert!(!refused.contains(&candidate.host));
                        prop_assert_eq!(admission, Admission::Start { probe: attempt.probe });
                        // The store's claim failed: the walk goes on, as after a refusal.
                        prop_assert_eq!(planner.refused(&Rejected::NotFound(attempt.id)), None);
                    }
                    Verdict::WaitUntil(until) => {
                        earliest = Some(earliest.map_or(until, |earliest| earliest.min(until)));
                        if candidate.not_before > NOW {
                            prop_assert_eq!(until, candidate.not_before);
                        } else {
                            prop_assert_eq!(admission, Admission::NotBefore(until));
                            refused.insert(candidate.host.clone());
                        }
                    }
                    Verdict::Skip => {
                        prop_assert!(
                            refused.contains(&candidate.host) || admission == Admission::Busy
                        );
                        refused.insert(candidate.host.clone());
                    }
                }
            }
            let expected = if entries.is_empty() {
                ClaimNext::Empty
            } else {
                ClaimNext::Wait { until: earliest }
            };
            prop_assert_eq!(planner.finish(), expected);
        }
    }
}
