//! `reconcile`: the journal, the token and a destination side by side. For every import the
//! journal holds for the destination (its records live `journal.retention_hours`): what the
//! destination says of the version now (there or not, its state, whether it is current)
//! and whether the HSM key it came from is still on the token. Then drift: versions of the
//! keys those imports went to that no record explains (made outside the daemon, or by an
//! import whose record expired), and exportable token keys no record says went there. A
//! table for a person, JSON for a script; the exit status is non-zero when something is out
//! of place (a version gone or unexplained, an HSM key gone, a record that fails its MAC).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::import::CliImport;
use super::{Error, ReconcileArgs, io};
use crate::aws::KeyArn;
use crate::export::aws::Imported;
use crate::hsm::{HsmError, KeyRef};
use crate::journal::{Record, State};

/// Most journal records read.
const MAX_RECORDS: u32 = 100_000;

/// One journaled import, and what is there now.
#[derive(Debug, Serialize)]
struct Import {
    token: String,
    created_at: String,
    operation: String,
    /// The journal's state: accepted, failed, unknown, prepared, claimed.
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_key_label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_key_id_hex: Option<String>,
    /// present, missing, or unknown (the record names no key).
    hsm_key: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version_id: Option<String>,
    /// What the destination says of the version: its state, or "missing".
    #[serde(skip_serializing_if = "Option::is_none")]
    version_state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    current: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<String>,
}

/// A version of a key the journal knows that no record explains.
#[derive(Debug, Serialize)]
struct Unexplained {
    key_id: String,
    version_id: String,
    state: String,
    current: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
}

/// An exportable token key no record says went to the destination.
#[derive(Debug, Serialize)]
struct NeverExported {
    label: String,
    id_hex: String,
    shape: String,
}

#[derive(Debug, Serialize)]
struct Reconciled {
    destination: String,
    cloud: &'static str,
    records_read: usize,
    imports: Vec<Import>,
    unexplained_versions: Vec<Unexplained>,
    never_exported: Vec<NeverExported>,
    /// Imports whose version or HSM key is gone, unexplained versions, forged records.
    problems: usize,
}

/// What the destination says of one key: its state, its current version, and every
/// version with its state and description.
struct KeyNow {
    state: String,
    current: Option<String>,
    versions: Vec<(String, String, Option<String>)>,
}

pub(super) fn reconcile_cmd(a: ReconcileArgs, out: &mut dyn Write) -> Result<(), Error> {
    let cli = CliImport::open(&a.common.config)?;
    let destinations = cli.destinations();
    let kms = match destinations.get(&a.to) {
        Some(crate::clouds::Dest::Aws(kms)) => kms.clone(),
        Some(_) => {
            return Err(Error::Usage(format!(
                "destination {:?} is not AWS KMS: reconcile reads AWS destinations only",
                a.to
            )));
        }
        None => {
            return Err(Error::Usage(format!(
                "no destination {:?} in the config's [destinations]",
                a.to
            )));
        }
    };
    let deadline = || Some(Instant::now() + Duration::from_secs(60));
    let result = cli.rt.block_on(async {
        let records = cli.journal.list(MAX_RECORDS).await?;
        let records_read = records.len();
        let mut imports = Vec::new();
        // The keys the records name, and the versions they explain.
        let mut explained: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut exported_ids = BTreeSet::new();
        let mut problems = 0;
        for r in records
            .into_iter()
            .filter(|r| r.endpoint == kms.endpoint)
            .filter(|r| matches!(r.operation.as_str(), "Import" | "RotateKey"))
        {
            let mut row = import_row(&r);
            // A listing leaves the body out, and the MAC covers it: the whole record, checked.
            let r = match cli.journal.get_verified(&r.token).await {
                Ok(Some(r)) => r,
                Ok(None) => continue, // expired since the listing
                Err(e @ crate::journal::JournalError::Forged { .. }) => {
                    row.problem = Some(e.to_string());
                    problems += 1;
                    imports.push(row);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if let Some(id) = &row.source_key_id_hex {
                exported_ids.insert(id.clone());
            }
            let answer: Option<Imported> = (r.state == State::Accepted)
                .then(|| {
                    r.answer
                        .as_deref()
                        .and_then(|a| serde_json::from_str(a).ok())
                })
                .flatten();
            if let Some(ans) = answer {
                // Another account's or region's key is another destination's, on the same
                // endpoint.
                let ours = KeyArn::parse(&ans.key_arn)
                    .is_some_and(|k| k.account == kms.cfg.account && k.region == kms.cfg.region);
                if !ours {
                    continue;
                }
                explained
                    .entry(ans.key_arn.clone())
                    .or_default()
                    .insert(ans.key_material_id.clone());
                row.key_id = Some(ans.key_arn);
                row.version_id = Some(ans.key_material_id);
            }
            imports.push(row);
        }
        // What the destination says of each key, once.
        let mut now: BTreeMap<String, Result<KeyNow, String>> = BTreeMap::new();
        for key in explained.keys() {
            now.insert(key.clone(), key_now(&kms, key, deadline()).await);
        }
        for row in &mut imports {
            let (Some(key), Some(version)) = (&row.key_id, &row.version_id) else {
                continue;
            };
            match &now[key] {
                Err(why) => {
                    row.problem = Some(why.clone());
                    problems += 1;
                }
                Ok(k) => {
                    row.key_state = Some(k.state.clone());
                    row.current = Some(k.current.as_deref() == Some(version.as_str()));
                    match k.versions.iter().find(|(id, _, _)| id == version) {
                        Some((_, state, _)) => row.version_state = Some(state.clone()),
                        None => {
                            row.version_state = Some("missing".into());
                            row.problem = Some("the destination has no such version".into());
                            problems += 1;
                        }
                    }
                }
            }
        }
        let mut unexplained = Vec::new();
        for (key, known) in &explained {
            let Ok(k) = &now[key] else { continue };
            for (id, state, description) in &k.versions {
                if !known.contains(id) {
                    unexplained.push(Unexplained {
                        key_id: key.clone(),
                        version_id: id.clone(),
                        state: state.clone(),
                        current: k.current.as_deref() == Some(id.as_str()),
                        description: description.clone(),
                    });
                }
            }
        }
        problems += unexplained.len();
        // The token: the keys the records came from, and the exportable ones none did.
        let hsm = cli.hsm.clone();
        let token_keys = hsm.list_keys(deadline())?;
        let on_token: BTreeSet<String> =
            token_keys.iter().map(|k| crate::wrap::hex(&k.id)).collect();
        for row in &mut imports {
            let Some(id) = &row.source_key_id_hex else {
                continue;
            };
            row.hsm_key = match on_token.contains(id) {
                true => "present",
                false => {
                    // Found by id, as an import finds it: not only the listing's view.
                    let id = crate::wrap::unhex(id).unwrap_or_default();
                    match hsm.find_key(&KeyRef::Id(id), deadline()) {
                        Ok(_) => "present",
                        Err(HsmError::KeyNotFound(_)) => {
                            row.problem.get_or_insert_with(|| {
                                "the HSM key it came from is no longer on the token".into()
                            });
                            problems += 1;
                            "missing"
                        }
                        Err(e) => return Err(Error::from(e)),
                    }
                }
            };
        }
        let never_exported = token_keys
            .iter()
            .filter(|k| !exported_ids.contains(&crate::wrap::hex(&k.id)))
            .filter_map(|k| {
                hsm.exportable(k).ok().map(|shape| NeverExported {
                    label: k.label.clone(),
                    id_hex: crate::wrap::hex(&k.id),
                    shape: shape.describe(),
                })
            })
            .collect();
        Ok::<_, Error>(Reconciled {
            destination: kms.name.clone(),
            cloud: crate::wrap::Cloud::Aws.as_str(),
            records_read,
            imports,
            unexplained_versions: unexplained,
            never_exported,
            problems,
        })
    });
    let CliImport { hsm, rt, .. } = cli;
    drop(rt);
    drop(destinations);
    if let Ok(hsm) = std::sync::Arc::try_unwrap(hsm) {
        hsm.close();
    }
    let r = result?;
    if a.common.json {
        let json = serde_json::to_string_pretty(&r).map_err(|e| Error::Io(e.to_string()))?;
        writeln!(out, "{json}").map_err(io)?;
    } else {
        print_table(&r, out)?;
    }
    if r.problems > 0 {
        return Err(Error::Io(format!(
            "{} thing(s) out of place between the journal, the token and {}",
            r.problems, r.destination
        )));
    }
    Ok(())
}

/// A record as a row, before the destination and the token are asked.
fn import_row(r: &Record) -> Import {
    Import {
        token: r.token.clone(),
        created_at: r.created_at(),
        operation: r.operation.clone(),
        state: r.state.as_str(),
        source_key_label: r.made.source_key_label.clone(),
        source_key_id_hex: r.made.source_key_id_hex.clone(),
        hsm_key: "unknown",
        key_id: None,
        version_id: None,
        version_state: None,
        current: None,
        key_state: None,
        problem: None,
    }
}

/// What KMS says of `key` now.
async fn key_now(
    kms: &crate::aws::Kms,
    key: &str,
    deadline: Option<Instant>,
) -> Result<KeyNow, String> {
    let meta = match kms.describe_key(key, deadline).await {
        Ok(m) => m.value,
        Err(e) if e.code() == crate::code::Code::NotFound => {
            return Err("the destination has no such key".into());
        }
        Err(e) => return Err(e.message()),
    };
    let versions = kms
        .materials(key, deadline)
        .await
        .map_err(|e| e.message())?
        .value
        .into_iter()
        .map(|m| {
            (
                m.key_material_id().unwrap_or_default().to_string(),
                m.key_material_state()
                    .map_or("", |s| s.as_str())
                    .to_string(),
                m.key_material_description().map(str::to_string),
            )
        })
        .collect();
    Ok(KeyNow {
        state: meta.key_state().map_or("", |s| s.as_str()).to_string(),
        current: meta.current_key_material_id().map(str::to_string),
        versions,
    })
}

fn print_table(r: &Reconciled, out: &mut dyn Write) -> Result<(), Error> {
    let w = |out: &mut dyn Write, s: String| writeln!(out, "{s}").map_err(io);
    w(
        out,
        format!(
            "{} ({}): {} journaled import(s), {} record(s) read",
            r.destination,
            r.cloud,
            r.imports.len(),
            r.records_read
        ),
    )?;
    for i in &r.imports {
        w(
            out,
            format!(
                "  {:<24} {:<9} hsm:{:<7} {} {} {}{}{}",
                i.source_key_label.as_deref().unwrap_or("-"),
                i.state,
                i.hsm_key,
                i.key_id.as_deref().unwrap_or("-"),
                i.version_id.as_deref().unwrap_or("-"),
                i.version_state.as_deref().unwrap_or("-"),
                match i.current {
                    Some(true) => " (current)",
                    _ => "",
                },
                i.problem
                    .as_deref()
                    .map(|p| format!("  <- {p}"))
                    .unwrap_or_default()
            ),
        )?;
    }
    if !r.unexplained_versions.is_empty() {
        w(
            out,
            "versions no journal record explains (made outside hsm-bridge, or by an import whose record expired):".into(),
        )?;
        for u in &r.unexplained_versions {
            w(
                out,
                format!(
                    "  {} {} {}{}",
                    u.key_id,
                    u.version_id,
                    u.state,
                    if u.current { " (current)" } else { "" }
                ),
            )?;
        }
    }
    if !r.never_exported.is_empty() {
        w(
            out,
            format!(
                "exportable token keys no record says went to {}:",
                r.destination
            ),
        )?;
        for k in &r.never_exported {
            w(out, format!("  {} ({}, id {})", k.label, k.shape, k.id_hex))?;
        }
    }
    Ok(())
}
