//! The decoding half of a transcode: a decoder on the chosen stream (one thread, as the module
//! decodes), fed its packets moved to the input's start, each decoded frame's timestamp carried
//! sample-accurately from the stream's time base, and the frames handed to the encoding. Decoding
//! errors are `corrupt_media`; a stream that decodes to nothing is too.

use std::path::Path;
use std::ptr;

use ffmpeg_next::packet::Mut as _;
use ffmpeg_next::{Codec, Packet, codec, ffi, frame};

use super::encoder::Encoding;
use super::{Written, averror, decode_failure, next_packet, shift, start_offset};
use crate::model::ErrorClass;
use crate::steps::media::libav::{Input, MediaError, av_error_text, c_text, log};
use crate::workflow::TranscodeTarget;

/// Decodes the chosen stream and hands each frame, timed as the CLI's decoder step times it, to
/// the encoding set up on the first one.
#[allow(clippy::too_many_arguments)]
pub(super) fn transcode(
    input: &Input,
    ist: *mut ffi::AVStream,
    target: TranscodeTarget,
    sample_rate: Option<u32>,
    channels: Option<u32>,
    output_path: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<Written, MediaError> {
    // SAFETY: the input stream's parameters, read; a decoder context of our own.
    let (mut decoder, index) = unsafe {
        let par = &*(*ist).codecpar;
        let index = (*ist).index;
        let codec = ffi::avcodec_find_decoder(par.codec_id);
        if codec.is_null() {
            let name = c_text(ffi::avcodec_get_name(par.codec_id)).unwrap_or_default();
            return Err(MediaError::new(
                ErrorClass::UnsupportedCodec,
                format!(
                    "there is no decoder for the audio codec: Decoder ({name}) not found for \
                     input stream #0:{index}"
                ),
            ));
        }
        let mut decoder = codec::Context::new_with_codec(Codec::wrap(codec));
        assert!(!decoder.as_ptr().is_null(), "avcodec_alloc_context3");
        let copied = ffi::avcodec_parameters_to_context(decoder.as_mut_ptr(), par);
        if copied < 0 {
            return Err(MediaError::new(ErrorClass::Internal, av_error_text(copied)));
        }
        (*decoder.as_mut_ptr()).pkt_timebase = (*ist).time_base;
        (*decoder.as_mut_ptr()).thread_count = 1;
        let opened = ffi::avcodec_open2(decoder.as_mut_ptr(), codec, ptr::null_mut());
        if opened < 0 {
            let mut lines = log::take();
            lines.push(format!(
                "Error while opening decoder for input stream #0:{index} : {}",
                av_error_text(opened)
            ));
            return Err(log::judge(&lines, true, "opening the decoder")
                .unwrap_or_else(|| MediaError::new(ErrorClass::ExtractFailed, log::tail(&lines))));
        }
        (decoder, index)
    };
    // As for a copy: timestamps start where the input starts (the CLI's ts_offset).
    let offset = start_offset(input, ist);
    // SAFETY: a plain field read of an opened context.
    let ist_tb = unsafe { (*ist).time_base };
    let mut last = ffi::AV_NOPTS_VALUE;
    let mut prev_pkt_pts = ffi::AV_NOPTS_VALUE;
    let mut packet = Packet::empty();
    let mut frame = frame::Audio::empty();
    let mut encoding: Option<Encoding> = None;
    let mut ended = false;
    while !ended {
        let sent = match next_packet(input, ist, &mut packet)? {
            // SAFETY: our decoder; the packet is referenced by it, then unreferenced by us.
            Some(()) => unsafe {
                let pkt = &mut *packet.as_mut_ptr();
                shift(pkt, offset);
                // The CLI restarts its sample-accurate timestamps after a gap between packets.
                if pkt.duration > 0
                    && prev_pkt_pts != ffi::AV_NOPTS_VALUE
                    && pkt.pts != ffi::AV_NOPTS_VALUE
                    && pkt.pts - prev_pkt_pts > pkt.duration
                {
                    last = ffi::AV_NOPTS_VALUE;
                }
                prev_pkt_pts = pkt.pts;
                let sent = ffi::avcodec_send_packet(decoder.as_mut_ptr(), pkt);
                ffi::av_packet_unref(pkt);
                sent
            },
            None => {
                ended = true;
                // SAFETY: NULL enters draining mode.
                unsafe { ffi::avcodec_send_packet(decoder.as_mut_ptr(), ptr::null()) }
            }
        };
        if sent < 0 && sent != ffi::AVERROR_EOF {
            return Err(decode_failure(index, sent));
        }
        loop {
            // SAFETY: our decoder and frame.
            let received =
                unsafe { ffi::avcodec_receive_frame(decoder.as_mut_ptr(), frame.as_mut_ptr()) };
            if received == averror(libc::EAGAIN) || received == ffi::AVERROR_EOF {
                break;
            }
            if received < 0 {
                return Err(decode_failure(index, received));
            }
            // SAFETY: a frame just decoded.
            let decoded = unsafe { &*frame.as_ptr() };
            if encoding.is_none() {
                encoding = Some(Encoding::start(
                    target,
                    sample_rate,
                    channels,
                    decoded,
                    output_path,
                )?);
            }
            // The frame's timestamp in 1/its rate, carried sample-accurately from the stream's
            // time base as the CLI's decoder step does.
            let pts = if decoded.pts == ffi::AV_NOPTS_VALUE || decoded.sample_rate <= 0 {
                ffi::AV_NOPTS_VALUE
            } else {
                let rate = ffi::AVRational {
                    num: 1,
                    den: decoded.sample_rate,
                };
                // SAFETY: pure arithmetic on valid timestamps.
                unsafe {
                    ffi::av_rescale_delta(
                        ist_tb,
                        decoded.pts,
                        rate,
                        decoded.nb_samples,
                        &mut last,
                        rate,
                    )
                }
            };
            let current = encoding.as_mut().expect("set above");
            current.push(decoded, pts)?;
            current.output.report(progress);
            // SAFETY: our frame, reused.
            unsafe { ffi::av_frame_unref(frame.as_mut_ptr()) };
        }
    }
    match encoding {
        Some(encoding) => encoding.finish(progress),
        None => Err(MediaError::new(
            ErrorClass::CorruptMedia,
            format!("audio stream {index} decoded to no audio at all"),
        )),
    }
}
