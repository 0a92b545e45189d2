//! Graceful shutdown: the stages a process goes through after SIGINT/SIGTERM, shared by everything
//! that runs jobs in it.
//!
//! `Running` -> `Draining` (claim nothing more; a running job stops at its next step boundary, so
//! the step in flight still reaches its checkpoint) -> `Expired` (the grace period is over: running
//! steps are cancelled, which kills their subprocesses). Either way the orchestrator releases the
//! job (`running -> pending`, the reclaim transition) instead of ending it, so the next run resumes
//! it from its checkpoints. This module only holds the stage; it never touches a job or a signal
//! (the CLI turns signals into [`Shutdown::begin`] and [`Shutdown::expire`]).

use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Running,
    Draining,
    Expired,
}

/// A process-wide shutdown switch; clones share it.
#[derive(Debug, Clone)]
pub struct Shutdown {
    sender: std::sync::Arc<watch::Sender<Stage>>,
}

impl Default for Shutdown {
    fn default() -> Shutdown {
        Shutdown::new()
    }
}

impl Shutdown {
    pub fn new() -> Shutdown {
        let (sender, _) = watch::channel(Stage::Running);
        Shutdown {
            sender: std::sync::Arc::new(sender),
        }
    }

    /// Stop claiming; let running steps reach their checkpoint.
    pub fn begin(&self) {
        self.advance(Stage::Draining);
    }

    /// The grace period is over: cancel running steps.
    pub fn expire(&self) {
        self.advance(Stage::Expired);
    }

    fn advance(&self, stage: Stage) {
        self.sender.send_if_modified(|current| {
            if *current < stage {
                *current = stage;
                true
            } else {
                false
            }
        });
    }

    pub fn stage(&self) -> Stage {
        *self.sender.borrow()
    }

    pub fn is_draining(&self) -> bool {
        self.stage() >= Stage::Draining
    }

    /// Resolves once the stage is at least `stage`.
    pub async fn reached(&self, stage: Stage) {
        let mut receiver = self.sender.subscribe();
        // The sender lives as long as `self`, so waiting cannot fail.
        let _ = receiver.wait_for(|current| *current >= stage).await;
    }

    /// Resolves once shutdown has begun.
    pub async fn draining(&self) {
        self.reached(Stage::Draining).await;
    }

    /// Resolves once the grace period is over.
    pub async fn expired(&self) {
        self.reached(Stage::Expired).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Guards that the stages only move forward and that waiters see a stage reached before they
    // started waiting.
    #[tokio::test]
    async fn stages_only_move_forward_and_waiters_see_past_stages() {
        let shutdown = Shutdown::new();
        assert_eq!(shutdown.stage(), Stage::Running);
        shutdown.expire();
        shutdown.begin();
        assert_eq!(shutdown.stage(), Stage::Expired);
        shutdown.clone().draining().await;
        shutdown.expired().await;
        assert!(shutdown.is_draining());
    }
}
