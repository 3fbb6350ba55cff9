//! `import-key-version`: the import module's path for one key, without gRPC, queue or
//! callers, audited like the daemon's.

use std::io::Write;
use std::sync::Arc;

use serde_json::json;

use super::audit::CliAudit;
use super::{Error, ImportKeyVersionArgs, io};
use crate::audit::Operation;
use crate::config::Config;
use crate::hsm::{Hsm, KeyRef};
use crate::import::{self, ImportError, OciSide};
use crate::oci::kms::{Call, ImportKeyVersionDetails, KeyVersion};
use crate::wrap::{Algorithm, Format, WrappingKey};

/// Whom the CLI's idempotency keys belong to (a daemon caller's name cannot collide with it:
/// it has a space).
const CLI_CALLER: &str = "hsm-bridge cli";

/// `import-key-version`: the import module's path for one key, audited.
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
    let cfg = Config::load(&common.config)?;
    let audit = CliAudit::open(&cfg)?;
    let journal = crate::journal::Journal::new(&cfg.journal)?;
    let oci = Arc::new(OciSide::load(
        &cfg.oci,
        cfg.policy.min_wrapping_key_bits,
        journal.clone(),
    )?);
    let hsm = Arc::new(Hsm::open_shared(
        &cfg.hsm,
        &cfg.policy,
        Some(journal.clone()),
    )?);
    journal.set_key(crate::journal::Journal::key_from(&cfg.journal, &hsm)?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Io(format!("tokio runtime: {e}")))?;
    let started = std::time::Instant::now();
    let mut rec = audit.record(Operation::ImportKeyVersion, &key, Format::oci(alg));
    let ask = CliImport {
        key: &key,
        alg,
        oci_key_id: &oci_key_id,
        endpoint: &endpoint,
        connection: &connection,
        idempotency_key: idempotency_key.as_deref(),
        wait,
        protection_modes: &cfg.policy.protection_modes,
    };
    let result = rt.block_on(import_key_version(&oci, &hsm, &ask, &mut rec));
    drop(rt);
    // The journal holds the HSM only weakly: the module is closed here, whatever it holds.
    if let Ok(hsm) = Arc::try_unwrap(hsm) {
        hsm.close();
    }
    let (version, progress) = match result {
        Ok(r) => {
            audit.write(rec, Ok(()))?;
            r
        }
        Err(e) => {
            let (code, message) = (e.code(), e.message());
            audit.write(rec, Err((code, message.clone())))?;
            return Err(Error::Oci(format!("{code}: {message}")));
        }
    };
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
    progress: &import::Progress,
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

/// What `import-key-version` was asked.
struct CliImport<'a> {
    key: &'a KeyRef,
    alg: Algorithm,
    oci_key_id: &'a str,
    endpoint: &'a str,
    connection: &'a str,
    idempotency_key: Option<&'a str>,
    wait: bool,
    protection_modes: &'a [crate::config::ProtectionMode],
}

/// The CLI's ImportKeyVersion: the daemon's path without gRPC, queue or callers; `rec`
/// learns what happened.
async fn import_key_version(
    oci: &Arc<OciSide>,
    hsm: &Hsm,
    a: &CliImport<'_>,
    rec: &mut crate::audit::Record,
) -> Result<(KeyVersion, import::Progress), ImportError> {
    import::check_key_ocid(a.oci_key_id)?;
    rec.oci_key_id = Some(a.oci_key_id.to_string());
    let idem = match a.idempotency_key {
        Some(k) => import::check_idempotency_key(k)?,
        None => None,
    };
    let (connection, identity) = oci.identity(a.connection)?;
    rec.oci_connection = Some(connection);
    let ep = oci.endpoint(a.endpoint)?;
    rec.oci_endpoint = Some(ep.base.clone());
    let call = Call {
        identity: &identity,
        endpoint: &ep,
        request_id: None,
        deadline: None,
    };
    let mut progress = import::Progress::default();
    let target = import::existing_key(oci, &call, a.oci_key_id, a.protection_modes, &mut progress)
        .await
        .inspect_err(|_| rec.export.merge(&progress))?;
    rec.compartment_id = Some(target.compartment_id.clone());
    rec.protection_mode = Some(target.protection_mode.clone());
    let described = import::describe(&import::Ask {
        caller: CLI_CALLER,
        op: "ImportKeyVersion",
        target: a.oci_key_id,
        key: a.key,
        format: Format::oci(a.alg),
        endpoint: &ep,
        details: "",
    });
    let (key, alg) = (a.key, a.alg);
    let steps = import::Steps {
        recheck: || async move {
            hsm.check_export(key, Format::oci(alg), None, |_| Ok(()))
                .map(|_| ())
                .map_err(ImportError::from)
        },
        wrap: |wk: Arc<WrappingKey>| async move {
            hsm.wrap(key, &wk, Format::oci(alg), None)
                .map_err(ImportError::from)
        },
        build: |w: &crate::hsm::Wrapped| {
            serde_json::to_vec(&ImportKeyVersionDetails {
                wrapped_import_key: import::wrapped_import_key(w),
            })
            .map_err(|e| ImportError::Body(e.to_string()))
        },
    };
    let prepared = import::prepare(oci, &call, idem, &described, &mut progress, steps).await;
    rec.export.merge(&progress);
    let answer = import::send(
        prepared?,
        &mut progress,
        |body, token| async move {
            oci.kms
                .import_key_version(&call, a.oci_key_id, &body, &token)
                .await
        },
        |v: &KeyVersion| &v.id,
    )
    .await;
    rec.export.merge(&progress);
    let mut version = answer?;
    if a.wait {
        version = import::wait(
            oci,
            || oci.kms.get_key_version(&call, &version.key_id, &version.id),
            |v: &KeyVersion| v.lifecycle_state.as_str(),
            None,
            &format!("key version {}", version.id),
        )
        .await?;
    }
    Ok((version, progress))
}
