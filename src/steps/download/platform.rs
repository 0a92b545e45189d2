//! Video platform pages through yt-dlp, behind a per-job egress proxy that applies the network
//! guard to every connection yt-dlp makes.
//!
//! It never lets yt-dlp choose a format it would not fetch itself, and yt-dlp's process group
//! never outlives the step.

use std::path::{Path, PathBuf};

use super::{DownloadContext, PLATFORM_METADATA_FILE, host_of, part_path, too_large};
use crate::model::job::Hash;
use crate::model::redact::redact_text;
use crate::steps::{ErrorClass, Progress, ProgressSender, StepError, egress, process, scratch};

/// The most of yt-dlp's stdout (its JSON description) kept in memory.
const YT_DLP_OUTPUT_BYTES_MAX: usize = 32 * 1024 * 1024;

/// The most of yt-dlp's stderr kept in memory, from its start.
const YT_DLP_STDERR_BYTES_MAX: usize = 64 * 1024;

/// Downloads a video platform page's media with yt-dlp: its JSON description first (kept with the
/// job), then the media into scratch, which is then hashed like any other download.
///
/// yt-dlp makes its own requests, so both runs go through a per-job egress proxy
/// (`steps::egress`) that applies the network guard to every connection, redirect hops and DNS
/// answers included. ffmpeg, which yt-dlp runs for some formats, does not reliably honour a proxy
/// for https, so the formats chosen in the description must be ones yt-dlp fetches itself
/// (`NATIVE_PROTOCOLS`, never live), the media run downloads exactly that checked description
/// (`--load-info-json`, so the page cannot offer other formats the second time), and `--downloader
/// native` keeps ffmpeg from being chosen as a downloader; where yt-dlp's HLS downloader still
/// hands a playlist to ffmpeg, ffmpeg is given the proxy too.
pub(super) async fn download_platform(
    url: &url::Url,
    scratch_dir: &Path,
    context: &DownloadContext<'_>,
) -> Result<(u64, Hash, Option<PathBuf>), StepError> {
    let params = context.params;
    let host = host_of(url);
    // IP literals fail here, before yt-dlp starts; names are checked by the proxy as it connects.
    context.policy.check_url(url)?;
    let proxy = egress::EgressProxy::start(
        std::sync::Arc::new(context.policy.clone()),
        std::sync::Arc::new(egress::SystemResolver),
    )
    .await?;
    let work_dir = scratch_dir.join("yt-dlp");
    crate::private_files::create_dir_all_async(&work_dir)
        .await
        .map_err(|error| StepError::scratch("create", &work_dir, error))?;
    // The proxy's credential goes in a file only narra's user can read, not on yt-dlp's command
    // line, which every local user can read in /proc.
    let config_path = work_dir.join("yt-dlp.conf");
    crate::private_files::write_new_async(
        &config_path,
        format!(
            // When yt-dlp hands an HLS playlist to ffmpeg after all (a feature its own downloader
            // lacks), ffmpeg is told the proxy as an option: from the environment, which is all
            // yt-dlp gives it, ffmpeg takes a proxy for http only, not https. Its protocols are
            // the network ones only: a playlist's `file:` segment or key would read a local file
            // the guard never sees.
            "--proxy \"{0}\"\n--downloader-args \"ffmpeg_i:-protocol_whitelist http,https,tls,tcp,crypto,httpproxy -http_proxy {0}\"\n",
            proxy.url()
        ),
    )
    .await
    .map_err(|error| StepError::scratch("write", &config_path, error))?;
    let common = |command: &mut tokio::process::Command| {
        command
            .args([
                "--ignore-config",
                "--no-cache-dir",
                "--no-playlist",
                "--no-warnings",
                "--downloader",
                "native",
            ])
            .args(["--socket-timeout", &params.read_timeout_s.to_string()])
            .arg("--config-locations")
            .arg(&config_path);
        // The proxy given is the only one: no variable may send a host around it (no_proxy) or
        // give ffmpeg another.
        for name in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "NO_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
            "no_proxy",
        ] {
            command.env_remove(name);
        }
    };
    // Why yt-dlp failed, when the proxy refused a connection: that refusal.
    let failed = |stderr: &[u8]| {
        proxy
            .refusal()
            .unwrap_or_else(|| yt_dlp_error(&host, stderr))
    };

    let mut describe = tokio::process::Command::new(&params.yt_dlp);
    common(&mut describe);
    describe
        .args(["-J", "-f", &params.yt_dlp_format])
        .arg(url.as_str());
    let description = run_yt_dlp(describe, &params.yt_dlp).await?;
    if !description.success {
        return Err(failed(&description.stderr));
    }
    let json: serde_json::Value = serde_json::from_slice(&description.stdout).map_err(|error| {
        StepError::new(
            ErrorClass::UnsupportedSource,
            format!("yt-dlp described {host} with invalid JSON: {error}"),
        )
    })?;
    check_platform_formats(&host, &json)?;
    let announced = json["filesize"]
        .as_u64()
        .or_else(|| json["filesize_approx"].as_u64());
    if let Some(announced) = announced
        && announced > params.max_bytes
    {
        return Err(too_large(&host, announced, params));
    }
    // Kept with the job for people to read: its format URLs are signed, so redacted like any.
    let mut kept = json.clone();
    crate::model::redact::redact_json(&mut kept);
    let platform_path = scratch_dir.join(PLATFORM_METADATA_FILE);
    tokio::fs::write(&platform_path, kept.to_string())
        .await
        .map_err(|error| StepError::scratch("write", &platform_path, error))?;
    // The checked description, as yt-dlp wrote it, for the media run to load.
    let checked_path = work_dir.join("checked.info.json");
    tokio::fs::write(&checked_path, &description.stdout)
        .await
        .map_err(|error| StepError::scratch("write", &checked_path, error))?;

    let template = work_dir.join("media.%(ext)s");
    let mut fetch = tokio::process::Command::new(&params.yt_dlp);
    common(&mut fetch);
    fetch
        .args(["-f", &params.yt_dlp_format])
        .args([
            "--abort-on-unavailable-fragments",
            "--continue",
            "--newline",
        ])
        .args(["--max-filesize", &params.max_bytes.to_string()])
        .args(["--retries", &params.attempts_max.to_string()])
        .args([
            "--progress-template",
            "download:narra-progress %(progress.downloaded_bytes)s %(progress.total_bytes)s",
        ])
        .args([
            "--print",
            "after_move:narra-file %(filepath)s",
            "--no-simulate",
        ])
        .arg("-o")
        .arg(&template)
        .arg("--load-info-json")
        .arg(&checked_path);
    let fetched = run_yt_dlp_with_progress(fetch, &params.yt_dlp, context.progress).await?;
    if !fetched.success {
        return Err(failed(&fetched.stderr));
    }
    let stdout = String::from_utf8_lossy(&fetched.stdout);
    let media_path = stdout
        .lines()
        .find_map(|line| line.strip_prefix("narra-file "))
        .map(PathBuf::from)
        .ok_or_else(|| {
            StepError::new(
                ErrorClass::UnsupportedSource,
                format!("yt-dlp finished without a file for {host}"),
            )
        })?;
    if !media_path.starts_with(&work_dir) {
        return Err(StepError::new(
            ErrorClass::Internal,
            format!("yt-dlp wrote outside scratch: {}", media_path.display()),
        ));
    }
    let part_path = part_path(scratch_dir);
    tokio::fs::rename(&media_path, &part_path)
        .await
        .map_err(|error| StepError::scratch("rename", &media_path, error))?;
    let (size, blake3) = crate::storage::hash_file(&part_path)
        .await
        .map_err(|error| StepError::scratch("read", &part_path, error))?;
    if size > params.max_bytes {
        let _ = tokio::fs::remove_file(&part_path).await;
        return Err(too_large(&host, size, params));
    }
    scratch::sync_file(&part_path).await?;
    let _ = tokio::fs::remove_dir_all(&work_dir).await;
    Ok((size, blake3, Some(platform_path)))
}

/// The protocols yt-dlp downloads with its own HTTP client, which goes through the egress proxy.
/// Every other one (`m3u8` through ffmpeg, `rtmp`, `rtsp`, `f4m`, ...) is fetched by another program
/// that may connect around the proxy.
const NATIVE_PROTOCOLS: [&str; 6] = [
    "http",
    "https",
    "m3u8_native",
    "m3u8",
    "http_dash_segments",
    "http_dash_segments_generator",
];

/// Refuses a description whose chosen formats yt-dlp would not fetch itself, or a live stream
/// (yt-dlp hands live HLS and DASH to ffmpeg, and a live stream never ends).
fn check_platform_formats(host: &str, json: &serde_json::Value) -> Result<(), StepError> {
    if json["is_live"].as_bool() == Some(true) {
        return Err(StepError::new(
            ErrorClass::UnsupportedSource,
            format!("{host} offers a live stream, which narra does not ingest"),
        ));
    }
    let protocols: Vec<&str> = match json["requested_formats"].as_array() {
        Some(formats) => formats
            .iter()
            .map(|format| format["protocol"].as_str().unwrap_or(""))
            .collect(),
        None => vec![json["protocol"].as_str().unwrap_or("")],
    };
    for protocol in protocols {
        if !NATIVE_PROTOCOLS.contains(&protocol) {
            return Err(StepError::new(
                ErrorClass::UnsupportedSource,
                format!(
                    "{host}'s chosen format uses the protocol {protocol:?}, which yt-dlp would fetch outside narra's network guard (allowed: {})",
                    NATIVE_PROTOCOLS.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

struct ProgramOutput {
    success: bool,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

async fn run_yt_dlp(
    command: tokio::process::Command,
    program: &str,
) -> Result<ProgramOutput, StepError> {
    let (sender, _) = tokio::sync::watch::channel(Progress::default());
    run_yt_dlp_with_progress(command, program, &sender).await
}

/// Runs yt-dlp with bounded output, turning its progress lines into `progress` reports. yt-dlp
/// leads a process group of its own, and the group (ffmpeg and any other child yt-dlp started
/// included) is killed when this future is dropped before yt-dlp is reaped: the step's timeout and
/// a cancellation drop it.
async fn run_yt_dlp_with_progress(
    mut command: tokio::process::Command,
    program: &str,
    progress: &ProgressSender,
) -> Result<ProgramOutput, StepError> {
    use tokio::io::AsyncBufReadExt;
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    process::die_with_parent(&mut command);
    let mut child = command.spawn().map_err(|error| {
        StepError::new(
            ErrorClass::Internal,
            format!("cannot run {program} (install yt-dlp, e.g. `pip install yt-dlp`): {error}"),
        )
    })?;
    let mut group = process::ProcessGroup::led_by(&child)
        .ok_or_else(|| StepError::new(ErrorClass::Internal, format!("{program} has no pid")))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let read_stdout = async {
        let mut kept = Vec::new();
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.strip_prefix("narra-progress ") {
                let mut parts = rest.split_whitespace();
                let done = parts.next().and_then(|text| text.parse::<f64>().ok());
                let total = parts.next().and_then(|text| text.parse::<f64>().ok());
                if let Some(done) = done {
                    progress.send_modify(|progress| {
                        progress.bytes_done = done as u64;
                        progress.bytes_total = total.map(|total| total as u64);
                    });
                }
                continue;
            }
            if kept.len() + line.len() < YT_DLP_OUTPUT_BYTES_MAX {
                kept.extend_from_slice(line.as_bytes());
                kept.push(b'\n');
            }
        }
        kept
    };
    let read_stderr = process::read_head(stderr, YT_DLP_STDERR_BYTES_MAX);
    let (stdout, stderr) = tokio::join!(read_stdout, read_stderr);
    let status = child.wait().await;
    group.disarm();
    let status = status.map_err(|error| {
        StepError::new(
            ErrorClass::Internal,
            format!("{program} did not run: {error}"),
        )
    })?;
    Ok(ProgramOutput {
        success: status.success(),
        stdout,
        stderr,
    })
}

/// Maps yt-dlp's error lines to narra's classes.
fn yt_dlp_error(host: &str, stderr: &[u8]) -> StepError {
    let text = String::from_utf8_lossy(stderr);
    let decisive = text
        .lines()
        .rev()
        .find(|line| line.contains("ERROR"))
        .or_else(|| text.lines().rev().find(|line| !line.trim().is_empty()))
        .unwrap_or("(no message)")
        .trim()
        .to_string();
    let lower = decisive.to_ascii_lowercase();
    let class = if lower.contains("http error 401")
        || lower.contains("http error 403")
        || lower.contains("http error 451")
        || lower.contains("geo")
        || lower.contains("in your country")
        || lower.contains("sign in to confirm")
    {
        ErrorClass::DownloadBlocked
    } else if lower.contains("http error 404")
        || lower.contains("http error 410")
        || lower.contains("video unavailable")
        || lower.contains("private video")
    {
        ErrorClass::NotFound
    } else if lower.contains("http error 429") {
        ErrorClass::RateLimited
    } else if lower.contains("http error 5") {
        ErrorClass::ServerError
    } else if lower.contains("timed out") {
        ErrorClass::NetworkTimeout
    } else if lower.contains("max-filesize") || lower.contains("larger than") {
        ErrorClass::TooLarge
    } else if lower.contains("unsupported url") || lower.contains("no video formats") {
        ErrorClass::UnsupportedSource
    } else {
        ErrorClass::NetworkError
    };
    StepError::new(
        class,
        format!("yt-dlp failed for {host}: {}", redact_text(&decisive)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yt_dlp_errors_map_to_classes() {
        let class = |line: &str| yt_dlp_error("www.youtube.com", line.as_bytes()).class;
        assert_eq!(
            class("ERROR: [youtube] x: HTTP Error 403: Forbidden"),
            ErrorClass::DownloadBlocked
        );
        assert_eq!(
            class(
                "ERROR: [youtube] x: The uploader has not made this video available in your country"
            ),
            ErrorClass::DownloadBlocked
        );
        assert_eq!(
            class("ERROR: [generic] Unable to download webpage: HTTP Error 404: Not Found"),
            ErrorClass::NotFound
        );
        assert_eq!(
            class("ERROR: Unsupported URL: http://x/"),
            ErrorClass::UnsupportedSource
        );
        assert_eq!(
            class("ERROR: HTTP Error 429: Too Many Requests"),
            ErrorClass::RateLimited
        );
    }

    // Guards the formats yt-dlp may fetch: only those its own client fetches (through the egress
    // proxy); a format ffmpeg or another program would fetch, or a live stream, is refused.
    #[test]
    fn only_formats_yt_dlp_fetches_itself_are_accepted() {
        let check = |json: serde_json::Value| check_platform_formats("video.example", &json);
        assert!(check(serde_json::json!({"protocol": "https"})).is_ok());
        assert!(check(serde_json::json!({"protocol": "m3u8_native"})).is_ok());
        assert!(
            check(serde_json::json!({"requested_formats": [
                {"protocol": "http_dash_segments"}, {"protocol": "https"}
            ]}))
            .is_ok()
        );
        for refused in [
            serde_json::json!({"protocol": "rtmp_ffmpeg"}),
            serde_json::json!({"protocol": "rtsp"}),
            serde_json::json!({}),
            serde_json::json!({"requested_formats": [{"protocol": "https"}, {"protocol": "f4m"}]}),
            serde_json::json!({"protocol": "m3u8_native", "is_live": true}),
        ] {
            let error = check(refused.clone()).unwrap_err();
            assert_eq!(error.class, ErrorClass::UnsupportedSource, "{refused}");
        }
    }
}
