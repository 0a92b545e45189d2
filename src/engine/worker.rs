//! The worker side of a running job: it runs the workflow's steps and owns `ingestion_phase`.
//!
//! It sees the state store only as a `WorkerStore`, so it cannot change a job's status: it returns
//! an outcome and the orchestrator turns that into `succeeded`, `failed` or `cancelled`.
//!
//! The runner finds the first step that is not done, and runs it and every step after it. A step is
//! done when its checkpoint's definition hash and input hash match and every output verifies
//! (`engine::verify`). Done steps get a `step_skipped` event and are not run again.
//!
//! Progress: each step reports its figures (bytes downloaded, bytes of audio written, bytes sent to
//! storage) through a watch channel, and a task writes them to the job's progress record at most
//! about once a second, plus the final figures when the step ends. The record is started afresh,
//! at zero, as the worker enters each phase, so it always describes the current phase's step.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::Services;
use crate::engine::verify::{OutputState, Resolved, check_output, metadata_record_bytes};
use crate::model::ErrorClass;
use crate::model::job::{
    AudioSelection, Checkpoint, Hash, Job, JobProgress, LeaseToken, Location, StepOutput, Timestamp,
};
use crate::model::machine::Rejected;
use crate::steps::download::{DownloadContext, download};
use crate::steps::extract::{extract, video_extension};
use crate::steps::store::{BlobInput, StoreInput, store};
use crate::steps::{Cancel, Progress, ProgressSender, StepError};
use crate::storage::file_change_token;
use crate::store::{StepEvent, WorkerStore};
use crate::workflow::{StepDef, StepKind, Workflow};

/// How a worker's run of a job ended, short of a step failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkOutcome {
    /// Every step is done.
    Done,
    /// A cancel was requested; the worker stopped at a step boundary.
    CancelRequested,
    /// The lease was lost: another claim owns the job now, and this worker must write nothing more.
    LeaseLost,
    /// The process is shutting down: the worker stopped at a step boundary, or its step was
    /// cancelled when the grace period ran out. The orchestrator releases the job to `pending`.
    ShuttingDown,
}

/// The first write of one run of a job that was refused because its fencing token is stale: the
/// job was taken over (its lease expired while this process was stopped, paused or cut off) and
/// another claim holds it now. Shared by the worker and the orchestrator's lease keeper; the
/// orchestrator records it as a `fenced_write` incident when the run ends.
#[derive(Debug, Clone, Default)]
pub struct FencedWrite(Arc<std::sync::Mutex<Option<(&'static str, Rejected)>>>);

impl FencedWrite {
    /// Keeps `rejected` if it is a fencing refusal and none was kept before: the first one is the
    /// moment the run learnt it had lost the job.
    pub fn note(&self, write: &'static str, rejected: &Rejected) {
        if matches!(rejected, Rejected::Fenced { .. }) {
            self.0
                .lock()
                .expect("never poisoned")
                .get_or_insert_with(|| (write, rejected.clone()));
        }
    }

    /// The refused write (what was written, and the refusal), if there was one.
    pub fn take(&self) -> Option<(&'static str, Rejected)> {
        self.0.lock().expect("never poisoned").take()
    }
}

/// The worker's side of the store, sealed: the orchestrator holds one to hand to the worker of each
/// job it claims, and cannot open it (its field is private to this module), so it sets no phase.
#[derive(Clone)]
pub struct WorkerSide(Arc<dyn WorkerStore>);

impl WorkerSide {
    pub fn new(store: Arc<dyn WorkerStore>) -> WorkerSide {
        WorkerSide(store)
    }
}

/// Runs a claimed job's workflow with the services and the worker's side of the store, and nothing
/// else of it: no status changes here. A write refused by fencing is noted in `fenced`.
pub async fn execute(
    engine: &Services,
    WorkerSide(store): WorkerSide,
    job: &Job,
    token: &LeaseToken,
    cancel: Cancel,
    fenced: &FencedWrite,
) -> Result<WorkOutcome, StepError> {
    let workflow = engine
        .workflows
        .get(&job.workflow)
        .map_err(|error| StepError::new(ErrorClass::Internal, error.to_string()))?
        .clone();
    let mut run = Run {
        engine,
        store,
        job,
        token,
        cancel,
        workflow,
        resolved: HashMap::new(),
        checkpoints: Vec::new(),
        keys_written: Vec::new(),
        store_failure: std::sync::Mutex::new(None),
        fenced: fenced.clone(),
    };
    let outcome = run.execute().await;
    // A write that failed because the state store itself failed is not a lost lease: the job must
    // end failed (and be retried), not be left running for nobody.
    let store_failure = run.store_failure.lock().expect("never poisoned").take();
    match (outcome, store_failure) {
        (Ok(WorkOutcome::LeaseLost), Some(message)) => Err(StepError::new(
            ErrorClass::Internal,
            format!("state store write failed: {message}"),
        )),
        (outcome, _) => outcome,
    }
}

struct Run<'a> {
    engine: &'a Services,
    store: Arc<dyn WorkerStore>,
    job: &'a Job,
    token: &'a LeaseToken,
    cancel: Cancel,
    workflow: Workflow,
    /// Verified or fresh outputs of the steps so far, by output name.
    resolved: HashMap<String, Resolved>,
    checkpoints: Vec<Checkpoint>,
    /// The keys the store step's last run wrote, until the worker records them.
    keys_written: Vec<String>,
    /// Set when a write failed because the state store failed (not because the lease was lost).
    store_failure: std::sync::Mutex<Option<String>>,
    /// Set when a write was refused by fencing.
    fenced: FencedWrite,
}

/// A refused worker write means the lease is gone.
struct LeaseLost;

/// Why a step runs (again): a stable `cause` code for `narra audit`, and the reason in words.
struct Redo {
    cause: &'static str,
    reason: String,
}

impl Redo {
    fn event(&self) -> StepEvent {
        StepEvent::Redone {
            cause: self.cause.to_string(),
            reason: self.reason.clone(),
        }
    }
}

impl<'a> Run<'a> {
    async fn execute(&mut self) -> Result<WorkOutcome, StepError> {
        self.checkpoints = self
            .store
            .checkpoints(self.job.id)
            .await
            .map_err(internal)?;
        let mut input_hash = Hash::of(self.job.source.as_bytes());
        let mut run_rest = false;
        for step in self.workflow.steps.clone() {
            let kind = step.kind();
            phase_failpoint(kind, Boundary::Before);
            // The step's progress starts at zero. Written before the phase, whose write is flushed,
            // so the two are durable together: after a crash the phase is never found beside the
            // previous step's figures, and a step that dies before reporting anything leaves the
            // same record every time.
            if self
                .write(
                    "progress",
                    self.store
                        .set_progress(self.token, &progress_record(Progress::default(), 0))
                        .await,
                )
                .is_err()
            {
                return Ok(WorkOutcome::LeaseLost);
            }
            if self
                .write(
                    "phase",
                    self.store.set_phase(self.token, kind.phase()).await,
                )
                .is_err()
            {
                return Ok(WorkOutcome::LeaseLost);
            }
            phase_failpoint(kind, Boundary::After);
            let current = self.store.job(self.job.id).await.map_err(internal)?;
            if current.as_ref().is_some_and(|job| job.cancel_requested) {
                return Ok(WorkOutcome::CancelRequested);
            }
            // Draining: the step before this one reached its checkpoint; start no other.
            if self.engine.shutdown.is_draining() {
                return Ok(WorkOutcome::ShuttingDown);
            }
            if *self.cancel.borrow() {
                return Ok(WorkOutcome::CancelRequested);
            }
            let definition_hash = step.definition_hash();
            if !run_rest {
                match self.done(&step, definition_hash, input_hash).await? {
                    Ok(resolved) => {
                        tracing::info!(
                            step = kind.name(),
                            "step already done: checkpoint verified, skipping"
                        );
                        if self
                            .step_event(
                                kind.name(),
                                StepEvent::Skipped {
                                    reason: "checkpoint verified".into(),
                                },
                            )
                            .await
                            .is_err()
                        {
                            return Ok(WorkOutcome::LeaseLost);
                        }
                        input_hash = chain_hash(input_hash, resolved.iter().map(|r| &r.output));
                        for resolved in resolved {
                            self.resolved.insert(resolved.output.name.clone(), resolved);
                        }
                        continue;
                    }
                    Err(redo) => {
                        tracing::info!(step = kind.name(), reason = %redo.reason, "step must run");
                        run_rest = true;
                        if self.has_checkpoint(kind.name())
                            && self.step_event(kind.name(), redo.event()).await.is_err()
                        {
                            return Ok(WorkOutcome::LeaseLost);
                        }
                    }
                }
            } else if self.has_checkpoint(kind.name()) {
                // Its checkpoint is not consulted: the step's input comes from a step that just
                // ran, so the step runs with it.
                let redo = Redo {
                    cause: "earlier_step_ran",
                    reason: "an earlier step ran again".into(),
                };
                if self.step_event(kind.name(), redo.event()).await.is_err() {
                    return Ok(WorkOutcome::LeaseLost);
                }
            }
            if self
                .step_event(kind.name(), StepEvent::Started)
                .await
                .is_err()
            {
                return Ok(WorkOutcome::LeaseLost);
            }
            let result = match &step {
                StepDef::Download(_) => self.run_download().await,
                StepDef::Extract(_) => self.run_extract().await,
                StepDef::Store(_) => self.run_store().await,
            };
            let (outputs, metadata) = match result {
                Ok(done) => done,
                Err(error) => {
                    tracing::error!(
                        step = kind.name(),
                        class = error.class.as_str(),
                        "step failed: {}",
                        error.message
                    );
                    if error.class != ErrorClass::Cancelled {
                        let _ = self
                            .step_event(
                                kind.name(),
                                StepEvent::Failed {
                                    error: error.to_info(),
                                },
                            )
                            .await;
                    }
                    if error.class == ErrorClass::Cancelled {
                        // Cancelled by the grace period's end rather than by a cancel request.
                        if self.engine.shutdown.is_draining() {
                            return Ok(WorkOutcome::ShuttingDown);
                        }
                        return Ok(WorkOutcome::CancelRequested);
                    }
                    return Err(error);
                }
            };
            if matches!(step, StepDef::Store(_)) {
                // What this run wrote, recorded before the checkpoint: `narra audit` counts the
                // writes of each key over the job's history.
                let keys = std::mem::take(&mut self.keys_written);
                if self
                    .step_event(kind.name(), StepEvent::ObjectsWritten { keys })
                    .await
                    .is_err()
                {
                    return Ok(WorkOutcome::LeaseLost);
                }
            }
            let checkpoint = Checkpoint {
                step: kind.name().to_string(),
                definition_hash,
                input_hash,
                outputs,
                recorded_at: Timestamp::now(),
            };
            checkpoint_failpoint(kind, Boundary::Before);
            let recorded = self
                .store
                .record_checkpoint(self.token, &checkpoint, metadata.as_ref())
                .await
                .map_err(internal)?;
            if let Err(rejected) = recorded {
                tracing::warn!(%rejected, "checkpoint refused: the lease is lost");
                self.fenced.note("checkpoint", &rejected);
                return Ok(WorkOutcome::LeaseLost);
            }
            checkpoint_failpoint(kind, Boundary::After);
            tracing::info!(
                step = kind.name(),
                outputs = checkpoint.outputs.len(),
                "step done: checkpoint recorded"
            );
            input_hash = chain_hash(input_hash, checkpoint.outputs.iter());
            for output in &checkpoint.outputs {
                let local_path = match &output.location {
                    Location::Scratch(path) => Some(PathBuf::from(path)),
                    Location::Object(key) => self.engine.storage.local_path(key),
                    Location::State => None,
                };
                let object_key = match &output.location {
                    Location::Object(key) => Some(key.clone()),
                    _ => None,
                };
                self.resolved.insert(
                    output.name.clone(),
                    Resolved {
                        output: output.clone(),
                        local_path,
                        object_key,
                    },
                );
            }
            self.checkpoints
                .retain(|existing| existing.step != checkpoint.step);
            self.checkpoints.push(checkpoint);
        }
        // The store step, the last one, has a durable checkpoint: the stored objects now stand for
        // the scratch files, which can go.
        crate::failpoint!("scratch.remove.before");
        self.remove_scratch().await;
        crate::failpoint!("scratch.remove.after");
        Ok(WorkOutcome::Done)
    }

    /// Starts writing what the step about to run reports to the job (see [`write_progress`]).
    fn report_progress(&self) -> ProgressReporter {
        let (progress, receiver) = tokio::sync::watch::channel(Progress::default());
        let task = tokio::spawn(write_progress(
            self.store.clone(),
            self.token.clone(),
            receiver,
        ));
        ProgressReporter { progress, task }
    }

    /// Stops the step's progress writer and records the step's final figures, so a step that
    /// ended never shows short of where it got.
    async fn end_progress(&self, reporter: ProgressReporter) {
        // Awaited after the abort: a write the task is in the middle of (its thread may be
        // descheduled there) must land before the final figures, never after them.
        reporter.task.abort();
        let _ = reporter.task.await;
        let last = *reporter.progress.borrow();
        if last != Progress::default() {
            let _ = self
                .store
                .set_progress(self.token, &progress_record(last, 0))
                .await;
        }
    }

    fn has_checkpoint(&self, step: &str) -> bool {
        self.checkpoints
            .iter()
            .any(|checkpoint| checkpoint.step == step)
    }

    /// `Ok(Ok(outputs))` when the step is done, `Ok(Err(redo))` when it must run.
    async fn done(
        &self,
        step: &StepDef,
        definition_hash: Hash,
        input_hash: Hash,
    ) -> Result<Result<Vec<Resolved>, Redo>, StepError> {
        let name = step.kind().name();
        let Some(checkpoint) = self
            .checkpoints
            .iter()
            .find(|checkpoint| checkpoint.step == name)
        else {
            return Ok(Err(Redo {
                cause: "no_checkpoint",
                reason: "no checkpoint".into(),
            }));
        };
        if checkpoint.definition_hash != definition_hash {
            return Ok(Err(Redo {
                cause: "definition_changed",
                reason: "the step's definition changed".into(),
            }));
        }
        if checkpoint.input_hash != input_hash {
            return Ok(Err(Redo {
                cause: "inputs_changed",
                reason: "the step's inputs changed".into(),
            }));
        }
        let mut resolved = Vec::with_capacity(checkpoint.outputs.len());
        for output in &checkpoint.outputs {
            match check_output(
                &self.engine.storage,
                &*self.store,
                self.job.id,
                output,
                &self.checkpoints,
                false,
            )
            .await?
            {
                OutputState::Present(found) => resolved.push(found),
                OutputState::Missing => {
                    return Ok(Err(Redo {
                        cause: "output_missing",
                        reason: format!(
                            "output {} is missing from {}",
                            output.name, output.location
                        ),
                    }));
                }
                OutputState::Changed {
                    found_size,
                    found_blake3,
                } => {
                    return Ok(Err(Redo {
                        cause: "output_changed",
                        reason: format!(
                            "output {} at {} changed: {} bytes, blake3 {}",
                            output.name,
                            output.location,
                            found_size,
                            found_blake3
                                .map(|hash| hash.to_hex())
                                .unwrap_or_else(|| "not computed".into())
                        ),
                    }));
                }
            }
        }
        Ok(Ok(resolved))
    }

    async fn run_download(
        &mut self,
    ) -> Result<(Vec<StepOutput>, Option<crate::model::job::MediaMetadata>), StepError> {
        let scratch_dir = self.engine.scratch_dir(self.job.id);
        let params = self.workflow.download().clone();
        let client = self.engine.http_client(&params)?;
        let reporter = self.report_progress();
        let context = DownloadContext {
            params: &params,
            client: &client,
            policy: &self.engine.network,
            progress: &reporter.progress,
        };
        let result = download(&self.job.source, &scratch_dir, &context, &mut self.cancel).await;
        self.end_progress(reporter).await;
        let downloaded = result?;
        tracing::info!(bytes = downloaded.size, blake3 = %downloaded.blake3, "downloaded the original");
        let change_token = local_token(&downloaded.path).await?;
        let mut outputs = vec![StepOutput {
            name: "video".into(),
            location: Location::Scratch(downloaded.path.display().to_string()),
            size: downloaded.size,
            blake3: downloaded.blake3,
            change_token,
        }];
        if let Some(path) = &downloaded.platform_metadata {
            let (size, blake3) = crate::storage::hash_file(path)
                .await
                .map_err(|error| StepError::scratch("read", path, error))?;
            outputs.push(StepOutput {
                name: "platform_metadata".into(),
                location: Location::Scratch(path.display().to_string()),
                size,
                blake3,
                change_token: local_token(path).await?,
            });
        }
        Ok((outputs, None))
    }

    async fn run_extract(
        &mut self,
    ) -> Result<(Vec<StepOutput>, Option<crate::model::job::MediaMetadata>), StepError> {
        let video = self.local_copy("video", "original").await?;
        let scratch_dir = self.engine.scratch_dir(self.job.id);
        let reporter = self.report_progress();
        let result = extract(
            &self.engine.tools,
            &video,
            self.workflow.extract(),
            &scratch_dir,
            &reporter.progress,
            &mut self.cancel,
        )
        .await;
        self.end_progress(reporter).await;
        let (metadata, extracted) = result?;
        let (size, blake3) = crate::storage::hash_file(&extracted.audio_path)
            .await
            .map_err(|error| StepError::scratch("read", &extracted.audio_path, error))?;
        tracing::info!(
            bytes = size,
            stream = extracted.track.stream_index,
            output = extracted.output.mode,
            extension = %extracted.audio_extension,
            "extracted the audio: {}",
            extracted.output.reason
        );
        // The choice is history: recorded before the checkpoint, whose write re-checks the lease.
        let selected = StepEvent::AudioSelected(AudioSelection {
            stream_index: extracted.track.stream_index,
            codec: extracted.track.codec.clone(),
            language: extracted.track.language.clone(),
            output: extracted.output.mode.to_string(),
            container: extracted.audio_extension.clone(),
            reason: format!("{}; {}", extracted.track.reason, extracted.output.reason),
        });
        let _ = self.step_event("extract", selected).await;
        let change_token = local_token(&extracted.audio_path).await?;
        let record = metadata_record_bytes(&metadata);
        Ok((
            vec![
                StepOutput {
                    name: "audio".into(),
                    location: Location::Scratch(extracted.audio_path.display().to_string()),
                    size,
                    blake3,
                    change_token,
                },
                StepOutput {
                    name: "metadata".into(),
                    location: Location::State,
                    size: record.len() as u64,
                    blake3: Hash::of(&record),
                    change_token: crate::model::job::ChangeToken::None,
                },
            ],
            Some(metadata),
        ))
    }

    async fn run_store(
        &mut self,
    ) -> Result<(Vec<StepOutput>, Option<crate::model::job::MediaMetadata>), StepError> {
        let metadata = self
            .store
            .metadata(self.job.id)
            .await
            .map_err(internal)?
            .ok_or_else(|| {
                StepError::new(ErrorClass::Internal, "the metadata record is missing")
            })?;
        let video = self.resolved_output("video")?;
        let audio = self.resolved_output("audio")?;
        let audio_extension = extension_of(&audio).unwrap_or_else(|| "audio".into());
        let mut blobs = vec![
            self.blob_input("video", &video, video_extension(&metadata).to_string())
                .await?,
            self.blob_input("audio", &audio, audio_extension).await?,
        ];
        if let Ok(platform) = self.resolved_output("platform_metadata") {
            blobs.push(
                self.blob_input("platform_metadata", &platform, "json".to_string())
                    .await?,
            );
        }
        let previous_outputs = self
            .checkpoints
            .iter()
            .find(|checkpoint| checkpoint.step == "store")
            .map(|checkpoint| checkpoint.outputs.clone())
            .unwrap_or_default();
        let input = StoreInput {
            job_id: self.job.id,
            source: &self.job.source,
            workflow: &self.job.workflow,
            blobs,
            metadata: &metadata,
            previous_outputs: &previous_outputs,
            unavailable_wait: Duration::from_secs(self.workflow.store().storage_unavailable_wait_s),
        };
        let reporter = self.report_progress();
        let result = store(&self.engine.storage, &input, &reporter.progress).await;
        self.end_progress(reporter).await;
        let stored = result?;
        tracing::info!(
            objects_written = stored.objects_written,
            objects_skipped = stored.objects_skipped,
            "stored the artifacts"
        );
        self.keys_written = stored.keys_written.clone();
        Ok((stored.outputs, None))
    }

    async fn blob_input(
        &self,
        name: &'static str,
        resolved: &Resolved,
        extension: String,
    ) -> Result<BlobInput, StepError> {
        let target_key = crate::storage::blob_key(&resolved.output.blake3, &extension);
        let local_path = if resolved.object_key.as_deref() == Some(target_key.as_str()) {
            resolved.local_path.clone()
        } else {
            Some(self.local_copy(name, name).await?)
        };
        // A scratch file's checkpoint recorded its change token when it hashed it: while the file
        // keeps that token, an `fs://` store may link it instead of copying and re-hashing it.
        let hashed_at = match &resolved.output.location {
            Location::Scratch(path)
                if local_path.as_deref() == Some(std::path::Path::new(path)) =>
            {
                Some(resolved.output.change_token.clone())
            }
            _ => None,
        };
        Ok(BlobInput {
            name,
            local_path,
            size: resolved.output.size,
            blake3: resolved.output.blake3,
            hashed_at,
            extension,
        })
    }

    fn resolved_output(&self, name: &str) -> Result<Resolved, StepError> {
        self.resolved.get(name).cloned().ok_or_else(|| {
            StepError::new(
                ErrorClass::Internal,
                format!("no verified {name} output to work on"),
            )
        })
    }

    /// A local file with the bytes of output `name`: the scratch file or an `fs://` object in place,
    /// else the stored object copied into scratch (and checked against its hash).
    async fn local_copy(&self, name: &str, scratch_name: &str) -> Result<PathBuf, StepError> {
        let resolved = self.resolved_output(name)?;
        if let Some(path) = resolved.local_path {
            return Ok(path);
        }
        let key = resolved.object_key.ok_or_else(|| {
            StepError::new(
                ErrorClass::Internal,
                format!("output {name} has no readable copy"),
            )
        })?;
        let scratch_dir = self.engine.scratch_dir(self.job.id);
        crate::private_files::create_dir_all_async(&scratch_dir)
            .await
            .map_err(|error| StepError::scratch("create", &scratch_dir, error))?;
        let target = scratch_dir.join(format!("{scratch_name}.from-storage"));
        let (size, blake3) = self.engine.storage.read_to_file(&key, &target).await?;
        if size != resolved.output.size || blake3 != resolved.output.blake3 {
            return Err(StepError::new(
                ErrorClass::StorageError,
                format!("{key} changed while it was being read: {size} bytes, blake3 {blake3}"),
            ));
        }
        Ok(target)
    }

    async fn remove_scratch(&self) {
        let scratch_dir = self.engine.scratch_dir(self.job.id);
        match tokio::fs::remove_dir_all(&scratch_dir).await {
            Ok(()) => tracing::debug!(path = %scratch_dir.display(), "removed scratch"),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(path = %scratch_dir.display(), %error, "cannot remove scratch")
            }
        }
    }

    async fn step_event(&self, step: &str, event: StepEvent) -> Result<(), LeaseLost> {
        let result = self.store.record_step_event(self.token, step, event).await;
        self.write("step event", result)
    }

    /// `write` names what was written, for the `fenced_write` incident.
    fn write<T>(
        &self,
        write: &'static str,
        result: crate::store::StoreResult<Result<T, Rejected>>,
    ) -> Result<T, LeaseLost> {
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(rejected)) => {
                tracing::warn!(%rejected, "write refused: the lease is lost");
                self.fenced.note(write, &rejected);
                Err(LeaseLost)
            }
            Err(error) => {
                tracing::error!(%error, "state store write failed");
                *self.store_failure.lock().expect("never poisoned") = Some(error.to_string());
                Err(LeaseLost)
            }
        }
    }
}

/// The input hash of the step after one whose input hash and outputs are given: every step's
/// input covers everything before it.
fn chain_hash<'o>(previous: Hash, outputs: impl Iterator<Item = &'o StepOutput>) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&previous.0);
    for output in outputs {
        hasher.update(output.name.as_bytes());
        hasher.update(&[0]);
        hasher.update(&output.blake3.0);
    }
    hasher.finalize().into()
}

/// Which side of a protocol boundary a failpoint is on.
#[derive(Clone, Copy)]
enum Boundary {
    Before,
    After,
}

/// The failpoints around protocol step 1 (set the phase) of each step.
fn phase_failpoint(kind: StepKind, boundary: Boundary) {
    match (kind, boundary) {
        (StepKind::Download, Boundary::Before) => crate::failpoint!("phase.downloading.before"),
        (StepKind::Download, Boundary::After) => crate::failpoint!("phase.downloading.after"),
        (StepKind::Extract, Boundary::Before) => crate::failpoint!("phase.processing.before"),
        (StepKind::Extract, Boundary::After) => crate::failpoint!("phase.processing.after"),
        (StepKind::Store, Boundary::Before) => crate::failpoint!("phase.storing.before"),
        (StepKind::Store, Boundary::After) => crate::failpoint!("phase.storing.after"),
    }
}

/// The failpoints around protocol step 5 (record the checkpoint) of each step.
fn checkpoint_failpoint(kind: StepKind, boundary: Boundary) {
    match (kind, boundary) {
        (StepKind::Download, Boundary::Before) => crate::failpoint!("download.checkpoint.before"),
        (StepKind::Download, Boundary::After) => crate::failpoint!("download.checkpoint.after"),
        (StepKind::Extract, Boundary::Before) => crate::failpoint!("extract.checkpoint.before"),
        (StepKind::Extract, Boundary::After) => crate::failpoint!("extract.checkpoint.after"),
        (StepKind::Store, Boundary::Before) => crate::failpoint!("store.checkpoint.before"),
        (StepKind::Store, Boundary::After) => crate::failpoint!("store.checkpoint.after"),
    }
}

fn extension_of(resolved: &Resolved) -> Option<String> {
    let name = match &resolved.output.location {
        Location::Scratch(path) => path.clone(),
        Location::Object(key) => key.clone(),
        Location::State => return None,
    };
    std::path::Path::new(&name)
        .extension()
        .and_then(|extension| extension.to_str())
        .map(str::to_string)
}

async fn local_token(path: &std::path::Path) -> Result<crate::model::job::ChangeToken, StepError> {
    let metadata = tokio::fs::metadata(path)
        .await
        .map_err(|error| StepError::scratch("inspect", path, error))?;
    Ok(file_change_token(&metadata))
}

fn internal(error: crate::store::StoreError) -> StepError {
    StepError::new(ErrorClass::Internal, format!("state store: {error}"))
}

/// How often a step's progress is written to the job.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// A running step's progress channel and the task that writes it to the job.
struct ProgressReporter {
    progress: ProgressSender,
    task: tokio::task::JoinHandle<()>,
}

fn progress_record(progress: Progress, rate_bytes_per_s: u64) -> JobProgress {
    JobProgress {
        bytes_done: progress.bytes_done,
        bytes_total: progress.bytes_total,
        rate_bytes_per_s,
        updated_at: Timestamp::now(),
    }
}

/// Writes a step's progress to the store at most once every [`PROGRESS_EVERY`], with the rate over
/// the last interval. The worker aborts it when the step ends and writes the final figures.
async fn write_progress(
    store: Arc<dyn WorkerStore>,
    token: LeaseToken,
    mut progress: tokio::sync::watch::Receiver<Progress>,
) {
    let mut last_bytes = 0u64;
    let mut last_at = tokio::time::Instant::now();
    loop {
        let more = progress.changed().await.is_ok();
        let now = tokio::time::Instant::now();
        if more && now.duration_since(last_at) < PROGRESS_EVERY {
            // Coalesce: wait out the interval, then write the latest figures.
            tokio::time::sleep(PROGRESS_EVERY - now.duration_since(last_at)).await;
        }
        let current = *progress.borrow_and_update();
        let now = tokio::time::Instant::now();
        let elapsed_ms = now.duration_since(last_at).as_millis().max(1) as u64;
        let rate_bytes_per_s = current
            .bytes_done
            .saturating_sub(last_bytes)
            .saturating_mul(1000)
            / elapsed_ms;
        match store
            .set_progress(&token, &progress_record(current, rate_bytes_per_s))
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(error) => tracing::debug!(%error, "cannot record progress"),
        }
        last_bytes = current.bytes_done;
        last_at = now;
        if !more {
            return;
        }
    }
}
