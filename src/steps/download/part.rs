//! The part file's writer: a blocking thread that writes the body's chunks, hashes them and
//! starts their writeback as they come, and the final sync that makes the part whole.
//!
//! It never decides what is written or whether a part is resumed; the HTTP download does.

use std::path::Path;

use crate::model::job::Hash;
use crate::steps::{StepError, scratch};

/// Chunks a download's writer has in flight at most (on top of one gathered write).
const PART_WRITER_CHUNKS: usize = 8;

/// A download's writer: a blocking thread that owns the part file and the hasher, fed the body's
/// chunks through a bounded channel. It gathers them into writes of `storage::CHUNK_BYTES` and
/// hashes each write as it makes it, so the runtime thread only receives, and hashing runs beside
/// the network on the other core, in large updates (blake3 is faster on them) and with no blocking
/// pool hop per chunk. Memory stays bounded: the channel's chunks and one gathered write.
///
/// A writer dropped without `finish` (the download's future was dropped: a cancel, the step's
/// total timeout) tells its thread to stop before its next write, so no write lands after the
/// step ended, beyond the one in progress.
pub(super) struct PartWriter {
    /// Taken by `finish`, which closes the channel.
    sender: Option<tokio::sync::mpsc::Sender<bytes::Bytes>>,
    /// Taken when a failed `write` collects the writer's error, or by `finish`.
    thread: Option<tokio::task::JoinHandle<std::io::Result<blake3::Hasher>>>,
    abandoned: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for PartWriter {
    fn drop(&mut self) {
        // After `finish` the thread has ended and this changes nothing; dropped anywhere before
        // (mid-`finish` too), it stops the thread's writes.
        self.abandoned
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl PartWriter {
    /// `file` is open at the end of what `hasher` has hashed.
    pub(super) fn start(file: std::fs::File, hasher: blake3::Hasher) -> PartWriter {
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<bytes::Bytes>(PART_WRITER_CHUNKS);
        let abandoned = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = abandoned.clone();
        let thread = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut file = file;
            let mut hasher = hasher;
            let mut write_behind = WriteBehind::at(file.metadata()?.len());
            let mut gathered: Vec<u8> = Vec::with_capacity(crate::storage::CHUNK_BYTES);
            let mut put = |bytes: &[u8], file: &mut std::fs::File| -> std::io::Result<()> {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    return Err(std::io::Error::other("the download was abandoned"));
                }
                file.write_all(bytes)?;
                hasher.update(bytes);
                write_behind.wrote(file, bytes.len());
                Ok(())
            };
            while let Some(chunk) = receiver.blocking_recv() {
                if gathered.is_empty() && chunk.len() >= crate::storage::CHUNK_BYTES {
                    put(&chunk, &mut file)?;
                    continue;
                }
                gathered.extend_from_slice(&chunk);
                if gathered.len() >= crate::storage::CHUNK_BYTES {
                    put(&gathered, &mut file)?;
                    gathered.clear();
                }
            }
            put(&gathered, &mut file)?;
            Ok(hasher)
        });
        PartWriter {
            sender: Some(sender),
            thread: Some(thread),
            abandoned,
        }
    }

    /// Hands a chunk over; fails with the writer's error once it has stopped on one.
    pub(super) async fn write(
        &mut self,
        chunk: bytes::Bytes,
        part_path: &Path,
    ) -> Result<(), StepError> {
        let sent = match &self.sender {
            Some(sender) => sender.send(chunk).await.is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The writer hung up: it stopped on an error, which its result carries.
        let error = match self.thread.take() {
            Some(thread) => match thread.await.expect("the download writer does not panic") {
                Err(error) => error,
                Ok(_) => writer_stopped(),
            },
            None => writer_stopped(),
        };
        Err(StepError::scratch("write", part_path, error))
    }

    /// Writes what is gathered and stops: every chunk handed over is in the file (not yet synced),
    /// so a later attempt resumes from bytes that are really there. The hasher has hashed them all.
    pub(super) async fn finish(mut self, part_path: &Path) -> Result<blake3::Hasher, StepError> {
        drop(self.sender.take());
        let result = match self.thread.take() {
            Some(thread) => thread.await.expect("the download writer does not panic"),
            None => Err(writer_stopped()),
        };
        result.map_err(|error| StepError::scratch("write", part_path, error))
    }
}

/// Bytes written between two write-behind kicks.
const WRITE_BEHIND_BYTES: u64 = 8 * 1024 * 1024;

/// Starts the disk writing a download's bytes while it goes on (`sync_file_range` with
/// `SYNC_FILE_RANGE_WRITE`, which starts the writeback of a range and does not wait for it), every
/// [`WRITE_BEHIND_BYTES`]. The final `fsync` before the download checkpoint then waits for the
/// last few megabytes rather than the whole file: the disk works while the network does. It
/// promises nothing by itself: durability is still the `fsync`'s, so a failed kick is ignored.
struct WriteBehind {
    /// Where the next range to kick starts, and how far the file is written.
    kicked_to: u64,
    written_to: u64,
}

impl WriteBehind {
    fn at(offset: u64) -> WriteBehind {
        WriteBehind {
            kicked_to: offset,
            written_to: offset,
        }
    }

    fn wrote(&mut self, file: &std::fs::File, bytes: usize) {
        use std::os::fd::AsRawFd;
        self.written_to += bytes as u64;
        let pending = self.written_to - self.kicked_to;
        if pending < WRITE_BEHIND_BYTES {
            return;
        }
        let (Ok(offset), Ok(length)) = (
            libc::off64_t::try_from(self.kicked_to),
            libc::off64_t::try_from(pending),
        ) else {
            return;
        };
        // SAFETY: a plain syscall on a descriptor `file` keeps open for the call's duration.
        unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                offset,
                length,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        self.kicked_to = self.written_to;
    }
}

fn writer_stopped() -> std::io::Error {
    std::io::Error::other("the download writer stopped on an earlier error")
}

/// Makes the part whole: its bytes synced to disk, their size and blake3.
pub(super) async fn finish_part(
    part_path: &Path,
    hasher: blake3::Hasher,
    size: u64,
) -> Result<(u64, Hash), StepError> {
    scratch::sync_file(part_path).await?;
    Ok((size, hasher.finalize().into()))
}
