//! The media helper: FFmpeg's libraries in a long-lived, sandboxed process of the narra binary,
//! so that probing and extracting a job's audio starts no program.
//!
//! The extract step once started three programs per job (ffprobe, ffmpeg, ffprobe of the output):
//! 90 to 160 ms each on a small machine before any media is read, most of the time of a short
//! clip. A helper is started once per job slot and answers requests for as long as it lives.
//!
//! - `protocol`: the frames on the helper's stdin and stdout.
//! - `pool`: the worker's side: starting, reusing, killing helpers; how one ended.
//! - `helper`: the helper's side: its main loop.
//! - `sandbox`: what a helper gives up before its first request (limits, network, files).
//! - `libav`: the media work itself, through the ffmpeg-next bindings.
//! - this file: the calls the extract step makes, with what a helper's death, a timeout and a
//!   cancellation mean for the step.
//!
//! The programs stay: `media = "cli"` in a workflow, or `NARRA_MEDIA=cli`, takes the extract
//! step's program path, which is also the oracle the differential tests compare with.
//!
//! Nothing here decides which stream is extracted or whether the result is good: the extract step
//! does, for both paths, from the probe JSON the helper returns in ffprobe's shape.

pub mod helper;
pub mod libav;
pub mod pool;
pub mod protocol;
pub mod sandbox;

use std::path::Path;
use std::time::Duration;

use crate::model::ErrorClass;
use crate::model::attribution::MEDIA_CRASH_DEATHS;
use crate::steps::{Cancel, StepError};
pub use pool::{CallError, HELPER_ARG, HelperPool};
pub use protocol::{Request, Response, WritePlan};

/// The setting that picks the media path for every workflow: `cli` for the programs.
pub const MEDIA_ENV: &str = "NARRA_MEDIA";

/// The probe of `input` (inside the scratch root), as ffprobe's JSON.
pub async fn probe(
    pool: &HelperPool,
    input: &Path,
    timeout: Duration,
    cancel: &mut Cancel,
) -> Result<String, StepError> {
    let request = Request::Probe {
        input: input.to_path_buf(),
    };
    Ok(ask(pool, &request, timeout, cancel, &mut |_| {}).await?.0)
}

/// Sends `request` (a [`Request::Probe`] or a [`Request::Extract`]) to a helper of `pool` and
/// returns the JSON it answers with: the input's probe, or the written output's (ffprobe's JSON),
/// with what libav logged about damage it read past (a write only). Bytes written so far go to
/// `on_progress`.
///
/// A helper that dies is restarted: [`MEDIA_CRASH_DEATHS`] deaths on the request fail it as
/// `media_crash`, naming how the last helper ended. A timeout kills the helper and is
/// `extract_timeout`, never a death.
pub async fn ask(
    pool: &HelperPool,
    request: &Request,
    timeout: Duration,
    cancel: &mut Cancel,
    on_progress: &mut (dyn FnMut(u64) + Send),
) -> Result<(String, Vec<String>), StepError> {
    // A probe is answered with `Probed`, a write with `Written`.
    let probing = matches!(request, Request::Probe { .. });
    let what = if probing { "probing" } else { "extracting" };
    let mut deaths = 0;
    loop {
        // After a death, a fresh helper: an idle one may carry damage from an earlier input.
        let called = pool
            .call(request, deaths > 0, timeout, cancel, on_progress)
            .await;
        let how = match called {
            Ok(Response::Failed { class, message }) => {
                return Err(StepError::new(
                    ErrorClass::from_name(&class).unwrap_or(ErrorClass::Internal),
                    message,
                ));
            }
            Ok(Response::Probed { json }) if probing => return Ok((json, Vec::new())),
            Ok(Response::Written { json, warnings }) if !probing => return Ok((json, warnings)),
            Ok(other) => {
                return Err(StepError::new(
                    ErrorClass::Internal,
                    format!("the media helper answered {what} with {other:?}"),
                ));
            }
            Err(CallError::Died(how)) => how,
            Err(CallError::TimedOut) => {
                return Err(StepError::new(
                    ErrorClass::ExtractTimeout,
                    format!(
                        "the media helper did not finish {what} within {:.1} s and was killed",
                        timeout.as_secs_f64()
                    ),
                ));
            }
            Err(CallError::Cancelled) => {
                return Err(StepError::new(
                    ErrorClass::Cancelled,
                    format!("cancelled while the media helper was {what}; it was killed"),
                ));
            }
            Err(CallError::Broken(message)) => {
                return Err(StepError::new(ErrorClass::Internal, message));
            }
        };
        deaths += 1;
        if deaths >= MEDIA_CRASH_DEATHS {
            return Err(StepError::new(
                ErrorClass::MediaCrash,
                format!(
                    "the media helper died {deaths} times {what} this input (the last one \
                     {how}): the media crashes FFmpeg's libraries; no other job was affected"
                ),
            ));
        }
        tracing::warn!(
            what,
            how = %how,
            "the media helper died; trying again in a fresh one"
        );
    }
}

/// What a helper's sandbox allows, tried from inside a helper of `pool` (`doctor`).
pub async fn self_check(
    pool: &HelperPool,
    timeout: Duration,
) -> Result<sandbox::SelfCheck, String> {
    let (_keep, mut cancel) = tokio::sync::watch::channel(false);
    match pool
        .call(&Request::SelfCheck, true, timeout, &mut cancel, &mut |_| {})
        .await
    {
        Ok(Response::SelfChecked(check)) => Ok(check),
        Ok(other) => Err(format!(
            "the media helper answered a self-check with {other:?}"
        )),
        Err(error) => Err(format!("the media helper did not answer: {error:?}")),
    }
}

/// Which path the extract step takes.
#[derive(Debug, Clone)]
pub enum Media {
    /// ffprobe and ffmpeg, started per job.
    Programs,
    /// The helpers.
    Helpers(std::sync::Arc<HelperPool>),
}

impl Media {
    /// The helpers of this narra binary confined to `scratch_root` (and reading `read_roots`),
    /// unless [`MEDIA_ENV`] says `cli`. An unknown value is an error naming it.
    pub fn from_env(
        scratch_root: &Path,
        read_roots: Vec<std::path::PathBuf>,
    ) -> Result<Media, String> {
        match std::env::var(MEDIA_ENV).unwrap_or_default().as_str() {
            "cli" => Ok(Media::Programs),
            "" | "helper" => {
                // A typo in the sandbox setting is the operator's, said now, not a helper that
                // dies on every job.
                sandbox::Disabled::parse(&std::env::var(sandbox::DISABLE_ENV).unwrap_or_default())?;
                // This process's own binary, even if the file was replaced by an upgrade since.
                let program = std::path::PathBuf::from("/proc/self/exe");
                Ok(Media::Helpers(std::sync::Arc::new(HelperPool::new(
                    program,
                    scratch_root.to_path_buf(),
                    read_roots,
                    sandbox::Limits::default(),
                ))))
            }
            other => Err(format!("{MEDIA_ENV}={other:?}: expected cli or helper")),
        }
    }
}
