//! The rules a state store's records obey together, whatever the store, for its consistency
//! check (`check_consistency`, run by the tests after every scenario and by `narra doctor`):
//!
//! - a job holds its events numbered from its summary's `events_compacted` (0 without one) to its
//!   `events_next`, with no gap ([`EventSeqs`]);
//! - the blob index holds exactly the `blobs/` objects of the jobs' store checkpoints and of the
//!   pruned jobs' tombstones ([`expected_blob_refs`], [`first_mismatch`]);
//! - a webhook record is due exactly when its pending notice is (`notices::due_at`).
//!
//! Pure: a store reads its records and its indexes, and asks these rules; it names a violation
//! where it found it (its tree or table, and key), in its own words, since only it knows where a
//! record lives. Rules of one store's layout alone (sled's status index and queue, PostgreSQL's
//! columns) stay with that store.

use std::collections::BTreeSet;

use crate::model::job::{Checkpoint, JobId, PrunedJob};
use crate::model::records::referenced_blobs;

/// Walks a job's held events in order, checking their numbers: see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSeqs {
    compacted: u64,
    expected: u64,
}

impl EventSeqs {
    /// The events of a job whose summary folded `compacted` of them (0 without a summary).
    pub fn after(compacted: u64) -> EventSeqs {
        EventSeqs {
            compacted,
            expected: compacted,
        }
    }

    /// The next held event is numbered `seq`; `Err` with the number it should have had.
    pub fn next(&mut self, seq: u64) -> Result<(), u64> {
        if seq != self.expected {
            return Err(self.expected);
        }
        self.expected += 1;
        Ok(())
    }

    /// No more events are held: `Err` with the number after the last one held when the events
    /// held are not exactly `compacted..events_next` (none, when the summary reaches
    /// `events_next` or beyond: a summary that folded more than the job has is a summary's
    /// fault, not its events').
    pub fn end(self, events_next: u64) -> Result<(), u64> {
        let none_held = self.expected == self.compacted;
        if self.expected == events_next || (none_held && self.compacted >= events_next) {
            Ok(())
        } else {
            Err(self.expected)
        }
    }
}

/// The references the blob index must hold, as (blob key, job): one per `blobs/` object of each
/// job's store checkpoint (`checkpoints`, with their jobs) and of each tombstone.
pub fn expected_blob_refs<'a>(
    store_checkpoints: impl IntoIterator<Item = (JobId, &'a Checkpoint)>,
    tombstones: impl IntoIterator<Item = &'a PrunedJob>,
) -> BTreeSet<(String, JobId)> {
    let mut expected = BTreeSet::new();
    for (id, checkpoint) in store_checkpoints {
        expected.extend(referenced_blobs(checkpoint).map(|blob| (blob.to_string(), id)));
    }
    for tombstone in tombstones {
        expected.extend(
            tombstone
                .blobs
                .iter()
                .map(|blob| (blob.clone(), tombstone.id)),
        );
    }
    expected
}

/// Where an index and what it should hold first disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch<T> {
    /// The index holds an entry nothing accounts for.
    Unexpected(T),
    /// An entry the index should hold is missing.
    Missing(T),
}

/// The first entry (in order) the index `found` holds and `expected` lacks, else the first one
/// `expected` holds and `found` lacks; `None` when they agree.
pub fn first_mismatch<'a, T: Ord>(
    expected: &'a BTreeSet<T>,
    found: &'a BTreeSet<T>,
) -> Option<Mismatch<&'a T>> {
    if let Some(extra) = found.difference(expected).next() {
        return Some(Mismatch::Unexpected(extra));
    }
    expected.difference(found).next().map(Mismatch::Missing)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::model::job::{ChangeToken, Hash, Location, Status, StepOutput, Timestamp};

    // Guards the numbering rule: from the summary's end to events_next, with no gap or excess.
    #[test]
    fn held_events_run_from_the_summary_to_events_next() {
        let mut seqs = EventSeqs::after(3);
        assert_eq!(seqs.next(3), Ok(()));
        assert_eq!(seqs.next(4), Ok(()));
        assert_eq!(seqs.end(5), Ok(()));

        let mut gap = EventSeqs::after(3);
        assert_eq!(gap.next(4), Err(3));

        let mut short = EventSeqs::after(0);
        assert_eq!(short.next(0), Ok(()));
        assert_eq!(short.end(2), Err(1));
        assert_eq!(EventSeqs::after(4).end(4), Ok(()));
        // A summary past events_next is the summary's fault, checked with the summary.
        assert_eq!(EventSeqs::after(5).end(3), Ok(()));
    }

    // Guards the blob index rule: store checkpoints' and tombstones' blobs, nothing else.
    #[test]
    fn the_blob_index_holds_the_checkpoints_and_tombstones_blobs() {
        let checkpoint = Checkpoint {
            step: "store".to_string(),
            definition_hash: Hash([1; 32]),
            input_hash: Hash([2; 32]),
            outputs: vec![StepOutput {
                name: "audio".to_string(),
                location: Location::Object("blobs/aa/a.opus".to_string()),
                size: 1,
                blake3: Hash([3; 32]),
                change_token: ChangeToken::None,
            }],
            recorded_at: Timestamp(1),
        };
        let tombstone = PrunedJob {
            id: JobId(2),
            key: "k".to_string(),
            workflow: "ingest".to_string(),
            status: Status::Succeeded,
            created_at: Timestamp(1),
            updated_at: Timestamp(2),
            pruned_at: Timestamp(3),
            blobs: vec!["blobs/aa/a.opus".to_string()],
            manifest: None,
        };
        let expected = expected_blob_refs([(JobId(1), &checkpoint)], [&tombstone]);
        assert_eq!(
            expected.iter().cloned().collect::<Vec<_>>(),
            vec![
                ("blobs/aa/a.opus".to_string(), JobId(1)),
                ("blobs/aa/a.opus".to_string(), JobId(2)),
            ]
        );
    }

    proptest! {
        // Guards the index comparison: it agrees exactly when the sets are equal, an unexpected
        // entry is named before a missing one, and each named entry is the first of its kind.
        #[test]
        fn a_mismatch_names_the_first_difference(
            expected in proptest::collection::btree_set(0u8..20, 0..10),
            found in proptest::collection::btree_set(0u8..20, 0..10),
        ) {
            match first_mismatch(&expected, &found) {
                None => prop_assert_eq!(&expected, &found),
                Some(Mismatch::Unexpected(extra)) => {
                    prop_assert!(!expected.contains(extra));
                    prop_assert_eq!(found.iter().find(|entry| !expected.contains(entry)), Some(extra));
                }
                Some(Mismatch::Missing(missing)) => {
                    prop_assert!(found.is_subset(&expected));
                    prop_assert_eq!(expected.iter().find(|entry| !found.contains(entry)), Some(missing));
                }
            }
        }

        // Guards the numbering walk against the whole-list comparison it stands for.
        #[test]
        fn the_event_walk_accepts_exactly_the_full_run(
            compacted in 0u64..5,
            events_next in 0u64..10,
            seqs in proptest::collection::vec(0u64..10, 0..10),
        ) {
            let mut walk = EventSeqs::after(compacted);
            let accepted = seqs.iter().all(|seq| walk.next(*seq).is_ok()) && walk.end(events_next).is_ok();
            let full: Vec<u64> = (compacted..events_next).collect();
            prop_assert_eq!(accepted, seqs == full);
        }
    }
}
