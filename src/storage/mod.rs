//! Object storage: the opendal operator built from a storage URI, the object layout, atomic writes,
//! change tokens and content hashing of stored objects.
//!
//! Only this module imports opendal. It knows nothing of jobs' status or of the state store: it is
//! given keys and files and answers with sizes, hashes and change tokens. It deletes an object only
//! when `engine::cleanup` asks (`narra cleanup --confirm`, `narra delete --confirm`).
//!
//! Layout: content-addressed blobs `blobs/<first 2 hex of blake3>/<blake3>.<ext>` (identical media
//! from two jobs is stored once) and a per-job manifest `jobs/<job id>/manifest.json`.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::TryStreamExt;
use opendal::{ErrorKind, Operator, services};
use tokio::io::AsyncReadExt;

use crate::model::job::{ChangeToken, Hash, JobId};

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
    /// The object store refused our credentials: retrying will not help.
    #[error("object store refused the credentials while {action} {key}: {message}")]
    Auth {
        action: &'static str,
        key: String,
        message: String,
    },
    /// A write or read that will not work by retrying: a local path that is not a directory, a
    /// permission refused, a read-only filesystem.
    #[error("storage error while {action} {key}: {message}")]
    Failed {
        action: &'static str,
        key: String,
        message: String,
    },
    /// What was written does not read back as written.
    #[error("{key}: {message}")]
    ChecksumMismatch { key: String, message: String },
}

impl StorageError {
    /// The stable error class users see.
    pub fn class(&self) -> &'static str {
        match self {
            StorageError::InvalidUri { .. } => "invalid_config",
            StorageError::Unavailable { .. } => "storage_unavailable",
            StorageError::Auth { .. } => "storage_auth",
            StorageError::Failed { .. } => "storage_error",
            StorageError::ChecksumMismatch { .. } => "checksum_mismatch",
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
    /// The blake3 narra recorded in the object's user metadata, where the backend keeps it. It is
    /// what narra wrote, not a hash of what is there now: `--deep` checks re-hash.
    pub recorded_blake3: Option<Hash>,
}

/// How an object is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// Recorded in user metadata (`blake3`) where the backend keeps user metadata.
    pub blake3: Option<Hash>,
    /// Refuse to overwrite an existing object (content-addressed keys), where the backend can.
    pub if_not_exists: bool,
}

/// What happened to a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// The object was written.
    Written(ObjectStat),
    /// `if_not_exists` was asked and the key already held an object (someone else wrote it).
    AlreadyExists,
}

/// The user-metadata key narra records an object's blake3 under.
pub const BLAKE3_METADATA_KEY: &str = "blake3";

/// Multipart part size and concurrency for object stores (set with `chunk_mib` and `concurrency`
/// in the storage URI's query).
const DEFAULT_CHUNK_MIB: usize = 8;
const DEFAULT_CONCURRENCY: usize = 4;

/// A storage root: an opendal operator plus what narra needs to know of its backend.
#[derive(Debug, Clone)]
pub struct Storage {
    operator: Operator,
    uri: String,
    /// For `fs://` roots: the directory, for change tokens (inode, size, mtime) and directory fsync.
    fs_root: Option<PathBuf>,
    /// Whether the backend keeps user metadata (checked through its capability: unsupported user
    /// metadata is dropped or refused depending on the backend).
    user_metadata: bool,
    if_not_exists: bool,
    chunk_bytes: usize,
    concurrency: usize,
}

impl Storage {
    /// Builds the operator for a storage URI:
    /// - `fs:///absolute/path`
    /// - `s3://bucket/prefix?endpoint=URL&region=R&path_style=true` (else `AWS_ENDPOINT_URL`,
    ///   `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`)
    /// - `azblob://container/prefix?endpoint=URL&account=NAME` (else `AZURE_STORAGE_ACCOUNT`,
    ///   `AZURE_STORAGE_KEY`, `AZURE_STORAGE_ENDPOINT`)
    /// - `gcs://bucket/prefix` (credentials from `GOOGLE_APPLICATION_CREDENTIALS`)
    /// - `memory://` (tests)
    ///
    /// Object stores get opendal's timeout layer inside its retry layer (with jitter), so a timed out
    /// attempt is retried rather than the retry being cut short, and tracing outermost.
    pub fn from_uri(uri: &str) -> Result<Storage, StorageError> {
        // Registers the services and the HTTP transport object stores speak through; safe to call
        // more than once.
        opendal::install_default();
        let invalid = |reason: &str| StorageError::InvalidUri {
            uri: crate::model::redact::redact_url(uri),
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
            crate::private_files::create_dir_all(&root.join(FS_ATOMIC_WRITE_DIR))
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
                // Change tokens and recorded checkpoints stand in for user metadata on files.
                user_metadata: false,
                if_not_exists: false,
                chunk_bytes: CHUNK_BYTES * DEFAULT_CHUNK_MIB,
                concurrency: 1,
            });
        }
        if uri.starts_with("memory://") {
            let operator = Operator::new(services::Memory::default())
                .map_err(|error| invalid(&error.to_string()))?;
            return Storage::remote(operator, uri, &Default::default());
        }
        let parsed = url::Url::parse(uri).map_err(|error| invalid(&error.to_string()))?;
        let query: std::collections::HashMap<String, String> = parsed
            .query_pairs()
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect();
        let env = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        // A setting of the URI's query, else of the environment variable that stands for it.
        let setting =
            |name: &str, variable: &str| query.get(name).cloned().or_else(|| env(variable));
        let container = parsed
            .host_str()
            .filter(|host| !host.is_empty())
            .ok_or_else(|| {
                invalid("the bucket or container is missing, as in s3://bucket/prefix")
            })?;
        let root = format!("/{}", parsed.path().trim_matches('/'));
        let operator = match parsed.scheme() {
            "s3" => {
                let mut builder = services::S3::default().bucket(container).root(&root);
                if let Some(endpoint) = setting("endpoint", "AWS_ENDPOINT_URL") {
                    builder = builder.endpoint(&endpoint);
                }
                let region = setting("region", "AWS_REGION")
                    .or_else(|| env("AWS_DEFAULT_REGION"))
                    .unwrap_or_else(|| "us-east-1".to_string());
                builder = builder.region(&region);
                if let (Some(key), Some(secret)) =
                    (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY"))
                {
                    builder = builder.access_key_id(&key).secret_access_key(&secret);
                    if let Some(token) = env("AWS_SESSION_TOKEN") {
                        builder = builder.session_token(&token);
                    }
                }
                if let Some(profile) = env("AWS_PROFILE") {
                    builder = builder.profile(&profile);
                }
                if query.get("path_style").map(String::as_str) == Some("false") {
                    builder = builder.enable_virtual_host_style();
                }
                Operator::new(builder).map_err(|error| invalid(&error.to_string()))?
            }
            "azblob" => {
                let mut builder = services::Azblob::default().container(container).root(&root);
                if let Some(endpoint) = setting("endpoint", "AZURE_STORAGE_ENDPOINT") {
                    builder = builder.endpoint(&endpoint);
                }
                if let Some(account) = setting("account", "AZURE_STORAGE_ACCOUNT") {
                    builder = builder.account_name(&account);
                }
                if let Some(key) = env("AZURE_STORAGE_KEY") {
                    builder = builder.account_key(&key);
                }
                Operator::new(builder).map_err(|error| invalid(&error.to_string()))?
            }
            "gcs" => {
                let mut builder = services::Gcs::default().bucket(container).root(&root);
                if let Some(path) = env("GOOGLE_APPLICATION_CREDENTIALS") {
                    builder = builder.credential_path(&path);
                }
                if let Some(endpoint) = query.get("endpoint") {
                    builder = builder.endpoint(endpoint);
                }
                Operator::new(builder).map_err(|error| invalid(&error.to_string()))?
            }
            _ => {
                return Err(invalid(
                    "supported schemes are fs:///path, s3://bucket/prefix, azblob://container/prefix, gcs://bucket/prefix and memory://",
                ));
            }
        };
        let operator = operator
            .layer(
                opendal::layers::TimeoutLayer::default()
                    .with_timeout(std::time::Duration::from_secs(60))
                    .with_io_timeout(std::time::Duration::from_secs(30)),
            )
            .layer(
                opendal::layers::RetryLayer::default()
                    .with_jitter()
                    .with_max_times(3)
                    .with_min_delay(std::time::Duration::from_millis(100))
                    .with_max_delay(std::time::Duration::from_secs(5)),
            )
            .layer(opendal::layers::TracingLayer::default());
        Storage::remote(operator, uri, &query)
    }

    fn remote(
        operator: Operator,
        uri: &str,
        query: &std::collections::HashMap<String, String>,
    ) -> Result<Storage, StorageError> {
        let capability = operator.info().capability();
        let number = |name: &str, default: usize| {
            query
                .get(name)
                .and_then(|value| value.parse::<usize>().ok())
                .filter(|value| *value > 0)
                .unwrap_or(default)
        };
        Ok(Storage {
            operator,
            uri: uri.to_string(),
            fs_root: None,
            user_metadata: capability.write_with_user_metadata && capability.stat,
            if_not_exists: capability.write_with_if_not_exists,
            // S3 refuses parts under 5 MiB (but the last).
            chunk_bytes: CHUNK_BYTES * number("chunk_mib", DEFAULT_CHUNK_MIB).max(5),
            concurrency: number("concurrency", DEFAULT_CONCURRENCY),
        })
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Whether narra's blake3 survives in this backend's user metadata.
    pub fn keeps_user_metadata(&self) -> bool {
        self.user_metadata
    }

    /// The directory an `fs://` backend keeps its objects in; `None` for every other backend.
    pub fn local_root(&self) -> Option<&Path> {
        self.fs_root.as_deref()
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
                    recorded_blake3: None,
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
                recorded_blake3: metadata
                    .user_metadata()
                    .and_then(|user| user.get(BLAKE3_METADATA_KEY).map(str::to_string))
                    .and_then(|hex| parse_hash(&hex)),
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
        let mut digest = Digest::default();
        while self
            .next_chunk(key, &mut stream, &mut digest)
            .await?
            .is_some()
        {}
        Ok(Some(digest.finish()))
    }

    /// The next chunk of object `key` read through `stream`, counted into `digest`; `None` at the
    /// end of the object.
    async fn next_chunk(
        &self,
        key: &str,
        stream: &mut opendal::FuturesBytesStream,
        digest: &mut Digest,
    ) -> Result<Option<Bytes>, StorageError> {
        let chunk = stream
            .try_next()
            .await
            .map_err(|error| self.classify_io("reading", key, error))?;
        if let Some(chunk) = &chunk {
            digest.size += chunk.len() as u64;
            digest.hasher.update(chunk);
        }
        Ok(chunk)
    }

    /// Writes a local file to `key`, streamed in chunks (multipart with concurrency on object
    /// stores, always closed or aborted). On `fs://` roots the object is written to a temp file,
    /// fsynced, renamed into place, and its directories fsynced: a crash leaves either no object or
    /// the whole object at the key, never part of one. An object-store multipart upload is not
    /// visible at its key until it completes.
    pub async fn put_file(
        &self,
        key: &str,
        path: &Path,
        options: WriteOptions,
    ) -> Result<Written, StorageError> {
        self.put_file_reporting(key, path, options, &|_| {}).await
    }

    /// [`Storage::put_file`], calling `on_sent` with the bytes handed to the writer so far after
    /// each chunk (an object store may still be uploading the last parts until the close). It runs
    /// between chunks of the upload, so it must return at once.
    pub async fn put_file_reporting(
        &self,
        key: &str,
        path: &Path,
        options: WriteOptions,
        on_sent: &(dyn Fn(u64) + Sync),
    ) -> Result<Written, StorageError> {
        let read_failed = |error: std::io::Error| StorageError::Failed {
            action: "reading the local file for",
            key: key.to_string(),
            message: format!("{}: {error}", path.display()),
        };
        let expected = tokio::fs::metadata(path).await.map_err(read_failed)?.len();
        let mut file = tokio::fs::File::open(path).await.map_err(read_failed)?;
        let mut writer = match self
            .operator
            .writer_with(key)
            .chunk(self.chunk_bytes)
            .concurrent(self.concurrency)
            .if_not_exists(options.if_not_exists && self.if_not_exists)
            .user_metadata(self.metadata_for(&options))
            .await
        {
            Ok(writer) => writer,
            Err(error) if error.kind() == ErrorKind::ConditionNotMatch => {
                return Ok(Written::AlreadyExists);
            }
            Err(error) => return Err(self.classify("writing", key, error)),
        };
        let mut buffer = vec![0u8; CHUNK_BYTES];
        // What is uploaded is hashed on the way: a local file that changed since it was
        // checkpointed must never land under a content-addressed name that is not its own.
        let mut hasher = blake3::Hasher::new();
        let mut sent = 0u64;
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
            hasher.update(&buffer[..count]);
            sent += count as u64;
            if let Err(error) = writer.write(Bytes::copy_from_slice(&buffer[..count])).await {
                let _ = writer.abort().await;
                return Err(self.classify("writing", key, error));
            }
            on_sent(sent);
        }
        // Every byte is in the temp file (in `.narra-tmp/` on `fs://`), nothing at the key yet.
        before_close_failpoint();
        let sent_hash: Hash = hasher.finalize().into();
        if sent != expected || options.blake3.is_some_and(|blake3| blake3 != sent_hash) {
            let _ = writer.abort().await;
            return Err(StorageError::ChecksumMismatch {
                key: key.to_string(),
                message: format!(
                    "the local file changed while it was uploaded ({sent} bytes, blake3 {sent_hash}; expected {expected} bytes{}); nothing was written",
                    options
                        .blake3
                        .map(|blake3| format!(", blake3 {blake3}"))
                        .unwrap_or_default()
                ),
            });
        }
        match writer.close().await {
            Ok(_) => {}
            Err(error) if error.kind() == ErrorKind::ConditionNotMatch => {
                // Never leave a multipart upload open.
                let _ = writer.abort().await;
                return Ok(Written::AlreadyExists);
            }
            Err(error) => {
                let _ = writer.abort().await;
                return Err(self.classify("writing", key, error));
            }
        }
        self.after_write(key, expected).await.map(Written::Written)
    }

    /// [`Storage::put_file_reporting`] for a local file whose blake3 the caller computed when the
    /// file had the change token `hashed_at` (inode, size, mtime). On `fs://` roots, when the file
    /// still has that token and lies on the root's filesystem, it is hard-linked into place instead
    /// of copied: linked into the temp directory, fsynced (its data already is: the steps fsync
    /// what they write), renamed to the key, and the key's directories fsynced, the same protocol
    /// as a copy. Its bytes are then not hashed again: the unchanged token stands for them, as it
    /// does when `verify` or the runner skips a done step. Anything else (another filesystem, a
    /// changed token, no token, an object store) goes through the streamed, hashed copy.
    pub async fn put_local_file(
        &self,
        key: &str,
        path: &Path,
        options: WriteOptions,
        hashed_at: Option<&ChangeToken>,
        on_sent: &(dyn Fn(u64) + Sync),
    ) -> Result<Written, StorageError> {
        if let (Some(root), Some(target), Some(token)) =
            (&self.fs_root, self.local_path(key), hashed_at)
            && matches!(token, ChangeToken::File { .. })
        {
            let linked = {
                let root = root.clone();
                let source = path.to_path_buf();
                let token = token.clone();
                tokio::task::spawn_blocking(move || {
                    link_into_place(&root, &source, &target, &token)
                })
                .await
                .expect("linking does not panic")
            };
            match linked {
                Ok(Some(size)) => {
                    on_sent(size);
                    return self.after_write(key, size).await.map(Written::Written);
                }
                Ok(None) => {}
                Err(error) => {
                    return Err(StorageError::Failed {
                        action: "linking",
                        key: key.to_string(),
                        message: format!("{}: {error}", path.display()),
                    });
                }
            }
        }
        self.put_file_reporting(key, path, options, on_sent).await
    }

    /// Writes a small object whole (the manifest and metadata records), atomically like `put_file`.
    pub async fn put_bytes(
        &self,
        key: &str,
        bytes: Vec<u8>,
        options: WriteOptions,
    ) -> Result<Written, StorageError> {
        let expected = bytes.len() as u64;
        match self
            .operator
            .write_with(key, bytes)
            .if_not_exists(options.if_not_exists && self.if_not_exists)
            .user_metadata(self.metadata_for(&options))
            .await
        {
            Ok(_) => {}
            Err(error) if error.kind() == ErrorKind::ConditionNotMatch => {
                return Ok(Written::AlreadyExists);
            }
            Err(error) => return Err(self.classify("writing", key, error)),
        }
        self.after_write(key, expected).await.map(Written::Written)
    }

    fn metadata_for(&self, options: &WriteOptions) -> Vec<(String, String)> {
        match options.blake3 {
            Some(hash) if self.user_metadata => {
                vec![(BLAKE3_METADATA_KEY.to_string(), hash.to_hex())]
            }
            _ => Vec::new(),
        }
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
        // A missing object is not an outage: nothing will bring it back by waiting.
        let missing = |error: opendal::Error| {
            if error.kind() == ErrorKind::NotFound {
                StorageError::Failed {
                    action: "reading",
                    key: key.to_string(),
                    message: "the object is missing".to_string(),
                }
            } else {
                self.classify("reading", key, error)
            }
        };
        let reader = self
            .operator
            .reader_with(key)
            .chunk(CHUNK_BYTES)
            .await
            .map_err(missing)?;
        let mut stream = reader.into_bytes_stream(..).await.map_err(missing)?;
        let mut file = tokio::fs::File::create(target)
            .await
            .map_err(write_failed)?;
        let mut digest = Digest::default();
        while let Some(chunk) = self.next_chunk(key, &mut stream, &mut digest).await? {
            tokio::io::AsyncWriteExt::write_all(&mut file, &chunk)
                .await
                .map_err(write_failed)?;
        }
        file.sync_all().await.map_err(write_failed)?;
        Ok(digest.finish())
    }

    async fn after_write(&self, key: &str, expected: u64) -> Result<ObjectStat, StorageError> {
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
        let stat = self
            .stat(key)
            .await?
            .ok_or_else(|| StorageError::ChecksumMismatch {
                key: key.to_string(),
                message: format!("missing right after writing {expected} bytes"),
            })?;
        if stat.size != expected {
            return Err(StorageError::ChecksumMismatch {
                key: key.to_string(),
                message: format!("reads back as {} bytes after writing {expected}", stat.size),
            });
        }
        Ok(stat)
    }

    fn classify(&self, action: &'static str, key: &str, error: opendal::Error) -> StorageError {
        let message = crate::model::redact::redact_text(&error.to_string());
        let key = key.to_string();
        if self.fs_root.is_some() {
            return StorageError::Failed {
                action,
                key,
                message,
            };
        }
        // A signer that cannot load credentials reports an unexpected error, but no retry fixes it.
        let credentials_missing = message.contains("credential");
        match error.kind() {
            _ if credentials_missing => StorageError::Auth {
                action,
                key,
                message,
            },
            // A write or listing answered "not found" means the bucket or container is missing: a
            // configuration error that waiting will not fix.
            ErrorKind::NotFound if action != "checking" && action != "reading" => {
                StorageError::Failed {
                    action,
                    key,
                    message: format!("the bucket or container does not exist: {message}"),
                }
            }
            ErrorKind::PermissionDenied => StorageError::Auth {
                action,
                key,
                message,
            },
            ErrorKind::ConfigInvalid | ErrorKind::NotADirectory | ErrorKind::IsADirectory => {
                StorageError::Failed {
                    action,
                    key,
                    message,
                }
            }
            _ => StorageError::Unavailable {
                action,
                key,
                message,
            },
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

/// One object found by [`Storage::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
    /// When the object was last written, where the backend says.
    pub last_modified: Option<crate::model::job::Timestamp>,
}

// Listing and deleting, for `narra cleanup` and `narra delete` only (`engine::cleanup`): the steps
// never delete.
impl Storage {
    /// Every object under `prefix` (a directory such as `blobs/`, with its slash), recursively, in
    /// key order. On `fs://` roots the temp directory of atomic writes ([`FS_ATOMIC_WRITE_DIR`]) is
    /// listed only when asked for by name: its files are writes that never finished. Incomplete
    /// multipart uploads are not objects and are never listed: no opendal backend lists them.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ListedObject>, StorageError> {
        if let Some(root) = self.fs_root.clone() {
            let prefix_owned = prefix.to_string();
            let listed = tokio::task::spawn_blocking(move || list_fs(&root, &prefix_owned))
                .await
                .expect("listing does not panic");
            return listed.map_err(|error| StorageError::Failed {
                action: "listing",
                key: prefix.to_string(),
                message: error.to_string(),
            });
        }
        let entries = match self.operator.list_with(prefix).recursive(true).await {
            Ok(entries) => entries,
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(self.classify("listing", prefix, error)),
        };
        let mut listed = Vec::with_capacity(entries.len());
        for entry in entries {
            if !entry.metadata().is_file() {
                continue;
            }
            let key = entry.path().to_string();
            // Some backends list names only: ask for the size and time where they are missing.
            let metadata = if entry.metadata().content_length() == 0
                || entry.metadata().last_modified().is_none()
            {
                match self.operator.stat(&key).await {
                    Ok(metadata) => metadata,
                    Err(error) if error.kind() == ErrorKind::NotFound => continue,
                    Err(error) => return Err(self.classify("checking", &key, error)),
                }
            } else {
                entry.metadata().clone()
            };
            listed.push(ListedObject {
                key,
                size: metadata.content_length(),
                last_modified: metadata.last_modified().and_then(|time| {
                    let time = std::time::SystemTime::from(time);
                    time.duration_since(std::time::UNIX_EPOCH)
                        .ok()
                        .and_then(|since| i64::try_from(since.as_millis()).ok())
                        .map(crate::model::job::Timestamp)
                }),
            });
        }
        listed.sort_by(|left, right| left.key.cmp(&right.key));
        Ok(listed)
    }

    /// Deletes an object. A key that holds nothing is not an error: deleting is idempotent.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        if let (Some(root), Some(path)) = (self.fs_root.clone(), self.local_path(key)) {
            let key_owned = key.to_string();
            let removed = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                    Err(error) => return Err(error),
                }
                // The removal is durable once its directory entry is.
                sync_parent_dirs(&root, &path)
            })
            .await
            .expect("deleting does not panic");
            return removed.map_err(|error| StorageError::Failed {
                action: "deleting",
                key: key_owned,
                message: error.to_string(),
            });
        }
        match self.operator.delete(key).await {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == ErrorKind::NotFound => Ok(()),
            Err(error) => Err(self.classify("deleting", key, error)),
        }
    }
}

/// The files under `root/prefix`, as keys relative to `root`, skipping the atomic-write directory.
fn list_fs(root: &Path, prefix: &str) -> std::io::Result<Vec<ListedObject>> {
    use std::os::unix::fs::MetadataExt;
    let mut listed = Vec::new();
    let mut pending = vec![root.join(prefix)];
    while let Some(directory) = pending.pop() {
        let entries = match std::fs::read_dir(&directory) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            let metadata = match entry.metadata() {
                Ok(metadata) => metadata,
                // Removed since the directory was read.
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => return Err(error),
            };
            let Ok(relative) = path.strip_prefix(root) else {
                continue;
            };
            if relative.starts_with(FS_ATOMIC_WRITE_DIR) && !prefix.starts_with(FS_ATOMIC_WRITE_DIR)
            {
                continue;
            }
            if metadata.is_dir() {
                pending.push(path);
            } else if metadata.is_file()
                && let Some(key) = relative.to_str()
            {
                let millis = metadata
                    .mtime()
                    .saturating_mul(1_000)
                    .saturating_add(metadata.mtime_nsec() / 1_000_000);
                listed.push(ListedObject {
                    key: key.to_string(),
                    size: metadata.len(),
                    last_modified: Some(crate::model::job::Timestamp(millis)),
                });
            }
        }
    }
    listed.sort_by(|left, right| left.key.cmp(&right.key));
    Ok(listed)
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

/// The size and blake3 hash of bytes read so far, chunk by chunk.
#[derive(Default)]
struct Digest {
    hasher: blake3::Hasher,
    size: u64,
}

impl Digest {
    fn finish(self) -> (u64, Hash) {
        (self.size, self.hasher.finalize().into())
    }
}

/// Streams a local file through blake3 on a blocking thread: its size and hash.
pub async fn hash_file(path: &Path) -> std::io::Result<(u64, Hash)> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || hash_file_blocking(&path))
        .await
        .expect("hashing does not panic")
}

/// Buffers in flight between `hash_file_blocking`'s reader and its hasher.
const HASH_BUFFERS: usize = 3;

/// Hash buffers kept between `hash_file` calls, so a call does not allocate, fault in and free
/// [`HASH_BUFFERS`] MiB of fresh memory (measured at a few percent of a 64 MiB hash). At most
/// [`HASH_BUFFERS_KEPT`] are kept: calls running at once beyond that allocate their own.
static HASH_BUFFER_POOL: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());
const HASH_BUFFERS_KEPT: usize = 2 * HASH_BUFFERS;

/// One call's buffers: taken from the pool (or allocated), given back when dropped.
struct HashBuffers(Vec<Vec<u8>>);

impl HashBuffers {
    fn take() -> HashBuffers {
        let mut pool = HASH_BUFFER_POOL
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut buffers: Vec<Vec<u8>> = (0..HASH_BUFFERS).filter_map(|_| pool.pop()).collect();
        drop(pool);
        buffers.resize_with(HASH_BUFFERS, || vec![0u8; CHUNK_BYTES]);
        HashBuffers(buffers)
    }
}

impl Drop for HashBuffers {
    fn drop(&mut self) {
        let mut pool = HASH_BUFFER_POOL
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for buffer in self.0.drain(..) {
            if pool.len() < HASH_BUFFERS_KEPT && buffer.len() == CHUNK_BYTES {
                pool.push(buffer);
            }
        }
    }
}

/// Hashes a file on this thread while a second thread reads it: the copy out of the page cache
/// (a `read`) of one chunk overlaps the hashing of the one before, so hashing runs at close to the
/// blake3 crate's own single-thread speed instead of waiting for each read. Hashing
/// itself stays on one thread. Memory: [`HASH_BUFFERS`] chunks of [`CHUNK_BYTES`] per call, and
/// up to [`HASH_BUFFERS_KEPT`] chunks kept in the pool for the life of the process.
fn hash_file_blocking(path: &Path) -> std::io::Result<(u64, Hash)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let length = file.metadata()?.len();
    if length <= CHUNK_BYTES as u64 {
        // One read: a second thread would cost more than it overlaps. A file that grew since the
        // stat is hashed to its end all the same, the rest streamed.
        let mut bytes = Vec::with_capacity(usize::try_from(length).unwrap_or(CHUNK_BYTES));
        (&mut file)
            .take(CHUNK_BYTES as u64)
            .read_to_end(&mut bytes)?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(&bytes);
        let rest = std::io::copy(&mut file, &mut hasher)?;
        return Ok((bytes.len() as u64 + rest, hasher.finalize().into()));
    }
    let (full_sender, full) =
        std::sync::mpsc::sync_channel::<std::io::Result<(Vec<u8>, usize)>>(HASH_BUFFERS);
    let (empty_sender, empty) = std::sync::mpsc::sync_channel::<Vec<u8>>(HASH_BUFFERS);
    let mut buffers = HashBuffers::take();
    for buffer in buffers.0.drain(..) {
        empty_sender
            .send(buffer)
            .expect("the channel has room for every buffer");
    }
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || {
            // Ends when the file ends, on a read error (sent on), or when the hasher hangs up;
            // hands back the buffers the hasher returned, for the pool.
            while let Ok(mut buffer) = empty.recv() {
                let mut filled = 0;
                let result = loop {
                    match file.read(&mut buffer[filled..]) {
                        Ok(0) => break Ok(()),
                        Ok(read) => {
                            filled += read;
                            if filled == buffer.len() {
                                break Ok(());
                            }
                        }
                        Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(error) => break Err(error),
                    }
                };
                let done = filled < buffer.len() || result.is_err();
                let sent = match result {
                    Ok(()) => full_sender.send(Ok((buffer, filled))),
                    Err(error) => full_sender.send(Err(error)),
                };
                if done || sent.is_err() {
                    break;
                }
            }
            empty
        });
        let mut hasher = blake3::Hasher::new();
        let mut size: u64 = 0;
        let hashed = loop {
            let (buffer, filled) = match full.recv() {
                Ok(Ok(received)) => received,
                Ok(Err(error)) => break Err(error),
                Err(_) => {
                    break Err(std::io::Error::other(
                        "the file reader stopped before the end of the file",
                    ));
                }
            };
            hasher.update(&buffer[..filled]);
            size += filled as u64;
            if filled < buffer.len() {
                buffers.0.push(buffer);
                break Ok((size, hasher.finalize().into()));
            }
            // The reader may have stopped at the end of a file that filled its last buffer.
            let _ = empty_sender.send(buffer);
        };
        drop(empty_sender);
        if let Ok(empty) = reader.join() {
            buffers.0.extend(empty.try_iter());
        }
        hashed
    })
}

/// Hard-links `source` to `target` through the temp directory under `root` (see
/// [`Storage::put_local_file`]): its size once the link is renamed into place, or `None` when it
/// cannot be linked (another filesystem, links refused) or no longer has the change token `token`,
/// and nothing was done. The caller fsyncs the target's directories.
fn link_into_place(
    root: &Path,
    source: &Path,
    target: &Path,
    token: &ChangeToken,
) -> std::io::Result<Option<u64>> {
    if file_change_token(&std::fs::metadata(source)?) != *token {
        return Ok(None);
    }
    let temp = root.join(FS_ATOMIC_WRITE_DIR).join(format!(
        "link-{}-{}",
        std::process::id(),
        ulid::Ulid::new()
    ));
    if std::fs::hard_link(source, &temp).is_err() {
        return Ok(None);
    }
    let placed = (|| {
        // The name may have been replaced between the check and the link: what was linked is
        // judged.
        let linked = std::fs::metadata(&temp)?;
        if file_change_token(&linked) != *token {
            return Ok(None);
        }
        std::fs::File::open(&temp)?.sync_all()?;
        before_close_failpoint();
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::rename(&temp, target)?;
        Ok(Some(linked.len()))
    })();
    // Whatever did not land at the key leaves no temp link behind.
    if !matches!(placed, Ok(Some(_))) {
        let _ = std::fs::remove_file(&temp);
    }
    placed
}

/// The boundary both ways of writing a file pass (the streamed copy and the link): every byte in
/// the temp path, nothing at the key yet. One placement, so the crash matrix counts it once.
fn before_close_failpoint() {
    crate::failpoint!("storage.put_file.before_close");
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

/// A hex blake3 digest, as kept in user metadata.
pub fn parse_hash(hex: &str) -> Option<Hash> {
    blake3::Hash::from_hex(hex.trim()).ok().map(Hash::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A storage on `fs://` at `dir/objects`, and that root.
    fn fs_storage(dir: &Path) -> (PathBuf, Storage) {
        let root = dir.join("objects");
        let storage = Storage::from_uri(&format!("fs://{}", root.display())).unwrap();
        (root, storage)
    }

    /// Each backend a test must hold on: `memory://`, then `fs://` at `objects` in its own
    /// directory; each with a directory of its own for the test's source files, and its URI.
    fn each_backend() -> [(tempfile::TempDir, String, Storage); 2] {
        [false, true].map(|on_fs| {
            let dir = tempfile::tempdir().unwrap();
            let uri = if on_fs {
                format!("fs://{}", dir.path().join("objects").display())
            } else {
                "memory://".to_string()
            };
            let storage = Storage::from_uri(&uri).unwrap();
            (dir, uri, storage)
        })
    }

    // Guards the two-thread hashing of `hash_file`: every size around the chunk boundaries (the
    // one-read path, a file that ends exactly on a chunk, a short last chunk) hashes as blake3
    // hashes the same bytes in memory, and a missing file is an error, not a hang. The sizes go up
    // then down with other bytes, so buffers reused from the pool carry a larger file's bytes
    // into a smaller one: none of them may leak into its hash.
    #[tokio::test]
    async fn hash_file_agrees_with_blake3_at_every_chunk_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let sizes = [
            0,
            1,
            CHUNK_BYTES - 1,
            CHUNK_BYTES,
            CHUNK_BYTES + 1,
            2 * CHUNK_BYTES,
            3 * CHUNK_BYTES + 5,
        ];
        let descending = sizes.iter().rev().map(|size| (*size, 241));
        for (size, modulus) in sizes.iter().map(|size| (*size, 251)).chain(descending) {
            let bytes: Vec<u8> = (0..size).map(|i| (i % modulus) as u8).collect();
            let path = dir.path().join(format!("file-{size}-{modulus}"));
            std::fs::write(&path, &bytes).unwrap();
            let (hashed_size, hash) = hash_file(&path).await.unwrap();
            assert_eq!(hashed_size, size as u64, "size {size}");
            assert_eq!(hash, Hash::of(&bytes), "size {size}");
        }
        assert!(hash_file(&dir.path().join("missing")).await.is_err());
    }

    #[tokio::test]
    async fn fs_put_file_lands_whole_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let (root, storage) = fs_storage(dir.path());
        let source = dir.path().join("source.bin");
        let bytes: Vec<u8> = (0..3 * CHUNK_BYTES + 17).map(|i| (i % 251) as u8).collect();
        std::fs::write(&source, &bytes).unwrap();
        let hash = Hash::of(&bytes);
        let key = blob_key(&hash, "bin");

        let stat = match storage
            .put_file(&key, &source, WriteOptions::default())
            .await
            .unwrap()
        {
            Written::Written(stat) => stat,
            Written::AlreadyExists => panic!("nothing was there"),
        };

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

    // Guards the link path of `put_local_file` on `fs://`: a file whose change token is the one it
    // was hashed at lands at the key as the same inode (no copy), whole, with no temp file left;
    // a file changed since (another token) is copied and hashed instead, so its new bytes are
    // refused under the old hash; without a token it is copied.
    #[tokio::test]
    async fn fs_put_local_file_links_an_unchanged_file_and_copies_otherwise() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let (root, storage) = fs_storage(dir.path());
        let source = dir.path().join("source.bin");
        let bytes: Vec<u8> = (0..CHUNK_BYTES + 5).map(|i| (i % 251) as u8).collect();
        std::fs::write(&source, &bytes).unwrap();
        let hash = Hash::of(&bytes);
        let token = file_change_token(&std::fs::metadata(&source).unwrap());
        let options = WriteOptions {
            blake3: Some(hash),
            if_not_exists: true,
        };
        let sent = std::sync::Mutex::new(Vec::new());
        let on_sent = |bytes: u64| sent.lock().unwrap().push(bytes);

        let key = blob_key(&hash, "bin");
        let written = storage
            .put_local_file(&key, &source, options, Some(&token), &on_sent)
            .await
            .unwrap();

        let Written::Written(stat) = written else {
            panic!("nothing was there")
        };
        assert_eq!(stat.size, bytes.len() as u64);
        assert_eq!(std::fs::read(root.join(&key)).unwrap(), bytes);
        let object_inode = std::fs::metadata(root.join(&key)).unwrap().ino();
        assert_eq!(
            object_inode,
            std::fs::metadata(&source).unwrap().ino(),
            "linked"
        );
        assert_eq!(*sent.lock().unwrap(), vec![bytes.len() as u64]);
        assert_eq!(
            std::fs::read_dir(root.join(FS_ATOMIC_WRITE_DIR))
                .unwrap()
                .count(),
            0,
            "the temp link was renamed into place"
        );

        // Changed since it was hashed: copied and hashed, and refused under the old hash.
        let changed = dir.path().join("changed.bin");
        std::fs::write(&changed, &bytes).unwrap();
        let changed_token = file_change_token(&std::fs::metadata(&changed).unwrap());
        std::fs::write(&changed, vec![7u8; bytes.len()]).unwrap();
        let error = storage
            .put_local_file(
                "blobs/other.bin",
                &changed,
                options,
                Some(&changed_token),
                &|_| {},
            )
            .await
            .unwrap_err();
        assert!(
            matches!(error, StorageError::ChecksumMismatch { .. }),
            "{error}"
        );
        assert!(!root.join("blobs/other.bin").exists());

        // No token: copied (another inode).
        let copied_key = "blobs/copied.bin";
        storage
            .put_local_file(copied_key, &source, options, None, &|_| {})
            .await
            .unwrap();
        assert_eq!(std::fs::read(root.join(copied_key)).unwrap(), bytes);
        assert_ne!(
            std::fs::metadata(root.join(copied_key)).unwrap().ino(),
            object_inode
        );
    }

    // Guards upload progress: every chunk handed to the writer is reported, the figures only
    // grow, and the last one is the file's size.
    #[tokio::test]
    async fn an_upload_reports_the_bytes_sent_after_each_chunk() {
        for (dir, uri, storage) in each_backend() {
            let source = dir.path().join("source.bin");
            let size = 2 * CHUNK_BYTES + 5;
            std::fs::write(&source, vec![7u8; size]).unwrap();
            let sent = std::sync::Mutex::new(Vec::new());

            let written = storage
                .put_file_reporting(
                    "blobs/aa/source.bin",
                    &source,
                    WriteOptions::default(),
                    &|bytes| sent.lock().unwrap().push(bytes),
                )
                .await
                .unwrap();

            assert!(matches!(written, Written::Written(_)), "{uri}");
            let sent = sent.into_inner().unwrap();
            assert!(
                sent.len() >= 3,
                "{uri}: one report a chunk at least: {sent:?}"
            );
            assert!(
                sent.windows(2).all(|pair| pair[0] < pair[1]),
                "{uri}: {sent:?}"
            );
            assert_eq!(sent.last(), Some(&(size as u64)), "{uri}");
        }
    }

    // Guards content-addressed keys: bytes that do not hash to the name they are uploaded under
    // (a local file that changed after its checkpoint) are never written there.
    #[tokio::test]
    async fn an_upload_whose_bytes_do_not_match_the_expected_hash_writes_nothing() {
        for (dir, uri, storage) in each_backend() {
            let source = dir.path().join("changed.bin");
            std::fs::write(&source, b"the bytes that are there now").unwrap();
            let expected = Hash::of(b"the bytes that were checkpointed");
            let key = blob_key(&expected, "bin");
            let options = WriteOptions {
                blake3: Some(expected),
                if_not_exists: true,
            };

            let error = storage.put_file(&key, &source, options).await.unwrap_err();

            assert_eq!(error.class(), "checksum_mismatch", "{uri}: {error}");
            assert_eq!(
                storage.stat(&key).await.unwrap(),
                None,
                "{uri}: nothing at the key"
            );
        }
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
        let (root, storage) = fs_storage(dir.path());
        std::fs::write(root.join("blobs"), b"in the way").unwrap();
        let error = storage
            .put_bytes("blobs/ab/abc.json", b"{}".to_vec(), WriteOptions::default())
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
            .put_bytes("k.json", b"{\"a\":1}".to_vec(), WriteOptions::default())
            .await
            .unwrap();
        assert_eq!(
            storage.read_bytes("k.json").await.unwrap().unwrap(),
            b"{\"a\":1}"
        );
    }
}
