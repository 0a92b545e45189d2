//! The queue: `submit` enqueues, `worker --drain` runs what is queued and exits.

use super::fixture::{Home, Origin, id_of, other_video, sample_video};

// Guards the submit/worker split: submitted jobs stay pending without running, and a draining
// worker runs every one of them to success, then exits 0.
#[test]
fn a_draining_worker_runs_every_submitted_job() {
    let home = Home::new();
    let origin = Origin::start();
    let first = origin.serve_video("one.mp4", sample_video());
    let second = origin.serve_video("two.mp4", other_video());
    let submitted = home.json(&["submit", &first, &second], 0);
    let ids: Vec<String> = submitted.as_array().unwrap().iter().map(id_of).collect();
    assert_eq!(ids.len(), 2);
    for job in submitted.as_array().unwrap() {
        assert_eq!(job["status"], "pending");
    }
    assert_eq!(origin.requests().len(), 0, "submit only enqueues");

    let finished = home.json(&["worker", "--drain", "--concurrency", "2"], 0);

    let mut finished_ids: Vec<String> = finished.as_array().unwrap().iter().map(id_of).collect();
    finished_ids.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(finished_ids, expected);
    for id in &ids {
        assert_eq!(home.show(id)["status"], "succeeded");
    }
    assert_eq!(origin.gets("one.mp4"), 1);
    assert_eq!(origin.gets("two.mp4"), 1);

    let idle = home.json(&["worker", "--drain"], 0);
    assert_eq!(
        idle.as_array().map(Vec::len),
        Some(0),
        "nothing left to run"
    );
}
