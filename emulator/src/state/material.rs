//! What an import sends, as OCI reads it: the request bodies, key shapes, and the wrapped
//! material opened and validated as OCI does.

#[allow(unused_imports)]
use super::*;

pub(super) fn parse_shape(s: &str) -> Result<(String, usize), String> {
    let (alg, bits) = s
        .split_once('-')
        .ok_or_else(|| format!("shape {s:?}: expected e.g. AES-256 or RSA-3072"))?;
    let bits: usize = bits
        .parse()
        .map_err(|_| format!("shape {s:?}: bits not a number"))?;
    let alg = alg.to_ascii_uppercase();
    if bits.is_multiple_of(8) && importable(&alg, bits / 8) {
        Ok((alg, bits / 8))
    } else {
        Err(format!(
            "shape {s:?}: OCI imports AES-128/192/256 and RSA-2048/3072/4096"
        ))
    }
}

/// Whether OCI imports a key of `algorithm` ("AES", "RSA") and `length` bytes.
pub(super) fn importable(algorithm: &str, length: usize) -> bool {
    let algorithm = match algorithm {
        "AES" => KeyAlgorithm::Aes,
        "RSA" => KeyAlgorithm::Rsa,
        _ => return false,
    };
    KeyShape { algorithm, length }.importable()
}

/// Why OCI would refuse this material, or the unwrapped key.
pub(super) fn unwrap_material(
    wrapping: &PKey<Private>,
    algorithm: &str,
    material: &[u8],
    (key_alg, length): (&str, usize),
) -> Result<Zeroizing<Vec<u8>>, String> {
    let k = wrapping.rsa().map_err(|e| e.to_string())?.size() as usize;
    let plain = match algorithm {
        "RSA_OAEP_SHA256" => {
            if key_alg == "RSA" {
                return Err(
                    "RSA_OAEP_SHA256 cannot carry an RSA private key; use RSA_OAEP_AES_SHA256"
                        .into(),
                );
            }
            if material.len() != k {
                return Err(format!(
                    "RSA_OAEP_SHA256 key material must be {k} bytes for this vault's wrapping key, got {}",
                    material.len()
                ));
            }
            oaep_decrypt(wrapping, OaepHash::Sha256, material)
                .map_err(|_| "the key material does not decrypt with the vault's wrapping key (RSA-OAEP, SHA-256)".to_string())?
        }
        "RSA_OAEP_AES_SHA256" => open_envelope(wrapping, OaepHash::Sha256, material)
            .map_err(|e| format!("the key material does not unwrap: {e}"))?,
        other => {
            return Err(format!(
                "wrappingAlgorithm {other:?} is not RSA_OAEP_SHA256 or RSA_OAEP_AES_SHA256"
            ));
        }
    };
    match key_alg {
        "AES" if plain.len() == length => Ok(plain),
        "AES" => Err(format!(
            "the unwrapped AES key is {} bytes; the key's shape needs {length}",
            plain.len()
        )),
        "RSA" => {
            let der_len =
                der_sequence_len(&plain).ok_or("the unwrapped RSA key is not PKCS#8 DER")?;
            if der_len > plain.len() {
                return Err(format!(
                    "the unwrapped RSA key is truncated: its DER says {der_len} bytes, got {}",
                    plain.len()
                ));
            }
            if der_len < plain.len() {
                return Err(format!(
                    "the unwrapped RSA key has {} bytes after its PKCS#8 DER",
                    plain.len() - der_len
                ));
            }
            let key = PKey::private_key_from_pkcs8(&plain)
                .map_err(|_| "the unwrapped RSA key is not a valid PKCS#8 private key")?;
            let rsa = key
                .rsa()
                .map_err(|_| "the unwrapped PKCS#8 key is not an RSA key")?;
            if rsa.size() as usize != length {
                return Err(format!(
                    "the unwrapped RSA key has a {}-byte modulus; the key's shape needs {length}",
                    rsa.size()
                ));
            }
            if !rsa.check_key().unwrap_or(false) {
                return Err("the unwrapped RSA key fails its consistency check".into());
            }
            Ok(plain)
        }
        other => Err(format!("keys of algorithm {other} cannot be imported")),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct WrappedImportKey {
    pub(super) key_material: String,
    pub(super) wrapping_algorithm: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ImportKeyVersionDetails {
    pub(super) wrapped_import_key: WrappedImportKey,
    #[serde(default)]
    #[allow(dead_code)]
    pub(super) defined_tags: Option<Value>,
    #[serde(default)]
    #[allow(dead_code)]
    pub(super) freeform_tags: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct KeyShapeJson {
    pub(super) algorithm: String,
    pub(super) length: usize,
    #[serde(default)]
    #[allow(dead_code)]
    pub(super) curve_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ImportKeyDetails {
    pub(super) compartment_id: String,
    pub(super) display_name: String,
    pub(super) key_shape: KeyShapeJson,
    pub(super) wrapped_import_key: WrappedImportKey,
    #[serde(default)]
    pub(super) protection_mode: Option<String>,
    #[serde(default)]
    pub(super) defined_tags: Option<Value>,
    #[serde(default)]
    pub(super) freeform_tags: Option<Value>,
}

/// Parses a JSON body the way OCI answers bad ones: 400 `CannotParseRequest` for bad JSON,
/// 400 `MissingParameter`/`InvalidParameter` for missing or wrong fields.
pub(super) fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Reply> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        Reply::error(
            400,
            "CannotParseRequest",
            &format!("the body is not JSON: {e}"),
        )
    })?;
    serde_json::from_value(v).map_err(|e| {
        let msg = e.to_string();
        let code = if msg.starts_with("missing field") {
            "MissingParameter"
        } else {
            "InvalidParameter"
        };
        Reply::error(400, code, &msg)
    })
}
