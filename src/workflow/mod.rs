//! Workflow definitions: which steps a job runs, with which parameters, and each step's
//! definition hash.
//!
//! Workflows are data (`workflows/*.toml`). The built-in ones are embedded in the binary; `--workflows
//! DIR` adds others and overrides built-ins of the same name. A step's definition hash covers exactly
//! the parameters that change its output, plus the step's implementation version, so changing one of
//! them redoes that step and the steps after it, and nothing before it. This module runs nothing.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::model::job::{Hash, Phase};

/// The workflows compiled into the binary, by file name.
pub const BUILTIN_WORKFLOWS: &[(&str, &str)] = &[
    ("ingest", include_str!("../../workflows/ingest.toml")),
    ("asr", include_str!("../../workflows/asr.toml")),
];

/// The workflow used when none is named.
pub const DEFAULT_WORKFLOW: &str = "ingest";

#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    #[error("unknown workflow {name:?} (known: {known})")]
    Unknown { name: String, known: String },
    #[error("invalid workflow {name:?}: {reason}")]
    Invalid { name: String, reason: String },
    #[error("cannot read workflows from {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// The kinds of step narra knows how to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    Download,
    Extract,
    Store,
}

impl StepKind {
    pub fn name(self) -> &'static str {
        match self {
            StepKind::Download => "download",
            StepKind::Extract => "extract",
            StepKind::Store => "store",
        }
    }

    /// The runbook's phase for each step.
    pub fn phase(self) -> Phase {
        match self {
            StepKind::Download => Phase::Downloading,
            StepKind::Extract => Phase::Processing,
            StepKind::Store => Phase::Storing,
        }
    }

    /// Bumped when a step's code changes what it produces, so old checkpoints stop counting as done.
    fn implementation_version(self) -> u32 {
        match self {
            StepKind::Download => 1,
            // 2: codec-aware copy containers, 16-bit transcodes, bit-exact output, probed output.
            StepKind::Extract => 2,
            StepKind::Store => 1,
        }
    }
}

/// Download limits and retry policy. None of them changes the downloaded bytes, so none is in the
/// definition hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DownloadParams {
    pub connect_timeout_s: u64,
    /// A transfer that delivers no byte for this long fails as `network_timeout`.
    pub read_timeout_s: u64,
    /// The whole step, all attempts included, must finish within this.
    pub total_timeout_s: u64,
    /// Attempts per step run for transient failures (timeouts, resets, 5xx, 429, truncation).
    pub attempts_max: u32,
    /// The first backoff delay; it doubles per attempt, with jitter, up to `backoff_max_ms`.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// The longest `Retry-After` honoured; a server asking for more fails the attempt as
    /// `rate_limited`.
    pub retry_after_max_s: u64,
    /// The largest download accepted (`too_large` beyond it).
    pub max_bytes: u64,
    /// A download does not start while the scratch file system has less free space than this
    /// plus the size the source announces: the job waits (`scratch_low`, no attempt spent).
    pub scratch_reserve_mb: u64,
    /// Redirect hops followed, each checked by the network guard.
    pub redirects_max: u32,
    /// `auto` (yt-dlp for hosts on `platform_hosts`, HTTP otherwise), `http` or `yt-dlp`.
    pub downloader: Downloader,
    /// Hosts (and their subdomains) whose pages are not media files and go through yt-dlp.
    pub platform_hosts: Vec<String>,
    /// The yt-dlp program (a path, or a name looked up on PATH).
    pub yt_dlp: String,
    /// yt-dlp's format selection.
    pub yt_dlp_format: String,
    pub user_agent: String,
}

/// The range each numeric download parameter must be in: a value outside it would make every
/// download fail (a zero timeout) or never end (billions of redirects), so a workflow that names
/// one is refused when it is loaded, with the range in the message.
const DOWNLOAD_RANGES: [(&str, u64, u64); 11] = [
    ("connect_timeout_s", 1, 600),
    ("read_timeout_s", 1, 3600),
    ("total_timeout_s", 1, 7 * 24 * 3600),
    ("attempts_max", 1, 100),
    ("backoff_initial_ms", 1, 3_600_000),
    ("backoff_max_ms", 1, 3_600_000),
    ("retry_after_max_s", 0, 24 * 3600),
    ("max_bytes", 1, 1 << 44),
    ("scratch_reserve_mb", 0, 1 << 30),
    ("redirects_max", 0, 20),
    // A header value: one line, and short.
    ("user_agent length", 1, 512),
];

impl DownloadParams {
    /// Refuses parameters that would make every download fail or run without bound, naming the
    /// parameter and its range.
    pub fn validate(&self) -> Result<(), String> {
        let values = [
            self.connect_timeout_s,
            self.read_timeout_s,
            self.total_timeout_s,
            u64::from(self.attempts_max),
            self.backoff_initial_ms,
            self.backoff_max_ms,
            self.retry_after_max_s,
            self.max_bytes,
            self.scratch_reserve_mb,
            u64::from(self.redirects_max),
            u64::try_from(self.user_agent.len()).unwrap_or(u64::MAX),
        ];
        for ((name, min, max), value) in DOWNLOAD_RANGES.iter().zip(values) {
            if !(*min..=*max).contains(&value) {
                return Err(format!("{name} must be in {min}..={max}, not {value}"));
            }
        }
        if self.backoff_max_ms < self.backoff_initial_ms {
            return Err(format!(
                "backoff_max_ms ({}) must be at least backoff_initial_ms ({})",
                self.backoff_max_ms, self.backoff_initial_ms
            ));
        }
        for (name, text) in [
            ("user_agent", self.user_agent.as_str()),
            ("yt_dlp", self.yt_dlp.as_str()),
            ("yt_dlp_format", self.yt_dlp_format.as_str()),
        ] {
            if text.trim().is_empty() || text.chars().any(char::is_control) {
                return Err(format!("{name} must be one line of text, not {text:?}"));
            }
        }
        if let Some(host) = self.platform_hosts.iter().find(|host| {
            host.is_empty()
                || !host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
        }) {
            return Err(format!("platform_hosts entry {host:?} is not a host name"));
        }
        Ok(())
    }
}

impl Default for DownloadParams {
    fn default() -> Self {
        DownloadParams {
            connect_timeout_s: 10,
            read_timeout_s: 30,
            total_timeout_s: 6 * 3600,
            attempts_max: 5,
            backoff_initial_ms: 500,
            backoff_max_ms: 30_000,
            retry_after_max_s: 300,
            max_bytes: 50 * 1024 * 1024 * 1024,
            scratch_reserve_mb: 512,
            redirects_max: 5,
            downloader: Downloader::Auto,
            platform_hosts: [
                "youtube.com",
                "youtu.be",
                "vimeo.com",
                "dailymotion.com",
                "twitch.tv",
                "tiktok.com",
                "facebook.com",
                "instagram.com",
                "x.com",
                "twitter.com",
            ]
            .iter()
            .map(|host| host.to_string())
            .collect(),
            yt_dlp: "yt-dlp".to_string(),
            yt_dlp_format: "bv*+ba/b".to_string(),
            user_agent: concat!("narra/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

impl DownloadParams {
    /// Whether `host` is a video platform whose pages go through yt-dlp.
    pub fn is_platform_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.platform_hosts.iter().any(|platform| {
            let platform = platform.to_ascii_lowercase();
            host == platform || host.ends_with(&format!(".{platform}"))
        })
    }
}

/// Which program fetches a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Downloader {
    Auto,
    Http,
    YtDlp,
}

/// How the audio is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AudioMode {
    /// Stream copy into a container matched to the source codec (no re-encoding); a codec with no
    /// clean container is transcoded to the workflow's `fallback` target.
    Copy,
    Flac,
    Wav,
    Opus,
    Mp3,
}

impl AudioMode {
    /// The transcode target, or `None` for a stream copy.
    pub fn target(self) -> Option<TranscodeTarget> {
        match self {
            AudioMode::Copy => None,
            AudioMode::Flac => Some(TranscodeTarget::Flac),
            AudioMode::Wav => Some(TranscodeTarget::Wav),
            AudioMode::Opus => Some(TranscodeTarget::Opus),
            AudioMode::Mp3 => Some(TranscodeTarget::Mp3),
        }
    }
}

/// What audio is re-encoded to: FLAC and WAV as 16-bit PCM, Opus with libopus, MP3 with LAME.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TranscodeTarget {
    Flac,
    Wav,
    Opus,
    Mp3,
}

impl TranscodeTarget {
    pub fn name(self) -> &'static str {
        match self {
            TranscodeTarget::Flac => "flac",
            TranscodeTarget::Wav => "wav",
            TranscodeTarget::Opus => "opus",
            TranscodeTarget::Mp3 => "mp3",
        }
    }

    /// The sample rates the target's encoder accepts; `None` when any rate in range is fine.
    fn sample_rates(self) -> Option<&'static [u32]> {
        match self {
            TranscodeTarget::Flac | TranscodeTarget::Wav => None,
            TranscodeTarget::Opus => Some(&[8_000, 12_000, 16_000, 24_000, 48_000]),
            TranscodeTarget::Mp3 => Some(&[
                8_000, 11_025, 12_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000,
            ]),
        }
    }

    fn channels_max(self) -> u32 {
        match self {
            TranscodeTarget::Mp3 => 2,
            _ => EXTRACT_CHANNELS_MAX,
        }
    }
}

/// The most channels a transcode may ask for.
const EXTRACT_CHANNELS_MAX: u32 = 8;
/// The sample rates a transcode may ask for.
const EXTRACT_SAMPLE_RATE_MIN: u32 = 8_000;
const EXTRACT_SAMPLE_RATE_MAX: u32 = 192_000;
/// The most threads ffmpeg may be given.
const EXTRACT_THREADS_MAX: u32 = 64;

/// The extract step's parameters. `audio`, `sample_rate`, `channels`, `preferred_language` and
/// (for `copy`) `fallback` change the output and are in the definition hash; threads and timeouts
/// are not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExtractParams {
    pub audio: AudioMode,
    /// Resample to this rate when transcoding (the fallback included); ignored by a stream copy.
    pub sample_rate: Option<u32>,
    /// Down- or up-mix to this many channels when transcoding; ignored by a stream copy.
    pub channels: Option<u32>,
    /// What `copy` transcodes to when the source codec has no clean container (ac3, big-endian PCM).
    pub fallback: TranscodeTarget,
    /// Take the first audio stream tagged with this language (as the container tags it, usually
    /// ISO 639-2 such as `eng`), else the first audio stream.
    pub preferred_language: Option<String>,
    /// Threads ffmpeg may use for decoding, filtering and encoding.
    pub threads: u32,
    /// How long ffprobe may take to read the media.
    pub probe_timeout_ms: u64,
    /// ffmpeg's timeout: `timeout_base_ms` plus `timeout_ms_per_media_s` for every second of
    /// media, at most `timeout_max_ms` (also the timeout when the duration is unknown).
    pub timeout_base_ms: u64,
    pub timeout_ms_per_media_s: u64,
    pub timeout_max_ms: u64,
    /// Which tools do the media work: narra's sandboxed helper (FFmpeg's libraries, no program
    /// started per job) or the `ffprobe` and `ffmpeg` programs. Not in the definition hash: both
    /// write the same stream into the same container; the setting `NARRA_MEDIA=cli` picks the
    /// programs for every workflow.
    pub media: MediaPath,
}

/// Which tools do the extract step's media work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaPath {
    #[default]
    Helper,
    Cli,
}

impl Default for ExtractParams {
    fn default() -> Self {
        ExtractParams {
            audio: AudioMode::Copy,
            sample_rate: None,
            channels: None,
            fallback: TranscodeTarget::Flac,
            preferred_language: None,
            threads: 2,
            probe_timeout_ms: 60_000,
            timeout_base_ms: 60_000,
            timeout_ms_per_media_s: 500,
            timeout_max_ms: 2 * 3600 * 1000,
            media: MediaPath::Helper,
        }
    }
}

impl ExtractParams {
    /// The target a transcode uses: the mode's own, or the fallback for `copy`.
    pub fn transcode_target(&self) -> TranscodeTarget {
        self.audio.target().unwrap_or(self.fallback)
    }

    /// Refuses parameters ffmpeg would reject at run time, so a workflow fails when it is loaded.
    pub fn validate(&self) -> Result<(), String> {
        let target = self.transcode_target();
        if let Some(rate) = self.sample_rate {
            if !(EXTRACT_SAMPLE_RATE_MIN..=EXTRACT_SAMPLE_RATE_MAX).contains(&rate) {
                return Err(format!(
                    "sample_rate {rate} is outside {EXTRACT_SAMPLE_RATE_MIN}..={EXTRACT_SAMPLE_RATE_MAX}"
                ));
            }
            if let Some(rates) = target.sample_rates()
                && !rates.contains(&rate)
            {
                return Err(format!(
                    "sample_rate {rate} is not one {} supports ({rates:?})",
                    target.name()
                ));
            }
        }
        if let Some(channels) = self.channels
            && !(1..=target.channels_max()).contains(&channels)
        {
            return Err(format!(
                "channels {channels} is outside 1..={} for {}",
                target.channels_max(),
                target.name()
            ));
        }
        if let Some(language) = &self.preferred_language
            && (language.is_empty()
                || language.len() > 16
                || !language
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-'))
        {
            return Err(format!(
                "preferred_language {language:?} is not a language tag such as \"eng\""
            ));
        }
        if !(1..=EXTRACT_THREADS_MAX).contains(&self.threads) {
            return Err(format!("threads must be in 1..={EXTRACT_THREADS_MAX}"));
        }
        if self.probe_timeout_ms == 0 || self.timeout_max_ms == 0 {
            return Err("probe_timeout_ms and timeout_max_ms must be above 0".into());
        }
        if self.timeout_base_ms > self.timeout_max_ms {
            return Err("timeout_base_ms must not exceed timeout_max_ms".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreParams {
    /// How long an unavailable object store is retried (with backoff) before the job fails as
    /// `storage_unavailable`, keeping its checkpoints.
    pub storage_unavailable_wait_s: u64,
}

impl Default for StoreParams {
    fn default() -> Self {
        StoreParams {
            storage_unavailable_wait_s: 60,
        }
    }
}

/// One step of a workflow with its typed parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum StepDef {
    Download(DownloadParams),
    Extract(ExtractParams),
    Store(StoreParams),
}

impl StepDef {
    pub fn kind(&self) -> StepKind {
        match self {
            StepDef::Download(_) => StepKind::Download,
            StepDef::Extract(_) => StepKind::Extract,
            StepDef::Store(_) => StepKind::Store,
        }
    }

    /// blake3 over the step kind, its implementation version and the parameters that change its
    /// output, as canonical JSON.
    pub fn definition_hash(&self) -> Hash {
        let kind = self.kind();
        let output_params = match self {
            StepDef::Download(_) => serde_json::json!({}),
            StepDef::Extract(params) => serde_json::json!({
                "audio": params.audio,
                "sample_rate": params.sample_rate,
                "channels": params.channels,
                // The fallback only matters to a stream copy.
                "fallback": (params.audio == AudioMode::Copy).then_some(params.fallback),
                "preferred_language": params.preferred_language,
            }),
            StepDef::Store(_) => serde_json::json!({}),
        };
        let canonical = serde_json::json!({
            "step": kind.name(),
            "version": kind.implementation_version(),
            "params": output_params,
        });
        Hash::of(canonical.to_string().as_bytes())
    }
}

/// A named, validated workflow.
#[derive(Debug, Clone, PartialEq)]
pub struct Workflow {
    pub name: String,
    pub description: String,
    /// Runs a job gets when it fails with a transient class: after the first, each is an
    /// automatic retry after a growing delay (`model::scheduling::RetryPolicy`). 1 retries never.
    pub attempts_max: u32,
    /// Where every job of this workflow sends its completion notice (`webhook`), unless its
    /// submission names another. Checked by the network guard when a job is submitted.
    pub callback_url: Option<String>,
    pub steps: Vec<StepDef>,
}

/// A workflow's `attempts_max` when its file gives none.
pub const JOB_ATTEMPTS_MAX_DEFAULT: u32 = 3;

impl Workflow {
    pub fn download(&self) -> &DownloadParams {
        self.steps
            .iter()
            .find_map(|step| match step {
                StepDef::Download(params) => Some(params),
                _ => None,
            })
            .expect("a validated workflow has a download step")
    }

    pub fn extract(&self) -> &ExtractParams {
        self.steps
            .iter()
            .find_map(|step| match step {
                StepDef::Extract(params) => Some(params),
                _ => None,
            })
            .expect("a validated workflow has an extract step")
    }

    pub fn store(&self) -> &StoreParams {
        self.steps
            .iter()
            .find_map(|step| match step {
                StepDef::Store(params) => Some(params),
                _ => None,
            })
            .expect("a validated workflow has a store step")
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkflowFile {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    attempts_max: Option<u32>,
    #[serde(default)]
    callback_url: Option<String>,
    steps: Vec<StepFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    kind: StepKind,
    #[serde(default)]
    params: Option<toml::Value>,
}

/// The order every workflow's steps must have: each step consumes the outputs of those before it.
const STEP_ORDER: [StepKind; 3] = [StepKind::Download, StepKind::Extract, StepKind::Store];

/// A step's parameters read from its TOML table, then checked by `validate`; the reason they are
/// refused otherwise.
fn step_params<P: serde::de::DeserializeOwned>(
    params: toml::Value,
    validate: fn(&P) -> Result<(), String>,
) -> Result<P, String> {
    let params: P = params
        .try_into()
        .map_err(|error: toml::de::Error| error.to_string())?;
    validate(&params)?;
    Ok(params)
}

/// Parses and validates one workflow definition. `file_name` is the name the file gives.
pub fn parse_workflow(file_name: &str, text: &str) -> Result<Workflow, WorkflowError> {
    let invalid = |reason: String| WorkflowError::Invalid {
        name: file_name.to_string(),
        reason,
    };
    let file: WorkflowFile = toml::from_str(text).map_err(|error| invalid(error.to_string()))?;
    if file.name != file_name {
        return Err(invalid(format!(
            "the file declares name {:?}; a workflow's name must match its file name",
            file.name
        )));
    }
    if !file
        .name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        || file.name.is_empty()
    {
        return Err(invalid(
            "a name uses only letters, digits, '-' and '_'".into(),
        ));
    }
    let kinds: Vec<StepKind> = file.steps.iter().map(|step| step.kind).collect();
    if kinds != STEP_ORDER {
        return Err(invalid(format!(
            "steps must be download, extract, store in that order (found {:?})",
            kinds.iter().map(|kind| kind.name()).collect::<Vec<_>>()
        )));
    }
    let mut steps = Vec::with_capacity(file.steps.len());
    for step in file.steps {
        let params = step
            .params
            .unwrap_or_else(|| toml::Value::Table(Default::default()));
        let refused = |reason: String| invalid(format!("step {}: {reason}", step.kind.name()));
        steps.push(match step.kind {
            StepKind::Download => {
                StepDef::Download(step_params(params, DownloadParams::validate).map_err(refused)?)
            }
            StepKind::Extract => {
                StepDef::Extract(step_params(params, ExtractParams::validate).map_err(refused)?)
            }
            StepKind::Store => StepDef::Store(step_params(params, |_| Ok(())).map_err(refused)?),
        });
    }
    let attempts_max = file.attempts_max.unwrap_or(JOB_ATTEMPTS_MAX_DEFAULT);
    if !(1..=100).contains(&attempts_max) {
        return Err(invalid(format!(
            "attempts_max must be between 1 and 100, not {attempts_max}"
        )));
    }
    let callback_url = file
        .callback_url
        .map(|url| url.trim().to_string())
        .filter(|url| !url.is_empty());
    if let Some(url) = &callback_url {
        match url::Url::parse(url) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
            _ => {
                return Err(invalid(format!(
                    "callback_url {:?} is not an http(s) URL",
                    crate::model::redact::redact_url(url)
                )));
            }
        }
    }
    Ok(Workflow {
        name: file.name,
        description: file.description,
        attempts_max,
        callback_url,
        steps,
    })
}

/// Every workflow this process knows: the built-ins, then those of `--workflows DIR`.
#[derive(Debug, Clone)]
pub struct WorkflowRegistry {
    workflows: BTreeMap<String, Workflow>,
}

impl WorkflowRegistry {
    pub fn builtin() -> WorkflowRegistry {
        let workflows = BUILTIN_WORKFLOWS
            .iter()
            .map(|(name, text)| {
                let workflow = parse_workflow(name, text).expect("built-in workflows are valid");
                (workflow.name.clone(), workflow)
            })
            .collect();
        WorkflowRegistry { workflows }
    }

    /// The built-ins plus every `*.toml` in `dir`; a file there overrides a built-in of its name.
    pub fn load(dir: Option<&Path>) -> Result<WorkflowRegistry, WorkflowError> {
        let mut registry = WorkflowRegistry::builtin();
        let Some(dir) = dir else {
            return Ok(registry);
        };
        let io_error = |source| WorkflowError::Io {
            path: dir.display().to_string(),
            source,
        };
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .map_err(io_error)?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
            .collect();
        paths.sort();
        for path in paths {
            let file_name = path
                .file_stem()
                .and_then(|stem| stem.to_str())
                .unwrap_or_default()
                .to_string();
            let text = std::fs::read_to_string(&path).map_err(|source| WorkflowError::Io {
                path: path.display().to_string(),
                source,
            })?;
            let workflow = parse_workflow(&file_name, &text)?;
            registry.workflows.insert(workflow.name.clone(), workflow);
        }
        Ok(registry)
    }

    pub fn get(&self, name: &str) -> Result<&Workflow, WorkflowError> {
        self.workflows
            .get(name)
            .ok_or_else(|| WorkflowError::Unknown {
                name: name.to_string(),
                known: self
                    .workflows
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.workflows.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_ingest_is_download_extract_store_with_copy_audio() {
        let registry = WorkflowRegistry::builtin();
        let workflow = registry.get("ingest").unwrap();
        let kinds: Vec<_> = workflow.steps.iter().map(StepDef::kind).collect();
        assert_eq!(kinds, STEP_ORDER);
        assert_eq!(workflow.extract().audio, AudioMode::Copy);
    }

    #[test]
    fn changing_an_extract_parameter_changes_only_the_extract_hash() {
        let base = WorkflowRegistry::builtin().get("ingest").unwrap().clone();
        let mut changed = base.clone();
        for step in &mut changed.steps {
            if let StepDef::Extract(params) = step {
                params.audio = AudioMode::Flac;
            }
        }
        let hashes = |workflow: &Workflow| {
            workflow
                .steps
                .iter()
                .map(StepDef::definition_hash)
                .collect::<Vec<_>>()
        };
        let (before, after) = (hashes(&base), hashes(&changed));
        assert_eq!(before[0], after[0]);
        assert_ne!(before[1], after[1]);
        assert_eq!(before[2], after[2]);
    }

    #[test]
    fn download_limits_do_not_change_the_download_hash() {
        let mut params = DownloadParams::default();
        let before = StepDef::Download(params.clone()).definition_hash();
        params.read_timeout_s += 1;
        assert_eq!(before, StepDef::Download(params).definition_hash());
    }

    /// Why workflow `x` written as `text` is refused.
    fn refusal(text: &str) -> String {
        parse_workflow("x", text).unwrap_err().to_string()
    }

    /// Workflow `x` of the three steps, its extract step given `params`.
    fn extracting_with(params: &str) -> String {
        format!(
            "name = \"x\"\n[[steps]]\nkind = \"download\"\n[[steps]]\nkind = \"extract\"\nparams = {{ {params} }}\n[[steps]]\nkind = \"store\"\n"
        )
    }

    #[test]
    fn steps_out_of_order_are_refused_with_the_reason() {
        let error = refusal(
            "name = \"x\"\n[[steps]]\nkind = \"store\"\n[[steps]]\nkind = \"download\"\n[[steps]]\nkind = \"extract\"\n",
        );
        assert!(error.contains("download, extract, store"), "{error}");
    }

    // Guards against the hole where a workflow with a zero read timeout or four billion redirects loaded,
    // and every download then failed or ran without bound.
    #[test]
    fn download_parameters_out_of_range_are_refused_naming_the_range() {
        for (params, named) in [
            (
                "read_timeout_s = 0",
                "read_timeout_s must be in 1..=3600, not 0",
            ),
            (
                "redirects_max = 4294967295",
                "redirects_max must be in 0..=20",
            ),
            (
                "connect_timeout_s = 0",
                "connect_timeout_s must be in 1..=600",
            ),
            ("attempts_max = 0", "attempts_max must be in 1..=100"),
            ("max_bytes = 0", "max_bytes must be in 1..="),
            (
                "backoff_initial_ms = 5000, backoff_max_ms = 10",
                "backoff_max_ms (10) must be at least",
            ),
            (
                "user_agent = \"a\\r\\nX-Injected: 1\"",
                "user_agent must be one line",
            ),
            ("platform_hosts = [\"\"]", "platform_hosts entry"),
        ] {
            let text = format!(
                "name = \"x\"\n[[steps]]\nkind = \"download\"\nparams = {{ {params} }}\n[[steps]]\nkind = \"extract\"\n[[steps]]\nkind = \"store\"\n"
            );
            let error = refusal(&text);
            assert!(error.contains("step download"), "{params}: {error}");
            assert!(error.contains(named), "{params}: {error}");
        }
        assert_eq!(DownloadParams::default().validate(), Ok(()));
        for (_, text) in BUILTIN_WORKFLOWS {
            let name = toml::from_str::<toml::Value>(text).unwrap()["name"]
                .as_str()
                .unwrap()
                .to_string();
            parse_workflow(&name, text).unwrap();
        }
    }

    #[test]
    fn unknown_parameters_are_refused() {
        let error = refusal(&extracting_with("audoi = \"copy\""));
        assert!(error.contains("audoi"), "{error}");
    }

    #[test]
    fn a_directory_workflow_overrides_the_builtin_of_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let text = BUILTIN_WORKFLOWS[0]
            .1
            .replace("audio = \"copy\"", "audio = \"wav\"");
        std::fs::write(dir.path().join("ingest.toml"), text).unwrap();
        let registry = WorkflowRegistry::load(Some(dir.path())).unwrap();
        assert_eq!(
            registry.get("ingest").unwrap().extract().audio,
            AudioMode::Wav
        );
    }

    #[test]
    fn builtin_asr_is_16_khz_mono_flac() {
        let registry = WorkflowRegistry::builtin();
        let params = registry.get("asr").unwrap().extract();
        assert_eq!(params.audio, AudioMode::Flac);
        assert_eq!(params.sample_rate, Some(16_000));
        assert_eq!(params.channels, Some(1));
    }

    #[test]
    fn only_output_affecting_extract_parameters_change_its_hash() {
        let hash = |params: &ExtractParams| StepDef::Extract(params.clone()).definition_hash();
        let base = ExtractParams::default();
        let mut limits = base.clone();
        limits.threads = 7;
        limits.probe_timeout_ms = 1;
        limits.timeout_base_ms = 1;
        limits.timeout_ms_per_media_s = 1;
        limits.timeout_max_ms = 2;
        assert_eq!(
            hash(&base),
            hash(&limits),
            "threads and timeouts change no byte"
        );
        let mut language = base.clone();
        language.preferred_language = Some("fra".into());
        assert_ne!(hash(&base), hash(&language));
        let mut fallback = base.clone();
        fallback.fallback = TranscodeTarget::Wav;
        assert_ne!(
            hash(&base),
            hash(&fallback),
            "a copy's fallback can change its output"
        );
        let flac = ExtractParams {
            audio: AudioMode::Flac,
            ..base.clone()
        };
        let flac_other_fallback = ExtractParams {
            fallback: TranscodeTarget::Mp3,
            ..flac.clone()
        };
        assert_eq!(
            hash(&flac),
            hash(&flac_other_fallback),
            "a transcode has no fallback"
        );
    }

    #[test]
    fn extract_parameters_an_encoder_would_refuse_are_refused_when_loaded() {
        for (params, reason) in [
            ("audio = \"opus\", sample_rate = 44100", "opus supports"),
            ("audio = \"mp3\", channels = 6", "1..=2"),
            (
                "audio = \"copy\", fallback = \"opus\", sample_rate = 22050",
                "opus supports",
            ),
            ("sample_rate = 1000", "outside"),
            ("preferred_language = \"en g\"", "language tag"),
            ("threads = 0", "threads"),
            (
                "timeout_base_ms = 10, timeout_max_ms = 5",
                "timeout_base_ms",
            ),
        ] {
            let error = parse_workflow("x", &extracting_with(params))
                .expect_err(params)
                .to_string();
            assert!(error.contains(reason), "{params}: {error}");
        }
        let accepted = extracting_with("audio = \"opus\", sample_rate = 16000, channels = 1");
        assert!(parse_workflow("x", &accepted).is_ok());
    }
}
