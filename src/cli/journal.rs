//! `journal list|show` (what the import journal holds, never the bytes sent) and
//! `pin-reset` (the marker a refused PIN leaves).

use std::io::Write;
use std::path::Path;

use super::{Error, JournalCommand, io};
use crate::config::Config;
use crate::journal::{Journal, Record};

/// `journal list` / `journal show`.
pub(super) fn run(command: JournalCommand, out: &mut dyn Write) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Io(format!("tokio runtime: {e}")))?;
    match command {
        JournalCommand::List { common, limit } => {
            let cfg = Config::load(&common.config)?;
            let journal = Journal::new(&cfg.journal)?;
            let records = rt.block_on(journal.list(limit))?;
            if common.json {
                let v = serde_json::to_string(&records).map_err(|e| Error::Io(e.to_string()))?;
                writeln!(out, "{v}").map_err(io)?;
                return Ok(());
            }
            writeln!(
                out,
                "{:<32} {:<24} {:<16} {:<9} {:<20} {:<24} created",
                "token", "time", "operation", "state", "caller", "idempotency key"
            )
            .map_err(io)?;
            for r in &records {
                writeln!(
                    out,
                    "{:<32} {:<24} {:<16} {:<9} {:<20} {:<24} {}",
                    r.token,
                    r.created_at(),
                    r.operation,
                    r.state.as_str(),
                    r.caller,
                    r.idempotency_key.as_deref().unwrap_or("-"),
                    r.created_id.as_deref().unwrap_or("-")
                )
                .map_err(io)?;
            }
            Ok(())
        }
        JournalCommand::Show { common, token } => {
            let cfg = Config::load(&common.config)?;
            let journal = Journal::new(&cfg.journal)?;
            let Some(r) = rt.block_on(journal.get(&token))? else {
                return Err(Error::Usage(format!(
                    "no record {token:?} in the journal ({})",
                    journal.describe()
                )));
            };
            if common.json {
                let v = serde_json::to_string_pretty(&r).map_err(|e| Error::Io(e.to_string()))?;
                writeln!(out, "{v}").map_err(io)?;
            } else {
                write!(out, "{}", show_text(&r)).map_err(io)?;
            }
            Ok(())
        }
    }
}

/// A record, one field a line.
fn show_text(r: &Record) -> String {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut lines = vec![
        ("token", r.token.clone()),
        ("state", r.state.as_str().to_string()),
        ("operation", r.operation.clone()),
        ("caller", r.caller.clone()),
        ("idempotency key", opt(&r.idempotency_key)),
        ("target", r.target.clone()),
        ("endpoint", r.endpoint.clone()),
        ("algorithm", r.algorithm.clone()),
        ("source key label", opt(&r.made.source_key_label)),
        ("source key id", opt(&r.made.source_key_id_hex)),
        ("wrap mode", opt(&r.made.mode)),
        (
            "vault wrapping key sha256",
            opt(&r.made.wrapping_key_sha256),
        ),
        (
            "body",
            r.body_bytes
                .map_or("none (nothing sent)".into(), |n| format!("{n} bytes")),
        ),
        ("created", opt(&r.created_id)),
        ("opc-request-id", opt(&r.opc_request_id)),
        ("recorded", r.created_at()),
        ("updated", r.updated_at()),
    ];
    if let Some(f) = &r.failure {
        lines.push(("refusal", format!("{} {}: {}", f.status, f.code, f.message)));
    }
    if let Some(owner) = &r.lease_owner {
        lines.push(("claimed by", owner.clone()));
    }
    lines
        .iter()
        .map(|(k, v)| format!("{k:<26} {v}\n"))
        .collect()
}

/// `pin-reset`: removes the PIN-refusal marker and the journal's record of it (which every
/// replica reads), saying what they held.
pub(super) fn pin_reset(config: &Path, out: &mut dyn Write) -> Result<(), Error> {
    let cfg = Config::load(config)?;
    let marker = cfg
        .hsm
        .pin_marker
        .as_ref()
        .ok_or_else(|| Error::Usage("the config names no PIN-refusal marker".into()))?;
    let mut said = Vec::new();
    match std::fs::read_to_string(marker) {
        Ok(text) => {
            std::fs::remove_file(marker)
                .map_err(|e| Error::Io(format!("{}: {e}", marker.display())))?;
            said.push(format!("removed {} ({})", marker.display(), text.trim()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::Io(format!("{}: {e}", marker.display()))),
    }
    let token = cfg.hsm.token_name();
    let cleared = match Journal::if_there(&cfg.journal)? {
        Some(journal) => journal
            .clear_pin_refusal(token)
            .map(|said| said.map(|text| (text, journal.describe().to_string()))),
        None => Ok(None),
    };
    match cleared {
        Ok(Some((text, journal))) => said.push(format!(
            "removed the record in the import journal ({journal}) that every replica reads ({text})"
        )),
        Ok(None) => {}
        Err(e) => {
            for s in &said {
                writeln!(out, "{s}").map_err(io)?;
            }
            return Err(Error::Io(format!(
                "the import journal's record of the refused PIN could not be removed ({e}); until it is, every replica refuses to log in: run pin-reset again once the journal is reachable"
            )));
        }
    }
    if said.is_empty() {
        return writeln!(
            out,
            "no PIN-refusal marker at {} and none in the import journal: nothing to reset",
            marker.display()
        )
        .map_err(io);
    }
    writeln!(
        out,
        "{}; the next start logs in with the PIN as configured",
        said.join("; ")
    )
    .map_err(io)
}
