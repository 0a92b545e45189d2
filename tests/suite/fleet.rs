//! The fleet test: four `narra worker` processes in four homes (four "machines") share one
//! PostgreSQL state store and one S3 bucket (moto, behind the counting proxy of `s3.rs`) and run a
//! backfill of distinct videos. Two workers are SIGKILLed while they hold jobs, and a third is
//! SIGSTOPped while it holds one, kept stopped until another worker has taken that job over (its
//! fencing token advanced), then resumed.
//!
//! Guards the fleet's promises under those faults: every job succeeds once (no job lost, none
//! duplicated), `narra audit` is clean (no verified step redone, no object written twice by the
//! histories), no object key was ever written with different bytes (counted at the storage, by
//! the proxy), `jobs`, `show` and `health` name the worker that holds a running job, and the
//! resumed stale worker's writes were refused by fencing: it records a `fenced_write` incident
//! naming it, its job and its stale token.
//!
//! Behind `NARRA_TEST_FLEET=1` (which `.ci/test` sets, running it as its own suite); without it the
//! test says so and passes without checking anything. `NARRA_TEST_FLEET_JOBS` sizes it (default
//! and CI: 200, the required size; about 80 s on 2 cores). Every wait is on a condition read from
//! the store; a wait fails only when nothing moves for two minutes (a hang), never on a total.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use narra::store::pg_store::test_server::TestServer;
use serde_json::Value;

use super::fixture::{ChildGuard, Home, Origin, id_of, signal};
use super::s3::{CREDENTIALS, Moto, Proxy};

const JOBS_DEFAULT: usize = 200;
/// Short, so a stopped worker loses its jobs within seconds.
const LEASE_TTL_MS: &str = "3000";
const CONCURRENCY: &str = "2";
/// Below the lease length: see [`fleet_state_uri`].
const IDLE_IN_TRANSACTION_MS: u64 = 1000;
/// A wait fails when the condition's progress figure has not moved for this long.
const STALL_MAX: Duration = Duration::from_secs(120);

/// The settings every process of the fleet shares.
struct Fleet {
    env: Vec<(&'static str, String)>,
}

impl Fleet {
    fn command(&self, home: &Home, args: &[&str]) -> Command {
        let mut command = home.command(args);
        command
            .envs(self.env.iter().map(|(name, value)| (*name, value.as_str())))
            .envs(CREDENTIALS)
            .env_remove("AWS_PROFILE");
        command
    }

    /// `narra --json ARGS`, asserting success, parsed.
    fn json(&self, home: &Home, args: &[&str]) -> Value {
        self.json_exiting(home, args, &[0])
    }

    /// `narra --json ARGS`, asserting one of the exit codes `codes`, parsed.
    fn json_exiting(&self, home: &Home, args: &[&str], codes: &[i32]) -> Value {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let output = self.command(home, &full).output().expect("narra runs");
        assert!(
            output
                .status
                .code()
                .is_some_and(|code| codes.contains(&code)),
            "narra {full:?}\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
            panic!(
                "stdout of narra {full:?} is not JSON ({error}):\n{}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }

    fn jobs(&self, home: &Home, status: Option<&str>) -> Vec<Value> {
        let mut args = vec!["jobs", "--limit", "100000"];
        if let Some(status) = status {
            args.extend(["--status", status]);
        }
        self.json(home, &args)
            .as_array()
            .expect("a list of jobs")
            .clone()
    }

    fn incidents(&self, home: &Home) -> Vec<Value> {
        self.json(home, &["incidents"])
            .as_array()
            .expect("a list of incidents")
            .clone()
    }

    /// `narra worker` on its own machine (home), its stderr kept in the home's directory.
    fn spawn_worker(&self, machine: &Machine) -> ChildGuard {
        let log = std::fs::File::create(&machine.log).expect("a log file");
        let child = self
            .command(&machine.home, &["worker", "--concurrency", CONCURRENCY])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("narra worker starts");
        ChildGuard::from_child(child)
    }
}

/// One machine of the fleet: a home, and the worker log there.
struct Machine {
    home: Home,
    log: PathBuf,
}

impl Machine {
    fn new() -> Machine {
        let home = Home::new();
        let log = home.dir.path().join("worker.log");
        Machine { home, log }
    }
}

/// A worker process and the id it holds leases under (`host:pid`).
struct Worker {
    name: &'static str,
    process: ChildGuard,
    pid: u32,
}

impl Worker {
    fn start(fleet: &Fleet, machine: &Machine, name: &'static str) -> Worker {
        let process = fleet.spawn_worker(machine);
        let pid = process.id();
        Worker { name, process, pid }
    }

    fn holds(&self, job: &Value) -> bool {
        job["lease"]["worker_id"]
            .as_str()
            .is_some_and(|worker_id| worker_id.ends_with(&format!(":{}", self.pid)))
    }
}

/// The test schema's URI with the fleet's settings: a small pool per process, and sessions idle
/// in a transaction ended after 1 s, below the lease length: a worker stopped mid-transaction holds
/// the claim lock and its rows' locks until then, and a live worker that waits on those locks longer
/// than its lease would lose its own jobs (`docs/DEPLOYMENT.md`).
fn fleet_state_uri(schema_uri: &str) -> String {
    let mut url = url::Url::parse(schema_uri).expect("the schema's URI");
    let options = url
        .query_pairs()
        .find(|(name, _)| name == "options")
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default();
    let options =
        format!("{options} -cidle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}");
    // Percent-encoded by hand: tokio-postgres reads `%20` as a space, not the `+` of form encoding.
    let options = options.replace('=', "%3D").replace(' ', "%20");
    url.set_query(Some(&format!("options={options}&pool_max=4")));
    url.to_string()
}

fn env_number(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text} is not a number")),
        Err(_) => default,
    }
}

/// Polls `condition` until it holds. It returns `(done, progress)`; the wait fails only when
/// `progress` has not changed for [`STALL_MAX`] (a hang), never because the whole took long.
fn wait_progressing(what: &str, mut condition: impl FnMut() -> (bool, usize)) {
    let mut last = None;
    let mut moved_at = Instant::now();
    loop {
        let (done, progress) = condition();
        if done {
            return;
        }
        if last != Some(progress) {
            last = Some(progress);
            moved_at = Instant::now();
        }
        assert!(
            moved_at.elapsed() < STALL_MAX,
            "nothing moved for {} s while waiting until {what} (at {progress})",
            STALL_MAX.as_secs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `count` distinct short videos (H.264 + AAC, half a second each): one ffmpeg run cut into
/// segments, so every job's video and audio have bytes of their own (a frame counter and noise).
fn distinct_videos(dir: &Path, count: usize) -> Vec<PathBuf> {
    let seconds = count.div_ceil(2) + 1;
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i", "testsrc=size=160x120:rate=16"])
        .args([
            "-f",
            "lavfi",
            "-i",
            "anoisesrc=color=pink:amplitude=0.2:seed=7:sample_rate=44100",
        ])
        .args(["-t", &seconds.to_string()])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ])
        .args(["-force_key_frames", "expr:gte(t,n_forced*0.5)"])
        .args(["-c:a", "aac", "-b:a", "64k"])
        .args([
            "-f",
            "segment",
            "-segment_time",
            "0.5",
            "-reset_timestamps",
            "1",
        ])
        .args(["-segment_format", "mp4"])
        .arg(dir.join("clip%04d.mp4"))
        .status()
        .expect("ffmpeg runs");
    assert!(status.success(), "ffmpeg cut the clips");
    let videos: Vec<PathBuf> = (0..count)
        .map(|index| dir.join(format!("clip{index:04}.mp4")))
        .collect();
    let distinct: BTreeSet<String> = videos
        .iter()
        .map(|path| {
            blake3::hash(&std::fs::read(path).expect("read a clip"))
                .to_hex()
                .to_string()
        })
        .collect();
    assert_eq!(distinct.len(), count, "every clip has bytes of its own");
    videos
}

#[test]
fn a_fleet_with_killed_and_stopped_workers_runs_every_job_once() {
    if std::env::var("NARRA_TEST_FLEET").as_deref() != Ok("1") {
        eprintln!("fleet test skipped: set NARRA_TEST_FLEET=1 (NARRA_TEST_FLEET_JOBS sizes it)");
        return;
    }
    let started = Instant::now();
    let jobs_total = env_number("NARRA_TEST_FLEET_JOBS", JOBS_DEFAULT);
    assert!(jobs_total >= 20, "the fleet test needs at least 20 jobs");

    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let server = runtime.block_on(TestServer::start());
    let state = fleet_state_uri(&runtime.block_on(server.fresh_schema("fleet")));
    let moto = Moto::start();
    let proxy = Proxy::start(&moto);
    let fleet = Fleet {
        env: vec![
            ("NARRA_STATE", state),
            ("NARRA_STORAGE", proxy.storage_uri("")),
            ("NARRA_LEASE_TTL_MS", LEASE_TTL_MS.to_string()),
        ],
    };
    let origin = Origin::start();
    let media = tempfile::tempdir().expect("a temp dir");
    let sources: Vec<String> = distinct_videos(media.path(), jobs_total)
        .iter()
        .enumerate()
        .map(|(index, video)| origin.serve_video(&format!("fleet/{index}.mp4"), video))
        .collect();

    let operator = Home::new();
    let mut submit = vec!["submit"];
    submit.extend(sources.iter().map(String::as_str));
    let submitted = fleet.json(&operator, &submit);
    assert_eq!(submitted.as_array().map(Vec::len), Some(jobs_total));

    let machines: Vec<Machine> = (0..6).map(|_| Machine::new()).collect();
    let mut killed_first = Worker::start(&fleet, &machines[0], "w0 (killed)");
    let mut killed_second = Worker::start(&fleet, &machines[1], "w1 (killed)");
    let stopped = Worker::start(&fleet, &machines[2], "w2 (stopped)");
    let survivor = Worker::start(&fleet, &machines[3], "w3");
    let succeeded = || fleet.jobs(&operator, Some("succeeded")).len();

    // A worker at a moment it holds a running job with a step under way (a phase), once `after`
    // jobs have succeeded: that job, read from `jobs`.
    let holding = |worker: &Worker, after: usize| -> Value {
        let mut held = Value::Null;
        wait_progressing(&format!("{} holds a running job", worker.name), || {
            let done = succeeded();
            if done < after {
                return (false, done);
            }
            let running = fleet.jobs(&operator, Some("running"));
            if let Some(job) = running
                .iter()
                .find(|job| worker.holds(job) && !job["ingestion_phase"].is_null())
            {
                held = job.clone();
                return (true, done);
            }
            (false, done)
        });
        held
    };

    // Two SIGKILLs, at a tenth and at three tenths of the run, each while the worker holds a job;
    // a replacement machine takes each one's place, as an autoscaler would.
    let job = holding(&killed_first, jobs_total / 10);
    killed_first.process.kill();
    eprintln!(
        "fleet: SIGKILLed {} holding {}",
        killed_first.name,
        id_of(&job)
    );
    let replacement_first = Worker::start(&fleet, &machines[4], "r0");
    let job = holding(&killed_second, jobs_total * 3 / 10);
    killed_second.process.kill();
    eprintln!(
        "fleet: SIGKILLed {} holding {}",
        killed_second.name,
        id_of(&job)
    );
    let replacement_second = Worker::start(&fleet, &machines[5], "r1");

    // SIGSTOP at half the run while it holds a job, past that job's lease. `jobs` read the job a
    // moment before the signal: if the worker ended it in between, it is resumed and the next one
    // is picked.
    let (stopped_id, stale_token, stale_worker_id) = loop {
        let stopped_job = holding(&stopped, jobs_total / 2);
        signal(stopped.pid, "STOP");
        let stopped_id = id_of(&stopped_job);
        let stale_token = stopped_job["lease"]["fencing_token"]
            .as_u64()
            .expect("a fencing token");
        let stale_worker_id = stopped_job["lease"]["worker_id"]
            .as_str()
            .expect("a worker id")
            .to_string();
        // The text list says who holds it, and `show` names the same holder as `jobs` (read in
        // that order: if `show` still finds the stale token, the list was read before any
        // takeover).
        let text = fleet
            .command(&operator, &["jobs", "--status", "running"])
            .output()
            .expect("narra runs");
        let text = String::from_utf8_lossy(&text.stdout).into_owned();
        // `health` exits 1 when something calls for escalation (a stuck job may).
        let health = fleet.json_exiting(&operator, &["health"], &[0, 1]);
        let shown = fleet.json(&operator, &["show", &stopped_id]);
        if shown["status"] != "running" || shown["lease"]["fencing_token"] != stale_token {
            signal(stopped.pid, "CONT");
            continue;
        }
        assert_eq!(
            shown["lease"]["worker_id"],
            stale_worker_id.as_str(),
            "{shown}"
        );
        assert!(
            text.lines().any(|line| line.starts_with(&stopped_id)
                && line.contains(&format!("held by {stale_worker_id}"))),
            "`jobs` says who holds {stopped_id}:\n{text}"
        );
        assert!(
            health["workers"]
                .as_array()
                .is_some_and(|workers| workers.iter().any(|worker| {
                    worker["worker_id"] == stale_worker_id.as_str()
                        && worker["running"].as_array().is_some_and(|running| {
                            running.iter().any(|id| *id == stopped_id.as_str())
                        })
                })),
            "`health` lists {stopped_id} under {stale_worker_id}: {}",
            health["workers"]
        );
        break (stopped_id, stale_token, stale_worker_id);
    };
    eprintln!(
        "fleet: SIGSTOPped {} ({stale_worker_id}) holding {stopped_id} under token {stale_token}",
        stopped.name
    );

    // Taken over: claimed again under a newer token by a live worker (or already finished by one:
    // the stopped worker cannot have finished it).
    let mut new_holder = String::new();
    wait_progressing("another worker took the stopped worker's job over", || {
        let job = fleet.json(&operator, &["show", &stopped_id]);
        let token = job["lease"]["fencing_token"].as_u64();
        if token.is_some_and(|token| token > stale_token) || job["status"] == "succeeded" {
            new_holder = job["lease"]["worker_id"]
                .as_str()
                .unwrap_or("(finished)")
                .to_string();
            return (true, 0);
        }
        (false, succeeded())
    });
    assert_ne!(new_holder, stale_worker_id, "the job has a new holder");
    eprintln!(
        "fleet: {stopped_id} taken over by {new_holder}; SIGCONT {}",
        stopped.name
    );
    signal(stopped.pid, "CONT");

    // The resumed worker's next write under its stale token is refused, and it says so in the
    // incident log.
    let fenced_of_stopped = |incidents: &[Value]| -> Vec<Value> {
        incidents
            .iter()
            .filter(|incident| {
                incident["action"] == "fenced_write"
                    && incident["actor"] == stale_worker_id.as_str()
            })
            .cloned()
            .collect()
    };
    let resumed_at = Instant::now();
    while fenced_of_stopped(&fleet.incidents(&operator)).is_empty() {
        assert!(
            resumed_at.elapsed() < STALL_MAX,
            "no fenced_write incident by the resumed worker; its log:\n{}",
            std::fs::read_to_string(&machines[2].log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let workers = [stopped, survivor, replacement_first, replacement_second];
    wait_progressing("every job succeeded", || {
        let done = succeeded();
        (done == jobs_total, done)
    });
    for worker in workers {
        let name = worker.name;
        let status = worker.process.interrupt_and_wait();
        assert!(status.success(), "{name} stops cleanly: {status:?}");
    }
    let elapsed = started.elapsed();

    // Every job once, succeeded.
    let all = fleet.jobs(&operator, None);
    assert_eq!(all.len(), jobs_total, "no job lost, none duplicated");
    let not_succeeded: Vec<&Value> = all
        .iter()
        .filter(|job| job["status"] != "succeeded")
        .collect();
    assert!(
        not_succeeded.is_empty(),
        "every job succeeded: {not_succeeded:?}"
    );

    // The fencing incidents: the stopped worker's names its job, its stale token, and it.
    let incidents = fleet.incidents(&operator);
    let fenced = fenced_of_stopped(&incidents);
    assert!(
        fenced
            .iter()
            .any(|incident| incident["job"] == stopped_id.as_str()
                && incident["key"] == format!("token {stale_token}").as_str()),
        "a fenced_write incident for {stopped_id} under token {stale_token}: {fenced:?}"
    );
    let stopped_log = std::fs::read_to_string(&machines[2].log).unwrap_or_default();
    assert!(
        stopped_log.contains("is stale"),
        "the stopped worker logged the refusal:\n{stopped_log}"
    );
    let fenced_total = incidents
        .iter()
        .filter(|incident| incident["action"] == "fenced_write")
        .count();
    let health = fleet.json_exiting(&operator, &["health"], &[0, 1]);
    assert_eq!(
        health["fenced_writes"].as_u64(),
        Some(fenced_total as u64),
        "`health` counts the fenced writes"
    );
    assert_eq!(
        health["workers"],
        serde_json::json!([]),
        "no job left running"
    );

    // The audit: no step redone without a cause, no verified step redone, no object rewritten.
    let audit = fleet.json(&operator, &["audit"]);
    let audits = audit.as_array().expect("audits");
    assert_eq!(audits.len(), jobs_total);
    let violations: Vec<&Value> = audits
        .iter()
        .filter(|job| job["violations"].as_u64() != Some(0))
        .collect();
    assert!(violations.is_empty(), "audit is clean: {violations:?}");

    // At the storage: a key written more than once was written with the same bytes every time.
    let mut puts = BTreeMap::<String, Vec<String>>::new();
    for seen in proxy.writes() {
        if seen.method == "PUT" && (200..300).contains(&seen.answered) {
            puts.entry(seen.path.clone())
                .or_default()
                .push(seen.body_blake3.clone());
        }
    }
    let rewritten_with_other_bytes: Vec<(&String, &Vec<String>)> = puts
        .iter()
        .filter(|(_, bodies)| bodies.iter().collect::<BTreeSet<_>>().len() > 1)
        .collect();
    assert!(
        rewritten_with_other_bytes.is_empty(),
        "objects written again with other bytes: {rewritten_with_other_bytes:?}"
    );
    let rewritten_same_bytes = puts.values().filter(|bodies| bodies.len() > 1).count();

    // Figures, from the histories.
    let mut claims = 0usize;
    let mut taken_over = 0usize;
    let mut step_runs = 0usize;
    let mut redo_causes = BTreeMap::<String, usize>::new();
    for job in &all {
        let show = fleet.json(&operator, &["show", &id_of(job)]);
        let events = show["events"].as_array().expect("events");
        let job_claims = events
            .iter()
            .filter(|event| event["kind"] == "status_changed" && event["to"] == "running")
            .count();
        claims += job_claims;
        taken_over += usize::from(job_claims > 1);
        for event in events {
            match event["kind"].as_str().unwrap_or_default() {
                "step_started" => step_runs += 1,
                "step_redone" => {
                    *redo_causes
                        .entry(event["cause"].as_str().unwrap_or("?").to_string())
                        .or_default() += 1
                }
                _ => {}
            }
        }
    }
    let gets: usize = (0..jobs_total)
        .map(|index| origin.gets(&format!("fleet/{index}.mp4")))
        .sum();
    eprintln!("\nfleet: {jobs_total} jobs, 4 workers + 2 replacements, lease {LEASE_TTL_MS} ms");
    eprintln!("  jobs succeeded             {}", all.len());
    eprintln!(
        "  took                       {:.1} s",
        elapsed.as_secs_f64()
    );
    eprintln!("  claims                     {claims} ({taken_over} jobs claimed more than once)");
    eprintln!(
        "  step runs                  {step_runs} (of {} steps)",
        jobs_total * 3
    );
    eprintln!("  steps redone, by cause     {redo_causes:?}");
    eprintln!("  origin GETs                {gets} for {jobs_total} sources");
    eprintln!(
        "  fenced_write incidents     {fenced_total} ({} by the stopped worker)",
        fenced.len()
    );
    eprintln!(
        "  objects PUT                {} keys; {rewritten_same_bytes} written again with the same bytes, 0 with other bytes",
        puts.len()
    );
    for incident in incidents
        .iter()
        .filter(|incident| incident["action"] == "fenced_write")
    {
        eprintln!("    {}: {}", incident["job"], incident["reason"]);
    }
    runtime.block_on(server.cleanup());
}
