//! An OCI API-key identity from an `~/.oci/config`-style file: INI sections, every profile
//! inheriting the keys of `[DEFAULT]` (as OCI's Python SDK, which uses configparser).
//! The private key file is read once, into locked memory that is zeroed after parsing, and
//! must be readable by its owner only. The parsed key's private numbers live in OpenSSL's
//! secure heap when the binary started it ([`crate::hardening::openssl_secure_heap`]).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::OciError;
use super::signer::{RequestSigner, fingerprint};
use crate::hardening::Locked;

/// A profile's identity, ready to sign. Only the signer is used to sign; the rest is what
/// the profile says, for its `Debug` form and the tests.
#[derive(Debug)]
#[allow(
    dead_code,
    reason = "what the profile says, kept beside the signer made of it"
)]
pub(crate) struct Identity {
    pub profile: String,
    pub tenancy: String,
    pub user: String,
    pub fingerprint: String,
    pub region: String,
    pub signer: RequestSigner,
}

fn err(file: &Path, msg: impl std::fmt::Display) -> OciError {
    OciError::Key(format!("{}: {msg}", file.display()))
}

/// Parses INI text into sections of key/value pairs. Keys are lower-cased; a key and its
/// value are split at the first `=` or `:`; `#` and `;` start comment lines.
fn parse_ini(text: &str) -> Result<BTreeMap<String, BTreeMap<String, String>>, String> {
    let mut sections: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim().to_string();
            sections.entry(name.clone()).or_default();
            current = Some(name);
            continue;
        }
        let at = line
            .find(['=', ':'])
            .ok_or_else(|| format!("line {}: expected key=value", n + 1))?;
        let section = current
            .as_ref()
            .ok_or_else(|| format!("line {}: key outside any [profile]", n + 1))?;
        let (key, value) = (
            line[..at].trim().to_ascii_lowercase(),
            line[at + 1..].trim(),
        );
        sections
            .get_mut(section)
            .expect("section exists")
            .insert(key, value.to_string());
    }
    Ok(sections)
}

/// Expands a leading `~`, and resolves a relative path against `base`.
fn resolve(path: &str, base: &Path) -> PathBuf {
    match path.strip_prefix("~/") {
        Some(rest) => std::env::var_os("HOME")
            .map_or_else(|| PathBuf::from(path), |h| PathBuf::from(h).join(rest)),
        None if Path::new(path).is_relative() => base.join(path),
        None => PathBuf::from(path),
    }
}

/// Reads a private key file that only its owner may read, into locked memory of its own
/// (zeroed when dropped; see [`crate::hardening::Locked`]). At most 64 KiB.
fn read_private(path: &Path) -> Result<Locked, OciError> {
    let mut f = std::fs::File::open(path).map_err(|e| err(path, e))?;
    let meta = f.metadata().map_err(|e| err(path, e))?;
    crate::hardening::check_private(&meta)
        .map_err(|m| err(path, format!("the API private key: {m}")))?;
    const MAX: u64 = 64 * 1024;
    if meta.len() > MAX {
        return Err(err(path, "not a regular file of at most 64 KiB"));
    }
    // Sized from the file: the key is never in a buffer that grows (and leaves copies).
    let mut buf = Locked::new(meta.len() as usize).map_err(|e| err(path, e))?;
    f.read_exact(buf.as_mut_slice()).map_err(|e| err(path, e))?;
    Ok(buf)
}

impl Identity {
    /// Loads `profile` from the config file at `file`.
    pub(crate) fn load(file: &Path, profile: &str) -> Result<Identity, OciError> {
        let mut f = std::fs::File::open(file).map_err(|e| err(file, e))?;
        let meta = f.metadata().map_err(|e| err(file, e))?;
        let mut text = Zeroizing::new(String::new());
        f.read_to_string(&mut text).map_err(|e| err(file, e))?;
        let values = profile_values(file, &text, profile)?;
        let get = |k: &str| {
            values
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        if get("key_content").is_some() {
            return Err(err(
                file,
                format!("[{profile}]: key_content is not allowed in a config file; use key_file"),
            ));
        }
        let need = |k: &str| {
            get(k)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| err(file, format!("[{profile}]: {k} is missing")))
        };
        let (user, fp, tenancy, region, key_file) = (
            need("user")?,
            need("fingerprint")?,
            need("tenancy")?,
            need("region")?,
            need("key_file")?,
        );
        let pass = get("pass_phrase")
            .or_else(|| get("passphrase"))
            .map(|p| Zeroizing::new(p.as_bytes().to_vec()));
        if pass.is_some() {
            // The pass phrase opens the API key: the file holding it is as secret as the key.
            crate::hardening::check_private(&meta).map_err(|m| {
                err(
                    file,
                    format!("[{profile}] holds a pass_phrase, but the file is {m}"),
                )
            })?;
        }
        let base = file.parent().unwrap_or(Path::new("."));
        let key = ApiKey {
            path: resolve(key_file, base),
            pass: pass.as_deref().map(|p| p.as_slice()),
        };
        let signer = key.signer(file, profile, (tenancy, user, fp))?;
        Ok(Identity {
            profile: profile.to_string(),
            tenancy: tenancy.to_string(),
            user: user.to_string(),
            fingerprint: fp.to_string(),
            region: region.to_string(),
            signer,
        })
    }
}

/// The `[DEFAULT]` values with `profile`'s own over them.
fn profile_values(
    file: &Path,
    text: &str,
    profile: &str,
) -> Result<Zeroizing<Vec<(String, String)>>, OciError> {
    let sections = parse_ini(text).map_err(|m| err(file, m))?;
    let mut values = sections.get("DEFAULT").cloned().unwrap_or_default();
    match sections.get(profile) {
        Some(own) => values.extend(own.clone()),
        None if profile == "DEFAULT" && sections.contains_key("DEFAULT") => {}
        None => {
            let names: Vec<&str> = sections.keys().map(String::as_str).collect();
            return Err(err(
                file,
                format!("no profile [{profile}] (profiles: {})", names.join(", ")),
            ));
        }
    }
    Ok(Zeroizing::new(values.into_iter().collect()))
}

/// A profile's API key: its file and the pass phrase that opens it.
struct ApiKey<'a> {
    path: PathBuf,
    pass: Option<&'a [u8]>,
}

impl ApiKey<'_> {
    /// The signer for `(tenancy, user, fingerprint)`, once the key's own fingerprint is
    /// shown to be the one the profile names (else OCI would answer 401).
    fn signer(
        &self,
        file: &Path,
        profile: &str,
        (tenancy, user, fp): (&str, &str, &str),
    ) -> Result<RequestSigner, OciError> {
        let pem = read_private(&self.path)?;
        let signer = RequestSigner::from_pem(tenancy, user, fp, pem.as_slice(), self.pass)
            .map_err(|e| err(&self.path, e))?;
        let actual = fingerprint_of(pem.as_slice(), self.pass)?;
        if !actual.eq_ignore_ascii_case(fp) {
            return Err(err(
                file,
                format!(
                    "[{profile}]: fingerprint {fp} does not match the key in {} (its fingerprint is {actual}); OCI would answer 401",
                    self.path.display()
                ),
            ));
        }
        Ok(signer)
    }
}

fn fingerprint_of(pem: &[u8], pass: Option<&[u8]>) -> Result<String, OciError> {
    let key = openssl::pkey::PKey::private_key_from_pem_passphrase(pem, pass.unwrap_or(b""))
        .map_err(|e| OciError::Key(e.to_string()))?;
    fingerprint(&key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    struct Files {
        dir: tempfile::TempDir,
        fp: String,
    }

    fn files(pass: Option<&str>) -> Files {
        let dir = tempfile::tempdir().unwrap();
        let rsa = openssl::rsa::Rsa::generate(2048).unwrap();
        let pem = match pass {
            Some(p) => rsa
                .private_key_to_pem_passphrase(openssl::symm::Cipher::aes_256_cbc(), p.as_bytes())
                .unwrap(),
            None => rsa.private_key_to_pem().unwrap(),
        };
        let key = dir.path().join("api.pem");
        std::fs::write(&key, pem).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let fp = fingerprint(&openssl::pkey::PKey::from_rsa(rsa).unwrap()).unwrap();
        Files { dir, fp }
    }

    fn config(f: &Files, text: &str) -> PathBuf {
        let p = f.dir.path().join("config");
        std::fs::write(&p, text.replace("FP", &f.fp)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    #[test]
    fn profiles_inherit_from_default() {
        let f = files(None);
        let c = config(
            &f,
            "# comment\n[DEFAULT]\ntenancy=ocid1.tenancy.oc1..t\nregion = us-ashburn-1\nkey_file=api.pem\nfingerprint=FP\n\n[ops]\nuser=ocid1.user.oc1..u=x\nregion=eu-frankfurt-1\n",
        );
        let id = Identity::load(&c, "ops").unwrap();
        assert_eq!(id.region, "eu-frankfurt-1", "the profile's own value wins");
        assert_eq!(id.tenancy, "ocid1.tenancy.oc1..t");
        assert_eq!(
            id.user, "ocid1.user.oc1..u=x",
            "split at the first '=' only"
        );
        assert_eq!(
            id.signer.key_id(),
            format!("ocid1.tenancy.oc1..t/ocid1.user.oc1..u=x/{}", f.fp)
        );
        let e = Identity::load(&c, "DEFAULT").unwrap_err().to_string();
        assert!(e.contains("user is missing"), "{e}");
        let e = Identity::load(&c, "nope").unwrap_err().to_string();
        assert!(e.contains("no profile [nope]") && e.contains("ops"), "{e}");
    }

    #[test]
    fn encrypted_key_with_pass_phrase() {
        let f = files(Some("s3cret"));
        let base = "[DEFAULT]\nuser=u\ntenancy=t\nregion=r\nkey_file=api.pem\nfingerprint=FP\n";
        let c = config(&f, &format!("{base}pass_phrase=s3cret\n"));
        assert!(Identity::load(&c, "DEFAULT").is_ok());
        // A pass phrase in a file others can read is refused.
        std::fs::set_permissions(&c, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Identity::load(&c, "DEFAULT").unwrap_err().to_string();
        assert!(e.contains("pass_phrase") && e.contains("chmod 600"), "{e}");
        let c = config(&f, base);
        let e = Identity::load(&c, "DEFAULT").unwrap_err().to_string();
        assert!(e.contains("pass_phrase"), "{e}");
    }

    #[test]
    fn refusals() {
        let f = files(None);
        let base = "[DEFAULT]\nuser=u\ntenancy=t\nregion=r\nkey_file=api.pem\n";
        let e = Identity::load(
            &config(&f, &format!("{base}fingerprint=00:11\n")),
            "DEFAULT",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("does not match") && e.contains(&f.fp), "{e}");
        let e = Identity::load(
            &config(&f, &format!("{base}fingerprint=FP\nkey_content=abc\n")),
            "DEFAULT",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("key_content"), "{e}");
        std::fs::set_permissions(
            f.dir.path().join("api.pem"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let e = Identity::load(&config(&f, &format!("{base}fingerprint=FP\n")), "DEFAULT")
            .unwrap_err()
            .to_string();
        assert!(e.contains("0644") && e.contains("chmod 600"), "{e}");
        let e = Identity::load(&config(&f, "user=u\n"), "DEFAULT")
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside any [profile]"), "{e}");
        let e = Identity::load(&config(&f, "[DEFAULT]\njunk\n"), "DEFAULT")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
    }
}
