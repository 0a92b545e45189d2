//! `narra doctor`: can this machine run narra here? One check each for ffmpeg and ffprobe (found,
//! their versions), the workflows, the encoders the workflows need, the state store, the storage
//! backend's reachability, the free scratch space and the permissions of the home, the state store
//! and a local object root (none open to other local users: a warning, `WARN`, since such a home
//! still works); each passes, warns or says what is wrong. The state
//! store's check also reports its size on disk and what it holds (jobs by status, events held and
//! compacted, pruned jobs), in words and, with `--json`, as the check's `stats`.
//!
//! Doctor changes nothing: it does not create a home, a state store or a storage root that is
//! missing (the first command that needs one does), and a home held by another narra process (a
//! running worker) is reported as in use, not opened.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::GlobalArgs;
use crate::steps::extract::{Tools, encoder_of, encoders, tool_version};
use crate::steps::free_bytes;
use crate::storage::Storage;
use crate::store::sled_store::StoreStats;
use crate::store::{HomeLock, LockError, SledStore};
use crate::workflow::WorkflowRegistry;

/// The object key whose `stat` proves the storage backend answers; it need not exist.
const REACHABILITY_KEY: &str = "jobs/.narra-doctor";

const MIB: u64 = 1024 * 1024;

/// One check's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    /// Passed, but something needs the operator's attention (`WARN`; doctor still exits 0).
    pub warning: bool,
    pub detail: String,
    /// Figures behind the detail, for `--json` (`Value::Null`: none).
    pub stats: Value,
}

impl Check {
    fn pass(name: &'static str, detail: String) -> Check {
        Check {
            name,
            ok: true,
            warning: false,
            detail,
            stats: Value::Null,
        }
    }

    /// Not a failure, but the operator should act: a home others can read works, and leaks.
    fn warn(name: &'static str, detail: String) -> Check {
        Check {
            name,
            ok: true,
            warning: true,
            detail,
            stats: Value::Null,
        }
    }

    fn fail(name: &'static str, detail: String) -> Check {
        Check {
            name,
            ok: false,
            warning: false,
            detail,
            stats: Value::Null,
        }
    }

    fn with_stats(self, stats: Value) -> Check {
        Check { stats, ..self }
    }

    pub fn to_json(&self) -> Value {
        let mut value = json!({"name": self.name, "ok": self.ok, "detail": self.detail});
        if self.warning {
            value["warning"] = json!(true);
        }
        if !self.stats.is_null() {
            value["stats"] = self.stats.clone();
        }
        value
    }

    pub fn to_text(&self) -> String {
        let verdict = match (self.ok, self.warning) {
            (false, _) => "FAIL",
            (true, true) => "WARN",
            (true, false) => "ok",
        };
        format!("{verdict:<4}  {:<11}  {}", self.name, self.detail)
    }
}

/// Runs every check for the home and storage `global` names.
pub async fn run_checks(global: &GlobalArgs, scratch_free_min_bytes: u64) -> Vec<Check> {
    let home = std::path::absolute(&global.home).unwrap_or_else(|_| global.home.clone());
    let tools = Tools::from_env();
    let mut checks = vec![
        tool_check("ffmpeg", &tools.ffmpeg).await,
        tool_check("ffprobe", &tools.ffprobe).await,
    ];
    checks.push(media_helper_check().await);
    let ffmpeg_found = checks[0].ok;
    match WorkflowRegistry::load(global.workflows.as_deref()) {
        Ok(registry) => {
            let names: Vec<&str> = registry.names().collect();
            checks.push(Check::pass("workflows", names.join(", ")));
            if ffmpeg_found {
                checks.push(encoder_check(&tools.ffmpeg, &registry).await);
            }
        }
        Err(error) => checks.push(Check::fail("workflows", error.to_string())),
    }
    let state_uri = super::state_uri(global, &home);
    checks.push(match &state_uri {
        Ok(crate::store::StateUri::Postgres(uri)) => postgres_state_check(uri).await,
        Ok(crate::store::StateUri::Sled(path)) => state_check(&home, path).await,
        Err(error) => Check::fail("state_store", error.message()),
    });
    checks.push(storage_check(global, &home).await);
    checks.push(scratch_check(&home, scratch_free_min_bytes));
    let sled_dir = match &state_uri {
        Ok(crate::store::StateUri::Sled(path)) => Some(path.as_path()),
        _ => None,
    };
    let storage_uri = storage_uri(global, &home);
    let object_root = storage_uri.strip_prefix("fs://").map(Path::new);
    checks.push(permissions_check(&home, sled_dir, object_root));
    checks
}

/// The home, a sled state store and a local object root, each with the entries directly in it:
/// none may let group or others in (`private_files`). Only what exists is looked at, and nothing
/// deeper, so a large object root costs one directory listing.
fn permissions_check(home: &Path, sled_dir: Option<&Path>, object_root: Option<&Path>) -> Check {
    let roots: Vec<&Path> = [Some(home), sled_dir, object_root]
        .into_iter()
        .flatten()
        .collect();
    let mut findings = Vec::new();
    for root in &roots {
        let Ok(metadata) = std::fs::metadata(root) else {
            continue;
        };
        let mut exposed = Vec::new();
        let mut note = |path: &Path, mode: u32| {
            if crate::private_files::open_to_others(mode) {
                exposed.push(format!("{} is {:04o}", path.display(), mode & 0o7777));
            }
        };
        note(root, metadata.mode());
        for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
            let path = entry.path();
            // Another root's entry is listed under that root, with its own chmod.
            if roots.iter().any(|other| *other == path) {
                continue;
            }
            if let Ok(metadata) = std::fs::symlink_metadata(&path)
                && !metadata.file_type().is_symlink()
            {
                note(&path, metadata.mode());
            }
        }
        if !exposed.is_empty() {
            findings.push(format!(
                "{} (run `chmod -R go-rwx {}`)",
                exposed.join(", "),
                root.display()
            ));
        }
    }
    if findings.is_empty() {
        let names: Vec<String> = roots
            .iter()
            .map(|root| root.display().to_string())
            .collect();
        Check::pass(
            "permissions",
            format!(
                "{}: open to the owner only (or not created yet)",
                names.join(", ")
            ),
        )
    } else {
        Check::warn(
            "permissions",
            format!(
                "other local users can read what narra keeps here (sources with their secrets, \
                 media): {}",
                findings.join("; ")
            ),
        )
    }
}

/// The storage URI `global` names, `fs://<home>/objects` by default.
/// Starts a media helper in a scratch root of its own and asks it what its sandbox allows: the
/// protections it reports are what it found when it entered them, and the refusals it reports
/// are what it tried (open /etc/passwd, create a socket). Fails when no helper answers; warns when
/// a protection is off.
async fn media_helper_check() -> Check {
    const NAME: &str = "media_helper";
    if std::env::var(crate::steps::media::MEDIA_ENV).as_deref() == Ok("cli") {
        return Check::pass(
            NAME,
            "not used: NARRA_MEDIA=cli runs ffprobe and ffmpeg per job".into(),
        );
    }
    let program = match std::env::current_exe() {
        Ok(program) => program,
        Err(error) => return Check::fail(NAME, format!("cannot find the narra binary: {error}")),
    };
    let scratch = std::env::temp_dir().join(format!("narra-doctor-{}", std::process::id()));
    let pool = crate::steps::media::HelperPool::new(
        program,
        scratch.clone(),
        Vec::new(),
        crate::steps::media::sandbox::Limits::default(),
    );
    let checked = crate::steps::media::self_check(&pool, std::time::Duration::from_secs(10)).await;
    drop(pool);
    let _ = std::fs::remove_dir_all(&scratch);
    match checked {
        Err(error) => Check::fail(NAME, error),
        Ok(check) => {
            let confined = check.read_etc_passwd.is_err() && check.open_socket.is_err();
            let detail = format!(
                "{}; /etc/passwd {}, socket() {}",
                check.protections.summary(),
                if check.read_etc_passwd.is_err() {
                    "refused"
                } else {
                    "READABLE"
                },
                if check.open_socket.is_err() {
                    "refused"
                } else {
                    "ALLOWED"
                },
            );
            if confined && check.protections.landlock == "fully" {
                Check::pass(NAME, detail)
            } else {
                Check::warn(NAME, detail)
            }
        }
    }
}

fn storage_uri(global: &GlobalArgs, home: &Path) -> String {
    global
        .storage
        .clone()
        .unwrap_or_else(|| format!("fs://{}", home.join("objects").display()))
}

async fn tool_check(name: &'static str, program: &Path) -> Check {
    match tool_version(program).await {
        Ok(version) => Check::pass(name, format!("{version} ({})", program.display())),
        Err(reason) => Check::fail(
            name,
            format!("{reason} (install ffmpeg, or set NARRA_FFMPEG and NARRA_FFPROBE)"),
        ),
    }
}

/// Every encoder a workflow's transcode target (or a copy's fallback) needs is in this ffmpeg.
async fn encoder_check(ffmpeg: &Path, registry: &WorkflowRegistry) -> Check {
    let available: BTreeSet<String> = match encoders(ffmpeg).await {
        Ok(encoders) => encoders.into_iter().collect(),
        Err(reason) => return Check::fail("encoders", reason),
    };
    let mut needed: BTreeMap<&'static str, Vec<&str>> = BTreeMap::new();
    for name in registry.names() {
        if let Ok(workflow) = registry.get(name) {
            let encoder = encoder_of(workflow.extract().transcode_target());
            needed.entry(encoder).or_default().push(name);
        }
    }
    let missing: Vec<String> = needed
        .iter()
        .filter(|(encoder, _)| !available.contains(**encoder))
        .map(|(encoder, workflows)| format!("{encoder} (for {})", workflows.join(", ")))
        .collect();
    if missing.is_empty() {
        let present: Vec<&str> = needed.keys().copied().collect();
        Check::pass("encoders", format!("{} present", present.join(", ")))
    } else {
        Check::fail(
            "encoders",
            format!("this ffmpeg lacks {}", missing.join(", ")),
        )
    }
}

/// A PostgreSQL state store: reachable, at this narra's schema, and consistent. Nothing is
/// migrated here (`narra migrate` does).
async fn postgres_state_check(uri: &str) -> Check {
    let shown = crate::store::pg_store::redact(uri);
    let store = match crate::store::PgStore::connect(uri).await {
        Ok(store) => store,
        Err(error) => return Check::fail("state_store", format!("{shown}: {error}")),
    };
    let latest = crate::store::pg_store::schema::latest_version();
    match store.schema_version().await {
        Ok(version) if version == latest => {}
        Ok(version) => {
            return Check::fail(
                "state_store",
                format!(
                    "{shown}: schema at migration {version}, this narra's is {latest} (run `narra migrate`)"
                ),
            );
        }
        Err(error) => return Check::fail("state_store", format!("{shown}: {error}")),
    }
    match store.check_consistency().await {
        Ok(()) => Check::pass(
            "state_store",
            format!("{shown}: consistent; schema at migration {latest}"),
        ),
        Err(error) => Check::fail("state_store", format!("{shown} is inconsistent: {error}")),
    }
}

async fn state_check(home: &Path, state: &Path) -> Check {
    let state = state.to_path_buf();
    if !state.exists() {
        return Check::pass(
            "state_store",
            format!(
                "{} does not exist yet; the first command creates it",
                state.display()
            ),
        );
    }
    let _lock = match HomeLock::acquire(home) {
        Ok(lock) => lock,
        Err(LockError::Held { pid, .. }) => {
            // sled allows one process per database: the size is read from the files instead.
            let holder = pid.map_or_else(|| "unknown pid".to_string(), |pid| format!("pid {pid}"));
            let size = directory_size(&state);
            let detail = format!(
                "{} is in use by a running narra process ({holder}); not opened; {}",
                state.display(),
                match &size {
                    Ok(bytes) => format!("{} on disk", size_text(*bytes)),
                    Err(error) => format!("size unknown: {error}"),
                }
            );
            let check = Check::pass("state_store", detail);
            return match size {
                Ok(bytes) => check.with_stats(json!({
                    "size_on_disk_bytes": bytes,
                    "measured_from": "files",
                })),
                Err(_) => check,
            };
        }
        Err(error) => return Check::fail("state_store", error.to_string()),
    };
    // The home is ours: a database still locked belongs to a process that is exiting.
    let store = match SledStore::open_handed_over(&state).await {
        Ok(store) => store,
        Err(error) => {
            return Check::fail(
                "state_store",
                format!("{} cannot be opened: {error}", state.display()),
            );
        }
    };
    if let Err(error) = store.check_consistency() {
        return Check::fail(
            "state_store",
            format!("{} is inconsistent: {error}", state.display()),
        );
    }
    let stats = match store.stats() {
        Ok(stats) => stats,
        Err(error) => return Check::fail("state_store", error.to_string()),
    };
    Check::pass(
        "state_store",
        format!("{}: consistent; {}", state.display(), stats_text(&stats)),
    )
    .with_stats(stats_json(&stats))
}

/// `jobs: 0 pending, ...; 1.2 MiB on disk; events: ...`.
fn stats_text(stats: &StoreStats) -> String {
    let jobs: Vec<String> = stats
        .jobs_by_status
        .iter()
        .map(|(status, count)| format!("{count} {status}"))
        .collect();
    format!(
        "jobs: {}; {} on disk; events: {} held, {} compacted into {} summaries (at most {} per job); {} pruned jobs",
        jobs.join(", "),
        size_text(stats.size_on_disk_bytes),
        stats.events_held,
        stats.events_compacted,
        stats.event_summaries,
        stats.events_max,
        stats.pruned_jobs
    )
}

fn stats_json(stats: &StoreStats) -> Value {
    json!({
        "size_on_disk_bytes": stats.size_on_disk_bytes,
        "measured_from": "sled",
        "jobs": stats
            .jobs_by_status
            .iter()
            .map(|(status, count)| (status.as_str().to_string(), json!(count)))
            .collect::<serde_json::Map<String, Value>>(),
        "events_held": stats.events_held,
        "events_compacted": stats.events_compacted,
        "event_summaries": stats.event_summaries,
        "events_max": stats.events_max,
        "pruned_jobs": stats.pruned_jobs,
        "blob_refs": stats.blob_refs,
        "log_lines": stats.log_lines,
    })
}

/// Bytes in MiB with one decimal (KiB below one MiB).
fn size_text(bytes: u64) -> String {
    if bytes < MIB {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    }
}

/// The bytes of every regular file under `dir`.
fn directory_size(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0u64;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current)? {
            let entry = entry?;
            let metadata = entry.metadata()?;
            if metadata.is_dir() {
                pending.push(entry.path());
            } else {
                total = total.saturating_add(metadata.len());
            }
        }
    }
    Ok(total)
}

async fn storage_check(global: &GlobalArgs, home: &Path) -> Check {
    let uri = storage_uri(global, home);
    if let Some(root) = uri.strip_prefix("fs://").map(PathBuf::from)
        && root.is_absolute()
        && !root.exists()
    {
        let ancestor = nearest_existing(&root);
        return if writable(&ancestor) {
            Check::pass(
                "storage",
                format!("{uri}: not created yet; {} is writable", ancestor.display()),
            )
        } else {
            Check::fail(
                "storage",
                format!(
                    "{uri}: cannot be created: {} is not writable",
                    ancestor.display()
                ),
            )
        };
    }
    let storage = match Storage::from_uri(&uri) {
        Ok(storage) => storage,
        Err(error) => return Check::fail("storage", error.to_string()),
    };
    if let Err(error) = storage.stat(REACHABILITY_KEY).await {
        return Check::fail("storage", format!("{uri} does not answer: {error}"));
    }
    if let Some(root) = storage.local_path("")
        && !writable(&root)
    {
        return Check::fail(
            "storage",
            format!("{uri}: {} is not writable", root.display()),
        );
    }
    Check::pass("storage", format!("{uri}: reachable"))
}

fn scratch_check(home: &Path, free_min_bytes: u64) -> Check {
    let scratch = home.join("scratch");
    let measured = nearest_existing(&scratch);
    match free_bytes(&measured) {
        Ok(free) if free >= free_min_bytes => Check::pass(
            "scratch",
            format!(
                "{}: {} MiB free (at least {} MiB needed)",
                scratch.display(),
                free / MIB,
                free_min_bytes / MIB
            ),
        ),
        Ok(free) => Check::fail(
            "scratch",
            format!(
                "{}: only {} MiB free, below the {} MiB needed",
                scratch.display(),
                free / MIB,
                free_min_bytes / MIB
            ),
        ),
        Err(error) => Check::fail(
            "scratch",
            format!(
                "cannot measure free space at {}: {error}",
                measured.display()
            ),
        ),
    }
}

/// `path`, or its closest ancestor that exists (a missing home is measured where it would go).
fn nearest_existing(path: &Path) -> PathBuf {
    path.ancestors()
        .find(|ancestor| ancestor.exists())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

fn c_path(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("a path with a NUL byte"))
}

/// Whether this process may create files in directory `path`.
fn writable(path: &Path) -> bool {
    let Ok(path) = c_path(path) else {
        return false;
    };
    // SAFETY: `path` is a NUL-terminated string that outlives the call; access(2) only reads it.
    unsafe { libc::access(path.as_ptr(), libc::W_OK) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_measured_where_a_missing_directory_would_go() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("a/b/c");
        assert_eq!(nearest_existing(&missing), dir.path());
        assert!(free_bytes(dir.path()).unwrap() > 0);
        assert!(writable(dir.path()));
        let check = scratch_check(&missing, u64::MAX);
        assert!(!check.ok, "{check:?}");
        assert!(check.detail.contains("below"), "{check:?}");
    }
}
