//! Loading the token PIN: from a file that only its owner can read, or from a named
//! environment variable. Never from the command line, never logged. Held in a page of its
//! own, locked in RAM where the OS allows (see [`crate::hardening::Locked`]).

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use zeroize::Zeroizing;

use super::HsmError;
use crate::hardening::Locked;

/// The user PIN, in locked memory; zeroed when dropped. Its `Debug` shows no digits.
#[derive(Debug)]
pub(crate) struct Pin(Locked);

impl Pin {
    /// The PIN's bytes, for `C_Login` only.
    pub(crate) fn bytes(&self) -> &[u8] {
        self.0.as_slice()
    }
}

/// Longest PIN accepted; Luna passwords are at most 255 bytes.
const MAX_PIN: usize = 256;

/// Reads the PIN from `path`. Refused if group or other may read or write the file.
pub(crate) fn from_file(path: &Path) -> Result<Pin, HsmError> {
    let bad = |msg: String| HsmError::Pin(format!("PIN file {}: {msg}", path.display()));
    let mut f = crate::hardening::open_private(path, "PIN file")
        .map_err(|e| HsmError::Pin(e.to_string()))?;
    let mut buf = Zeroizing::new(Vec::with_capacity(MAX_PIN + 2));
    (&mut f)
        .take(MAX_PIN as u64 + 2)
        .read_to_end(&mut buf)
        .map_err(|e| bad(e.to_string()))?;
    from_bytes(&buf).map_err(bad)
}

/// Reads the PIN from the environment variable `name`.
pub(crate) fn from_env(name: &str) -> Result<Pin, HsmError> {
    let value = Zeroizing::new(std::env::var(name).map_err(|_| {
        HsmError::Pin(format!(
            "environment variable {name} (hsm.pin_env) is not set"
        ))
    })?);
    from_bytes(value.as_bytes()).map_err(|m| HsmError::Pin(format!("{name}: {m}")))
}

fn from_bytes(raw: &[u8]) -> Result<Pin, String> {
    let mut end = raw.len();
    while end > 0 && matches!(raw[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    let pin = &raw[..end];
    if pin.is_empty() {
        return Err("the PIN is empty".into());
    }
    if pin.len() > MAX_PIN {
        return Err(format!("the PIN is longer than {MAX_PIN} bytes"));
    }
    std::str::from_utf8(pin).map_err(|_| "the PIN is not UTF-8".to_string())?;
    let mut locked = Locked::new(pin.len()).map_err(|e| e.to_string())?;
    locked.as_mut_slice().copy_from_slice(pin);
    Ok(Pin(locked))
}

/// Where a refused PIN is remembered beyond this machine: the import journal, which every
/// replica shares (src/journal/mod.rs, its table of refused PINs), so that a new pod, with a
/// marker file of its own, does not present a PIN another replica had refused.
pub trait SharedRefusal: Send + Sync {
    /// What was recorded for `token`, if anything.
    fn get(&self, token: &str) -> Result<Option<String>, String>;
    /// Records `said` (when and why, never the PIN) for `token`.
    fn set(&self, token: &str, said: &str) -> Result<(), String>;
    /// Where it is, for messages.
    fn describe(&self) -> String;
}

/// A PIN the token refused: remembered in this process, and, through a marker file
/// (`journal.pin_marker`) and the import journal that replicas share, across restarts and
/// replicas, so that a supervisor restarting the daemon in a loop, or a new pod, cannot
/// lock a Luna partition. Both hold when and why, never the PIN; an operator removes them
/// (`hsm-bridge pin-reset`) once the PIN is fixed. A journal that cannot be read (within
/// its 5 s timeout) leaves the marker file to decide, and the log says so: the daemon
/// starts when the journal is down.
pub(crate) struct Refusal {
    seen: OnceLock<String>,
    marker: Option<PathBuf>,
    shared: Option<std::sync::Arc<dyn SharedRefusal>>,
}

impl Refusal {
    pub(crate) fn new(
        marker: Option<PathBuf>,
        shared: Option<std::sync::Arc<dyn SharedRefusal>>,
    ) -> Refusal {
        Refusal {
            seen: OnceLock::new(),
            marker,
            shared,
        }
    }

    /// Why no `C_Login` may be tried on `token`, if none may.
    pub(crate) fn get(&self, token: &str) -> Option<String> {
        if let Some(why) = self.seen.get() {
            return Some(format!(
                "{why}, earlier; not trying the PIN again (fix it and restart)"
            ));
        }
        if let Some(why) = self.marker_says() {
            return Some(why);
        }
        let shared = self.shared.as_ref()?;
        match shared.get(token) {
            Ok(Some(said)) => Some(format!(
                "the token refused the PIN before ({said}; recorded in {}, which every replica reads); not trying it again: fix the PIN, then run `hsm-bridge pin-reset --config FILE`",
                shared.describe()
            )),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(
                    "the record of refused PINs in {} cannot be read ({e}); going by the marker file alone",
                    shared.describe()
                );
                None
            }
        }
    }

    /// What the marker file says, if there is one.
    fn marker_says(&self) -> Option<String> {
        let marker = self.marker.as_ref()?;
        let said = match std::fs::File::open(marker) {
            Ok(f) => {
                let mut text = String::new();
                let _ = f.take(1024).read_to_string(&mut text);
                text.lines().next().unwrap_or("").to_string()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => format!("the marker cannot be read: {e}"),
        };
        Some(format!(
            "the token refused the PIN before ({said}); not trying it again: fix the PIN, then run `hsm-bridge pin-reset --config FILE` (or delete {})",
            marker.display()
        ))
    }

    /// Remembers that the token refused the PIN, and leaves the marker and the journal's
    /// record; returns what to add to the refusal's message about them.
    pub(crate) fn set(&self, token: &str, why: &str) -> String {
        let _ = self.seen.set(why.to_string());
        let line = format!(
            "{} token {token:?}: {why}\n",
            crate::time::rfc3339(std::time::SystemTime::now())
        );
        let shared = match &self.shared {
            Some(s) => match s.set(token, line.trim_end()) {
                Ok(()) => format!("; recorded in {} for every replica", s.describe()),
                Err(e) => format!(
                    "; the record in {} could not be written ({e}): another replica may try the PIN once more",
                    s.describe()
                ),
            },
            None => String::new(),
        };
        let Some(marker) = &self.marker else {
            return shared;
        };
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(marker)
            .and_then(|mut f| f.write_all(line.as_bytes()).and_then(|()| f.sync_all()));
        let local = match written {
            Ok(()) => format!(
                "; nothing logs in again until the PIN is fixed and `hsm-bridge pin-reset` removes {}",
                marker.display()
            ),
            Err(e) => format!(
                "; the marker {} could not be written ({e}): a restart will try the PIN again",
                marker.display()
            ),
        };
        format!("{local}{shared}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn pin_file_mode_and_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pin");
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(b"1234\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = from_file(&p).unwrap_err().to_string();
        assert!(e.contains("0644") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let pin = from_file(&p).unwrap();
        assert_eq!(pin.bytes(), b"1234");
        assert!(!format!("{pin:?}").contains("1234"));
        std::fs::write(&p, b"\n").unwrap();
        assert!(from_file(&p).unwrap_err().to_string().contains("empty"));
        assert!(from_file(&dir.path().join("nope")).is_err());
        let e = from_env("HB_TEST_PIN_SURELY_UNSET")
            .unwrap_err()
            .to_string();
        assert!(e.contains("HB_TEST_PIN_SURELY_UNSET"), "{e}");
    }
}
