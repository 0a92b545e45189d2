//! libav's messages as data: a log callback keeps the lines of warning level and worse (what
//! narra's CLI path sees at `-loglevel warning`) in a bounded per-thread buffer, and `judge`
//! classifies them with the same patterns as narra's `diagnosis` module, so the helper and the
//! programs give the same class for the same input.
//!
//! Per thread, because the work runs on the calling thread (decoders are single-threaded) and
//! tests run in parallel: a global buffer would mix their lines.

use std::cell::RefCell;
use std::ffi::{CStr, c_char, c_int, c_void};

use ffmpeg_next::ffi;

use super::MediaError;
use crate::steps::extract::diagnosis::{diagnose, without_addresses};

/// The most lines kept, and the longest kept line: a hostile file cannot make the buffer grow.
const LINES_MAX: usize = 64;
const LINE_BYTES_MAX: usize = 1024;

thread_local! {
    static LINES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

pub(super) fn install() {
    // SAFETY: the callback is a plain function that lives for the whole process.
    unsafe {
        ffi::av_log_set_level(ffi::AV_LOG_WARNING);
        ffi::av_log_set_callback(Some(callback));
    }
}

unsafe extern "C" fn callback(
    avcl: *mut c_void,
    level: c_int,
    fmt: *const c_char,
    args: *mut ffi::__va_list_tag,
) {
    if level > ffi::AV_LOG_WARNING {
        return;
    }
    let mut line = [0 as c_char; LINE_BYTES_MAX];
    // A fresh prefix flag per message: every kept line names its source (`[mov,mp4,... @ 0x…]`).
    let mut print_prefix: c_int = 1;
    // SAFETY: av_log_format_line2 formats into `line`, NUL-terminated and truncated to its size.
    let line = unsafe {
        ffi::av_log_format_line2(
            avcl,
            level,
            fmt,
            args,
            line.as_mut_ptr(),
            line.len() as c_int,
            &mut print_prefix,
        );
        CStr::from_ptr(line.as_ptr()).to_string_lossy().into_owned()
    };
    let line = line.trim_end().to_string();
    if line.is_empty() {
        return;
    }
    // try_with: a message logged while the thread's storage is torn down is dropped.
    let _ = LINES.try_with(|lines| {
        if let Ok(mut lines) = lines.try_borrow_mut() {
            if lines.len() >= LINES_MAX {
                lines.remove(0);
            }
            lines.push(line);
        }
    });
}

/// The lines captured on this thread since the last call, which starts a new capture.
pub(super) fn take() -> Vec<String> {
    LINES.with(|lines| std::mem::take(&mut *lines.borrow_mut()))
}

/// Drops what this thread captured before a new piece of work.
pub(super) fn clear() {
    let _ = take();
}

/// The error the lines amount to, if one of narra's diagnosis patterns (the table the programs'
/// messages are judged by: one table for both paths) matches. `failed`: the operation failed, so
/// the patterns that are harmless in a successful run count too. `during`: what was being done.
pub(super) fn judge(lines: &[String], failed: bool, during: &str) -> Option<MediaError> {
    let error = diagnose(&lines.join("\n"), failed)?.into_error("libav", Some(during));
    Some(MediaError::new(error.class, error.message))
}

/// The last lines, each without its object addresses (whole: the capture already bounds them),
/// for a failure no pattern explains.
pub(super) fn tail(lines: &[String]) -> String {
    let tail: Vec<String> = lines[lines.len().saturating_sub(3)..]
        .iter()
        .map(|line| without_addresses(line))
        .collect();
    if tail.is_empty() {
        "(no message)".to_string()
    } else {
        tail.join(" | ")
    }
}
