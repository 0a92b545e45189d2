//! ffprobe: running it on one scratch file, and reading its JSON into the metadata record.
//!
//! Also the small readers of ffprobe's JSON (numbers printed as strings, tags, the kept `raw`)
//! that the plan and the record use. It never decides which stream is extracted or how.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::Tools;
use super::command::ffprobe_args;
use super::diagnosis::{diagnose, run_failure, stderr_tail};
use crate::model::job::{MediaMetadata, StreamInfo};
use crate::steps::media::{self, HelperPool, Media};
use crate::steps::process::run_process;
use crate::steps::{Cancel, ErrorClass, StepError};
use crate::workflow::{ExtractParams, MediaPath};

/// The largest ffprobe JSON accepted; real probes are a few KiB.
const FFPROBE_OUTPUT_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Runs ffprobe on a local file and parses what it found into the metadata record.
pub async fn probe(
    tools: &Tools,
    input: &Path,
    params: &ExtractParams,
    cancel: &mut Cancel,
) -> Result<MediaMetadata, StepError> {
    let file = tokio::fs::metadata(input)
        .await
        .map_err(|error| StepError::scratch("inspect", input, error))?;
    if file.is_file() && file.len() == 0 {
        return Err(StepError::new(
            ErrorClass::CorruptMedia,
            "the file is empty (0 bytes): there is no media to read",
        ));
    }
    let timeout = Duration::from_millis(params.probe_timeout_ms);
    let json = match helpers(tools, params) {
        Some(pool) => media::probe(pool, input, timeout, cancel)
            .await?
            .into_bytes(),
        None => run_ffprobe(tools, input, params.threads, timeout, cancel).await?,
    };
    let metadata = parse_probe(&json)?;
    if metadata.streams.is_empty() {
        return Err(StepError::new(
            ErrorClass::CorruptMedia,
            format!(
                "ffprobe found no stream in the {} file",
                metadata.format_name
            ),
        ));
    }
    Ok(metadata)
}

/// The media helpers when the tools have them and the workflow does not ask for the programs.
pub(super) fn helpers<'a>(tools: &'a Tools, params: &ExtractParams) -> Option<&'a HelperPool> {
    match (&tools.media, params.media) {
        (Media::Helpers(pool), MediaPath::Helper) => Some(pool),
        _ => None,
    }
}

/// ffprobe's JSON for `input`, its messages judged.
async fn run_ffprobe(
    tools: &Tools,
    input: &Path,
    threads: u32,
    timeout: Duration,
    cancel: &mut Cancel,
) -> Result<Vec<u8>, StepError> {
    let args = ffprobe_args(input, threads);
    let finished = run_process(
        &tools.ffprobe,
        &args,
        FFPROBE_OUTPUT_BYTES_MAX,
        timeout,
        cancel,
    )
    .await
    .map_err(|error| run_failure(error, "ffprobe", &tools.ffprobe, timeout))?;
    // Codec problems of streams narra does not extract are no reason to refuse the media, so
    // ffprobe's messages are judged as those of a run that read what it needed.
    if let Some(diagnosis) = diagnose(&finished.stderr, false) {
        return Err(diagnosis.into_error("ffprobe", None));
    }
    if !finished.success {
        let diagnosis = diagnose(&finished.stderr, true);
        return Err(match diagnosis {
            Some(diagnosis) => diagnosis.into_error("ffprobe", None),
            None => StepError::new(
                ErrorClass::CorruptMedia,
                format!(
                    "ffprobe cannot read the media: {}",
                    stderr_tail(&finished.stderr)
                ),
            ),
        });
    }
    Ok(finished.stdout)
}

/// Parses ffprobe's JSON into the metadata record, keeping the JSON in `raw` without the local file
/// name ffprobe read (a scratch path that says nothing of the media), so identical media gives an
/// identical record wherever it was probed.
pub fn parse_probe(json: &[u8]) -> Result<MediaMetadata, StepError> {
    let corrupt = |reason: String| StepError::new(ErrorClass::CorruptMedia, reason);
    let mut value: Value = serde_json::from_slice(json)
        .map_err(|error| corrupt(format!("ffprobe printed invalid JSON: {error}")))?;
    if let Some(format) = value.get_mut("format").and_then(Value::as_object_mut) {
        format.remove("filename");
    }
    let format = value
        .get("format")
        .filter(|format| format.as_object().is_some_and(|format| !format.is_empty()))
        .ok_or_else(|| corrupt("ffprobe found no container format".into()))?;
    let streams = value
        .get("streams")
        .and_then(Value::as_array)
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
                    duration_s: number(stream, "duration").or_else(|| tag_duration(stream)),
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
        raw: serde_json::to_string_pretty(&value).expect("JSON values serialize"),
    })
}

pub(super) fn text(value: &Value, key: &str) -> Option<String> {
    value.get(key).and_then(Value::as_str).map(str::to_string)
}

/// A number ffprobe prints as a JSON number or a decimal string; `N/A` and the like are `None`.
pub(super) fn number(value: &Value, key: &str) -> Option<f64> {
    value
        .get(key)
        .and_then(|field| match field {
            Value::String(text) => text.parse::<f64>().ok(),
            Value::Number(number) => number.as_f64(),
            _ => None,
        })
        .filter(|number| number.is_finite())
}

pub(super) fn integer(value: &Value, key: &str) -> Option<u64> {
    number(value, key)
        .filter(|number| *number >= 0.0 && *number <= u64::MAX as f64)
        // In range and finite: the conversion only drops a fraction ffprobe does not print.
        .map(|number| number as u64)
}

pub(super) fn small(value: &Value, key: &str) -> Option<u32> {
    integer(value, key).and_then(|number| u32::try_from(number).ok())
}

/// Matroska keeps stream durations in a `DURATION` tag (`00:00:02.008000000`), not in the stream.
fn tag_duration(stream: &Value) -> Option<f64> {
    let tags = stream.get("tags")?.as_object()?;
    let (_, value) = tags
        .iter()
        .find(|(key, _)| key.to_ascii_uppercase().starts_with("DURATION"))?;
    parse_clock(value.as_str()?)
}

/// `HH:MM:SS.fraction` as seconds.
fn parse_clock(clock: &str) -> Option<f64> {
    let mut parts = clock.trim().split(':');
    let hours: f64 = parts.next()?.parse().ok()?;
    let minutes: f64 = parts.next()?.parse().ok()?;
    let seconds: f64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || hours < 0.0 || minutes < 0.0 || seconds < 0.0 {
        return None;
    }
    Some(hours * 3600.0 + minutes * 60.0 + seconds).filter(|total| total.is_finite())
}

/// `raw` parsed back into JSON; a raw that is not JSON stays a string.
pub(super) fn raw_json(metadata: &MediaMetadata) -> Value {
    serde_json::from_str(&metadata.raw).unwrap_or_else(|_| Value::String(metadata.raw.clone()))
}

pub(super) fn raw_stream(raw: &Value, index: u32) -> Option<&Value> {
    raw.get("streams")?
        .as_array()?
        .iter()
        .find(|stream| small(stream, "index") == Some(index))
}

/// A stream's language tag (`eng`, ...), as the container tags it.
pub(super) fn language(raw_stream: Option<&Value>) -> Option<String> {
    let tags = raw_stream?.get("tags")?.as_object()?;
    tags.iter()
        .find(|(key, _)| key.eq_ignore_ascii_case("language"))
        .and_then(|(_, value)| value.as_str())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::extract::fixtures::{metadata_of, mp4_probe};
    use crate::steps::extract::video_extension;

    #[test]
    fn probe_json_becomes_a_typed_record_with_the_raw_json_kept() {
        let metadata = parse_probe(mp4_probe()).unwrap();
        assert_eq!(metadata.format_name, "mov,mp4,m4a,3gp,3g2,mj2");
        assert_eq!(metadata.size, Some(12345));
        assert_eq!(metadata.streams.len(), 2);
        assert_eq!(metadata.streams[1].sample_rate, Some(44100));
        assert_eq!(metadata.streams[0].width, Some(320));
        assert_eq!(metadata.streams[1].duration_s, Some(2.02));
        assert_eq!(video_extension(&metadata), "mp4");
        let raw: Value = serde_json::from_str(&metadata.raw).unwrap();
        assert_eq!(raw["streams"][1]["profile"], "LC");
        assert!(
            raw["format"].get("filename").is_none(),
            "the scratch path is not part of the record: {raw}"
        );
    }

    #[test]
    fn matroska_stream_durations_come_from_their_tags() {
        let metadata = metadata_of(
            r#"{"streams":[{"index":0,"codec_type":"audio","codec_name":"opus","tags":{"DURATION":"00:01:02.508000000"}}],"format":{"format_name":"matroska,webm","duration":"62.508000"}}"#,
        );
        let duration = metadata.streams[0].duration_s.unwrap();
        assert!((duration - 62.508).abs() < 1e-9, "{duration}");
        assert_eq!(parse_clock("1:00:00.5"), Some(3600.5));
        assert_eq!(parse_clock("nonsense"), None);
    }

    #[test]
    fn probe_output_without_a_format_is_corrupt_media() {
        let error = parse_probe(br#"{"streams":[]}"#).unwrap_err();
        assert_eq!(error.class, ErrorClass::CorruptMedia);
        let error = parse_probe(br#"{"format":{}}"#).unwrap_err();
        assert_eq!(error.class, ErrorClass::CorruptMedia);
    }
}
