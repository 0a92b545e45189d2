//! The extract step: ffprobe gives the metadata record, ffmpeg writes one audio stream, and ffprobe
//! checks what ffmpeg wrote before anything counts as extracted.
//!
//! What ffmpeg and ffprobe may do:
//! - They run without a shell, with stdin closed (and `-nostdin`), each in a process group of its
//!   own, with a bounded thread count, under a timeout: a fixed one for probing, and for extraction
//!   one proportional to the media's duration with a hard cap. On a timeout or a cancellation the
//!   whole process group is killed and the child reaped, so no process outlives the step.
//! - They read nothing but the one scratch file they are given. Inputs are `file:` paths, so a
//!   file name with a colon is never taken for a protocol; `-protocol_whitelist file` refuses every
//!   network protocol; and `-format_whitelist` admits only the media containers in
//!   [`FORMAT_WHITELIST`]. The last one matters most: a text file named `clip.mp4` holding an HLS
//!   playlist is otherwise opened as `hls` and makes ffmpeg read whatever local files it lists,
//!   which the protocol whitelist does not stop. Playlist-like formats (hls, dash, concat, ...)
//!   are refused as `unsupported_source`.
//!
//! What counts as success: ffmpeg exits 0 on some broken inputs (it only logs "File ended
//! prematurely"), so failures are judged from what ffmpeg and ffprobe say, quoting the decisive
//! line, and from probing the output: it must hold one audio stream and nothing else, in the
//! expected codec and container, lasting as long as the source's audio stream within
//! max(0.2 s, 1 %). The audio is written as `tmp-audio.<ext>` and renamed to `audio.<ext>` only
//! after it passed and was synced, so a file at the final name is whole and checked; a failure
//! removes the temp file and leaves no audio behind.
//!
//! Progress: ffmpeg writes its `-progress` report (`key=value` blocks, about two a second) to
//! stdout, which is read as it comes ([`ProgressParser`], one bounded partial line at most) while
//! stderr is captured for judging as before. The bytes of audio written so far (`total_size`) go to
//! the step's [`ProgressSender`]; the total is unknown until the end, so it is never guessed.
//!
//! This module never touches the state store: the worker records what it returns.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use super::process::{RunError, run_process, run_process_streaming};
use super::{Cancel, ErrorClass, ProgressSender, StepError};
use crate::model::job::{MediaMetadata, StreamInfo};
use crate::workflow::{AudioMode, ExtractParams, TranscodeTarget};

/// The demuxers ffmpeg and ffprobe may use: the media containers narra accepts, and nothing that
/// reads other files or URLs (hls, dash, concat, image sequences, ...).
pub const FORMAT_WHITELIST: &str = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,flv,mpegts,mpeg,asf,\
                                    ogg,mp3,aac,ac3,eac3,wav,w64,aiff,caf,flac,wv";

/// The largest ffprobe JSON accepted; real probes are a few KiB.
const FFPROBE_OUTPUT_BYTES_MAX: usize = 4 * 1024 * 1024;

/// The longest quoted ffmpeg line in an error message.
const QUOTED_LINE_CHARS_MAX: usize = 300;

/// The longest line of ffmpeg's `-progress` report kept; its lines are under 40 bytes. A longer
/// line is dropped whole, so no output makes the reader buffer more than this.
pub const PROGRESS_LINE_BYTES_MAX: usize = 1024;

/// How far the extracted audio's duration may be from the source stream's: the larger of these.
const DURATION_TOLERANCE_MIN_S: f64 = 0.2;
const DURATION_TOLERANCE_RATIO: f64 = 0.01;

/// How long `ffmpeg -version` or `-encoders` may take (doctor).
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);

/// The most entries a metadata comparison lists.
const CHANGES_MAX: usize = 50;

/// Where ffmpeg and ffprobe are: `NARRA_FFMPEG` and `NARRA_FFPROBE` when set, else the names looked
/// up on PATH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    pub ffmpeg: PathBuf,
    pub ffprobe: PathBuf,
}

impl Default for Tools {
    fn default() -> Tools {
        Tools {
            ffmpeg: PathBuf::from("ffmpeg"),
            ffprobe: PathBuf::from("ffprobe"),
        }
    }
}

impl Tools {
    pub fn from_env() -> Tools {
        let configured = |name: &str, default: &str| {
            std::env::var_os(name)
                .filter(|value| !value.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(default))
        };
        Tools {
            ffmpeg: configured("NARRA_FFMPEG", "ffmpeg"),
            ffprobe: configured("NARRA_FFPROBE", "ffprobe"),
        }
    }
}

/// The audio stream chosen for extraction, and why it was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackChoice {
    /// The stream's index in the source (ffprobe's `index`).
    pub stream_index: u32,
    pub codec: String,
    pub language: Option<String>,
    pub reason: String,
}

/// A container the audio is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Container {
    extension: &'static str,
    /// ffmpeg's muxer for it.
    muxer: &'static str,
    /// ffprobe's `format_name` when it reads the file back.
    format_name: &'static str,
}

const M4A: Container = Container {
    extension: "m4a",
    muxer: "ipod",
    format_name: "mov,mp4,m4a,3gp,3g2,mj2",
};
const MP3: Container = Container {
    extension: "mp3",
    muxer: "mp3",
    format_name: "mp3",
};
const OPUS: Container = Container {
    extension: "opus",
    muxer: "opus",
    format_name: "ogg",
};
const OGG: Container = Container {
    extension: "ogg",
    muxer: "ogg",
    format_name: "ogg",
};
const FLAC: Container = Container {
    extension: "flac",
    muxer: "flac",
    format_name: "flac",
};
const WAV: Container = Container {
    extension: "wav",
    muxer: "wav",
    format_name: "wav",
};

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

/// How the chosen stream is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputPlan {
    /// `copy`, or the transcode target (`flac`, `wav`, `opus`, `mp3`).
    pub mode: &'static str,
    /// The codec the output must have when probed.
    pub codec: String,
    /// The output's extension, which is also its container.
    pub extension: &'static str,
    /// Why this plan: a copy into its matching container, the workflow's target, or the fallback.
    pub reason: String,
    container: Container,
    sample_rate: Option<u32>,
    channels: Option<u32>,
    codec_args: Vec<&'static str>,
}

/// A finished, validated extraction.
#[derive(Debug, Clone, PartialEq)]
pub struct Extracted {
    pub audio_path: PathBuf,
    /// The audio file's extension, which is also its container.
    pub audio_extension: String,
    pub track: TrackChoice,
    pub output: OutputPlan,
    /// The extracted audio's duration, as probed.
    pub duration_s: Option<f64>,
}

/// Probes `input` and extracts its audio into `scratch_dir`: the metadata record and the audio.
/// The bytes of audio written so far go to `progress` while ffmpeg runs.
pub async fn extract(
    tools: &Tools,
    input: &Path,
    params: &ExtractParams,
    scratch_dir: &Path,
    progress: &ProgressSender,
    cancel: &mut Cancel,
) -> Result<(MediaMetadata, Extracted), StepError> {
    let metadata = probe(tools, input, params, cancel).await?;
    let extracted = extract_audio(
        tools,
        input,
        &metadata,
        params,
        scratch_dir,
        progress,
        cancel,
    )
    .await?;
    Ok((metadata, extracted))
}

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
    let mut args: Vec<OsString> = ["-v", "warning", "-hide_banner"]
        .iter()
        .map(OsString::from)
        .collect();
    args.extend(input_args(input, params.threads));
    args.extend(
        ["-print_format", "json", "-show_format", "-show_streams"]
            .iter()
            .map(OsString::from),
    );
    let timeout = Duration::from_millis(params.probe_timeout_ms);
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
    let metadata = parse_probe(&finished.stdout)?;
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

/// Extracts the chosen audio stream of `input` into `scratch_dir`, and checks the result. The bytes
/// of audio written so far go to `progress` while ffmpeg runs.
pub async fn extract_audio(
    tools: &Tools,
    input: &Path,
    metadata: &MediaMetadata,
    params: &ExtractParams,
    scratch_dir: &Path,
    progress: &ProgressSender,
    cancel: &mut Cancel,
) -> Result<Extracted, StepError> {
    let track = choose_track(metadata, params)?;
    let plan = plan_output(metadata, &track, params);
    crate::private_files::create_dir_all_async(scratch_dir)
        .await
        .map_err(|error| StepError::scratch("create", scratch_dir, error))?;
    let temp_path = scratch_dir.join(format!("tmp-audio.{}", plan.extension));
    let audio_path = scratch_dir.join(format!("audio.{}", plan.extension));
    let written = write_checked(
        tools, input, metadata, params, &track, &plan, &temp_path, progress, cancel,
    )
    .await;
    let duration_s = match written {
        Ok(duration_s) => duration_s,
        Err(error) => {
            // A failed extraction leaves no audio behind, not even a partial temp file.
            let _ = tokio::fs::remove_file(&temp_path).await;
            return Err(error);
        }
    };
    // `write_checked` synced the audio; the rename makes it the step's output.
    crate::failpoint!("extract.scratch.before");
    tokio::fs::rename(&temp_path, &audio_path)
        .await
        .map_err(|error| StepError::scratch("rename", &temp_path, error))?;
    super::download::sync_dir(scratch_dir).await?;
    crate::failpoint!("extract.scratch.after");
    Ok(Extracted {
        audio_path,
        audio_extension: plan.extension.to_string(),
        track,
        output: plan,
        duration_s,
    })
}

/// Runs ffmpeg into `temp_path` and judges the result: its messages, then the probed output; the
/// output is fsynced meanwhile. Returns the output's duration.
#[allow(clippy::too_many_arguments)]
async fn write_checked(
    tools: &Tools,
    input: &Path,
    metadata: &MediaMetadata,
    params: &ExtractParams,
    track: &TrackChoice,
    plan: &OutputPlan,
    temp_path: &Path,
    progress: &ProgressSender,
    cancel: &mut Cancel,
) -> Result<Option<f64>, StepError> {
    let estimated_duration_s = source_audio_duration(metadata, track.stream_index);
    let timeout = extract_timeout(params, estimated_duration_s);
    // Only a duration the container declares can reveal a truncated input; an estimate is read
    // from the same bytes, truncation included, and can be off by more than the tolerance.
    let source_duration_s =
        estimated_duration_s.filter(|_| declares_durations(&metadata.format_name));
    let args = ffmpeg_args(input, track, plan, params.threads, temp_path);
    let mut parser = ProgressParser::default();
    let mut on_stdout = |chunk: &[u8]| {
        if let Some(bytes_written) = parser.feed(chunk).and_then(|block| block.total_size) {
            progress.send_if_modified(|progress| {
                let before = *progress;
                progress.bytes_done = bytes_written;
                progress.bytes_total = None;
                *progress != before
            });
        }
    };
    let finished = run_process_streaming(&tools.ffmpeg, &args, &mut on_stdout, timeout, cancel)
        .await
        .map_err(|error| run_failure(error, "ffmpeg", &tools.ffmpeg, timeout))?;
    let stream = format!("audio stream {} ({})", track.stream_index, track.codec);
    let diagnosis = diagnose(&finished.stderr, !finished.success);
    if let Some(diagnosis) = &diagnosis
        && (!finished.success || diagnosis.class != ErrorClass::CorruptMedia)
    {
        return Err(diagnosis.clone().into_error("ffmpeg", Some(&stream)));
    }
    if !finished.success {
        return Err(StepError::new(
            ErrorClass::ExtractFailed,
            format!(
                "ffmpeg failed to write {stream} as {}: {}",
                plan.extension,
                stderr_tail(&finished.stderr)
            ),
        ));
    }
    let ffmpeg_said = diagnosis
        .as_ref()
        .map(|diagnosis| format!("; ffmpeg said \"{}\"", diagnosis.line))
        .unwrap_or_default();
    // The audio's fsync runs while ffprobe reads it back: the disk and the probe's start-up
    // overlap. Both must succeed before the audio is renamed into place. A cancellation stops
    // ffprobe at once; the fsync, already started, is waited for (the file is then removed).
    let sync = async {
        let file = tokio::fs::File::open(temp_path)
            .await
            .map_err(|error| StepError::scratch("open", temp_path, error))?;
        file.sync_all()
            .await
            .map_err(|error| StepError::scratch("sync", temp_path, error))
    };
    let (output, synced) = tokio::join!(
        read_back(tools, temp_path, params, cancel, &stream, &ffmpeg_said),
        sync
    );
    let duration_s = validate_output(&output?, plan, source_duration_s, &stream, &ffmpeg_said)?;
    // ffmpeg exited 0 and the output looks whole, but ffmpeg saw damage: the input is not whole.
    // What the media says comes before a scratch error.
    if let Some(diagnosis) = diagnosis {
        return Err(diagnosis.into_error("ffmpeg", Some(&stream)));
    }
    synced?;
    Ok(duration_s)
}

/// Probes what ffmpeg wrote. An unreadable output means ffmpeg found nothing it could write.
async fn read_back(
    tools: &Tools,
    path: &Path,
    params: &ExtractParams,
    cancel: &mut Cancel,
    stream: &str,
    ffmpeg_said: &str,
) -> Result<MediaMetadata, StepError> {
    match probe(tools, path, params, cancel).await {
        Ok(output) => Ok(output),
        Err(error) if error.class == ErrorClass::CorruptMedia => Err(StepError::new(
            ErrorClass::CorruptMedia,
            format!(
                "ffmpeg wrote no readable audio from {stream} ({}){ffmpeg_said}",
                error.message
            ),
        )),
        Err(error) => Err(error),
    }
}

/// Checks the probed output against the plan and the source: one audio stream and nothing else,
/// the expected codec, container, sample rate and channels, and a duration matching the source's.
fn validate_output(
    output: &MediaMetadata,
    plan: &OutputPlan,
    source_duration_s: Option<f64>,
    stream: &str,
    ffmpeg_said: &str,
) -> Result<Option<f64>, StepError> {
    let failed = |message: String| StepError::new(ErrorClass::ExtractFailed, message);
    let [audio] = output.streams.as_slice() else {
        let kinds: Vec<&str> = output
            .streams
            .iter()
            .map(|stream| stream.codec_type.as_str())
            .collect();
        return Err(failed(format!(
            "the extracted file holds {} streams ({}), not one audio stream",
            kinds.len(),
            kinds.join(", ")
        )));
    };
    if audio.codec_type != "audio" {
        return Err(failed(format!(
            "the extracted file holds a {} stream, not audio",
            audio.codec_type
        )));
    }
    let codec = audio.codec_name.as_deref().unwrap_or("unknown");
    if codec != plan.codec {
        return Err(failed(format!(
            "the extracted audio is {codec}, expected {} ({})",
            plan.codec, plan.reason
        )));
    }
    if output.format_name != plan.container.format_name {
        return Err(failed(format!(
            "the extracted file is a {} file, expected {} for .{}",
            output.format_name, plan.container.format_name, plan.extension
        )));
    }
    if let Some(expected) = plan.sample_rate
        && audio.sample_rate != Some(expected)
    {
        return Err(failed(format!(
            "the extracted audio has sample rate {:?}, expected {expected}",
            audio.sample_rate
        )));
    }
    if let Some(expected) = plan.channels
        && audio.channels != Some(expected)
    {
        return Err(failed(format!(
            "the extracted audio has {:?} channels, expected {expected}",
            audio.channels
        )));
    }
    let output_duration_s = audio.duration_s.or(output.duration_s);
    if let (Some(source), Some(extracted)) = (source_duration_s, output_duration_s) {
        let tolerance = duration_tolerance_s(source);
        if (source - extracted).abs() > tolerance {
            return Err(StepError::new(
                ErrorClass::CorruptMedia,
                format!(
                    "the extracted audio lasts {extracted:.3} s but the source's {stream} lasts \
                     {source:.3} s (tolerance {tolerance:.3} s): the input is truncated or \
                     damaged{ffmpeg_said}"
                ),
            ));
        }
    }
    Ok(output_duration_s)
}

/// The largest difference between the source's and the output's duration that still counts as
/// equal: container and codec framing shift durations by a few packets.
pub fn duration_tolerance_s(source_duration_s: f64) -> f64 {
    (source_duration_s * DURATION_TOLERANCE_RATIO).max(DURATION_TOLERANCE_MIN_S)
}

/// Whether a container declares its streams' durations (in a header, an index or tags) rather than
/// leaving ffprobe to estimate them from timestamps or the bit rate (MPEG-TS/PS, Ogg, raw ADTS,
/// MP3 and AC-3 streams).
fn declares_durations(format_name: &str) -> bool {
    const DECLARING: [&str; 13] = [
        "mov", "mp4", "matroska", "webm", "avi", "flv", "asf", "wav", "w64", "aiff", "caf", "flac",
        "wv",
    ];
    format_name.split(',').any(|name| DECLARING.contains(&name))
}

/// The duration of source stream `index`: its own, else the format's.
fn source_audio_duration(metadata: &MediaMetadata, index: u32) -> Option<f64> {
    metadata
        .streams
        .iter()
        .find(|stream| stream.index == index)
        .and_then(|stream| stream.duration_s)
        .or(metadata.duration_s)
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
    let (codec, container, codec_args): (&str, Container, Vec<&'static str>) = match target {
        TranscodeTarget::Flac => ("flac", FLAC, vec!["-c:a", "flac", "-sample_fmt", "s16"]),
        TranscodeTarget::Wav => ("pcm_s16le", WAV, vec!["-c:a", "pcm_s16le", "-rf64", "auto"]),
        TranscodeTarget::Opus => ("opus", OPUS, vec!["-c:a", "libopus"]),
        TranscodeTarget::Mp3 => ("mp3", MP3, vec!["-c:a", "libmp3lame"]),
    };
    let mut codec_args = codec_args;
    codec_args.extend(["-flags:a", "+bitexact"]);
    OutputPlan {
        mode: target.name(),
        codec: codec.to_string(),
        extension: container.extension,
        reason,
        container,
        sample_rate: params.sample_rate,
        channels: params.channels,
        codec_args,
    }
}

/// Whether a container carries AAC with ADTS headers.
fn carries_adts(format_name: &str) -> bool {
    format_name
        .split(',')
        .any(|name| name == "mpegts" || name == "aac")
}

/// The input half of every ffmpeg and ffprobe command: threads, the whitelists, the `file:` input.
fn input_args(input: &Path, threads: u32) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "-threads".into(),
        threads.to_string().into(),
        "-protocol_whitelist".into(),
        "file".into(),
        "-format_whitelist".into(),
        FORMAT_WHITELIST.into(),
        "-i".into(),
    ];
    args.push(file_url(input));
    args
}

fn ffmpeg_args(
    input: &Path,
    track: &TrackChoice,
    plan: &OutputPlan,
    threads: u32,
    output: &Path,
) -> Vec<OsString> {
    // `-progress pipe:1`: the progress report on stdout, read as it comes; stderr keeps only the
    // messages that are judged. It is opened while the options are parsed, before any input.
    let mut args: Vec<OsString> = ["-nostdin", "-hide_banner", "-nostats"]
        .iter()
        .chain(&["-progress", "pipe:1", "-loglevel", "warning", "-y"])
        .map(OsString::from)
        .collect();
    args.extend(input_args(input, threads));
    args.push("-map".into());
    args.push(format!("0:{}", track.stream_index).into());
    args.extend(
        [
            "-vn",
            "-sn",
            "-dn",
            "-map_metadata",
            "-1",
            "-map_chapters",
            "-1",
        ]
        .iter()
        .map(OsString::from),
    );
    args.extend(plan.codec_args.iter().map(OsString::from));
    if let Some(sample_rate) = plan.sample_rate {
        args.push("-ar".into());
        args.push(sample_rate.to_string().into());
    }
    if let Some(channels) = plan.channels {
        args.push("-ac".into());
        args.push(channels.to_string().into());
    }
    args.push("-threads".into());
    args.push(threads.to_string().into());
    args.push("-filter_threads".into());
    args.push(threads.to_string().into());
    // No encoder version strings or timestamps: the same input gives the same bytes.
    args.extend(["-fflags", "+bitexact", "-f"].iter().map(OsString::from));
    args.push(plan.container.muxer.into());
    args.push(file_url(output));
    args
}

/// What one block of ffmpeg's `-progress` report says, as far as narra reads it. A value a block
/// does not give (or gives as `N/A`) keeps the last one known.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FfmpegProgress {
    /// Bytes of output written so far (`total_size`).
    pub total_size: Option<u64>,
    /// Media time written so far, in microseconds (`out_time_us`; else `out_time_ms`, which ffmpeg
    /// also prints in microseconds).
    pub out_time_us: Option<u64>,
    /// The block ended with `progress=end`: ffmpeg is done.
    pub end: bool,
}

/// Reads ffmpeg's `-progress` report from chunks as they arrive, however they split it: `key=value`
/// lines in blocks, each ended by `progress=continue` or `progress=end`. A block counts only once
/// its `progress=` line arrived, so a half-read block never reports. Unknown keys, lines without
/// `=` and values that are not numbers are ignored. At most one partial line of
/// [`PROGRESS_LINE_BYTES_MAX`] bytes is kept: a longer line is dropped whole, never cut and read.
#[derive(Debug, Default)]
pub struct ProgressParser {
    /// The current line so far.
    line: Vec<u8>,
    /// The current line passed the limit: its bytes are dropped until its end.
    overlong: bool,
    /// An `out_time_us` line was read: `out_time_ms` is then ignored.
    reads_out_time_us: bool,
    /// The values known so far, from this block and those before it.
    known: FfmpegProgress,
}

impl ProgressParser {
    /// Reads a chunk: the last block it completed, if any.
    pub fn feed(&mut self, chunk: &[u8]) -> Option<FfmpegProgress> {
        let mut completed = None;
        let mut rest = chunk;
        while let Some(at) = rest.iter().position(|byte| *byte == b'\n') {
            self.extend_line(&rest[..at]);
            if let Some(block) = self.end_line() {
                completed = Some(block);
            }
            rest = &rest[at + 1..];
        }
        self.extend_line(rest);
        completed
    }

    fn extend_line(&mut self, bytes: &[u8]) {
        if self.overlong {
            return;
        }
        if self.line.len() + bytes.len() > PROGRESS_LINE_BYTES_MAX {
            self.overlong = true;
            self.line = Vec::new();
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    /// Reads the line just ended: the block, when the line ends one.
    fn end_line(&mut self) -> Option<FfmpegProgress> {
        let line = std::mem::take(&mut self.line);
        if std::mem::take(&mut self.overlong) {
            return None;
        }
        let line = std::str::from_utf8(&line).ok()?;
        let (key, value) = line.split_once('=')?;
        let value = value.trim();
        let number = || value.parse::<u64>().ok();
        match key.trim() {
            "total_size" => self.known.total_size = number().or(self.known.total_size),
            "out_time_us" => {
                self.reads_out_time_us = true;
                self.known.out_time_us = number().or(self.known.out_time_us);
            }
            // ffmpeg before 4.1 prints only this one, in microseconds despite its name.
            "out_time_ms" if !self.reads_out_time_us => {
                self.known.out_time_us = number().or(self.known.out_time_us);
            }
            "progress" if value == "continue" || value == "end" => {
                self.known.end = value == "end";
                return Some(self.known);
            }
            _ => {}
        }
        None
    }
}

/// A local path as a `file:` URL, so a file named like a protocol (`http:x`) is still a file.
fn file_url(path: &Path) -> OsString {
    let mut url = OsString::from("file:");
    url.push(path.as_os_str());
    url
}

/// What ffmpeg's or ffprobe's messages say about the input: a class and the line that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Diagnosis {
    class: ErrorClass,
    what: String,
    line: String,
}

impl Diagnosis {
    fn into_error(self, program: &str, stream: Option<&str>) -> StepError {
        let context = stream
            .map(|stream| format!(" ({stream})"))
            .unwrap_or_default();
        StepError::new(
            self.class,
            format!("{}{context}: {program} said \"{}\"", self.what, self.line),
        )
    }
}

/// Message fragments, strongest first, with the class they decide and what they mean.
/// `on_failure_only` patterns also show up in successful runs for streams narra does not extract.
const PATTERNS: &[(&str, ErrorClass, &str, bool)] = &[
    // ffmpeg may still exit 0 after it (a failed trailer): whatever it wrote is cut short. The
    // media is not at fault, so the class is the one a download that fills the disk gets.
    (
        "No space left on device",
        ErrorClass::ScratchError,
        "the scratch file system is full: free space and retry the job",
        false,
    ),
    (
        "not on whitelist",
        ErrorClass::UnsupportedSource,
        "its format is not one narra opens",
        false,
    ),
    (
        "moov atom not found",
        ErrorClass::CorruptMedia,
        "the MP4/MOV file has no moov atom (it is cut short or not finished)",
        false,
    ),
    (
        "File ended prematurely",
        ErrorClass::CorruptMedia,
        "the media is truncated",
        false,
    ),
    (
        "partial file",
        ErrorClass::CorruptMedia,
        "the media is truncated",
        false,
    ),
    (
        "Invalid data found when processing input",
        ErrorClass::CorruptMedia,
        "the media holds invalid data",
        false,
    ),
    (
        "Error while decoding stream",
        ErrorClass::CorruptMedia,
        "the audio holds data that cannot be decoded",
        false,
    ),
    (
        "not found for input stream",
        ErrorClass::UnsupportedCodec,
        "ffmpeg has no decoder for the audio codec",
        true,
    ),
    (
        "Unsupported codec",
        ErrorClass::UnsupportedCodec,
        "ffmpeg does not support the audio codec",
        true,
    ),
    (
        "not currently supported in container",
        ErrorClass::UnsupportedCodec,
        "the audio codec cannot be written to its container",
        true,
    ),
    (
        "End of file",
        ErrorClass::CorruptMedia,
        "the media ends before its streams do",
        true,
    ),
];

/// The decisive line of a tool's stderr, if any pattern matches. `failed`: the tool exited
/// non-zero, so patterns that are harmless in a successful run count too.
fn diagnose(stderr: &str, failed: bool) -> Option<Diagnosis> {
    for (pattern, class, what, on_failure_only) in PATTERNS {
        if *on_failure_only && !failed {
            continue;
        }
        if let Some(line) = stderr.lines().find(|line| line.contains(pattern)) {
            let line = quoted_line(line);
            let what = match (class, demuxer_of(&line)) {
                (ErrorClass::UnsupportedSource, Some(demuxer)) => format!(
                    "the file is in the {demuxer} format, which narra does not open (playlists \
                     and scripts such as hls or concat would make ffmpeg read other files or URLs)"
                ),
                (ErrorClass::UnsupportedSource, None) => format!(
                    "{what} (playlists and scripts such as hls or concat would make ffmpeg read \
                     other files or URLs)"
                ),
                _ => what.to_string(),
            };
            return Some(Diagnosis {
                class: *class,
                what,
                line,
            });
        }
    }
    None
}

/// `hls` out of ffmpeg's `[hls @ 0x5633…] message` prefix.
fn demuxer_of(line: &str) -> Option<&str> {
    let rest = line.strip_prefix('[')?;
    let name = rest.split(']').next()?.trim();
    (!name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_,".contains(c)))
    .then_some(name)
}

/// A line as quoted in an error: object addresses dropped (`[hls @ 0x5633…]` -> `[hls]`), cut to a
/// bounded length.
fn quoted_line(line: &str) -> String {
    let mut text = line.trim().to_string();
    while let Some(at) = text.find(" @ 0x") {
        let end = text[at + 5..]
            .find(|c: char| !c.is_ascii_hexdigit())
            .map(|offset| at + 5 + offset)
            .unwrap_or(text.len());
        text.replace_range(at..end, "");
    }
    if text.chars().count() > QUOTED_LINE_CHARS_MAX {
        text = text.chars().take(QUOTED_LINE_CHARS_MAX).collect::<String>() + "…";
    }
    text
}

/// The last few non-empty lines of a tool's stderr, for a failure no pattern explains.
fn stderr_tail(stderr: &str) -> String {
    let lines: Vec<String> = stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(quoted_line)
        .collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    if tail.is_empty() {
        "(no message)".to_string()
    } else {
        tail
    }
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

fn text(value: &Value, key: &str) -> Option<String> {
    value.get(key).and_then(Value::as_str).map(str::to_string)
}

/// A number ffprobe prints as a JSON number or a decimal string; `N/A` and the like are `None`.
fn number(value: &Value, key: &str) -> Option<f64> {
    value
        .get(key)
        .and_then(|field| match field {
            Value::String(text) => text.parse::<f64>().ok(),
            Value::Number(number) => number.as_f64(),
            _ => None,
        })
        .filter(|number| number.is_finite())
}

fn integer(value: &Value, key: &str) -> Option<u64> {
    number(value, key)
        .filter(|number| *number >= 0.0 && *number <= u64::MAX as f64)
        // In range and finite: the conversion only drops a fraction ffprobe does not print.
        .map(|number| number as u64)
}

fn small(value: &Value, key: &str) -> Option<u32> {
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
fn raw_json(metadata: &MediaMetadata) -> Value {
    serde_json::from_str(&metadata.raw).unwrap_or_else(|_| Value::String(metadata.raw.clone()))
}

fn raw_stream(raw: &Value, index: u32) -> Option<&Value> {
    raw.get("streams")?
        .as_array()?
        .iter()
        .find(|stream| small(stream, "index") == Some(index))
}

/// A stream's language tag (`eng`, ...), as the container tags it.
fn language(raw_stream: Option<&Value>) -> Option<String> {
    let tags = raw_stream?.get("tags")?.as_object()?;
    tags.iter()
        .find(|(key, _)| key.eq_ignore_ascii_case("language"))
        .and_then(|(_, value)| value.as_str())
        .map(str::to_string)
}

/// A video stream's frame rate from ffprobe's `avg_frame_rate` (else `r_frame_rate`), as
/// frames per second. `0/0` means none.
fn frame_rate(raw_stream: &Value) -> Option<f64> {
    ["avg_frame_rate", "r_frame_rate"].iter().find_map(|key| {
        let (numerator, denominator) = raw_stream.get(*key)?.as_str()?.split_once('/')?;
        let numerator: f64 = numerator.parse().ok()?;
        let denominator: f64 = denominator.parse().ok()?;
        (numerator > 0.0 && denominator > 0.0).then(|| numerator / denominator)
    })
}

/// The metadata record as people and programs see it (`show --json`, the stored metadata object):
/// the typed record, the fields derived from `raw` (format long name, start times, profile,
/// frame rate, channel layout, language, bit rates), and `raw` itself.
pub fn metadata_json(metadata: &MediaMetadata) -> Value {
    let raw = raw_json(metadata);
    let format = raw.get("format").cloned().unwrap_or(Value::Null);
    json!({
        "format_name": metadata.format_name,
        "format_long_name": text(&format, "format_long_name"),
        "duration_s": metadata.duration_s,
        "size": metadata.size,
        "bit_rate": metadata.bit_rate,
        "start_time_s": number(&format, "start_time"),
        "streams": metadata.streams.iter().map(|stream| {
            let raw_stream = raw_stream(&raw, stream.index).cloned().unwrap_or(Value::Null);
            let is_video = stream.codec_type == "video";
            json!({
                "index": stream.index,
                "codec_type": stream.codec_type,
                "codec_name": stream.codec_name,
                "profile": text(&raw_stream, "profile"),
                "width": stream.width,
                "height": stream.height,
                "frame_rate": if is_video { frame_rate(&raw_stream) } else { None },
                "sample_rate": stream.sample_rate,
                "channels": stream.channels,
                "channel_layout": text(&raw_stream, "channel_layout"),
                "language": language(Some(&raw_stream)),
                "duration_s": stream.duration_s,
                "start_time_s": number(&raw_stream, "start_time"),
                "bit_rate": integer(&raw_stream, "bit_rate"),
            })
        }).collect::<Vec<_>>(),
        "raw": raw,
    })
}

/// The metadata record as its checkpoint hashes it: the stored fields and `raw`, nothing derived.
/// Its shape never changes with what `metadata_json` shows, so records stay verifiable.
pub fn record_json(metadata: &MediaMetadata) -> Value {
    json!({
        "format_name": metadata.format_name,
        "duration_s": metadata.duration_s,
        "size": metadata.size,
        "bit_rate": metadata.bit_rate,
        "streams": metadata.streams.iter().map(|stream| json!({
            "index": stream.index,
            "codec_type": stream.codec_type,
            "codec_name": stream.codec_name,
            "width": stream.width,
            "height": stream.height,
            "sample_rate": stream.sample_rate,
            "channels": stream.channels,
            "duration_s": stream.duration_s,
        })).collect::<Vec<_>>(),
        "raw": raw_json(metadata),
    })
}

/// What differs between two metadata records, one line per field (`streams[1].codec_name: "mp3" ->
/// "aac"`), then one line if ffprobe's JSON differs in anything else. At most [`CHANGES_MAX`] lines.
pub fn metadata_changes(before: &MediaMetadata, after: &MediaMetadata) -> Vec<String> {
    let flatten = |metadata: &MediaMetadata| {
        let mut view = metadata_json(metadata);
        let raw = view
            .as_object_mut()
            .and_then(|object| object.remove("raw"))
            .unwrap_or(Value::Null);
        let mut fields = BTreeMap::new();
        flatten_into(&view, String::new(), &mut fields);
        (fields, without_file_name(raw))
    };
    let (before_fields, before_raw) = flatten(before);
    let (after_fields, after_raw) = flatten(after);
    let mut changes = Vec::new();
    let keys: std::collections::BTreeSet<&String> =
        before_fields.keys().chain(after_fields.keys()).collect();
    for key in keys {
        let old = before_fields.get(key).unwrap_or(&Value::Null);
        let new = after_fields.get(key).unwrap_or(&Value::Null);
        if old != new {
            changes.push(format!("{key}: {old} -> {new}"));
        }
    }
    if before_raw != after_raw {
        changes.push("raw: ffprobe's JSON differs".to_string());
    }
    if changes.len() > CHANGES_MAX {
        let more = changes.len() - (CHANGES_MAX - 1);
        changes.truncate(CHANGES_MAX - 1);
        changes.push(format!("... and {more} more"));
    }
    changes
}

/// A record written before file names were dropped from `raw` must not differ by its file name.
fn without_file_name(mut raw: Value) -> Value {
    if let Some(format) = raw.get_mut("format").and_then(Value::as_object_mut) {
        format.remove("filename");
    }
    raw
}

fn flatten_into(value: &Value, path: String, fields: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(object) => {
            for (key, child) in object {
                let path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                flatten_into(child, path, fields);
            }
        }
        Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                flatten_into(child, format!("{path}[{index}]"), fields);
            }
        }
        leaf => {
            fields.insert(path, leaf.clone());
        }
    }
}

/// The file extension for the original video, from the container ffprobe found.
pub fn video_extension(metadata: &MediaMetadata) -> &'static str {
    let names: Vec<&str> = metadata.format_name.split(',').collect();
    let has = |name: &str| names.contains(&name);
    if has("mp4") || has("mov") {
        "mp4"
    } else if has("matroska") || has("webm") {
        "mkv"
    } else if has("avi") {
        "avi"
    } else if has("flv") {
        "flv"
    } else if has("mpegts") {
        "ts"
    } else if has("mpeg") {
        "mpg"
    } else if has("asf") {
        "wmv"
    } else if has("ogg") {
        "ogv"
    } else if let Some(audio) = [
        "mp3", "aac", "ac3", "eac3", "wav", "w64", "aiff", "caf", "flac",
    ]
    .into_iter()
    .find(|name| has(name))
    {
        audio
    } else if has("wv") {
        "wv"
    } else {
        "bin"
    }
}

/// The first line of `PROGRAM -version` (`ffmpeg version 5.1.6-0+deb12u1 ...`), or why it failed.
pub async fn tool_version(program: &Path) -> Result<String, String> {
    let output = tool_output(program, &["-version"]).await?;
    // `ffmpeg version 5.1.6-0+deb12u1 Copyright (c) ...`: the copyright says nothing useful.
    output
        .lines()
        .next()
        .map(|line| line.split(" Copyright").next().unwrap_or(line).to_string())
        .ok_or_else(|| format!("{} -version printed nothing", program.display()))
}

/// The encoders ffmpeg lists (`ffmpeg -encoders`), by name.
pub async fn encoders(ffmpeg: &Path) -> Result<Vec<String>, String> {
    let output = tool_output(ffmpeg, &["-hide_banner", "-encoders"]).await?;
    // Lines look like ` A....D libopus   libopus Opus`; the legend above them has `=` in field 2.
    Ok(output
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let flags = fields.next()?;
            let name = fields.next()?;
            (flags.len() == 6 && name != "=").then(|| name.to_string())
        })
        .collect())
}

/// The ffmpeg encoder a transcode target needs.
pub fn encoder_of(target: TranscodeTarget) -> &'static str {
    match target {
        TranscodeTarget::Flac => "flac",
        TranscodeTarget::Wav => "pcm_s16le",
        TranscodeTarget::Opus => "libopus",
        TranscodeTarget::Mp3 => "libmp3lame",
    }
}

/// What a short-lived informational run of a tool printed on stdout, or why it failed.
async fn tool_output(program: &Path, args: &[&str]) -> Result<String, String> {
    let (_never_cancelled, mut cancel) = tokio::sync::watch::channel(false);
    let command = format!("{} {}", program.display(), args.join(" "));
    let args: Vec<OsString> = args.iter().map(OsString::from).collect();
    match run_process(program, &args, 1024 * 1024, VERSION_TIMEOUT, &mut cancel).await {
        Ok(finished) if finished.success => Ok(String::from_utf8_lossy(&finished.stdout).into()),
        Ok(finished) => Err(format!(
            "{command} failed: {}",
            stderr_tail(&finished.stderr)
        )),
        Err(RunError::Spawn(error)) => Err(format!("cannot run {}: {error}", program.display())),
        Err(RunError::TimedOut) => Err(format!(
            "{command} did not answer within {} s",
            VERSION_TIMEOUT.as_secs()
        )),
        Err(RunError::Cancelled) | Err(RunError::Wait(_)) => {
            Err(format!("{command} did not finish"))
        }
    }
}

/// A tool's failure to run to its end, as a step error.
fn run_failure(error: RunError, name: &str, program: &Path, timeout: Duration) -> StepError {
    match error {
        RunError::Spawn(error) => StepError::new(
            ErrorClass::Internal,
            format!(
                "cannot run {name} ({}): {error} (install ffmpeg, or set NARRA_FFMPEG and \
                 NARRA_FFPROBE)",
                program.display()
            ),
        ),
        RunError::TimedOut => StepError::new(
            ErrorClass::ExtractTimeout,
            format!(
                "{name} did not finish within {:.1} s and was killed with its process group",
                timeout.as_secs_f64()
            ),
        ),
        RunError::Cancelled => StepError::new(
            ErrorClass::Cancelled,
            format!("cancelled while {name} was running; it was killed"),
        ),
        RunError::Wait(error) => {
            StepError::new(ErrorClass::Internal, format!("{name} did not run: {error}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mp4_probe() -> &'static [u8] {
        br#"{"streams":[{"index":0,"codec_type":"video","codec_name":"h264","profile":"High","width":320,"height":240,"avg_frame_rate":"30000/1001","duration":"2.000000","start_time":"0.000000"},{"index":1,"codec_type":"audio","codec_name":"aac","profile":"LC","sample_rate":"44100","channels":2,"channel_layout":"stereo","duration":"2.020000","bit_rate":"64000","tags":{"language":"eng"}}],"format":{"filename":"file:/home/narra/scratch/01J/original","format_name":"mov,mp4,m4a,3gp,3g2,mj2","format_long_name":"QuickTime / MOV","start_time":"0.000000","duration":"2.020000","size":"12345","bit_rate":"48890"}}"#
    }

    fn metadata_of(json: &str) -> MediaMetadata {
        parse_probe(json.as_bytes()).unwrap()
    }

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
    fn the_shown_record_derives_profile_frame_rate_layout_language_and_start_time() {
        let view = metadata_json(&parse_probe(mp4_probe()).unwrap());
        assert_eq!(view["format_long_name"], "QuickTime / MOV");
        assert_eq!(view["start_time_s"], 0.0);
        let video = &view["streams"][0];
        assert_eq!(video["profile"], "High");
        let frame_rate = video["frame_rate"].as_f64().unwrap();
        assert!((frame_rate - 29.97).abs() < 0.01, "{frame_rate}");
        let audio = &view["streams"][1];
        assert_eq!(audio["channel_layout"], "stereo");
        assert_eq!(audio["language"], "eng");
        assert_eq!(audio["bit_rate"], 64000);
        assert_eq!(audio["frame_rate"], Value::Null);
        assert_eq!(view["raw"]["streams"][1]["codec_name"], "aac");
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
    fn the_record_hash_shape_ignores_derived_fields() {
        let metadata = parse_probe(mp4_probe()).unwrap();
        let record = record_json(&metadata);
        assert!(record["streams"][1].get("language").is_none());
        assert_eq!(
            record.as_object().unwrap().keys().collect::<Vec<_>>(),
            [
                "bit_rate",
                "duration_s",
                "format_name",
                "raw",
                "size",
                "streams"
            ]
        );
    }

    #[test]
    fn probe_output_without_a_format_is_corrupt_media() {
        let error = parse_probe(br#"{"streams":[]}"#).unwrap_err();
        assert_eq!(error.class, ErrorClass::CorruptMedia);
        let error = parse_probe(br#"{"format":{}}"#).unwrap_err();
        assert_eq!(error.class, ErrorClass::CorruptMedia);
    }

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

    fn track(codec: &str) -> TrackChoice {
        TrackChoice {
            stream_index: 1,
            codec: codec.into(),
            language: None,
            reason: "test".into(),
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
    fn decisive_lines_classify_failures_and_quote_ffmpeg() {
        let cases = [
            (
                "[hls @ 0x561d29a172c0] Format not on whitelist 'mov,mp4'\nfile:x: Invalid argument",
                true,
                Some(ErrorClass::UnsupportedSource),
                "[hls] Format not on whitelist",
            ),
            (
                "[mov,mp4,m4a,3gp,3g2,mj2 @ 0x55af] moov atom not found\nfile:x: Invalid data found when processing input",
                true,
                Some(ErrorClass::CorruptMedia),
                "moov atom not found",
            ),
            (
                "file:x: Invalid data found when processing input",
                true,
                Some(ErrorClass::CorruptMedia),
                "Invalid data found",
            ),
            (
                "[matroska,webm @ 0x56] File ended prematurely",
                false,
                Some(ErrorClass::CorruptMedia),
                "File ended prematurely",
            ),
            (
                "Decoder (codec none) not found for input stream #0:0",
                true,
                Some(ErrorClass::UnsupportedCodec),
                "Decoder (codec none)",
            ),
            // An unknown data stream narra does not extract is harmless in a successful run.
            (
                "[mov @ 0x1] Could not find codec parameters for stream 2 (Data: none): unknown codec\nUnsupported codec with id 0 for input stream 2",
                false,
                None,
                "",
            ),
            ("[libopus @ 0x1] No bit rate set.", true, None, ""),
            // ffmpeg 5.1 exits 0 after a trailer it could not write.
            (
                "Error writing trailer of file:x/tmp-audio.flac: No space left on device\nError closing file file:x/tmp-audio.flac: No space left on device",
                false,
                Some(ErrorClass::ScratchError),
                "Error writing trailer",
            ),
        ];
        for (stderr, failed, class, quoted) in cases {
            let diagnosis = diagnose(stderr, failed);
            assert_eq!(diagnosis.as_ref().map(|d| d.class), class, "{stderr}");
            if let Some(diagnosis) = diagnosis {
                assert!(diagnosis.line.contains(quoted), "{diagnosis:?}");
                assert!(!diagnosis.line.contains("0x5"), "{diagnosis:?}");
                let message = diagnosis.into_error("ffprobe", None).message;
                assert!(message.contains(quoted), "{message}");
            }
        }
        let hls = diagnose("[hls @ 0x5] Format not on whitelist 'x'", true).unwrap();
        assert!(hls.what.contains("the hls format"), "{}", hls.what);
    }

    #[test]
    fn only_declared_durations_are_held_against_the_output() {
        assert!(declares_durations("mov,mp4,m4a,3gp,3g2,mj2"));
        assert!(declares_durations("matroska,webm"));
        assert!(declares_durations("avi"));
        assert!(!declares_durations("mpegts"));
        assert!(!declares_durations("ogg"));
        assert!(!declares_durations("mp3"));
    }

    #[test]
    fn durations_match_within_the_larger_of_a_fifth_of_a_second_and_one_percent() {
        assert_eq!(duration_tolerance_s(2.0), 0.2);
        assert!((duration_tolerance_s(600.0) - 6.0).abs() < 1e-9);
    }

    fn output(json: &str) -> MediaMetadata {
        metadata_of(json)
    }

    #[test]
    fn validation_refuses_a_short_output_and_extra_streams() {
        let metadata = parse_probe(mp4_probe()).unwrap();
        let plan = plan_output(&metadata, &track("aac"), &ExtractParams::default());
        let good = output(
            r#"{"streams":[{"index":0,"codec_type":"audio","codec_name":"aac","duration":"2.0"}],"format":{"format_name":"mov,mp4,m4a,3gp,3g2,mj2","duration":"2.0"}}"#,
        );
        assert_eq!(
            validate_output(&good, &plan, Some(2.02), "s", "").unwrap(),
            Some(2.0)
        );
        let short = output(
            r#"{"streams":[{"index":0,"codec_type":"audio","codec_name":"aac","duration":"0.8"}],"format":{"format_name":"mov,mp4,m4a,3gp,3g2,mj2"}}"#,
        );
        let error = validate_output(&short, &plan, Some(2.02), "s", "").unwrap_err();
        assert_eq!(error.class, ErrorClass::CorruptMedia);
        assert!(error.message.contains("lasts 0.800 s"), "{}", error.message);
        let two = output(
            r#"{"streams":[{"index":0,"codec_type":"audio","codec_name":"aac"},{"index":1,"codec_type":"video","codec_name":"png"}],"format":{"format_name":"mov,mp4,m4a,3gp,3g2,mj2"}}"#,
        );
        assert_eq!(
            validate_output(&two, &plan, Some(2.02), "s", "")
                .unwrap_err()
                .class,
            ErrorClass::ExtractFailed
        );
        let reencoded = output(
            r#"{"streams":[{"index":0,"codec_type":"audio","codec_name":"mp3","duration":"2.0"}],"format":{"format_name":"mp3"}}"#,
        );
        let error = validate_output(&reencoded, &plan, Some(2.02), "s", "").unwrap_err();
        assert!(error.message.contains("expected aac"), "{}", error.message);
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

    #[test]
    fn inputs_are_file_urls_behind_both_whitelists() {
        let args = input_args(Path::new("/scratch/http:evil"), 2);
        let args: Vec<&str> = args.iter().map(|arg| arg.to_str().unwrap()).collect();
        assert_eq!(args.last(), Some(&"file:/scratch/http:evil"));
        assert!(
            args.windows(2)
                .any(|pair| pair == ["-protocol_whitelist", "file"])
        );
        assert!(
            args.windows(2)
                .any(|pair| pair == ["-format_whitelist", FORMAT_WHITELIST])
        );
        for refused in ["hls", "concat", "dash", "image2"] {
            assert!(
                !FORMAT_WHITELIST.split(',').any(|name| name == refused),
                "{refused}"
            );
        }
    }

    // Guards the progress report's place in the hardened command line: on stdout, with the stats
    // line off, and the input still a `file:` URL behind both whitelists.
    #[test]
    fn ffmpeg_reports_progress_on_stdout_and_keeps_its_hardening() {
        let metadata = parse_probe(mp4_probe()).unwrap();
        let plan = plan_output(&metadata, &track("aac"), &ExtractParams::default());
        let args = ffmpeg_args(
            Path::new("/scratch/original"),
            &track("aac"),
            &plan,
            2,
            Path::new("/scratch/tmp-audio.m4a"),
        );
        let args: Vec<&str> = args.iter().map(|arg| arg.to_str().unwrap()).collect();
        assert!(args.windows(2).any(|pair| pair == ["-progress", "pipe:1"]));
        assert!(args.contains(&"-nostats") && args.contains(&"-nostdin"));
        let input_at = args.iter().position(|arg| *arg == "-i").unwrap();
        assert_eq!(args[input_at + 1], "file:/scratch/original");
        assert!(
            args[..input_at]
                .windows(2)
                .any(|pair| pair == ["-protocol_whitelist", "file"])
        );
        assert!(
            args[..input_at]
                .windows(2)
                .any(|pair| pair == ["-format_whitelist", FORMAT_WHITELIST])
        );
        assert_eq!(args.last(), Some(&"file:/scratch/tmp-audio.m4a"));
    }

    /// Two blocks as ffmpeg 5.1 prints them for an audio-only output.
    const TWO_BLOCKS: &str = "bitrate=N/A\ntotal_size=8367\nout_time_us=0\nout_time_ms=0\n\
                              out_time=00:00:00.000000\ndup_frames=0\ndrop_frames=0\nspeed=   0x\n\
                              progress=continue\nbitrate=  50.2kbits/s\ntotal_size=3767891\n\
                              out_time_us=600003625\nout_time_ms=600003625\n\
                              out_time=00:10:00.003625\ndup_frames=0\ndrop_frames=0\n\
                              speed= 872x\nprogress=end\n";

    // Guards block reading: a block counts when its `progress=` line ends, a chunk that completes
    // two gives the last, and bytes split anywhere (here one at a time) give the same blocks.
    #[test]
    fn progress_blocks_are_read_whole_however_the_pipe_splits_them() {
        let first = FfmpegProgress {
            total_size: Some(8367),
            out_time_us: Some(0),
            end: false,
        };
        let last = FfmpegProgress {
            total_size: Some(3_767_891),
            out_time_us: Some(600_003_625),
            end: true,
        };
        assert_eq!(
            ProgressParser::default().feed(TWO_BLOCKS.as_bytes()),
            Some(last)
        );

        let mut parser = ProgressParser::default();
        let mut blocks = Vec::new();
        for byte in TWO_BLOCKS.as_bytes() {
            blocks.extend(parser.feed(std::slice::from_ref(byte)));
        }
        assert_eq!(blocks, [first, last]);

        let mut parser = ProgressParser::default();
        assert_eq!(parser.feed(b"total_si"), None);
        assert_eq!(
            parser.feed(b"ze=100\nprogress=cont"),
            None,
            "the block is not over"
        );
        assert_eq!(parser.feed(b"inue").map(|block| block.total_size), None);
        assert_eq!(
            parser.feed(b"\r\n").map(|block| block.total_size),
            Some(Some(100)),
            "a CRLF line ending is a line ending"
        );
    }

    // Guards against garbage: lines that are not `key=value`, unknown keys, values that are not
    // numbers (`N/A` included) and unknown `progress=` values change nothing and end no block.
    #[test]
    fn garbage_in_the_progress_report_is_ignored() {
        let mut parser = ProgressParser::default();
        parser.feed(b"total_size=100\nout_time_us=5\nprogress=continue\n");
        let garbage: &[u8] = b"garbage\n\xff\xfe=\x00\n=\n\ntotal_size=abc\ntotal_size=N/A\n\
                               total_size=-3\nout_time_us=\nfps=12\nprogress=maybe\n";
        assert_eq!(parser.feed(garbage), None);
        assert_eq!(
            parser.feed(b"progress=continue\n"),
            Some(FfmpegProgress {
                total_size: Some(100),
                out_time_us: Some(5),
                end: false,
            })
        );
        // Without `out_time_us`, as ffmpeg before 4.1 prints it.
        let mut old = ProgressParser::default();
        let block = old.feed(b"out_time_ms=2000000\nprogress=end\n").unwrap();
        assert_eq!(block.out_time_us, Some(2_000_000));
        assert!(block.end);
    }

    // Guards the memory bound: an endless line keeps at most the limit in memory, and an overlong
    // line is dropped whole; the value at its start is never read from a cut.
    #[test]
    fn overlong_progress_lines_are_bounded_and_dropped_whole() {
        let mut parser = ProgressParser::default();
        parser.feed(b"total_size=5\nprogress=continue\n");
        parser.feed(b"total_size=9");
        for _ in 0..1000 {
            assert_eq!(parser.feed(&[b' '; 4096]), None);
            assert!(parser.line.len() <= PROGRESS_LINE_BYTES_MAX);
        }
        let block = parser.feed(b"\nprogress=continue\n").unwrap();
        assert_eq!(block.total_size, Some(5), "the overlong line was not read");
        let next = parser.feed(b"total_size=7\nprogress=end\n").unwrap();
        assert_eq!(next.total_size, Some(7), "lines after it are read again");

        let mut parser = ProgressParser::default();
        let just_fits = format!(
            "total_size={:0>width$}\nprogress=end\n",
            42,
            width = PROGRESS_LINE_BYTES_MAX - "total_size=".len()
        );
        assert_eq!(
            parser.feed(just_fits.as_bytes()).unwrap().total_size,
            Some(42)
        );
    }

    #[test]
    fn extraction_failures_are_never_retried_automatically() {
        for class in [
            ErrorClass::CorruptMedia,
            ErrorClass::NoAudioStream,
            ErrorClass::UnsupportedCodec,
            ErrorClass::ExtractTimeout,
            ErrorClass::UnsupportedSource,
        ] {
            assert!(!class.retryable(), "{class}");
        }
    }

    #[test]
    fn changes_list_each_differing_field() {
        let before = parse_probe(mp4_probe()).unwrap();
        let mut after = before.clone();
        after.streams[1].codec_name = Some("mp3".into());
        after.duration_s = Some(99.0);
        let changes = metadata_changes(&before, &after);
        assert_eq!(
            changes,
            [
                "duration_s: 2.02 -> 99.0",
                "streams[1].codec_name: \"aac\" -> \"mp3\""
            ]
        );
        assert!(metadata_changes(&before, &before).is_empty());
        // A record whose raw JSON still names the file it was probed from is the same record.
        let mut with_file_name = before.clone();
        with_file_name.raw = String::from_utf8(mp4_probe().to_vec()).unwrap();
        assert!(metadata_changes(&with_file_name, &before).is_empty());
    }

    #[tokio::test]
    async fn a_missing_tool_is_reported_not_panicked_on() {
        let version = tool_version(Path::new("/nonexistent/ffmpeg")).await;
        assert!(version.unwrap_err().contains("cannot run"));
    }
}
