//! The in-process FFmpeg core of the media helper: what `ffprobe`, `ffmpeg` and the
//! read-back `ffprobe` do for the extract step, done inside one process through libavformat,
//! libavcodec and libswresample (the ffmpeg-next crate over the system's FFmpeg 5.1).
//!
//! What it owns:
//! - [`open_input`]: opening one local file behind the same hardening as the command lines: a
//!   `file:` URL (so `http:x` is a file name), `protocol_whitelist=file` and the demuxer whitelist
//!   [`FORMAT_WHITELIST`], so a playlist (hls) or a script (concat) named `clip.mp4` is refused as
//!   `unsupported_source` instead of making libavformat read other files or URLs.
//! - [`probe`] / [`probe_input`]: the input as JSON in ffprobe's `-show_format -show_streams`
//!   shape, so narra's `parse_probe` reads the same typed fields from it as from ffprobe.
//! - [`extract`]: one audio stream written as planned, packet by packet: a stream copy into a
//!   muxer ([`Plan::Copy`]) or a transcode with resampling and channel mixing ([`Plan::Transcode`]),
//!   bit-exact and without the source's metadata or chapters (the CLI's `-fflags +bitexact
//!   -flags +bitexact -map_metadata -1 -map_chapters -1`), reporting the bytes written as it goes.
//!   It writes the same bytes as narra's ffmpeg command line on the same machine (tested on the
//!   whole corpus, every copy and transcode), so a workflow that switches paths keeps its audio
//!   and its checksums; `extract`'s docs list what that takes.
//! - [`MediaError`]: every failure as one of narra's error class names (`corrupt_media`,
//!   `unsupported_source`, ...), decided as narra's CLI path decides it: by the same message
//!   patterns (libav's log lines are captured instead of stderr) and the same fallbacks.
//!
//! What it does not do: choose the stream or the plan (narra's `plan` module does, on the probe
//! JSON), judge the output against the source (narra's `validate_output`, on the output's
//! [`probe`]), run the helper process, sandbox it or time it out. All calls are synchronous and
//! single-threaded (decoders run with one thread), one request at a time on the calling thread:
//! libav's log lines are captured per thread (see `log`), so lines logged from another thread are
//! not seen.
//!
//! One decoder thread is also stricter than narra's CLI path at its default `threads = 2`:
//! ffmpeg's frame-threaded FLAC decoder does not report a damaged frame, this module does
//! (`corrupt_media`); with `-threads 1` both agree on every broken input of the tests.
//!
//! What the probe JSON (`raw` in narra's record) holds, compared with ffprobe's: the format's
//! `nb_streams`, `nb_programs`, `format_name`, `format_long_name`, `start_time`, `duration`,
//! `size`, `bit_rate`, `probe_score` and `tags` (no `filename`: narra drops it anyway); each
//! stream's `index`, `codec_name`, `codec_long_name`, `profile`, `codec_type`,
//! `codec_tag_string`, `codec_tag`, for video `width`, `height`, `pix_fmt`, `level`, for audio
//! `sample_fmt`, `sample_rate`, `channels`, `channel_layout`, `bits_per_sample`, then
//! `r_frame_rate`, `avg_frame_rate`, `time_base`, `start_pts`, `start_time`, `duration_ts`,
//! `duration`, `bit_rate`, `bits_per_raw_sample`, `nb_frames`, `extradata_size`, `disposition`
//! and `tags`, each printed as ffprobe prints it (numbers as strings where ffprobe quotes them,
//! absent where ffprobe would print `N/A`). Missing, because ffprobe computes them from a decoder
//! it opens or from its own bookkeeping: `coded_width`/`coded_height`, `closed_captions`,
//! `film_grain`, `has_b_frames`, aspect ratios, colour fields, `chroma_location`, `field_order`,
//! `refs`, `is_avc`, `nal_length_size`, `initial_padding`, `max_bit_rate`, `id`, `side_data_list`.
//!
//! The files: this one holds the public types and the small helpers; `log` captures libav's
//! messages and classifies them as narra's diagnosis does; `input` opens inputs; `probe` builds
//! the ffprobe-shaped JSON; `extract` writes the audio.

mod extract;
mod input;
mod log;
mod probe;

#[cfg(test)]
mod tests;

use std::ffi::{CStr, CString, c_char, c_int};

use ffmpeg_next::ffi;

use crate::model::ErrorClass;

pub use extract::{Written, extract};
pub use input::{Input, open_input};
pub use probe::{probe, probe_input};

/// A failure, as narra's error class and a
/// message for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{class}: {message}")]
pub struct MediaError {
    pub class: ErrorClass,
    pub message: String,
}

impl MediaError {
    pub(crate) fn new(class: ErrorClass, message: impl Into<String>) -> MediaError {
        MediaError {
            class,
            message: message.into(),
        }
    }
}

/// Sets libav up once per process: the log capture replaces libav's stderr printer, so the
/// helper's stderr stays quiet and messages become data.
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(log::install);
}

/// libav's text for an error code (`Invalid data found when processing input`).
pub(crate) fn av_error_text(code: c_int) -> String {
    let mut buf = [0 as c_char; 256];
    // SAFETY: av_strerror writes a NUL-terminated string of at most buf.len() bytes.
    unsafe {
        ffi::av_strerror(code, buf.as_mut_ptr(), buf.len());
        CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
    }
}

/// A C string libav owns, copied; `None` for NULL.
pub(crate) fn c_text(text: *const c_char) -> Option<String> {
    if text.is_null() {
        return None;
    }
    // SAFETY: libav's names and dictionary entries are NUL-terminated and outlive this call.
    Some(
        unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// A local path as a `file:` URL, so a file named like a protocol (`http:x`) is still a file.
pub(crate) fn file_url(path: &std::path::Path) -> Result<CString, MediaError> {
    use std::os::unix::ffi::OsStrExt;
    let mut url = b"file:".to_vec();
    url.extend_from_slice(path.as_os_str().as_bytes());
    CString::new(url).map_err(|_| {
        MediaError::new(
            ErrorClass::Internal,
            format!("the path {} holds a NUL byte", path.display()),
        )
    })
}

/// An owned AVDictionary built from pairs, freed on drop unless handed to libav.
pub(crate) struct Options(*mut ffi::AVDictionary);

impl Options {
    pub(crate) fn new(pairs: &[(&str, &str)]) -> Options {
        let mut dict = std::ptr::null_mut();
        for (key, value) in pairs {
            let key = CString::new(*key).expect("option names have no NUL");
            let value = CString::new(*value).expect("option values have no NUL");
            // SAFETY: av_dict_set copies both strings.
            unsafe { ffi::av_dict_set(&mut dict, key.as_ptr(), value.as_ptr(), 0) };
        }
        Options(dict)
    }

    pub(crate) fn as_mut_ptr(&mut self) -> *mut *mut ffi::AVDictionary {
        &mut self.0
    }

    /// The names of the options libav did not consume.
    pub(crate) fn leftover(&self) -> Vec<String> {
        dict_pairs(self.0).into_iter().map(|(key, _)| key).collect()
    }
}

impl Drop for Options {
    fn drop(&mut self) {
        // SAFETY: the dictionary is ours (libav hands back what it did not consume).
        unsafe { ffi::av_dict_free(&mut self.0) };
    }
}

/// A dictionary's entries in order.
pub(crate) fn dict_pairs(dict: *const ffi::AVDictionary) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut entry: *mut ffi::AVDictionaryEntry = std::ptr::null_mut();
    loop {
        // SAFETY: iterating with an empty key and IGNORE_SUFFIX visits every entry.
        entry = unsafe { ffi::av_dict_get(dict, c"".as_ptr(), entry, ffi::AV_DICT_IGNORE_SUFFIX) };
        if entry.is_null() {
            return pairs;
        }
        // SAFETY: a returned entry has NUL-terminated key and value.
        let (key, value) = unsafe { (c_text((*entry).key), c_text((*entry).value)) };
        pairs.push((key.unwrap_or_default(), value.unwrap_or_default()));
    }
}
