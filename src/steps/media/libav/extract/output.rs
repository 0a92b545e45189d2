//! The output file: a muxer on a new file (the `file` protocol only, bit-exact), its one stream,
//! header, packets and trailer, and the bytes written so far for progress. It never reads the
//! input nor encodes: copy and transcode hand it packets in its stream's time base.

use std::ffi::CString;
use std::path::Path;
use std::ptr;

use ffmpeg_next::packet::Mut as _;
use ffmpeg_next::{Packet, ffi};

use super::{Written, write_failure};
use crate::model::ErrorClass;
use crate::steps::media::libav::{MediaError, Options, av_error_text, file_url};

/// The output file: a muxer context and its file, closed (and freed) on drop.
pub(super) struct Output {
    pub(super) ctx: *mut ffi::AVFormatContext,
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
    pub(super) fn create(muxer: &str, path: &Path) -> Result<Output, MediaError> {
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

    /// An output with no context, left behind where an output is moved out of an owner that
    /// has a `Drop` of its own.
    pub(super) fn taken() -> Output {
        Output {
            ctx: ptr::null_mut(),
            description: String::new(),
            reported: 0,
            packets: 0,
        }
    }

    pub(super) fn new_stream(&mut self) -> *mut ffi::AVStream {
        // SAFETY: a context being set up; NULL only on OOM.
        let stream = unsafe { ffi::avformat_new_stream(self.ctx, ptr::null()) };
        assert!(!stream.is_null(), "avformat_new_stream");
        stream
    }

    pub(super) fn stream(&self) -> *mut ffi::AVStream {
        // SAFETY: called after new_stream: stream 0 exists.
        unsafe { *(*self.ctx).streams }
    }

    pub(super) fn write_header(&mut self, pairs: &[(&str, &str)]) -> Result<(), MediaError> {
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
    pub(super) fn write(&mut self, packet: &mut Packet) -> Result<(), MediaError> {
        // SAFETY: a packet ours to give; the muxer takes its reference.
        let written = unsafe {
            let packet = packet.as_mut_ptr();
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

    pub(super) fn report(&mut self, progress: &mut dyn FnMut(u64)) {
        let position = self.position();
        if position > self.reported {
            self.reported = position;
            progress(position);
        }
    }

    /// The trailer, and the file flushed and closed; a write error that only shows at the flush
    /// (a full disk) is caught here. `codec_name`, `sample_rate` and `channels` describe the
    /// written stream in what this returns.
    pub(super) fn finish(
        mut self,
        progress: &mut dyn FnMut(u64),
        codec_name: String,
        sample_rate: u32,
        channels: u32,
    ) -> Result<Written, MediaError> {
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
        Ok(Written {
            bytes: size,
            packets: self.packets,
            codec_name,
            sample_rate,
            channels,
            warnings: Vec::new(),
        })
    }
}
