//! The fault-injecting PKCS#11 module (`tests/fault-pkcs11`): built once per test process;
//! a config rewritten to load it in front of a fixture's real module; its call log read.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::Fixture;

/// Builds the fault module once per test process; its path.
pub(crate) fn module() -> &'static PathBuf {
    static M: OnceLock<PathBuf> = OnceLock::new();
    M.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let target = root.join("target/fault-pkcs11");
        let out = Command::new(env!("CARGO"))
            .args(["build", "--release", "--locked", "--manifest-path"])
            .arg(root.join("tests/fault-pkcs11/Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "building the fault module: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        target.join("release/libfault_pkcs11.so")
    })
}

/// Config text made by `write_config` for `fx`, rewritten to load the fault module in front
/// of `fx`'s module, logging calls to `log` and reading instructions from `control`.
pub(crate) fn route(fx: &Fixture, config_text: &str, log: &Path, control: &Path) -> String {
    config_text
        .replace(
            &format!("module = \"{}\"", fx.module),
            &format!("module = \"{}\"", module().display()),
        )
        .replace(
            "module_env = { ",
            &format!(
                "module_env = {{ FAULT_PKCS11_MODULE = \"{}\", FAULT_PKCS11_LOG = \"{}\", FAULT_PKCS11_CONTROL = \"{}\", ",
                fx.module,
                log.display(),
                control.display()
            ),
        )
}

/// How many times the fault module logged `function`.
pub(crate) fn calls(log: &Path, function: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| *l == function)
        .count()
}

/// Rewrites the config at `config` (made by `write_config` for `fx`) to load the fault
/// module in front of `fx`'s module, with a fresh call log and an empty control file named
/// after `name`; returns the log's path.
pub(crate) fn route_config(fx: &Fixture, config: &Path, name: &str) -> PathBuf {
    route_config_with_control(fx, config, name).0
}

/// As [`route_config`], returning the log's and the control file's paths. A Luna-like
/// fixture's config already loads the fault module: only the log and the control file are
/// added.
pub(crate) fn route_config_with_control(
    fx: &Fixture,
    config: &Path,
    name: &str,
) -> (PathBuf, PathBuf) {
    let (log, ctl) = (
        fx.dir.join(format!("{name}.calls")),
        fx.dir.join(format!("{name}.control")),
    );
    let _ = std::fs::remove_file(&log);
    std::fs::write(&ctl, "").unwrap();
    let text = std::fs::read_to_string(config).unwrap();
    let text = match fx.kind {
        super::TokenKind::Luna => text.replace(
            "module_env = { ",
            &format!(
                "module_env = {{ FAULT_PKCS11_LOG = \"{}\", FAULT_PKCS11_CONTROL = \"{}\", ",
                log.display(),
                ctl.display()
            ),
        ),
        _ => route(fx, &text, &log, &ctl),
    };
    std::fs::write(config, text).unwrap();
    (log, ctl)
}

/// The calls the hostile-input tests count, in this order: key lookups, wraps, new
/// sessions, and the health probe's token checks.
pub(crate) const COUNTED: [&str; 4] = [
    "C_FindObjectsInit",
    "C_WrapKey",
    "C_OpenSession",
    "C_GetTokenInfo",
];
