//! `gcp-kms-emulator`: a local Google Cloud KMS endpoint for the key-import calls, and a
//! Compute Engine metadata server its tokens can come from, for demos and integration
//! tests (see the crate's src/gcp/mod.rs). Not for production.

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "gcp-kms-emulator",
    version,
    about = "A local Google Cloud KMS endpoint and metadata server (service-account JWTs, import jobs, a real unwrap of imports, fault injection) for tests and demos"
)]
struct Cli {
    #[command(flatten)]
    opts: oci_kms_emulator::gcp::GcpOptions,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    oci_kms_emulator::main_with(
        "gcp-kms-emulator",
        "GCP_KMS_EMULATOR_LOG",
        oci_kms_emulator::gcp::run(cli.opts),
    )
}
