//! Attribution of deaths: which job a dead process's death is charged to, for crash-loop
//! quarantine (`machine::CRASH_LOOP_DEATHS` deaths at the same point fail a job as `crash_loop`).
//!
//! A process running several jobs at once that dies cannot say which one killed it; charging all
//! of them quarantines bystanders. So:
//!
//! 1. A death counts only against a job that ran alone: the only job its process held for the
//!    whole run (`Attribution::alone`, set at the claim and cleared when its process claims
//!    another job beside it).
//! 2. A death of a process that held several jobs charges none of them: they all become
//!    *suspects*. A suspect is claimed only by a process that holds nothing else, and while it runs
//!    its process claims nothing else, so its next death is attributed; once it passes its next
//!    checkpoint the mark clears and it runs beside others again.
//! 3. In a fleet, a death is seen as a lease that expired and was taken over. The holder may only
//!    have stalled (a SIGSTOP, a paused VM), so the takeover is a provisional charge naming the
//!    holder's lease; any write presenting that lease (a renewal, a phase, a step event: each is
//!    fenced, since the job was taken) clears it; two lease lengths without one charge it
//!    (`takeover_due`), as does the job's next takeover (the old holder stayed silent through a
//!    whole further run of the job).
//!
//! Pure functions, no I/O: the machine (`machine::apply_orchestrator`) calls them for claims and
//! reclaims, and both stores call them where a worker's write touches attribution (a checkpoint, a
//! fenced write) and to learn what the claiming process holds. No store decides attribution
//! itself.

use crate::model::job::{
    Attribution, CrashRecord, Job, JobId, ProgressMarker, Status, Takeover, Timestamp, WorkerId,
};
use crate::model::machine::Rejected;

/// How many deaths of a media helper on one input fail the extract step as `media_crash`. A
/// helper runs one job's request at a time, so its death is that input's, with no bystander to
/// spare: the first death may still be the machine's (the out-of-memory killer choosing it), the
/// second is the media's. Helper deaths never count toward [`CRASH_LOOP_DEATHS`]
/// (`machine`), which is about the worker process: the worker survives them.
///
/// [`CRASH_LOOP_DEATHS`]: crate::model::machine::CRASH_LOOP_DEATHS
pub const MEDIA_CRASH_DEATHS: u32 = 2;

/// What the claiming process holds: the jobs running under its leases. In a fleet, "alone" is per
/// worker process, and a worker id names one process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holding {
    pub jobs: Vec<JobId>,
    /// One of them is a suspect: nothing may start beside it.
    pub suspect: bool,
}

impl Holding {
    /// What `worker_id` holds among `running`, the jobs a store reads as running.
    pub fn of<'a>(worker_id: &WorkerId, running: impl IntoIterator<Item = &'a Job>) -> Holding {
        let mut holding = Holding::default();
        for job in running {
            if job.status == Status::Running
                && job
                    .lease
                    .as_ref()
                    .is_some_and(|lease| lease.worker_id == *worker_id)
            {
                holding.jobs.push(job.id);
                holding.suspect |= job.attribution.suspect;
            }
        }
        holding
    }
}

/// Whether a process holding `holding` may claim `candidate` now. A refusal is not the
/// candidate's end: a claim scan waits (it does not pass over a suspect, which would starve it
/// while its process is never empty) until a process that holds nothing claims it.
pub fn check_claim(holding: &Holding, candidate: &Job) -> Result<(), Rejected> {
    if holding.suspect {
        return Err(Rejected::MustRunAlone {
            job_id: candidate.id,
            held: holding.jobs.len(),
            why: "a suspect of a crash runs in this process, and nothing starts beside it",
        });
    }
    if candidate.attribution.suspect && !holding.jobs.is_empty() {
        return Err(Rejected::MustRunAlone {
            job_id: candidate.id,
            held: holding.jobs.len(),
            why: "it is a suspect of a crash and runs alone",
        });
    }
    Ok(())
}

/// The attribution of a job its process just claimed: alone if the process holds nothing else.
/// A provisional takeover charge stays until it is settled.
pub fn claimed(attribution: &Attribution, holding: &Holding) -> Attribution {
    Attribution {
        alone: holding.jobs.is_empty(),
        ..attribution.clone()
    }
}

/// A job running in a process that just claimed another job beside it: its run is no longer
/// alone. `None` when nothing changes.
pub fn joined(job: &Job) -> Option<Job> {
    turned_off(job, |attribution| &mut attribution.alone)
}

/// A job passed a checkpoint: a suspect mark clears. `None` when nothing changes.
pub fn checkpoint_passed(job: &Job) -> Option<Job> {
    turned_off(job, |attribution| &mut attribution.suspect)
}

/// `job` with the attribution flag `flag` picks turned off; `None` when it already was.
fn turned_off(job: &Job, flag: fn(&mut Attribution) -> &mut bool) -> Option<Job> {
    let mut next = job.clone();
    let flag = flag(&mut next.attribution);
    if !*flag {
        return None;
    }
    *flag = false;
    Some(next)
}

/// How a death was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathSeen {
    /// A process opened a store it holds alone and found the job running: the process that ran
    /// it is certainly gone.
    Certain,
    /// A fleet's lease expired and was taken over: its holder may only have stalled.
    LeaseExpired,
}

/// What a reclaim of an orphan writes on the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reclaimed {
    pub crashes: Option<CrashRecord>,
    pub attribution: Attribution,
    /// Whether this death was charged to the job now (never for a provisional takeover).
    pub charged: bool,
}

/// The crash record after one more death charged at `marker`: the count goes on at the same
/// marker and starts again at 1 at a new one (the job made progress in between).
pub fn charge(record: Option<CrashRecord>, marker: ProgressMarker) -> CrashRecord {
    let count = match record {
        Some(record) if record.marker == marker => record.count.saturating_add(1),
        _ => 1,
    };
    CrashRecord { marker, count }
}

/// A running job's process died at `marker`: the attribution rule.
pub fn reclaim(job: &Job, marker: ProgressMarker, seen: DeathSeen, now: Timestamp) -> Reclaimed {
    let mut attribution = Attribution {
        alone: false,
        ..job.attribution.clone()
    };
    let mut crashes = job.crashes;
    // An earlier takeover still provisional: the job was claimed and lost again since, and its old
    // holder never came back to say it lived (that would have cleared it).
    if let Some(earlier) = attribution.takeover.take() {
        crashes = Some(charge(crashes, earlier.marker));
    }
    if !job.attribution.alone {
        attribution.suspect = true;
        return Reclaimed {
            crashes,
            attribution,
            charged: false,
        };
    }
    match (seen, &job.lease) {
        (DeathSeen::LeaseExpired, Some(lease)) => {
            attribution.takeover = Some(Takeover {
                worker_id: lease.worker_id.clone(),
                fencing_token: lease.fencing_token,
                at: now,
                marker,
            });
            Reclaimed {
                crashes,
                attribution,
                charged: false,
            }
        }
        _ => Reclaimed {
            crashes: Some(charge(crashes, marker)),
            attribution,
            charged: true,
        },
    }
}

/// Whether a provisional takeover charge stands: two lease lengths passed since the takeover and
/// its holder never wrote again (a write clears it: [`holder_returned`]).
pub fn takeover_due(takeover: &Takeover, now: Timestamp, lease_ttl_ms: u64) -> bool {
    now >= takeover.at.plus_ms(lease_ttl_ms.saturating_mul(2))
}

/// The job with a due takeover charged (`None` when none is due).
pub fn settle_takeover(job: &Job, now: Timestamp, lease_ttl_ms: u64) -> Option<(Job, CrashRecord)> {
    let takeover = job.attribution.takeover.as_ref()?;
    if !takeover_due(takeover, now, lease_ttl_ms) {
        return None;
    }
    let mut next = job.clone();
    let record = charge(job.crashes, takeover.marker);
    next.crashes = Some(record);
    next.attribution.takeover = None;
    Some((next, record))
}

/// A write presenting `fencing_token` was fenced: if it is the lease a provisional takeover
/// names, its holder lived, and the charge is cleared. `None` when nothing changes.
pub fn holder_returned(job: &Job, fencing_token: u64) -> Option<Job> {
    let takeover = job.attribution.takeover.as_ref()?;
    if takeover.fencing_token != fencing_token {
        return None;
    }
    let mut next = job.clone();
    next.attribution.takeover = None;
    Some(next)
}

#[cfg(test)]
mod tests {
    //! Property tests of attribution: random fleets of processes claiming, checkpointing and dying
    //! over a job set, driven through the machine as the stores drive it.

    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::model::job::{Phase, Timestamp};
    use crate::model::machine::{
        CRASH_LOOP_DEATHS, OrchestratorOp, Transition, apply_orchestrator, new_job,
    };

    const TTL_MS: u64 = 1_000;

    fn jobs(count: u8) -> Vec<Job> {
        (0..count)
            .map(|index| {
                new_job(
                    JobId(u128::from(index)),
                    format!("k{index}"),
                    format!("https://example.com/{index}.mp4"),
                    "ingest".into(),
                    0,
                    Timestamp(1_000),
                )
                .job
            })
            .collect()
    }

    fn marker(checkpoints: u32) -> ProgressMarker {
        ProgressMarker {
            phase: Some(Phase::Processing),
            checkpoints,
            bytes_done: 0,
        }
    }

    #[derive(Debug, Clone)]
    enum Action {
        /// Process `p` claims the first pending job the rule lets it claim.
        Claim(u8),
        /// A job of process `p` passes a checkpoint.
        Checkpoint(u8),
        /// Process `p` dies and its jobs are reclaimed.
        Die(u8),
    }

    fn action() -> impl Strategy<Value = Action> {
        prop_oneof![
            4 => (0..3u8).prop_map(Action::Claim),
            2 => (0..3u8).prop_map(Action::Checkpoint),
            1 => (0..3u8).prop_map(Action::Die),
        ]
    }

    fn worker(process: u8) -> WorkerId {
        WorkerId(format!("host:{process}"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        // Guards rule 1 and 2 together: with healthy jobs (none ever kills its process), any
        // sequence of claims, checkpoints and deaths, each death of a process that held several
        // jobs charges none of them, a suspect never runs beside another job, and a job is
        // charged only with the deaths of processes in which it ran alone.
        #[test]
        fn deaths_are_charged_only_to_jobs_that_ran_alone(
            actions in proptest::collection::vec(action(), 0..120)
        ) {
            let mut jobs: Vec<Job> = jobs(6);
            let mut checkpoints: BTreeMap<JobId, u32> = BTreeMap::new();
            let mut charged: BTreeMap<JobId, u32> = BTreeMap::new();
            let mut now = Timestamp(2_000);
            for action in &actions {
                now = now.plus_ms(10);
                match action {
                    Action::Claim(process) => {
                        let holding = Holding::of(&worker(*process), &jobs);
                        let Some(index) = jobs.iter().position(|job| job.status == Status::Pending) else {
                            continue;
                        };
                        let op = OrchestratorOp::Claim {
                            worker_id: worker(*process),
                            lease_ttl_ms: TTL_MS,
                            holding: holding.clone(),
                        };
                        match apply_orchestrator(&jobs[index], &op, now) {
                            Ok(Transition { job, .. }) => {
                                prop_assert!(!holding.suspect, "claimed beside a suspect");
                                prop_assert!(!job.attribution.suspect || holding.jobs.is_empty(), "a suspect claimed beside others");
                                prop_assert_eq!(job.attribution.alone, holding.jobs.is_empty());
                                jobs[index] = job;
                                for held in &holding.jobs {
                                    let position = jobs.iter().position(|job| job.id == *held).expect("held");
                                    if let Some(next) = joined(&jobs[position]) {
                                        jobs[position] = next;
                                    }
                                }
                            }
                            Err(Rejected::MustRunAlone { .. }) => {
                                prop_assert!(holding.suspect || (jobs[index].attribution.suspect && !holding.jobs.is_empty()));
                            }
                            Err(other) => prop_assert!(false, "claim refused: {other}"),
                        }
                    }
                    Action::Checkpoint(process) => {
                        let holding = Holding::of(&worker(*process), &jobs);
                        let Some(id) = holding.jobs.first() else { continue };
                        let position = jobs.iter().position(|job| job.id == *id).expect("held");
                        *checkpoints.entry(*id).or_default() += 1;
                        if let Some(next) = checkpoint_passed(&jobs[position]) {
                            jobs[position] = next;
                        }
                    }
                    Action::Die(process) => {
                        let holding = Holding::of(&worker(*process), &jobs);
                        for id in &holding.jobs {
                            let position = jobs.iter().position(|job| job.id == *id).expect("held");
                            let job = &jobs[position];
                            let ran_alone = holding.jobs.len() == 1;
                            let op = OrchestratorOp::ReclaimOrphan {
                                reason: "died".into(),
                                marker: marker(checkpoints.get(id).copied().unwrap_or(0)),
                                seen: DeathSeen::Certain,
                            };
                            let next = apply_orchestrator(job, &op, now).expect("reclaimed").job;
                            let count_before = job.crashes.map_or(0, |record| record.count);
                            let count_after = next.crashes.map_or(0, |record| record.count);
                            if ran_alone {
                                *charged.entry(*id).or_default() += 1;
                            } else {
                                prop_assert!(next.attribution.suspect, "a job of a crowded death is a suspect");
                                prop_assert_eq!(count_after, count_before, "a crowded death was charged");
                            }
                            // A job alone by the record was alone in fact.
                            prop_assert!(!job.attribution.alone || ran_alone);
                            jobs[position] = next;
                        }
                    }
                }
                for job in &jobs {
                    prop_assert!(job.invariants_hold().is_ok());
                    // Quarantine needs CRASH_LOOP_DEATHS deaths charged, each of a process in
                    // which the job ran alone.
                    if job.status == Status::Failed {
                        prop_assert!(charged.get(&job.id).copied().unwrap_or(0) >= CRASH_LOOP_DEATHS);
                    }
                }
                // A suspect running never has company in its process.
                for process in 0..3u8 {
                    let holding = Holding::of(&worker(process), &jobs);
                    if holding.suspect {
                        prop_assert_eq!(holding.jobs.len(), 1, "a suspect ran beside another job");
                    }
                }
            }
        }

        // Guards the poison pill under attribution: a job that kills every process that runs it,
        // with other jobs claimed beside it whenever the rule allows, is quarantined after at
        // most one uncharged death plus CRASH_LOOP_DEATHS charged ones, and never any other job.
        #[test]
        fn a_poison_job_is_quarantined_and_only_it(
            concurrency in 1..5usize,
            poison in 0..6u8,
        ) {
            let mut jobs = jobs(6);
            let poison = JobId(u128::from(poison));
            let mut now = Timestamp(2_000);
            let mut deaths = 0u32;
            for process in 0..40u8 {
                // One process: it claims in order up to `concurrency` jobs as the rule allows.
                let worker_id = worker(process);
                for _ in 0..concurrency {
                    now = now.plus_ms(1);
                    let holding = Holding::of(&worker_id, &jobs);
                    let Some(index) = jobs.iter().position(|job| job.status == Status::Pending) else { break };
                    let op = OrchestratorOp::Claim { worker_id: worker_id.clone(), lease_ttl_ms: TTL_MS, holding: holding.clone() };
                    let Ok(Transition { job, .. }) = apply_orchestrator(&jobs[index], &op, now) else { break };
                    jobs[index] = job;
                    for held in &holding.jobs {
                        let position = jobs.iter().position(|job| job.id == *held).expect("held");
                        if let Some(next) = joined(&jobs[position]) {
                            jobs[position] = next;
                        }
                    }
                }
                let holding = Holding::of(&worker_id, &jobs);
                if holding.jobs.contains(&poison) {
                    deaths += 1;
                    for id in &holding.jobs {
                        let position = jobs.iter().position(|job| job.id == *id).expect("held");
                        let op = OrchestratorOp::ReclaimOrphan { reason: "died".into(), marker: marker(0), seen: DeathSeen::Certain };
                        jobs[position] = apply_orchestrator(&jobs[position], &op, now).expect("reclaimed").job;
                    }
                } else {
                    // Healthy jobs pass a checkpoint and finish.
                    for id in &holding.jobs {
                        let position = jobs.iter().position(|job| job.id == *id).expect("held");
                        let job = checkpoint_passed(&jobs[position]).unwrap_or_else(|| jobs[position].clone());
                        let token = job.fencing_token;
                        jobs[position] = apply_orchestrator(&job, &OrchestratorOp::Complete { token }, now).expect("completed").job;
                    }
                }
            }
            for job in &jobs {
                if job.id == poison {
                    prop_assert_eq!(job.status, Status::Failed);
                    prop_assert_eq!(job.error.as_ref().map(|error| error.class.as_str()), Some("crash_loop"));
                } else {
                    prop_assert_eq!(job.status, Status::Succeeded);
                }
            }
            prop_assert!(deaths <= CRASH_LOOP_DEATHS + 1, "{} deaths", deaths);
        }

        // Guards rule 3: a takeover charges nothing until two lease lengths pass with no renewal
        // attempt from its holder; an attempt with the taken-over lease's token clears it; any
        // other token does not.
        #[test]
        fn a_takeover_is_charged_only_when_its_holder_stays_silent(
            wait_ms in 0..(4 * TTL_MS),
            returns in any::<bool>(),
            other_token in any::<bool>(),
        ) {
            let job = jobs(1).remove(0);
            let now = Timestamp(2_000);
            let op = OrchestratorOp::Claim { worker_id: worker(0), lease_ttl_ms: TTL_MS, holding: Holding::default() };
            let running = apply_orchestrator(&job, &op, now).expect("claimed").job;
            let token = running.fencing_token;
            let op = OrchestratorOp::ReclaimOrphan { reason: "lease expired".into(), marker: marker(1), seen: DeathSeen::LeaseExpired };
            let taken = apply_orchestrator(&running, &op, now.plus_ms(TTL_MS)).expect("taken over").job;
            prop_assert_eq!(taken.status, Status::Pending);
            prop_assert_eq!(taken.crashes, None, "a takeover charged at once");
            let mut job = taken.clone();
            if returns {
                let presented = if other_token { token + 1 } else { token };
                if let Some(next) = holder_returned(&job, presented) {
                    prop_assert!(!other_token);
                    job = next;
                } else {
                    prop_assert!(other_token);
                }
            }
            let at = now.plus_ms(TTL_MS + wait_ms);
            let settled = settle_takeover(&job, at, TTL_MS);
            let cleared = returns && !other_token;
            let due = wait_ms >= 2 * TTL_MS;
            prop_assert_eq!(settled.is_some(), due && !cleared);
            if let Some((next, record)) = settled {
                prop_assert_eq!(record.count, 1);
                prop_assert_eq!(next.attribution.takeover, None);
            }
        }
    }
}
