//! Test helpers: a SoftHSM2 token made for this test binary and seeded with keys whose
//! values the test knows, the real `hsm-bridge` binary, and an independent unwrap with the
//! openssl command line.
#![allow(dead_code)]

pub(crate) mod aws_emulator;
pub(crate) mod aws_rig;
pub(crate) mod azure_emulator;
pub(crate) mod daemon;
pub(crate) mod emulator;
pub(crate) mod fault;
pub(crate) mod gcp_emulator;
pub(crate) mod journal;
pub(crate) mod postgres;
pub(crate) mod proc;
pub(crate) mod python;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub(crate) const TOKEN: &str = "hsm-bridge-test";
pub(crate) const PIN: &str = "test-user-pin-8271";
const SO_PIN: &str = "test-so-pin-1";

/// The SoftHSM2 module (Debian's path unless the environment names another).
pub(crate) fn module() -> String {
    std::env::var("HSM_BRIDGE_PKCS11_MODULE")
        .unwrap_or_else(|_| "/usr/lib/softhsm/libsofthsm2.so".into())
}

/// The kryoptic module that `./softhsm-setup.sh --with-kryoptic` builds.
pub(crate) fn kryoptic_module() -> PathBuf {
    std::env::var_os("HSM_BRIDGE_KRYOPTIC_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".kryoptic/libkryoptic_pkcs11.so")
        })
}

/// Which software token a fixture runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenKind {
    SoftHsm,
    Kryoptic,
    /// A kryoptic token behind the project's fault module with its Luna rules
    /// (tests/fault-pkcs11/src/luna.rs): what the daemon sees is a Luna partition in key
    /// export mode (configs can switch it to cloning mode); the test seeds keys through
    /// kryoptic itself.
    Luna,
}

/// The Luna rules of a Luna fixture's configs: a partition in key export mode.
pub(crate) const LUNA_KEY_EXPORT: &str = "luna,partition=key-export";
/// Luna's default partition mode: no private key may be wrapped.
pub(crate) const LUNA_CLONING: &str = "luna";

impl TokenKind {
    /// The environment variable that points the module at its configuration.
    fn conf_var(self) -> &'static str {
        match self {
            TokenKind::SoftHsm => "SOFTHSM2_CONF",
            TokenKind::Kryoptic | TokenKind::Luna => "KRYOPTIC_CONF",
        }
    }
}

/// A wrapping key pair on disk.
pub(crate) struct KeyPair {
    pub private_pem: PathBuf,
    pub public_pem: PathBuf,
}

/// Wrapping keys, made once per test process.
pub(crate) struct WrappingKeys {
    pub wk4096: KeyPair,
    pub wk2048: KeyPair,
    pub wk1024: KeyPair,
    pub ec_public_pem: PathBuf,
}

pub(crate) struct Fixture {
    pub kind: TokenKind,
    pub dir: PathBuf,
    pub module: String,
    /// The module's configuration file (softhsm2.conf / kryoptic.conf).
    pub conf: PathBuf,
    /// The config for this token; policy.exportable = ["test-*"].
    pub config: PathBuf,
    /// Known values of the AES test keys, by label.
    pub aes: HashMap<&'static str, Vec<u8>>,
    pub wk: &'static WrappingKeys,
}

/// Known-value AES keys: label, CKA_ID, length.
pub(crate) const AES_KEYS: [(&str, &str, usize); 3] = [
    ("test-aes-128", "1001", 16),
    ("test-aes-192", "1002", 24),
    ("test-aes-256", "1003", 32),
];
/// RSA keys generated inside the token: label, CKA_ID, bits.
pub(crate) const RSA_KEYS: [(&str, &str, u32); 3] = [
    ("test-rsa-2048", "2001", 2048),
    ("test-rsa-3072", "2002", 3072),
    ("test-rsa-4096", "2003", 4096),
];

pub(crate) fn process_dir(what: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let name = exe.file_stem().unwrap().to_string_lossy().into_owned();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{what}-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub(crate) fn wrapping_keys() -> &'static WrappingKeys {
    static WK: OnceLock<WrappingKeys> = OnceLock::new();
    WK.get_or_init(|| {
        let dir = process_dir("wrapping-keys");
        WrappingKeys {
            wk4096: keypair(
                &dir,
                "wk4096",
                &[
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:4096",
                ],
            ),
            wk2048: keypair(
                &dir,
                "wk2048",
                &[
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                ],
            ),
            wk1024: keypair(
                &dir,
                "wk1024",
                &[
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:1024",
                ],
            ),
            ec_public_pem: keypair(
                &dir,
                "ec",
                &[
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                ],
            )
            .public_pem,
        }
    })
}

/// The SoftHSM2 test token of this test process.
pub(crate) fn softhsm() -> &'static Fixture {
    static FX: OnceLock<Fixture> = OnceLock::new();
    FX.get_or_init(|| make_fixture(TokenKind::SoftHsm, module()))
}

/// The kryoptic test token of this test process. Without the kryoptic module the tests
/// fail, saying how to build it; `HSM_BRIDGE_SKIP_KRYOPTIC=1` turns that into a loud skip
/// (`.ci/run` never sets it).
pub(crate) fn kryoptic() -> Option<&'static Fixture> {
    static FX: OnceLock<Fixture> = OnceLock::new();
    let module = kryoptic_module();
    if !module.is_file() {
        let msg = format!(
            "kryoptic PKCS#11 module missing at {}: run ./softhsm-setup.sh --with-kryoptic",
            module.display()
        );
        if std::env::var("HSM_BRIDGE_SKIP_KRYOPTIC").as_deref() == Ok("1") {
            skip_notice(&format!("on kryoptic: {msg}"));
            return None;
        }
        panic!("{msg} (or set HSM_BRIDGE_SKIP_KRYOPTIC=1 to skip the kryoptic tests)");
    }
    Some(FX.get_or_init(|| make_fixture(TokenKind::Kryoptic, module.display().to_string())))
}

/// Says that tests are skipped, on the terminal: written to the process's stderr directly,
/// so the test harness's output capture does not hide it.
pub(crate) fn skip_notice(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "\n*** SKIPPED {msg} ***\n");
}

/// The Luna-like test token of this test process (a kryoptic token of its own behind the
/// fault module's Luna rules); `None` where the kryoptic tests are skipped.
pub(crate) fn luna() -> Option<&'static Fixture> {
    static FX: OnceLock<Fixture> = OnceLock::new();
    let module = kryoptic()?.module.clone();
    Some(FX.get_or_init(|| make_fixture(TokenKind::Luna, module)))
}

impl Fixture {
    /// The module a config on this token loads: the token's own, or for a Luna fixture the
    /// fault module in front of it.
    pub(crate) fn daemon_module(&self) -> String {
        match self.kind {
            TokenKind::Luna => fault::module().display().to_string(),
            _ => self.module.clone(),
        }
    }
}

/// A fresh token labelled [`TOKEN`] with the test PINs in `dir`; the module's configuration
/// file.
fn init_token(kind: TokenKind, module: &str, dir: &Path) -> PathBuf {
    match kind {
        TokenKind::SoftHsm => {
            std::fs::create_dir_all(dir.join("tokens")).unwrap();
            let conf = dir.join("softhsm2.conf");
            let text = format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                dir.join("tokens").display()
            );
            std::fs::write(&conf, text).unwrap();
            let out = Command::new("softhsm2-util")
                .env("SOFTHSM2_CONF", &conf)
                .args([
                    "--init-token",
                    "--free",
                    "--label",
                    TOKEN,
                    "--so-pin",
                    SO_PIN,
                    "--pin",
                    PIN,
                ])
                .output()
                .expect("softhsm2-util not found: run ./softhsm-setup.sh first");
            assert!(
                out.status.success(),
                "init-token: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            conf
        }
        TokenKind::Kryoptic | TokenKind::Luna => {
            // Each test process has its own sqlite token file: two processes writing one
            // token at once lose operations.
            let conf = dir.join("kryoptic.conf");
            let text = format!(
                "[[slots]]\nslot = 1\ndbtype = \"sqlite\"\ndbargs = \"{}\"\n",
                dir.join("token.sql").display()
            );
            std::fs::write(&conf, text).unwrap();
            let tool = |args: &[&str]| {
                let out = Command::new("pkcs11-tool")
                    .env("KRYOPTIC_CONF", &conf)
                    .args(["--module", module])
                    .args(args)
                    .output()
                    .expect("pkcs11-tool not found: run ./softhsm-setup.sh first");
                assert!(
                    out.status.success(),
                    "pkcs11-tool {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            tool(&[
                "--slot",
                "1",
                "--init-token",
                "--label",
                TOKEN,
                "--so-pin",
                SO_PIN,
            ]);
            tool(&[
                "--token-label",
                TOKEN,
                "--login",
                "--login-type",
                "so",
                "--so-pin",
                SO_PIN,
                "--init-pin",
                "--pin",
                PIN,
            ]);
            conf
        }
    }
}

/// A SoftHSM2 token of its own for one test (`name` tells it apart), with the import
/// journal's record key and no other key: for a test that adds and removes keys, which
/// would upset the tests that count the shared fixture's.
pub(crate) fn bare_softhsm(name: &str) -> Fixture {
    let dir = process_dir(&format!("softhsm-{name}"));
    let module = module();
    let conf = init_token(TokenKind::SoftHsm, &module, &dir);
    write_private(&dir.join("user-pin"), format!("{PIN}\n").as_bytes());
    let fx = Fixture {
        kind: TokenKind::SoftHsm,
        config: dir.join("hsm-bridge.toml"),
        conf,
        module,
        aes: HashMap::new(),
        wk: wrapping_keys(),
        dir,
    };
    make_record_key(&fx, RECORD_KEY);
    write_config(&fx, "hsm-bridge.toml", |c| c);
    fx
}

fn make_fixture(kind: TokenKind, module: String) -> Fixture {
    let dir = process_dir(&format!("{kind:?}").to_lowercase());
    let conf = init_token(kind, &module, &dir);
    write_private(&dir.join("user-pin"), format!("{PIN}\n").as_bytes());

    let mut fx = Fixture {
        kind,
        config: dir.join("hsm-bridge.toml"),
        conf,
        module,
        aes: HashMap::new(),
        wk: wrapping_keys(),
        dir,
    };
    for (label, id, len) in AES_KEYS {
        let value = random(len);
        write_aes(&fx, label, id, &value, true);
        fx.aes.insert(label, value);
    }
    write_aes(&fx, "test-locked-aes-256", "3001", &random(32), false);
    write_aes(&fx, "test-dup", "3002", &random(32), true);
    write_aes(&fx, "test-dup", "3003", &random(32), true);
    write_aes(&fx, "other-aes-256", "3004", &random(32), true);
    for (label, id, bits) in RSA_KEYS {
        generate_pair(&fx, &format!("rsa:{bits}"), label, id);
    }
    generate_pair(&fx, "rsa:1024", "test-rsa-1024", "2004");
    generate_pair(&fx, "EC:prime256v1", "test-ec-p256", "4001");
    make_record_key(&fx, RECORD_KEY);

    write_config(&fx, "hsm-bridge.toml", |c| c);
    fx
}

/// The label of the import journal's record key (the daemon's default).
pub(crate) const RECORD_KEY: &str = "hsm-bridge-journal-mac";

/// A generic secret key for the import journal's record MACs, generated inside the token:
/// sensitive, private, not extractable, as `softhsm-setup.sh` makes it.
pub(crate) fn make_record_key(fx: &Fixture, label: &str) {
    p11_ok(
        fx,
        &[
            "--keygen",
            "--key-type",
            "GENERIC:32",
            "--label",
            label,
            "--id",
            "0f01",
            "--sensitive",
            "--private",
            "--usage-sign",
        ],
    );
}

/// A key pair generated inside the token; the private key extractable and sensitive.
fn generate_pair(fx: &Fixture, key_type: &str, label: &str, id: &str) {
    p11_ok(
        fx,
        &[
            "--keypairgen",
            "--key-type",
            key_type,
            "--label",
            label,
            "--id",
            id,
            "--extractable",
            "--sensitive",
        ],
    );
}

/// Writes a config next to the token, after `edit` has changed the base text. Each config
/// has an import journal and a PIN-refusal marker of its own (named after it), so a test
/// that makes the token refuse the PIN stops only its own configs from logging in.
pub(crate) fn write_config(
    fx: &Fixture,
    name: &str,
    edit: impl FnOnce(String) -> String,
) -> PathBuf {
    let luna = match fx.kind {
        TokenKind::Luna => format!(
            ", FAULT_PKCS11_MODULE = \"{}\", FAULT_PKCS11_LUNA = \"{LUNA_KEY_EXPORT}\"",
            fx.module
        ),
        _ => String::new(),
    };
    let base = format!(
        r#"[hsm]
module = "{}"
module_env = {{ {} = "./{}"{luna} }}
token_label = "{TOKEN}"
pin_file = "./user-pin"
sessions = 2
wrap_mode = "auto"

[journal]
url = "sqlite:./journal-{stem}.sqlite"
pin_marker = "./pin-refused-{stem}"

[policy]
exportable = ["test-*"]
"#,
        fx.daemon_module(),
        fx.kind.conf_var(),
        fx.conf.file_name().unwrap().to_string_lossy(),
        stem = Path::new(name).file_stem().unwrap().to_string_lossy()
    );
    let path = fx.dir.join(name);
    std::fs::write(&path, edit(base)).unwrap();
    path
}

/// The first `n` lines a started process prints on stdout (fewer if it exits or `within`
/// passes), trimmed; the rest of its stdout is drained so it never blocks on the pipe.
pub(crate) fn first_lines(
    child: &mut std::process::Child,
    n: usize,
    within: std::time::Duration,
) -> Vec<String> {
    use std::io::{BufRead, BufReader};
    let mut out = BufReader::new(child.stdout.take().expect("stdout is piped"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut line = String::new();
        while lines.len() < n && out.read_line(&mut line).unwrap_or(0) > 0 {
            lines.push(line.trim().to_string());
            line.clear();
        }
        let _ = tx.send(lines);
        while out.read_line(&mut line).unwrap_or(0) > 0 {
            line.clear();
        }
    });
    rx.recv_timeout(within).unwrap_or_default()
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

pub(crate) fn random(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    openssl::rand::rand_bytes(&mut v).unwrap();
    v
}

pub(crate) fn write_aes(fx: &Fixture, label: &str, id: &str, value: &[u8], extractable: bool) {
    let f = fx.dir.join(format!("{id}.key"));
    write_private(&f, value);
    let key_type = format!("AES:{}", value.len());
    let mut args = vec![
        "--write-object",
        f.to_str().unwrap(),
        "--type",
        "secrkey",
        "--key-type",
        &key_type,
        "--label",
        label,
        "--id",
        id,
        "--sensitive",
        "--usage-decrypt",
    ];
    if extractable {
        args.push("--extractable");
    }
    p11_ok(fx, &args);
    std::fs::remove_file(&f).unwrap();
}

/// pkcs11-tool against the test token, logged in.
pub(crate) fn p11(fx: &Fixture, args: &[&str]) -> Output {
    pkcs11_tool(&fx.module, (fx.kind.conf_var(), &fx.conf), TOKEN, PIN, args)
}

/// pkcs11-tool on `module` (configured by the variable and file `conf`) against the token
/// `token`, logged in.
pub(crate) fn pkcs11_tool(
    module: &str,
    conf: (&str, &Path),
    token: &str,
    pin: &str,
    args: &[&str],
) -> Output {
    let _login = token_login_lock();
    // The PIN through pkcs11-tool's environment, never on its command line.
    Command::new("pkcs11-tool")
        .env(conf.0, conf.1)
        .env("HB_TEST_PIN", pin)
        .args([
            "--module",
            module,
            "--token-label",
            token,
            "--login",
            "--pin",
            "env:HB_TEST_PIN",
        ])
        .args(args)
        .output()
        .expect("pkcs11-tool not found: run ./softhsm-setup.sh first")
}

fn p11_ok(fx: &Fixture, args: &[&str]) {
    let out = p11(fx, args);
    assert!(
        out.status.success(),
        "pkcs11-tool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A key pair made by the openssl command line (`genpkey` arguments), PEM files in `dir`.
pub(crate) fn keypair(dir: &Path, name: &str, genpkey: &[&str]) -> KeyPair {
    let private_pem = dir.join(format!("{name}.key.pem"));
    let public_pem = dir.join(format!("{name}.pub.pem"));
    let mut args: Vec<&str> = genpkey.to_vec();
    args.extend(["-out", private_pem.to_str().unwrap()]);
    openssl_ok(&args);
    openssl_ok(&[
        "pkey",
        "-in",
        private_pem.to_str().unwrap(),
        "-pubout",
        "-out",
        public_pem.to_str().unwrap(),
    ]);
    KeyPair {
        private_pem,
        public_pem,
    }
}

/// Runs the openssl command line; panics with its stderr on failure.
pub(crate) fn openssl_ok(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl command line");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// SoftHSM2 2.6.1 rewrites its token.object at every login, and another process that loads
/// the token at that instant sees a torn file: "no token labelled ...". So every process
/// that logs in to a test token starts under this lock: the CLI and pkcs11-tool for their
/// whole (short) run, the daemon until it listens.
pub(crate) fn token_login_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// The real binary.
pub(crate) fn hsm_bridge(args: &[&str]) -> Output {
    hsm_bridge_with_env(args, &[])
}

/// The real binary, with extra environment variables.
pub(crate) fn hsm_bridge_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let _login = token_login_lock();
    Command::new(env!("CARGO_BIN_EXE_hsm-bridge"))
        .args(args)
        .env_remove("SOFTHSM2_CONF")
        .env_remove("KRYOPTIC_CONF")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// Runs the binary and expects success; returns stdout.
pub(crate) fn hsm_bridge_ok(args: &[&str]) -> String {
    let out = hsm_bridge(args);
    assert!(
        out.status.success(),
        "hsm-bridge {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs the binary and expects a refusal: non-zero exit, exactly one line on stderr, no
/// panic. Returns that line.
pub(crate) fn hsm_bridge_refuses(args: &[&str]) -> String {
    let out = hsm_bridge(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "hsm-bridge {args:?} should have failed"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit code for {args:?}: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "want one line on stderr, got: {stderr}");
    lines[0].to_string()
}

/// Opens OCI key material with the openssl command line (not the code under test):
/// OAEP-SHA256 / MGF1-SHA256 decrypt of the first modulus-length bytes, then
/// `enc -d -id-aes256-wrap-pad` of the rest; or the OAEP decrypt alone for RSA_OAEP_SHA256.
pub(crate) fn openssl_unwrap(
    material: &Path,
    wrapping_private: &Path,
    modulus_len: usize,
    algorithm: &str,
) -> Vec<u8> {
    match algorithm {
        "RSA_OAEP_SHA256" => openssl_open(material, wrapping_private, modulus_len, true, "sha256"),
        "RSA_OAEP_AES_SHA256" => {
            openssl_open(material, wrapping_private, modulus_len, false, "sha256")
        }
        other => panic!("unknown algorithm {other}"),
    }
}

/// Opens `material` with the openssl command line: RSA-OAEP with `md` (and MGF1-`md`, empty
/// label) of the key itself when `direct`, else of a one-time AES-256 key followed by RFC
/// 5649 of the key under it.
pub(crate) fn openssl_open(
    material: &Path,
    wrapping_private: &Path,
    modulus_len: usize,
    direct: bool,
    md: &str,
) -> Vec<u8> {
    let bytes = std::fs::read(material).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let oaep = |input: &Path, output: &Path| {
        openssl_ok(&[
            "pkeyutl",
            "-decrypt",
            "-inkey",
            wrapping_private.to_str().unwrap(),
            "-in",
            input.to_str().unwrap(),
            "-out",
            output.to_str().unwrap(),
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            &format!("rsa_oaep_md:{md}"),
            "-pkeyopt",
            &format!("rsa_mgf1_md:{md}"),
        ]);
    };
    if direct {
        assert_eq!(bytes.len(), modulus_len);
        oaep(material, &p("key"));
        return std::fs::read(p("key")).unwrap();
    }
    assert!(bytes.len() > modulus_len);
    std::fs::write(p("c1"), &bytes[..modulus_len]).unwrap();
    std::fs::write(p("c2"), &bytes[modulus_len..]).unwrap();
    oaep(&p("c1"), &p("k"));
    let k = std::fs::read(p("k")).unwrap();
    assert_eq!(k.len(), 32, "the transport key must be AES-256");
    let hex: String = k.iter().map(|b| format!("{b:02x}")).collect();
    openssl_ok(&[
        "enc",
        "-d",
        "-id-aes256-wrap-pad",
        "-iv",
        "A65959A6",
        "-K",
        &hex,
        "-in",
        p("c2").to_str().unwrap(),
        "-out",
        p("key").to_str().unwrap(),
    ]);
    std::fs::read(p("key")).unwrap()
}

/// Opens wrapped `material` (bytes, not a file) for `wk` with the openssl command line.
pub(crate) fn open_material(
    material: &[u8],
    wk: &KeyPair,
    modulus_len: usize,
    alg: &str,
) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("m.bin");
    std::fs::write(&f, material).unwrap();
    openssl_unwrap(&f, &wk.private_pem, modulus_len, alg)
}

/// Checks that `der` is an exact PKCS#8 RSA private key (re-encoding it gives the same
/// bytes, so no trailing padding) whose key is consistent, and returns its modulus as the
/// openssl command line prints it.
pub(crate) fn pkcs8_modulus(der: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("k.der");
    write_private(&f, der);
    let f = f.to_str().unwrap();
    let reencoded = openssl_ok(&[
        "pkcs8", "-topk8", "-nocrypt", "-inform", "DER", "-in", f, "-outform", "DER",
    ]);
    assert_eq!(reencoded, der, "unwrapped key is not exact PKCS#8 DER");
    openssl_ok(&["pkey", "-inform", "DER", "-in", f, "-check", "-noout"]);
    let m = openssl_ok(&["rsa", "-inform", "DER", "-in", f, "-modulus", "-noout"]);
    String::from_utf8(m).unwrap().trim().to_string()
}

/// The token's modulus for the key pair with `label`, read from its public key object
/// with pkcs11-tool, as the openssl command line prints it.
pub(crate) fn token_modulus(p11: impl Fn(&[&str]) -> Output, label: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("pub.der");
    let out = p11(&[
        "--read-object",
        "--type",
        "pubkey",
        "--label",
        label,
        "--output-file",
        f.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "read pubkey {label}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = openssl_ok(&[
        "rsa",
        "-pubin",
        "-inform",
        "DER",
        "-in",
        f.to_str().unwrap(),
        "-modulus",
        "-noout",
    ]);
    String::from_utf8(m).unwrap().trim().to_string()
}

/// Reads `selftest --json` for a config.
pub(crate) fn selftest_json(config: &Path) -> serde_json::Value {
    let out = hsm_bridge_ok(&["selftest", "--config", config.to_str().unwrap(), "--json"]);
    serde_json::from_str(&out).unwrap()
}

/// An RSA-4096 wrapping key pair in `dir`, as a vault has.
pub(crate) fn rsa4096(dir: &Path) -> KeyPair {
    keypair(
        dir,
        "wk",
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:4096",
        ],
    )
}

/// Hex SHA-256 of a PEM public key's SubjectPublicKeyInfo DER, by the openssl command line.
pub(crate) fn spki_sha256_hex(public_pem: &Path) -> String {
    let der = openssl_ok(&[
        "pkey",
        "-pubin",
        "-in",
        public_pem.to_str().unwrap(),
        "-outform",
        "DER",
    ]);
    openssl::sha::sha256(&der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
