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
        artifact: String,
        expected_size: u64,
        expected_blake3: Hash,
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
    pub key: String,
    /// The size found when planning.
    pub size: u64,
    pub last_modified: Option<Timestamp>,
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
    pub path: PathBuf,
    pub job_id: JobId,
    /// The job's status, or `None` when no such job exists.
    pub status: Option<Status>,
}

/// A job the plan sends back to pending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobReset {
    pub job_id: JobId,
    pub status: Status,
    pub reason: String,
}

/// What cleanup would do, with the id that `--confirm` must repeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub id: String,
    pub options: CleanupOptions,
    pub deletions: Vec<Deletion>,
    pub scratch: Vec<StaleScratch>,
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
    pub format: u32,
    pub deep: bool,
    pub min_age_s: u64,
    pub deletions: Vec<D>,
    pub scratch: Vec<CanonicalScratch>,
    pub resets: Vec<CanonicalReset<'a>>,
}

#[derive(Debug, Serialize)]
pub struct CanonicalDeletion<'a> {
    pub key: &'a str,
    pub size: u64,
    pub last_modified_ms: Option<i64>,
    pub reason: &'static str,
    pub found_blake3: Option<String>,
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
    pub path: String,
    pub job: String,
    pub status: Option<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct CanonicalReset<'a> {
    pub job: String,
    pub status: &'static str,
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
    pub plan: Plan,
    pub deleted: Vec<String>,
    pub removed_scratch: Vec<PathBuf>,
    pub reset: Vec<JobId>,
    /// Plan items that were not carried out, and why.
    pub skipped: Vec<String>,
}

/// What `narra delete` removes, or would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Takedown {
    pub job: Job,
    /// Objects of the job that exist and no other job references.
    pub objects: Vec<String>,
    /// Objects of the job kept because another job references them, with those jobs.
    pub shared: Vec<(String, Vec<JobId>)>,
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
