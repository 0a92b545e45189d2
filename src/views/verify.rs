//! What `narra verify` and `GET /verify/{id}` show (runbook step 3): each artifact of a job and
//! its state, and the problems in words.

use serde::Serialize;

use super::Text;
use super::job::{Bytes, location_text};
use crate::model::job::JobId;
use crate::model::verification::{ArtifactCheck, ArtifactState, JobVerification};

/// What a job with no store checkpoint says instead of artifacts.
const NOT_STORED: &str = "no store checkpoint: ingestion did not complete";

/// `{id, ok, deep, artifacts: [{artifact, location, size, blake3, state, message}], problems:
/// [{artifact, location, problem, message}]}`.
#[derive(Debug, Serialize)]
pub struct VerificationView<'a> {
    /// The verified job's id.
    pub id: Text<JobId>,
    /// Every artifact is there with its bytes (and ingestion completed).
    pub ok: bool,
    /// Every object was re-hashed, not only those whose change token changed.
    pub deep: bool,
    /// Each output of the store step's checkpoint and the metadata record, with its state; empty
    /// when nothing was stored.
    pub artifacts: Vec<ArtifactCheckView<'a>>,
    /// The artifacts that are not `ok`; one `not_stored` entry when ingestion did not complete.
    pub problems: Vec<ProblemView<'a>>,
}

/// `{artifact, location, size, blake3, state, message}`: an artifact, what its checkpoint says
/// it holds, and what was found.
#[derive(Debug, Serialize)]
pub struct ArtifactCheckView<'a> {
    /// `video`, `audio`, `metadata`, `platform_metadata`, `manifest` (stored objects) or
    /// `metadata_record` (the record in the state store).
    pub artifact: &'a str,
    /// `location`, `size` and `blake3` as the checkpoint records them, at the top level.
    #[serde(flatten)]
    pub bytes: Bytes<'a>,
    /// `ok`, `missing`, `mismatch` or `unreadable`.
    pub state: &'static str,
    /// What was found, in words.
    pub message: String,
}

/// An artifact that is not `ok`, or `all` of them when nothing was stored.
#[derive(Debug, Serialize)]
pub struct ProblemView<'a> {
    /// The artifact's name, or `all` when nothing was stored.
    pub artifact: &'a str,
    /// `scratch:<path>`, `object:<key>` or `state`; empty for `all`.
    pub location: String,
    /// `missing`, `mismatch`, `unreadable` or `not_stored`.
    pub problem: &'static str,
    /// What was found, in words.
    pub message: String,
}

pub fn artifact_checks(verification: &JobVerification) -> Vec<ArtifactCheckView<'_>> {
    verification
        .artifacts
        .iter()
        .map(|artifact| ArtifactCheckView {
            artifact: &artifact.artifact,
            bytes: Bytes::of(&artifact.location, artifact.size, artifact.blake3),
            state: artifact.state.as_str(),
            message: artifact.message(),
        })
        .collect()
}

/// `deep` says whether every object was re-hashed.
pub fn verification(verification: &JobVerification, deep: bool) -> VerificationView<'_> {
    let mut problems: Vec<ProblemView<'_>> = verification
        .problems()
        .map(|artifact: &ArtifactCheck| ProblemView {
            artifact: &artifact.artifact,
            location: artifact.location.to_string(),
            problem: artifact.state.as_str(),
            message: artifact.message(),
        })
        .collect();
    if !verification.stored {
        problems.push(ProblemView {
            artifact: "all",
            location: String::new(),
            problem: "not_stored",
            message: NOT_STORED.to_string(),
        });
    }
    VerificationView {
        id: Text(verification.job_id),
        ok: verification.ok(),
        deep,
        artifacts: artifact_checks(verification),
        problems,
    }
}

/// `<id>  <artifact>  <state>  <location>`, and the problem in words after a problem.
pub fn verification_text(verification: &JobVerification) -> Vec<String> {
    let id = verification.job_id;
    if !verification.stored {
        return vec![format!("{id}  all               not_stored  {NOT_STORED}")];
    }
    verification
        .artifacts
        .iter()
        .map(|artifact| {
            let mut line = format!(
                "{id}  {:<16}  {:<10}  {}",
                artifact.artifact,
                artifact.state.as_str(),
                location_text(&artifact.location)
            );
            if artifact.state != ArtifactState::Ok {
                line.push_str(&format!("  ({})", artifact.message()));
            }
            line
        })
        .collect()
}
