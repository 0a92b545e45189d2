//! Scheduling across runs: the circuit breaker of a refusing host, automatic retries of transient
//! failures, priorities, and crash-loop quarantine of a job that kills its worker.

use std::time::Duration;

use serde_json::Value;

use super::fixture::{Home, Origin, id_of, sample_video, wait_until};

/// Writes `<home dir>/workflows/ingest.toml`: the built-in ingest workflow whose download tries
/// once (each failure is one job attempt) and whose jobs get `job_attempts` runs.
fn workflows(home: &Home, job_attempts: u32) -> String {
    const BUILTIN: &str = include_str!("../../workflows/ingest.toml");
    const DOWNLOAD_PARAMS: &str =
        "params = { connect_timeout_s = 10, read_timeout_s = 30, total_timeout_s = 21600 }";
    assert!(BUILTIN.contains(DOWNLOAD_PARAMS), "{BUILTIN}");
    assert!(BUILTIN.contains("\nattempts_max = 3\n"), "{BUILTIN}");
    let text = BUILTIN
        .replacen(
            DOWNLOAD_PARAMS,
            "params = { connect_timeout_s = 5, read_timeout_s = 5, attempts_max = 1 }",
            1,
        )
        .replacen(
            "\nattempts_max = 3\n",
            &format!("\nattempts_max = {job_attempts}\n"),
            1,
        );
    let dir = home.dir.path().join("workflows");
    std::fs::create_dir_all(&dir).expect("create the workflows directory");
    std::fs::write(dir.join("ingest.toml"), text).expect("write ingest.toml");
    dir.to_str().expect("a UTF-8 path").to_string()
}

/// When the job was first claimed (its first `status_changed` to running).
fn first_claim_at(show: &Value) -> chrono::DateTime<chrono::FixedOffset> {
    let events = show["events"].as_array().expect("events");
    let claim = events
        .iter()
        .find(|event| event["kind"] == "status_changed" && event["to"] == "running")
        .unwrap_or_else(|| panic!("the job was claimed: {events:?}"));
    parse_time(&claim["at"])
}

fn parse_time(value: &Value) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(value.as_str().expect("a time")).expect("RFC 3339")
}

// Guards the circuit breaker end to end: three 403s in a row from one host open it; the host's
// other jobs are held (never requested, no attempt spent) for the cool-down, then one probe runs,
// and once the host answers they all succeed. The opening is in the incident log.
#[test]
fn a_refusing_hosts_jobs_are_held_by_its_breaker_and_succeed_after_it_recovers() {
    let home = Home::new();
    let origin = Origin::start();
    let paths: Vec<String> = (0..8).map(|index| format!("media/{index}.mp4")).collect();
    let mut manifest = String::new();
    for path in &paths {
        manifest.push_str(&origin.serve_video(path, sample_video()));
        manifest.push('\n');
        origin.fail_with(path, 403);
    }
    let manifest_path = home.dir.path().join("list.txt");
    std::fs::write(&manifest_path, manifest).expect("write the manifest");
    let dir = workflows(&home, 1);

    let mut backfill = home.command(&[
        "--json",
        "--workflows",
        &dir,
        "backfill",
        manifest_path.to_str().expect("UTF-8"),
        "--concurrency",
        "1",
        "--breaker-failures",
        "3",
        // Long enough that the test heals the host within it even on a loaded machine.
        "--breaker-cooldown-ms",
        "4000",
    ]);
    let child = backfill
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("narra starts");
    // The third refusal opens the breaker; the host recovers while its other jobs are held.
    let refused = || paths.iter().map(|path| origin.gets(path)).sum::<usize>();
    wait_until("three jobs were refused", || refused() >= 3);
    for path in &paths {
        origin.heal(path);
    }
    let output = child.wait_with_output().expect("the backfill ends");
    assert_eq!(
        output.status.code(),
        Some(1),
        "three jobs failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_slice(&output.stdout).expect("a JSON summary");
    assert_eq!(summary["by_status"]["failed"], 3, "{summary}");
    assert_eq!(summary["by_status"]["succeeded"], 5, "{summary}");
    assert_eq!(
        summary["failures_by_class"],
        serde_json::json!({"download_blocked": 3})
    );

    let incidents = home.json(&["incidents"], 0);
    let opened: Vec<&Value> = incidents
        .as_array()
        .expect("a list")
        .iter()
        .filter(|incident| incident["action"] == "circuit_opened")
        .collect();
    assert_eq!(opened.len(), 1, "{incidents}");
    let opened_at = parse_time(&opened[0]["at"]);
    let jobs = home.json(&["jobs", "--status", "succeeded"], 0);
    for job in jobs.as_array().expect("a list") {
        let show = home.show(&id_of(job));
        assert_eq!(show["attempts"], 1, "held jobs spent no attempt: {show}");
        assert!(
            first_claim_at(&show) - opened_at >= chrono::Duration::milliseconds(3_900),
            "no job of the host started during the cool-down: {show}"
        );
    }
    for path in &paths {
        assert!(
            origin.gets(path) <= 1,
            "{path} requested {}",
            origin.gets(path)
        );
    }
}

// Guards automatic retries: a transient failure (a 500) is retried after a delay, by the same
// run, up to the workflow's attempts_max; the last error stays visible on a job that is waiting.
#[test]
fn a_transient_failure_is_retried_automatically_until_attempts_max() {
    let home = Home::new();
    let origin = Origin::start();
    let url = origin.serve_video("media/flaky.mp4", sample_video());
    origin.fail_with("media/flaky.mp4", 500);
    let dir = workflows(&home, 3);

    let failed = home.one_job(&["--workflows", &dir, "ingest", &url], 1);
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"]["class"], "server_error");
    assert_eq!(
        origin.gets("media/flaky.mp4"),
        3,
        "three runs, each one request"
    );
    let show = home.show(&id_of(&failed));
    assert_eq!(show["attempts"], 3);
    let retried = show["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|event| {
            event["kind"] == "status_changed"
                && event["to"] == "pending"
                && event["reason"]
                    .as_str()
                    .is_some_and(|reason| reason.contains("retried automatically"))
        })
        .count();
    assert_eq!(retried, 2, "{show}");

    // A host that recovers between attempts: the second run succeeds.
    let home_two = Home::new();
    let url = origin.serve_video("media/recovers.mp4", sample_video());
    origin.fail_with("media/recovers.mp4", 503);
    let mut child = home_two.command(&["--json", "--workflows", &dir, "ingest", &url]);
    let child = child
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("narra starts");
    wait_until("the first attempt was refused", || {
        origin.gets("media/recovers.mp4") >= 1
    });
    origin.heal("media/recovers.mp4");
    let output = child.wait_with_output().expect("narra ends");
    assert!(output.status.success());
    let jobs: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(jobs[0]["status"], "succeeded", "{jobs}");
    assert_eq!(home_two.show(&id_of(&jobs[0]))["attempts"], 2, "{jobs}");
}

// Guards priorities: a live submission runs before a backfill's older jobs, and a manifest line's
// own priority is honoured.
#[test]
fn live_submissions_go_ahead_of_backfill_jobs() {
    let home = Home::new();
    let origin = Origin::start();
    let backfilled: Vec<String> = (0..3)
        .map(|index| origin.serve_video(&format!("media/b{index}.mp4"), sample_video()))
        .collect();
    let urgent = origin.serve_video("media/urgent.mp4", sample_video());
    let live = origin.serve_video("media/live.mp4", sample_video());
    let manifest = format!(
        "{{\"source\": \"{}\"}}\n{{\"source\": \"{}\"}}\n{{\"source\": \"{}\"}}\n{{\"source\": \"{urgent}\", \"priority\": 50}}\n",
        backfilled[0], backfilled[1], backfilled[2]
    );
    let manifest_path = home.dir.path().join("list.jsonl");
    std::fs::write(&manifest_path, manifest).expect("write the manifest");
    // Submitted, not run: `backfill` runs what it submits, so the queue is filled by `submit`
    // with the backfill's default priority, then by a live submission.
    let mut submit = vec!["submit", "--priority", "0"];
    submit.extend(backfilled.iter().map(String::as_str));
    home.json(&submit, 0);
    std::thread::sleep(Duration::from_millis(5));
    home.json(&["submit", &live], 0);

    let (summary, _) = {
        let output = home.narra(&[
            "--json",
            "backfill",
            manifest_path.to_str().expect("UTF-8"),
            "--concurrency",
            "1",
        ]);
        assert!(output.status.success());
        let summary: Value = serde_json::from_slice(&output.stdout).expect("JSON");
        (summary, ())
    };
    assert_eq!(summary["by_status"]["succeeded"], 4, "{summary}");
    let mut claims: Vec<(chrono::DateTime<chrono::FixedOffset>, String)> = home
        .json(&["jobs"], 0)
        .as_array()
        .expect("a list")
        .iter()
        .map(|job| {
            let show = home.show(&id_of(job));
            (
                first_claim_at(&show),
                show["source"].as_str().expect("a source").to_string(),
            )
        })
        .collect();
    claims.sort();
    let order: Vec<&str> = claims.iter().map(|(_, source)| source.as_str()).collect();
    assert_eq!(
        order[0], urgent,
        "the line with priority 50 first: {order:?}"
    );
    assert_eq!(order[1], live, "then the live submission: {order:?}");
    assert_eq!(&order[2..], &backfilled[..], "then the rest, oldest first");
}

// Guards crash-loop quarantine: a job whose start kills the worker (a failpoint armed for its
// source) is failed as crash_loop after the third death, and the other jobs then finish.
#[test]
fn a_job_that_kills_its_worker_three_times_is_quarantined_and_the_others_finish() {
    let deaths = quarantine_the_poison(1, 2, false);
    assert_eq!(deaths, 3, "alone, every death is the poisonous job's");
}

// Guards the attribution of deaths (`model::attribution`): with 4 jobs at once, the poisonous job
// is claimed last, beside 3 healthy ones, and kills the worker while they run; that death charges
// none of them, they become suspects and run alone, so the poisonous job is quarantined after its
// third death alone (a fourth in all at most) and exactly it: every healthy job succeeds. (Before
// attribution, the healthy jobs died with it at the same point each time and were quarantined too.)
#[test]
fn a_poisonous_job_among_others_is_quarantined_and_only_it() {
    let deaths = quarantine_the_poison(4, 3, true);
    assert!(
        (3..=4).contains(&deaths),
        "one uncharged death beside others at most, then three alone: {deaths}"
    );
}

/// Runs `worker --drain --concurrency CONCURRENCY` again and again over a poisonous job (its start
/// kills the process) and `good` healthy ones, claimed before it if `poison_last` and after it
/// otherwise, until a worker exits on its own; checks that the poisonous job alone ended as
/// `crash_loop` and the others succeeded; returns the deaths.
fn quarantine_the_poison(concurrency: usize, good: usize, poison_last: bool) -> usize {
    let home = Home::new();
    let origin = Origin::start();
    let poison = origin.serve_video("media/poison.mp4", sample_video());
    let good: Vec<String> = (0..good)
        .map(|index| origin.serve_video(&format!("media/good{index}.mp4"), sample_video()))
        .collect();
    let (poison_priority, good_priority) = if poison_last {
        ("0", "100")
    } else {
        ("100", "0")
    };
    let poisoned = home.one_job(&["submit", "--priority", poison_priority, &poison], 0);
    let mut submit = vec!["submit", "--priority", good_priority];
    submit.extend(good.iter().map(String::as_str));
    home.json(&submit, 0);

    let concurrency = concurrency.to_string();
    let mut deaths = 0;
    loop {
        let output = home.narra_env(
            &["worker", "--drain", "--concurrency", &concurrency],
            &[("NARRA_FAILPOINT", "job.start%poison")],
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("failpoint fired: job.start") {
            deaths += 1;
            assert!(deaths <= 4, "the poisonous job ran a fifth time:\n{stderr}");
            continue;
        }
        assert!(output.status.success(), "{stderr}");
        break;
    }
    let show = home.show(&id_of(&poisoned));
    assert_eq!(show["status"], "failed", "{show}");
    assert_eq!(show["error"]["class"], "crash_loop", "{show}");
    assert_eq!(
        origin.gets("media/poison.mp4"),
        0,
        "it never got past its start"
    );
    let succeeded = home.json(&["jobs", "--status", "succeeded"], 0);
    assert_eq!(
        succeeded.as_array().map(Vec::len),
        Some(good.len()),
        "{succeeded}"
    );
    let health = home.json(&["health"], 1);
    let crash_loops: Vec<&Value> = health["crash_loops"]
        .as_array()
        .expect("a list")
        .iter()
        .collect();
    assert_eq!(
        crash_loops,
        vec![&Value::String(id_of(&poisoned))],
        "{health}"
    );
    deaths
}

// Guards the other half of the rule: a job whose worker dies three times, each time further on
// (after its download, after its extraction, while storing), is never quarantined, and finishes.
#[test]
fn a_job_killed_three_times_while_making_progress_is_not_quarantined() {
    let home = Home::new();
    let origin = Origin::start();
    let url = origin.serve_video("media/long.mp4", sample_video());
    let job = home.one_job(&["submit", &url], 0);
    for failpoint in [
        "download.checkpoint.after",
        "extract.checkpoint.after",
        "store.manifest.before",
    ] {
        let output = home.narra_env(&["worker", "--drain"], &[("NARRA_FAILPOINT", failpoint)]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!("failpoint fired: {failpoint}")),
            "{stderr}"
        );
    }
    let output = home.narra(&["worker", "--drain"]);
    assert!(output.status.success());
    let show = home.show(&id_of(&job));
    assert_eq!(show["status"], "succeeded", "{show}");
    assert_eq!(show["attempts"], 4);
}

// Guards the scratch reserve: a download that would leave less free scratch space than the
// workflow's reserve is not started; the job waits pending (no attempt spent, no partial file),
// `health` says why while the worker runs, and once space is there (here: a smaller reserve) it
// succeeds.
#[test]
fn a_download_waits_for_scratch_space_and_health_says_why() {
    const BUILTIN: &str = include_str!("../../workflows/ingest.toml");
    const DOWNLOAD_PARAMS: &str =
        "params = { connect_timeout_s = 10, read_timeout_s = 30, total_timeout_s = 21600 }";
    let home = Home::new();
    let origin = Origin::start();
    let url = origin.serve_video("media/big.mp4", sample_video());
    let dir = home.dir.path().join("workflows");
    std::fs::create_dir_all(&dir).expect("create the workflows directory");
    let write_reserve = |reserve_mb: u64| {
        let text = BUILTIN.replacen(
            DOWNLOAD_PARAMS,
            &format!("params = {{ scratch_reserve_mb = {reserve_mb} }}"),
            1,
        );
        std::fs::write(dir.join("ingest.toml"), text).expect("write ingest.toml");
    };
    // A reserve no disk has: 100 TiB.
    write_reserve(100 * 1024 * 1024);
    let dir_arg = dir.to_str().expect("UTF-8").to_string();
    let job = home.one_job(&["--workflows", &dir_arg, "submit", &url], 0);
    let id = id_of(&job);

    // Held and served before the first `show`, which would otherwise race the worker for the home.
    let worker = home.spawn_holder(&["--workflows", &dir_arg, "worker"]);
    wait_until("the job waits for scratch space", || {
        let show = home.show(&id);
        show["status"] == "pending" && show["error"]["class"] == "scratch_low"
    });
    let health = home.json(&["health"], 1);
    let waiting = health["waiting_for_scratch"].as_array().expect("a list");
    assert_eq!(waiting.len(), 1, "{health}");
    assert_eq!(waiting[0]["id"], id.as_str());
    assert!(
        health["escalations"]
            .as_array()
            .expect("a list")
            .iter()
            .any(|name| name == "scratch_space"),
        "{health}"
    );
    let show = home.show(&id);
    assert_eq!(show["attempts"], 0, "waiting spends no attempt: {show}");
    assert!(
        !home
            .path()
            .join("scratch")
            .join(&id)
            .join("original.part")
            .exists(),
        "no download was started"
    );
    assert!(worker.interrupt_and_wait().success());

    write_reserve(1);
    let output = home.narra(&["--workflows", &dir_arg, "worker", "--drain"]);
    assert!(output.status.success());
    let show = home.show(&id);
    assert_eq!(show["status"], "succeeded", "{show}");
    assert_eq!(show["attempts"], 1, "{show}");
}
