//! Throw-away Python virtualenvs with pinned packages from PyPI, for tests that drive the
//! emulators with the clouds' own SDKs.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A virtualenv `name` under the target folder with `packages` (`pkg==version`) installed;
/// made again only when `python -c check` fails in it. Its `bin/python`.
pub(crate) fn venv(name: &str, check: &str, packages: &[&str]) -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let python = venv.join("bin/python");
    let ready = Command::new(&python)
        .args(["-c", check])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ready {
        let _ = std::fs::remove_dir_all(&venv);
        let run = |cmd: &mut Command| {
            let o = cmd.output().unwrap();
            assert!(
                o.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        };
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
        run(Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(packages));
    }
    python
}
