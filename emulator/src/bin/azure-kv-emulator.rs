//! `azure-kv-emulator`: a local Azure Key Vault (or Managed HSM) endpoint for the BYOK
//! calls, and the Entra ID token endpoint its tokens come from, for demos and integration
//! tests (see the crate's src/azure/mod.rs). Not for production.

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "azure-kv-emulator",
    version,
    about = "A local Azure Key Vault / Managed HSM endpoint and token authority (bearer challenge, BYOK unwrap and rules, fault injection) for tests and demos"
)]
struct Cli {
    #[command(flatten)]
    opts: oci_kms_emulator::azure::AzureOptions,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    oci_kms_emulator::main_with(
        "azure-kv-emulator",
        "AZURE_KV_EMULATOR_LOG",
        oci_kms_emulator::azure::run(cli.opts),
    )
}
