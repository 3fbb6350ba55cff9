//! Process hardening done before any secret is loaded, and memory for secrets.
//!
//! - No core dumps, and no ptrace attach or /proc/PID/mem reads by other processes of the
//!   same user (Linux "non-dumpable").
//! - [`Locked`]: pages of their own for secrets (the PIN, the hybrid-mode key K, a private key
//!   the token padded), locked in RAM (`mlock`) where `RLIMIT_MEMLOCK` allows, left out of
//!   core dumps (`MADV_DONTDUMP`), zeroed and unmapped when dropped.
//! - [`openssl_secure_heap`]: OpenSSL's own locked heap, where it keeps the private numbers of
//!   RSA keys it decodes (the OCI API signing key).
//!
//! Where the kernel refuses to lock, secrets still live in their own zeroized, non-dumped
//! pages, and [`memory_report`] says what was refused.
//!
//! Hybrid mode holds the one-time key K on the host, and on a token that pads PKCS#8 a
//! private key for microseconds; a core file or swap would keep them.

#![allow(unsafe_code)]

use std::cell::RefCell;
use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::mm::{Advice, MapFlags, ProtFlags};
use rustix::process::{DumpableBehavior, Resource, Rlimit, set_dumpable_behavior, setrlimit};
use zeroize::Zeroize;

/// Turns off core dumps for this process. Fails only if the kernel refuses.
/// Ignores SIGHUP, whose default action ends the process, until the daemon's reload
/// handler takes it over: a `systemctl reload` (or any SIGHUP) that comes while the daemon
/// starts (loading its config, logging in, running the self-test) changes nothing.
pub fn ignore_hangup() {
    // SAFETY: SIG_IGN is a valid disposition for SIGHUP; no handler code of ours runs.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
}

pub fn no_core_dumps() -> Result<(), HardeningError> {
    setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )
    .map_err(HardeningError::CoreDumps)?;
    set_dumpable_behavior(DumpableBehavior::NotDumpable).map_err(HardeningError::Dumpable)
}

/// Opens `path` for reading and checks, on the open descriptor (so a file swapped in after a
/// check by path cannot slip through), that it is a regular file, owned by this user or by
/// root (not by another user who could have planted or could rewrite it), that group and
/// others cannot read or write. `what` names the file in the error, e.g. "PIN file".
pub(crate) fn open_private(
    path: &std::path::Path,
    what: &'static str,
) -> Result<std::fs::File, SecretFileError> {
    let bad = |check: FileCheck| SecretFileError {
        what,
        path: path.display().to_string(),
        check,
    };
    let f = std::fs::File::open(path).map_err(|e| bad(FileCheck::Io(e.to_string())))?;
    let meta = f
        .metadata()
        .map_err(|e| bad(FileCheck::Io(e.to_string())))?;
    check_private(&meta).map_err(bad)?;
    Ok(f)
}

/// The checks of [`open_private`] on a file's metadata.
pub(crate) fn check_private(meta: &std::fs::Metadata) -> Result<(), FileCheck> {
    use std::os::unix::fs::MetadataExt;
    if !meta.is_file() {
        return Err(FileCheck::NotRegular);
    }
    check_owner(meta)?;
    let mode = meta.mode() & 0o777;
    if mode & 0o077 == 0 || group_read_of_a_mounted_secret(meta, mode) {
        Ok(())
    } else {
        Err(FileCheck::Readable(mode))
    }
}

/// A Kubernetes Secret volume (`defaultMode: 0440` with the pod's `fsGroup`): owned by
/// root, so this user cannot rewrite it, readable by this process's own group and by
/// nobody else. The one group-readable form accepted.
fn group_read_of_a_mounted_secret(meta: &std::fs::Metadata, mode: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    mode == 0o440 && meta.uid() == 0 && meta.gid() == rustix::process::getegid().as_raw()
}

/// A file must belong to this user or to root: another user could have planted it, or
/// could rewrite it.
pub(crate) fn check_owner(meta: &std::fs::Metadata) -> Result<(), FileCheck> {
    use std::os::unix::fs::MetadataExt;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(FileCheck::Owner {
            uid: meta.uid(),
            me,
        });
    }
    Ok(())
}

/// Why a file that holds a secret (or the audit record) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileCheck {
    #[error("not a regular file")]
    NotRegular,
    #[error("owned by uid {uid}, not by this user (uid {me}) or root; run chown on it")]
    Owner { uid: u32, me: u32 },
    #[error("mode {0:04o} lets group or others read it; run chmod 600 on it")]
    Readable(u32),
    #[error("{0}")]
    Io(String),
}

/// A secret file refused, with what it is and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {path}: {check}")]
pub struct SecretFileError {
    pub what: &'static str,
    pub path: String,
    pub check: FileCheck,
}

/// The process could not be hardened, or memory for a secret could not be had.
#[derive(Debug, thiserror::Error)]
pub enum HardeningError {
    #[error("cannot disable core dumps (setrlimit RLIMIT_CORE): {0}")]
    CoreDumps(rustix::io::Errno),
    #[error("cannot mark the process non-dumpable (prctl PR_SET_DUMPABLE): {0}")]
    Dumpable(rustix::io::Errno),
    #[error("cannot map {0} bytes for a secret: {1}")]
    Map(usize, rustix::io::Errno),
    #[error("OpenSSL could not start its secure heap (CRYPTO_secure_malloc_init)")]
    SecureHeap,
    #[error("mmap returned a null mapping")]
    NullMapping,
}

/// Set once a `mlock` was refused (reported by [`memory_report`], warned about once).
static LOCK_REFUSED: AtomicBool = AtomicBool::new(false);

/// Bytes on pages of their own: locked in RAM where allowed, never in a core dump, zeroed
/// and unmapped on drop. The length is fixed at creation.
pub struct Locked {
    ptr: NonNull<u8>,
    len: usize,
    map_len: usize,
    locked: bool,
}

// SAFETY: `Locked` owns its mapping exclusively, like a `Box<[u8]>`.
unsafe impl Send for Locked {}
// SAFETY: shared access is read-only through `&self`.
unsafe impl Sync for Locked {}

impl Locked {
    /// `len` zero bytes (at least one page is mapped). Fails only if the kernel cannot map
    /// memory; a refused lock is recorded and the memory used unlocked.
    pub fn new(len: usize) -> Result<Locked, HardeningError> {
        let page = rustix::param::page_size();
        let map_len = len.div_ceil(page).max(1) * page;
        // SAFETY: a fresh private anonymous mapping at an address of the kernel's choosing;
        // nothing else refers to it.
        let p = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                map_len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
            )
        }
        .map_err(|e| HardeningError::Map(map_len, e))?;
        let ptr = NonNull::new(p.cast::<u8>()).ok_or(HardeningError::NullMapping)?;
        // SAFETY: `p` is our mapping of `map_len` bytes. Advice and locking change only how
        // the kernel treats these pages; failures leave them as ordinary memory.
        let locked = unsafe {
            let _ = rustix::mm::madvise(p, map_len, Advice::LinuxDontDump);
            rustix::mm::mlock(p, map_len).is_ok()
        };
        if !locked && !LOCK_REFUSED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "the kernel refused to lock secret memory (RLIMIT_MEMLOCK); secrets stay in their own zeroized pages, excluded from core dumps, but may be swapped"
            );
        }
        Ok(Locked {
            ptr,
            len,
            map_len,
            locked,
        })
    }

    /// Whether the pages are locked in RAM.
    #[cfg(test)]
    pub(crate) fn is_locked(&self) -> bool {
        self.locked
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: `len <= map_len` bytes of our mapping, initialised (anonymous maps are
        // zero-filled), borrowed for no longer than `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, with exclusive access through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        let p: *mut c_void = self.ptr.as_ptr().cast();
        // SAFETY: the whole mapping is ours; zeroed (volatile writes, not optimised away)
        // before it is unlocked and unmapped, after which no pointer to it remains.
        unsafe {
            std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.map_len).zeroize();
            if self.locked {
                let _ = rustix::mm::munlock(p, self.map_len);
            }
            let _ = rustix::mm::munmap(p, self.map_len);
        }
    }
}

impl std::fmt::Debug for Locked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Locked({} bytes, redacted)", self.len)
    }
}

/// Size of each thread's scratch for transient secrets.
pub(crate) const SCRATCH_LEN: usize = 8192;

thread_local! {
    static SCRATCH: RefCell<Option<Locked>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's [`SCRATCH_LEN`]-byte [`Locked`] scratch (mapped on first use,
/// kept for the thread's life), zeroed again when `f` returns or unwinds. For secrets that
/// live only during one call: K in hybrid mode, a padded private key being trimmed.
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut [u8]) -> R) -> Result<R, HardeningError> {
    /// Zeroes the scratch however `f` ends.
    struct Wipe<'a>(&'a mut [u8]);
    impl Drop for Wipe<'_> {
        fn drop(&mut self) {
            self.0.zeroize();
        }
    }
    SCRATCH.with(|cell| {
        // A nested call (not done by this crate) gets a scratch of its own.
        let Ok(mut slot) = cell.try_borrow_mut() else {
            let mut own = Locked::new(SCRATCH_LEN)?;
            let wipe = Wipe(own.as_mut_slice());
            return Ok(f(wipe.0));
        };
        if slot.is_none() {
            *slot = Some(Locked::new(SCRATCH_LEN)?);
        }
        let buf = slot.as_mut().expect("set above").as_mut_slice();
        let wipe = Wipe(buf);
        Ok(f(wipe.0))
    })
}

unsafe extern "C" {
    /// OpenSSL: `int CRYPTO_secure_malloc_init(size_t size, size_t minsize)`.
    fn CRYPTO_secure_malloc_init(size: usize, minsize: usize) -> std::ffi::c_int;
    /// OpenSSL: `size_t CRYPTO_secure_used(void)`.
    fn CRYPTO_secure_used() -> usize;
}

/// Size of OpenSSL's secure heap: room for the private numbers of dozens of RSA-4096 keys
/// (about 2 KiB each) and of the self-test's temporary keys. Must be a power of two.
const SECURE_HEAP: usize = 256 * 1024;

/// Whether OpenSSL's secure heap could be locked (set by [`openssl_secure_heap`]).
static SECURE_HEAP_LOCKED: AtomicBool = AtomicBool::new(false);

/// Starts OpenSSL's secure heap (a locked, guarded, non-dumped mapping); from then on the
/// private numbers of every RSA key OpenSSL decodes or generates live there. Call once,
/// before any private key is loaded. Ok(false) if the heap exists but could not be locked.
pub fn openssl_secure_heap() -> Result<bool, HardeningError> {
    openssl::init();
    // SAFETY: a plain OpenSSL call with constant, valid arguments (power-of-two sizes);
    // repeated calls after the first return an error code and change nothing.
    match unsafe { CRYPTO_secure_malloc_init(SECURE_HEAP, 16) } {
        1 => {
            SECURE_HEAP_LOCKED.store(true, Ordering::Relaxed);
            Ok(true)
        }
        2 => Ok(false),
        _ => Err(HardeningError::SecureHeap),
    }
}

/// Bytes of OpenSSL's secure heap in use (0 if it was never started).
pub fn openssl_secure_used() -> usize {
    // SAFETY: reads a counter under OpenSSL's own lock.
    unsafe { CRYPTO_secure_used() }
}

/// One line on how secrets are held, for the start-up log.
pub(crate) fn memory_report() -> String {
    let lim = rustix::process::getrlimit(Resource::Memlock)
        .current
        .map_or_else(|| "unlimited".to_string(), |b| format!("{} KiB", b / 1024));
    format!(
        "secret pages locked: {}; OpenSSL secure heap locked: {}; RLIMIT_MEMLOCK {lim}",
        if LOCK_REFUSED.load(Ordering::Relaxed) {
            "refused"
        } else {
            "yes"
        },
        if SECURE_HEAP_LOCKED.load(Ordering::Relaxed) {
            "yes"
        } else {
            "no"
        },
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secret_files_are_checked_on_the_open_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        std::fs::write(&f, "x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(open_private(&f, "PIN file").is_ok());
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = open_private(&f, "PIN file").unwrap_err().to_string();
        assert!(e.contains("0640") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        // A Kubernetes Secret volume: root's, 0440, the process's own group; no other group.
        if rustix::process::geteuid().is_root() {
            let me = rustix::process::getegid().as_raw();
            std::os::unix::fs::chown(&f, Some(0), Some(me)).unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o440)).unwrap();
            assert!(open_private(&f, "PIN file").is_ok());
            std::os::unix::fs::chown(&f, None, Some(me + 12345)).unwrap();
            assert!(open_private(&f, "PIN file").is_err());
            std::os::unix::fs::chown(&f, None, Some(me)).unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        // A file another (unprivileged) user owns could have been planted or rewritten by it.
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(&f, Some(65534), None).unwrap();
            let e = open_private(&f, "PIN file").unwrap_err().to_string();
            assert!(e.contains("owned by uid 65534"), "{e}");
        }
        let e = open_private(dir.path(), "PIN file")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }

    use super::*;

    #[test]
    fn core_dumps_can_be_disabled() {
        // Runs in the test process itself; harmless there.
        no_core_dumps().unwrap();
        let lim = rustix::process::getrlimit(Resource::Core);
        assert_eq!(lim.current, Some(0));
    }

    /// The mapping's line in /proc/self/smaps and its `VmFlags`.
    fn vm_flags(addr: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ')
                && let Some((a, b)) = range.split_once('-')
                && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            {
                inside = (a..b).contains(&addr);
            } else if inside && let Some(flags) = line.strip_prefix("VmFlags:") {
                return flags.trim().to_string();
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    #[test]
    fn locked_pages_are_locked_undumped_and_zeroed() {
        let mut l = Locked::new(100).unwrap();
        assert_eq!(l.as_slice(), &[0u8; 100][..]);
        l.as_mut_slice().copy_from_slice(&[7u8; 100]);
        let addr = l.as_slice().as_ptr() as usize;
        let flags = vm_flags(addr);
        assert!(
            flags.split(' ').any(|f| f == "dd"),
            "not MADV_DONTDUMP: {flags}"
        );
        if l.is_locked() {
            assert!(flags.split(' ').any(|f| f == "lo"), "not locked: {flags}");
        }
        assert!(format!("{l:?}").contains("redacted"));
    }

    #[test]
    fn scratch_is_wiped_after_each_use() {
        let addr = with_scratch(|b| {
            assert_eq!(b.len(), SCRATCH_LEN);
            assert!(b.iter().all(|&x| x == 0), "starts zeroed");
            b[..32].fill(0xAA);
            b.as_ptr() as usize
        })
        .unwrap();
        let again = with_scratch(|b| {
            assert!(b.iter().all(|&x| x == 0), "wiped after the last use");
            b.as_ptr() as usize
        })
        .unwrap();
        assert_eq!(addr, again, "one scratch per thread");
        let r = std::panic::catch_unwind(|| {
            with_scratch(|b| {
                b[0] = 1;
                panic!("unwinds");
            })
        });
        assert!(r.is_err());
        with_scratch(|b| assert_eq!(b[0], 0, "wiped on unwind")).unwrap();
    }
}
