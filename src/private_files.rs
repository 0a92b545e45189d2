//! Private files: what narra creates under its home is its owner's alone, directories 0700 and
//! files 0600. The state store holds raw sources (passwords, signed URLs, webhook tokens) and
//! scratch holds the media, so another local user must not be able to list or read any of it.
//!
//! Two layers: every directory narra creates itself (the home, `state/`, `scratch/` and each
//! job's scratch, an `fs://` object root) is made with mode 0700 here, which keeps a library user
//! (tests, benches, an embedding program) private whatever its umask; and the binary sets the
//! process umask to 0o077 before anything else ([`restrict_umask`]), which catches the files that
//! libraries and children create on their own (sled's files, opendal's objects, ffmpeg's audio,
//! yt-dlp's downloads). `doctor` reads modes back with [`open_to_others`].
//!
//! This module never changes the mode of a path that already exists: an existing home is the
//! operator's, and `doctor` says how to close it.

use std::path::Path;

/// The mode of every directory narra creates.
pub const DIR_MODE: u32 = 0o700;

/// The mode of every file narra creates.
pub const FILE_MODE: u32 = 0o600;

/// Sets the process umask to 0o077, so that every file and directory this process (and each child
/// it spawns, which inherits the umask) creates is closed to group and others. Called first thing
/// by the binary; the umask is process-wide, so a library leaves it to its caller.
pub fn restrict_umask() {
    // SAFETY: umask(2) only sets a process attribute and cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// `std::fs::create_dir_all` with every directory it creates made 0700.
pub fn create_dir_all(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// [`create_dir_all`] for async callers.
pub async fn create_dir_all_async(path: &Path) -> std::io::Result<()> {
    tokio::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
        .await
}

/// Writes `text` to a file at `path` made anew with [`FILE_MODE`] (one left there before is
/// removed first), whatever the umask: for a file that holds a secret (a credential for a child).
pub async fn write_new_async(path: &Path, text: String) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::fs::remove_file(path).await;
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
        .await?;
    file.write_all(text.as_bytes()).await
}

/// Whether a file of `mode` (as `st_mode`) lets its group or others read, write or enter it.
pub fn open_to_others(mode: u32) -> bool {
    mode & 0o077 != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_directories_are_0700_whatever_the_umask() {
        // The test process keeps its usual umask (0o022): the explicit mode alone must do.
        let parent = tempfile::tempdir().unwrap();
        let nested = parent.path().join("a/b");
        create_dir_all(&nested).unwrap();
        for dir in [parent.path().join("a"), nested.clone()] {
            let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, DIR_MODE, "{}", dir.display());
        }
        // An existing directory is left as it is.
        std::fs::set_permissions(&nested, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_dir_all(&nested).unwrap();
        let mode = std::fs::metadata(&nested).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755);
    }

    #[test]
    fn modes_open_to_group_or_others_are_told_apart() {
        assert!(!open_to_others(0o40700));
        assert!(!open_to_others(0o100600));
        assert!(open_to_others(0o40755));
        assert!(open_to_others(0o100640));
        assert!(open_to_others(0o100604));
    }
}
