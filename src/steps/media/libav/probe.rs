//! The input described as ffprobe's `-show_format -show_streams -of json` describes it, from the
//! same libavformat fields ffprobe prints (so narra's `parse_probe` gives the same typed record).
//! A written file is read back the same way, for narra's validation.
//!
//! Formatting follows ffprobe 5.1: times as `%f` seconds in strings, rates and bit rates as
//! decimal strings, fields ffprobe would print as `N/A` left out.

use std::path::Path;

use ffmpeg_next::ffi;
use serde_json::{Map, Value, json};

use super::{Input, MediaError, c_text, dict_pairs, open_input};

/// Probes the file at `path` (opened as [`open_input`] opens it).
pub fn probe(path: &Path) -> Result<Value, MediaError> {
    let input = open_input(path)?;
    Ok(probe_input(&input))
}

/// The opened input as ffprobe's JSON: `{"streams": [...], "format": {...}}`.
pub fn probe_input(input: &Input) -> Value {
    let streams: Vec<Value> = input.streams().iter().map(|&st| stream_json(st)).collect();
    json!({ "streams": streams, "format": format_json(input) })
}

/// ffprobe's `%f` of a time in `time_base` units; `None` for AV_NOPTS_VALUE (ffprobe's `N/A`).
fn time_text(ts: i64, time_base: ffi::AVRational) -> Option<Value> {
    (ts != ffi::AV_NOPTS_VALUE).then(|| {
        let seconds = ts as f64 * time_base.num as f64 / time_base.den as f64;
        Value::String(format!("{seconds:.6}"))
    })
}

fn rational_text(rational: ffi::AVRational) -> Value {
    Value::String(format!("{}/{}", rational.num, rational.den))
}

fn tags_json(dict: *const ffi::AVDictionary) -> Option<Value> {
    let pairs = dict_pairs(dict);
    (!pairs.is_empty()).then(|| {
        Value::Object(
            pairs
                .into_iter()
                .map(|(key, value)| (key, Value::String(value)))
                .collect(),
        )
    })
}

/// A C string libav owns as a JSON string; `None` for NULL.
fn text_value(text: *const std::ffi::c_char) -> Option<Value> {
    c_text(text).map(Value::String)
}

/// A count or rate as ffprobe prints it (a decimal string), `None` (ffprobe's `N/A`) unless
/// positive.
fn positive_text(number: i64) -> Option<Value> {
    (number > 0).then(|| Value::String(number.to_string()))
}

fn put(map: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(value) = value {
        map.insert(key.to_string(), value);
    }
}

fn format_json(input: &Input) -> Value {
    // SAFETY: an opened context, read only.
    let ctx = unsafe { &*input.ctx };
    let iformat = unsafe { &*ctx.iformat };
    let time_base = ffi::AVRational {
        num: 1,
        den: ffi::AV_TIME_BASE,
    };
    let mut map = Map::new();
    put(&mut map, "nb_streams", Some(json!(ctx.nb_streams)));
    put(&mut map, "nb_programs", Some(json!(ctx.nb_programs)));
    put(&mut map, "format_name", text_value(iformat.name));
    put(&mut map, "format_long_name", text_value(iformat.long_name));
    put(&mut map, "start_time", time_text(ctx.start_time, time_base));
    put(&mut map, "duration", time_text(ctx.duration, time_base));
    // SAFETY: pb is the context's own I/O (NULL only for NOFILE demuxers, none whitelisted).
    let size = if ctx.pb.is_null() {
        -1
    } else {
        unsafe { ffi::avio_size(ctx.pb) }
    };
    put(
        &mut map,
        "size",
        (size >= 0).then(|| Value::String(size.to_string())),
    );
    put(&mut map, "bit_rate", positive_text(ctx.bit_rate));
    put(&mut map, "probe_score", Some(json!(ctx.probe_score)));
    put(&mut map, "tags", tags_json(ctx.metadata));
    Value::Object(map)
}

fn stream_json(st: *mut ffi::AVStream) -> Value {
    // SAFETY: a stream of an opened context and its parameters, read only.
    let st = unsafe { &*st };
    let par = unsafe { &*st.codecpar };
    let mut map = Map::new();
    put(&mut map, "index", Some(json!(st.index)));
    // SAFETY: descriptor lookups return static data or NULL.
    let descriptor = unsafe { ffi::avcodec_descriptor_get(par.codec_id) };
    if !descriptor.is_null() {
        let descriptor = unsafe { &*descriptor };
        put(&mut map, "codec_name", text_value(descriptor.name));
        put(
            &mut map,
            "codec_long_name",
            text_value(descriptor.long_name),
        );
    }
    let profile = unsafe { ffi::avcodec_profile_name(par.codec_id, par.profile) };
    if let Some(profile) = c_text(profile) {
        put(&mut map, "profile", Some(Value::String(profile)));
    } else if par.profile != ffi::FF_PROFILE_UNKNOWN {
        put(&mut map, "profile", Some(json!(par.profile)));
    }
    let codec_type = unsafe { ffi::av_get_media_type_string(par.codec_type) };
    put(&mut map, "codec_type", text_value(codec_type));
    let mut tag = [0 as std::ffi::c_char; 32];
    let tag_text = unsafe { ffi::av_fourcc_make_string(tag.as_mut_ptr(), par.codec_tag) };
    put(&mut map, "codec_tag_string", text_value(tag_text));
    put(
        &mut map,
        "codec_tag",
        Some(Value::String(format!("0x{:04x}", par.codec_tag))),
    );
    match par.codec_type {
        ffi::AVMediaType::AVMEDIA_TYPE_VIDEO => {
            put(&mut map, "width", Some(json!(par.width)));
            put(&mut map, "height", Some(json!(par.height)));
            // SAFETY: format holds an AVPixelFormat for video parameters; -1 is NONE.
            let name = unsafe {
                ffi::av_get_pix_fmt_name(std::mem::transmute::<i32, ffi::AVPixelFormat>(par.format))
            };
            put(&mut map, "pix_fmt", text_value(name));
            put(&mut map, "level", Some(json!(par.level)));
        }
        ffi::AVMediaType::AVMEDIA_TYPE_AUDIO => {
            // SAFETY: format holds an AVSampleFormat for audio parameters; -1 is NONE.
            let name = unsafe {
                ffi::av_get_sample_fmt_name(std::mem::transmute::<i32, ffi::AVSampleFormat>(
                    par.format,
                ))
            };
            put(&mut map, "sample_fmt", text_value(name));
            put(
                &mut map,
                "sample_rate",
                Some(Value::String(par.sample_rate.to_string())),
            );
            put(&mut map, "channels", Some(json!(par.ch_layout.nb_channels)));
            if par.ch_layout.order != ffi::AVChannelOrder::AV_CHANNEL_ORDER_UNSPEC {
                let mut buf = [0 as std::ffi::c_char; 128];
                let written = unsafe {
                    ffi::av_channel_layout_describe(&par.ch_layout, buf.as_mut_ptr(), buf.len())
                };
                if written > 0 {
                    put(&mut map, "channel_layout", text_value(buf.as_ptr()));
                }
            }
            let bits = unsafe { ffi::av_get_bits_per_sample(par.codec_id) };
            put(&mut map, "bits_per_sample", Some(json!(bits)));
        }
        _ => {}
    }
    put(
        &mut map,
        "r_frame_rate",
        Some(rational_text(st.r_frame_rate)),
    );
    put(
        &mut map,
        "avg_frame_rate",
        Some(rational_text(st.avg_frame_rate)),
    );
    put(&mut map, "time_base", Some(rational_text(st.time_base)));
    if st.start_time != ffi::AV_NOPTS_VALUE {
        put(&mut map, "start_pts", Some(json!(st.start_time)));
    }
    put(
        &mut map,
        "start_time",
        time_text(st.start_time, st.time_base),
    );
    if st.duration != ffi::AV_NOPTS_VALUE {
        put(&mut map, "duration_ts", Some(json!(st.duration)));
    }
    put(&mut map, "duration", time_text(st.duration, st.time_base));
    put(&mut map, "bit_rate", positive_text(par.bit_rate));
    put(
        &mut map,
        "bits_per_raw_sample",
        positive_text(i64::from(par.bits_per_raw_sample)),
    );
    put(&mut map, "nb_frames", positive_text(st.nb_frames));
    put(
        &mut map,
        "extradata_size",
        (par.extradata_size > 0).then(|| json!(par.extradata_size)),
    );
    put(
        &mut map,
        "disposition",
        Some(disposition_json(st.disposition)),
    );
    put(&mut map, "tags", tags_json(st.metadata));
    Value::Object(map)
}

fn disposition_json(flags: i32) -> Value {
    const FLAGS: [(&str, i32); 17] = [
        ("default", ffi::AV_DISPOSITION_DEFAULT),
        ("dub", ffi::AV_DISPOSITION_DUB),
        ("original", ffi::AV_DISPOSITION_ORIGINAL),
        ("comment", ffi::AV_DISPOSITION_COMMENT),
        ("lyrics", ffi::AV_DISPOSITION_LYRICS),
        ("karaoke", ffi::AV_DISPOSITION_KARAOKE),
        ("forced", ffi::AV_DISPOSITION_FORCED),
        ("hearing_impaired", ffi::AV_DISPOSITION_HEARING_IMPAIRED),
        ("visual_impaired", ffi::AV_DISPOSITION_VISUAL_IMPAIRED),
        ("clean_effects", ffi::AV_DISPOSITION_CLEAN_EFFECTS),
        ("attached_pic", ffi::AV_DISPOSITION_ATTACHED_PIC),
        ("timed_thumbnails", ffi::AV_DISPOSITION_TIMED_THUMBNAILS),
        ("captions", ffi::AV_DISPOSITION_CAPTIONS),
        ("descriptions", ffi::AV_DISPOSITION_DESCRIPTIONS),
        ("metadata", ffi::AV_DISPOSITION_METADATA),
        ("dependent", ffi::AV_DISPOSITION_DEPENDENT),
        ("still_image", ffi::AV_DISPOSITION_STILL_IMAGE),
    ];
    Value::Object(
        FLAGS
            .iter()
            .map(|(name, flag)| (name.to_string(), json!(i32::from(flags & flag != 0))))
            .collect(),
    )
}
