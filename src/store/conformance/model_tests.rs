//! A model-based test of the real stores: random sequences of submit, claim, phase, step done,
//! step failed, complete, cancel, retry, retry from a step, reingest, prune, lease expiry, crash and
//! restart, applied to a `SledStore` on disk (or a `PgStore` in a schema of its own, on a real
//! PostgreSQL server) and to a plain in-memory model written from the runbook's rules; after every
//! operation the store must agree with the model ("act like the model, even after crashes").
//! The PostgreSQL run has fewer cases (`NARRA_PG_MODEL_CASES`, default 64): each operation is a
//! round trip to a server.
//!
//! `Crash` drops the store without anything further (every acknowledged write was flushed, or
//! committed, before it was acknowledged) and reopens it; `Restart` does the same and then reclaims every running
//! job, as a job-running command does when it opens a home (`orchestrator::reclaim_orphans`).
//! Lease expiry is a reclaim of one running job. A real process crash, with sled's files cut at an
//! arbitrary instant, is the crash matrix's and the soak's business (`tests/suite/crash.rs`,
//! `tests/suite/soak.rs`).
//!
//! Invariants checked after every operation: the ownership rule and the phase table (a phase only
//! while running, a lease exactly while running and carrying the current token), no job lost or
//! duplicated (every key names its job), fencing (a write under any token but the current one is
//! refused and changes nothing, not even the job's `updated_at`), a succeeded job has every step's
//! checkpoint, the stores' trees agree (`check_consistency`), the job's status/phase history
//! replayed from its events passes only through rows of the phase table and ends where the job is,
//! and no job holds more than the store's event bound (set to [`EVENTS_MAX`] here, so most
//! sequences compact): a replay starts from the summary of the compacted events, and the summary
//! and the events held add up to the whole history.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use proptest::prelude::*;

use super::fixtures::{claim_next_as, listed};
use crate::model::job::{
    ChangeToken, Checkpoint, ErrorInfo, EventKind, Hash, Job, JobId, LeaseToken, Location, Phase,
    Status, StepOutput, Timestamp, WorkerId,
};
use crate::model::machine::Rejected;
use crate::store::{
    JobReader, OrchestratorStore, PgStore, SledStore, StateStore, StepEvent, StoreResult,
    SubmitOutcome, SubmitRequest,
};

const STEPS: [&str; 3] = ["download", "extract", "store"];
/// The phase of each step of `STEPS`.
const PHASES: [Phase; 3] = [Phase::Downloading, Phase::Processing, Phase::Storing];
const KEYS: usize = 2;
const LEASE_TTL_MS: u64 = 60_000;
/// The event bound of the model's store: a job's first run already outgrows it.
const EVENTS_MAX: u64 = 6;

/// Which token a worker write presents, resolved against the model when it is applied.
#[derive(Debug, Clone, Copy)]
enum TokenChoice {
    Current,
    /// This many claims old: what a worker from before a crash or a lease expiry still holds.
    Stale(u64),
    /// One no claim has handed out.
    Future,
}

#[derive(Debug, Clone)]
enum Op {
    Submit {
        key: usize,
        reingest: bool,
    },
    Claim {
        job: usize,
    },
    ClaimNext,
    SetPhase {
        job: usize,
        token: TokenChoice,
        phase: Phase,
    },
    /// The worker records the checkpoint of the job's next step without one.
    StepDone {
        job: usize,
        token: TokenChoice,
    },
    /// A step fails: the worker records `step_failed`, the orchestrator fails the job.
    StepFailed {
        job: usize,
        token: TokenChoice,
    },
    /// The orchestrator completes the job, as it does once the worker has every checkpoint.
    Complete {
        job: usize,
        token: TokenChoice,
    },
    Cancel {
        job: usize,
    },
    ConfirmCancel {
        job: usize,
        token: TokenChoice,
    },
    Retry {
        job: usize,
    },
    Reingest {
        job: usize,
    },
    /// `retry --from STEP`: a finished job back to pending without the checkpoints of
    /// `STEPS[step..]`.
    RetryFrom {
        job: usize,
        step: usize,
    },
    /// `prune` with a cutoff in the future: the job goes if it is finished, its key is free.
    Prune {
        job: usize,
    },
    LeaseExpiry {
        job: usize,
    },
    Crash,
    Restart,
    /// The job is claimed if it is pending; then a worker holding the current lease makes `steps` steps of progress (phase, checkpoint) and,
    /// once every step is done, the orchestrator completes the job: expanded into the operations
    /// above, so that short sequences also reach `succeeded`.
    Work {
        job: usize,
        steps: usize,
    },
}

impl Op {
    /// The job the operation names, if it names one.
    fn job(&self) -> Option<usize> {
        match self {
            Op::Claim { job }
            | Op::SetPhase { job, .. }
            | Op::StepDone { job, .. }
            | Op::StepFailed { job, .. }
            | Op::Complete { job, .. }
            | Op::Cancel { job }
            | Op::ConfirmCancel { job, .. }
            | Op::Retry { job }
            | Op::Reingest { job }
            | Op::RetryFrom { job, .. }
            | Op::Prune { job }
            | Op::LeaseExpiry { job }
            | Op::Work { job, .. } => Some(*job),
            Op::Submit { .. } | Op::ClaimNext | Op::Crash | Op::Restart => None,
        }
    }
}

/// The primitive operations of `op`.
fn expand(op: &Op) -> Vec<Op> {
    let Op::Work { job, steps } = op else {
        return vec![op.clone()];
    };
    let job = *job;
    // A claim first: refused, and harmless, when the job is not pending.
    let mut ops = vec![Op::Claim { job }];
    for phase in PHASES.into_iter().take(*steps) {
        ops.push(Op::SetPhase {
            job,
            token: TokenChoice::Current,
            phase,
        });
        ops.push(Op::StepDone {
            job,
            token: TokenChoice::Current,
        });
    }
    ops.push(Op::Complete {
        job,
        token: TokenChoice::Current,
    });
    ops
}

fn token_choice() -> impl Strategy<Value = TokenChoice> {
    prop_oneof![
        6 => Just(TokenChoice::Current),
        3 => (1..3u64).prop_map(TokenChoice::Stale),
        1 => Just(TokenChoice::Future),
    ]
}

fn phase() -> impl Strategy<Value = Phase> {
    prop::sample::select(PHASES.to_vec())
}

fn op() -> impl Strategy<Value = Op> {
    let job = 0..KEYS;
    prop_oneof![
        4 => (0..KEYS, prop::bool::weighted(0.3))
            .prop_map(|(key, reingest)| Op::Submit { key, reingest }),
        3 => job.clone().prop_map(|job| Op::Claim { job }),
        2 => Just(Op::ClaimNext),
        3 => (job.clone(), token_choice(), phase())
            .prop_map(|(job, token, phase)| Op::SetPhase { job, token, phase }),
        6 => (job.clone(), token_choice()).prop_map(|(job, token)| Op::StepDone { job, token }),
        1 => (job.clone(), token_choice()).prop_map(|(job, token)| Op::StepFailed { job, token }),
        3 => (job.clone(), token_choice()).prop_map(|(job, token)| Op::Complete { job, token }),
        1 => job.clone().prop_map(|job| Op::Cancel { job }),
        1 => (job.clone(), token_choice())
            .prop_map(|(job, token)| Op::ConfirmCancel { job, token }),
        2 => job.clone().prop_map(|job| Op::Retry { job }),
        1 => job.clone().prop_map(|job| Op::Reingest { job }),
        1 => (job.clone(), 0..STEPS.len()).prop_map(|(job, step)| Op::RetryFrom { job, step }),
        1 => job.clone().prop_map(|job| Op::Prune { job }),
        1 => job.prop_map(|job| Op::LeaseExpiry { job }),
        1 => Just(Op::Crash),
        1 => Just(Op::Restart),
        3 => (0..KEYS, 1..=STEPS.len()).prop_map(|(job, steps)| Op::Work { job, steps }),
    ]
}

/// What the runbook says a job is.
#[derive(Debug, Clone)]
struct ModelJob {
    id: JobId,
    key: String,
    status: Status,
    phase: Option<Phase>,
    /// The highest token handed out.
    token: u64,
    attempts: u32,
    cancel_requested: bool,
    steps_done: BTreeSet<&'static str>,
}

impl ModelJob {
    fn running(&self) -> bool {
        self.status == Status::Running
    }

    /// Moves to a status; leaving running drops the phase, the lease and a cancel request.
    fn set_status(&mut self, status: Status) {
        if status != Status::Running {
            self.phase = None;
            self.cancel_requested = false;
        }
        self.status = status;
    }

    /// A claim: the next token, one more attempt, running.
    fn claimed(&mut self) {
        self.token += 1;
        self.attempts += 1;
        self.set_status(Status::Running);
    }

    fn resolve(&self, choice: TokenChoice) -> u64 {
        match choice {
            TokenChoice::Current => self.token,
            TokenChoice::Stale(age) => self.token.saturating_sub(age),
            TokenChoice::Future => self.token + 1,
        }
    }

    /// A running job whose process is gone (dead, or its lease expired): back to pending, or
    /// cancelled if a cancel had been asked of it.
    fn reclaim(&mut self) {
        if self.cancel_requested {
            self.set_status(Status::Cancelled);
        } else {
            self.set_status(Status::Pending);
        }
    }

    /// Whether a worker write under `token` is accepted.
    fn holds(&self, token: u64) -> bool {
        self.running() && token == self.token
    }
}

#[derive(Default)]
struct Model {
    /// Jobs in submission order, indexed by their key number.
    jobs: Vec<Option<ModelJob>>,
}

impl Model {
    fn job(&self, index: usize) -> Option<&ModelJob> {
        self.jobs.get(index).and_then(Option::as_ref)
    }
}

fn key_name(index: usize) -> String {
    format!("model-key-{index}")
}

fn checkpoint(step: &str) -> Checkpoint {
    Checkpoint {
        step: step.to_string(),
        definition_hash: Hash::of(step.as_bytes()),
        input_hash: Hash([7; 32]),
        outputs: vec![StepOutput {
            name: step.to_string(),
            location: Location::Object(format!("blobs/00/{step}.bin")),
            size: 1,
            blake3: Hash([9; 32]),
            change_token: ChangeToken::None,
        }],
        recorded_at: Timestamp::now(),
    }
}

/// Where a case's store lives, and what the test needs of it beyond the traits: to be opened
/// again after a drop (a crash), and to check its records against each other.
#[async_trait]
trait Backend: Sync {
    type Store: StateStore;
    async fn open(&self) -> Self::Store;
    async fn check_consistency(&self, store: &Self::Store) -> StoreResult<()>;
}

struct SledBackend {
    path: PathBuf,
}

#[async_trait]
impl Backend for SledBackend {
    type Store = SledStore;

    async fn open(&self) -> SledStore {
        open(&self.path)
    }

    async fn check_consistency(&self, store: &SledStore) -> StoreResult<()> {
        store.check_consistency()
    }
}

struct PgBackend {
    uri: String,
}

#[async_trait]
impl Backend for PgBackend {
    type Store = PgStore;

    async fn open(&self) -> PgStore {
        let store = PgStore::open(&self.uri)
            .await
            .expect("open the PostgreSQL store");
        store.set_events_max(EVENTS_MAX);
        store
    }

    async fn check_consistency(&self, store: &PgStore) -> StoreResult<()> {
        store.check_consistency().await
    }
}

fn open(path: &Path) -> SledStore {
    let store = SledStore::open_patiently(
        path,
        4 * 1024 * 1024,
        crate::store::sled_store::TEST_PATIENCE,
    )
    .expect("open the sled store");
    store.set_events_max(EVENTS_MAX);
    store
}

fn lease_token(id: JobId, fencing_token: u64) -> LeaseToken {
    LeaseToken {
        job_id: id,
        fencing_token,
    }
}

/// What the model says of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expected {
    Accepted,
    /// Refused: the token presented is not the current one.
    Fenced,
    /// Refused: the job's status does not allow it.
    NotAllowed,
}

/// A write the job's status decides: accepted, or refused as not allowed.
fn allowed(allowed: bool) -> Expected {
    if allowed {
        Expected::Accepted
    } else {
        Expected::NotAllowed
    }
}

/// The store's answer agrees with the model's: an accepted write's value, or `None` when the
/// write was refused for the reason the model gives and changed nothing, not even the job's
/// `updated_at`.
async fn agreed<T: std::fmt::Debug>(
    store: &dyn StateStore,
    before: &Job,
    outcome: Result<T, Rejected>,
    expected: Expected,
) -> Result<Option<T>, TestCaseError> {
    if expected == Expected::Accepted {
        prop_assert!(outcome.is_ok(), "{outcome:?}");
        return Ok(outcome.ok());
    }
    let as_expected = matches!(
        (expected, &outcome),
        (Expected::Fenced, Err(Rejected::Fenced { .. }))
            | (Expected::NotAllowed, Err(Rejected::NotAllowed { .. }))
    );
    prop_assert!(
        as_expected,
        "expected a {expected:?} refusal, got {outcome:?}"
    );
    let after = store.job(before.id).await.expect("read").expect("exists");
    prop_assert_eq!(&after, before, "a refused write changed the job");
    Ok(None)
}

/// Applies one operation to the store and the model; returns the store (reopened by a crash).
async fn apply<B: Backend>(
    backend: &B,
    mut store: B::Store,
    model: &mut Model,
    op: &Op,
) -> Result<B::Store, TestCaseError> {
    match op {
        Op::Submit { key, reingest } => submit(&store, model, *key, *reingest).await?,
        Op::ClaimNext => claim_next(&store, model).await?,
        Op::Crash => {
            drop(store);
            store = backend.open().await;
        }
        Op::Restart => {
            drop(store);
            store = backend.open().await;
            for job in listed(&store, Some(Status::Running)).await {
                let reclaimed = store.reclaim(job.id, "restart").await.expect("reclaim");
                prop_assert!(reclaimed.is_ok(), "{reclaimed:?}");
            }
            for job in model.jobs.iter_mut().flatten() {
                if job.running() {
                    job.reclaim();
                }
            }
        }
        Op::Work { .. } => unreachable!("expanded before it is applied"),
        _ => apply_to_job(&store, model, op).await?,
    }
    Ok(store)
}

fn worker() -> WorkerId {
    WorkerId("model:1:1".to_string())
}

async fn submit(
    store: &dyn StateStore,
    model: &mut Model,
    key: usize,
    reingest: bool,
) -> Result<(), TestCaseError> {
    let request = SubmitRequest {
        key: key_name(key),
        source: format!("https://example.com/{key}.mp4"),
        workflow: "ingest".into(),
        reingest,
        priority: crate::model::job::PRIORITY_LIVE,
    };
    let submitted = store.submit(&request).await.expect("submit");
    if model.jobs.len() <= key {
        model.jobs.resize(key + 1, None);
    }
    let Some(job) = model.jobs[key].as_mut() else {
        prop_assert_eq!(submitted.outcome, SubmitOutcome::Created);
        model.jobs[key] = Some(ModelJob {
            id: submitted.job.id,
            key: request.key.clone(),
            status: Status::Pending,
            phase: None,
            token: 0,
            attempts: 0,
            cancel_requested: false,
            steps_done: BTreeSet::new(),
        });
        return Ok(());
    };
    prop_assert_eq!(submitted.job.id, job.id, "one job per key");
    let expected = match job.status {
        Status::Pending | Status::Running => SubmitOutcome::Existing,
        Status::Succeeded if !reingest => SubmitOutcome::Existing,
        Status::Succeeded => SubmitOutcome::Reingested,
        Status::Failed | Status::Cancelled => SubmitOutcome::Retried,
    };
    prop_assert_eq!(submitted.outcome, expected);
    if expected != SubmitOutcome::Existing {
        job.set_status(Status::Pending);
    }
    Ok(())
}

async fn claim_next(store: &dyn StateStore, model: &mut Model) -> Result<(), TestCaseError> {
    let claimed = claim_next_as(store, &worker()).await;
    // The oldest pending job, by id (ids are ULIDs: creation order, to the millisecond).
    let oldest = model
        .jobs
        .iter_mut()
        .flatten()
        .filter(|job| job.status == Status::Pending)
        .min_by_key(|job| job.id);
    match (claimed, oldest) {
        (None, None) => {}
        (Some((claimed, token)), Some(oldest)) => {
            prop_assert_eq!(
                claimed.id,
                oldest.id,
                "claim_next takes the oldest pending job"
            );
            oldest.claimed();
            prop_assert_eq!(token.fencing_token, oldest.token);
        }
        (claimed, oldest) => {
            prop_assert!(false, "claim_next gave {claimed:?}, the model {oldest:?}")
        }
    }
    Ok(())
}

/// Applies an operation on one job, if the model has that job: the store's answer must be the
/// model's, and an accepted write moves the model along.
async fn apply_to_job(
    store: &dyn StateStore,
    model: &mut Model,
    op: &Op,
) -> Result<(), TestCaseError> {
    let index = op.job().expect("an operation on a job");
    let Some(modeled) = model.job(index).cloned() else {
        return Ok(());
    };
    let id = modeled.id;
    let before = store.job(id).await.expect("read").expect("exists");
    let presented = |choice: TokenChoice| lease_token(id, modeled.resolve(choice));
    let writer = |choice: TokenChoice| {
        if modeled.holds(modeled.resolve(choice)) {
            Expected::Accepted
        } else {
            Expected::Fenced
        }
    };
    let job = model.jobs[index].as_mut().expect("modeled");
    match *op {
        Op::Claim { .. } => {
            let outcome = store.claim(id, &worker(), LEASE_TTL_MS).await;
            let expected = allowed(modeled.status == Status::Pending);
            let outcome = agreed(store, &before, outcome.expect("claim"), expected).await?;
            if let Some((claimed, token)) = outcome {
                job.claimed();
                prop_assert_eq!(token.fencing_token, job.token);
                prop_assert_eq!(claimed.id, job.id);
            }
        }
        Op::SetPhase { token, phase, .. } => {
            let outcome = store.set_phase(&presented(token), phase).await;
            let outcome = outcome.expect("set_phase");
            if agreed(store, &before, outcome, writer(token))
                .await?
                .is_some()
            {
                job.phase = Some(phase);
            }
        }
        Op::StepDone { token, .. } => {
            let Some(step) = STEPS
                .iter()
                .find(|step| !modeled.steps_done.contains(*step))
            else {
                return Ok(());
            };
            let outcome = store
                .record_checkpoint(&presented(token), &checkpoint(step), None)
                .await
                .expect("record_checkpoint");
            if agreed(store, &before, outcome, writer(token))
                .await?
                .is_some()
            {
                job.steps_done.insert(step);
            }
        }
        Op::StepFailed { token, .. } => {
            let error = ErrorInfo {
                class: "network_error".into(),
                message: "model failure".into(),
            };
            let failed = StepEvent::Failed {
                error: error.clone(),
            };
            let event = store
                .record_step_event(&presented(token), "download", failed)
                .await
                .expect("record_step_event");
            agreed(store, &before, event, writer(token)).await?;
            let outcome = store.fail(&presented(token), error).await.expect("fail");
            if agreed(store, &before, outcome, writer(token))
                .await?
                .is_some()
            {
                job.set_status(Status::Failed);
            }
        }
        Op::Complete { token, .. } => {
            // The orchestrator completes a job only when its worker reports every step done.
            if modeled.steps_done.len() < STEPS.len() {
                return Ok(());
            }
            let outcome = store.complete(&presented(token)).await;
            let outcome = outcome.expect("complete");
            if agreed(store, &before, outcome, writer(token))
                .await?
                .is_some()
            {
                job.set_status(Status::Succeeded);
            }
        }
        Op::Cancel { .. } => {
            let outcome = store.cancel(id).await.expect("cancel");
            let expected = allowed(!matches!(
                modeled.status,
                Status::Succeeded | Status::Cancelled
            ));
            if agreed(store, &before, outcome, expected).await?.is_some() {
                // A running job's worker is asked to stop; any other job stops at once.
                if job.running() {
                    job.cancel_requested = true;
                } else {
                    job.set_status(Status::Cancelled);
                }
            }
        }
        Op::ConfirmCancel { token, .. } => {
            let outcome = store.confirm_cancel(&presented(token)).await;
            let expected = match writer(token) {
                Expected::Accepted => allowed(modeled.cancel_requested),
                refused => refused,
            };
            let outcome = outcome.expect("confirm_cancel");
            if agreed(store, &before, outcome, expected).await?.is_some() {
                job.set_status(Status::Cancelled);
            }
        }
        Op::Retry { .. } => {
            let outcome = store.retry(id, "model retry").await.expect("retry");
            let expected = allowed(matches!(modeled.status, Status::Failed | Status::Cancelled));
            if agreed(store, &before, outcome, expected).await?.is_some() {
                job.set_status(Status::Pending);
            }
        }
        Op::Reingest { .. } => {
            let outcome = store.reingest(id).await.expect("reingest");
            let expected = allowed(modeled.status == Status::Succeeded);
            if agreed(store, &before, outcome, expected).await?.is_some() {
                job.set_status(Status::Pending);
            }
        }
        Op::RetryFrom { step, .. } => {
            let later: Vec<String> = STEPS[step + 1..].iter().map(|s| s.to_string()).collect();
            let outcome = store
                .retry_from(id, STEPS[step], &later, "model retry from")
                .await
                .expect("retry_from");
            let expected = allowed(modeled.status.is_terminal());
            if agreed(store, &before, outcome, expected).await?.is_some() {
                for discarded in &STEPS[step..] {
                    job.steps_done.remove(discarded);
                }
                job.set_status(Status::Pending);
            }
        }
        Op::Prune { .. } => {
            let cutoff = Timestamp::now().plus_ms(60_000);
            let outcomes = store.prune_jobs(&[id], cutoff).await.expect("prune_jobs");
            prop_assert_eq!(outcomes.len(), 1);
            let outcome = outcomes.into_iter().next().expect("one outcome");
            let expected = allowed(modeled.status.is_terminal());
            if agreed(store, &before, outcome, expected).await?.is_some() {
                let pruned = store.pruned_job(id).await.expect("pruned");
                prop_assert_eq!(
                    pruned.map(|tombstone| tombstone.status),
                    Some(modeled.status)
                );
                prop_assert!(store.job(id).await.expect("read").is_none());
                model.jobs[index] = None;
            }
        }
        Op::LeaseExpiry { .. } => {
            let outcome = store.reclaim(id, "lease expired").await;
            let expected = allowed(modeled.running());
            let outcome = outcome.expect("reclaim");
            if agreed(store, &before, outcome, expected).await?.is_some() {
                job.reclaim();
            }
        }
        Op::Submit { .. } | Op::ClaimNext | Op::Crash | Op::Restart | Op::Work { .. } => {
            unreachable!("{op:?} is applied by `apply`")
        }
    }
    Ok(())
}

/// The store agrees with the model, and every invariant holds.
async fn check<B: Backend>(
    backend: &B,
    store: &B::Store,
    model: &Model,
) -> Result<(), TestCaseError> {
    let modeled: Vec<&ModelJob> = model.jobs.iter().flatten().collect();
    let all = listed(store, None).await;
    prop_assert_eq!(all.len(), modeled.len(), "no job lost, none added");
    for expected in modeled {
        let job = store.job(expected.id).await.expect("read");
        prop_assert!(job.is_some(), "job {} lost", expected.id);
        let job = job.expect("checked");
        prop_assert_eq!(job.status, expected.status, "status of {}", expected.key);
        prop_assert_eq!(
            job.ingestion_phase,
            expected.phase,
            "phase of {}",
            expected.key
        );
        prop_assert_eq!(job.fencing_token, expected.token);
        prop_assert_eq!(job.attempts, expected.attempts);
        prop_assert_eq!(job.cancel_requested, expected.cancel_requested);
        // The ownership rule and the phase table: a phase only while running; one live lease,
        // exactly while running, carrying the current token.
        prop_assert!(job.ingestion_phase.is_none() || job.status == Status::Running);
        match &job.lease {
            Some(lease) => {
                prop_assert_eq!(job.status, Status::Running);
                prop_assert_eq!(lease.fencing_token, job.fencing_token);
            }
            None => prop_assert_ne!(job.status, Status::Running),
        }
        let by_key = store.job_by_key(&expected.key).await.expect("by key");
        prop_assert_eq!(by_key.map(|job| job.id), Some(expected.id));
        let checkpoints = store.checkpoints(expected.id).await.expect("checkpoints");
        let steps: BTreeSet<String> = checkpoints
            .into_iter()
            .map(|checkpoint| checkpoint.step)
            .collect();
        let expected_steps: BTreeSet<String> = expected
            .steps_done
            .iter()
            .map(|step| step.to_string())
            .collect();
        prop_assert_eq!(&steps, &expected_steps);
        if job.status == Status::Succeeded {
            prop_assert_eq!(
                steps.len(),
                STEPS.len(),
                "a succeeded job has every checkpoint"
            );
        }
        replay(store, &job).await?;
    }
    if let Err(error) = backend.check_consistency(store).await {
        prop_assert!(false, "inconsistent store: {error}");
    }
    Ok(())
}

/// The job's (status, phase) history from its events alone, starting where the summary of its
/// compacted events left it: every state is a row of the phase table, and the last is where the
/// job is. The history holds at most the bound, and with the summary adds up to `events_next`.
async fn replay(store: &dyn StateStore, job: &Job) -> Result<(), TestCaseError> {
    let summary = store.event_summary(job.id).await.expect("summary");
    let events = store.events(job.id).await.expect("events");
    prop_assert!(
        u64::try_from(events.len()).expect("small") <= EVENTS_MAX,
        "{} events held, bound {}",
        events.len(),
        EVENTS_MAX
    );
    let compacted = summary
        .as_ref()
        .map_or(0, |summary| summary.events_compacted);
    prop_assert_eq!(
        compacted + u64::try_from(events.len()).expect("small"),
        job.events_next
    );
    let mut status = summary.as_ref().and_then(|summary| summary.status);
    let mut phase = summary.as_ref().and_then(|summary| summary.phase);
    for event in events {
        match event.kind {
            EventKind::StatusChanged { from, to, .. } => {
                prop_assert_eq!(from, status, "a status event's from disagrees with history");
                status = Some(to);
            }
            EventKind::PhaseChanged { from, to } => {
                prop_assert_eq!(from, phase, "a phase event's from disagrees with history");
                phase = to;
            }
            _ => continue,
        }
        prop_assert!(
            phase.is_none() || status == Some(Status::Running),
            "the history passes through {status:?} with phase {phase:?}"
        );
    }
    prop_assert_eq!(status, Some(job.status));
    prop_assert_eq!(phase, job.ingestion_phase);
    Ok(())
}

/// Where each case's store lives: a tmpfs when there is one. The test is about the store's logic
/// across drops and reopens, not about the disk; on ext4 sled's flushes make it six times slower.
/// (Crashes against a real disk are the crash matrix's and the soak's.)
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().expect("a temp dir")
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_sled_store_acts_like_the_model_even_after_crashes(ops in prop::collection::vec(op(), 1..16)) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let dir = scratch_dir();
        let backend = SledBackend { path: dir.path().join("state") };
        runtime.block_on(run_case(&backend, &ops))?;
    }
}

/// One case: the ops, each followed by a check, then a last crash and check.
async fn run_case<B: Backend>(backend: &B, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut store = backend.open().await;
    let mut model = Model::default();
    // Every sequence starts with a job, so that more of it exercises one.
    let first = Op::Submit {
        key: 0,
        reingest: false,
    };
    for op in std::iter::once(first).chain(ops.iter().flat_map(expand)) {
        store = apply(backend, store, &mut model, &op).await?;
        check(backend, &store, &model).await?;
    }
    // A last restart: what was acknowledged is all still there.
    store = apply(backend, store, &mut model, &Op::Crash).await?;
    check(backend, &store, &model).await
}

// The same model, on PostgreSQL: each case in a fresh schema of one server (a throwaway cluster,
// or `NARRA_TEST_POSTGRES_URL`'s).
#[test]
fn the_postgres_store_acts_like_the_model_even_after_crashes() {
    let cases = std::env::var("NARRA_PG_MODEL_CASES")
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .unwrap_or(64);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let server = runtime.block_on(crate::store::pg_store::test_server::TestServer::start());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&prop::collection::vec(op(), 1..16), |ops| {
        runtime.block_on(async {
            let backend = PgBackend {
                uri: server.fresh_schema("model").await,
            };
            run_case(&backend, &ops).await
        })
    });
    runtime.block_on(server.cleanup());
    if let Err(error) = result {
        panic!("{error}");
    }
}
