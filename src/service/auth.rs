//! Who is calling: the client certificate's subject CN, mapped to a `[[server.clients]]`
//! entry. With plain text (loopback / Unix socket only) the caller is the local machine.

use openssl::nid::Nid;
use openssl::x509::X509;
use tonic::Request;

use crate::config::{ClientConfig, Operation};
use crate::policy::any_match;

/// An identified caller and what it may do.
#[derive(Debug, Clone)]
pub struct Caller {
    /// For audit: "name (CN=...)" or "local (plaintext)".
    pub display: String,
    pub operations: Vec<Operation>,
    /// Label globs of keys this caller may touch.
    pub keys: Vec<String>,
}

impl Caller {
    pub fn may(&self, op: Operation) -> bool {
        self.operations.contains(&op)
    }

    pub fn may_touch(&self, label: &str) -> bool {
        any_match(&self.keys, label)
    }
}

/// How callers are recognised, fixed at start-up.
#[derive(Debug, Clone)]
pub enum Authenticator {
    /// mTLS: by certificate subject CN.
    Certificates(Vec<ClientConfig>),
    /// Plain text on loopback or a Unix socket: every caller is the local machine, with
    /// every operation; the export policy still applies.
    Local,
}

impl Authenticator {
    /// The caller of `req`, or why it is not recognised (for UNAUTHENTICATED and audit).
    pub fn identify<T>(&self, req: &Request<T>) -> Result<Caller, String> {
        match self {
            Authenticator::Local => Ok(Caller {
                display: "local (plaintext)".into(),
                operations: vec![Operation::List, Operation::Wrap, Operation::Import],
                keys: vec!["*".into()],
            }),
            Authenticator::Certificates(clients) => {
                let certs = req
                    .peer_certs()
                    .ok_or("no client certificate was presented")?;
                let leaf = certs.first().ok_or("no client certificate was presented")?;
                let cn = subject_cn_cached(leaf.as_ref())?;
                let client = clients.iter().find(|c| c.subject_cn == cn).ok_or_else(|| {
                    format!("client certificate CN={cn:?} is not in server.clients")
                })?;
                Ok(Caller {
                    display: format!("{} (CN={cn})", client.name),
                    operations: client.operations.clone(),
                    keys: client.keys.clone(),
                })
            }
        }
    }
}

/// [`subject_cn`], remembered per certificate: OpenSSL 3's certificate decoder costs about
/// 0.3 ms, more than a whole AES wrap, and a connection presents the same certificate on
/// every call. The result is a pure function of the DER bytes (rustls verified the chain
/// during the handshake); at `MAX` distinct certificates the memory starts over.
fn subject_cn_cached(der: &[u8]) -> Result<String, String> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    const MAX: usize = 1024;
    type Seen = Mutex<HashMap<[u8; 32], Result<String, String>>>;
    static SEEN: OnceLock<Seen> = OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    let id = openssl::sha::sha256(der);
    if let Some(r) = seen.lock().unwrap_or_else(|p| p.into_inner()).get(&id) {
        return r.clone();
    }
    let r = subject_cn(der);
    let mut map = seen.lock().unwrap_or_else(|p| p.into_inner());
    if map.len() >= MAX {
        map.clear();
    }
    map.insert(id, r.clone());
    r
}

/// The subject CN of a DER certificate.
fn subject_cn(der: &[u8]) -> Result<String, String> {
    let cert =
        X509::from_der(der).map_err(|_| "the client certificate does not parse".to_string())?;
    let mut cns = cert.subject_name().entries_by_nid(Nid::COMMONNAME);
    let cn = cns
        .next()
        .ok_or("the client certificate has no subject CN")?;
    if cns.next().is_some() {
        return Err("the client certificate has more than one subject CN".into());
    }
    // The raw bytes, not OpenSSL's C-string view, which would stop at an interior NUL
    // ("cckm.example\0.evil" must not pass as "cckm.example").
    let raw = cn.data().as_slice();
    if raw.contains(&0) {
        return Err("the client certificate's CN contains a NUL byte".into());
    }
    std::str::from_utf8(raw)
        .map(str::to_string)
        .map_err(|_| "the client certificate's CN is not UTF-8 text".into())
}
