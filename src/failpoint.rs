//! Failpoints: named places on the checkpoint protocol's boundaries where a test can make the
//! process die, as a crash would, to prove that the next run recovers.
//!
//! `NARRA_FAILPOINT=NAME` makes the first pass through [`failpoint!`]`("NAME")` print
//! `narra: failpoint fired: NAME` to stderr and abort the process (SIGABRT: no destructor runs, no
//! buffer is flushed, no lock is released but by the kernel). `NARRA_FAILPOINT=NAME@N` fires on the
//! N-th pass instead. `NARRA_FAILPOINT=NAME%TEXT` fires on every pass whose context contains
//! TEXT, for failpoints placed with one (`failpoint!("job.start", &job.source)`): a "poisonous
//! input" that kills every process that runs it, as the crash-loop tests need. Unset, a failpoint
//! costs one read of an initialised `OnceLock`.
//!
//! Every name is listed in [`FAILPOINTS`], which the crash matrix (`tests/suite/crash.rs`) runs
//! one by one, asserting each one fired; a unit test below checks that every listed name is placed
//! somewhere in `src/`, so a renamed or removed failpoint fails a test instead of passing silently.
//!
//! This module never decides anything about jobs: it only ends the process.

use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that arms one failpoint.
pub const FAILPOINT_ENV: &str = "NARRA_FAILPOINT";

/// Every failpoint, in the order a successful job passes them (the `fail.*` pair is on the failure
/// path: a job whose store step fails). Names are stable: tests and docs/RELIABILITY.md use them.
pub const FAILPOINTS: &[&str] = &[
    // Orchestrator: pending -> running (`OrchestratorStore::claim`, `claim_next`).
    "claim.before",
    "claim.after",
    // Orchestrator: a claimed job about to run its steps (context: the job's source).
    "job.start",
    // Worker: protocol step 1 for the download step (`WorkerStore::set_phase`).
    "phase.downloading.before",
    "phase.downloading.after",
    // Download: the complete, fsynced `original.part` renamed to `original` (protocol step 4).
    "download.scratch.before",
    "download.scratch.after",
    // Worker: protocol step 5 for the download step (`WorkerStore::record_checkpoint`).
    "download.checkpoint.before",
    "download.checkpoint.after",
    "phase.processing.before",
    "phase.processing.after",
    // Extract: the checked, fsynced `tmp-audio.<ext>` renamed to `audio.<ext>`.
    "extract.scratch.before",
    "extract.scratch.after",
    "extract.checkpoint.before",
    "extract.checkpoint.after",
    "phase.storing.before",
    "phase.storing.after",
    // Store step: each content-addressed blob write (video, audio, metadata record; `@N` picks one).
    "store.blob.before",
    // Storage: inside a file write, every byte in the temp file, before it is closed and renamed.
    "storage.put_file.before_close",
    "store.blob.after",
    // Store step: the manifest, written after every blob it names.
    "store.manifest.before",
    "store.manifest.after",
    "store.checkpoint.before",
    "store.checkpoint.after",
    // Worker: protocol step 6, the job's scratch directory removed.
    "scratch.remove.before",
    "scratch.remove.after",
    // Orchestrator: protocol step 7, running -> succeeded.
    "complete.before",
    "complete.after",
    // Orchestrator: running -> failed (a step failed).
    "fail.before",
    "fail.after",
];

/// Failpoints inside the media helper process (`steps::media::helper`), outside the checkpoint
/// protocol, so the crash matrix does not run them: armed with a context (`NAME%TEXT`), they make
/// the helper die on one poisonous input, as a demuxer bug would, for the media-crash tests. The
/// helper inherits the worker's environment, so the setting reaches it.
pub const MEDIA_HELPER_FAILPOINTS: &[&str] = &[
    // The helper probed an input (context: the probe's JSON, tags included).
    "media.helper.probe",
];

/// The armed failpoint, read once from the environment.
struct Armed {
    name: String,
    when: When,
    passes: AtomicU64,
}

/// Which passes fire.
#[derive(Debug, Clone, PartialEq, Eq)]
enum When {
    /// This pass (1-based).
    Pass(u64),
    /// Every pass whose context contains this text.
    Context(String),
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var(FAILPOINT_ENV).ok()?;
            let (name, when) = parse_spec(&spec)?;
            Some(Armed {
                name: name.to_string(),
                when,
                passes: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// `NAME`, `NAME@N` (N >= 1) or `NAME%TEXT` (TEXT not empty); anything else arms nothing.
fn parse_spec(spec: &str) -> Option<(&str, When)> {
    let spec = spec.trim();
    let (name, when) = if let Some((name, text)) = spec.split_once('%') {
        (name, When::Context(text.to_string()).check()?)
    } else {
        match spec.split_once('@') {
            Some((name, hit)) => (
                name,
                When::Pass(hit.parse::<u64>().ok().filter(|&hit| hit >= 1)?),
            ),
            None => (spec, When::Pass(1)),
        }
    };
    (!name.is_empty()).then_some((name, when))
}

impl When {
    fn check(self) -> Option<When> {
        match &self {
            When::Context(text) if text.is_empty() => None,
            _ => Some(self),
        }
    }
}

/// One pass through failpoint `name` (with `context`, for failpoints placed with one): aborts
/// the process if it is the armed one and this is a pass it fires on. Use [`failpoint!`].
pub fn pass(name: &'static str, context: Option<&str>) {
    let Some(armed) = armed() else {
        return;
    };
    if armed.name != name {
        return;
    }
    let passes = armed.passes.fetch_add(1, Ordering::Relaxed) + 1;
    let fires = match &armed.when {
        When::Pass(hit) => passes == *hit,
        When::Context(text) => context.is_some_and(|context| context.contains(text.as_str())),
    };
    if !fires {
        return;
    }
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "narra: failpoint fired: {name}");
    let _ = stderr.flush();
    std::process::abort();
}

/// `failpoint!("name")`: a place where `NARRA_FAILPOINT=name` aborts the process. The name must be
/// listed in [`FAILPOINTS`] or [`MEDIA_HELPER_FAILPOINTS`].
#[macro_export]
macro_rules! failpoint {
    ($name:literal) => {
        $crate::failpoint::pass($name, None)
    };
    ($name:literal, $context:expr) => {
        $crate::failpoint::pass($name, Some($context))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_a_failpoint_and_optionally_a_pass() {
        assert_eq!(
            parse_spec("claim.before"),
            Some(("claim.before", When::Pass(1)))
        );
        assert_eq!(
            parse_spec("store.blob.after@3"),
            Some(("store.blob.after", When::Pass(3)))
        );
        assert_eq!(
            parse_spec("job.start%poison.mp4"),
            Some(("job.start", When::Context("poison.mp4".to_string())))
        );
        assert_eq!(parse_spec("job.start%"), None);
        assert_eq!(parse_spec("store.blob.after@0"), None);
        assert_eq!(parse_spec("store.blob.after@x"), None);
        assert_eq!(parse_spec(""), None);
    }

    // Guards the crash matrix against a failpoint that was renamed or removed from the code: every
    // listed name is placed, as `failpoint!("name")`, exactly once in `src/`, and every placed
    // name is listed.
    #[test]
    fn every_listed_failpoint_is_placed_once_and_every_placed_one_is_listed() {
        let mut sources = Vec::new();
        let mut pending = vec![std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src"
        ))];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).expect("read src") {
                let path = entry.expect("an entry").path();
                if path.is_dir() {
                    pending.push(path);
                } else if path.extension().is_some_and(|extension| extension == "rs")
                    && !path.ends_with("failpoint.rs")
                {
                    sources.push(std::fs::read_to_string(&path).expect("read a source file"));
                }
            }
        }
        let marker = "failpoint!(\"";
        let mut placed = Vec::new();
        for source in &sources {
            for (index, _) in source.match_indices(marker) {
                let rest = &source[index + marker.len()..];
                let end = rest.find('"').expect("a closing quote");
                placed.push(rest[..end].to_string());
            }
        }
        for name in FAILPOINTS.iter().chain(MEDIA_HELPER_FAILPOINTS) {
            let count = placed.iter().filter(|placed| placed == name).count();
            assert_eq!(count, 1, "failpoint {name} is placed {count} times in src/");
        }
        for name in &placed {
            assert!(
                FAILPOINTS.contains(&name.as_str())
                    || MEDIA_HELPER_FAILPOINTS.contains(&name.as_str()),
                "failpoint {name} is not listed in FAILPOINTS or MEDIA_HELPER_FAILPOINTS"
            );
        }
    }
}
