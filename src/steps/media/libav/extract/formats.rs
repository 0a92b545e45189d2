//! What the encoder is given, as the CLI's format negotiation gives it: the sample format, the
//! sample rate and the channel layout, chosen from what the decoder gives and what the encoder
//! lists. Pure choices and one owned channel layout; it opens nothing.

use std::ffi::c_int;

use ffmpeg_next::ffi;

/// An AVChannelLayout we own (uninit on drop).
pub(super) struct Layout(pub(super) ffi::AVChannelLayout);

impl Layout {
    pub(super) fn default_for(channels: c_int) -> Layout {
        // SAFETY: zeroed is a valid "unset" layout; av_channel_layout_default fills it.
        unsafe {
            let mut layout: ffi::AVChannelLayout = std::mem::zeroed();
            ffi::av_channel_layout_default(&mut layout, channels);
            Layout(layout)
        }
    }

    pub(super) fn copy_of(source: &ffi::AVChannelLayout) -> Layout {
        // SAFETY: copying into a zeroed layout; a custom layout's map is duplicated.
        unsafe {
            let mut layout: ffi::AVChannelLayout = std::mem::zeroed();
            ffi::av_channel_layout_copy(&mut layout, source);
            Layout(layout)
        }
    }

    /// `source`, or the default layout for its channel count when it names no order (WAV with
    /// only a channel count): swresample needs to know which channel is which.
    pub(super) fn usable(source: &ffi::AVChannelLayout) -> Layout {
        if source.order == ffi::AVChannelOrder::AV_CHANNEL_ORDER_UNSPEC {
            Layout::default_for(source.nb_channels)
        } else {
            Layout::copy_of(source)
        }
    }

    pub(super) fn same_as(&self, other: &ffi::AVChannelLayout) -> bool {
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
pub(in crate::steps::media::libav) fn pick_sample_rate(
    supported: &[c_int],
    wanted: c_int,
) -> c_int {
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
pub(super) unsafe fn terminated<T: Copy + PartialEq>(list: *const T, end: T) -> Vec<T> {
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
pub(super) fn pick_sample_format(
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
