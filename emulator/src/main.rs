//! `oci-kms-emulator`: a local OCI KMS management endpoint for demos and integration tests
//! (see the crate's lib.rs). Not for production.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "oci-kms-emulator",
    version,
    about = "A local OCI KMS management endpoint (signature checks, import validation, fault injection) for tests and demos"
)]
struct Cli {
    #[command(flatten)]
    opts: oci_kms_emulator::Options,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("OCI_KMS_EMULATOR_LOG")
                .unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("oci-kms-emulator: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(oci_kms_emulator::run(cli.opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("oci-kms-emulator: {e}");
            ExitCode::FAILURE
        }
    }
}
