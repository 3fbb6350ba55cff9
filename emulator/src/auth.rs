//! Checks an incoming request's OCI signature as the service does: the `Authorization`
//! header names a registered API key, lists at least the headers OCI requires for the
//! method, the signature over the signing string rebuilt from the received headers verifies,
//! the `date` is within five minutes, and for a body `x-content-sha256` and
//! `content-length` describe exactly the bytes received.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Public};

use hsm_bridge::oci::signer::{body_sha256, fingerprint_public};

/// Clock skew OCI tolerates.
const MAX_SKEW: Duration = Duration::from_secs(300);

/// Registered API public keys.
#[derive(Default)]
pub struct ApiKeys {
    /// Exact `tenancy/user/fingerprint` key ids.
    exact: HashMap<String, PKey<Public>>,
    /// Keys accepted for any tenancy and user, by fingerprint.
    any_user: HashMap<String, PKey<Public>>,
}

impl ApiKeys {
    /// Registers `key` under `tenancy/user` (or for any, with `None`).
    pub fn add(
        &mut self,
        tenancy_user: Option<&str>,
        key: PKey<Public>,
    ) -> Result<String, crate::EmulatorError> {
        let spki = key.public_key_to_der().map_err(|e| e.to_string())?;
        let fp = fingerprint_public(&spki).map_err(|e| e.to_string())?;
        match tenancy_user {
            Some(tu) => {
                let id = format!("{tu}/{fp}");
                self.exact.insert(id.clone(), key);
                Ok(id)
            }
            None => {
                self.any_user.insert(fp.clone(), key);
                Ok(format!("*/*/{fp}"))
            }
        }
    }

    fn get(&self, key_id: &str) -> Option<&PKey<Public>> {
        self.exact.get(key_id).or_else(|| {
            let (_, fp) = key_id.rsplit_once('/')?;
            // tenancy and user must be present even when any are accepted
            (key_id.matches('/').count() == 2)
                .then(|| self.any_user.get(fp))
                .flatten()
        })
    }
}

/// Parsed `Authorization: Signature ...`.
struct SignatureHeader {
    key_id: String,
    headers: Vec<String>,
    signature: Vec<u8>,
}

fn parse_authorization(v: &str) -> Result<SignatureHeader, String> {
    let rest = v
        .strip_prefix("Signature ")
        .ok_or("the Authorization header is not an OCI Signature")?;
    let mut fields: HashMap<&str, &str> = HashMap::new();
    for part in rest.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or("malformed Signature parameter")?;
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .ok_or("Signature parameters must be quoted")?;
        if fields.insert(k, v).is_some() {
            return Err(format!("Signature parameter {k} given twice"));
        }
    }
    if fields.get("version").copied().unwrap_or("1") != "1" {
        return Err("unsupported signature version".into());
    }
    if fields.get("algorithm").copied() != Some("rsa-sha256") {
        return Err("the signature algorithm must be rsa-sha256".into());
    }
    let key_id = fields.get("keyId").ok_or("no keyId")?.to_string();
    let headers = fields
        .get("headers")
        .copied()
        .unwrap_or("date")
        .split(' ')
        .map(str::to_ascii_lowercase)
        .collect();
    let signature = openssl::base64::decode_block(fields.get("signature").ok_or("no signature")?)
        .map_err(|_| "the signature is not base64")?;
    Ok(SignatureHeader {
        key_id,
        headers,
        signature,
    })
}

/// What a request looks like to the checker.
pub struct Incoming<'a> {
    pub method: &'a str,
    /// Path and query, as received.
    pub target: &'a str,
    pub header: &'a dyn Fn(&str) -> Option<String>,
    pub body: &'a [u8],
}

/// Why a request is not authenticated (OCI's 401 says it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotAuthenticated(pub String);

/// Checks the request; on success returns the signing key id.
pub fn authenticate(
    keys: &ApiKeys,
    req: &Incoming<'_>,
    now: SystemTime,
) -> Result<String, NotAuthenticated> {
    check_signature(keys, req, now).map_err(NotAuthenticated)
}

fn check_signature(keys: &ApiKeys, req: &Incoming<'_>, now: SystemTime) -> Result<String, String> {
    let auth = (req.header)("authorization").ok_or("no Authorization header")?;
    let sig = parse_authorization(&auth)?;
    let key = keys
        .get(&sig.key_id)
        .ok_or_else(|| format!("keyId {:?} is not a registered API key", sig.key_id))?;
    let method = req.method.to_ascii_uppercase();
    let body_method = matches!(method.as_str(), "POST" | "PUT" | "PATCH");
    let mut required = vec!["date", "(request-target)", "host"];
    if body_method {
        required.extend(["content-length", "content-type", "x-content-sha256"]);
    }
    for r in &required {
        if !sig.headers.iter().any(|h| h == r) {
            return Err(format!("the signature does not cover {r}"));
        }
    }
    let date = (req.header)("date").ok_or("no date header")?;
    let sent =
        hsm_bridge::time::parse_http_date(&date).ok_or("the date header is not an HTTP date")?;
    let skew = now
        .duration_since(sent)
        .or_else(|e| Ok::<_, ()>(e.duration()))
        .unwrap_or_default();
    if skew > MAX_SKEW {
        return Err(format!(
            "the date header is {} s away from the service's clock (at most 300 s)",
            skew.as_secs()
        ));
    }
    if body_method {
        let sha = (req.header)("x-content-sha256").ok_or("no x-content-sha256 header")?;
        if sha != body_sha256(req.body) {
            return Err("x-content-sha256 does not match the body received".into());
        }
        let len = (req.header)("content-length").ok_or("no content-length header")?;
        if len != req.body.len().to_string() {
            return Err("content-length does not match the body received".into());
        }
    }
    let mut lines = Vec::with_capacity(sig.headers.len());
    for h in &sig.headers {
        if h == "(request-target)" {
            lines.push(format!(
                "(request-target): {} {}",
                req.method.to_ascii_lowercase(),
                req.target
            ));
        } else {
            let v = (req.header)(h).ok_or_else(|| format!("signed header {h} is missing"))?;
            lines.push(format!("{h}: {v}"));
        }
    }
    let text = lines.join("\n");
    let mut verifier =
        openssl::sign::Verifier::new(MessageDigest::sha256(), key).map_err(|e| e.to_string())?;
    let ok = verifier
        .verify_oneshot(&sig.signature, text.as_bytes())
        .unwrap_or(false);
    if ok {
        Ok(sig.key_id)
    } else {
        Err("the signature does not verify".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hsm_bridge::oci::{RequestParts, RequestSigner};

    fn signed(signer: &RequestSigner, method: &str, body: &[u8]) -> HashMap<String, String> {
        let date = hsm_bridge::time::http_date(SystemTime::now());
        let parts = RequestParts {
            method,
            url: "https://localhost:8443/20180608/keys/import?x=1",
            date: &date,
            body,
            content_type: "application/json",
        };
        let mut h: HashMap<String, String> = signer
            .sign(&parts)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        h.insert("host".into(), "localhost:8443".into());
        h
    }

    fn check(
        keys: &ApiKeys,
        method: &str,
        h: &HashMap<String, String>,
        body: &[u8],
    ) -> Result<String, NotAuthenticated> {
        let header = |n: &str| h.get(n).cloned();
        authenticate(
            keys,
            &Incoming {
                method,
                target: "/20180608/keys/import?x=1",
                header: &header,
                body,
            },
            SystemTime::now(),
        )
    }

    #[test]
    fn signatures_verify_and_tampering_is_caught() {
        let rsa = openssl::rsa::Rsa::generate(2048).unwrap();
        let private = PKey::from_rsa(rsa).unwrap();
        let public = PKey::public_key_from_der(&private.public_key_to_der().unwrap()).unwrap();
        let fp = hsm_bridge::oci::signer::fingerprint(&private).unwrap();
        let signer = RequestSigner::new("ocid1.tenancy.oc1..t", "ocid1.user.oc1..u", &fp, private);
        let mut keys = ApiKeys::default();
        keys.add(None, public).unwrap();

        let body = br#"{"a":1}"#;
        let h = signed(&signer, "POST", body);
        assert_eq!(check(&keys, "POST", &h, body).unwrap(), signer.key_id());
        // an empty body is signed too
        let h0 = signed(&signer, "POST", b"");
        assert!(check(&keys, "POST", &h0, b"").is_ok());
        let g = signed(&signer, "GET", b"");
        assert!(check(&keys, "GET", &g, b"").is_ok());

        let e = check(&keys, "POST", &h, br#"{"a":2}"#).unwrap_err();
        assert!(e.0.contains("x-content-sha256"), "{e}");
        let mut other_host = h.clone();
        other_host.insert("host".into(), "evil:8443".into());
        assert!(
            check(&keys, "POST", &other_host, body)
                .unwrap_err()
                .0
                .contains("does not verify")
        );
        let mut old = h.clone();
        old.insert("date".into(), "Thu, 05 Jan 2014 21:31:40 GMT".into());
        assert!(
            check(&keys, "POST", &old, body)
                .unwrap_err()
                .0
                .contains("clock")
        );
        // a GET signature does not cover the body headers a POST needs
        assert!(
            check(&keys, "POST", &g, b"")
                .unwrap_err()
                .0
                .contains("does not cover")
        );
        let unknown = ApiKeys::default();
        assert!(
            check(&unknown, "POST", &h, body)
                .unwrap_err()
                .0
                .contains("not a registered")
        );
    }
}
