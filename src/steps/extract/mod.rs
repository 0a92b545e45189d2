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
//!
//! The files: this one runs the step (probe, plan, write, read back, judge) and holds its types;
//! `probe` runs ffprobe and parses its JSON; `plan` chooses the stream and how it is written (the
//! codec and container tables); `command` builds the hardened command lines; `diagnosis` turns
//! what the tools say into error classes; `progress` reads ffmpeg's `-progress` report; `record`
//! shapes the metadata record for people and for the checkpoint hash; `tools` finds ffmpeg and
//! ffprobe and asks them about themselves (doctor).

mod command;
pub(in crate::steps) mod diagnosis;
mod plan;
mod probe;
mod progress;
mod record;
mod tools;

use std::path::{Path, PathBuf};

use super::media::{self, Request};
use super::process::run_process_streaming;
use super::scratch;
use super::{Cancel, ErrorClass, ProgressSender, StepError};
use crate::model::job::MediaMetadata;
use crate::workflow::{ExtractParams, TranscodeTarget};

pub use command::FORMAT_WHITELIST;
pub use plan::{
    choose_track, copy_extension, encoder_of, extract_timeout, plan_output, transcode_muxer,
    video_extension,
};
pub use probe::{parse_probe, probe};
pub use progress::{FfmpegProgress, PROGRESS_LINE_BYTES_MAX, ProgressParser};
pub use record::{metadata_changes, metadata_json, record_json};
pub use tools::{Tools, encoders, tool_version};

use command::ffmpeg_args;
use diagnosis::{Diagnosis, diagnose, run_failure, stderr_tail};
use plan::Container;
use probe::helpers;

/// How far the extracted audio's duration may be from the source stream's: the larger of these.
const DURATION_TOLERANCE_MIN_S: f64 = 0.2;
const DURATION_TOLERANCE_RATIO: f64 = 0.01;

/// The audio stream chosen for extraction, and why it was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackChoice {
    /// The stream's index in the source (ffprobe's `index`).
    pub stream_index: u32,
    pub codec: String,
    pub language: Option<String>,
    pub reason: String,
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
    /// The transcode target; `None` for a stream copy.
    target: Option<TranscodeTarget>,
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
    scratch::sync_dir(scratch_dir).await?;
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
    let stream = format!("audio stream {} ({})", track.stream_index, track.codec);
    let mut report = |bytes_written: u64| {
        progress.send_if_modified(|progress| {
            let before = *progress;
            progress.bytes_done = bytes_written;
            progress.bytes_total = None;
            *progress != before
        });
    };
    let written = match helpers(tools, params) {
        Some(pool) => {
            let request = Request::Extract {
                input: input.to_path_buf(),
                stream_index: track.stream_index,
                plan: plan.write_plan(),
                output: temp_path.to_path_buf(),
                threads: params.threads,
            };
            // A failed write was judged in the helper, by the same patterns; what libav logged
            // about damage it read past in a write that succeeded is judged here, after the
            // output, as ffmpeg's messages are.
            let (json, warnings) = media::ask(pool, &request, timeout, cancel, &mut report).await?;
            let diagnosis = diagnose(&warnings.join("\n"), false);
            let synced = scratch::sync_file(temp_path).await;
            let output = parse_probe(json.as_bytes()).map_err(|error| {
                StepError::new(
                    ErrorClass::CorruptMedia,
                    format!(
                        "the media helper wrote no readable audio from {stream} ({})",
                        error.message
                    ),
                )
            });
            Written {
                tool: HELPER,
                output,
                diagnosis,
                synced,
            }
        }
        None => {
            write_with_ffmpeg(
                tools,
                input,
                track,
                plan,
                params,
                temp_path,
                timeout,
                &mut report,
                cancel,
                &stream,
            )
            .await?
        }
    };
    let said = quoting(written.tool, written.diagnosis.as_ref());
    let duration_s = validate_output(&written.output?, plan, source_duration_s, &stream, &said)?;
    // The tool finished and the output looks whole, but it saw damage: the input is not whole.
    // What the media says comes before a scratch error.
    if let Some(diagnosis) = written.diagnosis {
        return Err(diagnosis.into_error(written.tool, Some(&stream)));
    }
    written.synced?;
    Ok(duration_s)
}

/// How the media helper names itself in messages where ffmpeg's path says `ffmpeg`.
const HELPER: &str = "the media helper";

/// What `tool` said about the input, as a message's tail (`; ffmpeg said "..."`), or nothing.
fn quoting(tool: &str, diagnosis: Option<&Diagnosis>) -> String {
    diagnosis
        .map(|diagnosis| format!("; {tool} said \"{}\"", diagnosis.line))
        .unwrap_or_default()
}

/// An output written into scratch, before it is judged: its probe, what the tool said about the
/// input, whether its fsync succeeded.
struct Written {
    tool: &'static str,
    output: Result<MediaMetadata, StepError>,
    diagnosis: Option<Diagnosis>,
    synced: Result<(), StepError>,
}

/// Runs ffmpeg into `temp_path`, then probes what it wrote with ffprobe while the output is
/// fsynced.
#[allow(clippy::too_many_arguments)]
async fn write_with_ffmpeg(
    tools: &Tools,
    input: &Path,
    track: &TrackChoice,
    plan: &OutputPlan,
    params: &ExtractParams,
    temp_path: &Path,
    timeout: std::time::Duration,
    report: &mut (dyn FnMut(u64) + Send),
    cancel: &mut Cancel,
    stream: &str,
) -> Result<Written, StepError> {
    let args = ffmpeg_args(input, track, plan, params.threads, temp_path);
    let mut parser = ProgressParser::default();
    let mut on_stdout = |chunk: &[u8]| {
        if let Some(bytes_written) = parser.feed(chunk).and_then(|block| block.total_size) {
            report(bytes_written);
        }
    };
    let finished = run_process_streaming(&tools.ffmpeg, &args, &mut on_stdout, timeout, cancel)
        .await
        .map_err(|error| run_failure(error, "ffmpeg", &tools.ffmpeg, timeout))?;
    let diagnosis = diagnose(&finished.stderr, !finished.success);
    if let Some(diagnosis) = &diagnosis
        && (!finished.success || diagnosis.class != ErrorClass::CorruptMedia)
    {
        return Err(diagnosis.clone().into_error("ffmpeg", Some(stream)));
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
    let ffmpeg_said = quoting("ffmpeg", diagnosis.as_ref());
    // The audio's fsync runs while ffprobe reads it back: the disk and the probe's start-up
    // overlap. Both must succeed before the audio is renamed into place. A cancellation stops
    // ffprobe at once; the fsync, already started, is waited for (the file is then removed).
    let (output, synced) = tokio::join!(
        read_back(tools, temp_path, params, cancel, stream, &ffmpeg_said),
        scratch::sync_file(temp_path)
    );
    Ok(Written {
        tool: "ffmpeg",
        output,
        diagnosis,
        synced,
    })
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

/// The probe output and the track choice the tests of these files share.
#[cfg(test)]
mod fixtures {
    use super::*;

    pub(super) fn mp4_probe() -> &'static [u8] {
        br#"{"streams":[{"index":0,"codec_type":"video","codec_name":"h264","profile":"High","width":320,"height":240,"avg_frame_rate":"30000/1001","duration":"2.000000","start_time":"0.000000"},{"index":1,"codec_type":"audio","codec_name":"aac","profile":"LC","sample_rate":"44100","channels":2,"channel_layout":"stereo","duration":"2.020000","bit_rate":"64000","tags":{"language":"eng"}}],"format":{"filename":"file:/home/narra/scratch/01J/original","format_name":"mov,mp4,m4a,3gp,3g2,mj2","format_long_name":"QuickTime / MOV","start_time":"0.000000","duration":"2.020000","size":"12345","bit_rate":"48890"}}"#
    }

    pub(super) fn metadata_of(json: &str) -> MediaMetadata {
        parse_probe(json.as_bytes()).unwrap()
    }

    pub(super) fn track(codec: &str) -> TrackChoice {
        TrackChoice {
            stream_index: 1,
            codec: codec.into(),
            language: None,
            reason: "test".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{metadata_of, mp4_probe, track};
    use super::*;

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

    #[test]
    fn validation_refuses_a_short_output_and_extra_streams() {
        let metadata = parse_probe(mp4_probe()).unwrap();
        let plan = plan_output(&metadata, &track("aac"), &ExtractParams::default());
        let good = metadata_of(
            r#"{"streams":[{"index":0,"codec_type":"audio","codec_name":"aac","duration":"2.0"}],"format":{"format_name":"mov,mp4,m4a,3gp,3g2,mj2","duration":"2.0"}}"#,
        );
        assert_eq!(
            validate_output(&good, &plan, Some(2.02), "s", "").unwrap(),
            Some(2.0)
        );
        let short = metadata_of(
            r#"{"streams":[{"index":0,"codec_type":"audio","codec_name":"aac","duration":"0.8"}],"format":{"format_name":"mov,mp4,m4a,3gp,3g2,mj2"}}"#,
        );
        let error = validate_output(&short, &plan, Some(2.02), "s", "").unwrap_err();
        assert_eq!(error.class, ErrorClass::CorruptMedia);
        assert!(error.message.contains("lasts 0.800 s"), "{}", error.message);
        let two = metadata_of(
            r#"{"streams":[{"index":0,"codec_type":"audio","codec_name":"aac"},{"index":1,"codec_type":"video","codec_name":"png"}],"format":{"format_name":"mov,mp4,m4a,3gp,3g2,mj2"}}"#,
        );
        assert_eq!(
            validate_output(&two, &plan, Some(2.02), "s", "")
                .unwrap_err()
                .class,
            ErrorClass::ExtractFailed
        );
        let reencoded = metadata_of(
            r#"{"streams":[{"index":0,"codec_type":"audio","codec_name":"mp3","duration":"2.0"}],"format":{"format_name":"mp3"}}"#,
        );
        let error = validate_output(&reencoded, &plan, Some(2.02), "s", "").unwrap_err();
        assert!(error.message.contains("expected aac"), "{}", error.message);
    }
}
