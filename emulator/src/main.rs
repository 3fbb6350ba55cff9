//! `oci-kms-emulator`: a local OCI KMS management endpoint for demos and integration tests
//! (see the crate's lib.rs). Not for production.

use std::process::ExitCode;

use clap::Parser;

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
    oci_kms_emulator::main_with(
        "oci-kms-emulator",
        "OCI_KMS_EMULATOR_LOG",
        oci_kms_emulator::run(cli.opts),
    )
}
