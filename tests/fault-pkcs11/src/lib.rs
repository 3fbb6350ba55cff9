//! A PKCS#11 module for tests. It loads the real module named by `FAULT_PKCS11_MODULE`,
//! hands out the real module's function list with a few entries replaced, and for those:
//!
//! - appends the function's name to the file `FAULT_PKCS11_LOG` (if set) on every call, so a
//!   test can count calls;
//! - answers with a chosen `CKR_` code instead of calling the real module, as the file
//!   `FAULT_PKCS11_CONTROL` says: lines `FUNCTION RV COUNT` (RV in hex, e.g.
//!   `C_WrapKey 0x30 1` for one CKR_DEVICE_ERROR). Each distinct line injects COUNT times
//!   in this process; a test changes the instruction by writing a new line. COUNT `sticky`
//!   injects until the next `C_Finalize`: a module that is wedged until re-initialised.
//!   RV `delay:MS` instead calls the real function after MS milliseconds: a slow HSM.
//!   For C_WrapKey only, RV `size:N` answers CKR_BUFFER_TOO_SMALL with a needed size of N
//!   bytes (a token that lies about sizes), and RV `corrupt` calls the real function and
//!   flips a bit in the last byte it wrote (a token whose wrap output is garbage).
//!
//! With `FAULT_PKCS11_LUNA`, it also behaves as a Luna partition does (see `luna.rs`).
//!
//! Replaced: C_Initialize, C_Finalize, C_Login, C_WrapKey, C_OpenSession, C_GetTokenInfo,
//! C_FindObjectsInit, C_GetAttributeValue, and for the Luna rules C_CreateObject, C_GenerateKey,
//! C_GenerateKeyPair, C_UnwrapKey, C_GetMechanismList, C_GetMechanismInfo. Everything else is
//! the real module's own function pointer.

#![allow(non_snake_case)]

mod luna;

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Mutex, OnceLock};

use cryptoki_sys::*;

struct Real {
    _lib: libloading::Library,
    list: CK_FUNCTION_LIST,
}

static REAL: OnceLock<Option<Real>> = OnceLock::new();
static OURS: OnceLock<Option<Box<CK_FUNCTION_LIST>>> = OnceLock::new();
static USED: Mutex<Option<HashMap<String, u64>>> = Mutex::new(None);

fn real() -> Option<&'static CK_FUNCTION_LIST> {
    REAL.get_or_init(|| {
        let path = std::env::var_os("FAULT_PKCS11_MODULE")?;
        // SAFETY: loading a PKCS#11 module runs its initialisers; that is what it is for.
        let lib = unsafe { libloading::Library::new(path) }.ok()?;
        let mut list: CK_FUNCTION_LIST_PTR = std::ptr::null_mut();
        // SAFETY: C_GetFunctionList has this signature in every PKCS#11 module, and writes
        // a pointer to a list that lives as long as the library.
        let rv = unsafe {
            let get: libloading::Symbol<unsafe extern "C" fn(CK_FUNCTION_LIST_PTR_PTR) -> CK_RV> =
                lib.get(b"C_GetFunctionList\0").ok()?;
            get(&mut list)
        };
        if rv != CKR_OK || list.is_null() {
            return None;
        }
        // SAFETY: checked non-null above; copied by value.
        let list = unsafe { *list };
        Some(Real { _lib: lib, list })
    })
    .as_ref()
    .map(|r| &r.list)
}

fn log(function: &str) {
    if let Some(path) = std::env::var_os("FAULT_PKCS11_LOG")
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        let _ = writeln!(f, "{function}");
    }
}

/// What the control file says to do with a call.
enum Action {
    /// Answer this code; the real function is not called.
    Fail(CK_RV),
    /// Wait this many milliseconds, then call the real function.
    Delay(u64),
    /// C_WrapKey: say the output needs this many bytes.
    Size(CK_ULONG),
    /// C_WrapKey: call the real function, then corrupt its output.
    Corrupt,
}

/// What to do instead of simply calling the real function, if the control file says so.
fn inject(function: &str) -> Option<Action> {
    let path = std::env::var_os("FAULT_PKCS11_CONTROL")?;
    let text = std::fs::read_to_string(path).ok()?;
    let mut used = USED.lock().unwrap_or_else(|p| p.into_inner());
    let used = used.get_or_insert_with(HashMap::new);
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(name), Some(rv), Some(count)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if name != function {
            continue;
        }
        let action = if let Some(ms) = rv.strip_prefix("delay:") {
            Action::Delay(ms.parse().ok()?)
        } else if let Some(n) = rv.strip_prefix("size:") {
            Action::Size(n.parse().ok()?)
        } else if rv == "corrupt" {
            Action::Corrupt
        } else {
            Action::Fail(CK_RV::from_str_radix(rv.trim_start_matches("0x"), 16).ok()?)
        };
        let n = used.entry(line.to_string()).or_insert(0);
        if count == "sticky" {
            // 0 until a C_Finalize ends it.
            if *n == 0 {
                return Some(action);
            }
            continue;
        }
        let count: u64 = count.parse().ok()?;
        if *n < count {
            *n += 1;
            return Some(action);
        }
    }
    None
}

/// Ends every `sticky` instruction in the control file (at C_Finalize).
fn end_sticky() {
    let Some(path) = std::env::var_os("FAULT_PKCS11_CONTROL") else {
        return;
    };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut used = USED.lock().unwrap_or_else(|p| p.into_inner());
    let used = used.get_or_insert_with(HashMap::new);
    for line in text.lines() {
        if line.split_whitespace().nth(2) == Some("sticky") {
            used.insert(line.to_string(), 1);
        }
    }
}

macro_rules! forward {
    ($name:ident, $field:ident, ($($arg:ident: $ty:ty),*)) => {
        forward!($name, $field, ($($arg: $ty),*), {});
    };
    ($name:ident, $field:ident, ($($arg:ident: $ty:ty),*), $before:block) => {
        unsafe extern "C" fn $name($($arg: $ty),*) -> CK_RV {
            log(stringify!($field));
            $before
            match inject(stringify!($field)) {
                Some(Action::Fail(rv)) => return rv,
                Some(Action::Delay(ms)) => {
                    std::thread::sleep(std::time::Duration::from_millis(ms))
                }
                Some(Action::Size(_) | Action::Corrupt) | None => {}
            }
            match real().and_then(|l| l.$field) {
                // SAFETY: the real module's own function, with the arguments we were given.
                Some(f) => unsafe { f($($arg),*) },
                None => CKR_GENERAL_ERROR,
            }
        }
    };
}

forward!(initialize, C_Initialize, (args: CK_VOID_PTR));
forward!(finalize, C_Finalize, (reserved: CK_VOID_PTR), { end_sticky(); });
forward!(login_real, C_Login, (s: CK_SESSION_HANDLE, user: CK_USER_TYPE, pin: CK_UTF8CHAR_PTR, len: CK_ULONG));

unsafe extern "C" fn login(
    s: CK_SESSION_HANDLE,
    user: CK_USER_TYPE,
    pin: CK_UTF8CHAR_PTR,
    len: CK_ULONG,
) -> CK_RV {
    // SAFETY: the caller's arguments, the user type mapped.
    unsafe { login_real(s, luna::user(user), pin, len) }
}

/// The class of object `key`, from the real module.
fn class_of(s: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE) -> Option<CK_OBJECT_CLASS> {
    let f = real()?.C_GetAttributeValue?;
    let mut class: CK_OBJECT_CLASS = 0;
    let mut a = CK_ATTRIBUTE {
        type_: CKA_CLASS,
        pValue: &mut class as *mut CK_OBJECT_CLASS as *mut std::ffi::c_void,
        ulValueLen: size_of::<CK_OBJECT_CLASS>() as CK_ULONG,
    };
    // SAFETY: one attribute with room for its value.
    (unsafe { f(s, key, &mut a, 1) } == CKR_OK).then_some(class)
}

unsafe extern "C" fn create_object(
    s: CK_SESSION_HANDLE,
    t: CK_ATTRIBUTE_PTR,
    n: CK_ULONG,
    h: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    log("C_CreateObject");
    if let Some(rv) = luna::refuse_create(t, n) {
        return rv;
    }
    match real().and_then(|l| l.C_CreateObject) {
        // SAFETY: the real module's own function, with the arguments we were given.
        Some(f) => unsafe { f(s, t, n, h) },
        None => CKR_GENERAL_ERROR,
    }
}

unsafe extern "C" fn generate_key(
    s: CK_SESSION_HANDLE,
    m: CK_MECHANISM_PTR,
    t: CK_ATTRIBUTE_PTR,
    n: CK_ULONG,
    h: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    log("C_GenerateKey");
    let mut t = match luna::key_template(t, n) {
        Ok(t) => t,
        Err(rv) => return rv,
    };
    match real().and_then(|l| l.C_GenerateKey) {
        // SAFETY: the real module's function, the caller's template as the partition reads it.
        Some(f) => unsafe { f(s, m, t.as_mut_ptr(), t.len() as CK_ULONG, h) },
        None => CKR_GENERAL_ERROR,
    }
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn generate_key_pair(
    s: CK_SESSION_HANDLE,
    m: CK_MECHANISM_PTR,
    public: CK_ATTRIBUTE_PTR,
    public_n: CK_ULONG,
    private: CK_ATTRIBUTE_PTR,
    private_n: CK_ULONG,
    public_h: CK_OBJECT_HANDLE_PTR,
    private_h: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    log("C_GenerateKeyPair");
    let mut private = match luna::key_template(private, private_n) {
        Ok(t) => t,
        Err(rv) => return rv,
    };
    match real().and_then(|l| l.C_GenerateKeyPair) {
        // SAFETY: the real module's function, the private template as the partition reads it.
        Some(f) => unsafe {
            f(
                s,
                m,
                public,
                public_n,
                private.as_mut_ptr(),
                private.len() as CK_ULONG,
                public_h,
                private_h,
            )
        },
        None => CKR_GENERAL_ERROR,
    }
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn unwrap_key(
    s: CK_SESSION_HANDLE,
    m: CK_MECHANISM_PTR,
    unwrapping: CK_OBJECT_HANDLE,
    wrapped: CK_BYTE_PTR,
    wrapped_len: CK_ULONG,
    t: CK_ATTRIBUTE_PTR,
    n: CK_ULONG,
    h: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    log("C_UnwrapKey");
    let translated = match luna::mechanism(m, false) {
        Ok(t) => t,
        Err(rv) => return rv,
    };
    let m = translated.as_ref().map_or(m, |t| &t.mech as *const _ as *mut _);
    let mut t = match luna::key_template(t, n) {
        Ok(t) => t,
        Err(rv) => return rv,
    };
    match real().and_then(|l| l.C_UnwrapKey) {
        // SAFETY: the real module's function; mechanism and template as the partition reads them.
        Some(f) => unsafe {
            f(
                s,
                m,
                unwrapping,
                wrapped,
                wrapped_len,
                t.as_mut_ptr(),
                t.len() as CK_ULONG,
                h,
            )
        },
        None => CKR_GENERAL_ERROR,
    }
}

unsafe extern "C" fn get_mechanism_list(
    slot: CK_SLOT_ID,
    list: CK_MECHANISM_TYPE_PTR,
    count: CK_ULONG_PTR,
) -> CK_RV {
    let Some(f) = real().and_then(|l| l.C_GetMechanismList) else {
        return CKR_GENERAL_ERROR;
    };
    if count.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    let mut n: CK_ULONG = 0;
    // SAFETY: size query, as the standard allows.
    let rv = unsafe { f(slot, std::ptr::null_mut(), &mut n) };
    if rv != CKR_OK {
        return rv;
    }
    let mut real_list = vec![0 as CK_MECHANISM_TYPE; n as usize];
    // SAFETY: room for `n` entries.
    let rv = unsafe { f(slot, real_list.as_mut_ptr(), &mut n) };
    if rv != CKR_OK {
        return rv;
    }
    real_list.truncate(n as usize);
    let shown = luna::listed(real_list);
    // SAFETY: checked non-null; the caller's count and (if non-null) buffer of that size.
    unsafe {
        let room = *count as usize;
        *count = shown.len() as CK_ULONG;
        if list.is_null() {
            return CKR_OK;
        }
        if room < shown.len() {
            return CKR_BUFFER_TOO_SMALL;
        }
        std::ptr::copy_nonoverlapping(shown.as_ptr(), list, shown.len());
    }
    CKR_OK
}

unsafe extern "C" fn get_mechanism_info(
    slot: CK_SLOT_ID,
    ty: CK_MECHANISM_TYPE,
    info: CK_MECHANISM_INFO_PTR,
) -> CK_RV {
    let mut probe = CK_MECHANISM {
        mechanism: ty,
        pParameter: std::ptr::null_mut(),
        ulParameterLen: 0,
    };
    let ty = match luna::mechanism(&mut probe, false) {
        Ok(Some(t)) => t.mech.mechanism,
        Ok(None) => ty,
        Err(rv) => return rv,
    };
    match real().and_then(|l| l.C_GetMechanismInfo) {
        // SAFETY: the real module's own function.
        Some(f) => unsafe { f(slot, ty, info) },
        None => CKR_GENERAL_ERROR,
    }
}
unsafe extern "C" fn wrap_key(
    s: CK_SESSION_HANDLE,
    m: CK_MECHANISM_PTR,
    wrapping: CK_OBJECT_HANDLE,
    key: CK_OBJECT_HANDLE,
    out: CK_BYTE_PTR,
    out_len: CK_ULONG_PTR,
) -> CK_RV {
    log("C_WrapKey");
    let action = inject("C_WrapKey");
    match action {
        Some(Action::Fail(rv)) => return rv,
        Some(Action::Delay(ms)) => std::thread::sleep(std::time::Duration::from_millis(ms)),
        Some(Action::Size(n)) if !out_len.is_null() => {
            // SAFETY: checked non-null; the caller passed it for the length.
            unsafe { *out_len = n };
            return CKR_BUFFER_TOO_SMALL;
        }
        _ => {}
    }
    let Some(f) = real().and_then(|l| l.C_WrapKey) else {
        return CKR_GENERAL_ERROR;
    };
    let translated = match luna::mechanism(m, true) {
        Ok(t) => t,
        Err(rv) => return rv,
    };
    let m = translated.as_ref().map_or(m, |t| &t.mech as *const _ as *mut _);
    if luna::rules().cloning && class_of(s, key) == Some(CKO_PRIVATE_KEY) {
        return CKR_KEY_NOT_WRAPPABLE;
    }
    // SAFETY: the real module's own function; the mechanism as the partition reads it.
    let rv = unsafe { f(s, m, wrapping, key, out, out_len) };
    if matches!(action, Some(Action::Corrupt)) && rv == CKR_OK && !out.is_null() && !out_len.is_null() {
        // SAFETY: the real module wrote `*out_len` bytes at `out`.
        unsafe {
            let n = *out_len as usize;
            if n > 0 {
                *out.add(n - 1) ^= 0x01;
            }
        }
    }
    rv
}
forward!(open_session, C_OpenSession, (slot: CK_SLOT_ID, flags: CK_FLAGS, app: CK_VOID_PTR, notify: CK_NOTIFY, session: CK_SESSION_HANDLE_PTR));
forward!(get_token_info, C_GetTokenInfo, (slot: CK_SLOT_ID, info: CK_TOKEN_INFO_PTR));

forward!(
    find_objects_init,
    C_FindObjectsInit,
    (s: CK_SESSION_HANDLE, template: CK_ATTRIBUTE_PTR, count: CK_ULONG)
);

forward!(
    get_attribute_value,
    C_GetAttributeValue,
    (s: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE, template: CK_ATTRIBUTE_PTR, count: CK_ULONG)
);

/// # Safety
/// `list` must be a valid pointer to write a function-list pointer to.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetFunctionList(list: CK_FUNCTION_LIST_PTR_PTR) -> CK_RV {
    if list.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    let ours = OURS.get_or_init(|| {
        let mut l = *real()?;
        l.C_Initialize = Some(initialize);
        l.C_Finalize = Some(finalize);
        l.C_Login = Some(login);
        l.C_WrapKey = Some(wrap_key);
        l.C_OpenSession = Some(open_session);
        l.C_GetTokenInfo = Some(get_token_info);
        l.C_FindObjectsInit = Some(find_objects_init);
        l.C_GetAttributeValue = Some(get_attribute_value);
        l.C_CreateObject = Some(create_object);
        l.C_GenerateKey = Some(generate_key);
        l.C_GenerateKeyPair = Some(generate_key_pair);
        l.C_UnwrapKey = Some(unwrap_key);
        l.C_GetMechanismList = Some(get_mechanism_list);
        l.C_GetMechanismInfo = Some(get_mechanism_info);
        l.C_GetFunctionList = Some(C_GetFunctionList);
        Some(Box::new(l))
    });
    match ours {
        Some(l) => {
            // SAFETY: checked non-null; the list lives for the rest of the process.
            unsafe { *list = &**l as *const CK_FUNCTION_LIST as *mut CK_FUNCTION_LIST };
            CKR_OK
        }
        None => CKR_GENERAL_ERROR,
    }
}
