//! The job model: ids, status, ingestion phase, leases, errors, checkpoints and events, and what a
//! job leaves when its events are compacted (`EventSummary`) or it is pruned (`PrunedJob`).
//!
//! These are plain data. They know nothing of sled, opendal or ffmpeg; the rules for how a job may
//! change live in `model::machine`, and the encoding of these records lives in `store::codec`.
//! Stored records derive serde with no `skip`/`tag` attributes, because bincode cannot decode those;
//! the JSON shapes users see are built in `views`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An identity that is a ULID, so ids sort by creation time: the newtype over its 128 bits, its
/// big-endian bytes (which sort like the ULID itself, so tree scans are in id order), its 26
/// characters for display and parsing, a new one by default, and the error of a text that is none.
/// Each id writes its own `new`.
macro_rules! ulid_id {
    ($(#[$doc:meta])* $id:ident, $error:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $id(pub u128);

        impl $id {
            /// Big-endian bytes: the byte order sorts like the ULID itself.
            pub fn to_bytes(self) -> [u8; 16] {
                self.0.to_be_bytes()
            }

            pub fn from_bytes(bytes: [u8; 16]) -> $id {
                $id(u128::from_be_bytes(bytes))
            }
        }

        impl Default for $id {
            fn default() -> Self {
                $id::new()
            }
        }

        impl fmt::Display for $id {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", ulid::Ulid(self.0))
            }
        }

        #[derive(Debug, thiserror::Error)]
        #[error("invalid {what} {input:?}: a {what} is a 26-character ULID", what = $what)]
        pub struct $error {
            pub input: String,
        }

        impl FromStr for $id {
            type Err = $error;
            fn from_str(input: &str) -> Result<$id, $error> {
                ulid::Ulid::from_string(input.trim())
                    .map(|ulid| $id(ulid.0))
                    .map_err(|_| $error {
                        input: input.to_string(),
                    })
            }
        }
    };
}

ulid_id!(
    /// A job's identity.
    JobId,
    InvalidJobId,
    "job id"
);

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
    /// Pending jobs are claimed highest priority first, then oldest first. Set at submission
    /// ([`PRIORITY_LIVE`] for `submit`/`ingest`, [`PRIORITY_BACKFILL`] for manifest lines unless
    /// the line gives one) and never changed after.
    pub priority: i32,
    /// A pending job is not claimed before this: the delay of an automatic retry.
    pub not_before: Option<Timestamp>,
    /// Deaths of the processes that ran this job with no progress in between (crash-loop
    /// quarantine, `model::machine`); cleared when the job finishes.
    pub crashes: Option<CrashRecord>,
    /// Whom the deaths of this job's processes are charged to (`model::attribution`): whether it
    /// is a suspect, whether its current run is alone in its process, and a fleet's takeover not
    /// yet charged. Cleared when the job finishes.
    pub attribution: Attribution,
}

/// The priority of jobs submitted one by one (`submit`, `ingest`, the API).
pub const PRIORITY_LIVE: i32 = 10;
/// The priority of a backfill's jobs when its manifest line gives none: below live submissions,
/// so a backfill never starves new work.
pub const PRIORITY_BACKFILL: i32 = 0;

/// Where a job was when the process running it died: its phase, how many steps had a checkpoint,
/// and the running step's recorded byte offset. Two deaths at the same marker mean the job made no
/// progress in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressMarker {
    pub phase: Option<Phase>,
    pub checkpoints: u32,
    pub bytes_done: u64,
}

/// How many times in a row a job's process died at the same [`ProgressMarker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashRecord {
    pub marker: ProgressMarker,
    pub count: u32,
}

/// What `model::attribution` keeps on a job to decide whom a process's death is charged to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attribution {
    /// A process that held this job beside others died: the job runs alone (no other job beside
    /// it in its process) until it passes its next checkpoint.
    pub suspect: bool,
    /// The current run has had no other job beside it in its process since its claim: a death
    /// of that process is this job's.
    pub alone: bool,
    /// A fleet took this job over from a holder whose lease expired; the death is charged only if
    /// that holder never writes again (`model::attribution::takeover_due`).
    pub takeover: Option<Takeover>,
}

/// A takeover of an expired lease, not yet charged as a death.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Takeover {
    /// The holder whose lease expired.
    pub worker_id: WorkerId,
    /// Its lease's fencing token: a write presenting it is that holder coming back.
    pub fencing_token: u64,
    pub at: Timestamp,
    /// Where the job stood, for the crash record if the death is charged.
    pub marker: ProgressMarker,
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
    AudioSelected(AudioSelection),
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

/// The audio stream the extract step chose and how it writes it: the payload of the worker's
/// step event and of the history event it becomes. A newtype variant around it encodes (bincode,
/// JSON) exactly as a struct variant with these fields in this order did, so the field order is
/// the stored layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudioSelection {
    pub stream_index: u32,
    pub codec: String,
    pub language: Option<String>,
    /// `copy`, or the transcode target (`flac`, `wav`, `opus`, `mp3`).
    pub output: String,
    /// The audio file's container, as its extension.
    pub container: String,
    pub reason: String,
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
    /// Bytes downloaded, written or sent to storage so far in the current step.
    pub bytes_done: u64,
    /// The step's whole in bytes, when it is known.
    pub bytes_total: Option<u64>,
    /// Bytes per second over the last interval between writes; 0 in a step's final figures.
    pub rate_bytes_per_s: u64,
    /// When the record was last written.
    pub updated_at: Timestamp,
}

/// One line of the incident log: an action `cleanup` or `delete` took (runbook step 5: "document
/// cleanup in incident log"). Appended, never changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    /// The position in the log, from 0.
    pub seq: u64,
    /// When the action was taken.
    pub at: Timestamp,
    /// Who acted: `$USER`, else `narra`.
    pub actor: String,
    /// `deleted_object`, `removed_scratch`, `reset_job`, `deleted_job`, `circuit_opened`,
    /// `fenced_write` (a write refused by a stale fencing token: `actor` is the worker).
    pub action: String,
    /// The job acted on; `None` when the action concerned no single job.
    pub job: Option<JobId>,
    /// The object key or scratch path acted on.
    pub key: Option<String>,
    /// Why, in words.
    pub reason: String,
}

ulid_id!(
    /// A backfill's identity.
    BackfillId,
    InvalidBackfillId,
    "backfill id"
);

impl BackfillId {
    pub fn new() -> BackfillId {
        BackfillId(ulid::Ulid::new().0)
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

/// One failure of a blocking class (`model::scheduling::BLOCKING_CLASSES`) from a source host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFailure {
    pub at: Timestamp,
    pub class: String,
    pub job: JobId,
}

/// A source host's circuit breaker (`model::scheduling`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Breaker {
    /// Jobs from the host run as usual.
    Closed,
    /// The host's pending jobs are held (not claimed) until `until`; then one probe job runs.
    Open { until: Timestamp, cooldown_ms: u64 },
    /// `probe` tests the host; no other job of the host is claimed until it ends.
    Probing { probe: JobId, cooldown_ms: u64 },
}

/// What narra knows of one source host (`model::sources::source_host`): its breaker, its
/// recent blocking failures and its request-rate clock. Kept in the state store, so it holds
/// across restarts (and, with a shared store, across a fleet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostState {
    pub host: String,
    pub breaker: Breaker,
    /// Blocking failures since the host last answered a job, oldest first; at most
    /// `model::scheduling::HOST_FAILURES_KEPT`.
    pub failures: Vec<HostFailure>,
    /// The earliest time the next job from this host may start (the per-host rate limit).
    pub next_start_at: Timestamp,
    /// How many times the breaker opened: an escalation counter that is never reset.
    pub opened_total: u64,
    /// Jobs sent back to pending because the breaker was open, without spending an attempt.
    pub held_total: u64,
    pub updated_at: Timestamp,
}

impl HostState {
    pub fn new(host: &str, now: Timestamp) -> HostState {
        HostState {
            host: host.to_string(),
            breaker: Breaker::Closed,
            failures: Vec::new(),
            next_start_at: Timestamp(0),
            opened_total: 0,
            held_total: 0,
            updated_at: now,
        }
    }
}

// Records of state growth: compacted event histories and pruned jobs. New
// records go last, and nothing above changes for them.

/// What a job keeps of the events compaction folded away (the store's `event_summaries` tree):
/// the counts people read (`show`), the status and phase the history had reached, and the state of
/// `narra audit`'s fold after the last folded event, so that an audit of the summary and the events
/// still held gives the answer the whole history gave. `model::history::fold` is the one function
/// that builds it, for compaction and for `audit` alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventSummary {
    /// The job whose history this is.
    pub job_id: JobId,
    /// How many events were folded in: the job's events `0..events_compacted`.
    pub events_compacted: u64,
    /// When the oldest folded event happened.
    pub first_at: Timestamp,
    /// When the newest folded event happened.
    pub last_at: Timestamp,
    /// How many folded events of each kind (`EventKind::name`), in first-seen order.
    pub kinds: Vec<(String, u64)>,
    /// Per step, in first-seen order.
    pub steps: Vec<StepSummary>,
    /// The status and the phase after the last folded event: a replay of the history starts here.
    pub status: Option<Status>,
    /// The phase after the last folded event; `None` when the job was not running then.
    pub phase: Option<Phase>,
    /// What `audit` reads beyond the counts.
    pub audit: AuditState,
}

/// How one step went over the folded events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepSummary {
    /// The step's name in the workflow.
    pub step: String,
    /// `step_started` events: how many times the step executed.
    pub executed: u64,
    /// `step_completed` events.
    pub completed: u64,
    /// `step_skipped` events: runs skipped because the checkpoint verified.
    pub skipped: u64,
    /// `step_failed` events.
    pub failed: u64,
    /// `step_redone` events.
    pub redone: u64,
    /// Each object key a run of this step wrote (`objects_written`), with how many times.
    pub objects_written: Vec<(String, u64)>,
}

/// The part of `narra audit`'s fold over a history that is not a count (see `engine::audit`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditState {
    /// The history holds a `step_completed`, and an audit event (`checkpoint_recorded` or
    /// `objects_written`): a history with the first and not the second predates recorded causes.
    pub saw_step_completed: bool,
    pub saw_audit_events: bool,
    /// The steps the history says have a checkpoint: completed, and not discarded since.
    pub checkpointed: Vec<String>,
    /// The run (from one claim to the next) the last folded event belongs to.
    pub run: RunState,
    /// The first outputs recorded for each step definition and input.
    pub recorded: Vec<RecordedOutputs>,
    /// Every write of a content-addressed blob, oldest first; beyond a bound the oldest are dropped
    /// and counted.
    pub blob_writes: Vec<BlobWriteRecord>,
    pub blob_writes_dropped: u64,
    /// The findings the history alone supports, oldest first; beyond a bound the newest are
    /// counted, not kept.
    pub findings: Vec<HistoryFinding>,
    pub findings_dropped: u64,
}

/// What one run has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    /// Steps started in this run, in order.
    pub started: Vec<String>,
    /// Steps skipped as verified in this run.
    pub skipped: Vec<String>,
    /// Step -> the cause of its `step_redone`, until the step starts.
    pub redo_pending: Vec<(String, String)>,
    /// A step of this run failed verification (`output_missing`, `output_changed`).
    pub verification_failed: bool,
}

/// The outputs a step first recorded for one definition and one input (`checkpoint_recorded`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedOutputs {
    pub step: String,
    pub definition_hash: Hash,
    pub input_hash: Hash,
    /// The event that recorded them.
    pub seq: u64,
    /// Name and blake3 of each output, sorted.
    pub outputs: Vec<(String, Hash)>,
}

/// One write of a blob (`blobs/...`) by a run of `step`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobWriteRecord {
    /// The `objects_written` event.
    pub seq: u64,
    pub at: Timestamp,
    pub step: String,
    pub key: String,
    /// A step of the same run had failed verification before it: the write may be a repair.
    pub after_verification_failure: bool,
}

/// A finding the event history alone supports, as the fold met it (`engine::audit` words it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryFinding {
    /// The event it is about.
    pub seq: u64,
    pub step: String,
    pub kind: HistoryFindingKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HistoryFindingKind {
    /// The step ran after it was skipped as verified in the same run.
    RerunAfterSkip,
    /// The step had a checkpoint, ran again, and no cause was recorded.
    RerunWithoutCause,
    /// The recorded cause is `earlier_step_ran`, but no step ran before it in that run.
    RerunCauseFalse,
    /// The recorded cause is not one narra writes.
    RerunUnknownCause { cause: String },
    /// The step recorded other outputs for a definition and input it had recorded before.
    OutputsDiffer {
        first_seq: u64,
        first: Vec<(String, Hash)>,
        outputs: Vec<(String, Hash)>,
    },
}

/// What is left of a job `narra prune` removed (the store's `pruned` tree): what it was, and the
/// blobs its store checkpoint named. Those blobs' `blob_refs` entries stay under the job's id, so
/// `cleanup` still counts them as referenced; its manifest stays in storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrunedJob {
    /// The pruned job's id: `show` and `GET /jobs/{id}` answer it as pruned.
    pub id: JobId,
    /// Its idempotency key: a submission of it again makes a new job.
    pub key: String,
    /// The workflow it ran.
    pub workflow: String,
    /// Its finished status when pruned.
    pub status: Status,
    /// When it was submitted.
    pub created_at: Timestamp,
    /// When its record last changed before the prune.
    pub updated_at: Timestamp,
    /// When it was pruned.
    pub pruned_at: Timestamp,
    /// The `blobs/` objects its store checkpoint named.
    pub blobs: Vec<String>,
    /// Its manifest's key, when it had stored one.
    pub manifest: Option<String>,
}

/// A job's completion webhook (`callback_url`) and what was sent to it: the store's `webhooks`
/// tree (table), one record per job, kept apart from the job record so the job's codec does not
/// change. A notice is queued by the store in the same transaction that moves the job to a
/// terminal status (`webhook::` sends it), so no terminal transition loses its notice in a crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    pub job_id: JobId,
    /// An http(s) URL, checked by the network guard at submission and again at connect time.
    pub url: String,
    /// The notice waiting to be delivered (or retried), if any.
    pub pending: Option<Notice>,
    /// Every delivery attempt, oldest first; at most `store::DELIVERIES_MAX` (the oldest go).
    pub deliveries: Vec<Delivery>,
}

/// A delivery's identity: a ULID, the same on every retry of one notice, so a receiver can drop
/// the duplicates at-least-once delivery may bring (`X-Narra-Delivery`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeliveryId(pub u128);

impl DeliveryId {
    pub fn new() -> DeliveryId {
        DeliveryId(ulid::Ulid::new().0)
    }
}

impl Default for DeliveryId {
    fn default() -> Self {
        DeliveryId::new()
    }
}

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", ulid::Ulid(self.0))
    }
}

/// One terminal transition to tell the webhook about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    pub delivery_id: DeliveryId,
    /// The terminal status the job reached (succeeded, failed or cancelled).
    pub status: Status,
    /// The job's error at that transition (a failed job's class and message).
    pub error: Option<ErrorInfo>,
    pub finished_at: Timestamp,
    /// Attempts made so far.
    pub attempts: u32,
    /// Not sent before this: a retry's backoff, or a claim by a notifier that is sending it now.
    pub next_attempt_at: Timestamp,
}

/// One attempt to deliver a notice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub delivery_id: DeliveryId,
    /// The status the notice was for.
    pub status: Status,
    /// 1 for the first attempt of a notice.
    pub attempt: u32,
    pub at: Timestamp,
    /// The receiver's HTTP status, when it answered.
    pub status_code: Option<u16>,
    /// Why the attempt failed (no answer, a non-2xx status, a refused address).
    pub error: Option<String>,
    /// A 2xx answer: the notice is delivered.
    pub ok: bool,
    /// The last attempt of a notice that was never delivered (`attempts_max` reached).
    pub gave_up: bool,
}

#[cfg(test)]
mod id_tests {
    use super::{BackfillId, JobId};

    // Guards "newest first": ids made back to back (same millisecond) still sort in creation order.
    #[test]
    fn ids_made_in_a_row_sort_in_creation_order() {
        let ids: Vec<JobId> = (0..1_000).map(|_| JobId::new()).collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
    }

    // Guards the two ids' shared impls: each round-trips its text and bytes and names itself
    // when a text is no id.
    #[test]
    fn each_id_round_trips_and_names_itself_in_its_error() {
        let job = JobId::new();
        assert_eq!(job.to_string().parse::<JobId>().unwrap(), job);
        assert_eq!(JobId::from_bytes(job.to_bytes()), job);
        let backfill = BackfillId::new();
        assert_eq!(
            format!(" {backfill} ").parse::<BackfillId>().unwrap(),
            backfill
        );
        assert_eq!(BackfillId::from_bytes(backfill.to_bytes()), backfill);
        assert_eq!(
            "nope".parse::<JobId>().unwrap_err().to_string(),
            "invalid job id \"nope\": a job id is a 26-character ULID"
        );
        assert_eq!(
            "nope".parse::<BackfillId>().unwrap_err().to_string(),
            "invalid backfill id \"nope\": a backfill id is a 26-character ULID"
        );
    }
}
