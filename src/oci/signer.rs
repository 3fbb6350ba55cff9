//! OCI HTTP Signature version 1 (draft-cavage-http-signatures-08, rsa-sha256), as OCI's
//! SDKs sign: `date (request-target) host` for GET/DELETE/HEAD, plus `content-length
//! content-type x-content-sha256` for POST/PUT/PATCH (even with an empty body). The Date
//! value is signed exactly as given (OCI's own test vector has a wrong weekday), and
//! `x-content-sha256` is the hash of exactly the bytes that will be sent.

use openssl::base64;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};

use super::OciError;

/// One request to sign. `url` is exactly what will be sent (percent-encoding included).
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    pub method: &'a str,
    pub url: &'a str,
    /// The Date header value, e.g. "Thu, 05 Jan 2014 21:31:40 GMT".
    pub date: &'a str,
    /// The body of a POST/PUT/PATCH (empty if none); ignored for other methods.
    pub body: &'a [u8],
    /// Content-Type of the body, for POST/PUT/PATCH.
    pub content_type: &'a str,
}

/// Signs requests as one OCI user with one API key.
pub struct RequestSigner {
    /// `<tenancy OCID>/<user OCID>/<key fingerprint>`.
    key_id: String,
    key: PKey<Private>,
}

impl std::fmt::Debug for RequestSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RequestSigner({})", self.key_id)
    }
}

/// The MD5 fingerprint OCI shows for an API key: MD5 of the SubjectPublicKeyInfo DER,
/// lower-case hex pairs joined by ':'.
pub fn fingerprint(key: &PKey<Private>) -> Result<String, OciError> {
    let spki = key
        .public_key_to_der()
        .map_err(|e| OciError::Key(e.to_string()))?;
    fingerprint_public(&spki)
}

/// The OCI fingerprint of a SubjectPublicKeyInfo DER.
pub fn fingerprint_public(spki: &[u8]) -> Result<String, OciError> {
    let md5 = openssl::hash::hash(MessageDigest::md5(), spki)
        .map_err(|e| OciError::Key(format!("MD5 (OCI key fingerprints): {e}")))?;
    Ok(md5
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":"))
}

/// Splits an http(s) URL into the `host` header value (port only when not the scheme's
/// default) and the request target (path and query, as given).
fn host_and_target(url: &str) -> Result<(String, String), OciError> {
    let bad = |why| OciError::Url {
        url: url.to_string(),
        why,
    };
    let (rest, default_port) = if let Some(r) = url.strip_prefix("https://") {
        (r, "443")
    } else if let Some(r) = url.strip_prefix("http://") {
        (r, "80")
    } else {
        return Err(bad("not an http(s) URL"));
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, target) = rest.split_at(split);
    if authority.is_empty() || authority.contains('@') {
        return Err(bad("no host, or user info in the host"));
    }
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if port == default_port => h,
        _ => authority,
    };
    let target = match target {
        "" => "/".to_string(),
        t if t.starts_with('?') => format!("/{t}"),
        t => t.to_string(),
    };
    Ok((host.to_ascii_lowercase(), target))
}

fn has_body(method: &str) -> bool {
    matches!(
        method.to_ascii_uppercase().as_str(),
        "POST" | "PUT" | "PATCH"
    )
}

impl RequestSigner {
    pub fn new(tenancy: &str, user: &str, fingerprint: &str, key: PKey<Private>) -> RequestSigner {
        RequestSigner {
            key_id: format!("{tenancy}/{user}/{fingerprint}"),
            key,
        }
    }

    /// From a PEM private key (PKCS#1 or PKCS#8, encrypted with `passphrase` or not).
    pub fn from_pem(
        tenancy: &str,
        user: &str,
        fingerprint: &str,
        pem: &[u8],
        passphrase: Option<&[u8]>,
    ) -> Result<RequestSigner, OciError> {
        // Never `private_key_from_pem`: for an encrypted key without a pass phrase OpenSSL
        // would prompt on the terminal. An empty pass phrase fails cleanly instead.
        let key = PKey::private_key_from_pem_passphrase(pem, passphrase.unwrap_or(b"")).map_err(
            |_| {
                OciError::Key(if passphrase.is_some() {
                    "the key does not parse with the given pass_phrase".into()
                } else {
                    "the key does not parse (encrypted? set pass_phrase)".into()
                })
            },
        )?;
        if key.rsa().is_err() {
            return Err(OciError::Key("OCI API keys are RSA".into()));
        }
        Ok(RequestSigner::new(tenancy, user, fingerprint, key))
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The signed header names, in order, and the signing string for `req`.
    pub(crate) fn signing_string(
        req: &RequestParts<'_>,
    ) -> Result<(Vec<&'static str>, String), OciError> {
        let (host, target) = host_and_target(req.url)?;
        let mut names = vec!["date", "(request-target)", "host"];
        let mut lines = vec![
            format!("date: {}", req.date),
            format!(
                "(request-target): {} {target}",
                req.method.to_ascii_lowercase()
            ),
            format!("host: {host}"),
        ];
        if has_body(req.method) {
            names.extend(["content-length", "content-type", "x-content-sha256"]);
            lines.push(format!("content-length: {}", req.body.len()));
            lines.push(format!("content-type: {}", req.content_type));
            lines.push(format!("x-content-sha256: {}", body_sha256(req.body)));
        }
        Ok((names, lines.join("\n")))
    }

    /// The headers to send with `req`: `date`, for bodies `content-length`, `content-type`
    /// and `x-content-sha256`, and `authorization`. (`host` is the URL's; HTTP clients send it.)
    pub fn sign(&self, req: &RequestParts<'_>) -> Result<Vec<(&'static str, String)>, OciError> {
        let (names, text) = Self::signing_string(req)?;
        let mut signer = openssl::sign::Signer::new(MessageDigest::sha256(), &self.key)
            .map_err(|e| OciError::Sign(e.to_string()))?;
        signer
            .update(text.as_bytes())
            .map_err(|e| OciError::Sign(e.to_string()))?;
        let signature = base64::encode_block(
            &signer
                .sign_to_vec()
                .map_err(|e| OciError::Sign(e.to_string()))?,
        );
        let mut headers = vec![("date", req.date.to_string())];
        if has_body(req.method) {
            headers.push(("content-length", req.body.len().to_string()));
            headers.push(("content-type", req.content_type.to_string()));
            headers.push(("x-content-sha256", body_sha256(req.body)));
        }
        headers.push((
            "authorization",
            format!(
                "Signature version=\"1\",headers=\"{}\",keyId=\"{}\",algorithm=\"rsa-sha256\",signature=\"{signature}\"",
                names.join(" "),
                self.key_id
            ),
        ));
        Ok(headers)
    }
}

/// Base64 SHA-256 of exactly the bytes sent.
pub fn body_sha256(body: &[u8]) -> String {
    base64::encode_block(&openssl::sha::sha256(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OCI's official signing test vectors (research/oci-facts.md 5.5), extracted verbatim.
    fn vectors() -> serde_json::Value {
        serde_json::from_str(include_str!(
            "../../tests/fixtures/oci-signing-vectors.json"
        ))
        .unwrap()
    }

    fn signer(v: &serde_json::Value) -> RequestSigner {
        RequestSigner::from_pem(
            v["tenancy"].as_str().unwrap(),
            v["user"].as_str().unwrap(),
            v["fingerprint_in_vectors"].as_str().unwrap(),
            v["private_key_pem"].as_str().unwrap().as_bytes(),
            None,
        )
        .unwrap()
    }

    fn header<'a>(h: &'a [(&'static str, String)], name: &str) -> &'a str {
        h.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .unwrap()
    }

    #[test]
    fn official_vector_a_get() {
        let v = vectors();
        let req = RequestParts {
            method: "GET",
            url: v["a"]["url"].as_str().unwrap(),
            date: v["date"].as_str().unwrap(),
            body: b"",
            content_type: "",
        };
        let (_, text) = RequestSigner::signing_string(&req).unwrap();
        assert_eq!(text, v["a"]["signing_string"].as_str().unwrap());
        let h = signer(&v).sign(&req).unwrap();
        assert_eq!(
            header(&h, "authorization"),
            v["a"]["authorization"].as_str().unwrap()
        );
        assert_eq!(h.len(), 2, "GET signs no body headers: {h:?}");
    }

    #[test]
    fn official_vector_b_post() {
        let v = vectors();
        let body = v["b"]["body"].as_str().unwrap().as_bytes();
        assert_eq!(body.len(), 316);
        let req = RequestParts {
            method: "POST",
            url: v["b"]["url"].as_str().unwrap(),
            date: v["date"].as_str().unwrap(),
            body,
            content_type: "application/json",
        };
        let (_, text) = RequestSigner::signing_string(&req).unwrap();
        assert_eq!(text, v["b"]["signing_string"].as_str().unwrap());
        let h = signer(&v).sign(&req).unwrap();
        assert_eq!(
            header(&h, "authorization"),
            v["b"]["authorization"].as_str().unwrap()
        );
        assert_eq!(
            header(&h, "x-content-sha256"),
            "V9Z20UJTvkvpJ50flBzKE32+6m2zJjweHpDMX/U4Uy0="
        );
        assert_eq!(header(&h, "content-length"), "316");
    }

    #[test]
    fn post_with_an_empty_body_signs_the_body_headers() {
        let v = vectors();
        let req = RequestParts {
            method: "post",
            url: "https://x-management.kms.us-ashburn-1.oraclecloud.com:443/20180608/keys/k/keyVersions/import",
            date: "Sun, 05 Jan 2014 21:31:40 GMT",
            body: b"",
            content_type: "application/json",
        };
        let (names, text) = RequestSigner::signing_string(&req).unwrap();
        assert_eq!(
            names,
            [
                "date",
                "(request-target)",
                "host",
                "content-length",
                "content-type",
                "x-content-sha256"
            ]
        );
        assert_eq!(
            text,
            "date: Sun, 05 Jan 2014 21:31:40 GMT\n\
             (request-target): post /20180608/keys/k/keyVersions/import\n\
             host: x-management.kms.us-ashburn-1.oraclecloud.com\n\
             content-length: 0\n\
             content-type: application/json\n\
             x-content-sha256: 47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
        // The signature verifies with the public key, by OpenSSL's verifier.
        let h = signer(&v).sign(&req).unwrap();
        let auth = header(&h, "authorization");
        let sig = auth
            .rsplit_once("signature=\"")
            .unwrap()
            .1
            .trim_end_matches('"');
        let public =
            PKey::public_key_from_pem(v["public_key_pem"].as_str().unwrap().as_bytes()).unwrap();
        let mut verifier = openssl::sign::Verifier::new(MessageDigest::sha256(), &public).unwrap();
        verifier.update(text.as_bytes()).unwrap();
        assert!(
            verifier
                .verify(&base64::decode_block(sig).unwrap())
                .unwrap()
        );
    }

    #[test]
    fn fingerprint_is_md5_of_spki() {
        let v = vectors();
        let key =
            PKey::private_key_from_pem(v["private_key_pem"].as_str().unwrap().as_bytes()).unwrap();
        assert_eq!(
            fingerprint(&key).unwrap(),
            v["real_fingerprint"].as_str().unwrap()
        );
    }

    #[test]
    fn hosts_and_targets() {
        let ht = |u| host_and_target(u).unwrap();
        assert_eq!(
            ht("https://Example.com"),
            ("example.com".into(), "/".into())
        );
        assert_eq!(
            ht("https://example.com:443/a?b=%20c"),
            ("example.com".into(), "/a?b=%20c".into())
        );
        assert_eq!(
            ht("https://127.0.0.1:8443/x"),
            ("127.0.0.1:8443".into(), "/x".into())
        );
        assert_eq!(ht("http://h:80?q"), ("h".into(), "/?q".into()));
        assert!(host_and_target("ftp://h/").is_err());
        assert!(host_and_target("https://user@h/").is_err());
        assert!(host_and_target("https:///x").is_err());
    }

    #[test]
    fn encrypted_keys_need_their_pass_phrase() {
        let key = openssl::rsa::Rsa::generate(2048).unwrap();
        let pem = key
            .private_key_to_pem_passphrase(openssl::symm::Cipher::aes_256_cbc(), b"secret")
            .unwrap();
        assert!(RequestSigner::from_pem("t", "u", "f", &pem, Some(b"secret")).is_ok());
        let e = RequestSigner::from_pem("t", "u", "f", &pem, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("pass_phrase"), "{e}");
        assert!(RequestSigner::from_pem("t", "u", "f", &pem, Some(b"wrong")).is_err());
        let s = RequestSigner::from_pem("t", "u", "f", &pem, Some(b"secret")).unwrap();
        assert_eq!(
            format!("{s:?}"),
            "RequestSigner(t/u/f)",
            "Debug shows no key"
        );
    }
}
