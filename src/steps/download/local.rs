//! Copying a local file (a path or a `file://` URL) into the part file, hashing it as it goes.
//!
//! It never reads anything but the one regular file named.

use std::path::Path;

use crate::model::job::Hash;
use crate::steps::{ErrorClass, StepError};
use crate::workflow::DownloadParams;

pub(super) async fn copy_local(
    source: &Path,
    part_path: &Path,
    params: &DownloadParams,
) -> Result<(u64, Hash), StepError> {
    let source = source.to_path_buf();
    let part_path = part_path.to_path_buf();
    let max_bytes = params.max_bytes;
    tokio::task::spawn_blocking(move || {
        let input = std::fs::File::open(&source).map_err(|error| {
            let class = if error.kind() == std::io::ErrorKind::NotFound {
                ErrorClass::NotFound
            } else {
                ErrorClass::UnsupportedSource
            };
            StepError::new(class, format!("cannot read {}: {error}", source.display()))
        })?;
        let metadata = input.metadata().map_err(|error| {
            StepError::new(
                ErrorClass::UnsupportedSource,
                format!("cannot inspect {}: {error}", source.display()),
            )
        })?;
        if !metadata.is_file() {
            return Err(StepError::new(
                ErrorClass::UnsupportedSource,
                format!("{} is not a regular file", source.display()),
            ));
        }
        if metadata.len() > max_bytes {
            return Err(StepError::new(
                ErrorClass::TooLarge,
                format!(
                    "{} is {} bytes, more than max_bytes = {max_bytes}",
                    source.display(),
                    metadata.len()
                ),
            ));
        }
        let output = std::fs::File::create(&part_path)
            .map_err(|error| StepError::scratch("create", &part_path, error))?;
        let mut reader = std::io::BufReader::with_capacity(crate::storage::CHUNK_BYTES, input);
        let mut writer = HashingWriter {
            inner: std::io::BufWriter::with_capacity(crate::storage::CHUNK_BYTES, output),
            hasher: blake3::Hasher::new(),
        };
        let size = std::io::copy(&mut reader, &mut writer)
            .map_err(|error| StepError::scratch("copy into", &part_path, error))?;
        let file = writer
            .inner
            .into_inner()
            .map_err(|error| StepError::scratch("write", &part_path, error.into_error()))?;
        file.sync_all()
            .map_err(|error| StepError::scratch("sync", &part_path, error))?;
        Ok((size, writer.hasher.finalize().into()))
    })
    .await
    .expect("a local copy does not panic")
}

struct HashingWriter<W> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: std::io::Write> std::io::Write for HashingWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.hasher.update(&bytes[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
