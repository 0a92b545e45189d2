//! The `narra` binary: parse the command line, set up logging, call the library, and map errors
//! to exit codes (0 success, 1 a job or check failed, 2 usage or configuration, 3 home in use).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // A media helper started by a worker: no command line to parse, no logging, no runtime.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(narra::steps::media::HELPER_ARG) {
        let status = narra::steps::media::helper::main(&args[2..]);
        return ExitCode::from(u8::try_from(status).unwrap_or(1));
    }
    // Before anything is created: the home, its state store and scratch are the owner's alone.
    narra::private_files::restrict_umask();
    let cli = narra::cli::Cli::parse();
    narra::logging::init(cli.global.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("narra: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(narra::cli::run(cli, http_service));
    drop(runtime);
    report_peak_rss();
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("narra: {}", error.message());
            ExitCode::from(error.exit_code())
        }
    }
}

/// `narra serve`'s HTTP side: the API's server, handed to the CLI here, since the CLI and the API
/// never use each other.
fn http_service(bind: std::net::SocketAddr) -> Result<narra::cli::serve::HttpService, String> {
    narra::api::http_service(bind)
        .map(|service| Box::new(service) as narra::cli::serve::HttpService)
}

/// With `NARRA_REPORT_PEAK_RSS=1`, prints the process's peak resident memory as the last stderr
/// line (`narra: peak_rss_kib=N`), so memory tests and benches can read it.
fn report_peak_rss() {
    if std::env::var("NARRA_REPORT_PEAK_RSS").as_deref() != Ok("1") {
        return;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let peak = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        });
    if let Some(peak_kib) = peak {
        eprintln!("narra: peak_rss_kib={peak_kib}");
    }
}
