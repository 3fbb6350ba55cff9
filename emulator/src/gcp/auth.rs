//! Who may call: bearer tokens that are either self-signed service-account JWTs (what
//! google-cloud-auth's service-account credentials send, see its
//! src/credentials/service_account.rs and jws.rs, and what Python's google-auth sends with
//! `always_use_jwt_access`) checked against the keys of `--service-account` files, or
//! opaque tokens the emulator's metadata server issued. And that metadata server: the
//! Compute Engine paths google-cloud-auth's src/mds/ and google-auth's
//! compute_engine/_metadata.py read, over plain HTTP, each asking for `Metadata-Flavor:
//! Google`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Public};
use openssl::sign::Verifier;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::protocol::GcpError;
use super::{AUDIENCE, Authed, GcpKms, MAX_TOKENS, Request, SCOPES};
use crate::EmulatorError;
use crate::azure::protocol::{b64url_decode, random};
use crate::state::{Outcome, Reply};

/// How far `iat` may be in the future (clock skew).
const SKEW: u64 = 60;
/// The longest a self-signed JWT may live (`exp - iat`), with the skew.
const MAX_LIFETIME: u64 = 3600 + SKEW;

/// The message Google answers a call without usable credentials with.
const UNAUTHENTICATED: &str = "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.";

/// A service account whose self-signed JWTs are accepted.
pub struct ServiceAccount {
    pub client_email: String,
    pub private_key_id: String,
    pub project_id: Option<String>,
    public: PKey<Public>,
}

impl ServiceAccount {
    /// From a service-account key file (JSON; the public key derived from `private_key`).
    pub fn from_file(path: &Path) -> Result<ServiceAccount, EmulatorError> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| format!("--service-account {}: {e}", path.display()))?,
        );
        ServiceAccount::from_json(&text)
            .map_err(|e| format!("--service-account {}: {e}", path.display()).into())
    }

    pub fn from_json(text: &str) -> Result<ServiceAccount, String> {
        let v: Value =
            serde_json::from_str(text).map_err(|_| "not a service-account key (JSON)")?;
        if v["type"] != "service_account" {
            return Err("\"type\" is not \"service_account\"".into());
        }
        let s = |k: &str| {
            v[k].as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or_else(|| format!("\"{k}\" is missing"))
        };
        let client_email = s("client_email")?;
        let private_key_id = s("private_key_id")?;
        let pem = Zeroizing::new(s("private_key")?);
        let key = PKey::private_key_from_pem(pem.as_bytes())
            .map_err(|_| "\"private_key\" is not a PEM private key")?;
        if key.rsa().is_err() {
            return Err("\"private_key\" is not an RSA key".into());
        }
        let public = PKey::public_key_from_der(
            &key.public_key_to_der()
                .map_err(|_| "the public half of \"private_key\"")?,
        )
        .map_err(|_| "the public half of \"private_key\"")?;
        Ok(ServiceAccount {
            client_email,
            private_key_id,
            project_id: v["project_id"].as_str().map(str::to_string),
            public,
        })
    }
}

/// A token the metadata server issued.
pub(crate) struct Issued {
    email: String,
    expires: SystemTime,
}

fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

fn unauthenticated(why: &str) -> GcpError {
    tracing::debug!("unauthenticated: {why}");
    GcpError::unauthenticated(format!("{UNAUTHENTICATED} (emulator: {why})"))
}

impl GcpKms {
    /// The bearer token's check: a self-signed JWT or a metadata-server token.
    pub(super) fn authenticate(
        &self,
        header: Option<&str>,
        now: SystemTime,
    ) -> Result<Authed, GcpError> {
        let header = header.ok_or_else(|| unauthenticated("no Authorization header"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthenticated("the Authorization header is not Bearer"))?;
        if token.len() > 16 << 10 {
            return Err(unauthenticated("the token is too long"));
        }
        if token.matches('.').count() == 2 {
            return self
                .verify_jwt(token, now)
                .map_err(|why| unauthenticated(&why));
        }
        let inner = self.lock();
        match inner.tokens.get(token) {
            Some(i) if i.expires > now => Ok(Authed {
                way: "metadata",
                principal: i.email.clone(),
                aud: None,
                scope: None,
            }),
            Some(_) => Err(unauthenticated("the token has expired")),
            None => Err(unauthenticated("the token is not one the emulator issued")),
        }
    }

    fn verify_jwt(&self, token: &str, now: SystemTime) -> Result<Authed, String> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s)) = (parts.next(), parts.next(), parts.next()) else {
            return Err("not a JWT".into());
        };
        let json = |p: &str, what: &str| -> Result<Value, String> {
            b64url_decode(p)
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .filter(Value::is_object)
                .ok_or_else(|| format!("the JWT {what} is not base64url JSON"))
        };
        let header = json(h, "header")?;
        let claims = json(c, "claims")?;
        if header["alg"] != "RS256" {
            return Err(format!("the JWT's alg is {}, not RS256", header["alg"]));
        }
        let iss = claims["iss"].as_str().ok_or("the JWT has no iss")?;
        let account = match header["kid"].as_str() {
            Some(kid) => self
                .cfg
                .service_accounts
                .iter()
                .find(|a| a.private_key_id == kid)
                .ok_or("the JWT's kid is no trusted service account's private_key_id")?,
            None => self
                .cfg
                .service_accounts
                .iter()
                .find(|a| a.client_email == iss)
                .ok_or("the JWT's iss is no trusted service account")?,
        };
        let sig = b64url_decode(s).ok_or("the JWT signature is not base64url")?;
        let ok = Verifier::new(MessageDigest::sha256(), &account.public)
            .and_then(|mut v| {
                v.update(h.as_bytes())?;
                v.update(b".")?;
                v.update(c.as_bytes())?;
                v.verify(&sig)
            })
            .unwrap_or(false);
        if !ok {
            return Err("the JWT signature does not verify with the service account's key".into());
        }
        if iss != account.client_email {
            return Err("the JWT's iss is not the service account's client_email".into());
        }
        match &claims["sub"] {
            Value::Null => {}
            Value::String(sub) if *sub == account.client_email => {}
            _ => return Err("the JWT's sub is not the service account's client_email".into()),
        }
        let secs = |k: &str| -> Result<u64, String> {
            claims[k]
                .as_u64()
                .or_else(|| claims[k].as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                .ok_or_else(|| format!("the JWT has no {k}"))
        };
        let (iat, exp, t) = (secs("iat")?, secs("exp")?, epoch_secs(now));
        if iat > t + SKEW {
            return Err("the JWT's iat is in the future".into());
        }
        if exp <= t {
            return Err("the JWT has expired".into());
        }
        if exp < iat || exp - iat > MAX_LIFETIME {
            return Err("the JWT lives longer than an hour".into());
        }
        let aud = match &claims["aud"] {
            Value::Null => None,
            Value::String(a) => Some(a.clone()),
            Value::Array(a) => Some(
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            _ => return Err("the JWT's aud is not a string".into()),
        };
        let scope = claims["scope"].as_str().map(str::to_string);
        let aud_ok = aud.as_deref().is_some_and(|a| {
            a.split(' ')
                .any(|a| a == AUDIENCE || a == AUDIENCE.trim_end_matches('/'))
        });
        let scope_ok = scope
            .as_deref()
            .is_some_and(|s| s.split(' ').any(|s| SCOPES.contains(&s)));
        if !aud_ok && !scope_ok {
            return Err(format!(
                "the JWT has neither aud {AUDIENCE} nor a scope of {}",
                SCOPES.join(" or ")
            ));
        }
        Ok(Authed {
            way: "jwt",
            principal: account.client_email.clone(),
            aud,
            scope,
        })
    }

    /// A new metadata-server token for `email`.
    fn issue(&self, email: &str, now: SystemTime) -> String {
        let token = format!("ya29.emu-{}", hsm_bridge::wrap::hex(&random(24)));
        let mut inner = self.lock();
        if inner.token_order.len() >= MAX_TOKENS
            && let Some(old) = inner.token_order.pop_front()
        {
            inner.tokens.remove(&old);
        }
        inner.token_order.push_back(token.clone());
        inner.tokens.insert(
            token.clone(),
            Issued {
                email: email.to_string(),
                expires: now + self.cfg.token_ttl,
            },
        );
        token
    }

    /// A metadata-server request (plain HTTP, only GET).
    pub fn metadata(&self, req: &Request<'_>, now: SystemTime) -> Outcome {
        let path = req.path;
        let rest = path
            .strip_prefix("/computeMetadata/v1/instance/service-accounts/")
            .unwrap_or("");
        let is_token = rest.ends_with("/token") && rest.matches('/').count() == 1;
        let op = if is_token {
            "MetadataToken"
        } else {
            "Metadata"
        };
        let mut entry = self.entry(Some(op), Some(path.chars().take(200).collect()), now);
        let query: Vec<(String, String)> = form_urlencoded::parse(req.query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let q = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        entry.scopes = q("scopes").map(|s| s.chars().take(500).collect());
        let mut delay = Duration::ZERO;
        if let Some(f) = self.take_fault(Some(op), Some(path)) {
            entry.fault = true;
            delay = Duration::from_millis(f.delay_ms);
            if f.drop {
                if f.processed {
                    let r = self.metadata_call(req, rest, is_token, now);
                    entry.status = r.status;
                }
                entry.code = Some("(connection dropped)".into());
                self.record(entry);
                return Outcome::Drop { delay };
            }
            if let Some(r) = f.answer() {
                entry.status = r.status;
                self.record(entry);
                return Outcome::Reply { reply: r, delay };
            }
        }
        let reply = self.metadata_call(req, rest, is_token, now);
        entry.status = reply.status;
        if reply.status >= 400 {
            entry.code = Some(
                String::from_utf8_lossy(&reply.body)
                    .chars()
                    .take(200)
                    .collect(),
            );
        }
        if is_token && reply.status == 200 {
            entry.principal = self.cfg.metadata_email.clone();
        }
        self.record(entry);
        Outcome::Reply { reply, delay }
    }

    fn metadata_call(
        &self,
        req: &Request<'_>,
        rest: &str,
        is_token: bool,
        now: SystemTime,
    ) -> Reply {
        if req.method != "GET" {
            return text(405, "Only GET is served.\n");
        }
        if req.header("metadata-flavor") != Some("Google") {
            return text(
                403,
                "Missing required header \"Metadata-Flavor\": \"Google\"\n",
            );
        }
        if req.header("x-forwarded-for").is_some() {
            return text(403, "Request denied: X-Forwarded-For is set.\n");
        }
        let Some(email) = self.cfg.metadata_email.clone() else {
            return text(404, "No service account.\n");
        };
        let project = self
            .cfg
            .service_accounts
            .first()
            .and_then(|a| a.project_id.clone())
            .unwrap_or_else(|| "emulator-project".into());
        let recursive = form_urlencoded::parse(req.query.as_bytes())
            .any(|(k, v)| k == "recursive" && v == "true");
        let scopes: Vec<String> = form_urlencoded::parse(req.query.as_bytes())
            .find(|(k, _)| k == "scopes")
            .map(|(_, v)| v.split(',').map(str::to_string).collect())
            .unwrap_or_else(|| vec![SCOPES[0].to_string()]);
        let account_ok = |a: &str| a == "default" || a == email;
        match req.path {
            "/" | "/computeMetadata/" | "/computeMetadata/v1" | "/computeMetadata/v1/" => {
                text(200, "instance/\nproject/\nuniverse/\n")
            }
            "/computeMetadata/v1/universe/universe-domain" => text(200, "googleapis.com"),
            "/computeMetadata/v1/project/project-id" => text(200, &project),
            "/computeMetadata/v1/instance/service-accounts/"
            | "/computeMetadata/v1/instance/service-accounts" => {
                text(200, &format!("default/\n{email}/\n"))
            }
            _ => {
                let (account, what) = rest.split_once('/').unwrap_or((rest, ""));
                if !account_ok(account) {
                    return text(404, "Not Found\n");
                }
                match what {
                    "token" if is_token => {
                        let token = self.issue(&email, now);
                        json_text(&json!({
                            "access_token": token,
                            "expires_in": self.cfg.token_ttl.as_secs(),
                            "token_type": "Bearer",
                        }))
                    }
                    "email" => text(200, &email),
                    "scopes" => text(200, &format!("{}\n", scopes.join("\n"))),
                    "aliases" => text(200, "default\n"),
                    "" if recursive => json_text(&json!({
                        "aliases": ["default"],
                        "email": email,
                        "scopes": scopes,
                    })),
                    "" => text(200, "aliases\nemail\nidentity\nscopes\ntoken\n"),
                    _ => text(404, "Not Found\n"),
                }
            }
        }
    }
}

fn with_flavor(mut r: Reply) -> Reply {
    r.headers.push(("metadata-flavor", "Google".into()));
    r.headers.push(("server", "Metadata Server for VM".into()));
    r
}

fn text(status: u16, body: &str) -> Reply {
    with_flavor(Reply {
        status,
        content_type: "application/text",
        headers: Vec::new(),
        body: body.as_bytes().to_vec(),
    })
}

fn json_text(v: &Value) -> Reply {
    with_flavor(Reply {
        status: 200,
        content_type: "application/json",
        headers: Vec::new(),
        body: serde_json::to_vec(v).unwrap_or_default(),
    })
}

/// The metadata server's listener: the same emulator, other routes.
pub(crate) struct MetadataServer(pub(crate) Arc<GcpKms>);

impl crate::server::Service for MetadataServer {
    const MAX_BODY: usize = super::MAX_METADATA_BODY;

    fn too_large(&self) -> Reply {
        text(413, "Request body too large.\n")
    }

    fn handle(&self, parts: &hyper::http::request::Parts, body: &[u8]) -> Outcome {
        let headers = super::headers_of(parts);
        self.0.metadata(
            &Request {
                method: parts.method.as_str(),
                path: parts.uri.path(),
                query: parts.uri.query().unwrap_or(""),
                headers: &headers,
                body,
            },
            SystemTime::now(),
        )
    }
}
