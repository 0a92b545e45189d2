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

use std::ffi::{CString, c_int, c_void};
use std::path::Path;
use std::ptr;

use ffmpeg_next::ffi;

use super::{Input, MediaError, Options, av_error_text, c_text, file_url, log};
use crate::model::ErrorClass;
use crate::steps::extract::{encoder_of, transcode_muxer};
use crate::steps::media::protocol::WritePlan;
use crate::workflow::TranscodeTarget;

/// The muxers a stream copy may use: the containers of narra's copy table.
const COPY_MUXERS: [&str; 6] = ["ipod", "mp3", "opus", "ogg", "flac", "wav"];

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
    let result = run(input, stream_index, plan, output_path, progress).and_then(|written| {
        // Damage libav only logged while the run succeeded ("File ended prematurely", ...) is
        // the media's fault all the same, as narra judges ffmpeg's messages after a success.
        match log::judge(&log::take(), false, &format!("audio stream {stream_index}")) {
            Some(error) => Err(error),
            None => Ok(written),
        }
    });
    if result.is_err() {
        let _ = std::fs::remove_file(output_path);
    }
    result
}

fn run(
    input: &mut Input,
    stream_index: u32,
    plan: &WritePlan,
    output_path: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<Written, MediaError> {
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
    match plan {
        WritePlan::Copy { muxer } => {
            let Some(muxer) = COPY_MUXERS
                .into_iter()
                .find(|known| *known == muxer.as_str())
            else {
                return Err(MediaError::new(
                    ErrorClass::Internal,
                    format!("{muxer} is not a muxer for a stream copy"),
                ));
            };
            copy(input, ist, muxer, output_path, progress)
        }
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
    }
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

struct Packet(*mut ffi::AVPacket);

impl Packet {
    fn new() -> Packet {
        // SAFETY: allocation; NULL only on OOM, which aborts below.
        let packet = unsafe { ffi::av_packet_alloc() };
        assert!(!packet.is_null(), "av_packet_alloc");
        Packet(packet)
    }
}

impl Drop for Packet {
    fn drop(&mut self) {
        // SAFETY: ours, freed once.
        unsafe { ffi::av_packet_free(&mut self.0) };
    }
}

struct Frame(*mut ffi::AVFrame);

impl Frame {
    fn new() -> Frame {
        // SAFETY: allocation; NULL only on OOM.
        let frame = unsafe { ffi::av_frame_alloc() };
        assert!(!frame.is_null(), "av_frame_alloc");
        Frame(frame)
    }
}

impl Drop for Frame {
    fn drop(&mut self) {
        // SAFETY: ours, freed once.
        unsafe { ffi::av_frame_free(&mut self.0) };
    }
}

struct CodecContext(*mut ffi::AVCodecContext);

impl Drop for CodecContext {
    fn drop(&mut self) {
        // SAFETY: ours, freed once.
        unsafe { ffi::avcodec_free_context(&mut self.0) };
    }
}

/// The output file: a muxer context and its file, closed (and freed) on drop.
struct Output {
    ctx: *mut ffi::AVFormatContext,
    description: String,
    reported: u64,
    packets: u64,
}

impl Drop for Output {
    fn drop(&mut self) {
        // SAFETY: the context and its pb are ours; avio_closep tolerates a NULL pb.
        unsafe {
            if !self.ctx.is_null() {
                ffi::avio_closep(&mut (*self.ctx).pb);
                ffi::avformat_free_context(self.ctx);
            }
        }
    }
}

impl Output {
    /// A muxer on a new file at `path`: `file:` URL, the file protocol only, bit-exact.
    fn create(muxer: &str, path: &Path) -> Result<Output, MediaError> {
        let url = file_url(path)?;
        let name = CString::new(muxer).expect("muxer names have no NUL");
        let mut ctx = ptr::null_mut();
        // SAFETY: out pointer; the strings outlive the call.
        let made = unsafe {
            ffi::avformat_alloc_output_context2(&mut ctx, ptr::null(), name.as_ptr(), url.as_ptr())
        };
        if made < 0 || ctx.is_null() {
            return Err(MediaError::new(
                ErrorClass::Internal,
                format!("no {muxer} muxer: {}", av_error_text(made)),
            ));
        }
        let output = Output {
            ctx,
            description: format!("writing {muxer} to {}", path.display()),
            reported: 0,
            packets: 0,
        };
        let mut options = Options::new(&[("protocol_whitelist", "file")]);
        // SAFETY: a fresh context; the muxers narra uses all write through a file (no NOFILE).
        let opened = unsafe {
            (*ctx).flags |= ffi::AVFMT_FLAG_BITEXACT;
            ffi::avio_open2(
                &mut (*ctx).pb,
                url.as_ptr(),
                ffi::AVIO_FLAG_WRITE,
                ptr::null(),
                options.as_mut_ptr(),
            )
        };
        if opened < 0 {
            let error = av_error_text(opened);
            // The file lies in the job's scratch directory: failing to create it is the scratch's.
            return Err(MediaError::new(
                ErrorClass::ScratchError,
                format!("cannot create {}: {error}", path.display()),
            ));
        }
        Ok(output)
    }

    fn new_stream(&mut self) -> *mut ffi::AVStream {
        // SAFETY: a context being set up; NULL only on OOM.
        let stream = unsafe { ffi::avformat_new_stream(self.ctx, ptr::null()) };
        assert!(!stream.is_null(), "avformat_new_stream");
        stream
    }

    fn stream(&self) -> *mut ffi::AVStream {
        // SAFETY: called after new_stream: stream 0 exists.
        unsafe { *(*self.ctx).streams }
    }

    fn write_header(&mut self, pairs: &[(&str, &str)]) -> Result<(), MediaError> {
        let mut options = Options::new(pairs);
        // SAFETY: a context with its stream and file set up.
        let written = unsafe { ffi::avformat_write_header(self.ctx, options.as_mut_ptr()) };
        if written < 0 {
            return Err(write_failure(written, &self.description));
        }
        let leftover = options.leftover();
        assert!(leftover.is_empty(), "muxer options not taken: {leftover:?}");
        Ok(())
    }

    /// The bytes in the file so far, buffered ones included (`avio_tell`).
    fn position(&self) -> u64 {
        // SAFETY: an open pb; seeking by 0 from the current position only reads it.
        let position = unsafe { ffi::avio_seek((*self.ctx).pb, 0, libc::SEEK_CUR) };
        position.max(0) as u64
    }

    /// Writes a packet already in the output stream's time base.
    fn write(&mut self, packet: *mut ffi::AVPacket) -> Result<(), MediaError> {
        // SAFETY: a packet ours to give; the muxer takes its reference.
        let written = unsafe {
            (*packet).stream_index = 0;
            (*packet).pos = -1;
            ffi::av_interleaved_write_frame(self.ctx, packet)
        };
        if written < 0 {
            return Err(write_failure(written, &self.description));
        }
        self.packets += 1;
        Ok(())
    }

    fn report(&mut self, progress: &mut dyn FnMut(u64)) {
        let position = self.position();
        if position > self.reported {
            self.reported = position;
            progress(position);
        }
    }

    /// The trailer, and the file flushed and closed; a write error that only shows at the flush
    /// (a full disk) is caught here.
    fn finish(mut self, progress: &mut dyn FnMut(u64)) -> Result<(u64, u64), MediaError> {
        // SAFETY: a context whose header was written.
        let finished = unsafe { ffi::av_write_trailer(self.ctx) };
        if finished < 0 {
            return Err(write_failure(finished, &self.description));
        }
        // SAFETY: the context's own pb. Its size, not its position: a muxer that rewrites its
        // header at the end (FLAC's STREAMINFO, WAV's sizes) leaves the position there.
        let (flush_error, size, closed) = unsafe {
            let pb = (*self.ctx).pb;
            ffi::avio_flush(pb);
            let error = (*pb).error;
            let size = ffi::avio_size(pb).max(0) as u64;
            (error, size, ffi::avio_closep(&mut (*self.ctx).pb))
        };
        for code in [flush_error, closed] {
            if code < 0 {
                return Err(write_failure(code, &self.description));
            }
        }
        if size > self.reported {
            self.reported = size;
            progress(size);
        }
        Ok((size, self.packets))
    }
}

/// Reads the next packet of the chosen stream; `None` at the end.
fn next_packet(
    input: &Input,
    ist: *mut ffi::AVStream,
    packet: &Packet,
) -> Result<Option<()>, MediaError> {
    loop {
        // SAFETY: an opened context and a packet ours to fill (unreferenced by the caller).
        let read = unsafe { ffi::av_read_frame(input.ctx, packet.0) };
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
        if unsafe { (*packet.0).stream_index == (*ist).index } {
            return Ok(Some(()));
        }
        unsafe { ffi::av_packet_unref(packet.0) };
    }
}

const TIME_BASE_Q: ffi::AVRational = ffi::AVRational {
    num: 1,
    den: ffi::AV_TIME_BASE,
};

fn copy(
    input: &Input,
    ist: *mut ffi::AVStream,
    muxer: &str,
    output_path: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<Written, MediaError> {
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
    // The CLI's default: the output starts where the input starts (`ts_offset = -start_time`),
    // so a source whose clock starts late (MPEG-TS, a video first) gets no leading gap.
    // SAFETY: plain field reads of opened contexts.
    let (offset, ist_tb, ost_tb) = unsafe {
        let start = (*input.ctx).start_time;
        let offset = if start == ffi::AV_NOPTS_VALUE {
            0
        } else {
            ffi::av_rescale_q(-start, TIME_BASE_Q, (*ist).time_base)
        };
        (offset, (*ist).time_base, (*output.stream()).time_base)
    };
    // SAFETY: the input stream's parameters, read.
    let (par, rate) = unsafe { ((*ist).codecpar, (*(*ist).codecpar).sample_rate) };
    let mut last = ffi::AV_NOPTS_VALUE;
    let packet = Packet::new();
    while next_packet(input, ist, &packet)?.is_some() {
        // SAFETY: a packet just read, ours until written.
        unsafe {
            let pkt = &mut *packet.0;
            if pkt.pts != ffi::AV_NOPTS_VALUE {
                pkt.pts += offset;
            }
            if pkt.dts != ffi::AV_NOPTS_VALUE {
                pkt.dts += offset;
            }
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
                ffi::av_packet_rescale_ts(packet.0, ist_tb, ost_tb);
            }
        }
        output.write(packet.0)?;
        output.report(progress);
    }
    let (bytes, packets) = output.finish(progress)?;
    Ok(Written {
        bytes,
        packets,
        codec_name,
        sample_rate,
        channels,
    })
}

/// An AVChannelLayout we own (uninit on drop).
struct Layout(ffi::AVChannelLayout);

impl Layout {
    fn default_for(channels: c_int) -> Layout {
        // SAFETY: zeroed is a valid "unset" layout; av_channel_layout_default fills it.
        unsafe {
            let mut layout: ffi::AVChannelLayout = std::mem::zeroed();
            ffi::av_channel_layout_default(&mut layout, channels);
            Layout(layout)
        }
    }

    fn copy_of(source: &ffi::AVChannelLayout) -> Layout {
        // SAFETY: copying into a zeroed layout; a custom layout's map is duplicated.
        unsafe {
            let mut layout: ffi::AVChannelLayout = std::mem::zeroed();
            ffi::av_channel_layout_copy(&mut layout, source);
            Layout(layout)
        }
    }

    /// `source`, or the default layout for its channel count when it names no order (WAV with
    /// only a channel count): swresample needs to know which channel is which.
    fn usable(source: &ffi::AVChannelLayout) -> Layout {
        if source.order == ffi::AVChannelOrder::AV_CHANNEL_ORDER_UNSPEC {
            Layout::default_for(source.nb_channels)
        } else {
            Layout::copy_of(source)
        }
    }

    fn same_as(&self, other: &ffi::AVChannelLayout) -> bool {
        // SAFETY: both layouts valid.
        unsafe { ffi::av_channel_layout_compare(&self.0, other) == 0 }
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: ours.
        unsafe { ffi::av_channel_layout_uninit(&mut self.0) };
    }
}

/// The rate the encoder gets: `wanted` if it takes it, else the listed rate nearest to it (the
/// first listed on a tie), as the CLI's format negotiation picks (44.1 and 36 kHz -> 48 kHz for
/// Opus, 32 kHz -> 24 kHz, 11.025 kHz -> 12 kHz).
pub(super) fn pick_sample_rate(supported: &[c_int], wanted: c_int) -> c_int {
    let mut best = wanted;
    let mut best_diff = i64::MAX;
    for &rate in supported {
        let diff = (i64::from(rate) - i64::from(wanted)).abs();
        if diff < best_diff {
            best = rate;
            best_diff = diff;
        }
    }
    best
}

/// A 0-terminated libav list as a slice.
unsafe fn terminated<T: Copy + PartialEq>(list: *const T, end: T) -> Vec<T> {
    let mut items = Vec::new();
    if list.is_null() {
        return items;
    }
    let mut at = list;
    // SAFETY: the caller passes a list that ends with `end`.
    unsafe {
        while *at != end {
            items.push(*at);
            at = at.add(1);
        }
    }
    items
}

/// The encoder's sample format: the decoder's if the encoder takes it, else its packed/planar
/// twin, else the encoder's first float format, else its first.
fn pick_sample_format(
    supported: &[ffi::AVSampleFormat],
    decoded: ffi::AVSampleFormat,
) -> ffi::AVSampleFormat {
    use ffi::AVSampleFormat::*;
    if supported.is_empty() || supported.contains(&decoded) {
        return decoded;
    }
    // SAFETY: pure lookups.
    let (packed, planar) = unsafe {
        (
            ffi::av_get_packed_sample_fmt(decoded),
            ffi::av_get_planar_sample_fmt(decoded),
        )
    };
    for twin in [packed, planar] {
        if supported.contains(&twin) {
            return twin;
        }
    }
    supported
        .iter()
        .copied()
        .find(|format| matches!(format, AV_SAMPLE_FMT_FLTP | AV_SAMPLE_FMT_FLT))
        .unwrap_or(supported[0])
}

/// The encoder, the resampler between the decoder and it, and the sample FIFO that cuts the
/// resampled audio into the encoder's frame size. Set up on the first decoded frame, when the
/// decoder's real output format is known (as the CLI sets its encoders up).
struct Encoding {
    output: Output,
    encoder: CodecContext,
    swr: *mut ffi::SwrContext,
    /// The format the resampler was set up for: a decoder that changes it mid-stream gets a new
    /// resampler.
    swr_in: (ffi::AVSampleFormat, c_int, Layout),
    fifo: *mut ffi::AVAudioFifo,
    frame_size: c_int,
    /// The timestamp (in 1/output rate) of the next sample when none is known.
    next_pts: i64,
    /// The samples in the FIFO as runs with the timestamp of their first sample: an encoder
    /// frame takes the timestamp of its first sample, as the CLI's buffer sink gives it.
    runs: std::collections::VecDeque<(i64, c_int)>,
    /// The resampler's output timestamp for a flush (the CLI's `aresample` `next_pts`).
    flush_pts: i64,
    packet: Packet,
}

impl Drop for Encoding {
    fn drop(&mut self) {
        // SAFETY: ours, freed once.
        unsafe {
            ffi::swr_free(&mut self.swr);
            if !self.fifo.is_null() {
                ffi::av_audio_fifo_free(self.fifo);
            }
        }
    }
}

/// Frame size for encoders that take any (PCM): bounded chunks of the FIFO.
const VARIABLE_FRAME_SAMPLES: c_int = 4096;

impl Encoding {
    fn start(
        target: TranscodeTarget,
        sample_rate: Option<u32>,
        channels: Option<u32>,
        first: &ffi::AVFrame,
        output_path: &Path,
    ) -> Result<Encoding, MediaError> {
        let name = CString::new(encoder_of(target)).expect("encoder names have no NUL");
        // SAFETY: lookups of static codec descriptions.
        let codec = unsafe { ffi::avcodec_find_encoder_by_name(name.as_ptr()) };
        if codec.is_null() {
            return Err(MediaError::new(
                ErrorClass::ExtractFailed,
                format!("libavcodec has no {} encoder", encoder_of(target)),
            ));
        }
        // SAFETY: the frame's format is an AVSampleFormat (decoded audio).
        let decoded_format =
            unsafe { std::mem::transmute::<c_int, ffi::AVSampleFormat>(first.format) };
        let (formats, rates, layouts, capabilities) = unsafe {
            let codec = &*codec;
            let mut layouts = Vec::new();
            if !codec.ch_layouts.is_null() {
                let mut at = codec.ch_layouts;
                while (*at).nb_channels != 0 {
                    layouts.push(at);
                    at = at.add(1);
                }
            }
            (
                terminated(codec.sample_fmts, ffi::AVSampleFormat::AV_SAMPLE_FMT_NONE),
                terminated(codec.supported_samplerates, 0),
                layouts,
                codec.capabilities as u32,
            )
        };
        let sample_format = match target {
            // 16-bit FLAC and WAV, as narra's plan asks (`-sample_fmt s16`, pcm_s16le).
            TranscodeTarget::Flac | TranscodeTarget::Wav => ffi::AVSampleFormat::AV_SAMPLE_FMT_S16,
            TranscodeTarget::Opus | TranscodeTarget::Mp3 => {
                pick_sample_format(&formats, decoded_format)
            }
        };
        let wanted_rate = sample_rate
            .map(|rate| rate as c_int)
            .unwrap_or(first.sample_rate);
        let rate = pick_sample_rate(&rates, wanted_rate);
        let mut layout = match channels {
            Some(count) => Layout::default_for(count as c_int),
            None => Layout::usable(&first.ch_layout),
        };
        // An encoder with a list of layouts (libmp3lame: mono, stereo) gets one of them: the
        // same channel count if listed, else the listed one with the most channels.
        if !layouts.is_empty()
            && !layouts
                .iter()
                .any(|&listed| layout.same_as(unsafe { &*listed }))
        {
            // SAFETY: entries of the encoder's static list.
            let listed: Vec<&ffi::AVChannelLayout> =
                layouts.iter().map(|&listed| unsafe { &*listed }).collect();
            let pick = listed
                .iter()
                .find(|listed| listed.nb_channels == layout.0.nb_channels)
                .or_else(|| listed.iter().max_by_key(|listed| listed.nb_channels))
                .expect("a non-empty list");
            layout = Layout::copy_of(pick);
        }

        let mut output = Output::create(transcode_muxer(target), output_path)?;
        // SAFETY: a fresh encoder context, configured then opened; all pointers are ours.
        let encoder = unsafe {
            let encoder = CodecContext(ffi::avcodec_alloc_context3(codec));
            assert!(!encoder.0.is_null(), "avcodec_alloc_context3");
            let ctx = &mut *encoder.0;
            ctx.sample_fmt = sample_format;
            ctx.sample_rate = rate;
            ffi::av_channel_layout_copy(&mut ctx.ch_layout, &layout.0);
            ctx.time_base = ffi::AVRational { num: 1, den: rate };
            ctx.thread_count = 1;
            ctx.flags |= ffi::AV_CODEC_FLAG_BITEXACT as c_int;
            if (*(*output.ctx).oformat).flags & ffi::AVFMT_GLOBALHEADER != 0 {
                ctx.flags |= ffi::AV_CODEC_FLAG_GLOBAL_HEADER as c_int;
            }
            let opened = ffi::avcodec_open2(encoder.0, codec, ptr::null_mut());
            if opened < 0 {
                return Err(write_failure(
                    opened,
                    &format!("opening the {} encoder", encoder_of(target)),
                ));
            }
            encoder
        };
        let ost = output.new_stream();
        // SAFETY: the opened encoder's parameters into the new stream.
        unsafe {
            let copied = ffi::avcodec_parameters_from_context((*ost).codecpar, encoder.0);
            if copied < 0 {
                return Err(MediaError::new(ErrorClass::Internal, av_error_text(copied)));
            }
            (*(*ost).codecpar).codec_tag = 0;
            (*ost).time_base = (*encoder.0).time_base;
            // The one tag the CLI writes on an encoded stream, in its bit-exact form (no version):
            // the Ogg/Opus comment header and the MP3 LAME header carry it, so the same bytes as
            // the ffmpeg program's come out.
            let encoder_id = CString::new(format!("Lavc {}", encoder_of(target)))
                .expect("encoder names have no NUL");
            ffi::av_dict_set(
                &mut (*ost).metadata,
                c"encoder".as_ptr(),
                encoder_id.as_ptr(),
                0,
            );
        }
        match target {
            // RF64 only when the file outgrows what a plain WAV header can say.
            TranscodeTarget::Wav => output.write_header(&[("rf64", "auto")])?,
            _ => output.write_header(&[])?,
        }
        // SAFETY: the opened encoder's fields.
        let (frame_size, fixed) = unsafe {
            let size = (*encoder.0).frame_size;
            let variable = capabilities & ffi::AV_CODEC_CAP_VARIABLE_FRAME_SIZE != 0;
            (size, !variable && size > 0)
        };
        let frame_size = if fixed {
            frame_size
        } else {
            VARIABLE_FRAME_SAMPLES
        };
        // SAFETY: allocation for the encoder's format and channel count.
        let fifo = unsafe {
            ffi::av_audio_fifo_alloc(sample_format, layout.0.nb_channels, frame_size * 2)
        };
        assert!(!fifo.is_null(), "av_audio_fifo_alloc");
        let mut encoding = Encoding {
            output,
            encoder,
            swr: ptr::null_mut(),
            swr_in: (
                decoded_format,
                first.sample_rate,
                Layout::usable(&first.ch_layout),
            ),
            fifo,
            frame_size,
            next_pts: 0,
            runs: std::collections::VecDeque::new(),
            flush_pts: ffi::AV_NOPTS_VALUE,
            packet: Packet::new(),
        };
        encoding.new_resampler()?;
        Ok(encoding)
    }

    fn new_resampler(&mut self) -> Result<(), MediaError> {
        // SAFETY: the old resampler (if any) is freed; the new one is set up from our layouts.
        unsafe {
            ffi::swr_free(&mut self.swr);
            let enc = &*self.encoder.0;
            let mut out_layout = Layout::copy_of(&enc.ch_layout);
            let mut in_layout = Layout::copy_of(&self.swr_in.2.0);
            let made = ffi::swr_alloc_set_opts2(
                &mut self.swr,
                &mut out_layout.0,
                enc.sample_fmt,
                enc.sample_rate,
                &mut in_layout.0,
                self.swr_in.0,
                self.swr_in.1,
                0,
                ptr::null_mut(),
            );
            if made < 0 || ffi::swr_init(self.swr) < 0 {
                return Err(MediaError::new(
                    ErrorClass::ExtractFailed,
                    format!(
                        "cannot convert the decoded audio for the encoder: {}",
                        log::tail(&log::take())
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Resamples a decoded frame into the FIFO and encodes the full frames it then holds.
    /// `pts`: the frame's timestamp in 1/its sample rate, or AV_NOPTS_VALUE.
    fn push(&mut self, frame: &ffi::AVFrame, pts: i64) -> Result<(), MediaError> {
        self.resample(Some((frame, pts)))?;
        self.encode_full_frames()
    }

    /// Resamples a decoded frame (or, for `None`, what the resampler still holds) into the FIFO;
    /// returns the samples added.
    fn resample(&mut self, frame: Option<(&ffi::AVFrame, i64)>) -> Result<c_int, MediaError> {
        if let Some((frame, _)) = frame {
            // SAFETY: decoded audio's format is an AVSampleFormat.
            let format = unsafe { std::mem::transmute::<c_int, ffi::AVSampleFormat>(frame.format) };
            let layout = Layout::usable(&frame.ch_layout);
            if format != self.swr_in.0
                || frame.sample_rate != self.swr_in.1
                || !layout.same_as(&self.swr_in.2.0)
            {
                // The decoder changed its output (a new AAC configuration, ...): what the old
                // resampler holds goes out first, then a new one takes over, as the CLI
                // reconfigures its filters.
                self.drain_resampler()?;
                self.swr_in = (format, frame.sample_rate, layout);
                self.new_resampler()?;
            }
        }
        // SAFETY: the resampler, FIFO and buffers are ours; sizes come from swr itself.
        unsafe {
            let (input, in_count) = match frame {
                Some((frame, _)) => (frame.extended_data as *mut *const u8, frame.nb_samples),
                None => (ptr::null_mut(), 0),
            };
            // The output timestamp as the CLI's `aresample` computes it: the input's, less the
            // resampler's delay, in 1/output rate (`swr_next_pts` before converting).
            let in_rate = i64::from(self.swr_in.1);
            let out_rate = i64::from((*self.encoder.0).sample_rate);
            let out_pts = match frame {
                Some((_, pts)) if pts != ffi::AV_NOPTS_VALUE => {
                    let next = ffi::swr_next_pts(self.swr, pts * out_rate);
                    let half = in_rate / 2;
                    let rounded = if next >= 0 {
                        (next + half) / in_rate
                    } else {
                        (next - half) / in_rate
                    };
                    self.flush_pts = rounded;
                    rounded
                }
                Some(_) => ffi::AV_NOPTS_VALUE,
                None => self.flush_pts,
            };
            let capacity = ffi::swr_get_out_samples(self.swr, in_count);
            if capacity <= 0 {
                return Ok(0);
            }
            let out = Frame::new();
            let enc = &*self.encoder.0;
            (*out.0).format = enc.sample_fmt as c_int;
            (*out.0).sample_rate = enc.sample_rate;
            ffi::av_channel_layout_copy(&mut (*out.0).ch_layout, &enc.ch_layout);
            (*out.0).nb_samples = capacity;
            if ffi::av_frame_get_buffer(out.0, 0) < 0 {
                return Err(MediaError::new(
                    ErrorClass::Internal,
                    "out of memory for audio",
                ));
            }
            let converted =
                ffi::swr_convert(self.swr, (*out.0).extended_data, capacity, input, in_count);
            if converted < 0 {
                return Err(MediaError::new(
                    ErrorClass::ExtractFailed,
                    format!("resampling failed: {}", av_error_text(converted)),
                ));
            }
            if converted > 0
                && ffi::av_audio_fifo_write(
                    self.fifo,
                    (*out.0).extended_data as *mut *mut c_void,
                    converted,
                ) < converted
            {
                return Err(MediaError::new(
                    ErrorClass::Internal,
                    "out of memory for audio",
                ));
            }
            if converted > 0 {
                self.runs.push_back((out_pts, converted));
                if out_pts != ffi::AV_NOPTS_VALUE && frame.is_none() {
                    self.flush_pts = out_pts + i64::from(converted);
                }
            }
            Ok(converted)
        }
    }

    /// Flushes what the resampler holds (its filter delay) into the FIFO.
    fn drain_resampler(&mut self) -> Result<(), MediaError> {
        while self.resample(None)? > 0 {
            self.encode_full_frames()?;
        }
        Ok(())
    }

    fn encode_full_frames(&mut self) -> Result<(), MediaError> {
        // SAFETY: a FIFO we own.
        while unsafe { ffi::av_audio_fifo_size(self.fifo) } >= self.frame_size {
            self.encode_from_fifo(self.frame_size, self.frame_size)?;
        }
        Ok(())
    }

    /// Sends `samples` from the FIFO as one frame of `frame_samples` (the rest silence).
    fn encode_from_fifo(&mut self, samples: c_int, frame_samples: c_int) -> Result<(), MediaError> {
        let frame = Frame::new();
        // SAFETY: a frame we fill from our FIFO and hand to our encoder.
        unsafe {
            let enc = &*self.encoder.0;
            (*frame.0).format = enc.sample_fmt as c_int;
            (*frame.0).sample_rate = enc.sample_rate;
            ffi::av_channel_layout_copy(&mut (*frame.0).ch_layout, &enc.ch_layout);
            (*frame.0).nb_samples = frame_samples;
            if ffi::av_frame_get_buffer(frame.0, 0) < 0 {
                return Err(MediaError::new(
                    ErrorClass::Internal,
                    "out of memory for audio",
                ));
            }
            let read = ffi::av_audio_fifo_read(
                self.fifo,
                (*frame.0).extended_data as *mut *mut c_void,
                samples,
            );
            if read < samples {
                return Err(MediaError::new(
                    ErrorClass::Internal,
                    "the sample FIFO came up short",
                ));
            }
            if frame_samples > samples {
                ffi::av_samples_set_silence(
                    (*frame.0).extended_data,
                    samples,
                    frame_samples - samples,
                    enc.ch_layout.nb_channels,
                    enc.sample_fmt,
                );
            }
            (*frame.0).pts = self.take_pts(samples);
            self.next_pts = (*frame.0).pts + i64::from(frame_samples);
        }
        self.send(Some(&frame))
    }

    /// The timestamp of the FIFO's first sample, with `samples` of the runs consumed.
    fn take_pts(&mut self, samples: c_int) -> i64 {
        let pts = match self.runs.front() {
            Some(&(pts, _)) if pts != ffi::AV_NOPTS_VALUE => pts,
            _ => self.next_pts,
        };
        let mut left = samples;
        while left > 0 {
            let Some(run) = self.runs.front_mut() else {
                break;
            };
            let taken = left.min(run.1);
            run.1 -= taken;
            if run.0 != ffi::AV_NOPTS_VALUE {
                run.0 += i64::from(taken);
            }
            left -= taken;
            if run.1 == 0 {
                self.runs.pop_front();
            }
        }
        pts
    }

    /// Sends a frame (or the end) to the encoder and writes every packet it has ready.
    fn send(&mut self, frame: Option<&Frame>) -> Result<(), MediaError> {
        let frame = frame.map_or(ptr::null(), |frame| frame.0 as *const _);
        // SAFETY: our encoder; the frame stays ours (the encoder references it).
        let sent = unsafe { ffi::avcodec_send_frame(self.encoder.0, frame) };
        if sent < 0 && sent != ffi::AVERROR_EOF {
            return Err(write_failure(sent, "encoding the audio"));
        }
        self.write_packets()
    }

    fn write_packets(&mut self) -> Result<(), MediaError> {
        loop {
            // SAFETY: our encoder and packet.
            let received = unsafe { ffi::avcodec_receive_packet(self.encoder.0, self.packet.0) };
            if received == averror(libc::EAGAIN) || received == ffi::AVERROR_EOF {
                return Ok(());
            }
            if received < 0 {
                return Err(write_failure(received, "encoding the audio"));
            }
            // SAFETY: a packet just received, in the encoder's time base.
            unsafe {
                ffi::av_packet_rescale_ts(
                    self.packet.0,
                    (*self.encoder.0).time_base,
                    (*self.output.stream()).time_base,
                );
            }
            let packet = self.packet.0;
            self.output.write(packet)?;
        }
    }

    /// The end: what the resampler holds, the FIFO's last samples (a short frame where the
    /// encoder allows it, else padded), the encoder's delay, then the trailer.
    fn finish(mut self, progress: &mut dyn FnMut(u64)) -> Result<Written, MediaError> {
        self.drain_resampler()?;
        self.encode_full_frames()?;
        // SAFETY: our FIFO and encoder.
        let (left, small_last) = unsafe {
            let codec = &*(*self.encoder.0).codec;
            let capabilities = codec.capabilities as u32;
            (
                ffi::av_audio_fifo_size(self.fifo),
                capabilities
                    & (ffi::AV_CODEC_CAP_SMALL_LAST_FRAME | ffi::AV_CODEC_CAP_VARIABLE_FRAME_SIZE)
                    != 0,
            )
        };
        if left > 0 {
            let frame_samples = if small_last { left } else { self.frame_size };
            self.encode_from_fifo(left, frame_samples)?;
        }
        self.send(None)?;
        // SAFETY: our encoder's settings.
        let (codec_name, sample_rate, channels) = unsafe {
            let enc = &*self.encoder.0;
            (
                c_text(ffi::avcodec_get_name(enc.codec_id)).unwrap_or_default(),
                enc.sample_rate as u32,
                enc.ch_layout.nb_channels as u32,
            )
        };
        // Output is moved out of self: Encoding's Drop still frees the resampler and FIFO.
        let output = std::mem::replace(
            &mut self.output,
            Output {
                ctx: ptr::null_mut(),
                description: String::new(),
                reported: 0,
                packets: 0,
            },
        );
        let (bytes, packets) = output.finish(progress)?;
        Ok(Written {
            bytes,
            packets,
            codec_name,
            sample_rate,
            channels,
        })
    }
}

#[allow(clippy::too_many_arguments)]
fn transcode(
    input: &Input,
    ist: *mut ffi::AVStream,
    target: TranscodeTarget,
    sample_rate: Option<u32>,
    channels: Option<u32>,
    output_path: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<Written, MediaError> {
    // SAFETY: the input stream's parameters, read; a decoder context of our own.
    let (decoder, index) = unsafe {
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
        let decoder = CodecContext(ffi::avcodec_alloc_context3(codec));
        assert!(!decoder.0.is_null(), "avcodec_alloc_context3");
        let copied = ffi::avcodec_parameters_to_context(decoder.0, par);
        if copied < 0 {
            return Err(MediaError::new(ErrorClass::Internal, av_error_text(copied)));
        }
        (*decoder.0).pkt_timebase = (*ist).time_base;
        (*decoder.0).thread_count = 1;
        let opened = ffi::avcodec_open2(decoder.0, codec, ptr::null_mut());
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
    // SAFETY: plain field reads of opened contexts.
    let (offset, ist_tb) = unsafe {
        let start = (*input.ctx).start_time;
        let offset = if start == ffi::AV_NOPTS_VALUE {
            0
        } else {
            ffi::av_rescale_q(-start, TIME_BASE_Q, (*ist).time_base)
        };
        (offset, (*ist).time_base)
    };
    let mut last = ffi::AV_NOPTS_VALUE;
    let mut prev_pkt_pts = ffi::AV_NOPTS_VALUE;
    let packet = Packet::new();
    let frame = Frame::new();
    let mut encoding: Option<Encoding> = None;
    let mut ended = false;
    while !ended {
        let sent = match next_packet(input, ist, &packet)? {
            // SAFETY: our decoder; the packet is referenced by it, then unreferenced by us.
            Some(()) => unsafe {
                let pkt = &mut *packet.0;
                if pkt.pts != ffi::AV_NOPTS_VALUE {
                    pkt.pts += offset;
                }
                if pkt.dts != ffi::AV_NOPTS_VALUE {
                    pkt.dts += offset;
                }
                // The CLI restarts its sample-accurate timestamps after a gap between packets.
                if pkt.duration > 0
                    && prev_pkt_pts != ffi::AV_NOPTS_VALUE
                    && pkt.pts != ffi::AV_NOPTS_VALUE
                    && pkt.pts - prev_pkt_pts > pkt.duration
                {
                    last = ffi::AV_NOPTS_VALUE;
                }
                prev_pkt_pts = pkt.pts;
                let sent = ffi::avcodec_send_packet(decoder.0, packet.0);
                ffi::av_packet_unref(packet.0);
                sent
            },
            None => {
                ended = true;
                // SAFETY: NULL enters draining mode.
                unsafe { ffi::avcodec_send_packet(decoder.0, ptr::null()) }
            }
        };
        if sent < 0 && sent != ffi::AVERROR_EOF {
            return Err(decode_failure(index, sent));
        }
        loop {
            // SAFETY: our decoder and frame.
            let received = unsafe { ffi::avcodec_receive_frame(decoder.0, frame.0) };
            if received == averror(libc::EAGAIN) || received == ffi::AVERROR_EOF {
                break;
            }
            if received < 0 {
                return Err(decode_failure(index, received));
            }
            // SAFETY: a frame just decoded.
            let decoded = unsafe { &*frame.0 };
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
            unsafe { ffi::av_frame_unref(frame.0) };
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
