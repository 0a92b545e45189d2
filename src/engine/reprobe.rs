//! `narra reprobe`: re-derives a job's metadata record from its stored original, for when the
//! record "looks incorrect" (the runbook's case), and records what changed.
//!
//! The metadata record is an output of the extract step: the extract checkpoint names the record's
//! size and blake3 (`Location::State`). Replacing the record alone would make that checkpoint lie:
//! `narra verify` would report a mismatch and the next run would redo the extraction for nothing.
//! So a reprobe writes, in one store transaction (`OrchestratorStore::record_reprobe`):
//!
//! 1. the new record;
//! 2. the extract checkpoint with its `metadata` output re-hashed, and nothing else of it changed
//!    (the audio, the definition and the input are what they were);
//! 3. a `reprobed` event listing the changes (an empty list: the record was right).
//!
//! Every step's input hash covers the outputs before it, so after a change the store step's
//! checkpoint no longer matches its inputs, and the stored metadata object and manifest still hold
//! the old record. A succeeded job whose record changed is therefore run again at once (a
//! reingest): download and extract verify and are skipped, and the store step writes the new
//! metadata object and manifest; the video and audio objects are already stored and are not
//! written again. A failed or cancelled job keeps its status; its next retry stores the new record.
//!
//! A reprobe reads the original where the checkpoints say it is; it never downloads it again, and
//! it never runs while a worker may be writing the job.

use crate::engine::Engine;
use crate::engine::orchestrator::{EngineError, run_jobs};
use crate::engine::verify::{OutputState, check_output, metadata_record_bytes};
use crate::model::job::{Hash, Job, JobId, Location, Status};
use crate::model::machine;
use crate::steps::StepError;
use crate::steps::extract::{metadata_changes, probe};
use crate::store::StoreError;

/// What a reprobe did.
#[derive(Debug, Clone, PartialEq)]
pub struct Reprobed {
    /// The job after the reprobe (and after its run, when it was republished).
    pub job: Job,
    /// What differs from the record that was replaced; empty when nothing does.
    pub changes: Vec<String>,
    /// Whether the job ran again to store the new record.
    pub republished: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ReprobeError {
    #[error("{0}")]
    Refused(String),
    #[error("cannot re-derive the metadata record: {0}")]
    Probe(StepError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Re-derives job `id`'s metadata record from its original; see the module documentation.
pub async fn reprobe(engine: &Engine, id: JobId) -> Result<Reprobed, ReprobeError> {
    let refused = ReprobeError::Refused;
    let job = engine
        .store
        .job(id)
        .await?
        .ok_or_else(|| refused(format!("job {id} not found")))?;
    machine::check_reprobe(&job).map_err(|rejected| {
        refused(format!(
            "{rejected}: a job is reprobed when it has finished"
        ))
    })?;
    let checkpoints = engine.store.checkpoints(id).await?;
    let extract = checkpoints
        .iter()
        .find(|checkpoint| checkpoint.step == "extract")
        .cloned()
        .ok_or_else(|| {
            refused(format!(
                "job {id} has no metadata record: its extract step never completed \
                 (`narra retry {id}` runs it)"
            ))
        })?;
    let video = checkpoints
        .iter()
        .find(|checkpoint| checkpoint.step == "download")
        .and_then(|checkpoint| checkpoint.output("video"))
        .cloned()
        .ok_or_else(|| refused(format!("job {id} has no downloaded original")))?;
    let original = match check_output(
        &engine.storage,
        &*engine.store,
        id,
        &video,
        &checkpoints,
        false,
    )
    .await
    .map_err(ReprobeError::Probe)?
    {
        OutputState::Present(resolved) => resolved,
        OutputState::Missing => {
            return Err(refused(format!(
                "the original of job {id} is gone from {} and from storage (`narra verify {id}`)",
                video.location
            )));
        }
        OutputState::Changed { .. } => {
            return Err(refused(format!(
                "the original of job {id} no longer matches its checkpoint (`narra verify {id}`)"
            )));
        }
    };
    let params = engine
        .workflows
        .get(&job.workflow)
        .map(|workflow| workflow.extract().clone())
        .unwrap_or_default();
    // Nobody cancels a reprobe; its probe is bounded by the workflow's probe timeout.
    let (_never_cancelled, mut cancel) = tokio::sync::watch::channel(false);
    let tools = &engine.tools;
    let probed = match (&original.local_path, &original.object_key) {
        (Some(path), _) => probe(tools, path, &params, &mut cancel).await,
        (None, Some(key)) => {
            let temp_dir = engine.home.join("scratch").join(format!("{id}.reprobe"));
            crate::private_files::create_dir_all_async(&temp_dir)
                .await
                .map_err(|error| {
                    ReprobeError::Probe(StepError::scratch("create", &temp_dir, error))
                })?;
            let copy = temp_dir.join("original");
            let probed = match engine.storage.read_to_file(key, &copy).await {
                Ok(_) => probe(tools, &copy, &params, &mut cancel).await,
                Err(error) => Err(StepError::from(error)),
            };
            let _ = tokio::fs::remove_dir_all(&temp_dir).await;
            probed
        }
        (None, None) => {
            return Err(refused(format!(
                "the original of job {id} has no readable copy"
            )));
        }
    };
    let metadata = probed.map_err(ReprobeError::Probe)?;
    let record = metadata_record_bytes(&metadata);
    let record_hash = Hash::of(&record);
    let before = engine.store.metadata(id).await?;
    let mut changes = match &before {
        Some(before) => metadata_changes(before, &metadata),
        None => vec!["the record was missing".to_string()],
    };
    let record_changed = extract
        .outputs
        .iter()
        .any(|output| output.location == Location::State && output.blake3 != record_hash);
    if changes.is_empty() && record_changed {
        // Only possible for a record written before `raw` dropped the probed file's name.
        changes.push("raw: the name of the probed local file is no longer kept".to_string());
    }
    let mut checkpoint = extract;
    for output in &mut checkpoint.outputs {
        if output.location == Location::State {
            output.size = u64::try_from(record.len()).expect("a record's length fits in u64");
            output.blake3 = record_hash;
        }
    }
    let job = engine
        .store
        .record_reprobe(id, &checkpoint, &metadata, changes.clone())
        .await?
        .map_err(|rejected| refused(rejected.to_string()))?;
    tracing::info!(job_id = %id, changes = changes.len(), "reprobed the metadata record");
    if changes.is_empty() || job.status != Status::Succeeded {
        return Ok(Reprobed {
            job,
            changes,
            republished: false,
        });
    }
    engine
        .store
        .reingest(id)
        .await?
        .map_err(|rejected| refused(rejected.to_string()))?;
    let job = run_jobs(&engine.orchestrator(), &[id], 1)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| refused(format!("job {id} did not run again")))?;
    Ok(Reprobed {
        job,
        changes,
        republished: true,
    })
}
