//! Keys as the vault holds them: a name and its versions, each with a key type, the
//! operations it allows, attributes and tags, its public part, and (for keys the emulator
//! made) the private key, which a key-exchange key needs to open what is imported under
//! it. The Key Vault calls on them: create, get (latest or a version), and the paged
//! version listing.

use std::time::{SystemTime, UNIX_EPOCH};

use openssl::bn::BigNumContext;
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use super::protocol::{KvError, b64url, b64url_decode, json_reply, version_id};
use super::{AzureKv, MAX_KEYS, MAX_VERSIONS, PAGE};
use crate::state::Reply;

/// Key operations Key Vault knows.
pub(crate) const KEY_OPS: &[&str] = &[
    "encrypt",
    "decrypt",
    "sign",
    "verify",
    "wrapKey",
    "unwrapKey",
    "import",
    "export",
];
/// Curves Key Vault knows, with OpenSSL's names.
const CURVES: &[(&str, Nid)] = &[
    ("P-256", Nid::X9_62_PRIME256V1),
    ("P-384", Nid::SECP384R1),
    ("P-521", Nid::SECP521R1),
    ("P-256K", Nid::SECP256K1),
];

/// The key types the emulator keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kty {
    Rsa,
    RsaHsm,
    Ec,
    EcHsm,
    OctHsm,
}

impl Kty {
    pub(crate) fn parse(s: &str) -> Option<Kty> {
        Some(match s {
            "RSA" => Kty::Rsa,
            "RSA-HSM" => Kty::RsaHsm,
            "EC" => Kty::Ec,
            "EC-HSM" => Kty::EcHsm,
            "oct-HSM" => Kty::OctHsm,
            _ => return None,
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kty::Rsa => "RSA",
            Kty::RsaHsm => "RSA-HSM",
            Kty::Ec => "EC",
            Kty::EcHsm => "EC-HSM",
            Kty::OctHsm => "oct-HSM",
        }
    }

    pub(crate) fn is_rsa(self) -> bool {
        matches!(self, Kty::Rsa | Kty::RsaHsm)
    }

    pub(crate) fn is_ec(self) -> bool {
        matches!(self, Kty::Ec | Kty::EcHsm)
    }

    /// The operations a key of this type can allow (`import` only for RSA key-exchange
    /// keys).
    fn allows(self, op: &str) -> bool {
        match self {
            Kty::Rsa | Kty::RsaHsm => matches!(
                op,
                "encrypt" | "decrypt" | "sign" | "verify" | "wrapKey" | "unwrapKey" | "import"
            ),
            Kty::Ec | Kty::EcHsm => matches!(op, "sign" | "verify"),
            Kty::OctHsm => matches!(op, "encrypt" | "decrypt" | "wrapKey" | "unwrapKey"),
        }
    }

    /// What a key gets when the request names no operations.
    fn default_ops(self) -> Vec<String> {
        let ops: &[&str] = match self {
            Kty::Rsa | Kty::RsaHsm => &[
                "encrypt",
                "decrypt",
                "sign",
                "verify",
                "wrapKey",
                "unwrapKey",
            ],
            Kty::Ec | Kty::EcHsm => &["sign", "verify"],
            Kty::OctHsm => &["encrypt", "decrypt", "wrapKey", "unwrapKey"],
        };
        ops.iter().map(|s| s.to_string()).collect()
    }
}

/// The curve named `crv`.
pub(crate) fn curve(crv: &str) -> Option<Nid> {
    CURVES.iter().find(|(n, _)| *n == crv).map(|(_, nid)| *nid)
}

/// A curve's Key Vault name.
pub(crate) fn curve_name(nid: Nid) -> Option<&'static str> {
    CURVES
        .iter()
        .find(|(_, n)| *n == nid)
        .map(|(name, _)| *name)
}

/// The public part a key bundle shows.
#[derive(Clone)]
pub(crate) enum Public {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    Ec {
        crv: &'static str,
        x: Vec<u8>,
        y: Vec<u8>,
    },
    None,
}

impl Public {
    /// The public part of a private key (RSA or EC).
    pub(crate) fn of(key: &PKey<Private>) -> Result<Public, String> {
        if let Ok(rsa) = key.rsa() {
            return Ok(Public::Rsa {
                n: rsa.n().to_vec(),
                e: rsa.e().to_vec(),
            });
        }
        let ec = key.ec_key().map_err(|_| "neither RSA nor EC".to_string())?;
        let crv = ec
            .group()
            .curve_name()
            .and_then(curve_name)
            .ok_or("an EC key on a curve Key Vault does not know")?;
        let mut ctx = BigNumContext::new().map_err(|e| e.to_string())?;
        let (mut x, mut y) = (
            openssl::bn::BigNum::new().map_err(|e| e.to_string())?,
            openssl::bn::BigNum::new().map_err(|e| e.to_string())?,
        );
        ec.public_key()
            .affine_coordinates(ec.group(), &mut x, &mut y, &mut ctx)
            .map_err(|e| e.to_string())?;
        let size = (ec.group().degree() as usize).div_ceil(8) as i32;
        Ok(Public::Ec {
            crv,
            x: x.to_vec_padded(size).map_err(|e| e.to_string())?,
            y: y.to_vec_padded(size).map_err(|e| e.to_string())?,
        })
    }
}

std::thread_local! {
    /// Set while a call under a `commit_after_ms` fault is handled (on this thread, which
    /// handles it whole): what it makes appears that long after.
    pub(crate) static COMMIT_AFTER: std::cell::Cell<Option<std::time::Duration>> =
        const { std::cell::Cell::new(None) };
}

/// One version of a key.
pub(crate) struct Version {
    pub(crate) id: String,
    pub(crate) kty: Kty,
    pub(crate) key_ops: Vec<String>,
    pub(crate) enabled: bool,
    pub(crate) not_before: Option<u64>,
    pub(crate) expires: Option<u64>,
    pub(crate) created: SystemTime,
    pub(crate) tags: Map<String, Value>,
    pub(crate) public: Public,
    /// The private key of a key the emulator made (RSA and EC).
    pub(crate) private: Option<PKey<Private>>,
    /// What was imported (only with `--test-oracle`).
    pub(crate) imported: Option<Zeroizing<Vec<u8>>>,
    /// Whether the version came from an import.
    pub(crate) was_imported: bool,
}

pub(crate) struct Key {
    /// Oldest first.
    pub(crate) versions: Vec<Version>,
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// Whether `name` is a Key Vault object name.
pub(crate) fn valid_name(name: &str) -> bool {
    (1..=127).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

pub(crate) fn check_name(name: &str) -> Result<(), KvError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(KvError::bad(format!(
            "The request URI contains an invalid name: {:?}. A key name is 1 to 127 characters: letters, digits and '-'.",
            name.chars().take(140).collect::<String>()
        )))
    }
}

/// `key_ops` as sent (or the kty's default), each an operation this kty allows.
pub(crate) fn parse_ops(v: Option<&Value>, kty: Kty) -> Result<Vec<String>, KvError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(kty.default_ops());
    };
    let arr = v
        .as_array()
        .ok_or_else(|| KvError::bad("key_ops must be an array of strings"))?;
    let mut ops = Vec::new();
    for op in arr {
        let op = op
            .as_str()
            .ok_or_else(|| KvError::bad("key_ops must be an array of strings"))?;
        if !KEY_OPS.contains(&op) {
            return Err(KvError::bad(format!(
                "Invalid key operation {op:?}. Known operations: {}.",
                KEY_OPS.join(", ")
            )));
        }
        if !kty.allows(op) {
            return Err(KvError::bad(format!(
                "The key operation {op:?} is not valid for a key of type {}.",
                kty.name()
            )));
        }
        if !ops.iter().any(|o| o == op) {
            ops.push(op.to_string());
        }
    }
    Ok(ops)
}

/// `tags`: at most 15, names of at most 512 characters, values (strings) of at most 256.
pub(crate) fn parse_tags(v: Option<&Value>) -> Result<Map<String, Value>, KvError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Map::new());
    };
    let tags = v
        .as_object()
        .ok_or_else(|| KvError::bad("tags must be an object of strings"))?;
    if tags.len() > 15 {
        return Err(KvError::bad(format!(
            "A key has at most 15 tags; this request has {}.",
            tags.len()
        )));
    }
    for (name, value) in tags {
        let value = value
            .as_str()
            .ok_or_else(|| KvError::bad(format!("The tag {name:?} must have a string value.")))?;
        if name.is_empty() || name.chars().count() > 512 {
            return Err(KvError::bad("A tag name is 1 to 512 characters."));
        }
        if value.chars().count() > 256 {
            return Err(KvError::bad(format!(
                "The value of tag {name:?} is over 256 characters."
            )));
        }
    }
    Ok(tags.clone())
}

/// `attributes`: `enabled` (default true), `nbf`, `exp` (epoch seconds), `exportable`
/// (only false: the emulator keeps no release policies).
pub(crate) fn parse_attributes(
    v: Option<&Value>,
) -> Result<(bool, Option<u64>, Option<u64>), KvError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok((true, None, None));
    };
    let a = v
        .as_object()
        .ok_or_else(|| KvError::bad("attributes must be an object"))?;
    let enabled = match a.get("enabled") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(KvError::bad("attributes.enabled must be a boolean")),
    };
    let time = |name: &str| match a.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| KvError::bad(format!("attributes.{name} must be epoch seconds"))),
    };
    if a.get("exportable") == Some(&Value::Bool(true)) {
        return Err(KvError::bad(
            "An exportable key needs a release policy; the emulator keeps none.",
        ));
    }
    Ok((enabled, time("nbf")?, time("exp")?))
}

impl Version {
    pub(crate) fn kid(&self, base: &str, name: &str) -> String {
        format!("{base}/keys/{name}/{}", self.id)
    }

    pub(crate) fn attributes(&self) -> Value {
        let mut a = json!({
            "enabled": self.enabled,
            "created": secs(self.created),
            "updated": secs(self.created),
            "recoveryLevel": "Recoverable+Purgeable",
            "recoverableDays": 90,
            "exportable": false,
        });
        if let Some(n) = self.not_before {
            a["nbf"] = json!(n);
        }
        if let Some(e) = self.expires {
            a["exp"] = json!(e);
        }
        a
    }

    /// The KeyBundle: `key` (a JWK with the public part only), `attributes`, `tags`.
    pub(crate) fn bundle(&self, base: &str, name: &str) -> Value {
        let mut key = json!({
            "kid": self.kid(base, name),
            "kty": self.kty.name(),
            "key_ops": self.key_ops,
        });
        match &self.public {
            Public::Rsa { n, e } => {
                key["n"] = json!(b64url(n));
                key["e"] = json!(b64url(e));
            }
            Public::Ec { crv, x, y } => {
                key["crv"] = json!(crv);
                key["x"] = json!(b64url(x));
                key["y"] = json!(b64url(y));
            }
            Public::None => {}
        }
        let mut b = json!({ "key": key, "attributes": self.attributes() });
        if !self.tags.is_empty() {
            b["tags"] = Value::Object(self.tags.clone());
        }
        b
    }

    /// An item of the version listing.
    fn item(&self, base: &str, name: &str) -> Value {
        let mut v = json!({ "kid": self.kid(base, name), "attributes": self.attributes() });
        if !self.tags.is_empty() {
            v["tags"] = Value::Object(self.tags.clone());
        }
        v
    }
}

/// A key made by the vault: `kty` with `key_size` (RSA, oct) or `crv` (EC).
pub(crate) struct NewKey {
    pub(crate) kty: Kty,
    pub(crate) key_ops: Vec<String>,
    pub(crate) public: Public,
    pub(crate) private: Option<PKey<Private>>,
}

impl AzureKv {
    fn not_found(&self, name: &str, version: Option<&str>) -> KvError {
        let what = match version {
            Some(v) => format!("{name} ({v})"),
            None => name.to_string(),
        };
        KvError::new(
            404,
            "KeyNotFound",
            format!(
                "A key with (name/id) {what} was not found in this {}. If you recently deleted this key you may be able to recover it using the correct recovery command.",
                self.kind()
            ),
        )
    }

    /// Generates key material for `body` (`kty`, `key_size`, `crv`, `key_ops`); with
    /// `strict`, `import` must be a key's only operation (as Key Vault has it; the control
    /// API may make other key-exchange keys).
    pub(crate) fn generate(&self, body: &Value, strict: bool) -> Result<NewKey, KvError> {
        let kty_s = body["kty"]
            .as_str()
            .ok_or_else(|| KvError::bad("The parameter kty is required."))?;
        let kty = Kty::parse(kty_s).ok_or_else(|| {
            KvError::bad(format!(
                "Invalid kty {kty_s:?}: the emulator makes RSA, RSA-HSM, EC, EC-HSM and oct-HSM keys."
            ))
        })?;
        if kty == Kty::OctHsm && !self.cfg.managed_hsm {
            return Err(KvError::bad(
                "Key type oct-HSM is only supported by a Managed HSM, not by a key vault.",
            ));
        }
        if self.cfg.managed_hsm && matches!(kty, Kty::Rsa | Kty::Ec) {
            return Err(KvError::bad(format!(
                "A Managed HSM keeps HSM keys only: use {}-HSM.",
                kty.name()
            )));
        }
        let key_ops = parse_ops(body.get("key_ops"), kty)?;
        if strict && key_ops.iter().any(|o| o == "import") && key_ops.len() > 1 {
            return Err(KvError::bad(
                "The key operation 'import' is mutually exclusive with every other key operation.",
            ));
        }
        let size = match &body["key_size"] {
            Value::Null => None,
            v => Some(
                v.as_u64()
                    .ok_or_else(|| KvError::bad("key_size must be an integer"))?,
            ),
        };
        let failed = |e: openssl::error::ErrorStack| KvError::internal(e.to_string());
        let (public, private) = if kty.is_rsa() {
            let bits = size.unwrap_or(2048);
            if ![2048, 3072, 4096].contains(&bits) {
                return Err(KvError::bad(format!(
                    "Invalid key_size {bits} for an RSA key: 2048, 3072 or 4096."
                )));
            }
            let key = openssl::rsa::Rsa::generate(bits as u32)
                .and_then(PKey::from_rsa)
                .map_err(failed)?;
            (Public::of(&key).map_err(KvError::internal)?, Some(key))
        } else if kty.is_ec() {
            let crv = body["crv"].as_str().unwrap_or("P-256");
            let nid = curve(crv).ok_or_else(|| {
                KvError::bad(format!(
                    "Invalid crv {crv:?}: P-256, P-384, P-521 or P-256K."
                ))
            })?;
            let key = EcGroup::from_curve_name(nid)
                .and_then(|g| EcKey::generate(&g))
                .and_then(PKey::from_ec_key)
                .map_err(failed)?;
            (Public::of(&key).map_err(KvError::internal)?, Some(key))
        } else {
            let bits = size.unwrap_or(256);
            if ![128, 192, 256].contains(&bits) {
                return Err(KvError::bad(format!(
                    "Invalid key_size {bits} for an oct-HSM key: 128, 192 or 256."
                )));
            }
            (Public::None, None)
        };
        Ok(NewKey {
            kty,
            key_ops,
            public,
            private,
        })
    }

    /// Adds a version to key `name` (made if new); its bundle.
    pub(crate) fn add_version(
        &self,
        name: &str,
        base: &str,
        version: Version,
    ) -> Result<Value, KvError> {
        let mut inner = self.lock();
        if !inner.keys.contains_key(name) && inner.keys.len() >= MAX_KEYS {
            return Err(KvError::new(
                409,
                "Conflict",
                format!("The emulator keeps at most {MAX_KEYS} keys."),
            ));
        }
        let key = inner.keys.entry(name.to_string()).or_insert_with(|| Key {
            versions: Vec::new(),
        });
        if key.versions.len() >= MAX_VERSIONS {
            return Err(KvError::new(
                409,
                "Conflict",
                format!("The emulator keeps at most {MAX_VERSIONS} versions of a key."),
            ));
        }
        let bundle = version.bundle(base, name);
        match COMMIT_AFTER.with(|c| c.get()) {
            Some(late) => inner
                .pending
                .push((SystemTime::now() + late, name.to_string(), version)),
            None => key.versions.push(version),
        }
        Ok(bundle)
    }

    /// `POST /keys/{name}/create`.
    pub(super) fn create_key(
        &self,
        name: &str,
        body: &Value,
        base: &str,
        now: SystemTime,
        strict: bool,
    ) -> Result<Value, KvError> {
        check_name(name)?;
        if !body.is_object() {
            return Err(KvError::bad("The request body must be a JSON object."));
        }
        let (enabled, not_before, expires) = parse_attributes(body.get("attributes"))?;
        let tags = parse_tags(body.get("tags"))?;
        let new = self.generate(body, strict)?;
        self.add_version(
            name,
            base,
            Version {
                id: version_id(),
                kty: new.kty,
                key_ops: new.key_ops,
                enabled,
                not_before,
                expires,
                created: now,
                tags,
                public: new.public,
                private: new.private,
                imported: None,
                was_imported: false,
            },
        )
    }

    /// `GET /keys/{name}[/{version}]`.
    pub(super) fn get_key(
        &self,
        name: &str,
        version: Option<&str>,
        base: &str,
    ) -> Result<Value, KvError> {
        check_name(name)?;
        let inner = self.lock();
        let key = inner
            .keys
            .get(name)
            .ok_or_else(|| self.not_found(name, version))?;
        let v = match version {
            None => key.versions.last(),
            Some(id) => key.versions.iter().find(|v| v.id == id),
        };
        v.map(|v| v.bundle(base, name))
            .ok_or_else(|| self.not_found(name, version))
    }

    /// `GET /keys/{name}/versions?maxresults=N[&$skiptoken=T]`: a page of at most N
    /// (default and at most 25) versions, oldest first, and an absolute `nextLink` while
    /// more remain.
    pub(super) fn key_versions(
        &self,
        name: &str,
        query: &[(String, String)],
        base: &str,
    ) -> Result<Value, KvError> {
        check_name(name)?;
        let param = |n: &str| query.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        let max = match param("maxresults") {
            None => PAGE,
            Some(s) => match s.parse::<usize>() {
                Ok(n) if (1..=PAGE).contains(&n) => n,
                _ => {
                    return Err(KvError::bad(format!(
                        "Invalid maxresults {s:?}: an integer from 1 to {PAGE}."
                    )));
                }
            },
        };
        let skip = match param("$skiptoken") {
            None => 0,
            Some(t) => parse_skip_token(t, name).ok_or_else(|| {
                KvError::bad("The $skiptoken is not one this vault issued for this listing.")
            })?,
        };
        let inner = self.lock();
        let key = inner
            .keys
            .get(name)
            .ok_or_else(|| self.not_found(name, None))?;
        let page: Vec<Value> = key
            .versions
            .iter()
            .skip(skip)
            .take(max)
            .map(|v| v.item(base, name))
            .collect();
        let next = skip + page.len();
        let next_link = if next < key.versions.len() {
            let api = param("api-version").unwrap_or_default();
            let token = skip_token(next, name);
            Value::String(format!(
                "{base}/keys/{name}/versions?api-version={api}&$skiptoken={token}&maxresults={max}"
            ))
        } else {
            Value::Null
        };
        Ok(json!({ "value": page, "nextLink": next_link }))
    }
}

/// An opaque skip token: base64url of `{"NextMarker":"name:offset"}`.
fn skip_token(offset: usize, name: &str) -> String {
    b64url(
        json!({ "NextMarker": format!("{name}:{offset}") })
            .to_string()
            .as_bytes(),
    )
}

fn parse_skip_token(t: &str, name: &str) -> Option<usize> {
    let v: Value = serde_json::from_slice(&b64url_decode(t)?).ok()?;
    let (n, offset) = v["NextMarker"].as_str()?.rsplit_once(':')?;
    (n == name).then(|| offset.parse().ok()).flatten()
}

/// A reply for a Key Vault answer.
pub(crate) fn reply(r: Result<Value, KvError>) -> Reply {
    match r {
        Ok(v) => json_reply(200, &v),
        Err(e) => e.reply(),
    }
}
