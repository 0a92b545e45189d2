//! Cleanup (runbook step 5) and takedown: finding what is stale, orphaned, partial or corrupt,
//! and removing exactly that, with every action in the incident log.
//!
//! `narra cleanup` is a plan, then an execution. [`plan`] only reads: stale scratch directories of
//! jobs that are not pending or running, partial writes in the `fs://` temp directory, orphan blobs
//! (no job references them through the blob index, no manifest names them, and they are older than
//! the minimum age, so an upload in flight is never an orphan), corrupt artifacts (a stored object
//! whose bytes are not its checkpoint's: size and change token, re-hashed when the token changed;
//! `deep` re-hashes every object), and the jobs that must be reset to pending because an artifact
//! they need is missing or is about to be deleted. The plan has an id, the blake3 of its canonical
//! form: [`execute`] recomputes the plan, refuses when the id differs (something changed since the
//! dry run), and otherwise does exactly what the plan lists.
//!
//! The promise the property test below checks: cleanup never deletes an object that a succeeded
//! job references and that verifies. A blob is deleted only as an orphan (nothing references it),
//! a partial write (not a blob at all) or a corrupt artifact (its bytes are not the ones every
//! referencing job recorded); and right before deleting, [`execute`] re-hashes any object a
//! succeeded job references and keeps it if it verifies.
//!
//! Incomplete multipart uploads on object stores are invisible here: opendal cannot list them.
//! Operators set the bucket lifecycle rule that aborts them (docs/RUNBOOK.md).
//!
//! [`plan_takedown`] and [`execute_takedown`] serve `narra delete`: a job's records and those of
//! its objects that no other job references.

use std::collections::{BTreeMap, BTreeSet};

use crate::engine::Engine;
use crate::engine::verify::{OutputState, check_output};
use crate::model::cleanup::{
    CleanupOptions, Deletion, DeletionReason, Executed, JobReset, Plan, StaleScratch, Takedown,
    plan_id,
};
use crate::model::job::{Job, JobId, Location, Status, StepOutput, Timestamp};
use crate::model::machine::Rejected;
use crate::storage::{FS_ATOMIC_WRITE_DIR, StorageError, manifest_key};
use crate::store::{NewIncident, StoreError};

const BLOB_PREFIX: &str = "blobs/";
const MANIFEST_PREFIX: &str = "jobs/";

#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cannot read scratch space {path}: {message}")]
    Scratch { path: String, message: String },
    #[error(
        "the cleanup plan changed since the dry run (confirmed {confirmed}, now {current}): nothing was done; run `narra cleanup` again and confirm the new plan"
    )]
    PlanChanged { confirmed: String, current: String },
    #[error("job {0} not found")]
    NotFound(JobId),
    #[error("{0}")]
    Rejected(#[from] Rejected),
}

/// Computes the cleanup plan. Reads only.
pub async fn plan(engine: &Engine, options: &CleanupOptions) -> Result<Plan, CleanupError> {
    let now = Timestamp::now();
    let min_age_ms = i64::try_from(options.min_age_s.saturating_mul(1_000)).unwrap_or(i64::MAX);
    let old_enough = |last_modified: Option<Timestamp>| {
        last_modified.is_some_and(|at| now.0.saturating_sub(at.0) >= min_age_ms)
    };
    let mut notes = Vec::new();
    let jobs: BTreeMap<JobId, Job> = engine
        .all_jobs(None)
        .await?
        .into_iter()
        .map(|job| (job.id, job))
        .collect();

    let scratch = stale_scratch(engine, &jobs, &mut notes).await?;

    // Corrupt and missing artifacts, one verdict per stored object.
    let mut expected: BTreeMap<String, (JobId, StepOutput, Vec<crate::model::job::Checkpoint>)> =
        BTreeMap::new();
    let mut missing: Vec<(JobId, String, String)> = Vec::new();
    for job in jobs.values() {
        let checkpoints = engine.store.checkpoints(job.id).await?;
        let Some(store_checkpoint) = checkpoints
            .iter()
            .find(|checkpoint| checkpoint.step == "store")
        else {
            continue;
        };
        for output in &store_checkpoint.outputs {
            if let Location::Object(key) = &output.location {
                expected
                    .entry(key.clone())
                    .or_insert_with(|| (job.id, output.clone(), checkpoints.clone()));
            }
        }
    }
    let mut deletions = Vec::new();
    for (key, (job_id, output, checkpoints)) in &expected {
        match check_output(
            &engine.storage,
            &*engine.store,
            *job_id,
            output,
            checkpoints,
            options.deep,
        )
        .await
        {
            Ok(OutputState::Present(_)) => {}
            Ok(OutputState::Missing) => {
                for referencing in referencing_jobs(engine, key, *job_id).await? {
                    missing.push((referencing, output.name.clone(), key.clone()));
                }
            }
            Ok(OutputState::Changed {
                found_size,
                found_blake3,
            }) => {
                deletions.push(Deletion {
                    key: key.clone(),
                    size: found_size,
                    last_modified: None,
                    reason: DeletionReason::Corrupt {
                        artifact: output.name.clone(),
                        expected_size: output.size,
                        expected_blake3: output.blake3,
                        found_blake3,
                    },
                    jobs: referencing_jobs(engine, key, *job_id).await?,
                });
            }
            Err(error) => notes.push(format!(
                "{key} cannot be checked, left alone: {}",
                error.message
            )),
        }
    }

    // Orphan blobs: not referenced through the index, not named by any manifest, old enough.
    let mut named_by_manifests = BTreeSet::new();
    for manifest in engine.storage.list(MANIFEST_PREFIX).await? {
        if !manifest.key.ends_with("/manifest.json") {
            continue;
        }
        let bytes = engine.storage.read_bytes(&manifest.key).await?;
        match bytes.and_then(|bytes| crate::engine::audit::manifest_blob_keys(&bytes)) {
            Some(keys) => named_by_manifests.extend(keys),
            None => notes.push(format!(
                "{} is not a readable manifest; it protects no blob",
                manifest.key
            )),
        }
    }
    let corrupt_keys: BTreeSet<String> = deletions.iter().map(|d| d.key.clone()).collect();
    for blob in engine.storage.list(BLOB_PREFIX).await? {
        if corrupt_keys.contains(&blob.key)
            || named_by_manifests.contains(&blob.key)
            || !engine.store.jobs_referencing(&blob.key).await?.is_empty()
        {
            continue;
        }
        if old_enough(blob.last_modified) {
            deletions.push(Deletion {
                key: blob.key,
                size: blob.size,
                last_modified: blob.last_modified,
                reason: DeletionReason::Orphan,
                jobs: Vec::new(),
            });
        } else {
            notes.push(format!(
                "{} is unreferenced but younger than {} s (or of unknown age): kept, it may be an upload in flight",
                blob.key, options.min_age_s
            ));
        }
    }

    // Partial writes: the fs temp directory holds only writes that have not been renamed into
    // place, or never will be.
    if engine.storage.local_path("").is_some() {
        for partial in engine
            .storage
            .list(&format!("{FS_ATOMIC_WRITE_DIR}/"))
            .await?
        {
            if old_enough(partial.last_modified) {
                deletions.push(Deletion {
                    key: partial.key,
                    size: partial.size,
                    last_modified: partial.last_modified,
                    reason: DeletionReason::Partial,
                    jobs: Vec::new(),
                });
            } else {
                notes.push(format!(
                    "{} is a write younger than {} s: kept, it may still be in progress",
                    partial.key, options.min_age_s
                ));
            }
        }
    }
    deletions.sort_by(|left, right| left.key.cmp(&right.key));

    // The jobs to reset: those needing a missing artifact or one this plan deletes as corrupt.
    let mut reasons: BTreeMap<JobId, Vec<String>> = BTreeMap::new();
    for (job_id, artifact, key) in missing {
        reasons
            .entry(job_id)
            .or_default()
            .push(format!("{artifact} {key} is missing"));
    }
    for deletion in &deletions {
        if let DeletionReason::Corrupt { artifact, .. } = &deletion.reason {
            for job_id in &deletion.jobs {
                reasons
                    .entry(*job_id)
                    .or_default()
                    .push(format!("{artifact} {} is corrupt", deletion.key));
            }
        }
    }
    let mut resets = Vec::new();
    for (job_id, mut why) in reasons {
        why.sort();
        why.dedup();
        let Some(job) = jobs.get(&job_id) else {
            continue;
        };
        match job.status {
            Status::Succeeded | Status::Failed => resets.push(JobReset {
                job_id,
                status: job.status,
                reason: format!("reset by cleanup: {}", why.join("; ")),
            }),
            Status::Pending | Status::Running => notes.push(format!(
                "job {job_id} is {}: it re-verifies its artifacts when it runs ({})",
                job.status,
                why.join("; ")
            )),
            Status::Cancelled => notes.push(format!(
                "job {job_id} is cancelled: not reset ({}); `narra retry` it to restore its artifacts",
                why.join("; ")
            )),
        }
    }

    let mut plan = Plan {
        id: String::new(),
        options: *options,
        deletions,
        scratch,
        resets,
        notes,
    };
    plan.id = plan_id(&plan.canonical());
    Ok(plan)
}

/// The jobs the blob index lists for `key`; for a key it does not index (a manifest), the job
/// whose checkpoint names it.
async fn referencing_jobs(
    engine: &Engine,
    key: &str,
    named_by: JobId,
) -> Result<Vec<JobId>, CleanupError> {
    let mut ids = engine.store.jobs_referencing(key).await?;
    if !ids.contains(&named_by) {
        ids.push(named_by);
        ids.sort();
    }
    Ok(ids)
}

/// Scratch directories of jobs that are neither pending nor running (a pending job's scratch holds
/// the part of its download it resumes from).
async fn stale_scratch(
    engine: &Engine,
    jobs: &BTreeMap<JobId, Job>,
    notes: &mut Vec<String>,
) -> Result<Vec<StaleScratch>, CleanupError> {
    let root = engine.home.join("scratch");
    let scratch_error = |error: std::io::Error| CleanupError::Scratch {
        path: root.display().to_string(),
        message: error.to_string(),
    };
    let mut entries = match tokio::fs::read_dir(&root).await {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(scratch_error(error)),
    };
    let mut stale = Vec::new();
    while let Some(entry) = entries.next_entry().await.map_err(scratch_error)? {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        let Ok(job_id) = name.parse::<JobId>() else {
            notes.push(format!(
                "{} is not a job's scratch directory: left alone",
                path.display()
            ));
            continue;
        };
        let status = jobs.get(&job_id).map(|job| job.status);
        let stale_entry = StaleScratch {
            path,
            job_id,
            status,
        };
        match status {
            Some(Status::Pending | Status::Running) => {}
            None | Some(Status::Succeeded) => stale.push(stale_entry),
            // A failed or cancelled job that never stored its artifacts keeps the only copy of its
            // checkpointed outputs (and any resumable partial download) in scratch: removing it
            // would make a retry download and extract again, or fail if the source is gone.
            Some(Status::Failed | Status::Cancelled) => {
                if engine.store.checkpoint(job_id, "store").await?.is_some() {
                    stale.push(stale_entry);
                } else {
                    notes.push(format!(
                        "{} holds the outputs job {job_id} resumes from: left alone",
                        stale_entry.path.display()
                    ));
                }
            }
        }
    }
    stale.sort_by(|left, right| left.path.cmp(&right.path));
    Ok(stale)
}

/// Recomputes the plan and, when its id is `plan_id`, carries it out: deletes its objects, removes
/// its scratch directories, resets its jobs, and logs each action as an incident by `actor`.
pub async fn execute(
    engine: &Engine,
    options: &CleanupOptions,
    plan_id: &str,
    actor: &str,
) -> Result<Executed, CleanupError> {
    let plan = plan(engine, options).await?;
    if plan.id != plan_id.trim() {
        return Err(CleanupError::PlanChanged {
            confirmed: plan_id.trim().to_string(),
            current: plan.id,
        });
    }
    let mut executed = Executed {
        plan: plan.clone(),
        deleted: Vec::new(),
        removed_scratch: Vec::new(),
        reset: Vec::new(),
        skipped: Vec::new(),
    };
    for deletion in &plan.deletions {
        if let Some(reason) = verifies_for_a_succeeded_job(engine, &deletion.key).await? {
            tracing::error!(key = %deletion.key, %reason, "refusing to delete an object a succeeded job needs");
            executed
                .skipped
                .push(format!("{} kept: {reason}", deletion.key));
            continue;
        }
        engine.storage.delete(&deletion.key).await?;
        engine
            .store
            .record_incident(NewIncident {
                actor: actor.to_string(),
                action: "deleted_object".to_string(),
                job: match deletion.jobs.as_slice() {
                    [only] => Some(*only),
                    _ => None,
                },
                key: Some(deletion.key.clone()),
                reason: format!("cleanup: {}", deletion.message()),
            })
            .await?;
        executed.deleted.push(deletion.key.clone());
    }
    for dir in &plan.scratch {
        match tokio::fs::remove_dir_all(&dir.path).await {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                executed
                    .skipped
                    .push(format!("{} kept: {error}", dir.path.display()));
                continue;
            }
        }
        engine
            .store
            .record_incident(NewIncident {
                actor: actor.to_string(),
                action: "removed_scratch".to_string(),
                job: Some(dir.job_id),
                key: Some(dir.path.display().to_string()),
                reason: format!(
                    "cleanup: stale scratch of a job that is {}",
                    dir.status.map(|status| status.as_str()).unwrap_or("gone")
                ),
            })
            .await?;
        executed.removed_scratch.push(dir.path.clone());
    }
    for reset in &plan.resets {
        match engine.store.reset(reset.job_id, &reset.reason).await? {
            Ok(_) => {
                engine
                    .store
                    .record_incident(NewIncident {
                        actor: actor.to_string(),
                        action: "reset_job".to_string(),
                        job: Some(reset.job_id),
                        key: None,
                        reason: reset.reason.clone(),
                    })
                    .await?;
                executed.reset.push(reset.job_id);
            }
            Err(rejected) => executed
                .skipped
                .push(format!("job {} not reset: {rejected}", reset.job_id)),
        }
    }
    Ok(executed)
}

/// The last guard before a delete: `Some(why)` when a succeeded job references `key` (through the
/// index or its store checkpoint) and the object, re-hashed, holds exactly the bytes it recorded.
async fn verifies_for_a_succeeded_job(
    engine: &Engine,
    key: &str,
) -> Result<Option<String>, CleanupError> {
    let mut candidates = engine.store.jobs_referencing(key).await?;
    if let Some(id) = key
        .strip_prefix(MANIFEST_PREFIX)
        .and_then(|rest| rest.strip_suffix("/manifest.json"))
        .and_then(|id| id.parse::<JobId>().ok())
    {
        candidates.push(id);
    }
    let mut found = None;
    for id in candidates {
        let Some(job) = engine.store.job(id).await? else {
            continue;
        };
        if job.status != Status::Succeeded {
            continue;
        }
        let Some(output) = engine
            .store
            .checkpoint(id, "store")
            .await?
            .and_then(|checkpoint| {
                checkpoint
                    .outputs
                    .into_iter()
                    .find(|output| output.location == Location::Object(key.to_string()))
            })
        else {
            continue;
        };
        if found.is_none() {
            found = engine.storage.hash_object(key).await?;
        }
        if found == Some((output.size, output.blake3)) {
            return Ok(Some(format!(
                "succeeded job {id} references it and it verifies"
            )));
        }
    }
    Ok(None)
}

/// Plans the takedown of a job: its manifest, the blobs its store checkpoint names and those it
/// ever wrote (its history's `objects_written`), except those another job references; its scratch
/// directory; and its records. Reads only.
pub async fn plan_takedown(engine: &Engine, id: JobId) -> Result<Takedown, CleanupError> {
    let job = engine
        .store
        .job(id)
        .await?
        .ok_or(CleanupError::NotFound(id))?;
    crate::model::machine::check_deletable(&job)?;
    let mut keys = BTreeSet::new();
    keys.insert(manifest_key(id));
    if let Some(checkpoint) = engine.store.checkpoint(id, "store").await? {
        for output in checkpoint.outputs {
            if let Location::Object(key) = output.location {
                keys.insert(key);
            }
        }
    }
    // What the job ever wrote: the compacted part of its history keeps the keys too.
    if let Some(summary) = engine.store.event_summary(id).await? {
        keys.extend(crate::model::history::writes(&summary).into_keys());
    }
    for event in engine.store.events(id).await? {
        if let crate::model::job::EventKind::ObjectsWritten { keys: written, .. } = event.kind {
            keys.extend(written);
        }
    }
    let mut objects = Vec::new();
    let mut shared = Vec::new();
    for key in keys {
        let others: Vec<JobId> = engine
            .store
            .jobs_referencing(&key)
            .await?
            .into_iter()
            .filter(|other| *other != id)
            .collect();
        if !others.is_empty() {
            shared.push((key, others));
        } else if engine.storage.stat(&key).await?.is_some() {
            objects.push(key);
        }
    }
    let scratch_dir = engine.scratch_dir(id);
    let scratch = tokio::fs::metadata(&scratch_dir)
        .await
        .is_ok()
        .then_some(scratch_dir);
    Ok(Takedown {
        job,
        objects,
        shared,
        scratch,
    })
}

/// Takes a job down: deletes what [`plan_takedown`] lists, then the job's records, logging each
/// action as an incident by `actor`. Objects go first, so a crash leaves the job to delete again
/// rather than objects no record leads to.
pub async fn execute_takedown(
    engine: &Engine,
    id: JobId,
    actor: &str,
) -> Result<Takedown, CleanupError> {
    let takedown = plan_takedown(engine, id).await?;
    let incident = |action: &str, key: Option<String>, reason: String| NewIncident {
        actor: actor.to_string(),
        action: action.to_string(),
        job: Some(id),
        key,
        reason,
    };
    for key in &takedown.objects {
        engine.storage.delete(key).await?;
        engine
            .store
            .record_incident(incident(
                "deleted_object",
                Some(key.clone()),
                "takedown: an artifact of the deleted job that no other job references".into(),
            ))
            .await?;
    }
    if let Some(path) = &takedown.scratch {
        match tokio::fs::remove_dir_all(path).await {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(CleanupError::Scratch {
                    path: path.display().to_string(),
                    message: error.to_string(),
                });
            }
        }
        engine
            .store
            .record_incident(incident(
                "removed_scratch",
                Some(path.display().to_string()),
                "takedown: the deleted job's scratch".into(),
            ))
            .await?;
    }
    engine.store.delete_job(id).await??;
    let kept = if takedown.shared.is_empty() {
        String::new()
    } else {
        format!(
            "; kept {} objects other jobs reference",
            takedown.shared.len()
        )
    };
    engine
        .store
        .record_incident(incident(
            "deleted_job",
            None,
            format!(
                "takedown: job records deleted (source {}){kept}",
                crate::model::redact::redact_url(&takedown.job.source)
            ),
        ))
        .await?;
    Ok(takedown)
}

/// `$USER`, else `narra`: who the incident log says acted.
pub fn actor_from_env() -> String {
    std::env::var("USER")
        .ok()
        .filter(|user| !user.trim().is_empty())
        .unwrap_or_else(|| "narra".to_string())
}

#[cfg(test)]
mod tests {
    //! A property test of cleanup on real parts (a sled store on disk, an `fs://` storage root):
    //! over random mixes of valid, corrupt, orphan and partial objects shared by random jobs,
    //! cleanup never deletes a valid referenced object, does exactly what its plan listed, keeps
    //! young objects, and resets the jobs whose artifacts it deleted.

    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use proptest::prelude::*;

    use super::*;
    use crate::model::cleanup::DEFAULT_MIN_AGE_S;
    use crate::model::job::{Checkpoint, ErrorInfo, Hash};
    use crate::storage::{Storage, WriteOptions, Written, blob_key};
    use crate::store::conformance::fixtures::{self, Answer};
    use crate::store::{SledStore, StateStore};
    use crate::workflow::WorkflowRegistry;

    const JOBS: usize = 3;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Kind {
        /// Referenced, and holds its bytes.
        Valid,
        /// Referenced, and overwritten with other bytes; `keep_token` restores the size and mtime
        /// so only a deep check can tell.
        Corrupt { keep_token: bool },
        /// Referenced by no job.
        Orphan { old: bool },
        /// A temp file of a write that never finished.
        Partial { old: bool },
    }

    #[derive(Debug, Clone)]
    struct ObjectSpec {
        kind: Kind,
        /// Which of the jobs reference it (referenced kinds only; none means job 0).
        jobs: Vec<bool>,
        size: usize,
    }

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![
            3 => Just(Kind::Valid),
            2 => any::<bool>().prop_map(|keep_token| Kind::Corrupt { keep_token }),
            2 => any::<bool>().prop_map(|old| Kind::Orphan { old }),
            1 => any::<bool>().prop_map(|old| Kind::Partial { old }),
        ]
    }

    fn object() -> impl Strategy<Value = ObjectSpec> {
        (
            kind(),
            proptest::collection::vec(any::<bool>(), JOBS),
            1..200usize,
        )
            .prop_map(|(kind, jobs, size)| ObjectSpec { kind, jobs, size })
    }

    fn set_mtime(path: &std::path::Path, at: SystemTime) {
        std::fs::File::options()
            .write(true)
            .open(path)
            .expect("open")
            .set_modified(at)
            .expect("set the mtime");
    }

    struct Placed {
        spec: ObjectSpec,
        key: String,
        bytes: Vec<u8>,
        /// The jobs whose store checkpoint names it.
        jobs: Vec<JobId>,
    }

    async fn run_case(
        objects: Vec<ObjectSpec>,
        succeeded: Vec<bool>,
        deep: bool,
    ) -> Result<(), TestCaseError> {
        let dir = tempfile::tempdir().expect("a temp dir");
        let home = dir.path().to_path_buf();
        let sled = Arc::new(SledStore::open(&home.join("state"), 8 * 1024 * 1024).expect("sled"));
        let store: Arc<dyn StateStore> = sled.clone();
        let storage = Storage::from_uri(&format!("fs://{}", home.join("objects").display()))
            .expect("storage");
        let engine = Engine::new(
            store.clone(),
            storage.clone(),
            WorkflowRegistry::load(None).expect("workflows"),
            &home,
            crate::steps::net::NetworkPolicy::default(),
        );
        let hours_ago = |hours: u64| SystemTime::now() - Duration::from_secs(hours * 3_600);

        // Place the objects; referenced ones become outputs of their jobs' store checkpoints.
        let mut placed = Vec::new();
        let mut outputs: Vec<Vec<StepOutput>> = vec![Vec::new(); JOBS];
        for (index, spec) in objects.into_iter().enumerate() {
            let mut bytes = format!("object {index} ").into_bytes();
            bytes.resize(
                bytes.len() + spec.size,
                u8::try_from(index % 251).expect("small"),
            );
            let hash = Hash::of(&bytes);
            let key = match spec.kind {
                Kind::Partial { .. } => format!("{FS_ATOMIC_WRITE_DIR}/partial-{index}"),
                _ => blob_key(&hash, "bin"),
            };
            let mut jobs = Vec::new();
            match spec.kind {
                Kind::Partial { old } | Kind::Orphan { old } => {
                    let path = storage.local_path(&key).expect("an fs root");
                    std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
                    std::fs::write(&path, &bytes).expect("write");
                    set_mtime(&path, if old { hours_ago(2) } else { SystemTime::now() });
                }
                Kind::Valid | Kind::Corrupt { .. } => {
                    let Written::Written(stat) = storage
                        .put_bytes(&key, bytes.clone(), WriteOptions::default())
                        .await
                        .expect("put")
                    else {
                        panic!("a fresh key is written");
                    };
                    // Old, so a deleted referenced object could never pass as a young orphan.
                    let path = storage.local_path(&key).expect("an fs root");
                    set_mtime(&path, hours_ago(5));
                    let change_token =
                        crate::storage::file_change_token(&std::fs::metadata(&path).expect("stat"));
                    assert_eq!(stat.size, bytes.len() as u64);
                    let referencing: Vec<usize> = (0..JOBS).filter(|job| spec.jobs[*job]).collect();
                    let referencing = if referencing.is_empty() {
                        vec![0]
                    } else {
                        referencing
                    };
                    for job in referencing {
                        outputs[job].push(StepOutput {
                            name: format!("object-{index}"),
                            location: Location::Object(key.clone()),
                            size: bytes.len() as u64,
                            blake3: hash,
                            change_token: change_token.clone(),
                        });
                        jobs.push(job);
                    }
                }
            }
            placed.push((spec, key, bytes, jobs));
        }

        // Each job: submitted, claimed, its store checkpoint recorded, then succeeded or failed.
        let mut ids = Vec::new();
        for (job, job_outputs) in outputs.iter().enumerate() {
            let token = fixtures::running_job(store.as_ref(), &format!("job-{job}")).await;
            let checkpoint = Checkpoint {
                step: "store".into(),
                definition_hash: Hash::of(b"store"),
                input_hash: Hash::of(b"input"),
                outputs: job_outputs.clone(),
                recorded_at: Timestamp::now(),
            };
            let recorded = store.record_checkpoint(&token, &checkpoint, None).await;
            recorded.accepted("checkpoint");
            if succeeded[job] {
                store.complete(&token).await.accepted("complete");
            } else {
                let error = ErrorInfo {
                    class: "internal".into(),
                    message: "generated".into(),
                };
                store.fail(&token, error).await.accepted("fail");
            }
            ids.push(token.job_id);
        }
        let placed: Vec<Placed> = placed
            .into_iter()
            .map(|(spec, key, bytes, jobs)| Placed {
                spec,
                key,
                jobs: jobs.into_iter().map(|job| ids[job]).collect(),
                bytes,
            })
            .collect();

        // Corrupt after the checkpoints: bytes change, and with `keep_token` nothing else does.
        for object in &placed {
            if let Kind::Corrupt { keep_token } = object.spec.kind {
                let path = storage.local_path(&object.key).expect("an fs root");
                let metadata = std::fs::metadata(&path).expect("stat");
                let mut bytes = object.bytes.clone();
                let last = bytes.len() - 1;
                bytes[last] ^= 0xff;
                if keep_token {
                    use std::io::{Seek, SeekFrom, Write};
                    let mut file = std::fs::File::options()
                        .write(true)
                        .open(&path)
                        .expect("open");
                    file.seek(SeekFrom::Start(last as u64)).expect("seek");
                    file.write_all(&bytes[last..]).expect("write");
                    file.set_modified(metadata.modified().expect("mtime"))
                        .expect("mtime");
                } else {
                    std::fs::write(&path, &bytes).expect("overwrite");
                }
            }
        }

        let options = CleanupOptions {
            deep,
            min_age_s: DEFAULT_MIN_AGE_S,
        };
        let plan = plan(&engine, &options).await.expect("plan");
        let executed = execute(&engine, &options, &plan.id, "prop")
            .await
            .expect("execute");

        let planned: Vec<&str> = plan.deletions.iter().map(|d| d.key.as_str()).collect();
        prop_assert_eq!(
            &executed.deleted,
            &planned,
            "cleanup did what its plan listed"
        );
        prop_assert!(executed.skipped.is_empty(), "{:?}", executed.skipped);
        for object in &placed {
            let path = storage.local_path(&object.key).expect("an fs root");
            let found = std::fs::read(&path).ok();
            match object.spec.kind {
                Kind::Valid => prop_assert_eq!(
                    found.as_ref(),
                    Some(&object.bytes),
                    "a valid referenced object {} was deleted or changed",
                    object.key
                ),
                Kind::Corrupt { keep_token } => {
                    let detectable = deep || !keep_token;
                    prop_assert_eq!(found.is_none(), detectable, "corrupt {}", object.key);
                    if detectable {
                        for id in &object.jobs {
                            let job = store.job(*id).await.expect("job").expect("exists");
                            prop_assert_eq!(job.status, Status::Pending, "job {} reset", id);
                        }
                    }
                }
                Kind::Orphan { old } | Kind::Partial { old } => {
                    prop_assert_eq!(found.is_none(), old, "orphan or partial {}", object.key);
                }
            }
        }
        // A job none of whose objects was deleted keeps its status.
        for (job, id) in ids.iter().enumerate() {
            let lost = placed
                .iter()
                .any(|object| object.jobs.contains(id) && executed.deleted.contains(&object.key));
            let status = store.job(*id).await.expect("job").expect("exists").status;
            let expected = match (lost, succeeded[job]) {
                (true, _) => Status::Pending,
                (false, true) => Status::Succeeded,
                (false, false) => Status::Failed,
            };
            prop_assert_eq!(status, expected, "job {}", id);
        }
        prop_assert_eq!(
            store.incidents().await.expect("incidents").len(),
            executed.deleted.len() + executed.removed_scratch.len() + executed.reset.len()
        );
        sled.check_consistency().expect("consistent store");
        // Done: the same state now plans nothing to delete.
        let again = super::plan(&engine, &options).await.expect("plan");
        prop_assert!(again.deletions.is_empty(), "{:?}", again.deletions);
        Ok(())
    }

    // Guards listing and deleting through opendal (the object-store path, here its memory
    // backend): keys come back sorted with their sizes, deleting is idempotent, and an object
    // whose age the backend does not say is never taken for an orphan.
    #[tokio::test]
    async fn object_stores_list_delete_and_keep_objects_of_unknown_age() {
        let storage = Storage::from_uri("memory://").expect("storage");
        for (key, bytes) in [
            ("blobs/bb/b.bin", &b"bb"[..]),
            ("blobs/aa/a.bin", &b"a"[..]),
            ("jobs/x/manifest.json", &b"{}"[..]),
        ] {
            storage
                .put_bytes(key, bytes.to_vec(), WriteOptions::default())
                .await
                .expect("put");
        }
        let listed: Vec<(String, u64)> = storage
            .list("blobs/")
            .await
            .expect("list")
            .into_iter()
            .map(|object| (object.key, object.size))
            .collect();
        assert_eq!(
            listed,
            vec![
                ("blobs/aa/a.bin".to_string(), 1),
                ("blobs/bb/b.bin".to_string(), 2)
            ]
        );
        storage.delete("blobs/aa/a.bin").await.expect("delete");
        storage
            .delete("blobs/aa/a.bin")
            .await
            .expect("delete again");
        assert_eq!(storage.stat("blobs/aa/a.bin").await.expect("stat"), None);
        assert_eq!(storage.list("nothing/").await.expect("list"), vec![]);

        let dir = tempfile::tempdir().expect("a temp dir");
        let store: Arc<dyn StateStore> =
            Arc::new(SledStore::open(&dir.path().join("state"), 8 * 1024 * 1024).expect("sled"));
        let engine = Engine::new(
            store,
            storage.clone(),
            WorkflowRegistry::load(None).expect("workflows"),
            dir.path(),
            crate::steps::net::NetworkPolicy::default(),
        );
        let options = CleanupOptions {
            deep: true,
            min_age_s: 0,
        };
        let plan = plan(&engine, &options).await.expect("plan");
        let orphans: Vec<&str> = plan
            .deletions
            .iter()
            .map(|deletion| deletion.key.as_str())
            .collect();
        let ages_unknown = storage
            .list("blobs/")
            .await
            .expect("list")
            .iter()
            .all(|object| object.last_modified.is_none());
        if ages_unknown {
            assert_eq!(orphans, Vec::<&str>::new(), "{:?}", plan.notes);
            assert!(
                plan.notes
                    .iter()
                    .any(|note| note.contains("blobs/bb/b.bin"))
            );
        } else {
            assert_eq!(orphans, vec!["blobs/bb/b.bin"]);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        #[test]
        fn cleanup_never_deletes_a_valid_referenced_object(
            objects in proptest::collection::vec(object(), 1..10),
            succeeded in proptest::collection::vec(any::<bool>(), JOBS),
            deep in any::<bool>(),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(run_case(objects, succeeded, deep))?;
        }
    }
}
