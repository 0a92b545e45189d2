//! Downloading over HTTP(S) into the part file, resuming a kept part where that is safe, with
//! retries inside the step.
//!
//! An attempt is four jobs, one function each: the request (redirects followed by hand, so the
//! network guard sees every hop), the verdict on the answer (resume, start over, or fail), the
//! part file made ready for it, and the body streamed into the part. A kept part is resumed only
//! with `If-Range` and the validator the server gave when it started, so two versions of a file
//! are never spliced. It never renames the part into place; the step does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::part::{PartWriter, finish_part};
use super::{DownloadContext, ORIGINAL_FILE, host_of, part_path, too_large};
use crate::model::job::Hash;
use crate::model::redact::{redact_text, redact_url};
use crate::steps::net::forbidden_cause;
use crate::steps::{ErrorClass, Progress, StepError};
use crate::workflow::DownloadParams;

/// What is kept beside a partial download so a retry can resume it safely.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PartialMeta {
    /// `If-Range` value: a strong ETag, else a Last-Modified date.
    validator: String,
    /// The whole file's size, as the server announced it.
    total: Option<u64>,
}

pub(super) fn partial_meta_path(scratch_dir: &Path) -> PathBuf {
    scratch_dir.join(format!("{ORIGINAL_FILE}.part.json"))
}

/// The files an HTTP download keeps in scratch: the part, and its [`PartialMeta`] beside it.
struct PartFiles {
    part_path: PathBuf,
    meta_path: PathBuf,
}

/// A kept partial download that can be resumed: its length, its validator and the hasher state
/// after re-hashing its bytes.
struct KeptPart {
    length: u64,
    meta: PartialMeta,
    hasher: blake3::Hasher,
}

/// The part file ready for the body: open at its end, the hash of what it holds, its length,
/// and the whole file's announced size.
struct BodyStart {
    file: tokio::fs::File,
    hasher: blake3::Hasher,
    size: u64,
    total: Option<u64>,
}

/// What the server's answer means for the kept part, judged from its status and headers alone.
enum Verdict {
    /// A 206 that continues the kept part where it ends: the body is appended to it.
    Resume { kept: KeptPart, total: Option<u64> },
    /// A 416 to a kept part that already held the whole file.
    AlreadyWhole(KeptPart),
    /// A 200: the whole file from byte zero, replacing any kept part.
    StartOver {
        total: Option<u64>,
        validator: Option<String>,
    },
    /// The kept part cannot be continued: it is discarded and the attempt fails.
    Discard(StepError),
    /// The attempt fails; a kept part stays for the next one.
    Fail(AttemptFailure),
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

/// Downloads `url` into the part file, attempt after attempt while the failures are transient.
pub(super) async fn download_http(
    url: &url::Url,
    scratch_dir: &Path,
    context: &DownloadContext<'_>,
) -> Result<(u64, Hash), StepError> {
    let params = context.params;
    let files = PartFiles {
        part_path: part_path(scratch_dir),
        meta_path: partial_meta_path(scratch_dir),
    };
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match attempt_http(url, &files, context).await {
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

/// One attempt: ask for the rest of a kept part (or the whole file), judge the answer, make the
/// part file ready for it, and stream the body into it.
async fn attempt_http(
    url: &url::Url,
    files: &PartFiles,
    context: &DownloadContext<'_>,
) -> Result<(u64, Hash), AttemptFailure> {
    let kept = load_partial(files).await?;
    let (response, host) = send_following_redirects(url, kept.as_ref(), context).await?;
    let start = match judge_answer(&response, &host, kept, context.params) {
        Verdict::Resume { kept, total } => resume(kept, total, files).await?,
        Verdict::AlreadyWhole(kept) => {
            return Ok(finish_part(&files.part_path, kept.hasher, kept.length).await?);
        }
        Verdict::StartOver { total, validator } => {
            start_over(files, total, validator, context.params).await?
        }
        Verdict::Discard(error) => {
            discard_partial(files).await;
            return Err(error.into());
        }
        Verdict::Fail(failure) => return Err(failure),
    };
    stream_body(response, start, files, &host, context).await
}

/// Sends the request, following redirects itself so that every hop passes the network guard. A
/// kept part is asked for from where it ends, and only if the file is still the one it began.
/// Returns the last answer and the host that gave it.
async fn send_following_redirects(
    url: &url::Url,
    kept: Option<&KeptPart>,
    context: &DownloadContext<'_>,
) -> Result<(reqwest::Response, String), StepError> {
    let params = context.params;
    let read_timeout = Duration::from_secs(params.read_timeout_s);
    let mut current = url.clone();
    let mut hops = 0u32;
    loop {
        context.policy.check_url(&current)?;
        context.policy.check_name_before_proxy(&current).await?;
        let host = host_of(&current);
        let mut request = context
            .client
            .get(current.clone())
            .header(reqwest::header::ACCEPT_ENCODING, "identity");
        if let Some(kept) = kept {
            request = request
                .header(reqwest::header::RANGE, format!("bytes={}-", kept.length))
                .header(reqwest::header::IF_RANGE, kept.meta.validator.clone());
        }
        let response = match tokio::time::timeout(read_timeout, request.send()).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => return Err(transport_error(&host, &error)),
            Err(_) => {
                return Err(StepError::new(
                    ErrorClass::NetworkTimeout,
                    format!("{host} sent no response within {} s", params.read_timeout_s),
                ));
            }
        };
        if !response.status().is_redirection() {
            return Ok((response, host));
        }
        hops += 1;
        if hops > params.redirects_max {
            return Err(StepError::new(
                ErrorClass::HttpError,
                format!("more than {} redirects from {host}", params.redirects_max),
            ));
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
    }
}

/// Judges the answer to a request: whether the kept part goes on, is replaced, or is dropped, and
/// which failures are worth another attempt and when. It touches no file.
fn judge_answer(
    response: &reqwest::Response,
    host: &str,
    kept: Option<KeptPart>,
    params: &DownloadParams,
) -> Verdict {
    let status = response.status();
    match (status.as_u16(), kept) {
        (206, Some(kept)) => match content_range(response) {
            Some((start, range_total)) if start == kept.length => {
                if let (Some(known), Some(announced)) = (kept.meta.total, range_total)
                    && known != announced
                {
                    return Verdict::Discard(StepError::new(
                        ErrorClass::NetworkError,
                        format!(
                            "{host} now announces {announced} bytes instead of {known}; starting over"
                        ),
                    ));
                }
                let total = range_total.or(kept.meta.total);
                Verdict::Resume { kept, total }
            }
            _ => Verdict::Discard(StepError::new(
                ErrorClass::NetworkError,
                format!(
                    "{host} answered a range that does not start at byte {}; starting over",
                    kept.length
                ),
            )),
        },
        (416, Some(kept)) => {
            if kept.meta.total == Some(kept.length) {
                return Verdict::AlreadyWhole(kept);
            }
            Verdict::Discard(StepError::new(
                ErrorClass::NetworkError,
                format!(
                    "{host} cannot serve the rest from byte {} (HTTP 416); starting over",
                    kept.length
                ),
            ))
        }
        (200, kept) => {
            if kept.is_some() {
                tracing::warn!(
                    "the remote file changed (or ranges are not supported): starting over"
                );
            }
            let total = response.content_length();
            if let Some(total) = total
                && total > params.max_bytes
            {
                return Verdict::Discard(too_large(host, total, params));
            }
            Verdict::StartOver {
                total,
                validator: validator(response),
            }
        }
        (code, _) if status.is_success() => Verdict::Fail(
            StepError::new(
                ErrorClass::HttpError,
                format!("HTTP {code} from {host}: unexpected success status"),
            )
            .into(),
        ),
        (code, _) => {
            let retry_after = retry_after(response, params);
            let error = http_status_error(host, status);
            if code != 429 && code != 503 {
                return Verdict::Fail(error.into());
            }
            if let Some(Err(wanted)) = retry_after {
                // The server asked for a longer wait than we will spend in this step: give up now
                // (the class stays retryable for a later run), never hammer it sooner.
                return Verdict::Fail(AttemptFailure {
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
            Verdict::Fail(AttemptFailure {
                error,
                retry_after: retry_after.and_then(Result::ok),
                last: false,
            })
        }
    }
}

/// Opens the kept part for the body that continues it.
async fn resume(
    kept: KeptPart,
    total: Option<u64>,
    files: &PartFiles,
) -> Result<BodyStart, StepError> {
    tracing::info!(resume_from = kept.length, "resuming the download");
    let file = tokio::fs::OpenOptions::new()
        .append(true)
        .open(&files.part_path)
        .await
        .map_err(|error| StepError::scratch("open", &files.part_path, error))?;
    Ok(BodyStart {
        file,
        hasher: kept.hasher,
        size: kept.length,
        total,
    })
}

/// Starts the part over, empty, once the file system has room for the announced size, and keeps
/// the new file's validator beside it for a later resume.
async fn start_over(
    files: &PartFiles,
    total: Option<u64>,
    validator: Option<String>,
    params: &DownloadParams,
) -> Result<BodyStart, StepError> {
    let PartFiles {
        part_path,
        meta_path,
    } = files;
    ensure_scratch_room(part_path, total.unwrap_or(0), params)?;
    let meta = PartialMeta {
        validator: validator.unwrap_or_default(),
        total,
    };
    // The old validator goes first, then the old bytes, and only then is the new validator
    // written: a crash at any point never pairs old bytes with the new file's validator
    // (which would let a resume splice the two versions).
    let _ = tokio::fs::remove_file(meta_path).await;
    let file = tokio::fs::File::create(part_path)
        .await
        .map_err(|error| StepError::scratch("create", part_path, error))?;
    if !meta.validator.is_empty() {
        let bytes = serde_json::to_vec(&meta).expect("JSON");
        tokio::fs::write(meta_path, bytes)
            .await
            .map_err(|error| StepError::scratch("write", meta_path, error))?;
    }
    Ok(BodyStart {
        file,
        hasher: blake3::Hasher::new(),
        size: 0,
        total,
    })
}

/// Streams the body into the part through its writer, reporting progress, within the read
/// timeout between chunks and the workflow's size limit. What arrived before a failure stays in
/// the part for the next attempt to resume, unless it is over the limit.
async fn stream_body(
    response: reqwest::Response,
    start: BodyStart,
    files: &PartFiles,
    host: &str,
    context: &DownloadContext<'_>,
) -> Result<(u64, Hash), AttemptFailure> {
    let params = context.params;
    let read_timeout = Duration::from_secs(params.read_timeout_s);
    let part_path = &files.part_path;
    let BodyStart {
        file,
        hasher,
        mut size,
        total,
    } = start;
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
                writer.finish(part_path).await?;
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
                writer.finish(part_path).await?;
                if let Some(total) = total
                    && size < total
                {
                    // The server promised more than it sent: keep what came, resume next attempt.
                    return Err(StepError::new(
                        ErrorClass::TruncatedDownload,
                        format!(
                            "{host} announced {total} bytes but the connection ended after {size}: {}",
                            transport_error(host, &error).message
                        ),
                    )
                    .into());
                }
                return Err(transport_error(host, &error).into());
            }
        };
        let chunk_bytes = chunk.len() as u64;
        if size + chunk_bytes > params.max_bytes {
            // Whatever it wrote is discarded next: its outcome does not matter.
            let _ = writer.finish(part_path).await;
            discard_partial(files).await;
            return Err(too_large(host, size + chunk_bytes, params).into());
        }
        writer.write(chunk, part_path).await?;
        size += chunk_bytes;
        context.progress.send_modify(|progress| {
            progress.bytes_done = size;
            progress.bytes_total = total;
        });
    }
    let hasher = writer.finish(part_path).await?;
    if let Some(total) = total
        && size != total
    {
        return Err(StepError::new(
            ErrorClass::TruncatedDownload,
            format!("{host} announced {total} bytes but the body ended after {size}"),
        )
        .into());
    }
    Ok(finish_part(part_path, hasher, size).await?)
}

/// The kept part, if it can be resumed; the hasher has re-hashed its bytes. A part without a
/// validator cannot be resumed safely and is dropped.
async fn load_partial(files: &PartFiles) -> Result<Option<KeptPart>, StepError> {
    let PartFiles {
        part_path,
        meta_path,
    } = files;
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
        discard_partial(files).await;
        return Ok(None);
    };
    let path = part_path.clone();
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
    Ok(Some(KeptPart {
        length,
        meta,
        hasher,
    }))
}

async fn discard_partial(files: &PartFiles) {
    let _ = tokio::fs::remove_file(&files.part_path).await;
    let _ = tokio::fs::remove_file(&files.meta_path).await;
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
    let free = crate::steps::free_bytes(dir)
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
}
