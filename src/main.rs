//! The `dsnode` command: parse flags, set up logging, call the library
//! ([`dsnode::cli::run`]), print, and return an exit code (0 success, 1
//! failure, 2 usage error). Every client subcommand acts as the node whose
//! `--data-dir` it is given and prints exactly one JSON object on stdout
//! with `--json`.

use std::process::ExitCode;

use clap::Parser;

use dsnode::cli::{
    self,
    args::{Cli, Command, LogFormat, wants_json},
    output::{ReportedFailure, error_sentence},
};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let serving = matches!(cli.command, Command::Serve(_));
    // The demo narrates; its nodes' expected refusals need not be logged.
    let quiet = matches!(cli.command, Command::Demo(_));
    init_tracing(
        cli.log_format,
        match (serving, quiet) {
            (true, _) => "info",
            (_, true) => "error",
            _ => "warn",
        },
    );
    let json = wants_json(&cli.command);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli.command)) {
        Ok(Some(out)) => {
            out.print(json);
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(ReportedFailure(out)) = e.downcast_ref::<ReportedFailure>() {
                out.print(json);
            } else {
                eprintln!("error: {}", error_sentence(&e));
            }
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat, default: &str) {
    dsnode::runtime::logging::init(
        match format {
            LogFormat::Human => dsnode::runtime::logging::Format::Human,
            LogFormat::Json => dsnode::runtime::logging::Format::Json,
        },
        default,
    );
}
