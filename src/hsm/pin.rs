//! Loading the token PIN: from a file that only its owner can read, or from a named
//! environment variable. Never from the command line, never logged.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use super::HsmError;

/// Longest PIN accepted; Luna passwords are at most 255 bytes.
const MAX_PIN: usize = 256;

/// Reads the PIN from `path`. Refused if group or other may read or write the file.
pub fn from_file(path: &Path) -> Result<AuthPin, HsmError> {
    let bad = |msg: String| HsmError::Pin(format!("PIN file {}: {msg}", path.display()));
    let mut f = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let meta = f.metadata().map_err(|e| bad(e.to_string()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(bad(format!(
            "mode {mode:04o} lets group or others read it; run chmod 600 on it"
        )));
    }
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    let mut buf = Zeroizing::new(Vec::with_capacity(MAX_PIN + 2));
    (&mut f)
        .take(MAX_PIN as u64 + 2)
        .read_to_end(&mut buf)
        .map_err(|e| bad(e.to_string()))?;
    from_bytes(&buf).map_err(bad)
}

/// Reads the PIN from the environment variable `name`.
pub fn from_env(name: &str) -> Result<AuthPin, HsmError> {
    let value = Zeroizing::new(std::env::var(name).map_err(|_| {
        HsmError::Pin(format!(
            "environment variable {name} (hsm.pin_env) is not set"
        ))
    })?);
    from_bytes(value.as_bytes()).map_err(|m| HsmError::Pin(format!("{name}: {m}")))
}

fn from_bytes(raw: &[u8]) -> Result<AuthPin, String> {
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
    let text = std::str::from_utf8(pin).map_err(|_| "the PIN is not UTF-8".to_string())?;
    Ok(AuthPin::from(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::io::Write;

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
        assert_eq!(from_file(&p).unwrap().expose_secret(), "1234");
        std::fs::write(&p, b"\n").unwrap();
        assert!(from_file(&p).unwrap_err().to_string().contains("empty"));
        assert!(from_file(&dir.path().join("nope")).is_err());
        let e = from_env("HB_TEST_PIN_SURELY_UNSET")
            .unwrap_err()
            .to_string();
        assert!(e.contains("HB_TEST_PIN_SURELY_UNSET"), "{e}");
    }
}
