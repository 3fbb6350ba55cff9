//! `hsm-bridge`: parse the command line, run the subcommand, print one line on error.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = hsm_bridge::cli::Cli::parse();
    if cli.is_serve() {
        hsm_bridge::hardening::ignore_hangup();
    }
    let filter = EnvFilter::try_from_env("HSM_BRIDGE_LOG")
        .unwrap_or_else(|_| EnvFilter::new(cli.default_log_level()));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if cli.log_json() {
        logs.json().init();
    } else {
        logs.init();
    }
    if let Err(e) = hsm_bridge::hardening::no_core_dumps() {
        eprintln!("hsm-bridge: {e}");
        return ExitCode::FAILURE;
    }
    // Before any private key is loaded: OpenSSL keeps their private numbers in it.
    if let Err(e) = hsm_bridge::hardening::openssl_secure_heap() {
        eprintln!("hsm-bridge: {e}");
        return ExitCode::FAILURE;
    }
    // Not locked for the whole run: the daemon's threads print too.
    match hsm_bridge::cli::run(cli, &mut std::io::stdout()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hsm-bridge: {e}");
            ExitCode::FAILURE
        }
    }
}
