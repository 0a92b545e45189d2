//! Submission by idempotency key: what a `submit` does, decided once for every store.
//!
//! A key names at most one job. A submission of a key that has none creates a pending job; of a
//! key whose job is pending, running or succeeded, returns the job as it is (a succeeded one goes
//! back to pending only when a re-ingest is asked); of a key whose job failed or was cancelled,
//! retries it, unless the submission is a backfill's re-run that leaves permanent failures and
//! cancelled jobs alone ([`Resubmit::TransientFailures`]).
//!
//! Pure: a store reads the job the key names (in the transaction that will write the result),
//! calls [`create`] when there is none and [`resubmit`] when there is one, and writes the
//! transition it returns. It never decides a submission's outcome itself.

use crate::model::job::{Job, JobId, Status, Timestamp};
use crate::model::machine::{self, OrchestratorOp, Rejected, Transition};

/// What `submit` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitRequest {
    pub key: String,
    pub source: String,
    pub workflow: String,
    /// Re-run a succeeded job's workflow; done steps are skipped.
    pub reingest: bool,
    /// The new job's priority (`Job::priority`); an existing job keeps its own.
    pub priority: i32,
}

/// What `submit` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitOutcome {
    /// No job had this key: a new pending job.
    Created,
    /// A job with this key is pending, running or succeeded: returned as it is.
    Existing,
    /// A job with this key had failed or was cancelled: it is pending again.
    Retried,
    /// A succeeded job was sent back to pending because `reingest` was asked.
    Reingested,
}

/// Which finished, unsucceeded jobs a submission of their key sends back to pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resubmit {
    /// Failed and cancelled jobs alike: what `submit` always does.
    #[default]
    FailedAndCancelled,
    /// Only failed jobs whose error class is transient (`machine::is_transient_failure`): a
    /// backfill re-run without `--retry-permanent`. Permanent failures and cancelled jobs are
    /// returned as they are, with the outcome `Existing`.
    TransientFailures,
}

/// A submission that sends the key's job back to pending.
#[derive(Debug, Clone, PartialEq)]
pub struct Resubmission {
    pub transition: Transition,
    /// `Retried` or `Reingested`.
    pub outcome: SubmitOutcome,
}

/// The machine refused the transition a submission chose: the job changed in a way the decision
/// did not foresee, a bug the store reports as a corrupt record rather than writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the state machine refused {op} during submit: {rejected}")]
pub struct SubmitRefused {
    pub op: &'static str,
    pub rejected: Rejected,
}

/// The new pending job of a submission whose key has none ([`SubmitOutcome::Created`]), with a
/// fresh id; the store records the key as naming it.
pub fn create(request: &SubmitRequest, now: Timestamp) -> Transition {
    machine::new_job(
        JobId::new(),
        request.key.clone(),
        request.source.clone(),
        request.workflow.clone(),
        request.priority,
        now,
    )
}

/// What a submission of `request` does to `job`, the job its key names, under `rule`: `None`
/// keeps the job as it is ([`SubmitOutcome::Existing`]).
pub fn resubmit(
    job: &Job,
    request: &SubmitRequest,
    rule: Resubmit,
    now: Timestamp,
) -> Result<Option<Resubmission>, SubmitRefused> {
    let (op, outcome) = match job.status {
        Status::Pending | Status::Running => return Ok(None),
        Status::Succeeded if !request.reingest => return Ok(None),
        Status::Succeeded => (OrchestratorOp::Reingest, SubmitOutcome::Reingested),
        // A backfill re-run leaves permanent failures and cancelled jobs alone.
        Status::Failed | Status::Cancelled
            if rule == Resubmit::TransientFailures
                && !(job.status == Status::Failed
                    && machine::is_transient_failure(job.error.as_ref())) =>
        {
            return Ok(None);
        }
        Status::Failed | Status::Cancelled => (
            OrchestratorOp::Retry {
                reason: "re-submitted".into(),
            },
            SubmitOutcome::Retried,
        ),
    };
    let transition =
        machine::apply_orchestrator(job, &op, now).map_err(|rejected| SubmitRefused {
            op: op.name(),
            rejected,
        })?;
    Ok(Some(Resubmission {
        transition,
        outcome,
    }))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::model::job::ErrorInfo;

    fn request(reingest: bool) -> SubmitRequest {
        SubmitRequest {
            key: "key".to_string(),
            source: "https://cdn.example.com/a.mp4".to_string(),
            workflow: "ingest".to_string(),
            reingest,
            priority: 3,
        }
    }

    fn job(status: Status, class: Option<&str>) -> Job {
        let mut job = create(&request(false), Timestamp(1_000)).job;
        job.status = status;
        job.error = class.map(|class| ErrorInfo {
            class: class.to_string(),
            message: "it broke".to_string(),
        });
        job
    }

    /// What a submission of a key whose job is `job` says it did.
    fn outcome(job: &Job, reingest: bool, rule: Resubmit) -> SubmitOutcome {
        match resubmit(job, &request(reingest), rule, Timestamp(2_000)) {
            Ok(None) => SubmitOutcome::Existing,
            Ok(Some(resubmission)) => {
                assert_eq!(resubmission.transition.job.status, Status::Pending);
                assert_eq!(resubmission.transition.job.id, job.id);
                resubmission.outcome
            }
            Err(refused) => panic!("a stored job is never refused: {refused}"),
        }
    }

    // Guards the new job: pending, with the request's fields, a `submitted` and a status event.
    #[test]
    fn a_key_with_no_job_creates_a_pending_one() {
        let transition = create(&request(false), Timestamp(7));
        let job = transition.job;
        assert_eq!(
            (job.status, job.key.as_str(), job.priority, job.created_at),
            (Status::Pending, "key", 3, Timestamp(7))
        );
        assert_eq!(
            transition
                .events
                .iter()
                .map(|event| event.name())
                .collect::<Vec<_>>(),
            vec!["submitted", "status_changed"]
        );
        assert_ne!(create(&request(false), Timestamp(7)).job.id, job.id);
    }

    // Guards the transitions table of docs/ARCHITECTURE.md for a key that has a job, and the
    // backfill re-run, which retries only a failure of a transient class.
    #[test]
    fn the_outcome_of_each_status_is_the_documented_one() {
        use Resubmit::{FailedAndCancelled as All, TransientFailures as Transient};
        use SubmitOutcome::*;
        let cases = [
            (Status::Pending, None, false, All, Existing),
            (Status::Running, None, true, All, Existing),
            (Status::Succeeded, None, false, All, Existing),
            (Status::Succeeded, None, true, All, Reingested),
            (
                Status::Failed,
                Some("download_blocked"),
                false,
                All,
                Retried,
            ),
            (Status::Cancelled, None, false, All, Retried),
            (
                Status::Failed,
                Some("network_timeout"),
                false,
                Transient,
                Retried,
            ),
            (
                Status::Failed,
                Some("corrupt_media"),
                false,
                Transient,
                Existing,
            ),
            (
                Status::Failed,
                Some("from_a_later_narra"),
                false,
                Transient,
                Existing,
            ),
            (Status::Failed, None, false, Transient, Existing),
            (Status::Cancelled, None, false, Transient, Existing),
        ];
        for (status, class, reingest, rule, expected) in cases {
            let existing = job(status, class);
            assert_eq!(
                outcome(&existing, reingest, rule),
                expected,
                "{status} {class:?} reingest={reingest} {rule:?}"
            );
        }
    }

    // Guards the message a store reports when the machine refuses what the decision chose.
    #[test]
    fn a_refusal_names_the_operation() {
        let refused = SubmitRefused {
            op: "retry",
            rejected: Rejected::NotFound(JobId(1)),
        };
        assert_eq!(
            refused.to_string(),
            format!(
                "the state machine refused retry during submit: job {} not found",
                JobId(1)
            )
        );
    }

    fn status() -> impl Strategy<Value = Status> {
        prop::sample::select(Status::ALL.to_vec())
    }

    fn class() -> impl Strategy<Value = Option<&'static str>> {
        prop::sample::select(vec![
            None,
            Some("network_timeout"),
            Some("rate_limited"),
            Some("corrupt_media"),
            Some("crash_loop"),
            Some("from_a_later_narra"),
        ])
    }

    proptest! {
        // Guards the decision against the machine: a submission never refuses a stored job, and
        // a resubmission is exactly the machine's transition of the outcome's operation.
        #[test]
        fn a_resubmission_is_the_machines_transition(
            status in status(),
            class in class(),
            reingest in any::<bool>(),
            transient_only in any::<bool>(),
        ) {
            let job = job(status, class);
            let rule = if transient_only {
                Resubmit::TransientFailures
            } else {
                Resubmit::FailedAndCancelled
            };
            let now = Timestamp(5_000);
            let decided = resubmit(&job, &request(reingest), rule, now)
                .expect("a stored job is never refused");
            let retried = match status {
                Status::Failed => {
                    !transient_only || machine::is_transient_failure(job.error.as_ref())
                }
                Status::Cancelled => !transient_only,
                _ => false,
            };
            let expected = match status {
                Status::Succeeded if reingest => Some(SubmitOutcome::Reingested),
                _ if retried => Some(SubmitOutcome::Retried),
                _ => None,
            };
            prop_assert_eq!(decided.as_ref().map(|resubmission| resubmission.outcome), expected);
            if let Some(Resubmission { transition, outcome }) = decided {
                let op = if outcome == SubmitOutcome::Reingested {
                    OrchestratorOp::Reingest
                } else {
                    OrchestratorOp::Retry {
                        reason: "re-submitted".into(),
                    }
                };
                prop_assert_eq!(Ok(transition), machine::apply_orchestrator(&job, &op, now));
            }
        }
    }
}
