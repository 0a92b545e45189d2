//! Object storage: the opendal operator built from a storage URI, the object layout, atomic writes,
//! change tokens and content hashing of stored objects.
//!
//! Only this module imports opendal. It knows nothing of jobs' status or of the state store: it is
//! given keys and files and answers with sizes, hashes and change tokens. It never deletes an object.
//!
//! Layout: content-addressed blobs `blobs/<first 2 hex of blake3>/<blake3>.<ext>` (identical media
//! from two jobs is stored once) and a per-job manifest `jobs/<job id>/manifest.json`.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::TryStreamExt;
use opendal::{ErrorKind, Operator, services};
use tokio::io::AsyncReadExt;

use crate::engine::job::{ChangeToken, Hash, JobId};

/// The chunk size of streamed reads and writes: big enough for throughput, small enough that memory
/// does not grow with the size of a video.
pub const CHUNK_BYTES: usize = 1024 * 1024;

/// The directory under an `fs://` root where objects are written before they are renamed into place.
pub const FS_ATOMIC_WRITE_DIR: &str = ".narra-tmp";

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The storage URI cannot be used at all: a configuration error.
    #[error("invalid storage URI {uri:?}: {reason}")]
    InvalidUri { uri: String, reason: String },
    /// A remote object store failed or could not be reached: worth retrying.
    #[error("object store unavailable while {action} {key}: {message}")]
    Unavailable {
        action: &'static str,
        key: String,
        message: String,
    },
    /// A write or read that will not work by retrying: a local path that is not a directory, a
    /// permission refused, a read-only filesystem, bad credentials.
    #[error("storage error while {action} {key}: {message}")]
    Failed {
        action: &'static str,
        key: String,
        message: String,
    },
}

impl StorageError {
    /// The stable error class users see.
    pub fn class(&self) -> &'static str {
        match self {
            StorageError::InvalidUri { .. } => "invalid_config",
            StorageError::Unavailable { .. } => "storage_unavailable",
            StorageError::Failed { .. } => "storage_error",
        }
    }

    pub fn retryable(&self) -> bool {
        matches!(self, StorageError::Unavailable { .. })
    }
}

/// What `stat` tells of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectStat {
    pub size: u64,
    pub change_token: ChangeToken,
}

/// A storage root: an opendal operator plus what narra needs to know of its backend.
#[derive(Debug, Clone)]
pub struct Storage {
    operator: Operator,
    uri: String,
    /// For `fs://` roots: the directory, for change tokens (inode, size, mtime) and directory fsync.
    fs_root: Option<PathBuf>,
}

impl Storage {
    /// Builds the operator for a storage URI: `fs:///absolute/path` or `memory://`.
    pub fn from_uri(uri: &str) -> Result<Storage, StorageError> {
        let invalid = |reason: &str| StorageError::InvalidUri {
            uri: uri.to_string(),
            reason: reason.to_string(),
        };
        if let Some(path) = uri.strip_prefix("fs://") {
            let root = PathBuf::from(path);
            if !root.is_absolute() {
                return Err(invalid(
                    "an fs:// root must be an absolute path, as in fs:///srv/media",
                ));
            }
            if root.exists() && !root.is_dir() {
                return Err(invalid("the root exists and is not a directory"));
            }
            std::fs::create_dir_all(root.join(FS_ATOMIC_WRITE_DIR))
                .map_err(|error| invalid(&format!("cannot create the root: {error}")))?;
            let root_text = root
                .to_str()
                .ok_or_else(|| invalid("the root is not UTF-8"))?;
            let atomic_dir = root.join(FS_ATOMIC_WRITE_DIR);
            let builder = services::Fs::default()
                .root(root_text)
                .atomic_write_dir(atomic_dir.to_str().expect("a UTF-8 root joined with ASCII"));
            let operator = Operator::new(builder).map_err(|error| invalid(&error.to_string()))?;
            return Ok(Storage {
                operator,
                uri: uri.to_string(),
                fs_root: Some(root),
            });
        }
        if uri == "memory://" || uri.starts_with("memory://") {
            let operator = Operator::new(services::Memory::default())
                .map_err(|error| invalid(&error.to_string()))?;
            return Ok(Storage {
                operator,
                uri: uri.to_string(),
                fs_root: None,
            });
        }
        Err(invalid("supported schemes are fs:///path and memory://"))
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The file behind a key, for `fs://` roots: steps read stored originals in place from it.
    pub fn local_path(&self, key: &str) -> Option<PathBuf> {
        self.fs_root.as_ref().map(|root| root.join(key))
    }

    /// The size and change token of an object, or `None` when it does not exist.
    pub async fn stat(&self, key: &str) -> Result<Option<ObjectStat>, StorageError> {
        if let Some(path) = self.local_path(key) {
            return match tokio::fs::metadata(&path).await {
                Ok(metadata) if metadata.is_file() => Ok(Some(ObjectStat {
                    size: metadata.len(),
                    change_token: file_change_token(&metadata),
                })),
                Ok(_) => Ok(None),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(error) if error.kind() == std::io::ErrorKind::NotADirectory => Ok(None),
                Err(error) => Err(StorageError::Failed {
                    action: "checking",
                    key: key.to_string(),
                    message: error.to_string(),
                }),
            };
        }
        match self.operator.stat(key).await {
            Ok(metadata) => Ok(Some(ObjectStat {
                size: metadata.content_length(),
                change_token: metadata
                    .etag()
                    .map(|etag| ChangeToken::ETag(etag.to_string()))
                    .unwrap_or(ChangeToken::None),
            })),
            Err(error) if error.kind() == ErrorKind::NotFound => Ok(None),
            Err(error) => Err(self.classify("checking", key, error)),
        }
    }

    /// Streams an object through blake3: its size and hash, or `None` when it does not exist.
    pub async fn hash_object(&self, key: &str) -> Result<Option<(u64, Hash)>, StorageError> {
        if let Some(path) = self.local_path(key) {
            return match hash_file(&path).await {
                Ok(found) => Ok(Some(found)),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(error) => Err(StorageError::Failed {
                    action: "reading",
                    key: key.to_string(),
                    message: error.to_string(),
                }),
            };
        }
        let reader = match self.operator.reader_with(key).chunk(CHUNK_BYTES).await {
            Ok(reader) => reader,
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(self.classify("reading", key, error)),
        };
        let mut stream = match reader.into_bytes_stream(..).await {
            Ok(stream) => stream,
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(self.classify("reading", key, error)),
        };
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        while let Some(chunk) = stream
            .try_next()
            .await
            .map_err(|error| self.classify_io("reading", key, error))?
        {
            size += chunk.len() as u64;
            hasher.update(&chunk);
        }
        Ok(Some((size, hasher.finalize().into())))
    }

    /// Writes a local file to `key`, streamed in chunks. On `fs://` roots the object is written to
    /// a temp file, fsynced, renamed into place, and its directories fsynced: a crash leaves either
    /// no object or the whole object at the key, never part of one.
    pub async fn put_file(&self, key: &str, path: &Path) -> Result<ObjectStat, StorageError> {
        let read_failed = |error: std::io::Error| StorageError::Failed {
            action: "reading the local file for",
            key: key.to_string(),
            message: format!("{}: {error}", path.display()),
        };
        let mut file = tokio::fs::File::open(path).await.map_err(read_failed)?;
        let mut writer = self
            .operator
            .writer_with(key)
            .chunk(CHUNK_BYTES * 8)
            .concurrent(4)
            .await
            .map_err(|error| self.classify("writing", key, error))?;
        let mut buffer = vec![0u8; CHUNK_BYTES];
        loop {
            let count = match file.read(&mut buffer).await {
                Ok(count) => count,
                Err(error) => {
                    let _ = writer.abort().await;
                    return Err(read_failed(error));
                }
            };
            if count == 0 {
                break;
            }
            if let Err(error) = writer.write(Bytes::copy_from_slice(&buffer[..count])).await {
                let _ = writer.abort().await;
                return Err(self.classify("writing", key, error));
            }
        }
        writer
            .close()
            .await
            .map_err(|error| self.classify("writing", key, error))?;
        self.after_write(key).await
    }

    /// Writes a small object whole (the manifest and metadata records), atomically like `put_file`.
    pub async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<ObjectStat, StorageError> {
        self.operator
            .write(key, bytes)
            .await
            .map_err(|error| self.classify("writing", key, error))?;
        self.after_write(key).await
    }

    /// Reads a whole small object.
    pub async fn read_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        match self.operator.read(key).await {
            Ok(buffer) => Ok(Some(buffer.to_vec())),
            Err(error) if error.kind() == ErrorKind::NotFound => Ok(None),
            Err(error) => Err(self.classify("reading", key, error)),
        }
    }

    /// Streams an object into a local file, hashing it on the way: its size and hash.
    pub async fn read_to_file(
        &self,
        key: &str,
        target: &Path,
    ) -> Result<(u64, Hash), StorageError> {
        let write_failed = |error: std::io::Error| StorageError::Failed {
            action: "copying to scratch",
            key: key.to_string(),
            message: format!("{}: {error}", target.display()),
        };
        let reader = self
            .operator
            .reader_with(key)
            .chunk(CHUNK_BYTES)
            .await
            .map_err(|error| self.classify("reading", key, error))?;
        let mut stream = reader
            .into_bytes_stream(..)
            .await
            .map_err(|error| self.classify("reading", key, error))?;
        let mut file = tokio::fs::File::create(target)
            .await
            .map_err(write_failed)?;
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        while let Some(chunk) = stream
            .try_next()
            .await
            .map_err(|error| self.classify_io("reading", key, error))?
        {
            size += chunk.len() as u64;
            hasher.update(&chunk);
            tokio::io::AsyncWriteExt::write_all(&mut file, &chunk)
                .await
                .map_err(write_failed)?;
        }
        file.sync_all().await.map_err(write_failed)?;
        Ok((size, hasher.finalize().into()))
    }

    async fn after_write(&self, key: &str) -> Result<ObjectStat, StorageError> {
        if let (Some(root), Some(path)) = (&self.fs_root, self.local_path(key)) {
            // The rename is durable only once the directory entries that lead to it are.
            let root = root.clone();
            let key_owned = key.to_string();
            tokio::task::spawn_blocking(move || sync_parent_dirs(&root, &path))
                .await
                .expect("directory sync does not panic")
                .map_err(|error| StorageError::Failed {
                    action: "syncing the directory of",
                    key: key_owned,
                    message: error.to_string(),
                })?;
        }
        self.stat(key)
            .await?
            .ok_or_else(|| StorageError::Unavailable {
                action: "checking",
                key: key.to_string(),
                message: "the object is missing right after it was written".into(),
            })
    }

    fn classify(&self, action: &'static str, key: &str, error: opendal::Error) -> StorageError {
        let message = error.to_string();
        let permanent = self.fs_root.is_some()
            || matches!(
                error.kind(),
                ErrorKind::PermissionDenied | ErrorKind::ConfigInvalid | ErrorKind::NotADirectory
            );
        if permanent {
            StorageError::Failed {
                action,
                key: key.to_string(),
                message,
            }
        } else {
            StorageError::Unavailable {
                action,
                key: key.to_string(),
                message,
            }
        }
    }

    fn classify_io(&self, action: &'static str, key: &str, error: std::io::Error) -> StorageError {
        if self.fs_root.is_some() {
            StorageError::Failed {
                action,
                key: key.to_string(),
                message: error.to_string(),
            }
        } else {
            StorageError::Unavailable {
                action,
                key: key.to_string(),
                message: error.to_string(),
            }
        }
    }
}

/// The content-addressed key of a blob.
pub fn blob_key(hash: &Hash, extension: &str) -> String {
    let hex = hash.to_hex();
    format!("blobs/{}/{hex}.{extension}", &hex[..2])
}

/// The key of a job's manifest.
pub fn manifest_key(job_id: JobId) -> String {
    format!("jobs/{job_id}/manifest.json")
}

/// The change token of a local file: inode, size and mtime in nanoseconds.
pub fn file_change_token(metadata: &std::fs::Metadata) -> ChangeToken {
    use std::os::unix::fs::MetadataExt;
    ChangeToken::File {
        inode: metadata.ino(),
        size: metadata.len(),
        mtime_ns: metadata
            .mtime()
            .saturating_mul(1_000_000_000)
            .saturating_add(metadata.mtime_nsec()),
    }
}

/// Streams a local file through blake3 on a blocking thread: its size and hash.
pub async fn hash_file(path: &Path) -> std::io::Result<(u64, Hash)> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut hasher = blake3::Hasher::new();
        let file = std::fs::File::open(&path)?;
        let size = std::io::copy(
            &mut std::io::BufReader::with_capacity(CHUNK_BYTES, file),
            &mut hasher,
        )?;
        Ok((size, hasher.finalize().into()))
    })
    .await
    .expect("hashing does not panic")
}

/// Fsyncs every directory from `path`'s parent up to and including `root`.
fn sync_parent_dirs(root: &Path, path: &Path) -> std::io::Result<()> {
    let mut directory = path.parent();
    while let Some(current) = directory {
        std::fs::File::open(current)?.sync_all()?;
        if current == root || !current.starts_with(root) {
            break;
        }
        directory = current.parent();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fs_put_file_lands_whole_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("objects");
        let storage = Storage::from_uri(&format!("fs://{}", root.display())).unwrap();
        let source = dir.path().join("source.bin");
        let bytes: Vec<u8> = (0..3 * CHUNK_BYTES + 17).map(|i| (i % 251) as u8).collect();
        std::fs::write(&source, &bytes).unwrap();
        let hash = Hash::of(&bytes);
        let key = blob_key(&hash, "bin");

        let stat = storage.put_file(&key, &source).await.unwrap();

        assert_eq!(stat.size, bytes.len() as u64);
        assert!(matches!(stat.change_token, ChangeToken::File { .. }));
        assert_eq!(std::fs::read(root.join(&key)).unwrap(), bytes);
        assert_eq!(
            storage.hash_object(&key).await.unwrap(),
            Some((bytes.len() as u64, hash))
        );
        let leftovers = std::fs::read_dir(root.join(FS_ATOMIC_WRITE_DIR))
            .unwrap()
            .count();
        assert_eq!(leftovers, 0, "the temp file was renamed into place");
    }

    #[tokio::test]
    async fn a_root_that_is_a_file_is_refused_as_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let error = Storage::from_uri(&format!("fs://{}", file.display())).unwrap_err();
        assert_eq!(error.class(), "invalid_config");
    }

    #[tokio::test]
    async fn writing_under_a_file_fails_as_storage_error() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("objects");
        let storage = Storage::from_uri(&format!("fs://{}", root.display())).unwrap();
        std::fs::write(root.join("blobs"), b"in the way").unwrap();
        let error = storage
            .put_bytes("blobs/ab/abc.json", b"{}".to_vec())
            .await
            .unwrap_err();
        assert_eq!(error.class(), "storage_error");
        assert!(!error.retryable());
    }

    #[tokio::test]
    async fn missing_objects_stat_and_hash_as_none() {
        let storage = Storage::from_uri("memory://").unwrap();
        assert_eq!(storage.stat("blobs/aa/none.bin").await.unwrap(), None);
        assert_eq!(
            storage.hash_object("blobs/aa/none.bin").await.unwrap(),
            None
        );
        storage
            .put_bytes("k.json", b"{\"a\":1}".to_vec())
            .await
            .unwrap();
        assert_eq!(
            storage.read_bytes("k.json").await.unwrap().unwrap(),
            b"{\"a\":1}"
        );
    }
}
