//! The media helper's protocol: requests on its stdin, answers on its stdout, one frame each.
//!
//! A frame is a 4-byte little-endian length, then [`PROTOCOL_VERSION`], then the message in bincode
//! (through `crate::wire`). The helper is the same binary as the worker, so the versions always
//! match; the byte makes a mismatch (a binary replaced under a running worker) a clear error
//! instead of a garbled message. A request gets any number of [`Response::Progress`] frames, then
//! exactly one final frame. Frames are bounded ([`FRAME_BYTES_MAX`]): a helper that writes more is
//! broken, and the worker treats it as dead.
//!
//! The worker decides (which stream, which plan, what counts as success); the helper only does
//! the media work and says what it saw: probes come back in ffprobe's JSON shape, so one parser
//! reads both paths.

use std::io::{Read, Write};
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::sandbox::SelfCheck;
use crate::workflow::TranscodeTarget;

/// The version of the frames this binary speaks.
pub const PROTOCOL_VERSION: u8 = 1;

/// The largest frame either side accepts; a probe's JSON is a few KiB.
pub const FRAME_BYTES_MAX: usize = 8 * 1024 * 1024;

/// What the worker asks of a helper. Paths are inside the scratch root, the only place the
/// helper's sandbox lets it read or write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// The media's container and streams, as ffprobe's `-show_format -show_streams` JSON.
    Probe { input: PathBuf },
    /// Writes stream `stream_index` of `input` into `output` as `plan` says, then reads the
    /// output back.
    Extract {
        input: PathBuf,
        stream_index: u32,
        plan: WritePlan,
        output: PathBuf,
        /// Reserved: the helper decodes on one thread, a job slot's worth of CPU.
        threads: u32,
    },
    /// What the sandbox allows, tried from inside it (`doctor` and the sandbox tests).
    SelfCheck,
}

/// How the chosen stream is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WritePlan {
    /// A stream copy into `muxer` (ffmpeg's name: `ipod`, `mp3`, `opus`, `ogg`, `flac`, `wav`).
    Copy { muxer: String },
    /// Decoded and encoded again, resampled and mixed where asked.
    Transcode {
        target: TranscodeTarget,
        sample_rate: Option<u32>,
        channels: Option<u32>,
    },
}

/// What a helper answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Bytes of output written so far (not final).
    Progress {
        bytes: u64,
    },
    /// The probe, as ffprobe's JSON.
    Probed {
        json: String,
    },
    /// The output was written and closed; `json` is its probe. `warnings`: what libav logged about
    /// damage it read past in the input, judged by the extract step after the output (a full
    /// disk or a refused source is a `Failed` instead).
    Written {
        json: String,
        warnings: Vec<String>,
    },
    /// The request failed: an error class name (`model::ErrorClass`) and what happened.
    Failed {
        class: String,
        message: String,
    },
    SelfChecked(SelfCheck),
}

impl Response {
    /// Whether this frame ends the request.
    pub fn is_final(&self) -> bool {
        !matches!(self, Response::Progress { .. })
    }
}

/// A frame's bytes, length prefix included.
pub fn encode_frame<T: Serialize>(message: &T) -> Result<Vec<u8>, String> {
    let body = crate::wire::to_bytes(message)?;
    let length = body.len() + 1;
    if length > FRAME_BYTES_MAX {
        return Err(format!("a {length}-byte frame is over the limit"));
    }
    let mut frame = Vec::with_capacity(4 + length);
    frame.extend_from_slice(&(length as u32).to_le_bytes());
    frame.push(PROTOCOL_VERSION);
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// The length a frame's 4-byte prefix announces, if acceptable.
pub fn frame_length(prefix: [u8; 4]) -> Result<usize, String> {
    let length = u32::from_le_bytes(prefix) as usize;
    if length == 0 || length > FRAME_BYTES_MAX {
        return Err(format!("a frame of {length} bytes"));
    }
    Ok(length)
}

/// A frame's message, from the bytes after its length prefix.
pub fn decode_frame<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let Some((&version, message)) = body.split_first() else {
        return Err("an empty frame".to_string());
    };
    if version != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {version}, this narra speaks {PROTOCOL_VERSION}"
        ));
    }
    let (value, read) = crate::wire::from_bytes_prefix(message)?;
    if read != message.len() {
        return Err(format!("{} bytes after the message", message.len() - read));
    }
    Ok(value)
}

/// Reads one frame (the helper's side, blocking); `None` at a clean end of input.
pub fn read_frame<T: DeserializeOwned>(input: &mut impl Read) -> Result<Option<T>, String> {
    let mut prefix = [0u8; 4];
    match input.read_exact(&mut prefix) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error.to_string()),
    }
    let mut body = vec![0u8; frame_length(prefix)?];
    input
        .read_exact(&mut body)
        .map_err(|error| error.to_string())?;
    decode_frame(&body).map(Some)
}

/// Writes one frame and flushes it (the helper's side, blocking).
pub fn write_frame<T: Serialize>(output: &mut impl Write, message: &T) -> Result<(), String> {
    let frame = encode_frame(message)?;
    output
        .write_all(&frame)
        .and_then(|()| output.flush())
        .map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_round_trips_and_its_length_counts_the_version_byte() {
        let request = Request::Extract {
            input: PathBuf::from("/scratch/job/original"),
            stream_index: 2,
            plan: WritePlan::Transcode {
                target: TranscodeTarget::Opus,
                sample_rate: Some(16_000),
                channels: Some(1),
            },
            output: PathBuf::from("/scratch/job/tmp-audio.opus"),
            threads: 1,
        };
        let frame = encode_frame(&request).unwrap();
        let length = frame_length(frame[..4].try_into().unwrap()).unwrap();
        assert_eq!(length, frame.len() - 4);
        assert_eq!(frame[4], PROTOCOL_VERSION);
        let mut reader = &frame[..];
        assert_eq!(read_frame::<Request>(&mut reader).unwrap(), Some(request));
        assert_eq!(read_frame::<Request>(&mut reader).unwrap(), None);
    }

    #[test]
    fn another_version_empty_and_oversized_frames_are_refused() {
        let mut frame = encode_frame(&Request::SelfCheck).unwrap();
        frame[4] = PROTOCOL_VERSION + 1;
        let error = decode_frame::<Request>(&frame[4..]).unwrap_err();
        assert!(error.contains("protocol version"), "{error}");
        assert!(frame_length(0u32.to_le_bytes()).is_err());
        assert!(frame_length((FRAME_BYTES_MAX as u32 + 1).to_le_bytes()).is_err());
        let mut trailing = encode_frame(&Request::SelfCheck).unwrap();
        trailing.push(0);
        assert!(decode_frame::<Request>(&trailing[4..]).is_err());
    }
}
