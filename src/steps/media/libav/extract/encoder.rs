//! The encoding half of a transcode: the encoder, set up on the first decoded frame as the CLI
//! sets its encoders up; the resampler (swresample) between the decoder and it, remade when the
//! decoder's output changes; and the sample FIFO that cuts the resampled audio into the
//! encoder's frame size, each frame timed as the CLI's `aresample` and buffer sink time it. It
//! never reads the input: the decoder loop hands it frames.

use std::ffi::{CString, c_int, c_void};
use std::path::Path;
use std::ptr;

use ffmpeg_next::packet::Mut as _;
use ffmpeg_next::{Codec, Packet, codec, ffi, frame};

use super::formats::{Layout, pick_sample_format, pick_sample_rate, terminated};
use super::output::Output;
use super::{Written, averror, write_failure};
use crate::model::ErrorClass;
use crate::steps::extract::{encoder_of, transcode_muxer};
use crate::steps::media::libav::{MediaError, av_error_text, c_text, log};
use crate::workflow::TranscodeTarget;

/// The encoder, the resampler between the decoder and it, and the sample FIFO that cuts the
/// resampled audio into the encoder's frame size. Set up on the first decoded frame, when the
/// decoder's real output format is known (as the CLI sets its encoders up).
pub(super) struct Encoding {
    pub(super) output: Output,
    encoder: codec::Context,
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
    /// The opened encoder's settings (format, rate, layout, time base).
    fn settings(&self) -> &ffi::AVCodecContext {
        // SAFETY: a context we allocated; it lives as long as `self`.
        unsafe { &*self.encoder.as_ptr() }
    }

    /// An empty frame of `samples` in the encoder's format, rate and layout, its buffers
    /// allocated.
    fn encoder_frame(&self, samples: c_int) -> Result<frame::Audio, MediaError> {
        let mut frame = frame::Audio::empty();
        let enc = self.settings();
        // SAFETY: a fresh frame of ours, described then given its buffers.
        unsafe {
            let out = frame.as_mut_ptr();
            (*out).format = enc.sample_fmt as c_int;
            (*out).sample_rate = enc.sample_rate;
            ffi::av_channel_layout_copy(&mut (*out).ch_layout, &enc.ch_layout);
            (*out).nb_samples = samples;
            if ffi::av_frame_get_buffer(out, 0) < 0 {
                return Err(MediaError::new(
                    ErrorClass::Internal,
                    "out of memory for audio",
                ));
            }
        }
        Ok(frame)
    }

    pub(super) fn start(
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
            let mut encoder = codec::Context::new_with_codec(Codec::wrap(codec));
            assert!(!encoder.as_ptr().is_null(), "avcodec_alloc_context3");
            let ctx = &mut *encoder.as_mut_ptr();
            ctx.sample_fmt = sample_format;
            ctx.sample_rate = rate;
            ffi::av_channel_layout_copy(&mut ctx.ch_layout, &layout.0);
            ctx.time_base = ffi::AVRational { num: 1, den: rate };
            ctx.thread_count = 1;
            ctx.flags |= ffi::AV_CODEC_FLAG_BITEXACT as c_int;
            if (*(*output.ctx).oformat).flags & ffi::AVFMT_GLOBALHEADER != 0 {
                ctx.flags |= ffi::AV_CODEC_FLAG_GLOBAL_HEADER as c_int;
            }
            let opened = ffi::avcodec_open2(encoder.as_mut_ptr(), codec, ptr::null_mut());
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
            let copied = ffi::avcodec_parameters_from_context((*ost).codecpar, encoder.as_ptr());
            if copied < 0 {
                return Err(MediaError::new(ErrorClass::Internal, av_error_text(copied)));
            }
            (*(*ost).codecpar).codec_tag = 0;
            (*ost).time_base = (*encoder.as_ptr()).time_base;
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
            let size = (*encoder.as_ptr()).frame_size;
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
            packet: Packet::empty(),
        };
        encoding.new_resampler()?;
        Ok(encoding)
    }

    fn new_resampler(&mut self) -> Result<(), MediaError> {
        // SAFETY: the old resampler (if any) is freed; the new one is set up from our layouts.
        unsafe {
            ffi::swr_free(&mut self.swr);
            let enc = self.settings();
            let (out_format, out_rate) = (enc.sample_fmt, enc.sample_rate);
            let mut out_layout = Layout::copy_of(&enc.ch_layout);
            let mut in_layout = Layout::copy_of(&self.swr_in.2.0);
            let made = ffi::swr_alloc_set_opts2(
                &mut self.swr,
                &mut out_layout.0,
                out_format,
                out_rate,
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
    pub(super) fn push(&mut self, frame: &ffi::AVFrame, pts: i64) -> Result<(), MediaError> {
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
            let out_rate = i64::from(self.settings().sample_rate);
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
            let mut converted_frame = self.encoder_frame(capacity)?;
            let out = &mut *converted_frame.as_mut_ptr();
            let converted =
                ffi::swr_convert(self.swr, out.extended_data, capacity, input, in_count);
            if converted < 0 {
                return Err(MediaError::new(
                    ErrorClass::ExtractFailed,
                    format!("resampling failed: {}", av_error_text(converted)),
                ));
            }
            if converted > 0
                && ffi::av_audio_fifo_write(
                    self.fifo,
                    out.extended_data as *mut *mut c_void,
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
        let mut frame = self.encoder_frame(frame_samples)?;
        // SAFETY: a frame we fill from our FIFO and hand to our encoder.
        unsafe {
            let out = &mut *frame.as_mut_ptr();
            let read =
                ffi::av_audio_fifo_read(self.fifo, out.extended_data as *mut *mut c_void, samples);
            if read < samples {
                return Err(MediaError::new(
                    ErrorClass::Internal,
                    "the sample FIFO came up short",
                ));
            }
            if frame_samples > samples {
                let enc = self.settings();
                ffi::av_samples_set_silence(
                    out.extended_data,
                    samples,
                    frame_samples - samples,
                    enc.ch_layout.nb_channels,
                    enc.sample_fmt,
                );
            }
            out.pts = self.take_pts(samples);
            self.next_pts = out.pts + i64::from(frame_samples);
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
    fn send(&mut self, frame: Option<&frame::Audio>) -> Result<(), MediaError> {
        // SAFETY: a pointer to a frame that outlives the call.
        let frame = frame.map_or(ptr::null(), |frame| unsafe { frame.as_ptr() });
        // SAFETY: our encoder; the frame stays ours (the encoder references it).
        let sent = unsafe { ffi::avcodec_send_frame(self.encoder.as_mut_ptr(), frame) };
        if sent < 0 && sent != ffi::AVERROR_EOF {
            return Err(write_failure(sent, "encoding the audio"));
        }
        self.write_packets()
    }

    fn write_packets(&mut self) -> Result<(), MediaError> {
        loop {
            // SAFETY: our encoder and packet.
            let received = unsafe {
                ffi::avcodec_receive_packet(self.encoder.as_mut_ptr(), self.packet.as_mut_ptr())
            };
            if received == averror(libc::EAGAIN) || received == ffi::AVERROR_EOF {
                return Ok(());
            }
            if received < 0 {
                return Err(write_failure(received, "encoding the audio"));
            }
            // SAFETY: a packet just received, in the encoder's time base.
            unsafe {
                ffi::av_packet_rescale_ts(
                    self.packet.as_mut_ptr(),
                    self.settings().time_base,
                    (*self.output.stream()).time_base,
                );
            }
            self.output.write(&mut self.packet)?;
        }
    }

    /// The end: what the resampler holds, the FIFO's last samples (a short frame where the
    /// encoder allows it, else padded), the encoder's delay, then the trailer.
    pub(super) fn finish(mut self, progress: &mut dyn FnMut(u64)) -> Result<Written, MediaError> {
        self.drain_resampler()?;
        self.encode_full_frames()?;
        // SAFETY: our FIFO and encoder.
        let (left, small_last) = unsafe {
            let codec = &*self.settings().codec;
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
            let enc = self.settings();
            (
                c_text(ffi::avcodec_get_name(enc.codec_id)).unwrap_or_default(),
                enc.sample_rate as u32,
                enc.ch_layout.nb_channels as u32,
            )
        };
        // Output is moved out of self: Encoding's Drop still frees the resampler and FIFO.
        let output = std::mem::replace(&mut self.output, Output::taken());
        output.finish(progress, codec_name, sample_rate, channels)
    }
}
