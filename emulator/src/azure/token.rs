//! The emulator as the Entra ID authority of its tenant: the OpenID discovery document
//! (what MSAL-based SDKs read first), the client-credentials token endpoint (a client
//! secret compared in constant time, or a JWT client assertion signed by the key of
//! `--client-cert`), and the bearer tokens it issued, each bound to one resource and an
//! expiry.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openssl::hash::MessageDigest;
use openssl::rsa::Padding;
use openssl::sign::{RsaPssSaltlen, Verifier};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::protocol::{EntraError, b64_any_decode, b64url, b64url_decode, json_reply, random};
use super::{AzureKv, MAX_TOKENS, Request};
use crate::state::Reply;

/// The client assertion type of the jwt-bearer client authentication.
pub(crate) const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// How far in the future an assertion's `nbf` may be (clock skew).
const SKEW: Duration = Duration::from_secs(300);

/// A token the emulator issued.
pub(crate) struct Issued {
    pub(crate) resource: String,
    pub(crate) expires: SystemTime,
}

/// How a token request authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientAuth {
    Secret,
    Assertion,
}

impl ClientAuth {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ClientAuth::Secret => "secret",
            ClientAuth::Assertion => "assertion",
        }
    }
}

/// Constant-time comparison (the lengths are not secret).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && openssl::memcmp::eq(a, b)
}

fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

impl AzureKv {
    /// The tenant-not-found error Entra gives for a path naming another tenant.
    fn no_tenant(&self, tenant: &str, error: &'static str) -> EntraError {
        EntraError::new(
            400,
            error,
            90002,
            format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
            ),
        )
    }

    /// `GET /{tenant}/v2.0/.well-known/openid-configuration`.
    pub(super) fn discovery(&self, tenant: &str, host: &str, now: SystemTime) -> Reply {
        if tenant != self.cfg.tenant {
            return self.no_tenant(tenant, "invalid_tenant").reply(now);
        }
        let base = format!("https://{host}/{tenant}");
        json_reply(
            200,
            &json!({
                "token_endpoint": format!("{base}/oauth2/v2.0/token"),
                "token_endpoint_auth_methods_supported":
                    ["client_secret_post", "private_key_jwt", "client_secret_basic"],
                "jwks_uri": format!("https://{host}/{tenant}/discovery/v2.0/keys"),
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": format!("{base}/v2.0"),
                "request_uri_parameter_supported": false,
                "authorization_endpoint": format!("{base}/oauth2/v2.0/authorize"),
                "device_authorization_endpoint": format!("{base}/oauth2/v2.0/devicecode"),
                "end_session_endpoint": format!("{base}/oauth2/v2.0/logout"),
                "tenant_region_scope": "EU",
                "cloud_instance_name": "microsoftonline.com",
            }),
        )
    }

    /// `POST /{tenant}/oauth2/v2.0/token`: the answer, and how the client authenticated
    /// when it did.
    pub(super) fn token(
        &self,
        req: &Request<'_>,
        tenant: &str,
        host: &str,
        now: SystemTime,
    ) -> (Reply, Option<ClientAuth>) {
        match self.token_inner(req, tenant, host, now) {
            Ok((v, how)) => (json_reply(200, &v), Some(how)),
            Err(e) => (e.reply(now), None),
        }
    }

    fn token_inner(
        &self,
        req: &Request<'_>,
        tenant: &str,
        host: &str,
        now: SystemTime,
    ) -> Result<(Value, ClientAuth), EntraError> {
        if req.method != "POST" {
            return Err(EntraError::new(
                400,
                "invalid_request",
                900561,
                format!(
                    "The endpoint only accepts POST requests. Received a {} request.",
                    req.method
                ),
            ));
        }
        if tenant != self.cfg.tenant {
            return Err(self.no_tenant(tenant, "invalid_request"));
        }
        let form: Vec<(String, Zeroizing<String>)> = form_urlencoded::parse(req.body)
            .map(|(k, v)| (k.into_owned(), Zeroizing::new(v.into_owned())))
            .collect();
        let get = |name: &str| {
            form.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .filter(|v| !v.is_empty())
        };
        let required = |name: &str| {
            get(name).ok_or_else(|| {
                EntraError::new(
                    400,
                    "invalid_request",
                    900144,
                    format!("The request body must contain the following parameter: '{name}'."),
                )
            })
        };
        let grant = required("grant_type")?;
        if grant != "client_credentials" {
            return Err(EntraError::new(
                400,
                "unsupported_grant_type",
                70003,
                format!(
                    "The app requested an unsupported grant type '{grant}'; the emulator issues client_credentials tokens only."
                ),
            ));
        }
        let client_id = required("client_id")?;
        if client_id != self.cfg.client_id {
            return Err(EntraError::new(
                400,
                "unauthorized_client",
                700016,
                format!(
                    "Application with identifier '{client_id}' was not found in the directory '{}'.",
                    self.cfg.tenant
                ),
            ));
        }
        let scope = required("scope")?;
        let want = format!("{}/.default", self.resource());
        if scope != want {
            return Err(EntraError::new(
                400,
                "invalid_scope",
                70011,
                format!(
                    "The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid; this tenant issues tokens for {want} only."
                ),
            ));
        }
        let how = match (get("client_secret"), get("client_assertion")) {
            (Some(_), Some(_)) => {
                return Err(EntraError::new(
                    400,
                    "invalid_request",
                    90014,
                    "The request has both 'client_secret' and 'client_assertion'; send one.",
                ));
            }
            (None, None) => {
                return Err(EntraError::new(
                    401,
                    "invalid_client",
                    7000216,
                    "'client_assertion', 'client_secret' or 'request' is required for the 'client_credentials' grant type.",
                ));
            }
            (Some(secret), None) => {
                let ok = self
                    .cfg
                    .client_secret
                    .as_ref()
                    .is_some_and(|s| same(s.as_bytes(), secret.as_bytes()));
                if !ok {
                    return Err(EntraError::new(
                        401,
                        "invalid_client",
                        7000215,
                        format!(
                            "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
                        ),
                    ));
                }
                ClientAuth::Secret
            }
            (None, Some(assertion)) => {
                let kind = get("client_assertion_type").unwrap_or_default();
                if kind != ASSERTION_TYPE {
                    return Err(EntraError::new(
                        400,
                        "invalid_request",
                        900144,
                        format!(
                            "The request body must contain the following parameter: 'client_assertion_type' = '{ASSERTION_TYPE}'."
                        ),
                    ));
                }
                let aud = format!("https://{host}/{tenant}/oauth2/v2.0/token");
                self.check_assertion(assertion, client_id, &aud, now)?;
                ClientAuth::Assertion
            }
        };
        let ttl = self.cfg.token_ttl.as_secs();
        let token = b64url(&random(32));
        self.remember_token(&token, self.resource(), now + self.cfg.token_ttl);
        Ok((
            json!({
                "token_type": "Bearer",
                "expires_in": ttl,
                "ext_expires_in": ttl,
                "access_token": token,
            }),
            how,
        ))
    }

    /// Keeps `token` for `resource` until `expires` (the oldest forgotten past the cap).
    pub(crate) fn remember_token(&self, token: &str, resource: &str, expires: SystemTime) {
        let mut inner = self.lock();
        if inner.token_order.len() >= MAX_TOKENS
            && let Some(old) = inner.token_order.pop_front()
        {
            inner.tokens.remove(&old);
        }
        inner.token_order.push_back(token.to_string());
        inner.tokens.insert(
            token.to_string(),
            Issued {
                resource: resource.to_string(),
                expires,
            },
        );
    }

    /// A JWT client assertion: signed (RS256 or PS256) by `--client-cert`'s key, its
    /// thumbprint header (if sent) naming that certificate, `aud` the token endpoint,
    /// `iss` = `sub` = the client id, `exp` in the future.
    fn check_assertion(
        &self,
        assertion: &str,
        client_id: &str,
        aud: &str,
        now: SystemTime,
    ) -> Result<(), EntraError> {
        let malformed = |why: &str| {
            EntraError::new(
                400,
                "invalid_request",
                50027,
                format!("JWT token is invalid or malformed: {why}."),
            )
        };
        let signature_failed = |why: &str| {
            EntraError::new(
                401,
                "invalid_client",
                700027,
                format!("Client assertion failed signature validation: {why}."),
            )
        };
        let parts: Vec<&str> = assertion.split('.').collect();
        let [h, p, s] = parts.as_slice() else {
            return Err(malformed("not three dot-separated parts"));
        };
        let json_part = |part: &str| {
            b64url_decode(part)
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .filter(Value::is_object)
        };
        let header = json_part(h).ok_or_else(|| malformed("the header is not base64url JSON"))?;
        let claims = json_part(p).ok_or_else(|| malformed("the payload is not base64url JSON"))?;
        let sig = b64url_decode(s).ok_or_else(|| malformed("the signature is not base64url"))?;
        let Some(cert) = &self.cfg.client_cert else {
            return Err(signature_failed(
                "no certificate is registered on the application (start the emulator with --client-cert)",
            ));
        };
        let thumbprint =
            |md: MessageDigest| cert.digest(md).map(|d| d.to_vec()).unwrap_or_default();
        for (field, md) in [
            ("x5t", MessageDigest::sha1()),
            ("x5t#S256", MessageDigest::sha256()),
        ] {
            if let Some(t) = header.get(field) {
                let sent = t.as_str().and_then(b64_any_decode);
                if sent.is_none_or(|sent| sent != thumbprint(md)) {
                    return Err(signature_failed(&format!(
                        "the certificate with identifier ({field}) used to sign the client assertion is not registered on application '{client_id}'"
                    )));
                }
            }
        }
        let public = cert
            .public_key()
            .map_err(|_| signature_failed("the registered certificate has no usable key"))?;
        let signed = format!("{h}.{p}");
        let verified = match header["alg"].as_str() {
            Some("RS256") => Verifier::new(MessageDigest::sha256(), &public)
                .and_then(|mut v| {
                    v.update(signed.as_bytes())?;
                    v.verify(&sig)
                })
                .unwrap_or(false),
            Some("PS256") => Verifier::new(MessageDigest::sha256(), &public)
                .and_then(|mut v| {
                    v.set_rsa_padding(Padding::PKCS1_PSS)?;
                    v.set_rsa_mgf1_md(MessageDigest::sha256())?;
                    v.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)?;
                    v.update(signed.as_bytes())?;
                    v.verify(&sig)
                })
                .unwrap_or(false),
            other => {
                return Err(signature_failed(&format!(
                    "the algorithm {other:?} is not RS256 or PS256"
                )));
            }
        };
        if !verified {
            return Err(signature_failed(
                "the signature does not verify with the registered certificate's key",
            ));
        }
        let claim = |name: &str| claims.get(name).and_then(Value::as_str);
        if claim("aud") != Some(aud) {
            return Err(EntraError::new(
                401,
                "invalid_client",
                700212,
                format!(
                    "No matching federated identity record found for presented assertion audience {:?}; the audience must be {aud}.",
                    claim("aud").unwrap_or_default()
                ),
            ));
        }
        if claim("iss") != Some(client_id) || claim("sub") != Some(client_id) {
            return Err(EntraError::new(
                401,
                "invalid_client",
                700021,
                "Client assertion application identifier doesn't match 'client_id' parameter (iss and sub must both be the client id).",
            ));
        }
        // NumericDate: seconds, possibly fractional (RFC 7519 section 2).
        let secs = epoch_secs(now) as f64;
        let exp = claims.get("exp").and_then(Value::as_f64);
        let nbf = claims.get("nbf").and_then(Value::as_f64);
        let in_time =
            exp.is_some_and(|e| e > secs) && nbf.is_none_or(|n| n <= secs + SKEW.as_secs_f64());
        if !in_time {
            return Err(EntraError::new(
                401,
                "invalid_client",
                700024,
                "Client assertion is not within its valid time range (exp must be in the future).",
            ));
        }
        Ok(())
    }

    /// The token in `Authorization: Bearer ...`, checked: `Ok` if usable for this vault,
    /// else the 401 challenge's message.
    pub(super) fn check_bearer(
        &self,
        authorization: Option<&str>,
        now: SystemTime,
    ) -> Result<(), &'static str> {
        let missing = "AKV10000: Request is missing a Bearer or PoP token.";
        let Some(value) = authorization else {
            return Err(missing);
        };
        let token = match value.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
            _ => return Err(missing),
        };
        let inner = self.lock();
        match inner.tokens.get(token) {
            None => Err("AKV10022: Invalid token: the emulator's authority did not issue it."),
            Some(t) if t.expires <= now => Err("AKV10022: Invalid token: the token has expired."),
            Some(t) if t.resource != self.resource() => Err(if self.cfg.managed_hsm {
                "AKV10022: Invalid audience. Expected https://managedhsm.azure.net."
            } else {
                "AKV10022: Invalid audience. Expected https://vault.azure.net."
            }),
            Some(_) => Ok(()),
        }
    }
}
