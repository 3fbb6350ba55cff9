//! `aws-kms-emulator`: a local AWS KMS endpoint for the key-import calls, for demos and
//! integration tests (see the crate's src/aws/mod.rs). Not for production.

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "aws-kms-emulator",
    version,
    about = "A local AWS KMS endpoint (SigV4 checks, import unwrap and rules, fault injection) for tests and demos"
)]
struct Cli {
    #[command(flatten)]
    opts: oci_kms_emulator::aws::AwsOptions,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    oci_kms_emulator::main_with(
        "aws-kms-emulator",
        "AWS_KMS_EMULATOR_LOG",
        oci_kms_emulator::aws::run(cli.opts),
    )
}
