//! The download step: fetches a source (HTTP(S), a `file://` URL or a local path) into the job's
//! scratch directory, hashing it with blake3 as it streams.
//!
//! Memory does not grow with the size of a video: bytes are written chunk by chunk. The file is
//! written as `original.part`, fsynced, then renamed to `original`, so a complete-looking scratch
//! file is always a complete download. This step never writes outside the scratch directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::{Cancel, ErrorClass, StepError, cancelled};
use crate::engine::job::Hash;
use crate::workflow::DownloadParams;

/// The file name of a finished download in the scratch directory.
pub const ORIGINAL_FILE: &str = "original";

/// A finished download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    pub path: PathBuf,
    pub size: u64,
    pub blake3: Hash,
}

/// Where a source points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    Http(url::Url),
    Local(PathBuf),
}

/// Classifies a source as it was stored on the job (local paths are absolute by then).
pub fn parse_source(source: &str) -> Result<SourceKind, StepError> {
    let lower = source.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        let url = url::Url::parse(source).map_err(|error| {
            StepError::new(
                ErrorClass::UnsupportedSource,
                format!("malformed URL {source:?}: {error}"),
            )
        })?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(StepError::new(
                ErrorClass::UnsupportedSource,
                format!("URL {source:?} has no host"),
            ));
        }
        return Ok(SourceKind::Http(url));
    }
    if lower.starts_with("file://") {
        let url = url::Url::parse(source).map_err(|error| {
            StepError::new(
                ErrorClass::UnsupportedSource,
                format!("malformed file URL {source:?}: {error}"),
            )
        })?;
        let path = url.to_file_path().map_err(|()| {
            StepError::new(
                ErrorClass::UnsupportedSource,
                format!("file URL {source:?} does not name a local path"),
            )
        })?;
        return Ok(SourceKind::Local(path));
    }
    if let Some((scheme, _)) = source.split_once("://") {
        return Err(StepError::new(
            ErrorClass::UnsupportedSource,
            format!(
                "unsupported source scheme {scheme:?} in {source:?}: use http(s)://, file:// or a local path"
            ),
        ));
    }
    if source.trim().is_empty() {
        return Err(StepError::new(
            ErrorClass::UnsupportedSource,
            "the source is empty",
        ));
    }
    Ok(SourceKind::Local(PathBuf::from(source)))
}

/// The HTTP client all downloads of a process share (one connection pool).
pub fn http_client(params: &DownloadParams) -> Result<reqwest::Client, StepError> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(params.connect_timeout_s))
        .user_agent(params.user_agent.clone())
        .build()
        .map_err(|error| {
            StepError::new(
                ErrorClass::Internal,
                format!("cannot build the HTTP client: {error}"),
            )
        })
}

/// Downloads `source` into `scratch_dir/original`.
pub async fn download(
    source: &str,
    scratch_dir: &Path,
    params: &DownloadParams,
    client: &reqwest::Client,
    cancel: &mut Cancel,
) -> Result<Downloaded, StepError> {
    let source_kind = parse_source(source)?;
    tokio::fs::create_dir_all(scratch_dir)
        .await
        .map_err(|error| StepError::scratch("create", scratch_dir, error))?;
    let part_path = scratch_dir.join(format!("{ORIGINAL_FILE}.part"));
    let final_path = scratch_dir.join(ORIGINAL_FILE);
    let total = Duration::from_secs(params.total_timeout_s);
    let transfer = async {
        match &source_kind {
            SourceKind::Http(url) => download_http(url, &part_path, params, client).await,
            SourceKind::Local(path) => copy_local(path, &part_path).await,
        }
    };
    let (size, blake3) = tokio::select! {
        result = tokio::time::timeout(total, transfer) => match result {
            Ok(result) => result?,
            Err(_) => {
                return Err(StepError::new(
                    ErrorClass::NetworkTimeout,
                    format!("download of {source} did not finish within {} s", params.total_timeout_s),
                ));
            }
        },
        () = cancelled(cancel) => {
            return Err(StepError::new(ErrorClass::Cancelled, "cancelled during download"));
        }
    };
    tokio::fs::rename(&part_path, &final_path)
        .await
        .map_err(|error| StepError::scratch("rename", &part_path, error))?;
    sync_dir(scratch_dir).await?;
    Ok(Downloaded {
        path: final_path,
        size,
        blake3,
    })
}

async fn download_http(
    url: &url::Url,
    part_path: &Path,
    params: &DownloadParams,
    client: &reqwest::Client,
) -> Result<(u64, Hash), StepError> {
    let host = url.host_str().unwrap_or_default().to_string();
    let response = client
        .get(url.clone())
        .header(reqwest::header::ACCEPT_ENCODING, "identity")
        .send()
        .await
        .map_err(|error| transport_error(&host, &error))?;
    let status = response.status();
    if !status.is_success() {
        return Err(http_status_error(&host, status));
    }
    let expected_bytes = response.content_length();
    let mut file = tokio::fs::File::create(part_path)
        .await
        .map_err(|error| StepError::scratch("create", part_path, error))?;
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    let mut stream = response.bytes_stream();
    let read_timeout = Duration::from_secs(params.read_timeout_s);
    loop {
        let next = tokio::time::timeout(read_timeout, stream.next())
            .await
            .map_err(|_| {
                StepError::new(
                    ErrorClass::NetworkTimeout,
                    format!(
                        "no data from {host} for {} s after {size} bytes",
                        params.read_timeout_s
                    ),
                )
            })?;
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|error| transport_error(&host, &error))?;
        hasher.update(&chunk);
        size += chunk.len() as u64;
        file.write_all(&chunk)
            .await
            .map_err(|error| StepError::scratch("write", part_path, error))?;
    }
    if let Some(expected_bytes) = expected_bytes
        && size != expected_bytes
    {
        return Err(StepError::new(
            ErrorClass::TruncatedDownload,
            format!("{host} announced {expected_bytes} bytes but sent {size}"),
        ));
    }
    file.sync_all()
        .await
        .map_err(|error| StepError::scratch("sync", part_path, error))?;
    Ok((size, hasher.finalize().into()))
}

async fn copy_local(source: &Path, part_path: &Path) -> Result<(u64, Hash), StepError> {
    let source = source.to_path_buf();
    let part_path = part_path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let input = std::fs::File::open(&source).map_err(|error| {
            let class = if error.kind() == std::io::ErrorKind::NotFound {
                ErrorClass::NotFound
            } else {
                ErrorClass::UnsupportedSource
            };
            StepError::new(class, format!("cannot read {}: {error}", source.display()))
        })?;
        if !input
            .metadata()
            .map(|metadata| metadata.is_file())
            .unwrap_or(false)
        {
            return Err(StepError::new(
                ErrorClass::UnsupportedSource,
                format!("{} is not a regular file", source.display()),
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

pub(crate) async fn sync_dir(dir: &Path) -> Result<(), StepError> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all().map(|()| dir))
        .await
        .expect("a directory sync does not panic")
        .map(|_| ())
        .map_err(|error| {
            StepError::new(
                ErrorClass::ScratchError,
                format!("cannot sync a scratch directory: {error}"),
            )
        })
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
    let class = if error.is_timeout() {
        ErrorClass::NetworkTimeout
    } else {
        ErrorClass::NetworkError
    };
    let mut message = format!("request to {host} failed: {error}");
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        message.push_str(&format!(": {inner}"));
        cause = inner.source();
    }
    StepError::new(class, message)
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
}
