//! Waking idle schedulers: `wait_for_work` on PostgreSQL returns when `NOTIFY narra_jobs` arrives
//! (a job became pending, or a job stopped running and freed a slot or a host), or when its
//! timeout runs out, whichever is first.
//!
//! One connection per store LISTENs, on a task of its own, started at the first wait and started
//! again by a later wait if it died (the wait then times out as a plain sleep would: nothing is
//! lost but the early wake-up). A notification that arrives while nobody waits is kept as one
//! permit (`Notify::notify_one`), so a job submitted between a claim that found nothing and the
//! wait that follows still wakes it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, NoTls};

use super::JOBS_CHANNEL;

pub(super) struct Listener {
    config: tokio_postgres::Config,
    wake: Arc<Notify>,
    task: std::sync::Mutex<Option<(JoinHandle<()>, watch::Receiver<bool>)>>,
}

impl Listener {
    pub(super) fn new(config: tokio_postgres::Config) -> Listener {
        Listener {
            config,
            wake: Arc::new(Notify::new()),
            task: std::sync::Mutex::new(None),
        }
    }

    /// Starts the listening task unless it runs; returns what says when it listens.
    fn ensure_started(&self) -> Option<watch::Receiver<bool>> {
        let mut task = self.task.lock().ok()?;
        if let Some((handle, listening)) = task.as_ref()
            && !handle.is_finished()
        {
            return Some(listening.clone());
        }
        let (ready, listening) = watch::channel(false);
        let config = self.config.clone();
        let wake = Arc::clone(&self.wake);
        let handle = tokio::spawn(async move {
            if let Err(error) = listen(config, wake, ready).await {
                tracing::debug!(%error, "the {JOBS_CHANNEL} listener stopped");
            }
        });
        *task = Some((handle, listening.clone()));
        Some(listening)
    }

    /// Waits until the listener has subscribed, at most `timeout`; whether it has (for tests,
    /// which must not submit before anyone listens).
    #[cfg(test)]
    pub(super) async fn listening(&self, timeout: Duration) -> bool {
        let Some(mut listening) = self.ensure_started() else {
            return false;
        };
        tokio::time::timeout(timeout, listening.wait_for(|ready| *ready))
            .await
            .is_ok_and(|ready| ready.is_ok())
    }

    pub(super) async fn wait(&self, timeout: Duration) {
        self.ensure_started();
        tokio::select! {
            () = self.wake.notified() => {}
            () = tokio::time::sleep(timeout) => {}
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Ok(mut task) = self.task.lock()
            && let Some((handle, _)) = task.take()
        {
            handle.abort();
        }
    }
}

/// Connects, LISTENs, and turns every notification into a wake-up, until the connection ends.
async fn listen(
    config: tokio_postgres::Config,
    wake: Arc<Notify>,
    ready: watch::Sender<bool>,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (sender, mut notifications) = tokio::sync::mpsc::unbounded_channel();
    // The connection is driven here; the client's LISTEN below needs it driven meanwhile.
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = futures::StreamExt::next(&mut messages).await {
            match message {
                Ok(AsyncMessage::Notification(_)) => {
                    if sender.send(()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    let listened = client
        .batch_execute(&format!("LISTEN {JOBS_CHANNEL}"))
        .await;
    if let Err(error) = listened {
        driver.abort();
        return Err(error);
    }
    let _ = ready.send(true);
    while notifications.recv().await.is_some() {
        wake.notify_one();
    }
    drop(client);
    driver.abort();
    Ok(())
}
