//! Where ffmpeg and ffprobe are, and what they say about themselves (`-version`, `-encoders`) for
//! `doctor`.
//!
//! It never runs a tool on media.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::diagnosis::stderr_tail;
use crate::steps::media::Media;
use crate::steps::process::{RunError, run_process};

/// How long `ffmpeg -version` or `-encoders` may take (doctor).
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Where ffmpeg and ffprobe are: `NARRA_FFMPEG` and `NARRA_FFPROBE` when set, else the names looked
/// up on PATH; and whether the media helpers do the work instead (`steps::media`).
#[derive(Debug, Clone)]
pub struct Tools {
    pub ffmpeg: PathBuf,
    pub ffprobe: PathBuf,
    /// The programs, unless the door that opened the engine (the narra binary, which can be its
    /// own helper) gave it helpers.
    pub media: Media,
}

impl Default for Tools {
    fn default() -> Tools {
        Tools {
            ffmpeg: PathBuf::from("ffmpeg"),
            ffprobe: PathBuf::from("ffprobe"),
            media: Media::Programs,
        }
    }
}

impl Tools {
    pub fn from_env() -> Tools {
        let configured = |name: &str, default: &str| {
            std::env::var_os(name)
                .filter(|value| !value.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(default))
        };
        Tools {
            ffmpeg: configured("NARRA_FFMPEG", "ffmpeg"),
            ffprobe: configured("NARRA_FFPROBE", "ffprobe"),
            media: Media::Programs,
        }
    }
}

/// The first line of `PROGRAM -version` (`ffmpeg version 5.1.6-0+deb12u1 ...`), or why it failed.
pub async fn tool_version(program: &Path) -> Result<String, String> {
    let output = tool_output(program, &["-version"]).await?;
    // `ffmpeg version 5.1.6-0+deb12u1 Copyright (c) ...`: the copyright says nothing useful.
    output
        .lines()
        .next()
        .map(|line| line.split(" Copyright").next().unwrap_or(line).to_string())
        .ok_or_else(|| format!("{} -version printed nothing", program.display()))
}

/// The encoders ffmpeg lists (`ffmpeg -encoders`), by name.
pub async fn encoders(ffmpeg: &Path) -> Result<Vec<String>, String> {
    let output = tool_output(ffmpeg, &["-hide_banner", "-encoders"]).await?;
    // Lines look like ` A....D libopus   libopus Opus`; the legend above them has `=` in field 2.
    Ok(output
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let flags = fields.next()?;
            let name = fields.next()?;
            (flags.len() == 6 && name != "=").then(|| name.to_string())
        })
        .collect())
}

/// What a short-lived informational run of a tool printed on stdout, or why it failed.
async fn tool_output(program: &Path, args: &[&str]) -> Result<String, String> {
    let (_never_cancelled, mut cancel) = tokio::sync::watch::channel(false);
    let command = format!("{} {}", program.display(), args.join(" "));
    let args: Vec<OsString> = args.iter().map(OsString::from).collect();
    match run_process(program, &args, 1024 * 1024, VERSION_TIMEOUT, &mut cancel).await {
        Ok(finished) if finished.success => Ok(String::from_utf8_lossy(&finished.stdout).into()),
        Ok(finished) => Err(format!(
            "{command} failed: {}",
            stderr_tail(&finished.stderr)
        )),
        Err(RunError::Spawn(error)) => Err(format!("cannot run {}: {error}", program.display())),
        Err(RunError::TimedOut) => Err(format!(
            "{command} did not answer within {} s",
            VERSION_TIMEOUT.as_secs()
        )),
        Err(RunError::Cancelled) | Err(RunError::Wait(_)) => {
            Err(format!("{command} did not finish"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_tool_is_reported_not_panicked_on() {
        let version = tool_version(Path::new("/nonexistent/ffmpeg")).await;
        assert!(version.unwrap_err().contains("cannot run"));
    }
}
