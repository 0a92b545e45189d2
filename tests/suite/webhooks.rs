//! Completion webhooks: a receiver on loopback gets one signed notice per terminal job, whose HMAC
//! it verifies itself; a receiver that was down at first is reached by a retry; callback URLs the
//! network guard refuses are refused at submission with a class. Against a real `narra serve` (its
//! worker runs the notifier), real sled and a loopback origin.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use hmac::{KeyInit, Mac};
use serde_json::{Value, json};

use super::api::Server;
use super::fixture::{Home, Origin, id_of, sample_video, wait_until};

pub const SECRET: &str = "webhook-test-secret-0123456789";

/// One notice as the receiver got it.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON notice")
    }

    /// Checks `X-Narra-Signature` with HMAC-SHA256 computed here, as a receiver would: over
    /// `"<X-Narra-Timestamp>.<body>"` with the shared secret.
    fn signature_is_valid(&self, secret: &str) -> bool {
        let Some(hex) = self.header("x-narra-signature").strip_prefix("sha256=") else {
            return false;
        };
        let Ok(bytes) = (0..hex.len())
            .step_by(2)
            .map(|index| u8::from_str_radix(hex.get(index..index + 2).unwrap_or("zz"), 16))
            .collect::<Result<Vec<u8>, _>>()
        else {
            return false;
        };
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(self.header("x-narra-timestamp").as_bytes());
        mac.update(b".");
        mac.update(&self.body);
        mac.verify_slice(&bytes).is_ok()
    }
}

/// A tiny HTTP receiver on loopback: records every POST and answers 204.
pub struct Receiver {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub fn start() -> Receiver {
        Receiver::start_on(TcpListener::bind("127.0.0.1:0").expect("bind the receiver"))
    }

    fn start_on(listener: TcpListener) -> Receiver {
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if let Some(request) = read_request(stream) {
                    log.lock().unwrap().push(request);
                }
            }
        });
        Receiver { port, received }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// Reads one request and answers it 204.
fn read_request(stream: TcpStream) -> Option<Received> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split(' ').nth(1)?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let length: usize = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    let mut stream = stream;
    stream
        .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        .ok()?;
    Some(Received {
        path,
        headers,
        body,
    })
}

fn serve(home: &Home, args: &[&str], env: &[(&str, &str)]) -> Server {
    let mut full = vec![
        ("NARRA_API_TOKEN", super::api::TOKEN),
        ("NARRA_WEBHOOK_SECRET", SECRET),
        // Retries come after a fraction of a second, not half a minute.
        ("NARRA_WEBHOOK_RETRY_DELAY_MS", "100"),
        ("NARRA_WEBHOOK_RETRY_DELAY_MAX_MS", "400"),
        // Long enough that a loaded machine's slow answer is not taken for a lost one (and sent
        // again, which the tests count as a duplicate); no test waits for it to pass.
        ("NARRA_WEBHOOK_TIMEOUT_MS", "30000"),
    ];
    full.extend_from_slice(env);
    Server::start_env(home, args, &full)
}

/// The job's webhook once a delivery of it succeeded.
fn wait_delivered(server: &Server, id: &str) -> Value {
    let mut webhook = Value::Null;
    wait_until(
        &format!("job {id}'s notice is recorded as delivered"),
        || {
            webhook = server.get(&format!("/jobs/{id}"))["webhook"].clone();
            webhook["pending"].is_null()
                && webhook["deliveries"].as_array().is_some_and(|deliveries| {
                    deliveries.iter().any(|delivery| delivery["ok"] == true)
                })
        },
    );
    webhook
}

// Guards the webhook promise: a job submitted with a callback_url sends exactly one notice when
// it succeeds and one when it fails, each signed with HMAC-SHA256 over "<timestamp>.<body>" (the
// receiver checks it with its own HMAC), with a delivery id, the job's status, its error class
// when it failed and its artifacts when it succeeded; the deliveries show on GET /jobs/{id} and
// `show`. Callback URLs the network guard refuses (metadata, private, other schemes) are 400 with
// a class and submit nothing; a host name that resolves to a refused address is stopped when the
// notice connects, and given up without reaching the receiver.
#[test]
fn a_receiver_gets_one_signed_notice_per_terminal_job() {
    let home = Home::new();
    let origin = Origin::start();
    let receiver = Receiver::start();
    let server = serve(&home, &[], &[]);
    let good = origin.serve_video("/good.mp4", sample_video());
    origin.fail_with("/gone.mp4", 404);

    for (callback, class) in [
        (
            "http://169.254.169.254/latest/meta-data/",
            "forbidden_address",
        ),
        ("http://10.0.0.7/hook", "forbidden_address"),
        ("http://[::1]/hook", "forbidden_address"),
        ("ftp://127.0.0.1/hook", "invalid_callback_url"),
        ("not a url", "invalid_callback_url"),
    ] {
        let (status, answer) = server.call(
            "POST",
            "/jobs",
            Some(super::api::TOKEN),
            Some(json!({"source": good, "callback_url": callback})),
        );
        assert_eq!(status, 400, "{callback}: {answer}");
        assert_eq!(answer["error"]["class"], class, "{callback}: {answer}");
    }
    assert_eq!(
        server.get("/jobs")["jobs"].as_array().unwrap().len(),
        0,
        "a refused callback submits nothing"
    );

    let succeeded = server.post(
        "/jobs",
        json!({"source": good, "callback_url": receiver.url("/hooks/good")}),
        201,
    );
    let failed = server.post(
        "/jobs",
        json!({"source": origin.url("/gone.mp4"), "callback_url": receiver.url("/hooks/gone")}),
        201,
    );
    // A host name is admitted at submission (nothing to check without resolving it) and stopped
    // by the guard when the notice connects: `localhost` is loopback, and only the literal
    // 127.0.0.1 is allowed to this server.
    origin.fail_with("/gone-too.mp4", 404);
    let by_name = server.post(
        "/jobs",
        json!({
            "source": origin.url("/gone-too.mp4"),
            "callback_url": format!("http://localhost:{}/hooks/by-name", receiver.port),
        }),
        201,
    );
    let (succeeded, failed, by_name) = (id_of(&succeeded), id_of(&failed), id_of(&by_name));
    server.wait_for_status(&succeeded, "succeeded");
    server.wait_for_status(&failed, "failed");
    let mut refused = Value::Null;
    wait_until("the notice to a loopback name is given up", || {
        refused = server.get(&format!("/jobs/{by_name}"))["webhook"].clone();
        refused["pending"].is_null()
            && refused["deliveries"]
                .as_array()
                .is_some_and(|d| !d.is_empty())
    });
    let deliveries = refused["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 1, "given up at once: {refused}");
    assert_eq!(deliveries[0]["gave_up"], true, "{refused}");
    assert!(
        deliveries[0]["error"]
            .as_str()
            .is_some_and(|error| error.starts_with("forbidden_address")),
        "{refused}"
    );
    let webhooks = [
        wait_delivered(&server, &succeeded),
        wait_delivered(&server, &failed),
    ];

    let received = receiver.received();
    assert_eq!(
        received.len(),
        2,
        "one notice per terminal job: {received:?}"
    );
    for notice in &received {
        assert!(notice.signature_is_valid(SECRET), "{notice:?}");
        assert!(
            !notice.signature_is_valid("another-secret-entirely"),
            "the signature depends on the secret"
        );
        assert_eq!(notice.header("content-type"), "application/json");
    }
    let by_path = |path: &str| {
        received
            .iter()
            .find(|notice| notice.path == path)
            .unwrap_or_else(|| panic!("no notice at {path}: {received:?}"))
    };
    let good_notice = by_path("/hooks/good");
    let body = good_notice.json();
    assert_eq!(body["job_id"], succeeded.as_str());
    assert_eq!(body["status"], "succeeded");
    assert_eq!(body["workflow"], "ingest");
    assert!(body["error"].is_null(), "{body}");
    let artifacts = body["artifacts"].as_array().expect("artifacts");
    assert!(
        artifacts
            .iter()
            .any(|artifact| artifact["kind"] == "video" && artifact["blake3"].is_string()),
        "{body}"
    );
    assert_eq!(
        good_notice.header("x-narra-delivery"),
        body["delivery_id"].as_str().unwrap()
    );
    let gone_notice = by_path("/hooks/gone");
    let body = gone_notice.json();
    assert_eq!(body["job_id"], failed.as_str());
    assert_eq!(body["status"], "failed");
    assert_eq!(body["error"]["class"], "not_found", "{body}");
    assert_ne!(
        good_notice.header("x-narra-delivery"),
        gone_notice.header("x-narra-delivery")
    );

    // What the API and `show` say about them: one delivered attempt each, nothing pending.
    for (webhook, notice) in webhooks.iter().zip([good_notice, gone_notice]) {
        let deliveries = webhook["deliveries"].as_array().unwrap();
        assert_eq!(deliveries.len(), 1, "{webhook}");
        assert_eq!(deliveries[0]["status_code"], 204, "{webhook}");
        assert_eq!(deliveries[0]["attempt"], 1, "{webhook}");
        assert_eq!(
            deliveries[0]["delivery_id"],
            notice.header("x-narra-delivery"),
            "{webhook}"
        );
    }
    let shown = home.show(&succeeded);
    assert_eq!(shown["webhook"], webhooks[0]);
    let text = home.narra(&["show", &succeeded]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("webhook "), "{text}");
    assert!(text.contains("delivered (204)"), "{text}");
    // The attempt is in the job's own log as well.
    wait_until("the job's log names the delivery", || {
        server.get(&format!("/jobs/{succeeded}/logs"))["lines"]
            .as_array()
            .is_some_and(|lines| {
                lines.iter().any(|line| {
                    line["message"]
                        .as_str()
                        .is_some_and(|message| message.contains("webhook notice delivered"))
                })
            })
    });
    assert_eq!(receiver.received().len(), 2, "no notice was sent twice");
}

// Guards retries and the workflow-level callback: a job of a workflow whose TOML names a
// callback_url notifies it without one in the submission; while the receiver's port is closed the
// attempts fail and are recorded, and once it listens a retry delivers the same notice (same
// delivery id) with a valid signature. Without NARRA_WEBHOOK_SECRET a callback is refused with
// its own class.
#[test]
fn a_retry_reaches_a_receiver_that_was_down_at_first() {
    let home = Home::new();
    let origin = Origin::start();
    origin.fail_with("/missing.mp4", 404);
    // A port nothing listens on (yet): the receiver is down.
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let callback = format!("http://127.0.0.1:{port}/hooks/workflow");
    let workflows = home.dir.path().join("workflows");
    std::fs::create_dir_all(&workflows).unwrap();
    let ingest = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/workflows/ingest.toml"
    ))
    .unwrap()
    .replace("name = \"ingest\"", "name = \"hooked\"")
    .replace(
        "attempts_max = 3",
        &format!("attempts_max = 3\ncallback_url = \"{callback}\""),
    );
    std::fs::write(workflows.join("hooked.toml"), ingest).unwrap();

    // No secret, or one too short to be one: refused with its own class, nothing submitted.
    for secret in ["", "short"] {
        let refused = home.narra_env(
            &[
                "submit",
                "--callback-url",
                "http://127.0.0.1:9/hook",
                &origin.url("/missing.mp4"),
            ],
            &[("NARRA_WEBHOOK_SECRET", secret)],
        );
        assert_eq!(refused.status.code(), Some(2), "{refused:?}");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains("webhook_secret_missing"), "{stderr}");
    }
    // Private download sources allowed (the fixture's NARRA_ALLOW_PRIVATE_NETWORK=1) do not allow
    // private callbacks: webhooks have a network policy of their own.
    let refused = home.narra_env(
        &[
            "submit",
            "--callback-url",
            "http://127.0.0.1:9/hook",
            &origin.url("/missing.mp4"),
        ],
        &[
            ("NARRA_WEBHOOK_SECRET", SECRET),
            ("NARRA_WEBHOOK_ALLOW_PRIVATE_NETWORK", ""),
        ],
    );
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("forbidden_address"), "{stderr}");
    assert_eq!(
        home.json(&["jobs"], 0).as_array().map(Vec::len),
        Some(0),
        "a refused callback submits nothing"
    );

    let workflows_arg = workflows.to_str().unwrap();
    // Enough attempts that the notice is not given up before the receiver comes up.
    let server = serve(
        &home,
        &["--workflows", workflows_arg],
        &[("NARRA_WEBHOOK_ATTEMPTS_MAX", "40")],
    );
    let job = server.post(
        "/jobs",
        json!({"source": origin.url("/missing.mp4"), "workflow": "hooked"}),
        201,
    );
    let id = id_of(&job);
    server.wait_for_status(&id, "failed");
    let mut webhook = Value::Null;
    wait_until("two attempts failed while the receiver was down", || {
        webhook = server.get(&format!("/jobs/{id}"))["webhook"].clone();
        webhook["deliveries"]
            .as_array()
            .is_some_and(|deliveries| deliveries.len() >= 2)
    });
    assert_eq!(webhook["url"], callback.as_str());
    let first = &webhook["deliveries"][0];
    assert_eq!(first["ok"], false, "{webhook}");
    assert!(first["status_code"].is_null(), "no answer: {webhook}");
    assert!(first["error"].as_str().is_some_and(|e| !e.is_empty()));
    assert_eq!(first["status"], "failed");
    let delivery_id = first["delivery_id"].as_str().unwrap().to_string();

    let receiver = Receiver::start_on(
        TcpListener::bind(("127.0.0.1", port)).expect("the receiver comes up on its port"),
    );
    let webhook = wait_delivered(&server, &id);
    let received = receiver.received();
    assert_eq!(received.len(), 1, "{received:?}");
    let notice = &received[0];
    assert_eq!(notice.path, "/hooks/workflow");
    assert!(notice.signature_is_valid(SECRET), "{notice:?}");
    assert_eq!(notice.header("x-narra-delivery"), delivery_id);
    assert_eq!(notice.json()["status"], "failed");
    let deliveries = webhook["deliveries"].as_array().unwrap();
    let last = deliveries.last().unwrap();
    assert_eq!(last["ok"], true, "{webhook}");
    assert_eq!(last["delivery_id"], delivery_id.as_str());
    assert!(
        last["attempt"].as_u64().unwrap() >= 3,
        "delivered by a retry: {webhook}"
    );
    assert!(
        deliveries[..deliveries.len() - 1]
            .iter()
            .all(|delivery| delivery["ok"] == false
                && delivery["delivery_id"] == delivery_id.as_str()),
        "{webhook}"
    );

    // A backfill line may name its own callback: checked like the others, the whole manifest
    // refused when one is not admitted, and the job notifies it.
    let refused_line =
        json!({"source": origin.url("/missing-2.mp4"), "callback_url": "http://169.254.169.254/"});
    let (status, answer) = server.raw(
        "POST",
        "/backfills",
        Some(super::api::TOKEN),
        Some(format!("{refused_line}\n").into_bytes()),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("line 1: forbidden_address"), "{answer}");
    origin.fail_with("/missing-2.mp4", 404);
    let line = json!({"source": origin.url("/missing-2.mp4"), "callback_url": receiver.url("/hooks/line")});
    let (status, created) = server.raw(
        "POST",
        "/backfills",
        Some(super::api::TOKEN),
        Some(format!("{line}\n").into_bytes()),
    );
    assert_eq!(status, 201, "{created}");
    wait_until("the backfill line's notice arrives", || {
        receiver.received().len() == 2
    });
    let notice = receiver.received()[1].clone();
    assert_eq!(notice.path, "/hooks/line");
    assert!(notice.signature_is_valid(SECRET), "{notice:?}");
    assert_eq!(notice.json()["status"], "failed");
}
