//! Resume: a failed job is retried from its last done step.

use super::fixture::{
    Home, Origin, checkpoint, id_of, last_seq, sample_video, step_events_after, steps,
};

// Guards resumption: after the store step fails on an unwritable storage path and the fault is
// removed, `retry` skips download and extract (no second GET, ffmpeg not run) and succeeds.
#[test]
fn a_job_failed_in_store_resumes_from_store_after_the_fault_is_removed() {
    let home = Home::new();
    let origin = Origin::start();
    let url = origin.serve_video("videos/sample.mp4", sample_video());
    home.block_storage();

    let failed = home.one_job(&["ingest", &url], 1);

    let id = id_of(&failed);
    assert_eq!(failed["status"], "failed");
    assert_eq!(
        failed["error"]["class"], "storage_error",
        "{}",
        failed["error"]
    );
    let failed_show = home.show(&id);
    assert_eq!(failed_show["artifacts"], serde_json::json!([]));
    let failed_seq = last_seq(&failed_show);

    home.unblock_storage();
    let retried = home.one_job(&["retry", &id], 0);

    assert_eq!(retried["id"], id.as_str());
    assert_eq!(retried["status"], "succeeded");
    let show = home.show(&id);
    assert_eq!(show["status"], "succeeded");
    assert_eq!(
        step_events_after(&show, failed_seq),
        steps(&[
            ("step_skipped", "download"),
            ("step_skipped", "extract"),
            ("step_started", "store"),
            ("step_completed", "store"),
        ])
    );
    // The body was requested once, by the first attempt.
    let requests = origin.requests();
    assert_eq!(origin.gets("videos/sample.mp4"), 1, "{requests:?}");
    assert_eq!(requests.len(), 1, "{requests:?}");
    // ffmpeg did not run again: the extract checkpoint is the one the first attempt recorded.
    assert_eq!(
        checkpoint(&show, "extract")["recorded_at"],
        checkpoint(&failed_show, "extract")["recorded_at"]
    );
    assert_eq!(
        checkpoint(&show, "extract"),
        checkpoint(&failed_show, "extract")
    );
    assert_eq!(
        checkpoint(&show, "download"),
        checkpoint(&failed_show, "download")
    );
    // The store checkpoint is now durable, so scratch is gone.
    assert!(
        !home.path().join("scratch").join(&id).exists(),
        "scratch of {id} was removed"
    );
    assert_eq!(home.json(&["verify", &id], 0)[0]["ok"], true);
}
