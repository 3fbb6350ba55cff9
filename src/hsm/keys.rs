//! Finding source keys on the token: by label or CKA_ID, among secret and private keys
//! only, with a handle cache; and the search and reads of a listing. Reads attributes,
//! never key values.

use std::num::NonZeroUsize;

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use super::HsmError;
use super::raw::RawModule;
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
    /// RSA: `CKA_MODULUS` (not kept by a listing, which needs only its length).
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

/// What is read of every object, and the room for each value of no fixed size.
const ATTRS: [(AttributeType, usize); 9] = [
    (AttributeType::Class, 0),
    (AttributeType::KeyType, 0),
    (AttributeType::Label, LABEL_ROOM),
    (AttributeType::Id, ID_ROOM),
    (AttributeType::Extractable, 0),
    (AttributeType::Sensitive, 0),
    (AttributeType::WrapWithTrusted, 0),
    (AttributeType::ValueLen, 0),
    (AttributeType::Modulus, MODULUS_ROOM),
];
/// Room for a label, an id and an RSA modulus (RSA-8192) in the one-call read. A longer
/// value costs the object two more calls, nothing else.
const LABEL_ROOM: usize = 256;
const ID_ROOM: usize = 128;
const MODULUS_ROOM: usize = 1024;

/// Reads a key's attributes. `Ok(None)` if the object is not a secret or private key.
///
/// One `C_GetAttributeValue` when the label, id and modulus fit the room above (nearly
/// always); else `cryptoki`'s read, which asks for their sizes first.
pub(crate) fn read_info(
    raw: &RawModule,
    s: &Session,
    handle: ObjectHandle,
) -> Result<Option<KeyInfo>, CkError> {
    if let Some(attrs) = raw.attributes_once(s.handle(), handle.handle(), &ATTRS)?
        && let (info, true) = parse(handle, &attrs)
    {
        return Ok(info);
    }
    let types = ATTRS.map(|(t, _)| t);
    Ok(parse(handle, &s.get_attributes(handle, &types)?).0)
}

/// The key `attrs` describe (`None` for an object that is not a secret or private key),
/// and whether everything a key has came back: a key's label and id, an RSA key's modulus
/// (a buffer too small may be answered as a missing attribute).
fn parse(handle: ObjectHandle, attrs: &[Attribute]) -> (Option<KeyInfo>, bool) {
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
    let (mut label, mut id) = (false, false);
    for a in attrs {
        match a {
            Attribute::Class(c) => info.class = *c,
            Attribute::KeyType(t) => info.key_type = *t,
            Attribute::Label(l) => {
                info.label = String::from_utf8_lossy(l).into_owned();
                label = true;
            }
            Attribute::Id(i) => {
                info.id = i.clone();
                id = true;
            }
            Attribute::Extractable(b) => info.extractable = *b,
            Attribute::Sensitive(b) => info.sensitive = *b,
            Attribute::WrapWithTrusted(b) => info.wrap_with_trusted = *b,
            Attribute::ValueLen(n) => value_len = usize::try_from(u64::from(*n)).unwrap_or(0),
            Attribute::Modulus(m) => info.modulus = Some(m.clone()),
            _ => {}
        }
    }
    if info.class != ObjectClass::SECRET_KEY && info.class != ObjectClass::PRIVATE_KEY {
        return (None, true);
    }
    let rsa = info.key_type == KeyType::RSA;
    let complete = label && id && (!rsa || info.modulus.is_some());
    info.length = match &info.modulus {
        Some(m) if rsa => m.iter().skip_while(|&&b| b == 0).count(),
        _ => value_len,
    };
    (Some(info), complete)
}

/// Finds the one secret or private key that `key` names. Public keys and certificates that
/// share the label or id are ignored; two secret/private keys are an error.
pub(crate) fn find(raw: &RawModule, s: &Session, key: &KeyRef) -> Result<KeyInfo, HsmError> {
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
        match read_info(raw, s, h) {
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

/// Handles per `C_FindObjects` call in a search of the whole token (`cryptoki`'s default,
/// 10, is a round trip per 10 objects on a network HSM).
const SEARCH_BATCH: NonZeroUsize = NonZeroUsize::new(1024).expect("not zero");

/// Every token object, by handle only: one search whatever the class (a search costs
/// SoftHSM2 the same whatever it matches, so one search for all costs half of one per key
/// class; which objects are not keys, a later page of a listing already knows).
pub(crate) fn search(s: &Session) -> Result<Vec<ObjectHandle>, HsmError> {
    s.iter_objects_with_cache_size(&[Attribute::Token(true)], SEARCH_BATCH)
        .and_then(Iterator::collect)
        .map_err(|e| HsmError::pkcs11("C_FindObjects", e))
}

/// What each of `handles` is: its key, or `None` for an object that is not a secret or
/// private key. An object gone since the search is left out.
pub(crate) fn read_all(
    raw: &RawModule,
    s: &Session,
    handles: &[ObjectHandle],
) -> Result<Vec<(ObjectHandle, Option<KeyInfo>)>, HsmError> {
    let mut out = Vec::with_capacity(handles.len());
    for &h in handles {
        match read_info(raw, s, h) {
            Ok(info) => out.push((h, info)),
            Err(CkError::Pkcs11(RvError::ObjectHandleInvalid, _)) => {}
            Err(e) => return Err(HsmError::pkcs11("C_GetAttributeValue", e)),
        }
    }
    Ok(out)
}

/// The order of a listing and of its page tokens (src/service/request.rs): by label, then
/// id.
pub(crate) fn sort(keys: &mut [KeyInfo]) {
    keys.sort_by(|a, b| (&a.label, &a.id).cmp(&(&b.label, &b.id)));
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
