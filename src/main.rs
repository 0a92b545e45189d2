//! The `narra` binary: parse the command line, set up logging, call the library, and map errors
//! to exit codes (0 success, 1 a job or check failed, 2 usage or configuration, 3 home in use).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
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
    match runtime.block_on(narra::cli::run(cli)) {
        Ok(code) => code,
        Err(error) => {
            let mut message = error.to_string();
            if let narra::cli::CliError::Other(inner) = &error {
                message = format!("{inner:#}");
            }
            eprintln!("narra: {message}");
            ExitCode::from(error.exit_code())
        }
    }
}
