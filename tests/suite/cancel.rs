//! Cancel and retry of a job that has not run yet.

use super::fixture::{Home, Origin, id_of, sample_video};

// Guards the operator's cancel: a pending job becomes cancelled without running, and `retry`
// brings it back and runs it to success.
#[test]
fn a_cancelled_pending_job_can_be_retried_to_success() {
    let home = Home::new();
    let origin = Origin::start();
    let url = origin.serve_video("sample.mp4", sample_video());
    let submitted = home.one_job(&["submit", &url], 0);
    assert_eq!(submitted["status"], "pending");
    let id = id_of(&submitted);

    let cancelled = home.one_job(&["cancel", &id], 0);

    assert_eq!(cancelled["id"], id.as_str());
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(home.show(&id)["status"], "cancelled");
    assert_eq!(
        origin.gets("sample.mp4"),
        0,
        "a cancelled pending job never ran"
    );

    let retried = home.one_job(&["retry", &id], 0);

    assert_eq!(retried["status"], "succeeded");
    let show = home.show(&id);
    assert_eq!(show["status"], "succeeded");
    assert_eq!(show["artifacts"].as_array().map(Vec::len), Some(3));
    assert_eq!(origin.gets("sample.mp4"), 1);
}
