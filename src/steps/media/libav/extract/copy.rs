//! The stream copy: the chosen stream's packets into a muxer unchanged, their timestamps moved to
//! the input's start and carried to the output's time base as the CLI's stream copy carries
//! them. It never decodes.

use std::path::Path;

use ffmpeg_next::packet::Mut as _;
use ffmpeg_next::{Packet, ffi};

use super::output::Output;
use super::{Written, next_packet, shift, start_offset};
use crate::model::ErrorClass;
use crate::steps::media::libav::{Input, MediaError, av_error_text, c_text};

/// The muxers a stream copy may use: the containers of narra's copy table.
const COPY_MUXERS: [&str; 6] = ["ipod", "mp3", "opus", "ogg", "flac", "wav"];

/// Copies the chosen stream's packets into `muxer`, retimed as the CLI's stream copy retimes
/// them.
pub(super) fn copy(
    input: &Input,
    ist: *mut ffi::AVStream,
    muxer: &str,
    output_path: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<Written, MediaError> {
    if !COPY_MUXERS.contains(&muxer) {
        return Err(MediaError::new(
            ErrorClass::Internal,
            format!("{muxer} is not a muxer for a stream copy"),
        ));
    }
    let mut output = Output::create(muxer, output_path)?;
    let ost = output.new_stream();
    // SAFETY: the input stream's parameters copied into the new output stream.
    let (codec_name, sample_rate, channels) = unsafe {
        let copied = ffi::avcodec_parameters_copy((*ost).codecpar, (*ist).codecpar);
        if copied < 0 {
            return Err(MediaError::new(ErrorClass::Internal, av_error_text(copied)));
        }
        // The muxer picks its own tag: a tag from the source container may mean nothing in it.
        (*(*ost).codecpar).codec_tag = 0;
        (*ost).time_base = (*ist).time_base;
        let par = &*(*ist).codecpar;
        (
            c_text(ffi::avcodec_get_name(par.codec_id)).unwrap_or_default(),
            par.sample_rate.max(0) as u32,
            par.ch_layout.nb_channels.max(0) as u32,
        )
    };
    output.write_header(&[])?;
    let offset = start_offset(input, ist);
    // SAFETY: plain field reads of opened contexts.
    let (ist_tb, ost_tb) = unsafe { ((*ist).time_base, (*output.stream()).time_base) };
    // SAFETY: the input stream's parameters, read.
    let (par, rate) = unsafe { ((*ist).codecpar, (*(*ist).codecpar).sample_rate) };
    let mut last = ffi::AV_NOPTS_VALUE;
    let mut packet = Packet::empty();
    while next_packet(input, ist, &mut packet)?.is_some() {
        // SAFETY: a packet just read, ours until written.
        unsafe {
            let pkt = &mut *packet.as_mut_ptr();
            shift(pkt, offset);
            let duration = pkt.duration;
            if pkt.dts != ffi::AV_NOPTS_VALUE && rate > 0 {
                // As the CLI copies audio: timestamps in a coarse time base (Matroska's ms) are
                // carried to the output's finer one sample-accurately, not rounded packet by
                // packet, so the muxer sees an even stream (and writes what the CLI writes).
                let mut samples = ffi::av_get_audio_frame_duration2(par, pkt.size);
                if samples == 0 {
                    samples = (*par).frame_size;
                }
                let dts = ffi::av_rescale_delta(
                    ist_tb,
                    pkt.dts,
                    ffi::AVRational { num: 1, den: rate },
                    samples.max(0),
                    &mut last,
                    ost_tb,
                );
                pkt.dts = dts;
                pkt.pts = dts;
                pkt.duration = ffi::av_rescale_q(duration, ist_tb, ost_tb);
            } else {
                ffi::av_packet_rescale_ts(pkt, ist_tb, ost_tb);
            }
        }
        output.write(&mut packet)?;
        output.report(progress);
    }
    output.finish(progress, codec_name, sample_rate, channels)
}
