//! `narra serve`: the HTTP API and the admin console in the process that holds the home, with a worker running queued jobs beside them unless `--no-worker`. Like `worker`, it
//! stops on SIGINT/SIGTERM: the server stops accepting and lets requests in flight finish, the
//! worker claims nothing more and releases what it runs (`engine::shutdown`). Meanwhile other narra
//! commands reach this process through the home's socket (`cli::remote`).

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use futures::future::BoxFuture;

use super::args::ServeArgs;
use super::{CliError, Context, io};
use crate::engine::Engine;
use crate::engine::orchestrator::{reclaim_orphans, work};

/// The HTTP server `narra serve` runs, handed in by the binary (`api::http_service`): the CLI and
/// the API never use each other. Given the address to bind, it checks its configuration (the error
/// is a usage error) and returns the service to run on the bound listener until drained.
pub type HttpServer = fn(SocketAddr) -> Result<HttpService, String>;

/// A configured [`HttpServer`]: given the engine, the listener and the signal to drain on, serves.
pub type HttpService = Box<
    dyn FnOnce(
            Engine,
            tokio::net::TcpListener,
            BoxFuture<'static, ()>,
        ) -> BoxFuture<'static, std::io::Result<()>>
        + Send,
>;

/// Serves until a signal; prints the URL it serves on (port 0 resolved) as one line of stdout.
pub async fn serve(
    engine: &Engine,
    args: ServeArgs,
    context: &Context,
    out: &mut impl Write,
) -> Result<ExitCode, CliError> {
    let http = context
        .http
        .ok_or_else(|| CliError::Usage("this process serves no HTTP API".into()))?;
    let bind = args.bind;
    let service = http(bind).map_err(CliError::Usage)?;
    // One orchestrator serves the whole command: the reclaim before and the worker after.
    let orchestrator = engine.orchestrator();
    reclaim_orphans(&orchestrator).await?;
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|error| CliError::Usage(format!("cannot listen on {bind}: {error}")))?;
    let local = listener.local_addr().map_err(io)?;
    writeln!(out, "http://{local}/").map_err(io)?;
    out.flush().map_err(io)?;
    tracing::info!(address = %local, worker = !args.no_worker, "serving the API and the console");
    let stopping = engine.shutdown.clone();
    let server = service(
        engine.clone(),
        listener,
        Box::pin(async move { stopping.draining().await }),
    );
    if args.no_worker {
        server.await.map_err(io)?;
    } else {
        let worker = work(
            &orchestrator,
            args.concurrency,
            false,
            engine.shutdown.draining(),
        );
        let (served, worked) = tokio::join!(server, worker);
        served.map_err(io)?;
        worked?;
    }
    Ok(ExitCode::SUCCESS)
}
