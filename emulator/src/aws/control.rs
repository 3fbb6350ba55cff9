//! The test-control API, unsigned, under `/_emulator/`: the request log, faults, keys made
//! without a signature, a key's materials and call counts, and (with `--test-oracle`) the
//! material a key was given.

use std::time::SystemTime;

use serde_json::{Value, json};

use super::protocol::{AwsError, Input, json_reply};
use super::{AwsKms, Fault, Reply, Request};

fn control_error(status: u16, code: &str, message: impl Into<String>) -> Reply {
    AwsError {
        status,
        code: code.into(),
        message: message.into(),
    }
    .reply()
}

fn not_found(message: impl Into<String>) -> Reply {
    control_error(404, "NotFoundException", message)
}

impl AwsKms {
    pub(super) fn control(&self, req: &Request<'_>, now: SystemTime) -> Reply {
        let rest = &req.path["/_emulator/".len()..];
        match (req.method, rest) {
            ("GET", "requests") => json_reply(200, &json!(self.log())),
            ("POST", "faults") => {
                let parsed = serde_json::from_slice::<Vec<Fault>>(req.body)
                    .or_else(|_| serde_json::from_slice::<Fault>(req.body).map(|f| vec![f]));
                match parsed {
                    Ok(faults) => {
                        let n = faults.len();
                        self.lock().faults.extend(faults);
                        json_reply(200, &json!({ "added": n }))
                    }
                    Err(e) => control_error(400, "ValidationException", format!("a fault: {e}")),
                }
            }
            ("DELETE", "faults") => {
                self.lock().faults.clear();
                json_reply(200, &json!({}))
            }
            ("POST", "keys") => {
                match Input::parse(req.body).and_then(|body| self.create_key(&body, now)) {
                    Ok(v) => json_reply(200, &v["KeyMetadata"]),
                    Err(e) => e.reply(),
                }
            }
            ("GET", "keys") => {
                let ids: Vec<String> = self.lock().keys.keys().cloned().collect();
                json_reply(200, &json!(ids))
            }
            ("GET", r) if r.starts_with("keys/") => self.key_report(&r["keys/".len()..], now),
            ("GET", r) if r.starts_with("material/") => self.oracle(&r["material/".len()..], now),
            _ => not_found("no such emulator control route"),
        }
    }

    /// A key's metadata, its materials and how often it was called.
    fn key_report(&self, key_id: &str, now: SystemTime) -> Reply {
        let mut inner = self.lock();
        let key = match self.resolve(&mut inner, key_id, now) {
            Ok(k) => k,
            Err(e) => return not_found(e.message),
        };
        let materials: Vec<Value> = key
            .materials
            .iter()
            .map(|m| {
                json!({
                    "KeyMaterialId": m.id,
                    "KeyMaterialState": m.state.name(),
                    "ImportState": m.import_state(),
                    "KeyMaterialDescription": m.description,
                    "ExpirationModel": m.expiration,
                })
            })
            .collect();
        json_reply(
            200,
            &json!({
                "KeyMetadata": key.metadata(),
                "materials": materials,
                "rotate_on_demand_calls": key.rotate_calls,
                "import_calls": key.import_calls,
            }),
        )
    }

    /// `{keyId}/{keyMaterialId}`: the material, hex, while it is imported.
    fn oracle(&self, rest: &str, now: SystemTime) -> Reply {
        if !self.cfg.test_oracle {
            return not_found("start the emulator with --test-oracle to read imported material");
        }
        let Some((key_id, material_id)) = rest.split_once('/') else {
            return not_found("expected material/{keyId}/{keyMaterialId}");
        };
        let mut inner = self.lock();
        let key = match self.resolve(&mut inner, key_id, now) {
            Ok(k) => k,
            Err(e) => return not_found(e.message),
        };
        match key
            .materials
            .iter()
            .find(|m| m.id == material_id)
            .and_then(|m| m.bytes.as_ref())
        {
            Some(b) => json_reply(200, &json!({ "material_hex": hsm_bridge::wrap::hex(b) })),
            None => not_found("no such key material on this key, or it expired"),
        }
    }
}
