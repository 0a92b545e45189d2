//! The metadata record as JSON: the view people and programs read (`show --json`, the stored
//! metadata object), the shape its checkpoint hashes, and the differences between two records.
//!
//! The hashed shape (`record_json`) never follows the view, so stored records stay verifiable.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::probe::{integer, language, number, raw_json, raw_stream, text};
use crate::model::job::MediaMetadata;

/// The most entries a metadata comparison lists.
const CHANGES_MAX: usize = 50;

/// A video stream's frame rate from ffprobe's `avg_frame_rate` (else `r_frame_rate`), as
/// frames per second. `0/0` means none.
fn frame_rate(raw_stream: &Value) -> Option<f64> {
    ["avg_frame_rate", "r_frame_rate"].iter().find_map(|key| {
        let (numerator, denominator) = raw_stream.get(*key)?.as_str()?.split_once('/')?;
        let numerator: f64 = numerator.parse().ok()?;
        let denominator: f64 = denominator.parse().ok()?;
        (numerator > 0.0 && denominator > 0.0).then(|| numerator / denominator)
    })
}

/// The metadata record as people and programs see it (`show --json`, the stored metadata object):
/// the typed record, the fields derived from `raw` (format long name, start times, profile,
/// frame rate, channel layout, language, bit rates), and `raw` itself.
pub fn metadata_json(metadata: &MediaMetadata) -> Value {
    let raw = raw_json(metadata);
    let format = raw.get("format").cloned().unwrap_or(Value::Null);
    json!({
        "format_name": metadata.format_name,
        "format_long_name": text(&format, "format_long_name"),
        "duration_s": metadata.duration_s,
        "size": metadata.size,
        "bit_rate": metadata.bit_rate,
        "start_time_s": number(&format, "start_time"),
        "streams": metadata.streams.iter().map(|stream| {
            let raw_stream = raw_stream(&raw, stream.index).cloned().unwrap_or(Value::Null);
            let is_video = stream.codec_type == "video";
            json!({
                "index": stream.index,
                "codec_type": stream.codec_type,
                "codec_name": stream.codec_name,
                "profile": text(&raw_stream, "profile"),
                "width": stream.width,
                "height": stream.height,
                "frame_rate": if is_video { frame_rate(&raw_stream) } else { None },
                "sample_rate": stream.sample_rate,
                "channels": stream.channels,
                "channel_layout": text(&raw_stream, "channel_layout"),
                "language": language(Some(&raw_stream)),
                "duration_s": stream.duration_s,
                "start_time_s": number(&raw_stream, "start_time"),
                "bit_rate": integer(&raw_stream, "bit_rate"),
            })
        }).collect::<Vec<_>>(),
        "raw": raw,
    })
}

/// The metadata record as its checkpoint hashes it: the stored fields and `raw`, nothing derived.
/// Its shape never changes with what `metadata_json` shows, so records stay verifiable.
pub fn record_json(metadata: &MediaMetadata) -> Value {
    json!({
        "format_name": metadata.format_name,
        "duration_s": metadata.duration_s,
        "size": metadata.size,
        "bit_rate": metadata.bit_rate,
        "streams": metadata.streams.iter().map(|stream| json!({
            "index": stream.index,
            "codec_type": stream.codec_type,
            "codec_name": stream.codec_name,
            "width": stream.width,
            "height": stream.height,
            "sample_rate": stream.sample_rate,
            "channels": stream.channels,
            "duration_s": stream.duration_s,
        })).collect::<Vec<_>>(),
        "raw": raw_json(metadata),
    })
}

/// What differs between two metadata records, one line per field (`streams[1].codec_name: "mp3" ->
/// "aac"`), then one line if ffprobe's JSON differs in anything else. At most [`CHANGES_MAX`] lines.
pub fn metadata_changes(before: &MediaMetadata, after: &MediaMetadata) -> Vec<String> {
    let flatten = |metadata: &MediaMetadata| {
        let mut view = metadata_json(metadata);
        let raw = view
            .as_object_mut()
            .and_then(|object| object.remove("raw"))
            .unwrap_or(Value::Null);
        let mut fields = BTreeMap::new();
        flatten_into(&view, String::new(), &mut fields);
        (fields, without_file_name(raw))
    };
    let (before_fields, before_raw) = flatten(before);
    let (after_fields, after_raw) = flatten(after);
    let mut changes = Vec::new();
    let keys: std::collections::BTreeSet<&String> =
        before_fields.keys().chain(after_fields.keys()).collect();
    for key in keys {
        let old = before_fields.get(key).unwrap_or(&Value::Null);
        let new = after_fields.get(key).unwrap_or(&Value::Null);
        if old != new {
            changes.push(format!("{key}: {old} -> {new}"));
        }
    }
    if before_raw != after_raw {
        changes.push("raw: ffprobe's JSON differs".to_string());
    }
    if changes.len() > CHANGES_MAX {
        let more = changes.len() - (CHANGES_MAX - 1);
        changes.truncate(CHANGES_MAX - 1);
        changes.push(format!("... and {more} more"));
    }
    changes
}

/// A record written before file names were dropped from `raw` must not differ by its file name.
fn without_file_name(mut raw: Value) -> Value {
    if let Some(format) = raw.get_mut("format").and_then(Value::as_object_mut) {
        format.remove("filename");
    }
    raw
}

fn flatten_into(value: &Value, path: String, fields: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(object) => {
            for (key, child) in object {
                let path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                flatten_into(child, path, fields);
            }
        }
        Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                flatten_into(child, format!("{path}[{index}]"), fields);
            }
        }
        leaf => {
            fields.insert(path, leaf.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::extract::fixtures::mp4_probe;
    use crate::steps::extract::parse_probe;

    #[test]
    fn the_shown_record_derives_profile_frame_rate_layout_language_and_start_time() {
        let view = metadata_json(&parse_probe(mp4_probe()).unwrap());
        assert_eq!(view["format_long_name"], "QuickTime / MOV");
        assert_eq!(view["start_time_s"], 0.0);
        let video = &view["streams"][0];
        assert_eq!(video["profile"], "High");
        let frame_rate = video["frame_rate"].as_f64().unwrap();
        assert!((frame_rate - 29.97).abs() < 0.01, "{frame_rate}");
        let audio = &view["streams"][1];
        assert_eq!(audio["channel_layout"], "stereo");
        assert_eq!(audio["language"], "eng");
        assert_eq!(audio["bit_rate"], 64000);
        assert_eq!(audio["frame_rate"], Value::Null);
        assert_eq!(view["raw"]["streams"][1]["codec_name"], "aac");
    }

    #[test]
    fn the_record_hash_shape_ignores_derived_fields() {
        let metadata = parse_probe(mp4_probe()).unwrap();
        let record = record_json(&metadata);
        assert!(record["streams"][1].get("language").is_none());
        assert_eq!(
            record.as_object().unwrap().keys().collect::<Vec<_>>(),
            [
                "bit_rate",
                "duration_s",
                "format_name",
                "raw",
                "size",
                "streams"
            ]
        );
    }

    #[test]
    fn changes_list_each_differing_field() {
        let before = parse_probe(mp4_probe()).unwrap();
        let mut after = before.clone();
        after.streams[1].codec_name = Some("mp3".into());
        after.duration_s = Some(99.0);
        let changes = metadata_changes(&before, &after);
        assert_eq!(
            changes,
            [
                "duration_s: 2.02 -> 99.0",
                "streams[1].codec_name: \"aac\" -> \"mp3\""
            ]
        );
        assert!(metadata_changes(&before, &before).is_empty());
        // A record whose raw JSON still names the file it was probed from is the same record.
        let mut with_file_name = before.clone();
        with_file_name.raw = String::from_utf8(mp4_probe().to_vec()).unwrap();
        assert!(metadata_changes(&with_file_name, &before).is_empty());
    }
}
