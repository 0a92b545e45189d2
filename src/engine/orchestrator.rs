//! The orchestrator: submits jobs, claims them, and moves their global `status`.
//!
//! It sees the state store only as an `OrchestratorStore`, so it cannot set a phase: it hands a
//! claimed job to the worker (`engine::worker`) and turns the worker's outcome into `succeeded`,
//! `failed` or `cancelled`. While a job runs, it renews the job's lease and watches for a cancel
//! request, which it passes to the worker's steps so they can kill their subprocesses.

use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use crate::engine::Engine;
use crate::engine::job::{ErrorInfo, Job, JobId, LeaseToken, Status};
use crate::engine::machine::Rejected;
use crate::engine::sources::{canonical_source, idempotency_key};
use crate::engine::worker::{WorkOutcome, execute};
use crate::store::{JobFilter, OrchestratorStore, StoreError, SubmitRequest, Submitted};

/// What a caller asks to submit.
#[derive(Debug, Clone, Default)]
pub struct SubmitOptions {
    pub workflow: Option<String>,
    /// The caller's own idempotency key; the normalised source is used when there is none.
    pub key: Option<String>,
    pub reingest: bool,
    /// What relative local paths are resolved against: the submitting client's working directory
    /// when another process serves the command (`cli::remote`); this process's when `None`.
    pub base_dir: Option<std::path::PathBuf>,
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
}

/// Submits sources idempotently: a key that has a job never gets a second one.
pub async fn submit(
    engine: &Engine,
    sources: &[String],
    options: &SubmitOptions,
) -> Result<Vec<Submitted>, EngineError> {
    let workflow_name = options
        .workflow
        .clone()
        .unwrap_or_else(|| crate::workflow::DEFAULT_WORKFLOW.to_string());
    engine.workflows.get(&workflow_name)?;
    if options.key.is_some() && sources.len() > 1 {
        return Err(EngineError::Usage(
            "--key names one job: give it with a single source".to_string(),
        ));
    }
    let current_dir = match &options.base_dir {
        Some(base_dir) => base_dir.clone(),
        None => std::env::current_dir().unwrap_or_default(),
    };
    let mut submitted = Vec::with_capacity(sources.len());
    for source in sources {
        let source = canonical_source(source, &current_dir);
        let key = options
            .key
            .clone()
            .unwrap_or_else(|| idempotency_key(&source, &workflow_name));
        let request = SubmitRequest {
            key,
            source,
            workflow: workflow_name.clone(),
            reingest: options.reingest,
        };
        let result = engine.store.submit(&request).await?;
        tracing::info!(job_id = %result.job.id, outcome = ?result.outcome, source = %crate::steps::redact::redact_url(&request.source), "submitted");
        submitted.push(result);
    }
    Ok(submitted)
}

/// Every job found `running` when a process opens a store it holds alone belongs to a dead
/// process: it goes back to `pending` (its old fencing token is dead with it) and resumes from its
/// checkpoints when next claimed.
pub async fn reclaim_orphans(engine: &Engine) -> Result<Vec<Job>, EngineError> {
    let running = engine
        .store
        .jobs(&JobFilter {
            status: Some(Status::Running),
            limit: usize::MAX,
        })
        .await?;
    let mut reclaimed = Vec::with_capacity(running.len());
    for job in running {
        match engine
            .store
            .reclaim(job.id, "reclaimed: the process that ran it is gone")
            .await?
        {
            Ok(job) => {
                tracing::warn!(job_id = %job.id, "reclaimed a job left running by a dead process");
                reclaimed.push(job);
            }
            Err(rejected) => tracing::debug!(%rejected, "not reclaimed"),
        }
    }
    Ok(reclaimed)
}

/// Runs one pending job to a terminal status (or leaves it to whoever holds its lease).
pub async fn run_job(engine: &Engine, id: JobId) -> Result<Job, EngineError> {
    let store: Arc<dyn OrchestratorStore> = engine.store.clone();
    // Shutting down: a job not yet claimed stays as it is, for the next run.
    if engine.shutdown.is_draining() {
        return store
            .job(id)
            .await?
            .ok_or(EngineError::Rejected(Rejected::NotFound(id)));
    }
    crate::failpoint!("claim.before");
    let (job, token) = match store
        .claim(id, &engine.worker_id, engine.lease_ttl_ms)
        .await?
    {
        Ok(claimed) => {
            crate::failpoint!("claim.after");
            claimed
        }
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
pub async fn run_claimed(engine: &Engine, job: Job, token: LeaseToken) -> Result<Job, EngineError> {
    let span = tracing::info_span!("job", job_id = %job.id);
    async move {
        let store: Arc<dyn OrchestratorStore> = engine.store.clone();
        tracing::info!(source = %crate::steps::redact::redact_url(&job.source), workflow = %job.workflow, attempt = job.attempts, "job started");
        let (cancel_sender, cancel) = tokio::sync::watch::channel(false);
        // Aborted when dropped too, so a job future dropped mid-step stops renewing its lease.
        let keeper = AbortOnDrop(tokio::spawn(keep_lease(
            store.clone(),
            token.clone(),
            engine.lease_ttl_ms,
            cancel_sender,
            engine.shutdown.clone(),
        )));
        let outcome = execute(engine, &job, &token, cancel).await;
        drop(keeper);
        let result = match outcome {
            Ok(WorkOutcome::Done) => {
                crate::failpoint!("complete.before");
                let completed = store.complete(&token).await?;
                crate::failpoint!("complete.after");
                completed
            }
            Ok(WorkOutcome::CancelRequested) => store.confirm_cancel(&token).await?,
            Ok(WorkOutcome::ShuttingDown) => release(store.as_ref(), &token).await?,
            Ok(WorkOutcome::LeaseLost) => {
                tracing::warn!("the lease was lost; another claim owns the job now");
                return store.job(job.id).await?.ok_or(EngineError::Rejected(Rejected::NotFound(job.id)));
            }
            Err(error) => {
                crate::failpoint!("fail.before");
                let failed = store.fail(&token, ErrorInfo {
                    class: error.class.as_str().to_string(),
                    message: error.message.clone(),
                }).await?;
                crate::failpoint!("fail.after");
                failed
            }
        };
        match result {
            Ok(job) => {
                match &job.error {
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
    engine: &Engine,
    ids: &[JobId],
    concurrency: usize,
) -> Result<Vec<Job>, EngineError> {
    run_jobs_observed(engine, ids, concurrency, |_| {}).await
}

/// [`run_jobs`], handing each job to `on_finished` as it ends, in the order they end (progress
/// reports: `narra backfill`).
pub async fn run_jobs_observed(
    engine: &Engine,
    ids: &[JobId],
    concurrency: usize,
    mut on_finished: impl FnMut(&Job),
) -> Result<Vec<Job>, EngineError> {
    let semaphore = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, id) in ids.iter().copied().enumerate() {
        let engine = engine.clone();
        let semaphore = semaphore.clone();
        tasks.spawn(async move {
            let _permit = semaphore
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            (index, run_job(&engine, id).await)
        });
    }
    // One job's failure never stops the others: every task is awaited, and the first store error
    // is reported once all have ended.
    let mut results: Vec<Option<Job>> = vec![None; ids.len()];
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((index, Ok(job))) => {
                on_finished(&job);
                results[index] = Some(job);
            }
            Ok((_, Err(error))) => {
                tracing::error!(%error, "a job could not be run");
                first_error.get_or_insert(error);
            }
            Err(join_error) => tracing::error!(%join_error, "a job task panicked"),
        }
    }
    if let Some(error) = first_error {
        return Err(error);
    }
    let mut jobs = Vec::with_capacity(ids.len());
    for (index, job) in results.into_iter().enumerate() {
        match job {
            Some(job) => jobs.push(job),
            // A task that panicked: report the job as the store has it.
            None => jobs.push(
                engine
                    .store
                    .job(ids[index])
                    .await?
                    .ok_or(EngineError::Rejected(Rejected::NotFound(ids[index])))?,
            ),
        }
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

/// Keeps a finished job in `finished` (drain mode only: a long-running worker keeps none), logs a
/// failure to run one, and remembers the first store error.
fn collect(
    joined: Result<Result<Job, EngineError>, tokio::task::JoinError>,
    drain: bool,
    finished: &mut Vec<Job>,
    first_error: &mut Option<EngineError>,
) {
    match joined {
        Ok(Ok(job)) if drain => finished.push(job),
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            tracing::error!(%error, "a job could not be run");
            first_error.get_or_insert(error);
        }
        Err(join_error) => tracing::error!(%join_error, "a job task panicked"),
    }
}

/// Runs queued jobs, up to `concurrency` at once. With `drain`, returns once no job is pending and
/// none is running, with the jobs it ran; otherwise polls for new work until `shutdown` resolves,
/// and keeps no list of the jobs it ran (a long-running worker's memory must not grow with them).
pub async fn work(
    engine: &Engine,
    concurrency: usize,
    drain: bool,
    shutdown: impl Future<Output = ()>,
) -> Result<Vec<Job>, EngineError> {
    let semaphore = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut finished = Vec::new();
    let mut first_error = None;
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            // Shutdown first: once asked to stop, no new job is claimed.
            biased;
            () = &mut shutdown => break,
            permit = semaphore.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        match engine
            .store
            .claim_next(&engine.worker_id, engine.lease_ttl_ms)
            .await?
        {
            Some((job, token)) => {
                let engine = engine.clone();
                tasks.spawn(async move {
                    let _permit = permit;
                    run_claimed(&engine, job, token).await
                });
            }
            None => {
                drop(permit);
                if tasks.is_empty() {
                    if drain {
                        break;
                    }
                    tokio::select! {
                        biased;
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                } else {
                    // Wait for a running job to finish: it frees a slot, and there may be new work.
                    if let Some(joined) = tasks.join_next().await {
                        collect(joined, drain, &mut finished, &mut first_error);
                    }
                }
            }
        }
        while let Some(joined) = tasks.try_join_next() {
            collect(joined, drain, &mut finished, &mut first_error);
        }
    }
    while let Some(joined) = tasks.join_next().await {
        collect(joined, drain, &mut finished, &mut first_error);
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(finished),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::job::Phase;
    use crate::storage::Storage;
    use crate::store::SledStore;
    use crate::workflow::WorkflowRegistry;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn engine(home: &std::path::Path) -> Engine {
        let store = Arc::new(SledStore::open(&home.join("state"), 8 * 1024 * 1024).unwrap());
        Engine::new(
            store,
            Storage::from_uri("memory://").unwrap(),
            WorkflowRegistry::builtin(),
            home,
            crate::steps::net::NetworkPolicy {
                allow_private_network: true,
                ..Default::default()
            },
        )
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
        let submitted = submit(&engine, &[url], &SubmitOptions::default())
            .await
            .unwrap();
        let id = submitted[0].job.id;
        let runner = {
            let engine = engine.clone();
            tokio::spawn(async move { run_job(&engine, id).await })
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
                .any(|event| matches!(event.kind, crate::engine::job::EventKind::CancelRequested)),
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
        let submitted = submit(
            &engine,
            &["ftp://example.com/a.mp4".to_string()],
            &SubmitOptions::default(),
        )
        .await
        .unwrap();
        let id = submitted[0].job.id;
        let (job, token) = engine
            .store
            .claim(id, &engine.worker_id, engine.lease_ttl_ms)
            .await
            .unwrap()
            .unwrap();
        engine.shutdown.begin();

        let released = run_claimed(&engine, job, token).await.unwrap();
        assert_eq!(released.status, Status::Pending);
        assert_eq!(released.ingestion_phase, None);
        assert!(released.lease.is_none());
        assert!(released.error.is_none(), "not failed: {:?}", released.error);
        let events = engine.store.events(id).await.unwrap();
        assert!(
            events.iter().any(|event| matches!(
                &event.kind,
                crate::engine::job::EventKind::StatusChanged { reason, .. } if reason == RELEASED_AT_SHUTDOWN
            )),
            "{events:?}"
        );

        let untouched = run_job(&engine, id).await.unwrap();
        assert_eq!(untouched.status, Status::Pending);
        assert_eq!(untouched.attempts, 1, "not claimed again while draining");
    }

    // Guards that a job left running by a dead process is reclaimed with its old token fenced, and
    // then runs to the end.
    #[tokio::test]
    async fn orphaned_running_jobs_are_reclaimed_and_their_old_token_is_fenced() {
        let home = tempfile::tempdir().unwrap();
        let engine = engine(home.path());
        let submitted = submit(
            &engine,
            &["ftp://example.com/a.mp4".to_string()],
            &SubmitOptions::default(),
        )
        .await
        .unwrap();
        let id = submitted[0].job.id;
        let (_, old_token) = engine
            .store
            .claim(id, &engine.worker_id, engine.lease_ttl_ms)
            .await
            .unwrap()
            .unwrap();

        let reclaimed = reclaim_orphans(&engine).await.unwrap();
        assert_eq!(reclaimed.len(), 1);
        assert_eq!(reclaimed[0].status, Status::Pending);
        let stale = engine
            .store
            .set_phase(&old_token, Phase::Downloading)
            .await
            .unwrap();
        assert!(matches!(stale, Err(Rejected::Fenced { .. })), "{stale:?}");

        let finished = run_job(&engine, id).await.unwrap();
        assert_eq!(finished.status, Status::Failed);
        assert_eq!(finished.error.unwrap().class, "unsupported_source");
        assert_eq!(finished.attempts, 2);
    }
}
