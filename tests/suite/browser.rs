//! The admin console in a real browser: headless Chromium driven over the WebDriver protocol (plain
//! JSON over HTTP to Debian's `chromedriver`), against a real `narra serve`. Behind
//! `NARRA_TEST_BROWSER=1`, which `.ci/test` sets; without it the test says so and passes without
//! checking anything. Chromium runs as root here only with `--no-sandbox`.

use std::process::{Command, Stdio};

use serde_json::{Value, json};

use super::api::{Server, TOKEN};
use super::fixture::{ChildGuard, Home, Origin, id_of, sample_video, wait_until};

/// A WebDriver session on a chromedriver this test started.
struct Browser {
    url: String,
    session: String,
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    _driver: ChildGuard,
}

const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(
            std::env::var("NARRA_CHROMEDRIVER").unwrap_or("/usr/bin/chromedriver".into()),
        )
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts (apt-get install chromium chromium-driver)");
        let mut browser = Browser {
            url: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            client: reqwest::Client::new(),
            _driver: ChildGuard::from_child(driver),
        };
        wait_until("chromedriver is ready", || {
            browser
                .try_send("GET", "/status", None)
                .is_some_and(|status| status["value"]["ready"] == true)
        });
        // The implicit wait: finding an element waits for it to appear (a view the console builds
        // after a click, on `hashchange`) instead of failing at once; it bounds a hang only.
        let created = browser.send("POST", "/session", Some(json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "timeouts": {"implicit": 60_000},
            "goog:chromeOptions": {
                "binary": std::env::var("NARRA_CHROMIUM").unwrap_or("/usr/bin/chromium".into()),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1400"],
            },
        }}})));
        browser.session = created["value"]["sessionId"]
            .as_str()
            .expect("a session")
            .to_string();
        browser
    }

    fn try_send(&self, method: &str, path: &str, body: Option<Value>) -> Option<Value> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.client.request(method, format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        self.runtime.block_on(async {
            let response = request.send().await.ok()?;
            serde_json::from_slice(&response.bytes().await.ok()?).ok()
        })
    }

    fn send(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let value = self
            .try_send(method, path, body)
            .unwrap_or_else(|| panic!("WebDriver {method} {path} answered"));
        assert!(
            value["value"]["error"].is_null(),
            "WebDriver {method} {path}: {value}"
        );
        value
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    fn open(&self, url: &str) {
        self.send(
            "POST",
            &self.session_path("/url"),
            Some(json!({"url": url})),
        );
    }

    /// Runs `script` in the page with `args`.
    fn script(&self, script: &str, args: Value) -> Value {
        self.send(
            "POST",
            &self.session_path("/execute/sync"),
            Some(json!({"script": script, "args": args})),
        )["value"]
            .clone()
    }

    /// The text of the first element `selector` matches, or `None` while there is none.
    fn text(&self, selector: &str) -> Option<String> {
        self.script(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
            json!([selector]),
        )
        .as_str()
        .map(str::to_string)
    }

    fn element(&self, selector: &str) -> String {
        let found = self.send(
            "POST",
            &self.session_path("/element"),
            Some(json!({"using": "css selector", "value": selector})),
        );
        found["value"][ELEMENT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("no element {selector}: {found}"))
            .to_string()
    }

    /// A real click (WebDriver's, with the pointer), not a script's.
    fn click(&self, selector: &str) {
        let element = self.element(selector);
        self.send(
            "POST",
            &self.session_path(&format!("/element/{element}/click")),
            Some(json!({})),
        );
    }

    fn type_into(&self, selector: &str, text: &str) {
        let element = self.element(selector);
        self.send(
            "POST",
            &self.session_path(&format!("/element/{element}/clear")),
            Some(json!({})),
        );
        self.send(
            "POST",
            &self.session_path(&format!("/element/{element}/value")),
            Some(json!({"text": text})),
        );
    }

    fn wait_for_text(&self, selector: &str, what: &str, expected: impl Fn(&str) -> bool) -> String {
        let mut last = None;
        wait_until(what, || {
            last = self.text(selector);
            last.as_deref().is_some_and(&expected)
        });
        last.unwrap()
    }

    fn screenshot(&self) -> Vec<u8> {
        let value = self.send("GET", &self.session_path("/screenshot"), None);
        base64_decode(value["value"].as_str().expect("base64 PNG"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.try_send("DELETE", &self.session_path(""), None);
        }
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            other => panic!("not base64: {other}"),
        }
    };
    let clean: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut bytes = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut group = 0u32;
        for (index, c) in chunk.iter().enumerate() {
            group |= value(*c) << (18 - 6 * index);
        }
        let group = group.to_be_bytes();
        bytes.extend_from_slice(&group[1..chunk.len()]);
    }
    bytes
}

// Guards the console's promise to operators: in headless Chromium, with the token entered once,
// the job table shows a failed job with its error class; after the fault is healed, Retry on its
// job page makes it succeed (the worker of `serve` runs it) and the page shows its checkpoints
// verified; a cleanup dry run on the cleanup page lists an orphan blob and Confirm deletes exactly
// it. The job page lists its webhook deliveries (the failure's notice and the success's). A
// screenshot of the job page is saved under target/.
#[test]
fn the_console_retries_a_failed_job_and_confirms_a_cleanup_in_chromium() {
    if std::env::var("NARRA_TEST_BROWSER").as_deref() != Ok("1") {
        eprintln!(
            "browser test skipped: set NARRA_TEST_BROWSER=1 (needs chromium and chromium-driver)"
        );
        return;
    }
    let started = std::time::Instant::now();
    let home = Home::new();
    let origin = Origin::start();
    let source = origin.serve_video("lecture.mp4", sample_video());
    origin.fail_with("lecture.mp4", 500);
    let receiver = super::webhooks::Receiver::start();
    let server = Server::start_env(
        &home,
        &[],
        &[
            ("NARRA_API_TOKEN", TOKEN),
            ("NARRA_WEBHOOK_SECRET", super::webhooks::SECRET),
        ],
    );
    let id = id_of(&server.post(
        "/jobs",
        json!({"source": source, "callback_url": receiver.url("/hooks/console")}),
        201,
    ));
    server.wait_for_status(&id, "failed");

    let browser = Browser::start();
    browser.open(&format!("{}/", server.url));
    browser.type_into("#token", TOKEN);
    browser.click("#save-token");
    assert_eq!(browser.text("#token-state").as_deref(), Some("token set"));
    let row = format!("tr[data-job-id=\"{id}\"]");
    browser.wait_for_text(
        &format!("{row} .status"),
        "the table shows the failed job",
        |status| status == "failed",
    );
    let row_text = browser.text(&row).unwrap();
    assert!(
        row_text.contains("server_error") || row_text.contains("http_error"),
        "{row_text}"
    );

    origin.heal("lecture.mp4");
    browser.click(&format!("{row} a.job-link"));
    browser.wait_for_text("#job-status", "the job page shows the failure", |status| {
        status == "failed"
    });
    browser.click("#retry");
    browser.wait_for_text("#job-status", "the retried job succeeds", |status| {
        status == "succeeded"
    });
    browser.wait_for_text("#checkpoints", "the checkpoints are verified", |text| {
        text.contains("ok")
    });
    // The failure's notice and the success's, each delivered to the job's webhook.
    browser.wait_for_text(
        "#deliveries",
        "the job page lists both deliveries",
        |text| {
            text.matches("delivered").count() == 2
                && text.contains("failed")
                && text.contains("succeeded")
        },
    );
    assert_eq!(server.get(&format!("/jobs/{id}"))["status"], "succeeded");
    let screenshot = browser.screenshot();
    assert_eq!(&screenshot[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-job-page.png");
    std::fs::write(&path, &screenshot).unwrap();
    eprintln!("browser: screenshot of the job page: {}", path.display());

    let orphan = home.objects().join("blobs/ee/eeee0000.mp4");
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, b"nobody references me").unwrap();
    browser.click("header a[href=\"#/cleanup\"]");
    browser.type_into("#cleanup-min-age", "0");
    browser.click("#plan-cleanup");
    browser.wait_for_text("#cleanup-plan", "the dry run lists the orphan", |plan| {
        plan.contains("blobs/ee/eeee0000.mp4")
    });
    assert!(orphan.exists(), "a dry run deletes nothing");
    browser.click("#confirm-cleanup");
    browser.wait_for_text("#cleanup-result", "the cleanup is carried out", |result| {
        result.starts_with("done")
    });
    assert!(!orphan.exists(), "the confirmed plan deleted the orphan");
    assert_eq!(
        server.get(&format!("/verify/{id}"))["ok"],
        true,
        "and nothing the job needs"
    );
    eprintln!(
        "browser: suite took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
