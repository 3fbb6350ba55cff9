//! HSM faults, through a PKCS#11 module of our own (`tests/fault-pkcs11`) that forwards every
//! call to SoftHSM2, counts chosen calls, and answers chosen `CKR_` codes on instruction.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::*;

/// Builds the fault module once per test process; its path.
fn fault_module() -> &'static PathBuf {
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

/// A config on `fx`'s token through the fault module, with `pin_file`; returns it with the
/// module's call log and control file.
fn fault_config(fx: &Fixture, name: &str, pin_file: &str) -> (PathBuf, PathBuf, PathBuf) {
    let log = fx.dir.join(format!("{name}.calls"));
    let ctl = fx.dir.join(format!("{name}.control"));
    let _ = std::fs::remove_file(&log);
    std::fs::write(&ctl, "").unwrap();
    let config = write_config(fx, &format!("{name}.toml"), |t| {
        t.replace(
            &format!("module = \"{}\"", fx.module),
            &format!("module = \"{}\"", fault_module().display()),
        )
        .replace(
            "module_env = { ",
            &format!(
                "module_env = {{ FAULT_PKCS11_MODULE = \"{}\", FAULT_PKCS11_LOG = \"{}\", FAULT_PKCS11_CONTROL = \"{}\", ",
                fx.module,
                log.display(),
                ctl.display()
            ),
        )
        .replace("./user-pin", pin_file)
            + "\n[server]\nlisten = \"127.0.0.1:0\"\nplaintext = true\n"
    });
    (config, log, ctl)
}

fn calls(log: &Path, function: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| *l == function)
        .count()
}

#[test]
fn the_fault_module_is_transparent() {
    let fx = softhsm();
    let (config, log, _) = fault_config(fx, "transparent", "./user-pin");
    let v = selftest_json(&config);
    assert_eq!(v["chosen_mode"], "hybrid", "{v}");
    assert_eq!(calls(&log, "C_Login"), 1);
    assert!(calls(&log, "C_WrapKey") > 0);
}

#[test]
fn a_wrong_pin_stops_the_daemon_after_one_login_attempt() {
    let fx = softhsm();
    let wrong = fx.dir.join("fault-wrong-pin");
    write_private(&wrong, b"not-the-pin\n");
    let (config, log, _) = fault_config(fx, "wrong-pin", "./fault-wrong-pin");
    let out = hsm_bridge(&["serve", "--config", config.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "serve must not start: {err}");
    assert!(
        err.contains("wrong PIN") && err.contains("CKR_PIN_INCORRECT"),
        "{err}"
    );
    assert!(
        !err.contains("not-the-pin"),
        "the PIN must never be printed"
    );
    assert_eq!(
        calls(&log, "C_Login"),
        1,
        "exactly one C_Login: a Luna partition locks after a few"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).is_empty(),
        "never listened"
    );
}

#[test]
fn an_injected_pin_incorrect_is_not_retried() {
    let fx = softhsm();
    let (config, log, ctl) = fault_config(fx, "inject-pin", "./user-pin");
    // CKR_PIN_INCORRECT = 0xA0, for the next 5 logins: one must be all it takes.
    std::fs::write(&ctl, "C_Login 0xa0 5\n").unwrap();
    let out = hsm_bridge(&["serve", "--config", config.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("CKR_PIN_INCORRECT"), "{err}");
    assert_eq!(calls(&log, "C_Login"), 1);
}
