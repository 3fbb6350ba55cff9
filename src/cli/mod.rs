//! The `hsm-bridge` subcommands (README.md, "Command line"). Output for scripts with `--json`;
//! errors are one line on stderr and a non-zero exit.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::Error;
use crate::audit::Operation;
use crate::code::Code;
use crate::config::Config;
use crate::export::{Caller, Export, Exporter, HsmPath};
use crate::hsm::{Hsm, KeyInfo, KeyRef};
use crate::wrap::{self, Algorithm, Format, WrappingKey};

mod audit;
mod health;
mod import;
mod import_key_version;
mod journal;
mod migrate;
mod reconcile;

use audit::CliAudit;
use import_key_version::import_key_version_cmd;

#[derive(Debug, Parser)]
#[command(
    name = "hsm-bridge",
    version,
    about = "Moves keys from a PKCS#11 HSM into OCI Vault, wrapped for the vault"
)]
pub struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the gRPC daemon (KeySourceBridge, health, reflection) until SIGTERM or SIGINT.
    Serve {
        /// Config file (TOML).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Log as JSON lines instead of text.
        #[arg(long)]
        log_json: bool,
        /// Listen here instead of server.listen ("IP:port" or "unix:/path").
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// List the secret and private keys on the token, and whether each may be exported.
    Keys {
        #[command(flatten)]
        common: Common,
    },
    /// Wrap one key for an RSA wrapping public key, in a cloud's import format.
    Wrap(WrapArgs),
    /// Add a version to an OCI key from a token key: fetch the vault's wrapping key, wrap in
    /// the HSM, ImportKeyVersion (with retries), optionally wait until ENABLED.
    ImportKeyVersion(ImportKeyVersionArgs),
    /// Import a token key into a [destinations.NAME] of the config (AWS KMS): a new version
    /// of the target key, or a new key; exactly once per idempotency key.
    Import(ImportArgs),
    /// Generate new key material in the HSM (labelled BASE-N) and import it as the target
    /// key's new version: one journaled unit, exactly once per idempotency key.
    Rotate(RotateArgs),
    /// Import many keys as a plan (TOML) says, N at a time, with progress, a report, and
    /// resume: a second run answers what the first finished from the journal and finishes
    /// the rest under the same idempotency keys.
    Migrate(MigrateArgs),
    /// The journal's imports into a destination next to what the destination and the token
    /// hold now, and the drift between them; exit non-zero when something is out of place.
    Reconcile(ReconcileArgs),
    /// Run the known-answer self-test and report which wrap mode the token supports.
    Selftest {
        #[command(flatten)]
        common: Common,
    },
    /// Read the import journal: what was sent, when, by whom, and what OCI answered (never
    /// the bytes sent).
    Journal {
        #[command(subcommand)]
        command: JournalCommand,
    },
    /// Ask a running daemon's health service how it is: prints SERVING, NOT_SERVING, ...;
    /// exits 0 only when SERVING.
    Health(health::HealthArgs),
    /// Remove the marker a refused PIN left, once the PIN is fixed: the next start logs in.
    PinReset {
        /// Config file (TOML).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum JournalCommand {
    /// The newest records, newest first.
    List {
        #[command(flatten)]
        common: Common,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// One record, by its retry token (as `journal list` prints it).
    Show {
        #[command(flatten)]
        common: Common,
        token: String,
    },
}

#[derive(Debug, Args)]
pub(crate) struct Common {
    /// Config file (TOML).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct WrapArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub key: KeyArg,
    /// PEM public key (SubjectPublicKeyInfo or PKCS#1) to wrap for.
    #[arg(long, value_name = "PEM_FILE")]
    pub wrapping_key: PathBuf,
    /// The cloud's format, CLOUD:NAME: oci:RSA_OAEP_AES_SHA256, oci:RSA_OAEP_SHA256,
    /// aws:RSA_AES_KEY_WRAP_SHA_256, aws:RSA_AES_KEY_WRAP_SHA_1, aws:RSAES_OAEP_SHA_256,
    /// aws:RSAES_OAEP_SHA_1, gcp:RSA_OAEP_{3072,4096}_SHA256_AES_256,
    /// gcp:RSA_OAEP_{3072,4096}_SHA1_AES_256, gcp:RSA_OAEP_{3072,4096}_SHA256, azure:byok.
    /// Default: oci:ALGORITHM.
    #[arg(long, value_name = "NAME")]
    pub format: Option<String>,
    /// OCI's name for the format: RSA_OAEP_AES_SHA256 (any key; the default) or
    /// RSA_OAEP_SHA256 (AES keys, where the HSM does OAEP-SHA256). Means oci:ALGORITHM.
    #[arg(long)]
    pub algorithm: Option<String>,
    /// For azure:byok: the key-exchange key's versioned id, which the .byok file names
    /// (https://VAULT.vault.azure.net/keys/NAME/VERSION).
    #[arg(long, value_name = "ID")]
    pub azure_kek_id: Option<String>,
    /// Where to write the bytes the cloud's import takes, before its own base64 (for
    /// azure:byok, the .byok file).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Wrap for this key even where policy.caller_wrapping_keys would refuse it: the
    /// operator vouches for the wrapping key (audited as such).
    #[arg(long)]
    pub allow_any_wrapping_key: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ImportKeyVersionArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub key: KeyArg,
    /// OCID of the OCI key that gets the new version.
    #[arg(long, value_name = "OCID")]
    pub oci_key_id: String,
    /// The vault's management endpoint (must match oci.allowed_endpoints).
    #[arg(long, value_name = "URL")]
    pub endpoint: String,
    /// Connection name from [oci.connections].
    #[arg(long, default_value = "default")]
    pub connection: String,
    /// RSA_OAEP_AES_SHA256 (any key) or RSA_OAEP_SHA256 (AES keys).
    #[arg(long, default_value = "RSA_OAEP_AES_SHA256")]
    pub algorithm: String,
    /// Derives OCI's opc-retry-token: running again with the same value imports once
    /// (within one process lifetime the same bytes are re-sent; across runs OCI's
    /// retry-token rules apply).
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// Wait until the new version is ENABLED.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub key: KeyArg,
    /// A [destinations.NAME] of the config.
    #[arg(long, value_name = "NAME")]
    pub to: String,
    /// The cloud's key that gets the new material (AWS: key ARN or id; Azure: the key's
    /// name, and with --new-key the new key's; Google Cloud KMS: the key's id or resource
    /// name in the destination's key ring, and with --new-key the new key's).
    #[arg(long, value_name = "ID", required_unless_present = "new_key")]
    pub target: Option<String>,
    /// Create a new key of the source key's shape instead.
    #[arg(long)]
    pub new_key: bool,
    /// With --new-key, AWS KeyUsage: ENCRYPT_DECRYPT (AES's) or SIGN_VERIFY (RSA's default);
    /// Google Cloud KMS, the purpose: ENCRYPT_DECRYPT (AES-256's), RAW_ENCRYPT_DECRYPT
    /// (AES-128's), ASYMMETRIC_SIGN (RSA's default) or ASYMMETRIC_DECRYPT.
    #[arg(long, value_name = "USAGE", requires = "new_key")]
    pub key_usage: Option<String>,
    /// The format, CLOUD:NAME; default the cloud's for the key's shape (AWS:
    /// aws:RSAES_OAEP_SHA_256 for AES, aws:RSA_AES_KEY_WRAP_SHA_256 for RSA; Google Cloud
    /// KMS: gcp: and the destination's import_method).
    #[arg(long, value_name = "NAME")]
    pub format: Option<String>,
    /// The material expires at 00:00 UTC of this date, YYYY-MM-DD (AWS: at most 365 days
    /// ahead); default never. A date, not a duration: running again means the same request.
    #[arg(long, value_name = "DATE")]
    pub valid_to: Option<String>,
    /// Running again with the same value imports once, whatever answer was lost.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// Wait until the key is usable with the new material (Google Cloud KMS: the version
    /// ENABLED).
    #[arg(long)]
    pub wait: bool,
    /// Azure: the key operations of what is imported, comma-separated (default the key
    /// type's: RSA encrypt, decrypt, sign, verify, wrapKey, unwrapKey; AES the same but
    /// sign and verify).
    #[arg(long, value_name = "OPS", value_delimiter = ',')]
    pub key_ops: Vec<String>,
    /// Azure: make the destination's key-exchange key (kek_name) if the vault has none;
    /// the destination must allow it (kek_create = true).
    #[arg(long)]
    pub create_kek: bool,
}

#[derive(Debug, Args)]
pub(crate) struct RotateArgs {
    #[command(flatten)]
    pub common: Common,
    /// A [destinations.NAME] of the config.
    #[arg(long, value_name = "NAME")]
    pub to: String,
    /// The cloud's key that gets the new version (AWS: key ARN or id of a symmetric key).
    #[arg(long, value_name = "ID")]
    pub target: String,
    /// The new HSM key is labelled BASE-N (N one more than the highest on the token).
    #[arg(long, value_name = "LABEL")]
    pub base: String,
    /// The format, CLOUD:NAME; default the cloud's for an AES-256 key.
    #[arg(long, value_name = "NAME")]
    pub format: Option<String>,
    /// Names the rotation: running again with the same value finishes it, whatever was
    /// lost, and never makes a second key. Default: a fresh one, printed on stderr first.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// Wait until the key is usable with the new material (Google Cloud KMS: the version
    /// ENABLED).
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ReconcileArgs {
    #[command(flatten)]
    pub common: Common,
    /// A [destinations.NAME] of the config.
    #[arg(long, value_name = "NAME")]
    pub to: String,
}

#[derive(Debug, Args)]
pub(crate) struct MigrateArgs {
    /// Config file: the imports run in this process, the operator as the caller.
    #[arg(long, value_name = "FILE", required_unless_present = "addr")]
    pub config: Option<PathBuf>,
    /// Instead, through the running daemon at HOST:PORT (gRPC Import, as the caller its
    /// certificate names).
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "config")]
    pub addr: Option<String>,
    #[command(flatten)]
    pub tls: health::Tls,
    /// Print the JSON report on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// The plan (TOML): name = "...", then [[items]] of source (a label or label glob) or
    /// source_id (hex), to (a [destinations.NAME]), target (a key) or new_key = true, and
    /// optionally id, key_usage, format.
    #[arg(long, value_name = "FILE")]
    pub plan: PathBuf,
    /// Check every import as far as it goes without calling the cloud or wrapping.
    #[arg(long)]
    pub dry_run: bool,
    /// Imports in flight at once.
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
    /// Where the JSON report goes (default: the plan's path with .report.json added).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub(crate) struct KeyArg {
    /// CKA_LABEL of the key, exact.
    #[arg(long)]
    pub label: Option<String>,
    /// CKA_ID of the key, hex.
    #[arg(long, value_name = "HEX")]
    pub id: Option<String>,
    /// The key as a PKCS#11 URI (RFC 7512), e.g. "pkcs11:object=demo-aes-256;type=secret-key".
    #[arg(long, value_name = "URI", conflicts_with_all = ["label", "id"])]
    pub key: Option<String>,
}

impl Cli {
    /// Whether logs should be JSON lines.
    pub fn log_json(&self) -> bool {
        matches!(self.command, Command::Serve { log_json: true, .. })
    }

    /// Whether this runs the daemon.
    pub fn is_serve(&self) -> bool {
        matches!(self.command, Command::Serve { .. })
    }

    /// The default log level: info for the daemon, warnings only for one-shot commands.
    pub fn default_log_level(&self) -> &'static str {
        match self.command {
            Command::Serve { .. } => "info",
            _ => "warn",
        }
    }
}

impl KeyArg {
    fn key_ref(&self) -> Result<KeyRef, Error> {
        match (&self.label, &self.id, &self.key) {
            (Some(l), _, _) => {
                KeyRef::label(l).map_err(|why| Error::Usage(format!("--label: {why}")))
            }
            (None, Some(h), _) => {
                KeyRef::id_hex(h).map_err(|why| Error::Usage(format!("--id: {why}")))
            }
            (None, None, Some(u)) => {
                KeyRef::uri(u).map_err(|why| Error::Usage(format!("--key: {why}")))
            }
            (None, None, None) => Err(Error::Usage("give --label, --id or --key".into())),
        }
    }
}

fn open(config: &Path) -> Result<(Config, Hsm), Error> {
    let cfg = Config::load(config)?;
    let hsm = open_hsm(&cfg)?;
    Ok((cfg, hsm))
}

/// Runs one subcommand; what it prints goes to `out`.
pub fn run(cli: Cli, out: &mut dyn Write) -> Result<(), Error> {
    match cli.command {
        Command::Serve { config, listen, .. } => {
            let mut cfg = Config::load(&config)?;
            if let Some(listen) = listen {
                cfg.server.listen = listen;
            }
            crate::service::server::serve(cfg)
        }
        Command::Keys { common } => keys(&common, out),
        Command::Wrap(a) => wrap_key(a, out),
        Command::ImportKeyVersion(a) => import_key_version_cmd(a, out),
        Command::Import(a) => import::import_cmd(a, out),
        Command::Rotate(a) => import::rotate_cmd(a, out),
        Command::Migrate(a) => migrate::migrate_cmd(a, out),
        Command::Reconcile(a) => reconcile::reconcile_cmd(a, out),
        Command::Selftest { common } => selftest(&common, out),
        Command::Journal { command } => journal::run(command, out),
        Command::PinReset { config } => journal::pin_reset(&config, out),
        Command::Health(a) => health::run(a, out),
    }
}

fn io(e: std::io::Error) -> Error {
    Error::Io(e.to_string())
}

/// `keys`: the token's secret and private keys, and whether each may leave.
fn keys(common: &Common, out: &mut dyn Write) -> Result<(), Error> {
    let (_, hsm) = open(&common.config)?;
    let keys = hsm.list_keys(None)?;
    if common.json {
        let rows: Vec<_> = keys.iter().map(|k| key_json(&hsm, k)).collect();
        writeln!(out, "{}", serde_json::Value::Array(rows)).map_err(io)?;
    } else {
        writeln!(
            out,
            "{:<28} {:<18} {:<10} {:<11} {:<9} exportable",
            "label", "id", "type", "extractable", "sensitive"
        )
        .map_err(io)?;
        for k in &keys {
            let export = match hsm.exportable(k) {
                Ok(_) => "yes".to_string(),
                Err(e) => format!("no: {}", short_reason(&e.to_string())),
            };
            writeln!(
                out,
                "{:<28} {:<18} {:<10} {:<11} {:<9} {}",
                k.label,
                wrap::hex(&k.id),
                k.describe(),
                k.extractable,
                k.sensitive,
                export
            )
            .map_err(io)?;
        }
    }
    hsm.close();
    Ok(())
}

/// `wrap`: one key for a wrapping key the caller names, as the policy on callers' keys
/// allows (or as an operator vouches for), audited.
fn wrap_key(a: WrapArgs, out: &mut dyn Write) -> Result<(), Error> {
    let WrapArgs {
        common,
        key,
        wrapping_key,
        format,
        algorithm,
        azure_kek_id,
        out: out_file,
        allow_any_wrapping_key,
    } = a;
    let alg = algorithm
        .as_deref()
        .map(str::parse::<Algorithm>)
        .transpose()?;
    let format = Format::resolve(format.as_deref(), alg)?;
    let kek = format.kek(azure_kek_id.as_deref())?;
    let key = key.key_ref()?;
    check_out(&out_file)?;
    let pem = read_limited(&wrapping_key, wrap::wrapping_key::MAX_PEM_BYTES)?;
    let cfg = Config::load(&common.config)?;
    let wk = WrappingKey::from_pem(&pem, cfg.policy.min_wrapping_key_bits)?;
    format
        .fits_wrapping_key(wk.bits)
        .map_err(wrap::WrapError::WrappingKey)?;
    let audit = CliAudit::open(&cfg)?;
    let mut attempt = audit.attempt(Operation::WrapKey);
    let export = Export::admit(Caller::operator(CLI_CALLER), Operation::WrapKey)?
        .key(key, attempt.record())?
        .format(format, attempt.record());
    attempt.record().export.wrapping_key_sha256 = Some(wk.fingerprint());
    let policy = crate::policy::WrappingKeyPolicy::load(&cfg.policy)?;
    if allow_any_wrapping_key {
        attempt.record().reason =
            Some("--allow-any-wrapping-key: the operator chose the wrapping key".into());
    } else if let Err(why) = policy.allows(&wk.fingerprint()) {
        let why = format!(
            "{why}; an operator who vouches for this key can pass --allow-any-wrapping-key"
        );
        audit.write(record(attempt)?, Err((Code::PermissionDenied, why.clone())))?;
        return Err(Error::Usage(why));
    }
    let hsm = Arc::new(open_hsm(&cfg)?);
    let generator = hsm.generator();
    let exporter = Exporter::new(HsmPath::Direct(hsm.clone()));
    let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let wrapped = runtime()?.block_on(exporter.wrap(&export, Arc::new(wk.clone()), None, started));
    drop(exporter);
    if let Ok(hsm) = Arc::try_unwrap(hsm) {
        hsm.close();
    }
    let mut rec = record(attempt)?;
    let wrapped = match wrapped {
        Ok(w) => w,
        Err(e) => {
            audit.write(rec, Err((e.code(), e.message())))?;
            return Err(e.into());
        }
    };
    rec.export.label = Some(wrapped.key.label.clone());
    rec.export.id_hex = Some(wrap::hex(&wrapped.key.id));
    rec.export.mode = Some(wrapped.mode.as_str());
    rec.export.key_type = Some(wrapped.shape.algorithm.as_str());
    let material = format.seal(wrapped.material, kek.as_ref(), &generator)?;
    // Recorded before the material is written: nothing leaves without its record.
    audit.write(rec, Ok(()))?;
    write_atomically(&out_file, &material)?;
    if common.json {
        let v = json!({
            "format": format.name,
            "algorithm": format.algorithm(),
            "mode": wrapped.mode.as_str(),
            "shape": {"algorithm": wrapped.shape.algorithm.as_str(), "length": wrapped.shape.length},
            "wrapping_key_sha256": wk.fingerprint(),
            "bytes": material.len(),
            "key": {"label": wrapped.key.label, "id_hex": wrap::hex(&wrapped.key.id)},
        });
        writeln!(out, "{v}").map_err(io)?;
    } else {
        writeln!(
            out,
            "wrapped {} ({}) with {} in {} mode for RSA-{} key sha256:{}: {} bytes written to {}",
            wrapped.key.name(),
            wrapped.shape.describe(),
            format,
            wrapped.mode,
            wk.bits,
            wk.fingerprint(),
            material.len(),
            out_file.display()
        )
        .map_err(io)?;
    }
    Ok(())
}

/// `selftest`: what the token proves, and the mode it picks.
fn selftest(common: &Common, out: &mut dyn Write) -> Result<(), Error> {
    let (_, hsm) = open(&common.config)?;
    let report = hsm.selftest_report();
    if common.json {
        let v = serde_json::to_string_pretty(report).map_err(|e| Error::Io(e.to_string()))?;
        writeln!(out, "{v}").map_err(io)?;
    } else {
        write!(out, "{}", report.to_text()).map_err(io)?;
    }
    hsm.close();
    Ok(())
}

fn key_json(hsm: &Hsm, k: &KeyInfo) -> serde_json::Value {
    let (algorithm, length) = match k.shape() {
        Some(s) => (s.algorithm.as_str().to_string(), s.length),
        None => (k.key_type_name(), k.length),
    };
    json!({
        "label": k.label,
        "id_hex": wrap::hex(&k.id),
        "algorithm": algorithm,
        "length": length,
        "extractable": k.extractable,
        "sensitive": k.sensitive,
        "exportable": hsm.exportable(k).is_ok(),
    })
}

/// The token, for a command that logs in: a PIN the token refused before, here or on
/// another replica sharing the journal, is not presented again.
fn open_hsm(cfg: &Config) -> Result<Hsm, Error> {
    let shared = crate::journal::Journal::if_there(&cfg.journal)?
        .map(|j| j as std::sync::Arc<dyn crate::hsm::SharedRefusal>);
    Ok(Hsm::open_shared(&cfg.hsm, &cfg.policy, shared)?)
}

/// Whom the CLI's exports are by: the operator (a daemon caller's name cannot collide with
/// it, it has a space), to whom its idempotency keys belong.
const CLI_CALLER: &str = "hsm-bridge cli";

/// A runtime for the one export a command makes.
fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Io(format!("tokio runtime: {e}")))
}

/// The record an attempt kept, for the command line to write ([`CliAudit::write`]).
fn record(attempt: crate::audit::Attempt) -> Result<crate::audit::Record, Error> {
    attempt
        .into_record()
        .ok_or_else(|| Error::Io("the export's audit record was lost".into()))
}

/// The part of a refusal after "may not be exported: ".
fn short_reason(msg: &str) -> &str {
    msg.split_once("may not be exported: ")
        .map_or(msg, |(_, r)| r)
}

fn read_limited(path: &Path, limit: usize) -> Result<Vec<u8>, Error> {
    let f = std::fs::File::open(path)
        .map_err(|e| Error::Io(format!("wrapping key {}: {e}", path.display())))?;
    let mut buf = Vec::new();
    f.take(limit as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::Io(format!("wrapping key {}: {e}", path.display())))?;
    Ok(buf)
}

/// `--out` must be a new name or a regular file: the new file is renamed over the path, and
/// never over a device, a pipe, a directory or a symbolic link (as root, `--out /dev/null`
/// would otherwise replace /dev/null). Checked before anything is wrapped, and again just
/// before the rename.
fn check_out(path: &Path) -> Result<(), Error> {
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && !meta.file_type().is_file()
    {
        return Err(Error::Usage(format!(
            "--out {}: not a regular file; name a new file or a regular one to replace",
            path.display()
        )));
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file in the same folder (a random name,
/// created with `O_EXCL`, mode 0600), so a failed run never leaves a half-written file and
/// a link planted in a shared folder is never followed.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let err = |e: std::io::Error| Error::Io(format!("{}: {e}", path.display()));
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| Error::Usage(format!("--out {} names no file", path.display())))?;
    check_out(path)?;
    // A random name, created exclusively (never through a link planted in a shared
    // folder), mode 0600; removed if anything fails before the rename.
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(err)?;
    tmp.write_all(bytes).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map(|_| ()).map_err(|e| err(e.error))
}
