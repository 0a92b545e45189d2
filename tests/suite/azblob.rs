//! Object storage on Azure Blob Storage's emulator, Azurite (from the npm registry; `.ci/setup`
//! installs it under target/tools), started on loopback by the test.

use std::process::{Command, Stdio};

use serde_json::Value;

use super::fixture::{
    ChildGuard, Home, Origin, artifact, blake3_hex, id_of, sample_video, wait_until,
};

/// Azurite's well-known development account.
const ACCOUNT: &str = "devstoreaccount1";
const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const CONTAINER: &str = "media";

/// Creates a container with a SharedKey-signed request (Python's standard library does the HMAC).
const CREATE_CONTAINER: &str = r#"
import base64, hashlib, hmac, sys, urllib.request
from email.utils import formatdate
endpoint, account, key, container = sys.argv[1:5]
date = formatdate(usegmt=True)
version = "2021-08-06"
content_type = "application/octet-stream"
resource = f"/{account}/{account}/{container}\nrestype:container"
to_sign = "PUT\n\n\n\n\n" + content_type + "\n\n\n\n\n\n\n" + f"x-ms-date:{date}\nx-ms-version:{version}\n" + resource
signature = base64.b64encode(hmac.new(base64.b64decode(key), to_sign.encode(), hashlib.sha256).digest()).decode()
request = urllib.request.Request(f"{endpoint}/{container}?restype=container", method="PUT", data=b"",
    headers={"x-ms-date": date, "x-ms-version": version, "Authorization": f"SharedKey {account}:{signature}",
             "Content-Length": "0", "Content-Type": content_type})
urllib.request.urlopen(request)
"#;

struct Azurite {
    endpoint: String,
    _process: ChildGuard,
    _data: tempfile::TempDir,
}

impl Azurite {
    fn start() -> Azurite {
        let program = std::env::var("NARRA_AZURITE_BLOB").unwrap_or_else(|_| {
            format!(
                "{}/target/tools/node_modules/.bin/azurite-blob",
                env!("CARGO_MANIFEST_DIR")
            )
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("address")
            .port();
        let data = tempfile::tempdir().expect("a temp dir");
        let child = Command::new(&program)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--location")
            .arg(data.path())
            .args(["--silent", "--skipApiVersionCheck"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("{program} runs (bash .ci/setup installs azurite): {error}")
            });
        let azurite = Azurite {
            endpoint: format!("http://127.0.0.1:{port}/{ACCOUNT}"),
            _process: ChildGuard::from_child(child),
            _data: data,
        };
        wait_until("azurite accepts connections", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let status = Command::new("python3")
            .args([
                "-c",
                CREATE_CONTAINER,
                &azurite.endpoint,
                ACCOUNT,
                ACCOUNT_KEY,
                CONTAINER,
            ])
            .status()
            .expect("python3 runs");
        assert!(status.success(), "create the container");
        azurite
    }

    fn storage_uri(&self) -> String {
        format!("azblob://{CONTAINER}/narra?endpoint={}", self.endpoint)
    }
}

fn narra(home: &Home, storage: &str, args: &[&str]) -> Command {
    let mut full = vec!["--json", "--storage", storage];
    full.extend_from_slice(args);
    let mut command = home.command(&full);
    command
        .env("AZURE_STORAGE_ACCOUNT", ACCOUNT)
        .env("AZURE_STORAGE_KEY", ACCOUNT_KEY);
    command
}

fn run(home: &Home, storage: &str, args: &[&str], expected_code: i32) -> Value {
    let output = narra(home, storage, args).output().expect("narra runs");
    assert_eq!(
        output.status.code(),
        Some(expected_code),
        "narra {args:?}\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON on stdout")
}

// Guards the azblob:// backend against a real emulator: a job stores its artifacts there, `verify
// --deep` re-hashes them from the container, and a re-run skips every step and writes nothing.
#[test]
fn azurite_stores_verifies_and_skips_a_rerun() {
    let home = Home::new();
    let azurite = Azurite::start();
    let storage = azurite.storage_uri();
    let origin = Origin::start();
    let url = origin.serve_video("clip.mp4", sample_video());

    let jobs = run(&home, &storage, &["ingest", &url], 0);
    let id = id_of(&jobs[0]);
    let show = run(&home, &storage, &["show", &id], 0);
    assert_eq!(show["status"], "succeeded");
    assert_eq!(
        artifact(&show, "video")["blake3"],
        blake3_hex(sample_video()).as_str()
    );

    let verified = run(&home, &storage, &["verify", "--deep", &id], 0);
    assert_eq!(verified[0]["ok"], true, "{verified}");

    let events_before = show["events"].as_array().unwrap().len();
    run(&home, &storage, &["ingest", &url, "--reingest"], 0);
    let rerun = run(&home, &storage, &["show", &id], 0);
    let new_events = &rerun["events"].as_array().unwrap()[events_before..];
    let kinds: Vec<(&str, &str)> = new_events
        .iter()
        .filter(|event| event["step"].is_string())
        .map(|event| {
            (
                event["kind"].as_str().unwrap(),
                event["step"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("step_skipped", "download"),
            ("step_skipped", "extract"),
            ("step_skipped", "store")
        ],
        "{new_events:?}"
    );
    assert_eq!(origin.gets("clip.mp4"), 1);
}
