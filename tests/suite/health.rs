//! `narra health`: each escalation signal is reported when it is induced, and the report is clean
//! (exit 0) otherwise.

use serde_json::Value;

use super::fixture::{Home, Origin, StallingOrigin, id_of, sample_video};

fn escalations(report: &Value) -> Vec<String> {
    report["escalations"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|name| name.as_str().unwrap().to_string())
        .collect()
}

// Guards the host signal: three jobs refused by one host escalate with their count and class,
// a higher threshold does not, and a home with only succeeded jobs is clean.
#[test]
fn a_host_with_repeated_failures_escalates_and_a_clean_home_does_not() {
    let home = Home::new();
    let origin = Origin::start();
    let good = origin.serve_video("good.mp4", sample_video());
    home.json(&["ingest", &good], 0);
    let clean = home.json(&["health"], 0);
    assert_eq!(clean["escalate"], false, "{clean}");
    assert_eq!(escalations(&clean), Vec::<String>::new());
    assert_eq!(clean["storage"]["reachable"], true);

    for name in ["a.mp4", "b.mp4", "c.mp4"] {
        origin.fail_with(name, 403);
    }
    home.json(
        &[
            "ingest",
            &origin.url("a.mp4"),
            &origin.url("b.mp4"),
            &origin.url("c.mp4"),
        ],
        1,
    );
    let report = home.json(&["health"], 1);
    assert_eq!(escalations(&report), vec!["failing_hosts"], "{report}");
    let host = &report["failing_hosts"][0];
    assert_eq!(host["host"], origin.addr.to_string());
    assert_eq!(host["failures"], 3);
    assert_eq!(host["classes"]["download_blocked"], 3);
    assert_eq!(host["escalate"], true);

    let relaxed = home.json(&["health", "--host-failures-min", "4"], 0);
    assert_eq!(relaxed["escalate"], false, "{relaxed}");
    assert_eq!(relaxed["failing_hosts"][0]["failures"], 3, "still reported");

    let text = home.narra(&["health"]);
    assert_eq!(text.status.code(), Some(1));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("failing_hosts  ESCALATE"), "{text}");
    assert!(text.contains("escalate: failing_hosts"), "{text}");
}

// Guards the storage signal: a backend that does not answer escalates.
#[test]
fn unreachable_storage_escalates() {
    let home = Home::new();
    let output = home.narra_env(
        &[
            "--json",
            "--storage",
            "s3://bucket/prefix?endpoint=http://127.0.0.1:1&region=us-east-1&path_style=true",
            "health",
        ],
        &[
            ("AWS_ACCESS_KEY_ID", "narra-test"),
            ("AWS_SECRET_ACCESS_KEY", "narra-test"),
        ],
    );
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(escalations(&report), vec!["storage"], "{report}");
    assert_eq!(report["storage"]["reachable"], false);
}

// Guards the stuck signal: a job left running by a killed worker is reported as stuck.
#[test]
fn a_stuck_job_escalates() {
    let home = Home::new();
    let origin = StallingOrigin::start(std::fs::read(sample_video()).unwrap());
    let submitted = home.json(&["submit", &origin.url], 0);
    let id = id_of(&submitted[0]);
    let mut worker = home.spawn(&["worker"]);
    origin.wait_for_stall();
    worker.kill();

    let report = home.json(&["health", "--stuck-after-s", "0"], 1);
    assert_eq!(escalations(&report), vec!["stuck_jobs"], "{report}");
    assert_eq!(id_of(&report["stuck"][0]), id);
}
