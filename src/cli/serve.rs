//! `narra serve`: the HTTP API and the admin console (`crate::api`) in the process that holds the
//! home, with a worker running queued jobs beside them unless `--no-worker`. Like `worker`, it
//! stops on SIGINT/SIGTERM: the server stops accepting and lets requests in flight finish, the
//! worker claims nothing more and releases what it runs (`engine::shutdown`). Meanwhile other narra
//! commands reach this process through the home's socket (`cli::remote`).

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use super::{CliError, io};
use crate::api::{ApiConfig, TOKEN_ENV, router};
use crate::engine::Engine;
use crate::engine::orchestrator::{reclaim_orphans, work};

/// Serves until a signal; prints the URL it serves on (port 0 resolved) as one line of stdout.
pub async fn serve(
    engine: &Engine,
    out: &mut impl Write,
    bind: SocketAddr,
    no_worker: bool,
    concurrency: usize,
) -> Result<ExitCode, CliError> {
    let config =
        ApiConfig::for_bind(bind, std::env::var(TOKEN_ENV).ok()).map_err(CliError::Usage)?;
    if config.token.is_none() {
        tracing::warn!("{TOKEN_ENV} is not set: the API and the console are read-only");
    }
    reclaim_orphans(engine).await?;
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|error| CliError::Usage(format!("cannot listen on {bind}: {error}")))?;
    let local = listener.local_addr().map_err(io)?;
    writeln!(out, "http://{local}/").map_err(io)?;
    out.flush().map_err(io)?;
    tracing::info!(address = %local, worker = !no_worker, "serving the API and the console");
    let stopping = engine.shutdown.clone();
    let server = crate::api::serve(listener, router(engine.clone(), config), async move {
        stopping.draining().await
    });
    if no_worker {
        server.await.map_err(io)?;
    } else {
        let worker = work(engine, concurrency, false, engine.shutdown.draining());
        let (served, worked) = tokio::join!(server, worker);
        served.map_err(io)?;
        worked?;
    }
    Ok(ExitCode::SUCCESS)
}
