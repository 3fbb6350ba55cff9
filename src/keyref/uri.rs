//! PKCS#11 URIs (RFC 7512), the form p11-kit, OpenSSL's pkcs11-provider and GnuTLS take:
//! `pkcs11:token=hsm-bridge-dev;object=demo-aes-256;type=secret-key` or `pkcs11:id=%01%03`.
//! Parsed strictly: every value percent-decoded (a bad escape is refused), an attribute
//! that is unknown, repeated or empty-named is refused with the reason, and so is a PIN
//! (`pin-value`, `pin-source`) or a module (`module-name`, `module-path`): the config names
//! those, never a caller.

use std::fmt;

use super::{KeyRefError, MAX_ID, MAX_LABEL};

/// Why a PKCS#11 URI is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UriError {
    #[error("a PKCS#11 URI starts with \"pkcs11:\"")]
    Scheme,
    #[error("the URI is {0} bytes; at most 1024")]
    TooLong(usize),
    #[error("attribute {0:?} is given twice")]
    Repeated(String),
    #[error("an attribute has no name (\"{0}\")")]
    NoName(String),
    #[error("attribute {0:?} has no value (name=value)")]
    NoValue(String),
    #[error("attribute {name:?}: {why}")]
    BadValue { name: String, why: String },
    #[error(
        "{0} is not allowed here: PINs come from the daemon's configuration (hsm.pin_file or hsm.pin_env), never from a URI"
    )]
    Pin(String),
    #[error("{0} is not allowed here: the module is the daemon's hsm.module")]
    Module(String),
    #[error("attribute {name:?} is not one this URI may carry (it may carry: {allowed})")]
    NotAllowed { name: String, allowed: &'static str },
    #[error(
        "unknown attribute {0:?} (RFC 7512 names token, manufacturer, serial, model, object, id, type, slot-id, ...)"
    )]
    Unknown(String),
    #[error("{0}")]
    Key(#[from] KeyRefError),
    #[error("the URI names no key: give object= or id=")]
    NoKey,
    #[error("the URI names a {0}, not a secret or private key")]
    NotAKey(String),
    #[error("the URI names no token: give token=, manufacturer=, serial=, model= or slot-id=")]
    NoToken,
}

/// What a URI says of the token. Every attribute given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct TokenMatch {
    pub label: Option<String>,
    pub manufacturer: Option<String>,
    pub serial: Option<String>,
    pub model: Option<String>,
    pub slot_id: Option<u64>,
}

impl TokenMatch {
    /// A token named by label only (`hsm.token_label`).
    pub(crate) fn label(label: &str) -> TokenMatch {
        TokenMatch {
            label: Some(label.to_string()),
            ..TokenMatch::default()
        }
    }

    /// Whether a token with these (space-trimmed) fields, in `slot`, matches.
    pub(crate) fn matches(
        &self,
        label: &str,
        manufacturer: &str,
        serial: &str,
        model: &str,
        slot: u64,
    ) -> bool {
        let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        eq(&self.label, label)
            && eq(&self.manufacturer, manufacturer)
            && eq(&self.serial, serial)
            && eq(&self.model, model)
            && self.slot_id.is_none_or(|s| s == slot)
    }

    fn is_empty(&self) -> bool {
        *self == TokenMatch::default()
    }

    /// A token URI (`hsm.token`): token attributes only.
    pub(crate) fn parse(uri: &str) -> Result<TokenMatch, UriError> {
        let attrs = parse(uri)?;
        let mut t = TokenMatch::default();
        for (name, value) in attrs {
            match name.as_str() {
                "token" | "manufacturer" | "serial" | "model" | "slot-id" => t.set(&name, value)?,
                _ => {
                    return Err(UriError::NotAllowed {
                        name,
                        allowed: "token, manufacturer, serial, model, slot-id",
                    });
                }
            }
        }
        if t.is_empty() {
            return Err(UriError::NoToken);
        }
        Ok(t)
    }

    fn set(&mut self, name: &str, value: Vec<u8>) -> Result<(), UriError> {
        let text = utf8(name, value)?;
        match name {
            "token" => self.label = Some(text),
            "manufacturer" => self.manufacturer = Some(text),
            "serial" => self.serial = Some(text),
            "model" => self.model = Some(text),
            _ => {
                self.slot_id = Some(text.parse().map_err(|_| UriError::BadValue {
                    name: name.into(),
                    why: "not a decimal slot number".into(),
                })?)
            }
        }
        Ok(())
    }
}

/// Which kind of key a URI's `type` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum KeyClass {
    Secret,
    Private,
}

impl KeyClass {
    /// The `CKA_CLASS` of keys of this kind.
    pub(crate) fn object_class(self) -> cryptoki::object::ObjectClass {
        match self {
            KeyClass::Secret => cryptoki::object::ObjectClass::SECRET_KEY,
            KeyClass::Private => cryptoki::object::ObjectClass::PRIVATE_KEY,
        }
    }
}

/// A key as a URI names it: label and/or id, optionally its class and its token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyUri {
    pub label: Option<String>,
    pub id: Option<Vec<u8>>,
    pub(crate) class: Option<KeyClass>,
    pub(crate) token: TokenMatch,
}

impl KeyUri {
    /// A key URI (`--key`, `KeyRef.pkcs11_uri`): object, id, type and token attributes.
    pub(crate) fn parse(uri: &str) -> Result<KeyUri, UriError> {
        let mut k = KeyUri {
            label: None,
            id: None,
            class: None,
            token: TokenMatch::default(),
        };
        for (name, value) in parse(uri)? {
            match name.as_str() {
                "object" => {
                    let l = utf8(&name, value)?;
                    // the same rules as a label given on its own
                    super::KeyRef::label(&l)?;
                    k.label = Some(l);
                }
                "id" => {
                    if value.is_empty() || value.len() > MAX_ID {
                        return Err(UriError::BadValue {
                            name,
                            why: format!("1 to {MAX_ID} bytes"),
                        });
                    }
                    k.id = Some(value);
                }
                "type" => {
                    k.class = Some(match utf8(&name, value)?.as_str() {
                        "secret-key" => KeyClass::Secret,
                        "private" => KeyClass::Private,
                        other @ ("public" | "cert" | "data") => {
                            return Err(UriError::NotAKey(format!("{other} object")));
                        }
                        other => {
                            return Err(UriError::BadValue {
                                name,
                                why: format!(
                                    "{:?}: one of public, private, cert, secret-key, data",
                                    other.chars().take(32).collect::<String>()
                                ),
                            });
                        }
                    })
                }
                "token" | "manufacturer" | "serial" | "model" => k.token.set(&name, value)?,
                _ => {
                    return Err(UriError::NotAllowed {
                        name,
                        allowed: "object, id, type, token, manufacturer, serial, model",
                    });
                }
            }
        }
        if k.label.is_none() && k.id.is_none() {
            return Err(UriError::NoKey);
        }
        Ok(k)
    }
}

impl fmt::Display for KeyUri {
    /// The canonical form: attributes in a fixed order, values percent-encoded.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        let t = &self.token;
        for (name, v) in [
            ("token", &t.label),
            ("manufacturer", &t.manufacturer),
            ("serial", &t.serial),
            ("model", &t.model),
            ("object", &self.label),
        ] {
            if let Some(v) = v {
                parts.push(format!("{name}={}", encode(v.as_bytes())));
            }
        }
        if let Some(id) = &self.id {
            let hex: String = id.iter().map(|b| format!("%{b:02x}")).collect();
            parts.push(format!("id={hex}"));
        }
        if let Some(c) = self.class {
            parts.push(
                match c {
                    KeyClass::Secret => "type=secret-key",
                    KeyClass::Private => "type=private",
                }
                .into(),
            );
        }
        write!(f, "pkcs11:{}", parts.join(";"))
    }
}

/// Characters a value may carry unencoded.
fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~:[]@!$'()*+,=&".contains(&b)
}

fn encode(v: &[u8]) -> String {
    v.iter()
        .map(|&b| {
            if plain(b) && b != b'&' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn utf8(name: &str, v: Vec<u8>) -> Result<String, UriError> {
    let s = String::from_utf8(v).map_err(|_| UriError::BadValue {
        name: name.into(),
        why: "not UTF-8 text".into(),
    })?;
    if s.len() > MAX_LABEL || s.chars().any(char::is_control) {
        return Err(UriError::BadValue {
            name: name.into(),
            why: format!("at most {MAX_LABEL} bytes of printable text"),
        });
    }
    Ok(s)
}

/// RFC 7512's attribute names, path and query.
const PATH_NAMES: [&str; 13] = [
    "token",
    "manufacturer",
    "serial",
    "model",
    "library-manufacturer",
    "library-description",
    "library-version",
    "object",
    "type",
    "id",
    "slot-manufacturer",
    "slot-description",
    "slot-id",
];

/// The URI's attributes, decoded, in order; the checks common to every use.
fn parse(uri: &str) -> Result<Vec<(String, Vec<u8>)>, UriError> {
    if uri.len() > 1024 {
        return Err(UriError::TooLong(uri.len()));
    }
    let rest = uri.strip_prefix("pkcs11:").ok_or(UriError::Scheme)?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let parts = path
        .split(';')
        .map(|p| (p, false))
        .chain(query.split('&').map(|q| (q, true)));
    for (part, in_query) in parts {
        if part.is_empty() {
            continue;
        }
        let (name, value) = part
            .split_once('=')
            .ok_or_else(|| UriError::NoValue(short(part)))?;
        if name.is_empty() {
            return Err(UriError::NoName(short(part)));
        }
        match name {
            "pin-value" | "pin-source" => return Err(UriError::Pin(name.into())),
            "module-name" | "module-path" => return Err(UriError::Module(name.into())),
            n if !in_query && PATH_NAMES.contains(&n) => {}
            n => return Err(UriError::Unknown(short(n))),
        }
        if out.iter().any(|(n, _)| n == name) {
            return Err(UriError::Repeated(name.into()));
        }
        let value = decode(name, value, in_query)?;
        out.push((name.to_string(), value));
    }
    Ok(out)
}

fn short(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Percent-decodes `v`; a character that must be encoded, or a bad escape, is refused.
fn decode(name: &str, v: &str, in_query: bool) -> Result<Vec<u8>, UriError> {
    let bad = |why: &str| UriError::BadValue {
        name: name.into(),
        why: why.into(),
    };
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .filter(|_| b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit())
                    .ok_or_else(|| bad("a bad percent escape (%XX, two hex digits)"))?;
                out.push(hex);
                i += 3;
            }
            b'&' if in_query => return Err(bad("an unencoded '&'")),
            c if plain(c) => {
                out.push(c);
                i += 1;
            }
            _ => return Err(bad("a character that must be percent-encoded")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_uris() {
        let k = KeyUri::parse("pkcs11:token=hsm-bridge-dev;object=demo-aes-256;type=secret-key")
            .unwrap();
        assert_eq!(k.label.as_deref(), Some("demo-aes-256"));
        assert_eq!(k.class, Some(KeyClass::Secret));
        assert_eq!(k.token.label.as_deref(), Some("hsm-bridge-dev"));
        assert_eq!(
            KeyUri::parse("pkcs11:id=%01%03").unwrap().id,
            Some(vec![1, 3])
        );
        // percent-encoded text, and the canonical form round-trips
        let k = KeyUri::parse("pkcs11:object=my%20key;id=%0A").unwrap();
        assert_eq!(k.label.as_deref(), Some("my key"));
        assert_eq!(k.to_string(), "pkcs11:object=my%20key;id=%0a");
        assert_eq!(KeyUri::parse(&k.to_string()).unwrap(), k);

        for (bad, why) in [
            ("object=x", "pkcs11:"),
            ("pkcs11:object=a;object=b", "twice"),
            ("pkcs11:colour=blue", "unknown attribute"),
            ("pkcs11:object=a%zz", "percent escape"),
            ("pkcs11:object=a%4", "percent escape"),
            ("pkcs11:object=a b", "percent-encoded"),
            ("pkcs11:object=a?pin-value=1234", "PINs come from"),
            ("pkcs11:object=a?pin-source=file:/x", "PINs come from"),
            ("pkcs11:object=a?module-path=/x.so", "hsm.module"),
            ("pkcs11:=x", "no name"),
            ("pkcs11:object", "no value"),
            ("pkcs11:token=t", "names no key"),
            ("pkcs11:object=a;type=public", "not a secret or private key"),
            ("pkcs11:object=a;type=pony", "one of public"),
            ("pkcs11:object=a;slot-id=1", "may carry"),
            ("pkcs11:object=a*", "glob"),
            ("pkcs11:object=a?token=x", "unknown attribute"),
        ] {
            let e = KeyUri::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(
            !KeyUri::parse("pkcs11:object=a?pin-value=s3cret")
                .unwrap_err()
                .to_string()
                .contains("s3cret")
        );
    }

    #[test]
    fn token_uris() {
        let t = TokenMatch::parse("pkcs11:token=hsm-bridge-dev;manufacturer=SoftHSM%20project")
            .unwrap();
        assert!(t.matches("hsm-bridge-dev", "SoftHSM project", "1234", "SoftHSM v2", 7));
        assert!(!t.matches("hsm-bridge-dev", "Thales", "1234", "SoftHSM v2", 7));
        assert!(
            TokenMatch::parse("pkcs11:slot-id=7")
                .unwrap()
                .matches("x", "y", "z", "w", 7)
        );
        assert!(TokenMatch::parse("pkcs11:slot-id=x").is_err());
        assert!(
            TokenMatch::parse("pkcs11:object=k")
                .unwrap_err()
                .to_string()
                .contains("may carry")
        );
        assert_eq!(TokenMatch::parse("pkcs11:").unwrap_err(), UriError::NoToken);
    }
}
