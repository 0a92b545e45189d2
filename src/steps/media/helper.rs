//! The helper process itself: `narra __media-helper SCRATCH_ROOT MEMORY_BYTES FILE_BYTES
//! [READ_ROOT]...`, started by the worker's pool, never by a person.
//!
//! It initialises FFmpeg's libraries, enters its sandbox (`sandbox::enter`) while it is still one
//! thread, then answers requests from stdin on stdout until stdin ends. It keeps no state between
//! requests but the loaded libraries, which is the point: a request costs no program start.
//! Anything unexpected ends the process with a non-zero status; the worker sees the death and
//! starts another helper.

use std::io::{BufReader, BufWriter, Write};
use std::path::PathBuf;

use super::libav;
use super::protocol::{Request, Response, read_frame, write_frame};
use super::sandbox::{self, DISABLE_ENV, Disabled, Limits};
use crate::model::ErrorClass;

/// The largest probe answered, as ffprobe's output is bounded on the programs' path.
const PROBE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Runs the helper on `args` (what follows [`super::pool::HELPER_ARG`]); returns the exit status.
pub fn main(args: &[String]) -> i32 {
    let [scratch_root, memory_bytes, file_bytes, read_roots @ ..] = args else {
        eprintln!(
            "narra media helper: expected SCRATCH_ROOT MEMORY_BYTES FILE_BYTES [READ_ROOT]..."
        );
        return 2;
    };
    let read_roots: Vec<PathBuf> = read_roots.iter().map(PathBuf::from).collect();
    let (Ok(memory_bytes), Ok(file_bytes)) = (memory_bytes.parse(), file_bytes.parse()) else {
        eprintln!("narra media helper: the limits are byte counts");
        return 2;
    };
    let disabled = match Disabled::parse(&std::env::var(DISABLE_ENV).unwrap_or_default()) {
        Ok(disabled) => disabled,
        Err(error) => {
            eprintln!("narra media helper: {error}");
            return 2;
        }
    };
    libav::init();
    let limits = Limits {
        memory_bytes,
        file_bytes,
    };
    let protections = sandbox::enter(&PathBuf::from(scratch_root), &read_roots, limits, disabled);
    let mut input = BufReader::new(std::io::stdin().lock());
    let mut output = BufWriter::new(std::io::stdout().lock());
    loop {
        let request: Request = match read_frame(&mut input) {
            Ok(Some(request)) => request,
            Ok(None) => return 0,
            Err(error) => {
                eprintln!("narra media helper: unreadable request: {error}");
                return 1;
            }
        };
        let response = match request {
            Request::Probe { input } => match libav::probe(&input) {
                Ok(json) => {
                    let json = json.to_string();
                    crate::failpoint!("media.helper.probe", &json);
                    if json.len() > PROBE_BYTES_MAX {
                        // As ffprobe's output is bounded on the programs' path.
                        Response::Failed {
                            class: ErrorClass::CorruptMedia.as_str().to_string(),
                            message: format!(
                                "the media's probe is {} bytes, over the {PROBE_BYTES_MAX}-byte \
                                 limit (metadata tags that large are not a video's)",
                                json.len()
                            ),
                        }
                    } else {
                        Response::Probed { json }
                    }
                }
                Err(error) => failed(error),
            },
            Request::Extract {
                input,
                stream_index,
                plan,
                output: path,
                threads: _,
            } => {
                let mut reported = Reported::default();
                let mut progress = |bytes: u64| {
                    if reported.due(bytes) {
                        // A worker that stopped reading is gone; writing the answer ends us.
                        let _ = write_frame(&mut output, &Response::Progress { bytes });
                    }
                };
                let written = libav::open_input(&input)
                    .and_then(|mut opened| {
                        libav::extract(&mut opened, stream_index, &plan, &path, &mut progress)
                    })
                    .and_then(|written| libav::probe(&path).map(|json| (written, json)));
                if let Ok((written, _)) = &written {
                    // The last figure is always sent: the step's progress ends at the whole size.
                    let _ = write_frame(
                        &mut output,
                        &Response::Progress {
                            bytes: written.bytes,
                        },
                    );
                }
                match written {
                    Ok((written, json)) => Response::Written {
                        json: json.to_string(),
                        warnings: written.warnings,
                    },
                    Err(error) => failed(error),
                }
            }
            Request::SelfCheck => Response::SelfChecked(sandbox::self_check(&protections)),
        };
        if let Err(error) = write_frame(&mut output, &response)
            .and_then(|()| output.flush().map_err(|error| error.to_string()))
        {
            eprintln!("narra media helper: cannot answer: {error}");
            return 1;
        }
    }
}

fn failed(error: libav::MediaError) -> Response {
    Response::Failed {
        class: error.class.as_str().to_string(),
        message: error.message,
    }
}

/// How often progress is sent: libav reports every packet (tens of thousands for a long copy);
/// the worker needs a figure every so often, not each one.
#[derive(Default)]
struct Reported {
    bytes: u64,
    at: Option<std::time::Instant>,
}

impl Reported {
    const BYTES_MIN: u64 = 256 * 1024;
    const INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

    fn due(&mut self, bytes: u64) -> bool {
        let now = std::time::Instant::now();
        let due = bytes >= self.bytes + Self::BYTES_MIN
            || self
                .at
                .is_none_or(|at| now.duration_since(at) >= Self::INTERVAL);
        if due {
            self.bytes = bytes;
            self.at = Some(now);
        }
        due
    }
}
