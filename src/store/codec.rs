//! The record codec: the one place that turns stored structs into bytes and back.
//!
//! Every value the state store persists (jobs, checkpoints, events, metadata records, log lines)
//! goes through [`encode`] and [`decode`]: one schema-version byte, then the record in bincode's
//! standard configuration, through `crate::wire`, the one module that calls bincode.
//!
//! bincode writes fields in declaration order with no names, so the bytes on disk ARE the struct
//! definitions in `model::job`. Changing any stored struct or enum (adding, removing, reordering or
//! retyping a field or a variant) requires bumping [`SCHEMA_VERSION`] and writing a migration for
//! the records already on disk. The golden-bytes tests below fail on any such change, which is
//! their purpose: when one fails, do not just paste the new bytes in; bump the version and migrate.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::StoreError;
use crate::model::job::{Backfill, EventSummary, Incident, Job, PrunedJob};

/// The version of the record layout this narra writes.
///
/// - 1: the first layout.
/// - 2: `Job` gained `priority`, `not_before` and `crashes` (at the end). No other record changed,
///   so every other record type reads the same under 1 and 2; a version-1 job is read by
///   [`decode_job`] through [`legacy::JobV1`], and `SledStore::open` rewrites old stores once.
/// - 3: `Job` gained `attribution` (at the end: `model::attribution`'s suspect mark, whether the
///   run is alone, a provisional takeover). Again no other record changed; a version-2 job is
///   read through [`legacy::JobV2`].
pub const SCHEMA_VERSION: u8 = 3;

/// The oldest version this narra still reads.
pub const SCHEMA_VERSION_MIN: u8 = 1;

/// Encodes a record as `[SCHEMA_VERSION] ++ bincode(value)`.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    let body = crate::wire::to_bytes(value).map_err(StoreError::Encode)?;
    let mut bytes = Vec::with_capacity(body.len() + 1);
    bytes.push(SCHEMA_VERSION);
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

/// Decodes a record read from `tree` at `key`. A record must be exactly one value: an empty
/// record, bytes that do not decode, and bytes left over after the value are all corruption.
pub fn decode<T: DeserializeOwned>(
    tree: &'static str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StoreError> {
    let corrupt = |reason: String| StoreError::corrupt(tree, key, reason);
    let Some((&version, body)) = bytes.split_first() else {
        return Err(corrupt("empty record".to_string()));
    };
    if !(SCHEMA_VERSION_MIN..=SCHEMA_VERSION).contains(&version) {
        return Err(StoreError::UnsupportedSchema {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    decode_body(body).map_err(corrupt)
}

/// Decodes exactly one value from `body` (no schema byte).
fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let (value, bytes_read) = crate::wire::from_bytes_prefix::<T>(body)
        .map_err(|error| format!("cannot decode record: {error}"))?;
    if bytes_read != body.len() {
        return Err(format!(
            "{} trailing bytes after a {}-byte record",
            body.len() - bytes_read,
            bytes_read
        ));
    }
    Ok(value)
}

/// A record kept under a key made of its own identity (its job's id, its seq, its backfill's id),
/// checked against that key right after it is read back, in every store.
pub(crate) trait Keyed: DeserializeOwned {
    /// The key the record belongs under.
    fn key(&self) -> Vec<u8>;
    /// What a record found under another key holds, for the corruption it is.
    fn holds(&self) -> String;
}

/// A [`Keyed`] record whose key is its field `$field` as `$bytes` gives it, and which names itself
/// as `$holds` followed by that field.
macro_rules! keyed_by {
    ($record:ty, $field:ident, $bytes:ident, $holds:literal) => {
        impl Keyed for $record {
            fn key(&self) -> Vec<u8> {
                self.$field.$bytes().to_vec()
            }
            fn holds(&self) -> String {
                format!(concat!("record holds ", $holds, " {}"), self.$field)
            }
        }
    };
}

keyed_by!(EventSummary, job_id, to_bytes, "the summary of job");
keyed_by!(PrunedJob, id, to_bytes, "pruned job");
keyed_by!(Incident, seq, to_be_bytes, "incident seq");
keyed_by!(Backfill, id, to_bytes, "backfill");

/// Decodes a [`Keyed`] record of `tree` found under `key`, and checks it belongs there.
pub(crate) fn decode_keyed<T: Keyed>(
    tree: &'static str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StoreError> {
    let record: T = decode(tree, key, bytes)?;
    if record.key() != key {
        return Err(StoreError::corrupt(tree, key, record.holds()));
    }
    Ok(record)
}

/// Decodes a job record of any version this narra reads: an older job gets the defaults of the
/// fields later versions added (version 2: the live priority, no retry delay, no crash record;
/// version 3: no attribution).
pub fn decode_job(tree: &'static str, key: &[u8], bytes: &[u8]) -> Result<Job, StoreError> {
    let corrupt = |reason: String| StoreError::corrupt(tree, key, reason);
    match bytes.first() {
        Some(1) => Ok(decode_body::<legacy::JobV1>(&bytes[1..])
            .map_err(corrupt)?
            .into()),
        Some(2) => Ok(legacy::job_v2(
            decode_body::<legacy::JobV2>(&bytes[1..]).map_err(corrupt)?,
        )),
        _ => decode(tree, key, bytes),
    }
}

/// Record layouts of earlier schema versions, read once and converted.
pub mod legacy {
    use serde::Deserialize;

    use crate::model::job::{
        Attribution, CrashRecord, ErrorInfo, Job, JobId, Lease, PRIORITY_LIVE, Phase, Status,
        Timestamp,
    };

    /// `Job` as schema version 1 stored it.
    #[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
    pub struct JobV1 {
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
        pub fencing_token: u64,
        pub cancel_requested: bool,
        pub events_next: u64,
    }

    impl From<JobV1> for Job {
        fn from(old: JobV1) -> Job {
            Job {
                id: old.id,
                key: old.key,
                source: old.source,
                workflow: old.workflow,
                status: old.status,
                ingestion_phase: old.ingestion_phase,
                attempts: old.attempts,
                error: old.error,
                created_at: old.created_at,
                updated_at: old.updated_at,
                lease: old.lease,
                fencing_token: old.fencing_token,
                cancel_requested: old.cancel_requested,
                events_next: old.events_next,
                priority: PRIORITY_LIVE,
                not_before: None,
                crashes: None,
                attribution: Attribution::default(),
            }
        }
    }

    /// `Job` as schema version 2 stored it: version 1's fields, then `priority`, `not_before`
    /// and `crashes` (bincode writes a tuple's elements as it writes a struct's fields).
    pub type JobV2 = (JobV1, i32, Option<Timestamp>, Option<CrashRecord>);

    /// A version-2 job with no attribution.
    pub fn job_v2((old, priority, not_before, crashes): JobV2) -> Job {
        Job {
            priority,
            not_before,
            crashes,
            ..old.into()
        }
    }
}

/// Lower-case hex, for naming keys in corruption reports.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

/// Proptest strategies for the stored records. Field values are arbitrary, not necessarily valid
/// jobs: the codec must round-trip anything the types can hold.
#[cfg(test)]
pub(crate) mod strategies {
    use proptest::prelude::*;

    use crate::model::job::{
        Attribution, AudioSelection, ChangeToken, Checkpoint, CrashRecord, ErrorInfo, Event,
        EventKind, Hash, Job, JobId, Lease, Location, Phase, ProgressMarker, Status, StepOutput,
        Takeover, Timestamp, WorkerId,
    };

    pub fn job_id() -> impl Strategy<Value = JobId> {
        any::<u128>().prop_map(JobId)
    }

    pub fn timestamp() -> impl Strategy<Value = Timestamp> {
        any::<i64>().prop_map(Timestamp)
    }

    pub fn status() -> impl Strategy<Value = Status> {
        proptest::sample::select(Status::ALL.to_vec())
    }

    pub fn phase() -> impl Strategy<Value = Phase> {
        prop_oneof![
            Just(Phase::Downloading),
            Just(Phase::Processing),
            Just(Phase::Storing),
        ]
    }

    pub fn hash() -> impl Strategy<Value = Hash> {
        any::<[u8; 32]>().prop_map(Hash)
    }

    pub fn error_info() -> impl Strategy<Value = ErrorInfo> {
        (any::<String>(), any::<String>()).prop_map(|(class, message)| ErrorInfo { class, message })
    }

    pub fn lease() -> impl Strategy<Value = Lease> {
        (any::<String>(), any::<u64>(), timestamp()).prop_map(
            |(worker_id, fencing_token, expires_at)| Lease {
                worker_id: WorkerId(worker_id),
                fencing_token,
                expires_at,
            },
        )
    }

    prop_compose! {
        pub fn job()(
            id in job_id(),
            key in any::<String>(),
            source in any::<String>(),
            workflow in any::<String>(),
            status in status(),
            ingestion_phase in proptest::option::of(phase()),
            attempts in any::<u32>(),
            error in proptest::option::of(error_info()),
            created_at in timestamp(),
            updated_at in timestamp(),
            lease in proptest::option::of(lease()),
            fencing_token in any::<u64>(),
            cancel_requested in any::<bool>(),
            events_next in any::<u64>(),
            priority in any::<i32>(),
            not_before in proptest::option::of(timestamp()),
            crashes in proptest::option::of(crash_record()),
            attribution in attribution(),
        ) -> Job {
            Job {
                id,
                key,
                source,
                workflow,
                status,
                ingestion_phase,
                attempts,
                error,
                created_at,
                updated_at,
                lease,
                fencing_token,
                cancel_requested,
                events_next,
                priority,
                not_before,
                crashes,
                attribution,
            }
        }
    }

    pub fn attribution() -> impl Strategy<Value = Attribution> {
        let takeover = (any::<String>(), any::<u64>(), timestamp(), crash_record()).prop_map(
            |(worker_id, fencing_token, at, record)| Takeover {
                worker_id: WorkerId(worker_id),
                fencing_token,
                at,
                marker: record.marker,
            },
        );
        (any::<bool>(), any::<bool>(), proptest::option::of(takeover)).prop_map(
            |(suspect, alone, takeover)| Attribution {
                suspect,
                alone,
                takeover,
            },
        )
    }

    pub fn crash_record() -> impl Strategy<Value = CrashRecord> {
        (
            proptest::option::of(phase()),
            any::<u32>(),
            any::<u64>(),
            any::<u32>(),
        )
            .prop_map(|(phase, checkpoints, bytes_done, count)| CrashRecord {
                marker: ProgressMarker {
                    phase,
                    checkpoints,
                    bytes_done,
                },
                count,
            })
    }

    pub fn location() -> impl Strategy<Value = Location> {
        prop_oneof![
            any::<String>().prop_map(Location::Scratch),
            any::<String>().prop_map(Location::Object),
            Just(Location::State),
        ]
    }

    pub fn change_token() -> impl Strategy<Value = ChangeToken> {
        prop_oneof![
            (any::<u64>(), any::<u64>(), any::<i64>()).prop_map(|(inode, size, mtime_ns)| {
                ChangeToken::File {
                    inode,
                    size,
                    mtime_ns,
                }
            }),
            any::<String>().prop_map(ChangeToken::ETag),
            Just(ChangeToken::None),
        ]
    }

    pub fn step_output() -> impl Strategy<Value = StepOutput> {
        (
            any::<String>(),
            location(),
            any::<u64>(),
            hash(),
            change_token(),
        )
            .prop_map(|(name, location, size, blake3, change_token)| StepOutput {
                name,
                location,
                size,
                blake3,
                change_token,
            })
    }

    pub fn checkpoint() -> impl Strategy<Value = Checkpoint> {
        (
            any::<String>(),
            hash(),
            hash(),
            proptest::collection::vec(step_output(), 0..4),
            timestamp(),
        )
            .prop_map(
                |(step, definition_hash, input_hash, outputs, recorded_at)| Checkpoint {
                    step,
                    definition_hash,
                    input_hash,
                    outputs,
                    recorded_at,
                },
            )
    }

    pub fn event_kind() -> impl Strategy<Value = EventKind> {
        prop_oneof![
            (any::<String>(), any::<String>())
                .prop_map(|(source, workflow)| EventKind::Submitted { source, workflow }),
            (proptest::option::of(status()), status(), any::<String>())
                .prop_map(|(from, to, reason)| EventKind::StatusChanged { from, to, reason }),
            (proptest::option::of(phase()), proptest::option::of(phase()))
                .prop_map(|(from, to)| EventKind::PhaseChanged { from, to }),
            any::<String>().prop_map(|step| EventKind::StepStarted { step }),
            (any::<String>(), any::<u32>())
                .prop_map(|(step, outputs)| EventKind::StepCompleted { step, outputs }),
            (any::<String>(), any::<String>())
                .prop_map(|(step, reason)| EventKind::StepSkipped { step, reason }),
            (any::<String>(), error_info())
                .prop_map(|(step, error)| EventKind::StepFailed { step, error }),
            any::<String>().prop_map(|reason| EventKind::RetryRequested { reason }),
            Just(EventKind::CancelRequested),
            (
                any::<u32>(),
                any::<String>(),
                proptest::option::of(any::<String>()),
                any::<String>(),
                any::<String>(),
                any::<String>()
            )
                .prop_map(
                    |(stream_index, codec, language, output, container, reason)| {
                        EventKind::AudioSelected(AudioSelection {
                            stream_index,
                            codec,
                            language,
                            output,
                            container,
                            reason,
                        })
                    }
                ),
            proptest::collection::vec(any::<String>(), 0..4)
                .prop_map(|changes| EventKind::Reprobed { changes }),
            (any::<String>(), any::<String>(), any::<String>()).prop_map(
                |(step, cause, reason)| EventKind::StepRedone {
                    step,
                    cause,
                    reason
                }
            ),
            (
                any::<String>(),
                proptest::collection::vec(any::<String>(), 0..4)
            )
                .prop_map(|(step, keys)| EventKind::ObjectsWritten { step, keys }),
            (
                any::<String>(),
                hash(),
                hash(),
                proptest::collection::vec((any::<String>(), hash()), 0..4)
            )
                .prop_map(|(step, definition_hash, input_hash, outputs)| {
                    EventKind::CheckpointRecorded {
                        step,
                        definition_hash,
                        input_hash,
                        outputs,
                    }
                }),
        ]
    }

    pub fn incident() -> impl Strategy<Value = crate::model::job::Incident> {
        (
            any::<u64>(),
            timestamp(),
            any::<String>(),
            any::<String>(),
            proptest::option::of(job_id()),
            proptest::option::of(any::<String>()),
            any::<String>(),
        )
            .prop_map(|(seq, at, actor, action, job, key, reason)| {
                crate::model::job::Incident {
                    seq,
                    at,
                    actor,
                    action,
                    job,
                    key,
                    reason,
                }
            })
    }

    pub fn event() -> impl Strategy<Value = Event> {
        (any::<u64>(), timestamp(), event_kind()).prop_map(|(seq, at, kind)| Event {
            seq,
            at,
            kind,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::model::job::{
        Attribution, AudioSelection, ChangeToken, Checkpoint, CrashRecord, ErrorInfo, Event,
        EventKind, Hash, Job, JobId, Lease, Location, MediaMetadata, Phase, ProgressMarker, Status,
        StepOutput, StreamInfo, Takeover, Timestamp, WorkerId,
    };

    fn golden_job() -> Job {
        Job {
            id: JobId(0x0190_0000_0000_0000_0000_0000_0000_002a),
            key: "https://example.com/a.mp4".to_string(),
            source: "https://example.com/a.mp4".to_string(),
            workflow: "ingest".to_string(),
            status: Status::Running,
            ingestion_phase: Some(Phase::Processing),
            attempts: 3,
            error: Some(ErrorInfo {
                class: "download_blocked".to_string(),
                message: "403 Forbidden".to_string(),
            }),
            created_at: Timestamp(1_700_000_000_000),
            updated_at: Timestamp(1_700_000_123_456),
            lease: Some(Lease {
                worker_id: WorkerId("host:42:1".to_string()),
                fencing_token: 7,
                expires_at: Timestamp(1_700_000_153_456),
            }),
            fencing_token: 7,
            cancel_requested: true,
            events_next: 300,
            priority: -5,
            not_before: Some(Timestamp(1_700_000_200_000)),
            crashes: Some(CrashRecord {
                marker: ProgressMarker {
                    phase: Some(Phase::Processing),
                    checkpoints: 1,
                    bytes_done: 65_536,
                },
                count: 2,
            }),
            attribution: Attribution {
                suspect: true,
                alone: false,
                takeover: Some(Takeover {
                    worker_id: WorkerId("host:41:1".to_string()),
                    fencing_token: 6,
                    at: Timestamp(1_700_000_100_000),
                    marker: ProgressMarker {
                        phase: Some(Phase::Downloading),
                        checkpoints: 0,
                        bytes_done: 4_096,
                    },
                }),
            },
        }
    }

    fn golden_checkpoint() -> Checkpoint {
        Checkpoint {
            step: "extract".to_string(),
            definition_hash: Hash([0x11; 32]),
            input_hash: Hash([0xa5; 32]),
            outputs: vec![
                StepOutput {
                    name: "audio".to_string(),
                    location: Location::Scratch("/tmp/narra/job/audio.m4a".to_string()),
                    size: 1_048_576,
                    blake3: Hash([0x01; 32]),
                    change_token: ChangeToken::File {
                        inode: 1234,
                        size: 1_048_576,
                        mtime_ns: -5,
                    },
                },
                StepOutput {
                    name: "stored".to_string(),
                    location: Location::Object("jobs/a/audio.m4a".to_string()),
                    size: 200,
                    blake3: Hash([0x02; 32]),
                    change_token: ChangeToken::ETag("\"abc\"".to_string()),
                },
                StepOutput {
                    name: "metadata".to_string(),
                    location: Location::State,
                    size: 0,
                    blake3: Hash([0x03; 32]),
                    change_token: ChangeToken::None,
                },
            ],
            recorded_at: Timestamp(1_700_000_200_000),
        }
    }

    fn golden_events() -> Vec<Event> {
        vec![
            Event {
                seq: 0,
                at: Timestamp(1_700_000_000_000),
                kind: EventKind::StatusChanged {
                    from: None,
                    to: Status::Pending,
                    reason: "submitted".to_string(),
                },
            },
            Event {
                seq: 5,
                at: Timestamp(1_700_000_000_500),
                kind: EventKind::PhaseChanged {
                    from: Some(Phase::Downloading),
                    to: None,
                },
            },
            Event {
                seq: 9,
                at: Timestamp(1_700_000_001_000),
                kind: EventKind::StepFailed {
                    step: "download".to_string(),
                    error: ErrorInfo {
                        class: "corrupt_media".to_string(),
                        message: "moov atom not found".to_string(),
                    },
                },
            },
        ]
    }

    /// Also the metadata record the conformance suite writes: any record must read back as written.
    pub(crate) fn golden_metadata() -> MediaMetadata {
        MediaMetadata {
            format_name: "mov,mp4,m4a".to_string(),
            duration_s: Some(12.5),
            size: Some(1_048_576),
            bit_rate: None,
            streams: vec![StreamInfo {
                index: 0,
                codec_type: "audio".to_string(),
                codec_name: Some("aac".to_string()),
                width: None,
                height: None,
                sample_rate: Some(48_000),
                channels: Some(2),
                duration_s: Some(12.5),
            }],
            raw: "{}".to_string(),
        }
    }

    fn from_hex(hex: &str) -> Vec<u8> {
        assert!(hex.len().is_multiple_of(2), "odd-length hex literal");
        (0..hex.len())
            .step_by(2)
            .map(|index| u8::from_str_radix(&hex[index..index + 2], 16).expect("hex literal"))
            .collect()
    }

    /// Compares an encoding with its golden bytes and decodes the golden bytes back.
    fn assert_golden<T>(value: &T, golden_hex: &str)
    where
        T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        // The golden bytes carry the version the layout was last changed in; the body must be
        // the same under every later version, and the bytes as first written must still decode.
        let bytes = encode(value).expect("encode");
        assert_eq!(bytes[0], SCHEMA_VERSION);
        assert_eq!(
            hex(&bytes[1..]),
            golden_hex[2..],
            "the encoding of a stored record changed: bump SCHEMA_VERSION and migrate, do not just \
             update the golden bytes"
        );
        let decoded: T = decode("test", b"key", &from_hex(golden_hex)).expect("decode golden");
        assert_eq!(&decoded, value);
        let decoded: T = decode("test", b"key", &bytes).expect("decode current");
        assert_eq!(&decoded, value);
    }

    #[test]
    fn job_golden_bytes() {
        assert_golden(&golden_job(), GOLDEN_JOB);
        assert_eq!(
            decode_job("jobs", b"key", &from_hex(GOLDEN_JOB)).expect("decode_job"),
            golden_job()
        );
    }

    // Guards the version-1 migration: a job written by schema version 1 still reads, with the
    // defaults of the fields version 2 added, and the generic decoder does not misread it.
    #[test]
    fn version_1_jobs_read_with_the_new_fields_defaulted() {
        let old = decode_job("jobs", b"key", &from_hex(GOLDEN_JOB_V1)).expect("decode v1 job");
        let mut expected = golden_job();
        expected.priority = crate::model::job::PRIORITY_LIVE;
        expected.not_before = None;
        expected.crashes = None;
        expected.attribution = Attribution::default();
        assert_eq!(old, expected);
        assert!(decode::<Job>("jobs", b"key", &from_hex(GOLDEN_JOB_V1)).is_err());
    }

    // Guards the version-2 migration: a job written by schema version 2 (the bytes version 2 wrote,
    // unchanged) still reads, with no attribution, and the generic decoder does not misread it.
    #[test]
    fn version_2_jobs_read_with_no_attribution() {
        let old = decode_job("jobs", b"key", &from_hex(GOLDEN_JOB_V2)).expect("decode v2 job");
        let mut expected = golden_job();
        expected.attribution = Attribution::default();
        assert_eq!(old, expected);
        assert!(decode::<Job>("jobs", b"key", &from_hex(GOLDEN_JOB_V2)).is_err());
    }

    // Guards the layout rule of version 3: a job's bytes are its version-2 bytes with the
    // attribution appended, nothing before it moved.
    #[test]
    fn version_3_appends_the_attribution_to_the_version_2_layout() {
        assert!(GOLDEN_JOB[2..].starts_with(&GOLDEN_JOB_V2[2..]));
    }

    fn golden_maintenance_events() -> Vec<Event> {
        vec![
            Event {
                seq: 12,
                at: Timestamp(1_700_000_002_000),
                kind: EventKind::StepRedone {
                    step: "store".to_string(),
                    cause: "output_missing".to_string(),
                    reason: "output video is missing".to_string(),
                },
            },
            Event {
                seq: 14,
                at: Timestamp(1_700_000_003_000),
                kind: EventKind::ObjectsWritten {
                    step: "store".to_string(),
                    keys: vec![
                        "blobs/ab/ab.mp4".to_string(),
                        "jobs/x/manifest.json".to_string(),
                    ],
                },
            },
            Event {
                seq: 15,
                at: Timestamp(1_700_000_003_500),
                kind: EventKind::CheckpointRecorded {
                    step: "extract".to_string(),
                    definition_hash: Hash([0x11; 32]),
                    input_hash: Hash([0xa5; 32]),
                    outputs: vec![("audio".to_string(), Hash([0x01; 32]))],
                },
            },
        ]
    }

    /// The extract step's audio choice, with and without a language, as the worker records it.
    fn golden_audio_events() -> Vec<Event> {
        vec![
            Event {
                seq: 7,
                at: Timestamp(1_700_000_000_700),
                kind: EventKind::AudioSelected(AudioSelection {
                    stream_index: 1,
                    codec: "aac".to_string(),
                    language: Some("eng".to_string()),
                    output: "copy".to_string(),
                    container: "m4a".to_string(),
                    reason: "the first audio stream; the codec fits the container".to_string(),
                }),
            },
            Event {
                seq: 8,
                at: Timestamp(1_700_000_000_800),
                kind: EventKind::AudioSelected(AudioSelection {
                    stream_index: 3,
                    codec: "pcm_s24le".to_string(),
                    language: None,
                    output: "flac".to_string(),
                    container: "flac".to_string(),
                    reason: "the only audio stream; transcoded, the codec has no container"
                        .to_string(),
                }),
            },
        ]
    }

    // Guards the export format of the audio choice: an export file holds events as JSON, and a
    // file an earlier narra wrote must still import.
    #[test]
    fn audio_event_golden_json() {
        let events = golden_audio_events();
        for (event, json) in events.iter().zip(GOLDEN_AUDIO_EVENTS_JSON) {
            assert_eq!(serde_json::to_string(&event.kind).expect("serialize"), json);
            let read: EventKind = serde_json::from_str(json).expect("deserialize");
            assert_eq!(read, event.kind);
        }
        assert_eq!(events.len(), GOLDEN_AUDIO_EVENTS_JSON.len());
    }

    fn golden_incident() -> crate::model::job::Incident {
        crate::model::job::Incident {
            seq: 3,
            at: Timestamp(1_700_000_004_000),
            actor: "ops".to_string(),
            action: "deleted_object".to_string(),
            job: Some(JobId(0x0190_0000_0000_0000_0000_0000_0000_002a)),
            key: Some("blobs/ab/ab.mp4".to_string()),
            reason: "corrupt: blake3 mismatch".to_string(),
        }
    }

    fn golden_backfill() -> crate::model::job::Backfill {
        crate::model::job::Backfill {
            id: crate::model::job::BackfillId(0x0190_0000_0000_0000_0000_0000_0000_0007),
            manifest: "/srv/manifests/talks.csv".to_string(),
            created_at: Timestamp(1_700_000_005_000),
        }
    }

    /// [`assert_golden`] for records whose golden bytes are written without the version byte:
    /// the expected encoding is `[SCHEMA_VERSION] ++ body`, so a schema bump leaves them alone.
    fn assert_golden_body<T>(value: &T, body_hex: &str)
    where
        T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        assert_golden(value, &format!("{}{body_hex}", hex(&[SCHEMA_VERSION])));
    }

    /// [`assert_golden`] for each of `values`, one golden encoding each.
    fn assert_golden_each<T>(values: &[T], golden_hexes: &[&str])
    where
        T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        for (value, golden_hex) in values.iter().zip(golden_hexes) {
            assert_golden(value, golden_hex);
        }
        assert_eq!(values.len(), golden_hexes.len());
    }

    /// One test a record type (the job's is above, with its migrations): its golden value's
    /// encoding against its golden bytes.
    macro_rules! golden_bytes_tests {
        ($($test:ident => $check:expr;)+) => {
            $(
                #[test]
                fn $test() {
                    $check;
                }
            )+
        };
    }

    golden_bytes_tests! {
        checkpoint_golden_bytes => assert_golden(&golden_checkpoint(), GOLDEN_CHECKPOINT);
        event_golden_bytes => assert_golden_each(&golden_events(), &GOLDEN_EVENTS);
        maintenance_event_golden_bytes =>
            assert_golden_each(&golden_maintenance_events(), &GOLDEN_MAINTENANCE_EVENTS);
        audio_event_golden_bytes => assert_golden_each(&golden_audio_events(), &GOLDEN_AUDIO_EVENTS);
        incident_golden_bytes => assert_golden(&golden_incident(), GOLDEN_INCIDENT);
        backfill_golden_bytes => assert_golden(&golden_backfill(), GOLDEN_BACKFILL);
        metadata_golden_bytes => assert_golden(&golden_metadata(), GOLDEN_METADATA);
        event_summary_golden_bytes =>
            assert_golden_body(&golden_event_summary(), GOLDEN_EVENT_SUMMARY_BODY);
        pruned_job_golden_bytes => assert_golden_body(&golden_pruned_job(), GOLDEN_PRUNED_JOB_BODY);
    }

    fn golden_event_summary() -> crate::model::job::EventSummary {
        use crate::model::job::{
            AuditState, BlobWriteRecord, EventSummary, HistoryFinding, HistoryFindingKind,
            RecordedOutputs, RunState, StepSummary,
        };
        EventSummary {
            job_id: JobId(0x0190_0000_0000_0000_0000_0000_0000_002a),
            events_compacted: 750,
            first_at: Timestamp(1_700_000_000_000),
            last_at: Timestamp(1_700_000_900_000),
            kinds: vec![
                ("step_started".to_string(), 3),
                ("status_changed".to_string(), 2),
            ],
            steps: vec![StepSummary {
                step: "store".to_string(),
                executed: 3,
                completed: 2,
                skipped: 1,
                failed: 1,
                redone: 1,
                objects_written: vec![("blobs/ab/ab.mp4".to_string(), 2)],
            }],
            status: Some(Status::Succeeded),
            phase: Some(Phase::Storing),
            audit: AuditState {
                saw_step_completed: true,
                saw_audit_events: true,
                checkpointed: vec!["download".to_string()],
                run: RunState {
                    started: vec!["download".to_string()],
                    skipped: vec!["extract".to_string()],
                    redo_pending: vec![("store".to_string(), "output_missing".to_string())],
                    verification_failed: true,
                },
                recorded: vec![RecordedOutputs {
                    step: "extract".to_string(),
                    definition_hash: Hash([0x11; 32]),
                    input_hash: Hash([0xa5; 32]),
                    seq: 9,
                    outputs: vec![("audio".to_string(), Hash([0x01; 32]))],
                }],
                blob_writes: vec![BlobWriteRecord {
                    seq: 14,
                    at: Timestamp(1_700_000_003_000),
                    step: "store".to_string(),
                    key: "blobs/ab/ab.mp4".to_string(),
                    after_verification_failure: false,
                }],
                blob_writes_dropped: 1,
                findings: vec![
                    HistoryFinding {
                        seq: 20,
                        step: "download".to_string(),
                        kind: HistoryFindingKind::RerunAfterSkip,
                    },
                    HistoryFinding {
                        seq: 21,
                        step: "download".to_string(),
                        kind: HistoryFindingKind::RerunWithoutCause,
                    },
                    HistoryFinding {
                        seq: 22,
                        step: "extract".to_string(),
                        kind: HistoryFindingKind::RerunCauseFalse,
                    },
                    HistoryFinding {
                        seq: 23,
                        step: "extract".to_string(),
                        kind: HistoryFindingKind::RerunUnknownCause {
                            cause: "x".to_string(),
                        },
                    },
                    HistoryFinding {
                        seq: 24,
                        step: "extract".to_string(),
                        kind: HistoryFindingKind::OutputsDiffer {
                            first_seq: 9,
                            first: vec![("audio".to_string(), Hash([0x01; 32]))],
                            outputs: vec![("audio".to_string(), Hash([0x02; 32]))],
                        },
                    },
                ],
                findings_dropped: 2,
            },
        }
    }

    fn golden_pruned_job() -> crate::model::job::PrunedJob {
        crate::model::job::PrunedJob {
            id: JobId(0x0190_0000_0000_0000_0000_0000_0000_002a),
            key: "ingest:https://example.com/a.mp4".to_string(),
            workflow: "ingest".to_string(),
            status: Status::Failed,
            created_at: Timestamp(1_700_000_000_000),
            updated_at: Timestamp(1_700_000_123_456),
            pruned_at: Timestamp(1_702_592_123_456),
            blobs: vec!["blobs/ab/ab.mp4".to_string()],
            manifest: Some("jobs/x/manifest.json".to_string()),
        }
    }

    #[test]
    fn another_schema_version_is_unsupported() {
        let mut bytes = encode(&golden_job()).expect("encode");
        bytes[0] = SCHEMA_VERSION + 1;
        match decode::<Job>("jobs", b"k", &bytes) {
            Err(StoreError::UnsupportedSchema { found, supported }) => {
                assert_eq!(found, SCHEMA_VERSION + 1);
                assert_eq!(supported, SCHEMA_VERSION);
            }
            other => panic!("expected UnsupportedSchema, got {other:?}"),
        }
    }

    #[test]
    fn empty_record_is_corrupt() {
        match decode::<Job>("jobs", &[0xab, 0x01], &[]) {
            Err(StoreError::Corrupt { tree, key, reason }) => {
                assert_eq!(tree, "jobs");
                assert_eq!(key, "ab01");
                assert!(reason.contains("empty"), "{reason}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn truncated_record_is_corrupt() {
        let bytes = encode(&golden_checkpoint()).expect("encode");
        for length in 1..bytes.len() {
            match decode::<Checkpoint>("checkpoints", b"\x00\xff", &bytes[..length]) {
                Err(StoreError::Corrupt { tree, key, .. }) => {
                    assert_eq!(tree, "checkpoints");
                    assert_eq!(key, "00ff");
                }
                other => panic!("expected Corrupt for {length} bytes, got {other:?}"),
            }
        }
    }

    #[test]
    fn trailing_bytes_are_corrupt() {
        let mut bytes = encode(&golden_events()[0]).expect("encode");
        bytes.push(0);
        match decode::<Event>("events", b"\x01", &bytes) {
            Err(StoreError::Corrupt { tree, reason, .. }) => {
                assert_eq!(tree, "events");
                assert!(reason.contains("1 trailing bytes"), "{reason}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn hex_is_lower_case_and_padded() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        assert_eq!(hex(&[]), "");
    }

    proptest! {
        #[test]
        fn job_round_trips(job in strategies::job()) {
            let bytes = encode(&job).expect("encode");
            prop_assert_eq!(decode::<Job>("jobs", b"k", &bytes).expect("decode"), job);
        }

        #[test]
        fn checkpoint_round_trips(checkpoint in strategies::checkpoint()) {
            let bytes = encode(&checkpoint).expect("encode");
            prop_assert_eq!(decode::<Checkpoint>("checkpoints", b"k", &bytes).expect("decode"), checkpoint);
        }

        #[test]
        fn incident_round_trips(incident in strategies::incident()) {
            let bytes = encode(&incident).expect("encode");
            prop_assert_eq!(decode::<crate::model::job::Incident>("incidents", b"k", &bytes).expect("decode"), incident);
        }

        #[test]
        fn event_round_trips(event in strategies::event()) {
            let bytes = encode(&event).expect("encode");
            prop_assert_eq!(decode::<Event>("events", b"k", &bytes).expect("decode"), event);
        }

        // Compaction stores the fold of a history's prefix and resumes the fold from what it reads
        // back (`model::history`'s property test): the summary must come back as it was written.
        #[test]
        fn event_summary_round_trips(events in prop::collection::vec(strategies::event(), 0..60)) {
            let summary = crate::model::history::fold_all(JobId(1), None, &events);
            let bytes = encode(&summary).expect("encode");
            let stored: crate::model::job::EventSummary =
                decode("event_summaries", b"k", &bytes).expect("decode");
            prop_assert_eq!(stored, summary);
        }
    }

    // Golden bytes, produced once by `encode` at SCHEMA_VERSION 1.
    const GOLDEN_JOB_V1: &str = "01fe2a0000000000000000000000000090011968747470733a2f2f6578616d706c652e636f6d2f612e6d70341968747470733a2f2f6578616d706c652e636f6d2f612e6d703406696e67657374010101030110646f776e6c6f61645f626c6f636b65640d34303320466f7262696464656efd00d0ca9f17030000fd8094ce9f170300000109686f73743a34323a3107fde07ecf9f170300000701fb2c01";
    const GOLDEN_JOB_V2: &str = "02fe2a0000000000000000000000000090011968747470733a2f2f6578616d706c652e636f6d2f612e6d70341968747470733a2f2f6578616d706c652e636f6d2f612e6d703406696e67657374010101030110646f776e6c6f61645f626c6f636b65640d34303320466f7262696464656efd00d0ca9f17030000fd8094ce9f170300000109686f73743a34323a3107fde07ecf9f170300000701fb2c010901fd80ead09f1703000001010101fc0000010002";
    const GOLDEN_JOB: &str = "03fe2a0000000000000000000000000090011968747470733a2f2f6578616d706c652e636f6d2f612e6d70341968747470733a2f2f6578616d706c652e636f6d2f612e6d703406696e67657374010101030110646f776e6c6f61645f626c6f636b65640d34303320466f7262696464656efd00d0ca9f17030000fd8094ce9f170300000109686f73743a34323a3107fde07ecf9f170300000701fb2c010901fd80ead09f1703000001010101fc000001000201000109686f73743a34313a3106fd40ddcd9f17030000010000fb0010";
    const GOLDEN_CHECKPOINT: &str = "0107657874726163741111111111111111111111111111111111111111111111111111111111111111a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a50305617564696f00182f746d702f6e617272612f6a6f622f617564696f2e6d3461fc00001000010101010101010101010101010101010101010101010101010101010101010100fbd204fc00001000090673746f72656401106a6f62732f612f617564696f2e6d3461c8020202020202020202020202020202020202020202020202020202020202020201052261626322086d657461646174610200030303030303030303030303030303030303030303030303030303030303030302fd80ead09f17030000";
    const GOLDEN_EVENTS: [&str; 3] = [
        "0100fd00d0ca9f17030000010000097375626d6974746564",
        "0105fde8d3ca9f1703000002010000",
        "0109fdd0d7ca9f170300000608646f776e6c6f61640d636f72727570745f6d65646961136d6f6f762061746f6d206e6f7420666f756e64",
    ];
    const GOLDEN_METADATA: &str = "010b6d6f762c6d70342c6d346101000000000000294001fc0000100000010005617564696f0103616163000001fb80bb0102010000000000002940027b7d";
    // The audit records (`step_redone`, `objects_written`, `checkpoint_recorded`, incidents), at
    // SCHEMA_VERSION 1.
    const GOLDEN_MAINTENANCE_EVENTS: [&str; 3] = [
        "010cfda0dfca9f170300000b0573746f72650e6f75747075745f6d697373696e67176f757470757420766964656f206973206d697373696e67",
        "010efd70e7ca9f170300000c0573746f7265020f626c6f62732f61622f61622e6d7034146a6f62732f782f6d616e69666573742e6a736f6e",
        "010ffd58ebca9f170300000d07657874726163741111111111111111111111111111111111111111111111111111111111111111a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a50105617564696f0101010101010101010101010101010101010101010101010101010101010101",
    ];
    // `audio_selected`, as schema version 1 wrote it.
    const GOLDEN_AUDIO_EVENTS: [&str; 2] = [
        "0107fd78d5ca9f170300000901036161630103656e6704636f7079036d34613474686520666972737420617564696f2073747265616d3b2074686520636f64656320666974732074686520636f6e7461696e6572",
        "0108fd40d6ca9f1703000009030970636d5f7332346c650004666c616304666c61633d746865206f6e6c7920617564696f2073747265616d3b207472616e73636f6465642c2074686520636f64656320686173206e6f20636f6e7461696e6572",
    ];
    // The same events' kinds as an export file holds them (JSON, `engine::transfer`).
    const GOLDEN_AUDIO_EVENTS_JSON: [&str; 2] = [
        r#"{"AudioSelected":{"stream_index":1,"codec":"aac","language":"eng","output":"copy","container":"m4a","reason":"the first audio stream; the codec fits the container"}}"#,
        r#"{"AudioSelected":{"stream_index":3,"codec":"pcm_s24le","language":null,"output":"flac","container":"flac","reason":"the only audio stream; transcoded, the codec has no container"}}"#,
    ];
    const GOLDEN_BACKFILL: &str = "01fe07000000000000000000000000009001182f7372762f6d616e6966657374732f74616c6b732e637376fd10f7ca9f17030000";
    const GOLDEN_INCIDENT: &str = "0103fd40efca9f17030000036f70730e64656c657465645f6f626a65637401fe2a000000000000000000000000009001010f626c6f62732f61622f61622e6d703418636f72727570743a20626c616b6533206d69736d61746368";
    // The state-growth records (event summaries, pruned-job tombstones), without the version byte
    // (see `assert_golden_body`).
    const GOLDEN_EVENT_SUMMARY_BODY: &str = "fe2a000000000000000000000000009001fbee02fd00d0ca9f17030000fd4047e69f17030000020c737465705f73746172746564030e7374617475735f6368616e67656402010573746f72650302010101010f626c6f62732f61622f61622e6d7034020102010201010108646f776e6c6f61640108646f776e6c6f6164010765787472616374010573746f72650e6f75747075745f6d697373696e67010107657874726163741111111111111111111111111111111111111111111111111111111111111111a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5090105617564696f0101010101010101010101010101010101010101010101010101010101010101010efd70e7ca9f170300000573746f72650f626c6f62732f61622f61622e6d70340001051408646f776e6c6f6164001508646f776e6c6f6164011607657874726163740217076578747261637403017818076578747261637404090105617564696f01010101010101010101010101010101010101010101010101010101010101010105617564696f020202020202020202020202020202020202020202020202020202020202020202";
    const GOLDEN_PRUNED_JOB_BODY: &str = "fe2a00000000000000000000000000900120696e676573743a68747470733a2f2f6578616d706c652e636f6d2f612e6d703406696e6765737403fd00d0ca9f17030000fd8094ce9f17030000fd8024ccd418030000010f626c6f62732f61622f61622e6d703401146a6f62732f782f6d616e69666573742e6a736f6e";
}
