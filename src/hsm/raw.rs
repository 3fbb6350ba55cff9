//! `unsafe` for PKCS#11 calls that `cryptoki` cannot express (the only other `unsafe` is
//! memory for secrets and OpenSSL's secure heap, in `crate::hardening`).
//!
//! - `C_GetMechanismList` unfiltered: `cryptoki` drops numbers it has no name for, among
//!   them `CKM_RSA_AES_KEY_WRAP` (0x1054) and `CKM_AES_KEY_WRAP_KWP` (0x210B).
//! - `C_WrapKey` with those mechanisms and their parameter structs, in one pre-sized call
//!   (`cryptoki`'s `wrap_key` asks for the size first, and SoftHSM does the whole wrap
//!   twice).
//! - `C_Login` with the PIN read straight from its locked page (`cryptoki` would copy it into
//!   an ordinary heap string first).
//! - `C_GetAttributeValue` in one pre-sized call (`cryptoki`'s `get_attributes` asks for the
//!   sizes of a label or an id first, and each call costs SoftHSM2 about as much as the
//!   whole read: BENCHMARKS.md, "Listing a large token page by page").
//! - Setting the module's environment (`hsm.module_env`) before it loads.
//!
//! The module is opened a second time with `dlopen`, which returns the same, already
//! initialised library, and called through its `C_GetFunctionList` table; session and
//! object handles from `cryptoki` are valid here. Nothing
//! here sees key material in clear: the outputs are ciphertexts.

#![allow(unsafe_code)]

use std::ffi::c_void;
use std::path::Path;
use std::ptr;

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, Rv, RvError};
use cryptoki::object::{Attribute, AttributeType};
use cryptoki_sys as sys;

use crate::wrap::soft::OaepHash;

pub(crate) use sys::{CK_MECHANISM_TYPE, CK_OBJECT_HANDLE, CK_SESSION_HANDLE, CK_SLOT_ID};

/// `CKM_RSA_AES_KEY_WRAP`.
pub(crate) const CKM_RSA_AES_KEY_WRAP: CK_MECHANISM_TYPE = sys::CKM_RSA_AES_KEY_WRAP;
/// `CKM_AES_KEY_WRAP_KWP` (PKCS#11 3.0 name for RFC 5649).
pub(crate) const CKM_AES_KEY_WRAP_KWP: CK_MECHANISM_TYPE = sys::CKM_AES_KEY_WRAP_KWP;
/// `CKM_AES_KEY_WRAP_PAD`; RFC 5649 on SoftHSM2, something else on other tokens.
pub(crate) const CKM_AES_KEY_WRAP_PAD: CK_MECHANISM_TYPE = sys::CKM_AES_KEY_WRAP_PAD;
/// Thales Luna's vendor RFC 5649.
pub(crate) const CKM_LUNA_AES_KWP: CK_MECHANISM_TYPE = 0x8000_0171;
/// `CKM_RSA_PKCS_OAEP`.
pub(crate) const CKM_RSA_PKCS_OAEP: CK_MECHANISM_TYPE = sys::CKM_RSA_PKCS_OAEP;

/// A wrap mechanism with the parameters the clouds' formats need (src/wrap/format.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WrapMechanism {
    /// `CKM_RSA_AES_KEY_WRAP` with a 256-bit AES key and OAEP with the hash and MGF1 of the
    /// same hash.
    RsaAesKeyWrap(OaepHash),
    /// `CKM_RSA_PKCS_OAEP` with the hash and MGF1 of the same hash, empty label.
    RsaOaep(OaepHash),
    /// RFC 5649 under the given mechanism number, no parameters.
    Kwp(CK_MECHANISM_TYPE),
}

/// The library, opened a second time for raw calls through its function list (many
/// modules export only `C_GetFunctionList`, not the functions themselves).
pub(crate) struct RawModule {
    /// Keeps the library mapped while the function pointers below are in use.
    _lib: sys::Pkcs11,
    wrap_key_fn: unsafe extern "C" fn(
        sys::CK_SESSION_HANDLE,
        *mut sys::CK_MECHANISM,
        sys::CK_OBJECT_HANDLE,
        sys::CK_OBJECT_HANDLE,
        *mut sys::CK_BYTE,
        *mut sys::CK_ULONG,
    ) -> sys::CK_RV,
    mechanism_list_fn: unsafe extern "C" fn(
        sys::CK_SLOT_ID,
        *mut CK_MECHANISM_TYPE,
        *mut sys::CK_ULONG,
    ) -> sys::CK_RV,
    login_fn: unsafe extern "C" fn(
        sys::CK_SESSION_HANDLE,
        sys::CK_USER_TYPE,
        *mut sys::CK_UTF8CHAR,
        sys::CK_ULONG,
    ) -> sys::CK_RV,
    get_attribute_value_fn: unsafe extern "C" fn(
        sys::CK_SESSION_HANDLE,
        sys::CK_OBJECT_HANDLE,
        *mut sys::CK_ATTRIBUTE,
        sys::CK_ULONG,
    ) -> sys::CK_RV,
    /// The role `C_Login` logs in as (`hsm.user_type`).
    user_type: sys::CK_USER_TYPE,
}

impl RawModule {
    /// Opens the module at `path` (already loaded and initialised by `cryptoki`); logins
    /// will be as `user_type`.
    pub(crate) fn open(path: &Path, user_type: sys::CK_USER_TYPE) -> Result<Self, RawOpenError> {
        // SAFETY: loading a PKCS#11 library runs its initialisers; this is the same file
        // `cryptoki` has just loaded, so dlopen returns the existing instance.
        let lib = unsafe { sys::Pkcs11::new(path) }.map_err(|e| RawOpenError(e.to_string()))?;
        if lib.C_GetFunctionList.is_err() {
            return Err(RawOpenError(
                "the module does not export C_GetFunctionList".into(),
            ));
        }
        let mut list: *mut sys::CK_FUNCTION_LIST = ptr::null_mut();
        // SAFETY: C_GetFunctionList writes a pointer to the module's static function
        // list, valid for as long as the library stays loaded (`_lib` keeps it loaded).
        check(unsafe { lib.C_GetFunctionList(&mut list) })
            .map_err(|rv| RawOpenError(format!("C_GetFunctionList: {rv}")))?;
        if list.is_null() {
            return Err(RawOpenError("C_GetFunctionList returned no list".into()));
        }
        // SAFETY: `list` is non-null and points to the module's CK_FUNCTION_LIST.
        let (wrap, mechs, login, attrs) = unsafe {
            (
                (*list).C_WrapKey,
                (*list).C_GetMechanismList,
                (*list).C_Login,
                (*list).C_GetAttributeValue,
            )
        };
        match (wrap, mechs, login, attrs) {
            (
                Some(wrap_key_fn),
                Some(mechanism_list_fn),
                Some(login_fn),
                Some(get_attribute_value_fn),
            ) => Ok(RawModule {
                _lib: lib,
                wrap_key_fn,
                mechanism_list_fn,
                login_fn,
                get_attribute_value_fn,
                user_type,
            }),
            _ => Err(RawOpenError(
                "the module's function list has no C_WrapKey / C_GetMechanismList / C_Login / C_GetAttributeValue".into(),
            )),
        }
    }

    /// Every mechanism number the slot lists, including ones `cryptoki` has no name for.
    pub(crate) fn mechanism_list(
        &self,
        slot: CK_SLOT_ID,
    ) -> Result<Vec<CK_MECHANISM_TYPE>, RvError> {
        let mut count: sys::CK_ULONG = 0;
        // SAFETY: size query with a null buffer, as the standard allows.
        check(unsafe { (self.mechanism_list_fn)(slot, ptr::null_mut(), &mut count) })?;
        if count as usize > MAX_MECHANISMS {
            tracing::error!(
                count,
                "the token reports more mechanisms than any token has; refused"
            );
            return Err(RvError::FunctionFailed);
        }
        let mut list = vec![0 as CK_MECHANISM_TYPE; count as usize];
        // SAFETY: `list` has room for `count` entries; the token writes at most that many
        // and updates `count`.
        check(unsafe { (self.mechanism_list_fn)(slot, list.as_mut_ptr(), &mut count) })?;
        list.truncate(count as usize);
        Ok(list)
    }

    /// `C_Login` as the configured role with `pin`.
    pub(crate) fn login_user(&self, session: CK_SESSION_HANDLE, pin: &[u8]) -> Result<(), RvError> {
        // SAFETY: `pin` is valid for `pin.len()` bytes for the whole call; PKCS#11 declares
        // the pointer mutable but C_Login only reads it.
        check(unsafe {
            (self.login_fn)(
                session,
                self.user_type,
                pin.as_ptr().cast_mut(),
                pin.len() as sys::CK_ULONG,
            )
        })
    }

    /// `C_GetAttributeValue` of `wanted` in one call: an attribute of fixed size into a
    /// buffer of its size, any other into a buffer of the size given with it. The
    /// attributes the token returned, as `cryptoki` parses them (those the object does not
    /// have, or keeps secret, are left out); `None` when the token says a buffer was too
    /// small. A token may also answer a too-small buffer as an attribute it does not have
    /// (PKCS#11 lets it pick either code when both apply): the caller checks that what it
    /// needs came back.
    pub(crate) fn attributes_once(
        &self,
        session: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
        wanted: &[(AttributeType, usize)],
    ) -> Result<Option<Vec<Attribute>>, CkError> {
        let mut buffers: Vec<Vec<u8>> = wanted
            .iter()
            .map(|(t, room)| vec![0u8; t.fixed_size().unwrap_or(*room)])
            .collect();
        let mut template: Vec<sys::CK_ATTRIBUTE> = wanted
            .iter()
            .zip(buffers.iter_mut())
            .map(|((t, _), b)| sys::CK_ATTRIBUTE {
                type_: (*t).into(),
                pValue: b.as_mut_ptr().cast(),
                ulValueLen: b.len() as sys::CK_ULONG,
            })
            .collect();
        // SAFETY: each entry of `template` points to its own buffer in `buffers`, with its
        // length; both live until the end of this function, and the token writes at most
        // `ulValueLen` bytes into each.
        let rv = unsafe {
            (self.get_attribute_value_fn)(
                session,
                object,
                template.as_mut_ptr(),
                template.len() as sys::CK_ULONG,
            )
        };
        match Rv::from(rv) {
            Rv::Ok | Rv::Error(RvError::AttributeSensitive | RvError::AttributeTypeInvalid) => {}
            Rv::Error(RvError::BufferTooSmall) => return Ok(None),
            Rv::Error(e) => return Err(CkError::Pkcs11(e, Function::GetAttributeValue)),
        }
        let mut out = Vec::with_capacity(template.len());
        for (a, b) in template.iter().zip(&buffers) {
            if a.ulValueLen == sys::CK_UNAVAILABLE_INFORMATION {
                continue;
            }
            // A length beyond the buffer is a broken token: refused, never trusted.
            if a.ulValueLen as usize > b.len() {
                tracing::error!(
                    bytes = a.ulValueLen,
                    buffer = b.len(),
                    "the token says it wrote more than the attribute buffer holds; refused"
                );
                return Err(CkError::Pkcs11(
                    RvError::FunctionFailed,
                    Function::GetAttributeValue,
                ));
            }
            out.push(Attribute::try_from(*a)?);
        }
        Ok(Some(out))
    }

    /// `C_WrapKey` with `mech`, into a buffer of `size_hint` bytes; one call when the hint
    /// is big enough, a size query and a second call otherwise.
    pub(crate) fn wrap_key(
        &self,
        session: CK_SESSION_HANDLE,
        mech: WrapMechanism,
        wrapping_key: CK_OBJECT_HANDLE,
        key: CK_OBJECT_HANDLE,
        size_hint: usize,
    ) -> Result<Vec<u8>, RvError> {
        let hash = match mech {
            WrapMechanism::RsaAesKeyWrap(h) | WrapMechanism::RsaOaep(h) => h,
            WrapMechanism::Kwp(_) => OaepHash::Sha256,
        };
        let (hash_alg, mgf) = match hash {
            OaepHash::Sha256 => (sys::CKM_SHA256, sys::CKG_MGF1_SHA256),
            OaepHash::Sha1 => (sys::CKM_SHA_1, sys::CKG_MGF1_SHA1),
        };
        let mut oaep = sys::CK_RSA_PKCS_OAEP_PARAMS {
            hashAlg: hash_alg,
            mgf,
            source: sys::CKZ_DATA_SPECIFIED,
            pSourceData: ptr::null_mut(),
            ulSourceDataLen: 0,
        };
        let mut rsa_aes = sys::CK_RSA_AES_KEY_WRAP_PARAMS {
            ulAESKeyBits: 256,
            pOAEPParams: &mut oaep,
        };
        let (number, param, param_len): (_, *mut c_void, usize) = match mech {
            WrapMechanism::RsaAesKeyWrap(_) => (
                CKM_RSA_AES_KEY_WRAP,
                (&mut rsa_aes as *mut sys::CK_RSA_AES_KEY_WRAP_PARAMS).cast(),
                size_of::<sys::CK_RSA_AES_KEY_WRAP_PARAMS>(),
            ),
            WrapMechanism::RsaOaep(_) => (
                CKM_RSA_PKCS_OAEP,
                (&mut oaep as *mut sys::CK_RSA_PKCS_OAEP_PARAMS).cast(),
                size_of::<sys::CK_RSA_PKCS_OAEP_PARAMS>(),
            ),
            WrapMechanism::Kwp(n) => (n, ptr::null_mut(), 0),
        };
        let mut mechanism = sys::CK_MECHANISM {
            mechanism: number,
            pParameter: param,
            ulParameterLen: param_len as sys::CK_ULONG,
        };
        let wrap_into = |out: &mut Vec<u8>| -> (sys::CK_RV, usize) {
            let mut len = out.len() as sys::CK_ULONG;
            // SAFETY: `mechanism` and the parameter structs it points to live on this
            // stack frame for the whole call; `out` has `len` writable bytes.
            let rv = unsafe {
                (self.wrap_key_fn)(
                    session,
                    &mut mechanism,
                    wrapping_key,
                    key,
                    out.as_mut_ptr(),
                    &mut len,
                )
            };
            (rv, len as usize)
        };
        sized_output(wrap_into, size_hint)
    }
}

/// Runs a PKCS#11 call that writes into a buffer, `size_hint` bytes first; when the token
/// answers `CKR_BUFFER_TOO_SMALL`, once more with the size it asked for (bounded by
/// [`MAX_WRAP_OUTPUT`]). A length beyond the buffer is refused, never trusted.
fn sized_output(
    mut call: impl FnMut(&mut Vec<u8>) -> (sys::CK_RV, usize),
    size_hint: usize,
) -> Result<Vec<u8>, RvError> {
    let mut out = vec![0u8; size_hint.max(1)];
    let (rv, mut len) = call(&mut out);
    match Rv::from(rv) {
        Rv::Ok => {}
        Rv::Error(RvError::BufferTooSmall) => {
            // `len` now holds the size the token needs: bounded before it is allocated.
            if len > MAX_WRAP_OUTPUT {
                tracing::error!(
                    bytes = len,
                    "the token asks for a wrap buffer larger than any wrapped key; refused"
                );
                return Err(RvError::FunctionFailed);
            }
            out = vec![0u8; len];
            let (rv, again) = call(&mut out);
            check(rv)?;
            len = again;
        }
        Rv::Error(e) => return Err(e),
    }
    if len > out.len() {
        tracing::error!(
            bytes = len,
            buffer = out.len(),
            "the token says it wrote more than the buffer holds; refused"
        );
        return Err(RvError::FunctionFailed);
    }
    out.truncate(len);
    Ok(out)
}

/// Why the module's own function list could not be had.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct RawOpenError(String);

/// Largest wrap output taken from a token: an RSA-16384 OAEP block and an RFC 5649 wrap of
/// an RSA-4096 PKCS#8 are each under 4 KiB. A larger size asked for is a broken token, and
/// is refused rather than allocated.
const MAX_WRAP_OUTPUT: usize = 64 * 1024;
/// Most mechanisms a slot may list (real tokens list a few hundred).
const MAX_MECHANISMS: usize = 4096;

fn check(rv: sys::CK_RV) -> Result<(), RvError> {
    match Rv::from(rv) {
        Rv::Ok => Ok(()),
        Rv::Error(e) => Err(e),
    }
}

/// Sets `hsm.module_env` before the module loads (SoftHSM reads `SOFTHSM2_CONF`, Luna
/// `ChrystokiConfigurationPath`, during `C_Initialize`).
pub fn set_module_env<'a>(vars: impl IntoIterator<Item = (&'a String, &'a String)>) {
    for (k, v) in vars {
        if std::env::var_os(k).as_deref() == Some(std::ffi::OsStr::new(v)) {
            continue;
        }
        // SAFETY: called once, while opening the token and before the module loads. Rust's
        // own environment access is serialised by std; the residual risk is a C library on
        // another thread calling getenv at this instant, which the CLI and daemon avoid by
        // opening the token before starting other threads.
        unsafe { std::env::set_var(k, v) };
    }
}
