//! The worker's side of the media helpers: a pool of long-lived helper processes, one per job slot
//! that is extracting, each reused across jobs.
//!
//! A call takes an idle helper (or starts one), writes the request, reads progress frames until
//! the final one, and puts the helper back. A helper is never put back after anything but a clean
//! answer: on a timeout or a cancellation it is killed (that is how both are enforced: a C library
//! cannot be interrupted politely), and when it dies on its own (a signal, an abort, a limit) the
//! call says how, and the next call starts a fresh one. So a media bug costs one helper process,
//! never the worker, and never another job: each job's requests go to a helper no other job is
//! using at that moment.
//!
//! Helpers are started from this binary (`std::env::current_exe`) with [`HELPER_ARG`], in a process
//! group of their own, and die with the worker (`PR_SET_PDEATHSIG`, and their stdin closing).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::protocol::{Request, Response, decode_frame, encode_frame, frame_length};
use super::sandbox::Limits;
use crate::steps::process::supervised;
use crate::steps::{Cancel, cancelled};

/// The environment a helper is given: its sandbox switches, the failpoint setting (tests) and the
/// library path. Nothing else of the worker's.
const HELPER_ENV: [&str; 3] = [
    super::sandbox::DISABLE_ENV,
    crate::failpoint::FAILPOINT_ENV,
    "LD_LIBRARY_PATH",
];

/// The first argument that makes the narra binary a media helper (hidden from `--help`).
pub const HELPER_ARG: &str = "__media-helper";

/// Why a call got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The helper ended without answering: how it ended (`killed by signal 6 (SIGABRT)`, ...).
    Died(String),
    /// It did not answer within the timeout, and was killed.
    TimedOut,
    /// The step was cancelled, and the helper killed.
    Cancelled,
    /// It could not be started, or spoke garbage (and was killed).
    Broken(String),
}

/// Long-lived media helpers for one worker.
#[derive(Debug)]
pub struct HelperPool {
    program: PathBuf,
    scratch_root: PathBuf,
    read_roots: Vec<PathBuf>,
    limits: Limits,
    idle: Mutex<Vec<Helper>>,
    started: AtomicU64,
}

enum Outcome {
    Answered(Response),
    Broken(String),
    Stopped,
}

#[derive(Debug)]
struct Helper {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
}

impl HelperPool {
    /// Helpers run `program` (this binary), confined to reading and writing beneath
    /// `scratch_root` and reading beneath `read_roots`.
    pub fn new(
        program: PathBuf,
        scratch_root: PathBuf,
        read_roots: Vec<PathBuf>,
        limits: Limits,
    ) -> HelperPool {
        HelperPool {
            program,
            scratch_root,
            read_roots,
            limits,
            idle: Mutex::new(Vec::new()),
            started: AtomicU64::new(0),
        }
    }

    /// The scratch root helpers are confined to.
    pub fn scratch_root(&self) -> &Path {
        &self.scratch_root
    }

    /// How many helper processes this pool has started: one per job slot in a healthy worker; more
    /// means helpers died or were killed.
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Sends `request` to a helper and returns its final answer; each progress frame's byte count
    /// goes to `on_progress` as it arrives. `fresh`: a newly started helper, never an idle one
    /// (a request sent again after a death must not meet a helper an earlier input damaged).
    pub async fn call(
        &self,
        request: &Request,
        fresh: bool,
        timeout: Duration,
        cancel: &mut Cancel,
        on_progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<Response, CallError> {
        let idle = if fresh { None } else { self.take_idle() };
        let mut helper = match idle {
            Some(helper) => helper,
            None => self.start()?,
        };
        let frame = encode_frame(request).map_err(CallError::Broken)?;
        let exchange = async {
            helper
                .stdin
                .write_all(&frame)
                .await
                .map_err(|error| error.to_string())?;
            loop {
                let response = read_response(&mut helper.stdout).await?;
                match response {
                    Response::Progress { bytes } => on_progress(bytes),
                    other => return Ok(other),
                }
            }
        };
        let outcome = tokio::select! {
            // Biased: an answer that arrived is taken, never killed for a timeout that raced it.
            biased;
            answered = exchange => match answered {
                Ok(response) => Outcome::Answered(response),
                Err(broken) => Outcome::Broken(broken),
            },
            () = cancelled(cancel) => Outcome::Stopped,
            () = tokio::time::sleep(timeout) => Outcome::Stopped,
        };
        match outcome {
            Outcome::Answered(response) => {
                self.put_back(helper);
                Ok(response)
            }
            Outcome::Broken(broken) => Err(ended(helper, broken).await),
            Outcome::Stopped => {
                kill(&mut helper.child).await;
                Err(if *cancel.borrow() {
                    CallError::Cancelled
                } else {
                    CallError::TimedOut
                })
            }
        }
    }

    /// An idle helper that is still alive: one that died while idle (the out-of-memory killer, a
    /// signal) is dropped, so its death is never charged to the next input.
    fn take_idle(&self) -> Option<Helper> {
        let mut idle = self.idle.lock().expect("the pool's lock is never poisoned");
        while let Some(mut helper) = idle.pop() {
            if matches!(helper.child.try_wait(), Ok(None)) {
                return Some(helper);
            }
        }
        None
    }

    fn put_back(&self, helper: Helper) {
        self.idle
            .lock()
            .expect("the pool's lock is never poisoned")
            .push(helper);
    }

    fn start(&self) -> Result<Helper, CallError> {
        // Landlock grants access beneath directories that exist when the helper starts: an
        // object store's root may not exist yet when the first job is extracted.
        for root in std::iter::once(&self.scratch_root).chain(&self.read_roots) {
            crate::private_files::create_dir_all(root).map_err(|error| {
                CallError::Broken(format!("cannot create {}: {error}", root.display()))
            })?;
        }
        let mut command = supervised(&self.program);
        command
            .arg(HELPER_ARG)
            .arg(&self.scratch_root)
            .arg(self.limits.memory_bytes.to_string())
            .arg(self.limits.file_bytes.to_string())
            .args(&self.read_roots)
            // Nothing of the worker's environment (API tokens, webhook secrets, database URIs,
            // cloud credentials) reaches a process that parses hostile media: only what the
            // helper itself reads.
            .env_clear()
            .envs(
                HELPER_ENV
                    .iter()
                    .filter_map(|name| std::env::var_os(name).map(|value| (*name, value))),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // Its own messages (a failpoint, a panic) reach the worker's stderr.
            .stderr(Stdio::inherit());
        let mut child = command.spawn().map_err(|error| {
            CallError::Broken(format!(
                "cannot start the media helper {}: {error}",
                self.program.display()
            ))
        })?;
        self.started.fetch_add(1, Ordering::Relaxed);
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        Ok(Helper {
            child,
            stdin,
            stdout,
        })
    }
}

async fn read_response(stdout: &mut ChildStdout) -> Result<Response, String> {
    let mut prefix = [0u8; 4];
    stdout
        .read_exact(&mut prefix)
        .await
        .map_err(|error| error.to_string())?;
    let mut body = vec![0u8; frame_length(prefix)?];
    stdout
        .read_exact(&mut body)
        .await
        .map_err(|error| error.to_string())?;
    decode_frame(&body)
}

/// A helper that stopped answering: reaped, and how it ended. A helper still alive spoke garbage
/// and is killed first.
async fn ended(mut helper: Helper, broken: String) -> CallError {
    drop(helper.stdin);
    let status = match helper.child.try_wait() {
        Ok(Some(status)) => Some(status),
        _ => {
            // Its stdout ended or failed: it is dying or dead; give it a moment to be reaped
            // before deciding it is alive and garbled.
            match tokio::time::timeout(Duration::from_secs(2), helper.child.wait()).await {
                Ok(Ok(status)) => Some(status),
                _ => None,
            }
        }
    };
    match status {
        Some(status) => CallError::Died(describe_exit(status)),
        None => {
            kill(&mut helper.child).await;
            CallError::Broken(format!("the media helper stopped making sense: {broken}"))
        }
    }
}

/// Kills a helper and reaps it. Only the helper: it starts no process of its own.
/// Kills the helper's whole process group (anything an exploited helper forked dies with it) and
/// reaps the helper.
async fn kill(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SAFETY: a signal to the group the helper leads (its pid, not yet reaped).
        unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// How a process ended, for an operator: `killed by signal 6 (SIGABRT)`, `exited with status 3`.
pub fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.signal(), status.code()) {
        (Some(signal), _) => format!("killed by signal {signal} ({})", signal_name(signal)),
        (None, Some(code)) => format!("exited with status {code}"),
        (None, None) => "ended".to_string(),
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGABRT => "SIGABRT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGSYS => "SIGSYS",
        libc::SIGTERM => "SIGTERM",
        _ => "another signal",
    }
}
