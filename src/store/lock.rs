//! The home lock: one narra process per home directory.
//!
//! sled allows a single process per database, and two narra processes sharing a home would also
//! share scratch directories. [`HomeLock`] takes an exclusive advisory lock (`flock`) on
//! `<home>/narra.lock` and writes the holder's pid into it, so a second process can say who holds
//! the home. The lock is released when the [`HomeLock`] is dropped or the process dies; the file is
//! never deleted, because deleting a lock file races with a process that has just opened it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The lock file's name inside the home directory.
pub const LOCK_FILE_NAME: &str = "narra.lock";

/// Why the home could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "narra home {} is in use by another narra process ({}); wait for it to finish or stop it",
        path.display(),
        describe_pid(*pid)
    )]
    Held { path: PathBuf, pid: Option<u32> },
    #[error("cannot lock the narra home: {0}")]
    Io(#[from] std::io::Error),
}

fn describe_pid(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("pid {pid}"),
        None => "pid unknown".to_string(),
    }
}

/// An exclusive lock on a narra home, held until dropped.
#[derive(Debug)]
pub struct HomeLock {
    home: PathBuf,
    // Kept open only for its lock: closing the file releases it.
    _file: File,
}

impl HomeLock {
    /// Creates `home` if missing and locks it, or reports the process that holds it.
    pub fn acquire(home: &Path) -> Result<HomeLock, LockError> {
        crate::private_files::create_dir_all(home)?;
        let path = home.join(LOCK_FILE_NAME);
        // No truncate: the holder's pid must survive our open so that we can report it.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(crate::private_files::FILE_MODE)
            .open(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let pid = read_pid(&file);
                return Err(LockError::Held {
                    path: home.to_path_buf(),
                    pid,
                });
            }
            Err(TryLockError::Error(error)) => return Err(LockError::Io(error)),
        }
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        writeln!(file, "{}", std::process::id())?;
        file.sync_all()?;
        tracing::debug!(home = %home.display(), pid = std::process::id(), "locked narra home");
        Ok(HomeLock {
            home: home.to_path_buf(),
            _file: file,
        })
    }

    /// The home directory this lock holds.
    pub fn home(&self) -> &Path {
        &self.home
    }
}

/// The pid the holder wrote, if it can be read: the holder may be between truncating and writing.
fn read_pid(file: &File) -> Option<u32> {
    let mut reader = file;
    reader.seek(SeekFrom::Start(0)).ok()?;
    let mut contents = String::new();
    // A pid is a few bytes; anything longer is not a pid.
    reader.take(64).read_to_string(&mut contents).ok()?;
    contents.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_acquire_in_the_same_process_is_held_with_our_pid() {
        // flock locks belong to the open file description, so a second open in this process
        // conflicts with the first just as another process would.
        let home = tempfile::tempdir().expect("tempdir");
        let _lock = HomeLock::acquire(home.path()).expect("first acquire");
        match HomeLock::acquire(home.path()) {
            Err(LockError::Held { path, pid }) => {
                assert_eq!(path, home.path());
                assert_eq!(pid, Some(std::process::id()));
            }
            other => panic!("expected Held, got {other:?}"),
        }
    }

    #[test]
    fn acquire_after_drop_succeeds() {
        let home = tempfile::tempdir().expect("tempdir");
        let lock = HomeLock::acquire(home.path()).expect("first acquire");
        drop(lock);
        let lock = HomeLock::acquire(home.path()).expect("acquire after drop");
        assert_eq!(lock.home(), home.path());
    }

    #[test]
    fn acquire_creates_a_missing_home_and_writes_the_pid() {
        let parent = tempfile::tempdir().expect("tempdir");
        let home = parent.path().join("nested").join("home");
        let _lock = HomeLock::acquire(&home).expect("acquire");
        let contents = std::fs::read_to_string(home.join(LOCK_FILE_NAME)).expect("read lock file");
        assert_eq!(contents, format!("{}\n", std::process::id()));
    }

    #[test]
    fn held_message_names_the_home_and_the_pid() {
        let error = LockError::Held {
            path: PathBuf::from("/x"),
            pid: Some(1234),
        };
        assert_eq!(
            error.to_string(),
            "narra home /x is in use by another narra process (pid 1234); wait for it to finish or \
             stop it"
        );
        let error = LockError::Held {
            path: PathBuf::from("/x"),
            pid: None,
        };
        assert!(error.to_string().contains("(pid unknown)"));
    }
}
