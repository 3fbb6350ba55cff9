//! Who is calling, and what that caller may do: a `[[server.clients]]` entry found by the
//! client certificate's subject CN (TLS), by the peer process's uid (`SO_PEERCRED`, Unix
//! socket), or the one entry marked `loopback = true` (plain text on loopback TCP). A caller
//! no entry names gets nothing.

use openssl::nid::Nid;
use openssl::x509::X509;
use tonic::Request;
use tonic::transport::server::UdsConnectInfo;

use crate::config::ClientConfig;
pub(crate) use crate::export::caller::{Caller, Identity};

/// Entry `c` as a caller recognised on `transport`: by its CN, its uid, or loopback. (An
/// entry that cannot match on `transport` is never handed out; its text says so.)
fn from_entry(c: &ClientConfig, transport: Transport) -> Caller {
    let how = match (transport, &c.subject_cn, c.unix_uid) {
        (Transport::Tls, Some(cn), _) => format!("CN={cn}"),
        (Transport::Unix, _, Some(uid)) => format!("uid {uid}"),
        (Transport::Loopback, _, _) if c.loopback => "loopback".into(),
        _ => "not on this listener".into(),
    };
    Caller::new(Identity {
        name: c.name.clone(),
        display: format!("{} ({how})", c.name),
        operations: c.operations.clone(),
        keys: c.keys.clone(),
        endpoints: c.oci_endpoints.clone(),
        compartments: c.oci_compartments.clone(),
        destinations: Some(c.destinations.clone()),
    })
}

/// How the listener tells callers apart, fixed at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// mTLS: by certificate subject CN.
    Tls,
    /// Plain text on a Unix socket: by the peer's uid.
    Unix,
    /// Plain text on loopback TCP: nothing tells local processes apart.
    Loopback,
}

#[derive(Debug, Clone)]
pub(crate) struct Authenticator {
    transport: Transport,
    clients: Vec<ClientConfig>,
    /// `clients[i]` as the caller [`Self::identify`] hands out.
    callers: Vec<Caller>,
}

/// Longest CN quoted back in a refusal or an audit record.
const MAX_CN_SHOWN: usize = 64;

impl Authenticator {
    pub(crate) fn new(transport: Transport, clients: Vec<ClientConfig>) -> Authenticator {
        let callers = clients.iter().map(|c| from_entry(c, transport)).collect();
        Authenticator {
            transport,
            clients,
            callers,
        }
    }

    /// The entries this listener can ever match (for a start-up warning when there are none).
    pub(crate) fn reachable(&self) -> usize {
        self.clients.iter().filter(|c| self.kind_of(c)).count()
    }

    fn kind_of(&self, c: &ClientConfig) -> bool {
        match self.transport {
            Transport::Tls => c.subject_cn.is_some(),
            Transport::Unix => c.unix_uid.is_some(),
            Transport::Loopback => c.loopback,
        }
    }

    /// Whether a client certificate (DER) would identify a caller on this TLS listener.
    pub(crate) fn lists_certificate(&self, leaf: &[u8]) -> bool {
        self.transport == Transport::Tls
            && subject_cn_cached(leaf).is_ok_and(|cn| {
                self.clients
                    .iter()
                    .any(|c| c.subject_cn.as_deref() == Some(cn.as_str()))
            })
    }

    /// The caller of `req`, or why it is not recognised (for UNAUTHENTICATED and audit;
    /// bounded, printable text).
    pub(crate) fn identify<T>(&self, req: &Request<T>) -> Result<Caller, Unidentified> {
        let entry = match self.transport {
            Transport::Tls => {
                let certs = req.peer_certs().ok_or(Unidentified::NoCertificate)?;
                let leaf = certs.first().ok_or(Unidentified::NoCertificate)?;
                let cn = subject_cn_cached(leaf.as_ref())?;
                self.clients
                    .iter()
                    .position(|c| c.subject_cn.as_deref() == Some(cn.as_str()))
                    .ok_or_else(|| Unidentified::CnNotListed(shown(&cn)))?
            }
            Transport::Unix => {
                let uid = req
                    .extensions()
                    .get::<UdsConnectInfo>()
                    .and_then(|i| i.peer_cred)
                    .map(|c| c.uid())
                    .ok_or(Unidentified::NoPeerCredentials)?;
                self.clients
                    .iter()
                    .position(|c| c.unix_uid == Some(uid))
                    .ok_or(Unidentified::UidNotListed(uid))?
            }
            Transport::Loopback => self
                .clients
                .iter()
                .position(|c| c.loopback)
                .ok_or(Unidentified::NoLoopbackEntry)?,
        };
        Ok(self.callers[entry].clone())
    }
}

/// Why a caller is not recognised: the text of UNAUTHENTICATED and of the audit record
/// (bounded: a CN is quoted at most [`MAX_CN_SHOWN`] characters long).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Unidentified {
    #[error("no client certificate was presented")]
    NoCertificate,
    #[error("the client certificate {0}")]
    BadCertificate(&'static str),
    #[error("client certificate CN={0:?} is not in server.clients")]
    CnNotListed(String),
    #[error("the Unix socket peer's credentials are unknown")]
    NoPeerCredentials,
    #[error("uid {0} has no [[server.clients]] entry with unix_uid = {0}")]
    UidNotListed(u32),
    #[error("plain text on loopback: no [[server.clients]] entry has loopback = true")]
    NoLoopbackEntry,
}

/// At most [`MAX_CN_SHOWN`] characters of `cn`.
fn shown(cn: &str) -> String {
    cn.chars().take(MAX_CN_SHOWN).collect()
}

/// [`subject_cn`], remembered per certificate ([`crate::memo::Memo`]): OpenSSL 3's
/// certificate decoder costs about 0.3 ms, more than a whole AES wrap, and a connection
/// presents the same certificate on every call. The result is a pure function of the DER
/// bytes (rustls verified the chain during the handshake); at `MAX` distinct certificates
/// the memory starts over, and a certificate larger than `MAX_DER` is not remembered.
fn subject_cn_cached(der: &[u8]) -> Result<String, Unidentified> {
    use std::sync::OnceLock;
    const MAX: usize = 1024;
    const MAX_DER: usize = 16 * 1024;
    static SEEN: OnceLock<crate::memo::Memo<Result<String, Unidentified>>> = OnceLock::new();
    let seen = SEEN.get_or_init(|| crate::memo::Memo::new(MAX, MAX_DER));
    if let Some(r) = seen.get(der) {
        return r;
    }
    let r = subject_cn(der);
    seen.put(der, r.clone());
    r
}

/// The subject CN of a DER certificate, as text.
///
/// Only a CN whose bytes are its text counts: a UTF8String, PrintableString or IA5String
/// (OpenSSL's text of the string is then byte-for-byte the raw value). A BMPString or
/// UniversalString whose raw bytes happen to spell a listed CN is different text and is
/// refused, as is any CN with a NUL or another control character.
fn subject_cn(der: &[u8]) -> Result<String, Unidentified> {
    let cert = X509::from_der(der).map_err(|_| Unidentified::BadCertificate("does not parse"))?;
    let mut cns = cert.subject_name().entries_by_nid(Nid::COMMONNAME);
    let cn = cns
        .next()
        .ok_or(Unidentified::BadCertificate("has no subject CN"))?;
    if cns.next().is_some() {
        return Err(Unidentified::BadCertificate("has more than one subject CN"));
    }
    // The raw bytes, not OpenSSL's C-string view, which would stop at an interior NUL
    // ("cckm.example\0.evil" must not pass as "cckm.example").
    let raw = cn.data().as_slice();
    if raw.contains(&0) {
        return Err(Unidentified::BadCertificate("has a CN with a NUL byte"));
    }
    let text = cn
        .data()
        .to_string()
        .map_err(|_| Unidentified::BadCertificate("has a CN that is not text"))?;
    if text.as_bytes() != raw {
        return Err(Unidentified::BadCertificate(
            "has a CN that is not a UTF8String, PrintableString or IA5String",
        ));
    }
    let text = std::str::from_utf8(raw)
        .map_err(|_| Unidentified::BadCertificate("has a CN that is not UTF-8 text"))?;
    if crate::text::has_deceptive(text) {
        return Err(Unidentified::BadCertificate(
            "has a CN with control characters, line separators or bidirectional controls",
        ));
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::asn1::Asn1Type;
    use openssl::pkey::PKey;
    use openssl::x509::{X509Builder, X509NameBuilder};

    /// A self-signed certificate whose CN is `cn` encoded as `ty`.
    fn cert(cn: &[u8], ty: Asn1Type) -> Vec<u8> {
        let key = PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_nid_with_type(Nid::COMMONNAME, std::str::from_utf8(cn).unwrap(), ty)
            .unwrap();
        let name = name.build();
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        let serial = openssl::bn::BigNum::from_u32(1)
            .unwrap()
            .to_asn1_integer()
            .unwrap();
        b.set_serial_number(&serial).unwrap();
        b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.sign(&key, openssl::hash::MessageDigest::sha256())
            .unwrap();
        b.build().to_der().unwrap()
    }

    #[test]
    fn only_text_string_types_are_compared_as_text() {
        for ty in [
            Asn1Type::UTF8STRING,
            Asn1Type::PRINTABLESTRING,
            Asn1Type::IA5STRING,
        ] {
            assert_eq!(
                subject_cn(&cert(b"cckm.example", ty)).unwrap(),
                "cckm.example"
            );
        }
        // The raw bytes spell "cckm.example"; as a BMPString that is six CJK characters.
        let e = subject_cn(&cert(b"cckm.example", Asn1Type::BMPSTRING))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a UTF8String"), "{e}");
        let e = subject_cn(&cert(b"cckm\x07example", Asn1Type::UTF8STRING))
            .unwrap_err()
            .to_string();
        assert!(e.contains("control"), "{e}");
    }
}
