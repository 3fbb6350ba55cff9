//! `PUT /keys/{name}`: a BYOK import, opened and checked as Key Vault does. The key's
//! `key_hsm` is base64url of the `.byok` JSON (`schema_version` 1.0.0, `header` {`kid`,
//! `alg` "dir", `enc` "CKM_RSA_AES_KEY_WRAP"}, `ciphertext`, `generator`); `kid` names an
//! exact version of an RSA key-exchange key of this vault whose only operation is
//! `import`; `ciphertext` is RSA-OAEP (SHA-1, MGF1-SHA-1, empty label) of a 32-byte AES key
//! over the key-exchange key's modulus length, then the target under that AES key by AES
//! key wrap with padding (RFC 5649). The target is DER PKCS#8 for RSA (2048, 3072, 4096)
//! and EC keys, raw 16, 24 or 32 bytes for oct-HSM (Managed HSM only). Every accepted
//! import is a new version.

use std::time::SystemTime;

use openssl::pkey::{Id, PKey, Private};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::open::oaep_decrypt;
use hsm_bridge::wrap::soft::OaepHash;
use hsm_bridge::wrap::verify::der_sequence_len;

use super::AzureKv;
use super::keys::{
    Kty, Public, Version, check_name, curve, curve_name, parse_attributes, parse_ops, parse_tags,
};
use super::protocol::{KvError, b64url_decode, version_id};
use crate::aws::unwrap::kwp_unwrap;

/// What the `.byok` header must say.
pub(crate) const BYOK_ALG: &str = "dir";
pub(crate) const BYOK_ENC: &str = "CKM_RSA_AES_KEY_WRAP";

impl AzureKv {
    /// `PUT /keys/{name}` with a `key_hsm` (BYOK) key.
    pub(super) fn import_key(
        &self,
        name: &str,
        body: &Value,
        base: &str,
        now: SystemTime,
    ) -> Result<Value, KvError> {
        check_name(name)?;
        if !body.is_object() {
            return Err(KvError::bad("The request body must be a JSON object."));
        }
        let key = body
            .get("key")
            .filter(|k| k.is_object())
            .ok_or_else(|| KvError::bad("The parameter key is required (a JSON web key)."))?;
        let kty_s = key["kty"]
            .as_str()
            .ok_or_else(|| KvError::bad("The parameter key.kty is required."))?;
        let kty = Kty::parse(kty_s).ok_or_else(|| {
            KvError::bad(format!(
                "Invalid key.kty {kty_s:?}: a BYOK import is RSA-HSM, EC-HSM or oct-HSM."
            ))
        })?;
        if kty == Kty::OctHsm && !self.cfg.managed_hsm {
            return Err(KvError::bad(
                "Key type oct-HSM is only supported by a Managed HSM, not by a key vault: import AES keys into a Managed HSM.",
            ));
        }
        if !matches!(kty, Kty::RsaHsm | Kty::EcHsm | Kty::OctHsm) {
            return Err(KvError::bad(format!(
                "A key with key_hsm (BYOK) is imported into an HSM: kty must be RSA-HSM, EC-HSM or oct-HSM, not {kty_s}."
            )));
        }
        let key_ops = parse_ops(key.get("key_ops"), kty)?;
        if key_ops.iter().any(|o| o == "import") {
            return Err(KvError::bad(
                "An imported key cannot have the key operation 'import'; create key-exchange keys in the vault.",
            ));
        }
        let crv = match (kty, key.get("crv").and_then(Value::as_str)) {
            (Kty::EcHsm, None) => {
                return Err(KvError::bad("An EC-HSM import needs key.crv."));
            }
            (Kty::EcHsm, Some(c)) => Some(curve(c).ok_or_else(|| {
                KvError::bad(format!("Invalid crv {c:?}: P-256, P-384, P-521 or P-256K."))
            })?),
            (_, Some(c)) => {
                return Err(KvError::bad(format!(
                    "key.crv {c:?} is for EC-HSM keys, not {kty_s}."
                )));
            }
            (_, None) => None,
        };
        let (enabled, not_before, expires) = parse_attributes(body.get("attributes"))?;
        let tags = parse_tags(body.get("tags"))?;
        let hsm_b64 = key.get("key_hsm").and_then(Value::as_str).ok_or_else(|| {
            KvError::bad(
                "The emulator imports BYOK keys only: key.key_hsm (base64url of the .byok file) is required.",
            )
        })?;
        let byok =
            b64url_decode(hsm_b64).ok_or_else(|| KvError::bad("key.key_hsm is not base64url."))?;
        let plain = self.open_byok(&byok, base)?;
        let public = check_target(kty, crv, &plain).map_err(KvError::bad)?;
        self.add_version(
            name,
            base,
            Version {
                id: version_id(),
                kty,
                key_ops,
                enabled,
                not_before,
                expires,
                created: now,
                tags,
                public,
                private: None,
                imported: self.cfg.test_oracle.then_some(plain),
                was_imported: true,
            },
        )
    }

    /// The `.byok` file opened with the key-exchange key its header names.
    fn open_byok(&self, byok: &[u8], base: &str) -> Result<Zeroizing<Vec<u8>>, KvError> {
        let v: Value = serde_json::from_slice(byok)
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| KvError::bad("key.key_hsm does not hold a .byok JSON object."))?;
        if v["schema_version"] != "1.0.0" {
            return Err(KvError::bad(format!(
                "The .byok schema_version is {}; Key Vault takes 1.0.0.",
                v["schema_version"]
            )));
        }
        let header = &v["header"];
        if header["alg"] != BYOK_ALG || header["enc"] != BYOK_ENC {
            return Err(KvError::bad(format!(
                "The .byok header has alg {} and enc {}; Key Vault takes alg \"{BYOK_ALG}\" and enc \"{BYOK_ENC}\".",
                header["alg"], header["enc"]
            )));
        }
        let kid = header["kid"]
            .as_str()
            .ok_or_else(|| KvError::bad("The .byok header has no kid."))?;
        let ciphertext = v["ciphertext"]
            .as_str()
            .and_then(b64url_decode)
            .ok_or_else(|| KvError::bad("The .byok ciphertext is missing or not base64url."))?;
        let kek = self.kek(kid, base)?;
        unwrap_byok(&kek, &ciphertext).map_err(KvError::bad)
    }

    /// The private key of the key-exchange key `kid` names: an exact version of an RSA key
    /// of this vault whose only operation is `import`.
    fn kek(&self, kid: &str, base: &str) -> Result<PKey<Private>, KvError> {
        let shown: String = kid.chars().take(200).collect();
        let prefix = format!("{base}/keys/");
        let rest = kid.strip_prefix(&prefix).ok_or_else(|| {
            KvError::bad(format!(
                "The key-exchange key {shown} is not a key of this {} ({base}); the KEK must be in the same vault or HSM as the imported key.",
                self.kind()
            ))
        })?;
        let (name, version) = match rest.split_once('/') {
            Some((n, v)) if !v.is_empty() => (n, v),
            _ => {
                return Err(KvError::bad(format!(
                    "The key-exchange key id {shown} has no version; the .byok file must name the KEK's exact version ({base}/keys/NAME/VERSION)."
                )));
            }
        };
        let inner = self.lock();
        let version = inner
            .keys
            .get(name)
            .and_then(|k| k.versions.iter().find(|v| v.id == version))
            .ok_or_else(|| {
                KvError::bad(format!(
                    "The key-exchange key {shown} was not found in this {}.",
                    self.kind()
                ))
            })?;
        if version.kty != Kty::RsaHsm {
            return Err(KvError::bad(format!(
                "The key-exchange key {shown} is {}; a KEK is an RSA-HSM key.",
                version.kty.name()
            )));
        }
        if version.key_ops != ["import"] {
            return Err(KvError::bad(format!(
                "The key-exchange key {shown} has key_ops {:?}; a KEK's key_ops must be exactly [\"import\"].",
                version.key_ops
            )));
        }
        if !version.enabled {
            return Err(KvError::bad(format!(
                "The key-exchange key {shown} is disabled."
            )));
        }
        version.private.clone().ok_or_else(|| {
            KvError::bad(format!(
                "The key-exchange key {shown} was imported, not made in this {}; a KEK is created in the HSM.",
                self.kind()
            ))
        })
    }
}

/// The target from a `.byok` ciphertext: RSA-OAEP-SHA-1 of a 32-byte AES key over the
/// KEK's modulus length, then RFC 5649 under that key.
pub(crate) fn unwrap_byok(
    kek: &PKey<Private>,
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, String> {
    let k = kek.size();
    if ciphertext.len() <= k + 8 {
        return Err(format!(
            "The .byok ciphertext is {} bytes; it must be {k} bytes of RSA-OAEP under the key-exchange key, then the AES-wrapped key.",
            ciphertext.len()
        ));
    }
    let (rsa_part, aes_part) = ciphertext.split_at(k);
    let aes = match oaep_decrypt(kek, OaepHash::Sha1, rsa_part) {
        Ok(a) => a,
        Err(_) if oaep_decrypt(kek, OaepHash::Sha256, rsa_part).is_ok() => {
            return Err("The .byok ciphertext's RSA part is RSA-OAEP with SHA-256; Azure BYOK takes RSA-OAEP with SHA-1 and MGF1-SHA-1 only.".into());
        }
        Err(_) => {
            return Err("The .byok ciphertext's RSA part does not decrypt with the key-exchange key under RSA-OAEP (SHA-1, MGF1-SHA-1, empty label).".into());
        }
    };
    if aes.len() != 32 {
        return Err(format!(
            "The .byok ciphertext's RSA part holds a {}-byte key; the transfer key is AES-256 (32 bytes).",
            aes.len()
        ));
    }
    kwp_unwrap(&aes, aes_part).map_err(|_| {
        "The .byok ciphertext's AES part does not unwrap under the transfer key (RFC 5649 AES key wrap with padding integrity check).".to_string()
    })
}

/// Why `plain` is not a key of `kty` (and `crv`), if it is not; its public part if it is.
pub(crate) fn check_target(
    kty: Kty,
    crv: Option<openssl::nid::Nid>,
    plain: &[u8],
) -> Result<Public, String> {
    if kty == Kty::OctHsm {
        return match plain.len() {
            16 | 24 | 32 => Ok(Public::None),
            n => Err(format!(
                "The imported oct-HSM key is {n} bytes; AES keys are 16, 24 or 32 bytes."
            )),
        };
    }
    let key = pkcs8(plain)?;
    match (kty, key.id()) {
        (Kty::RsaHsm, Id::RSA) => {
            let rsa = key.rsa().map_err(|e| e.to_string())?;
            let bits = rsa.size() * 8;
            if ![2048, 3072, 4096].contains(&bits) {
                return Err(format!(
                    "The imported RSA key is {bits} bits; Key Vault takes RSA-HSM keys of 2048, 3072 or 4096 bits."
                ));
            }
            if !rsa.check_key().unwrap_or(false) {
                return Err("The imported RSA private key fails its consistency check.".into());
            }
        }
        (Kty::EcHsm, Id::EC) => {
            let ec = key.ec_key().map_err(|e| e.to_string())?;
            let on = ec.group().curve_name();
            if on != crv {
                return Err(format!(
                    "The imported EC key is on {}; key.crv is {}.",
                    on.and_then(curve_name).unwrap_or("another curve"),
                    crv.and_then(curve_name).unwrap_or("missing")
                ));
            }
            ec.check_key()
                .map_err(|_| "The imported EC private key fails its consistency check.")?;
        }
        (_, Id::RSA) => {
            return Err(format!(
                "The imported key is an RSA key; key.kty is {}.",
                kty.name()
            ));
        }
        (_, _) => {
            return Err(format!(
                "The imported key is an EC key; key.kty is {}.",
                kty.name()
            ));
        }
    }
    Public::of(&key)
}

/// A DER PKCS#8 RSA or EC private key, exactly (no trailing bytes).
fn pkcs8(der: &[u8]) -> Result<PKey<Private>, String> {
    match der_sequence_len(der) {
        Some(len) if len == der.len() => {}
        Some(len) if len < der.len() => {
            return Err(format!(
                "The imported key has {} bytes after its DER PKCS#8.",
                der.len() - len
            ));
        }
        _ => return Err("The imported key is not a DER PKCS#8 private key.".into()),
    }
    let key = PKey::private_key_from_pkcs8(der)
        .map_err(|_| "The imported key is not a DER PKCS#8 private key.".to_string())?;
    if !matches!(key.id(), Id::RSA | Id::EC) {
        return Err("The imported PKCS#8 key is neither RSA nor EC.".into());
    }
    Ok(key)
}
