//! Recovery from what sled 0.34.7 leaves in its directory when a write fails there (a full disk)
//! or the process dies, which sled itself cannot open past.
//!
//! sled writes a snapshot of its page table only while it opens a database
//! (`pagecache::snapshot::advance_snapshot`): into `snap.<LSN>.generating`, then synced, then
//! renamed to `snap.<LSN>`. On open it reads the file whose name sorts last among those starting
//! with `snap.`, and `snap.<LSN>.generating` sorts after the finished `snap.<LSN>`: an empty one
//! (12 bytes or fewer) or a partial one (its CRC does not match) fails the open with "Read
//! corrupted data", on every open after. A snapshot write that runs out of space leaves exactly
//! that.
//!
//! Removing such a file is always safe: the open that wrote it failed (an error anywhere in the
//! write or the rename fails the open), so the database never ran past it, and sled rebuilds the
//! same snapshot from the previous one (or none) and its log, as it does after a crash before the
//! rename. The other files sled writes need nothing: an empty or short `conf` is rewritten by sled
//! itself, blob files past the recovered log are removed by sled, and a torn log tail is cut off
//! by its recovery.
//!
//! This module only removes `snap.*.generating` files, and only while holding the file lock sled
//! takes on `db`, so never under a process that has the database open (and may be writing one).
//! It never touches a finished snapshot, the log or the blobs.

use std::fs::TryLockError;
use std::path::{Path, PathBuf};

/// The suffix of a snapshot sled had not finished writing.
const UNFINISHED_SNAPSHOT_SUFFIX: &str = ".generating";

/// Removes every unfinished snapshot in the sled directory `path`, logging a warning naming each,
/// and returns them. Does nothing when there is no database yet, or when another holder has it
/// open (its `db` file is locked): sled's own open then reports the holder.
pub(super) fn remove_unfinished_snapshots(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let db = match std::fs::File::open(path.join("db")) {
        Ok(db) => db,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    // The lock sled takes (fs2's flock): held only for the removal, released when `db` drops.
    match db.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Ok(Vec::new()),
        Err(TryLockError::Error(error)) => return Err(error),
    }
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if !(name.starts_with("snap.") && name.ends_with(UNFINISHED_SNAPSHOT_SUFFIX)) {
            continue;
        }
        let leftover = entry.path();
        let bytes = entry.metadata()?.len();
        std::fs::remove_file(&leftover)?;
        tracing::warn!(
            "removed {} ({bytes} bytes): a snapshot sled had not finished writing, left when a \
             write failed (a full disk?) or the process died while opening the state store; sled \
             rebuilds it from its log",
            leftover.display()
        );
        removed.push(leftover);
    }
    if !removed.is_empty() {
        // The removals are durable before sled writes its next snapshot beside them.
        std::fs::File::open(path)?.sync_all()?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unfinished_snapshots_go_and_only_when_the_database_is_not_held() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        for name in [
            "snap.0000000000000010",
            "conf",
            "snap.0000000000000020.generating",
        ] {
            std::fs::write(path.join(name), b"x").unwrap();
        }
        // No database: nothing to recover, nothing touched.
        assert_eq!(
            remove_unfinished_snapshots(path).unwrap(),
            Vec::<PathBuf>::new()
        );
        let db = std::fs::File::create(path.join("db")).unwrap();

        // Held, as by a process that has the database open: left to it.
        db.lock().unwrap();
        assert_eq!(
            remove_unfinished_snapshots(path).unwrap(),
            Vec::<PathBuf>::new()
        );
        db.unlock().unwrap();

        let removed = remove_unfinished_snapshots(path).unwrap();
        assert_eq!(removed, [path.join("snap.0000000000000020.generating")]);
        for kept in ["snap.0000000000000010", "conf", "db"] {
            assert!(path.join(kept).exists(), "{kept} is kept");
        }
    }
}
