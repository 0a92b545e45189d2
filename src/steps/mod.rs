//! The steps: download, extract, store. One file each.
//!
//! Steps do the I/O the engine never does: they speak HTTP, spawn ffprobe and ffmpeg, and write
//! objects. They never touch the state store: they take inputs and return outputs, and the engine
//! records checkpoints. Every failure is a [`StepError`] with a stable [`ErrorClass`].

pub mod download;
pub mod egress;
pub mod extract;
pub mod net;
pub mod process;
pub mod redact;
pub mod store;

use std::fmt;

use crate::engine::job::ErrorInfo;

/// The stable error classes users see in `show`, `jobs`, `logs` and the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The source is not something narra can fetch (unknown scheme, malformed URL), or a file whose
    /// format narra refuses to open (playlists such as HLS or concat scripts, which would make
    /// ffmpeg read other files or URLs).
    UnsupportedSource,
    /// HTTP 401/403/451: the platform refused.
    DownloadBlocked,
    /// HTTP 404/410, or a local path that does not exist.
    NotFound,
    RateLimited,
    NetworkTimeout,
    NetworkError,
    ServerError,
    /// Any other HTTP refusal.
    HttpError,
    /// Fewer bytes arrived than the server announced.
    TruncatedDownload,
    /// The video is larger than the workflow's `max_bytes`.
    TooLarge,
    /// The source (or a redirect hop) points at a loopback, private or otherwise non-public address.
    ForbiddenAddress,
    /// ffprobe cannot read the file as media, or ffmpeg found it damaged: invalid data, a missing
    /// moov atom, an empty file, a truncated stream (caught by probing the extracted audio).
    CorruptMedia,
    /// The media has no audio stream to extract.
    NoAudioStream,
    /// The chosen audio stream's codec is one ffmpeg cannot decode.
    UnsupportedCodec,
    /// ffprobe or ffmpeg ran past its timeout and was killed with its whole process group.
    ExtractTimeout,
    /// ffmpeg failed; the message carries ffmpeg's own words.
    ExtractFailed,
    StorageUnavailable,
    /// The object store refused the credentials.
    StorageAuth,
    /// An object does not read back as written.
    ChecksumMismatch,
    StorageError,
    /// Scratch space on the worker could not be written.
    ScratchError,
    Cancelled,
    Internal,
    /// Free scratch space is below the workflow's `scratch_reserve_mb` plus the size the source
    /// announced: the download is not started and the job waits, spending no attempt.
    ScratchLow,
    /// The process running the job died three times at the same point with no progress in
    /// between: the job is quarantined so one poisonous input cannot take workers down again.
    CrashLoop,
}

impl ErrorClass {
    /// Every class, for reading one back from its stored name.
    pub const ALL: [ErrorClass; 25] = [
        ErrorClass::UnsupportedSource,
        ErrorClass::DownloadBlocked,
        ErrorClass::NotFound,
        ErrorClass::RateLimited,
        ErrorClass::NetworkTimeout,
        ErrorClass::NetworkError,
        ErrorClass::ServerError,
        ErrorClass::HttpError,
        ErrorClass::TruncatedDownload,
        ErrorClass::TooLarge,
        ErrorClass::ForbiddenAddress,
        ErrorClass::CorruptMedia,
        ErrorClass::NoAudioStream,
        ErrorClass::UnsupportedCodec,
        ErrorClass::ExtractTimeout,
        ErrorClass::ExtractFailed,
        ErrorClass::StorageUnavailable,
        ErrorClass::StorageAuth,
        ErrorClass::ChecksumMismatch,
        ErrorClass::StorageError,
        ErrorClass::ScratchError,
        ErrorClass::Cancelled,
        ErrorClass::Internal,
        ErrorClass::CrashLoop,
        ErrorClass::ScratchLow,
    ];

    /// The class stored as `name` (`ErrorInfo::class`), if it is one.
    pub fn from_name(name: &str) -> Option<ErrorClass> {
        ErrorClass::ALL
            .into_iter()
            .find(|class| class.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::UnsupportedSource => "unsupported_source",
            ErrorClass::DownloadBlocked => "download_blocked",
            ErrorClass::NotFound => "not_found",
            ErrorClass::RateLimited => "rate_limited",
            ErrorClass::NetworkTimeout => "network_timeout",
            ErrorClass::NetworkError => "network_error",
            ErrorClass::ServerError => "server_error",
            ErrorClass::HttpError => "http_error",
            ErrorClass::TruncatedDownload => "truncated_download",
            ErrorClass::TooLarge => "too_large",
            ErrorClass::ForbiddenAddress => "forbidden_address",
            ErrorClass::CorruptMedia => "corrupt_media",
            ErrorClass::NoAudioStream => "no_audio_stream",
            ErrorClass::UnsupportedCodec => "unsupported_codec",
            ErrorClass::ExtractTimeout => "extract_timeout",
            ErrorClass::ExtractFailed => "extract_failed",
            ErrorClass::StorageUnavailable => "storage_unavailable",
            ErrorClass::StorageAuth => "storage_auth",
            ErrorClass::ChecksumMismatch => "checksum_mismatch",
            ErrorClass::StorageError => "storage_error",
            ErrorClass::ScratchError => "scratch_error",
            ErrorClass::Cancelled => "cancelled",
            ErrorClass::Internal => "internal",
            ErrorClass::CrashLoop => "crash_loop",
            ErrorClass::ScratchLow => "scratch_low",
        }
    }

    /// Whether a later retry may succeed without anyone changing anything.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorClass::RateLimited
                | ErrorClass::NetworkTimeout
                | ErrorClass::NetworkError
                | ErrorClass::ServerError
                | ErrorClass::TruncatedDownload
                | ErrorClass::StorageUnavailable
        )
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A step failure: a class and a message an operator understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{class}: {message}")]
pub struct StepError {
    pub class: ErrorClass,
    pub message: String,
}

impl StepError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> StepError {
        StepError {
            class,
            message: message.into(),
        }
    }

    pub fn retryable(&self) -> bool {
        self.class.retryable()
    }

    pub fn to_info(&self) -> ErrorInfo {
        ErrorInfo {
            class: self.class.as_str().to_string(),
            message: self.message.clone(),
        }
    }

    pub fn scratch(action: &str, path: &std::path::Path, error: std::io::Error) -> StepError {
        StepError::new(
            ErrorClass::ScratchError,
            format!("cannot {action} {}: {error}", path.display()),
        )
    }
}

impl From<crate::storage::StorageError> for StepError {
    fn from(error: crate::storage::StorageError) -> StepError {
        let class = match &error {
            crate::storage::StorageError::Unavailable { .. } => ErrorClass::StorageUnavailable,
            crate::storage::StorageError::Auth { .. } => ErrorClass::StorageAuth,
            crate::storage::StorageError::ChecksumMismatch { .. } => ErrorClass::ChecksumMismatch,
            crate::storage::StorageError::InvalidUri { .. }
            | crate::storage::StorageError::Failed { .. } => ErrorClass::StorageError,
        };
        StepError::new(class, error.to_string())
    }
}

/// A running step's figures so far: bytes downloaded, bytes of audio written, bytes sent to
/// storage. Steps send it into a [`ProgressSender`]; the worker writes the latest figures to the job
/// at most about once a second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub bytes_done: u64,
    pub bytes_total: Option<u64>,
}

/// Where a step reports its [`Progress`]. Sending never waits, whoever reads (or nobody).
pub type ProgressSender = tokio::sync::watch::Sender<Progress>;

/// A cancellation signal a step watches while it waits on a transfer or a subprocess.
pub type Cancel = tokio::sync::watch::Receiver<bool>;

/// Resolves when `cancel` turns true; pending forever if it never does.
pub async fn cancelled(cancel: &mut Cancel) {
    if cancel.wait_for(|cancelled| *cancelled).await.is_err() {
        // The sender is gone: nobody can cancel any more.
        std::future::pending::<()>().await;
    }
}

/// The bytes an unprivileged process may still write on the file system holding `path`.
pub fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("a path with a NUL byte"))?;
    // SAFETY: statvfs is plain old data; all-zero bytes are a valid value of it.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and outlives the call; `stat` is a valid, writable statvfs.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The field types differ between platforms (u32 or u64); both widen losslessly.
    #[allow(clippy::useless_conversion)]
    let (blocks, block_size) = (u64::from(stat.f_bavail), u64::from(stat.f_frsize));
    Ok(blocks.saturating_mul(block_size))
}
