//! Verification: is a recorded step output still there, with the bytes its checkpoint names?
//!
//! Used by the worker to decide whether a step is done, and by `narra verify` (runbook step 3). A
//! cheap change token (inode, size and mtime; or an ETag) says "unchanged"; when it differs, the
//! output is re-hashed, and it counts only if its blake3 matches. A scratch output that is gone is
//! looked up among the job's stored objects by hash: once the store step's checkpoint is durable,
//! the stored objects stand for the earlier steps' outputs. This module never writes anything.

use std::path::PathBuf;

use crate::engine::Engine;
use crate::model::ErrorClass;
use crate::model::job::{ChangeToken, Checkpoint, Hash, JobId, Location, StepOutput};
use crate::model::verification::{ArtifactCheck, ArtifactState, JobVerification};
use crate::steps::StepError;
use crate::storage::{Storage, file_change_token, hash_file};
use crate::store::JobReader;

/// Where a verified output can be read.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub output: StepOutput,
    /// A local file with the bytes: the scratch file, or the stored object on an `fs://` root.
    pub local_path: Option<PathBuf>,
    /// The stored object with the bytes, if that is where they were found.
    pub object_key: Option<String>,
}

/// The verdict on one output.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputState {
    Present(Resolved),
    Missing,
    /// Found, but its bytes are not the recorded ones.
    Changed {
        found_size: u64,
        found_blake3: Option<Hash>,
    },
}

/// Checks one output where its checkpoint put it; a missing scratch output is looked for among the
/// stored objects of `all_checkpoints`. `full` re-hashes even when the change token is unchanged.
pub async fn check_output(
    storage: &Storage,
    reader: &dyn JobReader,
    job_id: JobId,
    output: &StepOutput,
    all_checkpoints: &[Checkpoint],
    full: bool,
) -> Result<OutputState, StepError> {
    let state = check_at(storage, reader, job_id, output, &output.location, full).await?;
    if !matches!(output.location, Location::Scratch(_)) || matches!(state, OutputState::Present(_))
    {
        return Ok(state);
    }
    let stored_copy = all_checkpoints
        .iter()
        .flat_map(|checkpoint| checkpoint.outputs.iter())
        .find(|candidate| {
            matches!(candidate.location, Location::Object(_))
                && candidate.blake3 == output.blake3
                && candidate.size == output.size
        });
    match stored_copy {
        Some(stored) => {
            let stored_state =
                check_at(storage, reader, job_id, stored, &stored.location, full).await?;
            Ok(match stored_state {
                OutputState::Present(resolved) => OutputState::Present(Resolved {
                    output: output.clone(),
                    ..resolved
                }),
                _ => state,
            })
        }
        None => Ok(state),
    }
}

async fn check_at(
    storage: &Storage,
    reader: &dyn JobReader,
    job_id: JobId,
    output: &StepOutput,
    location: &Location,
    full: bool,
) -> Result<OutputState, StepError> {
    match location {
        Location::Scratch(path) => {
            let path = PathBuf::from(path);
            let metadata = match tokio::fs::metadata(&path).await {
                Ok(metadata) => metadata,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    return Ok(OutputState::Missing);
                }
                Err(error) => return Err(StepError::scratch("inspect", &path, error)),
            };
            let token = file_change_token(&metadata);
            let verdict = judge(output, metadata.len(), &token, full, || async {
                hash_file(&path)
                    .await
                    .map(|(_, hash)| hash)
                    .map_err(|error| StepError::scratch("read", &path, error))
            })
            .await?;
            Ok(verdict.into_state(Resolved {
                output: output.clone(),
                local_path: Some(path.clone()),
                object_key: None,
            }))
        }
        Location::Object(key) => {
            let Some(stat) = storage.stat(key).await? else {
                return Ok(OutputState::Missing);
            };
            let verdict = judge(output, stat.size, &stat.change_token, full, || async {
                match storage.hash_object(key).await? {
                    Some((_, hash)) => Ok(hash),
                    None => Err(StepError::new(
                        ErrorClass::StorageError,
                        format!("{key} vanished while it was being verified"),
                    )),
                }
            })
            .await?;
            Ok(verdict.into_state(Resolved {
                output: output.clone(),
                local_path: storage.local_path(key),
                object_key: Some(key.clone()),
            }))
        }
        Location::State => {
            let Some(metadata) = reader
                .metadata(job_id)
                .await
                .map_err(|error| StepError::new(ErrorClass::Internal, error.to_string()))?
            else {
                return Ok(OutputState::Missing);
            };
            let bytes = metadata_record_bytes(&metadata);
            let hash = Hash::of(&bytes);
            if hash == output.blake3 && bytes.len() as u64 == output.size {
                Ok(OutputState::Present(Resolved {
                    output: output.clone(),
                    local_path: None,
                    object_key: None,
                }))
            } else {
                Ok(OutputState::Changed {
                    found_size: bytes.len() as u64,
                    found_blake3: Some(hash),
                })
            }
        }
    }
}

/// The bytes a metadata record is hashed as: its stored fields and raw JSON, compact, keys sorted
/// (`extract::record_json`, whose shape does not follow what `show` displays).
pub fn metadata_record_bytes(metadata: &crate::model::job::MediaMetadata) -> Vec<u8> {
    serde_json::to_vec(&crate::steps::extract::record_json(metadata))
        .expect("JSON values serialize")
}

enum Verdict {
    Same,
    Changed { size: u64, blake3: Option<Hash> },
}

impl Verdict {
    fn into_state(self, resolved: Resolved) -> OutputState {
        match self {
            Verdict::Same => OutputState::Present(resolved),
            Verdict::Changed { size, blake3 } => OutputState::Changed {
                found_size: size,
                found_blake3: blake3,
            },
        }
    }
}

async fn judge<F, Fut>(
    output: &StepOutput,
    size: u64,
    token: &ChangeToken,
    full: bool,
    rehash: F,
) -> Result<Verdict, StepError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Hash, StepError>>,
{
    if size != output.size {
        return Ok(Verdict::Changed { size, blake3: None });
    }
    let token_unchanged = *token != ChangeToken::None && *token == output.change_token;
    if token_unchanged && !full {
        return Ok(Verdict::Same);
    }
    let hash = rehash().await?;
    if hash == output.blake3 {
        Ok(Verdict::Same)
    } else {
        Ok(Verdict::Changed {
            size,
            blake3: Some(hash),
        })
    }
}

/// Checks a job's stored video, audio, metadata object and manifest against its store checkpoint,
/// and its metadata record against the extract checkpoint. Shallow by default: existence, size,
/// and the change token (an object whose token changed is re-hashed); `deep` streams and re-hashes
/// every object. A job with no store checkpoint comes back with `stored: false`.
pub async fn verify_job(
    engine: &Engine,
    id: JobId,
    checkpoints: &[Checkpoint],
    deep: bool,
) -> JobVerification {
    let Some(store_checkpoint) = checkpoints
        .iter()
        .find(|checkpoint| checkpoint.step == "store")
    else {
        return JobVerification {
            job_id: id,
            stored: false,
            artifacts: Vec::new(),
        };
    };
    let mut outputs: Vec<(&str, &StepOutput)> = store_checkpoint
        .outputs
        .iter()
        .map(|output| (output.name.as_str(), output))
        .collect();
    if let Some(extract) = checkpoints
        .iter()
        .find(|checkpoint| checkpoint.step == "extract")
    {
        outputs.extend(
            extract
                .outputs
                .iter()
                .filter(|output| output.location == Location::State)
                .map(|output| ("metadata_record", output)),
        );
    }
    let mut artifacts = Vec::with_capacity(outputs.len());
    for (artifact, output) in outputs {
        let state = match check_output(
            &engine.storage,
            &*engine.store,
            id,
            output,
            checkpoints,
            deep,
        )
        .await
        {
            Ok(OutputState::Present(_)) => ArtifactState::Ok,
            Ok(OutputState::Missing) => ArtifactState::Missing,
            Ok(OutputState::Changed {
                found_size,
                found_blake3,
            }) => ArtifactState::Mismatch {
                found_size,
                found_blake3,
            },
            Err(error) => ArtifactState::Unreadable {
                message: error.message,
            },
        };
        artifacts.push(ArtifactCheck {
            artifact: artifact.to_string(),
            location: output.location.clone(),
            size: output.size,
            blake3: output.blake3,
            state,
        });
    }
    JobVerification {
        job_id: id,
        stored: true,
        artifacts,
    }
}
