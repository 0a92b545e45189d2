//! The runbook's status/phase table, observed from a real job's events.

use serde_json::Value;

use super::fixture::{Home, JobState, Origin, id_of, replayed_states, sample_video, state};

// Guards the runbook's table: start -> running/downloading, audio extraction -> running/processing,
// persisting -> running/storing, success -> succeeded/null, in that order.
#[test]
fn a_succeeding_job_goes_through_every_row_of_the_phase_table_in_order() {
    let home = Home::new();
    let origin = Origin::start();
    let url = origin.serve_video("sample.mp4", sample_video());

    let job = home.one_job(&["ingest", &url], 0);

    let states = replayed_states(&home.show(&id_of(&job)));
    let table = [
        state("running", Some("downloading")),
        state("running", Some("processing")),
        state("running", Some("storing")),
        state("succeeded", None),
    ];
    assert_in_order(&states, &table);
    assert_eq!(states.last(), Some(&state("succeeded", None)));
}

// Guards the failure row of the table: a job whose download fails (404) ends failed with no phase,
// its error classified, and `ingest` reports it with exit 1.
#[test]
fn a_failing_job_ends_failed_with_no_phase() {
    let home = Home::new();
    let origin = Origin::start();
    let url = origin.url("missing.mp4");

    let job = home.one_job(&["ingest", &url], 1);

    assert_eq!(job["status"], "failed");
    assert_eq!(job["source"], url.as_str());
    let show = home.show(&id_of(&job));
    assert_eq!(show["status"], "failed");
    assert_eq!(show["ingestion_phase"], Value::Null);
    assert_eq!(show["error"]["class"], "not_found", "{}", show["error"]);
    let states = replayed_states(&show);
    assert_in_order(&states, &[state("running", Some("downloading"))]);
    assert_eq!(states.last(), Some(&state("failed", None)));
}

// Guards the ownership rule as the event history tells it: replaying a job's events one by one
// never passes through a state with a phase and a status other than running.
#[test]
fn no_event_leaves_a_phase_on_a_status_other_than_running() {
    let home = Home::new();
    let origin = Origin::start();
    let good = origin.serve_video("sample.mp4", sample_video());
    let missing = origin.url("missing.mp4");

    let jobs = home.json(&["ingest", &good, &missing], 1);

    let mut violations = Vec::new();
    for job in jobs.as_array().expect("a list of jobs") {
        let states = replayed_states(&home.show(&id_of(job)));
        for (index, (status, phase)) in states.iter().enumerate() {
            if phase.is_some() && status.as_deref() != Some("running") {
                violations.push(format!(
                    "{} job {}: after status/phase event {index}, status {status:?} with phase \
                     {phase:?} (replayed states: {states:?})",
                    job["status"], job["id"]
                ));
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

/// Asserts that `expected` occurs in `observed` in order (other states may come in between).
fn assert_in_order(observed: &[JobState], expected: &[JobState]) {
    let mut remaining = observed.iter();
    for wanted in expected {
        assert!(
            remaining.any(|seen| seen == wanted),
            "{wanted:?} is not observed (in order) in {observed:?}"
        );
    }
}
