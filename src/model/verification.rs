//! What `narra verify` found (runbook step 3): each artifact of a job and its state, as plain data.
//!
//! `engine::verify::verify_job` checks storage and fills a [`JobVerification`]; `narra audit` keeps
//! one as its storage check. Nothing here reads anything.

use crate::model::job::{Hash, JobId, Location};

/// What `verify` found for one artifact of a job.
#[derive(Debug, Clone, PartialEq)]
pub enum ArtifactState {
    Ok,
    Missing,
    /// Found with other bytes: its size differs, or its blake3 (`found_blake3`, when computed).
    Mismatch {
        /// The size in bytes found.
        found_size: u64,
        /// The blake3 of the bytes found; `None` when the size already differed and nothing was
        /// hashed.
        found_blake3: Option<Hash>,
    },
    /// It could not be checked (the object store failed).
    Unreadable {
        /// The object store's error.
        message: String,
    },
}

impl ArtifactState {
    /// The stable word users see: `ok`, `missing`, `mismatch`, `unreadable`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ArtifactState::Ok => "ok",
            ArtifactState::Missing => "missing",
            ArtifactState::Mismatch { .. } => "mismatch",
            ArtifactState::Unreadable { .. } => "unreadable",
        }
    }
}

/// One artifact of a job and its state.
#[derive(Debug, Clone, PartialEq)]
pub struct ArtifactCheck {
    /// `video`, `audio`, `metadata`, `platform_metadata`, `manifest` (stored objects) or
    /// `metadata_record` (the record in the state store).
    pub artifact: String,
    /// Where the checkpoint says it is.
    pub location: Location,
    /// The size in bytes its checkpoint records.
    pub size: u64,
    /// The blake3 its checkpoint records.
    pub blake3: Hash,
    /// What was found there.
    pub state: ArtifactState,
}

impl ArtifactCheck {
    /// One sentence for people.
    pub fn message(&self) -> String {
        match &self.state {
            ArtifactState::Ok => format!("{} ok at {}", self.artifact, self.location),
            ArtifactState::Missing => format!("{} is missing: {}", self.artifact, self.location),
            ArtifactState::Mismatch {
                found_size,
                found_blake3,
            } => format!(
                "{} at {} does not match its checkpoint: {found_size} bytes (expected {}), blake3 {} (expected {})",
                self.artifact,
                self.location,
                self.size,
                found_blake3
                    .map(|hash| hash.to_hex())
                    .unwrap_or_else(|| "not computed".into()),
                self.blake3
            ),
            ArtifactState::Unreadable { message } => {
                format!(
                    "{} at {} cannot be checked: {message}",
                    self.artifact, self.location
                )
            }
        }
    }
}

/// `verify` of one job (runbook step 3).
#[derive(Debug, Clone, PartialEq)]
pub struct JobVerification {
    /// The verified job.
    pub job_id: JobId,
    /// False when the job has no store checkpoint: ingestion did not complete, nothing to check.
    pub stored: bool,
    /// Each output of the store checkpoint, then the metadata record; empty when not `stored`.
    pub artifacts: Vec<ArtifactCheck>,
}

impl JobVerification {
    pub fn ok(&self) -> bool {
        self.stored
            && self
                .artifacts
                .iter()
                .all(|artifact| artifact.state == ArtifactState::Ok)
    }

    pub fn problems(&self) -> impl Iterator<Item = &ArtifactCheck> {
        self.artifacts
            .iter()
            .filter(|artifact| artifact.state != ArtifactState::Ok)
    }
}
