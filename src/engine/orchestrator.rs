//! The orchestrator: submits jobs, claims them, and moves their global `status`.
//!
//! It sees the state store only as an `OrchestratorStore`, so it cannot set a phase: it hands a
//! claimed job to the worker (`engine::worker`) and turns the worker's outcome into `succeeded`,
//! `failed` or `cancelled`. While a job runs, it renews the job's lease and watches for a cancel
//! request, which it passes to the worker's steps so they can kill their subprocesses.

use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

#[cfg(test)]
use crate::engine::Engine;
use crate::engine::Orchestrator;
use std::collections::BTreeSet;

use crate::engine::worker::{FencedWrite, WorkOutcome, execute};
use crate::model::job::{ErrorInfo, Job, JobId, LeaseToken, PRIORITY_LIVE, Status, Timestamp};
use crate::model::machine::Rejected;
use crate::model::scheduling::{HostOutcome, STORAGE_BREAKER};
use crate::model::sources::source_host;
use crate::model::sources::{
    LocalPaths, SourceError, canonical_source, check_key, idempotency_key,
};
use crate::store::{
    ClaimNext, ClaimRequest, NewIncident, OrchestratorStore, StoreError, SubmitRequest, Submitted,
};

/// What a caller asks to submit.
#[derive(Debug, Clone, Default)]
pub struct SubmitOptions {
    pub workflow: Option<String>,
    /// The caller's own idempotency key; the normalised source is used when there is none.
    pub key: Option<String>,
    pub reingest: bool,
    /// The new jobs' priority (`Job::priority`); [`PRIORITY_LIVE`] when `None`.
    pub priority: Option<i32>,
    /// Whether local paths may be submitted and what relative ones are resolved against: the
    /// submitting client's working directory when another process serves the command
    /// (`cli::remote`), this process's by default; refused for the HTTP API.
    pub local_paths: LocalPaths,
    /// Where the jobs' completion notices go (`webhook`); the workflow's `callback_url` when
    /// `None`. Replaces the URL an existing job of the same key had.
    pub callback_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Workflow(#[from] crate::workflow::WorkflowError),
    #[error("{0}")]
    Rejected(#[from] Rejected),
    /// The request itself is wrong (a usage error).
    #[error("{0}")]
    Usage(String),
    /// A callback URL the webhook rules refuse (a usage error with a class).
    #[error(transparent)]
    Callback(#[from] crate::engine::webhook::CallbackError),
    /// A source refused at submission (a usage error with a class).
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// The callback URL a submission gives its jobs: its own, else its workflow's; checked
/// (`webhook::check_callback_url`) before anything is submitted.
pub fn callback_for(
    engine: &Orchestrator,
    workflow: &crate::workflow::Workflow,
    callback_url: Option<&str>,
) -> Result<Option<String>, EngineError> {
    match callback_url.or(workflow.callback_url.as_deref()) {
        Some(url) => Ok(Some(crate::engine::webhook::check_callback_url(
            engine, url,
        )?)),
        None => Ok(None),
    }
}

/// Submits sources idempotently: a key that has a job never gets a second one.
pub async fn submit(
    engine: &Orchestrator,
    sources: &[String],
    options: &SubmitOptions,
) -> Result<Vec<Submitted>, EngineError> {
    let workflow_name = options
        .workflow
        .clone()
        .unwrap_or_else(|| crate::workflow::DEFAULT_WORKFLOW.to_string());
    let workflow = engine.workflows.get(&workflow_name)?;
    let callback_url = callback_for(engine, workflow, options.callback_url.as_deref())?;
    if options.key.is_some() && sources.len() > 1 {
        return Err(EngineError::Usage(
            "--key names one job: give it with a single source".to_string(),
        ));
    }
    if let Some(key) = &options.key {
        check_key(key)?;
    }
    // Every source is checked before any is submitted: a refused one submits nothing.
    let base_dir = options.local_paths.base_dir(crate::engine::working_dir);
    let sources = sources
        .iter()
        .map(|source| canonical_source(source, base_dir.as_deref()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut submitted = Vec::with_capacity(sources.len());
    for source in sources {
        let key = options
            .key
            .clone()
            .unwrap_or_else(|| idempotency_key(&source, &workflow_name));
        let request = SubmitRequest {
            key,
            source,
            workflow: workflow_name.clone(),
            reingest: options.reingest,
            priority: options.priority.unwrap_or(PRIORITY_LIVE),
        };
        let result = engine.store.submit(&request).await?;
        tracing::info!(job_id = %result.job.id, outcome = ?result.outcome, source = %crate::model::redact::redact_url(&request.source), "submitted");
        submitted.push(result);
    }
    // After the jobs exist (their ids are the records' keys). A job that finishes in between is
    // not missed: `set_webhooks` queues the notice of a job it finds finished.
    if let Some(url) = callback_url {
        let hooks: Vec<_> = submitted
            .iter()
            .map(|result| (result.job.id, url.clone()))
            .collect();
        engine.store.set_webhooks(&hooks).await?;
    }
    Ok(submitted)
}

/// Every job found `running` when a process opens a store it holds alone belongs to a dead
/// process: it goes back to `pending` (its old fencing token is dead with it) and resumes from its
/// checkpoints when next claimed.
///
/// A store other processes share (`OrchestratorStore::shared`, PostgreSQL) is not held alone: a
/// running job there is an orphan only once its lease has expired, since its holder renews the
/// lease while it lives. (Between this read and the reclaim a holder may renew; the reclaim then
/// takes a live job, and the holder's next write is refused by its stale fencing token: work is
/// repeated, never overwritten.)
///
/// Whom each death is charged to is `model::attribution`'s rule: only a job that ran alone in
/// its process is charged; the jobs of a process that held several become suspects. In a fleet a
/// takeover is a provisional charge, settled here once two lease lengths pass without a word from
/// its old holder.
pub async fn reclaim_orphans(engine: &Orchestrator) -> Result<Vec<Job>, EngineError> {
    let running = engine.all_jobs(Some(Status::Running)).await?;
    let shared = engine.store.shared();
    let now = crate::model::job::Timestamp::now();
    let mut reclaimed = Vec::with_capacity(running.len());
    for job in running {
        if shared
            && job
                .lease
                .as_ref()
                .is_some_and(|lease| lease.expires_at > now)
        {
            continue;
        }
        match engine
            .store
            .reclaim_orphan(job.id, "reclaimed: the process that ran it is gone")
            .await?
        {
            Ok(job) if job.status == Status::Failed => {
                tracing::error!(job_id = %job.id, "quarantined: its process died again and again at the same point (crash_loop)");
                reclaimed.push(job);
            }
            Ok(job) => {
                tracing::warn!(job_id = %job.id, "reclaimed a job left running by a dead process");
                reclaimed.push(job);
            }
            Err(rejected) => tracing::debug!(%rejected, "not reclaimed"),
        }
    }
    // A takeover is charged as a death only once its old holder stayed silent two lease lengths
    // (`model::attribution`); each sweep charges those that did.
    if shared {
        for job in engine.store.settle_takeovers(engine.lease_ttl_ms).await? {
            if job.status == Status::Failed {
                tracing::error!(job_id = %job.id, "quarantined: the processes running it alone died again and again at the same point (crash_loop)");
            } else {
                tracing::warn!(job_id = %job.id, "a takeover's holder never came back: its death is charged");
            }
        }
    }
    Ok(reclaimed)
}

/// Claims one pending job by id and runs it to a terminal status (or leaves it to whoever holds
/// its lease), whatever the scheduling rules say: for tests and tools; commands go through
/// [`schedule`].
pub async fn run_job(engine: &Orchestrator, id: JobId) -> Result<Job, EngineError> {
    let store: Arc<dyn OrchestratorStore> = engine.store.clone();
    // Shutting down: a job not yet claimed stays as it is, for the next run.
    if engine.shutdown.is_draining() {
        return store
            .job(id)
            .await?
            .ok_or(EngineError::Rejected(Rejected::NotFound(id)));
    }
    let (job, token) = match store
        .claim(id, &engine.worker_id, engine.lease_ttl_ms)
        .await?
    {
        Ok(claimed) => claimed,
        Err(rejected) => {
            tracing::debug!(%rejected, "not claimed");
            return store
                .job(id)
                .await?
                .ok_or(EngineError::Rejected(Rejected::NotFound(id)));
        }
    };
    run_claimed(engine, job, token).await
}

/// Runs a job this process has claimed.
pub async fn run_claimed(
    engine: &Orchestrator,
    job: Job,
    token: LeaseToken,
) -> Result<Job, EngineError> {
    let span = tracing::info_span!("job", job_id = %job.id);
    async move {
        let store: Arc<dyn OrchestratorStore> = engine.store.clone();
        tracing::info!(source = %crate::model::redact::redact_url(&job.source), workflow = %job.workflow, attempt = job.attempts, "job started");
        let (cancel_sender, cancel) = tokio::sync::watch::channel(false);
        let fenced = FencedWrite::default();
        // Aborted when dropped too, so a job future dropped mid-step stops renewing its lease.
        let keeper = AbortOnDrop(tokio::spawn(keep_lease(
            store.clone(),
            token.clone(),
            engine.lease_ttl_ms,
            cancel_sender,
            engine.shutdown.clone(),
            fenced.clone(),
        )));
        crate::failpoint!("job.start", &job.source);
        let outcome = execute(engine, engine.worker.clone(), &job, &token, cancel, &fenced).await;
        drop(keeper);
        let lease_lost = matches!(outcome, Ok(WorkOutcome::LeaseLost));
        // The run's final transition. Its store errors are looked at below, so `?` stops here.
        let ended: Result<Result<Job, Rejected>, EngineError> = async {
            Ok(match outcome {
                Ok(WorkOutcome::Done) => {
                    record_host_outcome(engine, &job, None).await?;
                    crate::failpoint!("complete.before");
                    let completed = store.complete(&token).await?;
                    crate::failpoint!("complete.after");
                    completed
                }
                Ok(WorkOutcome::CancelRequested) => store.confirm_cancel(&token).await?,
                Ok(WorkOutcome::ShuttingDown) => release(store.as_ref(), &token).await?,
                Ok(WorkOutcome::LeaseLost) => {
                    tracing::warn!("the lease was lost; another claim owns the job now");
                    // The job as its new holder has it: this run ends without a transition.
                    store.job(job.id).await?.ok_or(Rejected::NotFound(job.id))
                }
                Err(error) => {
                    let error_info = ErrorInfo {
                        class: error.class.as_str().to_string(),
                        message: error.message.clone(),
                    };
                    let verdict = record_host_outcome(engine, &job, Some(error.class.as_str())).await?;
                    let attempts_max = engine
                        .workflows
                        .get(&job.workflow)
                        .map_or(1, |workflow| workflow.attempts_max);
                    if verdict.hold {
                        let held_by = if HostOutcome::of_storage(Some(error.class.as_str())).is_some() {
                            "the storage's circuit breaker is open: storing is paused".to_string()
                        } else {
                            format!("the circuit breaker of host {} is open", source_host(&job.source))
                        };
                        tracing::warn!(class = %error_info.class, "held: {held_by}; the attempt is not counted");
                        store.hold(&token, &format!(
                            "held: {held_by} ({}: {})",
                            error_info.class, error_info.message
                        ), None).await?
                    } else if error.class == crate::model::ErrorClass::ScratchLow {
                        let not_before =
                            Timestamp::now().plus_ms(engine.scheduling.retry.delay_initial_ms);
                        tracing::warn!("{}; the job waits, its attempt not counted", error_info.message);
                        let reason = format!("waiting for scratch space: {}", error_info.message);
                        store.hold(&token, &reason, Some((not_before, error_info))).await?
                    } else if error.class.retryable() && job.attempts < attempts_max {
                        let delay_ms = engine.scheduling.retry.delay_ms(job.attempts);
                        let not_before = Timestamp::now().plus_ms(delay_ms);
                        tracing::warn!(class = %error_info.class, attempt = job.attempts, attempts_max, delay_ms, "transient failure: retried automatically after a delay");
                        store.retry_later(&token, error_info, not_before).await?
                    } else {
                        crate::failpoint!("fail.before");
                        let failed = store.fail(&token, error_info).await?;
                        crate::failpoint!("fail.after");
                        failed
                    }
                }
            })
        }
        .await;
        let result = match ended {
            // On a shared store, a final transition can fail because the server ended this
            // process's session (it was stopped mid-transaction, or its connection dropped): the
            // job may have been taken over meanwhile. A lease renewal under the same token asks
            // fencing: if it is refused, the job is another claim's, and that refusal is this
            // run's fenced write.
            Err(EngineError::Store(error)) if engine.store.shared() => {
                match store.renew_lease(&token, engine.lease_ttl_ms).await {
                    Ok(Err(rejected)) => {
                        tracing::warn!(%error, "the final transition failed and the lease is gone");
                        fenced.note("lease renewal", &rejected);
                        record_fenced_write(engine, &token, &fenced).await;
                        return store.job(job.id).await?.ok_or(EngineError::Rejected(Rejected::NotFound(job.id)));
                    }
                    _ => return Err(EngineError::Store(error)),
                }
            }
            ended => ended?,
        };
        if let Err(rejected) = &result {
            fenced.note("final transition", rejected);
        }
        record_fenced_write(engine, &token, &fenced).await;
        match result {
            Ok(job) => {
                match &job.error {
                    _ if lease_lost => {}
                    Some(error) if job.status == Status::Failed => tracing::error!(class = %error.class, "job failed: {}", error.message),
                    _ => tracing::info!(status = %job.status, "job finished"),
                }
                Ok(job)
            }
            Err(rejected) => {
                tracing::warn!(%rejected, "the final transition was refused");
                store.job(job.id).await?.ok_or(EngineError::Rejected(Rejected::NotFound(job.id)))
            }
        }
    }
    .instrument(span)
    .await
}

/// Records a run's write that fencing refused, if there was one, as a `fenced_write` incident: the
/// job was taken over while this process held it (it was stopped, paused or cut off past its lease)
/// and this process wrote nothing more to it. The incident names the job, this worker, the stale
/// token, and the current lease. Best effort: a failure to record it is logged, not returned, since
/// the job itself is the new holder's.
async fn record_fenced_write(engine: &Orchestrator, token: &LeaseToken, fenced: &FencedWrite) {
    let Some((write, rejected)) = fenced.take() else {
        return;
    };
    let holder = match engine.store.job(token.job_id).await {
        Ok(Some(job)) => match &job.lease {
            Some(lease) => format!(
                "now held by {} under token {}",
                lease.worker_id, lease.fencing_token
            ),
            None => format!("now {} and held by nobody", job.status),
        },
        Ok(None) => "now deleted".to_string(),
        Err(error) => format!("unreadable ({error})"),
    };
    let reason = format!(
        "a {write} write by worker {} under fencing token {} was refused ({rejected}); the job is {holder}; this worker stopped it",
        engine.worker_id, token.fencing_token
    );
    tracing::warn!(%reason, "fenced: another claim took the job over");
    let incident = NewIncident {
        actor: engine.worker_id.to_string(),
        action: FENCED_WRITE.to_string(),
        job: Some(token.job_id),
        key: Some(format!("token {}", token.fencing_token)),
        reason,
    };
    if let Err(error) = engine.store.record_incident(incident).await {
        tracing::error!(%error, "cannot record the fenced_write incident");
    }
}

/// The incident action of a write refused by fencing (see [`record_fenced_write`]).
pub const FENCED_WRITE: &str = "fenced_write";

/// Records a finished run on its source host's breaker (`model::scheduling`), and an opened
/// breaker in the incident log: it is an escalation the runbook asks for.
async fn record_host_outcome(
    engine: &Orchestrator,
    job: &Job,
    class: Option<&str>,
) -> Result<crate::model::scheduling::OutcomeVerdict, EngineError> {
    let mut verdict = crate::model::scheduling::OutcomeVerdict::default();
    if let Some(outcome) = HostOutcome::of_storage(class) {
        let mut storage_policy = engine.scheduling.clone();
        storage_policy.breaker = storage_policy.breaker.for_storage();
        let storage = engine
            .store
            .record_host_outcome(STORAGE_BREAKER, job.id, &outcome, &storage_policy)
            .await?;
        if storage.opened {
            tracing::error!(
                "the storage does not answer: storing is paused (no job is claimed) until a probe job gets through"
            );
            circuit_opened(
                engine,
                job,
                STORAGE_BREAKER.to_string(),
                "the storage did not answer (storage_unavailable): no job is claimed until one probe job stores again".to_string(),
            )
            .await?;
        }
        verdict.hold |= storage.hold;
    }
    let Some(outcome) = HostOutcome::of_run(class) else {
        return Ok(verdict);
    };
    let host = source_host(&job.source);
    let host_verdict = engine
        .store
        .record_host_outcome(&host, job.id, &outcome, &engine.scheduling)
        .await?;
    verdict.hold |= host_verdict.hold;
    if host_verdict.opened {
        let breaker = &engine.scheduling.breaker;
        tracing::error!(host = %host, "circuit breaker opened: the host's jobs are held (not failed) until a probe job gets through");
        circuit_opened(
            engine,
            job,
            host.clone(),
            format!(
                "{} refusals ({}) from {host} in a row within {} s: its pending jobs are held, then one probe job tests it",
                breaker.failures_max,
                class.unwrap_or("unknown"),
                breaker.window_ms / 1000
            ),
        )
        .await?;
    }
    Ok(verdict)
}

/// Records the incident of the breaker `key` opening on `job`'s outcome, saying why.
async fn circuit_opened(
    engine: &Orchestrator,
    job: &Job,
    key: String,
    reason: String,
) -> Result<(), StoreError> {
    engine
        .store
        .record_incident(NewIncident {
            actor: "narra".to_string(),
            action: "circuit_opened".to_string(),
            job: Some(job.id),
            key: Some(key),
            reason,
        })
        .await?;
    Ok(())
}

/// Gives a job this process holds back to `pending` because the process is shutting down (the
/// reclaim transition: phase cleared, lease cleared, this token fenced from now on). A job whose
/// lease is no longer ours is left to its new holder; one asked to cancel ends cancelled.
async fn release(
    store: &dyn OrchestratorStore,
    token: &LeaseToken,
) -> Result<Result<Job, Rejected>, EngineError> {
    let current = store
        .job(token.job_id)
        .await?
        .ok_or(EngineError::Rejected(Rejected::NotFound(token.job_id)))?;
    let ours = current.status == Status::Running
        && current
            .lease
            .as_ref()
            .is_some_and(|lease| lease.fencing_token == token.fencing_token);
    if !ours {
        return Ok(Ok(current));
    }
    let released = store.reclaim(token.job_id, RELEASED_AT_SHUTDOWN).await?;
    if released.is_ok() {
        tracing::warn!("released at shutdown: back to pending, resumes from its checkpoints");
    }
    Ok(released)
}

/// The reason recorded when a shutting-down process gives a job back.
pub const RELEASED_AT_SHUTDOWN: &str = "released: the worker shut down before the job finished";

/// Renews the lease every third of its length and passes a cancel request, a lost lease or the end
/// of the shutdown grace period to the worker through `cancel`.
async fn keep_lease(
    store: Arc<dyn OrchestratorStore>,
    token: LeaseToken,
    lease_ttl_ms: u64,
    cancel: tokio::sync::watch::Sender<bool>,
    shutdown: crate::engine::shutdown::Shutdown,
    fenced: FencedWrite,
) {
    let renew_every = Duration::from_millis((lease_ttl_ms / 3).max(1));
    let poll_every = Duration::from_millis(250).min(renew_every);
    let mut since_renewal = Duration::ZERO;
    let mut grace_over = false;
    loop {
        if grace_over {
            tokio::time::sleep(poll_every).await;
        } else {
            tokio::select! {
                () = tokio::time::sleep(poll_every) => {}
                () = shutdown.expired() => {
                    tracing::warn!("the shutdown grace period is over: cancelling the running step");
                    grace_over = true;
                    let _ = cancel.send(true);
                    continue;
                }
            }
        }
        since_renewal += poll_every;
        if since_renewal >= renew_every {
            since_renewal = Duration::ZERO;
            match store.renew_lease(&token, lease_ttl_ms).await {
                Ok(Ok(_)) => {}
                Ok(Err(rejected)) => {
                    tracing::warn!(%rejected, "lease renewal refused; stopping the job");
                    fenced.note("lease renewal", &rejected);
                    let _ = cancel.send(true);
                    return;
                }
                Err(error) => tracing::error!(%error, "lease renewal failed"),
            }
        }
        if let Ok(Some(job)) = store.job(token.job_id).await
            && job.cancel_requested
        {
            let _ = cancel.send(true);
        }
    }
}

/// Runs the given jobs, at most `concurrency` at once, and returns them in the order given.
pub async fn run_jobs(
    engine: &Orchestrator,
    ids: &[JobId],
    concurrency: usize,
) -> Result<Vec<Job>, EngineError> {
    run_jobs_observed(engine, ids, concurrency, |_| {}).await
}

/// [`run_jobs`], handing each job to `on_finished` as it ends, in the order they end (progress
/// reports). The jobs go through the same scheduler as `work` ([`schedule`]): per-host limits,
/// breakers and retry delays apply, and the call returns once none of them is pending or running
/// (a job retried automatically is waited for).
pub async fn run_jobs_observed(
    engine: &Orchestrator,
    ids: &[JobId],
    concurrency: usize,
    on_finished: impl FnMut(&Job),
) -> Result<Vec<Job>, EngineError> {
    let only: BTreeSet<JobId> = ids.iter().copied().collect();
    let options = ScheduleOptions {
        concurrency,
        only: Some(&only),
        until: Until::Drained,
    };
    schedule(engine, &options, std::future::pending(), on_finished).await?;
    let mut jobs = Vec::with_capacity(ids.len());
    for &id in ids {
        jobs.push(
            engine
                .store
                .job(id)
                .await?
                .ok_or(EngineError::Rejected(Rejected::NotFound(id)))?,
        );
    }
    Ok(jobs)
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// When [`schedule`] returns (besides its shutdown future resolving).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Once no job (of those asked for) is pending and none is running: jobs waiting for a retry
    /// delay or a breaker's cool-down are waited for.
    Drained,
    /// Never: a long-running worker.
    Shutdown,
}

/// What [`schedule`] runs.
#[derive(Debug, Clone, Copy)]
pub struct ScheduleOptions<'a> {
    pub concurrency: usize,
    /// Only these jobs; every queued job when `None`.
    pub only: Option<&'a BTreeSet<JobId>>,
    pub until: Until,
}

/// How long an idle scheduler waits before asking the store again when it knows no better time.
const IDLE_POLL: Duration = Duration::from_millis(500);
/// The longest a waiting scheduler sleeps at once, so new work and shutdowns are seen.
const WAIT_MAX: Duration = Duration::from_secs(5);

/// How long a command that ends with its jobs goes on starting webhook sends before it exits.
const FINAL_DELIVERY_BUDGET: Duration = Duration::from_secs(15);
/// How many claims in a row may fail with a shared store's error before the scheduler gives up
/// (and its process exits with the error): about half a minute of outage, at one try a second.
const CLAIM_STORE_ERRORS_MAX: u32 = 30;
/// The pause before a claim that failed with a shared store's error is tried again.
const CLAIM_STORE_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Runs queued jobs, up to `options.concurrency` at once, in the store's claim order (priority,
/// then age) under its scheduling rules (`model::scheduling`), handing each job that reached a
/// terminal status to `on_finished`. Returns when `shutdown` resolves (no new job is claimed; running ones end as
/// the shutdown rules say) or, with [`Until::Drained`], when nothing is left to run.
pub async fn schedule(
    engine: &Orchestrator,
    options: &ScheduleOptions<'_>,
    shutdown: impl Future<Output = ()>,
    mut on_finished: impl FnMut(&Job),
) -> Result<(), EngineError> {
    let semaphore = Arc::new(tokio::sync::Semaphore::new(options.concurrency.max(1)));
    // Every process that runs jobs sends the completion notices due, its own jobs' and others'.
    let (stop_notifier, notifier_stop) = tokio::sync::watch::channel(false);
    let mut notifier = AbortOnDrop(tokio::spawn(crate::engine::webhook::run_notifier(
        engine.clone(),
        notifier_stop,
    )));
    let mut tasks = tokio::task::JoinSet::new();
    let mut first_error = None;
    let mut finish = |joined: Result<Result<Job, EngineError>, tokio::task::JoinError>,
                      first_error: &mut Option<EngineError>| match joined {
        // A run that ended pending (an automatic retry, a held job, a release at shutdown) is not
        // the job's end: it is handed over when it ends.
        Ok(Ok(job)) if job.status.is_terminal() => {
            // Its webhook notice (if any) was queued with the transition: send it now.
            engine.notifier_wake.notify_one();
            on_finished(&job);
        }
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            tracing::error!(%error, "a job could not be run");
            first_error.get_or_insert(error);
        }
        Err(join_error) => tracing::error!(%join_error, "a job task panicked"),
    };
    tokio::pin!(shutdown);
    // On a shared store, a process that died (or stopped) leaves running jobs nobody will end:
    // a running scheduler takes over those whose lease expired, once per lease length.
    let sweep_every = Duration::from_millis(engine.lease_ttl_ms);
    let mut next_sweep = tokio::time::Instant::now();
    let mut store_errors = 0u32;
    loop {
        let permit = tokio::select! {
            // Shutdown first: once asked to stop, no new job is claimed.
            biased;
            () = &mut shutdown => break,
            permit = semaphore.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        if engine.shutdown.is_draining() {
            break;
        }
        let request = ClaimRequest {
            worker_id: &engine.worker_id,
            lease_ttl_ms: engine.lease_ttl_ms,
            policy: &engine.scheduling,
            only: options.only,
        };
        let attempt: Result<ClaimNext, EngineError> = async {
            if engine.store.shared() && tokio::time::Instant::now() >= next_sweep {
                reclaim_orphans(engine).await?;
                next_sweep = tokio::time::Instant::now() + sweep_every;
            }
            crate::failpoint!("claim.before");
            Ok(engine.store.claim_next(&request).await?)
        }
        .await;
        let claimed = match attempt {
            Ok(claimed) => {
                store_errors = 0;
                claimed
            }
            // A shared store is a server a network away: a dropped connection, a failover, or a
            // session the server ended (this process was stopped mid-transaction) fails one claim,
            // not the jobs this process is running. It tries again, for a bounded while.
            Err(EngineError::Store(error))
                if engine.store.shared() && store_errors < CLAIM_STORE_ERRORS_MAX =>
            {
                store_errors += 1;
                tracing::error!(%error, store_errors, "cannot claim: the state store failed; trying again shortly");
                drop(permit);
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(CLAIM_STORE_ERROR_PAUSE) => {}
                }
                continue;
            }
            Err(error) => return Err(error),
        };
        let wait_until = match claimed {
            ClaimNext::Claimed(job, token) => {
                crate::failpoint!("claim.after");
                let engine = engine.clone();
                tasks.spawn(async move {
                    let _permit = permit;
                    run_claimed(&engine, *job, token).await
                });
                while let Some(joined) = tasks.try_join_next() {
                    finish(joined, &mut first_error);
                }
                continue;
            }
            ClaimNext::Wait { until } => until,
            ClaimNext::Empty => {
                if tasks.is_empty() && options.until == Until::Drained {
                    break;
                }
                None
            }
        };
        drop(permit);
        // Nothing may start now: wait for a running job to end (it frees a slot and a host), for
        // the time the store named, or for a while (new work, another process's jobs).
        let pause = match wait_until {
            Some(until) => {
                let ms = u64::try_from(until.0.saturating_sub(Timestamp::now().0)).unwrap_or(0);
                Duration::from_millis(ms).clamp(Duration::from_millis(10), WAIT_MAX)
            }
            // A shared store wakes this wait itself when work arrives or a job of any process
            // stops (`OrchestratorStore::wait_for_work`): no need to ask it often.
            None if engine.store.shared() => WAIT_MAX,
            None => IDLE_POLL,
        };
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => finish(joined, &mut first_error),
            () = engine.store.wait_for_work(pause) => {}
        }
    }
    while let Some(joined) = tasks.join_next().await {
        finish(joined, &mut first_error);
    }
    // A command that ends once its jobs do lets the notifier finish what it is sending and
    // sends what is due once more before it exits, for at most `FINAL_DELIVERY_BUDGET` (then no
    // new send starts); a notice not delivered then waits in the store for the next process that
    // runs jobs. At shutdown (a signal, or a long-running
    // worker), a send in flight is dropped: its claim runs out and another process sends it again.
    if options.until == Until::Drained && !engine.shutdown.is_draining() {
        let _ = stop_notifier.send(true);
        if let Err(join_error) = (&mut notifier.0).await {
            tracing::error!(%join_error, "the webhook notifier task failed");
        }
        let deadline = tokio::time::Instant::now() + FINAL_DELIVERY_BUDGET;
        let past_deadline = || tokio::time::Instant::now() >= deadline;
        if let Err(error) = crate::engine::webhook::deliver_due(engine, past_deadline).await {
            tracing::error!(%error, "could not send the webhook notices due");
        }
    }
    drop(notifier);
    match first_error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Runs queued jobs, up to `concurrency` at once. With `drain`, returns once no job is pending and
/// none is running, with the jobs it ran; otherwise runs until `shutdown` resolves, and keeps no
/// list of the jobs it ran (a long-running worker's memory must not grow with them).
pub async fn work(
    engine: &Orchestrator,
    concurrency: usize,
    drain: bool,
    shutdown: impl Future<Output = ()>,
) -> Result<Vec<Job>, EngineError> {
    let options = ScheduleOptions {
        concurrency,
        only: None,
        until: if drain {
            Until::Drained
        } else {
            Until::Shutdown
        },
    };
    let mut finished = Vec::new();
    schedule(engine, &options, shutdown, |job| {
        if drain {
            finished.push(job.clone());
        }
    })
    .await?;
    Ok(finished)
}

/// Engines for the tests of every door: an in-memory storage and the built-in workflows over
/// the store and network policy the test picks, so a test states only what it varies.
#[cfg(test)]
pub(crate) mod test_engine {
    use std::path::Path;
    use std::sync::Arc;

    use crate::engine::Engine;
    use crate::steps::net::NetworkPolicy;
    use crate::storage::Storage;
    use crate::store::{SledStore, StateStore};
    use crate::workflow::WorkflowRegistry;

    /// An engine over `store`, with its home at `home`.
    pub(crate) fn over(store: Arc<dyn StateStore>, home: &Path, network: NetworkPolicy) -> Engine {
        Engine::new(
            store,
            Storage::from_uri("memory://").unwrap(),
            WorkflowRegistry::builtin(),
            home,
            network,
        )
    }

    /// An engine over a fresh sled store in `home/state`.
    pub(crate) fn on_sled(home: &Path, network: NetworkPolicy) -> Engine {
        let store = Arc::new(SledStore::open(&home.join("state"), 8 * 1024 * 1024).unwrap());
        over(store, home, network)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::job::Phase;
    use crate::steps::net::NetworkPolicy;
    use crate::store::pg_store::test_server::TestServer;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn engine(home: &std::path::Path) -> Engine {
        test_engine::on_sled(
            home,
            NetworkPolicy {
                allow_private_network: true,
                ..Default::default()
            },
        )
    }

    /// An engine over a fresh schema `schema` of the PostgreSQL `server`.
    async fn pg_engine(server: &TestServer, schema: &str, home: &std::path::Path) -> Engine {
        let uri = server.fresh_schema(schema).await;
        let store = Arc::new(crate::store::PgStore::open(&uri).await.unwrap());
        test_engine::over(store, home, NetworkPolicy::default())
    }

    /// Waits until the lease `job` holds now has expired, as a dead holder's would.
    async fn outlive_lease(engine: &Engine, job: JobId) {
        let lease_end = engine
            .store
            .job(job)
            .await
            .unwrap()
            .unwrap()
            .lease
            .unwrap()
            .expires_at;
        while Timestamp::now() <= lease_end {
            tokio::task::yield_now().await;
        }
    }

    /// The id of the one job `source` was submitted as, with the default options.
    async fn submitted(engine: &Engine, source: String) -> JobId {
        let submitted = submit(&engine.orchestrator(), &[source], &SubmitOptions::default())
            .await
            .unwrap();
        submitted[0].job.id
    }

    /// Claims job `id` for `worker` under a lease of `lease_ttl_ms`: the lease token.
    async fn claimed_by(
        engine: &Engine,
        id: JobId,
        worker: &crate::model::job::WorkerId,
        lease_ttl_ms: u64,
    ) -> LeaseToken {
        let claimed = engine.store.claim(id, worker, lease_ttl_ms).await.unwrap();
        claimed.unwrap().1
    }

    /// Asserts that `token` no longer writes: setting a phase under it is fenced.
    async fn assert_fenced(engine: &Engine, token: &LeaseToken) {
        let stale = engine
            .store
            .set_phase(token, Phase::Downloading)
            .await
            .unwrap();
        assert!(matches!(stale, Err(Rejected::Fenced { .. })), "{stale:?}");
    }

    /// One job submitted (an `ftp://` source: claimable, never downloaded) and claimed by this
    /// engine: its id, the claimed record and the lease token.
    async fn submitted_and_claimed(engine: &Engine) -> (JobId, Job, LeaseToken) {
        let id = submitted(engine, "ftp://example.com/a.mp4".to_string()).await;
        let (job, token) = engine
            .store
            .claim(id, &engine.worker_id, engine.lease_ttl_ms)
            .await
            .unwrap()
            .unwrap();
        (id, job, token)
    }

    /// An origin that announces a large body, sends a few bytes, tells the test, then stalls.
    async fn stalling_origin() -> (String, tokio::sync::oneshot::Receiver<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/stall.mp4", listener.local_addr().unwrap());
        let (sent, sent_receiver) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await.unwrap();
            socket
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n0123456789")
                .await
                .unwrap();
            socket.flush().await.unwrap();
            let _ = sent.send(());
            // Hold the connection open without sending more.
            std::future::pending::<()>().await;
        });
        (url, sent_receiver)
    }

    // Guards that cancelling a running job stops it at once (its transfer is dropped) and leaves it
    // cancelled with no phase, rather than waiting for the stalled download's timeout.
    #[tokio::test]
    async fn cancelling_a_running_job_stops_its_download_and_clears_the_phase() {
        let home = tempfile::tempdir().unwrap();
        let engine = engine(home.path());
        let (url, bytes_sent) = stalling_origin().await;
        let id = submitted(&engine, url).await;
        let runner = {
            let engine = engine.clone();
            tokio::spawn(async move { run_job(&engine.orchestrator(), id).await })
        };
        bytes_sent.await.unwrap();
        let running = engine.store.job(id).await.unwrap().unwrap();
        assert_eq!(running.status, Status::Running);
        assert_eq!(running.ingestion_phase, Some(Phase::Downloading));

        let requested = engine.store.cancel(id).await.unwrap().unwrap();
        assert!(requested.cancel_requested);

        let finished = runner.await.unwrap().unwrap();
        assert_eq!(finished.status, Status::Cancelled);
        assert_eq!(finished.ingestion_phase, None);
        assert!(finished.lease.is_none());
        let events = engine.store.events(id).await.unwrap();
        assert!(
            events
                .iter()
                .any(|event| matches!(event.kind, crate::model::job::EventKind::CancelRequested)),
            "{events:?}"
        );
        assert!(
            !engine.scratch_dir(id).join("original").exists(),
            "no partial download at the final name"
        );
    }

    // Guards graceful shutdown's two rules in the library: once draining, a job not yet claimed is
    // left pending (not claimed), and a claimed job stops at its next step boundary and is released
    // to pending with its phase cleared, rather than failed or cancelled.
    #[tokio::test]
    async fn a_draining_engine_claims_nothing_and_releases_at_the_step_boundary() {
        let home = tempfile::tempdir().unwrap();
        let engine = engine(home.path());
        let (id, job, token) = submitted_and_claimed(&engine).await;
        engine.shutdown.begin();

        let released = run_claimed(&engine.orchestrator(), job, token)
            .await
            .unwrap();
        assert_eq!(released.status, Status::Pending);
        assert_eq!(released.ingestion_phase, None);
        assert!(released.lease.is_none());
        assert!(released.error.is_none(), "not failed: {:?}", released.error);
        let events = engine.store.events(id).await.unwrap();
        assert!(
            events.iter().any(|event| matches!(
                &event.kind,
                crate::model::job::EventKind::StatusChanged { reason, .. } if reason == RELEASED_AT_SHUTDOWN
            )),
            "{events:?}"
        );

        let untouched = run_job(&engine.orchestrator(), id).await.unwrap();
        assert_eq!(untouched.status, Status::Pending);
        assert_eq!(untouched.attempts, 1, "not claimed again while draining");
    }

    // Guards the fenced_write incident: a run whose job was taken over before its first write (as a
    // worker stopped past its lease finds on resuming) ends without a transition, leaves the job to
    // its new holder, and records one incident naming the job, this worker, the stale token and
    // the new holder.
    #[tokio::test]
    async fn a_run_whose_writes_are_fenced_records_one_fenced_write_incident() {
        let home = tempfile::tempdir().unwrap();
        let engine = engine(home.path());
        let (id, job, stale_token) = submitted_and_claimed(&engine).await;
        engine
            .store
            .reclaim(id, "taken over")
            .await
            .unwrap()
            .unwrap();
        let new_holder = crate::model::job::WorkerId("other:1".into());
        engine
            .store
            .claim(id, &new_holder, engine.lease_ttl_ms)
            .await
            .unwrap()
            .unwrap();

        let ended = run_claimed(&engine.orchestrator(), job, stale_token)
            .await
            .unwrap();
        assert_eq!(ended.status, Status::Running, "left to its new holder");
        assert_eq!(ended.lease.unwrap().worker_id, new_holder);
        let incidents = engine.store.incidents().await.unwrap();
        let fenced: Vec<_> = incidents
            .iter()
            .filter(|incident| incident.action == FENCED_WRITE)
            .collect();
        assert_eq!(fenced.len(), 1, "{incidents:?}");
        assert_eq!(fenced[0].job, Some(id));
        assert_eq!(fenced[0].actor, engine.worker_id.to_string());
        assert_eq!(fenced[0].key.as_deref(), Some("token 1"));
        assert!(
            fenced[0]
                .reason
                .contains("now held by other:1 under token 2"),
            "{}",
            fenced[0].reason
        );
    }

    // Guards that a job left running by a dead process is reclaimed with its old token fenced, and
    // then runs to the end.
    #[tokio::test]
    async fn orphaned_running_jobs_are_reclaimed_and_their_old_token_is_fenced() {
        let home = tempfile::tempdir().unwrap();
        let engine = engine(home.path());
        let (id, _, old_token) = submitted_and_claimed(&engine).await;

        let reclaimed = reclaim_orphans(&engine.orchestrator()).await.unwrap();
        assert_eq!(reclaimed.len(), 1);
        assert_eq!(reclaimed[0].status, Status::Pending);
        assert_fenced(&engine, &old_token).await;

        let finished = run_job(&engine.orchestrator(), id).await.unwrap();
        assert_eq!(finished.status, Status::Failed);
        assert_eq!(finished.error.unwrap().class, "unsupported_source");
        assert_eq!(finished.attempts, 2);
    }

    // Guards a fleet sharing one PostgreSQL store: a process that starts does not take the
    // running jobs of the processes still alive (their leases are live), only those whose lease
    // expired; a lease holder that lost its job that way is fenced.
    #[tokio::test]
    async fn on_a_shared_store_only_jobs_with_expired_leases_are_orphans() {
        let server = TestServer::start().await;
        let home = tempfile::tempdir().unwrap();
        let engine = pg_engine(&server, "orphans", home.path()).await;
        let mut ids = Vec::new();
        for key in ["alive", "dead"] {
            ids.push(submitted(&engine, format!("https://example.com/{key}.mp4")).await);
        }
        let worker = crate::model::job::WorkerId("other-machine:1".to_string());
        let alive_token = claimed_by(&engine, ids[0], &worker, 600_000).await;
        // A lease of 1 ms has expired by the time the reclaim reads it.
        let dead_token = claimed_by(&engine, ids[1], &worker, 1).await;
        outlive_lease(&engine, ids[1]).await;

        let reclaimed = reclaim_orphans(&engine.orchestrator()).await.unwrap();
        assert_eq!(
            reclaimed.iter().map(|job| job.id).collect::<Vec<_>>(),
            vec![ids[1]]
        );
        let alive = engine.store.job(ids[0]).await.unwrap().unwrap();
        assert_eq!(alive.status, Status::Running);
        engine
            .store
            .set_phase(&alive_token, Phase::Downloading)
            .await
            .unwrap()
            .expect("the live holder keeps its job");
        assert_fenced(&engine, &dead_token).await;
        server.cleanup().await;
    }

    // Guards takeover in a fleet: a job whose holder died (its lease expired, nobody will renew
    // it) is reclaimed by a scheduler already running elsewhere, and run again there.
    #[tokio::test]
    async fn a_running_scheduler_takes_over_a_job_whose_lease_expired() {
        let server = TestServer::start().await;
        let home = tempfile::tempdir().unwrap();
        let engine = pg_engine(&server, "takeover", home.path()).await;
        let id = submitted(&engine, "ftp://example.com/dead.mp4".to_string()).await;
        let dead = crate::model::job::WorkerId("dead-machine:1".to_string());
        let dead_token = claimed_by(&engine, id, &dead, 1).await;
        outlive_lease(&engine, id).await;

        let finished = work(&engine.orchestrator(), 1, true, std::future::pending())
            .await
            .unwrap();

        assert_eq!(
            finished.iter().map(|job| job.id).collect::<Vec<_>>(),
            vec![id]
        );
        let job = engine.store.job(id).await.unwrap().unwrap();
        assert_eq!(job.status, Status::Failed);
        assert_eq!(job.attempts, 2, "run again after the takeover");
        let stale = engine.store.complete(&dead_token).await.unwrap();
        assert!(matches!(stale, Err(Rejected::Fenced { .. })), "{stale:?}");
        server.cleanup().await;
    }
}
