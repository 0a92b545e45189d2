//! The plan: which audio stream is extracted, and how it is written (a stream copy into the
//! codec's container, or a transcode), with the codec, container and encoder tables behind it.
//!
//! Pure decisions over the metadata record and the workflow's parameters: nothing here runs a
//! tool or touches a file.

use std::time::Duration;

use serde_json::Value;

use super::probe::{language, raw_json, raw_stream};
use super::{OutputPlan, TrackChoice};
use crate::model::job::{MediaMetadata, StreamInfo};
use crate::steps::media::WritePlan;
use crate::steps::{ErrorClass, StepError};
use crate::workflow::{AudioMode, ExtractParams, TranscodeTarget};

/// A container the audio is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Container {
    pub(super) extension: &'static str,
    /// ffmpeg's muxer for it.
    pub(super) muxer: &'static str,
    /// ffprobe's `format_name` when it reads the file back.
    pub(super) format_name: &'static str,
}

impl Container {
    const fn new(
        extension: &'static str,
        muxer: &'static str,
        format_name: &'static str,
    ) -> Container {
        Container {
            extension,
            muxer,
            format_name,
        }
    }
}

const M4A: Container = Container::new("m4a", "ipod", "mov,mp4,m4a,3gp,3g2,mj2");
const MP3: Container = Container::new("mp3", "mp3", "mp3");
const OPUS: Container = Container::new("opus", "opus", "ogg");
const OGG: Container = Container::new("ogg", "ogg", "ogg");
const FLAC: Container = Container::new("flac", "flac", "flac");
const WAV: Container = Container::new("wav", "wav", "wav");

/// The container a stream copy of `codec` goes into, or `None` when it has no clean one (ac3,
/// big-endian PCM, which ffmpeg 5.1 cannot copy into WAV, ...).
fn copy_container(codec: &str) -> Option<Container> {
    match codec {
        "aac" | "alac" => Some(M4A),
        "mp3" => Some(MP3),
        "opus" => Some(OPUS),
        "vorbis" => Some(OGG),
        "flac" => Some(FLAC),
        "pcm_s16le" | "pcm_s24le" | "pcm_f32le" => Some(WAV),
        _ => None,
    }
}

/// The file extension of a stream copy of `codec`, or `None` when it falls back to a transcode.
pub fn copy_extension(codec: &str) -> Option<&'static str> {
    copy_container(codec).map(|container| container.extension)
}

/// ffmpeg's timeout for media of `duration_s`: proportional to it, capped; the cap when unknown.
pub fn extract_timeout(params: &ExtractParams, duration_s: Option<f64>) -> Duration {
    let timeout_ms = match duration_s {
        Some(seconds) if seconds.is_finite() && seconds >= 0.0 => {
            let scaled_ms = seconds * params.timeout_ms_per_media_s as f64;
            // Saturating float-to-int conversion: a huge duration lands on the cap below.
            params.timeout_base_ms.saturating_add(scaled_ms as u64)
        }
        _ => params.timeout_max_ms,
    };
    Duration::from_millis(timeout_ms.min(params.timeout_max_ms))
}

/// Chooses the audio stream: the first tagged with the preferred language, else the first.
pub fn choose_track(
    metadata: &MediaMetadata,
    params: &ExtractParams,
) -> Result<TrackChoice, StepError> {
    let raw = raw_json(metadata);
    let audio: Vec<(&StreamInfo, Option<String>)> = metadata
        .streams
        .iter()
        .filter(|stream| stream.codec_type == "audio")
        .map(|stream| (stream, language(raw_stream(&raw, stream.index))))
        .collect();
    let Some(first) = audio.first() else {
        let streams: Vec<String> = metadata
            .streams
            .iter()
            .map(|stream| {
                format!(
                    "{} {}",
                    stream.codec_type,
                    stream.codec_name.as_deref().unwrap_or("unknown")
                )
            })
            .collect();
        return Err(StepError::new(
            ErrorClass::NoAudioStream,
            format!(
                "the media ({}) has no audio stream (streams: {})",
                metadata.format_name,
                if streams.is_empty() {
                    "none".to_string()
                } else {
                    streams.join(", ")
                }
            ),
        ));
    };
    let (chosen, reason) = match &params.preferred_language {
        Some(preferred) => match audio.iter().find(|(_, language)| {
            language
                .as_deref()
                .is_some_and(|language| language.eq_ignore_ascii_case(preferred))
        }) {
            Some(found) => (
                found,
                format!("the first audio stream tagged {preferred:?}"),
            ),
            None => {
                let tagged: Vec<&str> = audio
                    .iter()
                    .map(|(_, language)| language.as_deref().unwrap_or("untagged"))
                    .collect();
                (
                    first,
                    format!(
                        "the first audio stream: none is tagged {preferred:?} ({})",
                        tagged.join(", ")
                    ),
                )
            }
        },
        None => (first, "the first audio stream".to_string()),
    };
    let (stream, language) = chosen;
    let codec = stream
        .codec_name
        .clone()
        .filter(|codec| !codec.is_empty() && codec != "none")
        .ok_or_else(|| {
            let tag = raw_stream(&raw, stream.index)
                .and_then(|raw| raw.get("codec_tag_string"))
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string();
            StepError::new(
                ErrorClass::UnsupportedCodec,
                format!(
                    "audio stream {} has a codec ffmpeg cannot decode (codec tag {tag})",
                    stream.index
                ),
            )
        })?;
    Ok(TrackChoice {
        stream_index: stream.index,
        codec,
        language: language.clone(),
        reason,
    })
}

/// Plans the output: a stream copy into the codec's container, the workflow's transcode target,
/// or, for a codec with no clean container, the workflow's fallback target.
pub fn plan_output(
    metadata: &MediaMetadata,
    track: &TrackChoice,
    params: &ExtractParams,
) -> OutputPlan {
    let codec = track.codec.as_str();
    if params.audio == AudioMode::Copy {
        if let Some(container) = copy_container(codec) {
            let mut codec_args = vec!["-c:a", "copy"];
            // ADTS-framed AAC (MPEG-TS, raw .aac) needs its headers turned into the MP4 form.
            if codec == "aac" && carries_adts(&metadata.format_name) {
                codec_args.extend(["-bsf:a", "aac_adtstoasc"]);
            }
            return OutputPlan {
                mode: "copy",
                codec: codec.to_string(),
                extension: container.extension,
                reason: format!("stream copy of {codec} into .{}", container.extension),
                container,
                target: None,
                sample_rate: None,
                channels: None,
                codec_args,
            };
        }
        let reason = format!(
            "{codec} has no clean container for a stream copy: transcoded to the fallback \
             target {}",
            params.fallback.name()
        );
        return transcode_plan(params.fallback, params, reason);
    }
    let target = params.transcode_target();
    let reason = format!("the workflow transcodes to {}", target.name());
    transcode_plan(target, params, reason)
}

fn transcode_plan(target: TranscodeTarget, params: &ExtractParams, reason: String) -> OutputPlan {
    // FLAC and WAV are 16-bit: lossless for the 16-bit sources and speech models they serve, and
    // half the size of ffmpeg's 24-bit default for float decoders.
    let (codec, format_args): (&str, &[&'static str]) = match target {
        TranscodeTarget::Flac => ("flac", &["-sample_fmt", "s16"]),
        TranscodeTarget::Wav => ("pcm_s16le", &["-rf64", "auto"]),
        TranscodeTarget::Opus => ("opus", &[]),
        TranscodeTarget::Mp3 => ("mp3", &[]),
    };
    let container = transcode_container(target);
    let mut codec_args = vec!["-c:a", encoder_of(target)];
    codec_args.extend_from_slice(format_args);
    codec_args.extend(["-flags:a", "+bitexact"]);
    OutputPlan {
        mode: target.name(),
        codec: codec.to_string(),
        extension: container.extension,
        reason,
        container,
        target: Some(target),
        sample_rate: params.sample_rate,
        channels: params.channels,
        codec_args,
    }
}

impl OutputPlan {
    /// The plan as the media helper takes it.
    pub(super) fn write_plan(&self) -> WritePlan {
        match self.target {
            None => WritePlan::Copy {
                muxer: self.container.muxer.to_string(),
            },
            Some(target) => WritePlan::Transcode {
                target,
                sample_rate: self.sample_rate,
                channels: self.channels,
            },
        }
    }
}

/// Whether a container carries AAC with ADTS headers.
fn carries_adts(format_name: &str) -> bool {
    format_name
        .split(',')
        .any(|name| name == "mpegts" || name == "aac")
}

/// The file extension for the original video, from the container ffprobe found.
pub fn video_extension(metadata: &MediaMetadata) -> &'static str {
    // The first row naming one of the container's names wins.
    const VIDEO: [(&[&str], &str); 8] = [
        (&["mp4", "mov"], "mp4"),
        (&["matroska", "webm"], "mkv"),
        (&["avi"], "avi"),
        (&["flv"], "flv"),
        (&["mpegts"], "ts"),
        (&["mpeg"], "mpg"),
        (&["asf"], "wmv"),
        (&["ogg"], "ogv"),
    ];
    // Audio-only containers keep their own name as the extension.
    const AUDIO: [&str; 10] = [
        "mp3", "aac", "ac3", "eac3", "wav", "w64", "aiff", "caf", "flac", "wv",
    ];
    let names: Vec<&str> = metadata.format_name.split(',').collect();
    let has = |name: &str| names.contains(&name);
    VIDEO
        .iter()
        .find(|(containers, _)| containers.iter().any(|name| has(name)))
        .map(|(_, extension)| *extension)
        .or_else(|| AUDIO.into_iter().find(|name| has(name)))
        .unwrap_or("bin")
}

/// The muxer a transcode target's output is written with (the container of its extension).
pub fn transcode_muxer(target: TranscodeTarget) -> &'static str {
    transcode_container(target).muxer
}

/// The container a transcode target is written in.
fn transcode_container(target: TranscodeTarget) -> Container {
    match target {
        TranscodeTarget::Flac => FLAC,
        TranscodeTarget::Wav => WAV,
        TranscodeTarget::Opus => OPUS,
        TranscodeTarget::Mp3 => MP3,
    }
}

/// The ffmpeg encoder a transcode target needs: the plan writes with it, and `doctor` checks that
/// ffmpeg has it.
pub fn encoder_of(target: TranscodeTarget) -> &'static str {
    match target {
        TranscodeTarget::Flac => "flac",
        TranscodeTarget::Wav => "pcm_s16le",
        TranscodeTarget::Opus => "libopus",
        TranscodeTarget::Mp3 => "libmp3lame",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::extract::fixtures::{metadata_of, mp4_probe, track};
    use crate::steps::extract::parse_probe;

    #[test]
    fn copy_containers_follow_the_codec() {
        for (codec, extension) in [
            ("aac", Some("m4a")),
            ("alac", Some("m4a")),
            ("mp3", Some("mp3")),
            ("opus", Some("opus")),
            ("vorbis", Some("ogg")),
            ("flac", Some("flac")),
            ("pcm_s16le", Some("wav")),
            ("pcm_s24le", Some("wav")),
            ("pcm_f32le", Some("wav")),
            ("ac3", None),
            ("pcm_s16be", None),
            ("pcm_s24be", None),
        ] {
            assert_eq!(copy_extension(codec), extension, "{codec}");
        }
    }

    // Guards the original video's extension: the first matching video container wins, an
    // audio-only container keeps its own name, and anything else is `bin`.
    #[test]
    fn the_video_extension_follows_the_container() {
        for (format_name, extension) in [
            ("mov,mp4,m4a,3gp,3g2,mj2", "mp4"),
            ("matroska,webm", "mkv"),
            ("avi", "avi"),
            ("flv", "flv"),
            ("mpegts", "ts"),
            ("mpeg", "mpg"),
            ("asf", "wmv"),
            ("ogg", "ogv"),
            ("mp3", "mp3"),
            ("aac", "aac"),
            ("eac3", "eac3"),
            ("wav", "wav"),
            ("flac", "flac"),
            ("wv", "wv"),
            ("wv,flac", "flac"),
            ("ogg,flac", "ogv"),
            ("mpeg,mpegts", "ts"),
            ("image2", "bin"),
        ] {
            let metadata = metadata_of(&format!(
                r#"{{"streams":[],"format":{{"format_name":"{format_name}"}}}}"#
            ));
            assert_eq!(video_extension(&metadata), extension, "{format_name}");
        }
    }

    #[test]
    fn a_codec_without_a_clean_container_falls_back_to_the_workflow_target() {
        let metadata = parse_probe(mp4_probe()).unwrap();
        let params = ExtractParams {
            fallback: TranscodeTarget::Wav,
            sample_rate: Some(16_000),
            ..ExtractParams::default()
        };
        let plan = plan_output(&metadata, &track("ac3"), &params);
        assert_eq!((plan.mode, plan.extension), ("wav", "wav"));
        assert_eq!(plan.codec, "pcm_s16le");
        assert_eq!(plan.sample_rate, Some(16_000));
        assert!(plan.reason.contains("fallback"), "{}", plan.reason);
        let copy = plan_output(&metadata, &track("aac"), &params);
        assert_eq!((copy.mode, copy.extension), ("copy", "m4a"));
        assert_eq!(copy.sample_rate, None, "a stream copy never resamples");
        assert!(!copy.codec_args.contains(&"aac_adtstoasc"));
    }

    #[test]
    fn adts_aac_gets_the_bitstream_filter() {
        let metadata = metadata_of(
            r#"{"streams":[{"index":0,"codec_type":"audio","codec_name":"aac"}],"format":{"format_name":"mpegts"}}"#,
        );
        let plan = plan_output(&metadata, &track("aac"), &ExtractParams::default());
        assert!(plan.codec_args.contains(&"aac_adtstoasc"), "{plan:?}");
    }

    #[test]
    fn transcode_targets_name_their_codec_and_container() {
        let metadata = parse_probe(mp4_probe()).unwrap();
        for (audio, codec, extension) in [
            (AudioMode::Flac, "flac", "flac"),
            (AudioMode::Wav, "pcm_s16le", "wav"),
            (AudioMode::Opus, "opus", "opus"),
            (AudioMode::Mp3, "mp3", "mp3"),
        ] {
            let params = ExtractParams {
                audio,
                ..ExtractParams::default()
            };
            let plan = plan_output(&metadata, &track("aac"), &params);
            assert_eq!((plan.codec.as_str(), plan.extension), (codec, extension));
        }
    }

    // Guards the transcode command: each target's encoder (the one `doctor` checks for), its
    // sample format or size options, and bit-exact output.
    #[test]
    fn transcodes_write_with_the_encoder_doctor_checks() {
        let metadata = parse_probe(mp4_probe()).unwrap();
        for (audio, codec_args) in [
            (
                AudioMode::Flac,
                &[
                    "-c:a",
                    "flac",
                    "-sample_fmt",
                    "s16",
                    "-flags:a",
                    "+bitexact",
                ][..],
            ),
            (
                AudioMode::Wav,
                &[
                    "-c:a",
                    "pcm_s16le",
                    "-rf64",
                    "auto",
                    "-flags:a",
                    "+bitexact",
                ][..],
            ),
            (
                AudioMode::Opus,
                &["-c:a", "libopus", "-flags:a", "+bitexact"][..],
            ),
            (
                AudioMode::Mp3,
                &["-c:a", "libmp3lame", "-flags:a", "+bitexact"][..],
            ),
        ] {
            let params = ExtractParams {
                audio,
                ..ExtractParams::default()
            };
            let plan = plan_output(&metadata, &track("aac"), &params);
            assert_eq!(plan.codec_args, codec_args, "{audio:?}");
            assert_eq!(
                plan.codec_args[1],
                encoder_of(params.transcode_target()),
                "{audio:?}"
            );
        }
    }

    fn two_tracks() -> MediaMetadata {
        metadata_of(
            r#"{"streams":[{"index":0,"codec_type":"video","codec_name":"h264"},{"index":1,"codec_type":"audio","codec_name":"aac","tags":{"language":"eng"}},{"index":2,"codec_type":"audio","codec_name":"mp3","tags":{"language":"fra"}}],"format":{"format_name":"matroska,webm"}}"#,
        )
    }

    #[test]
    fn the_first_audio_stream_is_chosen_unless_a_language_is_preferred() {
        let metadata = two_tracks();
        let first = choose_track(&metadata, &ExtractParams::default()).unwrap();
        assert_eq!((first.stream_index, first.codec.as_str()), (1, "aac"));
        let french = ExtractParams {
            preferred_language: Some("FRA".into()),
            ..ExtractParams::default()
        };
        let chosen = choose_track(&metadata, &french).unwrap();
        assert_eq!((chosen.stream_index, chosen.codec.as_str()), (2, "mp3"));
        assert_eq!(chosen.language.as_deref(), Some("fra"));
        let german = ExtractParams {
            preferred_language: Some("deu".into()),
            ..ExtractParams::default()
        };
        let fallback = choose_track(&metadata, &german).unwrap();
        assert_eq!(fallback.stream_index, 1);
        assert!(fallback.reason.contains("eng, fra"), "{}", fallback.reason);
    }

    #[test]
    fn no_audio_and_unknown_codecs_have_their_own_classes() {
        let video_only = metadata_of(
            r#"{"streams":[{"index":0,"codec_type":"video","codec_name":"h264"}],"format":{"format_name":"mov,mp4,m4a,3gp,3g2,mj2"}}"#,
        );
        let error = choose_track(&video_only, &ExtractParams::default()).unwrap_err();
        assert_eq!(error.class, ErrorClass::NoAudioStream);
        assert!(error.message.contains("video h264"), "{}", error.message);
        let unknown = metadata_of(
            r#"{"streams":[{"index":0,"codec_type":"audio","codec_tag_string":"90[0][0]"}],"format":{"format_name":"wav"}}"#,
        );
        let error = choose_track(&unknown, &ExtractParams::default()).unwrap_err();
        assert_eq!(error.class, ErrorClass::UnsupportedCodec);
        assert!(error.message.contains("90[0][0]"), "{}", error.message);
    }

    #[test]
    fn the_timeout_grows_with_the_duration_up_to_the_cap() {
        let params = ExtractParams {
            timeout_base_ms: 1_000,
            timeout_ms_per_media_s: 100,
            timeout_max_ms: 10_000,
            ..ExtractParams::default()
        };
        assert_eq!(
            extract_timeout(&params, Some(10.0)),
            Duration::from_millis(2_000)
        );
        assert_eq!(
            extract_timeout(&params, Some(1e12)),
            Duration::from_millis(10_000)
        );
        assert_eq!(
            extract_timeout(&params, None),
            Duration::from_millis(10_000)
        );
        assert_eq!(
            extract_timeout(&params, Some(f64::NAN)),
            Duration::from_millis(10_000)
        );
    }
}
