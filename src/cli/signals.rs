//! Turning SIGINT and SIGTERM into the stages of `engine::shutdown`: the first signal stops
//! claiming and starts the grace period, the grace period's end cancels running steps, and a second
//! signal exits at once (still safe: the next run reclaims and resumes what was running).

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};

use crate::engine::shutdown::Shutdown;

/// The exit code of a process stopped by a second signal (128 + SIGINT, the shell's convention).
pub const EXIT_INTERRUPTED_TWICE: i32 = 130;

/// Installs the handlers. Called before the home is opened, so an early signal is never the
/// default "die at once".
pub fn install(shutdown: Shutdown, grace: Duration) -> std::io::Result<()> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::warn!(
            grace_s = grace.as_secs_f64(),
            "shutting down: claiming no new jobs; running steps may reach their checkpoint within the grace period (a second signal exits at once)"
        );
        shutdown.begin();
        let grace_over = tokio::time::sleep(grace);
        tokio::pin!(grace_over);
        let mut expired = false;
        loop {
            tokio::select! {
                () = &mut grace_over, if !expired => {
                    expired = true;
                    tracing::warn!("grace period over: cancelling running steps and releasing their jobs");
                    shutdown.expire();
                }
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
            }
        }
        eprintln!("narra: second signal: exiting at once; the next run resumes the running jobs");
        std::process::exit(EXIT_INTERRUPTED_TWICE);
    });
    Ok(())
}
