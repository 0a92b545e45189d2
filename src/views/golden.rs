//! Golden tests: every JSON shape (and the text beside it) that the CLI, the API and the webhooks
//! show, built from fixed model values and compared with what narra printed before the views had a
//! module of their own. JSON is compared as a parsed value, text to the byte.
//!
//! A change here is a change of a documented output: scripts parse the JSON, people read the text.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Value, json};

use super::{job, to_json};
use crate::model::audit::{Finding, JobAudit, Severity, StepAudit, StepCounts};
use crate::model::backfill::{BackfillSummary, BadLine, ManifestFormat};
use crate::model::cleanup::{
    CleanupOptions, Deletion, DeletionReason, Executed, JobReset, Plan, StaleScratch, Takedown,
};
use crate::model::fixtures;
use crate::model::health::{
    CorruptionHealth, FailingHost, HealthOptions, HealthReport, StorageHealth,
};
use crate::model::job::{
    AudioSelection, Backfill, BackfillId, Breaker, ChangeToken, Checkpoint, CrashRecord, Delivery,
    DeliveryId, ErrorInfo, Event, EventKind, EventSummary, Hash, HostFailure, HostState, Incident,
    Job, JobId, JobProgress, Lease, Location, LogLine, Notice, Phase, ProgressMarker, PrunedJob,
    Status, StepOutput, StepSummary, Timestamp, Webhook, WorkerId,
};
use crate::model::prune::{PruneOptions, PrunePlan, Pruned};
use crate::model::stuck::{StuckJob, StuckReason};
use crate::model::verification::{ArtifactCheck, ArtifactState, JobVerification};

/// 2023-11-14T22:13:20Z, and then some milliseconds.
fn at(ms: i64) -> Timestamp {
    Timestamp(1_700_000_000_000 + ms)
}

fn hash(byte: u8) -> Hash {
    Hash([byte; 32])
}

fn error(class: &str, message: &str) -> ErrorInfo {
    ErrorInfo {
        class: class.to_string(),
        message: message.to_string(),
    }
}

/// Compares `actual` with the golden JSON text.
#[track_caller]
fn assert_json(actual: &Value, golden: &str) {
    let golden: Value = serde_json::from_str(golden).expect("the golden is JSON");
    assert_eq!(
        *actual,
        golden,
        "\nactual:\n{}\n",
        serde_json::to_string_pretty(actual).expect("JSON")
    );
}

/// Compares `actual` with the golden text, to the byte.
#[track_caller]
fn assert_text(actual: &str, golden: &str) {
    assert_eq!(actual, golden, "\nactual:\n{actual}\n");
}

/// A running job with everything a job can show: a secret in its source, a lease, an error, a
/// retry time, crashes, a cancel request.
fn rich_job() -> Job {
    let mut job = fixtures::job(
        0x0190_0000_0000_0000_0000_0000_0000_0001,
        "https://user:secret@cdn.example.com/a.mp4?token=abc&x=1",
    );
    job.key = "ingest:https://user:secret@cdn.example.com/a.mp4?token=abc&x=1".to_string();
    job.status = Status::Running;
    job.ingestion_phase = Some(Phase::Processing);
    job.attempts = 2;
    job.priority = 7;
    job.error = Some(error("download_blocked", "the origin answered 403"));
    job.created_at = at(0);
    job.updated_at = at(5_000);
    job.not_before = Some(at(60_000));
    job.crashes = Some(CrashRecord {
        marker: ProgressMarker {
            phase: Some(Phase::Downloading),
            checkpoints: 1,
            bytes_done: 4096,
        },
        count: 2,
    });
    job.lease = Some(Lease {
        worker_id: WorkerId("host-a:4242:1".to_string()),
        fencing_token: 3,
        expires_at: at(30_000),
    });
    job.cancel_requested = true;
    job
}

/// A job as `submit` leaves it: nothing set but the basics.
fn minimal_job() -> Job {
    let mut job = fixtures::job(2, "/media/local.mp4");
    job.key = "ingest:/media/local.mp4".to_string();
    job.created_at = at(0);
    job.updated_at = at(0);
    job
}

fn output(name: &str, location: Location, size: u64, byte: u8, token: ChangeToken) -> StepOutput {
    StepOutput {
        name: name.to_string(),
        location,
        size,
        blake3: hash(byte),
        change_token: token,
    }
}

/// Download, extract and store checkpoints, with every kind of location and change token.
fn checkpoints() -> Vec<Checkpoint> {
    let object = |key: &str| Location::Object(key.to_string());
    vec![
        Checkpoint {
            step: "download".to_string(),
            definition_hash: hash(0x11),
            input_hash: hash(0x12),
            outputs: vec![output(
                "original",
                Location::Scratch("/home/narra/scratch/01/original".to_string()),
                1_000,
                0x13,
                ChangeToken::File {
                    inode: 77,
                    size: 1_000,
                    mtime_ns: 1_700_000_000_000_000_000,
                },
            )],
            recorded_at: at(1_000),
        },
        Checkpoint {
            step: "extract".to_string(),
            definition_hash: hash(0x21),
            input_hash: hash(0x22),
            outputs: vec![
                output(
                    "audio",
                    Location::Scratch("/home/narra/scratch/01/audio.m4a".to_string()),
                    200,
                    0x23,
                    ChangeToken::ETag("\"etag-1\"".to_string()),
                ),
                output("metadata", Location::State, 321, 0x24, ChangeToken::None),
            ],
            recorded_at: at(2_000),
        },
        Checkpoint {
            step: "store".to_string(),
            definition_hash: hash(0x31),
            input_hash: hash(0x32),
            outputs: vec![
                output(
                    "video",
                    object("blobs/aa/video"),
                    1_000,
                    0x13,
                    ChangeToken::None,
                ),
                output(
                    "audio",
                    object("blobs/bb/audio"),
                    200,
                    0x23,
                    ChangeToken::None,
                ),
                output(
                    "metadata",
                    object("blobs/cc/metadata"),
                    321,
                    0x24,
                    ChangeToken::None,
                ),
                output(
                    "manifest",
                    object("jobs/01/manifest.json"),
                    555,
                    0x33,
                    ChangeToken::ETag("\"m\"".to_string()),
                ),
            ],
            recorded_at: at(3_000),
        },
    ]
}

/// The metadata record as the extract step shows it (`steps::extract::metadata_json`): views
/// take it as it is.
fn metadata_view() -> Value {
    serde_json::from_str(include_str!("golden/metadata_input.json")).expect("JSON")
}

/// One event of every kind.
fn events() -> Vec<Event> {
    let kinds = vec![
        EventKind::Submitted {
            source: "https://cdn.example.com/a.mp4".to_string(),
            workflow: "ingest".to_string(),
        },
        EventKind::StatusChanged {
            from: None,
            to: Status::Pending,
            reason: "submitted".to_string(),
        },
        EventKind::StatusChanged {
            from: Some(Status::Pending),
            to: Status::Running,
            reason: "claimed".to_string(),
        },
        EventKind::PhaseChanged {
            from: None,
            to: Some(Phase::Downloading),
        },
        EventKind::PhaseChanged {
            from: Some(Phase::Storing),
            to: None,
        },
        EventKind::StepStarted {
            step: "download".to_string(),
        },
        EventKind::StepCompleted {
            step: "download".to_string(),
            outputs: 1,
        },
        EventKind::StepSkipped {
            step: "extract".to_string(),
            reason: "checkpoint verified".to_string(),
        },
        EventKind::StepFailed {
            step: "store".to_string(),
            error: error("storage_unavailable", "the bucket did not answer"),
        },
        EventKind::RetryRequested {
            reason: "retry requested by an operator".to_string(),
        },
        EventKind::CancelRequested,
        EventKind::AudioSelected(AudioSelection {
            stream_index: 1,
            codec: "aac".to_string(),
            language: Some("eng".to_string()),
            output: "copy".to_string(),
            container: "m4a".to_string(),
            reason: "the first audio stream".to_string(),
        }),
        EventKind::AudioSelected(AudioSelection {
            stream_index: 2,
            codec: "opus".to_string(),
            language: None,
            output: "flac".to_string(),
            container: "flac".to_string(),
            reason: "no stream in the preferred language".to_string(),
        }),
        EventKind::Reprobed { changes: vec![] },
        EventKind::Reprobed {
            changes: vec![
                "streams[1].codec_name: \"mp3\" -> \"aac\"".to_string(),
                "size: 1 -> 2".to_string(),
            ],
        },
        EventKind::StepRedone {
            step: "extract".to_string(),
            cause: "definition_changed".to_string(),
            reason: "the workflow changed".to_string(),
        },
        EventKind::ObjectsWritten {
            step: "store".to_string(),
            keys: vec!["blobs/aa/video".to_string(), "blobs/bb/audio".to_string()],
        },
        EventKind::CheckpointRecorded {
            step: "store".to_string(),
            definition_hash: hash(0x31),
            input_hash: hash(0x32),
            outputs: vec![
                ("video".to_string(), hash(0x13)),
                ("audio".to_string(), hash(0x23)),
            ],
        },
    ];
    kinds
        .into_iter()
        .enumerate()
        .map(|(index, kind)| {
            let seq = 40 + u64::try_from(index).expect("few");
            Event {
                seq,
                at: at(10_000 + i64::try_from(seq).expect("few")),
                kind,
            }
        })
        .collect()
}

fn event_summary() -> EventSummary {
    let mut summary = crate::model::history::fold_all(JobId(1), None, &[]);
    summary.events_compacted = 40;
    summary.first_at = at(100);
    summary.last_at = at(9_000);
    summary.kinds = vec![
        ("status_changed".to_string(), 12),
        ("step_started".to_string(), 9),
    ];
    summary.steps = vec![
        StepSummary {
            step: "download".to_string(),
            executed: 3,
            completed: 2,
            skipped: 1,
            failed: 1,
            redone: 0,
            objects_written: vec![],
        },
        StepSummary {
            step: "store".to_string(),
            executed: 2,
            completed: 2,
            skipped: 0,
            failed: 0,
            redone: 1,
            objects_written: vec![
                ("blobs/aa/video".to_string(), 2),
                ("jobs/01/manifest.json".to_string(), 1),
            ],
        },
    ];
    summary.status = Some(Status::Running);
    summary.phase = Some(Phase::Storing);
    summary
}

fn progress() -> JobProgress {
    JobProgress {
        bytes_done: 3 * 1024 * 1024,
        bytes_total: Some(12 * 1024 * 1024),
        rate_bytes_per_s: 1024 * 1024,
        updated_at: at(4_000),
    }
}

fn webhook() -> Webhook {
    Webhook {
        job_id: JobId(1),
        url: "https://hooks.example.com/narra?sig=secret123".to_string(),
        pending: Some(Notice {
            delivery_id: DeliveryId(0x0190_0000_0000_0000_0000_0000_0000_00d1),
            status: Status::Failed,
            error: Some(error("download_blocked", "the origin answered 403")),
            finished_at: at(6_000),
            attempts: 2,
            next_attempt_at: at(90_000),
        }),
        deliveries: vec![
            Delivery {
                delivery_id: DeliveryId(0xd0),
                status: Status::Succeeded,
                attempt: 1,
                at: at(7_000),
                status_code: Some(204),
                error: None,
                ok: true,
                gave_up: false,
            },
            Delivery {
                delivery_id: DeliveryId(0xd1),
                status: Status::Failed,
                attempt: 1,
                at: at(8_000),
                status_code: Some(500),
                error: Some("the receiver answered 500 Internal Server Error".to_string()),
                ok: false,
                gave_up: false,
            },
            Delivery {
                delivery_id: DeliveryId(0xd1),
                status: Status::Failed,
                attempt: 8,
                at: at(8_500),
                status_code: None,
                error: Some("no answer within 10000 ms".to_string()),
                ok: false,
                gave_up: true,
            },
            Delivery {
                delivery_id: DeliveryId(0xd2),
                status: Status::Cancelled,
                attempt: 1,
                at: at(8_600),
                status_code: None,
                error: None,
                ok: true,
                gave_up: false,
            },
        ],
    }
}

fn log_line() -> LogLine {
    LogLine {
        at: at(1_234),
        level: "WARN".to_string(),
        message: "the origin is slow".to_string(),
    }
}

/// Two incidents, their fields in the order their JSON keys print in.
fn incidents() -> Vec<Incident> {
    let deleted = Incident {
        action: "deleted_object".to_string(),
        actor: "ops".to_string(),
        at: at(20_000),
        job: Some(JobId(1)),
        key: Some("blobs/aa/video".to_string()),
        reason: "cleanup: corrupt video".to_string(),
        seq: 0,
    };
    let pruned = Incident {
        action: "pruned_jobs".to_string(),
        actor: "narra".to_string(),
        at: at(21_000),
        job: None,
        key: None,
        reason: "prune --older-than 30d".to_string(),
        seq: 1,
    };
    vec![deleted, pruned]
}

fn stuck_job() -> StuckJob {
    StuckJob {
        job: rich_job(),
        last_moved_at: at(4_000),
        reasons: vec![
            StuckReason::LeaseExpired {
                expired_at: at(30_000),
            },
            StuckReason::NoProgress { since: at(4_000) },
        ],
    }
}

fn host(host: &str, breaker: Breaker) -> HostState {
    HostState {
        host: host.to_string(),
        breaker,
        failures: vec![
            HostFailure {
                at: at(1_000),
                class: "rate_limited".to_string(),
                job: JobId(7),
            },
            HostFailure {
                at: at(2_000),
                class: "download_blocked".to_string(),
                job: JobId(8),
            },
        ],
        next_start_at: at(0),
        opened_total: 3,
        held_total: 11,
        updated_at: at(2_000),
    }
}

/// A health report where every signal escalates.
fn alarming_health() -> HealthReport {
    let mut waiting = minimal_job();
    waiting.error = Some(error("scratch_low", "scratch space is below 512 MiB"));
    waiting.not_before = Some(at(120_000));
    HealthReport {
        options: HealthOptions {
            host_failures_min: 3,
            window_s: 3_600,
            stuck_after_s: 600,
        },
        failed_recently: 9,
        hosts: vec![
            FailingHost {
                host: "cdn.example.com".to_string(),
                failures: 4,
                classes: BTreeMap::from([
                    ("download_blocked".to_string(), 3),
                    ("rate_limited".to_string(), 1),
                ]),
                escalate: true,
            },
            FailingHost {
                host: "local".to_string(),
                failures: 1,
                classes: BTreeMap::from([("corrupt_media".to_string(), 1)]),
                escalate: false,
            },
        ],
        storage: StorageHealth {
            reachable: false,
            detail: "fs:///srv/objects does not answer: permission denied".to_string(),
            failures: BTreeMap::from([("storage_unavailable".to_string(), 2)]),
        },
        stuck: vec![stuck_job()],
        corruption: CorruptionHealth {
            failures: BTreeMap::from([("checksum_mismatch".to_string(), 1)]),
            corrupt_artifacts_removed: 2,
        },
        crash_loops: vec![JobId(5), JobId(6)],
        breakers: vec![
            host(
                "cdn.example.com",
                Breaker::Open {
                    until: at(600_000),
                    cooldown_ms: 60_000,
                },
            ),
            host(
                "other.example.org",
                Breaker::Probing {
                    probe: JobId(9),
                    cooldown_ms: 60_000,
                },
            ),
        ],
        waiting_for_scratch: vec![waiting],
        workers: BTreeMap::from([
            ("host-a:4242:1".to_string(), vec![JobId(1), JobId(3)]),
            ("host-b:7:1".to_string(), vec![JobId(4)]),
        ]),
        fenced_writes: 2,
    }
}

/// A health report with nothing to escalate.
fn quiet_health() -> HealthReport {
    HealthReport {
        options: HealthOptions::default(),
        failed_recently: 1,
        hosts: vec![FailingHost {
            host: "local".to_string(),
            failures: 1,
            classes: BTreeMap::from([("corrupt_media".to_string(), 1)]),
            escalate: false,
        }],
        storage: StorageHealth {
            reachable: true,
            detail: "memory://: reachable".to_string(),
            failures: BTreeMap::new(),
        },
        stuck: vec![],
        corruption: CorruptionHealth::default(),
        crash_loops: vec![],
        breakers: vec![],
        waiting_for_scratch: vec![],
        workers: BTreeMap::new(),
        fenced_writes: 0,
    }
}

fn artifact(name: &str, location: Location, state: ArtifactState) -> ArtifactCheck {
    ArtifactCheck {
        artifact: name.to_string(),
        location,
        size: 1_000,
        blake3: hash(0x13),
        state,
    }
}

/// A verification with one artifact in each state.
fn verification() -> JobVerification {
    JobVerification {
        job_id: JobId(1),
        stored: true,
        artifacts: vec![
            artifact(
                "video",
                Location::Object("blobs/aa/video".to_string()),
                ArtifactState::Ok,
            ),
            artifact(
                "audio",
                Location::Object("blobs/bb/audio".to_string()),
                ArtifactState::Missing,
            ),
            artifact(
                "metadata",
                Location::Object("blobs/cc/metadata".to_string()),
                ArtifactState::Mismatch {
                    found_size: 999,
                    found_blake3: Some(hash(0x99)),
                },
            ),
            artifact(
                "manifest",
                Location::Object("jobs/01/manifest.json".to_string()),
                ArtifactState::Mismatch {
                    found_size: 12,
                    found_blake3: None,
                },
            ),
            artifact(
                "metadata_record",
                Location::State,
                ArtifactState::Unreadable {
                    message: "the store failed".to_string(),
                },
            ),
        ],
    }
}

fn unstored_verification() -> JobVerification {
    JobVerification {
        job_id: JobId(2),
        stored: false,
        artifacts: vec![],
    }
}

fn audits() -> Vec<JobAudit> {
    let counts = StepCounts {
        executed: 3,
        completed: 2,
        skipped: 1,
        failed: 1,
        redone: 1,
    };
    let finding = |kind: &'static str, severity, seq, key: Option<&str>| Finding {
        kind,
        severity,
        step: Some("store".to_string()),
        key: key.map(str::to_string),
        seq,
        message: format!("{kind} found"),
    };
    let disagreeing = JobAudit {
        job: rich_job(),
        steps: vec![
            StepAudit {
                step: "download".to_string(),
                counts: counts.clone(),
                checkpoint: Some(checkpoints()[0].clone()),
            },
            StepAudit {
                step: "store".to_string(),
                counts,
                checkpoint: Some(checkpoints()[2].clone()),
            },
            StepAudit {
                step: "extract".to_string(),
                counts: StepCounts::default(),
                checkpoint: None,
            },
        ],
        writes: BTreeMap::from([
            ("blobs/aa/video".to_string(), 2),
            ("blobs/bb/audio".to_string(), 1),
            ("jobs/01/manifest.json".to_string(), 3),
        ]),
        storage: verification(),
        findings: vec![
            finding(
                "object_rewritten",
                Severity::Violation,
                Some(44),
                Some("blobs/aa/video"),
            ),
            finding("storage_disagrees", Severity::Warning, None, None),
            finding("source_changed", Severity::Info, Some(12), None),
        ],
    };
    let unstored = JobAudit {
        job: minimal_job(),
        steps: vec![],
        writes: BTreeMap::new(),
        storage: unstored_verification(),
        findings: vec![],
    };
    let mut agreeing = unstored.clone();
    agreeing.storage = JobVerification {
        job_id: JobId(2),
        stored: true,
        artifacts: vec![artifact(
            "video",
            Location::Object("blobs/aa/video".to_string()),
            ArtifactState::Ok,
        )],
    };
    agreeing.writes = BTreeMap::from([("blobs/aa/video".to_string(), 1)]);
    vec![disagreeing, unstored, agreeing]
}

fn cleanup_plan() -> Plan {
    Plan {
        id: "0123456789abcdef".to_string(),
        options: CleanupOptions {
            deep: true,
            min_age_s: 60,
        },
        deletions: vec![
            Deletion {
                key: "blobs/aa/video".to_string(),
                size: 999,
                last_modified: None,
                reason: DeletionReason::Corrupt {
                    artifact: "video".to_string(),
                    expected_size: 1_000,
                    expected_blake3: hash(0x13),
                    found_blake3: Some(hash(0x99)),
                },
                jobs: vec![JobId(1), JobId(2)],
            },
            Deletion {
                key: "blobs/cc/metadata".to_string(),
                size: 10,
                last_modified: None,
                reason: DeletionReason::Corrupt {
                    artifact: "metadata".to_string(),
                    expected_size: 321,
                    expected_blake3: hash(0x24),
                    found_blake3: None,
                },
                jobs: vec![],
            },
            Deletion {
                key: "blobs/dd/orphan".to_string(),
                size: 5,
                last_modified: Some(at(-7_200_000)),
                reason: DeletionReason::Orphan,
                jobs: vec![],
            },
            Deletion {
                key: ".narra-tmp/part-1".to_string(),
                size: 6,
                last_modified: Some(at(-7_300_000)),
                reason: DeletionReason::Partial,
                jobs: vec![],
            },
        ],
        scratch: vec![
            StaleScratch {
                path: PathBuf::from("/home/narra/scratch/01"),
                job_id: JobId(1),
                status: Some(Status::Succeeded),
            },
            StaleScratch {
                path: PathBuf::from("/home/narra/scratch/09"),
                job_id: JobId(9),
                status: None,
            },
        ],
        resets: vec![JobReset {
            job_id: JobId(1),
            status: Status::Succeeded,
            reason: "reset by cleanup: video blobs/aa/video is corrupt".to_string(),
        }],
        notes: vec!["blobs/ee/young is unreferenced but younger than 60 s".to_string()],
    }
}

fn empty_plan() -> Plan {
    Plan {
        id: "fedcba9876543210".to_string(),
        options: CleanupOptions::default(),
        deletions: vec![],
        scratch: vec![],
        resets: vec![],
        notes: vec![],
    }
}

fn executed() -> Executed {
    Executed {
        plan: cleanup_plan(),
        deleted: vec!["blobs/aa/video".to_string(), "blobs/dd/orphan".to_string()],
        removed_scratch: vec![PathBuf::from("/home/narra/scratch/01")],
        reset: vec![JobId(1)],
        skipped: vec!["blobs/cc/metadata kept: succeeded job 2 references it".to_string()],
    }
}

fn takedown() -> Takedown {
    Takedown {
        job: rich_job(),
        objects: vec![
            "jobs/01/manifest.json".to_string(),
            "blobs/bb/audio".to_string(),
        ],
        shared: vec![("blobs/aa/video".to_string(), vec![JobId(2), JobId(3)])],
        scratch: Some(PathBuf::from("/home/narra/scratch/01")),
    }
}

fn prune_options() -> PruneOptions {
    PruneOptions {
        older_than_ms: 30 * 86_400_000,
        statuses: vec![Status::Succeeded, Status::Failed],
    }
}

fn prune_plan() -> PrunePlan {
    let mut old = minimal_job();
    old.status = Status::Succeeded;
    old.updated_at = at(-40 * 86_400_000);
    PrunePlan {
        cutoff: at(-30 * 86_400_000),
        statuses: vec![Status::Succeeded, Status::Failed],
        jobs: vec![old, rich_job()],
    }
}

fn pruned() -> Pruned {
    Pruned {
        plan: prune_plan(),
        pruned: vec![PrunedJob {
            id: JobId(2),
            key: "ingest:/media/local.mp4".to_string(),
            workflow: "ingest".to_string(),
            status: Status::Succeeded,
            created_at: at(0),
            updated_at: at(-40 * 86_400_000),
            pruned_at: at(50_000),
            blobs: vec!["blobs/aa/video".to_string()],
            manifest: Some("jobs/02/manifest.json".to_string()),
        }],
        refused: vec![(
            rich_job().id,
            "job is running: only a finished job is pruned".to_string(),
        )],
        incident: Some(incidents()[1].clone()),
    }
}

fn backfill_summary() -> BackfillSummary {
    BackfillSummary {
        backfill: Backfill {
            id: BackfillId(0x0190_0000_0000_0000_0000_0000_0000_0b0f),
            manifest: "/srv/manifests/june.csv".to_string(),
            created_at: at(0),
        },
        format: ManifestFormat::Csv,
        lines_accepted: 5,
        bad_lines: vec![BadLine {
            line: 3,
            reason: "empty source".to_string(),
        }],
        jobs: 4,
        ran: 3,
        skipped: 1,
        by_status: BTreeMap::from([("failed".to_string(), 1), ("succeeded".to_string(), 3)]),
        failures_by_class: BTreeMap::from([("not_found".to_string(), 1)]),
        failures_by_host: BTreeMap::from([("cdn.example.com".to_string(), 1)]),
        bytes_downloaded: 5 * 1024 * 1024,
        bytes_stored: 6 * 1024 * 1024,
        elapsed_ms: 12_345,
    }
}

/// A job's records as `show` reads them: everything, or nothing but the job.
fn records(job: Job, full: bool) -> job::ShowRecords {
    if !full {
        return job::ShowRecords {
            job,
            checkpoints: vec![],
            metadata: None,
            summary: None,
            events: vec![],
            progress: None,
            webhook: None,
        };
    }
    job::ShowRecords {
        job,
        checkpoints: checkpoints(),
        metadata: Some(metadata_view()),
        summary: Some(event_summary()),
        events: events(),
        progress: Some(progress()),
        webhook: Some(webhook()),
    }
}

/// Texts one after the other, each under a `== name ==` line, for one golden file per area.
fn sections(texts: &[(&str, String)]) -> String {
    texts
        .iter()
        .map(|(name, text)| format!("== {name} ==\n{text}\n"))
        .collect()
}

fn lines(lines: Vec<String>) -> String {
    lines.join("\n")
}

/// The JSON of a list of views.
fn list<'a, T, V: serde::Serialize>(items: &'a [T], view: impl Fn(&'a T) -> V) -> Value {
    to_json(&items.iter().map(view).collect::<Vec<_>>())
}

#[test]
fn jobs() {
    let job = rich_job();
    let minimal = minimal_job();
    let stuck = stuck_job();
    let detail = super::stuck::stuck_detail(&stuck);
    let page = job::JobsPage {
        jobs: vec![
            job::page_item(&stuck.job, Some(&detail), None),
            job::page_item(&minimal, None, Some(&progress())),
        ],
        next_cursor: Some(JobId(2).to_string()),
    };
    let value = json!({
        "summary_rich": to_json(&job::summary(&job)),
        "summary_minimal": to_json(&job::summary(&minimal)),
        "jobs_item": to_json(&job::job_item(&job, Some(&progress()))),
        "reprobe": to_json(&job::Reprobed {
            job: job::summary(&job),
            changes: &["size: 1 -> 2".to_string()],
            republished: true,
        }),
        "api_jobs_page": to_json(&page),
        "api_created": to_json(&job::Submitted {
            summary: job::summary(&minimal),
            outcome: "created",
        }),
    });
    assert_json(&value, include_str!("golden/jobs.json"));
    let running = format!(
        "{}  {}",
        job::job_line(&job),
        job::progress_text(&job, &progress())
    );
    let text = sections(&[
        ("line_rich", job::job_line(&job)),
        ("line_minimal", job::job_line(&minimal)),
        ("line_running", running),
    ]);
    assert_text(&text, include_str!("golden/jobs.txt"));
}

#[test]
fn show() {
    let rich = records(rich_job(), true);
    let minimal = records(minimal_job(), false);
    let value = json!({
        "rich": to_json(&job::detail(&rich)),
        "minimal": to_json(&job::detail(&minimal)),
    });
    assert_json(&value, include_str!("golden/show.json"));
    let text = sections(&[
        ("rich", job::detail_text(&rich)),
        ("minimal", job::detail_text(&minimal)),
    ]);
    assert_text(&text, include_str!("golden/show.txt"));
}

// Guards the progress line of `show`: a finished job's record at zero (a step that failed before
// any byte) says nothing and is not shown; one with bytes is.
#[test]
fn show_leaves_out_a_finished_jobs_empty_progress() {
    let mut records = records(minimal_job(), false);
    records.job.status = Status::Failed;
    let mut record = progress();
    record.bytes_done = 0;
    records.progress = Some(record.clone());
    assert!(!job::detail_text(&records).contains("\nprogress "));
    record.bytes_done = 1;
    records.progress = Some(record);
    let line = "\nprogress         0.0 MiB of 12.0 MiB (0%) at 1.0 MiB/s\n";
    assert!(job::detail_text(&records).contains(line));
}

#[test]
fn history_and_logs() {
    use super::history::{LogLineView, history, log_line_text, logs};
    let summary = event_summary();
    let events = events();
    let value = json!({
        "api_events": to_json(&history(Some(&summary), &events)),
        "api_events_empty": to_json(&history(None, &[])),
        "api_logs": to_json(&logs(&[log_line()])),
        "log_line": to_json(&LogLineView::of(&log_line())),
    });
    assert_json(&value, include_str!("golden/history.json"));
    let text = sections(&[("log_line", log_line_text(&log_line()))]);
    assert_text(&text, include_str!("golden/history.txt"));
}

#[test]
fn stuck_jobs_and_health() {
    use super::health::{health, report_text};
    use super::stuck::{stuck_text, stuck_view};
    let value = json!({
        "stuck": to_json(&stuck_view(&stuck_job())),
        "alarming": to_json(&health(&alarming_health())),
        "quiet": to_json(&health(&quiet_health())),
    });
    assert_json(&value, include_str!("golden/health.json"));
    let text = sections(&[
        ("stuck", stuck_text(&stuck_job())),
        ("alarming", report_text(&alarming_health())),
        ("quiet", report_text(&quiet_health())),
    ]);
    assert_text(&text, include_str!("golden/health.txt"));
}

#[test]
fn verifications_and_audits() {
    use super::audit::{audit, audit_text};
    use super::verify::{verification as view, verification_text};
    let audits = audits();
    let value = json!({
        "verify": to_json(&view(&verification(), true)),
        "verify_unstored": to_json(&view(&unstored_verification(), false)),
        "audit": list(&audits, audit),
    });
    assert_json(&value, include_str!("golden/audit.json"));
    let text = sections(&[
        ("verify", lines(verification_text(&verification()))),
        (
            "verify_unstored",
            lines(verification_text(&unstored_verification())),
        ),
        ("audit", lines(audits.iter().flat_map(audit_text).collect())),
    ]);
    assert_text(&text, include_str!("golden/audit.txt"));
}

#[test]
fn cleanups_takedowns_and_incidents() {
    use super::cleanup::{
        dry_run_text, executed as executed_view, executed_text, plan, plan_text,
        takedown as takedown_view, takedown_text,
    };
    use super::incidents::{incident, incident_text};
    let value = json!({
        "plan": to_json(&plan(&cleanup_plan())),
        "plan_empty": to_json(&plan(&empty_plan())),
        "executed": to_json(&executed_view(&executed())),
        "takedown_planned": to_json(&takedown_view(&takedown(), false)),
        "takedown_done": to_json(&takedown_view(&takedown(), true)),
        "incidents": list(&incidents(), incident),
    });
    assert_json(&value, include_str!("golden/cleanup.json"));
    let text = sections(&[
        ("plan", lines(plan_text(&cleanup_plan()))),
        ("dry_run", dry_run_text(&cleanup_plan())),
        ("plan_empty", lines(plan_text(&empty_plan()))),
        ("dry_run_empty", dry_run_text(&empty_plan())),
        ("executed", lines(executed_text(&executed()))),
        ("takedown_planned", lines(takedown_text(&takedown(), false))),
        ("takedown_done", lines(takedown_text(&takedown(), true))),
        (
            "incidents",
            lines(incidents().iter().map(incident_text).collect()),
        ),
        // The id is the hash of the canonical form: the same plan keeps its id.
        (
            "plan_id",
            crate::model::cleanup::plan_id(&cleanup_plan().canonical()),
        ),
    ]);
    assert_text(&text, include_str!("golden/cleanup.txt"));
}

#[test]
fn prunes() {
    use super::prune::{
        prune_plan as plan_view, prune_plan_text, pruned as pruned_view, pruned_text,
    };
    let value = json!({
        "plan": to_json(&plan_view(&prune_plan(), &prune_options())),
        "pruned": to_json(&pruned_view(&pruned(), &prune_options())),
    });
    assert_json(&value, include_str!("golden/prune.json"));
    let text = sections(&[
        (
            "plan",
            lines(prune_plan_text(&prune_plan(), &prune_options())),
        ),
        ("pruned", lines(pruned_text(&pruned()))),
    ]);
    assert_text(&text, include_str!("golden/prune.txt"));
}

#[test]
fn backfills() {
    use super::backfill::{
        ListItem, Progress, Submitted, backfill, manifest_read, summary as summary_view,
        summary_text,
    };
    let summary = backfill_summary();
    let record = &summary.backfill;
    let read = manifest_read(
        record,
        summary.format,
        summary.lines_accepted,
        &summary.bad_lines,
        4,
    );
    // `GET /backfills/{id}` of the rich job (running) and the minimal one (pending).
    let progress = Progress {
        backfill: backfill(record),
        jobs: 2,
        by_status: BTreeMap::from([("pending", 1), ("running", 1)]),
        finished: 0,
        done: false,
        bytes_downloaded: 1_000,
        bytes_stored: job::artifacts(&checkpoints())
            .iter()
            .map(|artifact| artifact.size)
            .sum(),
    };
    let value = json!({
        "summary": to_json(&summary_view(&summary)),
        "list": to_json(&[ListItem { backfill: backfill(record), jobs: 4 }]),
        "api_created": to_json(&Submitted {
            id: super::Text(record.id),
            read,
            to_run: 3,
        }),
        "api_progress": to_json(&progress),
    });
    assert_json(&value, include_str!("golden/backfill.json"));
    let text = sections(&[("summary", summary_text(&summary))]);
    assert_text(&text, include_str!("golden/backfill.txt"));
}

#[test]
fn webhook_notices() {
    use super::webhook::notice_body;
    let job = rich_job();
    let failed = webhook().pending.expect("a pending notice");
    let mut succeeded = failed.clone();
    succeeded.status = Status::Succeeded;
    succeeded.error = None;
    let checkpoints = checkpoints();
    let value = json!({
        "succeeded": to_json(&notice_body(&job, &succeeded, &checkpoints)),
        "failed": to_json(&notice_body(&job, &failed, &[])),
    });
    assert_json(&value, include_str!("golden/webhook.json"));
}
