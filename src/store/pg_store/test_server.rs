//! A PostgreSQL server for tests (the library's and `tests/`'s; nothing else uses it): the one
//! `NARRA_TEST_POSTGRES_URL` names (CI starts one, see `.ci/setup`), or else a throwaway cluster
//! this process starts in a temp dir (`initdb`, then `pg_ctl start` on a free loopback port) and
//! stops, and removes, when the `TestServer` is dropped.
//!
//! PostgreSQL refuses to run as root: as root, the cluster runs as the `postgres` user when there
//! is one, else as `nobody`, through `runuser`. Each test store gets a schema of its own
//! (`fresh_schema`), named apart by process id, so tests and test runs never share tables.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable naming a running server (a `postgres://` URL) for the tests.
pub const TEST_URL_ENV: &str = "NARRA_TEST_POSTGRES_URL";

pub struct TestServer {
    url: String,
    cluster: Option<Cluster>,
    schemas: Mutex<Vec<String>>,
}

struct Cluster {
    dir: PathBuf,
    data: PathBuf,
    pg_ctl: PathBuf,
    user: Option<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = as_user(self.user.as_deref(), &self.pg_ctl)
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static SCHEMA_SEQ: AtomicU64 = AtomicU64::new(0);

impl TestServer {
    pub async fn start() -> TestServer {
        if let Ok(url) = std::env::var(TEST_URL_ENV)
            && !url.is_empty()
        {
            return TestServer {
                url,
                cluster: None,
                schemas: Mutex::new(Vec::new()),
            };
        }
        tokio::task::spawn_blocking(start_cluster)
            .await
            .expect("the cluster start task")
    }

    /// A new empty schema, and the URL of a store that lives in it.
    pub async fn fresh_schema(&self, name: &str) -> String {
        let schema = format!(
            "narra_test_{name}_{}_{}",
            std::process::id(),
            SCHEMA_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|error| panic!("connect to the test server {}: {error}", self.url));
        tokio::spawn(connection);
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
            ))
            .await
            .expect("create the test schema");
        self.schemas.lock().expect("lock").push(schema.clone());
        let mut url = url::Url::parse(&self.url).expect("the test server URL");
        url.query_pairs_mut()
            .append_pair("options", &format!("-csearch_path={schema}"));
        url.to_string()
    }

    /// Drops the schemas this server handed out (a cluster of its own goes away whole).
    pub async fn cleanup(&self) {
        let schemas = std::mem::take(&mut *self.schemas.lock().expect("lock"));
        if self.cluster.is_some() || schemas.is_empty() {
            return;
        }
        let Ok((client, connection)) =
            tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await
        else {
            return;
        };
        tokio::spawn(connection);
        for schema in schemas {
            let _ = client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .await;
        }
    }
}

fn start_cluster() -> TestServer {
    let bin = server_binaries().unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server binaries (initdb, pg_ctl) on PATH or in /usr/lib/postgresql; \
             install them (.ci/setup does) or set {TEST_URL_ENV}"
        )
    });
    let user = server_user();
    let dir = std::env::temp_dir().join(format!(
        "narra-pg-{}-{}",
        std::process::id(),
        SCHEMA_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create the cluster's directory");
    if let Some(user) = &user {
        chown(&dir, user);
    }
    let data = dir.join("data");
    let initdb = as_user(user.as_deref(), &bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-A", "trust", "-U", "narra", "--no-sync"])
        .output()
        .expect("run initdb");
    assert!(
        initdb.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&initdb.stderr)
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let options = format!(
        "-h 127.0.0.1 -p {port} -k {} -F -c max_connections=200",
        dir.display()
    );
    let pg_ctl = bin.join("pg_ctl");
    let cluster = Cluster {
        data: data.clone(),
        pg_ctl: pg_ctl.clone(),
        user: user.clone(),
        dir,
    };
    let started = as_user(user.as_deref(), &pg_ctl)
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(data.join("server.log"))
        .args(["-o", &options, "-w", "-t", "60", "start"])
        .output()
        .expect("run pg_ctl");
    assert!(
        started.status.success(),
        "pg_ctl start failed: {}{}",
        String::from_utf8_lossy(&started.stdout),
        std::fs::read_to_string(data.join("server.log")).unwrap_or_default()
    );
    TestServer {
        url: format!("postgres://narra@127.0.0.1:{port}/postgres"),
        cluster: Some(cluster),
        schemas: Mutex::new(Vec::new()),
    }
}

/// The directory holding `initdb` and `pg_ctl`: on PATH, or Debian's versioned directory.
fn server_binaries() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>());
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok().map(|entry| entry.path().join("bin")))
        .collect();
    debian.sort();
    debian.reverse();
    on_path
        .chain(debian)
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
}

/// Who runs the cluster: this process's user, unless that is root.
fn server_user() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let has_postgres = Command::new("id")
        .arg("-u")
        .arg("postgres")
        .output()
        .is_ok_and(|output| output.status.success());
    Some(if has_postgres { "postgres" } else { "nobody" }.to_string())
}

fn as_user(user: Option<&str>, program: &Path) -> Command {
    match user {
        None => Command::new(program),
        Some(user) => {
            let mut command = Command::new("runuser");
            command.args(["-u", user, "--"]).arg(program);
            command
        }
    }
}

fn chown(path: &Path, user: &str) {
    let status = Command::new("chown")
        .arg(user)
        .arg(path)
        .status()
        .expect("run chown");
    assert!(status.success(), "chown {user} {}", path.display());
}
