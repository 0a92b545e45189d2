//! The stable error classes a job's failure is filed under: what `show`, `jobs`, `logs`, the API
//! and the metrics name, and what retries and breakers decide on.

use std::fmt;

/// The stable error classes users see in `show`, `jobs`, `logs` and the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The source is not something narra can fetch (unknown scheme, malformed URL), or a file whose
    /// format narra refuses to open (playlists such as HLS or concat scripts, which would make
    /// ffmpeg read other files or URLs).
    UnsupportedSource,
    /// HTTP 401/403/451: the platform refused.
    DownloadBlocked,
    /// HTTP 404/410, or a local path that does not exist.
    NotFound,
    RateLimited,
    NetworkTimeout,
    NetworkError,
    ServerError,
    /// Any other HTTP refusal.
    HttpError,
    /// Fewer bytes arrived than the server announced.
    TruncatedDownload,
    /// The video is larger than the workflow's `max_bytes`.
    TooLarge,
    /// The source (or a redirect hop) points at a loopback, private or otherwise non-public address.
    ForbiddenAddress,
    /// ffprobe cannot read the file as media, or ffmpeg found it damaged: invalid data, a missing
    /// moov atom, an empty file, a truncated stream (caught by probing the extracted audio).
    CorruptMedia,
    /// The media has no audio stream to extract.
    NoAudioStream,
    /// The chosen audio stream's codec is one ffmpeg cannot decode.
    UnsupportedCodec,
    /// ffprobe or ffmpeg ran past its timeout and was killed with its whole process group.
    ExtractTimeout,
    /// ffmpeg failed; the message carries ffmpeg's own words.
    ExtractFailed,
    StorageUnavailable,
    /// The object store refused the credentials.
    StorageAuth,
    /// An object does not read back as written.
    ChecksumMismatch,
    StorageError,
    /// Scratch space on the worker could not be written.
    ScratchError,
    Cancelled,
    Internal,
    /// Free scratch space is below the workflow's `scratch_reserve_mb` plus the size the source
    /// announced: the download is not started and the job waits, spending no attempt.
    ScratchLow,
    /// The process running the job died three times at the same point with no progress in
    /// between: the job is quarantined so one poisonous input cannot take workers down again.
    CrashLoop,
    /// The media helper (FFmpeg's libraries in a sandboxed process) died twice on the job's input:
    /// the media crashes the decoder, the demuxer or a limit. Only that step fails.
    MediaCrash,
}

impl ErrorClass {
    /// Every class, for reading one back from its stored name.
    pub const ALL: [ErrorClass; 26] = [
        ErrorClass::UnsupportedSource,
        ErrorClass::DownloadBlocked,
        ErrorClass::NotFound,
        ErrorClass::RateLimited,
        ErrorClass::NetworkTimeout,
        ErrorClass::NetworkError,
        ErrorClass::ServerError,
        ErrorClass::HttpError,
        ErrorClass::TruncatedDownload,
        ErrorClass::TooLarge,
        ErrorClass::ForbiddenAddress,
        ErrorClass::CorruptMedia,
        ErrorClass::NoAudioStream,
        ErrorClass::UnsupportedCodec,
        ErrorClass::ExtractTimeout,
        ErrorClass::ExtractFailed,
        ErrorClass::StorageUnavailable,
        ErrorClass::StorageAuth,
        ErrorClass::ChecksumMismatch,
        ErrorClass::StorageError,
        ErrorClass::ScratchError,
        ErrorClass::Cancelled,
        ErrorClass::Internal,
        ErrorClass::CrashLoop,
        ErrorClass::ScratchLow,
        ErrorClass::MediaCrash,
    ];

    /// The class stored as `name` (`ErrorInfo::class`), if it is one.
    pub fn from_name(name: &str) -> Option<ErrorClass> {
        ErrorClass::ALL
            .into_iter()
            .find(|class| class.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::UnsupportedSource => "unsupported_source",
            ErrorClass::DownloadBlocked => "download_blocked",
            ErrorClass::NotFound => "not_found",
            ErrorClass::RateLimited => "rate_limited",
            ErrorClass::NetworkTimeout => "network_timeout",
            ErrorClass::NetworkError => "network_error",
            ErrorClass::ServerError => "server_error",
            ErrorClass::HttpError => "http_error",
            ErrorClass::TruncatedDownload => "truncated_download",
            ErrorClass::TooLarge => "too_large",
            ErrorClass::ForbiddenAddress => "forbidden_address",
            ErrorClass::CorruptMedia => "corrupt_media",
            ErrorClass::NoAudioStream => "no_audio_stream",
            ErrorClass::UnsupportedCodec => "unsupported_codec",
            ErrorClass::ExtractTimeout => "extract_timeout",
            ErrorClass::ExtractFailed => "extract_failed",
            ErrorClass::StorageUnavailable => "storage_unavailable",
            ErrorClass::StorageAuth => "storage_auth",
            ErrorClass::ChecksumMismatch => "checksum_mismatch",
            ErrorClass::StorageError => "storage_error",
            ErrorClass::ScratchError => "scratch_error",
            ErrorClass::Cancelled => "cancelled",
            ErrorClass::Internal => "internal",
            ErrorClass::CrashLoop => "crash_loop",
            ErrorClass::ScratchLow => "scratch_low",
            ErrorClass::MediaCrash => "media_crash",
        }
    }

    /// Whether a later retry may succeed without anyone changing anything.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorClass::RateLimited
                | ErrorClass::NetworkTimeout
                | ErrorClass::NetworkError
                | ErrorClass::ServerError
                | ErrorClass::TruncatedDownload
                | ErrorClass::StorageUnavailable
        )
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
