//! The `kpr` binary: parse arguments, set up logging and the runtime, map results to exit codes.

use std::process::ExitCode;

use clap::Parser;
use kinesis_policy_reconciler::cli::{self, Cli, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = cli
        .global
        .log_level
        .clone()
        .unwrap_or_else(|| "warn".into());
    cli::init_logging(&level, cli.global.log_format == Some(LogFormat::Json));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(cli::EXIT_ERROR);
        }
    };
    match runtime.block_on(cli::run(cli)).map_err(anyhow::Error::from) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(cli::EXIT_ERROR)
        }
    }
}
