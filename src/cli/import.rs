//! `import`: the export core's import of one key into a `[destinations.NAME]`
//! (src/export/to.rs), the operator as the caller, without gRPC or the queue, audited like
//! the daemon's. The setup and the ending it shares with `import-key-version`
//! ([`CliImport`]).

use std::io::Write;
use std::sync::Arc;

use serde_json::json;

use super::audit::CliAudit;
use super::{Error, ImportArgs, RotateArgs, io};
use crate::audit::{Attempt, Operation};
use crate::config::Config;
use crate::export::{
    Caller, Export, ExportError, Exporter, HsmPath, ImportAsk, ImportTo, Made, Progress, RotateTo,
};
use crate::hsm::Hsm;
use crate::journal::Journal;

/// What an import from the command line opens: the config, the audit log, the journal (its
/// key from the token), the token, and a runtime.
pub(super) struct CliImport {
    pub cfg: Config,
    pub audit: CliAudit,
    pub journal: Arc<Journal>,
    pub hsm: Arc<Hsm>,
    pub rt: tokio::runtime::Runtime,
}

impl CliImport {
    pub(super) fn open(config: &std::path::Path) -> Result<CliImport, Error> {
        let cfg = Config::load(config)?;
        let audit = CliAudit::open(&cfg)?;
        let journal = Journal::new(&cfg.journal)?;
        let hsm = Arc::new(Hsm::open_shared(
            &cfg.hsm,
            &cfg.policy,
            Some(journal.clone()),
        )?);
        journal.set_key(Journal::key_from(&cfg.journal, &hsm)?);
        Ok(CliImport {
            cfg,
            audit,
            journal,
            hsm,
            rt: super::runtime()?,
        })
    }

    /// The config's destinations.
    pub(super) fn destinations(&self) -> Arc<crate::clouds::Clouds> {
        Arc::new(crate::clouds::Clouds::new(
            &self.cfg.destinations,
            self.cfg.policy.min_wrapping_key_bits,
            self.journal.clone(),
        ))
    }

    /// The export core over the token, directly.
    pub(super) fn exporter(&self) -> Exporter {
        Exporter::new(HsmPath::Direct(self.hsm.clone()))
    }

    /// Ends the import: the runtime and the token closed, the audit record written (an
    /// error if it cannot be); the answer with what the record says was done.
    pub(super) fn finish<T>(
        self,
        exporter: Exporter,
        attempt: Attempt,
        result: Result<T, ExportError>,
    ) -> Result<(T, Progress), Error> {
        let CliImport { audit, hsm, rt, .. } = self;
        drop(rt);
        drop(exporter);
        // The journal holds the HSM only weakly: the module is closed here, whatever it holds.
        if let Ok(hsm) = Arc::try_unwrap(hsm) {
            hsm.close();
        }
        let rec = super::record(attempt)?;
        let progress = rec.export.clone();
        match result {
            Ok(v) => {
                audit.write(rec, Ok(()))?;
                Ok((v, progress))
            }
            Err(e) => {
                let (code, message) = (e.code(), e.message());
                audit.write(rec, Err((code, message.clone())))?;
                Err(Error::Oci(format!("{code}: {message}")))
            }
        }
    }
}

/// `import`: one key into a destination, audited.
pub(super) fn import_cmd(a: ImportArgs, out: &mut dyn Write) -> Result<(), Error> {
    let key = a.key.key_ref()?;
    let cli = CliImport::open(&a.common.config)?;
    let started = std::time::Instant::now();
    let mut attempt = cli.audit.attempt(Operation::Import);
    let exporter = cli.exporter();
    let valid_to =
        match a.valid_to.as_deref() {
            Some(d) => Some(crate::time::parse_date(d).ok_or_else(|| {
                Error::Usage(format!("--valid-to {d:?}: give a date, YYYY-MM-DD"))
            })?),
            None => None,
        };
    let result = cli.rt.block_on(async {
        let admitted = Export::admit(Caller::operator(super::CLI_CALLER), Operation::Import)?
            .key(key, attempt.record())?;
        let idem = match a.idempotency_key.as_deref() {
            Some(k) => crate::export::check_idempotency_key(k)?,
            None => None,
        };
        let to = ImportTo {
            destination: &a.to,
            target: a.target.as_deref().unwrap_or(""),
            create: a.new_key.then_some(a.key_usage.as_deref().unwrap_or("")),
            format: a.format.as_deref().unwrap_or(""),
            valid_to,
            key_ops: &a.key_ops,
            create_kek: a.create_kek,
        };
        let ask = ImportAsk {
            idempotency_key: idem,
            wait: a.wait,
            deadline: None,
        };
        exporter
            .import_to(&cli.destinations(), admitted, to, ask, &mut attempt)
            .await
    });
    let (made, progress) = cli.finish(exporter, attempt, result)?;
    print_made(&made, &progress, started, a.common.json, out)?;
    Ok(())
}

/// What an import made, as a JSON line or a sentence.
fn print_made(
    made: &Made,
    progress: &Progress,
    started: std::time::Instant,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let ms = started.elapsed().as_millis();
    if json {
        let v = json!({
            "cloud": made.cloud,
            "destination": made.destination,
            "key_id": made.key_id,
            "version_id": made.version_id,
            "state": made.state,
            "version_state": made.version_state,
            "time_created": made.time_created,
            "created_key": made.created_key,
            "format": made.format,
            "mode": progress.mode,
            "request_id": progress.opc_request_id,
            "wrapping_key_sha256": progress.wrapping_key_sha256,
            "source_key_label": progress.label,
            "source_key_id_hex": progress.id_hex,
            "generated_key": progress.generated,
            "millis": ms,
        });
        writeln!(out, "{v}").map_err(io)?;
    } else {
        writeln!(
            out,
            "imported {} into {} ({}) as {} {} {} ({}, key {}), {} mode, {ms} ms",
            progress.label.as_deref().unwrap_or("?"),
            made.destination,
            made.cloud,
            made.key_id,
            match made.cloud {
                "aws" => "material",
                _ => "version",
            },
            made.version_id,
            made.version_state,
            made.state,
            progress.mode.unwrap_or("?"),
        )
        .map_err(io)?;
    }
    Ok(())
}

/// `rotate`: a key generated in the HSM and imported as the target's new version
/// (src/export/rotate.rs), the operator as the caller, audited like the daemon's.
pub(super) fn rotate_cmd(a: RotateArgs, out: &mut dyn Write) -> Result<(), Error> {
    let idem = match a.idempotency_key {
        Some(k) => k,
        None => {
            let mut b = [0u8; 12];
            getrandom::fill(&mut b).map_err(|e| Error::Io(format!("random: {e}")))?;
            let k = format!("rotate-{}", crate::wrap::hex(&b));
            eprintln!(
                "rotation {k}: if this run fails, run again with --idempotency-key {k} to finish it"
            );
            k
        }
    };
    let cli = CliImport::open(&a.common.config)?;
    let started = std::time::Instant::now();
    let mut attempt = cli.audit.attempt(Operation::RotateKey);
    let exporter = cli.exporter();
    let result = cli.rt.block_on(async {
        let idem = crate::export::check_idempotency_key(&idem)?;
        let to = RotateTo {
            destination: &a.to,
            target: &a.target,
            base: &a.base,
            format: a.format.as_deref().unwrap_or(""),
        };
        let ask = ImportAsk {
            idempotency_key: idem,
            wait: a.wait,
            deadline: None,
        };
        exporter
            .rotate_to(
                &cli.destinations(),
                Caller::operator(super::CLI_CALLER),
                to,
                ask,
                &mut attempt,
            )
            .await
    });
    let (rotated, progress) = cli.finish(exporter, attempt, result)?;
    if !a.common.json {
        writeln!(
            out,
            "new HSM key {} (CKA_ID {}), {}",
            rotated.label,
            rotated.id_hex,
            match rotated.generated {
                true => "generated now",
                false => "generated by an earlier attempt of this rotation",
            }
        )
        .map_err(io)?;
    }
    print_made(&rotated.made, &progress, started, a.common.json, out)
}
