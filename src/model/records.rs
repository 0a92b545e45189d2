//! What a job's records hold besides the job itself, decided once for every store: the events and
//! blob references a recorded checkpoint writes, the numbering of a job's events and the point its
//! history is compacted to, and the tombstone `narra prune` leaves.
//!
//! Pure: a store reads the job (and what else a rule names), calls these, and writes what they
//! return in the operation's transaction. It never decides what a checkpoint, an append or a
//! prune writes itself.

use crate::model::history;
use crate::model::job::{
    Checkpoint, Event, EventKind, EventSummary, Job, JobId, LeaseToken, Location, PrunedJob,
    Timestamp,
};
use crate::model::machine::{self, Rejected};

/// The step whose checkpoint names the stored objects, and so feeds the blob index (`blob_refs`).
pub const STORE_STEP: &str = "store";

/// Where content-addressed objects live (`storage`'s layout): the keys the blob index holds.
const BLOB_PREFIX: &str = "blobs/";

/// The `blobs/` objects a store checkpoint names: what the blob index holds for its job.
pub fn referenced_blobs(checkpoint: &Checkpoint) -> impl Iterator<Item = &str> {
    checkpoint
        .outputs
        .iter()
        .filter_map(|output| match &output.location {
            Location::Object(key) if key.starts_with(BLOB_PREFIX) => Some(key.as_str()),
            _ => None,
        })
}

/// The events a recorded checkpoint appends: `step_completed`, then `checkpoint_recorded` with
/// its hashes.
pub fn checkpoint_events(checkpoint: &Checkpoint) -> Vec<EventKind> {
    let completed = EventKind::StepCompleted {
        step: checkpoint.step.clone(),
        outputs: u32::try_from(checkpoint.outputs.len()).unwrap_or(u32::MAX),
    };
    let recorded = EventKind::CheckpointRecorded {
        step: checkpoint.step.clone(),
        definition_hash: checkpoint.definition_hash,
        input_hash: checkpoint.input_hash,
        outputs: checkpoint
            .outputs
            .iter()
            .map(|output| (output.name.clone(), output.blake3))
            .collect(),
    };
    vec![completed, recorded]
}

/// Puts a job's checkpoints in the order their steps were recorded (the order
/// `JobReader::checkpoints` promises), whatever order a store keeps them in.
pub fn in_recorded_order(checkpoints: &mut [Checkpoint]) {
    checkpoints.sort_by(|left, right| {
        (left.recorded_at, &left.step).cmp(&(right.recorded_at, &right.step))
    });
}

/// What recording a checkpoint writes besides the checkpoint (and its metadata record).
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointWrite {
    /// The job to write once `events` are appended: a suspect that passed a checkpoint runs
    /// beside others again (`attribution::checkpoint_passed`).
    pub job: Job,
    pub events: Vec<EventKind>,
    /// The job's blob references move to what this checkpoint names (the store step's).
    pub blob_refs: bool,
}

/// Records `checkpoint` of `job` under `token`: refused unless the token is the job's current
/// lease (`machine::check_lease`).
pub fn record_checkpoint(
    job: &Job,
    token: &LeaseToken,
    checkpoint: &Checkpoint,
) -> Result<CheckpointWrite, Rejected> {
    machine::check_lease(job, token)?;
    Ok(CheckpointWrite {
        job: crate::model::attribution::checkpoint_passed(job).unwrap_or_else(|| job.clone()),
        events: checkpoint_events(checkpoint),
        blob_refs: checkpoint.step == STORE_STEP,
    })
}

/// A job's events are numbered `0..` with no gap, and no number is used twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("event sequence exhausted")]
pub struct SequenceExhausted;

/// Numbers `kinds` from the job's `events_next`, all at `now`, and advances it past them.
pub fn number_events(
    job: &mut Job,
    kinds: Vec<EventKind>,
    now: Timestamp,
) -> Result<Vec<Event>, SequenceExhausted> {
    let mut events = Vec::with_capacity(kinds.len());
    for kind in kinds {
        let seq = job.events_next;
        events.push(Event { seq, at: now, kind });
        job.events_next = seq.checked_add(1).ok_or(SequenceExhausted)?;
    }
    Ok(events)
}

/// How many events a job holds right after its history was compacted: three quarters of the
/// bound, and at least one. Every store compacts to the same point.
pub fn events_kept(events_max: u64) -> u64 {
    (events_max - events_max / 4).max(1)
}

/// Whether a job whose next event is `events_next` may hold more than `events_max` events, so
/// that its summary must be read to know: cheap for a job that never had that many.
pub fn may_exceed(events_next: u64, events_max: u64) -> bool {
    events_next > events_max
}

/// Where a job's history is compacted to, when it holds more than `events_max` events: its events
/// `compacted..` the returned number are folded into its summary and removed, leaving
/// [`events_kept`]. `None` while it holds no more than the bound.
pub fn fold_until(events_next: u64, compacted: u64, events_max: u64) -> Option<u64> {
    if !may_exceed(events_next, events_max) || events_next.saturating_sub(compacted) <= events_max {
        return None;
    }
    Some(events_next - events_kept(events_max))
}

/// A compaction of a job's history under way: its events `from..until`, folded in order into
/// the job's summary (`model::history::fold`), then removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compaction {
    pub from: u64,
    pub until: u64,
    summary: EventSummary,
}

/// The compaction the history of job `job_id` needs when its next event is `events_next` and
/// its summary `summary` (`None`: none yet): `None` while it holds no more than `events_max`.
pub fn compaction(
    job_id: JobId,
    events_next: u64,
    summary: Option<EventSummary>,
    events_max: u64,
) -> Option<Compaction> {
    let from = summary
        .as_ref()
        .map_or(0, |summary| summary.events_compacted);
    let until = fold_until(events_next, from, events_max)?;
    Some(Compaction {
        from,
        until,
        summary: summary.unwrap_or_else(|| history::empty(job_id)),
    })
}

impl Compaction {
    /// Folds the next event, in order.
    pub fn fold(&mut self, event: &Event) {
        history::fold(&mut self.summary, event);
    }

    /// The summary to write, once every event `from..until` was folded; `Err` says how far the
    /// folding got instead.
    pub fn finish(self) -> Result<EventSummary, String> {
        if self.summary.events_compacted != self.until {
            return Err(format!(
                "compaction folded events up to {} instead of {}",
                self.summary.events_compacted, self.until
            ));
        }
        Ok(self.summary)
    }
}

/// What `narra prune` keeps of a finished job: its identity and times, the blobs its store
/// checkpoint named, and its manifest's key.
pub fn tombstone(
    job: &Job,
    store_checkpoint: Option<&Checkpoint>,
    pruned_at: Timestamp,
) -> PrunedJob {
    PrunedJob {
        id: job.id,
        key: job.key.clone(),
        workflow: job.workflow.clone(),
        status: job.status,
        created_at: job.created_at,
        updated_at: job.updated_at,
        pruned_at,
        blobs: store_checkpoint
            .into_iter()
            .flat_map(referenced_blobs)
            .map(str::to_string)
            .collect(),
        manifest: store_checkpoint
            .and_then(|checkpoint| checkpoint.output("manifest"))
            .and_then(|output| match &output.location {
                Location::Object(key) => Some(key.clone()),
                _ => None,
            }),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::model::job::{ChangeToken, Hash, JobId, Lease, Status, StepOutput, WorkerId};

    fn output(name: &str, location: Location) -> StepOutput {
        StepOutput {
            name: name.to_string(),
            location,
            size: 10,
            blake3: Hash([3; 32]),
            change_token: ChangeToken::None,
        }
    }

    fn checkpoint(step: &str, outputs: Vec<StepOutput>) -> Checkpoint {
        Checkpoint {
            step: step.to_string(),
            definition_hash: Hash([1; 32]),
            input_hash: Hash([2; 32]),
            outputs,
            recorded_at: Timestamp(5),
        }
    }

    fn running_job() -> Job {
        let mut job = machine::new_job(
            JobId(9),
            "key".to_string(),
            "https://cdn.example.com/a.mp4".to_string(),
            "ingest".to_string(),
            0,
            Timestamp(1),
        )
        .job;
        job.status = Status::Running;
        job.fencing_token = 4;
        job.lease = Some(Lease {
            worker_id: WorkerId("w:1".to_string()),
            expires_at: Timestamp(60_000),
            fencing_token: 4,
        });
        job
    }

    fn stored() -> Checkpoint {
        checkpoint(
            STORE_STEP,
            vec![
                output("audio", Location::Object("blobs/aa/aaaa.opus".to_string())),
                output(
                    "manifest",
                    Location::Object("jobs/x/manifest.json".to_string()),
                ),
                output("scratch", Location::Scratch("/s/original".into())),
            ],
        )
    }

    // Guards the blob index's rule: only `blobs/` objects count, never a manifest or scratch file.
    #[test]
    fn only_blobs_are_referenced() {
        assert_eq!(
            referenced_blobs(&stored()).collect::<Vec<_>>(),
            vec!["blobs/aa/aaaa.opus"]
        );
    }

    // Guards the tombstone: the blobs stay referenced, and the manifest is named.
    #[test]
    fn a_tombstone_keeps_the_blobs_and_the_manifest() {
        let mut job = running_job();
        job.status = Status::Succeeded;
        job.lease = None;
        let tombstone = tombstone(&job, Some(&stored()), Timestamp(77));
        assert_eq!(tombstone.blobs, vec!["blobs/aa/aaaa.opus".to_string()]);
        assert_eq!(tombstone.manifest.as_deref(), Some("jobs/x/manifest.json"));
        assert_eq!((tombstone.id, tombstone.pruned_at), (job.id, Timestamp(77)));
        let bare = super::tombstone(&job, None, Timestamp(77));
        assert!(bare.blobs.is_empty() && bare.manifest.is_none());
    }

    // Guards a checkpoint's write: fenced under a stale token; the store step moves the blob
    // index; a suspect's mark clears; the two events, in order.
    #[test]
    fn a_checkpoint_is_written_under_the_current_lease_only() {
        let mut job = running_job();
        job.attribution.suspect = true;
        let token = LeaseToken {
            job_id: job.id,
            fencing_token: 4,
        };
        let write = record_checkpoint(&job, &token, &stored()).expect("current lease");
        assert!(write.blob_refs);
        assert!(!write.job.attribution.suspect);
        assert_eq!(
            write.events.iter().map(EventKind::name).collect::<Vec<_>>(),
            vec!["step_completed", "checkpoint_recorded"]
        );
        let download = checkpoint("download", Vec::new());
        assert!(
            !record_checkpoint(&job, &token, &download)
                .expect("current lease")
                .blob_refs
        );
        let stale = LeaseToken {
            fencing_token: 3,
            ..token
        };
        assert!(matches!(
            record_checkpoint(&job, &stale, &download),
            Err(Rejected::Fenced { presented: 3, .. })
        ));
    }

    #[test]
    fn events_are_numbered_from_events_next_until_the_sequence_ends() {
        let mut job = running_job();
        job.events_next = 7;
        let kinds = vec![
            EventKind::StepStarted {
                step: "download".into(),
            },
            EventKind::StepStarted {
                step: "extract".into(),
            },
        ];
        let events = number_events(&mut job, kinds.clone(), Timestamp(3)).expect("room");
        assert_eq!(
            events.iter().map(|event| event.seq).collect::<Vec<_>>(),
            vec![7, 8]
        );
        assert_eq!(job.events_next, 9);
        job.events_next = u64::MAX;
        assert_eq!(
            number_events(&mut job, kinds, Timestamp(3)),
            Err(SequenceExhausted)
        );
    }

    // Guards a compaction's end: the summary is written only once every event it took was
    // folded, and a history just compacted needs none.
    #[test]
    fn a_compaction_folds_every_event_it_takes() {
        let job_id = JobId(9);
        let at = |seq| Event {
            seq,
            at: Timestamp(1),
            kind: EventKind::StepStarted {
                step: "download".into(),
            },
        };
        assert_eq!(compaction(job_id, 8, None, 8), None);
        let mut partial = compaction(job_id, 9, None, 8).expect("past the bound");
        assert_eq!((partial.from, partial.until), (0, 3));
        let mut whole = partial.clone();
        partial.fold(&at(0));
        assert_eq!(
            partial.finish(),
            Err("compaction folded events up to 1 instead of 3".to_string())
        );
        for seq in 0..3 {
            whole.fold(&at(seq));
        }
        let summary = whole.finish().expect("all folded");
        assert_eq!(summary.events_compacted, 3);
        assert_eq!(compaction(job_id, 9, Some(summary), 8), None);
    }

    proptest! {
        // Guards the compaction point: compaction happens only past the bound, leaves
        // `events_kept` events, never folds fewer than it held past the bound, and a history just
        // compacted is not compacted again until it grows past the bound.
        #[test]
        fn compaction_leaves_events_kept_and_only_past_the_bound(
            events_max in 1u64..2_000,
            compacted in 0u64..10_000,
            held in 0u64..5_000,
        ) {
            let events_next = compacted + held;
            match fold_until(events_next, compacted, events_max) {
                None => prop_assert!(held <= events_max),
                Some(until) => {
                    prop_assert!(held > events_max);
                    prop_assert!(may_exceed(events_next, events_max));
                    prop_assert!(until > compacted);
                    prop_assert_eq!(events_next - until, events_kept(events_max));
                    prop_assert!(events_kept(events_max) <= events_max);
                    prop_assert_eq!(fold_until(events_next, until, events_max), None);
                }
            }
        }
    }
}
