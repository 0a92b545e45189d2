//! The download step: fetches a source (HTTP(S), a video platform page through yt-dlp, a `file://`
//! URL or a local path) into the job's scratch directory, hashing it with blake3 as it streams.
//!
//! What it guarantees:
//! - Memory does not grow with the size of a video: bytes go to disk chunk by chunk.
//! - Nothing incomplete is ever at the final name: bytes land in `original.part` and are renamed to
//!   `original` only once their count matches what the server announced and they are fsynced.
//! - No splice of two remote files: a kept `original.part` is resumed only with `If-Range` and the
//!   validator (strong ETag, else Last-Modified) the server gave when it started; a `200` answer to a
//!   range request, a range that does not start where the part ends, or a `416` start over from zero.
//! - Every request, redirect hop included, passes the network guard (`steps::net`); with
//!   `NARRA_PROXY` each hop's name is resolved and checked before it is sent to that proxy. yt-dlp
//!   makes its own requests, so platform pages go through a per-job egress proxy
//!   (`steps::egress`) that applies the same guard to each of its connections, limited to the
//!   formats yt-dlp fetches itself, and yt-dlp's process group is killed with the step.
//! - Transient failures are retried inside the step with exponential backoff and jitter; permanent
//!   ones fail at once. Secrets in URLs never reach an error message (`model::redact`).
//!
//! This step never writes outside the scratch directory and never touches the state store.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::net::{NetworkPolicy, forbidden_cause};
use super::{Cancel, ErrorClass, Progress, ProgressSender, StepError, cancelled};
use crate::model::job::Hash;
use crate::model::redact::{redact_text, redact_url};
use crate::model::sources::{SourceText, classify};
use crate::workflow::{DownloadParams, Downloader};

/// The file name of a finished download in the scratch directory.
pub const ORIGINAL_FILE: &str = "original";
/// The file name of a platform's JSON description of the video (yt-dlp `-J`).
pub const PLATFORM_METADATA_FILE: &str = "platform.json";

/// The most of yt-dlp's JSON or stderr kept in memory.
const YT_DLP_OUTPUT_BYTES_MAX: usize = 32 * 1024 * 1024;

/// A finished download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    pub path: PathBuf,
    pub size: u64,
    pub blake3: Hash,
    /// yt-dlp's JSON description of the video, for platform sources.
    pub platform_metadata: Option<PathBuf>,
}

/// Where a source points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    Http(url::Url),
    Local(PathBuf),
}

/// Everything the download step needs besides the source.
pub struct DownloadContext<'a> {
    pub params: &'a DownloadParams,
    pub client: &'a reqwest::Client,
    pub policy: &'a NetworkPolicy,
    pub progress: &'a ProgressSender,
}

/// Classifies a source as it was stored on the job (local paths are absolute by then), by the one
/// rule of `model::sources`: a text that starts with a scheme is a URL, never a path.
pub fn parse_source(source: &str) -> Result<SourceKind, StepError> {
    let source = source.trim();
    match classify(source) {
        SourceText::Url(Ok(url)) => match url.scheme() {
            "http" | "https" => {
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(StepError::new(
                        ErrorClass::UnsupportedSource,
                        format!("URL {:?} has no host", redact_url(source)),
                    ));
                }
                Ok(SourceKind::Http(url))
            }
            "file" => {
                let path = url.to_file_path().map_err(|()| {
                    StepError::new(
                        ErrorClass::UnsupportedSource,
                        format!("file URL {source:?} does not name a local path"),
                    )
                })?;
                Ok(SourceKind::Local(path))
            }
            scheme => Err(unsupported_scheme(scheme)),
        },
        SourceText::Url(Err(error)) => {
            let scheme = source
                .split_once(':')
                .map_or("", |(scheme, _)| scheme)
                .to_ascii_lowercase();
            if matches!(scheme.as_str(), "http" | "https" | "file") {
                Err(StepError::new(
                    ErrorClass::UnsupportedSource,
                    format!("malformed URL {:?}: {error}", redact_url(source)),
                ))
            } else {
                Err(unsupported_scheme(&scheme))
            }
        }
        SourceText::Path("") => Err(StepError::new(
            ErrorClass::UnsupportedSource,
            "the source is empty",
        )),
        SourceText::Path(path) => Ok(SourceKind::Local(PathBuf::from(path))),
    }
}

fn unsupported_scheme(scheme: &str) -> StepError {
    StepError::new(
        ErrorClass::UnsupportedSource,
        format!("unsupported source scheme {scheme:?}: use http(s)://, file:// or a local path"),
    )
}

/// The download client for a workflow's limits under a network policy.
pub fn http_client(
    params: &DownloadParams,
    policy: &NetworkPolicy,
) -> Result<reqwest::Client, StepError> {
    super::net::guarded_client(
        policy,
        Duration::from_secs(params.connect_timeout_s),
        &params.user_agent,
    )
}

/// Downloads `source` into `scratch_dir/original`.
pub async fn download(
    source: &str,
    scratch_dir: &Path,
    context: &DownloadContext<'_>,
    cancel: &mut Cancel,
) -> Result<Downloaded, StepError> {
    let source_kind = parse_source(source)?;
    crate::private_files::create_dir_all_async(scratch_dir)
        .await
        .map_err(|error| StepError::scratch("create", scratch_dir, error))?;
    let params = context.params;
    let final_path = scratch_dir.join(ORIGINAL_FILE);
    let total = Duration::from_secs(params.total_timeout_s);
    let transfer = async {
        match &source_kind {
            SourceKind::Http(url) if uses_yt_dlp(params, url) => {
                download_platform(url, scratch_dir, context).await
            }
            SourceKind::Http(url) => download_http(url, scratch_dir, context)
                .await
                .map(|(size, blake3)| (size, blake3, None)),
            SourceKind::Local(path) => copy_local(
                path,
                &scratch_dir.join(format!("{ORIGINAL_FILE}.part")),
                params,
            )
            .await
            .map(|(size, blake3)| (size, blake3, None)),
        }
    };
    let (size, blake3, platform_metadata) = tokio::select! {
        result = tokio::time::timeout(total, transfer) => match result {
            Ok(result) => result?,
            Err(_) => {
                return Err(StepError::new(
                    ErrorClass::NetworkTimeout,
                    format!("the download did not finish within {} s", params.total_timeout_s),
                ));
            }
        },
        () = cancelled(cancel) => {
            return Err(StepError::new(ErrorClass::Cancelled, "cancelled during download"));
        }
    };
    let part_path = scratch_dir.join(format!("{ORIGINAL_FILE}.part"));
    crate::failpoint!("download.scratch.before");
    tokio::fs::rename(&part_path, &final_path)
        .await
        .map_err(|error| StepError::scratch("rename", &part_path, error))?;
    let _ = tokio::fs::remove_file(partial_meta_path(scratch_dir)).await;
    super::scratch::sync_dir(scratch_dir).await?;
    crate::failpoint!("download.scratch.after");
    Ok(Downloaded {
        path: final_path,
        size,
        blake3,
        platform_metadata,
    })
}

fn uses_yt_dlp(params: &DownloadParams, url: &url::Url) -> bool {
    match params.downloader {
        Downloader::Http => false,
        Downloader::YtDlp => true,
        Downloader::Auto => url
            .host_str()
            .is_some_and(|host| params.is_platform_host(host)),
    }
}

/// What is kept beside a partial download so a retry can resume it safely.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PartialMeta {
    /// `If-Range` value: a strong ETag, else a Last-Modified date.
    validator: String,
    /// The whole file's size, as the server announced it.
    total: Option<u64>,
}

fn partial_meta_path(scratch_dir: &Path) -> PathBuf {
    scratch_dir.join(format!("{ORIGINAL_FILE}.part.json"))
}

/// One failed attempt: the error, and how long the server asked us to wait before the next one.
struct AttemptFailure {
    error: StepError,
    retry_after: Option<Duration>,
    /// Not worth another attempt in this step run, whatever the class says.
    last: bool,
}

impl From<StepError> for AttemptFailure {
    fn from(error: StepError) -> AttemptFailure {
        AttemptFailure {
            error,
            retry_after: None,
            last: false,
        }
    }
}

async fn download_http(
    url: &url::Url,
    scratch_dir: &Path,
    context: &DownloadContext<'_>,
) -> Result<(u64, Hash), StepError> {
    let params = context.params;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match attempt_http(url, scratch_dir, context).await {
            Ok(done) => return Ok(done),
            Err(failure)
                if failure.error.retryable()
                    && !failure.last
                    && attempt < params.attempts_max.max(1) =>
            {
                let delay = match failure.retry_after {
                    Some(wait) => wait,
                    None => backoff(params, attempt),
                };
                tracing::warn!(
                    attempt,
                    attempts_max = params.attempts_max,
                    delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    class = failure.error.class.as_str(),
                    "download attempt failed: {}; retrying",
                    failure.error.message
                );
                tokio::time::sleep(delay).await;
            }
            Err(failure) => return Err(failure.error),
        }
    }
}

/// Exponential backoff with jitter: a random delay between half and all of
/// `backoff_initial_ms * 2^(attempt - 1)`, capped at `backoff_max_ms`.
fn backoff(params: &DownloadParams, attempt: u32) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let exponent = attempt.saturating_sub(1).min(20);
    let ceiling = params
        .backoff_initial_ms
        .saturating_mul(1u64 << exponent)
        .min(params.backoff_max_ms)
        .max(1);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(attempt);
    let jitter = hasher.finish() % (ceiling / 2 + 1);
    Duration::from_millis(ceiling - jitter)
}

async fn attempt_http(
    url: &url::Url,
    scratch_dir: &Path,
    context: &DownloadContext<'_>,
) -> Result<(u64, Hash), AttemptFailure> {
    let params = context.params;
    let part_path = scratch_dir.join(format!("{ORIGINAL_FILE}.part"));
    let meta_path = partial_meta_path(scratch_dir);
    let partial = load_partial(&part_path, &meta_path).await?;
    let read_timeout = Duration::from_secs(params.read_timeout_s);

    // Follow redirects ourselves, so that every hop passes the guard.
    let mut current = url.clone();
    let mut hops = 0u32;
    let response = loop {
        context.policy.check_url(&current)?;
        context.policy.check_name_before_proxy(&current).await?;
        let host = host_of(&current);
        let mut request = context
            .client
            .get(current.clone())
            .header(reqwest::header::ACCEPT_ENCODING, "identity");
        if let Some((length, meta, _)) = &partial {
            request = request
                .header(reqwest::header::RANGE, format!("bytes={length}-"))
                .header(reqwest::header::IF_RANGE, meta.validator.clone());
        }
        let response = match tokio::time::timeout(read_timeout, request.send()).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => return Err(transport_error(&host, &error).into()),
            Err(_) => {
                return Err(StepError::new(
                    ErrorClass::NetworkTimeout,
                    format!("{host} sent no response within {} s", params.read_timeout_s),
                )
                .into());
            }
        };
        if response.status().is_redirection() {
            hops += 1;
            if hops > params.redirects_max {
                return Err(StepError::new(
                    ErrorClass::HttpError,
                    format!("more than {} redirects from {host}", params.redirects_max),
                )
                .into());
            }
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|value| value.to_str().ok())
                .ok_or_else(|| {
                    StepError::new(
                        ErrorClass::HttpError,
                        format!(
                            "HTTP {} from {host} without a Location",
                            response.status().as_u16()
                        ),
                    )
                })?;
            current = current.join(location).map_err(|error| {
                StepError::new(
                    ErrorClass::HttpError,
                    format!("{host} redirected to an invalid location: {error}"),
                )
            })?;
            tracing::debug!(to = %redact_url(current.as_str()), hop = hops, "following a redirect");
            continue;
        }
        break response;
    };
    let host = host_of(&current);
    let status = response.status();

    let (file, hasher, mut size, total) = match (status.as_u16(), partial) {
        (206, Some((length, meta, hasher))) => {
            let range = content_range(&response);
            match range {
                Some((start, range_total)) if start == length => {
                    if let (Some(known), Some(announced)) = (meta.total, range_total)
                        && known != announced
                    {
                        discard_partial(&part_path, &meta_path).await;
                        return Err(StepError::new(
                            ErrorClass::NetworkError,
                            format!("{host} now announces {announced} bytes instead of {known}; starting over"),
                        )
                        .into());
                    }
                    tracing::info!(resume_from = length, "resuming the download");
                    let file = tokio::fs::OpenOptions::new()
                        .append(true)
                        .open(&part_path)
                        .await
                        .map_err(|error| StepError::scratch("open", &part_path, error))?;
                    (file, hasher, length, range_total.or(meta.total))
                }
                _ => {
                    discard_partial(&part_path, &meta_path).await;
                    return Err(StepError::new(
                        ErrorClass::NetworkError,
                        format!("{host} answered a range that does not start at byte {length}; starting over"),
                    )
                    .into());
                }
            }
        }
        (416, Some((length, meta, hasher))) => {
            if meta.total == Some(length) {
                // The kept part was already whole.
                return finish_part(&part_path, hasher, length).await;
            }
            discard_partial(&part_path, &meta_path).await;
            return Err(StepError::new(
                ErrorClass::NetworkError,
                format!(
                    "{host} cannot serve the rest from byte {length} (HTTP 416); starting over"
                ),
            )
            .into());
        }
        (200, partial) => {
            if partial.is_some() {
                tracing::warn!(
                    "the remote file changed (or ranges are not supported): starting over"
                );
            }
            let total = response.content_length();
            if let Some(total) = total
                && total > params.max_bytes
            {
                discard_partial(&part_path, &meta_path).await;
                return Err(too_large(&host, total, params).into());
            }
            ensure_scratch_room(&part_path, total.unwrap_or(0), params)?;
            let meta = PartialMeta {
                validator: validator(&response).unwrap_or_default(),
                total,
            };
            // The old validator goes first, then the old bytes, and only then is the new validator
            // written: a crash at any point never pairs old bytes with the new file's validator
            // (which would let a resume splice the two versions).
            let _ = tokio::fs::remove_file(&meta_path).await;
            let file = tokio::fs::File::create(&part_path)
                .await
                .map_err(|error| StepError::scratch("create", &part_path, error))?;
            if !meta.validator.is_empty() {
                let bytes = serde_json::to_vec(&meta).expect("JSON");
                tokio::fs::write(&meta_path, bytes)
                    .await
                    .map_err(|error| StepError::scratch("write", &meta_path, error))?;
            }
            (file, blake3::Hasher::new(), 0, total)
        }
        (code, _) if status.is_success() => {
            return Err(StepError::new(
                ErrorClass::HttpError,
                format!("HTTP {code} from {host}: unexpected success status"),
            )
            .into());
        }
        (code, _) => {
            let retry_after = retry_after(&response, params);
            let error = http_status_error(&host, status);
            if code == 429 || code == 503 {
                if let Some(Err(wanted)) = retry_after {
                    // The server asked for a longer wait than we will spend in this step: give up
                    // now (the class stays retryable for a later run), never hammer it sooner.
                    return Err(AttemptFailure {
                        error: StepError::new(
                            ErrorClass::RateLimited,
                            format!(
                                "HTTP {code} from {host}: asked to wait {} s, more than retry_after_max_s = {}",
                                wanted.as_secs(),
                                params.retry_after_max_s
                            ),
                        ),
                        retry_after: None,
                        last: true,
                    });
                }
                return Err(AttemptFailure {
                    error,
                    retry_after: retry_after.and_then(Result::ok),
                    last: false,
                });
            }
            return Err(error.into());
        }
    };

    let _ = context.progress.send(Progress {
        bytes_done: size,
        bytes_total: total,
    });
    let mut writer = PartWriter::start(file.into_std().await, hasher);
    let mut stream = response.bytes_stream();
    loop {
        let next = match tokio::time::timeout(read_timeout, stream.next()).await {
            Ok(next) => next,
            Err(_) => {
                writer.finish(&part_path).await?;
                return Err(StepError::new(
                    ErrorClass::NetworkTimeout,
                    format!(
                        "no data from {host} for {} s after {size} bytes",
                        params.read_timeout_s
                    ),
                )
                .into());
            }
        };
        let Some(chunk) = next else { break };
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(error) => {
                writer.finish(&part_path).await?;
                if let Some(total) = total
                    && size < total
                {
                    // The server promised more than it sent: keep what came, resume next attempt.
                    return Err(StepError::new(
                        ErrorClass::TruncatedDownload,
                        format!(
                            "{host} announced {total} bytes but the connection ended after {size}: {}",
                            transport_error(&host, &error).message
                        ),
                    )
                    .into());
                }
                return Err(transport_error(&host, &error).into());
            }
        };
        let chunk_bytes = chunk.len() as u64;
        if size + chunk_bytes > params.max_bytes {
            // Whatever it wrote is discarded next: its outcome does not matter.
            let _ = writer.finish(&part_path).await;
            discard_partial(&part_path, &meta_path).await;
            return Err(too_large(&host, size + chunk_bytes, params).into());
        }
        writer.write(chunk, &part_path).await?;
        size += chunk_bytes;
        context.progress.send_modify(|progress| {
            progress.bytes_done = size;
            progress.bytes_total = total;
        });
    }
    let hasher = writer.finish(&part_path).await?;
    if let Some(total) = total
        && size != total
    {
        return Err(StepError::new(
            ErrorClass::TruncatedDownload,
            format!("{host} announced {total} bytes but the body ended after {size}"),
        )
        .into());
    }
    finish_part(&part_path, hasher, size).await
}

/// A kept partial download that can be resumed: its length, its validator and the hasher state
/// after re-hashing its bytes. A part without a validator cannot be resumed safely and is dropped.
async fn load_partial(
    part_path: &Path,
    meta_path: &Path,
) -> Result<Option<(u64, PartialMeta, blake3::Hasher)>, StepError> {
    let length = match tokio::fs::metadata(part_path).await {
        Ok(metadata) => metadata.len(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(StepError::scratch("inspect", part_path, error)),
    };
    let meta = match tokio::fs::read(meta_path).await {
        Ok(bytes) => serde_json::from_slice::<PartialMeta>(&bytes).ok(),
        Err(_) => None,
    };
    let Some(meta) = meta.filter(|meta| !meta.validator.is_empty() && length > 0) else {
        discard_partial(part_path, meta_path).await;
        return Ok(None);
    };
    let path = part_path.to_path_buf();
    let hasher = tokio::task::spawn_blocking(move || -> std::io::Result<blake3::Hasher> {
        let mut hasher = blake3::Hasher::new();
        let file = std::fs::File::open(&path)?;
        std::io::copy(
            &mut std::io::BufReader::with_capacity(crate::storage::CHUNK_BYTES, file),
            &mut hasher,
        )?;
        Ok(hasher)
    })
    .await
    .expect("hashing does not panic")
    .map_err(|error| StepError::scratch("read", part_path, error))?;
    Ok(Some((length, meta, hasher)))
}

async fn discard_partial(part_path: &Path, meta_path: &Path) {
    let _ = tokio::fs::remove_file(part_path).await;
    let _ = tokio::fs::remove_file(meta_path).await;
}

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
struct PartWriter {
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
    fn start(file: std::fs::File, hasher: blake3::Hasher) -> PartWriter {
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
    async fn write(&mut self, chunk: bytes::Bytes, part_path: &Path) -> Result<(), StepError> {
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
    async fn finish(mut self, part_path: &Path) -> Result<blake3::Hasher, StepError> {
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

async fn finish_part(
    part_path: &Path,
    hasher: blake3::Hasher,
    size: u64,
) -> Result<(u64, Hash), AttemptFailure> {
    let file = tokio::fs::OpenOptions::new()
        .append(true)
        .open(part_path)
        .await
        .map_err(|error| StepError::scratch("open", part_path, error))?;
    file.sync_all()
        .await
        .map_err(|error| StepError::scratch("sync", part_path, error))?;
    Ok((size, hasher.finalize().into()))
}

fn host_of(url: &url::Url) -> String {
    url.host_str().unwrap_or("?").to_string()
}

/// A strong ETag, else Last-Modified: the only validators `If-Range` accepts.
fn validator(response: &reqwest::Response) -> Option<String> {
    let header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string)
    };
    header(reqwest::header::ETAG)
        .filter(|etag| !etag.starts_with("W/"))
        .or_else(|| header(reqwest::header::LAST_MODIFIED))
}

/// `Content-Range: bytes START-END/TOTAL` as (START, TOTAL).
fn content_range(response: &reqwest::Response) -> Option<(u64, Option<u64>)> {
    let value = response
        .headers()
        .get(reqwest::header::CONTENT_RANGE)?
        .to_str()
        .ok()?;
    parse_content_range(value)
}

fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let start = start.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        total => Some(total.parse().ok()?),
    };
    Some((start, total))
}

/// `Retry-After` in seconds or as an HTTP date: `Ok` when within the limit, `Err` with the wanted
/// wait when over it, `None` when absent or unreadable.
fn retry_after(
    response: &reqwest::Response,
    params: &DownloadParams,
) -> Option<Result<Duration, Duration>> {
    let value = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    let wait = parse_retry_after(value, chrono::Utc::now())?;
    if wait.as_secs() > params.retry_after_max_s {
        Some(Err(wait))
    } else {
        Some(Ok(wait))
    }
}

fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = date.with_timezone(&chrono::Utc) - now;
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

fn too_large(host: &str, bytes: u64, params: &DownloadParams) -> StepError {
    StepError::new(
        ErrorClass::TooLarge,
        format!(
            "the video from {host} is larger than max_bytes = {} (at least {bytes} bytes)",
            params.max_bytes
        ),
    )
}

async fn copy_local(
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

/// Downloads a video platform page's media with yt-dlp: its JSON description first (kept with the
/// job), then the media into scratch, which is then hashed like any other download.
///
/// yt-dlp makes its own requests, so both runs go through a per-job egress proxy
/// (`steps::egress`) that applies the network guard to every connection, redirect hops and DNS
/// answers included. ffmpeg, which yt-dlp runs for some formats, does not reliably honour a proxy
/// for https, so the formats chosen in the description must be ones yt-dlp fetches itself
/// (`NATIVE_PROTOCOLS`, never live), the media run downloads exactly that checked description
/// (`--load-info-json`, so the page cannot offer other formats the second time), and `--downloader
/// native` keeps ffmpeg from being chosen as a downloader; where yt-dlp's HLS downloader still
/// hands a playlist to ffmpeg, ffmpeg is given the proxy too.
async fn download_platform(
    url: &url::Url,
    scratch_dir: &Path,
    context: &DownloadContext<'_>,
) -> Result<(u64, Hash, Option<PathBuf>), StepError> {
    let params = context.params;
    let host = host_of(url);
    // IP literals fail here, before yt-dlp starts; names are checked by the proxy as it connects.
    context.policy.check_url(url)?;
    let proxy = super::egress::EgressProxy::start(
        std::sync::Arc::new(context.policy.clone()),
        std::sync::Arc::new(super::egress::SystemResolver),
    )
    .await?;
    let work_dir = scratch_dir.join("yt-dlp");
    crate::private_files::create_dir_all_async(&work_dir)
        .await
        .map_err(|error| StepError::scratch("create", &work_dir, error))?;
    // The proxy's credential goes in a file only narra's user can read, not on yt-dlp's command
    // line, which every local user can read in /proc.
    let config_path = work_dir.join("yt-dlp.conf");
    crate::private_files::write_new_async(
        &config_path,
        format!(
            // When yt-dlp hands an HLS playlist to ffmpeg after all (a feature its own downloader
            // lacks), ffmpeg is told the proxy as an option: from the environment, which is all
            // yt-dlp gives it, ffmpeg takes a proxy for http only, not https. Its protocols are
            // the network ones only: a playlist's `file:` segment or key would read a local file
            // the guard never sees.
            "--proxy \"{0}\"\n--downloader-args \"ffmpeg_i:-protocol_whitelist http,https,tls,tcp,crypto,httpproxy -http_proxy {0}\"\n",
            proxy.url()
        ),
    )
    .await
    .map_err(|error| StepError::scratch("write", &config_path, error))?;
    let common = |command: &mut tokio::process::Command| {
        command
            .args([
                "--ignore-config",
                "--no-cache-dir",
                "--no-playlist",
                "--no-warnings",
                "--downloader",
                "native",
            ])
            .args(["--socket-timeout", &params.read_timeout_s.to_string()])
            .arg("--config-locations")
            .arg(&config_path);
        // The proxy given is the only one: no variable may send a host around it (no_proxy) or
        // give ffmpeg another.
        for name in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "NO_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
            "no_proxy",
        ] {
            command.env_remove(name);
        }
    };
    // Why yt-dlp failed, when the proxy refused a connection: that refusal.
    let failed = |stderr: &[u8]| {
        proxy
            .refusal()
            .unwrap_or_else(|| yt_dlp_error(&host, stderr))
    };

    let mut describe = tokio::process::Command::new(&params.yt_dlp);
    common(&mut describe);
    describe
        .args(["-J", "-f", &params.yt_dlp_format])
        .arg(url.as_str());
    let description = run_yt_dlp(describe, &params.yt_dlp).await?;
    if !description.success {
        return Err(failed(&description.stderr));
    }
    let json: serde_json::Value = serde_json::from_slice(&description.stdout).map_err(|error| {
        StepError::new(
            ErrorClass::UnsupportedSource,
            format!("yt-dlp described {host} with invalid JSON: {error}"),
        )
    })?;
    check_platform_formats(&host, &json)?;
    let announced = json["filesize"]
        .as_u64()
        .or_else(|| json["filesize_approx"].as_u64());
    if let Some(announced) = announced
        && announced > params.max_bytes
    {
        return Err(too_large(&host, announced, params));
    }
    // Kept with the job for people to read: its format URLs are signed, so redacted like any.
    let mut kept = json.clone();
    crate::model::redact::redact_json(&mut kept);
    let platform_path = scratch_dir.join(PLATFORM_METADATA_FILE);
    tokio::fs::write(&platform_path, kept.to_string())
        .await
        .map_err(|error| StepError::scratch("write", &platform_path, error))?;
    // The checked description, as yt-dlp wrote it, for the media run to load.
    let checked_path = work_dir.join("checked.info.json");
    tokio::fs::write(&checked_path, &description.stdout)
        .await
        .map_err(|error| StepError::scratch("write", &checked_path, error))?;

    let template = work_dir.join("media.%(ext)s");
    let mut fetch = tokio::process::Command::new(&params.yt_dlp);
    common(&mut fetch);
    fetch
        .args(["-f", &params.yt_dlp_format])
        .args([
            "--abort-on-unavailable-fragments",
            "--continue",
            "--newline",
        ])
        .args(["--max-filesize", &params.max_bytes.to_string()])
        .args(["--retries", &params.attempts_max.to_string()])
        .args([
            "--progress-template",
            "download:narra-progress %(progress.downloaded_bytes)s %(progress.total_bytes)s",
        ])
        .args([
            "--print",
            "after_move:narra-file %(filepath)s",
            "--no-simulate",
        ])
        .arg("-o")
        .arg(&template)
        .arg("--load-info-json")
        .arg(&checked_path);
    let fetched = run_yt_dlp_with_progress(fetch, &params.yt_dlp, context.progress).await?;
    if !fetched.success {
        return Err(failed(&fetched.stderr));
    }
    let stdout = String::from_utf8_lossy(&fetched.stdout);
    let media_path = stdout
        .lines()
        .find_map(|line| line.strip_prefix("narra-file "))
        .map(PathBuf::from)
        .ok_or_else(|| {
            StepError::new(
                ErrorClass::UnsupportedSource,
                format!("yt-dlp finished without a file for {host}"),
            )
        })?;
    if !media_path.starts_with(&work_dir) {
        return Err(StepError::new(
            ErrorClass::Internal,
            format!("yt-dlp wrote outside scratch: {}", media_path.display()),
        ));
    }
    let part_path = scratch_dir.join(format!("{ORIGINAL_FILE}.part"));
    tokio::fs::rename(&media_path, &part_path)
        .await
        .map_err(|error| StepError::scratch("rename", &media_path, error))?;
    let (size, blake3) = crate::storage::hash_file(&part_path)
        .await
        .map_err(|error| StepError::scratch("read", &part_path, error))?;
    if size > params.max_bytes {
        let _ = tokio::fs::remove_file(&part_path).await;
        return Err(too_large(&host, size, params));
    }
    let file = tokio::fs::File::open(&part_path)
        .await
        .map_err(|error| StepError::scratch("open", &part_path, error))?;
    file.sync_all()
        .await
        .map_err(|error| StepError::scratch("sync", &part_path, error))?;
    let _ = tokio::fs::remove_dir_all(&work_dir).await;
    Ok((size, blake3, Some(platform_path)))
}

/// The protocols yt-dlp downloads with its own HTTP client, which goes through the egress proxy.
/// Every other one (`m3u8` through ffmpeg, `rtmp`, `rtsp`, `f4m`, ...) is fetched by another program
/// that may connect around the proxy.
const NATIVE_PROTOCOLS: [&str; 6] = [
    "http",
    "https",
    "m3u8_native",
    "m3u8",
    "http_dash_segments",
    "http_dash_segments_generator",
];

/// Refuses a description whose chosen formats yt-dlp would not fetch itself, or a live stream
/// (yt-dlp hands live HLS and DASH to ffmpeg, and a live stream never ends).
fn check_platform_formats(host: &str, json: &serde_json::Value) -> Result<(), StepError> {
    if json["is_live"].as_bool() == Some(true) {
        return Err(StepError::new(
            ErrorClass::UnsupportedSource,
            format!("{host} offers a live stream, which narra does not ingest"),
        ));
    }
    let protocols: Vec<&str> = match json["requested_formats"].as_array() {
        Some(formats) => formats
            .iter()
            .map(|format| format["protocol"].as_str().unwrap_or(""))
            .collect(),
        None => vec![json["protocol"].as_str().unwrap_or("")],
    };
    for protocol in protocols {
        if !NATIVE_PROTOCOLS.contains(&protocol) {
            return Err(StepError::new(
                ErrorClass::UnsupportedSource,
                format!(
                    "{host}'s chosen format uses the protocol {protocol:?}, which yt-dlp would fetch outside narra's network guard (allowed: {})",
                    NATIVE_PROTOCOLS.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

struct ProgramOutput {
    success: bool,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

async fn run_yt_dlp(
    command: tokio::process::Command,
    program: &str,
) -> Result<ProgramOutput, StepError> {
    let (sender, _) = tokio::sync::watch::channel(Progress::default());
    run_yt_dlp_with_progress(command, program, &sender).await
}

/// Runs yt-dlp with bounded output, turning its progress lines into `progress` reports. yt-dlp
/// leads a process group of its own, and the group (ffmpeg and any other child yt-dlp started
/// included) is killed when this future is dropped before yt-dlp is reaped: the step's timeout and
/// a cancellation drop it.
async fn run_yt_dlp_with_progress(
    mut command: tokio::process::Command,
    program: &str,
    progress: &ProgressSender,
) -> Result<ProgramOutput, StepError> {
    use tokio::io::AsyncBufReadExt;
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    super::process::die_with_parent(&mut command);
    let mut child = command.spawn().map_err(|error| {
        StepError::new(
            ErrorClass::Internal,
            format!("cannot run {program} (install yt-dlp, e.g. `pip install yt-dlp`): {error}"),
        )
    })?;
    let mut group = super::process::ProcessGroup::led_by(&child)
        .ok_or_else(|| StepError::new(ErrorClass::Internal, format!("{program} has no pid")))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let read_stdout = async {
        let mut kept = Vec::new();
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.strip_prefix("narra-progress ") {
                let mut parts = rest.split_whitespace();
                let done = parts.next().and_then(|text| text.parse::<f64>().ok());
                let total = parts.next().and_then(|text| text.parse::<f64>().ok());
                if let Some(done) = done {
                    progress.send_modify(|progress| {
                        progress.bytes_done = done as u64;
                        progress.bytes_total = total.map(|total| total as u64);
                    });
                }
                continue;
            }
            if kept.len() + line.len() < YT_DLP_OUTPUT_BYTES_MAX {
                kept.extend_from_slice(line.as_bytes());
                kept.push(b'\n');
            }
        }
        kept
    };
    let read_stderr = async {
        let mut kept = Vec::new();
        let mut reader = tokio::io::BufReader::new(stderr);
        let mut buffer = [0u8; 8192];
        loop {
            match tokio::io::AsyncReadExt::read(&mut reader, &mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(count) => {
                    let room = (64 * 1024usize).saturating_sub(kept.len());
                    kept.extend_from_slice(&buffer[..count.min(room)]);
                }
            }
        }
        kept
    };
    let (stdout, stderr) = tokio::join!(read_stdout, read_stderr);
    let status = child.wait().await;
    group.disarm();
    let status = status.map_err(|error| {
        StepError::new(
            ErrorClass::Internal,
            format!("{program} did not run: {error}"),
        )
    })?;
    Ok(ProgramOutput {
        success: status.success(),
        stdout,
        stderr,
    })
}

/// Maps yt-dlp's error lines to narra's classes.
fn yt_dlp_error(host: &str, stderr: &[u8]) -> StepError {
    let text = String::from_utf8_lossy(stderr);
    let decisive = text
        .lines()
        .rev()
        .find(|line| line.contains("ERROR"))
        .or_else(|| text.lines().rev().find(|line| !line.trim().is_empty()))
        .unwrap_or("(no message)")
        .trim()
        .to_string();
    let lower = decisive.to_ascii_lowercase();
    let class = if lower.contains("http error 401")
        || lower.contains("http error 403")
        || lower.contains("http error 451")
        || lower.contains("geo")
        || lower.contains("in your country")
        || lower.contains("sign in to confirm")
    {
        ErrorClass::DownloadBlocked
    } else if lower.contains("http error 404")
        || lower.contains("http error 410")
        || lower.contains("video unavailable")
        || lower.contains("private video")
    {
        ErrorClass::NotFound
    } else if lower.contains("http error 429") {
        ErrorClass::RateLimited
    } else if lower.contains("http error 5") {
        ErrorClass::ServerError
    } else if lower.contains("timed out") {
        ErrorClass::NetworkTimeout
    } else if lower.contains("max-filesize") || lower.contains("larger than") {
        ErrorClass::TooLarge
    } else if lower.contains("unsupported url") || lower.contains("no video formats") {
        ErrorClass::UnsupportedSource
    } else {
        ErrorClass::NetworkError
    };
    StepError::new(
        class,
        format!("yt-dlp failed for {host}: {}", redact_text(&decisive)),
    )
}

fn http_status_error(host: &str, status: reqwest::StatusCode) -> StepError {
    let code = status.as_u16();
    let (class, meaning) = match code {
        401 | 403 | 451 => (ErrorClass::DownloadBlocked, "blocked by the platform"),
        404 | 410 => (ErrorClass::NotFound, "the video is not there"),
        429 => (ErrorClass::RateLimited, "too many requests"),
        500..=599 => (ErrorClass::ServerError, "the server failed"),
        _ => (ErrorClass::HttpError, "refused"),
    };
    StepError::new(class, format!("HTTP {code} from {host}: {meaning}"))
}

fn transport_error(host: &str, error: &reqwest::Error) -> StepError {
    if let Some(reason) = forbidden_cause(error) {
        return StepError::new(ErrorClass::ForbiddenAddress, reason);
    }
    let class = if error.is_timeout() {
        ErrorClass::NetworkTimeout
    } else {
        ErrorClass::NetworkError
    };
    let mut message = format!("request to {host} failed");
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        message.push_str(&format!(": {inner}"));
        cause = inner.source();
    }
    StepError::new(class, redact_text(&message))
}

/// Refuses to start writing `needed` bytes next to `part_path` when the file system would be left
/// with less than the workflow's `scratch_reserve_mb`: the job waits instead of filling the disk.
fn ensure_scratch_room(
    part_path: &Path,
    needed: u64,
    params: &DownloadParams,
) -> Result<(), StepError> {
    let dir = part_path.parent().unwrap_or(part_path);
    let reserve = params.scratch_reserve_mb.saturating_mul(1024 * 1024);
    let free = super::free_bytes(dir)
        .map_err(|error| StepError::scratch("measure free space in", dir, error))?;
    if free < reserve.saturating_add(needed) {
        return Err(StepError::new(
            ErrorClass::ScratchLow,
            format!(
                "{} MiB free in {}, below the reserve of {} MiB plus the {} MiB announced: the download waits for space",
                free / (1024 * 1024),
                dir.display(),
                params.scratch_reserve_mb,
                needed.div_ceil(1024 * 1024)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_classified_by_scheme() {
        assert!(matches!(
            parse_source("https://example.com/a.mp4"),
            Ok(SourceKind::Http(_))
        ));
        assert_eq!(
            parse_source("file:///tmp/a.mp4").unwrap(),
            SourceKind::Local(PathBuf::from("/tmp/a.mp4"))
        );
        assert_eq!(
            parse_source("/tmp/a.mp4").unwrap(),
            SourceKind::Local(PathBuf::from("/tmp/a.mp4"))
        );
        let error = parse_source("ftp://example.com/a.mp4").unwrap_err();
        assert_eq!(error.class, ErrorClass::UnsupportedSource);
        assert!(error.message.contains("ftp"), "{}", error.message);
        assert_eq!(
            parse_source("http://").unwrap_err().class,
            ErrorClass::UnsupportedSource
        );
    }

    #[test]
    fn http_statuses_map_to_stable_classes() {
        let class = |code| {
            http_status_error(
                "cdn.example.com",
                reqwest::StatusCode::from_u16(code).unwrap(),
            )
            .class
        };
        assert_eq!(class(403), ErrorClass::DownloadBlocked);
        assert_eq!(class(451), ErrorClass::DownloadBlocked);
        assert_eq!(class(404), ErrorClass::NotFound);
        assert_eq!(class(429), ErrorClass::RateLimited);
        assert_eq!(class(503), ErrorClass::ServerError);
        assert_eq!(class(418), ErrorClass::HttpError);
        let message = http_status_error("cdn.example.com", reqwest::StatusCode::FORBIDDEN).message;
        assert_eq!(
            message,
            "HTTP 403 from cdn.example.com: blocked by the platform"
        );
    }

    #[test]
    fn content_ranges_parse_start_and_total() {
        assert_eq!(
            parse_content_range("bytes 100-199/1000"),
            Some((100, Some(1000)))
        );
        assert_eq!(parse_content_range("bytes 0-0/*"), Some((0, None)));
        assert_eq!(parse_content_range("items 0-1/2"), None);
        assert_eq!(parse_content_range("bytes x-1/2"), None);
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-28T12:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Sat, 28 Nov 2026 12:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sat, 28 Nov 2026 11:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let params = DownloadParams {
            backoff_initial_ms: 100,
            backoff_max_ms: 1_000,
            ..DownloadParams::default()
        };
        for attempt in 1..=10 {
            let ceiling = (100u64 << (attempt - 1)).min(1_000);
            let delay = backoff(&params, attempt).as_millis() as u64;
            assert!(
                delay <= ceiling && delay >= ceiling / 2,
                "attempt {attempt}: {delay} ms"
            );
        }
    }

    #[test]
    fn yt_dlp_errors_map_to_classes() {
        let class = |line: &str| yt_dlp_error("www.youtube.com", line.as_bytes()).class;
        assert_eq!(
            class("ERROR: [youtube] x: HTTP Error 403: Forbidden"),
            ErrorClass::DownloadBlocked
        );
        assert_eq!(
            class(
                "ERROR: [youtube] x: The uploader has not made this video available in your country"
            ),
            ErrorClass::DownloadBlocked
        );
        assert_eq!(
            class("ERROR: [generic] Unable to download webpage: HTTP Error 404: Not Found"),
            ErrorClass::NotFound
        );
        assert_eq!(
            class("ERROR: Unsupported URL: http://x/"),
            ErrorClass::UnsupportedSource
        );
        assert_eq!(
            class("ERROR: HTTP Error 429: Too Many Requests"),
            ErrorClass::RateLimited
        );
    }

    // Guards the formats yt-dlp may fetch: only those its own client fetches (through the egress
    // proxy); a format ffmpeg or another program would fetch, or a live stream, is refused.
    #[test]
    fn only_formats_yt_dlp_fetches_itself_are_accepted() {
        let check = |json: serde_json::Value| check_platform_formats("video.example", &json);
        assert!(check(serde_json::json!({"protocol": "https"})).is_ok());
        assert!(check(serde_json::json!({"protocol": "m3u8_native"})).is_ok());
        assert!(
            check(serde_json::json!({"requested_formats": [
                {"protocol": "http_dash_segments"}, {"protocol": "https"}
            ]}))
            .is_ok()
        );
        for refused in [
            serde_json::json!({"protocol": "rtmp_ffmpeg"}),
            serde_json::json!({"protocol": "rtsp"}),
            serde_json::json!({}),
            serde_json::json!({"requested_formats": [{"protocol": "https"}, {"protocol": "f4m"}]}),
            serde_json::json!({"protocol": "m3u8_native", "is_live": true}),
        ] {
            let error = check(refused.clone()).unwrap_err();
            assert_eq!(error.class, ErrorClass::UnsupportedSource, "{refused}");
        }
    }

    #[test]
    fn platform_hosts_match_subdomains_only() {
        let params = DownloadParams::default();
        assert!(params.is_platform_host("www.youtube.com"));
        assert!(params.is_platform_host("youtube.com"));
        assert!(!params.is_platform_host("notyoutube.com"));
        assert!(!params.is_platform_host("cdn.example.com"));
    }
}
