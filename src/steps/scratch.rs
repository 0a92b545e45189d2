//! Making what a step wrote in its scratch directory durable: a file's bytes, then the directory
//! entry a rename made.
//!
//! It never decides which files a step writes or keeps; the steps do.

use std::path::Path;

use super::{ErrorClass, StepError};

/// Fsyncs the file at `path`: its bytes are on disk once this returns.
pub(crate) async fn sync_file(path: &Path) -> Result<(), StepError> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|error| StepError::scratch("open", path, error))?;
    file.sync_all()
        .await
        .map_err(|error| StepError::scratch("sync", path, error))
}

/// Fsyncs the directory `dir`, so a rename into it survives a crash.
pub(crate) async fn sync_dir(dir: &Path) -> Result<(), StepError> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all())
        .await
        .expect("a directory sync does not panic")
        .map_err(|error| {
            StepError::new(
                ErrorClass::ScratchError,
                format!("cannot sync a scratch directory: {error}"),
            )
        })
}
