//! The extract step: ffprobe gives the metadata record, ffmpeg writes the first audio stream.
//!
//! ffmpeg and ffprobe only ever read the one local file they are given, through the `file:`
//! protocol with every other protocol refused, so a crafted input cannot make them open URLs or
//! other protocols. The audio is written as `tmp-audio.<ext>` and renamed to `audio.<ext>` once
//! ffmpeg succeeded and the file is synced, so a finished-looking audio file is always whole.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::AsyncReadExt;
use tokio::process::Command;

use super::{Cancel, ErrorClass, StepError, cancelled};
use crate::engine::job::{MediaMetadata, StreamInfo};
use crate::workflow::{AudioMode, ExtractParams};

/// The most of ffmpeg's stderr kept for an error message.
const FFMPEG_STDERR_BYTES_MAX: usize = 16 * 1024;

/// The largest ffprobe JSON accepted; real probes are a few KiB.
const FFPROBE_OUTPUT_BYTES_MAX: usize = 4 * 1024 * 1024;

/// A finished extraction.
#[derive(Debug, Clone, PartialEq)]
pub struct Extracted {
    pub audio_path: PathBuf,
    /// The audio file's extension, which is also its container.
    pub audio_extension: String,
}

/// Runs ffprobe on a local file.
pub async fn probe(input: &Path, cancel: &mut Cancel) -> Result<MediaMetadata, StepError> {
    let mut command = Command::new("ffprobe");
    command
        .args(["-v", "error", "-protocol_whitelist", "file"])
        .args(["-print_format", "json", "-show_format", "-show_streams"])
        .arg(file_url(input));
    let output = run(command, "ffprobe", cancel).await?;
    if !output.success {
        return Err(StepError::new(
            ErrorClass::CorruptMedia,
            format!("ffprobe cannot read the media: {}", output.stderr_tail()),
        ));
    }
    parse_probe(&output.stdout)
}

/// Parses ffprobe's JSON into the metadata record, keeping the JSON whole in `raw`.
pub fn parse_probe(json: &[u8]) -> Result<MediaMetadata, StepError> {
    let corrupt = |reason: String| StepError::new(ErrorClass::CorruptMedia, reason);
    let value: serde_json::Value = serde_json::from_slice(json)
        .map_err(|error| corrupt(format!("ffprobe printed invalid JSON: {error}")))?;
    let format = value
        .get("format")
        .ok_or_else(|| corrupt("ffprobe found no container format".into()))?;
    let text = |value: &serde_json::Value, key: &str| {
        value
            .get(key)
            .and_then(|field| field.as_str())
            .map(str::to_string)
    };
    let number = |value: &serde_json::Value, key: &str| {
        value.get(key).and_then(|field| match field {
            serde_json::Value::String(text) => text.parse::<f64>().ok(),
            serde_json::Value::Number(number) => number.as_f64(),
            _ => None,
        })
    };
    let integer = |value: &serde_json::Value, key: &str| {
        number(value, key)
            .filter(|n| *n >= 0.0 && n.is_finite())
            .map(|n| n as u64)
    };
    let small = |value: &serde_json::Value, key: &str| {
        integer(value, key).and_then(|n| u32::try_from(n).ok())
    };
    let streams = value
        .get("streams")
        .and_then(|streams| streams.as_array())
        .map(|streams| {
            streams
                .iter()
                .map(|stream| StreamInfo {
                    index: small(stream, "index").unwrap_or_default(),
                    codec_type: text(stream, "codec_type").unwrap_or_else(|| "unknown".into()),
                    codec_name: text(stream, "codec_name"),
                    width: small(stream, "width"),
                    height: small(stream, "height"),
                    sample_rate: small(stream, "sample_rate"),
                    channels: small(stream, "channels"),
                    duration_s: number(stream, "duration"),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(MediaMetadata {
        format_name: text(format, "format_name").unwrap_or_else(|| "unknown".into()),
        duration_s: number(format, "duration"),
        size: integer(format, "size"),
        bit_rate: integer(format, "bit_rate"),
        streams,
        raw: String::from_utf8_lossy(json).into_owned(),
    })
}

/// The metadata record as JSON, as stored and shown (`raw` parsed back into JSON).
pub fn metadata_json(metadata: &MediaMetadata) -> serde_json::Value {
    let raw: serde_json::Value = serde_json::from_str(&metadata.raw)
        .unwrap_or(serde_json::Value::String(metadata.raw.clone()));
    serde_json::json!({
        "format_name": metadata.format_name,
        "duration_s": metadata.duration_s,
        "size": metadata.size,
        "bit_rate": metadata.bit_rate,
        "streams": metadata.streams.iter().map(|stream| serde_json::json!({
            "index": stream.index,
            "codec_type": stream.codec_type,
            "codec_name": stream.codec_name,
            "width": stream.width,
            "height": stream.height,
            "sample_rate": stream.sample_rate,
            "channels": stream.channels,
            "duration_s": stream.duration_s,
        })).collect::<Vec<_>>(),
        "raw": raw,
    })
}

/// The container extension for a stream copy of `codec`, or `None` when it has no clean one.
pub fn copy_extension(codec: &str) -> Option<&'static str> {
    match codec {
        "aac" => Some("m4a"),
        "mp3" => Some("mp3"),
        "opus" => Some("opus"),
        "vorbis" => Some("ogg"),
        "flac" => Some("flac"),
        "pcm_s16le" => Some("wav"),
        _ => None,
    }
}

/// The file extension for the original video, from the container ffprobe found.
pub fn video_extension(metadata: &MediaMetadata) -> &'static str {
    let format = metadata.format_name.as_str();
    if format.contains("mp4") || format.contains("mov") {
        "mp4"
    } else if format.contains("matroska") || format.contains("webm") {
        "mkv"
    } else if format == "avi" {
        "avi"
    } else if format == "flv" {
        "flv"
    } else if format == "mpegts" {
        "ts"
    } else if format == "ogg" {
        "ogv"
    } else {
        "bin"
    }
}

/// Extracts the first audio stream of `input` into `scratch_dir`.
pub async fn extract_audio(
    input: &Path,
    metadata: &MediaMetadata,
    params: &ExtractParams,
    scratch_dir: &Path,
    cancel: &mut Cancel,
) -> Result<Extracted, StepError> {
    let audio = metadata
        .streams
        .iter()
        .find(|stream| stream.codec_type == "audio")
        .ok_or_else(|| {
            StepError::new(
                ErrorClass::NoAudioStream,
                format!("the media ({}) has no audio stream", metadata.format_name),
            )
        })?;
    let codec = audio.codec_name.clone().unwrap_or_default();
    // A codec with no clean container falls back to FLAC: lossless, so nothing is lost.
    let (extension, codec_args): (&str, Vec<String>) = match (params.audio, copy_extension(&codec))
    {
        (AudioMode::Copy, Some(extension)) => (extension, vec!["-c:a".into(), "copy".into()]),
        (AudioMode::Copy, None) | (AudioMode::Flac, _) => ("flac", transcode_args("flac", params)),
        (AudioMode::Wav, _) => ("wav", transcode_args("pcm_s16le", params)),
    };
    tokio::fs::create_dir_all(scratch_dir)
        .await
        .map_err(|error| StepError::scratch("create", scratch_dir, error))?;
    let temp_path = scratch_dir.join(format!("tmp-audio.{extension}"));
    let audio_path = scratch_dir.join(format!("audio.{extension}"));
    let mut command = Command::new("ffmpeg");
    command
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args(["-protocol_whitelist", "file"])
        .arg("-i")
        .arg(file_url(input))
        .args(["-map", "0:a:0", "-vn", "-sn", "-dn", "-map_metadata", "-1"])
        .args(&codec_args)
        .arg(file_url(&temp_path));
    let output = run(command, "ffmpeg", cancel).await?;
    if !output.success {
        let _ = tokio::fs::remove_file(&temp_path).await;
        return Err(StepError::new(
            ErrorClass::ExtractFailed,
            format!(
                "ffmpeg failed to extract the {codec} audio: {}",
                output.stderr_tail()
            ),
        ));
    }
    let file = tokio::fs::File::open(&temp_path)
        .await
        .map_err(|error| StepError::scratch("open", &temp_path, error))?;
    file.sync_all()
        .await
        .map_err(|error| StepError::scratch("sync", &temp_path, error))?;
    tokio::fs::rename(&temp_path, &audio_path)
        .await
        .map_err(|error| StepError::scratch("rename", &temp_path, error))?;
    super::download::sync_dir(scratch_dir).await?;
    Ok(Extracted {
        audio_path,
        audio_extension: extension.to_string(),
    })
}

fn transcode_args(codec: &str, params: &ExtractParams) -> Vec<String> {
    let mut args = vec!["-c:a".to_string(), codec.to_string()];
    if let Some(sample_rate) = params.sample_rate {
        args.extend(["-ar".to_string(), sample_rate.to_string()]);
    }
    if let Some(channels) = params.channels {
        args.extend(["-ac".to_string(), channels.to_string()]);
    }
    args
}

/// A local path as a `file:` URL, so a file named like a protocol (`http:x`) is still a file.
fn file_url(path: &Path) -> String {
    format!("file:{}", path.display())
}

struct ProcessOutput {
    success: bool,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl ProcessOutput {
    fn stderr_tail(&self) -> String {
        let text = String::from_utf8_lossy(&self.stderr);
        let lines: Vec<&str> = text
            .lines()
            .filter(|line| !line.trim().is_empty())
            .collect();
        let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
        if tail.is_empty() {
            "(no message)".to_string()
        } else {
            tail
        }
    }
}

/// Runs a subprocess to completion with bounded output, killing it if the job is cancelled.
async fn run(
    mut command: Command,
    program: &str,
    cancel: &mut Cancel,
) -> Result<ProcessOutput, StepError> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|error| {
        StepError::new(
            ErrorClass::Internal,
            format!("cannot run {program} (is ffmpeg installed and on PATH?): {error}"),
        )
    })?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let read_stdout = read_bounded(stdout, FFPROBE_OUTPUT_BYTES_MAX);
    let read_stderr = read_bounded(stderr, FFMPEG_STDERR_BYTES_MAX);
    let work = async {
        let (stdout, stderr) = tokio::join!(read_stdout, read_stderr);
        let status = child.wait().await;
        (status, stdout, stderr)
    };
    tokio::select! {
        (status, stdout, stderr) = work => {
            let status = status.map_err(|error| StepError::new(ErrorClass::Internal, format!("{program} did not run: {error}")))?;
            Ok(ProcessOutput { success: status.success(), stdout, stderr })
        }
        () = cancelled(cancel) => {
            // Dropping the work future drops the child, and kill_on_drop kills it.
            Err(StepError::new(ErrorClass::Cancelled, format!("cancelled while {program} was running")))
        }
    }
}

/// Reads a pipe to its end, keeping the first `limit` bytes (the rest is drained, so the child
/// never blocks on a full pipe).
async fn read_bounded(mut pipe: impl tokio::io::AsyncRead + Unpin, limit: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(count) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&buffer[..count.min(room)]);
            }
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_json_becomes_a_typed_record_with_the_raw_json_kept() {
        let json = br#"{"streams":[{"index":0,"codec_type":"video","codec_name":"h264","width":320,"height":240,"duration":"2.000000"},{"index":1,"codec_type":"audio","codec_name":"aac","sample_rate":"44100","channels":2,"duration":"2.020000"}],"format":{"format_name":"mov,mp4,m4a,3gp,3g2,mj2","duration":"2.020000","size":"12345","bit_rate":"48890"}}"#;
        let metadata = parse_probe(json).unwrap();
        assert_eq!(metadata.format_name, "mov,mp4,m4a,3gp,3g2,mj2");
        assert_eq!(metadata.size, Some(12345));
        assert_eq!(metadata.streams.len(), 2);
        assert_eq!(metadata.streams[1].sample_rate, Some(44100));
        assert_eq!(metadata.streams[0].width, Some(320));
        assert_eq!(metadata.streams[1].duration_s, Some(2.02));
        assert_eq!(metadata.raw.as_bytes(), json);
        assert_eq!(video_extension(&metadata), "mp4");
    }

    #[test]
    fn probe_output_without_a_format_is_corrupt_media() {
        let error = parse_probe(br#"{"streams":[]}"#).unwrap_err();
        assert_eq!(error.class, ErrorClass::CorruptMedia);
    }

    #[test]
    fn copy_containers_follow_the_codec() {
        assert_eq!(copy_extension("aac"), Some("m4a"));
        assert_eq!(copy_extension("vorbis"), Some("ogg"));
        assert_eq!(copy_extension("pcm_s16le"), Some("wav"));
        assert_eq!(copy_extension("ac3"), None);
    }
}
