//! Cleanup (runbook step 5) and takedown, decided: what a cleanup plan lists and why, its
//! canonical form and the id that `--confirm` repeats, what a confirmed plan did, and what
//! `narra delete` removes.
//!
//! Plain data: `engine::cleanup` reads the stores and storage to make a [`Plan`] and carries it
//! out. The id is the blake3 of the plan's [`CanonicalPlan`], so two plans of the same state have
//! the same id and a plan that changed since the dry run does not.

use std::path::PathBuf;

use serde::Serialize;

use crate::model::job::{Hash, Job, JobId, Status, Timestamp};

/// An object younger than this is never an orphan or a partial write: it may be an upload whose
/// checkpoint is not recorded yet.
pub const DEFAULT_MIN_AGE_S: u64 = 3_600;

/// Bumped when the canonical form of a plan changes, so an old id never matches a new plan.
const PLAN_FORMAT: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanupOptions {
    /// Re-hash every stored artifact instead of trusting unchanged change tokens.
    pub deep: bool,
    /// Objects younger than this many seconds are never orphans or partial writes.
    pub min_age_s: u64,
}

impl Default for CleanupOptions {
    fn default() -> Self {
        CleanupOptions {
            deep: false,
            min_age_s: DEFAULT_MIN_AGE_S,
        }
    }
}

/// Why an object is in the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeletionReason {
    /// A blob no job references and no manifest names, older than the minimum age.
    Orphan,
    /// A temp file of a write that never finished, older than the minimum age.
    Partial,
    /// A stored artifact whose bytes are not its checkpoint's.
    Corrupt {
        /// Which artifact it is: `video`, `audio`, `metadata`, ...
        artifact: String,
        /// The size in bytes its checkpoint records.
        expected_size: u64,
        /// The blake3 its checkpoint records.
        expected_blake3: Hash,
        /// The blake3 of the bytes found; `None` when it was not computed (a size mismatch needs
        /// none).
        found_blake3: Option<Hash>,
    },
}

impl DeletionReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            DeletionReason::Orphan => "orphan",
            DeletionReason::Partial => "partial",
            DeletionReason::Corrupt { .. } => "corrupt",
        }
    }
}

/// An object the plan deletes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    /// The object's key in storage.
    pub key: String,
    /// The size found when planning.
    pub size: u64,
    /// When storage says it was last written; `None` when it does not say.
    pub last_modified: Option<Timestamp>,
    /// Why: an orphan blob, a partial write, or a corrupt artifact with what was expected.
    pub reason: DeletionReason,
    /// The jobs that reference it (corrupt artifacts only).
    pub jobs: Vec<JobId>,
}

impl Deletion {
    pub fn message(&self) -> String {
        match &self.reason {
            DeletionReason::Orphan => format!(
                "orphan blob ({} bytes): no job references it and no manifest names it",
                self.size
            ),
            DeletionReason::Partial => {
                format!("partial write ({} bytes) that never finished", self.size)
            }
            DeletionReason::Corrupt {
                artifact,
                expected_size,
                expected_blake3,
                found_blake3,
            } => format!(
                "corrupt {artifact}: {} bytes, blake3 {} (its checkpoint says {expected_size} bytes, blake3 {expected_blake3}); referenced by {}",
                self.size,
                found_blake3
                    .map(|hash| hash.to_hex())
                    .unwrap_or_else(|| "not computed".into()),
                ids_text(&self.jobs)
            ),
        }
    }
}

/// A scratch directory the plan removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleScratch {
    /// The scratch directory, named after its job's id.
    pub path: PathBuf,
    /// The job the directory belongs to, by its name.
    pub job_id: JobId,
    /// The job's status, or `None` when no such job exists.
    pub status: Option<Status>,
}

/// A job the plan sends back to pending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobReset {
    /// A succeeded or failed job that needs an artifact that is missing or deleted as corrupt.
    pub job_id: JobId,
    /// Its status before the reset: `Succeeded` or `Failed`.
    pub status: Status,
    /// `reset by cleanup: ` and which artifacts are missing or corrupt.
    pub reason: String,
}

/// What cleanup would do, with the id that `--confirm` must repeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The first 16 hex digits of the blake3 of [`Plan::canonical`]: what `--confirm` repeats.
    pub id: String,
    /// The options the plan was made with; a confirm must give the same.
    pub options: CleanupOptions,
    /// The objects to delete, sorted by key.
    pub deletions: Vec<Deletion>,
    /// The scratch directories to remove.
    pub scratch: Vec<StaleScratch>,
    /// The jobs to send back to pending.
    pub resets: Vec<JobReset>,
    /// What was seen and deliberately left alone (young objects, cancelled jobs, ...). Not part of
    /// the id.
    pub notes: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.deletions.is_empty() && self.scratch.is_empty() && self.resets.is_empty()
    }

    /// The canonical form the id hashes: sorted, and with nothing that changes between two plans
    /// of the same state.
    pub fn canonical(&self) -> CanonicalPlan<'_, CanonicalDeletion<'_>> {
        self.canonical_with(CanonicalDeletion::of)
    }

    /// The canonical form with each deletion written by `deletion`: a view adds to the canonical
    /// fields without writing them out again.
    pub fn canonical_with<'a, D>(
        &'a self,
        deletion: impl FnMut(&'a Deletion) -> D,
    ) -> CanonicalPlan<'a, D> {
        CanonicalPlan {
            format: PLAN_FORMAT,
            deep: self.options.deep,
            min_age_s: self.options.min_age_s,
            deletions: self.deletions.iter().map(deletion).collect(),
            scratch: self
                .scratch
                .iter()
                .map(|dir| CanonicalScratch {
                    path: dir.path.display().to_string(),
                    job: dir.job_id.to_string(),
                    status: dir.status.map(Status::as_str),
                })
                .collect(),
            resets: self
                .resets
                .iter()
                .map(|reset| CanonicalReset {
                    job: reset.job_id.to_string(),
                    status: reset.status.as_str(),
                    reason: &reset.reason,
                })
                .collect(),
        }
    }
}

/// A plan as its id hashes it. `D` is how each deletion is written: [`CanonicalDeletion`] for the
/// id.
#[derive(Debug, Serialize)]
pub struct CanonicalPlan<'a, D> {
    /// The version of this canonical form: an id made under another never matches.
    pub format: u32,
    /// Whether every stored artifact was re-hashed, instead of trusting unchanged change tokens.
    pub deep: bool,
    /// Objects younger than this many seconds were left alone.
    pub min_age_s: u64,
    /// The objects to delete: orphan blobs, partial writes and corrupt artifacts, sorted by key.
    pub deletions: Vec<D>,
    /// The scratch directories to remove.
    pub scratch: Vec<CanonicalScratch>,
    /// The jobs to send back to pending.
    pub resets: Vec<CanonicalReset<'a>>,
}

#[derive(Debug, Serialize)]
pub struct CanonicalDeletion<'a> {
    /// The object's key in storage.
    pub key: &'a str,
    /// Its size in bytes when the plan was made.
    pub size: u64,
    /// When storage says it was last written, in milliseconds since the Unix epoch; `null` when it
    /// does not say.
    pub last_modified_ms: Option<i64>,
    /// `orphan`, `partial` or `corrupt`.
    pub reason: &'static str,
    /// A corrupt artifact's blake3 as found, 64 hex digits; `null` for other reasons or when not
    /// computed.
    pub found_blake3: Option<String>,
    /// The ids of the jobs that reference a corrupt artifact; empty for other reasons.
    pub jobs: Vec<String>,
}

impl CanonicalDeletion<'_> {
    pub fn of(deletion: &Deletion) -> CanonicalDeletion<'_> {
        CanonicalDeletion {
            key: &deletion.key,
            size: deletion.size,
            last_modified_ms: deletion.last_modified.map(|at| at.0),
            reason: deletion.reason.as_str(),
            found_blake3: match &deletion.reason {
                DeletionReason::Corrupt { found_blake3, .. } => {
                    found_blake3.map(|hash| hash.to_hex())
                }
                _ => None,
            },
            jobs: deletion.jobs.iter().map(ToString::to_string).collect(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct CanonicalScratch {
    /// The directory's path on the machine that made the plan.
    pub path: String,
    /// The id of the job the directory belongs to.
    pub job: String,
    /// That job's status (`succeeded`, `failed`, `cancelled`); `null` when no such job exists.
    pub status: Option<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct CanonicalReset<'a> {
    /// The id of the job to reset.
    pub job: String,
    /// Its status now: `succeeded` or `failed`.
    pub status: &'static str,
    /// `reset by cleanup: ` and which artifacts are missing or corrupt.
    pub reason: &'a str,
}

/// The first 16 hex digits of the blake3 of a canonical plan.
pub fn plan_id<D: Serialize>(canonical: &CanonicalPlan<'_, D>) -> String {
    // Hashed as a JSON value, whose keys are sorted: the ids of plans made before this type
    // existed stay what they were.
    let value = serde_json::to_value(canonical).expect("a plan serializes");
    let bytes = serde_json::to_vec(&value).expect("JSON values serialize");
    blake3::hash(&bytes).to_hex()[..16].to_string()
}

/// What a confirmed plan did (`engine::cleanup::execute`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executed {
    /// The plan that was carried out.
    pub plan: Plan,
    /// The keys of the objects deleted.
    pub deleted: Vec<String>,
    /// The scratch directories removed.
    pub removed_scratch: Vec<PathBuf>,
    /// The jobs sent back to pending.
    pub reset: Vec<JobId>,
    /// Plan items that were not carried out, and why.
    pub skipped: Vec<String>,
}

/// What `narra delete` removes, or would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Takedown {
    /// The job taken down (or that a dry run would take down).
    pub job: Job,
    /// Objects of the job that exist and no other job references.
    pub objects: Vec<String>,
    /// Objects of the job kept because another job references them, with those jobs.
    pub shared: Vec<(String, Vec<JobId>)>,
    /// The job's scratch directory, when it has one.
    pub scratch: Option<PathBuf>,
}

fn ids_text(ids: &[JobId]) -> String {
    if ids.is_empty() {
        return "no job".to_string();
    }
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
