//! Opening an input: one local file as a `file:` URL behind the protocol and demuxer whitelists,
//! its streams found (`avformat_find_stream_info`, as ffprobe and ffmpeg do), and its failures
//! and warnings classified as narra's ffprobe step classifies them.

use std::path::{Path, PathBuf};
use std::ptr;

use ffmpeg_next::ffi;

use super::{MediaError, Options, av_error_text, c_text, file_url, log};
use crate::model::ErrorClass;
use crate::steps::extract::FORMAT_WHITELIST;

/// An opened input: a demuxer on one file, its streams found. Extracting from it reads it to its
/// end, so an `Input` serves one extraction.
pub struct Input {
    pub(super) ctx: *mut ffi::AVFormatContext,
    pub(super) path: PathBuf,
    /// Set once an extraction has read packets: a second one would start mid-file.
    pub(super) consumed: bool,
}

impl Drop for Input {
    fn drop(&mut self) {
        // SAFETY: ctx came from avformat_open_input and is closed only here.
        unsafe { ffi::avformat_close_input(&mut self.ctx) };
    }
}

impl Input {
    /// The demuxer's name list, as ffprobe's `format_name` (`mov,mp4,m4a,3gp,3g2,mj2`).
    pub fn format_name(&self) -> String {
        // SAFETY: an opened context has its input format.
        c_text(unsafe { (*(*self.ctx).iformat).name }).unwrap_or_else(|| "unknown".into())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn streams(&self) -> &[*mut ffi::AVStream] {
        // SAFETY: streams holds nb_streams valid pointers for the context's life.
        unsafe {
            let ctx = &*self.ctx;
            if ctx.nb_streams == 0 || ctx.streams.is_null() {
                return &[];
            }
            std::slice::from_raw_parts(ctx.streams, ctx.nb_streams as usize)
        }
    }
}

/// Opens `path` for reading: `file:` URL, `protocol_whitelist=file`, `format_whitelist` =
/// [`FORMAT_WHITELIST`]. Refuses an empty file and a file with no stream as `corrupt_media`, a
/// format off the whitelist (an HLS playlist or concat script, whatever its name) as
/// `unsupported_source`, and, like narra's ffprobe step, a file whose opening logged damage.
pub fn open_input(path: &Path) -> Result<Input, MediaError> {
    super::init();
    let metadata = std::fs::metadata(path).map_err(|error| {
        MediaError::new(
            ErrorClass::ScratchError,
            format!("cannot inspect {}: {error}", path.display()),
        )
    })?;
    if metadata.is_file() && metadata.len() == 0 {
        return Err(MediaError::new(
            ErrorClass::CorruptMedia,
            "the file is empty (0 bytes): there is no media to read",
        ));
    }
    let url = file_url(path)?;
    let mut options = Options::new(&[
        ("protocol_whitelist", "file"),
        ("format_whitelist", FORMAT_WHITELIST),
        // What ffprobe and ffmpeg set for every input: MPEG-TS programs are all read, which
        // changes what find_stream_info sees (and so the probed fields).
        ("scan_all_pmts", "1"),
    ]);
    log::clear();
    let mut ctx = ptr::null_mut();
    // SAFETY: ctx is an out pointer; the URL and options outlive the call.
    let opened = unsafe {
        ffi::avformat_open_input(&mut ctx, url.as_ptr(), ptr::null(), options.as_mut_ptr())
    };
    if opened < 0 {
        return Err(open_failure(opened, &url_text(path), "opening the file"));
    }
    let input = Input {
        ctx,
        path: path.to_path_buf(),
        consumed: false,
    };
    // SAFETY: an opened context; NULL options as ffmpeg-next's own input() passes.
    let found = unsafe { ffi::avformat_find_stream_info(input.ctx, ptr::null_mut()) };
    if found < 0 {
        return Err(open_failure(found, &url_text(path), "reading its streams"));
    }
    // Messages of a successful open (a stream narra does not extract, a cut-off tail) are judged
    // as narra judges a successful ffprobe: only the patterns that count in a success.
    let lines = log::take();
    if let Some(error) = log::judge(&lines, false, "while opening the media") {
        return Err(error);
    }
    if input.streams().is_empty() {
        return Err(MediaError::new(
            ErrorClass::CorruptMedia,
            format!("no stream found in the {} file", input.format_name()),
        ));
    }
    Ok(input)
}

fn url_text(path: &Path) -> String {
    format!("file:{}", path.display())
}

/// A failed open as narra's failed ffprobe: a pattern in the messages, else `corrupt_media`.
fn open_failure(code: i32, url: &str, during: &str) -> MediaError {
    let mut lines = log::take();
    // The line the CLI itself prints for the failure (`file:x: Invalid data found ...`).
    lines.push(format!("{url}: {}", av_error_text(code)));
    log::judge(&lines, true, during).unwrap_or_else(|| {
        MediaError::new(
            ErrorClass::CorruptMedia,
            format!("cannot read the media ({during}): {}", log::tail(&lines)),
        )
    })
}
