//! Writing one audio stream: a stream copy into a muxer, or a decode, resample/remix (swresample)
//! and encode, packet by packet so memory stays flat whatever the input's size.
//!
//! What it copies from ffmpeg's CLI (5.1), so both paths give the same bytes: only the chosen
//! stream is read (the others are discarded in the demuxer); timestamps start where the input
//! starts (the CLI's `ts_offset = -start_time`), and are carried sample-accurately from a coarse
//! time base (`av_rescale_delta`, restarted after a gap between packets, as the CLI's stream copy
//! and decoder steps do); the codec tag is cleared for the muxer to choose; no source metadata or
//! chapters are written, only the CLI's own bit-exact `encoder` tag (`Lavc libopus`) on an encoded
//! stream, which the Ogg Opus and LAME headers carry; the muxer and the encoders are bit-exact; the
//! muxer's own bitstream filters run (the mov/ipod muxer turns ADTS AAC into MP4 AAC by itself, as
//! `aac_adtstoasc` would); the encoder's sample format is the decoder's, else its packed/planar
//! twin, else a float one; a rate the encoder does not take becomes the listed rate nearest to it
//! (the CLI's format negotiation: the smallest difference, the first listed on a tie: for Opus
//! 44.1 kHz -> 48, 32 -> 24, 22.05 -> 24, 11.025 -> 12; not "the nearest above"); the resampled
//! audio keeps the timestamps the CLI's `aresample` gives it (`swr_next_pts`), and encoders with a
//! fixed frame size (libopus 960 at 48 kHz, LAME 1152, FLAC 4608) get exactly that many samples
//! per frame, the last one short where the encoder allows it (all four do), else padded.
//!
//! One difference on purpose: the CLI refuses an explicit `-ar` that libopus does not take
//! (narra's `sample_rate = 32000` with the opus target fails today); this module picks the
//! nearest supported rate instead.
//!
//! What it reports: a damaged chosen stream (a read error, a packet the decoder refuses) and the
//! damage libav only logs ("File ended prematurely", ...) are errors of the class narra's CLI
//! path gives them; a full disk is `scratch_error`. On any error the output file is removed.
//!
//! The files: this one holds the entry, the failures and what copy and transcode share (reading
//! the chosen stream's packets, the start offset); `output` the muxer and its file; `copy` the
//! stream copy; `transcode` the decoding; `encoder` the encoder with its resampler and sample
//! FIFO; `formats` the choice of the encoder's sample format, rate and channel layout.

mod copy;
mod encoder;
mod formats;
mod output;
mod transcode;

use std::ffi::c_int;
use std::path::Path;

use ffmpeg_next::packet::{Mut as _, Ref as _};
use ffmpeg_next::{Packet, ffi};

use super::{Input, MediaError, av_error_text, log};
use crate::model::ErrorClass;
use crate::steps::media::protocol::WritePlan;
use copy::copy;
#[cfg(test)]
pub(super) use formats::pick_sample_rate;
use transcode::transcode;

/// What an extraction wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The output file's size.
    pub bytes: u64,
    /// The packets written.
    pub packets: u64,
    /// The written stream's codec, sample rate and channels. For a transcode the rate is the
    /// one the encoder was given: an Ogg Opus file reads back at 48 kHz whatever it was.
    pub codec_name: String,
    pub sample_rate: u32,
    pub channels: u32,
    /// What libav logged about damage it read past in a run that succeeded ("File ended
    /// prematurely", ...): judged by the caller after the output, as ffmpeg's messages are, so
    /// that a truncated input is told by its duration first, as on the programs' path.
    pub warnings: Vec<String>,
}

/// Writes audio stream `stream_index` of `input` to `output_path` as `plan` says. `progress` is
/// called with the bytes written so far whenever that number grows. An `Input` serves one
/// extraction (it is read to its end). On an error the output file is removed.
pub fn extract(
    input: &mut Input,
    stream_index: u32,
    plan: &WritePlan,
    output_path: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<Written, MediaError> {
    log::clear();
    let result = choose_stream(input, stream_index)
        .and_then(|ist| match plan {
            WritePlan::Copy { muxer } => copy(input, ist, muxer, output_path, progress),
            &WritePlan::Transcode {
                target,
                sample_rate,
                channels,
            } => transcode(
                input,
                ist,
                target,
                sample_rate,
                channels,
                output_path,
                progress,
            ),
        })
        .and_then(|mut written| {
            // What libav logged while the run succeeded: a full disk or a refused source fails
            // at once; damage to the media ("File ended prematurely", ...) goes back with the
            // output, to be judged after it, as narra judges ffmpeg's messages after a success.
            let lines = log::take();
            match log::judge(&lines, false, &format!("audio stream {stream_index}")) {
                Some(error) if error.class != ErrorClass::CorruptMedia => Err(error),
                _ => {
                    written.warnings = lines;
                    Ok(written)
                }
            }
        });
    if result.is_err() {
        let _ = std::fs::remove_file(output_path);
    }
    result
}

/// The audio stream `stream_index` of an input not yet read, set up as the only stream the
/// demuxer reads; the input counts as read from now on.
fn choose_stream(input: &mut Input, stream_index: u32) -> Result<*mut ffi::AVStream, MediaError> {
    if input.consumed {
        return Err(MediaError::new(
            ErrorClass::Internal,
            "this input was already read by an extraction: open it again",
        ));
    }
    let streams = input.streams();
    let Some(&ist) = streams.get(stream_index as usize) else {
        return Err(MediaError::new(
            ErrorClass::Internal,
            format!(
                "the input has no stream {stream_index} ({} streams)",
                streams.len()
            ),
        ));
    };
    // SAFETY: streams of an opened context; discard is the demuxer's documented knob.
    unsafe {
        if (*(*ist).codecpar).codec_type != ffi::AVMediaType::AVMEDIA_TYPE_AUDIO {
            return Err(MediaError::new(
                ErrorClass::NoAudioStream,
                format!("stream {stream_index} is not an audio stream"),
            ));
        }
        // Only the chosen stream is read: the demuxer skips the others' payload.
        for &st in streams {
            (*st).discard = if st == ist {
                ffi::AVDiscard::AVDISCARD_DEFAULT
            } else {
                ffi::AVDiscard::AVDISCARD_ALL
            };
        }
    }
    input.consumed = true;
    Ok(ist)
}

/// AVERROR(e) for a POSIX errno.
const fn averror(errno: c_int) -> c_int {
    -errno
}

/// An error while writing: a full disk is the scratch's, a muxer refusing the codec is the
/// codec's (narra's patterns decide), anything else a failed extraction.
fn write_failure(code: c_int, what: &str) -> MediaError {
    let mut lines = log::take();
    let text = av_error_text(code);
    lines.push(format!("{what}: {text}"));
    if code == averror(libc::ENOSPC) {
        return MediaError::new(
            ErrorClass::ScratchError,
            format!(
                "the scratch file system is full: free space and retry the job ({what}: {text})"
            ),
        );
    }
    log::judge(&lines, true, what).unwrap_or_else(|| {
        MediaError::new(
            ErrorClass::ExtractFailed,
            format!("{what} failed: {}", log::tail(&lines)),
        )
    })
}

/// A read error of the input as ffmpeg's CLI reports it (`file:x: Invalid data found ...`), classed
/// by narra's patterns, `corrupt_media` when none matches.
fn read_failure(input: &Input, code: c_int) -> MediaError {
    let mut lines = log::take();
    lines.push(format!(
        "file:{}: {}",
        input.path.display(),
        av_error_text(code)
    ));
    log::judge(&lines, true, "reading the input").unwrap_or_else(|| {
        MediaError::new(
            ErrorClass::CorruptMedia,
            format!("the input cannot be read to its end: {}", log::tail(&lines)),
        )
    })
}

/// A decoding error as the CLI prints it ("Error while decoding stream #0:1: ..."):
/// `corrupt_media`.
fn decode_failure(index: c_int, code: c_int) -> MediaError {
    let mut lines = log::take();
    lines.push(format!(
        "Error while decoding stream #0:{index}: {}",
        av_error_text(code)
    ));
    log::judge(&lines, true, &format!("audio stream {index}"))
        .unwrap_or_else(|| MediaError::new(ErrorClass::CorruptMedia, log::tail(&lines)))
}

/// Reads the next packet of the chosen stream; `None` at the end.
fn next_packet(
    input: &Input,
    ist: *mut ffi::AVStream,
    packet: &mut Packet,
) -> Result<Option<()>, MediaError> {
    loop {
        // SAFETY: an opened context and a packet ours to fill (unreferenced by the caller).
        let read = unsafe { ffi::av_read_frame(input.ctx, packet.as_mut_ptr()) };
        if read == ffi::AVERROR_EOF {
            return Ok(None);
        }
        if read == averror(libc::EAGAIN) {
            continue;
        }
        if read < 0 {
            return Err(read_failure(input, read));
        }
        // SAFETY: a packet just read.
        if unsafe { (*packet.as_ptr()).stream_index == (*ist).index } {
            return Ok(Some(()));
        }
        // SAFETY: a packet of another stream, ours to drop.
        unsafe { ffi::av_packet_unref(packet.as_mut_ptr()) };
    }
}

const TIME_BASE_Q: ffi::AVRational = ffi::AVRational {
    num: 1,
    den: ffi::AV_TIME_BASE,
};

/// Where the output's timestamps start, in `ist`'s time base: the CLI's default
/// `ts_offset = -start_time`, so a source whose clock starts late (MPEG-TS, a video first) gets
/// no leading gap.
fn start_offset(input: &Input, ist: *mut ffi::AVStream) -> i64 {
    // SAFETY: plain field reads of opened contexts.
    unsafe {
        let start = (*input.ctx).start_time;
        if start == ffi::AV_NOPTS_VALUE {
            0
        } else {
            ffi::av_rescale_q(-start, TIME_BASE_Q, (*ist).time_base)
        }
    }
}

/// Moves a packet's known timestamps by `offset`.
fn shift(packet: &mut ffi::AVPacket, offset: i64) {
    if packet.pts != ffi::AV_NOPTS_VALUE {
        packet.pts += offset;
    }
    if packet.dts != ffi::AV_NOPTS_VALUE {
        packet.dts += offset;
    }
}
