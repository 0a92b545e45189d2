//! What the checks share: the requests, records and workers they write with, the set-ups they
//! start from (a new job, a running job, a job whose lease was taken over), and [`Answer`], which
//! reads a store's two-level answer to a write as the check expects it.
//!
//! Every helper asserts what it relies on (a submission made a new job, a claim handed out the
//! job's current token), so a check that starts from one fails at the set-up, not later. Nothing
//! here writes to a store a check did not hand it.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::time::Duration;

use crate::model::job::{
    ChangeToken, Checkpoint, ErrorInfo, Event, Hash, Job, JobId, LeaseToken, Location, LogLine,
    MediaMetadata, Status, StepOutput, Timestamp, Webhook, WorkerId,
};
use crate::model::machine::Rejected;
use crate::model::scheduling::{BreakerPolicy, RetryPolicy, SchedulingPolicy};
use crate::store::{
    ClaimNext, ClaimRequest, JobFilter, StateStore, StoreResult, SubmitOutcome, SubmitRequest,
};

/// A lease long enough that no check sees it expire.
pub(crate) const LEASE_TTL_MS: u64 = 60_000;

/// A store's answer to a write, `StoreResult<Result<T, Rejected>>`, as a check expects it: the
/// store answered (an I/O error fails the check), then it accepted or refused the write.
pub(crate) trait Answer<T> {
    /// The write was accepted: what it returned.
    fn accepted(self, what: &str) -> T;
    /// The write was refused: why.
    fn refused(self, what: &str) -> Rejected;
    /// The write was refused as fenced: its token is not the job's current one.
    fn fenced(self, what: &str);
    /// The write was refused as not allowed in the job's status.
    fn not_allowed(self, what: &str);
}

impl<T: Debug> Answer<T> for StoreResult<Result<T, Rejected>> {
    #[track_caller]
    fn accepted(self, what: &str) -> T {
        match answered(self, what) {
            Ok(value) => value,
            Err(rejected) => panic!("{what}: refused: {rejected:?}"),
        }
    }

    #[track_caller]
    fn refused(self, what: &str) -> Rejected {
        match answered(self, what) {
            Ok(value) => panic!("{what}: expected a refusal, got {value:?}"),
            Err(rejected) => rejected,
        }
    }

    #[track_caller]
    fn fenced(self, what: &str) {
        expect_fenced(answered(self, what), what);
    }

    #[track_caller]
    fn not_allowed(self, what: &str) {
        expect_not_allowed(answered(self, what), what);
    }
}

#[track_caller]
fn answered<T>(answer: StoreResult<Result<T, Rejected>>, what: &str) -> Result<T, Rejected> {
    match answer {
        Ok(result) => result,
        Err(error) => panic!("{what}: the store failed: {error}"),
    }
}

#[track_caller]
pub(crate) fn expect_fenced<T: Debug>(result: Result<T, Rejected>, what: &str) {
    match result {
        Err(Rejected::Fenced { .. }) => {}
        other => panic!("{what}: expected Rejected::Fenced, got {other:?}"),
    }
}

#[track_caller]
pub(crate) fn expect_not_allowed<T: Debug>(result: Result<T, Rejected>, what: &str) {
    match result {
        Err(Rejected::NotAllowed { .. }) => {}
        other => panic!("{what}: expected Rejected::NotAllowed, got {other:?}"),
    }
}

/// A submission of `key`, a video on a host of its own.
pub(crate) fn request(key: &str) -> SubmitRequest {
    SubmitRequest {
        key: key.to_string(),
        source: format!("https://example.com/{key}.mp4"),
        workflow: "ingest".to_string(),
        reingest: false,
        priority: crate::model::job::PRIORITY_LIVE,
    }
}

/// A scheduling policy with no per-host limit and a breaker that opens after two refusals.
pub(crate) fn open_policy() -> SchedulingPolicy {
    SchedulingPolicy {
        host_running_max: 0,
        host_start_interval_ms: 0,
        breaker: BreakerPolicy {
            failures_max: 2,
            window_ms: 60_000,
            cooldown_ms: 60_000,
            cooldown_max_ms: 120_000,
        },
        retry: RetryPolicy::default(),
    }
}

pub(crate) fn worker(n: u32) -> WorkerId {
    WorkerId(format!("conformance:0:{n}"))
}

pub(crate) fn error_info() -> ErrorInfo {
    ErrorInfo {
        class: "download_blocked".to_string(),
        message: "403 Forbidden".to_string(),
    }
}

pub(crate) fn log_line(at: i64, message: &str) -> LogLine {
    LogLine {
        at: Timestamp(at),
        level: "INFO".to_string(),
        message: message.to_string(),
    }
}

pub(crate) fn checkpoint(step: &str, recorded_at: i64) -> Checkpoint {
    Checkpoint {
        step: step.to_string(),
        definition_hash: Hash::of(step.as_bytes()),
        input_hash: Hash::of(b"input"),
        outputs: vec![
            StepOutput {
                name: "file".to_string(),
                location: Location::Scratch(format!("/scratch/{step}.bin")),
                size: 42,
                blake3: Hash::of(b"file"),
                change_token: ChangeToken::File {
                    inode: 7,
                    size: 42,
                    mtime_ns: 1_700_000_000_000_000_000,
                },
            },
            StepOutput {
                name: "object".to_string(),
                location: Location::Object(format!("jobs/{step}")),
                size: 42,
                blake3: Hash::of(b"object"),
                change_token: ChangeToken::ETag("\"etag\"".to_string()),
            },
        ],
        recorded_at: Timestamp(recorded_at),
    }
}

/// A store checkpoint whose outputs are the `blobs/` objects `blobs`, a manifest and a scratch file.
pub(crate) fn store_checkpoint(id: JobId, blobs: &[&str], recorded_at: i64) -> Checkpoint {
    let object = |name: String, key: String, size: u64, bytes: &[u8]| StepOutput {
        name,
        location: Location::Object(key),
        size,
        blake3: Hash::of(bytes),
        change_token: ChangeToken::None,
    };
    let mut outputs: Vec<StepOutput> = blobs
        .iter()
        .map(|key| object(format!("blob {key}"), key.to_string(), 10, key.as_bytes()))
        .collect();
    let manifest = format!("jobs/{id}/manifest.json");
    outputs.push(object("manifest".to_string(), manifest, 3, b"{}"));
    outputs.push(StepOutput {
        name: "scratch".to_string(),
        location: Location::Scratch("/scratch/blobs/not-an-object".to_string()),
        size: 1,
        blake3: Hash::of(b"s"),
        change_token: ChangeToken::None,
    });
    Checkpoint {
        step: "store".to_string(),
        definition_hash: Hash::of(b"store"),
        input_hash: Hash::of(b"input"),
        outputs,
        recorded_at: Timestamp(recorded_at),
    }
}

/// A metadata record: the codec's golden one.
pub(crate) fn media_metadata() -> MediaMetadata {
    crate::store::codec::tests::golden_metadata()
}

/// Makes the next job id sort after every id made so far: job ids are ULIDs, which sort by
/// millisecond, and two ids made in the same millisecond sort at random.
pub(crate) async fn next_millisecond() {
    tokio::time::sleep(Duration::from_millis(2)).await;
}

pub(crate) fn event_names(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(|event| event.kind.name()).collect()
}

pub(crate) async fn read_job(store: &dyn StateStore, id: JobId) -> Job {
    store.job(id).await.expect("job").expect("job exists")
}

/// Every job in `status` (every job for `None`), newest first.
pub(crate) async fn listed(store: &dyn StateStore, status: Option<Status>) -> Vec<Job> {
    let filter = JobFilter {
        status,
        limit: usize::MAX,
    };
    store.jobs(&filter).await.expect("jobs")
}

/// The job's webhook, which a check has set.
pub(crate) async fn webhook_of(store: &dyn StateStore, id: JobId) -> Webhook {
    store.webhook(id).await.expect("read").expect("set")
}

pub(crate) async fn watch(store: &dyn StateStore, id: JobId, url: &str) {
    let hooks = [(id, url.to_string())];
    store.set_webhooks(&hooks).await.expect("set_webhooks");
}

pub(crate) async fn submit_new(store: &dyn StateStore, key: &str) -> Job {
    let submitted = store.submit(&request(key)).await.expect("submit");
    assert_eq!(
        submitted.outcome,
        SubmitOutcome::Created,
        "submit of new key {key}"
    );
    submitted.job
}

/// Claims a pending job as `worker(1)`: its token, the job's current one.
pub(crate) async fn claim(store: &dyn StateStore, id: JobId) -> LeaseToken {
    let (job, token) = store
        .claim(id, &worker(1), LEASE_TTL_MS)
        .await
        .accepted("a pending job is claimable");
    assert_eq!(job.status, Status::Running);
    assert_eq!(token.job_id, id);
    assert_eq!(token.fencing_token, job.fencing_token);
    token
}

/// Submits and claims a job.
pub(crate) async fn running_job(store: &dyn StateStore, key: &str) -> LeaseToken {
    let job = submit_new(store, key).await;
    claim(store, job.id).await
}

/// Submits, claims and completes a job: the succeeded job, and the token it ran under.
pub(crate) async fn succeeded_job(store: &dyn StateStore, key: &str) -> (Job, LeaseToken) {
    let token = running_job(store, key).await;
    let job = store.complete(&token).await.accepted("complete");
    assert_eq!(job.status, Status::Succeeded);
    (job, token)
}

/// A running job whose first lease was reclaimed and claimed again: the stale token and the
/// current one.
pub(crate) async fn taken_over(store: &dyn StateStore, key: &str) -> (LeaseToken, LeaseToken) {
    let stale = running_job(store, key).await;
    let reclaimed = store.reclaim(stale.job_id, "worker gone").await;
    reclaimed.accepted("reclaimable");
    let current = claim(store, stale.job_id).await;
    (stale, current)
}

/// `claim_next` under [`open_policy`]: the claimed job and its token, or `None`.
pub(crate) async fn claim_next_as(
    store: &dyn StateStore,
    worker_id: &WorkerId,
) -> Option<(Job, LeaseToken)> {
    claim_next_with(store, worker_id, &open_policy(), None).await
}

pub(crate) async fn claim_next_with(
    store: &dyn StateStore,
    worker_id: &WorkerId,
    policy: &SchedulingPolicy,
    only: Option<&BTreeSet<JobId>>,
) -> Option<(Job, LeaseToken)> {
    match claim_next_answer(store, worker_id, policy, only).await {
        ClaimNext::Claimed(job, token) => Some((*job, token)),
        ClaimNext::Wait { .. } | ClaimNext::Empty => None,
    }
}

/// `claim_next`'s whole answer, a wait included.
pub(crate) async fn claim_next_answer(
    store: &dyn StateStore,
    worker_id: &WorkerId,
    policy: &SchedulingPolicy,
    only: Option<&BTreeSet<JobId>>,
) -> ClaimNext {
    let request = ClaimRequest {
        worker_id,
        lease_ttl_ms: LEASE_TTL_MS,
        policy,
        only,
    };
    store.claim_next(&request).await.expect("claim_next")
}

/// Records a store checkpoint of `blobs` (and the job's manifest) under `token`.
pub(crate) async fn record_stored(
    store: &dyn StateStore,
    token: &LeaseToken,
    blobs: &[&str],
    recorded_at: i64,
) {
    let checkpoint = store_checkpoint(token.job_id, blobs, recorded_at);
    let recorded = store.record_checkpoint(token, &checkpoint, None).await;
    recorded.accepted("store checkpoint");
}

/// Records what a run of the job leaves under `token`: the download checkpoint with the metadata
/// record, and a store checkpoint of `blobs`.
pub(crate) async fn record_run(store: &dyn StateStore, token: &LeaseToken, blobs: &[&str]) {
    let metadata = media_metadata();
    let download = checkpoint("download", 1);
    let recorded = store
        .record_checkpoint(token, &download, Some(&metadata))
        .await;
    recorded.accepted("download checkpoint");
    record_stored(store, token, blobs, 2).await;
}
