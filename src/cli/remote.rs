//! The CLI while another narra process holds the home: that process serves our command over a
//! unix socket, `<home>/narra.sock`, so an operator can inspect, retry and verify jobs without
//! stopping a running worker or backfill.
//!
//! sled admits one process per store, and `store::lock` lets one narra process hold a home. The
//! holder, whatever its command, listens on the socket for as long as it holds the home
//! ([`Server`], started by `Home::serve`); every other process whose command finds the home held
//! sends its command line there ([`open_or_forward`]) and prints what comes back. Only when no
//! process holds the home does a command open it itself.
//!
//! Trust: the socket file is mode 0600, and every peer's uid (`SO_PEERCRED`) must be this process's
//! effective uid ([`peer_admitted`]): a process of the same user could open the home itself, so it
//! is trusted like the local CLI; anyone else is refused before a byte of its request is read.
//!
//! The protocol, one command per connection. A frame is a 4-byte big-endian length and that many
//! bytes of JSON.
//!
//! 1. The client sends a [`Request`] frame, `{"version": 1, "argv": [...], "cwd": ..., "actor":
//!    "$USER"}`, of at most [`REQUEST_MAX_BYTES`], within [`REQUEST_READ_TIMEOUT`] of connecting.
//! 2. The server answers `{"reply": "accepted"}` once it starts the command, then `{"reply":
//!    "done", "stdout": ..., "stderr": ..., "exit_code": N}` when it ends; a request it refuses
//!    (peer, version, arguments, a command it does not serve) gets `done` alone. A client that
//!    loses the connection before `accepted` knows the command never started, and tries again.
//!
//! Bytes (arguments, the directory, the output) are a JSON string when they are UTF-8, else an
//! array of byte values ([`WireBytes`]).
//!
//! This module never runs a job for a client, nor a command that would: `worker`, `serve`,
//! `ingest`, `backfill MANIFEST` and `reprobe` are refused ([`served_remotely`]), and a served
//! `retry` only queues.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use super::args::{BackfillArgs, ServeArgs};
use super::{Cli, CliError, Command, Context, Home, dispatch, open_home};
use crate::engine::Engine;
use crate::engine::shutdown::Shutdown;
use crate::store::LockError;

/// The socket's name inside the home directory.
pub const SOCKET_FILE_NAME: &str = "narra.sock";
/// The protocol this narra speaks; a request of another version is refused.
pub const PROTOCOL_VERSION: u32 = 1;
/// The largest request frame the server reads: a command line is far smaller.
pub const REQUEST_MAX_BYTES: u32 = 1024 * 1024;
/// The largest reply frame either side handles (a `jobs --json --limit` of many jobs is large).
pub const REPLY_MAX_BYTES: u32 = 1024 * 1024 * 1024;
/// How long the server waits for a request after accepting a connection.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server waits for a client to take a reply.
pub const REPLY_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How many commands the server runs at once; later connections wait to be accepted.
pub const CONNECTIONS_MAX: usize = 16;
/// How long a closing server lets commands it started finish before it abandons them.
pub const CLOSE_WAIT_MAX: Duration = Duration::from_secs(30);
/// How long a client keeps trying when the home is held but its socket does not answer (the
/// holder is starting, or ending): then it reports the home as held.
pub const CONNECT_PATIENCE: Duration = Duration::from_millis(500);
const CONNECT_RETRY_EVERY: Duration = Duration::from_millis(20);
/// The exit code of a client interrupted while the holder ran its command (128 + SIGINT).
const EXIT_INTERRUPTED: u8 = 130;

/// Bytes on the wire: a JSON string when they are UTF-8, so that the JSON reads as what was
/// printed, else an array of byte values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WireBytes {
    Text(String),
    Bytes(Vec<u8>),
}

impl WireBytes {
    pub fn new(bytes: Vec<u8>) -> WireBytes {
        match String::from_utf8(bytes) {
            Ok(text) => WireBytes::Text(text),
            Err(error) => WireBytes::Bytes(error.into_bytes()),
        }
    }

    pub fn into_bytes(self) -> Vec<u8> {
        match self {
            WireBytes::Text(text) => text.into_bytes(),
            WireBytes::Bytes(bytes) => bytes,
        }
    }
}

/// A command line for the holder to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub version: u32,
    /// The client's whole command line, its program name first.
    pub argv: Vec<WireBytes>,
    /// The client's working directory: relative local paths given to `submit` are resolved
    /// against it.
    pub cwd: WireBytes,
    /// The client's user name (`$USER`), the actor of `reset`, `cleanup` and `delete`.
    pub actor: String,
}

impl Request {
    /// A request for this process's own command line and working directory.
    pub fn from_process() -> Result<Request, CliError> {
        let cwd = std::env::current_dir().map_err(|error| {
            CliError::Usage(format!("cannot read the working directory: {error}"))
        })?;
        Ok(Request {
            version: PROTOCOL_VERSION,
            argv: std::env::args_os()
                .map(|arg| WireBytes::new(arg.into_vec()))
                .collect(),
            cwd: WireBytes::new(cwd.into_os_string().into_vec()),
            actor: crate::engine::cleanup::actor_from_env(),
        })
    }
}

/// The server's answers; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// The command has started: from here a lost connection leaves its effect unknown.
    Accepted,
    /// The command ended (or was refused): what it printed and its exit code.
    Done {
        stdout: WireBytes,
        stderr: WireBytes,
        exit_code: u8,
    },
}

impl Reply {
    fn refused(message: String, exit_code: u8) -> Reply {
        Reply::Done {
            stdout: WireBytes::Text(String::new()),
            stderr: WireBytes::Text(format!("narra: {message}\n")),
            exit_code,
        }
    }
}

/// Who holds the home and serves: what a client is told about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// The holder's command, for messages: `worker`, `backfill`, ...
    pub command: &'static str,
    /// Whether the holder claims whatever is queued (`worker`, `serve` without `--no-worker`,
    /// `backfill`), so that a job a
    /// client queues is run without anyone starting a worker.
    pub runs_queue: bool,
}

impl Holder {
    /// This process, running `command`.
    pub fn new(command: &Command) -> Holder {
        Holder {
            pid: std::process::id(),
            command: command.name(),
            runs_queue: matches!(
                command,
                Command::Worker(_)
                    | Command::Serve(ServeArgs {
                        no_worker: false,
                        ..
                    })
                    | Command::Backfill(BackfillArgs { list: false, .. })
            ),
        }
    }

    /// What a served `retry` tells the user about the `count` jobs it queued; `draining`: the
    /// holder is shutting down and claims nothing more.
    pub fn queued_note(&self, count: usize, draining: bool) -> String {
        let them = if count == 1 { "it" } else { "them" };
        let (pid, command) = (self.pid, self.command);
        if self.runs_queue && !draining {
            format!("queued: the running narra (pid {pid}, narra {command}) will run {them}")
        } else if self.runs_queue {
            format!(
                "queued: pid {pid} (narra {command}) is shutting down; `narra worker` runs {them} \
                 once it ends"
            )
        } else {
            format!(
                "queued: pid {pid} (narra {command}) holds the home and runs no jobs; `narra worker` \
                 runs {them} once it ends"
            )
        }
    }
}

/// Whether the holder runs `command` for another process. Not the commands that run jobs in the
/// process that runs them (`worker`, `ingest`, `backfill MANIFEST`: the holder's own work owns
/// the home), nor `reprobe`, which must not run while a worker may write the job and runs it again
/// itself, nor `doctor` and `migrate`, which never need the home, nor `export` and `import`,
/// which must have the store to themselves. (With the state on PostgreSQL
/// nothing is served: the home is not locked, and every process opens the store itself.)
pub fn served_remotely(command: &Command) -> bool {
    !matches!(
        command,
        Command::Worker(_)
            | Command::Serve(_)
            | Command::Ingest(_)
            | Command::Backfill(BackfillArgs { list: false, .. })
            | Command::Reprobe(_)
            | Command::Doctor(_)
            | Command::Migrate
            | Command::Export(_)
            | Command::Import(_)
    )
}

/// Whether a peer is served: only one whose uid is `own_uid`, this process's effective uid (a
/// peer whose credentials cannot be read is not).
pub fn peer_admitted(peer_uid: Option<u32>, own_uid: u32) -> Result<(), String> {
    match peer_uid {
        Some(uid) if uid == own_uid => Ok(()),
        Some(uid) => Err(format!(
            "this narra runs as uid {own_uid} and serves no other user (you are uid {uid})"
        )),
        None => Err("cannot tell who is asking (no peer credentials); refused".to_string()),
    }
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection before a whole frame arrived.
    #[error("the connection closed")]
    Closed,
    #[error("a frame of {bytes} bytes is over the limit of {limit}")]
    TooLarge { bytes: u32, limit: u32 },
    #[error("a malformed frame: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error(transparent)]
    Io(std::io::Error),
}

/// Writes `value` as one frame.
pub async fn write_frame(
    stream: &mut (impl AsyncWriteExt + Unpin),
    value: &impl Serialize,
) -> std::io::Result<()> {
    let body = serde_json::to_vec(value).expect("protocol values serialize");
    let length = u32::try_from(body.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "a frame over 4 GiB"))?;
    stream.write_all(&length.to_be_bytes()).await?;
    stream.write_all(&body).await?;
    stream.flush().await
}

/// Reads one frame of at most `limit` bytes.
pub async fn read_frame<T: serde::de::DeserializeOwned>(
    stream: &mut (impl AsyncReadExt + Unpin),
    limit: u32,
) -> Result<T, FrameError> {
    let closed_or_io = |error: std::io::Error| match error.kind() {
        std::io::ErrorKind::UnexpectedEof
        | std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::BrokenPipe => FrameError::Closed,
        _ => FrameError::Io(error),
    };
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).await.map_err(closed_or_io)?;
    let length = u32::from_be_bytes(length);
    if length > limit {
        return Err(FrameError::TooLarge {
            bytes: length,
            limit,
        });
    }
    let size = usize::try_from(length).expect("a u32 fits in usize on the platforms narra runs");
    let mut body = vec![0u8; size];
    stream.read_exact(&mut body).await.map_err(closed_or_io)?;
    Ok(serde_json::from_slice(&body)?)
}

/// The socket a home's holder listens on.
pub fn socket_path(home: &Path) -> PathBuf {
    home.join(SOCKET_FILE_NAME)
}

/// The holder's listener: serves until closed, and removes its socket file when dropped.
pub struct Server {
    path: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Listens on `<home>/narra.sock` for `engine`'s home. The caller holds the home's lock, so a
    /// socket file already there was left by a process that died: it is replaced.
    pub fn start(engine: Engine, holder: Holder) -> std::io::Result<Server> {
        let path = socket_path(&engine.home);
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::debug!(path = %path.display(), "removed a stale socket"),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        // Bound under another name, made 0600, then renamed into place: the socket is never seen
        // at its path with the umask's mode (the peer check would cover that moment, but a reader
        // of the mode would not).
        let fresh = path.with_extension("sock.new");
        // A leftover of a process that died here is replaced too.
        let _ = std::fs::remove_file(&fresh);
        let listener = UnixListener::bind(&fresh)?;
        let placed = std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::rename(&fresh, &path));
        if let Err(error) = placed {
            let _ = std::fs::remove_file(&fresh);
            return Err(error);
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let own_uid = unsafe { libc::geteuid() };
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(serve(listener, engine, holder, own_uid, stopped));
        tracing::debug!(path = %path.display(), "serving other narra processes");
        Ok(Server {
            path,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Stops accepting, removes the socket file, and lets the commands already started finish
    /// (for at most [`CLOSE_WAIT_MAX`]), so that no client loses a command it was told started.
    pub async fn close(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Server {
    /// Runs before the home's lock is let go (`Home`'s field order), so a socket file is never
    /// removed after the next holder bound its own.
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "cannot remove the socket")
            }
        }
    }
}

/// The accept loop: one task per connection, at most [`CONNECTIONS_MAX`] at once.
async fn serve(
    listener: UnixListener,
    engine: Engine,
    holder: Holder,
    own_uid: u32,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let slot = tokio::select! {
            biased;
            _ = &mut stopped => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let accepted = tokio::select! {
            biased;
            _ = &mut stopped => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let engine = engine.clone();
                let holder = holder.clone();
                connections.spawn(async move {
                    let _slot = slot;
                    serve_connection(stream, &engine, &holder, own_uid).await;
                });
            }
            Err(error) => {
                // Out of file descriptors, say: wait instead of spinning.
                tracing::warn!(%error, "cannot accept a connection on the narra socket");
                drop(slot);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        while connections.try_join_next().is_some() {}
    }
    // No new client may reach us; the ones waiting in the backlog see the connection close before
    // `accepted` and try again (the home, then a new holder's socket).
    drop(listener);
    let path = socket_path(&engine.home);
    if let Err(error) = std::fs::remove_file(&path)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), %error, "cannot remove the socket");
    }
    let finished = tokio::time::timeout(CLOSE_WAIT_MAX, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            commands = connections.len(),
            "abandoning commands served for other narra processes"
        );
    }
}

/// Serves one connection: checks the peer, reads the request, runs it, replies.
async fn serve_connection(mut stream: UnixStream, engine: &Engine, holder: &Holder, own_uid: u32) {
    let peer = stream.peer_cred().ok();
    let reply = match peer_admitted(peer.map(|peer| peer.uid()), own_uid) {
        Err(message) => {
            tracing::warn!(peer_uid = ?peer.map(|peer| peer.uid()), "refused a peer on the narra socket");
            Reply::refused(message, 3)
        }
        Ok(()) => {
            let peer_pid = peer.and_then(|peer| peer.pid());
            answer(&mut stream, engine, holder, peer_pid).await
        }
    };
    let written = tokio::time::timeout(REPLY_WRITE_TIMEOUT, write_frame(&mut stream, &reply)).await;
    if !matches!(written, Ok(Ok(()))) {
        tracing::warn!("a client of the narra socket did not take its reply");
    }
}

/// The reply to one admitted peer's request (`accepted` is sent from here, before the command).
async fn answer(
    stream: &mut UnixStream,
    engine: &Engine,
    holder: &Holder,
    peer_pid: Option<i32>,
) -> Reply {
    let request: Request =
        match tokio::time::timeout(REQUEST_READ_TIMEOUT, read_frame(stream, REQUEST_MAX_BYTES))
            .await
        {
            Ok(Ok(request)) => request,
            Ok(Err(error)) => return Reply::refused(format!("bad request: {error}"), 2),
            Err(_) => return Reply::refused("no request in time".to_string(), 2),
        };
    if request.version != PROTOCOL_VERSION {
        return Reply::refused(
            format!(
                "pid {} speaks protocol version {PROTOCOL_VERSION}, not {}: run the same narra \
                 binary as the process that holds the home",
                holder.pid, request.version
            ),
            2,
        );
    }
    let argv: Vec<OsString> = request
        .argv
        .into_iter()
        .map(|arg| OsString::from_vec(arg.into_bytes()))
        .collect();
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(error) => {
            let text = error.render().to_string();
            let exit_code = u8::try_from(error.exit_code()).unwrap_or(2);
            let (stdout, stderr) = if error.use_stderr() {
                (String::new(), text)
            } else {
                (text, String::new())
            };
            return Reply::Done {
                stdout: WireBytes::Text(stdout),
                stderr: WireBytes::Text(stderr),
                exit_code,
            };
        }
    };
    if !served_remotely(&cli.command) {
        return Reply::refused(
            format!(
                "narra home {} is held by pid {} (narra {}), which cannot run `narra {}` for \
                 another process; stop it to run this",
                engine.home.display(),
                holder.pid,
                holder.command,
                cli.command.name()
            ),
            3,
        );
    }
    let cwd = PathBuf::from(OsString::from_vec(request.cwd.into_bytes()));
    if !cwd.is_absolute() {
        return Reply::refused(
            format!("the working directory {} is not absolute", cwd.display()),
            2,
        );
    }
    if write_frame(stream, &Reply::Accepted).await.is_err() {
        // The client is gone before anything ran: nothing to do for it.
        return Reply::refused("the client left".to_string(), 1);
    }
    tracing::info!(
        peer_pid,
        command = cli.command.name(),
        "serving a command for another narra process"
    );
    let context = Context {
        json: cli.global.json,
        cwd: Some(cwd),
        actor: request.actor,
        served: Some(holder.clone()),
        http: None,
    };
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let exit_code = match dispatch(engine, cli.command, &context, &mut stdout, &mut stderr).await {
        Ok(code) => exit_code_number(code),
        Err(error) => {
            // What `main` prints for a failed command.
            let _ = writeln!(stderr, "narra: {}", error.message());
            error.exit_code()
        }
    };
    let reply = Reply::Done {
        stdout: WireBytes::new(stdout),
        stderr: WireBytes::new(stderr),
        exit_code,
    };
    let size = serde_json::to_vec(&reply).map_or(0, |body| body.len());
    if u32::try_from(size).is_ok_and(|size| size <= REPLY_MAX_BYTES) {
        reply
    } else {
        Reply::refused(
            format!(
                "the output is {size} bytes, over the socket's limit of {REPLY_MAX_BYTES}; \
                 narrow the command (`--limit`, ids) or run it once pid {} ends",
                holder.pid
            ),
            1,
        )
    }
}

/// std's `ExitCode` keeps its number to itself; the commands only ever make 0 to 255 from a `u8`,
/// so it is found by comparison.
fn exit_code_number(code: ExitCode) -> u8 {
    (0..=u8::MAX)
        .find(|number| ExitCode::from(*number) == code)
        .unwrap_or(1)
}

/// What `open_or_forward` did.
pub enum Opened {
    /// No other process held the home: this one does now.
    Home(Box<Home>),
    /// The holder ran the command; its output is printed and this is its exit code.
    Forwarded(ExitCode),
}

/// Why a request to the holder did not come back with a reply.
#[derive(Debug)]
enum ForwardError {
    /// Nobody answered, or the connection closed before the command started: safe to try again.
    Unavailable(String),
    /// The command started and the connection was lost, or the reply was unreadable.
    Lost(String),
}

/// Opens the home; while another process holds it, has that process run this command line and
/// prints what it printed. When the holder does not answer for [`CONNECT_PATIENCE`] (it is
/// starting, or ending: the lock is tried again each time), the home is reported as held.
pub async fn open_or_forward(
    global: &super::GlobalArgs,
    shutdown: &Shutdown,
) -> Result<Opened, CliError> {
    let deadline = tokio::time::Instant::now() + CONNECT_PATIENCE;
    let mut request = None;
    loop {
        let held = match open_home(global).await {
            Ok(home) => return Ok(Opened::Home(Box::new(home))),
            Err(CliError::Locked(held @ LockError::Held { .. })) => held,
            Err(error) => return Err(error),
        };
        let LockError::Held { path, pid } = &held else {
            unreachable!("matched as Held above")
        };
        let request = match &request {
            Some(request) => request,
            None => request.insert(Request::from_process()?),
        };
        let socket = socket_path(path);
        let forwarded = tokio::select! {
            biased;
            () = shutdown.draining() => {
                eprintln!(
                    "narra: interrupted; {} may still carry out the command: check with `narra jobs`",
                    describe_pid(*pid)
                );
                return Ok(Opened::Forwarded(ExitCode::from(EXIT_INTERRUPTED)));
            }
            forwarded = forward(&socket, request) => forwarded,
        };
        match forwarded {
            Ok((stdout, stderr, exit_code)) => {
                // Errors writing our own output are as they would be for a local command's.
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(&stderr);
                let _ = err.flush();
                let mut out = std::io::stdout().lock();
                out.write_all(&stdout).map_err(super::io)?;
                out.flush().map_err(super::io)?;
                return Ok(Opened::Forwarded(ExitCode::from(exit_code)));
            }
            Err(ForwardError::Unavailable(reason)) => {
                if tokio::time::Instant::now() >= deadline {
                    tracing::debug!(%reason, "the holder of the home does not answer");
                    return Err(CliError::Locked(held));
                }
                tokio::time::sleep(CONNECT_RETRY_EVERY).await;
            }
            Err(ForwardError::Lost(reason)) => {
                return Err(CliError::Other(anyhow::anyhow!(
                    "{} holds the home and took the command, but {reason}; it may or may not have \
                     taken effect: check with `narra jobs` or `narra show`",
                    describe_pid(*pid)
                )));
            }
        }
    }
}

fn describe_pid(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("pid {pid}"),
        None => "the narra process".to_string(),
    }
}

/// Sends `request` to the socket at `path` and waits for the command's output and exit code.
async fn forward(path: &Path, request: &Request) -> Result<(Vec<u8>, Vec<u8>, u8), ForwardError> {
    let unavailable = |error: &dyn std::fmt::Display| ForwardError::Unavailable(error.to_string());
    let mut stream = UnixStream::connect(path)
        .await
        .map_err(|error| unavailable(&error))?;
    write_frame(&mut stream, request)
        .await
        .map_err(|error| unavailable(&error))?;
    let mut started = false;
    loop {
        let reply = match read_frame::<Reply>(&mut stream, REPLY_MAX_BYTES).await {
            Ok(reply) => reply,
            Err(FrameError::Closed) if !started => return Err(unavailable(&"closed")),
            Err(FrameError::Closed) => {
                return Err(ForwardError::Lost(
                    "the connection closed before it answered".to_string(),
                ));
            }
            Err(error) => return Err(ForwardError::Lost(format!("its reply: {error}"))),
        };
        match reply {
            Reply::Accepted if !started => started = true,
            Reply::Accepted => {
                return Err(ForwardError::Lost(
                    "its reply: a second `accepted`".to_string(),
                ));
            }
            Reply::Done {
                stdout,
                stderr,
                exit_code,
            } => return Ok((stdout.into_bytes(), stderr.into_bytes(), exit_code)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::orchestrator::test_engine;
    use std::os::unix::ffi::OsStrExt;

    fn engine(home: &Path) -> Engine {
        test_engine::on_sled(home, crate::steps::net::NetworkPolicy::default())
    }

    fn holder() -> Holder {
        Holder {
            pid: std::process::id(),
            command: "worker",
            runs_queue: true,
        }
    }

    /// The request a client would send for `argv` from `cwd`.
    fn request_for(argv: &[&str], cwd: &Path) -> Request {
        Request {
            version: PROTOCOL_VERSION,
            argv: argv
                .iter()
                .map(|arg| WireBytes::Text((*arg).to_string()))
                .collect(),
            cwd: WireBytes::new(cwd.as_os_str().as_bytes().to_vec()),
            actor: "tester".to_string(),
        }
    }

    fn parse(argv: &[&str]) -> Command {
        Cli::try_parse_from(argv)
            .expect("a valid command line")
            .command
    }

    /// Sends raw bytes and reads every reply frame until the server closes.
    async fn raw_exchange(path: &Path, bytes: &[u8]) -> Vec<Reply> {
        let mut stream = UnixStream::connect(path).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        let mut replies = Vec::new();
        loop {
            match read_frame::<Reply>(&mut stream, REPLY_MAX_BYTES).await {
                Ok(reply) => replies.push(reply),
                Err(FrameError::Closed) => return replies,
                Err(error) => panic!("an unreadable reply: {error}"),
            }
        }
    }

    fn done(reply: (Vec<u8>, Vec<u8>, u8)) -> (String, String, u8) {
        (
            String::from_utf8(reply.0).unwrap(),
            String::from_utf8(reply.1).unwrap(),
            reply.2,
        )
    }

    #[test]
    fn only_a_peer_of_our_own_uid_is_admitted() {
        assert_eq!(peer_admitted(Some(1000), 1000), Ok(()));
        let other = peer_admitted(Some(0), 1000).unwrap_err();
        assert!(
            other.contains("uid 1000") && other.contains("uid 0"),
            "{other}"
        );
        assert!(peer_admitted(Some(1001), 1000).is_err());
        assert!(peer_admitted(None, 1000).is_err());
    }

    #[test]
    fn commands_that_run_jobs_are_not_served_and_the_rest_are() {
        for argv in [
            &["narra", "worker"][..],
            &["narra", "worker", "--drain"],
            &["narra", "serve"],
            &["narra", "ingest", "x.mp4"],
            &["narra", "backfill", "manifest.txt"],
            &["narra", "reprobe", "01M8HBG81MHAXSJF1KSJWXGZRJ"],
            &["narra", "doctor"],
        ] {
            assert!(!served_remotely(&parse(argv)), "{argv:?} is refused");
        }
        for argv in [
            &["narra", "jobs"][..],
            &["narra", "--json", "jobs", "--stuck"],
            &["narra", "backfill", "--list"],
            &["narra", "submit", "x.mp4"],
            &["narra", "retry", "--status", "failed"],
            &["narra", "cancel", "--status", "pending"],
            &["narra", "verify"],
            &["narra", "health"],
            &["narra", "incidents"],
        ] {
            assert!(served_remotely(&parse(argv)), "{argv:?} is served");
        }
    }

    #[test]
    fn the_holder_runs_the_queue_only_as_a_worker_or_a_backfill() {
        assert!(Holder::new(&parse(&["narra", "worker"])).runs_queue);
        assert!(Holder::new(&parse(&["narra", "serve"])).runs_queue);
        assert!(!Holder::new(&parse(&["narra", "serve", "--no-worker"])).runs_queue);
        assert!(Holder::new(&parse(&["narra", "backfill", "m.txt"])).runs_queue);
        assert!(!Holder::new(&parse(&["narra", "backfill", "--list"])).runs_queue);
        assert!(!Holder::new(&parse(&["narra", "jobs"])).runs_queue);
        let worker = Holder::new(&parse(&["narra", "worker"]));
        assert!(worker.queued_note(1, false).ends_with("will run it"));
        assert!(worker.queued_note(2, true).contains("is shutting down"));
        let note = Holder::new(&parse(&["narra", "verify"])).queued_note(2, false);
        assert!(
            note.contains("runs no jobs") && note.contains("runs them"),
            "{note}"
        );
    }

    #[test]
    fn bytes_travel_as_text_when_utf8_and_as_byte_values_otherwise() {
        let text = WireBytes::new(b"caf\xc3\xa9\n".to_vec());
        assert_eq!(serde_json::to_string(&text).unwrap(), "\"café\\n\"");
        let binary = WireBytes::new(vec![0x66, 0xff, 0x00]);
        let json = serde_json::to_string(&binary).unwrap();
        assert_eq!(json, "[102,255,0]");
        let back: WireBytes = serde_json::from_str(&json).unwrap();
        assert_eq!(back.into_bytes(), vec![0x66, 0xff, 0x00]);

        let reply = Reply::Done {
            stdout: binary,
            stderr: WireBytes::Text("oops\n".into()),
            exit_code: 1,
        };
        let json = serde_json::to_string(&reply).unwrap();
        assert_eq!(
            json,
            r#"{"reply":"done","stdout":[102,255,0],"stderr":"oops\n","exit_code":1}"#
        );
        assert_eq!(serde_json::from_str::<Reply>(&json).unwrap(), reply);
        assert_eq!(
            serde_json::to_string(&Reply::Accepted).unwrap(),
            r#"{"reply":"accepted"}"#
        );
    }

    // Guards the server end to end in one process: a served command prints what it prints
    // locally, a command that runs jobs is refused with exit 3 naming the holder, a bad command
    // line is a usage error, and closing the server removes its socket.
    #[tokio::test]
    async fn a_served_command_answers_like_a_local_one_and_close_removes_the_socket() {
        let home = tempfile::tempdir().unwrap();
        let engine = engine(home.path());
        let path = socket_path(home.path());
        std::fs::write(&path, b"a stale socket from a dead process").unwrap();
        let server = Server::start(engine.clone(), holder()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the socket is private: {mode:o}");

        let cwd = home.path();
        let (stdout, stderr, code) = done(
            forward(&path, &request_for(&["narra", "--json", "jobs"], cwd))
                .await
                .unwrap(),
        );
        assert_eq!((stdout.as_str(), stderr.as_str(), code), ("[]\n", "", 0));

        let (stdout, stderr, code) = done(
            forward(&path, &request_for(&["narra", "ingest", "x.mp4"], cwd))
                .await
                .unwrap(),
        );
        assert_eq!(code, 3);
        assert!(stdout.is_empty());
        assert!(
            stderr.contains(&format!(
                "held by pid {} (narra worker)",
                std::process::id()
            )) && stderr.contains("`narra ingest`"),
            "{stderr}"
        );

        let (_, stderr, code) = done(
            forward(&path, &request_for(&["narra", "show", "not-an-id"], cwd))
                .await
                .unwrap(),
        );
        assert_eq!(code, 2, "{stderr}");

        let mut relative = request_for(&["narra", "jobs"], cwd);
        relative.cwd = WireBytes::Text("relative/dir".into());
        let (_, stderr, code) = done(forward(&path, &relative).await.unwrap());
        assert_eq!(code, 2, "{stderr}");

        server.close().await;
        assert!(!path.exists(), "the socket is gone");
    }

    // Guards the request limits: a frame announcing more than REQUEST_MAX_BYTES, a request of
    // another protocol version and a malformed one are refused before anything runs (no
    // `accepted`), with exit 2.
    #[tokio::test]
    async fn oversized_malformed_and_foreign_version_requests_are_refused_unrun() {
        let home = tempfile::tempdir().unwrap();
        let server = Server::start(engine(home.path()), holder()).unwrap();
        let path = socket_path(home.path());

        let oversized = (REQUEST_MAX_BYTES + 1).to_be_bytes();
        let mut malformed = 3u32.to_be_bytes().to_vec();
        malformed.extend_from_slice(b"{x}");
        let mut foreign = request_for(&["narra", "jobs"], home.path());
        foreign.version = PROTOCOL_VERSION + 1;
        let foreign = serde_json::to_vec(&foreign).unwrap();
        let mut foreign_frame = u32::try_from(foreign.len()).unwrap().to_be_bytes().to_vec();
        foreign_frame.extend_from_slice(&foreign);

        for (what, bytes) in [
            ("oversized", oversized.to_vec()),
            ("malformed", malformed),
            ("foreign version", foreign_frame),
        ] {
            let replies = raw_exchange(&path, &bytes).await;
            assert_eq!(
                replies.len(),
                1,
                "{what}: one reply, no `accepted`: {replies:?}"
            );
            match &replies[0] {
                Reply::Done {
                    exit_code, stderr, ..
                } => assert_eq!(*exit_code, 2, "{what}: {stderr:?}"),
                other => panic!("{what}: {other:?}"),
            }
        }
        server.close().await;
    }

    #[test]
    fn exit_codes_keep_their_numbers() {
        for number in [0u8, 1, 2, 3, 130, 255] {
            assert_eq!(exit_code_number(ExitCode::from(number)), number);
        }
        assert_eq!(exit_code_number(ExitCode::SUCCESS), 0);
    }
}
