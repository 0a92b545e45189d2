//! Secrets in URLs: a source's user info and signed query, a callback URL's credentials, a
//! PostgreSQL URI's password and the signed URLs inside yt-dlp's description are used, and shown
//! nowhere: not in `show`, `jobs`, `logs`, events, the stored manifest, webhook bodies, `export`,
//! `doctor`, debug log lines or error messages. Against the real binary, real sled, a loopback
//! origin and a loopback webhook receiver.

use std::process::Output;

use serde_json::Value;

use super::fixture::{Home, Origin, id_of, sample_video, wait_until};
use super::webhooks::{Receiver, SECRET};

/// Every secret value below contains this marker (any letter case), and nothing else does: a
/// text that contains it shows a secret.
const MARKER: &str = "s3cr3t";

/// A parameter name narra does not know, named secret by the operator (`NARRA_REDACT_PARAMS`).
const OPERATOR_PARAMS: &str = "X-Tenant-Seal, other_one";

/// stdout and stderr of a command, in one text.
fn both(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn assert_no_secret(what: &str, text: &str) {
    assert!(
        !text.to_ascii_lowercase().contains(MARKER),
        "a secret in {what}:\n{text}"
    );
}

// Guards secrets in URLs: a job whose source carries a user name (a GitHub-style token), a JWT, an
// auth key, a session id, an access key under a percent-encoded name and an operator-named
// parameter, and a job whose source carries a password and a signature and fails, both with a
// callback URL holding a password and an auth key: every secret fetches or notifies, and none
// appears in any output, log line, event, manifest, webhook body, export or error message. An
// export keeps them only when asked with `--include-secrets`; a redacted export is refused by
// `import`, since its jobs could not be fetched or notified.
#[test]
fn secrets_in_sources_and_callbacks_appear_in_no_output() {
    let home = Home::new();
    let origin = Origin::start();
    let receiver = Receiver::start();
    origin.serve_video("/media/clip.mp4", sample_video());
    origin.fail_with("/media/gone.mp4", 404);
    let port = origin.addr.port();
    let succeeding = format!(
        "http://ghp_S3CR3T0user@127.0.0.1:{port}/media/clip.mp4?JWT=eyS3CR3T1&Auth_Key=S3CR3T2\
         &SessionID=S3CR3T3&%61ccess%5Fkey=S3CR3T%344&x-tenant-seal=S3CR3T5&sig=S3CR3T6\
         &sig=S3CR3T7&X-Goog-Signature=S3CR3T8&quality=hd"
    );
    let failing = format!(
        "http://alice:S3CR3T9pass@127.0.0.1:{port}/media/gone.mp4?X-Amz-Credential=AKIAS3CR3T10\
         &hdnts=exp%3D1~hmac%3DS3CR3T11&quality=sd"
    );
    let callback = receiver
        .url("/hooks/done?auth_key=S3CR3T12&phpsessid=S3CR3T13")
        .replace("http://", "http://hook:S3CR3T14@");
    let env = [
        ("NARRA_WEBHOOK_SECRET", SECRET),
        ("NARRA_REDACT_PARAMS", OPERATOR_PARAMS),
        // Debug lines of narra and of its HTTP client reach stderr and the job logs.
        (
            "NARRA_LOG",
            "narra=debug,reqwest=debug,hyper=debug,hyper_util=debug",
        ),
    ];

    let ingest = home.narra_env(
        &[
            "--json",
            "ingest",
            "--callback-url",
            &callback,
            &succeeding,
            &failing,
        ],
        &env,
    );
    assert_eq!(ingest.status.code(), Some(1), "{}", both(&ingest));
    let jobs: Value = serde_json::from_slice(&ingest.stdout).expect("ingest prints its jobs");
    let ids: Vec<String> = jobs
        .as_array()
        .expect("a list of jobs")
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(ids.len(), 2, "{jobs}");
    assert_eq!(
        origin.gets("/media/clip.mp4"),
        1,
        "the signed source fetched"
    );
    wait_until("both notices reach the receiver", || {
        receiver.received().len() == 2
    });

    let mut outputs = vec![("ingest".to_string(), both(&ingest))];
    let mut run = |what: &str, args: &[&str]| {
        let output = home.narra_env(args, &env);
        outputs.push((what.to_string(), both(&output)));
        output
    };
    run("jobs", &["jobs"]);
    run("jobs --json", &["--json", "jobs"]);
    for id in &ids {
        run("show", &["show", id]);
        run("show --json (events)", &["--json", "show", id]);
        run("logs", &["logs", id]);
        run("logs --json", &["--json", "logs", id]);
    }
    // A callback URL refused at submission: its error message.
    let refused = run(
        "a refused callback",
        &[
            "submit",
            "--callback-url",
            "ftp://hook:S3CR3T15@127.0.0.1/hook?token=S3CR3T16",
            &succeeding,
        ],
    );
    assert_eq!(refused.status.code(), Some(2), "{}", both(&refused));
    let export = run("export", &["export"]);
    assert!(export.status.success(), "{}", both(&export));
    let export_file = home.dir.path().join("redacted.jsonl");
    std::fs::write(&export_file, &export.stdout).expect("write the export");
    let doctor = run(
        "doctor of a PostgreSQL URI",
        &[
            "doctor",
            "--state",
            "postgres://narra:S3CR3T17@127.0.0.1:1/narra_test?password=S3CR3T18&connect_timeout=2",
        ],
    );
    assert_ne!(doctor.status.code(), Some(0), "{}", both(&doctor));
    run(
        "jobs on a PostgreSQL URI",
        &[
            "jobs",
            "--state",
            "postgres://narra:S3CR3T19@127.0.0.1:1/narra_test?password=S3CR3T20&connect_timeout=2",
        ],
    );
    let manifest = home.object(&format!("jobs/{}/manifest.json", ids[0]));
    outputs.push((
        "the manifest".into(),
        std::fs::read_to_string(manifest).expect("read the manifest"),
    ));
    for notice in receiver.received() {
        outputs.push((
            format!("the notice to {}", notice.path),
            String::from_utf8_lossy(&notice.body).into_owned(),
        ));
    }
    for (what, text) in &outputs {
        assert_no_secret(what, text);
    }

    // What stays readable: the host, the path and the parameters that are no secret.
    let show = home.show(&ids[0]);
    let source = show["source"].as_str().expect("a source");
    assert!(
        source.starts_with(&format!("http://REDACTED@127.0.0.1:{port}/media/clip.mp4?")),
        "{source}"
    );
    assert!(source.contains("quality=hd"), "{source}");
    let shown = both(&export);
    assert!(
        shown.contains("--include-secrets"),
        "export says what it left out: {shown}"
    );

    // A redacted export cannot be imported: its jobs could not be fetched or notified.
    let target = Home::new();
    let import = target.narra(&["import", export_file.to_str().unwrap()]);
    assert_eq!(import.status.code(), Some(1), "{}", both(&import));
    assert!(
        both(&import).contains("--include-secrets"),
        "{}",
        both(&import)
    );
    // With the flag, the file keeps them, and moves the store whole.
    let full = home.narra(&["export", "--include-secrets"]);
    assert!(full.status.success(), "{}", both(&full));
    let full_text = String::from_utf8_lossy(&full.stdout);
    assert!(full_text.contains("S3CR3T2"), "{full_text}");
    let full_file = home.dir.path().join("full.jsonl");
    std::fs::write(&full_file, &full.stdout).expect("write the export");
    let import = target.narra(&["import", full_file.to_str().unwrap()]);
    assert!(import.status.success(), "{}", both(&import));
}

/// A workflows directory whose `ingest` sends 127.0.0.1 through yt-dlp (a platform host).
fn platform_workflows(home: &Home) -> String {
    let dir = home.dir.path().join("workflows");
    std::fs::create_dir_all(&dir).expect("create the workflows directory");
    std::fs::write(
        dir.join("ingest.toml"),
        "name = \"ingest\"\nattempts_max = 1\n\n[[steps]]\nkind = \"download\"\n\
         params = { platform_hosts = [\"127.0.0.1\"] }\n\n[[steps]]\nkind = \"extract\"\n\n\
         [[steps]]\nkind = \"store\"\n",
    )
    .expect("write ingest.toml");
    dir.to_str().expect("a UTF-8 path").to_string()
}

// Guards secrets in URLs for platform sources: yt-dlp's description of a page, stored with the job
// as `platform_metadata`, names the page's URL and the signed URL of each format; the stored copy
// keeps neither secret, and neither does anything else the job shows.
#[test]
fn signed_format_urls_are_redacted_in_the_stored_platform_metadata() {
    let output = std::process::Command::new("yt-dlp")
        .arg("--version")
        .output();
    assert!(
        output.as_ref().is_ok_and(|output| output.status.success()),
        "yt-dlp runs (install it: pip install yt-dlp, as .ci/setup does): {output:?}"
    );
    let home = Home::new();
    let dir = platform_workflows(&home);
    let origin = Origin::start();
    origin.serve_video("/media/clip.mp4", sample_video());
    origin.put(
        "/watch/page.html",
        b"<html><body><video src=\"/media/clip.mp4?X-Amz-Signature=S3CR3T21&amp;Expires=1\">\
          </video></body></html>"
            .to_vec(),
    );
    let page = origin.url("/watch/page.html?session_id=S3CR3T22&v=7");

    let job = home.one_job(&["--workflows", &dir, "ingest", &page], 0);

    assert_eq!(job["status"], "succeeded", "{job}");
    assert!(
        origin.gets("/media/clip.mp4") > 0,
        "yt-dlp fetched the clip"
    );
    let id = id_of(&job);
    let show = home.show(&id);
    let key = super::fixture::artifact(&show, "platform_metadata")["key"]
        .as_str()
        .expect("a key")
        .to_string();
    let stored = std::fs::read_to_string(home.object(&key)).expect("read the platform metadata");
    let description: Value = serde_json::from_str(&stored).expect("the platform metadata is JSON");
    assert!(
        description["url"]
            .as_str()
            .is_some_and(|url| url.contains("/media/clip.mp4?") && url.contains("REDACTED")),
        "the format URL is kept, redacted: {description}"
    );
    let outputs = [
        ("the platform metadata", stored),
        ("show", both(&home.narra(&["show", &id]))),
        ("show --json", both(&home.narra(&["--json", "show", &id]))),
        ("logs", both(&home.narra(&["logs", &id]))),
        (
            "the manifest",
            std::fs::read_to_string(home.object(&format!("jobs/{id}/manifest.json")))
                .expect("read the manifest"),
        ),
    ];
    for (what, text) in &outputs {
        assert_no_secret(what, text);
    }
}
