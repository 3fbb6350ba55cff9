//! The test-control API, unauthenticated, under `/_emulator/`: the request log, faults,
//! keys made without a token (e.g. key-exchange keys Key Vault would refuse), a key's
//! versions, and (with `--test-oracle`) what an imported version was given.

use std::time::SystemTime;

use serde_json::{Value, json};

use super::keys::reply;
use super::protocol::{KvError, json_reply};
use super::{AzureKv, Fault, Reply, Request};

fn not_found(message: impl Into<String>) -> Reply {
    KvError::new(404, "NotFound", message).reply()
}

impl AzureKv {
    pub(super) fn control(&self, req: &Request<'_>, now: SystemTime) -> Reply {
        let rest = &req.path["/_emulator/".len()..];
        let base = format!("https://{}", req.header("host").unwrap_or("localhost"));
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
                    Err(e) => KvError::bad(format!("a fault: {e}")).reply(),
                }
            }
            ("DELETE", "faults") => {
                self.lock().faults.clear();
                json_reply(200, &json!({}))
            }
            ("POST", "keys") => {
                let body: Value = match serde_json::from_slice(req.body) {
                    Ok(v) => v,
                    Err(_) => return KvError::bad("the body is not JSON").reply(),
                };
                let Some(name) = body["name"].as_str() else {
                    return KvError::bad("name is required").reply();
                };
                reply(self.create_key(name, &body, &base, now, false))
            }
            ("GET", "keys") => {
                let names: Vec<String> = self.lock().keys.keys().cloned().collect();
                json_reply(200, &json!(names))
            }
            ("GET", r) if r.starts_with("keys/") => self.key_report(&r["keys/".len()..], &base),
            ("GET", r) if r.starts_with("material/") => self.oracle(&r["material/".len()..]),
            _ => not_found("no such emulator control route"),
        }
    }

    /// Every version of a key: kid, kty, key_ops, tags, created, enabled, imported.
    fn key_report(&self, name: &str, base: &str) -> Reply {
        let inner = self.lock();
        let Some(key) = inner.keys.get(name) else {
            return not_found(format!("no key named {name:?}"));
        };
        let versions: Vec<Value> = key
            .versions
            .iter()
            .map(|v| {
                json!({
                    "version": v.id,
                    "kid": v.kid(base, name),
                    "kty": v.kty.name(),
                    "key_ops": v.key_ops,
                    "tags": v.tags,
                    "created": v.attributes()["created"],
                    "enabled": v.enabled,
                    "imported": v.was_imported,
                })
            })
            .collect();
        json_reply(200, &json!({ "name": name, "versions": versions }))
    }

    /// `{name}/{version}`: what the version was imported as, hex.
    fn oracle(&self, rest: &str) -> Reply {
        if !self.cfg.test_oracle {
            return not_found("start the emulator with --test-oracle to read imported material");
        }
        let Some((name, version)) = rest.split_once('/') else {
            return not_found("expected material/{name}/{version}");
        };
        let inner = self.lock();
        match inner
            .keys
            .get(name)
            .and_then(|k| k.versions.iter().find(|v| v.id == version))
            .and_then(|v| v.imported.as_ref())
        {
            Some(b) => json_reply(200, &json!({ "material_hex": hsm_bridge::wrap::hex(b) })),
            None => not_found("no such imported key version"),
        }
    }
}
