//! The job model: ids, status, ingestion phase, leases, errors, checkpoints and events.
//!
//! These are plain data. They know nothing of sled, opendal or ffmpeg; the rules for how a job may
//! change live in `engine::machine`, and the encoding of these records lives in `store::codec`.
//! Stored records derive serde with no `skip`/`tag` attributes, because bincode cannot decode those;
//! the JSON shapes users see are built in `cli::views`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A job's identity: a ULID, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(pub u128);

impl JobId {
    /// A new id, greater than every id this process made before: ULIDs made in the same
    /// millisecond are ordered too, so "newest first" holds for jobs submitted in one batch.
    pub fn new() -> JobId {
        static GENERATOR: std::sync::Mutex<ulid::Generator> =
            std::sync::Mutex::new(ulid::Generator::new());
        let mut generator = GENERATOR
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // The generator only fails when 2^80 ids were made in one millisecond.
        JobId(generator.generate().unwrap_or_else(|_| ulid::Ulid::new()).0)
    }

    /// Big-endian bytes: the byte order sorts like the ULID itself, so tree scans are in id order.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    pub fn from_bytes(bytes: [u8; 16]) -> JobId {
        JobId(u128::from_be_bytes(bytes))
    }
}

impl Default for JobId {
    fn default() -> Self {
        JobId::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", ulid::Ulid(self.0))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid job id {input:?}: a job id is a 26-character ULID")]
pub struct InvalidJobId {
    pub input: String,
}

impl FromStr for JobId {
    type Err = InvalidJobId;
    fn from_str(input: &str) -> Result<JobId, InvalidJobId> {
        ulid::Ulid::from_string(input.trim())
            .map(|ulid| JobId(ulid.0))
            .map_err(|_| InvalidJobId {
                input: input.to_string(),
            })
    }
}

/// Milliseconds since the Unix epoch, UTC. Shown as RFC 3339.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp(chrono::Utc::now().timestamp_millis())
    }

    pub fn plus_ms(self, duration_ms: u64) -> Timestamp {
        Timestamp(
            self.0
                .saturating_add(i64::try_from(duration_ms).unwrap_or(i64::MAX)),
        )
    }

    pub fn to_rfc3339(self) -> String {
        match chrono::DateTime::from_timestamp_millis(self.0) {
            Some(datetime) => datetime.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            None => format!("invalid-timestamp({})", self.0),
        }
    }
}

/// The global job status, owned by the orchestrator alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Status {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Pending,
        Status::Running,
        Status::Succeeded,
        Status::Failed,
        Status::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    /// One byte per status, used as the prefix of the by-status index.
    pub fn index_byte(self) -> u8 {
        match self {
            Status::Pending => 0,
            Status::Running => 1,
            Status::Succeeded => 2,
            Status::Failed => 3,
            Status::Cancelled => 4,
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Cancelled)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;
    /// `completed` is the runbook's word for `succeeded` and is accepted wherever a status is typed.
    fn from_str(input: &str) -> Result<Status, String> {
        match input.trim().to_ascii_lowercase().as_str() {
            "pending" => Ok(Status::Pending),
            "running" => Ok(Status::Running),
            "succeeded" | "completed" => Ok(Status::Succeeded),
            "failed" => Ok(Status::Failed),
            "cancelled" | "canceled" => Ok(Status::Cancelled),
            other => Err(format!(
                "unknown status {other:?}: expected pending, running, succeeded (or completed), failed or cancelled"
            )),
        }
    }
}

/// What the worker is doing inside a running job, owned by the worker alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Phase {
    Downloading,
    Processing,
    Storing,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Downloading => "downloading",
            Phase::Processing => "processing",
            Phase::Storing => "storing",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name of the process that holds a lease, e.g. `host:pid:n`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WorkerId(pub String);

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A claim on a running job. `fencing_token` grows with every claim of the job; every write a
/// worker makes carries it, and writes under an older token are rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub worker_id: WorkerId,
    pub fencing_token: u64,
    pub expires_at: Timestamp,
}

/// What a worker presents with each write: the job and the token it was given when it claimed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseToken {
    pub job_id: JobId,
    pub fencing_token: u64,
}

/// The last error a job failed with: a stable class users can filter on, and a message in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub class: String,
    pub message: String,
}

/// The persisted job record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub key: String,
    pub source: String,
    pub workflow: String,
    pub status: Status,
    pub ingestion_phase: Option<Phase>,
    pub attempts: u32,
    pub error: Option<ErrorInfo>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub lease: Option<Lease>,
    /// The highest fencing token ever handed out for this job.
    pub fencing_token: u64,
    /// Set by `cancel` on a running job; the worker honours it at the next step boundary.
    pub cancel_requested: bool,
    /// The sequence number the next event of this job gets.
    pub events_next: u64,
}

impl Job {
    /// The ownership rule: a phase exists only while the job is running, and a running job has a lease.
    pub fn invariants_hold(&self) -> Result<(), String> {
        if self.ingestion_phase.is_some() && self.status != Status::Running {
            return Err(format!(
                "job {} has phase {:?} with status {}",
                self.id, self.ingestion_phase, self.status
            ));
        }
        if (self.status == Status::Running) != self.lease.is_some() {
            return Err(format!(
                "job {} has status {} and lease {:?}",
                self.id, self.status, self.lease
            ));
        }
        if let Some(lease) = &self.lease
            && lease.fencing_token != self.fencing_token
        {
            return Err(format!(
                "job {} lease token {} is not its latest token {}",
                self.id, lease.fencing_token, self.fencing_token
            ));
        }
        if self.status == Status::Succeeded && self.error.is_some() {
            return Err(format!("job {} succeeded but carries an error", self.id));
        }
        Ok(())
    }
}

/// A blake3 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    pub fn of(bytes: &[u8]) -> Hash {
        Hash(*blake3::hash(bytes).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }
}

impl From<blake3::Hash> for Hash {
    fn from(hash: blake3::Hash) -> Hash {
        Hash(*hash.as_bytes())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Where a step output lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Location {
    /// A file in the job's scratch directory, by absolute path.
    Scratch(String),
    /// An object in the storage root, by key.
    Object(String),
    /// A record kept in the state store (the metadata record).
    State,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Scratch(path) => write!(f, "scratch:{path}"),
            Location::Object(key) => write!(f, "object:{key}"),
            Location::State => f.write_str("state"),
        }
    }
}

/// A cheap way to tell that an output has not changed since it was written, so it need not be
/// re-hashed. It only detects change; it is never taken for the content's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeToken {
    File {
        inode: u64,
        size: u64,
        mtime_ns: i64,
    },
    ETag(String),
    /// No cheap token: the output is re-hashed whenever it is checked.
    None,
}

impl fmt::Display for ChangeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChangeToken::File {
                inode,
                size,
                mtime_ns,
            } => write!(f, "file:{inode}:{size}:{mtime_ns}"),
            ChangeToken::ETag(etag) => write!(f, "etag:{etag}"),
            ChangeToken::None => f.write_str("none"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepOutput {
    pub name: String,
    pub location: Location,
    pub size: u64,
    pub blake3: Hash,
    pub change_token: ChangeToken,
}

/// The record a finished step leaves: what was done (definition), on what (input) and what came out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub step: String,
    pub definition_hash: Hash,
    pub input_hash: Hash,
    pub outputs: Vec<StepOutput>,
    pub recorded_at: Timestamp,
}

impl Checkpoint {
    pub fn output(&self, name: &str) -> Option<&StepOutput> {
        self.outputs.iter().find(|output| output.name == name)
    }
}

/// One entry of a job's append-only history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub at: Timestamp,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Submitted {
        source: String,
        workflow: String,
    },
    StatusChanged {
        from: Option<Status>,
        to: Status,
        reason: String,
    },
    PhaseChanged {
        from: Option<Phase>,
        to: Option<Phase>,
    },
    StepStarted {
        step: String,
    },
    StepCompleted {
        step: String,
        outputs: u32,
    },
    StepSkipped {
        step: String,
        reason: String,
    },
    StepFailed {
        step: String,
        error: ErrorInfo,
    },
    RetryRequested {
        reason: String,
    },
    CancelRequested,
    // New variants go last: bincode stores a variant by its position.
    /// The extract step chose an audio stream and how to write it.
    AudioSelected {
        stream_index: u32,
        codec: String,
        language: Option<String>,
        /// `copy`, or the transcode target (`flac`, `wav`, `opus`, `mp3`).
        output: String,
        /// The audio file's container, as its extension.
        container: String,
        reason: String,
    },
    /// `narra reprobe` re-derived the metadata record from the stored original; `changes` lists
    /// what differs from the record it replaced (empty: nothing).
    Reprobed {
        changes: Vec<String>,
    },
    /// A step that has a checkpoint runs again. `cause` is a stable code (`definition_changed`,
    /// `inputs_changed`, `output_missing`, `output_changed`, `earlier_step_ran`); `reason` says it
    /// in words. `narra audit` reads it: a step that runs again with no recorded cause is a finding.
    StepRedone {
        step: String,
        cause: String,
        reason: String,
    },
    /// The objects a run of `step` wrote (not those it found already stored with their bytes), so
    /// `narra audit` can count the writes of each key over the job's history.
    ObjectsWritten {
        step: String,
        keys: Vec<String>,
    },
    /// What a checkpoint recorded, written with it (after its `step_completed`): the history keeps
    /// every run's hashes while the checkpoint keeps only the last, so `narra audit` can tell
    /// whether two runs of the same definition on the same input gave the same outputs.
    CheckpointRecorded {
        step: String,
        definition_hash: Hash,
        input_hash: Hash,
        /// Each output's name and blake3.
        outputs: Vec<(String, Hash)>,
    },
}

impl EventKind {
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Submitted { .. } => "submitted",
            EventKind::StatusChanged { .. } => "status_changed",
            EventKind::PhaseChanged { .. } => "phase_changed",
            EventKind::StepStarted { .. } => "step_started",
            EventKind::StepCompleted { .. } => "step_completed",
            EventKind::StepSkipped { .. } => "step_skipped",
            EventKind::StepFailed { .. } => "step_failed",
            EventKind::RetryRequested { .. } => "retry_requested",
            EventKind::CancelRequested => "cancel_requested",
            EventKind::AudioSelected { .. } => "audio_selected",
            EventKind::Reprobed { .. } => "reprobed",
            EventKind::StepRedone { .. } => "step_redone",
            EventKind::ObjectsWritten { .. } => "objects_written",
            EventKind::CheckpointRecorded { .. } => "checkpoint_recorded",
        }
    }

    pub fn step(&self) -> Option<&str> {
        match self {
            EventKind::StepStarted { step }
            | EventKind::StepCompleted { step, .. }
            | EventKind::StepSkipped { step, .. }
            | EventKind::StepFailed { step, .. } => Some(step),
            _ => None,
        }
    }
}

/// One line of a job's own log (runbook step 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub at: Timestamp,
    pub level: String,
    pub message: String,
}

/// One stream of the probed media.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamInfo {
    pub index: u32,
    pub codec_type: String,
    pub codec_name: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub sample_rate: Option<u32>,
    pub channels: Option<u32>,
    pub duration_s: Option<f64>,
}

/// The metadata record derived from ffprobe's JSON, which is kept whole in `raw`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MediaMetadata {
    pub format_name: String,
    pub duration_s: Option<f64>,
    pub size: Option<u64>,
    pub bit_rate: Option<u64>,
    pub streams: Vec<StreamInfo>,
    /// ffprobe's JSON output, as it printed it but for the local file name it read.
    pub raw: String,
}

/// A running step's progress (bytes downloaded, bytes of audio written, bytes sent to storage), kept
/// apart from the job record, started at zero as each phase begins and written at most about once a
/// second, never per chunk. Which step it belongs to is the job's phase's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobProgress {
    pub bytes_done: u64,
    pub bytes_total: Option<u64>,
    pub rate_bytes_per_s: u64,
    pub updated_at: Timestamp,
}

/// One line of the incident log: an action `cleanup` or `delete` took (runbook step 5: "document
/// cleanup in incident log"). Appended, never changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    /// The position in the log, from 0.
    pub seq: u64,
    pub at: Timestamp,
    /// Who acted: `$USER`, else `narra`.
    pub actor: String,
    /// `deleted_object`, `removed_scratch`, `reset_job`, `deleted_job`.
    pub action: String,
    pub job: Option<JobId>,
    /// The object key or scratch path acted on.
    pub key: Option<String>,
    pub reason: String,
}

/// A backfill's identity: a ULID, so backfills sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BackfillId(pub u128);

impl BackfillId {
    pub fn new() -> BackfillId {
        BackfillId(ulid::Ulid::new().0)
    }

    /// Big-endian bytes, sorting like the ULID (as [`JobId::to_bytes`]).
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    pub fn from_bytes(bytes: [u8; 16]) -> BackfillId {
        BackfillId(u128::from_be_bytes(bytes))
    }
}

impl Default for BackfillId {
    fn default() -> Self {
        BackfillId::new()
    }
}

impl fmt::Display for BackfillId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", ulid::Ulid(self.0))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid backfill id {input:?}: a backfill id is a 26-character ULID")]
pub struct InvalidBackfillId {
    pub input: String,
}

impl FromStr for BackfillId {
    type Err = InvalidBackfillId;
    fn from_str(input: &str) -> Result<BackfillId, InvalidBackfillId> {
        ulid::Ulid::from_string(input.trim())
            .map(|ulid| BackfillId(ulid.0))
            .map_err(|_| InvalidBackfillId {
                input: input.to_string(),
            })
    }
}

/// A backfill: one manifest's sources submitted together (`narra backfill`). Its jobs are kept
/// apart, in the store's `backfill_jobs` index, so the record stays small however many it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backfill {
    pub id: BackfillId,
    /// What names the manifest: its absolute path, or `stdin:<blake3 prefix>` for standard input.
    /// Running a manifest of the same name again resumes this backfill.
    pub manifest: String,
    pub created_at: Timestamp,
}

#[cfg(test)]
mod id_tests {
    use super::JobId;

    // Guards "newest first": ids made back to back (same millisecond) still sort in creation order.
    #[test]
    fn ids_made_in_a_row_sort_in_creation_order() {
        let ids: Vec<JobId> = (0..1_000).map(|_| JobId::new()).collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
    }
}
