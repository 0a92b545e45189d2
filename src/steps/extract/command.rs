//! The command lines of ffmpeg and ffprobe, with their hardening: a `file:` input behind the
//! protocol and format whitelists, bounded threads, no stdin, and the progress report on stdout.
//!
//! It only builds arguments; it never runs a tool or judges its output.

use std::ffi::OsString;
use std::path::Path;

use super::{OutputPlan, TrackChoice};

/// The demuxers ffmpeg and ffprobe may use: the media containers narra accepts, and nothing that
/// reads other files or URLs (hls, dash, concat, image sequences, ...).
pub const FORMAT_WHITELIST: &str = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,flv,mpegts,mpeg,asf,\
                                    ogg,mp3,aac,ac3,eac3,wav,w64,aiff,caf,flac,wv";

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

/// ffprobe's whole command line: the input's streams and format, as JSON.
pub(super) fn ffprobe_args(input: &Path, threads: u32) -> Vec<OsString> {
    let mut args: Vec<OsString> = ["-v", "warning", "-hide_banner"]
        .iter()
        .map(OsString::from)
        .collect();
    args.extend(input_args(input, threads));
    args.extend(
        ["-print_format", "json", "-show_format", "-show_streams"]
            .iter()
            .map(OsString::from),
    );
    args
}

/// ffmpeg's whole command line: the chosen stream of `input` written to `output` as planned.
pub(super) fn ffmpeg_args(
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

/// A local path as a `file:` URL, so a file named like a protocol (`http:x`) is still a file.
fn file_url(path: &Path) -> OsString {
    let mut url = OsString::from("file:");
    url.push(path.as_os_str());
    url
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::extract::fixtures::{mp4_probe, track};
    use crate::steps::extract::{parse_probe, plan_output};
    use crate::workflow::ExtractParams;

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
}
