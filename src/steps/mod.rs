//! The steps: download, extract, store. A folder for a step of several concerns, a file for one.
//!
//! Steps do the I/O the engine never does: they speak HTTP, spawn ffprobe and ffmpeg, and write
//! objects. They never touch the state store: they take inputs and return outputs, and the engine
//! records checkpoints. Every failure is a [`StepError`] with a stable [`ErrorClass`].

pub mod download;
pub mod egress;
pub mod extract;
pub mod media;
pub mod net;
pub mod process;
pub mod scratch;
pub mod store;

use crate::model::ErrorClass;
use crate::model::job::ErrorInfo;

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
