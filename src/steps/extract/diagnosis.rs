//! What ffmpeg's and ffprobe's messages and failures mean: the decisive line of their stderr as an
//! error class (quoted, without object addresses, bounded), and a run that did not finish (spawn
//! failure, timeout, cancellation) as a step error.
//!
//! It never runs a tool; callers decide when a diagnosis counts.

use std::path::Path;
use std::time::Duration;

use crate::steps::process::RunError;
use crate::steps::{ErrorClass, StepError};

/// The longest quoted ffmpeg line in an error message.
const QUOTED_LINE_CHARS_MAX: usize = 300;

/// What ffmpeg's or ffprobe's messages say about the input: a class and the line that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::steps) struct Diagnosis {
    pub(in crate::steps) class: ErrorClass,
    what: String,
    pub(super) line: String,
}

impl Diagnosis {
    pub(in crate::steps) fn into_error(self, program: &str, stream: Option<&str>) -> StepError {
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
pub(in crate::steps) fn diagnose(stderr: &str, failed: bool) -> Option<Diagnosis> {
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

/// A line trimmed, its object addresses dropped (`[hls @ 0x5633…]` -> `[hls]`): they differ from
/// run to run and say nothing of the media.
pub(in crate::steps) fn without_addresses(line: &str) -> String {
    let mut text = line.trim().to_string();
    while let Some(at) = text.find(" @ 0x") {
        let end = text[at + 5..]
            .find(|c: char| !c.is_ascii_hexdigit())
            .map(|offset| at + 5 + offset)
            .unwrap_or(text.len());
        text.replace_range(at..end, "");
    }
    text
}

/// A line as quoted in an error: [`without_addresses`], cut to a bounded length.
fn quoted_line(line: &str) -> String {
    let mut text = without_addresses(line);
    if text.chars().count() > QUOTED_LINE_CHARS_MAX {
        text = text.chars().take(QUOTED_LINE_CHARS_MAX).collect::<String>() + "…";
    }
    text
}

/// The last few non-empty lines of a tool's stderr, for a failure no pattern explains.
pub(super) fn stderr_tail(stderr: &str) -> String {
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

/// A tool's failure to run to its end, as a step error.
pub(super) fn run_failure(
    error: RunError,
    name: &str,
    program: &Path,
    timeout: Duration,
) -> StepError {
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
}
