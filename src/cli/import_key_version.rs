//! `import-key-version`: the export core's import (src/export/) of one key, the operator as
//! the caller, without gRPC or the queue, audited like the daemon's.

use std::io::Write;
use std::sync::Arc;

use serde_json::json;

use super::import::CliImport;
use super::{Error, ImportKeyVersionArgs, io};
use crate::audit::Operation;
use crate::export::oci::{self, NewVersion, OciSide, Vault};
use crate::export::{Caller, Export, ImportAsk, Progress};
use crate::oci::kms::KeyVersion;
use crate::wrap::{Algorithm, Format};

/// `import-key-version`: the export core's import of one key into OCI, audited.
pub(super) fn import_key_version_cmd(
    a: ImportKeyVersionArgs,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let ImportKeyVersionArgs {
        common,
        key,
        oci_key_id,
        endpoint,
        connection,
        algorithm,
        idempotency_key,
        wait,
    } = a;
    let alg: Algorithm = algorithm.parse()?;
    let key = key.key_ref()?;
    let cli = CliImport::open(&common.config)?;
    let oci = Arc::new(OciSide::load(
        &cli.cfg.oci,
        cli.cfg.policy.min_wrapping_key_bits,
        cli.journal.clone(),
    )?);
    let started = std::time::Instant::now();
    let mut attempt = cli.audit.attempt(Operation::ImportKeyVersion);
    let exporter = cli.exporter();
    let result = cli.rt.block_on(async {
        let rec = attempt.record();
        let export = Export::admit(
            Caller::operator(super::CLI_CALLER),
            Operation::ImportKeyVersion,
        )?
        .key(key, rec)?
        .format(Format::oci(alg), rec);
        oci::check_key_ocid(&oci_key_id)?;
        rec.oci_key_id = Some(oci_key_id.clone());
        let idem = match idempotency_key.as_deref() {
            Some(k) => crate::export::check_idempotency_key(k)?,
            None => None,
        };
        let vault = Vault::new(
            oci,
            (&endpoint, &connection),
            (rec.request_id.clone(), None),
            cli.cfg.policy.protection_modes.clone(),
            rec,
        )?;
        let dest = NewVersion {
            vault,
            key_id: oci_key_id.clone(),
        };
        let ask = ImportAsk {
            idempotency_key: idem,
            wait,
            deadline: None,
        };
        exporter
            .import(&export, std::sync::Arc::new(dest), ask, &mut attempt)
            .await
    });
    let (version, progress) = cli.finish(exporter, attempt, result)?;
    print_import(
        out,
        common.json,
        &version,
        &progress,
        started.elapsed().as_millis(),
    )
}

/// The CLI's report of an import: JSON, or one line.
fn print_import(
    out: &mut dyn Write,
    json: bool,
    version: &KeyVersion,
    progress: &Progress,
    ms: u128,
) -> Result<(), Error> {
    if json {
        let v = json!({
            "key_version": version,
            "opc_request_id": progress.opc_request_id,
            "attempts": progress.attempts,
            "mode": progress.mode,
            "wrapping_key_sha256": progress.wrapping_key_sha256,
            "millis": ms,
        });
        writeln!(out, "{v}").map_err(io)?;
    } else {
        writeln!(
                out,
                "imported {} into {} as version {} ({}), {} mode, {} attempt(s), opc-request-id {}, {ms} ms",
                progress.label.as_deref().unwrap_or("?"),
                version.key_id,
                version.id,
                version.lifecycle_state,
                progress.mode.unwrap_or("?"),
                progress.attempts,
                progress.opc_request_id.as_deref().unwrap_or("")
            )
            .map_err(io)?;
    }
    Ok(())
}
