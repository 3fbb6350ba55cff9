//! Finding source keys on the token: by label or CKA_ID, among secret and private keys
//! only, with a handle cache. Reads attributes, never key values.

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use super::HsmError;
pub use crate::keyref::KeyRef;
use crate::keyref::uri;
use crate::wrap::{KeyAlgorithm, KeyShape, hex};

/// What the token says about a key. No values.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub handle: ObjectHandle,
    pub class: ObjectClass,
    pub key_type: KeyType,
    pub label: String,
    pub id: Vec<u8>,
    pub extractable: bool,
    pub sensitive: bool,
    /// `CKA_WRAP_WITH_TRUSTED`: only a trusted key may wrap it.
    pub wrap_with_trusted: bool,
    /// AES: `CKA_VALUE_LEN`. RSA: modulus length. In bytes.
    pub length: usize,
    /// RSA: `CKA_MODULUS`.
    pub modulus: Option<Vec<u8>>,
}

impl KeyInfo {
    /// Whether the key is of the class a URI's `type` asks for.
    pub(crate) fn class_is(&self, c: uri::KeyClass) -> bool {
        self.class == c.object_class()
    }

    /// OCI shape, if OCI has one for this key type (importable or not).
    pub(crate) fn shape(&self) -> Option<KeyShape> {
        let algorithm = match (self.class, self.key_type) {
            (ObjectClass::SECRET_KEY, KeyType::AES) => KeyAlgorithm::Aes,
            (ObjectClass::PRIVATE_KEY, KeyType::RSA) => KeyAlgorithm::Rsa,
            _ => return None,
        };
        Some(KeyShape {
            algorithm,
            length: self.length,
        })
    }

    /// The PKCS#11 key type without its prefix: "AES", "RSA", "EC", "DES3", ...
    pub(crate) fn key_type_name(&self) -> String {
        let t = self.key_type.to_string();
        t.strip_prefix("CKK_").map(str::to_string).unwrap_or(t)
    }

    /// "AES-256", "RSA-3072", "EC private key", ...
    pub(crate) fn describe(&self) -> String {
        match self.shape() {
            Some(s) => s.describe(),
            None => format!(
                "{} {}",
                self.key_type_name(),
                if self.class == ObjectClass::PRIVATE_KEY {
                    "private key"
                } else {
                    "secret key"
                }
            ),
        }
    }

    /// How the key is named in messages: its label, or its id when it has none.
    pub(crate) fn name(&self) -> String {
        if self.label.is_empty() {
            format!("id {}", hex(&self.id))
        } else {
            self.label.clone()
        }
    }
}

const ATTRS: [AttributeType; 9] = [
    AttributeType::Class,
    AttributeType::KeyType,
    AttributeType::Label,
    AttributeType::Id,
    AttributeType::Extractable,
    AttributeType::Sensitive,
    AttributeType::WrapWithTrusted,
    AttributeType::ValueLen,
    AttributeType::Modulus,
];

/// Reads a key's attributes. `Ok(None)` if the object is not a secret or private key.
pub(crate) fn read_info(s: &Session, handle: ObjectHandle) -> Result<Option<KeyInfo>, CkError> {
    let attrs = s.get_attributes(handle, &ATTRS)?;
    let mut info = KeyInfo {
        handle,
        class: ObjectClass::DATA,
        key_type: KeyType::GENERIC_SECRET,
        label: String::new(),
        id: Vec::new(),
        extractable: false,
        sensitive: true,
        wrap_with_trusted: false,
        length: 0,
        modulus: None,
    };
    let mut value_len = 0usize;
    for a in attrs {
        match a {
            Attribute::Class(c) => info.class = c,
            Attribute::KeyType(t) => info.key_type = t,
            Attribute::Label(l) => info.label = String::from_utf8_lossy(&l).into_owned(),
            Attribute::Id(id) => info.id = id,
            Attribute::Extractable(b) => info.extractable = b,
            Attribute::Sensitive(b) => info.sensitive = b,
            Attribute::WrapWithTrusted(b) => info.wrap_with_trusted = b,
            Attribute::ValueLen(n) => value_len = usize::try_from(u64::from(n)).unwrap_or(0),
            Attribute::Modulus(m) => info.modulus = Some(m),
            _ => {}
        }
    }
    if info.class != ObjectClass::SECRET_KEY && info.class != ObjectClass::PRIVATE_KEY {
        return Ok(None);
    }
    info.length = match &info.modulus {
        Some(m) if info.key_type == KeyType::RSA => m.iter().skip_while(|&&b| b == 0).count(),
        _ => value_len,
    };
    Ok(Some(info))
}

/// Finds the one secret or private key that `key` names. Public keys and certificates that
/// share the label or id are ignored; two secret/private keys are an error.
pub(crate) fn find(s: &Session, key: &KeyRef) -> Result<KeyInfo, HsmError> {
    let mut template = Vec::new();
    if let Some(l) = key.label_named() {
        template.push(Attribute::Label(l.as_bytes().to_vec()));
    }
    if let Some(id) = key.id_named() {
        template.push(Attribute::Id(id.to_vec()));
    }
    if let KeyRef::Uri(u) = key
        && let Some(class) = u.class
    {
        template.push(Attribute::Class(class.object_class()));
    }
    let handles = s
        .find_objects(&template)
        .map_err(|e| HsmError::pkcs11("C_FindObjects", e))?;
    let mut found = Vec::new();
    for h in handles {
        match read_info(s, h) {
            Ok(Some(info)) => found.push(info),
            Ok(None) => {}
            // Gone between find and read: not a match.
            Err(CkError::Pkcs11(RvError::ObjectHandleInvalid, _)) => {}
            Err(e) => return Err(HsmError::pkcs11("C_GetAttributeValue", e)),
        }
    }
    match found.len() {
        0 => Err(HsmError::KeyNotFound(key.to_string())),
        1 => Ok(found.pop().expect("one element")),
        n => Err(HsmError::Ambiguous {
            key: key.to_string(),
            count: n,
        }),
    }
}

/// Whether a cached handle still names the same key.
pub(crate) fn still_matches(info: &KeyInfo, key: &KeyRef) -> bool {
    key.label_named().is_none_or(|l| info.label == l)
        && key.id_named().is_none_or(|id| info.id == id)
        && match key {
            KeyRef::Uri(uri::KeyUri { class: Some(c), .. }) => info.class_is(*c),
            _ => true,
        }
}

/// Every secret and private key on the token, sorted by label then id.
pub(crate) fn list(s: &Session) -> Result<Vec<KeyInfo>, HsmError> {
    let mut out = Vec::new();
    for class in [ObjectClass::SECRET_KEY, ObjectClass::PRIVATE_KEY] {
        let handles = s
            .find_objects(&[Attribute::Class(class), Attribute::Token(true)])
            .map_err(|e| HsmError::pkcs11("C_FindObjects", e))?;
        for h in handles {
            match read_info(s, h) {
                Ok(Some(info)) => out.push(info),
                Ok(None) | Err(CkError::Pkcs11(RvError::ObjectHandleInvalid, _)) => {}
                Err(e) => return Err(HsmError::pkcs11("C_GetAttributeValue", e)),
            }
        }
    }
    out.sort_by(|a, b| (&a.label, &a.id).cmp(&(&b.label, &b.id)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyref::{MAX_ID, MAX_LABEL};

    #[test]
    fn caller_labels_and_ids_are_checked() {
        assert_eq!(
            KeyRef::label("demo-aes-256").unwrap(),
            KeyRef::Label("demo-aes-256".into())
        );
        assert_eq!(
            KeyRef::id_hex("0A0b").unwrap(),
            KeyRef::Id(vec![0x0a, 0x0b])
        );
        for bad in [
            "",
            "a*",
            "a?",
            "[a]",
            "tab\there",
            "nl\n",
            "nul\0x",
            "del\u{7f}",
        ] {
            assert!(KeyRef::label(bad).is_err(), "{bad:?}");
        }
        assert!(KeyRef::label(&"x".repeat(MAX_LABEL)).is_ok());
        assert!(KeyRef::label(&"x".repeat(MAX_LABEL + 1)).is_err());
        for bad in ["", "0", "zz", "0x01", &"00".repeat(MAX_ID + 1)] {
            assert!(KeyRef::id_hex(bad).is_err(), "{bad:?}");
        }
    }
}
