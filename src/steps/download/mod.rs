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
//!
//! The files: this one classifies the source and runs the transfer it calls for into the part
//! file, then renames it into place; `http` downloads over HTTP(S) with resume and retries;
//! `part` is the part file's writer (a thread that writes, hashes and starts the writeback);
//! `local` copies a local file; `platform` runs yt-dlp behind the egress proxy.

mod http;
mod local;
mod part;
mod platform;

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::net::NetworkPolicy;
use super::{Cancel, ErrorClass, ProgressSender, StepError, cancelled, scratch};
use crate::model::job::Hash;
use crate::model::redact::redact_url;
use crate::model::sources::{SourceText, classify};
use crate::workflow::{DownloadParams, Downloader};

/// The file name of a finished download in the scratch directory.
pub const ORIGINAL_FILE: &str = "original";
/// The file name of a platform's JSON description of the video (yt-dlp `-J`).
pub const PLATFORM_METADATA_FILE: &str = "platform.json";

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
                platform::download_platform(url, scratch_dir, context).await
            }
            SourceKind::Http(url) => http::download_http(url, scratch_dir, context)
                .await
                .map(|(size, blake3)| (size, blake3, None)),
            SourceKind::Local(path) => local::copy_local(path, &part_path(scratch_dir), params)
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
    let part_path = part_path(scratch_dir);
    crate::failpoint!("download.scratch.before");
    tokio::fs::rename(&part_path, &final_path)
        .await
        .map_err(|error| StepError::scratch("rename", &part_path, error))?;
    let _ = tokio::fs::remove_file(http::partial_meta_path(scratch_dir)).await;
    scratch::sync_dir(scratch_dir).await?;
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

/// Where every transfer writes before the step renames it to [`ORIGINAL_FILE`].
fn part_path(scratch_dir: &Path) -> PathBuf {
    scratch_dir.join(format!("{ORIGINAL_FILE}.part"))
}

fn host_of(url: &url::Url) -> String {
    url.host_str().unwrap_or("?").to_string()
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
    fn platform_hosts_match_subdomains_only() {
        let params = DownloadParams::default();
        assert!(params.is_platform_host("www.youtube.com"));
        assert!(params.is_platform_host("youtube.com"));
        assert!(!params.is_platform_host("notyoutube.com"));
        assert!(!params.is_platform_host("cdn.example.com"));
    }
}
