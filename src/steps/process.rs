//! Running ffmpeg-like tools: no shell, stdin closed, a process group of their own, bounded output
//! capture, a timeout, and cancellation.
//!
//! On a timeout or a cancellation the whole process group is killed (SIGKILL) and the child reaped
//! before [`run_process`] returns, so a tool that spawned helpers leaves none behind. A future
//! dropped mid-run kills the group too. This module knows nothing of what the tools do; callers
//! judge their output.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;

use super::{Cancel, cancelled};

/// The most of a tool's stderr kept (half from the start, half from the end).
const STDERR_BYTES_MAX: usize = 16 * 1024;

/// A subprocess that ran to its end.
#[derive(Debug)]
pub struct Finished {
    pub success: bool,
    pub stdout: Vec<u8>,
    /// The first and last parts of stderr, lossily decoded.
    pub stderr: String,
}

/// Why a subprocess did not run to its end.
#[derive(Debug)]
pub enum RunError {
    Spawn(std::io::Error),
    TimedOut,
    Cancelled,
    Wait(std::io::Error),
}

/// Kills a child's whole process group when asked or when dropped while armed. The group's id is
/// the child's pid, which the kernel cannot hand out again before the child is reaped; the guard is
/// disarmed when the child is reaped, so a kill can only ever reach the group the child led.
pub(crate) struct ProcessGroup {
    pgid: libc::pid_t,
    armed: bool,
}

impl ProcessGroup {
    /// The group `child` leads (it must have been spawned with `process_group(0)`), armed.
    pub(crate) fn led_by(child: &tokio::process::Child) -> Option<ProcessGroup> {
        let pgid = child.id().and_then(|pid| libc::pid_t::try_from(pid).ok())?;
        Some(ProcessGroup { pgid, armed: true })
    }

    /// Called once the child is reaped: its pid, and so the group's id, may be reused from now on.
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }

    pub(crate) fn kill(&mut self) {
        if self.armed {
            // SAFETY: kill(2) takes two integers and touches no memory of ours; a negative pid
            // names the process group.
            unsafe {
                libc::kill(-self.pgid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Asks the kernel to SIGKILL the child when the thread that spawned it dies, so a narra killed
/// by a signal (Ctrl-C on `ingest`, `kill -9`) never leaves ffmpeg writing into scratch behind it.
/// Its own process group keeps it out of the terminal's SIGINT, so without this it would survive.
pub fn die_with_parent(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls prctl, which is
    // async-signal-safe; it touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A command for a child narra supervises: in a process group of its own (out of the terminal's
/// SIGINT, and killable as a whole), killed when its handle is dropped, and killed when narra dies
/// ([`die_with_parent`]). The caller sets its arguments and pipes.
pub fn supervised(program: &Path) -> Command {
    let mut command = Command::new(program);
    command.process_group(0).kill_on_drop(true);
    die_with_parent(&mut command);
    command
}

/// What becomes of a tool's stdout. Either way the pipe is read to its end as the tool writes, so
/// the tool never blocks on a full pipe.
enum Stdout<'a> {
    /// The first this many bytes are kept in [`Finished::stdout`]; the rest is dropped.
    Head(usize),
    /// Each chunk is handed over as it arrives, and nothing is kept.
    Each(&'a mut (dyn FnMut(&[u8]) + Send)),
}

/// Runs a program (no shell) in a new process group, stdin closed, with bounded output capture,
/// until it exits, `timeout` passes or `cancel` turns true. On a timeout or a cancellation the
/// whole group is killed and the child reaped before this returns.
pub async fn run_process(
    program: &Path,
    args: &[OsString],
    stdout_max: usize,
    timeout: Duration,
    cancel: &mut Cancel,
) -> Result<Finished, RunError> {
    run(program, args, Stdout::Head(stdout_max), timeout, cancel).await
}

/// [`run_process`], with each chunk of stdout handed to `on_stdout` as it arrives instead of kept
/// ([`Finished::stdout`] is empty): for tools that report as they go (ffmpeg's `-progress`).
/// `on_stdout` runs on the task that drains the pipe, so it must return at once: no I/O, no
/// waiting, and memory of its own bounded.
pub async fn run_process_streaming(
    program: &Path,
    args: &[OsString],
    on_stdout: &mut (dyn FnMut(&[u8]) + Send),
    timeout: Duration,
    cancel: &mut Cancel,
) -> Result<Finished, RunError> {
    run(program, args, Stdout::Each(on_stdout), timeout, cancel).await
}

async fn run(
    program: &Path,
    args: &[OsString],
    stdout_sink: Stdout<'_>,
    timeout: Duration,
    cancel: &mut Cancel,
) -> Result<Finished, RunError> {
    let mut command = supervised(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(RunError::Spawn)?;
    let mut group = ProcessGroup::led_by(&child)
        .ok_or_else(|| RunError::Wait(std::io::Error::other("the child has no pid")))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let ended = {
        let work = async {
            let read_stdout = async {
                match stdout_sink {
                    Stdout::Head(limit) => read_head(stdout, limit).await,
                    Stdout::Each(on_chunk) => {
                        read_each(stdout, on_chunk).await;
                        Vec::new()
                    }
                }
            };
            let (stdout, stderr) =
                tokio::join!(read_stdout, read_head_and_tail(stderr, STDERR_BYTES_MAX));
            (child.wait().await, stdout, stderr)
        };
        tokio::select! {
            // Biased: a child that was just reaped is always taken as finished, never killed.
            biased;
            (status, stdout, stderr) = work => Ok((status, stdout, stderr)),
            () = cancelled(cancel) => Err(RunError::Cancelled),
            () = tokio::time::sleep(timeout) => Err(RunError::TimedOut),
        }
    };
    match ended {
        Ok((status, stdout, stderr)) => {
            // Reaped: the pid may be reused from now on, so the group must never be signalled.
            group.disarm();
            let status = status.map_err(RunError::Wait)?;
            Ok(Finished {
                success: status.success(),
                stdout,
                stderr: String::from_utf8_lossy(&stderr).into_owned(),
            })
        }
        Err(reason) => {
            group.kill();
            let _ = child.wait().await;
            group.disarm();
            Err(reason)
        }
    }
}

/// Reads a pipe to its end, keeping the first `limit` bytes (the rest is drained, so the child
/// never blocks on a full pipe).
pub(super) async fn read_head(
    mut pipe: impl tokio::io::AsyncRead + Unpin,
    limit: usize,
) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(count) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&buffer[..count.min(room)]);
            }
        }
    }
    kept
}

/// Reads a pipe to its end, handing each chunk to `on_chunk` as it arrives.
async fn read_each(
    mut pipe: impl tokio::io::AsyncRead + Unpin,
    on_chunk: &mut (dyn FnMut(&[u8]) + Send),
) {
    let mut buffer = [0u8; 8192];
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(count) => on_chunk(&buffer[..count]),
        }
    }
}

/// Reads a pipe to its end, keeping its first and last `limit / 2` bytes: the first lines say
/// what the input is, the last ones how the run ended.
async fn read_head_and_tail(mut pipe: impl tokio::io::AsyncRead + Unpin, limit: usize) -> Vec<u8> {
    let half = limit / 2;
    let mut head = Vec::new();
    let mut tail: VecDeque<u8> = VecDeque::new();
    let mut dropped = false;
    let mut buffer = [0u8; 8192];
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(count) => {
                let mut bytes = &buffer[..count];
                let room = half.saturating_sub(head.len());
                if room > 0 {
                    let taken = bytes.len().min(room);
                    head.extend_from_slice(&bytes[..taken]);
                    bytes = &bytes[taken..];
                }
                tail.extend(bytes);
                while tail.len() > half {
                    tail.pop_front();
                    dropped = true;
                }
            }
        }
    }
    if dropped {
        head.extend_from_slice(b"\n...\n");
    }
    head.extend(tail);
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `pid` is gone or dead (a zombie waiting for its new parent to reap it).
    fn dead(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            // The state follows the parenthesised command name.
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        }
    }

    /// [`run_process`] on a program looked up on PATH, its stdout read and dropped.
    async fn run_keeping_no_stdout(
        program: &str,
        args: &[OsString],
        timeout: Duration,
        cancel: &mut Cancel,
    ) -> Result<Finished, RunError> {
        run_process(Path::new(program), args, 0, timeout, cancel).await
    }

    // Guards the timeout: a process that never ends is stopped when its timeout passes.
    #[tokio::test]
    async fn a_process_past_its_timeout_is_killed() {
        let (_sender, mut cancel) = tokio::sync::watch::channel(false);
        let args = [OsString::from("600")];
        let result =
            run_keeping_no_stdout("sleep", &args, Duration::from_millis(50), &mut cancel).await;
        assert!(matches!(result, Err(RunError::TimedOut)), "{result:?}");
    }

    // Guards streamed stdout: every byte reaches the handler, in order, however the pipe splits
    // it, and a tool writing far more than a pipe holds runs to its end instead of blocking.
    #[tokio::test]
    async fn streamed_stdout_reaches_the_handler_whole_and_never_fills_the_pipe() {
        let (_sender, mut cancel) = tokio::sync::watch::channel(false);
        let bytes_max = 4 * 1024 * 1024;
        let args = [
            OsString::from("-c"),
            OsString::from(format!("head -c {bytes_max} /dev/zero; echo end")),
        ];
        let mut seen = 0usize;
        let mut tail = Vec::new();
        let mut on_stdout = |chunk: &[u8]| {
            seen += chunk.len();
            tail.extend_from_slice(chunk);
            let keep_from = tail.len().saturating_sub(4);
            tail.drain(..keep_from);
        };
        let finished = run_process_streaming(
            Path::new("sh"),
            &args,
            &mut on_stdout,
            Duration::from_secs(600),
            &mut cancel,
        )
        .await
        .unwrap();
        assert!(finished.success);
        assert!(finished.stdout.is_empty(), "nothing is kept");
        assert_eq!(seen, bytes_max + "end\n".len());
        assert_eq!(tail, b"end\n");
    }

    // Guards the process-group kill: a grandchild of the stopped process (here `sleep`, started by
    // `sh`) must die too, not linger as an orphan.
    #[tokio::test]
    async fn a_cancelled_process_group_is_killed_grandchildren_included() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("grandchild.pid");
        let (sender, mut cancel) = tokio::sync::watch::channel(false);
        let script = format!(
            "sleep 600 & echo $! > {0}.tmp && mv {0}.tmp {0}; wait",
            pid_file.display()
        );
        let args = [OsString::from("-c"), OsString::from(script)];
        // Cancel once the grandchild exists, so the kill cannot race the shell starting it.
        let canceller = tokio::spawn({
            let pid_file = pid_file.clone();
            async move {
                while !pid_file.exists() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                sender.send(true).unwrap();
                sender
            }
        });
        let result =
            run_keeping_no_stdout("sh", &args, Duration::from_secs(600), &mut cancel).await;
        assert!(matches!(result, Err(RunError::Cancelled)), "{result:?}");
        drop(canceller.await.unwrap());
        let grandchild = std::fs::read_to_string(&pid_file).unwrap();
        let grandchild = grandchild.trim();
        // SIGKILL is delivered asynchronously; the deadline only bounds a hang.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !dead(grandchild) {
            assert!(
                std::time::Instant::now() < deadline,
                "the grandchild {grandchild} still runs"
            );
            std::thread::yield_now();
        }
    }
}
